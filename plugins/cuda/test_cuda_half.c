/* test_cuda_half.c - the cuda plugin's float16 and bfloat16 kernels on cuda:0 (part of
 * test_cuda_kernels): 16-bit storage, float32 compute, one rounding per stored value, checked
 * against the SDK's conversions and float64 loops. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_cuda.h"

static const nb_dtype half_types[2] = {NB_DTYPE_F16, NB_DTYPE_BF16};

static float h2f(nb_dtype t, uint16_t h)
{
    return t == NB_DTYPE_F16 ? nb_f16_to_f32(h) : nb_bf16_to_f32(h);
}
static uint16_t f2h(nb_dtype t, float f)
{
    return t == NB_DTYPE_F16 ? nb_f32_to_f16(f) : nb_f32_to_bf16(f);
}
static uint16_t d2h(nb_dtype t, double d)
{
    return t == NB_DTYPE_F16 ? nb_f64_to_f16(d) : nb_f64_to_bf16(d);
}
/* One unit in the last place, relative: the tolerance of a result the device computes with a
 * float function (expf, logf) the host's may differ from by a float ulp before rounding. */
static double ulp16(nb_dtype t) { return t == NB_DTYPE_F16 ? 0x1p-10 : 0x1p-7; }

/* n random values in [-2, 2) stored in t */
static uint16_t *half_rand(nb_dtype t, int n, unsigned seed)
{
    uint16_t *v = malloc((size_t)n * 2);
    assert_non_null(v);
    for (int k = 0; k < n; k++)
        v[k] = f2h(t, frand(&seed));
    return v;
}

static uint32_t f32bits(float f) { return nb_f32_bits_(f); }

/* Every 16-bit pattern widens to the SDK's float and copies into its own type unchanged;
 * floats, doubles and int32 round into 16 bits once, as the SDK's functions do. */
void half_copies_match_the_sdk_bit_for_bit(void **state)
{
    (void)state;
    enum { N = 65536, M = 3 * 65536 };
    static uint16_t pat[N], back[N], h16[M];
    static float wide[N], fs[M];
    static double ds[M];
    static int32_t is[M];
    for (int k = 0; k < N; k++)
        pat[k] = (uint16_t)k;
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        void *hp = buf_from(pat, sizeof pat), *hw = buf_from(NULL, sizeof wide);
        void *hb = buf_from(NULL, sizeof back);
        int64_t n[1] = {N};
        tview in = view(hp, 0, t, 1, n, NULL), ow = view(hw, 0, NB_DTYPE_F32, 1, n, NULL);
        tview ob = view(hb, 0, t, 1, n, NULL);
        assert_int_equal(run("copy", NB_DTYPE_F32, &ow, 1, &in, NULL, NULL), NB_OK);
        assert_int_equal(run("copy", t, &ob, 1, &in, NULL, NULL), NB_OK);
        buf_read(hw, wide, sizeof wide);
        buf_read(hb, back, sizeof back);
        for (int k = 0; k < N; k++) {
            if (f32bits(wide[k]) != f32bits(h2f(t, pat[k])))
                fail_msg("%s 0x%04x -> float32: 0x%08x, SDK 0x%08x", t == NB_DTYPE_F16 ?
                         "float16" : "bfloat16", k, f32bits(wide[k]), f32bits(h2f(t, pat[k])));
            assert_int_equal(back[k], pat[k]);
        }
        /* the widened values, their float neighbours, ties, random float patterns */
        unsigned seed = 99;
        for (int k = 0; k < M; k++) {
            uint32_t b = k < N ? f32bits(h2f(t, (uint16_t)k)) + (uint32_t)(k % 3) - 1u
                         : k < 2 * N ? f32bits((float)(((double)h2f(t, (uint16_t)k) +
                                                        (double)h2f(t, (uint16_t)(k + 1))) / 2))
                                     : (seed = seed * 1664525u + 1013904223u);
            memcpy(&fs[k], &b, 4);
            double mid = ((double)h2f(t, (uint16_t)k) + (double)h2f(t, (uint16_t)(k + 1))) / 2;
            ds[k] = k % 3 == 0 ? mid : mid + (k % 3 == 1 ? 1 : -1) * fabs(mid) * 0x1p-40;
            is[k] = k < N ? 16777216 + 65536 + k : (int32_t)(seed * 2654435761u);
        }
        void *hf = buf_from(fs, sizeof fs), *hd = buf_from(ds, sizeof ds);
        void *hi = buf_from(is, sizeof is), *ho = buf_from(NULL, sizeof h16);
        int64_t m[1] = {M};
        tview o = view(ho, 0, t, 1, m, NULL);
        tview src[3] = {view(hf, 0, NB_DTYPE_F32, 1, m, NULL),
                        view(hd, 0, NB_DTYPE_F64, 1, m, NULL),
                        view(hi, 0, NB_DTYPE_I32, 1, m, NULL)};
        for (int s = 0; s < 3; s++) {
            assert_int_equal(run("copy", t, &o, 1, &src[s], NULL, NULL), NB_OK);
            buf_read(ho, h16, sizeof h16);
            for (int k = 0; k < M; k++) {
                uint16_t want = s == 0 ? f2h(t, fs[k]) : s == 1 ? d2h(t, ds[k])
                                                                : d2h(t, (double)is[k]);
                if (h16[k] != want)
                    fail_msg("copy source %d element %d into dtype %d: 0x%04x, SDK 0x%04x", s,
                             k, (int)t, h16[k], want);
            }
        }
        P->free(0, hp);
        P->free(0, hw);
        P->free(0, hb);
        P->free(0, hf);
        P->free(0, hd);
        P->free(0, hi);
        P->free(0, ho);
    }
}

