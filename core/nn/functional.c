/* functional.c - torch.nn.functional: linear, conv2d, pooling, gelu, softmax, dropout, batch norm
 * and the losses. Each op is one autograd node (nb_function_apply) with PyTorch's grad_fn name;
 * forward takes the device's tier-2 kernel when it has one, else a composite of tier-1 ops, and
 * backward is written with public ops so that create_graph can differentiate it again. */
#include "nabla_internal.h"

#include <math.h>
#include <string.h>

/* ============================== small helpers ============================== */

#define DEVNAME(t) ((t)->storage->device->name)

static nb_opts opts_of(const nb_tensor *t) { return (nb_opts){t->dtype, DEVNAME(t), false}; }

static int64_t numel_of(const nb_tensor *t) { return nbi_numel(t->ndim, t->shape); }

/* An op given NULL returns NULL and keeps the first error. */
static bool is_null(const char *op, const char *what, const nb_tensor *t)
{
    if (t)
        return false;
    if (!nbi_error_pending())
        nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", op, what);
    return true;
}

static bool check_float(const char *op, const char *what, const nb_tensor *t)
{
    if (nb_dtype_is_float(t->dtype))
        return true;
    nbi_error(NB_DTYPE_UNSUPPORTED, "%s: %s must be a floating point tensor, got %s", op, what,
              nb_dtype_name(t->dtype));
    return false;
}

/* `t` must live on `ref`'s device and share its dtype (PyTorch does not promote here either). */
static bool check_like(const char *op, const char *what, const nb_tensor *t, const nb_tensor *ref)
{
    if (t->storage->device != ref->storage->device) {
        nbi_error(NB_DEVICE_MISMATCH, "%s: %s is on %s but the input is on %s", op, what,
                  DEVNAME(t), DEVNAME(ref));
        return false;
    }
    if (t->dtype != ref->dtype) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: %s is %s but the input is %s; both must have the "
                  "same dtype", op, what, nb_dtype_name(t->dtype), nb_dtype_name(ref->dtype));
        return false;
    }
    return true;
}

static bool same_shape(const nb_tensor *a, const nb_tensor *b)
{
    return a->ndim == b->ndim && !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape);
}

static bool check_reduction(const char *op, nb_reduction r)
{
    if (r == NB_REDUCTION_MEAN || r == NB_REDUCTION_SUM || r == NB_REDUCTION_NONE)
        return true;
    nbi_error(NB_INVALID_ARGUMENT, "%s: reduction %d is not one of NB_REDUCTION_MEAN (0), "
              "NB_REDUCTION_SUM (1), NB_REDUCTION_NONE (2)", op, (int)r);
    return false;
}

static nb_shape shape_of(const nb_tensor *t)
{
    nb_shape s = {.ndim = t->ndim};
    memcpy(s.dims, t->shape, (size_t)t->ndim * sizeof *t->shape);
    return s;
}

/* Intermediates of one computation, released together. The chains below are short and fixed,
 * so the capacity is never reached; if it were, the tensor is released and NULL returned. */
#define TMP_CAP 48
typedef struct tmps {
    nb_tensor *t[TMP_CAP];
    int n;
} tmps;

static nb_tensor *tk(tmps *s, nb_tensor *t)
{
    if (!t)
        return NULL;
    if (s->n == TMP_CAP) {
        nb_release(t);
        nbi_error(NB_OUT_OF_MEMORY, "functional: too many intermediates in one computation");
        return NULL;
    }
    s->t[s->n++] = t;
    return t;
}

static void tfree(tmps *s)
{
    for (int k = 0; k < s->n; k++)
        nb_release(s->t[k]);
    s->n = 0;
}

/* Releases every intermediate but r (a new reference to r is returned). */
static nb_tensor *tret(tmps *s, nb_tensor *r)
{
    nb_retain(r);
    tfree(s);
    return r;
}

/* ============================== autograd plumbing ============================== */

/* The context of one node: parameters, and the tensors backward needs with the version they
 * had when saved (an in-place change afterwards makes backward fail, as in PyTorch). */
#define FN_SAVED 4
typedef struct fctx {
    const char *name;
    nb_tensor *saved[FN_SAVED];
    int64_t version[FN_SAVED];
    bool need[4];   /* input k needs a gradient */
    bool record;    /* a node will be recorded: forward saves what backward needs */
    int64_t i[16];
    double f[4];
    nb_shape shape, tshape; /* shapes backward needs (per op) */
    nb_tensor *aux[2];      /* borrowed by forward only: tensors that are not node inputs */
} fctx;

static fctx *fctx_new(const char *name)
{
    fctx *c = nbi_calloc(1, sizeof *c);
    if (!c)
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", name);
    else
        c->name = name;
    return c;
}

static void fctx_free(void *p)
{
    fctx *c = p;
    for (int k = 0; k < FN_SAVED; k++)
        nb_release(c->saved[k]);
    nbi_free(c);
}

/* Keeps t (a new reference) for backward. */
static void save(fctx *c, int k, const nb_tensor *t)
{
    nb_release(c->saved[k]);
    c->saved[k] = t ? nb_retain((nb_tensor *)t) : NULL;
    c->version[k] = t ? nb_tensor_version(t) : 0;
}

/* Keeps an output without its graph: the node must not own the tensor that owns the node. */
static void save_output(fctx *c, int k, const nb_tensor *out)
{
    nb_tensor *d = nb_detach(out);
    save(c, k, d);
    nb_release(d);
}

static nb_status saved(const fctx *c, int k, nb_tensor **t)
{
    nb_tensor *s = c->saved[k];
    if (s && nb_tensor_version(s) != c->version[k])
        return nbi_error(NB_AUTOGRAD, "one of the variables needed for gradient computation has "
                         "been modified by an inplace operation: [%s %s] is at version %lld; "
                         "expected version %lld instead (in %s)", nb_dtype_name(s->dtype),
                         NBI_SHAPE_STR(s), (long long)nb_tensor_version(s),
                         (long long)c->version[k], c->name);
    *t = s;
    return NB_OK;
}

#define SAVED(k, var)                                                                      \
    nb_tensor *var;                                                                        \
    do {                                                                                   \
        nb_status st_ = saved(c, k, &var);                                                 \
        if (st_ != NB_OK)                                                                  \
            return st_;                                                                    \
    } while (0)

/* Runs fn as one node over inputs (NULL entries allowed); c is consumed. */
static nb_tensor *apply(const nb_function *fn, fctx *c, nb_tensor *const *in, int32_t n)
{
    if (!c)
        return NULL;
    bool any = false;
    for (int32_t k = 0; k < n && k < 4; k++) {
        c->need[k] = in[k] && in[k]->requires_grad;
        any = any || c->need[k];
    }
    c->record = any && nb_is_grad_enabled();
    return nb_function_apply(fn, c, in, n);
}

/* The status of a backward that filled gi[k] for every needed input. */
static nb_status bw_done(const fctx *c, nb_tensor **gi, int32_t n)
{
    for (int32_t k = 0; k < n; k++)
        if (c->need[k] && !gi[k])
            return nbi_last_or(NB_AUTOGRAD, "backward: a gradient could not be computed");
    return NB_OK;
}

/* Backward takes the tier-2 kernel only when no graph of the gradient is being built: with
 * create_graph (grad mode on inside backward) public ops keep it differentiable. */
static bool bw_fast(const nb_tensor *like, const char *op)
{
    return !nb_is_grad_enabled() && nbi_has_kernel(like, op);
}

/* (C) viewed as (C, 1, ..., 1) so that it broadcasts against (N, C, *) of ndim dims. */
static nb_tensor *chan_view(const nb_tensor *t, int32_t ndim)
{
    nb_shape s = {.ndim = ndim - 1};
    s.dims[0] = t->shape[0];
    for (int32_t d = 1; d < ndim - 1; d++)
        s.dims[d] = 1;
    return nb_reshape(t, s);
}

/* ================================== linear ================================== */

static nb_tensor *linear_impl(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b)
{
    const char *op = "linear";
    if (is_null(op, "input", x) || is_null(op, "weight", w))
        return NULL;
    if (!check_float(op, "input", x) || !check_like(op, "weight", w, x) ||
        (b && !check_like(op, "bias", b, x)))
        return NULL;
    if (w->ndim != 2 || x->ndim < 1) {
        nbi_error(NB_SHAPE_MISMATCH, "linear: expected a 2-d weight (out_features, in_features) "
                  "and an input with at least 1 dim, got weight %s and input %s",
                  NBI_SHAPE_STR(w), NBI_SHAPE_STR(x));
        return NULL;
    }
    if (x->shape[x->ndim - 1] != w->shape[1]) {
        nbi_error(NB_SHAPE_MISMATCH, "linear: input %s has %lld features but weight %s expects "
                  "%lld", NBI_SHAPE_STR(x), (long long)x->shape[x->ndim - 1], NBI_SHAPE_STR(w),
                  (long long)w->shape[1]);
        return NULL;
    }
    if (b && !(b->ndim == 1 && b->shape[0] == w->shape[0])) {
        nbi_error(NB_SHAPE_MISMATCH, "linear: bias %s does not match weight %s: expected [%lld]",
                  NBI_SHAPE_STR(b), NBI_SHAPE_STR(w), (long long)w->shape[0]);
        return NULL;
    }
    nb_tensor *wt = nb_t(w), *out;
    if (x->ndim == 2 && b) {
        out = wt ? nb_addmm(b, x, wt, 1, 1) : NULL; /* AddmmBackward0, as in PyTorch */
    } else {
        nb_tensor *y = wt ? nb_matmul(x, wt) : NULL;
        out = b && y ? nb_add(y, b) : nb_retain(y);
        nb_release(y);
    }
    nb_release(wt);
    return out;
}

/* ============================ sliding windows ============================ */

/* The geometry of a 2-d sliding window over (N, C, H, W) producing (N, C', OH, OW). */
typedef struct geom {
    int64_t n, c, h, w;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int64_t oh, ow;
} geom;

/* Fills g->oh, g->ow from the rest with checked arithmetic, and checks that the largest tensor
 * the windows make, (N, C, kh * kw, OH * OW), has a size that fits: huge padding, kernel or
 * stride from the caller is an error, never an overflow. */
