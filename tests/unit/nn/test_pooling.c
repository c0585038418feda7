/* test_pooling.c - tests core/nn/pooling.c (adaptive_avg_pool2d) with the pool and conv options
 * of convolution.c it is used with: dilation, ceil_mode, count_include_pad and padding="same".
 * Expected values come from PyTorch 2.15
 * (float64, cpu); the Python that printed them is next to each block. */
#include "nn_extra_helpers.h"

/* ------------------------------------------------------------------ pooling and conv options */

/* pa = torch.arange(50, dtype=torch.float64).reshape(2, 1, 5, 5).sin()
 * F.max_pool2d(pa, 2, 2, 1, dilation=2, ceil_mode=True); F.avg_pool2d(pa, 2, 2, 1,
 * ceil_mode=True); F.avg_pool2d(pa, 3, 2, 1, ceil_mode=True, count_include_pad=False);
 * F.adaptive_avg_pool2d(pa, (2, 3)) */
static nb_tensor *pool_input(bool grad)
{
    double v[50];
    for (int i = 0; i < 50; i++)
        v[i] = sin(i);
    return tf64(NB_SHAPE(2, 1, 5, 5), v, grad);
}

static void pool_options_match_pytorch(void **state)
{
    (void)state;
    nb_tensor *x = pool_input(false);
    nb_tensor *m = nb_max_pool2d(x, (nb_pool2d_opts){.kernel = {2, 2}, .stride = {2, 2},
                                                     .padding = {1, 1}, .dilation = {2, 2},
                                                     .ceil_mode = true});
    nb_shape s = nb_tensor_shape(m);
    assert_int_equal(s.dims[2], 3);
    expect_values(m, ARR(-0.2794154982, 0.9893582466, 0.9893582466, -0.2794154982, 0.9893582466,
                         0.9893582466, -0.2879033167, -0.2879033167, -0.7509872468,
                         -0.4040376453, 0.9999118601, 0.9999118601, -0.1586226688, 0.9999118601,
                         0.9999118601, -0.1586226688, -0.1586226688, -0.8317747426), 18, 1e-9);
    nb_tensor *a = nb_avg_pool2d(x, (nb_pool2d_opts){.kernel = {2, 2}, .stride = {2, 2},
                                                     .padding = {1, 1}, .ceil_mode = true});
    expect_values(a, ARR(0.0, 0.4376921029, -0.1539206218, -0.3757363464, -0.289748006,
                         0.7030627811, 0.3908082727, -0.1053741198, -0.5882272008,
                         -0.0330879375, 0.4297335947, -0.098182024, -0.3540535734,
                         -0.3719819877, 0.6972896278, 0.3990041713, -0.0124456866,
                         -0.6340200329), 18, 1e-9);
    nb_tensor *e = nb_avg_pool2d(x, (nb_pool2d_opts){.kernel = {3, 3}, .stride = {2, 2},
                                                     .padding = {1, 1}, .ceil_mode = true,
                                                     .exclude_padding = true});
    expect_values(e, ARR(-0.099217197, 0.5431362945, 0.1964485612, -0.4033277611, -0.1944171995,
                         0.3685235145, 0.5279963532, -0.3364506884, -0.5882272008,
                         -0.1904656423, 0.5228568439, 0.2840666126, -0.3709233834,
                         -0.2331740524, 0.3291809489, 0.584795591, -0.2749686917,
                         -0.6340200329), 18, 1e-9);
    nb_tensor *ad = nb_adaptive_avg_pool2d(x, 2, 3);
    expect_values(ad, ARR(-0.3234800176, 0.2380468532, 0.3660947729, 0.0946623492,
                          -0.3483444687, -0.1570224018, -0.3636373487, 0.1997991839,
                          0.3994050692, 0.1532034735, -0.3320845065, -0.2126526944), 12, 1e-9);
    assert_null(nb_avg_pool2d(x, (nb_pool2d_opts){.kernel = {2, 2}, .dilation = {2, 2}}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_release(ad);
    nb_release(e);
    nb_release(a);
    nb_release(m);
    nb_release(x);
}

static nb_tensor *maxp_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_max_pool2d(in[0], (nb_pool2d_opts){.kernel = {2, 2}, .stride = {2, 2},
                                                 .padding = {1, 1}, .dilation = {2, 2},
                                                 .ceil_mode = true});
}
static nb_tensor *avgp_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_avg_pool2d(in[0], (nb_pool2d_opts){.kernel = {3, 3}, .stride = {2, 2},
                                                 .padding = {1, 1}, .ceil_mode = true,
                                                 .exclude_padding = true});
}
static nb_tensor *adp_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_adaptive_avg_pool2d(in[0], 2, 3);
}
static nb_tensor *same_fn(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_conv2d(in[0], in[1], NULL, (nb_conv2d_opts){.padding_same = true});
}

