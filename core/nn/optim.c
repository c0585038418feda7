/* optim.c - optimizers with torch.optim's update rules (SGD, Adam, AdamW, RMSprop), run under
 * no-grad with in-place public ops or, where the device has them, the fused "sgd_step" and
 * "adam_step" kernels; and the StepLR and CosineAnnealingLR schedulers (closed forms). */
#include "nabla_layer.h"

#include <math.h>
#include <string.h>

typedef enum optim_kind { OPT_SGD, OPT_ADAM, OPT_ADAMW, OPT_RMSPROP } optim_kind;

static const char *const optim_names[] = {"SGD", "Adam", "AdamW", "RMSprop"};

struct nb_optim {
    optim_kind kind;
    int32_t n;
    nb_tensor **params; /* strong */
    /* per-parameter state, created on a parameter's first step:
     *   SGD: s1 momentum_buffer; Adam/AdamW: s1 exp_avg, s2 exp_avg_sq;
     *   RMSprop: s1 square_avg, s2 momentum_buffer */
    nb_tensor **s1, **s2;
    int64_t *steps;
    double lr, momentum, dampening, weight_decay;
    bool nesterov;
    double beta1, beta2, eps, alpha;
    /* schedulers driving this optimizer: freeing it detaches them */
    nb_lr_scheduler **scheds;
    int32_t n_scheds, cap_scheds;
};

typedef enum sched_kind { SCHED_STEP, SCHED_COSINE } sched_kind;

struct nb_lr_scheduler {
    sched_kind kind;
    nb_optim *opt; /* borrowed; NULL once the optimizer is freed */
    double base_lr;
    int64_t epoch;
    int64_t step_size;
    double gamma;
    int64_t t_max;
    double eta_min;
};

/* ============================== construction ============================== */

static bool bad_number(double v) { return !(v >= 0) || isinf(v); }

static nb_optim *optim_new(const char *what, optim_kind kind, nb_tensor *const *params,
                           int32_t n, double lr)
{
    if (!params) {
        nbi_error(NB_NULL_ARGUMENT, "%s: params is NULL", what);
        return NULL;
    }
    if (n <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: got %d parameters; an optimizer needs at least one",
                  what, n);
        return NULL;
    }
    if (bad_number(lr)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid learning rate %g; expected lr >= 0", what,
                  lr);
        return NULL;
    }
    for (int32_t i = 0; i < n; i++) {
        nb_tensor *p = params[i];
        if (!p) {
            nbi_error(NB_NULL_ARGUMENT, "%s: parameter %d is NULL", what, i);
            return NULL;
        }
        if (!nb_dtype_is_float(nb_tensor_dtype(p))) {
            nbi_error(NB_DTYPE_UNSUPPORTED, "%s: parameter %d is %s; only float32 and float64 "
                      "tensors can be optimized", what, i, nb_dtype_name(nb_tensor_dtype(p)));
            return NULL;
        }
        if (!nb_tensor_is_leaf(p)) {
            nbi_error(NB_AUTOGRAD, "%s: parameter %d is not a leaf (it has a grad_fn); can't "
                      "optimize a non-leaf tensor", what, i);
            return NULL;
        }
        for (int32_t j = 0; j < i; j++)
            if (params[j] == p) {
                nbi_error(NB_INVALID_ARGUMENT, "%s: parameters %d and %d are the same tensor; "
                          "each parameter may appear once", what, j, i);
                return NULL;
            }
    }
    nb_optim *o = nbi_calloc(1, sizeof *o);
    if (o) {
        o->params = nbi_calloc((size_t)n, sizeof *o->params);
        o->s1 = nbi_calloc((size_t)n, sizeof *o->s1);
        o->s2 = nbi_calloc((size_t)n, sizeof *o->s2);
        o->steps = nbi_calloc((size_t)n, sizeof *o->steps);
    }
    if (!o || !o->params || !o->s1 || !o->s2 || !o->steps) {
        if (o) {
            nbi_free(o->params);
            nbi_free(o->s1);
            nbi_free(o->s2);
            nbi_free(o->steps);
            nbi_free(o);
        }
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory for %d parameters", what, n);
        return NULL;
    }
    o->kind = kind;
    o->n = n;
    o->lr = lr;
    for (int32_t i = 0; i < n; i++)
        o->params[i] = nb_retain(params[i]);
    return o;
}

