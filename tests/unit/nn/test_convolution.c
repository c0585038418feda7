/* test_convolution.c - tests core/nn/convolution.c: conv2d, max_pool2d and avg_pool2d against
 * direct loops, gradcheck (first and second order), unbatched input, and the errors for bad and
 * huge window arguments. The whole suite runs twice: on the device's tier-2 kernels, then
 * re-executed with NABLA_NO_TIER2=1 so that the tier-1 composites compute the same values. */
#include "functional_test.h"

/* ------------------------------------------------------------------- conv2d */

typedef struct conv_case {
    int64_t n, c, h, w, o, kh, kw;
    nb_conv2d_opts opts;
} conv_case;

static int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d)
{
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

/* Direct loops: out[n, o, i, j] = b[o] + sum over the group's channels and the kernel. */
static void conv_ref(const conv_case *cc, const double *x, const double *w, const double *b,
                     double *out, int64_t *oh_, int64_t *ow_)
{
    int64_t sh = cc->opts.stride[0] ? cc->opts.stride[0] : 1;
    int64_t sw = cc->opts.stride[1] ? cc->opts.stride[1] : 1;
    int64_t dh = cc->opts.dilation[0] ? cc->opts.dilation[0] : 1;
    int64_t dw = cc->opts.dilation[1] ? cc->opts.dilation[1] : 1;
    int64_t ph = cc->opts.padding[0], pw = cc->opts.padding[1];
    int64_t G = cc->opts.groups ? cc->opts.groups : 1, cg = cc->c / G, og = cc->o / G;
    int64_t oh = conv_out(cc->h, cc->kh, sh, ph, dh), ow = conv_out(cc->w, cc->kw, sw, pw, dw);
    for (int64_t n = 0; n < cc->n; n++)
        for (int64_t o = 0; o < cc->o; o++)
            for (int64_t i = 0; i < oh; i++)
                for (int64_t j = 0; j < ow; j++) {
                    double acc = b ? b[o] : 0;
                    int64_t g = o / og;
                    for (int64_t ci = 0; ci < cg; ci++)
                        for (int64_t ki = 0; ki < cc->kh; ki++)
                            for (int64_t kj = 0; kj < cc->kw; kj++) {
                                int64_t y = i * sh - ph + ki * dh, xx = j * sw - pw + kj * dw;
                                if (y < 0 || y >= cc->h || xx < 0 || xx >= cc->w)
                                    continue;
                                acc += x[((n * cc->c + g * cg + ci) * cc->h + y) * cc->w + xx] *
                                       w[((o * cg + ci) * cc->kh + ki) * cc->kw + kj];
                            }
                    out[((n * cc->o + o) * oh + i) * ow + j] = acc;
                }
    *oh_ = oh;
    *ow_ = ow;
}

static void conv2d_matches_direct_loops(void **state)
{
    (void)state;
    const conv_case cases[] = {
        {2, 4, 7, 6, 6, 3, 2, {.stride = {2, 2}, .padding = {1, 1}, .dilation = {2, 2},
                               .groups = 2}},
        {2, 4, 7, 6, 6, 3, 2, {.stride = {2, 1}, .padding = {1, 1}, .dilation = {2, 1},
                               .groups = 2}},
        {2, 3, 6, 5, 4, 3, 3, {.stride = {2, 2}, .padding = {1, 1}}},
        {1, 2, 5, 5, 3, 2, 2, {.dilation = {2, 2}}},
        {3, 1, 8, 8, 6, 3, 3, {.groups = 1}}, /* LeNet's first layer */
    };
    rng_seed(4);
    static double xv[4096], wv[512], bv[16], ref[4096];
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const conv_case *cc = &cases[k];
        int64_t G = cc->opts.groups ? cc->opts.groups : 1;
        for (int i = 0; i < 2; i++) {
            nb_dtype dt = float_dtypes[i];
            nb_tensor *x = random_t(NB_SHAPE(cc->n, cc->c, cc->h, cc->w), xv, -1, 1, dt, true);
            nb_tensor *w = random_t(NB_SHAPE(cc->o, cc->c / G, cc->kh, cc->kw), wv, -1, 1, dt,
                                    true);
            nb_tensor *b = random_t(NB_SHAPE(cc->o), bv, -1, 1, dt, true);
            int64_t oh, ow;
            conv_ref(cc, xv, wv, bv, ref, &oh, &ow);
            nb_tensor *y = nb_conv2d(x, w, b, cc->opts);
            assert_shape(y, NB_SHAPE(cc->n, cc->o, oh, ow));
            assert_close(y, ref, cc->n * cc->o * oh * ow, tol_for(dt), tol_for(dt), "conv2d");
            assert_grad_fn(y, "ConvolutionBackward0");
            assert_int_equal(nb_grad_fn_next_count(nb_tensor_grad_fn(y)), 3);
            nb_tensor *y0 = nb_conv2d(x, w, NULL, cc->opts);
            conv_ref(cc, xv, wv, NULL, ref, &oh, &ow);
            assert_close(y0, ref, cc->n * cc->o * oh * ow, tol_for(dt), tol_for(dt),
                         "conv2d without bias");
            release_all((nb_tensor *[]){x, w, b, y, y0}, 5);
        }
    }
}

