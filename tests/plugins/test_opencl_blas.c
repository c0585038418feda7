/* test_opencl_blas.c - the opencl plugin's blas kernels (opencl_blas.c): matmul: transposes,
 * batch stride 0, beta, float64. Part of test_opencl_kernels (main and helpers in
 * test_opencl_kernels.c). */
#include "test_opencl.h"

/* out (3,37,29) = 0.5 * a @ b + 2 * out, with a given as the transpose of a (3,45,37) buffer
 * and b one (45,29) matrix shared by every batch (batch stride 0). */
void matmul_handles_transposes_batch_stride_0_and_beta(void **state)
{
    (void)state;
    enum { BT = 3, M = 37, N = 29, K = 45 };
    float *a = malloc(BT * K * M * sizeof *a), *b = malloc(K * N * sizeof *b);
    float *o = malloc(BT * M * N * sizeof *o), *got = malloc(BT * M * N * sizeof *got);
    assert_true(a && b && o && got);
    unsigned seed = 5;
    for (int k = 0; k < BT * K * M; k++)
        a[k] = frand(&seed);
    for (int k = 0; k < K * N; k++)
        b[k] = frand(&seed);
    for (int k = 0; k < BT * M * N; k++)
        o[k] = frand(&seed);
    void *ha = buf_from(a, BT * K * M * sizeof *a), *hb = buf_from(b, K * N * sizeof *b);
    void *ho = buf_from(o, BT * M * N * sizeof *o);
    tview va = view(ha, 0, NB_DTYPE_F32, 3, (int64_t[]){BT, M, K}, (int64_t[]){K * M, 1, M});
    tview vb = view(hb, 0, NB_DTYPE_F32, 3, (int64_t[]){BT, K, N}, (int64_t[]){0, N, 1});
    tview vo = view(ho, 0, NB_DTYPE_F32, 3, (int64_t[]){BT, M, N}, NULL);
    tview in[2] = {va, vb};
    double f[8] = {0.5, 2};
    assert_int_equal(run("matmul", NB_DTYPE_F32, &vo, 2, in, f, NULL), NB_OK);
    buf_read(ho, got, BT * M * N * sizeof *got);
    for (int t = 0; t < BT; t++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double acc = 0, mag = 0;
                for (int k = 0; k < K; k++) {
                    double p = (double)a[t * K * M + k * M + i] * b[k * N + j];
                    acc += p;
                    mag += fabs(p);
                }
                size_t q = (size_t)((t * M + i) * N + j);
                /* f32 accumulation over K terms: error scales with the sum of |terms| */
                expect_close("matmul", q, got[q], 0.5 * acc + 2 * o[q], 1e-6 * mag, 1e-6);
            }
    /* beta = 0: out is not read, so NaN there must not leak into the result */
    for (int k = 0; k < BT * M * N; k++)
        o[k] = NAN;
    assert_int_equal(P->write(0, ho, 0, o, BT * M * N * sizeof *o), NB_OK);
    double f0[8] = {1, 0};
    assert_int_equal(run("matmul", NB_DTYPE_F32, &vo, 2, in, f0, NULL), NB_OK);
    buf_read(ho, got, BT * M * N * sizeof *got);
    for (int k = 0; k < BT * M * N; k++)
        assert_false(isnan(got[k]));
    /* a shape mismatch is an error, not a wild read */
    tview bad = view(hb, 0, NB_DTYPE_F32, 3, (int64_t[]){BT, K + 1, N}, (int64_t[]){0, N, 1});
    tview in2[2] = {va, bad};
    assert_int_not_equal(run("matmul", NB_DTYPE_F32, &vo, 2, in2, f, NULL), NB_OK);
    free(a);
    free(b);
    free(o);
    free(got);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

void matmul_f64_matches_reference(void **state)
{
    (void)state;
    if (!has_f64)
        skip();
    enum { M = 20, N = 17, K = 33 };
    double a[M * K], b[K * N], got[M * N];
    unsigned seed = 9;
    for (int k = 0; k < M * K; k++)
        a[k] = frand(&seed);
    for (int k = 0; k < K * N; k++)
        b[k] = frand(&seed);
    void *ha = buf_from(a, sizeof a), *hb = buf_from(b, sizeof b), *ho = buf_new(sizeof got);
    tview in[2] = {view(ha, 0, NB_DTYPE_F64, 3, (int64_t[]){1, M, K}, NULL),
                   view(hb, 0, NB_DTYPE_F64, 3, (int64_t[]){1, K, N}, NULL)};
    tview vo = view(ho, 0, NB_DTYPE_F64, 3, (int64_t[]){1, M, N}, NULL);
    double f[8] = {1, 0};
    assert_int_equal(run("matmul", NB_DTYPE_F64, &vo, 2, in, f, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < K; k++)
                acc += a[i * K + k] * b[k * N + j];
            expect_close("matmul f64", (size_t)(i * N + j), got[i * N + j], acc, 1e-12, 1e-12);
        }
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

/* beta 0 means out is not read: NaN already there must not leak through (CLBlast and own) */
void matmul_with_beta_0_ignores_what_out_held(void **state)
{
    (void)state;
    enum { M = 33, K = 17, N = 20 };
    float a[M * K], b[K * N], o[M * N], g[M * N];
    unsigned seed = 5;
    for (int k = 0; k < M * K; k++)
        a[k] = frand(&seed);
    for (int k = 0; k < K * N; k++)
        b[k] = frand(&seed);
    for (int k = 0; k < M * N; k++)
        o[k] = NAN;
    void *ha = buf_from(a, sizeof a), *hb = buf_from(b, sizeof b), *ho = buf_from(o, sizeof o);
    tview in[2] = {view(ha, 0, NB_DTYPE_F32, 3, (int64_t[]){1, M, K}, NULL),
                   view(hb, 0, NB_DTYPE_F32, 3, (int64_t[]){1, K, N}, NULL)};
    tview vo = view(ho, 0, NB_DTYPE_F32, 3, (int64_t[]){1, M, N}, NULL);
    double f[8] = {1, 0};
    assert_int_equal(run("matmul", NB_DTYPE_F32, &vo, 2, in, f, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double ref = 0;
            for (int k = 0; k < K; k++)
                ref += (double)a[i * K + k] * b[k * N + j];
            expect_close("matmul beta 0", (size_t)(i * N + j), g[i * N + j], ref, 1e-5, 1e-5);
        }
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}
