/* dist_ddp.c - DDP across processes (run under mpirun with 2 and 3 ranks): after every step the
 * parameters are bitwise identical on all ranks, and 10 steps of LeNet with the batch split
 * across ranks match 10 single-process steps on the whole batch. Ranks with different models
 * fail at construction, naming the first mismatch. */
#include "nb_test.h"
#ifdef NB_HAVE_LENET
#include "lenet.h"
#endif

static nb_process_group *pg;
static int rank, world;

enum { GLOBAL_BATCH = 12, STEPS = 10 }; /* 12 splits evenly over 2 and 3 ranks */

/* Max over ranks of |p - p_rank0|: 0 when every rank holds the same bits. */
static void assert_same_on_every_rank(nb_module *m)
{
    for (int32_t k = 0; k < nb_module_parameter_count(m); k++) {
        nb_tensor *p = nb_module_parameter(m, k);
        nb_tensor *hi = nb_clone(p), *lo = nb_clone(p);
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, hi, NB_REDUCE_OP_MAX)));
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, lo, NB_REDUCE_OP_MIN)));
        assert_true(nb_equal(hi, lo));
        nb_release(hi);
        nb_release(lo);
    }
}

static nb_status sgd_step(nb_optim *o, nb_module *m, nb_tensor *loss)
{
    nb_status st = nb_optim_zero_grad(o);
    (void)m;
    if (st == NB_OK)
        st = nb_backward(loss, NULL, (nb_backward_opts){0});
    return st == NB_OK ? nb_optim_step(o) : st;
}

static void train_matches_single_process(double bucket_mb, bool view)
{
#ifndef NB_HAVE_LENET
    skip();
#else
    nb_manual_seed(1234 + (uint64_t)rank); /* different on each rank: the broadcast fixes it */
    nb_module *m = lenet_new((nb_opts){0});
    nb_manual_seed(1234);
    nb_module *ref = lenet_new((nb_opts){0}); /* rank 0's initial weights, trained alone */
    nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.bucket_mb = bucket_mb,
                                                .gradient_as_bucket_view = view});
    assert_non_null(d);
    /* The default first bucket (1 MiB) holds LeNet's 325 KB whole; 50 KiB closes a bucket after
     * fc1.weight: two allreduces, the first in flight while backward still computes conv2's
     * and conv1's gradients. */
    assert_int_equal(nb_ddp_bucket_count(d), bucket_mb > 0 ? 2 : 1);
    assert_same_on_every_rank(m);
    nb_optim *o = nb_sgd_new_for(m, (nb_sgd_opts){.lr = 0.05, .momentum = 0.9});
    nb_optim *oref = nb_sgd_new_for(ref, (nb_sgd_opts){.lr = 0.05, .momentum = 0.9});
    int per = GLOBAL_BATCH / world;
    for (int step = 0; step < STEPS; step++) {
        nb_manual_seed(99 + (uint64_t)step); /* the same global batch on every rank */
        nb_tensor *x = nb_randn(NB_SHAPE(GLOBAL_BATCH, 1, 32, 32), (nb_opts){0});
        nb_tensor *y = nb_randint(0, 10, NB_SHAPE(GLOBAL_BATCH), (nb_opts){.dtype = NB_DTYPE_I64});
        nb_tensor *xs = nb_narrow(x, 0, rank * per, per), *ys = nb_narrow(y, 0, rank * per, per);
        nb_tensor *out = nb_ddp_forward(d, xs), *loss = nb_cross_entropy(out, ys, NB_REDUCTION_MEAN);
        NB_ASSERT_OK(sgd_step(o, m, loss));
        NB_ASSERT_OK(nb_ddp_finish(d));
        nb_tensor *oref_out = nb_module_forward(ref, x);
        nb_tensor *lref = nb_cross_entropy(oref_out, y, NB_REDUCTION_MEAN);
        NB_ASSERT_OK(sgd_step(oref, ref, lref));
        assert_same_on_every_rank(m);
        nb_release(lref);
        nb_release(oref_out);
        nb_release(loss);
        nb_release(out);
        nb_release(xs);
        nb_release(ys);
        nb_release(x);
        nb_release(y);
    }
    /* float32 sums in another order: rtol 1e-4, atol 1e-5 after 10 momentum steps. */
    for (int32_t k = 0; k < nb_module_parameter_count(m); k++)
        if (!nb_allclose(nb_module_parameter(m, k), nb_module_parameter(ref, k), 1e-4, 1e-5))
            fail_msg("rank %d: %s differs from single-process training", rank,
                     nb_module_parameter_name(m, k));
    /* Every gradient byte was reduced once per step, nothing more. */
    uint64_t param_bytes = 0;
    for (int32_t k = 0; k < nb_module_parameter_count(m); k++)
        param_bytes += (uint64_t)nb_tensor_numel(nb_module_parameter(m, k)) * 4;
    assert_int_equal(nb_ddp_bytes_reduced(d), STEPS * param_bytes);
    nb_optim_free(o);
    nb_optim_free(oref);
    nb_ddp_free(d);
    nb_module_free(ref);
    nb_module_free(m);
