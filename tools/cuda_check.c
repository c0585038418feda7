/* cuda_check.c - nabla-cuda-check: the checks of issue 16 that only a GPU can settle, each
 * printing one line "PASS|FAIL|SKIP name: detail" (tools/gpu-check.sh runs it): bit-identical
 * random numbers, the conversion rule, bool bytes, deferred index errors, large grids (rows,
 * batches, more than 2^31 elements), strides beyond INT_MAX, out-of-memory recovery.
 * Usage: nabla-cuda-check [--device cuda:N] [--only NAME] [--no-large]. Exit 0 when nothing
 * failed, 1 otherwise, 77 when there is no CUDA device. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nabla.h"

static const char *dev = "cuda:0";
static int n_pass, n_fail, n_skip;

static void report(const char *verdict, const char *name, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("%-4s %s: %s\n", verdict, name, detail);
    fflush(stdout);
    if (verdict[0] == 'P')
        n_pass++;
    else if (verdict[0] == 'F')
        n_fail++;
    else
        n_skip++;
}

/* Reports a NULL tensor: SKIP when the device ran out of memory (the large checks need tens of
 * GB), FAIL otherwise. Returns true when `t` is NULL. */
static bool failed_to_make(const char *name, const nb_tensor *t, const char *what)
{
    if (t)
        return false;
    nb_status st = nb_last_status();
    report(st == NB_OUT_OF_MEMORY ? "SKIP" : "FAIL", name, "%s: %s (%s)", what, nb_last_error(),
           nb_status_str(st));
    nb_clear_error();
    return true;
}

/* The tensor's elements on the host (malloc'd; NULL and FAIL reported on error). */
static void *host_copy(const char *name, const nb_tensor *t)
{
    size_t bytes = (size_t)nb_tensor_numel(t) * nb_dtype_size(nb_tensor_dtype(t));
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        report("FAIL", name, "out of host memory for %zu bytes", bytes);
        return NULL;
    }
    nb_status st = nb_tensor_copy_to_host(t, p, bytes);
    if (st != NB_OK) {
        report("FAIL", name, "copy to host: %s (%s)", nb_last_error(), nb_status_str(st));
        nb_clear_error();
        free(p);
        return NULL;
    }
    return p;
}

/* Bitwise comparison of the same computation on cpu and on the device. */
static void same_bits(const char *name, nb_tensor *on_cpu, nb_tensor *on_dev)
{
    if (failed_to_make(name, on_cpu, "cpu tensor") || failed_to_make(name, on_dev, "device tensor"))
        goto out;
    uint8_t *a = host_copy(name, on_cpu), *b = a ? host_copy(name, on_dev) : NULL;
    if (a && b) {
        size_t es = nb_dtype_size(nb_tensor_dtype(on_cpu));
        int64_t n = nb_tensor_numel(on_cpu), diff = 0, first = -1;
        for (int64_t k = 0; k < n; k++)
            if (memcmp(a + k * es, b + k * es, es) != 0 && diff++ == 0)
                first = k;
        if (diff == 0) {
            report("PASS", name, "%" PRId64 " %s values bit-identical to the cpu", n,
                   nb_dtype_name(nb_tensor_dtype(on_cpu)));
        } else {
            double x = 0, y = 0;
            if (es == 8 && nb_tensor_dtype(on_cpu) == NB_DTYPE_F64) {
                memcpy(&x, a + first * es, 8);
                memcpy(&y, b + first * es, 8);
            } else if (nb_tensor_dtype(on_cpu) == NB_DTYPE_F32) {
                float fx, fy;
                memcpy(&fx, a + first * es, 4);
                memcpy(&fy, b + first * es, 4);
                x = fx;
                y = fy;
            }
            report("FAIL", name, "%" PRId64 " of %" PRId64 " values differ from the cpu; first "
                   "at %" PRId64 ": cpu %.17g, device %.17g", diff, n, first, x, y);
        }
    }
    free(a);
    free(b);
out:
    nb_release(on_cpu);
    nb_release(on_dev);
}

/* ---- checks ---- */

