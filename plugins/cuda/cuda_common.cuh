// cuda_common.cuh - what the cuda plugin's .cu files share: dtype <-> C++ type traits (16-bit
// floats included), the conversion rule, argument checks that name the op, the N-operand strided
// layout (collapsed on the host so contiguous operands index with one multiply), and the
// grid-stride elementwise launcher.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_internal.h"

// CMakeLists.txt compiles the plugin with __CUDA_NO_HALF_OPERATORS__ and friends, as PyTorch
// does: 16-bit values have no arithmetic and no implicit conversions here, so a kernel cannot
// compute in 16 bits or round through a conversion of the headers' by accident.
#if !defined(__CUDA_NO_HALF_OPERATORS__) || !defined(__CUDA_NO_BFLOAT16_CONVERSIONS__)
#error "build the cuda plugin with -D__CUDA_NO_HALF_OPERATORS__ ... (see CMakeLists.txt)"
#endif

namespace nbcu {

static_assert(sizeof(bool) == 1, "NB_DTYPE_BOOL is one byte");

// ---- dtypes ----

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr nb_dtype value = NB_DTYPE_F32; };
template <> struct dtype_of<double> { static constexpr nb_dtype value = NB_DTYPE_F64; };
template <> struct dtype_of<int32_t> { static constexpr nb_dtype value = NB_DTYPE_I32; };
template <> struct dtype_of<int64_t> { static constexpr nb_dtype value = NB_DTYPE_I64; };
template <> struct dtype_of<bool> { static constexpr nb_dtype value = NB_DTYPE_BOOL; };
template <> struct dtype_of<uint8_t> { static constexpr nb_dtype value = NB_DTYPE_U8; };
template <> struct dtype_of<__half> { static constexpr nb_dtype value = NB_DTYPE_F16; };
template <> struct dtype_of<__nv_bfloat16> { static constexpr nb_dtype value = NB_DTYPE_BF16; };

static_assert(NB_DTYPE_COUNT == 8, "a new dtype needs a name, a size and traits here");
inline const char *dtype_name(nb_dtype t)
{
    static const char *names[] = {"float32", "float64", "int32", "int64",
                                  "bool",    "uint8",   "float16", "bfloat16"};
    return (unsigned)t < NB_DTYPE_COUNT ? names[t] : "unknown dtype";
}

inline size_t dtype_size(nb_dtype t)
{
    static const size_t sizes[] = {4, 8, 4, 8, 1, 1, 2, 2};
    return (unsigned)t < NB_DTYPE_COUNT ? sizes[t] : 0;
}

// ---- 16-bit floats: 16-bit storage, float32 compute ----
// float16 and bfloat16 tensors hold __half / __nv_bfloat16; kernels compute in opmath_t<T>
// (float for both, T for every other dtype), as PyTorch's CUDA kernels do: loads widen (exact)
// and stores round to nearest even, once. The conversions are integer ports of the SDK's
// nb_f16_to_f32 / nb_f32_to_f16 / nb_bf16_to_f32 / nb_f32_to_bf16 / nb_f64_to_*, not the
// intrinsics: __float2half_rn and __float2bfloat16_rn return the canonical NaN 0x7fff where the
// SDK keeps the payload (made quiet), so only a port gives the cpu's bits on every input. They
// are __host__ __device__, and test_cuda_host.cu compares them with the SDK on the host.

template <class T> struct is_half { static constexpr bool value = false; };
template <> struct is_half<__half> { static constexpr bool value = true; };
template <> struct is_half<__nv_bfloat16> { static constexpr bool value = true; };

template <class T> struct opmath { typedef T type; };
template <> struct opmath<__half> { typedef float type; };
template <> struct opmath<__nv_bfloat16> { typedef float type; };
template <class T> using opmath_t = typename opmath<T>::type;

__host__ __device__ inline uint32_t f32_bits(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
#endif
}
__host__ __device__ inline float bits_f32(uint32_t b)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(b);
#else
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
#endif
}

