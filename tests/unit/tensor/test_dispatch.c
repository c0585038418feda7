/* test_dispatch.c - tests core/tensor/dispatch.c: an op without a kernel for its dtype is an error
 * naming op, dtype and device; nbi_has_kernel (the core's view) agrees with
 * nb_device_has_kernel (the application's) for every op and dtype; NABLA_NO_TIER2 hides the
 * fused kernels from the core only; nbi_run checks what it is given. Uses the "mini" test
 * plugin (fill and copy for float32 only) when tests/badplugins was built. */
#include "nb_test.h"

#include "nabla_internal.h" /* nbi_has_kernel, nbi_run */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char mini_path[1200];

static bool load_mini(void)
{
    if (!mini_path[0] || access(mini_path, R_OK) != 0)
        return false;
    return nb_plugin_load(mini_path) == NB_OK;
}

static void missing_dtype_kernel_names_op_dtype_and_device(void **state)
{
    (void)state;
    /* the cpu plugin has no bool arithmetic (neg of a bool is an error in torch too) */
    if (nb_device_has_kernel("cpu", "neg", NB_DTYPE_BOOL))
        skip();
    nb_tensor *b = nb_ones(NB_SHAPE(3), (nb_opts){NB_DTYPE_BOOL});
    assert_null(nb_neg(b));
    assert_int_equal(nb_last_status(), NB_NOT_IMPLEMENTED);
    NB_ASSERT_ERROR_HAS("neg: no bool kernel on cpu");
    /* on the cpu there is nothing to fall back to: no hint about NABLA_CPU_FALLBACK */
    assert_null(strstr(nb_last_error(), "NABLA_CPU_FALLBACK"));
    nb_release(b);
}

static void missing_kernel_through_nbi_run(void **state)
{
    (void)state;
    if (nb_device_has_kernel("cpu", "random_uniform", NB_DTYPE_I32))
        skip();
    nb_tensor *t = nb_zeros(NB_SHAPE(4), (nb_opts){NB_DTYPE_I32});
    double f[2] = {0, 1};
    int64_t i[2] = {1, 0};
    assert_int_equal(nbi_run("random_uniform", t, NULL, 0, f, 2, i, 2), NB_NOT_IMPLEMENTED);
    NB_ASSERT_ERROR_HAS("random_uniform: no int32 kernel on cpu");
    nb_release(t);
}

static void missing_kernel_on_another_device_suggests_the_fallback(void **state)
{
    (void)state;
    if (!load_mini())
        skip();
    nb_tensor *t = nb_ones(NB_SHAPE(3), (nb_opts){.device = "mini:1"}); /* fill f32: there */
    assert_non_null(t);
    nb_tensor *d = nb_ones(NB_SHAPE(3), (nb_opts){NB_DTYPE_F64, .device = "mini:1"});
    assert_null(d);
    assert_int_equal(nb_last_status(), NB_NOT_IMPLEMENTED);
    NB_ASSERT_ERROR_HAS("fill: no float64 kernel on mini:1");
    NB_ASSERT_ERROR_HAS("NABLA_CPU_FALLBACK=1");
    nb_clear_error();
    nb_tensor *e = nb_exp(t); /* no exp at all on mini */
    assert_null(e);
    NB_ASSERT_ERROR_HAS("exp: no float32 kernel on mini:1");
    nb_release(t);
}

/* Every (op, dtype) pair: the core's internal query and the public one agree. */
static void kernel_queries_agree(const char *device)
{
    nb_dtype dts[] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32, NB_DTYPE_I64,
                      NB_DTYPE_BOOL, NB_DTYPE_U8, NB_DTYPE_F16, NB_DTYPE_BF16};
    _Static_assert(sizeof dts / sizeof *dts == NB_DTYPE_COUNT, "every dtype");
    size_t native = 0;
    for (int k = 0; k < NB_DTYPE_COUNT; k++) {
        nb_tensor *like = nb_empty(NB_SHAPE(1), (nb_opts){dts[k], device});
        assert_non_null(like);
        for (size_t op = 0; op < nb_op_count(); op++) {
            const char *name = nb_op_name(op);
            bool pub = nb_device_has_kernel(device, name, dts[k]);
            bool in = nbi_has_kernel(like, name);
            if (pub != in)
                fail_msg("%s on %s for %s: nb_device_has_kernel %d, nbi_has_kernel %d", name,
                         device, nb_dtype_name(dts[k]), pub, in);
            native += pub;
        }
        assert_false(nbi_has_kernel(like, "no_such_op"));
        nb_release(like);
    }
    assert_true(native > 0);
    assert_false(nbi_has_kernel(NULL, "fill"));
}

static void has_kernel_queries_agree_on_cpu(void **state)
{
    (void)state;
    kernel_queries_agree("cpu");
    /* tier 1 for float32 is what every plugin must have */
    const char *tier1[] = {"fill", "copy", "arange", "add", "mul", "sum", "max", "argmax",
                           "matmul", "gather", "scatter_add", "where", "random_uniform",
                           "random_normal", "exp", "relu", "clamp", "eq"};
    for (size_t k = 0; k < sizeof tier1 / sizeof *tier1; k++)
        if (!nb_device_has_kernel("cpu", tier1[k], NB_DTYPE_F32))
            fail_msg("cpu lacks tier-1 kernel %s for float32", tier1[k]);
}

