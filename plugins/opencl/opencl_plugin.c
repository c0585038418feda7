/* opencl_plugin.c - the opencl plugin's device side: every device of every OpenCL platform as
 * opencl:N (GPUs first), one context and in-order queue each, buffers, the index flag read at
 * synchronisation points, and kernel programs built once per (device, dtype).
 *
 * Environment:
 *   NABLA_OPENCL_NO_FP64=1     treat every device as lacking cl_khr_fp64 (no float64 kernels)
 *   NABLA_OPENCL_C_VERSION=1.1 build the programs as for an OpenCL C 1.1 device
 *   NABLA_OPENCL_GEMM=own      the plugin's own GEMM kernel instead of CLBlast; =clblast-default
 *                              CLBlast with its own direct/indirect choice on CPU runtimes
 *                              too (see opencl_blas.c)
 *   NABLA_OPENCL_CONV=gemm|direct  every conv2d as GEMMs or as the direct kernels (see
 *                              opencl_conv.c for the default)
 *   NABLA_OPENCL_SCATTER=serial|chunks  scatter_add one work-item per line, or in parallel
 *                              chunks (see opencl_index.c for the default)
 *   NABLA_OPENCL_CACHE_DIR=path  folder of the compiled-program cache (default
 *                              $XDG_CACHE_HOME/nabla, else ~/.cache/nabla); "off" disables it
 *                              (see opencl_cache.c) */
#include "opencl_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const nb_host *ocl_host;

extern const char *const nbk_sources[];
extern const size_t nbk_n_sources;

static ocl_dev *devs;
static int n_devs;
static int discovered;
static pthread_mutex_t discover_lock = PTHREAD_MUTEX_INITIALIZER;
static char note[512];
static nb_kernel_desc table[OCL_MAX_TABLE];
static void plugin_set_kernels(int with_f64);

static const char *const kernel_names[OCL_K_COUNT] = {
#define OCL_NAME_(name) #name,
    OCL_KERNELS(OCL_NAME_)
#undef OCL_NAME_
};

