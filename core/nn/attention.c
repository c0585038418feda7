/* attention.c - scaled_dot_product_attention: softmax(q k^T * scale + mask) v, with the causal
 * flag, a bool or additive mask and dropout on the weights, as PyTorch's math path computes it;
 * without mask and dropout, a device's fused "attention" kernel (tier 2) runs the forward, and
 * its "attention_backward" kernel or public ops (the weights recomputed from q and k) the
 * backward. */
#include "nn_common.h"

/* Whether a (..., L, S)-broadcastable mask fits the scores' shape. */
static bool broadcasts_to(const nb_tensor *m, int32_t nd, const int64_t *shape)
{
    if (nb_tensor_ndim(m) > nd)
        return false;
    for (int32_t d = 0; d < nb_tensor_ndim(m); d++) {
        int64_t a = nbi_dims(m)[nb_tensor_ndim(m) - 1 - d], b = shape[nd - 1 - d];
        if (a != b && a != 1)
            return false;
    }
    return true;
}

/* (L, S) bool, true above the diagonal (the positions a causal query may not see); made on the
 * host, so that devices without bool kernels run it. */
static nb_tensor *causal_mask(int64_t L, int64_t S, const char *device)
{
    int64_t n;
    if (__builtin_mul_overflow(L, S, &n)) {
        nbi_error(NB_OUT_OF_MEMORY, "scaled_dot_product_attention: %lld x %lld scores are too "
                  "many", (long long)L, (long long)S);
        return NULL;
    }
    bool *m = nbi_malloc((size_t)(n ? n : 1));
    if (!m) {
        nbi_error(NB_OUT_OF_MEMORY, "scaled_dot_product_attention: out of host memory");
        return NULL;
    }
    for (int64_t i = 0; i < L; i++)
        for (int64_t j = 0; j < S; j++)
            m[i * S + j] = j > i;
    nb_tensor *t = nb_from_data(m, NB_SHAPE(L, S), (nb_opts){NB_DTYPE_BOOL, device});
    nbi_free(m);
    return t;
}

/* ============================ the fused tier-2 path ============================ */

typedef struct att_ctx {
    double scale;
    bool causal;
    nb_tensor *q, *k, *v; /* the node's inputs, (B, L, E), (B, S, E), (B, S, Ev) */
} att_ctx;

static nb_tensor *att_forward(void *p, nb_tensor *const *in, int32_t n)
{
    (void)n;
    att_ctx *c = p;
    nnc_tmps s = {0};
    nb_tensor *q = nnc_k(&s, nb_contiguous(in[0])), *k = nnc_k(&s, nb_contiguous(in[1]));
    nb_tensor *v = nnc_k(&s, nb_contiguous(in[2]));
    int64_t causal = c->causal;
    nb_tensor *out = q && k && v ? nnc_run("attention",
                                           NB_SHAPE(nbi_dims(q)[0], nbi_dims(q)[1], nbi_dims(v)[2]),
                                           nnc_opts(q), (nb_tensor *[]){q, k, v}, 3, &c->scale, 1,
                                           &causal, 1)
                                 : NULL;
    nnc_free(&s);
    if (out && !c->q) {
        c->q = nb_retain(in[0]);
        c->k = nb_retain(in[1]);
        c->v = nb_retain(in[2]);
    }
    return out;
}

/* The "attention_backward" kernel: dq as its output, dk and dv written into tensors of their
 * own; it recomputes the scores block by block, so no (L, S) matrix exists. */
