/* test_opencl_kernels.c - the opencl plugin tested on its own: dlopens the built .so (path in
 * argv[1]), runs kernels on device 0 through the plugin table and compares with plain C loops.
 * Exits 77 (skipped) when the plugin finds no OpenCL device. */
#include <dlfcn.h>
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

static const nb_plugin *P;
static int has_f64;
static char last_error[2048];
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

static void host_log(int level, const char *fmt, ...)
{
    if (level < NB_LOG_WARN && !getenv("NABLA_LOG"))
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

static const size_t esize[NB_DTYPE_COUNT] = {4, 8, 4, 8, 1, 1};

static nb_kernel_fn kernel(const char *op, nb_dtype t)
{
    for (size_t k = 0; k < P->n_kernels; k++)
        if (strcmp(P->kernels[k].op, op) == 0 && P->kernels[k].dtype == t)
            return P->kernels[k].fn;
    fail_msg("no kernel %s for dtype %d", op, (int)t);
    return NULL;
}

static void *buf_new(size_t bytes)
{
    void *h = NULL;
    assert_int_equal(P->alloc(0, bytes, &h), NB_OK);
    assert_non_null(h);
    return h;
}

static void *buf_from(const void *data, size_t bytes)
{
    void *h = buf_new(bytes);
    assert_int_equal(P->write(0, h, 0, data, bytes), NB_OK);
    return h;
}

static void buf_read(void *h, void *dst, size_t bytes)
{
    assert_int_equal(P->read(0, h, 0, dst, bytes), NB_OK);
}

/* A view: operand plus the arrays it points to. */
typedef struct tview {
    nb_operand op;
    int64_t shape[NB_MAX_DIMS];
    int64_t strides[NB_MAX_DIMS];
} tview;

/* strides NULL: contiguous */
static tview view(void *h, int64_t off_elems, nb_dtype t, int ndim, const int64_t *shape,
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
    v.op = (nb_operand){h, (size_t)off_elems * esize[t], t, ndim, v.shape, v.strides};
    return v;
}

/* operands hold pointers into their tview: fix them after copying by value */
static nb_operand opnd(const tview *v)
{
    nb_operand o = v->op;
    o.shape = v->shape;
    o.strides = v->strides;
    return o;
}

static nb_status run(const char *op, nb_dtype t, const tview *out, int n_in, const tview *in,
                     const double *f, const int64_t *i)
{
    nb_operand o = opnd(out), ins[4];
    for (int k = 0; k < n_in; k++)
        ins[k] = opnd(&in[k]);
    nb_kernel_args a;
    memset(&a, 0, sizeof a);
    a.device = 0;
    a.n_in = n_in;
    a.out = &o;
    a.in = ins;
    /* callers pass arrays of 8 (nb_kernel_args.f/i), zero-filled past what the op reads */
    for (int k = 0; f && k < 8; k++)
        a.f[k] = f[k];
    for (int k = 0; i && k < 8; k++)
        a.i[k] = i[k];
    last_error[0] = '\0';
    last_status = NB_OK;
    return kernel(op, t)(&a);
}

/* |got - ref| <= atol + rtol * |ref|, NaN only matching NaN */
static void expect_close(const char *what, size_t k, double got, double ref, double atol,
                         double rtol)
{
    if (isnan(ref) && isnan(got))
        return;
    if (isinf(ref) && got == ref)
        return;
    if (!(fabs(got - ref) <= atol + rtol * fabs(ref)))
        fail_msg("%s[%zu]: got %.9g, expected %.9g (atol %g, rtol %g)", what, k, got, ref, atol,
                 rtol);
}

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 65536.0f * 4.0f - 2.0f;
}

/* ---- tests ---- */

static void device_reports_a_name_and_rejects_bad_buffers(void **state)
{
    (void)state;
    char name[256] = "";
    assert_int_equal(P->device_name(0, name, sizeof name), NB_OK);
    assert_true(strlen(name) > 0);
    void *h = NULL;
    assert_int_equal(P->alloc(0, 0, &h), NB_INVALID_ARGUMENT);
    assert_int_equal(P->alloc(P->device_count(), 16, &h), NB_DEVICE_OUT_OF_RANGE);
    h = buf_new(16);
    char tmp[32];
    assert_int_equal(P->read(0, h, 8, tmp, 16), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "do not fit"));
    assert_int_equal(P->write(0, h, 0, NULL, 4), NB_NULL_ARGUMENT);
    P->free(0, h);
    P->free(0, NULL);
}

/* a (3,4) is the transpose of a (4,3) buffer starting at element 2; b (3,4) broadcasts a
 * (1,4) row (stride 0 along dim 0). */
