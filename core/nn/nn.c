/* nn.c - the module tree: named children, parameters and buffers, their dotted views,
 * train/eval, moving between devices, forward hooks, apply and named modules, and the kinds
 * other files under core/nn/ define (nbi_module_kind). Printing is nn_print.c, the built-in
 * layers nn_layers.c. */
#include "module.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ============================== small helpers ============================== */

nb_status nnm_oom(const char *what)
{
    return nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
}

/* "[1, 400]" into buf, with the public shape accessor. */
const char *nnm_shape_str(const nb_tensor *t, char *buf, size_t len)
{
    nb_shape s = nb_tensor_shape(t);
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int32_t d = 0; d < s.ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? ", " : "",
                                 (long long)s.dims[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}
/* ============================== the module tree ============================== */

static void flat_clear(nn_flat *f)
{
    for (int32_t i = 0; i < f->n; i++)
        nbi_free(f->names[i]);
    nbi_free(f->names);
    nbi_free(f->entries);
    *f = (nn_flat){0};
}

/* Registering anything changes the dotted views of this module and of every ancestor. */
static void invalidate(nb_module *m)
{
    for (; m; m = m->parent) {
        m->flat_ok = false;
        flat_clear(&m->flat_params);
        flat_clear(&m->flat_state);
    }
}

nb_module *nnm_alloc(const char *type_name, nn_kind kind)
{
    nb_module *m = nbi_calloc(1, sizeof *m);
    if (!m) {
        nnm_oom("nb_module_new");
        return NULL;
    }
    m->type_name = nbi_strdup(type_name);
    if (!m->type_name) {
        nbi_free(m);
        nnm_oom("nb_module_new");
        return NULL;
    }
    m->kind = kind;
    m->training = true;
    return m;
}

nb_module *nb_module_new(const char *type_name, nb_forward_fn forward, void *user)
{
    if (!type_name || !*type_name) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_module_new: type name is %s; expected the name to "
                  "print, such as \"Net\"", type_name ? "empty" : "NULL");
        return NULL;
    }
    nb_module *m = nnm_alloc(type_name, NN_USER);
    if (m) {
        m->forward = forward;
        m->user = user;
    }
    return m;
}

static void hooks_free(nb_module *m);

static void module_free_impl(nb_module *m)
{
    if (!m)
        return;
    if (m->parent) {
        /* freeing it here would leave its parent holding a dangling child */
        nbi_error(NB_STATE, "nb_module_free: this %s is a child of a %s; free the root module "
                  "instead", m->type_name, m->parent->type_name);
        return;
    }
    for (int32_t i = 0; i < m->n_children; i++) {
        m->children[i].m->parent = NULL;
        nb_module_free(m->children[i].m);
        nbi_free(m->children[i].name);
    }
    for (int32_t i = 0; i < m->n_params; i++) {
        nb_release(m->params[i].t);
        nbi_free(m->params[i].name);
    }
    for (int32_t i = 0; i < m->n_buffers; i++) {
        nb_release(m->buffers[i].t);
        nbi_free(m->buffers[i].name);
    }
    flat_clear(&m->flat_params);
    flat_clear(&m->flat_state);
    hooks_free(m);
    nbi_free(m->ext_cfg);
    nbi_free(m->children);
    nbi_free(m->params);
    nbi_free(m->buffers);
    nbi_free(m->type_name);
    nbi_free(m);
}

void nb_module_free(nb_module *m)
{
    NBI_API_VOID(module_free_impl(m));
}