const char *ocl_err_name(cl_int err)
{
    switch (err) {
#define E_(name) case name: return #name;
        E_(CL_SUCCESS) E_(CL_DEVICE_NOT_FOUND) E_(CL_DEVICE_NOT_AVAILABLE)
        E_(CL_COMPILER_NOT_AVAILABLE) E_(CL_MEM_OBJECT_ALLOCATION_FAILURE)
        E_(CL_OUT_OF_RESOURCES) E_(CL_OUT_OF_HOST_MEMORY) E_(CL_PROFILING_INFO_NOT_AVAILABLE)
        E_(CL_MEM_COPY_OVERLAP) E_(CL_IMAGE_FORMAT_MISMATCH) E_(CL_IMAGE_FORMAT_NOT_SUPPORTED)
        E_(CL_BUILD_PROGRAM_FAILURE) E_(CL_MAP_FAILURE) E_(CL_MISALIGNED_SUB_BUFFER_OFFSET)
        E_(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST) E_(CL_COMPILE_PROGRAM_FAILURE)
        E_(CL_LINKER_NOT_AVAILABLE) E_(CL_LINK_PROGRAM_FAILURE) E_(CL_DEVICE_PARTITION_FAILED)
        E_(CL_KERNEL_ARG_INFO_NOT_AVAILABLE) E_(CL_INVALID_VALUE) E_(CL_INVALID_DEVICE_TYPE)
        E_(CL_INVALID_PLATFORM) E_(CL_INVALID_DEVICE) E_(CL_INVALID_CONTEXT)
        E_(CL_INVALID_QUEUE_PROPERTIES) E_(CL_INVALID_COMMAND_QUEUE) E_(CL_INVALID_HOST_PTR)
        E_(CL_INVALID_MEM_OBJECT) E_(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
        E_(CL_INVALID_IMAGE_SIZE) E_(CL_INVALID_SAMPLER) E_(CL_INVALID_BINARY)
        E_(CL_INVALID_BUILD_OPTIONS) E_(CL_INVALID_PROGRAM) E_(CL_INVALID_PROGRAM_EXECUTABLE)
        E_(CL_INVALID_KERNEL_NAME) E_(CL_INVALID_KERNEL_DEFINITION) E_(CL_INVALID_KERNEL)
        E_(CL_INVALID_ARG_INDEX) E_(CL_INVALID_ARG_VALUE) E_(CL_INVALID_ARG_SIZE)
        E_(CL_INVALID_KERNEL_ARGS) E_(CL_INVALID_WORK_DIMENSION)
        E_(CL_INVALID_WORK_GROUP_SIZE) E_(CL_INVALID_WORK_ITEM_SIZE)
        E_(CL_INVALID_GLOBAL_OFFSET) E_(CL_INVALID_EVENT_WAIT_LIST) E_(CL_INVALID_EVENT)
        E_(CL_INVALID_OPERATION) E_(CL_INVALID_GL_OBJECT) E_(CL_INVALID_BUFFER_SIZE)
        E_(CL_INVALID_MIP_LEVEL) E_(CL_INVALID_GLOBAL_WORK_SIZE) E_(CL_INVALID_PROPERTY)
        E_(CL_INVALID_IMAGE_DESCRIPTOR) E_(CL_INVALID_COMPILER_OPTIONS)
        E_(CL_INVALID_LINKER_OPTIONS) E_(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef E_
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "unknown OpenCL error";
    }
}

nb_status ocl_fail(nb_status st, const char *op, const char *call, cl_int err)
{
    if (err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_HOST_MEMORY)
        st = NB_OUT_OF_MEMORY;
    return ocl_host->error(st, "opencl %s: %s failed: %s (%d)", op, call, ocl_err_name(err),
                           (int)err);
}

/* ---- Discovery ---- */

/* NABLA_OPENCL_NO_FP64=1 makes every device look as if it lacked cl_khr_fp64: f64 leaves the
 * kernel table and the programs are built without doubles, as on most embedded GPUs. */
static int fp64_switched_off(void)
{
    const char *e = getenv("NABLA_OPENCL_NO_FP64");
    return e && *e && strcmp(e, "0") != 0;
}

/* "OpenCL C 1.2 ..." as 12; 0 when unreadable. NABLA_OPENCL_C_VERSION=1.1 caps it, so that a
 * 1.2 runtime such as PoCL builds the programs as a 1.1 device would (a test of that path). */
static int opencl_c_version(cl_device_id id)
{
    char v[128] = {0};
    int major = 0, minor = 0, cap_major = 0, cap_minor = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_OPENCL_C_VERSION, sizeof v - 1, v, NULL) != CL_SUCCESS ||
        sscanf(v, "OpenCL C %d.%d", &major, &minor) != 2)
        return 0;
    int ver = major * 10 + minor;
    const char *cap = getenv("NABLA_OPENCL_C_VERSION");
    if (cap && sscanf(cap, "%d.%d", &cap_major, &cap_minor) == 2 &&
        cap_major * 10 + cap_minor < ver)
        ver = cap_major * 10 + cap_minor;
    return ver;
}

static void init_device(cl_device_id id, cl_device_type type)
{
    ocl_dev *d = &devs[n_devs];
    memset(d, 0, sizeof *d);
    d->id = id;
    d->index = n_devs;
    d->is_gpu = (type & CL_DEVICE_TYPE_GPU) != 0;
    if (clGetDeviceInfo(id, CL_DEVICE_NAME, sizeof d->name - 1, d->name, NULL) != CL_SUCCESS)
        snprintf(d->name, sizeof d->name, "OpenCL device");
    /* what names the compiler: the program cache's key, and nabla-info's lines */
    cl_platform_id plat = NULL;
    char pname[128] = "", pver[120] = "";
    if (clGetDeviceInfo(id, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL) == CL_SUCCESS) {
        clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
        clGetPlatformInfo(plat, CL_PLATFORM_VERSION, sizeof pver - 1, pver, NULL);
    }
    snprintf(d->platform, sizeof d->platform, "%s (%s)", pname, pver);
    clGetDeviceInfo(id, CL_DRIVER_VERSION, sizeof d->driver - 1, d->driver, NULL);
    clGetDeviceInfo(id, CL_DEVICE_VERSION, sizeof d->version - 1, d->version, NULL);
    clGetDeviceInfo(id, CL_DEVICE_OPENCL_C_VERSION, sizeof d->clc_version - 1, d->clc_version,
                    NULL);
    d->cl_c_minor = opencl_c_version(id);
    if (d->cl_c_minor < 11) {
        /* the kernels need OpenCL C 1.1 (32-bit atomics, 3-d work-groups of any size) */
        ocl_host->log(NB_LOG_WARN, "opencl: skipping %s: it reports OpenCL C %d.%d, the kernels "
                      "need 1.1 or later", d->name, d->cl_c_minor / 10, d->cl_c_minor % 10);
        return;
    }
    cl_int err;
    d->ctx = clCreateContext(NULL, 1, &id, NULL, NULL, &err);
    if (!d->ctx) {
        ocl_host->log(NB_LOG_WARN, "opencl: skipping %s: clCreateContext failed: %s (%d)",
                      d->name, ocl_err_name(err), (int)err);
        return;
    }
    d->queue = clCreateCommandQueue(d->ctx, id, 0, &err);
    if (!d->queue) {
        ocl_host->log(NB_LOG_WARN, "opencl: skipping %s: clCreateCommandQueue failed: %s (%d)",
                      d->name, ocl_err_name(err), (int)err);
        clReleaseContext(d->ctx);
        return;
    }
    cl_device_fp_config fp64 = 0;
    clGetDeviceInfo(id, CL_DEVICE_DOUBLE_FP_CONFIG, sizeof fp64, &fp64, NULL);
    char ext[8192] = {0};
    clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, sizeof ext - 1, ext, NULL);
    d->has_fp64 = (fp64 != 0 || strstr(ext, "cl_khr_fp64") != NULL) && !fp64_switched_off();
    d->has_fp16 = strstr(ext, "cl_khr_fp16") != NULL;
    clGetDeviceInfo(id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof d->compute_units,
                    &d->compute_units, NULL);
    if (d->compute_units == 0)
        d->compute_units = 1;
    clGetDeviceInfo(id, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof d->max_alloc, &d->max_alloc, NULL);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&d->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    n_devs++;
}

