/* test_hostile_nn.c - the new nn and mixed-precision entry points (layer_norm, embedding, sdpa,
 * MultiheadAttention, autocast, the grad scaler, nb_device_info) given a caller's mistakes, on
 * the cpu and on opencl:0 where it exists: each gives a status and a message naming what it got. */
#include "nb_test.h"

static const char *devices[2];
static int n_devices;

/* r must be NULL with status st and a message containing needle (which names what was given). */
static void refused(nb_tensor *r, nb_status st, const char *needle, const char *dev)
{
    if (r) {
        nb_release(r);
        fail_msg("%s: accepted what it should refuse (wanted \"%s\")", dev, needle);
    }
    if (nb_last_status() != st)
        fail_msg("%s: status %d, wanted %d (\"%s\")", dev, (int)nb_last_status(), (int)st,
                 nb_last_error());
    if (!strstr(nb_last_error(), needle))
        fail_msg("%s: message \"%s\" lacks \"%s\"", dev, nb_last_error(), needle);
    nb_clear_error();
}

static nb_tensor *make(nb_shape s, nb_dtype dt, const char *dev)
{
    nb_tensor *t = nb_ones(s, (nb_opts){.dtype = dt, .device = dev});
    assert_non_null(t);
    return t;
}

static void layer_norm_refuses_a_shape_that_is_not_the_tail(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_tensor *x = make(NB_SHAPE(2, 3), NB_DTYPE_F32, dev);
        refused(nb_layer_norm(NULL, (int64_t[]){3}, 1, NULL, NULL, 0), NB_NULL_ARGUMENT,
                "input", dev);
        refused(nb_layer_norm(x, (int64_t[]){4}, 1, NULL, NULL, 0), NB_SHAPE_MISMATCH, "[4]",
                dev);
        refused(nb_layer_norm(x, (int64_t[]){1, 2, 3}, 3, NULL, NULL, 0), NB_SHAPE_MISMATCH,
                "3 dims", dev);
        refused(nb_layer_norm(x, (int64_t[]){INT64_MAX}, 1, NULL, NULL, 0), NB_SHAPE_MISMATCH,
                "9223372036854775807", dev);
        refused(nb_layer_norm(x, (int64_t[]){3}, -1, NULL, NULL, 0), NB_SHAPE_MISMATCH, "-1",
                dev);
        refused(nb_layer_norm(x, NULL, 1, NULL, NULL, 0), NB_NULL_ARGUMENT, "normalized_shape",
                dev);
        nb_tensor *w = make(NB_SHAPE(4), NB_DTYPE_F32, dev);
        refused(nb_layer_norm(x, (int64_t[]){3}, 1, w, NULL, 0), NB_SHAPE_MISMATCH, "[4]", dev);
        nb_tensor *xi = make(NB_SHAPE(2, 3), NB_DTYPE_I64, dev);
        refused(nb_layer_norm(xi, (int64_t[]){3}, 1, NULL, NULL, 0), NB_DTYPE_UNSUPPORTED,
                "int64", dev);
        nb_release(xi);
        nb_release(w);
        nb_release(x);
    }
}

