// test_cuda_host.cu - the cuda plugin's host-side logic, run on any machine (no GPU, no driver):
// the conversion rule the kernels and the host-side scalar casts share, bool bytes, wrapping
// integer arithmetic, which devices a build's architectures run on, the words for a missing or
// old driver, the choice of reduction loop, and the plugin's kernel table (argv[1]: the plugin).
// The 16-bit conversions the kernels run (__host__ __device__) are compared with the SDK's.
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
// ---- float16 / bfloat16: the kernels' conversions against the SDK's, bit for bit ----

static uint32_t fbits(float f) { return nb_f32_bits_(f); }

// Every 16-bit pattern widens to the SDK's float (NaN payloads, subnormals, -0.0), moves
// unchanged into its own type (a signalling NaN too), and reaches the other 16-bit type with one
// rounding.
static void every_16bit_pattern_widens_as_the_sdk(void **state)
{
    (void)state;
    for (uint32_t b = 0; b < 65536; b++) {
        uint16_t h = (uint16_t)b;
        __half x = of_bits16<__half>(h);
        __nv_bfloat16 y = of_bits16<__nv_bfloat16>(h);
        assert_int_equal(fbits(convert<float>(x)), fbits(nb_f16_to_f32(h)));
        assert_int_equal(fbits(convert<float>(y)), fbits(nb_bf16_to_f32(h)));
        assert_int_equal(fbits(widen(x)), fbits(nb_f16_to_f32(h)));
        assert_int_equal(bits16(convert<__half>(x)), h);
        assert_int_equal(bits16(convert<__nv_bfloat16>(y)), h);
        assert_int_equal(bits16(convert<__nv_bfloat16>(x)), nb_f32_to_bf16(nb_f16_to_f32(h)));
        assert_int_equal(bits16(convert<__half>(y)), nb_f32_to_f16(nb_bf16_to_f32(h)));
        double d = convert<double>(x);
        assert_true(d == (double)nb_f16_to_f32(h) || (d != d && nb_f16_to_f32(h) != nb_f16_to_f32(h)));
        // To integers and bool through float, by the rule (NaN -> INT64_MIN -> 0 in int32).
        assert_int_equal(convert<int32_t>(x), convert<int32_t>(nb_f16_to_f32(h)));
        assert_int_equal(convert<uint8_t>(y), convert<uint8_t>(nb_bf16_to_f32(h)));
        assert_int_equal(convert<bool>(x), nb_f16_to_f32(h) != 0.0f);
    }
    assert_int_equal(convert<uint8_t>(of_bits16<__nv_bfloat16>(0xbf80)), 255); // -1.0
    assert_false(convert<bool>(of_bits16<__half>(0x8000)));                  // -0.0
    assert_true(convert<bool>(of_bits16<__half>(0x7e00)));                   // NaN
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

// float -> 16 bits: every 16-bit value widened, its float neighbours, the exact midpoints to the
// next value (ties) and their neighbours, and 2^20 random float patterns (NaN payloads, float
// subnormals, overflow among them).
static void float_sample_rounds_as_the_sdk(void **state)
{
    (void)state;
    long n = 0;
    auto check = [&](float f) {
        assert_int_equal(bits16(convert<__half>(f)), nb_f32_to_f16(f));
        assert_int_equal(bits16(convert<__nv_bfloat16>(f)), nb_f32_to_bf16(f));
        n++;
    };
    for (uint32_t b = 0; b < 65536; b++) {
        float v[2] = {nb_f16_to_f32((uint16_t)b), nb_bf16_to_f32((uint16_t)b)};
        float w[2] = {nb_f16_to_f32((uint16_t)(b + 1)), nb_bf16_to_f32((uint16_t)(b + 1))};
        for (int t = 0; t < 2; t++) {
            uint32_t x = fbits(v[t]);
            for (int d = -2; d <= 2; d++)
                check(nb_bits_f32_(x + (uint32_t)d));
            float mid = (float)(((double)v[t] + (double)w[t]) / 2); // exact for both types
            uint32_t m = fbits(mid);
            for (int d = -1; d <= 1; d++)
                check(nb_bits_f32_(m + (uint32_t)d));
        }
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int k = 0; k < (1 << 20); k++)
        check(nb_bits_f32_((uint32_t)xorshift(&seed)));
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f, 65520.0f,
                             65519.996f, 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1p-149f,
                             3.4028235e38f};
    for (float f : special)
        check(f);
    assert_true(n > 1000000);
}

// The correctly rounded 16-bit value of an integer, computed apart from the plugin's code:
// among the SDK's rounding of (double)x and its two neighbours, the one nearest x in long double
// (exact for any int64 on x86), ties to the even pattern.
template <class H> static uint16_t exact_round(int64_t x)
{
    bool f16 = std::is_same<H, __half>::value;
    if (f16 && (x >= 65520 || x <= -65520)) // 65520 (a tie) and up: inf
        return x < 0 ? 0xfc00 : 0x7c00;
    uint16_t c = f16 ? nb_f64_to_f16((double)x) : nb_f64_to_bf16((double)x);
    uint16_t best = c;
    long double bd = -1;
    for (int d = -1; d <= 1; d++) {
        uint16_t h = (uint16_t)(c + d);
        float f = f16 ? nb_f16_to_f32(h) : nb_bf16_to_f32(h);
        if (f != f || isinf(f) || ((h & 0x7fff) == 0 && d != 0)) // NaN, inf, or past zero
            continue;
        long double dist = fabsl((long double)f - (long double)x);
        if (bd < 0 || dist < bd || (dist == bd && !(h & 1))) {
            best = h;
            bd = dist;
        }
    }
    return best;
}

