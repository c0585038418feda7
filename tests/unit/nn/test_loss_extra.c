/* test_loss_extra.c - tests core/nn/loss_extra.c: smooth_l1, huber, kl_div, cross_entropy's
 * weight, label smoothing, ignore_index and spatial dims, nll weights and pos_weight. Expected values come from PyTorch 2.15
 * (float64, cpu); the Python that printed them is next to each block. */
#include "nn_extra_helpers.h"

/* ------------------------------------------------------------------ losses */

/* inp = torch.linspace(-2, 2, 6); tgt = torch.linspace(1, -1, 6) (float64)
 * F.smooth_l1_loss(inp, tgt, beta=0.5), F.huber_loss(inp, tgt, delta=0.7),
 * F.huber_loss(inp, tgt, reduction='sum', delta=2) */
static void smooth_l1_and_huber_match_pytorch(void **state)
{
    (void)state;
    double a[6], b[6];
    for (int i = 0; i < 6; i++)
        a[i] = -2 + 0.8 * i, b[i] = 1 - 0.4 * i;
    nb_tensor *x = tf64(NB_SHAPE(6), a, false), *t = tf64(NB_SHAPE(6), b, false);
    nb_tensor *l1 = nb_smooth_l1_loss(x, t, NB_REDUCTION_MEAN, 0.5);
    nb_tensor *l2 = nb_huber_loss(x, t, NB_REDUCTION_MEAN, 0.7);
    nb_tensor *l3 = nb_huber_loss(x, t, NB_REDUCTION_SUM, 2);
    expect_values(l1, ARR(1.5499999999999998), 1, 1e-12);
    expect_values(l2, ARR(1.0166666666666664), 1, 1e-12);
    expect_values(l3, ARR(11.599999999999998), 1, 1e-12);
    nb_release(l1);
    nb_release(l2);
    nb_release(l3);
    nb_release(t);
    nb_release(x);
}

/* lp = F.log_softmax(torch.linspace(-1, 1, 6).reshape(2, 3), 1)
 * tp = F.softmax(torch.linspace(1, 0, 6).reshape(2, 3), 1); tp0 = tp with tp0[0, 1] = 0
 * F.kl_div(lp, tp0, reduction='batchmean'), F.kl_div(lp, tp.log(), 'sum', log_target=True),
 * F.kl_div(lp, tp0, reduction='mean') */
static void kl_div_matches_pytorch(void **state)
{
    (void)state;
    double a[6], b[6];
    for (int i = 0; i < 6; i++)
        a[i] = -1 + 0.4 * i, b[i] = 1 - 0.2 * i;
    nb_tensor *xa = tf64(NB_SHAPE(2, 3), a, false), *xb = tf64(NB_SHAPE(2, 3), b, false);
    nb_tensor *lp = nb_log_softmax(xa, 1), *tp = nb_softmax(xb, 1);
    double tv[6];
    assert_int_equal(nb_tensor_copy_to_host(tp, tv, sizeof tv), NB_OK);
    tv[1] = 0;
    nb_tensor *tp0 = tf64(NB_SHAPE(2, 3), tv, false);
    nb_tensor *ltp = nb_log(tp);
    nb_tensor *k1 = nb_kl_div(lp, tp0, NB_REDUCTION_BATCHMEAN, false);
    nb_tensor *k2 = nb_kl_div(lp, ltp, NB_REDUCTION_SUM, true);
    nb_tensor *k3 = nb_kl_div(lp, tp0, NB_REDUCTION_MEAN, false);
    expect_values(k1, ARR(0.11234872459915504), 1, 1e-12);
    expect_values(k2, ARR(0.23764065743532847), 1, 1e-12);
    expect_values(k3, ARR(0.03744957486638501), 1, 1e-12);
    assert_null(nb_mse_loss(lp, tp, NB_REDUCTION_BATCHMEAN));
    nb_clear_error();
    nb_release(k1);
    nb_release(k2);
    nb_release(k3);
    nb_release(ltp);
    nb_release(tp0);
    nb_release(tp);
    nb_release(lp);
    nb_release(xb);
    nb_release(xa);
}

