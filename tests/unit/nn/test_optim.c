/* test_optim.c - tests core/nn/optim.c: every optimizer's first steps against the update rules of
 * torch.optim's documentation written out here in double precision, on the device's fused
 * kernels and on the composite path, plus schedulers and bad input. */
#include "nb_test.h"
#include "nabla_internal.h" /* to plant a mismatched .grad: the public API refuses one */

#include <pthread.h>
#include <stdlib.h>

enum { N = 5, STEPS = 4 };

/* The gradient fed at step t: varied in sign and size so every term of a rule matters. */
static double grad_at(int t, int k) { return sin(1.3 * k + 0.7 * t + 0.2) * (1 + 0.5 * k); }
static double init_at(int k) { return 0.5 - 0.2 * k; }

typedef enum { K_SGD, K_ADAM, K_ADAMW, K_RMSPROP } kind;

typedef struct config {
    kind kind;
    nb_sgd_opts sgd;
    nb_adam_opts adam;
    nb_rmsprop_opts rms;
} config;

/* ---- the reference rules (torch.optim docs, "Algorithm" boxes) ---- */

static void reference(const config *c, double p[N])
{
    double s1[N] = {0}, s2[N] = {0};
    for (int k = 0; k < N; k++)
        p[k] = init_at(k);
    for (int t = 0; t < STEPS; t++) {
        for (int k = 0; k < N; k++) {
            double g = grad_at(t, k);
            if (c->kind == K_SGD) {
                const nb_sgd_opts *o = &c->sgd;
                g += o->weight_decay * p[k];
                if (o->momentum != 0) {
                    s1[k] = t == 0 ? g : o->momentum * s1[k] + (1 - o->dampening) * g;
                    g = o->nesterov ? g + o->momentum * s1[k] : s1[k];
                }
                p[k] -= o->lr * g;
            } else if (c->kind == K_ADAM || c->kind == K_ADAMW) {
                const nb_adam_opts *o = &c->adam; /* explicit values, no zeros */
                if (c->kind == K_ADAMW)
                    p[k] *= 1 - o->lr * o->weight_decay;
                else
                    g += o->weight_decay * p[k];
                s1[k] = o->beta1 * s1[k] + (1 - o->beta1) * g;
                s2[k] = o->beta2 * s2[k] + (1 - o->beta2) * g * g;
                double mhat = s1[k] / (1 - pow(o->beta1, t + 1));
                double vhat = s2[k] / (1 - pow(o->beta2, t + 1));
                p[k] -= o->lr * mhat / (sqrt(vhat) + o->eps);
            } else {
                const nb_rmsprop_opts *o = &c->rms;
                g += o->weight_decay * p[k];
                s1[k] = o->alpha * s1[k] + (1 - o->alpha) * g * g;
                double avg = sqrt(s1[k]) + o->eps;
                if (o->momentum > 0) {
                    s2[k] = o->momentum * s2[k] + g / avg;
                    p[k] -= o->lr * s2[k];
                } else {
                    p[k] -= o->lr * g / avg;
                }
            }
        }
    }
}

static nb_optim *make(const config *c, nb_tensor *const *ps, int32_t n)
{
    switch (c->kind) {
    case K_SGD: return nb_sgd_new(ps, n, c->sgd);
    case K_ADAM: return nb_adam_new(ps, n, c->adam);
    case K_ADAMW: return nb_adamw_new(ps, n, c->adam);
    default: return nb_rmsprop_new(ps, n, c->rms);
    }
}

/* Runs STEPS steps with Nabla and compares each element with the reference; returns the worst
 * error relative to |ref| + 1e-3 (f32 parameters). */
