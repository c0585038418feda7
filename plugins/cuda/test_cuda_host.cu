// test_cuda_host.cu - the cuda plugin's host-side logic, run on any machine (no GPU, no driver):
// the conversion rule the kernels and the host-side scalar casts share, bool bytes, wrapping
// integer arithmetic, which devices a build's architectures run on, the words for a missing or
// old driver, the choice of reduction loop, and the plugin's kernel table (argv[1]: the plugin).
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cuda_common.cuh" // before cmocka.h, whose fail() macro would clash with nbcu::fail
#include "cuda_host.h"

extern "C" {
#include <cmocka.h>
}

using namespace nbcu;

// The issue's example: cpu (and PyTorch on x86) give u8 255 253 44 0; the GPU's saturating
// cvt.rzi.u32.f32 would give 0 0 44 0.
static void float_to_u8_truncates_then_wraps(void **state)
{
    (void)state;
    const float in[4] = {-1.0f, -3.75f, 300.0f, 3e9f};
    const uint8_t want[4] = {255, 253, 44, 0};
    for (int k = 0; k < 4; k++)
        assert_int_equal(convert<uint8_t>(in[k]), want[k]);
    assert_int_equal(convert<uint8_t>(255.9), 255);
    assert_int_equal(convert<uint8_t>(256.0), 0);
    assert_int_equal(convert<uint8_t>(-0.5), 0);
}

static void out_of_range_and_nan_go_through_int64_min(void **state)
{
    (void)state;
    assert_true(convert<int64_t>((double)NAN) == INT64_MIN);
    assert_true(convert<int64_t>(1e19) == INT64_MIN);
    assert_true(convert<int64_t>(-1e19) == INT64_MIN);
    assert_true(convert<int64_t>((double)INFINITY) == INT64_MIN);
    assert_true(convert<int64_t>(-9223372036854775808.0) == INT64_MIN);
    assert_true(convert<int64_t>(9223372036854774784.0) == 9223372036854774784LL);
    assert_true(convert<int64_t>(-2.9) == -2);
    // INT64_MIN wraps to 0 in every narrower integer.
    assert_int_equal(convert<int32_t>((float)NAN), 0);
    assert_int_equal(convert<uint8_t>((double)NAN), 0);
    assert_int_equal(convert<int32_t>(1e30), 0);
    // In int64's range but not int32's: wraps modulo 2^32.
    assert_int_equal(convert<int32_t>(3e9), (int32_t)(3000000000LL - 4294967296LL));
    assert_int_equal(convert<int32_t>(-2147483649.0), 2147483647);
    assert_int_equal(convert<int32_t>(4294967296.0 + 5.0), 5);
}

static void integer_conversions_wrap(void **state)
{
    (void)state;
    assert_int_equal(convert<uint8_t>((int32_t)-1), 255);
    assert_int_equal(convert<uint8_t>((int64_t)300), 44);
    assert_int_equal(convert<int32_t>((int64_t)0x1ffffffffLL), -1);
    assert_int_equal(convert<int32_t>((uint8_t)200), 200);
    assert_true(convert<double>((int64_t)INT64_MIN) == -9223372036854775808.0);
}

static void bool_is_any_nonzero_byte_and_converts_to_0_or_1(void **state)
{
    (void)state;
    assert_true(convert<bool>((double)NAN));
    assert_true(convert<bool>(0.25f));
    assert_false(convert<bool>(-0.0));
    assert_true(convert<bool>((uint8_t)2));
    assert_false(convert<bool>((int64_t)0));
    // Bytes as nb_from_data may leave them: read through ld(), every non-zero byte is true and
    // converts to exactly 1 (not 255, not -1.0).
    const uint8_t bytes[4] = {0x00, 0x01, 0xff, 0x02};
    const bool *b = (const bool *)bytes;
    const float want[4] = {0, 1, 1, 1};
    for (int k = 0; k < 4; k++) {
        assert_true(convert<float>(ld(b, k)) == want[k]);
        assert_int_equal(convert<int32_t>(ld(b, k)), (int)want[k]);
        assert_int_equal(convert<uint8_t>(ld(b, k)), (int)want[k]);
    }
    // xor of two true bools held as different bytes is false; equality is true.
    assert_false(ld(b, 1) != ld(b, 2));
    assert_true(ld(b, 2) == ld(b, 3));
}

