/* test_half.c - float16 and bfloat16 end to end on the cpu: the shared conversions of
 * nabla_plugin.h against tables from numpy and torch, nb_to_dtype to and from every dtype,
 * PyTorch's promotion with 0-d tensors, ops computed in float32, printing and safetensors. */
#include "nb_test.h"
#include "nabla_plugin.h"

#include <stdio.h>
#include <unistd.h>

/* float64 value, its float16 bits (numpy: np.float64 -> np.float16, one rounding), its bfloat16
 * bits (exact rounding, equal to torch's .to(torch.bfloat16) for each value that is a float32).
 * NaN rows compare as NaN, not by payload. Made with this snippet (numpy, torch 2.15):
 *
 *   h = int(np.array(x, np.float64).astype(np.float16).view(np.uint16))
 *   b = bf16_bits(x)  # Fraction arithmetic: 8 significant bits, RNE, subnormals to 2^-133
 *   if float(np.float32(x)) == x:
 *       assert b == int(torch.tensor(x).to(torch.bfloat16).view(torch.int16)) & 0xffff
 *
 * Rows with 2^-40 and 2^-30 past a tie are the ones a double -> float -> 16-bit path gets
 * wrong (double rounding); 65520 is the tie that goes to inf. */
static const struct {
    double x;
    uint16_t f16, bf16;
} table[] = {
    {0.0, 0x0000, 0x0000},
    {-0.0, 0x8000, 0x8000},
    {1.0, 0x3c00, 0x3f80},
    {-1.0, 0xbc00, 0xbf80},
    {0.1, 0x2e66, 0x3dcd},
    {0.3333333333333333, 0x3555, 0x3eab},
    {2.5, 0x4100, 0x4020},
    {-3.25, 0xc280, 0xc050},
    {65504.0, 0x7bff, 0x4780},
    {65519.99, 0x7bff, 0x4780},
    {65520.0, 0x7c00, 0x4780},
    {100000.0, 0x7c00, 0x47c3},
    {-100000.0, 0xfc00, 0xc7c3},
    {6.103515625e-05, 0x0400, 0x3880},
    {5.960464477539063e-08, 0x0001, 0x3380},
    {2.9802322387695312e-08, 0x0000, 0x3300},
    {2.980232536792755e-08, 0x0001, 0x3300},
    {8.940696716308594e-08, 0x0002, 0x33c0},
    {1.4901161193847656e-08, 0x0000, 0x3280},
    {1e-08, 0x0000, 0x322c},
    {6e-05, 0x03ef, 0x387c},
    {1.00048828125, 0x3c00, 0x3f80},
    {1.00146484375, 0x3c02, 0x3f80},
    {1.0004882812509095, 0x3c01, 0x3f80},
    {1.00390625, 0x3c04, 0x3f80},
    {1.01171875, 0x3c0c, 0x3f82},
    {1.0039062509313226, 0x3c04, 0x3f81},
    {256.5, 0x5c02, 0x4380},
    {257.0, 0x5c04, 0x4380},
    {3.4e+38, 0x7c00, 0x7f80},
    {3.3961775e+38, 0x7c00, 0x7f7f},
    {1e+39, 0x7c00, 0x7f80},
    {1e-39, 0x0000, 0x000b},
    {9.183549615799121e-41, 0x0000, 0x0001},
    {4.591774807899561e-41, 0x0000, 0x0000},
    {6.887662211849341e-41, 0x0000, 0x0001},
    {123456789.0, 0x7c00, 0x4ceb},
    {3.141592653589793, 0x4248, 0x4049},
    {-2.718281828459045, 0xc170, 0xc02e},
    {INFINITY, 0x7c00, 0x7f80},
    {-INFINITY, 0xfc00, 0xff80},
    {NAN, 0x7e00, 0x7fc0},
};
#define N_TABLE (sizeof table / sizeof table[0])

/* 16-bit bits and their value: float(np.array(b, np.uint16).view(np.float16)).hex() and
 * float(torch.tensor(b, dtype=torch.int16).view(torch.bfloat16)).hex(). */
static const struct {
    uint16_t bits;
    double v;
} f16_values[] = {
    {0x0001, 0x1.0p-24}, {0x03ff, 0x1.ff8p-15}, {0x0400, 0x1.0p-14}, {0x7bff, 0x1.ffcp+15},
    {0x7c00, INFINITY},  {0xfc00, -INFINITY},   {0x8001, -0x1.0p-24}, {0x3555, 0x1.554p-2},
    {0xc170, -0x1.5cp+1},
}, bf16_values[] = {
    {0x0001, 0x1.0p-133}, {0x007f, 0x1.fcp-127}, {0x0080, 0x1.0p-126}, {0x7f7f, 0x1.fep+127},
    {0xff80, -INFINITY},  {0x3eab, 0x1.56p-2},   {0x8000, -0.0},
};

static bool f16_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
static bool bf16_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f); }

