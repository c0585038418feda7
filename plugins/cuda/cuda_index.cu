// cuda_index.cu - kernels that write by position: fill, arange, Philox random fills (the same
// numbers as every other plugin), gather and scatter_add (atomics) with index checking that
// reports at the next synchronisation. float16/bfloat16: fill and arange round the double once,
// gather moves the bits, scatter_add sums in float32 (AccumOut), random fills are float32's
// numbers rounded (the cpu plugin's, bit for bit).
#include "cuda_common.cuh"

namespace nbcu {

// ---- fill and arange ----

template <class T> struct FillF {
    T *out;
    T v;
    __device__ void operator()(int64_t, const int64_t *off) const { out[off[0]] = v; }
};

template <class T> static nb_status k_fill(const nb_kernel_args *a)
{
    nb_status st = check_args("fill", a, 0);
    if (st == NB_OK)
        st = check_dtype("fill", "output", a->out, dtype_of<T>::value);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[1] = {a->out};
    return launch_ew<1>("fill", a->device, ops, FillF<T>{data<T>(a->out), convert<T>(a->f[0])});
}

template <class T> struct ArangeF {
    T *out;
    double start, step;
    __device__ void operator()(int64_t k, const int64_t *off) const
    {
        // Rounded multiply then add, never a fused multiply-add: the CPU's numbers exactly. A
        // 16-bit arange rounds through float as the cpu and opencl plugins (and torch) do.
        double v = __dadd_rn(start, __dmul_rn((double)k, step));
        if constexpr (is_half<T>::value)
            out[off[0]] = round16<T>((float)v);
        else
            out[off[0]] = convert<T>(v);
    }
};

template <class T> static nb_status k_arange(const nb_kernel_args *a)
{
    nb_status st = check_args("arange", a, 0);
    if (st == NB_OK)
        st = check_dtype("arange", "output", a->out, dtype_of<T>::value);
    if (st == NB_OK && a->out->ndim != 1)
        st = fail(NB_SHAPE_MISMATCH, "arange: output has %d dims, expected 1",
                  (int)a->out->ndim);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[1] = {a->out};
    return launch_ew<1>("arange", a->device, ops,
                        ArangeF<T>{data<T>(a->out), a->f[0], a->f[1]});
}

// ---- random: Philox4x32-10, the same rounds as nb_philox() in nabla_plugin.h ----

__device__ inline void philox(uint64_t key, uint64_t ctr_lo, uint64_t ctr_hi, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)ctr_lo, c1 = (uint32_t)(ctr_lo >> 32);
    uint32_t c2 = (uint32_t)ctr_hi, c3 = (uint32_t)(ctr_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// 53 random bits of two words, scaled to [0, 1).
__device__ inline double unit53(uint32_t hi, uint32_t lo)
{
    return (double)(((uint64_t)hi << 21) ^ (lo >> 11)) * 0x1p-53;
}

template <class T, bool Normal> struct RandomF {
    T *out;
    uint64_t seed, offset;
    double a, b; // uniform: low, high; normal: mean, std
    __device__ void operator()(int64_t k, const int64_t *off) const
    {
        uint32_t r[4];
        philox(seed, (uint64_t)k, offset, r);
        double v;
        if (Normal) {
            double u1 = 1.0 - unit53(r[0], r[1]), u2 = unit53(r[2], r[3]); // u1 in (0, 1]
            double z = sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
            v = __dadd_rn(a, __dmul_rn(b, z));
        } else {
            double u = sizeof(T) == 8 ? unit53(r[0], r[1]) : (double)(r[0] >> 8) * 0x1p-24;
            // No fused multiply-add, so uniforms agree bit for bit with the other plugins.
            v = __dadd_rn(a, __dmul_rn(b - a, u));
        }
        if constexpr (is_half<T>::value) {
            T h = convert<T>((float)v); // as the cpu: the float32 number, rounded
            // u near 1 rounds up to the high end; [low, high) maps that back to low, as the
            // other plugins (and PyTorch's CUDA uniform) do
            if (!Normal && (double)widen16(h) >= b)
                h = convert<T>((float)a);
            out[off[0]] = h;
        } else
            out[off[0]] = (T)v;
    }
};

template <class T, bool Normal> static nb_status k_random(const nb_kernel_args *a)
{
    const char *op = Normal ? "random_normal" : "random_uniform";
    nb_status st = check_args(op, a, 0);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[1] = {a->out};
    RandomF<T, Normal> f{data<T>(a->out), (uint64_t)a->i[0], (uint64_t)a->i[1], a->f[0], a->f[1]};
    return launch_ew<1>(op, a->device, ops, f);
}

// ---- gather and scatter_add ----

// An operand read over another shape: `shape` replaced, strides kept, and the strides of the
// indexed dim set to 0 (the index supplies that coordinate).
struct Reshaped {
    nb_operand op;
    int64_t shape[NB_MAX_DIMS];
    int64_t strides[NB_MAX_DIMS];
    Reshaped(const nb_operand *src, const int64_t *sh, int64_t dim)
    {
        op = *src;
        for (int32_t d = 0; d < src->ndim; d++) {
            shape[d] = sh[d];
            strides[d] = d == dim ? 0 : src->strides[d];
        }
        op.shape = shape;
        op.strides = strides;
    }
    Reshaped(const Reshaped &) = delete;
};

template <class T> struct GatherF {
    T *out;
    const T *in;
    const int64_t *index;
    int64_t size, stride; // of the gathered dim of in
    unsigned long long *flags;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        int64_t i = index[off[2]];
        if (i < 0 || i >= size) {
            report_bad(flags, NBCU_IDX_GATHER, i, size);
            out[off[0]] = zero_of<T>();
            return;
        }
        out[off[0]] = ld(in, off[1] + i * stride);
    }
};

// Byte-sized atomics go through the aligned 4-byte word holding the byte (alloc rounds every
// buffer to 256 bytes, so the word lies inside it).
__device__ inline void atomic_add_u8(uint8_t *p, uint8_t v)
{
    unsigned int *w = (unsigned int *)((uintptr_t)p & ~(uintptr_t)3);
    unsigned int shift = (unsigned int)((uintptr_t)p & 3) * 8, old = *w, seen;
    do {
        seen = old;
        unsigned int b = ((seen >> shift) + v) & 0xffu;
        old = atomicCAS(w, seen, (seen & ~(0xffu << shift)) | (b << shift));
    } while (old != seen);
}

__device__ inline void atomic_add(float *p, float v) { atomicAdd(p, v); }
__device__ inline void atomic_add(double *p, double v) { atomicAdd(p, v); }
__device__ inline void atomic_add(int32_t *p, int32_t v) { atomicAdd((int *)p, (int)v); }
__device__ inline void atomic_add(int64_t *p, int64_t v)
{
    atomicAdd((unsigned long long *)p, (unsigned long long)v); // two's complement wraps alike
}
__device__ inline void atomic_add(uint8_t *p, uint8_t v) { atomic_add_u8(p, v); }
// The loop runs over the index's shape: operand 0 is the index, 1 the output (a float32 copy
// for a 16-bit output), 2 the source.
template <class T> struct ScatterAddF {
    const int64_t *index;
    opmath_t<T> *out;
    const T *src;
    int64_t size, stride; // of the scattered dim of out
    unsigned long long *flags;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        int64_t i = index[off[0]];
        if (i < 0 || i >= size) {
            report_bad(flags, NBCU_IDX_SCATTER_ADD, i, size);
            return;
        }
        atomic_add(&out[off[1] + i * stride], widen(src[off[2]]));
    }
};