/* The gradient of sum(conv2d(x) * r) against the loops' transposes: d x[..] gathers r. */
static void conv2d_gradients_match_loops(void **state)
{
    (void)state;
    const conv_case cc = {2, 4, 6, 5, 4, 3, 2, {.stride = {2, 1}, .padding = {1, 1},
                                                .dilation = {1, 2}, .groups = 2}};
    rng_seed(5);
    static double xv[512], wv[128], bv[8], rv[512], gx[512], gw[128], gb[8];
    nb_tensor *x = random_t(NB_SHAPE(2, 4, 6, 5), xv, -1, 1, NB_DTYPE_F32, true);
    nb_tensor *w = random_t(NB_SHAPE(4, 2, 3, 2), wv, -1, 1, NB_DTYPE_F32, true);
    nb_tensor *b = random_t(NB_SHAPE(4), bv, -1, 1, NB_DTYPE_F32, true);
    nb_tensor *y = nb_conv2d(x, w, b, cc.opts);
    assert_non_null(y);
    nb_shape ys = nb_tensor_shape(y);
    int64_t oh = ys.dims[2], ow = ys.dims[3];
    nb_tensor *r = random_t(ys, rv, -1, 1, NB_DTYPE_F32, false);
    NB_ASSERT_OK(nb_backward(y, r, (nb_backward_opts){0}));
    memset(gx, 0, sizeof gx);
    memset(gw, 0, sizeof gw);
    memset(gb, 0, sizeof gb);
    for (int64_t n = 0; n < 2; n++)
        for (int64_t o = 0; o < 4; o++)
            for (int64_t i = 0; i < oh; i++)
                for (int64_t j = 0; j < ow; j++) {
                    double g = rv[((n * 4 + o) * oh + i) * ow + j];
                    gb[o] += g;
                    int64_t grp = o / 2;
                    for (int64_t ci = 0; ci < 2; ci++)
                        for (int64_t ki = 0; ki < 3; ki++)
                            for (int64_t kj = 0; kj < 2; kj++) {
                                int64_t yy = i * 2 - 1 + ki, xx = j - 1 + kj * 2;
                                if (yy < 0 || yy >= 6 || xx < 0 || xx >= 5)
                                    continue;
                                int64_t xi = ((n * 4 + grp * 2 + ci) * 6 + yy) * 5 + xx;
                                int64_t wi = ((o * 2 + ci) * 3 + ki) * 2 + kj;
                                gx[xi] += g * wv[wi];
                                gw[wi] += g * xv[xi];
                            }
                }
    assert_grad(x, gx, 240, 1e-4, "conv2d grad input");
    assert_grad(w, gw, 48, 1e-4, "conv2d grad weight");
    assert_grad(b, gb, 4, 1e-4, "conv2d grad bias");
    release_all((nb_tensor *[]){x, w, b, y, r}, 5);
}

static nb_tensor *conv_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    return nb_conv2d(in[0], in[1], n > 2 ? in[2] : NULL, *(nb_conv2d_opts *)ctx);
}

static void conv2d_gradcheck_first_and_second_order(void **state)
{
    (void)state;
    rng_seed(6);
    double v[256];
    nb_conv2d_opts o = {.stride = {2, 1}, .padding = {1, 0}, .dilation = {1, 2}, .groups = 2};
    nb_tensor *in[3] = {random_t(NB_SHAPE(2, 4, 5, 5), v, -1, 1, NB_DTYPE_F64, true),
                        random_t(NB_SHAPE(2, 2, 2, 2), v, -1, 1, NB_DTYPE_F64, true),
                        random_t(NB_SHAPE(2), v, -1, 1, NB_DTYPE_F64, true)};
    gradcheck_ok(conv_fn, &o, in, 3);
    gradgradcheck_ok(conv_fn, &o, in, 2);
    release_all(in, 3);
}