static nb_status att_backward_kernel(att_ctx *c, const nb_tensor *g, nb_tensor **gi)
{
    nnc_tmps s = {0};
    nb_tensor *ops[6] = {nnc_k(&s, nb_contiguous(g)), nnc_k(&s, nb_contiguous(c->q)),
                         nnc_k(&s, nb_contiguous(c->k)), nnc_k(&s, nb_contiguous(c->v))};
    ops[4] = nb_empty(nnc_shape(c->k), nnc_opts(c->k));
    ops[5] = nb_empty(nnc_shape(c->v), nnc_opts(c->v));
    bool ok = true;
    for (int j = 0; j < 6; j++)
        ok = ok && ops[j];
    int64_t causal = c->causal;
    nb_tensor *dq = ok ? nnc_run("attention_backward", nnc_shape(c->q), nnc_opts(c->q), ops, 6,
                                 &c->scale, 1, &causal, 1)
                       : NULL;
    nnc_free(&s);
    if (!dq) {
        nb_release(ops[4]);
        nb_release(ops[5]);
        return nbi_last_or(NB_AUTOGRAD, "attention backward failed");
    }
    gi[0] = dq;
    gi[1] = ops[4];
    gi[2] = ops[5];
    return NB_OK;
}

/* P = softmax(S), S = q k^T scale: dv = P^T g, dP = g v^T, dS = P (dP - rowsum(dP P)),
 * dq = dS k scale, dk = dS^T q scale. Without a graph for the gradient (create_graph off) and
 * for float32/float64, the device's kernel; else with public ops, differentiable again. */
static nb_status att_backward(void *p, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    (void)n;
    att_ctx *c = p;
    nb_dtype dt = nb_tensor_dtype(c->q);
    if (!nb_is_grad_enabled() && (dt == NB_DTYPE_F32 || dt == NB_DTYPE_F64) &&
        nbi_has_kernel(c->q, "attention_backward"))
        return att_backward_kernel(c, g, gi);
    nnc_tmps s = {0};
    int64_t L = nbi_dims(c->q)[1], S = nbi_dims(c->k)[1];
    nb_tensor *kt = nnc_k(&s, nb_transpose(c->k, 1, 2));
    nb_tensor *sc = kt ? nnc_k(&s, nb_matmul(c->q, kt)) : NULL;
    sc = nnc_k(&s, nb_mul_scalar(sc, c->scale));
    if (sc && c->causal) {
        nb_tensor *up = nnc_k(&s, causal_mask(L, S, NNC_DEV(c->q)));
        sc = up ? nnc_k(&s, nb_masked_fill(sc, up, -INFINITY)) : NULL;
    }
    nb_tensor *P = sc ? nnc_k(&s, nb_softmax(sc, -1)) : NULL;
    nb_tensor *Pt = nnc_k(&s, nb_transpose(P, 1, 2));
    nb_tensor *vt = nnc_k(&s, nb_transpose(c->v, 1, 2));
    nb_tensor *dP = vt ? nnc_k(&s, nb_matmul(g, vt)) : NULL;
    nb_tensor *dPP = dP && P ? nnc_k(&s, nb_mul(dP, P)) : NULL;
    nb_tensor *rs = nnc_k(&s, nb_sum(dPP, (int32_t[]){-1}, 1, true));
    nb_tensor *d = rs ? nnc_k(&s, nb_sub(dP, rs)) : NULL;
    nb_tensor *dS = d ? nnc_k(&s, nb_mul(P, d)) : NULL;
    nb_tensor *dSt = nnc_k(&s, nb_transpose(dS, 1, 2));
    nb_tensor *dq = dS ? nnc_k(&s, nb_matmul(dS, c->k)) : NULL;
    nb_tensor *dk = dSt ? nnc_k(&s, nb_matmul(dSt, c->q)) : NULL;
    gi[0] = dq ? nb_mul_scalar(dq, c->scale) : NULL;
    gi[1] = dk ? nb_mul_scalar(dk, c->scale) : NULL;
    gi[2] = Pt ? nb_matmul(Pt, g) : NULL;
    nnc_free(&s);
    return gi[0] && gi[1] && gi[2] ? NB_OK : nbi_last_or(NB_AUTOGRAD, "attention backward failed");
}

static void att_free(void *p)
{
    att_ctx *c = p;
    nb_release(c->q);
    nb_release(c->k);
    nb_release(c->v);
    nbi_free(c);
}

static const nb_function attention_fn = {"ScaledDotProductFlashAttentionForCpuBackward0",
                                         att_forward, att_backward, att_free};

