// cuda_nn.cu - tier-2 kernels: relu_backward, softmax and log_softmax with their backwards (one
// block per row), the SGD and Adam steps (elementwise, PyTorch's update rules), and max_pool2d
// with its backward. float16/bfloat16 compute in float and round once per output element (the
// optimizer steps have no 16-bit kernels: the core's composites run them).
#include "cuda_common.cuh"

namespace nbcu {

// ---- relu_backward ----

template <class T> struct ReluBackF {
    T *out;
    const T *g, *x;
    // A select rather than g * (x > 0): an infinite gradient stays out of the zeroed positions.
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = widen(x[off[2]]) > opmath_t<T>(0) ? g[off[1]] : zero_of<T>();
    }
};

template <class T> static nb_status k_relu_backward(const nb_kernel_args *a)
{
    const char *op = "relu_backward";
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    for (int k = 0; k < 2 && st == NB_OK; k++) {
        st = check_dtype(op, k ? "x" : "grad", &a->in[k], dtype_of<T>::value);
        if (st == NB_OK)
            st = check_same_shape(op, k ? "x" : "grad", a->out, &a->in[k]);
    }
    if (st != NB_OK)
        return st;
    const nb_operand *ops[3] = {a->out, &a->in[0], &a->in[1]};
    return launch_ew<3>(op, a->device, ops,
                        ReluBackF<T>{data<T>(a->out), data<const T>(&a->in[0]),
                                     data<const T>(&a->in[1])});
}

// ---- softmax family: one block per row of the last dim ----

enum RowKind { SOFTMAX, LOG_SOFTMAX, SOFTMAX_BACKWARD, LOG_SOFTMAX_BACKWARD };

// Folds v over the block with f; every thread gets the result. blockDim.x is a multiple of 32.
template <class V, class F> __device__ V block_all(V v, F f, V *part)
{
    for (int s = 16; s > 0; s >>= 1)
        v = f(v, __shfl_xor_sync(0xffffffffu, v, s));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < nw; w++)
        v = f(v, part[w]);
    __syncthreads(); // part is reused by the next fold
    return v;
}

struct MaxNan {
    template <class V> __device__ V operator()(V a, V b) const
    {
        return is_nan(a) ? a : is_nan(b) ? b : a > b ? a : b;
    }
};
struct Plus {
    template <class V> __device__ V operator()(V a, V b) const { return a + b; }
};

__device__ inline float r_exp(float x) { return expf(x); }
__device__ inline double r_exp(double x) { return exp(x); }
__device__ inline float r_log(float x) { return logf(x); }
__device__ inline double r_log(double x) { return log(x); }

// rows: out (0), in0 (1), in1 (2) over all dims but the last; s0, s1, s2 are the operands'
// strides along the last dim, of size d. Everything is computed in A = opmath_t<T> (float32 in
// float32, with compensated sums: no fp64 on GPUs where it runs at 1/32-1/64 rate; float for
// the 16-bit types), and exp runs once per element where T holds exp(x - max) exactly: softmax
// keeps it in the output and scales it. A 16-bit output would round it twice, so there the exp
// is recomputed instead.
template <class T, RowKind K>
__global__ void row_kernel(Layout<3> rows, int64_t n_rows, int64_t d, int64_t s0, int64_t s1,
                           int64_t s2, T *out, const T *x, const T *y)
{
    typedef opmath_t<T> A;
    constexpr bool keep_exp = std::is_same<A, T>::value;
    __shared__ A part[32];
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        int64_t off[3];
        offsets(rows, r, off);
        T *o = out + off[0];
        const T *a = x + off[1], *b = y + off[2];
        if (K == SOFTMAX || K == LOG_SOFTMAX) {
            A mx = A(-INFINITY);
            for (int64_t k = threadIdx.x; k < d; k += blockDim.x)
                mx = MaxNan()(mx, widen(a[k * s1]));
            mx = block_all(mx, MaxNan(), part);
            Kahan<A> acc;
            for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
                A e = r_exp(widen(a[k * s1]) - mx);
                if (K == SOFTMAX && keep_exp)
                    o[k * s0] = convert<T>(e); // read back below by this same thread
                acc.add(e);
            }
            A sum = block_all(acc.value(), Plus(), part);
            if (K == SOFTMAX) {
                for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
                    A e = keep_exp ? widen(o[k * s0]) : r_exp(widen(a[k * s1]) - mx);
                    o[k * s0] = convert<T>(e / sum);
                }
            } else {
                A ls = r_log(sum);
                for (int64_t k = threadIdx.x; k < d; k += blockDim.x)
                    o[k * s0] = convert<T>((widen(a[k * s1]) - mx) - ls);
            }
        } else { // a = grad, b = the forward's output
            Kahan<A> acc;
            for (int64_t k = threadIdx.x; k < d; k += blockDim.x)
                acc.add(K == SOFTMAX_BACKWARD ? widen(a[k * s1]) * widen(b[k * s2])
                                              : widen(a[k * s1]));
            A sum = block_all(acc.value(), Plus(), part);
            for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
                A g = widen(a[k * s1]), yv = widen(b[k * s2]);
                o[k * s0] = convert<T>(K == SOFTMAX_BACKWARD ? yv * (g - sum)
                                                             : g - r_exp(yv) * sum);
            }
        }
    }
}

