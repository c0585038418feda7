/* module.h - nb_module as the files of the module tree share it: nn.c (the tree: children,
 * parameters, buffers, devices, hooks, kinds), nn_print.c (PyTorch's repr) and nn_layers.c (the
 * built-in layers and forward dispatch). Nothing here leaves core/nn/. */
#ifndef NB_NN_MODULE_H
#define NB_NN_MODULE_H

#include "nabla_layer.h"

typedef enum nn_kind {
    NN_USER,
    NN_LINEAR,
    NN_CONV2D,
    NN_MAXPOOL2D,
    NN_RELU,
    NN_SIGMOID,
    NN_TANH,
    NN_FLATTEN,
    NN_DROPOUT,
    NN_BATCHNORM1D,
    NN_BATCHNORM2D,
    NN_SEQUENTIAL,
    NN_EXT, /* defined under core/nn/ (nbi_module_kind) */
} nn_kind;

typedef struct nn_entry {
    char *name;
    nb_tensor *t; /* strong */
} nn_entry;

typedef struct nn_child {
    char *name;
    nb_module *m; /* owned */
} nn_child;

/* The flattened, dotted view of a subtree. Entries point into the owning modules' arrays, which
 * only move when something is registered, and registering invalidates every ancestor's view. */
typedef struct nn_flat {
    int32_t n;
    char **names;
    nn_entry **entries;
} nn_flat;

struct nb_module {
    char *type_name;
    nn_kind kind;
    nb_forward_fn forward;
    void *user;
    bool training;
    nb_module *parent;
    nn_child *children;
    int32_t n_children, cap_children;
    nn_entry *params;
    int32_t n_params, cap_params;
    nn_entry *buffers;
    int32_t n_buffers, cap_buffers;
    bool flat_ok;
    nn_flat flat_params, flat_state;
    const nbi_module_kind *ext; /* NN_EXT */
    void *ext_cfg;              /* owned */
    struct nn_hook *hooks;      /* forward pre and post hooks, in registration order */
    union {
        struct {
            int64_t in, out;
            bool bias;
        } linear;
        struct {
            int64_t in, out, kh, kw;
            nb_conv2d_opts o; /* normalised: no zeros standing for defaults */
            bool bias;
        } conv;
        nb_pool2d_opts pool; /* normalised stride */
        struct {
            int32_t start, end;
        } flatten;
        double p;
        struct {
            int64_t features;
            double eps, momentum;
        } bn;
    } cfg;
};

/* nn.c */
nb_status nnm_oom(const char *what);
nb_module *nnm_alloc(const char *type_name, nn_kind kind);
const char *nnm_shape_str(const nb_tensor *t, char *buf, size_t len); /* "[1, 400]" */
nb_tensor *nnm_hooked_forward(nb_module *m, const nb_tensor *x); /* the hooks around a forward */
nb_tensor *nnm_call(nb_module *m, const nb_tensor *x);           /* with hooks, if any */
/* nn_layers.c */
nb_tensor *nnm_forward_of(nb_module *m, const nb_tensor *x); /* the forward of m's kind */

#endif
