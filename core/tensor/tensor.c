/* tensor.c - tensor objects: creation, geometry and views, data in and out, device and dtype
 * moves. Views share their base's storage; the core never touches device memory itself. */
#include "nabla_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- geometry helpers ---- */

/* Every tensor's shape passed nbi_check_shape, so its element count cannot overflow here. */
int64_t nbi_numel(int32_t ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int32_t d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

/* The product of the sizes, each counted as at least 1: it bounds the element count and every
 * contiguous stride. Kept below 2^63 / 16, so that they fit int64 in bytes too (plugins
 * address in bytes; 16 leaves room for a complex dtype), and a tensor never needs more than
 * PTRDIFF_MAX bytes. */
static bool shape_span(int32_t ndim, const int64_t *shape, int64_t *span)
{
    int64_t n = 1;
    for (int32_t d = 0; d < ndim; d++)
        if (shape[d] < 0 || __builtin_mul_overflow(n, shape[d] > 1 ? shape[d] : 1, &n))
            return false;
    *span = n;
    return n <= NBI_SPAN_MAX;
}

nb_status nbi_check_shape(const char *op, int32_t ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > NB_MAX_DIMS)
        return nbi_error(NB_INVALID_ARGUMENT, "%s: %d dimensions, expected 0 to %d", op, ndim,
                         NB_MAX_DIMS);
    for (int32_t d = 0; d < ndim; d++)
        if (shape[d] < 0)
            return nbi_error(NB_INVALID_ARGUMENT, "%s: negative size %lld in shape %s", op,
                             (long long)shape[d], nbi_shape_cstr(ndim, shape));
    int64_t span;
    if (!shape_span(ndim, shape, &span))
        return nbi_error(NB_INVALID_ARGUMENT, "%s: shape %s is too large (its element count or "
                         "strides, in bytes, overflow int64)", op, nbi_shape_cstr(ndim, shape));
    return NB_OK;
}

nb_status nbi_check_bytes(const char *op, int32_t ndim, const int64_t *shape, nb_dtype dtype,
                          size_t *bytes)
{
    int64_t b;
    if (__builtin_mul_overflow(nbi_numel(ndim, shape), (int64_t)nbi_dtype_bytes[dtype], &b))
        return nbi_error(NB_OUT_OF_MEMORY, "%s: shape %s of %s needs more than PTRDIFF_MAX "
                         "bytes", op, nbi_shape_cstr(ndim, shape), nb_dtype_name(dtype));
    *bytes = (size_t)b;
    return NB_OK;
}

nb_status nbi_add_i64(const char *op, const char *what, int64_t a, int64_t b, int64_t *r)
{
    if (__builtin_add_overflow(a, b, r))
        return nbi_error(NB_INVALID_ARGUMENT, "%s: %s %lld + %lld overflows int64", op, what,
                         (long long)a, (long long)b);
    return NB_OK;
}

nb_status nbi_mul_i64(const char *op, const char *what, int64_t a, int64_t b, int64_t *r)
{
    if (__builtin_mul_overflow(a, b, r))
        return nbi_error(NB_INVALID_ARGUMENT, "%s: %s %lld * %lld overflows int64", op, what,
                         (long long)a, (long long)b);
    return NB_OK;
}

/* A view must stay inside its storage: every element it can address lies in [0, bytes). */
static nb_status check_view(const nb_tensor *base, int32_t ndim, const int64_t *shape,
                            const int64_t *strides, int64_t offset)
{
    nb_status st = nbi_check_shape("view", ndim, shape);
    if (st != NB_OK)
        return st;
    if (nbi_numel(ndim, shape) == 0)
        return NB_OK;
    int64_t last = offset, step;
    bool ok = offset >= 0;
    for (int32_t d = 0; ok && d < ndim; d++) /* a stride fits int64 in bytes, even of a 1-dim */
        ok = strides[d] >= 0 && strides[d] <= NBI_SPAN_MAX &&
             !__builtin_mul_overflow(shape[d] - 1, strides[d], &step) &&
             !__builtin_add_overflow(last, step, &last);
    int64_t es = nbi_dtype_bytes[base->dtype];
    if (ok && last < (int64_t)(base->storage->bytes / (size_t)es))
        return NB_OK;
    return nbi_error(NB_INVALID_ARGUMENT, "view: shape %s with strides %s at offset %lld "
                     "reaches outside its storage of %zu bytes", nbi_shape_cstr(ndim, shape),
                     nbi_shape_cstr(ndim, strides), (long long)offset, base->storage->bytes);
}

