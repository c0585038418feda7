/* grad_scaler.c - torch.amp.GradScaler: dynamic loss scaling for float16 training. The scale
 * and its growth tracker follow _amp_update_scale_; the per-optimizer stages (ready, unscaled,
 * stepped) follow GradScaler's OptState, so misuse fails as PyTorch's RuntimeErrors do. */
#include "nn_common.h"

typedef enum opt_stage { STAGE_READY, STAGE_UNSCALED, STAGE_STEPPED } opt_stage;

/* What one optimizer went through since the last update. */
typedef struct opt_state {
    const nb_optim *opt;
    opt_stage stage;
    bool found_inf;
} opt_state;

struct nb_grad_scaler {
    float scale; /* float32, as PyTorch's _scale tensor */
    double growth_factor, backoff_factor;
    int64_t growth_interval;
    int64_t growth_tracker; /* good steps in a row */
    bool enabled;
    int64_t skipped;
    opt_state *opts;
    int32_t n_opts, cap_opts;
};

static nb_grad_scaler *scaler_new_impl(nb_grad_scaler_opts o)
{
    const char *op = "nb_grad_scaler_new";
    double init = o.init_scale == 0 ? 65536.0 : o.init_scale;
    double growth = o.growth_factor == 0 ? 2.0 : o.growth_factor;
    double backoff = o.backoff_factor == 0 ? 0.5 : o.backoff_factor;
    int64_t interval = o.growth_interval == 0 ? 2000 : o.growth_interval;
    if (!(init > 0) || !isfinite((float)init)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: init_scale %g must be positive and finite in "
                  "float32", op, init);
        return NULL;
    }
    if (!(growth > 1) || isinf(growth)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: growth_factor %g must be a finite number above 1",
                  op, growth);
        return NULL;
    }
    if (!(backoff > 0 && backoff < 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: backoff_factor %g must be in (0, 1)", op, backoff);
        return NULL;
    }
    if (interval < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: growth_interval %lld must be positive", op,
                  (long long)interval);
        return NULL;
    }
    nb_grad_scaler *s = nbi_calloc(1, sizeof *s);
    if (!s) {
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of memory", op);
        return NULL;
    }
    s->scale = (float)init;
    s->growth_factor = growth;
    s->backoff_factor = backoff;
    s->growth_interval = interval;
    s->enabled = !o.disabled;
    return s;
}

nb_grad_scaler *nb_grad_scaler_new(nb_grad_scaler_opts opts)
{
    return NBI_API_CALL(scaler_new_impl(opts));
}

void nb_grad_scaler_free(nb_grad_scaler *s)
{
    if (!s)
        return;
    nbi_free(s->opts);
    nbi_free(s);
}

static nb_tensor *scale_impl(nb_grad_scaler *s, const nb_tensor *loss)
{
    if (!s) {
        nbi_error(NB_NULL_ARGUMENT, "nb_grad_scaler_scale: scaler is NULL");
        return NULL;
    }
    if (nnc_null("nb_grad_scaler_scale", "loss", loss))
        return NULL;
    if (!s->enabled)
        return nb_retain((nb_tensor *)loss);
    if (!nnc_float("nb_grad_scaler_scale", "loss", loss))
        return NULL;
    return nb_mul_scalar(loss, s->scale);
}

nb_tensor *nb_grad_scaler_scale(nb_grad_scaler *s, const nb_tensor *loss)
{
    return NBI_API(scale_impl(s, loss));
}

/* The stage record of o, created READY on first use. */
static opt_state *state_of(nb_grad_scaler *s, const nb_optim *o)
{
    for (int32_t k = 0; k < s->n_opts; k++)
        if (s->opts[k].opt == o)
            return &s->opts[k];
    if (s->n_opts == s->cap_opts) {
        int32_t cap = s->cap_opts ? 2 * s->cap_opts : 2;
        opt_state *p = nbi_realloc(s->opts, (size_t)cap * sizeof *p);
        if (!p) {
            nbi_error(NB_OUT_OF_MEMORY, "grad scaler: out of memory");
            return NULL;
        }
        s->opts = p;
        s->cap_opts = cap;
    }
    s->opts[s->n_opts] = (opt_state){o, STAGE_READY, false};
    return &s->opts[s->n_opts++];
}

