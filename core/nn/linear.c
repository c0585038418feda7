/* linear.c - torch.nn.functional's linear and dropout: the functional ops that are neither a
 * window, an activation, a normalisation nor a loss. */
#include "functional.h"

/* ================================== linear ================================== */

static nb_tensor *linear_impl(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b)
{
    const char *op = "linear";
    if (nnc_null(op, "input", x) || nnc_null(op, "weight", w))
        return NULL;
    if (!nnc_float(op, "input", x) || !nnc_like(op, "weight", w, x) ||
        (b && !nnc_like(op, "bias", b, x)))
        return NULL;
    if (nb_tensor_ndim(w) != 2 || nb_tensor_ndim(x) < 1) {
        nbi_error(NB_SHAPE_MISMATCH, "linear: expected a 2-d weight (out_features, in_features) "
                  "and an input with at least 1 dim, got weight %s and input %s",
                  NBI_SHAPE_STR(w), NBI_SHAPE_STR(x));
        return NULL;
    }
    if (nbi_dims(x)[nb_tensor_ndim(x) - 1] != nbi_dims(w)[1]) {
        nbi_error(NB_SHAPE_MISMATCH, "linear: input %s has %lld features but weight %s expects "
                  "%lld", NBI_SHAPE_STR(x), (long long)nbi_dims(x)[nb_tensor_ndim(x) - 1],
                  NBI_SHAPE_STR(w), (long long)nbi_dims(w)[1]);
        return NULL;
    }
    /* PyTorch's bias is (out_features) or () (a 1-element (1) broadcasts as well) */
    bool full_bias = b && nb_tensor_ndim(b) == 1 && nbi_dims(b)[0] == nbi_dims(w)[0];
    if (b && !full_bias && !(nb_tensor_ndim(b) == 0 ||
                             (nb_tensor_ndim(b) == 1 && nbi_dims(b)[0] == 1))) {
        nbi_error(NB_SHAPE_MISMATCH, "linear: bias %s does not match weight %s: expected [%lld] "
                  "or a 0-d bias", NBI_SHAPE_STR(b), NBI_SHAPE_STR(w), (long long)nbi_dims(w)[0]);
        return NULL;
    }
    nb_tensor *wt = nb_t(w), *out;
    if (nb_tensor_ndim(x) == 2 && full_bias) {
        out = wt ? nb_addmm(b, x, wt, 1, 1) : NULL; /* AddmmBackward0, as in PyTorch */
    } else {
        nb_tensor *y = wt ? nb_matmul(x, wt) : NULL;
        out = b && y ? nb_add(y, b) : nb_retain(y);
        nb_release(y);
    }
    nb_release(wt);
    return out;
}

/* ================================== dropout ================================== */

static nb_tensor *dropout_impl(const nb_tensor *x, double p, bool training)
{
    if (nnc_null("dropout", "input", x) || !nnc_float("dropout", "input", x))
        return NULL;
    if (!(p >= 0 && p <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "dropout: probability has to be between 0 and 1, but got "
                  "%g", p);
        return NULL;
    }
    /* as PyTorch: nothing to drop hands back the input itself */
    if (!training || p == 0 || numel_of(x) == 0)
        return nb_retain((nb_tensor *)x);
    nnc_tmps s = {0};
    nb_tensor *mask;
    if (p == 1) {
        mask = nnc_k(&s, nb_zeros(NB_SHAPE_SCALAR, nnc_opts(x)));
    } else {
        /* keep with probability 1 - p, scaled so that the expectation is unchanged */
        nb_tensor *keep = nnc_k(&s, nb_lt_scalar(nnc_k(&s, nb_rand_like(x)), 1 - p));
        mask = nnc_k(&s, nb_to_dtype(keep, nb_tensor_dtype(x)));
        if (mask && nb_mul_scalar_(mask, 1 / (1 - p)) != NB_OK)
            mask = NULL;
    }
    return nnc_ret(&s, mask ? nnc_k(&s, nb_mul(x, mask)) : NULL); /* MulBackward0 */
}

/* ============================ public entry points ============================ */
/* NBI_API at each definition: what these create for themselves never enters the application's
 * scope, and the result does when it leaves depth 0. */

nb_tensor *nb_linear(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b)
{
    NBI_AUTOCAST(NBI_AC_LOWER, &x, &w, &b);
    return NBI_API(linear_impl(x, w, b));
}

nb_tensor *nb_dropout(const nb_tensor *x, double p, bool training)
{
    return NBI_API(dropout_impl(x, p, training));
}
