/* ops_index.c - indexing and joining: gather, index_select, scatter_add, cat and stack. */
#include "ops_internal.h"

#include <string.h>

static nb_status check_index(const char *op, const nb_tensor *t, const nb_tensor *index)
{
    if (same_device(op, t, index) != NB_OK)
        return nb_last_status();
    if (index->dtype != NB_DTYPE_I64)
        return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: index must be int32 or int64, got %s", op,
                         nb_dtype_name(index->dtype));
    return NB_OK;
}

/* PyTorch 2.x's gather, index_select and scatter_add take an int32 index as well as int64; the
 * kernels read int64, so an int32 one is widened (*wide, released by the caller). The copy is
 * the op's own: made inside the API depth, so no scope of the application tracks it (it would
 * release it a second time). */
static const nb_tensor *widen_index(const nb_tensor *index, nb_tensor **wide)
{
    nbi_api_depth++;
    *wide = index->dtype == NB_DTYPE_I32 ? nb_to_dtype(index, NB_DTYPE_I64) : NULL;
    nbi_api_depth--;
    return index->dtype == NB_DTYPE_I32 ? *wide : index;
}

static nb_status bw_gather(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, idx);
    nb_tensor *z = nb_zeros(node->in_shape[0], (nb_opts){g->dtype, g->storage->device->name});
    gi[0] = z ? nb_scatter_add(z, (int32_t)node->i[0], idx, g) : NULL;
    nb_release(z);
    return done(gi, 1);
}

static nb_tensor *gather_impl(const char *name, const nb_tensor *t, int32_t dim,
                              const nb_tensor *index)
{
    if (check_index(name, t, index) != NB_OK || nbi_check_dim(name, t, &dim, false) != NB_OK)
        return NULL;
    if (index->ndim != t->ndim) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: index %s must have as many dims as the input %s", name,
                  NBI_SHAPE_STR(index), NBI_SHAPE_STR(t));
        return NULL;
    }
    for (int32_t d = 0; d < t->ndim; d++)
        if (d != dim && index->shape[d] > t->shape[d]) {
            nbi_error(NB_SHAPE_MISMATCH, "%s: index %s is larger than input %s at dim %d", name,
                      NBI_SHAPE_STR(index), NBI_SHAPE_STR(t), d);
            return NULL;
        }
    nb_tensor *out = nbi_tensor_new(t->storage->device, t->dtype, index->ndim, index->shape);
    if (!out)
        return NULL;
    /* the kernel reads the input at the index's shape on the non-gathered dims */
    nb_tensor st = {0}, *in[2] = {&st, (nb_tensor *)index};
    shadow(&st, t, t->ndim, t->shape);
    for (int32_t d = 0; d < t->ndim; d++)
        if (d != dim)
            st.shape[d] = index->shape[d];
    int64_t iv[1] = {dim};
    if (numel(out) && nbi_launch(NBI_OP_gather, t->dtype, out, in, 2, NULL, 0, iv, 1) != NB_OK) {
        nb_release(out);
        return NULL;
    }
    nb_tensor *ins[2] = {(nb_tensor *)t, NULL};
    nbi_node *node = nbi_record(out, strcmp(name, "gather") ? "IndexSelectBackward0"
                                                            : "GatherBackward0",
                                bw_gather, ins, 2);
    if (node) {
        nbi_save(node, index);
        node->i[0] = dim;
    }
    return out;
}

nb_tensor *nb_gather(const nb_tensor *t, int32_t dim, const nb_tensor *index)
{
    NBI_NULL_CHECK("gather", t, index);
    nb_tensor *wide;
    const nb_tensor *ix = widen_index(index, &wide);
    nb_tensor *r = ix ? gather_impl("gather", t, dim, ix) : NULL;
    nb_release(wide);
    return NBI_API(r);
}

nb_tensor *nb_index_select(const nb_tensor *t, int32_t dim, const nb_tensor *index)
{
    NBI_NULL_CHECK("index_select", t, index);
    if (nbi_check_dim("index_select", t, &dim, false) != NB_OK)
        return NULL;
    if (index->ndim > 1) {
        nbi_error(NB_SHAPE_MISMATCH, "index_select: index must be 0-d or 1-d, got %s",
                  NBI_SHAPE_STR(index));
        return NULL;
    }
    if (t->ndim == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "index_select: input must have at least one dimension");
        return NULL;
    }
    nb_tensor *wide;
    const nb_tensor *ix = widen_index(index, &wide);
    if (!ix)
        return NULL;
    /* a stride-0 expansion of the index turns index_select into gather */
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS] = {0};
    memcpy(shape, t->shape, sizeof shape);
    shape[dim] = ix->ndim ? ix->shape[0] : 1;
    strides[dim] = ix->ndim ? ix->strides[0] : 0;
    nb_tensor *ex = nbi_tensor_view(ix, t->ndim, shape, strides, ix->offset);
    nb_tensor *r = ex ? gather_impl("index_select", t, dim, ex) : NULL;
    nb_release(ex);
    nb_release(wide);
    return NBI_API(r);
}

