/* views.c - views share their base's storage: view, reshape, transpose, permute, squeeze,
 * unsqueeze, flatten, expand, narrow/slice, select, detach; each with its backward rule. */
#include "nabla_internal.h"

#include <string.h>

#define VIEW_NULL_CHECK(op, t)                                                             \
    do {                                                                                   \
        if (!(t)) {                                                                        \
            if (!nbi_error_pending())                                                      \
                nbi_error(NB_NULL_ARGUMENT, "%s: tensor is NULL", op);                     \
            return NULL;                                                                   \
        }                                                                                  \
    } while (0)

static nb_status bw_view(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    gi[0] = nb_reshape(g, node->in_shape[0]);
    return gi[0] ? NB_OK : nb_last_status();
}

static nb_status bw_transpose(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    gi[0] = nb_transpose(g, (int32_t)node->i[0], (int32_t)node->i[1]);
    return gi[0] ? NB_OK : nb_last_status();
}

static nb_status bw_permute(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    int32_t inv[NB_MAX_DIMS];
    for (int32_t d = 0; d < g->ndim; d++)
        inv[node->i[d]] = d;
    gi[0] = nb_permute(g, inv, g->ndim);
    return gi[0] ? NB_OK : nb_last_status();
}

static nb_status bw_expand(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    (void)node;
    gi[0] = nb_retain(g); /* the engine sums over the broadcast dims */
    return NB_OK;
}

nb_tensor *nbi_slice_view(const nb_tensor *t, int32_t dim, int64_t start, int64_t len, int64_t step);

/* narrow/slice/select: the gradient lands in the sliced region of a zero tensor. */
static nb_status bw_slice(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    nb_tensor *z = nb_zeros(node->in_shape[0], (nb_opts){g->dtype, g->storage->device->name});
    int32_t dim = (int32_t)node->i[0];
    nb_tensor *v = z ? nbi_slice_view(z, dim, node->i[1], node->i[3], node->i[2]) : NULL;
    nbi_view_track(v, z); /* under create_graph the copy below rebases z (CopySlices) */
    nb_tensor *src = node->i[4] ? nb_unsqueeze(g, dim) : nb_retain(g);
    nb_status st = v && src ? nb_tensor_copy_(v, src) : nb_last_status();
    nb_release(v);
    nb_release(src);
    if (st != NB_OK) {
        nb_release(z);
        return st;
    }
    gi[0] = z;
    return NB_OK;
}

static nb_tensor *make_view(const nb_tensor *t, int32_t ndim, const int64_t *shape,
                            const int64_t *strides, int64_t offset, const char *name,
                            nbi_backward_fn bw, const int64_t *params, int32_t np)
{
    nb_tensor *v = nbi_tensor_view(t, ndim, shape, strides, offset);
    nb_tensor *in[1] = {(nb_tensor *)t};
    nbi_node *node = v ? nbi_record(v, name, bw, in, 1) : NULL;
    for (int32_t k = 0; node && k < np; k++)
        node->i[k] = params[k];
    nbi_view_track(v, t);
    return v;
}

/* Resolves one -1 and checks the element count. */
static nb_status infer_shape(const char *op, const nb_tensor *t, nb_shape *s)
{
    if (s->ndim < 0 || s->ndim > NB_MAX_DIMS)
        return nbi_error(NB_INVALID_ARGUMENT, "%s: %d dims, expected 0 to %d", op, s->ndim,
                         NB_MAX_DIMS);
    int64_t n = nbi_numel(t->ndim, t->shape), known = 1;
    int32_t infer = -1;
    for (int32_t d = 0; d < s->ndim; d++) {
        if (s->dims[d] == -1) {
            if (infer >= 0)
                return nbi_error(NB_INVALID_ARGUMENT, "%s: only one dimension can be inferred",
                                 op);
            infer = d;
        } else if (s->dims[d] < 0) {
            return nbi_error(NB_INVALID_ARGUMENT, "%s: invalid shape dimension %lld", op,
                             (long long)s->dims[d]);
        } else if (__builtin_mul_overflow(known, s->dims[d], &known)) {
            return nbi_error(NB_INVALID_ARGUMENT, "%s: shape %s is too large (its element count "
                             "overflows int64)", op, nbi_shape_cstr(s->ndim, s->dims));
        }
    }
    if (infer >= 0) {
        if (known == 0 || n % known)
            return nbi_error(NB_SHAPE_MISMATCH, "%s: shape %s is invalid for input of size %lld",
                             op, nbi_shape_cstr(s->ndim, s->dims), (long long)n);
        s->dims[infer] = n / known;
        known = n;
    }
    if (known != n)
        return nbi_error(NB_SHAPE_MISMATCH, "%s: shape %s is invalid for input of size %lld", op,
                         nbi_shape_cstr(s->ndim, s->dims), (long long)n);
    return nbi_check_shape(op, s->ndim, s->dims); /* [0, 2^40, 2^40]: numel 0, strides overflow */
}

