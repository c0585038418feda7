/* test_opencl_elementwise.c - the opencl plugin's elementwise kernels (opencl_elementwise.c):
 * fill, copy/casts, arange, unary/scalar/binary arithmetic, comparisons, logical ops, where, the
 * random fills, and the SDK's conversion, clamp, signed-zero and wrapping rules. Part of
 * test_opencl_kernels (main and helpers in test_opencl_kernels.c). */
#include "test_opencl.h"

/* a (3,4) is the transpose of a (4,3) buffer starting at element 2; b (3,4) broadcasts a
 * (1,4) row (stride 0 along dim 0). */
void binary_ops_follow_strides_and_broadcast(void **state)
{
    (void)state;
    float abuf[2 + 12], bbuf[4];
    unsigned seed = 1;
    for (int k = 0; k < 14; k++)
        abuf[k] = frand(&seed);
    for (int k = 0; k < 4; k++)
        bbuf[k] = frand(&seed) + 2.5f; /* positive: pow stays real */
    abuf[2 + 5] = NAN;
    void *ha = buf_from(abuf, sizeof abuf), *hb = buf_from(bbuf, sizeof bbuf);
    void *ho = buf_new(12 * sizeof(float)), *hc = buf_new(12);
    int64_t shape[2] = {3, 4};
    tview in[2] = {view(ha, 2, NB_DTYPE_F32, 2, shape, (int64_t[]){1, 3}),
                   view(hb, 0, NB_DTYPE_F32, 2, shape, (int64_t[]){0, 1})};
    tview out = view(ho, 0, NB_DTYPE_F32, 2, shape, NULL);
    tview cmp = view(hc, 0, NB_DTYPE_BOOL, 2, shape, NULL);
    const char *ops[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
    for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++) {
        assert_int_equal(run(ops[o], NB_DTYPE_F32, &out, 2, in, NULL, NULL), NB_OK);
        float got[12];
        buf_read(ho, got, sizeof got);
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) {
                double x = abuf[2 + r + 3 * c], y = bbuf[c], ref;
                switch (o) {
                case 0: ref = x + y; break;
                case 1: ref = x - y; break;
                case 2: ref = x * y; break;
                case 3: ref = x / y; break;
                case 4: ref = pow(x, y); break;
                case 5: ref = isnan(x) ? x : fmax(x, y); break;
                default: ref = isnan(x) ? x : fmin(x, y); break;
                }
                /* f32 result of an f64 reference: a few float ulps; pow allows 16 */
                expect_close(ops[o], (size_t)(r * 4 + c), got[r * 4 + c], ref, 1e-6,
                             o == 4 ? 2e-6 : 3e-7);
            }
    }
    assert_int_equal(run("lt", NB_DTYPE_F32, &cmp, 2, in, NULL, NULL), NB_OK);
    uint8_t lt[12];
    buf_read(hc, lt, sizeof lt);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            assert_int_equal(lt[r * 4 + c], abuf[2 + r + 3 * c] < bbuf[c]);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
    P->free(0, hc);
}