/* q, k, v as (B, L, E) ... with B the product of the batch dims; out back to (..., L, Ev). */
static nb_tensor *sdpa_fused(const nb_tensor *q, const nb_tensor *k, const nb_tensor *v,
                             double scale, bool causal)
{
    int32_t nd = nb_tensor_ndim(q);
    att_ctx *c = nbi_calloc(1, sizeof *c);
    if (!c) {
        nbi_error(NB_OUT_OF_MEMORY, "scaled_dot_product_attention: out of host memory");
        return NULL;
    }
    c->scale = scale;
    c->causal = causal;
    nnc_tmps s = {0};
    const int64_t *qd = nbi_dims(q), *kd = nbi_dims(k), *vd = nbi_dims(v);
    nb_tensor *q3 = nnc_k(&s, nb_reshape(q, NB_SHAPE(-1, qd[nd - 2], qd[nd - 1])));
    nb_tensor *k3 = nnc_k(&s, nb_reshape(k, NB_SHAPE(-1, kd[nd - 2], kd[nd - 1])));
    nb_tensor *v3 = nnc_k(&s, nb_reshape(v, NB_SHAPE(-1, vd[nd - 2], vd[nd - 1])));
    nb_tensor *o3 = NULL;
    if (q3 && k3 && v3)
        o3 = nnc_k(&s, nb_function_apply(&attention_fn, c, (nb_tensor *[]){q3, k3, v3}, 3));
    else
        att_free(c);
    nb_shape os = nnc_shape(q);
    os.dims[nd - 1] = nbi_dims(v)[nd - 1];
    return nnc_ret(&s, o3 ? nnc_k(&s, nb_reshape(o3, os)) : NULL);
}

