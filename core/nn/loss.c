/* loss.c - the losses of torch.nn.functional: mse_loss, binary_cross_entropy (with logits),
 * nll_loss and cross_entropy, each one autograd node with PyTorch's grad_fn name; the options
 * beyond these (weights, ignore_index, label smoothing, other losses) are in loss_extra.c. */
#include "functional.h"

/* ================================== losses ================================== */

/* Reduces an elementwise loss l (a reference the caller passes on). */
static nb_tensor *reduce_loss(nb_tensor *l, nb_reduction r)
{
    if (!l || r == NB_REDUCTION_NONE)
        return l;
    nb_tensor *out = r == NB_REDUCTION_MEAN ? nb_mean(l, NULL, 0, false)
                                            : nb_sum(l, NULL, 0, false);
    nb_release(l);
    return out;
}

/* The gradient of a reduced elementwise loss: g (0-d, or l's shape for NONE) times d l / d v. */
static nb_tensor *loss_grad(const nb_tensor *g, const nb_tensor *d, nb_reduction r, int64_t n)
{
    nb_tensor *p = d ? nb_mul(d, g) : NULL;
    if (p && r == NB_REDUCTION_MEAN) {
        nb_tensor *q = nb_div_scalar(p, (double)n);
        nb_release(p);
        p = q;
    }
    return p;
}

/* ctx->i: reduction, numel; saved: 0 = input, 1 = target */
static bool loss_check(const char *op, const nb_tensor *input, const nb_tensor *target,
                       nb_reduction r, bool same)
{
    if (nnc_null(op, "input", input) || nnc_null(op, "target", target) ||
        !nnc_float(op, "input", input) || !nnc_like(op, "target", target, input) ||
        !check_reduction(op, r))
        return false;
    if (same && !same_shape(input, target)) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: target size %s must be the same as input size %s", op,
                  NBI_SHAPE_STR(target), NBI_SHAPE_STR(input));
        return false;
    }
    return true;
}

static nb_tensor *loss_apply(const nb_function *fn, const char *op, const nb_tensor *input,
                             const nb_tensor *target, nb_reduction r)
{
    fctx *c = fctx_new(op);
    if (c)
        c->i[0] = r;
    return apply(fn, c, (nb_tensor *[]){(nb_tensor *)input, (nb_tensor *)target}, 2);
}

static void loss_save(fctx *c, nb_tensor *const *in, const nb_tensor *out)
{
    if (out && c->record) {
        save(c, 0, in[0]);
        save(c, 1, in[1]);
    }
}

/* mse: (x - t)^2; broadcasting like PyTorch (which warns when the sizes differ) */
static nb_tensor *mse_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nb_tensor *d = nb_sub(in[0], in[1]);
    nb_tensor *sq = d ? nb_mul(d, d) : NULL;
    nb_release(d);
    if (sq)
        c->i[1] = numel_of(sq);
    nb_tensor *out = reduce_loss(sq, (nb_reduction)c->i[0]);
    loss_save(c, in, out);
    return out;
}

static nb_status mse_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, t);
    nnc_tmps s = {0};
    nb_tensor *d = nnc_k(&s, nb_mul_scalar(nnc_k(&s, nb_sub(x, t)), 2.0));
    nb_tensor *gx = nnc_k(&s, loss_grad(g, d, (nb_reduction)c->i[0], c->i[1]));
    if (c->need[0])
        gi[0] = nb_retain(gx);
    if (c->need[1])
        gi[1] = gx ? nb_neg(gx) : NULL;
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function mse_fn = {"MseLossBackward0", mse_forward, mse_backward, fctx_free};

/* bce: -(t log x + (1 - t) log(1 - x)), each log clamped at -100 as in PyTorch */
static nb_tensor *bce_logs(const nb_tensor *x, nb_tensor **l1x)
{
    nb_tensor *lx = nb_log(x), *lx_c = lx ? nb_clamp(lx, -100, NAN) : NULL;
    nb_tensor *om = nb_rsub_scalar(x, 1.0), *l1 = om ? nb_log(om) : NULL;
    *l1x = l1 ? nb_clamp(l1, -100, NAN) : NULL;
    nb_release(lx);
    nb_release(om);
    nb_release(l1);
    if (!*l1x) {
        nb_release(lx_c);
        return NULL;
    }
    return lx_c;
}

