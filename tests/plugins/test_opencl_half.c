/* test_opencl_half.c - float16 and bfloat16 on the opencl plugin: conversions bit for bit against
 * the SDK's functions (nabla_plugin.h); elementwise ops, reductions, matmul, conv2d, pooling,
 * index ops, random numbers and optimizer steps against float32 (or float64) computed on the
 * host from the same 16-bit inputs (the cpu plugin's rule: widen, compute in float, round
 * once); every op having its 16-bit kernels. */
#include "test_opencl.h"

static const nb_dtype halves[2] = {NB_DTYPE_BF16, NB_DTYPE_F16};

static float widen(nb_dtype t, uint16_t h) { return t == NB_DTYPE_F16 ? nb_f16_to_f32(h) : nb_bf16_to_f32(h); }
static uint16_t narrow(nb_dtype t, float f) { return t == NB_DTYPE_F16 ? nb_f32_to_f16(f) : nb_f32_to_bf16(f); }

static int registered(const char *op, nb_dtype t)
{
    for (size_t k = 0; k < P->n_kernels; k++)
        if (strcmp(P->kernels[k].op, op) == 0 && P->kernels[k].dtype == t)
            return 1;
    return 0;
}

static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s;
}

/* copy from src (n elements of dtype st) into a fresh buffer of dtype dt, read back */
static void copy_to(nb_dtype dt, nb_dtype st, const void *src, int64_t n, void *dst)
{
    void *hi, *ho;
    tview in = vec((void *)src, st, n, &hi), out = vec(NULL, dt, n, &ho);
    assert_int_equal(run("copy", dt, &out, 1, &in, NULL, NULL), NB_OK);
    buf_read(ho, dst, (size_t)n * esize[dt]);
    P->free(0, hi);
    P->free(0, ho);
}

void every_16_bit_pattern_converts_as_the_sdk_does(void **state)
{
    (void)state;
    enum { N = 65536, M = 1 << 18 };
    uint16_t *h = malloc(N * sizeof *h), *h2 = malloc((N + M) * sizeof *h2);
    float *f = malloc((N + M) * sizeof *f);
    assert_non_null(h);
    assert_non_null(h2);
    assert_non_null(f);
    for (int k = 0; k < N; k++)
        h[k] = (uint16_t)k;
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        /* 16 -> 32: every pattern widens exactly (NaN payloads too) */
        copy_to(NB_DTYPE_F32, t, h, N, f);
        for (int k = 0; k < N; k++) {
            uint32_t got, want = nb_f32_bits_(widen(t, (uint16_t)k));
            memcpy(&got, &f[k], 4);
            if (got != want)
                fail_msg("%s 0x%04x -> f32: got 0x%08x, expected 0x%08x", t == NB_DTYPE_F16 ?
                         "f16" : "bf16", k, got, want);
        }
        /* 32 -> 16: those floats, their neighbours (ties sit between), random bit patterns
         * (NaNs, subnormals, overflow) */
        uint32_t s = 12345u;
        for (int k = 0; k < M; k++) {
            uint32_t b = k < N ? nb_f32_bits_(widen(t, (uint16_t)k)) + (k & 3u) : lcg(&s);
            if (k < N && (k & 4))
                b += t == NB_DTYPE_F16 ? 0x1000u : 0x8000u; /* exactly half way */
            f[N + k] = nb_bits_f32_(b);
        }
        copy_to(t, NB_DTYPE_F32, f + N, M, h2);
        for (int k = 0; k < M; k++) {
            uint16_t want = narrow(t, f[N + k]);
            if (h2[k] != want)
                fail_msg("f32 0x%08x -> %s: got 0x%04x, expected 0x%04x",
                         nb_f32_bits_(f[N + k]), t == NB_DTYPE_F16 ? "f16" : "bf16", h2[k],
                         want);
        }
        /* the same dtype: the bits unchanged, signalling NaNs included */
        copy_to(t, t, h, N, h2);
        assert_memory_equal(h2, h, N * sizeof *h);
        /* into the other 16-bit type: one rounding from the exact value */
        nb_dtype u = halves[1 - ti];
        copy_to(u, t, h, N, h2);
        for (int k = 0; k < N; k++)
            if (h2[k] != narrow(u, widen(t, (uint16_t)k)))
                fail_msg("16-bit 0x%04x -> other: got 0x%04x", k, h2[k]);
    }
    free(h);
    free(h2);
    free(f);
}

void integers_and_doubles_round_once_into_16_bits(void **state)
{
    (void)state;
    /* ties that double rounding through float gets wrong: 2^24 + 2^16 + 1 is above bf16's tie
     * 2^24 + 2^16, yet rounds to it in float first */
    int32_t iv[] = {0, 1, -1, 255, 256, 257, 16777217, 16777216 + 65536 + 1, -(16777216 + 65536 + 1),
                    2049, 2051, 65519, 65520, 70000, INT32_MAX, INT32_MIN, 4097, -4097};
    int64_t lv[] = {0, -7, (1ll << 40) + (1ll << 32) + 1, -((1ll << 40) + (1ll << 32) + 1),
                    (1ll << 52) + 3, 65520, 65519, INT64_MIN};
    double dv[] = {0.1, -0.1, 1 + 0x1p-8 + 0x1p-30, 1 + 0x1p-11 + 0x1p-40, 1e300, -1e300,
                   0x1p-140, 0x1p-25 + 0x1p-60, 65520.0, 65519.99, -0.0, NAN, INFINITY, 3.0e38,
                   5e-324};
    int ni = sizeof iv / sizeof iv[0], nl = sizeof lv / sizeof lv[0], nd = sizeof dv / sizeof dv[0];
    uint16_t out[32];
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        uint16_t (*ref)(double) = t == NB_DTYPE_F16 ? nb_f64_to_f16 : nb_f64_to_bf16;
        copy_to(t, NB_DTYPE_I32, iv, ni, out);
        for (int k = 0; k < ni; k++)
            if (out[k] != ref((double)iv[k]))
                fail_msg("i32 %d: got 0x%04x, expected 0x%04x", iv[k], out[k], ref(iv[k]));
        copy_to(t, NB_DTYPE_I64, lv, nl, out);
        for (int k = 0; k < nl; k++) /* all below 2^53 or powers of two: exact in double */
            if (out[k] != ref((double)lv[k]))
                fail_msg("i64 %lld: got 0x%04x, expected 0x%04x", (long long)lv[k], out[k],
                         ref((double)lv[k]));
        if (has_f64) {
            copy_to(t, NB_DTYPE_F64, dv, nd, out);
            for (int k = 0; k < nd; k++)
                if (out[k] != ref(dv[k]))
                    fail_msg("f64 %a: got 0x%04x, expected 0x%04x", dv[k], out[k], ref(dv[k]));
        }
        /* and back out into the integer types, by nb_float_to_int64's rule */
        uint16_t src[6];
        float vals[6] = {2.75f, -3.5f, 300.0f, -0.0f, NAN, INFINITY};
        for (int k = 0; k < 6; k++)
            src[k] = narrow(t, vals[k]);
        int64_t li[6];
        int32_t ii[6];
        uint8_t u8[6], bo[6];
        copy_to(NB_DTYPE_I64, t, src, 6, li);
        copy_to(NB_DTYPE_I32, t, src, 6, ii);
        copy_to(NB_DTYPE_U8, t, src, 6, u8);
        copy_to(NB_DTYPE_BOOL, t, src, 6, bo);
        for (int k = 0; k < 6; k++) {
            int64_t w = nb_float_to_int64(widen(t, src[k]));
            assert_int_equal(li[k], w);
            assert_int_equal(ii[k], (int32_t)(uint32_t)(uint64_t)w);
            assert_int_equal(u8[k], (uint8_t)(uint64_t)w);
            assert_int_equal(bo[k], widen(t, src[k]) != 0);
        }
        /* fill rounds the double once */
        void *hf;
        tview fv = vec(NULL, t, 5, &hf);
        double fval[8] = {1 + 0x1p-8 + 0x1p-30};
        assert_int_equal(run("fill", t, &fv, 0, NULL, fval, NULL), NB_OK);
        buf_read(hf, out, 5 * 2);
        for (int k = 0; k < 5; k++)
            assert_int_equal(out[k], ref(fval[0]));
        P->free(0, hf);
    }
}