/* Names follow PyTorch's attribute rules: non-empty, no '.', unique within the module. */
static nb_status check_name(const nb_module *m, const char *what, const char *name)
{
    if (!name || !*name)
        return nbi_error(NB_INVALID_ARGUMENT, "%s: the name is %s; expected a non-empty name",
                         what, name ? "empty" : "NULL");
    if (strchr(name, '.'))
        return nbi_error(NB_INVALID_ARGUMENT, "%s: name '%s' contains '.'; dots separate the "
                         "levels of dotted names (\"conv1.weight\")", what, name);
    for (int32_t i = 0; i < m->n_children; i++)
        if (strcmp(m->children[i].name, name) == 0)
            return nbi_error(NB_INVALID_ARGUMENT, "%s: %s already has a child named '%s'", what,
                             m->type_name, name);
    for (int32_t i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return nbi_error(NB_INVALID_ARGUMENT, "%s: %s already has a parameter named '%s'",
                             what, m->type_name, name);
    for (int32_t i = 0; i < m->n_buffers; i++)
        if (strcmp(m->buffers[i].name, name) == 0)
            return nbi_error(NB_INVALID_ARGUMENT, "%s: %s already has a buffer named '%s'", what,
                             m->type_name, name);
    return NB_OK;
}

static bool grow(void **items, int32_t *cap, int32_t n, size_t size)
{
    if (n < *cap)
        return true;
    int32_t nc = *cap ? *cap * 2 : 4;
    void *p = nbi_realloc(*items, (size_t)nc * size);
    if (!p)
        return false;
    *items = p;
    *cap = nc;
    return true;
}

static nb_status module_add_impl(nb_module *m, const char *name, nb_module *child)
{
    if (!m || !child)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_add: %s is NULL", m ? "child" : "module");
    nb_status st = check_name(m, "nb_module_add", name);
    if (st != NB_OK)
        return st;
    if (child->parent)
        return nbi_error(NB_INVALID_ARGUMENT, "nb_module_add: this %s already belongs to a %s; "
                         "a module has one parent", child->type_name, child->parent->type_name);
    for (const nb_module *a = m; a; a = a->parent)
        if (a == child)
            return nbi_error(NB_INVALID_ARGUMENT, "nb_module_add: adding %s '%s' under itself "
                             "would make a cycle", child->type_name, name);
    char *dup = nbi_strdup(name);
    if (!dup || !grow((void **)&m->children, &m->cap_children, m->n_children,
                      sizeof *m->children)) {
        nbi_free(dup);
        return nnm_oom("nb_module_add");
    }
    m->children[m->n_children++] = (nn_child){dup, child};
    child->parent = m;
    invalidate(m);
    return NB_OK;
}

nb_status nb_module_add(nb_module *m, const char *name, nb_module *child)
{
    return NBI_API_CALL(module_add_impl(m, name, child));
}

static nb_status add_entry(nb_module *m, const char *what, nn_entry **items, int32_t *n,
                           int32_t *cap, const char *name, nb_tensor *t)
{
    char *dup = nbi_strdup(name);
    if (!dup || !grow((void **)items, cap, *n, sizeof **items)) {
        nbi_free(dup);
        return nnm_oom(what);
    }
    (*items)[(*n)++] = (nn_entry){dup, nb_retain(t)};
    invalidate(m);
    return NB_OK;
}

/* A parameter is a leaf that requires grad, like nn.Parameter: registering a float leaf turns
 * requires_grad on (switch it off afterwards to freeze it). */
static nb_status module_add_parameter_impl(nb_module *m, const char *name, nb_tensor *p)
{
    const char *what = "nb_module_add_parameter";
    if (!m || !p)
        return nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", what, m ? "tensor" : "module");
    nb_status st = check_name(m, what, name);
    if (st != NB_OK)
        return st;
    if (!nb_dtype_is_float(nb_tensor_dtype(p)))
        return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: parameter '%s' is %s; parameters must be "
                         "float32 or float64 (register other tensors as buffers)", what, name,
                         nb_dtype_name(nb_tensor_dtype(p)));
    if (!nb_tensor_is_leaf(p))
        return nbi_error(NB_AUTOGRAD, "%s: parameter '%s' is the result of an operation (it has "
                         "a grad_fn); parameters must be leaves (use nb_detach)", what, name);
    if ((st = nb_tensor_set_requires_grad(p, true)) != NB_OK)
        return st;
    return add_entry(m, what, &m->params, &m->n_params, &m->cap_params, name, p);
}

nb_status nb_module_add_parameter(nb_module *m, const char *name, nb_tensor *p)
{
    return NBI_API_CALL(module_add_parameter_impl(m, name, p));
}

static nb_status module_add_buffer_impl(nb_module *m, const char *name, nb_tensor *b)
{
    const char *what = "nb_module_add_buffer";
    if (!m || !b)
        return nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", what, m ? "tensor" : "module");
    nb_status st = check_name(m, what, name);
    if (st != NB_OK)
        return st;
    return add_entry(m, what, &m->buffers, &m->n_buffers, &m->cap_buffers, name, b);
}

