/* nn_common.h - what the files under core/nn/ share: NULL and dtype checks and a small list of
 * intermediates released together. These files are composites of public, differentiable ops,
 * so autograd (and double backward) comes from the ops they are written with. */
#ifndef NB_NN_COMMON_H
#define NB_NN_COMMON_H

#include "nabla_layer.h"

#include <math.h>
#include <string.h>

/* A public function returning a module still runs one API level deep (see NBI_API), so that the
 * tensors it makes for itself stay out of the application's scope. */
static inline nb_module *nnc_module_leave(nb_module *m)
{
    nbi_api_depth--;
    return m;
}
#define NNC_API_MODULE(expr) (nbi_api_depth++, nnc_module_leave(expr))

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

/* Releases every intermediate and returns r (a new reference, or NULL). */
static inline nb_tensor *nnc_ret(nnc_tmps *s, nb_tensor *r)
{
    if (r)
        nb_retain(r);
    nnc_free(s);
    return r;
}

#endif
