// cuda_elementwise.cu - elementwise kernels: unary math, scalar ops, clamp, binary arithmetic,
// comparisons, logical ops, where, and copy with any dtype cast; plus the argument checks the
// other .cu files share. float16/bfloat16 compute in float (opmath_t) and round once per store.
#include <stdarg.h>
#include <stdio.h>

#include "cuda_common.cuh"

namespace nbcu {

// ---- shared checks ----

nb_status fail(nb_status st, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return nbcu_host->error(st, "%s", msg);
}

static nb_status check_operand(const char *op, const char *which, const nb_operand *o)
{
    if (!o)
        return fail(NB_NULL_ARGUMENT, "%s: %s operand is NULL", op, which);
    if (o->ndim < 0 || o->ndim > NB_MAX_DIMS)
        return fail(NB_INVALID_ARGUMENT, "%s: %s has %d dims, expected 0..%d", op, which,
                    (int)o->ndim, NB_MAX_DIMS);
    if (o->ndim > 0 && (!o->shape || !o->strides))
        return fail(NB_NULL_ARGUMENT, "%s: %s has %d dims but NULL shape or strides", op, which,
                    (int)o->ndim);
    if ((unsigned)o->dtype >= NB_DTYPE_COUNT)
        return fail(NB_DTYPE_UNSUPPORTED, "%s: %s has unknown dtype %d", op, which,
                    (int)o->dtype);
    for (int32_t d = 0; d < o->ndim; d++)
        if (o->shape[d] < 0)
            return fail(NB_INVALID_ARGUMENT, "%s: %s has negative size %lld in dim %d", op,
                        which, (long long)o->shape[d], (int)d);
    if (!o->handle && numel(o) > 0)
        return fail(NB_NULL_ARGUMENT, "%s: %s has a NULL buffer handle", op, which);
    return NB_OK;
}

nb_status check_args(const char *op, const nb_kernel_args *a, int n_in)
{
    if (!a)
        return fail(NB_NULL_ARGUMENT, "%s: kernel arguments are NULL", op);
    if (a->n_in != n_in)
        return fail(NB_INVALID_ARGUMENT, "%s: %d inputs given, expected %d", op, (int)a->n_in,
                    n_in);
    if (n_in > 0 && !a->in)
        return fail(NB_NULL_ARGUMENT, "%s: inputs are NULL", op);
    nb_status st = check_operand(op, "output", a->out);
    for (int k = 0; k < n_in && st == NB_OK; k++) {
        char which[32];
        snprintf(which, sizeof which, "input %d", k);
        st = check_operand(op, which, &a->in[k]);
    }
    return st;
}

nb_status check_dtype(const char *op, const char *which, const nb_operand *o, nb_dtype want)
{
    if (o->dtype == want)
        return NB_OK;
    return fail(NB_DTYPE_UNSUPPORTED, "%s: %s is %s, expected %s", op, which,
                dtype_name(o->dtype), dtype_name(want));
}

nb_status check_same_shape(const char *op, const char *which, const nb_operand *out,
                           const nb_operand *in)
{
    bool ok = in->ndim == out->ndim;
    for (int32_t d = 0; ok && d < out->ndim; d++)
        ok = in->shape[d] == out->shape[d] || in->shape[d] == 1;
    if (ok)
        return NB_OK;
    char a[160] = "", b[160] = "";
    for (int32_t d = 0; d < out->ndim; d++)
        snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? "," : "",
                 (long long)out->shape[d]);
    for (int32_t d = 0; d < in->ndim; d++)
        snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? "," : "",
                 (long long)in->shape[d]);
    return fail(NB_SHAPE_MISMATCH, "%s: %s has shape [%s], expected the output's shape [%s] "
                "(or 1 on broadcast dims)", op, which, b, a);
}

// ---- math per type (float and double overloads, integer versions where they make sense) ----

#define NBCU_MATH1(name, f32)                                                                 \
    __device__ inline float m_##name(float x) { return f32(x); }                              \
    __device__ inline double m_##name(double x) { return name(x); }
