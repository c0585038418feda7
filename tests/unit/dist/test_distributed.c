/* test_distributed.c - process groups (core/dist/distributed.c), DDP (core/dist/ddp.c) and the
 * post-accumulate-grad hook, in one process: bad input needs no peers, and the mpi backend runs
 * as a world of one without mpirun. The multi-process checks are in tests/dist. */
#include "nb_test.h"

/* Open MPI's components have no frame pointers: under AddressSanitizer, leak stacks stop inside
 * them unless LSan unwinds the slow way, and only full stacks reach the Open MPI libraries that
 * tests/lsan.supp names. (Read by the sanitizer runtime before main; unused otherwise.) */
__attribute__((visibility("default"), used)) const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0";
}

#include <stdio.h>
#include <unistd.h>

static nb_process_group *group1(void)
{
    /* A world of one through MPI's singleton start; NULL (test skipped) without the backend. */
    nb_process_group *pg = nb_process_group_new((nb_process_group_opts){.backend = "mpi",
                                                                        .timeout_s = 30});
    if (!pg)
        print_message("mpi backend unavailable: %s\n", nb_last_error());
    nb_clear_error();
    return pg;
}

static nb_process_group *shared_pg; /* MPI starts once per process */

static nb_process_group *pg1(void)
{
    if (!shared_pg)
        shared_pg = group1();
    return shared_pg;
}