typedef struct found {
    cl_device_id id;
    cl_device_type type;
} found;

/* GPUs, then accelerators, then the rest (CPU runtimes such as PoCL); ICD order within each. */
static int rank(cl_device_type t)
{
    return (t & CL_DEVICE_TYPE_GPU) ? 0 : (t & CL_DEVICE_TYPE_ACCELERATOR) ? 1 : 2;
}

static void discover(void)
{
    ocl_cache_init();
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &np);
    if (err != CL_SUCCESS || np == 0) {
        snprintf(note, sizeof note, "no OpenCL platform found (clGetPlatformIDs returned %d)",
                 err != CL_SUCCESS ? (int)err : -1001);
        return;
    }
    cl_platform_id *plats = calloc(np, sizeof *plats);
    if (!plats || clGetPlatformIDs(np, plats, NULL) != CL_SUCCESS) {
        snprintf(note, sizeof note, "cannot list the %u OpenCL platforms", np);
        free(plats);
        return;
    }
    cl_uint total = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) == CL_SUCCESS)
            total += nd;
    }
    found *all = total ? calloc(total, sizeof *all) : NULL;
    /* devs never moves once kernels hold pointers into it */
    devs = total ? calloc(total, sizeof *devs) : NULL;
    if (total == 0 || !all || !devs) {
        if (total == 0)
            snprintf(note, sizeof note, "%u OpenCL platform%s but no device", np,
                     np == 1 ? "" : "s");
        else
            snprintf(note, sizeof note, "out of host memory listing %u OpenCL devices", total);
        free(all);
        free(devs);
        devs = NULL;
        free(plats);
        return;
    }
    cl_uint n_found = 0;
    for (cl_uint p = 0; p < np && n_found < total; p++) {
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || !nd)
            continue;
        cl_device_id *ids = malloc(nd * sizeof *ids);
        if (!ids || clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, ids, NULL) != CL_SUCCESS) {
            free(ids);
            continue;
        }
        if (nd > total - n_found) /* a device appeared since counting */
            nd = total - n_found;
        for (cl_uint k = 0; k < nd; k++) {
            all[n_found].id = ids[k];
            all[n_found].type = CL_DEVICE_TYPE_DEFAULT;
            clGetDeviceInfo(ids[k], CL_DEVICE_TYPE, sizeof all[n_found].type,
                            &all[n_found].type, NULL);
            n_found++;
        }
        free(ids);
    }
    free(plats);
    for (int r = 0; r < 3; r++)
        for (cl_uint k = 0; k < n_found; k++)
            if (rank(all[k].type) == r)
                init_device(all[k].id, all[k].type);
    free(all);
    if (n_devs == 0) {
        snprintf(note, sizeof note, "%u OpenCL device%s found, none usable (see the log)", total,
                 total == 1 ? "" : "s");
        return;
    }
    int all_fp64 = 1;
    for (int i = 0; i < n_devs; i++) {
        all_fp64 &= devs[i].has_fp64;
        ocl_host->log(NB_LOG_INFO, "opencl:%d is %s (%s, OpenCL C %d.%d, fp64 %s)", i,
                      devs[i].name, devs[i].is_gpu ? "GPU" : "not a GPU",
                      devs[i].cl_c_minor / 10, devs[i].cl_c_minor % 10,
                      devs[i].has_fp64 ? "yes" : fp64_switched_off() ? "off (NABLA_OPENCL_NO_FP64)"
                                                                   : "no");
    }
    /* one kernel table serves every device: f64 only where all of them have it, so that on the
     * others the core's fallback (NABLA_CPU_FALLBACK) applies instead of a failing kernel */
    plugin_set_kernels(all_fp64);
    ocl_host->log(NB_LOG_INFO, "opencl: GEMM (matmul, conv2d): %s; float64 kernels %s",
                  ocl_gemm_name(), all_fp64 ? "registered" : "not registered (a device lacks "
                  "cl_khr_fp64)");
}

