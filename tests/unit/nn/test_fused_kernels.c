/* test_fused_kernels.c - the tier-2 backward kernels of core/nn/ (gelu_backward,
 * layer_norm_backward, attention_backward, embedding_backward) against the composites they
 * stand in for. A
 * gradient taken without create_graph runs the kernel; the same gradient with create_graph runs
 * the composite (its graph must be differentiable again), so one process compares both. With
 * NABLA_NO_TIER2=1 both sides are composites and the checks still hold. */
#include "nn_extra_helpers.h"

#include <stdio.h>

static nb_tensor *randn(nb_shape s, nb_dtype dt, bool grad)
{
    nb_tensor *t = nb_randn(s, (nb_opts){.dtype = dt, .requires_grad = grad});
    assert_non_null(t);
    return t;
}

/* max |a - b| / (1 + |b|) over the elements */
static double max_rel_diff(const nb_tensor *a, const nb_tensor *b)
{
    assert_non_null(a);
    assert_non_null(b);
    int64_t n = nb_tensor_numel(b);
    assert_int_equal(nb_tensor_numel(a), n);
    nb_tensor *da = nb_to_dtype(a, NB_DTYPE_F64), *db = nb_to_dtype(b, NB_DTYPE_F64);
    double *x = malloc((size_t)(2 * n + 1) * sizeof *x);
    assert_non_null(x);
    assert_int_equal(nb_tensor_copy_to_host(da, x, (size_t)n * sizeof *x), NB_OK);
    assert_int_equal(nb_tensor_copy_to_host(db, x + n, (size_t)n * sizeof *x), NB_OK);
    double worst = 0;
    for (int64_t k = 0; k < n; k++) {
        double d = fabs(x[k] - x[n + k]) / (1 + fabs(x[n + k]));
        worst = isnan(d) ? INFINITY : d > worst ? d : worst;
    }
    free(x);
    nb_release(da);
    nb_release(db);
    return worst;
}

/* The gradients of sum(y * g) with respect to in[0..n), once with create_graph (composite)
 * and once without (kernel), compared elementwise. With the kernel in use (tier 2 on and the
 * device has `kernel`), its gradient step must also hold less memory at its peak than the
 * composite's chain of intermediates: that is how the test knows the kernel ran. */
static void expect_kernel_matches_composite(const char *what, const char *kernel, nb_tensor *y,
                                            nb_tensor *const *in, int32_t n, double tol)
{
    assert_non_null(y);
    nb_tensor *g = randn(nb_tensor_shape(y), nb_tensor_dtype(y), false);
    nb_tensor *comp[4] = {0}, *kern[4] = {0};
    int64_t base = nb_memory_allocated();
    nb_memory_reset_peak();
    NB_ASSERT_OK_(nb_grad(&y, &g, 1, in, n, (nb_grad_opts){.create_graph = true,
                                                           .retain_graph = true}, comp));
    int64_t peak_comp = nb_memory_peak() - base;
    base = nb_memory_allocated();
    nb_memory_reset_peak();
    NB_ASSERT_OK_(nb_grad(&y, &g, 1, in, n, (nb_grad_opts){0}, kern));
    int64_t peak_kern = nb_memory_peak() - base;
    if (nb_device_has_kernel("cpu", kernel, nb_tensor_dtype(y)) && !getenv("NABLA_NO_TIER2") &&
        !(peak_kern < peak_comp))
        fail_msg("%s: the kernel path's peak %lld bytes is not below the composite's %lld: did "
                 "%s run?", what, (long long)peak_kern, (long long)peak_comp, kernel);
    for (int32_t k = 0; k < n; k++) {
        assert_null(nb_tensor_grad_fn(kern[k])); /* no graph: the kernel's plain tensors */
        double d = max_rel_diff(kern[k], comp[k]);
        if (!(d <= tol))
            fail_msg("%s: gradient %d differs from the composite's by %g (tolerance %g)", what,
                     k, d, tol);
        nb_release(comp[k]);
        nb_release(kern[k]);
    }
    nb_release(g);
}

static double tol_of(nb_dtype dt) { return dt == NB_DTYPE_F64 ? 1e-11 : 2e-5; }

static const nb_dtype float_types[] = {NB_DTYPE_F32, NB_DTYPE_F64};