static void conv2d_takes_unbatched_input(void **state)
{
    (void)state;
    rng_seed(7);
    double xv[2 * 4 * 4], wv[3 * 2 * 2 * 2], ref[3 * 9];
    nb_tensor *x = random_t(NB_SHAPE(2, 4, 4), xv, -1, 1, NB_DTYPE_F64, false);
    nb_tensor *w = random_t(NB_SHAPE(3, 2, 2, 2), wv, -1, 1, NB_DTYPE_F64, false);
    conv_case cc = {1, 2, 4, 4, 3, 2, 2, {.groups = 0}};
    int64_t oh, ow;
    conv_ref(&cc, xv, wv, NULL, ref, &oh, &ow);
    nb_tensor *y = nb_conv2d(x, w, NULL, cc.opts);
    assert_shape(y, NB_SHAPE(3, 3, 3));
    assert_close(y, ref, 27, 1e-12, 1e-12, "unbatched conv2d");
    release_all((nb_tensor *[]){x, w, y}, 3);
}

static void conv2d_rejects_bad_input(void **state)
{
    (void)state;
    nb_opts f = {0};
    nb_tensor *x = nb_ones(NB_SHAPE(1, 3, 5, 5), f);
    nb_tensor *w = nb_ones(NB_SHAPE(6, 1, 3, 3), f);
    nb_tensor *w3 = nb_ones(NB_SHAPE(6, 3, 3, 3), f);
    nb_tensor *big = nb_ones(NB_SHAPE(6, 3, 7, 3), f);
    nb_tensor *b = nb_ones(NB_SHAPE(5), f);
    nb_tensor *x2 = nb_ones(NB_SHAPE(5, 5), f);
    nb_tensor *xi = nb_ones(NB_SHAPE(1, 3, 5, 5), (nb_opts){.dtype = NB_DTYPE_I64});
    expect_error(nb_conv2d(x, w, NULL, (nb_conv2d_opts){0}), NB_SHAPE_MISMATCH,
                 "conv2d: input has 3 channels but weight [6, 1, 3, 3] expects 1 (groups=1)");
    expect_error(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.groups = 4}), NB_SHAPE_MISMATCH,
                 "expects 4 (groups=4)");
    nb_tensor *ok = nb_conv2d(x, w, NULL, (nb_conv2d_opts){.groups = 3}); /* depthwise-like */
    assert_shape(ok, NB_SHAPE(1, 6, 3, 3));
    nb_release(ok);
    expect_error(nb_conv2d(x, big, NULL, (nb_conv2d_opts){0}), NB_SHAPE_MISMATCH,
                 "larger than the padded input 5x5");
    nb_tensor *okp = nb_conv2d(x, big, NULL, (nb_conv2d_opts){.padding = {1, 0}});
    assert_shape(okp, NB_SHAPE(1, 6, 1, 3));
    nb_release(okp);
    expect_error(nb_conv2d(x, w3, NULL, (nb_conv2d_opts){.dilation = {3, 1}}), NB_SHAPE_MISMATCH,
                 "dilated: 7x3");
    expect_error(nb_conv2d(x, w3, NULL, (nb_conv2d_opts){.stride = {-1, 1}}),
                 NB_INVALID_ARGUMENT, "must be >= 0");
    expect_error(nb_conv2d(x, w3, b, (nb_conv2d_opts){0}), NB_SHAPE_MISMATCH,
                 "bias [5] does not match weight [6, 3, 3, 3]");
    expect_error(nb_conv2d(x2, w3, NULL, (nb_conv2d_opts){0}), NB_SHAPE_MISMATCH,
                 "expected a 3-d (C, H, W) or 4-d (N, C, H, W) input, got [5, 5]");
    expect_error(nb_conv2d(x, x2, NULL, (nb_conv2d_opts){0}), NB_SHAPE_MISMATCH,
                 "expected a 4-d weight");
    expect_error(nb_conv2d(xi, w3, NULL, (nb_conv2d_opts){0}), NB_DTYPE_UNSUPPORTED,
                 "input must be a floating point tensor, got int64");
    expect_error(nb_conv2d(x, NULL, NULL, (nb_conv2d_opts){0}), NB_NULL_ARGUMENT,
                 "conv2d: weight is NULL");
    expect_error(nb_conv2d(x, w3, NULL, (nb_conv2d_opts){.groups = -2}), NB_INVALID_ARGUMENT,
                 "groups must be positive");
    release_all((nb_tensor *[]){x, w, w3, big, b, x2, xi}, 7);
}