static nb_tensor *bce_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nnc_tmps s = {0};
    nb_tensor *l1x = NULL, *lx = nnc_k(&s, bce_logs(in[0], &l1x));
    nnc_k(&s, l1x);
    /* (t - 1) log(1 - x) - t log x */
    nb_tensor *a = lx ? nnc_k(&s, nb_mul(in[1], lx)) : NULL;
    nb_tensor *b = l1x ? nnc_k(&s, nb_mul(nnc_k(&s, nb_add_scalar(in[1], -1.0)), l1x)) : NULL;
    nb_tensor *l = a && b ? nb_sub(b, a) : NULL;
    nnc_free(&s);
    c->i[1] = numel_of(in[0]);
    nb_tensor *out = reduce_loss(l, (nb_reduction)c->i[0]);
    loss_save(c, in, out);
    return out;
}

/* d/dx = (x - t) / max(x (1 - x), 1e-12);  d/dt = log(1 - x) - log x (clamped) */
static nb_status bce_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, t);
    nb_reduction r = (nb_reduction)c->i[0];
    nnc_tmps s = {0};
    if (c->need[0]) {
        nb_tensor *den = nnc_k(&s, nb_clamp(nnc_k(&s, nb_mul(x, nnc_k(&s, nb_rsub_scalar(x, 1.0)))),
                                         1e-12, NAN));
        nb_tensor *d = nnc_k(&s, nb_div(nnc_k(&s, nb_sub(x, t)), den));
        gi[0] = loss_grad(g, d, r, c->i[1]);
    }
    if (c->need[1]) {
        nb_tensor *l1x = NULL, *lx = nnc_k(&s, bce_logs(x, &l1x));
        nnc_k(&s, l1x);
        nb_tensor *d = lx ? nnc_k(&s, nb_sub(l1x, lx)) : NULL;
        gi[1] = loss_grad(g, d, r, c->i[1]);
    }
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function bce_fn = {"BinaryCrossEntropyBackward0", bce_forward, bce_backward,
                                   fctx_free};

/* with logits: max(x, 0) - x t + log(1 + exp(-|x|)), stable for large |x| */
static nb_tensor *bcel_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0], *t = in[1];
    nnc_tmps s = {0};
    nb_tensor *e = nnc_k(&s, nb_exp(nnc_k(&s, nb_neg(nnc_k(&s, nb_abs(x))))));
    nb_tensor *sp = nnc_k(&s, nb_log(nnc_k(&s, nb_add_scalar(e, 1.0))));
    nb_tensor *d = nnc_k(&s, nb_sub(nnc_k(&s, nb_relu(x)), nnc_k(&s, nb_mul(x, t))));
    nb_tensor *l = nnc_k(&s, nb_add(d, sp));
    c->i[1] = numel_of(x);
    nb_tensor *out = reduce_loss(nnc_ret(&s, l), (nb_reduction)c->i[0]);
    loss_save(c, in, out);
    return out;
}

/* d/dx = sigmoid(x) - t;  d/dt = -x */
static nb_status bcel_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, t);
    nb_reduction r = (nb_reduction)c->i[0];
    nnc_tmps s = {0};
    if (c->need[0])
        gi[0] = loss_grad(g, nnc_k(&s, nb_sub(nnc_k(&s, nb_sigmoid(x)), t)), r, c->i[1]);
    if (c->need[1])
        gi[1] = loss_grad(g, nnc_k(&s, nb_neg(x)), r, c->i[1]);
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function bcel_fn = {"BinaryCrossEntropyWithLogitsBackward0", bcel_forward,
                                    bcel_backward, fctx_free};

static nb_tensor *mse_loss_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    const char *op = "mse_loss";
    if (!loss_check(op, input, target, r, false))
        return NULL;
    int32_t ni = nb_tensor_ndim(input), nt = nb_tensor_ndim(target);
    int32_t nd = ni > nt ? ni : nt;
    for (int32_t d = 0; d < nd; d++) {
        int32_t da = d - (nd - nb_tensor_ndim(input)), db = d - (nd - nb_tensor_ndim(target));
        int64_t p = da >= 0 ? nbi_dims(input)[da] : 1, q = db >= 0 ? nbi_dims(target)[db] : 1;
        if (p != q && p != 1 && q != 1) {
            nbi_error(NB_SHAPE_MISMATCH, "mse_loss: target size %s cannot be broadcast to input "
                      "size %s", NBI_SHAPE_STR(target), NBI_SHAPE_STR(input));
            return NULL;
        }
    }
    return loss_apply(&mse_fn, op, input, target, r);
}

