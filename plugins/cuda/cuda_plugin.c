/* cuda_plugin.c - the cuda plugin's table: device discovery (only devices this build's kernels
 * run on; 0 and the reason when there is no driver), stream-ordered buffers, host<->device
 * copies that report deferred index errors, cuBLAS loaded on first use, and the per-device
 * stream and cuBLAS handle that every kernel and copy is queued on. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_host.h"
#include "cuda_internal.h"

const nb_host *nbcu_host;
const nbcu_cublas_api *nbcu_cublas;

typedef struct nbcu_device {
    int ordinal;                    /* the CUDA device number behind this plugin index */
    int ready;                      /* stream created */
    int pooled;                     /* memory pools: allocations and frees are stream-ordered */
    cudaStream_t stream;            /* every kernel and copy for this device, in order */
    cublasHandle_t blas;            /* bound to stream; NULL until the first matmul */
    unsigned long long *flags;      /* index check: [0] set, [1] index, [2] size, [3] op */
    unsigned long long *flags_host; /* pinned copy of flags, read at synchronisation points */
} nbcu_device;

/* Guards the fields below; taken for every stream lookup, which keeps the lazy set-up simple
 * (an uncontended lock costs far less than a kernel launch). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static nbcu_device *devices;
static int n_devices = -1; /* -1: not counted yet */
static char note[1024];
static nbcu_cublas_api cublas_api;
static void *cublas_lib;
static char cublas_error[512];

/* Why cudaGetDeviceCount failed: no driver at all, or one too old for this runtime. */
static void driver_note(cudaError_t e)
{
    int libcuda = 0, driver_version = 0, runtime_version = 0;
    char dl_error[256] = "";
    void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (h) {
        libcuda = 1;
        int (*get_version)(int *) = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
        if (get_version)
            get_version(&driver_version);
        dlclose(h);
    } else {
        const char *m = dlerror();
        snprintf(dl_error, sizeof dl_error, "%s", m ? m : "");
    }
    cudaRuntimeGetVersion(&runtime_version);
    nbcu_driver_reason(note, sizeof note, (int)e, cudaGetErrorName(e), libcuda, dl_error,
                       driver_version, runtime_version);
}

/* Appends "; <message>" to the note. */
__attribute__((format(printf, 1, 2))) static void note_add(const char *fmt, ...)
{
    size_t used = strlen(note);
    if (used + 2 >= sizeof note)
        return;
    if (used)
        used += (size_t)snprintf(note + used, sizeof note - used, "; ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(note + used, sizeof note - used, fmt, ap);
    va_end(ap);
}

/* Counts the devices and keeps those this build can run on: a device whose compute capability
 * has no cubin and no older PTX in the fatbin (a T4 under an sm_80-only build) would fail every
 * launch with cudaErrorNoKernelImageForDevice, so it is not offered; the note says why. This
 * reads device properties only, so no CUDA context is created before a device is used (a
 * context costs hundreds of MB per GPU); the first use of a device then asks the driver itself
 * (cudaFuncGetAttributes on a kernel, in device_setup). */
static void discover(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        driver_note(e);
        cudaGetLastError();
        n_devices = 0;
        return;
    }
    if (n == 0) {
        snprintf(note, sizeof note, "no CUDA device found (the driver reports 0 devices)");
        n_devices = 0;
        return;
    }
    if (!(devices = calloc((size_t)n, sizeof *devices))) {
        snprintf(note, sizeof note, "out of host memory for %d CUDA devices", n);
        n_devices = 0;
        return;
    }
    int usable = 0;
    for (int k = 0; k < n; k++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, k) != cudaSuccess) {
            cudaGetLastError();
            note_add("CUDA device %d skipped: cudaGetDeviceProperties failed", k);
            continue;
        }
        int runs = nbcu_archs_run_on(nbcu_built_archs, p.major, p.minor);
        if (runs < 0) {
            /* An architecture list this cannot read (native, all): ask the device, at the
             * cost of creating its context now. */
            cudaError_t pe = cudaSetDevice(k);
            if (pe == cudaSuccess)
                pe = nbcu_probe_kernels();
            runs = pe == cudaSuccess;
            cudaGetLastError();
        }
        if (!runs) {
            note_add("CUDA device %d (%s, sm_%d%d) skipped: this build has no kernels it can "
                     "run (built for %s; rebuild with CMAKE_CUDA_ARCHITECTURES including it)", k,
                     p.name, p.major, p.minor, nbcu_built_archs);
            continue;
        }
        devices[usable++].ordinal = k;
    }
    if (usable == 0 && !note[0])
        snprintf(note, sizeof note, "no usable CUDA device");
    n_devices = usable;
}

