/* test_cuda_kernels.c - the cuda plugin tested on its own: dlopens the built .so (argv[1]), runs
 * kernels on cuda:0 through the plugin table and compares them with plain C loops (the 16-bit
 * cases are in test_cuda_half.c). Exits 77 (skipped) with the plugin's reason when there is no
 * CUDA device. */
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nabla_plugin.h"
#include "test_cuda.h"

const nb_plugin *P;
char last_error[2048];

static nb_status host_error(nb_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

static void host_log(int level, const char *fmt, ...)
{
    if (level < NB_LOG_WARN)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const nb_host host = {NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR, sizeof(nb_host),
                             host_error, host_log};

/* ---- helpers ---- */

const size_t esize[NB_DTYPE_COUNT] = {4, 8, 4, 8, 1, 1, 2, 2};

nb_kernel_fn kernel(const char *op, nb_dtype t)
{
    for (size_t k = 0; k < P->n_kernels; k++)
        if (strcmp(P->kernels[k].op, op) == 0 && P->kernels[k].dtype == t)
            return P->kernels[k].fn;
    fail_msg("no kernel %s for dtype %d", op, (int)t);
    return NULL;
}

void *buf_from(const void *data, size_t bytes)
{
    void *h = NULL;
    assert_int_equal(P->alloc(0, bytes, &h), NB_OK);
    assert_non_null(h);
    if (data)
        assert_int_equal(P->write(0, h, 0, data, bytes), NB_OK);
    return h;
}

void buf_read(void *h, void *dst, size_t bytes)
{
    assert_int_equal(P->read(0, h, 0, dst, bytes), NB_OK);
}

/* strides NULL: contiguous. The operand's pointers are fixed up in run(). */
tview view(void *h, int64_t off, nb_dtype t, int ndim, const int64_t *shape,
                  const int64_t *strides)
{
    tview v;
    memset(&v, 0, sizeof v);
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        v.shape[d] = shape[d];
        v.strides[d] = strides ? strides[d] : s;
        s *= shape[d];
    }
    v.op = (nb_operand){h, (size_t)off * esize[t], t, ndim, NULL, NULL};
    return v;
}

nb_status run(const char *op, nb_dtype t, tview *out, int n_in, tview *in,
                     const double *f, const int64_t *i)
{
    nb_operand o = out->op, ins[4];
    o.shape = out->shape;
    o.strides = out->strides;
    for (int k = 0; k < n_in; k++) {
        ins[k] = in[k].op;
        ins[k].shape = in[k].shape;
        ins[k].strides = in[k].strides;
    }
    nb_kernel_args a;
    memset(&a, 0, sizeof a);
    a.n_in = n_in;
    a.out = &o;
    a.in = ins;
    for (int k = 0; f && k < 8; k++)
        a.f[k] = f[k];
    for (int k = 0; i && k < 8; k++)
        a.i[k] = i[k];
    last_error[0] = '\0';
    return kernel(op, t)(&a);
}

/* |got - ref| <= atol + rtol * |ref| */
void expect_close(const char *what, int k, double got, double ref, double atol,
                         double rtol)
{
    if (isnan(ref) && isnan(got))
        return;
    if (!(fabs(got - ref) <= atol + rtol * fabs(ref)))
        fail_msg("%s[%d]: got %.9g, expected %.9g (atol %g, rtol %g)", what, k, got, ref, atol,
                 rtol);
}

float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 65536.0f * 4.0f - 2.0f;
}

/* ---- tests ---- */

static void device_has_a_name_and_rejects_bad_calls(void **state)
{
    (void)state;
    char name[256] = "";
    assert_int_equal(P->device_name(0, name, sizeof name), NB_OK);
    assert_true(strlen(name) > 0);
    void *h = NULL;
    assert_int_equal(P->alloc(0, 0, &h), NB_INVALID_ARGUMENT);
    assert_int_equal(P->alloc(P->device_count(), 16, &h), NB_DEVICE_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "out of range"));
    P->free(0, NULL);
}