/* PyTorch refuses probabilities outside [0, 1] (NaN among them) rather than return NaN. */
static bool check_probabilities(const char *op, const nb_tensor *x)
{
    nnc_tmps s = {0};
    nb_tensor *lo = nnc_k(&s, nb_ge_scalar(x, 0)), *hi = nnc_k(&s, nb_le_scalar(x, 1));
    nb_tensor *in = nnc_k(&s, nb_logical_and(lo, hi));
    nb_tensor *bad = nnc_k(&s, nb_sum(nnc_k(&s, nb_logical_not(in)), NULL, 0, false));
    double n = 0;
    bool ok = bad && nb_item(bad, &n) == NB_OK;
    nnc_free(&s);
    if (ok && n > 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: all elements of input should be between 0 and 1 "
                  "(%.0f of input %s are not)", op, n, NBI_SHAPE_STR(x));
        return false;
    }
    return ok;
}

static nb_tensor *bce_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                           bool logits)
{
    const char *op = logits ? "binary_cross_entropy_with_logits" : "binary_cross_entropy";
    if (!loss_check(op, input, target, r, true) || (!logits && !check_probabilities(op, input)))
        return NULL;
    return loss_apply(logits ? &bcel_fn : &bce_fn, op, input, target, r);
}

/* ================================ nll_loss ================================ */

#define NLL_IGNORE_INDEX (-100) /* PyTorch's default ignore_index: such targets add nothing */

/* ctx->i: reduction, kept count; shape: input as the node sees it (N, C, *); tshape: target;
 * saved: 0 = index (N, 1, *) with ignored entries at 0, 1 = float mask (N, 1, *) of kept
 * entries, NULL when nothing is ignored. */
static nb_tensor *nll_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nb_tensor *idx = c->saved[0], *mask = c->saved[1];
    nb_reduction r = (nb_reduction)c->i[0];
    nnc_tmps s = {0};
    nb_tensor *l = nnc_k(&s, nb_neg(nnc_k(&s, nb_gather(in[0], 1, idx)))); /* (N, 1, *) */
    if (l && mask)
        l = nnc_k(&s, nb_mul(l, mask));
    nb_tensor *out;
    if (r == NB_REDUCTION_NONE)
        out = l ? nb_reshape(l, c->tshape) : NULL;
    else if (r == NB_REDUCTION_SUM)
        out = l ? nb_sum(l, NULL, 0, false) : NULL;
    else /* mean over the kept entries; 0/0 = nan when all are ignored, as in PyTorch */
        out = l ? nb_div_scalar(nnc_k(&s, nb_sum(l, NULL, 0, false)), (double)c->i[1]) : NULL;
    nnc_free(&s);
    return out;
}

/* g_x = scatter of -g (scaled for the mean) into the targets' positions */
static nb_status nll_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, idx);
    SAVED(1, mask);
    if (!c->need[0])
        return NB_OK;
    nb_reduction r = (nb_reduction)c->i[0];
    double scale = r != NB_REDUCTION_MEAN ? -1.0 : c->i[1] ? -1.0 / (double)c->i[1] : 0.0;
    nnc_tmps s = {0};
    nb_tensor *gs = nnc_k(&s, nb_mul_scalar(g, scale));
    nb_tensor *src = r == NB_REDUCTION_NONE ? nnc_k(&s, nb_reshape(gs, nnc_shape(idx)))
                                            : nnc_k(&s, nb_expand(gs, nnc_shape(idx)));
    if (src && mask)
        src = nnc_k(&s, nb_mul(src, mask));
    nb_tensor *z = nnc_k(&s, nb_zeros(c->shape, nnc_opts(g)));
    gi[0] = z && src ? nb_scatter_add(z, 1, idx, src) : NULL;
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function nll_fn = {"NllLossBackward0", nll_forward, nll_backward, fctx_free};

