/* test_functional.c - tests core/nn/functional.c: every nn op against naive C loops on small
 * inputs, grad_fn names, gradcheck in float64 (first and, where it matters, second order), and
 * the errors for bad input. The whole suite runs twice: on the device's tier-2 kernels, then
 * re-executed with NABLA_NO_TIER2=1 so that the tier-1 composites compute the same values. */
#include "nb_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
/* uniform in [lo, hi) from xorshift64*, reproducible across runs */
static double urand(double lo, double hi)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545F4914F6CDD1Dull;
    return lo + (hi - lo) * (double)(r >> 11) * 0x1p-53;
}

static int64_t shape_numel(nb_shape s)
{
    int64_t n = 1;
    for (int32_t d = 0; d < s.ndim; d++)
        n *= s.dims[d];
    return n;
}

/* A tensor of `dtype` holding v (doubles, row-major). */
static nb_tensor *make(nb_shape s, const double *v, nb_dtype dtype, bool grad)
{
    nb_tensor *d = nb_from_data(v, s, (nb_opts){.dtype = NB_DTYPE_F64});
    assert_non_null(d);
    nb_tensor *t = nb_to_dtype(d, dtype);
    nb_release(d);
    assert_non_null(t);
    if (grad)
        NB_ASSERT_OK(nb_tensor_set_requires_grad(t, true));
    return t;
}

/* Fills v with uniform values and returns a tensor of them. */
static nb_tensor *random_t(nb_shape s, double *v, double lo, double hi, nb_dtype dtype, bool grad)
{
    for (int64_t k = 0; k < shape_numel(s); k++)
        v[k] = urand(lo, hi);
    return make(s, v, dtype, grad);
}

static void read_d(const nb_tensor *t, double *out, int64_t n)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    assert_int_equal(nb_tensor_numel(t), n);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    assert_non_null(d);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, out, (size_t)n * sizeof *out));
    nb_release(d);
}

static void assert_shape(const nb_tensor *t, nb_shape want)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    nb_shape s = nb_tensor_shape(t);
    assert_int_equal(s.ndim, want.ndim);
    for (int32_t d = 0; d < want.ndim; d++)
        assert_int_equal(s.dims[d], want.dims[d]);
}

/* |got - ref| <= atol + rtol |ref| everywhere (NaN only where ref is NaN). */
static void assert_close(const nb_tensor *t, const double *ref, int64_t n, double atol,
                         double rtol, const char *what)
{
    double *got = malloc((size_t)(n ? n : 1) * sizeof *got);
    read_d(t, got, n);
    for (int64_t k = 0; k < n; k++) {
        bool ok = isnan(ref[k]) ? isnan(got[k])
                                : fabs(got[k] - ref[k]) <= atol + rtol * fabs(ref[k]);
        if (!ok) {
            double g = got[k];
            free(got);
            fail_msg("%s: element %lld is %.10g, expected %.10g", what, (long long)k, g, ref[k]);
        }
    }
    free(got);
}

static void assert_grad_fn(const nb_tensor *t, const char *name)
{
    assert_non_null(t);
    const char *got = nb_grad_fn_name(nb_tensor_grad_fn(t));
    if (!got || strcmp(got, name))
        fail_msg("grad_fn is %s, expected %s", got ? got : "(none)", name);
}

/* The gradient of t (a leaf) after backward, compared with ref. */
static void assert_grad(nb_tensor *t, const double *ref, int64_t n, double atol, const char *what)
{
    nb_tensor *g = nb_tensor_grad(t);
    if (!g)
        fail_msg("%s: no gradient", what);
    assert_close(g, ref, n, atol, 1e-6, what);
    nb_release(g);
}

static void expect_error(nb_tensor *r, nb_status st, const char *needle)
{
    if (r) {
        nb_release(r);
        fail_msg("expected an error containing \"%s\", got a tensor", needle);
    }
    assert_int_equal(nb_last_status(), st);
    NB_ASSERT_ERROR_HAS(needle);
    nb_clear_error();
}

/* gradcheck tolerances (PyTorch's defaults for float64) */
#define GC_EPS 1e-6
#define GC_ATOL 1e-5
#define GC_RTOL 1e-3

static void gradcheck_ok(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *in, int32_t n)
{
    nb_status st = nb_gradcheck(fn, ctx, in, n, GC_EPS, GC_ATOL, GC_RTOL);
    if (st != NB_OK)
        fail_msg("gradcheck: %s", nb_last_error());
}

/* Second order: the gradient of sum(f(inputs)^2) with respect to input 0, built with
 * create_graph, is itself gradchecked (this runs each backward through public ops). */
typedef struct gg_ctx {
    nb_gradcheck_fn fn;
    void *ctx;
} gg_ctx;

static nb_tensor *grad_of_square(nb_tensor *const *in, int32_t n, void *p)
{
    gg_ctx *c = p;
    nb_tensor *o = c->fn(in, n, c->ctx);
    nb_tensor *o2 = o ? nb_mul(o, o) : NULL;
    nb_tensor *s = o2 ? nb_sum(o2, NULL, 0, false) : NULL;
    nb_tensor *g = NULL;
    if (s && nb_grad(&s, NULL, 1, in, 1, (nb_grad_opts){.create_graph = true}, &g) != NB_OK)
        g = NULL;
    nb_release(o);
    nb_release(o2);
    nb_release(s);
    return g;
}

static void gradgradcheck_ok(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *in, int32_t n)
{
    gg_ctx c = {fn, ctx};
    gradcheck_ok(grad_of_square, &c, in, n);
}

static void release_all(nb_tensor **ts, int n)
{
    for (int k = 0; k < n; k++)
        nb_release(ts[k]);
}

static const nb_dtype float_dtypes[] = {NB_DTYPE_F32, NB_DTYPE_F64};
/* float32 results against float64 loops */
static double tol_for(nb_dtype dt) { return dt == NB_DTYPE_F32 ? 2e-5 : 1e-12; }

/* ------------------------------------------------------------------- linear */

static void linear_matches_loops_and_is_one_addmm(void **state)
{
    (void)state;
    rng_seed(1);
    double xv[3 * 4], wv[5 * 4], bv[5], ref[3 * 5];
    for (int i = 0; i < 2; i++) {
        nb_dtype dt = float_dtypes[i];
        nb_tensor *x = random_t(NB_SHAPE(3, 4), xv, -1, 1, dt, true);
        nb_tensor *w = random_t(NB_SHAPE(5, 4), wv, -1, 1, dt, true);
        nb_tensor *b = random_t(NB_SHAPE(5), bv, -1, 1, dt, true);
        for (int n = 0; n < 3; n++)
            for (int o = 0; o < 5; o++) {
                double acc = bv[o];
                for (int k = 0; k < 4; k++)
                    acc += xv[n * 4 + k] * wv[o * 4 + k];
                ref[n * 5 + o] = acc;
            }
        nb_tensor *y = nb_linear(x, w, b);
        assert_shape(y, NB_SHAPE(3, 5));
        assert_close(y, ref, 15, tol_for(dt), tol_for(dt), "linear");
        assert_grad_fn(y, "AddmmBackward0");
        assert_int_equal(nb_grad_fn_next_count(nb_tensor_grad_fn(y)), 3);
        /* no bias: a matmul of its own */
        nb_tensor *y2 = nb_linear(x, w, NULL);
        for (int k = 0; k < 15; k++)
            ref[k] -= bv[k % 5];
        assert_close(y2, ref, 15, tol_for(dt), tol_for(dt), "linear without bias");
        release_all((nb_tensor *[]){x, w, b, y, y2}, 5);
    }
}