static bool same16(nb_dtype dt, uint16_t got, uint16_t want)
{
    if (dt == NB_DTYPE_F16 ? f16_nan(want) : bf16_nan(want))
        return dt == NB_DTYPE_F16 ? f16_nan(got) : bf16_nan(got);
    return got == want;
}

static void sdk_conversions_match_the_table(void **state)
{
    (void)state;
    for (size_t k = 0; k < N_TABLE; k++) {
        uint16_t h = nb_f64_to_f16(table[k].x), b = nb_f64_to_bf16(table[k].x);
        if (!same16(NB_DTYPE_F16, h, table[k].f16) || !same16(NB_DTYPE_BF16, b, table[k].bf16))
            fail_msg("%a: float16 0x%04x (want 0x%04x), bfloat16 0x%04x (want 0x%04x)",
                     table[k].x, h, table[k].f16, b, table[k].bf16);
        float f = (float)table[k].x;
        if ((double)f == table[k].x) { /* a float32 input rounds the same way */
            assert_true(same16(NB_DTYPE_F16, nb_f32_to_f16(f), table[k].f16));
            assert_true(same16(NB_DTYPE_BF16, nb_f32_to_bf16(f), table[k].bf16));
        }
    }
    for (size_t k = 0; k < sizeof f16_values / sizeof *f16_values; k++)
        assert_true((double)nb_f16_to_f32(f16_values[k].bits) == f16_values[k].v);
    for (size_t k = 0; k < sizeof bf16_values / sizeof *bf16_values; k++) {
        double v = nb_bf16_to_f32(bf16_values[k].bits);
        assert_true(v == bf16_values[k].v && signbit(v) == signbit(bf16_values[k].v));
    }
}

/* Every one of the 65536 patterns of each type survives 16 -> 32 -> 16 (NaNs stay NaN). */
static void every_16bit_pattern_round_trips(void **state)
{
    (void)state;
    for (uint32_t k = 0; k < 65536; k++) {
        uint16_t h = (uint16_t)k;
        assert_true(same16(NB_DTYPE_F16, nb_f32_to_f16(nb_f16_to_f32(h)), h));
        assert_true(same16(NB_DTYPE_BF16, nb_f32_to_bf16(nb_bf16_to_f32(h)), h));
    }
}

static nb_tensor *from(const void *data, int64_t n, nb_dtype dt)
{
    return nb_from_data(data, NB_SHAPE(n), (nb_opts){.dtype = dt});
}

/* The cpu plugin's bulk conversions (F16C where the CPU has it, the portable loops under
 * NABLA_CPU_ISA=baseline: the unit.test_half.baseline run) agree with the SDK's, bit for bit:
 * every float16 pattern to float32 and back, and float32 values of every exponent. */
static void bulk_conversions_match_the_sdk(void **state)
{
    (void)state;
    enum { N = 65536 };
    uint16_t *h = malloc(N * sizeof *h), *back = malloc(N * sizeof *back);
    float *f = malloc(N * sizeof *f), *g = malloc(N * sizeof *g);
    assert_true(h && back && f && g);
    for (uint32_t k = 0; k < N; k++)
        h[k] = (uint16_t)k;
    nb_dtype dts[] = {NB_DTYPE_F16, NB_DTYPE_BF16};
    for (int d = 0; d < 2; d++) {
        nb_tensor *t = from(h, N, dts[d]), *w = nb_to_dtype(t, NB_DTYPE_F32);
        assert_int_equal(nb_tensor_copy_to_host(w, f, N * sizeof *f), NB_OK);
        for (uint32_t k = 0; k < N; k++) {
            float want = d == 0 ? nb_f16_to_f32(h[k]) : nb_bf16_to_f32(h[k]);
            if (memcmp(&f[k], &want, sizeof want) && !(isnan(f[k]) && isnan(want)))
                fail_msg("%s 0x%04x -> %a, expected %a", nb_dtype_name(dts[d]), h[k], f[k], want);
        }
        /* float32 patterns spread over every exponent, ties and subnormals included */
        for (uint32_t k = 0; k < N; k++) {
            uint32_t bits = k * 65537u + (k & 0xfff);
            memcpy(&g[k], &bits, sizeof bits);
        }
        nb_tensor *gs = from(g, N, NB_DTYPE_F32), *n16 = nb_to_dtype(gs, dts[d]);
        assert_int_equal(nb_tensor_copy_to_host(n16, back, N * sizeof *back), NB_OK);
        for (uint32_t k = 0; k < N; k++) {
            uint16_t want = d == 0 ? nb_f32_to_f16(g[k]) : nb_f32_to_bf16(g[k]);
            if (!same16(dts[d], back[k], want))
                fail_msg("%s of %a: 0x%04x, expected 0x%04x", nb_dtype_name(dts[d]), g[k],
                         back[k], want);
        }
        nb_release(t);
        nb_release(w);
        nb_release(gs);
        nb_release(n16);
    }
    free(h);
    free(back);
    free(f);
    free(g);
}

