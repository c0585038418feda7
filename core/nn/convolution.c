/* convolution.c - the sliding-window ops of torch.nn.functional: conv2d (groups, dilation,
 * padding="same") and max_pool2d / avg_pool2d, over one window geometry (im2col through gather
 * and scatter_add); each is one autograd node, tier-2 kernels forward where the device has them. */
#include "functional.h"

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
    nb_tensor *t = nb_from_data(tab, NB_SHAPE(1, 1, n), (nb_opts){NB_DTYPE_I64, NNC_DEV(like)});
    nbi_free(tab);
    return t;
}

/* x (N, c, H, W) -> (N, c, K * L): the input under every window position, `pad` outside. */
static nb_tensor *gather_windows(const nb_tensor *x, const nb_tensor *table, const geom *g,
                                 int64_t c, double pad)
{
    nnc_tmps s = {0};
    nb_tensor *xf = nnc_k(&s, nb_reshape(x, NB_SHAPE(g->n, c, g->h * g->w)));
    nb_tensor *col = nnc_k(&s, nb_full(NB_SHAPE(g->n, c, 1), pad, nnc_opts(x)));
    nb_tensor *parts[2] = {xf, col};
    nb_tensor *xp = xf && col ? nnc_k(&s, nb_cat(parts, 2, 2)) : NULL;
    nb_tensor *idx = nnc_k(&s, nb_expand(table, NB_SHAPE(g->n, c, geom_k(g) * geom_l(g))));
    return nnc_ret(&s, xp && idx ? nnc_k(&s, nb_gather(xp, 2, idx)) : NULL);
}

/* The adjoint of gather_windows: cols (N, c, K * L) summed back into (N, c, H, W). */
static nb_tensor *scatter_windows(const nb_tensor *cols, const nb_tensor *table, const geom *g,
                                  int64_t c)
{
    nnc_tmps s = {0};
    int64_t hw = g->h * g->w;
    nb_tensor *z = nnc_k(&s, nb_zeros(NB_SHAPE(g->n, c, hw + 1), nnc_opts(cols)));
    nb_tensor *idx = nnc_k(&s, nb_expand(table, NB_SHAPE(g->n, c, geom_k(g) * geom_l(g))));
    nb_tensor *acc = z && idx ? nnc_k(&s, nb_scatter_add(z, 2, idx, cols)) : NULL;
    nb_tensor *in = nnc_k(&s, nb_narrow(acc, 2, 0, hw));
    return nnc_ret(&s, nnc_k(&s, nb_reshape(in, NB_SHAPE(g->n, c, g->h, g->w))));
}

/* Accepts (N, C, H, W) or unbatched (C, H, W) input; *unbatched says which. */
static bool check_image(const char *op, const nb_tensor *x, bool *unbatched)
{
    if (nb_tensor_ndim(x) != 3 && nb_tensor_ndim(x) != 4) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: expected a 3-d (C, H, W) or 4-d (N, C, H, W) input, "
                  "got %s", op, NBI_SHAPE_STR(x));
        return false;
    }
    *unbatched = nb_tensor_ndim(x) == 3;
    return nnc_float(op, "input", x);
}

/* ================================== conv2d ================================== */

/* ctx->i: stride h,w, padding h,w, dilation h,w, groups (the kernels' order), then bias. */
static void conv_kernel_ints(const fctx *c, int64_t iv[7]) { memcpy(iv, c->i, 7 * sizeof *iv); }