/* x = torch.linspace(-2, 3, 12, dtype=torch.float64).reshape(2, 3, 2).cos().requires_grad_()
 * t = torch.tensor([[0, 2], [1, -100]]); w = torch.tensor([1., 2., 0.5])
 * l = F.cross_entropy(x, t, weight=w, label_smoothing=0.2); g, = torch.autograd.grad(l, x) */
static void cross_entropy_takes_weight_smoothing_ignore_and_spatial_dims(void **state)
{
    (void)state;
    double a[12];
    for (int i = 0; i < 12; i++)
        a[i] = cos(-2 + 5.0 * i / 11);
    nb_tensor *x = tf64(NB_SHAPE(2, 3, 2), a, true);
    nb_tensor *t = ti64(NB_SHAPE(2, 2), (int64_t[]){0, 2, 1, -100});
    nb_tensor *w = tf64(NB_SHAPE(3), ARR(1, 2, 0.5), false);
    nb_tensor *l = nb_cross_entropy_ex(x, t, (nb_class_loss_opts){.weight = w,
                                                                  .label_smoothing = 0.2});
    expect_values(l, ARR(1.3966933332568914), 1, 1e-12);
    nb_tensor *g = grad_of_sum(l, x);
    expect_values(g, ARR(-0.2080402388, 0.0125144317, 0.0571180803, 0.030682387, 0.1509221585,
                         -0.0431968187, 0.2982485586, 0.0, -0.354440277, 0.0, 0.0561917185, 0.0),
                  12, 1e-9);
    nb_release(g);
    nb_release(l);
    nb_release(w);
    nb_release(t);
    nb_release(x);
}

/* x2 = torch.linspace(-1, 2, 12, dtype=torch.float64).reshape(4, 3); t2 = [0, 2, 1, 1]
 * F.cross_entropy(x2, t2, ignore_index=1) (mean and 'none'); all targets ignored -> nan;
 * F.cross_entropy(x2, t2, label_smoothing=0.1); F.nll_loss(F.log_softmax(x2, 1), t2, weight=w) */
static void ignore_index_and_nll_weight_match_pytorch(void **state)
{
    (void)state;
    double a[12];
    for (int i = 0; i < 12; i++)
        a[i] = -1 + 3.0 * i / 11;
    nb_tensor *x = tf64(NB_SHAPE(4, 3), a, false);
    nb_tensor *t = ti64(NB_SHAPE(4), (int64_t[]){0, 2, 1, 1});
    nb_class_loss_opts ig = {.ignore_index = 1, .ignore_index_set = true};
    nb_tensor *l = nb_cross_entropy_ex(x, t, ig);
    expect_values(l, ARR(1.1232536296842215), 1, 1e-12);
    ig.reduction = NB_REDUCTION_NONE;
    nb_tensor *ln = nb_cross_entropy_ex(x, t, ig);
    expect_values(ln, ARR(1.3959809024114942, 0.8505263569569488, 0, 0), 4, 1e-12);
    ig.reduction = NB_REDUCTION_MEAN;
    nb_tensor *all = ti64(NB_SHAPE(4), (int64_t[]){1, 1, 1, 1});
    nb_tensor *nan = nb_cross_entropy_ex(x, all, ig);
    double v = 0;
    assert_int_equal(nb_item(nan, &v), NB_OK);
    assert_true(isnan(v));
    nb_tensor *ls = nb_cross_entropy_ex(x, t, (nb_class_loss_opts){.label_smoothing = 0.1});
    expect_values(ls, ARR(1.1232536296842215), 1, 1e-12);
    nb_tensor *w = tf64(NB_SHAPE(3), ARR(1, 2, 0.5), false);
    nb_tensor *lp = nb_log_softmax(x, 1);
    nb_tensor *nw = nb_nll_loss_ex(lp, t, (nb_class_loss_opts){.weight = w});
    expect_values(nw, ARR(1.1480470181139737), 1, 1e-12);
    /* a target out of range that is not ignored */
    nb_tensor *bad = ti64(NB_SHAPE(4), (int64_t[]){0, 3, 1, 1});
    assert_null(nb_cross_entropy_ex(x, bad, (nb_class_loss_opts){0}));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    nb_release(bad);
    nb_release(nw);
    nb_release(lp);
    nb_release(w);
    nb_release(ls);
    nb_release(nan);
    nb_release(all);
    nb_release(ln);
    nb_release(l);
    nb_release(t);
    nb_release(x);
}