__host__ __device__ inline uint16_t bits16(__half h) { return static_cast<__half_raw>(h).x; }
__host__ __device__ inline uint16_t bits16(__nv_bfloat16 h)
{
    return static_cast<__nv_bfloat16_raw>(h).x;
}
template <class H> __host__ __device__ inline H of_bits16(uint16_t b);
template <> __host__ __device__ inline __half of_bits16<__half>(uint16_t b)
{
    __half_raw r;
    r.x = b;
    return __half(r);
}
template <> __host__ __device__ inline __nv_bfloat16 of_bits16<__nv_bfloat16>(uint16_t b)
{
    __nv_bfloat16_raw r;
    r.x = b;
    return __nv_bfloat16(r);
}

// nb_f16_to_f32: exact; NaN keeps its payload.
__host__ __device__ inline float f16_bits_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f)
        return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp)
        return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
    return bits_f32(sign | f32_bits((float)man * 0x1p-24f)); // zero, subnormal: exact
}

// nb_f32_to_f16: round to nearest even; NaN made quiet with its top payload bits; overflow inf.
__host__ __device__ inline uint16_t f32_to_f16_bits(float f)
{
    uint32_t x = f32_bits(f), a = x & 0x7fffffffu;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) // 65520 and up (inf too): a tie at 65520 goes to the even inf
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) // a normal half: rebias, round the 13 dropped bits to even
        return (uint16_t)(sign | ((a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u) >> 13));
    uint32_t e = a >> 23;
    if (e < 102) // below half the smallest subnormal (float subnormals too)
        return sign;
    uint32_t mant = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    q += rem > half || (rem == half && (q & 1u));
    return (uint16_t)(sign | q); // q may reach 0x400, the smallest normal
}

// nb_bf16_to_f32 and nb_f32_to_bf16.
__host__ __device__ inline float bf16_bits_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }
__host__ __device__ inline uint16_t f32_to_bf16_bits(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// d rounded to float towards the neighbour whose last bit is odd when inexact (nb_f64_to_f32_odd_):
// float keeps more than 2 bits over either 16-bit type, so rounding that float once more gives
// the correctly rounded 16-bit value, with no double rounding.
__host__ __device__ inline float f64_to_f32_odd(double d)
{
    float f = (float)d;
    if ((double)f == d || d != d || f - f != 0) // exact, NaN or beyond float's range
        return f;
    uint32_t b = f32_bits(f);
    if (!(b & 1u))
        b = (d > 0 ? (double)f > d : (double)f < d) ? b - 1 : b + 1;
    return bits_f32(b);
}

// The same for an integer, without fp64: its top 24 bits truncated, the last one set when any
// bit below them is (int32 2^24 + 2^16 + 1 is the case that rounding through float gets wrong).
__host__ __device__ inline float i64_to_f32_odd(int64_t x)
{
    uint64_t u = x < 0 ? 0ull - (uint64_t)x : (uint64_t)x;
    if (u < (1ull << 24))
        return x < 0 ? -(float)u : (float)u;
#ifdef __CUDA_ARCH__
    int bits = 64 - __clzll((long long)u);
#else
    int bits = 64 - __builtin_clzll(u);
#endif
    int shift = bits - 24; // 1..40
    uint64_t m = u >> shift;
    if (u & ((1ull << shift) - 1))
        m |= 1u;
    float f = (float)m * bits_f32((uint32_t)(127 + shift) << 23); // m < 2^24: exact
    return x < 0 ? -f : f;
}

// A float rounded to nearest even into a 16-bit type.
template <class H> __host__ __device__ inline H round16(float f);
template <> __host__ __device__ inline __half round16<__half>(float f)
{
    return of_bits16<__half>(f32_to_f16_bits(f));
}
template <> __host__ __device__ inline __nv_bfloat16 round16<__nv_bfloat16>(float f)
{
    return of_bits16<__nv_bfloat16>(f32_to_bf16_bits(f));
}
__host__ __device__ inline float widen16(__half h) { return f16_bits_to_f32(bits16(h)); }
__host__ __device__ inline float widen16(__nv_bfloat16 h) { return bf16_bits_to_f32(bits16(h)); }

// ---- the conversion rule (the same in every plugin, and for host-side casts of scalars) ----
// float -> integer: truncate toward zero into int64, then wrap modulo 2^bits into the target;
// NaN and values outside int64's range give INT64_MIN before wrapping (what x86 and PyTorch's
// CPU give). integer -> integer wraps. Anything -> bool is x != 0 (NaN is true), and a bool
// source is "any non-zero byte", read as exactly 0 or 1 (see ld()). No C conversion here is
// undefined: the GPU's saturating cvt.rzi (float -> u8 gives 0 for -1) never sees a value it
// would clamp.

template <class T> struct is_bool { static constexpr bool value = false; };
template <> struct is_bool<bool> { static constexpr bool value = true; };
template <class T> struct is_float { static constexpr bool value = false; };
template <> struct is_float<float> { static constexpr bool value = true; };
template <> struct is_float<double> { static constexpr bool value = true; };

// Truncation toward zero into int64; NaN and |x| >= 2^63 (except -2^63 itself) give INT64_MIN.
__host__ __device__ inline int64_t float_to_i64(double x)
{
    if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0))
        return INT64_MIN;
    return (int64_t)x;
}
// The same for float, without a detour through fp64 (slow on most GPUs): 2^63 is exact in float.
__host__ __device__ inline int64_t float_to_i64(float x)
{
    if (!(x >= -9223372036854775808.0f && x < 9223372036854775808.0f))
        return INT64_MIN;
    return (int64_t)x;
}

