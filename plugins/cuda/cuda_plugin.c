/* cuda_plugin.c - the cuda plugin's table: device discovery (0 devices and the reason when there
 * is no driver), cudaMalloc'd buffers, host<->device copies, and the per-device stream and
 * cuBLAS handle that every kernel and copy is queued on. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

const nb_host *nbcu_host;

typedef struct nbcu_device {
    int ready;             /* stream created */
    cudaStream_t stream;   /* every kernel and copy for this device, in order */
    cublasHandle_t blas;   /* bound to stream; NULL until the first matmul */
} nbcu_device;

/* Guards the fields below; taken for every stream lookup, which keeps the lazy set-up simple
 * (an uncontended lock costs far less than a kernel launch). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static nbcu_device *devices;
static int n_devices = -1; /* -1: not counted yet */
static char note[512];

static int device_count(void)
{
    pthread_mutex_lock(&lock);
    if (n_devices < 0) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice ||
            e == cudaErrorInitializationError) {
            snprintf(note, sizeof note, "%s: cudaGetDeviceCount returned %d (%s)",
                     e == cudaErrorNoDevice ? "no CUDA device found" : "CUDA driver not found",
                     (int)e, cudaGetErrorString(e));
            n = 0;
        } else if (e != cudaSuccess) {
            snprintf(note, sizeof note, "CUDA unavailable: cudaGetDeviceCount returned %d (%s)",
                     (int)e, cudaGetErrorString(e));
            n = 0;
        } else if (n == 0) {
            snprintf(note, sizeof note, "no CUDA device found (the driver reports 0 devices)");
        }
        if (n > 0 && !(devices = calloc((size_t)n, sizeof *devices))) {
            snprintf(note, sizeof note, "out of host memory for %d CUDA devices", n);
            n = 0;
        }
        n_devices = n;
    }
    int n = n_devices;
    pthread_mutex_unlock(&lock);
    if (n == 0)
        nbcu_host->error(NB_NO_DEVICE, "%s", note);
    return n;
}

static const char *status_note(void) { return note[0] ? note : NULL; }

static nb_status check_device(const char *op, int device)
{
    int n = device_count();
    if (device < 0 || device >= n)
        return nbcu_host->error(NB_DEVICE_OUT_OF_RANGE, "%s: device index %d out of range: %d "
                                "cuda device%s", op, device, n, n == 1 ? "" : "s");
    return NB_OK;
}

nb_status nbcu_cuda_error(const char *op, const char *call, cudaError_t err)
{
    nb_status st = err == cudaErrorMemoryAllocation ? NB_OUT_OF_MEMORY : NB_DEVICE_ERROR;
    return nbcu_host->error(st, "%s: %s failed: %s (%s)", op, call, cudaGetErrorName(err),
                            cudaGetErrorString(err));
}

nb_status nbcu_blas_error(const char *op, const char *call, cublasStatus_t s)
{
    nb_status st = s == CUBLAS_STATUS_ALLOC_FAILED ? NB_OUT_OF_MEMORY : NB_DEVICE_ERROR;
    return nbcu_host->error(st, "%s: %s failed: %s (%s)", op, call, cublasGetStatusName(s),
                            cublasGetStatusString(s));
}

nb_status nbcu_stream(const char *op, int device, cudaStream_t *stream)
{
    nb_status st = check_device(op, device);
    if (st != NB_OK)
        return st;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return nbcu_cuda_error(op, "cudaSetDevice", e);
    pthread_mutex_lock(&lock);
    nbcu_device *d = &devices[device];
    if (!d->ready && (e = cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking)) ==
                         cudaSuccess)
        d->ready = 1;
    *stream = d->stream;
    pthread_mutex_unlock(&lock);
    return e == cudaSuccess ? NB_OK : nbcu_cuda_error(op, "cudaStreamCreateWithFlags", e);
}