static void embedding_refuses_indices_and_padding_idx_out_of_range(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_tensor *w = make(NB_SHAPE(4, 2), NB_DTYPE_F32, dev);
        nb_tensor *big = nb_full(NB_SHAPE(3), 4, (nb_opts){.dtype = NB_DTYPE_I64, .device = dev});
        nb_tensor *neg = nb_full(NB_SHAPE(3), -1, (nb_opts){.dtype = NB_DTYPE_I64, .device = dev});
        nb_tensor *fl = make(NB_SHAPE(3), NB_DTYPE_F32, dev);
        nb_tensor *ok = make(NB_SHAPE(3), NB_DTYPE_I64, dev);
        refused(nb_embedding(NULL, w, NB_NO_PADDING_IDX), NB_NULL_ARGUMENT, "indices", dev);
        refused(nb_embedding(big, w, NB_NO_PADDING_IDX), NB_INDEX_OUT_OF_RANGE, "4", dev);
        refused(nb_embedding(neg, w, NB_NO_PADDING_IDX), NB_INDEX_OUT_OF_RANGE, "-1", dev);
        /* read as the double 2^63, which a cast to int64 may not take (UBSan found it) */
        const int64_t imax = INT64_MAX;
        nb_tensor *huge = nb_from_data(&imax, NB_SHAPE(1), (nb_opts){.dtype = NB_DTYPE_I64,
                                                                     .device = dev});
        refused(nb_embedding(huge, w, NB_NO_PADDING_IDX), NB_INDEX_OUT_OF_RANGE,
                "index 9223372036854775808 out", dev);
        nb_release(huge);
        refused(nb_embedding(fl, w, NB_NO_PADDING_IDX), NB_DTYPE_UNSUPPORTED, "float32", dev);
        /* PyTorch: "Padding_idx must be within num_embeddings" for 4 and -5 with 4 rows */
        refused(nb_embedding(ok, w, 4), NB_INDEX_OUT_OF_RANGE, "4", dev);
        refused(nb_embedding(ok, w, -5), NB_INDEX_OUT_OF_RANGE, "-5", dev);
        refused(nb_embedding(ok, w, INT64_MIN + 1), NB_INDEX_OUT_OF_RANGE, "padding_idx", dev);
        nb_tensor *w3 = make(NB_SHAPE(4, 2, 1), NB_DTYPE_F32, dev);
        refused(nb_embedding(ok, w3, NB_NO_PADDING_IDX), NB_SHAPE_MISMATCH, "[4, 2, 1]", dev);
        nb_tensor *r = nb_embedding(ok, w, -4); /* -4 is row 0: fine */
        assert_non_null(r);
        nb_release(r);
        nb_release(w3);
        nb_release(ok);
        nb_release(fl);
        nb_release(neg);
        nb_release(big);
        nb_release(w);
    }
}

static void sdpa_refuses_masks_and_operands_of_the_wrong_shape(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_tensor *q = make(NB_SHAPE(2, 3, 4), NB_DTYPE_F32, dev);
        nb_tensor *k = make(NB_SHAPE(2, 5, 4), NB_DTYPE_F32, dev);
        nb_tensor *k3 = make(NB_SHAPE(2, 5, 3), NB_DTYPE_F32, dev);
        nb_tensor *mask = make(NB_SHAPE(3, 4), NB_DTYPE_BOOL, dev);
        nb_tensor *mi = make(NB_SHAPE(3, 5), NB_DTYPE_I64, dev);
        nb_tensor *qi = make(NB_SHAPE(2, 3, 4), NB_DTYPE_I64, dev);
        nb_sdpa_opts none = {0};
        refused(nb_scaled_dot_product_attention(NULL, k, k, none), NB_NULL_ARGUMENT, "q", dev);
        refused(nb_scaled_dot_product_attention(q, k3, k3, none), NB_SHAPE_MISMATCH, "[2, 5, 3]",
                dev);
        refused(nb_scaled_dot_product_attention(q, k, k, (nb_sdpa_opts){.attn_mask = mask}),
                NB_SHAPE_MISMATCH, "[3, 4]", dev);
        refused(nb_scaled_dot_product_attention(q, k, k, (nb_sdpa_opts){.attn_mask = mi}),
                NB_DTYPE_UNSUPPORTED, "int64", dev);
        refused(nb_scaled_dot_product_attention(qi, qi, qi, none), NB_DTYPE_UNSUPPORTED, "int64",
                dev);
        refused(nb_scaled_dot_product_attention(q, k, k, (nb_sdpa_opts){.dropout_p = 1.5}),
                NB_INVALID_ARGUMENT, "1.5", dev);
        refused(nb_scaled_dot_product_attention(q, k, k, (nb_sdpa_opts){.dropout_p = NAN}),
                NB_INVALID_ARGUMENT, "nan", dev);
        nb_release(qi);
        nb_release(mi);
        nb_release(mask);
        nb_release(k3);
        nb_release(k);
        nb_release(q);
    }
}

/* PyTorch 2.15 (cpu): a query row whose keys are all masked out, by a bool mask or by -inf,
 * gives zeros, not NaN (the softmax of an all -inf row is taken as 0). */
