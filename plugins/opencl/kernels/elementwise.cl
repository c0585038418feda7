/* elementwise.cl - fill, copy with cast, arange, unary/binary arithmetic, comparisons, logical
 * ops and where, all over strided operands (stride 0 = broadcast). Every kernel here reads and
 * writes its tensors through LD/STORE, so the 16-bit programs use them all. */

/* v: the value as stored (a 16-bit program gets the bits, rounded once by the host) */
__kernel void fill(__global ST *out, nbk_geom g, ST v)
{
    NBK_CHUNKED(1);
    NBK_LOOP(1, out[p0] = v);
}

/* copy_from_<src>: out (T) = (T) in (src type), by the SDK's conversion rule. A 16-bit output
 * rounds once: wide sources reach float by round to odd first (nb_f64_to_bf16's rule). */
#define NBK_COPY(name, S, CONV)                                                              \
    __kernel void name(__global ST *out, __global const S *in, nbk_geom g)                    \
    {                                                                                         \
        NBK_CHUNKED(2);                                                                       \
        NBK_LOOP(3, STORE(out, p0, CONV(in[p1])));                                            \
    }
#if IS_HALF
#define NBK_FROM_WIDE_INT(x) nbk_long_to_f32_odd((long)(x))
#define NBK_FROM_F64(x) nbk_f64_to_f32_odd(x)
#else
#define NBK_FROM_WIDE_INT(x) TO_T(x)
#define NBK_FROM_F64(x) TO_T_FROM_FLOAT(x)
#endif
NBK_COPY(copy_from_f32, float, TO_T_FROM_FLOAT)
#if HAS_FP64
NBK_COPY(copy_from_f64, double, NBK_FROM_F64)
#endif
NBK_COPY(copy_from_i32, int, NBK_FROM_WIDE_INT)
NBK_COPY(copy_from_i64, long, NBK_FROM_WIDE_INT)
NBK_COPY(copy_from_u8, uchar, TO_T)
/* a bool byte may hold any non-zero value (nb_from_data): it reads as 1 */
#define NBK_FROM_BOOL(x) TO_T((x) != 0)
NBK_COPY(copy_from_bool, uchar, NBK_FROM_BOOL)
/* 16-bit sources widen exactly to float, then convert as a float does */
#define NBK_FROM_F16(x) TO_T_FROM_FLOAT(nbk_f16_to_f32(x))
#define NBK_FROM_BF16(x) TO_T_FROM_FLOAT(nbk_bf16_to_f32(x))
NBK_COPY(copy_from_f16, ushort, NBK_FROM_F16)
NBK_COPY(copy_from_bf16, ushort, NBK_FROM_BF16)

/* same-dtype copy of a 16-bit tensor: the bits as they are (NaN payloads kept), as nb_to_dtype
 * does on the cpu */
__kernel void copy_bits(__global ST *out, __global const ST *in, nbk_geom g)
{
    NBK_CHUNKED(2);
    NBK_LOOP(3, out[p0] = in[p1]);
}

/* integral: start and step are whole numbers, given exactly in istart/istep; the value is then
 * start + i * step in (wrapping) integers, exact past 2^24 with or without fp64, and a float T
 * gets it rounded once, as the CPU's double arithmetic does. Otherwise real_t arithmetic. */
#if !HAS_FP64 && NBK_KIND == 0
/* float32 without fp64: start and step arrive as float pairs (s_h + s_l, t_h + t_l), and i is
 * split into two parts float holds exactly, so the value rounds once as the CPU's does */
__kernel void arange(__global ST *out, nbk_geom g, float s_h, float s_l, float t_h, float t_l,
                     long istart, long istep, int integral)
{
    NBK_ELEMENT(1);
    if (integral) {
        STORE(out, o[0], TO_T_FROM_LONG((long)((ulong)istart + (ulong)i * (ulong)istep)));
        return;
    }
    long i_lo = i & 0xfff;
    float2 v = nbk_axpm2(s_h, s_l, t_h, t_l, (float)(i - i_lo));
    STORE(out, o[0], nbk_axpm(v.x, v.y, t_h, t_l, (float)i_lo));
}
#else
__kernel void arange(__global ST *out, nbk_geom g, real_t start, real_t step, long istart,
                     long istep, int integral)
{
    NBK_ELEMENT(1);
    if (integral)
        STORE(out, o[0], TO_T_FROM_LONG((long)((ulong)istart + (ulong)i * (ulong)istep)));
    else
        STORE(out, o[0], TO_T_FROM_FLOAT(start + (real_t)i * step));
}
#endif

#if !IS_BOOL
#if !IS_FLOAT
/* Integer power as the cpu plugin's ipow: by squaring in ulong (wrapping), and for a negative
 * exponent PyTorch's results, where only bases 1 and -1 survive. */