nb_status nb_module_add_buffer(nb_module *m, const char *name, nb_tensor *b)
{
    return NBI_API_CALL(module_add_buffer_impl(m, name, b));
}

/* Direct children by name, or a dotted path through them ("features.0"). */
nb_module *nb_module_child(const nb_module *m, const char *name)
{
    if (!m || !name)
        return NULL;
    const char *dot = strchr(name, '.');
    size_t len = dot ? (size_t)(dot - name) : strlen(name);
    for (int32_t i = 0; i < m->n_children; i++)
        if (strlen(m->children[i].name) == len && memcmp(m->children[i].name, name, len) == 0)
            return dot ? nb_module_child(m->children[i].m, dot + 1) : m->children[i].m;
    return NULL;
}

void *nb_module_user(const nb_module *m) { return m ? m->user : NULL; }

bool nb_module_is_training(const nb_module *m) { return m && m->training; }

static nb_status module_train_impl(nb_module *m, bool training)
{
    if (!m)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_train: module is NULL");
    m->training = training;
    for (int32_t i = 0; i < m->n_children; i++)
        nb_module_train(m->children[i].m, training);
    return NB_OK;
}

nb_status nb_module_train(nb_module *m, bool training)
{
    return NBI_API_CALL(module_train_impl(m, training));
}

/* ---- the dotted views ---- */

typedef struct flat_builder {
    nn_flat *f;
    int32_t cap;
    bool dedup; /* parameters list a shared tensor once, as named_parameters() does */
} flat_builder;

static bool flat_push(flat_builder *b, const char *prefix, nn_entry *e)
{
    nn_flat *f = b->f;
    if (b->dedup)
        for (int32_t i = 0; i < f->n; i++)
            if (f->entries[i]->t == e->t)
                return true;
    if (f->n == b->cap) {
        int32_t cap = b->cap ? b->cap * 2 : 16;
        char **names = nbi_realloc(f->names, (size_t)cap * sizeof *names);
        if (!names)
            return false;
        f->names = names;
        nn_entry **entries = nbi_realloc(f->entries, (size_t)cap * sizeof *entries);
        if (!entries)
            return false;
        f->entries = entries;
        b->cap = cap;
    }
    size_t lp = strlen(prefix), ln = strlen(e->name);
    char *name = nbi_malloc(lp + ln + 1);
    if (!name)
        return false;
    memcpy(name, prefix, lp);
    memcpy(name + lp, e->name, ln + 1);
    f->names[f->n] = name;
    f->entries[f->n++] = e;
    return true;
}

/* Depth first in registration order: a module's own parameters (then its buffers, for the
 * state), then each child's, as state_dict() orders them. */
static bool flat_walk(nb_module *m, char *prefix, size_t plen, flat_builder *params,
                      flat_builder *state)
{
    for (int32_t i = 0; i < m->n_params; i++)
        if (!flat_push(params, prefix, &m->params[i]) || !flat_push(state, prefix, &m->params[i]))
            return false;
    for (int32_t i = 0; i < m->n_buffers; i++)
        if (!flat_push(state, prefix, &m->buffers[i]))
            return false;
    for (int32_t i = 0; i < m->n_children; i++) {
        size_t ln = strlen(m->children[i].name);
        char *sub = nbi_malloc(plen + ln + 2);
        if (!sub)
            return false;
        memcpy(sub, prefix, plen);
        memcpy(sub + plen, m->children[i].name, ln);
        sub[plen + ln] = '.';
        sub[plen + ln + 1] = '\0';
        bool ok = flat_walk(m->children[i].m, sub, plen + ln + 1, params, state);
        nbi_free(sub);
        if (!ok)
            return false;
    }
    return true;
}

static bool ensure_flat(const nb_module *cm)
{
    nb_module *m = (nb_module *)cm; /* the views are a cache; building them changes nothing */
    if (m->flat_ok)
        return true;
    flat_clear(&m->flat_params);
    flat_clear(&m->flat_state);
    flat_builder params = {&m->flat_params, 0, true}, state = {&m->flat_state, 0, false};
    char empty[1] = "";
    if (!flat_walk(m, empty, 0, &params, &state)) {
        flat_clear(&m->flat_params);
        flat_clear(&m->flat_state);
        nnm_oom("module parameters");
        return false;
    }
    m->flat_ok = true;
    return true;
}

