/* normalization.c - layer_norm and group_norm, and the LayerNorm and GroupNorm modules. Both
 * normalise with the biased variance, as PyTorch does, written with public ops; layer_norm runs
 * a device's fused "layer_norm" kernel (tier 2) forward when it has one, and its
 * "layer_norm_backward" kernel from the saved mean and 1/std when the gradient needs no graph. */
#include "nn_common.h"
#include "functional.h"

/* (x - mean) / sqrt(var + eps) over dims, var biased. */
static nb_tensor *normalise(const nb_tensor *x, const int32_t *dims, int32_t nd, double eps)
{
    nnc_tmps s = {0};
    nb_tensor *mu = nnc_k(&s, nb_mean(x, dims, nd, true));
    nb_tensor *xc = mu ? nnc_k(&s, nb_sub(x, mu)) : NULL;
    nb_tensor *sq = xc ? nnc_k(&s, nb_mul(xc, xc)) : NULL;
    nb_tensor *var = nnc_k(&s, nb_mean(sq, dims, nd, true));
    nb_tensor *ve = nnc_k(&s, nb_add_scalar(var, eps));
    nb_tensor *rs = nnc_k(&s, nb_rsqrt(ve));
    return nnc_ret(&s, xc && rs ? nnc_k(&s, nb_mul(xc, rs)) : NULL);
}

/* y * w + b with either optional; consumes y. */
static nb_tensor *affine(nb_tensor *y, const nb_tensor *w, const nb_tensor *b)
{
    if (y && w) {
        nb_tensor *t = nb_mul(y, w);
        nb_release(y);
        y = t;
    }
    if (y && b) {
        nb_tensor *t = nb_add(y, b);
        nb_release(y);
        y = t;
    }
    return y;
}

static bool check_param(const char *op, const char *what, const nb_tensor *p, const nb_tensor *x,
                        int32_t n, const int64_t *shape)
{
    if (!p)
        return true;
    if (!nnc_like(op, what, p, x))
        return false;
    if (nb_tensor_ndim(p) != n || memcmp(nbi_dims(p), shape, (size_t)n * sizeof *shape)) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: %s has shape %s, expected %s", op, what,
                  NBI_SHAPE_STR(p), nbi_shape_cstr(n, shape));
        return false;
    }
    return true;
}

static bool check_eps(const char *op, double eps)
{
    if (eps >= 0 && !isinf(eps))
        return true;
    nbi_error(NB_INVALID_ARGUMENT, "%s: eps=%g must be a non-negative number (0 means 1e-05)", op,
              eps);
    return false;
}

/* ============================ the fused tier-2 path ============================ */

/* x as (R, C) rows with C the normalised size; c->x, c->w, c->b are the node's inputs; stats
 * the (R, 2) mean and 1/std of each row, kept by the forward kernel for the backward one. */
typedef struct ln_ctx {
    double eps;
    nb_tensor *x, *w, *b, *stats;
} ln_ctx;

/* A backward kernel runs when the gradient needs no graph of its own (create_graph off: the
 * engine then runs with grad mode off), and for float32/float64 only (the 16-bit paths would
 * drop what the kernel writes into its inputs). */
static bool ln_float(const nb_tensor *like)
{
    return nb_tensor_dtype(like) == NB_DTYPE_F32 || nb_tensor_dtype(like) == NB_DTYPE_F64;
}