// double, int32 and int64 -> 16 bits round once (round to odd into float first): a double just
// above or below a tie, and integers whose rounding through float would round twice.
static void wide_sources_round_once(void **state)
{
    (void)state;
    for (uint32_t b = 0; b < 65535; b++) {
        double v[2] = {nb_f16_to_f32((uint16_t)b), nb_bf16_to_f32((uint16_t)b)};
        double w[2] = {nb_f16_to_f32((uint16_t)(b + 1)), nb_bf16_to_f32((uint16_t)(b + 1))};
        for (int t = 0; t < 2; t++) {
            double mid = (v[t] + w[t]) / 2;
            double e = fabs(mid) * 0x1p-40;
            const double ds[3] = {mid, mid + e, mid - e};
            for (double d : ds) {
                assert_int_equal(bits16(convert<__half>(d)), nb_f64_to_f16(d));
                assert_int_equal(bits16(convert<__nv_bfloat16>(d)), nb_f64_to_bf16(d));
            }
        }
    }
    // The double-rounding cases of NOTE-half: through float they round to 1.0.
    assert_int_equal(bits16(convert<__half>(1 + 0x1p-11 + 0x1p-40)), 0x3c01);
    assert_int_equal(bits16(convert<__nv_bfloat16>(1 + 0x1p-8 + 0x1p-30)), 0x3f81);
    // int32 2^24 + 2^16 + 1: through float it is the tie 2^24 + 2^16, which rounds to even.
    assert_int_equal(bits16(convert<__nv_bfloat16>((int32_t)(16777216 + 65536 + 1))),
                     exact_round<__nv_bfloat16>(16777216 + 65536 + 1));
    assert_int_equal(bits16(convert<__nv_bfloat16>((int32_t)(16777216 + 65536 + 1))), 0x4b81);
    uint64_t seed = 12345;
    const int64_t fixed[] = {0, 1, -1, 65504, 65519, 65520, -65520, 2049, 2051, 4097,
                             INT64_MAX, INT64_MIN, INT64_MIN + 1, (1LL << 53) + 1,
                             (1LL << 62) + (1LL << 54) + 1, INT32_MAX, INT32_MIN};
    for (int k = 0; k < (1 << 18) + 17; k++) {
        int64_t x;
        if (k < 17)
            x = fixed[k];
        else {
            uint64_t r = xorshift(&seed);
            x = (int64_t)(r >> (r & 63)); // every magnitude
            if (r & 1)
                x = -x;
        }
        assert_int_equal(bits16(convert<__nv_bfloat16>(x)), exact_round<__nv_bfloat16>(x));
        assert_int_equal(bits16(convert<__half>(x)), exact_round<__half>(x));
        int32_t i = (int32_t)x;
        assert_int_equal(bits16(convert<__nv_bfloat16>(i)), nb_f64_to_bf16((double)i));
        assert_int_equal(bits16(convert<__half>(i)), nb_f64_to_f16((double)i));
    }
    assert_int_equal(bits16(convert<__half>((uint8_t)255)), 0x5bf8);
    assert_int_equal(bits16(convert<__nv_bfloat16>(true)), 0x3f80);
    assert_int_equal(bits16(zero_of<__half>()), 0);
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
    // float16 and bfloat16: the tier-1 ops (opencl's OCL_ALL16/NUM16/FLT16 rows), conv2d,
    // pooling, random fills; no optimizer steps (the core's composites run those).
    static const char *const half_ops[] = {
        "fill", "copy", "where", "neg", "abs", "relu", "sign", "exp", "log", "sqrt", "rsqrt",
        "sin", "cos", "tanh", "sigmoid", "floor", "ceil", "round", "add_scalar", "mul_scalar",
        "rsub_scalar", "div_scalar", "rdiv_scalar", "pow_scalar", "rpow_scalar", "clamp",
        "eq_scalar", "ne_scalar", "lt_scalar", "le_scalar", "gt_scalar", "ge_scalar", "add",
        "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
        "sum", "prod", "max", "min", "argmax", "argmin", "matmul", "relu_backward", "softmax",
        "log_softmax", "softmax_backward", "log_softmax_backward", "conv2d",
        "conv2d_backward_input", "conv2d_backward_weight", "max_pool2d", "max_pool2d_backward",
        "gather", "scatter_add", "arange", "random_uniform", "random_normal"};
    for (const char *op : half_ops) {
        if (!has_kernel(op, NB_DTYPE_F16) || !has_kernel(op, NB_DTYPE_BF16))
            fail_msg("no 16-bit %s kernel", op);
    }
    for (nb_dtype t : {NB_DTYPE_F16, NB_DTYPE_BF16}) {
        assert_false(has_kernel("sgd_step", t));
        assert_false(has_kernel("adam_step", t));
    }
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
        cmocka_unit_test(every_16bit_pattern_widens_as_the_sdk),
        cmocka_unit_test(float_sample_rounds_as_the_sdk),
        cmocka_unit_test(wide_sources_round_once),
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