/* random 16-bit values in [-2, 2) (log/sqrt/pow take |x| + 0.25) */
static void fill_random(nb_dtype t, uint16_t *h, int n, unsigned seed, int positive)
{
    for (int k = 0; k < n; k++) {
        float x = frand(&seed);
        h[k] = narrow(t, positive ? fabsf(x) + 0.25f : x);
    }
}

/* got must be round(want) exactly where OpenCL requires the float op correctly rounded (+ - *,
 * floor, ...), else within one 16-bit ulp of it (exp, sqrt, division: a few float ulp) */
static void expect_16(const char *op, nb_dtype t, int k, uint16_t got, float want, int exact)
{
    uint16_t w = narrow(t, want);
    if (got == w)
        return;
    float g = widen(t, got), ulp = t == NB_DTYPE_F16 ? 0x1p-10f : 0x1p-7f;
    if (exact || isnan(want) != isnan(g) ||
        !(fabsf(g - want) <= ulp * fmaxf(fabsf(want), 0x1p-14f)))
        fail_msg("%s %s[%d]: got %a (0x%04x), expected %a (0x%04x)", op,
                 t == NB_DTYPE_F16 ? "f16" : "bf16", k, g, got, widen(t, w), w);
}

void elementwise_ops_compute_in_float_and_round_once(void **state)
{
    (void)state;
    enum { R = 7, C = 13, N = R * C };
    static const struct {
        const char *op;
        int exact, positive;
        float (*f)(float);
    } un[] = {{"neg", 1, 0, NULL},     {"abs", 1, 0, fabsf},    {"sqrt", 0, 1, sqrtf},
              {"exp", 0, 0, expf},     {"log", 0, 1, logf},     {"tanh", 0, 0, tanhf},
              {"sin", 0, 0, sinf},     {"floor", 1, 0, floorf}, {"round", 1, 0, rintf}};
    static const char *const bin[] = {"add", "sub", "mul", "div", "maximum", "minimum"};
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        uint16_t a[N], b[N], pa[N], out[N];
        fill_random(t, a, N, 1u + ti, 0);
        fill_random(t, b, N, 99u + ti, 0);
        fill_random(t, pa, N, 7u, 1);
        a[3] = narrow(t, NAN);
        void *ha, *hb, *hp, *ho;
        tview va = vec(a, t, N, &ha), vp = vec(pa, t, N, &hp), vo = vec(NULL, t, N, &ho);
        hb = buf_from(b, sizeof b);
        for (size_t u = 0; u < sizeof un / sizeof un[0]; u++) {
            const tview *in = un[u].positive ? &vp : &va;
            const uint16_t *src = un[u].positive ? pa : a;
            assert_int_equal(run(un[u].op, t, &vo, 1, in, NULL, NULL), NB_OK);
            buf_read(ho, out, sizeof out);
            for (int k = 0; k < N; k++) {
                float x = widen(t, src[k]);
                expect_16(un[u].op, t, k, out[k], un[u].f ? un[u].f(x) : -x, un[u].exact);
            }
        }
        /* binary: b is a [C] row broadcast over R rows, a read transposed (strides 1, R) */
        int64_t shape[2] = {R, C}, st_a[2] = {1, R}, st_b[2] = {0, 1};
        tview ins[2] = {view(ha, 0, t, 2, shape, st_a), view(hb, 0, t, 2, shape, st_b)};
        tview o2 = view(ho, 0, t, 2, shape, NULL);
        for (size_t op = 0; op < sizeof bin / sizeof bin[0]; op++) {
            assert_int_equal(run(bin[op], t, &o2, 2, ins, NULL, NULL), NB_OK);
            buf_read(ho, out, sizeof out);
            for (int r = 0; r < R; r++)
                for (int c = 0; c < C; c++) {
                    float x = widen(t, a[c * R + r]), z = widen(t, b[c]), y;
                    switch (op) {
                    case 0: y = x + z; break;
                    case 1: y = x - z; break;
                    case 2: y = x * z; break;
                    case 3: y = x / z; break;
                    case 4: y = (isnan(x) || isnan(z)) ? x + z : (x < z ? z : x); break;
                    default: y = (isnan(x) || isnan(z)) ? x + z : (x > z ? z : x); break;
                    }
                    /* OpenCL lets float division be 2.5 ulp off: one 16-bit ulp for div */
                    expect_16(bin[op], t, r * C + c, out[r * C + c], y, op != 3);
                }
        }
        /* a scalar op takes the scalar in float (PyTorch's opmath), not rounded to 16 bits */
        double f[8] = {0.1, 0};
        assert_int_equal(run("mul_scalar", t, &vo, 1, &va, f, NULL), NB_OK);
        buf_read(ho, out, sizeof out);
        for (int k = 0; k < N; k++)
            expect_16("mul_scalar", t, k, out[k], widen(t, a[k]) * 0.1f, 1);
        double cl[8] = {-0.5, 0.75};
        int64_t ci[8] = {1, 1};
        assert_int_equal(run("clamp", t, &vo, 1, &va, cl, ci), NB_OK);
        buf_read(ho, out, sizeof out);
        for (int k = 0; k < N; k++) {
            float x = widen(t, a[k]);
            expect_16("clamp", t, k, out[k], isnan(x) ? x : fminf(fmaxf(x, -0.5f), 0.75f), 1);
        }
        /* comparisons give bool; where moves the bits */
        uint8_t bo[N];
        void *hc;
        tview vc = vec(NULL, NB_DTYPE_BOOL, N, &hc);
        tview pair[2] = {va, vp};
        assert_int_equal(run("lt", t, &vc, 2, pair, NULL, NULL), NB_OK);
        buf_read(hc, bo, sizeof bo);
        for (int k = 0; k < N; k++)
            assert_int_equal(bo[k], widen(t, a[k]) < widen(t, pa[k]));
        double gs[8] = {0.3};
        assert_int_equal(run("ge_scalar", t, &vc, 1, &va, gs, NULL), NB_OK);
        buf_read(hc, bo, sizeof bo);
        for (int k = 0; k < N; k++)
            assert_int_equal(bo[k], widen(t, a[k]) >= widen(t, t == NB_DTYPE_F16 ?
                                                             nb_f64_to_f16(0.3) :
                                                             nb_f64_to_bf16(0.3)));
        /* the scalar rounded to the tensor's dtype first, as torch does: bf16 1.0 == 1.001
         * (1.001 rounds to 1.0 in bfloat16), f16 1.0 == 1.0002 */
        double es[8] = {t == NB_DTYPE_F16 ? 1.0002 : 1.001};
        uint16_t one = narrow(t, 1.0f);
        void *h1;
        tview v1 = vec(&one, t, 1, &h1), c1 = view(hc, 0, NB_DTYPE_BOOL, 1, (int64_t[]){1}, NULL);
        assert_int_equal(run("eq_scalar", t, &c1, 1, &v1, es, NULL), NB_OK);
        buf_read(hc, bo, 1);
        assert_int_equal(bo[0], 1);
        P->free(0, h1);
        assert_int_equal(run("ge_scalar", t, &vc, 1, &va, gs, NULL), NB_OK);
        buf_read(hc, bo, sizeof bo);
        /* relu_backward: the gradient where x > 0 (x = a, gradient = pa), else 0 */
        tview rb[2] = {vp, va};
        assert_int_equal(run("relu_backward", t, &vo, 2, rb, NULL, NULL), NB_OK);
        buf_read(ho, out, sizeof out);
        for (int k = 0; k < N; k++)
            assert_int_equal(out[k], widen(t, a[k]) > 0 ? pa[k] : 0);
        tview w3[3] = {vc, va, pair[1]};
        assert_int_equal(run("where", t, &vo, 3, w3, NULL, NULL), NB_OK);
        buf_read(ho, out, sizeof out);
        for (int k = 0; k < N; k++)
            assert_int_equal(out[k], bo[k] ? a[k] : pa[k]);
        P->free(0, ha);
        P->free(0, hb);
        P->free(0, hp);
        P->free(0, ho);
        P->free(0, hc);
    }
}

