/* nabla.h - the whole application API of Nabla: tensors, ops, autograd, nn, optim.
 *
 * Conventions. Functions that act return nb_status (NB_OK == 0); functions that create return a
 * pointer, or NULL with the reason in nb_last_error(). Every nb_tensor * you receive is yours to
 * release with nb_release(); every pointer you pass is borrowed. An op given NULL returns NULL
 * and keeps the first error, so nb_sum(nb_mul(a, b)) needs one check at the end (the
 * intermediate is then yours too: wrap such chains in nb_scope_begin/end).
 */
#ifndef NABLA_H
#define NABLA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NABLA_VERSION_MAJOR 0
#define NABLA_VERSION_MINOR 1
#define NABLA_VERSION_PATCH 0

/* ---- Types shared with nabla_plugin.h (kept identical; the core checks it at compile time) -- */
#ifndef NB_SHARED_TYPES_DEFINED
#define NB_SHARED_TYPES_DEFINED

#define NB_MAX_DIMS 8

/* Element types. Values are part of the ABI and never change. */
typedef enum nb_dtype {
    NB_DTYPE_F32 = 0,
    NB_DTYPE_F64 = 1,
    NB_DTYPE_I32 = 2,
    NB_DTYPE_I64 = 3,
    NB_DTYPE_BOOL = 4, /* one byte, 0 or 1 */
    NB_DTYPE_U8 = 5,
    /* ABI 1.1: a plugin built for 1.0 registers no kernel for these and never receives them */
    NB_DTYPE_F16 = 6,  /* IEEE 754 binary16, stored as its 16 bits */
    NB_DTYPE_BF16 = 7, /* bfloat16: the top 16 bits of a float32 */
    NB_DTYPE_COUNT
} nb_dtype;

/* Status codes: X(name, value, description). Append only; never renumber. */
#define NB_STATUS_MAP(X)                                                                   \
    X(OK, 0, "success")                                                                    \
    X(INVALID_ARGUMENT, 1, "invalid argument")                                             \
    X(NULL_ARGUMENT, 2, "NULL argument")                                                   \
    X(SHAPE_MISMATCH, 3, "shape mismatch")                                                 \
    X(DTYPE_UNSUPPORTED, 4, "dtype not supported")                                         \
    X(DEVICE_MISMATCH, 5, "tensors on different devices")                                  \
    X(UNKNOWN_DEVICE, 6, "unknown device")                                                 \
    X(DEVICE_OUT_OF_RANGE, 7, "device index out of range")                                 \
    X(OUT_OF_MEMORY, 8, "out of memory")                                                   \
    X(NOT_IMPLEMENTED, 9, "operation not implemented on this device")                      \
    X(PLUGIN_LOAD, 10, "plugin failed to load")                                            \
    X(ABI_MISMATCH, 11, "plugin ABI mismatch")                                             \
    X(DEVICE_ERROR, 12, "device or driver error")                                          \
    X(AUTOGRAD, 13, "autograd error")                                                      \
    X(VIEW_STRIDES, 14, "view not possible with these strides")                            \
    X(INDEX_OUT_OF_RANGE, 15, "index out of range")                                        \
    X(IO, 16, "input/output error")                                                        \
    X(FORMAT, 17, "malformed data")                                                        \
    X(STATE, 18, "object in the wrong state")                                              \
    X(NO_DEVICE, 19, "no device available")

typedef enum nb_status {
#define NB_STATUS_ENUM_(name, value, desc) NB_##name = value,
    NB_STATUS_MAP(NB_STATUS_ENUM_)
#undef NB_STATUS_ENUM_
} nb_status;

#endif /* NB_SHARED_TYPES_DEFINED */

/* ======================================== Runtime ========================================= */

const char *nb_status_str(nb_status status);
/* Message of the last error on this thread ("" if none). Reading it never changes it. */
const char *nb_last_error(void);
nb_status nb_last_status(void);
void nb_clear_error(void);

/* Loads plugins and sets up devices; called implicitly by the first call that needs it. */
nb_status nb_init(void);
/* Frees caches and unloads plugins. Returns NB_STATE (with a message counting them) if tensors
 * or other objects are still alive, which makes every test's teardown a leak check. */
nb_status nb_shutdown(void);
/* Objects alive now: tensors and storages (for tests and leak reports). */
int64_t nb_live_tensors(void);
int64_t nb_live_storages(void);
/* Bytes held by the storages of live tensors (all devices; requested sizes, not the cached
 * blocks), and the most there was since nb_memory_reset_peak(), as torch.cuda's
 * memory_allocated() and max_memory_allocated(). */
int64_t nb_memory_allocated(void);
int64_t nb_memory_peak(void);
void nb_memory_reset_peak(void);

/* Host memory used for every core object; replaceable so tests can inject failures. */
typedef struct nb_allocator {
    void *(*malloc)(size_t size);
    void *(*realloc)(void *ptr, size_t size);
    void (*free)(void *ptr);
} nb_allocator;
/* NULL restores the C library's. Only while no object is alive. */
nb_status nb_set_allocator(const nb_allocator *allocator);
void nb_free(void *ptr); /* frees strings the API returns (nb_tensor_str...) */

/* Scopes: tensors created inside begin/end are released at end unless handed to nb_keep().
 * nb_release of a tensor an open scope of this thread tracks takes it out of that scope, so a
 * tensor is released once, by you or by nb_scope_end, never twice. */
void nb_scope_begin(void);
void nb_scope_end(void);
struct nb_tensor *nb_keep(struct nb_tensor *t); /* returns t, now owned by the enclosing code */

/* ======================================= Devices ========================================== */

/* Device strings: "type[:index]" ("cuda" means "cuda:0"). */
nb_status nb_set_default_device(const char *device);
const char *nb_default_device(void); /* "cpu" unless set or NABLA_DEVICE says otherwise */
int nb_device_count(const char *type); /* -1 with an error for an unknown type */
/* Canonical "type:index" into buf; an error for malformed, unknown or out-of-range strings. */
nb_status nb_device_parse(const char *device, char *buf, size_t len);
nb_status nb_synchronize(const char *device);
/* true if the device runs `op` for `dtype` with a kernel of its own (not a composite). */
bool nb_device_has_kernel(const char *device, const char *op, nb_dtype dtype);
/* What the device's plugin says it is (model, ISA, libraries), truncated to fit buf. */
nb_status nb_device_name(const char *device, char *buf, size_t len);
/* More about the device from its plugin, one "topic: value" line each (libraries in use, caches,
 * features), truncated to fit buf; "" when the plugin says nothing (plugins before ABI 1.2). */
nb_status nb_device_info(const char *device, char *buf, size_t len);

/* Plugins: discovered from NABLA_PLUGIN_PATH, then the loaded libnabla's folder and its nabla/
 * subfolder (where an install puts them, so an install tree can be moved). */
nb_status nb_plugin_load(const char *path);
typedef struct nb_plugin_info {
    const char *name;    /* device type, or the file name if it did not load */
    const char *path;    /* file it came from */
    const char *version; /* plugin's own version string ("" if it did not load) */
    uint32_t abi_major, abi_minor;
    bool loaded;
    int devices;         /* device count */
    const char *note;    /* why it failed to load, or why it has no device; "" if none */
    size_t n_kernels;    /* native kernels */
} nb_plugin_info;
size_t nb_plugin_count(void); /* loaded and failed ones */
nb_status nb_plugin_get(size_t i, nb_plugin_info *info);
/* Names of the ops the core dispatches (tier 1 and tier 2), for coverage listings. */
size_t nb_op_count(void);
const char *nb_op_name(size_t i);

/* ======================================== Tensors ========================================= */

typedef struct nb_tensor nb_tensor;

typedef struct nb_shape {
    int32_t ndim;
    int64_t dims[NB_MAX_DIMS];
} nb_shape;

#define NB_SHAPE(...)                                                                       \
    ((nb_shape){.ndim = (int32_t)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),       \
                .dims = {__VA_ARGS__}})
#define NB_SHAPE_SCALAR ((nb_shape){.ndim = 0})

