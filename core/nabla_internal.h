/* nabla_internal.h - the core's private structures and the functions core files share.
 * Nothing here is API: applications use nabla.h, plugins nabla_plugin.h. */
#ifndef NABLA_INTERNAL_H
#define NABLA_INTERNAL_H

#include "nabla.h"
#include "nabla_plugin.h"

#include <limits.h>
#include <stdatomic.h>

/* ---- For the files built on ops (functional.c, nn.c, optim.c, serialize.c) ---- */

/* Records an error for this thread and returns status; fmt is printf-style. */
nb_status nbi_error(nb_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The pending error's status, or a new error (status, msg) when none is pending. */
nb_status nbi_last_or(nb_status status, const char *msg);

/* true if the device of `like` has a native kernel for op at like's dtype. */
bool nbi_has_kernel(const nb_tensor *like, const char *op);

/* Runs the native kernel `op` (dtype taken from `out`; for reductions/comparisons from in[0])
 * of out's device on already-allocated operands. No autograd, no broadcasting, no casting:
 * operands are passed as they are (with their strides). f and i may be NULL (zeros). */
nb_status nbi_run(const char *op, nb_tensor *out, nb_tensor *const *in, int32_t n_in,
                  const double *f, int32_t nf, const int64_t *i, int32_t ni);

/* nn.c: modules defined by the files under core/nn/: a forward, an extra_repr (PyTorch's) and a
 * configuration the module owns (copied at creation, freed with it). */
typedef struct nbi_module_kind {
    const char *type_name;
    nb_tensor *(*forward)(nb_module *m, const nb_tensor *x, const void *cfg);
    void (*extra_repr)(const void *cfg, char *buf, size_t len); /* (optional) */
} nbi_module_kind;
nb_module *nbi_module_new_kind(const nbi_module_kind *kind, const void *cfg, size_t cfg_size);
nb_tensor *nbi_module_own(const nb_module *m, const char *name); /* own parameter or buffer */
void nbi_py_float_repr(double v, char *out, size_t len); /* Python's repr() of a float */

/* ---- Core-private from here on ---- */

#define NBI_LIKELY(x) __builtin_expect(!!(x), 1)
#define NBI_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* runtime.c: host memory through the replaceable allocator. */
void *nbi_malloc(size_t size);
void *nbi_calloc(size_t n, size_t size);
void *nbi_realloc(void *p, size_t size);
void nbi_free(void *p);
char *nbi_strdup(const char *s);
void nbi_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool nbi_error_pending(void); /* an op received NULL: keep the first error */
nb_status nbi_ensure_init(void);
/* plugin.c: the folders the core searches after NABLA_PLUGIN_PATH (libnabla's, its nabla/). */
int nbi_core_plugin_dirs(char dirs[2][PATH_MAX]);
/* Scopes track exactly the tensors handed to application code. Every public function runs its
 * body one level deeper (NBI_API); a result leaving depth 0 goes into the open scope, while calls
 * the core makes to its own public functions stay untracked. Application callbacks (forwards,
 * hooks, custom functions) run at depth 0 again through nbi_call_user_begin/end, below. */
extern _Thread_local int nbi_api_depth;
bool nbi_scope_track(nb_tensor *t); /* false (and t released, error set) when out of memory */
/* The core drops its own references with nbi_release, which never touches a scope; only the
 * application's nb_release takes a tensor out of the scope that tracks it (tensor.c). */
void nbi_release(nb_tensor *t);
#ifdef NB_BUILDING_CORE
#define nb_release(t) nbi_release(t)
#endif
void nbi_scope_untrack(nb_tensor *t); /* a tensor a callback returned to the core */
static inline nb_tensor *nbi_api_leave(nb_tensor *t)
{
    if (--nbi_api_depth == 0 && t && !nbi_scope_track(t))
        return NULL;
    return t;
}
/* At every public definition: NBI_API for a tensor result (tracked by the open scope when it
 * leaves depth 0), NBI_API_CALL for any other result, NBI_API_VOID for none. */
#define NBI_API(expr) (nbi_api_depth++, nbi_api_leave(expr))
#define NBI_API_CALL(expr)                                                                  \
    ({                                                                                      \
        nbi_api_depth++;                                                                    \
        __typeof__(expr) nbi_result_ = (expr);                                              \
        nbi_api_depth--;                                                                    \
        nbi_result_;                                                                        \
    })
#define NBI_API_STATUS(expr) NBI_API_CALL(expr)
#define NBI_API_VOID(expr) (nbi_api_depth++, (expr), (void)nbi_api_depth--)
/* A callback starts like fresh application code: at depth 0 and with no scope open (it may open
 * its own), so it can follow the plain ownership rule whatever scope its caller had open. */
typedef struct nbi_user_call {
    int depth, floor;
} nbi_user_call;
nbi_user_call nbi_call_user_begin(void);
void nbi_call_user_end(nbi_user_call saved);
extern _Atomic int64_t nbi_live_tensor_count;
extern _Atomic int64_t nbi_live_storage_count;

/* runtime.c: a growable string; the first failed allocation sticks (oom) and p stays valid. */
typedef struct nbi_sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} nbi_sbuf;
void nbi_sbuf_putn(nbi_sbuf *b, const char *s, size_t n);
void nbi_sbuf_puts(nbi_sbuf *b, const char *s);
void nbi_sbuf_printf(nbi_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Op ids: the core's own numbering; names cross the ABI as strings. */
#define NBI_OPS(X)                                                                          \
    X(fill) X(copy) X(arange)                                                              \
    X(neg) X(abs) X(exp) X(log) X(sqrt) X(rsqrt) X(sin) X(cos) X(tanh) X(sigmoid) X(relu)   \
    X(sign) X(floor) X(ceil) X(round) X(logical_not)                                       \
    X(add_scalar) X(mul_scalar) X(rsub_scalar) X(div_scalar) X(rdiv_scalar) X(pow_scalar)  \
    X(rpow_scalar) X(clamp)                                                                \
    X(eq_scalar) X(ne_scalar) X(lt_scalar) X(le_scalar) X(gt_scalar) X(ge_scalar)          \
    X(add) X(sub) X(mul) X(div) X(pow) X(maximum) X(minimum)                               \
    X(eq) X(ne) X(lt) X(le) X(gt) X(ge) X(logical_and) X(logical_or) X(logical_xor)        \
    X(where) X(sum) X(prod) X(max) X(min) X(argmax) X(argmin) X(matmul) X(gather)          \
    X(scatter_add) X(random_uniform) X(random_normal)                                      \
    X(relu_backward) X(softmax) X(log_softmax) X(log_softmax_backward) X(softmax_backward) \
    X(conv2d) X(conv2d_backward_input) X(conv2d_backward_weight) X(max_pool2d)             \
    X(max_pool2d_backward) X(sgd_step) X(adam_step)                                       \
    X(attention) X(layer_norm) /* core/nn/attention.c, core/nn/normalization.c */          \
    X(attention_backward) X(layer_norm_backward) X(gelu) X(gelu_backward)                  \
    X(embedding_backward) /* core/nn/ */

typedef enum nbi_op {
#define NBI_OP_ENUM_(name) NBI_OP_##name,
    NBI_OPS(NBI_OP_ENUM_)
#undef NBI_OP_ENUM_
    NBI_OP_COUNT
} nbi_op;

const char *nbi_op_name(nbi_op op);
int nbi_op_lookup(const char *name); /* -1 if unknown */

/* device.c / plugin.c */
typedef struct nbi_plugin nbi_plugin;

typedef struct nbi_device {
    nbi_plugin *plugin;
    const nb_plugin *api;
    int32_t index;      /* within the plugin */
    char name[48];      /* "cpu", "opencl:0": as printed in device='...' and by nb_tensor_device */
    nb_kernel_fn kernels[NBI_OP_COUNT][NB_DTYPE_COUNT];
    bool is_cpu;
    /* caching allocator: free blocks by size class */
    struct nbi_storage *free_lists[256]; /* by size class, linked through handle-less storages */
    size_t cached_bytes;
    bool fell_back[NBI_OP_COUNT]; /* ops that ran on the CPU through NABLA_CPU_FALLBACK */
} nbi_device;

nb_status nbi_device_get(const char *device, nbi_device **out); /* NULL: default device */
nbi_device *nbi_cpu_device(void);
void nbi_devices_shutdown(void);
nb_status nbi_plugins_discover(void);
void nbi_plugins_unload(void);
bool nbi_cpu_fallback_enabled(void);

/* storage.c: reference-counted device buffers through the per-device cache. */
typedef struct nbi_storage {
    _Atomic int64_t refcount;
    struct nbi_storage *next_free; /* in the device's cache while unused */
    nbi_device *device;
    void *handle;   /* plugin handle; never dereferenced here */
    size_t bytes;   /* usable bytes */
    size_t block;   /* bytes of the cached block (0 for wrapped host memory) */
    void (*release)(void *ctx); /* from_blob */
    void *release_ctx;
    _Atomic int64_t version; /* shared by every view: bumped by in-place ops */
} nbi_storage;

nbi_storage *nbi_storage_new(nbi_device *dev, size_t bytes);
nbi_storage *nbi_storage_wrap(nbi_device *dev, void *ptr, size_t bytes, void (*release)(void *),
                              void *ctx);
void nbi_storage_release(nbi_storage *s);
void nbi_storage_cache_flush(nbi_device *dev);

/* autograd.c */
typedef struct nbi_node nbi_node;
typedef struct nbi_hook nbi_hook;

struct nb_tensor {
    _Atomic int64_t refcount;
    nbi_storage *storage;
    int64_t offset; /* in elements */
    nb_dtype dtype;
    int32_t ndim;
    int64_t shape[NB_MAX_DIMS];
    int64_t strides[NB_MAX_DIMS];
    /* autograd */
    bool requires_grad;
    bool retains_grad;
    int32_t tracked; /* references held by application scopes */
    nbi_node *grad_fn;  /* strong; NULL for leaves */
    nbi_node *grad_acc; /* weak: the AccumulateGrad node of a leaf, if one exists */
    nb_tensor *grad;
    nbi_hook *hooks; /* for leaves; non-leaves keep theirs on grad_fn */
    struct nbi_post_hook *post_hooks; /* leaves: run once .grad is accumulated (DDP) */
    /* views (PyTorch's differentiable views): the root base whose storage this view shares, so
     * an in-place write through the view rebases the base's history (CopySlices) and the
     * view's grad_fn is regenerated from the base's when that history changes. */
    nb_tensor *view_base;        /* strong; NULL for tensors that are not views */
    const nbi_node *view_seen;   /* weak: the base's grad_fn when view's grad_fn was built */
    bool view_no_grad;           /* created in no-grad mode: never regenerated */
};

/* tensor.c */
nb_tensor *nbi_tensor_new(nbi_device *dev, nb_dtype dtype, int32_t ndim, const int64_t *shape);
nb_tensor *nbi_tensor_alias(const nb_tensor *t); /* new view object with the same geometry */
nb_tensor *nbi_tensor_view(const nb_tensor *t, int32_t ndim, const int64_t *shape,
                           const int64_t *strides, int64_t offset);
int64_t nbi_numel(int32_t ndim, const int64_t *shape);
/* Checked shape arithmetic: every shape from caller input passes nbi_check_shape before a tensor
 * gets it (sizes >= 0, element count and contiguous strides below 2^59, so they fit int64 even
 * in bytes: NB_INVALID_ARGUMENT otherwise), so nbi_numel and nbi_contiguous_strides need no
 * checks. nbi_check_bytes refuses more than PTRDIFF_MAX bytes (NB_OUT_OF_MEMORY) before any
 * plugin sees the request. */
nb_status nbi_check_shape(const char *op, int32_t ndim, const int64_t *shape);
#define NBI_SPAN_MAX (INT64_MAX / 16) /* elements: numel, strides and offsets stay below it */
nb_status nbi_check_bytes(const char *op, int32_t ndim, const int64_t *shape, nb_dtype dtype,
                          size_t *bytes);
/* a + b and a * b, or an NB_INVALID_ARGUMENT naming op and what (e.g. "slice end") on overflow */
nb_status nbi_add_i64(const char *op, const char *what, int64_t a, int64_t b, int64_t *r);
nb_status nbi_mul_i64(const char *op, const char *what, int64_t a, int64_t b, int64_t *r);
bool nbi_is_contiguous(const nb_tensor *t);
void nbi_contiguous_strides(int32_t ndim, const int64_t *shape, int64_t *strides);
nb_status nbi_check_dim(const char *op, const nb_tensor *t, int32_t *dim, bool allow_end);
void nbi_bump_version(nb_tensor *t);
nb_status nbi_read_f64(const nb_tensor *t, double *dst); /* numel doubles, any dtype/device */
nb_status nbi_shape_str(char *buf, size_t len, int32_t ndim, const int64_t *shape);
#define NBI_SHAPE_STR(t) nbi_shape_cstr((t)->ndim, (t)->shape)
const char *nbi_shape_cstr(int32_t ndim, const int64_t *shape); /* thread-local ring buffer */
nb_dtype nbi_default_float(void);
extern const uint8_t nbi_dtype_bytes[NB_DTYPE_COUNT]; /* nb_dtype_size without the check */
static inline bool nbi_dtype_is_16bit(nb_dtype d) { return d == NB_DTYPE_F16 || d == NB_DTYPE_BF16; }

/* dispatch.c */
nb_status nbi_launch(nbi_op op, nb_dtype kdtype, nb_tensor *out, nb_tensor *const *in,
                     int32_t n_in, const double *f, int32_t nf, const int64_t *i, int32_t ni);
bool nbi_device_has_op(const nbi_device *dev, nbi_op op, nb_dtype dtype);
void nbi_fill_operand(nb_operand *o, const nb_tensor *t);

/* autograd.c: nodes and recording. */
typedef nb_status (*nbi_backward_fn)(nbi_node *node, nb_tensor *grad, nb_tensor **grad_inputs);

#define NBI_MAX_SAVED 4
/* A strided geometry in storage elements, for the as_strided views of in-place rebasing. */
typedef struct nbi_geom {
    int32_t ndim;
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS], offset;
} nbi_geom;