static void sdpa_row_with_every_key_masked_is_zero(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_tensor *q = make(NB_SHAPE(1, 2, 3), NB_DTYPE_F32, dev);
        bool keep_[] = {false, false, true, true};
        float add[] = {-INFINITY, -INFINITY, 0, 0};
        nb_tensor *mb = nb_from_data(keep_, NB_SHAPE(2, 2), (nb_opts){.dtype = NB_DTYPE_BOOL,
                                                                      .device = dev});
        nb_tensor *mf = nb_from_data(add, NB_SHAPE(2, 2), (nb_opts){.device = dev});
        assert_non_null(mb);
        assert_non_null(mf);
        nb_tensor *masks[] = {mb, mf};
        for (int i = 0; i < 2; i++) {
            nb_tensor *r = nb_scaled_dot_product_attention(
                q, q, q, (nb_sdpa_opts){.attn_mask = masks[i]});
            if (!r)
                fail_msg("%s: %s", dev, nb_last_error());
            float out[6];
            NB_ASSERT_OK(nb_tensor_copy_to_host(r, out, sizeof out));
            for (int k = 0; k < 6; k++)
                if (out[k] != (k < 3 ? 0.0f : 1.0f))
                    fail_msg("%s: mask %d: out[%d] = %g, PyTorch gives %g", dev, i, k,
                             (double)out[k], k < 3 ? 0.0 : 1.0);
            nb_release(r);
        }
        nb_release(mf);
        nb_release(mb);
        nb_release(q);
    }
}

static void mha_refuses_bad_embed_dim_heads_and_masks(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_opts o = {.device = dev};
        static const int64_t bad[][2] = {{0, 1}, {-4, 2}, {4, 0}, {4, -2}, {4, 8},
                                         {INT64_MAX, 1}, {(int64_t)1 << 40, 1}};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            nb_module *m = nb_multihead_attention_new(bad[i][0], bad[i][1], true, true, o);
            if (m) {
                nb_module_free(m);
                fail_msg("%s: MHA(%lld, %lld) accepted", dev, (long long)bad[i][0],
                         (long long)bad[i][1]);
            }
            assert_int_not_equal(nb_last_status(), NB_OK);
            char num[32];
            snprintf(num, sizeof num, "%lld", (long long)bad[i][bad[i][0] > 0 && bad[i][0] < 64]);
            if (!strstr(nb_last_error(), num))
                fail_msg("%s: MHA(%lld, %lld): \"%s\" lacks %s", dev, (long long)bad[i][0],
                         (long long)bad[i][1], nb_last_error(), num);
            nb_clear_error();
        }
        nb_module *m = nb_multihead_attention_new(4, 2, true, true, o);
        assert_non_null(m);
        nb_tensor *q = make(NB_SHAPE(2, 3, 4), NB_DTYPE_F32, dev);
        nb_tensor *am = make(NB_SHAPE(3, 4), NB_DTYPE_BOOL, dev);
        nb_tensor *am3 = make(NB_SHAPE(3, 3, 3), NB_DTYPE_BOOL, dev); /* N * heads is 4 */
        nb_tensor *kpm = make(NB_SHAPE(2, 4), NB_DTYPE_BOOL, dev);
        nb_tensor *q16 = make(NB_SHAPE(2, 3, 4), NB_DTYPE_F16, dev);
        nb_tensor *q0 = make(NB_SHAPE(0, 3, 4), NB_DTYPE_F32, dev);
        refused(nb_multihead_attention(NULL, q, q, q, (nb_mha_opts){0}, NULL), NB_NULL_ARGUMENT,
                "m", dev);
        refused(nb_multihead_attention(m, q, q, q, (nb_mha_opts){.attn_mask = am}, NULL),
                NB_SHAPE_MISMATCH, "[3, 4]", dev);
        refused(nb_multihead_attention(m, q, q, q, (nb_mha_opts){.attn_mask = am3}, NULL),
                NB_SHAPE_MISMATCH, "[3, 3, 3]", dev);
        refused(nb_multihead_attention(m, q, q, q, (nb_mha_opts){.key_padding_mask = kpm}, NULL),
                NB_SHAPE_MISMATCH, "[2, 4]", dev);
        refused(nb_multihead_attention(m, q16, q16, q16, (nb_mha_opts){0}, NULL),
                NB_DTYPE_UNSUPPORTED, "float16", dev);
        /* an empty batch: PyTorch returns an empty (0, 3, 4) */
        nb_tensor *r = nb_multihead_attention(m, q0, q0, q0, (nb_mha_opts){0}, NULL);
        if (!r)
            fail_msg("%s: empty batch: %s", dev, nb_last_error());
        assert_int_equal(nb_tensor_numel(r), 0);
        nb_release(r);
        nb_release(q0);
        nb_release(q16);
        nb_release(kpm);
        nb_release(am3);
        nb_release(am);
        nb_release(q);
        nb_module_free(m);
    }
}