static int device_count(void)
{
    pthread_mutex_lock(&lock);
    if (n_devices < 0)
        discover();
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
    const char *name = nbcu_cublas ? nbcu_cublas->status_name(s) : "cuBLAS error";
    const char *text = nbcu_cublas ? nbcu_cublas->status_string(s) : "";
    return nbcu_host->error(st, "%s: %s failed: %s (%s)", op, call, name, text);
}

/* First use of a device on this process: its stream, the index-check words, and the default
 * memory pool's release threshold (without one the pool hands memory back to the driver at
 * every synchronisation, and the next allocation maps it again). Called with the lock held. */
static cudaError_t device_setup(nbcu_device *d, const char **call)
{
    cudaError_t e;
    *call = "checking that this build's kernels run on the device (cudaFuncGetAttributes)";
    if ((e = nbcu_probe_kernels()) != cudaSuccess)
        return e;
    int pools = 0;
    *call = "cudaDeviceGetAttribute";
    if ((e = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, d->ordinal)) !=
        cudaSuccess)
        return e;
    if (pools) {
        cudaMemPool_t pool;
        uint64_t keep = UINT64_MAX; /* the core's caching allocator decides what to keep */
        *call = "cudaMemPoolSetAttribute";
        if ((e = cudaDeviceGetDefaultMemPool(&pool, d->ordinal)) != cudaSuccess ||
            (e = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep)) !=
                cudaSuccess)
            return e;
    }
    *call = "cudaStreamCreateWithFlags";
    if ((e = cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return e;
    *call = "allocating the index-check words";
    if ((e = cudaMalloc((void **)&d->flags, 4 * sizeof *d->flags)) == cudaSuccess &&
        (e = cudaMallocHost((void **)&d->flags_host, 4 * sizeof *d->flags_host)) == cudaSuccess)
        e = cudaMemset(d->flags, 0, 4 * sizeof *d->flags);
    if (e != cudaSuccess) {
        cudaFree(d->flags);
        cudaFreeHost(d->flags_host);
        d->flags = d->flags_host = NULL;
        cudaStreamDestroy(d->stream);
        return e;
    }
    d->flags_host[0] = 0;
    d->pooled = pools;
    d->ready = 1;
    return cudaSuccess;
}

nb_status nbcu_stream(const char *op, int device, cudaStream_t *stream)
{
    nb_status st = check_device(op, device);
    if (st != NB_OK)
        return st;
    nbcu_device *d = &devices[device];
    cudaError_t e = cudaSetDevice(d->ordinal);
    if (e != cudaSuccess)
        return nbcu_cuda_error(op, "cudaSetDevice", e);
    const char *call = "";
    pthread_mutex_lock(&lock);
    if (!d->ready)
        e = device_setup(d, &call);
    *stream = d->stream;
    pthread_mutex_unlock(&lock);
    if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction) {
        cudaGetLastError();
        return nbcu_host->error(NB_DEVICE_ERROR, "%s: cuda:%d cannot run this build's kernels "
                                "(%s; built for %s)", op, device, cudaGetErrorName(e),
                                nbcu_built_archs);
    }
    if (e == cudaErrorMemoryAllocation)
        cudaGetLastError();
    return e == cudaSuccess ? NB_OK : nbcu_cuda_error(op, call, e);
}

unsigned long long *nbcu_index_flags(int device) { return devices[device].flags; }

