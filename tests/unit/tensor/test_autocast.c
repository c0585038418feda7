/* test_autocast.c - tests core/tensor/autocast.c: regions (nesting, enabled=False, per thread),
 * the errors at nb_autocast_begin, and which ops run in 16-bit or float32 inside a region, with
 * float32 master weights that get float32 gradients. */
#include "nb_test.h"

#include <pthread.h>

static void regions_nest_and_an_end_without_begin_is_an_error(void **state)
{
    (void)state;
    assert_false(nb_autocast_is_enabled("cpu"));
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_BF16); /* torch's default on cpu */
    NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
    assert_true(nb_autocast_is_enabled("cpu"));
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_BF16);
    NB_ASSERT_OK(nb_autocast_begin("cpu", NB_DTYPE_F16)); /* a nested region switches dtype */
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_F16);
    NB_ASSERT_OK(nb_autocast_begin_ex("cpu", 0, false)); /* enabled=False */
    assert_false(nb_autocast_is_enabled("cpu"));
    NB_ASSERT_OK(nb_autocast_end());
    assert_true(nb_autocast_is_enabled("cpu"));
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_F16);
    NB_ASSERT_OK(nb_autocast_end());
    assert_int_equal(nb_autocast_dtype("cpu"), NB_DTYPE_BF16);
    NB_ASSERT_OK(nb_autocast_end());
    assert_false(nb_autocast_is_enabled("cpu"));
    nb_clear_error();
    assert_int_equal(nb_autocast_end(), NB_STATE);
    NB_ASSERT_ERROR_HAS("without a matching nb_autocast_begin");
    /* "cpu:0" and NULL (the default device, cpu here) name the same type */
    NB_ASSERT_OK(nb_autocast_begin(NULL, NB_DTYPE_BF16));
    assert_true(nb_autocast_is_enabled("cpu:0"));
    NB_ASSERT_OK(nb_autocast_end());
    /* nesting is bounded, not unbounded memory */
    int opened = 0;
    while (nb_autocast_begin("cpu", 0) == NB_OK && opened < 1000)
        opened++;
    assert_true(opened >= 16 && opened < 1000);
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("nested deeper");
    while (opened-- > 0)
        NB_ASSERT_OK(nb_autocast_end());
    assert_false(nb_autocast_is_enabled("cpu"));
}

static void a_dtype_or_device_that_cannot_autocast_fails_at_begin(void **state)
{
    (void)state;
    const struct {
        nb_dtype dtype;
        const char *needle;
    } bad[] = {
        {NB_DTYPE_F64, "float64 is not a lower-precision dtype"},
        {NB_DTYPE_I32, "int32 is not a lower-precision dtype"},
        {(nb_dtype)99, "invalid dtype 99"},
        {(nb_dtype)-1, "invalid dtype -1"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        nb_clear_error();
        assert_int_equal(nb_autocast_begin("cpu", bad[k].dtype), NB_DTYPE_UNSUPPORTED);
        NB_ASSERT_ERROR_HAS(bad[k].needle);
        assert_false(nb_autocast_is_enabled("cpu"));
    }
    nb_clear_error();
    assert_int_equal(nb_autocast_begin("cdua", NB_DTYPE_F16), NB_UNKNOWN_DEVICE);
    NB_ASSERT_ERROR_HAS("cdua");
    assert_int_equal(nb_autocast_end(), NB_STATE); /* nothing was opened */
    /* a disabled region does not check the dtype, as torch.autocast(enabled=False) */
    NB_ASSERT_OK(nb_autocast_begin_ex("cpu", NB_DTYPE_F64, false));
    NB_ASSERT_OK(nb_autocast_end());
    /* opencl has 16-bit matmul kernels (16-bit storage, float32 compute) on every device, so
     * it autocasts, to float16 by default as the GPUs do */
    nb_clear_error();
    if (nb_device_count("opencl") > 0) {
        NB_ASSERT_OK(nb_autocast_begin("opencl:0", 0));
        assert_int_equal(nb_autocast_dtype("opencl:0"), NB_DTYPE_F16);
        NB_ASSERT_OK(nb_autocast_end());
    }
    nb_clear_error();
}

static void *other_thread(void *arg)
{
    (void)arg;
    bool *seen = arg;
    *seen = nb_autocast_is_enabled("cpu");
    return NULL;
}

static void regions_belong_to_their_thread(void **state)
{
    (void)state;
    NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
    bool seen = true;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, other_thread, &seen), 0);
    pthread_join(th, NULL);
    assert_false(seen);
    NB_ASSERT_OK(nb_autocast_end());
}