static void random_bits(void)
{
    const int64_t n = 1 << 20;
    nb_dtype types[2] = {NB_DTYPE_F64, NB_DTYPE_F32};
    for (int k = 0; k < 2; k++) {
        char name[64];
        snprintf(name, sizeof name, "random_normal_%s_bits", nb_dtype_name(types[k]));
        nb_manual_seed(1234);
        nb_tensor *c = nb_normal(0.5, 2.0, NB_SHAPE(n), (nb_opts){.dtype = types[k]});
        nb_manual_seed(1234);
        nb_tensor *d = nb_normal(0.5, 2.0, NB_SHAPE(n), (nb_opts){.dtype = types[k], .device = dev});
        same_bits(name, c, d);
        snprintf(name, sizeof name, "random_uniform_%s_bits", nb_dtype_name(types[k]));
        nb_manual_seed(99);
        c = nb_uniform(-0.1, 0.3, NB_SHAPE(n), (nb_opts){.dtype = types[k]});
        nb_manual_seed(99);
        d = nb_uniform(-0.1, 0.3, NB_SHAPE(n), (nb_opts){.dtype = types[k], .device = dev});
        same_bits(name, c, d);
    }
}

static void arange_fill_bits(void)
{
    same_bits("arange_f64_bits", nb_arange(-3.0, 1e5, 0.1, (nb_opts){.dtype = NB_DTYPE_F64}),
              nb_arange(-3.0, 1e5, 0.1, (nb_opts){.dtype = NB_DTYPE_F64, .device = dev}));
    same_bits("arange_f32_bits", nb_arange(-3.0, 1e5, 0.1, (nb_opts){.dtype = NB_DTYPE_F32}),
              nb_arange(-3.0, 1e5, 0.1, (nb_opts){.dtype = NB_DTYPE_F32, .device = dev}));
    /* past 2^24, where a float detour would lose integers */
    same_bits("arange_i64_past_2e24_bits",
              nb_arange(16777000.0, 16778000.0, 1.0, (nb_opts){.dtype = NB_DTYPE_I64}),
              nb_arange(16777000.0, 16778000.0, 1.0, (nb_opts){.dtype = NB_DTYPE_I64, .device = dev}));
    same_bits("fill_f32_bits", nb_full(NB_SHAPE(1000), 0.1, (nb_opts){0}),
              nb_full(NB_SHAPE(1000), 0.1, (nb_opts){.device = dev}));
}

/* float -> u8 / int32 through int64 with wrapping: cpu gives 255 253 44 0 for the first four. */
static void conversions(void)
{
    const char *name = "convert_float_to_u8_i32";
    const float src[6] = {-1.0f, -3.75f, 300.0f, 3e9f, NAN, 1e30f};
    const uint8_t want_u8[6] = {255, 253, 44, 0, 0, 0};
    const int32_t want_i32[6] = {-1, -3, 300, (int32_t)(3000000000LL - 4294967296LL), 0, 0};
    nb_tensor *x = nb_from_data(src, NB_SHAPE(6), (nb_opts){.device = dev});
    nb_tensor *u = nb_to_dtype(x, NB_DTYPE_U8), *i = nb_to_dtype(x, NB_DTYPE_I32);
    if (!failed_to_make(name, u, "to uint8") && !failed_to_make(name, i, "to int32")) {
        uint8_t *gu = host_copy(name, u);
        int32_t *gi = gu ? host_copy(name, i) : NULL;
        if (gu && gi) {
            int bad = -1;
            for (int k = 0; k < 6 && bad < 0; k++)
                if (gu[k] != want_u8[k] || gi[k] != want_i32[k])
                    bad = k;
            if (bad < 0)
                report("PASS", name, "u8 255 253 44 0 0 0, int32 wraps, NaN -> 0");
            else
                report("FAIL", name, "element %d (%g): u8 %u (want %u), int32 %d (want %d)", bad,
                       (double)src[bad], gu[bad], want_u8[bad], gi[bad], want_i32[bad]);
        }
        free(gu);
        free(gi);
    }
    nb_release(x);
    nb_release(u);
    nb_release(i);
}

static void bool_bytes(void)
{
    const char *name = "bool_bytes_nonzero";
    const uint8_t a[4] = {0x00, 0x01, 0xff, 0x02}, b[4] = {0x00, 0xff, 0x01, 0x00};
    nb_tensor *x = nb_from_data(a, NB_SHAPE(4), (nb_opts){.dtype = NB_DTYPE_BOOL, .device = dev});
    nb_tensor *y = nb_from_data(b, NB_SHAPE(4), (nb_opts){.dtype = NB_DTYPE_BOOL, .device = dev});
    nb_tensor *f = nb_to_dtype(x, NB_DTYPE_F32), *z = nb_logical_xor(x, y);
    if (!failed_to_make(name, f, "to float32") && !failed_to_make(name, z, "logical_xor")) {
        float *gf = host_copy(name, f);
        uint8_t *gz = gf ? host_copy(name, z) : NULL;
        if (gf && gz) {
            bool ok = gf[0] == 0 && gf[1] == 1 && gf[2] == 1 && gf[3] == 1 && gz[0] == 0 &&
                      gz[1] == 0 && gz[2] == 0 && gz[3] == 1;
            report(ok ? "PASS" : "FAIL", name, "bool->float %g %g %g %g (want 0 1 1 1), xor %u %u "
                   "%u %u (want 0 0 0 1)", gf[0], gf[1], gf[2], gf[3], gz[0], gz[1], gz[2], gz[3]);
        }
        free(gf);
        free(gz);
    }
    nb_release(x);
    nb_release(y);
    nb_release(f);
    nb_release(z);
}