void unary_and_scalar_ops_match_libm(void **state)
{
    (void)state;
    enum { N = 37 };
    float x[N];
    unsigned seed = 7;
    for (int k = 0; k < N; k++)
        x[k] = frand(&seed) * 3.0f;
    x[0] = 0.5f;  /* round half to even */
    x[1] = -2.5f;
    x[2] = NAN;
    x[3] = -0.0f;
    void *hx = buf_from(x, sizeof x), *ho = buf_new(sizeof x);
    int64_t shape[1] = {N};
    tview in = view(hx, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 1, shape, NULL);
    const char *ops[] = {"neg", "abs",  "exp",     "log",  "sqrt",  "rsqrt", "sin",  "cos",
                         "tanh", "sigmoid", "relu", "sign", "floor", "ceil", "round"};
    for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++) {
        assert_int_equal(run(ops[o], NB_DTYPE_F32, &out, 1, &in, NULL, NULL), NB_OK);
        float got[N];
        buf_read(ho, got, sizeof got);
        for (int k = 0; k < N; k++) {
            double v = x[k], ref;
            switch (o) {
            case 0: ref = -v; break;
            case 1: ref = fabs(v); break;
            case 2: ref = exp(v); break;
            case 3: ref = log(v); break;
            case 4: ref = sqrt(v); break;
            case 5: ref = 1 / sqrt(v); break;
            case 6: ref = sin(v); break;
            case 7: ref = cos(v); break;
            case 8: ref = tanh(v); break;
            case 9: ref = 1 / (1 + exp(-v)); break;
            case 10: ref = v < 0 ? 0 : v; break;
            case 11: ref = (v > 0) - (v < 0); break; /* sign(NaN) = 0, like torch */
            case 12: ref = floor(v); break;
            case 13: ref = ceil(v); break;
            default: ref = nearbyint(v); break;
            }
            /* OpenCL allows up to 4 ulp for exp/log/sin/cos in f32 */
            expect_close(ops[o], (size_t)k, got[k], ref, 1e-6, 1e-6);
        }
    }
    struct { const char *op; double s; } sops[] = {{"add_scalar", 1.5}, {"mul_scalar", -3},
        {"rsub_scalar", 2}, {"div_scalar", 4}, {"rdiv_scalar", 1}, {"pow_scalar", 2},
        {"rpow_scalar", 2}};
    for (size_t o = 0; o < sizeof sops / sizeof sops[0]; o++) {
        double f[8] = {sops[o].s, 0};
        assert_int_equal(run(sops[o].op, NB_DTYPE_F32, &out, 1, &in, f, NULL), NB_OK);
        float got[N];
        buf_read(ho, got, sizeof got);
        for (int k = 0; k < N; k++) {
            double v = x[k], s = sops[o].s;
            double ref[] = {v + s, v * s, s - v, v / s, s / v, pow(v, s), pow(s, v)};
            expect_close(sops[o].op, (size_t)k, got[k], ref[o], 1e-6, 2e-6);
        }
    }
    double f[8] = {-1, 0.5};
    int64_t has[8] = {1, 1};
    assert_int_equal(run("clamp", NB_DTYPE_F32, &out, 1, &in, f, has), NB_OK);
    float got[N];
    buf_read(ho, got, sizeof got);
    for (int k = 0; k < N; k++) {
        double v = x[k], ref = isnan(v) ? v : fmin(fmax(v, -1), 0.5);
        expect_close("clamp", (size_t)k, got[k], ref, 0, 0);
    }
    P->free(0, hx);
    P->free(0, ho);
}

/* The source is a transposed (3,2) view of i64/f32/u8 data; every pair of dtypes round-trips
 * through copy with C's conversion rules (float to integer truncates, anything to bool is
 * != 0). */
