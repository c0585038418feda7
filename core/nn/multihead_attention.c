/* multihead_attention.c - nn.MultiheadAttention as PyTorch 2.x builds it: a packed in_proj_weight,
 * or q/k/v_proj_weight when kdim or vdim differ from embed_dim, bias_k/bias_v, add_zero_attn,
 * dropout on the weights in training mode; the forward of F.multi_head_attention_forward (masks,
 * weights per head or averaged), through sdpa's fused kernel when it can. */
#include "module.h" /* the out_proj child's type name */
#include "nn_common.h"

typedef struct mha_cfg {
    int64_t embed_dim, num_heads, kdim, vdim;
    double dropout;
    bool bias, add_bias_kv, add_zero_attn, batch_first;
} mha_cfg;

/* PyTorch's _qkv_same_embed_dim: one (3E, E) in_proj_weight instead of three */
static bool packed(const mha_cfg *c) { return c->kdim == c->embed_dim && c->vdim == c->embed_dim; }

/* nb_multihead_attention goes through nb_module_forward (so hooks fire as for any module); its
 * key, value and options reach the forward callback through this per-thread slot, addressed to
 * the module: a forward pre-hook that runs another MultiheadAttention leaves it alone, and the
 * callback of the addressed module empties it before it does anything else. */
typedef struct mha_call {
    bool set;
    const nb_module *m;
    const nb_tensor *key, *value;
    nb_mha_opts opts;
    nb_tensor **weights;
} mha_call;
static _Thread_local mha_call pending;

static const char *const op = "MultiheadAttention";

/* ================================ shape checks ================================ */

/* What _mha_shape_check and multi_head_attention_forward refuse, in their words, with the
 * shapes that were given. */
static bool inputs_ok(const mha_cfg *c, const nb_tensor *q, const nb_tensor *k,
                      const nb_tensor *v, const nb_mha_opts *o)
{
    int32_t qn = nb_tensor_ndim(q), kn = nb_tensor_ndim(k), vn = nb_tensor_ndim(v);
    if (qn != 2 && qn != 3) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query should be unbatched 2D or batched 3D tensor but "
                  "received %d-D query tensor %s", op, qn, NBI_SHAPE_STR(q));
        return false;
    }
    bool batched = qn == 3;
    const char *how = batched ? "batched (3-D)" : "unbatched (2-D)";
    if (kn != qn || vn != qn) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: for %s query %s, expected key and value to be %d-D but "
                  "found %d-D and %d-D tensors respectively (key %s, value %s)", op, how,
                  NBI_SHAPE_STR(q), qn, kn, vn, NBI_SHAPE_STR(k), NBI_SHAPE_STR(v));
        return false;
    }
    if (o->key_padding_mask && nb_tensor_ndim(o->key_padding_mask) != qn - 1) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: for %s query, expected key_padding_mask to be NULL or "
                  "%d-D but found %s", op, how, qn - 1, NBI_SHAPE_STR(o->key_padding_mask));
        return false;
    }
    if (o->attn_mask && nb_tensor_ndim(o->attn_mask) != 2 && nb_tensor_ndim(o->attn_mask) != 3) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: for %s query, expected attn_mask to be NULL, 2-D or "
                  "3-D but found %s", op, how, NBI_SHAPE_STR(o->attn_mask));
        return false;
    }
    if (o->is_causal && !o->attn_mask) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: Need attn_mask if specifying the is_causal hint "
                  "(PyTorch's rule; the mask itself is used when weights or a key_padding_mask "
                  "need it)", op);
        return false;
    }
    const int64_t *qd = nbi_dims(q), *kd = nbi_dims(k), *vd = nbi_dims(v);
    if (qd[qn - 1] != c->embed_dim) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: was expecting embedding dimension of %lld, but got "
                  "%lld (query %s)", op, (long long)c->embed_dim, (long long)qd[qn - 1],
                  NBI_SHAPE_STR(q));
        return false;
    }
    /* key and value: the same shape when packed; else the same sequence and batch dims */
    if (packed(c) ? memcmp(kd, vd, (size_t)qn * sizeof *kd) != 0
                  : memcmp(kd, vd, (size_t)(qn - 1) * sizeof *kd) != 0) {
        if (packed(c))
            nbi_error(NB_SHAPE_MISMATCH, "%s: key shape %s does not match value shape %s", op,
                      NBI_SHAPE_STR(k), NBI_SHAPE_STR(v));
        else
            nbi_error(NB_SHAPE_MISMATCH, "%s: key's sequence and batch dims %s do not match "
                      "value's %s (key %s, value %s)", op, nbi_shape_cstr(qn - 1, kd),
                      nbi_shape_cstr(qn - 1, vd), NBI_SHAPE_STR(k), NBI_SHAPE_STR(v));
        return false;
    }
    if (kd[qn - 1] != c->kdim || vd[qn - 1] != c->vdim) {
        bool key = kd[qn - 1] != c->kdim;
        nbi_error(NB_SHAPE_MISMATCH, "%s: %s %s has %lld features but the module was made with "
                  "%s=%lld%s", op, key ? "key" : "value", NBI_SHAPE_STR(key ? k : v),
                  (long long)(key ? kd : vd)[qn - 1], key ? "kdim" : "vdim",
                  (long long)(key ? c->kdim : c->vdim),
                  packed(c) ? " (= embed_dim; set kdim/vdim for other sizes)" : "");
        return false;
    }
    int32_t bd = c->batch_first ? 0 : 1;
    if (batched && kd[bd] != qd[bd]) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: query %s and key %s have different batch sizes (%lld "
                  "and %lld; the batch is dim %d%s)", op, NBI_SHAPE_STR(q), NBI_SHAPE_STR(k),
                  (long long)qd[bd], (long long)kd[bd], bd,
                  c->batch_first ? ", batch_first" : "");
        return false;
    }
    return true;
}

