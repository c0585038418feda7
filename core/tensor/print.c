/* print.c - PyTorch's tensor printing: the same number formatting (integer mode, fixed with 4
 * decimals, or scientific), line wrapping at 80 columns, summarising past 1000 elements, and
 * the suffixes (device, dtype, grad_fn, requires_grad). */
#include "nabla_internal.h"

#include <math.h>
#include <string.h>

#define LINEWIDTH 80
#define THRESHOLD 1000
#define EDGEITEMS 3
#define PRECISION 4

typedef struct formatter {
    bool floating, int_mode, sci_mode, is_bool;
    int width;
} formatter;

/* Integers are printed exactly: their int64 values travel in the bits of the doubles (a double
 * cannot hold every int64, and converting one that does not fit to an integer is undefined). */
static int64_t int_bits(double v)
{
    int64_t i;
    memcpy(&i, &v, sizeof i);
    return i;
}

static nb_status read_values(const nb_tensor *t, double *v, int64_t n)
{
    if (nb_dtype_is_float(t->dtype))
        return nbi_read_f64(t, v);
    nb_tensor *c = nbi_cast(t, NB_DTYPE_I64);
    nb_status st = c ? nb_tensor_copy_to_host(c, v, (size_t)n * sizeof *v) : nb_last_status();
    nb_release(c);
    return st;
}

/* One value as Python would print it under the formatter's mode, without padding. */
static int format_raw(const formatter *f, double v, char *out, size_t len)
{
    if (f->is_bool)
        return snprintf(out, len, "%s", int_bits(v) != 0 ? "True" : "False");
    if (!f->floating)
        return snprintf(out, len, "%lld", (long long)int_bits(v));
    if (isnan(v))
        return snprintf(out, len, "nan");
    if (isinf(v))
        return snprintf(out, len, "%sinf", v < 0 ? "-" : "");
    if (f->sci_mode)
        return snprintf(out, len, "%.*e", PRECISION, v);
    if (f->int_mode)
        return snprintf(out, len, "%.0f.", v);
    return snprintf(out, len, "%.*f", PRECISION, v);
}

static void formatter_init(formatter *f, nb_dtype dtype, const double *v, int64_t n)
{
    *f = (formatter){.floating = nb_dtype_is_float(dtype), .int_mode = true, .width = 1,
                     .is_bool = dtype == NB_DTYPE_BOOL};
    char tmp[64];
    if (!f->floating) {
        for (int64_t k = 0; k < n; k++) {
            int w = format_raw(f, v[k], tmp, sizeof tmp);
            f->width = w > f->width ? w : f->width;
        }
        return;
    }
    double mn = INFINITY, mx = 0;
    bool any = false;
    for (int64_t k = 0; k < n; k++) {
        double a = fabs(v[k]);
        if (!isfinite(v[k]) || v[k] == 0)
            continue;
        any = true;
        mn = a < mn ? a : mn;
        mx = a > mx ? a : mx;
        if (v[k] != ceil(v[k]))
            f->int_mode = false;
    }
    if (any)
        f->sci_mode = mx / mn > 1000.0 || mx > 1e8 || (!f->int_mode && mn < 1e-4);
    for (int64_t k = 0; k < n; k++) {
        /* PyTorch sizes the width from the finite non-zero values only */
        if (any && (!isfinite(v[k]) || v[k] == 0))
            continue;
        int w = format_raw(f, v[k], tmp, sizeof tmp);
        f->width = w > f->width ? w : f->width;
    }
    if (!any) /* zeros, infs and nans only */
        for (int64_t k = 0; k < n; k++) {
            int w = format_raw(f, v[k], tmp, sizeof tmp);
            (void)w;
        }
}

static void put_value(nbi_sbuf *b, const formatter *f, double v)
{
    char tmp[64];
    int w = format_raw(f, v, tmp, sizeof tmp);
    nbi_sbuf_printf(b, "%*s%s", f->width > w ? f->width - w : 0, "", tmp);
}

typedef struct printer {
    const double *data;
    const int64_t *shape;
    int32_t ndim;
    int64_t strides[NB_MAX_DIMS]; /* contiguous strides into data */
    bool summarize;
    formatter fmt;
} printer;

/* Mirrors torch/_tensor_str.py: a row is a list of items (" ..." counts as one) wrapped every
 * elements_per_line; higher dims join their slices (with "..." as a slice) by ",\n...". */
static void tensor_str(nbi_sbuf *b, const printer *p, int32_t dim, int64_t base, int indent)
{
    int64_t size = p->shape[dim];
    bool cut = p->summarize && size > 2 * EDGEITEMS;
    int64_t items = cut ? 2 * EDGEITEMS + 1 : size;
    nbi_sbuf_printf(b, "[");
    if (dim == p->ndim - 1) {
        int per_line = (LINEWIDTH - indent) / (p->fmt.width + 2);
        if (per_line < 1)
            per_line = 1;
        for (int64_t k = 0; k < items; k++) {
            if (k > 0)
                nbi_sbuf_printf(b, k % per_line ? ", " : ",\n%*s", k % per_line ? 0 : indent + 1, "");
            if (cut && k == EDGEITEMS) {
                nbi_sbuf_printf(b, " ...");
                continue;
            }
            int64_t at = cut && k > EDGEITEMS ? size - (items - k) : k;
            put_value(b, &p->fmt, p->data[base + at * p->strides[dim]]);
        }
    } else {
        int32_t nl = p->ndim - dim - 1;
        for (int64_t k = 0; k < items; k++) {
            if (k > 0) {
                nbi_sbuf_printf(b, ",");
                for (int32_t j = 0; j < nl; j++)
                    nbi_sbuf_printf(b, "\n");
                nbi_sbuf_printf(b, "%*s", indent + 1, "");
            }
            if (cut && k == EDGEITEMS) {
                nbi_sbuf_printf(b, "...");
                continue;
            }
            int64_t at = cut && k > EDGEITEMS ? size - (items - k) : k;
            tensor_str(b, p, dim + 1, base + at * p->strides[dim], indent + 1);
        }
    }
    nbi_sbuf_printf(b, "]");
}

