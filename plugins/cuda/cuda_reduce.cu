// cuda_reduce.cu - reductions over dims (sum, prod, max, min) and argmax/argmin along one dim:
// one block per output element, each thread folding a strided share of the reduced elements,
// then warp shuffles and a 32-entry shared array combine the block.
#include "cuda_common.cuh"

namespace nbcu {

template <class T> struct Lim;
template <> struct Lim<float> {
    static __device__ float lo() { return -INFINITY; }
    static __device__ float hi() { return INFINITY; }
};
template <> struct Lim<double> {
    static __device__ double lo() { return -INFINITY; }
    static __device__ double hi() { return INFINITY; }
};
template <> struct Lim<int32_t> {
    static __device__ int32_t lo() { return INT32_MIN; }
    static __device__ int32_t hi() { return INT32_MAX; }
};
template <> struct Lim<int64_t> {
    static __device__ int64_t lo() { return INT64_MIN; }
    static __device__ int64_t hi() { return INT64_MAX; }
};
template <> struct Lim<bool> {
    static __device__ bool lo() { return false; }
    static __device__ bool hi() { return true; }
};
template <> struct Lim<uint8_t> {
    static __device__ uint8_t lo() { return 0; }
    static __device__ uint8_t hi() { return 255; }
};

// Accumulator types. Sums and products of float32 accumulate in double (the result is then
// as close to a float64 reference as float32 allows); integers in int64. Extremes keep the
// type, except that one-byte types widen to int so warp shuffles can move them.
template <class T> struct Wide { typedef int64_t type; };
template <> struct Wide<float> { typedef double type; };
template <> struct Wide<double> { typedef double type; };
template <class T> struct Shuffle { typedef T type; };
template <> struct Shuffle<bool> { typedef int type; };
template <> struct Shuffle<uint8_t> { typedef int type; };

template <class T> struct SumOp {
    typedef typename Wide<T>::type Acc;
    static constexpr const char *name = "sum";
    static __device__ Acc id() { return Acc(0); }
    static __device__ Acc op(Acc a, Acc b) { return a + b; }
};
template <class T> struct ProdOp {
    typedef typename Wide<T>::type Acc;
    static constexpr const char *name = "prod";
    static __device__ Acc id() { return Acc(1); }
    static __device__ Acc op(Acc a, Acc b) { return a * b; }
};
template <class T> struct MaxOp { // NaN wins
    typedef typename Shuffle<T>::type Acc;
    static constexpr const char *name = "max";
    static __device__ Acc id() { return Acc(Lim<T>::lo()); }
    static __device__ Acc op(Acc a, Acc b) { return is_nan(a) ? a : is_nan(b) ? b : a > b ? a : b; }
};
template <class T> struct MinOp {
    typedef typename Shuffle<T>::type Acc;
    static constexpr const char *name = "min";
    static __device__ Acc id() { return Acc(Lim<T>::hi()); }
    static __device__ Acc op(Acc a, Acc b) { return is_nan(a) ? a : is_nan(b) ? b : a < b ? a : b; }
};

// Folds v over the block; the result is valid in thread 0. blockDim.x is a multiple of 32.
template <class Op, class Acc> __device__ Acc block_reduce(Acc v, Acc *part)
{
    for (int s = 16; s > 0; s >>= 1)
        v = Op::op(v, __shfl_down_sync(0xffffffffu, v, s));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? part[lane] : Op::id();
        for (int s = 16; s > 0; s >>= 1)
            v = Op::op(v, __shfl_down_sync(0xffffffffu, v, s));
    }
    __syncthreads(); // part is reused for the next output
    return v;
}

// outer: out (operand 0) and in (operand 1) over the kept dims; inner: in over the reduced dims.
template <class T, class Op>
__global__ void reduce_kernel(Layout<2> outer, Layout<1> inner, int64_t n_out, int64_t n_red,
                              T *out, const T *in)
{
    typedef typename Op::Acc Acc;
    __shared__ Acc part[32];
    for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
        int64_t off[2];
        offsets(outer, o, off);
        Acc acc = Op::id();
        for (int64_t r = threadIdx.x; r < n_red; r += blockDim.x) {
            int64_t ioff[1];
            offsets(inner, r, ioff);
            acc = Op::op(acc, (Acc)in[off[1] + ioff[0]]);
        }
        acc = block_reduce<Op>(acc, part);
        if (threadIdx.x == 0)
            out[off[0]] = convert<T>(acc);
    }
}