static double run_and_compare(const config *c, nb_dtype dtype, const char *device)
{
    double want[N], init[N], got[N];
    reference(c, want);
    for (int k = 0; k < N; k++)
        init[k] = init_at(k);
    nb_tensor *p = nb_to_dtype(nb_from_data(init, NB_SHAPE(N),
                                            (nb_opts){.dtype = NB_DTYPE_F64, .device = device}),
                               dtype);
    /* the nb_from_data above is released through the scope the caller opened */
    NB_ASSERT_OK(nb_tensor_set_requires_grad(p, true));
    nb_optim *o = make(c, &p, 1);
    assert_non_null(o);
    for (int t = 0; t < STEPS; t++) {
        double g[N];
        for (int k = 0; k < N; k++)
            g[k] = grad_at(t, k);
        nb_tensor *gt = nb_to_dtype(nb_from_data(g, NB_SHAPE(N),
                                                 (nb_opts){.dtype = NB_DTYPE_F64, .device = device}),
                                    dtype);
        NB_ASSERT_OK(nb_tensor_set_grad(p, gt));
        NB_ASSERT_OK(nb_optim_step(o));
        assert_true(nb_is_grad_enabled()); /* the step's no-grad region is closed again */
    }
    assert_true(nb_tensor_is_leaf(p));
    assert_true(nb_tensor_requires_grad(p));
    nb_tensor *p64 = nb_to_dtype(p, NB_DTYPE_F64);
    NB_ASSERT_OK(nb_tensor_copy_to_host(p64, got, sizeof got));
    double worst = 0;
    for (int k = 0; k < N; k++) {
        double e = fabs(got[k] - want[k]) / (fabs(want[k]) + 1e-3);
        worst = e > worst ? e : worst;
    }
    nb_optim_free(o);
    return worst;
}

static const config CONFIGS[] = {
    {.kind = K_SGD, .sgd = {.lr = 0.1}},
    {.kind = K_SGD, .sgd = {.lr = 0.05, .momentum = 0.9}},
    {.kind = K_SGD, .sgd = {.lr = 0.05, .momentum = 0.8, .dampening = 0.3, .weight_decay = 0.01}},
    {.kind = K_SGD, .sgd = {.lr = 0.05, .momentum = 0.9, .weight_decay = 0.1, .nesterov = true}},
    {.kind = K_ADAM, .adam = {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8}},
    {.kind = K_ADAM, .adam = {.lr = 0.02, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6,
                              .weight_decay = 0.1}},
    {.kind = K_ADAMW, .adam = {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                               .weight_decay = 0.01}},
    {.kind = K_ADAMW, .adam = {.lr = 0.05, .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-4,
                               .weight_decay = 0.5}},
    /* Zeros PyTorch takes as values: Adam(betas=(0.0, 0.99), eps=0), AdamW(weight_decay=0),
     * RMSprop(alpha=0). */
    {.kind = K_ADAM, .adam = {.lr = 0.01, .beta1 = 0, .beta2 = 0.99, .eps = 0, .as_given = true}},
    {.kind = K_ADAMW, .adam = {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                               .weight_decay = 0, .as_given = true}},
    {.kind = K_RMSPROP, .rms = {.lr = 0.01, .alpha = 0, .eps = 1e-8, .as_given = true}},
    {.kind = K_RMSPROP, .rms = {.lr = 0.01, .alpha = 0.99, .eps = 1e-8}},
    {.kind = K_RMSPROP, .rms = {.lr = 0.01, .alpha = 0.9, .eps = 1e-6, .weight_decay = 0.1,
                                .momentum = 0.9}},
};
enum { N_CONFIGS = sizeof CONFIGS / sizeof CONFIGS[0] };

/* f32 accumulates a few ulps per step; a wrong rule is off by far more than this */
#define TOL_F32 2e-5
#define TOL_F64 1e-12

/* A device other than the CPU when a plugin provides one ("opencl:0" on PoCL), else NULL. */
static const char *second_device(void)
{
    static char buf[32];
    static const char *const types[] = {"cuda", "opencl"};
    for (int k = 0; k < 2; k++) {
        int n = nb_device_count(types[k]);
        nb_clear_error();
        if (n > 0) {
            snprintf(buf, sizeof buf, "%s:0", types[k]);
            return buf;
        }
    }
    return NULL;
}

static void check_all_configs_on(const char *device)
{
    /* a device without float64 still runs the float32 checks */
    bool f64 = nb_device_has_kernel(device, "add", NB_DTYPE_F64);
    nb_clear_error();
    for (int i = 0; i < N_CONFIGS; i++) {
        nb_scope_begin();
        double e32 = run_and_compare(&CONFIGS[i], NB_DTYPE_F32, device);
        double e64 = f64 ? run_and_compare(&CONFIGS[i], NB_DTYPE_F64, device) : 0;
        nb_scope_end();
        if (e32 > TOL_F32 || e64 > TOL_F64)
            fail_msg("config %d on %s: relative error f32 %g, f64 %g", i, device, e32, e64);
    }
}

static void check_all_configs(void)
{
    check_all_configs_on("cpu");
    const char *other = second_device();
    if (other)
        check_all_configs_on(other);
}

