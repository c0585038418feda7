/* test_functional.c - tests core/nn/functional.h, the node plumbing every functional op shares:
 * strided inputs, the saved-tensor version check, a training step that leaves nothing behind, and
 * out-of-memory anywhere failing cleanly. The whole suite runs twice: on the device's tier-2 kernels, then
 * re-executed with NABLA_NO_TIER2=1 so that the tier-1 composites compute the same values. */
#include "functional_test.h"

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
    const struct CMUnitTest twice[] = {
        NB_TEST(ops_accept_strided_views),
        NB_TEST(inplace_change_of_a_saved_tensor_fails_backward),
        NB_TEST(a_training_step_leaves_nothing_behind),
        NB_TEST(out_of_memory_anywhere_fails_cleanly_without_leaks),
    };
    return nbt_run_tiers("functional", twice, NBT_COUNT(twice), NULL, 0, argv);
}