/* add with a broadcast row, mul_scalar, clamp, exp, lt, where and eq_scalar in both types:
 * the float operation on the widened inputs, rounded once (exact for the correctly rounded
 * float operations, one 16-bit ulp for exp). */
void half_elementwise_computes_in_float(void **state)
{
    (void)state;
    enum { R = 250, C = 4, N = R * C };
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        uint16_t *a = half_rand(t, N, 3 + tt), *b = half_rand(t, C, 5 + tt);
        static uint16_t got[N];
        static uint8_t lt[N];
        void *ha = buf_from(a, N * 2), *hb = buf_from(b, C * 2), *ho = buf_from(NULL, N * 2);
        void *hl = buf_from(NULL, N);
        int64_t shape[2] = {R, C};
        tview in[3] = {view(ha, 0, t, 2, shape, NULL), view(hb, 0, t, 2, shape, (int64_t[8]){0, 1})};
        tview out = view(ho, 0, t, 2, shape, NULL), ol = view(hl, 0, NB_DTYPE_BOOL, 2, shape, NULL);

        assert_int_equal(run("add", t, &out, 2, in, NULL, NULL), NB_OK);
        buf_read(ho, got, N * 2);
        for (int k = 0; k < N; k++)
            assert_int_equal(got[k], f2h(t, h2f(t, a[k]) + h2f(t, b[k % C])));

        /* the scalar stays a float (PyTorch's opmath): bf16 3.0 * 1.0039 is 3.0156 */
        assert_int_equal(run("mul_scalar", t, &out, 1, in, (double[8]){1.0039}, NULL), NB_OK);
        buf_read(ho, got, N * 2);
        for (int k = 0; k < N; k++)
            assert_int_equal(got[k], f2h(t, h2f(t, a[k]) * 1.0039f));

        assert_int_equal(run("clamp", t, &out, 1, in, (double[8]){-0.5, 0.75},
                             (int64_t[8]){1, 1}), NB_OK);
        buf_read(ho, got, N * 2);
        for (int k = 0; k < N; k++) {
            float x = h2f(t, a[k]);
            assert_int_equal(got[k], f2h(t, x < -0.5f ? -0.5f : x > 0.75f ? 0.75f : x));
        }

        assert_int_equal(run("exp", t, &out, 1, in, NULL, NULL), NB_OK);
        buf_read(ho, got, N * 2);
        for (int k = 0; k < N; k++)
            expect_close("exp", k, h2f(t, got[k]), exp((double)h2f(t, a[k])), 0, ulp16(t));

        assert_int_equal(run("lt", t, &ol, 2, in, NULL, NULL), NB_OK);
        buf_read(hl, lt, N);
        for (int k = 0; k < N; k++)
            assert_int_equal(lt[k], h2f(t, a[k]) < h2f(t, b[k % C]));

        /* where moves the stored bits */
        in[2] = in[1];
        in[1] = in[0];
        in[0] = ol;
        assert_int_equal(run("where", t, &out, 3, in, NULL, NULL), NB_OK);
        buf_read(ho, got, N * 2);
        for (int k = 0; k < N; k++)
            assert_int_equal(got[k], lt[k] ? a[k] : b[k % C]);

        /* comparisons round the scalar to the dtype first, as torch: bf16 1.0 == 1.001 */
        uint16_t one = f2h(t, 1.0f);
        void *h1 = buf_from(&one, 2), *hr = buf_from(NULL, 1);
        uint8_t eq = 0;
        tview i1 = view(h1, 0, t, 0, NULL, NULL), o1 = view(hr, 0, NB_DTYPE_BOOL, 0, NULL, NULL);
        assert_int_equal(run("eq_scalar", t, &o1, 1, &i1, (double[8]){1.001}, NULL), NB_OK);
        buf_read(hr, &eq, 1);
        assert_int_equal(eq, t == NB_DTYPE_BF16); /* float16 1.001 is 1.0009765625 */

        P->free(0, ha);
        P->free(0, hb);
        P->free(0, ho);
        P->free(0, hl);
        P->free(0, h1);
        P->free(0, hr);
        free(a);
        free(b);
    }
}