NBCU_MATH1(exp, expf)
NBCU_MATH1(log, logf)
NBCU_MATH1(sqrt, sqrtf)
NBCU_MATH1(sin, sinf)
NBCU_MATH1(cos, cosf)
NBCU_MATH1(tanh, tanhf)
NBCU_MATH1(floor, floorf)
NBCU_MATH1(ceil, ceilf)
NBCU_MATH1(rint, rintf) // round half to even, as torch.round
#undef NBCU_MATH1
__device__ inline float m_pow(float x, float y) { return powf(x, y); }
__device__ inline double m_pow(double x, double y) { return pow(x, y); }

// Integer versions: floor, ceil and round are the identity; pow is exact and wraps like the
// CPU plugin's (a negative exponent gives 0 except for bases 1 and -1).
template <class T> __device__ inline T m_floor(T x) { return x; }
template <class T> __device__ inline T m_ceil(T x) { return x; }
template <class T> __device__ inline T m_rint(T x) { return x; }
template <class T> __device__ inline T m_pow(T x, T y)
{
    int64_t b = (int64_t)x, e = (int64_t)y;
    if (e < 0)
        return T(b == 1 ? 1 : b == -1 ? ((e & 1) ? -1 : 1) : 0);
    uint64_t r = 1, ub = (uint64_t)b;
    while (e) {
        if (e & 1)
            r *= ub;
        ub *= ub;
        e >>= 1;
    }
    return T(r);
}

// Integer negation wraps (-INT_MIN stays defined).
template <class T> __device__ inline T m_neg(T x) { return T(0ull - (unsigned long long)x); }
__device__ inline float m_neg(float x) { return -x; }
__device__ inline double m_neg(double x) { return -x; }

template <class T> __device__ inline T m_abs(T x) { return x < T(0) ? m_neg(x) : x; }
__device__ inline float m_abs(float x) { return fabsf(x); } // -0.0 -> 0.0, NaN stays NaN
__device__ inline double m_abs(double x) { return fabs(x); }
__device__ inline uint8_t m_abs(uint8_t x) { return x; }
template <class T> __device__ inline T m_sign(T x) { return T((T(0) < x) - (x < T(0))); }
__device__ inline uint8_t m_sign(uint8_t x) { return x != 0; }
template <class T> __device__ inline T m_relu(T x) { return x < T(0) ? T(0) : x; } // NaN stays
__device__ inline uint8_t m_relu(uint8_t x) { return x; }

// Parameters of the scalar ops, converted to the kernel's type once on the host.
template <class T> struct Par {
    T s, t;        // f[0], f[1] as T
    double fs, ft; // f[0], f[1] as given
    bool lo, hi;   // clamp: i[0] has min, i[1] has max
};

// clamp is min(max(x, lo), hi), as PyTorch: NaN in x stays, a NaN bound wins. Integers compare
// with the bounds as given and round them inward (x < 2.5 becomes 3), as the CPU plugin does.
template <class T> __device__ inline T m_clamp(T x, const Par<T> &p)
{
    if (p.lo && (double)x < p.fs)
        x = convert<T>(ceil(p.fs));
    if (p.hi && (double)x > p.ft)
        x = convert<T>(floor(p.ft));
    return x;
}
template <class T> __device__ inline T clamp_float(T x, const Par<T> &p)
{
    if (p.lo && (x < p.s || is_nan(p.s)))
        x = p.s;
    if (p.hi && (x > p.t || is_nan(p.t)))
        x = p.t;
    return x;
}
__device__ inline float m_clamp(float x, const Par<float> &p) { return clamp_float(x, p); }
__device__ inline double m_clamp(double x, const Par<double> &p) { return clamp_float(x, p); }

// ---- unary ops: T -> T ----

#define NBCU_UNARY(Name, str, expr)                                                           \
    struct Name {                                                                             \
        static constexpr const char *name = str;                                              \
        template <class T> __device__ T operator()(T x, const Par<T> &p) const { return expr; } \
    };
