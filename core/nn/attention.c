/* attention.c - scaled_dot_product_attention: softmax(q k^T * scale + mask) v, with the causal
 * flag, a bool or additive mask and dropout on the weights, as PyTorch's math path computes it. */
#include "nn_common.h"

/* Whether a (..., L, S)-broadcastable mask fits the scores' shape. */
static bool broadcasts_to(const nb_tensor *m, int32_t nd, const int64_t *shape)
{
    if (m->ndim > nd)
        return false;
    for (int32_t d = 0; d < m->ndim; d++) {
        int64_t a = m->shape[m->ndim - 1 - d], b = shape[nd - 1 - d];
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

static nb_tensor *sdpa_impl(const nb_tensor *q, const nb_tensor *k, const nb_tensor *v,
                            nb_sdpa_opts o)
{
    const char *op = "scaled_dot_product_attention";
    if (nnc_null(op, "query", q) || nnc_null(op, "key", k) || nnc_null(op, "value", v) ||
        !nnc_float(op, "query", q) || !nnc_like(op, "key", k, q) || !nnc_like(op, "value", v, q))
        return NULL;
    if (q->ndim < 2 || k->ndim != q->ndim || v->ndim != q->ndim) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query %s, key %s and value %s must have the same "
                  "number of dims, at least 2 (..., L, E), (..., S, E), (..., S, Ev)", op,
                  NBI_SHAPE_STR(q), NBI_SHAPE_STR(k), NBI_SHAPE_STR(v));
        return NULL;
    }
    int32_t nd = q->ndim;
    int64_t L = q->shape[nd - 2], E = q->shape[nd - 1], S = k->shape[nd - 2];
    bool batch_ok = true;
    for (int32_t d = 0; d < nd - 2; d++)
        batch_ok = batch_ok && q->shape[d] == k->shape[d] && q->shape[d] == v->shape[d];
    if (!batch_ok || k->shape[nd - 1] != E || v->shape[nd - 2] != S) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query %s, key %s and value %s do not fit: expected "
                  "(..., L, E), (..., S, E), (..., S, Ev) with the same batch dims", op,
                  NBI_SHAPE_STR(q), NBI_SHAPE_STR(k), NBI_SHAPE_STR(v));
        return NULL;
    }
    int64_t sshape[NB_MAX_DIMS];
    memcpy(sshape, q->shape, (size_t)nd * sizeof *sshape);
    sshape[nd - 1] = S;
    const nb_tensor *mask = o.attn_mask;
    if (mask) {
        if (!nnc_same_device(op, "attn_mask", mask, q))
            return NULL;
        if (mask->dtype != NB_DTYPE_BOOL && mask->dtype != q->dtype) {
            nbi_error(NB_DTYPE_UNSUPPORTED, "%s: attn_mask must be bool or %s like the query, "
                      "got %s", op, nb_dtype_name(q->dtype), nb_dtype_name(mask->dtype));
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
    nnc_tmps s = {0};
    nb_tensor *kt = nnc_k(&s, nb_transpose(k, -2, -1));
    nb_tensor *sc = kt ? nnc_k(&s, nb_matmul(q, kt)) : NULL;
    sc = nnc_k(&s, nb_mul_scalar(sc, scale));
    if (sc && o.is_causal) {
        /* position i attends to j <= i (top-left aligned, as PyTorch) */
        nb_tensor *up = nnc_k(&s, causal_mask(L, S, NNC_DEV(q)));
        sc = up ? nnc_k(&s, nb_masked_fill(sc, up, -INFINITY)) : NULL;
    } else if (sc && mask && mask->dtype == NB_DTYPE_BOOL) {
        nb_tensor *no = nnc_k(&s, nb_logical_not(mask));
        sc = no ? nnc_k(&s, nb_masked_fill(sc, no, -INFINITY)) : NULL;
    } else if (sc && mask) {
        sc = nnc_k(&s, nb_add(sc, mask));
    }
    nb_tensor *w = sc ? nnc_k(&s, nb_softmax(sc, -1)) : NULL;
    if (w && o.dropout_p > 0)
        w = nnc_k(&s, nb_dropout(w, o.dropout_p, true));
    return nnc_ret(&s, w ? nnc_k(&s, nb_matmul(w, v)) : NULL);
}

nb_tensor *nb_scaled_dot_product_attention(const nb_tensor *q, const nb_tensor *k,
                                           const nb_tensor *v, nb_sdpa_opts opts)
{
    return NBI_API(sdpa_impl(q, k, v, opts));
}
