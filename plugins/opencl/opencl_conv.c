/* opencl_conv.c - conv2d and its two backwards as im2col/col2im kernels around GEMMs (CLBlast
 * where built with it, see opencl_blas.c), and max_pool2d forward and backward. float16 and
 * bfloat16 run as the cpu plugin runs them: operands read as float32, float32 GEMMs and sums,
 * the result rounded once into the 16-bit output. */
#include "opencl_internal.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

/* ---- Tier 2: conv2d and max_pool2d ---- */

/* Launches kernel kid over n work-items with the three buffers of v and p. */
static nb_status run_flat(int device, const char *op, nb_dtype t, ocl_kid kid, int64_t n,
                          const ocl_view *v, const nbk_conv *p)
{
    if (n == 0)
        return NB_OK;
    ocl_dev *d = ocl_device(device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    size_t wg;
    cl_kernel k = ocl_kernel(d, t, kid, op, &wg);
    if (!k)
        return NB_DEVICE_ERROR;
    ocl_arg args[] = {OCL_ARG(v[0].mem), OCL_ARG(v[1].mem), OCL_ARG(v[2].mem),
                      {sizeof *p, p}};
    size_t local = wg < 128 ? wg : 128;
    /* at least 4 work-groups per compute unit where the work allows: the weight gradient has
     * one long-running work-item per tap of a channel block (9 for LeNet's first conv), and
     * one group of them would leave a CPU runtime's second core idle */
    size_t want = (size_t)n / (4 * (size_t)d->compute_units);
    if (want < local)
        local = want < 1 ? 1 : ocl_pow2_floor(want);
    size_t global = ((size_t)n + local - 1) / local * local;
    return ocl_launch(d, k, op, 4, args, 1, &global, &local);
}

/* out, in[0], in[1] as 4-d float tensors of one dtype (in[1] int64 for the pooling indices). */
static nb_status check4(const char *op, const nb_kernel_args *a, int idx_dtype, ocl_view *v)
{
    nb_status st = ocl_n_inputs(op, a, 2);
    if (st == NB_OK)
        st = ocl_check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && !OCL_IS_FLOAT(a->out->dtype))
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s, expected f32, f64, f16 or bf16",
                 op, ocl_dt_name[a->out->dtype]);
    if (st == NB_OK)
        st = ocl_check(op, "input 0", &a->in[0], (int)a->out->dtype, &v[1]);
    if (st == NB_OK)
        st = ocl_check(op, "input 1", &a->in[1], idx_dtype >= 0 ? idx_dtype : (int)a->out->dtype,
                       &v[2]);
    if (st == NB_OK && (a->out->ndim != 4 || a->in[0].ndim != 4 || a->in[1].ndim != 4))
        st = ERR(NB_SHAPE_MISMATCH, "opencl %s: operands have %d, %d and %d dims, expected 4 "
                 "each", op, (int)a->out->ndim, (int)a->in[0].ndim, (int)a->in[1].ndim);
    return st;
}

/* ---- conv2d as GEMMs ----
 * With L = OH*OW output positions per image and K = C/groups*KH*KW taps per output channel:
 *   col (C*KH*KW, N, L)   im2col of x: row (c, kh, kw), column (n, oh, ow)
 *   yt  (O, N, L)         y with its first two dims swapped, so a group's rows are one matrix
 * and each direction is one GEMM per group with the whole batch in its n (or k) dimension:
 *   forward          yt_g = w_g (O/g x K) @ col_g (K x N*L), then yt is copied into y
 *   backward input   col_g = w_g^T @ yt_g (yt = grad y), then col2im sums col into grad x
 *   backward weight  grad w_g = yt_g @ col_g^T (yt = grad y, col = im2col of x) */

/* The dtype a conv of dtype t computes and keeps its temporaries in. */
static nb_dtype compute_dtype(nb_dtype t) { return OCL_IS_HALF(t) ? NB_DTYPE_F32 : t; }

