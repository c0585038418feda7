/* autograd.c - reverse-mode autograd: graph nodes, the engine (backward and grad), grad mode,
 * hooks, custom functions and gradcheck. Everything is written with ops, so it runs on every
 * device and can differentiate its own backward (create_graph). */
#include "nabla_internal.h"

#include <math.h>
#include <string.h>

/* ---- grad mode (thread-local) ---- */

static _Thread_local bool grad_disabled;
static _Thread_local bool no_grad_stack[64];
static _Thread_local int no_grad_depth;

bool nb_is_grad_enabled(void) { return !grad_disabled; }

bool nb_set_grad_enabled(bool enabled)
{
    bool prev = !grad_disabled;
    grad_disabled = !enabled;
    return prev;
}

void nb_no_grad_begin(void)
{
    if (no_grad_depth < (int)(sizeof no_grad_stack / sizeof *no_grad_stack))
        no_grad_stack[no_grad_depth] = grad_disabled;
    no_grad_depth++;
    grad_disabled = true;
}

void nb_no_grad_end(void)
{
    if (no_grad_depth == 0) {
        nbi_error(NB_STATE, "nb_no_grad_end: no matching nb_no_grad_begin");
        return;
    }
    no_grad_depth--;
    if (no_grad_depth < (int)(sizeof no_grad_stack / sizeof *no_grad_stack))
        grad_disabled = no_grad_stack[no_grad_depth];
}

/* ---- hooks ---- */

struct nbi_hook {
    nb_grad_hook_fn fn;
    void *ctx;
    nbi_hook *next;
};

static void hooks_free(nbi_hook *h)
{
    while (h) {
        nbi_hook *next = h->next;
        nbi_free(h);
        h = next;
    }
}

/* Post-accumulate-grad hooks: run on a leaf once its .grad holds this backward's gradient. */
typedef struct nbi_post_hook {
    nb_post_accumulate_grad_hook_fn fn;
    void *ctx;
    struct nbi_post_hook *next;
} nbi_post_hook;

static void post_hooks_free(nbi_post_hook *h)
{
    while (h) {
        nbi_post_hook *next = h->next;
        nbi_free(h);
        h = next;
    }
}

static nb_status run_post_hooks(nb_tensor *leaf)
{
    nb_status st = NB_OK;
    for (nbi_post_hook *h = leaf->post_hooks; h && st == NB_OK; h = h->next) {
        nbi_user_call saved = nbi_call_user_begin();
        st = h->fn(leaf, h->ctx);
        nbi_call_user_end(saved);
        if (st != NB_OK && nb_last_status() != st) /* a hook that set no message of its own */
            nbi_error(st, "post-accumulate-grad hook returned '%s'", nb_status_str(st));
    }
    return st;
}

nb_status nb_tensor_register_post_accumulate_grad_hook(nb_tensor *t,
                                                       nb_post_accumulate_grad_hook_fn fn,
                                                       void *ctx)
{
    if (!t || !fn)
        return nbi_error(NB_NULL_ARGUMENT, "register_post_accumulate_grad_hook: tensor or hook "
                         "is NULL");
    if (!t->requires_grad || t->grad_fn)
        return nbi_error(NB_AUTOGRAD, "register_post_accumulate_grad_hook: only leaf tensors "
                         "that require grad accumulate a .grad");
    nbi_post_hook *h = nbi_malloc(sizeof *h), **list = &t->post_hooks;
    if (!h)
        return nbi_error(NB_OUT_OF_MEMORY, "register_post_accumulate_grad_hook: out of memory");
    *h = (nbi_post_hook){.fn = fn, .ctx = ctx};
    while (*list)
        list = &(*list)->next;
    *list = h;
    return NB_OK;
}

nb_status nb_tensor_remove_post_accumulate_grad_hook(nb_tensor *t,
                                                     nb_post_accumulate_grad_hook_fn fn,
                                                     void *ctx)
{
    if (!t || !fn)
        return nbi_error(NB_NULL_ARGUMENT, "remove_post_accumulate_grad_hook: tensor or hook is "
                         "NULL");
    for (nbi_post_hook **p = &t->post_hooks; *p; p = &(*p)->next)
        if ((*p)->fn == fn && (*p)->ctx == ctx) {
            nbi_post_hook *h = *p;
            *p = h->next;
            nbi_free(h);
            return NB_OK;
        }
    return nbi_error(NB_INVALID_ARGUMENT, "remove_post_accumulate_grad_hook: no such hook on "
                     "this tensor");
}

/* ---- nodes ---- */

static nbi_node *node_new(const char *name, nbi_backward_fn bw, int32_t n_in)
{
    size_t extra = (size_t)n_in * (sizeof(nbi_node *) + sizeof(nb_shape) + sizeof(nb_dtype));
    nbi_node *n = nbi_calloc(1, sizeof *n + extra);
    if (!n) {
        nbi_error(NB_OUT_OF_MEMORY, "autograd: out of memory for a graph node");
        return NULL;
    }
    atomic_store_explicit(&n->refcount, 1, memory_order_relaxed);
    n->name = name;
    n->backward = bw;
    n->n_in = n_in;
    n->next = (nbi_node **)(n + 1);
    n->in_shape = (nb_shape *)(n->next + n_in);
    n->in_dtype = (nb_dtype *)(n->in_shape + n_in);
    return n;
}

static nbi_node *node_retain(nbi_node *n)
{
    if (n)
        atomic_fetch_add_explicit(&n->refcount, 1, memory_order_relaxed);
    return n;
}

/* Outputs unpacked with this node as their grad_fn live for one call of its backward only:
 * kept longer they would hold the node alive through itself. */
static void release_unpacked(nbi_node *n)
{
    for (int32_t k = 0; k < n->n_saved; k++) {
        nb_release(n->unpacked[k]);
        n->unpacked[k] = NULL;
    }
}

static void release_saved(nbi_node *n)
{
    release_unpacked(n);
    for (int32_t k = 0; k < n->n_saved; k++) {
        nb_release(n->saved[k]);
        n->saved[k] = NULL;
    }
}