static nb_tensor *ln_forward(void *p, nb_tensor *const *in, int32_t n)
{
    (void)n;
    ln_ctx *c = p;
    nnc_tmps s = {0};
    nb_tensor *ops[4]; /* x, weight, bias, the statistics */
    int32_t k = 0;
    int64_t flags = 0;
    for (int32_t j = 0; j < 3; j++)
        if (in[j]) {
            ops[k++] = nnc_k(&s, nb_contiguous(in[j]));
            flags |= j ? (int64_t)1 << (j - 1) : 0;
        }
    bool ok = true;
    for (int32_t j = 0; j < k; j++)
        ok = ok && ops[j];
    nb_tensor *stats = NULL;
    if (ok && ln_float(in[0]) && nbi_has_kernel(in[0], "layer_norm_backward")) {
        ops[k++] = stats = nb_empty(NB_SHAPE(nbi_dims(in[0])[0], 2), nnc_opts(in[0]));
        flags |= 4;
        ok = stats != NULL;
    }
    nb_tensor *out = ok ? nnc_run("layer_norm", nnc_shape(ops[0]), nnc_opts(ops[0]), ops, k,
                                  &c->eps, 1, &flags, 1)
                        : NULL;
    nnc_free(&s);
    if (out && !c->x) {
        c->x = nb_retain(in[0]);
        c->w = in[1] ? nb_retain(in[1]) : NULL;
        c->b = in[2] ? nb_retain(in[2]) : NULL;
        c->stats = stats;
        stats = NULL;
    }
    nb_release(stats);
    return out;
}

/* xhat = (x - mu) rstd recomputed; dxhat = g w; dx = rstd (dxhat - mean(dxhat)
 * - xhat mean(dxhat xhat)); dw = sum_rows(g xhat); db = sum_rows(g). */
/* The "layer_norm_backward" kernel: dx, and dw / db into tensors of their own. */
static nb_status ln_backward_kernel(ln_ctx *c, const nb_tensor *g, nb_tensor **gi)
{
    nnc_tmps s = {0};
    int64_t C = nbi_dims(c->x)[1], flags = (c->w ? 1 : 0) | (c->b ? 2 : 0);
    nb_tensor *ops[6];
    int32_t k = 0;
    ops[k++] = nnc_k(&s, nb_contiguous(g));
    ops[k++] = nnc_k(&s, nb_contiguous(c->x));
    ops[k++] = c->stats;
    nb_tensor *dw = NULL, *db = NULL;
    if (c->w) {
        ops[k++] = nnc_k(&s, nb_contiguous(c->w));
        ops[k++] = dw = nb_empty(NB_SHAPE(C), nnc_opts(c->x));
    }
    if (c->b)
        ops[k++] = db = nb_empty(NB_SHAPE(C), nnc_opts(c->x));
    bool ok = true;
    for (int32_t j = 0; j < k; j++)
        ok = ok && ops[j];
    nb_tensor *dx = ok ? nnc_run("layer_norm_backward", nnc_shape(c->x), nnc_opts(c->x), ops, k,
                                 NULL, 0, &flags, 1)
                       : NULL;
    nnc_free(&s);
    if (!dx) {
        nb_release(dw);
        nb_release(db);
        return nbi_last_or(NB_AUTOGRAD, "layer_norm backward failed");
    }
    gi[0] = dx;
    if (c->w)
        gi[1] = dw;
    if (c->b)
        gi[2] = db;
    return NB_OK;
}