void reductions_accumulate_in_float(void **state)
{
    (void)state;
    enum { A = 3, B = 700, C = 4, N = A * B * C };
    uint16_t *x = malloc(N * sizeof *x);
    assert_non_null(x);
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        fill_random(t, x, N, 5u + ti, 0);
        void *hx, *ho, *hi;
        hx = buf_from(x, N * sizeof *x);
        ho = buf_new(A * C * 2);
        hi = buf_new(A * C * 8);
        int64_t shape[3] = {A, B, C}, oshape[3] = {A, 1, C};
        tview in = view(hx, 0, t, 3, shape, NULL), out = view(ho, 0, t, 3, oshape, NULL);
        tview outi = view(hi, 0, NB_DTYPE_I64, 3, oshape, NULL);
        uint16_t got[A * C];
        int64_t gi[A * C];
        assert_int_equal(run("sum", t, &out, 1, &in, NULL, NULL), NB_OK);
        buf_read(ho, got, sizeof got);
        for (int a = 0; a < A; a++)
            for (int c = 0; c < C; c++) {
                double s = 0, sa = 0;
                for (int b = 0; b < B; b++) {
                    s += widen(t, x[(a * B + b) * C + c]);
                    sa += fabs(widen(t, x[(a * B + b) * C + c]));
                }
                /* one rounding into 16 bits, plus float accumulation's own error */
                double g = widen(t, got[a * C + c]), ulp = t == NB_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
                if (!(fabs(g - s) <= ulp * fabs(s) + sa * 0x1p-20))
                    fail_msg("sum [%d,:,%d]: got %g, expected %g", a, c, g, s);
            }
        assert_int_equal(run("max", t, &out, 1, &in, NULL, NULL), NB_OK);
        buf_read(ho, got, sizeof got);
        assert_int_equal(run("argmax", t, &outi, 1, &in, NULL, (int64_t[8]){1}), NB_OK);
        buf_read(hi, gi, sizeof gi);
        for (int a = 0; a < A; a++)
            for (int c = 0; c < C; c++) {
                int best = 0;
                for (int b = 1; b < B; b++)
                    if (widen(t, x[(a * B + b) * C + c]) > widen(t, x[(a * B + best) * C + c]))
                        best = b;
                assert_int_equal(got[a * C + c], x[(a * B + best) * C + c]);
                assert_int_equal(gi[a * C + c], best);
            }
        P->free(0, hx);
        P->free(0, ho);
        P->free(0, hi);
    }
    free(x);
}

void matmul_widens_to_float32_and_rounds_once(void **state)
{
    (void)state;
    enum { Bt = 2, M = 9, K = 33, N = 17 };
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        uint16_t a[Bt * M * K], b[K * N], c0[Bt * M * N], c[Bt * M * N];
        fill_random(t, a, Bt * M * K, 3u, 0);
        fill_random(t, b, K * N, 4u, 0);
        fill_random(t, c0, Bt * M * N, 6u, 0);
        void *ha = buf_from(a, sizeof a), *hb = buf_from(b, sizeof b), *hc = buf_from(c0, sizeof c0);
        /* b shared by both batches (batch stride 0) and read transposed; beta adds out */
        int64_t sa[3] = {Bt, M, K}, sb[3] = {Bt, K, N}, sc[3] = {Bt, M, N};
        int64_t stb[3] = {0, 1, K};
        tview ins[2] = {view(ha, 0, t, 3, sa, NULL), view(hb, 0, t, 3, sb, stb)};
        tview out = view(hc, 0, t, 3, sc, NULL);
        double f[8] = {1.5, 0.5};
        assert_int_equal(run("matmul", t, &out, 2, ins, f, NULL), NB_OK);
        buf_read(hc, c, sizeof c);
        for (int bt = 0; bt < Bt; bt++)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0, sabs = 0;
                    for (int k = 0; k < K; k++) {
                        double p = (double)widen(t, a[(bt * M + i) * K + k]) *
                                   widen(t, b[j * K + k]); /* b[k][j] stored at j*K + k */
                        s += p;
                        sabs += fabs(p);
                    }
                    int o = (bt * M + i) * N + j;
                    double want = 1.5 * s + 0.5 * widen(t, c0[o]);
                    double g = widen(t, c[o]), ulp = t == NB_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
                    if (!(fabs(g - want) <= ulp * fabs(want) + 2 * sabs * 0x1p-20 + 0x1p-24))
                        fail_msg("matmul [%d,%d,%d]: got %g, expected %g", bt, i, j, g, want);
                }
        /* mixed dtypes are the caller's mistake */
        tview f32in = view(ha, 0, NB_DTYPE_F32, 3, (int64_t[]){1, 1, 1}, NULL);
        tview bad[2] = {f32in, ins[1]};
        assert_int_equal(run("matmul", t, &out, 2, bad, f, NULL), NB_DTYPE_UNSUPPORTED);
        assert_non_null(strstr(last_error, "input 0 is f32"));
        P->free(0, ha);
        P->free(0, hb);
        P->free(0, hc);
    }
}