template <class T, RowKind K> static nb_status k_rows(const nb_kernel_args *a)
{
    static const char *names[] = {"softmax", "log_softmax", "softmax_backward",
                                  "log_softmax_backward"};
    const char *op = names[K];
    int n_in = K == SOFTMAX || K == LOG_SOFTMAX ? 1 : 2;
    nb_status st = check_args(op, a, n_in);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    for (int k = 0; k < n_in && st == NB_OK; k++) {
        st = check_dtype(op, k ? "output of the forward" : n_in == 2 ? "grad" : "input",
                         &a->in[k], dtype_of<T>::value);
        if (st == NB_OK)
            st = check_same_shape(op, "an input", a->out, &a->in[k]);
    }
    if (st != NB_OK)
        return st;
    const nb_operand *out = a->out, *x = &a->in[0], *y = &a->in[n_in - 1];
    int nd = out->ndim;
    if (a->i[0] != (nd ? nd - 1 : 0))
        return fail(NB_INVALID_ARGUMENT, "%s: dim %lld given, this kernel works along the last "
                    "dim (%d)", op, (long long)a->i[0], nd ? nd - 1 : 0);
    if (numel(out) == 0)
        return NB_OK;
    int64_t d = nd ? out->shape[nd - 1] : 1, shape[NB_MAX_DIMS] = {0};
    for (int k = 0; k < nd; k++)
        shape[k] = k == nd - 1 ? 1 : out->shape[k];
    const nb_operand *ops[3] = {out, x, y};
    Layout<3> rows = make_layout<3>(nd, shape, ops);
    int64_t n_rows = numel(out) / d;
    auto last = [&](const nb_operand *o) {
        return nd && o->shape[nd - 1] == d ? o->strides[nd - 1] : 0;
    };
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;
    int64_t t = (d + 31) / 32 * 32;
    int threads = (int)(t > 256 ? 256 : t);
    unsigned grid = (unsigned)(n_rows < 65536 ? n_rows : 65536);
    row_kernel<T, K><<<grid, threads, 0, s>>>(rows, n_rows, d, last(out), last(x), last(y),
                                              data<T>(out), data<const T>(x), data<const T>(y));
    return launched(op);
}

// ---- optimizer steps ----

template <class T> struct SgdF {
    T *p;
    const T *g;
    T *buf;
    T lr, momentum, dampening, wd;
    bool nesterov, first;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        T pv = p[off[0]], gv = g[off[1]];
        if (wd != T(0))
            gv += wd * pv;
        if (momentum != T(0)) {
            T b = first ? gv : momentum * buf[off[2]] + (T(1) - dampening) * gv;
            buf[off[2]] = b;
            gv = nesterov ? gv + momentum * b : b;
        }
        p[off[0]] = pv - lr * gv;
    }
};

