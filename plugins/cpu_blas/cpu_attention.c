/* cpu_attention.c - the fused "attention" kernel, out = softmax(q k^T * scale) v per batch row,
 * and its backward "attention_backward" (flash-attention style). Keys are taken 16 at a time:
 * each block of k (and v) is transposed once into (E, 16) scratch and serves every query row,
 * whose online softmax state (max, sum, and the output row itself as accumulator) carries over
 * from block to block, so no score matrix exists: the scratch is one block of keys and values,
 * one (16, 16) tile of scores (16 scores in the forward) and three numbers per query row. Math in the operands' type (float32 for float32,
 * as PyTorch's cpu kernels); the loops over the 16 lanes and over E vectorise, built per ISA. */
#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>

#define ATT_BLOCK 16

/* The float32 exp vectorises; float64 keeps libm's. */
static inline float att_exp_f32(float x) { return nbc_expf(x); }
static inline double att_exp_f64(double x) { return exp(x); }

typedef float att_vec_f32 __attribute__((vector_size(32)));
typedef double att_vec_f64 __attribute__((vector_size(32)));

typedef struct att_dims {
    int64_t B, L, S, E, Ev;
    bool causal;
} att_dims;

/* Rows [j0, j0 + nb) of src (row length n) into dst (n, ATT_BLOCK), zero past nb. */
#define DEF_ATT_COMMON(SFX, T, ISA, ATTR)                                                   \
    ATTR static void att_transpose_##SFX##_##ISA(const T *restrict src, int64_t n, int64_t nb, \
                                                 T *restrict dst)                           \
    {                                                                                       \
        for (int64_t e = 0; e < n; e++)                                                     \
            for (int64_t t = 0; t < ATT_BLOCK; t++)                                         \
                dst[e * ATT_BLOCK + t] = t < nb ? src[t * n + e] : 0;                       \
    }                                                                                       \
    /* y += sum over t < nt of c[t * cs] x[t * ld ..]: the rows of x weighted by c, summed in \
     * registers 16 floats (or 8 doubles) at a time and stored once */                    \
    ATTR static inline void att_rows_##SFX##_##ISA(T *restrict y, const T *restrict x,      \
                                                   int64_t ld, const T *restrict c,         \
                                                   int64_t cs, int64_t nt, int64_t n)       \
    {                                                                                       \
        enum { LANES = 32 / sizeof(T) };                                                    \
        int64_t e = 0;                                                                      \
        for (; e + 2 * LANES <= n; e += 2 * LANES) {                                        \
            att_vec_##SFX a0, a1;                                                           \
            memcpy(&a0, y + e, sizeof a0);                                                  \
            memcpy(&a1, y + e + LANES, sizeof a1);                                          \
            for (int64_t t = 0; t < nt; t++) {                                              \
                att_vec_##SFX x0, x1;                                                       \
                memcpy(&x0, x + t * ld + e, sizeof x0);                                     \
                memcpy(&x1, x + t * ld + e + LANES, sizeof x1);                             \
                a0 += c[t * cs] * x0;                                                       \
                a1 += c[t * cs] * x1;                                                       \
            }                                                                               \
            memcpy(y + e, &a0, sizeof a0);                                                  \
            memcpy(y + e + LANES, &a1, sizeof a1);                                          \
        }                                                                                   \
        for (; e < n; e++) {                                                                \
            T a = y[e];                                                                     \
            for (int64_t t = 0; t < nt; t++)                                                \
                a += c[t * cs] * x[t * ld + e];                                             \
            y[e] = a;                                                                       \
        }                                                                                   \
    }                                                                                       \
    /* the sum of 16 values, pairwise (the halves add as vectors) */                        \
    ATTR static inline T att_sum16_##SFX##_##ISA(T *restrict v)                             \
    {                                                                                       \
        for (int w = ATT_BLOCK / 2; w > 0; w /= 2)                                          \
            for (int t = 0; t < w; t++)                                                     \
                v[t] += v[t + w];                                                           \
        return v[0];                                                                        \
    }                                                                                       \
    /* s[t] = scale * x . kt[:, t] for all 16 lanes, in 32-byte vectors (GCC's vector types: \
     * left to itself the compiler vectorises along e, with shuffles) */                   \
    ATTR static inline void att_dots_##SFX##_##ISA(const T *restrict x, const T *restrict kt,  \
                                                int64_t n, T scale, T *restrict s)          \
    {                                                                                       \
        enum { NV = ATT_BLOCK * sizeof(T) / 32, LANES = 32 / sizeof(T) };                   \
        att_vec_##SFX acc[NV];                                                              \
        memset(acc, 0, sizeof acc);                                                         \
        for (int64_t e = 0; e < n; e++)                                                     \
            for (int j = 0; j < NV; j++) {                                                  \
                att_vec_##SFX kv;                                                           \
                memcpy(&kv, kt + e * ATT_BLOCK + j * LANES, sizeof kv);                     \
                acc[j] += x[e] * kv;                                                        \
            }                                                                               \
        for (int j = 0; j < NV; j++) {                                                      \
            acc[j] *= scale;                                                                \
            memcpy(s + j * LANES, &acc[j], sizeof acc[j]);                                  \
        }                                                                                   \
    }

