/* nn.c - modules: named children, parameters and buffers, train/eval, moving between devices,
 * PyTorch's repr; and the built-in layers (Linear, Conv2d, MaxPool2d, ReLU, Sigmoid, Tanh,
 * Flatten, Dropout, BatchNorm1d/2d, Sequential), all written on the public ops. */
#include "nabla_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum nn_kind {
    NN_USER,
    NN_LINEAR,
    NN_CONV2D,
    NN_MAXPOOL2D,
    NN_RELU,
    NN_SIGMOID,
    NN_TANH,
    NN_FLATTEN,
    NN_DROPOUT,
    NN_BATCHNORM1D,
    NN_BATCHNORM2D,
    NN_SEQUENTIAL,
    NN_EXT, /* defined under core/nn/ (nbi_module_kind) */
} nn_kind;

typedef struct nn_entry {
    char *name;
    nb_tensor *t; /* strong */
} nn_entry;

typedef struct nn_child {
    char *name;
    nb_module *m; /* owned */
} nn_child;

/* The flattened, dotted view of a subtree. Entries point into the owning modules' arrays, which
 * only move when something is registered, and registering invalidates every ancestor's view. */
typedef struct nn_flat {
    int32_t n;
    char **names;
    nn_entry **entries;
} nn_flat;

struct nb_module {
    char *type_name;
    nn_kind kind;
    nb_forward_fn forward;
    void *user;
    bool training;
    nb_module *parent;
    nn_child *children;
    int32_t n_children, cap_children;
    nn_entry *params;
    int32_t n_params, cap_params;
    nn_entry *buffers;
    int32_t n_buffers, cap_buffers;
    bool flat_ok;
    nn_flat flat_params, flat_state;
    const nbi_module_kind *ext; /* NN_EXT */
    void *ext_cfg;              /* owned */
    struct nn_hook *hooks;      /* forward pre and post hooks, in registration order */
    union {
        struct {
            int64_t in, out;
            bool bias;
        } linear;
        struct {
            int64_t in, out, kh, kw;
            nb_conv2d_opts o; /* normalised: no zeros standing for defaults */
            bool bias;
        } conv;
        nb_pool2d_opts pool; /* normalised stride */
        struct {
            int32_t start, end;
        } flatten;
        double p;
        struct {
            int64_t features;
            double eps, momentum;
        } bn;
    } cfg;
};

static const char *const kind_names[] = {
    [NN_USER] = "Module",       [NN_LINEAR] = "Linear",   [NN_CONV2D] = "Conv2d",
    [NN_MAXPOOL2D] = "MaxPool2d", [NN_RELU] = "ReLU",     [NN_SIGMOID] = "Sigmoid",
    [NN_TANH] = "Tanh",         [NN_FLATTEN] = "Flatten", [NN_DROPOUT] = "Dropout",
    [NN_BATCHNORM1D] = "BatchNorm1d", [NN_BATCHNORM2D] = "BatchNorm2d",
    [NN_SEQUENTIAL] = "Sequential",
};

/* ============================== small helpers ============================== */

static nb_status oom(const char *what)
{
    return nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
}

/* "[1, 400]" into buf, with the public shape accessor. */
static const char *shape_str(const nb_tensor *t, char *buf, size_t len)
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

/* Python's repr() of a float: the shortest digits that read back the same, fixed notation for
 * exponents in [-4, 16), scientific otherwise, and always a '.' or an exponent ("0.5", "1e-05",
 * "0.1", "100000.0"). Module reprs print eps, momentum and p this way. */
static void py_float_repr(double v, char *out, size_t len);
void nbi_py_float_repr(double v, char *out, size_t len) { py_float_repr(v, out, len); }

