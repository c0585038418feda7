/* cpu_norm.c - the fused "layer_norm" kernel: each row of x normalised with its mean and biased
 * variance in one pass over the row (two-pass sums in double), then scaled and shifted; it can
 * keep each row's mean and 1/std for "layer_norm_backward", which computes dx, dweight and dbias
 * in one pass over the rows. */
#include "cpu_internal.h"

#include <math.h>

/* in[0] x (R, C), in[1] weight (C) when i[0] & 1, then bias (C) when i[0] & 2, then (R, 2)
 * written with each row's mean and 1/std when i[0] & 4; all contiguous; out (R, C); f[0] eps. */
#define DEF_LAYER_NORM(SFX, T)                                                              \
    static nb_status k_layer_norm_##SFX(const nb_kernel_args *a)                            \
    {                                                                                       \
        bool has_w = a->i[0] & 1, has_b = a->i[0] & 2, has_st = a->i[0] & 4;                \
        if (a->n_in != 1 + has_w + has_b + has_st || a->in[0].ndim != 2 || a->out->ndim != 2) \
            return NBC_ERR(NB_INVALID_ARGUMENT, "layer_norm: expected a 2-d x and out, and " \
                           "weight/bias as i[0] says");                                     \
        const nb_operand *x = &a->in[0], *o = a->out;                                       \
        int64_t R = x->shape[0], C = x->shape[1];                                           \
        if (o->shape[0] != R || o->shape[1] != C)                                           \
            return NBC_ERR(NB_SHAPE_MISMATCH, "layer_norm: out does not have x's shape");   \
        for (int32_t k = 0; k < a->n_in - has_st; k++)                                      \
            if (!nbc_is_contiguous(&a->in[k]) || (k && nbc_numel(&a->in[k]) != C))          \
                return NBC_ERR(NB_INVALID_ARGUMENT, "layer_norm: operand %d must be "        \
                               "contiguous%s", k, k ? " with one value per column" : "");   \
        T *st = has_st ? (T *)nbc_ptr(&a->in[a->n_in - 1]) : NULL;                          \
        if (has_st && (!nbc_is_contiguous(&a->in[a->n_in - 1]) ||                           \
                       nbc_numel(&a->in[a->n_in - 1]) != 2 * R))                            \
            return NBC_ERR(NB_INVALID_ARGUMENT, "layer_norm: the statistics operand must "  \
                           "be contiguous (R, 2) for %lld rows", (long long)R);             \
        if (!nbc_is_contiguous(o))                                                          \
            return NBC_ERR(NB_INVALID_ARGUMENT, "layer_norm: out must be contiguous");      \
        const T *xp = (const T *)nbc_ptr(x);                                                \
        const T *w = has_w ? (const T *)nbc_ptr(&a->in[1]) : NULL;                          \
        const T *b = has_b ? (const T *)nbc_ptr(&a->in[1 + has_w]) : NULL;                  \
        T *op = (T *)nbc_ptr(o);                                                            \
        double eps = a->f[0];                                                               \
        for (int64_t r = 0; r < R; r++) {                                                   \
            const T *xr = xp + r * C;                                                       \
            T *orow = op + r * C;                                                           \
            /* eight independent lanes, so that the double sums vectorise */                \
            double lane[8] = {0}, mu = 0, var = 0;                                          \
            int64_t c8 = C & ~(int64_t)7;                                                   \
            for (int64_t c = 0; c < c8; c += 8)                                             \
                for (int l = 0; l < 8; l++)                                                 \
                    lane[l] += (double)xr[c + l];                                           \
            for (int64_t c = c8; c < C; c++)                                                \
                mu += (double)xr[c];                                                        \
            for (int l = 0; l < 8; l++) {                                                   \
                mu += lane[l];                                                              \
                lane[l] = 0;                                                                \
            }                                                                               \
            mu /= (double)C;                                                                \
            for (int64_t c = 0; c < c8; c += 8)                                             \
                for (int l = 0; l < 8; l++) {                                               \
                    double d = (double)xr[c + l] - mu;                                      \
                    lane[l] += d * d;                                                       \
                }                                                                           \
            for (int64_t c = c8; c < C; c++) {                                              \
                double d = (double)xr[c] - mu;                                              \
                var += d * d;                                                               \
            }                                                                               \
            for (int l = 0; l < 8; l++)                                                     \
                var += lane[l];                                                             \
            /* the row in the operands' type, branch-free, so that it vectorises */         \
            T rs = (T)(1.0 / sqrt(var / (double)C + eps)), mt = (T)mu;                     \
            if (st) {                                                                       \
                st[2 * r] = mt;                                                             \
                st[2 * r + 1] = rs;                                                         \
            }                                                                               \
            for (int64_t c = 0; c < C; c++)                                                 \
                orow[c] = (xr[c] - mt) * rs;                                                \
            if (w)                                                                          \
                for (int64_t c = 0; c < C; c++)                                             \
                    orow[c] *= w[c];                                                        \
            if (b)                                                                          \
                for (int64_t c = 0; c < C; c++)                                             \
                    orow[c] += b[c];                                                        \
        }                                                                                   \
        return NB_OK;                                                                       \
    }
DEF_LAYER_NORM(f32, float)
DEF_LAYER_NORM(f64, double)

