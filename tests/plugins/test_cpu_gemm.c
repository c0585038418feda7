/* test_cpu_gemm.c - the cpu plugin's float32 matmul against a triple loop in double, run once
 * per NABLA_CPU_GEMM path (the own AVX-512 GEMM of cpu_gemm.c, the BLAS library, the fallback
 * where AVX-512 is capped off): transposes, alpha/beta, odd and block-crossing sizes, padded
 * leading dimensions, empty dims. argv[1] is the plugin, argv[2] the sgemm it must report. */
#include <dlfcn.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "nabla_plugin.h"

static const char *plugin_path, *expect_sgemm;
static void *plugin_lib;
static const nb_plugin *P;
static nb_kernel_fn matmul;

static nb_status host_error(nb_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return st;
}

static void host_log(int level, const char *fmt, ...) { (void)level, (void)fmt; }

static const nb_host host = {NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR, sizeof(nb_host),
                             host_error, host_log};

static int load_plugin(void **state)
{
    (void)state;
    plugin_lib = dlopen(plugin_path, RTLD_NOW | RTLD_LOCAL);
    nb_plugin_entry_fn entry =
        plugin_lib ? (nb_plugin_entry_fn)dlsym(plugin_lib, NB_PLUGIN_ENTRY_SYMBOL) : NULL;
    P = entry ? entry(&host) : NULL;
    if (!P) {
        fprintf(stderr, "cannot load %s: %s\n", plugin_path, plugin_lib ? "no entry" : dlerror());
        return -1;
    }
    for (size_t k = 0; k < P->n_kernels; k++)
        if (P->kernels[k].dtype == NB_DTYPE_F32 && strcmp(P->kernels[k].op, "matmul") == 0)
            matmul = P->kernels[k].fn;
    return matmul ? 0 : -1;
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

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float rnd(void) /* in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) * 0x1p-52 - 1.0);
}

/* One rows x cols matrix in a buffer: row-major with row stride ld >= cols, or (trans) stored
 * as its transpose, column stride ld >= rows; the padding holds garbage the product must skip. */
typedef struct mat {
    float *buf;
    int64_t rows, cols, ld;
    bool trans;
    int64_t shape[3], strides[3];
} mat;

static mat mat_new(int64_t rows, int64_t cols, bool trans, int64_t pad)
{
    mat m = {NULL, rows, cols, (trans ? rows : cols) + pad, trans, {1, rows, cols}, {0}};
    const int64_t outer = trans ? cols : rows;
    const size_t n = (size_t)(outer * m.ld) + 1;
    m.buf = malloc(n * sizeof(float));
    assert_non_null(m.buf);
    for (size_t k = 0; k < n; k++)
        m.buf[k] = rnd();
    m.strides[0] = outer * m.ld;
    m.strides[1] = trans ? 1 : m.ld;
    m.strides[2] = trans ? m.ld : 1;
    return m;
}

static float *at(const mat *m, int64_t r, int64_t c)
{
    return m->buf + r * m->strides[1] + c * m->strides[2];
}

static nb_operand operand(mat *m)
{
    return (nb_operand){m->buf, 0, NB_DTYPE_F32, 3, m->shape, m->strides};
}

/* out = alpha * op(A) op(B) + beta * out through the plugin, checked against double sums:
 * |got - ref| <= 1e-5 * (|alpha| sum_k |a b| + |beta c|) + 1e-6, a float32 bound that a
 * dropped k step, a misplaced row or a stale panel breaks by orders of magnitude. */
static void check(int64_t M, int64_t N, int64_t K, bool ta, bool tb, int64_t pad, double alpha,
                  double beta, bool nan_c)
{
    mat A = mat_new(M, K, ta, pad), B = mat_new(K, N, tb, pad), C = mat_new(M, N, false, pad);
    float *c0 = malloc(sizeof(float) * (size_t)(M * N + 1));
    assert_non_null(c0);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            if (nan_c)
                *at(&C, i, j) = NAN;
            c0[i * N + j] = *at(&C, i, j);
        }
    /* the padding of C must come back untouched */
    const float guard = C.ld > N && M > 0 ? C.buf[N] : 0;
    nb_operand in[2] = {operand(&A), operand(&B)}, out = operand(&C);
    nb_kernel_args args = {0, 2, &out, in, {alpha, beta}, {0}};
    assert_int_equal(matmul(&args), NB_OK);
    int64_t bad = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0, sabs = 0;
            for (int64_t p = 0; p < K; p++) {
                const double x = (double)*at(&A, i, p) * *at(&B, p, j);
                s += x;
                sabs += fabs(x);
            }
            const double cb = beta == 0 ? 0 : beta * c0[i * N + j];
            const double ref = alpha * s + cb, got = *at(&C, i, j);
            const double tol = 1e-5 * (fabs(alpha) * sabs + fabs(cb)) + 1e-6;
            if (!(fabs(got - ref) <= tol) && bad++ < 5)
                print_error("M %lld N %lld K %lld ta %d tb %d pad %lld alpha %g beta %g: C[%lld,"
                            "%lld] = %.9g, expected %.9g\n", (long long)M, (long long)N,
                            (long long)K, ta, tb, (long long)pad, alpha, beta, (long long)i,
                            (long long)j, got, ref);
        }
    if (C.ld > N && M > 0 && !(C.buf[N] == guard))
        fail_msg("the padding of C after row 0 was written");
    free(A.buf);
    free(B.buf);
    free(C.buf);
    free(c0);
    if (bad)
        fail_msg("%lld wrong elements", (long long)bad);
}

