/* loss_extra.c - the losses and loss options PyTorch users set beyond loss.c's:
 * smooth_l1_loss, huber_loss, kl_div, cross_entropy / nll_loss with weight, ignore_index,
 * label_smoothing, (N, C, d...) inputs and class-probability targets, and
 * binary_cross_entropy_with_logits's pos_weight. */
#include "nn_common.h"

static bool check_reduction(const char *op, nb_reduction r, bool batchmean)
{
    if (r == NB_REDUCTION_MEAN || r == NB_REDUCTION_SUM || r == NB_REDUCTION_NONE ||
        (batchmean && r == NB_REDUCTION_BATCHMEAN))
        return true;
    nbi_error(NB_INVALID_ARGUMENT, "%s: reduction %d is not one of NB_REDUCTION_MEAN (0), "
              "NB_REDUCTION_SUM (1), NB_REDUCTION_NONE (2)%s", op, (int)r,
              batchmean ? ", NB_REDUCTION_BATCHMEAN (3)" : "");
    return false;
}

/* Consumes l. */
static nb_tensor *reduce(nb_tensor *l, nb_reduction r)
{
    if (!l || r == NB_REDUCTION_NONE)
        return l;
    nb_tensor *out = r == NB_REDUCTION_SUM ? nb_sum(l, NULL, 0, false) : nb_mean(l, NULL, 0, false);
    nb_release(l);
    return out;
}

/* PyTorch's smooth_l1, huber and kl_div broadcast input against target (smooth_l1 and huber
 * with a warning) as mse_loss does; binary_cross_entropy_with_logits wants the same shape. */
static bool check_pair(const char *op, const nb_tensor *input, const nb_tensor *target,
                       bool broadcast)
{
    if (nnc_null(op, "input", input) || nnc_null(op, "target", target) ||
        !nnc_float(op, "input", input) || !nnc_like(op, "target", target, input))
        return false;
    int32_t ni = nb_tensor_ndim(input), nt = nb_tensor_ndim(target);
    bool ok = ni == nt && !memcmp(nbi_dims(input), nbi_dims(target), (size_t)ni * sizeof(int64_t));
    if (!ok && broadcast) {
        ok = true;
        for (int32_t k = 1; ok && k <= ni && k <= nt; k++) {
            int64_t a = nbi_dims(input)[ni - k], b = nbi_dims(target)[nt - k];
            ok = a == b || a == 1 || b == 1;
        }
    }
    if (!ok) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: input %s and target %s must have %s", op,
                  NBI_SHAPE_STR(input), NBI_SHAPE_STR(target),
                  broadcast ? "broadcastable shapes" : "the same shape");
        return false;
    }
    return true;
}

/* |d| < delta ? 0.5 d^2 * qs : delta * (|d| - 0.5 delta) * ls: smooth_l1 is huber / beta. */
static nb_tensor *huber_like(const nb_tensor *input, const nb_tensor *target, double delta,
                             double scale)
{
    nnc_tmps s = {0};
    nb_tensor *d = nnc_k(&s, nb_sub(input, target));
    nb_tensor *ad = nnc_k(&s, nb_abs(d));
    nb_tensor *small = nnc_k(&s, nb_lt_scalar(ad, delta));
    nb_tensor *sq = d ? nnc_k(&s, nb_mul(d, d)) : NULL;
    nb_tensor *q = nnc_k(&s, nb_mul_scalar(sq, 0.5 * scale));
    nb_tensor *l0 = nnc_k(&s, nb_add_scalar(ad, -0.5 * delta));
    nb_tensor *l = nnc_k(&s, nb_mul_scalar(l0, delta * scale));
    return nnc_ret(&s, small && q && l ? nnc_k(&s, nb_where(small, q, l)) : NULL);
}

