/* cpu_pool.c - the fused max_pool2d kernel (with its indices) and its backward. Strided operands
 * are made contiguous first. */
#include "cpu_fused.h"

#include <tgmath.h>

/* ---- max_pool2d ---- */

typedef struct pool {
    int64_t planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw;
} pool;

static nb_status pool_geom(const char *name, const nb_kernel_args *a, const nb_operand *x,
                           const nb_operand *y, pool *p)
{
    if (a->n_in < 2)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: needs 2 inputs, got %d", name, (int)a->n_in);
    const nb_operand *idx = &a->in[1];
    if (x->ndim != 4 || y->ndim != 4 || idx->ndim != 4)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: input, output and indices must be 4-d, got %d, "
                       "%d and %d dims", name, (int)x->ndim, (int)y->ndim, (int)idx->ndim);
    if (idx->dtype != NB_DTYPE_I64)
        return NBC_ERR(NB_DTYPE_UNSUPPORTED, "%s: indices are %s, expected int64", name,
                       nbc_dtype_name(idx->dtype));
    *p = (pool){x->shape[0] * x->shape[1], x->shape[2], x->shape[3], y->shape[2], y->shape[3],
                a->i[0], a->i[1], a->i[2], a->i[3], a->i[4], a->i[5]};
    if (p->kh < 1 || p->kw < 1 || p->sh < 1 || p->sw < 1 || p->ph < 0 || p->pw < 0 ||
        2 * p->ph > p->kh || 2 * p->pw > p->kw)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: kernel (%lld,%lld), stride (%lld,%lld), padding "
                       "(%lld,%lld); expected kernel and stride >= 1 and 0 <= padding <= "
                       "kernel/2", name, (long long)p->kh, (long long)p->kw, (long long)p->sh,
                       (long long)p->sw, (long long)p->ph, (long long)p->pw);
    int64_t oh = conv_out_size(p->H, p->kh, p->sh, p->ph, 1);
    int64_t ow = conv_out_size(p->W, p->kw, p->sw, p->pw, 1);
    bool ok = y->shape[0] == x->shape[0] && y->shape[1] == x->shape[1] && oh == p->OH &&
              ow == p->OW;
    for (int d = 0; d < 4; d++)
        ok = ok && idx->shape[d] == y->shape[d];
    if (!ok)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: pooled shape is (%lld,%lld,%lld,%lld) with "
                       "indices (%lld,%lld,%lld,%lld), expected (%lld,%lld,%lld,%lld)", name,
                       (long long)y->shape[0], (long long)y->shape[1], (long long)y->shape[2],
                       (long long)y->shape[3], (long long)idx->shape[0], (long long)idx->shape[1],
                       (long long)idx->shape[2], (long long)idx->shape[3], (long long)x->shape[0],
                       (long long)x->shape[1], (long long)oh, (long long)ow);
    return NB_OK;
}

/* The common 2x2 stride-2 window of one plane, written as selects so it vectorises: the winner
 * is random on real data, and strict compares keep the first index of ties in row-major order.
 * A NaN (or both infinities) in any window makes the plane take the general path: returns
 * false then. */
#define DEF_POOL2(SFX, T, IT)                                                               \
    static bool pool2x2_##SFX(const pool *p, const T *x, T *y, int64_t *ix)                 \
    {                                                                                       \
        const int64_t W = p->W, OW = p->OW;                                                 \
        IT bad = 0;                                                                         \
        for (int64_t oh = 0; oh < p->OH; oh++) {                                            \
            const T *r0 = x + 2 * oh * W, *r1 = r0 + W;                                     \
            T *yo = y + oh * OW;                                                            \
            int64_t *io = ix + oh * OW;                                                     \
            const int64_t base = 2 * oh * W;                                                \
            for (int64_t ow = 0; ow < OW; ow++) {                                           \
                const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1]; \
                const T sum = (a + b) + (c + d);                                            \
                bad |= sum != sum;                                                          \
                const IT right0 = b > a, right1 = d > c;                                    \
                const T m0 = right0 ? b : a, m1 = right1 ? d : c;                           \
                const IT down = m1 > m0;                                                    \
                yo[ow] = down ? m1 : m0;                                                    \
                /* arithmetic, not a select of two offsets: GCC keeps that one a branch */  \
                io[ow] = base + 2 * ow + right0 + down * ((IT)W + right1 - right0);         \
            }                                                                               \
        }                                                                                   \
        return !bad;                                                                        \
    }
DEF_POOL2(f32, float, int32_t)
DEF_POOL2(f64, double, int64_t)

/* The window's first element starts as the best, so an all -inf window still gives a valid
 * index; a NaN wins and stops the search like PyTorch. */