/* Loads cuBLAS by its soname, then from the toolkit it was built against. */
static void load_cublas(void)
{
#define NBCU_STR2(x) #x
#define NBCU_STR(x) NBCU_STR2(x)
    const char *soname = "libcublas.so." NBCU_STR(CUBLAS_VER_MAJOR);
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    char first[256];
    const char *m = h ? NULL : dlerror();
    snprintf(first, sizeof first, "%s", m ? m : "");
#ifdef NBCU_CUBLAS_DIR
    if (!h)
        h = dlopen(NBCU_CUBLAS_DIR "/libcublas.so." NBCU_STR(CUBLAS_VER_MAJOR),
                   RTLD_NOW | RTLD_LOCAL);
#endif
    if (!h) {
        snprintf(cublas_error, sizeof cublas_error, "cuBLAS (%s) not found: %s; install the "
                 "CUDA toolkit's cuBLAS (Debian/Ubuntu: libcublas-%d-%d) or add its folder to "
                 "LD_LIBRARY_PATH", soname, first, CUBLAS_VER_MAJOR, CUBLAS_VER_MINOR);
        return;
    }
    struct { void **slot; const char *name; } syms[] = {
        {(void **)&cublas_api.create, "cublasCreate_v2"},
        {(void **)&cublas_api.destroy, "cublasDestroy_v2"},
        {(void **)&cublas_api.set_stream, "cublasSetStream_v2"},
        {(void **)&cublas_api.status_name, "cublasGetStatusName"},
        {(void **)&cublas_api.status_string, "cublasGetStatusString"},
        {(void **)&cublas_api.sgemm_strided_batched, "cublasSgemmStridedBatched"},
        {(void **)&cublas_api.dgemm_strided_batched, "cublasDgemmStridedBatched"},
        {(void **)&cublas_api.gemm_strided_batched_ex, "cublasGemmStridedBatchedEx"},
        {(void **)&cublas_api.gemm_ex, "cublasGemmEx"},
    };
    for (size_t k = 0; k < sizeof syms / sizeof syms[0]; k++)
        if (!(*syms[k].slot = dlsym(h, syms[k].name))) {
            snprintf(cublas_error, sizeof cublas_error, "%s lacks %s", soname, syms[k].name);
            dlclose(h);
            memset(&cublas_api, 0, sizeof cublas_api);
            return;
        }
    cublas_lib = h;
    nbcu_cublas = &cublas_api;
#undef NBCU_STR
#undef NBCU_STR2
}

/* The prototypes above must be cuBLAS's own. */
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasCreate_v2),
                                            __typeof__(cublas_api.create)), "cublasCreate");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasDestroy_v2),
                                            __typeof__(cublas_api.destroy)), "cublasDestroy");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasSetStream_v2),
                                            __typeof__(cublas_api.set_stream)), "cublasSetStream");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasGetStatusName),
                                            __typeof__(cublas_api.status_name)), "StatusName");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasGetStatusString),
                                            __typeof__(cublas_api.status_string)), "StatusString");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasSgemmStridedBatched),
                                            __typeof__(cublas_api.sgemm_strided_batched)),
               "cublasSgemmStridedBatched");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasDgemmStridedBatched),
                                            __typeof__(cublas_api.dgemm_strided_batched)),
               "cublasDgemmStridedBatched");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasGemmStridedBatchedEx),
                                            __typeof__(cublas_api.gemm_strided_batched_ex)),
               "cublasGemmStridedBatchedEx");
_Static_assert(__builtin_types_compatible_p(__typeof__(&cublasGemmEx),
                                            __typeof__(cublas_api.gemm_ex)), "cublasGemmEx");

nb_status nbcu_blas(const char *op, int device, cublasHandle_t *handle)
{
    cudaStream_t s;
    nb_status st = nbcu_stream(op, device, &s);
    if (st != NB_OK)
        return st;
    cublasStatus_t b = CUBLAS_STATUS_SUCCESS;
    const char *call = "cublasCreate";
    pthread_mutex_lock(&lock);
    if (!nbcu_cublas && !cublas_error[0])
        load_cublas();
    if (!nbcu_cublas) {
        pthread_mutex_unlock(&lock);
        return nbcu_host->error(NB_NOT_IMPLEMENTED, "%s: %s", op, cublas_error);
    }
    nbcu_device *d = &devices[device];
    if (!d->blas) {
        cublasHandle_t h = NULL;
        b = nbcu_cublas->create(&h);
        if (b == CUBLAS_STATUS_SUCCESS) {
            call = "cublasSetStream";
            b = nbcu_cublas->set_stream(h, s);
            if (b == CUBLAS_STATUS_SUCCESS)
                d->blas = h;
            else
                nbcu_cublas->destroy(h);
        }
    }
    *handle = d->blas;
    pthread_mutex_unlock(&lock);
    return b == CUBLAS_STATUS_SUCCESS ? NB_OK : nbcu_blas_error(op, call, b);
}

nb_status nbcu_malloc(const char *op, int device, cudaStream_t stream, size_t bytes, void **p)
{
    *p = NULL;
    int pooled = devices[device].pooled;
    cudaError_t e = pooled ? cudaMallocAsync(p, bytes, stream) : cudaMalloc(p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        /* Not sticky: clear it, or the next launch on this thread reports it as its own.
         * Memory freed on the stream returns to the pool once the stream passes the free:
         * wait for that once and try again. */
        cudaGetLastError();
        if (pooled && cudaStreamSynchronize(stream) == cudaSuccess)
            e = cudaMallocAsync(p, bytes, stream);
        if (e == cudaErrorMemoryAllocation)
            cudaGetLastError();
    }
    if (e == cudaErrorMemoryAllocation) {
        *p = NULL;
        return nbcu_host->error(NB_OUT_OF_MEMORY, "%s: allocating %zu bytes on cuda:%d failed: "
                                "out of device memory", op, bytes, device);
    }
    if (e != cudaSuccess) {
        *p = NULL;
        return nbcu_cuda_error(op, pooled ? "cudaMallocAsync" : "cudaMalloc", e);
    }
    return NB_OK;
}

