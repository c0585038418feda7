/* test_attention.c - tests core/nn/attention.c: scaled_dot_product_attention with causal, bool
 * and additive masks, gradcheck, shape errors, and the fused kernel's peak memory. Expected values come from PyTorch 2.15
 * (float64, cpu); the Python that printed them is next to each block. */
#include "nn_extra_helpers.h"

#include <stdio.h>

/* ------------------------------------------------------------------ attention */

/* q = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(1, 2, 3, 4)
 * k = torch.linspace(1, -1, 24, dtype=torch.float64).reshape(1, 2, 3, 4).cos()
 * v = torch.linspace(-2, 2, 24, dtype=torch.float64).reshape(1, 2, 3, 4).sin()
 * F.scaled_dot_product_attention(q, k, v, is_causal=True); (.., attn_mask=m) with
 * m = [[T, F, T], [T, T, F], [F, T, T]]; (.., attn_mask=torch.linspace(-1, 1, 9).reshape(3, 3),
 * scale=0.3) */
static void qkv(nb_tensor **q, nb_tensor **k, nb_tensor **v, bool grad)
{
    double a[24], b[24], c[24];
    for (int i = 0; i < 24; i++) {
        a[i] = -1 + 2.0 * i / 23;
        b[i] = cos(1 - 2.0 * i / 23);
        c[i] = sin(-2 + 4.0 * i / 23);
    }
    *q = tf64(NB_SHAPE(1, 2, 3, 4), a, grad);
    *k = tf64(NB_SHAPE(1, 2, 3, 4), b, grad);
    *v = tf64(NB_SHAPE(1, 2, 3, 4), c, grad);
}

static void attention_matches_pytorch_causal_bool_and_additive(void **state)
{
    (void)state;
    nb_tensor *q, *k, *v;
    qkv(&q, &k, &v, false);
    nb_tensor *y = nb_scaled_dot_product_attention(q, k, v, (nb_sdpa_opts){.is_causal = true});
    expect_values(y, ARR(-0.9092974268, -0.9675899448, -0.9966906711, -0.9957216488,
                         -0.9337592093, -0.9397831493, -0.9174542173, -0.8674460679,
                         -0.821581535, -0.7753449608, -0.7057165472, -0.6147969549,
                         0.0868469771, 0.2579207937, 0.4212132457, 0.571797867, 0.3761320517,
                         0.5195943717, 0.6473807427, 0.7556359023, 0.5107379053, 0.6219499931,
                         0.7143981048, 0.7852931188), 24, 1e-9);
    bool mb[9] = {1, 0, 1, 1, 1, 0, 0, 1, 1};
    nb_tensor *m = nb_from_data(mb, NB_SHAPE(3, 3), (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *y2 = nb_scaled_dot_product_attention(q, k, v, (nb_sdpa_opts){.attn_mask = m});
    expect_values(y2, ARR(-0.7896475298, -0.7738892009, -0.7347829524, -0.6735086036,
                          -0.9337592093, -0.9397831493, -0.9174542173, -0.8674460679,
                          -0.7728680209, -0.6685806273, -0.5441224304, -0.4032482831,
                          0.5120675928, 0.6035572075, 0.6768377489, 0.7296983731, 0.3761320517,
                          0.5195943717, 0.6473807427, 0.7556359023, 0.8225234677, 0.8897053074,
                          0.930045103, 0.9423258193), 24, 1e-9);
    double am[9];
    for (int i = 0; i < 9; i++)
        am[i] = -1 + 0.25 * i;
    nb_tensor *add = tf64(NB_SHAPE(3, 3), am, false);
    nb_tensor *y3 = nb_scaled_dot_product_attention(q, k, v, (nb_sdpa_opts){.attn_mask = add,
                                                                            .scale = 0.3});
    expect_values(y3, ARR(-0.8044700681, -0.7488680974, -0.6706730833, -0.5722441375,
                          -0.7972426593, -0.7366954812, -0.6539225026, -0.5514209503,
                          -0.7899683713, -0.7246084896, -0.6373874671, -0.5309367262,
                          0.6588198611, 0.7415973123, 0.802001077, 0.8382087981, 0.6387721024,
                          0.7257291143, 0.7907911765, 0.8319953934, 0.6186535369, 0.7097455209,
                          0.7794247737, 0.8255891009), 24, 1e-9);
    nb_release(y3);
    nb_release(add);
    nb_release(y2);
    nb_release(m);
    nb_release(y);
    nb_release(v);
    nb_release(k);
    nb_release(q);
}

static nb_tensor *sdpa_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_scaled_dot_product_attention(in[0], in[1], in[2], (nb_sdpa_opts){.is_causal = true});
}

static void attention_passes_gradcheck(void **state)
{
    (void)state;
    nb_tensor *in[3];
    qkv(&in[0], &in[1], &in[2], true);
    assert_int_equal(nb_gradcheck(sdpa_fn, NULL, in, 3, 1e-6, 1e-6, 1e-4), NB_OK);
    for (int i = 0; i < 3; i++)
        nb_release(in[i]);
}

static void attention_shape_errors_name_the_shapes(void **state)
{
    (void)state;
    nb_tensor *q = nb_zeros(NB_SHAPE(2, 4, 5, 8), (nb_opts){0});
    nb_tensor *k = nb_zeros(NB_SHAPE(2, 4, 6, 7), (nb_opts){0});
    nb_tensor *v = nb_zeros(NB_SHAPE(2, 4, 6, 8), (nb_opts){0});
    assert_null(nb_scaled_dot_product_attention(q, k, v, (nb_sdpa_opts){0}));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "[2, 4, 5, 8]"));
    assert_non_null(strstr(nb_last_error(), "[2, 4, 6, 7]"));
    nb_clear_error();
    nb_tensor *k2 = nb_zeros(NB_SHAPE(2, 4, 6, 8), (nb_opts){0});
    nb_tensor *m = nb_zeros(NB_SHAPE(3, 6), (nb_opts){.dtype = NB_DTYPE_BOOL});
    assert_null(nb_scaled_dot_product_attention(q, k2, v, (nb_sdpa_opts){.attn_mask = m}));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "[3, 6]"));
    assert_non_null(strstr(nb_last_error(), "[2, 4, 5, 6]"));
    nb_clear_error();
    nb_tensor *y = nb_scaled_dot_product_attention(q, k2, v, (nb_sdpa_opts){0});
    assert_non_null(y);
    nb_shape s = nb_tensor_shape(y);
    assert_int_equal(s.dims[2], 5);
    assert_int_equal(s.dims[3], 8);
    nb_release(y);
    nb_release(m);
    nb_release(k2);
    nb_release(v);
    nb_release(k);
    nb_release(q);
}