/* out (3,4) = a + b where a is the transpose of a (4,3) buffer starting at element 2 and b a
 * (1,4) row broadcast along dim 0 (stride 0). */
static void add_follows_strides_and_broadcast(void **state)
{
    (void)state;
    float abuf[14], bbuf[4], got[12];
    unsigned seed = 1;
    for (int k = 0; k < 14; k++)
        abuf[k] = frand(&seed);
    for (int k = 0; k < 4; k++)
        bbuf[k] = frand(&seed);
    void *ha = buf_from(abuf, sizeof abuf), *hb = buf_from(bbuf, sizeof bbuf);
    void *ho = buf_from(NULL, sizeof got);
    int64_t shape[2] = {3, 4};
    tview in[2] = {view(ha, 2, NB_DTYPE_F32, 2, shape, (int64_t[8]){1, 3}),
                   view(hb, 0, NB_DTYPE_F32, 2, shape, (int64_t[8]){0, 1})};
    tview out = view(ho, 0, NB_DTYPE_F32, 2, shape, NULL);
    assert_int_equal(run("add", NB_DTYPE_F32, &out, 2, in, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            expect_close("add", r * 4 + c, got[r * 4 + c], (double)abuf[2 + r + 3 * c] + bbuf[c],
                         0, 1e-6);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

/* float64 (2,3) read transposed into an int32 (3,2), then into bool. */
static void copy_casts_between_dtypes(void **state)
{
    (void)state;
    double src[6] = {1.75, -2.5, 0.0, 3.0, -0.25, 100.9};
    int32_t got[6];
    uint8_t gb[6];
    void *hs = buf_from(src, sizeof src), *ho = buf_from(NULL, sizeof got);
    void *hb = buf_from(NULL, sizeof gb);
    int64_t shape[2] = {3, 2};
    tview in = view(hs, 0, NB_DTYPE_F64, 2, shape, (int64_t[8]){1, 3});
    tview out = view(ho, 0, NB_DTYPE_I32, 2, shape, NULL);
    assert_int_equal(run("copy", NB_DTYPE_I32, &out, 1, &in, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++)
            assert_int_equal(got[r * 2 + c], (int32_t)src[r + 3 * c]);
    tview outb = view(hb, 0, NB_DTYPE_BOOL, 2, shape, NULL);
    assert_int_equal(run("copy", NB_DTYPE_BOOL, &outb, 1, &in, NULL, NULL), NB_OK);
    buf_read(hb, gb, sizeof gb);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++)
            assert_int_equal(gb[r * 2 + c], src[r + 3 * c] != 0);
    P->free(0, hs);
    P->free(0, ho);
    P->free(0, hb);
}

/* sum, max and argmax of a (4,300,5) tensor over dim 1 (more elements than one block's threads). */
static void reductions_over_a_dim(void **state)
{
    (void)state;
    enum { A = 4, B = 300, C = 5 };
    static float x[A * B * C];
    unsigned seed = 7;
    for (int k = 0; k < A * B * C; k++)
        x[k] = frand(&seed);
    x[2 * B * C + 17 * C + 3] = NAN; /* row (2, 3): max is NaN, argmax its index */
    void *hx = buf_from(x, sizeof x), *ho = buf_from(NULL, A * C * 8);
    int64_t shape[3] = {A, B, C}, oshape[3] = {A, 1, C};
    tview in = view(hx, 0, NB_DTYPE_F32, 3, shape, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 3, oshape, NULL);
    float got[A * C];
    int64_t idx[A * C];
    assert_int_equal(run("sum", NB_DTYPE_F32, &out, 1, &in, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int a = 0; a < A; a++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int b = 0; b < B; b++)
                s += x[(a * B + b) * C + c];
            expect_close("sum", a * C + c, got[a * C + c], s, 1e-4, 1e-5);
        }
    assert_int_equal(run("max", NB_DTYPE_F32, &out, 1, &in, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    tview oi = view(ho, 0, NB_DTYPE_I64, 3, oshape, NULL);
    assert_int_equal(run("argmax", NB_DTYPE_F32, &oi, 1, &in, NULL, (int64_t[8]){1}), NB_OK);
    buf_read(ho, idx, sizeof idx);
    for (int a = 0; a < A; a++)
        for (int c = 0; c < C; c++) {
            float m = x[a * B * C + c];
            int64_t at = 0;
            for (int b = 1; b < B; b++) {
                float v = x[(a * B + b) * C + c];
                if (!isnan(m) && (isnan(v) || v > m)) {
                    m = v;
                    at = b;
                }
            }
            expect_close("max", a * C + c, got[a * C + c], m, 0, 0);
            assert_int_equal(idx[a * C + c], at);
        }
    P->free(0, hx);
    P->free(0, ho);
}

/* out (2,3,4) = 2 * A^T @ B + 0.5 * out, where A^T is a transposed view of one (5,3) matrix
 * shared by both batches (batch stride 0) and B a (2,5,4) contiguous tensor. */
static void matmul_reads_transposed_and_broadcast_batches(void **state)
{
    (void)state;
    enum { NB = 2, N = 3, K = 5, M = 4 };
    double a[K * N], b[NB * K * M], o[NB * N * M], got[NB * N * M];
    unsigned seed = 3;
    for (int k = 0; k < K * N; k++)
        a[k] = frand(&seed);
    for (int k = 0; k < NB * K * M; k++)
        b[k] = frand(&seed);
    for (int k = 0; k < NB * N * M; k++)
        o[k] = frand(&seed);
    void *ha = buf_from(a, sizeof a), *hb = buf_from(b, sizeof b), *ho = buf_from(o, sizeof o);
    tview in[2] = {view(ha, 0, NB_DTYPE_F64, 3, (int64_t[8]){1, N, K}, (int64_t[8]){0, 1, N}),
                   view(hb, 0, NB_DTYPE_F64, 3, (int64_t[8]){NB, K, M}, NULL)};
    tview out = view(ho, 0, NB_DTYPE_F64, 3, (int64_t[8]){NB, N, M}, NULL);
    assert_int_equal(run("matmul", NB_DTYPE_F64, &out, 2, in, (double[8]){2.0, 0.5}, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int p = 0; p < NB; p++)
        for (int r = 0; r < N; r++)
            for (int c = 0; c < M; c++) {
                double s = 0;
                for (int k = 0; k < K; k++)
                    s += a[k * N + r] * b[(p * K + k) * M + c];
                int at = (p * N + r) * M + c;
                expect_close("matmul", at, got[at], 2.0 * s + 0.5 * o[at], 1e-12, 1e-12);
            }
    /* A column-broadcast operand (stride 0 inside the matrix) goes through a dense copy. */
    in[0] = view(ha, 0, NB_DTYPE_F64, 3, (int64_t[8]){1, N, K}, (int64_t[8]){0, 0, 1});
    assert_int_equal(run("matmul", NB_DTYPE_F64, &out, 2, in, (double[8]){1.0, 0.0}, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int p = 0; p < NB; p++)
        for (int r = 0; r < N; r++)
            for (int c = 0; c < M; c++) {
                double s = 0;
                for (int k = 0; k < K; k++)
                    s += a[k] * b[(p * K + k) * M + c];
                expect_close("matmul (broadcast rows)", (p * N + r) * M + c,
                             got[(p * N + r) * M + c], s, 1e-12, 1e-12);
            }
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

/* out (3,2) = x (3,4) gathered along dim 1; an index of 4 is an error naming it. */
static void gather_picks_along_a_dim_and_checks_indexes(void **state)
{
    (void)state;
    float x[12], got[6];
    int64_t idx[6] = {3, 0, 1, 1, 2, 3};
    unsigned seed = 11;
    for (int k = 0; k < 12; k++)
        x[k] = frand(&seed);
    void *hx = buf_from(x, sizeof x), *hi = buf_from(idx, sizeof idx);
    void *ho = buf_from(NULL, sizeof got);
    tview in[2] = {view(hx, 0, NB_DTYPE_F32, 2, (int64_t[8]){3, 4}, NULL),
                   view(hi, 0, NB_DTYPE_I64, 2, (int64_t[8]){3, 2}, NULL)};
    tview out = view(ho, 0, NB_DTYPE_F32, 2, (int64_t[8]){3, 2}, NULL);
    assert_int_equal(run("gather", NB_DTYPE_F32, &out, 2, in, NULL, (int64_t[8]){1}), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++)
            expect_close("gather", r * 2 + c, got[r * 2 + c], x[r * 4 + idx[r * 2 + c]], 0, 0);
    /* A bad index is found by the device and reported at the next synchronisation (the op
     * itself does not wait), then cleared. */
    idx[4] = 4;
    assert_int_equal(P->write(0, hi, 0, idx, sizeof idx), NB_OK);
    assert_int_equal(run("gather", NB_DTYPE_F32, &out, 2, in, NULL, (int64_t[8]){1}), NB_OK);
    assert_int_equal(P->synchronize(0), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "gather: index 4"));
    assert_non_null(strstr(last_error, "size 4"));
    assert_int_equal(P->synchronize(0), NB_OK);
    P->free(0, hx);
    P->free(0, hi);
    P->free(0, ho);
}

/* random_uniform gives, bit for bit after rounding, what nb_philox_uniform gives on the host. */
static void random_uniform_matches_the_shared_philox(void **state)
{
    (void)state;
    enum { N = 1000 };
    float got[N];
    void *ho = buf_from(NULL, sizeof got);
    tview out = view(ho, 0, NB_DTYPE_F32, 1, (int64_t[8]){N}, NULL);
    assert_int_equal(run("random_uniform", NB_DTYPE_F32, &out, 0, NULL, (double[8]){-1.0, 3.0},
                         (int64_t[8]){1234, 5}), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int k = 0; k < N; k++)
        expect_close("random_uniform", k, got[k],
                     (float)(-1.0 + 4.0 * nb_philox_uniform(1234, 5, (uint64_t)k, 0)), 0, 0);
    P->free(0, ho);
}

/* softmax over the last dim of a (3,700) tensor: rows sum to 1 and match the reference. */
static void softmax_matches_the_reference(void **state)
{
    (void)state;
    enum { R = 3, D = 700 };
    static float x[R * D], got[R * D];
    unsigned seed = 5;
    for (int k = 0; k < R * D; k++)
        x[k] = frand(&seed) * 10;
    void *hx = buf_from(x, sizeof x), *ho = buf_from(NULL, sizeof got);
    tview in = view(hx, 0, NB_DTYPE_F32, 2, (int64_t[8]){R, D}, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 2, (int64_t[8]){R, D}, NULL);
    assert_int_equal(run("softmax", NB_DTYPE_F32, &out, 1, &in, NULL, (int64_t[8]){1}), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int r = 0; r < R; r++) {
        double m = -INFINITY, s = 0;
        for (int k = 0; k < D; k++)
            m = fmax(m, x[r * D + k]);
        for (int k = 0; k < D; k++)
            s += exp(x[r * D + k] - m);
        for (int k = 0; k < D; k++)
            expect_close("softmax", r * D + k, got[r * D + k], exp(x[r * D + k] - m) / s, 1e-7,
                         1e-5);
    }
    P->free(0, hx);
    P->free(0, ho);
}


/* The conversion rule: float -> u8/int32 truncates through int64 and wraps; NaN and values
 * beyond int64 go through INT64_MIN (so 0 in every narrower type). */
static void copy_converts_by_the_shared_rule(void **state)
{
    (void)state;
    float src[6] = {-1.0f, -3.75f, 300.0f, 3e9f, NAN, 1e30f};
    uint8_t gu[6];
    int32_t gi[6];
    const uint8_t want_u8[6] = {255, 253, 44, 0, 0, 0};
    const int32_t want_i32[6] = {-1, -3, 300, (int32_t)(3000000000LL - 4294967296LL), 0, 0};
    void *hs = buf_from(src, sizeof src), *hu = buf_from(NULL, sizeof gu);
    void *hi = buf_from(NULL, sizeof gi);
    int64_t shape[1] = {6};
    tview in = view(hs, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview ou = view(hu, 0, NB_DTYPE_U8, 1, shape, NULL), oi = view(hi, 0, NB_DTYPE_I32, 1, shape, NULL);
    assert_int_equal(run("copy", NB_DTYPE_U8, &ou, 1, &in, NULL, NULL), NB_OK);
    assert_int_equal(run("copy", NB_DTYPE_I32, &oi, 1, &in, NULL, NULL), NB_OK);
    buf_read(hu, gu, sizeof gu);
    buf_read(hi, gi, sizeof gi);
    for (int k = 0; k < 6; k++) {
        assert_int_equal(gu[k], want_u8[k]);
        assert_int_equal(gi[k], want_i32[k]);
    }
    /* fill casts its value on the host by the same rule */
    assert_int_equal(run("fill", NB_DTYPE_I32, &oi, 0, NULL, (double[8]){NAN}, NULL), NB_OK);
    buf_read(hi, gi, sizeof gi);
    assert_int_equal(gi[0], 0);
    assert_int_equal(run("fill", NB_DTYPE_U8, &ou, 0, NULL, (double[8]){-1.0}, NULL), NB_OK);
    buf_read(hu, gu, sizeof gu);
    assert_int_equal(gu[5], 255);
    P->free(0, hs);
    P->free(0, hu);
    P->free(0, hi);
}

/* Bool bytes other than 0/1 (as nb_from_data may leave them) read as true: xor, equality and
 * bool -> float give what a 0/1 bool would. */
static void bool_bytes_are_any_nonzero(void **state)
{
    (void)state;
    uint8_t a[4] = {0x00, 0x01, 0xff, 0x02}, b[4] = {0x00, 0xff, 0x01, 0x00};
    uint8_t got[4];
    float gf[4];
    void *ha = buf_from(a, 4), *hb = buf_from(b, 4), *ho = buf_from(NULL, 4);
    void *hf = buf_from(NULL, sizeof gf);
    int64_t shape[1] = {4};
    tview in[2] = {view(ha, 0, NB_DTYPE_BOOL, 1, shape, NULL),
                   view(hb, 0, NB_DTYPE_BOOL, 1, shape, NULL)};
    tview out = view(ho, 0, NB_DTYPE_BOOL, 1, shape, NULL);
    assert_int_equal(run("logical_xor", NB_DTYPE_BOOL, &out, 2, in, NULL, NULL), NB_OK);
    buf_read(ho, got, 4);
    const uint8_t want_xor[4] = {0, 0, 0, 1};
    for (int k = 0; k < 4; k++)
        assert_int_equal(got[k], want_xor[k]);
    assert_int_equal(run("eq", NB_DTYPE_BOOL, &out, 2, in, NULL, NULL), NB_OK);
    buf_read(ho, got, 4);
    const uint8_t want_eq[4] = {1, 1, 1, 0};
    for (int k = 0; k < 4; k++)
        assert_int_equal(got[k], want_eq[k]);
    tview of = view(hf, 0, NB_DTYPE_F32, 1, shape, NULL);
    assert_int_equal(run("copy", NB_DTYPE_F32, &of, 1, in, NULL, NULL), NB_OK);
    buf_read(hf, gf, sizeof gf);
    const float want_f[4] = {0, 1, 1, 1};
    for (int k = 0; k < 4; k++)
        expect_close("bool->float", k, gf[k], want_f[k], 0, 0);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
    P->free(0, hf);
}

/* int32 add and mul wrap modulo 2^32. */
static void integer_arithmetic_wraps(void **state)
{
    (void)state;
    int32_t a[3] = {INT32_MAX, INT32_MIN, 65536}, b[3] = {1, -1, 65536}, got[3];
    void *ha = buf_from(a, sizeof a), *hb = buf_from(b, sizeof b), *ho = buf_from(NULL, sizeof got);
    int64_t shape[1] = {3};
    tview in[2] = {view(ha, 0, NB_DTYPE_I32, 1, shape, NULL),
                   view(hb, 0, NB_DTYPE_I32, 1, shape, NULL)};
    tview out = view(ho, 0, NB_DTYPE_I32, 1, shape, NULL);
    assert_int_equal(run("add", NB_DTYPE_I32, &out, 2, in, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    assert_int_equal(got[0], INT32_MIN);
    assert_int_equal(got[1], INT32_MAX);
    assert_int_equal(run("mul", NB_DTYPE_I32, &out, 2, in, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    assert_int_equal(got[2], 0);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

/* Integer matmul as the cpu computes it, on a transposed input. */
static void integer_matmul_matches_a_loop(void **state)
{
    (void)state;
    enum { N = 3, K = 4, M = 5 };
    int32_t a[K * N], b[K * M], got[N * M];
    for (int k = 0; k < K * N; k++)
        a[k] = k * 7 - 20;
    for (int k = 0; k < K * M; k++)
        b[k] = 3 - k;
    void *ha = buf_from(a, sizeof a), *hb = buf_from(b, sizeof b), *ho = buf_from(NULL, sizeof got);
    tview in[2] = {view(ha, 0, NB_DTYPE_I32, 3, (int64_t[8]){1, N, K}, (int64_t[8]){0, 1, N}),
                   view(hb, 0, NB_DTYPE_I32, 3, (int64_t[8]){1, K, M}, NULL)};
    tview out = view(ho, 0, NB_DTYPE_I32, 3, (int64_t[8]){1, N, M}, NULL);
    assert_int_equal(run("matmul", NB_DTYPE_I32, &out, 2, in, (double[8]){1.0, 0.0}, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int r = 0; r < N; r++)
        for (int c = 0; c < M; c++) {
            int32_t s = 0;
            for (int k = 0; k < K; k++)
                s += a[k * N + r] * b[k * M + c];
            assert_int_equal(got[r * M + c], s);
        }
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

/* sum over dim 0 of a (3000, 70) matrix (the coalesced column loop) and a full sum of 2^21
 * elements (split over blocks, then a second pass), float32 against a double loop. */
static void sums_over_columns_and_long_rows(void **state)
{
    (void)state;
    enum { R = 3000, C = 70, L = 1 << 21 };
    static float x[L];
    unsigned seed = 9;
    for (int k = 0; k < L; k++)
        x[k] = frand(&seed);
    void *hx = buf_from(x, sizeof x), *ho = buf_from(NULL, C * sizeof(float));
    tview in = view(hx, 0, NB_DTYPE_F32, 2, (int64_t[8]){R, C}, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 2, (int64_t[8]){1, C}, NULL);
    float got[C];
    assert_int_equal(run("sum", NB_DTYPE_F32, &out, 1, &in, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int r = 0; r < R; r++)
            s += x[r * C + c];
        expect_close("sum dim 0", c, got[c], s, 1e-4, 1e-5);
    }
    tview all = view(hx, 0, NB_DTYPE_F32, 1, (int64_t[8]){L}, NULL);
    tview one = view(ho, 0, NB_DTYPE_F32, 1, (int64_t[8]){1}, NULL);
    assert_int_equal(run("sum", NB_DTYPE_F32, &one, 1, &all, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof(float));
    double s = 0;
    for (int k = 0; k < L; k++)
        s += x[k];
    expect_close("full sum", 0, got[0], s, 1e-2, 1e-6);
    P->free(0, hx);
    P->free(0, ho);
}

/* max_pool2d_backward with an index outside the input: NB_INDEX_OUT_OF_RANGE, as on the cpu
 * (reported at the next synchronisation). */
static void max_pool2d_backward_rejects_bad_indices(void **state)
{
    (void)state;
    float g[4] = {1, 2, 3, 4}, gx[16];
    int64_t ind[4] = {0, 3, 8, 99};
    void *hg = buf_from(g, sizeof g), *hi = buf_from(ind, sizeof ind), *ho = buf_from(NULL, sizeof gx);
    tview in[2] = {view(hg, 0, NB_DTYPE_F32, 4, (int64_t[8]){1, 1, 2, 2}, NULL),
                   view(hi, 0, NB_DTYPE_I64, 4, (int64_t[8]){1, 1, 2, 2}, NULL)};
    tview out = view(ho, 0, NB_DTYPE_F32, 4, (int64_t[8]){1, 1, 4, 4}, NULL);
    assert_int_equal(run("max_pool2d_backward", NB_DTYPE_F32, &out, 2, in, NULL,
                         (int64_t[8]){2, 2, 2, 2, 0, 0}), NB_OK);
    assert_int_equal(P->synchronize(0), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "max_pool2d_backward: index 99"));
    assert_int_equal(P->synchronize(0), NB_OK);
    P->free(0, hg);
    P->free(0, hi);
    P->free(0, ho);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s path/to/nabla_plugin_cuda.so\n", argv[0]);
        return 2;
    }
    void *dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 1;
    }
    nb_plugin_entry_fn entry = (nb_plugin_entry_fn)dlsym(dl, NB_PLUGIN_ENTRY_SYMBOL);
    P = entry ? entry(&host) : NULL;
    if (!P) {
        fprintf(stderr, "%s: no plugin table (%s)\n", argv[1], last_error);
        return 1;
    }
    int n = P->device_count();
    if (n <= 0) {
        const char *why = P->status_note ? P->status_note() : NULL;
        printf("skipped: no CUDA device (%s)\n", why ? why : last_error);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(device_has_a_name_and_rejects_bad_calls),
        cmocka_unit_test(add_follows_strides_and_broadcast),
        cmocka_unit_test(copy_casts_between_dtypes),
        cmocka_unit_test(reductions_over_a_dim),
        cmocka_unit_test(matmul_reads_transposed_and_broadcast_batches),
        cmocka_unit_test(gather_picks_along_a_dim_and_checks_indexes),
        cmocka_unit_test(random_uniform_matches_the_shared_philox),
        cmocka_unit_test(softmax_matches_the_reference),
        cmocka_unit_test(copy_converts_by_the_shared_rule),
        cmocka_unit_test(bool_bytes_are_any_nonzero),
        cmocka_unit_test(integer_arithmetic_wraps),
        cmocka_unit_test(integer_matmul_matches_a_loop),
        cmocka_unit_test(sums_over_columns_and_long_rows),
        cmocka_unit_test(max_pool2d_backward_rejects_bad_indices),
        cmocka_unit_test(half_copies_match_the_sdk_bit_for_bit),
        cmocka_unit_test(half_elementwise_computes_in_float),
        cmocka_unit_test(half_reductions_fold_in_float),
        cmocka_unit_test(half_matmul_reads_transposed_and_broadcast_batches),
        cmocka_unit_test(half_softmax_rows_match_the_reference),
        cmocka_unit_test(half_conv2d_and_backwards_match_loops),
        cmocka_unit_test(half_scatter_add_and_pool_backward_sum_in_float),
        cmocka_unit_test(half_random_is_the_float32_numbers_rounded),
    };
    int failed = cmocka_run_group_tests_name("cuda kernels", tests, NULL, NULL);
    if (P->shutdown)
        P->shutdown();
    return failed ? 1 : 0;
}
