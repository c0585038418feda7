/* autograd_inplace.c - in-place writes and views in the graph: PyTorch's rebase_history,
 * CopySlices and the regeneration of a view's grad_fn when its base's history changed. */
#include "nabla_internal.h"

#include <string.h>

/* ---- in-place writes and views (PyTorch's rebase_history, CopySlices, view regeneration) ----
 *
 * A view and its root base share storage, version counter and history. An in-place op computes
 * its result out of place (recording its node N there), writes it into the destination and
 * moves N onto the destination: a tensor that is not a view takes N as its grad_fn; a view
 * makes its base's grad_fn CopySlices(base's old history, N). Every view of that base then
 * regenerates its grad_fn as AsStridedBackward0 of the base's new one when next used. */

static void geom_of(const nb_tensor *t, nbi_geom *g)
{
    g->ndim = t->ndim;
    memcpy(g->shape, t->shape, sizeof g->shape);
    memcpy(g->strides, t->strides, sizeof g->strides);
    g->offset = t->offset;
}

static bool geom_overlaps(const nbi_geom *g)
{
    for (int32_t d = 0; d < g->ndim; d++)
        if (g->strides[d] == 0 && g->shape[d] > 1)
            return true;
    return false;
}

static bool same_strides(const nb_tensor *t, const nbi_geom *g)
{
    for (int32_t d = 0; d < g->ndim; d++)
        if (g->shape[d] != 1 && t->strides[d] != g->strides[d])
            return false;
    return true;
}

/* An uninitialised tensor of b's shape laid out with b's strides (b does not overlap). */
static nb_tensor *new_in_layout(const nbi_geom *b, nb_dtype dtype, nbi_device *dev)
{
    int64_t contig[NB_MAX_DIMS], extent = 1;
    nbi_contiguous_strides(b->ndim, b->shape, contig);
    bool is_contig = true;
    for (int32_t d = 0; d < b->ndim; d++) {
        if (b->shape[d] == 0)
            extent = 0;
        if (b->shape[d] != 1 && b->strides[d] != contig[d])
            is_contig = false;
    }
    if (is_contig || extent == 0)
        return nbi_tensor_new(dev, dtype, b->ndim, b->shape);
    for (int32_t d = 0; d < b->ndim; d++)
        extent += (b->shape[d] - 1) * b->strides[d];
    nb_tensor *flat = nbi_tensor_new(dev, dtype, 1, &extent);
    nb_tensor *t = flat ? nbi_tensor_view(flat, b->ndim, b->shape, b->strides, 0) : NULL;
    nb_release(flat);
    return t;
}

static nb_tensor *zeros_in_layout(const nbi_geom *b, nb_dtype dtype, nbi_device *dev)
{
    nb_tensor *z = new_in_layout(b, dtype, dev);
    double f[1] = {0};
    if (z && nbi_numel(z->ndim, z->shape) &&
        nbi_launch(NBI_OP_fill, dtype, z, NULL, 0, f, 1, NULL, 0) != NB_OK) {
        nb_release(z);
        return NULL;
    }
    return z;
}

/* g (of the base's shape) as a tensor with the base's strides; copy says always a fresh one. */
static nb_tensor *relayout(const nb_tensor *g, const nbi_geom *b, bool copy)
{
    if (!copy && same_strides(g, b))
        return nb_retain((nb_tensor *)g);
    nb_tensor *t = new_in_layout(b, g->dtype, g->storage->device);
    if (t && nb_tensor_copy_(t, g) != NB_OK) { /* differentiable: create_graph keeps the graph */
        nb_release(t);
        return NULL;
    }
    return t;
}

static nb_status bw_as_strided(nbi_node *node, nb_tensor *g, nb_tensor **gi);

static nbi_geom *geom_pair(const nbi_geom *base, const nbi_geom *view)
{
    nbi_geom *p = nbi_malloc(2 * sizeof *p);
    if (!p) {
        nbi_error(NB_OUT_OF_MEMORY, "autograd: out of memory for a view's geometry");
        return NULL;
    }
    p[0] = *base;
    p[1] = *view;
    return p;
}

/* The region `view` of src, where src has the shape of `base`: a differentiable view. */
static nb_tensor *as_strided_view(const nb_tensor *src, const nbi_geom *base, const nbi_geom *view)
{
    nb_tensor *s = relayout(src, base, false);
    nb_tensor *v = s ? nbi_tensor_view(s, view->ndim, view->shape, view->strides,
                                       s->offset + view->offset - base->offset)
                     : NULL;
    nbi_node *n = v ? nbi_record(v, "AsStridedBackward0", bw_as_strided, &s, 1) : NULL;
    if (n && !(n->geom = geom_pair(base, view))) {
        nb_release(v);
        v = NULL;
    }
    if (v)
        nbi_view_track(v, s);
    nb_release(s);
    return v;
}