static void optimizers_follow_the_torch_rules_on_the_fused_path(void **state)
{
    (void)state;
    /* the cpu plugin has the fused kernels, so this run goes through them */
    assert_true(nb_device_has_kernel("cpu", "sgd_step", NB_DTYPE_F32));
    assert_true(nb_device_has_kernel("cpu", "adam_step", NB_DTYPE_F32));
    check_all_configs();
}

static void *composite_thread(void *arg)
{
    (void)arg;
    check_all_configs();
    return NULL;
}

/* NABLA_NO_TIER2 is read once per thread, so a fresh thread takes the composite path. */
static void optimizers_follow_the_torch_rules_on_the_composite_path(void **state)
{
    (void)state;
    setenv("NABLA_NO_TIER2", "1", 1);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, composite_thread, NULL), 0);
    pthread_join(th, NULL);
    unsetenv("NABLA_NO_TIER2");
}

static void defaults_are_pytorchs(void **state)
{
    (void)state;
    /* zero-valued options mean the defaults: check them against explicit values */
    config zero = {.kind = K_ADAM}, explicit = {.kind = K_ADAM,
                                                .adam = {1e-3, 0.9, 0.999, 1e-8, 0}};
    double a[N], b[N];
    nb_scope_begin();
    for (int pass = 0; pass < 3; pass++) {
        config *z = &zero, *e = &explicit;
        if (pass == 1) {
            z->kind = e->kind = K_ADAMW;
            e->adam.weight_decay = 1e-2;
        } else if (pass == 2) {
            *z = (config){.kind = K_RMSPROP};
            *e = (config){.kind = K_RMSPROP, .rms = {1e-2, 0.99, 1e-8, 0, 0}};
        }
        nb_tensor *pa = nb_zeros(NB_SHAPE(N), (nb_opts){.dtype = NB_DTYPE_F64}),
                  *pb = nb_zeros(NB_SHAPE(N), (nb_opts){.dtype = NB_DTYPE_F64});
        nb_optim *oa = make(z, &pa, 1), *ob = make(e, &pb, 1);
        assert_non_null(oa);
        assert_non_null(ob);
        for (int k = 0; k < N; k++)
            a[k] = grad_at(0, k);
        nb_tensor *g = nb_from_data(a, NB_SHAPE(N), (nb_opts){.dtype = NB_DTYPE_F64});
        NB_ASSERT_OK(nb_tensor_set_grad(pa, g));
        NB_ASSERT_OK(nb_tensor_set_grad(pb, g));
        NB_ASSERT_OK(nb_optim_step(oa));
        NB_ASSERT_OK(nb_optim_step(ob));
        NB_ASSERT_OK(nb_tensor_copy_to_host(pa, a, sizeof a));
        NB_ASSERT_OK(nb_tensor_copy_to_host(pb, b, sizeof b));
        for (int k = 0; k < N; k++) {
            assert_float_equal(a[k], b[k], 0);
            assert_true(a[k] != 0);
        }
        assert_float_equal(nb_optim_lr(oa), pass == 2 ? 1e-2 : 1e-3, 0);
        nb_optim_free(oa);
        nb_optim_free(ob);
    }
    nb_scope_end();
}

static void default_constructors_fill_in_pytorchs_values(void **state)
{
    (void)state;
    nb_adam_opts a = nb_adam_defaults(), w = nb_adamw_defaults();
    nb_rmsprop_opts r = nb_rmsprop_defaults();
    assert_true(a.as_given && w.as_given && r.as_given);
    assert_true(a.lr == 1e-3 && a.beta1 == 0.9 && a.beta2 == 0.999 && a.eps == 1e-8);
    assert_true(a.weight_decay == 0 && w.weight_decay == 1e-2);
    assert_true(w.lr == a.lr && w.beta1 == a.beta1 && w.beta2 == a.beta2 && w.eps == a.eps);
    assert_true(r.lr == 1e-2 && r.alpha == 0.99 && r.eps == 1e-8);
    assert_true(r.weight_decay == 0 && r.momentum == 0);
    /* as_given reads a zero as a zero: AdamW with weight_decay 0 steps as Adam does. */
    nb_scope_begin();
    nb_tensor *pa = nb_ones(NB_SHAPE(N), (nb_opts){.dtype = NB_DTYPE_F64}),
              *pw = nb_ones(NB_SHAPE(N), (nb_opts){.dtype = NB_DTYPE_F64});
    w.weight_decay = 0;
    nb_optim *oa = nb_adam_new(&pa, 1, a), *ow = nb_adamw_new(&pw, 1, w);
    assert_non_null(oa);
    assert_non_null(ow);
    nb_tensor *g = nb_full(NB_SHAPE(N), 0.25, (nb_opts){.dtype = NB_DTYPE_F64});
    NB_ASSERT_OK(nb_tensor_set_grad(pa, g));
    NB_ASSERT_OK(nb_tensor_set_grad(pw, g));
    NB_ASSERT_OK(nb_optim_step(oa));
    NB_ASSERT_OK(nb_optim_step(ow));
    assert_true(nb_equal(pa, pw));
    nb_optim_free(oa);
    nb_optim_free(ow);
    nb_scope_end();
}