static bool geom_check(const char *op, geom *g)
{
    int64_t ph, pw, eh, ew, span = 1;
    bool ok = !__builtin_mul_overflow(g->ph, 2, &ph) && !__builtin_add_overflow(g->h, ph, &ph) &&
              !__builtin_mul_overflow(g->pw, 2, &pw) && !__builtin_add_overflow(g->w, pw, &pw) &&
              !__builtin_mul_overflow(g->dh, g->kh - 1, &eh) && eh < INT64_MAX &&
              !__builtin_mul_overflow(g->dw, g->kw - 1, &ew) && ew < INT64_MAX;
    if (!ok) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: input %lldx%lld with padding [%lld, %lld], kernel "
                  "%lldx%lld and dilation [%lld, %lld] overflows int64", op, (long long)g->h,
                  (long long)g->w, (long long)g->ph, (long long)g->pw, (long long)g->kh,
                  (long long)g->kw, (long long)g->dh, (long long)g->dw);
        return false;
    }
    eh++, ew++;
    if (eh > ph || ew > pw) {
        char dilated[64] = "";
        if (g->dh != 1 || g->dw != 1)
            snprintf(dilated, sizeof dilated, " (dilated: %lldx%lld)", (long long)eh,
                     (long long)ew);
        nbi_error(NB_SHAPE_MISMATCH, "%s: kernel %lldx%lld%s is larger than the padded input "
                  "%lldx%lld", op, (long long)g->kh, (long long)g->kw, dilated, (long long)ph,
                  (long long)pw);
        return false;
    }
    g->oh = (ph - eh) / g->sh + 1;
    g->ow = (pw - ew) / g->sw + 1;
    const int64_t f[] = {g->n, g->c, g->kh, g->kw, g->oh, g->ow, ph, pw};
    for (size_t k = 0; ok && k < sizeof f / sizeof f[0]; k++)
        ok = !__builtin_mul_overflow(span, f[k] > 1 ? f[k] : 1, &span);
    if (!ok)
        nbi_error(NB_INVALID_ARGUMENT, "%s: output %lldx%lld of input (%lld, %lld, %lld, %lld) "
                  "with kernel %lldx%lld is too large (its size overflows int64)", op,
                  (long long)g->oh, (long long)g->ow, (long long)g->n, (long long)g->c,
                  (long long)g->h, (long long)g->w, (long long)g->kh, (long long)g->kw);
    return ok;
}

static int64_t geom_k(const geom *g) { return g->kh * g->kw; }
static int64_t geom_l(const geom *g) { return g->oh * g->ow; }

/* The flat input position each (kernel offset, output position) reads, kernel-major:
 * table[k * L + l] = h * W + w, or H * W (a pad column appended to the input) outside it.
 * Computed on the host once per call and uploaded as int64 (1, 1, K * L). */
static nb_tensor *window_table(const nb_tensor *like, const geom *g)
{
    int64_t K = geom_k(g), L = geom_l(g), n = K * L;
    int64_t *tab = nbi_malloc((size_t)(n ? n : 1) * sizeof *tab);
    if (!tab) {
        nbi_error(NB_OUT_OF_MEMORY, "window table: out of host memory for %lld entries",
                  (long long)n);
        return NULL;
    }
    int64_t *p = tab;
    for (int64_t ki = 0; ki < g->kh; ki++)
        for (int64_t kj = 0; kj < g->kw; kj++)
            for (int64_t oh = 0; oh < g->oh; oh++) {
                int64_t h = oh * g->sh - g->ph + ki * g->dh;
                for (int64_t ow = 0; ow < g->ow; ow++) {
                    int64_t w = ow * g->sw - g->pw + kj * g->dw;
                    *p++ = (h >= 0 && h < g->h && w >= 0 && w < g->w) ? h * g->w + w
                                                                       : g->h * g->w;
                }
            }
    nb_tensor *t = nb_from_data(tab, NB_SHAPE(1, 1, n), (nb_opts){NB_DTYPE_I64, DEVNAME(like)});
    nbi_free(tab);
    return t;
}

/* x (N, c, H, W) -> (N, c, K * L): the input under every window position, `pad` outside. */
static nb_tensor *gather_windows(const nb_tensor *x, const nb_tensor *table, const geom *g,
                                 int64_t c, double pad)
{
    tmps s = {0};
    nb_tensor *xf = tk(&s, nb_reshape(x, NB_SHAPE(g->n, c, g->h * g->w)));
    nb_tensor *col = tk(&s, nb_full(NB_SHAPE(g->n, c, 1), pad, opts_of(x)));
    nb_tensor *parts[2] = {xf, col};
    nb_tensor *xp = xf && col ? tk(&s, nb_cat(parts, 2, 2)) : NULL;
    nb_tensor *idx = tk(&s, nb_expand(table, NB_SHAPE(g->n, c, geom_k(g) * geom_l(g))));
    return tret(&s, xp && idx ? tk(&s, nb_gather(xp, 2, idx)) : NULL);
}

/* The adjoint of gather_windows: cols (N, c, K * L) summed back into (N, c, H, W). */
static nb_tensor *scatter_windows(const nb_tensor *cols, const nb_tensor *table, const geom *g,
                                  int64_t c)
{
    tmps s = {0};
    int64_t hw = g->h * g->w;
    nb_tensor *z = tk(&s, nb_zeros(NB_SHAPE(g->n, c, hw + 1), opts_of(cols)));
    nb_tensor *idx = tk(&s, nb_expand(table, NB_SHAPE(g->n, c, geom_k(g) * geom_l(g))));
    nb_tensor *acc = z && idx ? tk(&s, nb_scatter_add(z, 2, idx, cols)) : NULL;
    nb_tensor *in = tk(&s, nb_narrow(acc, 2, 0, hw));
    return tret(&s, tk(&s, nb_reshape(in, NB_SHAPE(g->n, c, g->h, g->w))));
}

/* Accepts (N, C, H, W) or unbatched (C, H, W) input; *unbatched says which. */
static bool check_image(const char *op, const nb_tensor *x, bool *unbatched)
{
    if (x->ndim != 3 && x->ndim != 4) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: expected a 3-d (C, H, W) or 4-d (N, C, H, W) input, "
                  "got %s", op, NBI_SHAPE_STR(x));
        return false;
    }
    *unbatched = x->ndim == 3;
    return check_float(op, "input", x);
}

/* ================================== conv2d ================================== */

/* ctx->i: stride h,w, padding h,w, dilation h,w, groups (the kernels' order), then bias. */
static void conv_kernel_ints(const fctx *c, int64_t iv[7]) { memcpy(iv, c->i, 7 * sizeof *iv); }

static geom conv_geom(const nb_tensor *x, const nb_tensor *w, const int64_t *iv)
{
    geom g = {.n = x->shape[0], .c = x->shape[1], .h = x->shape[2], .w = x->shape[3],
              .kh = w->shape[2], .kw = w->shape[3], .sh = iv[0], .sw = iv[1], .ph = iv[2],
              .pw = iv[3], .dh = iv[4], .dw = iv[5]};
    g.oh = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
    g.ow = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
    return g;
}

/* x (N, C, H, W) -> windows grouped for a batched matmul: (N, G, C/G * K, L). */
static nb_tensor *conv_cols(const nb_tensor *x, const nb_tensor *table, const geom *g, int64_t G)
{
    nb_tensor *cols = gather_windows(x, table, g, g->c, 0.0);
    nb_tensor *r = cols ? nb_reshape(cols, NB_SHAPE(g->n, G, g->c / G * geom_k(g), geom_l(g)))
                        : NULL;
    nb_release(cols);
    return r;
}

/* Weight (O, C/G, kh, kw) as (G, O/G, C/G * K). */
static nb_tensor *conv_wmat(const nb_tensor *w, int64_t G)
{
    return nb_reshape(w, NB_SHAPE(G, w->shape[0] / G, w->shape[1] * w->shape[2] * w->shape[3]));
}

static nb_tensor *conv_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0], *w = in[1], *b = in[2];
    int64_t iv[7], G = c->i[6];
    conv_kernel_ints(c, iv);
    geom g = conv_geom(x, w, iv);
    int64_t O = w->shape[0];
    nb_tensor *out = NULL;
    tmps s = {0};
    if (numel_of(x) == 0 || numel_of(w) == 0) {
        out = nb_zeros(NB_SHAPE(g.n, O, g.oh, g.ow), opts_of(x));
    } else if (nbi_has_kernel(x, "conv2d")) {
        nb_tensor *xc = tk(&s, nb_contiguous(x)), *wc = tk(&s, nb_contiguous(w));
        out = xc && wc ? nb_empty(NB_SHAPE(g.n, O, g.oh, g.ow), opts_of(x)) : NULL;
        if (out && nbi_run("conv2d", out, (nb_tensor *[]){xc, wc}, 2, NULL, 0, iv, 7) != NB_OK) {
            nb_release(out);
            out = NULL;
        }
    } else {
        /* im2col by gather, then one batched matmul over the groups */
        nb_tensor *table = tk(&s, window_table(x, &g));
        nb_tensor *cols = table ? tk(&s, conv_cols(x, table, &g, G)) : NULL;
        nb_tensor *wm = tk(&s, conv_wmat(w, G));
        nb_tensor *wb = tk(&s, nb_unsqueeze(wm, 0));                /* (1, G, O/G, CK) */
        nb_tensor *o = cols && wb ? tk(&s, nb_matmul(wb, cols)) : NULL; /* (N, G, O/G, L) */
        out = o ? nb_reshape(o, NB_SHAPE(g.n, O, g.oh, g.ow)) : NULL;
    }
    if (out && b) {
        nb_tensor *bv = tk(&s, nb_reshape(b, NB_SHAPE(O, 1, 1)));
        if (!bv || nb_add_(out, bv) != NB_OK) {
            nb_release(out);
            out = NULL;
        }
    }
    tfree(&s);
    if (out && c->record) {
        save(c, 0, x);
        save(c, 1, w);
    }
    return out;
}

