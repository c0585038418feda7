/* test_autograd.c - tests core/autograd.c and the backward rules next to the ops: grad_fn
 * names (PyTorch's), the graph, backward and nb_grad (incl. higher order), retain_graph, grad
 * mode, detach, the version counter, hooks, broadcasting undone, custom functions, and
 * nb_gradcheck on every differentiable op in float64 (and one wrong backward it must catch). */
#include "nb_test.h"

#include <stdio.h>
#include <stdlib.h>

static void fill_vals(double *v, int64_t n, double lo, double hi, int seed)
{
    for (int64_t k = 0; k < n; k++) {
        double u = fmod(fabs(sin((double)(k + 1) * 12.9898 + seed * 78.233)) * 43758.5453, 1.0);
        v[k] = lo + (hi - lo) * u;
    }
}

/* A float64 leaf with values in [lo, hi). */
static nb_tensor *leaf(nb_shape s, double lo, double hi, int seed)
{
    int64_t n = 1;
    for (int32_t d = 0; d < s.ndim; d++)
        n *= s.dims[d];
    double *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    fill_vals(v, n, lo, hi, seed);
    nb_tensor *t = nb_from_data(v, s, (nb_opts){NB_DTYPE_F64, .requires_grad = true});
    free(v);
    assert_non_null(t);
    return t;
}

static double *values(const nb_tensor *t, int64_t *n)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    *n = nb_tensor_numel(t);
    double *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, v, (size_t)*n * sizeof *v));
    nb_release(d);
    return v;
}

static void expect_values(const nb_tensor *t, const double *want, int64_t n, double tol)
{
    int64_t got_n;
    double *got = values(t, &got_n);
    assert_int_equal(got_n, n);
    for (int64_t k = 0; k < n; k++)
        if (!(fabs(got[k] - want[k]) <= tol * (1 + fabs(want[k]))))
            fail_msg("element %lld: got %.10g, expected %.10g", (long long)k, got[k], want[k]);
    free(got);
}

static void expect_all(const nb_tensor *t, double want, double tol)
{
    int64_t n;
    double *got = values(t, &n);
    for (int64_t k = 0; k < n; k++)
        if (!(fabs(got[k] - want) <= tol))
            fail_msg("element %lld: got %.10g, expected %.10g", (long long)k, got[k], want);
    free(got);
}

static const char *fn_name(const nb_tensor *t) { return nb_grad_fn_name(nb_tensor_grad_fn(t)); }

/* ---- the graph ---- */

static void leaves_and_results_are_told_apart(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(2), 0, 1, 1), *c = nb_ones(NB_SHAPE(2), (nb_opts){0});
    nb_tensor *y = nb_mul(x, c), *z = nb_add(c, c);
    assert_true(nb_tensor_is_leaf(x));
    assert_null(nb_tensor_grad_fn(x));
    assert_false(nb_tensor_is_leaf(y));
    assert_true(nb_tensor_requires_grad(y));
    assert_true(nb_tensor_is_leaf(z)); /* no input needs grad: no graph */
    assert_false(nb_tensor_requires_grad(z));
    assert_null(nb_tensor_grad_fn(z));
    nb_release(x);
    nb_release(c);
    nb_release(y);
    nb_release(z);
}

static void next_functions_end_in_accumulate_grad(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(2), 0, 1, 1), *w = leaf(NB_SHAPE(2), 0, 1, 2);
    nb_tensor *c = nb_ones(NB_SHAPE(2), (nb_opts){0});
    nb_tensor *m = nb_mul(x, w), *z = nb_add(m, c);
    const nb_grad_fn *f = nb_tensor_grad_fn(z);
    assert_string_equal(nb_grad_fn_name(f), "AddBackward0");
    assert_int_equal(nb_grad_fn_next_count(f), 2);
    const nb_grad_fn *mf = nb_grad_fn_next(f, 0);
    assert_string_equal(nb_grad_fn_name(mf), "MulBackward0");
    assert_null(nb_grad_fn_next(f, 1)); /* c needs no grad */
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(mf, 0)), "AccumulateGrad");
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(mf, 1)), "AccumulateGrad");
    assert_int_equal(nb_grad_fn_next_count(nb_grad_fn_next(mf, 0)), 0);
    /* x used twice shares one AccumulateGrad node, like torch */
    nb_tensor *xx = nb_mul(x, x);
    const nb_grad_fn *xf = nb_tensor_grad_fn(xx);
    assert_ptr_equal(nb_grad_fn_next(xf, 0), nb_grad_fn_next(xf, 1));
    assert_ptr_equal(nb_grad_fn_next(xf, 0), nb_grad_fn_next(mf, 0));
    assert_null(nb_grad_fn_next(f, 2));
    assert_null(nb_grad_fn_next(f, -1));
    assert_null(nb_grad_fn_name(NULL));
    nb_tensor *r[] = {x, w, c, m, z, xx};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