/* A 16-bit result against a double reference of the same 16-bit inputs: within one 16-bit ulp
 * (the float32 sum rounds once; a sum kept in 16 bits drifts by several ulp over dozens of
 * terms), atol for float32 cancellation near 0. */
static void expect_16_near(const char *what, nb_dtype t, size_t k, uint16_t got, double ref)
{
    expect_close(what, k, widen(t, got), ref, 1e-4, t == NB_DTYPE_F16 ? 0x1p-10 : 0x1p-7);
}

/* conv2d with groups 2, stride (2,1), padding (1,1), dilation (1,2) and a weight stored
 * transposed (not dense), through the GEMM path and the direct kernels, and its gradients;
 * max_pool2d with overlapping windows. */
void conv2d_and_pooling_sum_in_float_and_round_once(void **state)
{
    (void)state;
    enum { N = 2, C = 4, H = 9, W = 8, O = 6, G = 2, KH = 3, KW = 2, SH = 2, SW = 1, PH = 1,
           PW = 1, DH = 1, DW = 2 };
    enum { OH = (H + 2 * PH - DH * (KH - 1) - 1) / SH + 1,
           OW = (W + 2 * PW - DW * (KW - 1) - 1) / SW + 1, CG = C / G, OG = O / G,
           NX = N * C * H * W, NW = O * CG * KH * KW, NY = N * O * OH * OW };
    static uint16_t x[NX], w[NW], gy[NY], y[NY], gx[NX], gw[NW];
    static double ry[NY], rgx[NX], rgw[NW], xd[NX], wd[NW], gyd[NY];
    /* w (O, CG, KH, KW) stored as (CG, O, KH, KW) */
    const int64_t w_st[4] = {KH * KW, O * KH * KW, KW, 1};
    static const char *const modes[] = {"gemm", "direct"};
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        fill_random(t, x, NX, 31u + ti, 0);
        x[5] = x[6] = narrow(t, 9.0f); /* a tie for max_pool2d: the first wins */
        fill_random(t, w, NW, 37u + ti, 0);
        fill_random(t, gy, NY, 41u + ti, 0);
        for (int k = 0; k < NX; k++)
            xd[k] = widen(t, x[k]);
        for (int k = 0; k < NW; k++)
            wd[k] = widen(t, w[k]);
        for (int k = 0; k < NY; k++)
            gyd[k] = widen(t, gy[k]);
        ref_conv2d(&(conv_ref){N, C, H, W, O, G, KH, KW, SH, SW, PH, PW, DH, DW, w_st}, xd, wd,
                   gyd, ry, rgx, rgw);
        void *hx = buf_from(x, sizeof x), *hw = buf_from(w, sizeof w), *hgy = buf_from(gy, sizeof gy);
        void *hy = buf_new(sizeof y), *hgx = buf_new(sizeof gx), *hgw = buf_new(sizeof gw);
        tview vx = view(hx, 0, t, 4, (int64_t[]){N, C, H, W}, NULL);
        tview vw = view(hw, 0, t, 4, (int64_t[]){O, CG, KH, KW}, w_st);
        tview vy = view(hy, 0, t, 4, (int64_t[]){N, O, OH, OW}, NULL);
        tview vgy = view(hgy, 0, t, 4, (int64_t[]){N, O, OH, OW}, NULL);
        tview vgx = view(hgx, 0, t, 4, (int64_t[]){N, C, H, W}, NULL);
        tview vgw = view(hgw, 0, t, 4, (int64_t[]){O, CG, KH, KW}, w_st);
        int64_t i[8] = {SH, SW, PH, PW, DH, DW, G};
        tview fin[2] = {vx, vw}, bin[2] = {vgy, vw}, win[2] = {vgy, vx};
        for (int m = 0; m < 2; m++) {
            setenv("NABLA_OPENCL_CONV", modes[m], 1);
            assert_int_equal(run("conv2d", t, &vy, 2, fin, NULL, i), NB_OK);
            assert_int_equal(run("conv2d_backward_input", t, &vgx, 2, bin, NULL, i), NB_OK);
            assert_int_equal(run("conv2d_backward_weight", t, &vgw, 2, win, NULL, i), NB_OK);
            buf_read(hy, y, sizeof y);
            buf_read(hgx, gx, sizeof gx);
            buf_read(hgw, gw, sizeof gw);
            for (size_t k = 0; k < NY; k++)
                expect_16_near(modes[m], t, k, y[k], ry[k]);
            for (size_t k = 0; k < NX; k++)
                expect_16_near(modes[m], t, k, gx[k], rgx[k]);
            for (size_t k = 0; k < NW; k++)
                expect_16_near(modes[m], t, k, gw[k], rgw[k]);
        }
        unsetenv("NABLA_OPENCL_CONV");
        /* an f32 weight with 16-bit data: one dtype per conv */
        tview w32 = view(hw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, CG, KH, 1}, NULL);
        tview mixed[2] = {vx, w32};
        assert_int_equal(run("conv2d", t, &vy, 2, mixed, NULL, i), NB_DTYPE_UNSUPPORTED);

        /* max_pool2d 3x3, stride 2, padding 1 over x: the max is exact, the backward sums up to
         * four windows' gradients in float */
        enum { K = 3, S = 2, PD = 1, PH2 = (H + 2 * PD - K) / S + 1, PW2 = (W + 2 * PD - K) / S + 1,
               NP = N * C * PH2 * PW2 };
        static uint16_t py[NP], pgy[NP];
        static int64_t idx[NP], ridx[NP];
        static double pry[NP], pgyd[NP];
        fill_random(t, pgy, NP, 43u + ti, 0);
        void *hpy = buf_new(sizeof py), *hi = buf_new(sizeof idx), *hpgy = buf_from(pgy, sizeof pgy);
        tview vpy = view(hpy, 0, t, 4, (int64_t[]){N, C, PH2, PW2}, NULL);
        tview vi = view(hi, 0, NB_DTYPE_I64, 4, (int64_t[]){N, C, PH2, PW2}, NULL);
        tview vpgy = view(hpgy, 0, t, 4, (int64_t[]){N, C, PH2, PW2}, NULL);
        int64_t pi[8] = {K, K, S, S, PD, PD};
        tview pin[2] = {vx, vi}, pbin[2] = {vpgy, vi};
        assert_int_equal(run("max_pool2d", t, &vpy, 2, pin, NULL, pi), NB_OK);
        assert_int_equal(run("max_pool2d_backward", t, &vgx, 2, pbin, NULL, pi), NB_OK);
        buf_read(hpy, py, sizeof py);
        buf_read(hi, idx, sizeof idx);
        buf_read(hgx, gx, sizeof gx);
        for (int k = 0; k < NP; k++)
            pgyd[k] = widen(t, pgy[k]);
        ref_max_pool2d(N * C, H, W, K, S, PD, xd, pgyd, pry, ridx, rgx);
        for (int r = 0; r < NP; r++) {
            assert_int_equal(py[r], narrow(t, (float)pry[r]));
            assert_int_equal(idx[r], ridx[r]);
        }
        for (size_t k = 0; k < NX; k++)
            assert_int_equal(gx[k], narrow(t, (float)rgx[k])); /* <= 4 terms: exact in float */
        P->free(0, hpy);
        P->free(0, hi);
        P->free(0, hpgy);
        P->free(0, hx);
        P->free(0, hw);
        P->free(0, hgy);
        P->free(0, hy);
        P->free(0, hgx);
        P->free(0, hgw);
    }
}