/* Iterative, so that a long chain of nodes (a loop of 10,000 ops) cannot overflow the stack. */
void nbi_node_release(nbi_node *n)
{
    nbi_node *stack_buf[64], **stack = stack_buf;
    size_t sp = 0, cap = 64;
    if (n)
        stack[sp++] = n;
    while (sp) {
        nbi_node *x = stack[--sp];
        if (atomic_fetch_sub_explicit(&x->refcount, 1, memory_order_acq_rel) != 1)
            continue;
        for (int32_t k = 0; k < x->n_in; k++) {
            if (!x->next[k])
                continue;
            if (sp == cap) {
                size_t ncap = cap * 2;
                nbi_node **g = nbi_malloc(ncap * sizeof *g);
                if (!g) { /* cannot grow: release this edge recursively instead */
                    nbi_node_release(x->next[k]);
                    continue;
                }
                memcpy(g, stack, sp * sizeof *g);
                if (stack != stack_buf)
                    nbi_free(stack);
                stack = g;
                cap = ncap;
            }
            stack[sp++] = x->next[k];
        }
        release_saved(x);
        if (x->leaf) {
            x->leaf->grad_acc = NULL;
            nb_release(x->leaf);
        }
        if (x->fn && x->fn->free_ctx)
            x->fn->free_ctx(x->ctx);
        nb_release(x->buf);
        hooks_free(x->hooks);
        nbi_free(x->geom);
        nbi_free(x);
    }
    if (stack != stack_buf)
        nbi_free(stack);
}

void nbi_tensor_autograd_release(nb_tensor *t)
{
    if (t->grad_fn) {
        if (t->grad_fn->retain == t)
            t->grad_fn->retain = NULL;
        nbi_node_release(t->grad_fn);
        t->grad_fn = NULL;
    }
    nb_release(t->grad);
    t->grad = NULL;
    hooks_free(t->hooks);
    t->hooks = NULL;
    post_hooks_free(t->post_hooks);
    t->post_hooks = NULL;
    nb_release(t->view_base);
    t->view_base = NULL;
}

/* The edge into a tensor's history: its grad_fn, or the AccumulateGrad node of a leaf. */
static nbi_node *edge_of(nb_tensor *t)
{
    nbi_view_refresh(t);
    if (!t || !t->requires_grad)
        return NULL;
    if (t->grad_fn)
        return node_retain(t->grad_fn);
    if (t->grad_acc)
        return node_retain(t->grad_acc);
    nbi_node *acc = node_new("AccumulateGrad", NULL, 0);
    if (!acc)
        return NULL;
    acc->leaf = nb_retain(t);
    t->grad_acc = acc; /* weak: the node keeps the leaf alive, not the other way round */
    return acc;
}

bool nbi_grad_needed(nb_tensor *const *inputs, int32_t n)
{
    if (grad_disabled)
        return false;
    for (int32_t k = 0; k < n; k++) {
        nbi_view_refresh(inputs[k]);
        if (inputs[k] && inputs[k]->requires_grad)
            return true;
    }
    return false;
}

nbi_node *nbi_record(nb_tensor *out, const char *name, nbi_backward_fn bw,
                     nb_tensor *const *inputs, int32_t n)
{
    if (!out || !nbi_grad_needed(inputs, n))
        return NULL;
    nbi_node *node = node_new(name, bw, n);
    if (!node)
        return NULL;
    for (int32_t k = 0; k < n; k++) {
        if (!inputs[k])
            continue;
        node->next[k] = edge_of(inputs[k]);
        node->in_shape[k] = nb_tensor_shape(inputs[k]);
        node->in_dtype[k] = inputs[k]->dtype;
    }
    if (out->grad_fn)
        nbi_node_release(out->grad_fn);
    out->grad_fn = node;
    out->requires_grad = true;
    return node;
}

void nbi_save(nbi_node *node, const nb_tensor *t)
{
    if (!node || node->n_saved >= NBI_MAX_SAVED)
        return;
    node->saved_version[node->n_saved] = t ? t->storage->version : 0;
    node->saved[node->n_saved++] = nb_retain((nb_tensor *)t);
}

void nbi_save_detached(nbi_node *node, const nb_tensor *t)
{
    if (!node || node->n_saved >= NBI_MAX_SAVED)
        return;
    node->saved_version[node->n_saved] = t ? t->storage->version : 0;
    node->saved[node->n_saved++] = t ? nbi_tensor_alias(t) : NULL;
}

void nbi_save_output(nbi_node *node, const nb_tensor *out)
{
    if (!node || node->n_saved >= NBI_MAX_SAVED)
        return;
    node->saved_is_output[node->n_saved] = true;
    nbi_save_detached(node, out);
}

static const char retain_graph_msg[] =
    "Trying to backward through the graph a second time (or directly access saved tensors after "
    "they have already been freed). Saved intermediate values of the graph are freed when you "
    "call .backward() or autograd.grad(). Specify retain_graph=True if you need to backward "
    "through the graph a second time or if you need to access saved tensors after calling "
    "backward.";