// 16-bit: a 16-bit source widens to float first (exact), then follows the rule; a 16-bit target
// rounds once to nearest even (from float directly, from double and integers through
// round-to-odd); the same 16-bit type moves its bits unchanged (a signalling NaN included).
template <class To, class From> __host__ __device__ inline To convert(From x)
{
    if constexpr (is_half<From>::value && std::is_same<To, From>::value) {
        return x;
    } else if constexpr (is_half<From>::value) {
        return convert<To>(widen16(x));
    } else if constexpr (is_bool<To>::value) {
        return x != From(0);
    } else if constexpr (is_half<To>::value) {
        if constexpr (std::is_same<From, float>::value)
            return round16<To>(x);
        else if constexpr (std::is_same<From, double>::value)
            return round16<To>(f64_to_f32_odd(x));
        else
            return round16<To>(i64_to_f32_odd((int64_t)x)); // integers and bool (0 or 1)
    } else if constexpr (is_float<To>::value) {
        return (To)x;
    } else if constexpr (is_float<From>::value) {
        return (To)(uint64_t)float_to_i64(x); // unsigned: the wrap is defined
    } else {
        return (To)(uint64_t)(int64_t)x;
    }
}

// Reads element k. A bool is read as its byte != 0: a bool tensor filled from host data may
// hold any non-zero byte, and C++ may otherwise assume 0/1 (xor of raw bytes, 0xFF -> -1.0).
template <class T> __host__ __device__ inline T ld(const T *p, int64_t k) { return p[k]; }
template <> __host__ __device__ inline bool ld<bool>(const bool *p, int64_t k)
{
    return ((const uint8_t *)p)[k] != 0;
}

// A value in the type kernels compute in (float for the 16-bit types, T otherwise), and the
// load of element k in it.
template <class T> __host__ __device__ inline opmath_t<T> widen(T x)
{
    return convert<opmath_t<T>>(x);
}
template <class T> __host__ __device__ inline opmath_t<T> ldw(const T *p, int64_t k)
{
    return widen(ld(p, k));
}
// T's zero (the 16-bit types have no conversion from int here).
template <class T> __host__ __device__ inline T zero_of() { return convert<T>(0); }