void copy_casts_between_every_dtype(void **state)
{
    (void)state;
    double vals[6] = {1.75, -2.5, 0, 3, 100, -0.25};
    int64_t shape[2] = {3, 2}, tstrides[2] = {1, 3};
    /* the 1.0 dtypes: the opencl plugin registers no 16-bit kernels yet */
    for (int src = 0; src < NB_DTYPE_F16; src++) {
        if (src == NB_DTYPE_F64 && !has_f64)
            continue;
        unsigned char raw[6 * 8];
        for (int k = 0; k < 6; k++) {
            double v = vals[k];
            if (src == NB_DTYPE_BOOL || src == NB_DTYPE_U8)
                v = src == NB_DTYPE_BOOL ? v != 0 : (v < 0 ? 0 : v);
            switch (src) {
            case NB_DTYPE_F32: ((float *)raw)[k] = (float)v; break;
            case NB_DTYPE_F64: ((double *)raw)[k] = v; break;
            case NB_DTYPE_I32: ((int32_t *)raw)[k] = (int32_t)v; break;
            case NB_DTYPE_I64: ((int64_t *)raw)[k] = (int64_t)v; break;
            default: raw[k] = (uint8_t)v; break;
            }
        }
        void *hs = buf_from(raw, 6 * esize[src]);
        tview in = view(hs, 0, (nb_dtype)src, 2, shape, tstrides);
        for (int dst = 0; dst < NB_DTYPE_F16; dst++) {
            if (dst == NB_DTYPE_F64 && !has_f64)
                continue;
            void *hd = buf_new(6 * esize[dst]);
            tview out = view(hd, 0, (nb_dtype)dst, 2, shape, NULL);
            assert_int_equal(run("copy", (nb_dtype)dst, &out, 1, &in, NULL, NULL), NB_OK);
            unsigned char got[6 * 8];
            buf_read(hd, got, 6 * esize[dst]);
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 2; c++) {
                    int k = r * 2 + c, s = r + 3 * c;
                    double v; /* the source value as stored */
                    switch (src) {
                    case NB_DTYPE_F32: v = ((float *)raw)[s]; break;
                    case NB_DTYPE_F64: v = ((double *)raw)[s]; break;
                    case NB_DTYPE_I32: v = ((int32_t *)raw)[s]; break;
                    case NB_DTYPE_I64: v = (double)((int64_t *)raw)[s]; break;
                    default: v = raw[s]; break;
                    }
                    double g, ref;
                    switch (dst) {
                    case NB_DTYPE_F32: g = ((float *)got)[k]; ref = (float)v; break;
                    case NB_DTYPE_F64: g = ((double *)got)[k]; ref = v; break;
                    case NB_DTYPE_I32: g = ((int32_t *)got)[k]; ref = (int32_t)v; break;
                    case NB_DTYPE_I64: g = (double)((int64_t *)got)[k]; ref = (double)(int64_t)v;
                        break;
                    case NB_DTYPE_BOOL: g = got[k]; ref = v != 0; break;
                    default: g = got[k]; ref = (uint8_t)(int64_t)v; break;
                    }
                    if (g != ref)
                        fail_msg("copy %d -> %d at [%d,%d]: got %g, expected %g", src, dst, r,
                                 c, g, ref);
                }
            P->free(0, hd);
        }
        P->free(0, hs);
    }
}

void fill_and_arange_cover_integer_dtypes(void **state)
{
    (void)state;
    void *h = buf_new(10 * 8);
    int64_t shape[1] = {10}, two[1] = {5};
    tview all = view(h, 0, NB_DTYPE_I64, 1, shape, NULL);
    double f[8] = {-3, 7};
    assert_int_equal(run("arange", NB_DTYPE_I64, &all, 0, NULL, f, NULL), NB_OK);
    int64_t got[10];
    buf_read(h, got, sizeof got);
    for (int k = 0; k < 10; k++)
        assert_int_equal(got[k], -3 + 7 * k);
    /* every other element (stride 2) gets 42 */
    tview odd = view(h, 1, NB_DTYPE_I64, 1, two, (int64_t[]){2});
    double v[8] = {42};
    assert_int_equal(run("fill", NB_DTYPE_I64, &odd, 0, NULL, v, NULL), NB_OK);
    buf_read(h, got, sizeof got);
    for (int k = 0; k < 10; k++)
        assert_int_equal(got[k], k % 2 ? 42 : -3 + 7 * k);
    tview fl = view(h, 0, NB_DTYPE_F32, 1, shape, NULL);
    double fa[8] = {0.5, 0.1};
    assert_int_equal(run("arange", NB_DTYPE_F32, &fl, 0, NULL, fa, NULL), NB_OK);
    float gf[10];
    buf_read(h, gf, sizeof gf);
    for (int k = 0; k < 10; k++)
        expect_close("arange", (size_t)k, gf[k], 0.5 + 0.1 * k, 0, 1e-7);
    P->free(0, h);
}

/* The same (seed, offset) gives nb_philox_uniform / the Box-Muller of nb_philox_normal_parts
 * for element k in row-major order. */