static void to_dtype_rounds_like_the_table(void **state)
{
    (void)state;
    double xs[N_TABLE];
    for (size_t k = 0; k < N_TABLE; k++)
        xs[k] = table[k].x;
    nb_tensor *x = from(xs, N_TABLE, NB_DTYPE_F64);
    nb_dtype dts[] = {NB_DTYPE_F16, NB_DTYPE_BF16};
    for (int d = 0; d < 2; d++) {
        nb_tensor *h = nb_to_dtype(x, dts[d]);
        assert_non_null(h);
        assert_int_equal(nb_tensor_dtype(h), dts[d]);
        uint16_t got[N_TABLE];
        assert_int_equal(nb_tensor_copy_to_host(h, got, sizeof got), NB_OK);
        for (size_t k = 0; k < N_TABLE; k++) {
            uint16_t want = d == 0 ? table[k].f16 : table[k].bf16;
            if (!same16(dts[d], got[k], want))
                fail_msg("to_dtype(%s) of %a: 0x%04x, expected 0x%04x", nb_dtype_name(dts[d]),
                         table[k].x, got[k], want);
        }
        /* and back to float64: exact, which is the value the bits stand for */
        nb_tensor *back = nb_to_dtype(h, NB_DTYPE_F64);
        double v[N_TABLE];
        assert_int_equal(nb_tensor_copy_to_host(back, v, sizeof v), NB_OK);
        for (size_t k = 0; k < N_TABLE; k++) {
            double want = d == 0 ? nb_f16_to_f32(got[k]) : nb_bf16_to_f32(got[k]);
            assert_true(v[k] == want || (isnan(v[k]) && isnan(want)));
        }
        nb_release(back);
        nb_release(h);
    }
    nb_release(x);
}

/* torch: x = [-2.5, 0, 1, 3.75, 255, -0.4] as float16, then .to(int32/int64/uint8/bool):
 * [-2, 0, 1, 3, 255, 0], uint8 [254, 0, 1, 3, 255, 0], bool [1, 0, 1, 1, 1, 1]. */
static void to_and_from_every_dtype(void **state)
{
    (void)state;
    const float xs[] = {-2.5f, 0, 1, 3.75f, 255, -0.4f};
    const double want_i[] = {-2, 0, 1, 3, 255, 0}, want_u8[] = {254, 0, 1, 3, 255, 0};
    const double want_b[] = {1, 0, 1, 1, 1, 1};
    nb_tensor *x = from(xs, 6, NB_DTYPE_F32);
    nb_dtype halves[] = {NB_DTYPE_F16, NB_DTYPE_BF16};
    nb_dtype others[] = {NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_U8, NB_DTYPE_BOOL, NB_DTYPE_F32,
                         NB_DTYPE_F64};
    for (int h = 0; h < 2; h++) {
        nb_tensor *x16 = nb_to_dtype(x, halves[h]);
        for (size_t o = 0; o < sizeof others / sizeof *others; o++) {
            nb_tensor *y = nb_to_dtype(x16, others[o]);
            assert_non_null(y);
            assert_int_equal(nb_tensor_dtype(y), others[o]);
            double v[6];
            nb_tensor *y64 = nb_to_dtype(y, NB_DTYPE_F64);
            assert_int_equal(nb_tensor_copy_to_host(y64, v, sizeof v), NB_OK);
            for (int k = 0; k < 6; k++) {
                double want = others[o] == NB_DTYPE_U8     ? want_u8[k]
                              : others[o] == NB_DTYPE_BOOL ? want_b[k]
                              : nb_dtype_is_float(others[o])
                                  ? (h == 0 ? nb_f16_to_f32(nb_f32_to_f16(xs[k]))
                                            : nb_bf16_to_f32(nb_f32_to_bf16(xs[k])))
                                  : want_i[k];
                if (v[k] != want)
                    fail_msg("%s -> %s element %d: %g, expected %g", nb_dtype_name(halves[h]),
                             nb_dtype_name(others[o]), k, v[k], want);
            }
            /* and from that dtype back to 16 bits: what rounding its values gives */
            nb_tensor *z = nb_to_dtype(y, halves[h]);
            uint16_t bits[6];
            assert_int_equal(nb_tensor_copy_to_host(z, bits, sizeof bits), NB_OK);
            for (int k = 0; k < 6; k++)
                assert_int_equal(bits[k], halves[h] == NB_DTYPE_F16 ? nb_f64_to_f16(v[k])
                                                                    : nb_f64_to_bf16(v[k]));
            nb_release(z);
            nb_release(y64);
            nb_release(y);
        }
        /* 16 bits to the other 16 bits goes through float32, exactly */
        nb_tensor *other = nb_to_dtype(x16, halves[1 - h]);
        assert_int_equal(nb_tensor_dtype(other), halves[1 - h]);
        nb_release(other);
        nb_release(x16);
    }
    nb_release(x);
}