static void linear_takes_1d_and_3d_inputs(void **state)
{
    (void)state;
    rng_seed(2);
    double xv[2 * 3 * 4], wv[2 * 4], bv[2], ref[2 * 3 * 2];
    nb_tensor *x = random_t(NB_SHAPE(2, 3, 4), xv, -1, 1, NB_DTYPE_F64, false);
    nb_tensor *w = random_t(NB_SHAPE(2, 4), wv, -1, 1, NB_DTYPE_F64, false);
    nb_tensor *b = random_t(NB_SHAPE(2), bv, -1, 1, NB_DTYPE_F64, false);
    for (int r = 0; r < 6; r++)
        for (int o = 0; o < 2; o++) {
            double acc = bv[o];
            for (int k = 0; k < 4; k++)
                acc += xv[r * 4 + k] * wv[o * 4 + k];
            ref[r * 2 + o] = acc;
        }
    nb_tensor *y = nb_linear(x, w, b);
    assert_shape(y, NB_SHAPE(2, 3, 2));
    assert_close(y, ref, 12, 1e-12, 1e-12, "linear 3-d");
    nb_tensor *x1 = nb_select(x, 0, 0), *x1r = nb_select(x1, 0, 0);
    nb_tensor *y1 = nb_linear(x1r, w, b);
    assert_shape(y1, NB_SHAPE(2));
    assert_close(y1, ref, 2, 1e-12, 1e-12, "linear 1-d");
    release_all((nb_tensor *[]){x, w, b, y, x1, x1r, y1}, 7);
}

static nb_tensor *linear_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    return nb_linear(in[0], in[1], n > 2 ? in[2] : NULL);
}

static void linear_gradcheck(void **state)
{
    (void)state;
    rng_seed(3);
    double v[64];
    nb_tensor *in[3] = {random_t(NB_SHAPE(3, 4), v, -1, 1, NB_DTYPE_F64, true),
                        random_t(NB_SHAPE(2, 4), v, -1, 1, NB_DTYPE_F64, true),
                        random_t(NB_SHAPE(2), v, -1, 1, NB_DTYPE_F64, true)};
    gradcheck_ok(linear_fn, NULL, in, 3);
    release_all(in, 3);
}

static void linear_rejects_bad_input(void **state)
{
    (void)state;
    nb_tensor *x = nb_ones(NB_SHAPE(3, 4), (nb_opts){0});
    nb_tensor *w = nb_ones(NB_SHAPE(5, 3), (nb_opts){0});
    nb_tensor *w2 = nb_ones(NB_SHAPE(5, 4), (nb_opts){0});
    nb_tensor *b = nb_ones(NB_SHAPE(4), (nb_opts){0});
    nb_tensor *w64 = nb_ones(NB_SHAPE(5, 4), (nb_opts){.dtype = NB_DTYPE_F64});
    expect_error(nb_linear(x, w, NULL), NB_SHAPE_MISMATCH, "input [3, 4] has 4 features but "
                 "weight [5, 3] expects 3");
    expect_error(nb_linear(x, w2, b), NB_SHAPE_MISMATCH, "bias [4] does not match weight");
    expect_error(nb_linear(x, w64, NULL), NB_DTYPE_UNSUPPORTED, "weight is float64");
    expect_error(nb_linear(NULL, w2, NULL), NB_NULL_ARGUMENT, "linear: input is NULL");
    expect_error(nb_linear(x, b, NULL), NB_SHAPE_MISMATCH, "expected a 2-d weight");
    release_all((nb_tensor *[]){x, w, w2, b, w64}, 5);
}

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

/* --------------------------------------------------------------------- gelu */

static void gelu_is_the_exact_erf_form(void **state)
{
    (void)state;
    double xv[41], ref[41];
    for (int k = 0; k < 41; k++)
        xv[k] = -10 + 0.5 * k + 0.013 * (k % 3); /* both tails and the middle */
    for (int k = 0; k < 41; k++)
        ref[k] = 0.5 * xv[k] * erfc(-xv[k] / sqrt(2.0));
    for (int i = 0; i < 2; i++) {
        nb_dtype dt = float_dtypes[i];
        nb_tensor *x = make(NB_SHAPE(41), xv, dt, true);
        nb_tensor *y = nb_gelu(x);
        /* float32: a few ulps of the largest values; float64: the fit's 1e-15 times |x| */
        assert_close(y, ref, 41, dt == NB_DTYPE_F32 ? 1e-6 : 1e-14, dt == NB_DTYPE_F32 ? 1e-6 : 0,
                     "gelu");
        assert_grad_fn(y, "GeluBackward0");
        /* PyTorch: gelu(inf) = inf, gelu(-inf) = -inf * 0 = nan */
        double ev[5] = {INFINITY, -INFINITY, NAN, 40, -40}, eref[5] = {INFINITY, NAN, NAN, 40, 0};
        nb_tensor *xe = make(NB_SHAPE(5), ev, dt, false), *ye = nb_gelu(xe);
        double got[5];
        read_d(ye, got, 5);
        for (int k = 0; k < 5; k++)
            if (!(isnan(eref[k]) ? isnan(got[k]) : got[k] == eref[k]))
                fail_msg("gelu(%g) is %g, expected %g", ev[k], got[k], eref[k]);
        release_all((nb_tensor *[]){x, y, xe, ye}, 4);
    }
}

static nb_tensor *gelu_fn(nb_tensor *const *in, int32_t n, void *ctx) { return nb_gelu(in[0]); }

static void gelu_gradcheck_first_and_second_order(void **state)
{
    (void)state;
    double v[12] = {-4, -2.5, -1, -0.3, 0, 0.2, 0.7, 1, 1.5, 2.2, 3, 5};
    nb_tensor *x = make(NB_SHAPE(3, 4), v, NB_DTYPE_F64, true);
    gradcheck_ok(gelu_fn, NULL, &x, 1);
    gradgradcheck_ok(gelu_fn, NULL, &x, 1);
    nb_release(x);
    nb_tensor *xi = nb_ones(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I32});
    expect_error(nb_gelu(xi), NB_DTYPE_UNSUPPORTED, "gelu: input must be a floating point");
    expect_error(nb_gelu(NULL), NB_NULL_ARGUMENT, "gelu: input is NULL");
    nb_release(xi);
}

/* ------------------------------------------------------------------ softmax */

/* Rows of a (R, C) matrix, or columns when by_col. */
static void softmax_ref(const double *x, int64_t r, int64_t c, bool by_col, bool take_log,
                        double *out)
{
    int64_t outer = by_col ? c : r, len = by_col ? r : c;
    for (int64_t o = 0; o < outer; o++) {
#define AT(k) (by_col ? (k) * c + o : o * c + (k))
        double m = -INFINITY, s = 0;
        for (int64_t k = 0; k < len; k++)
            m = fmax(m, x[AT(k)]);
        for (int64_t k = 0; k < len; k++)
            s += exp(x[AT(k)] - m);
        for (int64_t k = 0; k < len; k++)
            out[AT(k)] = take_log ? x[AT(k)] - m - log(s) : exp(x[AT(k)] - m) / s;
#undef AT
    }
}

