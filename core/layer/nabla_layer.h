/* nabla_layer.h - the one internal contract between the tensor layer and the library built on
 * it (core/nn/, core/dist/): what those files may use beyond nabla.h, and nothing else. They
 * see nb_tensor as an opaque type; the few facts they need that nabla.h does not give are the
 * accessors at the end. nabla_internal.h includes this, so each declaration exists once. */
#ifndef NABLA_LAYER_H
#define NABLA_LAYER_H

#include "nabla.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* ---- errors and logging (runtime/) ---- */

/* Records an error for this thread and returns status; fmt is printf-style. */
nb_status nbi_error(nb_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The pending error's status, or a new error (status, msg) when none is pending. */
nb_status nbi_last_or(nb_status status, const char *msg);
bool nbi_error_pending(void); /* an op received NULL: keep the first error */
void nbi_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
nb_status nbi_ensure_init(void);
/* plugin.c: the folders the core searches after NABLA_PLUGIN_PATH (libnabla's, its nabla/). */
int nbi_core_plugin_dirs(char dirs[2][PATH_MAX]);

/* ---- host memory through the replaceable allocator (runtime/) ---- */

void *nbi_malloc(size_t size);
void *nbi_calloc(size_t n, size_t size);
void *nbi_realloc(void *p, size_t size);
void nbi_free(void *p);
char *nbi_strdup(const char *s);

/* runtime.c: a growable string; the first failed allocation sticks (oom) and p stays valid. */
typedef struct nbi_sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} nbi_sbuf;
void nbi_sbuf_putn(nbi_sbuf *b, const char *s, size_t n);
void nbi_sbuf_puts(nbi_sbuf *b, const char *s);
void nbi_sbuf_printf(nbi_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- tier-2 dispatch (tensor/dispatch.c) ---- */

/* true if the device of `like` has a native kernel for op at like's dtype. */
bool nbi_has_kernel(const nb_tensor *like, const char *op);

/* Runs the native kernel `op` (dtype taken from `out`; for reductions/comparisons from in[0])
 * of out's device on already-allocated operands. No autograd, no broadcasting, no casting:
 * operands are passed as they are (with their strides). f and i may be NULL (zeros). */
nb_status nbi_run(const char *op, nb_tensor *out, nb_tensor *const *in, int32_t n_in,
                  const double *f, int32_t nf, const int64_t *i, int32_t ni);

/* ---- one API level deep, and user callbacks (tensor/tensor.c) ---- */

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
#define NBI_API_VOID(expr) (nbi_api_depth++, (expr), (void)nbi_api_depth--)
/* A callback starts like fresh application code: at depth 0 and with no scope open (it may open
 * its own), so it can follow the plain ownership rule whatever scope its caller had open. */
typedef struct nbi_user_call {
    int depth, floor;
} nbi_user_call;
nbi_user_call nbi_call_user_begin(void);
void nbi_call_user_end(nbi_user_call saved);

/* ---- autocast (tensor/autocast.c) ---- */

/* The first line of every op on PyTorch's autocast lists (nabla.h says which):
 *     NBI_AUTOCAST(NBI_AC_LOWER, &a, &b);
 * Inside an enabled region it replaces the op's operands (const nb_tensor * variables; NULL ones
 * are skipped) by their differentiable casts and runs the rest of the op with autocast
 * excluded, so the ops it is built of are not cast again; the casts are released, and the
 * exclusion lifted, when the op returns. A failed cast makes the op return NULL. Outside any
 * region it costs one thread-local test. */
typedef enum nbi_autocast_kind {
    NBI_AC_NONE,  /* not on a list (for X-macro definitions: see nbi_autocast_kind_of) */
    NBI_AC_LOWER, /* floating operands, float64 excepted, to the region's 16-bit dtype */
    NBI_AC_FP32,  /* 16-bit operands to float32 */
} nbi_autocast_kind;
#define NBI_AUTOCAST_MAX_OPERANDS 6
typedef struct nbi_autocast_frame {
    nb_tensor *casts[NBI_AUTOCAST_MAX_OPERANDS]; /* owned */
    bool excluding;
} nbi_autocast_frame;
extern _Thread_local int nbi_autocast_depth; /* regions open on this thread */
nb_status nbi_autocast_operands(nbi_autocast_frame *f, nbi_autocast_kind kind,
                                const nb_tensor **const *operands, int n);
void nbi_autocast_frame_release(nbi_autocast_frame *f);
static inline void nbi_autocast_frame_end(nbi_autocast_frame *f)
{
    if (__builtin_expect(f->excluding, 0))
        nbi_autocast_frame_release(f);
}
#define NBI_AUTOCAST(kind, ...)                                                             \
    __attribute__((cleanup(nbi_autocast_frame_end))) nbi_autocast_frame nbi_autocast_frame_ = \
        {0};                                                                                \
    if (__builtin_expect(nbi_autocast_depth > 0, 0) &&                                      \
        nbi_autocast_operands(&nbi_autocast_frame_, (kind),                                 \
                              (const nb_tensor **[]){__VA_ARGS__},                          \
                              (int)(sizeof((const nb_tensor **[]){__VA_ARGS__}) /           \
                                    sizeof(const nb_tensor **))) != NB_OK)                  \
    return NULL

/* ---- module kinds (nn/nn.c) ---- */

/* Modules defined by the files under core/nn/: a forward, an extra_repr (PyTorch's) and a
 * configuration the module owns (copied at creation, freed with it). */
typedef struct nbi_module_kind {
    const char *type_name;
    nb_tensor *(*forward)(nb_module *m, const nb_tensor *x, const void *cfg);
    void (*extra_repr)(const void *cfg, char *buf, size_t len); /* (optional) */
} nbi_module_kind;
nb_module *nbi_module_new_kind(const nbi_module_kind *kind, const void *cfg, size_t cfg_size);
nb_tensor *nbi_module_own(const nb_module *m, const char *name); /* own parameter or buffer */
void nbi_py_float_repr(double v, char *out, size_t len); /* Python's repr() of a float */

/* ---- tensor facts beyond nabla.h (tensor/tensor.c, layer/nabla_layer.c) ---- */

int64_t nbi_numel(int32_t ndim, const int64_t *shape);
/* The shape as "[2, 3]" in a thread-local ring buffer, for error messages. */
const char *nbi_shape_cstr(int32_t ndim, const int64_t *shape);
const char *nbi_tensor_shape_cstr(const nb_tensor *t);
#ifndef NABLA_INTERNAL_H /* the tensor layer reads the fields directly (nabla_internal.h) */
#define NBI_SHAPE_STR(t) nbi_tensor_shape_cstr(t)
#endif
/* dim normalised in place (negative counts from the end); an error naming op when out of range */
nb_status nbi_check_dim(const char *op, const nb_tensor *t, int32_t *dim, bool allow_end);
nb_status nbi_read_f64(const nb_tensor *t, double *dst); /* numel doubles, any dtype/device */
void nbi_bump_version(nb_tensor *t); /* t's data was written behind the core's back */

/* Reads without the public accessors' checks and side effects: nb_tensor_shape copies the
 * shape, nb_tensor_requires_grad refreshes a view first, nb_tensor_grad returns a tracked new
 * reference. t is never NULL here. */
const int64_t *nbi_dims(const nb_tensor *t);           /* t's shape, valid while t lives */
bool nbi_requires_grad(const nb_tensor *t);            /* the flag as it stands */
nb_tensor *nbi_grad_of(const nb_tensor *t);            /* borrowed .grad, or NULL */
bool nbi_same_device(const nb_tensor *a, const nb_tensor *b);
/* The leaf of an AccumulateGrad node (PyTorch's grad_fn.variable), borrowed; NULL for any other
 * node. DDP's find_unused_parameters walks the graph with it (core/dist/ddp.c). */
const nb_tensor *nbi_grad_fn_leaf(const nb_grad_fn *fn);

/* What a collective backend needs to reach t's memory (core/dist/): the device plugin's type
 * ("cpu", "cuda"), the device's index in it, the plugin's buffer handle and t's byte offset. */
typedef struct nbi_tensor_memory {
    const char *device_type;
    int32_t device;
    void *handle;
    size_t offset;
} nbi_tensor_memory;
nbi_tensor_memory nbi_tensor_memory_of(const nb_tensor *t);
/* Waits for the kernels queued on t's device (asynchronous devices only); the plugin's status. */
nb_status nbi_tensor_synchronize(const nb_tensor *t);

#endif