/* sum (float accumulation, one rounding), max and argmax of a (3,700,4) tensor over dim 1. */
void half_reductions_fold_in_float(void **state)
{
    (void)state;
    enum { A = 3, B = 700, C = 4 };
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        uint16_t *x = half_rand(t, A * B * C, 11 + tt), got[A * C];
        int64_t arg[A * C];
        void *hx = buf_from(x, A * B * C * 2), *ho = buf_from(NULL, sizeof got);
        void *hi = buf_from(NULL, sizeof arg);
        tview in = view(hx, 0, t, 3, (int64_t[8]){A, B, C}, NULL);
        tview out = view(ho, 0, t, 3, (int64_t[8]){A, 1, C}, NULL);
        tview oi = view(hi, 0, NB_DTYPE_I64, 3, (int64_t[8]){A, 1, C}, NULL);
        assert_int_equal(run("sum", t, &out, 1, &in, NULL, NULL), NB_OK);
        buf_read(ho, got, sizeof got);
        for (int i = 0; i < A; i++)
            for (int j = 0; j < C; j++) {
                double s = 0;
                for (int r = 0; r < B; r++)
                    s += h2f(t, x[(i * B + r) * C + j]);
                expect_close("sum", i * C + j, h2f(t, got[i * C + j]), s, 1e-3, ulp16(t) / 2);
            }
        assert_int_equal(run("max", t, &out, 1, &in, NULL, NULL), NB_OK);
        buf_read(ho, got, sizeof got);
        assert_int_equal(run("argmax", t, &oi, 1, &in, NULL, (int64_t[8]){1}), NB_OK);
        buf_read(hi, arg, sizeof arg);
        for (int i = 0; i < A; i++)
            for (int j = 0; j < C; j++) {
                int best = 0;
                for (int r = 1; r < B; r++)
                    if (h2f(t, x[(i * B + r) * C + j]) > h2f(t, x[(i * B + best) * C + j]))
                        best = r;
                assert_int_equal(got[i * C + j], x[(i * B + best) * C + j]);
                assert_int_equal(arg[i * C + j], best);
            }
        P->free(0, hx);
        P->free(0, ho);
        P->free(0, hi);
        free(x);
    }
}

/* out (2,33,24) = 1.5 * a (2,33,40) @ b + 0.5 * out, b one (40,24) matrix for both batches
 * stored transposed: cublasGemmStridedBatchedEx in float32, rounded once. */
