/* opencl_internal.h - what the files of the opencl plugin share: the per-device state (context,
 * queue, programs and kernels built on first use), the launch helpers, the operand checks the
 * ops are built on (opencl_ops.c), and each op family's part of the kernel table. */
#ifndef OPENCL_INTERNAL_H
#define OPENCL_INTERNAL_H

#include "nabla_plugin.h"
#include "nbk_shared.h"

#include <CL/cl.h>
#include <pthread.h>

/* Kernels of one program (one per device and dtype); names as in the kernels folder. */
#define OCL_KERNELS(X)                                                                     \
    X(fill) X(copy_from_f32) X(copy_from_f64) X(copy_from_i32) X(copy_from_i64)            \
    X(copy_from_u8) X(copy_from_bool) X(copy_from_f16) X(copy_from_bf16) X(copy_bits)      \
    X(arange) X(unary) X(unary_scalar) X(binary)         \
    X(compare) X(compare_scalar) X(logical) X(where) X(reduce) X(reduce_partials)          \
    X(matmul) X(matmul_naive) X(gather) X(scatter_add) X(scatter_add_chunks)                 \
    X(scatter_add_combine) X(random_uniform) X(random_normal)                              \
    X(relu_backward) X(softmax_rows) X(softmax_backward_rows) X(sgd_step) X(adam_step)     \
    X(conv2d) X(conv2d_backward_input) X(conv2d_backward_weight) X(max_pool2d)             \
    X(max_pool2d_backward) X(im2col) X(col2im)

/* The kernels that read and write 16-bit buffers through LD/STORE (common.cl); the others, built
 * into the f16/bf16 programs as float, must never run on 16-bit buffers (ocl_kernel refuses). */
#define OCL_HALF_KERNELS(X)                                                                \
    X(fill) X(copy_from_f32) X(copy_from_f64) X(copy_from_i32) X(copy_from_i64)            \
    X(copy_from_u8) X(copy_from_bool) X(copy_from_f16) X(copy_from_bf16) X(copy_bits)      \
    X(arange) X(unary) X(unary_scalar) X(binary) X(compare) X(compare_scalar) X(logical)   \
    X(where) X(reduce) X(reduce_partials) X(gather) X(scatter_add) X(scatter_add_chunks)   \
    X(scatter_add_combine) X(random_uniform) X(random_normal)                              \
    X(relu_backward) X(softmax_rows) X(softmax_backward_rows) X(sgd_step) X(adam_step)     \
    X(conv2d) X(conv2d_backward_input) X(conv2d_backward_weight) X(max_pool2d)             \
    X(max_pool2d_backward) X(im2col) X(col2im)

/* The elementwise kernels that take a chunk of a row per work-item (NBK_CHUNKED, common.cl);
 * the others take one element each. */
#define OCL_CHUNKED_KERNELS(X)                                                             \
    X(fill) X(copy_from_f32) X(copy_from_f64) X(copy_from_i32) X(copy_from_i64)            \
    X(copy_from_u8) X(copy_from_bool) X(copy_from_f16) X(copy_from_bf16) X(copy_bits)      \
    X(unary) X(unary_scalar) X(binary) X(relu_backward)
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

#define OCL_N_TMP 4

/* The argument values last set on one kernel object, so that a launch sets only what changed:
 * on PoCL, setting a 360-byte geometry struct costs about as much as the enqueue itself. */
#define OCL_ARG_MAX 16
#define OCL_ARG_BYTES 1024
typedef struct ocl_argcache {
    cl_kernel k;
    int nargs; /* arguments held in val; -1: none known, set them all */
    size_t size[OCL_ARG_MAX];
    unsigned char local[OCL_ARG_MAX]; /* set as local memory (no value) */
    unsigned char val[OCL_ARG_BYTES];
} ocl_argcache;
#define OCL_ARG_SLOTS 512 /* open addressing over kernel objects; > NB_DTYPE_COUNT * kernels */