static void parameters_without_grad_are_skipped(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *p0 = nb_ones(NB_SHAPE(3), (nb_opts){.dtype = NB_DTYPE_F64, .requires_grad = true});
    nb_tensor *p1 = nb_ones(NB_SHAPE(3), (nb_opts){.dtype = NB_DTYPE_F64, .requires_grad = true});
    nb_tensor *ps[2] = {p0, p1};
    const double lr = 0.1;
    nb_optim *o = nb_adam_new(ps, 2, (nb_adam_opts){.lr = lr});
    nb_tensor *g = nb_full(NB_SHAPE(3), 0.5, (nb_opts){.dtype = NB_DTYPE_F64});
    NB_ASSERT_OK(nb_tensor_set_grad(p0, g));
    NB_ASSERT_OK(nb_optim_step(o));
    double v[3];
    NB_ASSERT_OK(nb_tensor_copy_to_host(p1, v, sizeof v));
    assert_float_equal(v[0], 1, 0); /* untouched */
    /* Adam's first step moves by lr whatever the gradient (m_hat / sqrt(v_hat) = sign g) */
    NB_ASSERT_OK(nb_tensor_copy_to_host(p0, v, sizeof v));
    assert_float_equal(v[0], 1 - lr * 0.5 / (0.5 + 1e-8), 1e-12);
    /* p1's state starts at its own first step: the same first-step move */
    NB_ASSERT_OK(nb_optim_zero_grad(o));
    assert_null(nb_tensor_grad(p0));
    NB_ASSERT_OK(nb_tensor_set_grad(p1, g));
    NB_ASSERT_OK(nb_optim_step(o));
    NB_ASSERT_OK(nb_tensor_copy_to_host(p1, v, sizeof v));
    assert_float_equal(v[0], 1 - lr * 0.5 / (0.5 + 1e-8), 1e-12);
    nb_optim_free(o);
    nb_scope_end();
}

/* A small regression: SGD with momentum brings the loss down through autograd and a module. */
static void sgd_trains_a_linear_module(void **state)
{
    (void)state;
    nb_manual_seed(11);
    nb_module *fc = nb_linear_new(3, 1, true, (nb_opts){0});
    nb_optim *o = nb_sgd_new_for(fc, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9});
    assert_non_null(o);
    double first = 0, last = 0;
    /* y = x w + 0.3 with a fixed w: the module can fit it exactly */
    nb_tensor *w = nb_from_data((float[]){1.5f, -2.0f, 0.5f}, NB_SHAPE(3, 1), (nb_opts){0});
    for (int it = 0; it < 60; it++) {
        nb_scope_begin();
        nb_tensor *x = nb_randn(NB_SHAPE(32, 3), (nb_opts){0});
        nb_tensor *y = nb_add_scalar(nb_matmul(x, w), 0.3);
        nb_tensor *loss = nb_mse_loss(nb_module_forward(fc, x), y, NB_REDUCTION_MEAN);
        assert_non_null(loss);
        NB_ASSERT_OK(nb_optim_zero_grad(o));
        NB_ASSERT_OK(nb_backward(loss, NULL, (nb_backward_opts){0}));
        NB_ASSERT_OK(nb_optim_step(o));
        NB_ASSERT_OK(nb_item(loss, it == 0 ? &first : &last));
        nb_scope_end();
    }
    nb_release(w);
    if (!(last < first * 1e-2))
        fail_msg("loss %g after 60 steps, %g at the start", last, first);
    nb_optim_free(o);
    nb_module_free(fc);
}