/* Checks input (C) or (N, C, *) against int64 target () or (N, *), reads the targets once on
 * the host to check their range and count the ignored ones, and returns the node's ctx. */
static fctx *nll_prepare(const char *op, const nb_tensor *input, const nb_tensor *target,
                         nb_reduction r)
{
    if (nnc_null(op, "input", input) || nnc_null(op, "target", target) ||
        !nnc_float(op, "input", input) || !check_reduction(op, r))
        return NULL;
    if (!nbi_same_device(target, input)) {
        nbi_error(NB_DEVICE_MISMATCH, "%s: target is on %s but the input is on %s", op,
                  NNC_DEV(target), NNC_DEV(input));
        return NULL;
    }
    if (nb_tensor_dtype(target) != NB_DTYPE_I64) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: target must hold int64 class indices, got %s", op,
                  nb_dtype_name(nb_tensor_dtype(target)));
        return NULL;
    }
    if (nb_tensor_ndim(input) < 1) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: expected an input of shape (C) or (N, C, *), got %s",
                  op, NBI_SHAPE_STR(input));
        return NULL;
    }
    int32_t ni = nb_tensor_ndim(input);
    bool ok = nb_tensor_ndim(target) == (ni == 1 ? 0 : ni - 1);
    for (int32_t d = 0; ok && d < nb_tensor_ndim(target); d++)
        ok = nbi_dims(target)[d] == nbi_dims(input)[d == 0 ? 0 : d + 1];
    if (!ok) {
        if (ni >= 2 && nb_tensor_ndim(target) >= 1 && nbi_dims(target)[0] != nbi_dims(input)[0])
            nbi_error(NB_SHAPE_MISMATCH, "%s: expected input batch_size (%lld) to match target "
                      "batch_size (%lld)", op, (long long)nbi_dims(input)[0],
                      (long long)nbi_dims(target)[0]);
        else
            nbi_error(NB_SHAPE_MISMATCH, "%s: target %s does not fit input %s: expected the "
                      "input's shape without its class dim %d", op, NBI_SHAPE_STR(target),
                      NBI_SHAPE_STR(input), nb_tensor_ndim(input) == 1 ? 0 : 1);
        return NULL;
    }
    int64_t nt = numel_of(target), classes = nbi_dims(input)[nb_tensor_ndim(input) == 1 ? 0 : 1];
    int64_t *tv = nbi_malloc((size_t)(nt ? nt : 1) * sizeof *tv);
    if (!tv) {
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    if (nb_tensor_copy_to_host(target, tv, (size_t)nt * sizeof *tv) != NB_OK) {
        nbi_free(tv);
        return NULL;
    }
    int64_t kept = 0;
    for (int64_t k = 0; k < nt; k++) {
        if (tv[k] == NLL_IGNORE_INDEX)
            continue;
        if (tv[k] < 0 || tv[k] >= classes) {
            nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: target %lld is out of bounds: the input has "
                      "%lld classes (target element %lld)", op, (long long)tv[k],
                      (long long)classes, (long long)k);
            nbi_free(tv);
            return NULL;
        }
        kept++;
    }
    fctx *c = fctx_new(op);
    if (!c) {
        nbi_free(tv);
        return NULL;
    }
    c->i[0] = r;
    c->i[1] = kept;
    c->tshape = nnc_shape(target);
    c->shape = nnc_shape(input);
    if (nb_tensor_ndim(input) == 1) /* unbatched: the node sees (1, C) */
        c->shape = NB_SHAPE(1, classes);
    nb_shape is = {.ndim = c->shape.ndim}; /* (N, 1, *) */
    memcpy(is.dims, c->shape.dims, sizeof is.dims);
    is.dims[1] = 1;
    nb_tensor *idx = NULL, *mask = NULL;
    if (kept == nt) {
        idx = nb_reshape(target, is);
    } else {
        double *mv = nbi_malloc((size_t)(nt ? nt : 1) * sizeof *mv);
        for (int64_t k = 0; mv && k < nt; k++) {
            mv[k] = tv[k] != NLL_IGNORE_INDEX;
            tv[k] = tv[k] == NLL_IGNORE_INDEX ? 0 : tv[k];
        }
        nb_tensor *m64 = mv ? nb_from_data(mv, is, (nb_opts){NB_DTYPE_F64, NNC_DEV(input)})
                            : NULL;
        if (!mv)
            nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", op);
        idx = m64 ? nb_from_data(tv, is, (nb_opts){NB_DTYPE_I64, NNC_DEV(input)}) : NULL;
        mask = idx ? nb_to_dtype(m64, nb_tensor_dtype(input)) : NULL;
        nb_release(m64);
        nbi_free(mv);
        if (!mask) {
            nb_release(idx);
            idx = NULL;
        }
    }
    nbi_free(tv);
    if (!idx) {
        fctx_free(c);
        return NULL;
    }
    save(c, 0, idx);
    save(c, 1, mask);
    nb_release(idx);
    nb_release(mask);
    return c;
}