static void pool_options_and_same_padding_pass_gradcheck(void **state)
{
    (void)state;
    nb_tensor *x = pool_input(true);
    assert_int_equal(nb_gradcheck(maxp_fn, NULL, &x, 1, 1e-6, 1e-6, 1e-4), NB_OK);
    assert_int_equal(nb_gradcheck(avgp_fn, NULL, &x, 1, 1e-6, 1e-6, 1e-4), NB_OK);
    assert_int_equal(nb_gradcheck(adp_fn, NULL, &x, 1, 1e-6, 1e-6, 1e-4), NB_OK);
    double wv[12];
    for (int i = 0; i < 12; i++)
        wv[i] = -1 + 2.0 * i / 11;
    nb_tensor *in[2] = {x, tf64(NB_SHAPE(2, 1, 2, 3), wv, true)};
    assert_int_equal(nb_gradcheck(same_fn, NULL, in, 2, 1e-6, 1e-6, 1e-4), NB_OK);
    nb_release(in[1]);
    nb_release(x);
}

/* cw = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(2, 1, 2, 3)
 * F.conv2d(pa, cw, padding="same")[:12 flat], (.., dilation=2)[:8 flat] */
static void same_padding_keeps_the_size_like_pytorch(void **state)
{
    (void)state;
    nb_tensor *x = pool_input(false);
    double wv[12];
    for (int i = 0; i < 12; i++)
        wv[i] = -1 + 2.0 * i / 11;
    nb_tensor *w = tf64(NB_SHAPE(2, 1, 2, 3), wv, false);
    nb_tensor *y = nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding_same = true});
    nb_shape s = nb_tensor_shape(y);
    assert_int_equal(s.dims[2], 5);
    assert_int_equal(s.dims[3], 5);
    nb_tensor *f = nb_reshape(y, NB_SHAPE(-1)), *head = nb_narrow(f, 0, 0, 12);
    expect_values(head, ARR(-0.2485553247, -0.8147672347, -1.8173580257, -1.149078229,
                            -0.0840222109, 1.2016618635, 1.3382408551, -0.325028535,
                            -1.6894681889, -1.7876967574, 0.9302873855, 1.573983886), 12, 1e-9);
    nb_tensor *yd = nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding_same = true,
                                                           .dilation = {2, 2}});
    nb_tensor *fd = nb_reshape(yd, NB_SHAPE(-1)), *hd = nb_narrow(fd, 0, 0, 8);
    expect_values(hd, ARR(0.2017987478, -0.013737432, 0.2192311902, -0.1428179317,
                          -0.4110262227, -0.381495067, -0.5437523034, 0.0411961435), 8, 1e-9);
    assert_null(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding_same = true, .stride = {2, 2}}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    /* A dilated extent past int64 (a fuzzer's find: UB before) is an error; one that fits
     * but reaches far past the input gives the input's size or an error, never a crash. */
    int64_t huge = (int64_t)1 << 62; /* times the kernel's width - 1 (2): 2^63 */
    assert_null(nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding_same = true,
                                                       .dilation = {1, huge}}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    assert_non_null(strstr(nb_last_error(), "padding='same' with dilation"));
    nb_clear_error();
    nb_tensor *far = nb_conv2d(x, w, NULL, (nb_conv2d_opts){.padding_same = true,
                                                             .dilation = {(int64_t)1 << 40, 1}});
    if (far) /* the taps beyond the input read padding: the size stays (or no memory) */
        assert_int_equal(nb_tensor_size(far, 2), 5);
    else
        assert_int_equal(nb_last_status(), NB_OUT_OF_MEMORY);
    nb_release(far);
    nb_clear_error();
    nb_release(hd);
    nb_release(fd);
    nb_release(yd);
    nb_release(head);
    nb_release(f);
    nb_release(y);
    nb_release(w);
    nb_release(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(pool_options_match_pytorch),
        NB_TEST(pool_options_and_same_padding_pass_gradcheck),
        NB_TEST(same_padding_keeps_the_size_like_pytorch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