/* attn_mask (L, S) or (N H, L, S), key_padding_mask (N, S) or (S) unbatched: exact shapes, as
 * PyTorch; bool, or additive in the query's dtype, on its device. */
static bool mask_ok(const char *what, const nb_tensor *mask, const nb_tensor *q, int32_t nd,
                    const int64_t *want)
{
    if (!nnc_same_device(op, what, mask, q))
        return false;
    nb_dtype mt = nb_tensor_dtype(mask), qt = nb_tensor_dtype(q);
    if (mt != NB_DTYPE_BOOL && mt != qt) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: %s must be bool or %s like the query, got %s", op,
                  what, nb_dtype_name(qt), nb_dtype_name(mt));
        return false;
    }
    if (nb_tensor_ndim(mask) != nd || memcmp(nbi_dims(mask), want, (size_t)nd * sizeof *want)) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: the shape of the %dD %s is %s, but should be %s", op,
                  nd, what, NBI_SHAPE_STR(mask), nbi_shape_cstr(nd, want));
        return false;
    }
    return true;
}

/* ================================ the pieces ================================ */

/* linear over the rows of x (N, L, Ein): one matrix product, not N of them (matmul broadcasts
 * a 2-d weight over the batch and sums N products in its gradient) */
static nb_tensor *linear_rows(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b)
{
    nnc_tmps s = {0};
    const int64_t *xd = nbi_dims(x);
    nb_tensor *x2 = nnc_k(&s, nb_reshape(x, NB_SHAPE(xd[0] * xd[1], xd[2])));
    nb_tensor *y = x2 ? nnc_k(&s, nb_linear(x2, w, b)) : NULL;
    return nnc_ret(&s, y ? nnc_k(&s, nb_reshape(y, NB_SHAPE(xd[0], xd[1], nbi_dims(w)[0])))
                         : NULL);
}

/* t with n zero columns appended to its last dim (PyTorch's pad(mask, (0, 1)) per extra key) */
static nb_tensor *pad_last(const nb_tensor *t, int64_t n)
{
    if (n == 0)
        return nb_retain((nb_tensor *)t);
    nb_shape zs = nnc_shape(t);
    zs.dims[zs.ndim - 1] = n;
    nb_tensor *z = nb_zeros(zs, nnc_opts(t));
    nb_tensor *r = z ? nb_cat((nb_tensor *[]){(nb_tensor *)t, z}, 2, zs.ndim - 1) : NULL;
    nb_release(z);
    return r;
}

