// cuda_conv.cu - conv2d and its two backwards as im2col + cuBLAS gemm (col2im for the input
// gradient). The column buffer holds a chunk of the batch at a time (at most
// NBCU_CONV_SCRATCH bytes), so a large batch needs no more scratch memory than a small one.
// float16/bfloat16: 16-bit operands, float32 accumulation (cuBLAS's compute type, and float32
// buffers wherever partial results are summed: col2im's columns, the weight gradient).
#include "cuda_common.cuh"

namespace nbcu {

#define NBCU_CONV_SCRATCH ((size_t)256 << 20)

// Sizes of one convolution: x (N,C,H,W), w (O,C/g,kh,kw), y (N,O,OH,OW).
struct Conv {
    int64_t n, c, h, w, o, oh, ow, kh, kw;
    int64_t sh, sw, ph, pw, dh, dw, groups;
    int64_t cg, og, k, ck, l; // C/g, O/g, kh*kw, cg*k, oh*ow
};

// Column buffer of group gi for images n0.. : col[b][r][l] with r = (channel in group, ki, kj)
// and l = (oh, ow); zero where the window reaches into the padding. x has strides xs.
template <class T> struct Im2colF {
    T *col;
    const T *x;
    int64_t xs[4];
    Conv p;
    int64_t n0, gi;
    __device__ void operator()(int64_t i, const int64_t *) const
    {
        int64_t l = i % p.l, r = (i / p.l) % p.ck, b = i / (p.l * p.ck);
        int64_t c = gi * p.cg + r / p.k, ki = (r % p.k) / p.kw, kj = r % p.kw;
        int64_t h = (l / p.ow) * p.sh - p.ph + ki * p.dh;
        int64_t w = (l % p.ow) * p.sw - p.pw + kj * p.dw;
        col[i] = h >= 0 && h < p.h && w >= 0 && w < p.w
                     ? x[(n0 + b) * xs[0] + c * xs[1] + h * xs[2] + w * xs[3]]
                     : zero_of<T>();
    }
};

// Input gradient of images n0.. from a column buffer of all groups, col[b][c*k + ki*kw + kj][l]
// (in opmath_t<T>): each x position sums the window positions that read it. out has strides os.
template <class T> struct Col2imF {
    T *out;
    const opmath_t<T> *col;
    int64_t os[4];
    Conv p;
    int64_t n0;
    __device__ void operator()(int64_t i, const int64_t *) const
    {
        int64_t w = i % p.w, h = (i / p.w) % p.h, c = (i / (p.w * p.h)) % p.c;
        int64_t b = i / (p.w * p.h * p.c);
        const opmath_t<T> *cb = col + b * p.c * p.k * p.l + c * p.k * p.l;
        opmath_t<T> sum = 0;
        for (int64_t ki = 0; ki < p.kh; ki++) {
            int64_t th = h + p.ph - ki * p.dh;
            if (th < 0 || th % p.sh)
                continue;
            int64_t oh = th / p.sh;
            if (oh >= p.oh)
                continue;
            for (int64_t kj = 0; kj < p.kw; kj++) {
                int64_t tw = w + p.pw - kj * p.dw;
                if (tw < 0 || tw % p.sw)
                    continue;
                int64_t ow = tw / p.sw;
                if (ow < p.ow)
                    sum += cb[(ki * p.kw + kj) * p.l + oh * p.ow + ow];
            }
        }
        out[(n0 + b) * os[0] + c * os[1] + h * os[2] + w * os[3]] = convert<T>(sum);
    }
};

template <class T> struct ZeroAllF {
    T *out;
    __device__ void operator()(int64_t, const int64_t *off) const { out[off[0]] = zero_of<T>(); }
};

// Runs f(i) for i in [0, n) on the device's stream.
template <class F> static nb_status launch_n(const char *op, int device, int64_t n, F f)
{
    if (n == 0)
        return NB_OK;
    Layout<1> L;
    memset(&L, 0, sizeof L);
    L.ndim = 1;
    L.shape[0] = n;
    L.stride[0][0] = 1;
    cudaStream_t s;
    nb_status st = nbcu_stream(op, device, &s);
    if (st != NB_OK)
        return st;
    ew_kernel<1, F><<<grid_for(n, 256), 256, 0, s>>>(L, n, f);
    return launched(op);
}

// Checks x, w, y and the i[] parameters (stride, padding, dilation, groups) against each other.
static nb_status conv_params(const char *op, const nb_kernel_args *a, const nb_operand *x,
                             const nb_operand *w, const nb_operand *y, Conv *p)
{
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return fail(NB_SHAPE_MISMATCH, "%s: expected 4-d input, weight and output, got %d-d, "
                    "%d-d and %d-d", op, (int)x->ndim, (int)w->ndim, (int)y->ndim);
    Conv c;
    c.n = x->shape[0], c.c = x->shape[1], c.h = x->shape[2], c.w = x->shape[3];
    c.o = w->shape[0], c.cg = w->shape[1], c.kh = w->shape[2], c.kw = w->shape[3];
    c.sh = a->i[0], c.sw = a->i[1], c.ph = a->i[2], c.pw = a->i[3];
    c.dh = a->i[4], c.dw = a->i[5], c.groups = a->i[6];
    if (c.sh < 1 || c.sw < 1 || c.ph < 0 || c.pw < 0 || c.dh < 1 || c.dw < 1 || c.groups < 1)
        return fail(NB_INVALID_ARGUMENT, "%s: stride %lldx%lld, padding %lldx%lld, dilation "
                    "%lldx%lld, groups %lld; expected stride, dilation and groups >= 1 and "
                    "padding >= 0", op, (long long)c.sh, (long long)c.sw, (long long)c.ph,
                    (long long)c.pw, (long long)c.dh, (long long)c.dw, (long long)c.groups);
    if (c.cg * c.groups != c.c || c.o % c.groups)
        return fail(NB_SHAPE_MISMATCH, "%s: %lld input channels and weight [%lld,%lld,%lld,"
                    "%lld] do not fit %lld groups", op, (long long)c.c, (long long)c.o,
                    (long long)c.cg, (long long)c.kh, (long long)c.kw, (long long)c.groups);
    c.oh = (c.h + 2 * c.ph - c.dh * (c.kh - 1) - 1) / c.sh + 1;
    c.ow = (c.w + 2 * c.pw - c.dw * (c.kw - 1) - 1) / c.sw + 1;
    if (y->shape[0] != c.n || y->shape[1] != c.o || y->shape[2] != c.oh || y->shape[3] != c.ow)
        return fail(NB_SHAPE_MISMATCH, "%s: output [%lld,%lld,%lld,%lld], expected [%lld,%lld,"
                    "%lld,%lld]", op, (long long)y->shape[0], (long long)y->shape[1],
                    (long long)y->shape[2], (long long)y->shape[3], (long long)c.n,
                    (long long)c.o, (long long)c.oh, (long long)c.ow);
    c.og = c.o / c.groups;
    c.k = c.kh * c.kw;
    c.ck = c.cg * c.k;
    c.l = c.oh * c.ow;
    *p = c;
    return NB_OK;
}

// A pointer to the operand's data laid out densely: the operand itself, or a copy in scratch.
template <class T>
static nb_status dense_in(const char *op, int device, cudaStream_t s, const nb_operand *o,
                          Scratch &scratch, const T **p)
{
    if (is_contiguous(o)) {
        *p = data<const T>(o);
        return NB_OK;
    }
    nb_status st = scratch.get(op, device, s, (size_t)numel(o) * sizeof(T));
    if (st != NB_OK)
        return st;
    Dense d(scratch.p, dtype_of<T>::value, o->ndim, o->shape);
    *p = (const T *)scratch.p;
    return copy_strided(op, device, &d.op, o);
}

// Images per chunk so that `per_image` elements each fit the scratch budget.
template <class T> static int64_t chunk_of(int64_t n, int64_t per_image)
{
    int64_t c = (int64_t)(NBCU_CONV_SCRATCH / sizeof(T)) / (per_image > 0 ? per_image : 1);
    return c < 1 ? 1 : c > n ? n : c;
}

static nb_status check_conv_dtypes(const char *op, const nb_kernel_args *a, nb_dtype t)
{
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, t);
    for (int k = 0; k < 2 && st == NB_OK; k++)
        st = check_dtype(op, k ? "input 1" : "input 0", &a->in[k], t);
    return st;
}