/* grad *= 1/scale for every parameter's gradient, noting whether any element is inf or NaN. */
static nb_status unscale_grads(nb_grad_scaler *s, nb_optim *o, opt_state *st)
{
    const char *op = "nb_grad_scaler_unscale";
    /* PyTorch computes the reciprocal in double and rounds it to float32 */
    double inv = (double)(float)(1.0 / (double)s->scale);
    int32_t n = nb_optim_param_count(o);
    for (int32_t i = 0; i < n; i++) {
        nb_tensor *g = nbi_grad_of(nb_optim_param(o, i));
        if (g && nb_tensor_dtype(g) == NB_DTYPE_F16)
            return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: parameter %d has a float16 gradient; "
                             "attempting to unscale float16 gradients (keep the parameters in "
                             "float32 and autocast the forward)", op, i);
    }
    bool found = false;
    nb_status rc = NB_OK;
    nb_no_grad_begin();
    for (int32_t i = 0; i < n && rc == NB_OK; i++) {
        nb_tensor *g = nbi_grad_of(nb_optim_param(o, i));
        if (!g)
            continue;
        rc = nb_mul_scalar_(g, inv);
        /* sum(g * 0) is 0 when every element is finite and NaN otherwise; a plain sum could
         * overflow to inf on finite gradients */
        nb_tensor *z = rc == NB_OK ? nb_mul_scalar(g, 0.0) : NULL;
        nb_tensor *t = z ? nb_sum(z, NULL, 0, false) : NULL;
        double v = 0;
        if (rc == NB_OK)
            rc = t ? nb_item(t, &v) : nbi_last_or(NB_OUT_OF_MEMORY, "grad scaler: out of memory");
        found |= rc == NB_OK && !isfinite(v);
        nb_release(z);
        nb_release(t);
    }
    nb_no_grad_end();
    if (rc != NB_OK)
        return rc;
    st->found_inf = found;
    st->stage = STAGE_UNSCALED;
    return NB_OK;
}

static nb_status unscale_impl(nb_grad_scaler *s, nb_optim *o)
{
    const char *op = "nb_grad_scaler_unscale";
    if (!s || !o)
        return nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", op, !s ? "scaler" : "optimizer");
    if (!s->enabled)
        return NB_OK;
    opt_state *st = state_of(s, o);
    if (!st)
        return nb_last_status();
    if (st->stage == STAGE_UNSCALED)
        return nbi_error(NB_STATE, "%s: already called on this optimizer since the last "
                         "update", op);
    if (st->stage == STAGE_STEPPED)
        return nbi_error(NB_STATE, "%s: called after step; unscale before step, then update",
                         op);
    return unscale_grads(s, o, st);
}

nb_status nb_grad_scaler_unscale(nb_grad_scaler *s, nb_optim *o)
{
    return NBI_API_CALL(unscale_impl(s, o));
}

static nb_status step_impl(nb_grad_scaler *s, nb_optim *o)
{
    const char *op = "nb_grad_scaler_step";
    if (!s || !o)
        return nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", op, !s ? "scaler" : "optimizer");
    if (!s->enabled)
        return nb_optim_step(o);
    opt_state *st = state_of(s, o);
    if (!st)
        return nb_last_status();
    if (st->stage == STAGE_STEPPED)
        return nbi_error(NB_STATE, "%s: already called on this optimizer since the last update",
                         op);
    if (st->stage == STAGE_READY) {
        nb_status rc = unscale_grads(s, o, st);
        if (rc != NB_OK)
            return rc;
    }
    nb_status rc = st->found_inf ? NB_OK : nb_optim_step(o);
    if (rc == NB_OK) {
        st->stage = STAGE_STEPPED;
        s->skipped += st->found_inf;
    }
    return rc;
}

nb_status nb_grad_scaler_step(nb_grad_scaler *s, nb_optim *o)
{
    return NBI_API_CALL(step_impl(s, o));
}

static nb_status update_impl(nb_grad_scaler *s)
{
    if (!s)
        return nbi_error(NB_NULL_ARGUMENT, "nb_grad_scaler_update: scaler is NULL");
    if (!s->enabled)
        return NB_OK;
    bool any = false, found = false;
    for (int32_t k = 0; k < s->n_opts; k++)
        if (s->opts[k].stage != STAGE_READY) {
            any = true;
            found |= s->opts[k].found_inf;
        }
    if (!any)
        return nbi_error(NB_STATE, "nb_grad_scaler_update: no inf checks were recorded before "
                         "update (call nb_grad_scaler_step, or unscale, first)");
    if (found) {
        s->scale = (float)(s->scale * s->backoff_factor);
        s->growth_tracker = 0;
    } else if (++s->growth_tracker >= s->growth_interval) {
        float grown = (float)(s->scale * s->growth_factor);
        if (isfinite(grown)) /* as _amp_update_scale_: never grow into inf */
            s->scale = grown;
        s->growth_tracker = 0;
    }
    s->n_opts = 0;
    return NB_OK;
}

nb_status nb_grad_scaler_update(nb_grad_scaler *s)
{
    return NBI_API_CALL(update_impl(s));
}

double nb_grad_scaler_get_scale(const nb_grad_scaler *s)
{
    if (!s) {
        nbi_error(NB_NULL_ARGUMENT, "nb_grad_scaler_get_scale: scaler is NULL");
        return 0;
    }
    return s->enabled ? (double)s->scale : 1.0;
}

int64_t nb_grad_scaler_skipped_steps(const nb_grad_scaler *s)
{
    return s ? s->skipped : 0;
}