static nb_optim *sgd_new_impl(nb_tensor *const *params, int32_t n, nb_sgd_opts opts)
{
    const char *what = "nb_sgd_new";
    if (bad_number(opts.momentum)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid momentum %g; expected momentum >= 0", what,
                  opts.momentum);
        return NULL;
    }
    if (bad_number(opts.weight_decay)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid weight_decay %g; expected weight_decay >= 0",
                  what, opts.weight_decay);
        return NULL;
    }
    if (isnan(opts.dampening) || isinf(opts.dampening)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid dampening %g", what, opts.dampening);
        return NULL;
    }
    if (opts.nesterov && (opts.momentum <= 0 || opts.dampening != 0)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: nesterov momentum requires a momentum and zero "
                  "dampening (got momentum %g, dampening %g)", what, opts.momentum,
                  opts.dampening);
        return NULL;
    }
    nb_optim *o = optim_new(what, OPT_SGD, params, n, opts.lr);
    if (o) {
        o->momentum = opts.momentum;
        o->dampening = opts.dampening;
        o->weight_decay = opts.weight_decay;
        o->nesterov = opts.nesterov;
    }
    return o;
}

nb_optim *nb_sgd_new(nb_tensor *const *params, int32_t n, nb_sgd_opts opts)
{
    return NBI_API_CALL(sgd_new_impl(params, n, opts));
}

/* The zero fields replaced by PyTorch's defaults (the as_given = false reading). */
static nb_adam_opts adam_fill(nb_adam_opts o, bool adamw)
{
    o.lr = o.lr ? o.lr : 1e-3;
    o.beta1 = o.beta1 ? o.beta1 : 0.9;
    o.beta2 = o.beta2 ? o.beta2 : 0.999;
    o.eps = o.eps ? o.eps : 1e-8;
    o.weight_decay = o.weight_decay ? o.weight_decay : adamw ? 1e-2 : 0;
    o.as_given = true;
    return o;
}

nb_adam_opts nb_adam_defaults(void) { return adam_fill((nb_adam_opts){0}, false); }
nb_adam_opts nb_adamw_defaults(void) { return adam_fill((nb_adam_opts){0}, true); }

static nb_rmsprop_opts rmsprop_fill(nb_rmsprop_opts o)
{
    o.lr = o.lr ? o.lr : 1e-2;
    o.alpha = o.alpha ? o.alpha : 0.99;
    o.eps = o.eps ? o.eps : 1e-8;
    o.as_given = true;
    return o;
}

nb_rmsprop_opts nb_rmsprop_defaults(void) { return rmsprop_fill((nb_rmsprop_opts){0}); }

static nb_optim *adam_new(const char *what, optim_kind kind, nb_tensor *const *params,
                          int32_t n, nb_adam_opts opts)
{
    if (!opts.as_given)
        opts = adam_fill(opts, kind == OPT_ADAMW);
    double lr = opts.lr, b1 = opts.beta1, b2 = opts.beta2, eps = opts.eps, wd = opts.weight_decay;
    if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid betas (%g, %g); each must be in [0, 1)",
                  what, b1, b2);
        return NULL;
    }
    if (bad_number(eps)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid epsilon %g; expected eps >= 0", what, eps);
        return NULL;
    }
    if (bad_number(wd)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid weight_decay %g; expected weight_decay >= 0",
                  what, wd);
        return NULL;
    }
    nb_optim *o = optim_new(what, kind, params, n, lr);
    if (o) {
        o->beta1 = b1;
        o->beta2 = b2;
        o->eps = eps;
        o->weight_decay = wd;
    }
    return o;
}

nb_optim *nb_adam_new(nb_tensor *const *params, int32_t n, nb_adam_opts opts)
{
    return NBI_API_CALL(adam_new("nb_adam_new", OPT_ADAM, params, n, opts));
}

nb_optim *nb_adamw_new(nb_tensor *const *params, int32_t n, nb_adam_opts opts)
{
    return NBI_API_CALL(adam_new("nb_adamw_new", OPT_ADAMW, params, n, opts));
}

