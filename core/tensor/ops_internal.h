/* ops_internal.h - what the ops_*.c files share: argument checks, broadcasting into stack-only
 * shadows, and the pieces of a backward rule. */
#ifndef NABLA_OPS_INTERNAL_H
#define NABLA_OPS_INTERNAL_H

#include "nabla_internal.h"

#include <string.h>

/* Plain static functions, as when the ops were one file: the compiler inlines them on the
 * dispatch fast path by its own measure, and a file that uses none of them gets no warning. */
#define NBI_OPS_SHARED __attribute__((unused))

/* An op given NULL keeps the first error, so chains need one check at the end. */
#define NBI_NULL_CHECK(op, ...)                                                            \
    do {                                                                                   \
        const nb_tensor *args_[] = {__VA_ARGS__};                                          \
        for (size_t k_ = 0; k_ < sizeof args_ / sizeof *args_; k_++)                       \
            if (!args_[k_]) {                                                              \
                if (!nbi_error_pending())                                                  \
                    nbi_error(NB_NULL_ARGUMENT, "%s: argument %zu is NULL", op, k_ + 1);  \
                return NULL;                                                               \
            }                                                                              \
    } while (0)

static NBI_OPS_SHARED nb_status same_device(const char *op, const nb_tensor *a,
                                            const nb_tensor *b)
{
    if (a->storage->device != b->storage->device)
        return nbi_error(NB_DEVICE_MISMATCH, "%s: expected all tensors on the same device, got "
                         "%s and %s", op, a->storage->device->name, b->storage->device->name);
    return NB_OK;
}

/* A stack-only view of t broadcast to `shape`: no object is allocated, it only feeds a kernel. */
static NBI_OPS_SHARED void shadow(nb_tensor *dst, const nb_tensor *src, int32_t ndim,
                                  const int64_t *shape)
{
    /* only the fields a kernel launch reads: this sits on the dispatch fast path */
    dst->storage = src->storage;
    dst->offset = src->offset;
    dst->dtype = src->dtype;
    dst->ndim = ndim;
    int32_t lead = ndim - src->ndim;
    for (int32_t d = 0; d < ndim; d++) {
        int32_t sd = d - lead;
        dst->shape[d] = shape[d];
        dst->strides[d] = (sd < 0 || (src->shape[sd] == 1 && shape[d] != 1)) ? 0 : src->strides[sd];
    }
}

static NBI_OPS_SHARED nb_status broadcast_shapes(const char *op, const nb_tensor *a,
                                                 const nb_tensor *b, int32_t *ndim,
                                                 int64_t *shape)
{
    int32_t n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int32_t d = 0; d < n; d++) {
        int32_t da = d - (n - a->ndim), db = d - (n - b->ndim);
        int64_t x = da >= 0 ? a->shape[da] : 1, y = db >= 0 ? b->shape[db] : 1;
        if (x != y && x != 1 && y != 1)
            return nbi_error(NB_SHAPE_MISMATCH, "%s: shapes %s and %s cannot be broadcast "
                             "(size %lld vs %lld at dim %d)", op, NBI_SHAPE_STR(a),
                             NBI_SHAPE_STR(b), (long long)x, (long long)y, d);
        shape[d] = x == 1 ? y : x;
    }
    *ndim = n;
    return nbi_check_shape(op, n, shape); /* [2^32, 1] with [1, 2^32]: 2^64 elements */
}

static NBI_OPS_SHARED bool same_shape(const nb_tensor *a, int32_t ndim, const int64_t *shape)
{
    return a->ndim == ndim && !memcmp(a->shape, shape, (size_t)ndim * sizeof *shape);
}

/* t itself, borrowed, when it has dtype already, else a new cast of it; give it back with
 * drop_cast. Borrowing spares the common case (no promotion) two atomic reference counts. */
static NBI_OPS_SHARED nb_tensor *as_dtype(const nb_tensor *t, nb_dtype dtype)
{
    return t->dtype == dtype ? (nb_tensor *)t : nbi_cast(t, dtype);
}

static NBI_OPS_SHARED void drop_cast(nb_tensor *c, const nb_tensor *t)
{
    if (c != t)
        nbi_release(c);
}

static NBI_OPS_SHARED int64_t numel(const nb_tensor *t) { return nbi_numel(t->ndim, t->shape); }

/* In a backward rule: var is saved tensor k of node (borrowed), or the rule returns the error. */
#define SAVED(k, var)                                                                      \
    nb_tensor *var;                                                                        \
    do {                                                                                   \
        nb_status st_ = nbi_saved(node, k, &var);                                          \
        if (st_ != NB_OK)                                                                  \
            return st_;                                                                    \
    } while (0)

static NBI_OPS_SHARED nb_status done(nb_tensor **gi, int32_t n)
{
    for (int32_t k = 0; k < n; k++)
        if (!gi[k] && nbi_error_pending())
            return nb_last_status();
    return NB_OK;
}

/* ops_elementwise.c: op's kernel on a cast to dt into a new out_dt tensor, or into `into` (no
 * autograd); the static one stays inlinable on the elementwise path. */
nb_tensor *nbi_unary_kernel(nbi_op op, const nb_tensor *a, nb_dtype dt, nb_dtype out_dt,
                            const double *f, int32_t nf, const int64_t *iv, int32_t ni,
                            nb_tensor *into);

#endif
