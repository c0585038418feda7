/* template_plugin.c - the smallest complete Nabla plugin: every tier-1 kernel for float32 in plain
 * C, written as one strided N-d loop, on a "device" that is ordinary host memory. Copy it to
 * start a backend. Built with -DNB_TEMPLATE_GUARD it becomes the "guard" test plugin whose
 * handles point at PROT_NONE pages, so a core that dereferences device memory crashes. */
#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS under -std=c11 */
#include "nabla_plugin.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#ifdef NB_TEMPLATE_GUARD
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#define PLUGIN_NAME "guard"
#else
#define PLUGIN_NAME "template"
#endif

static const nb_host *host;

/* ---- Memory: handle -> bytes ---- */

#ifndef NB_TEMPLATE_GUARD
/* The template's device is host memory, so a handle is simply the malloc'ed pointer. */
static char *mem(const void *handle) { return (char *)handle; }

static nb_status dev_alloc(int device, size_t bytes, void **handle)
{
    (void)device;
    void *p = malloc(bytes);
    if (!p)
        return host->error(NB_OUT_OF_MEMORY, PLUGIN_NAME ": cannot allocate %zu bytes", bytes);
    *handle = p;
    return NB_OK;
}

static void dev_free(int device, void *handle)
{
    (void)device;
    free(handle);
}
#else
/* The guard hands out the address of a PROT_NONE mapping as the handle and keeps the real bytes
 * in a side table: the core touching a handle faults at once, while kernels translate. */
typedef struct guard_buf {
    void *handle;
    char *data;
    size_t map_bytes;
    struct guard_buf *next;
} guard_buf;

static guard_buf *guard_bufs;
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;

static char *mem(const void *handle)
{
    char *data = NULL;
    pthread_mutex_lock(&guard_lock);
    for (guard_buf *b = guard_bufs; b; b = b->next)
        if (b->handle == handle) {
            data = b->data;
            break;
        }
    pthread_mutex_unlock(&guard_lock);
    return data;
}

static nb_status dev_alloc(int device, size_t bytes, void **handle)
{
    (void)device;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), map_bytes = (bytes + page - 1) / page * page;
    guard_buf *b = malloc(sizeof *b);
    char *data = malloc(bytes);
    void *h = mmap(NULL, map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!b || !data || h == MAP_FAILED) {
        free(b);
        free(data);
        if (h != MAP_FAILED)
            munmap(h, map_bytes);
        return host->error(NB_OUT_OF_MEMORY, PLUGIN_NAME ": cannot allocate %zu bytes", bytes);
    }
    *b = (guard_buf){h, data, map_bytes, NULL};
    pthread_mutex_lock(&guard_lock);
    b->next = guard_bufs;
    guard_bufs = b;
    pthread_mutex_unlock(&guard_lock);
    *handle = h;
    return NB_OK;
}

static void dev_free(int device, void *handle)
{
    (void)device;
    pthread_mutex_lock(&guard_lock);
    for (guard_buf **p = &guard_bufs; *p; p = &(*p)->next)
        if ((*p)->handle == handle) {
            guard_buf *b = *p;
            *p = b->next;
            munmap(b->handle, b->map_bytes);
            free(b->data);
            free(b);
            break;
        }
    pthread_mutex_unlock(&guard_lock);
}
#endif

static nb_status dev_write(int device, void *handle, size_t offset, const void *src, size_t bytes)
{
    (void)device;
    char *m = mem(handle);
    if (!m)
        return host->error(NB_INVALID_ARGUMENT, PLUGIN_NAME ": write to an unknown handle");
    memcpy(m + offset, src, bytes);
    return NB_OK;
}

static nb_status dev_read(int device, const void *handle, size_t offset, void *dst, size_t bytes)
{
    (void)device;
    const char *m = mem(handle);
    if (!m)
        return host->error(NB_INVALID_ARGUMENT, PLUGIN_NAME ": read from an unknown handle");
    memcpy(dst, m + offset, bytes);
    return NB_OK;
}

static int dev_count(void) { return 1; }

/* ---- Elements: every dtype is read as double and written back; exact for the values a
 * template needs (integers up to 2^53). A real backend writes one loop per dtype instead. ---- */

static double load(const char *p, nb_dtype dt)
{
    switch (dt) {
    case NB_DTYPE_F32: { float v; memcpy(&v, p, 4); return v; }
    case NB_DTYPE_F64: { double v; memcpy(&v, p, 8); return v; }
    case NB_DTYPE_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case NB_DTYPE_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    case NB_DTYPE_BOOL: return *(const uint8_t *)p != 0;
    case NB_DTYPE_U8: return *(const uint8_t *)p;
    default: return 0;
    }
}

