/* test_activation.c - tests core/nn/activation.c: gelu, softmax and log_softmax against loops
 * (both tiers: the suite re-runs itself with NABLA_NO_TIER2=1), and leaky_relu, elu, silu,
 * softplus, gelu_tanh, hardtanh and log_sigmoid against PyTorch 2.15 (float64, cpu; the Python
 * that printed the values is next to each block). */
#include "functional_test.h"
#include "nn_extra_helpers.h"

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

/* ------------------------------------------------------------------ activations */

/* x = torch.tensor([-3., -1., -0.5, 0., 0.5, 1., 3.], dtype=torch.float64, requires_grad=True)
 * y = F.leaky_relu(x, 0.1) (F.elu(x, 1.5), F.silu(x), F.softplus(x, beta=2, threshold=4),
 * F.gelu(x, approximate="tanh"), F.hardtanh(x, -1, 1), F.logsigmoid(x));
 * g, = torch.autograd.grad(y.sum(), x) */
static const double act_x[7] = {-3, -1, -0.5, 0, 0.5, 1, 3};

typedef struct act_case {
    const char *name;
    nb_tensor *(*fn)(const nb_tensor *x);
    double y[7], g[7];
} act_case;

static nb_tensor *leaky01(const nb_tensor *x) { return nb_leaky_relu(x, 0.1); }
static nb_tensor *elu15(const nb_tensor *x) { return nb_elu(x, 1.5); }
static nb_tensor *softplus24(const nb_tensor *x) { return nb_softplus(x, 2, 4); }
static nb_tensor *hardtanh11(const nb_tensor *x) { return nb_hardtanh(x, -1, 1); }

static const act_case act_cases[] = {
    {"leaky_relu", leaky01, {-0.3, -0.1, -0.05, 0.0, 0.5, 1.0, 3.0},
     {0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 1.0}},
    {"elu", elu15, {-1.425319397448, -0.948180838243, -0.590204010431, 0.0, 0.5, 1.0, 3.0},
     {0.074680602552, 0.551819161757, 0.909795989569, 1.5, 1.0, 1.0, 1.0}},
    {"silu", nb_silu, {-0.142277619533, -0.26894142137, -0.188770334399, 0.0, 0.311229665601,
                       0.73105857863, 2.857722380467},
     {-0.088104106015, 0.072329488129, 0.260038812697, 0.5, 0.739961187303, 0.927670511871,
      1.088104106015}},
    {"softplus", softplus24, {0.001237842569, 0.063464005521, 0.156630843759, 0.34657359028,
                              0.656630843759, 1.063464005521, 3.0},
     {0.002472623157, 0.119202922022, 0.26894142137, 0.5, 0.73105857863, 0.880797077978, 1.0}},
    {"gelu_tanh", nb_gelu_tanh, {-0.003637392082, -0.158808009392, -0.154285990175, 0.0,
                                 0.345714009825, 0.841191990608, 2.996362607918},
     {-0.011584166631, -0.082964083846, 0.132630096465, 0.5, 0.867369903535, 1.082964083846,
      1.011584166631}},
    {"hardtanh", hardtanh11, {-1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0},
     {0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0}},
    {"log_sigmoid", nb_log_sigmoid, {-3.048587351574, -1.313261687518, -0.97407698418,
                                     -0.69314718056, -0.47407698418, -0.313261687518,
                                     -0.048587351574},
     {0.952574126822, 0.73105857863, 0.622459331202, 0.5, 0.377540668798, 0.26894142137,
      0.047425873178}},
};

static void activations_match_pytorch_values_and_gradients(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof act_cases / sizeof *act_cases; c++) {
        nb_tensor *x = tf64(NB_SHAPE(7), act_x, true);
        nb_tensor *y = act_cases[c].fn(x);
        expect_values(y, act_cases[c].y, 7, 1e-10);
        nb_tensor *g = grad_of_sum(y, x);
        expect_values(g, act_cases[c].g, 7, 1e-10);
        nb_release(g);
        nb_release(y);
        nb_release(x);
    }
}