static nb_status conv_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, w);
    int64_t iv[7], G = c->i[6];
    conv_kernel_ints(c, iv);
    geom geo = conv_geom(x, w, iv);
    tmps s = {0};
    if (c->need[2]) /* bias: sum over N, OH, OW */
        gi[2] = nb_sum(g, (int32_t[]){0, 2, 3}, 3, false);
    if (!c->need[0] && !c->need[1])
        return bw_done(c, gi, n);
    if (numel_of(x) == 0 || numel_of(w) == 0 || numel_of(g) == 0) {
        gi[0] = c->need[0] ? nb_zeros_like(x) : NULL;
        gi[1] = c->need[1] ? nb_zeros_like(w) : NULL;
        return bw_done(c, gi, n);
    }
    bool fast_x = c->need[0] && bw_fast(x, "conv2d_backward_input");
    bool fast_w = c->need[1] && bw_fast(x, "conv2d_backward_weight");
    if (fast_x || fast_w) {
        nb_tensor *gc = tk(&s, nb_contiguous(g));
        if (fast_x) {
            nb_tensor *wc = tk(&s, nb_contiguous(w));
            nb_tensor *gx = gc && wc ? nb_empty(shape_of(x), opts_of(x)) : NULL;
            if (gx && nbi_run("conv2d_backward_input", gx, (nb_tensor *[]){gc, wc}, 2, NULL, 0,
                              iv, 7) != NB_OK) {
                nb_release(gx);
                gx = NULL;
            }
            gi[0] = gx;
        }
        if (fast_w) {
            nb_tensor *xc = tk(&s, nb_contiguous(x));
            nb_tensor *gw = gc && xc ? nb_empty(shape_of(w), opts_of(w)) : NULL;
            if (gw && nbi_run("conv2d_backward_weight", gw, (nb_tensor *[]){gc, xc}, 2, NULL, 0,
                              iv, 7) != NB_OK) {
                nb_release(gw);
                gw = NULL;
            }
            gi[1] = gw;
        }
    }
    if ((c->need[0] && !fast_x) || (c->need[1] && !fast_w)) {
        int64_t O = w->shape[0], L = geom_l(&geo);
        nb_tensor *table = tk(&s, window_table(x, &geo));
        nb_tensor *gg = tk(&s, nb_reshape(g, NB_SHAPE(geo.n, G, O / G, L)));
        if (c->need[0] && !fast_x) {
            /* d cols = W^T g, summed back into the image */
            nb_tensor *wm = tk(&s, conv_wmat(w, G));
            nb_tensor *wt = tk(&s, nb_transpose(wm, 1, 2));             /* (G, CK, O/G) */
            nb_tensor *gcol = wt && gg ? tk(&s, nb_matmul(wt, gg)) : NULL; /* (N, G, CK, L) */
            nb_tensor *gcf = tk(&s, nb_reshape(gcol, NB_SHAPE(geo.n, geo.c, geom_k(&geo) * L)));
            gi[0] = gcf && table ? scatter_windows(gcf, table, &geo, geo.c) : NULL;
        }
        if (c->need[1] && !fast_w) {
            /* d W = sum over the batch of g cols^T */
            nb_tensor *cols = table ? tk(&s, conv_cols(x, table, &geo, G)) : NULL;
            nb_tensor *ct = tk(&s, nb_transpose(cols, 2, 3));          /* (N, G, L, CK) */
            nb_tensor *p = gg && ct ? tk(&s, nb_matmul(gg, ct)) : NULL; /* (N, G, O/G, CK) */
            nb_tensor *sw = tk(&s, nb_sum(p, (int32_t[]){0}, 1, false));
            gi[1] = sw ? nb_reshape(sw, shape_of(w)) : NULL;
        }
    }
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function conv2d_fn = {"ConvolutionBackward0", conv_forward, conv_backward,
                                      fctx_free};

static nb_tensor *conv2d_impl(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b,
                              nb_conv2d_opts o);

/* padding="same": half the dilated kernel on each side; an odd total puts the extra row and
 * column at the bottom and right (zeros joined to the input), as PyTorch does. */
static nb_tensor *conv2d_same(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b,
                              nb_conv2d_opts o)
{
    for (int k = 0; k < 2; k++)
        if (o.stride[k] > 1 || o.padding[k] != 0) {
            nbi_error(NB_INVALID_ARGUMENT, "conv2d: padding='same' is not supported for strided "
                      "convolutions or with explicit padding, got stride [%lld, %lld], padding "
                      "[%lld, %lld]", (long long)o.stride[0], (long long)o.stride[1],
                      (long long)o.padding[0], (long long)o.padding[1]);
            return NULL;
        }
    int64_t extra[2];
    for (int k = 0; k < 2; k++) {
        int64_t d = o.dilation[k] > 0 ? o.dilation[k] : 1;
        int64_t total = d * (w->shape[2 + k] - 1);
        o.padding[k] = total / 2;
        extra[k] = total - 2 * o.padding[k];
    }
    o.padding_same = false;
    tmps s = {0};
    const nb_tensor *xp = x;
    for (int k = 0; k < 2 && xp; k++) {
        if (!extra[k])
            continue;
        int32_t dim = xp->ndim - 2 + k;
        nb_shape zs = shape_of(xp);
        zs.dims[dim] = extra[k];
        nb_tensor *z = tk(&s, nb_zeros(zs, opts_of(xp)));
        nb_tensor *parts[2] = {(nb_tensor *)xp, z};
        xp = z ? tk(&s, nb_cat(parts, 2, dim)) : NULL;
    }
    nb_tensor *out = xp ? conv2d_impl(xp, w, b, o) : NULL;
    tfree(&s);
    return out;
}

static nb_tensor *conv2d_impl(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b,
                              nb_conv2d_opts o)
{
    const char *op = "conv2d";
    bool unbatched;
    if (is_null(op, "input", x) || is_null(op, "weight", w) || !check_image(op, x, &unbatched) ||
        !check_like(op, "weight", w, x) || (b && !check_like(op, "bias", b, x)))
        return NULL;
    if (w->ndim != 4) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: expected a 4-d weight (out_channels, "
                  "in_channels/groups, kh, kw), got %s", NBI_SHAPE_STR(w));
        return NULL;
    }
    if (o.padding_same)
        return conv2d_same(x, w, b, o);
    int64_t iv[7];
    for (int k = 0; k < 2; k++) {
        if (o.stride[k] < 0 || o.padding[k] < 0 || o.dilation[k] < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "conv2d: stride, padding and dilation must be >= 0 "
                      "(0 means the default), got stride [%lld, %lld], padding [%lld, %lld], "
                      "dilation [%lld, %lld]", (long long)o.stride[0], (long long)o.stride[1],
                      (long long)o.padding[0], (long long)o.padding[1], (long long)o.dilation[0],
                      (long long)o.dilation[1]);
            return NULL;
        }
        iv[k] = o.stride[k] ? o.stride[k] : 1;
        iv[2 + k] = o.padding[k];
        iv[4 + k] = o.dilation[k] ? o.dilation[k] : 1;
    }
    if (o.groups < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "conv2d: groups must be positive (0 means 1), got %lld",
                  (long long)o.groups);
        return NULL;
    }
    int64_t G = iv[6] = o.groups ? o.groups : 1, CG;
    int64_t C = x->shape[unbatched ? 0 : 1], H = x->shape[x->ndim - 2], W = x->shape[x->ndim - 1];
    if (__builtin_mul_overflow(w->shape[1], G, &CG)) {
        nbi_error(NB_INVALID_ARGUMENT, "conv2d: weight %s times groups=%lld overflows int64",
                  NBI_SHAPE_STR(w), (long long)G);
        return NULL;
    }
    if (C != CG) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: input has %lld channels but weight %s expects "
                  "%lld (groups=%lld)", (long long)C, NBI_SHAPE_STR(w), (long long)CG,
                  (long long)G);
        return NULL;
    }
    if (w->shape[0] % G != 0) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: weight %s has %lld output channels, which is not "
                  "divisible by groups=%lld", NBI_SHAPE_STR(w), (long long)w->shape[0],
                  (long long)G);
        return NULL;
    }
    if (w->shape[2] <= 0 || w->shape[3] <= 0) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: weight %s has an empty kernel", NBI_SHAPE_STR(w));
        return NULL;
    }
    geom g = {.n = unbatched ? 1 : x->shape[0], .c = C, .h = H, .w = W, .kh = w->shape[2],
              .kw = w->shape[3], .sh = iv[0], .sw = iv[1], .ph = iv[2], .pw = iv[3],
              .dh = iv[4], .dw = iv[5]};
    if (!geom_check(op, &g))
        return NULL;
    if (b && !(b->ndim == 1 && b->shape[0] == w->shape[0])) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: bias %s does not match weight %s: expected [%lld]",
                  NBI_SHAPE_STR(b), NBI_SHAPE_STR(w), (long long)w->shape[0]);
        return NULL;
    }
    nb_tensor *xb = unbatched ? nb_unsqueeze(x, 0) : nb_retain((nb_tensor *)x);
    fctx *c = xb ? fctx_new(op) : NULL;
    if (c)
        memcpy(c->i, iv, sizeof iv);
    nb_tensor *in[3] = {xb, (nb_tensor *)w, (nb_tensor *)b};
    nb_tensor *out = c ? apply(&conv2d_fn, c, in, 3) : NULL;
    nb_release(xb);
    if (out && unbatched) {
        nb_tensor *sq = nb_squeeze(out, 0);
        nb_release(out);
        out = sq;
    }
    return out;
}

/* ================================= pooling ================================= */

static bool pool_geom(const char *op, const nb_tensor *x, bool unbatched, nb_pool2d_opts o,
                      geom *g)
{
    for (int k = 0; k < 2; k++)
        if (o.kernel[k] <= 0 || o.stride[k] < 0 || o.padding[k] < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: kernel must be > 0 and stride, padding >= 0 "
                      "(stride 0 means the kernel size), got kernel [%lld, %lld], stride [%lld, "
                      "%lld], padding [%lld, %lld]", op, (long long)o.kernel[0],
                      (long long)o.kernel[1], (long long)o.stride[0], (long long)o.stride[1],
                      (long long)o.padding[0], (long long)o.padding[1]);
            return false;
        }
    if (o.padding[0] > o.kernel[0] / 2 || o.padding[1] > o.kernel[1] / 2) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: padding should be at most half of the kernel size, "
                  "got padding [%lld, %lld] for kernel [%lld, %lld]", op,
                  (long long)o.padding[0], (long long)o.padding[1], (long long)o.kernel[0],
                  (long long)o.kernel[1]);
        return false;
    }
    int32_t d = unbatched ? 0 : 1;
    *g = (geom){.n = unbatched ? 1 : x->shape[0], .c = x->shape[d], .h = x->shape[d + 1],
                .w = x->shape[d + 2], .kh = o.kernel[0], .kw = o.kernel[1],
                .sh = o.stride[0] ? o.stride[0] : o.kernel[0],
                .sw = o.stride[1] ? o.stride[1] : o.kernel[1], .ph = o.padding[0],
                .pw = o.padding[1], .dh = o.dilation[0] ? o.dilation[0] : 1,
                .dw = o.dilation[1] ? o.dilation[1] : 1};
    if (g->dh < 0 || g->dw < 0 || (strcmp(op, "max_pool2d") && (g->dh != 1 || g->dw != 1))) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: dilation [%lld, %lld] must be positive (0 means 1), "
                  "and only max_pool2d takes one", op, (long long)o.dilation[0],
                  (long long)o.dilation[1]);
        return false;
    }
    if (!geom_check(op, g)) /* floor-mode sizes, every product checked */
        return false;
    if (o.ceil_mode) {
        /* geom_check proved these fit: the padded extent less the dilated kernel */
        const int64_t rh = g->h + 2 * g->ph - (g->dh * (g->kh - 1) + 1),
                      rw = g->w + 2 * g->pw - (g->dw * (g->kw - 1) + 1);
        g->oh += rh % g->sh != 0;
        g->ow += rw % g->sw != 0;
        /* the last window must start inside the input or the left padding */
        if ((g->oh - 1) * g->sh >= g->h + g->ph)
            g->oh--;
        if ((g->ow - 1) * g->sw >= g->w + g->pw)
            g->ow--;
    }
    return true;
}