void nbi_contiguous_strides(int32_t ndim, const int64_t *shape, int64_t *strides)
{
    int64_t s = 1;
    for (int32_t d = ndim; d-- > 0;) {
        strides[d] = s;
        s *= shape[d] > 1 ? shape[d] : 1;
    }
}

bool nbi_is_contiguous(const nb_tensor *t)
{
    int64_t s = 1;
    for (int32_t d = t->ndim; d-- > 0;) {
        if (t->shape[d] == 1)
            continue;
        if (t->strides[d] != s)
            return t->shape[d] == 0 || nbi_numel(t->ndim, t->shape) == 0;
        s *= t->shape[d];
    }
    return true;
}

const char *nbi_shape_cstr(int32_t ndim, const int64_t *shape)
{
    static _Thread_local char ring[4][160];
    static _Thread_local int next;
    char *buf = ring[next++ & 3];
    nbi_shape_str(buf, sizeof ring[0], ndim, shape);
    return buf;
}

nb_status nbi_shape_str(char *buf, size_t len, int32_t ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int32_t d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? ", " : "",
                                 (long long)shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return NB_OK;
}

nb_status nbi_check_dim(const char *op, const nb_tensor *t, int32_t *dim, bool allow_end)
{
    int32_t n = t->ndim + (allow_end ? 1 : 0), d = *dim;
    int32_t lo = n ? -n : -1, hi = n ? n - 1 : 0;
    if (d < lo || d > hi)
        return nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: dimension %d out of range for a %d-d "
                         "tensor (expected %d to %d)", op, d, t->ndim, lo, hi);
    if (d < 0)
        d += n ? n : 1;
    *dim = d;
    return NB_OK;
}

/* ---- lifetime ---- */

static nb_tensor *tensor_alloc(void)
{
    nb_tensor *t = nbi_calloc(1, sizeof *t);
    if (!t) {
        nbi_error(NB_OUT_OF_MEMORY, "out of host memory for a tensor");
        return NULL;
    }
    atomic_store_explicit(&t->refcount, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&nbi_live_tensor_count, 1, memory_order_relaxed);
    return t;
}

nb_tensor *nbi_tensor_new(nbi_device *dev, nb_dtype dtype, int32_t ndim, const int64_t *shape)
{
    size_t bytes;
    if (nbi_check_shape("tensor", ndim, shape) != NB_OK ||
        nbi_check_bytes("tensor", ndim, shape, dtype, &bytes) != NB_OK)
        return NULL;
    nbi_storage *s = nbi_storage_new(dev, bytes);
    if (!s)
        return NULL;
    nb_tensor *t = tensor_alloc();
    if (!t) {
        nbi_storage_release(s);
        return NULL;
    }
    t->storage = s;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    nbi_contiguous_strides(ndim, shape, t->strides);
    return t;
}

nb_tensor *nbi_tensor_view(const nb_tensor *base, int32_t ndim, const int64_t *shape,
                           const int64_t *strides, int64_t offset)
{
    if (check_view(base, ndim, shape, strides, offset) != NB_OK)
        return NULL;
    nb_tensor *t = tensor_alloc();
    if (!t)
        return NULL;
    t->storage = base->storage;
    atomic_fetch_add_explicit(&t->storage->refcount, 1, memory_order_relaxed);
    t->dtype = base->dtype;
    t->ndim = ndim;
    t->offset = offset;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(t->strides, strides, (size_t)ndim * sizeof *strides);
    return t;
}

nb_tensor *nbi_tensor_alias(const nb_tensor *t)
{
    return nbi_tensor_view(t, t->ndim, t->shape, t->strides, t->offset);
}