static nb_dtype dtype_of(nb_tensor *t)
{
    nb_dtype d = nb_tensor_dtype(t);
    nb_release(t);
    return d;
}

/* torch.result_type: a 0-d float32 does not widen float16, int + float16 is float16,
 * float16 + bfloat16 is float32, a 0-d float16 keeps a bfloat16 tensor bfloat16. */
static void promotion_with_tensors_is_pytorchs(void **state)
{
    (void)state;
    nb_tensor *h = nb_ones(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_F16});
    nb_tensor *b = nb_ones(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_BF16});
    nb_tensor *i = nb_ones(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I32});
    nb_tensor *f = nb_ones(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_F32});
    nb_tensor *f0 = nb_full(NB_SHAPE_SCALAR, 1.5, (nb_opts){0});
    nb_tensor *d0 = nb_full(NB_SHAPE_SCALAR, 1.5, (nb_opts){.dtype = NB_DTYPE_F64});
    nb_tensor *h0 = nb_full(NB_SHAPE_SCALAR, 1.5, (nb_opts){.dtype = NB_DTYPE_F16});
    assert_int_equal(dtype_of(nb_add(h, f0)), NB_DTYPE_F16);
    assert_int_equal(dtype_of(nb_mul(d0, h)), NB_DTYPE_F16);
    assert_int_equal(dtype_of(nb_add(i, h0)), NB_DTYPE_F16);
    assert_int_equal(dtype_of(nb_add(b, h0)), NB_DTYPE_BF16);
    assert_int_equal(dtype_of(nb_add(h, b)), NB_DTYPE_F32);
    assert_int_equal(dtype_of(nb_add(h, f)), NB_DTYPE_F32);
    assert_int_equal(dtype_of(nb_add(i, b)), NB_DTYPE_BF16);
    nb_tensor *ts[] = {h, b, i, f, f0, d0, h0};
    for (size_t k = 0; k < sizeof ts / sizeof *ts; k++)
        nb_release(ts[k]);
}

/* Ops compute in float32 and round once: checked against float64 on the rounded inputs with
 * the dtype's tolerance (float16 1e-3, bfloat16 1e-2, relative and absolute). */
static void ops_compute_in_float32(void **state)
{
    (void)state;
    enum { M = 5, K = 7, N = 3 };
    nb_dtype dts[] = {NB_DTYPE_F16, NB_DTYPE_BF16};
    const double tol[] = {1e-3, 1e-2};
    for (int d = 0; d < 2; d++) {
        nb_manual_seed(7);
        nb_tensor *a = nb_randn(NB_SHAPE(M, K), (nb_opts){.dtype = dts[d]});
        nb_tensor *b = nb_randn(NB_SHAPE(K, N), (nb_opts){.dtype = dts[d]});
        assert_non_null(a);
        assert_int_equal(nb_tensor_dtype(a), dts[d]);
        double av[M * K], bv[K * N];
        nb_tensor *a64 = nb_to_dtype(a, NB_DTYPE_F64), *b64 = nb_to_dtype(b, NB_DTYPE_F64);
        assert_int_equal(nb_tensor_copy_to_host(a64, av, sizeof av), NB_OK);
        assert_int_equal(nb_tensor_copy_to_host(b64, bv, sizeof bv), NB_OK);
        /* matmul, a transposed view through sum, exp, broadcast add */
        nb_tensor *mm = nb_matmul(a, b);
        nb_tensor *at = nb_transpose(a, 0, 1);
        nb_tensor *s = nb_sum(at, (int32_t[]){0}, 1, false);
        nb_tensor *e = nb_exp(a);
        nb_tensor *row = nb_narrow(b, 0, 0, 1); /* [1, N] broadcast over [K, N] */
        nb_tensor *br = nb_add(b, row);
        assert_non_null(mm);
        assert_non_null(s);
        assert_non_null(br);
        assert_int_equal(nb_tensor_dtype(mm), dts[d]);
        assert_int_equal(nb_tensor_dtype(s), dts[d]);
        double mv[M * N], sv[M], ev[M * K], brv[K * N];
        nb_tensor *t;
        assert_int_equal(nb_tensor_copy_to_host(t = nb_to_dtype(mm, NB_DTYPE_F64), mv, sizeof mv),
                         NB_OK);
        nb_release(t);
        assert_int_equal(nb_tensor_copy_to_host(t = nb_to_dtype(s, NB_DTYPE_F64), sv, sizeof sv),
                         NB_OK);
        nb_release(t);
        assert_int_equal(nb_tensor_copy_to_host(t = nb_to_dtype(e, NB_DTYPE_F64), ev, sizeof ev),
                         NB_OK);
        nb_release(t);
        assert_int_equal(nb_tensor_copy_to_host(t = nb_to_dtype(br, NB_DTYPE_F64), brv,
                                                sizeof brv), NB_OK);
        nb_release(t);
        for (int i = 0; i < M; i++) {
            double rs = 0;
            for (int k = 0; k < K; k++) {
                rs += av[i * K + k];
                double ex = exp(av[i * K + k]);
                assert_true(fabs(ev[i * K + k] - ex) <= tol[d] * (1 + fabs(ex)));
            }
            assert_true(fabs(sv[i] - rs) <= tol[d] * (1 + fabs(rs)));
            for (int j = 0; j < N; j++) {
                double r = 0;
                for (int k = 0; k < K; k++)
                    r += av[i * K + k] * bv[k * N + j];
                if (fabs(mv[i * N + j] - r) > tol[d] * (1 + fabs(r)))
                    fail_msg("%s matmul [%d,%d]: %g, expected %g", nb_dtype_name(dts[d]), i, j,
                             mv[i * N + j], r);
            }
        }
        for (int k = 0; k < K; k++)
            for (int j = 0; j < N; j++) {
                double r = bv[k * N + j] + bv[j];
                assert_true(fabs(brv[k * N + j] - r) <= tol[d] * (1 + fabs(r)));
            }
        nb_tensor *ts[] = {a, b, a64, b64, mm, at, s, e, row, br};
        for (size_t k = 0; k < sizeof ts / sizeof *ts; k++)
            nb_release(ts[k]);
    }
}