static nb_status ln_backward(void *p, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    (void)n;
    ln_ctx *c = p;
    if (c->stats && !nb_is_grad_enabled() && nbi_has_kernel(c->x, "layer_norm_backward"))
        return ln_backward_kernel(c, g, gi);
    nnc_tmps s = {0};
    int32_t last[1] = {1}, rows[1] = {0};
    nb_tensor *mu = nnc_k(&s, nb_mean(c->x, last, 1, true));
    nb_tensor *xc = mu ? nnc_k(&s, nb_sub(c->x, mu)) : NULL;
    nb_tensor *sq = xc ? nnc_k(&s, nb_mul(xc, xc)) : NULL;
    nb_tensor *var = nnc_k(&s, nb_mean(sq, last, 1, true));
    nb_tensor *rs = nnc_k(&s, nb_rsqrt(nnc_k(&s, nb_add_scalar(var, c->eps))));
    nb_tensor *xh = xc && rs ? nnc_k(&s, nb_mul(xc, rs)) : NULL;
    nb_tensor *dxh = c->w ? nnc_k(&s, nb_mul(g, c->w)) : nnc_k(&s, nb_retain((nb_tensor *)g));
    nb_tensor *m1 = nnc_k(&s, nb_mean(dxh, last, 1, true));
    nb_tensor *dx2 = dxh && xh ? nnc_k(&s, nb_mul(dxh, xh)) : NULL;
    nb_tensor *m2 = nnc_k(&s, nb_mean(dx2, last, 1, true));
    nb_tensor *t2 = m2 && xh ? nnc_k(&s, nb_mul(xh, m2)) : NULL;
    nb_tensor *d1 = m1 ? nnc_k(&s, nb_sub(dxh, m1)) : NULL;
    nb_tensor *d2 = d1 && t2 ? nnc_k(&s, nb_sub(d1, t2)) : NULL;
    gi[0] = d2 && rs ? nb_mul(d2, rs) : NULL;
    if (c->w) {
        nb_tensor *gx = xh ? nnc_k(&s, nb_mul(g, xh)) : NULL;
        gi[1] = gx ? nb_sum(gx, rows, 1, false) : NULL;
    }
    if (c->b)
        gi[2] = nb_sum(g, rows, 1, false);
    nnc_free(&s);
    return gi[0] && (!c->w || gi[1]) && (!c->b || gi[2])
               ? NB_OK : nbi_last_or(NB_AUTOGRAD, "layer_norm backward failed");
}

static void ln_free(void *p)
{
    ln_ctx *c = p;
    nb_release(c->x);
    nb_release(c->w);
    nb_release(c->b);
    nb_release(c->stats);
    nbi_free(c);
}

static const nb_function layer_norm_fn = {"NativeLayerNormBackward0", ln_forward, ln_backward,
                                          ln_free};

static nb_tensor *layer_norm_fused(const nb_tensor *x, int64_t C, const nb_tensor *w,
                                   const nb_tensor *b, double eps)
{
    ln_ctx *c = nbi_calloc(1, sizeof *c);
    if (!c) {
        nbi_error(NB_OUT_OF_MEMORY, "layer_norm: out of host memory");
        return NULL;
    }
    c->eps = eps;
    nnc_tmps s = {0};
    nb_tensor *x2 = nnc_k(&s, nb_reshape(x, NB_SHAPE(-1, C)));
    nb_tensor *w1 = w ? nnc_k(&s, nb_reshape(w, NB_SHAPE(C))) : NULL;
    nb_tensor *b1 = b ? nnc_k(&s, nb_reshape(b, NB_SHAPE(C))) : NULL;
    nb_tensor *y = NULL;
    if (x2 && (!w || w1) && (!b || b1))
        y = nnc_k(&s, nb_function_apply(&layer_norm_fn, c, (nb_tensor *[]){x2, w1, b1}, 3));
    else
        ln_free(c);
    return nnc_ret(&s, y ? nnc_k(&s, nb_reshape(y, nnc_shape(x))) : NULL);
}