static nb_tensor *smooth_l1_impl(const nb_tensor *input, const nb_tensor *target,
                                 nb_reduction r, double beta)
{
    const char *op = "smooth_l1_loss";
    if (!check_pair(op, input, target, true) || !check_reduction(op, r, false))
        return NULL;
    if (!(beta >= 0)) {
        nbi_error(NB_INVALID_ARGUMENT, "smooth_l1_loss: beta=%g must not be negative", beta);
        return NULL;
    }
    if (beta == 0) { /* the L1 loss */
        nb_tensor *d = nb_sub(input, target);
        nb_tensor *a = d ? nb_abs(d) : NULL;
        nb_release(d);
        return reduce(a, r);
    }
    return reduce(huber_like(input, target, beta, 1.0 / beta), r);
}

static nb_tensor *huber_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                             double delta)
{
    const char *op = "huber_loss";
    if (!check_pair(op, input, target, true) || !check_reduction(op, r, false))
        return NULL;
    if (!(delta > 0)) {
        nbi_error(NB_INVALID_ARGUMENT, "huber_loss: delta=%g must be positive", delta);
        return NULL;
    }
    return reduce(huber_like(input, target, delta, 1.0), r);
}

/* target * (log(target) - input), 0 where target is 0 (xlogy); exp(t) * (t - input) for
 * log targets. */
static nb_tensor *kl_div_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                              bool log_target)
{
    const char *op = "kl_div";
    if (!check_pair(op, input, target, true) || !check_reduction(op, r, true))
        return NULL;
    nnc_tmps s = {0};
    nb_tensor *l = NULL;
    if (log_target) {
        nb_tensor *e = nnc_k(&s, nb_exp(target));
        nb_tensor *d = nnc_k(&s, nb_sub(target, input));
        l = e && d ? nnc_k(&s, nb_mul(e, d)) : NULL;
    } else {
        nb_tensor *pos = nnc_k(&s, nb_gt_scalar(target, 0));
        nb_tensor *one = nnc_k(&s, nb_ones(NB_SHAPE_SCALAR, nnc_opts(target)));
        nb_tensor *safe = pos && one ? nnc_k(&s, nb_where(pos, target, one)) : NULL;
        nb_tensor *lg = nnc_k(&s, nb_log(safe));
        nb_tensor *xl = lg ? nnc_k(&s, nb_mul(target, lg)) : NULL;
        nb_tensor *zero = nnc_k(&s, nb_zeros(NB_SHAPE_SCALAR, nnc_opts(target)));
        nb_tensor *xlogy = xl && zero ? nnc_k(&s, nb_where(pos, xl, zero)) : NULL;
        nb_tensor *tx = nnc_k(&s, nb_mul(target, input));
        l = xlogy && tx ? nnc_k(&s, nb_sub(xlogy, tx)) : NULL;
    }
    nb_tensor *out = NULL;
    if (l && r == NB_REDUCTION_BATCHMEAN) {
        nb_tensor *sum = nnc_k(&s, nb_sum(l, NULL, 0, false));
        double n = nb_tensor_ndim(input) ? (double)nbi_dims(input)[0] : 1.0;
        out = sum ? nb_mul_scalar(sum, 1.0 / n) : NULL;
    } else if (l) {
        out = reduce(nb_retain(l), r);
    }
    nnc_free(&s);
    return out;
}

/* ======================= cross_entropy / nll_loss with options ======================= */

/* input (N, C, d...) as (M, C) rows and target (N, d...) as (M); *dshape gets the target's
 * shape (for reduction none). (C) with a 0-d target is one row. */
