/* opencl_internal.h - what the two halves of the opencl plugin share: the per-device state
 * (context, queue, programs and kernels built on first use) and the launch helpers that
 * opencl_kernels.c builds its ops on. */
#ifndef OPENCL_INTERNAL_H
#define OPENCL_INTERNAL_H

#include "nabla_plugin.h"
#include "nbk_shared.h"

#include <CL/cl.h>
#include <pthread.h>

/* Kernels of one program (one per device and dtype); names as in the kernels folder. */
#define OCL_KERNELS(X)                                                                     \
    X(fill) X(copy_from_f32) X(copy_from_f64) X(copy_from_i32) X(copy_from_i64)            \
    X(copy_from_u8) X(arange) X(unary) X(unary_scalar) X(binary) X(compare)                \
    X(compare_scalar) X(logical) X(where) X(reduce) X(reduce_partials) X(matmul)           \
    X(matmul_naive) X(index_check) X(gather) X(scatter_add) X(random_uniform)              \
    X(random_normal) X(relu_backward) X(softmax_rows) X(softmax_backward_rows) X(sgd_step)  \
    X(adam_step) X(conv2d) X(conv2d_backward_input) X(conv2d_backward_weight) X(max_pool2d)    \
    X(max_pool2d_backward)

typedef enum ocl_kid {
#define OCL_KID_(name) OCL_K_##name,
    OCL_KERNELS(OCL_KID_)
#undef OCL_KID_
    OCL_K_COUNT
} ocl_kid;

/* A buffer handle as the core sees it (opaque). */
typedef struct ocl_buf {
    cl_mem mem;
    size_t bytes;
} ocl_buf;

typedef struct ocl_dev {
    cl_device_id id;
    cl_context ctx;
    cl_command_queue queue; /* in-order: kernels run in submission order */
    char name[256];
    int has_fp64;
    cl_uint compute_units;
    cl_ulong max_alloc;
    pthread_mutex_t lock; /* recursive: programs, kernels' arguments, scratch buffers */
    cl_program prog[NB_DTYPE_COUNT];
    int prog_failed[NB_DTYPE_COUNT];
    cl_kernel kern[NB_DTYPE_COUNT][OCL_K_COUNT];
    size_t kern_wg[NB_DTYPE_COUNT][OCL_K_COUNT]; /* CL_KERNEL_WORK_GROUP_SIZE */
    cl_mem scratch_v, scratch_i; /* reduction partials, grown on demand */
    size_t scratch_v_bytes, scratch_i_bytes;
    cl_mem flag; /* two int64: index out of range seen, and the index */
} ocl_dev;

/* One kernel argument: a value of size bytes, or local memory of size bytes when ptr is NULL. */
typedef struct ocl_arg {
    size_t size;
    const void *ptr;
} ocl_arg;
#define OCL_ARG(x) ((ocl_arg){sizeof(x), &(x)})

extern const nb_host *ocl_host;

/* The device, or NULL after reporting an out-of-range index for op. */
ocl_dev *ocl_device(int device, const char *op);
void ocl_lock(ocl_dev *d);
void ocl_unlock(ocl_dev *d);
/* The kernel for (dtype, kid), building the program on first use; NULL after an error. */
cl_kernel ocl_kernel(ocl_dev *d, nb_dtype dtype, ocl_kid kid, const char *op, size_t *max_wg);
/* Sets the arguments and enqueues a kernel; local may be NULL. */
nb_status ocl_launch(ocl_dev *d, cl_kernel k, const char *op, int nargs, const ocl_arg *args,
                     cl_uint dims, const size_t *global, const size_t *local);
/* Reports a failed OpenCL call through the host: "<op>: <call> failed: CL_... (code)". */
nb_status ocl_fail(nb_status st, const char *op, const char *call, cl_int err);
const char *ocl_err_name(cl_int err);
/* Makes sure the scratch buffers hold at least vbytes/ibytes; the device must be locked. */
nb_status ocl_scratch(ocl_dev *d, const char *op, size_t vbytes, size_t ibytes);

/* opencl_kernels.c */
/* Fills the kernel table (f64 entries only when with_f64); returns the number of entries, which
 * never exceeds OCL_MAX_TABLE. */
#define OCL_MAX_TABLE 512
size_t ocl_kernel_table(nb_kernel_desc *table, int with_f64);

#endif
