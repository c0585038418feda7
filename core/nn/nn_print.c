/* nn_print.c - PyTorch's repr of a module tree (nb_module_str) and Python's repr() of a
 * float, which module reprs print eps, momentum and p with. */
#include "module.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ============================== Python floats ============================== */

/* Python's repr() of a float: the shortest digits that read back the same, fixed notation for
 * exponents in [-4, 16), scientific otherwise, and always a '.' or an exponent ("0.5", "1e-05",
 * "0.1", "100000.0"). Module reprs print eps, momentum and p this way. */
static void py_float_repr(double v, char *out, size_t len);
void nbi_py_float_repr(double v, char *out, size_t len) { py_float_repr(v, out, len); }

static void py_float_repr(double v, char *out, size_t len)
{
    if (isnan(v)) {
        snprintf(out, len, "nan");
        return;
    }
    if (isinf(v)) {
        snprintf(out, len, "%s", v < 0 ? "-inf" : "inf");
        return;
    }
    if (v == 0) {
        snprintf(out, len, "%s", signbit(v) ? "-0.0" : "0.0");
        return;
    }
    char sci[40];
    int prec = 0;
    for (; prec < 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, v);
        if (strtod(sci, NULL) == v)
            break;
    }
    /* sci is "-d.ddde+XX": split into sign, digits and exponent */
    bool neg = sci[0] == '-';
    const char *p = sci + neg;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    digits[nd] = '\0';
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        digits[--nd] = '\0';
    char body[40]; /* a double needs at most 24 */
    if (exp10 >= -4 && exp10 < 16) {
        size_t k = 0;
        if (exp10 < 0) {
            k += (size_t)snprintf(body, sizeof body, "0.");
            for (int z = 0; z < -exp10 - 1; z++)
                body[k++] = '0';
            for (int d = 0; d < nd; d++)
                body[k++] = digits[d];
        } else {
            for (int d = 0; d <= exp10; d++)
                body[k++] = d < nd ? digits[d] : '0';
            body[k++] = '.';
            if (nd > exp10 + 1)
                for (int d = exp10 + 1; d < nd; d++)
                    body[k++] = digits[d];
            else
                body[k++] = '0';
        }
        body[k] = '\0';
    } else {
        if (nd > 1)
            snprintf(body, sizeof body, "%c.%se%c%02d", digits[0], digits + 1,
                     exp10 < 0 ? '-' : '+', abs(exp10));
        else
            snprintf(body, sizeof body, "%ce%c%02d", digits[0], exp10 < 0 ? '-' : '+',
                     abs(exp10));
    }
    snprintf(out, len, "%s%s", neg ? "-" : "", body);
}

/* ============================== repr ============================== */

static void fmt_pair(char *buf, size_t len, const int64_t v[2], bool tuple)
{
    if (tuple || v[0] != v[1])
        snprintf(buf, len, "(%lld, %lld)", (long long)v[0], (long long)v[1]);
    else
        snprintf(buf, len, "%lld", (long long)v[0]);
}