/* print(torch.tensor([1.0, -2.5, 0.1], dtype=torch.float16)) and the bfloat16 one (0.1 is
 * 0.10009765625 in bfloat16) */
static void prints_like_pytorch(void **state)
{
    (void)state;
    const float xs[] = {1.0f, -2.5f, 0.1f};
    nb_tensor *x = from(xs, 3, NB_DTYPE_F32);
    nb_tensor *h = nb_to_dtype(x, NB_DTYPE_F16), *b = nb_to_dtype(x, NB_DTYPE_BF16);
    char *sh = nb_tensor_str(h), *sb = nb_tensor_str(b);
    assert_string_equal(sh, "tensor([ 1.0000, -2.5000,  0.1000], dtype=torch.float16)");
    assert_string_equal(sb, "tensor([ 1.0000, -2.5000,  0.1001], dtype=torch.bfloat16)");
    nb_free(sh);
    nb_free(sb);
    nb_release(x);
    nb_release(h);
    nb_release(b);
}

/* A safetensors file as torch writes it (safetensors.torch.save_file({"h": torch.tensor([1.0,
 * -2.5, 65504], dtype=torch.float16), "b": ...bfloat16}) has this layout: 8-byte header length,
 * JSON, little-endian data); Nabla reads it and writes it back with the same dtypes. */
static void safetensors_load_and_save_16bit(void **state)
{
    (void)state;
    char path[] = "/tmp/nb_half_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char hdr[] = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                       "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[6,12]}}";
    uint64_t hl = sizeof hdr - 1;
    /* torch: bf16 [1.0, -2.5, 65504] = 3f80 c020 4780, f16 = 3c00 c100 7bff */
    const uint8_t data[] = {0x80, 0x3f, 0x20, 0xc0, 0x80, 0x47, 0x00, 0x3c, 0x00, 0xc1, 0xff, 0x7b};
    uint8_t len[8];
    for (int k = 0; k < 8; k++)
        len[k] = (uint8_t)(hl >> (8 * k));
    assert_true(write(fd, len, 8) == 8);
    assert_true(write(fd, hdr, hl) == (ssize_t)hl);
    assert_true(write(fd, data, sizeof data) == (ssize_t)sizeof data);
    close(fd);
    nb_tensor **ts = NULL;
    char **names = NULL;
    int32_t n = 0;
    assert_int_equal(nb_safetensors_load(path, "cpu", &ts, &names, &n), NB_OK);
    assert_int_equal(n, 2);
    for (int32_t k = 0; k < n; k++) {
        bool is_h = strcmp(names[k], "h") == 0;
        assert_int_equal(nb_tensor_dtype(ts[k]), is_h ? NB_DTYPE_F16 : NB_DTYPE_BF16);
        double v[3];
        nb_tensor *v64 = nb_to_dtype(ts[k], NB_DTYPE_F64);
        assert_int_equal(nb_tensor_copy_to_host(v64, v, sizeof v), NB_OK);
        nb_release(v64);
        assert_true(v[0] == 1.0 && v[1] == -2.5 && v[2] == (is_h ? 65504.0 : 65536.0));
    }
    assert_int_equal(nb_safetensors_save(path, ts, (const char *const *)names, n), NB_OK);
    FILE *f = fopen(path, "rb");
    char buf[512];
    size_t got = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(got > 8 + sizeof data);
    assert_memory_equal(buf + got - sizeof data, data, sizeof data); /* b then h, sorted */
    buf[got - sizeof data] = 0;
    assert_non_null(strstr(buf + 8, "\"dtype\":\"F16\""));
    assert_non_null(strstr(buf + 8, "\"dtype\":\"BF16\""));
    nb_safetensors_free(ts, names, n);
    /* F16 data with an odd byte length */
    f = fopen(path, "wb");
    const char bad[] = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,3]}}";
    hl = sizeof bad - 1;
    for (int k = 0; k < 8; k++)
        len[k] = (uint8_t)(hl >> (8 * k));
    fwrite(len, 1, 8, f);
    fwrite(bad, 1, hl, f);
    fwrite(data, 1, 3, f);
    fclose(f);
    assert_int_equal(nb_safetensors_load(path, "cpu", &ts, &names, &n), NB_FORMAT);
    assert_non_null(strstr(nb_last_error(), "F16 with 2 elements (4 bytes)"));
    unlink(path);
}