/* Copies a 4-d tensor of shape sh from (src, soff, sst) of dtype s to (dst, doff, dst_st) of
 * dtype t with the copy kernel: widening 16 to 32 bits is exact, narrowing rounds once. */
static nb_status copy4(ocl_dev *d, const char *op, nb_dtype t, nb_dtype s, const int64_t *sh,
                       cl_mem dst, int64_t doff, const int64_t *dst_st, cl_mem src,
                       int64_t soff, const int64_t *sst)
{
    const int64_t *strides[2] = {dst_st, sst};
    int64_t off[2] = {doff, soff};
    nbk_geom g;
    ocl_geom_make(&g, 4, sh, 2, strides, off);
    ocl_view v[2] = {{dst, doff, NULL}, {src, soff, NULL}};
    ocl_kid kid = s == NB_DTYPE_F32 ? OCL_K_copy_from_f32
                : s == NB_DTYPE_F64 ? OCL_K_copy_from_f64
                : s == NB_DTYPE_F16 ? OCL_K_copy_from_f16 : OCL_K_copy_from_bf16;
    return ocl_run_elementwise(d->index, op, t, kid, 2, v, &g, 0, NULL);
}

/* v's place in p: offset, strides, and the elements its buffer holds */
static void conv_role(int64_t *off, int64_t *st, int64_t *len, const ocl_view *v)
{
    *off = v->off;
    for (int k = 0; k < 4; k++)
        st[k] = v->o->strides[k];
    *len = (int64_t)(((const ocl_buf *)v->o->handle)->bytes / ocl_dt_size[v->o->dtype]);
}

/* run_flat for a kernel that adds into its output v[0], whose place in p is (off, st) and whose
 * shape is sh. A 16-bit output is summed in a dense float32 temporary instead and rounded once
 * into v[0] afterwards, so no partial sum is rounded to 16 bits. */