/* gather moves the stored bits; scatter_add sums into a float32 copy of out and rounds once:
 * 64 additions of a quarter ulp to 1.0 give 1 + 16 ulp in float, while 16-bit partial sums would
 * stay at 1.0. Both the serial path and the chunked one (NABLA_OPENCL_SCATTER). */
void index_ops_move_bits_and_scatter_add_sums_in_float(void **state)
{
    (void)state;
    enum { R = 3, C = 5, J = 64 };
    static const char *const modes[] = {"serial", "chunks"};
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        float ulp = t == NB_DTYPE_F16 ? 0x1p-10f : 0x1p-7f;
        uint16_t data[R * C], got[R * J], out[R * C], src[R * J], res[R * C];
        int64_t idx[R * J];
        unsigned seed = 5u + ti;
        fill_random(t, data, R * C, 3u + ti, 0);
        data[2] = (uint16_t)(t == NB_DTYPE_F16 ? 0x7d01u : 0x7f81u); /* a signalling NaN */
        data[3] = 0x8000u;                                            /* -0.0 */
        for (int k = 0; k < R * J; k++) {
            idx[k] = (int64_t)(lcg(&seed) >> 8) % C;
            src[k] = narrow(t, (k % 3 ? 0.25f : -0.25f) * ulp * (float)(1 + k % 2));
        }
        idx[0] = 2;
        idx[J] = 3;
        void *hd = buf_from(data, sizeof data), *hi = buf_from(idx, sizeof idx);
        void *hg = buf_new(sizeof got), *hs = buf_from(src, sizeof src);
        tview vd = view(hd, 0, t, 2, (int64_t[]){R, C}, NULL);
        tview vi = view(hi, 0, NB_DTYPE_I64, 2, (int64_t[]){R, J}, NULL);
        tview vg = view(hg, 0, t, 2, (int64_t[]){R, J}, NULL);
        tview vs = view(hs, 0, t, 2, (int64_t[]){R, J}, NULL);
        int64_t dim1[8] = {1};
        tview gin[2] = {vd, vi};
        assert_int_equal(run("gather", t, &vg, 2, gin, NULL, dim1), NB_OK);
        buf_read(hg, got, sizeof got);
        for (int r = 0; r < R; r++)
            for (int j = 0; j < J; j++)
                assert_int_equal(got[r * J + j], data[r * C + idx[r * J + j]]);
        for (int m = 0; m < 2; m++) {
            setenv("NABLA_OPENCL_SCATTER", modes[m], 1);
            for (int k = 0; k < R * C; k++)
                out[k] = narrow(t, 1.0f);
            void *ho = buf_from(out, sizeof out);
            tview vo = view(ho, 0, t, 2, (int64_t[]){R, C}, NULL);
            tview sin_[2] = {vi, vs};
            assert_int_equal(run("scatter_add", t, &vo, 2, sin_, NULL, dim1), NB_OK);
            buf_read(ho, res, sizeof res);
            float acc[R * C];
            for (int k = 0; k < R * C; k++)
                acc[k] = 1.0f;
            for (int r = 0; r < R; r++)
                for (int j = 0; j < J; j++)
                    acc[r * C + idx[r * J + j]] += widen(t, src[r * J + j]);
            /* the sums are exact in float (multiples of ulp/4 near 1): both orders agree */
            for (int k = 0; k < R * C; k++)
                if (res[k] != narrow(t, acc[k]))
                    fail_msg("scatter_add (%s) %s[%d]: got %a, expected %a", modes[m],
                             t == NB_DTYPE_F16 ? "f16" : "bf16", k, widen(t, res[k]), acc[k]);
            P->free(0, ho);
        }
        unsetenv("NABLA_OPENCL_SCATTER");
        P->free(0, hd);
        P->free(0, hi);
        P->free(0, hg);
        P->free(0, hs);
    }
}

/* arange and random numbers are the float32 kernel's values rounded once (the cpu plugin's
 * 16-bit kernels narrow its float32 ones); logical ops read a 16-bit value as its float, so
 * -0.0 is false and NaN true. */
