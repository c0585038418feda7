/* test_multihead_attention.c - tests core/nn/multihead_attention.c: nn.MultiheadAttention
 * against PyTorch 2.15 (float64, cpu) with the same weights, batch_first and (L, N, E) inputs,
 * key_padding_mask and attn_mask, the is_causal hint (fused path) against the explicit mask,
 * the head-averaged weights, state_dict names, gradcheck and bad input. */
#include "nn_extra_helpers.h"

/* The PyTorch side (every number below comes from it):
 * def seq(n, f): return torch.tensor([f(i) for i in range(n)], dtype=torch.float64)
 * m = torch.nn.MultiheadAttention(4, 2, bias=True, batch_first=bf, dtype=torch.float64)
 * in_proj_weight = seq(48, 0.5 sin(0.3 i + 0.1)).view(12, 4); in_proj_bias = seq(12, 0.1 cos i)
 * out_proj.weight = seq(16, 0.4 sin(0.7 i)).view(4, 4); out_proj.bias = seq(4, 0.05 i)
 * q = seq(24, sin(0.37 i)).view(2, 3, 4); k = seq(40, cos(0.23 i)).view(2, 5, 4)
 * v = seq(40, sin(0.11 i + 1)).view(2, 5, 4); x = seq(32, sin(0.41 i)).view(4, 2, 4)
 * A: m(q, k, v, need_weights=True) (batch_first)
 * B: m(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
 * C: m2(x, x, x, attn_mask=triu(ones(4, 4), 1).bool(), is_causal=True, need_weights=False)
 *    (m2: batch_first=False); D: the same with need_weights=True (weights D_w, output = C) */
static const double A_out[] = {
    -0.00311805182329, -0.256297985982, 0.680319662412, -0.637282315325, 0.01434851374,
    -0.277360600923, 0.702544429549, -0.65810104461, 0.0451834645844, -0.366232393664,
    0.839183455855, -0.826717938256, -0.167144160482, 0.550733818172, -0.676461019938,
    1.11246402112, -0.175452202602, 0.545126401904, -0.657586112056, 1.08250271761,
    -0.180476841593, 0.532091633078, -0.627998172279, 1.0397806507};
static const double A_w[] = {
    0.0935286898691, 0.124742528679, 0.212062620698, 0.300670721612, 0.268995439143,
    0.132861765448, 0.144497935595, 0.195241248547, 0.258398699224, 0.269000351186,
    0.288264444305, 0.240469760259, 0.175394501399, 0.143045283816, 0.152826010221,
    0.159074022425, 0.201649043442, 0.235280623782, 0.223773979159, 0.180222331192, 0.21212065878,
    0.146756102071, 0.141476234522, 0.196007883799, 0.303639120829, 0.253775747845,
    0.163455991709, 0.137275525325, 0.17305560399, 0.272437131131};
static const double B_out[] = {
    0.0524872747596, -0.4299653602, 0.951980895495, -0.975545506917, 0.0641986030711,
    -0.456497418466, 0.990267763269, -1.02116293299, 0.0632799339309, -0.464619761948,
    1.00649253938, -1.04361528256, -0.165806082913, 0.565760646968, -0.706116325108,
    1.15332097442, -0.171586388853, 0.513532199859, -0.601914399801, 1.0091866576,
    -0.178452541976, 0.639570787683, -0.832560993145, 1.31778881587};
static const double C_out[] = {
    0.155069482624, -0.368603835383, 0.733766288552, -0.625693676288, -0.0710612478409,
    -0.211667358238, 0.664158909352, -0.651458897919, 0.0200774871454, 0.0315475299459,
    0.114695171906, 0.140760231515, -0.0869636633373, 0.0659108976956, 0.156980456799,
    0.0267125835485, -0.10220687646, 0.0704918984953, 0.16359102733, 0.00967432827117,
    -0.0316267137009, 0.0267618334327, 0.175417753093, 0.0311175828735, 0.0337567313335,
    0.00663060436644, 0.147970495601, 0.102971650337, -0.0758485181632, 0.0893297542128,
    0.101733772019, 0.107403048328};