static void binary_ops_follow_strides_and_broadcast(void **state)
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

static void unary_and_scalar_ops_match_libm(void **state)
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
static void copy_casts_between_every_dtype(void **state)
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

static void fill_and_arange_cover_integer_dtypes(void **state)
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

/* in is (4,5,6) at element offset 3; reduce dim 1 into a (4,1,6) output. */
static void reductions_over_a_middle_dim(void **state)
{
    (void)state;
    enum { A = 4, B = 5, C = 6, OFF = 3 };
    float x[OFF + A * B * C];
    int32_t xi[OFF + A * B * C];
    unsigned seed = 3;
    for (int k = 0; k < OFF + A * B * C; k++) {
        x[k] = frand(&seed);
        xi[k] = (int32_t)(x[k] * 10);
    }
    x[OFF + (1 * B + 2) * C + 4] = NAN; /* row (1, :, 4) holds a NaN */
    x[OFF + (2 * B + 1) * C + 0] = x[OFF + (2 * B + 3) * C + 0] = 9; /* a tie: first wins */
    void *hx = buf_from(x, sizeof x), *hi = buf_from(xi, sizeof xi);
    void *ho = buf_new(A * C * 8);
    int64_t ishape[3] = {A, B, C}, oshape[3] = {A, 1, C};
    tview in = view(hx, OFF, NB_DTYPE_F32, 3, ishape, NULL);
    tview ini = view(hi, OFF, NB_DTYPE_I32, 3, ishape, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 3, oshape, NULL);
    tview outi = view(ho, 0, NB_DTYPE_I32, 3, oshape, NULL);
    tview outl = view(ho, 0, NB_DTYPE_I64, 3, oshape, NULL);
    const char *ops[] = {"sum", "prod", "max", "min", "argmax", "argmin"};
    int64_t dim1[8] = {1};
    for (int o = 0; o < 6; o++) {
        for (int integer = 0; integer < 2; integer++) {
            const tview *o_ = o >= 4 ? &outl : integer ? &outi : &out;
            assert_int_equal(run(ops[o], integer ? NB_DTYPE_I32 : NB_DTYPE_F32, o_, 1,
                                 integer ? &ini : &in, NULL, dim1), NB_OK);
            union { float f[A * C]; int32_t i[A * C]; int64_t l[A * C]; } got;
            buf_read(ho, &got, sizeof got);
            for (int a = 0; a < A; a++)
                for (int c = 0; c < C; c++) {
                    double acc = o == 0 ? 0 : o == 1 ? 1 : NAN;
                    int64_t best = -1;
                    for (int b = 0; b < B; b++) {
                        int k = OFF + (a * B + b) * C + c;
                        double v = integer ? xi[k] : x[k];
                        if (o == 0)
                            acc += v;
                        else if (o == 1)
                            acc *= v;
                        else if (b == 0 || isnan(v) ||
                                 (!isnan(acc) && (o == 2 || o == 4 ? v > acc : v < acc))) {
                            if (!(b > 0 && isnan(acc))) {
                                acc = v;
                                best = b;
                            }
                        }
                    }
                    size_t k = (size_t)(a * C + c);
                    if (o >= 4)
                        assert_int_equal(got.l[k], best);
                    else if (integer)
                        assert_int_equal(got.i[k], (int32_t)acc);
                    else
                        expect_close(ops[o], k, got.f[k], acc, 1e-6, 1e-6);
                }
        }
    }
    P->free(0, hx);
    P->free(0, hi);
    P->free(0, ho);
}

/* A full sum of many elements takes the split (two-pass) path. */
static void full_sum_of_a_long_vector_is_accurate(void **state)
{
    (void)state;
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    unsigned seed = 11;
    for (int k = 0; k < N; k++)
        x[k] = frand(&seed) + 1.0f;
    x[N - 3] = 50; /* the maximum is late and appears once */
    double ref = 0;
    for (int k = 0; k < N; k++)
        ref += x[k];
    void *hx = buf_from(x, N * sizeof *x), *ho = buf_new(8);
    int64_t shape[1] = {N}, one[1] = {1};
    tview in = view(hx, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 1, one, NULL);
    assert_int_equal(run("sum", NB_DTYPE_F32, &out, 1, &in, NULL, NULL), NB_OK);
    float got;
    buf_read(ho, &got, sizeof got);
    /* one f32 rounding of the f64 sum, plus a little for the tree */
    expect_close("sum", 0, got, ref, 0, 1e-6);
    tview outl = view(ho, 0, NB_DTYPE_I64, 1, one, NULL);
    int64_t dim0[8] = {0}, idx;
    assert_int_equal(run("argmax", NB_DTYPE_F32, &outl, 1, &in, NULL, dim0), NB_OK);
    buf_read(ho, &idx, sizeof idx);
    assert_int_equal(idx, N - 3);
    free(x);
    P->free(0, hx);
    P->free(0, ho);
}