/* Mixed precision by hand, as torch.autocast does it: f32 master weights, a bfloat16 (or
 * float16) copy for the forward, the loss in float32. The gradient reaches the master weights
 * as float32 and matches the all-float32 gradient within the dtype's tolerance; 30 SGD steps
 * fit y = x w_true. */
static nb_tensor *mixed_loss(nb_tensor *x16, nb_tensor *w, nb_tensor *b, nb_tensor *y,
                             nb_dtype dt)
{
    nb_tensor *w16 = nb_to_dtype(w, dt), *b16 = nb_to_dtype(b, dt);
    nb_tensor *out = nb_linear(x16, w16, b16), *out32 = nb_to_dtype(out, NB_DTYPE_F32);
    nb_tensor *loss = nb_mse_loss(out32, y, NB_REDUCTION_MEAN);
    nb_release(w16);
    nb_release(b16);
    nb_release(out);
    nb_release(out32);
    return loss;
}

static void linear_model_trains_in_16bit_with_f32_master_weights(void **state)
{
    (void)state;
    nb_dtype dts[] = {NB_DTYPE_BF16, NB_DTYPE_F16};
    const double tol[] = {2e-2, 2e-3};
    for (int d = 0; d < 2; d++) {
        nb_manual_seed(3);
        nb_tensor *x = nb_randn(NB_SHAPE(32, 4), (nb_opts){0});
        nb_tensor *wt = nb_randn(NB_SHAPE(2, 4), (nb_opts){0});
        nb_tensor *wtt = nb_transpose(wt, 0, 1), *y = nb_matmul(x, wtt);
        nb_tensor *w = nb_zeros(NB_SHAPE(2, 4), (nb_opts){.requires_grad = true});
        nb_tensor *b = nb_zeros(NB_SHAPE(2), (nb_opts){.requires_grad = true});
        nb_tensor *x16 = nb_to_dtype(x, dts[d]);
        /* the 16-bit gradient against the float32 one at the same point */
        nb_tensor *loss = mixed_loss(x16, w, b, y, dts[d]);
        assert_non_null(loss);
        assert_int_equal(nb_backward(loss, NULL, (nb_backward_opts){0}), NB_OK);
        nb_tensor *g16 = nb_tensor_grad(w);
        assert_non_null(g16);
        assert_int_equal(nb_tensor_dtype(g16), NB_DTYPE_F32);
        float gh[8], gf[8];
        assert_int_equal(nb_tensor_copy_to_host(g16, gh, sizeof gh), NB_OK);
        nb_release(g16);
        nb_release(loss);
        nb_tensor *wr = nb_zeros(NB_SHAPE(2, 4), (nb_opts){.requires_grad = true});
        nb_tensor *o32 = nb_linear(x, wr, NULL), *l32 = nb_mse_loss(o32, y, NB_REDUCTION_MEAN);
        assert_int_equal(nb_backward(l32, NULL, (nb_backward_opts){0}), NB_OK);
        nb_tensor *g32 = nb_tensor_grad(wr);
        assert_int_equal(nb_tensor_copy_to_host(g32, gf, sizeof gf), NB_OK);
        for (int k = 0; k < 8; k++)
            if (fabsf(gh[k] - gf[k]) > tol[d] * (1 + fabsf(gf[k])))
                fail_msg("%s grad[%d] %g, float32 %g", nb_dtype_name(dts[d]), k, gh[k], gf[k]);
        nb_release(g32);
        nb_release(l32);
        nb_release(o32);
        nb_release(wr);
        /* train: the loss falls by two orders of magnitude */
        nb_tensor *params[] = {w, b};
        nb_optim *opt = nb_sgd_new(params, 2, (nb_sgd_opts){.lr = 0.2});
        assert_non_null(opt);
        double first = -1, last = 0;
        for (int step = 0; step < 60; step++) {
            assert_int_equal(nb_optim_zero_grad(opt), NB_OK);
            loss = mixed_loss(x16, w, b, y, dts[d]);
            assert_int_equal(nb_backward(loss, NULL, (nb_backward_opts){0}), NB_OK);
            assert_int_equal(nb_optim_step(opt), NB_OK);
            assert_int_equal(nb_item(loss, &last), NB_OK);
            if (first < 0)
                first = last;
            nb_release(loss);
        }
        assert_int_equal(nb_tensor_dtype(w), NB_DTYPE_F32);
        if (!(last < first * 1e-2))
            fail_msg("%s: loss %g after 60 steps, %g at the start", nb_dtype_name(dts[d]), last,
                     first);
        nb_optim_free(opt);
        nb_tensor *ts[] = {x, wt, wtt, y, w, b, x16};
        for (size_t k = 0; k < sizeof ts / sizeof *ts; k++)
            nb_release(ts[k]);
    }
}