/* xb = torch.linspace(-2, 2, 6).reshape(2, 3); yb = [[1., 0, 1], [0, 1, 1]]; pw = [2., .5, 3.]
 * F.binary_cross_entropy_with_logits(xb, yb, pos_weight=pw);
 * (.., weight=torch.tensor([1., 2, 3]), pos_weight=pw, reduction='sum') */
static void bce_with_logits_takes_pos_weight(void **state)
{
    (void)state;
    double a[6];
    for (int i = 0; i < 6; i++)
        a[i] = -2 + 0.8 * i;
    nb_tensor *x = tf64(NB_SHAPE(2, 3), a, true);
    nb_tensor *y = tf64(NB_SHAPE(2, 3), ARR(1, 0, 1, 0, 1, 1), false);
    nb_tensor *pw = tf64(NB_SHAPE(3), ARR(2, 0.5, 3), false);
    nb_tensor *w = tf64(NB_SHAPE(3), ARR(1, 2, 3), false);
    nb_tensor *l = nb_binary_cross_entropy_with_logits_ex(x, y, NULL, pw, NB_REDUCTION_MEAN);
    nb_tensor *l2 = nb_binary_cross_entropy_with_logits_ex(x, y, w, pw, NB_REDUCTION_SUM);
    expect_values(l, ARR(1.4469374609702867), 1, 1e-12);
    expect_values(l2, ARR(15.316208047486317), 1, 1e-12);
    /* without pos_weight it is the plain loss */
    nb_tensor *l3 = nb_binary_cross_entropy_with_logits_ex(x, y, NULL, NULL, NB_REDUCTION_MEAN);
    nb_tensor *l4 = nb_binary_cross_entropy_with_logits(x, y, NB_REDUCTION_MEAN);
    double v3, v4;
    assert_int_equal(nb_item(l3, &v3), NB_OK);
    assert_int_equal(nb_item(l4, &v4), NB_OK);
    assert_true(fabs(v3 - v4) < 1e-12);
    nb_release(l4);
    nb_release(l3);
    nb_release(l2);
    nb_release(l);
    nb_release(w);
    nb_release(pw);
    nb_release(y);
    nb_release(x);
}

/* ------------------------------------------- on every device (cpu, opencl:0 where present) */

static const char *devices[2];
static int n_devices;

static nb_tensor *tdev(nb_shape sh, const double *v, bool grad, const char *dev)
{
    nb_tensor *t = nb_from_data(v, sh, (nb_opts){.dtype = NB_DTYPE_F64, .device = dev,
                                                 .requires_grad = grad});
    assert_non_null(t);
    return t;
}

static nb_tensor *idev(nb_shape sh, const int64_t *v, const char *dev)
{
    nb_tensor *t = nb_from_data(v, sh, (nb_opts){.dtype = NB_DTYPE_I64, .device = dev});
    assert_non_null(t);
    return t;
}

/* (N, C, d1, d2) input: class scores move to the last dim without reordering d1 and d2 (a
 * transpose of dims 1 and -1 would pair each target with the wrong position).
 * x = torch.linspace(-1, 2, 24).reshape(2, 3, 2, 2).requires_grad_()
 * t = torch.tensor([0, 1, 2, -100, 2, 2, 1, 0]).reshape(2, 2, 2)
 * F.nll_loss(x, t, reduction='none'); c = F.cross_entropy(x, t, reduction='sum');
 * c.backward(); x.grad */
