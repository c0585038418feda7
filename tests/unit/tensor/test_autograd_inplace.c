/* test_autograd_inplace.c - tests core/tensor/autograd_inplace.c: in-place ops in the graph, the
 * version counter, and writes through views (CopySlices, view regeneration) as PyTorch 2.x. */
#include "autograd_helpers.h"

#include <stdio.h>
#include <stdlib.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
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
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