nb_tensor *nb_retain(nb_tensor *t)
{
    if (t)
        atomic_fetch_add_explicit(&t->refcount, 1, memory_order_relaxed);
    return t;
}

void nbi_release(nb_tensor *t)
{
    if (!t || !nbi_unref(&t->refcount))
        return;
    nbi_tensor_autograd_release(t);
    nbi_storage_release(t->storage);
    atomic_fetch_sub_explicit(&nbi_live_tensor_count, 1, memory_order_relaxed);
    nbi_free(t);
}

void nbi_bump_version(nb_tensor *t)
{
    atomic_fetch_add_explicit(&t->storage->version, 1, memory_order_relaxed);
}

int64_t nb_tensor_version(const nb_tensor *t) { return t ? t->storage->version : -1; }

/* ---- creation ---- */

static nb_status resolve_opts(const char *op, nb_opts *o, nbi_device **dev)
{
    if ((unsigned)o->dtype >= NB_DTYPE_COUNT)
        return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: invalid dtype %d", op, (int)o->dtype);
    if (o->requires_grad && !nb_dtype_is_float(o->dtype))
        return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: only floating point tensors can require "
                         "gradients (dtype %s)", op, nb_dtype_name(o->dtype));
    return nbi_device_get(o->device, dev);
}

static nb_tensor *finish_creation(nb_tensor *t, const nb_opts *o)
{
    if (t && o->requires_grad)
        t->requires_grad = true;
    return t;
}

static nb_tensor *empty_impl(const char *op, nb_shape shape, nb_opts o)
{
    nbi_device *dev;
    if (resolve_opts(op, &o, &dev) != NB_OK)
        return NULL;
    return nbi_tensor_new(dev, o.dtype, shape.ndim, shape.dims);
}

static nb_tensor *full_impl(const char *op, nb_shape shape, double value, nb_opts o)
{
    nb_tensor *t = empty_impl(op, shape, o);
    if (!t)
        return NULL;
    double f[1] = {value};
    if (nbi_launch(NBI_OP_fill, t->dtype, t, NULL, 0, f, 1, NULL, 0) != NB_OK) {
        nb_release(t);
        return NULL;
    }
    return finish_creation(t, &o);
}

nb_tensor *nb_empty(nb_shape shape, nb_opts o)
{
    return NBI_API(finish_creation(empty_impl("empty", shape, o), &o));
}
nb_tensor *nb_zeros(nb_shape shape, nb_opts o) { return NBI_API(full_impl("zeros", shape, 0, o)); }
nb_tensor *nb_ones(nb_shape shape, nb_opts o) { return NBI_API(full_impl("ones", shape, 1, o)); }
nb_tensor *nb_full(nb_shape shape, double v, nb_opts o)
{
    return NBI_API(full_impl("full", shape, v, o));
}
nb_tensor *nb_scalar(double v, nb_opts o) { return NBI_API(full_impl("scalar", NB_SHAPE_SCALAR, v, o)); }

static nb_tensor *from_data_impl(const void *data, nb_shape shape, nb_opts o)
{
    if (!data) {
        nbi_error(NB_NULL_ARGUMENT, "from_data: data is NULL");
        return NULL;
    }
    nb_tensor *t = empty_impl("from_data", shape, o);
    if (!t)
        return NULL;
    size_t bytes = (size_t)nbi_numel(t->ndim, t->shape) * nb_dtype_size(t->dtype);
    nbi_device *dev = t->storage->device;
    if (bytes && dev->api->write(dev->index, t->storage->handle, 0, data, bytes) != NB_OK) {
        nb_release(t);
        return NULL;
    }
    return finish_creation(t, &o);
}

nb_tensor *nb_from_data(const void *data, nb_shape shape, nb_opts o)
{
    return NBI_API(from_data_impl(data, shape, o));
}