NBCU_UNARY(Neg, "neg", m_neg(x))
NBCU_UNARY(Abs, "abs", m_abs(x))
NBCU_UNARY(Exp, "exp", m_exp(x))
NBCU_UNARY(Log, "log", m_log(x))
NBCU_UNARY(Sqrt, "sqrt", m_sqrt(x))
NBCU_UNARY(Rsqrt, "rsqrt", T(1) / m_sqrt(x))
NBCU_UNARY(Sin, "sin", m_sin(x))
NBCU_UNARY(Cos, "cos", m_cos(x))
NBCU_UNARY(Tanh, "tanh", m_tanh(x))
NBCU_UNARY(Sigmoid, "sigmoid", T(1) / (T(1) + m_exp(-x)))
NBCU_UNARY(Relu, "relu", m_relu(x))
NBCU_UNARY(Sign, "sign", m_sign(x)) // NaN -> 0, as torch.sign
NBCU_UNARY(Floor, "floor", m_floor(x))
NBCU_UNARY(Ceil, "ceil", m_ceil(x))
NBCU_UNARY(Round, "round", m_rint(x))
NBCU_UNARY(AddScalar, "add_scalar", w_add(x, p.s))
NBCU_UNARY(MulScalar, "mul_scalar", w_mul(x, p.s))
NBCU_UNARY(RsubScalar, "rsub_scalar", w_sub(p.s, x))
NBCU_UNARY(DivScalar, "div_scalar", x / p.s)
NBCU_UNARY(RdivScalar, "rdiv_scalar", p.s / x)
NBCU_UNARY(PowScalar, "pow_scalar", m_pow(x, p.s))
NBCU_UNARY(RpowScalar, "rpow_scalar", m_pow(p.s, x))
NBCU_UNARY(Clamp, "clamp", m_clamp(x, p))
#undef NBCU_UNARY

// The op runs in opmath_t<T>, with its scalars in that type too (a bfloat16 tensor times 1.0039
// multiplies by the float 1.0039, as PyTorch's opmath does).
template <class T, class Op> struct UnaryF {
    T *out;
    const T *in;
    Par<opmath_t<T>> p;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = convert<T>(Op()(widen(in[off[1]]), p));
    }
};

template <class A> static Par<A> make_par(const nb_kernel_args *a)
{
    Par<A> p;
    p.s = convert<A>(a->f[0]);
    p.t = convert<A>(a->f[1]);
    p.fs = a->f[0];
    p.ft = a->f[1];
    p.lo = a->i[0] != 0;
    p.hi = a->i[1] != 0;
    return p;
}

template <class T, class Op> static nb_status k_unary(const nb_kernel_args *a)
{
    const char *op = Op::name;
    nb_status st = check_args(op, a, 1);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "input", &a->in[0], dtype_of<T>::value);
    if (st == NB_OK)
        st = check_same_shape(op, "input", a->out, &a->in[0]);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[2] = {a->out, &a->in[0]};
    UnaryF<T, Op> f{data<T>(a->out), data<const T>(&a->in[0]), make_par<opmath_t<T>>(a)};
    return launch_ew<2>(op, a->device, ops, f);
}

// ---- comparisons with a scalar and with a tensor: T -> bool ----

#define NBCU_CMP(Name, str, sym)                                                              \
    struct Name {                                                                             \
        static constexpr const char *name = str;                                              \
        static constexpr const char *scalar_name = str "_scalar";                             \
        template <class T> __device__ bool operator()(T x, T y) const { return x sym y; }    \
    };
NBCU_CMP(Eq, "eq", ==)
NBCU_CMP(Ne, "ne", !=)
NBCU_CMP(Lt, "lt", <)
NBCU_CMP(Le, "le", <=)
NBCU_CMP(Gt, "gt", >)
NBCU_CMP(Ge, "ge", >=)
#undef NBCU_CMP

// Floats compare with the scalar rounded to their dtype first, as PyTorch does (a bfloat16 1.0
// equals 1.001, which rounds to 1.0), in opmath_t.
template <class T, class Op> struct CmpScalarF {
    bool *out;
    const T *in;
    opmath_t<T> s;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = Op()(ldw(in, off[1]), s);
    }
};