/* out (3,37,29) = 0.5 * a @ b + 2 * out, with a given as the transpose of a (3,45,37) buffer
 * and b one (45,29) matrix shared by every batch (batch stride 0). */
static void matmul_handles_transposes_batch_stride_0_and_beta(void **state)
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

static void matmul_f64_matches_reference(void **state)
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

static void gather_and_scatter_add_along_a_dim(void **state)
{
    (void)state;
    enum { R = 4, C = 5, J = 3 };
    float data[R * C];
    for (int k = 0; k < R * C; k++)
        data[k] = (float)k * 0.5f;
    int64_t idx[R * J] = {0, 4, 4, 1, 1, 2, 3, 0, 3, 2, 4, 0};
    void *hd = buf_from(data, sizeof data), *hi = buf_from(idx, sizeof idx);
    void *ho = buf_new(R * J * sizeof(float));
    tview vd = view(hd, 0, NB_DTYPE_F32, 2, (int64_t[]){R, C}, NULL);
    tview vi = view(hi, 0, NB_DTYPE_I64, 2, (int64_t[]){R, J}, NULL);
    tview vo = view(ho, 0, NB_DTYPE_F32, 2, (int64_t[]){R, J}, NULL);
    tview in[2] = {vd, vi};
    int64_t dim1[8] = {1};
    assert_int_equal(run("gather", NB_DTYPE_F32, &vo, 2, in, NULL, dim1), NB_OK);
    float got[R * J];
    buf_read(ho, got, sizeof got);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++)
            assert_true(got[r * J + j] == data[r * C + idx[r * J + j]]);

    /* scatter_add along dim 1: out (R,C) starts at 1, duplicates accumulate */
    float acc[R * C], src[R * J];
    for (int k = 0; k < R * C; k++)
        acc[k] = 1;
    for (int k = 0; k < R * J; k++)
        src[k] = (float)(k + 1);
    void *hs = buf_from(src, sizeof src), *ha = buf_from(acc, sizeof acc);
    tview va = view(ha, 0, NB_DTYPE_F32, 2, (int64_t[]){R, C}, NULL);
    tview sin_[2] = {vi, view(hs, 0, NB_DTYPE_F32, 2, (int64_t[]){R, J}, NULL)};
    assert_int_equal(run("scatter_add", NB_DTYPE_F32, &va, 2, sin_, NULL, dim1), NB_OK);
    float gs[R * C];
    buf_read(ha, gs, sizeof gs);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++)
            acc[r * C + idx[r * J + j]] += src[r * J + j];
    for (int k = 0; k < R * C; k++)
        expect_close("scatter_add", (size_t)k, gs[k], acc[k], 0, 0);

    /* scatter_add along dim 0 of an i64 (C) vector from 7 indices */
    int64_t vidx[7] = {2, 0, 2, 4, 2, 1, 0}, vsrc[7] = {1, 2, 3, 4, 5, 6, 7}, vout[C] = {0};
    void *hvi = buf_from(vidx, sizeof vidx), *hvs = buf_from(vsrc, sizeof vsrc);
    void *hvo = buf_from(vout, sizeof vout);
    tview vvo = view(hvo, 0, NB_DTYPE_I64, 1, (int64_t[]){C}, NULL);
    tview vin[2] = {view(hvi, 0, NB_DTYPE_I64, 1, (int64_t[]){7}, NULL),
                    view(hvs, 0, NB_DTYPE_I64, 1, (int64_t[]){7}, NULL)};
    int64_t dim0[8] = {0};
    assert_int_equal(run("scatter_add", NB_DTYPE_I64, &vvo, 2, vin, NULL, dim0), NB_OK);
    int64_t gv[C];
    buf_read(hvo, gv, sizeof gv);
    for (int k = 0; k < 7; k++)
        vout[vidx[k]] += vsrc[k];
    for (int k = 0; k < C; k++)
        assert_int_equal(gv[k], vout[k]);

    /* an index out of range is found on the device: the op is queued without waiting, and the
     * next synchronisation point (a read or synchronize) is the error naming it, once */
    idx[5] = 5;
    assert_int_equal(P->write(0, hi, 0, idx, sizeof idx), NB_OK);
    assert_int_equal(run("gather", NB_DTYPE_F32, &vo, 2, in, NULL, dim1), NB_OK);
    last_error[0] = '\0';
    assert_int_equal(P->read(0, ho, 0, got, sizeof got), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "gather: index 5 is out of range for dim 1 of size 5"));
    assert_int_equal(P->read(0, ho, 0, got, sizeof got), NB_OK); /* reported once */
    assert_true(got[5] == 0.0f); /* the bad element was skipped, not read out of bounds */
    assert_int_equal(run("scatter_add", NB_DTYPE_F32, &va, 2, sin_, NULL, dim1), NB_OK);
    last_error[0] = '\0';
    assert_int_equal(P->synchronize(0), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "scatter_add: index 5 is out of range"));
    assert_int_equal(P->synchronize(0), NB_OK);
    P->free(0, hd);
    P->free(0, hi);
    P->free(0, ho);
    P->free(0, hs);
    P->free(0, ha);
    P->free(0, hvi);
    P->free(0, hvs);
    P->free(0, hvo);
}