/* c->i[14]: the tier-2 kernels (no dilation, floor-mode sizes, count_include_pad) can run;
 * c->i[15]: count_include_pad=False. */
#define POOL_PLAIN(c) ((c)->i[14] != 0)
#define POOL_EXCLUDE(c) ((c)->i[15] != 0)

/* (1, 1, 1, L): 1 / the divisor of each window, PyTorch's: the window clipped to the padded
 * input, or to the input itself with count_include_pad=False. */
static nb_tensor *avg_inv_divisor(const nb_tensor *like, const geom *g, bool exclude)
{
    int64_t L = geom_l(g);
    double *d = nbi_malloc((size_t)(L ? L : 1) * sizeof *d);
    if (!d) {
        nbi_error(NB_OUT_OF_MEMORY, "avg_pool2d: out of host memory");
        return NULL;
    }
    for (int64_t oh = 0; oh < g->oh; oh++)
        for (int64_t ow = 0; ow < g->ow; ow++) {
            int64_t hs = oh * g->sh - g->ph, ws = ow * g->sw - g->pw;
            int64_t he = hs + g->kh < g->h + g->ph ? hs + g->kh : g->h + g->ph;
            int64_t we = ws + g->kw < g->w + g->pw ? ws + g->kw : g->w + g->pw;
            int64_t n = (he - hs) * (we - ws);
            if (exclude) {
                hs = hs < 0 ? 0 : hs, ws = ws < 0 ? 0 : ws;
                he = he > g->h ? g->h : he, we = we > g->w ? g->w : we;
                n = (he - hs) * (we - ws);
            }
            d[oh * g->ow + ow] = n > 0 ? 1.0 / (double)n : 0.0;
        }
    nb_tensor *f = nb_from_data(d, NB_SHAPE(1, 1, 1, L), (nb_opts){NB_DTYPE_F64, DEVNAME(like)});
    nbi_free(d);
    nb_tensor *r = f ? nb_to_dtype(f, like->dtype) : NULL;
    nb_release(f);
    return r;
}

/* ctx->i holds the geom; the pooling kernels take kernel, stride and padding from it. */
static void pool_store(fctx *c, const geom *g) { memcpy(c->i, g, sizeof *g); }
static geom pool_load(const fctx *c)
{
    geom g;
    memcpy(&g, c->i, sizeof g);
    return g;
}
static void pool_ints(const geom *g, int64_t iv[6])
{
    iv[0] = g->kh, iv[1] = g->kw, iv[2] = g->sh, iv[3] = g->sw, iv[4] = g->ph, iv[5] = g->pw;
}

_Static_assert(sizeof(geom) <= 14 * sizeof(int64_t), "geom must fit in fctx.i[0..13]");

/* saved: 0 = argmax indices (N, C, OH, OW), flat h * W + w as in PyTorch */
static nb_tensor *max_pool_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0];
    geom g = pool_load(c);
    nb_shape os = NB_SHAPE(g.n, g.c, g.oh, g.ow);
    nb_tensor *out = NULL, *idx = NULL;
    tmps s = {0};
    if (numel_of(x) == 0) {
        out = nb_empty(os, opts_of(x));
        idx = nb_empty(os, (nb_opts){NB_DTYPE_I64, DEVNAME(x)});
    } else if (POOL_PLAIN(c) && nbi_has_kernel(x, "max_pool2d")) {
        int64_t iv[6];
        pool_ints(&g, iv);
        nb_tensor *xc = tk(&s, nb_contiguous(x));
        out = xc ? nb_empty(os, opts_of(x)) : NULL;
        idx = out ? nb_empty(os, (nb_opts){NB_DTYPE_I64, DEVNAME(x)}) : NULL;
        if (idx && nbi_run("max_pool2d", out, (nb_tensor *[]){xc, idx}, 2, NULL, 0, iv, 6) !=
                       NB_OK) {
            nb_release(idx);
            idx = NULL;
        }
    } else {
        /* gather the windows with -inf outside, then the first maximum of each */
        int64_t K = geom_k(&g), L = geom_l(&g);
        nb_tensor *table = tk(&s, window_table(x, &g));
        nb_tensor *win = table ? tk(&s, gather_windows(x, table, &g, g.c, -INFINITY)) : NULL;
        nb_tensor *w4 = tk(&s, nb_view(win, NB_SHAPE(g.n, g.c, K, L)));
        nb_tensor *val = NULL, *arg = NULL;
        if (w4 && nb_max_dim(w4, 2, true, &val, &arg) == NB_OK) {
            tk(&s, val);
            tk(&s, arg);
            /* window offset -> flat input position, through the same table. Tier 1 promises
             * a float32 gather only, and positions below 2^24 are exact in float32. */
            nb_dtype via = g.h * g.w < (1 << 24) ? NB_DTYPE_F32 : NB_DTYPE_I64;
            nb_tensor *t1 = tk(&s, nb_view(table, NB_SHAPE(1, 1, K, L)));
            nb_tensor *tf = tk(&s, nb_to_dtype(t1, via));
            nb_tensor *t4 = tk(&s, nb_expand(tf, NB_SHAPE(g.n, g.c, K, L)));
            nb_tensor *pf = t4 ? tk(&s, nb_gather(t4, 2, arg)) : NULL;
            nb_tensor *pos = pf ? tk(&s, nb_to_dtype(pf, NB_DTYPE_I64)) : NULL;
            out = nb_reshape(val, os);
            idx = pos ? nb_reshape(pos, os) : NULL;
        }
    }
    if (!idx) {
        nb_release(out);
        out = NULL;
    }
    tfree(&s);
    if (out && c->record)
        save(c, 0, idx);
    nb_release(idx);
    return out;
}

static nb_status max_pool_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, idx);
    geom geo = pool_load(c);
    nb_shape xs = NB_SHAPE(geo.n, geo.c, geo.h, geo.w);
    tmps s = {0};
    if (!c->need[0])
        return NB_OK;
    if (numel_of(g) == 0) {
        gi[0] = nb_zeros(xs, opts_of(g));
    } else if (POOL_PLAIN(c) && bw_fast(g, "max_pool2d_backward")) {
        int64_t iv[6];
        pool_ints(&geo, iv);
        nb_tensor *gc = tk(&s, nb_contiguous(g));
        nb_tensor *gx = gc ? nb_empty(xs, opts_of(g)) : NULL; /* the kernel zeroes it first */
        if (gx && nbi_run("max_pool2d_backward", gx, (nb_tensor *[]){gc, idx}, 2, NULL, 0, iv,
                          6) != NB_OK) {
            nb_release(gx);
            gx = NULL;
        }
        gi[0] = gx;
    } else {
        int64_t L = geom_l(&geo);
        nb_tensor *z = tk(&s, nb_zeros(NB_SHAPE(geo.n, geo.c, geo.h * geo.w), opts_of(g)));
        nb_tensor *i3 = tk(&s, nb_reshape(idx, NB_SHAPE(geo.n, geo.c, L)));
        nb_tensor *g3 = tk(&s, nb_reshape(g, NB_SHAPE(geo.n, geo.c, L)));
        nb_tensor *acc = z && i3 && g3 ? tk(&s, nb_scatter_add(z, 2, i3, g3)) : NULL;
        gi[0] = acc ? nb_reshape(acc, xs) : NULL;
    }
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function max_pool2d_fn = {"MaxPool2DWithIndicesBackward0", max_pool_forward,
                                          max_pool_backward, fctx_free};

/* count_include_pad=True (PyTorch's default): every window divides by kh * kw. The fast path
 * is the conv2d kernel with a constant (1, 1, kh, kw) weight over (N * C, 1, H, W). */
static nb_tensor *avg_weight(const nb_tensor *like, const geom *g)
{
    return nb_full(NB_SHAPE(1, 1, g->kh, g->kw), 1.0 / (double)geom_k(g), opts_of(like));
}

static nb_tensor *avg_pool_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0];
    geom g = pool_load(c);
    nb_shape os = NB_SHAPE(g.n, g.c, g.oh, g.ow);
    nb_tensor *out = NULL;
    tmps s = {0};
    if (numel_of(x) == 0) {
        out = nb_zeros(os, opts_of(x));
    } else if (POOL_PLAIN(c) && nbi_has_kernel(x, "conv2d")) {
        int64_t iv[7] = {g.sh, g.sw, g.ph, g.pw, 1, 1, 1};
        nb_tensor *xr = tk(&s, nb_reshape(x, NB_SHAPE(g.n * g.c, 1, g.h, g.w)));
        nb_tensor *xc = tk(&s, nb_contiguous(xr));
        nb_tensor *wk = tk(&s, avg_weight(x, &g));
        nb_tensor *o = xc && wk ? tk(&s, nb_empty(NB_SHAPE(g.n * g.c, 1, g.oh, g.ow), opts_of(x)))
                                : NULL;
        if (o && nbi_run("conv2d", o, (nb_tensor *[]){xc, wk}, 2, NULL, 0, iv, 7) == NB_OK)
            out = nb_reshape(o, os);
    } else {
        nb_tensor *table = tk(&s, window_table(x, &g));
        nb_tensor *win = table ? tk(&s, gather_windows(x, table, &g, g.c, 0.0)) : NULL;
        nb_tensor *w4 = tk(&s, nb_view(win, NB_SHAPE(g.n, g.c, geom_k(&g), geom_l(&g))));
        nb_tensor *sum = tk(&s, nb_sum(w4, (int32_t[]){2}, 1, true));
        nb_tensor *inv = POOL_PLAIN(c) ? NULL : tk(&s, avg_inv_divisor(x, &g, POOL_EXCLUDE(c)));
        nb_tensor *avg = POOL_PLAIN(c) ? tk(&s, nb_mul_scalar(sum, 1.0 / (double)geom_k(&g)))
                                       : inv && sum ? tk(&s, nb_mul(sum, inv)) : NULL;
        out = avg ? nb_reshape(avg, os) : NULL;
    }
    tfree(&s);
    return out;
}