// The scalar is compared in double so that x < 2.5 on an integer tensor means what it says.
template <class T, class Op> struct CmpScalarWideF {
    bool *out;
    const T *in;
    double s;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = Op()(convert<double>(ld(in, off[1])), s);
    }
};

template <class T, class Op> static nb_status k_cmp_scalar(const nb_kernel_args *a)
{
    const char *op = Op::scalar_name;
    nb_status st = check_args(op, a, 1);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, NB_DTYPE_BOOL);
    if (st == NB_OK)
        st = check_dtype(op, "input", &a->in[0], dtype_of<T>::value);
    if (st == NB_OK)
        st = check_same_shape(op, "input", a->out, &a->in[0]);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[2] = {a->out, &a->in[0]};
    if constexpr (dtype_of<T>::value == NB_DTYPE_F32 || is_half<T>::value)
        return launch_ew<2>(op, a->device, ops,
                            CmpScalarF<T, Op>{data<bool>(a->out), data<const T>(&a->in[0]),
                                              widen(convert<T>(a->f[0]))});
    else
        return launch_ew<2>(op, a->device, ops,
                            CmpScalarWideF<T, Op>{data<bool>(a->out), data<const T>(&a->in[0]),
                                                  a->f[0]});
}

// ---- binary ops ----

#define NBCU_BINARY(Name, str, expr)                                                          \
    struct Name {                                                                             \
        static constexpr const char *name = str;                                              \
        template <class T> __device__ T operator()(T x, T y) const { return expr; }          \
    };
NBCU_BINARY(Add, "add", w_add(x, y))
NBCU_BINARY(Sub, "sub", w_sub(x, y))
NBCU_BINARY(Mul, "mul", w_mul(x, y))
NBCU_BINARY(Div, "div", x / y)
NBCU_BINARY(Pow, "pow", m_pow(x, y))
NBCU_BINARY(Maximum, "maximum", is_nan(x) ? x : is_nan(y) ? y : x < y ? y : x) /* ties (-0.0, 0.0): x, as cpu */
NBCU_BINARY(Minimum, "minimum", is_nan(x) ? x : is_nan(y) ? y : x > y ? y : x) /* ties: x */
#undef NBCU_BINARY

template <class Tout, class T, class Op> struct BinaryF {
    Tout *out;
    const T *x, *y;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = convert<Tout>(Op()(ldw(x, off[1]), ldw(y, off[2])));
    }
};

// Binary op on two T inputs into a Tout output (T for arithmetic, bool for comparisons).
template <class T, class Op, class Tout> static nb_status k_binary(const nb_kernel_args *a)
{
    const char *op = Op::name;
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<Tout>::value);
    for (int k = 0; k < 2 && st == NB_OK; k++) {
        st = check_dtype(op, k ? "input 1" : "input 0", &a->in[k], dtype_of<T>::value);
        if (st == NB_OK)
            st = check_same_shape(op, k ? "input 1" : "input 0", a->out, &a->in[k]);
    }
    if (st != NB_OK)
        return st;
    const nb_operand *ops[3] = {a->out, &a->in[0], &a->in[1]};
    BinaryF<Tout, T, Op> f{data<Tout>(a->out), data<const T>(&a->in[0]),
                           data<const T>(&a->in[1])};
    return launch_ew<3>(op, a->device, ops, f);
}

// ---- logical ops: any input dtype -> bool ----

#define NBCU_LOGICAL(Name, str, expr)                                                         \
    struct Name {                                                                             \
        static constexpr const char *name = str;                                              \
        __device__ bool operator()(bool x, bool y) const { return expr; }                     \
    };
NBCU_LOGICAL(And, "logical_and", x && y)
NBCU_LOGICAL(Or, "logical_or", x || y)
NBCU_LOGICAL(Xor, "logical_xor", x != y)
#undef NBCU_LOGICAL

template <class Op> struct LogicalF {
    bool *out;
    const void *x, *y;
    nb_dtype tx, ty;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = Op()(load_any<bool>(x, tx, off[1]), load_any<bool>(y, ty, off[2]));
    }
};

