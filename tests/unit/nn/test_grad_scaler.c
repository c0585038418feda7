/* test_grad_scaler.c - tests core/nn/grad_scaler.c: torch.amp.GradScaler's skip-and-backoff on
 * an injected inf or NaN, growth after growth_interval good steps (a small interval here),
 * unscaled gradients equal to the plain run's, the once-per-update stages and bad input. */
#include "nb_test.h"
#include "nabla_internal.h" /* to plant a .grad directly */

static double value_at(const nb_tensor *t, int64_t i)
{
    nb_tensor *e = nb_select(t, 0, i);
    double v = NAN;
    NB_ASSERT_OK(nb_item(e, &v));
    nb_release(e);
    return v;
}

static nb_tensor *vec3(double a, double b, double c, bool requires_grad)
{
    float v[3] = {(float)a, (float)b, (float)c};
    return nb_from_data(v, NB_SHAPE(3), (nb_opts){.requires_grad = requires_grad});
}

/* One "backward": a gradient of g times the scaler's scale, as a scaled loss would give. */
static void plant_grad(nb_tensor *p, double a, double b, double c, double scale)
{
    nb_release(p->grad);
    p->grad = vec3(a * scale, b * scale, c * scale, false);
}

static void defaults_are_pytorchs(void **state)
{
    (void)state;
    nb_grad_scaler *s = nb_grad_scaler_new((nb_grad_scaler_opts){0});
    assert_non_null(s);
    assert_true(nb_grad_scaler_get_scale(s) == 65536.0);
    nb_tensor *loss = nb_scalar(0.75, (nb_opts){0});
    nb_tensor *scaled = nb_grad_scaler_scale(s, loss);
    double v;
    NB_ASSERT_OK(nb_item(scaled, &v));
    assert_true(v == 0.75 * 65536.0);
    assert_int_equal(nb_tensor_dtype(scaled), NB_DTYPE_F32);
    nb_release(scaled);
    nb_release(loss);
    nb_grad_scaler_free(s);
}

static void an_inf_gradient_skips_the_step_and_halves_the_scale(void **state)
{
    (void)state;
    const double bad[2] = {INFINITY, NAN};
    for (int k = 0; k < 2; k++) {
        nb_tensor *p = vec3(1, 2, 3, true);
        nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.5});
        nb_grad_scaler *s = nb_grad_scaler_new((nb_grad_scaler_opts){0});
        assert_non_null(o);
        assert_non_null(s);
        double scale = nb_grad_scaler_get_scale(s);
        plant_grad(p, 1, bad[k], 1, scale);
        NB_ASSERT_OK(nb_grad_scaler_step(s, o));
        for (int i = 0; i < 3; i++)
            assert_true(value_at(p, i) == i + 1); /* not one parameter moved */
        assert_int_equal(nb_grad_scaler_skipped_steps(s), 1);
        NB_ASSERT_OK(nb_grad_scaler_update(s));
        assert_true(nb_grad_scaler_get_scale(s) == scale * 0.5);
        /* the next good step steps, with the gradient unscaled by the new scale */
        plant_grad(p, 1, 1, 1, nb_grad_scaler_get_scale(s));
        NB_ASSERT_OK(nb_grad_scaler_step(s, o));
        NB_ASSERT_OK(nb_grad_scaler_update(s));
        for (int i = 0; i < 3; i++)
            assert_true(value_at(p, i) == i + 1 - 0.5);
        assert_int_equal(nb_grad_scaler_skipped_steps(s), 1);
        nb_grad_scaler_free(s);
        nb_optim_free(o);
        nb_release(p);
    }
}