void random_ops_match_philox_on_the_host(void **state)
{
    (void)state;
    enum { N = 1000 };
    void *h = buf_new(N * 8);
    int64_t shape[2] = {10, 100};
    uint64_t seed = 0x1234567887654321ull, offset = 77;
    int64_t ip[8] = {(int64_t)seed, (int64_t)offset};
    for (int f64 = 0; f64 <= has_f64; f64++) {
        nb_dtype t = f64 ? NB_DTYPE_F64 : NB_DTYPE_F32;
        tview out = view(h, 0, t, 2, shape, NULL);
        double fu[8] = {-1, 3};
        assert_int_equal(run("random_uniform", t, &out, 0, NULL, fu, ip), NB_OK);
        double got[N];
        float gotf[N];
        f64 ? buf_read(h, got, sizeof got) : buf_read(h, gotf, sizeof gotf);
        double mean = 0;
        for (int k = 0; k < N; k++) {
            double u = nb_philox_uniform(seed, offset, (uint64_t)k, f64);
            double ref = -1 + 4 * u, g = f64 ? got[k] : gotf[k];
            expect_close("random_uniform", (size_t)k, g, f64 ? ref : (float)ref, 0, 1e-15);
            mean += g / N;
        }
        assert_true(fabs(mean - 1) < 0.2); /* not constant */
        double fn[8] = {2, 0.5};
        assert_int_equal(run("random_normal", t, &out, 0, NULL, fn, ip), NB_OK);
        f64 ? buf_read(h, got, sizeof got) : buf_read(h, gotf, sizeof gotf);
        for (int k = 0; k < N; k++) {
            double u1, u2;
            nb_philox_normal_parts(seed, offset, (uint64_t)k, &u1, &u2);
            double z = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2), ref = 2 + 0.5 * z;
            /* libm and OpenCL's log/cos may differ by an ulp or two; without fp64 the device
             * computes in float pairs, a few ulp (before the float-pair path: 1e-4 off) */
            expect_close("random_normal", (size_t)k, f64 ? got[k] : gotf[k], ref, 1e-12,
                         f64 ? 1e-13 : has_f64 ? 1.2e-7 : 5e-7);
        }
    }
    P->free(0, h);
}

void where_and_logical_ops_read_any_dtype(void **state)
{
    (void)state;
    enum { N = 8 };
    uint8_t cond[N] = {1, 0, 1, 1, 0, 0, 1, 0};
    int32_t a[N] = {1, 2, 3, 4, 5, 6, 7, 8}, b[1] = {-9};
    void *hc = buf_from(cond, N), *ha = buf_from(a, sizeof a), *hb = buf_from(b, sizeof b);
    void *ho = buf_new(N * 4);
    int64_t shape[1] = {N};
    tview in[3] = {view(hc, 0, NB_DTYPE_BOOL, 1, shape, NULL),
                   view(ha, 0, NB_DTYPE_I32, 1, shape, NULL),
                   view(hb, 0, NB_DTYPE_I32, 1, shape, (int64_t[]){0})};
    tview out = view(ho, 0, NB_DTYPE_I32, 1, shape, NULL);
    assert_int_equal(run("where", NB_DTYPE_I32, &out, 3, in, NULL, NULL), NB_OK);
    int32_t got[N];
    buf_read(ho, got, sizeof got);
    for (int k = 0; k < N; k++)
        assert_int_equal(got[k], cond[k] ? a[k] : b[0]);
    /* logical_xor of i32 (a - 4, so one zero) and bool */
    int32_t am[N];
    for (int k = 0; k < N; k++)
        am[k] = a[k] - 4;
    assert_int_equal(P->write(0, ha, 0, am, sizeof am), NB_OK);
    void *hcm = buf_new(N * 4);
    int32_t ci[N];
    for (int k = 0; k < N; k++)
        ci[k] = cond[k] * 7;
    assert_int_equal(P->write(0, hcm, 0, ci, sizeof ci), NB_OK);
    tview lin[2] = {in[1], view(hcm, 0, NB_DTYPE_I32, 1, shape, NULL)};
    tview lout = view(ho, 0, NB_DTYPE_BOOL, 1, shape, NULL);
    assert_int_equal(run("logical_xor", NB_DTYPE_I32, &lout, 2, lin, NULL, NULL), NB_OK);
    uint8_t gb[N];
    buf_read(ho, gb, N);
    for (int k = 0; k < N; k++)
        assert_int_equal(gb[k], (am[k] != 0) != (ci[k] != 0));
    assert_int_equal(run("logical_not", NB_DTYPE_I32, &lout, 1, lin, NULL, NULL), NB_OK);
    buf_read(ho, gb, N);
    for (int k = 0; k < N; k++)
        assert_int_equal(gb[k], am[k] == 0);
    double s[8] = {2.5};
    assert_int_equal(run("lt_scalar", NB_DTYPE_I32, &lout, 1, lin, s, NULL), NB_OK);
    buf_read(ho, gb, N);
    for (int k = 0; k < N; k++)
        assert_int_equal(gb[k], am[k] < 2.5);
    P->free(0, hc);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
    P->free(0, hcm);
}