void half_matmul_reads_transposed_and_broadcast_batches(void **state)
{
    (void)state;
    enum { NB = 2, N = 33, K = 40, M = 24 };
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        uint16_t *a = half_rand(t, NB * N * K, 21), *b = half_rand(t, M * K, 22);
        uint16_t *c0 = half_rand(t, NB * N * M, 23), got[NB * N * M];
        void *ha = buf_from(a, NB * N * K * 2), *hb = buf_from(b, M * K * 2);
        void *ho = buf_from(c0, NB * N * M * 2);
        tview in[2] = {view(ha, 0, t, 3, (int64_t[8]){NB, N, K}, NULL),
                       view(hb, 0, t, 3, (int64_t[8]){1, K, M}, (int64_t[8]){0, 1, K})};
        tview out = view(ho, 0, t, 3, (int64_t[8]){NB, N, M}, NULL);
        assert_int_equal(run("matmul", t, &out, 2, in, (double[8]){1.5, 0.5}, NULL), NB_OK);
        buf_read(ho, got, sizeof got);
        for (int p = 0; p < NB; p++)
            for (int i = 0; i < N; i++)
                for (int j = 0; j < M; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)h2f(t, a[(p * N + i) * K + k]) * h2f(t, b[j * K + k]);
                    int e = (p * N + i) * M + j;
                    expect_close("matmul", e, h2f(t, got[e]), 1.5 * s + 0.5 * h2f(t, c0[e]),
                                 1e-3, ulp16(t));
                }
        /* operands of another dtype are refused, naming both */
        uint16_t one = 0;
        float f = 1;
        void *hf = buf_from(&f, 4), *h1 = buf_from(&one, 2);
        tview mixed[2] = {view(h1, 0, t, 3, (int64_t[8]){1, 1, 1}, NULL),
                          view(hf, 0, NB_DTYPE_F32, 3, (int64_t[8]){1, 1, 1}, NULL)};
        tview o1 = view(h1, 0, t, 3, (int64_t[8]){1, 1, 1}, NULL);
        assert_int_equal(run("matmul", t, &o1, 2, mixed, (double[8]){1, 0}, NULL),
                         NB_DTYPE_UNSUPPORTED);
        assert_non_null(strstr(last_error, "float32"));
        P->free(0, ha);
        P->free(0, hb);
        P->free(0, ho);
        P->free(0, hf);
        P->free(0, h1);
        free(a);
        free(b);
        free(c0);
    }
}

/* softmax and log_softmax over rows of 300, and softmax_backward, against float64. */
void half_softmax_rows_match_the_reference(void **state)
{
    (void)state;
    enum { R = 3, D = 300 };
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        uint16_t *x = half_rand(t, R * D, 31), *g = half_rand(t, R * D, 32), got[R * D],
                 y[R * D];
        void *hx = buf_from(x, sizeof y), *hg = buf_from(g, sizeof y), *ho = buf_from(NULL, sizeof y);
        int64_t shape[2] = {R, D};
        tview in = view(hx, 0, t, 2, shape, NULL), out = view(ho, 0, t, 2, shape, NULL);
        for (int log_ = 0; log_ < 2; log_++) {
            assert_int_equal(run(log_ ? "log_softmax" : "softmax", t, &out, 1, &in, NULL,
                                 (int64_t[8]){1}), NB_OK);
            buf_read(ho, log_ ? got : y, sizeof got);
            for (int r = 0; r < R; r++) {
                double mx = -INFINITY, s = 0;
                for (int k = 0; k < D; k++)
                    mx = fmax(mx, h2f(t, x[r * D + k]));
                for (int k = 0; k < D; k++)
                    s += exp(h2f(t, x[r * D + k]) - mx);
                for (int k = 0; k < D; k++) {
                    double v = h2f(t, x[r * D + k]) - mx;
                    double ref = log_ ? v - log(s) : exp(v) / s;
                    expect_close(log_ ? "log_softmax" : "softmax", r * D + k,
                                 h2f(t, (log_ ? got : y)[r * D + k]), ref, 1e-6, ulp16(t));
                }
            }
        }
        /* softmax_backward(grad, y) = y * (grad - sum(grad * y)) */
        void *hy = buf_from(y, sizeof y);
        tview bin[2] = {view(hg, 0, t, 2, shape, NULL), view(hy, 0, t, 2, shape, NULL)};
        assert_int_equal(run("softmax_backward", t, &out, 2, bin, NULL, (int64_t[8]){1}), NB_OK);
        buf_read(ho, got, sizeof got);
        for (int r = 0; r < R; r++) {
            double s = 0;
            for (int k = 0; k < D; k++)
                s += (double)h2f(t, g[r * D + k]) * h2f(t, y[r * D + k]);
            for (int k = 0; k < D; k++)
                expect_close("softmax_backward", r * D + k, h2f(t, got[r * D + k]),
                             h2f(t, y[r * D + k]) * (h2f(t, g[r * D + k]) - s), 1e-5, ulp16(t));
        }
        P->free(0, hx);
        P->free(0, hg);
        P->free(0, hy);
        P->free(0, ho);
        free(x);
        free(g);
    }
}