static geom conv_geom(const nb_tensor *x, const nb_tensor *w, const int64_t *iv)
{
    geom g = {.n = nbi_dims(x)[0], .c = nbi_dims(x)[1], .h = nbi_dims(x)[2], .w = nbi_dims(x)[3],
              .kh = nbi_dims(w)[2], .kw = nbi_dims(w)[3], .sh = iv[0], .sw = iv[1], .ph = iv[2],
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
    const int64_t *ws = nbi_dims(w);
    return nb_reshape(w, NB_SHAPE(G, ws[0] / G, ws[1] * ws[2] * ws[3]));
}

static nb_tensor *conv_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0], *w = in[1], *b = in[2];
    int64_t iv[7], G = c->i[6];
    conv_kernel_ints(c, iv);
    geom g = conv_geom(x, w, iv);
    int64_t O = nbi_dims(w)[0];
    nb_tensor *out = NULL;
    nnc_tmps s = {0};
    if (numel_of(x) == 0 || numel_of(w) == 0) {
        out = nb_zeros(NB_SHAPE(g.n, O, g.oh, g.ow), nnc_opts(x));
    } else if (nbi_has_kernel(x, "conv2d")) {
        nb_tensor *xc = nnc_k(&s, nb_contiguous(x)), *wc = nnc_k(&s, nb_contiguous(w));
        out = xc && wc ? nnc_run("conv2d", NB_SHAPE(g.n, O, g.oh, g.ow), nnc_opts(x),
                                 (nb_tensor *[]){xc, wc}, 2, NULL, 0, iv, 7)
                       : NULL;
    } else {
        /* im2col by gather, then one batched matmul over the groups */
        nb_tensor *table = nnc_k(&s, window_table(x, &g));
        nb_tensor *cols = table ? nnc_k(&s, conv_cols(x, table, &g, G)) : NULL;
        nb_tensor *wm = nnc_k(&s, conv_wmat(w, G));
        nb_tensor *wb = nnc_k(&s, nb_unsqueeze(wm, 0));                /* (1, G, O/G, CK) */
        nb_tensor *o = cols && wb ? nnc_k(&s, nb_matmul(wb, cols)) : NULL; /* (N, G, O/G, L) */
        out = o ? nb_reshape(o, NB_SHAPE(g.n, O, g.oh, g.ow)) : NULL;
    }
    if (out && b) {
        nb_tensor *bv = nnc_k(&s, nb_reshape(b, NB_SHAPE(O, 1, 1)));
        if (!bv || nb_add_(out, bv) != NB_OK) {
            nb_release(out);
            out = NULL;
        }
    }
    nnc_free(&s);
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
    nnc_tmps s = {0};
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
        nb_tensor *gc = nnc_k(&s, nb_contiguous(g));
        if (fast_x) {
            nb_tensor *wc = nnc_k(&s, nb_contiguous(w));
            gi[0] = gc && wc ? nnc_run("conv2d_backward_input", nnc_shape(x), nnc_opts(x),
                                       (nb_tensor *[]){gc, wc}, 2, NULL, 0, iv, 7)
                             : NULL;
        }
        if (fast_w) {
            nb_tensor *xc = nnc_k(&s, nb_contiguous(x));
            gi[1] = gc && xc ? nnc_run("conv2d_backward_weight", nnc_shape(w), nnc_opts(w),
                                       (nb_tensor *[]){gc, xc}, 2, NULL, 0, iv, 7)
                             : NULL;
        }
    }
    if ((c->need[0] && !fast_x) || (c->need[1] && !fast_w)) {
        int64_t O = nbi_dims(w)[0], L = geom_l(&geo);
        nb_tensor *table = nnc_k(&s, window_table(x, &geo));
        nb_tensor *gg = nnc_k(&s, nb_reshape(g, NB_SHAPE(geo.n, G, O / G, L)));
        if (c->need[0] && !fast_x) {
            /* d cols = W^T g, summed back into the image */
            nb_tensor *wm = nnc_k(&s, conv_wmat(w, G));
            nb_tensor *wt = nnc_k(&s, nb_transpose(wm, 1, 2));             /* (G, CK, O/G) */
            nb_tensor *gcol = wt && gg ? nnc_k(&s, nb_matmul(wt, gg)) : NULL; /* (N, G, CK, L) */
            nb_tensor *gcf = nnc_k(&s, nb_reshape(gcol, NB_SHAPE(geo.n, geo.c, geom_k(&geo) * L)));
            gi[0] = gcf && table ? scatter_windows(gcf, table, &geo, geo.c) : NULL;
        }
        if (c->need[1] && !fast_w) {
            /* d W = sum over the batch of g cols^T */
            nb_tensor *cols = table ? nnc_k(&s, conv_cols(x, table, &geo, G)) : NULL;
            nb_tensor *ct = nnc_k(&s, nb_transpose(cols, 2, 3));          /* (N, G, L, CK) */
            nb_tensor *p = gg && ct ? nnc_k(&s, nb_matmul(gg, ct)) : NULL; /* (N, G, O/G, CK) */
            nb_tensor *sw = nnc_k(&s, nb_sum(p, (int32_t[]){0}, 1, false));
            gi[1] = sw ? nb_reshape(sw, nnc_shape(w)) : NULL;
        }
    }
    nnc_free(&s);
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
        /* A kernel of size 0 or a negative dilation pads nothing here: conv2d_impl names it. */
        int64_t d = o.dilation[k] > 0 ? o.dilation[k] : 1, kk = nbi_dims(w)[2 + k], total = 0;
        int64_t size = nbi_dims(x)[nb_tensor_ndim(x) - 2 + k], padded;
        if (kk > 0 && o.dilation[k] >= 0 &&
            (__builtin_mul_overflow(d, kk - 1, &total) ||
             __builtin_add_overflow(size, total, &padded))) {
            nbi_error(NB_INVALID_ARGUMENT, "conv2d: padding='same' with dilation %lld and "
                      "kernel size %lld on an input of size %lld: the padded extent overflows "
                      "int64", (long long)d, (long long)kk, (long long)size);
            return NULL;
        }
        o.padding[k] = total / 2;
        extra[k] = total - 2 * o.padding[k];
    }
    o.padding_same = false;
    nnc_tmps s = {0};
    const nb_tensor *xp = x;
    for (int k = 0; k < 2 && xp; k++) {
        if (!extra[k])
            continue;
        int32_t dim = nb_tensor_ndim(xp) - 2 + k;
        nb_shape zs = nnc_shape(xp);
        zs.dims[dim] = extra[k];
        nb_tensor *z = nnc_k(&s, nb_zeros(zs, nnc_opts(xp)));
        nb_tensor *parts[2] = {(nb_tensor *)xp, z};
        xp = z ? nnc_k(&s, nb_cat(parts, 2, dim)) : NULL;
    }
    nb_tensor *out = xp ? conv2d_impl(xp, w, b, o) : NULL;
    nnc_free(&s);
    return out;
}