static nb_optim *rmsprop_new_impl(nb_tensor *const *params, int32_t n, nb_rmsprop_opts opts)
{
    const char *what = "nb_rmsprop_new";
    if (!opts.as_given)
        opts = rmsprop_fill(opts);
    double lr = opts.lr, alpha = opts.alpha, eps = opts.eps;
    if (!(alpha >= 0 && alpha <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: invalid alpha %g; expected alpha in [0, 1]", what,
                  alpha);
        return NULL;
    }
    if (bad_number(eps) || bad_number(opts.momentum) || bad_number(opts.weight_decay)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: eps %g, momentum %g, weight_decay %g; each must be "
                  ">= 0", what, eps, opts.momentum, opts.weight_decay);
        return NULL;
    }
    nb_optim *o = optim_new(what, OPT_RMSPROP, params, n, lr);
    if (o) {
        o->alpha = alpha;
        o->eps = eps;
        o->momentum = opts.momentum;
        o->weight_decay = opts.weight_decay;
    }
    return o;
}

nb_optim *nb_rmsprop_new(nb_tensor *const *params, int32_t n, nb_rmsprop_opts opts)
{
    return NBI_API_CALL(rmsprop_new_impl(params, n, opts));
}

static nb_optim *sgd_new_for_impl(const nb_module *m, nb_sgd_opts opts)
{
    if (!m) {
        nbi_error(NB_NULL_ARGUMENT, "nb_sgd_new_for: module is NULL");
        return NULL;
    }
    int32_t n = nb_module_parameter_count(m);
    if (n < 0)
        return NULL;
    if (n == 0) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_sgd_new_for: the module has no parameters");
        return NULL;
    }
    nb_tensor **ps = nbi_malloc((size_t)n * sizeof *ps);
    if (!ps) {
        nbi_error(NB_OUT_OF_MEMORY, "nb_sgd_new_for: out of host memory");
        return NULL;
    }
    for (int32_t i = 0; i < n; i++)
        ps[i] = nb_module_parameter(m, i);
    nb_optim *o = nb_sgd_new(ps, n, opts);
    nbi_free(ps);
    return o;
}

nb_optim *nb_sgd_new_for(const nb_module *m, nb_sgd_opts opts)
{
    return NBI_API_CALL(sgd_new_for_impl(m, opts));
}

static void optim_free_impl(nb_optim *o)
{
    if (!o)
        return;
    for (int32_t i = 0; i < o->n_scheds; i++)
        o->scheds[i]->opt = NULL;
    for (int32_t i = 0; i < o->n; i++) {
        nb_release(o->params[i]);
        nb_release(o->s1[i]);
        nb_release(o->s2[i]);
    }
    nbi_free(o->scheds);
    nbi_free(o->params);
    nbi_free(o->s1);
    nbi_free(o->s2);
    nbi_free(o->steps);
    nbi_free(o);
}

void nb_optim_free(nb_optim *o)
{
    NBI_API_VOID(optim_free_impl(o));
}

/* ============================== steps ============================== */

/* Temporaries of one parameter's update, released together whatever happened. */
typedef struct tmps {
    nb_tensor *t[8];
    int n;
} tmps;

static nb_tensor *keep(tmps *k, nb_tensor *t)
{
    if (t)
        k->t[k->n++] = t;
    return t;
}

static void drop(tmps *k)
{
    for (int i = 0; i < k->n; i++)
        nb_release(k->t[i]);
    k->n = 0;
}

static nb_status failed(void) { return nbi_last_or(NB_OUT_OF_MEMORY, "optimizer step failed"); }

/* d = g + wd * p, or g itself (borrowed) without weight decay. */
static nb_tensor *with_decay(tmps *k, nb_tensor *g, nb_tensor *p, double wd)
{
    if (wd == 0)
        return g;
    nb_tensor *s = keep(k, nb_mul_scalar(p, wd));
    return s ? keep(k, nb_add(g, s)) : NULL;
}

static bool fused(nb_optim *o, nb_tensor *p, nb_tensor *g, const char *op)
{
    return nb_tensor_dtype(g) == nb_tensor_dtype(p) && nbi_has_kernel(p, op);
}

/* torch.optim.SGD: d = g + wd p; buf = d on the first step, else momentum buf + (1 - dampening)
 * d; d = d + momentum buf (nesterov) or buf; p -= lr d. */