typedef struct ocl_dev {
    int index; /* N of opencl:N */
    cl_device_id id;
    cl_context ctx;
    cl_command_queue queue; /* in-order: kernels run in submission order */
    char name[256];
    char platform[256];    /* CL_PLATFORM_NAME and CL_PLATFORM_VERSION */
    char driver[128];      /* CL_DRIVER_VERSION */
    char version[128];     /* CL_DEVICE_VERSION */
    char clc_version[128]; /* CL_DEVICE_OPENCL_C_VERSION as reported */
    int has_fp64;      /* cl_khr_fp64, and not switched off by NABLA_OPENCL_NO_FP64 */
    int has_fp16;      /* cl_khr_fp16: reported only; the 16-bit kernels do not need it */
    int is_gpu;        /* CL_DEVICE_TYPE_GPU: listed first */
    int cl_c_minor;    /* OpenCL C version the programs are built for: 10 * major + minor */
    cl_uint compute_units;
    cl_ulong max_alloc;
    pthread_mutex_t lock; /* recursive: programs, kernels' arguments, scratch buffers */
    cl_program prog[NB_DTYPE_COUNT];
    int prog_failed[NB_DTYPE_COUNT];
    int progs_built, progs_loaded; /* since discovery: from source, from the program cache */
    char info[2048];               /* device_info's answer, rewritten at each call */
    cl_kernel kern[NB_DTYPE_COUNT][OCL_K_COUNT];
    size_t kern_wg[NB_DTYPE_COUNT][OCL_K_COUNT]; /* CL_KERNEL_WORK_GROUP_SIZE */
    cl_mem scratch_v, scratch_i; /* reduction partials, grown on demand */
    size_t scratch_v_bytes, scratch_i_bytes;
    cl_mem tmp[OCL_N_TMP]; /* conv2d's columns and packed operands, grown on demand */
    size_t tmp_bytes[OCL_N_TMP];
    /* NBK_FLAG_WORDS ints: gather/scatter_add set them on a bad index (see index.cl); read
     * and cleared at the next read or synchronize while flag_pending */
    cl_mem flag;
    int flag_pending;
    ocl_argcache *argcache; /* OCL_ARG_SLOTS entries, allocated at the first launch */
    int gemm_setup;         /* CLBlast's parameters for this device chosen (opencl_blas.c) */
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
/* Whether kid may run in a 16-bit program (OCL_HALF_KERNELS). */
int ocl_half_kernel(ocl_kid kid);
/* The kernel for (dtype, kid), building the program on first use; NULL after an error (a
 * 16-bit dtype with a kernel outside OCL_HALF_KERNELS is one: NB_DTYPE_UNSUPPORTED). */
cl_kernel ocl_kernel(ocl_dev *d, nb_dtype dtype, ocl_kid kid, const char *op, size_t *max_wg);
/* Sets the arguments and enqueues a kernel; local may be NULL. */
nb_status ocl_launch(ocl_dev *d, cl_kernel k, const char *op, int nargs, const ocl_arg *args,
                     cl_uint dims, const size_t *global, const size_t *local);
/* Reports a failed OpenCL call through the host: "<op>: <call> failed: CL_... (code)". */
nb_status ocl_fail(nb_status st, const char *op, const char *call, cl_int err);
const char *ocl_err_name(cl_int err);
/* Makes sure the scratch buffers hold at least vbytes/ibytes; the device must be locked. */
nb_status ocl_scratch(ocl_dev *d, const char *op, size_t vbytes, size_t ibytes);

/* Makes sure temporary buffer slot holds at least bytes; the device must be locked and stay
 * locked while the buffer is in use by the ops being queued. */
nb_status ocl_tmp(ocl_dev *d, const char *op, int slot, size_t bytes, cl_mem *out);
/* The index flag, created on first use and cleared; the device must be locked. Marks it
 * pending, so the next read or synchronize looks at it. */
nb_status ocl_flag(ocl_dev *d, const char *op, cl_mem *out);

/* ---- opencl_cache.c: compiled programs on disk ---- */

/* Reads NABLA_OPENCL_CACHE_DIR / XDG_CACHE_HOME / HOME and hashes the kernel sources; called at
 * discovery, so a restarted plugin sees a changed environment. */
void ocl_cache_init(void);
/* The cache folder, or "off (why)". */
const char *ocl_cache_dir(void);
/* The text that names one program: device, platform, driver, OpenCL C, options, source hash. */
void ocl_cache_key(const ocl_dev *d, const char *opts, char *key, size_t len);
/* The program from its cache entry, built from the binary with opts; NULL (logged) when there is
 * no usable entry. what names the program in logs ("f32 kernels"). */
cl_program ocl_cache_load(ocl_dev *d, const char *key, const char *opts, const char *what);
/* Writes p's binary as the entry for key; 1 when written, 0 (logged) when not. */
int ocl_cache_save(ocl_dev *d, cl_program p, const char *key, const char *what);

/* ---- opencl_ops.c: operands, geometry, scalars, the elementwise launch ---- */

#define ERR(st, ...) ocl_host->error((st), __VA_ARGS__)

extern const char *const ocl_dt_name[NB_DTYPE_COUNT];
extern const size_t ocl_dt_size[NB_DTYPE_COUNT];

/* A checked operand: its buffer and element offset. */
typedef struct ocl_view {
    cl_mem mem;
    int64_t off;
    const nb_operand *o;
} ocl_view;

/* A value of dtype t (or the device's real type) as a kernel argument. */
typedef struct ocl_scalar {
    union {
        float f;
        double d;
        int32_t i;
        int64_t l;
        uint8_t u;
        uint16_t h; /* a 16-bit float's bits (fill) */
    } v;
    size_t size;
} ocl_scalar;

#define SARG(s) ((ocl_arg){(s).size, &(s).v})

/* "input 0".."input 3", for the operand checks' messages */
extern const char *const ocl_input_name[NBK_MAX_OPERANDS];
int64_t ocl_numel(int32_t ndim, const int64_t *shape);
const char *ocl_dtype_str(nb_dtype t);
/* Checks o (named what) and that every element it addresses lies inside its buffer, so a bad
 * view is an error here rather than a wild access on the device. want < 0: any dtype. */
nb_status ocl_check(const char *op, const char *what, const nb_operand *o, int want, ocl_view *v);
nb_status ocl_same_shape(const char *op, const char *what, const nb_operand *o,
                         const nb_operand *out);
nb_status ocl_n_inputs(const char *op, const nb_kernel_args *a, int want);
/* Fills g for nops operands sharing shape, dims coalesced where contiguous in every operand. */
void ocl_geom_make(nbk_geom *g, int32_t ndim, const int64_t *shape, int nops,
                   const int64_t *const *st, const int64_t *off);
/* The same for views v[0..nops) of v[0]'s shape. */
void ocl_geom_views(nbk_geom *g, int nops, const ocl_view *v);
/* Copies the 16-bit view v to (to_f32) or from tmp, a dense row-major float32 array of v's
 * shape, with the copy kernels of the destination's program: widening is exact, narrowing
 * rounds once to nearest even. tmp holds at least 4 bytes per element of v. */
nb_status ocl_half_move(int device, const char *op, const ocl_view *v, cl_mem tmp, int to_f32);
/* Whether kid is one of OCL_CHUNKED_KERNELS. */
int ocl_chunked_kernel(ocl_kid kid);
/* Elements per work-item of those kernels on d (NBK_CHUNK of its programs). */
int ocl_chunk(const ocl_dev *d);
/* Launches a 1-d elementwise kernel over g->n elements (one work-item each, or a chunk of a row
 * each for OCL_CHUNKED_KERNELS) with the nops buffers, g, then extra. */
nb_status ocl_run_elementwise(int device, const char *op, nb_dtype pdt, ocl_kid kid, int nops,
                              const ocl_view *v, const nbk_geom *g, int n_extra,
                              const ocl_arg *extra);
/* x as a kernel argument of dtype t (integers by nb_float_to_int64's rule); a 16-bit t gets a
 * float, the type its kernels compute in. */
ocl_scalar ocl_scalar_of(nb_dtype t, double x);
/* x as the kernels' real_t: double where the device has fp64, else float. */
ocl_scalar ocl_real_of(int device, double x);
size_t ocl_pow2_floor(size_t x);

/* ---- The kernel table: one part per op family ---- */

#define OCL_B(t) (1u << NB_DTYPE_##t)
#define OCL_ALL (OCL_B(F32) | OCL_B(F64) | OCL_B(I32) | OCL_B(I64) | OCL_B(BOOL) | OCL_B(U8))
#define OCL_FLT (OCL_B(F32) | OCL_B(F64))
#define OCL_NUM (OCL_FLT | OCL_B(I32) | OCL_B(I64))
/* float16 and bfloat16: 16-bit storage with float compute on every device (see common.cl),
 * registered only for the ops whose kernels load and store through LD/STORE */
#define OCL_HALF (OCL_B(F16) | OCL_B(BF16))
#define OCL_ALL16 (OCL_ALL | OCL_HALF)
#define OCL_NUM16 (OCL_NUM | OCL_HALF)
#define OCL_FLT16 (OCL_FLT | OCL_HALF)
#define OCL_IS_HALF(t) ((t) == NB_DTYPE_F16 || (t) == NB_DTYPE_BF16)
#define OCL_IS_FLOAT(t) ((t) == NB_DTYPE_F32 || (t) == NB_DTYPE_F64 || OCL_IS_HALF(t))

typedef struct ocl_spec {
    const char *op;
    nb_kernel_fn fn;
    unsigned dtypes; /* OCL_B bits */
} ocl_spec;

#define OCL_FAMILIES(X) X(elementwise) X(reduce) X(index) X(nn) X(blas) X(conv)
#define OCL_SPECS_DECL_(fam)                                                              \
    extern const ocl_spec ocl_specs_##fam[];                                              \
    extern const size_t ocl_n_specs_##fam;
OCL_FAMILIES(OCL_SPECS_DECL_)
#undef OCL_SPECS_DECL_

/* Fills the kernel table (f64 entries only when with_f64); returns the number of entries, which
 * never exceeds OCL_MAX_TABLE. */
#define OCL_MAX_TABLE 1024
size_t ocl_kernel_table(nb_kernel_desc *table, int with_f64);

/* ---- opencl_blas.c ---- */

/* Which GEMM matmul and conv2d run on: "CLBlast" or "own tiled kernel" (and why). */
const char *ocl_gemm_name(void);
/* One row-major GEMM on the queue of d (locked): C = alpha * op(A) @ op(B) + beta * C, batch
 * times with the given batch strides; lda etc. in elements. trans_a: op(A) = A^T. Uses CLBlast
 * where built with it, else the own kernel. beta == 0: C is not read. */
nb_status ocl_gemm(ocl_dev *d, const char *op, nb_dtype t, int trans_a, int trans_b, int64_t m,
                   int64_t n, int64_t k, double alpha, cl_mem a, int64_t a_off, int64_t lda,
                   int64_t a_bs, cl_mem b, int64_t b_off, int64_t ldb, int64_t b_bs, double beta,
                   cl_mem c, int64_t c_off, int64_t ldc, int64_t c_bs, int64_t batch);

#endif
