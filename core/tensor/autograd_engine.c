/* autograd_engine.c - the engine: nb_backward and nb_grad walk the graph from the roots in
 * dependency order, run hooks, accumulate into leaves and undo broadcasting (nbi_sum_to). */
#include "nabla_internal.h"

#include <string.h>

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
                st = nbi_run_post_hooks(x->leaf);
        } else if (st == NB_OK && x->backward) {
            if (x->released && (x->n_saved || x->ctx_freed)) /* only what was saved is freed */
                st = nbi_error(NB_AUTOGRAD, "%s", nbi_retain_graph_msg);
            else
                st = x->backward(x, g, gi);
            nbi_node_release_unpacked(x);
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
                if (!c && st == NB_OK) /* a failed cast must not drop the gradient silently */
                    st = nb_last_status();
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
        nbi_node_release_saved(x);
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
        root_nodes[k] = nbi_edge_of(t); /* a new reference */
        if (!root_nodes[k])
            st = nb_last_status();
    }
    for (int32_t k = 0; st == NB_OK && k < n_inputs; k++) {
        nbi_view_refresh(inputs[k]);
        if (!inputs[k]->requires_grad) {
            st = nbi_error(NB_AUTOGRAD, "grad: input %d does not require grad", k);
            break;
        }
        cap[k] = nbi_edge_of(inputs[k]);
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
    return NBI_API_CALL(backward_impl(t, grad, opts));
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