static void growth_interval_good_steps_double_the_scale(void **state)
{
    (void)state;
    enum { INTERVAL = 3 };
    nb_tensor *p = vec3(0, 0, 0, true);
    nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 0.01});
    nb_grad_scaler *s = nb_grad_scaler_new(
        (nb_grad_scaler_opts){.init_scale = 1024, .growth_interval = INTERVAL});
    assert_non_null(s);
    /* g: good steps, i: an inf step; the expected scale after each update. A skip restarts the
     * count, so the two good steps before it do not count towards growth. */
    const char plan[] = "gggggiggg";
    const double want[] = {1024, 1024, 2048, 2048, 2048, 1024, 1024, 1024, 2048};
    for (size_t t = 0; t < sizeof plan - 1; t++) {
        double sc = nb_grad_scaler_get_scale(s);
        plant_grad(p, 0.5, plan[t] == 'i' ? INFINITY : -0.25, 1, sc);
        NB_ASSERT_OK(nb_grad_scaler_step(s, o));
        NB_ASSERT_OK(nb_grad_scaler_update(s));
        if (nb_grad_scaler_get_scale(s) != want[t])
            fail_msg("after step %zu (%c): scale %g, expected %g", t, plan[t],
                     nb_grad_scaler_get_scale(s), want[t]);
    }
    assert_int_equal(nb_grad_scaler_skipped_steps(s), 1);
    nb_grad_scaler_free(s);

    /* PyTorch's defaults: 2000 good steps, not 1999, double it */
    s = nb_grad_scaler_new((nb_grad_scaler_opts){0});
    for (int t = 0; t < 2000; t++) {
        assert_true(nb_grad_scaler_get_scale(s) == 65536.0);
        plant_grad(p, 1e-3, 1e-3, 1e-3, nb_grad_scaler_get_scale(s));
        NB_ASSERT_OK(nb_grad_scaler_unscale(s, o)); /* unscale without a step counts too */
        NB_ASSERT_OK(nb_grad_scaler_update(s));
    }
    assert_true(nb_grad_scaler_get_scale(s) == 131072.0);
    nb_grad_scaler_free(s);

    /* and it never grows into inf: float32's largest power of two stays */
    s = nb_grad_scaler_new((nb_grad_scaler_opts){.init_scale = 0x1p127, .growth_interval = 1});
    assert_non_null(s);
    plant_grad(p, 0, 0, 0, 1);
    NB_ASSERT_OK(nb_grad_scaler_step(s, o));
    NB_ASSERT_OK(nb_grad_scaler_update(s));
    assert_true(nb_grad_scaler_get_scale(s) == 0x1p127);
    nb_grad_scaler_free(s);
    nb_optim_free(o);
    nb_release(p);
}

/* A linear model's loss, its gradients by plain backward and by scaled backward + unscale. */
static void unscaled_gradients_equal_the_plain_runs(void **state)
{
    (void)state;
    nb_manual_seed(7);
    nb_tensor *x = nb_randn(NB_SHAPE(8, 5), (nb_opts){0});
    nb_tensor *y = nb_randn(NB_SHAPE(8, 3), (nb_opts){0});
    nb_tensor *w[2], *b[2];
    nb_optim *o[2];
    for (int r = 0; r < 2; r++) { /* r 0 plain, r 1 scaled: the same initial values */
        nb_manual_seed(11);
        w[r] = nb_randn(NB_SHAPE(3, 5), (nb_opts){.requires_grad = true});
        b[r] = nb_randn(NB_SHAPE(3), (nb_opts){.requires_grad = true});
        nb_tensor *ps[2] = {w[r], b[r]};
        o[r] = nb_sgd_new(ps, 2, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9});
        assert_non_null(o[r]);
    }
    nb_grad_scaler *s = nb_grad_scaler_new((nb_grad_scaler_opts){0});
    for (int step = 0; step < 3; step++) {
        for (int r = 0; r < 2; r++) {
            nb_scope_begin();
            nb_tensor *loss = nb_mse_loss(nb_linear(x, w[r], b[r]), y, NB_REDUCTION_MEAN);
            nb_tensor *l = r ? nb_grad_scaler_scale(s, loss) : loss;
            NB_ASSERT_OK(nb_backward(l, NULL, (nb_backward_opts){0}));
            if (r)
                NB_ASSERT_OK(nb_grad_scaler_unscale(s, o[r]));
            nb_scope_end();
        }
        /* the scale is a power of two: unscaling is exact */
        assert_true(nb_equal(w[0]->grad, w[1]->grad));
        assert_true(nb_equal(b[0]->grad, b[1]->grad));
        NB_ASSERT_OK(nb_optim_step(o[0]));
        NB_ASSERT_OK(nb_grad_scaler_step(s, o[1])); /* does not unscale a second time */
        NB_ASSERT_OK(nb_grad_scaler_update(s));
        assert_true(nb_equal(w[0], w[1]));
        assert_true(nb_equal(b[0], b[1]));
        for (int r = 0; r < 2; r++)
            NB_ASSERT_OK(nb_optim_zero_grad(o[r]));
    }
    assert_int_equal(nb_grad_scaler_skipped_steps(s), 0);
    nb_grad_scaler_free(s);
    for (int r = 0; r < 2; r++) {
        nb_optim_free(o[r]);
        nb_release(w[r]);
        nb_release(b[r]);
    }
    nb_release(x);
    nb_release(y);
}