static nb_dtype dt(nb_tensor *t)
{
    if (!t)
        fail_msg("op failed: %s", nb_last_error());
    return nb_tensor_dtype(t);
}

/* matmul, linear, conv2d, attention (and einsum through matmul) run in the region's dtype */
static void lower_precision_ops_run_in_the_regions_dtype(void **state)
{
    (void)state;
    nb_manual_seed(5);
    nb_scope_begin();
    nb_opts f = {0};
    nb_tensor *a = nb_randn(NB_SHAPE(4, 5), f), *b = nb_randn(NB_SHAPE(5, 3), f);
    nb_tensor *a3 = nb_randn(NB_SHAPE(2, 4, 5), f), *b3 = nb_randn(NB_SHAPE(2, 5, 3), f);
    nb_tensor *c = nb_randn(NB_SHAPE(4, 3), f), *bias = nb_randn(NB_SHAPE(3), f);
    nb_tensor *img = nb_randn(NB_SHAPE(2, 1, 6, 6), (nb_opts){0});
    nb_tensor *ker = nb_randn(NB_SHAPE(3, 1, 3, 3), (nb_opts){0});
    nb_tensor *q = nb_randn(NB_SHAPE(2, 4, 8), (nb_opts){0});
    nb_tensor *d = nb_randn(NB_SHAPE(4, 5), (nb_opts){.dtype = NB_DTYPE_F64});
    nb_tensor *e = nb_randn(NB_SHAPE(5, 3), (nb_opts){.dtype = NB_DTYPE_F64});
    const nb_dtype lower[] = {NB_DTYPE_BF16, NB_DTYPE_F16};
    for (int k = 0; k < 2; k++) {
        nb_dtype want = lower[k];
        NB_ASSERT_OK(nb_autocast_begin("cpu", want));
        assert_int_equal(dt(nb_mm(a, b)), want);
        assert_int_equal(dt(nb_matmul(a3, b)), want);
        assert_int_equal(dt(nb_bmm(a3, b3)), want);
        assert_int_equal(dt(nb_addmm(c, a, b, 1, 1)), want);
        assert_int_equal(dt(nb_linear(a, nb_t(b), bias)), want);
        assert_int_equal(dt(nb_conv2d(img, ker, bias, (nb_conv2d_opts){0})), want);
        assert_int_equal(dt(nb_scaled_dot_product_attention(q, q, q, (nb_sdpa_opts){0})), want);
        assert_int_equal(dt(nb_einsum("ij,jk->ik", a, b)), want);
        /* a float32 operand meets a 16-bit one: both are cast, no dtype mismatch */
        assert_int_equal(dt(nb_mm(nb_to_dtype(a, want), b)), want);
        /* float64 is never cast, as PyTorch */
        assert_int_equal(dt(nb_mm(d, e)), NB_DTYPE_F64);
        /* the product is the 16-bit product of the rounded operands, exactly */
        nb_tensor *in_region = nb_mm(a, b);
        NB_ASSERT_OK(nb_autocast_end());
        assert_true(nb_equal(in_region, nb_mm(nb_to_dtype(a, want), nb_to_dtype(b, want))));
        assert_int_equal(dt(nb_mm(a, b)), NB_DTYPE_F32); /* and nothing outside the region */
    }
    nb_scope_end();
}