/* Creation options; the zero value means float32, default device, no grad. */
typedef struct nb_opts {
    nb_dtype dtype;
    const char *device;
    bool requires_grad;
} nb_opts;

const char *nb_dtype_name(nb_dtype dtype); /* "float32", "int64", ... */
size_t nb_dtype_size(nb_dtype dtype);
bool nb_dtype_is_float(nb_dtype dtype);
nb_dtype nb_promote_types(nb_dtype a, nb_dtype b); /* PyTorch's rules */

nb_tensor *nb_retain(nb_tensor *t); /* returns t with one more reference */
void nb_release(nb_tensor *t);      /* NULL is a no-op */

/* Creation. `data` holds numel elements of opts.dtype, row-major. */
nb_tensor *nb_from_data(const void *data, nb_shape shape, nb_opts opts);
/* Wraps `data` without copying (torch.as_tensor); `release(ctx)` runs when the last view dies.
 * Only on devices that address host memory (cpu); elsewhere it copies. release may be NULL. */
nb_tensor *nb_from_blob(void *data, nb_shape shape, nb_opts opts, void (*release)(void *ctx),
                        void *ctx);
nb_tensor *nb_scalar(double value, nb_opts opts); /* 0-d */
nb_tensor *nb_empty(nb_shape shape, nb_opts opts);
nb_tensor *nb_zeros(nb_shape shape, nb_opts opts);
nb_tensor *nb_ones(nb_shape shape, nb_opts opts);
nb_tensor *nb_full(nb_shape shape, double value, nb_opts opts);
nb_tensor *nb_arange(double start, double end, double step, nb_opts opts);
nb_tensor *nb_linspace(double start, double end, int64_t steps, nb_opts opts);
nb_tensor *nb_eye(int64_t n, int64_t m, nb_opts opts); /* m <= 0 means m = n */
nb_tensor *nb_rand(nb_shape shape, nb_opts opts);       /* uniform [0, 1) */
nb_tensor *nb_randn(nb_shape shape, nb_opts opts);      /* standard normal */
nb_tensor *nb_normal(double mean, double std, nb_shape shape, nb_opts opts);
nb_tensor *nb_uniform(double low, double high, nb_shape shape, nb_opts opts);
nb_tensor *nb_randint(int64_t low, int64_t high, nb_shape shape, nb_opts opts); /* [low, high) */
nb_tensor *nb_randperm(int64_t n, nb_opts opts); /* int64 by default when opts.dtype is f32 */
nb_tensor *nb_empty_like(const nb_tensor *t);
nb_tensor *nb_zeros_like(const nb_tensor *t);
nb_tensor *nb_ones_like(const nb_tensor *t);
nb_tensor *nb_full_like(const nb_tensor *t, double value);
nb_tensor *nb_rand_like(const nb_tensor *t);
nb_tensor *nb_randn_like(const nb_tensor *t);
/* The global generator: same seed, same numbers, on every run and every device. */
void nb_manual_seed(uint64_t seed);
uint64_t nb_initial_seed(void);

/* Inspection. */
int32_t nb_tensor_ndim(const nb_tensor *t);
nb_shape nb_tensor_shape(const nb_tensor *t);
int64_t nb_tensor_size(const nb_tensor *t, int32_t dim); /* negative dims count from the end */
int64_t nb_tensor_stride(const nb_tensor *t, int32_t dim);
int64_t nb_tensor_numel(const nb_tensor *t);
nb_dtype nb_tensor_dtype(const nb_tensor *t);
const char *nb_tensor_device(const nb_tensor *t); /* "cpu", "cuda:0", "opencl:0" */
int64_t nb_tensor_offset(const nb_tensor *t);     /* storage offset in elements */
bool nb_tensor_is_contiguous(const nb_tensor *t);
bool nb_tensor_shares_storage(const nb_tensor *a, const nb_tensor *b);
int64_t nb_tensor_version(const nb_tensor *t); /* bumped by every in-place change */

/* Data in and out. Buffers hold numel elements of the tensor's dtype, row-major. */
nb_status nb_tensor_copy_to_host(const nb_tensor *t, void *dst, size_t bytes);
nb_status nb_tensor_copy_from_host(nb_tensor *t, const void *src, size_t bytes); /* no autograd */
nb_status nb_item(const nb_tensor *t, double *value); /* one-element tensors */
/* dst.copy_(src): broadcast, cast, any device; differentiable like every in-place op (into a
 * view it rebases the view's base). In-place writes are refused, outside no-grad mode, into a
 * leaf that requires grad or a view of one, and always into overlapping (stride-0) elements. */
nb_status nb_tensor_copy_(nb_tensor *dst, const nb_tensor *src);
bool nb_allclose(const nb_tensor *a, const nb_tensor *b, double rtol, double atol);
bool nb_equal(const nb_tensor *a, const nb_tensor *b); /* same shape and values */
nb_tensor *nb_to_device(const nb_tensor *t, const char *device); /* t itself (retained) if there */
nb_tensor *nb_to_dtype(const nb_tensor *t, nb_dtype dtype);
nb_tensor *nb_clone(const nb_tensor *t);

/* PyTorch's printing: "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)". */
char *nb_tensor_str(const nb_tensor *t); /* free with nb_free */
nb_status nb_fprint(FILE *f, const nb_tensor *t); /* with a newline */
nb_status nb_print(const nb_tensor *t);           /* to stdout */

/* ====================================== Views ============================================ */
/* Views share storage with their base. Dims may be negative (counted from the end). */

nb_tensor *nb_view(const nb_tensor *t, nb_shape shape); /* one dim may be -1 */
nb_tensor *nb_reshape(const nb_tensor *t, nb_shape shape); /* copies only when it must */
nb_tensor *nb_transpose(const nb_tensor *t, int32_t dim0, int32_t dim1);
nb_tensor *nb_t(const nb_tensor *t); /* 2-d transpose */
nb_tensor *nb_permute(const nb_tensor *t, const int32_t *dims, int32_t ndims);
nb_tensor *nb_squeeze(const nb_tensor *t, int32_t dim);
nb_tensor *nb_squeeze_all(const nb_tensor *t);
nb_tensor *nb_unsqueeze(const nb_tensor *t, int32_t dim);
nb_tensor *nb_flatten(const nb_tensor *t, int32_t start_dim, int32_t end_dim);
nb_tensor *nb_expand(const nb_tensor *t, nb_shape shape); /* -1 keeps a dim */
nb_tensor *nb_narrow(const nb_tensor *t, int32_t dim, int64_t start, int64_t length);
nb_tensor *nb_slice(const nb_tensor *t, int32_t dim, int64_t start, int64_t end, int64_t step);
nb_tensor *nb_select(const nb_tensor *t, int32_t dim, int64_t index);
nb_tensor *nb_contiguous(const nb_tensor *t); /* t itself (retained) when already contiguous */
nb_tensor *nb_detach(const nb_tensor *t);     /* shares storage, no grad */

/* Joining and indexing (copies). */
nb_tensor *nb_cat(nb_tensor *const *ts, int32_t n, int32_t dim);
nb_tensor *nb_stack(nb_tensor *const *ts, int32_t n, int32_t dim);
nb_tensor *nb_index_select(const nb_tensor *t, int32_t dim, const nb_tensor *index);
nb_tensor *nb_gather(const nb_tensor *t, int32_t dim, const nb_tensor *index);
nb_tensor *nb_scatter_add(const nb_tensor *t, int32_t dim, const nb_tensor *index,
                          const nb_tensor *src);

/* ==================================== Elementwise ========================================= */
/* Binary ops broadcast and promote dtypes like PyTorch. In-place forms return NB_OK or an error
 * and require the result to fit the destination's shape and dtype. */

#define NB_BINARY_OPS_(X) X(add) X(sub) X(mul) X(div) X(pow) X(maximum) X(minimum)
#define NB_COMPARE_OPS_(X) X(eq) X(ne) X(lt) X(le) X(gt) X(ge)
#define NB_LOGICAL_OPS_(X) X(logical_and) X(logical_or) X(logical_xor)
#define NB_UNARY_OPS_(X)                                                                   \
    X(neg) X(abs) X(exp) X(log) X(sqrt) X(rsqrt) X(sin) X(cos) X(tanh) X(sigmoid) X(relu)  \
    X(sign) X(floor) X(ceil) X(round)