static void store(char *p, nb_dtype dt, double v)
{
    switch (dt) {
    case NB_DTYPE_F32: { float x = (float)v; memcpy(p, &x, 4); break; }
    case NB_DTYPE_F64: memcpy(p, &v, 8); break;
    /* the SDK's rule (nb_float_to_int64): truncate into int64, NaN and out of range giving
     * INT64_MIN, then wrap into narrower integers */
    case NB_DTYPE_I32: {
        int32_t x = (int32_t)(uint32_t)(uint64_t)nb_float_to_int64(v);
        memcpy(p, &x, 4);
        break;
    }
    case NB_DTYPE_I64: { int64_t x = nb_float_to_int64(v); memcpy(p, &x, 8); break; }
    case NB_DTYPE_BOOL: *(uint8_t *)p = v != 0; break;
    case NB_DTYPE_U8: *(uint8_t *)p = (uint8_t)(uint64_t)nb_float_to_int64(v); break;
    default: break;
    }
}

static size_t dsize(nb_dtype dt)
{
    return dt == NB_DTYPE_F64 || dt == NB_DTYPE_I64 ? 8 : dt == NB_DTYPE_BOOL || dt == NB_DTYPE_U8 ? 1 : 4;
}

static char *base(const nb_operand *o) { return mem(o->handle) + o->offset; }

/* Byte address of element idx (an ndim-index) of operand o. */
static char *at(const nb_operand *o, const int64_t *idx)
{
    int64_t e = 0;
    for (int32_t d = 0; d < o->ndim; d++)
        e += idx[d] * o->strides[d];
    return base(o) + e * (int64_t)dsize(o->dtype);
}

/* Advances an N-d index over shape (row-major); false after the last element. */
static bool next_index(int64_t *idx, int32_t ndim, const int64_t *shape)
{
    for (int32_t d = ndim - 1; d >= 0; d--) {
        if (++idx[d] < shape[d])
            return true;
        idx[d] = 0;
    }
    return false;
}

static int64_t numel(const nb_operand *o)
{
    int64_t n = 1;
    for (int32_t d = 0; d < o->ndim; d++)
        n *= o->shape[d];
    return n;
}

/* ---- The one strided loop: out[idx] = fn(in[0][idx], in[1][idx], ...) ---- */

typedef double (*ew_fn)(const double *x, const nb_kernel_args *a);

static nb_status ew_loop(const nb_kernel_args *a, ew_fn fn)
{
    const nb_operand *o = a->out;
    if (numel(o) == 0)
        return NB_OK;
    int64_t idx[NB_MAX_DIMS] = {0}, k = 0;
    do {
        double x[4] = {0};
        for (int32_t j = 0; j < a->n_in && j < 4; j++)
            x[j] = load(at(&a->in[j], idx), a->in[j].dtype);
        if (!fn) /* arange: the value depends on the position only */
            x[0] = a->f[0] + (double)k * a->f[1];
        store(at(o, idx), o->dtype, fn ? fn(x, a) : x[0]);
        k++;
    } while (next_index(idx, o->ndim, o->shape));
    return NB_OK;
}

static double round_half_even(double v)
{
    double r = nearbyint(v); /* the default rounding mode is to nearest, ties to even */
    return r;
}

static double sigmoid(double v) { return v >= 0 ? 1 / (1 + exp(-v)) : exp(v) / (1 + exp(v)); }
/* of -0.0 and 0.0 the first is kept, as every plugin does */
static double nan_max(double a, double b) { return isnan(a) || isnan(b) ? NAN : a < b ? b : a; }
static double nan_min(double a, double b) { return isnan(a) || isnan(b) ? NAN : a > b ? b : a; }

/* clamp as torch.clamp: a NaN x stays, a NaN bound wins; integers clamp to the bounds rounded
 * inward (clamp(int [1, 2, 3, 4], min=2.5) is 3 3 3 4) and ignore a NaN bound */
static double clamp1(double x, const nb_kernel_args *a)
{
    double lo = a->f[0], hi = a->f[1];
    if (a->out->dtype != NB_DTYPE_F32 && a->out->dtype != NB_DTYPE_F64) {
        if (a->i[0] && x < ceil(lo))
            x = ceil(lo);
        if (a->i[1] && x > floor(hi))
            x = floor(hi);
        return x;
    }
    if (a->i[0] && (x < lo || isnan(lo)))
        x = lo;
    if (a->i[1] && (x > hi || isnan(hi)))
        x = hi;
    return x;
}