/* conv2d and both backwards, x (2,3,6,6), w (4,3,3,3), padding 1: 16-bit operands, float32
 * accumulation (the weight gradient sums both images before it rounds). */
void half_conv2d_and_backwards_match_loops(void **state)
{
    (void)state;
    enum { N = 2, C = 3, H = 6, O = 4, KS = 3, XN = N * C * H * H, WN = O * C * KS * KS,
           YN = N * O * H * H };
    const int64_t par[8] = {1, 1, 1, 1, 1, 1, 1}; /* stride, padding, dilation, groups */
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        uint16_t *x = half_rand(t, XN, 41), *w = half_rand(t, WN, 42), *gy = half_rand(t, YN, 43);
        static uint16_t y[YN], gx[XN], gw[WN];
        static double ry[YN], rgx[XN], rgw[WN];
        memset(ry, 0, sizeof ry);
        memset(rgx, 0, sizeof rgx);
        memset(rgw, 0, sizeof rgw);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < O; o++)
                for (int i = 0; i < H; i++)
                    for (int j = 0; j < H; j++)
                        for (int c = 0; c < C; c++)
                            for (int ki = 0; ki < KS; ki++)
                                for (int kj = 0; kj < KS; kj++) {
                                    int h = i - 1 + ki, v = j - 1 + kj;
                                    if (h < 0 || h >= H || v < 0 || v >= H)
                                        continue;
                                    int xi = ((n * C + c) * H + h) * H + v;
                                    int wi = ((o * C + c) * KS + ki) * KS + kj;
                                    int yi = ((n * O + o) * H + i) * H + j;
                                    ry[yi] += (double)h2f(t, x[xi]) * h2f(t, w[wi]);
                                    rgx[xi] += (double)h2f(t, gy[yi]) * h2f(t, w[wi]);
                                    rgw[wi] += (double)h2f(t, gy[yi]) * h2f(t, x[xi]);
                                }
        void *hx = buf_from(x, XN * 2), *hw = buf_from(w, WN * 2), *hg = buf_from(gy, YN * 2);
        void *hy = buf_from(NULL, YN * 2), *hgx = buf_from(NULL, XN * 2);
        void *hgw = buf_from(NULL, WN * 2);
        tview vx = view(hx, 0, t, 4, (int64_t[8]){N, C, H, H}, NULL);
        tview vw = view(hw, 0, t, 4, (int64_t[8]){O, C, KS, KS}, NULL);
        tview vg = view(hg, 0, t, 4, (int64_t[8]){N, O, H, H}, NULL);
        tview vy = view(hy, 0, t, 4, (int64_t[8]){N, O, H, H}, NULL);
        tview vgx = view(hgx, 0, t, 4, (int64_t[8]){N, C, H, H}, NULL);
        tview vgw = view(hgw, 0, t, 4, (int64_t[8]){O, C, KS, KS}, NULL);
        tview fwd[2] = {vx, vw}, bi[2] = {vg, vw}, bw[2] = {vg, vx};
        assert_int_equal(run("conv2d", t, &vy, 2, fwd, NULL, par), NB_OK);
        assert_int_equal(run("conv2d_backward_input", t, &vgx, 2, bi, NULL, par), NB_OK);
        assert_int_equal(run("conv2d_backward_weight", t, &vgw, 2, bw, NULL, par), NB_OK);
        buf_read(hy, y, sizeof y);
        buf_read(hgx, gx, sizeof gx);
        buf_read(hgw, gw, sizeof gw);
        for (int k = 0; k < YN; k++)
            expect_close("conv2d", k, h2f(t, y[k]), ry[k], 1e-3, ulp16(t));
        for (int k = 0; k < XN; k++)
            expect_close("conv2d_backward_input", k, h2f(t, gx[k]), rgx[k], 1e-3, ulp16(t));
        for (int k = 0; k < WN; k++)
            expect_close("conv2d_backward_weight", k, h2f(t, gw[k]), rgw[k], 1e-3, ulp16(t));
        P->free(0, hx);
        P->free(0, hw);
        P->free(0, hg);
        P->free(0, hy);
        P->free(0, hgx);
        P->free(0, hgw);
        free(x);
        free(w);
        free(gy);
    }
}

