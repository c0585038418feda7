/* lenet.h - the seed tutorial's LeNet (conv 1->6->16, 3x3; fc 576->120->84->10) as an nb_module,
 * shared by seed7, nabla-train and nabla-bench. Input (N, 1, 32, 32), output logits (N, 10). */
#ifndef NB_EXAMPLES_LENET_H
#define NB_EXAMPLES_LENET_H

#include "nabla.h"

/* A new "Net" with children conv1, conv2, fc1, fc2, fc3 initialised like PyTorch's layers from
 * the global generator (call nb_manual_seed first for a reproducible net); NULL on error. */
nb_module *lenet_new(nb_opts opts);

#endif