static nb_tensor *layer_norm_impl(const nb_tensor *x, const int64_t *ns, int32_t n,
                                  const nb_tensor *w, const nb_tensor *b, double eps)
{
    const char *op = "layer_norm";
    if (nnc_null(op, "input", x) || !nnc_float(op, "input", x) || !check_eps(op, eps))
        return NULL;
    if (!ns) {
        nbi_error(NB_NULL_ARGUMENT, "layer_norm: normalized_shape is NULL (with %d dims)", n);
        return NULL;
    }
    if (n < 1 || n > nb_tensor_ndim(x)) {
        nbi_error(NB_SHAPE_MISMATCH, "layer_norm: normalized_shape has %d dims for an input of "
                  "shape %s; expected 1 to %d trailing dims", n, NBI_SHAPE_STR(x),
                  nb_tensor_ndim(x));
        return NULL;
    }
    if (memcmp(nbi_dims(x) + nb_tensor_ndim(x) - n, ns, (size_t)n * sizeof *ns)) {
        nbi_error(NB_SHAPE_MISMATCH, "layer_norm: given normalized_shape=%s, expected input with "
                  "shape [*, %s], but got input of size %s", nbi_shape_cstr(n, ns),
                  nbi_shape_cstr(n, ns), NBI_SHAPE_STR(x));
        return NULL;
    }
    if (!check_param(op, "weight", w, x, n, ns) || !check_param(op, "bias", b, x, n, ns))
        return NULL;
    int64_t C = nbi_numel(n, ns);
    if (C > 0 && nbi_numel(nb_tensor_ndim(x), nbi_dims(x)) > 0 && nbi_has_kernel(x, "layer_norm"))
        return layer_norm_fused(x, C, w, b, eps == 0 ? 1e-5 : eps);
    int32_t dims[NB_MAX_DIMS];
    for (int32_t d = 0; d < n; d++)
        dims[d] = nb_tensor_ndim(x) - n + d;
    return affine(normalise(x, dims, n, eps == 0 ? 1e-5 : eps), w, b);
}

static nb_tensor *group_norm_impl(const nb_tensor *x, int64_t groups, const nb_tensor *w,
                                  const nb_tensor *b, double eps)
{
    const char *op = "group_norm";
    if (nnc_null(op, "input", x) || !nnc_float(op, "input", x) || !check_eps(op, eps))
        return NULL;
    if (nb_tensor_ndim(x) < 2) {
        nbi_error(NB_SHAPE_MISMATCH, "group_norm: expected an input (N, C, *) with at least 2 "
                  "dims, got %s", NBI_SHAPE_STR(x));
        return NULL;
    }
    int64_t C = nbi_dims(x)[1];
    if (groups <= 0 || C % groups) {
        nbi_error(NB_INVALID_ARGUMENT, "group_norm: expected number of channels in input to be "
                  "divisible by num_groups, but got input of shape %s and num_groups=%lld",
                  NBI_SHAPE_STR(x), (long long)groups);
        return NULL;
    }
    if (!check_param(op, "weight", w, x, 1, &C) || !check_param(op, "bias", b, x, 1, &C))
        return NULL;
    nnc_tmps s = {0};
    nb_tensor *xg = nnc_k(&s, nb_reshape(x, NB_SHAPE(nbi_dims(x)[0], groups, -1)));
    nb_tensor *y = xg ? nnc_k(&s, normalise(xg, (int32_t[]){2}, 1, eps == 0 ? 1e-5 : eps)) : NULL;
    nb_tensor *yr = y ? nnc_k(&s, nb_reshape(y, nnc_shape(x))) : NULL;
    nb_shape cs = {.ndim = nb_tensor_ndim(x) - 1};
    cs.dims[0] = C;
    for (int32_t d = 1; d < cs.ndim; d++)
        cs.dims[d] = 1;
    nb_tensor *wv = w ? nnc_k(&s, nb_reshape(w, cs)) : NULL;
    nb_tensor *bv = b ? nnc_k(&s, nb_reshape(b, cs)) : NULL;
    nb_tensor *out = yr && (!w || wv) && (!b || bv) ? affine(nb_retain(yr), wv, bv) : NULL;
    nnc_free(&s);
    return out;
}

nb_tensor *nb_layer_norm(const nb_tensor *x, const int64_t *normalized_shape, int32_t n,
                         const nb_tensor *weight, const nb_tensor *bias, double eps)
{
    NBI_AUTOCAST(NBI_AC_FP32, &x, &weight, &bias);
    return NBI_API(layer_norm_impl(x, normalized_shape, n, weight, bias, eps));
}

nb_tensor *nb_group_norm(const nb_tensor *x, int64_t num_groups, const nb_tensor *weight,
                         const nb_tensor *bias, double eps)
{
    NBI_AUTOCAST(NBI_AC_FP32, &x, &weight, &bias);
    return NBI_API(group_norm_impl(x, num_groups, weight, bias, eps));
}