static nb_tensor *conv2d_impl(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b,
                              nb_conv2d_opts o)
{
    const char *op = "conv2d";
    bool unbatched;
    if (nnc_null(op, "input", x) || nnc_null(op, "weight", w) || !check_image(op, x, &unbatched) ||
        !nnc_like(op, "weight", w, x) || (b && !nnc_like(op, "bias", b, x)))
        return NULL;
    if (nb_tensor_ndim(w) != 4) {
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
    int32_t nd = nb_tensor_ndim(x);
    int64_t C = nbi_dims(x)[unbatched ? 0 : 1], H = nbi_dims(x)[nd - 2], W = nbi_dims(x)[nd - 1];
    if (__builtin_mul_overflow(nbi_dims(w)[1], G, &CG)) {
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
    if (nbi_dims(w)[0] % G != 0) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: weight %s has %lld output channels, which is not "
                  "divisible by groups=%lld", NBI_SHAPE_STR(w), (long long)nbi_dims(w)[0],
                  (long long)G);
        return NULL;
    }
    if (nbi_dims(w)[2] <= 0 || nbi_dims(w)[3] <= 0) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: weight %s has an empty kernel", NBI_SHAPE_STR(w));
        return NULL;
    }
    geom g = {.n = unbatched ? 1 : nbi_dims(x)[0], .c = C, .h = H, .w = W, .kh = nbi_dims(w)[2],
              .kw = nbi_dims(w)[3], .sh = iv[0], .sw = iv[1], .ph = iv[2], .pw = iv[3],
              .dh = iv[4], .dw = iv[5]};
    if (!geom_check(op, &g))
        return NULL;
    if (b && !(nb_tensor_ndim(b) == 1 && nbi_dims(b)[0] == nbi_dims(w)[0])) {
        nbi_error(NB_SHAPE_MISMATCH, "conv2d: bias %s does not match weight %s: expected [%lld]",
                  NBI_SHAPE_STR(b), NBI_SHAPE_STR(w), (long long)nbi_dims(w)[0]);
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
    *g = (geom){.n = unbatched ? 1 : nbi_dims(x)[0], .c = nbi_dims(x)[d], .h = nbi_dims(x)[d + 1],
                .w = nbi_dims(x)[d + 2], .kh = o.kernel[0], .kw = o.kernel[1],
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
    nb_tensor *f = nb_from_data(d, NB_SHAPE(1, 1, 1, L), (nb_opts){NB_DTYPE_F64, NNC_DEV(like)});
    nbi_free(d);
    nb_tensor *r = f ? nb_to_dtype(f, nb_tensor_dtype(like)) : NULL;
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
    nnc_tmps s = {0};
    if (numel_of(x) == 0) {
        out = nb_empty(os, nnc_opts(x));
        idx = nb_empty(os, (nb_opts){NB_DTYPE_I64, NNC_DEV(x)});
    } else if (POOL_PLAIN(c) && nbi_has_kernel(x, "max_pool2d")) {
        int64_t iv[6];
        pool_ints(&g, iv);
        nb_tensor *xc = nnc_k(&s, nb_contiguous(x));
        out = xc ? nb_empty(os, nnc_opts(x)) : NULL;
        idx = out ? nb_empty(os, (nb_opts){NB_DTYPE_I64, NNC_DEV(x)}) : NULL;
        if (idx && nbi_run("max_pool2d", out, (nb_tensor *[]){xc, idx}, 2, NULL, 0, iv, 6) !=
                       NB_OK) {
            nb_release(idx);
            idx = NULL;
        }
    } else {
        /* gather the windows with -inf outside, then the first maximum of each */
        int64_t K = geom_k(&g), L = geom_l(&g);
        nb_tensor *table = nnc_k(&s, window_table(x, &g));
        nb_tensor *win = table ? nnc_k(&s, gather_windows(x, table, &g, g.c, -INFINITY)) : NULL;
        nb_tensor *w4 = nnc_k(&s, nb_view(win, NB_SHAPE(g.n, g.c, K, L)));
        nb_tensor *val = NULL, *arg = NULL;
        if (w4 && nb_max_dim(w4, 2, true, &val, &arg) == NB_OK) {
            nnc_k(&s, val);
            nnc_k(&s, arg);
            /* window offset -> flat input position, through the same table. Tier 1 promises
             * a float32 gather only, and positions below 2^24 are exact in float32. */
            nb_dtype via = g.h * g.w < (1 << 24) ? NB_DTYPE_F32 : NB_DTYPE_I64;
            nb_tensor *t1 = nnc_k(&s, nb_view(table, NB_SHAPE(1, 1, K, L)));
            nb_tensor *tf = nnc_k(&s, nb_to_dtype(t1, via));
            nb_tensor *t4 = nnc_k(&s, nb_expand(tf, NB_SHAPE(g.n, g.c, K, L)));
            nb_tensor *pf = t4 ? nnc_k(&s, nb_gather(t4, 2, arg)) : NULL;
            nb_tensor *pos = pf ? nnc_k(&s, nb_to_dtype(pf, NB_DTYPE_I64)) : NULL;
            out = nb_reshape(val, os);
            idx = pos ? nb_reshape(pos, os) : NULL;
        }
    }
    if (!idx) {
        nb_release(out);
        out = NULL;
    }
    nnc_free(&s);
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
    nnc_tmps s = {0};
    if (!c->need[0])
        return NB_OK;
    if (numel_of(g) == 0) {
        gi[0] = nb_zeros(xs, nnc_opts(g));
    } else if (POOL_PLAIN(c) && bw_fast(g, "max_pool2d_backward")) {
        int64_t iv[6];
        pool_ints(&geo, iv);
        nb_tensor *gc = nnc_k(&s, nb_contiguous(g));
        gi[0] = gc ? nnc_run("max_pool2d_backward", xs, nnc_opts(g), (nb_tensor *[]){gc, idx}, 2,
                             NULL, 0, iv, 6) /* the kernel zeroes it first */
                   : NULL;
    } else {
        int64_t L = geom_l(&geo);
        nb_tensor *z = nnc_k(&s, nb_zeros(NB_SHAPE(geo.n, geo.c, geo.h * geo.w), nnc_opts(g)));
        nb_tensor *i3 = nnc_k(&s, nb_reshape(idx, NB_SHAPE(geo.n, geo.c, L)));
        nb_tensor *g3 = nnc_k(&s, nb_reshape(g, NB_SHAPE(geo.n, geo.c, L)));
        nb_tensor *acc = z && i3 && g3 ? nnc_k(&s, nb_scatter_add(z, 2, i3, g3)) : NULL;
        gi[0] = acc ? nb_reshape(acc, xs) : NULL;
    }
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function max_pool2d_fn = {"MaxPool2DWithIndicesBackward0", max_pool_forward,
                                          max_pool_backward, fctx_free};

/* count_include_pad=True (PyTorch's default): every window divides by kh * kw. The fast path
 * is the conv2d kernel with a constant (1, 1, kh, kw) weight over (N * C, 1, H, W). */
static nb_tensor *avg_weight(const nb_tensor *like, const geom *g)
{
    return nb_full(NB_SHAPE(1, 1, g->kh, g->kw), 1.0 / (double)geom_k(g), nnc_opts(like));
}

static nb_tensor *avg_pool_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0];
    geom g = pool_load(c);
    nb_shape os = NB_SHAPE(g.n, g.c, g.oh, g.ow);
    nb_tensor *out = NULL;
    nnc_tmps s = {0};
    if (numel_of(x) == 0) {
        out = nb_zeros(os, nnc_opts(x));
    } else if (POOL_PLAIN(c) && nbi_has_kernel(x, "conv2d")) {
        int64_t iv[7] = {g.sh, g.sw, g.ph, g.pw, 1, 1, 1};
        nb_tensor *xr = nnc_k(&s, nb_reshape(x, NB_SHAPE(g.n * g.c, 1, g.h, g.w)));
        nb_tensor *xc = nnc_k(&s, nb_contiguous(xr));
        nb_tensor *wk = nnc_k(&s, avg_weight(x, &g));
        nb_tensor *o = xc && wk ? nnc_k(&s, nb_empty(NB_SHAPE(g.n * g.c, 1, g.oh, g.ow),
                                                     nnc_opts(x)))
                                : NULL;
        if (o && nbi_run("conv2d", o, (nb_tensor *[]){xc, wk}, 2, NULL, 0, iv, 7) == NB_OK)
            out = nb_reshape(o, os);
    } else {
        nb_tensor *table = nnc_k(&s, window_table(x, &g));
        nb_tensor *win = table ? nnc_k(&s, gather_windows(x, table, &g, g.c, 0.0)) : NULL;
        nb_tensor *w4 = nnc_k(&s, nb_view(win, NB_SHAPE(g.n, g.c, geom_k(&g), geom_l(&g))));
        nb_tensor *sum = nnc_k(&s, nb_sum(w4, (int32_t[]){2}, 1, true));
        nb_tensor *inv = POOL_PLAIN(c) ? NULL : nnc_k(&s, avg_inv_divisor(x, &g, POOL_EXCLUDE(c)));
        nb_tensor *avg = POOL_PLAIN(c) ? nnc_k(&s, nb_mul_scalar(sum, 1.0 / (double)geom_k(&g)))
                                       : inv && sum ? nnc_k(&s, nb_mul(sum, inv)) : NULL;
        out = avg ? nb_reshape(avg, os) : NULL;
    }
    nnc_free(&s);
    return out;
}