/* PyTorch's _canonical_mask (a bool mask, true = masked out, as 0 / -inf; an additive one as
 * it is), with pad extra keys allowed, reshaped to `shape`. */
static nb_tensor *additive(const nb_tensor *mask, const nb_tensor *like, int64_t pad,
                           nb_shape shape)
{
    nnc_tmps s = {0};
    nb_tensor *a;
    if (nb_tensor_dtype(mask) == NB_DTYPE_BOOL) {
        nb_tensor *z = nnc_k(&s, nb_zeros(nnc_shape(mask), nnc_opts(like)));
        a = z ? nnc_k(&s, nb_masked_fill(z, mask, -INFINITY)) : NULL;
    } else {
        a = nnc_k(&s, nb_retain((nb_tensor *)mask));
    }
    a = a ? nnc_k(&s, pad_last(a, pad)) : NULL;
    return nnc_ret(&s, a ? nnc_k(&s, nb_reshape(a, shape)) : NULL);
}

/* The in-projection, then bias_k / bias_v as one more key and value: q (N, L, E), k and v
 * (N, S + add_bias_kv, E), new references in out[3]. x[3] are batch-first inputs. */
static nb_status project(const nb_module *m, const mha_cfg *c, nb_tensor *const x[3],
                         bool self_attention, nb_tensor *out[3])
{
    int64_t E = c->embed_dim, N = nbi_dims(x[0])[0];
    nb_tensor *b_in = nbi_module_own(m, "in_proj_bias");
    nnc_tmps s = {0};
    nb_tensor *p[3] = {NULL, NULL, NULL};
    if (packed(c) && self_attention) { /* one product for q, k and v */
        nb_tensor *qkv = nnc_k(&s, linear_rows(x[0], nbi_module_own(m, "in_proj_weight"), b_in));
        for (int j = 0; j < 3; j++)
            p[j] = qkv ? nnc_k(&s, nb_narrow(qkv, 2, j * E, E)) : NULL;
    } else {
        static const char *const names[3] = {"q_proj_weight", "k_proj_weight", "v_proj_weight"};
        for (int j = 0; j < 3; j++) {
            nb_tensor *w = packed(c) ? nnc_k(&s, nb_narrow(nbi_module_own(m, "in_proj_weight"),
                                                           0, j * E, E))
                                     : nbi_module_own(m, names[j]);
            nb_tensor *b = b_in ? nnc_k(&s, nb_narrow(b_in, 0, j * E, E)) : NULL;
            p[j] = w && (!b_in || b) ? nnc_k(&s, linear_rows(x[j], w, b)) : NULL;
        }
    }
    if (c->add_bias_kv) { /* torch.cat([k, bias_k.repeat(1, bsz, 1)]) in (N, S, E) order */
        static const char *const names[2] = {"bias_k", "bias_v"};
        for (int j = 1; j < 3; j++) {
            nb_tensor *bk = nnc_k(&s, nb_expand(nbi_module_own(m, names[j - 1]),
                                                NB_SHAPE(N, 1, E)));
            p[j] = p[j] && bk ? nnc_k(&s, nb_cat((nb_tensor *[]){p[j], bk}, 2, 1)) : NULL;
        }
    }
    for (int j = 0; j < 3; j++)
        out[j] = p[j] ? nb_retain(p[j]) : NULL;
    nnc_free(&s);
    if (out[0] && out[1] && out[2])
        return NB_OK;
    for (int j = 0; j < 3; j++)
        nb_release(out[j]);
    return nbi_last_or(NB_OUT_OF_MEMORY, "MultiheadAttention: in-projection failed");
}

/* (N, L, E) -> (N, H, L, D), with add_zero_attn's zero row appended when zero_row */
static nb_tensor *split_heads(const nb_tensor *x, int64_t H, bool zero_row)
{
    nnc_tmps s = {0};
    const int64_t *xd = nbi_dims(x);
    int64_t N = xd[0], L = xd[1], D = xd[2] / H;
    nb_tensor *r = nnc_k(&s, nb_reshape(x, NB_SHAPE(N, L, H, D)));
    nb_tensor *t = r ? nnc_k(&s, nb_transpose(r, 1, 2)) : NULL;
    if (t && zero_row) {
        nb_tensor *z = nnc_k(&s, nb_zeros(NB_SHAPE(N, H, 1, D), nnc_opts(x)));
        t = z ? nnc_k(&s, nb_cat((nb_tensor *[]){t, z}, 2, 2)) : NULL;
    }
    return nnc_ret(&s, t);
}

