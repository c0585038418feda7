/* nabla_internal.h - the core's private structures and the functions core files share.
 * Nothing here is API: applications use nabla.h, plugins nabla_plugin.h. */
#ifndef NABLA_INTERNAL_H
#define NABLA_INTERNAL_H

#include "nabla.h"
#include "nabla_plugin.h"

#include <limits.h>
#include <stdatomic.h>

/* The declarations the library on top (core/nn/, core/dist/) shares with the tensor layer. */
#include "layer/nabla_layer.h"

/* ---- Core-private from here on ---- */

#define NBI_LIKELY(x) __builtin_expect(!!(x), 1)
#define NBI_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Drops one reference to a counted object; true when it was the last. When the count is 1 the
 * caller holds the only reference, so no other thread can take one meanwhile: the last release
 * (most of them: an op's result dies with its one reference) needs no locked instruction. */
static inline bool nbi_unref(_Atomic int64_t *refcount)
{
    return atomic_load_explicit(refcount, memory_order_acquire) == 1 ||
           atomic_fetch_sub_explicit(refcount, 1, memory_order_acq_rel) == 1;
}

extern _Atomic int64_t nbi_live_tensor_count;
extern _Atomic int64_t nbi_live_storage_count;

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
nb_status nbi_shape_str(char *buf, size_t len, int32_t ndim, const int64_t *shape);
#define NBI_SHAPE_STR(t) nbi_shape_cstr((t)->ndim, (t)->shape)
nb_dtype nbi_default_float(void);
extern const uint8_t nbi_dtype_bytes[NB_DTYPE_COUNT]; /* nb_dtype_size without the check */
static inline bool nbi_dtype_is_16bit(nb_dtype d) { return d == NB_DTYPE_F16 || d == NB_DTYPE_BF16; }

/* dispatch.c */
nb_status nbi_launch(nbi_op op, nb_dtype kdtype, nb_tensor *out, nb_tensor *const *in,
                     int32_t n_in, const double *f, int32_t nf, const int64_t *i, int32_t ni);
bool nbi_device_has_op(const nbi_device *dev, nbi_op op, nb_dtype dtype);
void nbi_fill_operand(nb_operand *o, const nb_tensor *t);

/* NBI_AC_FP32 for the elementwise ops on the float32 list (exp, log, pow...), else NONE. */
nbi_autocast_kind nbi_autocast_kind_of(nbi_op op);

/* autograd.c: nodes and recording (the engine: autograd_engine.c; in-place writes and views:
 * autograd_inplace.c). */
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
    bool ctx_freed; /* a custom function's ctx went with them (its free_ctx ran) */
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
/* Shared by the autograd*.c files: a node with n_in edges (NULL, error set, when out of memory);
 * the edge into t's history (its grad_fn or a leaf's AccumulateGrad; a new reference); freeing
 * what a node saved; a leaf's post-accumulate-grad hooks; the message for a freed graph. */
nbi_node *nbi_node_new(const char *name, nbi_backward_fn bw, int32_t n_in);
static inline nbi_node *nbi_node_retain(nbi_node *n)
{
    if (n)
        atomic_fetch_add_explicit(&n->refcount, 1, memory_order_relaxed);
    return n;
}
nbi_node *nbi_edge_of(nb_tensor *t);
void nbi_node_release_unpacked(nbi_node *n);
void nbi_node_release_saved(nbi_node *n);
struct nbi_hook {
    nb_grad_hook_fn fn;
    void *ctx;
    nbi_hook *next;
};
nb_status nbi_run_post_hooks(nb_tensor *leaf);
extern const char nbi_retain_graph_msg[];
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

/* Helpers for backward rules and composites: nbi_binary in ops_elementwise.c, nbi_reduce in
 * ops_reduce.c, nbi_expand_to in views.c, nbi_cast in tensor.c, nbi_copy_raw in ops_copy.c. */
nb_tensor *nbi_binary(nbi_op op, const nb_tensor *a, const nb_tensor *b);
nb_tensor *nbi_reduce(nbi_op op, const nb_tensor *t, const int32_t *dims, int32_t ndims,
                      bool keepdim);
nb_tensor *nbi_expand_to(const nb_tensor *t, int32_t ndim, const int64_t *shape);
nb_tensor *nbi_cast(const nb_tensor *t, nb_dtype dtype); /* no autograd */
nb_status nbi_copy_raw(nb_tensor *dst, const nb_tensor *src); /* copy_ without autograd */

#endif
