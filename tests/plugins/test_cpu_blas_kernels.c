/* test_cpu_blas_kernels.c - the cpu_blas plugin tested on its own: the .so is dlopen'ed (path in
 * argv[1]), kernels are called through its table on host buffers and compared with simple
 * reference loops, |got - ref| <= atol + rtol * |ref|, tolerances next to each test. */
#include <dlfcn.h>
#include <math.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <dirent.h>

#include "nabla_plugin.h"

static const char *plugin_path;
static void *plugin_lib;
static const nb_plugin *P;

/* The host records the last error so tests can read what the plugin said. */
static char last_error[512];
static nb_status last_status;

static nb_status host_error(nb_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    last_status = st;
    return st;
}

static void host_log(int level, const char *fmt, ...) { (void)level, (void)fmt; }

static const nb_host host = {NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR, sizeof(nb_host),
                             host_error, host_log};

static int load_plugin(void **state)
{
    (void)state;
    plugin_lib = dlopen(plugin_path, RTLD_NOW | RTLD_LOCAL);
    if (!plugin_lib) {
        fprintf(stderr, "cannot load %s: %s\n", plugin_path, dlerror());
        return -1;
    }
    nb_plugin_entry_fn entry = (nb_plugin_entry_fn)dlsym(plugin_lib, NB_PLUGIN_ENTRY_SYMBOL);
    P = entry ? entry(&host) : NULL;
    return P ? 0 : -1;
}

static int unload_plugin(void **state)
{
    (void)state;
    if (P && P->shutdown)
        P->shutdown();
    if (plugin_lib)
        dlclose(plugin_lib);
    return 0;
}

static nb_kernel_fn kernel(const char *op, nb_dtype dt)
{
    for (size_t k = 0; k < P->n_kernels; k++)
        if (P->kernels[k].dtype == dt && strcmp(P->kernels[k].op, op) == 0)
            return P->kernels[k].fn;
    fail_msg("no %s kernel for dtype %d", op, (int)dt);
    return NULL;
}

static nb_operand opd(void *p, nb_dtype dt, int nd, const int64_t *shape, const int64_t *strides)
{
    return (nb_operand){p, 0, dt, nd, shape, strides};
}

/* f and iv may be shorter than the 8 slots: run() passes their sizes along, so both must be
 * arrays (or NULL), never pointers. */
static nb_status run_sized(const char *op, nb_dtype dt, const nb_operand *out,
                           const nb_operand *in, int n_in, const double *f, size_t f_bytes,
                           const int64_t *iv, size_t iv_bytes)
{
    nb_kernel_args a = {0, n_in, out, in, {0}, {0}};
    for (size_t k = 0; f && k < 8 && k < f_bytes / sizeof *f; k++)
        a.f[k] = f[k];
    for (size_t k = 0; iv && k < 8 && k < iv_bytes / sizeof *iv; k++)
        a.i[k] = iv[k];
    return kernel(op, dt)(&a);
}
#define run(op, dt, out, in, n_in, f, iv)                                                   \
    run_sized(op, dt, out, in, n_in, f, sizeof(f), iv, sizeof(iv))

/* Deterministic data in [-1, 1). */
static uint64_t rng_state = 88172645463325252ull;
static double rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-52 - 1.0;
}

static void fill_f32(float *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        p[k] = (float)rnd();
}

static void fill_f64(double *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        p[k] = rnd();
}

#define CLOSE(got, ref, atol, rtol)                                                         \
    do {                                                                                    \
        double g_ = (got), r_ = (ref);                                                      \
        if (!(g_ == r_ || fabs(g_ - r_) <= (atol) + (rtol) * fabs(r_)))                    \
            fail_msg("%s:%d: got %.9g, expected %.9g", __FILE__, __LINE__, g_, r_);         \
    } while (0)

/* ---- plugin table ---- */

static void plugin_describes_one_cpu_device(void **state)
{
    (void)state;
    assert_string_equal(P->name, "cpu");
    assert_int_equal(P->abi_major, NB_PLUGIN_ABI_MAJOR);
    assert_int_equal(P->device_count(), 1);
    void *h = NULL;
    assert_int_equal(P->alloc(0, 100, &h), NB_OK);
    assert_true(((uintptr_t)h & 63) == 0);
    float src[4] = {1, 2, 3, 4}, dst[4] = {0};
    assert_int_equal(P->write(0, h, 8, src, sizeof src), NB_OK);
    assert_int_equal(P->read(0, h, 8, dst, sizeof dst), NB_OK);
    assert_memory_equal(src, dst, sizeof src);
    P->free(0, h);
    assert_int_equal(P->alloc(3, 100, &h), NB_DEVICE_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "device 3"));
    /* free() on a wrapped handle must leave the caller's memory alone (valgrind/ASan see it) */
    float *mine = malloc(16);
    assert_int_equal(P->wrap_host(0, mine, 16, &h), NB_OK);
    assert_ptr_equal(h, mine);
    P->free(0, h);
    mine[0] = 1;
    free(mine);
}

static void every_tier1_op_has_float_kernels(void **state)
{
    (void)state;
    static const char *ops[] = {
        "fill", "copy", "arange", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos",
        "tanh", "sigmoid", "relu", "sign", "floor", "ceil", "round", "logical_not",
        "add_scalar", "mul_scalar", "rsub_scalar", "div_scalar", "rdiv_scalar", "pow_scalar",
        "rpow_scalar", "clamp", "eq_scalar", "ne_scalar", "lt_scalar", "le_scalar",
        "gt_scalar", "ge_scalar", "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq",
        "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "where",
        "sum", "prod", "max", "min", "argmax", "argmin", "matmul", "gather", "scatter_add",
        "random_uniform", "random_normal", "relu_backward", "softmax", "log_softmax",
        "log_softmax_backward", "softmax_backward", "conv2d", "conv2d_backward_input",
        "conv2d_backward_weight", "max_pool2d", "max_pool2d_backward", "sgd_step",
        "adam_step"};
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
        assert_non_null(kernel(ops[k], NB_DTYPE_F32));
        assert_non_null(kernel(ops[k], NB_DTYPE_F64));
    }
    static const char *int_ops[] = {"fill", "copy", "arange", "neg", "abs", "sign", "add",
                                    "mul", "eq", "where", "sum", "max", "argmax", "gather",
                                    "scatter_add", "clamp", "matmul"};
    for (size_t k = 0; k < sizeof int_ops / sizeof int_ops[0]; k++)
        for (nb_dtype dt = NB_DTYPE_I32; dt <= NB_DTYPE_I64; dt++)
            assert_non_null(kernel(int_ops[k], dt));
}

/* ---- elementwise ---- */

/* out (3,4) = a^T + b where a is a (4,3) buffer seen transposed and b one broadcast row; then
 * the same with an offset operand and a broadcast scalar. Exact: one float add each. */