/* softmax, the losses, norms, sum/mean/prod, exp/log/pow, cumsum, logsumexp: float32 */
static void fp32_ops_run_16bit_inputs_in_float32(void **state)
{
    (void)state;
    nb_manual_seed(6);
    nb_scope_begin();
    nb_opts bf = {.dtype = NB_DTYPE_BF16};
    nb_tensor *h = nb_randn(NB_SHAPE(4, 6), bf);
    nb_tensor *p = nb_sigmoid(h); /* in (0, 1), for bce and log */
    nb_tensor *img = nb_randn(NB_SHAPE(2, 4, 3, 3), bf);
    nb_tensor *y = nb_from_data((int64_t[]){0, 5, 2, 3}, NB_SHAPE(4),
                                (nb_opts){.dtype = NB_DTYPE_I64});
    int64_t ns[1] = {6};
    nb_tensor *f32 = nb_randn(NB_SHAPE(4, 6), (nb_opts){0});
    NB_ASSERT_OK(nb_autocast_begin("cpu", NB_DTYPE_BF16));
    nb_tensor *fp32_results[] = {
        nb_softmax(h, 1), nb_log_softmax(h, 1), nb_sum(h, NULL, 0, false),
        nb_mean(h, NULL, 0, false), nb_prod(p, NULL, 0, false), nb_exp(h), nb_log(p),
        nb_pow_scalar(h, 2), nb_pow(p, h), nb_rpow_scalar(h, 2), nb_cumsum(h, 1),
        nb_logsumexp(h, (int32_t[]){1}, 1, false), nb_layer_norm(h, ns, 1, NULL, NULL, 0),
        nb_group_norm(img, 2, NULL, NULL, 0),
        nb_batch_norm(img, NULL, NULL, NULL, NULL, true, 0.1, 1e-5),
        nb_mse_loss(h, p, NB_REDUCTION_MEAN), nb_cross_entropy(h, y, NB_REDUCTION_MEAN),
        nb_nll_loss(h, y, NB_REDUCTION_MEAN), nb_binary_cross_entropy(p, p, NB_REDUCTION_MEAN),
        nb_binary_cross_entropy_with_logits(h, p, NB_REDUCTION_MEAN),
        nb_smooth_l1_loss(h, p, NB_REDUCTION_MEAN, 1), nb_huber_loss(h, p, NB_REDUCTION_MEAN, 1),
        nb_kl_div(nb_log(p), p, NB_REDUCTION_BATCHMEAN, false),
        nb_cross_entropy_ex(h, y, (nb_class_loss_opts){.label_smoothing = 0.1}),
    };
    for (size_t k = 0; k < sizeof fp32_results / sizeof *fp32_results; k++)
        if (dt(fp32_results[k]) != NB_DTYPE_F32)
            fail_msg("result %zu is %s, expected float32", k,
                     nb_dtype_name(nb_tensor_dtype(fp32_results[k])));
    /* ops on neither list keep their operands' dtypes, promoted as usual */
    assert_int_equal(dt(nb_relu(h)), NB_DTYPE_BF16);
    assert_int_equal(dt(nb_amax(h, NULL, 0, false)), NB_DTYPE_BF16);
    assert_int_equal(dt(nb_add(h, h)), NB_DTYPE_BF16);
    assert_int_equal(dt(nb_add(h, f32)), NB_DTYPE_F32);
    /* in-place ops are never cast */
    nb_tensor *hc = nb_clone(h);
    NB_ASSERT_OK(nb_exp_(hc));
    assert_int_equal(dt(hc), NB_DTYPE_BF16);
    /* the values are the float32 op of the widened inputs */
    nb_tensor *sm = nb_softmax(h, 1);
    NB_ASSERT_OK(nb_autocast_end());
    assert_true(nb_equal(sm, nb_softmax(nb_to_dtype(h, NB_DTYPE_F32), 1)));
    assert_int_equal(dt(nb_softmax(h, 1)), NB_DTYPE_BF16); /* outside: the input's dtype */
    nb_scope_end();
}

/* a linear model's float32 weights get float32 gradients through ToCopyBackward0, close to
 * the float32 run's (bf16 rounding of inputs and product: 2e-2) */
