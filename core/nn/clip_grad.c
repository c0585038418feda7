/* clip_grad.c - clip_grad_norm_ and clip_grad_value_ (torch.nn.utils), in place on the .grad of
 * each parameter, in no-grad mode, with ops so that they run on every device. */
#include "nn_common.h"

static nb_status check_params(const char *op, nb_tensor *const *params, int32_t n)
{
    if (n < 0 || (n > 0 && !params))
        return nbi_error(NB_INVALID_ARGUMENT, "%s: %d parameters%s", op, n,
                         n < 0 ? " (must not be negative)" : " but the array is NULL");
    for (int32_t i = 0; i < n; i++)
        if (!params[i])
            return nbi_error(NB_NULL_ARGUMENT, "%s: parameter %d is NULL", op, i);
    return NB_OK;
}

static nb_status clip_norm_impl(nb_tensor *const *params, int32_t n, double max_norm,
                                double norm_type, double *total_norm)
{
    const char *op = "clip_grad_norm_";
    nb_status st = check_params(op, params, n);
    if (st != NB_OK)
        return st;
    if (!(norm_type > 0))
        return nbi_error(NB_INVALID_ARGUMENT, "%s: norm_type %g must be positive (2 usually, "
                         "INFINITY for the max norm)", op, norm_type);
    /* the norm of the per-parameter norms is the norm of everything, in float64 on the host */
    double total = 0;
    bool inf = isinf(norm_type);
    for (int32_t i = 0; i < n && st == NB_OK; i++) {
        nb_tensor *g = nbi_grad_of(params[i]);
        if (!g)
            continue;
        nb_tensor *nr = nb_norm(g, norm_type, NULL, 0, false);
        double v = 0;
        st = nr ? nb_item(nr, &v) : nb_last_status();
        nb_release(nr);
        if (inf)
            total = v > total || isnan(v) ? v : total;
        else
            total += pow(v, norm_type);
    }
    if (st != NB_OK)
        return st;
    if (!inf)
        total = pow(total, 1.0 / norm_type);
    if (total_norm)
        *total_norm = total;
    double coef = max_norm / (total + 1e-6);
    if (coef < 1) /* clamped to 1, as PyTorch: gradients are only ever scaled down */
        for (int32_t i = 0; i < n && st == NB_OK; i++)
            if (nbi_grad_of(params[i]))
                st = nb_mul_scalar_(nbi_grad_of(params[i]), coef);
    return st;
}

static nb_status clip_value_impl(nb_tensor *const *params, int32_t n, double clip)
{
    const char *op = "clip_grad_value_";
    nb_status st = check_params(op, params, n);
    if (st != NB_OK)
        return st;
    if (!(clip >= 0))
        return nbi_error(NB_INVALID_ARGUMENT, "%s: clip_value %g must not be negative", op, clip);
    for (int32_t i = 0; i < n && st == NB_OK; i++)
        if (nbi_grad_of(params[i]))
            st = nb_clamp_(nbi_grad_of(params[i]), -clip, clip);
    return st;
}

nb_status nb_clip_grad_norm_(nb_tensor *const *params, int32_t n, double max_norm,
                             double norm_type, double *total_norm)
{
    nb_no_grad_begin();
    nb_status st = NBI_API_CALL(clip_norm_impl(params, n, max_norm, norm_type, total_norm));
    nb_no_grad_end();
    return st;
}

nb_status nb_clip_grad_value_(nb_tensor *const *params, int32_t n, double clip_value)
{
    nb_no_grad_begin();
    nb_status st = NBI_API_CALL(clip_value_impl(params, n, clip_value));
    nb_no_grad_end();
    return st;
}