#endif
}

static void lenet_in_one_bucket_matches_single_process(void **state)
{
    (void)state;
    train_matches_single_process(0, false);
}

static void lenet_with_gradients_as_bucket_views_matches_single_process(void **state)
{
    (void)state;
    train_matches_single_process(0.05, true);
}

static void lenet_in_many_buckets_matches_single_process(void **state)
{
    (void)state;
    train_matches_single_process(0.05, false); /* 50 KiB: fc1.weight alone, the rest in a few */
}

static void different_models_fail_at_construction_naming_the_mismatch(void **state)
{
    (void)state;
    nb_module *m = nb_linear_new(4, rank == world - 1 ? 3 : 2, true, (nb_opts){0});
    assert_null(nb_ddp_new(m, pg, (nb_ddp_opts){0}));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("entry 0 is 'weight'");
    nb_module_free(m);
    /* A different number of parameters. */
    m = nb_linear_new(4, 2, rank != 0, (nb_opts){0});
    assert_null(nb_ddp_new(m, pg, (nb_ddp_opts){0}));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("between 1 and 2");
    nb_module_free(m);
}

static nb_tensor *grad_of(nb_module *m, int32_t k)
{
    return nb_tensor_grad(nb_module_parameter(m, k));
}

static void no_sync_accumulates_locally_then_reduces_the_sum(void **state)
{
    (void)state;
    nb_manual_seed(5);
    nb_module *m = nb_linear_new(4, 2, true, (nb_opts){0});
    nb_manual_seed(5);
    nb_module *ref = nb_linear_new(4, 2, true, (nb_opts){0}); /* plain, same weights */
    nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){0});
    assert_non_null(d);
    nb_manual_seed(100 + (uint64_t)rank); /* each rank its own data */
    nb_tensor *x1 = nb_randn(NB_SHAPE(3, 4), (nb_opts){0}), *x2 = nb_randn(NB_SHAPE(3, 4), (nb_opts){0});
    NB_ASSERT_OK(nb_ddp_set_sync(d, false));
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            NB_ASSERT_OK(nb_ddp_set_sync(d, true));
        nb_tensor *x = pass ? x2 : x1;
        nb_tensor *y = nb_ddp_forward(d, x), *l = nb_sum(y, NULL, 0, false);
        nb_tensor *yr = nb_module_forward(ref, x), *lr = nb_sum(yr, NULL, 0, false);
        NB_ASSERT_OK(nb_backward(l, NULL, (nb_backward_opts){0}));
        NB_ASSERT_OK(nb_backward(lr, NULL, (nb_backward_opts){0}));
        nb_release(l);
        nb_release(y);
        nb_release(lr);
        nb_release(yr);
        if (pass == 0) { /* nothing reduced: still this rank's own gradient */
            nb_tensor *g = grad_of(m, 0), *gr = grad_of(ref, 0);
            assert_true(nb_equal(g, gr));
            nb_release(g);
            nb_release(gr);
        }
    }
    for (int32_t k = 0; k < nb_module_parameter_count(m); k++) {
        nb_tensor *g = grad_of(m, k), *gr = grad_of(ref, k);
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, gr, NB_REDUCE_OP_AVG)));
        assert_true(nb_allclose(g, gr, 1e-5, 1e-6)); /* the average of both passes' sums */
        nb_release(g);
        nb_release(gr);
    }
    assert_same_on_every_rank(m);
    nb_release(x1);
    nb_release(x2);
    nb_ddp_free(d);
    nb_module_free(ref);
    nb_module_free(m);
}

