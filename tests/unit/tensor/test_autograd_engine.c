/* test_autograd_engine.c - tests core/tensor/autograd_engine.c: backward and nb_grad (higher order,
 * retain_graph, broadcasting undone), the ops' backward rules at their edge values (PyTorch 2.x),
 * and one training loop that must give the same losses on every device. */
#include "autograd_helpers.h"

#include <stdio.h>
#include <stdlib.h>

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
        NB_TEST(backward_of_the_torch_tutorial_example),
        NB_TEST(non_scalar_backward_needs_a_gradient),
        NB_TEST(second_backward_needs_retain_graph),
        NB_TEST(gradients_accumulate_until_zero_grad),
        NB_TEST(retain_grad_keeps_a_non_leaf_gradient),
        NB_TEST(broadcasting_is_undone_in_the_gradient),
        NB_TEST(second_derivative_of_cube_is_six_x),
        NB_TEST(grad_reports_unused_inputs_unless_allowed),
        NB_TEST(backward_with_create_graph_gives_grad_a_graph),
        NB_TEST(prod_is_twice_differentiable_at_zeros),
        NB_TEST(max_and_min_over_everything_share_ties_as_pytorch),
        NB_TEST(linear_records_addmm_of_t_as_pytorch),
        NB_TEST(norm_at_zero_has_gradient_zero),
        NB_TEST(prod_with_a_zero_gives_the_product_of_the_others),
        NB_TEST(clamp_at_its_bounds_has_gradient_zero),
        NB_TEST(var_and_std_are_one_node_each),
        NB_TEST(max_over_a_dim_and_stack_are_one_node),
        NB_TEST(two_layer_net_trains_alike_on_every_device),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