static nb_status run_flat_sum(int device, const char *op, nb_dtype t, ocl_kid kid, int64_t n,
                              const ocl_view *v, nbk_conv *p, int64_t *off, int64_t *st,
                              const int64_t *sh)
{
    if (!OCL_IS_HALF(t) || n == 0)
        return run_flat(device, op, t, kid, n, v, p);
    ocl_dev *d = ocl_device(device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    /* sh is an existing tensor's (checked against its buffer): 4 bytes each cannot overflow */
    const int64_t dense[4] = {sh[1] * sh[2] * sh[3], sh[2] * sh[3], sh[3], 1};
    const int64_t off0 = *off, st0[4] = {st[0], st[1], st[2], st[3]};
    ocl_view tv[3] = {v[0], v[1], v[2]};
    ocl_lock(d); /* the temporary stays ours until the copy out is queued */
    nb_status s = ocl_tmp(d, op, 3, (size_t)(sh[0] * dense[0]) * 4, &tv[0].mem);
    if (s == NB_OK) {
        *off = 0;
        memcpy(st, dense, sizeof dense);
        s = run_flat(device, op, t, kid, n, tv, p);
        *off = off0;
        memcpy(st, st0, sizeof st0);
    }
    if (s == NB_OK)
        s = copy4(d, op, t, NB_DTYPE_F32, sh, v[0].mem, off0, st0, tv[0].mem, 0, dense);
    ocl_unlock(d);
    return s;
}

/* Launches a conv.cl kernel (im2col/col2im) over n work-items: out, in, p. */
static nb_status launch_cols(ocl_dev *d, const char *op, nb_dtype t, ocl_kid kid, int64_t n,
                             cl_mem out, cl_mem in, const nbk_conv *p)
{
    size_t wg;
    cl_kernel k = ocl_kernel(d, t, kid, op, &wg);
    if (!k)
        return NB_DEVICE_ERROR;
    ocl_arg args[] = {OCL_ARG(out), OCL_ARG(in), {sizeof *p, p}};
    size_t local = wg < 128 ? wg : 128;
    size_t global = ((size_t)n + local - 1) / local * local;
    return ocl_launch(d, k, op, 3, args, 1, &global, &local);
}

static int mul_ok(int64_t a, int64_t b, int64_t *r) { return !__builtin_mul_overflow(a, b, r); }

/* Runs the conv of role as GEMMs; *done = 0 when its temporaries would not fit in buffers of
 * the device (the caller then runs the direct kernels). x, y, w: the role's tensors as in p. */
static nb_status conv_gemm(ocl_dev *d, const char *op, nb_dtype t, int role, const nbk_conv *p,
                           cl_mem x, cl_mem y, cl_mem w, int *done)
{
    *done = 0;
    const int64_t G = p->groups, cg = p->c / G, og = p->o / G, KK = p->kh * p->kw;
    /* a 16-bit conv keeps its columns, yt and the GEMM's weight in float32 */
    const nb_dtype ct = compute_dtype(t);
    const int half = ct != t;
    const int64_t K = cg * KK, L = p->oh * p->ow, es = (int64_t)ocl_dt_size[ct];
    int64_t NL, col_n, yt_n, col_b, yt_b;
    if (!mul_ok(p->n, L, &NL) || !mul_ok(p->c * KK, NL, &col_n) || !mul_ok(p->o, NL, &yt_n) ||
        !mul_ok(col_n, es, &col_b) || !mul_ok(yt_n, es, &yt_b) ||
        (d->max_alloc && ((uint64_t)col_b > d->max_alloc || (uint64_t)yt_b > d->max_alloc)))
        return NB_OK;
    cl_mem col, yt, wp = w;
    nb_status st = ocl_tmp(d, op, 0, (size_t)col_b, &col);
    if (st == NB_OK)
        st = ocl_tmp(d, op, 1, (size_t)yt_b, &yt);
    if (st != NB_OK)
        return st;
    *done = 1;
    /* the logical (n, o, oh, ow) strides of yt, and the contiguous strides of w */
    const int64_t yshape[4] = {p->n, p->o, p->oh, p->ow}, yt_st[4] = {L, NL, p->ow, 1};
    const int64_t wshape[4] = {p->o, cg, p->kh, p->kw}, w_st[4] = {K, KK, p->kw, 1};
    int64_t woff = p->off_w;
    int w_dense = 1;
    for (int k = 0; k < 4; k++)
        w_dense &= wshape[k] == 1 || p->st_w[k] == w_st[k];
    if (role != 2 && (!w_dense || half)) { /* w is a GEMM operand: dense, of dtype ct */
        if ((st = ocl_tmp(d, op, 2, (size_t)(p->o * K * es), &wp)) != NB_OK ||
            (st = copy4(d, op, ct, t, wshape, wp, 0, w_st, w, p->off_w, p->st_w)) != NB_OK)
            return st;
        woff = 0;
    }
    /* im2col and col2im run in t's program: x and grad x of dtype t, the columns of dtype ct */
    if (role == 0) {
        if ((st = launch_cols(d, op, t, OCL_K_im2col, col_n, col, x, p)) != NB_OK)
            return st;
        for (int64_t g = 0; g < G && st == NB_OK; g++)
            st = ocl_gemm(d, op, ct, 0, 0, og, NL, K, 1.0, wp, woff + g * og * K, K, 0, col,
                          g * K * NL, NL, 0, 0.0, yt, g * og * NL, NL, 0, 1);
        return st == NB_OK ? copy4(d, op, t, ct, yshape, y, p->off_y, p->st_y, yt, 0, yt_st)
                           : st;
    }
    /* the backwards read grad y as yt */
    if ((st = copy4(d, op, ct, t, yshape, yt, 0, yt_st, y, p->off_y, p->st_y)) != NB_OK)
        return st;
    if (role == 1) {
        for (int64_t g = 0; g < G && st == NB_OK; g++)
            st = ocl_gemm(d, op, ct, 1, 0, K, NL, og, 1.0, wp, woff + g * og * K, K, 0, yt,
                          g * og * NL, NL, 0, 0.0, col, g * K * NL, NL, 0, 1);
        return st == NB_OK ? launch_cols(d, op, t, OCL_K_col2im, p->n * p->c * p->h * p->w, x,
                                         col, p)
                           : st;
    }
    if ((st = launch_cols(d, op, t, OCL_K_im2col, col_n, col, x, p)) != NB_OK)
        return st;
    cl_mem gw = w;
    int64_t gw_off = p->off_w;
    if (!w_dense || half) {
        if ((st = ocl_tmp(d, op, 2, (size_t)(p->o * K * es), &gw)) != NB_OK)
            return st;
        gw_off = 0;
    }
    for (int64_t g = 0; g < G && st == NB_OK; g++)
        st = ocl_gemm(d, op, ct, 0, 1, og, K, NL, 1.0, yt, g * og * NL, NL, 0, col, g * K * NL,
                      NL, 0, 0.0, gw, gw_off + g * og * K, K, 0, 1);
    if (st == NB_OK && (!w_dense || half))
        st = copy4(d, op, t, ct, wshape, w, p->off_w, p->st_w, gw, 0, w_st);
    return st;
}

/* GEMMs or the direct kernels. On a GPU always GEMMs: the direct weight gradient has one
 * work-item per weight. On a CPU runtime (PoCL), where a few hundred work-items fill the
 * cores, a GEMM with few output channels mostly multiplies CLBlast's tile padding: LeNet's
 * 6- and 16-channel convs ran 2-4x slower as GEMMs forward and for the weight gradient. The
 * input gradient's GEMM (im2col layout, then col2im) was faster than the old one-work-item-per-
 * element kernel, but the register-blocked one takes a fifth of the GEMM's and col2im's time
 * for LeNet's second conv (perf samples against an unchanged CLBlast kernel), so it is used
 * under the same rule as the forward. NABLA_OPENCL_CONV=direct or =gemm overrides (for
 * measuring). */
static int conv_as_gemm(const ocl_dev *d, int role, const nbk_conv *p)
{
    const char *e = getenv("NABLA_OPENCL_CONV");
    if (e && strcmp(e, "direct") == 0)
        return 0;
    if ((e && strcmp(e, "gemm") == 0) || d->is_gpu)
        return 1;
    int64_t og = p->o / p->groups, taps = p->c / p->groups * p->kh * p->kw;
    return og >= 32 && (role != 2 || taps >= 32);
}

/* role 0: out = conv2d(in[0] x, in[1] w); 1: out = grad x from in[0] grad y and in[1] w;
 * 2: out = grad w from in[0] grad y and in[1] x. */
static nb_status run_conv(const nb_kernel_args *a, const char *op, ocl_kid kid, int role)
{
    ocl_view v[3];
    nb_status st = check4(op, a, -1, v);
    if (st != NB_OK)
        return st;
    const ocl_view *vy = role == 0 ? &v[0] : &v[1];
    const ocl_view *vx = role == 0 ? &v[1] : role == 1 ? &v[0] : &v[2];
    const ocl_view *vw = role == 2 ? &v[0] : &v[2];
    const int64_t *ys = vy->o->shape, *xs = vx->o->shape, *ws = vw->o->shape;
    nbk_conv p;
    memset(&p, 0, sizeof p);
    p.n = xs[0], p.c = xs[1], p.h = xs[2], p.w = xs[3];
    p.o = ys[1], p.oh = ys[2], p.ow = ys[3];
    p.kh = ws[2], p.kw = ws[3];
    p.sh = a->i[0], p.sw = a->i[1], p.ph = a->i[2], p.pw = a->i[3];
    p.dh = a->i[4], p.dw = a->i[5], p.groups = a->i[6];
    if (p.sh < 1 || p.sw < 1 || p.ph < 0 || p.pw < 0 || p.dh < 1 || p.dw < 1 || p.groups < 1)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: stride %lldx%lld, padding %lldx%lld, "
                   "dilation %lldx%lld, groups %lld; expected stride, dilation and groups >= 1 "
                   "and padding >= 0", op, (long long)p.sh, (long long)p.sw, (long long)p.ph,
                   (long long)p.pw, (long long)p.dh, (long long)p.dw, (long long)p.groups);
    int64_t eh = p.h + 2 * p.ph - p.dh * (p.kh - 1) - 1,
            ew = p.w + 2 * p.pw - p.dw * (p.kw - 1) - 1;
    if (ys[0] != p.n || ws[0] != p.o || p.c % p.groups || p.o % p.groups ||
        ws[1] != p.c / p.groups || eh < 0 || ew < 0 || p.oh != eh / p.sh + 1 ||
        p.ow != ew / p.sw + 1)
        return ERR(NB_SHAPE_MISMATCH, "opencl %s: x [%lld,%lld,%lld,%lld], w [%lld,%lld,%lld,"
                   "%lld] and y [%lld,%lld,%lld,%lld] do not fit a conv2d with these stride, "
                   "padding, dilation and %lld groups", op, (long long)xs[0], (long long)xs[1],
                   (long long)xs[2], (long long)xs[3], (long long)ws[0], (long long)ws[1],
                   (long long)ws[2], (long long)ws[3], (long long)ys[0], (long long)ys[1],
                   (long long)ys[2], (long long)ys[3], (long long)p.groups);
    conv_role(&p.off_y, p.st_y, &p.len_y, vy);
    conv_role(&p.off_x, p.st_x, &p.len_x, vx);
    conv_role(&p.off_w, p.st_w, &p.len_w, vw);
    int64_t n = role == 0 ? p.n * p.o * p.oh * p.ow
              : role == 1 ? p.n * p.c * p.h * p.w
                          : p.o * (p.c / p.groups) * p.kh * p.kw;
    if (n == 0)
        return NB_OK;
    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    int done = 0;
    if (conv_as_gemm(d, role, &p)) {
        ocl_lock(d); /* the temporaries stay ours until every op using them is queued */
        st = conv_gemm(d, op, a->out->dtype, role, &p, vx->mem, vy->mem, vw->mem, &done);
        ocl_unlock(d);
    }
    if (st != NB_OK || done)
        return st;
    /* the direct kernels: for the forward one work-item per output row of a block of
     * NBK_CONV_OB channels of one group, for the input gradient the same per input row, for
     * the weight gradient one per tap of such a block (see conv.cl) */
    if (role == 0)
        n = p.n * p.groups * ((p.o / p.groups + NBK_CONV_OB - 1) / NBK_CONV_OB) * p.oh;
    else if (role == 1)
        n = p.n * p.groups * ((p.c / p.groups + NBK_CONV_OB - 1) / NBK_CONV_OB) * p.h;
    else
        n = p.groups * ((p.o / p.groups + NBK_CONV_OB - 1) / NBK_CONV_OB) * (p.c / p.groups) *
            p.kh * p.kw;
    return run_flat(a->device, op, a->out->dtype, kid, n, v, &p);
}