static void master_weights_stay_float32_and_get_float32_gradients(void **state)
{
    (void)state;
    nb_manual_seed(8);
    nb_scope_begin();
    nb_tensor *x = nb_randn(NB_SHAPE(16, 8), (nb_opts){0});
    nb_tensor *t = nb_randn(NB_SHAPE(16, 4), (nb_opts){0});
    nb_tensor *w = nb_randn(NB_SHAPE(4, 8), (nb_opts){.requires_grad = true});
    nb_tensor *b = nb_zeros(NB_SHAPE(4), (nb_opts){.requires_grad = true});
    nb_tensor *g32[2], *g16[2];
    for (int amp = 0; amp < 2; amp++) {
        if (amp)
            NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
        nb_tensor *out = nb_linear(x, w, b);
        nb_tensor *loss = nb_mse_loss(out, t, NB_REDUCTION_MEAN);
        assert_int_equal(dt(out), amp ? NB_DTYPE_BF16 : NB_DTYPE_F32);
        assert_int_equal(dt(loss), NB_DTYPE_F32);
        if (amp) {
            NB_ASSERT_OK(nb_autocast_end());
            /* the weight reaches the product through its cast */
            const nb_grad_fn *fn = nb_tensor_grad_fn(out);
            bool via_copy = false;
            for (int32_t i = 0; fn && i < nb_grad_fn_next_count(fn); i++) {
                const nb_grad_fn *nx = nb_grad_fn_next(fn, i);
                for (; nx && strcmp(nb_grad_fn_name(nx), "ToCopyBackward0") &&
                       nb_grad_fn_next_count(nx) > 0;
                     nx = nb_grad_fn_next(nx, 0))
                    ;
                via_copy |= nx && strcmp(nb_grad_fn_name(nx), "ToCopyBackward0") == 0;
            }
            assert_true(via_copy);
        }
        NB_ASSERT_OK(nb_backward(loss, NULL, (nb_backward_opts){0}));
        nb_tensor **g = amp ? g16 : g32;
        g[0] = nb_tensor_grad(w);
        g[1] = nb_tensor_grad(b);
        NB_ASSERT_OK(nb_tensor_zero_grad(w));
        NB_ASSERT_OK(nb_tensor_zero_grad(b));
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(dt(g16[k]), NB_DTYPE_F32);
        assert_true(nb_allclose(g16[k], g32[k], 2e-2, 2e-2));
        assert_false(nb_equal(g16[k], g32[k])); /* it did run in bfloat16 */
    }
    nb_scope_end();
}

/* Nodes named `name` in the graph below fn, each counted once. */
static int count_nodes(const nb_grad_fn *fn, const char *name, const nb_grad_fn **seen, int *n)
{
    if (!fn)
        return 0;
    for (int i = 0; i < *n; i++)
        if (seen[i] == fn)
            return 0;
    assert_true(*n < 256);
    seen[(*n)++] = fn;
    int c = strcmp(nb_grad_fn_name(fn), name) == 0;
    for (int32_t i = 0; i < nb_grad_fn_next_count(fn); i++)
        c += count_nodes(nb_grad_fn_next(fn, i), name, seen, n);
    return c;
}

/* Attention with a float mask runs as a composite: matmul, add, softmax, matmul. Inside the
 * autocast op its softmax stays bfloat16; cast again to float32 (and back for the second
 * matmul) it would add two casts to the three of q, k and v. */
static void the_ops_inside_an_autocast_op_are_not_cast_again(void **state)
{
    (void)state;
    nb_manual_seed(9);
    nb_scope_begin();
    nb_opts g = {.requires_grad = true};
    nb_tensor *q = nb_randn(NB_SHAPE(2, 3, 4), g), *k = nb_randn(NB_SHAPE(2, 3, 4), g);
    nb_tensor *v = nb_randn(NB_SHAPE(2, 3, 4), g);
    nb_sdpa_opts o = {.attn_mask = nb_zeros(NB_SHAPE(3, 3), (nb_opts){0})};
    NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
    nb_tensor *out = nb_scaled_dot_product_attention(q, k, v, o);
    NB_ASSERT_OK(nb_autocast_end());
    assert_int_equal(dt(out), NB_DTYPE_BF16);
    const nb_grad_fn *seen[256];
    int n = 0;
    assert_int_equal(count_nodes(nb_tensor_grad_fn(out), "ToCopyBackward0", seen, &n), 3);
    n = 0;
    assert_int_equal(count_nodes(nb_tensor_grad_fn(out), "SoftmaxBackward0", seen, &n), 1);
    nb_scope_end();
}

/* PyTorch's cast cache: a weight used twice in a region is cast once; the region holds that
 * cast until it ends, and a new region casts again */