static void softmax_and_log_softmax_match_loops_on_large_values(void **state)
{
    (void)state;
    rng_seed(11);
    double xv[4 * 5], ref[4 * 5];
    for (int k = 0; k < 20; k++)
        xv[k] = (k % 5 == 0 ? 1000 : 0) + urand(-3, 3); /* exp(1000) overflows without care */
    for (int i = 0; i < 2; i++) {
        nb_dtype dt = float_dtypes[i];
        nb_tensor *x = make(NB_SHAPE(4, 5), xv, dt, true);
        for (int log = 0; log < 2; log++)
            for (int dim = 0; dim < 2; dim++) {
                nb_tensor *y = log ? nb_log_softmax(x, dim ? -1 : 0) : nb_softmax(x, dim ? 1 : 0);
                softmax_ref(xv, 4, 5, dim == 0, log, ref);
                assert_close(y, ref, 20, dt == NB_DTYPE_F32 ? 1e-4 : 1e-11, tol_for(dt),
                             log ? "log_softmax" : "softmax");
                assert_grad_fn(y, log ? "LogSoftmaxBackward0" : "SoftmaxBackward0");
                nb_release(y);
            }
        nb_release(x);
    }
}

typedef struct sm_ctx {
    int32_t dim;
    bool log;
} sm_ctx;

static nb_tensor *softmax_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    sm_ctx *c = ctx;
    return c->log ? nb_log_softmax(in[0], c->dim) : nb_softmax(in[0], c->dim);
}

static void softmax_gradcheck_first_and_second_order(void **state)
{
    (void)state;
    rng_seed(12);
    double v[3 * 4 * 2];
    nb_tensor *x = random_t(NB_SHAPE(3, 4, 2), v, -2, 2, NB_DTYPE_F64, true);
    for (int log = 0; log < 2; log++)
        for (int32_t dim = 0; dim < 3; dim++) {
            sm_ctx c = {dim, log};
            gradcheck_ok(softmax_fn, &c, &x, 1);
            gradgradcheck_ok(softmax_fn, &c, &x, 1);
        }
    nb_release(x);
}