void float_to_integer_follows_the_sdk_rule(void **state)
{
    (void)state;
    /* through int64 (NaN and out of range: INT64_MIN), then wrapping: PyTorch on x86 */
    float src[8] = {-1.0f, -3.75f, 300.0f, 3e9f, NAN, 1e19f, -1e19f, INFINITY};
    void *hs, *h8, *h32, *h64;
    tview vs = vec(src, NB_DTYPE_F32, 8, &hs);
    tview v8 = vec(NULL, NB_DTYPE_U8, 8, &h8), v32 = vec(NULL, NB_DTYPE_I32, 8, &h32),
          v64 = vec(NULL, NB_DTYPE_I64, 8, &h64);
    assert_int_equal(run("copy", NB_DTYPE_U8, &v8, 1, &vs, NULL, NULL), NB_OK);
    assert_int_equal(run("copy", NB_DTYPE_I32, &v32, 1, &vs, NULL, NULL), NB_OK);
    assert_int_equal(run("copy", NB_DTYPE_I64, &v64, 1, &vs, NULL, NULL), NB_OK);
    uint8_t g8[8];
    int32_t g32[8];
    int64_t g64[8];
    buf_read(h8, g8, sizeof g8);
    buf_read(h32, g32, sizeof g32);
    buf_read(h64, g64, sizeof g64);
    for (int k = 0; k < 8; k++) {
        int64_t want = nb_float_to_int64((double)src[k]);
        assert_int_equal(g64[k], want);
        assert_int_equal(g32[k], (int32_t)(uint32_t)(uint64_t)want);
        assert_int_equal(g8[k], (uint8_t)(uint64_t)want);
    }
    assert_int_equal(g8[0], 255);
    assert_int_equal(g8[1], 253);
    assert_int_equal(g8[2], 44);
    assert_int_equal(g8[3], 0);
    assert_int_equal(g64[4], INT64_MIN);
    /* fill takes the same rule, and a bool byte of any non-zero value converts to 1 */
    double f[8] = {3e9};
    assert_int_equal(run("fill", NB_DTYPE_I32, &v32, 0, NULL, f, NULL), NB_OK);
    buf_read(h32, g32, sizeof g32);
    assert_int_equal(g32[0], (int32_t)(uint32_t)3000000000u);
    uint8_t b[8] = {0, 1, 0xff, 2, 0x80, 0, 7, 1};
    void *hb;
    tview vb = vec(b, NB_DTYPE_BOOL, 8, &hb);
    assert_int_equal(run("copy", NB_DTYPE_I32, &v32, 1, &vb, NULL, NULL), NB_OK);
    buf_read(h32, g32, sizeof g32);
    for (int k = 0; k < 8; k++)
        assert_int_equal(g32[k], b[k] != 0);
    P->free(0, hs);
    P->free(0, h8);
    P->free(0, h32);
    P->free(0, h64);
    P->free(0, hb);
}

