/* nabla_internal.h - the core's private structures and the functions core files share.
 * Nothing here is API: applications use nabla.h, plugins nabla_plugin.h. */
#ifndef NABLA_INTERNAL_H
#define NABLA_INTERNAL_H

#include "nabla.h"
#include "nabla_plugin.h"

/* ---- For the files built on ops (functional.c, nn.c, optim.c, serialize.c) ---- */

/* Records an error for this thread and returns status; fmt is printf-style. */
nb_status nbi_error(nb_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* true if the device of `like` has a native kernel for op at like's dtype. */
bool nbi_has_kernel(const nb_tensor *like, const char *op);

/* Runs the native kernel `op` (dtype taken from `out`; for reductions/comparisons from in[0])
 * of out's device on already-allocated operands. No autograd, no broadcasting, no casting:
 * operands are passed as they are (with their strides). f and i may be NULL (zeros). */
nb_status nbi_run(const char *op, nb_tensor *out, nb_tensor *const *in, int32_t n_in,
                  const double *f, int32_t nf, const int64_t *i, int32_t ni);

#endif