/* One op per row: its result's grad_fn must carry the name torch 1.13 gives. */
static void grad_fn_names_are_pytorchs(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(2, 3), 0.2, 0.8, 3), *y = leaf(NB_SHAPE(2, 3), 0.2, 0.8, 4);
    nb_tensor *m = leaf(NB_SHAPE(3, 2), -1, 1, 5);
    int64_t iv[4] = {0, 1, 2, 0};
    nb_tensor *idx = nb_from_data(iv, NB_SHAPE(2, 2), (nb_opts){NB_DTYPE_I64});
    nb_tensor *sel = nb_from_data(iv, NB_SHAPE(2), (nb_opts){NB_DTYPE_I64});
    nb_tensor *b = nb_gt_scalar(x, 0.5);
    int32_t d1[1] = {1}, p10[2] = {1, 0};
    nb_tensor *xy[2] = {x, y};
    nb_scope_begin();
    nb_tensor *x3 = nb_unsqueeze(x, 0), *m3 = nb_unsqueeze(m, 0), *x1 = nb_narrow(x, 0, 0, 1);
    nb_tensor *xt = nb_t(x);
    struct {
        nb_tensor *t;
        const char *want;
    } rows[] = {
        {nb_add(x, y), "AddBackward0"},
        {nb_add_scalar(x, 2), "AddBackward0"},
        {nb_sub(x, y), "SubBackward0"},
        {nb_sub_scalar(x, 2), "SubBackward0"},
        {nb_rsub_scalar(x, 2), "RsubBackward1"},
        {nb_mul(x, y), "MulBackward0"},
        {nb_mul_scalar(x, 2), "MulBackward0"},
        {nb_div(x, y), "DivBackward0"},
        {nb_div_scalar(x, 2), "DivBackward0"},
        {nb_pow(x, y), "PowBackward1"},
        {nb_pow_scalar(x, 2), "PowBackward0"},
        {nb_maximum(x, y), "MaximumBackward0"},
        {nb_minimum(x, y), "MinimumBackward0"},
        {nb_neg(x), "NegBackward0"},
        {nb_abs(x), "AbsBackward0"},
        {nb_exp(x), "ExpBackward0"},
        {nb_log(x), "LogBackward0"},
        {nb_sqrt(x), "SqrtBackward0"},
        {nb_rsqrt(x), "RsqrtBackward0"},
        {nb_sin(x), "SinBackward0"},
        {nb_cos(x), "CosBackward0"},
        {nb_tanh(x), "TanhBackward0"},
        {nb_sigmoid(x), "SigmoidBackward0"},
        {nb_relu(x), "ReluBackward0"},
        {nb_sign(x), "SignBackward0"},
        {nb_floor(x), "FloorBackward0"},
        {nb_ceil(x), "CeilBackward0"},
        {nb_round(x), "RoundBackward0"},
        {nb_clamp(x, 0.2, 0.5), "ClampBackward1"},
        {nb_clamp(x, 0.2, NAN), "ClampBackward1"},
        {nb_where(b, x, y), "WhereBackward0"},
        {nb_sum(x, NULL, 0, false), "SumBackward0"},
        {nb_sum(x, d1, 1, false), "SumBackward1"},
        {nb_mean(x, NULL, 0, false), "MeanBackward0"},
        {nb_mean(x, d1, 1, true), "MeanBackward1"},
        {nb_prod(x, NULL, 0, false), "ProdBackward0"},
        {nb_prod(x, d1, 1, false), "ProdBackward1"},
        {nb_amax(x, NULL, 0, false), "AmaxBackward0"},
        {nb_amin(x, d1, 1, false), "AminBackward0"},
        {nb_mm(x, m), "MmBackward0"},
        {nb_matmul(x, m), "MmBackward0"},
        {nb_bmm(x3, m3), "BmmBackward0"},
        {nb_gather(x, 1, idx), "GatherBackward0"},
        {nb_index_select(x, 1, sel), "IndexSelectBackward0"},
        {nb_scatter_add(x, 1, idx, y), "ScatterAddBackward0"},
        {nb_cat(xy, 2, 0), "CatBackward0"},
        {nb_view(x, NB_SHAPE(6)), "ViewBackward0"},
        {nb_transpose(x, 0, 1), "TransposeBackward0"},
        {nb_permute(x, p10, 2), "PermuteBackward0"},
        {nb_squeeze(x3, 0), "SqueezeBackward1"},
        {nb_squeeze_all(x3), "SqueezeBackward0"},
        {nb_unsqueeze(x, 0), "UnsqueezeBackward0"},
        {nb_expand(x1, NB_SHAPE(4, 3)), "ExpandBackward0"},
        {nb_narrow(x, 1, 0, 2), "SliceBackward0"},
        {nb_slice(x, 1, 0, 3, 2), "SliceBackward0"},
        {nb_select(x, 0, 1), "SelectBackward0"},
        {nb_to_dtype(x, NB_DTYPE_F32), "ToCopyBackward0"},
        {nb_clone(x), "CloneBackward0"},
        {nb_contiguous(xt), "CloneBackward0"},
    };
    int wrong = 0;
    for (size_t k = 0; k < sizeof rows / sizeof *rows; k++) {
        if (!rows[k].t) {
            print_error("row %zu (%s): %s\n", k, rows[k].want, nb_last_error());
            wrong++;
            continue;
        }
        const char *got = fn_name(rows[k].t);
        if (!got || strcmp(got, rows[k].want) != 0) {
            print_error("row %zu: grad_fn %s, torch says %s\n", k, got ? got : "(none)",
                        rows[k].want);
            wrong++;
        }
    }
    nb_tensor *c2 = nb_zeros(NB_SHAPE(2, 2), (nb_opts){NB_DTYPE_F64});
    nb_tensor *am = nb_addmm(c2, x, m, 1, 1);
    assert_string_equal(fn_name(am), "AddmmBackward0");
    nb_scope_end();
    nb_tensor *r[] = {x, y, m, idx, sel, b}; /* c2 and am went with the scope */
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
    assert_int_equal(wrong, 0);
}

/* ---- backward ---- */

static void backward_of_the_torch_tutorial_example(void **state)
{
    (void)state;
    /* x = ones(2, 2, requires_grad); out = ((x + 2) * (x + 2) * 3).mean(); x.grad = 4.5 */
    nb_tensor *x = nb_ones(NB_SHAPE(2, 2), (nb_opts){.requires_grad = true});
    nb_scope_begin();
    nb_tensor *y = nb_add_scalar(x, 2), *z = nb_mul_scalar(nb_mul(y, y), 3);
    nb_tensor *out = nb_mean(z, NULL, 0, false);
    double v;
    NB_ASSERT_OK(nb_item(out, &v));
    assert_true(v == 27);
    NB_ASSERT_OK(nb_backward(out, NULL, false));
    nb_scope_end();
    nb_tensor *g = nb_tensor_grad(x);
    assert_non_null(g);
    expect_all(g, 4.5, 0);
    assert_false(nb_tensor_requires_grad(g)); /* .grad carries no graph */
    nb_release(g);
    nb_release(x);
}

static void non_scalar_backward_needs_a_gradient(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 6), *y = nb_mul_scalar(x, 2);
    assert_int_equal(nb_backward(y, NULL, false), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("grad can be implicitly created only for scalar outputs");
    nb_clear_error();
    double gv[3] = {1, 10, 100};
    nb_tensor *g = nb_from_data(gv, NB_SHAPE(3), (nb_opts){NB_DTYPE_F64});
    NB_ASSERT_OK(nb_backward(y, g, false));
    nb_tensor *xg = nb_tensor_grad(x);
    expect_values(xg, (double[]){2, 20, 200}, 3, 0);
    nb_tensor *bad = nb_ones(NB_SHAPE(4), (nb_opts){NB_DTYPE_F64}), *y2 = nb_mul_scalar(x, 2);
    assert_int_equal(nb_backward(y2, bad, false), NB_SHAPE_MISMATCH);
    nb_clear_error();
    nb_tensor *c = nb_ones(NB_SHAPE(1), (nb_opts){0});
    assert_int_equal(nb_backward(c, NULL, false), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("does not require grad");
    nb_clear_error();
    assert_int_equal(nb_backward(NULL, NULL, false), NB_NULL_ARGUMENT);
    nb_tensor *r[] = {x, y, g, xg, bad, y2, c};
    for (size_t k = 0; k < 7; k++)
        nb_release(r[k]);
}

static void second_backward_needs_retain_graph(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0.5, 1, 7);
    nb_scope_begin();
    nb_tensor *s = nb_sum(nb_mul(nb_exp(x), x), NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s, NULL, false));
    assert_int_equal(nb_backward(s, NULL, false), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("retain_graph");
    NB_ASSERT_ERROR_HAS("second time");
    nb_clear_error();
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    nb_tensor *s2 = nb_sum(nb_mul(nb_exp(x), x), NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s2, NULL, true));
    NB_ASSERT_OK(nb_backward(s2, NULL, false)); /* kept by the first: works, and adds up */
    nb_scope_end();
    int64_t n;
    double *xv = values(x, &n), want[3];
    for (int k = 0; k < 3; k++)
        want[k] = 2 * (exp(xv[k]) * (xv[k] + 1)); /* d(x e^x) = e^x (x + 1), twice */
    nb_tensor *g = nb_tensor_grad(x);
    expect_values(g, want, 3, 1e-12);
    free(xv);
    nb_release(g);
    nb_release(x);
}