static void buffers_follow_rank_0_before_every_forward(void **state)
{
    (void)state;
    for (int no_sync = 0; no_sync < 2; no_sync++) {
        nb_module *m = nb_batch_norm1d_new(3, 1e-5, 0.1, (nb_opts){0});
        nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.no_buffer_sync = no_sync});
        assert_non_null(d);
        nb_tensor *mean = NULL;
        for (int32_t k = 0; k < nb_module_state_count(m); k++) {
            const char *name;
            nb_tensor *t = nb_module_state(m, k, &name);
            if (strcmp(name, "running_mean") == 0)
                mean = t;
        }
        assert_non_null(mean);
        NB_ASSERT_OK(nb_fill_(mean, rank)); /* ranks drift apart */
        NB_ASSERT_OK(nb_module_train(m, false)); /* eval: the forward reads, never updates */
        nb_tensor *x = nb_ones(NB_SHAPE(2, 3), (nb_opts){0});
        nb_tensor *y = nb_ddp_forward(d, x);
        assert_non_null(y);
        nb_tensor *want = nb_full(NB_SHAPE(3), no_sync ? rank : 0, (nb_opts){0});
        assert_true(nb_equal(mean, want));
        nb_release(want);
        nb_release(y);
        nb_release(x);
        nb_ddp_free(d);
        nb_module_free(m);
    }
}

/* A net with a branch: y = c(relu(a(x) + b(x))) where the rank uses b, c(relu(a(x))) where not. */
typedef struct branch_net {
    bool use_b;
} branch_net;

static nb_tensor *branch_forward(nb_module *self, const nb_tensor *x)
{
    const branch_net *bn = nb_module_user(self);
    nb_tensor *h = nb_module_forward(nb_module_child(self, "a"), x);
    if (bn->use_b) {
        nb_tensor *hb = nb_module_forward(nb_module_child(self, "b"), x), *sum = nb_add(h, hb);
        nb_release(hb);
        nb_release(h);
        h = sum;
    }
    nb_tensor *r = nb_relu(h), *y = nb_module_forward(nb_module_child(self, "c"), r);
    nb_release(r);
    nb_release(h);
    return y;
}

static nb_module *branch_new(branch_net *bn)
{
    nb_manual_seed(7);
    nb_module *m = nb_module_new("Branchy", branch_forward, bn);
    nb_module_add(m, "a", nb_linear_new(4, 3, true, (nb_opts){0}));
    nb_module_add(m, "b", nb_linear_new(4, 3, true, (nb_opts){0}));
    nb_module_add(m, "c", nb_linear_new(3, 2, true, (nb_opts){0}));
    return m;
}

static nb_tensor *rank_batch(int step, int r)
{
    nb_manual_seed(1000 + 16 * (uint64_t)step + (uint64_t)r);
    return nb_randn(NB_SHAPE(3, 4), (nb_opts){0});
}

/* One step of the single-process reference: the mean over ranks of each rank's summed output,
 * rank r's batch through ref. With uses_b (the branch net's flag), the last rank skips b, as
 * branch_unused_on_some_ranks's ranks do when *uses_b is true. */
static void reference_step(nb_module *ref, nb_optim *oref, int step, bool *uses_b)
{
    bool any = uses_b && *uses_b;
    NB_ASSERT_OK(nb_optim_zero_grad(oref));
    for (int r = 0; r < world; r++) {
        if (uses_b)
            *uses_b = any && r != world - 1;
        nb_tensor *xr = rank_batch(step, r), *yr = nb_module_forward(ref, xr);
        nb_tensor *sr = nb_sum(yr, NULL, 0, false), *lr = nb_mul_scalar(sr, 1.0 / world);
        NB_ASSERT_OK(nb_backward(lr, NULL, (nb_backward_opts){0}));
        nb_release(lr);
        nb_release(sr);
        nb_release(yr);
        nb_release(xr);
    }
    NB_ASSERT_OK(nb_optim_step(oref));
}

static void assert_matches_reference(nb_module *m, nb_module *ref, int step)
{
    for (int32_t k = 0; k < nb_module_parameter_count(m); k++)
        if (!nb_allclose(nb_module_parameter(m, k), nb_module_parameter(ref, k), 1e-5, 1e-6))
            fail_msg("rank %d, step %d: %s differs from one process", rank, step,
                     nb_module_parameter_name(m, k));
}

/* find_unused_parameters with b unused on some ranks: DDP's steps equal one process that sums
 * every rank's loss / world (b's gradient is the average with zeros from the ranks that skip
 * it), and the parameters stay bitwise identical on all ranks. When no rank uses b, its .grad
 * stays NULL and its weights never move. */
