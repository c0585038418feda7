/* ops_extra.c - ops a transformer needs beyond the ops_*.c families: logsumexp, cumsum,
 * masked_fill, tril/triu, rpow (scalar ** tensor), outer, two-operand einsum. Composites of public
 * ops (autograd from them), except rpow, which runs the tier-1 rpow_scalar kernel as one node. */
#include "nabla_internal.h"
#include "layer/composite.h"

#include <stdlib.h>

/* ================================ logsumexp ================================ */

/* m + log(sum(exp(t - m))) with m the (detached) max; an infinite max is replaced by 0 so that
 * rows of -inf give -inf and rows with +inf give +inf, as PyTorch. An empty input has no max
 * and reduces to -inf (torch.logsumexp(torch.zeros(0), 0) is -inf). */
static nb_tensor *logsumexp_impl(const nb_tensor *t, const int32_t *dims, int32_t nd,
                                 bool keepdim)
{
    if (nnc_null("logsumexp", "input", t))
        return NULL;
    nnc_tmps s = {0};
    const nb_tensor *x = t;
    if (!nb_dtype_is_float(t->dtype))
        x = nnc_k(&s, nb_to_dtype(t, nbi_default_float()));
    if (x && nb_tensor_numel(x) == 0) { /* no max to shift by: log(sum of nothing) = -inf */
        nb_tensor *e0 = nnc_k(&s, nb_exp(x));
        nb_tensor *s0 = nnc_k(&s, nb_sum(e0, dims, nd, keepdim));
        return nnc_ret(&s, nnc_k(&s, nb_log(s0)));
    }
    nb_tensor *d = x ? nnc_k(&s, nb_detach(x)) : NULL;
    nb_tensor *m = nnc_k(&s, nb_amax(d, dims, nd, true));
    nb_tensor *am = nnc_k(&s, nb_abs(m));
    nb_tensor *inf = nnc_k(&s, nb_eq_scalar(am, INFINITY));
    nb_tensor *zero = m ? nnc_k(&s, nb_zeros(NB_SHAPE_SCALAR, nnc_opts(m))) : NULL;
    nb_tensor *ms = inf && zero ? nnc_k(&s, nb_where(inf, zero, m)) : NULL;
    nb_tensor *xc = ms ? nnc_k(&s, nb_sub(x, ms)) : NULL;
    nb_tensor *e = nnc_k(&s, nb_exp(xc));
    nb_tensor *sum = nnc_k(&s, nb_sum(e, dims, nd, keepdim));
    nb_tensor *lg = nnc_k(&s, nb_log(sum));
    nb_tensor *mr = lg ? nnc_k(&s, nb_reshape(ms, nnc_shape(lg))) : NULL;
    return nnc_ret(&s, mr ? nnc_k(&s, nb_add(lg, mr)) : NULL);
}

nb_tensor *nb_logsumexp(const nb_tensor *t, const int32_t *dims, int32_t ndims, bool keepdim)
{
    NBI_AUTOCAST(NBI_AC_FP32, &t);
    return NBI_API(logsumexp_impl(t, dims, ndims, keepdim));
}

/* ================================= cumsum ================================= */

/* Along the last dim, y = x @ U with U[i][j] = (i <= j): a matmul every device has. Integers
 * and bool sum in float64 (exact below 2^53) and come back as int64, as in PyTorch. */