/* Strides for viewing t as shape without a copy, or false when the strides do not allow it:
 * each run of t's dims that is contiguous in memory may be split or merged, nothing more. */
static bool view_strides(const nb_tensor *t, const nb_shape *s, int64_t *out)
{
    if (nbi_numel(t->ndim, t->shape) == 0 || t->ndim == 0) {
        nbi_contiguous_strides(s->ndim, s->dims, out);
        return true;
    }
    int32_t vd = s->ndim - 1;
    int64_t base = t->strides[t->ndim - 1], tn = 1, vn = 1;
    for (int32_t td = t->ndim - 1; td >= 0; td--) {
        tn *= t->shape[td];
        if (td == 0 || (t->shape[td - 1] != 1 && t->strides[td - 1] != tn * base)) {
            while (vd >= 0 && (vn < tn || s->dims[vd] == 1)) {
                out[vd] = vn * base;
                vn *= s->dims[vd];
                vd--;
            }
            if (vn != tn)
                return false;
            if (td > 0) {
                base = t->strides[td - 1];
                tn = vn = 1;
            }
        }
    }
    return vd == -1;
}

nb_tensor *nb_view(const nb_tensor *t, nb_shape s)
{
    VIEW_NULL_CHECK("view", t);
    if (infer_shape("view", t, &s) != NB_OK)
        return NULL;
    int64_t strides[NB_MAX_DIMS];
    if (!view_strides(t, &s, strides)) {
        nbi_error(NB_VIEW_STRIDES, "view: size %s is not compatible with the input's size %s and "
                  "stride %s (at least one dimension spans across two contiguous subspaces); "
                  "use nb_reshape instead", nbi_shape_cstr(s.ndim, s.dims), NBI_SHAPE_STR(t),
                  nbi_shape_cstr(t->ndim, t->strides));
        return NULL;
    }
    return NBI_API(make_view(t, s.ndim, s.dims, strides, t->offset, "ViewBackward0", bw_view,
                             NULL, 0));
}

nb_tensor *nb_reshape(const nb_tensor *t, nb_shape s)
{
    VIEW_NULL_CHECK("reshape", t);
    if (infer_shape("reshape", t, &s) != NB_OK)
        return NULL;
    int64_t strides[NB_MAX_DIMS];
    if (view_strides(t, &s, strides))
        return NBI_API(make_view(t, s.ndim, s.dims, strides, t->offset, "ViewBackward0", bw_view,
                                 NULL, 0));
    nbi_api_depth++;
    nb_tensor *c = nb_contiguous(t), *r = c ? nb_view(c, s) : NULL;
    nb_release(c);
    nbi_api_depth--;
    return NBI_API(r);
}

nb_tensor *nb_transpose(const nb_tensor *t, int32_t d0, int32_t d1)
{
    VIEW_NULL_CHECK("transpose", t);
    if (nbi_check_dim("transpose", t, &d0, false) != NB_OK ||
        nbi_check_dim("transpose", t, &d1, false) != NB_OK)
        return NULL;
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    memcpy(strides, t->strides, sizeof strides);
    if (t->ndim) {
        shape[d0] = t->shape[d1], shape[d1] = t->shape[d0];
        strides[d0] = t->strides[d1], strides[d1] = t->strides[d0];
    }
    int64_t p[2] = {d0, d1};
    return NBI_API(make_view(t, t->ndim, shape, strides, t->offset, "TransposeBackward0",
                             bw_transpose, p, 2));
}