nb_status nbcu_blas(const char *op, int device, cublasHandle_t *handle)
{
    cudaStream_t s;
    nb_status st = nbcu_stream(op, device, &s);
    if (st != NB_OK)
        return st;
    cublasStatus_t b = CUBLAS_STATUS_SUCCESS;
    const char *call = "cublasCreate";
    pthread_mutex_lock(&lock);
    nbcu_device *d = &devices[device];
    if (!d->blas) {
        cublasHandle_t h = NULL;
        b = cublasCreate(&h);
        if (b == CUBLAS_STATUS_SUCCESS) {
            call = "cublasSetStream";
            b = cublasSetStream(h, s);
            if (b == CUBLAS_STATUS_SUCCESS)
                d->blas = h;
            else
                cublasDestroy(h);
        }
    }
    *handle = d->blas;
    pthread_mutex_unlock(&lock);
    return b == CUBLAS_STATUS_SUCCESS ? NB_OK : nbcu_blas_error(op, call, b);
}

static nb_status device_name(int device, char *buf, size_t len)
{
    if (!buf || !len)
        return nbcu_host->error(NB_NULL_ARGUMENT, "device_name: buffer is NULL or empty");
    nb_status st = check_device("device_name", device);
    if (st != NB_OK)
        return st;
    struct cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess)
        return nbcu_cuda_error("device_name", "cudaGetDeviceProperties", e);
    snprintf(buf, len, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return NB_OK;
}

static nb_status cu_alloc(int device, size_t bytes, void **handle)
{
    if (!handle)
        return nbcu_host->error(NB_NULL_ARGUMENT, "alloc: handle pointer is NULL");
    *handle = NULL;
    if (bytes == 0)
        return nbcu_host->error(NB_INVALID_ARGUMENT, "alloc: 0 bytes requested, expected > 0");
    nb_status st = check_device("alloc", device);
    if (st != NB_OK)
        return st;
    /* Whole 256-byte blocks: kernels that update single bytes atomically do so through the
     * aligned 4-byte word holding them, which must lie inside the allocation. */
    if (bytes > SIZE_MAX - 255)
        return nbcu_host->error(NB_OUT_OF_MEMORY, "alloc: %zu bytes requested on cuda:%d, "
                                "more than can be addressed", bytes, device);
    size_t rounded = (bytes + 255) & ~(size_t)255;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return nbcu_cuda_error("alloc", "cudaSetDevice", e);
    void *p = NULL;
    e = cudaMalloc(&p, rounded);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError(); /* an allocation failure is not sticky: clear it for later calls */
        return nbcu_host->error(NB_OUT_OF_MEMORY, "alloc: cudaMalloc of %zu bytes on cuda:%d "
                                "failed: out of device memory", bytes, device);
    }
    if (e != cudaSuccess)
        return nbcu_cuda_error("alloc", "cudaMalloc", e);
    *handle = p;
    return NB_OK;
}

static void cu_free(int device, void *handle)
{
    cudaStream_t s;
    if (!handle || nbcu_stream("free", device, &s) != NB_OK)
        return;
    /* Kernels still queued may use the buffer: let them finish first. */
    cudaStreamSynchronize(s);
    cudaFree(handle);
}

static nb_status cu_write(int device, void *handle, size_t offset, const void *src, size_t bytes)
{
    if (!bytes)
        return NB_OK;
    if (!handle || !src)
        return nbcu_host->error(NB_NULL_ARGUMENT, "write: %s is NULL", handle ? "src" : "handle");
    cudaStream_t s;
    nb_status st = nbcu_stream("write", device, &s);
    if (st != NB_OK)
        return st;
    /* Synchronous: the caller may reuse src as soon as this returns. */
    cudaError_t e = cudaMemcpyAsync((char *)handle + offset, src, bytes, cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess)
        return nbcu_cuda_error("write", "cudaMemcpyAsync", e);
    e = cudaStreamSynchronize(s);
    return e == cudaSuccess ? NB_OK : nbcu_cuda_error("write", "cudaStreamSynchronize", e);
}