static nb_tensor *from_blob_impl(void *data, nb_shape shape, nb_opts o, void (*release)(void *),
                                 void *ctx)
{
    nbi_device *dev;
    if (!data) {
        nbi_error(NB_NULL_ARGUMENT, "from_blob: data is NULL");
        return NULL;
    }
    if (resolve_opts("from_blob", &o, &dev) != NB_OK ||
        nbi_check_shape("from_blob", shape.ndim, shape.dims) != NB_OK)
        return NULL;
    if (!dev->api->wrap_host) { /* device cannot address host memory: copy, then let go */
        nb_tensor *t = from_data_impl(data, shape, o);
        if (t && release)
            release(ctx);
        return t;
    }
    size_t bytes;
    if (nbi_check_bytes("from_blob", shape.ndim, shape.dims, o.dtype, &bytes) != NB_OK)
        return NULL;
    nbi_storage *s = nbi_storage_wrap(dev, data, bytes, release, ctx);
    if (!s)
        return NULL;
    nb_tensor *t = tensor_alloc();
    if (!t) {
        s->release = NULL; /* the caller keeps ownership on failure */
        nbi_storage_release(s);
        return NULL;
    }
    t->storage = s;
    t->dtype = o.dtype;
    t->ndim = shape.ndim;
    memcpy(t->shape, shape.dims, sizeof t->shape);
    nbi_contiguous_strides(t->ndim, t->shape, t->strides);
    return finish_creation(t, &o);
}

nb_tensor *nb_from_blob(void *data, nb_shape shape, nb_opts o, void (*release)(void *), void *ctx)
{
    return NBI_API(from_blob_impl(data, shape, o, release, ctx));
}

static nb_tensor *arange_impl(double start, double step, int64_t n, nb_opts o, const char *op)
{
    nb_tensor *t = empty_impl(op, (nb_shape){.ndim = 1, .dims = {n}}, o);
    if (!t)
        return NULL;
    double f[2] = {start, step};
    if (n && nbi_launch(NBI_OP_arange, t->dtype, t, NULL, 0, f, 2, NULL, 0) != NB_OK) {
        nb_release(t);
        return NULL;
    }
    return finish_creation(t, &o);
}

nb_tensor *nb_arange(double start, double end, double step, nb_opts o)
{
    if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step) ||
        (end - start) / step < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "arange: cannot go from %g to %g in steps of %g", start,
                  end, step);
        return NULL;
    }
    double count = ceil((end - start) / step);
    if (!(count < 0x1p63)) { /* inf too: the conversion to int64 would be undefined */
        nbi_error(NB_INVALID_ARGUMENT, "arange: going from %g to %g in steps of %g makes %g "
                  "elements, more than a tensor can hold", start, end, step, count);
        return NULL;
    }
    int64_t n = (int64_t)count;
    return NBI_API(arange_impl(start, step, n, o, "arange"));
}

nb_tensor *nb_linspace(double start, double end, int64_t steps, nb_opts o)
{
    if (steps < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "linspace: steps must be non-negative, got %lld",
                  (long long)steps);
        return NULL;
    }
    double step = steps > 1 ? (end - start) / (double)(steps - 1) : 0;
    return NBI_API(arange_impl(start, step, steps, o, "linspace"));
}

static nb_tensor *eye_impl(int64_t n, int64_t m, nb_opts o)
{
    if (m <= 0)
        m = n;
    if (n < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "eye: n must be non-negative, got %lld", (long long)n);
        return NULL;
    }
    nb_tensor *t = full_impl("eye", NB_SHAPE(n, m), 0, (nb_opts){o.dtype, o.device, false});
    if (!t || !n)
        return finish_creation(t, &o);
    /* the diagonal is a 1-d view with stride m + 1 */
    int64_t len = n < m ? n : m, stride = m + 1;
    nb_tensor *diag = nbi_tensor_view(t, 1, &len, &stride, 0);
    double f[1] = {1};
    nb_status st = diag ? nbi_launch(NBI_OP_fill, t->dtype, diag, NULL, 0, f, 1, NULL, 0)
                        : NB_OUT_OF_MEMORY;
    nb_release(diag);
    if (st != NB_OK) {
        nb_release(t);
        return NULL;
    }
    return finish_creation(t, &o);
}

nb_tensor *nb_eye(int64_t n, int64_t m, nb_opts o) { return NBI_API(eye_impl(n, m, o)); }