static void branch_unused_on_some_ranks(bool any_rank_uses_b, double bucket_mb, bool view)
{
    branch_net mine = {.use_b = any_rank_uses_b && rank != world - 1}, theirs = {0};
    nb_module *m = branch_new(&mine), *ref = branch_new(&theirs);
    nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.bucket_mb = bucket_mb,
                                                .find_unused_parameters = true,
                                                .gradient_as_bucket_view = view});
    assert_non_null(d);
    nb_optim *o = nb_sgd_new_for(m, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9});
    nb_optim *oref = nb_sgd_new_for(ref, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9});
    nb_tensor *b0 = nb_clone(nb_module_parameter(m, 2)); /* b.weight before training */
    for (int step = 0; step < 4; step++) {
        nb_tensor *x = rank_batch(step, rank);
        nb_tensor *y = nb_ddp_forward(d, x), *l = nb_sum(y, NULL, 0, false);
        assert_non_null(l);
        NB_ASSERT_OK(sgd_step(o, m, l));
        NB_ASSERT_OK(nb_ddp_finish(d));
        assert_same_on_every_rank(m);
        theirs.use_b = any_rank_uses_b;
        reference_step(ref, oref, step, &theirs.use_b);
        assert_matches_reference(m, ref, step);
        nb_release(l);
        nb_release(y);
        nb_release(x);
    }
    nb_tensor *gb = nb_tensor_grad(nb_module_parameter(m, 2));
    if (any_rank_uses_b) {
        assert_non_null(gb); /* the average, on the rank that skipped b too */
        assert_false(nb_equal(b0, nb_module_parameter(m, 2)));
    } else {
        assert_null(gb);
        assert_true(nb_equal(b0, nb_module_parameter(m, 2)));
    }
    nb_release(gb);
    nb_release(b0);
    nb_optim_free(o);
    nb_optim_free(oref);
    nb_ddp_free(d);
    nb_module_free(ref);
    nb_module_free(m);
}

static void find_unused_parameters_with_a_branch_one_rank_skips(void **state)
{
    (void)state;
    branch_unused_on_some_ranks(true, 0, false);    /* one bucket */
    branch_unused_on_some_ranks(true, 1e-6, false); /* one per parameter: b's go out early */
    branch_unused_on_some_ranks(true, 1e-6, true);
}

static void find_unused_parameters_with_a_branch_no_rank_uses(void **state)
{
    (void)state;
    branch_unused_on_some_ranks(false, 0, false);
    branch_unused_on_some_ranks(false, 1e-6, true);
}

/* A net that registers its layers in the opposite order to their use: y = first(relu(second(x)))
 * with first registered first, so backward produces first's gradients before second's, while
 * the initial layout (reverse registration) puts second's in the first buckets. */
static nb_tensor *reversed_forward(nb_module *self, const nb_tensor *x)
{
    nb_tensor *h = nb_module_forward(nb_module_child(self, "second"), x), *r = nb_relu(h);
    nb_tensor *y = nb_module_forward(nb_module_child(self, "first"), r);
    nb_release(r);
    nb_release(h);
    return y;
}

static nb_module *reversed_new(void)
{
    nb_manual_seed(11);
    nb_module *m = nb_module_new("Reversed", reversed_forward, NULL);
    nb_module_add(m, "first", nb_linear_new(3, 2, true, (nb_opts){0}));  /* parameters 0, 1 */
    nb_module_add(m, "second", nb_linear_new(4, 3, true, (nb_opts){0})); /* parameters 2, 3 */
    return m;
}

/* Records the order in which backward made the parameters' gradients ready. */
typedef struct arrivals {
    nb_module *m;
    int32_t order[4], n;
} arrivals;

static nb_status record_arrival(nb_tensor *t, void *ctx)
{
    arrivals *a = ctx;
    for (int32_t k = 0; k < 4; k++)
        if (nb_module_parameter(a->m, k) == t && a->n < 4)
            a->order[a->n++] = k;
    return NB_OK;
}

/* The parameter indices of every bucket, one per bucket (bucket_mb this small closes a bucket
 * after each parameter). */
static void bucket_layout(const nb_ddp *d, int32_t *idx)
{
    assert_int_equal(nb_ddp_bucket_count(d), 4);
    for (int32_t b = 0; b < 4; b++)
        assert_int_equal(nb_ddp_bucket_params(d, b, &idx[b], 1), 1);
}

/* PyTorch's bucket rebuild: after the first synced backward the buckets follow the order its
 * gradients came in (rank 0's; every rank runs the same graph here), which is not the initial
 * reverse registration order; gradients that are bucket views keep their values through the
 * move; training stays equal to one process on the whole batch, bitwise the same on every
 * rank. */
