// cuda_common.cuh - what the cuda plugin's .cu files share: dtype <-> C++ type traits, argument
// checks that name the op, the N-operand strided layout (collapsed on the host so contiguous
// operands index with one multiply), and the grid-stride elementwise launcher.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda_internal.h"

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

inline const char *dtype_name(nb_dtype t)
{
    static const char *names[] = {"float32", "float64", "int32", "int64", "bool", "uint8"};
    return (unsigned)t < NB_DTYPE_COUNT ? names[t] : "unknown dtype";
}

inline size_t dtype_size(nb_dtype t)
{
    static const size_t sizes[] = {4, 8, 4, 8, 1, 1};
    return (unsigned)t < NB_DTYPE_COUNT ? sizes[t] : 0;
}

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

template <class To, class From> __host__ __device__ inline To convert(From x)
{
    if constexpr (is_bool<To>::value) {
        return x != From(0);
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

// Row-major batched product on the device's stream: C (n x m) = alpha * op(A) (n x k) @ op(B)
// (k x m) + beta * C, where ta/tb say the stored matrix is the transpose (A stored k x n).
// lda, ldb, ldc are the row strides of the stored matrices, sa, sb, sc the batch strides
// (0 = shared). Defined for float and double in cuda_matmul.cu.
template <class T>
nb_status gemm_rm(const char *op, int device, bool ta, bool tb, int64_t n, int64_t m, int64_t k,
                  T alpha, const T *A, int64_t lda, int64_t sa, const T *B, int64_t ldb,
                  int64_t sb, T beta, T *C, int64_t ldc, int64_t sc, int64_t batch);

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