static nb_tensor *cumsum_impl(const nb_tensor *t, int32_t dim)
{
    if (nnc_null("cumsum", "input", t))
        return NULL;
    if (t->ndim == 0) {
        if (dim != 0 && dim != -1) {
            nbi_error(NB_INDEX_OUT_OF_RANGE, "cumsum: dim %d out of range for a 0-d tensor "
                      "(expected 0 or -1)", dim);
            return NULL;
        }
        nb_tensor *u = nb_reshape(t, NB_SHAPE(1));
        nb_tensor *c = u ? cumsum_impl(u, 0) : NULL;
        nb_tensor *r = c ? nb_reshape(c, NB_SHAPE_SCALAR) : NULL;
        nb_release(u);
        nb_release(c);
        return r;
    }
    if (nbi_check_dim("cumsum", t, &dim, false) != NB_OK)
        return NULL;
    int64_t n = t->shape[dim];
    bool is_int = !nb_dtype_is_float(t->dtype);
    nnc_tmps s = {0};
    const nb_tensor *x = is_int ? nnc_k(&s, nb_to_dtype(t, NB_DTYPE_F64)) : t;
    nb_tensor *xt = x ? nnc_k(&s, nb_transpose(x, dim, -1)) : NULL;
    nb_tensor *y = NULL;
    if (xt && n == 0) {
        y = nnc_k(&s, nb_zeros(nnc_shape(xt), nnc_opts(xt)));
    } else if (xt) {
        int64_t bytes;
        if (__builtin_mul_overflow(n, n, &bytes) || bytes > ((int64_t)1 << 40)) {
            nbi_error(NB_OUT_OF_MEMORY, "cumsum: dim of size %lld is too long", (long long)n);
        } else {
            nb_tensor *ones = nnc_k(&s, nb_ones(NB_SHAPE(n, n), nnc_opts(xt)));
            nb_tensor *up = nnc_k(&s, nb_triu(ones, 0));
            y = up ? nnc_k(&s, nb_matmul(xt, up)) : NULL;
        }
    }
    nb_tensor *back = y ? nnc_k(&s, nb_transpose(y, dim, -1)) : NULL;
    if (back && is_int)
        back = nnc_k(&s, nb_to_dtype(back, NB_DTYPE_I64));
    return nnc_ret(&s, back ? nnc_k(&s, nb_contiguous(back)) : NULL);
}

nb_tensor *nb_cumsum(const nb_tensor *t, int32_t dim)
{
    NBI_AUTOCAST(NBI_AC_FP32, &t);
    return NBI_API(cumsum_impl(t, dim));
}

/* ============================== masked_fill ============================== */

static nb_tensor *masked_fill_impl(const nb_tensor *t, const nb_tensor *mask, double value)
{
    const char *op = "masked_fill";
    if (nnc_null(op, "input", t) || nnc_null(op, "mask", mask) ||
        !nnc_same_device(op, "mask", mask, t))
        return NULL;
    if (mask->dtype != NB_DTYPE_BOOL) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "masked_fill: expected a bool mask, got %s",
                  nb_dtype_name(mask->dtype));
        return NULL;
    }
    bool fits = mask->ndim <= t->ndim;
    for (int32_t d = 0; fits && d < mask->ndim; d++) {
        int64_t a = mask->shape[mask->ndim - 1 - d], b = t->shape[t->ndim - 1 - d];
        fits = a == b || a == 1;
    }
    if (!fits) {
        nbi_error(NB_SHAPE_MISMATCH, "masked_fill: mask %s does not broadcast to the input %s",
                  NBI_SHAPE_STR(mask), NBI_SHAPE_STR(t));
        return NULL;
    }
    nb_tensor *v = nb_full(NB_SHAPE_SCALAR, value, nnc_opts(t));
    nb_tensor *r = v ? nb_where(mask, v, t) : NULL;
    nb_release(v);
    return r;
}

nb_tensor *nb_masked_fill(const nb_tensor *t, const nb_tensor *mask, double value)
{
    return NBI_API(masked_fill_impl(t, mask, value));
}

/* =============================== tril / triu =============================== */

static nb_tensor *tri_impl(const char *op, const nb_tensor *t, int64_t diagonal, bool lower)
{
    if (nnc_null(op, "input", t))
        return NULL;
    if (t->ndim < 2) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: input tensor must have at least 2 dimensions, got %s",
                  op, NBI_SHAPE_STR(t));
        return NULL;
    }
    int64_t R = t->shape[t->ndim - 2], C = t->shape[t->ndim - 1], n;
    if (__builtin_mul_overflow(R, C, &n)) {
        nbi_error(NB_OUT_OF_MEMORY, "%s: a %lld x %lld matrix is too large", op, (long long)R,
                  (long long)C);
        return NULL;
    }
    uint8_t *keep = nbi_malloc((size_t)(n ? n : 1));
    if (!keep) {
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++)
            keep[i * C + j] = lower ? j - i <= diagonal : j - i >= diagonal;
    nb_tensor *m = nb_from_data(keep, NB_SHAPE(R, C), (nb_opts){NB_DTYPE_BOOL, NNC_DEV(t)});
    nbi_free(keep);
    nb_tensor *z = m ? nb_zeros(NB_SHAPE_SCALAR, nnc_opts(t)) : NULL;
    nb_tensor *r = z ? nb_where(m, t, z) : NULL;
    nb_release(m);
    nb_release(z);
    return r;
}