/* ---- the generator: Philox with (seed, offset); every random op consumes one offset ---- */

static uint64_t gen_seed = 67280421310721ull; /* PyTorch's default seed */
static _Atomic uint64_t gen_offset;

void nb_manual_seed(uint64_t seed)
{
    gen_seed = seed;
    gen_offset = 0;
}

uint64_t nb_initial_seed(void) { return gen_seed; }

static nb_tensor *random_impl(const char *op, nbi_op kop, double a, double b, nb_shape shape,
                              nb_opts o)
{
    if (!nb_dtype_is_float(o.dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: expected a floating point dtype, got %s", op,
                  nb_dtype_name(o.dtype));
        return NULL;
    }
    nb_tensor *t = empty_impl(op, shape, o);
    if (!t)
        return NULL;
    double f[2] = {a, b};
    int64_t i[2] = {(int64_t)gen_seed, (int64_t)atomic_fetch_add(&gen_offset, 1)};
    if (nbi_numel(t->ndim, t->shape) && nbi_launch(kop, t->dtype, t, NULL, 0, f, 2, i, 2) != NB_OK) {
        nb_release(t);
        return NULL;
    }
    return finish_creation(t, &o);
}

nb_tensor *nb_rand(nb_shape s, nb_opts o)
{
    return NBI_API(random_impl("rand", NBI_OP_random_uniform, 0, 1, s, o));
}
nb_tensor *nb_randn(nb_shape s, nb_opts o)
{
    return NBI_API(random_impl("randn", NBI_OP_random_normal, 0, 1, s, o));
}
nb_tensor *nb_uniform(double low, double high, nb_shape s, nb_opts o)
{
    if (!(low <= high)) {
        nbi_error(NB_INVALID_ARGUMENT, "uniform: low %g must not exceed high %g", low, high);
        return NULL;
    }
    return NBI_API(random_impl("uniform", NBI_OP_random_uniform, low, high, s, o));
}
nb_tensor *nb_normal(double mean, double std, nb_shape s, nb_opts o)
{
    if (!(std >= 0)) {
        nbi_error(NB_INVALID_ARGUMENT, "normal: std must be >= 0, got %g", std);
        return NULL;
    }
    return NBI_API(random_impl("normal", NBI_OP_random_normal, mean, std, s, o));
}

static nb_tensor *randint_impl(int64_t low, int64_t high, nb_shape s, nb_opts o)
{
    if (low >= high) {
        nbi_error(NB_INVALID_ARGUMENT, "randint: low %lld must be less than high %lld",
                  (long long)low, (long long)high);
        return NULL;
    }
    nb_dtype want = o.dtype == NB_DTYPE_F32 ? NB_DTYPE_I64 : o.dtype;
    if (o.requires_grad) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "randint: only floating point tensors can require "
                  "gradients");
        return NULL;
    }
    nb_tensor *u = random_impl("randint", NBI_OP_random_uniform, (double)low, (double)high, s,
                               (nb_opts){NB_DTYPE_F64, o.device, false});
    nb_tensor *fl = u ? nb_floor(u) : NULL;
    nb_tensor *r = fl ? nb_to_dtype(fl, want) : NULL;
    nb_release(u);
    nb_release(fl);
    return r;
}

nb_tensor *nb_randint(int64_t low, int64_t high, nb_shape s, nb_opts o)
{
    return NBI_API(randint_impl(low, high, s, o));
}

