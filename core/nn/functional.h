/* functional.h - what the torch.nn.functional files share: argument checks, a list of
 * intermediates released together, and the plumbing of one autograd node (fctx: saved tensors
 * with their versions, apply, bw_done). Included by convolution.c, linear.c, loss.c and the
 * functional blocks at the end of activation.c and normalization.c. */
#ifndef NB_NN_FUNCTIONAL_H
#define NB_NN_FUNCTIONAL_H

#include "composite.h" /* nnc_tmps, nnc_k, nnc_ret, nnc_shape */

#include <math.h>
#include <string.h>

/* ============================== small helpers ============================== */


static inline int64_t numel_of(const nb_tensor *t) { return nb_tensor_numel(t); }

static inline bool same_shape(const nb_tensor *a, const nb_tensor *b)
{
    int32_t nd = nb_tensor_ndim(a);
    return nd == nb_tensor_ndim(b) &&
           !memcmp(nbi_dims(a), nbi_dims(b), (size_t)nd * sizeof(int64_t));
}

static inline bool check_reduction(const char *op, nb_reduction r)
{
    if (r == NB_REDUCTION_MEAN || r == NB_REDUCTION_SUM || r == NB_REDUCTION_NONE)
        return true;
    nbi_error(NB_INVALID_ARGUMENT, "%s: reduction %d is not one of NB_REDUCTION_MEAN (0), "
              "NB_REDUCTION_SUM (1), NB_REDUCTION_NONE (2)", op, (int)r);
    return false;
}

/* ============================== autograd plumbing ============================== */

/* The context of one node: parameters, and the tensors backward needs with the version they
 * had when saved (an in-place change afterwards makes backward fail, as in PyTorch). */
#define FN_SAVED 4
typedef struct fctx {
    const char *name;
    nb_tensor *saved[FN_SAVED];
    int64_t version[FN_SAVED];
    bool need[4];   /* input k needs a gradient */
    bool record;    /* a node will be recorded: forward saves what backward needs */
    int64_t i[16];
    double f[4];
    nb_shape shape, tshape; /* shapes backward needs (per op) */
    nb_tensor *aux[2];      /* borrowed by forward only: tensors that are not node inputs */
} fctx;

static inline fctx *fctx_new(const char *name)
{
    fctx *c = nbi_calloc(1, sizeof *c);
    if (!c)
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", name);
    else
        c->name = name;
    return c;
}

static inline void fctx_free(void *p)
{
    fctx *c = p;
    for (int k = 0; k < FN_SAVED; k++)
        nb_release(c->saved[k]);
    nbi_free(c);
}

/* Keeps t (a new reference) for backward. */
static inline void save(fctx *c, int k, const nb_tensor *t)
{
    nb_release(c->saved[k]);
    c->saved[k] = t ? nb_retain((nb_tensor *)t) : NULL;
    c->version[k] = t ? nb_tensor_version(t) : 0;
}

/* Keeps an output without its graph: the node must not own the tensor that owns the node. */
static inline void save_output(fctx *c, int k, const nb_tensor *out)
{
    nb_tensor *d = nb_detach(out);
    save(c, k, d);
    nb_release(d);
}

static inline nb_status saved(const fctx *c, int k, nb_tensor **t)
{
    nb_tensor *s = c->saved[k];
    if (s && nb_tensor_version(s) != c->version[k])
        return nbi_error(NB_AUTOGRAD, "one of the variables needed for gradient computation has "
                         "been modified by an inplace operation: [%s %s] is at version %lld; "
                         "expected version %lld instead (in %s)", nb_dtype_name(nb_tensor_dtype(s)),
                         NBI_SHAPE_STR(s), (long long)nb_tensor_version(s),
                         (long long)c->version[k], c->name);
    *t = s;
    return NB_OK;
}

#define SAVED(k, var)                                                                      \
    nb_tensor *var = NULL;                                                                 \
    do {                                                                                   \
        nb_status st_ = saved(c, k, &var);                                                 \
        if (st_ != NB_OK)                                                                  \
            return st_;                                                                    \
    } while (0)

/* Runs fn as one node over inputs (NULL entries allowed); c is consumed. */
static inline nb_tensor *apply(const nb_function *fn, fctx *c, nb_tensor *const *in, int32_t n)
{
    if (!c)
        return NULL;
    bool any = false;
    for (int32_t k = 0; k < n && k < 4; k++) {
        c->need[k] = in[k] && nbi_requires_grad(in[k]);
        any = any || c->need[k];
    }
    c->record = any && nb_is_grad_enabled();
    return nb_function_apply(fn, c, in, n);
}

/* The status of a backward that filled gi[k] for every needed input. */
static inline nb_status bw_done(const fctx *c, nb_tensor **gi, int32_t n)
{
    for (int32_t k = 0; k < n; k++)
        if (c->need[k] && !gi[k])
            return nbi_last_or(NB_AUTOGRAD, "backward: a gradient could not be computed");
    return NB_OK;
}

/* Backward takes the tier-2 kernel only when no graph of the gradient is being built: with
 * create_graph (grad mode on inside backward) public ops keep it differentiable. */
static inline bool bw_fast(const nb_tensor *like, const char *op)
{
    return !nb_is_grad_enabled() && nbi_has_kernel(like, op);
}

/* (C) viewed as (C, 1, ..., 1) so that it broadcasts against (N, C, *) of ndim dims. */
static inline nb_tensor *chan_view(const nb_tensor *t, int32_t ndim)
{
    nb_shape s = {.ndim = ndim - 1};
    s.dims[0] = nbi_dims(t)[0];
    for (int32_t d = 1; d < ndim - 1; d++)
        s.dims[d] = 1;
    return nb_reshape(t, s);
}

#endif
