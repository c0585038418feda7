/* elementwise.cl - fill, copy with cast, arange, unary/binary arithmetic, comparisons, logical
 * ops and where, all over strided operands (stride 0 = broadcast). */

__kernel void fill(__global T *out, nbk_geom g, T v)
{
    NBK_ELEMENT(1);
    out[o[0]] = v;
}

/* copy_from_<src>: out (T) = (T) in (src type). bool and u8 sources are both uchar. */
#define NBK_COPY(name, S, CONV)                                                              \
    __kernel void name(__global T *out, __global const S *in, nbk_geom g)                     \
    {                                                                                         \
        NBK_ELEMENT(2);                                                                       \
        out[o[0]] = CONV(in[o[1]]);                                                           \
    }
NBK_COPY(copy_from_f32, float, TO_T_FROM_FLOAT)
#if HAS_FP64
NBK_COPY(copy_from_f64, double, TO_T_FROM_FLOAT)
#endif
NBK_COPY(copy_from_i32, int, TO_T)
NBK_COPY(copy_from_i64, long, TO_T)
NBK_COPY(copy_from_u8, uchar, TO_T)

__kernel void arange(__global T *out, nbk_geom g, real_t start, real_t step)
{
    NBK_ELEMENT(1);
    out[o[0]] = TO_T_FROM_FLOAT(start + (real_t)i * step);
}

#if !IS_BOOL
__kernel void unary(__global T *out, __global const T *a, nbk_geom g, int op)
{
    NBK_ELEMENT(2);
    T x = a[o[1]], y;
    switch (op) {
    case NBK_NEG: y = -x; break;
    case NBK_ABS: y = x < 0 ? -x : x; break;
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
    out[o[0]] = y;
}

/* s, s2: the scalar(s); for clamp s = min, s2 = max and flags bit 0/1 = has min/has max. */
__kernel void unary_scalar(__global T *out, __global const T *a, nbk_geom g, int op, T s, T s2,
                           int flags)
{
    NBK_ELEMENT(2);
    T x = a[o[1]], y;
    switch (op) {
    case NBK_ADD_S: y = x + s; break;
    case NBK_MUL_S: y = x * s; break;
    case NBK_RSUB_S: y = s - x; break;
    case NBK_CLAMP:
        y = x;
        if (!IS_NAN(x)) {
            if ((flags & 1) && y < s)
                y = s;
            if ((flags & 2) && y > s2)
                y = s2;
        }
        break;
#if IS_FLOAT
    case NBK_DIV_S: y = x / s; break;
    case NBK_RDIV_S: y = s / x; break;
    case NBK_POW_S: y = pow(x, s); break;
    case NBK_RPOW_S: y = pow(s, x); break;
#endif
    default: y = x; break;
    }
    out[o[0]] = y;
}

__kernel void binary(__global T *out, __global const T *a, __global const T *b, nbk_geom g,
                     int op)
{
    NBK_ELEMENT(3);
    T x = a[o[1]], z = b[o[2]], y;
    switch (op) {
    case NBK_ADD: y = x + z; break;
    case NBK_SUB: y = x - z; break;
    case NBK_MUL: y = x * z; break;
    /* maximum/minimum propagate NaN (x + z is NaN when either is) */
    case NBK_MAXIMUM: y = (IS_NAN(x) || IS_NAN(z)) ? x + z : (x > z ? x : z); break;
    case NBK_MINIMUM: y = (IS_NAN(x) || IS_NAN(z)) ? x + z : (x < z ? x : z); break;
#if IS_FLOAT
    case NBK_DIV: y = x / z; break;
    case NBK_POW: y = pow(x, z); break;
#endif
    default: y = x; break;
    }
    out[o[0]] = y;
}
#endif /* !IS_BOOL */

#define NBK_CMP(op, x, z)                                                                    \
    ((op) == NBK_EQ   ? (x) == (z)                                                            \
     : (op) == NBK_NE ? (x) != (z)                                                            \
     : (op) == NBK_LT ? (x) < (z)                                                             \
     : (op) == NBK_LE ? (x) <= (z)                                                            \
     : (op) == NBK_GT ? (x) > (z)                                                             \
                      : (x) >= (z))

__kernel void compare(__global uchar *out, __global const T *a, __global const T *b, nbk_geom g,
                      int op)
{
    NBK_ELEMENT(3);
    T x = a[o[1]], z = b[o[2]];
    out[o[0]] = NBK_CMP(op, x, z) ? 1 : 0;
}

/* A float tensor compares with the scalar rounded to its type (as PyTorch does); an integer
 * tensor compares in real_t, so that 2 < 2.5 holds. */
__kernel void compare_scalar(__global uchar *out, __global const T *a, nbk_geom g, int op,
                             real_t s)
{
    NBK_ELEMENT(2);
#if IS_FLOAT
    T x = a[o[1]], z = (T)s;
#else
    real_t x = (real_t)a[o[1]], z = s;
#endif
    out[o[0]] = NBK_CMP(op, x, z) ? 1 : 0;
}

/* b is ignored for NBK_NOT (the host passes a again). */
__kernel void logical(__global uchar *out, __global const T *a, __global const T *b, nbk_geom g,
                      int op)
{
    NBK_ELEMENT(3);
    int x = a[o[1]] != 0, z = op == NBK_NOT ? 0 : b[o[2]] != 0, y;
    switch (op) {
    case NBK_AND: y = x && z; break;
    case NBK_OR: y = x || z; break;
    case NBK_XOR: y = x != z; break;
    default: y = !x; break;
    }
    out[o[0]] = (uchar)y;
}

__kernel void where(__global T *out, __global const uchar *cond, __global const T *a,
                    __global const T *b, nbk_geom g)
{
    NBK_ELEMENT(4);
    out[o[0]] = cond[o[1]] ? a[o[2]] : b[o[3]];
}