#define EW(name, expr)                                                                     \
    static double f_##name(const double *x, const nb_kernel_args *a)                       \
    {                                                                                      \
        (void)x;                                                                           \
        double s = a->f[0];                                                                \
        (void)s;                                                                           \
        return (expr);                                                                     \
    }                                                                                      \
    static nb_status k_##name(const nb_kernel_args *a) { return ew_loop(a, f_##name); }

EW(fill, s)
EW(copy, x[0])
EW(neg, -x[0])
EW(abs, fabs(x[0]))
EW(exp, exp(x[0]))
EW(log, log(x[0]))
EW(sqrt, sqrt(x[0]))
EW(rsqrt, 1 / sqrt(x[0]))
EW(sin, sin(x[0]))
EW(cos, cos(x[0]))
EW(tanh, tanh(x[0]))
EW(sigmoid, sigmoid(x[0]))
EW(relu, isnan(x[0]) ? x[0] : x[0] > 0 ? x[0] : 0)
EW(sign, (x[0] > 0) - (x[0] < 0)) /* NaN gives 0, as in PyTorch */
EW(floor, floor(x[0]))
EW(ceil, ceil(x[0]))
EW(round, round_half_even(x[0]))
EW(logical_not, !x[0])
EW(add_scalar, x[0] + s)
EW(mul_scalar, x[0] * s)
EW(rsub_scalar, s - x[0])
EW(div_scalar, x[0] / s)
EW(rdiv_scalar, s / x[0])
EW(pow_scalar, pow(x[0], s))
EW(rpow_scalar, pow(s, x[0]))
EW(clamp, clamp1(x[0], a))
EW(eq_scalar, x[0] == s)
EW(ne_scalar, x[0] != s)
EW(lt_scalar, x[0] < s)
EW(le_scalar, x[0] <= s)
EW(gt_scalar, x[0] > s)
EW(ge_scalar, x[0] >= s)
EW(add, x[0] + x[1])
EW(sub, x[0] - x[1])
EW(mul, x[0] * x[1])
EW(div, x[0] / x[1])
EW(pow, pow(x[0], x[1]))
EW(maximum, nan_max(x[0], x[1]))
EW(minimum, nan_min(x[0], x[1]))
EW(eq, x[0] == x[1])
EW(ne, x[0] != x[1])
EW(lt, x[0] < x[1])
EW(le, x[0] <= x[1])
EW(gt, x[0] > x[1])
EW(ge, x[0] >= x[1])
EW(logical_and, x[0] && x[1])
EW(logical_or, x[0] || x[1])
EW(logical_xor, !x[0] != !x[1])
EW(where, x[0] ? x[1] : x[2])

static nb_status k_arange(const nb_kernel_args *a) { return ew_loop(a, NULL); }

/* ---- Reductions: for each output element, walk the reduced dims of the input ---- */

enum { R_SUM, R_PROD, R_MAX, R_MIN, R_ARGMAX, R_ARGMIN };

static nb_status reduce(const nb_kernel_args *a, int kind)
{
    const nb_operand *o = a->out, *in = &a->in[0];
    int32_t nd = in->ndim;
    int64_t rshape[NB_MAX_DIMS]; /* the reduced subspace: 1 on kept dims */
    for (int32_t d = 0; d < nd; d++)
        rshape[d] = o->shape[d] == 1 ? in->shape[d] : 1;
    if (numel(o) == 0)
        return NB_OK;
    int64_t oi[NB_MAX_DIMS] = {0};
    do {
        int64_t ri[NB_MAX_DIMS] = {0}, ii[NB_MAX_DIMS], k = 0, best_k = 0;
        double acc = kind == R_PROD ? 1 : 0;
        bool first = true;
        do {
            for (int32_t d = 0; d < nd; d++)
                ii[d] = oi[d] + ri[d];
            double v = load(at(in, ii), in->dtype);
            switch (kind) {
            case R_SUM: acc += v; break;
            case R_PROD: acc *= v; break;
            case R_MAX: acc = first ? v : nan_max(acc, v); break;
            case R_MIN: acc = first ? v : nan_min(acc, v); break;
            case R_ARGMAX: /* NaN counts as the largest value, like PyTorch */
                if (first || (!isnan(acc) && (isnan(v) || v > acc))) {
                    acc = v;
                    best_k = k;
                }
                break;
            case R_ARGMIN:
                if (first || (!isnan(acc) && (isnan(v) || v < acc))) {
                    acc = v;
                    best_k = k;
                }
                break;
            }
            first = false;
            k++;
        } while (next_index(ri, nd, rshape));
        store(at(o, oi), o->dtype, kind == R_ARGMAX || kind == R_ARGMIN ? (double)best_k : acc);
    } while (next_index(oi, o->ndim, o->shape));
    return NB_OK;
}

