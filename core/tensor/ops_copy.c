/* ops_copy.c - casts and copies: to_dtype, clone, contiguous, the graph of to(device), and
 * copy_ between dtypes and devices. */
#include "ops_internal.h"

static nb_status bw_to_copy(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    (void)node;
    gi[0] = nb_retain(g); /* the engine casts it back to the input's dtype */
    return NB_OK;
}

static nb_tensor *record_copy(nb_tensor *out, const nb_tensor *src, const char *name)
{
    nb_tensor *in[1] = {(nb_tensor *)src};
    if (out)
        nbi_record(out, name, bw_to_copy, in, 1);
    return out;
}

nb_tensor *nb_to_dtype(const nb_tensor *t, nb_dtype dtype)
{
    NBI_NULL_CHECK("to_dtype", t);
    if ((unsigned)dtype >= NB_DTYPE_COUNT) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "to_dtype: invalid dtype %d", (int)dtype);
        return NULL;
    }
    if (dtype == t->dtype)
        return NBI_API(nb_retain((nb_tensor *)t));
    nb_tensor *r = nbi_cast(t, dtype);
    if (r && nb_dtype_is_float(dtype))
        record_copy(r, t, "ToCopyBackward0");
    return NBI_API(r);
}

nb_tensor *nb_clone(const nb_tensor *t)
{
    NBI_NULL_CHECK("clone", t);
    return NBI_API(record_copy(nbi_cast(t, t->dtype), t, "CloneBackward0"));
}

nb_tensor *nb_contiguous(const nb_tensor *t)
{
    NBI_NULL_CHECK("contiguous", t);
    if (nbi_is_contiguous(t))
        return NBI_API(nb_retain((nb_tensor *)t));
    return NBI_API(record_copy(nbi_cast(t, t->dtype), t, "CloneBackward0"));
}

/* to(device) keeps the graph: the gradient flows back to the source device. */
static nb_status bw_to_device(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, src);
    gi[0] = nb_to_device(g, src->storage->device->name);
    return done(gi, 1);
}

nb_tensor *nbi_to_device_graph(const nb_tensor *t, nb_tensor *moved)
{
    if (moved && moved != t) {
        nb_tensor *in[1] = {(nb_tensor *)t};
        nbi_node *node = nbi_record(moved, "ToCopyBackward0", bw_to_device, in, 1);
        if (node)
            nbi_save_detached(node, t);
    }
    return moved;
}

/* PyTorch's CopyBackwards: nothing flows to the overwritten values, the source gets the
 * gradient back on its own device (the engine undoes broadcasting and casts its dtype). */
static nb_status bw_copy(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    gi[0] = node->next[0] ? nb_zeros_like(g) : NULL;
    if (node->next[1])
        gi[1] = g->storage->device == node->src_device ? nb_retain(g)
                                                       : nb_to_device(g, node->src_device->name);
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

/* raw: a data write with no autograd at all (copy_from_host, internal fills). */
static nb_status copy_impl(nb_tensor *dst, const nb_tensor *src, bool raw)
{
    if (!dst || !src)
        return nbi_error(NB_NULL_ARGUMENT, "copy_: destination or source is NULL");
    int32_t n = 0; /* set by broadcast_shapes; GCC 12 warns once that is inlined here */
    int64_t shape[NB_MAX_DIMS];
    if (broadcast_shapes("copy_", dst, src, &n, shape) != NB_OK)
        return nb_last_status();
    if (!same_shape(dst, n, shape))
        return nbi_error(NB_SHAPE_MISMATCH, "copy_: source %s cannot be broadcast to destination "
                         "%s", NBI_SHAPE_STR(src), NBI_SHAPE_STR(dst));
    if (!raw && nbi_check_inplace("copy_", dst) != NB_OK)
        return nb_last_status();
    nb_tensor *ds[2] = {dst, (nb_tensor *)src};
    bool grad = !raw && nbi_grad_needed(ds, 2);
    bool prev = nb_set_grad_enabled(false); /* the move itself is not recorded */
    nb_tensor *s = src->storage->device == dst->storage->device
                       ? nb_retain((nb_tensor *)src)
                       : nb_to_device(src, dst->storage->device->name);
    nb_set_grad_enabled(prev);
    if (!s)
        return nb_last_status();
    nb_tensor *into = grad ? nbi_tensor_new(dst->storage->device, dst->dtype, dst->ndim,
                                            dst->shape)
                           : nb_retain(dst);
    nb_tensor ss, *in[1] = {&ss};
    shadow(&ss, s, n, shape);
    nb_status st = !into ? nb_last_status()
                 : numel(dst) ? nbi_launch(NBI_OP_copy, dst->dtype, into, in, 1, NULL, 0, NULL, 0)
                              : NB_OK;
    nb_release(s);
    if (st != NB_OK) {
        nb_release(into);
        return st;
    }
    if (!grad) {
        nb_release(into);
        nbi_bump_version(dst);
        return NB_OK;
    }
    nbi_node *node = nbi_record(into, "CopyBackwards", bw_copy, ds, 2);
    if (!node) {
        nb_release(into);
        return nb_last_status();
    }
    node->src_device = src->storage->device;
    return nbi_inplace_commit("copy_", dst, into);
}

nb_status nbi_copy_raw(nb_tensor *dst, const nb_tensor *src) { return copy_impl(dst, src, true); }

nb_status nb_tensor_copy_(nb_tensor *dst, const nb_tensor *src)
{
    return NBI_API_CALL(copy_impl(dst, src, false));
}

