// cuda_reduce.cu - reductions over dims (sum, prod, max, min) and argmax/argmin along one dim.
// nbcu_plan_reduce picks the loop: a block per output (reduced elements innermost), a thread per
// output (coalesced over the kept dims, or short reductions), or chunks of one output over many
// blocks and a second pass (few outputs, long reductions). float16/bfloat16 fold in float (sums
// Kahan-compensated) and round once.
#include "cuda_common.cuh"
#include "cuda_host.h"

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
template <> struct Lim<__half> : Lim<float> {};
template <> struct Lim<__nv_bfloat16> : Lim<float> {};

// Accumulator types. float32 sums accumulate in float32, each thread with a compensated
// (Kahan) sum and the threads' results combined as a tree, so a float32 sum costs no fp64 (1/32
// to 1/64 of the fp32 rate on GeForce, T4 and L4 parts) and stays as close to a float64
// reference as float32 allows. float32 products accumulate in double (rare; keeps intermediate
// over/underflow out). Integers accumulate in int64 with wrapping arithmetic. Extremes keep the
// type, except that one-byte types widen to int so warp shuffles can move them. The 16-bit
// types fold as float32 does (sums in float, products in double, extremes in float): their
// result is float32's on the widened input, rounded once.
template <class T> struct SumAcc { typedef int64_t type; };
template <> struct SumAcc<float> { typedef float type; };
template <> struct SumAcc<double> { typedef double type; };
template <> struct SumAcc<__half> { typedef float type; };
template <> struct SumAcc<__nv_bfloat16> { typedef float type; };
template <class T> struct ProdAcc { typedef int64_t type; };
template <> struct ProdAcc<float> { typedef double type; };
template <> struct ProdAcc<double> { typedef double type; };
template <> struct ProdAcc<__half> { typedef double type; };
template <> struct ProdAcc<__nv_bfloat16> { typedef double type; }; // bf16 spans float's range
template <class T> struct Shuffle { typedef T type; };
template <> struct Shuffle<bool> { typedef int type; };
template <> struct Shuffle<uint8_t> { typedef int type; };
template <> struct Shuffle<__half> { typedef float type; };
template <> struct Shuffle<__nv_bfloat16> { typedef float type; };

template <class T> struct SumOp {
    typedef typename SumAcc<T>::type Acc;
    static constexpr const char *name = "sum";
    static constexpr bool compensated = is_float<Acc>::value;
    static __device__ Acc id() { return Acc(0); }
    static __device__ Acc op(Acc a, Acc b) { return w_add(a, b); }
};
template <class T> struct ProdOp {
    typedef typename ProdAcc<T>::type Acc;
    static constexpr const char *name = "prod";
    static constexpr bool compensated = false;
    static __device__ Acc id() { return Acc(1); }
    static __device__ Acc op(Acc a, Acc b) { return w_mul(a, b); }
};
template <class T> struct MaxOp { // NaN wins
    typedef typename Shuffle<T>::type Acc;
    static constexpr const char *name = "max";
    static constexpr bool compensated = false;
    static __device__ Acc id() { return Acc(Lim<T>::lo()); }
    static __device__ Acc op(Acc a, Acc b) { return is_nan(a) ? a : is_nan(b) ? b : a > b ? a : b; }
};
template <class T> struct MinOp {
    typedef typename Shuffle<T>::type Acc;
    static constexpr const char *name = "min";
    static constexpr bool compensated = false;
    static __device__ Acc id() { return Acc(Lim<T>::hi()); }
    static __device__ Acc op(Acc a, Acc b) { return is_nan(a) ? a : is_nan(b) ? b : a < b ? a : b; }
};

// One thread's running fold: a Kahan sum where Op::compensated, Op::op otherwise.
template <class Op, bool Comp = Op::compensated> struct Fold {
    typename Op::Acc v = Op::id();
    __device__ void add(typename Op::Acc x) { v = Op::op(v, x); }
    __device__ typename Op::Acc value() const { return v; }
};
template <class Op> struct Fold<Op, true> : Kahan<typename Op::Acc> {};

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

// Row path: one block per (output, chunk of the reduced elements), threads reading neighbouring
// reduced elements (coalesced when the reduced dims are the innermost). outer: out (operand 0)
// and in (operand 1) over the kept dims; inner: in over the reduced dims. With chunks > 1 each
// block writes its partial result to partial[output * chunks + chunk] for a second pass.
template <class Tin, class Tout, class Op>
__global__ void reduce_rows(Layout<2> outer, Layout<1> inner, int64_t n_out, int64_t n_red,
                            int64_t chunks, Tout *out, typename Op::Acc *partial, const Tin *in)
{
    typedef typename Op::Acc Acc;
    __shared__ Acc part[32];
    int64_t clen = (n_red + chunks - 1) / chunks;
    for (int64_t b = blockIdx.x; b < n_out * chunks; b += gridDim.x) {
        int64_t o = b / chunks, r0 = b % chunks * clen, r1 = r0 + clen < n_red ? r0 + clen : n_red;
        int64_t off[2];
        offsets(outer, o, off);
        Fold<Op> f;
        for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
            int64_t ioff[1];
            offsets(inner, r, ioff);
            f.add(convert<Acc>(ld(in, off[1] + ioff[0])));
        }
        Acc acc = block_reduce<Op>(f.value(), part);
        if (threadIdx.x == 0) {
            if (chunks > 1)
                partial[b] = acc;
            else
                out[off[0]] = convert<Tout>(acc);
        }
    }
}