static void add_handles_strides_broadcast_and_offsets(void **state)
{
    (void)state;
    float abuf[12], b[4], out[12];
    fill_f32(abuf, 12);
    fill_f32(b, 4);
    const int64_t shape[2] = {3, 4}, at[2] = {1, 3}, bt[2] = {0, 1}, ot[2] = {4, 1};
    nb_operand o = opd(out, NB_DTYPE_F32, 2, shape, ot);
    nb_operand in[2] = {opd(abuf, NB_DTYPE_F32, 2, shape, at), opd(b, NB_DTYPE_F32, 2, shape, bt)};
    assert_int_equal(run("add", NB_DTYPE_F32, &o, in, 2, NULL, NULL), NB_OK);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            CLOSE(out[r * 4 + c], abuf[c * 3 + r] + b[c], 0, 0);

    /* a scalar (all strides 0) living 2 elements into its buffer, subtracted from a column */
    const int64_t st0[2] = {0, 0}, col[2] = {3, 0};
    in[0] = opd(abuf, NB_DTYPE_F32, 2, shape, col);
    in[1] = opd(b, NB_DTYPE_F32, 2, shape, st0);
    in[1].offset = 2 * sizeof(float);
    assert_int_equal(run("sub", NB_DTYPE_F32, &o, in, 2, NULL, NULL), NB_OK);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            CLOSE(out[r * 4 + c], abuf[r * 3] - b[2], 0, 0);
}

/* Big enough for the threaded path; the in-place form (out aliases a) too. */
static void add_large_contiguous_and_in_place(void **state)
{
    (void)state;
    const int64_t n = 300001, shape[1] = {n}, st[1] = {1};
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *ref = malloc(n * sizeof *ref);
    fill_f32(a, n);
    fill_f32(b, n);
    for (int64_t k = 0; k < n; k++)
        ref[k] = a[k] * b[k];
    nb_operand o = opd(a, NB_DTYPE_F32, 1, shape, st);
    nb_operand in[2] = {o, opd(b, NB_DTYPE_F32, 1, shape, st)};
    assert_int_equal(run("mul", NB_DTYPE_F32, &o, in, 2, NULL, NULL), NB_OK);
    for (int64_t k = 0; k < n; k++)
        if (a[k] != ref[k])
            fail_msg("mul: element %lld is %g, expected %g", (long long)k, a[k], ref[k]);
    free(a);
    free(b);
    free(ref);
}

static void unary_and_scalar_ops_follow_c_semantics(void **state)
{
    (void)state;
    const double x[6] = {-2.5, -0.0, 0.0, 1.5, INFINITY, NAN};
    double out[6];
    const int64_t shape[1] = {6}, st[1] = {1};
    nb_operand o = opd(out, NB_DTYPE_F64, 1, shape, st), in = opd((void *)x, NB_DTYPE_F64, 1, shape, st);
    assert_int_equal(run("abs", NB_DTYPE_F64, &o, &in, 1, NULL, NULL), NB_OK);
    for (int k = 0; k < 6; k++) {
        if (isnan(x[k]))
            assert_true(isnan(out[k]));
        else
            assert_true(out[k] == fabs(x[k]) && !signbit(out[k]));
    }
    assert_int_equal(run("round", NB_DTYPE_F64, &o, &in, 1, NULL, NULL), NB_OK);
    assert_true(out[0] == -2.0 && out[3] == 2.0); /* half to even */
    assert_int_equal(run("relu", NB_DTYPE_F64, &o, &in, 1, NULL, NULL), NB_OK);
    assert_true(out[0] == 0 && out[3] == 1.5 && isinf(out[4]) && isnan(out[5]));
    const double f[2] = {-1.0, 1.0};
    const int64_t both[2] = {1, 1};
    assert_int_equal(run("clamp", NB_DTYPE_F64, &o, &in, 1, f, both), NB_OK);
    assert_true(out[0] == -1 && out[3] == 1 && out[4] == 1 && isnan(out[5]));
    const double two[1] = {2.0};
    assert_int_equal(run("rpow_scalar", NB_DTYPE_F64, &o, &in, 1, two, NULL), NB_OK);
    for (int k = 0; k < 5; k++)
        CLOSE(out[k], pow(2.0, x[k]), 0, 1e-15);

    /* integer pow and maximum with NaN */
    int32_t ix[4] = {-3, 0, 2, 5}, iout[4];
    const int64_t s4[1] = {4};
    nb_operand io = opd(iout, NB_DTYPE_I32, 1, s4, st), ii = opd(ix, NB_DTYPE_I32, 1, s4, st);
    const double three[1] = {3.0};
    assert_int_equal(run("pow_scalar", NB_DTYPE_I32, &io, &ii, 1, three, NULL), NB_OK);
    for (int k = 0; k < 4; k++)
        assert_int_equal(iout[k], ix[k] * ix[k] * ix[k]);
    float fa[3] = {1, NAN, -0.0f}, fb[3] = {NAN, 2, 0}, fo[3];
    const int64_t s3[1] = {3};
    nb_operand fo_ = opd(fo, NB_DTYPE_F32, 1, s3, st);
    nb_operand fi[2] = {opd(fa, NB_DTYPE_F32, 1, s3, st), opd(fb, NB_DTYPE_F32, 1, s3, st)};
    assert_int_equal(run("maximum", NB_DTYPE_F32, &fo_, fi, 2, NULL, NULL), NB_OK);
    assert_true(isnan(fo[0]) && isnan(fo[1]) && fo[2] == 0);
}