/* in[0] grad (R, C), in[1] x, in[2] the forward's (R, 2) statistics, then weight (C), dweight
 * (C) when i[0] & 1, then dbias (C) when i[0] & 2; all contiguous; out dx (R, C). With
 * xh = (x - mean) rstd and dxh = g w: dx = rstd (dxh - mean(dxh) - xh mean(dxh xh)),
 * dweight = sum_rows(g xh), dbias = sum_rows(g); sums in the operands' type. */
#define DEF_LAYER_NORM_BACKWARD(SFX, T)                                                     \
    static nb_status k_layer_norm_backward_##SFX(const nb_kernel_args *a)                   \
    {                                                                                       \
        const char *name = "layer_norm_backward";                                           \
        bool has_w = a->i[0] & 1, has_b = a->i[0] & 2;                                      \
        if (a->n_in != 3 + 2 * has_w + has_b || a->out->ndim != 2)                          \
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: expected g, x, stats, then weight and " \
                           "dweight, dbias as i[0] says, and a 2-d out", name);             \
        int64_t R = a->out->shape[0], C = a->out->shape[1];                                 \
        for (int32_t k = 0; k < a->n_in; k++) {                                             \
            int64_t want = k < 2 ? R * C : k == 2 ? 2 * R : C;                              \
            if (!nbc_is_contiguous(&a->in[k]) || nbc_numel(&a->in[k]) != want)              \
                return NBC_ERR(NB_INVALID_ARGUMENT, "%s: operand %d must be contiguous "    \
                               "with %lld elements", name, k, (long long)want);             \
        }                                                                                   \
        if (!nbc_is_contiguous(a->out))                                                     \
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: out must be contiguous", name);        \
        const T *g = (const T *)nbc_ptr(&a->in[0]), *x = (const T *)nbc_ptr(&a->in[1]);     \
        const T *st = (const T *)nbc_ptr(&a->in[2]);                                        \
        const T *w = has_w ? (const T *)nbc_ptr(&a->in[3]) : NULL;                          \
        T *dw = has_w ? (T *)nbc_ptr(&a->in[4]) : NULL;                                     \
        T *db = has_b ? (T *)nbc_ptr(&a->in[3 + 2 * has_w]) : NULL;                         \
        T *dx = (T *)nbc_ptr(a->out);                                                       \
        if (dw)                                                                             \
            memset(dw, 0, (size_t)C * sizeof(T));                                           \
        if (db)                                                                             \
            memset(db, 0, (size_t)C * sizeof(T));                                           \
        T rc = (T)(1.0 / (double)(C ? C : 1));                                              \
        for (int64_t r = 0; r < R; r++) {                                                   \
            const T *gr = g + r * C, *xr = x + r * C;                                       \
            T *dr = dx + r * C, mt = st[2 * r], rs = st[2 * r + 1];                         \
            T l1[8] = {0}, l2[8] = {0}, s1 = 0, s2 = 0; /* lanes, as in the forward */      \
            int64_t c8 = C & ~(int64_t)7;                                                   \
            for (int64_t c = 0; c < c8; c += 8)                                             \
                for (int l = 0; l < 8; l++) {                                               \
                    T xh = (xr[c + l] - mt) * rs;                                           \
                    T dxh = w ? gr[c + l] * w[c + l] : gr[c + l];                           \
                    l1[l] += dxh;                                                           \
                    l2[l] += dxh * xh;                                                      \
                }                                                                           \
            for (int64_t c = c8; c < C; c++) {                                              \
                T xh = (xr[c] - mt) * rs, dxh = w ? gr[c] * w[c] : gr[c];                   \
                s1 += dxh;                                                                  \
                s2 += dxh * xh;                                                             \
            }                                                                               \
            for (int l = 0; l < 8; l++) {                                                   \
                s1 += l1[l];                                                                \
                s2 += l2[l];                                                                \
            }                                                                               \
            s1 *= rc;                                                                       \
            s2 *= rc;                                                                       \
            for (int64_t c = 0; c < C; c++) {                                               \
                T xh = (xr[c] - mt) * rs, dxh = w ? gr[c] * w[c] : gr[c];                   \
                dr[c] = rs * (dxh - s1 - xh * s2);                                          \
            }                                                                               \
            if (dw)                                                                         \
                for (int64_t c = 0; c < C; c++)                                             \
                    dw[c] += gr[c] * ((xr[c] - mt) * rs);                                   \
            if (db)                                                                         \
                for (int64_t c = 0; c < C; c++)                                             \
                    db[c] += gr[c];                                                         \
        }                                                                                   \
        return NB_OK;                                                                       \
    }
DEF_LAYER_NORM_BACKWARD(f32, float)
DEF_LAYER_NORM_BACKWARD(f64, double)

const nb_kernel_desc nbc_norm_kernels[] = {
    {"layer_norm_backward", NB_DTYPE_F32, k_layer_norm_backward_f32},
    {"layer_norm_backward", NB_DTYPE_F64, k_layer_norm_backward_f64},
    {"layer_norm", NB_DTYPE_F32, k_layer_norm_f32},
    {"layer_norm", NB_DTYPE_F64, k_layer_norm_f64},
};
const size_t nbc_norm_count = sizeof nbc_norm_kernels / sizeof nbc_norm_kernels[0];