nb_status nbi_saved(nbi_node *node, int32_t k, nb_tensor **t)
{
    if (k >= node->n_saved) { /* the rule did not save this one */
        *t = NULL;
        return NB_OK;
    }
    if (node->released)
        return nbi_error(NB_AUTOGRAD, "%s", retain_graph_msg);
    nb_tensor *s = node->saved[k];
    if (!s) /* nbi_save_detached ran out of memory when the op was recorded */
        return nbi_error(NB_OUT_OF_MEMORY, "%s: saved tensor %d could not be kept (out of "
                         "memory when the graph was built)", node->name, k);
    if (s->storage->version != node->saved_version[k])
        return nbi_error(NB_AUTOGRAD, "one of the variables needed for gradient computation has "
                         "been modified by an inplace operation: [%s %s] is at version %lld; "
                         "expected version %lld instead (in %s)", nb_dtype_name(s->dtype),
                         NBI_SHAPE_STR(s), (long long)s->storage->version,
                         (long long)node->saved_version[k], node->name);
    if (node->saved_is_output[k] && !grad_disabled) { /* create_graph: y = f(x) has a graph */
        if (!node->unpacked[k]) {
            nb_tensor *u = nbi_tensor_alias(s);
            if (!u)
                return nb_last_status();
            u->grad_fn = node_retain(node);
            u->requires_grad = true;
            node->unpacked[k] = u;
        }
        s = node->unpacked[k];
    }
    *t = s;
    return NB_OK;
}


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
    v->view_no_grad = grad_disabled || t->view_no_grad;
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
    nbi_node *n = node_new("AsStridedBackward0", bw_as_strided, 1);
    if (!n || !(n->geom = geom_pair(&bg, &vg))) {
        nbi_node_release(n);
        return; /* out of memory: the error is set and the old grad_fn stays */
    }
    n->next[0] = node_retain(b->grad_fn);
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
    if (grad_disabled)
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
    nbi_node *cs = node_new("CopySlices", bw_copy_slices, 2);
    if (!cs || !(cs->geom = geom_pair(&bg, &vg))) {
        nbi_node_release(cs);
        nbi_node_release(n);
        return nb_last_status();
    }
    cs->next[0] = edge_of(b);
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

/* ---- tensor-level autograd API ---- */

bool nb_tensor_requires_grad(const nb_tensor *t)
{
    nbi_view_refresh((nb_tensor *)t);
    return t && t->requires_grad;
}

bool nb_tensor_is_leaf(const nb_tensor *t)
{
    nbi_view_refresh((nb_tensor *)t);
    return t && !t->grad_fn;
}

nb_status nb_tensor_set_requires_grad(nb_tensor *t, bool rg)
{
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "set_requires_grad: tensor is NULL");
    if (t->grad_fn) {
        if (rg)
            return NB_OK;
        return nbi_error(NB_AUTOGRAD, "set_requires_grad: you can only change requires_grad "
                         "flags of leaf variables (use nb_detach for a non-leaf)");
    }
    if (rg && !nb_dtype_is_float(t->dtype))
        return nbi_error(NB_DTYPE_UNSUPPORTED, "only floating point tensors can require "
                         "gradients (got %s)", nb_dtype_name(t->dtype));
    t->requires_grad = rg;
    return NB_OK;
}

nb_tensor *nb_tensor_grad(const nb_tensor *t)
{
    if (!t) {
        nbi_error(NB_NULL_ARGUMENT, "grad: tensor is NULL");
        return NULL;
    }
    return NBI_API(nb_retain(t->grad));
}

nb_status nb_tensor_set_grad(nb_tensor *t, const nb_tensor *g)
{
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "set_grad: tensor is NULL");
    if (g && (g->ndim != t->ndim || memcmp(g->shape, t->shape, (size_t)t->ndim * 8) ||
              g->dtype != t->dtype || g->storage->device != t->storage->device))
        return nbi_error(NB_SHAPE_MISMATCH, "set_grad: gradient %s %s on %s does not match "
                         "tensor %s %s on %s", nb_dtype_name(g->dtype), NBI_SHAPE_STR(g),
                         g->storage->device->name, nb_dtype_name(t->dtype), NBI_SHAPE_STR(t),
                         t->storage->device->name);
    nb_tensor *old = t->grad;
    t->grad = nb_retain((nb_tensor *)g);
    nb_release(old);
    return NB_OK;
}

nb_status nb_tensor_zero_grad(nb_tensor *t)
{
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "zero_grad: tensor is NULL");
    nb_release(t->grad);
    t->grad = NULL;
    return NB_OK;
}

nb_status nb_tensor_retain_grad(nb_tensor *t)
{
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "retain_grad: tensor is NULL");
    nbi_view_refresh(t);
    if (!t->requires_grad)
        return nbi_error(NB_AUTOGRAD, "retain_grad: can't retain_grad on a tensor that has "
                         "requires_grad=False");
    if (t->grad_fn) {
        t->grad_fn->retain = t;
        t->retains_grad = true;
    }
    return NB_OK;
}

nb_status nb_tensor_register_hook(nb_tensor *t, nb_grad_hook_fn fn, void *ctx)
{
    if (!t || !fn)
        return nbi_error(NB_NULL_ARGUMENT, "register_hook: tensor or hook is NULL");
    nbi_view_refresh(t);
    if (!t->requires_grad)
        return nbi_error(NB_AUTOGRAD, "register_hook: cannot register a hook on a tensor that "
                         "doesn't require gradient");
    nbi_hook *h = nbi_malloc(sizeof *h), **list = t->grad_fn ? &t->grad_fn->hooks : &t->hooks;
    if (!h)
        return nbi_error(NB_OUT_OF_MEMORY, "register_hook: out of memory");
    h->fn = fn;
    h->ctx = ctx;
    h->next = NULL;
    while (*list)
        list = &(*list)->next;
    *list = h;
    return NB_OK;
}

const nb_grad_fn *nb_tensor_grad_fn(const nb_tensor *t)
{
    nbi_view_refresh((nb_tensor *)t);
    return t ? (const nb_grad_fn *)t->grad_fn : NULL;
}
const char *nb_grad_fn_name(const nb_grad_fn *fn) { return fn ? ((const nbi_node *)fn)->name : NULL; }
int32_t nb_grad_fn_next_count(const nb_grad_fn *fn) { return fn ? ((const nbi_node *)fn)->n_in : 0; }
const nb_grad_fn *nb_grad_fn_next(const nb_grad_fn *fn, int32_t i)
{
    const nbi_node *n = (const nbi_node *)fn;
    if (!n || i < 0 || i >= n->n_in)
        return NULL;
    return (const nb_grad_fn *)n->next[i];
}

/* ---- the engine ---- */