nb_tensor *nb_t(const nb_tensor *t)
{
    VIEW_NULL_CHECK("t", t);
    if (t->ndim > 2) {
        nbi_error(NB_SHAPE_MISMATCH, "t: expects a tensor with <= 2 dimensions, but got %d",
                  t->ndim);
        return NULL;
    }
    nb_tensor *r = t->ndim < 2 ? nb_transpose(t, 0, 0) : nb_transpose(t, 0, 1);
    if (r && r->grad_fn)
        r->grad_fn->name = "TBackward0";
    return r;
}

nb_tensor *nb_permute(const nb_tensor *t, const int32_t *dims, int32_t n)
{
    VIEW_NULL_CHECK("permute", t);
    if (!dims && n) {
        nbi_error(NB_NULL_ARGUMENT, "permute: dims is NULL");
        return NULL;
    }
    if (n != t->ndim) {
        nbi_error(NB_INVALID_ARGUMENT, "permute: number of dims don't match (input has %d, "
                  "permutation has %d)", t->ndim, n);
        return NULL;
    }
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS], p[NB_MAX_DIMS];
    bool seen[NB_MAX_DIMS] = {0};
    for (int32_t k = 0; k < n; k++) {
        int32_t d = dims[k];
        if (nbi_check_dim("permute", t, &d, false) != NB_OK)
            return NULL;
        if (seen[d]) {
            nbi_error(NB_INVALID_ARGUMENT, "permute: dim %d appears more than once", d);
            return NULL;
        }
        seen[d] = true;
        p[k] = d;
        shape[k] = t->shape[d];
        strides[k] = t->strides[d];
    }
    return NBI_API(make_view(t, n, shape, strides, t->offset, "PermuteBackward0", bw_permute, p,
                             n));
}

static nb_tensor *reshape_view(const nb_tensor *t, int32_t ndim, const int64_t *shape,
                               const int64_t *strides, const char *name)
{
    return make_view(t, ndim, shape, strides, t->offset, name, bw_view, NULL, 0);
}

nb_tensor *nb_squeeze(const nb_tensor *t, int32_t dim)
{
    VIEW_NULL_CHECK("squeeze", t);
    if (nbi_check_dim("squeeze", t, &dim, false) != NB_OK)
        return NULL;
    if (t->ndim == 0 || t->shape[dim] != 1)
        return NBI_API(reshape_view(t, t->ndim, t->shape, t->strides,
                                    "SqueezeBackward1"));
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
    int32_t n = 0;
    for (int32_t d = 0; d < t->ndim; d++)
        if (d != dim) {
            shape[n] = t->shape[d];
            strides[n++] = t->strides[d];
        }
    return NBI_API(reshape_view(t, n, shape, strides, "SqueezeBackward1"));
}

nb_tensor *nb_squeeze_all(const nb_tensor *t)
{
    VIEW_NULL_CHECK("squeeze", t);
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
    int32_t n = 0;
    for (int32_t d = 0; d < t->ndim; d++)
        if (t->shape[d] != 1) {
            shape[n] = t->shape[d];
            strides[n++] = t->strides[d];
        }
    return NBI_API(reshape_view(t, n, shape, strides, "SqueezeBackward0"));
}

nb_tensor *nb_unsqueeze(const nb_tensor *t, int32_t dim)
{
    VIEW_NULL_CHECK("unsqueeze", t);
    if (nbi_check_dim("unsqueeze", t, &dim, true) != NB_OK)
        return NULL;
    if (t->ndim >= NB_MAX_DIMS) {
        nbi_error(NB_INVALID_ARGUMENT, "unsqueeze: a tensor has at most %d dims", NB_MAX_DIMS);
        return NULL;
    }
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
    for (int32_t d = 0, s = 0; d <= t->ndim; d++) {
        if (d == dim) {
            shape[d] = 1;
            /* any stride serves a size-1 dim; this one keeps the view contiguous */
            if (s >= t->ndim || __builtin_mul_overflow(t->strides[s], t->shape[s], &strides[d]) ||
                strides[d] > NBI_SPAN_MAX)
                strides[d] = 1;
        } else {
            shape[d] = t->shape[s];
            strides[d] = t->strides[s++];
        }
    }
    return NBI_API(reshape_view(t, t->ndim + 1, shape, strides,
                                "UnsqueezeBackward0"));
}