static void gradients_accumulate_until_zero_grad(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(2), 0, 1, 8);
    for (int k = 1; k <= 3; k++) {
        nb_scope_begin();
        NB_ASSERT_OK(nb_backward(nb_sum(nb_mul_scalar(x, 5), NULL, 0, false), NULL, false));
        nb_scope_end();
        nb_tensor *g = nb_tensor_grad(x);
        expect_all(g, 5.0 * k, 1e-12);
        nb_release(g);
    }
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    assert_null(nb_tensor_grad(x));
    assert_int_equal(nb_last_status(), NB_OK); /* no grad is not an error */
    nb_scope_begin();
    NB_ASSERT_OK(nb_backward(nb_sum(x, NULL, 0, false), NULL, false));
    nb_scope_end();
    nb_tensor *g = nb_tensor_grad(x);
    expect_all(g, 1, 0);
    /* set_grad checks what it is given */
    nb_tensor *wrong = nb_ones(NB_SHAPE(3), (nb_opts){NB_DTYPE_F64});
    assert_int_equal(nb_tensor_set_grad(x, wrong), NB_SHAPE_MISMATCH);
    nb_clear_error();
    NB_ASSERT_OK(nb_tensor_set_grad(x, NULL));
    assert_null(nb_tensor_grad(x));
    nb_release(wrong);
    nb_release(g);
    nb_release(x);
}

static void retain_grad_keeps_a_non_leaf_gradient(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 9);
    nb_tensor *y = nb_mul_scalar(x, 3), *z = nb_mul_scalar(x, 4);
    NB_ASSERT_OK(nb_tensor_retain_grad(y));
    nb_scope_begin();
    nb_tensor *s = nb_sum(nb_add(nb_mul(y, y), z), NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s, NULL, false));
    nb_scope_end();
    nb_tensor *yg = nb_tensor_grad(y), *zg = nb_tensor_grad(z);
    int64_t n;
    double *yv = values(y, &n), want[3];
    for (int k = 0; k < 3; k++)
        want[k] = 2 * yv[k];
    expect_values(yg, want, 3, 1e-12);
    assert_null(zg); /* a non-leaf without retain_grad keeps nothing */
    nb_tensor *c = nb_ones(NB_SHAPE(1), (nb_opts){0});
    assert_int_equal(nb_tensor_retain_grad(c), NB_AUTOGRAD);
    free(yv);
    nb_tensor *r[] = {x, y, z, yg, c};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
}

static void broadcasting_is_undone_in_the_gradient(void **state)
{
    (void)state;
    nb_tensor *a = leaf(NB_SHAPE(3, 1), 0, 1, 10), *b = leaf(NB_SHAPE(1, 4), 0, 1, 11);
    nb_tensor *s0 = leaf(NB_SHAPE_SCALAR, 0, 1, 12);
    nb_scope_begin();
    NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(nb_add(a, b), s0), NULL, 0, false), NULL, false));
    nb_scope_end();
    nb_tensor *ga = nb_tensor_grad(a), *gb = nb_tensor_grad(b), *gs = nb_tensor_grad(s0);
    nb_shape sa = nb_tensor_shape(ga), sb = nb_tensor_shape(gb);
    assert_int_equal(sa.ndim, 2);
    assert_true(sa.dims[0] == 3 && sa.dims[1] == 1);
    assert_int_equal(sb.ndim, 2);
    assert_true(sb.dims[0] == 1 && sb.dims[1] == 4);
    assert_int_equal(nb_tensor_ndim(gs), 0);
    int64_t n;
    double *sv = values(s0, &n), *av = values(a, &n), *bv = values(b, &n);
    expect_all(ga, 4 * sv[0], 1e-12); /* each a[i] meets 4 b's */
    expect_all(gb, 3 * sv[0], 1e-12);
    double want = 0; /* d/ds sum(a + b) s = sum over the 12 pairs */
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
            want += av[i] + bv[j];
    expect_values(gs, &want, 1, 1e-12);
    free(sv);
    free(av);
    free(bv);
    nb_tensor *r[] = {a, b, s0, ga, gb, gs};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

/* ---- nb_grad ---- */

static void second_derivative_of_cube_is_six_x(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(4), -2, 2, 13);
    nb_tensor *y = nb_pow_scalar(x, 3), *s = nb_sum(y, NULL, 0, false);
    nb_tensor *dx = NULL, *d2x = NULL;
    NB_ASSERT_OK(nb_grad(&s, NULL, 1, &x, 1, (nb_grad_opts){.create_graph = true}, &dx));
    assert_true(nb_tensor_requires_grad(dx)); /* a graph of its own */
    nb_tensor *sd = nb_sum(dx, NULL, 0, false);
    NB_ASSERT_OK(nb_grad(&sd, NULL, 1, &x, 1, (nb_grad_opts){0}, &d2x));
    int64_t n;
    double *xv = values(x, &n), w1[4], w2[4];
    for (int k = 0; k < 4; k++)
        w1[k] = 3 * xv[k] * xv[k], w2[k] = 6 * xv[k];
    expect_values(dx, w1, 4, 1e-12);
    expect_values(d2x, w2, 4, 1e-12);
    assert_false(nb_tensor_requires_grad(d2x));
    assert_null(nb_tensor_grad(x)); /* nb_grad never touches .grad */
    free(xv);
    nb_tensor *r[] = {x, y, s, dx, sd, d2x};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

static void grad_reports_unused_inputs_unless_allowed(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(2), 0, 1, 14), *u = leaf(NB_SHAPE(2), 0, 1, 15);
    nb_tensor *s = nb_sum(x, NULL, 0, false);
    nb_tensor *in[2] = {x, u}, *g[2] = {NULL, NULL};
    assert_int_equal(nb_grad(&s, NULL, 1, in, 2, (nb_grad_opts){.retain_graph = true}, g),
                     NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("allow_unused");
    assert_null(g[0]);
    nb_clear_error();
    NB_ASSERT_OK(nb_grad(&s, NULL, 1, in, 2, (nb_grad_opts){.allow_unused = true}, g));
    expect_all(g[0], 1, 0);
    assert_null(g[1]);
    nb_release(g[0]);
    nb_release(x);
    nb_release(u);
    nb_release(s);
}