/* Non-contiguous views give what their contiguous copies give; 0-d and 0-size inputs either
 * work as in PyTorch (a 0-d index picks one row) or are refused by name. */
static void views_0d_and_empty_inputs(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_tensor *x = nb_randn(NB_SHAPE(3, 4), (nb_opts){.device = dev});
        nb_tensor *xt = nb_transpose(x, 0, 1); /* (4, 3), not contiguous */
        nb_tensor *xc = nb_contiguous(xt);
        nb_tensor *a = nb_layer_norm(xt, (int64_t[]){3}, 1, NULL, NULL, 0);
        nb_tensor *b = nb_layer_norm(xc, (int64_t[]){3}, 1, NULL, NULL, 0);
        if (!a || !b)
            fail_msg("%s: layer_norm of a view: %s", dev, nb_last_error());
        float fa[12], fb[12];
        NB_ASSERT_OK(nb_tensor_copy_to_host(a, fa, sizeof fa));
        NB_ASSERT_OK(nb_tensor_copy_to_host(b, fb, sizeof fb));
        for (int k = 0; k < 12; k++)
            if (fabsf(fa[k] - fb[k]) > 1e-5f)
                fail_msg("%s: layer_norm view [%d] %g vs %g", dev, k, (double)fa[k],
                         (double)fb[k]);
        nb_tensor *q = nb_unsqueeze(xt, 0), *qc = nb_unsqueeze(xc, 0); /* (1, 4, 3) */
        nb_tensor *o1 = nb_scaled_dot_product_attention(q, q, q, (nb_sdpa_opts){0});
        nb_tensor *o2 = nb_scaled_dot_product_attention(qc, qc, qc, (nb_sdpa_opts){0});
        if (!o1 || !o2)
            fail_msg("%s: sdpa of a view: %s", dev, nb_last_error());
        NB_ASSERT_OK(nb_tensor_copy_to_host(o1, fa, sizeof fa));
        NB_ASSERT_OK(nb_tensor_copy_to_host(o2, fb, sizeof fb));
        for (int k = 0; k < 12; k++)
            if (fabsf(fa[k] - fb[k]) > 1e-5f)
                fail_msg("%s: sdpa view [%d] %g vs %g", dev, k, (double)fa[k], (double)fb[k]);
        /* a 0-d index: one row, shape (D) (PyTorch: F.embedding(tensor(2), w).shape == (4,)) */
        const int64_t two = 2;
        nb_tensor *i0 = nb_from_data(&two, (nb_shape){.ndim = 0},
                                     (nb_opts){.dtype = NB_DTYPE_I64, .device = dev});
        nb_tensor *e = nb_embedding(i0, xc, NB_NO_PADDING_IDX);
        if (!e)
            fail_msg("%s: embedding of a 0-d index: %s", dev, nb_last_error());
        assert_int_equal(nb_tensor_ndim(e), 1);
        assert_int_equal(nb_tensor_size(e, 0), 3);
        /* 0-d x for layer_norm, 0-d q for sdpa: refused, naming the shape */
        nb_tensor *z = nb_full((nb_shape){.ndim = 0}, 1, (nb_opts){.device = dev});
        refused(nb_layer_norm(z, (int64_t[]){1}, 1, NULL, NULL, 0), NB_SHAPE_MISMATCH, "[]", dev);
        assert_null(nb_scaled_dot_product_attention(z, z, z, (nb_sdpa_opts){0}));
        assert_int_not_equal(nb_last_status(), NB_OK);
        nb_clear_error();
        /* no queries: an empty (1, 0, 3) output, as in PyTorch */
        nb_tensor *q0 = nb_zeros(NB_SHAPE(1, 0, 3), (nb_opts){.device = dev});
        nb_tensor *o0 = nb_scaled_dot_product_attention(q0, qc, qc, (nb_sdpa_opts){0});
        if (!o0)
            fail_msg("%s: sdpa with no queries: %s", dev, nb_last_error());
        assert_int_equal(nb_tensor_numel(o0), 0);
        nb_release(o0);
        nb_release(q0);
        nb_release(z);
        nb_release(e);
        nb_release(i0);
        nb_release(o2);
        nb_release(o1);
        nb_release(qc);
        nb_release(q);
        nb_release(b);
        nb_release(a);
        nb_release(xc);
        nb_release(xt);
        nb_release(x);
    }
}