// Threads per block: enough warps to cover the reduced elements, at most 256.
static int reduce_threads(int64_t n_red)
{
    int64_t t = (n_red + 31) / 32 * 32;
    return (int)(t < 32 ? 32 : t > 256 ? 256 : t);
}

// out has in's ndim with size 1 on every reduced dim; `only` >= 0 restricts reducing to that dim.
static nb_status check_reduce(const char *op, const nb_kernel_args *a, nb_dtype want_in,
                              nb_dtype want_out, int64_t only)
{
    nb_status st = check_args(op, a, 1);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, want_out);
    if (st == NB_OK)
        st = check_dtype(op, "input", &a->in[0], want_in);
    if (st != NB_OK)
        return st;
    const nb_operand *out = a->out, *in = &a->in[0];
    if (in->ndim != out->ndim)
        return fail(NB_SHAPE_MISMATCH, "%s: output has %d dims, expected the input's %d (size 1 "
                    "on reduced dims)", op, (int)out->ndim, (int)in->ndim);
    if (only >= 0 && only >= in->ndim && in->ndim > 0)
        return fail(NB_INVALID_ARGUMENT, "%s: dim %lld out of range for %d dims", op,
                    (long long)only, (int)in->ndim);
    for (int32_t d = 0; d < in->ndim; d++) {
        bool reduced_ok = only < 0 || d == only;
        if (out->shape[d] != in->shape[d] && !(out->shape[d] == 1 && reduced_ok))
            return fail(NB_SHAPE_MISMATCH, "%s: output size %lld in dim %d, expected %s%lld", op,
                        (long long)out->shape[d], (int)d, reduced_ok ? "1 or " : "",
                        (long long)in->shape[d]);
    }
    return NB_OK;
}

template <class T, template <class> class OpT> static nb_status k_reduce(const nb_kernel_args *a)
{
    typedef OpT<T> Op;
    const char *op = Op::name;
    nb_status st = check_reduce(op, a, dtype_of<T>::value, dtype_of<T>::value, -1);
    if (st != NB_OK)
        return st;
    const nb_operand *out = a->out, *in = &a->in[0];
    int64_t n_out = numel(out), n_red = 1, rshape[NB_MAX_DIMS];
    if (n_out == 0)
        return NB_OK;
    for (int32_t d = 0; d < in->ndim; d++) {
        rshape[d] = out->shape[d] == 1 ? in->shape[d] : 1;
        n_red *= rshape[d];
    }
    const nb_operand *oi[2] = {out, in}, *ii[1] = {in};
    Layout<2> outer = make_layout<2>(out->ndim, out->shape, oi);
    Layout<1> inner = make_layout<1>(in->ndim, rshape, ii);
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;
    unsigned grid = (unsigned)(n_out < 65536 ? n_out : 65536);
    reduce_kernel<T, Op><<<grid, reduce_threads(n_red), 0, s>>>(outer, inner, n_out, n_red,
                                                                 data<T>(out), data<const T>(in));
    return launched(op);
}

// ---- argmax / argmin: (value, index) pairs; NaN counts as the extreme; ties take the first ----

template <bool IsMax, class T> __device__ bool beats(T b, int64_t ib, T a, int64_t ia)
{
    if (ib < 0)
        return false;
    if (ia < 0)
        return true;
    if (is_nan(a))
        return is_nan(b) && ib < ia;
    if (is_nan(b))
        return true;
    if (b == a)
        return ib < ia;
    return IsMax ? b > a : b < a;
}

