/* embedding.c - embedding (a lookup of weight rows by integer indices, with padding_idx) and the
 * Embedding module. The lookup is index_select, whose backward scatters into the table; a
 * device's "embedding_backward" kernel (tier 2) does that scatter when the gradient needs no
 * graph. */
#include "nn_common.h"

/* The first index outside [0, V), found on the host: every device can copy its indices there,
 * while not every device reduces int64. */
static bool check_range(const nb_tensor *idx, int64_t V, nb_tensor **pad_mask, int64_t pad)
{
    int64_t n = nbi_numel(nb_tensor_ndim(idx), nbi_dims(idx));
    *pad_mask = NULL;
    if (n == 0)
        return true;
    double *v = nbi_malloc((size_t)n * sizeof *v);
    if (!v) {
        nbi_error(NB_OUT_OF_MEMORY, "embedding: out of host memory for %lld indices",
                  (long long)n);
        return false;
    }
    bool ok = nbi_read_f64(idx, v) == NB_OK;
    for (int64_t k = 0; ok && k < n; k++)
        if (v[k] < 0 || v[k] >= (double)V) {
            /* %.0f: an int64 index past 2^63 - 512 reads as 2^63, which no cast may take */
            nbi_error(NB_INDEX_OUT_OF_RANGE, "embedding: index %.0f out of range for a table of "
                      "%lld rows (valid: 0 to %lld)", v[k], (long long)V,
                      (long long)V - 1);
            ok = false;
        }
    if (ok && pad != NB_NO_PADDING_IDX) {
        /* (M, 1): the rows that look up the padding entry; bool, from the host, so that
         * devices without int64 comparisons run it too */
        bool *m = nbi_malloc((size_t)n);
        for (int64_t k = 0; m && k < n; k++)
            m[k] = v[k] == (double)pad;
        *pad_mask = m ? nb_from_data(m, NB_SHAPE(n, 1), (nb_opts){NB_DTYPE_BOOL, NNC_DEV(idx)})
                      : NULL;
        if (!m)
            nbi_error(NB_OUT_OF_MEMORY, "embedding: out of host memory");
        nbi_free(m);
        ok = *pad_mask != NULL;
    }
    nbi_free(v);
    return ok;
}

static bool norm_padding(const char *what, int64_t *pad, int64_t V)
{
    if (*pad == NB_NO_PADDING_IDX)
        return true;
    if (*pad < -V || *pad >= V) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: padding_idx %lld must be within num_embeddings "
                  "%lld (from %lld to %lld)", what, (long long)*pad, (long long)V,
                  (long long)-V, (long long)V - 1);
        return false;
    }
    if (*pad < 0)
        *pad += V;
    return true;
}

/* ============================ the fused tier-2 path ============================ */

typedef struct emb_ctx {
    int64_t pad, V; /* padding row (NB_NO_PADDING_IDX: none), table rows */
    nb_tensor *flat; /* (M) int64 indices */
    nb_tensor *pad_mask; /* (M, 1) bool, or NULL */
} emb_ctx;

static nb_tensor *emb_forward(void *p, nb_tensor *const *in, int32_t n)
{
    (void)n;
    emb_ctx *c = p;
    return nb_index_select(in[0], 0, c->flat);
}

/* d weight = zeros (V, D) with row idx[m] += g[m] for every m outside the padding */
static nb_status emb_backward(void *p, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    (void)n;
    emb_ctx *c = p;
    int64_t D = nbi_dims(g)[1];
    nnc_tmps s = {0};
    nb_tensor *out = nb_zeros(NB_SHAPE(c->V, D), nnc_opts(g));
    if (out && !nb_is_grad_enabled() && nbi_has_kernel(g, "embedding_backward")) {
        nb_tensor *gc = nnc_k(&s, nb_contiguous(g)), *ic = nnc_k(&s, nb_contiguous(c->flat));
        int64_t pad = c->pad == NB_NO_PADDING_IDX ? -1 : c->pad;
        if (!gc || !ic ||
            nbi_run("embedding_backward", out, (nb_tensor *[]){gc, ic}, 2, NULL, 0, &pad, 1) !=
                NB_OK) {
            nb_release(out);
            out = NULL;
        }
    } else if (out) { /* with ops: differentiable again */
        nb_tensor *col = nnc_k(&s, nb_reshape(c->flat, NB_SHAPE(-1, 1)));
        nb_tensor *ix = col ? nnc_k(&s, nb_expand(col, NB_SHAPE(nbi_dims(col)[0], D))) : NULL;
        nb_tensor *gm = c->pad_mask ? nnc_k(&s, nb_masked_fill(g, c->pad_mask, 0))
                                    : nnc_k(&s, nb_retain((nb_tensor *)g));
        nb_tensor *r = ix && gm ? nb_scatter_add(out, 0, ix, gm) : NULL;
        nb_release(out);
        out = r;
    }
    nnc_free(&s);
    gi[0] = out;
    return out ? NB_OK : nbi_last_or(NB_AUTOGRAD, "embedding backward failed");
}

static void emb_free(void *p)
{
    emb_ctx *c = p;
    nb_release(c->flat);
    nb_release(c->pad_mask);
    nbi_free(c);
}

static const nb_function embedding_fn = {"EmbeddingBackward0", emb_forward, emb_backward,
                                         emb_free};