static void integer_arithmetic_wraps(void **state)
{
    (void)state;
    assert_int_equal(w_add<int32_t>(INT32_MAX, 1), INT32_MIN);
    assert_int_equal(w_sub<int32_t>(INT32_MIN, 1), INT32_MAX);
    assert_int_equal(w_mul<int32_t>(65536, 65536), 0);
    assert_true(w_add<int64_t>(INT64_MAX, 1) == INT64_MIN);
    assert_true(w_mul<int64_t>(INT64_MIN, -1) == INT64_MIN);
    assert_int_equal(w_add<uint8_t>(200, 100), 44);
    assert_int_equal(w_sub<uint8_t>(3, 5), 254);
    assert_true(w_add(0.5f, 0.25f) == 0.75f);
}

// The fill value and integer scalars are cast on the host by the same convert().
static void host_side_scalar_casts_follow_the_rule(void **state)
{
    (void)state;
    assert_int_equal(convert<int32_t>((double)NAN), 0);
    assert_int_equal(convert<uint8_t>(-1.0), 255);
    assert_int_equal(convert<int32_t>(2.5), 2);
    assert_int_equal(convert<int32_t>(-2.5), -2);
}

static void archs_decide_which_devices_can_run_the_build(void **state)
{
    (void)state;
    const char *all = "75-real 80-real 90-real 100-real 110-real 120";
    assert_int_equal(nbcu_archs_run_on(all, 7, 5), 1); // T4, RTX 20xx
    assert_int_equal(nbcu_archs_run_on(all, 8, 6), 1); // RTX 30xx: the sm_80 cubin
    assert_int_equal(nbcu_archs_run_on(all, 8, 9), 1); // L4
    assert_int_equal(nbcu_archs_run_on(all, 9, 0), 1);
    assert_int_equal(nbcu_archs_run_on(all, 12, 1), 1);
    assert_int_equal(nbcu_archs_run_on(all, 13, 0), 1); // PTX of compute_120
    assert_int_equal(nbcu_archs_run_on(all, 7, 0), 0);  // V100: CUDA 13 has no sm_70
    assert_int_equal(nbcu_archs_run_on(all, 6, 1), 0);
    // The former default: no Turing, and nothing for 12.x or later (no PTX).
    assert_int_equal(nbcu_archs_run_on("80-real;90-real", 7, 5), 0);
    assert_int_equal(nbcu_archs_run_on("80-real;90-real", 12, 0), 0);
    assert_int_equal(nbcu_archs_run_on("80;90", 12, 0), 1); // CMake's "80" is cubin + PTX
    assert_int_equal(nbcu_archs_run_on("90a-real", 9, 0), 1);
    assert_int_equal(nbcu_archs_run_on("90a-real", 10, 0), 0);
    assert_int_equal(nbcu_archs_run_on("86-virtual", 8, 0), 0);
    assert_int_equal(nbcu_archs_run_on("86-virtual", 8, 9), 1);
    assert_int_equal(nbcu_archs_run_on("all-major", 7, 5), -1);
    assert_int_equal(nbcu_archs_run_on("native", 7, 5), -1);
    assert_int_equal(nbcu_archs_run_on("", 9, 0), 0);
    // The list the plugin was built with runs on the device gpu-check targets (H100/H200).
    assert_int_not_equal(nbcu_archs_run_on(nbcu_built_archs, 9, 0), 0);
}

static void driver_reasons_name_the_cause(void **state)
{
    (void)state;
    char buf[512];
    nbcu_driver_reason(buf, sizeof buf, 35, "cudaErrorInsufficientDriver", 0,
                       "libcuda.so.1: cannot open shared object file", 0, 13000);
    assert_non_null(strstr(buf, "CUDA driver not found"));
    assert_non_null(strstr(buf, "libcuda.so.1: cannot open"));
    nbcu_driver_reason(buf, sizeof buf, 35, "cudaErrorInsufficientDriver", 1, "", 12040, 13000);
    assert_non_null(strstr(buf, "driver too old for CUDA 13 (needs R580+)"));
    assert_non_null(strstr(buf, "supports CUDA 12.4"));
    nbcu_driver_reason(buf, sizeof buf, 35, "cudaErrorInsufficientDriver", 1, "", 11080, 12040);
    assert_non_null(strstr(buf, "too old for CUDA 12.4"));
    nbcu_driver_reason(buf, sizeof buf, 100, "cudaErrorNoDevice", 1, "", 13000, 13000);
    assert_non_null(strstr(buf, "no CUDA device found"));
    nbcu_driver_reason(buf, sizeof buf, 999, "cudaErrorUnknown", 1, "", 13000, 13000);
    assert_non_null(strstr(buf, "returned 999 (cudaErrorUnknown)"));
}