static void buckets_are_rebuilt_in_gradient_order_after_the_first_backward(bool view)
{
    nb_module *m = reversed_new(), *ref = reversed_new();
    nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.bucket_mb = 1e-6, .gradient_as_bucket_view = view});
    assert_non_null(d);
    int32_t idx[4];
    bucket_layout(d, idx);
    for (int32_t b = 0; b < 4; b++)
        assert_int_equal(idx[b], 3 - b); /* reverse registration */
    arrivals seen = {.m = m};
    for (int32_t k = 0; k < 4; k++)
        NB_ASSERT_OK(nb_tensor_register_post_accumulate_grad_hook(nb_module_parameter(m, k),
                                                                  record_arrival, &seen));
    nb_optim *o = nb_sgd_new_for(m, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9});
    nb_optim *oref = nb_sgd_new_for(ref, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9});
    for (int step = 0; step < 4; step++) {
        nb_tensor *saved[4] = {0};
        for (int32_t k = 0; step == 1 && k < 4; k++) { /* the averages the rebuild must keep */
            nb_tensor *g = nb_tensor_grad(nb_module_parameter(m, k));
            saved[k] = nb_clone(g);
            nb_release(g);
        }
        nb_tensor *xr = rank_batch(step, rank), *y = nb_ddp_forward(d, xr);
        assert_non_null(y);
        if (step >= 1) {
            assert_int_equal(seen.n, 4);
            bucket_layout(d, idx);
            for (int32_t b = 0; b < 4; b++)
                assert_int_equal(idx[b], seen.order[b]);
        }
        for (int32_t k = 0; step == 1 && k < 4; k++) {
            nb_tensor *g = nb_tensor_grad(nb_module_parameter(m, k));
            assert_true(nb_equal(saved[k], g));
            nb_release(g);
            nb_release(saved[k]);
        }
        nb_tensor *l = nb_sum(y, NULL, 0, false);
        NB_ASSERT_OK(nb_optim_zero_grad(o));
        NB_ASSERT_OK(nb_backward(l, NULL, (nb_backward_opts){0}));
        NB_ASSERT_OK(nb_ddp_finish(d));
        NB_ASSERT_OK(nb_optim_step(o));
        reference_step(ref, oref, step, NULL);
        assert_same_on_every_rank(m);
        assert_matches_reference(m, ref, step);
        nb_release(l);
        nb_release(y);
        nb_release(xr);
    }
    assert_true(memcmp(seen.order, (int32_t[]){3, 2, 1, 0}, sizeof seen.order) != 0);
    for (int32_t k = 0; k < 4; k++)
        NB_ASSERT_OK(nb_tensor_remove_post_accumulate_grad_hook(nb_module_parameter(m, k),
                                                                record_arrival, &seen));
    nb_optim_free(o);
    nb_optim_free(oref);
    nb_ddp_free(d);
    nb_module_free(ref);
    nb_module_free(m);
}

static void buckets_follow_the_gradient_order_from_the_second_step(void **state)
{
    (void)state;
    buckets_are_rebuilt_in_gradient_order_after_the_first_backward(false);
    buckets_are_rebuilt_in_gradient_order_after_the_first_backward(true);
}

int main(void)
{
    pg = nb_process_group_new((nb_process_group_opts){.timeout_s = 120});
    if (!pg) {
        fprintf(stderr, "dist_ddp: %s\n", nb_last_error());
        return 1;
    }
    rank = nb_process_group_rank(pg);
    world = nb_process_group_size(pg);
    const struct CMUnitTest tests[] = {
        NB_TEST(lenet_in_one_bucket_matches_single_process),
        NB_TEST(lenet_in_many_buckets_matches_single_process),
        NB_TEST(lenet_with_gradients_as_bucket_views_matches_single_process),
        NB_TEST(different_models_fail_at_construction_naming_the_mismatch),
        NB_TEST(no_sync_accumulates_locally_then_reduces_the_sum),
        NB_TEST(buffers_follow_rank_0_before_every_forward),
        NB_TEST(find_unused_parameters_with_a_branch_one_rank_skips),
        NB_TEST(find_unused_parameters_with_a_branch_no_rank_uses),
        NB_TEST(buckets_follow_the_gradient_order_from_the_second_step),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    nb_process_group_free(pg);
    return failed || nb_shutdown() != NB_OK;
}
