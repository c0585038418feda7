/* dist_nccl.c - the nccl backend as a world of one on cuda:0: collectives on cuda tensors, a
 * cpu tensor refused with the device names. Exits 77 (skipped) without a GPU or the backend. */
#include "nb_test.h"

static nb_process_group *pg;

static void collectives_on_cuda_tensors(void **state)
{
    (void)state;
    float v[6] = {1, 2, 3, 4, 5, 6};
    nb_tensor *h = nb_from_data(v, NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *t = nb_to_device(h, "cuda:0");
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_SUM)));
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_AVG)));
    NB_ASSERT_OK(nb_work_finish(nb_broadcast(pg, t, 0)));
    nb_tensor *tr = nb_t(t); /* not contiguous: a contiguous copy on the device, copied back */
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, tr, NB_REDUCE_OP_MAX)));
    nb_tensor *out = nb_zeros(NB_SHAPE(1, 2, 3), (nb_opts){.device = "cuda:0"});
    NB_ASSERT_OK(nb_work_finish(nb_allgather(pg, t, out)));
    NB_ASSERT_OK(nb_work_finish(nb_barrier(pg)));
    nb_tensor *back = nb_to_device(out, "cpu"), *flat = nb_reshape(back, NB_SHAPE(2, 3));
    assert_true(nb_equal(flat, h));
    nb_release(flat);
    nb_release(back);
    nb_release(out);
    nb_release(tr);
    nb_release(t);
    nb_release(h);
}

static void cpu_tensors_are_refused_with_the_device_names(void **state)
{
    (void)state;
    nb_tensor *c = nb_ones(NB_SHAPE(3), (nb_opts){0});
    assert_null(nb_allreduce(pg, c, NB_REDUCE_OP_SUM));
    assert_int_equal(nb_last_status(), NB_DEVICE_MISMATCH);
    NB_ASSERT_ERROR_HAS("cuda");
    NB_ASSERT_ERROR_HAS("cpu");
    nb_release(c);
}

int main(void)
{
    if (nb_device_count("cuda") <= 0) {
        printf("dist_nccl: skipped: no cuda device (%s)\n", nb_last_error());
        return 77;
    }
    pg = nb_process_group_new((nb_process_group_opts){.backend = "nccl", .rank = 0,
                                                      .world_size = 1, .timeout_s = 60});
    if (!pg) {
        printf("dist_nccl: skipped: %s\n", nb_last_error());
        return nb_last_status() == NB_NO_DEVICE || nb_last_status() == NB_PLUGIN_LOAD ? 77 : 1;
    }
    const struct CMUnitTest tests[] = {
        NB_TEST(collectives_on_cuda_tensors),
        NB_TEST(cpu_tensors_are_refused_with_the_device_names),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    nb_process_group_free(pg);
    return failed || nb_shutdown() != NB_OK;
}