/* F.softplus(torch.tensor([-30., 30., 100.])) -> [9.357622912219837e-14, 30.0, 100.0];
 * F.logsigmoid(torch.tensor([-100., 0., 100.])) -> [-100.0, -0.6931471824645996, -3.9e-44] */
static void activations_stay_finite_at_extremes_in_float32(void **state)
{
    (void)state;
    nb_tensor *x = nb_from_data((float[]){-30, 30, 100}, NB_SHAPE(3), (nb_opts){0});
    nb_tensor *sp = nb_softplus(x, 0, 0);
    expect_values(sp, ARR(9.357622912219837e-14, 30, 100), 3, 1e-6);
    nb_tensor *y = nb_from_data((float[]){-100, 0, 100}, NB_SHAPE(3),
                                (nb_opts){.requires_grad = true});
    nb_tensor *ls = nb_log_sigmoid(y);
    expect_values(ls, ARR(-100, -0.6931471824645996, 0), 3, 1e-6);
    nb_tensor *g = grad_of_sum(ls, y); /* 1 - sigmoid(x) */
    expect_values(g, ARR(1, 0.5, 0), 3, 1e-6);
    nb_tensor *e = nb_elu(x, 1.0), *ge = NULL;
    nb_tensor *xg = nb_from_data((float[]){-30, 30, 100}, NB_SHAPE(3),
                                 (nb_opts){.requires_grad = true});
    nb_release(e);
    e = nb_elu(xg, 1.0);
    ge = grad_of_sum(e, xg); /* no 0 * inf from the unused exp branch */
    expect_values(ge, ARR(exp(-30), 1, 1), 3, 1e-6);
    nb_release(ge);
    nb_release(e);
    nb_release(xg);
    nb_release(g);
    nb_release(ls);
    nb_release(y);
    nb_release(sp);
    nb_release(x);
}

static nb_tensor *act_second(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n;
    const act_case *c = ctx;
    nb_tensor *y = c->fn(in[0]);
    nb_tensor *s = nb_sum(y, NULL, 0, false), *g = NULL;
    nb_tensor *x = in[0];
    nb_grad(&s, NULL, 1, &x, 1, (nb_grad_opts){.create_graph = true}, &g);
    nb_release(s);
    nb_release(y);
    return g;
}

static nb_tensor *act_first(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n;
    return ((const act_case *)ctx)->fn(in[0]);
}

static nb_tensor *exp_op(const nb_tensor *x) { return nb_exp(x); }

/* away from the kinks (0 for leaky_relu/elu, +-1 for hardtanh), where finite differences lie */
static void activations_pass_gradcheck(void **state)
{
    (void)state;
    double xs[6] = {-2.3, -0.7, -0.2, 0.3, 0.6, 2.1};
    for (size_t c = 0; c < sizeof act_cases / sizeof *act_cases; c++) {
        nb_tensor *x = tf64(NB_SHAPE(6), xs, true);
        assert_int_equal(nb_gradcheck(act_first, (void *)&act_cases[c], &x, 1, 1e-6, 1e-6, 1e-4),
                         NB_OK);
        nb_release(x);
    }
}

/* The composites are differentiable twice exactly when the ops they use are: exp, tanh and
 * sigmoid save their output without its graph in core/tensor/ops.c today, which loses the second
 * derivative. This test skips while a plain exp fails the same check, and holds the
 * activations to it once exp passes. */
static void activations_pass_second_order_gradcheck(void **state)
{
    (void)state;
    double xs[6] = {-2.3, -0.7, -0.2, 0.3, 0.6, 2.1};
    nb_tensor *x = tf64(NB_SHAPE(6), xs, true);
    act_case probe = {"exp", exp_op, {0}, {0}};
    nb_status st = nb_gradcheck(act_second, &probe, &x, 1, 1e-6, 1e-6, 1e-4);
    nb_clear_error();
    if (st != NB_OK) {
        nb_release(x);
        skip();
    }
    for (size_t c = 0; c < sizeof act_cases / sizeof *act_cases; c++) {
        if (act_cases[c].fn == leaky01 || act_cases[c].fn == hardtanh11)
            continue; /* piecewise linear: a constant gradient */
        st = nb_gradcheck(act_second, (void *)&act_cases[c], &x, 1, 1e-6, 1e-6, 1e-4);
        if (st != NB_OK)
            print_error("%s: %s\n", act_cases[c].name, nb_last_error());
        assert_int_equal(st, NB_OK);
    }
    nb_release(x);
}