static void gelu_backward_kernel_matches_composite(void **state)
{
    (void)state;
    nb_manual_seed(7);
    for (int d = 0; d < 2; d++) {
        nb_dtype dt = float_types[d];
        /* 3 * randn covers both tails; 1001 elements leave a vector remainder */
        nb_tensor *x0 = randn(NB_SHAPE(7, 143), dt, false);
        nb_tensor *x = nb_mul_scalar(x0, 3);
        nb_tensor *xl = nb_detach(x);
        NB_ASSERT_OK_(nb_tensor_set_requires_grad(xl, true));
        nb_tensor *y = nb_gelu_tanh(xl);
        expect_kernel_matches_composite("gelu_tanh", "gelu_backward", y, &xl, 1, tol_of(dt));
        nb_release(y);
        y = nb_gelu(xl); /* the erf form */
        expect_kernel_matches_composite("gelu", "gelu_backward", y, &xl, 1, tol_of(dt));
        nb_release(y);
        nb_release(xl);
        nb_release(x);
        nb_release(x0);
    }
}

static void layer_norm_backward_kernel_matches_composite(void **state)
{
    (void)state;
    nb_manual_seed(8);
    for (int d = 0; d < 2; d++) {
        nb_dtype dt = float_types[d];
        int64_t ns[1] = {37};
        nb_tensor *x = randn(NB_SHAPE(3, 5, 37), dt, true);
        nb_tensor *w = randn(NB_SHAPE(37), dt, true), *b = randn(NB_SHAPE(37), dt, true);
        nb_tensor *y = nb_layer_norm(x, ns, 1, w, b, 1e-5);
        expect_kernel_matches_composite("layer_norm affine", "layer_norm_backward", y,
                                        (nb_tensor *[]){x, w, b}, 3, tol_of(dt) * 10);
        nb_release(y);
        y = nb_layer_norm(x, ns, 1, NULL, NULL, 1e-5);
        expect_kernel_matches_composite("layer_norm plain", "layer_norm_backward", y, &x, 1,
                                        tol_of(dt) * 10);
        nb_release(y);
        nb_release(x);
        nb_release(w);
        nb_release(b);
    }
}

/* More than one block of 16 keys, causal and not, L != S, E != Ev. */
static void attention_backward_kernel_matches_composite(void **state)
{
    (void)state;
    nb_manual_seed(9);
    static const int64_t shapes[][4] = {{37, 37, 8, 6}, {5, 40, 3, 7}, {16, 16, 16, 16}};
    for (int d = 0; d < 2; d++)
        for (int s = 0; s < 3; s++)
            for (int causal = 0; causal < 2; causal++) {
                nb_dtype dt = float_types[d];
                int64_t L = shapes[s][0], S = shapes[s][1], E = shapes[s][2], Ev = shapes[s][3];
                nb_tensor *q = randn(NB_SHAPE(2, 3, L, E), dt, true);
                nb_tensor *k = randn(NB_SHAPE(2, 3, S, E), dt, true);
                nb_tensor *v = randn(NB_SHAPE(2, 3, S, Ev), dt, true);
                nb_tensor *y = nb_scaled_dot_product_attention(
                    q, k, v, (nb_sdpa_opts){.is_causal = causal != 0});
                char what[96];
                snprintf(what, sizeof what, "attention %s L %lld S %lld%s", nb_dtype_name(dt),
                         (long long)L, (long long)S, causal ? " causal" : "");
                expect_kernel_matches_composite(what, "attention_backward", y,
                                                (nb_tensor *[]){q, k, v}, 3, tol_of(dt) * 10);
                nb_release(y);
                nb_release(q);
                nb_release(k);
                nb_release(v);
            }
}