static nb_status k_sum(const nb_kernel_args *a) { return reduce(a, R_SUM); }
static nb_status k_prod(const nb_kernel_args *a) { return reduce(a, R_PROD); }
static nb_status k_max(const nb_kernel_args *a) { return reduce(a, R_MAX); }
static nb_status k_min(const nb_kernel_args *a) { return reduce(a, R_MIN); }
static nb_status k_argmax(const nb_kernel_args *a) { return reduce(a, R_ARGMAX); }
static nb_status k_argmin(const nb_kernel_args *a) { return reduce(a, R_ARGMIN); }

/* ---- matmul: out (B,n,m) = f[0] * a (B,n,k) @ b (B,k,m) + f[1] * out ---- */

static nb_status k_matmul(const nb_kernel_args *a)
{
    const nb_operand *o = a->out, *x = &a->in[0], *y = &a->in[1];
    int64_t B = o->shape[0], n = o->shape[1], m = o->shape[2], K = x->shape[2];
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++) {
                double acc = 0;
                for (int64_t k = 0; k < K; k++)
                    acc += load(at(x, (int64_t[]){b, i, k}), x->dtype) *
                           load(at(y, (int64_t[]){b, k, j}), y->dtype);
                char *p = at(o, (int64_t[]){b, i, j});
                double prev = a->f[1] != 0 ? load(p, o->dtype) * a->f[1] : 0;
                store(p, o->dtype, a->f[0] * acc + prev);
            }
    return NB_OK;
}

/* ---- gather / scatter_add along dim i[0] ---- */

static nb_status k_gather(const nb_kernel_args *a)
{
    const nb_operand *o = a->out, *src = &a->in[0], *ix = &a->in[1];
    int32_t dim = (int32_t)a->i[0];
    if (numel(o) == 0)
        return NB_OK;
    int64_t idx[NB_MAX_DIMS] = {0}, si[NB_MAX_DIMS];
    do {
        int64_t j = (int64_t)load(at(ix, idx), NB_DTYPE_I64);
        if (j < 0 || j >= src->shape[dim])
            return host->error(NB_INDEX_OUT_OF_RANGE, "gather: index %lld is out of bounds for "
                               "dimension %d with size %lld", (long long)j, dim,
                               (long long)src->shape[dim]);
        memcpy(si, idx, sizeof si);
        si[dim] = j;
        store(at(o, idx), o->dtype, load(at(src, si), src->dtype));
    } while (next_index(idx, o->ndim, o->shape));
    return NB_OK;
}

static nb_status k_scatter_add(const nb_kernel_args *a)
{
    const nb_operand *o = a->out, *ix = &a->in[0], *src = &a->in[1];
    int32_t dim = (int32_t)a->i[0];
    if (numel(ix) == 0)
        return NB_OK;
    int64_t idx[NB_MAX_DIMS] = {0}, oi[NB_MAX_DIMS];
    do {
        int64_t j = (int64_t)load(at(ix, idx), NB_DTYPE_I64);
        if (j < 0 || j >= o->shape[dim])
            return host->error(NB_INDEX_OUT_OF_RANGE, "scatter_add: index %lld is out of bounds "
                               "for dimension %d with size %lld", (long long)j, dim,
                               (long long)o->shape[dim]);
        memcpy(oi, idx, sizeof oi);
        oi[dim] = j;
        char *p = at(o, oi);
        store(p, o->dtype, load(p, o->dtype) + load(at(src, idx), src->dtype));
    } while (next_index(idx, ix->ndim, ix->shape));
    return NB_OK;
}

/* ---- random fills: element k of the row-major order uses Philox counter (k, i[1]) ---- */

static nb_status random_fill(const nb_kernel_args *a, bool normal)
{
    const nb_operand *o = a->out;
    int f64 = o->dtype == NB_DTYPE_F64;
    if (numel(o) == 0)
        return NB_OK;
    int64_t idx[NB_MAX_DIMS] = {0};
    uint64_t k = 0;
    do {
        double v;
        if (normal) {
            double u1, u2;
            nb_philox_normal_parts((uint64_t)a->i[0], (uint64_t)a->i[1], k, &u1, &u2);
            v = a->f[0] + a->f[1] * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
        } else {
            v = a->f[0] + (a->f[1] - a->f[0]) *
                              nb_philox_uniform((uint64_t)a->i[0], (uint64_t)a->i[1], k, f64);
        }
        store(at(o, idx), o->dtype, v);
        k++;
    } while (next_index(idx, o->ndim, o->shape));
    return NB_OK;
}