template <class T> static nb_status zero(const char *op, int device, const nb_operand *o)
{
    const nb_operand *ops[1] = {o};
    return launch_ew<1>(op, device, ops, ZeroAllF<T>{data<T>(o)});
}

template <class T> static nb_status k_conv2d(const nb_kernel_args *a)
{
    const char *op = "conv2d";
    Conv p;
    nb_status st = check_conv_dtypes(op, a, dtype_of<T>::value);
    if (st == NB_OK)
        st = conv_params(op, a, &a->in[0], &a->in[1], a->out, &p);
    if (st != NB_OK)
        return st;
    const nb_operand *x = &a->in[0], *y = a->out;
    if (numel(y) == 0)
        return NB_OK;
    if (p.ck == 0)
        return zero<T>(op, a->device, y);
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;
    Scratch sw, sy, scol;
    const T *wp;
    if ((st = dense_in<T>(op, a->device, s, &a->in[1], sw, &wp)) != NB_OK)
        return st;
    bool direct = is_contiguous(y);
    T *yp = data<T>(y);
    if (!direct) {
        if ((st = sy.get(op, a->device, s, (size_t)numel(y) * sizeof(T))) != NB_OK)
            return st;
        yp = (T *)sy.p;
    }
    int64_t nc = chunk_of<T>(p.n, p.ck * p.l);
    if ((st = scol.get(op, a->device, s, (size_t)(nc * p.ck * p.l) * sizeof(T))) != NB_OK)
        return st;
    for (int64_t n0 = 0; n0 < p.n && st == NB_OK; n0 += nc) {
        int64_t b = p.n - n0 < nc ? p.n - n0 : nc;
        for (int64_t gi = 0; gi < p.groups && st == NB_OK; gi++) {
            Im2colF<T> f{(T *)scol.p, data<const T>(x),
                         {x->strides[0], x->strides[1], x->strides[2], x->strides[3]}, p, n0, gi};
            st = launch_n(op, a->device, b * p.ck * p.l, f);
            // y[n][group rows] (og x l) = w[group] (og x ck) @ col[n] (ck x l)
            if (st == NB_OK)
                st = gemm_rm<T>(op, a->device, false, false, p.og, p.l, p.ck, 1,
                                wp + gi * p.og * p.ck, p.ck, 0, (const T *)scol.p, p.l,
                                p.ck * p.l, 0, yp + (n0 * p.o + gi * p.og) * p.l, p.l,
                                p.o * p.l, b);
        }
    }
    if (st == NB_OK && !direct) {
        Dense d(sy.p, dtype_of<T>::value, 4, y->shape);
        st = copy_strided(op, a->device, y, &d.op);
    }
    return st;
}

