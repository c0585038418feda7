/* test_autograd.c - tests core/tensor/autograd.c and the backward rules next to the ops: grad_fn
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

static nb_tensor *max_values(const nb_tensor *x, bool is_max)
{
    nb_tensor *v = NULL;
    (is_max ? nb_max_dim : nb_min_dim)(x, 1, false, &v, NULL);
    return v;
}

/* One op per row: its result's grad_fn must carry the name PyTorch 2.x gives (checked with
 * torch 2.15: print(op(x).grad_fn.name()) for each row). */
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
        {nb_t(x), "TBackward0"},                              /* x.t() */
        {nb_rdiv_scalar(x, 1), "MulBackward0"},               /* 1 / x */
        {nb_rdiv_scalar(x, 2), "MulBackward0"},               /* 2 / x */
        {nb_stack(xy, 2, 0), "StackBackward0"},               /* torch.stack([x, y]) */
        {nb_var(x, NULL, 0, 1, false), "VarBackward0"},       /* x.var() */
        {nb_std(x, NULL, 0, 1, false), "StdBackward0"},       /* x.std() */
        {nb_norm(x, 2, NULL, 0, false), "LinalgVectorNormBackward0"}, /* x.norm() */
        {max_values(x, true), "MaxBackward0"},                /* x.max(1)[0] */
        {max_values(x, false), "MinBackward0"},               /* x.min(1)[0] */
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
    NB_ASSERT_OK(nb_backward(out, NULL, (nb_backward_opts){0}));
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
    assert_int_equal(nb_backward(y, NULL, (nb_backward_opts){0}), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("grad can be implicitly created only for scalar outputs");
    nb_clear_error();
    double gv[3] = {1, 10, 100};
    nb_tensor *g = nb_from_data(gv, NB_SHAPE(3), (nb_opts){NB_DTYPE_F64});
    NB_ASSERT_OK(nb_backward(y, g, (nb_backward_opts){0}));
    nb_tensor *xg = nb_tensor_grad(x);
    expect_values(xg, (double[]){2, 20, 200}, 3, 0);
    nb_tensor *bad = nb_ones(NB_SHAPE(4), (nb_opts){NB_DTYPE_F64}), *y2 = nb_mul_scalar(x, 2);
    assert_int_equal(nb_backward(y2, bad, (nb_backward_opts){0}), NB_SHAPE_MISMATCH);
    nb_clear_error();
    nb_tensor *c = nb_ones(NB_SHAPE(1), (nb_opts){0});
    assert_int_equal(nb_backward(c, NULL, (nb_backward_opts){0}), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("does not require grad");
    nb_clear_error();
    assert_int_equal(nb_backward(NULL, NULL, (nb_backward_opts){0}), NB_NULL_ARGUMENT);
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
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
    assert_int_equal(nb_backward(s, NULL, (nb_backward_opts){0}), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("retain_graph");
    NB_ASSERT_ERROR_HAS("second time");
    nb_clear_error();
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    nb_tensor *s2 = nb_sum(nb_mul(nb_exp(x), x), NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s2, NULL, (nb_backward_opts){.retain_graph = true}));
    NB_ASSERT_OK(nb_backward(s2, NULL, (nb_backward_opts){0})); /* kept by the first: works, and adds up */
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
        NB_ASSERT_OK(nb_backward(nb_sum(nb_mul_scalar(x, 5), NULL, 0, false), NULL, (nb_backward_opts){0}));
        nb_scope_end();
        nb_tensor *g = nb_tensor_grad(x);
        expect_all(g, 5.0 * k, 1e-12);
        nb_release(g);
    }
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    assert_null(nb_tensor_grad(x));
    assert_int_equal(nb_last_status(), NB_OK); /* no grad is not an error */
    nb_scope_begin();
    NB_ASSERT_OK(nb_backward(nb_sum(x, NULL, 0, false), NULL, (nb_backward_opts){0}));
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
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
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
    NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(nb_add(a, b), s0), NULL, 0, false), NULL, (nb_backward_opts){0}));
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
    assert_int_equal(nb_backward(s, NULL, (nb_backward_opts){0}), NB_AUTOGRAD);
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
    NB_ASSERT_ERROR_HAS("a leaf Variable that requires grad is being used in an in-place operation");
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
    NB_ASSERT_OK(nb_backward(nb_sum(y, NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    nb_tensor *g = nb_tensor_grad(x);
    expect_all(g, 6, 1e-12);
    nb_release(g);
    nb_release(x);
    nb_release(y);
}

/* ---- in-place ops through views (PyTorch 2.x: CopySlices, view regeneration) ----
 * Each expected value is what PyTorch 2.x prints for the Python snippet in the comment. */

static nb_tensor *vec(const double *v, nb_shape s, bool rg)
{
    nb_tensor *t = nb_from_data(v, s, (nb_opts){NB_DTYPE_F64, .requires_grad = rg});
    assert_non_null(t);
    return t;
}

static void backward_sum(nb_tensor *t)
{
    nb_scope_begin();
    nb_status st = nb_backward(nb_sum(t, NULL, 0, false), NULL, (nb_backward_opts){0});
    nb_scope_end();
    if (st != NB_OK)
        fail_msg("backward: %s", nb_last_error());
}

static void expect_grad(nb_tensor *leaf_t, const double *want, int64_t n)
{
    nb_tensor *g = nb_tensor_grad(leaf_t);
    if (!g)
        fail_msg("no gradient");
    expect_values(g, want, n, 1e-12);
    nb_release(g);
}

static void in_place_on_a_slice_rebases_the_base(void **state)
{
    (void)state;
    /* x = torch.tensor([1.,2,3], requires_grad=True); a = x * 1; a[:2].mul_(2)
     * a.sum().backward(); x.grad -> tensor([2., 2., 1.]); a.grad_fn -> <CopySlices> */
    const double xv[3] = {1, 2, 3}, want[3] = {2, 2, 1};
    nb_tensor *x = vec(xv, NB_SHAPE(3), true), *a = nb_mul_scalar(x, 1);
    nb_tensor *v = nb_narrow(a, 0, 0, 2);
    NB_ASSERT_OK(nb_mul_scalar_(v, 2));
    assert_string_equal(fn_name(a), "CopySlices");
    assert_string_equal(fn_name(v), "AsStridedBackward0"); /* v.grad_fn in PyTorch 2.x */
    backward_sum(a);
    expect_grad(x, want, 3);
    nb_release(v);
    nb_release(a);
    nb_release(x);
}

static void views_taken_before_an_in_place_op_see_it(void **state)
{
    (void)state;
    /* x = torch.tensor([1.,2,3], requires_grad=True); a = x * 1; v = a[:2]; a.mul_(2)
     * v.sum().backward(); x.grad -> tensor([2., 2., 0.]) */
    const double xv[3] = {1, 2, 3}, want[3] = {2, 2, 0};
    nb_tensor *x = vec(xv, NB_SHAPE(3), true), *a = nb_mul_scalar(x, 1);
    nb_tensor *v = nb_narrow(a, 0, 0, 2);
    NB_ASSERT_OK(nb_mul_scalar_(a, 2));
    backward_sum(v);
    expect_grad(x, want, 3);
    nb_release(v);
    nb_release(a);
    nb_release(x);
}

static void in_place_on_a_select_and_a_transpose(void **state)
{
    (void)state;
    /* x = torch.tensor([[1.,2],[3,4]], requires_grad=True); a = x * 1; a[0].mul_(5)
     * (a*a).sum().backward(); x.grad -> tensor([[50., 100.], [6., 8.]]) */
    const double xv[4] = {1, 2, 3, 4}, want[4] = {50, 100, 6, 8};
    nb_tensor *x = vec(xv, NB_SHAPE(2, 2), true), *a = nb_mul_scalar(x, 1);
    nb_tensor *row = nb_select(a, 0, 0);
    NB_ASSERT_OK(nb_mul_scalar_(row, 5));
    nb_scope_begin();
    backward_sum(nb_mul(a, a));
    nb_scope_end();
    expect_grad(x, want, 4);
    /* the same through a transposed view: a = x * 1; a.t()[0].mul_(5)
     * (a*a).sum().backward(); x.grad -> tensor([[50., 4.], [150., 8.]]) */
    const double want_t[4] = {50, 4, 150, 8};
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    nb_tensor *b = nb_mul_scalar(x, 1), *bt = nb_t(b), *col = nb_select(bt, 0, 0);
    NB_ASSERT_OK(nb_mul_scalar_(col, 5));
    nb_scope_begin();
    backward_sum(nb_mul(b, b));
    nb_scope_end();
    expect_grad(x, want_t, 4);
    nb_tensor *r[] = {col, bt, b, row, a, x};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

static void fill_and_zero_are_differentiable(void **state)
{
    (void)state;
    /* x = torch.ones(3, requires_grad=True); a = x * 1; a[0:1].fill_(0)
     * (a*a).sum().backward(); x.grad -> tensor([0., 2., 2.]) */
    const double ones[3] = {1, 1, 1}, want[3] = {0, 2, 2};
    nb_tensor *x = vec(ones, NB_SHAPE(3), true), *a = nb_mul_scalar(x, 1);
    nb_tensor *v = nb_narrow(a, 0, 0, 1);
    NB_ASSERT_OK(nb_fill_(v, 0));
    nb_scope_begin();
    backward_sum(nb_mul(a, a));
    nb_scope_end();
    expect_grad(x, want, 3);
    nb_release(v);
    nb_release(a);
    nb_release(x);
    /* x = torch.tensor([1.,2,3], requires_grad=True); a = x * 2; a.fill_(1)
     * a.grad_fn -> <FillBackward2>; (a*x).sum().backward(); x.grad -> tensor([1., 1., 1.]) */
    const double xv[3] = {1, 2, 3}, want2[3] = {1, 1, 1};
    x = vec(xv, NB_SHAPE(3), true);
    a = nb_mul_scalar(x, 2);
    NB_ASSERT_OK(nb_fill_(a, 1));
    assert_string_equal(fn_name(a), "FillBackward2");
    nb_scope_begin();
    backward_sum(nb_mul(a, x));
    nb_scope_end();
    expect_grad(x, want2, 3);
    /* a.zero_() -> <ZeroBackward0>; (a*x).sum().backward() adds 0 */
    NB_ASSERT_OK(nb_zero_(a));
    assert_string_equal(fn_name(a), "ZeroBackward0");
    nb_scope_begin();
    backward_sum(nb_mul(a, x));
    nb_scope_end();
    expect_grad(x, want2, 3);
    nb_release(a);
    nb_release(x);
}

static void copy_and_index_assignment_are_differentiable(void **state)
{
    (void)state;
    /* x = torch.tensor([1.,2,3], requires_grad=True); out = torch.zeros(3)
     * out[0] = x[1] * 2; out.requires_grad -> True; out.grad_fn -> <CopySlices>
     * (out.sum() + x.sum()).backward(); x.grad -> tensor([1., 3., 1.]) */
    const double xv[3] = {1, 2, 3}, want[3] = {1, 3, 1}, out_want[3] = {4, 0, 0};
    nb_tensor *x = vec(xv, NB_SHAPE(3), true);
    nb_tensor *out = nb_zeros(NB_SHAPE(3), (nb_opts){NB_DTYPE_F64});
    nb_scope_begin();
    NB_ASSERT_OK(nb_tensor_copy_(nb_select(out, 0, 0), nb_mul_scalar(nb_select(x, 0, 1), 2)));
    assert_true(nb_tensor_requires_grad(out));
    assert_string_equal(fn_name(out), "CopySlices");
    NB_ASSERT_OK(nb_backward(nb_add(nb_sum(out, NULL, 0, false), nb_sum(x, NULL, 0, false)),
                             NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_values(out, out_want, 3, 0); /* outside the scope: values() releases what it gets */
    expect_grad(x, want, 3);
    nb_release(out);
    /* y = torch.ones(3, requires_grad=True); x.grad = None; a = x * 1; a.copy_(y * 2)
     * a.grad_fn -> <CopyBackwards>; a.sum().backward()
     * x.grad -> tensor([0., 0., 0.]); y.grad -> tensor([2., 2., 2.]) */
    const double ones[3] = {1, 1, 1}, zero3[3] = {0, 0, 0}, two3[3] = {2, 2, 2};
    nb_tensor *y = vec(ones, NB_SHAPE(3), true);
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    nb_tensor *a = nb_mul_scalar(x, 1);
    nb_scope_begin();
    NB_ASSERT_OK(nb_tensor_copy_(a, nb_mul_scalar(y, 2)));
    nb_scope_end();
    assert_string_equal(fn_name(a), "CopyBackwards");
    backward_sum(a);
    expect_grad(x, zero3, 3);
    expect_grad(y, two3, 3);
    /* a broadcast source: z = torch.ones(1, requires_grad=True); b = x * 1; b.copy_(z)
     * b.sum().backward(); z.grad -> tensor([3.]) */
    const double three[1] = {3};
    nb_tensor *z = vec(ones, NB_SHAPE(1), true), *b = nb_mul_scalar(x, 1);
    NB_ASSERT_OK(nb_tensor_copy_(b, z));
    backward_sum(b);
    expect_grad(z, three, 1);
    nb_tensor *r[] = {a, b, x, y, z};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
}

static void in_place_writes_to_a_leaf_are_refused_also_through_views(void **state)
{
    (void)state;
    /* x = torch.ones(3, requires_grad=True); x[:2].mul_(2) -> RuntimeError: a view of a leaf
     * Variable that requires grad is being used in an in-place operation.
     * x.copy_(torch.zeros(3)) -> RuntimeError: a leaf Variable that requires grad ... */
    const double ones[3] = {1, 1, 1};
    nb_tensor *x = vec(ones, NB_SHAPE(3), true), *z = vec(ones, NB_SHAPE(3), false);
    int64_t v0 = nb_tensor_version(x);
    nb_tensor *v = nb_narrow(x, 0, 0, 2);
    assert_int_equal(nb_mul_scalar_(v, 2), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("a view of a leaf Variable that requires grad");
    assert_int_equal(nb_fill_(v, 2), NB_AUTOGRAD);
    nb_tensor *z1 = nb_narrow(z, 0, 0, 1); /* broadcast into v */
    assert_int_equal(nb_tensor_copy_(v, z1), NB_AUTOGRAD);
    nb_release(z1);
    assert_int_equal(nb_tensor_copy_(x, z), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("a leaf Variable that requires grad is being used in an in-place");
    assert_int_equal(nb_tensor_version(x), v0);
    expect_values(x, ones, 3, 0);
    /* with torch.no_grad(): x[:2].mul_(2); x.copy_(...) -- allowed */
    nb_clear_error();
    nb_no_grad_begin();
    NB_ASSERT_OK(nb_mul_scalar_(v, 2));
    NB_ASSERT_OK(nb_tensor_copy_(x, z));
    nb_no_grad_end();
    /* a view made under no_grad, written with grad mode on: PyTorch refuses it too */
    nb_tensor *y = nb_mul_scalar(x, 1);
    nb_no_grad_begin();
    nb_tensor *w = nb_narrow(y, 0, 0, 2);
    nb_no_grad_end();
    nb_tensor *yy = nb_narrow(y, 0, 0, 2);
    assert_int_equal(nb_mul_(w, yy), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("created in no_grad mode");
    nb_tensor *r[] = {yy, w, y, v, x, z};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

static void writes_into_an_expanded_tensor_are_refused(void **state)
{
    (void)state;
    /* torch.ones(1).expand(3).fill_(2) -> RuntimeError: unsupported operation: more than one
     * element of the written-to tensor refers to a single memory location. */
    nb_tensor *o = nb_ones(NB_SHAPE(1), (nb_opts){NB_DTYPE_F64});
    nb_tensor *e = nb_expand(o, NB_SHAPE(3)), *src = nb_zeros(NB_SHAPE(3), (nb_opts){NB_DTYPE_F64});
    assert_int_equal(nb_fill_(e, 2), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("more than one element of the written-to tensor refers to a single "
                        "memory location");
    assert_int_equal(nb_zero_(e), NB_INVALID_ARGUMENT);
    assert_int_equal(nb_add_scalar_(e, 1), NB_INVALID_ARGUMENT);
    assert_int_equal(nb_exp_(e), NB_INVALID_ARGUMENT);
    assert_int_equal(nb_add_(e, src), NB_INVALID_ARGUMENT);
    assert_int_equal(nb_tensor_copy_(e, src), NB_INVALID_ARGUMENT);
    double v;
    NB_ASSERT_OK(nb_item(o, &v));
    assert_true(v == 1);
    nb_release(e);
    nb_release(o);
    nb_release(src);
}

/* An in-place op and its out-of-place form give the same gradients (PyTorch saves the original
 * input when the backward needs it: no "modified by an inplace operation" error). */
typedef struct {
    const char *name;
    nb_status (*un)(nb_tensor *);
    nb_tensor *(*out)(const nb_tensor *);
} inplace_unary;

static void in_place_ops_do_not_trip_the_version_counter(void **state)
{
    (void)state;
    const inplace_unary ops[] = {
        {"abs", nb_abs_, nb_abs},   {"sin", nb_sin_, nb_sin},   {"cos", nb_cos_, nb_cos},
        {"log", nb_log_, nb_log},   {"exp", nb_exp_, nb_exp},   {"tanh", nb_tanh_, nb_tanh},
        {"sqrt", nb_sqrt_, nb_sqrt}, {"sigmoid", nb_sigmoid_, nb_sigmoid},
        {"relu", nb_relu_, nb_relu}, {"neg", nb_neg_, nb_neg},
    };
    const double xv[4] = {0.3, 1.7, 0.9, 2.4};
    for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
        nb_tensor *x = vec(xv, NB_SHAPE(4), true);
        nb_scope_begin();
        nb_tensor *y = nb_mul(x, x); /* x^2, then op in place: d/dx = op'(x^2) 2x */
        if (ops[k].un(y) != NB_OK)
            fail_msg("%s_: %s", ops[k].name, nb_last_error());
        if (nb_backward(nb_sum(nb_mul(y, x), NULL, 0, false), NULL, (nb_backward_opts){0}) != NB_OK)
            fail_msg("%s_: backward: %s", ops[k].name, nb_last_error());
        nb_tensor *g1 = nb_keep(nb_tensor_grad(x));
        NB_ASSERT_OK(nb_tensor_zero_grad(x));
        NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(ops[k].out(nb_mul(x, x)), x), NULL, 0, false),
                                 NULL, (nb_backward_opts){0}));
        nb_tensor *g2 = nb_keep(nb_tensor_grad(x));
        nb_scope_end();
        int64_t n;
        double *want = values(g2, &n);
        expect_values(g1, want, n, 1e-12);
        free(want);
        nb_release(g1);
        nb_release(g2);
        nb_release(x);
    }
    /* x = torch.tensor([-1., 0.5, 3.], requires_grad=True); a = x * 1; a.clamp_(-0.5, 2)
     * a.sum().backward(); x.grad -> tensor([0., 1., 0.]) */
    const double cv[3] = {-1, 0.5, 3}, cwant[3] = {0, 1, 0};
    nb_tensor *x = vec(cv, NB_SHAPE(3), true), *a = nb_mul_scalar(x, 1);
    NB_ASSERT_OK(nb_clamp_(a, -0.5, 2));
    assert_string_equal(fn_name(a), "ClampBackward1");
    backward_sum(a);
    expect_grad(x, cwant, 3);
    nb_release(a);
    /* a = x * 1; a.pow_(2) ; a.sum().backward() -> 2x ; and mul_/div_ by a tensor that
     * requires grad: y = torch.tensor([2.,4,8], requires_grad=True); b = x * 1; b.mul_(y)
     * b.div_(y) (b is x again); b.sum().backward(); x.grad -> 1, y.grad -> 0 */
    const double pw[3] = {-2, 1, 6}, yv[3] = {2, 4, 8}, one3[3] = {1, 1, 1}, zero3[3] = {0, 0, 0};
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    a = nb_mul_scalar(x, 1);
    NB_ASSERT_OK(nb_pow_scalar_(a, 2));
    backward_sum(a);
    expect_grad(x, pw, 3);
    nb_release(a);
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    nb_tensor *y = vec(yv, NB_SHAPE(3), true), *b = nb_mul_scalar(x, 1);
    NB_ASSERT_OK(nb_mul_(b, y));
    NB_ASSERT_OK(nb_div_(b, y));
    backward_sum(b);
    expect_grad(x, one3, 3);
    expect_grad(y, zero3, 3);
    nb_release(b);
    nb_release(y);
    nb_release(x);
}

/* Every in-place op on a tensor that requires grad, and on a view of one, with no backward:
 * the teardown's leak check (and nb_shutdown) must find nothing (no tensor <-> node cycle). */
static void a_saved_output_changed_again_in_place_is_caught(void **state)
{
    (void)state;
    /* x = torch.ones(3, requires_grad=True); a = x * 1; a.exp_().mul_(2); a.sum().backward()
     * -> RuntimeError: one of the variables needed for gradient computation has been modified
     * by an inplace operation: [...], which is output 0 of Exp, is at version 2; expected 1 */
    const double ones[3] = {1, 1, 1};
    nb_tensor *x = vec(ones, NB_SHAPE(3), true), *a = nb_mul_scalar(x, 1);
    NB_ASSERT_OK(nb_exp_(a));
    NB_ASSERT_OK(nb_mul_scalar_(a, 2));
    nb_scope_begin();
    assert_int_equal(nb_backward(nb_sum(a, NULL, 0, false), NULL, (nb_backward_opts){0}),
                     NB_AUTOGRAD);
    nb_scope_end();
    NB_ASSERT_ERROR_HAS("modified by an inplace operation");
    NB_ASSERT_ERROR_HAS("ExpBackward0");
    nb_release(a);
    nb_release(x);
}

static void in_place_ops_without_backward_leak_nothing(void **state)
{
    (void)state;
    const double xv[4] = {0.3, 1.7, 0.9, 2.4};
    for (int view = 0; view < 2; view++) {
        nb_tensor *x = vec(xv, NB_SHAPE(4), true), *o = vec(xv, NB_SHAPE(4), true);
        nb_tensor *base = nb_mul_scalar(x, 1);
        nb_tensor *a = view ? nb_narrow(base, 0, 0, 4) : nb_retain(base);
        nb_status (*un[])(nb_tensor *) = {nb_abs_, nb_log_, nb_sin_, nb_cos_, nb_exp_,
                                          nb_tanh_, nb_sigmoid_, nb_sqrt_, nb_relu_, nb_neg_,
                                          nb_rsqrt_};
        for (size_t k = 0; k < sizeof un / sizeof *un; k++)
            NB_ASSERT_OK(un[k](a));
        nb_status (*bin[])(nb_tensor *, const nb_tensor *) = {nb_add_, nb_sub_, nb_mul_, nb_div_,
                                                              nb_pow_, nb_maximum_, nb_minimum_};
        for (size_t k = 0; k < sizeof bin / sizeof *bin; k++)
            NB_ASSERT_OK(bin[k](a, o));
        nb_status (*sc[])(nb_tensor *, double) = {nb_add_scalar_, nb_sub_scalar_, nb_mul_scalar_,
                                                  nb_div_scalar_, nb_pow_scalar_,
                                                  nb_maximum_scalar_, nb_minimum_scalar_};
        for (size_t k = 0; k < sizeof sc / sizeof *sc; k++)
            NB_ASSERT_OK(sc[k](a, 1.5));
        NB_ASSERT_OK(nb_clamp_(a, 0, 1));
        NB_ASSERT_OK(nb_fill_(a, 2));
        NB_ASSERT_OK(nb_zero_(a));
        NB_ASSERT_OK(nb_tensor_copy_(a, o));
        /* div_ into a destination that needs no grad, by one that does */
        nb_tensor *d = nb_ones(NB_SHAPE(4), (nb_opts){NB_DTYPE_F64});
        NB_ASSERT_OK(nb_div_(d, o));
        nb_tensor *r[] = {d, a, base, o, x};
        for (size_t k = 0; k < 5; k++)
            nb_release(r[k]);
    }
}

static void in_place_chains_through_nested_views_match_pytorch(void **state)
{
    (void)state;
    const double xv[4] = {1, 2, 3, 4}, yv[4] = {0.5, -1, 2, 3};
    nb_tensor *x = vec(xv, NB_SHAPE(4), true), *y = vec(yv, NB_SHAPE(4), true);
    /* a = x*x; v = a[1:]; w = v[0]; w.mul_(3); u = a[:2]; a.add_(y)
     * ((v*v).sum() + (u*2).sum() + a.sum()).backward()
     * x.grad -> [6, 300, 138, 312]; y.grad -> [3, 25, 23, 39]   (torch 2.15) */
    const double w1x[4] = {6, 300, 138, 312}, w1y[4] = {3, 25, 23, 39};
    nb_scope_begin();
    nb_tensor *a = nb_mul(x, x), *v = nb_narrow(a, 0, 1, 3), *w = nb_select(v, 0, 0);
    NB_ASSERT_OK(nb_mul_scalar_(w, 3));
    nb_tensor *u = nb_narrow(a, 0, 0, 2);
    NB_ASSERT_OK(nb_add_(a, y));
    nb_tensor *l = nb_add(nb_add(nb_sum(nb_mul(v, v), NULL, 0, false),
                                 nb_sum(nb_mul_scalar(u, 2), NULL, 0, false)),
                          nb_sum(a, NULL, 0, false));
    NB_ASSERT_OK(nb_backward(l, NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(x, w1x, 4);
    expect_grad(y, w1y, 4);
    /* a = x*1; b = y*2; a[1:3].copy_(b[0:2] * x[0:2]); (a*a).sum().backward()
     * x.grad -> [4, 16, 0, 8]; y.grad -> [4, -32, 0, 0] */
    const double w2x[4] = {4, 16, 0, 8}, w2y[4] = {4, -32, 0, 0};
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    NB_ASSERT_OK(nb_tensor_zero_grad(y));
    nb_scope_begin();
    a = nb_mul_scalar(x, 1);
    nb_tensor *b = nb_mul_scalar(y, 2);
    NB_ASSERT_OK(nb_tensor_copy_(nb_narrow(a, 0, 1, 2),
                                 nb_mul(nb_narrow(b, 0, 0, 2), nb_narrow(x, 0, 0, 2))));
    NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(a, a), NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(x, w2x, 4);
    expect_grad(y, w2y, 4);
    /* m = x.view(2,2) * 1; c = m[:, 1]; m.t()[1].mul_(y[:2]); (c*c).sum().backward()
     * x.grad -> [0, 1, 0, 8]; y.grad -> [4, -32, 0, 0] */
    const double w3x[4] = {0, 1, 0, 8};
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    NB_ASSERT_OK(nb_tensor_zero_grad(y));
    nb_scope_begin();
    nb_tensor *m = nb_mul_scalar(nb_view(x, NB_SHAPE(2, 2)), 1), *c = nb_select(m, 1, 1);
    NB_ASSERT_OK(nb_mul_(nb_select(nb_t(m), 0, 1), nb_narrow(y, 0, 0, 2)));
    NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(c, c), NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(x, w3x, 4);
    expect_grad(y, w2y, 4);
    /* a = x*x; a[1:].sin_(); g, = torch.autograd.grad(a.sum(), x, create_graph=True)
     * g.sum().backward(); x.grad -> [2, 10.801552683199628, -16.65852599247259, 16.51049330591741] */
    const double w4[4] = {2, 10.801552683199628, -16.65852599247259, 16.51049330591741};
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    nb_scope_begin();
    a = nb_mul(x, x);
    NB_ASSERT_OK(nb_sin_(nb_narrow(a, 0, 1, 3)));
    nb_tensor *g = NULL, *s = nb_sum(a, NULL, 0, false);
    NB_ASSERT_OK(nb_grad(&s, NULL, 1, &x, 1, (nb_grad_opts){.create_graph = true}, &g));
    NB_ASSERT_OK(nb_backward(nb_sum(g, NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(x, w4, 4);
    nb_release(x);
    nb_release(y);
}

/* Second derivatives of prod at exact zeros, from the Hessian's row sums:
 * x = torch.tensor([2., 0., 3.], requires_grad=True)
 * g, = torch.autograd.grad(x.prod(), x, create_graph=True); g.sum().backward(); x.grad
 *   -> [3., 5., 2.]                                    (one zero)
 * x = torch.tensor([2., 0., 0., 3.]): -> [0., 6., 6., 0.]   (two zeros)
 * x = torch.tensor([0., 0., 0., 3.]): -> [0., 0., 0., 0.]   (three zeros) */
static void prod_is_twice_differentiable_at_zeros(void **state)
{
    (void)state;
    static const struct {
        int n;
        double x[4], want[4];
    } cases[] = {{3, {2, 0, 3}, {3, 5, 2}}, {4, {2, 0, 0, 3}, {0, 6, 6, 0}},
                 {4, {0, 0, 0, 3}, {0, 0, 0, 0}}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nb_tensor *x = nb_from_data(cases[c].x, NB_SHAPE(cases[c].n),
                                    (nb_opts){NB_DTYPE_F64, .requires_grad = true});
        nb_scope_begin();
        nb_tensor *g = NULL, *p = nb_prod(x, NULL, 0, false);
        NB_ASSERT_OK(nb_grad(&p, NULL, 1, &x, 1, (nb_grad_opts){.create_graph = true}, &g));
        NB_ASSERT_OK(nb_backward(nb_sum(g, NULL, 0, false), NULL, (nb_backward_opts){0}));
        nb_release(g);
        nb_scope_end();
        expect_grad(x, cases[c].want, cases[c].n);
        nb_release(x);
    }
}

/* x = torch.tensor([1., 3., 3.], requires_grad=True); y = x.max()
 * y.grad_fn.name() -> 'MaxBackward1'; y.backward(); x.grad -> [0.0, 0.5, 0.5]
 * (x.min() of [1., -2., -2.]: 'MinBackward1', [0.0, 0.5, 0.5]) */
static void max_and_min_over_everything_share_ties_as_pytorch(void **state)
{
    (void)state;
    const double v[2][3] = {{1, 3, 3}, {1, -2, -2}}, want[3] = {0, 0.5, 0.5};
    for (int k = 0; k < 2; k++) {
        nb_tensor *x = nb_from_data(v[k], NB_SHAPE(3), (nb_opts){NB_DTYPE_F64, .requires_grad = true});
        nb_tensor *y = k ? nb_min(x) : nb_max(x);
        assert_non_null(y);
        assert_int_equal(nb_tensor_ndim(y), 0);
        assert_string_equal(nb_grad_fn_name(nb_tensor_grad_fn(y)), k ? "MinBackward1" : "MaxBackward1");
        NB_ASSERT_OK(nb_backward(y, NULL, (nb_backward_opts){0}));
        expect_grad(x, want, 3);
        nb_release(y);
        nb_release(x);
    }
    assert_null(nb_max(NULL));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_clear_error();
}

static void linear_records_addmm_of_t_as_pytorch(void **state)
{
    (void)state;
    /* x = torch.ones(2, 3); fc = torch.nn.Linear(3, 4); y = fc(x)
     * [f.name() if f else None for f, _ in y.grad_fn.next_functions]
     * -> ['AccumulateGrad', None, 'TBackward0'] */
    nb_tensor *x = nb_ones(NB_SHAPE(2, 3), (nb_opts){NB_DTYPE_F64});
    nb_tensor *w = leaf(NB_SHAPE(4, 3), -1, 1, 50), *b = leaf(NB_SHAPE(4), -1, 1, 51);
    nb_tensor *y = nb_linear(x, w, b);
    const nb_grad_fn *f = nb_tensor_grad_fn(y);
    assert_string_equal(nb_grad_fn_name(f), "AddmmBackward0");
    assert_int_equal(nb_grad_fn_next_count(f), 3);
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(f, 0)), "AccumulateGrad");
    assert_null(nb_grad_fn_next(f, 1));
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(f, 2)), "TBackward0");
    nb_release(y);
    nb_release(x);
    nb_release(w);
    nb_release(b);
}

static void in_place_through_views_of_a_strided_base_and_overlapping_views(void **state)
{
    (void)state;
    const double yv[3] = {1, 2, 3}, xv[6] = {1, 2, 3, 4, 5, 6};
    nb_tensor *y = vec(yv, NB_SHAPE(3), true), *x = vec(xv, NB_SHAPE(3, 2), true);
    /* a base that is not contiguous (detach of a transpose), written through views:
     * base = torch.zeros(3, 2, dtype=torch.float64).t().detach(); base[0].copy_(y * y)
     * base[1].mul_(2); base[1].add_(x[:, 0])
     * ((base * base).sum() + (base[:, 1] * 3).sum()).backward()
     * y.grad -> [4, 44, 108]; x.grad -> [[2, 0], [9, 0], [10, 0]] */
    const double wby[3] = {4, 44, 108}, wbx[6] = {2, 0, 9, 0, 10, 0};
    nb_scope_begin();
    nb_tensor *base = nb_detach(nb_t(nb_zeros(NB_SHAPE(3, 2), (nb_opts){NB_DTYPE_F64})));
    NB_ASSERT_OK(nb_tensor_copy_(nb_select(base, 0, 0), nb_mul(y, y)));
    NB_ASSERT_OK(nb_mul_scalar_(nb_select(base, 0, 1), 2));
    NB_ASSERT_OK(nb_add_(nb_select(base, 0, 1), nb_select(x, 1, 0)));
    nb_tensor *l = nb_add(nb_sum(nb_mul(base, base), NULL, 0, false),
                          nb_sum(nb_mul_scalar(nb_select(base, 1, 1), 3), NULL, 0, false));
    NB_ASSERT_OK(nb_backward(l, NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(y, wby, 3);
    expect_grad(x, wbx, 6);
    /* overlapping views: a = x.reshape(-1) * 1; v1 = a[0:4]; v2 = a[2:6]; v1.mul_(y[0])
     * v2.add_(v1.sum()); w = a[1:5]; (w * w).sum().backward()
     * y.grad -> [1038, 0, 0]; x.grad -> [[84, 88], [110, 112], [30, 0]] */
    const double wcy[3] = {1038, 0, 0}, wcx[6] = {84, 88, 110, 112, 30, 0};
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    NB_ASSERT_OK(nb_tensor_zero_grad(y));
    nb_scope_begin();
    nb_tensor *a = nb_mul_scalar(nb_reshape(x, NB_SHAPE(-1)), 1);
    nb_tensor *v1 = nb_narrow(a, 0, 0, 4), *v2 = nb_narrow(a, 0, 2, 4);
    NB_ASSERT_OK(nb_mul_(v1, nb_select(y, 0, 0)));
    NB_ASSERT_OK(nb_add_(v2, nb_sum(v1, NULL, 0, false)));
    nb_tensor *w = nb_narrow(a, 0, 1, 4);
    NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(w, w), NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(y, wcy, 3);
    expect_grad(x, wcx, 6);
    /* a view taken before two rebases: a = x * 1; old = a[:, 1]; a[0].mul_(3)
     * a.t()[1].exp_(); (old * y).sum().backward()
     * y.grad -> [e^6, e^4, e^6] = [403.4287934927351, 54.598150033144236, 403.4287934927351]
     * x.grad -> [[0, 3 e^6], [0, 2 e^4], [0, 3 e^6]] */
    double e6 = exp(6), e4 = exp(4);
    const double wdy[3] = {e6, e4, e6}, wdx[6] = {0, 3 * e6, 0, 2 * e4, 0, 3 * e6};
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    NB_ASSERT_OK(nb_tensor_zero_grad(y));
    nb_scope_begin();
    a = nb_mul_scalar(x, 1);
    nb_tensor *old = nb_select(a, 1, 1);
    NB_ASSERT_OK(nb_mul_scalar_(nb_select(a, 0, 0), 3));
    NB_ASSERT_OK(nb_exp_(nb_select(nb_t(a), 0, 1)));
    NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(old, y), NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(y, wdy, 3);
    expect_grad(x, wdx, 6);
    nb_release(x);
    nb_release(y);
}

/* copy_ from one device into another: the gradient goes back to the source's device and dtype.
 * x = torch.tensor([1., 2, 3], dtype=torch.float64, requires_grad=True)
 * d = torch.zeros(3, device=dev); d.copy_(x * 2); (d * d).sum().backward(); x.grad -> [8, 16, 24] */
static void copy_across_devices_sends_the_gradient_home(void **state)
{
    (void)state;
    const double xv[3] = {1, 2, 3}, want[3] = {8, 16, 24};
    int tested = 0;
    for (size_t p = 0; p < nb_plugin_count(); p++) {
        nb_plugin_info info;
        if (nb_plugin_get(p, &info) != NB_OK || !info.loaded)
            continue;
        for (int d = 0; d < info.devices; d++) {
            char dev[64];
            snprintf(dev, sizeof dev, "%s:%d", info.name, d);
            if (!nb_device_has_kernel(dev, "mul", NB_DTYPE_F32))
                continue;
            nb_tensor *x = vec(xv, NB_SHAPE(3), true);
            nb_scope_begin();
            nb_tensor *dst = nb_zeros(NB_SHAPE(3), (nb_opts){NB_DTYPE_F32, dev});
            NB_ASSERT_OK(nb_tensor_copy_(dst, nb_mul_scalar(x, 2)));
            assert_string_equal(fn_name(dst), "CopyBackwards");
            NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(dst, dst), NULL, 0, false), NULL,
                                     (nb_backward_opts){0}));
            nb_scope_end();
            nb_tensor *g = nb_tensor_grad(x);
            assert_string_equal(nb_tensor_device(g), "cpu");
            assert_int_equal(nb_tensor_dtype(g), NB_DTYPE_F64);
            expect_values(g, want, 3, 1e-6);
            nb_release(g);
            nb_release(x);
            tested++;
        }
    }
    assert_true(tested >= 1);
}

static void backward_with_create_graph_gives_grad_a_graph(void **state)
{
    (void)state;
    /* x = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
     * (x ** 3).sum().backward(create_graph=True); x.grad.grad_fn is not None
     * x.grad -> 3 x^2 = [0.75, 6.75]; g = x.grad; x.grad = None; g.sum().backward()
     * x.grad -> 6 x = [3, 9] */
    const double xv[2] = {0.5, 1.5}, w1[2] = {0.75, 6.75}, w2[2] = {3, 9};
    nb_tensor *x = vec(xv, NB_SHAPE(2), true);
    nb_scope_begin();
    NB_ASSERT_OK(nb_backward(nb_sum(nb_pow_scalar(x, 3), NULL, 0, false), NULL,
                             (nb_backward_opts){.create_graph = true}));
    nb_scope_end();
    nb_tensor *g = nb_tensor_grad(x);
    assert_non_null(nb_tensor_grad_fn(g));
    expect_values(g, w1, 2, 1e-12);
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    nb_scope_begin();
    NB_ASSERT_OK(nb_backward(nb_sum(g, NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(x, w2, 2);
    nb_release(g);
    nb_release(x);
}

/* ---- edge values (PyTorch 2.x) ---- */

static void grad_of(nb_tensor *(*f)(nb_tensor *), const double *xv, int64_t n, const double *want)
{
    nb_tensor *x = vec(xv, NB_SHAPE(n), true);
    nb_scope_begin();
    nb_tensor *y = f(x);
    nb_status st = y ? nb_backward(nb_sum(y, NULL, 0, false), NULL, (nb_backward_opts){0}) : nb_last_status();
    nb_scope_end();
    if (st != NB_OK)
        fail_msg("backward: %s", nb_last_error());
    expect_grad(x, want, n);
    nb_release(x);
}

static nb_tensor *norm2(nb_tensor *x) { return nb_norm(x, 2, NULL, 0, false); }
static nb_tensor *norm1(nb_tensor *x) { return nb_norm(x, 1, NULL, 0, false); }
static nb_tensor *norm3(nb_tensor *x) { return nb_norm(x, 3, NULL, 0, false); }
static nb_tensor *norm_inf(nb_tensor *x) { return nb_norm(x, INFINITY, NULL, 0, false); }
static nb_tensor *prod_all(nb_tensor *x) { return nb_prod(x, NULL, 0, false); }
static nb_tensor *clamp01(nb_tensor *x) { return nb_clamp(x, 0, 1); }
static nb_tensor *clamp_min0(nb_tensor *x) { return nb_clamp(x, 0, NAN); }

static void norm_at_zero_has_gradient_zero(void **state)
{
    (void)state;
    const double z[3] = {0, 0, 0}, v[2] = {3, -4};
    /* torch.zeros(3, dtype=torch.float64, requires_grad=True).norm().backward() -> [0, 0, 0]
     * (the same for p=3 and p=inf: torch.linalg.vector_norm(x, 3) / (x, float('inf'))) */
    grad_of(norm2, z, 3, z);
    grad_of(norm3, z, 3, z);
    grad_of(norm_inf, z, 3, z);
    /* x = torch.tensor([3., -4.], dtype=torch.float64, requires_grad=True)
     * x.norm().backward() -> [0.6, -0.8]; vector_norm(x, 1) -> [1, -1];
     * vector_norm(x, 3) -> sign(x) |x|^2 / ||x||_3^2 = [0.4449, -0.7908];
     * vector_norm(x, inf) -> [0, -1]; x.norm().grad_fn -> <LinalgVectorNormBackward0> */
    const double w2[2] = {0.6, -0.8}, w1[2] = {1, -1}, winf[2] = {0, -1};
    double n3 = cbrt(27 + 64), w3[2] = {9 / (n3 * n3), -16 / (n3 * n3)};
    grad_of(norm2, v, 2, w2);
    grad_of(norm1, v, 2, w1);
    grad_of(norm3, v, 2, w3);
    grad_of(norm_inf, v, 2, winf);
    nb_tensor *x = vec(v, NB_SHAPE(2), true), *n = norm2(x);
    assert_string_equal(fn_name(n), "LinalgVectorNormBackward0");
    nb_release(n);
    nb_release(x);
}

static void prod_with_a_zero_gives_the_product_of_the_others(void **state)
{
    (void)state;
    /* torch.tensor([2., 0, 3], dtype=torch.float64, requires_grad=True).prod().backward()
     * -> [0, 6, 0]; [0., 2, 0] -> [0, 0, 0]; [2., 3, 4] -> [12, 8, 6] */
    const double a[3] = {2, 0, 3}, wa[3] = {0, 6, 0};
    const double b[3] = {0, 2, 0}, wb[3] = {0, 0, 0};
    const double c[3] = {2, 3, 4}, wc[3] = {12, 8, 6};
    grad_of(prod_all, a, 3, wa);
    grad_of(prod_all, b, 3, wb);
    grad_of(prod_all, c, 3, wc);
    /* over a dim: x = torch.tensor([[2., 0], [3, 5]], dtype=torch.float64, requires_grad=True)
     * x.prod(1).sum().backward() -> [[0, 2], [5, 3]] */
    const double m[4] = {2, 0, 3, 5}, wm[4] = {0, 2, 5, 3};
    nb_tensor *x = vec(m, NB_SHAPE(2, 2), true);
    int32_t d1[1] = {1};
    nb_scope_begin();
    backward_sum(nb_prod(x, d1, 1, false));
    nb_scope_end();
    expect_grad(x, wm, 4);
    nb_release(x);
}

static void clamp_at_its_bounds_has_gradient_zero(void **state)
{
    (void)state;
    /* x = torch.tensor([0., 0.5, 1, 2], dtype=torch.float64, requires_grad=True)
     * x.clamp(0, 1).sum().backward() -> [0, 1, 0, 0]; x.clamp(min=0) -> [0, 1, 1, 1] */
    const double v[4] = {0, 0.5, 1, 2}, w[4] = {0, 1, 0, 0}, wmin[4] = {0, 1, 1, 1};
    grad_of(clamp01, v, 4, w);
    grad_of(clamp_min0, v, 4, wmin);
}

static nb_tensor *std_all(nb_tensor *x) { return nb_std(x, NULL, 0, 1, false); }
static nb_tensor *var_all0(nb_tensor *x) { return nb_var(x, NULL, 0, 0, false); }

static void var_and_std_are_one_node_each(void **state)
{
    (void)state;
    /* x = torch.tensor([1., 2, 4], dtype=torch.float64, requires_grad=True); s = x.std()
     * s.grad_fn.next_functions -> ((AccumulateGrad, 0),); s.backward()
     * x.grad -> [-0.4364, -0.1091, 0.5455]  (= (x - mean) / ((n - 1) std));
     * x.var(correction=0).backward() -> [-0.8889, -0.2222, 1.1111]  (= 2 (x - mean) / n);
     * torch.ones(3, ...).std().backward() -> [0, 0, 0] */
    const double xv[3] = {1, 2, 4}, ones[3] = {1, 1, 1}, zero3[3] = {0, 0, 0};
    double mean = 7.0 / 3, sd = 0, ws[3], wv[3];
    for (int k = 0; k < 3; k++)
        sd += (xv[k] - mean) * (xv[k] - mean);
    sd = sqrt(sd / 2);
    for (int k = 0; k < 3; k++) {
        ws[k] = (xv[k] - mean) / (2 * sd);
        wv[k] = 2 * (xv[k] - mean) / 3;
    }
    grad_of(std_all, xv, 3, ws);
    grad_of(var_all0, xv, 3, wv);
    grad_of(std_all, ones, 3, zero3);
    nb_tensor *x = vec(xv, NB_SHAPE(3), true), *s = std_all(x), *v = var_all0(x);
    assert_string_equal(fn_name(s), "StdBackward0");
    assert_string_equal(fn_name(v), "VarBackward0");
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(nb_tensor_grad_fn(s), 0)), "AccumulateGrad");
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(nb_tensor_grad_fn(v), 0)), "AccumulateGrad");
    nb_release(s);
    nb_release(v);
    nb_release(x);
}

static void max_over_a_dim_and_stack_are_one_node(void **state)
{
    (void)state;
    /* m = torch.tensor([[1., 5], [7, 2]], dtype=torch.float64, requires_grad=True)
     * v = m.max(1)[0]; v.grad_fn.next_functions -> ((AccumulateGrad, 0),)
     * v.sum().backward(); m.grad -> [[0, 1], [1, 0]]; m.min(1, keepdim=True)[0] -> [[1, 0], [0, 1]] */
    const double mv[4] = {1, 5, 7, 2}, wmax[4] = {0, 1, 1, 0}, wmin[4] = {1, 0, 0, 1};
    nb_tensor *m = vec(mv, NB_SHAPE(2, 2), true), *v = NULL, *u = NULL;
    NB_ASSERT_OK(nb_max_dim(m, 1, false, &v, NULL));
    assert_string_equal(fn_name(v), "MaxBackward0");
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(nb_tensor_grad_fn(v), 0)), "AccumulateGrad");
    backward_sum(v);
    expect_grad(m, wmax, 4);
    NB_ASSERT_OK(nb_tensor_zero_grad(m));
    NB_ASSERT_OK(nb_min_dim(m, 1, true, &u, NULL));
    assert_string_equal(fn_name(u), "MinBackward0");
    backward_sum(u);
    expect_grad(m, wmin, 4);
    nb_release(u);
    nb_release(v);
    /* s = torch.stack([m, m * 3], 1); s.grad_fn.next_functions -> (AccumulateGrad, MulBackward0)
     * (s * s).sum().backward(); m.grad -> 2 m + 18 m = 20 m */
    NB_ASSERT_OK(nb_tensor_zero_grad(m));
    nb_scope_begin();
    nb_tensor *pair[2] = {m, nb_mul_scalar(m, 3)}, *st = nb_stack(pair, 2, 1);
    assert_string_equal(fn_name(st), "StackBackward0");
    assert_int_equal(nb_grad_fn_next_count(nb_tensor_grad_fn(st)), 2);
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(nb_tensor_grad_fn(st), 0)), "AccumulateGrad");
    assert_string_equal(nb_grad_fn_name(nb_grad_fn_next(nb_tensor_grad_fn(st), 1)), "MulBackward0");
    NB_ASSERT_OK(nb_backward(nb_sum(nb_mul(st, st), NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    double w20[4];
    for (int k = 0; k < 4; k++)
        w20[k] = 20 * mv[k];
    expect_grad(m, w20, 4);
    nb_release(m);
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

static int view_hook_calls;
static nb_tensor *count_hook(const nb_tensor *g, void *ctx)
{
    (void)g, (void)ctx;
    view_hook_calls++;
    return NULL;
}

static void hooks_and_retain_grad_across_an_in_place_op(void **state)
{
    (void)state;
    /* x = torch.ones(3, requires_grad=True); a = x * 1; v = a[:2]; v.retain_grad()
     * v.register_hook(h); a.mul_(2); v.sum().backward()
     * -> h is not called (it stays on v's old grad_fn), v.grad -> [1, 1], x.grad -> [2, 2, 0];
     * a.register_hook(h2) before a.mul_(2): h2 sees the old a's gradient [2, 2, 2]. */
    const double ones[3] = {1, 1, 1}, wx[3] = {2, 2, 0}, wv[2] = {1, 1}, wa[3] = {2, 2, 2};
    nb_tensor *x = vec(ones, NB_SHAPE(3), true), *a = nb_mul_scalar(x, 1);
    nb_tensor *v = nb_narrow(a, 0, 0, 2);
    NB_ASSERT_OK(nb_tensor_retain_grad(v));
    view_hook_calls = 0;
    NB_ASSERT_OK(nb_tensor_register_hook(v, count_hook, NULL));
    NB_ASSERT_OK(nb_mul_scalar_(a, 2));
    backward_sum(v);
    assert_int_equal(view_hook_calls, 0);
    expect_grad(v, wv, 2);
    expect_grad(x, wx, 3);
    nb_release(v);
    nb_release(a);
    NB_ASSERT_OK(nb_tensor_zero_grad(x));
    a = nb_mul_scalar(x, 1);
    nb_tensor *old = a; /* the hook reads the gradient of a's value before the write */
    NB_ASSERT_OK(nb_tensor_register_hook(old, read_hook, &view_hook_calls));
    NB_ASSERT_OK(nb_mul_scalar_(a, 2));
    hook_calls = 0;
    backward_sum(a);
    assert_int_equal(hook_calls, 1);
    assert_true(hook_seen == 2);
    expect_grad(x, wa, 3);
    nb_release(a);
    nb_release(x);
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
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
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
            assert_int_equal(nb_backward(s, NULL, (nb_backward_opts){0}), NB_AUTOGRAD);
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
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
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

/* Second derivatives: gradgradcheck on every case above, and the composites where x reaches
 * the gradient another way (an op that saved a graph-less output got these wrong). */
static nb_tensor *gg_exp_x(nb_tensor *const *x, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    nb_tensor *e = nb_exp(x[0]), *r = nb_mul(e, x[0]);
    nb_release(e);
    return r;
}

static nb_tensor *gg_silu(nb_tensor *const *x, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    nb_tensor *s = nb_sigmoid(x[0]), *r = nb_mul(x[0], s);
    nb_release(s);
    return r;
}

static nb_tensor *gg_tanh_x(nb_tensor *const *x, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    nb_tensor *s = nb_tanh(x[0]), *r = nb_mul(s, x[0]);
    nb_release(s);
    return r;
}

static nb_tensor *gg_inplace_view(nb_tensor *const *x, int32_t n, void *ctx)
{
    (void)n, (void)ctx; /* a = x * x; a[1:].exp_(); a */
    nb_tensor *a = nb_mul(x[0], x[0]), *v = nb_narrow(a, 0, 1, 2);
    if (nb_exp_(v) != NB_OK) {
        nb_release(a);
        a = NULL;
    }
    nb_release(v);
    return a;
}

static void gradgradcheck_passes_for_every_differentiable_op(void **state)
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
        double eps = g->fn == gc_to_dtype ? 1e-3 : 1e-6;
        double atol = g->fn == gc_to_dtype ? 1e-3 : 1e-5;
        nb_status st = nb_gradgradcheck(g->fn, NULL, in, g->n, eps, atol, 1e-3);
        if (st != NB_OK) {
            print_error("gradgradcheck %s: %s\n", g->name, nb_last_error());
            failed++;
        }
        for (int32_t k = 0; k < g->n; k++)
            nb_release(in[k]);
    }
    nb_gradcheck_fn extra[] = {gg_exp_x, gg_silu, gg_tanh_x, gg_inplace_view};
    for (size_t c = 0; c < sizeof extra / sizeof *extra; c++) {
        nb_tensor *x = leaf(NB_SHAPE(3), -1, 1, 40 + (int)c);
        if (nb_gradgradcheck(extra[c], NULL, &x, 1, 1e-6, 1e-5, 1e-3) != NB_OK) {
            print_error("gradgradcheck extra %zu: %s\n", c, nb_last_error());
            failed++;
        }
        nb_release(x);
    }
    nb_release(idx_2x2);
    nb_release(idx_sel);
    assert_int_equal(failed, 0);
}

static void second_derivative_of_x_exp_x(void **state)
{
    (void)state;
    /* x = torch.tensor([0.5, 1., 1.5], dtype=torch.float64, requires_grad=True)
     * g, = torch.autograd.grad((torch.exp(x) * x).sum(), x, create_graph=True)
     * g.sum().backward(); x.grad -> exp(x) * (x + 2) = [4.1218, 8.1548, 15.6881] */
    const double xv[3] = {0.5, 1, 1.5};
    double want[3];
    for (int k = 0; k < 3; k++)
        want[k] = exp(xv[k]) * (xv[k] + 2);
    nb_tensor *x = vec(xv, NB_SHAPE(3), true), *g = NULL;
    nb_tensor *f = gg_exp_x(&x, 1, NULL); /* outside the scope: it releases its temporaries */
    nb_scope_begin();
    nb_tensor *y = nb_sum(f, NULL, 0, false);
    NB_ASSERT_OK(nb_grad(&y, NULL, 1, &x, 1, (nb_grad_opts){.create_graph = true}, &g));
    assert_non_null(nb_tensor_grad_fn(g));
    NB_ASSERT_OK(nb_backward(nb_sum(g, NULL, 0, false), NULL, (nb_backward_opts){0}));
    nb_scope_end();
    expect_grad(x, want, 3);
    nb_release(f);
    nb_release(x);
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
    NB_ASSERT_OK(nb_backward(nb_sum(out, NULL, 0, false), NULL, (nb_backward_opts){0}));
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
        NB_ASSERT_OK(nb_backward(loss, NULL, (nb_backward_opts){0}));
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
        NB_TEST(in_place_on_a_slice_rebases_the_base),
        NB_TEST(views_taken_before_an_in_place_op_see_it),
        NB_TEST(in_place_on_a_select_and_a_transpose),
        NB_TEST(fill_and_zero_are_differentiable),
        NB_TEST(copy_and_index_assignment_are_differentiable),
        NB_TEST(in_place_writes_to_a_leaf_are_refused_also_through_views),
        NB_TEST(writes_into_an_expanded_tensor_are_refused),
        NB_TEST(in_place_ops_do_not_trip_the_version_counter),
        NB_TEST(a_saved_output_changed_again_in_place_is_caught),
        NB_TEST(in_place_ops_without_backward_leak_nothing),
        NB_TEST(in_place_chains_through_nested_views_match_pytorch),
        NB_TEST(in_place_through_views_of_a_strided_base_and_overlapping_views),
        NB_TEST(copy_across_devices_sends_the_gradient_home),
        NB_TEST(backward_with_create_graph_gives_grad_a_graph),
        NB_TEST(prod_is_twice_differentiable_at_zeros),
        NB_TEST(max_and_min_over_everything_share_ties_as_pytorch),
        NB_TEST(linear_records_addmm_of_t_as_pytorch),
        NB_TEST(norm_at_zero_has_gradient_zero),
        NB_TEST(prod_with_a_zero_gives_the_product_of_the_others),
        NB_TEST(clamp_at_its_bounds_has_gradient_zero),
        NB_TEST(var_and_std_are_one_node_each),
        NB_TEST(max_over_a_dim_and_stack_are_one_node),
        NB_TEST(hooks_read_and_replace_gradients),
        NB_TEST(hooks_and_retain_grad_across_an_in_place_op),
        NB_TEST(hooks_must_keep_the_gradient_shape_and_dtype),
        NB_TEST(custom_function_runs_its_backward),
        NB_TEST(gradcheck_passes_for_every_differentiable_op),
        NB_TEST(gradcheck_catches_a_wrong_backward),
        NB_TEST(gradgradcheck_passes_for_every_differentiable_op),
        NB_TEST(second_derivative_of_x_exp_x),
        NB_TEST(callbacks_release_their_temporaries_inside_a_scope),
        NB_TEST(two_layer_net_trains_alike_on_every_device),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