struct NotF {
    bool *out;
    const void *x;
    nb_dtype tx;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = !load_any<bool>(x, tx, off[1]);
    }
};

static const void *raw(const nb_operand *o) { return (const char *)o->handle + o->offset; }

template <class Op> static nb_status k_logical(const nb_kernel_args *a)
{
    const char *op = Op::name;
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, NB_DTYPE_BOOL);
    for (int k = 0; k < 2 && st == NB_OK; k++)
        st = check_same_shape(op, k ? "input 1" : "input 0", a->out, &a->in[k]);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[3] = {a->out, &a->in[0], &a->in[1]};
    LogicalF<Op> f{data<bool>(a->out), raw(&a->in[0]), raw(&a->in[1]), a->in[0].dtype,
                   a->in[1].dtype};
    return launch_ew<3>(op, a->device, ops, f);
}

static nb_status k_logical_not(const nb_kernel_args *a)
{
    const char *op = "logical_not";
    nb_status st = check_args(op, a, 1);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, NB_DTYPE_BOOL);
    if (st == NB_OK)
        st = check_same_shape(op, "input", a->out, &a->in[0]);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[2] = {a->out, &a->in[0]};
    return launch_ew<2>(op, a->device, ops, NotF{data<bool>(a->out), raw(&a->in[0]),
                                                 a->in[0].dtype});
}

// ---- where (moves the stored values: 16-bit bits, NaN payloads included, unchanged) ----

template <class T> struct WhereF {
    T *out;
    const bool *c;
    const T *x, *y;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = ld(c, off[1]) ? ld(x, off[2]) : ld(y, off[3]);
    }
};

template <class T> static nb_status k_where(const nb_kernel_args *a)
{
    const char *op = "where";
    nb_status st = check_args(op, a, 3);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "condition (input 0)", &a->in[0], NB_DTYPE_BOOL);
    for (int k = 1; k < 3 && st == NB_OK; k++)
        st = check_dtype(op, k == 1 ? "input 1" : "input 2", &a->in[k], dtype_of<T>::value);
    for (int k = 0; k < 3 && st == NB_OK; k++)
        st = check_same_shape(op, "an input", a->out, &a->in[k]);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[4] = {a->out, &a->in[0], &a->in[1], &a->in[2]};
    WhereF<T> f{data<T>(a->out), data<const bool>(&a->in[0]), data<const T>(&a->in[1]),
                data<const T>(&a->in[2])};
    return launch_ew<4>(op, a->device, ops, f);
}

// ---- copy with cast (convert: one rounding into a 16-bit type, bits kept 16 -> same 16) ----

template <class To, class From> struct CopyF {
    To *out;
    const From *in;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = convert<To>(ld(in, off[1]));
    }
};

template <class To, class From>
static nb_status copy_typed(const char *op, int device, const nb_operand *dst,
                            const nb_operand *src)
{
    const nb_operand *ops[2] = {dst, src};
    return launch_ew<2>(op, device, ops, CopyF<To, From>{data<To>(dst), data<const From>(src)});
}

template <class To>
static nb_status copy_to(const char *op, int device, const nb_operand *dst, const nb_operand *src)
{
    switch (src->dtype) {
    case NB_DTYPE_F32: return copy_typed<To, float>(op, device, dst, src);
    case NB_DTYPE_F64: return copy_typed<To, double>(op, device, dst, src);
    case NB_DTYPE_I32: return copy_typed<To, int32_t>(op, device, dst, src);
    case NB_DTYPE_I64: return copy_typed<To, int64_t>(op, device, dst, src);
    case NB_DTYPE_BOOL: return copy_typed<To, bool>(op, device, dst, src);
    case NB_DTYPE_U8: return copy_typed<To, uint8_t>(op, device, dst, src);
    case NB_DTYPE_F16: return copy_typed<To, __half>(op, device, dst, src);
    case NB_DTYPE_BF16: return copy_typed<To, __nv_bfloat16>(op, device, dst, src);
    default: break;
    }
    return fail(NB_DTYPE_UNSUPPORTED, "%s: unknown source dtype %d", op, (int)src->dtype);
}