/* Every source dtype into float32 and int32 and back, from a strided source. */
static void copy_casts_between_dtypes(void **state)
{
    (void)state;
    const double src[8] = {-3.75, -1.0, 0.0, 0.5, 2.9, 100.0, 255.0, 300.0};
    const int64_t shape[1] = {4}, st2[1] = {2}, st1[1] = {1};
    /* f64 (every second element) -> i32 truncates toward zero */
    int32_t i32[4];
    nb_operand o = opd(i32, NB_DTYPE_I32, 1, shape, st1), in = opd((void *)src, NB_DTYPE_F64, 1, shape, st2);
    assert_int_equal(run("copy", NB_DTYPE_I32, &o, &in, 1, NULL, NULL), NB_OK);
    for (int k = 0; k < 4; k++)
        assert_int_equal(i32[k], (int32_t)src[2 * k]);
    /* i32 -> u8 wraps like C; f64 -> u8 goes through int64 like PyTorch (-1 -> 255) */
    uint8_t u8[4];
    o = opd(u8, NB_DTYPE_U8, 1, shape, st1);
    in = opd(i32, NB_DTYPE_I32, 1, shape, st1);
    assert_int_equal(run("copy", NB_DTYPE_U8, &o, &in, 1, NULL, NULL), NB_OK);
    for (int k = 0; k < 4; k++)
        assert_int_equal(u8[k], (uint8_t)i32[k]);
    const int64_t s8[1] = {8};
    uint8_t u8b[8];
    o = opd(u8b, NB_DTYPE_U8, 1, s8, st1);
    in = opd((void *)src, NB_DTYPE_F64, 1, s8, st1);
    assert_int_equal(run("copy", NB_DTYPE_U8, &o, &in, 1, NULL, NULL), NB_OK);
    for (int k = 0; k < 8; k++)
        assert_int_equal(u8b[k], (uint8_t)(int64_t)src[k]);
    /* a bool byte is true when any bit is set: 0xFF and 2 read as exactly 1 (the SDK's rule) */
    const uint8_t raw[4] = {0, 1, 0xFF, 2};
    float fb[4];
    int64_t ib[4];
    o = opd(fb, NB_DTYPE_F32, 1, shape, st1);
    in = opd((void *)raw, NB_DTYPE_BOOL, 1, shape, st1);
    assert_int_equal(run("copy", NB_DTYPE_F32, &o, &in, 1, NULL, NULL), NB_OK);
    o = opd(ib, NB_DTYPE_I64, 1, shape, st1);
    assert_int_equal(run("copy", NB_DTYPE_I64, &o, &in, 1, NULL, NULL), NB_OK);
    for (int k = 0; k < 4; k++) {
        assert_float_equal(fb[k], k ? 1.0f : 0.0f, 0);
        assert_int_equal(ib[k], k ? 1 : 0);
    }
    /* u8 -> f32 and -> bool */
    float f32[8];
    uint8_t b8[8];
    o = opd(f32, NB_DTYPE_F32, 1, s8, st1);
    in = opd(u8b, NB_DTYPE_U8, 1, s8, st1);
    assert_int_equal(run("copy", NB_DTYPE_F32, &o, &in, 1, NULL, NULL), NB_OK);
    o = opd(b8, NB_DTYPE_BOOL, 1, s8, st1);
    assert_int_equal(run("copy", NB_DTYPE_BOOL, &o, &in, 1, NULL, NULL), NB_OK);
    for (int k = 0; k < 8; k++) {
        assert_true(f32[k] == (float)u8b[k]);
        assert_int_equal(b8[k], u8b[k] != 0);
    }
}

static void where_and_comparisons_give_bool(void **state)
{
    (void)state;
    float x[5] = {1, 2, 3, 4, NAN}, y[5] = {1, 3, 2, 4, 0}, out[5];
    uint8_t c[5];
    const int64_t shape[1] = {5}, st[1] = {1};
    nb_operand co = opd(c, NB_DTYPE_BOOL, 1, shape, st);
    nb_operand in[3] = {opd(x, NB_DTYPE_F32, 1, shape, st), opd(y, NB_DTYPE_F32, 1, shape, st)};
    assert_int_equal(run("lt", NB_DTYPE_F32, &co, in, 2, NULL, NULL), NB_OK);
    for (int k = 0; k < 5; k++)
        assert_int_equal(c[k], x[k] < y[k]);
    nb_operand o = opd(out, NB_DTYPE_F32, 1, shape, st);
    nb_operand w[3] = {co, in[0], in[1]};
    assert_int_equal(run("where", NB_DTYPE_F32, &o, w, 3, NULL, NULL), NB_OK);
    for (int k = 0; k < 4; k++)
        assert_true(out[k] == (x[k] < y[k] ? x[k] : y[k]));
}

/* ---- reductions ---- */

/* (2,3,4,5) reduced over dims 1 and 2; the input is a permuted view to exercise strides. */
static void reductions_over_middle_dims(void **state)
{
    (void)state;
    enum { A = 2, B = 3, C = 4, D = 5 };
    double buf[A * B * C * D];
    fill_f64(buf, A * B * C * D);
    /* logical x[a][b][c][d] stored at buf[((d * C + c) * B + b) * A + a] (fully transposed) */
    const int64_t shape[4] = {A, B, C, D}, st[4] = {1, A, A * B, A * B * C};
    const int64_t oshape[4] = {A, 1, 1, D}, ost[4] = {D, D, D, 1};
    double out[A * D];
    nb_operand o = opd(out, NB_DTYPE_F64, 4, oshape, ost), in = opd(buf, NB_DTYPE_F64, 4, shape, st);
    const char *ops[3] = {"sum", "max", "prod"};
    for (int op = 0; op < 3; op++) {
        assert_int_equal(run(ops[op], NB_DTYPE_F64, &o, &in, 1, NULL, NULL), NB_OK);
        for (int a = 0; a < A; a++)
            for (int d = 0; d < D; d++) {
                double ref = op == 0 ? 0 : op == 1 ? -INFINITY : 1;
                for (int b = 0; b < B; b++)
                    for (int c = 0; c < C; c++) {
                        double v = buf[((d * C + c) * B + b) * A + a];
                        ref = op == 0 ? ref + v : op == 1 ? fmax(ref, v) : ref * v;
                    }
                /* order of summation differs: a few ulps */
                CLOSE(out[a * D + d], ref, 1e-15, 1e-12);
            }
    }
}

/* int32 sums and products wrap around (PyTorch's result) on both row kinds: a column reduction
 * adds rows elementwise into the output, a full one folds into an accumulator; both in
 * unsigned arithmetic (UBSan reports a signed overflow otherwise). */
static void int32_reductions_wrap_around(void **state)
{
    (void)state;
    int32_t x[6] = {INT32_MAX, INT32_MIN, 65536, 1, -1, 65536}, out[3];
    const int64_t shape[2] = {2, 3}, st[2] = {3, 1}, oshape[2] = {1, 3}, ost[2] = {3, 1};
    nb_operand o = opd(out, NB_DTYPE_I32, 2, oshape, ost), in = opd(x, NB_DTYPE_I32, 2, shape, st);
    assert_int_equal(run("sum", NB_DTYPE_I32, &o, &in, 1, NULL, NULL), NB_OK);
    assert_true(out[0] == INT32_MIN && out[1] == INT32_MAX && out[2] == 131072);
    assert_int_equal(run("prod", NB_DTYPE_I32, &o, &in, 1, NULL, NULL), NB_OK);
    assert_true(out[0] == INT32_MAX && out[1] == INT32_MIN && out[2] == 0); /* 2^32 wraps to 0 */
    const int64_t all[1] = {6}, one[1] = {1}, ost1[1] = {0};
    nb_operand o1 = opd(out, NB_DTYPE_I32, 1, one, ost1), in1 = opd(x, NB_DTYPE_I32, 1, all, one);
    assert_int_equal(run("sum", NB_DTYPE_I32, &o1, &in1, 1, NULL, NULL), NB_OK);
    assert_int_equal(out[0], 131072 - 1); /* MAX + MIN + 65536 + 1 - 1 + 65536 */
}

