/* reference_nn.c - the float64 reference for the nn rows of the conformance table (softmax,
 * conv2d, pooling, linear, the losses), beside reference.c's tensor ops and with its rules. */
#include "conformance.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ======================== nn functional ======================== */

/* softmax / log_softmax along k[0], computed with the maximum subtracted. */
static bool softmax_any(const conf_host *x, const conf_params *p, bool log_out, conf_host *out)
{
    if (!conf_is_float(x->dtype))
        return false;
    int32_t dim = conf_norm_dim((int32_t)p->k[0], x->ndim);
    if (dim < 0 || dim >= (x->ndim ? x->ndim : 1))
        return false;
    if (!conf_host_alloc(out, x->dtype, x->ndim, x->shape))
        return false;
    if (x->ndim == 0) {
        out->v[0] = log_out ? 0 : 1;
        conf_finish(out);
        return true;
    }
    int64_t len = x->shape[dim], inner = 1, outer = 1;
    for (int32_t d = dim + 1; d < x->ndim; d++)
        inner *= x->shape[d];
    for (int32_t d = 0; d < dim; d++)
        outer *= x->shape[d];
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            const double *v = x->v + o * len * inner + i;
            double *r = out->v + o * len * inner + i, mx = -INFINITY, s = 0;
            for (int64_t j = 0; j < len; j++)
                mx = conf_nan_max(mx, v[j * inner]);
            for (int64_t j = 0; j < len; j++)
                s += exp(v[j * inner] - mx);
            for (int64_t j = 0; j < len; j++)
                r[j * inner] = log_out ? v[j * inner] - mx - log(s) : exp(v[j * inner] - mx) / s;
        }
    conf_finish(out);
    return true;
}

bool conf_ref_softmax(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return softmax_any(&x[0], p, false, out);
}
bool conf_ref_log_softmax(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return softmax_any(&x[0], p, true, out);
}

static int64_t or1(int64_t v) { return v ? v : 1; }

/* conv2d: x (N,C,H,W), w (O,C/g,kh,kw), optional b (O); k[] = stride h,w, padding h,w,
 * dilation h,w, groups (0 means 1 for stride, dilation and groups). */
bool conf_ref_conv2d(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    const conf_host *in = &x[0], *w = &x[1], *b = n > 2 ? &x[2] : NULL;
    if (in->ndim != 4 || w->ndim != 4 || !conf_is_float(in->dtype) || w->dtype != in->dtype)
        return false;
    int64_t sh = or1(p->k[0]), sw = or1(p->k[1]), ph = p->k[2], pw = p->k[3];
    int64_t dh = or1(p->k[4]), dw = or1(p->k[5]), g = or1(p->k[6]);
    int64_t N = in->shape[0], C = in->shape[1], H = in->shape[2], W = in->shape[3];
    int64_t O = w->shape[0], Cg = w->shape[1], kh = w->shape[2], kw = w->shape[3];
    if (C != Cg * g || O % g || (b && (b->ndim != 1 || b->shape[0] != O)))
        return false;
    if (H + 2 * ph < dh * (kh - 1) + 1 || W + 2 * pw < dw * (kw - 1) + 1)
        return false; /* the kernel does not fit */
    int64_t OH = (H + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    int64_t OW = (W + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    if (OH <= 0 || OW <= 0)
        return false;
    if (!conf_host_alloc(out, in->dtype, 4, (int64_t[]){N, O, OH, OW}))
        return false;
    int64_t Og = O / g;
    for (int64_t nn = 0; nn < N; nn++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    double acc = b ? b->v[o] : 0;
                    int64_t grp = o / Og;
                    for (int64_t c = 0; c < Cg; c++)
                        for (int64_t i = 0; i < kh; i++)
                            for (int64_t j = 0; j < kw; j++) {
                                int64_t h = oh * sh - ph + i * dh, ww = ow * sw - pw + j * dw;
                                if (h < 0 || h >= H || ww < 0 || ww >= W)
                                    continue;
                                int64_t ci = grp * Cg + c;
                                acc += in->v[((nn * C + ci) * H + h) * W + ww] *
                                       w->v[((o * Cg + c) * kh + i) * kw + j];
                            }
                    out->v[((nn * O + o) * OH + oh) * OW + ow] = acc;
                }
    conf_finish(out);
    return true;
}

/* Pooling over (N,C,H,W); k[] = kernel h,w, stride h,w (0: the kernel), padding h,w. The
 * average counts the padding (PyTorch's count_include_pad=True). */
static bool pool(const conf_host *in, const conf_params *p, bool is_max, conf_host *out)
{
    if (in->ndim != 4 || !conf_is_float(in->dtype))
        return false;
    int64_t kh = p->k[0], kw = p->k[1];
    int64_t sh = p->k[2] ? p->k[2] : kh, sw = p->k[3] ? p->k[3] : kw, ph = p->k[4], pw = p->k[5];
    if (kh <= 0 || kw <= 0 || ph > kh / 2 || pw > kw / 2)
        return false;
    int64_t N = in->shape[0], C = in->shape[1], H = in->shape[2], W = in->shape[3];
    if (H + 2 * ph < kh || W + 2 * pw < kw)
        return false; /* the window does not fit */
    int64_t OH = (H + 2 * ph - kh) / sh + 1, OW = (W + 2 * pw - kw) / sw + 1;
    if (OH <= 0 || OW <= 0)
        return false;
    if (!conf_host_alloc(out, in->dtype, 4, (int64_t[]){N, C, OH, OW}))
        return false;
    for (int64_t nc = 0; nc < N * C; nc++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                double acc = is_max ? -INFINITY : 0;
                for (int64_t i = 0; i < kh; i++)
                    for (int64_t j = 0; j < kw; j++) {
                        int64_t h = oh * sh - ph + i, w = ow * sw - pw + j;
                        if (h < 0 || h >= H || w < 0 || w >= W)
                            continue;
                        double v = in->v[(nc * H + h) * W + w];
                        acc = is_max ? conf_nan_max(acc, v) : acc + v;
                    }
                out->v[(nc * OH + oh) * OW + ow] = is_max ? acc : acc / (double)(kh * kw);
            }
    conf_finish(out);
    return true;
}

bool conf_ref_max_pool2d(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return pool(&x[0], p, true, out);
}
bool conf_ref_avg_pool2d(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return pool(&x[0], p, false, out);
}

/* linear: x (..., in) @ w (out, in)^T + b (out). */
bool conf_ref_linear(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)p;
    const conf_host *in = &x[0], *w = &x[1], *b = n > 2 ? &x[2] : NULL;
    if (in->ndim < 1 || w->ndim != 2 || in->shape[in->ndim - 1] != w->shape[1] ||
        (b && (b->ndim != 1 || b->shape[0] != w->shape[0])))
        return false;
    int64_t K = w->shape[1], O = w->shape[0], rows = K ? conf_numel(in) / K : 0;
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, in->shape, sizeof shape);
    shape[in->ndim - 1] = O;
    if (!conf_host_alloc(out, in->dtype, in->ndim, shape))
        return false;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < O; o++) {
            double acc = b ? b->v[o] : 0;
            for (int64_t k = 0; k < K; k++)
                acc += in->v[r * K + k] * w->v[o * K + k];
            out->v[r * O + o] = acc;
        }
    conf_finish(out);
    return true;
}