nb_tensor *nb_flatten(const nb_tensor *t, int32_t start, int32_t end)
{
    VIEW_NULL_CHECK("flatten", t);
    if (t->ndim == 0)
        return nb_reshape(t, NB_SHAPE(1));
    if (nbi_check_dim("flatten", t, &start, false) != NB_OK ||
        nbi_check_dim("flatten", t, &end, false) != NB_OK)
        return NULL;
    if (start > end) {
        nbi_error(NB_INVALID_ARGUMENT, "flatten: start_dim %d cannot come after end_dim %d",
                  start, end);
        return NULL;
    }
    nb_shape s = {.ndim = 0};
    for (int32_t d = 0; d < t->ndim; d++) {
        if (d > start && d <= end)
            s.dims[s.ndim - 1] *= t->shape[d];
        else
            s.dims[s.ndim++] = t->shape[d];
    }
    return nb_reshape(t, s);
}

nb_tensor *nb_expand(const nb_tensor *t, nb_shape s)
{
    VIEW_NULL_CHECK("expand", t);
    if (s.ndim < t->ndim || s.ndim > NB_MAX_DIMS) {
        nbi_error(NB_SHAPE_MISMATCH, "expand: the number of sizes provided (%d) must be greater "
                  "or equal to the number of dimensions in the tensor (%d)", s.ndim, t->ndim);
        return NULL;
    }
    int64_t strides[NB_MAX_DIMS];
    int32_t lead = s.ndim - t->ndim;
    for (int32_t d = 0; d < s.ndim; d++) {
        int32_t td = d - lead;
        if (td < 0) {
            if (s.dims[d] < 0) {
                nbi_error(NB_SHAPE_MISMATCH, "expand: -1 is not allowed in a leading, "
                          "non-existing dimension %d", d);
                return NULL;
            }
            strides[d] = 0;
            continue;
        }
        if (s.dims[d] == -1)
            s.dims[d] = t->shape[td];
        if (t->shape[td] == s.dims[d]) {
            strides[d] = t->strides[td];
        } else if (t->shape[td] == 1 && s.dims[d] >= 0) {
            strides[d] = 0;
        } else {
            nbi_error(NB_SHAPE_MISMATCH, "expand: the expanded size of the tensor (%lld) must "
                      "match the existing size (%lld) at non-singleton dimension %d; target "
                      "sizes %s, tensor sizes %s", (long long)s.dims[d], (long long)t->shape[td],
                      d, nbi_shape_cstr(s.ndim, s.dims), NBI_SHAPE_STR(t));
            return NULL;
        }
    }
    if (nbi_check_shape("expand", s.ndim, s.dims) != NB_OK)
        return NULL;
    return NBI_API(make_view(t, s.ndim, s.dims, strides, t->offset, "ExpandBackward0", bw_expand,
                             NULL, 0));
}

nb_tensor *nbi_expand_to(const nb_tensor *t, int32_t ndim, const int64_t *shape)
{
    nb_shape s = {.ndim = ndim};
    memcpy(s.dims, shape, (size_t)ndim * sizeof *shape);
    return nb_expand(t, s);
}

nb_tensor *nbi_slice_view(const nb_tensor *t, int32_t dim, int64_t start, int64_t len, int64_t step)
{
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    memcpy(strides, t->strides, sizeof strides);
    shape[dim] = len;
    int64_t off;
    if (__builtin_mul_overflow(t->strides[dim], step, &strides[dim]) ||
        strides[dim] > NBI_SPAN_MAX)
        strides[dim] = t->strides[dim]; /* only for len <= 1, as slice_impl checked */
    if (nbi_mul_i64("slice", "offset", start, t->strides[dim], &off) != NB_OK ||
        nbi_add_i64("slice", "offset", t->offset, off, &off) != NB_OK)
        return NULL;
    return nbi_tensor_view(t, t->ndim, shape, strides, off);
}

