/* nn_common.h - what the files under core/nn/ share beyond layer/composite.h: module
 * constructors run one API level deep. */
#ifndef NB_NN_COMMON_H
#define NB_NN_COMMON_H

#include "composite.h"

/* A public function returning a module still runs one API level deep (see NBI_API), so that the
 * tensors it makes for itself stay out of the application's scope. */
static inline nb_module *nnc_module_leave(nb_module *m)
{
    nbi_api_depth--;
    return m;
}
#define NNC_API_MODULE(expr) (nbi_api_depth++, nnc_module_leave(expr))

#endif