/* One additive mask broadcastable to the scores (N, H, L, S'), S' = S + the extra keys, into
 * *mask (NULL when there is none). */
static nb_status merged_mask(const mha_cfg *c, const nb_tensor *query, const nb_mha_opts *o,
                             bool use_attn_mask, int64_t N, int64_t L, int64_t S,
                             nb_tensor **mask)
{
    *mask = NULL;
    int64_t pad = (int64_t)c->add_bias_kv + (int64_t)c->add_zero_attn, H = c->num_heads;
    nb_tensor *am = NULL, *kpm = NULL;
    if (use_attn_mask && o->attn_mask) {
        bool three = nb_tensor_ndim(o->attn_mask) == 3;
        am = additive(o->attn_mask, query, pad,
                      three ? NB_SHAPE(N, H, L, S + pad) : NB_SHAPE(1, 1, L, S + pad));
        if (!am)
            return nbi_last_or(NB_OUT_OF_MEMORY, "MultiheadAttention: attn_mask failed");
    }
    if (o->key_padding_mask) {
        kpm = additive(o->key_padding_mask, query, pad, NB_SHAPE(N, 1, 1, S + pad));
        if (!kpm) {
            nb_release(am);
            return nbi_last_or(NB_OUT_OF_MEMORY, "MultiheadAttention: key_padding_mask failed");
        }
    }
    if (am && kpm) {
        *mask = nb_add(am, kpm);
        nb_release(am);
        nb_release(kpm);
        return *mask ? NB_OK : nbi_last_or(NB_OUT_OF_MEMORY, "MultiheadAttention: masks failed");
    }
    *mask = am ? am : kpm;
    return NB_OK;
}

/* softmax(q k^T / sqrt(D) + mask) with dropout, then times v: the path that has the weights
 * (N, H, L, S') to give back, after dropout, as PyTorch returns them. */
static nb_tensor *attend_with_weights(const nb_tensor *qh, const nb_tensor *kh,
                                      const nb_tensor *vh, const nb_tensor *mask, double p,
                                      nb_tensor **weights)
{
    nnc_tmps s = {0};
    int64_t D = nbi_dims(qh)[3];
    nb_tensor *qs = nnc_k(&s, nb_mul_scalar(qh, sqrt(1.0 / (double)D))); /* q scaled first */
    nb_tensor *kt = nnc_k(&s, nb_transpose(kh, -2, -1));
    nb_tensor *sc = qs && kt ? nnc_k(&s, nb_matmul(qs, kt)) : NULL;
    if (sc && mask)
        sc = nnc_k(&s, nb_add(sc, mask));
    nb_tensor *w = sc ? nnc_k(&s, nb_softmax(sc, -1)) : NULL;
    if (w && p > 0)
        w = nnc_k(&s, nb_dropout(w, p, true));
    nb_tensor *y = w ? nnc_k(&s, nb_matmul(w, vh)) : NULL;
    *weights = y ? nb_retain(w) : NULL;
    return nnc_ret(&s, y);
}

/* ================================ the forward ================================ */