static nb_status sgd_update(nb_optim *o, int32_t i, nb_tensor *p, nb_tensor *g)
{
    bool use_buf = o->momentum != 0, first = !o->s1[i];
    if (fused(o, p, g, "sgd_step")) {
        if (use_buf && first && !(o->s1[i] = nb_empty_like(p)))
            return failed();
        nb_tensor *in[2] = {g, o->s1[i]};
        double f[4] = {o->lr, o->momentum, o->dampening, o->weight_decay};
        int64_t iv[2] = {o->nesterov, first};
        nb_status st = nbi_run("sgd_step", p, in, use_buf ? 2 : 1, f, 4, iv, 2);
        if (st != NB_OK && first) { /* the buffer holds nothing yet */
            nb_release(o->s1[i]);
            o->s1[i] = NULL;
        }
        return st;
    }
    tmps k = {0};
    nb_status st = NB_OK;
    nb_tensor *d = with_decay(&k, g, p, o->weight_decay);
    if (!d)
        st = failed();
    if (st == NB_OK && use_buf) {
        if (first) {
            if (!(o->s1[i] = nb_clone(d)))
                st = failed();
        } else if ((st = nb_mul_scalar_(o->s1[i], o->momentum)) == NB_OK) {
            st = nb_add_scaled_(o->s1[i], d, 1 - o->dampening);
        }
        if (st == NB_OK && o->nesterov) {
            nb_tensor *mb = keep(&k, nb_mul_scalar(o->s1[i], o->momentum));
            d = mb ? keep(&k, nb_add(d, mb)) : NULL;
            if (!d)
                st = failed();
        } else if (st == NB_OK) {
            d = o->s1[i];
        }
    }
    if (st == NB_OK)
        st = nb_add_scaled_(p, d, -o->lr);
    drop(&k);
    return st;
}

/* torch.optim.Adam / AdamW: (AdamW: p *= 1 - lr wd; Adam: g += wd p); m = b1 m + (1 - b1) g;
 * v = b2 v + (1 - b2) g^2; p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
static nb_status adam_update(nb_optim *o, int32_t i, nb_tensor *p, nb_tensor *g)
{
    if (!o->s1[i]) {
        o->s1[i] = nb_zeros_like(p);
        o->s2[i] = nb_zeros_like(p);
        if (!o->s1[i] || !o->s2[i]) {
            nb_release(o->s1[i]);
            nb_release(o->s2[i]);
            o->s1[i] = o->s2[i] = NULL;
            return failed();
        }
    }
    int64_t step = o->steps[i] + 1;
    bool decoupled = o->kind == OPT_ADAMW;
    nb_status st;
    if (fused(o, p, g, "adam_step")) {
        nb_tensor *in[3] = {g, o->s1[i], o->s2[i]};
        double f[5] = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay};
        int64_t iv[2] = {step, decoupled};
        st = nbi_run("adam_step", p, in, 3, f, 5, iv, 2);
    } else {
        tmps k = {0};
        nb_tensor *m = o->s1[i], *v = o->s2[i];
        st = NB_OK;
        if (decoupled && o->weight_decay != 0)
            st = nb_mul_scalar_(p, 1 - o->lr * o->weight_decay);
        nb_tensor *d = st == NB_OK ? with_decay(&k, g, p, decoupled ? 0 : o->weight_decay) : NULL;
        nb_tensor *g2 = d ? keep(&k, nb_mul(d, d)) : NULL;
        if (!g2)
            st = failed();
        if (st == NB_OK && (st = nb_mul_scalar_(m, o->beta1)) == NB_OK)
            st = nb_add_scaled_(m, d, 1 - o->beta1);
        if (st == NB_OK && (st = nb_mul_scalar_(v, o->beta2)) == NB_OK)
            st = nb_add_scaled_(v, g2, 1 - o->beta2);
        double bc1 = 1 - pow(o->beta1, (double)step), bc2 = 1 - pow(o->beta2, (double)step);
        nb_tensor *denom = st == NB_OK ? keep(&k, nb_sqrt(v)) : NULL;
        if (st == NB_OK && !denom)
            st = failed();
        if (st == NB_OK && (st = nb_div_scalar_(denom, sqrt(bc2))) == NB_OK)
            st = nb_add_scalar_(denom, o->eps);
        nb_tensor *upd = st == NB_OK ? keep(&k, nb_div(m, denom)) : NULL;
        if (st == NB_OK && !upd)
            st = failed();
        if (st == NB_OK)
            st = nb_add_scaled_(p, upd, -o->lr / bc1);
        drop(&k);
    }
    if (st == NB_OK)
        o->steps[i] = step;
    return st;
}

/* torch.optim.RMSprop (not centered): g += wd p; sq = alpha sq + (1 - alpha) g^2;
 * avg = sqrt(sq) + eps; buf = momentum buf + g / avg, p -= lr buf (momentum > 0), or
 * p -= lr g / avg. */