static nb_status k_random_uniform(const nb_kernel_args *a) { return random_fill(a, false); }
static nb_status k_random_normal(const nb_kernel_args *a) { return random_fill(a, true); }

/* ---- The kernel table ---- */

#define FLOAT_KERNELS(X)                                                                   \
    X(arange) X(neg) X(abs) X(exp) X(log) X(sqrt) X(rsqrt) X(sin) X(cos) X(tanh) X(sigmoid) \
    X(relu) X(sign) X(floor) X(ceil) X(round) X(add_scalar) X(mul_scalar) X(rsub_scalar)   \
    X(div_scalar) X(rdiv_scalar) X(pow_scalar) X(rpow_scalar) X(clamp) X(eq_scalar)        \
    X(ne_scalar) X(lt_scalar) X(le_scalar) X(gt_scalar) X(ge_scalar) X(add) X(sub) X(mul)  \
    X(div) X(pow) X(maximum) X(minimum) X(eq) X(ne) X(lt) X(le) X(gt) X(ge) X(where)       \
    X(sum) X(prod) X(max) X(min) X(argmax) X(argmin) X(matmul) X(gather) X(scatter_add)   \
    X(random_uniform) X(random_normal)

/* fill and copy exist for every output dtype (the core casts through copy); logical ops run
 * on bool inputs (the core casts to bool first). The template claims float32 only; the guard
 * adds float64 so the suite's float64 gradient checks run on it too. */
#define ALL_DTYPE_KERNELS(X) X(fill) X(copy)
#define BOOL_KERNELS(X) X(logical_not) X(logical_and) X(logical_or) X(logical_xor)

#ifdef NB_TEMPLATE_GUARD
#define N_FLOAT_DTYPES 2
#else
#define N_FLOAT_DTYPES 1
#endif
static const nb_dtype float_dtypes[N_FLOAT_DTYPES] = {
    NB_DTYPE_F32,
#ifdef NB_TEMPLATE_GUARD
    NB_DTYPE_F64,
#endif
};

#define COUNT_(name) +1
enum {
    N_KERNELS = N_FLOAT_DTYPES * (0 FLOAT_KERNELS(COUNT_)) + (NB_DTYPE_U8 + 1) * (0 ALL_DTYPE_KERNELS(COUNT_)) +
                (0 BOOL_KERNELS(COUNT_))
};
static nb_kernel_desc kernels[N_KERNELS];

static size_t build_kernel_table(void)
{
    size_t n = 0;
    for (int d = 0; d < N_FLOAT_DTYPES; d++) {
#define ADD_FLOAT_(name) kernels[n++] = (nb_kernel_desc){#name, float_dtypes[d], k_##name};
        FLOAT_KERNELS(ADD_FLOAT_)
    }
    /* the ABI 1.0 dtypes: float16 and bfloat16 (1.1) need kernels that read 16-bit elements,
     * which load() does not, so the template registers none and the core never sends one */
    for (int d = 0; d <= NB_DTYPE_U8; d++) {
#define ADD_ALL_(name) kernels[n++] = (nb_kernel_desc){#name, (nb_dtype)d, k_##name};
        ALL_DTYPE_KERNELS(ADD_ALL_)
    }
#define ADD_BOOL_(name) kernels[n++] = (nb_kernel_desc){#name, NB_DTYPE_BOOL, k_##name};
    BOOL_KERNELS(ADD_BOOL_)
    return n;
}

static nb_plugin plugin = {
    .abi_major = NB_PLUGIN_ABI_MAJOR,
    .abi_minor = NB_PLUGIN_ABI_MINOR,
    .size = sizeof(nb_plugin),
    .name = PLUGIN_NAME,
    .version = "0.1.0",
    .device_count = dev_count,
    .alloc = dev_alloc,
    .free = dev_free,
    .write = dev_write,
    .read = dev_read,
    /* device_name, synchronize, wrap_host, status_note, shutdown: not provided (NULL) */
};

NB_PLUGIN_EXPORT const nb_plugin *nb_plugin_entry(const nb_host *h)
{
    if (!h || h->abi_major != NB_PLUGIN_ABI_MAJOR) {
        if (h && h->error)
            h->error(NB_ABI_MISMATCH, PLUGIN_NAME ": built for plugin ABI %d.x, the core has %u.%u",
                     NB_PLUGIN_ABI_MAJOR, h->abi_major, h->abi_minor);
        return NULL;
    }
    host = h;
    plugin.n_kernels = build_kernel_table();
    plugin.kernels = kernels;
    return &plugin;
}