/* The gradient of a view lands in its region of a zero tensor laid out like the base; a view
 * that repeats elements (stride 0) sums over the repeats first. */
static nb_status bw_as_strided(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    const nbi_geom *b = &node->geom[0];
    nbi_geom v = node->geom[1];
    int32_t dims[NB_MAX_DIMS], nd = 0;
    for (int32_t d = 0; d < v.ndim; d++)
        if (v.strides[d] == 0 && v.shape[d] > 1) {
            dims[nd++] = d;
            v.shape[d] = 1;
        }
    nb_tensor *gs = nd ? nb_sum(g, dims, nd, true) : nb_retain(g);
    nb_tensor *z = gs ? zeros_in_layout(b, g->dtype, g->storage->device) : NULL;
    nb_tensor *r = z ? as_strided_view(z, b, &v) : NULL;
    nb_status st = r ? nb_tensor_copy_(r, gs) : nb_last_status();
    nb_release(gs);
    nb_release(r);
    if (st != NB_OK) {
        nb_release(z);
        return st;
    }
    gi[0] = z;
    return NB_OK;
}

/* The base's gradient: outside the written region to its old history (edge 0), inside to the
 * in-place op's node (edge 1), whose input edge leads back to the old history as a view. */
static nb_status bw_copy_slices(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    const nbi_geom *b = &node->geom[0], *v = &node->geom[1];
    if (node->next[1] && !(gi[1] = as_strided_view(g, b, v)))
        return nb_last_status();
    if (node->next[0]) {
        nb_tensor *c = relayout(g, b, true), *r = c ? as_strided_view(c, b, v) : NULL;
        nb_status st = r ? nb_zero_(r) : nb_last_status();
        nb_release(r);
        if (st != NB_OK) {
            nb_release(c);
            return st;
        }
        gi[0] = c;
    }
    return NB_OK;
}

void nbi_view_track(nb_tensor *v, const nb_tensor *t)
{
    if (!v || !t)
        return;
    nb_tensor *root = t->view_base ? t->view_base : (nb_tensor *)t;
    nb_release(v->view_base);
    v->view_base = nb_retain(root);
    v->view_no_grad = !nb_is_grad_enabled() || t->view_no_grad;
    v->view_seen = root->grad_fn;
}

void nbi_view_refresh(nb_tensor *t)
{
    nb_tensor *b = t ? t->view_base : NULL;
    if (!b || t->view_no_grad || b->grad_fn == t->view_seen)
        return;
    nbi_geom bg, vg;
    geom_of(b, &bg);
    geom_of(t, &vg);
    if (!b->grad_fn || geom_overlaps(&bg)) { /* nothing to regenerate from */
        t->view_seen = b->grad_fn;
        return;
    }
    nbi_node *n = nbi_node_new("AsStridedBackward0", bw_as_strided, 1);
    if (!n || !(n->geom = geom_pair(&bg, &vg))) {
        nbi_node_release(n);
        return; /* out of memory: the error is set and the old grad_fn stays */
    }
    n->next[0] = nbi_node_retain(b->grad_fn);
    n->in_shape[0] = nb_tensor_shape(b);
    n->in_dtype[0] = b->dtype;
    nbi_node *old = t->grad_fn;
    if (old && old->retain == t) {
        old->retain = NULL;
        n->retain = t;
    }
    t->grad_fn = n;
    t->requires_grad = true;
    t->view_seen = b->grad_fn;
    nbi_node_release(old);
}

nb_status nbi_check_inplace(const char *op, nb_tensor *t)
{
    for (int32_t d = 0; d < t->ndim; d++)
        if (t->strides[d] == 0 && t->shape[d] > 1)
            return nbi_error(NB_INVALID_ARGUMENT, "%s: unsupported operation: more than one "
                             "element of the written-to tensor refers to a single memory "
                             "location. Please clone() the tensor before performing the "
                             "operation. (shape %s, strides %s)", op, NBI_SHAPE_STR(t),
                             nbi_shape_cstr(t->ndim, t->strides));
    if (!nb_is_grad_enabled())
        return NB_OK;
    nbi_view_refresh(t);
    nb_tensor *b = t->view_base;
    if (b && b->requires_grad && !b->grad_fn)
        return nbi_error(NB_AUTOGRAD, "%s: a view of a leaf Variable that requires grad is "
                         "being used in an in-place operation (wrap it in "
                         "nb_no_grad_begin/end)", op);
    if (t->requires_grad && !t->grad_fn)
        return nbi_error(NB_AUTOGRAD, "%s: a leaf Variable that requires grad is being used in "
                         "an in-place operation (wrap it in nb_no_grad_begin/end)", op);
    return NB_OK;
}