/* ================================ modules ================================ */

typedef struct norm_cfg {
    int64_t shape[NB_MAX_DIMS];
    int32_t n;
    int64_t groups, channels;
    double eps;
    bool affine, bias;
} norm_cfg;

static nb_tensor *fw_layer_norm(nb_module *m, const nb_tensor *x, const void *p)
{
    const norm_cfg *c = p;
    return layer_norm_impl(x, c->shape, c->n, nbi_module_own(m, "weight"),
                           nbi_module_own(m, "bias"), c->eps);
}

static nb_tensor *fw_group_norm(nb_module *m, const nb_tensor *x, const void *p)
{
    const norm_cfg *c = p;
    if (x && (nb_tensor_ndim(x) < 2 || nbi_dims(x)[1] != c->channels)) {
        nbi_error(NB_SHAPE_MISMATCH, "GroupNorm(%lld, %lld): input of shape %s, expected (N, "
                  "%lld, *)", (long long)c->groups, (long long)c->channels, NBI_SHAPE_STR(x),
                  (long long)c->channels);
        return NULL;
    }
    return group_norm_impl(x, c->groups, nbi_module_own(m, "weight"), nbi_module_own(m, "bias"),
                           c->eps);
}

/* LayerNorm((64,), eps=1e-05, elementwise_affine=True, bias=True), as PyTorch 2.15 prints */
static void rp_layer_norm(const void *p, char *buf, size_t len)
{
    const norm_cfg *c = p;
    char e[40];
    nbi_py_float_repr(c->eps, e, sizeof e);
    size_t k = (size_t)snprintf(buf, len, "(");
    for (int32_t d = 0; d < c->n && k < len; d++)
        k += (size_t)snprintf(buf + k, len - k, "%s%lld", d ? ", " : "", (long long)c->shape[d]);
    if (k < len)
        snprintf(buf + k, len - k, "%s), eps=%s, elementwise_affine=%s, bias=%s",
                 c->n == 1 ? "," : "", e, c->affine ? "True" : "False",
                 c->affine && c->bias ? "True" : "False");
}

/* GroupNorm(2, 6, eps=1e-05, affine=True, bias=True) */
static void rp_group_norm(const void *p, char *buf, size_t len)
{
    const norm_cfg *c = p;
    char e[40];
    nbi_py_float_repr(c->eps, e, sizeof e);
    snprintf(buf, len, "%lld, %lld, eps=%s, affine=%s, bias=%s", (long long)c->groups,
             (long long)c->channels, e, c->affine ? "True" : "False",
             c->affine ? "True" : "False");
}

static const nbi_module_kind k_layer_norm = {"LayerNorm", fw_layer_norm, rp_layer_norm};
static const nbi_module_kind k_group_norm = {"GroupNorm", fw_group_norm, rp_group_norm};

static bool param_opts_ok(const char *what, nb_opts opts)
{
    if (opts.dtype >= 0 && opts.dtype < NB_DTYPE_COUNT && nb_dtype_is_float(opts.dtype))
        return true;
    nbi_error(NB_DTYPE_UNSUPPORTED, "%s: parameters must be float32 or float64", what);
    return false;
}

