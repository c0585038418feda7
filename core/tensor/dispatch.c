/* dispatch.c - calls a device's kernel for (op, dtype): native kernel, else the CPU through
 * NABLA_CPU_FALLBACK (with a one-time warning per op), else an error naming op, dtype, device. */
#include "nabla_internal.h"

#include <stdlib.h>
#include <string.h>

void nbi_fill_operand(nb_operand *o, const nb_tensor *t)
{
    o->handle = t->storage->handle;
    o->offset = (size_t)t->offset * nbi_dtype_bytes[t->dtype];
    o->dtype = t->dtype;
    o->ndim = t->ndim;
    o->shape = t->shape;
    o->strides = t->strides;
}

bool nbi_device_has_op(const nbi_device *dev, nbi_op op, nb_dtype dtype)
{
    return dev->kernels[op][dtype] != NULL;
}

#define NBI_MAX_OPERANDS 8

/* Runs op on the CPU: each operand's whole storage is copied to host memory, the CPU kernel
 * runs on the same offsets and strides, and the output's storage is copied back. */
static nb_status run_on_cpu(nbi_op op, nb_dtype kd, nb_tensor *out, nb_tensor *const *in,
                            int32_t n_in, nb_kernel_args *args, nb_operand *ops)
{
    nbi_device *dev = out->storage->device, *cpu = nbi_cpu_device();
    if (!cpu || !cpu->kernels[op][kd])
        return nbi_error(NB_NOT_IMPLEMENTED, "%s: no %s kernel on %s, and none on the CPU to "
                         "fall back to", nbi_op_name(op), nb_dtype_name(kd), dev->name);
    if (!dev->fell_back[op]) {
        dev->fell_back[op] = true;
        nbi_log(NB_LOG_WARN, "%s has no %s kernel on %s: running it on the CPU "
                "(NABLA_CPU_FALLBACK=1)", nbi_op_name(op), nb_dtype_name(kd), dev->name);
    }
    nbi_storage *host[NBI_MAX_OPERANDS] = {0};
    nb_status st = NB_OK;
    for (int32_t k = 0; k <= n_in && st == NB_OK; k++) {
        const nb_tensor *t = k == 0 ? out : in[k - 1];
        nbi_device *td = t->storage->device;
        host[k] = nbi_storage_new(cpu, t->storage->bytes);
        if (!host[k]) {
            st = nb_last_status();
            break;
        }
        char *tmp = nbi_malloc(t->storage->bytes);
        if (!tmp) {
            st = nbi_error(NB_OUT_OF_MEMORY, "fallback: out of host memory");
            break;
        }
        st = td->api->read(td->index, t->storage->handle, 0, tmp, t->storage->bytes);
        if (st == NB_OK)
            st = cpu->api->write(cpu->index, host[k]->handle, 0, tmp, t->storage->bytes);
        nbi_free(tmp);
        ops[k].handle = host[k]->handle;
    }
    if (st == NB_OK) {
        args->device = cpu->index;
        st = cpu->kernels[op][kd](args);
    }
    if (st == NB_OK) {
        char *tmp = nbi_malloc(out->storage->bytes);
        if (!tmp)
            st = nbi_error(NB_OUT_OF_MEMORY, "fallback: out of host memory");
        else {
            st = cpu->api->read(cpu->index, host[0]->handle, 0, tmp, out->storage->bytes);
            if (st == NB_OK)
                st = dev->api->write(dev->index, out->storage->handle, 0, tmp,
                                     out->storage->bytes);
            nbi_free(tmp);
        }
    }
    for (int32_t k = 0; k <= n_in; k++)
        nbi_storage_release(host[k]);
    return st;
}