static nb_status rmsprop_update(nb_optim *o, int32_t i, nb_tensor *p, nb_tensor *g)
{
    bool use_buf = o->momentum > 0;
    if (!o->s1[i]) {
        o->s1[i] = nb_zeros_like(p);
        o->s2[i] = use_buf ? nb_zeros_like(p) : NULL;
        if (!o->s1[i] || (use_buf && !o->s2[i])) {
            nb_release(o->s1[i]);
            nb_release(o->s2[i]);
            o->s1[i] = o->s2[i] = NULL;
            return failed();
        }
    }
    tmps k = {0};
    nb_status st = NB_OK;
    nb_tensor *sq = o->s1[i];
    nb_tensor *d = with_decay(&k, g, p, o->weight_decay);
    nb_tensor *g2 = d ? keep(&k, nb_mul(d, d)) : NULL;
    if (!g2)
        st = failed();
    if (st == NB_OK && (st = nb_mul_scalar_(sq, o->alpha)) == NB_OK)
        st = nb_add_scaled_(sq, g2, 1 - o->alpha);
    nb_tensor *avg = st == NB_OK ? keep(&k, nb_sqrt(sq)) : NULL;
    if (st == NB_OK && !avg)
        st = failed();
    if (st == NB_OK)
        st = nb_add_scalar_(avg, o->eps);
    nb_tensor *q = st == NB_OK ? keep(&k, nb_div(d, avg)) : NULL;
    if (st == NB_OK && !q)
        st = failed();
    if (st == NB_OK && use_buf) {
        if ((st = nb_mul_scalar_(o->s2[i], o->momentum)) == NB_OK &&
            (st = nb_add_(o->s2[i], q)) == NB_OK)
            st = nb_add_scaled_(p, o->s2[i], -o->lr);
    } else if (st == NB_OK) {
        st = nb_add_scaled_(p, q, -o->lr);
    }
    drop(&k);
    if (st == NB_OK)
        o->steps[i]++;
    return st;
}

static nb_status optim_step_impl(nb_optim *o)
{
    if (!o)
        return nbi_error(NB_NULL_ARGUMENT, "nb_optim_step: optimizer is NULL");
    /* Every gradient must match its parameter before any parameter moves: the fused kernels
     * read a gradient as if it had the parameter's shape and dtype. */
    for (int32_t i = 0; i < o->n; i++) {
        const nb_tensor *p = o->params[i], *g = nbi_grad_of(p);
        if (g && (nb_tensor_ndim(g) != nb_tensor_ndim(p) ||
                  memcmp(nbi_dims(g), nbi_dims(p), (size_t)nb_tensor_ndim(p) * sizeof(int64_t)) ||
                  nb_tensor_dtype(g) != nb_tensor_dtype(p) || !nbi_same_device(g, p)))
            return nbi_error(NB_SHAPE_MISMATCH, "nb_optim_step: parameter %d is %s %s on %s but "
                             "its gradient is %s %s on %s (expected the same shape, dtype and "
                             "device)", i, nb_dtype_name(nb_tensor_dtype(p)), NBI_SHAPE_STR(p),
                             nb_tensor_device(p), nb_dtype_name(nb_tensor_dtype(g)),
                             NBI_SHAPE_STR(g), nb_tensor_device(g));
    }
    nb_status st = NB_OK;
    nb_no_grad_begin();
    for (int32_t i = 0; i < o->n && st == NB_OK; i++) {
        nb_tensor *p = o->params[i];
        nb_tensor *g = nb_tensor_grad(p);
        if (!g) /* no gradient: this parameter took no part, as in PyTorch */
            continue;
        switch (o->kind) {
        case OPT_SGD: st = sgd_update(o, i, p, g); break;
        case OPT_ADAM:
        case OPT_ADAMW: st = adam_update(o, i, p, g); break;
        case OPT_RMSPROP: st = rmsprop_update(o, i, p, g); break;
        }
        nb_release(g);
        if (st != NB_OK)
            nbi_last_or(st, "optimizer step failed");
    }
    nb_no_grad_end();
    return st;
}

nb_status nb_optim_step(nb_optim *o)
{
    return NBI_API_CALL(optim_step_impl(o));
}

static nb_status optim_zero_grad_impl(nb_optim *o)
{
    if (!o)
        return nbi_error(NB_NULL_ARGUMENT, "nb_optim_zero_grad: optimizer is NULL");
    for (int32_t i = 0; i < o->n; i++)
        nb_tensor_zero_grad(o->params[i]);
    return NB_OK;
}