static void stages_are_checked_as_pytorch_does(void **state)
{
    (void)state;
    nb_tensor *p = vec3(1, 1, 1, true);
    nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 1});
    nb_grad_scaler *s = nb_grad_scaler_new((nb_grad_scaler_opts){0});
    assert_int_equal(nb_grad_scaler_update(s), NB_STATE);
    NB_ASSERT_ERROR_HAS("no inf checks were recorded");
    plant_grad(p, 1, 1, 1, 65536);
    NB_ASSERT_OK(nb_grad_scaler_unscale(s, o));
    assert_int_equal(nb_grad_scaler_unscale(s, o), NB_STATE);
    NB_ASSERT_ERROR_HAS("already called on this optimizer");
    NB_ASSERT_OK(nb_grad_scaler_step(s, o));
    assert_true(value_at(p, 0) == 0); /* unscaled once: 1 - 1 * 1 */
    assert_int_equal(nb_grad_scaler_step(s, o), NB_STATE);
    assert_int_equal(nb_grad_scaler_unscale(s, o), NB_STATE);
    NB_ASSERT_ERROR_HAS("after step");
    NB_ASSERT_OK(nb_grad_scaler_update(s));
    /* a second optimizer shares the scaler; an inf in either skips that one and backs off */
    nb_tensor *q = vec3(5, 5, 5, true);
    nb_optim *o2 = nb_sgd_new(&q, 1, (nb_sgd_opts){.lr = 1});
    plant_grad(p, 1, 1, 1, 65536);
    plant_grad(q, 1, NAN, 1, 65536);
    NB_ASSERT_OK(nb_grad_scaler_step(s, o));
    NB_ASSERT_OK(nb_grad_scaler_step(s, o2));
    NB_ASSERT_OK(nb_grad_scaler_update(s));
    assert_true(value_at(p, 0) == -1);
    assert_true(value_at(q, 0) == 5);
    assert_true(nb_grad_scaler_get_scale(s) == 32768);
    /* float16 gradients are refused before anything is unscaled */
    nb_release(p->grad);
    p->grad = nb_ones(NB_SHAPE(3), (nb_opts){.dtype = NB_DTYPE_F16});
    assert_int_equal(nb_grad_scaler_step(s, o), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("float16");
    nb_grad_scaler_free(s);
    nb_optim_free(o);
    nb_optim_free(o2);
    nb_release(p);
    nb_release(q);
}