static nb_tensor *forward_checked(nb_module *m, const mha_cfg *c, const nb_tensor *query,
                                  const nb_tensor *key, const nb_tensor *value,
                                  const nb_mha_opts *o, nb_tensor **weights)
{
    int64_t E = c->embed_dim, H = c->num_heads, D = E / H;
    bool batched = nb_tensor_ndim(query) == 3;
    nnc_tmps s = {0};
    /* everything as batch-first (N, L, E) from here */
    const nb_tensor *in3[3] = {query, key, value};
    nb_tensor *x[3];
    for (int j = 0; j < 3; j++) {
        x[j] = !batched ? nnc_k(&s, nb_unsqueeze(in3[j], 0))
               : c->batch_first ? nnc_k(&s, nb_retain((nb_tensor *)in3[j]))
                                : nnc_k(&s, nb_transpose(in3[j], 0, 1));
        if (!x[j])
            return nnc_ret(&s, NULL);
    }
    int64_t N = nbi_dims(x[0])[0], L = nbi_dims(x[0])[1], S = nbi_dims(x[1])[1], NH;
    if (__builtin_mul_overflow(N, H, &NH)) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: batch %lld times %lld heads is too large", op,
                  (long long)N, (long long)H);
        return nnc_ret(&s, NULL);
    }
    if (o->attn_mask) {
        bool three = nb_tensor_ndim(o->attn_mask) == 3;
        int64_t want[3] = {NH, L, S};
        if (!mask_ok("attn_mask", o->attn_mask, query, three ? 3 : 2, three ? want : want + 1))
            return nnc_ret(&s, NULL);
    }
    int64_t kp[2] = {N, S};
    if (o->key_padding_mask && !mask_ok("key_padding_mask", o->key_padding_mask, query,
                                        batched ? 2 : 1, batched ? kp : kp + 1))
        return nnc_ret(&s, NULL);
    /* PyTorch's is_causal hint: without a key_padding_mask and weights, attn_mask is dropped
     * and the fused causal attention runs; otherwise the mask itself is used. */
    bool causal = o->is_causal && !o->key_padding_mask && !weights;
    double p = nb_module_is_training(m) ? c->dropout : 0;
    nb_tensor *pr[3], *mask = NULL;
    if (project(m, c, x, query == key && key == value, pr) != NB_OK)
        return nnc_ret(&s, NULL);
    for (int j = 0; j < 3; j++)
        nnc_k(&s, pr[j]);
    nb_tensor *qh = nnc_k(&s, split_heads(pr[0], H, false));
    nb_tensor *kh = nnc_k(&s, split_heads(pr[1], H, c->add_zero_attn));
    nb_tensor *vh = nnc_k(&s, split_heads(pr[2], H, c->add_zero_attn));
    if (!qh || !kh || !vh ||
        merged_mask(c, query, o, !causal, N, L, S, &mask) != NB_OK)
        return nnc_ret(&s, NULL);
    nnc_k(&s, mask);
    nb_tensor *y, *w = NULL;
    if (weights) {
        y = nnc_k(&s, attend_with_weights(qh, kh, vh, mask, p, &w));
        nnc_k(&s, w);
        if (w && !o->per_head_weights)
            w = nnc_k(&s, nb_mean(w, (int32_t[]){1}, 1, false)); /* (N, L, S') */
        if (w && !batched)
            w = nnc_k(&s, nb_squeeze(w, 0));
        if (!w)
            return nnc_ret(&s, NULL);
    } else {
        /* sdpa runs its fused kernel when there is no mask and no dropout */
        y = nnc_k(&s, nb_scaled_dot_product_attention(
                          qh, kh, vh, (nb_sdpa_opts){.attn_mask = mask, .dropout_p = p,
                                                     .is_causal = causal}));
    }
    nb_tensor *yt = y ? nnc_k(&s, nb_transpose(y, 1, 2)) : NULL; /* (N, L, H, D) */
    nb_tensor *yc = yt ? nnc_k(&s, nb_reshape(yt, NB_SHAPE(N, L, H * D))) : NULL;
    nb_module *out_proj = nb_module_child(m, "out_proj");
    nb_tensor *out = yc ? nnc_k(&s, linear_rows(yc, nbi_module_own(out_proj, "weight"),
                                                nbi_module_own(out_proj, "bias")))
                        : NULL;
    if (out)
        out = !batched ? nnc_k(&s, nb_squeeze(out, 0))
              : c->batch_first ? out : nnc_k(&s, nb_transpose(out, 0, 1));
    if (out && weights)
        *weights = nb_retain(w);
    return nnc_ret(&s, out);
}