static void reductions_pick_a_coalesced_loop(void **state)
{
    (void)state;
    // sum over dim 1 of (4, 300, 5): kept dim 2 has stride 1, reduced stride 5: thread per
    // output, neighbours in one warp.
    nbcu_reduce_plan p = nbcu_plan_reduce(1, 5, 20, 300);
    assert_int_equal(p.columns, 1);
    assert_int_equal(p.chunks, 1);
    // sum over the last dim of (1000, 700): a block per row.
    p = nbcu_plan_reduce(700, 1, 1000, 700);
    assert_int_equal(p.columns, 0);
    assert_int_equal(p.chunks, 1);
    // Short rows (10 elements): a thread per output, not 22 idle lanes of 32.
    p = nbcu_plan_reduce(10, 1, 100000, 10);
    assert_int_equal(p.columns, 1);
    // A full sum of 2^27 elements: split over many blocks, then a second pass.
    p = nbcu_plan_reduce(0, 1, 1, (int64_t)1 << 27);
    assert_int_equal(p.columns, 0);
    assert_true(p.chunks > 1000 && p.chunks <= 4096);
    // 8 outputs of 2^20 each: at most 4096 blocks in all.
    p = nbcu_plan_reduce(1 << 20, 1, 8, 1 << 20);
    assert_true(p.chunks > 1 && p.chunks * 8 <= 4096);
    // One element: nothing to split.
    p = nbcu_plan_reduce(0, 0, 1, 1);
    assert_int_equal(p.columns, 0);
    assert_int_equal(p.chunks, 1);
}

// ---- the plugin's kernel table, read without a device ----

static const nb_plugin *plugin;

static nb_status host_error(nb_status st, const char *fmt, ...)
{
    (void)fmt;
    return st;
}
static void host_log(int level, const char *fmt, ...)
{
    (void)level;
    (void)fmt;
}
static const nb_host host = {NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR, sizeof(nb_host),
                             host_error, host_log};

static bool has_kernel(const char *op, nb_dtype t)
{
    for (size_t k = 0; k < plugin->n_kernels; k++)
        if (strcmp(plugin->kernels[k].op, op) == 0 && plugin->kernels[k].dtype == t)
            return true;
    return false;
}

// What the cpu plugin registers, the cuda plugin registers too (issue 16: integer matmul),
// and what the cpu refuses it refuses (bool scatter_add, bool sum and prod).
static void kernel_table_agrees_with_the_cpu(void **state)
{
    (void)state;
    if (!plugin)
        skip();
    assert_true(has_kernel("matmul", NB_DTYPE_I32));
    assert_true(has_kernel("matmul", NB_DTYPE_I64));
    assert_true(has_kernel("matmul", NB_DTYPE_U8));
    assert_false(has_kernel("matmul", NB_DTYPE_BOOL));
    assert_false(has_kernel("scatter_add", NB_DTYPE_BOOL));
    assert_true(has_kernel("scatter_add", NB_DTYPE_U8));
    assert_false(has_kernel("sum", NB_DTYPE_BOOL));
    assert_false(has_kernel("prod", NB_DTYPE_BOOL));
    assert_true(has_kernel("max", NB_DTYPE_BOOL));
    // Device discovery never fails to answer: a count, and a reason when it is 0.
    int n = plugin->device_count();
    assert_true(n >= 0);
    if (n == 0)
        assert_non_null(plugin->status_note());
}

int main(int argc, char **argv)
{
    void *dl = argc > 1 ? dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) : NULL;
    if (argc > 1 && !dl) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 1;
    }
    if (dl) {
        nb_plugin_entry_fn entry = (nb_plugin_entry_fn)dlsym(dl, NB_PLUGIN_ENTRY_SYMBOL);
        plugin = entry ? entry(&host) : NULL;
        if (!plugin) {
            fprintf(stderr, "%s: no plugin table\n", argv[1]);
            return 1;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(float_to_u8_truncates_then_wraps),
        cmocka_unit_test(out_of_range_and_nan_go_through_int64_min),
        cmocka_unit_test(integer_conversions_wrap),
        cmocka_unit_test(bool_is_any_nonzero_byte_and_converts_to_0_or_1),
        cmocka_unit_test(integer_arithmetic_wraps),
        cmocka_unit_test(host_side_scalar_casts_follow_the_rule),
        cmocka_unit_test(archs_decide_which_devices_can_run_the_build),
        cmocka_unit_test(driver_reasons_name_the_cause),
        cmocka_unit_test(reductions_pick_a_coalesced_loop),
        cmocka_unit_test(kernel_table_agrees_with_the_cpu),
    };
    int failed = cmocka_run_group_tests_name("cuda host logic", tests, NULL, NULL);
    if (plugin && plugin->shutdown)
        plugin->shutdown();
    return failed ? 1 : 0;
}