static void softmax_edge_cases_and_errors(void **state)
{
    (void)state;
    nb_tensor *s = nb_scalar(3.0, (nb_opts){0});
    nb_tensor *y = nb_softmax(s, 0), *ly = nb_log_softmax(s, -1);
    double one = 1, zero = 0;
    assert_shape(y, NB_SHAPE_SCALAR);
    assert_close(y, &one, 1, 0, 0, "softmax of a 0-d tensor");
    assert_close(ly, &zero, 1, 0, 0, "log_softmax of a 0-d tensor");
    nb_tensor *e = nb_zeros(NB_SHAPE(0, 3), (nb_opts){0});
    nb_tensor *ye = nb_softmax(e, 1);
    assert_shape(ye, NB_SHAPE(0, 3));
    nb_tensor *x = nb_ones(NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *xi = nb_ones(NB_SHAPE(2, 3), (nb_opts){.dtype = NB_DTYPE_I64});
    expect_error(nb_softmax(x, 2), NB_INDEX_OUT_OF_RANGE, "softmax");
    expect_error(nb_log_softmax(s, 1), NB_INDEX_OUT_OF_RANGE, "log_softmax: dimension out of "
                 "range");
    expect_error(nb_softmax(xi, 1), NB_DTYPE_UNSUPPORTED, "softmax: input must be a floating");
    expect_error(nb_log_softmax(NULL, 1), NB_NULL_ARGUMENT, "log_softmax: input is NULL");
    release_all((nb_tensor *[]){s, y, ly, e, ye, x, xi}, 7);
}

/* ------------------------------------------------------------------ dropout */

static void dropout_zeroes_with_probability_p_and_scales_the_rest(void **state)
{
    (void)state;
    nb_manual_seed(7);
    int64_t n = 20000;
    nb_tensor *x = nb_full(NB_SHAPE(n), 3.0, (nb_opts){.requires_grad = true});
    nb_tensor *y = nb_dropout(x, 0.25, true);
    assert_grad_fn(y, "MulBackward0");
    double *v = malloc((size_t)n * sizeof *v), *g = malloc((size_t)n * sizeof *g);
    read_d(y, v, n);
    int64_t kept = 0;
    for (int64_t k = 0; k < n; k++) {
        if (v[k] != 0 && fabs(v[k] - 4.0) > 1e-6)
            fail_msg("dropout element %lld is %g: expected 0 or 3 / 0.75", (long long)k, v[k]);
        kept += v[k] != 0;
    }
    /* 4 standard deviations of a binomial(20000, 0.75) */
    double sd = sqrt((double)n * 0.75 * 0.25);
    if (fabs((double)kept - 0.75 * (double)n) > 4 * sd)
        fail_msg("dropout kept %lld of %lld, expected about %g", (long long)kept, (long long)n,
                 0.75 * (double)n);
    nb_tensor *s = nb_sum(y, NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
    nb_tensor *gt = nb_tensor_grad(x);
    read_d(gt, g, n);
    for (int64_t k = 0; k < n; k++)
        if (fabs(g[k] - (v[k] != 0 ? 1 / 0.75 : 0)) > 1e-6)
            fail_msg("dropout gradient %lld is %g for an output of %g", (long long)k, g[k], v[k]);
    free(v);
    free(g);
    release_all((nb_tensor *[]){x, y, s, gt}, 4);
}

static void dropout_is_identity_in_eval_and_zero_at_p1(void **state)
{
    (void)state;
    nb_tensor *x = nb_full(NB_SHAPE(4), 2.0, (nb_opts){.requires_grad = true});
    nb_tensor *e = nb_dropout(x, 0.5, false);
    assert_ptr_equal(e, x); /* PyTorch hands back the input itself */
    nb_tensor *p0 = nb_dropout(x, 0, true);
    assert_ptr_equal(p0, x);
    nb_tensor *z = nb_dropout(x, 1, true);
    double zeros[4] = {0};
    assert_close(z, zeros, 4, 0, 0, "dropout p=1");
    assert_grad_fn(z, "MulBackward0");
    expect_error(nb_dropout(x, 1.5, true), NB_INVALID_ARGUMENT,
                 "dropout: probability has to be between 0 and 1, but got 1.5");
    expect_error(nb_dropout(x, NAN, true), NB_INVALID_ARGUMENT, "but got nan");
    expect_error(nb_dropout(NULL, 0.5, true), NB_NULL_ARGUMENT, "dropout: input is NULL");
    release_all((nb_tensor *[]){x, e, p0, z}, 4);
}

/* --------------------------------------------------------------- batch_norm */

static void batch_norm_training_and_eval_match_loops(void **state)
{
    (void)state;
    rng_seed(13);
    enum { N = 3, C = 2, S = 4 }; /* (N, C, 2, 2) */
    double xv[N * C * S], wv[C], bv[C], ref[N * C * S], rmv[C], rvv[C];
    for (int i = 0; i < 2; i++) {
        nb_dtype dt = float_dtypes[i];
        nb_tensor *x = random_t(NB_SHAPE(N, C, 2, 2), xv, -2, 3, dt, true);
        nb_tensor *w = random_t(NB_SHAPE(C), wv, 0.5, 2, dt, true);
        nb_tensor *b = random_t(NB_SHAPE(C), bv, -1, 1, dt, true);
        nb_tensor *rm = random_t(NB_SHAPE(C), rmv, -1, 1, dt, false);
        nb_tensor *rv = random_t(NB_SHAPE(C), rvv, 0.5, 2, dt, false);
        double mom = 0.1, eps = 1e-5, want_rm[C], want_rv[C];
        for (int c = 0; c < C; c++) {
            double m = 0, v = 0;
            for (int n = 0; n < N; n++)
                for (int s = 0; s < S; s++)
                    m += xv[(n * C + c) * S + s];
            m /= N * S;
            for (int n = 0; n < N; n++)
                for (int s = 0; s < S; s++)
                    v += pow(xv[(n * C + c) * S + s] - m, 2);
            v /= N * S;
            for (int n = 0; n < N; n++)
                for (int s = 0; s < S; s++) {
                    int k = (n * C + c) * S + s;
                    ref[k] = (xv[k] - m) / sqrt(v + eps) * wv[c] + bv[c];
                }
            want_rm[c] = (1 - mom) * rmv[c] + mom * m;
            want_rv[c] = (1 - mom) * rvv[c] + mom * v * (N * S) / (N * S - 1);
        }
        nb_tensor *y = nb_batch_norm(x, rm, rv, w, b, true, mom, eps);
        assert_close(y, ref, N * C * S, 10 * tol_for(dt), 10 * tol_for(dt), "batch_norm train");
        assert_grad_fn(y, "NativeBatchNormBackward0");
        assert_int_equal(nb_grad_fn_next_count(nb_tensor_grad_fn(y)), 3);
        assert_close(rm, want_rm, C, tol_for(dt), tol_for(dt), "running_mean");
        assert_close(rv, want_rv, C, tol_for(dt), tol_for(dt), "running_var");
        /* eval: the running statistics, which stay as they are */
        for (int c = 0; c < C; c++)
            for (int n = 0; n < N; n++)
                for (int s = 0; s < S; s++) {
                    int k = (n * C + c) * S + s;
                    ref[k] = (xv[k] - want_rm[c]) / sqrt(want_rv[c] + eps) * wv[c] + bv[c];
                }
        nb_tensor *ye = nb_batch_norm(x, rm, rv, w, b, false, mom, eps);
        assert_close(ye, ref, N * C * S, 10 * tol_for(dt), 10 * tol_for(dt), "batch_norm eval");
        assert_close(rm, want_rm, C, tol_for(dt), tol_for(dt), "running_mean after eval");
        /* no affine parameters, no running statistics */
        nb_tensor *yn = nb_batch_norm(x, NULL, NULL, NULL, NULL, true, mom, eps);
        assert_non_null(yn);
        release_all((nb_tensor *[]){x, w, b, rm, rv, y, ye, yn}, 8);
    }
}

typedef struct bn_ctx {
    bool training;
    nb_tensor *rm, *rv;
} bn_ctx;

static nb_tensor *bn_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    bn_ctx *c = ctx;
    return nb_batch_norm(in[0], c->rm, c->rv, n > 1 ? in[1] : NULL, n > 2 ? in[2] : NULL,
                         c->training, 0.1, 1e-5);
}

static void batch_norm_gradcheck_first_and_second_order(void **state)
{
    (void)state;
    rng_seed(14);
    double v[64];
    nb_tensor *in[3] = {random_t(NB_SHAPE(3, 2, 3), v, -2, 2, NB_DTYPE_F64, true),
                        random_t(NB_SHAPE(2), v, 0.5, 2, NB_DTYPE_F64, true),
                        random_t(NB_SHAPE(2), v, -1, 1, NB_DTYPE_F64, true)};
    nb_tensor *rm = random_t(NB_SHAPE(2), v, -1, 1, NB_DTYPE_F64, false);
    nb_tensor *rv = random_t(NB_SHAPE(2), v, 0.5, 2, NB_DTYPE_F64, false);
    bn_ctx train = {true, NULL, NULL}, eval = {false, rm, rv};
    gradcheck_ok(bn_fn, &train, in, 3);
    gradcheck_ok(bn_fn, &eval, in, 3);
    gradgradcheck_ok(bn_fn, &train, in, 3);
    release_all(in, 3);
    release_all((nb_tensor *[]){rm, rv}, 2);
}

static void batch_norm_rejects_bad_input(void **state)
{
    (void)state;
    nb_opts f = {0};
    nb_tensor *x = nb_ones(NB_SHAPE(4, 3), f), *c3 = nb_ones(NB_SHAPE(3), f);
    nb_tensor *c2 = nb_ones(NB_SHAPE(2), f), *x1 = nb_ones(NB_SHAPE(1, 3), f);
    nb_tensor *v = nb_ones(NB_SHAPE(3), f);
    expect_error(nb_batch_norm(x, c3, v, c2, NULL, true, 0.1, 1e-5), NB_SHAPE_MISMATCH,
                 "weight has shape [2] but the input [4, 3] has 3 channels");
    expect_error(nb_batch_norm(x, NULL, NULL, NULL, NULL, false, 0.1, 1e-5),
                 NB_INVALID_ARGUMENT, "required when training is false");
    expect_error(nb_batch_norm(x, c3, NULL, NULL, NULL, true, 0.1, 1e-5), NB_INVALID_ARGUMENT,
                 "must be given together");
    expect_error(nb_batch_norm(x1, NULL, NULL, NULL, NULL, true, 0.1, 1e-5),
                 NB_INVALID_ARGUMENT, "expected more than 1 value per channel when training, "
                 "got input size [1, 3]");
    expect_error(nb_batch_norm(c3, NULL, NULL, NULL, NULL, true, 0.1, 1e-5), NB_SHAPE_MISMATCH,
                 "at least 2 dims");
    expect_error(nb_batch_norm(NULL, NULL, NULL, NULL, NULL, true, 0.1, 1e-5), NB_NULL_ARGUMENT,
                 "batch_norm: input is NULL");
    release_all((nb_tensor *[]){x, c3, c2, x1, v}, 5);
}

/* ------------------------------------------------------------------- losses */

static const nb_reduction reductions[] = {NB_REDUCTION_MEAN, NB_REDUCTION_SUM, NB_REDUCTION_NONE};

/* Reduces per-element losses l[n] the way `r` says into out (n values for NONE). */
static int64_t reduce_ref(const double *l, int64_t n, nb_reduction r, double *out)
{
    if (r == NB_REDUCTION_NONE) {
        memcpy(out, l, (size_t)n * sizeof *l);
        return n;
    }
    double s = 0;
    for (int64_t k = 0; k < n; k++)
        s += l[k];
    out[0] = r == NB_REDUCTION_MEAN ? s / (double)n : s;
    return 1;
}

typedef nb_tensor *(*loss_api)(const nb_tensor *, const nb_tensor *, nb_reduction);

typedef struct loss_case {
    const char *name, *grad_fn;
    loss_api fn;
    double (*ref)(double x, double t);
    double xlo, xhi; /* input range; targets in [0, 1] */
} loss_case;

static double mse_el(double x, double t) { return (x - t) * (x - t); }
static double bce_el(double x, double t)
{
    return -(t * fmax(log(x), -100) + (1 - t) * fmax(log(1 - x), -100));
}
static double bcel_el(double x, double t)
{
    return fmax(x, 0) - x * t + log1p(exp(-fabs(x)));
}

static const loss_case loss_cases[] = {
    {"mse_loss", "MseLossBackward0", nb_mse_loss, mse_el, -2, 2},
    {"binary_cross_entropy", "BinaryCrossEntropyBackward0", nb_binary_cross_entropy, bce_el,
     0.05, 0.95},
    {"binary_cross_entropy_with_logits", "BinaryCrossEntropyWithLogitsBackward0",
     nb_binary_cross_entropy_with_logits, bcel_el, -4, 4},
};

static void pointwise_losses_match_loops_for_every_reduction(void **state)
{
    (void)state;
    rng_seed(15);
    double xv[12], tv[12], l[12], ref[12];
    for (size_t c = 0; c < sizeof loss_cases / sizeof *loss_cases; c++) {
        const loss_case *lc = &loss_cases[c];
        for (int i = 0; i < 2; i++) {
            nb_dtype dt = float_dtypes[i];
            nb_tensor *x = random_t(NB_SHAPE(3, 4), xv, lc->xlo, lc->xhi, dt, true);
            nb_tensor *t = random_t(NB_SHAPE(3, 4), tv, 0, 1, dt, false);
            for (int k = 0; k < 12; k++)
                l[k] = lc->ref(xv[k], tv[k]);
            for (int r = 0; r < 3; r++) {
                nb_tensor *y = lc->fn(x, t, reductions[r]);
                int64_t n = reduce_ref(l, 12, reductions[r], ref);
                if (!y)
                    fail_msg("%s: %s", lc->name, nb_last_error());
                assert_int_equal(nb_tensor_ndim(y), reductions[r] == NB_REDUCTION_NONE ? 2 : 0);
                assert_close(y, ref, n, 10 * tol_for(dt), 10 * tol_for(dt), lc->name);
                assert_grad_fn(y, lc->grad_fn);
                nb_release(y);
            }
            release_all((nb_tensor *[]){x, t}, 2);
        }
    }
}

static void pointwise_losses_are_stable_at_the_edges(void **state)
{
    (void)state;
    /* bce clamps log at -100; with logits, large |x| neither overflows nor loses the loss */
    double xv[3] = {0, 1, 0.5}, tv[3] = {1, 0, 0.5}, ref[3] = {100, 100, log(2)};
    nb_tensor *x = make(NB_SHAPE(3), xv, NB_DTYPE_F32, false);
    nb_tensor *t = make(NB_SHAPE(3), tv, NB_DTYPE_F32, false);
    nb_tensor *y = nb_binary_cross_entropy(x, t, NB_REDUCTION_NONE);
    assert_close(y, ref, 3, 1e-4, 1e-6, "bce at 0 and 1");
    double lx[3] = {100, -100, 30}, lt[3] = {0, 1, 1}, lref[3] = {100, 100, 0};
    nb_tensor *x2 = make(NB_SHAPE(3), lx, NB_DTYPE_F32, false);
    nb_tensor *t2 = make(NB_SHAPE(3), lt, NB_DTYPE_F32, false);
    nb_tensor *y2 = nb_binary_cross_entropy_with_logits(x2, t2, NB_REDUCTION_NONE);
    assert_close(y2, lref, 3, 1e-5, 1e-6, "bce with logits at +-100");
    release_all((nb_tensor *[]){x, t, y, x2, t2, y2}, 6);
}

/* PyTorch: "all elements of input should be between 0 and 1", NaN included; the edges are fine */
static void bce_refuses_input_outside_zero_one(void **state)
{
    (void)state;
    double tv[3] = {1, 0, 1};
    nb_tensor *t = make(NB_SHAPE(3), tv, NB_DTYPE_F32, false);
    const double bad[][3] = {{0.5, 1.5, 0.5}, {-0.01, 0.5, 0.5}, {0.5, NAN, 0.5}};
    for (int k = 0; k < 3; k++) {
        nb_tensor *x = make(NB_SHAPE(3), bad[k], NB_DTYPE_F32, true);
        expect_error(nb_binary_cross_entropy(x, t, NB_REDUCTION_MEAN), NB_INVALID_ARGUMENT,
                     "binary_cross_entropy: all elements of input should be between 0 and 1 "
                     "(1 of input [3] are not)");
        nb_release(x);
    }
    double ok[3] = {0, 1, 0.25};
    nb_tensor *x = make(NB_SHAPE(3), ok, NB_DTYPE_F32, false);
    nb_tensor *y = nb_binary_cross_entropy(x, t, NB_REDUCTION_SUM);
    assert_non_null(y);
    /* the logits form takes any real input */
    nb_tensor *x2 = make(NB_SHAPE(3), bad[0], NB_DTYPE_F32, false);
    nb_tensor *y2 = nb_binary_cross_entropy_with_logits(x2, t, NB_REDUCTION_SUM);
    assert_non_null(y2);
    release_all((nb_tensor *[]){t, x, y, x2, y2}, 5);
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

typedef struct lfn_ctx {
    loss_api fn;
    nb_reduction r;
} lfn_ctx;

static nb_tensor *loss_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    lfn_ctx *c = ctx;
    return c->fn(in[0], in[1], c->r);
}

static void pointwise_losses_gradcheck_input_and_target(void **state)
{
    (void)state;
    rng_seed(16);
    double v[12];
    for (size_t c = 0; c < sizeof loss_cases / sizeof *loss_cases; c++) {
        const loss_case *lc = &loss_cases[c];
        nb_tensor *in[2] = {random_t(NB_SHAPE(3, 4), v, lc->xlo, lc->xhi, NB_DTYPE_F64, true),
                            random_t(NB_SHAPE(3, 4), v, 0.1, 0.9, NB_DTYPE_F64, true)};
        for (int r = 0; r < 3; r++) {
            lfn_ctx ctx = {lc->fn, reductions[r]};
            gradcheck_ok(loss_fn, &ctx, in, 2);
            gradgradcheck_ok(loss_fn, &ctx, in, 2);
        }
        release_all(in, 2);
    }
}

static void mse_loss_broadcasts_like_pytorch(void **state)
{
    (void)state;
    double xv[6] = {1, 2, 3, 4, 5, 6}, tv[3] = {1, 1, 1}, ref = 0;
    for (int k = 0; k < 6; k++)
        ref += (xv[k] - 1) * (xv[k] - 1);
    nb_tensor *x = make(NB_SHAPE(2, 3), xv, NB_DTYPE_F64, true);
    nb_tensor *t = make(NB_SHAPE(3), tv, NB_DTYPE_F64, true);
    nb_tensor *y = nb_mse_loss(x, t, NB_REDUCTION_SUM);
    assert_close(y, &ref, 1, 1e-12, 0, "mse broadcast");
    NB_ASSERT_OK(nb_backward(y, NULL, (nb_backward_opts){0}));
    double gt[3] = {-2 * (0 + 3), -2 * (1 + 4), -2 * (2 + 5)};
    assert_grad(t, gt, 3, 1e-12, "mse target gradient summed over the broadcast");
    release_all((nb_tensor *[]){x, t, y}, 3);
}

static void pointwise_losses_reject_bad_input(void **state)
{
    (void)state;
    nb_tensor *x = nb_full(NB_SHAPE(2, 3), 0.5, (nb_opts){0});
    nb_tensor *t = nb_full(NB_SHAPE(3, 2), 0.5, (nb_opts){0});
    nb_tensor *t64 = nb_full(NB_SHAPE(2, 3), 0.5, (nb_opts){.dtype = NB_DTYPE_F64});
    expect_error(nb_binary_cross_entropy(x, t, NB_REDUCTION_MEAN), NB_SHAPE_MISMATCH,
                 "binary_cross_entropy: target size [3, 2] must be the same as input size [2, 3]");
    expect_error(nb_binary_cross_entropy_with_logits(x, t, NB_REDUCTION_MEAN), NB_SHAPE_MISMATCH,
                 "must be the same as input size");
    expect_error(nb_mse_loss(x, t, NB_REDUCTION_MEAN), NB_SHAPE_MISMATCH,
                 "mse_loss: target size [3, 2] cannot be broadcast to input size [2, 3]");
    expect_error(nb_mse_loss(x, t64, NB_REDUCTION_MEAN), NB_DTYPE_UNSUPPORTED,
                 "target is float64 but the input is float32");
    expect_error(nb_mse_loss(x, x, (nb_reduction)7), NB_INVALID_ARGUMENT, "reduction 7");
    expect_error(nb_mse_loss(x, NULL, NB_REDUCTION_SUM), NB_NULL_ARGUMENT,
                 "mse_loss: target is NULL");
    release_all((nb_tensor *[]){x, t, t64}, 3);
}

/* ------------------------------------------------------- nll, cross_entropy */

static nb_tensor *targets(const int64_t *v, nb_shape s)
{
    nb_tensor *t = nb_from_data(v, s, (nb_opts){.dtype = NB_DTYPE_I64});
    assert_non_null(t);
    return t;
}

/* log-softmax over C of (N, C, D) then the picked, negated, reduced entries; -100 ignored */
static int64_t ce_ref(const double *x, const int64_t *t, int64_t N, int64_t C, int64_t D,
                      bool from_logits, nb_reduction r, double *out)
{
    double l[64];
    double s = 0;
    int64_t kept = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t d = 0; d < D; d++) {
            int64_t k = n * D + d;
            if (t[k] == -100) {
                l[k] = 0;
                continue;
            }
            double m = -INFINITY, z = 0;
            for (int64_t c = 0; c < C; c++)
                m = fmax(m, x[(n * C + c) * D + d]);
            for (int64_t c = 0; c < C; c++)
                z += exp(x[(n * C + c) * D + d] - m);
            double picked = x[(n * C + t[k]) * D + d];
            l[k] = from_logits ? -(picked - m - log(z)) : -picked;
            s += l[k];
            kept++;
        }
    if (r == NB_REDUCTION_NONE) {
        memcpy(out, l, (size_t)(N * D) * sizeof *l);
        return N * D;
    }
    out[0] = r == NB_REDUCTION_MEAN ? s / (double)kept : s;
    return 1;
}