/* ones for weight, zeros for bias, as reset_parameters() does */
static nb_module *norm_module(const nbi_module_kind *k, const norm_cfg *c, bool weight, bool bias,
                              nb_shape shape, nb_opts opts)
{
    nb_module *m = nbi_module_new_kind(k, c, sizeof *c);
    if (!m)
        return NULL;
    opts.requires_grad = true;
    nb_status st = NB_OK;
    if (weight) {
        nb_tensor *w = nb_ones(shape, opts);
        st = w ? nb_module_add_parameter(m, "weight", w) : nb_last_status();
        nb_release(w);
    }
    if (st == NB_OK && bias) {
        nb_tensor *b = nb_zeros(shape, opts);
        st = b ? nb_module_add_parameter(m, "bias", b) : nb_last_status();
        nb_release(b);
    }
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

static nb_module *layer_norm_new(const int64_t *ns, int32_t n, double eps, bool affine,
                                 bool bias, nb_opts opts)
{
    const char *what = "nb_layer_norm_new";
    if (!ns || n < 1 || n > NB_MAX_DIMS) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: normalized_shape needs 1 to %d dims, got %d%s", what,
                  NB_MAX_DIMS, n, ns ? "" : " (NULL)");
        return NULL;
    }
    for (int32_t d = 0; d < n; d++)
        if (ns[d] <= 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: normalized_shape %s must be positive", what,
                      nbi_shape_cstr(n, ns));
            return NULL;
        }
    if (!check_eps(what, eps) || !param_opts_ok(what, opts))
        return NULL;
    norm_cfg c = {.n = n, .eps = eps == 0 ? 1e-5 : eps, .affine = affine, .bias = bias};
    memcpy(c.shape, ns, (size_t)n * sizeof *ns);
    nb_shape shape = {.ndim = n};
    memcpy(shape.dims, ns, (size_t)n * sizeof *ns);
    return norm_module(&k_layer_norm, &c, affine, affine && bias, shape, opts);
}

static nb_module *group_norm_new(int64_t groups, int64_t channels, double eps, bool affine,
                                 nb_opts opts)
{
    const char *what = "nb_group_norm_new";
    if (groups <= 0 || channels <= 0 || channels % groups) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: num_channels=%lld must be divisible by "
                  "num_groups=%lld (both positive)", what, (long long)channels, (long long)groups);
        return NULL;
    }
    if (!check_eps(what, eps) || !param_opts_ok(what, opts))
        return NULL;
    norm_cfg c = {.groups = groups, .channels = channels, .eps = eps == 0 ? 1e-5 : eps,
                  .affine = affine};
    return norm_module(&k_group_norm, &c, affine, affine, NB_SHAPE(channels), opts);
}

nb_module *nb_layer_norm_new(const int64_t *normalized_shape, int32_t n, double eps,
                             bool elementwise_affine, bool bias, nb_opts opts)
{
    return NNC_API_MODULE(layer_norm_new(normalized_shape, n, eps, elementwise_affine, bias, opts));
}

nb_module *nb_group_norm_new(int64_t num_groups, int64_t num_channels, double eps, bool affine,
                             nb_opts opts)
{
    return NNC_API_MODULE(group_norm_new(num_groups, num_channels, eps, affine, opts));
}


/* ============================= batch_norm (nn.functional) ============================= */
/* Moved from functional.c: batch_norm, one autograd node (functional.h's plumbing) that updates
 * the running statistics in training mode as PyTorch does. */

/* ================================ batch_norm ================================ */

/* ctx->i: training; f: eps; saved: 0 = x, 1 = weight, 2 = mean, 3 = invstd (eval: from the
 * running statistics at forward time, as (C)) */
static int32_t bn_dims(const nb_tensor *x, int32_t *dims)
{
    int32_t nd = 0;
    for (int32_t d = 0; d < nb_tensor_ndim(x); d++)
        if (d != 1)
            dims[nd++] = d;
    return nd;
}

