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

static void release_saved(nbi_node *n)
{
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
}

/* The edge into a tensor's history: its grad_fn, or the AccumulateGrad node of a leaf. */
static nbi_node *edge_of(nb_tensor *t)
{
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
    for (int32_t k = 0; k < n; k++)
        if (inputs[k] && inputs[k]->requires_grad)
            return true;
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

static const char retain_graph_msg[] =
    "Trying to backward through the graph a second time (or directly access saved tensors after "
    "they have already been freed). Saved intermediate values of the graph are freed when you "
    "call .backward() or autograd.grad(). Specify retain_graph=True if you need to backward "
    "through the graph a second time or if you need to access saved tensors after calling "
    "backward.";

nb_status nbi_saved(nbi_node *node, int32_t k, nb_tensor **t)
{
    if (node->released)
        return nbi_error(NB_AUTOGRAD, "%s", retain_graph_msg);
    if (k >= node->n_saved) { /* the rule did not save this one */
        *t = NULL;
        return NB_OK;
    }
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
    *t = s;
    return NB_OK;
}

nb_status nbi_check_inplace(const char *op, nb_tensor *t)
{
    if (!grad_disabled && t->requires_grad && !t->grad_fn)
        return nbi_error(NB_AUTOGRAD, "%s: a leaf tensor that requires grad is being used in an "
                         "in-place operation (wrap it in nb_no_grad_begin/end)", op);
    return NB_OK;
}

/* ---- tensor-level autograd API ---- */

bool nb_tensor_requires_grad(const nb_tensor *t) { return t && t->requires_grad; }
bool nb_tensor_is_leaf(const nb_tensor *t) { return t && !t->grad_fn; }

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
        } else if (st == NB_OK && x->backward) {
            if (x->released)
                st = nbi_error(NB_AUTOGRAD, "%s", retain_graph_msg);
            else
                st = x->backward(x, g, gi);
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

static nb_status backward_impl(nb_tensor *t, const nb_tensor *grad, bool retain_graph)
{
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "backward: tensor is NULL");
    if (!t->requires_grad)
        return nbi_error(NB_AUTOGRAD, "element 0 of tensors does not require grad and does not "
                         "have a grad_fn");
    nb_tensor *g = NULL;
    nb_status st = prepare_root_grad("backward", t, grad, &g);
    if (st == NB_OK)
        st = run_engine(&t, &g, 1, retain_graph, false, NULL, 0, NULL);
    nb_release(g);
    return st;
}

nb_status nb_backward(nb_tensor *t, const nb_tensor *grad, bool retain_graph)
{
    return NBI_API_STATUS(backward_impl(t, grad, retain_graph));
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
        for (int64_t j = 0; o && st == NB_OK && j < m; j++) {
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
