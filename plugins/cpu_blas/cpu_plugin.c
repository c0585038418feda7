/* cpu_plugin.c - the cpu_blas plugin's entry point: one "cpu" device whose buffers are 64-byte
 * aligned host memory (the handle is the pointer), and the kernel table joined from the
 * elementwise, reduction, matmul and nn files. */
#include "cpu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>

const nb_host *nbc_host;

static nb_kernel_desc *kernel_table;
static size_t kernel_count;

static int cpu_device_count(void) { return 1; }

static nb_status cpu_device_name(int device, char *buf, size_t len)
{
    if (!buf || len == 0)
        return NBC_ERR(NB_NULL_ARGUMENT, "cpu: device_name needs a buffer");
    if (device != 0)
        return NBC_ERR(NB_DEVICE_OUT_OF_RANGE, "cpu: device_name of device %d, but there is 1 "
                       "cpu device (index 0)", device);
    nbc_platform_describe(buf, len);
    return NB_OK;
}

static const char *cpu_device_info(int32_t device)
{
    static _Thread_local char info[1024]; /* valid until this thread's next call */
    if (device != 0)
        return NULL;
    nbc_platform_info(info, sizeof info);
    return info;
}

static nb_status check_device(const char *what, int device)
{
    if (device != 0)
        return NBC_ERR(NB_DEVICE_OUT_OF_RANGE, "cpu: %s on device %d, but there is 1 cpu device "
                       "(index 0)", what, device);
    return NB_OK;
}

static nb_status cpu_alloc(int device, size_t bytes, void **handle)
{
    if (!handle)
        return NBC_ERR(NB_NULL_ARGUMENT, "cpu: alloc needs a place for the handle");
    *handle = NULL;
    if (check_device("alloc", device) != NB_OK)
        return NB_DEVICE_OUT_OF_RANGE;
    if (bytes == 0)
        return NBC_ERR(NB_INVALID_ARGUMENT, "cpu: alloc of 0 bytes (expected > 0)");
    /* aligned_alloc wants a multiple of the alignment. */
    if (bytes > SIZE_MAX - 63)
        return NBC_ERR(NB_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes", bytes);
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p)
        return NBC_ERR(NB_OUT_OF_MEMORY, "cpu: out of memory allocating %zu bytes", bytes);
    *handle = p;
    return NB_OK;
}

typedef struct wrapped {
    void *ptr;
    struct wrapped *next;
} wrapped;

/* Handles from wrap_host are the host pointers themselves, so kernels need no special case;
 * free() must then skip them, which this list (rarely more than a few entries) records. */
static wrapped *wrapped_list;
static pthread_mutex_t wrapped_mutex = PTHREAD_MUTEX_INITIALIZER;

static void wrapped_lock_set(void) { pthread_mutex_lock(&wrapped_mutex); }
static void wrapped_lock_unset(void) { pthread_mutex_unlock(&wrapped_mutex); }

static nb_status cpu_wrap_host(int device, void *ptr, size_t bytes, void **handle)
{
    if (!handle || !ptr)
        return NBC_ERR(NB_NULL_ARGUMENT, "cpu: wrap_host needs a pointer and a place for the "
                       "handle");
    if (check_device("wrap_host", device) != NB_OK)
        return NB_DEVICE_OUT_OF_RANGE;
    wrapped *w = malloc(sizeof *w);
    if (!w)
        return NBC_ERR(NB_OUT_OF_MEMORY, "cpu: out of memory wrapping %zu host bytes", bytes);
    w->ptr = ptr;
    wrapped_lock_set();
    w->next = wrapped_list;
    wrapped_list = w;
    wrapped_lock_unset();
    *handle = ptr;
    return NB_OK;
}

static void cpu_free(int device, void *handle)
{
    if (!handle)
        return;
    wrapped_lock_set();
    for (wrapped **pw = &wrapped_list; *pw; pw = &(*pw)->next) {
        if ((*pw)->ptr == handle) {
            wrapped *w = *pw;
            *pw = w->next;
            wrapped_lock_unset();
            free(w);
            return;
        }
    }
    wrapped_lock_unset();
    free(handle);
}

static nb_status cpu_write(int device, void *handle, size_t offset, const void *src, size_t bytes)
{
    if (!handle || (!src && bytes))
        return NBC_ERR(NB_NULL_ARGUMENT, "cpu: write given a NULL %s", handle ? "source" : "handle");
    if (bytes)
        memcpy((char *)handle + offset, src, bytes);
    return NB_OK;
}

static nb_status cpu_read(int device, const void *handle, size_t offset, void *dst, size_t bytes)
{
    if (!handle || (!dst && bytes))
        return NBC_ERR(NB_NULL_ARGUMENT, "cpu: read given a NULL %s",
                       handle ? "destination" : "handle");
    if (bytes)
        memcpy(dst, (const char *)handle + offset, bytes);
    return NB_OK;
}

static nb_status cpu_synchronize(int device) { return NB_OK; }

static void cpu_shutdown(void)
{
    nbc_scratch_release();
    nbc_platform_stop_threads();
    free(kernel_table);
    kernel_table = NULL;
    kernel_count = 0;
}

static nb_plugin cpu_plugin = {
    .abi_major = NB_PLUGIN_ABI_MAJOR,
    .abi_minor = NB_PLUGIN_ABI_MINOR,
    .size = sizeof(nb_plugin),
    .name = "cpu",
    .version = "0.1.0",
    .device_count = cpu_device_count,
    .device_name = cpu_device_name,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .write = cpu_write,
    .read = cpu_read,
    .synchronize = cpu_synchronize,
    .wrap_host = cpu_wrap_host,
    .status_note = NULL,
    .shutdown = cpu_shutdown,
    .device_info = cpu_device_info,
};

NB_PLUGIN_EXPORT const nb_plugin *nb_plugin_entry(const nb_host *host)
{
    nbc_host = host;
    if (host && host->abi_major != NB_PLUGIN_ABI_MAJOR) {
        NBC_ERR(NB_ABI_MISMATCH, "cpu plugin: built for ABI %d.x, the core speaks %u.x",
                NB_PLUGIN_ABI_MAJOR, host->abi_major);
        return NULL;
    }
    if (nbc_platform_open() != NB_OK)
        return NULL;
    if (!kernel_table) {
        const nb_kernel_desc *parts[] = {nbc_elementwise_kernels, nbc_reduce_kernels,
                                         nbc_matmul_kernels, nbc_nn_kernels,
                                         nbc_attention_kernels, nbc_norm_kernels};
        const size_t counts[] = {nbc_elementwise_count, nbc_reduce_count, nbc_matmul_count,
                                 nbc_nn_count, nbc_attention_count, nbc_norm_count};
        size_t total = 0;
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++)
            total += counts[k];
        /* room for a float16 and a bfloat16 twin of every entry (cpu_half.c) */
        kernel_table = malloc(3 * total * sizeof *kernel_table);
        if (!kernel_table) {
            NBC_ERR(NB_OUT_OF_MEMORY, "cpu plugin: out of memory for its kernel table");
            return NULL;
        }
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
            memcpy(kernel_table + kernel_count, parts[k], counts[k] * sizeof *kernel_table);
            kernel_count += counts[k];
        }
        kernel_count += nbc_half_kernels(kernel_table, kernel_count, kernel_table + kernel_count);
    }
    cpu_plugin.kernels = kernel_table;
    cpu_plugin.n_kernels = kernel_count;
    return &cpu_plugin;
}
