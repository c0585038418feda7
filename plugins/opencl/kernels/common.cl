/* common.cl - the element type of this program and the strided-offset helpers. The host builds
 * one program per (device, dtype) with -DNBK_KIND=<0..7> (f32 f64 i32 i64 bool u8 f16 bf16) and
 * -DHAS_FP64=<0|1>; every kernel below is written once in terms of T (what it computes in) and
 * ST (what the buffers hold), read and written through LD and STORE. */
/* a * b + c stays two roundings, as in the CPU's C, so random numbers and arange match it bit for
 * bit (OpenCL C contracts to FMA by default) */
#pragma OPENCL FP_CONTRACT OFF

#if HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double real_t; /* wide type for arange, random numbers and scalar comparisons */
#define NBK_PI M_PI
#else
typedef float real_t;
#define NBK_PI M_PI_F
#endif

/* UT: the unsigned type of T, in which integer add/sub/mul/neg wrap (signed overflow is
 * undefined in OpenCL C as in C) */
#if NBK_KIND == 0
#define T float
#define ACC float
#define IS_FLOAT 1
#define T_LOWEST (-INFINITY)
#define T_HIGHEST INFINITY
#elif NBK_KIND == 1
#define T double
#define ACC double
#define IS_FLOAT 1
#define T_LOWEST (-(double)INFINITY)
#define T_HIGHEST ((double)INFINITY)
#elif NBK_KIND == 2
#define T int
#define UT uint
#define ACC long
#define T_LOWEST INT_MIN
#define T_HIGHEST INT_MAX
#elif NBK_KIND == 3
#define T long
#define UT ulong
#define ACC long
#define T_LOWEST LONG_MIN
#define T_HIGHEST LONG_MAX
#elif NBK_KIND == 4
#define T uchar
#define UT uchar
#define ACC long
#define IS_BOOL 1
#define T_LOWEST 0
#define T_HIGHEST 1
#elif NBK_KIND == 5
#define T uchar
#define UT uchar
#define ACC long
#define T_LOWEST 0
#define T_HIGHEST 255
#else
/* float16 (6) and bfloat16 (7): 16-bit storage, float compute (PyTorch's opmath), so no
 * extension is needed; only the kernels that load and store through LD/STORE are registered
 * for them, the rest of the program compiles as float and is never launched */
#define T float
#define ST ushort
#define ACC float
#define IS_FLOAT 1
#define IS_HALF 1
#define T_LOWEST (-INFINITY)
#define T_HIGHEST INFINITY
#endif
#ifndef ST
#define ST T
#endif
#ifndef IS_HALF
#define IS_HALF 0
#endif
#ifndef IS_FLOAT
#define IS_FLOAT 0
#endif
#ifndef IS_BOOL
#define IS_BOOL 0
#endif

/* Conversion into T, by the SDK's rule (nb_float_to_int64 in nabla_plugin.h): a float truncates
 * into long, NaN and values outside [-2^63, 2^63) becoming LONG_MIN, and the long wraps into
 * narrower integers; a bool is 1 for any non-zero value (NaN included). */
#define NBK_F2L(x) (((x) >= -0x1p63f && (x) < 0x1p63f) ? (long)(x) : LONG_MIN)
#if IS_BOOL
#define TO_T(x) ((T)((x) != 0))
#define TO_T_FROM_FLOAT(x) ((T)((x) != 0))
#define TO_T_FROM_LONG(x) ((T)((x) != 0))
#elif IS_FLOAT
#define TO_T(x) ((T)(x))
#define TO_T_FROM_FLOAT(x) ((T)(x))
#define TO_T_FROM_LONG(x) ((T)(x))
#else
#define TO_T(x) ((T)(UT)(ulong)(x))
#define TO_T_FROM_FLOAT(x) ((T)(UT)(ulong)NBK_F2L(x))
#define TO_T_FROM_LONG(x) ((T)(UT)(ulong)(x))
#endif