void arange_random_and_logical_ops_round_the_float32_values(void **state)
{
    (void)state;
    enum { N = 600 };
    static float f32[N];
    static uint16_t h[N];
    void *hf = buf_new(sizeof f32), *hh = buf_new(sizeof h);
    tview vf = view(hf, 0, NB_DTYPE_F32, 2, (int64_t[]){6, 100}, NULL);
    int64_t ip[8] = {(int64_t)0x9e3779b97f4a7c15ull, 11};
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        tview vh = view(hh, 0, t, 2, (int64_t[]){6, 100}, NULL);
        static const char *const ops[] = {"random_uniform", "random_normal"};
        double par[2][8] = {{-1, 3}, {0.5, 2}};
        for (int o = 0; o < 2; o++) {
            assert_int_equal(run(ops[o], NB_DTYPE_F32, &vf, 0, NULL, par[o], ip), NB_OK);
            assert_int_equal(run(ops[o], t, &vh, 0, NULL, par[o], ip), NB_OK);
            buf_read(hf, f32, sizeof f32);
            buf_read(hh, h, sizeof h);
            int distinct = 0;
            for (int k = 0; k < N; k++) {
                if (h[k] != narrow(t, f32[k]))
                    fail_msg("%s %d: got 0x%04x, expected 0x%04x", ops[o], k, h[k],
                             narrow(t, f32[k]));
                distinct += k && h[k] != h[k - 1];
            }
            assert_true(distinct > N / 2); /* not a constant */
        }
        tview v1 = view(hh, 0, t, 1, (int64_t[]){N}, NULL);
        double fa[8] = {-3.0, 0.01};
        assert_int_equal(run("arange", t, &v1, 0, NULL, fa, NULL), NB_OK);
        buf_read(hh, h, sizeof h);
        for (int k = 0; k < N; k++)
            assert_int_equal(h[k], narrow(t, (float)(-3.0 + (double)k * 0.01)));

        uint16_t a[6] = {0x8000u, 0, narrow(t, NAN), 1, narrow(t, -2.0f), narrow(t, 0.5f)};
        uint16_t b[6] = {0x8000u, 0x8000u, 0, 0x8001u, 0, narrow(t, 1.0f)};
        uint8_t lo[6];
        void *ha, *hb, *hl;
        tview va = vec(a, t, 6, &ha), vb = vec(b, t, 6, &hb), vl = vec(NULL, NB_DTYPE_BOOL, 6, &hl);
        tview two[2] = {va, vb};
        static const char *const lops[] = {"logical_and", "logical_or", "logical_xor",
                                           "logical_not"};
        for (int o = 0; o < 4; o++) {
            assert_int_equal(run(lops[o], t, &vl, o == 3 ? 1 : 2, two, NULL, NULL), NB_OK);
            buf_read(hl, lo, sizeof lo);
            for (int k = 0; k < 6; k++) {
                int x = widen(t, a[k]) != 0, z = widen(t, b[k]) != 0;
                int want = o == 0 ? x && z : o == 1 ? x || z : o == 2 ? x != z : !x;
                if (lo[k] != want)
                    fail_msg("%s %s[%d] (0x%04x, 0x%04x): got %d", lops[o],
                             t == NB_DTYPE_F16 ? "f16" : "bf16", k, a[k], b[k], lo[k]);
            }
        }
        P->free(0, ha);
        P->free(0, hb);
        P->free(0, hl);
    }
    P->free(0, hf);
    P->free(0, hh);
}

/* One SGD step (momentum, dampening, weight decay, nesterov, a buffer from an earlier step) and
 * one AdamW and one Adam step at step 3, in float from the 16-bit state, each output rounded
 * once: against the same float arithmetic on the host (one 16-bit ulp for sqrt and division). */
void optimizer_steps_compute_in_float_and_round_each_state_once(void **state)
{
    (void)state;
    enum { N = 97 };
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        uint16_t p[N], g[N], b[N], m[N], v[N], out[N];
        fill_random(t, p, N, 61u + ti, 0);
        fill_random(t, g, N, 67u + ti, 0);
        fill_random(t, b, N, 71u + ti, 0);
        fill_random(t, m, N, 73u + ti, 0);
        fill_random(t, v, N, 79u + ti, 1);
        void *hp = buf_from(p, sizeof p), *hg = buf_from(g, sizeof g), *hb = buf_from(b, sizeof b);
        void *hm = buf_from(m, sizeof m), *hv = buf_from(v, sizeof v);
        int64_t shape[1] = {N};
        tview vp = view(hp, 0, t, 1, shape, NULL), vg = view(hg, 0, t, 1, shape, NULL);
        tview vb = view(hb, 0, t, 1, shape, NULL), vm = view(hm, 0, t, 1, shape, NULL);
        tview vv = view(hv, 0, t, 1, shape, NULL);
        const float lr = 0.1f, mom = 0.9f, damp = 0.1f, wd = 0.01f;
        tview sin_[2] = {vg, vb};
        assert_int_equal(run("sgd_step", t, &vp, 2, sin_, (double[8]){lr, mom, damp, wd},
                             (int64_t[8]){1, 0}), NB_OK);
        buf_read(hb, out, sizeof out);
        float rb[N];
        for (int k = 0; k < N; k++) {
            float d = widen(t, g[k]) + wd * widen(t, p[k]);
            rb[k] = mom * widen(t, b[k]) + (1 - damp) * d;
            expect_16("sgd_step buffer", t, k, out[k], rb[k], 0);
        }
        buf_read(hp, out, sizeof out);
        for (int k = 0; k < N; k++) {
            float d = widen(t, g[k]) + wd * widen(t, p[k]);
            expect_16("sgd_step", t, k, out[k], widen(t, p[k]) - lr * (d + mom * rb[k]), 0);
            p[k] = out[k];
        }
        const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
        const int step = 3;
        const float step_size = (float)(lr / (1 - pow(b1, step)));
        const float bc2 = (float)sqrt(1 - pow(b2, step));
        for (int decoupled = 1; decoupled >= 0; decoupled--) {
            tview ain[3] = {vg, vm, vv};
            assert_int_equal(run("adam_step", t, &vp, 3, ain, (double[8]){lr, b1, b2, eps, wd},
                                 (int64_t[8]){step, decoupled}), NB_OK);
            uint16_t om[N], ov[N];
            buf_read(hp, out, sizeof out);
            buf_read(hm, om, sizeof om);
            buf_read(hv, ov, sizeof ov);
            for (int k = 0; k < N; k++) {
                float pv = widen(t, p[k]), gv = widen(t, g[k]), m0 = widen(t, m[k]);
                if (decoupled)
                    pv *= 1 - lr * wd;
                else
                    gv += wd * pv;
                float mv = m0 + (1 - (float)b1) * (gv - m0);
                float vq = (float)b2 * widen(t, v[k]) + (1 - (float)b2) * gv * gv;
                expect_16("adam_step exp_avg", t, k, om[k], mv, 0);
                expect_16("adam_step exp_avg_sq", t, k, ov[k], vq, 0);
                expect_16("adam_step", t, k, out[k],
                          pv - step_size * mv / (sqrtf(vq) / bc2 + (float)eps), 0);
                p[k] = out[k], m[k] = om[k], v[k] = ov[k];
            }
        }
        P->free(0, hp);
        P->free(0, hg);
        P->free(0, hb);
        P->free(0, hm);
        P->free(0, hv);
    }
}

void every_op_has_16_bit_kernels_and_mixed_dtypes_are_refused(void **state)
{
    (void)state;
    /* every float32 op of the plugin has its float16 and bfloat16 kernels */
    size_t n32 = 0;
    for (size_t k = 0; k < P->n_kernels; k++) {
        if (P->kernels[k].dtype != NB_DTYPE_F32)
            continue;
        n32++;
        for (int ti = 0; ti < 2; ti++)
            if (!registered(P->kernels[k].op, halves[ti]))
                fail_msg("%s has no %s kernel", P->kernels[k].op,
                         halves[ti] == NB_DTYPE_F16 ? "float16" : "bfloat16");
    }
    assert_true(n32 > 50);
    /* unary ops keep the dtype: an f32 output of a bf16 input is an error, not a reinterpret */
    void *h = buf_new(64);
    tview b16 = view(h, 0, NB_DTYPE_BF16, 1, (int64_t[]){8}, NULL);
    tview f32 = view(h, 0, NB_DTYPE_F32, 1, (int64_t[]){8}, NULL);
    assert_int_equal(run("exp", NB_DTYPE_BF16, &f32, 1, &b16, NULL, NULL), NB_DTYPE_UNSUPPORTED);
    assert_non_null(strstr(last_error, "bf16"));
    /* float32 state with a 16-bit parameter: refused, not run over 2-byte elements */
    tview f2[2] = {f32, f32};
    assert_int_equal(run("sgd_step", NB_DTYPE_BF16, &b16, 1, f2, (double[8]){0.1}, NULL),
                     NB_DTYPE_UNSUPPORTED);
    /* a 16-bit view past its buffer's end */
    tview over = view(h, 30, NB_DTYPE_BF16, 1, (int64_t[]){8}, NULL);
    assert_int_equal(run("neg", NB_DTYPE_BF16, &over, 1, &b16, NULL, NULL), NB_INDEX_OUT_OF_RANGE);
    P->free(0, h);
}

