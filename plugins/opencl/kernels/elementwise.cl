/* elementwise.cl - fill, copy with cast, arange, unary/binary arithmetic, comparisons, logical
 * ops and where, all over strided operands (stride 0 = broadcast). Every kernel here reads and
 * writes its tensors through LD/STORE, so the 16-bit programs use them all. */

/* v: the value as stored (a 16-bit program gets the bits, rounded once by the host) */
__kernel void fill(__global ST *out, nbk_geom g, ST v)
{
    NBK_ELEMENT(1);
    out[o[0]] = v;
}

/* copy_from_<src>: out (T) = (T) in (src type), by the SDK's conversion rule. A 16-bit output
 * rounds once: wide sources reach float by round to odd first (nb_f64_to_bf16's rule). */
#define NBK_COPY(name, S, CONV)                                                              \
    __kernel void name(__global ST *out, __global const S *in, nbk_geom g)                    \
    {                                                                                         \
        NBK_ELEMENT(2);                                                                       \
        STORE(out, o[0], CONV(in[o[1]]));                                                     \
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
    NBK_ELEMENT(2);
    out[o[0]] = in[o[1]];
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
__kernel void unary(__global ST *out, __global const ST *a, nbk_geom g, int op)
{
    NBK_ELEMENT(2);
    T x = LD(a, o[1]), y;
    switch (op) {
#if IS_FLOAT
    case NBK_NEG: y = -x; break;
    case NBK_ABS: y = fabs(x); break; /* abs(-0.0) is +0.0 */
#else
    case NBK_NEG: y = (T)(0 - (UT)x); break;
    case NBK_ABS: y = x < 0 ? (T)(0 - (UT)x) : x; break;
#endif
    /* relu keeps NaN and -0.0 as they are, like torch.relu */
    case NBK_RELU: y = x < 0 ? (T)0 : x; break;
    /* sign(NaN) is 0, like torch.sign */
    case NBK_SIGN: y = (T)((x > 0) - (x < 0)); break;
#if IS_FLOAT
    case NBK_EXP: y = exp(x); break;
    case NBK_LOG: y = log(x); break;
    case NBK_SQRT: y = sqrt(x); break;
    case NBK_RSQRT: y = (T)1 / sqrt(x); break;
    case NBK_SIN: y = sin(x); break;
    case NBK_COS: y = cos(x); break;
    case NBK_TANH: y = tanh(x); break;
    case NBK_SIGMOID: y = (T)1 / ((T)1 + exp(-x)); break;
    case NBK_FLOOR: y = floor(x); break;
    case NBK_CEIL: y = ceil(x); break;
    case NBK_ROUND: y = rint(x); break; /* half to even, like torch.round */
#endif
    default: y = x; break;
    }
    STORE(out, o[0], y);
}

/* s, s2: the scalar(s) in T. clamp: flags bit 0/1 = has min/has max; floats take s/s2 (a NaN
 * bound wins, a NaN x stays), integers compare in long with the bounds rounded inward by the
 * host (lo = ceil(min), hi = floor(max)) and take them wrapped into T, as the CPU does. */
__kernel void unary_scalar(__global ST *out, __global const ST *a, nbk_geom g, int op, T s,
                           T s2, int flags, long lo, long hi)
{
    NBK_ELEMENT(2);
    T x = LD(a, o[1]), y;
    switch (op) {
#if IS_FLOAT
    case NBK_ADD_S: y = x + s; break;
    case NBK_MUL_S: y = x * s; break;
    case NBK_RSUB_S: y = s - x; break;
    case NBK_CLAMP:
        y = x;
        if ((flags & 1) && (y < s || IS_NAN(s)))
            y = s;
        if ((flags & 2) && (y > s2 || IS_NAN(s2)))
            y = s2;
        break;
    case NBK_DIV_S: y = x / s; break;
    case NBK_RDIV_S: y = s / x; break;
    case NBK_POW_S: y = pow(x, s); break;
    case NBK_RPOW_S: y = pow(s, x); break;
#else
    case NBK_ADD_S: y = (T)((UT)x + (UT)s); break;
    case NBK_MUL_S: y = (T)((UT)x * (UT)s); break;
    case NBK_RSUB_S: y = (T)((UT)s - (UT)x); break;
    case NBK_CLAMP: {
        long v = (long)x;
        if ((flags & 1) && v < lo)
            v = lo;
        if ((flags & 2) && v > hi)
            v = hi;
        y = TO_T_FROM_LONG(v);
        break;
    }
#endif
    default: y = x; break;
    }
    STORE(out, o[0], y);
}

__kernel void binary(__global ST *out, __global const ST *a, __global const ST *b, nbk_geom g,
                     int op)
{
    NBK_ELEMENT(3);
    T x = LD(a, o[1]), z = LD(b, o[2]), y;
    switch (op) {
#if IS_FLOAT
    case NBK_ADD: y = x + z; break;
    case NBK_SUB: y = x - z; break;
    case NBK_MUL: y = x * z; break;
#else
    case NBK_ADD: y = (T)((UT)x + (UT)z); break;
    case NBK_SUB: y = (T)((UT)x - (UT)z); break;
    case NBK_MUL: y = (T)((UT)x * (UT)z); break;
#endif
    /* maximum/minimum propagate NaN (x + z is NaN when either is); of -0.0 and 0.0 they keep
     * x, as the CPU's x < z ? z : x does */
    case NBK_MAXIMUM: y = (IS_NAN(x) || IS_NAN(z)) ? x + z : (x < z ? z : x); break;
    case NBK_MINIMUM: y = (IS_NAN(x) || IS_NAN(z)) ? x + z : (x > z ? z : x); break;
#if IS_FLOAT
    case NBK_DIV: y = x / z; break;
    case NBK_POW: y = pow(x, z); break;
#endif
    default: y = x; break;
    }
    STORE(out, o[0], y);
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