static void py_float_repr(double v, char *out, size_t len)
{
    if (isnan(v)) {
        snprintf(out, len, "nan");
        return;
    }
    if (isinf(v)) {
        snprintf(out, len, "%s", v < 0 ? "-inf" : "inf");
        return;
    }
    if (v == 0) {
        snprintf(out, len, "%s", signbit(v) ? "-0.0" : "0.0");
        return;
    }
    char sci[40];
    int prec = 0;
    for (; prec < 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, v);
        if (strtod(sci, NULL) == v)
            break;
    }
    /* sci is "-d.ddde+XX": split into sign, digits and exponent */
    bool neg = sci[0] == '-';
    const char *p = sci + neg;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    digits[nd] = '\0';
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        digits[--nd] = '\0';
    char body[40]; /* a double needs at most 24 */
    if (exp10 >= -4 && exp10 < 16) {
        size_t k = 0;
        if (exp10 < 0) {
            k += (size_t)snprintf(body, sizeof body, "0.");
            for (int z = 0; z < -exp10 - 1; z++)
                body[k++] = '0';
            for (int d = 0; d < nd; d++)
                body[k++] = digits[d];
        } else {
            for (int d = 0; d <= exp10; d++)
                body[k++] = d < nd ? digits[d] : '0';
            body[k++] = '.';
            if (nd > exp10 + 1)
                for (int d = exp10 + 1; d < nd; d++)
                    body[k++] = digits[d];
            else
                body[k++] = '0';
        }
        body[k] = '\0';
    } else {
        if (nd > 1)
            snprintf(body, sizeof body, "%c.%se%c%02d", digits[0], digits + 1,
                     exp10 < 0 ? '-' : '+', abs(exp10));
        else
            snprintf(body, sizeof body, "%ce%c%02d", digits[0], exp10 < 0 ? '-' : '+',
                     abs(exp10));
    }
    snprintf(out, len, "%s%s", neg ? "-" : "", body);
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

