/* multihead_attention.c - nn.MultiheadAttention: in_proj_weight / in_proj_bias / out_proj as
 * PyTorch's state_dict names them, batch_first or (L, N, E) inputs, key_padding_mask, attn_mask
 * and the is_causal hint, and the head-averaged weights on request. Without masks or weights
 * the heads go through scaled_dot_product_attention's fused kernel. */
#include "nn_common.h"

typedef struct mha_cfg {
    int64_t embed_dim, num_heads;
    bool bias, batch_first;
} mha_cfg;

/* nb_multihead_attention goes through nb_module_forward (so hooks fire as for any module); its
 * key, value and options reach the forward callback through this per-thread slot, which the
 * callback empties before it does anything else. */
typedef struct mha_call {
    bool set;
    const nb_tensor *key, *value;
    nb_mha_opts opts;
    nb_tensor **weights;
} mha_call;
static _Thread_local mha_call pending;

static bool mask_ok(const char *what, const nb_tensor *mask, const nb_tensor *q, int32_t nd,
                    const int64_t *want, const int64_t *alt)
{
    const char *op = "MultiheadAttention";
    if (!nnc_same_device(op, what, mask, q))
        return false;
    nb_dtype mt = nb_tensor_dtype(mask), qt = nb_tensor_dtype(q);
    if (mt != NB_DTYPE_BOOL && mt != qt) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: %s must be bool or %s like the query, got %s", op,
                  what, nb_dtype_name(qt), nb_dtype_name(mt));
        return false;
    }
    nb_shape ms = nb_tensor_shape(mask);
    bool fits = ms.ndim == nd && !memcmp(ms.dims, want, (size_t)nd * sizeof *want);
    bool fits_alt = alt && ms.ndim == nd + 1 && !memcmp(ms.dims, alt,
                                                           (size_t)(nd + 1) * sizeof *alt);
    if (!fits && !fits_alt) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: %s has shape %s, expected %s%s%s", op, what,
                  NBI_SHAPE_STR(mask), nbi_shape_cstr(nd, want), alt ? " or " : "",
                  alt ? nbi_shape_cstr(nd + 1, alt) : "");
        return false;
    }
    return true;
}

/* A bool mask (true = masked out) as an additive one: 0 where allowed, -inf where not. */
static nb_tensor *additive(nnc_tmps *s, const nb_tensor *mask, const nb_tensor *like)
{
    if (nb_tensor_dtype(mask) != NB_DTYPE_BOOL)
        return nnc_k(s, nb_retain((nb_tensor *)mask));
    nb_tensor *z = nnc_k(s, nb_zeros(nnc_shape(mask), nnc_opts(like)));
    return z ? nnc_k(s, nb_masked_fill(z, mask, -INFINITY)) : NULL;
}

/* linear over the rows of x (N, L, E): one matrix product, not N of them (matmul broadcasts a
 * 2-d weight over the batch and sums N products in its gradient) */
static nb_tensor *linear_rows(nnc_tmps *s, const nb_tensor *x, const nb_tensor *w,
                              const nb_tensor *b)
{
    nb_shape xs = nb_tensor_shape(x), ws = nb_tensor_shape(w);
    nb_tensor *x2 = nnc_k(s, nb_reshape(x, NB_SHAPE(xs.dims[0] * xs.dims[1], xs.dims[2])));
    nb_tensor *y = x2 ? nnc_k(s, nb_linear(x2, w, b)) : NULL;
    return y ? nnc_k(s, nb_reshape(y, NB_SHAPE(xs.dims[0], xs.dims[1], ws.dims[0]))) : NULL;
}

/* (N, L, E) -> (N, H, L, D) */
static nb_tensor *split_heads(nnc_tmps *s, const nb_tensor *x, int64_t H)
{
    nb_shape xs = nb_tensor_shape(x);
    int64_t N = xs.dims[0], L = xs.dims[1], D = xs.dims[2] / H;
    nb_tensor *r = nnc_k(s, nb_reshape(x, NB_SHAPE(N, L, H, D)));
    return r ? nnc_k(s, nb_transpose(r, 1, 2)) : NULL;
}

