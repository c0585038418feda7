/* autograd.c - the graph: grad mode, graph nodes and what they save, the tensor-level autograd
 * API (requires_grad, .grad, hooks, grad_fn) and custom functions. The engine that walks the
 * graph is autograd_engine.c; in-place writes and views autograd_inplace.c. */
#include "nabla_internal.h"

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

nb_status nbi_run_post_hooks(nb_tensor *leaf)
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

nbi_node *nbi_node_new(const char *name, nbi_backward_fn bw, int32_t n_in)
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

/* Outputs unpacked with this node as their grad_fn live for one call of its backward only:
 * kept longer they would hold the node alive through itself. */
void nbi_node_release_unpacked(nbi_node *n)
{
    for (int32_t k = 0; k < n->n_saved; k++) {
        nb_release(n->unpacked[k]);
        n->unpacked[k] = NULL;
    }
}

/* A custom function's ctx is what it saved for backward, so it goes with the saved tensors:
 * a second backward through the node is then the retain_graph error, as in PyTorch. */
void nbi_node_release_saved(nbi_node *n)
{
    nbi_node_release_unpacked(n);
    for (int32_t k = 0; k < n->n_saved; k++) {
        nb_release(n->saved[k]);
        n->saved[k] = NULL;
    }
    if (n->fn && n->fn->free_ctx && !n->ctx_freed) {
        n->fn->free_ctx(n->ctx);
        n->ctx_freed = true;
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
        nbi_node_release_saved(x);
        if (x->leaf) {
            x->leaf->grad_acc = NULL;
            nb_release(x->leaf);
        }
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
nbi_node *nbi_edge_of(nb_tensor *t)
{
    nbi_view_refresh(t);
    if (!t || !t->requires_grad)
        return NULL;
    if (t->grad_fn)
        return nbi_node_retain(t->grad_fn);
    if (t->grad_acc)
        return nbi_node_retain(t->grad_acc);
    nbi_node *acc = nbi_node_new("AccumulateGrad", NULL, 0);
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
    nbi_node *node = nbi_node_new(name, bw, n);
    if (!node)
        return NULL;
    for (int32_t k = 0; k < n; k++) {
        if (!inputs[k])
            continue;
        node->next[k] = nbi_edge_of(inputs[k]);
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

const char nbi_retain_graph_msg[] =
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
        return nbi_error(NB_AUTOGRAD, "%s", nbi_retain_graph_msg);
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
            u->grad_fn = nbi_node_retain(node);
            u->requires_grad = true;
            node->unpacked[k] = u;
        }
        s = node->unpacked[k];
    }
    *t = s;
    return NB_OK;
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