struct nbi_node {
    _Atomic int64_t refcount;
    const char *name;
    nbi_backward_fn backward;
    int32_t n_in;
    nbi_node **next;       /* n_in edges; NULL where the input needs no grad */
    nb_shape *in_shape;    /* the inputs' shapes, to undo broadcasting */
    nb_dtype *in_dtype;    /* and dtypes, to cast the gradient back */
    nb_tensor *saved[NBI_MAX_SAVED];
    int64_t saved_version[NBI_MAX_SAVED];
    bool saved_is_output[NBI_MAX_SAVED]; /* this node's own output: unpacked with grad_fn = it */
    nb_tensor *unpacked[NBI_MAX_SAVED];  /* outputs unpacked under create_graph, per backward */
    int32_t n_saved;
    bool released; /* saved tensors freed by a backward without retain_graph */
    double f[4];
    int64_t i[NB_MAX_DIMS + 2];
    nb_tensor *leaf;     /* AccumulateGrad: the leaf (strong) */
    nb_tensor *retain;   /* weak: the non-leaf whose grad is retained */
    nbi_hook *hooks;     /* hooks of the tensor this node produced */
    const nb_function *fn; /* custom functions */
    void *ctx;
    nbi_node **extra_next; /* storage for edges when n_in is large */
    nbi_geom *geom;        /* AsStrided/CopySlices: [0] the base, [1] the view (owned) */
    nbi_device *src_device; /* CopyBackwards: where the source's gradient goes */
    /* engine scratch */
    nb_tensor *buf;
    int32_t deps;
    uint32_t mark;
};