static nb_tensor *mha_impl(nb_module *m, const mha_cfg *c, const nb_tensor *query,
                           const nb_tensor *key, const nb_tensor *value, nb_mha_opts o,
                           nb_tensor **weights)
{
    const char *op = "MultiheadAttention";
    if (weights)
        *weights = NULL;
    if (nnc_null(op, "query", query) || nnc_null(op, "key", key) ||
        nnc_null(op, "value", value))
        return NULL;
    nb_tensor *w_in = nbi_module_own(m, "in_proj_weight");
    nb_tensor *b_in = nbi_module_own(m, "in_proj_bias");
    nb_module *out_proj = nb_module_child(m, "out_proj");
    nb_tensor *w_out = out_proj ? nbi_module_own(out_proj, "weight") : NULL;
    nb_tensor *b_out = out_proj ? nbi_module_own(out_proj, "bias") : NULL;
    if (!w_in || !w_out) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: the module has lost in_proj_weight or out_proj", op);
        return NULL;
    }
    if (!nnc_float(op, "query", query) || !nnc_like(op, "query", query, w_in) ||
        !nnc_like(op, "key", key, query) || !nnc_like(op, "value", value, query))
        return NULL;
    int64_t E = c->embed_dim, H = c->num_heads;
    nb_shape qs = nb_tensor_shape(query), ks = nb_tensor_shape(key), vs = nb_tensor_shape(value);
    bool batched = qs.ndim == 3;
    if ((qs.ndim != 3 && qs.ndim != 2) || ks.ndim != qs.ndim || vs.ndim != qs.ndim ||
        qs.dims[qs.ndim - 1] != E || ks.dims[ks.ndim - 1] != E || vs.dims[vs.ndim - 1] != E) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query %s, key %s and value %s must all be %s or "
                  "unbatched (L, E), with E = embed_dim = %lld", op, NBI_SHAPE_STR(query),
                  NBI_SHAPE_STR(key), NBI_SHAPE_STR(value),
                  c->batch_first ? "(N, L, E) (batch_first)" : "(L, N, E)", (long long)E);
        return NULL;
    }
    nnc_tmps s = {0};
    /* everything as batch-first (N, L, E) from here */
    const nb_tensor *in3[3] = {query, key, value};
    nb_tensor *x3[3];
    for (int j = 0; j < 3; j++) {
        x3[j] = !batched ? nnc_k(&s, nb_unsqueeze(in3[j], 0))
                : c->batch_first ? nnc_k(&s, nb_retain((nb_tensor *)in3[j]))
                                 : nnc_k(&s, nb_transpose(in3[j], 0, 1));
        if (!x3[j])
            return nnc_ret(&s, NULL);
    }
    nb_shape s0 = nb_tensor_shape(x3[0]), s1 = nb_tensor_shape(x3[1]), s2 = nb_tensor_shape(x3[2]);
    int64_t N = s0.dims[0], L = s0.dims[1], S = s1.dims[1];
    if (s1.dims[0] != N || s2.dims[0] != N || s2.dims[1] != S) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query %s, key %s and value %s do not fit: key and "
                  "value need the same length and all the same batch size", op,
                  NBI_SHAPE_STR(query), NBI_SHAPE_STR(key), NBI_SHAPE_STR(value));
        return nnc_ret(&s, NULL);
    }
    /* masks: attn_mask (L, S) or (N H, L, S), key_padding_mask (N, S) ((S) unbatched) */
    int64_t am2[2] = {L, S}, am3[3] = {N * H, L, S}, kp[2] = {N, S};
    if (o.attn_mask && !mask_ok("attn_mask", o.attn_mask, query, 2, am2, batched ? am3 : NULL))
        return nnc_ret(&s, NULL);
    if (o.key_padding_mask && !mask_ok("key_padding_mask", o.key_padding_mask, query,
                                       batched ? 2 : 1, batched ? kp : kp + 1, NULL))
        return nnc_ret(&s, NULL);
    if (o.is_causal && !o.attn_mask) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: Need attn_mask if specifying the is_causal hint "
                  "(PyTorch's rule; the mask itself is used when weights or a key_padding_mask "
                  "need it)", op);
        return nnc_ret(&s, NULL);
    }
    /* in-projection: one matmul when it is self-attention */
    nb_tensor *qp, *kp_, *vp;
    if (query == key && key == value) {
        nb_tensor *qkv = linear_rows(&s, x3[0], w_in, b_in);
        qp = qkv ? nnc_k(&s, nb_narrow(qkv, 2, 0, E)) : NULL;
        kp_ = qkv ? nnc_k(&s, nb_narrow(qkv, 2, E, E)) : NULL;
        vp = qkv ? nnc_k(&s, nb_narrow(qkv, 2, 2 * E, E)) : NULL;
    } else {
        nb_tensor *pr[3];
        for (int j = 0; j < 3; j++) {
            nb_tensor *wj = nnc_k(&s, nb_narrow(w_in, 0, j * E, E));
            nb_tensor *bj = b_in ? nnc_k(&s, nb_narrow(b_in, 0, j * E, E)) : NULL;
            pr[j] = wj && (!b_in || bj) ? linear_rows(&s, x3[j], wj, bj) : NULL;
        }
        qp = pr[0], kp_ = pr[1], vp = pr[2];
    }
    nb_tensor *qh = qp ? split_heads(&s, qp, H) : NULL;
    nb_tensor *kh = kp_ ? split_heads(&s, kp_, H) : NULL;
    nb_tensor *vh = vp ? split_heads(&s, vp, H) : NULL;
    if (!qh || !kh || !vh)
        return nnc_ret(&s, NULL);
    /* one additive (N, H, L, S)-broadcastable mask, unless none is needed */
    nb_tensor *mask = NULL;
    bool causal_hint = o.is_causal && !o.key_padding_mask && !weights;
    if (o.attn_mask && !causal_hint) {
        mask = additive(&s, o.attn_mask, query);
        if (mask && nb_tensor_shape(mask).ndim == 3)
            mask = nnc_k(&s, nb_reshape(mask, NB_SHAPE(N, H, L, S)));
    }
    if (o.key_padding_mask) {
        nb_tensor *kpm = additive(&s, o.key_padding_mask, query);
        kpm = kpm ? nnc_k(&s, nb_reshape(kpm, NB_SHAPE(N, 1, 1, S))) : NULL;
        mask = !kpm ? NULL : mask ? nnc_k(&s, nb_add(mask, kpm)) : kpm;
    }
    if ((o.attn_mask && !causal_hint && !mask) || (o.key_padding_mask && !mask))
        return nnc_ret(&s, NULL);
    nb_tensor *y;
    if (weights) { /* the math path, which has the weights to give back */
        nb_tensor *kt = nnc_k(&s, nb_transpose(kh, -2, -1));
        nb_tensor *sc = kt ? nnc_k(&s, nb_matmul(qh, kt)) : NULL;
        sc = nnc_k(&s, nb_mul_scalar(sc, 1.0 / sqrt((double)(E / H))));
        if (sc && mask)
            sc = nnc_k(&s, nb_add(sc, mask));
        nb_tensor *p = sc ? nnc_k(&s, nb_softmax(sc, -1)) : NULL;
        y = p ? nnc_k(&s, nb_matmul(p, vh)) : NULL;
        nb_tensor *avg = p ? nnc_k(&s, nb_mean(p, (int32_t[]){1}, 1, false)) : NULL;
        if (avg && !batched)
            avg = nnc_k(&s, nb_squeeze(avg, 0));
        if (!avg)
            return nnc_ret(&s, NULL);
        *weights = nb_retain(avg);
    } else {
        y = nnc_k(&s, nb_scaled_dot_product_attention(
                          qh, kh, vh, (nb_sdpa_opts){.attn_mask = mask, .is_causal = causal_hint}));
    }
    nb_tensor *yt = y ? nnc_k(&s, nb_transpose(y, 1, 2)) : NULL; /* (N, L, H, D) */
    nb_tensor *yc = yt ? nnc_k(&s, nb_reshape(yt, NB_SHAPE(N, L, E))) : NULL;
    nb_tensor *out = yc ? linear_rows(&s, yc, w_out, b_out) : NULL;
    if (out)
        out = !batched ? nnc_k(&s, nb_squeeze(out, 0))
              : c->batch_first ? out : nnc_k(&s, nb_transpose(out, 0, 1));
    if (!out && weights && *weights) {
        nb_release(*weights);
        *weights = NULL;
    }
    return nnc_ret(&s, out);
}