/* The values the formatter sees: all of them, or only the edges when summarising. */
static void collect_edges(const printer *p, int32_t dim, int64_t base, double *out, int64_t *n)
{
    int64_t size = p->shape[dim];
    bool cut = p->summarize && size > 2 * EDGEITEMS;
    for (int64_t k = 0; k < size; k++) {
        if (cut && k == EDGEITEMS)
            k = size - EDGEITEMS;
        int64_t at = base + k * p->strides[dim];
        if (dim == p->ndim - 1)
            out[(*n)++] = p->data[at];
        else
            collect_edges(p, dim + 1, at, out, n);
    }
}

static void add_suffix(nbi_sbuf *b, size_t *last_line, const char *s, int indent)
{
    size_t len = strlen(s);
    if (*last_line + len + 2 > LINEWIDTH) {
        nbi_sbuf_printf(b, ",\n%*s%s", indent, "", s);
        *last_line = (size_t)indent + len;
    } else {
        nbi_sbuf_printf(b, ", %s", s);
        *last_line += len + 2;
    }
}

static char *str_impl(const nb_tensor *t)
{
    int64_t n = nbi_numel(t->ndim, t->shape);
    double *v = nbi_malloc((size_t)(n ? n : 1) * sizeof *v);
    double *edges = nbi_malloc((size_t)(n ? n : 1) * sizeof *edges);
    nbi_sbuf b = {0};
    if (!v || !edges || read_values(t, v, n) != NB_OK) {
        nbi_free(v);
        nbi_free(edges);
        if (!nbi_error_pending())
            nbi_error(NB_OUT_OF_MEMORY, "tensor_str: out of memory");
        return NULL;
    }
    printer p = {.data = v, .shape = t->shape, .ndim = t->ndim, .summarize = n > THRESHOLD};
    nbi_contiguous_strides(t->ndim, t->shape, p.strides);
    const int indent = 7; /* strlen("tensor(") */
    nbi_sbuf_printf(&b, "tensor(");
    if (n == 0) {
        nbi_sbuf_printf(&b, "[]");
    } else if (t->ndim == 0) {
        formatter_init(&p.fmt, t->dtype, v, 1);
        put_value(&b, &p.fmt, v[0]);
    } else {
        int64_t ne = 0;
        collect_edges(&p, 0, 0, edges, &ne);
        formatter_init(&p.fmt, t->dtype, edges, ne);
        tensor_str(&b, &p, 0, 0, indent);
    }
    const char *nl = b.p ? strrchr(b.p, '\n') : NULL;
    size_t last_line = b.p ? (nl ? (size_t)(b.p + b.n - nl) : b.n) + 1 : 0;
    char suf[160];
    if (n == 0 && t->ndim != 1) {
        nbi_shape_str(suf, sizeof suf, t->ndim, t->shape);
        suf[0] = '(';
        suf[strlen(suf) - 1] = ')';
        char s2[180];
        snprintf(s2, sizeof s2, "size=%s", t->ndim == 1 ? "" : suf);
        /* PyTorch writes size=(0, 3); a 1-tuple would be (0,) */
        add_suffix(&b, &last_line, s2, indent);
    }
    if (!t->storage->device->is_cpu) {
        snprintf(suf, sizeof suf, "device='%s'", t->storage->device->name);
        add_suffix(&b, &last_line, suf, indent);
    }
    if (t->dtype != NB_DTYPE_F32 && t->dtype != NB_DTYPE_I64 && t->dtype != NB_DTYPE_BOOL) {
        snprintf(suf, sizeof suf, "dtype=torch.%s", nb_dtype_name(t->dtype));
        add_suffix(&b, &last_line, suf, indent);
    }
    nbi_view_refresh((nb_tensor *)t); /* a view shows its base's current history */
    if (t->grad_fn) {
        snprintf(suf, sizeof suf, "grad_fn=<%s>", t->grad_fn->name);
        add_suffix(&b, &last_line, suf, indent);
    } else if (t->requires_grad) {
        add_suffix(&b, &last_line, "requires_grad=True", indent);
    }
    nbi_sbuf_printf(&b, ")");
    nbi_free(v);
    nbi_free(edges);
    if (b.oom) {
        nbi_free(b.p);
        nbi_error(NB_OUT_OF_MEMORY, "tensor_str: out of memory");
        return NULL;
    }
    return b.p;
}

char *nb_tensor_str(const nb_tensor *t)
{
    if (!t) {
        if (!nbi_error_pending())
            nbi_error(NB_NULL_ARGUMENT, "tensor_str: tensor is NULL");
        return NULL;
    }
    nbi_api_depth++;
    char *s = str_impl(t);
    nbi_api_depth--;
    return s;
}

nb_status nb_fprint(FILE *f, const nb_tensor *t)
{
    if (!f)
        return nbi_error(NB_NULL_ARGUMENT, "fprint: FILE is NULL");
    char *s = nb_tensor_str(t);
    if (!s)
        return nb_last_status();
    fprintf(f, "%s\n", s);
    nbi_free(s);
    return NB_OK;
}

nb_status nb_print(const nb_tensor *t) { return nb_fprint(stdout, t); }