/* scatter_add and max_pool2d_backward sum in float32 and round once: V + 1 + 1 + 1 + 1 where V
 * + 1 is a tie that rounds back to V in the 16-bit type (V = 2048 in float16, 256 in bfloat16),
 * so adding in 16 bits would give V in at least one order of the atomics; float32 gives V + 4. */
void half_scatter_add_and_pool_backward_sum_in_float(void **state)
{
    (void)state;
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        float v = t == NB_DTYPE_F16 ? 2048.0f : 256.0f;
        uint16_t out[2] = {f2h(t, v), f2h(t, v)}, src[8], got[16];
        int64_t idx[8] = {0, 1, 0, 1, 0, 1, 0, 1};
        for (int k = 0; k < 8; k++)
            src[k] = f2h(t, 1.0f);
        void *ho = buf_from(out, sizeof out), *hi = buf_from(idx, sizeof idx);
        void *hs = buf_from(src, sizeof src);
        tview o = view(ho, 0, t, 1, (int64_t[8]){2}, NULL);
        tview in[2] = {view(hi, 0, NB_DTYPE_I64, 1, (int64_t[8]){8}, NULL),
                       view(hs, 0, t, 1, (int64_t[8]){8}, NULL)};
        assert_int_equal(run("scatter_add", t, &o, 2, in, NULL, (int64_t[8]){0}), NB_OK);
        buf_read(ho, got, 4);
        assert_int_equal(got[0], f2h(t, v + 4));
        assert_int_equal(got[1], f2h(t, v + 4));

        /* pooled grad (1,1,2,2) = {V, 1, 1, 1}, every index 5 of a (1,1,4,4) input:
         * float32 sums V + 3, a tie that rounds to V + 4 (even); in 16 bits V + 1 -> V first */
        uint16_t g[4] = {f2h(t, v), f2h(t, 1), f2h(t, 1), f2h(t, 1)};
        int64_t ind[4] = {5, 5, 5, 5};
        void *hg = buf_from(g, sizeof g), *hn = buf_from(ind, sizeof ind);
        void *hx = buf_from(NULL, 32);
        tview pin[2] = {view(hg, 0, t, 4, (int64_t[8]){1, 1, 2, 2}, NULL),
                        view(hn, 0, NB_DTYPE_I64, 4, (int64_t[8]){1, 1, 2, 2}, NULL)};
        tview px = view(hx, 0, t, 4, (int64_t[8]){1, 1, 4, 4}, NULL);
        assert_int_equal(run("max_pool2d_backward", t, &px, 2, pin, NULL,
                             (int64_t[8]){2, 2, 2, 2, 0, 0}), NB_OK);
        buf_read(hx, got, 32);
        for (int k = 0; k < 16; k++)
            assert_int_equal(got[k], k == 5 ? f2h(t, v + 4) : 0);
        P->free(0, ho);
        P->free(0, hi);
        P->free(0, hs);
        P->free(0, hg);
        P->free(0, hn);
        P->free(0, hx);
    }
}

/* random fills are the float32 numbers rounded once, as the cpu plugin gives them */
void half_random_is_the_float32_numbers_rounded(void **state)
{
    (void)state;
    enum { N = 4096 };
    for (int tt = 0; tt < 2; tt++) {
        nb_dtype t = half_types[tt];
        static uint16_t got[N];
        void *ho = buf_from(NULL, sizeof got);
        tview out = view(ho, 0, t, 1, (int64_t[8]){N}, NULL);
        assert_int_equal(run("random_uniform", t, &out, 0, NULL, (double[8]){-1.0, 3.0},
                             (int64_t[8]){1234, 5}), NB_OK);
        buf_read(ho, got, sizeof got);
        for (int k = 0; k < N; k++) {
            float f = (float)(-1.0 + 4.0 * nb_philox_uniform(1234, 5, (uint64_t)k, 0));
            assert_int_equal(got[k], f2h(t, f));
        }
        P->free(0, ho);
    }
}
