/* cpu_attention.c - the fused "attention" kernel: out = softmax(q k^T * scale) v per batch row,
 * one query row at a time with an online softmax over blocks of 16 keys, so that no score matrix
 * exists: the scratch is 16 scores and one output row of accumulators, in the operands' type
 * (float32 math for float32, as PyTorch's cpu kernels), so the row loops vectorise. Its
 * backward, "attention_backward", recomputes each row's scores the same way (flash-attention
 * style): 16 scores and 16 products g v^T are all it keeps. */
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

/* The scores of query row qi against keys j0 .. j0 + nb - 1 into sc, and the products
 * g_i . v_j into dp. */
#define DEF_ATT_BLOCK(SFX, T)                                                               \
    static void att_block_##SFX(const T *qi, const T *gi, const T *kp, const T *vp, int64_t E,  \
                                int64_t Ev, int64_t j0, int64_t nb, T scale, T *sc, T *dp)  \
    {                                                                                       \
        for (int64_t t = 0; t < nb; t++) {                                                  \
            const T *kj = kp + (j0 + t) * E, *vj = vp + (j0 + t) * Ev;                      \
            T d = 0, e2 = 0;                                                                \
            for (int64_t e = 0; e < E; e++)                                                 \
                d += qi[e] * kj[e];                                                         \
            for (int64_t e = 0; e < Ev; e++)                                                \
                e2 += gi[e] * vj[e];                                                        \
            sc[t] = d * scale;                                                              \
            dp[t] = e2;                                                                     \
        }                                                                                   \
    }

/* in[0] grad of out (B,L,Ev), in[1] q, in[2] k, in[3] v, in[4] dk (B,S,E), in[5] dv (B,S,Ev),
 * all contiguous; out dq (B,L,E); dk and dv are written too. f[0] scale, i[0] causal. Per query
 * row i, with P the softmax row, dP_j = g_i . v_j and D = sum_j P_j dP_j (one online pass, like
 * the forward's): dS_j = P_j (dP_j - D), dq_i = scale sum_j dS_j k_j, dk_j += scale dS_j q_i,
 * dv_j += P_j g_i. The second pass recomputes the block, except when a single block holds the
 * row. */