/* The fused kernel keeps no score matrix: on a (32, 4, 16, 16) batch the forward's peak is the
 * output alone (plus nothing larger than one (16, 16) block per head); the composite path
 * (taken with a mask) holds at least the (32, 4, 16, 16) scores besides. */
static void fused_attention_peak_memory_is_the_output_alone(void **state)
{
    (void)state;
    nb_opts o = {0};
    nb_tensor *q = nb_randn(NB_SHAPE(32, 4, 16, 16), o), *k = nb_randn(NB_SHAPE(32, 4, 16, 16), o);
    nb_tensor *v = nb_randn(NB_SHAPE(32, 4, 16, 16), o);
    int64_t out_bytes = 32 * 4 * 16 * 16 * (int64_t)sizeof(float);
    int64_t block = 16 * 16 * (int64_t)sizeof(float);
    nb_no_grad_begin();
    bool fused = nb_device_has_kernel("cpu", "attention", NB_DTYPE_F32) && !getenv("NABLA_NO_TIER2");
    int64_t base = nb_memory_allocated();
    nb_memory_reset_peak();
    nb_tensor *y = nb_scaled_dot_product_attention(q, k, v, (nb_sdpa_opts){.is_causal = true});
    assert_non_null(y);
    int64_t fused_peak = nb_memory_peak() - base;
    bool mb[256];
    for (int i = 0; i < 256; i++)
        mb[i] = i % 16 <= i / 16;
    nb_tensor *m = nb_from_data(mb, NB_SHAPE(16, 16), (nb_opts){.dtype = NB_DTYPE_BOOL});
    base = nb_memory_allocated();
    nb_memory_reset_peak();
    nb_tensor *y2 = nb_scaled_dot_product_attention(q, k, v, (nb_sdpa_opts){.attn_mask = m});
    int64_t composite_peak = nb_memory_peak() - base;
    nb_no_grad_end();
    assert_true(nb_allclose(y, y2, 1e-5, 1e-6)); /* the same causal attention both ways */
    if (fused) {
        if (fused_peak > out_bytes + 4 * block)
            print_error("fused peak %lld bytes, output %lld\n", (long long)fused_peak,
                        (long long)out_bytes);
        assert_true(fused_peak <= out_bytes + 4 * block);
    }
    assert_true(composite_peak >= 2 * out_bytes);
    nb_release(y2);
    nb_release(m);
    nb_release(y);
    nb_release(v);
    nb_release(k);
    nb_release(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(attention_matches_pytorch_causal_bool_and_additive),
        NB_TEST(attention_passes_gradcheck),
        NB_TEST(attention_shape_errors_name_the_shapes),
        NB_TEST(fused_attention_peak_memory_is_the_output_alone),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