nb_status copy_strided(const char *op, int device, const nb_operand *dst, const nb_operand *src)
{
    switch (dst->dtype) {
    case NB_DTYPE_F32: return copy_to<float>(op, device, dst, src);
    case NB_DTYPE_F64: return copy_to<double>(op, device, dst, src);
    case NB_DTYPE_I32: return copy_to<int32_t>(op, device, dst, src);
    case NB_DTYPE_I64: return copy_to<int64_t>(op, device, dst, src);
    case NB_DTYPE_BOOL: return copy_to<bool>(op, device, dst, src);
    case NB_DTYPE_U8: return copy_to<uint8_t>(op, device, dst, src);
    case NB_DTYPE_F16: return copy_to<__half>(op, device, dst, src);
    case NB_DTYPE_BF16: return copy_to<__nv_bfloat16>(op, device, dst, src);
    default: break;
    }
    return fail(NB_DTYPE_UNSUPPORTED, "%s: unknown destination dtype %d", op, (int)dst->dtype);
}

template <class T> static nb_status k_copy(const nb_kernel_args *a)
{
    const char *op = "copy";
    nb_status st = check_args(op, a, 1);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st == NB_OK)
        st = check_same_shape(op, "input", a->out, &a->in[0]);
    if (st != NB_OK)
        return st;
    return copy_to<T>(op, a->device, a->out, &a->in[0]);
}

} // namespace nbcu

using namespace nbcu;

extern "C" cudaError_t nbcu_probe_kernels(void)
{
    // Fails with cudaErrorNoKernelImageForDevice (or InvalidDeviceFunction) where the fatbin
    // has neither a cubin nor PTX the current device can run.
    cudaFuncAttributes attr;
    return cudaFuncGetAttributes(&attr, (const void *)ew_kernel<2, CopyF<float, float>>);
}

// ---- the table ----

// HALF_ / FLOAT_ / NUM_ include float16 and bfloat16: the opencl plugin's OCL_FLT16/NUM16 ops.
#define UNARY(name, Op, T) {name, dtype_of<T>::value, k_unary<T, Op>},
#define HALF_UNARY(name, Op) UNARY(name, Op, __half) UNARY(name, Op, __nv_bfloat16)
#define FLOAT_UNARY(name, Op) UNARY(name, Op, float) UNARY(name, Op, double) HALF_UNARY(name, Op)
#define INT_UNARY(name, Op) UNARY(name, Op, int32_t) UNARY(name, Op, int64_t) UNARY(name, Op, uint8_t)
#define NUM_UNARY(name, Op) FLOAT_UNARY(name, Op) INT_UNARY(name, Op)

#define BIN(name, Op, T, Tout) {name, dtype_of<T>::value, k_binary<T, Op, Tout>},
#define HALF_BINARY(name, Op)                                                                 \
    BIN(name, Op, __half, __half) BIN(name, Op, __nv_bfloat16, __nv_bfloat16)
#define NUM_BINARY(name, Op)                                                                  \
    BIN(name, Op, float, float) BIN(name, Op, double, double)                                 \
    BIN(name, Op, int32_t, int32_t) BIN(name, Op, int64_t, int64_t) BIN(name, Op, uint8_t, uint8_t) \
    HALF_BINARY(name, Op)
#define COMPARE(name, Op)                                                                     \
    BIN(name, Op, float, bool) BIN(name, Op, double, bool) BIN(name, Op, int32_t, bool)       \
    BIN(name, Op, int64_t, bool) BIN(name, Op, bool, bool) BIN(name, Op, uint8_t, bool)       \
    BIN(name, Op, __half, bool) BIN(name, Op, __nv_bfloat16, bool)

#define CMPS(name, Op, T) {name, dtype_of<T>::value, k_cmp_scalar<T, Op>},
#define COMPARE_SCALAR(name, Op)                                                              \
    CMPS(name, Op, float) CMPS(name, Op, double) CMPS(name, Op, int32_t)                      \
    CMPS(name, Op, int64_t) CMPS(name, Op, bool) CMPS(name, Op, uint8_t)                      \
    CMPS(name, Op, __half) CMPS(name, Op, __nv_bfloat16)