static nb_tensor *fw_mha(nb_module *m, const nb_tensor *x, const void *p)
{
    mha_call call = pending;
    pending = (mha_call){0};
    if (!call.set) /* nb_module_forward(m, x): self-attention */
        return mha_impl(m, p, x, x, x, (nb_mha_opts){0}, NULL);
    return mha_impl(m, p, x, call.key, call.value, call.opts, call.weights);
}

/* MultiheadAttention(\n  (out_proj): Linear(...)\n): PyTorch prints no extra_repr of its own. */
static const nbi_module_kind k_mha = {"MultiheadAttention", fw_mha, NULL};

static nb_module *mha_new_impl(int64_t E, int64_t H, bool bias, bool batch_first, nb_opts opts)
{
    if (E <= 0 || H <= 0 || E % H) {
        nbi_error(NB_INVALID_ARGUMENT, "MultiheadAttention: embed_dim=%lld, num_heads=%lld; "
                  "embed_dim must be divisible by num_heads, both positive", (long long)E,
                  (long long)H);
        return NULL;
    }
    int64_t E3;
    if (__builtin_mul_overflow(E, 3, &E3)) {
        nbi_error(NB_INVALID_ARGUMENT, "MultiheadAttention: embed_dim=%lld is too large",
                  (long long)E);
        return NULL;
    }
    if (opts.dtype < 0 || opts.dtype >= NB_DTYPE_COUNT || !nb_dtype_is_float(opts.dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "MultiheadAttention: parameters must be a floating point "
                  "type");
        return NULL;
    }
    mha_cfg c = {E, H, bias, batch_first};
    nb_module *m = nbi_module_new_kind(&k_mha, &c, sizeof c);
    if (!m)
        return NULL;
    /* PyTorch's _reset_parameters: xavier_uniform_ on in_proj_weight (fan_in E, fan_out 3E),
     * zero biases; out_proj keeps Linear's own init for its weight. */
    opts.requires_grad = true;
    double a = sqrt(6.0 / (double)(E + E3));
    nb_tensor *w = nb_uniform(-a, a, NB_SHAPE(E3, E), opts);
    nb_status st = w ? nb_module_add_parameter(m, "in_proj_weight", w) : nb_last_status();
    nb_release(w);
    if (st == NB_OK && bias) {
        nb_tensor *b = nb_zeros(NB_SHAPE(E3), opts);
        st = b ? nb_module_add_parameter(m, "in_proj_bias", b) : nb_last_status();
        nb_release(b);
    }
    nb_module *op = st == NB_OK ? nb_linear_new(E, E, bias, opts) : NULL;
    if (st == NB_OK)
        st = op ? nb_module_add(m, "out_proj", op) : nb_last_status();
    if (st == NB_OK && bias) {
        nb_no_grad_begin();
        st = nb_zero_(nbi_module_own(op, "bias"));
        nb_no_grad_end();
    }
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_multihead_attention_new(int64_t embed_dim, int64_t num_heads, bool bias,
                                      bool batch_first, nb_opts opts)
{
    return NNC_API_MODULE(mha_new_impl(embed_dim, num_heads, bias, batch_first, opts));
}

static nb_tensor *mha_call_impl(nb_module *m, const nb_tensor *query, const nb_tensor *key,
                                const nb_tensor *value, nb_mha_opts opts, nb_tensor **weights)
{
    if (weights)
        *weights = NULL;
    if (!m || strcmp(nb_module_type(m), "MultiheadAttention")) {
        nbi_error(m ? NB_INVALID_ARGUMENT : NB_NULL_ARGUMENT, "nb_multihead_attention: the "
                  "module is %s, expected a MultiheadAttention", m ? nb_module_type(m) : "NULL");
        return NULL;
    }
    if (nnc_null("MultiheadAttention", "query", query))
        return NULL;
    mha_call saved = pending;
    pending = (mha_call){true, key, value, opts, weights};
    nb_tensor *y = nb_module_forward(m, query);
    pending = saved;
    return y;
}

nb_tensor *nb_multihead_attention(nb_module *m, const nb_tensor *query, const nb_tensor *key,
                                  const nb_tensor *value, nb_mha_opts opts, nb_tensor **weights)
{
    return NBI_API(mha_call_impl(m, query, key, value, opts, weights));
}