/* ---- learning rate and schedulers ---- */

static void learning_rate_can_be_read_and_set(void **state)
{
    (void)state;
    nb_tensor *p = nb_zeros(NB_SHAPE(1), (nb_opts){0});
    nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.5});
    assert_float_equal(nb_optim_lr(o), 0.5, 0);
    NB_ASSERT_OK(nb_optim_set_lr(o, 0.25));
    assert_float_equal(nb_optim_lr(o), 0.25, 0);
    assert_int_equal(nb_optim_set_lr(o, -1), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("-1");
    assert_int_equal(nb_optim_set_lr(o, NAN), NB_INVALID_ARGUMENT);
    assert_float_equal(nb_optim_lr(o), 0.25, 0);
    assert_true(isnan(nb_optim_lr(NULL)));
    assert_int_equal(nb_optim_set_lr(NULL, 1), NB_NULL_ARGUMENT);
    nb_optim_free(o);
    nb_release(p);
}

/* PyTorch's recursive (chainable) forms: a different computation from the closed forms the
 * library uses, so agreeing means both are right. */
static double step_lr_chain(double lr, int64_t epoch, int64_t step_size, double gamma)
{
    return epoch == 0 || epoch % step_size != 0 ? lr : lr * gamma;
}

static double cosine_chain(double lr, double base, int64_t e, int64_t t_max, double eta_min)
{
    if (e == 0)
        return lr;
    if ((e - 1 - t_max) % (2 * t_max) == 0)
        return lr + (base - eta_min) * (1 - cos(M_PI / (double)t_max)) / 2;
    return (1 + cos(M_PI * (double)e / (double)t_max)) /
               (1 + cos(M_PI * (double)(e - 1) / (double)t_max)) * (lr - eta_min) + eta_min;
}

static void step_lr_decays_every_step_size_epochs(void **state)
{
    (void)state;
    nb_tensor *p = nb_zeros(NB_SHAPE(1), (nb_opts){0});
    nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.1});
    nb_lr_scheduler *s = nb_step_lr_new(o, 3, 0.5);
    assert_non_null(s);
    double lr = 0.1;
    assert_float_equal(nb_optim_lr(o), lr, 0);
    for (int64_t e = 1; e <= 10; e++) {
        NB_ASSERT_OK(nb_lr_scheduler_step(s));
        lr = step_lr_chain(lr, e, 3, 0.5);
        assert_float_equal(nb_optim_lr(o), lr, 1e-15);
    }
    assert_float_equal(lr, 0.1 / 8, 1e-15); /* three decays by epoch 10 */
    nb_lr_scheduler_free(s);
    nb_optim_free(o);
    nb_release(p);
}

static void cosine_annealing_follows_the_half_cosine(void **state)
{
    (void)state;
    nb_tensor *p = nb_zeros(NB_SHAPE(1), (nb_opts){0});
    nb_optim *o = nb_adam_new(&p, 1, (nb_adam_opts){.lr = 0.2});
    const int64_t t_max = 5;
    const double eta_min = 0.01;
    nb_lr_scheduler *s = nb_cosine_annealing_lr_new(o, t_max, eta_min);
    assert_non_null(s);
    double lr = 0.2;
    for (int64_t e = 1; e <= 3 * t_max; e++) {
        NB_ASSERT_OK(nb_lr_scheduler_step(s));
        lr = cosine_chain(lr, 0.2, e, t_max, eta_min);
        assert_float_equal(nb_optim_lr(o), lr, 1e-12);
        if (e == t_max)
            assert_float_equal(nb_optim_lr(o), eta_min, 1e-12);
    }
    nb_lr_scheduler_free(s);
    nb_optim_free(o);
    nb_release(p);
}

static void scheduler_outliving_its_optimizer_is_an_error(void **state)
{
    (void)state;
    nb_tensor *p = nb_zeros(NB_SHAPE(1), (nb_opts){0});
    nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.1});
    nb_lr_scheduler *a = nb_step_lr_new(o, 1, 0.5), *b = nb_cosine_annealing_lr_new(o, 4, 0);
    nb_lr_scheduler_free(a); /* one freed first, one after its optimizer */
    nb_optim_free(o);
    assert_int_equal(nb_lr_scheduler_step(b), NB_STATE);
    NB_ASSERT_ERROR_HAS("freed");
    nb_lr_scheduler_free(b);
    nb_lr_scheduler_free(NULL);
    nb_optim_free(NULL);
    nb_release(p);
    nb_clear_error();
}