static nb_status avg_pool_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    geom geo = pool_load(c);
    nb_shape xs = NB_SHAPE(geo.n, geo.c, geo.h, geo.w);
    tmps s = {0};
    if (!c->need[0])
        return NB_OK;
    int64_t K = geom_k(&geo), L = geom_l(&geo);
    if (numel_of(g) == 0) {
        gi[0] = nb_zeros(xs, opts_of(g));
    } else if (POOL_PLAIN(c) && bw_fast(g, "conv2d_backward_input")) {
        int64_t iv[7] = {geo.sh, geo.sw, geo.ph, geo.pw, 1, 1, 1};
        nb_tensor *gr = tk(&s, nb_reshape(g, NB_SHAPE(geo.n * geo.c, 1, geo.oh, geo.ow)));
        nb_tensor *gc = tk(&s, nb_contiguous(gr));
        nb_tensor *wk = tk(&s, avg_weight(g, &geo));
        nb_tensor *gx = gc && wk ? tk(&s, nb_empty(NB_SHAPE(geo.n * geo.c, 1, geo.h, geo.w),
                                                   opts_of(g)))
                                 : NULL;
        if (gx && nbi_run("conv2d_backward_input", gx, (nb_tensor *[]){gc, wk}, 2, NULL, 0, iv,
                          7) == NB_OK)
            gi[0] = nb_reshape(gx, xs);
    } else {
        /* every window position receives g / K */
        nb_tensor *table = tk(&s, window_table(g, &geo));
        nb_tensor *g4 = tk(&s, nb_reshape(g, NB_SHAPE(geo.n, geo.c, 1, L)));
        nb_tensor *inv = POOL_PLAIN(c) ? NULL : tk(&s, avg_inv_divisor(g, &geo, POOL_EXCLUDE(c)));
        nb_tensor *gs = POOL_PLAIN(c) ? tk(&s, nb_mul_scalar(g4, 1.0 / (double)K))
                                      : inv && g4 ? tk(&s, nb_mul(g4, inv)) : NULL;
        nb_tensor *ge = tk(&s, nb_expand(gs, NB_SHAPE(geo.n, geo.c, K, L)));
        nb_tensor *g3 = tk(&s, nb_reshape(ge, NB_SHAPE(geo.n, geo.c, K * L)));
        gi[0] = table && g3 ? scatter_windows(g3, table, &geo, geo.c) : NULL;
    }
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function avg_pool2d_fn = {"AvgPool2DBackward0", avg_pool_forward,
                                          avg_pool_backward, fctx_free};

static nb_tensor *pool_impl(const char *op, const nb_function *fn, const nb_tensor *x,
                            nb_pool2d_opts o)
{
    bool unbatched;
    geom g;
    if (is_null(op, "input", x) || !check_image(op, x, &unbatched) ||
        !pool_geom(op, x, unbatched, o, &g))
        return NULL;
    nb_tensor *xb = unbatched ? nb_unsqueeze(x, 0) : nb_retain((nb_tensor *)x);
    fctx *c = xb ? fctx_new(op) : NULL;
    if (c) {
        pool_store(c, &g);
        bool floor_size = g.oh == (g.h + 2 * g.ph - g.kh) / g.sh + 1 &&
                          g.ow == (g.w + 2 * g.pw - g.kw) / g.sw + 1;
        c->i[14] = g.dh == 1 && g.dw == 1 && floor_size && !o.exclude_padding;
        c->i[15] = o.exclude_padding;
    }
    nb_tensor *out = c ? apply(fn, c, &xb, 1) : NULL;
    nb_release(xb);
    if (out && unbatched) {
        nb_tensor *sq = nb_squeeze(out, 0);
        nb_release(out);
        out = sq;
    }
    return out;
}

/* =================================== gelu =================================== */

/* erfc from tier-1 ops: erfc(z) = exp(-z^2) * P(u) / (1 + 2z) for z >= 0, u = (z - 3)/(z + 3)
 * maps [0, inf) onto [-1, 1), and P interpolates (1 + 2z) exp(z^2) erfc(z) at Chebyshev
 * nodes in u (fitted for this file). Absolute error: 1e-15 with 25 terms (float64), 2e-9 with
 * 13 (float32). erfc(-z) = 2 - erfc(z). */
static const double erfc_p64[] = {
    1.2530080582697296,     -0.13562110612458136,   -0.04756229435348143,
    0.1296451587027844,     -0.11927366341387352,   0.068308027343299715,
    -0.023770514946105076,  0.0025293918238416492,  0.0018886906248438346,
    -0.00077983231904351713, -0.00010516129911117481, 0.00012509952336074541,
    4.9548228613538245e-06, -2.0100970248142274e-05, -7.4399676795559982e-07,
    3.4730415763437519e-06, 3.7630979128482896e-07, -6.1729208060277201e-07,
    -1.6165573076465465e-07, 1.0228463135417644e-07, 5.4911807719924692e-08,
    -1.3478296678029114e-08, -1.3421960253322798e-08, 1.0125121810234313e-09,
    1.6957521080555031e-09};
static const double erfc_p32[] = {
    1.2530080582697298,     -0.13562106822069508,  -0.047562293827715402,
    0.12964409102498059,    -0.11927367843153054,  0.06831669729427188,
    -0.023770388711273325,  0.0024988226116692044, 0.0018882157006223333,
    -0.00072616080148177841, -0.00010422117696086445, 7.7204139505166535e-05,
    3.8917515142564585e-06};

#define SQRT1_2 0.70710678118654752440      /* 1 / sqrt(2) */
#define INV_SQRT_2PI 0.39894228040143267794 /* 1 / sqrt(2 pi) */

static nb_tensor *erfc_ops(const nb_tensor *z)
{
    const double *p = z->dtype == NB_DTYPE_F64 ? erfc_p64 : erfc_p32;
    int np = z->dtype == NB_DTYPE_F64 ? (int)(sizeof erfc_p64 / sizeof *erfc_p64)
                                      : (int)(sizeof erfc_p32 / sizeof *erfc_p32);
    tmps s = {0};
    /* beyond |z| = 40 erfc is 0 (or 2) in float64; the clamp keeps u finite for infinities */
    nb_tensor *a = tk(&s, nb_clamp(tk(&s, nb_abs(z)), NAN, 40.0));
    nb_tensor *u = tk(&s, nb_div(tk(&s, nb_add_scalar(a, -3.0)), tk(&s, nb_add_scalar(a, 3.0))));
    /* Horner in u; the loop releases as it goes to stay within the temporaries */
    nb_tensor *q = u ? nb_mul_scalar(u, p[np - 1]) : NULL;
    for (int k = np - 2; q && k >= 0; k--) {
        nb_tensor *q1 = nb_add_scalar(q, p[k]);
        nb_release(q);
        q = q1;
        if (q && k > 0) {
            nb_tensor *q2 = nb_mul(q, u);
            nb_release(q);
            q = q2;
        }
    }
    tk(&s, q);
    nb_tensor *den = tk(&s, nb_add_scalar(tk(&s, nb_mul_scalar(a, 2.0)), 1.0));
    nb_tensor *ex = tk(&s, nb_exp(tk(&s, nb_mul(a, tk(&s, nb_neg(a))))));
    nb_tensor *e = tk(&s, nb_mul(ex, tk(&s, nb_div(q, den))));
    nb_tensor *neg = tk(&s, nb_lt_scalar(z, 0.0));
    return tret(&s, tk(&s, nb_where(neg, tk(&s, nb_rsub_scalar(e, 2.0)), e)));
}

/* Phi(x) = P(X <= x) for a standard normal X = erfc(-x / sqrt 2) / 2. */
static nb_tensor *normal_cdf(const nb_tensor *x)
{
    tmps s = {0};
    nb_tensor *z = tk(&s, nb_mul_scalar(x, -SQRT1_2));
    nb_tensor *e = z ? tk(&s, erfc_ops(z)) : NULL;
    return tret(&s, tk(&s, nb_mul_scalar(e, 0.5)));
}

static nb_tensor *gelu_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nb_tensor *phi = normal_cdf(in[0]);
    nb_tensor *out = phi ? nb_mul(in[0], phi) : NULL;
    nb_release(phi);
    if (out && c->record)
        save(c, 0, in[0]);
    return out;
}

/* d/dx x Phi(x) = Phi(x) + x phi(x) */
static nb_status gelu_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    if (!c->need[0])
        return NB_OK;
    tmps s = {0};
    nb_tensor *phi = tk(&s, normal_cdf(x));
    nb_tensor *x2 = tk(&s, nb_mul(x, x));
    nb_tensor *pdf = tk(&s, nb_mul_scalar(tk(&s, nb_exp(tk(&s, nb_mul_scalar(x2, -0.5)))),
                                          INV_SQRT_2PI));
    nb_tensor *d = tk(&s, nb_add(phi, tk(&s, nb_mul(x, pdf))));
    gi[0] = d ? nb_mul(g, d) : NULL;
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function gelu_fn = {"GeluBackward0", gelu_forward, gelu_backward, fctx_free};

static nb_tensor *gelu_impl(const nb_tensor *x)
{
    if (is_null("gelu", "input", x) || !check_float("gelu", "input", x))
        return NULL;
    return apply(&gelu_fn, fctx_new("gelu"), (nb_tensor *[]){(nb_tensor *)x}, 1);
}

/* ============================ softmax, log_softmax ============================ */

/* ctx->i: dim, log; saved: 0 = input, 1 = output (detached) */
static nb_tensor *softmax_composite(const nb_tensor *x, int32_t dim, bool log)
{
    tmps s = {0};
    nb_tensor *m = tk(&s, nb_amax(x, &dim, 1, true));
    nb_tensor *sh = tk(&s, nb_sub(x, m));
    nb_tensor *e = tk(&s, nb_exp(sh));
    nb_tensor *sum = tk(&s, nb_sum(e, &dim, 1, true));
    nb_tensor *r = log ? tk(&s, nb_sub(sh, tk(&s, nb_log(sum)))) : tk(&s, nb_div(e, sum));
    return tret(&s, r);
}