bool nbi_grad_needed(nb_tensor *const *inputs, int32_t n);
/* Creates the node for `out` if grad mode is on and an input requires grad; NULL otherwise. */
nbi_node *nbi_record(nb_tensor *out, const char *name, nbi_backward_fn bw,
                     nb_tensor *const *inputs, int32_t n);
void nbi_save(nbi_node *node, const nb_tensor *t); /* saves t (keeps its graph) */
void nbi_save_detached(nbi_node *node, const nb_tensor *t); /* data only: no graph kept */
/* Saves the node's own output without a reference cycle; under create_graph it is unpacked
 * with this node as its grad_fn (PyTorch's saved outputs), so higher order sees the graph. */
void nbi_save_output(nbi_node *node, const nb_tensor *out);
nb_status nbi_saved(nbi_node *node, int32_t k, nb_tensor **t); /* borrowed; checks versions */
void nbi_node_release(nbi_node *n);
void nbi_tensor_autograd_release(nb_tensor *t);
/* In-place writes. check: refuses what PyTorch refuses (a leaf that requires grad or a view of
 * one outside no_grad; a destination with overlapping elements). commit: a's data was computed
 * out of place into r (whose grad_fn, if any, is the op's node): r is written into a, a's
 * version bumped, and the history rebased (a itself, or its base through CopySlices). */
nb_status nbi_check_inplace(const char *op, nb_tensor *t);
nb_status nbi_inplace_commit(const char *op, nb_tensor *a, nb_tensor *r);
/* A view's grad_fn, regenerated when its base's history changed since it was built. */
void nbi_view_refresh(nb_tensor *t);
/* Marks v (just made from t, sharing its storage) a differentiable view of t's root base. */
void nbi_view_track(nb_tensor *v, const nb_tensor *t);
nb_tensor *nbi_sum_to(const nb_tensor *g, const nb_shape *shape);

/* ops.c: helpers for backward rules and composites. */
nb_tensor *nbi_binary(nbi_op op, const nb_tensor *a, const nb_tensor *b);
nb_tensor *nbi_reduce(nbi_op op, const nb_tensor *t, const int32_t *dims, int32_t ndims,
                      bool keepdim);
nb_tensor *nbi_expand_to(const nb_tensor *t, int32_t ndim, const int64_t *shape);
nb_tensor *nbi_cast(const nb_tensor *t, nb_dtype dtype); /* no autograd */
nb_status nbi_copy_raw(nb_tensor *dst, const nb_tensor *src); /* copy_ without autograd */

#endif