nb_tensor *nb_tril(const nb_tensor *t, int64_t diagonal)
{
    return NBI_API(tri_impl("tril", t, diagonal, true));
}

nb_tensor *nb_triu(const nb_tensor *t, int64_t diagonal)
{
    return NBI_API(tri_impl("triu", t, diagonal, false));
}

/* ================================== rpow ================================== */

/* s ** x: forward is the tier-1 rpow_scalar kernel; backward g * s ** x * log(s) is written with
 * nb_rpow_scalar itself, so it differentiates again. */
typedef struct rpow_ctx {
    double s;
    nb_tensor *x;
} rpow_ctx;

static nb_tensor *rpow_forward(void *p, nb_tensor *const *in, int32_t n)
{
    (void)n;
    rpow_ctx *c = p;
    nb_tensor *xc = nb_contiguous(in[0]);
    nb_tensor *out = xc ? nnc_run("rpow_scalar", nnc_shape(xc), nnc_opts(xc), &xc, 1, &c->s, 1,
                                  NULL, 0)
                        : NULL;
    nb_release(xc);
    if (out && !c->x)
        c->x = nb_retain(in[0]);
    return out;
}

static nb_status rpow_backward(void *p, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    (void)n;
    rpow_ctx *c = p;
    nb_tensor *y = nb_rpow_scalar(c->x, c->s);
    nb_tensor *t = y ? nb_mul_scalar(y, log(c->s)) : NULL;
    gi[0] = t ? nb_mul(g, t) : NULL;
    nb_release(y);
    nb_release(t);
    return gi[0] ? NB_OK : nbi_last_or(NB_AUTOGRAD, "rpow backward failed");
}

static void rpow_free(void *p)
{
    rpow_ctx *c = p;
    nb_release(c->x);
    nbi_free(c);
}

static const nb_function rpow_fn = {"PowBackward2", rpow_forward, rpow_backward, rpow_free};

static nb_tensor *rpow_impl(const nb_tensor *a, double s)
{
    if (nnc_null("rpow_scalar", "input", a))
        return NULL;
    if (!nb_dtype_is_float(a->dtype)) {
        /* integer exponents: computed in float64, an integral base gives the integer dtype back
         * (2 ** tensor([1, 2]) is tensor([2, 4])), any other base the default float */
        nb_tensor *f = nb_to_dtype(a, NB_DTYPE_F64);
        nb_tensor *r = f ? rpow_impl(f, s) : NULL;
        nb_tensor *out = r ? nb_to_dtype(r, s == floor(s) ? a->dtype : nbi_default_float())
                           : NULL;
        nb_release(f);
        nb_release(r);
        return out;
    }
    rpow_ctx *c = nbi_calloc(1, sizeof *c);
    if (!c) {
        nbi_error(NB_OUT_OF_MEMORY, "rpow_scalar: out of host memory");
        return NULL;
    }
    c->s = s;
    nb_tensor *in = (nb_tensor *)a;
    return nb_function_apply(&rpow_fn, c, &in, 1);
}

nb_tensor *nb_rpow_scalar(const nb_tensor *a, double s)
{
    NBI_AUTOCAST(NBI_AC_FP32, &a);
    return NBI_API(rpow_impl(a, s));
}

/* ================================== outer ================================== */

static nb_tensor *outer_impl(const nb_tensor *a, const nb_tensor *b)
{
    if (nnc_null("outer", "input", a) || nnc_null("outer", "vec2", b))
        return NULL;
    if (a->ndim != 1 || b->ndim != 1) {
        nbi_error(NB_SHAPE_MISMATCH, "outer: expected two 1-d tensors, got %s and %s",
                  NBI_SHAPE_STR(a), NBI_SHAPE_STR(b));
        return NULL;
    }
    nb_tensor *ac = nb_unsqueeze(a, 1), *br = nb_unsqueeze(b, 0);
    nb_tensor *r = ac && br ? nb_mul(ac, br) : NULL;
    nb_release(ac);
    nb_release(br);
    return r;
}