static bool class_rows(const char *op, const nb_tensor *input, const nb_tensor *target,
                       nnc_tmps *s, nb_tensor **x2, nb_tensor **t1, nb_shape *tshape)
{
    if (nnc_null(op, "input", input) || nnc_null(op, "target", target) ||
        !nnc_float(op, "input", input) || !nnc_same_device(op, "target", target, input))
        return false;
    if (nb_tensor_dtype(target) != NB_DTYPE_I64) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: expected int64 class indices as target%s, got %s",
                  op, strcmp(op, "cross_entropy") ? "" : " (or class probabilities of the "
                  "input's floating point dtype)", nb_dtype_name(nb_tensor_dtype(target)));
        return false;
    }
    bool ok = nb_tensor_ndim(input) >= 1 && nb_tensor_ndim(target) == nb_tensor_ndim(input) - 1;
    for (int32_t d = 0; ok && nb_tensor_ndim(input) >= 2 && d < nb_tensor_ndim(target); d++)
        ok = nbi_dims(target)[d] == nbi_dims(input)[d ? d + 1 : 0];
    if (!ok) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: input %s and target %s do not fit: expected input (N, "
                  "C, d1, ...) with target (N, d1, ...), or input (C) with a 0-d target", op,
                  NBI_SHAPE_STR(input), NBI_SHAPE_STR(target));
        return false;
    }
    *tshape = nnc_shape(target);
    int64_t C = nb_tensor_ndim(input) == 1 ? nbi_dims(input)[0] : nbi_dims(input)[1];
    const nb_tensor *xm = input;
    if (nb_tensor_ndim(input) > 2) {
        /* movedim(1, -1): a transpose of 1 and -1 would also reverse d1 and dk */
        int32_t perm[NB_MAX_DIMS], nd = nb_tensor_ndim(input);
        for (int32_t d = 0; d < nd; d++)
            perm[d] = d == 0 ? 0 : d == nd - 1 ? 1 : d + 1;
        xm = nnc_k(s, nb_permute(input, perm, nd)); /* (N, d..., C) */
    }
    *x2 = xm ? nnc_k(s, nb_reshape(xm, NB_SHAPE(-1, C))) : NULL;
    *t1 = nnc_k(s, nb_reshape(target, NB_SHAPE(-1)));
    return *x2 && *t1;
}

/* Out-of-range targets that are not ignored are an error, as in PyTorch; checked on the host,
 * which every device can copy to. */
static bool check_targets(const char *op, const nb_tensor *t1, int64_t ignore, int64_t C)
{
    int64_t n = nb_tensor_numel(t1);
    if (n == 0)
        return true;
    double *v = nbi_malloc((size_t)n * sizeof *v);
    if (!v) {
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory for %lld targets", op, (long long)n);
        return false;
    }
    bool ok = nbi_read_f64(t1, v) == NB_OK;
    for (int64_t k = 0; ok && k < n; k++)
        if (v[k] != (double)ignore && (v[k] < 0 || v[k] >= (double)C)) {
            nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: target %lld is out of bounds for %lld classes",
                      op, (long long)v[k], (long long)C);
            ok = false;
        }
    nbi_free(v);
    return ok;
}

/* cross_entropy with class probabilities as target (a floating point tensor of the input's
 * shape): -sum_c w_c y_c log_softmax(x)_c at each position, with y smoothed to
 * y (1 - ls) + ls / C. The mean divides by the positions (N d1 ...), not by a weight sum, and
 * ignore_index does not apply, as in PyTorch. */
