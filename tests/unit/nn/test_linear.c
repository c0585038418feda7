/* test_linear.c - tests core/nn/linear.c: linear and dropout against naive C loops, grad_fn
 * names, gradcheck in float64 and the errors for bad input. The whole suite runs twice: on the device's tier-2 kernels, then
 * re-executed with NABLA_NO_TIER2=1 so that the tier-1 composites compute the same values. */
#include "functional_test.h"

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

/* A 0-d or one-element bias broadcasts, as PyTorch documents ("Bias: (out) or ()"):
 * x = torch.sin(torch.arange(8.)).reshape(2, 4); w = torch.cos(torch.arange(12.)).reshape(3, 4)
 * b = torch.tensor(0.5, requires_grad=True); y = F.linear(x, w, b); y.sum().backward(); b.grad -> 6 */
static void linear_takes_a_0d_bias(void **state)
{
    (void)state;
    const char *devices[2] = {"cpu", "opencl:0"};
    int n_dev = nb_device_count("opencl") > 0 ? 2 : 1;
    nb_clear_error();
    for (int d = 0; d < n_dev; d++) {
        nb_opts o = {.dtype = NB_DTYPE_F64, .device = devices[d]};
        double xv[8], wv[12];
        for (int i = 0; i < 12; i++) {
            if (i < 8)
                xv[i] = sin((double)i);
            wv[i] = cos((double)i);
        }
        nb_tensor *x = nb_from_data(xv, NB_SHAPE(2, 4), o), *w = nb_from_data(wv, NB_SHAPE(3, 4), o);
        for (int k = 0; k < 2; k++) {
            nb_tensor *b = nb_from_data((double[]){0.5}, k ? NB_SHAPE(1) : NB_SHAPE_SCALAR,
                                        (nb_opts){.dtype = NB_DTYPE_F64, .device = devices[d],
                                                  .requires_grad = true});
            nb_tensor *y = nb_linear(x, w, b);
            assert_non_null(y);
            assert_shape(y, NB_SHAPE(2, 3));
            const double want[6] = {0.43653971665941377, 1.7181645617294352, -1.0290307065325397,
                                    -1.3090454195022776, 0.9496857867142237, 1.7211769277447035};
            assert_close(y, want, 6, 1e-12, 1e-12, "linear 0-d bias");
            nb_tensor *s = nb_sum(y, NULL, 0, false);
            NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
            nb_tensor *g = nb_tensor_grad(b);
            double gv = 0;
            NB_ASSERT_OK(nb_item(g, &gv));
            assert_true(gv == 6);
            nb_release(g);
            nb_release(s);
            nb_release(y);
            nb_release(b);
        }
        nb_release(w);
        nb_release(x);
    }
}

/* ---------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    (void)argc;
    const struct CMUnitTest twice[] = {
        NB_TEST(linear_matches_loops_and_is_one_addmm),
        NB_TEST(linear_takes_1d_and_3d_inputs),
        NB_TEST(linear_gradcheck),
        NB_TEST(linear_rejects_bad_input),
        NB_TEST(dropout_zeroes_with_probability_p_and_scales_the_rest),
        NB_TEST(dropout_is_identity_in_eval_and_zero_at_p1),
        NB_TEST(linear_takes_a_0d_bias),
    };
    return nbt_run_tiers("linear", twice, NBT_COUNT(twice), NULL, 0, argv);
}