static nb_status bw_scatter_add(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, idx);
    gi[0] = node->next[0] ? nb_retain(g) : NULL;
    gi[2] = node->next[2] ? nb_gather(g, (int32_t)node->i[0], idx) : NULL;
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

static nb_tensor *scatter_add_impl(const nb_tensor *t, int32_t dim, const nb_tensor *index,
                                   const nb_tensor *src)
{
    if (check_index("scatter_add", t, index) != NB_OK || same_device("scatter_add", t, src) ||
        nbi_check_dim("scatter_add", t, &dim, false) != NB_OK)
        return NULL;
    if (index->ndim != t->ndim || src->ndim != t->ndim) {
        nbi_error(NB_SHAPE_MISMATCH, "scatter_add: index %s and src %s must have the dims of the "
                  "input %s", NBI_SHAPE_STR(index), NBI_SHAPE_STR(src), NBI_SHAPE_STR(t));
        return NULL;
    }
    for (int32_t d = 0; d < t->ndim; d++)
        if (index->shape[d] > src->shape[d] || (d != dim && index->shape[d] > t->shape[d])) {
            nbi_error(NB_SHAPE_MISMATCH, "scatter_add: index %s is larger than src %s or input "
                      "%s at dim %d", NBI_SHAPE_STR(index), NBI_SHAPE_STR(src), NBI_SHAPE_STR(t), d);
            return NULL;
        }
    nb_tensor *out = nbi_cast(t, t->dtype), *cs = out ? as_dtype(src, t->dtype) : NULL;
    if (!cs) {
        nb_release(out);
        return NULL;
    }
    nb_tensor so = {0}, ss = {0}, *in[2] = {(nb_tensor *)index, &ss};
    shadow(&so, out, out->ndim, out->shape);
    shadow(&ss, cs, cs->ndim, cs->shape);
    for (int32_t d = 0; d < t->ndim; d++) {
        ss.shape[d] = index->shape[d];
        if (d != dim)
            so.shape[d] = index->shape[d];
    }
    int64_t iv[1] = {dim};
    nb_status st = numel(index) ? nbi_launch(NBI_OP_scatter_add, t->dtype, &so, in, 2, NULL, 0, iv, 1)
                                : NB_OK;
    drop_cast(cs, src);
    if (st != NB_OK) {
        nb_release(out);
        return NULL;
    }
    nb_tensor *ins[3] = {(nb_tensor *)t, NULL, (nb_tensor *)src};
    nbi_node *node = nbi_record(out, "ScatterAddBackward0", bw_scatter_add, ins, 3);
    if (node) {
        nbi_save(node, index);
        node->i[0] = dim;
    }
    return out;
}

nb_tensor *nb_scatter_add(const nb_tensor *t, int32_t dim, const nb_tensor *index,
                          const nb_tensor *src)
{
    NBI_NULL_CHECK("scatter_add", t, index, src);
    nb_tensor *wide;
    const nb_tensor *ix = widen_index(index, &wide);
    nb_tensor *r = ix ? scatter_add_impl(t, dim, ix, src) : NULL;
    nb_release(wide);
    return NBI_API(r);
}

static nb_status bw_cat(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    int32_t dim = (int32_t)node->i[0];
    int64_t off = 0;
    for (int32_t k = 0; k < node->n_in; k++) {
        int64_t len = node->in_shape[k].ndim ? node->in_shape[k].dims[dim] : 0;
        if (node->next[k] && !(gi[k] = nb_narrow(g, dim, off, len)))
            return nb_last_status();
        off += len;
    }
    return NB_OK;
}