static void nll_and_cross_entropy_match_loops_for_every_reduction(void **state)
{
    (void)state;
    rng_seed(17);
    double xv[4 * 5 * 2], ref[8];
    int64_t tv[4] = {1, 0, 4, 2}, tv_ign[4] = {1, -100, 4, 2}, tv3[8] = {0, 4, 1, -100, 2, 2, 3, 0};
    for (int i = 0; i < 2; i++) {
        nb_dtype dt = float_dtypes[i];
        nb_tensor *x = random_t(NB_SHAPE(4, 5), xv, -3, 3, dt, true);
        for (int ign = 0; ign < 2; ign++) {
            nb_tensor *t = targets(ign ? tv_ign : tv, NB_SHAPE(4));
            for (int r = 0; r < 3; r++) {
                nb_tensor *nl = nb_nll_loss(x, t, reductions[r]);
                int64_t n = ce_ref(xv, ign ? tv_ign : tv, 4, 5, 1, false, reductions[r], ref);
                assert_close(nl, ref, n, 10 * tol_for(dt), 10 * tol_for(dt), "nll_loss");
                assert_grad_fn(nl, "NllLossBackward0");
                nb_tensor *ce = nb_cross_entropy(x, t, reductions[r]);
                n = ce_ref(xv, ign ? tv_ign : tv, 4, 5, 1, true, reductions[r], ref);
                assert_close(ce, ref, n, 10 * tol_for(dt), 10 * tol_for(dt), "cross_entropy");
                /* PyTorch's composition: NllLossBackward0 <- LogSoftmaxBackward0 */
                assert_grad_fn(ce, "NllLossBackward0");
                const char *prev = nb_grad_fn_name(nb_grad_fn_next(nb_tensor_grad_fn(ce), 0));
                assert_string_equal(prev, "LogSoftmaxBackward0");
                release_all((nb_tensor *[]){nl, ce}, 2);
            }
            nb_release(t);
        }
        nb_release(x);
        /* (N, C, D) scores with (N, D) targets */
        nb_tensor *x3 = random_t(NB_SHAPE(4, 5, 2), xv, -3, 3, dt, true);
        nb_tensor *t3 = targets(tv3, NB_SHAPE(4, 2));
        for (int r = 0; r < 3; r++) {
            nb_tensor *ce = nb_cross_entropy(x3, t3, reductions[r]);
            int64_t n = ce_ref(xv, tv3, 4, 5, 2, true, reductions[r], ref);
            assert_close(ce, ref, n, 10 * tol_for(dt), 10 * tol_for(dt), "cross_entropy (N,C,D)");
            if (reductions[r] == NB_REDUCTION_NONE)
                assert_shape(ce, NB_SHAPE(4, 2));
            nb_release(ce);
        }
        release_all((nb_tensor *[]){x3, t3}, 2);
    }
}