#define ALL_DTYPES(name, fn)                                                                  \
    {name, NB_DTYPE_F32, fn}, {name, NB_DTYPE_F64, fn}, {name, NB_DTYPE_I32, fn},             \
    {name, NB_DTYPE_I64, fn}, {name, NB_DTYPE_BOOL, fn}, {name, NB_DTYPE_U8, fn},             \
    {name, NB_DTYPE_F16, fn}, {name, NB_DTYPE_BF16, fn},
#define ALL_TYPED(name, tmpl)                                                                 \
    {name, NB_DTYPE_F32, tmpl<float>}, {name, NB_DTYPE_F64, tmpl<double>},                    \
    {name, NB_DTYPE_I32, tmpl<int32_t>}, {name, NB_DTYPE_I64, tmpl<int64_t>},                 \
    {name, NB_DTYPE_BOOL, tmpl<bool>}, {name, NB_DTYPE_U8, tmpl<uint8_t>},                    \
    {name, NB_DTYPE_F16, tmpl<__half>}, {name, NB_DTYPE_BF16, tmpl<__nv_bfloat16>},

extern "C" const nb_kernel_desc nbcu_elementwise_kernels[] = {
    NUM_UNARY("neg", Neg)
    NUM_UNARY("abs", Abs)
    FLOAT_UNARY("exp", Exp)
    FLOAT_UNARY("log", Log)
    FLOAT_UNARY("sqrt", Sqrt)
    FLOAT_UNARY("rsqrt", Rsqrt)
    FLOAT_UNARY("sin", Sin)
    FLOAT_UNARY("cos", Cos)
    FLOAT_UNARY("tanh", Tanh)
    FLOAT_UNARY("sigmoid", Sigmoid)
    NUM_UNARY("relu", Relu)
    NUM_UNARY("sign", Sign)
    NUM_UNARY("floor", Floor)
    NUM_UNARY("ceil", Ceil)
    NUM_UNARY("round", Round)
    NUM_UNARY("add_scalar", AddScalar)
    NUM_UNARY("mul_scalar", MulScalar)
    NUM_UNARY("rsub_scalar", RsubScalar)
    FLOAT_UNARY("div_scalar", DivScalar)
    FLOAT_UNARY("rdiv_scalar", RdivScalar)
    NUM_UNARY("pow_scalar", PowScalar)
    NUM_UNARY("rpow_scalar", RpowScalar)
    NUM_UNARY("clamp", Clamp)
    COMPARE_SCALAR("eq_scalar", Eq)
    COMPARE_SCALAR("ne_scalar", Ne)
    COMPARE_SCALAR("lt_scalar", Lt)
    COMPARE_SCALAR("le_scalar", Le)
    COMPARE_SCALAR("gt_scalar", Gt)
    COMPARE_SCALAR("ge_scalar", Ge)
    NUM_BINARY("add", Add)
    NUM_BINARY("sub", Sub)
    NUM_BINARY("mul", Mul)
    BIN("div", Div, float, float) BIN("div", Div, double, double) HALF_BINARY("div", Div)
    NUM_BINARY("pow", Pow)
    NUM_BINARY("maximum", Maximum) BIN("maximum", Maximum, bool, bool)
    NUM_BINARY("minimum", Minimum) BIN("minimum", Minimum, bool, bool)
    COMPARE("eq", Eq)
    COMPARE("ne", Ne)
    COMPARE("lt", Lt)
    COMPARE("le", Le)
    COMPARE("gt", Gt)
    COMPARE("ge", Ge)
    ALL_DTYPES("logical_and", k_logical<And>)
    ALL_DTYPES("logical_or", k_logical<Or>)
    ALL_DTYPES("logical_xor", k_logical<Xor>)
    ALL_DTYPES("logical_not", k_logical_not)
    ALL_TYPED("where", k_where)
    ALL_TYPED("copy", k_copy)
};
extern "C" const size_t nbcu_elementwise_count =
    sizeof nbcu_elementwise_kernels / sizeof nbcu_elementwise_kernels[0];