static nb_tensor *mha_impl(nb_module *m, const mha_cfg *c, const nb_tensor *query,
                           const nb_tensor *key, const nb_tensor *value, nb_mha_opts o,
                           nb_tensor **weights)
{
    if (weights)
        *weights = NULL;
    if (nnc_null(op, "query", query) || nnc_null(op, "key", key) ||
        nnc_null(op, "value", value))
        return NULL;
    /* the parameters this configuration has, which a caller may not have removed */
    nb_tensor *w_q = nbi_module_own(m, packed(c) ? "in_proj_weight" : "q_proj_weight");
    nb_module *out_proj = nb_module_child(m, "out_proj");
    bool whole = w_q && out_proj && nbi_module_own(out_proj, "weight") &&
                 (packed(c) || (nbi_module_own(m, "k_proj_weight") &&
                                nbi_module_own(m, "v_proj_weight"))) &&
                 (!c->add_bias_kv || (nbi_module_own(m, "bias_k") &&
                                      nbi_module_own(m, "bias_v")));
    if (!whole) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: the module has lost one of its projection "
                  "weights, bias_k/bias_v or out_proj", op);
        return NULL;
    }
    if (!nnc_float(op, "query", query) || !nnc_like(op, "query", query, w_q) ||
        !nnc_like(op, "key", key, query) || !nnc_like(op, "value", value, query))
        return NULL;
    if (!inputs_ok(c, query, key, value, &o))
        return NULL;
    return forward_checked(m, c, query, key, value, &o, weights);
}

static nb_tensor *fw_mha(nb_module *m, const nb_tensor *x, const void *p)
{
    if (!pending.set || pending.m != m) /* nb_module_forward(m, x): self-attention */
        return mha_impl(m, p, x, x, x, (nb_mha_opts){0}, NULL);
    mha_call call = pending;
    pending = (mha_call){0};
    return mha_impl(m, p, x, call.key, call.value, call.opts, call.weights);
}

/* MultiheadAttention(\n  (out_proj): NonDynamicallyQuantizableLinear(...)\n): PyTorch prints
 * no extra_repr of its own. */
static const nbi_module_kind k_mha = {"MultiheadAttention", fw_mha, NULL};

/* ================================ construction ================================ */

static nb_status add_param(nb_module *m, const char *name, nb_tensor *t)
{
    nb_status st = t ? nb_module_add_parameter(m, name, t) : nb_last_status();
    nb_release(t);
    return st;
}

/* xavier_uniform_ of a (fan_out, fan_in) weight */
static nb_status add_xavier(nb_module *m, const char *name, int64_t fan_out, int64_t fan_in,
                            nb_opts opts)
{
    double a = sqrt(6.0 / ((double)fan_in + (double)fan_out));
    return add_param(m, name, nb_uniform(-a, a, NB_SHAPE(fan_out, fan_in), opts));
}

/* The class name PyTorch gives out_proj (a Linear that dynamic quantization leaves alone); its
 * repr and nb_module_type say so. */
static nb_status rename_out_proj(nb_module *op_)
{
    char *name = nbi_strdup("NonDynamicallyQuantizableLinear");
    if (!name)
        return nnm_oom(op);
    nbi_free(op_->type_name);
    op_->type_name = name;
    return NB_OK;
}