/* A bad gather index is an error at the next synchronisation, and the device works after it. */
static void index_error(void)
{
    const char *name = "gather_bad_index_reported_at_sync";
    const float v[6] = {1, 2, 3, 4, 5, 6};
    const int64_t idx[2] = {0, 7};
    nb_tensor *x = nb_from_data(v, NB_SHAPE(2, 3), (nb_opts){.device = dev});
    nb_tensor *i = nb_from_data(idx, NB_SHAPE(2, 1), (nb_opts){.dtype = NB_DTYPE_I64, .device = dev});
    nb_tensor *g = nb_gather(x, 1, i);
    nb_status at_op = g ? NB_OK : nb_last_status();
    nb_clear_error();
    nb_status at_sync = nb_synchronize(dev);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", nb_last_error());
    nb_clear_error();
    nb_status after = nb_synchronize(dev);
    nb_tensor *ok = nb_add_scalar(x, 1.0);
    float *got = ok ? host_copy(name, ok) : NULL;
    double first = got ? got[0] : 0;
    bool works = got != NULL;
    free(got);
    if ((at_op == NB_INDEX_OUT_OF_RANGE || at_sync == NB_INDEX_OUT_OF_RANGE) && after == NB_OK &&
        works && first == 2)
        report("PASS", name, "op %s, sync %s (%s), then clean", nb_status_str(at_op),
               nb_status_str(at_sync), msg);
    else
        report("FAIL", name, "op %s, sync %s (%s), next sync %s, later op %s", nb_status_str(at_op),
               nb_status_str(at_sync), msg, nb_status_str(after), works ? "ok" : nb_last_error());
    nb_clear_error();
    nb_release(x);
    nb_release(i);
    nb_release(g);
    nb_release(ok);
}

/* |a - b| <= atol + rtol |b| elementwise, a on the device and b on the cpu. */
static void close_to_cpu(const char *name, nb_tensor *on_dev, nb_tensor *on_cpu, double atol,
                         double rtol)
{
    if (failed_to_make(name, on_dev, "device result") || failed_to_make(name, on_cpu, "cpu result"))
        goto out;
    nb_tensor *a64 = nb_to_dtype(on_dev, NB_DTYPE_F64), *b64 = nb_to_dtype(on_cpu, NB_DTYPE_F64);
    double *a = a64 ? host_copy(name, a64) : NULL, *b = a && b64 ? host_copy(name, b64) : NULL;
    if (a && b) {
        int64_t n = nb_tensor_numel(on_cpu), bad = 0, at = -1;
        for (int64_t k = 0; k < n; k++)
            if (!(fabs(a[k] - b[k]) <= atol + rtol * fabs(b[k])) && bad++ == 0)
                at = k;
        if (bad == 0)
            report("PASS", name, "%" PRId64 " values within atol %g rtol %g of the cpu", n, atol,
                   rtol);
        else
            report("FAIL", name, "%" PRId64 " of %" PRId64 " values off; first at %" PRId64
                   ": device %.9g, cpu %.9g", bad, n, at, a[at], b[at]);
    } else if (!a64 || !b64) {
        failed_to_make(name, NULL, "to float64");
    }
    free(a);
    free(b);
    nb_release(a64);
    nb_release(b64);
out:
    nb_release(on_dev);
    nb_release(on_cpu);
}