// Integer add, sub and mul wrap modulo 2^bits (computed in unsigned, where overflow is
// defined); floats are the plain operations.
template <class T> __host__ __device__ inline T w_add(T x, T y)
{
    if constexpr (is_float<T>::value)
        return x + y;
    else
        return (T)((uint64_t)(int64_t)x + (uint64_t)(int64_t)y);
}
template <class T> __host__ __device__ inline T w_sub(T x, T y)
{
    if constexpr (is_float<T>::value)
        return x - y;
    else
        return (T)((uint64_t)(int64_t)x - (uint64_t)(int64_t)y);
}
template <class T> __host__ __device__ inline T w_mul(T x, T y)
{
    if constexpr (is_float<T>::value)
        return x * y;
    else
        return (T)((uint64_t)(int64_t)x * (uint64_t)(int64_t)y);
}

// Reads element `off` of a buffer whose dtype is only known at run time (the dtype is the same
// for every thread, so the switch does not diverge).
template <class T> __device__ inline T load_any(const void *p, nb_dtype t, int64_t off)
{
    switch (t) {
    case NB_DTYPE_F32: return convert<T>(((const float *)p)[off]);
    case NB_DTYPE_F64: return convert<T>(((const double *)p)[off]);
    case NB_DTYPE_I32: return convert<T>(((const int32_t *)p)[off]);
    case NB_DTYPE_I64: return convert<T>(((const int64_t *)p)[off]);
    case NB_DTYPE_BOOL: return convert<T>(ld((const bool *)p, off));
    case NB_DTYPE_F16: return convert<T>(((const __half *)p)[off]);
    case NB_DTYPE_BF16: return convert<T>(((const __nv_bfloat16 *)p)[off]);
    default: return convert<T>(((const uint8_t *)p)[off]);
    }
}

template <class T> __host__ __device__ inline bool is_nan(T x) { return x != x; }

// A compensated (Kahan) sum: float32 sums stay float32 and still close to a float64 result.
template <class T> struct Kahan {
    T v = T(0), c = T(0); // c: the low-order part lost so far
    __device__ void add(T x)
    {
        T y = x - c, t = v + y;
        // Only while the sum is finite: inf - inf would turn an infinite sum into NaN.
        c = isfinite(t) ? (t - v) - y : T(0);
        v = t;
    }
    __device__ T value() const { return v - c; }
};

// ---- operands and argument checks ----

// Element [0,...,0] of an operand, typed.
template <class T> inline T *data(const nb_operand *o)
{
    return (T *)((char *)o->handle + o->offset);
}

nb_status fail(nb_status st, const char *fmt, ...);

// Checks the shape of a kernel call: n_in inputs, each operand non-NULL with 0..NB_MAX_DIMS
// dims and non-negative sizes.
nb_status check_args(const char *op, const nb_kernel_args *a, int n_in);

// Checks that an operand has the dtype the kernel was registered for.
nb_status check_dtype(const char *op, const char *which, const nb_operand *o, nb_dtype want);

// Checks that `in` can be read element for element with out's shape: same ndim, and each size
// equal to out's (or 1, which is read as a broadcast).
nb_status check_same_shape(const char *op, const char *which, const nb_operand *out,
                           const nb_operand *in);

inline int64_t numel(const nb_operand *o)
{
    int64_t n = 1;
    for (int32_t d = 0; d < o->ndim; d++)
        n *= o->shape[d];
    return n;
}

// ---- layouts ----

// The index space of an N-operand loop: sizes and per-operand strides (elements), after dims
// of size 1 are dropped and dims that are contiguous for every operand are merged. ndim >= 1.
template <int N> struct Layout {
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    int64_t stride[N][NB_MAX_DIMS];
};