#define NB_DECLARE_BINARY_(name)                                                           \
    nb_tensor *nb_##name(const nb_tensor *a, const nb_tensor *b);                          \
    nb_tensor *nb_##name##_scalar(const nb_tensor *a, double b);                           \
    nb_status nb_##name##_(nb_tensor *a, const nb_tensor *b);                               \
    nb_status nb_##name##_scalar_(nb_tensor *a, double b);
#define NB_DECLARE_COMPARE_(name)                                                          \
    nb_tensor *nb_##name(const nb_tensor *a, const nb_tensor *b);                          \
    nb_tensor *nb_##name##_scalar(const nb_tensor *a, double b);
#define NB_DECLARE_LOGICAL_(name) nb_tensor *nb_##name(const nb_tensor *a, const nb_tensor *b);
#define NB_DECLARE_UNARY_(name)                                                            \
    nb_tensor *nb_##name(const nb_tensor *a);                                              \
    nb_status nb_##name##_(nb_tensor *a);

NB_BINARY_OPS_(NB_DECLARE_BINARY_)
NB_COMPARE_OPS_(NB_DECLARE_COMPARE_)
NB_LOGICAL_OPS_(NB_DECLARE_LOGICAL_)
NB_UNARY_OPS_(NB_DECLARE_UNARY_)

nb_tensor *nb_rsub_scalar(const nb_tensor *a, double s); /* s - a */
nb_tensor *nb_rdiv_scalar(const nb_tensor *a, double s); /* s / a */
nb_tensor *nb_logical_not(const nb_tensor *a);
/* clamp: NAN for a bound means "no bound" (clamp(min=0) is nb_clamp(x, 0, NAN)). */
nb_tensor *nb_clamp(const nb_tensor *a, double min, double max);
nb_status nb_clamp_(nb_tensor *a, double min, double max);
nb_tensor *nb_where(const nb_tensor *cond, const nb_tensor *a, const nb_tensor *b);
nb_status nb_fill_(nb_tensor *t, double value);
nb_status nb_zero_(nb_tensor *t);
/* a + alpha * b, in place (the optimizer's workhorse). */
nb_status nb_add_scaled_(nb_tensor *a, const nb_tensor *b, double alpha);

/* ===================================== Reductions ========================================= */
/* dims == NULL (ndims 0) reduces over all dims. */

nb_tensor *nb_sum(const nb_tensor *t, const int32_t *dims, int32_t ndims, bool keepdim);
nb_tensor *nb_mean(const nb_tensor *t, const int32_t *dims, int32_t ndims, bool keepdim);
nb_tensor *nb_prod(const nb_tensor *t, const int32_t *dims, int32_t ndims, bool keepdim);
nb_tensor *nb_amax(const nb_tensor *t, const int32_t *dims, int32_t ndims, bool keepdim);
nb_tensor *nb_amin(const nb_tensor *t, const int32_t *dims, int32_t ndims, bool keepdim);
/* torch.max(t), torch.min(t): the extreme element as a 0-d tensor (grad_fn MaxBackward1). */
nb_tensor *nb_max(const nb_tensor *t);
nb_tensor *nb_min(const nb_tensor *t);
/* correction = 1 is the unbiased estimate (PyTorch's default). */
nb_tensor *nb_var(const nb_tensor *t, const int32_t *dims, int32_t ndims, int64_t correction,
                  bool keepdim);
nb_tensor *nb_std(const nb_tensor *t, const int32_t *dims, int32_t ndims, int64_t correction,
                  bool keepdim);
nb_tensor *nb_norm(const nb_tensor *t, double p, const int32_t *dims, int32_t ndims,
                   bool keepdim);
/* max/min over one dim with their indices (either output pointer may be NULL). */
nb_status nb_max_dim(const nb_tensor *t, int32_t dim, bool keepdim, nb_tensor **values,
                     nb_tensor **indices);
nb_status nb_min_dim(const nb_tensor *t, int32_t dim, bool keepdim, nb_tensor **values,
                     nb_tensor **indices);
nb_tensor *nb_argmax(const nb_tensor *t, int32_t dim, bool keepdim); /* dim < -ndim: flat */
nb_tensor *nb_argmin(const nb_tensor *t, int32_t dim, bool keepdim);
#define NB_ALL_DIMS INT32_MIN /* for nb_argmax/nb_argmin over the flattened tensor */

/* ===================================== Linear algebra ===================================== */

nb_tensor *nb_mm(const nb_tensor *a, const nb_tensor *b);  /* (n,k) @ (k,m) */
nb_tensor *nb_bmm(const nb_tensor *a, const nb_tensor *b); /* (b,n,k) @ (b,k,m) */
nb_tensor *nb_matmul(const nb_tensor *a, const nb_tensor *b); /* torch.matmul's rules */
/* beta * c + alpha * (a @ b) */
nb_tensor *nb_addmm(const nb_tensor *c, const nb_tensor *a, const nb_tensor *b, double beta,
                    double alpha);

/* ======================================= Autograd ========================================= */

bool nb_tensor_requires_grad(const nb_tensor *t);
/* Only floating point tensors can require gradients; NB_DTYPE_UNSUPPORTED otherwise. */
nb_status nb_tensor_set_requires_grad(nb_tensor *t, bool requires_grad);
bool nb_tensor_is_leaf(const nb_tensor *t);
/* The accumulated gradient (a new reference) or NULL without error when there is none. */
nb_tensor *nb_tensor_grad(const nb_tensor *t);
nb_status nb_tensor_set_grad(nb_tensor *t, const nb_tensor *grad); /* NULL clears it */
nb_status nb_tensor_zero_grad(nb_tensor *t); /* sets .grad to None, like set_to_none=True */
nb_status nb_tensor_retain_grad(nb_tensor *t);

/* The graph. A nb_grad_fn is borrowed: valid while a tensor of that graph is alive. */
typedef struct nb_grad_fn nb_grad_fn;
const nb_grad_fn *nb_tensor_grad_fn(const nb_tensor *t); /* NULL for leaves */
const char *nb_grad_fn_name(const nb_grad_fn *fn);       /* "AddBackward0", "AccumulateGrad" */
int32_t nb_grad_fn_next_count(const nb_grad_fn *fn);
/* The i-th next function (NULL for inputs that need no grad). */
const nb_grad_fn *nb_grad_fn_next(const nb_grad_fn *fn, int32_t i);

/* tensor.backward(grad, retain_graph, create_graph); grad may be NULL for one-element
 * outputs. Options are zero-initialised: nb_backward(loss, NULL, (nb_backward_opts){0}). */
typedef struct nb_backward_opts {
    bool retain_graph; /* keep the saved tensors for another backward (implied by create_graph) */
    bool create_graph; /* the accumulated .grad gets a graph of its own (higher order) */
} nb_backward_opts;
nb_status nb_backward(nb_tensor *t, const nb_tensor *grad, nb_backward_opts opts);

typedef struct nb_grad_opts {
    bool retain_graph; /* defaults to create_graph */
    bool create_graph; /* build a graph of the gradient itself (higher order) */
    bool allow_unused; /* an input the outputs do not depend on gets NULL instead of an error */
} nb_grad_opts;
/* torch.autograd.grad: grads[i] = d(sum outputs * grad_outputs) / d inputs[i] (new refs). */
nb_status nb_grad(nb_tensor *const *outputs, nb_tensor *const *grad_outputs, int32_t n_outputs,
                  nb_tensor *const *inputs, int32_t n_inputs, nb_grad_opts opts,
                  nb_tensor **grads);

/* Thread-local grad mode. nb_set_grad_enabled returns the previous mode. */
bool nb_is_grad_enabled(void);
bool nb_set_grad_enabled(bool enabled);
void nb_no_grad_begin(void); /* nests */
void nb_no_grad_end(void);