template <bool IsMax, class T>
__global__ void arg_kernel(Layout<2> outer, int64_t n_out, int64_t n_red, int64_t rstride,
                           int64_t *out, const T *in)
{
    typedef typename Shuffle<T>::type V;
    __shared__ V pv[32];
    __shared__ int64_t pi[32];
    for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
        int64_t off[2];
        offsets(outer, o, off);
        V v = V(0);
        int64_t idx = -1; // -1: no element seen
        for (int64_t r = threadIdx.x; r < n_red; r += blockDim.x) {
            V x = (V)in[off[1] + r * rstride];
            if (beats<IsMax>(x, r, v, idx)) {
                v = x;
                idx = r;
            }
        }
        for (int s = 16; s > 0; s >>= 1) {
            V ov = __shfl_down_sync(0xffffffffu, v, s);
            int64_t oi = __shfl_down_sync(0xffffffffu, idx, s);
            if (beats<IsMax>(ov, oi, v, idx)) {
                v = ov;
                idx = oi;
            }
        }
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
        if (lane == 0) {
            pv[warp] = v;
            pi[warp] = idx;
        }
        __syncthreads();
        if (warp == 0) {
            v = lane < nw ? pv[lane] : V(0);
            idx = lane < nw ? pi[lane] : -1;
            for (int s = 16; s > 0; s >>= 1) {
                V ov = __shfl_down_sync(0xffffffffu, v, s);
                int64_t oi = __shfl_down_sync(0xffffffffu, idx, s);
                if (beats<IsMax>(ov, oi, v, idx)) {
                    v = ov;
                    idx = oi;
                }
            }
            if (lane == 0)
                out[off[0]] = idx;
        }
        __syncthreads();
    }
}

template <class T, bool IsMax> static nb_status k_arg(const nb_kernel_args *a)
{
    const char *op = IsMax ? "argmax" : "argmin";
    nb_status st = check_args(op, a, 1);
    if (st != NB_OK)
        return st;
    int64_t dim = a->i[0];
    if (a->in[0].ndim == 0 && dim == 0)
        dim = -1; // a 0-d input: its only element, index 0
    else if (dim < 0 || dim >= a->in[0].ndim)
        return fail(NB_INVALID_ARGUMENT, "%s: dim %lld out of range for an input with %d dims",
                    op, (long long)dim, (int)a->in[0].ndim);
    if ((st = check_reduce(op, a, dtype_of<T>::value, NB_DTYPE_I64, dim < 0 ? 0 : dim)) != NB_OK)
        return st;
    const nb_operand *out = a->out, *in = &a->in[0];
    int64_t n_out = numel(out);
    if (n_out == 0)
        return NB_OK;
    int64_t n_red = dim < 0 ? 1 : in->shape[dim], rstride = dim < 0 ? 0 : in->strides[dim];
    if (n_red == 0)
        return fail(NB_INVALID_ARGUMENT, "%s: cannot take the %s of an empty dim", op, op);
    const nb_operand *oi[2] = {out, in};
    Layout<2> outer = make_layout<2>(out->ndim, out->shape, oi);
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;
    unsigned grid = (unsigned)(n_out < 65536 ? n_out : 65536);
    arg_kernel<IsMax, T><<<grid, reduce_threads(n_red), 0, s>>>(
        outer, n_out, n_red, rstride, data<int64_t>(out), data<const T>(in));
    return launched(op);
}

} // namespace nbcu

using namespace nbcu;

#define RED(name, Op, T) {name, dtype_of<T>::value, k_reduce<T, Op>},
#define RED_ALL(name, Op)                                                                     \
    RED(name, Op, float) RED(name, Op, double) RED(name, Op, int32_t) RED(name, Op, int64_t)  \
    RED(name, Op, bool) RED(name, Op, uint8_t)
#define ARG(name, IsMax, T) {name, dtype_of<T>::value, k_arg<T, IsMax>},
#define ARG_ALL(name, IsMax)                                                                  \
    ARG(name, IsMax, float) ARG(name, IsMax, double) ARG(name, IsMax, int32_t)                \
    ARG(name, IsMax, int64_t) ARG(name, IsMax, bool) ARG(name, IsMax, uint8_t)

extern "C" const nb_kernel_desc nbcu_reduce_kernels[] = {
    RED_ALL("sum", SumOp)
    RED_ALL("prod", ProdOp)
    RED_ALL("max", MaxOp)
    RED_ALL("min", MinOp)
    ARG_ALL("argmax", true)
    ARG_ALL("argmin", false)
};
extern "C" const size_t nbcu_reduce_count =
    sizeof nbcu_reduce_kernels / sizeof nbcu_reduce_kernels[0];