/* q (B,L,E), k (B,S,E), v (B,S,Ev) -> o (B,L,Ev); m and l are L scratch values, kt (E, 16). */
#define DEF_ATT_FORWARD(SFX, T, ISA, ATTR)                                                  \
    ATTR static void att_forward_##SFX##_##ISA(                                             \
        const att_dims *d, const T *restrict qp, const T *restrict kp, const T *restrict vp, \
        T *restrict op, T scale, T *restrict m, T *restrict l, T *restrict kt)              \
    {                                                                                       \
        int64_t L = d->L, S = d->S, E = d->E, Ev = d->Ev;                                   \
        T s[ATT_BLOCK], p[ATT_BLOCK];                                                       \
        for (int64_t b = 0; b < d->B; b++) {                                                \
            const T *qb = qp + b * L * E, *kb = kp + b * S * E, *vb = vp + b * S * Ev;       \
            T *ob = op + b * L * Ev;                                                        \
            for (int64_t i = 0; i < L; i++) {                                               \
                m[i] = -INFINITY;                                                           \
                l[i] = 0;                                                                   \
            }                                                                               \
            memset(ob, 0, (size_t)(L * Ev) * sizeof(T));                                    \
            for (int64_t j0 = 0; j0 < S; j0 += ATT_BLOCK) {                                 \
                int64_t nb = S - j0 < ATT_BLOCK ? S - j0 : ATT_BLOCK;                       \
                att_transpose_##SFX##_##ISA(kb + j0 * E, E, nb, kt);                        \
                for (int64_t i = d->causal ? j0 : 0; i < L; i++) { /* i < j0 sees none */   \
                    int64_t nv = d->causal && i - j0 + 1 < nb ? i - j0 + 1 : nb;            \
                    T *oi = ob + i * Ev;                                                    \
                    att_dots_##SFX##_##ISA(qb + i * E, kt, E, scale, s);                    \
                    T bm = -INFINITY;                                                       \
                    for (int64_t t = 0; t < nv; t++)                                        \
                        bm = s[t] > bm ? s[t] : bm;                                         \
                    if (bm > m[i]) { /* a new maximum: rescale what was summed so far */    \
                        T r = att_exp_##SFX(m[i] - bm);                                     \
                        l[i] *= r;                                                          \
                        for (int64_t e = 0; e < Ev; e++)                                    \
                            oi[e] *= r;                                                     \
                        m[i] = bm;                                                          \
                    }                                                                       \
                    T mi = m[i];                                                            \
                    for (int t = 0; t < ATT_BLOCK; t++)                                     \
                        p[t] = t < nv && mi != -INFINITY ? att_exp_##SFX(s[t] - mi) : 0;    \
                    att_rows_##SFX##_##ISA(oi, vb + j0 * Ev, Ev, p, 1, nv, Ev);             \
                    l[i] += att_sum16_##SFX##_##ISA(p); /* p[t >= nv] are 0 */              \
                }                                                                           \
            }                                                                               \
            for (int64_t i = 0; i < L; i++) {                                               \
                T rl = 1 / l[i];                                                            \
                for (int64_t e = 0; e < Ev; e++)                                            \
                    ob[i * Ev + e] *= rl;                                                   \
            }                                                                               \
        }                                                                                   \
    }

/* Per query row i, with P the softmax row, dP_j = g_i . v_j and D = sum_j P_j dP_j (one online
 * pass over the key blocks, like the forward's): dS_j = P_j (dP_j - D), dq_i = scale sum_j dS_j
 * k_j, dk_j = scale sum_i dS_j q_i, dv_j = sum_i P_j g_i (a second pass, the blocks recomputed).
 * Both passes take (16 queries, 16 keys) tiles: s and dp are the one score block of a head.
 * m, l, D: L scratch values each; kt (E, 16), vt (Ev, 16). dq, dk, dv zero on entry. */