static nb_tensor *softmax_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0];
    int32_t dim = (int32_t)c->i[0];
    bool log = c->i[1] != 0;
    const char *kop = log ? "log_softmax" : "softmax";
    nb_tensor *out;
    if (numel_of(x) == 0) {
        out = nb_empty(shape_of(x), opts_of(x));
    } else if (dim == x->ndim - 1 && nbi_has_kernel(x, kop)) {
        nb_tensor *xc = nb_contiguous(x);
        out = xc ? nb_empty(shape_of(x), opts_of(x)) : NULL;
        int64_t iv[1] = {dim};
        if (out && nbi_run(kop, out, &xc, 1, NULL, 0, iv, 1) != NB_OK) {
            nb_release(out);
            out = NULL;
        }
        nb_release(xc);
    } else {
        out = softmax_composite(x, dim, log);
    }
    if (out && c->record) {
        save(c, 0, x);
        save_output(c, 1, out);
    }
    return out;
}

/* softmax: g_x = y (g - sum(g y));  log_softmax: g_x = g - exp(y) sum(g) */
static nb_status softmax_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, y);
    int32_t dim = (int32_t)c->i[0];
    bool log = c->i[1] != 0;
    if (!c->need[0])
        return NB_OK;
    tmps s = {0};
    const char *kop = log ? "log_softmax_backward" : "softmax_backward";
    if (numel_of(g) == 0) {
        gi[0] = nb_zeros_like(x);
    } else if (dim == x->ndim - 1 && bw_fast(x, kop)) {
        nb_tensor *gc = tk(&s, nb_contiguous(g)), *yc = tk(&s, nb_contiguous(y));
        nb_tensor *gx = gc && yc ? nb_empty(shape_of(x), opts_of(x)) : NULL;
        int64_t iv[1] = {dim};
        if (gx && nbi_run(kop, gx, (nb_tensor *[]){gc, yc}, 2, NULL, 0, iv, 1) != NB_OK) {
            nb_release(gx);
            gx = NULL;
        }
        gi[0] = gx;
    } else {
        /* building a graph of the gradient: y must come from x again to carry its history */
        if (nb_is_grad_enabled() && x->requires_grad)
            y = tk(&s, log ? nb_log_softmax(x, dim) : nb_softmax(x, dim));
        if (log) {
            nb_tensor *sg = tk(&s, nb_sum(g, &dim, 1, true));
            gi[0] = y && sg ? nb_sub(g, tk(&s, nb_mul(tk(&s, nb_exp(y)), sg))) : NULL;
        } else {
            nb_tensor *gy = y ? tk(&s, nb_mul(g, y)) : NULL;
            nb_tensor *sg = tk(&s, nb_sum(gy, &dim, 1, true));
            gi[0] = sg ? nb_mul(y, tk(&s, nb_sub(g, sg))) : NULL;
        }
    }
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function softmax_fn = {"SoftmaxBackward0", softmax_forward, softmax_backward,
                                       fctx_free};
static const nb_function log_softmax_fn = {"LogSoftmaxBackward0", softmax_forward,
                                           softmax_backward, fctx_free};

static nb_tensor *softmax_impl(const nb_tensor *x, int32_t dim, bool log)
{
    const char *op = log ? "log_softmax" : "softmax";
    if (is_null(op, "input", x) || !check_float(op, "input", x))
        return NULL;
    if (x->ndim == 0) { /* a 0-d input is one row of one element */
        if (dim != 0 && dim != -1) {
            nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: dimension out of range (expected to be in "
                      "range of [-1, 0], but got %d)", op, dim);
            return NULL;
        }
        nb_tensor *x1 = nb_reshape(x, NB_SHAPE(1));
        nb_tensor *r = x1 ? softmax_impl(x1, 0, log) : NULL;
        nb_tensor *out = r ? nb_reshape(r, NB_SHAPE_SCALAR) : NULL;
        nb_release(x1);
        nb_release(r);
        return out;
    }
    if (nbi_check_dim(op, x, &dim, false) != NB_OK)
        return NULL;
    fctx *c = fctx_new(op);
    if (c) {
        c->i[0] = dim;
        c->i[1] = log;
    }
    return apply(log ? &log_softmax_fn : &softmax_fn, c, (nb_tensor *[]){(nb_tensor *)x}, 1);
}

/* ================================== dropout ================================== */

static nb_tensor *dropout_impl(const nb_tensor *x, double p, bool training)
{
    if (is_null("dropout", "input", x) || !check_float("dropout", "input", x))
        return NULL;
    if (!(p >= 0 && p <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "dropout: probability has to be between 0 and 1, but got "
                  "%g", p);
        return NULL;
    }
    /* as PyTorch: nothing to drop hands back the input itself */
    if (!training || p == 0 || numel_of(x) == 0)
        return nb_retain((nb_tensor *)x);
    tmps s = {0};
    nb_tensor *mask;
    if (p == 1) {
        mask = tk(&s, nb_zeros(NB_SHAPE_SCALAR, opts_of(x)));
    } else {
        /* keep with probability 1 - p, scaled so that the expectation is unchanged */
        nb_tensor *keep = tk(&s, nb_lt_scalar(tk(&s, nb_rand_like(x)), 1 - p));
        mask = tk(&s, nb_to_dtype(keep, x->dtype));
        if (mask && nb_mul_scalar_(mask, 1 / (1 - p)) != NB_OK)
            mask = NULL;
    }
    return tret(&s, mask ? tk(&s, nb_mul(x, mask)) : NULL); /* MulBackward0 */
}

/* ================================ batch_norm ================================ */

/* ctx->i: training; f: eps; saved: 0 = x, 1 = weight, 2 = mean, 3 = invstd (eval: from the
 * running statistics at forward time, as (C)) */
static int32_t bn_dims(const nb_tensor *x, int32_t *dims)
{
    int32_t nd = 0;
    for (int32_t d = 0; d < x->ndim; d++)
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
    int64_t C = x->shape[1], count = numel_of(x) / (C ? C : 1);
    tmps s = {0};
    nb_tensor *mean, *invstd; /* broadcastable against x */
    if (training) {
        mean = tk(&s, nb_mean(x, dims, nd, true));
        nb_tensor *var = tk(&s, nb_var(x, dims, nd, 0, true));
        invstd = tk(&s, nb_rsqrt(tk(&s, nb_add_scalar(var, eps))));
        /* running statistics take the unbiased variance, as in PyTorch */
        if (rm && mean) {
            nb_tensor *m1 = tk(&s, nb_reshape(mean, NB_SHAPE(C)));
            if (!m1 || nb_mul_scalar_(rm, 1 - momentum) != NB_OK ||
                nb_add_scaled_(rm, m1, momentum) != NB_OK)
                mean = NULL;
        }
        if (rv && var) {
            nb_tensor *v1 = tk(&s, nb_reshape(var, NB_SHAPE(C)));
            double unbias = (double)count / (double)(count - 1);
            if (!v1 || nb_mul_scalar_(rv, 1 - momentum) != NB_OK ||
                nb_add_scaled_(rv, v1, momentum * unbias) != NB_OK)
                mean = NULL;
        }
    } else {
        mean = tk(&s, chan_view(rm, x->ndim));
        invstd = tk(&s, chan_view(tk(&s, nb_rsqrt(tk(&s, nb_add_scalar(rv, eps)))), x->ndim));
    }
    nb_tensor *y = mean && invstd ? tk(&s, nb_mul(tk(&s, nb_sub(x, mean)), invstd)) : NULL;
    if (y && w)
        y = tk(&s, nb_mul(y, tk(&s, chan_view(w, x->ndim))));
    if (y && b)
        y = tk(&s, nb_add(y, tk(&s, chan_view(b, x->ndim))));
    if (y && c->record) {
        save(c, 0, x);
        save(c, 1, w);
        if (!training) { /* the running statistics may change before backward: keep copies */
            nb_tensor *mc = tk(&s, nb_clone(mean)), *ic = tk(&s, nb_clone(invstd));
            save(c, 2, mc);
            save(c, 3, ic);
            if (!mc || !ic)
                y = NULL;
        }
    }
    c->aux[0] = c->aux[1] = NULL;
    return tret(&s, y);
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
    tmps s = {0};
    nb_tensor *mean = smean, *invstd = sinv;
    if (training) {
        mean = tk(&s, nb_mean(x, dims, nd, true));
        nb_tensor *var = tk(&s, nb_var(x, dims, nd, 0, true));
        invstd = tk(&s, nb_rsqrt(tk(&s, nb_add_scalar(var, c->f[0]))));
    }
    nb_tensor *xhat = mean && invstd ? tk(&s, nb_mul(tk(&s, nb_sub(x, mean)), invstd)) : NULL;
    nb_tensor *gxhat = xhat ? tk(&s, nb_mul(g, xhat)) : NULL;
    if (c->need[1])
        gi[1] = gxhat ? nb_sum(gxhat, dims, nd, false) : NULL;
    if (c->need[2])
        gi[2] = nb_sum(g, dims, nd, false);
    if (c->need[0]) {
        nb_tensor *scale = invstd;
        if (w && invstd)
            scale = tk(&s, nb_mul(invstd, tk(&s, chan_view(w, x->ndim))));
        nb_tensor *t = (nb_tensor *)g;
        if (training && gxhat) {
            nb_tensor *gm = tk(&s, nb_mean(g, dims, nd, true));
            nb_tensor *gxm = tk(&s, nb_mean(gxhat, dims, nd, true));
            t = tk(&s, nb_sub(tk(&s, nb_sub(g, gm)), tk(&s, nb_mul(xhat, gxm))));
        }
        gi[0] = t && scale ? nb_mul(t, scale) : NULL;
    }
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function batch_norm_fn = {"NativeBatchNormBackward0", bn_forward, bn_backward,
                                          fctx_free};

static bool bn_check_param(const char *what, const nb_tensor *t, const nb_tensor *x)
{
    if (!t)
        return true;
    if (!check_like("batch_norm", what, t, x))
        return false;
    if (t->ndim != 1 || t->shape[0] != x->shape[1]) {
        nbi_error(NB_SHAPE_MISMATCH, "batch_norm: %s has shape %s but the input %s has %lld "
                  "channels: expected [%lld]", what, NBI_SHAPE_STR(t), NBI_SHAPE_STR(x),
                  (long long)x->shape[1], (long long)x->shape[1]);
        return false;
    }
    return true;
}

static nb_tensor *batch_norm_impl(const nb_tensor *x, nb_tensor *rm, nb_tensor *rv,
                                  const nb_tensor *w, const nb_tensor *b, bool training,
                                  double momentum, double eps)
{
    const char *op = "batch_norm";
    if (is_null(op, "input", x) || !check_float(op, "input", x))
        return NULL;
    if (x->ndim < 2) {
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
    int64_t C = x->shape[1];
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

/* ================================== losses ================================== */

/* Reduces an elementwise loss l (a reference the caller passes on). */
static nb_tensor *reduce_loss(nb_tensor *l, nb_reduction r)
{
    if (!l || r == NB_REDUCTION_NONE)
        return l;
    nb_tensor *out = r == NB_REDUCTION_MEAN ? nb_mean(l, NULL, 0, false)
                                            : nb_sum(l, NULL, 0, false);
    nb_release(l);
    return out;
}

/* The gradient of a reduced elementwise loss: g (0-d, or l's shape for NONE) times d l / d v. */
static nb_tensor *loss_grad(const nb_tensor *g, const nb_tensor *d, nb_reduction r, int64_t n)
{
    nb_tensor *p = d ? nb_mul(d, g) : NULL;
    if (p && r == NB_REDUCTION_MEAN) {
        nb_tensor *q = nb_div_scalar(p, (double)n);
        nb_release(p);
        p = q;
    }
    return p;
}

/* ctx->i: reduction, numel; saved: 0 = input, 1 = target */
static bool loss_check(const char *op, const nb_tensor *input, const nb_tensor *target,
                       nb_reduction r, bool same)
{
    if (is_null(op, "input", input) || is_null(op, "target", target) ||
        !check_float(op, "input", input) || !check_like(op, "target", target, input) ||
        !check_reduction(op, r))
        return false;
    if (same && !same_shape(input, target)) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: target size %s must be the same as input size %s", op,
                  NBI_SHAPE_STR(target), NBI_SHAPE_STR(input));
        return false;
    }
    return true;
}

static nb_tensor *loss_apply(const nb_function *fn, const char *op, const nb_tensor *input,
                             const nb_tensor *target, nb_reduction r)
{
    fctx *c = fctx_new(op);
    if (c)
        c->i[0] = r;
    return apply(fn, c, (nb_tensor *[]){(nb_tensor *)input, (nb_tensor *)target}, 2);
}

static void loss_save(fctx *c, nb_tensor *const *in, const nb_tensor *out)
{
    if (out && c->record) {
        save(c, 0, in[0]);
        save(c, 1, in[1]);
    }
}

/* mse: (x - t)^2; broadcasting like PyTorch (which warns when the sizes differ) */
static nb_tensor *mse_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nb_tensor *d = nb_sub(in[0], in[1]);
    nb_tensor *sq = d ? nb_mul(d, d) : NULL;
    nb_release(d);
    if (sq)
        c->i[1] = numel_of(sq);
    nb_tensor *out = reduce_loss(sq, (nb_reduction)c->i[0]);
    loss_save(c, in, out);
    return out;
}