nb_tensor *nb_outer(const nb_tensor *a, const nb_tensor *b) { return NBI_API(outer_impl(a, b)); }

/* ================================== einsum ================================== */

/* Two operands: letters only in one operand and not in the output are summed first; then the
 * rest are batch (both and output), contracted (both, not output), left (a and output) or right
 * (b and output), and one batched matmul (B, left, K) @ (B, K, right) computes the product. */
typedef struct es_term {
    char l[NB_MAX_DIMS + 1];
    int32_t n;
} es_term;

static bool es_parse(const char *eq, es_term t[3])
{
    int k = 0;
    bool arrow = false;
    memset(t, 0, 3 * sizeof *t);
    for (const char *p = eq; *p; p++) {
        if (*p == ' ')
            continue;
        if (*p == ',' && k == 0) {
            k = 1;
        } else if (p[0] == '-' && p[1] == '>' && k == 1 && !arrow) {
            k = 2, arrow = true, p++;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) {
            if (t[k].n == NB_MAX_DIMS || memchr(t[k].l, *p, (size_t)t[k].n))
                return false;
            t[k].l[t[k].n++] = *p;
        } else {
            return false;
        }
    }
    return arrow;
}

static bool es_has(const es_term *t, char c) { return memchr(t->l, c, (size_t)t->n) != NULL; }
static int32_t es_pos(const es_term *t, char c)
{
    const char *p = memchr(t->l, c, (size_t)t->n);
    return p ? (int32_t)(p - t->l) : -1;
}

/* Sums x over its letters that appear in neither `other` nor `out`; updates the term. */
static nb_tensor *es_reduce(const nb_tensor *x, es_term *t, const es_term *other,
                            const es_term *out)
{
    int32_t dims[NB_MAX_DIMS], nd = 0;
    es_term kept = {0};
    for (int32_t d = 0; d < t->n; d++) {
        if (!es_has(other, t->l[d]) && !es_has(out, t->l[d]))
            dims[nd++] = d;
        else
            kept.l[kept.n++] = t->l[d];
    }
    *t = kept;
    return nd ? nb_sum(x, dims, nd, false) : nb_retain((nb_tensor *)x);
}