nb_status nbi_launch(nbi_op op, nb_dtype kd, nb_tensor *out, nb_tensor *const *in, int32_t n_in,
                     const double *f, int32_t nf, const int64_t *i, int32_t ni)
{
    nbi_device *dev = out->storage->device;
    nb_operand ops[NBI_MAX_OPERANDS];
    nb_kernel_args args = {.device = dev->index, .n_in = n_in, .out = &ops[0], .in = &ops[1]};
    nbi_fill_operand(&ops[0], out);
    for (int32_t k = 0; k < n_in; k++)
        nbi_fill_operand(&ops[k + 1], in[k]);
    for (int32_t k = 0; k < nf && k < 8; k++)
        args.f[k] = f[k];
    for (int32_t k = 0; k < ni && k < 8; k++)
        args.i[k] = i[k];
    nb_kernel_fn fn = dev->kernels[op][kd];
    /* A 16-bit operand goes only to a plugin that registers the op for that dtype (ABI 1.1):
     * a float16 source of a copy into float32 must not reach a float32-only copy kernel. */
    nb_dtype missing = kd;
    for (int32_t k = 0; fn && k <= n_in; k++)
        if (nbi_dtype_is_16bit(ops[k].dtype) && !dev->kernels[op][ops[k].dtype]) {
            fn = NULL;
            missing = ops[k].dtype;
        }
    nb_status st;
    if (NBI_LIKELY(fn != NULL)) {
        st = fn(&args);
    } else if (!dev->is_cpu && nbi_cpu_fallback_enabled()) {
        st = run_on_cpu(op, kd, out, in, n_in, &args, ops);
    } else {
        return nbi_error(NB_NOT_IMPLEMENTED, "%s: no %s kernel on %s%s", nbi_op_name(op),
                         nb_dtype_name(missing), dev->name,
                         dev->is_cpu ? "" : " (set NABLA_CPU_FALLBACK=1 to run it on the CPU)");
    }
    if (NBI_UNLIKELY(st != NB_OK) && nb_last_status() == NB_OK)
        nbi_error(st, "%s: the %s kernel on %s failed (%s)", nbi_op_name(op), nb_dtype_name(kd),
                  dev->name, nb_status_str(st));
    return st;
}

bool nbi_has_kernel(const nb_tensor *like, const char *op)
{
    if (!like)
        return false;
    static _Thread_local int no_tier2 = -1;
    int k = nbi_op_lookup(op);
    if (k < 0)
        return false;
    if (k >= NBI_OP_relu_backward) { /* tier 2 can be switched off to test the composites */
        if (no_tier2 < 0) {
            const char *env = getenv("NABLA_NO_TIER2");
            no_tier2 = env && strcmp(env, "1") == 0;
        }
        if (no_tier2)
            return false;
    }
    return like->storage->device->kernels[k][like->dtype] != NULL;
}

nb_status nbi_run(const char *op, nb_tensor *out, nb_tensor *const *in, int32_t n_in,
                  const double *f, int32_t nf, const int64_t *i, int32_t ni)
{
    if (!op || !out || (n_in && !in))
        return nbi_error(NB_NULL_ARGUMENT, "nbi_run: NULL argument");
    int k = nbi_op_lookup(op);
    if (k < 0)
        return nbi_error(NB_INVALID_ARGUMENT, "nbi_run: unknown op '%s'", op);
    if (n_in >= NBI_MAX_OPERANDS)
        return nbi_error(NB_INVALID_ARGUMENT, "nbi_run: %d inputs, at most %d", n_in,
                         NBI_MAX_OPERANDS - 1);
    for (int32_t j = 0; j < n_in; j++)
        if (!in[j] || in[j]->storage->device != out->storage->device)
            return nbi_error(NB_DEVICE_MISMATCH, "%s: operands on different devices", op);
    nb_dtype kd = (n_in == 0 || k == NBI_OP_copy || k == NBI_OP_scatter_add) ? out->dtype
                                                                            : in[0]->dtype;
    nb_status st = nbi_launch((nbi_op)k, kd, out, in, n_in, f, nf, i, ni);
    if (st == NB_OK)
        nbi_bump_version(out);
    return st;
}