template <class T> static nb_status k_conv2d_backward_input(const nb_kernel_args *a)
{
    const char *op = "conv2d_backward_input";
    Conv p;
    nb_status st = check_conv_dtypes(op, a, dtype_of<T>::value);
    // out is the input gradient (x's shape), in[0] the output gradient (y's shape).
    if (st == NB_OK)
        st = conv_params(op, a, a->out, &a->in[1], &a->in[0], &p);
    if (st != NB_OK)
        return st;
    const nb_operand *gx = a->out;
    if (numel(gx) == 0)
        return NB_OK;
    if (p.l == 0 || p.o == 0)
        return zero<T>(op, a->device, gx);
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;
    Scratch sg, sw, scol;
    const T *gp, *wp;
    if ((st = dense_in<T>(op, a->device, s, &a->in[0], sg, &gp)) != NB_OK ||
        (st = dense_in<T>(op, a->device, s, &a->in[1], sw, &wp)) != NB_OK)
        return st;
    typedef opmath_t<T> A; // the columns: each input position sums several of them
    int64_t nc = chunk_of<A>(p.n, p.c * p.k * p.l);
    if ((st = scol.get(op, a->device, s, (size_t)(nc * p.c * p.k * p.l) * sizeof(A))) != NB_OK)
        return st;
    A *col = (A *)scol.p;
    for (int64_t n0 = 0; n0 < p.n && st == NB_OK; n0 += nc) {
        int64_t b = p.n - n0 < nc ? p.n - n0 : nc;
        // col[n][group rows] (ck x l) = w[group]^T (ck x og) @ grad[n][group] (og x l)
        for (int64_t gi = 0; gi < p.groups && st == NB_OK; gi++)
            st = gemm_rm<T, A>(op, a->device, true, false, p.ck, p.l, p.og, 1,
                               wp + gi * p.og * p.ck, p.ck, 0, gp + (n0 * p.o + gi * p.og) * p.l,
                               p.l, p.o * p.l, 0, col + gi * p.ck * p.l, p.l, p.c * p.k * p.l,
                               b);
        if (st == NB_OK) {
            Col2imF<T> f{data<T>(gx), col,
                         {gx->strides[0], gx->strides[1], gx->strides[2], gx->strides[3]}, p, n0};
            st = launch_n(op, a->device, b * p.c * p.h * p.w, f);
        }
    }
    return st;
}