static void class_losses_keep_the_order_of_spatial_dims(void **state)
{
    (void)state;
    double xv[24];
    for (int i = 0; i < 24; i++)
        xv[i] = -1 + 3.0 * i / 23;
    const int64_t tv[8] = {0, 1, 2, -100, 2, 2, 1, 0};
    for (int d = 0; d < n_devices; d++) {
        nb_tensor *x = tdev(NB_SHAPE(2, 3, 2, 2), xv, true, devices[d]);
        nb_tensor *t = idev(NB_SHAPE(2, 2, 2), tv, devices[d]);
        nb_tensor *nll = nb_nll_loss_ex(x, t, (nb_class_loss_opts){.reduction = NB_REDUCTION_NONE});
        expect_values(nll, ARR(1.0, 0.34782608695652173, -0.3043478260869565, 0.0,
                               -1.608695652173913, -1.7391304347826086, -1.3478260869565217,
                               -0.9565217391304348), 8, 1e-12);
        nb_tensor *ce = nb_cross_entropy_ex(x, t, (nb_class_loss_opts){.reduction = NB_REDUCTION_SUM});
        expect_values(ce, ARR(7.789841082133281), 1, 1e-12);
        NB_ASSERT_OK_(nb_backward(ce, NULL, (nb_backward_opts){0}));
        nb_tensor *g = nb_tensor_grad(x);
        const double a = 0.181027245353355, b = 0.305022845532244, c = 0.513949909114401;
        expect_values(g, ARR(a - 1, a, a, 0, b, b - 1, b, 0, c, c, c - 1, 0,
                             a, a, a, a - 1, b, b, b - 1, b, c - 1, c - 1, c, c), 24, 1e-12);
        nb_release(g);
        nb_release(ce);
        nb_release(nll);
        nb_release(t);
        nb_release(x);
    }
}

/* Every target ignored, mean reduction: the loss is NaN but the gradient is zero, not NaN.
 * x = torch.linspace(-2, 2, 12).reshape(3, 4).requires_grad_()
 * F.cross_entropy(x, torch.tensor([-100] * 3), label_smoothing=ls) -> nan; x.grad -> zeros
 * (ls 0 and 0.1); F.nll_loss(x, ..., weight=torch.ones(4)) the same. */
static void every_target_ignored_gives_nan_loss_and_zero_gradient(void **state)
{
    (void)state;
    double xv[12], zeros[12] = {0};
    for (int i = 0; i < 12; i++)
        xv[i] = -2 + 4.0 * i / 11;
    const int64_t tv[3] = {-100, -100, -100};
    for (int d = 0; d < n_devices; d++) {
        nb_tensor *w = tdev(NB_SHAPE(4), ARR(1, 1, 1, 1), false, devices[d]);
        for (int k = 0; k < 3; k++) {
            nb_tensor *x = tdev(NB_SHAPE(3, 4), xv, true, devices[d]);
            nb_tensor *t = idev(NB_SHAPE(3), tv, devices[d]);
            nb_class_loss_opts o = {.label_smoothing = k == 1 ? 0.1 : 0, .weight = k == 2 ? w : NULL};
            nb_tensor *l = k == 2 ? nb_nll_loss_ex(x, t, o) : nb_cross_entropy_ex(x, t, o);
            expect_values(l, ARR(NAN), 1, 0);
            NB_ASSERT_OK_(nb_backward(l, NULL, (nb_backward_opts){0}));
            nb_tensor *g = nb_tensor_grad(x);
            expect_values(g, zeros, 12, 0);
            nb_release(g);
            nb_release(l);
            nb_release(t);
            nb_release(x);
        }
        nb_release(w);
    }
}

static nb_tensor *sin_dev(nb_shape sh, double k, double scale, double offset, bool grad,
                          const char *dev)
{
    double v[64];
    int64_t n = 1;
    for (int32_t d = 0; d < sh.ndim; d++)
        n *= sh.dims[d];
    assert_true(n <= 64);
    for (int64_t i = 0; i < n; i++)
        v[i] = offset + scale * sin((double)i * 1.7 + k);
    return tdev(sh, v, grad, dev);
}

