/* test_autograd.c - tests core/tensor/autograd.c: the graph and PyTorch's grad_fn names, grad
 * mode and detach, hooks, custom functions, and callbacks that release their temporaries. */
#include "autograd_helpers.h"

#include <stdio.h>
#include <stdlib.h>

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

/* torch.autograd.Function: what the function saved (here its ctx) is freed by a backward
 * without retain_graph, so a second backward through it fails as PyTorch's does ("Trying to
 * backward through the graph a second time"); with retain_graph it runs twice. */
static void custom_function_ctx_goes_with_the_graph(void **state)
{
    (void)state;
    nb_tensor *a = leaf(NB_SHAPE(3), 0, 1, 24), *b = leaf(NB_SHAPE(3), 0, 1, 25);
    nb_tensor *in[2] = {a, b};
    ctx_frees = 0;
    nb_tensor *out = nb_function_apply(&scaled_mul, scaled_ctx(2, a, b), in, 2);
    nb_tensor *s = nb_sum(out, NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
    assert_int_equal(ctx_frees, 1); /* freed by the backward, not later */
    assert_int_equal(nb_backward(s, NULL, (nb_backward_opts){0}), NB_AUTOGRAD);
    NB_ASSERT_ERROR_HAS("second time");
    nb_clear_error();
    nb_release(s);
    nb_release(out);
    assert_int_equal(ctx_frees, 1);
    out = nb_function_apply(&scaled_mul, scaled_ctx(2, a, b), in, 2);
    s = nb_sum(out, NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){.retain_graph = true}));
    NB_ASSERT_OK(nb_backward(s, NULL, (nb_backward_opts){0}));
    assert_int_equal(ctx_frees, 2);
    nb_tensor *ga = nb_tensor_grad(a);
    int64_t n;
    double *bv = values(b, &n), want[3];
    for (int k = 0; k < 3; k++)
        want[k] = 3 * 2 * bv[k]; /* 1 backward + 2 backwards, each 2 * b */
    expect_values(ga, want, 3, 1e-12);
    free(bv);
    nb_tensor *r[] = {a, b, out, s, ga};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(leaves_and_results_are_told_apart),
        NB_TEST(next_functions_end_in_accumulate_grad),
        NB_TEST(grad_fn_names_are_pytorchs),
        NB_TEST(no_grad_mode_nests),
        NB_TEST(detach_shares_storage_and_drops_the_graph),
        NB_TEST(hooks_read_and_replace_gradients),
        NB_TEST(hooks_and_retain_grad_across_an_in_place_op),
        NB_TEST(hooks_must_keep_the_gradient_shape_and_dtype),
        NB_TEST(custom_function_runs_its_backward),
        NB_TEST(custom_function_ctx_goes_with_the_graph),
        NB_TEST(callbacks_release_their_temporaries_inside_a_scope),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