/* Whole-tensor sum on the threaded path vs a double reference; max propagates NaN. */
static void full_reduction_sum_and_nan_max(void **state)
{
    (void)state;
    const int64_t n = 1000003, shape[1] = {n}, st[1] = {1}, os[1] = {1};
    float *x = malloc(n * sizeof *x);
    fill_f32(x, n);
    double ref = 0;
    for (int64_t k = 0; k < n; k++)
        ref += x[k];
    float out;
    nb_operand o = opd(&out, NB_DTYPE_F32, 1, os, st), in = opd(x, NB_DTYPE_F32, 1, shape, st);
    assert_int_equal(run("sum", NB_DTYPE_F32, &o, &in, 1, NULL, NULL), NB_OK);
    /* partial sums are double; only the final rounding to float remains */
    CLOSE(out, ref, 1e-3, 1e-6);
    x[n / 2] = NAN;
    assert_int_equal(run("max", NB_DTYPE_F32, &o, &in, 1, NULL, NULL), NB_OK);
    assert_true(isnan(out));
    free(x);
}

static void argmax_takes_the_first_of_ties(void **state)
{
    (void)state;
    /* x is (2, 4) stored transposed; argmax along dim 1 */
    float x[8] = {1, 5, 3, 5, 3, NAN, 2, 1}; /* logical rows {1,3,3,2} and {5,5,NaN,1} */
    const int64_t shape[2] = {2, 4}, st[2] = {1, 2}, oshape[2] = {2, 1}, ost[2] = {1, 1};
    int64_t out[2];
    const int64_t dim[1] = {1};
    nb_operand o = opd(out, NB_DTYPE_I64, 2, oshape, ost), in = opd(x, NB_DTYPE_F32, 2, shape, st);
    assert_int_equal(run("argmax", NB_DTYPE_F32, &o, &in, 1, NULL, dim), NB_OK);
    assert_int_equal(out[0], 1); /* 3 at 1 and 2: first */
    assert_int_equal(out[1], 2); /* NaN wins */
    assert_int_equal(run("argmin", NB_DTYPE_F32, &o, &in, 1, NULL, dim), NB_OK);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 2);
    int32_t ix[6] = {4, 4, 7, 7, 1, 1}; /* (3, 2): argmax along dim 0 */
    const int64_t ishape[2] = {3, 2}, ist[2] = {2, 1}, ioshape[2] = {1, 2}, iost[2] = {2, 1};
    const int64_t dim0[1] = {0};
    o = opd(out, NB_DTYPE_I64, 2, ioshape, iost);
    in = opd(ix, NB_DTYPE_I32, 2, ishape, ist);
    assert_int_equal(run("argmax", NB_DTYPE_I32, &o, &in, 1, NULL, dim0), NB_OK);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 1);
}

/* ---- gather / scatter_add ---- */

static void gather_checks_indexes(void **state)
{
    (void)state;
    float src[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}; /* (2, 5) */
    int64_t idx[4] = {4, 0, 2, 2};                    /* (2, 2) */
    float out[4];
    const int64_t sshape[2] = {2, 5}, sst[2] = {5, 1}, ishape[2] = {2, 2}, ist[2] = {2, 1};
    const int64_t dim[1] = {1};
    nb_operand o = opd(out, NB_DTYPE_F32, 2, ishape, ist);
    nb_operand in[2] = {opd(src, NB_DTYPE_F32, 2, sshape, sst), opd(idx, NB_DTYPE_I64, 2, ishape, ist)};
    assert_int_equal(run("gather", NB_DTYPE_F32, &o, in, 2, NULL, dim), NB_OK);
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++)
            assert_true(out[r * 2 + c] == src[r * 5 + idx[r * 2 + c]]);
    idx[3] = 7;
    last_error[0] = 0;
    assert_int_equal(run("gather", NB_DTYPE_F32, &o, in, 2, NULL, dim), NB_INDEX_OUT_OF_RANGE);
    assert_int_equal(last_status, NB_INDEX_OUT_OF_RANGE);
    assert_string_equal(last_error, "gather: index 7 out of range for dim 1 of size 5");
    idx[3] = -1;
    assert_int_equal(run("gather", NB_DTYPE_F32, &o, in, 2, NULL, dim), NB_INDEX_OUT_OF_RANGE);
}

static void scatter_add_accumulates_duplicates(void **state)
{
    (void)state;
    double out[5] = {1, 1, 1, 1, 1}, src[4] = {1, 2, 3, 4};
    int64_t idx[4] = {3, 0, 3, 3};
    const int64_t oshape[1] = {5}, ishape[1] = {4}, st[1] = {1}, dim[1] = {0};
    nb_operand o = opd(out, NB_DTYPE_F64, 1, oshape, st);
    nb_operand in[2] = {opd(idx, NB_DTYPE_I64, 1, ishape, st), opd(src, NB_DTYPE_F64, 1, ishape, st)};
    assert_int_equal(run("scatter_add", NB_DTYPE_F64, &o, in, 2, NULL, dim), NB_OK);
    const double ref[5] = {3, 1, 1, 9, 1};
    for (int k = 0; k < 5; k++)
        CLOSE(out[k], ref[k], 0, 0);
    idx[1] = 5;
    assert_int_equal(run("scatter_add", NB_DTYPE_F64, &o, in, 2, NULL, dim), NB_INDEX_OUT_OF_RANGE);
}

/* ---- matmul ---- */

/* Reference: out[b] = alpha * A[b] @ B[b] + beta * out0[b], with element accessors by strides. */
static void matmul_case(nb_dtype dt, int64_t batch, int64_t M, int64_t K, int64_t N,
                        const int64_t *ast, const int64_t *bst, const int64_t *cst, double alpha,
                        double beta, double atol, double rtol)
{
    size_t es = dt == NB_DTYPE_F32 ? 4 : 8;
    /* generous buffers: strides below never exceed 4x the element count */
    size_t an = 4 * batch * M * K + 64, bn = 4 * batch * K * N + 64, cn = 4 * batch * M * N + 64;
    char *A = calloc(an, es), *B = calloc(bn, es), *C = calloc(cn, es), *C0 = calloc(cn, es);
    double *ref = calloc(batch * M * N, sizeof *ref);
#define AT(p, k) (dt == NB_DTYPE_F32 ? (double)((float *)(p))[k] : ((double *)(p))[k])
    for (size_t k = 0; k < an; k++)
        dt == NB_DTYPE_F32 ? (void)(((float *)A)[k] = (float)rnd()) : (void)(((double *)A)[k] = rnd());
    for (size_t k = 0; k < bn; k++)
        dt == NB_DTYPE_F32 ? (void)(((float *)B)[k] = (float)rnd()) : (void)(((double *)B)[k] = rnd());
    for (size_t k = 0; k < cn; k++)
        dt == NB_DTYPE_F32 ? (void)(((float *)C)[k] = (float)rnd()) : (void)(((double *)C)[k] = rnd());
    memcpy(C0, C, cn * es);
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double acc = 0;
                for (int64_t k = 0; k < K; k++)
                    acc += AT(A, b * ast[0] + i * ast[1] + k * ast[2]) *
                           AT(B, b * bst[0] + k * bst[1] + j * bst[2]);
                double c0 = AT(C0, b * cst[0] + i * cst[1] + j * cst[2]);
                ref[(b * M + i) * N + j] = alpha * acc + (beta == 0 ? 0 : beta * c0);
            }
    const int64_t as[3] = {batch, M, K}, bs[3] = {batch, K, N}, cs[3] = {batch, M, N};
    nb_operand o = opd(C, dt, 3, cs, cst);
    nb_operand in[2] = {opd(A, dt, 3, as, ast), opd(B, dt, 3, bs, bst)};
    const double f[2] = {alpha, beta};
    assert_int_equal(run("matmul", dt, &o, in, 2, f, NULL), NB_OK);
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                CLOSE(AT(C, b * cst[0] + i * cst[1] + j * cst[2]), ref[(b * M + i) * N + j],
                      atol, rtol);