#define DEF_ATT_BACKWARD(SFX, T, ISA, ATTR)                                                 \
    ATTR static void att_backward_##SFX##_##ISA(                                            \
        const att_dims *d, const T *restrict gp, const T *restrict qp, const T *restrict kp, \
        const T *restrict vp, T *restrict dqp, T *restrict dkp, T *restrict dvp, T scale,   \
        T *restrict m, T *restrict l, T *restrict D, T *restrict kt, T *restrict vt)        \
    {                                                                                       \
        int64_t L = d->L, S = d->S, E = d->E, Ev = d->Ev;                                   \
        T s[ATT_BLOCK][ATT_BLOCK], dp[ATT_BLOCK][ATT_BLOCK];                                \
        int64_t nv[ATT_BLOCK];                                                              \
        for (int64_t b = 0; b < d->B; b++) {                                                \
            const T *qb = qp + b * L * E, *kb = kp + b * S * E, *vb = vp + b * S * Ev;       \
            const T *gb = gp + b * L * Ev;                                                  \
            T *dqb = dqp + b * L * E, *dkb = dkp + b * S * E, *dvb = dvp + b * S * Ev;      \
            for (int64_t i = 0; i < L; i++) {                                               \
                m[i] = -INFINITY;                                                           \
                l[i] = D[i] = 0;                                                            \
            }                                                                               \
            /* one block of keys: a tile's statistics are complete after pass 0, so the     \
             * gradient part follows at once on the same scores (no second pass) */         \
            bool one = S <= ATT_BLOCK;                                                      \
            for (int pass = 0; pass < (one ? 1 : 2); pass++) {                              \
                for (int64_t j0 = 0; j0 < S; j0 += ATT_BLOCK) {                             \
                    int64_t nb = S - j0 < ATT_BLOCK ? S - j0 : ATT_BLOCK;                   \
                    att_transpose_##SFX##_##ISA(kb + j0 * E, E, nb, kt);                    \
                    att_transpose_##SFX##_##ISA(vb + j0 * Ev, Ev, nb, vt);                  \
                    for (int64_t i0 = d->causal ? j0 : 0; i0 < L; i0 += ATT_BLOCK) {        \
                        int64_t ni = L - i0 < ATT_BLOCK ? L - i0 : ATT_BLOCK;               \
                        for (int64_t r = 0; r < ni; r++) {                                  \
                            int64_t i = i0 + r, vis = i - j0 + 1;                           \
                            nv[r] = !d->causal || vis > nb ? nb : vis;                      \
                            att_dots_##SFX##_##ISA(qb + i * E, kt, E, scale, s[r]);         \
                            att_dots_##SFX##_##ISA(gb + i * Ev, vt, Ev, 1, dp[r]);          \
                        }                                                                   \
                        if (pass == 0) {                                                    \
                            for (int64_t r = 0; r < ni; r++) {                              \
                                int64_t i = i0 + r;                                         \
                                T mi = m[i], bm = -INFINITY;                                \
                                for (int64_t t = 0; t < nv[r]; t++)                         \
                                    bm = s[r][t] > bm ? s[r][t] : bm;                       \
                                if (bm > mi) {                                              \
                                    T f = att_exp_##SFX(mi - bm);                           \
                                    l[i] *= f;                                              \
                                    D[i] *= f;                                              \
                                    m[i] = mi = bm;                                         \
                                }                                                           \
                                T pl[ATT_BLOCK], pd[ATT_BLOCK];                             \
                                for (int t = 0; t < ATT_BLOCK; t++) {                       \
                                    pl[t] = t < nv[r] && mi != -INFINITY                    \
                                                ? att_exp_##SFX(s[r][t] - mi) : 0;          \
                                    pd[t] = pl[t] * dp[r][t];                               \
                                }                                                           \
                                l[i] += att_sum16_##SFX##_##ISA(pl);                        \
                                D[i] += att_sum16_##SFX##_##ISA(pd);                        \
                            }                                                               \
                            if (!one)                                                       \
                                continue;                                                   \
                            for (int64_t i = i0; i < i0 + ni; i++) {                        \
                                l[i] = l[i] > 0 ? 1 / l[i] : 0;                             \
                                D[i] *= l[i];                                               \
                            }                                                               \
                        }                                                                   \
                        /* s becomes P, dp becomes dS * scale (l is 1 / sum after pass 0) */ \
                        for (int64_t r = 0; r < ni; r++) {                                  \
                            T mi = m[i0 + r], rl = l[i0 + r], Di = D[i0 + r];               \
                            for (int t = 0; t < ATT_BLOCK; t++) {                           \
                                T pt = t < nv[r] && mi != -INFINITY                         \
                                           ? att_exp_##SFX(s[r][t] - mi) * rl : 0;          \
                                s[r][t] = pt;                                               \
                                dp[r][t] = pt * (dp[r][t] - Di) * scale;                    \
                            }                                                               \
                        }                                                                   \
                        /* dq_i += dS_i. k rows; dk_j += dS_.j q rows; dv_j += P_.j g rows */ \
                        for (int64_t r = 0; r < ni; r++)                                    \
                            att_rows_##SFX##_##ISA(dqb + (i0 + r) * E, kb + j0 * E, E, dp[r], \
                                                   1, nb, E);                               \
                        for (int64_t t = 0; t < nb; t++) {                                  \
                            att_rows_##SFX##_##ISA(dkb + (j0 + t) * E, qb + i0 * E, E,      \
                                                   &dp[0][t], ATT_BLOCK, ni, E);            \
                            att_rows_##SFX##_##ISA(dvb + (j0 + t) * Ev, gb + i0 * Ev, Ev,   \
                                                   &s[0][t], ATT_BLOCK, ni, Ev);            \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
                if (pass == 0 && !one)                                                      \
                    for (int64_t i = 0; i < L; i++) {                                       \
                        l[i] = l[i] > 0 ? 1 / l[i] : 0;                                     \
                        D[i] *= l[i];                                                       \
                    }                                                                       \
            }                                                                               \
        }                                                                                   \
    }