ocl_dev *ocl_device(int device, const char *op)
{
    if (device < 0 || device >= n_devs) {
        ocl_host->error(NB_DEVICE_OUT_OF_RANGE, "opencl %s: device index %d out of range: %d "
                        "opencl device%s", op, device, n_devs, n_devs == 1 ? "" : "s");
        return NULL;
    }
    return &devs[device];
}

void ocl_lock(ocl_dev *d) { pthread_mutex_lock(&d->lock); }
void ocl_unlock(ocl_dev *d) { pthread_mutex_unlock(&d->lock); }

/* ---- Programs and kernels ---- */

static cl_program build_program(ocl_dev *d, nb_dtype dt, const char *op)
{
    if (d->prog[dt])
        return d->prog[dt];
    if (d->prog_failed[dt]) {
        ocl_host->error(NB_DEVICE_ERROR, "opencl %s: the %s kernels failed to build on %s "
                        "earlier", op, ocl_dt_name[dt], d->name);
        return NULL;
    }
    if (dt == NB_DTYPE_F64 && !d->has_fp64) {
        ocl_host->error(NB_DTYPE_UNSUPPORTED, "opencl %s: f64 needs cl_khr_fp64, which %s does "
                        "not report", op, d->name);
        return NULL;
    }
    /* programs are OpenCL C 1.1 or 1.2, whichever the device reports (2.x/3.0 devices build
     * 1.2); FP_CONTRACT is off in common.cl so that results match the CPU bit for bit */
    char opts[160], key[2048], what[32];
    snprintf(opts, sizeof opts, "-cl-std=CL1.%d -DNBK_KIND=%d -DHAS_FP64=%d -DNBK_CHUNK=%d",
             d->cl_c_minor >= 12 ? 2 : 1, (int)dt, d->has_fp64, ocl_chunk(d));
    snprintf(what, sizeof what, "%s kernels", ocl_dt_name[dt]);
    ocl_cache_key(d, opts, key, sizeof key);
    cl_program p = ocl_cache_load(d, key, opts, what);
    if (p) {
        d->prog[dt] = p;
        d->progs_loaded++;
        return p;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cl_int err;
    p = clCreateProgramWithSource(d->ctx, (cl_uint)nbk_n_sources, (const char **)nbk_sources,
                                  NULL, &err);
    if (!p) {
        ocl_fail(NB_DEVICE_ERROR, op, "clCreateProgramWithSource", err);
        return NULL;
    }
    err = clBuildProgram(p, 1, &d->id, opts, NULL, NULL);
    if (err != CL_SUCCESS) {
        size_t len = 0;
        clGetProgramBuildInfo(p, d->id, CL_PROGRAM_BUILD_LOG, 0, NULL, &len);
        char *log = malloc(len + 1);
        if (log) {
            log[0] = '\0';
            clGetProgramBuildInfo(p, d->id, CL_PROGRAM_BUILD_LOG, len, log, NULL);
            log[len] = '\0';
            ocl_host->log(NB_LOG_ERROR, "opencl: build log for the %s kernels on %s:\n%s",
                          ocl_dt_name[dt], d->name, log);
        }
        ocl_host->error(NB_DEVICE_ERROR, "opencl %s: building the %s kernels on %s failed: %s "
                        "(%d): %.600s", op, ocl_dt_name[dt], d->name, ocl_err_name(err),
                        (int)err, log ? log : "");
        free(log);
        clReleaseProgram(p);
        d->prog_failed[dt] = 1;
        return NULL;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int saved = ocl_cache_save(d, p, key, what);
    ocl_host->log(NB_LOG_INFO, "opencl: %s for %s: built from source in %.0f ms%s%s", what,
                  d->name, (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6,
                  saved ? ", saved to the program cache in " : "", saved ? ocl_cache_dir() : "");
    d->progs_built++;
    d->prog[dt] = p;
    return p;
}

int ocl_chunk(const ocl_dev *d)
{
    return d->is_gpu ? 1 : NBK_CHUNK_CPU;
}

int ocl_half_kernel(ocl_kid kid)
{
#define OCL_HALF_CASE_(name) case OCL_K_##name:
    switch (kid) {
    OCL_HALF_KERNELS(OCL_HALF_CASE_)
        return 1;
    default:
        return 0;
    }
#undef OCL_HALF_CASE_
}

cl_kernel ocl_kernel(ocl_dev *d, nb_dtype dt, ocl_kid kid, const char *op, size_t *max_wg)
{
    cl_kernel k = NULL;
    if ((unsigned)dt >= NB_DTYPE_COUNT) {
        ocl_host->error(NB_INVALID_ARGUMENT, "opencl %s: dtype %d, expected 0..%d", op, (int)dt,
                        NB_DTYPE_COUNT - 1);
        return NULL;
    }
    /* a float kernel over 2-byte elements would reach past the buffer's end */
    if (OCL_IS_HALF(dt) && !ocl_half_kernel(kid)) {
        ocl_host->error(NB_DTYPE_UNSUPPORTED, "opencl %s: no %s kernel on opencl:%d (the %s "
                        "kernels of this plugin are float32/float64 only)", op,
                        dt == NB_DTYPE_F16 ? "float16" : "bfloat16", d->index, op);
        return NULL;
    }
    ocl_lock(d);
    if (!d->kern[dt][kid]) {
        cl_program p = build_program(d, dt, op);
        if (p) {
            cl_int err;
            k = clCreateKernel(p, kernel_names[kid], &err);
            if (!k) {
                ocl_host->error(NB_NOT_IMPLEMENTED, "opencl %s: no kernel '%s' for %s on %s: %s "
                                "(%d)", op, kernel_names[kid], ocl_dt_name[dt], d->name,
                                ocl_err_name(err), (int)err);
            } else {
                size_t wg = 0;
                if (clGetKernelWorkGroupInfo(k, d->id, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg,
                                             NULL) != CL_SUCCESS || wg == 0)
                    wg = 1;
                d->kern[dt][kid] = k;
                d->kern_wg[dt][kid] = wg;
            }
        }
    }
    k = d->kern[dt][kid];
    if (k && max_wg)
        *max_wg = d->kern_wg[dt][kid];
    ocl_unlock(d);
    return k;
}

/* The argument record of kernel k (the device locked), or NULL when there is none to be had:
 * then every argument is set. */
static ocl_argcache *arg_cache(ocl_dev *d, cl_kernel k)
{
    if (!d->argcache) {
        d->argcache = calloc(OCL_ARG_SLOTS, sizeof *d->argcache);
        if (!d->argcache)
            return NULL;
    }
    size_t h = ((uintptr_t)k >> 4) % OCL_ARG_SLOTS;
    for (size_t probe = 0; probe < OCL_ARG_SLOTS; probe++, h = (h + 1) % OCL_ARG_SLOTS) {
        ocl_argcache *c = &d->argcache[h];
        if (c->k == k)
            return c;
        if (!c->k) {
            c->k = k;
            c->nargs = -1;
            return c;
        }
    }
    return NULL;
}

nb_status ocl_launch(ocl_dev *d, cl_kernel k, const char *op, int nargs, const ocl_arg *args,
                     cl_uint dims, const size_t *global, const size_t *local)
{
    nb_status st = NB_OK;
    /* arguments live in the kernel object: set and enqueue under one lock, and set only those
     * whose value differs from what this kernel object holds already */
    ocl_lock(d);
    ocl_argcache *c = nargs <= OCL_ARG_MAX ? arg_cache(d, k) : NULL;
    int known = c && c->nargs == nargs; /* stays true while sizes match, so offsets agree */
    size_t off = 0;
    for (int a = 0; a < nargs && st == NB_OK; a++) {
        size_t size = args[a].size;
        int fits = c && off + size <= OCL_ARG_BYTES;
        known = known && fits && c->size[a] == size;
        int same = known && (args[a].ptr ? !c->local[a] && memcmp(c->val + off, args[a].ptr,
                                                                   size) == 0
                                         : c->local[a]);
        if (!same) {
            cl_int err = clSetKernelArg(k, (cl_uint)a, size, args[a].ptr);
            if (err != CL_SUCCESS) {
                char call[64];
                snprintf(call, sizeof call, "clSetKernelArg(%d)", a);
                st = ocl_fail(NB_DEVICE_ERROR, op, call, err);
            } else if (fits) {
                c->size[a] = size;
                c->local[a] = args[a].ptr == NULL;
                if (args[a].ptr)
                    memcpy(c->val + off, args[a].ptr, size);
            }
        }
        if (c && !fits)
            c = NULL; /* the rest does not fit the record: forget it below */
        off += size;
    }
    ocl_argcache *rec = nargs <= OCL_ARG_MAX ? arg_cache(d, k) : NULL;
    if (rec)
        rec->nargs = st == NB_OK && c ? nargs : -1;
    if (st == NB_OK) {
        cl_int err = clEnqueueNDRangeKernel(d->queue, k, dims, NULL, global, local, 0, NULL, NULL);
        if (err != CL_SUCCESS)
            st = ocl_fail(NB_DEVICE_ERROR, op, "clEnqueueNDRangeKernel", err);
    }
    ocl_unlock(d);
    return st;
}

static nb_status grow(ocl_dev *d, const char *op, cl_mem *m, size_t *have, size_t want)
{
    if (*have >= want)
        return NB_OK;
    if (*m)
        clReleaseMemObject(*m); /* queued kernels still using it keep it alive */
    *m = NULL;
    *have = 0;
    cl_int err;
    *m = clCreateBuffer(d->ctx, CL_MEM_READ_WRITE, want, NULL, &err);
    if (!*m)
        return ocl_fail(NB_OUT_OF_MEMORY, op, "clCreateBuffer (scratch)", err);
    *have = want;
    return NB_OK;
}

nb_status ocl_tmp(ocl_dev *d, const char *op, int slot, size_t bytes, cl_mem *out)
{
    nb_status st = grow(d, op, &d->tmp[slot], &d->tmp_bytes[slot], bytes ? bytes : 8);
    *out = d->tmp[slot];
    return st;
}

static const cl_int flag_zero[NBK_FLAG_WORDS]; /* static: a non-blocking write may read it */

nb_status ocl_flag(ocl_dev *d, const char *op, cl_mem *out)
{
    cl_int err = CL_SUCCESS;
    if (!d->flag) {
        d->flag = clCreateBuffer(d->ctx, CL_MEM_READ_WRITE, sizeof flag_zero, NULL, &err);
        if (!d->flag)
            return ocl_fail(NB_DEVICE_ERROR, op, "clCreateBuffer (index flag)", err);
        err = clEnqueueWriteBuffer(d->queue, d->flag, CL_FALSE, 0, sizeof flag_zero, flag_zero,
                                   0, NULL, NULL);
        if (err != CL_SUCCESS) {
            clReleaseMemObject(d->flag);
            d->flag = NULL;
            return ocl_fail(NB_DEVICE_ERROR, op, "clEnqueueWriteBuffer (index flag)", err);
        }
    }
    d->flag_pending = 1;
    *out = d->flag;
    return NB_OK;
}

/* At a synchronisation point: reports a bad index a gather or scatter_add met since the last
 * one, and clears the flag. The queue is drained already, so the read costs one small copy. */
static nb_status check_flag(ocl_dev *d, const char *op)
{
    nb_status st = NB_OK;
    ocl_lock(d);
    if (d->flag_pending) {
        cl_int f[NBK_FLAG_WORDS];
        cl_int err = clEnqueueReadBuffer(d->queue, d->flag, CL_TRUE, 0, sizeof f, f, 0, NULL,
                                         NULL);
        if (err != CL_SUCCESS) {
            st = ocl_fail(NB_DEVICE_ERROR, op, "clEnqueueReadBuffer (index flag)", err);
        } else {
            d->flag_pending = 0;
            if (f[0]) {
                long long v = (long long)(((uint64_t)(uint32_t)f[2] << 32) | (uint32_t)f[1]);
                long long n = (long long)(((uint64_t)(uint32_t)f[4] << 32) | (uint32_t)f[3]);
                clEnqueueWriteBuffer(d->queue, d->flag, CL_FALSE, 0, sizeof flag_zero,
                                     flag_zero, 0, NULL, NULL);
                st = ERR(NB_INDEX_OUT_OF_RANGE, "opencl %s: index %lld is out of range for dim "
                         "%d of size %lld (reported at the first %s after the op, which ran "
                         "asynchronously; its bad elements were skipped)",
                         f[6] ? "scatter_add" : "gather", v, (int)f[5], n, op);
            }
        }
    }
    ocl_unlock(d);
    return st;
}

nb_status ocl_scratch(ocl_dev *d, const char *op, size_t vbytes, size_t ibytes)
{
    nb_status st = grow(d, op, &d->scratch_v, &d->scratch_v_bytes, vbytes ? vbytes : 8);
    if (st == NB_OK)
        st = grow(d, op, &d->scratch_i, &d->scratch_i_bytes, ibytes ? ibytes : 8);
    return st;
}

/* ---- The plugin table's functions ---- */

/* Platforms are asked for on the first device_count(), not at load: an OpenCL runtime can be
 * large (PoCL brings LLVM), and a process that never uses opencl:N should not pay for it. */
static int device_count(void)
{
    pthread_mutex_lock(&discover_lock); /* two threads asking first must not both discover */
    if (!discovered) {
        discover();
        discovered = 1;
    }
    int n = n_devs;
    pthread_mutex_unlock(&discover_lock);
    return n;
}

static nb_status device_name(int device, char *buf, size_t len)
{
    ocl_dev *d = ocl_device(device, "device_name");
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    if (!buf || !len)
        return ocl_host->error(NB_NULL_ARGUMENT, "opencl device_name: buf is NULL or len is 0");
    snprintf(buf, len, "%s", d->name);
    return NB_OK;
}

static nb_status alloc_buf(int device, size_t bytes, void **handle)
{
    ocl_dev *d = ocl_device(device, "alloc");
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    if (!handle)
        return ocl_host->error(NB_NULL_ARGUMENT, "opencl alloc: handle is NULL");
    *handle = NULL;
    if (bytes == 0)
        return ocl_host->error(NB_INVALID_ARGUMENT, "opencl alloc: 0 bytes requested, expected "
                               "at least 1");
    if (d->max_alloc && bytes > d->max_alloc)
        return ocl_host->error(NB_OUT_OF_MEMORY, "opencl alloc: %zu bytes requested, but %s "
                               "allows at most %llu bytes in one buffer", bytes, d->name,
                               (unsigned long long)d->max_alloc);
    ocl_buf *b = malloc(sizeof *b);
    if (!b)
        return ocl_host->error(NB_OUT_OF_MEMORY, "opencl alloc: out of host memory");
    cl_int err;
    b->mem = clCreateBuffer(d->ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (!b->mem) {
        free(b);
        return ocl_fail(NB_OUT_OF_MEMORY, "alloc", "clCreateBuffer", err);
    }
    b->bytes = bytes;
    *handle = b;
    return NB_OK;
}

static void free_buf(int device, void *handle)
{
    ocl_buf *b = handle;
    if (!b)
        return;
    clReleaseMemObject(b->mem);
    free(b);
}

static nb_status check_range(const char *op, const ocl_buf *b, size_t offset, size_t bytes,
                             const void *host)
{
    if (!b)
        return ocl_host->error(NB_NULL_ARGUMENT, "opencl %s: buffer handle is NULL", op);
    if (bytes && !host)
        return ocl_host->error(NB_NULL_ARGUMENT, "opencl %s: host pointer is NULL", op);
    if (offset > b->bytes || bytes > b->bytes - offset)
        return ocl_host->error(NB_INDEX_OUT_OF_RANGE, "opencl %s: %zu bytes at offset %zu do not "
                               "fit in a buffer of %zu bytes", op, bytes, offset, b->bytes);
    return NB_OK;
}

static nb_status write_buf(int device, void *handle, size_t offset, const void *src, size_t bytes)
{
    ocl_dev *d = ocl_device(device, "write");
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    ocl_buf *b = handle;
    nb_status st = check_range("write", b, offset, bytes, src);
    if (st != NB_OK || bytes == 0)
        return st;
    /* blocking: the caller may reuse src as soon as we return */
    cl_int err = clEnqueueWriteBuffer(d->queue, b->mem, CL_TRUE, offset, bytes, src, 0, NULL,
                                      NULL);
    return err == CL_SUCCESS ? NB_OK : ocl_fail(NB_DEVICE_ERROR, "write", "clEnqueueWriteBuffer",
                                                err);
}

static nb_status read_buf(int device, const void *handle, size_t offset, void *dst, size_t bytes)
{
    ocl_dev *d = ocl_device(device, "read");
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    const ocl_buf *b = handle;
    nb_status st = check_range("read", b, offset, bytes, dst);
    if (st != NB_OK || bytes == 0)
        return st;
    cl_int err = clEnqueueReadBuffer(d->queue, b->mem, CL_TRUE, offset, bytes, dst, 0, NULL,
                                     NULL);
    if (err != CL_SUCCESS)
        return ocl_fail(NB_DEVICE_ERROR, "read", "clEnqueueReadBuffer", err);
    return check_flag(d, "read");
}

static nb_status synchronize(int device)
{
    ocl_dev *d = ocl_device(device, "synchronize");
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    cl_int err = clFinish(d->queue);
    if (err != CL_SUCCESS)
        return ocl_fail(NB_DEVICE_ERROR, "synchronize", "clFinish", err);
    return check_flag(d, "synchronize");
}

static const char *status_note(void) { return n_devs ? NULL : note; }

/* nabla-info's lines for a device: what it runs on, and where its programs come from. */
static const char *device_info(int32_t device)
{
    if (device < 0 || device >= n_devs)
        return NULL;
    ocl_dev *d = &devs[device];
    ocl_lock(d);
    snprintf(d->info, sizeof d->info,
             "platform: %s\ndevice: %s, %s, %u compute units\nOpenCL C: %s (programs built as "
             "1.%d)\nfp64: %s\nfloat16, bfloat16: 16-bit storage, float32 compute (cl_khr_fp16: "
             "%s, not needed)\nGEMM: %s\nprogram cache: %s\nprograms: %d built from source, "
             "%d loaded from the cache",
             d->platform, d->version, d->is_gpu ? "GPU" : "not a GPU", d->compute_units,
             d->clc_version, d->cl_c_minor >= 12 ? 2 : 1,
             d->has_fp64 ? "yes" : fp64_switched_off() ? "off (NABLA_OPENCL_NO_FP64)" : "no",
             d->has_fp16 ? "yes" : "no", ocl_gemm_name(), ocl_cache_dir(), d->progs_built, d->progs_loaded);
    ocl_unlock(d);
    return d->info;
}

static void shutdown_plugin(void)
{
    for (int i = 0; i < n_devs; i++) {
        ocl_dev *d = &devs[i];
        clFinish(d->queue);
        for (int t = 0; t < NB_DTYPE_COUNT; t++) {
            for (int k = 0; k < OCL_K_COUNT; k++)
                if (d->kern[t][k])
                    clReleaseKernel(d->kern[t][k]);
            if (d->prog[t])
                clReleaseProgram(d->prog[t]);
        }
        if (d->scratch_v)
            clReleaseMemObject(d->scratch_v);
        if (d->scratch_i)
            clReleaseMemObject(d->scratch_i);
        if (d->flag)
            clReleaseMemObject(d->flag);
        for (int t = 0; t < OCL_N_TMP; t++)
            if (d->tmp[t])
                clReleaseMemObject(d->tmp[t]);
        free(d->argcache);
        clReleaseCommandQueue(d->queue);
        clReleaseContext(d->ctx);
        pthread_mutex_destroy(&d->lock);
    }
    free(devs);
    devs = NULL;
    n_devs = 0;
    discovered = 0;
    note[0] = '\0';
}

static nb_plugin plugin = {
    .abi_major = NB_PLUGIN_ABI_MAJOR,
    .abi_minor = NB_PLUGIN_ABI_MINOR,
    .size = sizeof(nb_plugin),
    .name = "opencl",
    .version = "0.1.0",
    .device_count = device_count,
    .device_name = device_name,
    .alloc = alloc_buf,
    .free = free_buf,
    .write = write_buf,
    .read = read_buf,
    .synchronize = synchronize,
    .wrap_host = NULL,
    .status_note = status_note,
    .shutdown = shutdown_plugin,
    .kernels = table,
    .n_kernels = 0,
    .device_info = device_info,
};

NB_PLUGIN_EXPORT const nb_plugin *nb_plugin_entry(const nb_host *host)
{
    if (!host || host->abi_major != NB_PLUGIN_ABI_MAJOR || !host->error || !host->log)
        return NULL;
    ocl_host = host;
    /* the core reads the kernel table after device_count(); discovery fills it, f64 entries
     * only when every device has cl_khr_fp64 */
    plugin.n_kernels = 0;
    return &plugin;
}

static void plugin_set_kernels(int with_f64)
{
    plugin.n_kernels = ocl_kernel_table(table, with_f64);
}