static nb_status mse_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, t);
    tmps s = {0};
    nb_tensor *d = tk(&s, nb_mul_scalar(tk(&s, nb_sub(x, t)), 2.0));
    nb_tensor *gx = tk(&s, loss_grad(g, d, (nb_reduction)c->i[0], c->i[1]));
    if (c->need[0])
        gi[0] = nb_retain(gx);
    if (c->need[1])
        gi[1] = gx ? nb_neg(gx) : NULL;
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function mse_fn = {"MseLossBackward0", mse_forward, mse_backward, fctx_free};

/* bce: -(t log x + (1 - t) log(1 - x)), each log clamped at -100 as in PyTorch */
static nb_tensor *bce_logs(const nb_tensor *x, nb_tensor **l1x)
{
    nb_tensor *lx = nb_log(x), *lx_c = lx ? nb_clamp(lx, -100, NAN) : NULL;
    nb_tensor *om = nb_rsub_scalar(x, 1.0), *l1 = om ? nb_log(om) : NULL;
    *l1x = l1 ? nb_clamp(l1, -100, NAN) : NULL;
    nb_release(lx);
    nb_release(om);
    nb_release(l1);
    if (!*l1x) {
        nb_release(lx_c);
        return NULL;
    }
    return lx_c;
}

static nb_tensor *bce_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    tmps s = {0};
    nb_tensor *l1x = NULL, *lx = tk(&s, bce_logs(in[0], &l1x));
    tk(&s, l1x);
    /* (t - 1) log(1 - x) - t log x */
    nb_tensor *a = lx ? tk(&s, nb_mul(in[1], lx)) : NULL;
    nb_tensor *b = l1x ? tk(&s, nb_mul(tk(&s, nb_add_scalar(in[1], -1.0)), l1x)) : NULL;
    nb_tensor *l = a && b ? nb_sub(b, a) : NULL;
    tfree(&s);
    c->i[1] = numel_of(in[0]);
    nb_tensor *out = reduce_loss(l, (nb_reduction)c->i[0]);
    loss_save(c, in, out);
    return out;
}

/* d/dx = (x - t) / max(x (1 - x), 1e-12);  d/dt = log(1 - x) - log x (clamped) */
static nb_status bce_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, t);
    nb_reduction r = (nb_reduction)c->i[0];
    tmps s = {0};
    if (c->need[0]) {
        nb_tensor *den = tk(&s, nb_clamp(tk(&s, nb_mul(x, tk(&s, nb_rsub_scalar(x, 1.0)))),
                                         1e-12, NAN));
        nb_tensor *d = tk(&s, nb_div(tk(&s, nb_sub(x, t)), den));
        gi[0] = loss_grad(g, d, r, c->i[1]);
    }
    if (c->need[1]) {
        nb_tensor *l1x = NULL, *lx = tk(&s, bce_logs(x, &l1x));
        tk(&s, l1x);
        nb_tensor *d = lx ? tk(&s, nb_sub(l1x, lx)) : NULL;
        gi[1] = loss_grad(g, d, r, c->i[1]);
    }
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function bce_fn = {"BinaryCrossEntropyBackward0", bce_forward, bce_backward,
                                   fctx_free};

/* with logits: max(x, 0) - x t + log(1 + exp(-|x|)), stable for large |x| */
static nb_tensor *bcel_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0], *t = in[1];
    tmps s = {0};
    nb_tensor *sp = tk(&s, nb_log(tk(&s, nb_add_scalar(tk(&s, nb_exp(tk(&s, nb_neg(tk(&s,
                                                     nb_abs(x)))))), 1.0))));
    nb_tensor *l = tk(&s, nb_add(tk(&s, nb_sub(tk(&s, nb_relu(x)), tk(&s, nb_mul(x, t)))), sp));
    c->i[1] = numel_of(x);
    nb_tensor *out = reduce_loss(tret(&s, l), (nb_reduction)c->i[0]);
    loss_save(c, in, out);
    return out;
}

/* d/dx = sigmoid(x) - t;  d/dt = -x */
static nb_status bcel_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, t);
    nb_reduction r = (nb_reduction)c->i[0];
    tmps s = {0};
    if (c->need[0])
        gi[0] = loss_grad(g, tk(&s, nb_sub(tk(&s, nb_sigmoid(x)), t)), r, c->i[1]);
    if (c->need[1])
        gi[1] = loss_grad(g, tk(&s, nb_neg(x)), r, c->i[1]);
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function bcel_fn = {"BinaryCrossEntropyWithLogitsBackward0", bcel_forward,
                                    bcel_backward, fctx_free};

static nb_tensor *mse_loss_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    const char *op = "mse_loss";
    if (!loss_check(op, input, target, r, false))
        return NULL;
    int32_t nd = input->ndim > target->ndim ? input->ndim : target->ndim;
    for (int32_t d = 0; d < nd; d++) {
        int32_t da = d - (nd - input->ndim), db = d - (nd - target->ndim);
        int64_t p = da >= 0 ? input->shape[da] : 1, q = db >= 0 ? target->shape[db] : 1;
        if (p != q && p != 1 && q != 1) {
            nbi_error(NB_SHAPE_MISMATCH, "mse_loss: target size %s cannot be broadcast to input "
                      "size %s", NBI_SHAPE_STR(target), NBI_SHAPE_STR(input));
            return NULL;
        }
    }
    return loss_apply(&mse_fn, op, input, target, r);
}

/* PyTorch refuses probabilities outside [0, 1] (NaN among them) rather than return NaN. */
static bool check_probabilities(const char *op, const nb_tensor *x)
{
    tmps s = {0};
    nb_tensor *in = tk(&s, nb_logical_and(tk(&s, nb_ge_scalar(x, 0)), tk(&s, nb_le_scalar(x, 1))));
    nb_tensor *bad = tk(&s, nb_sum(tk(&s, nb_logical_not(in)), NULL, 0, false));
    double n = 0;
    bool ok = bad && nb_item(bad, &n) == NB_OK;
    tfree(&s);
    if (ok && n > 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: all elements of input should be between 0 and 1 "
                  "(%.0f of input %s are not)", op, n, NBI_SHAPE_STR(x));
        return false;
    }
    return ok;
}

static nb_tensor *bce_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                           bool logits)
{
    const char *op = logits ? "binary_cross_entropy_with_logits" : "binary_cross_entropy";
    if (!loss_check(op, input, target, r, true) || (!logits && !check_probabilities(op, input)))
        return NULL;
    return loss_apply(logits ? &bcel_fn : &bce_fn, op, input, target, r);
}

/* ================================ nll_loss ================================ */

#define NLL_IGNORE_INDEX (-100) /* PyTorch's default ignore_index: such targets add nothing */

/* ctx->i: reduction, kept count; shape: input as the node sees it (N, C, *); tshape: target;
 * saved: 0 = index (N, 1, *) with ignored entries at 0, 1 = float mask (N, 1, *) of kept
 * entries, NULL when nothing is ignored. */
static nb_tensor *nll_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nb_tensor *idx = c->saved[0], *mask = c->saved[1];
    nb_reduction r = (nb_reduction)c->i[0];
    tmps s = {0};
    nb_tensor *l = tk(&s, nb_neg(tk(&s, nb_gather(in[0], 1, idx)))); /* (N, 1, *) */
    if (l && mask)
        l = tk(&s, nb_mul(l, mask));
    nb_tensor *out;
    if (r == NB_REDUCTION_NONE)
        out = l ? nb_reshape(l, c->tshape) : NULL;
    else if (r == NB_REDUCTION_SUM)
        out = l ? nb_sum(l, NULL, 0, false) : NULL;
    else /* mean over the kept entries; 0/0 = nan when all are ignored, as in PyTorch */
        out = l ? nb_div_scalar(tk(&s, nb_sum(l, NULL, 0, false)), (double)c->i[1]) : NULL;
    tfree(&s);
    return out;
}

