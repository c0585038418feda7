/* test_autograd_gradcheck.c - tests core/tensor/autograd_gradcheck.c: nb_gradcheck and
 * nb_gradgradcheck pass on every differentiable op in float64 and catch a wrong backward. */
#include "autograd_helpers.h"

#include <stdio.h>
#include <stdlib.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(gradcheck_passes_for_every_differentiable_op),
        NB_TEST(gradcheck_catches_a_wrong_backward),
        NB_TEST(gradgradcheck_passes_for_every_differentiable_op),
        NB_TEST(second_derivative_of_x_exp_x),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