static nb_tensor *prob_class_loss(const char *op, const nb_tensor *input, const nb_tensor *target,
                                  nb_class_loss_opts o)
{
    if (!nnc_like(op, "target (class probabilities)", target, input))
        return NULL;
    int32_t nd = nb_tensor_ndim(input);
    if (nd < 1 || nb_tensor_ndim(target) != nd ||
        memcmp(nbi_dims(input), nbi_dims(target), (size_t)nd * sizeof(int64_t))) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: a floating point target holds class probabilities "
                  "and must have the input's shape %s, got %s", op, NBI_SHAPE_STR(input),
                  NBI_SHAPE_STR(target));
        return NULL;
    }
    int32_t cdim = nd == 1 ? 0 : 1;
    int64_t C = nbi_dims(input)[cdim];
    const nb_tensor *w = o.weight;
    if (w && !nnc_like(op, "weight", w, input))
        return NULL;
    if (w && (nb_tensor_ndim(w) != 1 || nbi_dims(w)[0] != C)) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: weight %s should have one value per class: expected "
                  "[%lld]", op, NBI_SHAPE_STR(w), (long long)C);
        return NULL;
    }
    nnc_tmps s = {0};
    nb_tensor *lp = nnc_k(&s, nb_log_softmax(input, cdim));
    const nb_tensor *y = target;
    if (o.label_smoothing > 0) {
        nb_tensor *ys = nnc_k(&s, nb_mul_scalar(target, 1 - o.label_smoothing));
        y = ys ? nnc_k(&s, nb_add_scalar(ys, o.label_smoothing / (double)C)) : NULL;
    }
    nb_tensor *prod = lp && y ? nnc_k(&s, nb_mul(lp, y)) : NULL;
    if (prod && w) {
        /* (C) -> (C, 1, ..., 1) so that it lines up with the class dim */
        nb_shape ws = {.ndim = nd - cdim};
        ws.dims[0] = C;
        for (int32_t d = 1; d < ws.ndim; d++)
            ws.dims[d] = 1;
        nb_tensor *wv = nnc_k(&s, nb_reshape(w, ws));
        prod = wv ? nnc_k(&s, nb_mul(prod, wv)) : NULL;
    }
    nb_tensor *sum = prod ? nnc_k(&s, nb_sum(prod, &cdim, 1, false)) : NULL;
    nb_tensor *l = sum ? nb_neg(sum) : NULL;
    nnc_free(&s);
    return reduce(l, o.reduction);
}