/* g_x = scatter of -g (scaled for the mean) into the targets' positions */
static nb_status nll_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, idx);
    SAVED(1, mask);
    if (!c->need[0])
        return NB_OK;
    nb_reduction r = (nb_reduction)c->i[0];
    double scale = r != NB_REDUCTION_MEAN ? -1.0 : c->i[1] ? -1.0 / (double)c->i[1] : 0.0;
    tmps s = {0};
    nb_tensor *gs = tk(&s, nb_mul_scalar(g, scale));
    nb_tensor *src = r == NB_REDUCTION_NONE ? tk(&s, nb_reshape(gs, shape_of(idx)))
                                            : tk(&s, nb_expand(gs, shape_of(idx)));
    if (src && mask)
        src = tk(&s, nb_mul(src, mask));
    nb_tensor *z = tk(&s, nb_zeros(c->shape, opts_of(g)));
    gi[0] = z && src ? nb_scatter_add(z, 1, idx, src) : NULL;
    tfree(&s);
    return bw_done(c, gi, n);
}

static const nb_function nll_fn = {"NllLossBackward0", nll_forward, nll_backward, fctx_free};

/* Checks input (C) or (N, C, *) against int64 target () or (N, *), reads the targets once on
 * the host to check their range and count the ignored ones, and returns the node's ctx. */
static fctx *nll_prepare(const char *op, const nb_tensor *input, const nb_tensor *target,
                         nb_reduction r)
{
    if (is_null(op, "input", input) || is_null(op, "target", target) ||
        !check_float(op, "input", input) || !check_reduction(op, r))
        return NULL;
    if (target->storage->device != input->storage->device) {
        nbi_error(NB_DEVICE_MISMATCH, "%s: target is on %s but the input is on %s", op,
                  DEVNAME(target), DEVNAME(input));
        return NULL;
    }
    if (target->dtype != NB_DTYPE_I64) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: target must hold int64 class indices, got %s", op,
                  nb_dtype_name(target->dtype));
        return NULL;
    }
    if (input->ndim < 1) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: expected an input of shape (C) or (N, C, *), got %s",
                  op, NBI_SHAPE_STR(input));
        return NULL;
    }
    bool ok = target->ndim == (input->ndim == 1 ? 0 : input->ndim - 1);
    for (int32_t d = 0; ok && d < target->ndim; d++)
        ok = target->shape[d] == input->shape[d == 0 ? 0 : d + 1];
    if (!ok) {
        if (input->ndim >= 2 && target->ndim >= 1 && target->shape[0] != input->shape[0])
            nbi_error(NB_SHAPE_MISMATCH, "%s: expected input batch_size (%lld) to match target "
                      "batch_size (%lld)", op, (long long)input->shape[0],
                      (long long)target->shape[0]);
        else
            nbi_error(NB_SHAPE_MISMATCH, "%s: target %s does not fit input %s: expected the "
                      "input's shape without its class dim %d", op, NBI_SHAPE_STR(target),
                      NBI_SHAPE_STR(input), input->ndim == 1 ? 0 : 1);
        return NULL;
    }
    int64_t nt = numel_of(target), classes = input->shape[input->ndim == 1 ? 0 : 1];
    int64_t *tv = nbi_malloc((size_t)(nt ? nt : 1) * sizeof *tv);
    if (!tv) {
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    if (nb_tensor_copy_to_host(target, tv, (size_t)nt * sizeof *tv) != NB_OK) {
        nbi_free(tv);
        return NULL;
    }
    int64_t kept = 0;
    for (int64_t k = 0; k < nt; k++) {
        if (tv[k] == NLL_IGNORE_INDEX)
            continue;
        if (tv[k] < 0 || tv[k] >= classes) {
            nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: target %lld is out of bounds: the input has "
                      "%lld classes (target element %lld)", op, (long long)tv[k],
                      (long long)classes, (long long)k);
            nbi_free(tv);
            return NULL;
        }
        kept++;
    }
    fctx *c = fctx_new(op);
    if (!c) {
        nbi_free(tv);
        return NULL;
    }
    c->i[0] = r;
    c->i[1] = kept;
    c->tshape = shape_of(target);
    c->shape = shape_of(input);
    if (input->ndim == 1) /* unbatched: the node sees (1, C) */
        c->shape = NB_SHAPE(1, classes);
    nb_shape is = {.ndim = c->shape.ndim}; /* (N, 1, *) */
    memcpy(is.dims, c->shape.dims, sizeof is.dims);
    is.dims[1] = 1;
    nb_tensor *idx = NULL, *mask = NULL;
    if (kept == nt) {
        idx = nb_reshape(target, is);
    } else {
        double *mv = nbi_malloc((size_t)(nt ? nt : 1) * sizeof *mv);
        for (int64_t k = 0; mv && k < nt; k++) {
            mv[k] = tv[k] != NLL_IGNORE_INDEX;
            tv[k] = tv[k] == NLL_IGNORE_INDEX ? 0 : tv[k];
        }
        nb_tensor *m64 = mv ? nb_from_data(mv, is, (nb_opts){NB_DTYPE_F64, DEVNAME(input)})
                            : NULL;
        if (!mv)
            nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", op);
        idx = m64 ? nb_from_data(tv, is, (nb_opts){NB_DTYPE_I64, DEVNAME(input)}) : NULL;
        mask = idx ? nb_to_dtype(m64, input->dtype) : NULL;
        nb_release(m64);
        nbi_free(mv);
        if (!mask) {
            nb_release(idx);
            idx = NULL;
        }
    }
    nbi_free(tv);
    if (!idx) {
        fctx_free(c);
        return NULL;
    }
    save(c, 0, idx);
    save(c, 1, mask);
    nb_release(idx);
    nb_release(mask);
    return c;
}

/* x: the scores (or log-probabilities) that nll_prepare checked; c is consumed. */
static nb_tensor *nll_apply(fctx *c, const nb_tensor *x)
{
    if (!c || !x) {
        if (c)
            fctx_free(c);
        return NULL;
    }
    nb_tensor *x2 = x->ndim == 1 ? nb_unsqueeze(x, 0) : nb_retain((nb_tensor *)x);
    if (!x2) {
        fctx_free(c);
        return NULL;
    }
    nb_tensor *out = apply(&nll_fn, c, &x2, 1);
    nb_release(x2);
    return out;
}

static nb_tensor *nll_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    fctx *c = nll_prepare("nll_loss", input, target, r);
    return c ? nll_apply(c, input) : NULL;
}

/* PyTorch's composition: nll_loss(log_softmax(input, class dim)); a floating point target of
 * the input's shape holds class probabilities instead: -sum(target * log_softmax). */
static nb_tensor *cross_entropy_impl(const nb_tensor *input, const nb_tensor *target,
                                     nb_reduction r)
{
    const char *op = "cross_entropy";
    if (is_null(op, "input", input) || is_null(op, "target", target) ||
        !check_float(op, "input", input) || !check_reduction(op, r))
        return NULL;
    int32_t cdim = input->ndim == 1 ? 0 : 1;
    if (nb_dtype_is_float(target->dtype)) {
        if (!check_like(op, "target (class probabilities)", target, input))
            return NULL;
        if (input->ndim < 1 || !same_shape(input, target)) {
            nbi_error(NB_SHAPE_MISMATCH, "cross_entropy: a floating point target holds class "
                      "probabilities and must have the input's shape %s, got %s",
                      NBI_SHAPE_STR(input), NBI_SHAPE_STR(target));
            return NULL;
        }
        tmps s = {0};
        nb_tensor *lp = tk(&s, nb_log_softmax(input, cdim));
        nb_tensor *l = tk(&s, nb_neg(tk(&s, nb_sum(tk(&s, nb_mul(lp, target)), &cdim, 1, false))));
        return tret(&s, l ? tk(&s, reduce_loss(nb_retain(l), r)) : NULL);
    }
    fctx *c = nll_prepare(op, input, target, r);
    if (!c)
        return NULL;
    nb_tensor *lp = nb_log_softmax(input, cdim);
    nb_tensor *out = nll_apply(c, lp);
    nb_release(lp);
    return out;
}

/* ============================ public entry points ============================ */
/* NBI_API at each definition: what these create for themselves never enters the application's
 * scope, and the result does when it leaves depth 0. */

nb_tensor *nb_linear(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b)
{
    return NBI_API(linear_impl(x, w, b));
}

nb_tensor *nb_conv2d(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b,
                     nb_conv2d_opts opts)
{
    return NBI_API(conv2d_impl(x, w, b, opts));
}

nb_tensor *nb_max_pool2d(const nb_tensor *x, nb_pool2d_opts opts)
{
    return NBI_API(pool_impl("max_pool2d", &max_pool2d_fn, x, opts));
}

nb_tensor *nb_avg_pool2d(const nb_tensor *x, nb_pool2d_opts opts)
{
    return NBI_API(pool_impl("avg_pool2d", &avg_pool2d_fn, x, opts));
}

nb_tensor *nb_gelu(const nb_tensor *x) { return NBI_API(gelu_impl(x)); }

nb_tensor *nb_softmax(const nb_tensor *x, int32_t dim)
{
    return NBI_API(softmax_impl(x, dim, false));
}

nb_tensor *nb_log_softmax(const nb_tensor *x, int32_t dim)
{
    return NBI_API(softmax_impl(x, dim, true));
}

nb_tensor *nb_dropout(const nb_tensor *x, double p, bool training)
{
    return NBI_API(dropout_impl(x, p, training));
}

nb_tensor *nb_batch_norm(const nb_tensor *x, nb_tensor *running_mean, nb_tensor *running_var,
                         const nb_tensor *weight, const nb_tensor *bias, bool training,
                         double momentum, double eps)
{
    return NBI_API(batch_norm_impl(x, running_mean, running_var, weight, bias, training, momentum,
                                   eps));
}

nb_tensor *nb_mse_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    return NBI_API(mse_loss_impl(input, target, r));
}

nb_tensor *nb_binary_cross_entropy(const nb_tensor *input, const nb_tensor *target,
                                   nb_reduction r)
{
    return NBI_API(bce_impl(input, target, r, false));
}

nb_tensor *nb_binary_cross_entropy_with_logits(const nb_tensor *input, const nb_tensor *target,
                                               nb_reduction r)
{
    return NBI_API(bce_impl(input, target, r, true));
}

nb_tensor *nb_cross_entropy(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    return NBI_API(cross_entropy_impl(input, target, r));
}

nb_tensor *nb_nll_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    return NBI_API(nll_impl(input, target, r));
}