static void plugin_reports_the_sgemm_it_uses(void **state)
{
    (void)state;
    const char *info = P->device_info(0);
    assert_non_null(info);
    const char *line = strstr(info, "sgemm: ");
    assert_non_null(line);
    if (strncmp(line + 7, expect_sgemm, strlen(expect_sgemm)) != 0)
        fail_msg("device info says '%.80s', expected it to start with 'sgemm: %s'", line,
                 expect_sgemm);
}

static void all_four_transpose_combinations_match_the_loop(void **state)
{
    (void)state;
    for (int t = 0; t < 4; t++) {
        check(37, 45, 29, t & 1, t & 2, 0, 1, 0, false);
        check(100, 70, 600, t & 1, t & 2, 0, 1, 0, false); /* K crosses a KC block */
    }
}

static void alpha_and_beta_scale_as_blas(void **state)
{
    (void)state;
    check(33, 47, 19, false, false, 0, 0.5, 2, false);
    check(33, 47, 19, true, false, 0, -1.5, 0.25, false);
    check(29, 31, 700, false, true, 0, 2, -1, false); /* beta reaches C once, not per k block */
    check(13, 17, 9, false, false, 0, 0, 0.5, false); /* alpha 0: only beta C */
}

static void beta_zero_never_reads_c(void **state)
{
    (void)state;
    check(15, 33, 17, false, false, 0, 1, 0, true);
    check(15, 33, 17, true, true, 3, 0.5, 0, true);
    check(15, 33, 0, false, false, 0, 1, 0, true); /* K == 0 writes zeros */
}

static void odd_sizes_and_edges_of_every_block(void **state)
{
    (void)state;
    static const int64_t sz[] = {1, 15, 17, 31, 33, 97};
    for (size_t i = 0; i < sizeof sz / sizeof *sz; i++)
        for (size_t j = 0; j < sizeof sz / sizeof *sz; j++)
            check(sz[i], sz[j], sz[(i + j) % 6], (i + j) & 1, j & 1, 0, 1, 0.5, false);
    check(1037, 40, 45, false, false, 0, 1, 0, false);  /* M crosses MC */
    check(13, 1061, 33, false, true, 0, 1, 0, false);   /* N crosses NC several times */
    check(31, 33, 1030, true, false, 0, 1, 0, false);   /* K crosses KC twice, tail 6 */
    check(1001, 129, 1003, false, false, 0, 1, 1, false);
    check(300, 257, 513, true, false, 0, 1, 0, false); /* what auto hands the own GEMM */
}

static void leading_dimensions_wider_than_the_rows(void **state)
{
    (void)state;
    for (int t = 0; t < 4; t++)
        check(45, 67, 53, t & 1, t & 2, 7, 1, 0.5, false);
    check(97, 33, 600, false, false, 100, 1, 0, false);
}

static void empty_dims_are_no_ops_or_scale(void **state)
{
    (void)state;
    check(0, 5, 7, false, false, 0, 1, 0, false);
    check(5, 0, 7, false, false, 0, 1, 0, false);
    check(5, 7, 0, false, false, 0, 1, 2, false); /* C = beta C */
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s <cpu_blas plugin> <expected sgemm prefix>\n", argv[0]);
        return 2;
    }
    plugin_path = argv[1];
    expect_sgemm = argv[2];
    /* "own-if-avx512": the own GEMM where the CPU has AVX-512 (F, CD, BW, DQ, VL), else the
     * library; the plugin's own check also asks the OS (XCR0), which such a CPU's OS does. */
    if (strcmp(expect_sgemm, "own-if-avx512") == 0) {
#if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();
        const bool v4 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vl");
        expect_sgemm = v4 ? "own AVX-512" : "the BLAS library's";
#else
        expect_sgemm = "the BLAS library's";
#endif
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plugin_reports_the_sgemm_it_uses),
        cmocka_unit_test(all_four_transpose_combinations_match_the_loop),
        cmocka_unit_test(alpha_and_beta_scale_as_blas),
        cmocka_unit_test(beta_zero_never_reads_c),
        cmocka_unit_test(odd_sizes_and_edges_of_every_block),
        cmocka_unit_test(leading_dimensions_wider_than_the_rows),
        cmocka_unit_test(empty_dims_are_no_ops_or_scale),
    };
    return cmocka_run_group_tests(tests, load_plugin, unload_plugin);
}