static nb_tensor *class_loss(const char *op, const nb_tensor *input, const nb_tensor *target,
                             nb_class_loss_opts o, bool from_logits)
{
    if (!check_reduction(op, o.reduction, false))
        return NULL;
    if (!(o.label_smoothing >= 0 && o.label_smoothing <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: label_smoothing must be between 0.0 and 1.0, got %g",
                  op, o.label_smoothing);
        return NULL;
    }
    if (from_logits && target && nb_dtype_is_float(nb_tensor_dtype(target)) && input &&
        nnc_float(op, "input", input))
        return prob_class_loss(op, input, target, o);
    nnc_tmps s = {0};
    nb_tensor *x2, *t1;
    nb_shape tshape;
    if (!class_rows(op, input, target, &s, &x2, &t1, &tshape))
        return nnc_ret(&s, NULL);
    int64_t C = nbi_dims(x2)[1];
    const nb_tensor *w = o.weight;
    if (w && !nnc_like(op, "weight", w, input))
        return nnc_ret(&s, NULL);
    if (w && (nb_tensor_ndim(w) != 1 || nbi_dims(w)[0] != C)) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: weight %s should have one value per class: expected "
                  "[%lld]", op, NBI_SHAPE_STR(w), (long long)C);
        return nnc_ret(&s, NULL);
    }
    int64_t ignore = o.ignore_index_set ? o.ignore_index : -100;
    nb_tensor *valid = nnc_k(&s, nb_ne_scalar(t1, (double)ignore)); /* (M) bool */
    if (!valid || !check_targets(op, t1, ignore, C))
        return nnc_ret(&s, NULL);
    nb_tensor *zi = nnc_k(&s, nb_zeros(NB_SHAPE_SCALAR, nnc_opts(t1)));
    nb_tensor *ts = zi ? nnc_k(&s, nb_where(valid, t1, zi)) : NULL; /* ignored -> class 0 */
    nb_tensor *logp = from_logits ? nnc_k(&s, nb_log_softmax(x2, 1)) : x2;
    nb_tensor *tcol = nnc_k(&s, nb_unsqueeze(ts, 1));
    nb_tensor *pick = logp && tcol ? nnc_k(&s, nb_gather(logp, 1, tcol)) : NULL;
    nb_tensor *picked = nnc_k(&s, nb_squeeze(pick, 1)); /* (M) */
    nb_tensor *vf = nnc_k(&s, nb_to_dtype(valid, nb_tensor_dtype(input)));
    nb_tensor *wt = vf; /* the weight of each row: w[target], 0 when ignored */
    if (w && ts && vf) {
        nb_tensor *wsel = nnc_k(&s, nb_index_select(w, 0, ts));
        wt = wsel ? nnc_k(&s, nb_mul(wsel, vf)) : NULL;
    }
    nb_tensor *nll_w = picked && wt ? nnc_k(&s, nb_mul(picked, wt)) : NULL;
    nb_tensor *nll = nnc_k(&s, nb_neg(nll_w)); /* (M) */
    nb_tensor *smooth = NULL;
    double eps = from_logits ? o.label_smoothing : 0;
    if (nll && eps > 0) {
        /* -(sum_c logp * w_c), zero on ignored rows; mean divides by the same weight sum */
        nb_tensor *lw = logp;
        if (w) {
            nb_tensor *w2 = nnc_k(&s, nb_unsqueeze(w, 0));
            lw = w2 ? nnc_k(&s, nb_mul(logp, w2)) : NULL;
        }
        nb_tensor *ls = nnc_k(&s, nb_sum(lw, (int32_t[]){1}, 1, false));
        nb_tensor *lm = ls ? nnc_k(&s, nb_mul(ls, vf)) : NULL;
        smooth = nnc_k(&s, nb_neg(lm));
    }
    nb_tensor *out = NULL;
    if (nll && (eps == 0 || smooth)) {
        nb_tensor *a, *b = NULL;
        if (o.reduction == NB_REDUCTION_NONE) {
            a = nnc_k(&s, nb_reshape(nll, tshape));
            b = smooth ? nnc_k(&s, nb_reshape(smooth, tshape)) : NULL;
        } else {
            a = nnc_k(&s, nb_sum(nll, NULL, 0, false));
            b = smooth ? nnc_k(&s, nb_sum(smooth, NULL, 0, false)) : NULL;
            if (o.reduction == NB_REDUCTION_MEAN) {
                /* Every target ignored: PyTorch returns 0 / 0 = NaN but a zero gradient,
                 * so the loss is a * (1 / den or 0) plus a constant NaN, not a / den (whose
                 * gradient 1 / 0 times the zero rows would be NaN). */
                nb_tensor *den = nnc_k(&s, nb_sum(wt, NULL, 0, false));
                nb_tensor *none = den ? nnc_k(&s, nb_eq_scalar(den, 0)) : NULL;
                nb_tensor *inv = den ? nnc_k(&s, nb_rdiv_scalar(den, 1)) : NULL;
                nb_tensor *z = nnc_k(&s, nb_zeros(NB_SHAPE_SCALAR, nnc_opts(input)));
                nb_tensor *nan = nnc_k(&s, nb_full(NB_SHAPE_SCALAR, NAN, nnc_opts(input)));
                nb_tensor *scale = none && inv && z ? nnc_k(&s, nb_where(none, z, inv)) : NULL;
                nb_tensor *bad = none && nan && z ? nnc_k(&s, nb_where(none, nan, z)) : NULL;
                nb_tensor *as = a && scale ? nnc_k(&s, nb_mul(a, scale)) : NULL;
                a = as && bad ? nnc_k(&s, nb_add(as, bad)) : NULL;
                if (b) {
                    nb_tensor *bs = scale ? nnc_k(&s, nb_mul(b, scale)) : NULL;
                    b = bs && bad ? nnc_k(&s, nb_add(bs, bad)) : NULL;
                }
            }
        }
        if (a && eps > 0 && b) {
            nb_tensor *a1 = nnc_k(&s, nb_mul_scalar(a, 1 - eps));
            nb_tensor *b1 = nnc_k(&s, nb_mul_scalar(b, eps / (double)C));
            out = a1 && b1 ? nb_add(a1, b1) : NULL;
        } else if (a && eps == 0) {
            out = nb_retain(a);
        }
    }
    nnc_free(&s);
    return out;
}