static void cross_entropy_takes_unbatched_input_and_probabilities(void **state)
{
    (void)state;
    double xv[3] = {0.5, -1, 2}, ref[1];
    int64_t tv = 2;
    nb_tensor *x = make(NB_SHAPE(3), xv, NB_DTYPE_F64, true);
    nb_tensor *t = targets(&tv, NB_SHAPE_SCALAR);
    nb_tensor *ce = nb_cross_entropy(x, t, NB_REDUCTION_NONE);
    ce_ref(xv, &tv, 1, 3, 1, true, NB_REDUCTION_NONE, ref);
    assert_shape(ce, NB_SHAPE_SCALAR);
    assert_close(ce, ref, 1, 1e-12, 1e-12, "unbatched cross_entropy");
    /* probabilities: -sum p log_softmax, averaged over the batch */
    double pv[6] = {0.2, 0.3, 0.5, 1, 0, 0}, sv[6] = {1, 2, 3, -1, 0, 1}, pref = 0;
    for (int n = 0; n < 2; n++) {
        double m = fmax(fmax(sv[n * 3], sv[n * 3 + 1]), sv[n * 3 + 2]), z = 0;
        for (int c = 0; c < 3; c++)
            z += exp(sv[n * 3 + c] - m);
        for (int c = 0; c < 3; c++)
            pref -= pv[n * 3 + c] * (sv[n * 3 + c] - m - log(z)) / 2;
    }
    nb_tensor *s = make(NB_SHAPE(2, 3), sv, NB_DTYPE_F64, true);
    nb_tensor *p = make(NB_SHAPE(2, 3), pv, NB_DTYPE_F64, false);
    nb_tensor *cp = nb_cross_entropy(s, p, NB_REDUCTION_MEAN);
    assert_close(cp, &pref, 1, 1e-12, 1e-12, "cross_entropy with probabilities");
    release_all((nb_tensor *[]){x, t, ce, s, p, cp}, 6);
}