/* ---- grad mode ---- */

static void no_grad_mode_nests(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(2), 0, 1, 16);
    assert_true(nb_is_grad_enabled());
    nb_no_grad_begin();
    nb_no_grad_begin();
    nb_tensor *a = nb_mul_scalar(x, 2);
    nb_no_grad_end();
    assert_false(nb_is_grad_enabled()); /* still inside the outer one */
    nb_tensor *b = nb_mul_scalar(x, 2);
    NB_ASSERT_OK(nb_add_scalar_(x, 1)); /* in place on a leaf is fine here */
    nb_no_grad_end();
    assert_true(nb_is_grad_enabled());
    nb_tensor *c = nb_mul_scalar(x, 2);
    assert_false(nb_tensor_requires_grad(a));
    assert_false(nb_tensor_requires_grad(b));
    assert_true(nb_tensor_requires_grad(c));
    assert_true(nb_set_grad_enabled(false));
    assert_false(nb_set_grad_enabled(true));
    nb_no_grad_end(); /* unbalanced */
    assert_int_equal(nb_last_status(), NB_STATE);
    assert_true(nb_is_grad_enabled());
    nb_tensor *r[] = {x, a, b, c};
    for (size_t k = 0; k < 4; k++)
        nb_release(r[k]);
}

static void detach_shares_storage_and_drops_the_graph(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 17), *y = nb_mul_scalar(x, 2), *d = nb_detach(y);
    assert_true(nb_tensor_shares_storage(d, y));
    assert_false(nb_tensor_requires_grad(d));
    assert_null(nb_tensor_grad_fn(d));
    NB_ASSERT_OK(nb_fill_(d, 9)); /* a write through the detached view shows in y */
    expect_all(y, 9, 0);
    nb_release(x);
    nb_release(y);
    nb_release(d);
}

/* ---- in-place checks ---- */

static void in_place_change_of_a_saved_tensor_is_caught(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 18);
    nb_tensor *e = nb_exp(x); /* exp saves its output */
    nb_tensor *s = nb_sum(e, NULL, 0, false);
    int64_t v0 = nb_tensor_version(e);
    NB_ASSERT_OK(nb_add_scalar_(e, 1));
    assert_true(nb_tensor_version(e) > v0);
    assert_int_equal(nb_backward(s, NULL, false), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("modified by an inplace operation");
    NB_ASSERT_ERROR_HAS("ExpBackward0");
    nb_release(x);
    nb_release(e);
    nb_release(s);
}

static void in_place_on_a_leaf_that_requires_grad_is_refused(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 19), *o = nb_ones(NB_SHAPE(3), (nb_opts){NB_DTYPE_F64});
    int64_t v0 = nb_tensor_version(x);
    assert_int_equal(nb_add_(x, o), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("leaf tensor that requires grad is being used in an in-place operation");
    nb_clear_error();
    assert_int_equal(nb_mul_scalar_(x, 2), NB_AUTOGRAD);
    nb_clear_error();
    assert_int_equal(nb_exp_(x), NB_AUTOGRAD);
    nb_clear_error();
    assert_int_equal(nb_fill_(x, 0), NB_AUTOGRAD);
    nb_clear_error();
    assert_int_equal(nb_clamp_(x, 0, 1), NB_AUTOGRAD);
    assert_int_equal(nb_tensor_version(x), v0);
    nb_release(x);
    nb_release(o);
}

static void in_place_on_a_non_leaf_joins_the_graph(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 20), *y = nb_mul_scalar(x, 2);
    NB_ASSERT_OK(nb_mul_scalar_(y, 3)); /* y = (2x) * 3 */
    nb_scope_begin();
    NB_ASSERT_OK(nb_backward(nb_sum(y, NULL, 0, false), NULL, false));
    nb_scope_end();
    nb_tensor *g = nb_tensor_grad(x);
    expect_all(g, 6, 1e-12);
    nb_release(g);
    nb_release(x);
    nb_release(y);
}

/* ---- hooks ---- */

static int hook_calls;
static double hook_seen;

static nb_tensor *read_hook(const nb_tensor *g, void *ctx)
{
    hook_calls++;
    double v;
    nb_tensor *first = nb_select(g, 0, 0);
    nb_item(first, &v);
    nb_release(first);
    hook_seen = v;
    *(int *)ctx += 1;
    return NULL; /* keep the gradient */
}

static nb_tensor *double_hook(const nb_tensor *g, void *ctx)
{
    (void)ctx;
    hook_calls++;
    return nb_mul_scalar(g, 2);
}

static void hooks_read_and_replace_gradients(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 21);
    int mine = 0;
    hook_calls = 0;
    NB_ASSERT_OK(nb_tensor_register_hook(x, read_hook, &mine));
    nb_tensor *y = nb_mul_scalar(x, 5);
    NB_ASSERT_OK(nb_tensor_register_hook(y, double_hook, NULL)); /* on a non-leaf */
    nb_tensor *s = nb_sum(y, NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s, NULL, false));
    nb_release(s);
    assert_int_equal(hook_calls, 2);
    assert_int_equal(mine, 1);
    assert_true(hook_seen == 10); /* 5 * the doubled 1 */
    nb_tensor *g = nb_tensor_grad(x);
    expect_all(g, 10, 1e-12);
    nb_tensor *c = nb_ones(NB_SHAPE(1), (nb_opts){0});
    assert_int_equal(nb_tensor_register_hook(c, read_hook, NULL), NB_AUTOGRAD);
    nb_clear_error();
    assert_int_equal(nb_tensor_register_hook(x, NULL, NULL), NB_NULL_ARGUMENT);
    nb_release(c);
    nb_release(g);
    nb_release(x);
    nb_release(y);
}

/* A hook may replace a gradient only by one of the same shape, dtype and device (PyTorch's
 * rule): a wrong one once reached .grad, and the optimizers read past it. */
static nb_tensor *wrong_shape_hook(const nb_tensor *g, void *ctx)
{
    (void)g, (void)ctx;
    return nb_ones(NB_SHAPE(5), (nb_opts){NB_DTYPE_F64});
}

static nb_tensor *wrong_dtype_hook(const nb_tensor *g, void *ctx)
{
    (void)ctx;
    return nb_to_dtype(g, NB_DTYPE_I64);
}

