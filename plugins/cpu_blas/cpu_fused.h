/* cpu_fused.h - what the fused kernel files (cpu_softmax.c, cpu_conv.c, cpu_pool.c) share: their
 * scratch slots, an output buffer written in place when the output is contiguous, and the
 * output size of a window. */
#ifndef NBC_FUSED_H
#define NBC_FUSED_H

#include "cpu_internal.h"

/* Scratch slots of these files (one kernel runs at a time on a thread, so slots never clash). */
enum { S_IN0 = 0, S_IN1 = 1, S_OUT = 2, S_COL = 3, S_PERM = 4, S_IN2 = 5 };

/* An output written in place when contiguous, else through scratch and copied out at the end. */
static inline void *out_buffer(const nb_operand *o, int slot)
{
    if (nbc_is_contiguous(o))
        return nbc_ptr(o);
    return nbc_scratch(slot, (size_t)nbc_numel(o) * nbc_dtype_size(o->dtype) + 1);
}

static inline void out_finish(const nb_operand *o, const void *buf)
{
    if (buf != nbc_ptr(o))
        nbc_scatter_contiguous(o, buf);
}

static inline nb_status same_shape(const char *name, const nb_operand *a, const nb_operand *b)
{
    bool ok = a->ndim == b->ndim;
    for (int32_t d = 0; ok && d < a->ndim; d++)
        ok = a->shape[d] == b->shape[d];
    if (!ok)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: operand shapes differ (%d-d and %d-d, or a dim "
                       "size), expected the output's shape", name, (int)a->ndim, (int)b->ndim);
    return NB_OK;
}

/* Output size of a conv or pool window along one dim (0 when the window does not fit). */
static inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d)
{
    int64_t span = in + 2 * p - d * (k - 1) - 1;
    return span < 0 ? 0 : span / s + 1;
}

#endif /* NBC_FUSED_H */
