/* embedding.c - embedding (a lookup of weight rows by integer indices, with padding_idx) and the
 * Embedding module. The lookup is index_select, whose backward scatters into the table. */
#include "nn_common.h"

/* The first index outside [0, V), checked on the device's own amin/amax (every device). */
static bool check_range(const nb_tensor *idx, int64_t V)
{
    if (nbi_numel(idx->ndim, idx->shape) == 0)
        return true;
    nb_tensor *lo = nb_amin(idx, NULL, 0, false), *hi = nb_amax(idx, NULL, 0, false);
    double l = 0, h = 0;
    bool ok = lo && hi && nb_item(lo, &l) == NB_OK && nb_item(hi, &h) == NB_OK;
    nb_release(lo);
    nb_release(hi);
    if (!ok)
        return false;
    if (l < 0 || h >= (double)V) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "embedding: index %lld out of range for a table of %lld "
                  "rows (valid: 0 to %lld)", (long long)(l < 0 ? l : h), (long long)V,
                  (long long)V - 1);
        return false;
    }
    return true;
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

static nb_tensor *embedding_impl(const nb_tensor *idx, const nb_tensor *w, int64_t pad)
{
    const char *op = "embedding";
    if (nnc_null(op, "indices", idx) || nnc_null(op, "weight", w) ||
        !nnc_float(op, "weight", w) || !nnc_same_device(op, "weight", w, idx))
        return NULL;
    if (idx->dtype != NB_DTYPE_I64 && idx->dtype != NB_DTYPE_I32) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "embedding: expected indices of type int64 or int32, got "
                  "%s", nb_dtype_name(idx->dtype));
        return NULL;
    }
    if (w->ndim != 2) {
        nbi_error(NB_SHAPE_MISMATCH, "embedding: weight must be 2-d (num_embeddings, "
                  "embedding_dim), got %s", NBI_SHAPE_STR(w));
        return NULL;
    }
    if (idx->ndim + 1 > NB_MAX_DIMS) {
        nbi_error(NB_SHAPE_MISMATCH, "embedding: indices %s have too many dims for the output "
                  "(at most %d)", NBI_SHAPE_STR(idx), NB_MAX_DIMS - 1);
        return NULL;
    }
    int64_t V = w->shape[0], D = w->shape[1];
    if (!norm_padding(op, &pad, V) || !check_range(idx, V))
        return NULL;
    nnc_tmps s = {0};
    nb_tensor *i64 = idx->dtype == NB_DTYPE_I64 ? nnc_k(&s, nb_retain((nb_tensor *)idx))
                                               : nnc_k(&s, nb_to_dtype(idx, NB_DTYPE_I64));
    nb_tensor *flat = nnc_k(&s, nb_reshape(i64, NB_SHAPE(-1)));
    nb_tensor *rows = flat ? nnc_k(&s, nb_index_select(w, 0, flat)) : NULL; /* (M, D) */
    if (rows && pad != NB_NO_PADDING_IDX) {
        /* the padding row is looked up like any other but passes no gradient back */
        nb_tensor *eq = nnc_k(&s, nb_eq_scalar(flat, (double)pad));
        nb_tensor *mask = nnc_k(&s, nb_unsqueeze(eq, 1));
        nb_tensor *d = nnc_k(&s, nb_detach(rows));
        rows = mask && d ? nnc_k(&s, nb_where(mask, d, rows)) : NULL;
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