static void a_weight_is_cast_once_per_region(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *x = nb_randn(NB_SHAPE(3, 4), (nb_opts){0});
    nb_tensor *w = nb_randn(NB_SHAPE(4, 4), (nb_opts){.requires_grad = true});
    const nb_grad_fn *seen[256];
    for (int round = 0; round < 2; round++) {
        int64_t live = nb_live_tensors();
        nb_scope_begin();
        NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
        nb_tensor *y = nb_add(nb_mm(x, w), nb_mm(nb_mm(x, w), w));
        int n = 0;
        assert_int_equal(count_nodes(nb_tensor_grad_fn(y), "ToCopyBackward0", seen, &n), 1);
        NB_ASSERT_OK(nb_autocast_end());
        NB_ASSERT_OK(nb_backward(nb_sum(y, NULL, 0, false), NULL, (nb_backward_opts){0}));
        assert_int_equal(dt(nb_tensor_grad(w)), NB_DTYPE_F32);
        NB_ASSERT_OK(nb_tensor_zero_grad(w));
        nb_scope_end();
        assert_int_equal(nb_live_tensors(), live); /* the region's end dropped the cached cast */
    }
    /* under no_grad nothing is cached: the casts die with the op's result */
    nb_no_grad_begin();
    NB_ASSERT_OK(nb_autocast_begin("cpu", 0));
    int64_t live = nb_live_tensors();
    nb_release(nb_mm(x, w));
    assert_int_equal(nb_live_tensors(), live);
    NB_ASSERT_OK(nb_autocast_end());
    nb_no_grad_end();
    nb_scope_end();
}

static void a_disabled_region_casts_nothing_and_null_keeps_the_first_error(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *a = nb_ones(NB_SHAPE(2, 2), (nb_opts){0});
    NB_ASSERT_OK(nb_autocast_begin("cpu", NB_DTYPE_BF16));
    NB_ASSERT_OK(nb_autocast_begin_ex("cpu", 0, false));
    assert_int_equal(dt(nb_mm(a, a)), NB_DTYPE_F32);
    assert_int_equal(dt(nb_softmax(nb_to_dtype(a, NB_DTYPE_BF16), 0)), NB_DTYPE_BF16);
    NB_ASSERT_OK(nb_autocast_end());
    assert_int_equal(dt(nb_mm(a, a)), NB_DTYPE_BF16);
    nb_clear_error();
    assert_null(nb_mm(NULL, a));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    assert_null(nb_softmax(nb_mm(a, NULL), 0)); /* a chain checks once, at the end */
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_clear_error();
    NB_ASSERT_OK(nb_autocast_end());
    nb_scope_end();
}

/* A mixed-precision step: casts, the cast cache, both lists, backward (no scope: the sweep
 * counts every tensor itself). */
static nb_status amp_step(void)
{
    nb_tensor *x = nb_ones(NB_SHAPE(4, 6), (nb_opts){0});
    nb_tensor *w = nb_full(NB_SHAPE(6, 6), 0.5, (nb_opts){.requires_grad = true});
    nb_tensor *h1 = NULL, *h2 = NULL, *ls = NULL, *loss = NULL;
    nb_status st = x && w ? nb_autocast_begin("cpu", 0) : nb_last_status();
    if (st == NB_OK) {
        h1 = nb_linear(x, w, NULL);
        h2 = nb_linear(h1, w, NULL); /* w is cast once, from the cache */
        ls = nb_log_softmax(h2, 1);
        loss = nb_sum(ls, NULL, 0, false);
        st = nb_autocast_end();
    }
    if (st == NB_OK)
        st = loss ? nb_backward(loss, NULL, (nb_backward_opts){0}) : nb_last_status();
    nb_tensor *all[] = {x, w, h1, h2, ls, loss};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        nb_release(all[k]);
    return st;
}

static void every_allocation_failing_in_a_region_fails_cleanly(void **state)
{
    (void)state;
    nb_test_every_allocation_fails_cleanly(amp_step, 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(regions_nest_and_an_end_without_begin_is_an_error),
        NB_TEST(a_dtype_or_device_that_cannot_autocast_fails_at_begin),
        NB_TEST(regions_belong_to_their_thread),
        NB_TEST(lower_precision_ops_run_in_the_regions_dtype),
        NB_TEST(fp32_ops_run_16bit_inputs_in_float32),
        NB_TEST(master_weights_stay_float32_and_get_float32_gradients),
        NB_TEST(the_ops_inside_an_autocast_op_are_not_cast_again),
        NB_TEST(a_weight_is_cast_once_per_region),
        NB_TEST(a_disabled_region_casts_nothing_and_null_keeps_the_first_error),
        NB_TEST(every_allocation_failing_in_a_region_fails_cleanly),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