#undef AT
    free(A);
    free(B);
    free(C);
    free(C0);
    free(ref);
}

static void matmul_with_transposed_and_strided_operands(void **state)
{
    (void)state;
    const int64_t M = 7, K = 5, N = 6;
    /* f32 sums of 5 products of numbers in [-1, 1): a few float ulps */
    const double atol = 1e-5, rtol = 1e-5;
    const int64_t a_rm[3] = {M * K, K, 1}, a_t[3] = {M * K, 1, M}, a_gap[3] = {0, 2 * K, 2};
    const int64_t b_rm[3] = {K * N, N, 1}, b_t[3] = {K * N, 1, K}, b_pad[3] = {0, N + 3, 1};
    const int64_t c_rm[3] = {M * N, N, 1}, c_t[3] = {M * N, 1, M}, c_gap[3] = {2 * M * N, 2 * N, 2};
    matmul_case(NB_DTYPE_F32, 1, M, K, N, a_rm, b_rm, c_rm, 1, 0, atol, rtol);
    matmul_case(NB_DTYPE_F32, 3, M, K, N, a_t, b_rm, c_rm, 1, 0, atol, rtol);
    matmul_case(NB_DTYPE_F32, 3, M, K, N, a_rm, b_t, c_rm, 0.5, 2, atol, rtol);
    matmul_case(NB_DTYPE_F32, 2, M, K, N, a_gap, b_pad, c_rm, 1, 0, atol, rtol); /* copy path, batch stride 0 */
    matmul_case(NB_DTYPE_F32, 2, M, K, N, a_t, b_t, c_t, 1, 1, atol, rtol);      /* column-major out */
    matmul_case(NB_DTYPE_F32, 2, M, K, N, a_rm, b_rm, c_gap, 1, 0.5, atol, rtol); /* strided out */
    matmul_case(NB_DTYPE_F64, 2, M, K, N, a_t, b_pad, c_rm, 1, 0, 1e-13, 1e-13);
    const int64_t one_rm[3] = {K, K, 1}, one_b[3] = {K, 1, 1}, one_c[3] = {1, 1, 1};
    matmul_case(NB_DTYPE_F32, 1, 1, K, 1, one_rm, one_b, one_c, 1, 0, atol, rtol); /* dot */

    int32_t ia[6] = {1, 2, 3, 4, 5, 6}, ib[6] = {1, -1, 2, 0, 0, 3}, ic[4];
    const int64_t s23[3] = {1, 2, 3}, s32[3] = {1, 3, 2}, s22[3] = {1, 2, 2};
    const int64_t t23[3] = {6, 3, 1}, t32[3] = {6, 2, 1}, t22[3] = {4, 2, 1};
    nb_operand o = opd(ic, NB_DTYPE_I32, 3, s22, t22);
    nb_operand in[2] = {opd(ia, NB_DTYPE_I32, 3, s23, t23), opd(ib, NB_DTYPE_I32, 3, s32, t32)};
    const double f[2] = {1, 0};
    assert_int_equal(run("matmul", NB_DTYPE_I32, &o, in, 2, f, NULL), NB_OK);
    const int32_t iref[4] = {1 * 1 + 2 * 2 + 0, -1 + 0 + 9, 4 + 10 + 0, -4 + 0 + 18};
    assert_memory_equal(ic, iref, sizeof iref);
}

/* Threads of this process, from /proc (the test runs on Linux). */
static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Leak checkers stop the world at exit; worker threads still alive then made LeakSanitizer
 * crash. A matmul large enough for OpenBLAS's threads and an add large enough for OpenMP's,
 * then shutdown: one thread is left, and both pools start again on their next use. */
static void shutdown_joins_every_worker_thread(void **state)
{
    (void)state;
    const int64_t n = 512;
    float *a = calloc((size_t)(n * n), sizeof *a), *c = calloc((size_t)(n * n), sizeof *c);
    assert_non_null(a);
    assert_non_null(c);
    for (int64_t k = 0; k < n * n; k++)
        a[k] = (float)(k % 7) - 3;
    const int64_t shape[3] = {1, n, n}, strides[3] = {n * n, n, 1};
    for (int round = 0; round < 2; round++) {
        nb_operand o = opd(c, NB_DTYPE_F32, 3, shape, strides);
        nb_operand in[2] = {opd(a, NB_DTYPE_F32, 3, shape, strides),
                            opd(a, NB_DTYPE_F32, 3, shape, strides)};
        const double f[2] = {1, 0};
        assert_int_equal(run("matmul", NB_DTYPE_F32, &o, in, 2, f, NULL), NB_OK);
        assert_int_equal(run("add", NB_DTYPE_F32, &o, in, 2, NULL, NULL), NB_OK);
        assert_float_equal(c[n + 1], 2 * a[n + 1], 0);
        P->shutdown();
        assert_int_equal(thread_count(), 1);
        nb_plugin_entry_fn entry = (nb_plugin_entry_fn)dlsym(plugin_lib, NB_PLUGIN_ENTRY_SYMBOL);
        P = entry(&host);
        assert_non_null(P);
    }
    free(a);
    free(c);
}

/* The device name says what runs: CPU model, the ISA level in use, the BLAS and its core. */
static void device_name_names_isa_blas_and_core(void **state)
{
    (void)state;
    char name[512];
    assert_int_equal(P->device_name(0, name, sizeof name), NB_OK);
    assert_non_null(strstr(name, "; ISA "));
    assert_non_null(strstr(name, "; BLAS "));
    assert_non_null(strstr(name, ", core "));
    assert_non_null(strstr(name, " threads"));
    const char *cap = getenv("NABLA_CPU_ISA");
    if (cap && strcmp(cap, "baseline") == 0) {
        assert_non_null(strstr(name, "ISA baseline x86-64"));
        if (strstr(name, "OpenBLAS") && !getenv("OPENBLAS_CORETYPE"))
            assert_non_null(strstr(name, "core Prescott"));
    }
    char tiny[8];
    assert_int_equal(P->device_name(0, tiny, sizeof tiny), NB_OK);
    assert_int_equal(strlen(tiny), sizeof tiny - 1);
    assert_int_equal(P->device_name(1, name, sizeof name), NB_DEVICE_OUT_OF_RANGE);
}