typedef struct ce_ctx {
    loss_api fn;
    nb_reduction r;
    nb_tensor *t;
} ce_ctx;

static nb_tensor *ce_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    ce_ctx *c = ctx;
    return c->fn(in[0], c->t, c->r);
}

static void nll_and_cross_entropy_gradcheck(void **state)
{
    (void)state;
    rng_seed(18);
    double v[4 * 5 * 2];
    int64_t tv[8] = {1, -100, 4, 2, 0, 3, 3, 1};
    nb_tensor *x = random_t(NB_SHAPE(4, 5), v, -2, 2, NB_DTYPE_F64, true);
    nb_tensor *x3 = random_t(NB_SHAPE(4, 5, 2), v, -2, 2, NB_DTYPE_F64, true);
    nb_tensor *t = targets(tv, NB_SHAPE(4)), *t3 = targets(tv, NB_SHAPE(4, 2));
    for (int r = 0; r < 3; r++) {
        ce_ctx nl = {nb_nll_loss, reductions[r], t}, ce = {nb_cross_entropy, reductions[r], t};
        ce_ctx ce3 = {nb_cross_entropy, reductions[r], t3};
        gradcheck_ok(ce_fn, &nl, &x, 1);
        gradcheck_ok(ce_fn, &ce, &x, 1);
        gradcheck_ok(ce_fn, &ce3, &x3, 1);
        gradgradcheck_ok(ce_fn, &ce, &x, 1);
    }
    release_all((nb_tensor *[]){x, x3, t, t3}, 4);
}

static void nll_and_cross_entropy_reject_bad_targets(void **state)
{
    (void)state;
    nb_tensor *x = nb_zeros(NB_SHAPE(3, 4), (nb_opts){0});
    int64_t bad[3] = {0, 4, 1}, neg[3] = {0, -1, 1}, ok[3] = {0, 1, 2};
    nb_tensor *tb = targets(bad, NB_SHAPE(3)), *tn = targets(neg, NB_SHAPE(3));
    nb_tensor *t2 = targets(ok, NB_SHAPE(2)), *to = targets(ok, NB_SHAPE(3));
    nb_tensor *tf = nb_zeros(NB_SHAPE(3), (nb_opts){0});
    nb_tensor *ti = nb_zeros(NB_SHAPE(3), (nb_opts){.dtype = NB_DTYPE_I32});
    expect_error(nb_nll_loss(x, tb, NB_REDUCTION_MEAN), NB_INDEX_OUT_OF_RANGE,
                 "nll_loss: target 4 is out of bounds: the input has 4 classes (target element 1)");
    expect_error(nb_cross_entropy(x, tn, NB_REDUCTION_MEAN), NB_INDEX_OUT_OF_RANGE,
                 "cross_entropy: target -1 is out of bounds");
    expect_error(nb_cross_entropy(x, t2, NB_REDUCTION_MEAN), NB_SHAPE_MISMATCH,
                 "expected input batch_size (3) to match target batch_size (2)");
    expect_error(nb_nll_loss(x, ti, NB_REDUCTION_MEAN), NB_DTYPE_UNSUPPORTED,
                 "target must hold int64 class indices, got int32");
    expect_error(nb_cross_entropy(x, tf, NB_REDUCTION_MEAN), NB_SHAPE_MISMATCH,
                 "floating point target holds class probabilities");
    expect_error(nb_nll_loss(x, to, (nb_reduction)-1), NB_INVALID_ARGUMENT, "reduction -1");
    expect_error(nb_cross_entropy(NULL, to, NB_REDUCTION_SUM), NB_NULL_ARGUMENT,
                 "cross_entropy: input is NULL");
    release_all((nb_tensor *[]){x, tb, tn, t2, to, tf, ti}, 7);
}

/* ------------------------------------------------------------ strided input */

/* Transposed and offset views give what their contiguous copies give. */
static void ops_accept_strided_views(void **state)
{
    (void)state;
    rng_seed(19);
    double v[2 * 5 * 3 * 4 + 8];
    nb_tensor *base = random_t(NB_SHAPE(2 * 5 * 3 * 4 + 8), v, -2, 2, NB_DTYPE_F32, false);
    nb_tensor *flat = nb_narrow(base, 0, 8, 2 * 5 * 3 * 4); /* offset 8 */
    nb_tensor *b4 = nb_view(flat, NB_SHAPE(2, 5, 3, 4));
    nb_tensor *x = nb_transpose(b4, 1, 2); /* (2, 3, 5, 4), not contiguous */
    nb_tensor *xc = nb_contiguous(x);
    assert_false(nb_tensor_is_contiguous(x));
    nb_tensor *w = random_t(NB_SHAPE(4, 3, 2, 2), v, -1, 1, NB_DTYPE_F32, false);
    nb_tensor *wt = nb_transpose(w, 2, 3), *wtc = nb_contiguous(wt);
    nb_conv2d_opts co = {.padding = {1, 0}};
    nb_pool2d_opts po = {.kernel = {2, 2}, .stride = {1, 2}, .padding = {1, 1}};
    nb_tensor *pairs[][2] = {
        {nb_conv2d(x, wt, NULL, co), nb_conv2d(xc, wtc, NULL, co)},
        {nb_max_pool2d(x, po), nb_max_pool2d(xc, po)},
        {nb_avg_pool2d(x, po), nb_avg_pool2d(xc, po)},
        {nb_softmax(x, -1), nb_softmax(xc, -1)},
        {nb_log_softmax(x, 1), nb_log_softmax(xc, 1)},
        {nb_gelu(x), nb_gelu(xc)},
    };
    for (size_t k = 0; k < sizeof pairs / sizeof *pairs; k++) {
        if (!pairs[k][0] || !pairs[k][1])
            fail_msg("pair %zu: %s", k, nb_last_error());
        if (!nb_allclose(pairs[k][0], pairs[k][1], 1e-6, 1e-6))
            fail_msg("pair %zu differs between the view and its contiguous copy", k);
        release_all(pairs[k], 2);
    }
    release_all((nb_tensor *[]){base, flat, b4, x, xc, w, wt, wtc}, 8);
}

/* --------------------------------------------------------------- lifetime */