static void a_disabled_scaler_is_the_plain_loop(void **state)
{
    (void)state;
    nb_tensor *p = vec3(1, 1, 1, true);
    nb_optim *o = nb_sgd_new(&p, 1, (nb_sgd_opts){.lr = 1});
    nb_grad_scaler *s = nb_grad_scaler_new((nb_grad_scaler_opts){.disabled = true});
    assert_true(nb_grad_scaler_get_scale(s) == 1);
    nb_tensor *loss = nb_scalar(3, (nb_opts){0}), *l = nb_grad_scaler_scale(s, loss);
    assert_true(nb_equal(l, loss));
    plant_grad(p, 1, INFINITY, 1, 1); /* no inf check when disabled, as PyTorch */
    NB_ASSERT_OK(nb_grad_scaler_unscale(s, o));
    NB_ASSERT_OK(nb_grad_scaler_step(s, o));
    NB_ASSERT_OK(nb_grad_scaler_update(s));
    assert_true(value_at(p, 0) == 0);
    assert_true(value_at(p, 1) == -INFINITY);
    nb_release(l);
    nb_release(loss);
    nb_grad_scaler_free(s);
    nb_optim_free(o);
    nb_release(p);
}

static void bad_input_is_an_error(void **state)
{
    (void)state;
    const nb_grad_scaler_opts bad[] = {
        {.init_scale = -1}, {.init_scale = 1e39}, {.growth_factor = 0.5},
        {.growth_factor = INFINITY}, {.backoff_factor = 1}, {.backoff_factor = -0.5},
        {.growth_interval = -3},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        nb_clear_error();
        assert_null(nb_grad_scaler_new(bad[k]));
        assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    }
    NB_ASSERT_ERROR_HAS("growth_interval -3");
    nb_clear_error();
    nb_grad_scaler *s = nb_grad_scaler_new((nb_grad_scaler_opts){0});
    assert_null(nb_grad_scaler_scale(s, NULL));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    assert_int_equal(nb_grad_scaler_step(s, NULL), NB_NULL_ARGUMENT);
    assert_int_equal(nb_grad_scaler_unscale(NULL, NULL), NB_NULL_ARGUMENT);
    assert_int_equal(nb_grad_scaler_update(NULL), NB_NULL_ARGUMENT);
    nb_tensor *i = nb_ones(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I64});
    assert_null(nb_grad_scaler_scale(s, i));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    nb_release(i);
    nb_grad_scaler_free(s);
    nb_grad_scaler_free(NULL);
}

/* A scaled step: scaler, scaled loss, backward, unscale + inf check, step, update. */
static nb_status scaled_step(void)
{
    nb_tensor *w = nb_full(NB_SHAPE(4), 0.5, (nb_opts){.requires_grad = true});
    nb_optim *o = w ? nb_sgd_new(&w, 1, (nb_sgd_opts){.lr = 0.1}) : NULL;
    nb_grad_scaler *s = o ? nb_grad_scaler_new((nb_grad_scaler_opts){0}) : NULL;
    nb_tensor *sq = NULL, *loss = NULL, *scaled = NULL;
    nb_status st = s ? NB_OK : nb_last_status();
    if (st == NB_OK) {
        sq = nb_mul(w, w);
        loss = nb_sum(sq, NULL, 0, false);
        scaled = nb_grad_scaler_scale(s, loss);
        st = scaled ? nb_backward(scaled, NULL, (nb_backward_opts){0}) : nb_last_status();
    }
    if (st == NB_OK)
        st = nb_grad_scaler_step(s, o);
    if (st == NB_OK)
        st = nb_grad_scaler_update(s);
    nb_release(scaled);
    nb_release(loss);
    nb_release(sq);
    nb_grad_scaler_free(s);
    nb_optim_free(o);
    nb_release(w);
    return st;
}

static void every_allocation_failing_in_a_scaled_step_fails_cleanly(void **state)
{
    (void)state;
    nb_test_every_allocation_fails_cleanly(scaled_step, 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(defaults_are_pytorchs),
        NB_TEST(an_inf_gradient_skips_the_step_and_halves_the_scale),
        NB_TEST(growth_interval_good_steps_double_the_scale),
        NB_TEST(unscaled_gradients_equal_the_plain_runs),
        NB_TEST(stages_are_checked_as_pytorch_does),
        NB_TEST(a_disabled_scaler_is_the_plain_loop),
        NB_TEST(bad_input_is_an_error),
        NB_TEST(every_allocation_failing_in_a_scaled_step_fails_cleanly),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
