/* test_autocast.c - tests core/tensor/autocast.c: regions (nesting, enabled=False, per thread),
 * the errors at nb_autocast_begin, and which ops run in 16-bit or float32 inside a region, with
 * float32 master weights that get float32 gradients. */
#include "nb_test.h"

#include <pthread.h>

static void regions_nest_and_an_end_without_begin_is_an_error(void **state)
{
    (void)state;
    assert_false(nb_autocast_is_enabled("cpu"));
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_BF16); /* torch's default on cpu */
    NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
    assert_true(nb_autocast_is_enabled("cpu"));
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_BF16);
    NB_ASSERT_OK(nb_autocast_begin("cpu", NB_DTYPE_F16)); /* a nested region switches dtype */
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_F16);
    NB_ASSERT_OK(nb_autocast_begin_ex("cpu", 0, false)); /* enabled=False */
    assert_false(nb_autocast_is_enabled("cpu"));
    NB_ASSERT_OK(nb_autocast_end());
    assert_true(nb_autocast_is_enabled("cpu"));
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_F16);
    NB_ASSERT_OK(nb_autocast_end());
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_BF16);
    NB_ASSERT_OK(nb_autocast_end());
    assert_false(nb_autocast_is_enabled("cpu"));
    nb_clear_error();
    assert_int_equal(nb_autocast_end(), NB_STATE);
    NB_ASSERT_ERROR_HAS("without a matching nb_autocast_begin");
    /* "cpu:0" and NULL (the default device, cpu here) name the same type */
    NB_ASSERT_OK(nb_autocast_begin(NULL, NB_DTYPE_BF16));
    assert_true(nb_autocast_is_enabled("cpu:0"));
    NB_ASSERT_OK(nb_autocast_end());
    /* nesting is bounded, not unbounded memory */
    int opened = 0;
    while (nb_autocast_begin("cpu", 0) == NB_OK && opened < 1000)
        opened++;
    assert_true(opened >= 16 && opened < 1000);
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("nested deeper");
    while (opened-- > 0)
        NB_ASSERT_OK(nb_autocast_end());
    assert_false(nb_autocast_is_enabled("cpu"));
}

static void a_dtype_or_device_that_cannot_autocast_fails_at_begin(void **state)
{
    (void)state;
    const struct {
        nb_dtype dtype;
        const char *needle;
    } bad[] = {
        {NB_DTYPE_F64, "float64 is not a lower-precision dtype"},
        {NB_DTYPE_I32, "int32 is not a lower-precision dtype"},
        {(nb_dtype)99, "invalid dtype 99"},
        {(nb_dtype)-1, "invalid dtype -1"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        nb_clear_error();
        assert_int_equal(nb_autocast_begin("cpu", bad[k].dtype), NB_DTYPE_UNSUPPORTED);
        NB_ASSERT_ERROR_HAS(bad[k].needle);
        assert_false(nb_autocast_is_enabled("cpu"));
    }
    nb_clear_error();
    assert_int_equal(nb_autocast_begin("cdua", NB_DTYPE_F16), NB_UNKNOWN_DEVICE);
    NB_ASSERT_ERROR_HAS("cdua");
    assert_int_equal(nb_autocast_end(), NB_STATE); /* nothing was opened */
    /* a disabled region does not check the dtype, as torch.autocast(enabled=False) */
    NB_ASSERT_OK(nb_autocast_begin_ex("cpu", NB_DTYPE_F64, false));
    NB_ASSERT_OK(nb_autocast_end());
    /* opencl (PoCL) has no 16-bit matmul kernel: the error says so, where there is a device */
    nb_clear_error();
    if (nb_device_count("opencl") > 0) {
        assert_int_equal(nb_autocast_begin("opencl:0", 0), NB_DTYPE_UNSUPPORTED);
        NB_ASSERT_ERROR_HAS("opencl:0 has no float16 matmul kernel");
    }
    nb_clear_error();
}

static void *other_thread(void *arg)
{
    (void)arg;
    bool *seen = arg;
    *seen = nb_autocast_is_enabled("cpu");
    return NULL;
}

static void regions_belong_to_their_thread(void **state)
{
    (void)state;
    NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
    bool seen = true;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, other_thread, &seen), 0);
    pthread_join(th, NULL);
    assert_false(seen);
    NB_ASSERT_OK(nb_autocast_end());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(regions_nest_and_an_end_without_begin_is_an_error),
        NB_TEST(a_dtype_or_device_that_cannot_autocast_fails_at_begin),
        NB_TEST(regions_belong_to_their_thread),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