/* ------------------------------------------------------------------ pooling */

typedef struct pool_case {
    int64_t n, c, h, w;
    nb_pool2d_opts o;
} pool_case;

/* max (first index at ties, as PyTorch) or average (count_include_pad) over each window;
 * argmax gets the flat h * W + w of the max. */
static void pool_ref(const pool_case *pc, const double *x, bool avg, double *out,
                     int64_t *argmax, int64_t *oh_, int64_t *ow_)
{
    int64_t kh = pc->o.kernel[0], kw = pc->o.kernel[1];
    int64_t sh = pc->o.stride[0] ? pc->o.stride[0] : kh;
    int64_t sw = pc->o.stride[1] ? pc->o.stride[1] : kw;
    int64_t ph = pc->o.padding[0], pw = pc->o.padding[1];
    int64_t oh = (pc->h + 2 * ph - kh) / sh + 1, ow = (pc->w + 2 * pw - kw) / sw + 1;
    for (int64_t p = 0; p < pc->n * pc->c; p++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++) {
                double best = -INFINITY, sum = 0;
                int64_t arg = -1;
                for (int64_t ki = 0; ki < kh; ki++)
                    for (int64_t kj = 0; kj < kw; kj++) {
                        int64_t y = i * sh - ph + ki, xx = j * sw - pw + kj;
                        if (y < 0 || y >= pc->h || xx < 0 || xx >= pc->w)
                            continue;
                        double v = x[(p * pc->h + y) * pc->w + xx];
                        sum += v;
                        if (v > best) {
                            best = v;
                            arg = y * pc->w + xx;
                        }
                    }
                out[(p * oh + i) * ow + j] = avg ? sum / (double)(kh * kw) : best;
                if (argmax)
                    argmax[(p * oh + i) * ow + j] = arg;
            }
    *oh_ = oh;
    *ow_ = ow;
}

static const pool_case pool_cases[] = {
    {2, 3, 5, 6, {.kernel = {3, 2}, .stride = {2, 2}, .padding = {1, 1}}},
    {1, 2, 6, 6, {.kernel = {2, 2}}},
    {2, 1, 7, 5, {.kernel = {3, 3}, .stride = {1, 2}, .padding = {1, 0}}},
};

static void max_pool2d_matches_loops_with_ties_and_padding(void **state)
{
    (void)state;
    static double xv[512], ref[512], gref[512];
    static int64_t arg[512];
    rng_seed(8);
    for (size_t k = 0; k < sizeof pool_cases / sizeof *pool_cases; k++) {
        const pool_case *pc = &pool_cases[k];
        int64_t nx = pc->n * pc->c * pc->h * pc->w;
        for (int i = 0; i < 2; i++) {
            nb_dtype dt = float_dtypes[i];
            /* small integers make ties common: the first index must win */
            for (int64_t e = 0; e < nx; e++)
                xv[e] = floor(urand(-3, 3));
            nb_tensor *x = make(NB_SHAPE(pc->n, pc->c, pc->h, pc->w), xv, dt, true);
            int64_t oh, ow;
            pool_ref(pc, xv, false, ref, arg, &oh, &ow);
            nb_tensor *y = nb_max_pool2d(x, pc->o);
            assert_shape(y, NB_SHAPE(pc->n, pc->c, oh, ow));
            int64_t ny = pc->n * pc->c * oh * ow;
            assert_close(y, ref, ny, 0, 0, "max_pool2d");
            assert_grad_fn(y, "MaxPool2DWithIndicesBackward0");
            /* the gradient of the sum lands on each window's first maximum */
            nb_tensor *s = nb_sum(y, NULL, 0, false);
            NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
            memset(gref, 0, (size_t)nx * sizeof *gref);
            for (int64_t e = 0; e < ny; e++)
                gref[(e / (oh * ow)) * pc->h * pc->w + arg[e]] += 1;
            assert_grad(x, gref, nx, 0, "max_pool2d gradient");
            release_all((nb_tensor *[]){x, y, s}, 3);
        }
    }
}

