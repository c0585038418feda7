/* cpu_softmax.c - the fused softmax and log_softmax kernels with their backwards, over rows
 * along the last dim. Strided operands are made contiguous first. */
#include "cpu_fused.h"

#include <tgmath.h>

/* ---- softmax family: rows along the last dim ---- */

typedef struct rows {
    int64_t n, len; /* rows, row length */
} rows;

static nb_status softmax_rows(const char *name, const nb_kernel_args *a, int n_in, rows *r)
{
    const nb_operand *out = a->out;
    if (a->n_in < n_in)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: needs %d inputs, got %d", name, n_in,
                       (int)a->n_in);
    for (int k = 0; k < n_in; k++)
        if (same_shape(name, out, &a->in[k]) != NB_OK)
            return NB_SHAPE_MISMATCH;
    if (out->ndim > 0 && a->i[0] != out->ndim - 1)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: dim %lld given, this kernel only reduces the "
                       "last dim (%d)", name, (long long)a->i[0], (int)out->ndim - 1);
    r->len = out->ndim ? out->shape[out->ndim - 1] : 1;
    r->n = r->len ? nbc_numel(out) / r->len : 0;
    return NB_OK;
}

/* MODE 0 softmax, 1 log_softmax, 2 softmax_backward, 3 log_softmax_backward. */
#define DEF_SOFTMAX(SFX, T)                                                                 \
    static void softmax_row_##SFX(int mode, int64_t len, T *o, const T *x, const T *y)     \
    {                                                                                       \
        if (mode <= 1) {                                                                    \
            T m = -INFINITY;                                                                \
            for (int64_t j = 0; j < len; j++)                                               \
                m = (x[j] > m || x[j] != x[j]) ? x[j] : m;                                  \
            if (m == -INFINITY)                                                             \
                m = 0; /* all -inf: exp gives 0s and the sum 0, like PyTorch's NaN */     \
            double sum = 0;                                                                 \
            if (mode == 0) {                                                                \
                for (int64_t j = 0; j < len; j++) {                                         \
                    o[j] = exp(x[j] - m);                                                   \
                    sum += o[j];                                                            \
                }                                                                           \
                const T inv = (T)(1 / sum);                                                 \
                for (int64_t j = 0; j < len; j++)                                           \
                    o[j] *= inv;                                                            \
            } else {                                                                        \
                for (int64_t j = 0; j < len; j++)                                           \
                    sum += exp(x[j] - m);                                                   \
                const T lse = (T)(m + log(sum));                                            \
                for (int64_t j = 0; j < len; j++)                                           \
                    o[j] = x[j] - lse;                                                      \
            }                                                                               \
        } else if (mode == 2) {                                                             \
            double dot = 0;                                                                 \
            for (int64_t j = 0; j < len; j++)                                               \
                dot += (double)x[j] * y[j];                                                 \
            for (int64_t j = 0; j < len; j++)                                               \
                o[j] = y[j] * (x[j] - (T)dot);                                              \
        } else {                                                                            \
            double sum = 0;                                                                 \
            for (int64_t j = 0; j < len; j++)                                               \
                sum += x[j];                                                                \
            for (int64_t j = 0; j < len; j++)                                               \
                o[j] = x[j] - exp(y[j]) * (T)sum;                                           \
        }                                                                                   \
    }                                                                                       \
    static nb_status softmax_kernel_##SFX(const nb_kernel_args *a, int mode, const char *name) \
    {                                                                                       \
        rows r;                                                                             \
        int n_in = mode <= 1 ? 1 : 2;                                                       \
        if (softmax_rows(name, a, n_in, &r) != NB_OK)                                       \
            return NB_SHAPE_MISMATCH;                                                       \
        if (r.n == 0)                                                                       \
            return NB_OK;                                                                   \
        const T *x = nbc_contiguous_in(&a->in[0], S_IN0);                                   \
        const T *y = n_in > 1 ? nbc_contiguous_in(&a->in[1], S_IN1) : x;                   \
        T *o = out_buffer(a->out, S_OUT);                                                   \
        if (!x || !y || !o)                                                                 \
            return NB_OUT_OF_MEMORY;                                                        \
        _Pragma("omp parallel for if (r.n * r.len >= NBC_PARALLEL_MIN)")                    \
        for (int64_t k = 0; k < r.n; k++)                                                   \
            softmax_row_##SFX(mode, r.len, o + k * r.len, x + k * r.len, y + k * r.len);    \
        out_finish(a->out, o);                                                              \
        return NB_OK;                                                                       \
    }                                                                                       \
    static nb_status k_softmax_##SFX(const nb_kernel_args *a)                               \
    {                                                                                       \
        return softmax_kernel_##SFX(a, 0, "softmax");                                       \
    }                                                                                       \
    static nb_status k_log_softmax_##SFX(const nb_kernel_args *a)                           \
    {                                                                                       \
        return softmax_kernel_##SFX(a, 1, "log_softmax");                                   \
    }                                                                                       \
    static nb_status k_softmax_backward_##SFX(const nb_kernel_args *a)                      \
    {                                                                                       \
        return softmax_kernel_##SFX(a, 2, "softmax_backward");                              \
    }                                                                                       \
    static nb_status k_log_softmax_backward_##SFX(const nb_kernel_args *a)                  \
    {                                                                                       \
        return softmax_kernel_##SFX(a, 3, "log_softmax_backward");                          \
    }
DEF_SOFTMAX(f32, float)
DEF_SOFTMAX(f64, double)

#define E_SOFTMAX(SFX, E)                                                                   \
    {"softmax", E, k_softmax_##SFX}, {"log_softmax", E, k_log_softmax_##SFX},               \
        {"softmax_backward", E, k_softmax_backward_##SFX},                                  \
        {"log_softmax_backward", E, k_log_softmax_backward_##SFX},

const nb_kernel_desc nbc_softmax_kernels[] = {E_SOFTMAX(f32, NB_DTYPE_F32)
                                                  E_SOFTMAX(f64, NB_DTYPE_F64)};
const size_t nbc_softmax_count = sizeof nbc_softmax_kernels / sizeof nbc_softmax_kernels[0];