/* Applies a reduction mode (k[0]: 0 mean, 1 sum, 2 none) to per-element losses. */
static bool reduce_loss(conf_host *losses, int64_t k0, double mean_count, conf_host *out)
{
    if (k0 == NB_REDUCTION_NONE) {
        *out = *losses;
        conf_finish(out);
        return true;
    }
    double s = 0;
    for (int64_t k = 0; k < conf_numel(losses); k++)
        s += losses->v[k];
    nb_dtype dt = losses->dtype;
    conf_host_free(losses);
    if (!conf_host_alloc(out, dt, 0, NULL))
        return false;
    out->v[0] = k0 == NB_REDUCTION_SUM ? s : s / mean_count;
    conf_finish(out);
    return true;
}

static bool same_shape(const conf_host *a, const conf_host *b)
{
    return a->ndim == b->ndim && !memcmp(a->shape, b->shape, (size_t)a->ndim * 8);
}

bool conf_ref_mse_loss(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    if (!same_shape(&x[0], &x[1]) || !conf_is_float(x[0].dtype))
        return false;
    conf_host l = {0};
    if (!conf_host_alloc(&l, x[0].dtype, x[0].ndim, x[0].shape))
        return false;
    for (int64_t k = 0; k < conf_numel(&l); k++) {
        double d = x[0].v[k] - x[1].v[k];
        l.v[k] = d * d;
    }
    return reduce_loss(&l, p->k[0], (double)conf_numel(&l), out);
}

/* binary_cross_entropy_with_logits, in the overflow-free form max(x,0) - x*t + log1p(e^-|x|). */
bool conf_ref_bce_with_logits(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    if (!same_shape(&x[0], &x[1]) || !conf_is_float(x[0].dtype))
        return false;
    conf_host l = {0};
    if (!conf_host_alloc(&l, x[0].dtype, x[0].ndim, x[0].shape))
        return false;
    for (int64_t k = 0; k < conf_numel(&l); k++) {
        double v = x[0].v[k], t = x[1].v[k];
        l.v[k] = (v > 0 ? v : 0) - v * t + log1p(exp(-fabs(v)));
    }
    return reduce_loss(&l, p->k[0], (double)conf_numel(&l), out);
}

/* cross_entropy: input (N, C), target int64 class indices (N). */
bool conf_ref_cross_entropy(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    const conf_host *in = &x[0], *t = &x[1];
    if (in->ndim != 2 || t->ndim != 1 || t->shape[0] != in->shape[0] ||
        t->dtype != NB_DTYPE_I64 || !conf_is_float(in->dtype))
        return false;
    int64_t N = in->shape[0], C = in->shape[1];
    conf_host l = {0};
    if (!conf_host_alloc(&l, in->dtype, 1, &N))
        return false;
    for (int64_t i = 0; i < N; i++) {
        int64_t c = (int64_t)t->v[i];
        if (c < 0 || c >= C) {
            conf_host_free(&l);
            return false;
        }
        const double *row = in->v + i * C;
        double mx = -INFINITY, s = 0;
        for (int64_t j = 0; j < C; j++)
            mx = conf_nan_max(mx, row[j]);
        for (int64_t j = 0; j < C; j++)
            s += exp(row[j] - mx);
        l.v[i] = -(row[c] - mx - log(s));
    }
    return reduce_loss(&l, p->k[0], (double)N, out);
}