void clamp_rounds_integer_bounds_inward_and_a_nan_bound_wins(void **state)
{
    (void)state;
    int32_t xi[4] = {1, 2, 3, 4}, gi[4];
    float xf[4] = {1, 2, 3, NAN}, gf[4];
    void *hi, *hoi, *hf, *hof;
    tview vi = vec(xi, NB_DTYPE_I32, 4, &hi), voi = vec(NULL, NB_DTYPE_I32, 4, &hoi);
    tview vf = vec(xf, NB_DTYPE_F32, 4, &hf), vof = vec(NULL, NB_DTYPE_F32, 4, &hof);
    int64_t has_min[8] = {1, 0}, has_both[8] = {1, 1};
    double lo[8] = {2.5, 0};
    assert_int_equal(run("clamp", NB_DTYPE_I32, &voi, 1, &vi, lo, has_min), NB_OK);
    buf_read(hoi, gi, sizeof gi);
    assert_int_equal(gi[0], 3); /* the cpu's 3 3 3 4, not 2 2 3 4 */
    assert_int_equal(gi[1], 3);
    assert_int_equal(gi[2], 3);
    assert_int_equal(gi[3], 4);
    double frac[8] = {1.5, 2.5};
    assert_int_equal(run("clamp", NB_DTYPE_I32, &voi, 1, &vi, frac, has_both), NB_OK);
    buf_read(hoi, gi, sizeof gi);
    assert_int_equal(gi[0], 2);
    assert_int_equal(gi[3], 2);
    double nan_lo[8] = {NAN, 0};
    assert_int_equal(run("clamp", NB_DTYPE_F32, &vof, 1, &vf, nan_lo, has_min), NB_OK);
    buf_read(hof, gf, sizeof gf);
    for (int k = 0; k < 4; k++)
        assert_true(isnan(gf[k])); /* maximum_scalar(x, NaN) is NaN everywhere */
    assert_int_equal(run("clamp", NB_DTYPE_I32, &voi, 1, &vi, nan_lo, has_min), NB_OK);
    buf_read(hoi, gi, sizeof gi);
    for (int k = 0; k < 4; k++)
        assert_int_equal(gi[k], xi[k]); /* integers ignore a NaN bound, as on the cpu */
    double fin[8] = {1.5, 2.5};
    assert_int_equal(run("clamp", NB_DTYPE_F32, &vof, 1, &vf, fin, has_both), NB_OK);
    buf_read(hof, gf, sizeof gf);
    assert_true(gf[0] == 1.5f && gf[1] == 2.0f && gf[2] == 2.5f && isnan(gf[3]));
    P->free(0, hi);
    P->free(0, hoi);
    P->free(0, hf);
    P->free(0, hof);
}