static nb_module *module_alloc(const char *type_name, nn_kind kind)
{
    nb_module *m = nbi_calloc(1, sizeof *m);
    if (!m) {
        oom("nb_module_new");
        return NULL;
    }
    m->type_name = nbi_strdup(type_name);
    if (!m->type_name) {
        nbi_free(m);
        oom("nb_module_new");
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
    nb_module *m = module_alloc(type_name, NN_USER);
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
        return oom("nb_module_add");
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
        return oom(what);
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
        oom("module parameters");
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
                st = oom("nb_module_to");
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

/* ============================== repr ============================== */

static void fmt_pair(char *buf, size_t len, const int64_t v[2], bool tuple)
{
    if (tuple || v[0] != v[1])
        snprintf(buf, len, "(%lld, %lld)", (long long)v[0], (long long)v[1]);
    else
        snprintf(buf, len, "%lld", (long long)v[0]);
}

/* What PyTorch's extra_repr() gives for each built-in ("" for none). */
static void extra_repr(const nb_module *m, char *buf, size_t len)
{
    char a[48], b[48], c[48];
    buf[0] = '\0';
    switch (m->kind) {
    case NN_LINEAR:
        snprintf(buf, len, "in_features=%lld, out_features=%lld, bias=%s",
                 (long long)m->cfg.linear.in, (long long)m->cfg.linear.out,
                 m->cfg.linear.bias ? "True" : "False");
        break;
    case NN_CONV2D: {
        const nb_conv2d_opts *o = &m->cfg.conv.o;
        size_t k = (size_t)snprintf(buf, len, "%lld, %lld, kernel_size=(%lld, %lld), "
                                    "stride=(%lld, %lld)", (long long)m->cfg.conv.in,
                                    (long long)m->cfg.conv.out, (long long)m->cfg.conv.kh,
                                    (long long)m->cfg.conv.kw, (long long)o->stride[0],
                                    (long long)o->stride[1]);
        if (k < len && o->padding_same)
            k += (size_t)snprintf(buf + k, len - k, ", padding=same");
        else if (k < len && (o->padding[0] || o->padding[1]))
            k += (size_t)snprintf(buf + k, len - k, ", padding=(%lld, %lld)",
                                  (long long)o->padding[0], (long long)o->padding[1]);
        if (k < len && (o->dilation[0] != 1 || o->dilation[1] != 1))
            k += (size_t)snprintf(buf + k, len - k, ", dilation=(%lld, %lld)",
                                  (long long)o->dilation[0], (long long)o->dilation[1]);
        if (k < len && o->groups != 1)
            k += (size_t)snprintf(buf + k, len - k, ", groups=%lld", (long long)o->groups);
        if (k < len && !m->cfg.conv.bias)
            snprintf(buf + k, len - k, ", bias=False");
        break;
    }
    case NN_MAXPOOL2D:
        fmt_pair(a, sizeof a, m->cfg.pool.kernel, false);
        fmt_pair(b, sizeof b, m->cfg.pool.stride, false);
        fmt_pair(c, sizeof c, m->cfg.pool.padding, false);
        {
            int64_t dl[2] = {m->cfg.pool.dilation[0] ? m->cfg.pool.dilation[0] : 1,
                             m->cfg.pool.dilation[1] ? m->cfg.pool.dilation[1] : 1};
            char d[48];
            fmt_pair(d, sizeof d, dl, false);
            snprintf(buf, len, "kernel_size=%s, stride=%s, padding=%s, dilation=%s, "
                     "ceil_mode=%s", a, b, c, d, m->cfg.pool.ceil_mode ? "True" : "False");
        }
        break;
    case NN_FLATTEN:
        snprintf(buf, len, "start_dim=%d, end_dim=%d", m->cfg.flatten.start, m->cfg.flatten.end);
        break;
    case NN_DROPOUT:
        py_float_repr(m->cfg.p, a, sizeof a);
        snprintf(buf, len, "p=%s, inplace=False", a);
        break;
    case NN_BATCHNORM1D:
    case NN_BATCHNORM2D:
        py_float_repr(m->cfg.bn.eps, a, sizeof a);
        py_float_repr(m->cfg.bn.momentum, b, sizeof b);
        snprintf(buf, len, "%lld, eps=%s, momentum=%s, affine=True, track_running_stats=True",
                 (long long)m->cfg.bn.features, a, b);
        break;
    case NN_EXT:
        if (m->ext->extra_repr)
            m->ext->extra_repr(m->ext_cfg, buf, len);
        break;
    default:
        break;
    }
}

/* Module.__repr__: "Name(extra)" for a leaf, otherwise the extra line and "(name): child"
 * lines indented by two, with the child's own later lines indented two more (_addindent). */
static void repr(const nb_module *m, nbi_sbuf *out)
{
    char extra[512];
    extra_repr(m, extra, sizeof extra);
    nbi_sbuf_puts(out, m->type_name);
    nbi_sbuf_puts(out, "(");
    if (m->n_children == 0) {
        nbi_sbuf_puts(out, extra);
    } else {
        if (extra[0]) {
            nbi_sbuf_puts(out, "\n  ");
            nbi_sbuf_puts(out, extra);
        }
        for (int32_t i = 0; i < m->n_children; i++) {
            nbi_sbuf_puts(out, "\n  (");
            nbi_sbuf_puts(out, m->children[i].name);
            nbi_sbuf_puts(out, "): ");
            nbi_sbuf sub = {0};
            repr(m->children[i].m, &sub);
            if (sub.oom)
                out->oom = true;
            for (size_t k = 0; k < sub.n; k++) {
                nbi_sbuf_putn(out, &sub.p[k], 1);
                if (sub.p[k] == '\n')
                    nbi_sbuf_puts(out, "  ");
            }
            nbi_free(sub.p);
        }
        nbi_sbuf_puts(out, "\n");
    }
    nbi_sbuf_puts(out, ")");
}

static char *module_str_impl(const nb_module *m)
{
    if (!m) {
        nbi_error(NB_NULL_ARGUMENT, "nb_module_str: module is NULL");
        return NULL;
    }
    nbi_sbuf b = {0};
    repr(m, &b);
    if (b.oom) {
        nbi_free(b.p);
        oom("nb_module_str");
        return NULL;
    }
    return b.p;
}

char *nb_module_str(const nb_module *m)
{
    return NBI_API_CALL(module_str_impl(m));
}

/* ============================== forward ============================== */

static nb_tensor *forward_of(nb_module *m, const nb_tensor *x);
static nb_tensor *module_call(nb_module *m, const nb_tensor *x);

static bool check_input(const nb_module *m, const nb_tensor *x)
{
    if (x)
        return true;
    /* an op upstream failed: keep its error, as ops given NULL do */
    nbi_last_or(NB_NULL_ARGUMENT, "nb_module_forward: input is NULL");
    (void)m;
    return false;
}

static nb_tensor *linear_forward(nb_module *m, const nb_tensor *x)
{
    int64_t in = m->cfg.linear.in;
    if (nb_tensor_ndim(x) < 1 || nb_tensor_size(x, -1) != in) {
        char s[160];
        nbi_error(NB_SHAPE_MISMATCH, "Linear(in_features=%lld, out_features=%lld): input of "
                  "shape %s, expected the last dim to be %lld", (long long)in,
                  (long long)m->cfg.linear.out, shape_str(x, s, sizeof s), (long long)in);
        return NULL;
    }
    return nb_linear(x, m->params[0].t, m->cfg.linear.bias ? m->params[1].t : NULL);
}

/* Conv2d, MaxPool2d and BatchNorm take an unbatched (C, H, W) input as a batch of one. */
static nb_tensor *batched(nb_module *m, const nb_tensor *x,
                          nb_tensor *(*fn)(nb_module *, const nb_tensor *))
{
    if (nb_tensor_ndim(x) != 3)
        return fn(m, x);
    nb_tensor *x4 = nb_unsqueeze(x, 0);
    nb_tensor *y4 = x4 ? fn(m, x4) : NULL;
    nb_tensor *y = y4 ? nb_squeeze(y4, 0) : NULL;
    nb_release(x4);
    nb_release(y4);
    return y;
}

static nb_tensor *conv_forward4(nb_module *m, const nb_tensor *x)
{
    return nb_conv2d(x, m->params[0].t, m->cfg.conv.bias ? m->params[1].t : NULL, m->cfg.conv.o);
}

static nb_tensor *conv_forward(nb_module *m, const nb_tensor *x)
{
    int32_t nd = nb_tensor_ndim(x);
    if ((nd != 3 && nd != 4) || nb_tensor_size(x, -3) != m->cfg.conv.in) {
        char s[160];
        nbi_error(NB_SHAPE_MISMATCH, "Conv2d(%lld, %lld): input of shape %s, expected (N, %lld, "
                  "H, W) or (%lld, H, W)", (long long)m->cfg.conv.in, (long long)m->cfg.conv.out,
                  shape_str(x, s, sizeof s), (long long)m->cfg.conv.in,
                  (long long)m->cfg.conv.in);
        return NULL;
    }
    return batched(m, x, conv_forward4);
}

static nb_tensor *pool_forward4(nb_module *m, const nb_tensor *x)
{
    return nb_max_pool2d(x, m->cfg.pool);
}

static nb_tensor *pool_forward(nb_module *m, const nb_tensor *x)
{
    int32_t nd = nb_tensor_ndim(x);
    if (nd != 3 && nd != 4) {
        char s[160];
        nbi_error(NB_SHAPE_MISMATCH, "MaxPool2d: input of shape %s, expected (N, C, H, W) or "
                  "(C, H, W)", shape_str(x, s, sizeof s));
        return NULL;
    }
    return batched(m, x, pool_forward4);
}

static nb_tensor *bn_forward(nb_module *m, const nb_tensor *x)
{
    int32_t nd = nb_tensor_ndim(x);
    bool two_d = m->kind == NN_BATCHNORM2D;
    bool ok_rank = two_d ? nd == 4 : (nd == 2 || nd == 3);
    int64_t c = m->cfg.bn.features;
    char s[160];
    if (!ok_rank) {
        nbi_error(NB_SHAPE_MISMATCH, "%s(%lld): expected %s input, got shape %s",
                  m->type_name, (long long)c, two_d ? "4D (N, C, H, W)" : "2D (N, C) or 3D "
                  "(N, C, L)", shape_str(x, s, sizeof s));
        return NULL;
    }
    if (nb_tensor_size(x, 1) != c) {
        nbi_error(NB_SHAPE_MISMATCH, "%s(%lld): input of shape %s has %lld channels in dim 1, "
                  "expected %lld", m->type_name, (long long)c, shape_str(x, s, sizeof s),
                  (long long)nb_tensor_size(x, 1), (long long)c);
        return NULL;
    }
    if (m->training && nb_tensor_numel(x) / c <= 1) {
        nbi_error(NB_INVALID_ARGUMENT, "%s(%lld): expected more than 1 value per channel when "
                  "training, got input of shape %s", m->type_name, (long long)c,
                  shape_str(x, s, sizeof s));
        return NULL;
    }
    /* params: weight, bias; buffers: running_mean, running_var, num_batches_tracked */
    nb_tensor *y = nb_batch_norm(x, m->buffers[0].t, m->buffers[1].t, m->params[0].t,
                                 m->params[1].t, m->training, m->cfg.bn.momentum, m->cfg.bn.eps);
    if (y && m->training) {
        nb_no_grad_begin();
        nb_status st = nb_add_scalar_(m->buffers[2].t, 1);
        nb_no_grad_end();
        if (st != NB_OK) {
            nb_release(y);
            return NULL;
        }
    }
    return y;
}

static nb_tensor *sequential_forward(nb_module *m, const nb_tensor *x)
{
    nb_tensor *h = nb_retain((nb_tensor *)x);
    for (int32_t i = 0; i < m->n_children && h; i++) {
        nb_tensor *next = module_call(m->children[i].m, h);
        nb_release(h);
        h = next;
    }
    return h;
}

static nb_tensor *user_forward(nb_module *m, const nb_tensor *x)
{
    if (!m->forward) {
        nbi_error(NB_STATE, "nb_module_forward: %s was created without a forward function",
                  m->type_name);
        return NULL;
    }
    /* application code: it runs at API depth 0 with its own scopes, and what it returns comes
     * back to the core, out of whatever scope it was tracked in */
    nbi_user_call saved = nbi_call_user_begin();
    nb_tensor *y = m->forward(m, x);
    nbi_call_user_end(saved);
    nbi_scope_untrack(y);
    if (!y)
        nbi_last_or(NB_STATE, "nb_module_forward: the forward function returned NULL without "
                    "an error");
    return y;
}

static nb_tensor *forward_of(nb_module *m, const nb_tensor *x)
{
    if (!check_input(m, x))
        return NULL;
    switch (m->kind) {
    case NN_USER: return user_forward(m, x);
    case NN_LINEAR: return linear_forward(m, x);
    case NN_CONV2D: return conv_forward(m, x);
    case NN_MAXPOOL2D: return pool_forward(m, x);
    case NN_RELU: return nb_relu(x);
    case NN_SIGMOID: return nb_sigmoid(x);
    case NN_TANH: return nb_tanh(x);
    case NN_FLATTEN: return nb_flatten(x, m->cfg.flatten.start, m->cfg.flatten.end);
    case NN_DROPOUT: return nb_dropout(x, m->cfg.p, m->training);
    case NN_BATCHNORM1D:
    case NN_BATCHNORM2D: return bn_forward(m, x);
    case NN_SEQUENTIAL: return sequential_forward(m, x);
    case NN_EXT: return m->ext->forward(m, x, m->ext_cfg);
    }
    nbi_error(NB_STATE, "nb_module_forward: unknown module kind");
    return NULL;
}

static nb_tensor *hooked_forward(nb_module *m, const nb_tensor *x);

static nb_tensor *module_forward_impl(nb_module *m, const nb_tensor *x)
{
    if (!m) {
        nbi_last_or(NB_NULL_ARGUMENT, "nb_module_forward: module is NULL");
        return NULL;
    }
    return module_call(m, x);
}

nb_tensor *nb_module_forward(nb_module *m, const nb_tensor *x)
{
    return NBI_API(module_forward_impl(m, x));
}

/* ============================== built-in layers ============================== */

static bool check_param_opts(const char *what, nb_opts opts)
{
    if (opts.dtype < 0 || opts.dtype >= NB_DTYPE_COUNT || !nb_dtype_is_float(opts.dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: parameters must be float32 or float64, got dtype "
                  "%s", what, opts.dtype >= 0 && opts.dtype < NB_DTYPE_COUNT ?
                  nb_dtype_name(opts.dtype) : "(invalid)");
        return false;
    }
    return true;
}

/* uniform(-bound, bound) from the global generator, requiring grad. */
static nb_status add_uniform_param(nb_module *m, const char *name, nb_shape shape, double bound,
                                   nb_opts opts)
{
    opts.requires_grad = true;
    nb_tensor *p = nb_uniform(-bound, bound, shape, opts);
    if (!p)
        return nbi_last_or(NB_OUT_OF_MEMORY, "creating a parameter failed");
    nb_status st = nb_module_add_parameter(m, name, p);
    nb_release(p);
    return st;
}

static nb_module *linear_new_impl(int64_t in_features, int64_t out_features, bool bias, nb_opts opts)
{
    if (in_features <= 0 || out_features <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_linear_new: in_features=%lld, out_features=%lld; "
                  "both must be positive", (long long)in_features, (long long)out_features);
        return NULL;
    }
    if (!check_param_opts("nb_linear_new", opts))
        return NULL;
    nb_module *m = module_alloc("Linear", NN_LINEAR);
    if (!m)
        return NULL;
    m->cfg.linear.in = in_features;
    m->cfg.linear.out = out_features;
    m->cfg.linear.bias = bias;
    /* kaiming_uniform(a=sqrt(5)) reduces to bound 1/sqrt(fan_in); the bias uses the same */
    double bound = 1.0 / sqrt((double)in_features);
    nb_status st = add_uniform_param(m, "weight", NB_SHAPE(out_features, in_features), bound,
                                     opts);
    if (st == NB_OK && bias)
        st = add_uniform_param(m, "bias", NB_SHAPE(out_features), bound, opts);
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_linear_new(int64_t in_features, int64_t out_features, bool bias, nb_opts opts)
{
    return NBI_API_CALL(linear_new_impl(in_features, out_features, bias, opts));
}

static nb_module *conv2d_new_impl(int64_t in_channels, int64_t out_channels, int64_t kh, int64_t kw,
                         nb_conv2d_opts conv, bool bias, nb_opts opts)
{
    const char *what = "nb_conv2d_new";
    if (in_channels <= 0 || out_channels <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: in_channels=%lld, out_channels=%lld; both must be "
                  "positive", what, (long long)in_channels, (long long)out_channels);
        return NULL;
    }
    if (kh <= 0 || kw <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: kernel_size=(%lld, %lld); both must be positive",
                  what, (long long)kh, (long long)kw);
        return NULL;
    }
    for (int d = 0; d < 2; d++)
        if (conv.stride[d] < 0 || conv.padding[d] < 0 || conv.dilation[d] < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: stride=(%lld, %lld), padding=(%lld, %lld), "
                      "dilation=(%lld, %lld); none may be negative (0 means the default for "
                      "stride and dilation)", what, (long long)conv.stride[0],
                      (long long)conv.stride[1], (long long)conv.padding[0],
                      (long long)conv.padding[1], (long long)conv.dilation[0],
                      (long long)conv.dilation[1]);
            return NULL;
        }
    int64_t groups = conv.groups ? conv.groups : 1;
    if (groups < 0 || in_channels % groups || out_channels % groups) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: groups=%lld must be positive and divide "
                  "in_channels=%lld and out_channels=%lld", what, (long long)groups,
                  (long long)in_channels, (long long)out_channels);
        return NULL;
    }
    if (!check_param_opts(what, opts))
        return NULL;
    nb_module *m = module_alloc("Conv2d", NN_CONV2D);
    if (!m)
        return NULL;
    for (int d = 0; d < 2; d++) {
        conv.stride[d] = conv.stride[d] ? conv.stride[d] : 1;
        conv.dilation[d] = conv.dilation[d] ? conv.dilation[d] : 1;
    }
    conv.groups = groups;
    m->cfg.conv.in = in_channels;
    m->cfg.conv.out = out_channels;
    m->cfg.conv.kh = kh;
    m->cfg.conv.kw = kw;
    m->cfg.conv.o = conv;
    m->cfg.conv.bias = bias;
    double bound = 1.0 / sqrt((double)(in_channels / groups * kh * kw));
    nb_status st = add_uniform_param(m, "weight",
                                     NB_SHAPE(out_channels, in_channels / groups, kh, kw), bound,
                                     opts);
    if (st == NB_OK && bias)
        st = add_uniform_param(m, "bias", NB_SHAPE(out_channels), bound, opts);
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_conv2d_new(int64_t in_channels, int64_t out_channels, int64_t kh, int64_t kw, nb_conv2d_opts conv, bool bias, nb_opts opts)
{
    return NBI_API_CALL(conv2d_new_impl(in_channels, out_channels, kh, kw, conv, bias, opts));
}

