/* test_state.c - tests core/nn/state.c: load_state strict and non-strict reports, and an
 * optimizer state that round-trips through files so a resumed run continues exactly. Expected values come from PyTorch 2.15
 * (float64, cpu); the Python that printed them is next to each block. */
#include "nn_extra_helpers.h"

#include <stdio.h>
#include <unistd.h>

/* ------------------------------------------------------------------ state and resume */

static void load_state_strict_and_non_strict_report_keys_like_pytorch(void **state)
{
    (void)state;
    nb_module *net = nb_linear_new(2, 3, true, (nb_opts){0});
    nb_tensor *w = nb_ones(NB_SHAPE(3, 2), (nb_opts){0});
    nb_tensor *extra = nb_ones(NB_SHAPE(1), (nb_opts){0});
    nb_tensor *ts[2] = {w, extra};
    const char *ns[2] = {"weight", "running_thing"};
    nb_load_report r;
    assert_int_equal(nb_module_load_state(net, ts, ns, 2, true, &r), NB_INVALID_ARGUMENT);
    assert_string_equal(nb_last_error(), "Error(s) in loading state_dict for Linear:\n\tMissing "
                        "key(s) in state_dict: \"bias\".\n\tUnexpected key(s) in state_dict: "
                        "\"running_thing\".");
    nb_tensor *p0 = nb_module_parameter(net, 0);
    double v = 0;
    nb_tensor *e0 = nb_select(p0, 0, 0), *e00 = nb_select(e0, 0, 0);
    NB_ASSERT_OK_(nb_item(e00, &v));
    assert_true(v != 1.0); /* strict refused: nothing copied */
    nb_load_report_free(&r);
    nb_clear_error();
    NB_ASSERT_OK_(nb_module_load_state(net, ts, ns, 2, false, &r));
    assert_int_equal(r.n_missing, 1);
    assert_string_equal(r.missing[0], "bias");
    assert_int_equal(r.n_unexpected, 1);
    assert_string_equal(r.unexpected[0], "running_thing");
    NB_ASSERT_OK_(nb_item(e00, &v));
    assert_true(v == 1.0);
    nb_load_report_free(&r);
    nb_tensor *bad = nb_ones(NB_SHAPE(2, 3), (nb_opts){0});
    assert_int_equal(nb_module_load_state(net, &bad, ns, 1, false, NULL), NB_SHAPE_MISMATCH);
    nb_clear_error();
    nb_release(bad);
    nb_release(e00);
    nb_release(e0);
    nb_release(extra);
    nb_release(w);
    nb_module_free(net);
}

/* three Adam steps; save model and optimizer; two more steps (a); restore both into fresh
 * objects and take the same two steps (b): a and b must agree bit for bit. */
static void one_step(nb_module *net, nb_optim *o, const nb_tensor *x)
{
    nb_tensor *y = nb_module_forward(net, x);
    nb_tensor *l = nb_mean(y, NULL, 0, false);
    nb_tensor *l2 = nb_mul(l, l);
    NB_ASSERT_OK_(nb_optim_zero_grad(o));
    NB_ASSERT_OK_(nb_backward(l2, NULL, (nb_backward_opts){0}));
    NB_ASSERT_OK_(nb_optim_step(o));
    nb_release(l2);
    nb_release(l);
    nb_release(y);
}

static nb_optim *adam_for(nb_module *net)
{
    nb_tensor *ps[2] = {nb_module_parameter(net, 0), nb_module_parameter(net, 1)};
    return nb_adamw_new(ps, 2, (nb_adam_opts){.lr = 0.05, .weight_decay = 0.1});
}

static void optimizer_state_round_trips_so_resume_continues_exactly(void **state)
{
    (void)state;
    char mpath[] = "/tmp/nb_resume_model_XXXXXX", opath[] = "/tmp/nb_resume_optim_XXXXXX";
    int f1 = mkstemp(mpath), f2 = mkstemp(opath);
    assert_true(f1 >= 0 && f2 >= 0);
    close(f1);
    close(f2);
    nb_manual_seed(7);
    nb_tensor *x = nb_randn(NB_SHAPE(4, 3), (nb_opts){0});
    nb_module *a = nb_linear_new(3, 2, true, (nb_opts){0});
    nb_optim *oa = adam_for(a);
    for (int k = 0; k < 3; k++)
        one_step(a, oa, x);
    NB_ASSERT_OK_(nb_module_save(a, mpath));
    NB_ASSERT_OK_(nb_optim_save(oa, opath));
    for (int k = 0; k < 2; k++)
        one_step(a, oa, x);
    nb_module *b = nb_linear_new(3, 2, true, (nb_opts){0});
    nb_optim *ob = adam_for(b);
    NB_ASSERT_OK_(nb_module_load(b, mpath));
    NB_ASSERT_OK_(nb_optim_load(ob, opath));
    for (int k = 0; k < 2; k++)
        one_step(b, ob, x);
    for (int32_t i = 0; i < 2; i++)
        assert_true(nb_equal(nb_module_parameter(a, i), nb_module_parameter(b, i)));
    /* restoring weights alone (fresh moments) gives a different trajectory */
    nb_module *c = nb_linear_new(3, 2, true, (nb_opts){0});
    nb_optim *oc = adam_for(c);
    NB_ASSERT_OK_(nb_module_load(c, mpath));
    for (int k = 0; k < 2; k++)
        one_step(c, oc, x);
    assert_false(nb_equal(nb_module_parameter(a, 0), nb_module_parameter(c, 0)));
    /* a checkpoint of another optimizer kind is refused */
    nb_tensor *ps[1] = {nb_module_parameter(c, 0)};
    nb_optim *sgd = nb_sgd_new(ps, 1, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9});
    assert_int_equal(nb_optim_load(sgd, opath), NB_FORMAT);
    nb_clear_error();
    nb_optim_free(sgd);
    nb_optim_free(oc);
    nb_module_free(c);
    nb_optim_free(ob);
    nb_module_free(b);
    nb_optim_free(oa);
    nb_module_free(a);
    nb_release(x);
    unlink(mpath);
    unlink(opath);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(load_state_strict_and_non_strict_report_keys_like_pytorch),
        NB_TEST(optimizer_state_round_trips_so_resume_continues_exactly),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