nb_tensor *nbi_sum_to(const nb_tensor *g, const nb_shape *shape)
{
    int32_t lead = g->ndim - shape->ndim, dims[NB_MAX_DIMS], nd = 0;
    if (lead < 0)
        return NULL;
    for (int32_t d = 0; d < g->ndim; d++)
        if (d < lead || (shape->dims[d - lead] == 1 && g->shape[d] != 1))
            dims[nd++] = d;
    nb_tensor *s = nd ? nb_sum(g, dims, nd, true) : nb_retain((nb_tensor *)g);
    if (!s)
        return NULL;
    if (s->ndim == shape->ndim && !memcmp(s->shape, shape->dims, (size_t)s->ndim * 8))
        return s;
    nb_tensor *r = nb_reshape(s, *shape);
    nb_release(s);
    return r;
}

typedef struct engine {
    nbi_node **order; /* every reachable node */
    size_t n, cap;
    nbi_node **ready;
    size_t n_ready;
    uint32_t mark;
    bool retain_graph, create_graph;
    /* capture mode (nb_grad): the nodes whose incoming gradient is wanted */
    nbi_node **capture;
    nb_tensor **captured;
    int32_t n_capture;
} engine;

static _Atomic uint32_t engine_epoch;

static nb_status push(nbi_node ***arr, size_t *n, size_t *cap, nbi_node *x)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        nbi_node **g = nbi_realloc(*arr, c * sizeof *g);
        if (!g)
            return nbi_error(NB_OUT_OF_MEMORY, "autograd: out of memory walking the graph");
        *arr = g;
        *cap = c;
    }
    (*arr)[(*n)++] = x;
    return NB_OK;
}

/* Finds every node reachable from the roots and counts each node's incoming edges. */
static nb_status discover(engine *e, nbi_node *const *roots, int32_t n_roots)
{
    for (int32_t r = 0; r < n_roots; r++) {
        if (roots[r]->mark == e->mark)
            continue;
        roots[r]->mark = e->mark;
        roots[r]->deps = 0;
        if (push(&e->order, &e->n, &e->cap, roots[r]) != NB_OK)
            return NB_OUT_OF_MEMORY;
    }
    for (size_t k = 0; k < e->n; k++) { /* the order array doubles as the BFS queue */
        nbi_node *x = e->order[k];
        for (int32_t j = 0; j < x->n_in; j++) {
            nbi_node *y = x->next[j];
            if (!y)
                continue;
            if (y->mark != e->mark) {
                y->mark = e->mark;
                y->deps = 0;
                if (push(&e->order, &e->n, &e->cap, y) != NB_OK)
                    return NB_OUT_OF_MEMORY;
            }
            y->deps++;
        }
    }
    return NB_OK;
}

static nb_status accumulate_into(nb_tensor **slot, nb_tensor *g, bool create_graph)
{
    if (!*slot) {
        *slot = nb_retain(g);
        return NB_OK;
    }
    nb_tensor *sum = nb_add(*slot, g);
    if (!sum)
        return nb_last_status();
    nb_release(*slot);
    *slot = sum;
    (void)create_graph;
    return NB_OK;
}

/* A hook may replace the gradient, by one of the same shape, dtype and device (as in PyTorch):
 * anything else would reach .grad and the optimizers. */
static nb_status run_hooks(nbi_hook *h, nb_tensor **gp)
{
    for (; h; h = h->next) {
        nb_tensor *g = *gp;
        nbi_user_call saved = nbi_call_user_begin();
        nb_tensor *r = h->fn(g, h->ctx);
        nbi_call_user_end(saved);
        if (!r)
            continue;
        nbi_scope_untrack(r);
        if (r->ndim != g->ndim || memcmp(r->shape, g->shape, (size_t)g->ndim * sizeof *g->shape) ||
            r->dtype != g->dtype || r->storage->device != g->storage->device) {
            nb_status st = nbi_error(NB_AUTOGRAD, "hook returned a gradient of shape %s, dtype "
                                     "%s on %s; expected the gradient's shape %s, dtype %s on "
                                     "%s", NBI_SHAPE_STR(r), nb_dtype_name(r->dtype),
                                     r->storage->device->name, NBI_SHAPE_STR(g),
                                     nb_dtype_name(g->dtype), g->storage->device->name);
            nb_release(r);
            return st;
        }
        nb_release(g);
        *gp = r;
    }
    return NB_OK;
}

/* Adds g into the leaf's .grad: a fresh tensor of its own the first time (so later in-place
 * accumulation never writes into someone else's tensor), in place afterwards. */
static nb_status accumulate_grad(nb_tensor *leaf, nb_tensor *g, bool create_graph)
{
    if (create_graph)
        return accumulate_into(&leaf->grad, g, true);
    if (!leaf->grad) {
        bool own = atomic_load(&g->refcount) == 1 && atomic_load(&g->storage->refcount) == 1 &&
                   !g->grad_fn && !g->tracked && nbi_is_contiguous(g) && g->offset == 0;
        leaf->grad = own ? nb_retain(g) : nb_clone(g);
        if (leaf->grad && leaf->grad->grad_fn) { /* never keep a graph in .grad */
            nb_tensor *d = nb_detach(leaf->grad);
            nb_release(leaf->grad);
            leaf->grad = d;
        }
        return leaf->grad ? NB_OK : nb_last_status();
    }
    bool prev = nb_set_grad_enabled(false);
    nb_status st = nb_add_(leaf->grad, g);
    nb_set_grad_enabled(prev);
    return st;
}