static void activations_refuse_integers_and_null(void **state)
{
    (void)state;
    nb_tensor *i = nb_ones(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I64});
    assert_null(nb_silu(i));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    nb_clear_error();
    assert_null(nb_gelu_tanh(NULL));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_clear_error();
    nb_tensor *x = nb_ones(NB_SHAPE(2), (nb_opts){0});
    assert_null(nb_hardtanh(x, 1, -1));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_release(x);
    nb_release(i);
}

/* NaN takes the pass-through branch of hardtanh's and elu's gradients, as PyTorch's tests
 * (x <= min || x >= max, x <= 0) do, on every device:
 * x = torch.tensor([nan, -1, 1, 0.5], dtype=torch.float64, requires_grad=True)
 * F.hardtanh(x) -> [nan, -1, 1, 0.5], grad [1, 0, 0, 1]
 * F.relu6(tensor([nan, 0, 6, 3])) grad [1, 0, 0, 1]
 * F.elu(tensor([nan, 0, -1, 2])) -> [nan, 0, -0.6321205588285577, 2], grad [1, 1, exp(-1), 1] */
static void hardtanh_and_elu_pass_the_gradient_at_nan(void **state)
{
    (void)state;
    const char *devices[2] = {"cpu", "opencl:0"};
    int n_dev = nb_device_count("opencl") > 0 ? 2 : 1;
    nb_clear_error();
    for (int d = 0; d < n_dev; d++) {
        nb_opts o = {.dtype = NB_DTYPE_F64, .device = devices[d], .requires_grad = true};
        for (int k = 0; k < 3; k++) {
            const double xv[3][4] = {{NAN, -1, 1, 0.5}, {NAN, 0, 6, 3}, {NAN, 0, -1, 2}};
            nb_tensor *x = nb_from_data(xv[k], NB_SHAPE(4), o);
            assert_non_null(x);
            nb_tensor *y = k == 0 ? nb_hardtanh(x, -1, 1) : k == 1 ? nb_hardtanh(x, 0, 6)
                                                                   : nb_elu(x, 1);
            if (k == 2)
                expect_values(y, ARR(NAN, 0, -0.6321205588285577, 2), 4, 1e-12);
            else
                expect_values(y, ARR(NAN, xv[k][1], xv[k][2], xv[k][3]), 4, 0);
            nb_tensor *g = grad_of_sum(y, x);
            if (k == 2)
                expect_values(g, ARR(1, 1, exp(-1.0), 1), 4, 1e-12);
            else
                expect_values(g, ARR(1, 0, 0, 1), 4, 0);
            nb_release(g);
            nb_release(y);
            nb_release(x);
        }
    }
}

/* ---------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    (void)argc;
    const struct CMUnitTest twice[] = {
        NB_TEST(gelu_is_the_exact_erf_form),
        NB_TEST(gelu_gradcheck_first_and_second_order),
        NB_TEST(softmax_and_log_softmax_match_loops_on_large_values),
        NB_TEST(softmax_gradcheck_first_and_second_order),
        NB_TEST(softmax_edge_cases_and_errors),
    };
    /* PyTorch reference values: run on the device's kernels only */
    const struct CMUnitTest once[] = {
        NB_TEST(activations_match_pytorch_values_and_gradients),
        NB_TEST(activations_stay_finite_at_extremes_in_float32),
        NB_TEST(activations_pass_gradcheck),
        NB_TEST(activations_pass_second_order_gradcheck),
        NB_TEST(activations_refuse_integers_and_null),
        NB_TEST(hardtanh_and_elu_pass_the_gradient_at_nan),
    };
    return nbt_run_tiers("activation", twice, NBT_COUNT(twice), once, NBT_COUNT(once), argv);
}