nb_status nb_optim_zero_grad(nb_optim *o)
{
    return NBI_API_CALL(optim_zero_grad_impl(o));
}

double nb_optim_lr(const nb_optim *o)
{
    if (!o) {
        nbi_error(NB_NULL_ARGUMENT, "nb_optim_lr: optimizer is NULL");
        return NAN;
    }
    return o->lr;
}

static nb_status optim_set_lr_impl(nb_optim *o, double lr)
{
    if (!o)
        return nbi_error(NB_NULL_ARGUMENT, "nb_optim_set_lr: optimizer is NULL");
    if (bad_number(lr))
        return nbi_error(NB_INVALID_ARGUMENT, "nb_optim_set_lr: invalid learning rate %g for %s; "
                         "expected lr >= 0", lr, optim_names[o->kind]);
    o->lr = lr;
    return NB_OK;
}

nb_status nb_optim_set_lr(nb_optim *o, double lr)
{
    return NBI_API_CALL(optim_set_lr_impl(o, lr));
}

/* ============================== schedulers ============================== */

static nb_lr_scheduler *sched_new(const char *what, nb_optim *o, sched_kind kind)
{
    if (!o) {
        nbi_error(NB_NULL_ARGUMENT, "%s: optimizer is NULL", what);
        return NULL;
    }
    nb_lr_scheduler *s = nbi_calloc(1, sizeof *s);
    if (!s || o->n_scheds == o->cap_scheds) {
        int32_t cap = o->cap_scheds ? o->cap_scheds * 2 : 2;
        nb_lr_scheduler **p = s ? nbi_realloc(o->scheds, (size_t)cap * sizeof *p) : NULL;
        if (!p) {
            nbi_free(s);
            nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
            return NULL;
        }
        o->scheds = p;
        o->cap_scheds = cap;
    }
    o->scheds[o->n_scheds++] = s;
    s->kind = kind;
    s->opt = o;
    s->base_lr = o->lr; /* PyTorch's initial_lr: the lr when the scheduler was made */
    return s;
}

static nb_lr_scheduler *step_lr_new_impl(nb_optim *o, int64_t step_size, double gamma)
{
    const char *what = "nb_step_lr_new";
    if (step_size <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: step_size=%lld must be positive", what,
                  (long long)step_size);
        return NULL;
    }
    if (bad_number(gamma)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: gamma=%g must be a number >= 0", what, gamma);
        return NULL;
    }
    nb_lr_scheduler *s = sched_new(what, o, SCHED_STEP);
    if (s) {
        s->step_size = step_size;
        s->gamma = gamma;
    }
    return s;
}

nb_lr_scheduler *nb_step_lr_new(nb_optim *o, int64_t step_size, double gamma)
{
    return NBI_API_CALL(step_lr_new_impl(o, step_size, gamma));
}

static nb_lr_scheduler *cosine_annealing_lr_new_impl(nb_optim *o, int64_t t_max, double eta_min)
{
    const char *what = "nb_cosine_annealing_lr_new";
    if (t_max <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: T_max=%lld must be positive", what,
                  (long long)t_max);
        return NULL;
    }
    if (bad_number(eta_min)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: eta_min=%g must be a number >= 0", what, eta_min);
        return NULL;
    }
    nb_lr_scheduler *s = sched_new(what, o, SCHED_COSINE);
    if (s) {
        s->t_max = t_max;
        s->eta_min = eta_min;
    }
    return s;
}

nb_lr_scheduler *nb_cosine_annealing_lr_new(nb_optim *o, int64_t t_max, double eta_min)
{
    return NBI_API_CALL(cosine_annealing_lr_new_impl(o, t_max, eta_min));
}

static nb_status lr_scheduler_step_impl(nb_lr_scheduler *s)
{
    if (!s)
        return nbi_error(NB_NULL_ARGUMENT, "nb_lr_scheduler_step: scheduler is NULL");
    if (!s->opt)
        return nbi_error(NB_STATE, "nb_lr_scheduler_step: the scheduler's optimizer was freed");
    int64_t e = ++s->epoch;
    double lr;
    if (s->kind == SCHED_STEP)
        lr = s->base_lr * pow(s->gamma, (double)(e / s->step_size));
    else
        lr = s->eta_min + (s->base_lr - s->eta_min) *
                              (1 + cos(M_PI * (double)e / (double)s->t_max)) / 2;
    if (lr < 0) /* rounding when eta_min is 0 */
        lr = 0;
    return nb_optim_set_lr(s->opt, lr);
}