static nb_status process(engine *e, nbi_node *x)
{
    nb_tensor *g = x->buf;
    x->buf = NULL;
    nb_status st = NB_OK;
    nb_tensor *gi_buf[8], **gi = gi_buf;
    if (x->n_in > 8 && !(gi = nbi_calloc((size_t)x->n_in, sizeof *gi))) {
        nb_release(g);
        return nbi_error(NB_OUT_OF_MEMORY, "autograd: out of memory");
    }
    memset(gi, 0, (size_t)(x->n_in < 8 ? 8 : x->n_in) * sizeof *gi);

    if (g && (st = run_hooks(x->leaf ? x->leaf->hooks : x->hooks, &g)) == NB_OK) {
        for (int32_t c = 0; c < e->n_capture; c++)
            if (e->capture[c] == x && !e->captured[c])
                e->captured[c] = nb_retain(g);
        if (x->retain && !e->n_capture)
            st = accumulate_into(&x->retain->grad, g, e->create_graph);
        if (st == NB_OK && x->leaf) {
            if (!e->n_capture)
                st = accumulate_grad(x->leaf, g, e->create_graph);
            if (st == NB_OK && !e->n_capture && x->leaf->post_hooks)
                st = run_post_hooks(x->leaf);
        } else if (st == NB_OK && x->backward) {
            if (x->released && x->n_saved) /* as PyTorch: only saved tensors are freed */
                st = nbi_error(NB_AUTOGRAD, "%s", retain_graph_msg);
            else
                st = x->backward(x, g, gi);
            release_unpacked(x);
        }
    }
    for (int32_t k = 0; k < x->n_in; k++) {
        nbi_node *y = x->next[k];
        nb_tensor *gk = gi[k];
        gi[k] = NULL;
        if (y && gk && st == NB_OK) {
            const nb_shape *want = &x->in_shape[k];
            if (gk->ndim != want->ndim || memcmp(gk->shape, want->dims, (size_t)gk->ndim * 8)) {
                nb_tensor *r = nbi_sum_to(gk, want); /* undo broadcasting, once, here */
                if (!r && nbi_error_pending())
                    st = nb_last_status();
                else if (!r)
                    st = nbi_error(NB_AUTOGRAD, "%s: gradient %s does not match input %d of "
                                   "shape %s", x->name, NBI_SHAPE_STR(gk), k,
                                   nbi_shape_cstr(want->ndim, want->dims));
                nb_release(gk);
                gk = r;
            }
            if (gk && gk->dtype != x->in_dtype[k]) {
                nb_tensor *c = nb_to_dtype(gk, x->in_dtype[k]);
                nb_release(gk);
                gk = c;
            }
            if (gk && st == NB_OK)
                st = accumulate_into(&y->buf, gk, e->create_graph);
        }
        nb_release(gk);
        if (y && --y->deps == 0)
            e->ready[e->n_ready++] = y;
    }
    if (!e->retain_graph && x->backward) {
        release_saved(x);
        x->released = true;
    }
    nb_release(g);
    if (gi != gi_buf)
        nbi_free(gi);
    return st;
}

static nb_status run_engine(nb_tensor *const *roots, nb_tensor *const *root_grads, int32_t n,
                            bool retain_graph, bool create_graph, nb_tensor *const *inputs,
                            int32_t n_inputs, nb_tensor **captured)
{
    engine e = {.retain_graph = retain_graph, .create_graph = create_graph,
                .mark = atomic_fetch_add(&engine_epoch, 1) + 1};
    nbi_node *root_nodes_buf[8] = {0}, **root_nodes = root_nodes_buf;
    nbi_node *cap_buf[8] = {0}, **cap = cap_buf;
    nb_status st = NB_OK;
    if ((n > 8 && !(root_nodes = nbi_calloc((size_t)n, sizeof *root_nodes))) ||
        (n_inputs > 8 && !(cap = nbi_calloc((size_t)n_inputs, sizeof *cap))))
        st = nbi_error(NB_OUT_OF_MEMORY, "autograd: out of memory");

    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        nb_tensor *t = roots[k];
        nbi_view_refresh(t);
        if (!t->requires_grad) {
            st = nbi_error(NB_AUTOGRAD, "element %d of tensors does not require grad and does "
                           "not have a grad_fn", k);
            break;
        }
        root_nodes[k] = edge_of(t); /* a new reference */
        if (!root_nodes[k])
            st = nb_last_status();
    }
    for (int32_t k = 0; st == NB_OK && k < n_inputs; k++) {
        nbi_view_refresh(inputs[k]);
        if (!inputs[k]->requires_grad) {
            st = nbi_error(NB_AUTOGRAD, "grad: input %d does not require grad", k);
            break;
        }
        cap[k] = edge_of(inputs[k]);
        if (!cap[k])
            st = nb_last_status();
    }
    e.capture = cap;
    e.captured = captured;
    e.n_capture = n_inputs;

    if (st == NB_OK)
        st = discover(&e, root_nodes, n);
    if (st == NB_OK && !(e.ready = nbi_malloc((e.n ? e.n : 1) * sizeof *e.ready)))
        st = nbi_error(NB_OUT_OF_MEMORY, "autograd: out of memory");
    for (int32_t k = 0; st == NB_OK && k < n; k++)
        st = accumulate_into(&root_nodes[k]->buf, root_grads[k], create_graph);
    if (st == NB_OK)
        for (size_t k = 0; k < e.n; k++)
            if (e.order[k]->deps == 0)
                e.ready[e.n_ready++] = e.order[k];

    bool prev_mode = nb_set_grad_enabled(create_graph);
    while (st == NB_OK && e.n_ready)
        st = process(&e, e.ready[--e.n_ready]);
    nb_set_grad_enabled(prev_mode);

    for (size_t k = 0; k < e.n; k++) { /* after an error, drop what is still buffered */
        nb_release(e.order[k]->buf);
        e.order[k]->buf = NULL;
    }
    for (int32_t k = 0; k < n; k++)
        nbi_node_release(root_nodes[k]);
    for (int32_t k = 0; k < n_inputs; k++)
        nbi_node_release(cap[k]);
    nbi_free(e.order);
    nbi_free(e.ready);
    if (root_nodes != root_nodes_buf)
        nbi_free(root_nodes);
    if (cap != cap_buf)
        nbi_free(cap);
    return st;
}