static nb_module *max_pool2d_new_impl(nb_pool2d_opts opts)
{
    const char *what = "nb_max_pool2d_new";
    for (int d = 0; d < 2; d++) {
        if (opts.kernel[d] <= 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: kernel_size=(%lld, %lld); both must be positive",
                      what, (long long)opts.kernel[0], (long long)opts.kernel[1]);
            return NULL;
        }
        if (opts.stride[d] < 0 || opts.padding[d] < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: stride=(%lld, %lld), padding=(%lld, %lld); none "
                      "may be negative (stride 0 means the kernel size)", what,
                      (long long)opts.stride[0], (long long)opts.stride[1],
                      (long long)opts.padding[0], (long long)opts.padding[1]);
            return NULL;
        }
        if (opts.padding[d] > opts.kernel[d] / 2) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: padding=(%lld, %lld) should be at most half of "
                      "kernel_size=(%lld, %lld)", what, (long long)opts.padding[0],
                      (long long)opts.padding[1], (long long)opts.kernel[0],
                      (long long)opts.kernel[1]);
            return NULL;
        }
    }
    nb_module *m = module_alloc("MaxPool2d", NN_MAXPOOL2D);
    if (!m)
        return NULL;
    for (int d = 0; d < 2; d++)
        opts.stride[d] = opts.stride[d] ? opts.stride[d] : opts.kernel[d];
    m->cfg.pool = opts;
    return m;
}