/* ---- bad input ---- */

static void expect_null(void *p, nb_status st, const char *needle)
{
    assert_null(p);
    assert_int_equal(nb_last_status(), st);
    NB_ASSERT_ERROR_HAS(needle);
    nb_clear_error();
}

static void constructors_refuse_bad_input(void **state)
{
    (void)state;
    nb_tensor *p = nb_zeros(NB_SHAPE(2), (nb_opts){0});
    nb_tensor *ps[2] = {p, p};
    expect_null(nb_sgd_new(NULL, 1, (nb_sgd_opts){.lr = 0.1}), NB_NULL_ARGUMENT, "params");
    expect_null(nb_sgd_new(&p, 0, (nb_sgd_opts){.lr = 0.1}), NB_INVALID_ARGUMENT, "0 parameters");
    expect_null(nb_sgd_new(&p, -2, (nb_sgd_opts){.lr = 0.1}), NB_INVALID_ARGUMENT, "-2");
    expect_null(nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = -0.1}), NB_INVALID_ARGUMENT,
                "learning rate -0.1");
    expect_null(nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = NAN}), NB_INVALID_ARGUMENT, "learning rate");
    expect_null(nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.1, .momentum = -0.5}),
                NB_INVALID_ARGUMENT, "momentum -0.5");
    expect_null(nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.1, .weight_decay = -1}),
                NB_INVALID_ARGUMENT, "weight_decay");
    expect_null(nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.1, .nesterov = true}),
                NB_INVALID_ARGUMENT, "nesterov");
    expect_null(nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9, .dampening = 0.1,
                                                .nesterov = true}),
                NB_INVALID_ARGUMENT, "zero dampening");
    expect_null(nb_sgd_new(ps, 2, (nb_sgd_opts){.lr = 0.1}), NB_INVALID_ARGUMENT, "same tensor");
    nb_tensor *with_null[2] = {p, NULL};
    expect_null(nb_sgd_new(with_null, 2, (nb_sgd_opts){.lr = 0.1}), NB_NULL_ARGUMENT,
                "parameter 1");
    nb_tensor *ints = nb_zeros(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I64});
    expect_null(nb_sgd_new(&ints, 1, (nb_sgd_opts){.lr = 0.1}), NB_DTYPE_UNSUPPORTED, "int64");
    nb_tensor *leaf = nb_ones(NB_SHAPE(2), (nb_opts){.requires_grad = true});
    nb_tensor *nonleaf = nb_mul_scalar(leaf, 3);
    expect_null(nb_adam_new(&nonleaf, 1, (nb_adam_opts){0}), NB_AUTOGRAD, "non-leaf");
    expect_null(nb_adam_new(&p, 1, (nb_adam_opts){.beta1 = 1.0}), NB_INVALID_ARGUMENT, "betas");
    expect_null(nb_adam_new(&p, 1, (nb_adam_opts){.beta2 = 1.5}), NB_INVALID_ARGUMENT, "betas");
    expect_null(nb_adamw_new(&p, 1, (nb_adam_opts){.beta1 = -0.1}), NB_INVALID_ARGUMENT, "betas");
    expect_null(nb_adam_new(&p, 1, (nb_adam_opts){.lr = -1}), NB_INVALID_ARGUMENT, "learning rate");
    expect_null(nb_adamw_new(&p, 1, (nb_adam_opts){.eps = -1e-8}), NB_INVALID_ARGUMENT, "epsilon");
    expect_null(nb_adamw_new(&p, 1, (nb_adam_opts){.weight_decay = -0.01}), NB_INVALID_ARGUMENT,
                "weight_decay");
    expect_null(nb_rmsprop_new(&p, 1, (nb_rmsprop_opts){.alpha = 1.5}), NB_INVALID_ARGUMENT,
                "alpha");
    expect_null(nb_rmsprop_new(&p, 1, (nb_rmsprop_opts){.momentum = -0.9}), NB_INVALID_ARGUMENT,
                "momentum");
    expect_null(nb_rmsprop_new(NULL, 1, (nb_rmsprop_opts){0}), NB_NULL_ARGUMENT, "params");
    expect_null(nb_sgd_new_for(NULL, (nb_sgd_opts){.lr = 0.1}), NB_NULL_ARGUMENT, "module");
    nb_module *relu = nb_relu_new();
    expect_null(nb_sgd_new_for(relu, (nb_sgd_opts){.lr = 0.1}), NB_INVALID_ARGUMENT,
                "no parameters");
    nb_module_free(relu);
    nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.1});
    expect_null(nb_step_lr_new(o, 0, 0.5), NB_INVALID_ARGUMENT, "step_size=0");
    expect_null(nb_step_lr_new(o, 2, -0.5), NB_INVALID_ARGUMENT, "gamma");
    expect_null(nb_step_lr_new(NULL, 2, 0.5), NB_NULL_ARGUMENT, "optimizer");
    expect_null(nb_cosine_annealing_lr_new(o, 0, 0), NB_INVALID_ARGUMENT, "T_max=0");
    expect_null(nb_cosine_annealing_lr_new(o, 5, -1), NB_INVALID_ARGUMENT, "eta_min");
    assert_int_equal(nb_optim_step(NULL), NB_NULL_ARGUMENT);
    assert_int_equal(nb_optim_zero_grad(NULL), NB_NULL_ARGUMENT);
    assert_int_equal(nb_lr_scheduler_step(NULL), NB_NULL_ARGUMENT);
    nb_optim_free(o);
    nb_release(nonleaf);
    nb_release(leaf);
    nb_release(ints);
    nb_release(p);
    nb_clear_error();
}