static void hooks_must_keep_the_gradient_shape_and_dtype(void **state)
{
    (void)state;
    nb_tensor *(*hooks[2])(const nb_tensor *, void *) = {wrong_shape_hook, wrong_dtype_hook};
    const char *want[2] = {"hook returned a gradient of shape [5], dtype float64 on cpu; "
                           "expected the gradient's shape [3], dtype float64 on cpu",
                           "dtype int64"};
    for (int k = 0; k < 2; k++) {
        for (int on_leaf = 0; on_leaf < 2; on_leaf++) {
            nb_tensor *x = leaf(NB_SHAPE(3), 0, 1, 24);
            nb_tensor *y = nb_mul_scalar(x, 2);
            NB_ASSERT_OK(nb_tensor_register_hook(on_leaf ? x : y, hooks[k], NULL));
            nb_tensor *s = nb_sum(y, NULL, 0, false);
            nb_clear_error();
            assert_int_equal(nb_backward(s, NULL, false), NB_AUTOGRAD);
            NB_ASSERT_ERROR_HAS(want[k]);
            nb_tensor *g = nb_tensor_grad(x);
            assert_null(g); /* nothing reached .grad */
            nb_clear_error();
            nb_release(s);
            nb_release(y);
            nb_release(x);
        }
    }
}

/* ---- custom functions ---- */

static int ctx_frees;
static void free_ctx(void *ctx)
{
    ctx_frees++;
    free(ctx);
}

/* out = k * a * b with k in the context; backward gives k * b * g and k * a * g. */
static nb_tensor *scaled_mul_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    (void)n;
    nb_tensor *p = nb_mul(in[0], in[1]), *r = nb_mul_scalar(p, *(double *)ctx);
    nb_release(p);
    return r;
}

static nb_status scaled_mul_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    (void)n;
    double k = *(double *)ctx;
    /* the inputs are not handed to backward: this test's function closes over them */
    nb_tensor *const *in = ((nb_tensor *const *)((double *)ctx + 1));
    nb_tensor *gb = nb_mul(g, in[1]), *ga = nb_mul(g, in[0]);
    gi[0] = nb_mul_scalar(gb, k);
    gi[1] = nb_mul_scalar(ga, k);
    nb_release(gb);
    nb_release(ga);
    return gi[0] && gi[1] ? NB_OK : nb_last_status();
}

static const nb_function scaled_mul = {"ScaledMulBackward", scaled_mul_forward,
                                       scaled_mul_backward, free_ctx};

static void *scaled_ctx(double k, nb_tensor *a, nb_tensor *b)
{
    char *ctx = malloc(sizeof(double) + 2 * sizeof(nb_tensor *));
    memcpy(ctx, &k, sizeof k);
    nb_tensor *ab[2] = {a, b};
    memcpy(ctx + sizeof(double), ab, sizeof ab);
    return ctx;
}

static void custom_function_runs_its_backward(void **state)
{
    (void)state;
    nb_tensor *a = leaf(NB_SHAPE(3), 0, 1, 22), *b = leaf(NB_SHAPE(3), 0, 1, 23);
    nb_tensor *in[2] = {a, b};
    ctx_frees = 0;
    nb_tensor *out = nb_function_apply(&scaled_mul, scaled_ctx(3, a, b), in, 2);
    assert_non_null(out);
    assert_string_equal(fn_name(out), "ScaledMulBackward");
    nb_tensor *s = nb_sum(out, NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s, NULL, false));
    nb_release(s);
    int64_t n;
    double *av = values(a, &n), *bv = values(b, &n), wa[3], wb[3];
    for (int k = 0; k < 3; k++)
        wa[k] = 3 * bv[k], wb[k] = 3 * av[k];
    nb_tensor *ga = nb_tensor_grad(a), *gb = nb_tensor_grad(b);
    expect_values(ga, wa, 3, 1e-12);
    expect_values(gb, wb, 3, 1e-12);
    nb_release(out);
    assert_int_equal(ctx_frees, 1); /* the graph went with out */
    /* without grad there is no graph: the context is freed at once */
    nb_no_grad_begin();
    out = nb_function_apply(&scaled_mul, scaled_ctx(3, a, b), in, 2);
    nb_no_grad_end();
    assert_int_equal(ctx_frees, 2);
    assert_false(nb_tensor_requires_grad(out));
    nb_function broken = {"Broken", NULL, scaled_mul_backward, free_ctx};
    nb_clear_error();
    assert_null(nb_function_apply(&broken, scaled_ctx(1, a, b), in, 2));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    NB_ASSERT_ERROR_HAS("function_apply: its forward is NULL");
    assert_int_equal(ctx_frees, 3);
    nb_clear_error();
    assert_null(nb_function_apply(NULL, NULL, in, 2));
    NB_ASSERT_ERROR_HAS("function_apply: the function is NULL");
    nb_clear_error();
    assert_null(nb_function_apply(&scaled_mul, scaled_ctx(1, a, b), NULL, 2));
    NB_ASSERT_ERROR_HAS("function_apply: inputs is NULL");
    assert_int_equal(ctx_frees, 4);
    free(av);
    free(bv);
    nb_tensor *r[] = {a, b, out, ga, gb};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
}

/* ---- gradcheck on every differentiable op ---- */

typedef struct gc_case {
    const char *name;
    nb_gradcheck_fn fn;
    int32_t n;
    nb_shape shapes[3];
    double lo, hi; /* input range, away from kinks and poles */
} gc_case;

#define GC1(fname, expr)                                                                   \
    static nb_tensor *fname(nb_tensor *const *x, int32_t n, void *ctx)                     \
    {                                                                                      \
        (void)n;                                                                           \
        (void)ctx;                                                                         \
        return (expr);                                                                     \
    }

static int32_t dim1[1] = {1}, dim0[1] = {0}, dims01[2] = {0, 1}, perm[3] = {2, 0, 1};
static nb_tensor *idx_2x2, *idx_sel;

/* Chains release their intermediates through a scope of their own. */
#define GCS(fname, expr)                                                                   \
    static nb_tensor *fname(nb_tensor *const *x, int32_t n, void *ctx)                     \
    {                                                                                      \
        (void)n;                                                                           \
        (void)ctx;                                                                         \
        nb_scope_begin();                                                                  \
        nb_tensor *r_ = nb_keep(expr);                                                     \
        nb_scope_end();                                                                    \
        return r_;                                                                         \
    }