nb_status nb_lr_scheduler_step(nb_lr_scheduler *s)
{
    return NBI_API_CALL(lr_scheduler_step_impl(s));
}

static void lr_scheduler_free_impl(nb_lr_scheduler *s)
{
    if (!s)
        return;
    nb_optim *o = s->opt;
    for (int32_t i = 0; o && i < o->n_scheds; i++)
        if (o->scheds[i] == s) {
            o->scheds[i] = o->scheds[--o->n_scheds];
            break;
        }
    nbi_free(s);
}

void nb_lr_scheduler_free(nb_lr_scheduler *s)
{
    NBI_API_VOID(lr_scheduler_free_impl(s));
}

/* ============================== state save and restore ==============================
 * The per-parameter state as named tensors, torch.optim's state_dict() flattened:
 * "state.<i>.<buffer>" (momentum_buffer, exp_avg, exp_avg_sq, square_avg), "state.<i>.step"
 * (float64 0-d, as PyTorch keeps it) and "param_groups.0.lr", so that a resumed run continues
 * the moments and bias corrections exactly. */

static const char *state_name(const nb_optim *o, int which)
{
    switch (o->kind) {
    case OPT_SGD: return which == 0 ? "momentum_buffer" : NULL;
    case OPT_ADAM:
    case OPT_ADAMW: return which == 0 ? "exp_avg" : "exp_avg_sq";
    case OPT_RMSPROP: return which == 0 ? "square_avg" : "momentum_buffer";
    }
    return NULL;
}

static nb_status optim_save_impl(const nb_optim *o, const char *path)
{
    int32_t cap = 3 * o->n + 1, n = 0;
    nb_tensor **ts = nbi_calloc((size_t)cap, sizeof *ts);
    char **names = nbi_calloc((size_t)cap, sizeof *names);
    nb_status st = ts && names ? NB_OK : nbi_error(NB_OUT_OF_MEMORY, "nb_optim_save: out of "
                                                   "host memory");
    for (int32_t i = 0; i < o->n && st == NB_OK; i++) {
        if (o->steps[i] == 0)
            continue;
        nb_tensor *bufs[3] = {o->s1[i], o->s2[i], NULL};
        const char *bn[3] = {state_name(o, 0), state_name(o, 1), "step"};
        for (int k = 0; k < 3 && st == NB_OK; k++) {
            nb_tensor *t = k == 2 ? nb_scalar((double)o->steps[i], (nb_opts){NB_DTYPE_F64, "cpu"})
                                  : (bufs[k] ? nb_retain(bufs[k]) : NULL);
            if (k == 2 && !t)
                st = nb_last_status();
            if (!t)
                continue;
            char buf[96];
            snprintf(buf, sizeof buf, "state.%d.%s", i, bn[k]);
            ts[n] = t;
            names[n] = nbi_strdup(buf);
            if (!names[n++])
                st = nbi_error(NB_OUT_OF_MEMORY, "nb_optim_save: out of host memory");
        }
    }
    if (st == NB_OK) {
        ts[n] = nb_scalar(o->lr, (nb_opts){NB_DTYPE_F64, "cpu"});
        names[n] = nbi_strdup("param_groups.0.lr");
        st = ts[n] && names[n] ? NB_OK : nbi_last_or(NB_OUT_OF_MEMORY, "nb_optim_save failed");
        n++;
    }
    if (st == NB_OK)
        st = nb_safetensors_save(path, ts, (const char *const *)names, n);
    for (int32_t k = 0; k < cap && ts && names; k++) {
        nb_release(ts[k]);
        nbi_free(names[k]);
    }
    nbi_free(ts);
    nbi_free(names);
    return st;
}

nb_status nb_optim_save(const nb_optim *o, const char *path)
{
    if (!o || !path)
        return nbi_error(NB_NULL_ARGUMENT, "nb_optim_save: %s is NULL", o ? "path" : "optimizer");
    return NBI_API_CALL(optim_save_impl(o, path));
}