/* ---- conv2d ----
 * The plugin lowers convolutions three ways (NBC_CONV_PATH); ctest runs this file once per way. */

typedef struct conv_case {
    int64_t N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, G;
} conv_case;

static int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d)
{
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

/* The naive 7-loop convolution and its two adjoints, in double. mode 0: y from x, w;
 * 1: dx from dy, w; 2: dw from dy, x. Outputs must be zeroed by the caller. */
static void conv_ref(const conv_case *c, int mode, double *x, double *w, double *y)
{
    int64_t OH = out_size(c->H, c->kh, c->sh, c->ph, c->dh);
    int64_t OW = out_size(c->W, c->kw, c->sw, c->pw, c->dw);
    int64_t Cg = c->C / c->G, Og = c->O / c->G;
    for (int64_t n = 0; n < c->N; n++)
        for (int64_t o = 0; o < c->O; o++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++)
                    for (int64_t ci = 0; ci < Cg; ci++)
                        for (int64_t ki = 0; ki < c->kh; ki++)
                            for (int64_t kj = 0; kj < c->kw; kj++) {
                                int64_t ih = oh * c->sh - c->ph + ki * c->dh;
                                int64_t iw = ow * c->sw - c->pw + kj * c->dw;
                                if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W)
                                    continue;
                                int64_t cx = (o / Og) * Cg + ci;
                                double *xv = &x[((n * c->C + cx) * c->H + ih) * c->W + iw];
                                double *wv = &w[((o * Cg + ci) * c->kh + ki) * c->kw + kj];
                                double *yv = &y[((n * c->O + o) * OH + oh) * OW + ow];
                                if (mode == 0)
                                    *yv += *xv * *wv;
                                else if (mode == 1)
                                    *xv += *yv * *wv;
                                else
                                    *wv += *yv * *xv;
                            }
}

static void conv_check(const conv_case *c, nb_dtype dt, double atol, double rtol)
{
    int64_t OH = out_size(c->H, c->kh, c->sh, c->ph, c->dh);
    int64_t OW = out_size(c->W, c->kw, c->sw, c->pw, c->dw);
    const int64_t xs[4] = {c->N, c->C, c->H, c->W}, ws[4] = {c->O, c->C / c->G, c->kh, c->kw};
    const int64_t ys[4] = {c->N, c->O, OH, OW};
    int64_t xt[4], wt[4], yt[4];
    size_t nx = 1, nw = 1, ny = 1;
    for (int d = 3; d >= 0; d--) {
        xt[d] = (int64_t)nx;
        wt[d] = (int64_t)nw;
        yt[d] = (int64_t)ny;
        nx *= xs[d];
        nw *= ws[d];
        ny *= ys[d];
    }
    size_t es = dt == NB_DTYPE_F32 ? 4 : 8;
    double *x = calloc(nx, 8), *w = calloc(nw, 8), *y = calloc(ny, 8);
    double *rx = calloc(nx, 8), *rw = calloc(nw, 8), *ry = calloc(ny, 8);
    char *kx = calloc(nx, es), *kw = calloc(nw, es), *ky = calloc(ny, es);
    fill_f64(x, nx);
    fill_f64(w, nw);
    fill_f64(y, ny); /* doubles as the incoming gradient for the backwards */
#define STORE(buf, src, n)                                                                  \
    for (size_t k = 0; k < (n); k++)                                                        \
        dt == NB_DTYPE_F32 ? (void)(((float *)(buf))[k] = (float)(src)[k])                  \
                           : (void)(((double *)(buf))[k] = (src)[k])
#define LOAD(buf, k) (dt == NB_DTYPE_F32 ? (double)((float *)(buf))[k] : ((double *)(buf))[k])
    /* the kernel sees float32-rounded inputs, so does the reference */
    for (size_t k = 0; k < nx; k++)
        x[k] = dt == NB_DTYPE_F32 ? (float)x[k] : x[k];
    for (size_t k = 0; k < nw; k++)
        w[k] = dt == NB_DTYPE_F32 ? (float)w[k] : w[k];
    for (size_t k = 0; k < ny; k++)
        y[k] = dt == NB_DTYPE_F32 ? (float)y[k] : y[k];
    const int64_t iv[7] = {c->sh, c->sw, c->ph, c->pw, c->dh, c->dw, c->G};

    /* forward */
    conv_ref(c, 0, x, w, ry);
    STORE(kx, x, nx);
    STORE(kw, w, nw);
    nb_operand o = opd(ky, dt, 4, ys, yt);
    nb_operand in[2] = {opd(kx, dt, 4, xs, xt), opd(kw, dt, 4, ws, wt)};
    assert_int_equal(run("conv2d", dt, &o, in, 2, NULL, iv), NB_OK);
    for (size_t k = 0; k < ny; k++)
        CLOSE(LOAD(ky, k), ry[k], atol, rtol);

    /* backward input: dx from dy = y */
    conv_ref(c, 1, rx, w, y);
    STORE(ky, y, ny);
    memset(kx, 0x7f, nx * es); /* garbage: the kernel must overwrite */
    o = opd(kx, dt, 4, xs, xt);
    in[0] = opd(ky, dt, 4, ys, yt);
    in[1] = opd(kw, dt, 4, ws, wt);
    assert_int_equal(run("conv2d_backward_input", dt, &o, in, 2, NULL, iv), NB_OK);
    for (size_t k = 0; k < nx; k++)
        CLOSE(LOAD(kx, k), rx[k], atol, rtol);

    /* backward weight: dw from dy = y and x */
    conv_ref(c, 2, x, rw, y);
    STORE(kx, x, nx);
    memset(kw, 0x7f, nw * es);
    o = opd(kw, dt, 4, ws, wt);
    in[0] = opd(ky, dt, 4, ys, yt);
    in[1] = opd(kx, dt, 4, xs, xt);
    assert_int_equal(run("conv2d_backward_weight", dt, &o, in, 2, NULL, iv), NB_OK);
    for (size_t k = 0; k < nw; k++)
        CLOSE(LOAD(kw, k), rw[k], atol, rtol);
#undef STORE
#undef LOAD
    free(x), free(w), free(y), free(rx), free(rw), free(ry), free(kx), free(kw), free(ky);
}

static void conv2d_and_backwards_match_the_naive_loops(void **state)
{
    (void)state;
    /* f32 dot products of up to a few hundred terms in [-1, 1) */
    const double atol = 1e-4, rtol = 1e-4;
    const conv_case plain = {2, 3, 8, 7, 4, 3, 3, 1, 1, 0, 0, 1, 1, 1};
    const conv_case mixed = {2, 4, 11, 10, 6, 3, 2, 2, 2, 1, 2, 2, 2, 2}; /* stride 2, pad, dil 2, groups 2 */
    const conv_case lenet1 = {4, 1, 32, 32, 6, 3, 3, 1, 1, 0, 0, 1, 1, 1};
    const conv_case unit = {3, 4, 9, 7, 6, 3, 2, 1, 1, 2, 1, 2, 1, 2}; /* stride 1, pad, dil, groups */
    conv_check(&plain, NB_DTYPE_F32, atol, rtol);
    conv_check(&unit, NB_DTYPE_F32, atol, rtol);
    conv_check(&unit, NB_DTYPE_F64, 1e-12, 1e-12);
    conv_check(&mixed, NB_DTYPE_F32, atol, rtol);
    conv_check(&lenet1, NB_DTYPE_F32, atol, rtol);
    conv_check(&mixed, NB_DTYPE_F64, 1e-12, 1e-12);
}