void softmax_rows_compute_in_float(void **state)
{
    (void)state;
    enum { R = 5, L = 300 };
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        uint16_t x[R * L], y[R * L], gr[R * L], dx[R * L];
        fill_random(t, x, R * L, 11u + ti, 0);
        fill_random(t, gr, R * L, 13u + ti, 0);
        void *hx = buf_from(x, sizeof x), *hy = buf_new(sizeof y), *hg = buf_from(gr, sizeof gr),
             *hd = buf_new(sizeof dx);
        int64_t shape[2] = {R, L};
        tview vx = view(hx, 0, t, 2, shape, NULL), vy = view(hy, 0, t, 2, shape, NULL);
        tview vg = view(hg, 0, t, 2, shape, NULL), vd = view(hd, 0, t, 2, shape, NULL);
        int64_t dim[8] = {1};
        for (int take_log = 0; take_log < 2; take_log++) {
            assert_int_equal(run(take_log ? "log_softmax" : "softmax", t, &vy, 1, &vx, NULL, dim),
                             NB_OK);
            buf_read(hy, y, sizeof y);
            tview bin[2] = {vg, vy};
            assert_int_equal(run(take_log ? "log_softmax_backward" : "softmax_backward", t, &vd,
                                 2, bin, NULL, dim), NB_OK);
            buf_read(hd, dx, sizeof dx);
            for (int r = 0; r < R; r++) {
                double m = -INFINITY, s = 0, gs = 0;
                for (int k = 0; k < L; k++)
                    m = fmax(m, widen(t, x[r * L + k]));
                for (int k = 0; k < L; k++)
                    s += exp(widen(t, x[r * L + k]) - m);
                for (int k = 0; k < L; k++) { /* the backward takes the 16-bit y as given */
                    double gv = widen(t, gr[r * L + k]), yv = widen(t, y[r * L + k]);
                    gs += take_log ? gv : gv * yv;
                }
                for (int k = 0; k < L; k++) {
                    double xv = widen(t, x[r * L + k]) - m, gv = widen(t, gr[r * L + k]);
                    double yv = widen(t, y[r * L + k]);
                    double want = take_log ? xv - log(s) : exp(xv) / s;
                    double dwant = take_log ? gv - exp(yv) * gs : yv * (gv - gs);
                    /* one rounding into 16 bits (and float's error, far below it) */
                    double ulp = t == NB_DTYPE_F16 ? 0x1p-10 : 0x1p-7;
                    expect_close("softmax", (size_t)(r * L + k), yv, want, 1e-6, ulp);
                    expect_close("softmax_backward", (size_t)(r * L + k), widen(t, dx[r * L + k]),
                                 dwant, 1e-5, ulp);
                }
            }
        }
        P->free(0, hx);
        P->free(0, hy);
        P->free(0, hg);
        P->free(0, hd);
    }
}

/* An operand of a twin run: its bytes (NULL: a fresh buffer), its view (the handle is set per
 * plugin), and where to read it back to after the run (NULL: not read). */
typedef struct twin {
    const void *data;
    size_t bytes;
    tview v;
    void *back[2]; /* [0] opencl, [1] cpu */
} twin;

/* Runs op on opencl:0 and on the cpu plugin with the same operands; x[0] is out. */
static void run_twice(const char *op, nb_dtype t, int n, twin *x, const double *f,
                      const int64_t *i)
{
    for (int side = 0; side < 2; side++) {
        const nb_plugin *pl = side ? CPU : P;
        void *h[5];
        tview v[5];
        for (int k = 0; k < n; k++) {
            h[k] = x[k].data ? buf_from_on(pl, x[k].data, x[k].bytes) : buf_new_on(pl, x[k].bytes);
            v[k] = x[k].v;
            v[k].op.handle = h[k];
        }
        nb_status st = run_on(pl, op, t, &v[0], n - 1, v + 1, f, i);
        if (st != NB_OK)
            fail_msg("%s on %s: %s", op, pl->name, last_error);
        for (int k = 0; k < n; k++) {
            if (x[k].back[side])
                buf_read_on(pl, h[k], x[k].back[side], x[k].bytes);
            pl->free(0, h[k]);
        }
    }
}

/* opencl's 16-bit result against the cpu plugin's: equal, or (sums in another order) within one
 * 16-bit ulp */
static void expect_twins(const char *op, nb_dtype t, const uint16_t *ocl, const uint16_t *cpu,
                         size_t n, int exact)
{
    for (size_t k = 0; k < n; k++) {
        if (ocl[k] == cpu[k])
            continue;
        double a = widen(t, ocl[k]), b = widen(t, cpu[k]);
        double ulp = t == NB_DTYPE_F16 ? 0x1p-10 : 0x1p-7;
        if (exact || !(fabs(a - b) <= 1e-4 + ulp * fabs(b)))
            fail_msg("%s %s[%zu]: opencl %a (0x%04x), cpu %a (0x%04x)", op,
                     t == NB_DTYPE_F16 ? "f16" : "bf16", k, a, ocl[k], b, cpu[k]);
    }
}

/* The cpu plugin's 16-bit kernels (widen, float32 kernel, round once) and opencl's give the same
 * values: bit for bit where both compute the same float32 numbers (pooling, gather, scatter_add
 * in index order, arange, random, logical ops), within one 16-bit ulp where float32 sums run in
 * another order (conv2d and its gradients on both opencl paths, matmul). Skipped without the cpu
 * plugin (argv[2]). */