static nb_status cu_read(int device, const void *handle, size_t offset, void *dst, size_t bytes)
{
    if (!bytes)
        return NB_OK;
    if (!handle || !dst)
        return nbcu_host->error(NB_NULL_ARGUMENT, "read: %s is NULL", handle ? "dst" : "handle");
    cudaStream_t s;
    nb_status st = nbcu_stream("read", device, &s);
    if (st != NB_OK)
        return st;
    cudaError_t e = cudaMemcpyAsync(dst, (const char *)handle + offset, bytes,
                                    cudaMemcpyDeviceToHost, s);
    if (e != cudaSuccess)
        return nbcu_cuda_error("read", "cudaMemcpyAsync", e);
    e = cudaStreamSynchronize(s);
    return e == cudaSuccess ? NB_OK : nbcu_cuda_error("read", "cudaStreamSynchronize", e);
}

static nb_status cu_synchronize(int device)
{
    cudaStream_t s;
    nb_status st = nbcu_stream("synchronize", device, &s);
    if (st != NB_OK)
        return st;
    cudaError_t e = cudaStreamSynchronize(s);
    return e == cudaSuccess ? NB_OK : nbcu_cuda_error("synchronize", "cudaStreamSynchronize", e);
}

static void cu_shutdown(void)
{
    pthread_mutex_lock(&lock);
    for (int k = 0; k < n_devices; k++) {
        nbcu_device *d = &devices[k];
        if (!d->ready)
            continue;
        cudaSetDevice(k);
        cudaStreamSynchronize(d->stream);
        if (d->blas)
            cublasDestroy(d->blas);
        cudaStreamDestroy(d->stream);
    }
    free(devices);
    devices = NULL;
    n_devices = -1;
    note[0] = '\0';
    pthread_mutex_unlock(&lock);
}

/* The per-file tables, joined once at entry. */
#define NBCU_MAX_KERNELS 4096
static nb_kernel_desc table[NBCU_MAX_KERNELS];

static nb_plugin plugin = {
    .abi_major = NB_PLUGIN_ABI_MAJOR,
    .abi_minor = NB_PLUGIN_ABI_MINOR,
    .size = sizeof(nb_plugin),
    .name = "cuda",
    .version = "0.1.0",
    .device_count = device_count,
    .device_name = device_name,
    .alloc = cu_alloc,
    .free = cu_free,
    .write = cu_write,
    .read = cu_read,
    .synchronize = cu_synchronize,
    .wrap_host = NULL, /* device memory cannot alias host memory here */
    .status_note = status_note,
    .shutdown = cu_shutdown,
    .kernels = table,
    .n_kernels = 0,
};

NB_PLUGIN_EXPORT const nb_plugin *nb_plugin_entry(const nb_host *host)
{
    if (!host || !host->error)
        return NULL;
    if (host->abi_major != NB_PLUGIN_ABI_MAJOR) {
        host->error(NB_ABI_MISMATCH, "cuda plugin: built for plugin ABI %d.%d, the core speaks "
                    "%u.%u", NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR, host->abi_major,
                    host->abi_minor);
        return NULL;
    }
    nbcu_host = host;
    const nb_kernel_desc *parts[] = {nbcu_elementwise_kernels, nbcu_reduce_kernels,
                                     nbcu_matmul_kernels, nbcu_index_kernels, nbcu_nn_kernels,
                                     nbcu_conv_kernels};
    const size_t counts[] = {nbcu_elementwise_count, nbcu_reduce_count, nbcu_matmul_count,
                             nbcu_index_count, nbcu_nn_count, nbcu_conv_count};
    size_t n = 0;
    for (size_t p = 0; p < sizeof counts / sizeof counts[0]; p++) {
        if (n + counts[p] > NBCU_MAX_KERNELS) {
            host->error(NB_STATE, "cuda plugin: more than %d kernels; raise NBCU_MAX_KERNELS",
                        NBCU_MAX_KERNELS);
            return NULL;
        }
        memcpy(table + n, parts[p], counts[p] * sizeof *table);
        n += counts[p];
    }
    plugin.n_kernels = n;
    return &plugin;
}