static void conv2d_rejects_mismatched_shapes(void **state)
{
    (void)state;
    float x[2 * 3 * 5 * 5] = {0}, w[4 * 3 * 3 * 3] = {0}, y[2 * 4 * 3 * 3];
    const int64_t xs[4] = {2, 3, 5, 5}, ws[4] = {4, 3, 3, 3}, ys[4] = {2, 4, 4, 4};
    const int64_t xt[4] = {75, 25, 5, 1}, wt[4] = {27, 9, 3, 1}, yt[4] = {64, 16, 4, 1};
    const int64_t iv[7] = {1, 1, 0, 0, 1, 1, 1};
    nb_operand o = opd(y, NB_DTYPE_F32, 4, ys, yt);
    nb_operand in[2] = {opd(x, NB_DTYPE_F32, 4, xs, xt), opd(w, NB_DTYPE_F32, 4, ws, wt)};
    assert_int_equal(run("conv2d", NB_DTYPE_F32, &o, in, 2, NULL, iv), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(last_error, "expected (2,4,3,3)"));
}

/* ---- pooling ---- */

/* Pools x (N, C, H, W) with kernel k, stride s, padding p against a naive loop (first index of
 * the maximum wins, a NaN wins over everything), then checks the backward's scatter-add. */
static void pool_check(int64_t N, int64_t C, int64_t H, int64_t W, const int64_t *iv, bool nan)
{
    const int64_t KH = iv[0], KW = iv[1], SH = iv[2], SW = iv[3], PH = iv[4], PW = iv[5];
    const int64_t OH = (H + 2 * PH - KH) / SH + 1, OW = (W + 2 * PW - KW) / SW + 1;
    const int64_t nx = N * C * H * W, ny = N * C * OH * OW;
    float *x = malloc(nx * 4), *y = malloc(ny * 4), *dy = malloc(ny * 4), *dx = malloc(nx * 4);
    int64_t *idx = malloc(ny * 8);
    double *rdx = calloc(nx, 8);
    fill_f32(x, nx);
    fill_f32(dy, ny);
    x[1] = x[0];         /* a tie inside the first window */
    x[W + 1] = x[W];     /* and one across its rows */
    if (nan)
        x[nx - 1] = NAN; /* the last plane takes the careful path */
    const int64_t xs[4] = {N, C, H, W}, xt[4] = {C * H * W, H * W, W, 1};
    const int64_t ys[4] = {N, C, OH, OW}, yt[4] = {C * OH * OW, OH * OW, OW, 1};
    nb_operand o = opd(y, NB_DTYPE_F32, 4, ys, yt);
    nb_operand in[2] = {opd(x, NB_DTYPE_F32, 4, xs, xt), opd(idx, NB_DTYPE_I64, 4, ys, yt)};
    int64_t pv[6];
    memcpy(pv, iv, sizeof pv);
    assert_int_equal(run("max_pool2d", NB_DTYPE_F32, &o, in, 2, NULL, pv), NB_OK);
    for (int64_t p = 0; p < N * C; p++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                float best = -INFINITY;
                int64_t bi = -1;
                for (int64_t i = oh * SH - PH; i < oh * SH - PH + KH; i++)
                    for (int64_t j = ow * SW - PW; j < ow * SW - PW + KW; j++) {
                        if (i < 0 || i >= H || j < 0 || j >= W || (bi >= 0 && isnan(best)))
                            continue;
                        float v = x[p * H * W + i * W + j];
                        if (bi < 0 || v > best || isnan(v)) {
                            best = v;
                            bi = i * W + j;
                        }
                    }
                int64_t k = (p * OH + oh) * OW + ow;
                if (isnan(best))
                    assert_true(isnan(y[k]));
                else
                    assert_true(y[k] == best);
                assert_int_equal(idx[k], bi);
                rdx[p * H * W + bi] += dy[k];
            }
    o = opd(dx, NB_DTYPE_F32, 4, xs, xt);
    in[0] = opd(dy, NB_DTYPE_F32, 4, ys, yt);
    assert_int_equal(run("max_pool2d_backward", NB_DTYPE_F32, &o, in, 2, NULL, pv), NB_OK);
    /* at most a few float additions per element */
    for (int64_t k = 0; k < nx; k++)
        CLOSE(dx[k], rdx[k], 1e-6, 1e-6);
    free(x), free(y), free(dy), free(dx), free(idx), free(rdx);
}

static void max_pool2d_and_backward_match_the_naive_loops(void **state)
{
    (void)state;
    const int64_t general[6] = {3, 2, 2, 2, 1, 1}, two[6] = {2, 2, 2, 2, 0, 0};
    pool_check(2, 3, 7, 6, general, false);
    pool_check(2, 3, 7, 6, general, true);
    pool_check(3, 2, 9, 8, two, false); /* the 2x2 fast path, odd H drops a row */
    pool_check(3, 2, 8, 8, two, true);
}

/* ---- softmax, random, optimizers ---- */

static void softmax_family_matches_reference(void **state)
{
    (void)state;
    enum { R = 3, L = 7 };
    double x[R * L], g[R * L], y[R * L], ly[R * L], out[R * L];
    fill_f64(x, R * L);
    fill_f64(g, R * L);
    x[3] = 50; /* large values must not overflow */
    const int64_t shape[2] = {R, L}, st[2] = {L, 1}, dim[1] = {1};
    nb_operand o = opd(y, NB_DTYPE_F64, 2, shape, st), in[2] = {opd(x, NB_DTYPE_F64, 2, shape, st)};
    assert_int_equal(run("softmax", NB_DTYPE_F64, &o, in, 1, NULL, dim), NB_OK);
    o.handle = ly;
    assert_int_equal(run("log_softmax", NB_DTYPE_F64, &o, in, 1, NULL, dim), NB_OK);
    for (int r = 0; r < R; r++) {
        double m = -INFINITY, s = 0, gs = 0, gy = 0;
        for (int j = 0; j < L; j++)
            m = fmax(m, x[r * L + j]);
        for (int j = 0; j < L; j++)
            s += exp(x[r * L + j] - m);
        for (int j = 0; j < L; j++) {
            CLOSE(y[r * L + j], exp(x[r * L + j] - m) / s, 1e-15, 1e-13);
            CLOSE(ly[r * L + j], x[r * L + j] - m - log(s), 1e-15, 1e-13);
            gs += g[r * L + j];
            gy += g[r * L + j] * y[r * L + j];
        }
        in[0] = opd(g, NB_DTYPE_F64, 2, shape, st);
        in[1] = opd(y, NB_DTYPE_F64, 2, shape, st);
        o.handle = out;
        assert_int_equal(run("softmax_backward", NB_DTYPE_F64, &o, in, 2, NULL, dim), NB_OK);
        for (int j = 0; j < L; j++)
            CLOSE(out[r * L + j], y[r * L + j] * (g[r * L + j] - gy), 1e-14, 1e-12);
        in[1] = opd(ly, NB_DTYPE_F64, 2, shape, st);
        assert_int_equal(run("log_softmax_backward", NB_DTYPE_F64, &o, in, 2, NULL, dim), NB_OK);
        for (int j = 0; j < L; j++)
            CLOSE(out[r * L + j], g[r * L + j] - exp(ly[r * L + j]) * gs, 1e-14, 1e-12);
        in[0] = opd(x, NB_DTYPE_F64, 2, shape, st);
    }
}