static nb_tensor *einsum_impl(const char *eq, const nb_tensor *a, const nb_tensor *b)
{
    const char *op = "einsum";
    if (!eq) {
        nbi_error(NB_NULL_ARGUMENT, "einsum: equation is NULL");
        return NULL;
    }
    if (nnc_null(op, "first operand", a) || nnc_null(op, "second operand", b))
        return NULL;
    es_term t[3];
    if (!es_parse(eq, t)) {
        nbi_error(NB_INVALID_ARGUMENT, "einsum: equation '%s' is not of the form \"ab,bc->ac\" "
                  "(two operands, letters, an explicit '->', no letter twice in one term, at "
                  "most %d per term)", eq, NB_MAX_DIMS);
        return NULL;
    }
    if (t[0].n != a->ndim || t[1].n != b->ndim) {
        nbi_error(NB_SHAPE_MISMATCH, "einsum: '%s' has %d and %d subscripts but the operands "
                  "have shapes %s and %s", eq, t[0].n, t[1].n, NBI_SHAPE_STR(a),
                  NBI_SHAPE_STR(b));
        return NULL;
    }
    int64_t size[128] = {0};
    bool seen[128] = {false};
    const nb_tensor *ops[2] = {a, b};
    for (int k = 0; k < 2; k++)
        for (int32_t d = 0; d < t[k].n; d++) {
            int c = t[k].l[d];
            if (seen[c] && size[c] != ops[k]->shape[d]) {
                nbi_error(NB_SHAPE_MISMATCH, "einsum: subscript '%c' has size %lld in one "
                          "operand and %lld in the other (shapes %s and %s)", c,
                          (long long)size[c], (long long)ops[k]->shape[d], NBI_SHAPE_STR(a),
                          NBI_SHAPE_STR(b));
                return NULL;
            }
            seen[c] = true, size[c] = ops[k]->shape[d];
        }
    for (int32_t d = 0; d < t[2].n; d++)
        if (!seen[(int)t[2].l[d]]) {
            nbi_error(NB_INVALID_ARGUMENT, "einsum: output subscript '%c' in '%s' appears in no "
                      "operand", t[2].l[d], eq);
            return NULL;
        }
    nnc_tmps s = {0};
    nb_tensor *x = nnc_k(&s, es_reduce(a, &t[0], &t[1], &t[2]));
    nb_tensor *y = nnc_k(&s, es_reduce(b, &t[1], &t[0], &t[2]));
    if (!x || !y)
        return nnc_ret(&s, NULL);
    /* the groups, in the order they appear */
    es_term bat = {0}, lef = {0}, rig = {0}, con = {0};
    for (int32_t d = 0; d < t[0].n; d++) {
        char c = t[0].l[d];
        bool inb = es_has(&t[1], c), ino = es_has(&t[2], c);
        es_term *g = inb ? (ino ? &bat : &con) : &lef;
        g->l[g->n++] = c;
    }
    for (int32_t d = 0; d < t[1].n; d++)
        if (!es_has(&t[0], t[1].l[d]))
            rig.l[rig.n++] = t[1].l[d];
    int64_t nb = 1, nl = 1, nr = 1, nk = 1;
    for (int32_t d = 0; d < bat.n; d++) nb *= size[(int)bat.l[d]];
    for (int32_t d = 0; d < lef.n; d++) nl *= size[(int)lef.l[d]];
    for (int32_t d = 0; d < rig.n; d++) nr *= size[(int)rig.l[d]];
    for (int32_t d = 0; d < con.n; d++) nk *= size[(int)con.l[d]];
    int32_t pa[NB_MAX_DIMS], pb[NB_MAX_DIMS], na = 0, nbd = 0;
    for (int32_t d = 0; d < bat.n; d++) pa[na++] = es_pos(&t[0], bat.l[d]);
    for (int32_t d = 0; d < lef.n; d++) pa[na++] = es_pos(&t[0], lef.l[d]);
    for (int32_t d = 0; d < con.n; d++) pa[na++] = es_pos(&t[0], con.l[d]);
    for (int32_t d = 0; d < bat.n; d++) pb[nbd++] = es_pos(&t[1], bat.l[d]);
    for (int32_t d = 0; d < con.n; d++) pb[nbd++] = es_pos(&t[1], con.l[d]);
    for (int32_t d = 0; d < rig.n; d++) pb[nbd++] = es_pos(&t[1], rig.l[d]);
    nb_tensor *xp = nnc_k(&s, nb_permute(x, pa, na));
    nb_tensor *yp = nnc_k(&s, nb_permute(y, pb, nbd));
    nb_tensor *x3 = nnc_k(&s, nb_reshape(xp, NB_SHAPE(nb, nl, nk)));
    nb_tensor *y3 = nnc_k(&s, nb_reshape(yp, NB_SHAPE(nb, nk, nr)));
    nb_tensor *z = x3 && y3 ? nnc_k(&s, nb_matmul(x3, y3)) : NULL;
    /* (batch..., left..., right...), then the output's order */
    es_term got = {0};
    nb_shape zs = {0};
    es_term *groups[3] = {&bat, &lef, &rig};
    for (int g = 0; g < 3; g++)
        for (int32_t d = 0; d < groups[g]->n; d++) {
            got.l[got.n++] = groups[g]->l[d];
            zs.dims[zs.ndim++] = size[(int)groups[g]->l[d]];
        }
    nb_tensor *zr = z ? nnc_k(&s, nb_reshape(z, zs)) : NULL;
    int32_t po[NB_MAX_DIMS];
    for (int32_t d = 0; d < t[2].n; d++)
        po[d] = es_pos(&got, t[2].l[d]);
    nb_tensor *out = zr ? nnc_k(&s, got.n ? nb_permute(zr, po, t[2].n)
                                          : nb_retain(zr)) : NULL;
    return nnc_ret(&s, out ? nnc_k(&s, nb_contiguous(out)) : NULL);
}

nb_tensor *nb_einsum(const char *equation, const nb_tensor *a, const nb_tensor *b)
{
    return NBI_API(einsum_impl(equation, a, b));
}