nb_module *nb_max_pool2d_new(nb_pool2d_opts opts)
{
    return NBI_API_CALL(max_pool2d_new_impl(opts));
}

static nb_module *relu_new_impl(void) { return module_alloc("ReLU", NN_RELU); }
static nb_module *sigmoid_new_impl(void) { return module_alloc("Sigmoid", NN_SIGMOID); }
static nb_module *tanh_new_impl(void) { return module_alloc("Tanh", NN_TANH); }

/* The dims are checked against each input's rank at forward time, as nn.Flatten does. */
static nb_module *flatten_new_impl(int32_t start_dim, int32_t end_dim)
{
    nb_module *m = module_alloc("Flatten", NN_FLATTEN);
    if (m) {
        m->cfg.flatten.start = start_dim;
        m->cfg.flatten.end = end_dim;
    }
    return m;
}

nb_module *nb_flatten_new(int32_t start_dim, int32_t end_dim)
{
    return NBI_API_CALL(flatten_new_impl(start_dim, end_dim));
}

nb_module *nb_tanh_new(void)
{
    return NBI_API_CALL(tanh_new_impl());
}

nb_module *nb_sigmoid_new(void)
{
    return NBI_API_CALL(sigmoid_new_impl());
}

nb_module *nb_relu_new(void)
{
    return NBI_API_CALL(relu_new_impl());
}