static void avg_pool2d_counts_padding_like_pytorch(void **state)
{
    (void)state;
    static double xv[512], ref[512], gref[512];
    rng_seed(9);
    for (size_t k = 0; k < sizeof pool_cases / sizeof *pool_cases; k++) {
        const pool_case *pc = &pool_cases[k];
        int64_t nx = pc->n * pc->c * pc->h * pc->w;
        for (int i = 0; i < 2; i++) {
            nb_dtype dt = float_dtypes[i];
            nb_tensor *x = random_t(NB_SHAPE(pc->n, pc->c, pc->h, pc->w), xv, -2, 2, dt, true);
            int64_t oh, ow;
            pool_ref(pc, xv, true, ref, NULL, &oh, &ow);
            nb_tensor *y = nb_avg_pool2d(x, pc->o);
            assert_shape(y, NB_SHAPE(pc->n, pc->c, oh, ow));
            assert_close(y, ref, pc->n * pc->c * oh * ow, tol_for(dt), tol_for(dt), "avg_pool2d");
            assert_grad_fn(y, "AvgPool2DBackward0");
            /* d sum / d x = the number of windows covering x, over the kernel area */
            nb_tensor *s = nb_sum(y, NULL, 0, false);
            NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
            int64_t kh = pc->o.kernel[0], kw = pc->o.kernel[1];
            int64_t sh = pc->o.stride[0] ? pc->o.stride[0] : kh;
            int64_t sw = pc->o.stride[1] ? pc->o.stride[1] : kw;
            memset(gref, 0, (size_t)nx * sizeof *gref);
            for (int64_t p = 0; p < pc->n * pc->c; p++)
                for (int64_t a = 0; a < oh; a++)
                    for (int64_t bb = 0; bb < ow; bb++)
                        for (int64_t ki = 0; ki < kh; ki++)
                            for (int64_t kj = 0; kj < kw; kj++) {
                                int64_t yy = a * sh - pc->o.padding[0] + ki;
                                int64_t xx = bb * sw - pc->o.padding[1] + kj;
                                if (yy >= 0 && yy < pc->h && xx >= 0 && xx < pc->w)
                                    gref[(p * pc->h + yy) * pc->w + xx] += 1.0 / (double)(kh * kw);
                            }
            assert_grad(x, gref, nx, 1e-6, "avg_pool2d gradient");
            release_all((nb_tensor *[]){x, y, s}, 3);
        }
    }
}

static nb_tensor *max_pool_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    return nb_max_pool2d(in[0], *(nb_pool2d_opts *)ctx);
}

static nb_tensor *avg_pool_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    return nb_avg_pool2d(in[0], *(nb_pool2d_opts *)ctx);
}

static void pools_gradcheck_first_and_second_order(void **state)
{
    (void)state;
    rng_seed(10);
    double v[2 * 2 * 5 * 6];
    /* distinct values keep every maximum away from a tie under the finite differences */
    for (int k = 0; k < 120; k++)
        v[k] = (double)((k * 37) % 120) / 10.0 + urand(0, 0.01);
    nb_tensor *x = make(NB_SHAPE(2, 2, 5, 6), v, NB_DTYPE_F64, true);
    nb_pool2d_opts o = {.kernel = {3, 2}, .stride = {2, 1}, .padding = {1, 1}};
    gradcheck_ok(max_pool_fn, &o, &x, 1);
    gradcheck_ok(avg_pool_fn, &o, &x, 1);
    gradgradcheck_ok(max_pool_fn, &o, &x, 1);
    gradgradcheck_ok(avg_pool_fn, &o, &x, 1);
    nb_release(x);
}