/* Every gradient is checked against its parameter before any parameter moves: the fused steps
 * read the gradient as if it had the parameter's shape (a heap overflow with a smaller one). */
static void step_refuses_a_gradient_unlike_its_parameter(void **state)
{
    (void)state;
    nb_tensor *p0 = nb_ones(NB_SHAPE(3), (nb_opts){.requires_grad = true});
    nb_tensor *p1 = nb_ones(NB_SHAPE(3), (nb_opts){.requires_grad = true});
    nb_tensor *bad[3] = {nb_ones(NB_SHAPE(2), (nb_opts){0}), nb_ones(NB_SHAPE(5), (nb_opts){0}),
                         nb_ones(NB_SHAPE(3), (nb_opts){NB_DTYPE_I64})};
    const char *want[3] = {"parameter 1 is float32 [3] on cpu but its gradient is float32 [2]",
                           "gradient is float32 [5]", "gradient is int64 [3]"};
    nb_tensor *ps[2] = {p0, p1};
    for (int k = 0; k < 3; k++) {
        for (int opt = 0; opt < 2; opt++) {
            nb_optim *o = opt ? nb_adam_new(ps, 2, (nb_adam_opts){.lr = 0.1})
                              : nb_sgd_new(ps, 2, (nb_sgd_opts){.lr = 0.1});
            assert_non_null(o);
            p0->grad = nb_ones(NB_SHAPE(3), (nb_opts){0}); /* a good one first */
            p1->grad = nb_retain(bad[k]);
            nb_clear_error();
            assert_int_equal(nb_optim_step(o), NB_SHAPE_MISMATCH);
            NB_ASSERT_ERROR_HAS(want[k]);
            double v;
            nb_tensor *e = nb_select(p0, 0, 0);
            NB_ASSERT_OK(nb_item(e, &v));
            assert_true(v == 1); /* no parameter moved */
            nb_release(e);
            NB_ASSERT_OK(nb_tensor_zero_grad(p0));
            NB_ASSERT_OK(nb_tensor_zero_grad(p1));
            nb_optim_free(o);
        }
        nb_release(bad[k]);
    }
    nb_release(p0);
    nb_release(p1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(optimizers_follow_the_torch_rules_on_the_fused_path),
        NB_TEST(optimizers_follow_the_torch_rules_on_the_composite_path),
        NB_TEST(defaults_are_pytorchs),
        NB_TEST(default_constructors_fill_in_pytorchs_values),
        NB_TEST(step_refuses_a_gradient_unlike_its_parameter),
        NB_TEST(parameters_without_grad_are_skipped),
        NB_TEST(sgd_trains_a_linear_module),
        NB_TEST(learning_rate_can_be_read_and_set),
        NB_TEST(step_lr_decays_every_step_size_epochs),
        NB_TEST(cosine_annealing_follows_the_half_cosine),
        NB_TEST(scheduler_outliving_its_optimizer_is_an_error),
        NB_TEST(constructors_refuse_bad_input),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