/* Element k in row-major order of out draws Philox counter (k, offset), whatever out's strides. */
static void random_fills_follow_philox_in_row_major_order(void **state)
{
    (void)state;
    float buf[12];
    const int64_t shape[2] = {3, 4}, st[2] = {1, 3}; /* transposed out */
    nb_operand o = opd(buf, NB_DTYPE_F32, 2, shape, st);
    const double f[2] = {-2, 3};
    const int64_t iv[2] = {1234, 77};
    assert_int_equal(run("random_uniform", NB_DTYPE_F32, &o, NULL, 0, f, iv), NB_OK);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) {
            double u = nb_philox_uniform(1234, 77, (uint64_t)(r * 4 + c), 0);
            assert_true(buf[c * 3 + r] == (float)(-2 + 5 * u));
        }
    double d[12];
    o = opd(d, NB_DTYPE_F64, 2, shape, (const int64_t[]){4, 1});
    assert_int_equal(run("random_normal", NB_DTYPE_F64, &o, NULL, 0, f, iv), NB_OK);
    for (int k = 0; k < 12; k++) {
        double u1, u2;
        nb_philox_normal_parts(1234, 77, (uint64_t)k, &u1, &u2);
        CLOSE(d[k], -2 + 3 * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2), 0, 1e-15);
    }
}

static void sgd_and_adam_steps_match_torch_formulas(void **state)
{
    (void)state;
    enum { n = 5 };
    double w[n], g[n], buf[n], m[n], v[n], rw[n], rbuf[n], rm[n], rv[n];
    fill_f64(w, n);
    fill_f64(g, n);
    fill_f64(buf, n);
    memcpy(rw, w, sizeof w);
    memcpy(rbuf, buf, sizeof buf);
    const int64_t shape[1] = {n}, st[1] = {1};
    const double lr = 0.1, mom = 0.9, damp = 0.1, wd = 0.01;
    nb_operand o = opd(w, NB_DTYPE_F64, 1, shape, st);
    nb_operand in[3] = {opd(g, NB_DTYPE_F64, 1, shape, st), opd(buf, NB_DTYPE_F64, 1, shape, st)};
    const double sgd_f[4] = {lr, mom, damp, wd};
    const int64_t nesterov[2] = {1, 0};
    assert_int_equal(run("sgd_step", NB_DTYPE_F64, &o, in, 2, sgd_f, nesterov), NB_OK);
    for (int k = 0; k < n; k++) {
        double d = g[k] + wd * rw[k];
        rbuf[k] = mom * rbuf[k] + (1 - damp) * d;
        rw[k] -= lr * (d + mom * rbuf[k]); /* nesterov */
        CLOSE(w[k], rw[k], 1e-15, 1e-14);
        CLOSE(buf[k], rbuf[k], 1e-15, 1e-14);
    }
    /* AdamW, third step */
    for (int k = 0; k < n; k++) {
        m[k] = rm[k] = 0.1 * rnd();
        v[k] = rv[k] = fabs(rnd()) * 0.01;
        rw[k] = w[k];
    }
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    in[1] = opd(m, NB_DTYPE_F64, 1, shape, st);
    in[2] = opd(v, NB_DTYPE_F64, 1, shape, st);
    const double adam_f[5] = {lr, b1, b2, eps, wd};
    const int64_t adam_i[2] = {3, 1};
    assert_int_equal(run("adam_step", NB_DTYPE_F64, &o, in, 3, adam_f, adam_i), NB_OK);
    for (int k = 0; k < n; k++) {
        rw[k] *= 1 - lr * wd;
        rm[k] = b1 * rm[k] + (1 - b1) * g[k];
        rv[k] = b2 * rv[k] + (1 - b2) * g[k] * g[k];
        double mh = rm[k] / (1 - pow(b1, 3)), vh = rv[k] / (1 - pow(b2, 3));
        rw[k] -= lr * mh / (sqrt(vh) + eps);
        CLOSE(w[k], rw[k], 1e-12, 1e-10);
        CLOSE(m[k], rm[k], 1e-15, 1e-13);
        CLOSE(v[k], rv[k], 1e-15, 1e-13);
    }
}

int main(int argc, char **argv)
{
    plugin_path = argc > 1 ? argv[1] : "nabla_plugin_cpu_blas.so";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plugin_describes_one_cpu_device),
        cmocka_unit_test(int32_reductions_wrap_around),
        cmocka_unit_test(every_tier1_op_has_float_kernels),
        cmocka_unit_test(add_handles_strides_broadcast_and_offsets),
        cmocka_unit_test(add_large_contiguous_and_in_place),
        cmocka_unit_test(unary_and_scalar_ops_follow_c_semantics),
        cmocka_unit_test(copy_casts_between_dtypes),
        cmocka_unit_test(where_and_comparisons_give_bool),
        cmocka_unit_test(reductions_over_middle_dims),
        cmocka_unit_test(full_reduction_sum_and_nan_max),
        cmocka_unit_test(argmax_takes_the_first_of_ties),
        cmocka_unit_test(gather_checks_indexes),
        cmocka_unit_test(scatter_add_accumulates_duplicates),
        cmocka_unit_test(matmul_with_transposed_and_strided_operands),
        cmocka_unit_test(conv2d_and_backwards_match_the_naive_loops),
        cmocka_unit_test(conv2d_rejects_mismatched_shapes),
        cmocka_unit_test(max_pool2d_and_backward_match_the_naive_loops),
        cmocka_unit_test(softmax_family_matches_reference),
        cmocka_unit_test(random_fills_follow_philox_in_row_major_order),
        cmocka_unit_test(sgd_and_adam_steps_match_torch_formulas),
        cmocka_unit_test(device_name_names_isa_blas_and_core),
        cmocka_unit_test(shutdown_joins_every_worker_thread),
    };
    return cmocka_run_group_tests(tests, load_plugin, unload_plugin);
}