#define DEF_ATTENTION_BACKWARD(SFX, T, EXP)                                                 \
    DEF_ATT_BLOCK(SFX, T)                                                                   \
    static nb_status k_attention_backward_##SFX(const nb_kernel_args *a)                    \
    {                                                                                       \
        const char *name = "attention_backward";                                            \
        if (a->n_in != 6 || a->out->ndim != 3)                                              \
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: expected 6 inputs (g, q, k, v, dk, dv) " \
                           "and a 3-d out, got %d inputs", name, (int)a->n_in);             \
        for (int k = 0; k < 6; k++)                                                         \
            if (a->in[k].ndim != 3 || !nbc_is_contiguous(&a->in[k]))                        \
                return NBC_ERR(NB_INVALID_ARGUMENT, "%s: input %d must be 3-d and "         \
                               "contiguous", name, k);                                      \
        const nb_operand *g = &a->in[0], *q = &a->in[1], *k = &a->in[2], *v = &a->in[3];    \
        const nb_operand *dk = &a->in[4], *dv = &a->in[5], *dq = a->out;                    \
        int64_t B = q->shape[0], L = q->shape[1], E = q->shape[2], S = k->shape[1];          \
        int64_t Ev = v->shape[2];                                                           \
        bool fits = k->shape[0] == B && v->shape[0] == B && k->shape[2] == E &&             \
                    v->shape[1] == S;                                                       \
        for (int32_t d = 0; d < 3; d++)                                                     \
            fits = fits && g->shape[d] == (d == 2 ? Ev : q->shape[d]) &&                    \
                   dq->shape[d] == q->shape[d] && dk->shape[d] == k->shape[d] &&            \
                   dv->shape[d] == v->shape[d];                                             \
        if (!fits)                                                                          \
            return NBC_ERR(NB_SHAPE_MISMATCH, "%s: g, q, k, v, dk, dv and dq do not fit",   \
                           name);                                                           \
        if (!nbc_is_contiguous(dq))                                                         \
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: out must be contiguous", name);        \
        const T *gp = (const T *)nbc_ptr(g), *qp = (const T *)nbc_ptr(q);                   \
        const T *kp = (const T *)nbc_ptr(k), *vp = (const T *)nbc_ptr(v);                   \
        T *dqp = (T *)nbc_ptr(dq), *dkp = (T *)nbc_ptr(dk), *dvp = (T *)nbc_ptr(dv);        \
        T scale = (T)a->f[0];                                                               \
        bool causal = a->i[0] != 0;                                                         \
        memset(dkp, 0, (size_t)(B * S * E) * sizeof(T));                                   \
        memset(dvp, 0, (size_t)(B * S * Ev) * sizeof(T));                                   \
        T sc[ATT_BLOCK], dp[ATT_BLOCK];                                                     \
        for (int64_t b = 0; b < B; b++) {                                                   \
            const T *kb = kp + b * S * E, *vb = vp + b * S * Ev;                            \
            T *dkb = dkp + b * S * E, *dvb = dvp + b * S * Ev;                              \
            for (int64_t i = 0; i < L; i++) {                                               \
                const T *qi = qp + (b * L + i) * E, *gi = gp + (b * L + i) * Ev;            \
                T *dqi = dqp + (b * L + i) * E;                                             \
                int64_t jmax = causal ? (i + 1 < S ? i + 1 : S) : S;                        \
                T m = -INFINITY, l = 0, D = 0;                                              \
                for (int64_t j0 = 0; j0 < jmax; j0 += ATT_BLOCK) {                          \
                    int64_t nb = jmax - j0 < ATT_BLOCK ? jmax - j0 : ATT_BLOCK;             \
                    att_block_##SFX(qi, gi, kb, vb, E, Ev, j0, nb, scale, sc, dp);          \
                    T bm = -INFINITY;                                                       \
                    for (int64_t t = 0; t < nb; t++)                                        \
                        bm = sc[t] > bm ? sc[t] : bm;                                       \
                    if (bm > m) {                                                           \
                        T r = EXP(m - bm);                                                  \
                        l *= r;                                                             \
                        D *= r;                                                             \
                        m = bm;                                                             \
                    }                                                                       \
                    for (int64_t t = 0; t < nb; t++) {                                      \
                        T p = m == -INFINITY ? 0 : EXP(sc[t] - m);                          \
                        l += p;                                                             \
                        D += p * dp[t];                                                     \
                    }                                                                       \
                }                                                                           \
                T rl = l > 0 ? 1 / l : 0;                                                   \
                D *= rl;                                                                    \
                for (int64_t e = 0; e < E; e++)                                             \
                    dqi[e] = 0;                                                             \
                for (int64_t j0 = 0; j0 < jmax; j0 += ATT_BLOCK) {                          \
                    int64_t nb = jmax - j0 < ATT_BLOCK ? jmax - j0 : ATT_BLOCK;             \
                    if (jmax > ATT_BLOCK)                                                   \
                        att_block_##SFX(qi, gi, kb, vb, E, Ev, j0, nb, scale, sc, dp);      \
                    for (int64_t t = 0; t < nb; t++) {                                      \
                        T p = m == -INFINITY ? 0 : EXP(sc[t] - m) * rl;                     \
                        T ds = p * (dp[t] - D) * scale;                                     \
                        const T *kj = kb + (j0 + t) * E;                                    \
                        T *dkj = dkb + (j0 + t) * E, *dvj = dvb + (j0 + t) * Ev;            \
                        for (int64_t e = 0; e < E; e++)                                     \
                            dqi[e] += ds * kj[e];                                           \
                        for (int64_t e = 0; e < E; e++)                                     \
                            dkj[e] += ds * qi[e];                                           \
                        for (int64_t e = 0; e < Ev; e++)                                    \
                            dvj[e] += p * gi[e];                                            \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        return NB_OK;                                                                       \
    }
DEF_ATTENTION_BACKWARD(f32, float, expf)
DEF_ATTENTION_BACKWARD(f64, double, exp)

const nb_kernel_desc nbc_attention_kernels[] = {
    {"attention_backward", NB_DTYPE_F32, k_attention_backward_f32},
    {"attention_backward", NB_DTYPE_F64, k_attention_backward_f64},
    {"attention", NB_DTYPE_F32, k_attention_f32},
    {"attention", NB_DTYPE_F64, k_attention_f64},
};
const size_t nbc_attention_count = sizeof nbc_attention_kernels / sizeof nbc_attention_kernels[0];