static void autocast_misuse_is_a_status(void **state)
{
    (void)state;
    nb_clear_error();
    assert_int_equal(nb_autocast_end(), NB_STATE);
    assert_non_null(strstr(nb_last_error(), "nb_autocast_end"));
    nb_clear_error();
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        /* NB_DTYPE_F32 is 0, the default (dtype=None); float64 is no autocast dtype */
        assert_int_equal(nb_autocast_begin(dev, NB_DTYPE_F64), NB_DTYPE_UNSUPPORTED);
        assert_non_null(strstr(nb_last_error(), "float64"));
        assert_int_equal(nb_autocast_begin(dev, (nb_dtype)-1), NB_DTYPE_UNSUPPORTED);
        assert_int_equal(nb_autocast_begin(dev, NB_DTYPE_COUNT), NB_DTYPE_UNSUPPORTED);
        assert_int_equal(nb_autocast_begin(dev, NB_DTYPE_I64), NB_DTYPE_UNSUPPORTED);
        assert_int_not_equal(nb_autocast_begin("nodevice", 0), NB_OK);
        assert_int_not_equal(nb_autocast_begin("", 0), NB_OK);
        assert_false(nb_autocast_is_enabled(dev));
        nb_clear_error();
        /* 32 deep at most; the 33rd is refused, and closing all 32 works */
        int opened = 0;
        for (int k = 0; k < 40; k++)
            opened += nb_autocast_begin(dev, 0) == NB_OK;
        assert_int_equal(opened, 32);
        assert_non_null(strstr(nb_last_error(), "32"));
        nb_clear_error();
        for (int k = 0; k < opened; k++)
            NB_ASSERT_OK(nb_autocast_end());
        assert_int_equal(nb_autocast_end(), NB_STATE);
        nb_clear_error();
        /* integer operands inside a region: not cast (PyTorch casts floating operands only);
         * opencl has no int64 matmul at all, region or not */
        if (strcmp(dev, "cpu") != 0)
            continue;
        NB_ASSERT_OK(nb_autocast_begin(dev, 0));
        nb_tensor *a = make(NB_SHAPE(2, 2), NB_DTYPE_I64, dev);
        nb_tensor *p = nb_matmul(a, a);
        if (!p)
            fail_msg("%s: int64 matmul under autocast: %s", dev, nb_last_error());
        assert_int_equal(nb_tensor_dtype(p), NB_DTYPE_I64);
        nb_release(p);
        nb_release(a);
        NB_ASSERT_OK(nb_autocast_end());
    }
}