static const double D_w[] = {
    1, 0, 0, 0, 0.536761961775, 0.463238038225, 0, 0, 0.316227445301, 0.418013132357,
    0.265759422341, 0, 0.254720123434, 0.241881871626, 0.290984751523, 0.212413253416, 1, 0, 0, 0,
    0.537312761465, 0.462687238535, 0, 0, 0.298805103993, 0.411570816631, 0.289624079376, 0,
    0.230943995658, 0.270176034775, 0.246789956987, 0.252090012581};

static nb_tensor *seq(nb_shape s, double a, double b, double c, bool use_cos)
{
    int64_t n = 1;
    for (int32_t d = 0; d < s.ndim; d++)
        n *= s.dims[d];
    double v[64];
    assert_true(n <= 64);
    for (int64_t i = 0; i < n; i++)
        v[i] = a * (use_cos ? cos(b * (double)i + c) : sin(b * (double)i + c));
    return tf64(s, v, false);
}

/* state tensor by name */
static nb_tensor *state(nb_module *m, const char *name)
{
    for (int32_t i = 0; i < nb_module_state_count(m); i++) {
        const char *n = NULL;
        nb_tensor *t = nb_module_state(m, i, &n);
        if (n && strcmp(n, name) == 0)
            return t;
    }
    fail_msg("no state tensor %s", name);
    return NULL;
}

static void set_state(nb_module *m, const char *name, nb_tensor *value)
{
    nb_no_grad_begin();
    NB_ASSERT_OK_(nb_tensor_copy_(state(m, name), value));
    nb_no_grad_end();
    nb_release(value);
}

static nb_module *make(bool batch_first)
{
    nb_module *m = nb_multihead_attention_new(4, 2, true, batch_first,
                                              (nb_opts){.dtype = NB_DTYPE_F64});
    assert_non_null(m);
    set_state(m, "in_proj_weight", seq(NB_SHAPE(12, 4), 0.5, 0.3, 0.1, false));
    double b[12], ob[4];
    for (int i = 0; i < 12; i++)
        b[i] = 0.1 * cos((double)i);
    for (int i = 0; i < 4; i++)
        ob[i] = 0.05 * i;
    set_state(m, "in_proj_bias", tf64(NB_SHAPE(12), b, false));
    set_state(m, "out_proj.weight", seq(NB_SHAPE(4, 4), 0.4, 0.7, 0, false));
    set_state(m, "out_proj.bias", tf64(NB_SHAPE(4), ob, false));
    return m;
}

