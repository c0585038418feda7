/* dist_collectives.c - collectives across real processes (run under mpirun with 2 and 3 ranks):
 * every dtype, reduce op, root, empty and non-contiguous tensors, opencl:0 staged through host
 * memory, and calls the ranks disagree on. Every rank runs the same tests in the same order. */
#include "nb_test.h"

/* |a - b| <= tol, in double (this cmocka has only the float version). */
#define ASSERT_NEAR(a, b, tol) assert_true(fabs((double)(a) - (double)(b)) <= (tol))

static nb_process_group *pg;
static int rank, world;

/* The value rank r contributes at element k, for each dtype. */
static double contribution(nb_dtype dt, int r, int k)
{
    if (dt == NB_DTYPE_BOOL)
        return r == k % world; /* or-reduced: all ones when world <= k's range */
    return (double)(r + 1) * (k + 1);
}

static nb_tensor *contribution_tensor(nb_dtype dt, int r, int n, const char *device)
{
    double v[16];
    for (int k = 0; k < n; k++)
        v[k] = contribution(dt, r, k);
    nb_tensor *d = nb_from_data(v, NB_SHAPE(n), (nb_opts){.dtype = NB_DTYPE_F64});
    nb_tensor *t = nb_to_dtype(d, dt), *on = nb_to_device(t, device);
    nb_release(d);
    nb_release(t);
    return on;
}

static void sum_every_dtype_on(const char *device)
{
    nb_dtype dts[] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32,  NB_DTYPE_I64,
                      NB_DTYPE_BOOL, NB_DTYPE_U8, NB_DTYPE_F16, NB_DTYPE_BF16};
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        enum { N = 7 };
        nb_tensor *t = contribution_tensor(dts[d], rank, N, device);
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_SUM)));
        assert_string_equal(nb_tensor_device(t), device);
        double got[N];
        nb_tensor *h = nb_to_device(t, "cpu"), *f = nb_to_dtype(h, NB_DTYPE_F64);
        nb_release(h);
        NB_ASSERT_OK(nb_tensor_copy_to_host(f, got, sizeof got));
        for (int k = 0; k < N; k++) {
            double want = 0;
            for (int r = 0; r < world; r++)
                want += contribution(dts[d], r, k);
            if (dts[d] == NB_DTYPE_BOOL)
                want = want > 0;
            ASSERT_NEAR(got[k], want, 0);
        }
        nb_release(f);
        nb_release(t);
    }
}

static void allreduce_sums_every_dtype(void **state)
{
    (void)state;
    sum_every_dtype_on("cpu");
}

static void allreduce_average_max_min_prod(void **state)
{
    (void)state;
    nb_reduce_op ops[] = {NB_REDUCE_OP_AVG, NB_REDUCE_OP_MAX, NB_REDUCE_OP_MIN, NB_REDUCE_OP_PROD};
    for (int o = 0; o < 4; o++) {
        nb_tensor *t = contribution_tensor(NB_DTYPE_F64, rank, 3, "cpu");
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t, ops[o])));
        double got[3];
        NB_ASSERT_OK(nb_tensor_copy_to_host(t, got, sizeof got));
        for (int k = 0; k < 3; k++) {
            double s = 0, p = 1;
            for (int r = 0; r < world; r++) {
                s += contribution(NB_DTYPE_F64, r, k);
                p *= contribution(NB_DTYPE_F64, r, k);
            }
            double want[4] = {s / world, contribution(NB_DTYPE_F64, world - 1, k),
                              contribution(NB_DTYPE_F64, 0, k), p};
            ASSERT_NEAR(got[k], want[o], 1e-12);
        }
        nb_release(t);
    }
}

/* float16 and bfloat16: average, max and min with a NaN on the last rank (NaN wins, as in
 * torch.maximum), prod, then broadcast and allgather, which move the 16-bit words unchanged. */