static nb_module *dropout_new_impl(double p)
{
    if (!(p >= 0 && p <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_dropout_new: dropout probability has to be between 0 "
                  "and 1, but got %g", p);
        return NULL;
    }
    nb_module *m = module_alloc("Dropout", NN_DROPOUT);
    if (m)
        m->cfg.p = p;
    return m;
}

nb_module *nb_dropout_new(double p)
{
    return NBI_API_CALL(dropout_new_impl(p));
}

/* eps and momentum of 0 mean PyTorch's defaults (1e-5, 0.1), like the zero-valued options
 * elsewhere in the API. */
static nb_module *batch_norm_new(const char *what, nn_kind kind, int64_t features, double eps,
                                 double momentum, nb_opts opts)
{
    if (features <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: num_features=%lld must be positive", what,
                  (long long)features);
        return NULL;
    }
    if (!(eps >= 0) || isinf(eps)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: eps=%g must be a positive number (0 means 1e-05)",
                  what, eps);
        return NULL;
    }
    if (!(momentum >= 0 && momentum <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: momentum=%g must be in [0, 1] (0 means 0.1)", what,
                  momentum);
        return NULL;
    }
    if (!check_param_opts(what, opts))
        return NULL;
    nb_module *m = module_alloc(kind_names[kind], kind);
    if (!m)
        return NULL;
    m->cfg.bn.features = features;
    m->cfg.bn.eps = eps > 0 ? eps : 1e-5;
    m->cfg.bn.momentum = momentum > 0 ? momentum : 0.1;
    nb_opts param = opts, buf = opts;
    param.requires_grad = true;
    buf.requires_grad = false;
    nb_opts count = {.dtype = NB_DTYPE_I64, .device = opts.device};
    nb_tensor *t[5] = {
        nb_ones(NB_SHAPE(features), param),
        nb_zeros(NB_SHAPE(features), param),
        nb_zeros(NB_SHAPE(features), buf),
        nb_ones(NB_SHAPE(features), buf),
        nb_zeros(NB_SHAPE_SCALAR, count),
    };
    static const char *const names[5] = {"weight", "bias", "running_mean", "running_var",
                                          "num_batches_tracked"};
    nb_status st = NB_OK;
    for (int k = 0; k < 5 && st == NB_OK; k++) {
        if (!t[k])
            st = nbi_last_or(NB_OUT_OF_MEMORY, "creating a BatchNorm tensor failed");
        else
            st = k < 2 ? nb_module_add_parameter(m, names[k], t[k])
                       : nb_module_add_buffer(m, names[k], t[k]);
    }
    for (int k = 0; k < 5; k++)
        nb_release(t[k]);
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_batch_norm1d_new(int64_t features, double eps, double momentum, nb_opts opts)
{
    return NBI_API_CALL(batch_norm_new("nb_batch_norm1d_new", NN_BATCHNORM1D, features, eps, momentum, opts));
}

