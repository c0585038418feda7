/* common.cl - the element type of this program and the strided-offset helpers. The host builds
 * one program per (device, dtype) with -DNBK_KIND=<0..5> (f32 f64 i32 i64 bool u8) and
 * -DHAS_FP64=<0|1>; every kernel below is written once in terms of T. */
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
#else
#define T uchar
#define UT uchar
#define ACC long
#define T_LOWEST 0
#define T_HIGHEST 255
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