static void sixteen_bit_floats_reduce_and_move(void **state)
{
    (void)state;
    const nb_dtype dts[] = {NB_DTYPE_F16, NB_DTYPE_BF16};
    for (int d = 0; d < 2; d++) {
        double v[4] = {rank + 1, -(rank + 1), rank == world - 1 ? NAN : rank, 0.5};
        nb_tensor *f = nb_from_data(v, NB_SHAPE(4), (nb_opts){.dtype = NB_DTYPE_F64});
        nb_tensor *t[4];
        for (int k = 0; k < 4; k++)
            assert_non_null(t[k] = nb_to_dtype(f, dts[d]));
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t[0], NB_REDUCE_OP_AVG)));
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t[1], NB_REDUCE_OP_MAX)));
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t[2], NB_REDUCE_OP_MIN)));
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t[3], NB_REDUCE_OP_PROD)));
        double got[4][4];
        for (int k = 0; k < 4; k++) {
            assert_int_equal(nb_tensor_dtype(t[k]), dts[d]);
            nb_tensor *w = nb_to_dtype(t[k], NB_DTYPE_F64);
            NB_ASSERT_OK(nb_tensor_copy_to_host(w, got[k], sizeof got[k]));
            nb_release(w);
        }
        ASSERT_NEAR(got[0][0], (world + 1) / 2.0, 0);
        ASSERT_NEAR(got[1][1], -1, 0);
        assert_true(isnan(got[1][2]) && isnan(got[2][2]));
        ASSERT_NEAR(got[2][0], 1, 0);
        ASSERT_NEAR(got[3][3], ldexp(1, -world), 0);
        /* a finite value per rank, a NaN with a payload, the smallest negative subnormal */
        const uint16_t nan = d == 0 ? 0x7e01 : 0x7fc1;
        uint16_t mine[3] = {(uint16_t)(0x3c00 + rank), nan, 0x8001}, bits[3 * 64];
        assert_true(world <= 64);
        nb_tensor *b = nb_empty(NB_SHAPE(3), (nb_opts){.dtype = dts[d]});
        NB_ASSERT_OK(nb_tensor_copy_from_host(b, mine, sizeof mine));
        nb_tensor *all = nb_empty(NB_SHAPE(world, 3), (nb_opts){.dtype = dts[d]});
        NB_ASSERT_OK(nb_work_finish(nb_allgather(pg, b, all)));
        NB_ASSERT_OK(nb_tensor_copy_to_host(all, bits, (size_t)world * sizeof mine));
        for (int r = 0; r < world; r++) {
            assert_int_equal(bits[3 * r], 0x3c00 + r);
            assert_int_equal(bits[3 * r + 1], nan); /* moved as it is, payload and all */
            assert_int_equal(bits[3 * r + 2], 0x8001);
        }
        NB_ASSERT_OK(nb_work_finish(nb_broadcast(pg, b, world - 1)));
        NB_ASSERT_OK(nb_tensor_copy_to_host(b, bits, sizeof mine));
        assert_int_equal(bits[0], 0x3c00 + world - 1);
        nb_release(all);
        nb_release(b);
        for (int k = 0; k < 4; k++)
            nb_release(t[k]);
        nb_release(f);
    }
}

static void non_contiguous_and_empty_tensors(void **state)
{
    (void)state;
    nb_tensor *base = nb_full(NB_SHAPE(3, 4), rank + 1, (nb_opts){0});
    nb_tensor *col = nb_select(base, 1, 2); /* stride 4 */
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, col, NB_REDUCE_OP_SUM)));
    float got[12];
    NB_ASSERT_OK(nb_tensor_copy_to_host(base, got, sizeof got));
    for (int k = 0; k < 12; k++)
        assert_float_equal(got[k], (k % 4 == 2 ? world * (world + 1) / 2.0f : rank + 1), 0);
    nb_tensor *e = nb_zeros(NB_SHAPE(0), (nb_opts){0}), *eo = nb_zeros(NB_SHAPE(0), (nb_opts){0});
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, e, NB_REDUCE_OP_SUM)));
    NB_ASSERT_OK(nb_work_finish(nb_broadcast(pg, e, 0)));
    NB_ASSERT_OK(nb_work_finish(nb_allgather(pg, e, eo)));
    nb_release(e);
    nb_release(eo);
    nb_release(col);
    nb_release(base);
}

static void broadcast_from_every_root(void **state)
{
    (void)state;
    for (int root = 0; root < world; root++) {
        nb_tensor *t = contribution_tensor(NB_DTYPE_I64, rank, 5, "cpu");
        nb_tensor *want = contribution_tensor(NB_DTYPE_I64, root, 5, "cpu");
        NB_ASSERT_OK(nb_work_finish(nb_broadcast(pg, t, root)));
        assert_true(nb_equal(t, want));
        nb_release(want);
        nb_release(t);
    }
}

static void allgather_in_rank_order(void **state)
{
    (void)state;
    nb_tensor *in = contribution_tensor(NB_DTYPE_F32, rank, 4, "cpu");
    nb_tensor *out = nb_zeros(NB_SHAPE(world, 4), (nb_opts){0});
    nb_tensor *outt = nb_zeros(NB_SHAPE(4, world), (nb_opts){0});
    nb_tensor *view = nb_t(outt); /* (world, 4), not contiguous */
    NB_ASSERT_OK(nb_work_finish(nb_allgather(pg, in, out)));
    NB_ASSERT_OK(nb_work_finish(nb_allgather(pg, in, view)));
    for (int r = 0; r < world; r++) {
        nb_tensor *want = contribution_tensor(NB_DTYPE_F32, r, 4, "cpu");
        nb_tensor *row = nb_select(out, 0, r), *row2 = nb_select(view, 0, r);
        assert_true(nb_equal(row, want));
        assert_true(nb_equal(row2, want));
        nb_release(row);
        nb_release(row2);
        nb_release(want);
    }
    nb_release(view);
    nb_release(outt);
    nb_release(out);
    nb_release(in);
}

