/* test_normalization.c - tests core/nn/normalization.c: batch_norm against loops (both tiers:
 * the suite re-runs itself with NABLA_NO_TIER2=1), and layer_norm and group_norm against PyTorch
 * 2.15 (float64, cpu; the Python that printed the values is next to each block). */
#include "functional_test.h"
#include "nn_extra_helpers.h"

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

/* ------------------------------------------------------------------ normalisation */

/* a = torch.arange(12, dtype=torch.float64).reshape(2, 2, 3) ** 1.5
 * F.layer_norm(a, (3,), torch.tensor([1., 2., -1.]), torch.tensor([0.5, 0., 1.]));
 * F.layer_norm(a, (2, 3)) */
static void layer_norm_matches_pytorch(void **state)
{
    (void)state;
    double v[12];
    for (int k = 0; k < 12; k++)
        v[k] = pow(k, 1.5);
    nb_tensor *a = tf64(NB_SHAPE(2, 2, 3), v, true);
    nb_tensor *w = tf64(NB_SHAPE(3), ARR(1, 2, -1), true), *b = tf64(NB_SHAPE(3), ARR(0.5, 0, 1), false);
    nb_tensor *y = nb_layer_norm(a, (int64_t[]){3}, 1, w, b, 0);
    expect_values(y, ARR(-0.5896972945, -0.4715956538, -0.3254951214, -0.6982688762,
                         -0.1026711922, -0.2496044723, -0.7098745417, -0.0584334092,
                         -0.2390912463, -0.7144008385, -0.0408632006, -0.2348324388), 12, 1e-9);
    nb_tensor *y2 = nb_layer_norm(a, (int64_t[]){2, 3}, 2, NULL, NULL, 1e-5);
    expect_values(y2, ARR(-1.1977903031, -0.9429857526, -0.477094201, 0.1262129793,
                          0.8406461009, 1.6510111765, -1.4035429275, -0.890592957,
                          -0.3395624166, 0.2470784869, 0.8672862316, 1.5193335824), 12, 1e-9);
    /* bad shapes name what was given */
    assert_null(nb_layer_norm(a, (int64_t[]){4}, 1, NULL, NULL, 0));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "[2, 2, 3]"));
    nb_clear_error();
    nb_release(y2);
    nb_release(y);
    nb_release(b);
    nb_release(w);
    nb_release(a);
}

static nb_tensor *ln_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_layer_norm(in[0], (int64_t[]){3}, 1, in[1], in[2], 1e-5);
}

static nb_tensor *gn_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_group_norm(in[0], 2, in[1], in[2], 1e-5);
}

static void norms_pass_gradcheck(void **state)
{
    (void)state;
    double v[24];
    for (int k = 0; k < 24; k++)
        v[k] = sin(1.3 * k) + 0.1 * k;
    nb_tensor *in[3] = {tf64(NB_SHAPE(2, 4, 3), v, true), tf64(NB_SHAPE(3), ARR(1, 2, -1), true),
                        tf64(NB_SHAPE(3), ARR(0.5, 0, 1), true)};
    assert_int_equal(nb_gradcheck(ln_fn, NULL, in, 3, 1e-6, 1e-6, 1e-4), NB_OK);
    nb_release(in[1]);
    nb_release(in[2]);
    in[1] = tf64(NB_SHAPE(4), ARR(1, 2, 3, 4), true);
    in[2] = tf64(NB_SHAPE(4), ARR(0, 0.1, 0.2, 0.3), true);
    assert_int_equal(nb_gradcheck(gn_fn, NULL, in, 3, 1e-6, 1e-6, 1e-4), NB_OK);
    for (int k = 0; k < 3; k++)
        nb_release(in[k]);
}

/* gx = torch.arange(24, dtype=torch.float64).reshape(2, 4, 3).sin()
 * F.group_norm(gx, 2, torch.tensor([1., 2., 3., 4.]), torch.tensor([0., .1, .2, .3])) */
static void group_norm_matches_pytorch(void **state)
{
    (void)state;
    double v[24];
    for (int k = 0; k < 24; k++)
        v[k] = sin(k);
    nb_tensor *x = tf64(NB_SHAPE(2, 4, 3), v, false);
    nb_tensor *w = tf64(NB_SHAPE(4), ARR(1, 2, 3, 4), false);
    nb_tensor *b = tf64(NB_SHAPE(4), ARR(0, 0.1, 0.2, 0.3), false);
    nb_tensor *y = nb_group_norm(x, 2, w, b, 0);
    expect_values(y, ARR(-0.0412341742, 1.1405449892, 1.2358018399, 0.413915337, -2.108206338,
                         -2.6759343088, -1.164179715, 2.8454494628, 4.2686490282, 2.4292478188,
                         -3.029611127, -5.6328617265, -0.8431332185, 0.5418377068, 1.3676036343,
                         1.8499183572, -0.8663212395, -2.8162133629, -3.2991731396,
                         0.6417174678, 3.979808625, 4.8947662886, -0.0368677886, -4.9210357709),
                  24, 1e-9);
    assert_null(nb_group_norm(x, 3, w, b, 0));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_release(y);
    nb_release(b);
    nb_release(w);
    nb_release(x);
}

/* ---------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    (void)argc;
    const struct CMUnitTest twice[] = {
        NB_TEST(batch_norm_training_and_eval_match_loops),
        NB_TEST(batch_norm_gradcheck_first_and_second_order),
        NB_TEST(batch_norm_rejects_bad_input),
    };
    /* PyTorch reference values: run on the device's kernels only */
    const struct CMUnitTest once[] = {
        NB_TEST(layer_norm_matches_pytorch),
        NB_TEST(norms_pass_gradcheck),
        NB_TEST(group_norm_matches_pytorch),
    };
    return nbt_run_tiers("normalization", twice, NBT_COUNT(twice), once, NBT_COUNT(once), argv);
}