/* The same (seed, offset) gives nb_philox_uniform / the Box-Muller of nb_philox_normal_parts
 * for element k in row-major order. */
static void random_ops_match_philox_on_the_host(void **state)
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

static void where_and_logical_ops_read_any_dtype(void **state)
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

/* x is (3,2,70): rows of 70 along the last dim; row 4 holds a NaN, which spreads over it. */
static void softmax_family_matches_reference(void **state)
{
    (void)state;
    enum { ROWS = 6, L = 70, N = ROWS * L };
    float x[N], gr[N], y[N], got[N];
    unsigned seed = 13;
    for (int k = 0; k < N; k++) {
        x[k] = frand(&seed) * 4;
        gr[k] = frand(&seed);
    }
    x[4 * L + 9] = NAN;
    void *hx = buf_from(x, sizeof x), *hg = buf_from(gr, sizeof gr), *ho = buf_new(sizeof x);
    void *hy = buf_new(sizeof x);
    int64_t shape[3] = {3, 2, L}, last[8] = {2};
    tview vx = view(hx, 0, NB_DTYPE_F32, 3, shape, NULL), vo = view(ho, 0, NB_DTYPE_F32, 3, shape,
                                                                      NULL);
    tview vy = view(hy, 0, NB_DTYPE_F32, 3, shape, NULL);
    for (int take_log = 0; take_log < 2; take_log++) {
        assert_int_equal(run(take_log ? "log_softmax" : "softmax", NB_DTYPE_F32, &vy, 1, &vx,
                             NULL, last), NB_OK);
        buf_read(hy, y, sizeof y);
        for (int r = 0; r < ROWS; r++) {
            double m = -INFINITY, s = 0;
            for (int k = 0; k < L; k++)
                m = fmax(m, x[r * L + k]);
            for (int k = 0; k < L; k++)
                s += exp(x[r * L + k] - m);
            for (int k = 0; k < L; k++) {
                double d = x[r * L + k] - m, ref = take_log ? d - log(s) : exp(d) / s;
                if (r == 4)
                    ref = NAN;
                expect_close(take_log ? "log_softmax" : "softmax", (size_t)(r * L + k),
                             y[r * L + k], ref, 1e-6, 1e-5);
            }
        }
        /* backward from the output just computed */
        tview bin[2] = {view(hg, 0, NB_DTYPE_F32, 3, shape, NULL), vy};
        assert_int_equal(run(take_log ? "log_softmax_backward" : "softmax_backward",
                             NB_DTYPE_F32, &vo, 2, bin, NULL, last), NB_OK);
        buf_read(ho, got, sizeof got);
        for (int r = 0; r < ROWS; r++) {
            if (r == 4)
                continue;
            double s = 0;
            for (int k = 0; k < L; k++)
                s += take_log ? gr[r * L + k] : (double)gr[r * L + k] * y[r * L + k];
            for (int k = 0; k < L; k++) {
                double g = gr[r * L + k], yv = y[r * L + k];
                double ref = take_log ? g - exp(yv) * s : yv * (g - s);
                expect_close("softmax backward", (size_t)(r * L + k), got[r * L + k], ref, 1e-6,
                             1e-5);
            }
        }
    }
    /* relu_backward: grad where x > 0 */
    tview rin[2] = {view(hg, 0, NB_DTYPE_F32, 3, shape, NULL), vx};
    assert_int_equal(run("relu_backward", NB_DTYPE_F32, &vo, 2, rin, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int k = 0; k < N; k++)
        expect_close("relu_backward", (size_t)k, got[k], x[k] > 0 ? gr[k] : 0, 0, 0);
    P->free(0, hx);
    P->free(0, hg);
    P->free(0, ho);
    P->free(0, hy);
}

/* Three Adam (or AdamW) steps from p with constant gradient g, in dtype t. */
static void adam_case(nb_dtype t, int decoupled, const float *p0, const float *g0, double tol)
{
    enum { N = 50 };
    double rp[N], rm[N] = {0}, rv[N] = {0};
    unsigned char p[N * 8], g[N * 8], zero[N * 8] = {0};
    for (int k = 0; k < N; k++) {
        rp[k] = p0[k];
        if (t == NB_DTYPE_F32) {
            ((float *)p)[k] = p0[k];
            ((float *)g)[k] = g0[k];
        } else {
            ((double *)p)[k] = p0[k];
            ((double *)g)[k] = g0[k];
        }
    }
    size_t bytes = N * esize[t];
    void *hp = buf_from(p, bytes), *hg = buf_from(g, bytes), *hm = buf_from(zero, bytes),
         *hv = buf_from(zero, bytes);
    int64_t shape[1] = {N};
    tview vp = view(hp, 0, t, 1, shape, NULL);
    tview in[3] = {view(hg, 0, t, 1, shape, NULL), view(hm, 0, t, 1, shape, NULL),
                   view(hv, 0, t, 1, shape, NULL)};
    double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    for (int step = 1; step <= 3; step++) {
        double f[8] = {lr, b1, b2, eps, wd};
        int64_t i[8] = {step, decoupled};
        assert_int_equal(run("adam_step", t, &vp, 3, in, f, i), NB_OK);
        for (int k = 0; k < N; k++) {
            double gv = g0[k];
            if (decoupled)
                rp[k] *= 1 - lr * wd;
            else
                gv += wd * rp[k];
            rm[k] = b1 * rm[k] + (1 - b1) * gv;
            rv[k] = b2 * rv[k] + (1 - b2) * gv * gv;
            double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
            rp[k] -= lr / bc1 * rm[k] / (sqrt(rv[k]) / sqrt(bc2) + eps);
        }
    }
    buf_read(hp, p, bytes);
    for (int k = 0; k < N; k++)
        expect_close(decoupled ? "adamw" : "adam", (size_t)k,
                     t == NB_DTYPE_F32 ? ((float *)p)[k] : ((double *)p)[k], rp[k], tol, tol);
    P->free(0, hp);
    P->free(0, hg);
    P->free(0, hm);
    P->free(0, hv);
}

/* Three SGD steps (momentum 0.9, dampening 0.1, nesterov, weight decay) and three Adam and
 * AdamW steps, against the torch.optim update rules written out in C. */
static void optimizer_steps_match_torch_rules(void **state)
{
    (void)state;
    enum { N = 50 };
    float p[N], g[N], b[N];
    double rp[N], rb[N];
    unsigned seed = 17;
    for (int k = 0; k < N; k++) {
        p[k] = frand(&seed);
        g[k] = frand(&seed);
        rp[k] = p[k];
        b[k] = 0;
        rb[k] = 0;
    }
    void *hp = buf_from(p, sizeof p), *hg = buf_from(g, sizeof g), *hb = buf_from(b, sizeof b);
    int64_t shape[1] = {N};
    tview vp = view(hp, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview in[3] = {view(hg, 0, NB_DTYPE_F32, 1, shape, NULL),
                   view(hb, 0, NB_DTYPE_F32, 1, shape, NULL)};
    double lr = 0.1, mom = 0.9, damp = 0.1, wd = 0.01;
    for (int step = 0; step < 3; step++) {
        double f[8] = {lr, mom, damp, wd};
        int64_t i[8] = {1, step == 0};
        assert_int_equal(run("sgd_step", NB_DTYPE_F32, &vp, 2, in, f, i), NB_OK);
        for (int k = 0; k < N; k++) {
            double d = g[k] + wd * rp[k];
            rb[k] = step == 0 ? d : mom * rb[k] + (1 - damp) * d;
            rp[k] -= lr * (d + mom * rb[k]);
        }
    }
    buf_read(hp, p, sizeof p);
    for (int k = 0; k < N; k++)
        expect_close("sgd_step", (size_t)k, p[k], rp[k], 1e-6, 1e-5);

    for (int decoupled = 0; decoupled < 2; decoupled++) {
        /* f32 rounding compounds over the steps: the update is about lr per step */
        adam_case(NB_DTYPE_F32, decoupled, p, g, 1e-5);
        if (has_f64)
            adam_case(NB_DTYPE_F64, decoupled, p, g, 1e-12);
    }
    P->free(0, hp);
    P->free(0, hg);
    P->free(0, hb);
}

/* conv2d with groups 2, stride (2,1), padding (1,1), dilation (1,2) against direct loops, and
 * its two gradients against the loops' adjoints. */
static void conv2d_and_its_gradients_match_direct_loops(void **state)
{
    (void)state;
    enum { N = 2, C = 4, H = 7, W = 6, O = 6, G = 2, KH = 3, KW = 2, SH = 2, SW = 1, PH = 1,
           PW = 1, DH = 1, DW = 2 };
    enum { OH = (H + 2 * PH - DH * (KH - 1) - 1) / SH + 1,
           OW = (W + 2 * PW - DW * (KW - 1) - 1) / SW + 1, CG = C / G, OG = O / G };
    static float x[N * C * H * W], w[O * CG * KH * KW], gy[N * O * OH * OW];
    static float y[N * O * OH * OW], gx[N * C * H * W], gw[O * CG * KH * KW];
    static double ry[N * O * OH * OW], rgx[N * C * H * W], rgw[O * CG * KH * KW];
    unsigned seed = 21;
    for (size_t k = 0; k < sizeof x / sizeof x[0]; k++)
        x[k] = frand(&seed);
    for (size_t k = 0; k < sizeof w / sizeof w[0]; k++)
        w[k] = frand(&seed);
    for (size_t k = 0; k < sizeof gy / sizeof gy[0]; k++)
        gy[k] = frand(&seed);
    memset(rgx, 0, sizeof rgx);
    memset(rgw, 0, sizeof rgw);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    double acc = 0;
                    size_t yi = (size_t)((n * O + o) * OH + oh) * OW + ow;
                    for (int c = 0; c < CG; c++)
                        for (int a = 0; a < KH; a++)
                            for (int b = 0; b < KW; b++) {
                                int ih = oh * SH - PH + a * DH, iw = ow * SW - PW + b * DW;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                                    continue;
                                size_t xi = (size_t)((n * C + o / OG * CG + c) * H + ih) * W + iw;
                                size_t wi = (size_t)((o * CG + c) * KH + a) * KW + b;
                                acc += (double)x[xi] * w[wi];
                                rgx[xi] += (double)gy[yi] * w[wi];
                                rgw[wi] += (double)gy[yi] * x[xi];
                            }
                    ry[yi] = acc;
                }
    void *hx = buf_from(x, sizeof x), *hw = buf_from(w, sizeof w), *hgy = buf_from(gy, sizeof gy);
    void *hy = buf_new(sizeof y), *hgx = buf_new(sizeof gx), *hgw = buf_new(sizeof gw);
    tview vx = view(hx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    tview vw = view(hw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, CG, KH, KW}, NULL);
    tview vy = view(hy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, O, OH, OW}, NULL);
    tview vgy = view(hgy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, O, OH, OW}, NULL);
    tview vgx = view(hgx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    tview vgw = view(hgw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, CG, KH, KW}, NULL);
    int64_t i[8] = {SH, SW, PH, PW, DH, DW, G};
    tview fin[2] = {vx, vw}, bin[2] = {vgy, vw}, win[2] = {vgy, vx};
    assert_int_equal(run("conv2d", NB_DTYPE_F32, &vy, 2, fin, NULL, i), NB_OK);
    assert_int_equal(run("conv2d_backward_input", NB_DTYPE_F32, &vgx, 2, bin, NULL, i), NB_OK);
    assert_int_equal(run("conv2d_backward_weight", NB_DTYPE_F32, &vgw, 2, win, NULL, i), NB_OK);
    buf_read(hy, y, sizeof y);
    buf_read(hgx, gx, sizeof gx);
    buf_read(hgw, gw, sizeof gw);
    /* f32 sums of a few dozen (weight grad: a few hundred) products of numbers below 4 */
    for (size_t k = 0; k < sizeof y / sizeof y[0]; k++)
        expect_close("conv2d", k, y[k], ry[k], 1e-5, 1e-5);
    for (size_t k = 0; k < sizeof gx / sizeof gx[0]; k++)
        expect_close("conv2d_backward_input", k, gx[k], rgx[k], 1e-5, 1e-5);
    for (size_t k = 0; k < sizeof gw / sizeof gw[0]; k++)
        expect_close("conv2d_backward_weight", k, gw[k], rgw[k], 1e-4, 1e-5);
    /* a weight that does not fit the groups is refused */
    tview bad = view(hw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, C, 1, 1}, NULL);
    tview badin[2] = {vx, bad};
    assert_int_equal(run("conv2d", NB_DTYPE_F32, &vy, 2, badin, NULL, i), NB_SHAPE_MISMATCH);
    P->free(0, hx);
    P->free(0, hw);
    P->free(0, hgy);
    P->free(0, hy);
    P->free(0, hgx);
    P->free(0, hgw);
}