void signed_zeros_come_out_as_on_the_cpu(void **state)
{
    (void)state;
    float a[4] = {-0.0f, 0.0f, -0.0f, 0.0f}, b[4] = {0.0f, -0.0f, -0.0f, 0.0f}, g[4];
    void *ha, *hb, *ho;
    tview va = vec(a, NB_DTYPE_F32, 4, &ha), vb = vec(b, NB_DTYPE_F32, 4, &hb),
          vo = vec(NULL, NB_DTYPE_F32, 4, &ho);
    assert_int_equal(run("abs", NB_DTYPE_F32, &vo, 1, &va, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    for (int k = 0; k < 4; k++)
        assert_false(signbit(g[k]));
    tview ab[2] = {va, vb};
    /* the cpu's x < y ? y : x (and x > y ? y : x) keeps x of two equal values */
    assert_int_equal(run("maximum", NB_DTYPE_F32, &vo, 2, ab, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    for (int k = 0; k < 4; k++)
        assert_int_equal(signbit(g[k]) != 0, signbit(a[k]) != 0);
    assert_int_equal(run("minimum", NB_DTYPE_F32, &vo, 2, ab, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    for (int k = 0; k < 4; k++)
        assert_int_equal(signbit(g[k]) != 0, signbit(a[k]) != 0);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

void integer_arange_and_scalar_compares_are_exact_past_2_to_24(void **state)
{
    (void)state;
    enum { N = 6 };
    void *h64, *hf, *hb;
    tview v64 = vec(NULL, NB_DTYPE_I64, N, &h64), vf = vec(NULL, NB_DTYPE_F32, N, &hf);
    tview vb = vec(NULL, NB_DTYPE_BOOL, N, &hb);
    double f[8] = {1099511627776.0 + 1, 3}; /* 2^40 + 1, step 3: float cannot hold these */
    assert_int_equal(run("arange", NB_DTYPE_I64, &v64, 0, NULL, f, NULL), NB_OK);
    int64_t g64[N];
    buf_read(h64, g64, sizeof g64);
    for (int k = 0; k < N; k++)
        assert_int_equal(g64[k], (int64_t)1099511627777 + 3 * k);
    double f24[8] = {16777215, 1}; /* float32 arange rounds each value once, as the cpu */
    assert_int_equal(run("arange", NB_DTYPE_F32, &vf, 0, NULL, f24, NULL), NB_OK);
    float gf[N];
    buf_read(hf, gf, sizeof gf);
    for (int k = 0; k < N; k++)
        assert_true(gf[k] == (float)(16777215.0 + k));
    /* x > 2^40 + 3.5: exact in integers, where a float comparison sees equal values */
    double s[8] = {1099511627776.0 + 3.5};
    tview in = v64;
    assert_int_equal(run("gt_scalar", NB_DTYPE_I64, &vb, 1, &in, s, NULL), NB_OK);
    uint8_t gb[N];
    buf_read(hb, gb, sizeof gb);
    for (int k = 0; k < N; k++)
        assert_int_equal(gb[k], g64[k] > 1099511627779);
    double e[8] = {1099511627776.0 + 4}; /* == a whole scalar; == 2.5 is never true */
    assert_int_equal(run("eq_scalar", NB_DTYPE_I64, &vb, 1, &in, e, NULL), NB_OK);
    buf_read(hb, gb, sizeof gb);
    for (int k = 0; k < N; k++)
        assert_int_equal(gb[k], k == 1);
    double nan_s[8] = {NAN};
    assert_int_equal(run("ne_scalar", NB_DTYPE_I64, &vb, 1, &in, nan_s, NULL), NB_OK);
    buf_read(hb, gb, sizeof gb);
    for (int k = 0; k < N; k++)
        assert_int_equal(gb[k], 1);
    P->free(0, h64);
    P->free(0, hf);
    P->free(0, hb);
}

void integer_arithmetic_wraps(void **state)
{
    (void)state;
    int32_t a[3] = {INT32_MAX, INT32_MIN, 65536}, b[3] = {1, -1, 65536}, g[3];
    void *ha, *hb, *ho;
    tview va = vec(a, NB_DTYPE_I32, 3, &ha), vb = vec(b, NB_DTYPE_I32, 3, &hb),
          vo = vec(NULL, NB_DTYPE_I32, 3, &ho);
    tview ab[2] = {va, vb};
    assert_int_equal(run("add", NB_DTYPE_I32, &vo, 2, ab, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    assert_int_equal(g[0], INT32_MIN);
    assert_int_equal(g[1], INT32_MAX);
    assert_int_equal(run("mul", NB_DTYPE_I32, &vo, 2, ab, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    assert_int_equal(g[2], 0); /* 2^32 wraps to 0 */
    assert_int_equal(run("neg", NB_DTYPE_I32, &vo, 1, &va, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    assert_int_equal(g[1], INT32_MIN);
    assert_int_equal(run("abs", NB_DTYPE_I32, &vo, 1, &va, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    assert_int_equal(g[1], INT32_MIN);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}

/* Integer pow (tensor ** tensor, ** scalar, scalar **) and uint8 arithmetic, which the plugin
 * had no kernels for (the core answered "no int64 kernel on opencl:0"). Expected values from
 * PyTorch 2.15: a = torch.tensor([-7, -3, -1, 0, 1, 5, 2, 3]),
 * b = torch.tensor([2, 3, -2, 3, -3, 2, 62, 40]): (a ** b).tolist() -> [49, -27, 1, 0, 1, 25,
 * 4611686018427387904, -6289078614652622815]; (a.int() ** 3), (3 ** a.int()) below;
 * x = torch.tensor([0, 1, 2, 3, 200, 255, 16, 7], dtype=torch.uint8), y = [3, 255, 7, 2, 2, 1,
 * 2, 3] (uint8): x + y, x - y, x * y, x ** y, -x, torch.clamp(x, 2, 100) below. */
void integer_pow_and_uint8_arithmetic_match_torch(void **state)
{
    (void)state;
    int64_t a[8] = {-7, -3, -1, 0, 1, 5, 2, 3}, b[8] = {2, 3, -2, 3, -3, 2, 62, 40}, g[8];
    int64_t want[8] = {49, -27, 1, 0, 1, 25, INT64_C(4611686018427387904),
                       INT64_C(-6289078614652622815)};
    void *ha, *hb, *ho;
    tview va = vec(a, NB_DTYPE_I64, 8, &ha), vb = vec(b, NB_DTYPE_I64, 8, &hb),
          vo = vec(NULL, NB_DTYPE_I64, 8, &ho);
    tview ab[2] = {va, vb};
    assert_int_equal(run("pow", NB_DTYPE_I64, &vo, 2, ab, NULL, NULL), NB_OK);
    buf_read(ho, g, sizeof g);
    for (int k = 0; k < 8; k++)
        assert_int_equal(g[k], want[k]);
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);

    const double three[8] = {3}; /* run() reads 8 of f and i, as nb_kernel_args holds */
    int32_t a32[8] = {-7, -3, -1, 0, 1, 5, 2, 3}, g32[8];
    int32_t cube[8] = {-343, -27, -1, 0, 1, 125, 8, 27}, three_to[8] = {0, 0, 0, 1, 3, 243, 9, 27};
    tview v32 = vec(a32, NB_DTYPE_I32, 8, &ha), o32 = vec(NULL, NB_DTYPE_I32, 8, &ho);
    assert_int_equal(run("pow_scalar", NB_DTYPE_I32, &o32, 1, &v32, three, NULL),
                     NB_OK);
    buf_read(ho, g32, sizeof g32);
    for (int k = 0; k < 8; k++)
        assert_int_equal(g32[k], cube[k]);
    assert_int_equal(run("rpow_scalar", NB_DTYPE_I32, &o32, 1, &v32, three, NULL),
                     NB_OK);
    buf_read(ho, g32, sizeof g32);
    for (int k = 0; k < 8; k++)
        assert_int_equal(g32[k], three_to[k]);
    P->free(0, ha);
    P->free(0, ho);

    uint8_t x[8] = {0, 1, 2, 3, 200, 255, 16, 7}, y[8] = {3, 255, 7, 2, 2, 1, 2, 3}, gu[8];
    const char *ops[] = {"add", "sub", "mul", "pow", "neg", "clamp"};
    uint8_t wu[6][8] = {{3, 0, 9, 5, 202, 0, 18, 10},      {253, 2, 251, 1, 198, 254, 14, 4},
                        {0, 255, 14, 6, 144, 255, 32, 21}, {0, 1, 128, 9, 64, 255, 0, 87},
                        {0, 255, 254, 253, 56, 1, 240, 249}, {2, 2, 2, 3, 100, 100, 16, 7}};
    tview vx = vec(x, NB_DTYPE_U8, 8, &ha), vy = vec(y, NB_DTYPE_U8, 8, &hb),
          vu = vec(NULL, NB_DTYPE_U8, 8, &ho);
    tview xy[2] = {vx, vy};
    const double bounds[8] = {2, 100};
    const int64_t has[8] = {1, 1};
    for (int o = 0; o < 6; o++) {
        int n_in = o < 4 ? 2 : 1;
        const double *f = o == 5 ? bounds : NULL;
        const int64_t *iv = o == 5 ? has : NULL;
        assert_int_equal(run(ops[o], NB_DTYPE_U8, &vu, n_in, xy, f, iv), NB_OK);
        buf_read(ho, gu, sizeof gu);
        for (int k = 0; k < 8; k++)
            if (gu[k] != wu[o][k])
                fail_msg("uint8 %s, element %d: got %u, expected %u", ops[o], k, gu[k],
                         wu[o][k]);
    }
    P->free(0, ha);
    P->free(0, hb);
    P->free(0, ho);
}