GC1(gc_add, nb_add(x[0], x[1]))
GC1(gc_sub, nb_sub(x[0], x[1]))
GC1(gc_mul, nb_mul(x[0], x[1]))
GC1(gc_div, nb_div(x[0], x[1]))
GC1(gc_pow, nb_pow(x[0], x[1]))
GC1(gc_maximum, nb_maximum(x[0], x[1]))
GC1(gc_minimum, nb_minimum(x[0], x[1]))
GC1(gc_add_scalar, nb_add_scalar(x[0], 1.5))
GC1(gc_sub_scalar, nb_sub_scalar(x[0], 1.5))
GC1(gc_mul_scalar, nb_mul_scalar(x[0], -2.5))
GC1(gc_div_scalar, nb_div_scalar(x[0], 3))
GC1(gc_pow_scalar, nb_pow_scalar(x[0], 2.5))
GC1(gc_rsub_scalar, nb_rsub_scalar(x[0], 2))
GC1(gc_rdiv_scalar, nb_rdiv_scalar(x[0], 2))
GC1(gc_neg, nb_neg(x[0]))
GC1(gc_exp, nb_exp(x[0]))
GC1(gc_log, nb_log(x[0]))
GC1(gc_sqrt, nb_sqrt(x[0]))
GC1(gc_rsqrt, nb_rsqrt(x[0]))
GC1(gc_sin, nb_sin(x[0]))
GC1(gc_cos, nb_cos(x[0]))
GC1(gc_tanh, nb_tanh(x[0]))
GC1(gc_sigmoid, nb_sigmoid(x[0]))
GC1(gc_relu, nb_relu(x[0]))
GC1(gc_abs, nb_abs(x[0]))
GC1(gc_clamp, nb_clamp(x[0], -0.35, 0.45))
GC1(gc_clamp_min, nb_clamp(x[0], -0.35, NAN))
GCS(gc_where, nb_where(nb_gt_scalar(x[0], 0), x[0], x[1]))
GC1(gc_sum, nb_sum(x[0], NULL, 0, false))
GC1(gc_sum_dim, nb_sum(x[0], dim1, 1, true))
GC1(gc_mean, nb_mean(x[0], dim0, 1, false))
GC1(gc_prod, nb_prod(x[0], dim1, 1, false))
GC1(gc_amax, nb_amax(x[0], dim1, 1, false))
GC1(gc_amin, nb_amin(x[0], NULL, 0, false))
GC1(gc_var, nb_var(x[0], dim1, 1, 1, false))
GC1(gc_std, nb_std(x[0], dims01, 2, 0, true))
GC1(gc_norm2, nb_norm(x[0], 2, NULL, 0, false))
GC1(gc_norm1, nb_norm(x[0], 1, dim1, 1, false))
GC1(gc_norm3, nb_norm(x[0], 3, NULL, 0, false))
GC1(gc_mm, nb_mm(x[0], x[1]))
GC1(gc_bmm, nb_bmm(x[0], x[1]))
GC1(gc_matmul_vec, nb_matmul(x[0], x[1]))
GC1(gc_matmul_batch, nb_matmul(x[0], x[1]))
GC1(gc_addmm, nb_addmm(x[0], x[1], x[2], 0.5, 2))
GC1(gc_gather, nb_gather(x[0], 1, idx_2x2))
GC1(gc_index_select, nb_index_select(x[0], 1, idx_sel))
GC1(gc_scatter_add, nb_scatter_add(x[0], 1, idx_2x2, x[1]))
GC1(gc_cat, nb_cat(x, 2, 1))
GC1(gc_stack, nb_stack(x, 2, 0))
GCS(gc_views, nb_mul(nb_reshape(nb_transpose(x[0], 0, 1), NB_SHAPE(2, 3)),
                     nb_unsqueeze(nb_squeeze(nb_view(x[1], NB_SHAPE(1, 3)), 0), 0)))
GCS(gc_permute, nb_flatten(nb_permute(x[0], perm, 3), 0, 1))
GCS(gc_expand, nb_expand(nb_narrow(x[0], 0, 1, 1), NB_SHAPE(4, 3)))
GCS(gc_slice, nb_add(nb_slice(x[0], 1, 0, 4, 2), nb_select(x[0], 1, 1))) /* (2,2) + (2) */
GCS(gc_contiguous, nb_contiguous(nb_t(x[0])))
GC1(gc_clone, nb_clone(x[0]))
GCS(gc_to_dtype, nb_to_dtype(nb_mul(nb_to_dtype(x[0], NB_DTYPE_F32), x[0]), NB_DTYPE_F64))
static nb_tensor *gc_max_dim(nb_tensor *const *x, int32_t n, void *ctx)
{
    (void)n;
    (void)ctx;
    nb_tensor *v = NULL;
    nb_max_dim(x[0], 1, false, &v, NULL);
    return v;
}
GCS(gc_chain, nb_mean(nb_sigmoid(nb_addmm(x[2], x[0], x[1], 1, 1)), NULL, 0, false))