/* Repeated indices add up; the padding row gets no gradient. */
static void embedding_backward_kernel_matches_composite(void **state)
{
    (void)state;
    nb_manual_seed(11);
    const int64_t iv[] = {3, 0, 3, 6, 2, 3, 0, 5, 6, 1, 3, 2};
    for (int d = 0; d < 2; d++)
        for (int pad = 0; pad < 2; pad++) {
            nb_dtype dt = float_types[d];
            nb_tensor *w = randn(NB_SHAPE(7, 5), dt, true);
            nb_tensor *ix = ti64(NB_SHAPE(3, 4), iv);
            nb_tensor *y = nb_embedding(ix, w, pad ? 3 : NB_NO_PADDING_IDX);
            expect_kernel_matches_composite(pad ? "embedding padding_idx 3" : "embedding",
                                            "embedding_backward", y, &w, 1, tol_of(dt));
            nb_release(y);
            if (pad) { /* row 3 of the gradient is exactly zero (a fresh graph) */
                y = nb_embedding(ix, w, 3);
                nb_tensor *s = nb_sum(y, NULL, 0, false), *g = NULL;
                NB_ASSERT_OK_(nb_grad(&s, NULL, 1, &w, 1, (nb_grad_opts){0}, &g));
                nb_tensor *row = nb_select(g, 0, 3), *ra = nb_abs(row);
                nb_tensor *rs = nb_sum(ra, NULL, 0, false);
                double v = 1;
                NB_ASSERT_OK_(nb_item(rs, &v));
                assert_true(v == 0);
                nb_tensor *r0 = nb_select(g, 0, 0);
                nb_tensor *r0s = nb_sum(r0, NULL, 0, false);
                NB_ASSERT_OK_(nb_item(r0s, &v));
                assert_true(fabs(v - 10) < 1e-6); /* index 0 twice, 5 columns */
                nb_release(r0s);
                nb_release(r0);
                nb_release(rs);
                nb_release(ra);
                nb_release(row);
                nb_release(g);
                nb_release(s);
                nb_release(y);
            }
            nb_release(ix);
            nb_release(w);
        }
}

/* The backward kernel keeps no (L, S) matrix: on a (32, 4, 16, 16) batch the gradient step
 * allocates dq, dk and dv (one output size each) and nothing the size of the scores, while
 * the composite holds several score-sized tensors at once. */
static void attention_backward_peak_memory_is_the_three_gradients(void **state)
{
    (void)state;
    if (!nb_device_has_kernel("cpu", "attention_backward", NB_DTYPE_F32) ||
        getenv("NABLA_NO_TIER2"))
        skip();
    nb_manual_seed(10);
    nb_tensor *q = randn(NB_SHAPE(32, 4, 16, 16), NB_DTYPE_F32, true);
    nb_tensor *k = randn(NB_SHAPE(32, 4, 16, 16), NB_DTYPE_F32, true);
    nb_tensor *v = randn(NB_SHAPE(32, 4, 16, 16), NB_DTYPE_F32, true);
    nb_tensor *y = nb_scaled_dot_product_attention(q, k, v, (nb_sdpa_opts){.is_causal = true});
    nb_tensor *g = nb_ones(NB_SHAPE(32, 4, 16, 16), (nb_opts){0});
    assert_non_null(y);
    assert_non_null(g);
    const int64_t block = 32 * 4 * 16 * 16 * 4; /* bytes of one (B, H, 16, 16) float32 tensor */
    nb_tensor *gr[3] = {0};
    int64_t peak[2];
    for (int create = 1; create >= 0; create--) {
        int64_t base = nb_memory_allocated();
        nb_memory_reset_peak();
        NB_ASSERT_OK_(nb_grad(&y, &g, 1, (nb_tensor *[]){q, k, v}, 3,
                              (nb_grad_opts){.create_graph = create != 0, .retain_graph = true},
                              gr));
        peak[create] = nb_memory_peak() - base;
        for (int j = 0; j < 3; j++)
            nb_release(gr[j]);
    }
    print_message("attention backward peak: kernel %lld bytes, composite %lld (one tensor %lld)\n",
                  (long long)peak[0], (long long)peak[1], (long long)block);
    assert_true(peak[0] <= 3 * block);
    assert_true(peak[1] >= 5 * block);
    nb_release(g);
    nb_release(y);
    nb_release(q);
    nb_release(k);
    nb_release(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(gelu_backward_kernel_matches_composite),
        NB_TEST(layer_norm_backward_kernel_matches_composite),
        NB_TEST(attention_backward_kernel_matches_composite),
        NB_TEST(embedding_backward_kernel_matches_composite),
        NB_TEST(attention_backward_peak_memory_is_the_three_gradients),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