#define DEF_ATT_ISA(SFX, T, ISA, ATTR)                                                      \
    DEF_ATT_COMMON(SFX, T, ISA, ATTR)                                                       \
    DEF_ATT_FORWARD(SFX, T, ISA, ATTR)                                                      \
    DEF_ATT_BACKWARD(SFX, T, ISA, ATTR)
DEF_ATT_ISA(f32, float, base, )
DEF_ATT_ISA(f64, double, base, )
#if NBC_HAVE_V3
DEF_ATT_ISA(f32, float, v3, NBC_V3)
DEF_ATT_ISA(f64, double, v3, NBC_V3)
#endif

/* Checks q (B,L,E), k (B,S,E), v (B,S,Ev) at in[q0..q0+2] and the other operands' shapes
 * (given as the dims they must have), all 3-d and contiguous. */
static nb_status att_shapes(const char *name, const nb_kernel_args *a, int q0, att_dims *d)
{
    for (int k = 0; k < a->n_in; k++)
        if (a->in[k].ndim != 3 || !nbc_is_contiguous(&a->in[k]))
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: input %d must be 3-d and contiguous", name,
                           k);
    if (a->out->ndim != 3 || !nbc_is_contiguous(a->out))
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: out must be 3-d and contiguous", name);
    const nb_operand *q = &a->in[q0], *k = &a->in[q0 + 1], *v = &a->in[q0 + 2];
    *d = (att_dims){q->shape[0], q->shape[1], k->shape[1], q->shape[2], v->shape[2],
                    a->i[0] != 0};
    if (k->shape[0] != d->B || v->shape[0] != d->B || k->shape[2] != d->E ||
        v->shape[1] != d->S)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: q, k and v do not fit", name);
    return NB_OK;
}

static bool dims_are(const nb_operand *o, int64_t d0, int64_t d1, int64_t d2)
{
    return o->shape[0] == d0 && o->shape[1] == d1 && o->shape[2] == d2;
}

/* q (B, L, E), k (B, S, E), v (B, S, Ev), out (B, L, Ev), all contiguous (the core makes them
 * so); f[0] the scale; i[0] 1 for causal (query i sees keys j <= i). */