// Builds the layout of a loop over `shape` (ndim dims); strides[j] are operand j's strides.
// A size-1 dim in an operand whose size differs from `shape` reads as broadcast (stride 0).
template <int N>
Layout<N> make_layout(int ndim, const int64_t *shape, const nb_operand *const ops[N])
{
    Layout<N> L;
    memset(&L, 0, sizeof L);
    int m = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1)
            continue;
        int64_t s[N];
        for (int j = 0; j < N; j++)
            s[j] = ops[j]->shape[d] == shape[d] ? ops[j]->strides[d] : 0;
        bool merge = m > 0;
        for (int j = 0; j < N && merge; j++)
            merge = L.stride[j][m - 1] == s[j] * shape[d];
        if (merge) { // the outer dim steps exactly over the inner one: one dim of both sizes
            L.shape[m - 1] *= shape[d];
            for (int j = 0; j < N; j++)
                L.stride[j][m - 1] = s[j];
        } else {
            L.shape[m] = shape[d];
            for (int j = 0; j < N; j++)
                L.stride[j][m] = s[j];
            m++;
        }
    }
    if (m == 0) { // a single element
        L.shape[0] = 1;
        m = 1;
    }
    L.ndim = m;
    return L;
}

// Element offsets of row-major index k for each operand.
template <int N>
__device__ inline void offsets(const Layout<N> &L, int64_t k, int64_t off[N])
{
    if (L.ndim == 1) {
#pragma unroll
        for (int j = 0; j < N; j++)
            off[j] = k * L.stride[j][0];
        return;
    }
#pragma unroll
    for (int j = 0; j < N; j++)
        off[j] = 0;
    for (int d = L.ndim - 1; d >= 0; d--) {
        int64_t i = k % L.shape[d];
        k /= L.shape[d];
#pragma unroll
        for (int j = 0; j < N; j++)
            off[j] += i * L.stride[j][d];
    }
}

// f(k, off) for every row-major index k of the layout, off holding each operand's offset.
template <int N, class F> __global__ void ew_kernel(Layout<N> L, int64_t n, F f)
{
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += step) {
        int64_t off[N];
        offsets(L, k, off);
        f(k, off);
    }
}

// Blocks for a grid-stride loop over n items with `threads` per block.
inline unsigned grid_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

// Reports a failed launch (bad configuration, or an earlier kernel's sticky fault).
inline nb_status launched(const char *op)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? NB_OK : nbcu_cuda_error(op, "kernel launch", e);
}

// Queues f over out's shape with operands ops (ops[0] is out) on the device's stream.
template <int N, class F>
nb_status launch_ew(const char *op, int device, const nb_operand *const ops[N], F f)
{
    const nb_operand *out = ops[0];
    int64_t n = numel(out);
    if (n == 0)
        return NB_OK;
    Layout<N> L = make_layout<N>(out->ndim, out->shape, ops);
    cudaStream_t s;
    nb_status st = nbcu_stream(op, device, &s);
    if (st != NB_OK)
        return st;
    ew_kernel<N, F><<<grid_for(n, 256), 256, 0, s>>>(L, n, f);
    return launched(op);
}

// Scratch memory for one call, freed on the stream after the work that uses it, so nothing
// waits (nbcu_malloc/nbcu_free: pooled where the device has memory pools).
struct Scratch {
    void *p = nullptr;
    int device = 0;
    cudaStream_t s = nullptr;
    nb_status get(const char *op, int dev, cudaStream_t stream, size_t bytes)
    {
        device = dev;
        s = stream;
        return nbcu_malloc(op, dev, stream, bytes ? bytes : 1, &p);
    }
    ~Scratch() { nbcu_free(device, s, p); }
};

// Records the first out-of-range index the device meets (what, the index, the dim's size) in
// the device's index-check words; the next read or synchronize reports it.
__device__ inline void report_bad(unsigned long long *flags, int what, int64_t idx, int64_t size)
{
    if (atomicCAS(&flags[0], 0ull, 1ull) == 0ull) {
        flags[1] = (unsigned long long)idx;
        flags[2] = (unsigned long long)size;
        flags[3] = (unsigned long long)what;
    }
}