void sixteen_bit_results_match_the_cpu_plugins(void **state)
{
    (void)state;
    if (!CPU)
        skip();
    enum { N = 2, C = 4, H = 9, W = 8, O = 6, G = 2, KH = 3, KW = 3, OH = 5, OW = 4,
           NX = N * C * H * W, NW = O * (C / G) * KH * KW, NY = N * O * OH * OW };
    static uint16_t x[NX], w[NW], gy[NY], r[2][NX > NY ? NX : NY];
    int64_t ci[8] = {2, 2, 1, 1, 1, 1, G}; /* stride 2, padding 1, dilation 1 */
    static const char *const modes[] = {"gemm", "direct"};
    for (int ti = 0; ti < 2; ti++) {
        nb_dtype t = halves[ti];
        fill_random(t, x, NX, 101u + ti, 0);
        fill_random(t, w, NW, 103u + ti, 0);
        fill_random(t, gy, NY, 107u + ti, 0);
        tview vx = view(NULL, 0, t, 4, (int64_t[]){N, C, H, W}, NULL);
        tview vw = view(NULL, 0, t, 4, (int64_t[]){O, C / G, KH, KW}, NULL);
        tview vy = view(NULL, 0, t, 4, (int64_t[]){N, O, OH, OW}, NULL);
        for (int m = 0; m < 2; m++) {
            setenv("NABLA_OPENCL_CONV", modes[m], 1);
            twin fw[3] = {{NULL, sizeof gy, vy, {r[0], r[1]}}, {x, sizeof x, vx, {0}},
                          {w, sizeof w, vw, {0}}};
            run_twice("conv2d", t, 3, fw, NULL, ci);
            expect_twins("conv2d", t, r[0], r[1], NY, 0);
            twin bi[3] = {{NULL, sizeof x, vx, {r[0], r[1]}}, {gy, sizeof gy, vy, {0}},
                          {w, sizeof w, vw, {0}}};
            run_twice("conv2d_backward_input", t, 3, bi, NULL, ci);
            expect_twins("conv2d_backward_input", t, r[0], r[1], NX, 0);
            twin bw[3] = {{NULL, sizeof w, vw, {r[0], r[1]}}, {gy, sizeof gy, vy, {0}},
                          {x, sizeof x, vx, {0}}};
            run_twice("conv2d_backward_weight", t, 3, bw, NULL, ci);
            expect_twins("conv2d_backward_weight", t, r[0], r[1], NW, 0);
        }
        unsetenv("NABLA_OPENCL_CONV");

        /* max_pool2d 3x3, stride 2, padding 1: x (N,C,9,8) -> (N,C,5,4); the values and the
         * indices, then the backward from the same indices */
        enum { NP = N * C * 5 * 4 };
        static int64_t idx[2][NP];
        tview vp = view(NULL, 0, t, 4, (int64_t[]){N, C, 5, 4}, NULL);
        tview vi = view(NULL, 0, NB_DTYPE_I64, 4, (int64_t[]){N, C, 5, 4}, NULL);
        int64_t pi[8] = {3, 3, 2, 2, 1, 1};
        twin mp[3] = {{NULL, NP * 2, vp, {r[0], r[1]}}, {x, sizeof x, vx, {0}},
                      {NULL, sizeof idx[0], vi, {idx[0], idx[1]}}};
        run_twice("max_pool2d", t, 3, mp, NULL, pi);
        expect_twins("max_pool2d", t, r[0], r[1], NP, 1);
        assert_memory_equal(idx[0], idx[1], sizeof idx[0]);
        twin mb[3] = {{NULL, sizeof x, vx, {r[0], r[1]}}, {gy, NP * 2, vp, {0}},
                      {idx[0], sizeof idx[0], vi, {0}}};
        run_twice("max_pool2d_backward", t, 3, mb, NULL, pi);
        expect_twins("max_pool2d_backward", t, r[0], r[1], NX, 1);

        /* matmul (4,9,8) @ (4,8,6) */
        tview ma = view(NULL, 0, t, 3, (int64_t[]){4, 9, 8}, NULL);
        tview mbv = view(NULL, 0, t, 3, (int64_t[]){4, 8, 6}, NULL);
        tview mo = view(NULL, 0, t, 3, (int64_t[]){4, 9, 6}, NULL);
        twin mm[3] = {{NULL, 4 * 9 * 6 * 2, mo, {r[0], r[1]}}, {x, 4 * 9 * 8 * 2, ma, {0}},
                      {gy, 4 * 8 * 6 * 2, mbv, {0}}};
        run_twice("matmul", t, 3, mm, (double[8]){1, 0}, NULL);
        expect_twins("matmul", t, r[0], r[1], 4 * 9 * 6, 0);

        /* gather and scatter_add along dim 1 of (8, 9) with (8, 40) indices */
        static int64_t gi[8 * 40];
        uint32_t s = 7u + ti;
        for (int k = 0; k < 8 * 40; k++)
            gi[k] = (int64_t)(lcg(&s) >> 8) % 9;
        tview vd = view(NULL, 0, t, 2, (int64_t[]){8, 9}, NULL);
        tview vgi = view(NULL, 0, NB_DTYPE_I64, 2, (int64_t[]){8, 40}, NULL);
        tview vg = view(NULL, 0, t, 2, (int64_t[]){8, 40}, NULL);
        twin ga[3] = {{NULL, 8 * 40 * 2, vg, {r[0], r[1]}}, {x, 8 * 9 * 2, vd, {0}},
                      {gi, sizeof gi, vgi, {0}}};
        run_twice("gather", t, 3, ga, NULL, (int64_t[8]){1});
        expect_twins("gather", t, r[0], r[1], 8 * 40, 1);
        setenv("NABLA_OPENCL_SCATTER", "serial", 1); /* the cpu's order */
        twin sa[3] = {{w, 8 * 9 * 2, vd, {r[0], r[1]}}, {gi, sizeof gi, vgi, {0}},
                      {x, 8 * 40 * 2, vg, {0}}};
        run_twice("scatter_add", t, 3, sa, NULL, (int64_t[8]){1});
        unsetenv("NABLA_OPENCL_SCATTER");
        expect_twins("scatter_add", t, r[0], r[1], 8 * 9, 1);

        /* arange, random numbers, a logical op */
        tview v1 = view(NULL, 0, t, 1, (int64_t[]){NX}, NULL);
        twin ar[1] = {{NULL, sizeof x, v1, {r[0], r[1]}}};
        run_twice("arange", t, 1, ar, (double[8]){-2.5, 0.013}, NULL);
        expect_twins("arange", t, r[0], r[1], NX, 1);
        int64_t ri[8] = {(int64_t)0x0123456789abcdefull, 5};
        run_twice("random_uniform", t, 1, ar, (double[8]){-1, 2}, ri);
        expect_twins("random_uniform", t, r[0], r[1], NX, 1);
        run_twice("random_normal", t, 1, ar, (double[8]){0.5, 3}, ri);
        expect_twins("random_normal", t, r[0], r[1], NX, has_f64);
        static uint8_t lo[2][NX];
        static uint16_t b2[NX]; /* gy, then zeros */
        memcpy(b2, gy, sizeof gy);
        x[0] = 0x8000u, x[1] = narrow(t, NAN);
        tview vb = view(NULL, 0, NB_DTYPE_BOOL, 1, (int64_t[]){NX}, NULL);
        twin la[3] = {{NULL, NX, vb, {lo[0], lo[1]}}, {x, sizeof x, v1, {0}},
                      {b2, sizeof b2, v1, {0}}};
        run_twice("logical_xor", t, 3, la, NULL, NULL);
        assert_memory_equal(lo[0], lo[1], NX);
    }
}