/* 3x3 windows, stride 2, padding 1 over values with ties: the first maximum wins, and the
 * backward adds each window's gradient at its argmax (overlapping windows add up). */
static void max_pool2d_picks_first_maximum_and_routes_gradients(void **state)
{
    (void)state;
    enum { N = 2, C = 3, H = 7, W = 7, K = 3, S = 2, PD = 1, OH = (H + 2 * PD - K) / S + 1,
           OW = OH };
    static float x[N * C * H * W], y[N * C * OH * OW], gy[N * C * OH * OW], gx[N * C * H * W];
    static int64_t idx[N * C * OH * OW];
    static double rgx[N * C * H * W];
    unsigned seed = 23;
    for (size_t k = 0; k < sizeof x / sizeof x[0]; k++)
        x[k] = (float)((int)(frand(&seed) * 2)); /* few distinct values: many ties */
    for (size_t k = 0; k < sizeof gy / sizeof gy[0]; k++)
        gy[k] = frand(&seed);
    void *hx = buf_from(x, sizeof x), *hy = buf_new(sizeof y), *hi = buf_new(sizeof idx);
    void *hgy = buf_from(gy, sizeof gy), *hgx = buf_new(sizeof gx);
    tview vx = view(hx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    tview vy = view(hy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, OH, OW}, NULL);
    tview vi = view(hi, 0, NB_DTYPE_I64, 4, (int64_t[]){N, C, OH, OW}, NULL);
    tview vgy = view(hgy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, OH, OW}, NULL);
    tview vgx = view(hgx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    int64_t i[8] = {K, K, S, S, PD, PD};
    tview fin[2] = {vx, vi}, bin[2] = {vgy, vi};
    assert_int_equal(run("max_pool2d", NB_DTYPE_F32, &vy, 2, fin, NULL, i), NB_OK);
    assert_int_equal(run("max_pool2d_backward", NB_DTYPE_F32, &vgx, 2, bin, NULL, i), NB_OK);
    buf_read(hy, y, sizeof y);
    buf_read(hi, idx, sizeof idx);
    buf_read(hgx, gx, sizeof gx);
    memset(rgx, 0, sizeof rgx);
    for (int p = 0; p < N * C; p++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                double best = -INFINITY;
                int64_t bi = -1;
                for (int a = oh * S - PD; a < oh * S - PD + K; a++)
                    for (int b = ow * S - PD; b < ow * S - PD + K; b++)
                        if (a >= 0 && a < H && b >= 0 && b < W && x[p * H * W + a * W + b] > best) {
                            best = x[p * H * W + a * W + b];
                            bi = a * W + b;
                        }
                size_t q = (size_t)(p * OH + oh) * OW + ow;
                assert_true(y[q] == best);
                assert_int_equal(idx[q], bi);
                rgx[p * H * W + bi] += gy[q];
            }
    for (size_t k = 0; k < sizeof gx / sizeof gx[0]; k++)
        expect_close("max_pool2d_backward", k, gx[k], rgx[k], 1e-6, 1e-6);
    P->free(0, hx);
    P->free(0, hy);
    P->free(0, hi);
    P->free(0, hgy);
    P->free(0, hgx);
}