/* Hooks see the gradient flowing into t; return NULL to keep it or a new tensor to replace it. */
typedef nb_tensor *(*nb_grad_hook_fn)(const nb_tensor *grad, void *ctx);
nb_status nb_tensor_register_hook(nb_tensor *t, nb_grad_hook_fn fn, void *ctx);

/* Custom differentiable functions. forward runs with grad disabled and returns the output;
 * backward receives the output's gradient and writes one gradient per input (NULL allowed). */
typedef struct nb_function {
    const char *name; /* shown as grad_fn name */
    nb_tensor *(*forward)(void *ctx, nb_tensor *const *inputs, int32_t n_inputs);
    nb_status (*backward)(void *ctx, const nb_tensor *grad_output, nb_tensor **grad_inputs,
                          int32_t n_inputs);
    void (*free_ctx)(void *ctx); /* (optional) when the graph is freed */
} nb_function;
nb_tensor *nb_function_apply(const nb_function *fn, void *ctx, nb_tensor *const *inputs,
                             int32_t n_inputs);

/* Central finite differences in float64 against the analytic gradient. fn must return a new
 * tensor computed from inputs (which must require grad). NB_OK if every entry agrees within
 * atol + rtol * |numeric|; otherwise NB_AUTOGRAD with the first mismatch in the message. */
typedef nb_tensor *(*nb_gradcheck_fn)(nb_tensor *const *inputs, int32_t n_inputs, void *ctx);
nb_status nb_gradcheck(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs, int32_t n_inputs,
                       double eps, double atol, double rtol);
/* torch.autograd.gradgradcheck: the first derivative d(sum fn(x) * v)/dx, built with
 * create_graph for a fixed pseudo-random v, checked by nb_gradcheck with respect to x and v.
 * An op that cannot be differentiated twice makes it fail with its own error. */
nb_status nb_gradgradcheck(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs,
                           int32_t n_inputs, double eps, double atol, double rtol);

/* ================================== nn: functional ======================================== */

typedef enum nb_reduction {
    NB_REDUCTION_MEAN = 0,
    NB_REDUCTION_SUM,
    NB_REDUCTION_NONE,
    NB_REDUCTION_BATCHMEAN, /* kl_div only: sum / batch size */
} nb_reduction;

typedef struct nb_conv2d_opts {
    int64_t stride[2];   /* 0 means 1 */
    int64_t padding[2];
    int64_t dilation[2]; /* 0 means 1 */
    int64_t groups;      /* 0 means 1 */
    bool padding_same;   /* padding="same" (stride 1): output size = input size; the odd extra
                          * row/column of an even kernel goes at the bottom/right, as PyTorch */
} nb_conv2d_opts;

typedef struct nb_pool2d_opts {
    int64_t kernel[2];
    int64_t stride[2]; /* 0 means the kernel size */
    int64_t padding[2];
    /* appended; zero is PyTorch's default */
    int64_t dilation[2];  /* max_pool2d only; 0 means 1 */
    bool ceil_mode;       /* ceil instead of floor for the output size */
    bool exclude_padding; /* avg_pool2d: count_include_pad=False (divide by the real elements) */
} nb_pool2d_opts;

nb_tensor *nb_linear(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b); /* b optional */
nb_tensor *nb_conv2d(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b,
                     nb_conv2d_opts opts);
nb_tensor *nb_max_pool2d(const nb_tensor *x, nb_pool2d_opts opts);
nb_tensor *nb_avg_pool2d(const nb_tensor *x, nb_pool2d_opts opts);
nb_tensor *nb_gelu(const nb_tensor *x);
nb_tensor *nb_softmax(const nb_tensor *x, int32_t dim);
nb_tensor *nb_log_softmax(const nb_tensor *x, int32_t dim);
nb_tensor *nb_dropout(const nb_tensor *x, double p, bool training);
nb_tensor *nb_batch_norm(const nb_tensor *x, nb_tensor *running_mean, nb_tensor *running_var,
                         const nb_tensor *weight, const nb_tensor *bias, bool training,
                         double momentum, double eps);
nb_tensor *nb_mse_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r);
nb_tensor *nb_binary_cross_entropy(const nb_tensor *input, const nb_tensor *target,
                                   nb_reduction r);
nb_tensor *nb_binary_cross_entropy_with_logits(const nb_tensor *input, const nb_tensor *target,
                                               nb_reduction r);
/* target: int64 class indices (N) for input (N, C) */
nb_tensor *nb_cross_entropy(const nb_tensor *input, const nb_tensor *target, nb_reduction r);
nb_tensor *nb_nll_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r);

/* ==================================== nn: modules ========================================= */

typedef struct nb_module nb_module;
/* A module's forward: computes the output from x (a new reference). */
typedef nb_tensor *(*nb_forward_fn)(nb_module *self, const nb_tensor *x);

/* A container with a type name ("Net") and a forward of your own; add children and parameters. */
nb_module *nb_module_new(const char *type_name, nb_forward_fn forward, void *user);
void nb_module_free(nb_module *m); /* frees children too; NULL is a no-op */
nb_status nb_module_add(nb_module *m, const char *name, nb_module *child); /* takes ownership */
nb_status nb_module_add_parameter(nb_module *m, const char *name, nb_tensor *p); /* retains */
nb_status nb_module_add_buffer(nb_module *m, const char *name, nb_tensor *b);    /* retains */
nb_module *nb_module_child(const nb_module *m, const char *name); /* borrowed, or NULL */
void *nb_module_user(const nb_module *m);
nb_tensor *nb_module_forward(nb_module *m, const nb_tensor *x);
/* Parameters in registration order, depth first; borrowed pointers valid while m lives. */
int32_t nb_module_parameter_count(const nb_module *m);
nb_tensor *nb_module_parameter(const nb_module *m, int32_t i);
const char *nb_module_parameter_name(const nb_module *m, int32_t i); /* "conv1.weight" */
/* Named state (parameters then buffers, depth first), for checkpoints. */
int32_t nb_module_state_count(const nb_module *m);
nb_tensor *nb_module_state(const nb_module *m, int32_t i, const char **name);
nb_status nb_module_zero_grad(nb_module *m);
nb_status nb_module_train(nb_module *m, bool training);
bool nb_module_is_training(const nb_module *m);
nb_status nb_module_to(nb_module *m, const char *device); /* moves parameters and buffers */
char *nb_module_str(const nb_module *m); /* PyTorch's repr; free with nb_free */

nb_module *nb_linear_new(int64_t in_features, int64_t out_features, bool bias, nb_opts opts);
nb_module *nb_conv2d_new(int64_t in_channels, int64_t out_channels, int64_t kh, int64_t kw,
                         nb_conv2d_opts conv, bool bias, nb_opts opts);
nb_module *nb_max_pool2d_new(nb_pool2d_opts opts);
nb_module *nb_relu_new(void);
nb_module *nb_sigmoid_new(void);
nb_module *nb_tanh_new(void);
nb_module *nb_flatten_new(int32_t start_dim, int32_t end_dim);
nb_module *nb_dropout_new(double p);
nb_module *nb_batch_norm1d_new(int64_t features, double eps, double momentum, nb_opts opts);
nb_module *nb_batch_norm2d_new(int64_t features, double eps, double momentum, nb_opts opts);
nb_module *nb_sequential_new(nb_module *const *children, int32_t n); /* takes ownership */

/* ============================ nn: more functional (core/nn/) ============================== */
/* Written as composites of the public ops above, so they run on every device and autograd,
 * create_graph included, comes with them. */

/* Activations (core/nn/activation.c), PyTorch's formulas and gradients. */
nb_tensor *nb_leaky_relu(const nb_tensor *x, double negative_slope); /* PyTorch: 0.01 */
nb_tensor *nb_elu(const nb_tensor *x, double alpha);                 /* PyTorch: 1.0 */
nb_tensor *nb_silu(const nb_tensor *x);
/* beta 0 means 1, threshold 0 means 20 (PyTorch's defaults). */
nb_tensor *nb_softplus(const nb_tensor *x, double beta, double threshold);
nb_tensor *nb_gelu_tanh(const nb_tensor *x); /* gelu(approximate="tanh") */
nb_tensor *nb_hardtanh(const nb_tensor *x, double min_val, double max_val); /* PyTorch: -1, 1 */
nb_tensor *nb_log_sigmoid(const nb_tensor *x);