#define S(...) NB_SHAPE(__VA_ARGS__)
static const gc_case gc_cases[] = {
    {"add (broadcast [3,1] + [1,4])", gc_add, 2, {S(3, 1), S(1, 4)}, -1, 1},
    {"sub (0-d - [2,3])", gc_sub, 2, {NB_SHAPE_SCALAR, S(2, 3)}, -1, 1},
    {"mul (broadcast)", gc_mul, 2, {S(2, 3), S(3)}, -1, 1},
    {"div", gc_div, 2, {S(2, 3), S(2, 3)}, 0.5, 2},
    {"pow", gc_pow, 2, {S(2, 3), S(2, 3)}, 0.5, 2},
    {"maximum", gc_maximum, 2, {S(5), S(5)}, -1, 1},
    {"minimum", gc_minimum, 2, {S(5), S(5)}, -1, 1},
    {"add_scalar", gc_add_scalar, 1, {S(4)}, -1, 1},
    {"sub_scalar", gc_sub_scalar, 1, {S(4)}, -1, 1},
    {"mul_scalar", gc_mul_scalar, 1, {S(4)}, -1, 1},
    {"div_scalar", gc_div_scalar, 1, {S(4)}, -1, 1},
    {"pow_scalar", gc_pow_scalar, 1, {S(4)}, 0.5, 2},
    {"rsub_scalar", gc_rsub_scalar, 1, {S(4)}, -1, 1},
    {"rdiv_scalar", gc_rdiv_scalar, 1, {S(4)}, 0.5, 2},
    {"neg", gc_neg, 1, {S(4)}, -1, 1},
    {"exp", gc_exp, 1, {S(2, 2)}, -1, 1},
    {"log", gc_log, 1, {S(2, 2)}, 0.5, 2},
    {"sqrt", gc_sqrt, 1, {S(2, 2)}, 0.5, 2},
    {"rsqrt", gc_rsqrt, 1, {S(2, 2)}, 0.5, 2},
    {"sin", gc_sin, 1, {S(2, 2)}, -2, 2},
    {"cos", gc_cos, 1, {S(2, 2)}, -2, 2},
    {"tanh", gc_tanh, 1, {S(2, 2)}, -2, 2},
    {"sigmoid", gc_sigmoid, 1, {S(2, 2)}, -2, 2},
    {"relu", gc_relu, 1, {S(6)}, -1, 1},
    {"abs", gc_abs, 1, {S(6)}, -1, 1},
    {"clamp", gc_clamp, 1, {S(8)}, -1, 1},
    {"clamp (min only)", gc_clamp_min, 1, {S(8)}, -1, 1},
    {"where", gc_where, 2, {S(2, 3), S(2, 3)}, -1, 1},
    {"sum", gc_sum, 1, {S(2, 3)}, -1, 1},
    {"sum (dim, keepdim)", gc_sum_dim, 1, {S(2, 3)}, -1, 1},
    {"mean (dim)", gc_mean, 1, {S(2, 3)}, -1, 1},
    {"prod (dim)", gc_prod, 1, {S(2, 3)}, 0.5, 1.5},
    {"amax (dim)", gc_amax, 1, {S(2, 3)}, -1, 1},
    {"amin", gc_amin, 1, {S(2, 3)}, -1, 1},
    {"var (dim)", gc_var, 1, {S(2, 4)}, -1, 1},
    {"std (all, keepdim)", gc_std, 1, {S(2, 4)}, -1, 1},
    {"norm p=2", gc_norm2, 1, {S(2, 3)}, -1, 1},
    {"norm p=1 (dim)", gc_norm1, 1, {S(2, 3)}, -1, 1},
    {"norm p=3", gc_norm3, 1, {S(2, 3)}, -1, 1},
    {"mm", gc_mm, 2, {S(2, 3), S(3, 4)}, -1, 1},
    {"bmm", gc_bmm, 2, {S(2, 2, 3), S(2, 3, 2)}, -1, 1},
    {"matmul (1-d @ 2-d)", gc_matmul_vec, 2, {S(3), S(3, 2)}, -1, 1},
    {"matmul (batch broadcast)", gc_matmul_batch, 2, {S(2, 2, 3), S(3, 2)}, -1, 1},
    {"addmm", gc_addmm, 3, {S(2), S(2, 3), S(3, 2)}, -1, 1},
    {"gather", gc_gather, 1, {S(2, 3)}, -1, 1},
    {"index_select", gc_index_select, 1, {S(2, 3)}, -1, 1},
    {"scatter_add", gc_scatter_add, 2, {S(2, 3), S(2, 2)}, -1, 1},
    {"cat", gc_cat, 2, {S(2, 3), S(2, 2)}, -1, 1},
    {"stack", gc_stack, 2, {S(2, 3), S(2, 3)}, -1, 1},
    {"view/reshape/transpose/squeeze/unsqueeze", gc_views, 2, {S(3, 2), S(3)}, -1, 1},
    {"permute/flatten", gc_permute, 1, {S(2, 3, 2)}, -1, 1},
    {"narrow/expand", gc_expand, 1, {S(2, 3)}, -1, 1},
    {"slice/select", gc_slice, 1, {S(2, 4)}, -1, 1},
    {"contiguous", gc_contiguous, 1, {S(2, 3)}, -1, 1},
    {"clone", gc_clone, 1, {S(2, 3)}, -1, 1},
    {"to_dtype", gc_to_dtype, 1, {S(3)}, -1, 1},
    {"max_dim", gc_max_dim, 1, {S(2, 3)}, -1, 1},
    {"addmm + sigmoid + mean", gc_chain, 3, {S(2, 3), S(3, 2), S(2)}, -1, 1},
};
#undef S

static void gradcheck_passes_for_every_differentiable_op(void **state)
{
    (void)state;
    int64_t iv[4] = {2, 0, 1, 1}, sv[3] = {2, 0, 2};
    idx_2x2 = nb_from_data(iv, NB_SHAPE(2, 2), (nb_opts){NB_DTYPE_I64});
    idx_sel = nb_from_data(sv, NB_SHAPE(3), (nb_opts){NB_DTYPE_I64});
    int failed = 0;
    for (size_t c = 0; c < sizeof gc_cases / sizeof *gc_cases; c++) {
        const gc_case *g = &gc_cases[c];
        nb_tensor *in[3] = {0};
        for (int32_t k = 0; k < g->n; k++)
            in[k] = leaf(g->shapes[k], g->lo, g->hi, (int)(c * 3 + (size_t)k));
        nb_clear_error();
        /* to_dtype goes through float32: a larger step keeps its rounding out of the way */
        double eps = g->fn == gc_to_dtype ? 1e-3 : 1e-6;
        double atol = g->fn == gc_to_dtype ? 1e-3 : 1e-5;
        nb_status st = nb_gradcheck(g->fn, NULL, in, g->n, eps, atol, 1e-3);
        if (st != NB_OK) {
            print_error("gradcheck %s: %s\n", g->name, nb_last_error());
            failed++;
        }
        for (int32_t k = 0; k < g->n; k++)
            nb_release(in[k]);
    }
    nb_release(idx_2x2);
    nb_release(idx_sel);
    assert_int_equal(failed, 0);
}

/* A function whose backward is off by a factor of two: gradcheck must say so. */
static nb_tensor *square_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    (void)ctx;
    (void)n;
    return nb_mul(in[0], in[0]);
}

static nb_tensor *saved_input;
static nb_status square_wrong_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    (void)ctx;
    (void)n;
    gi[0] = nb_mul(g, saved_input); /* should be 2 x g */
    return gi[0] ? NB_OK : nb_last_status();
}

static const nb_function wrong_square = {"WrongSquare", square_forward, square_wrong_backward,
                                         NULL};

static nb_tensor *gc_wrong(nb_tensor *const *x, int32_t n, void *ctx)
{
    (void)ctx;
    saved_input = x[0];
    return nb_function_apply(&wrong_square, NULL, x, n);
}