inline long nbk_ipow(long b, long e)
{
    if (e < 0)
        return b == 1 ? 1 : b == -1 ? ((e & 1) ? -1 : 1) : 0;
    ulong r = 1, ub = (ulong)b;
    while (e) {
        if (e & 1)
            r *= ub;
        ub *= ub;
        e >>= 1;
    }
    return (long)r;
}
#endif

/* One loop per op (the switch outside it), so each loop is plain enough to vectorise. */
#define NBK_U_(code, expr)                                                                   \
    case code:                                                                                \
        NBK_LOOP(3, T x = LD(a, p1); STORE(out, p0, (expr)));                                 \
        break;
__kernel void unary(__global ST *out, __global const ST *a, nbk_geom g, int op)
{
    NBK_CHUNKED(2);
    switch (op) {
#if IS_FLOAT
    NBK_U_(NBK_NEG, -x)
    NBK_U_(NBK_ABS, fabs(x)) /* abs(-0.0) is +0.0 */
#else
    NBK_U_(NBK_NEG, (T)(0 - (UT)x))
    NBK_U_(NBK_ABS, x < 0 ? (T)(0 - (UT)x) : x)
#endif
    /* relu keeps NaN and -0.0 as they are, like torch.relu */
    NBK_U_(NBK_RELU, x < 0 ? (T)0 : x)
    /* sign(NaN) is 0, like torch.sign */
    NBK_U_(NBK_SIGN, (T)((x > 0) - (x < 0)))
#if IS_FLOAT
    NBK_U_(NBK_EXP, exp(x))
    NBK_U_(NBK_LOG, log(x))
    NBK_U_(NBK_SQRT, sqrt(x))
    NBK_U_(NBK_RSQRT, (T)1 / sqrt(x))
    NBK_U_(NBK_SIN, sin(x))
    NBK_U_(NBK_COS, cos(x))
    NBK_U_(NBK_TANH, tanh(x))
    NBK_U_(NBK_SIGMOID, (T)1 / ((T)1 + exp(-x)))
    NBK_U_(NBK_FLOOR, floor(x))
    NBK_U_(NBK_CEIL, ceil(x))
    NBK_U_(NBK_ROUND, rint(x)) /* half to even, like torch.round */
#endif
    default: NBK_LOOP(3, STORE(out, p0, LD(a, p1))); break;
    }
}

/* s, s2: the scalar(s) in T. clamp: flags bit 0/1 = has min/has max; floats take s/s2 (a NaN
 * bound wins, a NaN x stays), integers compare in long with the bounds rounded inward by the
 * host (lo = ceil(min), hi = floor(max)) and take them wrapped into T, as the CPU does. */
__kernel void unary_scalar(__global ST *out, __global const ST *a, nbk_geom g, int op, T s,
                           T s2, int flags, long lo, long hi)
{
    NBK_CHUNKED(2);
    switch (op) {
#if IS_FLOAT
    NBK_U_(NBK_ADD_S, x + s)
    NBK_U_(NBK_MUL_S, x * s)
    NBK_U_(NBK_RSUB_S, s - x)
    case NBK_CLAMP:
        NBK_LOOP(3, T x = LD(a, p1);
                 T y = (flags & 1) && (x < s || IS_NAN(s)) ? s : x;
                 STORE(out, p0, (flags & 2) && (y > s2 || IS_NAN(s2)) ? s2 : y));
        break;
    NBK_U_(NBK_DIV_S, x / s)
    NBK_U_(NBK_RDIV_S, s / x)
    NBK_U_(NBK_POW_S, pow(x, s))
    NBK_U_(NBK_RPOW_S, pow(s, x))
#else
    NBK_U_(NBK_ADD_S, (T)((UT)x + (UT)s))
    NBK_U_(NBK_MUL_S, (T)((UT)x * (UT)s))
    NBK_U_(NBK_RSUB_S, (T)((UT)s - (UT)x))
    case NBK_CLAMP:
        NBK_LOOP(3, long v = (long)LD(a, p1);
                 v = (flags & 1) && v < lo ? lo : v;
                 v = (flags & 2) && v > hi ? hi : v;
                 STORE(out, p0, TO_T_FROM_LONG(v)));
        break;
    NBK_U_(NBK_POW_S, TO_T_FROM_LONG(nbk_ipow((long)x, (long)s)))
    NBK_U_(NBK_RPOW_S, TO_T_FROM_LONG(nbk_ipow((long)s, (long)x)))
#endif
    default: NBK_LOOP(3, STORE(out, p0, LD(a, p1))); break;
    }
}

/* Where b is a broadcast along the chunk (a bias added over a row), its value is loaded once. */
#define NBK_B_(code, expr)                                                                   \
    case code:                                                                                \
        if (bcast) {                                                                          \
            T z = LD(b, o[2]);                                                                \
            NBK_LOOP(3, T x = LD(a, p1); STORE(out, p0, (expr)));                             \
        } else {                                                                              \
            NBK_LOOP(7, T x = LD(a, p1); T z = LD(b, p2); STORE(out, p0, (expr)));            \
        }                                                                                     \
        break;