static void pools_reject_bad_input(void **state)
{
    (void)state;
    nb_tensor *x = nb_ones(NB_SHAPE(1, 2, 4, 4), (nb_opts){0});
    nb_tensor *x2 = nb_ones(NB_SHAPE(4, 4), (nb_opts){0});
    expect_error(nb_max_pool2d(x, (nb_pool2d_opts){.kernel = {0, 2}}), NB_INVALID_ARGUMENT,
                 "max_pool2d: kernel must be > 0");
    expect_error(nb_avg_pool2d(x, (nb_pool2d_opts){.kernel = {2, 2}, .stride = {-1, 1}}),
                 NB_INVALID_ARGUMENT, "avg_pool2d: kernel must be > 0 and stride");
    expect_error(nb_max_pool2d(x, (nb_pool2d_opts){.kernel = {2, 2}, .padding = {2, 0}}),
                 NB_INVALID_ARGUMENT, "padding should be at most half of the kernel size");
    expect_error(nb_max_pool2d(x, (nb_pool2d_opts){.kernel = {5, 2}}), NB_SHAPE_MISMATCH,
                 "kernel 5x2 is larger than the padded input 4x4");
    expect_error(nb_avg_pool2d(x2, (nb_pool2d_opts){.kernel = {2, 2}}), NB_SHAPE_MISMATCH,
                 "got [4, 4]");
    expect_error(nb_max_pool2d(NULL, (nb_pool2d_opts){.kernel = {2, 2}}), NB_NULL_ARGUMENT,
                 "max_pool2d: input is NULL");
    /* unbatched (C, H, W) works */
    nb_tensor *x3 = nb_ones(NB_SHAPE(2, 4, 4), (nb_opts){0});
    nb_tensor *y3 = nb_max_pool2d(x3, (nb_pool2d_opts){.kernel = {2, 2}});
    assert_shape(y3, NB_SHAPE(2, 2, 2));
    release_all((nb_tensor *[]){x, x2, x3, y3}, 4);
}

/* Sizes from huge padding, kernel, stride or groups are checked products, never overflows. */
static void window_sizes_from_huge_arguments_are_errors(void **state)
{
    (void)state;
    const int64_t huge = INT64_MAX / 2 + 1, big = (int64_t)1 << 40;
    nb_tensor *x = nb_ones(NB_SHAPE(1, 2, 4, 4), (nb_opts){0});
    nb_tensor *w = nb_ones(NB_SHAPE(2, 2, 3, 3), (nb_opts){0});
    expect_error(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding = {huge, 0}}),
                 NB_INVALID_ARGUMENT, "conv2d: input 4x4 with padding [4611686018427387904, 0]");
    expect_error(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.dilation = {huge, 1}}),
                 NB_INVALID_ARGUMENT, "overflows int64");
    expect_error(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding = {big, big}}),
                 NB_INVALID_ARGUMENT, "is too large");
    expect_error(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.groups = huge}), NB_INVALID_ARGUMENT,
                 "times groups=4611686018427387904 overflows");
    expect_error(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.dilation = {big, 1}}),
                 NB_SHAPE_MISMATCH, "is larger than the padded input");
    /* a huge stride is fine: one output position */
    nb_tensor *y = nb_conv2d(x, w, NULL, (nb_conv2d_opts){.stride = {INT64_MAX, INT64_MAX}});
    assert_shape(y, NB_SHAPE(1, 2, 1, 1));
    expect_error(nb_max_pool2d(x, (nb_pool2d_opts){.kernel = {INT64_MAX, 2},
                                                   .padding = {INT64_MAX / 2, 0}}),
                 NB_INVALID_ARGUMENT, "overflows int64");
    expect_error(nb_avg_pool2d(x, (nb_pool2d_opts){.kernel = {2 * big, 2 * big},
                                                   .padding = {big, big}}),
                 NB_INVALID_ARGUMENT, "is too large");
    expect_error(nb_max_pool2d(x, (nb_pool2d_opts){.kernel = {2, 2}, .padding = {huge, 0}}),
                 NB_INVALID_ARGUMENT, "padding should be at most half of the kernel size");
    nb_tensor *p = nb_max_pool2d(x, (nb_pool2d_opts){.kernel = {2, 2}, .stride = {INT64_MAX, 1}});
    assert_shape(p, NB_SHAPE(1, 2, 1, 3));
    release_all((nb_tensor *[]){x, w, y, p}, 4);
}

/* ---------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    (void)argc;
    const struct CMUnitTest twice[] = {
        NB_TEST(conv2d_matches_direct_loops),
        NB_TEST(conv2d_gradients_match_loops),
        NB_TEST(conv2d_gradcheck_first_and_second_order),
        NB_TEST(conv2d_takes_unbatched_input),
        NB_TEST(conv2d_rejects_bad_input),
        NB_TEST(max_pool2d_matches_loops_with_ties_and_padding),
        NB_TEST(avg_pool2d_counts_padding_like_pytorch),
        NB_TEST(pools_gradcheck_first_and_second_order),
        NB_TEST(pools_reject_bad_input),
        NB_TEST(window_sizes_from_huge_arguments_are_errors),
    };
    return nbt_run_tiers("convolution", twice, NBT_COUNT(twice), NULL, 0, argv);
}