/* Normalisation (core/nn/normalization.c). normalized_shape is the last n dims of x; weight and
 * bias (either may be NULL) have that shape. eps 0 means 1e-5. */
nb_tensor *nb_layer_norm(const nb_tensor *x, const int64_t *normalized_shape, int32_t n,
                         const nb_tensor *weight, const nb_tensor *bias, double eps);
/* x (N, C, *); weight and bias (C) or NULL. */
nb_tensor *nb_group_norm(const nb_tensor *x, int64_t num_groups, const nb_tensor *weight,
                         const nb_tensor *bias, double eps);

/* Embedding (core/nn/embedding.c): rows of weight (V, D) picked by integer indices of any shape;
 * out is indices.shape + (D). Rows equal to padding_idx get no gradient (negative counts from
 * the end; NB_NO_PADDING_IDX for none). Indices outside [0, V): NB_INDEX_OUT_OF_RANGE. */
#define NB_NO_PADDING_IDX INT64_MIN
nb_tensor *nb_embedding(const nb_tensor *indices, const nb_tensor *weight, int64_t padding_idx);

/* Attention (core/nn/attention.c). q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).
 * attn_mask (optional) broadcasts to (..., L, S): bool (true = may attend) or additive float.
 * scale 0 means 1/sqrt(E). dropout applies to the attention weights. */
typedef struct nb_sdpa_opts {
    const nb_tensor *attn_mask;
    double dropout_p;
    bool is_causal;
    double scale;
} nb_sdpa_opts;
nb_tensor *nb_scaled_dot_product_attention(const nb_tensor *q, const nb_tensor *k,
                                           const nb_tensor *v, nb_sdpa_opts opts);

/* nn.MultiheadAttention (core/nn/multihead_attention.c), PyTorch 2.x's. Parameters in
 * PyTorch's names, order and init: in_proj_weight (3E, E), or q_proj_weight (E, E),
 * k_proj_weight (E, kdim) and v_proj_weight (E, vdim) when kdim or vdim differ from E;
 * in_proj_bias (3E); bias_k and bias_v (1, 1, E) with add_bias_kv; the child out_proj (a Linear
 * E -> E that prints as NonDynamicallyQuantizableLinear). Inputs (N, L, E) with batch_first,
 * else (L, N, E), or unbatched (L, E); key (.., S, kdim), value (.., S, vdim). bias_k / bias_v
 * append one key and value, add_zero_attn a zero one per head (masks get a 0 column each).
 * dropout applies to the attention weights in training mode only (nb_module_train), drawn as
 * nb_dropout draws. nb_module_forward(m, x) is self-attention without masks. */
typedef struct nb_mha_config { /* the zero value is PyTorch's defaults */
    double dropout;     /* 0.0 */
    bool no_bias;       /* bias=False: no in_proj_bias, out_proj without bias */
    bool add_bias_kv;   /* False */
    bool add_zero_attn; /* False */
    int64_t kdim, vdim; /* 0 means embed_dim (None) */
    bool batch_first;   /* False */
} nb_mha_config;
nb_module *nb_multihead_attention_new_opts(int64_t embed_dim, int64_t num_heads,
                                           nb_mha_config cfg, nb_opts opts);
/* The first constructor: kdim = vdim = embed_dim, no dropout, no bias_kv or zero_attn. */
nb_module *nb_multihead_attention_new(int64_t embed_dim, int64_t num_heads, bool bias,
                                      bool batch_first, nb_opts opts);
/* The forward's options beyond query, key and value; need_weights is `weights != NULL`. */
typedef struct nb_mha_opts {
    const nb_tensor *key_padding_mask; /* (N, S), (S) unbatched: bool, true = ignore that key;
                                          or additive */
    const nb_tensor *attn_mask;        /* (L, S) or (N * heads, L, S): bool, true = masked out;
                                          or additive */
    bool is_causal;                    /* hint that attn_mask is the causal mask (needs it) */
    /* appended */
    bool per_head_weights;             /* average_attn_weights=False: weights (N, heads, L, S) */
} nb_mha_opts;
/* The output, and when weights is not NULL the attention weights (after dropout, as PyTorch)
 * averaged over the heads, (N, L, S) ((L, S) unbatched), or per head. Without weights and
 * without a mask (or with the is_causal hint) and dropout off, the heads run the fused
 * attention; otherwise the composite. Bad shapes: NB_SHAPE_MISMATCH naming them. */
nb_tensor *nb_multihead_attention(nb_module *m, const nb_tensor *query, const nb_tensor *key,
                                  const nb_tensor *value, nb_mha_opts opts, nb_tensor **weights);

/* Losses (core/nn/loss_extra.c). */
nb_tensor *nb_smooth_l1_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                             double beta); /* PyTorch: beta 1.0; 0 is the L1 loss */
nb_tensor *nb_huber_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                         double delta); /* PyTorch: delta 1.0 */
/* input holds log-probabilities; target probabilities (log-probabilities with log_target).
 * r may be NB_REDUCTION_BATCHMEAN (sum / batch size), the one that matches the maths. */
nb_tensor *nb_kl_div(const nb_tensor *input, const nb_tensor *target, nb_reduction r,
                     bool log_target);
/* cross_entropy / nll_loss with PyTorch's options. input (N, C), (N, C, d1, ...) or (C);
 * target int64 (N), (N, d1, ...) or 0-d. With mean reduction the loss is divided by the summed
 * weight of the targets that count, so with every target ignored it is NaN, as in PyTorch. */
typedef struct nb_class_loss_opts {
    nb_reduction reduction;
    const nb_tensor *weight;  /* (C) per-class weights, or NULL */
    int64_t ignore_index;     /* used when ignore_index_set; otherwise PyTorch's -100 */
    bool ignore_index_set;
    double label_smoothing;   /* cross_entropy only, in [0, 1] */
} nb_class_loss_opts;
nb_tensor *nb_cross_entropy_ex(const nb_tensor *input, const nb_tensor *target,
                               nb_class_loss_opts opts);
nb_tensor *nb_nll_loss_ex(const nb_tensor *input, const nb_tensor *target,
                          nb_class_loss_opts opts);
/* weight (broadcast to input) and pos_weight (broadcast along the last dim) may be NULL. */
nb_tensor *nb_binary_cross_entropy_with_logits_ex(const nb_tensor *input, const nb_tensor *target,
                                                  const nb_tensor *weight,
                                                  const nb_tensor *pos_weight, nb_reduction r);

/* Pooling (core/nn/pooling.c): x (N, C, H, W) or (C, H, W) to (.., oh, ow), PyTorch's bins. */
nb_tensor *nb_adaptive_avg_pool2d(const nb_tensor *x, int64_t oh, int64_t ow);

/* Gradient tools (core/nn/clip_grad.c). Parameters without a gradient are skipped.
 * clip_grad_norm_ scales every gradient by max_norm / (total + 1e-6) when the total norm (of
 * all gradients together, norm_type 2 usually, INFINITY for the max) exceeds max_norm; the
 * total before clipping goes to *total_norm (may be NULL). */
nb_status nb_clip_grad_norm_(nb_tensor *const *params, int32_t n, double max_norm,
                             double norm_type, double *total_norm);
nb_status nb_clip_grad_value_(nb_tensor *const *params, int32_t n, double clip_value);

/* ========================== more tensor ops (core/ops_extra.c, ops_sort.c) ================= */