static void has_kernel_queries_agree_on_a_small_plugin(void **state)
{
    (void)state;
    if (!load_mini())
        skip();
    kernel_queries_agree("mini");
    assert_true(nb_device_has_kernel("mini:1", "fill", NB_DTYPE_F32));
    assert_false(nb_device_has_kernel("mini:1", "fill", NB_DTYPE_F64));
    assert_false(nb_device_has_kernel("mini:1", "add", NB_DTYPE_F32));
}

/* NABLA_NO_TIER2 is read once per thread: a fresh thread sees the variable set here. */
static void *tier2_seen_from_thread(void *arg)
{
    return (void *)(intptr_t)nbi_has_kernel((const nb_tensor *)arg, "softmax");
}

static void no_tier2_hides_fused_kernels_from_the_core_only(void **state)
{
    (void)state;
    if (!nb_device_has_kernel("cpu", "softmax", NB_DTYPE_F32))
        skip();
    nb_tensor *t = nb_zeros(NB_SHAPE(2), (nb_opts){0});
    assert_true(nbi_has_kernel(t, "softmax"));
    setenv("NABLA_NO_TIER2", "1", 1);
    pthread_t th;
    void *seen = (void *)1;
    assert_int_equal(pthread_create(&th, NULL, tier2_seen_from_thread, t), 0);
    assert_int_equal(pthread_join(th, &seen), 0);
    unsetenv("NABLA_NO_TIER2");
    assert_null(seen);                                           /* the core composes it */
    assert_true(nb_device_has_kernel("cpu", "softmax", NB_DTYPE_F32)); /* the plugin has it */
    assert_true(nbi_has_kernel(t, "softmax"));                   /* this thread read it unset */
    nb_release(t);
}

static void nbi_run_checks_its_arguments(void **state)
{
    (void)state;
    nb_tensor *t = nb_zeros(NB_SHAPE(3), (nb_opts){0});
    int64_t v0 = nb_tensor_version(t);
    double f[1] = {2.5};
    NB_ASSERT_OK(nbi_run("fill", t, NULL, 0, f, 1, NULL, 0));
    assert_true(nb_tensor_version(t) > v0); /* a write is a new version */
    double back[3];
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, back, sizeof back));
    assert_true(back[0] == 2.5 && back[2] == 2.5);
    assert_int_equal(nbi_run("frobnicate", t, NULL, 0, NULL, 0, NULL, 0), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("unknown op 'frobnicate'");
    nb_clear_error();
    assert_int_equal(nbi_run(NULL, t, NULL, 0, NULL, 0, NULL, 0), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nbi_run("fill", NULL, NULL, 0, NULL, 0, NULL, 0), NB_NULL_ARGUMENT);
    nb_clear_error();
    nb_tensor *many[9] = {t, t, t, t, t, t, t, t, t};
    assert_int_equal(nbi_run("add", t, many, 9, NULL, 0, NULL, 0), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_tensor *withnull[2] = {t, NULL};
    assert_int_equal(nbi_run("add", t, withnull, 2, NULL, 0, NULL, 0), NB_DEVICE_MISMATCH);
    nb_clear_error();
    if (load_mini()) {
        nb_tensor *m = nb_zeros(NB_SHAPE(3), (nb_opts){.device = "mini"});
        nb_tensor *in[1] = {m};
        assert_int_equal(nbi_run("copy", t, in, 1, NULL, 0, NULL, 0), NB_DEVICE_MISMATCH);
        nb_release(m);
    }
    nb_release(d);
    nb_release(t);
}

static void kernel_errors_reach_the_caller(void **state)
{
    (void)state;
    /* a gather index past the end is found by the kernel, which reports it */
    nb_tensor *t = nb_zeros(NB_SHAPE(2, 3), (nb_opts){0});
    int64_t iv[2] = {0, 3};
    nb_tensor *idx = nb_from_data(iv, NB_SHAPE(1, 2), (nb_opts){NB_DTYPE_I64});
    assert_null(nb_gather(t, 1, idx));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    assert_true(strlen(nb_last_error()) > 0);
    nb_release(idx);
    nb_release(t);
}

int main(void)
{
    unsetenv("NABLA_NO_TIER2");
    const char *dir = getenv("NABLA_BADPLUGIN_DIR");
#ifdef BADPLUGIN_DIR
    if (!dir || !*dir)
        dir = BADPLUGIN_DIR;
#endif
    if (dir && *dir)
        snprintf(mini_path, sizeof mini_path, "%s/badplugin_mini.so", dir);
    const struct CMUnitTest tests[] = {
        NB_TEST(missing_dtype_kernel_names_op_dtype_and_device),
        NB_TEST(missing_kernel_through_nbi_run),
        NB_TEST(missing_kernel_on_another_device_suggests_the_fallback),
        NB_TEST(has_kernel_queries_agree_on_cpu),
        NB_TEST(has_kernel_queries_agree_on_a_small_plugin),
        NB_TEST(no_tier2_hides_fused_kernels_from_the_core_only),
        NB_TEST(nbi_run_checks_its_arguments),
        NB_TEST(kernel_errors_reach_the_caller),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