static nb_tensor *randperm_impl(int64_t n, nb_opts o)
{
    if (n < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "randperm: n must be non-negative, got %lld", (long long)n);
        return NULL;
    }
    if (nbi_check_shape("randperm", 1, &n) != NB_OK) /* n * 8 bytes must not wrap */
        return NULL;
    int64_t *p = nbi_malloc((size_t)(n ? n : 1) * sizeof *p);
    if (!p) {
        nbi_error(NB_OUT_OF_MEMORY, "randperm: out of memory for %lld elements", (long long)n);
        return NULL;
    }
    uint64_t off = atomic_fetch_add(&gen_offset, 1);
    for (int64_t k = 0; k < n; k++)
        p[k] = k;
    for (int64_t k = n - 1; k > 0; k--) { /* Fisher-Yates on the same counter-based stream */
        int64_t j = (int64_t)(nb_philox_uniform(gen_seed, off, (uint64_t)k, 1) * (double)(k + 1));
        int64_t tmp = p[k];
        p[k] = p[j];
        p[j] = tmp;
    }
    nb_tensor *t = from_data_impl(p, NB_SHAPE(n), (nb_opts){NB_DTYPE_I64, o.device, false});
    nbi_free(p);
    if (t && o.dtype != NB_DTYPE_F32 && o.dtype != NB_DTYPE_I64) {
        nb_tensor *c = nb_to_dtype(t, o.dtype);
        nb_release(t);
        t = c;
    }
    return t;
}

nb_tensor *nb_randperm(int64_t n, nb_opts o) { return NBI_API(randperm_impl(n, o)); }

static nb_opts like_opts(const nb_tensor *t)
{
    return (nb_opts){.dtype = t->dtype, .device = t->storage->device->name};
}

