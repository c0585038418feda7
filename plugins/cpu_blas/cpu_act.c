/* cpu_act.c - the fused "gelu" and "gelu_backward" kernels (erf and tanh forms): one pass over
 * contiguous operands instead of the composite's chain of elementwise ops and temporaries.
 * float32 math for float32 (as PyTorch's cpu kernels), double for float64; the float32 tanh
 * form, the one transformers train with, is a vector loop (nbc_expf, ISA clones). */
#include "cpu_internal.h"

#include <math.h>

/* gelu(x) = x Phi(x); the tanh form is x sigmoid(2 c (x + a x^3)) = 0.5 x (1 + tanh(c (..))),
 * written with one exp: c = sqrt(2 / pi), a = 0.044715. */
#define GELU_A 0.044715
#define GELU_2C 1.5957691216057307118     /* 2 sqrt(2 / pi) */
#define GELU_RSQRT2 0.70710678118654752440 /* 1 / sqrt(2) */
#define GELU_RSQRT2PI 0.39894228040143267794 /* 1 / sqrt(2 pi) */

static nb_status gelu_check(const char *name, const nb_kernel_args *a, int n_in)
{
    if (a->n_in != n_in)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: expected %d inputs, got %d", name, n_in,
                       (int)a->n_in);
    int64_t n = nbc_numel(a->out);
    for (int k = 0; k < n_in; k++)
        if (nbc_numel(&a->in[k]) != n || !nbc_is_contiguous(&a->in[k]))
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: input %d must be contiguous with the "
                           "output's %lld elements", name, k, (long long)n);
    if (!nbc_is_contiguous(a->out))
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: out must be contiguous", name);
    return NB_OK;
}

/* The float32 tanh form's loops, once per ISA. */
#define DEF_GELU_TANH_F32(ISA, ATTR)                                                        \
    ATTR static void gelu_tanh_f32_##ISA(const float *x, float *y, int64_t n)               \
    {                                                                                       \
        for (int64_t k = 0; k < n; k++) {                                                   \
            float v = x[k], u = (float)GELU_2C * (v + (float)GELU_A * v * v * v);            \
            y[k] = v / (1 + nbc_expf(-u));                                                  \
        }                                                                                   \
    }                                                                                       \
    ATTR static void gelu_tanh_bw_f32_##ISA(const float *g, const float *x, float *dx,      \
                                            int64_t n)                                      \
    {                                                                                       \
        for (int64_t k = 0; k < n; k++) {                                                   \
            float v = x[k], v2 = v * v;                                                     \
            float s = 1 / (1 + nbc_expf(-(float)GELU_2C * (v + (float)GELU_A * v2 * v)));    \
            float du = (float)GELU_2C * (1 + (float)(3 * GELU_A) * v2);                     \
            dx[k] = g[k] * (s + v * s * (1 - s) * du);                                      \
        }                                                                                   \
    }
DEF_GELU_TANH_F32(base, )
#if NBC_HAVE_V3
DEF_GELU_TANH_F32(v3, NBC_V3)
#endif

/* in[0] x; out y; i[0] 1: tanh form. */
#define DEF_GELU(SFX, T, EXP, ERF)                                                          \
    static nb_status k_gelu_##SFX(const nb_kernel_args *a)                                  \
    {                                                                                       \
        nb_status st = gelu_check("gelu", a, 1);                                            \
        if (st != NB_OK)                                                                    \
            return st;                                                                      \
        const T *x = (const T *)nbc_ptr(&a->in[0]);                                         \
        T *y = (T *)nbc_ptr(a->out);                                                        \
        int64_t n = nbc_numel(a->out);                                                      \
        if (a->i[0] && sizeof(T) == sizeof(float))                                          \
            NBC_PICK(gelu_tanh_f32)((const float *)x, (float *)y, n);                       \
        else if (a->i[0])                                                                   \
            for (int64_t k = 0; k < n; k++) {                                               \
                T v = x[k], u = (T)GELU_2C * (v + (T)GELU_A * v * v * v);                    \
                y[k] = v / (1 + EXP(-u));                                                   \
            }                                                                               \
        else                                                                                \
            for (int64_t k = 0; k < n; k++)                                                 \
                y[k] = (T)0.5 * x[k] * (1 + ERF(x[k] * (T)GELU_RSQRT2));                     \
        return NB_OK;                                                                       \
    }

/* in[0] grad, in[1] x; out dx = grad * gelu'(x); i[0] 1: tanh form. With s = sigmoid(u),
 * the tanh form's derivative is s + x s (1 - s) u'(x), u' = 2c (1 + 3a x^2); erf's is
 * Phi(x) + x phi(x). */
#define DEF_GELU_BACKWARD(SFX, T, EXP, ERF)                                                 \
    static nb_status k_gelu_backward_##SFX(const nb_kernel_args *a)                         \
    {                                                                                       \
        nb_status st = gelu_check("gelu_backward", a, 2);                                   \
        if (st != NB_OK)                                                                    \
            return st;                                                                      \
        const T *g = (const T *)nbc_ptr(&a->in[0]), *x = (const T *)nbc_ptr(&a->in[1]);     \
        T *dx = (T *)nbc_ptr(a->out);                                                       \
        int64_t n = nbc_numel(a->out);                                                      \
        if (a->i[0] && sizeof(T) == sizeof(float))                                          \
            NBC_PICK(gelu_tanh_bw_f32)((const float *)g, (const float *)x, (float *)dx, n); \
        else if (a->i[0])                                                                   \
            for (int64_t k = 0; k < n; k++) {                                               \
                T v = x[k], v2 = v * v;                                                     \
                T s = 1 / (1 + EXP(-(T)GELU_2C * (v + (T)GELU_A * v2 * v)));                 \
                T du = (T)GELU_2C * (1 + (T)(3 * GELU_A) * v2);                             \
                dx[k] = g[k] * (s + v * s * (1 - s) * du);                                  \
            }                                                                               \
        else                                                                                \
            for (int64_t k = 0; k < n; k++) {                                               \
                T v = x[k];                                                                 \
                T cdf = (T)0.5 * (1 + ERF(v * (T)GELU_RSQRT2));                             \
                T pdf = (T)GELU_RSQRT2PI * EXP((T)-0.5 * v * v);                            \
                dx[k] = g[k] * (cdf + v * pdf);                                             \
            }                                                                               \
        return NB_OK;                                                                       \
    }

DEF_GELU(f32, float, expf, erff)
DEF_GELU(f64, double, exp, erf)
DEF_GELU_BACKWARD(f32, float, expf, erff)
DEF_GELU_BACKWARD(f64, double, exp, erf)

const nb_kernel_desc nbc_act_kernels[] = {
    {"gelu", NB_DTYPE_F32, k_gelu_f32},
    {"gelu", NB_DTYPE_F64, k_gelu_f64},
    {"gelu_backward", NB_DTYPE_F32, k_gelu_backward_f32},
    {"gelu_backward", NB_DTYPE_F64, k_gelu_backward_f64},
};
const size_t nbc_act_count = sizeof nbc_act_kernels / sizeof nbc_act_kernels[0];