template <class T> static nb_status k_conv2d_backward_weight(const nb_kernel_args *a)
{
    const char *op = "conv2d_backward_weight";
    Conv p;
    nb_status st = check_conv_dtypes(op, a, dtype_of<T>::value);
    // out is the weight gradient (w's shape), in[0] the output gradient, in[1] x.
    if (st == NB_OK)
        st = conv_params(op, a, &a->in[1], a->out, &a->in[0], &p);
    if (st != NB_OK)
        return st;
    const nb_operand *gw = a->out, *x = &a->in[1];
    if (numel(gw) == 0)
        return NB_OK;
    if (p.n == 0 || p.l == 0)
        return zero<T>(op, a->device, gw);
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;
    Scratch sg, sw, scol;
    const T *gp;
    if ((st = dense_in<T>(op, a->device, s, &a->in[0], sg, &gp)) != NB_OK)
        return st;
    // The images' products accumulate in A (float32 for a 16-bit gradient, rounded once at the
    // end), into gw itself where it is contiguous and of that type.
    typedef opmath_t<T> A;
    bool direct = is_contiguous(gw) && std::is_same<A, T>::value;
    A *wp = (A *)data<T>(gw);
    if (!direct) {
        if ((st = sw.get(op, a->device, s, (size_t)numel(gw) * sizeof(A))) != NB_OK)
            return st;
        wp = (A *)sw.p;
    }
    int64_t nc = chunk_of<T>(p.n, p.ck * p.l);
    if ((st = scol.get(op, a->device, s, (size_t)(nc * p.ck * p.l) * sizeof(T))) != NB_OK)
        return st;
    const T *col = (const T *)scol.p;
    for (int64_t gi = 0; gi < p.groups && st == NB_OK; gi++)
        for (int64_t n0 = 0; n0 < p.n && st == NB_OK; n0 += nc) {
            int64_t b = p.n - n0 < nc ? p.n - n0 : nc;
            Im2colF<T> f{(T *)scol.p, data<const T>(x),
                         {x->strides[0], x->strides[1], x->strides[2], x->strides[3]}, p, n0, gi};
            st = launch_n(op, a->device, b * p.ck * p.l, f);
            // w[group] (og x ck) += grad[n][group] (og x l) @ col[n]^T (l x ck), image by image
            for (int64_t j = 0; j < b && st == NB_OK; j++)
                st = gemm_rm<T, A>(op, a->device, false, true, p.og, p.ck, p.l, 1,
                                   gp + ((n0 + j) * p.o + gi * p.og) * p.l, p.l, 0,
                                   col + j * p.ck * p.l, p.l, 0, n0 + j == 0 ? 0 : 1,
                                   wp + gi * p.og * p.ck, p.ck, 0, 1);
        }
    if (st == NB_OK && !direct) {
        Dense d(sw.p, dtype_of<A>::value, 4, gw->shape);
        st = copy_strided(op, a->device, gw, &d.op);
    }
    return st;
}

} // namespace nbcu

using namespace nbcu;

#define FLOATS(name, tmpl)                                                                    \
    {name, NB_DTYPE_F32, tmpl<float>}, {name, NB_DTYPE_F64, tmpl<double>},                    \
    {name, NB_DTYPE_F16, tmpl<__half>}, {name, NB_DTYPE_BF16, tmpl<__nv_bfloat16>},

extern "C" const nb_kernel_desc nbcu_conv_kernels[] = {
    FLOATS("conv2d", k_conv2d)
    FLOATS("conv2d_backward_input", k_conv2d_backward_input)
    FLOATS("conv2d_backward_weight", k_conv2d_backward_weight)
};
extern "C" const size_t nbcu_conv_count = sizeof nbcu_conv_kernels / sizeof nbcu_conv_kernels[0];