void nbcu_free(int device, cudaStream_t stream, void *p)
{
    if (!p)
        return;
    if (devices[device].pooled) {
        cudaFreeAsync(p, stream); /* after the queued work that may still use p */
    } else {
        /* No pools (some virtualised or old setups): cudaFree would not wait for this
         * stream's kernels, so wait for them first. */
        cudaStreamSynchronize(stream);
        cudaFree(p);
    }
}

/* Reports an out-of-range index recorded since the last check, then clears the record. The
 * stream must have been synchronised after queueing the copy of the flags. */
static nb_status index_check_result(int device)
{
    nbcu_device *d = &devices[device];
    unsigned long long f[4];
    memcpy(f, d->flags_host, sizeof f);
    if (!f[0])
        return NB_OK;
    d->flags_host[0] = 0;
    cudaMemsetAsync(d->flags, 0, 4 * sizeof *d->flags, d->stream);
    static const char *ops[] = {"an indexed op", "gather", "scatter_add", "max_pool2d_backward"};
    return nbcu_host->error(NB_INDEX_OUT_OF_RANGE, "%s: index %lld is out of bounds for a dim "
                            "of size %lld (found by the device, reported at the next "
                            "synchronisation on cuda:%d)", ops[f[3] < 4 ? f[3] : 0],
                            (long long)f[1], (long long)f[2], device);
}

/* Queues the copy of the index-check words, waits for the stream, and reports what it holds. */
static nb_status sync_and_check(const char *op, int device, cudaStream_t s)
{
    nbcu_device *d = &devices[device];
    cudaError_t e = cudaMemcpyAsync(d->flags_host, d->flags, 4 * sizeof *d->flags,
                                    cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(s);
    if (e != cudaSuccess)
        return nbcu_cuda_error(op, "cudaStreamSynchronize", e);
    return index_check_result(device);
}

static nb_status device_name(int device, char *buf, size_t len)
{
    if (!buf || !len)
        return nbcu_host->error(NB_NULL_ARGUMENT, "device_name: buffer is NULL or empty");
    nb_status st = check_device("device_name", device);
    if (st != NB_OK)
        return st;
    struct cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, devices[device].ordinal);
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
    /* Whole 256-byte blocks: kernels that update single bytes atomically do so through the
     * aligned 4-byte word holding them, which must lie inside the allocation. */
    if (bytes > SIZE_MAX - 255)
        return nbcu_host->error(NB_OUT_OF_MEMORY, "alloc: %zu bytes requested on cuda:%d, "
                                "more than can be addressed", bytes, device);
    cudaStream_t s;
    nb_status st = nbcu_stream("alloc", device, &s);
    if (st != NB_OK)
        return st;
    return nbcu_malloc("alloc", device, s, (bytes + 255) & ~(size_t)255, handle);
}

/* Stream-ordered: the memory returns to the pool once the kernels queued before it are done,
 * and the host never waits here (autograd frees many temporaries per step). */
static void cu_free(int device, void *handle)
{
    cudaStream_t s;
    if (!handle || nbcu_stream("free", device, &s) != NB_OK)
        return;
    nbcu_free(device, s, handle);
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
    return sync_and_check("read", device, s);
}

static nb_status cu_synchronize(int device)
{
    cudaStream_t s;
    nb_status st = nbcu_stream("synchronize", device, &s);
    if (st != NB_OK)
        return st;
    return sync_and_check("synchronize", device, s);
}

static void cu_shutdown(void)
{
    pthread_mutex_lock(&lock);
    for (int k = 0; k < n_devices; k++) {
        nbcu_device *d = &devices[k];
        if (!d->ready)
            continue;
        cudaSetDevice(d->ordinal);
        cudaStreamSynchronize(d->stream);
        if (d->blas)
            nbcu_cublas->destroy(d->blas);
        cudaFree(d->flags);
        cudaFreeHost(d->flags_host);
        cudaStreamDestroy(d->stream);
    }
    free(devices);
    devices = NULL;
    n_devices = -1;
    note[0] = '\0';
    /* cuBLAS stays loaded: its handles are gone, and a later init reuses it. */
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