template <class T> static nb_status k_sgd_step(const nb_kernel_args *a)
{
    const char *op = "sgd_step";
    bool momentum = a && a->f[1] != 0;
    // Without momentum the buffer is not used and may be left out.
    nb_status st = check_args(op, a, a && a->n_in == 1 && !momentum ? 1 : 2);
    if (st == NB_OK)
        st = check_dtype(op, "param (output)", a->out, dtype_of<T>::value);
    for (int k = 0; k < a->n_in && st == NB_OK; k++) {
        st = check_dtype(op, k ? "momentum buffer" : "grad", &a->in[k], dtype_of<T>::value);
        if (st == NB_OK)
            st = check_same_shape(op, k ? "momentum buffer" : "grad", a->out, &a->in[k]);
    }
    if (st != NB_OK)
        return st;
    const nb_operand *buf = &a->in[a->n_in - 1];
    const nb_operand *ops[3] = {a->out, &a->in[0], buf};
    SgdF<T> f{data<T>(a->out), data<const T>(&a->in[0]), data<T>(buf), (T)a->f[0], (T)a->f[1],
              (T)a->f[2], (T)a->f[3], a->i[0] != 0, a->i[1] != 0};
    if (!momentum)
        f.momentum = T(0);
    return launch_ew<3>(op, a->device, ops, f);
}

template <class T> struct AdamF {
    T *p;
    const T *g;
    T *m, *v;
    T lr, b1, b2, eps, wd, step_size, bc2_sqrt;
    bool adamw;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        T pv = p[off[0]], gv = g[off[1]];
        if (wd != T(0)) {
            if (adamw)
                pv *= T(1) - lr * wd;
            else
                gv += wd * pv;
        }
        T mv = b1 * m[off[2]] + (T(1) - b1) * gv;
        T vv = b2 * v[off[3]] + (T(1) - b2) * gv * gv;
        m[off[2]] = mv;
        v[off[3]] = vv;
        p[off[0]] = pv - step_size * mv / (sqrt(vv) / bc2_sqrt + eps);
    }
};

template <class T> static nb_status k_adam_step(const nb_kernel_args *a)
{
    const char *op = "adam_step";
    nb_status st = check_args(op, a, 3);
    if (st == NB_OK)
        st = check_dtype(op, "param (output)", a->out, dtype_of<T>::value);
    static const char *names[] = {"grad", "exp_avg", "exp_avg_sq"};
    for (int k = 0; k < 3 && st == NB_OK; k++) {
        st = check_dtype(op, names[k], &a->in[k], dtype_of<T>::value);
        if (st == NB_OK)
            st = check_same_shape(op, names[k], a->out, &a->in[k]);
    }
    if (st != NB_OK)
        return st;
    if (a->i[0] < 1)
        return fail(NB_INVALID_ARGUMENT, "adam_step: step %lld given, expected >= 1 (counted "
                    "from 1)", (long long)a->i[0]);
    double lr = a->f[0], b1 = a->f[1], b2 = a->f[2], step = (double)a->i[0];
    double bc1 = 1.0 - pow(b1, step), bc2 = 1.0 - pow(b2, step);
    const nb_operand *ops[4] = {a->out, &a->in[0], &a->in[1], &a->in[2]};
    AdamF<T> f{data<T>(a->out), data<const T>(&a->in[0]), data<T>(&a->in[1]), data<T>(&a->in[2]),
               (T)lr, (T)b1, (T)b2, (T)a->f[3], (T)a->f[4], (T)(lr / bc1), (T)sqrt(bc2),
               a->i[1] != 0};
    return launch_ew<4>(op, a->device, ops, f);
}

// ---- max_pool2d ----

// x strides and sizes, and the window, for the pooling functors.
struct Pool {
    int64_t n, c, h, w, oh, ow;
    int64_t xs[4];
    int64_t kh, kw, sh, sw, ph, pw;
};