static nb_status prepare_root_grad(const char *op, nb_tensor *t, const nb_tensor *grad,
                                   nb_tensor **out)
{
    if (!grad) {
        if (nbi_numel(t->ndim, t->shape) != 1)
            return nbi_error(NB_AUTOGRAD, "grad can be implicitly created only for scalar "
                             "outputs (%s: output has shape %s)", op, NBI_SHAPE_STR(t));
        *out = nb_ones_like(t);
        return *out ? NB_OK : nb_last_status();
    }
    if (grad->ndim != t->ndim || memcmp(grad->shape, t->shape, (size_t)t->ndim * 8))
        return nbi_error(NB_SHAPE_MISMATCH, "%s: gradient of shape %s for an output of shape %s",
                         op, NBI_SHAPE_STR(grad), NBI_SHAPE_STR(t));
    if (grad->storage->device != t->storage->device)
        return nbi_error(NB_DEVICE_MISMATCH, "%s: gradient on %s for an output on %s", op,
                         grad->storage->device->name, t->storage->device->name);
    *out = grad->dtype == t->dtype ? nb_retain((nb_tensor *)grad) : nb_to_dtype(grad, t->dtype);
    return *out ? NB_OK : nb_last_status();
}

static nb_status backward_impl(nb_tensor *t, const nb_tensor *grad, nb_backward_opts opts)
{
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "backward: tensor is NULL");
    nbi_view_refresh(t);
    if (!t->requires_grad)
        return nbi_error(NB_AUTOGRAD, "element 0 of tensors does not require grad and does not "
                         "have a grad_fn");
    nb_tensor *g = NULL;
    nb_status st = prepare_root_grad("backward", t, grad, &g);
    if (st == NB_OK)
        st = run_engine(&t, &g, 1, opts.retain_graph || opts.create_graph, opts.create_graph,
                        NULL, 0, NULL);
    nb_release(g);
    return st;
}

nb_status nb_backward(nb_tensor *t, const nb_tensor *grad, nb_backward_opts opts)
{
    return NBI_API_STATUS(backward_impl(t, grad, opts));
}

static nb_status grad_impl(nb_tensor *const *outputs, nb_tensor *const *grad_outputs, int32_t n,
                           nb_tensor *const *inputs, int32_t n_in, nb_grad_opts opts,
                           nb_tensor **grads)
{
    if (!outputs || !inputs || !grads || n <= 0 || n_in <= 0)
        return nbi_error(NB_NULL_ARGUMENT, "grad: outputs, inputs and grads must be non-NULL "
                         "with at least one element each (got %d outputs, %d inputs)", n, n_in);
    for (int32_t k = 0; k < n; k++)
        if (!outputs[k])
            return nbi_error(NB_NULL_ARGUMENT, "grad: output %d is NULL", k);
    for (int32_t k = 0; k < n_in; k++) {
        grads[k] = NULL;
        if (!inputs[k])
            return nbi_error(NB_NULL_ARGUMENT, "grad: input %d is NULL", k);
    }
    nb_tensor **rg = nbi_calloc((size_t)n, sizeof *rg);
    if (!rg)
        return nbi_error(NB_OUT_OF_MEMORY, "grad: out of memory");
    nb_status st = NB_OK;
    for (int32_t k = 0; st == NB_OK && k < n; k++)
        st = prepare_root_grad("grad", outputs[k], grad_outputs ? grad_outputs[k] : NULL, &rg[k]);
    if (st == NB_OK)
        st = run_engine(outputs, rg, n, opts.retain_graph || opts.create_graph,
                        opts.create_graph, inputs, n_in, grads);
    for (int32_t k = 0; k < n; k++)
        nb_release(rg[k]);
    nbi_free(rg);
    for (int32_t k = 0; st == NB_OK && k < n_in; k++) {
        if (grads[k]) {
            if (!opts.create_graph && grads[k]->grad_fn) {
                nb_tensor *d = nb_detach(grads[k]);
                nb_release(grads[k]);
                grads[k] = d;
            }
            continue;
        }
        if (!opts.allow_unused)
            st = nbi_error(NB_AUTOGRAD, "grad: one of the differentiated tensors (input %d) "
                           "appears to not have been used in the graph; set allow_unused if "
                           "this is the desired behavior", k);
    }
    if (st != NB_OK)
        for (int32_t k = 0; k < n_in; k++) {
            nb_release(grads[k]);
            grads[k] = NULL;
        }
    return st;
}

nb_status nb_grad(nb_tensor *const *outputs, nb_tensor *const *grad_outputs, int32_t n,
                  nb_tensor *const *inputs, int32_t n_in, nb_grad_opts opts, nb_tensor **grads)
{
    nbi_api_depth++;
    nb_status st = grad_impl(outputs, grad_outputs, n, inputs, n_in, opts, grads);
    nbi_api_depth--;
    for (int32_t k = 0; st == NB_OK && nbi_api_depth == 0 && k < n_in; k++)
        if (!nbi_scope_track(grads[k])) { /* released by the failed track */
            grads[k] = NULL;
            st = NB_OUT_OF_MEMORY;
        }
    return st;
}

/* ---- custom functions ---- */

static nb_status custom_backward(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    bool user = node->i[0] != 0;
    nbi_user_call saved = {0};
    if (user)
        saved = nbi_call_user_begin();
    nb_status st = node->fn->backward(node->ctx, g, gi, node->n_in);
    if (user)
        nbi_call_user_end(saved);
    for (int32_t k = 0; k < node->n_in; k++) {
        if (user)
            nbi_scope_untrack(gi[k]);
        if (st != NB_OK) {
            nb_release(gi[k]);
            gi[k] = NULL;
        }
    }
    if (st != NB_OK && nb_last_status() == NB_OK)
        nbi_error(st, "%s: backward failed", node->name);
    return st;
}