#define DEF_POOL(SFX, T)                                                                    \
    static nb_status k_max_pool2d_##SFX(const nb_kernel_args *a)                            \
    {                                                                                       \
        pool p;                                                                             \
        if (pool_geom("max_pool2d", a, &a->in[0], a->out, &p) != NB_OK)                     \
            return NB_INVALID_ARGUMENT;                                                     \
        const T *x = nbc_contiguous_in(&a->in[0], S_IN0);                                   \
        T *y = out_buffer(a->out, S_OUT);                                                   \
        int64_t *ix = out_buffer(&a->in[1], S_IN1);                                         \
        if (!x || !y || !ix)                                                                \
            return NB_OUT_OF_MEMORY;                                                        \
        const int64_t HW = p.H * p.W, OHW = p.OH * p.OW;                                    \
        const bool two = p.kh == 2 && p.kw == 2 && p.sh == 2 && p.sw == 2 && p.ph == 0 &&   \
                         p.pw == 0 && p.W < INT32_MAX; /* W fits pool2x2's index type */    \
        _Pragma("omp parallel for if (p.planes * OHW * p.kh * p.kw >= NBC_PARALLEL_MIN)")   \
        for (int64_t pl = 0; pl < p.planes; pl++) {                                         \
            const T *xp = x + pl * HW;                                                      \
            T *yp = y + pl * OHW;                                                           \
            int64_t *ip = ix + pl * OHW;                                                    \
            if (two && pool2x2_##SFX(&p, xp, yp, ip))                                       \
                continue;                                                                   \
            for (int64_t oh = 0; oh < p.OH; oh++) {                                         \
                int64_t h0 = oh * p.sh - p.ph, h1 = h0 + p.kh;                              \
                h0 = h0 < 0 ? 0 : h0;                                                       \
                h1 = h1 > p.H ? p.H : h1;                                                   \
                for (int64_t ow = 0; ow < p.OW; ow++) {                                     \
                    int64_t w0 = ow * p.sw - p.pw, w1 = w0 + p.kw;                          \
                    w0 = w0 < 0 ? 0 : w0;                                                   \
                    w1 = w1 > p.W ? p.W : w1;                                               \
                    int64_t bi = h0 * p.W + w0;                                             \
                    T best = xp[bi];                                                        \
                    for (int64_t h = h0; h < h1 && best == best; h++)                       \
                        for (int64_t w = w0; w < w1; w++) {                                 \
                            T v = xp[h * p.W + w];                                          \
                            if (v > best || v != v) {                                       \
                                best = v;                                                   \
                                bi = h * p.W + w;                                           \
                                if (v != v)                                                 \
                                    break;                                                  \
                            }                                                               \
                        }                                                                   \
                    yp[oh * p.OW + ow] = best;                                              \
                    ip[oh * p.OW + ow] = bi;                                                \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        out_finish(a->out, y);                                                              \
        out_finish(&a->in[1], ix);                                                          \
        return NB_OK;                                                                       \
    }                                                                                       \
    /* in[0] grad (N,C,OH,OW), in[1] indices; out dx (N,C,H,W) */                          \
    static nb_status k_max_pool2d_backward_##SFX(const nb_kernel_args *a)                   \
    {                                                                                       \
        pool p;                                                                             \
        if (a->n_in < 2 || a->out->ndim != 4 || a->in[0].ndim != 4)                         \
            return NBC_ERR(NB_SHAPE_MISMATCH, "max_pool2d_backward: needs a 4-d grad, "    \
                           "indices and output");                                           \
        if (same_shape("max_pool2d_backward", &a->in[0], &a->in[1]) != NB_OK)               \
            return NB_SHAPE_MISMATCH;                                                       \
        if (a->in[1].dtype != NB_DTYPE_I64)                                                 \
            return NBC_ERR(NB_DTYPE_UNSUPPORTED, "max_pool2d_backward: indices are %s, "   \
                           "expected int64", nbc_dtype_name(a->in[1].dtype));               \
        p.planes = a->out->shape[0] * a->out->shape[1];                                     \
        p.H = a->out->shape[2];                                                             \
        p.W = a->out->shape[3];                                                             \
        p.OH = a->in[0].shape[2];                                                           \
        p.OW = a->in[0].shape[3];                                                           \
        if (a->in[0].shape[0] * a->in[0].shape[1] != p.planes)                              \
            return NBC_ERR(NB_SHAPE_MISMATCH, "max_pool2d_backward: grad has %lld planes, " \
                           "the output %lld", (long long)(a->in[0].shape[0] * a->in[0].shape[1]), \
                           (long long)p.planes);                                            \
        const T *g = nbc_contiguous_in(&a->in[0], S_IN0);                                   \
        const int64_t *ix = nbc_contiguous_in(&a->in[1], S_IN1);                            \
        T *dx = out_buffer(a->out, S_OUT);                                                  \
        if (!g || !ix || !dx)                                                               \
            return NB_OUT_OF_MEMORY;                                                        \
        const int64_t HW = p.H * p.W, OHW = p.OH * p.OW;                                    \
        memset(dx, 0, (size_t)(p.planes * HW) * sizeof(T));                                 \
        int64_t bad = -1;                                                                   \
        for (int64_t pl = 0; pl < p.planes; pl++) {                                         \
            T *dp = dx + pl * HW;                                                           \
            const T *gp = g + pl * OHW;                                                     \
            const int64_t *ip = ix + pl * OHW;                                              \
            for (int64_t k = 0; k < OHW; k++) {                                             \
                int64_t j = ip[k];                                                          \
                if ((uint64_t)j >= (uint64_t)HW) {                                          \
                    bad = j;                                                                \
                    continue;                                                               \
                }                                                                           \
                dp[j] += gp[k];                                                             \
            }                                                                               \
        }                                                                                   \
        out_finish(a->out, dx);                                                             \
        if (bad != -1)                                                                      \
            return NBC_ERR(NB_INDEX_OUT_OF_RANGE, "max_pool2d_backward: index %lld out of " \
                           "range for a plane of %lld elements", (long long)bad,            \
                           (long long)HW);                                                  \
        return NB_OK;                                                                       \
    }
DEF_POOL(f32, float)
DEF_POOL(f64, double)

#define E_POOL(SFX, E)                                                                      \
    {"max_pool2d", E, k_max_pool2d_##SFX}, {"max_pool2d_backward", E, k_max_pool2d_backward_##SFX},

const nb_kernel_desc nbc_pool_kernels[] = {E_POOL(f32, NB_DTYPE_F32) E_POOL(f64, NB_DTYPE_F64)};
const size_t nbc_pool_count = sizeof nbc_pool_kernels / sizeof nbc_pool_kernels[0];