/* matmul with more rows than a 65,535-block grid dimension covers, and with many batches. */
static void big_grids(void)
{
    nb_manual_seed(5);
    nb_tensor *a = nb_randn(NB_SHAPE(1100000, 16), (nb_opts){0});
    nb_tensor *b = nb_randn(NB_SHAPE(16, 8), (nb_opts){0});
    nb_tensor *da = nb_to_device(a, dev), *db = nb_to_device(b, dev);
    close_to_cpu("matmul_rows_1100000", nb_matmul(da, db), nb_matmul(a, b), 1e-4, 1e-4);
    nb_release(a);
    nb_release(b);
    nb_release(da);
    nb_release(db);
    a = nb_randn(NB_SHAPE(70000, 2, 3), (nb_opts){0});
    b = nb_randn(NB_SHAPE(70000, 3, 2), (nb_opts){0});
    da = nb_to_device(a, dev);
    db = nb_to_device(b, dev);
    close_to_cpu("matmul_batch_70000", nb_matmul(da, db), nb_matmul(a, b), 1e-5, 1e-5);
    nb_release(a);
    nb_release(b);
    nb_release(da);
    nb_release(db);
    a = nb_randn(NB_SHAPE(64, 100000), (nb_opts){0});
    da = nb_to_device(a, dev);
    close_to_cpu("softmax_f32_rows_100000", nb_softmax(da, 1), nb_softmax(a, 1), 1e-9, 1e-5);
    close_to_cpu("log_softmax_f32_rows_100000", nb_log_softmax(da, 1), nb_log_softmax(a, 1), 1e-5,
                 1e-5);
    int32_t d0 = 0;
    close_to_cpu("sum_f32_dim0_coalesced", nb_sum(da, &d0, 1, false), nb_sum(a, &d0, 1, false),
                 1e-4, 1e-5);
    nb_tensor *a64 = nb_to_dtype(a, NB_DTYPE_F64);
    close_to_cpu("sum_f32_all_6400000_vs_f64", nb_sum(da, NULL, 0, false),
                 nb_sum(a64, NULL, 0, false), 1e-2, 1e-6);
    nb_release(a64);
    nb_release(a);
    nb_release(da);
}

/* Elementwise, reduction and copy kernels over more than 2^31 elements. */
static void past_2e31(void)
{
    const int64_t n = ((int64_t)1 << 31) + 4096;
    const char *name = "elementwise_u8_2e31_plus_4096";
    nb_tensor *x = nb_full(NB_SHAPE(n), 1.0, (nb_opts){.dtype = NB_DTYPE_U8, .device = dev});
    if (!failed_to_make(name, x, "2 GiB uint8 tensor")) {
        nb_tensor *y = nb_add_scalar(x, 2.0);
        nb_tensor *tail = y ? nb_narrow(y, 0, n - 16, 16) : NULL;
        if (!failed_to_make(name, tail, "add_scalar")) {
            uint8_t *g = host_copy(name, tail);
            if (g) {
                int bad = 0;
                for (int k = 0; k < 16; k++)
                    bad += g[k] != 3;
                report(bad ? "FAIL" : "PASS", name, "last 16 elements of fill(1) + 2: %d wrong",
                       bad);
            }
            free(g);
        }
        nb_release(tail);
        nb_release(y);
    }
    nb_release(x);

    name = "sum_f32_2e31_plus_1024";
    const int64_t m = ((int64_t)1 << 31) + 1024;
    x = nb_ones(NB_SHAPE(m), (nb_opts){.device = dev});
    if (!failed_to_make(name, x, "8 GiB float32 tensor")) {
        nb_tensor *s = nb_sum(x, NULL, 0, false);
        double v = 0;
        if (!failed_to_make(name, s, "sum") && nb_item(s, &v) == NB_OK)
            report(v == (double)m ? "PASS" : "FAIL", name, "sum of ones %.17g, want %" PRId64,
                   v, m);
        nb_release(s);
    }
    nb_release(x);
}

/* A view whose row stride exceeds INT_MAX goes through matmul's dense copy, not an error. */
static void stride_past_int_max(void)
{
    const char *name = "matmul_row_stride_past_int_max";
    const int64_t w = ((int64_t)1 << 31) + 64;
    nb_tensor *big = nb_zeros(NB_SHAPE(2, w), (nb_opts){.device = dev});
    if (failed_to_make(name, big, "2 x (2^31 + 64) float32 tensor (17 GB)"))
        return;
    nb_manual_seed(7);
    nb_tensor *a = nb_randn(NB_SHAPE(2, 4), (nb_opts){0}), *b = nb_randn(NB_SHAPE(4, 3), (nb_opts){0});
    nb_tensor *view = nb_narrow(big, 1, 0, 4), *db = nb_to_device(b, dev);
    nb_status st = view ? nb_tensor_copy_(view, a) : nb_last_status();
    if (st != NB_OK)
        report("FAIL", name, "copy into the view: %s", nb_last_error());
    else
        close_to_cpu(name, nb_matmul(view, db), nb_matmul(a, b), 1e-5, 1e-5);
    nb_clear_error();
    nb_release(view);
    nb_release(db);
    nb_release(a);
    nb_release(b);
    nb_release(big);
}