static nb_tensor *function_apply_impl(const nb_function *fn, void *ctx, nb_tensor *const *inputs,
                                      int32_t n, bool user)
{
    if (!fn || !fn->forward || !fn->backward || !fn->name || (n > 0 && !inputs) || n < 0) {
        const char *what = !fn ? "the function is NULL" : !fn->name ? "its name is NULL"
                         : !fn->forward ? "its forward is NULL" : !fn->backward ? "its backward is NULL"
                         : n < 0 ? "the input count is negative" : "inputs is NULL";
        nbi_error(NB_NULL_ARGUMENT, "function_apply: %s (a function needs a name, forward and "
                  "backward; got %d inputs)", what, n);
        if (fn && fn->free_ctx)
            fn->free_ctx(ctx);
        return NULL;
    }
    bool prev = nb_set_grad_enabled(false);
    nbi_user_call saved = {0};
    if (user)
        saved = nbi_call_user_begin();
    nb_tensor *out = fn->forward(ctx, inputs, n);
    if (user)
        nbi_call_user_end(saved);
    nb_set_grad_enabled(prev);
    if (user)
        nbi_scope_untrack(out);
    nbi_node *node = NULL;
    if (out && nbi_grad_needed(inputs, n)) {
        if (atomic_load(&out->refcount) > 1 || out->grad_fn) {
            /* the forward returned an input or a shared tensor: give the output its own object */
            nb_tensor *alias = nbi_tensor_alias(out);
            nb_release(out);
            out = alias;
        }
        node = out ? nbi_record(out, fn->name, custom_backward, inputs, n) : NULL;
    }
    if (node) {
        node->fn = fn;
        node->ctx = ctx;
        node->i[0] = user;
    } else if (fn->free_ctx) {
        fn->free_ctx(ctx);
    }
    return out;
}

nb_tensor *nb_function_apply(const nb_function *fn, void *ctx, nb_tensor *const *inputs,
                             int32_t n)
{
    /* Called by the application (depth 0) its callbacks run as application code; called from
     * inside the core they stay internal. */
    bool user = nbi_api_depth == 0;
    return NBI_API(function_apply_impl(fn, ctx, inputs, n, user));
}

/* ---- gradcheck ---- */

static nb_status read_doubles(const nb_tensor *t, double **out, int64_t *n)
{
    *n = nbi_numel(t->ndim, t->shape);
    *out = nbi_malloc((size_t)(*n ? *n : 1) * sizeof **out);
    if (!*out)
        return nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
    return nbi_read_f64(t, *out);
}

static nb_tensor *call_fn(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *in, int32_t n)
{
    nbi_user_call saved = nbi_call_user_begin();
    nb_tensor *r = fn(in, n, ctx);
    nbi_call_user_end(saved);
    nbi_scope_untrack(r);
    return r;
}

static nb_status gradcheck_impl(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs,
                                int32_t n, double eps, double atol, double rtol)
{
    if (!fn || !inputs || n <= 0)
        return nbi_error(NB_NULL_ARGUMENT, "gradcheck: fn and at least one input are required");
    if (n > 16)
        return nbi_error(NB_INVALID_ARGUMENT, "gradcheck: %d inputs, at most 16", n);
    if (!(eps > 0))
        eps = 1e-6;
    nb_tensor *x[16] = {0};
    nb_status st = NB_OK;
    /* float64 copies of the inputs, so the finite differences are meaningful */
    for (int32_t k = 0; k < n; k++) {
        if (!inputs[k])
            return nbi_error(NB_NULL_ARGUMENT, "gradcheck: input %d is NULL", k);
        nb_tensor *c = nb_to_dtype(inputs[k], nb_dtype_is_float(inputs[k]->dtype)
                                                  ? NB_DTYPE_F64 : inputs[k]->dtype);
        x[k] = c ? nb_detach(c) : NULL;
        nb_release(c);
        if (!x[k]) {
            st = nb_last_status();
            goto done;
        }
        if (inputs[k]->requires_grad)
            x[k]->requires_grad = true;
    }
    nb_tensor *out = call_fn(fn, ctx, x, n);
    if (!out) {
        st = nbi_last_or(NB_AUTOGRAD, "gradcheck: fn returned NULL");
        goto done;
    }
    int64_t m = nbi_numel(out->ndim, out->shape);
    double *base = NULL;
    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        if (!x[k]->requires_grad)
            continue;
        int64_t len;
        double *xv = NULL, *num = NULL, *ana = NULL;
        st = read_doubles(x[k], &xv, &len);
        if (st == NB_OK && !(num = nbi_calloc((size_t)(len * m + 1), sizeof *num)))
            st = nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
        if (st == NB_OK && !(ana = nbi_calloc((size_t)(len * m + 1), sizeof *ana)))
            st = nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
        /* numeric Jacobian, column by column: d out / d x[k][e] */
        for (int64_t e = 0; st == NB_OK && e < len; e++) {
            double keep = xv[e];
            double *fp = NULL, *fm = NULL;
            int64_t mm;
            for (int s = 0; s < 2 && st == NB_OK; s++) {
                xv[e] = keep + (s ? -eps : eps);
                st = nb_tensor_copy_from_host(x[k], xv, (size_t)len * 8);
                nb_tensor *o = st == NB_OK ? call_fn(fn, ctx, x, n) : NULL;
                if (!o && st == NB_OK)
                    st = nbi_last_or(NB_AUTOGRAD, "gradcheck: fn returned NULL");
                if (o)
                    st = read_doubles(o, s ? &fm : &fp, &mm);
                nb_release(o);
            }
            xv[e] = keep;
            if (st == NB_OK)
                st = nb_tensor_copy_from_host(x[k], xv, (size_t)len * 8);
            for (int64_t j = 0; st == NB_OK && j < m; j++)
                num[j * len + e] = (fp[j] - fm[j]) / (2 * eps);
            nbi_free(fp);
            nbi_free(fm);
        }
        /* analytic Jacobian, row by row: one backward per output element */
        nb_tensor *o = st == NB_OK ? call_fn(fn, ctx, x, n) : NULL;
        /* an output that does not require grad has a zero analytical Jacobian (PyTorch's rule;
         * the numerical one must then be zero too) */
        for (int64_t j = 0; o && o->requires_grad && st == NB_OK && j < m; j++) {
            double *onehot = nbi_calloc((size_t)m, sizeof *onehot);
            if (!onehot) {
                st = nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
                break;
            }
            onehot[j] = 1;
            nb_tensor *go = nb_from_data(onehot, nb_tensor_shape(o),
                                         (nb_opts){NB_DTYPE_F64, o->storage->device->name});
            nbi_free(onehot);
            nb_tensor *gin = NULL, *oo = o, *xk = x[k];
            nb_tensor *go_c = go && o->dtype != NB_DTYPE_F64 ? nb_to_dtype(go, o->dtype) : go;
            st = go_c ? nb_grad(&oo, &go_c, 1, &xk, 1,
                                (nb_grad_opts){.retain_graph = true, .allow_unused = true}, &gin)
                      : nb_last_status();
            if (go_c != go)
                nb_release(go_c);
            nb_release(go);
            double *gv = NULL;
            int64_t gl;
            if (st == NB_OK && gin && (st = read_doubles(gin, &gv, &gl)) == NB_OK)
                memcpy(ana + j * len, gv, (size_t)len * sizeof *gv);
            nbi_free(gv);
            nb_release(gin);
        }
        nb_release(o);
        for (int64_t q = 0; st == NB_OK && q < m * len; q++) {
            double a = ana[q], b = num[q];
            if (!(fabs(a - b) <= atol + rtol * fabs(b)))
                st = nbi_error(NB_AUTOGRAD, "gradcheck: Jacobian mismatch for output %lld with "
                               "respect to input %d element %lld: numerical %.10g, analytical "
                               "%.10g", (long long)(q / len), k, (long long)(q % len), b, a);
        }
        nbi_free(xv);
        nbi_free(num);
        nbi_free(ana);
    }
    nbi_free(base);
    nb_release(out);
