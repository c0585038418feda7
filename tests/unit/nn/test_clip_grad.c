/* test_clip_grad.c - tests core/nn/clip_grad.c: clip_grad_norm_ scales every gradient by the
 * total norm, and clip_grad_value_. Expected values come from PyTorch 2.15
 * (float64, cpu); the Python that printed them is next to each block. */
#include "nn_extra_helpers.h"

/* ------------------------------------------------------------------ clip_grad */

static void clip_grad_norm_scales_every_gradient_by_the_total(void **state)
{
    (void)state;
    nb_tensor *a = nb_zeros(NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_F64, .requires_grad = true});
    nb_tensor *b = nb_zeros(NB_SHAPE(1), (nb_opts){.dtype = NB_DTYPE_F64, .requires_grad = true});
    nb_tensor *c = nb_zeros(NB_SHAPE(1), (nb_opts){.dtype = NB_DTYPE_F64, .requires_grad = true});
    nb_tensor *ga = tf64(NB_SHAPE(2), ARR(3, 0), false), *gb = tf64(NB_SHAPE(1), ARR(4), false);
    NB_ASSERT_OK_(nb_tensor_set_grad(a, ga));
    NB_ASSERT_OK_(nb_tensor_set_grad(b, gb));
    nb_tensor *ps[3] = {a, b, c}; /* c has no gradient: skipped */
    double total = 0;
    NB_ASSERT_OK_(nb_clip_grad_norm_(ps, 3, 1.0, 2.0, &total));
    assert_true(fabs(total - 5) < 1e-12);
    nb_tensor *g = nb_tensor_grad(a);
    expect_values(g, ARR(3 / (5 + 1e-6), 0), 2, 1e-12);
    nb_release(g);
    /* below the limit nothing changes */
    NB_ASSERT_OK_(nb_clip_grad_norm_(ps, 3, 10.0, 2.0, &total));
    g = nb_tensor_grad(b);
    expect_values(g, ARR(4 / (5 + 1e-6)), 1, 1e-12);
    nb_release(g);
    NB_ASSERT_OK_(nb_clip_grad_value_(ps, 3, 0.5));
    g = nb_tensor_grad(a);
    expect_values(g, ARR(0.5, 0), 2, 0);
    nb_release(g);
    NB_ASSERT_OK_(nb_clip_grad_norm_(ps, 2, 0.1, INFINITY, &total));
    assert_true(fabs(total - 0.5) < 1e-12);
    assert_int_equal(nb_clip_grad_norm_(ps, 2, 1, -1, NULL), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_release(gb);
    nb_release(ga);
    nb_release(c);
    nb_release(b);
    nb_release(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(clip_grad_norm_scales_every_gradient_by_the_total),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