static void bad_operands_are_errors_not_crashes(void **state)
{
    (void)state;
    void *h = buf_new(16 * sizeof(float));
    int64_t shape[1] = {16}, big[1] = {17}, half[1] = {8};
    tview ok = view(h, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview over = view(h, 0, NB_DTYPE_F32, 1, big, NULL);
    tview small = view(h, 0, NB_DTYPE_F32, 1, half, NULL);
    tview shifted = view(h, 1, NB_DTYPE_F32, 1, shape, NULL);
    tview wrong = view(h, 0, NB_DTYPE_I32, 1, shape, NULL);
    assert_int_equal(run("neg", NB_DTYPE_F32, &ok, 1, &small, NULL, NULL), NB_SHAPE_MISMATCH);
    assert_int_equal(run("neg", NB_DTYPE_F32, &over, 1, &over, NULL, NULL),
                     NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "outside its buffer"));
    assert_int_equal(run("neg", NB_DTYPE_F32, &ok, 1, &shifted, NULL, NULL),
                     NB_INDEX_OUT_OF_RANGE);
    assert_int_equal(run("add", NB_DTYPE_F32, &ok, 1, &ok, NULL, NULL), NB_INVALID_ARGUMENT);
    tview two[2] = {ok, wrong};
    assert_int_equal(run("add", NB_DTYPE_F32, &ok, 2, two, NULL, NULL), NB_DTYPE_UNSUPPORTED);
    nb_kernel_args a;
    memset(&a, 0, sizeof a);
    assert_int_equal(kernel("neg", NB_DTYPE_F32)(&a), NB_INVALID_ARGUMENT);
    assert_int_equal(kernel("fill", NB_DTYPE_F32)(NULL), NB_NULL_ARGUMENT);
    P->free(0, h);
}