/* x: the scores (or log-probabilities) that nll_prepare checked; c is consumed. */
static nb_tensor *nll_apply(fctx *c, const nb_tensor *x)
{
    if (!c || !x) {
        if (c)
            fctx_free(c);
        return NULL;
    }
    nb_tensor *x2 = nb_tensor_ndim(x) == 1 ? nb_unsqueeze(x, 0) : nb_retain((nb_tensor *)x);
    if (!x2) {
        fctx_free(c);
        return NULL;
    }
    nb_tensor *out = apply(&nll_fn, c, &x2, 1);
    nb_release(x2);
    return out;
}

static nb_tensor *nll_impl(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    fctx *c = nll_prepare("nll_loss", input, target, r);
    return c ? nll_apply(c, input) : NULL;
}

/* PyTorch's composition: nll_loss(log_softmax(input, class dim)); a floating point target of
 * the input's shape holds class probabilities instead: -sum(target * log_softmax). */
static nb_tensor *cross_entropy_impl(const nb_tensor *input, const nb_tensor *target,
                                     nb_reduction r)
{
    const char *op = "cross_entropy";
    if (nnc_null(op, "input", input) || nnc_null(op, "target", target) ||
        !nnc_float(op, "input", input) || !check_reduction(op, r))
        return NULL;
    int32_t cdim = nb_tensor_ndim(input) == 1 ? 0 : 1;
    if (nb_dtype_is_float(nb_tensor_dtype(target))) {
        if (!nnc_like(op, "target (class probabilities)", target, input))
            return NULL;
        if (nb_tensor_ndim(input) < 1 || !same_shape(input, target)) {
            nbi_error(NB_SHAPE_MISMATCH, "cross_entropy: a floating point target holds class "
                      "probabilities and must have the input's shape %s, got %s",
                      NBI_SHAPE_STR(input), NBI_SHAPE_STR(target));
            return NULL;
        }
        nnc_tmps s = {0};
        nb_tensor *lp = nnc_k(&s, nb_log_softmax(input, cdim));
        nb_tensor *prod = nnc_k(&s, nb_mul(lp, target));
        nb_tensor *l = nnc_k(&s, nb_neg(nnc_k(&s, nb_sum(prod, &cdim, 1, false))));
        return nnc_ret(&s, l ? nnc_k(&s, reduce_loss(nb_retain(l), r)) : NULL);
    }
    fctx *c = nll_prepare(op, input, target, r);
    if (!c)
        return NULL;
    nb_tensor *lp = nb_log_softmax(input, cdim);
    nb_tensor *out = nll_apply(c, lp);
    nb_release(lp);
    return out;
}

/* ============================ public entry points ============================ */
/* NBI_API at each definition: what these create for themselves never enters the application's
 * scope, and the result does when it leaves depth 0. */

nb_tensor *nb_mse_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(mse_loss_impl(input, target, r));
}

nb_tensor *nb_binary_cross_entropy(const nb_tensor *input, const nb_tensor *target,
                                   nb_reduction r)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(bce_impl(input, target, r, false));
}

nb_tensor *nb_binary_cross_entropy_with_logits(const nb_tensor *input, const nb_tensor *target,
                                               nb_reduction r)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(bce_impl(input, target, r, true));
}

nb_tensor *nb_cross_entropy(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(cross_entropy_impl(input, target, r));
}

nb_tensor *nb_nll_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    NBI_AUTOCAST(NBI_AC_FP32, &input, &target);
    return NBI_API(nll_impl(input, target, r));
}
