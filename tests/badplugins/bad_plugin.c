/* bad_plugin.c - test plugins for test_plugin.c, one per way a plugin can fail to load (plus two
 * that load: "nodev" with no device, "mini" with two host-memory devices and a few f32 kernels).
 * Each variant is this file compiled with one BAD_<KIND> definition (see CMakeLists.txt). */
#include "nabla_plugin.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static const nb_host *host;

/* ---- a tiny working device: host memory, "fill" and "copy" for float32 only ---- */

static int mini_device_count(void) { return 2; }

static nb_status mini_alloc(int device, size_t bytes, void **handle)
{
    (void)device;
    *handle = malloc(bytes);
    return *handle ? NB_OK : host->error(NB_OUT_OF_MEMORY, "mini: malloc(%zu) failed", bytes);
}

static void mini_free(int device, void *handle)
{
    (void)device;
    free(handle);
}

static nb_status mini_write(int device, void *handle, size_t offset, const void *src,
                            size_t bytes)
{
    (void)device;
    memcpy((char *)handle + offset, src, bytes);
    return NB_OK;
}

static nb_status mini_read(int device, const void *handle, size_t offset, void *dst, size_t bytes)
{
    (void)device;
    memcpy(dst, (const char *)handle + offset, bytes);
    return NB_OK;
}

/* Visits every element of `shape` in row-major order, giving the element offsets of two
 * operands (in elements). */
static void walk(const nb_operand *a, const nb_operand *b,
                 void (*fn)(const nb_operand *, const nb_operand *, int64_t, int64_t, void *),
                 void *ctx)
{
    int64_t idx[NB_MAX_DIMS] = {0}, n = 1;
    for (int32_t d = 0; d < a->ndim; d++)
        n *= a->shape[d];
    for (int64_t k = 0; k < n; k++) {
        int64_t oa = 0, ob = 0;
        for (int32_t d = 0; d < a->ndim; d++) {
            oa += idx[d] * a->strides[d];
            if (b)
                ob += idx[d] * b->strides[d];
        }
        fn(a, b, oa, ob, ctx);
        for (int32_t d = a->ndim; d-- > 0;)
            if (++idx[d] < a->shape[d])
                break;
            else
                idx[d] = 0;
    }
}

static float *f32_at(const nb_operand *o, int64_t e)
{
    return (float *)((char *)o->handle + o->offset) + e;
}

static void fill_one(const nb_operand *o, const nb_operand *unused, int64_t e, int64_t u2,
                     void *ctx)
{
    (void)unused;
    (void)u2;
    *f32_at(o, e) = (float)*(const double *)ctx;
}

static nb_status mini_fill(const nb_kernel_args *args)
{
    walk(args->out, NULL, fill_one, (void *)&args->f[0]);
    return NB_OK;
}

static void copy_one(const nb_operand *o, const nb_operand *in, int64_t eo, int64_t ei,
                     void *ctx)
{
    (void)ctx;
    const char *p = (const char *)in->handle + in->offset;
    double v = 0;
    switch (in->dtype) {
    case NB_DTYPE_F32: v = ((const float *)p)[ei]; break;
    case NB_DTYPE_F64: v = ((const double *)p)[ei]; break;
    case NB_DTYPE_I32: v = ((const int32_t *)p)[ei]; break;
    case NB_DTYPE_I64: v = (double)((const int64_t *)p)[ei]; break;
    case NB_DTYPE_BOOL:
    case NB_DTYPE_U8: v = ((const uint8_t *)p)[ei]; break;
    default: break;
    }
    *f32_at(o, eo) = (float)v;
}

static nb_status mini_copy(const nb_kernel_args *args)
{
    walk(args->out, &args->in[0], copy_one, NULL);
    return NB_OK;
}

static const nb_kernel_desc mini_kernels[] = {
    {"fill", NB_DTYPE_F32, mini_fill},
    {"copy", NB_DTYPE_F32, mini_copy},
    {"no_such_op", NB_DTYPE_F32, mini_fill}, /* unknown names are ignored, not fatal */
};

__attribute__((unused)) static const char *nodev_note(void)
{
    return "no frobnicator hardware found";
}
__attribute__((unused)) static int zero_devices(void) { return 0; }
static const char *mini_info(int32_t device)
{
    return device == 1 ? "kind: mini\nmemory: host" : "kind: mini";
}

#if defined(BAD_NODEV)
#define TEST_NAME "nodev"
#elif defined(BAD_DUPCPU)
#define TEST_NAME "cpu"
#elif defined(BAD_NEWMINOR)
#define TEST_NAME "newminor"
#elif defined(BAD_OLDMINOR)
#define TEST_NAME "oldminor"
#else
#define TEST_NAME "mini"
#endif

/* A table as a later ABI minor would build it: larger, with members this core does not know. */
typedef struct later_plugin {
    nb_plugin base;
    void *(*from_the_future)(void);
    int64_t more;
} later_plugin;

static later_plugin table = {
    .base =
        {
            .abi_major = NB_PLUGIN_ABI_MAJOR,
            .abi_minor = NB_PLUGIN_ABI_MINOR,
            .size = sizeof(nb_plugin),
            .name = TEST_NAME,
            .version = "test-1",
            .device_count = mini_device_count,
            .alloc = mini_alloc,
            .free = mini_free,
            .write = mini_write,
            .read = mini_read,
            .kernels = mini_kernels,
            .n_kernels = sizeof mini_kernels / sizeof *mini_kernels,
            .device_info = mini_info,
        },
};

#if defined(BAD_NOENTRY)
/* A shared library that is not a plugin: the entry symbol is misspelt. */
NB_PLUGIN_EXPORT const nb_plugin *nb_plugin_entry_v0(const nb_host *h)
{
    host = h;
    return &table.base;
}
#else
NB_PLUGIN_EXPORT const nb_plugin *nb_plugin_entry(const nb_host *h)
{
    host = h;
#if defined(BAD_REFUSES)
    host->error(NB_DEVICE_ERROR, "frobnicator driver 0.3 is too old (need 1.2)");
    return NULL;
#elif defined(BAD_REFUSES_SILENTLY)
    return NULL;
#elif defined(BAD_ABI2)
    table.base.abi_major = 2;
#elif defined(BAD_SMALL)
    table.base.size = (uint32_t)offsetof(nb_plugin, kernels);
#elif defined(BAD_NOALLOC)
    table.base.alloc = NULL;
#elif defined(BAD_NODEV)
    table.base.device_count = zero_devices;
    table.base.status_note = nodev_note;
#elif defined(BAD_NEWMINOR)
    table.base.abi_minor = NB_PLUGIN_ABI_MINOR + 5;
    table.base.size = sizeof(later_plugin);
    table.from_the_future = NULL;
#elif defined(BAD_OLDMINOR)
    /* built for ABI 1.1: its table ends at n_kernels, and the bytes after it (here still
     * mini_info) must not be read as device_info */
    table.base.abi_minor = 1;
    table.base.size = (uint32_t)offsetof(nb_plugin, device_info);
#endif
    return &table.base;
}
#endif