nb_module *nb_batch_norm2d_new(int64_t features, double eps, double momentum, nb_opts opts)
{
    return NBI_API_CALL(batch_norm_new("nb_batch_norm2d_new", NN_BATCHNORM2D, features, eps, momentum, opts));
}

/* Takes ownership whatever happens, so nested constructor calls cannot leak: on failure every
 * child it was given (and owns) is freed. A child that already has a parent is not ours and is
 * left alone. */
static nb_module *sequential_new_impl(nb_module *const *children, int32_t n)
{
    const char *what = "nb_sequential_new";
    nb_status st = NB_OK;
    if (n < 0)
        st = nbi_error(NB_INVALID_ARGUMENT, "%s: n=%d must not be negative", what, n);
    else if (n > 0 && !children)
        st = nbi_error(NB_NULL_ARGUMENT, "%s: children is NULL with n=%d", what, n);
    for (int32_t i = 0; st == NB_OK && i < n; i++) {
        if (!children[i])
            st = nbi_last_or(NB_NULL_ARGUMENT, "nb_sequential_new: a child is NULL");
        else if (children[i]->parent)
            st = nbi_error(NB_INVALID_ARGUMENT, "%s: child %d (%s) already belongs to a %s", what,
                           i, children[i]->type_name, children[i]->parent->type_name);
        for (int32_t j = 0; st == NB_OK && j < i; j++)
            if (children[j] == children[i])
                st = nbi_error(NB_INVALID_ARGUMENT, "%s: children %d and %d are the same %s; a "
                               "module has one parent", what, j, i, children[i]->type_name);
    }
    nb_module *m = st == NB_OK ? module_alloc("Sequential", NN_SEQUENTIAL) : NULL;
    for (int32_t i = 0; m && i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "%d", i);
        if (nb_module_add(m, name, children[i]) != NB_OK) {
            nb_module_free(m); /* frees the children added so far */
            m = NULL;
            for (int32_t j = i; j < n; j++)
                nb_module_free(children[j]);
            return NULL;
        }
    }
    if (!m && n > 0 && children) {
        for (int32_t i = 0; i < n; i++) {
            bool dup = false;
            for (int32_t j = 0; j < i && !dup; j++)
                dup = children[j] == children[i];
            if (!dup && children[i] && !children[i]->parent)
                nb_module_free(children[i]);
        }
    }
    return m;
}

nb_module *nb_sequential_new(nb_module *const *children, int32_t n)
{
    return NBI_API_CALL(sequential_new_impl(children, n));
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
        oom(what);
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
static nb_tensor *hooked_forward(nb_module *m, const nb_tensor *x)
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
    nb_tensor *out = in ? forward_of(m, in) : NULL;
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

static nb_tensor *module_call(nb_module *m, const nb_tensor *x)
{
    return m->hooks ? hooked_forward(m, x) : forward_of(m, x);
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
    nb_module *m = module_alloc(kind->type_name, NN_EXT);
    if (!m)
        return NULL;
    m->ext = kind;
    if (cfg_size) {
        m->ext_cfg = nbi_malloc(cfg_size);
        if (!m->ext_cfg) {
            nb_module_free(m);
            oom(kind->type_name);
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
