/* composite.h - for ops written as composites of public, differentiable ops (core/nn/, and the
 * tensor layer's ops_extra.c and ops_sort.c): NULL, dtype and device checks that name the op,
 * and a small list of intermediates released together. Autograd, double backward included,
 * comes from the ops a composite is written with. */
#ifndef NABLA_COMPOSITE_H
#define NABLA_COMPOSITE_H

#include "nabla_layer.h"

#include <math.h>
#include <string.h>


#define NNC_DEV(t) nb_tensor_device(t)

static inline nb_opts nnc_opts(const nb_tensor *t)
{
    return (nb_opts){nb_tensor_dtype(t), NNC_DEV(t), false};
}

/* An op given NULL returns NULL and keeps the first error. */
static inline bool nnc_null(const char *op, const char *what, const nb_tensor *t)
{
    if (t)
        return false;
    if (!nbi_error_pending())
        nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", op, what);
    return true;
}

static inline bool nnc_float(const char *op, const char *what, const nb_tensor *t)
{
    if (nb_dtype_is_float(nb_tensor_dtype(t)))
        return true;
    nbi_error(NB_DTYPE_UNSUPPORTED, "%s: %s must be a floating point tensor, got %s", op, what,
              nb_dtype_name(nb_tensor_dtype(t)));
    return false;
}

/* `t` must live on `ref`'s device and share its dtype. */
static inline bool nnc_like(const char *op, const char *what, const nb_tensor *t,
                            const nb_tensor *ref)
{
    if (!nbi_same_device(t, ref)) {
        nbi_error(NB_DEVICE_MISMATCH, "%s: %s is on %s but the input is on %s", op, what,
                  NNC_DEV(t), NNC_DEV(ref));
        return false;
    }
    if (nb_tensor_dtype(t) != nb_tensor_dtype(ref)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: %s is %s but the input is %s; both must have the "
                  "same dtype", op, what, nb_dtype_name(nb_tensor_dtype(t)),
                  nb_dtype_name(nb_tensor_dtype(ref)));
        return false;
    }
    return true;
}

static inline bool nnc_same_device(const char *op, const char *what, const nb_tensor *t,
                                   const nb_tensor *ref)
{
    if (nbi_same_device(t, ref))
        return true;
    nbi_error(NB_DEVICE_MISMATCH, "%s: %s is on %s but the input is on %s", op, what, NNC_DEV(t),
              NNC_DEV(ref));
    return false;
}

static inline nb_shape nnc_shape(const nb_tensor *t)
{
    nb_shape s = {.ndim = nb_tensor_ndim(t)};
    memcpy(s.dims, nbi_dims(t), (size_t)nb_tensor_ndim(t) * sizeof(int64_t));
    return s;
}

/* Intermediates of one computation, released together; a NULL from an op passes through and
 * its error stays the first one. */
#define NNC_CAP 64
typedef struct nnc_tmps {
    nb_tensor *t[NNC_CAP];
    int n;
} nnc_tmps;

static inline nb_tensor *nnc_k(nnc_tmps *s, nb_tensor *t)
{
    if (!t)
        return NULL;
    if (s->n == NNC_CAP) {
        nb_release(t);
        nbi_error(NB_OUT_OF_MEMORY, "nn: too many intermediates in one computation");
        return NULL;
    }
    s->t[s->n++] = t;
    return t;
}

static inline void nnc_free(nnc_tmps *s)
{
    for (int k = 0; k < s->n; k++)
        nb_release(s->t[k]);
    s->n = 0;
}

/* A new tensor of that shape and options, written by the plugin kernel op (the arguments as
 * nbi_run takes them); NULL, with the error, when either step fails. The tier-2 fast paths of
 * the composites all start this way. */
static inline nb_tensor *nnc_run(const char *op, nb_shape shape, nb_opts o, nb_tensor *const *in,
                                 int32_t n_in, const double *f, int32_t nf, const int64_t *iv,
                                 int32_t ni)
{
    nb_tensor *out = nb_empty(shape, o);
    if (out && nbi_run(op, out, in, n_in, f, nf, iv, ni) != NB_OK) {
        nb_release(out);
        return NULL;
    }
    return out;
}

/* Releases every intermediate and returns r (a new reference, or NULL). */
static inline nb_tensor *nnc_ret(nnc_tmps *s, nb_tensor *r)
{
    if (r)
        nb_retain(r);
    nnc_free(s);
    return r;
}

#endif