static void async_work_overlaps_and_completes_in_order(void **state)
{
    (void)state;
    enum { K = 8 };
    nb_tensor *t[K];
    nb_work *w[K];
    for (int k = 0; k < K; k++) {
        t[k] = nb_full(NB_SHAPE(1000 + k), k + rank, (nb_opts){0});
        w[k] = nb_allreduce(pg, t[k], NB_REDUCE_OP_SUM);
        assert_non_null(w[k]);
    }
    NB_ASSERT_OK(nb_work_finish(nb_barrier(pg)));
    for (int k = K - 1; k >= 0; k--) { /* waits in any order */
        NB_ASSERT_OK(nb_work_wait(w[k]));
        nb_work_free(w[k]);
        double v;
        nb_tensor *s = nb_amax(t[k], NULL, 0, false);
        NB_ASSERT_OK(nb_item(s, &v));
        ASSERT_NEAR(v, (double)k * world + world * (world - 1) / 2.0, 0);
        nb_release(s);
        nb_release(t[k]);
    }
}

static void opencl_tensors_are_staged_through_host_memory(void **state)
{
    (void)state;
    if (nb_device_count("opencl") <= 0)
        skip();
    sum_every_dtype_on("opencl:0");
    nb_tensor *t = contribution_tensor(NB_DTYPE_F32, rank, 6, "opencl:0");
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_AVG)));
    assert_string_equal(nb_tensor_device(t), "opencl:0");
    float got[6];
    NB_ASSERT_OK(nb_tensor_copy_to_host(t, got, sizeof got));
    for (int k = 0; k < 6; k++)
        assert_float_equal(got[k], (world + 1) / 2.0f * (k + 1), 1e-5);
    nb_tensor *out = nb_zeros(NB_SHAPE(world, 6), (nb_opts){.device = "opencl:0"});
    NB_ASSERT_OK(nb_work_finish(nb_allgather(pg, t, out)));
    nb_release(out);
    nb_release(t);
}

static void ranks_that_disagree_all_fail_and_the_group_survives(void **state)
{
    (void)state;
    /* Different shapes with the same element count, then different counts, then dtypes. */
    nb_tensor *a = rank == 0 ? nb_ones(NB_SHAPE(2, 3), (nb_opts){0})
                             : nb_ones(NB_SHAPE(3, 2), (nb_opts){0});
    assert_int_equal(nb_work_finish(nb_allreduce(pg, a, NB_REDUCE_OP_SUM)), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("ranks disagree");
    float v[6];
    NB_ASSERT_OK(nb_tensor_copy_to_host(a, v, sizeof v));
    for (int k = 0; k < 6; k++)
        assert_float_equal(v[k], 1, 0); /* untouched */
    nb_tensor *b = nb_ones(NB_SHAPE(4 + (rank == world - 1)), (nb_opts){0});
    assert_int_equal(nb_work_finish(nb_broadcast(pg, b, 0)), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("element count is 4..5");
    nb_tensor *c = nb_ones(NB_SHAPE(4), (nb_opts){.dtype = rank ? NB_DTYPE_F64 : NB_DTYPE_F32});
    assert_int_equal(nb_work_finish(nb_allreduce(pg, c, NB_REDUCE_OP_SUM)), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("float32..float64");
    nb_tensor *d = nb_ones(NB_SHAPE(4), (nb_opts){0});
    nb_work *w = rank ? nb_broadcast(pg, d, 0) : nb_allreduce(pg, d, NB_REDUCE_OP_SUM);
    assert_int_equal(nb_work_finish(w), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("allreduce..broadcast");
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, d, NB_REDUCE_OP_SUM)));
    double s;
    nb_tensor *sum = nb_sum(d, NULL, 0, false);
    NB_ASSERT_OK(nb_item(sum, &s));
    ASSERT_NEAR(s, 4.0 * world, 0);
    nb_release(sum);
    nb_release(a);
    nb_release(b);
    nb_release(c);
    nb_release(d);
}

int main(void)
{
    pg = nb_process_group_new((nb_process_group_opts){.timeout_s = 60});
    if (!pg) {
        fprintf(stderr, "dist_collectives: %s\n", nb_last_error());
        return 1;
    }
    rank = nb_process_group_rank(pg);
    world = nb_process_group_size(pg);
    const struct CMUnitTest tests[] = {
        NB_TEST(allreduce_sums_every_dtype),
        NB_TEST(allreduce_average_max_min_prod),
        NB_TEST(sixteen_bit_floats_reduce_and_move),
        NB_TEST(non_contiguous_and_empty_tensors),
        NB_TEST(broadcast_from_every_root),
        NB_TEST(allgather_in_rank_order),
        NB_TEST(async_work_overlaps_and_completes_in_order),
        NB_TEST(opencl_tensors_are_staged_through_host_memory),
        NB_TEST(ranks_that_disagree_all_fail_and_the_group_survives),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    nb_process_group_free(pg);
    return failed || nb_shutdown() != NB_OK;
}