// Column path: each thread folds one output and 32 neighbouring outputs share a warp, so a warp
// reads 32 neighbouring elements (coalesced when the innermost kept dim is contiguous, as in a
// sum over dim 0 of a row-major matrix). blockDim is (32, COLS_Y); the COLS_Y threads of a
// column split the reduced elements and are combined through shared memory.
constexpr int COLS_Y = 8;
template <class T, class Op>
__global__ void reduce_cols(Layout<2> outer, Layout<1> inner, int64_t n_out, int64_t n_red,
                            T *out, const T *in)
{
    typedef typename Op::Acc Acc;
    __shared__ Acc part[COLS_Y][32];
    for (int64_t base = (int64_t)blockIdx.x * 32; base < n_out; base += (int64_t)gridDim.x * 32) {
        int64_t o = base + threadIdx.x, off[2] = {0, 0};
        Fold<Op> f;
        if (o < n_out) {
            offsets(outer, o, off);
            for (int64_t r = threadIdx.y; r < n_red; r += COLS_Y) {
                int64_t ioff[1];
                offsets(inner, r, ioff);
                f.add(convert<Acc>(ld(in, off[1] + ioff[0])));
            }
        }
        part[threadIdx.y][threadIdx.x] = f.value();
        __syncthreads();
        if (threadIdx.y == 0 && o < n_out) {
            Acc v = part[0][threadIdx.x];
            for (int y = 1; y < COLS_Y; y++)
                v = Op::op(v, part[y][threadIdx.x]);
            out[off[0]] = convert<T>(v);
        }
        __syncthreads();
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
    typedef typename Op::Acc Acc;
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
    nbcu_reduce_plan plan = nbcu_plan_reduce(outer.stride[1][outer.ndim - 1],
                                             inner.stride[0][inner.ndim - 1], n_out, n_red);
    if (plan.columns) {
        unsigned grid = grid_for(n_out, 32);
        reduce_cols<T, Op><<<grid, dim3(32, COLS_Y), 0, s>>>(outer, inner, n_out, n_red,
                                                            data<T>(out), data<const T>(in));
        return launched(op);
    }
    if (plan.chunks == 1) {
        unsigned grid = (unsigned)(n_out < 65536 ? n_out : 65536);
        reduce_rows<T, T, Op><<<grid, reduce_threads(n_red), 0, s>>>(
            outer, inner, n_out, n_red, 1, data<T>(out), nullptr, data<const T>(in));
        return launched(op);
    }
    // Few outputs, many elements each: the chunks' partial results go to scratch, and a second
    // pass folds each output's chunks.
    Scratch partial;
    if ((st = partial.get(op, a->device, s, (size_t)(n_out * plan.chunks) * sizeof(Acc))) !=
        NB_OK)
        return st;
    unsigned grid = (unsigned)(n_out * plan.chunks < 65536 ? n_out * plan.chunks : 65536);
    reduce_rows<T, T, Op><<<grid, 256, 0, s>>>(outer, inner, n_out, n_red, plan.chunks,
                                               data<T>(out), (Acc *)partial.p,
                                               data<const T>(in));
    if ((st = launched(op)) != NB_OK)
        return st;
    // Pass 2: output o folds partial[o * chunks ...][chunks]; o is the row-major index over
    // the kept dims in both passes, so operand 1 steps by chunks per output.
    Layout<2> outer2 = outer;
    int64_t step = plan.chunks;
    for (int d = outer2.ndim - 1; d >= 0; d--) {
        outer2.stride[1][d] = step;
        step *= outer2.shape[d];
    }
    Layout<1> inner2;
    memset(&inner2, 0, sizeof inner2);
    inner2.ndim = 1;
    inner2.shape[0] = plan.chunks;
    inner2.stride[0][0] = 1;
    grid = (unsigned)(n_out < 65536 ? n_out : 65536);
    reduce_rows<Acc, T, Op><<<grid, reduce_threads(plan.chunks), 0, s>>>(
        outer2, inner2, n_out, plan.chunks, 1, data<T>(out), nullptr, (const Acc *)partial.p);
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
            V x = convert<V>(ld(in, off[1] + r * rstride));
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
    RED(name, Op, bool) RED(name, Op, uint8_t) RED(name, Op, __half) RED(name, Op, __nv_bfloat16)
#define RED_NUM(name, Op)                                                                     \
    RED(name, Op, float) RED(name, Op, double) RED(name, Op, int32_t) RED(name, Op, int64_t)  \
    RED(name, Op, uint8_t) RED(name, Op, __half) RED(name, Op, __nv_bfloat16)
#define ARG(name, IsMax, T) {name, dtype_of<T>::value, k_arg<T, IsMax>},
#define ARG_ALL(name, IsMax)                                                                  \
    ARG(name, IsMax, float) ARG(name, IsMax, double) ARG(name, IsMax, int32_t)                \
    ARG(name, IsMax, int64_t) ARG(name, IsMax, bool) ARG(name, IsMax, uint8_t)                \
    ARG(name, IsMax, __half) ARG(name, IsMax, __nv_bfloat16)

extern "C" const nb_kernel_desc nbcu_reduce_kernels[] = {
    // No bool sum or prod, as on the cpu (the core sums bools as int64, as PyTorch does).
    RED_NUM("sum", SumOp)
    RED_NUM("prod", ProdOp)
    RED_ALL("max", MaxOp)
    RED_ALL("min", MinOp)
    ARG_ALL("argmax", true)
    ARG_ALL("argmin", false)
};
extern "C" const size_t nbcu_reduce_count =
    sizeof nbcu_reduce_kernels / sizeof nbcu_reduce_kernels[0];