/* A plugin with no 16-bit kernels (the guard: the SDK template, whose handles the core can
 * never read) gets no float16 operand: ops name the missing kernel, or run on the CPU when
 * NABLA_CPU_FALLBACK=1 (the unit.test_half.fallback run). */
static void a_plugin_without_16bit_kernels_errors_or_falls_back(void **state)
{
    (void)state;
#ifndef NB_GUARD_PLUGIN
    skip();
#else
    assert_int_equal(nb_plugin_load(NB_GUARD_PLUGIN), NB_OK);
    const char *fb = getenv("NABLA_CPU_FALLBACK");
    bool fallback = fb && strcmp(fb, "1") == 0;
    const float xs[] = {1.5f, -2, 0.25f};
    nb_tensor *x = from(xs, 3, NB_DTYPE_F32);
    nb_tensor *h = nb_to_dtype(x, NB_DTYPE_F16);
    nb_tensor *g = nb_to_device(h, "guard");
    assert_non_null(g);
    assert_int_equal(nb_tensor_dtype(g), NB_DTYPE_F16);
    nb_tensor *sum = nb_add(g, g), *wide = nb_to_dtype(g, NB_DTYPE_F32);
    if (!fallback) {
        assert_null(sum);
        assert_null(wide);
        assert_int_equal(nb_last_status(), NB_NOT_IMPLEMENTED);
        NB_ASSERT_ERROR_HAS("no float16 kernel on guard:0");
    } else {
        assert_non_null(sum);
        assert_non_null(wide);
        assert_int_equal(nb_tensor_dtype(sum), NB_DTYPE_F16);
        nb_tensor *back = nb_to_device(sum, "cpu"), *b32 = nb_to_dtype(back, NB_DTYPE_F32);
        float v[3], w[3];
        assert_int_equal(nb_tensor_copy_to_host(b32, v, sizeof v), NB_OK);
        nb_tensor *wc = nb_to_device(wide, "cpu");
        assert_int_equal(nb_tensor_copy_to_host(wc, w, sizeof w), NB_OK);
        for (int k = 0; k < 3; k++) {
            assert_true(v[k] == 2 * xs[k]);
            assert_true(w[k] == xs[k]);
        }
        nb_release(wc);
        nb_release(b32);
        nb_release(back);
    }
    nb_release(sum);
    nb_release(wide);
    nb_release(g);
    nb_release(h);
    nb_release(x);
#endif
}

/* torch 2.15: a comparison with a scalar rounds the scalar to the tensor's dtype first, while
 * arithmetic keeps it in float32:
 *   x = torch.tensor([1.0], dtype=torch.bfloat16); (x == 1.001, x < 1.001, x + 1.001)
 *   -> tensor([True]) tensor([False]) tensor([2.], dtype=torch.bfloat16)
 *   torch.tensor([1.0], dtype=torch.float16) == 1.0001 -> tensor([True])
 * On every device that has the kernels. */
static void scalar_comparisons_round_the_scalar_to_the_dtype(void **state)
{
    (void)state;
    const char *devices[] = {"cpu", "opencl:0"};
    for (int d = 0; d < 2; d++) {
        if (d == 1 && nb_device_count("opencl") == 0)
            continue;
        const struct {
            nb_dtype dt;
            double s;
        } cases[] = {{NB_DTYPE_BF16, 1.001}, {NB_DTYPE_F16, 1.0001}};
        for (int c = 0; c < 2; c++) {
            nb_tensor *x = nb_ones(NB_SHAPE(3), (nb_opts){.dtype = cases[c].dt,
                                                          .device = devices[d]});
            nb_tensor *eq = nb_eq_scalar(x, cases[c].s), *lt = nb_lt_scalar(x, cases[c].s);
            nb_tensor *ge = nb_ge_scalar(x, cases[c].s), *ne = nb_ne_scalar(x, cases[c].s);
            assert_non_null(eq);
            assert_non_null(ne);
            bool v[4][3];
            assert_int_equal(nb_tensor_copy_to_host(eq, v[0], 3), NB_OK);
            assert_int_equal(nb_tensor_copy_to_host(lt, v[1], 3), NB_OK);
            assert_int_equal(nb_tensor_copy_to_host(ge, v[2], 3), NB_OK);
            assert_int_equal(nb_tensor_copy_to_host(ne, v[3], 3), NB_OK);
            for (int k = 0; k < 3; k++) {
                assert_true(v[0][k]);
                assert_false(v[1][k]);
                assert_true(v[2][k]);
                assert_false(v[3][k]);
            }
            nb_tensor *r[] = {x, eq, lt, ge, ne};
            for (int k = 0; k < 5; k++)
                nb_release(r[k]);
        }
    }
}