#define IS_NAN(x) ((x) != (x))

/* The SDK's 16-bit conversions (nabla_plugin.h), bit for bit: round to nearest even, NaN kept
 * and made quiet, inf and subnormals exact. Integer code, so no device's own half conversion
 * (or its NaN payload rule) is involved. */
float nbk_bf16_to_f32(ushort h) { return as_float((uint)h << 16); }

ushort nbk_f32_to_bf16(float f)
{
    uint x = as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (ushort)((x >> 16) | 0x40u);
    return (ushort)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float nbk_f16_to_f32(ushort h)
{
    uint sign = (uint)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (e == 0x1f)
        return as_float(sign | 0x7f800000u | (man << 13));
    if (e)
        return as_float(sign | ((e + 112) << 23) | (man << 13));
    return as_float(sign | as_uint((float)man * 0x1p-24f)); /* zero, subnormal: exact */
}

ushort nbk_f32_to_f16(float f)
{
    uint x = as_uint(f), a = x & 0x7fffffffu;
    ushort sign = (ushort)((x >> 16) & 0x8000u);
    if (a > 0x7f800000u)
        return (ushort)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* 65520 and up: a tie at 65520 goes to the even inf */
        return (ushort)(sign | 0x7c00u);
    if (a >= 0x38800000u) /* a normal half: rebias, round the 13 dropped bits to even */
        return (ushort)(sign | ((a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u) >> 13));
    uint e = a >> 23;
    if (e < 102)
        return sign;
    uint mant = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint q = mant >> shift, rem = mant & ((1u << shift) - 1), half_ = 1u << (shift - 1);
    q += rem > half_ || (rem == half_ && (q & 1u));
    return (ushort)(sign | q);
}

/* x rounded to float towards zero, its last bit set when inexact (round to odd): a long or a
 * double then rounds once more into 16 bits as if from the exact value */
float nbk_long_to_f32_odd(long x)
{
    float f = convert_float_rtz(x);
    return (long)f == x ? f : as_float(as_uint(f) | 1u);
}
#if HAS_FP64
float nbk_f64_to_f32_odd(double x)
{
    float f = convert_float_rtz(x);
    if ((double)f == x || IS_NAN(x) || isinf(f))
        return f;
    return as_float(as_uint(f) | 1u);
}
#endif

#if NBK_KIND == 6
#define LD(p, i) nbk_f16_to_f32((p)[i])
#define STORE(p, i, v) ((p)[i] = nbk_f32_to_f16(v))
#elif NBK_KIND == 7
#define LD(p, i) nbk_bf16_to_f32((p)[i])
#define STORE(p, i, v) ((p)[i] = nbk_f32_to_bf16(v))
#else
#define LD(p, i) ((p)[i])
#define STORE(p, i, v) ((p)[i] = (v))
#endif

#if !HAS_FP64
/* Float pairs (h + l, |l| <= ulp(h) / 2) stand in for double where the device has no fp64. */

/* (s, e) = x + y exactly */
#define NBK_TWO_SUM(x, y, s, e)                                                              \
    do {                                                                                      \
        s = (x) + (y);                                                                        \
        float bb_ = s - (x);                                                                  \
        e = ((x) - (s - bb_)) + ((y) - bb_);                                                  \
    } while (0)

/* (a_h + a_l) + (b_h + b_l) * m as a pair; m a float, the product's error found by fma */
float2 nbk_axpm2(float a_h, float a_l, float b_h, float b_l, float m)
{
    float p = b_h * m, pe = fma(b_h, m, -p), s, e;
    NBK_TWO_SUM(a_h, p, s, e);
    e += a_l + (pe + b_l * m);
    float h = s + e;
    return (float2)(h, e - (h - s));
}

/* the same, rounded once into float */
float nbk_axpm(float a_h, float a_l, float b_h, float b_l, float m)
{
    return nbk_axpm2(a_h, a_l, b_h, b_l, m).x;
}
#endif

/* Element offsets of operands 0..nops-1 for row-major element i of g. */
void nbk_offsets(const nbk_geom *g, long i, int nops, long *o)
{
    for (int k = 0; k < nops; k++)
        o[k] = g->off[k];
    if (g->ndim == 1) {
        for (int k = 0; k < nops; k++)
            o[k] += i * g->st[k][0];
        return;
    }
    for (int d = (int)g->ndim - 1; d >= 0; d--) {
        long s = g->shape[d], c = i % s;
        i /= s;
        for (int k = 0; k < nops; k++)
            o[k] += c * g->st[k][d];
    }
}

/* The common prologue of elementwise kernels: i is this work-item's element, o its offsets. */
#define NBK_ELEMENT(nops)                                                                    \
    long i = get_global_id(0);                                                                \
    if (i >= g.n)                                                                             \
        return;                                                                               \
    long o[nops];                                                                             \
    nbk_offsets(&g, i, nops, o)

/* The prologue of the chunked elementwise kernels: work-item i covers up to NBK_CHUNK consecutive
 * elements of one row of g's innermost dim (the host launches rows * ceil(inner / NBK_CHUNK)
 * work-items, ocl_run_elementwise). o holds the offsets of the chunk's first element, sj the
 * innermost strides, len its length. One index split per chunk instead of per element, and a
 * plain inner loop (see NBK_LOOP) that CPU runtimes vectorise: on PoCL an add of two contiguous
 * tensors ran at a quarter of memcpy's speed with one work-item per element. */
#define NBK_CHUNKED(nops)                                                                    \
    long inner_ = g.shape[g.ndim - 1], per_row_ = (inner_ + NBK_CHUNK - 1) / NBK_CHUNK;      \
    long item_ = get_global_id(0);                                                            \
    if (item_ >= g.n / inner_ * per_row_) /* the same for every work-item: hoisted */         \
        return;                                                                               \
    long row_ = item_ / per_row_;                                                             \
    long j0_ = (item_ - row_ * per_row_) * NBK_CHUNK;                                         \
    long len = min((long)NBK_CHUNK, inner_ - j0_);                                            \
    long o[NBK_MAX_OPERANDS] = {0}, sj[NBK_MAX_OPERANDS] = {0};                                \
    nbk_offsets(&g, row_ * inner_ + j0_, nops, o);                                            \
    for (int k_ = 0; k_ < (nops); k_++)                                                       \
        sj[k_] = g.st[k_][g.ndim - 1]

/* The chunk's loop: BODY sees the element offsets p0..p3. Where every operand named in unit
 * (a bit per operand, a compile-time constant) has stride 1 the loop runs on plain offsets for
 * them, which the compiler can vectorise; otherwise every operand goes with its stride. */
/* stride of operand k in NBK_LOOP's plain loop: 1 when unit names it */
#define NBK_UST_(unit, k) (((unit) >> (k)) & 1 ? 1 : sj[k])
#define NBK_LOOP(unit, BODY)                                                                 \
    if ((!((unit) & 1) || sj[0] == 1) && (!((unit) & 2) || sj[1] == 1) &&                    \
        (!((unit) & 4) || sj[2] == 1) && (!((unit) & 8) || sj[3] == 1)) {                    \
        for (long j = 0; j < len; j++) {                                                      \
            long p0 = o[0] + j * NBK_UST_(unit, 0), p1 = o[1] + j * NBK_UST_(unit, 1),        \
                 p2 = o[2] + j * NBK_UST_(unit, 2), p3 = o[3] + j * NBK_UST_(unit, 3);        \
            BODY;                                                                             \
        }                                                                                     \
    } else {                                                                                  \
        for (long j = 0; j < len; j++) {                                                      \
            long p0 = o[0] + j * sj[0], p1 = o[1] + j * sj[1], p2 = o[2] + j * sj[2],         \
                 p3 = o[3] + j * sj[3];                                                       \
            BODY;                                                                             \
        }                                                                                     \
    }