done:
    for (int32_t k = 0; k < n; k++)
        nb_release(x[k]);
    return st;
}

nb_status nb_gradcheck(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs, int32_t n,
                       double eps, double atol, double rtol)
{
    return NBI_API_STATUS(gradcheck_impl(fn, ctx, inputs, n, eps, atol, rtol));
}

/* ---- gradgradcheck ---- */

typedef struct ggc_ctx {
    nb_gradcheck_fn fn;
    void *ctx;
    int32_t n; /* fn's inputs; the gradient's seed v comes after them */
} ggc_ctx;

/* The first derivative as one flat tensor: cat(flatten(d(sum fn(x) * v) / dx_k)). */
static nb_tensor *ggc_fn(nb_tensor *const *in, int32_t n_in, void *vctx)
{
    ggc_ctx *c = vctx;
    nb_tensor *v = in[n_in - 1], *out = call_fn(c->fn, c->ctx, in, c->n);
    if (!out)
        return NULL;
    nb_tensor *wrt[16], *g[16] = {0}, *flat[16] = {0};
    int32_t nw = 0;
    for (int32_t k = 0; k < c->n; k++)
        if (in[k]->requires_grad)
            wrt[nw++] = in[k];
    nb_status st = out->requires_grad
                       ? nb_grad(&out, &v, 1, wrt, nw,
                                 (nb_grad_opts){.create_graph = true, .allow_unused = true}, g)
                       : nbi_error(NB_AUTOGRAD, "gradgradcheck: the output does not require grad");
    nb_release(out);
    nb_tensor *r = NULL;
    for (int32_t k = 0; st == NB_OK && k < nw; k++) {
        int64_t numel = nbi_numel(wrt[k]->ndim, wrt[k]->shape);
        flat[k] = g[k] ? nb_reshape(g[k], NB_SHAPE(-1))
                       : nb_zeros(NB_SHAPE(numel), (nb_opts){wrt[k]->dtype,
                                                             wrt[k]->storage->device->name});
        if (!flat[k])
            st = nb_last_status();
    }
    if (st == NB_OK)
        r = nb_cat(flat, nw, 0);
    for (int32_t k = 0; k < nw; k++) {
        nb_release(g[k]);
        nb_release(flat[k]);
    }
    return r;
}

static nb_status gradgradcheck_impl(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs,
                                    int32_t n, double eps, double atol, double rtol)
{
    if (!fn || !inputs || n <= 0 || n > 15)
        return nbi_error(NB_NULL_ARGUMENT, "gradgradcheck: fn and 1 to 15 inputs are required "
                         "(got %d)", n);
    for (int32_t k = 0; k < n; k++)
        if (!inputs[k])
            return nbi_error(NB_NULL_ARGUMENT, "gradgradcheck: input %d is NULL", k);
    nb_tensor *out = call_fn(fn, ctx, inputs, n);
    if (!out)
        return nbi_last_or(NB_AUTOGRAD, "gradgradcheck: fn returned NULL");
    int64_t m = nbi_numel(out->ndim, out->shape);
    double *vv = nbi_malloc((size_t)(m ? m : 1) * sizeof *vv);
    nb_status st = vv ? NB_OK : nbi_error(NB_OUT_OF_MEMORY, "gradgradcheck: out of memory");
    for (int64_t e = 0; st == NB_OK && e < m; e++) /* fixed, varied, in [-1, 1] */
        vv[e] = fmod(fabs(sin((double)(e + 1) * 12.9898)) * 43758.5453, 2.0) - 1.0;
    nb_tensor *v = st == NB_OK ? nb_from_data(vv, nb_tensor_shape(out),
                                              (nb_opts){NB_DTYPE_F64, out->storage->device->name,
                                                        true})
                               : NULL;
    nbi_free(vv);
    nb_release(out);
    if (!v)
        return nb_last_status();
    nb_tensor *all[16];
    memcpy(all, inputs, (size_t)n * sizeof *all);
    all[n] = v;
    ggc_ctx c = {fn, ctx, n};
    st = gradcheck_impl(ggc_fn, &c, all, n + 1, eps, atol, rtol);
    nb_release(v);
    return st;
}

nb_status nb_gradgradcheck(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs, int32_t n,
                           double eps, double atol, double rtol)
{
    return NBI_API_STATUS(gradgradcheck_impl(fn, ctx, inputs, n, eps, atol, rtol));
}
