/* nabla_layer.c - the accessors nabla_layer.h gives the library on top of the tensor layer:
 * small reads of nb_tensor and its storage that nabla.h has no call for. Built with the tensor
 * layer (it sees nabla_internal.h); core/nn/ and core/dist/ only see the declarations. */
#include "nabla_internal.h"

const char *nbi_tensor_shape_cstr(const nb_tensor *t) { return nbi_shape_cstr(t->ndim, t->shape); }

const int64_t *nbi_dims(const nb_tensor *t) { return t->shape; }

bool nbi_requires_grad(const nb_tensor *t) { return t->requires_grad; }

nb_tensor *nbi_grad_of(const nb_tensor *t) { return t->grad; }

bool nbi_same_device(const nb_tensor *a, const nb_tensor *b)
{
    return a->storage->device == b->storage->device;
}

const nb_tensor *nbi_grad_fn_leaf(const nb_grad_fn *fn)
{
    return fn ? ((const nbi_node *)fn)->leaf : NULL;
}

nbi_tensor_memory nbi_tensor_memory_of(const nb_tensor *t)
{
    const nbi_device *dev = t->storage->device;
    return (nbi_tensor_memory){
        .device_type = dev->api->name,
        .device = dev->index,
        .handle = t->storage->handle,
        .offset = (size_t)t->offset * nbi_dtype_bytes[t->dtype],
    };
}

nb_status nbi_tensor_synchronize(const nb_tensor *t)
{
    const nbi_device *dev = t->storage->device;
    if (!dev->api->synchronize || dev->is_cpu)
        return NB_OK;
    return dev->api->synchronize(dev->index);
}
