/* test_loss.c - tests core/nn/loss.c: mse_loss, binary_cross_entropy (with logits), nll_loss and
 * cross_entropy against loops for every reduction, their stability at the edges, gradcheck and
 * the errors for bad input and targets. The whole suite runs twice: on the device's tier-2 kernels, then
 * re-executed with NABLA_NO_TIER2=1 so that the tier-1 composites compute the same values. */
#include "functional_test.h"

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

/* ---------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    (void)argc;
    const struct CMUnitTest twice[] = {
        NB_TEST(bce_refuses_input_outside_zero_one),
        NB_TEST(pointwise_losses_match_loops_for_every_reduction),
        NB_TEST(pointwise_losses_are_stable_at_the_edges),
        NB_TEST(pointwise_losses_gradcheck_input_and_target),
        NB_TEST(mse_loss_broadcasts_like_pytorch),
        NB_TEST(pointwise_losses_reject_bad_input),
        NB_TEST(nll_and_cross_entropy_match_loops_for_every_reduction),
        NB_TEST(cross_entropy_takes_unbatched_input_and_probabilities),
        NB_TEST(nll_and_cross_entropy_gradcheck),
        NB_TEST(nll_and_cross_entropy_reject_bad_targets),
    };
    return nbt_run_tiers("loss", twice, NBT_COUNT(twice), NULL, 0, argv);
}