// An operand for scratch memory: contiguous, of the given shape.
struct Dense {
    nb_operand op;
    int64_t shape[NB_MAX_DIMS];
    int64_t strides[NB_MAX_DIMS];
    Dense(void *p, nb_dtype t, int ndim, const int64_t *sh)
    {
        int64_t s = 1;
        for (int d = ndim - 1; d >= 0; d--) {
            shape[d] = sh[d];
            strides[d] = s;
            s *= sh[d];
        }
        op.handle = p;
        op.offset = 0;
        op.dtype = t;
        op.ndim = ndim;
        op.shape = shape;
        op.strides = strides;
    }
    Dense(const Dense &) = delete;
};

// Copies src into dst (same shape, any strides, same or different dtypes) on the stream of
// `device`. Defined with the copy kernels in cuda_elementwise.cu.
nb_status copy_strided(const char *op, int device, const nb_operand *dst, const nb_operand *src);

// The buffer a kernel accumulates into with atomics: the output itself, or for a 16-bit output
// a float32 copy of it (zeroed by the caller or, with `keep`, holding out's values), which end()
// rounds into out once. So a 16-bit sum depends neither on 16-bit partial sums nor on the order
// the atomics ran in, and 16-bit atomics (bfloat16 ones need sm_90) are never used.
template <class T> struct AccumOut {
    typedef opmath_t<T> A;
    static constexpr bool wide = !std::is_same<A, T>::value;
    const char *op = nullptr;
    int device = 0;
    const nb_operand *out = nullptr;
    Scratch mem;
    nb_operand dense{};
    int64_t shape[NB_MAX_DIMS] = {0}, strides[NB_MAX_DIMS] = {0};

    nb_status begin(const char *op_, int dev, cudaStream_t s, const nb_operand *o, bool keep)
    {
        op = op_;
        device = dev;
        out = o;
        if (!wide)
            return NB_OK;
        nb_status st = mem.get(op, dev, s, (size_t)numel(o) * sizeof(A));
        if (st != NB_OK)
            return st;
        int64_t step = 1;
        for (int32_t d = o->ndim - 1; d >= 0; d--) {
            shape[d] = o->shape[d];
            strides[d] = step;
            step *= o->shape[d];
        }
        dense.handle = mem.p;
        dense.offset = 0;
        dense.dtype = dtype_of<A>::value;
        dense.ndim = o->ndim;
        dense.shape = shape;
        dense.strides = strides;
        return keep ? copy_strided(op, dev, &dense, o) : NB_OK;
    }
    const nb_operand *target() const { return wide ? &dense : out; }
    A *ptr() const { return data<A>(target()); }
    nb_status end() { return wide ? copy_strided(op, device, out, &dense) : NB_OK; }
};

// Row-major batched product on the device's stream: C (n x m) = alpha * op(A) (n x k) @ op(B)
// (k x m) + beta * C, where ta/tb say the stored matrix is the transpose (A stored k x n).
// lda, ldb, ldc are the row strides of the stored matrices, sa, sb, sc the batch strides
// (0 = shared). Defined in cuda_matmul.cu for float and double (TC = T, cuBLAS's S/D gemm) and
// for the 16-bit types (cublasGemmEx or its strided-batched form, float32 compute; C is T or
// float, where a caller accumulates several products before rounding once).
template <class T, class TC = T>
nb_status gemm_rm(const char *op, int device, bool ta, bool tb, int64_t n, int64_t m, int64_t k,
                  opmath_t<T> alpha, const T *A, int64_t lda, int64_t sa, const T *B, int64_t ldb,
                  int64_t sb, opmath_t<T> beta, TC *C, int64_t ldc, int64_t sc, int64_t batch);

// True when the operand is laid out row-major without gaps (sizes of 1 may have any stride).
inline bool is_contiguous(const nb_operand *o)
{
    int64_t s = 1;
    for (int32_t d = o->ndim - 1; d >= 0; d--) {
        if (o->shape[d] != 1 && o->strides[d] != s)
            return false;
        s *= o->shape[d];
    }
    return true;
}

} // namespace nbcu