#define NBI_LIKE_(name, expr)                                                              \
    nb_tensor *name(const nb_tensor *t)                                                    \
    {                                                                                      \
        if (!t) {                                                                          \
            if (!nbi_error_pending())                                                      \
                nbi_error(NB_NULL_ARGUMENT, #name ": tensor is NULL");                    \
            return NULL;                                                                   \
        }                                                                                  \
        nb_shape s = nb_tensor_shape(t);                                                   \
        nb_opts o = like_opts(t);                                                          \
        return expr;                                                                       \
    }
NBI_LIKE_(nb_empty_like, nb_empty(s, o))
NBI_LIKE_(nb_zeros_like, nb_zeros(s, o))
NBI_LIKE_(nb_ones_like, nb_ones(s, o))
NBI_LIKE_(nb_rand_like, nb_rand(s, o))
NBI_LIKE_(nb_randn_like, nb_randn(s, o))

nb_tensor *nb_full_like(const nb_tensor *t, double value)
{
    if (!t) {
        if (!nbi_error_pending())
            nbi_error(NB_NULL_ARGUMENT, "nb_full_like: tensor is NULL");
        return NULL;
    }
    return nb_full(nb_tensor_shape(t), value, like_opts(t));
}

/* ---- inspection ---- */

int32_t nb_tensor_ndim(const nb_tensor *t) { return t ? t->ndim : -1; }

nb_shape nb_tensor_shape(const nb_tensor *t)
{
    nb_shape s = {0};
    if (t) {
        s.ndim = t->ndim;
        memcpy(s.dims, t->shape, sizeof s.dims);
    }
    return s;
}

int64_t nb_tensor_size(const nb_tensor *t, int32_t dim)
{
    if (!t || nbi_check_dim("size", t, &dim, false) != NB_OK || t->ndim == 0)
        return t && t->ndim == 0 && (dim == 0 || dim == -1) ? 1 : -1;
    return t->shape[dim];
}

int64_t nb_tensor_stride(const nb_tensor *t, int32_t dim)
{
    if (!t || nbi_check_dim("stride", t, &dim, false) != NB_OK || t->ndim == 0)
        return -1;
    return t->strides[dim];
}

int64_t nb_tensor_numel(const nb_tensor *t) { return t ? nbi_numel(t->ndim, t->shape) : -1; }
nb_dtype nb_tensor_dtype(const nb_tensor *t) { return t ? t->dtype : NB_DTYPE_COUNT; }
const char *nb_tensor_device(const nb_tensor *t) { return t ? t->storage->device->name : NULL; }
int64_t nb_tensor_offset(const nb_tensor *t) { return t ? t->offset : -1; }
bool nb_tensor_is_contiguous(const nb_tensor *t) { return t && nbi_is_contiguous(t); }
bool nb_tensor_shares_storage(const nb_tensor *a, const nb_tensor *b)
{
    return a && b && a->storage == b->storage;
}

/* ---- data in and out ---- */

static nb_status check_bytes(const char *op, const nb_tensor *t, size_t bytes)
{
    size_t need = (size_t)nbi_numel(t->ndim, t->shape) * nb_dtype_size(t->dtype);
    if (bytes != need)
        return nbi_error(NB_INVALID_ARGUMENT, "%s: buffer of %zu bytes, tensor %s of %s needs "
                         "%zu", op, bytes, NBI_SHAPE_STR(t), nb_dtype_name(t->dtype), need);
    return NB_OK;
}

static nb_status copy_to_host_impl(const nb_tensor *t, void *dst, size_t bytes)
{
    if (!t || !dst)
        return nbi_error(NB_NULL_ARGUMENT, "copy_to_host: tensor or destination is NULL");
    nb_status st = check_bytes("copy_to_host", t, bytes);
    if (st != NB_OK || bytes == 0)
        return st;
    nb_tensor *c = nb_contiguous(t);
    if (!c)
        return nb_last_status();
    nbi_device *dev = c->storage->device;
    st = dev->api->read(dev->index, c->storage->handle, (size_t)c->offset * nb_dtype_size(c->dtype),
                        dst, bytes);
    nb_release(c);
    return st;
}

nb_status nb_tensor_copy_to_host(const nb_tensor *t, void *dst, size_t bytes)
{
    return NBI_API_CALL(copy_to_host_impl(t, dst, bytes));
}

static nb_status copy_from_host_impl(nb_tensor *t, const void *src, size_t bytes)
{
    if (!t || !src)
        return nbi_error(NB_NULL_ARGUMENT, "copy_from_host: tensor or source is NULL");
    nb_status st = check_bytes("copy_from_host", t, bytes);
    if (st != NB_OK || bytes == 0)
        return st;
    nbi_device *dev = t->storage->device;
    if (nbi_is_contiguous(t)) {
        st = dev->api->write(dev->index, t->storage->handle,
                             (size_t)t->offset * nb_dtype_size(t->dtype), src, bytes);
    } else {
        nb_tensor *tmp = nb_from_data(src, nb_tensor_shape(t),
                                      (nb_opts){t->dtype, dev->name, false});
        st = tmp ? nbi_copy_raw(t, tmp) : nb_last_status();
        nb_release(tmp);
        return st;
    }
    if (st == NB_OK)
        nbi_bump_version(t);
    return st;
}

nb_status nb_tensor_copy_from_host(nb_tensor *t, const void *src, size_t bytes)
{
    return NBI_API_CALL(copy_from_host_impl(t, src, bytes));
}

/* numel doubles from any tensor on any device: read the raw elements, convert on the host. */
nb_status nbi_read_f64(const nb_tensor *t, double *dst)
{
    int64_t n = nbi_numel(t->ndim, t->shape);
    size_t es = nb_dtype_size(t->dtype);
    void *raw = nbi_malloc((size_t)(n ? n : 1) * es);
    if (!raw)
        return nbi_error(NB_OUT_OF_MEMORY, "out of host memory reading %lld elements",
                         (long long)n);
    nb_status st = copy_to_host_impl(t, raw, (size_t)n * es);
    for (int64_t k = 0; st == NB_OK && k < n; k++) {
        switch (t->dtype) {
        case NB_DTYPE_F32: dst[k] = ((float *)raw)[k]; break;
        case NB_DTYPE_F64: dst[k] = ((double *)raw)[k]; break;
        case NB_DTYPE_I32: dst[k] = ((int32_t *)raw)[k]; break;
        case NB_DTYPE_I64: dst[k] = (double)((int64_t *)raw)[k]; break;
        case NB_DTYPE_BOOL:
        case NB_DTYPE_U8: dst[k] = ((uint8_t *)raw)[k]; break;
        case NB_DTYPE_F16: dst[k] = nb_f16_to_f32(((uint16_t *)raw)[k]); break;
        case NB_DTYPE_BF16: dst[k] = nb_bf16_to_f32(((uint16_t *)raw)[k]); break;
        default: st = nbi_error(NB_DTYPE_UNSUPPORTED, "invalid dtype"); break;
        }
    }
    nbi_free(raw);
    return st;
}

nb_status nb_item(const nb_tensor *t, double *value)
{
    if (!t || !value)
        return nbi_error(NB_NULL_ARGUMENT, "item: tensor or value is NULL");
    int64_t n = nbi_numel(t->ndim, t->shape);
    if (n != 1)
        return nbi_error(NB_INVALID_ARGUMENT, "item: a tensor with %lld elements cannot be "
                         "converted to a number (expected exactly 1)", (long long)n);
    return NBI_API_CALL(nbi_read_f64(t, value));
}

/* ---- moves between devices and dtypes ---- */

static nb_tensor *to_device_impl(const nb_tensor *t, const char *device)
{
    nbi_device *dev;
    if (!t) {
        if (!nbi_error_pending())
            nbi_error(NB_NULL_ARGUMENT, "to_device: tensor is NULL");
        return NULL;
    }
    if (nbi_device_get(device, &dev) != NB_OK)
        return NULL;
    if (dev == t->storage->device)
        return nb_retain((nb_tensor *)t);
    /* through host memory: the only path between two plugins */
    size_t bytes = (size_t)nbi_numel(t->ndim, t->shape) * nb_dtype_size(t->dtype);
    void *buf = nbi_malloc(bytes ? bytes : 1);
    if (!buf) {
        nbi_error(NB_OUT_OF_MEMORY, "to_device: out of host memory for %zu bytes", bytes);
        return NULL;
    }
    nb_tensor *r = NULL;
    if (copy_to_host_impl(t, buf, bytes) == NB_OK)
        r = from_data_impl(buf, nb_tensor_shape(t), (nb_opts){t->dtype, dev->name, false});
    nbi_free(buf);
    return r;
}

nb_tensor *nbi_to_device_graph(const nb_tensor *t, nb_tensor *moved);

nb_tensor *nb_to_device(const nb_tensor *t, const char *device)
{
    return NBI_API(nbi_to_device_graph(t, to_device_impl(t, device)));
}

nb_tensor *nbi_cast(const nb_tensor *t, nb_dtype dtype)
{
    nb_tensor *r = nbi_tensor_new(t->storage->device, dtype, t->ndim, t->shape);
    if (!r)
        return NULL;
    nb_tensor *in[1] = {(nb_tensor *)t};
    if (nbi_numel(t->ndim, t->shape) &&
        nbi_launch(NBI_OP_copy, dtype, r, in, 1, NULL, 0, NULL, 0) != NB_OK) {
        nb_release(r);
        return NULL;
    }
    return r;
}

static bool allclose_impl(const nb_tensor *a, const nb_tensor *b, double rtol, double atol)
{
    if (!a || !b || a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * 8))
        return false;
    int64_t n = nbi_numel(a->ndim, a->shape);
    double *x = nbi_malloc((size_t)(n ? n : 1) * 2 * sizeof *x);
    if (!x)
        return false;
    bool ok = nbi_read_f64(a, x) == NB_OK && nbi_read_f64(b, x + n) == NB_OK;
    for (int64_t k = 0; ok && k < n; k++) {
        double p = x[k], q = x[n + k];
        if (p == q) /* NaN never equals NaN, as in PyTorch's default */
            continue;
        ok = isfinite(p) && isfinite(q) && fabs(p - q) <= atol + rtol * fabs(q);
    }
    nbi_free(x);
    return ok;
}

bool nb_allclose(const nb_tensor *a, const nb_tensor *b, double rtol, double atol)
{
    nbi_api_depth++; /* its reads make temporaries that must not enter the caller's scope */
    bool r = allclose_impl(a, b, rtol, atol);
    nbi_api_depth--;
    return r;
}

bool nb_equal(const nb_tensor *a, const nb_tensor *b) { return nb_allclose(a, b, 0, 0); }

/* The application's release (last in the file: the core above uses nbi_release). A reference
 * an open scope tracks is the scope's, which forgets it, so nb_scope_end cannot release it a
 * second time. */
#undef nb_release
void nb_release(nb_tensor *t)
{
    if (t && t->tracked)
        nbi_scope_untrack(t);
    nbi_release(t);
}