/* log(sum(exp(t))) over dims, computed without overflow. */
nb_tensor *nb_logsumexp(const nb_tensor *t, const int32_t *dims, int32_t ndims, bool keepdim);
nb_tensor *nb_cumsum(const nb_tensor *t, int32_t dim);
/* t where mask (bool, broadcast to t) is false, value where it is true. */
nb_tensor *nb_masked_fill(const nb_tensor *t, const nb_tensor *mask, double value);
/* The lower / upper triangle of the last two dims (diagonal 0 is the main one). */
nb_tensor *nb_tril(const nb_tensor *t, int64_t diagonal);
nb_tensor *nb_triu(const nb_tensor *t, int64_t diagonal);
nb_tensor *nb_rpow_scalar(const nb_tensor *a, double s); /* s ** a */
nb_tensor *nb_outer(const nb_tensor *a, const nb_tensor *b); /* (n) x (m) -> (n, m) */
/* torch.einsum with two operands: "ij,jk->ik", "bhqd,bhkd->bhqk", "bi,bj->bij", "i,i->"...;
 * an explicit "->" output, letters only, no repeated letter within one operand. */
nb_tensor *nb_einsum(const char *equation, const nb_tensor *a, const nb_tensor *b);
/* Values (differentiable) and int64 indices along dim; either output may be NULL. NaN sorts
 * as the largest value, as in PyTorch; ties keep their order (stable). */
nb_status nb_sort(const nb_tensor *t, int32_t dim, bool descending, nb_tensor **values,
                  nb_tensor **indices);
nb_tensor *nb_argsort(const nb_tensor *t, int32_t dim, bool descending);
nb_status nb_topk(const nb_tensor *t, int64_t k, int32_t dim, bool largest, nb_tensor **values,
                  nb_tensor **indices);

/* ==================== nn: more modules and module conveniences (core/nn/) ================== */

nb_module *nb_leaky_relu_new(double negative_slope);
nb_module *nb_elu_new(double alpha);
nb_module *nb_silu_new(void);
nb_module *nb_softplus_new(double beta, double threshold); /* 0 means PyTorch's 1 and 20 */
nb_module *nb_gelu_new(bool approximate_tanh);
nb_module *nb_hardtanh_new(double min_val, double max_val);
nb_module *nb_log_sigmoid_new(void);
/* LayerNorm over the last n dims; eps 0 means 1e-5; weight (ones) and bias (zeros) when
 * elementwise_affine. */
nb_module *nb_layer_norm_new(const int64_t *normalized_shape, int32_t n, double eps,
                             bool elementwise_affine, bool bias, nb_opts opts);
nb_module *nb_group_norm_new(int64_t num_groups, int64_t num_channels, double eps, bool affine,
                             nb_opts opts);
/* weight (num, dim) from N(0, 1), the padding row zeroed. */
nb_module *nb_embedding_new(int64_t num_embeddings, int64_t embedding_dim, int64_t padding_idx,
                            nb_opts opts);
nb_module *nb_avg_pool2d_new(nb_pool2d_opts opts);
nb_module *nb_adaptive_avg_pool2d_new(int64_t oh, int64_t ow);

/* The module's type name ("Linear", "Net"). */
const char *nb_module_type(const nb_module *m);
/* Module.apply: fn on every submodule, children first, then m itself (custom init). */
typedef nb_status (*nb_module_apply_fn)(nb_module *m, void *ctx);
nb_status nb_module_apply(nb_module *m, nb_module_apply_fn fn, void *ctx);
/* named_modules(): m itself (name "") then every submodule, pre-order, with dotted names. */
int32_t nb_module_named_count(const nb_module *m);
nb_module *nb_module_named(const nb_module *m, int32_t i, char *name, size_t len); /* borrowed */
/* Forward hooks. A pre hook may return a new input, a hook a new output (new references);
 * NULL keeps what there was. The returned handle (> 0) removes the hook; -1 on error. */
typedef nb_tensor *(*nb_forward_pre_hook_fn)(nb_module *m, const nb_tensor *input, void *ctx);
typedef nb_tensor *(*nb_forward_hook_fn)(nb_module *m, const nb_tensor *input,
                                         const nb_tensor *output, void *ctx);
int64_t nb_module_register_forward_pre_hook(nb_module *m, nb_forward_pre_hook_fn fn, void *ctx);
int64_t nb_module_register_forward_hook(nb_module *m, nb_forward_hook_fn fn, void *ctx);
nb_status nb_module_remove_hook(nb_module *m, int64_t handle);
/* load_state_dict(strict): names are matched both ways; strict refuses any missing or
 * unexpected key (NB_INVALID_ARGUMENT, PyTorch's message, nothing copied), non-strict copies
 * the matching ones. Shapes must always agree. The keys go to *report either way (may be NULL;
 * free it with nb_load_report_free). */
typedef struct nb_load_report {
    int32_t n_missing;
    char **missing;
    int32_t n_unexpected;
    char **unexpected;
} nb_load_report;
nb_status nb_module_load_state(nb_module *m, nb_tensor *const *tensors, const char *const *names,
                               int32_t n, bool strict, nb_load_report *report);
nb_status nb_module_load_ex(nb_module *m, const char *path, bool strict, nb_load_report *report);
void nb_load_report_free(nb_load_report *report);

/* ======================================== optim =========================================== */

typedef struct nb_optim nb_optim;
typedef struct nb_sgd_opts {
    double lr, momentum, dampening, weight_decay;
    bool nesterov;
} nb_sgd_opts;
/* A zero field means PyTorch's default, so {.lr = 3e-4} is Adam(lr=3e-4). Zeros that PyTorch
 * takes as values (Adam's betas=(0.0, 0.99), eps=0, AdamW's weight_decay=0) need as_given:
 * start from nb_adam_defaults() / nb_adamw_defaults() / nb_rmsprop_defaults(), which set it
 * with PyTorch's defaults filled in, and every field is then taken as it is. */
typedef struct nb_adam_opts {
    double lr;       /* 0 means 1e-3 */
    double beta1;    /* 0 means 0.9 */
    double beta2;    /* 0 means 0.999 */
    double eps;      /* 0 means 1e-8 */
    double weight_decay; /* AdamW: 0 means 1e-2 */
    bool as_given;   /* every field as it is, zeros included */
} nb_adam_opts;
typedef struct nb_rmsprop_opts {
    double lr;    /* 0 means 1e-2 */
    double alpha; /* 0 means 0.99 */
    double eps;   /* 0 means 1e-8 */
    double weight_decay, momentum;
    bool as_given; /* every field as it is, zeros included */
} nb_rmsprop_opts;
nb_adam_opts nb_adam_defaults(void);  /* lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0 */
nb_adam_opts nb_adamw_defaults(void); /* the same with weight_decay 1e-2 */
nb_rmsprop_opts nb_rmsprop_defaults(void); /* lr 1e-2, alpha 0.99, eps 1e-8 */
/* params are retained by the optimizer. */
nb_optim *nb_sgd_new(nb_tensor *const *params, int32_t n, nb_sgd_opts opts);
nb_optim *nb_adam_new(nb_tensor *const *params, int32_t n, nb_adam_opts opts);
nb_optim *nb_adamw_new(nb_tensor *const *params, int32_t n, nb_adam_opts opts);
nb_optim *nb_rmsprop_new(nb_tensor *const *params, int32_t n, nb_rmsprop_opts opts);
/* All parameters of a module. */
nb_optim *nb_sgd_new_for(const nb_module *m, nb_sgd_opts opts);
nb_status nb_optim_step(nb_optim *o);
nb_status nb_optim_zero_grad(nb_optim *o);
double nb_optim_lr(const nb_optim *o);
nb_status nb_optim_set_lr(nb_optim *o, double lr);
void nb_optim_free(nb_optim *o);
/* The optimizer's state (momentum buffers, Adam moments and step counts, the learning rate) in
 * a safetensors file, torch.optim's state_dict() flattened: "state.<i>.exp_avg", ...,
 * "state.<i>.step", "param_groups.0.lr". Loading replaces the state, so a resumed run continues
 * exactly; the optimizer must have the same kind and parameter shapes. */
nb_status nb_optim_save(const nb_optim *o, const char *path);
nb_status nb_optim_load(nb_optim *o, const char *path);