static nb_tensor *embedding_impl(const nb_tensor *idx, const nb_tensor *w, int64_t pad)
{
    const char *op = "embedding";
    if (nnc_null(op, "indices", idx) || nnc_null(op, "weight", w) ||
        !nnc_float(op, "weight", w) || !nnc_same_device(op, "weight", w, idx))
        return NULL;
    if (nb_tensor_dtype(idx) != NB_DTYPE_I64 && nb_tensor_dtype(idx) != NB_DTYPE_I32) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "embedding: expected indices of type int64 or int32, got "
                  "%s", nb_dtype_name(nb_tensor_dtype(idx)));
        return NULL;
    }
    if (nb_tensor_ndim(w) != 2) {
        nbi_error(NB_SHAPE_MISMATCH, "embedding: weight must be 2-d (num_embeddings, "
                  "embedding_dim), got %s", NBI_SHAPE_STR(w));
        return NULL;
    }
    if (nb_tensor_ndim(idx) + 1 > NB_MAX_DIMS) {
        nbi_error(NB_SHAPE_MISMATCH, "embedding: indices %s have too many dims for the output "
                  "(at most %d)", NBI_SHAPE_STR(idx), NB_MAX_DIMS - 1);
        return NULL;
    }
    int64_t V = nbi_dims(w)[0], D = nbi_dims(w)[1];
    nb_tensor *pad_mask = NULL;
    if (!norm_padding(op, &pad, V) || !check_range(idx, V, &pad_mask, pad))
        return NULL;
    nnc_tmps s = {0};
    nnc_k(&s, pad_mask);
    nb_tensor *i64 = nb_tensor_dtype(idx) == NB_DTYPE_I64 ? nnc_k(&s, nb_retain((nb_tensor *)idx))
                                               : nnc_k(&s, nb_to_dtype(idx, NB_DTYPE_I64));
    nb_tensor *flat = nnc_k(&s, nb_reshape(i64, NB_SHAPE(-1)));
    nb_tensor *rows = NULL;
    nb_dtype wt = nb_tensor_dtype(w);
    bool fused = flat && (wt == NB_DTYPE_F32 || wt == NB_DTYPE_F64) &&
                 nbi_has_kernel(w, "embedding_backward");
    if (fused) {
        emb_ctx *c = nbi_calloc(1, sizeof *c);
        if (!c) {
            nbi_error(NB_OUT_OF_MEMORY, "embedding: out of host memory");
            return nnc_ret(&s, NULL);
        }
        *c = (emb_ctx){pad, V, nb_retain(flat), pad_mask ? nb_retain(pad_mask) : NULL};
        /* function_apply owns c from here, on every path */
        rows = nnc_k(&s, nb_function_apply(&embedding_fn, c, (nb_tensor *[]){(nb_tensor *)w},
                                           1));
    } else if (flat) {
        rows = nnc_k(&s, nb_index_select(w, 0, flat)); /* (M, D) */
    }
    if (rows && pad_mask && !fused) {
        /* the padding row is looked up like any other but passes no gradient back */
        nb_tensor *d = nnc_k(&s, nb_detach(rows));
        rows = d ? nnc_k(&s, nb_where(pad_mask, d, rows)) : NULL;
    }
    nb_shape os = nnc_shape(idx);
    os.dims[os.ndim++] = D;
    return nnc_ret(&s, rows ? nnc_k(&s, nb_reshape(rows, os)) : NULL);
}

nb_tensor *nb_embedding(const nb_tensor *indices, const nb_tensor *weight, int64_t padding_idx)
{
    return NBI_API(embedding_impl(indices, weight, padding_idx));
}

/* ================================ module ================================ */

typedef struct emb_cfg {
    int64_t num, dim, pad;
} emb_cfg;

static nb_tensor *fw_embedding(nb_module *m, const nb_tensor *x, const void *p)
{
    return embedding_impl(x, nbi_module_own(m, "weight"), ((const emb_cfg *)p)->pad);
}

static void rp_embedding(const void *p, char *buf, size_t len)
{
    const emb_cfg *c = p;
    size_t k = (size_t)snprintf(buf, len, "%lld, %lld", (long long)c->num, (long long)c->dim);
    if (c->pad != NB_NO_PADDING_IDX && k < len)
        snprintf(buf + k, len - k, ", padding_idx=%lld", (long long)c->pad);
}

static const nbi_module_kind k_embedding = {"Embedding", fw_embedding, rp_embedding};

static nb_module *embedding_new(int64_t num, int64_t dim, int64_t pad, nb_opts opts)
{
    const char *what = "nb_embedding_new";
    if (num <= 0 || dim <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: num_embeddings=%lld and embedding_dim=%lld must be "
                  "positive", what, (long long)num, (long long)dim);
        return NULL;
    }
    if (opts.dtype < 0 || opts.dtype >= NB_DTYPE_COUNT || !nb_dtype_is_float(opts.dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: the weight must be float32 or float64", what);
        return NULL;
    }
    if (!norm_padding(what, &pad, num))
        return NULL;
    emb_cfg c = {num, dim, pad};
    nb_module *m = nbi_module_new_kind(&k_embedding, &c, sizeof c);
    opts.requires_grad = false;
    nb_tensor *w = m ? nb_randn(NB_SHAPE(num, dim), opts) : NULL; /* normal_(0, 1) */
    nb_status st = w ? NB_OK : nbi_last_or(NB_OUT_OF_MEMORY, "nb_embedding_new failed");
    if (st == NB_OK && pad != NB_NO_PADDING_IDX) {
        nb_tensor *row = nb_select(w, 0, pad);
        st = row ? nb_zero_(row) : nb_last_status();
        nb_release(row);
    }
    if (st == NB_OK)
        st = nb_module_add_parameter(m, "weight", w);
    nb_release(w);
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_embedding_new(int64_t num_embeddings, int64_t embedding_dim, int64_t padding_idx,
                            nb_opts opts)
{
    return NNC_API_MODULE(embedding_new(num_embeddings, embedding_dim, padding_idx, opts));
}