static nb_tensor *bn_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nb_tensor *x = in[0], *w = in[1], *b = in[2], *rm = c->aux[0], *rv = c->aux[1];
    bool training = c->i[0] != 0;
    double eps = c->f[0], momentum = c->f[1];
    int32_t dims[NB_MAX_DIMS], nd = bn_dims(x, dims);
    int64_t C = nbi_dims(x)[1], count = numel_of(x) / (C ? C : 1);
    nnc_tmps s = {0};
    nb_tensor *mean, *invstd; /* broadcastable against x */
    if (training) {
        mean = nnc_k(&s, nb_mean(x, dims, nd, true));
        nb_tensor *var = nnc_k(&s, nb_var(x, dims, nd, 0, true));
        invstd = nnc_k(&s, nb_rsqrt(nnc_k(&s, nb_add_scalar(var, eps))));
        /* running statistics take the unbiased variance, as in PyTorch */
        if (rm && mean) {
            nb_tensor *m1 = nnc_k(&s, nb_reshape(mean, NB_SHAPE(C)));
            if (!m1 || nb_mul_scalar_(rm, 1 - momentum) != NB_OK ||
                nb_add_scaled_(rm, m1, momentum) != NB_OK)
                mean = NULL;
        }
        if (rv && var) {
            nb_tensor *v1 = nnc_k(&s, nb_reshape(var, NB_SHAPE(C)));
            double unbias = (double)count / (double)(count - 1);
            if (!v1 || nb_mul_scalar_(rv, 1 - momentum) != NB_OK ||
                nb_add_scaled_(rv, v1, momentum * unbias) != NB_OK)
                mean = NULL;
        }
    } else {
        mean = nnc_k(&s, chan_view(rm, nb_tensor_ndim(x)));
        invstd = nnc_k(&s, chan_view(nnc_k(&s, nb_rsqrt(nnc_k(&s, nb_add_scalar(rv, eps)))),
                                  nb_tensor_ndim(x)));
    }
    nb_tensor *y = mean && invstd ? nnc_k(&s, nb_mul(nnc_k(&s, nb_sub(x, mean)), invstd)) : NULL;
    if (y && w)
        y = nnc_k(&s, nb_mul(y, nnc_k(&s, chan_view(w, nb_tensor_ndim(x)))));
    if (y && b)
        y = nnc_k(&s, nb_add(y, nnc_k(&s, chan_view(b, nb_tensor_ndim(x)))));
    if (y && c->record) {
        save(c, 0, x);
        save(c, 1, w);
        if (!training) { /* the running statistics may change before backward: keep copies */
            nb_tensor *mc = nnc_k(&s, nb_clone(mean)), *ic = nnc_k(&s, nb_clone(invstd));
            save(c, 2, mc);
            save(c, 3, ic);
            if (!mc || !ic)
                y = NULL;
        }
    }
    c->aux[0] = c->aux[1] = NULL;
    return nnc_ret(&s, y);
}

/* training: g_x = w invstd (g - mean(g) - xhat mean(g xhat)); eval: g_x = w invstd g.
 * g_w = sum(g xhat), g_b = sum(g), over every dim but the channels. */
static nb_status bn_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, w);
    SAVED(2, smean);
    SAVED(3, sinv);
    bool training = c->i[0] != 0;
    int32_t dims[NB_MAX_DIMS], nd = bn_dims(x, dims);
    nnc_tmps s = {0};
    nb_tensor *mean = smean, *invstd = sinv;
    if (training) {
        mean = nnc_k(&s, nb_mean(x, dims, nd, true));
        nb_tensor *var = nnc_k(&s, nb_var(x, dims, nd, 0, true));
        invstd = nnc_k(&s, nb_rsqrt(nnc_k(&s, nb_add_scalar(var, c->f[0]))));
    }
    nb_tensor *xhat = mean && invstd ? nnc_k(&s, nb_mul(nnc_k(&s, nb_sub(x, mean)), invstd)) : NULL;
    nb_tensor *gxhat = xhat ? nnc_k(&s, nb_mul(g, xhat)) : NULL;
    if (c->need[1])
        gi[1] = gxhat ? nb_sum(gxhat, dims, nd, false) : NULL;
    if (c->need[2])
        gi[2] = nb_sum(g, dims, nd, false);
    if (c->need[0]) {
        nb_tensor *scale = invstd;
        if (w && invstd)
            scale = nnc_k(&s, nb_mul(invstd, nnc_k(&s, chan_view(w, nb_tensor_ndim(x)))));
        nb_tensor *t = (nb_tensor *)g;
        if (training && gxhat) {
            nb_tensor *gm = nnc_k(&s, nb_mean(g, dims, nd, true));
            nb_tensor *gxm = nnc_k(&s, nb_mean(gxhat, dims, nd, true));
            t = nnc_k(&s, nb_sub(nnc_k(&s, nb_sub(g, gm)), nnc_k(&s, nb_mul(xhat, gxm))));
        }
        gi[0] = t && scale ? nb_mul(t, scale) : NULL;
    }
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function batch_norm_fn = {"NativeBatchNormBackward0", bn_forward, bn_backward,
                                          fctx_free};