static nb_status avg_pool_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    geom geo = pool_load(c);
    nb_shape xs = NB_SHAPE(geo.n, geo.c, geo.h, geo.w);
    nnc_tmps s = {0};
    if (!c->need[0])
        return NB_OK;
    int64_t K = geom_k(&geo), L = geom_l(&geo);
    if (numel_of(g) == 0) {
        gi[0] = nb_zeros(xs, nnc_opts(g));
    } else if (POOL_PLAIN(c) && bw_fast(g, "conv2d_backward_input")) {
        int64_t iv[7] = {geo.sh, geo.sw, geo.ph, geo.pw, 1, 1, 1};
        nb_tensor *gr = nnc_k(&s, nb_reshape(g, NB_SHAPE(geo.n * geo.c, 1, geo.oh, geo.ow)));
        nb_tensor *gc = nnc_k(&s, nb_contiguous(gr));
        nb_tensor *wk = nnc_k(&s, avg_weight(g, &geo));
        nb_tensor *gx = gc && wk ? nnc_k(&s, nb_empty(NB_SHAPE(geo.n * geo.c, 1, geo.h, geo.w),
                                                   nnc_opts(g)))
                                 : NULL;
        if (gx && nbi_run("conv2d_backward_input", gx, (nb_tensor *[]){gc, wk}, 2, NULL, 0, iv,
                          7) == NB_OK)
            gi[0] = nb_reshape(gx, xs);
    } else {
        /* every window position receives g / K */
        nb_tensor *table = nnc_k(&s, window_table(g, &geo));
        nb_tensor *g4 = nnc_k(&s, nb_reshape(g, NB_SHAPE(geo.n, geo.c, 1, L)));
        nb_tensor *inv = POOL_PLAIN(c) ? NULL
                                       : nnc_k(&s, avg_inv_divisor(g, &geo, POOL_EXCLUDE(c)));
        nb_tensor *gs = POOL_PLAIN(c) ? nnc_k(&s, nb_mul_scalar(g4, 1.0 / (double)K))
                                      : inv && g4 ? nnc_k(&s, nb_mul(g4, inv)) : NULL;
        nb_tensor *ge = nnc_k(&s, nb_expand(gs, NB_SHAPE(geo.n, geo.c, K, L)));
        nb_tensor *g3 = nnc_k(&s, nb_reshape(ge, NB_SHAPE(geo.n, geo.c, K * L)));
        gi[0] = table && g3 ? scatter_windows(g3, table, &geo, geo.c) : NULL;
    }
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function avg_pool2d_fn = {"AvgPool2DBackward0", avg_pool_forward,
                                          avg_pool_backward, fctx_free};

static nb_tensor *pool_impl(const char *op, const nb_function *fn, const nb_tensor *x,
                            nb_pool2d_opts o)
{
    bool unbatched;
    geom g;
    if (nnc_null(op, "input", x) || !check_image(op, x, &unbatched) ||
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

/* ============================ public entry points ============================ */
/* NBI_API at each definition: what these create for themselves never enters the application's
 * scope, and the result does when it leaves depth 0. */

nb_tensor *nb_conv2d(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b,
                     nb_conv2d_opts opts)
{
    NBI_AUTOCAST(NBI_AC_LOWER, &x, &w, &b);
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