static nb_tensor *sdpa_impl(const nb_tensor *q, const nb_tensor *k, const nb_tensor *v,
                            nb_sdpa_opts o)
{
    const char *op = "scaled_dot_product_attention";
    if (nnc_null(op, "query", q) || nnc_null(op, "key", k) || nnc_null(op, "value", v) ||
        !nnc_float(op, "query", q) || !nnc_like(op, "key", k, q) || !nnc_like(op, "value", v, q))
        return NULL;
    int32_t qn = nb_tensor_ndim(q);
    if (qn < 2 || nb_tensor_ndim(k) != qn || nb_tensor_ndim(v) != qn) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query %s, key %s and value %s must have the same "
                  "number of dims, at least 2 (..., L, E), (..., S, E), (..., S, Ev)", op,
                  NBI_SHAPE_STR(q), NBI_SHAPE_STR(k), NBI_SHAPE_STR(v));
        return NULL;
    }
    int32_t nd = nb_tensor_ndim(q);
    int64_t L = nbi_dims(q)[nd - 2], E = nbi_dims(q)[nd - 1], S = nbi_dims(k)[nd - 2];
    bool batch_ok = true;
    for (int32_t d = 0; d < nd - 2; d++)
        batch_ok = batch_ok && nbi_dims(q)[d] == nbi_dims(k)[d] && nbi_dims(q)[d] == nbi_dims(v)[d];
    if (!batch_ok || nbi_dims(k)[nd - 1] != E || nbi_dims(v)[nd - 2] != S) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query %s, key %s and value %s do not fit: expected "
                  "(..., L, E), (..., S, E), (..., S, Ev) with the same batch dims", op,
                  NBI_SHAPE_STR(q), NBI_SHAPE_STR(k), NBI_SHAPE_STR(v));
        return NULL;
    }
    int64_t sshape[NB_MAX_DIMS];
    memcpy(sshape, nbi_dims(q), (size_t)nd * sizeof *sshape);
    sshape[nd - 1] = S;
    const nb_tensor *mask = o.attn_mask;
    if (mask) {
        if (!nnc_same_device(op, "attn_mask", mask, q))
            return NULL;
        if (nb_tensor_dtype(mask) != NB_DTYPE_BOOL && nb_tensor_dtype(mask) != nb_tensor_dtype(q)) {
            nbi_error(NB_DTYPE_UNSUPPORTED, "%s: attn_mask must be bool or %s like the query, "
                      "got %s", op, nb_dtype_name(nb_tensor_dtype(q)),
                      nb_dtype_name(nb_tensor_dtype(mask)));
            return NULL;
        }
        if (!broadcasts_to(mask, nd, sshape)) {
            nbi_error(NB_SHAPE_MISMATCH, "%s: attn_mask %s does not broadcast to the attention "
                      "scores %s (query %s, key %s)", op, NBI_SHAPE_STR(mask),
                      nbi_shape_cstr(nd, sshape), NBI_SHAPE_STR(q), NBI_SHAPE_STR(k));
            return NULL;
        }
        if (o.is_causal) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: explicit attn_mask should not be set when "
                      "is_causal=True", op);
            return NULL;
        }
    }
    if (!(o.dropout_p >= 0 && o.dropout_p <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: dropout_p=%g must be in [0, 1]", op, o.dropout_p);
        return NULL;
    }
    double scale = o.scale != 0 ? o.scale : 1.0 / sqrt((double)(E ? E : 1));
    if (!mask && o.dropout_p == 0 && nbi_numel(nb_tensor_ndim(q), nbi_dims(q)) > 0 && S > 0 &&
        nbi_numel(nb_tensor_ndim(v), nbi_dims(v)) > 0 && nbi_has_kernel(q, "attention"))
        return sdpa_fused(q, k, v, scale, o.is_causal);
    nnc_tmps s = {0};
    nb_tensor *kt = nnc_k(&s, nb_transpose(k, -2, -1));
    nb_tensor *sc = kt ? nnc_k(&s, nb_matmul(q, kt)) : NULL;
    sc = nnc_k(&s, nb_mul_scalar(sc, scale));
    if (sc && o.is_causal) {
        /* position i attends to j <= i (top-left aligned, as PyTorch) */
        nb_tensor *up = nnc_k(&s, causal_mask(L, S, NNC_DEV(q)));
        sc = up ? nnc_k(&s, nb_masked_fill(sc, up, -INFINITY)) : NULL;
    } else if (sc && mask && nb_tensor_dtype(mask) == NB_DTYPE_BOOL) {
        nb_tensor *no = nnc_k(&s, nb_logical_not(mask));
        sc = no ? nnc_k(&s, nb_masked_fill(sc, no, -INFINITY)) : NULL;
    } else if (sc && mask) {
        sc = nnc_k(&s, nb_add(sc, mask));
    }
    /* A row with every key masked out (all scores -inf) gets weights 0, not NaN, as
     * PyTorch's _safe_softmax since 2.5; its scores are zeroed first so that no NaN reaches
     * the backward either (the row's gradient is 0, as in PyTorch). */
    nb_tensor *dead = NULL;
    if (sc && mask && S > 0) {
        nb_tensor *mx = nnc_k(&s, nb_amax(sc, (int32_t[]){-1}, 1, true));
        dead = mx ? nnc_k(&s, nb_eq_scalar(mx, -INFINITY)) : NULL;
        sc = dead ? nnc_k(&s, nb_masked_fill(sc, dead, 0)) : NULL;
    }
    nb_tensor *w = sc ? nnc_k(&s, nb_softmax(sc, -1)) : NULL;
    if (w && dead)
        w = nnc_k(&s, nb_masked_fill(w, dead, 0));
    if (w && o.dropout_p > 0)
        w = nnc_k(&s, nb_dropout(w, o.dropout_p, true));
    return nnc_ret(&s, w ? nnc_k(&s, nb_matmul(w, v)) : NULL);
}

nb_tensor *nb_scaled_dot_product_attention(const nb_tensor *q, const nb_tensor *k,
                                           const nb_tensor *v, nb_sdpa_opts opts)
{
    NBI_AUTOCAST(NBI_AC_LOWER, &q, &k, &v, &opts.attn_mask);
    return NBI_API(sdpa_impl(q, k, v, opts));
}