typedef struct nb_lr_scheduler nb_lr_scheduler;
nb_lr_scheduler *nb_step_lr_new(nb_optim *o, int64_t step_size, double gamma);
nb_lr_scheduler *nb_cosine_annealing_lr_new(nb_optim *o, int64_t t_max, double eta_min);
nb_status nb_lr_scheduler_step(nb_lr_scheduler *s);
void nb_lr_scheduler_free(nb_lr_scheduler *s);

/* ==================================== Serialization ======================================= */

/* safetensors files: named tensors (f32/f64/i32/i64/bool/u8), readable by the Python package. */
nb_status nb_safetensors_save(const char *path, nb_tensor *const *tensors,
                              const char *const *names, int32_t n);
/* Loads every tensor onto `device` (NULL: default); *tensors and *names are arrays to release
 * with nb_safetensors_free. */
nb_status nb_safetensors_load(const char *path, const char *device, nb_tensor ***tensors,
                              char ***names, int32_t *n);
void nb_safetensors_free(nb_tensor **tensors, char **names, int32_t n);
nb_status nb_module_save(const nb_module *m, const char *path);
nb_status nb_module_load(nb_module *m, const char *path); /* shapes must match */

/* ================================ Distributed (collectives) =============================== */
/* A process group runs collectives across processes through a backend plugin
 * (nabla_collective_<name>.so: "mpi" for cpu tensors and, staged through host memory, any other
 * device; "nccl" for cuda tensors). Every rank must issue the same collectives in the same
 * order. Each call returns a work handle at once; nb_work_wait blocks until the result is in
 * the tensor. A peer that dies or stalls makes the wait fail with NB_DEVICE_ERROR and a message
 * within opts.timeout_s, after which the group is broken: every later call fails at once.
 * Ranks that disagree on a call (kind, dtype, shape, root) all fail it, before any data moves,
 * with NB_SHAPE_MISMATCH, NB_DTYPE_UNSUPPORTED or NB_INVALID_ARGUMENT; the group stays usable.
 * A tensor on a device the backend cannot reach (nor stage) is NB_DEVICE_MISMATCH. */

typedef struct nb_process_group nb_process_group;
typedef struct nb_work nb_work;

typedef struct nb_process_group_opts {
    const char *backend;   /* "mpi", "nccl"; NULL: NABLA_DIST_BACKEND, else "mpi" under mpirun */
    double timeout_s;      /* 0 means 600 s */
    int32_t rank;          /* for launchers that set nothing; 0 and world_size 0: from the */
    int32_t world_size;    /*   environment (mpirun's, or RANK/WORLD_SIZE as torchrun sets) */
    /* nccl: how ranks share NCCL's unique id: through another group (e.g. an mpi one) or a
     * file on a shared file system that does not exist yet (rank 0 writes it). */
    nb_process_group *bootstrap;
    const char *init_file;
} nb_process_group_opts;

typedef enum nb_reduce_op {
    NB_REDUCE_OP_SUM = 0,
    NB_REDUCE_OP_AVG = 1, /* sum / world size; floating dtypes only */
    NB_REDUCE_OP_PROD = 2,
    NB_REDUCE_OP_MIN = 3,
    NB_REDUCE_OP_MAX = 4
} nb_reduce_op;

nb_process_group *nb_process_group_new(nb_process_group_opts opts);
/* Waits for the group's work still in flight first (its handles stay yours to free; their waits
 * then return what that wait did). NULL is a no-op. */
void nb_process_group_free(nb_process_group *pg);
int32_t nb_process_group_rank(const nb_process_group *pg);       /* -1 for NULL */
int32_t nb_process_group_size(const nb_process_group *pg);       /* -1 for NULL */
const char *nb_process_group_backend(const nb_process_group *pg); /* "mpi" */
/* Whether backend `name` loads (loading it if needed), for nabla-info. Strings stay valid for
 * the life of the process. */
typedef struct nb_process_group_backend_info {
    const char *name;
    const char *path;    /* the file, "" if none was found */
    const char *version; /* the backend's (e.g. "Open MPI v4.1.4"), "" if it did not load */
    const char *devices; /* device types it reaches directly, "" if it did not load */
    bool loaded;
    const char *note;    /* why it did not load, "" if it did */
} nb_process_group_backend_info;
nb_status nb_process_group_backend_get(const char *name, nb_process_group_backend_info *info);

/* t is reduced in place on every rank. t is borrowed but must stay alive until the wait. */
nb_work *nb_allreduce(nb_process_group *pg, nb_tensor *t, nb_reduce_op op);
/* t of rank `root` is copied into t on every rank. */
nb_work *nb_broadcast(nb_process_group *pg, nb_tensor *t, int32_t root);
/* out receives every rank's in, in rank order: out has world_size * numel(in) elements of
 * in's dtype, e.g. shape (world_size, ...in's shape) or (world_size * n, ...). */
nb_work *nb_allgather(nb_process_group *pg, const nb_tensor *in, nb_tensor *out);
nb_work *nb_barrier(nb_process_group *pg);
/* Blocks until done; the result is then in the tensor. A second wait returns the same status.
 * Calls on one group come from one thread at a time. */
nb_status nb_work_wait(nb_work *w);
/* Waits first if nobody did. NULL is a no-op. */
void nb_work_free(nb_work *w);
/* The work done by a blocking call, for the common case: issue, wait, free. */
nb_status nb_work_finish(nb_work *w);

/* Autograd hook that runs once a leaf's .grad holds this backward's whole gradient (PyTorch's
 * register_post_accumulate_grad_hook); a status other than NB_OK stops the backward with it.
 * Removal takes the same fn and ctx. */
typedef nb_status (*nb_post_accumulate_grad_hook_fn)(nb_tensor *t, void *ctx);
nb_status nb_tensor_register_post_accumulate_grad_hook(nb_tensor *t,
                                                       nb_post_accumulate_grad_hook_fn fn,
                                                       void *ctx);
nb_status nb_tensor_remove_post_accumulate_grad_hook(nb_tensor *t,
                                                     nb_post_accumulate_grad_hook_fn fn,
                                                     void *ctx);

/* Distributed data parallel (PyTorch's DistributedDataParallel): construction broadcasts the
 * module's parameters and buffers from rank 0 (after checking that every rank has the same
 * names, shapes and dtypes); gradients are packed into buckets in reverse registration order,
 * the first of 1 MiB (PyTorch's _DEFAULT_FIRST_BUCKET_BYTES: the last layers' gradients, which
 * backward produces first, start their allreduce early) and the others of 25 MiB, or all of
 * bucket_mb when it is given (as PyTorch 2.x). Before the second synced backward (in
 * nb_ddp_forward, or at its first gradient), the buckets are rebuilt once in the order the first
 * backward produced its gradients, rank 0's order on every rank (PyTorch's bucket rebuild; not
 * with find_unused_parameters). A bucket is allreduced as soon as backward has
 * produced all of its gradients, overlapping the rest of backward. When the last bucket is in,
 * the gradients are averaged into .grad, so nb_optim_step follows nb_backward as usual. */
typedef struct nb_ddp nb_ddp;
typedef struct nb_ddp_opts {
    double bucket_mb;   /* 0: a first bucket of 1 MiB, then 25 MiB */
    bool no_broadcast;  /* skip the broadcast from rank 0 at construction */
    bool no_buffer_sync; /* do not broadcast buffers from rank 0 before every forward */
    /* Parameters the graph of nb_ddp_forward's output does not reach are ready (adding zero,
     * or what no_sync steps accumulated) when backward starts, so a model whose branches
     * differ across ranks still reduces; one small extra allreduce per step tells every rank
     * which parameters somebody used: those get the average in .grad on every rank, the others
     * keep .grad as it was. Needs the forward through nb_ddp_forward. */
    bool find_unused_parameters;
    /* .grad becomes a view into its bucket after the first synced backward (until
     * nb_ddp_free), so the average needs no copy out; with zero_grad setting .grad to NULL,
     * each backward still copies its fresh gradient in once. */
    bool gradient_as_bucket_view;
} nb_ddp_opts;
/* m and pg are borrowed and must outlive the nb_ddp. */
nb_ddp *nb_ddp_new(nb_module *m, nb_process_group *pg, nb_ddp_opts opts);
void nb_ddp_free(nb_ddp *d); /* removes its hooks; NULL is a no-op */
/* The module's forward, after broadcasting its buffers from rank 0 (unless no_buffer_sync). */
nb_tensor *nb_ddp_forward(nb_ddp *d, const nb_tensor *x);
/* Waits for outstanding buckets of a backward that did not reach every parameter, and fails
 * naming the parameters that got no gradient (PyTorch's unused-parameter error, which points
 * to find_unused_parameters). NB_OK when the last backward finished normally. */