static void no_backend_outside_mpirun_is_an_error(void **state)
{
    (void)state;
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "NABLA_DIST_BACKEND"};
    for (size_t k = 0; k < 4; k++)
        unsetenv(vars[k]);
    assert_null(nb_process_group_new((nb_process_group_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("mpirun");
    NB_ASSERT_ERROR_HAS("NABLA_DIST_BACKEND");
}

static void unknown_backend_names_the_file_it_looked_for(void **state)
{
    (void)state;
    assert_null(nb_process_group_new((nb_process_group_opts){.backend = "gloo"}));
    assert_int_equal(nb_last_status(), NB_PLUGIN_LOAD);
    NB_ASSERT_ERROR_HAS("nabla_collective_gloo.so");
    assert_null(nb_process_group_new((nb_process_group_opts){.backend = "../mpi"}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("'../mpi'");
}

static void a_backend_that_fails_to_load_keeps_its_reason(void **state)
{
    (void)state;
    char dir[] = "/tmp/nb_dist_XXXXXX", file[64], path[4096];
    assert_non_null(mkdtemp(dir));
    snprintf(file, sizeof file, "%s/nabla_collective_junk.so", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs("not an ELF file", f);
    fclose(f);
    const char *old = getenv("NABLA_PLUGIN_PATH");
    snprintf(path, sizeof path, "%s:%s", dir, old ? old : "");
    char *saved = old ? strdup(old) : NULL;
    setenv("NABLA_PLUGIN_PATH", path, 1);
    nb_process_group_backend_info info;
    NB_ASSERT_OK(nb_process_group_backend_get("junk", &info));
    assert_false(info.loaded);
    assert_string_equal(info.path, file);
    assert_non_null(strstr(info.note, "cannot load"));
    assert_null(nb_process_group_new((nb_process_group_opts){.backend = "junk"}));
    assert_int_equal(nb_last_status(), NB_PLUGIN_LOAD);
    NB_ASSERT_ERROR_HAS("cannot load");
    assert_int_equal(nb_process_group_backend_get(NULL, &info), NB_NULL_ARGUMENT);
    assert_int_equal(nb_process_group_backend_get("a/b", &info), NB_INVALID_ARGUMENT);
    if (saved)
        setenv("NABLA_PLUGIN_PATH", saved, 1);
    else
        unsetenv("NABLA_PLUGIN_PATH");
    free(saved);
    remove(file);
    rmdir(dir);
}

static void a_backend_refuses_tensors_it_cannot_reach_naming_the_devices(void **state)
{
    (void)state;
    nb_process_group *pg = nb_process_group_new((nb_process_group_opts){.backend = "fake"});
    assert_non_null(pg);
    nb_tensor *t = nb_ones(NB_SHAPE(3), (nb_opts){0}), *out = nb_ones(NB_SHAPE(3), (nb_opts){0});
    assert_null(nb_allreduce(pg, t, NB_REDUCE_OP_SUM));
    assert_int_equal(nb_last_status(), NB_DEVICE_MISMATCH);
    NB_ASSERT_ERROR_HAS("reaches cuda tensors, not a tensor on cpu");
    nb_clear_error();
    assert_null(nb_allgather(pg, t, out));
    assert_int_equal(nb_last_status(), NB_DEVICE_MISMATCH);
    nb_clear_error();
    assert_null(nb_broadcast(pg, t, 0));
    assert_int_equal(nb_last_status(), NB_DEVICE_MISMATCH);
    NB_ASSERT_OK(nb_work_finish(nb_barrier(pg)));
    nb_release(out);
    nb_release(t);
    nb_process_group_free(pg);
}

static void a_backend_of_another_abi_major_is_skipped_with_the_reason(void **state)
{
    (void)state;
    nb_process_group_backend_info info;
    NB_ASSERT_OK(nb_process_group_backend_get("oldabi", &info));
    assert_false(info.loaded);
    assert_non_null(strstr(info.note, "collective ABI major 0"));
    assert_null(nb_process_group_new((nb_process_group_opts){.backend = "oldabi"}));
    assert_int_equal(nb_last_status(), NB_ABI_MISMATCH);
    NB_ASSERT_OK(nb_process_group_backend_get("fake", &info));
    assert_true(info.loaded);
    assert_string_equal(info.devices, "cuda");
    assert_string_equal(info.version, "fake 1");
}

static void the_unique_id_goes_through_the_init_file_or_a_bootstrap_group(void **state)
{
    (void)state;
    char path[] = "/tmp/nb_dist_id_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    remove(path); /* rank 0 creates it */
    unsetenv("RANK");
    unsetenv("WORLD_SIZE");
    assert_null(nb_process_group_new((nb_process_group_opts){.backend = "fake",
                                                             .init_file = path}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("init_file needs the rank");
    nb_process_group *pg = nb_process_group_new(
        (nb_process_group_opts){.backend = "fake", .init_file = path, .rank = 0,
                                .world_size = 1});
    assert_non_null(pg);
    char got[32] = {0};
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(got, 1, sizeof got, f), 16);
    fclose(f);
    assert_string_equal(got, "fake-unique-id!");
    nb_process_group_free(pg);
    remove(path);
    if (pg1()) { /* through a world-of-one mpi group */
        pg = nb_process_group_new((nb_process_group_opts){.backend = "fake", .bootstrap = pg1()});
        assert_non_null(pg);
        nb_process_group_free(pg);
        assert_null(nb_process_group_new((nb_process_group_opts){
            .backend = "fake", .bootstrap = pg1(), .rank = 1, .world_size = 2}));
        NB_ASSERT_ERROR_HAS("bootstrap group says rank 0 of 1");
    }
}

static void bad_options_are_refused(void **state)
{
    (void)state;
    assert_null(nb_process_group_new((nb_process_group_opts){.backend = "mpi", .timeout_s = -1}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("timeout_s is -1");
    assert_null(nb_process_group_new((nb_process_group_opts){.backend = "mpi", .timeout_s = NAN}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    assert_null(nb_process_group_new(
        (nb_process_group_opts){.backend = "mpi", .rank = 3, .world_size = 2}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("rank 3 of world size 2");
    assert_null(nb_process_group_new(
        (nb_process_group_opts){.backend = "mpi", .init_file = "/tmp/x", .bootstrap = pg1()}));
    if (pg1()) {
        assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
        NB_ASSERT_ERROR_HAS("not both");
    }
}

static void null_arguments_are_errors_not_crashes(void **state)
{
    (void)state;
    nb_tensor *t = nb_ones(NB_SHAPE(3), (nb_opts){0});
    assert_null(nb_allreduce(NULL, t, NB_REDUCE_OP_SUM));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    NB_ASSERT_ERROR_HAS("process group is NULL");
    assert_null(nb_broadcast(NULL, t, 0));
    assert_null(nb_allgather(NULL, t, t));
    assert_null(nb_barrier(NULL));
    assert_int_equal(nb_work_wait(NULL), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_work_finish(NULL), NB_NULL_ARGUMENT);
    nb_work_free(NULL);
    nb_process_group_free(NULL);
    nb_ddp_free(NULL);
    assert_int_equal(nb_process_group_rank(NULL), -1);
    assert_int_equal(nb_process_group_size(NULL), -1);
    assert_null(nb_ddp_new(NULL, NULL, (nb_ddp_opts){0}));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_process_group *pg = pg1();
    if (pg) {
        nb_clear_error();
        assert_null(nb_allreduce(pg, NULL, NB_REDUCE_OP_SUM));
        NB_ASSERT_ERROR_HAS("tensor is NULL");
        nb_clear_error();
        assert_null(nb_allgather(pg, t, NULL));
        NB_ASSERT_ERROR_HAS("out is NULL");
        /* A failed op's NULL keeps the first error. */
        nb_clear_error();
        assert_null(nb_allreduce(pg, nb_view(t, NB_SHAPE(2, 2)), NB_REDUCE_OP_SUM));
        assert_int_not_equal(nb_last_status(), NB_NULL_ARGUMENT);
    }
    nb_release(t);
}

static void a_world_of_one_reduces_to_itself(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    assert_int_equal(nb_process_group_rank(pg), 0);
    assert_int_equal(nb_process_group_size(pg), 1);
    assert_string_equal(nb_process_group_backend(pg), "mpi");
    float v[6] = {1, 2, 3, 4, 5, 6};
    nb_tensor *t = nb_from_data(v, NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *ref = nb_clone(t);
    int64_t before = nb_tensor_version(t);
    nb_work *w = nb_allreduce(pg, t, NB_REDUCE_OP_AVG);
    assert_non_null(w);
    NB_ASSERT_OK(nb_work_wait(w));
    NB_ASSERT_OK(nb_work_wait(w)); /* a second wait returns the same status */
    nb_work_free(w);
    assert_true(nb_equal(t, ref));
    assert_true(nb_tensor_version(t) > before); /* written behind autograd's back: bumped */
    nb_tensor *out = nb_zeros(NB_SHAPE(1, 2, 3), (nb_opts){0});
    NB_ASSERT_OK(nb_work_finish(nb_allgather(pg, t, out)));
    nb_tensor *flat = nb_reshape(out, NB_SHAPE(2, 3));
    assert_true(nb_equal(flat, ref));
    NB_ASSERT_OK(nb_work_finish(nb_broadcast(pg, t, 0)));
    NB_ASSERT_OK(nb_work_finish(nb_barrier(pg)));
    nb_release(flat);
    nb_release(out);
    nb_release(ref);
    nb_release(t);
}

static void freeing_a_group_finishes_its_work_first(void **state)
{
    (void)state;
    nb_process_group *g = group1(); /* a second group of its own: MPI is already started */
    if (!g)
        skip();
    nb_tensor *t = nb_full(NB_SHAPE(1000), 2, (nb_opts){0});
    nb_work *w = nb_allreduce(g, t, NB_REDUCE_OP_AVG);
    assert_non_null(w);
    nb_process_group_free(g);
    NB_ASSERT_OK(nb_work_wait(w));
    nb_work_free(w);
    double v;
    nb_tensor *m = nb_amax(t, NULL, 0, false);
    NB_ASSERT_OK(nb_item(m, &v));
    assert_true(v == 2.0);
    nb_release(m);
    nb_release(t);
}

static void collective_input_errors_name_what_was_given(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    nb_tensor *i = nb_ones(NB_SHAPE(4), (nb_opts){.dtype = NB_DTYPE_I64});
    nb_tensor *f = nb_ones(NB_SHAPE(4), (nb_opts){0});
    nb_tensor *f3 = nb_ones(NB_SHAPE(3), (nb_opts){0});
    assert_null(nb_allreduce(pg, i, NB_REDUCE_OP_AVG));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("int64");
    assert_null(nb_allreduce(pg, f, (nb_reduce_op)9));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    assert_null(nb_broadcast(pg, f, 1));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    NB_ASSERT_ERROR_HAS("root 1 out of range: world size 1");
    assert_null(nb_allgather(pg, f, f3));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("[3]");
    assert_null(nb_allgather(pg, f, i));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    if (nb_device_count("opencl") > 0) {
        nb_tensor *g = nb_ones(NB_SHAPE(4), (nb_opts){.device = "opencl:0"});
        assert_null(nb_allgather(pg, f, g));
        assert_int_equal(nb_last_status(), NB_DEVICE_MISMATCH);
        NB_ASSERT_ERROR_HAS("opencl:0");
        nb_release(g);
    }
    nb_clear_error();
    nb_release(i);
    nb_release(f);
    nb_release(f3);
}

static void every_dtype_and_empty_and_strided_tensors_go_through(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    nb_dtype dts[] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_BOOL,
                      NB_DTYPE_U8};
    for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++) {
        nb_tensor *t = nb_arange(0, 6, 1, (nb_opts){.dtype = dts[k]});
        if (dts[k] == NB_DTYPE_BOOL) {
            nb_release(t);
            t = nb_ones(NB_SHAPE(6), (nb_opts){.dtype = NB_DTYPE_BOOL});
        }
        nb_tensor *ref = nb_clone(t);
        NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_MAX)));
        assert_true(nb_equal(t, ref));
        nb_release(ref);
        nb_release(t);
    }
    nb_tensor *e = nb_zeros(NB_SHAPE(0, 3), (nb_opts){0});
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, e, NB_REDUCE_OP_SUM)));
    nb_release(e);
    nb_tensor *base = nb_arange(0, 12, 1, (nb_opts){0});
    nb_tensor *m = nb_reshape(base, NB_SHAPE(3, 4));
    nb_tensor *tr = nb_transpose(m, 0, 1); /* not contiguous: staged and copied back */
    NB_ASSERT_OK(nb_work_finish(nb_allreduce(pg, tr, NB_REDUCE_OP_SUM)));
    nb_tensor *ref = nb_arange(0, 12, 1, (nb_opts){0});
    assert_true(nb_equal(base, ref));
    nb_release(ref);
    nb_release(tr);
    nb_release(m);
    nb_release(base);
}

static int post_calls;
static nb_status count_post(nb_tensor *t, void *ctx)
{
    (void)ctx;
    nb_tensor *g = nb_tensor_grad(t);
    double v = 0;
    nb_status st = g ? nb_item(g, &v) : NB_AUTOGRAD;
    nb_release(g);
    post_calls++;
    return st == NB_OK && v == 5.0 ? NB_OK : NB_AUTOGRAD; /* the whole gradient, once */
}

static nb_status fail_post(nb_tensor *t, void *ctx)
{
    (void)t;
    (void)ctx;
    return NB_DEVICE_ERROR;
}

static void post_accumulate_hook_sees_the_whole_gradient_once(void **state)
{
    (void)state;
    nb_tensor *x = nb_scalar(2, (nb_opts){.requires_grad = true});
    NB_ASSERT_OK(nb_tensor_register_post_accumulate_grad_hook(x, count_post, NULL));
    nb_tensor *y = nb_mul(x, x), *z = nb_add(y, x); /* dz/dx = 2x + 1 = 5, through two uses */
    post_calls = 0;
    NB_ASSERT_OK(nb_backward(z, NULL, (nb_backward_opts){0}));
    assert_int_equal(post_calls, 1);
    nb_release(z);
    nb_release(y);

    NB_ASSERT_OK(nb_tensor_remove_post_accumulate_grad_hook(x, count_post, NULL));
    assert_int_equal(nb_tensor_remove_post_accumulate_grad_hook(x, count_post, NULL),
                     NB_INVALID_ARGUMENT);
    NB_ASSERT_OK(nb_tensor_register_post_accumulate_grad_hook(x, fail_post, NULL));
    y = nb_mul(x, x);
    nb_clear_error();
    assert_int_equal(nb_backward(y, NULL, (nb_backward_opts){0}), NB_DEVICE_ERROR);
    NB_ASSERT_ERROR_HAS("hook");
    nb_release(y);
    y = nb_mul(x, x);
    assert_int_equal(nb_tensor_register_post_accumulate_grad_hook(y, count_post, NULL),
                     NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("leaf");
    assert_int_equal(nb_tensor_register_post_accumulate_grad_hook(NULL, count_post, NULL),
                     NB_NULL_ARGUMENT);
    nb_release(y);
    nb_release(x); /* frees the remaining hook */
}

static void sampler_shards_and_reshuffles_the_same_way_on_every_rank(void **state)
{
    (void)state;
    enum { N = 10, W = 3 };
    int64_t per = nb_distributed_sampler_count(N, W);
    assert_int_equal(per, 4);
    int64_t idx[W][4], again[4], other[W][4];
    int seen[N] = {0};
    for (int r = 0; r < W; r++) {
        NB_ASSERT_OK(nb_distributed_sampler_indices(N, r, W, 7, 0, true, idx[r], per));
        NB_ASSERT_OK(nb_distributed_sampler_indices(N, r, W, 7, 1, true, other[r], per));
        for (int k = 0; k < per; k++) {
            assert_in_range(idx[r][k], 0, N - 1);
            seen[idx[r][k]]++;
        }
    }
    for (int k = 0; k < N; k++)
        assert_true(seen[k] >= 1); /* every sample, two of them twice (padding to 12) */
    NB_ASSERT_OK(nb_distributed_sampler_indices(N, 1, W, 7, 0, true, again, per));
    assert_memory_equal(again, idx[1], sizeof again);
    assert_memory_not_equal(other, idx, sizeof idx); /* a new epoch, a new order */
    NB_ASSERT_OK(nb_distributed_sampler_indices(N, 2, W, 7, 0, false, again, per));
    int64_t plain[4] = {2, 5, 8, 1};
    assert_memory_equal(again, plain, sizeof plain);
    assert_int_equal(nb_distributed_sampler_indices(N, 3, W, 7, 0, true, again, per),
                     NB_INDEX_OUT_OF_RANGE);
    assert_int_equal(nb_distributed_sampler_indices(N, 0, W, 7, 0, true, again, 3),
                     NB_SHAPE_MISMATCH);
    assert_int_equal(nb_distributed_sampler_count(-1, 2), -1);
    assert_int_equal(nb_distributed_sampler_indices(N, 0, W, 7, 0, true, NULL, per),
                     NB_NULL_ARGUMENT);
    assert_int_equal(nb_distributed_sampler_count(0, 2), 0);
}

static nb_tensor *two_layer(nb_module *self, const nb_tensor *x)
{
    nb_tensor *h = nb_module_forward(nb_module_child(self, "a"), x);
    nb_tensor *y = nb_module_forward(nb_module_child(self, "b"), h);
    nb_release(h);
    return y;
}

static nb_tensor *first_layer_only(nb_module *self, const nb_tensor *x)
{
    return nb_module_forward(nb_module_child(self, "a"), x);
}

static nb_module *net(nb_forward_fn fwd)
{
    nb_manual_seed(3);
    nb_module *m = nb_module_new("Net", fwd, NULL);
    nb_module_add(m, "a", nb_linear_new(4, 5, true, (nb_opts){0}));
    nb_module_add(m, "b", nb_linear_new(5, 2, true, (nb_opts){0}));
    return m;
}

static void ddp_of_one_rank_gives_plain_gradients(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    nb_module *plain = net(two_layer), *m = net(two_layer);
    /* A tiny bucket cap puts every parameter in its own bucket: four allreduces in flight. */
    nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.bucket_mb = 1e-6});
    assert_non_null(d);
    assert_int_equal(nb_ddp_bucket_count(d), 4);
    nb_tensor *x = nb_randn(NB_SHAPE(3, 4), (nb_opts){0});
    for (int step = 0; step < 2; step++) {
        nb_tensor *y0 = nb_module_forward(plain, x), *y1 = nb_ddp_forward(d, x);
        nb_tensor *l0 = nb_sum(y0, NULL, 0, false), *l1 = nb_sum(y1, NULL, 0, false);
        NB_ASSERT_OK(nb_backward(l0, NULL, (nb_backward_opts){0}));
        NB_ASSERT_OK(nb_backward(l1, NULL, (nb_backward_opts){0}));
        NB_ASSERT_OK(nb_ddp_finish(d));
        for (int32_t k = 0; k < nb_module_parameter_count(m); k++) {
            nb_tensor *g0 = nb_tensor_grad(nb_module_parameter(plain, k));
            nb_tensor *g1 = nb_tensor_grad(nb_module_parameter(m, k));
            assert_true(nb_allclose(g0, g1, 1e-6, 1e-6));
            nb_release(g0);
            nb_release(g1);
        }
        nb_release(l0);
        nb_release(l1);
        nb_release(y0);
        nb_release(y1);
    }
    /* Two steps of 4*5+5+5*2+2 float32 gradients. */
    assert_int_equal(nb_ddp_bytes_reduced(d), 2 * 37 * 4);
    nb_release(x);
    nb_ddp_free(d);
    nb_module_free(m);
    nb_module_free(plain);
}

static void ddp_reports_a_parameter_backward_never_reached(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    nb_module *m = net(first_layer_only);
    nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){0});
    assert_non_null(d);
    nb_tensor *x = nb_randn(NB_SHAPE(3, 4), (nb_opts){0});
    nb_tensor *y = nb_ddp_forward(d, x), *l = nb_sum(y, NULL, 0, false);
    NB_ASSERT_OK(nb_backward(l, NULL, (nb_backward_opts){0}));
    assert_int_equal(nb_ddp_set_sync(d, false), NB_STATE); /* half reduced */
    NB_ASSERT_ERROR_HAS("nb_ddp_finish");
    assert_int_equal(nb_ddp_set_sync(NULL, false), NB_NULL_ARGUMENT);
    assert_int_equal(nb_ddp_finish(d), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("did not receive grad for rank 0: 'b.weight', 'b.bias'");
    NB_ASSERT_ERROR_HAS("find_unused_parameters");
    NB_ASSERT_OK(nb_ddp_finish(d)); /* reset: the next iteration starts clean */
    assert_null(nb_ddp_new(m, pg, (nb_ddp_opts){.bucket_mb = -1}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_release(l);
    nb_release(y);
    nb_release(x);
    nb_ddp_free(d);
    nb_module_free(m);
}

/* Bucket layout of a model of 2 MiB + 256 KiB + 1 MiB of weights: by default the first bucket
 * closes once it holds 1 MiB (the last layer: bias, then weight), the rest share a 25 MiB one;
 * an explicit bucket_mb caps the first bucket too (PyTorch 2.x), here in three buckets. */
static void ddp_first_bucket_is_1_mib_at_the_default_size(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    nb_module *m = nb_module_new("Net", two_layer, NULL);
    nb_module_add(m, "l1", nb_linear_new(1024, 512, true, (nb_opts){0}));
    nb_module_add(m, "l2", nb_linear_new(256, 256, true, (nb_opts){0}));
    nb_module_add(m, "l3", nb_linear_new(512, 512, true, (nb_opts){0}));
    const struct {
        double mb;
        int32_t n;
        int32_t sizes[3], idx[6];
    } cases[] = {
        {0, 2, {2, 4}, {5, 4, 3, 2, 1, 0}},
        {25, 1, {6}, {5, 4, 3, 2, 1, 0}},
        {0.25, 3, {2, 2, 2}, {5, 4, 3, 2, 1, 0}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.bucket_mb = cases[c].mb});
        assert_non_null(d);
        assert_int_equal(nb_ddp_bucket_count(d), cases[c].n);
        int32_t at = 0;
        for (int32_t b = 0; b < cases[c].n; b++) {
            int32_t idx[6] = {-1, -1, -1, -1, -1, -1};
            assert_int_equal(nb_ddp_bucket_params(d, b, idx, 6), cases[c].sizes[b]);
            assert_memory_equal(idx, &cases[c].idx[at], (size_t)cases[c].sizes[b] * sizeof *idx);
            at += cases[c].sizes[b];
        }
        assert_int_equal(at, 6);
        /* cap 1 reports the count and writes one index only. */
        int32_t one[2] = {-1, -1};
        assert_int_equal(nb_ddp_bucket_params(d, 0, one, 1), cases[c].sizes[0]);
        assert_int_equal(one[0], 5);
        assert_int_equal(one[1], -1);
        assert_int_equal(nb_ddp_bucket_params(d, 0, NULL, 0), cases[c].sizes[0]);
        assert_int_equal(nb_ddp_bucket_params(d, cases[c].n, one, 2), -1);
        NB_ASSERT_ERROR_HAS("expected a bucket in [0, ");
        assert_int_equal(nb_ddp_bucket_params(d, -1, one, 2), -1);
        assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
        assert_int_equal(nb_ddp_bucket_params(d, 0, one, -1), -1);
        assert_int_equal(nb_ddp_bucket_params(d, 0, NULL, 2), -1);
        assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
        nb_ddp_free(d);
    }
    assert_int_equal(nb_ddp_bucket_params(NULL, 0, NULL, 0), -1);
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_module_free(m);
}

static void assert_grads_close(nb_module *a, nb_module *b)
{
    for (int32_t k = 0; k < nb_module_parameter_count(a); k++) {
        nb_tensor *g0 = nb_tensor_grad(nb_module_parameter(a, k));
        nb_tensor *g1 = nb_tensor_grad(nb_module_parameter(b, k));
        assert_non_null(g0);
        assert_non_null(g1);
        assert_true(nb_allclose(g0, g1, 1e-6, 1e-6));
        nb_release(g0);
        nb_release(g1);
    }
}

static bool grads_share_storage(nb_module *m, int32_t i, int32_t j)
{
    nb_tensor *a = nb_tensor_grad(nb_module_parameter(m, i));
    nb_tensor *b = nb_tensor_grad(nb_module_parameter(m, j));
    bool same = a && b && nb_tensor_shares_storage(a, b);
    nb_release(a);
    nb_release(b);
    return same;
}

/* gradient_as_bucket_view: .grad of every parameter is a view of the one bucket (so two
 * parameters' gradients share storage), right after a step whose .grad started as NULL and
 * after a step that accumulates into the view itself; nb_ddp_free leaves tensors of their own. */
static void ddp_gradients_as_bucket_views(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    for (int view = 0; view < 2; view++) {
        nb_module *plain = net(two_layer), *m = net(two_layer);
        nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.gradient_as_bucket_view = view});
        assert_non_null(d);
        nb_tensor *x = nb_randn(NB_SHAPE(3, 4), (nb_opts){0});
        for (int step = 0; step < 3; step++) {
            if (step < 2) { /* the third accumulates on top of the second */
                NB_ASSERT_OK(nb_module_zero_grad(plain));
                NB_ASSERT_OK(nb_module_zero_grad(m));
            }
            nb_tensor *y0 = nb_module_forward(plain, x), *y1 = nb_ddp_forward(d, x);
            nb_tensor *l0 = nb_sum(y0, NULL, 0, false), *l1 = nb_sum(y1, NULL, 0, false);
            NB_ASSERT_OK(nb_backward(l0, NULL, (nb_backward_opts){0}));
            NB_ASSERT_OK(nb_backward(l1, NULL, (nb_backward_opts){0}));
            NB_ASSERT_OK(nb_ddp_finish(d));
            assert_grads_close(plain, m);
            assert_int_equal(grads_share_storage(m, 0, 3), view);
            nb_release(l0);
            nb_release(l1);
            nb_release(y0);
            nb_release(y1);
        }
        nb_ddp_free(d);
        assert_false(grads_share_storage(m, 0, 3));
        assert_grads_close(plain, m);
        nb_release(x);
        nb_module_free(m);
        nb_module_free(plain);
    }
}

/* find_unused_parameters on a world of one: 'b' is never used, so it is ready when backward
 * starts, nobody used it, and its .grad stays NULL; 'a' gets its plain gradient. */
static void ddp_find_unused_parameters_skips_what_the_graph_does_not_reach(void **state)
{
    (void)state;
    nb_process_group *pg = pg1();
    if (!pg)
        skip();
    nb_module *plain = net(first_layer_only), *m = net(first_layer_only);
    nb_ddp *d = nb_ddp_new(m, pg, (nb_ddp_opts){.find_unused_parameters = true, .bucket_mb = 1e-6});
    assert_non_null(d);
    nb_tensor *x = nb_randn(NB_SHAPE(3, 4), (nb_opts){0});
    for (int step = 0; step < 2; step++) {
        nb_tensor *y0 = nb_module_forward(plain, x), *y1 = nb_ddp_forward(d, x);
        nb_tensor *l0 = nb_sum(y0, NULL, 0, false), *l1 = nb_sum(y1, NULL, 0, false);
        NB_ASSERT_OK(nb_module_zero_grad(plain));
        NB_ASSERT_OK(nb_module_zero_grad(m));
        NB_ASSERT_OK(nb_backward(l0, NULL, (nb_backward_opts){0}));
        NB_ASSERT_OK(nb_backward(l1, NULL, (nb_backward_opts){0}));
        NB_ASSERT_OK(nb_ddp_finish(d));
        for (int32_t k = 0; k < 4; k++) {
            nb_tensor *g0 = nb_tensor_grad(nb_module_parameter(plain, k));
            nb_tensor *g1 = nb_tensor_grad(nb_module_parameter(m, k));
            if (k < 2)
                assert_true(g0 && g1 && nb_allclose(g0, g1, 1e-6, 1e-6));
            else
                assert_true(!g0 && !g1); /* b.*: untouched */
            nb_release(g0);
            nb_release(g1);
        }
        nb_release(l0);
        nb_release(l1);
        nb_release(y0);
        nb_release(y1);
    }
    /* All four buckets went out each step: b's with zeros. */
    assert_int_equal(nb_ddp_bytes_reduced(d), 2 * 37 * 4);
    nb_release(x);
    nb_ddp_free(d);
    nb_module_free(m);
    nb_module_free(plain);
}

int main(void)
{
    /* The test backends (tests/dist/fake_collective.c) live in a folder of their own. */
    char path[4096];
    const char *old = getenv("NABLA_PLUGIN_PATH");
    snprintf(path, sizeof path, "%s%s%s", NB_FAKE_BACKEND_DIR, old ? ":" : "", old ? old : "");
    setenv("NABLA_PLUGIN_PATH", path, 1);
    const struct CMUnitTest tests[] = {
        NB_TEST(no_backend_outside_mpirun_is_an_error),
        NB_TEST(unknown_backend_names_the_file_it_looked_for),
        NB_TEST(a_backend_that_fails_to_load_keeps_its_reason),
        NB_TEST(a_backend_refuses_tensors_it_cannot_reach_naming_the_devices),
        NB_TEST(a_backend_of_another_abi_major_is_skipped_with_the_reason),
        NB_TEST(the_unique_id_goes_through_the_init_file_or_a_bootstrap_group),
        NB_TEST(bad_options_are_refused),
        NB_TEST(null_arguments_are_errors_not_crashes),
        NB_TEST(a_world_of_one_reduces_to_itself),
        NB_TEST(freeing_a_group_finishes_its_work_first),
        NB_TEST(collective_input_errors_name_what_was_given),
        NB_TEST(every_dtype_and_empty_and_strided_tensors_go_through),
        NB_TEST(post_accumulate_hook_sees_the_whole_gradient_once),
        NB_TEST(sampler_shards_and_reshuffles_the_same_way_on_every_rank),
        NB_TEST(ddp_of_one_rank_gives_plain_gradients),
        NB_TEST(ddp_reports_a_parameter_backward_never_reached),
        NB_TEST(ddp_first_bucket_is_1_mib_at_the_default_size),
        NB_TEST(ddp_gradients_as_bucket_views),
        NB_TEST(ddp_find_unused_parameters_skips_what_the_graph_does_not_reach),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    nb_process_group_free(shared_pg);
    return failed || nb_shutdown() != NB_OK;
}