/* pos_weight p: (1 - y) x - (1 + (p - 1) y) log_sigmoid(x), times weight. */
static nb_tensor *bcel_impl(const nb_tensor *input, const nb_tensor *target,
                            const nb_tensor *weight, const nb_tensor *pos_weight, nb_reduction r)
{
    const char *op = "binary_cross_entropy_with_logits";
    if (!check_pair(op, input, target, false) || !check_reduction(op, r, false))
        return NULL;
    if ((weight && !nnc_like(op, "weight", weight, input)) ||
        (pos_weight && !nnc_like(op, "pos_weight", pos_weight, input)))
        return NULL;
    nnc_tmps s = {0};
    nb_tensor *ls = nnc_k(&s, nb_log_sigmoid(input));
    nb_tensor *lw = NULL;
    if (pos_weight) {
        nb_tensor *pm = nnc_k(&s, nb_add_scalar(pos_weight, -1));
        nb_tensor *py = pm ? nnc_k(&s, nb_mul(pm, target)) : NULL;
        lw = nnc_k(&s, nb_add_scalar(py, 1));
    } else {
        lw = nnc_k(&s, nb_ones(NB_SHAPE_SCALAR, nnc_opts(input)));
    }
    nb_tensor *t2 = ls && lw ? nnc_k(&s, nb_mul(lw, ls)) : NULL;
    nb_tensor *omy = nnc_k(&s, nb_rsub_scalar(target, 1));
    nb_tensor *t1 = omy ? nnc_k(&s, nb_mul(omy, input)) : NULL;
    nb_tensor *l = t1 && t2 ? nnc_k(&s, nb_sub(t1, t2)) : NULL;
    if (l && weight)
        l = nnc_k(&s, nb_mul(l, weight));
    if (l && (nb_tensor_ndim(l) != nb_tensor_ndim(input) ||
              memcmp(nbi_dims(l), nbi_dims(input),
                     (size_t)nb_tensor_ndim(input) * sizeof(int64_t)))) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: weight or pos_weight broadcast the loss to %s; it must "
                  "keep the input's shape %s", op, NBI_SHAPE_STR(l), NBI_SHAPE_STR(input));
        l = NULL;
    }
    nb_tensor *out = l ? reduce(nb_retain(l), r) : NULL;
    nnc_free(&s);
    return out;
}

nb_tensor *nb_smooth_l1_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                             double beta)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(smooth_l1_impl(input, target, r, beta));
}

nb_tensor *nb_huber_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                         double delta)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(huber_impl(input, target, r, delta));
}

nb_tensor *nb_kl_div(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                     bool log_target)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(kl_div_impl(input, target, r, log_target));
}

nb_tensor *nb_cross_entropy_ex(const nb_tensor *input, const nb_tensor *target,
                               nb_class_loss_opts opts)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target, &opts.weight);
    return NBI_API(class_loss("cross_entropy", input, target, opts, true));
}

nb_tensor *nb_nll_loss_ex(const nb_tensor *input, const nb_tensor *target,
                          nb_class_loss_opts opts)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target, &opts.weight);
    return NBI_API(class_loss("nll_loss", input, target, opts, false));
}

nb_tensor *nb_binary_cross_entropy_with_logits_ex(const nb_tensor *input, const nb_tensor *target,
                                                  const nb_tensor *weight,
                                                  const nb_tensor *pos_weight, nb_reduction r)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target, &weight, &pos_weight);
    return NBI_API(bcel_impl(input, target, weight, pos_weight, r));
}