/* What PyTorch's extra_repr() gives for each built-in ("" for none). */
static void extra_repr(const nb_module *m, char *buf, size_t len)
{
    char a[48], b[48], c[48];
    buf[0] = '\0';
    switch (m->kind) {
    case NN_LINEAR:
        snprintf(buf, len, "in_features=%lld, out_features=%lld, bias=%s",
                 (long long)m->cfg.linear.in, (long long)m->cfg.linear.out,
                 m->cfg.linear.bias ? "True" : "False");
        break;
    case NN_CONV2D: {
        const nb_conv2d_opts *o = &m->cfg.conv.o;
        size_t k = (size_t)snprintf(buf, len, "%lld, %lld, kernel_size=(%lld, %lld), "
                                    "stride=(%lld, %lld)", (long long)m->cfg.conv.in,
                                    (long long)m->cfg.conv.out, (long long)m->cfg.conv.kh,
                                    (long long)m->cfg.conv.kw, (long long)o->stride[0],
                                    (long long)o->stride[1]);
        if (k < len && o->padding_same)
            k += (size_t)snprintf(buf + k, len - k, ", padding=same");
        else if (k < len && (o->padding[0] || o->padding[1]))
            k += (size_t)snprintf(buf + k, len - k, ", padding=(%lld, %lld)",
                                  (long long)o->padding[0], (long long)o->padding[1]);
        if (k < len && (o->dilation[0] != 1 || o->dilation[1] != 1))
            k += (size_t)snprintf(buf + k, len - k, ", dilation=(%lld, %lld)",
                                  (long long)o->dilation[0], (long long)o->dilation[1]);
        if (k < len && o->groups != 1)
            k += (size_t)snprintf(buf + k, len - k, ", groups=%lld", (long long)o->groups);
        if (k < len && !m->cfg.conv.bias)
            snprintf(buf + k, len - k, ", bias=False");
        break;
    }
    case NN_MAXPOOL2D:
        fmt_pair(a, sizeof a, m->cfg.pool.kernel, false);
        fmt_pair(b, sizeof b, m->cfg.pool.stride, false);
        fmt_pair(c, sizeof c, m->cfg.pool.padding, false);
        {
            int64_t dl[2] = {m->cfg.pool.dilation[0] ? m->cfg.pool.dilation[0] : 1,
                             m->cfg.pool.dilation[1] ? m->cfg.pool.dilation[1] : 1};
            char d[48];
            fmt_pair(d, sizeof d, dl, false);
            snprintf(buf, len, "kernel_size=%s, stride=%s, padding=%s, dilation=%s, "
                     "ceil_mode=%s", a, b, c, d, m->cfg.pool.ceil_mode ? "True" : "False");
        }
        break;
    case NN_FLATTEN:
        snprintf(buf, len, "start_dim=%d, end_dim=%d", m->cfg.flatten.start, m->cfg.flatten.end);
        break;
    case NN_DROPOUT:
        py_float_repr(m->cfg.p, a, sizeof a);
        snprintf(buf, len, "p=%s, inplace=False", a);
        break;
    case NN_BATCHNORM1D:
    case NN_BATCHNORM2D:
        py_float_repr(m->cfg.bn.eps, a, sizeof a);
        py_float_repr(m->cfg.bn.momentum, b, sizeof b);
        /* PyTorch 2.15 prints bias= too (BatchNorm2d(3) -> "..., affine=True, bias=True, ...") */
        snprintf(buf, len, "%lld, eps=%s, momentum=%s, affine=True, bias=True, "
                 "track_running_stats=True", (long long)m->cfg.bn.features, a, b);
        break;
    case NN_EXT:
        if (m->ext->extra_repr)
            m->ext->extra_repr(m->ext_cfg, buf, len);
        break;
    default:
        break;
    }
}

/* Module.__repr__: "Name(extra)" for a leaf, otherwise the extra line and "(name): child"
 * lines indented by two, with the child's own later lines indented two more (_addindent). */
static void repr(const nb_module *m, nbi_sbuf *out)
{
    char extra[512];
    extra_repr(m, extra, sizeof extra);
    nbi_sbuf_puts(out, m->type_name);
    nbi_sbuf_puts(out, "(");
    if (m->n_children == 0) {
        nbi_sbuf_puts(out, extra);
    } else {
        if (extra[0]) {
            nbi_sbuf_puts(out, "\n  ");
            nbi_sbuf_puts(out, extra);
        }
        for (int32_t i = 0; i < m->n_children; i++) {
            nbi_sbuf_puts(out, "\n  (");
            nbi_sbuf_puts(out, m->children[i].name);
            nbi_sbuf_puts(out, "): ");
            nbi_sbuf sub = {0};
            repr(m->children[i].m, &sub);
            if (sub.oom)
                out->oom = true;
            for (size_t k = 0; k < sub.n; k++) {
                nbi_sbuf_putn(out, &sub.p[k], 1);
                if (sub.p[k] == '\n')
                    nbi_sbuf_puts(out, "  ");
            }
            nbi_free(sub.p);
        }
        nbi_sbuf_puts(out, "\n");
    }
    nbi_sbuf_puts(out, ")");
}

static char *module_str_impl(const nb_module *m)
{
    if (!m) {
        nbi_error(NB_NULL_ARGUMENT, "nb_module_str: module is NULL");
        return NULL;
    }
    nbi_sbuf b = {0};
    repr(m, &b);
    if (b.oom) {
        nbi_free(b.p);
        nnm_oom("nb_module_str");
        return NULL;
    }
    return b.p;
}

char *nb_module_str(const nb_module *m)
{
    return NBI_API_CALL(module_str_impl(m));
}
