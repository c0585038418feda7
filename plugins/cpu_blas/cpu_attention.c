/* cpu_attention.c - the fused "attention" kernel: out = softmax(q k^T * scale) v per batch row,
 * one query row at a time with an online softmax over blocks of 16 keys, so that no score matrix
 * exists: the scratch is 16 scores and one output row of accumulators, in the operands' type
 * (float32 math for float32, as PyTorch's cpu kernels), so the row loops vectorise. */
#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>

#define ATT_BLOCK 16

/* q (B, L, E), k (B, S, E), v (B, S, Ev), out (B, L, Ev), all contiguous (the core makes them
 * so); f[0] the scale; i[0] 1 for causal (query i sees keys j <= i). */
#define DEF_ATTENTION(SFX, T, EXP)                                                             \
    static nb_status k_attention_##SFX(const nb_kernel_args *a)                             \
    {                                                                                       \
        if (a->n_in != 3 || a->out->ndim != 3 || a->in[0].ndim != 3 || a->in[1].ndim != 3 ||\
            a->in[2].ndim != 3)                                                             \
            return NBC_ERR(NB_INVALID_ARGUMENT, "attention: expected 3-d q, k, v and out");  \
        const nb_operand *q = &a->in[0], *k = &a->in[1], *v = &a->in[2], *o = a->out;       \
        int64_t B = q->shape[0], L = q->shape[1], E = q->shape[2], S = k->shape[1];          \
        int64_t Ev = v->shape[2];                                                           \
        if (k->shape[0] != B || v->shape[0] != B || k->shape[2] != E || v->shape[1] != S ||  \
            o->shape[0] != B || o->shape[1] != L || o->shape[2] != Ev)                      \
            return NBC_ERR(NB_SHAPE_MISMATCH, "attention: q, k, v and out do not fit");     \
        if (!nbc_is_contiguous(q) || !nbc_is_contiguous(k) || !nbc_is_contiguous(v) ||      \
            !nbc_is_contiguous(o))                                                          \
            return NBC_ERR(NB_INVALID_ARGUMENT, "attention: operands must be contiguous");  \
        const T *qp = (const T *)nbc_ptr(q), *kp = (const T *)nbc_ptr(k);                   \
        const T *vp = (const T *)nbc_ptr(v);                                                \
        T *op = (T *)nbc_ptr(o);                                                            \
        double scale = a->f[0];                                                             \
        bool causal = a->i[0] != 0;                                                         \
        T *acc = malloc((size_t)(Ev ? Ev : 1) * sizeof *acc);                               \
        if (!acc)                                                                           \
            return NBC_ERR(NB_OUT_OF_MEMORY, "attention: out of memory for %lld "            \
                           "accumulators", (long long)Ev);                                  \
        T s[ATT_BLOCK];                                                                     \
        for (int64_t b = 0; b < B; b++)                                                     \
            for (int64_t i = 0; i < L; i++) {                                               \
                const T *qi = qp + (b * L + i) * E;                                         \
                int64_t jmax = causal ? (i + 1 < S ? i + 1 : S) : S;                        \
                T m = -INFINITY, l = 0;                                                     \
                for (int64_t e = 0; e < Ev; e++)                                            \
                    acc[e] = 0;                                                             \
                for (int64_t j0 = 0; j0 < jmax; j0 += ATT_BLOCK) {                          \
                    int64_t nb = jmax - j0 < ATT_BLOCK ? jmax - j0 : ATT_BLOCK;             \
                    T bm = -INFINITY;                                                       \
                    for (int64_t t = 0; t < nb; t++) {                                      \
                        const T *kj = kp + (b * S + j0 + t) * E;                            \
                        T d = 0;                                                            \
                        for (int64_t e = 0; e < E; e++)                                     \
                            d += qi[e] * kj[e];                                             \
                        s[t] = d * (T)scale;                                                \
                        bm = s[t] > bm ? s[t] : bm;                                         \
                    }                                                                       \
                    if (bm > m) { /* a new maximum: rescale what was summed so far */       \
                        T r = EXP(m - bm);                                                  \
                        l *= r;                                                             \
                        for (int64_t e = 0; e < Ev; e++)                                    \
                            acc[e] *= r;                                                    \
                        m = bm;                                                             \
                    }                                                                       \
                    for (int64_t t = 0; t < nb; t++) {                                      \
                        T p = m == -INFINITY ? 0 : EXP(s[t] - m);                           \
                        const T *vj = vp + (b * S + j0 + t) * Ev;                           \
                        l += p;                                                             \
                        for (int64_t e = 0; e < Ev; e++)                                    \
                            acc[e] += p * vj[e];                                            \
                    }                                                                       \
                }                                                                           \
                T *oi = op + (b * L + i) * Ev;                                              \
                for (int64_t e = 0; e < Ev; e++)                                            \
                    oi[e] = acc[e] / l;                                                     \
            }                                                                               \
        free(acc);                                                                          \
        return NB_OK;                                                                       \
    }
DEF_ATTENTION(f32, float, expf)
DEF_ATTENTION(f64, double, exp)

const nb_kernel_desc nbc_attention_kernels[] = {
    {"attention", NB_DTYPE_F32, k_attention_f32},
    {"attention", NB_DTYPE_F64, k_attention_f64},
};
const size_t nbc_attention_count = sizeof nbc_attention_kernels / sizeof nbc_attention_kernels[0];