static void gradcheck_catches_a_wrong_backward(void **state)
{
    (void)state;
    nb_tensor *x = leaf(NB_SHAPE(3), 0.5, 1.5, 30);
    assert_int_equal(nb_gradcheck(gc_wrong, NULL, &x, 1, 1e-6, 1e-5, 1e-3), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("Jacobian mismatch");
    nb_clear_error();
    assert_int_equal(nb_gradcheck(NULL, NULL, &x, 1, 1e-6, 1e-5, 1e-3), NB_NULL_ARGUMENT);
    nb_release(x);
}

/* Host memory that is never reused while a test runs: freed blocks are filled with a pattern
 * and kept, so a write into freed memory (a double release) shows as a changed pattern. */
#define POISON 0xA5
typedef struct qblock {
    struct qblock *next;
    size_t size;
    uint64_t magic;
} qblock;
static qblock *quarantine;

static void *q_malloc(size_t n)
{
    qblock *b = malloc(sizeof *b + n);
    if (!b)
        return NULL;
    b->size = n;
    b->magic = 0x51ab0c5;
    b->next = NULL;
    return b + 1;
}

static void q_free(void *p)
{
    if (!p)
        return;
    qblock *b = (qblock *)p - 1;
    memset(p, POISON, b->size);
    b->next = quarantine;
    quarantine = b;
}

static void *q_realloc(void *p, size_t n)
{
    void *r = q_malloc(n);
    if (r && p) {
        size_t old = ((qblock *)p - 1)->size;
        memcpy(r, p, old < n ? old : n);
        q_free(p);
    }
    return r;
}

/* Frees the quarantine; returns how many freed blocks were written to after their free. */
static int quarantine_check_and_empty(void)
{
    int dirty = 0;
    while (quarantine) {
        qblock *b = quarantine;
        quarantine = b->next;
        const unsigned char *u = (const unsigned char *)(b + 1);
        for (size_t k = 0; k < b->size; k++)
            if (u[k] != POISON) {
                dirty++;
                break;
            }
        free(b);
    }
    return dirty;
}

/* A callback cannot know whether the code that runs backward has a scope open: it must work
 * the same either way. */
static void callbacks_release_their_temporaries_inside_a_scope(void **state)
{
    (void)state;
    NB_ASSERT_OK(nb_shutdown());
    NB_ASSERT_OK(nb_set_allocator(&(nb_allocator){q_malloc, q_realloc, q_free}));
    nb_tensor *a = leaf(NB_SHAPE(3), 0, 1, 40), *b = leaf(NB_SHAPE(3), 0, 1, 41);
    nb_tensor *in[2] = {a, b};
    int mine = 0;
    NB_ASSERT_OK(nb_tensor_register_hook(a, read_hook, &mine)); /* releases a select() */
    nb_scope_begin();
    nb_tensor *out = nb_function_apply(&scaled_mul, scaled_ctx(2, a, b), in, 2);
    NB_ASSERT_OK(nb_backward(nb_sum(out, NULL, 0, false), NULL, false));
    assert_int_equal(mine, 1);
    nb_scope_end();
    nb_tensor *ga = nb_tensor_grad(a);
    int64_t n;
    double *bv = values(b, &n), want[3];
    for (int k = 0; k < 3; k++)
        want[k] = 2 * bv[k];
    expect_values(ga, want, 3, 1e-12);
    free(bv);
    nb_release(ga);
    nb_release(a);
    nb_release(b);
    nb_status st = nb_shutdown(); /* every block the core allocated is back */
    int dirty = quarantine_check_and_empty();
    NB_ASSERT_OK(nb_set_allocator(NULL));
    NB_ASSERT_OK(st);
    if (dirty)
        fail_msg("%d freed blocks were written to after their free (a double release)", dirty);
}

/* ---- across devices ---- */

/* The seed's two-layer net (smaller), trained for a few steps on `device`; returns the losses. */
static void train_two_layer(const char *device, double *losses, int steps)
{
    nb_manual_seed(7);
    nb_opts o = {.device = device}, og = {.device = device, .requires_grad = true};
    nb_tensor *x = nb_randn(NB_SHAPE(16, 64), o), *y = nb_randn(NB_SHAPE(16, 4), o);
    nb_tensor *w1 = nb_randn(NB_SHAPE(64, 32), og), *w2 = nb_randn(NB_SHAPE(32, 4), og);
    for (int t = 0; t < steps; t++) {
        nb_scope_begin();
        nb_tensor *pred = nb_mm(nb_clamp(nb_mm(x, w1), 0, NAN), w2);
        nb_tensor *loss = nb_sum(nb_pow_scalar(nb_sub(pred, y), 2), NULL, 0, false);
        assert_non_null(loss);
        NB_ASSERT_OK(nb_item(loss, &losses[t]));
        NB_ASSERT_OK(nb_backward(loss, NULL, false));
        nb_no_grad_begin();
        NB_ASSERT_OK(nb_add_scaled_(w1, nb_tensor_grad(w1), -1e-4));
        NB_ASSERT_OK(nb_add_scaled_(w2, nb_tensor_grad(w2), -1e-4));
        nb_no_grad_end();
        nb_tensor_zero_grad(w1);
        nb_tensor_zero_grad(w2);
        nb_scope_end();
    }
    nb_tensor *all[] = {x, y, w1, w2};
    for (int k = 0; k < 4; k++)
        nb_release(all[k]);
}

static void two_layer_net_trains_alike_on_every_device(void **state)
{
    (void)state;
    enum { STEPS = 20 };
    double ref[STEPS], got[STEPS];
    train_two_layer("cpu", ref, STEPS);
    assert_true(ref[STEPS - 1] < ref[0]);
    int tested = 0;
    for (size_t p = 0; p < nb_plugin_count(); p++) {
        nb_plugin_info info;
        if (nb_plugin_get(p, &info) != NB_OK || !info.loaded || !strcmp(info.name, "cpu"))
            continue;
        for (int d = 0; d < info.devices; d++) {
            char dev[64];
            snprintf(dev, sizeof dev, "%s:%d", info.name, d);
            if (!nb_device_has_kernel(dev, "matmul", NB_DTYPE_F32))
                continue; /* a test plugin without the ops this needs */
            train_two_layer(dev, got, STEPS);
            for (int t = 0; t < STEPS; t++) /* float32 on both: same numbers, other rounding */
                if (fabs(got[t] - ref[t]) > 1e-3 * fabs(ref[t]))
                    fail_msg("%s: step %d loss %.7g, cpu %.7g", dev, t, got[t], ref[t]);
            tested++;
        }
    }
    print_message("two-layer net checked on %d device(s) besides cpu\n", tested);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(leaves_and_results_are_told_apart),
        NB_TEST(next_functions_end_in_accumulate_grad),
        NB_TEST(grad_fn_names_are_pytorchs),
        NB_TEST(backward_of_the_torch_tutorial_example),
        NB_TEST(non_scalar_backward_needs_a_gradient),
        NB_TEST(second_backward_needs_retain_graph),
        NB_TEST(gradients_accumulate_until_zero_grad),
        NB_TEST(retain_grad_keeps_a_non_leaf_gradient),
        NB_TEST(broadcasting_is_undone_in_the_gradient),
        NB_TEST(second_derivative_of_cube_is_six_x),
        NB_TEST(grad_reports_unused_inputs_unless_allowed),
        NB_TEST(no_grad_mode_nests),
        NB_TEST(detach_shares_storage_and_drops_the_graph),
        NB_TEST(in_place_change_of_a_saved_tensor_is_caught),
        NB_TEST(in_place_on_a_leaf_that_requires_grad_is_refused),
        NB_TEST(in_place_on_a_non_leaf_joins_the_graph),
        NB_TEST(hooks_read_and_replace_gradients),
        NB_TEST(hooks_must_keep_the_gradient_shape_and_dtype),
        NB_TEST(custom_function_runs_its_backward),
        NB_TEST(gradcheck_passes_for_every_differentiable_op),
        NB_TEST(gradcheck_catches_a_wrong_backward),
        NB_TEST(callbacks_release_their_temporaries_inside_a_scope),
        NB_TEST(two_layer_net_trains_alike_on_every_device),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