/* ---- issue 16: what real devices would hit ---- */

/* a 1-d view of n elements of dtype t over a fresh buffer holding data */
static tview vec(void *data, nb_dtype t, int64_t n, void **h)
{
    *h = data ? buf_from(data, (size_t)n * esize[t]) : buf_new((size_t)n * esize[t]);
    return view(*h, 0, t, 1, (int64_t[]){n}, NULL);
}

static void float_to_integer_follows_the_sdk_rule(void **state)
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

static void clamp_rounds_integer_bounds_inward_and_a_nan_bound_wins(void **state)
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

static void signed_zeros_come_out_as_on_the_cpu(void **state)
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

static void integer_arange_and_scalar_compares_are_exact_past_2_to_24(void **state)
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

static void integer_arithmetic_wraps(void **state)
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

/* beta 0 means out is not read: NaN already there must not leak through (CLBlast and own) */
static void matmul_with_beta_0_ignores_what_out_held(void **state)
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

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "nabla_plugin_opencl.so";
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!dl) {
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        return 1;
    }
    nb_plugin_entry_fn entry = (nb_plugin_entry_fn)dlsym(dl, NB_PLUGIN_ENTRY_SYMBOL);
    P = entry ? entry(&host) : NULL;
    if (!P) {
        fprintf(stderr, "%s: no plugin table (%s)\n", path, last_error);
        return 1;
    }
    if (P->device_count() == 0) {
        fprintf(stderr, "skipped: %s\n", P->status_note ? P->status_note() : "no device");
        return 77;
    }
    for (size_t k = 0; k < P->n_kernels; k++)
        has_f64 |= P->kernels[k].dtype == NB_DTYPE_F64;
    char name[256] = "";
    P->device_name(0, name, sizeof name);
    fprintf(stderr, "opencl:0 is %s (%s f64)\n", name, has_f64 ? "with" : "without");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(device_reports_a_name_and_rejects_bad_buffers),
        cmocka_unit_test(binary_ops_follow_strides_and_broadcast),
        cmocka_unit_test(unary_and_scalar_ops_match_libm),
        cmocka_unit_test(copy_casts_between_every_dtype),
        cmocka_unit_test(fill_and_arange_cover_integer_dtypes),
        cmocka_unit_test(reductions_over_a_middle_dim),
        cmocka_unit_test(full_sum_of_a_long_vector_is_accurate),
        cmocka_unit_test(matmul_handles_transposes_batch_stride_0_and_beta),
        cmocka_unit_test(matmul_f64_matches_reference),
        cmocka_unit_test(gather_and_scatter_add_along_a_dim),
        cmocka_unit_test(random_ops_match_philox_on_the_host),
        cmocka_unit_test(where_and_logical_ops_read_any_dtype),
        cmocka_unit_test(softmax_family_matches_reference),
        cmocka_unit_test(optimizer_steps_match_torch_rules),
        cmocka_unit_test(conv2d_and_its_gradients_match_direct_loops),
        cmocka_unit_test(max_pool2d_picks_first_maximum_and_routes_gradients),
        cmocka_unit_test(bad_operands_are_errors_not_crashes),
        cmocka_unit_test(float_to_integer_follows_the_sdk_rule),
        cmocka_unit_test(clamp_rounds_integer_bounds_inward_and_a_nan_bound_wins),
        cmocka_unit_test(signed_zeros_come_out_as_on_the_cpu),
        cmocka_unit_test(integer_arange_and_scalar_compares_are_exact_past_2_to_24),
        cmocka_unit_test(integer_arithmetic_wraps),
        cmocka_unit_test(matmul_with_beta_0_ignores_what_out_held),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (P->shutdown)
        P->shutdown();
    dlclose(dl); /* opened RTLD_NODELETE: leak checkers can still name the ICD loader's frames */
    return failed ? 1 : 0;
}