static nb_tensor *slice_impl(const char *op, const nb_tensor *t, int32_t dim, int64_t start,
                             int64_t end, int64_t step, bool select)
{
    if (t->ndim == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: cannot be applied to a 0-dim tensor", op);
        return NULL;
    }
    if (nbi_check_dim(op, t, &dim, false) != NB_OK)
        return NULL;
    if (step <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: step must be positive, got %lld", op, (long long)step);
        return NULL;
    }
    int64_t size = t->shape[dim];
    if (start < 0)
        start += size;
    if (end < 0)
        end += size;
    start = start < 0 ? 0 : start > size ? size : start;
    end = end < start ? start : end > size ? size : end;
    int64_t len = (end - start) / step + ((end - start) % step != 0); /* no overflow near 2^63 */
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    memcpy(strides, t->strides, sizeof strides);
    shape[dim] = len;
    /* a step beyond the size leaves one element, whose stride does not matter */
    if (__builtin_mul_overflow(t->strides[dim], step, &strides[dim]) ||
        strides[dim] > NBI_SPAN_MAX) {
        if (len > 1) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: stride %lld * step %lld overflows int64", op,
                      (long long)t->strides[dim], (long long)step);
            return NULL;
        }
        strides[dim] = t->strides[dim];
    }
    int64_t params[5] = {dim, start, step, len, select};
    int64_t off;
    if (nbi_mul_i64(op, "offset", start, t->strides[dim], &off) != NB_OK ||
        nbi_add_i64(op, "offset", t->offset, off, &off) != NB_OK)
        return NULL;
    if (!select)
        return make_view(t, t->ndim, shape, strides, off, "SliceBackward0", bw_slice, params, 5);
    for (int32_t d = dim; d + 1 < t->ndim; d++) {
        shape[d] = shape[d + 1];
        strides[d] = strides[d + 1];
    }
    return make_view(t, t->ndim - 1, shape, strides, off, "SelectBackward0", bw_slice, params, 5);
}

nb_tensor *nb_narrow(const nb_tensor *t, int32_t dim, int64_t start, int64_t length)
{
    VIEW_NULL_CHECK("narrow", t);
    if (t->ndim == 0 || nbi_check_dim("narrow", t, &dim, false) != NB_OK) {
        if (!nbi_error_pending())
            nbi_error(NB_SHAPE_MISMATCH, "narrow: cannot be applied to a 0-dim tensor");
        return NULL;
    }
    int64_t size = t->shape[dim];
    if (start < 0)
        start += size;
    if (start < 0 || start > size || length < 0 || length > size - start) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "narrow: start %lld + length %lld exceeds dimension %d "
                  "of size %lld", (long long)start, (long long)length, dim, (long long)size);
        return NULL;
    }
    return NBI_API(slice_impl("narrow", t, dim, start, start + length, 1, false));
}

nb_tensor *nb_slice(const nb_tensor *t, int32_t dim, int64_t start, int64_t end, int64_t step)
{
    VIEW_NULL_CHECK("slice", t);
    return NBI_API(slice_impl("slice", t, dim, start, end, step, false));
}

nb_tensor *nb_select(const nb_tensor *t, int32_t dim, int64_t index)
{
    VIEW_NULL_CHECK("select", t);
    if (t->ndim == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "select: cannot be applied to a 0-dim tensor");
        return NULL;
    }
    if (nbi_check_dim("select", t, &dim, false) != NB_OK)
        return NULL;
    int64_t size = t->shape[dim];
    if (index < -size || index >= size) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "select: index %lld out of range for tensor of size %s "
                  "at dimension %d", (long long)index, NBI_SHAPE_STR(t), dim);
        return NULL;
    }
    if (index < 0)
        index += size;
    return NBI_API(slice_impl("select", t, dim, index, index + 1, 1, true));
}

nb_tensor *nb_detach(const nb_tensor *t)
{
    VIEW_NULL_CHECK("detach", t);
    return NBI_API(nbi_tensor_alias(t));
}