/* Everything is checked (names, parameter indices, shapes) before the state is replaced. */
static nb_status optim_load_impl(nb_optim *o, const char *path)
{
    const char *what = "nb_optim_load";
    nb_tensor **ts;
    char **names;
    int32_t n;
    nb_status st = nb_safetensors_load(path, "cpu", &ts, &names, &n);
    if (st != NB_OK)
        return st;
    int32_t *pi = nbi_calloc((size_t)(n ? n : 1), sizeof *pi);
    int *slot = nbi_calloc((size_t)(n ? n : 1), sizeof *slot); /* 0, 1: buffers; 2 step; 3 lr */
    if (!pi || !slot)
        st = nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
    for (int32_t k = 0; k < n && st == NB_OK; k++) {
        if (strcmp(names[k], "param_groups.0.lr") == 0) {
            slot[k] = 3;
            continue;
        }
        int idx = -1, used = 0;
        char rest[64] = "";
        if (sscanf(names[k], "state.%d.%63s%n", &idx, rest, &used) != 2 || idx < 0 ||
            idx >= o->n) {
            st = nbi_error(NB_FORMAT, "%s: '%s' has tensor '%s'; expected state.<i>.<name> with "
                           "i below %d, or param_groups.0.lr", what, path, names[k], o->n);
            break;
        }
        pi[k] = idx;
        slot[k] = strcmp(rest, "step") == 0 ? 2
                  : state_name(o, 0) && strcmp(rest, state_name(o, 0)) == 0 ? 0
                  : state_name(o, 1) && strcmp(rest, state_name(o, 1)) == 0 ? 1 : -1;
        if (slot[k] < 0) {
            st = nbi_error(NB_FORMAT, "%s: '%s' has '%s', which a %s optimizer does not keep",
                           what, path, names[k], optim_names[o->kind]);
            break;
        }
        if (slot[k] < 2) {
            nb_shape a = nb_tensor_shape(ts[k]), b = nb_tensor_shape(o->params[idx]);
            if (a.ndim != b.ndim || memcmp(a.dims, b.dims, (size_t)a.ndim * sizeof *a.dims))
                st = nbi_error(NB_SHAPE_MISMATCH, "%s: '%s': %s does not have the shape of "
                               "parameter %d", what, path, names[k], idx);
        } else if (nb_tensor_numel(ts[k]) != 1) {
            st = nbi_error(NB_FORMAT, "%s: '%s': %s must hold one number", what, path, names[k]);
        }
    }
    if (st == NB_OK) {
        /* the old state goes; parameters the checkpoint does not name start fresh */
        for (int32_t i = 0; i < o->n; i++) {
            nb_release(o->s1[i]);
            nb_release(o->s2[i]);
            o->s1[i] = o->s2[i] = NULL;
            o->steps[i] = 0;
        }
        for (int32_t k = 0; k < n && st == NB_OK; k++) {
            double v = 0;
            if (slot[k] >= 2) {
                st = nb_item(ts[k], &v);
                if (st == NB_OK && slot[k] == 2)
                    o->steps[pi[k]] = (int64_t)v;
                else if (st == NB_OK)
                    o->lr = v;
                continue;
            }
            nb_tensor *p = o->params[pi[k]];
            nb_tensor *dst = nb_zeros_like(p);
            st = dst ? nb_tensor_copy_(dst, ts[k]) : nb_last_status();
            nb_tensor **into = slot[k] == 0 ? &o->s1[pi[k]] : &o->s2[pi[k]];
            nb_release(*into);
            *into = st == NB_OK ? dst : NULL;
            if (st != NB_OK)
                nb_release(dst);
        }
    }
    nbi_free(pi);
    nbi_free(slot);
    nb_safetensors_free(ts, names, n);
    return st;
}

nb_status nb_optim_load(nb_optim *o, const char *path)
{
    if (!o || !path)
        return nbi_error(NB_NULL_ARGUMENT, "nb_optim_load: %s is NULL", o ? "path" : "optimizer");
    return NBI_API_CALL(optim_load_impl(o, path));
}

/* ============================== parameters (for GradScaler) ============================== */

int32_t nb_optim_param_count(const nb_optim *o)
{
    if (!o) {
        nbi_error(NB_NULL_ARGUMENT, "nb_optim_param_count: optimizer is NULL");
        return -1;
    }
    return o->n;
}

nb_tensor *nb_optim_param(const nb_optim *o, int32_t i)
{
    if (!o) {
        nbi_error(NB_NULL_ARGUMENT, "nb_optim_param: optimizer is NULL");
        return NULL;
    }
    if (i < 0 || i >= o->n) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "nb_optim_param: index %d out of range for %d "
                  "parameters", i, o->n);
        return NULL;
    }
    return o->params[i];
}