static nb_tensor *cat_impl(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    if (!ts || n <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "cat: expected a non-empty list of tensors, got %d", n);
        return NULL;
    }
    const nb_tensor *ref = NULL; /* PyTorch skips 1-d empty tensors in cat */
    for (int32_t k = 0; k < n; k++) {
        if (!ts[k]) {
            if (!nbi_error_pending())
                nbi_error(NB_NULL_ARGUMENT, "cat: tensor %d is NULL", k);
            return NULL;
        }
        if (!ref && !(ts[k]->ndim == 1 && ts[k]->shape[0] == 0))
            ref = ts[k];
    }
    if (!ref)
        ref = ts[0];
    if (ref->ndim == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "cat: zero-dimensional tensor (at position 0) cannot be "
                  "concatenated");
        return NULL;
    }
    if (nbi_check_dim("cat", ref, &dim, false) != NB_OK)
        return NULL;
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, ref->shape, sizeof shape);
    shape[dim] = 0;
    nb_dtype dt = ref->dtype;
    for (int32_t k = 0; k < n; k++) {
        const nb_tensor *t = ts[k];
        if (t->ndim == 1 && t->shape[0] == 0 && ref->ndim != 1)
            continue;
        if (same_device("cat", ref, t) != NB_OK)
            return NULL;
        if (t->ndim != ref->ndim) {
            nbi_error(NB_SHAPE_MISMATCH, "cat: tensors must have the same number of dimensions: "
                      "got %d and %d (tensor %d)", ref->ndim, t->ndim, k);
            return NULL;
        }
        for (int32_t d = 0; d < t->ndim; d++)
            if (d != dim && t->shape[d] != ref->shape[d]) {
                nbi_error(NB_SHAPE_MISMATCH, "cat: sizes of tensors must match except in "
                          "dimension %d: expected size %lld but got size %lld for tensor %d at "
                          "dim %d", dim, (long long)ref->shape[d], (long long)t->shape[d], k, d);
                return NULL;
            }
        if (nbi_add_i64("cat", "size", shape[dim], t->shape[dim], &shape[dim]) != NB_OK)
            return NULL;
        dt = nb_promote_types(dt, t->dtype);
    }
    nb_tensor *out = nbi_tensor_new(ref->storage->device, dt, ref->ndim, shape);
    if (!out)
        return NULL;
    int64_t off = 0;
    for (int32_t k = 0; k < n; k++) {
        const nb_tensor *t = ts[k];
        if (t->ndim != ref->ndim)
            continue;
        nb_tensor part;
        shadow(&part, out, out->ndim, out->shape);
        memcpy(part.strides, out->strides, sizeof part.strides);
        part.shape[dim] = t->shape[dim];
        part.offset = out->offset + off * out->strides[dim];
        nb_tensor *in[1] = {(nb_tensor *)t};
        if (numel(t) && nbi_launch(NBI_OP_copy, dt, &part, in, 1, NULL, 0, NULL, 0) != NB_OK) {
            nb_release(out);
            return NULL;
        }
        off += t->shape[dim];
    }
    nbi_node *node = nbi_record(out, "CatBackward0", bw_cat, ts, n);
    if (node)
        node->i[0] = dim;
    return out;
}

nb_tensor *nb_cat(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    return NBI_API(cat_impl(ts, n, dim));
}

static nb_tensor *stack_impl(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    if (!ts || n <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "stack: expected a non-empty list of tensors, got %d", n);
        return NULL;
    }
    nb_tensor **u = nbi_calloc((size_t)n, sizeof *u);
    if (!u) {
        nbi_error(NB_OUT_OF_MEMORY, "stack: out of memory");
        return NULL;
    }
    nb_tensor *r = NULL;
    for (int32_t k = 0; k < n; k++) {
        if (!ts[k]) {
            if (!nbi_error_pending())
                nbi_error(NB_NULL_ARGUMENT, "stack: tensor %d is NULL", k);
            goto done;
        }
        if (ts[k]->ndim != ts[0]->ndim || memcmp(ts[k]->shape, ts[0]->shape, (size_t)ts[0]->ndim * 8)) {
            nbi_error(NB_SHAPE_MISMATCH, "stack: expects each tensor to be equal size, but got "
                      "%s at entry 0 and %s at entry %d", NBI_SHAPE_STR(ts[0]),
                      NBI_SHAPE_STR(ts[k]), k);
            goto done;
        }
        if (!(u[k] = nb_unsqueeze(ts[k], dim)))
            goto done;
    }
    r = cat_impl(u, n, dim < 0 ? dim : dim);
done:
    for (int32_t k = 0; k < n; k++)
        nb_release(u[k]);
    nbi_free(u);
    return r;
}

/* Input k's gradient is slice k of g along the new dim. */
static nb_status bw_stack(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    for (int32_t k = 0; k < node->n_in; k++)
        if (node->next[k] && !(gi[k] = nb_select(g, (int32_t)node->i[0], k)))
            return nb_last_status();
    return NB_OK;
}

nb_tensor *nb_stack(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    nbi_api_depth++;
    bool grad = ts && n > 0 && nbi_grad_needed(ts, n);
    bool prev = nb_set_grad_enabled(false); /* one StackBackward0 node, as in PyTorch */
    nb_tensor *r = stack_impl(ts, n, dim);
    nb_set_grad_enabled(prev);
    nbi_node *node = r && grad ? nbi_record(r, "StackBackward0", bw_stack, ts, n) : NULL;
    if (node)
        node->i[0] = dim < 0 ? dim + r->ndim : dim;
    nbi_api_depth--;
    return NBI_API(r);
}