#define DEF_ATTENTION(SFX, T)                                                               \
    static nb_status k_attention_##SFX(const nb_kernel_args *a)                             \
    {                                                                                       \
        if (a->n_in != 3)                                                                   \
            return NBC_ERR(NB_INVALID_ARGUMENT, "attention: expected q, k, v, got %d inputs", \
                           (int)a->n_in);                                                   \
        att_dims d;                                                                         \
        nb_status st = att_shapes("attention", a, 0, &d);                                   \
        if (st != NB_OK)                                                                    \
            return st;                                                                      \
        if (!dims_are(a->out, d.B, d.L, d.Ev))                                              \
            return NBC_ERR(NB_SHAPE_MISMATCH, "attention: out is not (B, L, Ev)");          \
        if (!d.B || !d.L || !d.Ev)                                                          \
            return NB_OK;                                                                   \
        T *m = malloc((size_t)(2 * d.L + d.E * ATT_BLOCK + 1) * sizeof *m);                 \
        if (!m)                                                                             \
            return NBC_ERR(NB_OUT_OF_MEMORY, "attention: out of memory for %lld rows' "     \
                           "state", (long long)d.L);                                        \
        NBC_PICK(att_forward_##SFX)(&d, (const T *)nbc_ptr(&a->in[0]),                      \
                                    (const T *)nbc_ptr(&a->in[1]),                          \
                                    (const T *)nbc_ptr(&a->in[2]), (T *)nbc_ptr(a->out),    \
                                    (T)a->f[0], m, m + d.L, m + 2 * d.L);                   \
        free(m);                                                                            \
        return NB_OK;                                                                       \
    }
DEF_ATTENTION(f32, float)
DEF_ATTENTION(f64, double)

/* in[0] grad of out (B,L,Ev), in[1] q, in[2] k, in[3] v, in[4] dk (B,S,E), in[5] dv (B,S,Ev),
 * all contiguous; out dq (B,L,E); dk and dv are written too. f[0] scale, i[0] causal. */
#define DEF_ATTENTION_BACKWARD(SFX, T)                                                      \
    static nb_status k_attention_backward_##SFX(const nb_kernel_args *a)                    \
    {                                                                                       \
        const char *name = "attention_backward";                                            \
        if (a->n_in != 6)                                                                   \
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: expected 6 inputs (g, q, k, v, dk, dv), " \
                           "got %d", name, (int)a->n_in);                                   \
        att_dims d;                                                                         \
        nb_status st = att_shapes(name, a, 1, &d);                                          \
        if (st != NB_OK)                                                                    \
            return st;                                                                      \
        if (!dims_are(&a->in[0], d.B, d.L, d.Ev) || !dims_are(&a->in[4], d.B, d.S, d.E) ||  \
            !dims_are(&a->in[5], d.B, d.S, d.Ev) || !dims_are(a->out, d.B, d.L, d.E))       \
            return NBC_ERR(NB_SHAPE_MISMATCH, "%s: g, dk, dv or dq does not fit q, k, v",   \
                           name);                                                           \
        T *dk = (T *)nbc_ptr(&a->in[4]), *dv = (T *)nbc_ptr(&a->in[5]);                     \
        memset(dk, 0, (size_t)(d.B * d.S * d.E) * sizeof(T));                               \
        memset(dv, 0, (size_t)(d.B * d.S * d.Ev) * sizeof(T));                              \
        memset(nbc_ptr(a->out), 0, (size_t)(d.B * d.L * d.E) * sizeof(T));                  \
        if (!d.B || !d.L || !d.S)                                                           \
            return NB_OK;                                                                   \
        T *m = malloc((size_t)(3 * d.L + (d.E + d.Ev) * ATT_BLOCK + 1) * sizeof *m);        \
        if (!m)                                                                             \
            return NBC_ERR(NB_OUT_OF_MEMORY, "%s: out of memory for %lld rows' state",      \
                           name, (long long)d.L);                                           \
        NBC_PICK(att_backward_##SFX)(&d, (const T *)nbc_ptr(&a->in[0]),                     \
                                     (const T *)nbc_ptr(&a->in[1]),                         \
                                     (const T *)nbc_ptr(&a->in[2]),                         \
                                     (const T *)nbc_ptr(&a->in[3]), (T *)nbc_ptr(a->out),   \
                                     dk, dv, (T)a->f[0], m, m + d.L, m + 2 * d.L,           \
                                     m + 3 * d.L, m + 3 * d.L + d.E * ATT_BLOCK);           \
        free(m);                                                                            \
        return NB_OK;                                                                       \
    }
DEF_ATTENTION_BACKWARD(f32, float)
DEF_ATTENTION_BACKWARD(f64, double)

const nb_kernel_desc nbc_attention_kernels[] = {
    {"attention_backward", NB_DTYPE_F32, k_attention_backward_f32},
    {"attention_backward", NB_DTYPE_F64, k_attention_backward_f64},
    {"attention", NB_DTYPE_F32, k_attention_f32},
    {"attention", NB_DTYPE_F64, k_attention_f64},
};
const size_t nbc_attention_count = sizeof nbc_attention_kernels / sizeof nbc_attention_kernels[0];