static nb_status k_conv2d(const nb_kernel_args *a)
{
    return run_conv(a, "conv2d", OCL_K_conv2d, 0);
}
static nb_status k_conv2d_backward_input(const nb_kernel_args *a)
{
    return run_conv(a, "conv2d_backward_input", OCL_K_conv2d_backward_input, 1);
}
static nb_status k_conv2d_backward_weight(const nb_kernel_args *a)
{
    return run_conv(a, "conv2d_backward_weight", OCL_K_conv2d_backward_weight, 2);
}

/* forward: out y, in[0] x, in[1] indices (written); backward: out grad x, in[0] grad y,
 * in[1] indices. i[] = kernel h,w, stride h,w, padding h,w (backward scans whole planes when
 * they are 0). */
static nb_status run_pool(const nb_kernel_args *a, const char *op, int backward)
{
    ocl_view v[3];
    nb_status st = check4(op, a, NB_DTYPE_I64, v);
    if (st != NB_OK)
        return st;
    const ocl_view *vy = backward ? &v[1] : &v[0], *vx = backward ? &v[0] : &v[1];
    const int64_t *ys = vy->o->shape, *xs = vx->o->shape, *is = v[2].o->shape;
    nbk_conv p;
    memset(&p, 0, sizeof p);
    p.n = xs[0], p.c = xs[1], p.h = xs[2], p.w = xs[3];
    p.o = ys[1], p.oh = ys[2], p.ow = ys[3];
    p.kh = a->i[0], p.kw = a->i[1], p.sh = a->i[2], p.sw = a->i[3], p.ph = a->i[4],
    p.pw = a->i[5];
    if (ys[0] != p.n || ys[1] != p.c || is[0] != ys[0] || is[1] != ys[1] || is[2] != ys[2] ||
        is[3] != ys[3])
        return ERR(NB_SHAPE_MISMATCH, "opencl %s: x [%lld,%lld,%lld,%lld], y [%lld,%lld,%lld,"
                   "%lld] and indices [%lld,%lld,%lld,%lld]; expected y and indices (N,C,OH,OW) "
                   "for x (N,C,H,W)", op, (long long)xs[0], (long long)xs[1], (long long)xs[2],
                   (long long)xs[3], (long long)ys[0], (long long)ys[1], (long long)ys[2],
                   (long long)ys[3], (long long)is[0], (long long)is[1], (long long)is[2],
                   (long long)is[3]);
    if (!backward && (p.kh < 1 || p.kw < 1 || p.sh < 1 || p.sw < 1 || p.ph < 0 || p.pw < 0 ||
                      p.ph * 2 > p.kh || p.pw * 2 > p.kw))
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: kernel %lldx%lld, stride %lldx%lld, "
                   "padding %lldx%lld; expected kernel and stride >= 1 and 0 <= padding <= "
                   "kernel/2", op, (long long)p.kh, (long long)p.kw, (long long)p.sh,
                   (long long)p.sw, (long long)p.ph, (long long)p.pw);
    conv_role(&p.off_y, p.st_y, &p.len_y, vy);
    conv_role(&p.off_x, p.st_x, &p.len_x, vx);
    conv_role(&p.off_w, p.st_w, &p.len_w, &v[2]);
    /* one work-item per input row (backward) or output row (forward), see conv.cl */
    int64_t n = backward ? (p.w ? p.n * p.c * p.h : 0) : (p.ow ? p.n * p.c * p.oh : 0);
    if (backward) /* adds each window's gradient into grad x */
        return run_flat_sum(a->device, op, a->out->dtype, OCL_K_max_pool2d_backward, n, v, &p,
                            &p.off_x, p.st_x, xs);
    return run_flat(a->device, op, a->out->dtype, OCL_K_max_pool2d, n, v, &p);
}

static nb_status k_max_pool2d(const nb_kernel_args *a)
{
    return run_pool(a, "max_pool2d", 0);
}
static nb_status k_max_pool2d_backward(const nb_kernel_args *a)
{
    return run_pool(a, "max_pool2d_backward", 1);
}


const ocl_spec ocl_specs_conv[] = {
    {"conv2d", k_conv2d, OCL_FLT16},
    {"conv2d_backward_input", k_conv2d_backward_input, OCL_FLT16},
    {"conv2d_backward_weight", k_conv2d_backward_weight, OCL_FLT16},
    {"max_pool2d", k_max_pool2d, OCL_FLT16},
    {"max_pool2d_backward", k_max_pool2d_backward, OCL_FLT16},
};
const size_t ocl_n_specs_conv =
    sizeof ocl_specs_conv / sizeof ocl_specs_conv[0];