static void grad_scaler_misuse_is_a_status(void **state)
{
    (void)state;
    assert_null(nb_grad_scaler_new((nb_grad_scaler_opts){.growth_factor = 0.5}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    assert_non_null(strstr(nb_last_error(), "0.5"));
    assert_null(nb_grad_scaler_new((nb_grad_scaler_opts){.backoff_factor = 2}));
    assert_null(nb_grad_scaler_new((nb_grad_scaler_opts){.init_scale = -1}));
    assert_null(nb_grad_scaler_new((nb_grad_scaler_opts){.init_scale = NAN}));
    assert_null(nb_grad_scaler_new((nb_grad_scaler_opts){.growth_interval = -3}));
    assert_non_null(strstr(nb_last_error(), "-3"));
    nb_clear_error();
    assert_int_equal(nb_grad_scaler_update(NULL), NB_NULL_ARGUMENT);
    assert_int_equal(nb_grad_scaler_step(NULL, NULL), NB_NULL_ARGUMENT);
    assert_null(nb_grad_scaler_scale(NULL, NULL));
    assert_true(nb_grad_scaler_get_scale(NULL) == 0);
    nb_clear_error();
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_grad_scaler *s = nb_grad_scaler_new((nb_grad_scaler_opts){0});
        assert_non_null(s);
        refused(nb_grad_scaler_scale(s, NULL), NB_NULL_ARGUMENT, "loss", dev);
        assert_int_equal(nb_grad_scaler_step(s, NULL), NB_NULL_ARGUMENT);
        assert_int_equal(nb_grad_scaler_unscale(s, NULL), NB_NULL_ARGUMENT);
        nb_clear_error();
        /* PyTorch: update() with no step raises "No inf checks were recorded prior to update" */
        assert_int_equal(nb_grad_scaler_update(s), NB_STATE);
        assert_non_null(strstr(nb_last_error(), "update"));
        nb_clear_error();
        nb_tensor *w = nb_ones(NB_SHAPE(2), (nb_opts){.device = dev, .requires_grad = true});
        nb_optim *o = nb_sgd_new(&w, 1, (nb_sgd_opts){.lr = 0.1});
        assert_non_null(o);
        /* no gradient yet: PyTorch steps nothing and does not fail */
        NB_ASSERT_OK(nb_grad_scaler_unscale(s, o));
        assert_int_equal(nb_grad_scaler_unscale(s, o), NB_STATE); /* twice before update */
        assert_non_null(strstr(nb_last_error(), "unscale"));
        nb_clear_error();
        nb_tensor *li = make(NB_SHAPE(1), NB_DTYPE_I64, dev);
        refused(nb_grad_scaler_scale(s, li), NB_DTYPE_UNSUPPORTED, "int64", dev);
        nb_release(li);
        nb_optim_free(o);
        nb_release(w);
        nb_grad_scaler_free(s);
    }
}

static void device_info_refuses_null_and_unknown_devices(void **state)
{
    (void)state;
    char buf[8] = "xxxxxxx";
    assert_int_equal(nb_device_info("cpu", NULL, 8), NB_NULL_ARGUMENT);
    assert_int_not_equal(nb_device_info("nodevice", buf, sizeof buf), NB_OK);
    assert_non_null(strstr(nb_last_error(), "nodevice"));
    nb_clear_error();
    for (int d = 0; d < n_devices; d++) {
        NB_ASSERT_OK(nb_device_info(devices[d], buf, sizeof buf));
        assert_true(strlen(buf) < sizeof buf); /* truncated, terminated */
        NB_ASSERT_OK(nb_device_info(devices[d], buf, 1));
        assert_int_equal(buf[0], 0);
    }
    assert_int_equal(nb_device_info("cpu", buf, 0), NB_NULL_ARGUMENT); /* no room for the 0 */
    nb_clear_error();
}

int main(void)
{
    if (nb_init() != NB_OK)
        return 1;
    devices[n_devices++] = "cpu";
    if (nb_device_count("opencl") > 0)
        devices[n_devices++] = "opencl:0";
    const struct CMUnitTest tests[] = {
        NB_TEST(layer_norm_refuses_a_shape_that_is_not_the_tail),
        NB_TEST(embedding_refuses_indices_and_padding_idx_out_of_range),
        NB_TEST(sdpa_refuses_masks_and_operands_of_the_wrong_shape),
        NB_TEST(sdpa_row_with_every_key_masked_is_zero),
        NB_TEST(mha_refuses_bad_embed_dim_heads_and_masks),
        NB_TEST(views_0d_and_empty_inputs),
        NB_TEST(autocast_misuse_is_a_status),
        NB_TEST(grad_scaler_misuse_is_a_status),
        NB_TEST(device_info_refuses_null_and_unknown_devices),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