/* A floating point target of the input's shape holds class probabilities, with weight, label
 * smoothing and spatial dims; the mean divides by the positions, not by a weight sum.
 * SIN = lambda k, sc, off, s: (off + sc * torch.sin(torch.arange(math.prod(s)) * 1.7 + k)).reshape(s)
 * x = SIN(0, 2, 0, (2, 3, 2, 2)).requires_grad_(); t = SIN(1, 0.4, 0.5, (2, 3, 2, 2))
 * l = F.cross_entropy(x, t, weight=torch.tensor([1., 2, 3]), label_smoothing=0.25); l.backward()
 * F.cross_entropy(SIN(0, 2, 0, (3,)), SIN(1, 0.4, 0.5, (3,)), reduction='none')
 * F.cross_entropy(SIN(0, 2, 0, (3, 4)), SIN(1, 0.4, 0.5, (3, 4)), reduction='none') */
static void cross_entropy_takes_class_probabilities(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        nb_tensor *x = sin_dev(NB_SHAPE(2, 3, 2, 2), 0, 2, 0, true, dev);
        nb_tensor *t = sin_dev(NB_SHAPE(2, 3, 2, 2), 1, 0.4, 0.5, false, dev);
        nb_tensor *w = tdev(NB_SHAPE(3), ARR(1, 2, 3), false, dev);
        nb_tensor *l = nb_cross_entropy_ex(x, t, (nb_class_loss_opts){.weight = w,
                                                                      .label_smoothing = 0.25});
        expect_values(l, ARR(3.15437277924811), 1, 1e-12);
        NB_ASSERT_OK_(nb_backward(l, NULL, (nb_backward_opts){0}));
        nb_tensor *g = nb_tensor_grad(x);
        expect_values(g, ARR(-0.029369255991414826, 0.07355126603301891, 0.0691166588875068,
                             0.008390989191223063, -0.02968958736966952, -0.009144796509521838,
                             -0.0038392910265494062, -0.03025007060398517, 0.05905884336108435,
                             -0.064406469523497, -0.0652773678609574, 0.021859081412762108,
                             0.06981723047323639, 0.06494230229601262, 0.019220155971687705,
                             -0.01630676327366913, -0.0038468427714648703, -0.00554296634237279,
                             -0.023740722894869056, -0.007977490691133982, -0.0659703877017715,
                             -0.05939933595363984, 0.004520566923181399, 0.02428425396480307),
                      24, 1e-10);
        nb_tensor *x1 = sin_dev(NB_SHAPE(3), 0, 2, 0, false, dev);
        nb_tensor *t1 = sin_dev(NB_SHAPE(3), 1, 0.4, 0.5, false, dev);
        nb_tensor *l1 = nb_cross_entropy_ex(x1, t1, (nb_class_loss_opts){.reduction = NB_REDUCTION_NONE});
        expect_values(l1, ARR(2.280678879553397), 1, 1e-12);
        assert_int_equal(nb_tensor_ndim(l1), 0);
        nb_tensor *x2 = sin_dev(NB_SHAPE(3, 4), 0, 2, 0, false, dev);
        nb_tensor *t2 = sin_dev(NB_SHAPE(3, 4), 1, 0.4, 0.5, false, dev);
        nb_tensor *l2 = nb_cross_entropy_ex(x2, t2, (nb_class_loss_opts){.reduction = NB_REDUCTION_NONE});
        expect_values(l2, ARR(4.039762061276036, 3.7194534076277375, 3.5409279156975315), 3, 1e-12);
        /* the target must have the input's shape; nll_loss takes class indices only */
        assert_null(nb_cross_entropy_ex(x2, t1, (nb_class_loss_opts){0}));
        assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
        assert_non_null(strstr(nb_last_error(), "[3, 4]"));
        nb_clear_error();
        assert_null(nb_nll_loss_ex(x2, t2, (nb_class_loss_opts){0}));
        assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
        nb_clear_error();
        nb_release(l2);
        nb_release(t2);
        nb_release(x2);
        nb_release(l1);
        nb_release(t1);
        nb_release(x1);
        nb_release(g);
        nb_release(l);
        nb_release(w);
        nb_release(t);
        nb_release(x);
    }
}