static nb_status rebase(nb_tensor *a, nbi_node *n)
{
    if (!a->view_base) {
        nbi_node *old = a->grad_fn;
        if (old && old->retain == a) {
            old->retain = NULL;
            n->retain = a;
        }
        a->grad_fn = n;
        a->requires_grad = true;
        nbi_node_release(old);
        return NB_OK;
    }
    nb_tensor *b = a->view_base;
    nbi_geom bg, vg;
    geom_of(b, &bg);
    geom_of(a, &vg);
    nbi_node *cs = nbi_node_new("CopySlices", bw_copy_slices, 2);
    if (!cs || !(cs->geom = geom_pair(&bg, &vg))) {
        nbi_node_release(cs);
        nbi_node_release(n);
        return nb_last_status();
    }
    cs->next[0] = nbi_edge_of(b);
    cs->in_shape[0] = nb_tensor_shape(b);
    cs->in_dtype[0] = b->dtype;
    cs->next[1] = n;
    cs->in_shape[1] = nb_tensor_shape(a);
    cs->in_dtype[1] = a->dtype;
    nbi_node *old = b->grad_fn;
    if (old && old->retain == b) {
        old->retain = NULL;
        cs->retain = b;
    }
    b->grad_fn = cs;
    b->requires_grad = true;
    nbi_node_release(old);
    nbi_view_refresh(a);
    return NB_OK;
}

nb_status nbi_inplace_commit(const char *op, nb_tensor *a, nb_tensor *r)
{
    if (!r)
        return nb_last_status();
    if (r == a) { /* computed in place: no graph */
        nb_release(r);
        nbi_bump_version(a);
        return NB_OK;
    }
    nbi_node *n = r->grad_fn;
    nb_status st = NB_OK;
    if (r->ndim != a->ndim || memcmp(r->shape, a->shape, (size_t)a->ndim * sizeof *a->shape))
        st = nbi_error(NB_SHAPE_MISMATCH, "%s: output with shape %s doesn't match the broadcast "
                       "shape %s", op, NBI_SHAPE_STR(a), NBI_SHAPE_STR(r));
    if (st == NB_OK && ((nb_dtype_is_float(r->dtype) && !nb_dtype_is_float(a->dtype)) ||
                        (a->dtype == NB_DTYPE_BOOL && r->dtype != NB_DTYPE_BOOL)))
        st = nbi_error(NB_DTYPE_UNSUPPORTED, "%s: result type %s can't be cast to the desired "
                       "output type %s", op, nb_dtype_name(r->dtype), nb_dtype_name(a->dtype));
    if (st == NB_OK && n && a->view_no_grad)
        st = nbi_error(NB_AUTOGRAD, "%s: a view was created in no_grad mode and is being "
                       "modified inplace with grad mode enabled; move both the view and the "
                       "in-place op inside the no_grad block, or both outside it", op);
    nbi_geom bg;
    if (st == NB_OK && n && a->view_base && (geom_of(a->view_base, &bg), geom_overlaps(&bg)))
        st = nbi_error(NB_AUTOGRAD, "%s: in-place write with autograd through a view of a "
                       "tensor whose elements overlap (shape %s, strides %s)", op,
                       NBI_SHAPE_STR(a->view_base),
                       nbi_shape_cstr(a->view_base->ndim, a->view_base->strides));
    /* the op's node may have saved the values this write overwrites: keep copies instead
     * (PyTorch's original_self), so backward neither fails nor keeps a cycle through a */
    for (int32_t k = 0; st == NB_OK && n && k < n->n_saved; k++) {
        nb_tensor *s = n->saved[k];
        if (!s || n->saved_is_output[k] || s->storage != a->storage)
            continue;
        nb_tensor *c = nb_clone(s);
        if (!c) {
            st = nb_last_status();
            break;
        }
        nb_release(s);
        n->saved[k] = c;
        n->saved_version[k] = c->storage->version;
    }
    if (st == NB_OK && nbi_numel(a->ndim, a->shape)) {
        nb_tensor *in[1] = {r};
        st = nbi_launch(NBI_OP_copy, a->dtype, a, in, 1, NULL, 0, NULL, 0);
    }
    if (st == NB_OK) {
        nbi_bump_version(a);
        /* an output the node saved is now a's data: save a itself at its new version, as
         * PyTorch does (so a later in-place change of a is caught, and r's memory is freed) */
        for (int32_t k = 0; n && k < n->n_saved; k++) {
            nb_tensor *s = n->saved[k];
            if (!s || !n->saved_is_output[k] || s->storage != r->storage || s->dtype != a->dtype)
                continue;
            nb_tensor *alias = nbi_tensor_alias(a);
            if (!alias)
                continue; /* out of memory: keep the copy, still correct */
            nb_release(s);
            n->saved[k] = alias;
            n->saved_version[k] = alias->storage->version;
        }
        if (n) {
            r->grad_fn = NULL;
            st = rebase(a, n);
        }
    }
    nb_release(r);
    return st;
}