/* A node's saved tensors are checked against in-place changes, as in PyTorch. */
static void inplace_change_of_a_saved_tensor_fails_backward(void **state)
{
    (void)state;
    nb_tensor *x = nb_randn(NB_SHAPE(2, 3), (nb_opts){.requires_grad = true});
    nb_tensor *h = nb_mul_scalar(x, 2.0);
    nb_tensor *y = nb_softmax(h, 1);
    nb_tensor *s = nb_sum(y, NULL, 0, false);
    NB_ASSERT_OK(nb_mul_scalar_(y, 3.0)); /* y is saved by SoftmaxBackward0 */
    assert_int_equal(nb_backward(s, NULL, (nb_backward_opts){0}), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("modified by an inplace operation");
    nb_clear_error();
    release_all((nb_tensor *[]){x, h, y, s}, 4);
}

/* A LeNet-like step, twice: no tensor outlives its graph (the teardown checks the count). */
static void a_training_step_leaves_nothing_behind(void **state)
{
    (void)state;
    nb_manual_seed(3);
    nb_opts g = {.requires_grad = true};
    nb_tensor *w1 = nb_randn(NB_SHAPE(4, 1, 3, 3), g), *b1 = nb_zeros(NB_SHAPE(4), g);
    nb_tensor *w2 = nb_randn(NB_SHAPE(3, 4 * 3 * 3), g);
    int64_t tv[2] = {0, 2};
    nb_tensor *t = targets(tv, NB_SHAPE(2));
    for (int step = 0; step < 2; step++) {
        nb_scope_begin();
        nb_tensor *x = nb_randn(NB_SHAPE(2, 1, 8, 8), (nb_opts){0});
        nb_tensor *h = nb_max_pool2d(nb_relu(nb_conv2d(x, w1, b1, (nb_conv2d_opts){0})),
                                     (nb_pool2d_opts){.kernel = {2, 2}});
        h = nb_dropout(nb_view(h, NB_SHAPE(2, -1)), 0.2, true);
        nb_tensor *loss = nb_cross_entropy(nb_linear(h, w2, NULL), t, NB_REDUCTION_MEAN);
        if (!loss)
            fail_msg("step: %s", nb_last_error());
        NB_ASSERT_OK(nb_backward(loss, NULL, (nb_backward_opts){0}));
        nb_scope_end();
    }
    nb_tensor *gw = nb_tensor_grad(w1);
    assert_non_null(gw);
    release_all((nb_tensor *[]){w1, b1, w2, t, gw}, 5);
}

/* ------------------------------------------------------------ out of memory */

/* Every op forward and backward, chained without checks: a NULL carries the first error. */
static nb_status oom_workload(void)
{
    static const double xv[2 * 4 * 6 * 6] = {0}, wv[4 * 2 * 3 * 3] = {0};
    static const int64_t tv[2] = {1, -100};
    nb_opts g = {.dtype = NB_DTYPE_F64, .requires_grad = true};
    nb_tensor *x = nb_from_data(xv, NB_SHAPE(2, 4, 6, 6), g);
    nb_tensor *w = nb_from_data(wv, NB_SHAPE(4, 2, 3, 3), g);
    nb_tensor *t = nb_from_data(tv, NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I64});
    nb_tensor *r[24] = {0};
    int n = 0;
    r[n++] = nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding = {1, 1}, .groups = 2});
    r[n++] = nb_max_pool2d(r[0], (nb_pool2d_opts){.kernel = {2, 2}});
    r[n++] = nb_avg_pool2d(r[1], (nb_pool2d_opts){.kernel = {3, 3}, .stride = {1, 1},
                                                  .padding = {1, 1}});
    r[n++] = nb_batch_norm(r[2], NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
    r[n++] = nb_reshape(r[3], NB_SHAPE(2, 36));
    r[n++] = nb_gelu(r[4]);
    r[n++] = nb_dropout(r[5], 0.5, true);
    r[n++] = nb_linear(r[6], r[6], NULL) /* (2, 2) */;
    r[n++] = nb_softmax(r[7], 0);
    r[n++] = nb_cross_entropy(r[8], t, NB_REDUCTION_MEAN);
    r[n++] = nb_nll_loss(r[8], t, NB_REDUCTION_SUM);
    r[n++] = nb_sigmoid(r[8]);
    r[n++] = nb_binary_cross_entropy(r[11], r[11], NB_REDUCTION_MEAN);
    r[n++] = nb_binary_cross_entropy_with_logits(r[8], r[11], NB_REDUCTION_SUM);
    r[n++] = nb_mse_loss(r[8], r[11], NB_REDUCTION_MEAN);
    r[n++] = nb_add(r[9], r[10]);
    r[n++] = nb_add(r[15], r[12]);
    r[n++] = nb_add(r[16], r[13]);
    r[n++] = nb_add(r[17], r[14]);
    nb_status st = r[n - 1] ? nb_backward(r[n - 1], NULL, (nb_backward_opts){0}) : nb_last_status();
    release_all(r, n);
    release_all((nb_tensor *[]){x, w, t}, 3);
    return st;
}

/* Each allocation in turn fails: every op returns NULL with an error, nothing leaks. */
static void out_of_memory_anywhere_fails_cleanly_without_leaks(void **state)
{
    (void)state;
    nb_test_every_allocation_fails_cleanly(oom_workload, 50);
}

/* ---------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    (void)argc;
    const struct CMUnitTest tests[] = {
        NB_TEST(linear_matches_loops_and_is_one_addmm),
        NB_TEST(linear_takes_1d_and_3d_inputs),
        NB_TEST(linear_gradcheck),
        NB_TEST(linear_rejects_bad_input),
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
        NB_TEST(bce_refuses_input_outside_zero_one),
        NB_TEST(gelu_is_the_exact_erf_form),
        NB_TEST(gelu_gradcheck_first_and_second_order),
        NB_TEST(softmax_and_log_softmax_match_loops_on_large_values),
        NB_TEST(softmax_gradcheck_first_and_second_order),
        NB_TEST(softmax_edge_cases_and_errors),
        NB_TEST(dropout_zeroes_with_probability_p_and_scales_the_rest),
        NB_TEST(dropout_is_identity_in_eval_and_zero_at_p1),
        NB_TEST(batch_norm_training_and_eval_match_loops),
        NB_TEST(batch_norm_gradcheck_first_and_second_order),
        NB_TEST(batch_norm_rejects_bad_input),
        NB_TEST(pointwise_losses_match_loops_for_every_reduction),
        NB_TEST(pointwise_losses_are_stable_at_the_edges),
        NB_TEST(pointwise_losses_gradcheck_input_and_target),
        NB_TEST(mse_loss_broadcasts_like_pytorch),
        NB_TEST(pointwise_losses_reject_bad_input),
        NB_TEST(nll_and_cross_entropy_match_loops_for_every_reduction),
        NB_TEST(cross_entropy_takes_unbatched_input_and_probabilities),
        NB_TEST(nll_and_cross_entropy_gradcheck),
        NB_TEST(nll_and_cross_entropy_reject_bad_targets),
        NB_TEST(ops_accept_strided_views),
        NB_TEST(inplace_change_of_a_saved_tensor_fails_backward),
        NB_TEST(a_training_step_leaves_nothing_behind),
        NB_TEST(out_of_memory_anywhere_fails_cleanly_without_leaks),
    };
    const char *no_tier2 = getenv("NABLA_NO_TIER2");
    bool composite = no_tier2 && strcmp(no_tier2, "1") == 0;
    int failed = cmocka_run_group_tests_name(composite ? "functional (tier-1 composites)"
                                                       : "functional (tier-2 kernels)",
                                             tests, NULL, NULL);
    failed = failed || nb_shutdown() != NB_OK;
    if (composite || no_tier2)
        return failed;
    /* the same suite once more with the composites; the core reads the switch on first use */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("NABLA_NO_TIER2", "1", 1);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        failed = 1;
    return failed;
}