/* An allocation beyond the device's memory fails cleanly and the next op works. */
static void oom_recovers(void)
{
    const char *name = "out_of_memory_then_ok";
    nb_tensor *huge = nb_empty(NB_SHAPE((int64_t)1 << 42), (nb_opts){.device = dev}); /* 16 TiB */
    nb_status st = huge ? NB_OK : nb_last_status();
    nb_clear_error();
    nb_tensor *x = nb_ones(NB_SHAPE(1000), (nb_opts){.device = dev});
    nb_tensor *s = x ? nb_sum(x, NULL, 0, false) : NULL;
    double v = 0;
    bool ok = s && nb_item(s, &v) == NB_OK && v == 1000;
    report(!huge && st == NB_OUT_OF_MEMORY && ok ? "PASS" : "FAIL", name,
           "16 TiB alloc: %s; then sum of 1000 ones: %s %g", nb_status_str(st),
           ok ? "ok" : nb_last_error(), v);
    nb_clear_error();
    nb_release(huge);
    nb_release(x);
    nb_release(s);
}

/* Signs of zeros as the cpu has them: abs(-0.0), maximum/minimum of -0.0 and 0.0. */
static void signed_zeros(void)
{
    const float a[2] = {-0.0f, 0.0f}, b[2] = {0.0f, -0.0f};
    nb_tensor *ca = nb_from_data(a, NB_SHAPE(2), (nb_opts){0}), *cb = nb_from_data(b, NB_SHAPE(2), (nb_opts){0});
    nb_tensor *da = nb_to_device(ca, dev), *db = nb_to_device(cb, dev);
    same_bits("abs_signed_zero_bits", nb_abs(ca), nb_abs(da));
    same_bits("maximum_signed_zero_bits", nb_maximum(ca, cb), nb_maximum(da, db));
    same_bits("minimum_signed_zero_bits", nb_minimum(ca, cb), nb_minimum(da, db));
    nb_release(ca);
    nb_release(cb);
    nb_release(da);
    nb_release(db);
}

typedef struct check {
    const char *name;
    void (*fn)(void);
    bool large; /* needs tens of GB of device memory */
} check;

static const check checks[] = {
    {"random", random_bits, false},        {"arange_fill", arange_fill_bits, false},
    {"conversions", conversions, false},   {"bool_bytes", bool_bytes, false},
    {"index_error", index_error, false},   {"signed_zeros", signed_zeros, false},
    {"big_grids", big_grids, false},       {"oom", oom_recovers, false},
    {"past_2e31", past_2e31, true},        {"stride", stride_past_int_max, true},
};

int main(int argc, char **argv)
{
    const char *only = NULL;
    bool large = true;
    for (int k = 1; k < argc; k++) {
        if (strcmp(argv[k], "--device") == 0 && k + 1 < argc)
            dev = argv[++k];
        else if (strcmp(argv[k], "--only") == 0 && k + 1 < argc)
            only = argv[++k];
        else if (strcmp(argv[k], "--no-large") == 0)
            large = false;
        else {
            fprintf(stderr, "usage: nabla-cuda-check [--device cuda:N] [--only NAME] "
                    "[--no-large]\nchecks:");
            for (size_t c = 0; c < sizeof checks / sizeof checks[0]; c++)
                fprintf(stderr, " %s", checks[c].name);
            fputc('\n', stderr);
            return 2;
        }
    }
    if (nb_init() != NB_OK) {
        printf("SKIP all: nb_init failed: %s\n", nb_last_error());
        return 77;
    }
    char type[32];
    snprintf(type, sizeof type, "%.*s", (int)strcspn(dev, ":"), dev);
    int n = nb_device_count(type);
    if (n <= 0) {
        const char *why = "";
        for (size_t k = 0; k < nb_plugin_count(); k++) {
            nb_plugin_info info;
            if (nb_plugin_get(k, &info) == NB_OK && strcmp(info.name, type) == 0)
                why = info.note;
        }
        printf("SKIP all: no %s device (%s)\n", type, why[0] ? why : nb_last_error());
        nb_shutdown();
        return 77;
    }
    for (size_t c = 0; c < sizeof checks / sizeof checks[0]; c++) {
        if (only && strcmp(only, checks[c].name) != 0)
            continue;
        if (checks[c].large && !large) {
            report("SKIP", checks[c].name, "--no-large given");
            continue;
        }
        checks[c].fn();
    }
    printf("nabla-cuda-check on %s: %d passed, %d failed, %d skipped\n", dev, n_pass, n_fail,
           n_skip);
    nb_status st = nb_shutdown();
    if (st != NB_OK)
        printf("FAIL shutdown: %s\n", nb_last_error());
    return n_fail || st != NB_OK ? 1 : 0;
}