int32_t nb_module_parameter_count(const nb_module *m)
{
    if (!m) {
        nbi_error(NB_NULL_ARGUMENT, "nb_module_parameter_count: module is NULL");
        return -1;
    }
    return ensure_flat(m) ? m->flat_params.n : -1;
}

static bool check_index(const nb_module *m, const char *what, int32_t i, const nn_flat **f,
                        bool state)
{
    if (!m) {
        nbi_error(NB_NULL_ARGUMENT, "%s: module is NULL", what);
        return false;
    }
    if (!ensure_flat(m))
        return false;
    *f = state ? &m->flat_state : &m->flat_params;
    if (i < 0 || i >= (*f)->n) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: index %d out of range: %s has %d %s", what, i,
                  m->type_name, (*f)->n, state ? "state tensors" : "parameters");
        return false;
    }
    return true;
}

nb_tensor *nb_module_parameter(const nb_module *m, int32_t i)
{
    const nn_flat *f;
    return check_index(m, "nb_module_parameter", i, &f, false) ? f->entries[i]->t : NULL;
}

const char *nb_module_parameter_name(const nb_module *m, int32_t i)
{
    const nn_flat *f;
    return check_index(m, "nb_module_parameter_name", i, &f, false) ? f->names[i] : NULL;
}

int32_t nb_module_state_count(const nb_module *m)
{
    if (!m) {
        nbi_error(NB_NULL_ARGUMENT, "nb_module_state_count: module is NULL");
        return -1;
    }
    return ensure_flat(m) ? m->flat_state.n : -1;
}

nb_tensor *nb_module_state(const nb_module *m, int32_t i, const char **name)
{
    const nn_flat *f;
    if (!check_index(m, "nb_module_state", i, &f, true)) {
        if (name)
            *name = NULL;
        return NULL;
    }
    if (name)
        *name = f->names[i];
    return f->entries[i]->t;
}

static nb_status module_zero_grad_impl(nb_module *m)
{
    if (!m)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_zero_grad: module is NULL");
    for (int32_t i = 0; i < m->n_params; i++)
        nb_tensor_zero_grad(m->params[i].t);
    for (int32_t i = 0; i < m->n_children; i++)
        nb_module_zero_grad(m->children[i].m);
    return NB_OK;
}

nb_status nb_module_zero_grad(nb_module *m)
{
    return NBI_API_CALL(module_zero_grad_impl(m));
}

/* ---- moving to a device ----
 * The public ops cannot re-home a tensor object, so a move gives the module new parameter and
 * buffer tensors (same requires_grad, gradient moved along). Create optimizers after
 * nb_module_to, as PyTorch's documentation also asks; objects already on the device are kept. */

typedef struct move_pair {
    nb_tensor *from, *to;
} move_pair;

typedef struct move_plan {
    move_pair *pairs;
    int32_t n, cap;
} move_plan;

static nb_status plan_moves(nb_module *m, const char *device, move_plan *plan)
{
    nn_entry *lists[2] = {m->params, m->buffers};
    int32_t counts[2] = {m->n_params, m->n_buffers};
    for (int l = 0; l < 2; l++)
        for (int32_t i = 0; i < counts[l]; i++) {
            nb_tensor *t = lists[l][i].t;
            bool seen = false;
            for (int32_t k = 0; k < plan->n && !seen; k++)
                seen = plan->pairs[k].from == t;
            if (seen)
                continue;
            nb_tensor *moved = nb_to_device(t, device);
            if (!moved)
                return nbi_last_or(NB_DEVICE_ERROR, "nb_module_to: moving a tensor failed");
            if (moved == t) {
                nb_release(moved);
                continue;
            }
            nb_status st = NB_OK;
            if (nb_tensor_requires_grad(t))
                st = nb_tensor_set_requires_grad(moved, true);
            nb_tensor *g = nb_tensor_grad(t), *mg = NULL;
            if (st == NB_OK && g) {
                mg = nb_to_device(g, device);
                st = mg ? nb_tensor_set_grad(moved, mg) : nb_last_status();
            }
            nb_release(g);
            nb_release(mg);
            if (st == NB_OK && !grow((void **)&plan->pairs, &plan->cap, plan->n,
                                     sizeof *plan->pairs))
                st = nnm_oom("nb_module_to");
            if (st != NB_OK) {
                nb_release(moved);
                return st;
            }
            plan->pairs[plan->n++] = (move_pair){t, moved};
        }
    for (int32_t i = 0; i < m->n_children; i++) {
        nb_status st = plan_moves(m->children[i].m, device, plan);
        if (st != NB_OK)
            return st;
    }
    return NB_OK;
}