/* rand and uniform stay in [low, high) in 16 bits: a float32 draw just below 1 rounds up to 1
 * (one in 2^12 draws in float16, one in 2^9 in bfloat16) and must come back as low; on every
 * device, with the same numbers on each. */
static void sixteen_bit_uniforms_stay_below_high(void **state)
{
    (void)state;
    const char *devices[] = {"cpu", "opencl:0"};
    const nb_dtype dts[] = {NB_DTYPE_F16, NB_DTYPE_BF16};
    double first[2] = {0};
    for (int d = 0; d < 2; d++) {
        if (d == 1 && nb_device_count("opencl") <= 0)
            continue;
        for (int t = 0; t < 2; t++) {
            nb_manual_seed(7);
            nb_opts o = {.dtype = dts[t], .device = devices[d]};
            nb_tensor *u = nb_rand(NB_SHAPE(1 << 16), o);
            nb_tensor *v = nb_uniform(-2, 3, NB_SHAPE(1 << 16), o);
            nb_tensor *mu = nb_max(u), *nu = nb_min(u), *mv = nb_max(v), *nv = nb_min(v);
            nb_tensor *w = nb_to_dtype(u, NB_DTYPE_F64), *s = nb_sum(w, NULL, 0, false);
            double hi, lo, hv, lv, sum;
            NB_ASSERT_OK(nb_item(mu, &hi));
            NB_ASSERT_OK(nb_item(nu, &lo));
            NB_ASSERT_OK(nb_item(mv, &hv));
            NB_ASSERT_OK(nb_item(nv, &lv));
            NB_ASSERT_OK(nb_item(s, &sum));
            assert_true(hi < 1 && lo >= 0);
            assert_true(hv < 3 && lv >= -2);
            assert_true(fabs(sum / (1 << 16) - 0.5) < 0.01);
            if (d == 0)
                first[t] = sum;
            else
                assert_true(sum == first[t]); /* the cpu's numbers on opencl too */
            nb_tensor *all[] = {u, v, mu, nu, mv, nv, w, s};
            for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
                nb_release(all[k]);
        }
    }
}

/* mean, var and std of 16-bit tensors compute in float32 and round once, as PyTorch's opmath:
 * bfloat16 [1.359375] x 3 averages to itself (a 16-bit sum, 4.0625, times 1/3 in 16 bits gave
 * 1.3515625), and its std is 0 with a zero gradient (torch 2.15: mean 1.359375, std 0). */
static void sixteen_bit_mean_and_std_round_once(void **state)
{
    (void)state;
    const nb_dtype dts[] = {NB_DTYPE_BF16, NB_DTYPE_F16};
    for (int t = 0; t < 2; t++) {
        nb_tensor *x = nb_full(NB_SHAPE(3), 1.359375, (nb_opts){.dtype = dts[t],
                                                                .requires_grad = true});
        nb_tensor *m = nb_mean(x, NULL, 0, false), *s = nb_std(x, NULL, 0, 1, false);
        double mv, sv;
        NB_ASSERT_OK(nb_item(m, &mv));
        NB_ASSERT_OK(nb_item(s, &sv));
        assert_true(mv == 1.359375);
        assert_true(sv == 0);
        assert_int_equal(nb_tensor_dtype(m), dts[t]);
        assert_int_equal(nb_tensor_dtype(s), dts[t]);
        NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
        nb_tensor *g = nb_tensor_grad(x), *ga = nb_abs(g), *gm = nb_max(ga);
        double gv;
        NB_ASSERT_OK(nb_item(gm, &gv));
        assert_true(gv == 0);
        nb_tensor *all[] = {gm, ga, g, s, m, x};
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
            nb_release(all[k]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(sdk_conversions_match_the_table),
        NB_TEST(every_16bit_pattern_round_trips),
        NB_TEST(to_dtype_rounds_like_the_table),
        NB_TEST(bulk_conversions_match_the_sdk),
        NB_TEST(to_and_from_every_dtype),
        NB_TEST(promotion_with_tensors_is_pytorchs),
        NB_TEST(ops_compute_in_float32),
        NB_TEST(scalar_comparisons_round_the_scalar_to_the_dtype),
        NB_TEST(prints_like_pytorch),
        NB_TEST(safetensors_load_and_save_16bit),
        NB_TEST(linear_model_trains_in_16bit_with_f32_master_weights),
        NB_TEST(a_plugin_without_16bit_kernels_errors_or_falls_back),
        NB_TEST(sixteen_bit_uniforms_stay_below_high),
        NB_TEST(sixteen_bit_mean_and_std_round_once),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