// Checks gather/scatter operands: `idx` is int64 with the iteration shape; `big` (the gathered
// input, the scattered output or the source) has the same ndim and at least the index's size in
// every dim but `dim` (in every dim when `all_dims`).
static nb_status check_indexing(const char *op, const nb_operand *big, const char *big_name,
                                const nb_operand *idx, int64_t dim, bool all_dims)
{
    nb_status st = check_dtype(op, "index", idx, NB_DTYPE_I64);
    if (st != NB_OK)
        return st;
    if (big->ndim != idx->ndim)
        return fail(NB_SHAPE_MISMATCH, "%s: index has %d dims, expected as many as the %s (%d)",
                    op, (int)idx->ndim, big_name, (int)big->ndim);
    int32_t nd = big->ndim > 0 ? big->ndim : 1;
    if (dim < 0 || dim >= nd)
        return fail(NB_INVALID_ARGUMENT, "%s: dim %lld out of range for %d dims", op,
                    (long long)dim, (int)big->ndim);
    for (int32_t d = 0; d < big->ndim; d++)
        if ((d != dim || all_dims) && idx->shape[d] > big->shape[d])
            return fail(NB_SHAPE_MISMATCH, "%s: index size %lld in dim %d exceeds the %s's %lld",
                        op, (long long)idx->shape[d], (int)d, big_name,
                        (long long)big->shape[d]);
    return NB_OK;
}

// Runs `launch` with the device's index-check words. An out-of-range index is reported by the
// next read or synchronize of the device, so the op never waits for the device (index_select
// and cross_entropy run one per step).
template <class L> static nb_status with_index_check(const char *op, int device, L launch)
{
    cudaStream_t s;
    nb_status st = nbcu_stream(op, device, &s);
    return st != NB_OK ? st : launch(nbcu_index_flags(device));
}