static void apply_moves(nb_module *m, const move_plan *plan)
{
    nn_entry *lists[2] = {m->params, m->buffers};
    int32_t counts[2] = {m->n_params, m->n_buffers};
    for (int l = 0; l < 2; l++)
        for (int32_t i = 0; i < counts[l]; i++)
            for (int32_t k = 0; k < plan->n; k++)
                if (plan->pairs[k].from == lists[l][i].t) {
                    nb_release(lists[l][i].t);
                    lists[l][i].t = nb_retain(plan->pairs[k].to);
                    break;
                }
    for (int32_t i = 0; i < m->n_children; i++)
        apply_moves(m->children[i].m, plan);
}

static nb_status module_to_impl(nb_module *m, const char *device)
{
    if (!m || !device)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_to: %s is NULL", m ? "device" : "module");
    char canon[64];
    nb_status st = nb_device_parse(device, canon, sizeof canon);
    if (st != NB_OK)
        return st;
    move_plan plan = {0};
    /* every tensor is moved before any is replaced: a failure leaves the module as it was */
    nb_no_grad_begin();
    st = plan_moves(m, canon, &plan);
    nb_no_grad_end();
    if (st == NB_OK)
        apply_moves(m, &plan);
    for (int32_t k = 0; k < plan.n; k++)
        nb_release(plan.pairs[k].to);
    nbi_free(plan.pairs);
    return st;
}

nb_status nb_module_to(nb_module *m, const char *device)
{
    return NBI_API_CALL(module_to_impl(m, device));
}

/* ====================== hooks, apply, named modules, kinds ====================== */

typedef struct nn_hook {
    struct nn_hook *next;
    int64_t id;
    nb_forward_pre_hook_fn pre; /* one of pre and post is set */
    nb_forward_hook_fn post;
    void *ctx;
} nn_hook;

static int64_t next_hook_id = 1;

static void hooks_free(nb_module *m)
{
    for (nn_hook *h = m->hooks, *n; h; h = n) {
        n = h->next;
        nbi_free(h);
    }
    m->hooks = NULL;
}

static int64_t add_hook(nb_module *m, const char *what, nb_forward_pre_hook_fn pre,
                        nb_forward_hook_fn post, void *ctx)
{
    if (!m || (!pre && !post)) {
        nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", what, m ? "hook" : "module");
        return -1;
    }
    nn_hook *h = nbi_calloc(1, sizeof *h);
    if (!h) {
        nnm_oom(what);
        return -1;
    }
    *h = (nn_hook){NULL, next_hook_id++, pre, post, ctx};
    nn_hook **tail = &m->hooks;
    while (*tail)
        tail = &(*tail)->next;
    *tail = h;
    return h->id;
}

int64_t nb_module_register_forward_pre_hook(nb_module *m, nb_forward_pre_hook_fn fn, void *ctx)
{
    return add_hook(m, "nb_module_register_forward_pre_hook", fn, NULL, ctx);
}

int64_t nb_module_register_forward_hook(nb_module *m, nb_forward_hook_fn fn, void *ctx)
{
    return add_hook(m, "nb_module_register_forward_hook", NULL, fn, ctx);
}

nb_status nb_module_remove_hook(nb_module *m, int64_t handle)
{
    if (!m)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_remove_hook: module is NULL");
    for (nn_hook **p = &m->hooks; *p; p = &(*p)->next)
        if ((*p)->id == handle) {
            nn_hook *h = *p;
            *p = h->next;
            nbi_free(h);
            return NB_OK;
        }
    return nbi_error(NB_INVALID_ARGUMENT, "nb_module_remove_hook: %s has no hook with handle "
                     "%lld", m->type_name, (long long)handle);
}

/* A hook is application code, called like a forward function (see user_forward): what it
 * returns replaces the input or output; NULL keeps it. */