// Operand 0 the output, 1 the indices (both (N,C,OH,OW)); k's coordinates come from out's shape.
template <class T> struct PoolF {
    T *out;
    int64_t *ind;
    const T *x;
    Pool p;
    __device__ void operator()(int64_t k, const int64_t *off) const
    {
        int64_t ow = k % p.ow, oh = (k / p.ow) % p.oh, c = (k / (p.ow * p.oh)) % p.c;
        int64_t n = k / (p.ow * p.oh * p.c);
        int64_t h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
        const T *xp = x + n * p.xs[0] + c * p.xs[1];
        opmath_t<T> best = opmath_t<T>(-INFINITY);
        int64_t at = -1;
        for (int64_t i = 0; i < p.kh; i++) {
            int64_t h = h0 + i;
            if (h < 0 || h >= p.h)
                continue;
            for (int64_t j = 0; j < p.kw; j++) {
                int64_t w = w0 + j;
                if (w < 0 || w >= p.w)
                    continue;
                opmath_t<T> v = widen(xp[h * p.xs[2] + w * p.xs[3]]);
                if (at < 0 || v > best || (is_nan(v) && !is_nan(best))) {
                    best = v;
                    at = h * p.w + w;
                }
            }
        }
        out[off[0]] = convert<T>(best); // a widened input: exact
        ind[off[1]] = at < 0 ? 0 : at;
    }
};

static nb_status pool_params(const char *op, const nb_kernel_args *a, const nb_operand *x,
                             const nb_operand *o, Pool *p)
{
    if (x->ndim != 4 || o->ndim != 4)
        return fail(NB_SHAPE_MISMATCH, "%s: expected 4-d (N,C,H,W) tensors, got %d-d and %d-d",
                    op, (int)x->ndim, (int)o->ndim);
    *p = Pool{x->shape[0], x->shape[1], x->shape[2], x->shape[3], o->shape[2], o->shape[3],
              {x->strides[0], x->strides[1], x->strides[2], x->strides[3]},
              a->i[0], a->i[1], a->i[2], a->i[3], a->i[4], a->i[5]};
    if (p->kh < 1 || p->kw < 1 || p->sh < 1 || p->sw < 1 || p->ph < 0 || p->pw < 0)
        return fail(NB_INVALID_ARGUMENT, "%s: kernel %lldx%lld, stride %lldx%lld, padding "
                    "%lldx%lld; expected kernel and stride >= 1 and padding >= 0", op,
                    (long long)p->kh, (long long)p->kw, (long long)p->sh, (long long)p->sw,
                    (long long)p->ph, (long long)p->pw);
    if (o->shape[0] != p->n || o->shape[1] != p->c)
        return fail(NB_SHAPE_MISMATCH, "%s: output batch/channels %lldx%lld, expected the "
                    "input's %lldx%lld", op, (long long)o->shape[0], (long long)o->shape[1],
                    (long long)p->n, (long long)p->c);
    return NB_OK;
}

template <class T> static nb_status k_max_pool2d(const nb_kernel_args *a)
{
    const char *op = "max_pool2d";
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "input", &a->in[0], dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "indices (input 1)", &a->in[1], NB_DTYPE_I64);
    Pool p;
    if (st == NB_OK)
        st = pool_params(op, a, &a->in[0], a->out, &p);
    if (st == NB_OK && a->in[1].ndim != 4)
        st = fail(NB_SHAPE_MISMATCH, "max_pool2d: indices have %d dims, expected 4",
                  (int)a->in[1].ndim);
    for (int d = 0; d < 4 && st == NB_OK; d++)
        if (a->in[1].shape[d] != a->out->shape[d])
            st = fail(NB_SHAPE_MISMATCH, "max_pool2d: indices differ from the output in dim %d",
                      d);
    if (st != NB_OK)
        return st;
    const nb_operand *ops[2] = {a->out, &a->in[1]};
    return launch_ew<2>(op, a->device, ops,
                        PoolF<T>{data<T>(a->out), data<int64_t>(&a->in[1]),
                                 data<const T>(&a->in[0]), p});
}

template <class T> struct ZeroF {
    T *out;
    __device__ void operator()(int64_t, const int64_t *off) const { out[off[0]] = T(0); }
};

