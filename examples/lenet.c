/* lenet.c - the seed tutorial's LeNet: five layers and the forward that wires them. */
#include "lenet.h"

static nb_tensor *child(nb_module *self, const char *name, const nb_tensor *x)
{
    return nb_module_forward(nb_module_child(self, name), x);
}

/* Runs in its own scope so every intermediate is released whether or not the caller has one
 * open; the result is handed back with nb_keep. A failed op yields NULL all the way down. */
static nb_tensor *lenet_forward(nb_module *self, const nb_tensor *x)
{
    const nb_pool2d_opts pool = {.kernel = {2, 2}};
    nb_scope_begin();
    nb_tensor *h = nb_max_pool2d(nb_relu(child(self, "conv1", x)), pool); /* (N, 6, 15, 15) */
    h = nb_max_pool2d(nb_relu(child(self, "conv2", h)), pool);            /* (N, 16, 6, 6) */
    h = nb_view(h, NB_SHAPE(-1, 16 * 6 * 6));
    h = nb_relu(child(self, "fc1", h));
    h = nb_relu(child(self, "fc2", h));
    h = nb_keep(child(self, "fc3", h));
    nb_scope_end();
    return h;
}

nb_module *lenet_new(nb_opts opts)
{
    nb_module *net = nb_module_new("Net", lenet_forward, NULL);
    if (!net)
        return NULL;
    const nb_conv2d_opts conv = {0};
    struct {
        const char *name;
        nb_module *m;
    } layers[] = {
        {"conv1", nb_conv2d_new(1, 6, 3, 3, conv, true, opts)},
        {"conv2", nb_conv2d_new(6, 16, 3, 3, conv, true, opts)},
        {"fc1", nb_linear_new(16 * 6 * 6, 120, true, opts)},
        {"fc2", nb_linear_new(120, 84, true, opts)},
        {"fc3", nb_linear_new(84, 10, true, opts)},
    };
    enum { N_LAYERS = sizeof layers / sizeof layers[0] };
    bool ok = true;
    for (int i = 0; i < N_LAYERS; i++) {
        /* after a failure, layers that never became children are still ours to free */
        if (ok && layers[i].m && nb_module_add(net, layers[i].name, layers[i].m) == NB_OK)
            continue;
        ok = false;
        if (layers[i].m && !nb_module_child(net, layers[i].name))
            nb_module_free(layers[i].m);
    }
    if (!ok) {
        nb_module_free(net);
        return NULL;
    }
    return net;
}
