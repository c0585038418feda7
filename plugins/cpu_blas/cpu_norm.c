/* cpu_norm.c - the fused "layer_norm" kernel: each row of x normalised with its mean and biased
 * variance in one pass over the row (two-pass sums in double), then scaled and shifted. */
#include "cpu_internal.h"

#include <math.h>

/* in[0] x (R, C), in[1] weight (C) when i[0] & 1, then bias (C) when i[0] & 2; all contiguous;
 * out (R, C); f[0] eps. */
#define DEF_LAYER_NORM(SFX, T)                                                              \
    static nb_status k_layer_norm_##SFX(const nb_kernel_args *a)                            \
    {                                                                                       \
        bool has_w = a->i[0] & 1, has_b = a->i[0] & 2;                                      \
        if (a->n_in != 1 + has_w + has_b || a->in[0].ndim != 2 || a->out->ndim != 2)        \
            return NBC_ERR(NB_INVALID_ARGUMENT, "layer_norm: expected a 2-d x and out, and " \
                           "weight/bias as i[0] says");                                     \
        const nb_operand *x = &a->in[0], *o = a->out;                                       \
        int64_t R = x->shape[0], C = x->shape[1];                                           \
        if (o->shape[0] != R || o->shape[1] != C)                                           \
            return NBC_ERR(NB_SHAPE_MISMATCH, "layer_norm: out does not have x's shape");   \
        for (int32_t k = 0; k < a->n_in; k++)                                               \
            if (!nbc_is_contiguous(&a->in[k]) || (k && nbc_numel(&a->in[k]) != C))          \
                return NBC_ERR(NB_INVALID_ARGUMENT, "layer_norm: operand %d must be "        \
                               "contiguous%s", k, k ? " with one value per column" : "");   \
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
            double mu = 0, var = 0;                                                         \
            for (int64_t c = 0; c < C; c++)                                                 \
                mu += (double)xr[c];                                                        \
            mu /= (double)C;                                                                \
            for (int64_t c = 0; c < C; c++) {                                               \
                double d = (double)xr[c] - mu;                                              \
                var += d * d;                                                               \
            }                                                                               \
            /* the row in the operands' type, branch-free, so that it vectorises */         \
            T rs = (T)(1.0 / sqrt(var / (double)C + eps)), mt = (T)mu;                     \
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

const nb_kernel_desc nbc_norm_kernels[] = {
    {"layer_norm", NB_DTYPE_F32, k_layer_norm_f32},
    {"layer_norm", NB_DTYPE_F64, k_layer_norm_f64},
};
const size_t nbc_norm_count = sizeof nbc_norm_kernels / sizeof nbc_norm_kernels[0];