// Operand 0 the grad, 1 the indices (both (N,C,OH,OW)); out (N,C,H,W) gets grad at each index,
// summed with atomics in opmath_t<T> (a 16-bit input gradient collects in a float32 buffer and
// is rounded once, so neither the order of the atomics nor 16-bit partial sums change it).
template <class T> struct PoolBackF {
    opmath_t<T> *out;
    const T *g;
    const int64_t *ind;
    Pool p; // p.xs are out's strides here
    unsigned long long *flags;
    __device__ void operator()(int64_t k, const int64_t *off) const
    {
        int64_t c = (k / (p.ow * p.oh)) % p.c, n = k / (p.ow * p.oh * p.c), at = ind[off[1]];
        if (at < 0 || at >= p.h * p.w) { // as the cpu: an error, found at the next sync
            report_bad(flags, NBCU_IDX_MAX_POOL2D_BACKWARD, at, p.h * p.w);
            return;
        }
        atomicAdd(&out[n * p.xs[0] + c * p.xs[1] + (at / p.w) * p.xs[2] + (at % p.w) * p.xs[3]],
                  widen(g[off[0]]));
    }
};

template <class T> static nb_status k_max_pool2d_backward(const nb_kernel_args *a)
{
    const char *op = "max_pool2d_backward";
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "grad", &a->in[0], dtype_of<T>::value);
    if (st == NB_OK)
        st = check_dtype(op, "indices", &a->in[1], NB_DTYPE_I64);
    Pool p;
    // The pooled shape is the grad's; the input shape is the output's.
    if (st == NB_OK)
        st = pool_params(op, a, a->out, &a->in[0], &p);
    if (st == NB_OK)
        st = check_same_shape(op, "indices", &a->in[0], &a->in[1]);
    if (st != NB_OK)
        return st;
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK) // before nbcu_index_flags
        return st;
    AccumOut<T> acc;
    if ((st = acc.begin(op, a->device, s, a->out, false)) != NB_OK)
        return st;
    const nb_operand *zo[1] = {acc.target()};
    if ((st = launch_ew<1>(op, a->device, zo, ZeroF<opmath_t<T>>{acc.ptr()})) != NB_OK)
        return st;
    for (int d = 0; d < 4; d++)
        p.xs[d] = acc.target()->strides[d];
    const nb_operand *ops[2] = {&a->in[0], &a->in[1]};
    if ((st = launch_ew<2>(op, a->device, ops,
                           PoolBackF<T>{acc.ptr(), data<const T>(&a->in[0]),
                                        data<const int64_t>(&a->in[1]), p,
                                        nbcu_index_flags(a->device)})) != NB_OK)
        return st;
    return acc.end();
}

} // namespace nbcu

using namespace nbcu;

#define FLOATS(name, tmpl) {name, NB_DTYPE_F32, tmpl<float>}, {name, NB_DTYPE_F64, tmpl<double>},
#define FLOATS16(name, tmpl)                                                                  \
    FLOATS(name, tmpl) {name, NB_DTYPE_F16, tmpl<__half>}, {name, NB_DTYPE_BF16, tmpl<__nv_bfloat16>},
#define ROWS(name, K)                                                                         \
    {name, NB_DTYPE_F32, k_rows<float, K>}, {name, NB_DTYPE_F64, k_rows<double, K>},          \
    {name, NB_DTYPE_F16, k_rows<__half, K>}, {name, NB_DTYPE_BF16, k_rows<__nv_bfloat16, K>},

extern "C" const nb_kernel_desc nbcu_nn_kernels[] = {
    FLOATS16("relu_backward", k_relu_backward)
    ROWS("softmax", SOFTMAX)
    ROWS("log_softmax", LOG_SOFTMAX)
    ROWS("softmax_backward", SOFTMAX_BACKWARD)
    ROWS("log_softmax_backward", LOG_SOFTMAX_BACKWARD)
    FLOATS("sgd_step", k_sgd_step)
    FLOATS("adam_step", k_adam_step)
    FLOATS16("max_pool2d", k_max_pool2d)
    FLOATS16("max_pool2d_backward", k_max_pool2d_backward)
};
extern "C" const size_t nbcu_nn_count = sizeof nbcu_nn_kernels / sizeof nbcu_nn_kernels[0];