__kernel void binary(__global ST *out, __global const ST *a, __global const ST *b, nbk_geom g,
                     int op)
{
    NBK_CHUNKED(3);
    int bcast = sj[2] == 0;
    switch (op) {
#if IS_FLOAT
    NBK_B_(NBK_ADD, x + z)
    NBK_B_(NBK_SUB, x - z)
    NBK_B_(NBK_MUL, x * z)
#else
    NBK_B_(NBK_ADD, (T)((UT)x + (UT)z))
    NBK_B_(NBK_SUB, (T)((UT)x - (UT)z))
    NBK_B_(NBK_MUL, (T)((UT)x * (UT)z))
#endif
    /* maximum/minimum propagate NaN (x + z is NaN when either is); of -0.0 and 0.0 they keep
     * x, as the CPU's x < z ? z : x does */
    NBK_B_(NBK_MAXIMUM, (IS_NAN(x) || IS_NAN(z)) ? x + z : (x < z ? z : x))
    NBK_B_(NBK_MINIMUM, (IS_NAN(x) || IS_NAN(z)) ? x + z : (x > z ? z : x))
#if IS_FLOAT
    NBK_B_(NBK_DIV, x / z)
    NBK_B_(NBK_POW, pow(x, z))
#else
    NBK_B_(NBK_POW, TO_T_FROM_LONG(nbk_ipow((long)x, (long)z)))
#endif
    default: NBK_LOOP(3, STORE(out, p0, LD(a, p1))); break;
    }
}
#endif /* !IS_BOOL */

#define NBK_CMP(op, x, z)                                                                    \
    ((op) == NBK_EQ   ? (x) == (z)                                                            \
     : (op) == NBK_NE ? (x) != (z)                                                            \
     : (op) == NBK_LT ? (x) < (z)                                                             \
     : (op) == NBK_LE ? (x) <= (z)                                                            \
     : (op) == NBK_GT ? (x) > (z)                                                             \
                      : (x) >= (z))

__kernel void compare(__global uchar *out, __global const ST *a, __global const ST *b,
                      nbk_geom g, int op)
{
    NBK_ELEMENT(3);
#if IS_BOOL
    int x = a[o[1]] != 0, z = b[o[2]] != 0;
#else
    T x = LD(a, o[1]), z = LD(b, o[2]);
#endif
    out[o[0]] = NBK_CMP(op, x, z) ? 1 : 0;
}

/* A float tensor compares with the scalar rounded to its type (as PyTorch does). An integer
 * tensor compares exactly, without floats: the host turns x op s into x op' t with t an
 * integer (x < 2.5 is x < 3, x <= 2.5 is x <= 2, ...), or into a constant (konst >= 0) when
 * s is NaN, fractional for ==, or outside the range of long. */
#if IS_FLOAT
__kernel void compare_scalar(__global uchar *out, __global const ST *a, nbk_geom g, int op,
                             T s, long t, int konst)
{
    NBK_ELEMENT(2);
    T x = LD(a, o[1]);
    out[o[0]] = NBK_CMP(op, x, s) ? 1 : 0;
}
#else
__kernel void compare_scalar(__global uchar *out, __global const T *a, nbk_geom g, int op, T s,
                             long t, int konst)
{
    NBK_ELEMENT(2);
#if IS_BOOL
    long x = a[o[1]] != 0;
#else
    long x = (long)a[o[1]];
#endif
    out[o[0]] = konst >= 0 ? (uchar)konst : NBK_CMP(op, x, t) ? 1 : 0;
}
#endif

/* b is ignored for NBK_NOT (the host passes a again). Not in the 16-bit programs. */
/* a 16-bit value is true when its float is != 0: -0.0 is false, NaN true */
__kernel void logical(__global uchar *out, __global const ST *a, __global const ST *b,
                      nbk_geom g, int op)
{
    NBK_ELEMENT(3);
    int x = LD(a, o[1]) != 0, z = op == NBK_NOT ? 0 : LD(b, o[2]) != 0, y;
    switch (op) {
    case NBK_AND: y = x && z; break;
    case NBK_OR: y = x || z; break;
    case NBK_XOR: y = x != z; break;
    default: y = !x; break;
    }
    out[o[0]] = (uchar)y;
}

/* moves the stored bits: no rounding, NaN payloads kept */
__kernel void where(__global ST *out, __global const uchar *cond, __global const ST *a,
                    __global const ST *b, nbk_geom g)
{
    NBK_ELEMENT(4);
    out[o[0]] = cond[o[1]] ? a[o[2]] : b[o[3]];
}