static nb_module *mha_new_impl(int64_t E, int64_t H, nb_mha_config cfg, nb_opts opts)
{
    if (E <= 0 || H <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: embed_dim and num_heads must be greater than 0, got "
                  "embed_dim=%lld and num_heads=%lld instead", op, (long long)E, (long long)H);
        return NULL;
    }
    if (E % H) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: embed_dim must be divisible by num_heads, got "
                  "embed_dim=%lld and num_heads=%lld", op, (long long)E, (long long)H);
        return NULL;
    }
    if (cfg.kdim < 0 || cfg.vdim < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: kdim=%lld, vdim=%lld; each must be positive, or 0 "
                  "for embed_dim", op, (long long)cfg.kdim, (long long)cfg.vdim);
        return NULL;
    }
    if (!(cfg.dropout >= 0 && cfg.dropout <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: dropout probability has to be between 0 and 1, but "
                  "got %g", op, cfg.dropout);
        return NULL;
    }
    int64_t E3;
    if (__builtin_mul_overflow(E, 3, &E3)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: embed_dim=%lld is too large", op, (long long)E);
        return NULL;
    }
    if (opts.dtype < 0 || opts.dtype >= NB_DTYPE_COUNT || !nb_dtype_is_float(opts.dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: parameters must be a floating point type", op);
        return NULL;
    }
    mha_cfg c = {E, H, cfg.kdim ? cfg.kdim : E, cfg.vdim ? cfg.vdim : E, cfg.dropout,
                 !cfg.no_bias, cfg.add_bias_kv, cfg.add_zero_attn, cfg.batch_first};
    nb_module *m = nbi_module_new_kind(&k_mha, &c, sizeof c);
    if (!m)
        return NULL;
    /* PyTorch's registration order (state_dict order) and _reset_parameters: xavier_uniform_
     * on the projection weights, zero in_proj_bias and out_proj.bias, xavier_normal_ on bias_k
     * and bias_v (fans E and E for a (1, 1, E) tensor: std sqrt(1 / E)); out_proj.weight keeps
     * Linear's own init. */
    opts.requires_grad = true;
    nb_status st;
    if (packed(&c)) {
        st = add_xavier(m, "in_proj_weight", E3, E, opts);
    } else {
        st = add_xavier(m, "q_proj_weight", E, E, opts);
        if (st == NB_OK)
            st = add_xavier(m, "k_proj_weight", E, c.kdim, opts);
        if (st == NB_OK)
            st = add_xavier(m, "v_proj_weight", E, c.vdim, opts);
    }
    if (st == NB_OK && c.bias)
        st = add_param(m, "in_proj_bias", nb_zeros(NB_SHAPE(E3), opts));
    if (st == NB_OK && c.add_bias_kv) {
        double sd = sqrt(1.0 / (double)E);
        st = add_param(m, "bias_k", nb_normal(0, sd, NB_SHAPE(1, 1, E), opts));
        if (st == NB_OK)
            st = add_param(m, "bias_v", nb_normal(0, sd, NB_SHAPE(1, 1, E), opts));
    }
    nb_module *out_proj = st == NB_OK ? nb_linear_new(E, E, c.bias, opts) : NULL;
    if (st == NB_OK && out_proj && (st = rename_out_proj(out_proj)) != NB_OK)
        nb_module_free(out_proj);
    else if (st == NB_OK)
        st = out_proj ? nb_module_add(m, "out_proj", out_proj) : nb_last_status();
    if (st == NB_OK && c.bias) {
        nb_no_grad_begin();
        st = nb_zero_(nbi_module_own(out_proj, "bias"));
        nb_no_grad_end();
    }
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_multihead_attention_new_opts(int64_t embed_dim, int64_t num_heads,
                                           nb_mha_config cfg, nb_opts opts)
{
    return NNC_API_MODULE(mha_new_impl(embed_dim, num_heads, cfg, opts));
}

nb_module *nb_multihead_attention_new(int64_t embed_dim, int64_t num_heads, bool bias,
                                      bool batch_first, nb_opts opts)
{
    nb_mha_config cfg = {.no_bias = !bias, .batch_first = batch_first};
    return NNC_API_MODULE(mha_new_impl(embed_dim, num_heads, cfg, opts));
}

static nb_tensor *mha_call_impl(nb_module *m, const nb_tensor *query, const nb_tensor *key,
                                const nb_tensor *value, nb_mha_opts opts, nb_tensor **weights)
{
    if (weights)
        *weights = NULL;
    if (!m || m->kind != NN_EXT || m->ext != &k_mha) {
        nbi_error(m ? NB_INVALID_ARGUMENT : NB_NULL_ARGUMENT, "nb_multihead_attention: the "
                  "module is %s, expected a MultiheadAttention", m ? nb_module_type(m) : "NULL");
        return NULL;
    }
    if (nnc_null(op, "query", query))
        return NULL;
    mha_call saved = pending;
    pending = (mha_call){true, m, key, value, opts, weights};
    nb_tensor *y = nb_module_forward(m, query);
    pending = saved;
    return y;
}

nb_tensor *nb_multihead_attention(nb_module *m, const nb_tensor *query, const nb_tensor *key,
                                  const nb_tensor *value, nb_mha_opts opts, nb_tensor **weights)
{
    return NBI_API(mha_call_impl(m, query, key, value, opts, weights));
}