/* smooth_l1, huber and kl_div broadcast input against target as PyTorch (and mse_loss) do:
 * x = torch.linspace(-1.5, 1.5, 6).reshape(2, 3).requires_grad_(); t = torch.tensor([0.5, -1, 0.3])
 * F.smooth_l1_loss(x, t, beta=0.7, reduction='none'); h = F.huber_loss(t, x, delta=0.5), d h/dx
 * lp = torch.linspace(-3, -0.2, 3).requires_grad_(); tp = [[0, 0.2, 0.8], [0.5, 0.5, 0]]
 * k = F.kl_div(lp, tp, reduction='batchmean') (divides by input.size(0) = 3), d k/d lp */
static void regression_losses_broadcast_like_pytorch(void **state)
{
    (void)state;
    for (int d = 0; d < n_devices; d++) {
        const char *dev = devices[d];
        double xv[6];
        for (int i = 0; i < 6; i++)
            xv[i] = -1.5 + 0.6 * i;
        nb_tensor *x = tdev(NB_SHAPE(2, 3), xv, true, dev);
        nb_tensor *t = tdev(NB_SHAPE(3), ARR(0.5, -1, 0.3), false, dev);
        nb_tensor *l = nb_smooth_l1_loss(x, t, NB_REDUCTION_NONE, 0.7);
        expect_values(l, ARR(1.65, 0.00714285714285714, 0.25714285714285723, 0.02857142857142856,
                             1.5499999999999998, 0.85), 6, 1e-12);
        nb_tensor *h = nb_huber_loss(t, x, NB_REDUCTION_MEAN, 0.5);
        expect_values(h, ARR(0.39583333333333326), 1, 1e-12);
        nb_tensor *g = grad_of_sum(h, x);
        expect_values(g, ARR(-0.08333333333333333, 0.016666666666666663, -0.08333333333333333,
                             -0.033333333333333326, 0.08333333333333333, 0.08333333333333333),
                      6, 1e-12);
        nb_tensor *lp = tdev(NB_SHAPE(3), ARR(-3, -1.6, -0.2), true, dev);
        nb_tensor *tp = tdev(NB_SHAPE(2, 3), ARR(0, 0.2, 0.8, 0.5, 0.5, 0), false, dev);
        nb_tensor *k = nb_kl_div(lp, tp, NB_REDUCTION_BATCHMEAN, false);
        expect_values(k, ARR(0.5288167986339556), 1, 1e-12);
        nb_tensor *gk = grad_of_sum(k, lp);
        expect_values(gk, ARR(-0.16666666666666666, -0.23333333333333334, -0.26666666666666666),
                      3, 1e-12);
        /* shapes that do not broadcast are refused, naming both */
        nb_tensor *t2 = tdev(NB_SHAPE(2), ARR(1, 1), false, dev);
        assert_null(nb_smooth_l1_loss(x, t2, NB_REDUCTION_MEAN, 1));
        assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
        assert_non_null(strstr(nb_last_error(), "[2, 3] and target [2]"));
        nb_clear_error();
        nb_release(t2);
        nb_release(gk);
        nb_release(k);
        nb_release(tp);
        nb_release(lp);
        nb_release(g);
        nb_release(h);
        nb_release(l);
        nb_release(t);
        nb_release(x);
    }
}

int main(void)
{
    if (nb_init() != NB_OK)
        return 1;
    devices[n_devices++] = "cpu";
    if (nb_device_count("opencl") > 0)
        devices[n_devices++] = "opencl:0";
    const struct CMUnitTest tests[] = {
        NB_TEST(smooth_l1_and_huber_match_pytorch),
        NB_TEST(kl_div_matches_pytorch),
        NB_TEST(cross_entropy_takes_weight_smoothing_ignore_and_spatial_dims),
        NB_TEST(ignore_index_and_nll_weight_match_pytorch),
        NB_TEST(bce_with_logits_takes_pos_weight),
        NB_TEST(class_losses_keep_the_order_of_spatial_dims),
        NB_TEST(every_target_ignored_gives_nan_loss_and_zero_gradient),
        NB_TEST(cross_entropy_takes_class_probabilities),
        NB_TEST(regression_losses_broadcast_like_pytorch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