nb_tensor *nnm_hooked_forward(nb_module *m, const nb_tensor *x)
{
    nb_tensor *in = nb_retain((nb_tensor *)x);
    for (nn_hook *h = m->hooks; h && in; h = h->next) {
        if (!h->pre)
            continue;
        nbi_user_call saved = nbi_call_user_begin();
        nb_tensor *r = h->pre(m, in, h->ctx);
        nbi_call_user_end(saved);
        if (r) {
            nbi_scope_untrack(r);
            nb_release(in);
            in = r;
        }
    }
    nb_tensor *out = in ? nnm_forward_of(m, in) : NULL;
    for (nn_hook *h = m->hooks; h && out; h = h->next) {
        if (!h->post)
            continue;
        nbi_user_call saved = nbi_call_user_begin();
        nb_tensor *r = h->post(m, in, out, h->ctx);
        nbi_call_user_end(saved);
        if (r) {
            nbi_scope_untrack(r);
            nb_release(out);
            out = r;
        }
    }
    nb_release(in);
    return out;
}

nb_tensor *nnm_call(nb_module *m, const nb_tensor *x)
{
    return m->hooks ? nnm_hooked_forward(m, x) : nnm_forward_of(m, x);
}

/* Module.apply: children first, then the module itself; stops at the first error. */
nb_status nb_module_apply(nb_module *m, nb_module_apply_fn fn, void *ctx)
{
    if (!m || !fn)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_apply: %s is NULL", m ? "fn" : "module");
    for (int32_t i = 0; i < m->n_children; i++) {
        nb_status st = nb_module_apply(m->children[i].m, fn, ctx);
        if (st != NB_OK)
            return st;
    }
    nbi_user_call saved = nbi_call_user_begin();
    nb_status st = fn(m, ctx);
    nbi_call_user_end(saved);
    return st;
}

const char *nb_module_type(const nb_module *m) { return m ? m->type_name : NULL; }

static int32_t count_modules(const nb_module *m)
{
    int32_t n = 1;
    for (int32_t i = 0; i < m->n_children; i++)
        n += count_modules(m->children[i].m);
    return n;
}

int32_t nb_module_named_count(const nb_module *m)
{
    if (!m) {
        nbi_error(NB_NULL_ARGUMENT, "nb_module_named_count: module is NULL");
        return -1;
    }
    return count_modules(m);
}

/* The k-th module in named_modules() order (pre-order, the root first as ""), its dotted name
 * appended to buf at *used. */
static const nb_module *find_named(const nb_module *m, int32_t *k, char *buf, size_t len,
                                   size_t used)
{
    if ((*k)-- == 0) {
        if (used < len)
            buf[used] = '\0';
        return m;
    }
    for (int32_t i = 0; i < m->n_children; i++) {
        size_t u = used;
        if (u && u < len)
            buf[u++] = '.';
        int w = u < len ? snprintf(buf + u, len - u, "%s", m->children[i].name) : 0;
        const nb_module *r = find_named(m->children[i].m, k, buf, len, u + (size_t)w);
        if (r)
            return r;
    }
    return NULL;
}

nb_module *nb_module_named(const nb_module *m, int32_t i, char *name, size_t len)
{
    if (!m || !name || len == 0) {
        nbi_error(NB_NULL_ARGUMENT, "nb_module_named: %s is %s", m ? "name buffer" : "module",
                  m && name ? "empty" : "NULL");
        return NULL;
    }
    int32_t n = count_modules(m);
    if (i < 0 || i >= n) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "nb_module_named: index %d out of range: %s has %d "
                  "modules (itself included)", i, m->type_name, n);
        return NULL;
    }
    name[0] = '\0';
    int32_t k = i;
    return (nb_module *)find_named(m, &k, name, len, 0);
}

nb_module *nbi_module_new_kind(const nbi_module_kind *kind, const void *cfg, size_t cfg_size)
{
    nb_module *m = nnm_alloc(kind->type_name, NN_EXT);
    if (!m)
        return NULL;
    m->ext = kind;
    if (cfg_size) {
        m->ext_cfg = nbi_malloc(cfg_size);
        if (!m->ext_cfg) {
            nb_module_free(m);
            nnm_oom(kind->type_name);
            return NULL;
        }
        memcpy(m->ext_cfg, cfg, cfg_size);
    }
    return m;
}

nb_tensor *nbi_module_own(const nb_module *m, const char *name)
{
    for (int32_t i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return m->params[i].t;
    for (int32_t i = 0; i < m->n_buffers; i++)
        if (strcmp(m->buffers[i].name, name) == 0)
            return m->buffers[i].t;
    return NULL;
}