template <class T> static nb_status k_gather(const nb_kernel_args *a)
{
    const char *op = "gather";
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "input", &a->in[0], dtype_of<T>::value);
    const nb_operand *out = a->out, *in = &a->in[0], *idx = &a->in[1];
    int64_t dim = a->i[0];
    if (st == NB_OK)
        st = check_indexing(op, in, "input", idx, dim, false);
    if (st == NB_OK)
        st = check_same_shape(op, "index", out, idx);
    if (st != NB_OK)
        return st;
    if (numel(out) == 0)
        return NB_OK;
    if (in->ndim == 0) // a 0-d input reads as size 1 along dim 0
        return with_index_check(op, a->device, [&](unsigned long long *flags) {
            const nb_operand *ops[3] = {out, out, idx};
            return launch_ew<3>(op, a->device, ops,
                                GatherF<T>{data<T>(out), data<const T>(in),
                                           data<const int64_t>(idx), 1, 0, flags});
        });
    Reshaped rin(in, out->shape, dim);
    int64_t size = in->shape[dim];
    return with_index_check(op, a->device, [&](unsigned long long *flags) {
        const nb_operand *ops[3] = {out, &rin.op, idx};
        return launch_ew<3>(op, a->device, ops,
                            GatherF<T>{data<T>(out), data<const T>(in), data<const int64_t>(idx),
                                       size, in->strides[dim], flags});
    });
}

template <class T> static nb_status k_scatter_add(const nb_kernel_args *a)
{
    const char *op = "scatter_add";
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "source", &a->in[1], dtype_of<T>::value);
    const nb_operand *out = a->out, *idx = &a->in[0], *src = &a->in[1];
    int64_t dim = a->i[0];
    if (st == NB_OK)
        st = check_indexing(op, out, "output", idx, dim, false);
    if (st == NB_OK)
        st = check_indexing(op, src, "source", idx, dim, true);
    if (st != NB_OK)
        return st;
    if (numel(idx) == 0)
        return NB_OK;
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;
    AccumOut<T> acc; // adds to out's values
    if ((st = acc.begin(op, a->device, s, out, true)) != NB_OK)
        return st;
    const nb_operand *tgt = acc.target();
    int64_t size = tgt->ndim ? tgt->shape[dim] : 1, stride = tgt->ndim ? tgt->strides[dim] : 0;
    Reshaped rout(tgt, idx->shape, dim), rsrc(src, idx->shape, -1);
    st = with_index_check(op, a->device, [&](unsigned long long *flags) {
        const nb_operand *ops[3] = {idx, &rout.op, &rsrc.op};
        ScatterAddF<T> f{data<const int64_t>(idx), acc.ptr(), data<const T>(src), size, stride,
                         flags};
        return launch_ew<3>(op, a->device, ops, f);
    });
    return st != NB_OK ? st : acc.end();
}

} // namespace nbcu

using namespace nbcu;

#define ALL_TYPED(name, tmpl)                                                                 \
    {name, NB_DTYPE_F32, tmpl<float>}, {name, NB_DTYPE_F64, tmpl<double>},                    \
    {name, NB_DTYPE_I32, tmpl<int32_t>}, {name, NB_DTYPE_I64, tmpl<int64_t>},                 \
    {name, NB_DTYPE_BOOL, tmpl<bool>}, {name, NB_DTYPE_U8, tmpl<uint8_t>},                    \
    {name, NB_DTYPE_F16, tmpl<__half>}, {name, NB_DTYPE_BF16, tmpl<__nv_bfloat16>},

extern "C" const nb_kernel_desc nbcu_index_kernels[] = {
    ALL_TYPED("fill", k_fill)
    ALL_TYPED("arange", k_arange)
    {"random_uniform", NB_DTYPE_F32, k_random<float, false>},
    {"random_uniform", NB_DTYPE_F64, k_random<double, false>},
    {"random_normal", NB_DTYPE_F32, k_random<float, true>},
    {"random_normal", NB_DTYPE_F64, k_random<double, true>},
    {"random_uniform", NB_DTYPE_F16, k_random<__half, false>},
    {"random_uniform", NB_DTYPE_BF16, k_random<__nv_bfloat16, false>},
    {"random_normal", NB_DTYPE_F16, k_random<__half, true>},
    {"random_normal", NB_DTYPE_BF16, k_random<__nv_bfloat16, true>},
    ALL_TYPED("gather", k_gather)
    // No bool scatter_add, as on the cpu: a sum of bools is not a bool (PyTorch refuses it too).
    {"scatter_add", NB_DTYPE_F32, k_scatter_add<float>},
    {"scatter_add", NB_DTYPE_F64, k_scatter_add<double>},
    {"scatter_add", NB_DTYPE_I32, k_scatter_add<int32_t>},
    {"scatter_add", NB_DTYPE_I64, k_scatter_add<int64_t>},
    {"scatter_add", NB_DTYPE_U8, k_scatter_add<uint8_t>},
    {"scatter_add", NB_DTYPE_F16, k_scatter_add<__half>},
    {"scatter_add", NB_DTYPE_BF16, k_scatter_add<__nv_bfloat16>},
};
extern "C" const size_t nbcu_index_count = sizeof nbcu_index_kernels / sizeof nbcu_index_kernels[0];