nb_status nb_ddp_finish(nb_ddp *d);
/* PyTorch's no_sync: with sync false, backward only accumulates local gradients into .grad; the
 * next backward with sync true reduces the accumulated sum. Not while a backward is half done. */
nb_status nb_ddp_set_sync(nb_ddp *d, bool sync);
int32_t nb_ddp_bucket_count(const nb_ddp *d);
/* The bucket layout, read-only: bucket b (0 is reduced first) holds the parameters whose
 * nb_module_parameter indices are written into idx (at most cap of them), in bucket order.
 * Returns how many it holds, or -1 (and an error) for a bucket out of range. */
int32_t nb_ddp_bucket_params(const nb_ddp *d, int32_t bucket, int32_t *idx, int32_t cap);
/* Bytes allreduced since construction (gradients only), for benchmarks. */
uint64_t nb_ddp_bytes_reduced(const nb_ddp *d);
/* Seconds the last backward spent waiting for communication after its final gradient. */
double nb_ddp_last_wait_s(const nb_ddp *d);

/* A distributed sampler (torch.utils.data.DistributedSampler): rank r of w takes every w-th
 * index of a permutation of [0, n) that is the same on every rank for the same seed and epoch;
 * n is padded by repeating indices so every rank gets ceil(n / w). Writes count indices into
 * out (count from nb_distributed_sampler_count). */
int64_t nb_distributed_sampler_count(int64_t n, int32_t world_size);
nb_status nb_distributed_sampler_indices(int64_t n, int32_t rank, int32_t world_size,
                                         uint64_t seed, int64_t epoch, bool shuffle,
                                         int64_t *out, int64_t count);

/* ==================== Mixed precision: autocast and gradient scaling ======================= */
/* torch.autocast (core/tensor/autocast.c). Between nb_autocast_begin(device, dtype) and
 * nb_autocast_end(), on this thread, the ops on PyTorch's autocast lists cast their operands
 * when they are on a device of that type:
 *   lower precision, floating operands (float64 excepted) to dtype: nb_mm, nb_bmm, nb_matmul,
 *     nb_addmm, nb_linear, nb_conv2d, nb_scaled_dot_product_attention (nb_einsum runs through
 *     nb_matmul and follows it; nb_outer is a product, on no list, as in PyTorch's cpu lists);
 *   float32, 16-bit operands to float32: nb_softmax, nb_log_softmax, the losses (mse, the
 *     cross entropies, nll, bce, smooth_l1, huber, kl_div), nb_layer_norm, nb_group_norm,
 *     nb_batch_norm, nb_sum, nb_mean, nb_prod, nb_exp, nb_log, nb_pow (and its _scalar forms),
 *     nb_cumsum, nb_logsumexp;
 *   any other op runs in its operands' dtypes, promoted as usual (bf16 + f32 is f32).
 * The casts are differentiable (grad_fn ToCopyBackward0), so float32 parameters stay float32 and
 * their .grad is float32. As PyTorch's cache, a float32 leaf that requires grad (a weight) is
 * cast once per outermost region, however often it is used, and the region holds that cast (and
 * the weight) until it ends. The ops an autocast op is made of are not cast again (PyTorch's
 * dispatcher excludes autocast below such an op). Run nb_backward after nb_autocast_end, as
 * PyTorch recommends; in-place ops are never cast.
 *
 * device: a device string ("cpu", "cuda", "opencl:0"; NULL: the default device); the region
 * covers every device of its type, as torch.autocast(device_type). dtype: NB_DTYPE_F16 or
 * NB_DTYPE_BF16, or 0 (the zero value) for the device type's default as dtype=None does:
 * bfloat16 on cpu, float16 elsewhere. The device must have a matmul kernel in that dtype;
 * otherwise, or for any other dtype, NB_DTYPE_UNSUPPORTED naming both; an unknown device is the
 * usual device error. Regions nest (32 deep at most) and the innermost one of a device type
 * decides: a nested begin with another dtype switches to it, and nb_autocast_begin_ex(device,
 * dtype, false) is torch.autocast(..., enabled=False): a region that casts nothing (dtype is
 * then not checked). nb_autocast_end closes the innermost region of any kind; NB_STATE when
 * this thread has none open. Close every region before nb_shutdown. */
nb_status nb_autocast_begin(const char *device, nb_dtype dtype);
nb_status nb_autocast_begin_ex(const char *device, nb_dtype dtype, bool enabled);
nb_status nb_autocast_end(void);
/* torch.is_autocast_enabled(device_type): the innermost region of the device's type is on. */
bool nb_autocast_is_enabled(const char *device);
/* torch.get_autocast_dtype(device_type): the innermost region's dtype, else the default. */
nb_dtype nb_autocast_dtype(const char *device);

/* torch.amp.GradScaler (core/nn/grad_scaler.c): scales the loss so that small float16
 * gradients do not flush to zero, and unscales the gradients before the optimizer uses them.
 *     nb_tensor *scaled = nb_grad_scaler_scale(s, loss);
 *     nb_backward(scaled, NULL, (nb_backward_opts){0});
 *     nb_grad_scaler_step(s, opt);   // unscales, steps unless a gradient is inf or NaN
 *     nb_grad_scaler_update(s);      // backoff after a skipped step, growth after enough good ones
 * nb_grad_scaler_unscale(s, opt) may come before step (to clip the true gradients), at most
 * once per optimizer between updates, as PyTorch; step then does not unscale again. A step
 * with an inf or NaN gradient leaves the parameters alone; update then multiplies the scale by
 * backoff_factor and restarts the count of good steps; growth_interval good steps in a row
 * multiply it by growth_factor. The scale is a float32 value, as PyTorch's. Several optimizers
 * may share one scaler (each is unscaled and stepped once per update). Gradients in float16
 * are refused (NB_DTYPE_UNSUPPORTED): keep float32 master weights. */
typedef struct nb_grad_scaler nb_grad_scaler;
typedef struct nb_grad_scaler_opts {
    double init_scale;       /* 0 means 65536 (2^16) */
    double growth_factor;    /* 0 means 2.0; must be > 1 */
    double backoff_factor;   /* 0 means 0.5; must be in (0, 1) */
    int64_t growth_interval; /* 0 means 2000 */
    bool disabled;           /* enabled=False: scale returns the loss, step is nb_optim_step,
                              * unscale and update do nothing, get_scale is 1 */
} nb_grad_scaler_opts;
nb_grad_scaler *nb_grad_scaler_new(nb_grad_scaler_opts opts);
void nb_grad_scaler_free(nb_grad_scaler *s); /* NULL is a no-op */
nb_tensor *nb_grad_scaler_scale(nb_grad_scaler *s, const nb_tensor *loss); /* loss * scale */
nb_status nb_grad_scaler_unscale(nb_grad_scaler *s, nb_optim *o);
nb_status nb_grad_scaler_step(nb_grad_scaler *s, nb_optim *o);
nb_status nb_grad_scaler_update(nb_grad_scaler *s);
double nb_grad_scaler_get_scale(const nb_grad_scaler *s); /* 1 when disabled, 0 for NULL */
/* Steps skipped since creation for an inf or NaN gradient (for logs and tests). */
int64_t nb_grad_scaler_skipped_steps(const nb_grad_scaler *s);

/* The optimizer's parameters (optimizer.param_groups[0]["params"]), borrowed (core/nn/optim.c). */
int32_t nb_optim_param_count(const nb_optim *o); /* -1 for NULL */
nb_tensor *nb_optim_param(const nb_optim *o, int32_t i);

#ifdef __cplusplus
}
#endif
#endif /* NABLA_H */