static bool bn_check_param(const char *what, const nb_tensor *t, const nb_tensor *x)
{
    if (!t)
        return true;
    if (!nnc_like("batch_norm", what, t, x))
        return false;
    if (nb_tensor_ndim(t) != 1 || nbi_dims(t)[0] != nbi_dims(x)[1]) {
        nbi_error(NB_SHAPE_MISMATCH, "batch_norm: %s has shape %s but the input %s has %lld "
                  "channels: expected [%lld]", what, NBI_SHAPE_STR(t), NBI_SHAPE_STR(x),
                  (long long)nbi_dims(x)[1], (long long)nbi_dims(x)[1]);
        return false;
    }
    return true;
}

static nb_tensor *batch_norm_impl(const nb_tensor *x, nb_tensor *rm, nb_tensor *rv,
                                  const nb_tensor *w, const nb_tensor *b, bool training,
                                  double momentum, double eps)
{
    const char *op = "batch_norm";
    if (nnc_null(op, "input", x) || !nnc_float(op, "input", x))
        return NULL;
    if (nb_tensor_ndim(x) < 2) {
        nbi_error(NB_SHAPE_MISMATCH, "batch_norm: expected an input of at least 2 dims (N, C, "
                  "*), got %s", NBI_SHAPE_STR(x));
        return NULL;
    }
    if (!bn_check_param("running_mean", rm, x) || !bn_check_param("running_var", rv, x) ||
        !bn_check_param("weight", w, x) || !bn_check_param("bias", b, x))
        return NULL;
    if (!rm != !rv) {
        nbi_error(NB_INVALID_ARGUMENT, "batch_norm: running_mean and running_var must be given "
                  "together (got only %s)", rm ? "running_mean" : "running_var");
        return NULL;
    }
    if (!training && !rm) {
        nbi_error(NB_INVALID_ARGUMENT, "batch_norm: running_mean and running_var are required "
                  "when training is false");
        return NULL;
    }
    if (!(eps >= 0)) {
        nbi_error(NB_INVALID_ARGUMENT, "batch_norm: eps must be >= 0, got %g", eps);
        return NULL;
    }
    int64_t C = nbi_dims(x)[1];
    if (training && numel_of(x) / (C ? C : 1) <= 1) {
        nbi_error(NB_INVALID_ARGUMENT, "batch_norm: expected more than 1 value per channel when "
                  "training, got input size %s", NBI_SHAPE_STR(x));
        return NULL;
    }
    fctx *c = fctx_new(op);
    if (!c)
        return NULL;
    c->i[0] = training;
    c->f[0] = eps;
    c->f[1] = momentum;
    /* the running statistics are no inputs of the node (PyTorch's has 3 edges) */
    c->aux[0] = rm;
    c->aux[1] = rv;
    nb_tensor *in[3] = {(nb_tensor *)x, (nb_tensor *)w, (nb_tensor *)b};
    return apply(&batch_norm_fn, c, in, 3);
}

nb_tensor *nb_batch_norm(const nb_tensor *x, nb_tensor *running_mean, nb_tensor *running_var,
                         const nb_tensor *weight, const nb_tensor *bias, bool training,
                         double momentum, double eps)
{
    NBI_AUTOCAST(NBI_AC_FP32, &x, &weight, &bias);
    return NBI_API(batch_norm_impl(x, running_mean, running_var, weight, bias, training, momentum,
                                   eps));
}