static void names_and_init_follow_pytorch(void **state_)
{
    (void)state_;
    nb_module *m = nb_multihead_attention_new(64, 4, true, true, (nb_opts){0});
    assert_non_null(m);
    static const char *names[] = {"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                  "out_proj.bias"};
    assert_int_equal(nb_module_state_count(m), 4);
    for (int i = 0; i < 4; i++) {
        const char *n = NULL;
        assert_non_null(nb_module_state(m, i, &n));
        assert_string_equal(n, names[i]);
    }
    assert_string_equal(nb_module_type(m), "MultiheadAttention");
    /* xavier_uniform_: |w| <= sqrt(6 / (64 + 192)); the biases start at zero */
    nb_tensor *w = state(m, "in_proj_weight"), *b = state(m, "in_proj_bias");
    nb_scope_begin();
    nb_tensor *amax = nb_max(nb_abs(w)), *bsum = nb_sum(nb_abs(b), NULL, 0, false);
    nb_tensor *obsum = nb_sum(nb_abs(state(m, "out_proj.bias")), NULL, 0, false);
    double vmax = 0, vb = 1, vob = 1;
    NB_ASSERT_OK_(nb_item(amax, &vmax));
    NB_ASSERT_OK_(nb_item(bsum, &vb));
    NB_ASSERT_OK_(nb_item(obsum, &vob));
    assert_true(vmax <= sqrt(6.0 / 256) && vmax > 0.5 * sqrt(6.0 / 256));
    assert_true(vb == 0 && vob == 0);
    nb_scope_end();
    nb_module_free(m);
}

static void batch_first_cross_attention_and_weights_match_pytorch(void **state_)
{
    (void)state_;
    nb_module *m = make(true);
    nb_tensor *q = seq(NB_SHAPE(2, 3, 4), 1, 0.37, 0, false);
    nb_tensor *k = seq(NB_SHAPE(2, 5, 4), 1, 0.23, 0, true);
    nb_tensor *v = seq(NB_SHAPE(2, 5, 4), 1, 0.11, 1, false);
    nb_tensor *w = NULL;
    nb_tensor *o = nb_multihead_attention(m, q, k, v, (nb_mha_opts){0}, &w);
    expect_values(o, A_out, 24, 1e-10);
    expect_values(w, A_w, 30, 1e-10);
    nb_shape ws = nb_tensor_shape(w);
    assert_int_equal(ws.ndim, 3);
    assert_int_equal(ws.dims[2], 5);
    nb_release(o);
    nb_release(w);
    /* no weights asked: the fused path, the same output */
    o = nb_multihead_attention(m, q, k, v, (nb_mha_opts){0}, NULL);
    expect_values(o, A_out, 24, 1e-10);
    nb_release(o);
    /* masks: key_padding_mask (N, S) and attn_mask (L, S), true = masked out */
    const uint8_t kpm_v[] = {0, 0, 0, 1, 1, 0, 1, 0, 0, 0};
    const uint8_t am_v[] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0};
    nb_tensor *kpm = nb_from_data(kpm_v, NB_SHAPE(2, 5), (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *am = nb_from_data(am_v, NB_SHAPE(3, 5), (nb_opts){.dtype = NB_DTYPE_BOOL});
    o = nb_multihead_attention(m, q, k, v,
                               (nb_mha_opts){.key_padding_mask = kpm, .attn_mask = am}, NULL);
    expect_values(o, B_out, 24, 1e-10);
    nb_release(o);
    nb_release(kpm);
    nb_release(am);
    nb_release(q);
    nb_release(k);
    nb_release(v);
    nb_module_free(m);
}

static void seq_first_causal_hint_matches_the_explicit_mask(void **state_)
{
    (void)state_;
    nb_module *m = make(false);
    nb_tensor *x = seq(NB_SHAPE(4, 2, 4), 1, 0.41, 0, false);
    uint8_t cm[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            cm[i * 4 + j] = j > i;
    nb_tensor *mask = nb_from_data(cm, NB_SHAPE(4, 4), (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *o = nb_multihead_attention(m, x, x, x,
                                          (nb_mha_opts){.attn_mask = mask, .is_causal = true},
                                          NULL);
    expect_values(o, C_out, 32, 1e-10);
    nb_shape os = nb_tensor_shape(o);
    assert_int_equal(os.dims[0], 4); /* (L, N, E) back */
    assert_int_equal(os.dims[1], 2);
    nb_release(o);
    nb_tensor *w = NULL;
    o = nb_multihead_attention(m, x, x, x, (nb_mha_opts){.attn_mask = mask}, &w);
    expect_values(o, C_out, 32, 1e-10);
    expect_values(w, D_w, 32, 1e-10);
    nb_release(o);
    nb_release(w);
    /* nb_module_forward is self-attention without a mask; an unbatched (L, E) input works */
    nb_tensor *x0 = nb_select(x, 1, 0);
    nb_tensor *o1 = nb_module_forward(m, x0);
    nb_tensor *o2 = nb_multihead_attention(m, x0, x0, x0, (nb_mha_opts){0}, NULL);
    assert_non_null(o1);
    os = nb_tensor_shape(o1);
    assert_int_equal(os.ndim, 2);
    double d[32], e[32];
    NB_ASSERT_OK_(nb_tensor_copy_to_host(o1, d, 16 * sizeof(double)));
    NB_ASSERT_OK_(nb_tensor_copy_to_host(o2, e, 16 * sizeof(double)));
    for (int i = 0; i < 16; i++)
        assert_true(fabs(d[i] - e[i]) < 1e-14);
    nb_release(o1);
    nb_release(o2);
    nb_release(x0);
    nb_release(mask);
    nb_release(x);
    nb_module_free(m);
}

typedef struct gc_ctx {
    nb_module *m;
    const nb_tensor *mask;
} gc_ctx;

static nb_tensor *mha_fn(nb_tensor *const *in, int32_t n, void *p)
{
    (void)n;
    const gc_ctx *c = p;
    return nb_multihead_attention(c->m, in[0], in[1], in[1],
                                  (nb_mha_opts){.attn_mask = c->mask, .is_causal = c->mask != NULL},
                                  NULL);
}

static void gradients_pass_gradcheck(void **state_)
{
    (void)state_;
    nb_module *m = make(true);
    nb_tensor *q = seq(NB_SHAPE(2, 3, 4), 1, 0.37, 0, false);
    nb_tensor *k = seq(NB_SHAPE(2, 3, 4), 1, 0.23, 0, true);
    NB_ASSERT_OK_(nb_tensor_set_requires_grad(q, true));
    NB_ASSERT_OK_(nb_tensor_set_requires_grad(k, true));
    uint8_t cm[9];
    for (int i = 0; i < 9; i++)
        cm[i] = i % 3 > i / 3;
    nb_tensor *mask = nb_from_data(cm, NB_SHAPE(3, 3), (nb_opts){.dtype = NB_DTYPE_BOOL});
    gc_ctx plain = {m, NULL}, causal = {m, mask};
    NB_ASSERT_OK_(nb_gradcheck(mha_fn, &plain, (nb_tensor *[]){q, k}, 2, 1e-6, 1e-6, 1e-5));
    NB_ASSERT_OK_(nb_gradcheck(mha_fn, &causal, (nb_tensor *[]){q, k}, 2, 1e-6, 1e-6, 1e-5));
    /* and the parameters get gradients */
    nb_tensor *o = mha_fn((nb_tensor *[]){q, k}, 2, &causal);
    nb_tensor *s = nb_sum(o, NULL, 0, false);
    NB_ASSERT_OK_(nb_backward(s, NULL, (nb_backward_opts){0}));
    nb_tensor *g1 = nb_tensor_grad(state(m, "in_proj_weight"));
    nb_tensor *g2 = nb_tensor_grad(state(m, "out_proj.bias"));
    assert_non_null(g1);
    assert_non_null(g2);
    nb_release(g1);
    nb_release(g2);
    nb_release(s);
    nb_release(o);
    nb_release(mask);
    nb_release(q);
    nb_release(k);
    nb_module_free(m);
}

static void bad_input_names_what_was_given(void **state_)
{
    (void)state_;
    assert_null(nb_multihead_attention_new(6, 4, true, true, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    assert_non_null(strstr(nb_last_error(), "divisible"));
    nb_module *m = make(true);
    nb_tensor *q = seq(NB_SHAPE(2, 3, 4), 1, 0.37, 0, false);
    nb_tensor *k5 = seq(NB_SHAPE(2, 3, 5), 1, 0.2, 0, false);
    assert_null(nb_multihead_attention(m, q, k5, k5, (nb_mha_opts){0}, NULL));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "[2, 3, 5]"));
    nb_clear_error();
    nb_tensor *bad = nb_zeros(NB_SHAPE(2, 4), (nb_opts){.dtype = NB_DTYPE_BOOL});
    assert_null(nb_multihead_attention(m, q, q, q, (nb_mha_opts){.key_padding_mask = bad}, NULL));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "key_padding_mask"));
    nb_clear_error();
    assert_null(nb_multihead_attention(m, q, q, q, (nb_mha_opts){.is_causal = true}, NULL));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_module *lin = nb_linear_new(4, 4, true, (nb_opts){0});
    assert_null(nb_multihead_attention(lin, q, q, q, (nb_mha_opts){0}, NULL));
    assert_non_null(strstr(nb_last_error(), "Linear"));
    nb_clear_error();
    nb_tensor *w = (nb_tensor *)1;
    assert_null(nb_multihead_attention(m, NULL, q, q, (nb_mha_opts){0}, &w));
    assert_null(w);
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_module_free(lin);
    nb_release(bad);
    nb_release(q);
    nb_release(k5);
    nb_module_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(names_and_init_follow_pytorch),
        NB_TEST(batch_first_cross_attention_and_weights_match_pytorch),
        NB_TEST(seq_first_causal_hint_matches_the_explicit_mask),
        NB_TEST(gradients_pass_gradcheck),
        NB_TEST(bad_input_names_what_was_given),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
