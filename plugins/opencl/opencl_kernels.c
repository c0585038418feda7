/* opencl_kernels.c - the opencl plugin's ops: checks each call's operands, turns them into the
 * by-value geometry the kernels take (dims coalesced), and launches; plus the kernel table. */
#include "opencl_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const dt_name[NB_DTYPE_COUNT] = {"f32", "f64", "i32", "i64", "bool", "u8"};
static const size_t dt_size[NB_DTYPE_COUNT] = {4, 8, 4, 8, 1, 1};

#define ERR(st, ...) ocl_host->error((st), __VA_ARGS__)

/* ---- Operands ---- */

/* A checked operand: its buffer and element offset. */
typedef struct view {
    cl_mem mem;
    int64_t off;
    const nb_operand *o;
} view;

static int64_t numel(int32_t ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int32_t d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

static const char *dtype_str(nb_dtype t)
{
    return (unsigned)t < NB_DTYPE_COUNT ? dt_name[t] : "an invalid dtype";
}

/* Checks o (named what) and that every element it addresses lies inside its buffer, so a bad
 * view is an error here rather than a wild access on the device. want < 0: any dtype. */
static nb_status check(const char *op, const char *what, const nb_operand *o, int want, view *v)
{
    if (!o || !o->handle)
        return ERR(NB_NULL_ARGUMENT, "opencl %s: %s is NULL", op, what);
    if ((unsigned)o->dtype >= NB_DTYPE_COUNT)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: %s has dtype %d, expected 0..%d", op, what,
                   (int)o->dtype, NB_DTYPE_COUNT - 1);
    if (want >= 0 && o->dtype != (nb_dtype)want)
        return ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: %s is %s, expected %s", op, what,
                   dt_name[o->dtype], dt_name[want]);
    if (o->ndim < 0 || o->ndim > NB_MAX_DIMS || (o->ndim && (!o->shape || !o->strides)))
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: %s has %d dims (or no shape/strides), "
                   "expected 0..%d", op, what, (int)o->ndim, NB_MAX_DIMS);
    const ocl_buf *b = o->handle;
    size_t es = dt_size[o->dtype];
    if (o->offset % es)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: %s starts at byte %zu, not a multiple of "
                   "the %zu-byte %s element", op, what, o->offset, es, dt_name[o->dtype]);
    int64_t lo = 0, hi = 0, n = 1;
    for (int32_t d = 0; d < o->ndim; d++) {
        if (o->shape[d] < 0)
            return ERR(NB_INVALID_ARGUMENT, "opencl %s: %s has size %lld in dim %d", op, what,
                       (long long)o->shape[d], (int)d);
        n *= o->shape[d];
        int64_t span = (o->shape[d] ? o->shape[d] - 1 : 0) * o->strides[d];
        if (span < 0)
            lo += span;
        else
            hi += span;
    }
    int64_t first = (int64_t)(o->offset / es);
    if (n > 0 && (first + lo < 0 || (uint64_t)(first + hi + 1) * es > b->bytes))
        return ERR(NB_INDEX_OUT_OF_RANGE, "opencl %s: %s reaches elements %lld..%lld, outside "
                   "its buffer of %zu bytes", op, what, (long long)(first + lo),
                   (long long)(first + hi), b->bytes);
    v->mem = b->mem;
    v->off = first;
    v->o = o;
    return NB_OK;
}

static nb_status same_shape(const char *op, const char *what, const nb_operand *o,
                            const nb_operand *out)
{
    int same = o->ndim == out->ndim;
    for (int32_t d = 0; same && d < o->ndim; d++)
        same = o->shape[d] == out->shape[d];
    if (!same)
        return ERR(NB_SHAPE_MISMATCH, "opencl %s: %s has %d dims and a different shape from the "
                   "output (%d dims); expected the output's shape with stride 0 on broadcast "
                   "dims", op, what, (int)o->ndim, (int)out->ndim);
    return NB_OK;
}

static nb_status n_inputs(const char *op, const nb_kernel_args *a, int want)
{
    if (!a)
        return ERR(NB_NULL_ARGUMENT, "opencl %s: args is NULL", op);
    if (a->n_in < want || (want && !a->in))
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: %d inputs given, expected %d", op,
                   (int)a->n_in, want);
    return NB_OK;
}

/* ---- Geometry ---- */

/* Fills g for nops operands sharing shape: size-1 dims go, and neighbours that are contiguous
 * in every operand merge, so contiguous tensors become one dim (the kernels' fast path). */
static void geom_make(nbk_geom *g, int32_t ndim, const int64_t *shape, int nops,
                      const int64_t *const *st, const int64_t *off)
{
    memset(g, 0, sizeof *g);
    g->n = numel(ndim, shape);
    for (int k = 0; k < nops; k++)
        g->off[k] = off[k];
    int nd = 0;
    for (int32_t d = 0; d < ndim; d++) {
        if (shape[d] == 1)
            continue;
        int merge = nd > 0;
        for (int k = 0; merge && k < nops; k++)
            merge = g->st[k][nd - 1] == st[k][d] * shape[d];
        if (merge) {
            g->shape[nd - 1] *= shape[d];
            for (int k = 0; k < nops; k++)
                g->st[k][nd - 1] = st[k][d];
        } else {
            g->shape[nd] = shape[d];
            for (int k = 0; k < nops; k++)
                g->st[k][nd] = st[k][d];
            nd++;
        }
    }
    if (nd == 0) { /* a single element */
        g->shape[0] = 1;
        nd = 1;
    }
    g->ndim = nd;
}

/* Launches a 1-d elementwise kernel over g->n work-items with arguments: the nops buffers, g,
 * then extra. Kernel program dtype pdt. */
static nb_status run_elementwise(int device, const char *op, nb_dtype pdt, ocl_kid kid,
                                 int nops, const view *v, const nbk_geom *g, int n_extra,
                                 const ocl_arg *extra)
{
    if (g->n == 0)
        return NB_OK;
    ocl_dev *d = ocl_device(device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    size_t wg;
    cl_kernel k = ocl_kernel(d, pdt, kid, op, &wg);
    if (!k)
        return NB_DEVICE_ERROR;
    ocl_arg args[16];
    int n = 0;
    for (int i = 0; i < nops; i++)
        args[n++] = (ocl_arg){sizeof(cl_mem), &v[i].mem};
    args[n++] = (ocl_arg){sizeof *g, g};
    for (int i = 0; i < n_extra; i++)
        args[n++] = extra[i];
    size_t local = wg < 256 ? wg : 256;
    size_t global = ((size_t)g->n + local - 1) / local * local;
    return ocl_launch(d, k, op, n, args, 1, &global, &local);
}

/* Operands of the same shape as out[0]: coalesced geometry from views v[0..nops). */
static void geom_views(nbk_geom *g, int nops, const view *v)
{
    const int64_t *st[NBK_MAX_OPERANDS];
    int64_t off[NBK_MAX_OPERANDS];
    for (int k = 0; k < nops; k++) {
        st[k] = v[k].o->strides;
        off[k] = v[k].off;
    }
    geom_make(g, v[0].o->ndim, v[0].o->shape, nops, st, off);
}

/* ---- Scalars ---- */

/* A value of dtype t (or the device's real type) as a kernel argument. */
typedef struct scalar {
    union {
        float f;
        double d;
        int32_t i;
        int64_t l;
        uint8_t u;
    } v;
    size_t size;
} scalar;

static int64_t to_i64(double x)
{
    if (isnan(x))
        return 0;
    if (x >= 9223372036854775807.0)
        return INT64_MAX;
    if (x <= -9223372036854775808.0)
        return INT64_MIN;
    return (int64_t)x;
}

static scalar scalar_of(nb_dtype t, double x)
{
    scalar s;
    memset(&s, 0, sizeof s);
    switch (t) {
    case NB_DTYPE_F32: s.v.f = (float)x; s.size = 4; break;
    case NB_DTYPE_F64: s.v.d = x; s.size = 8; break;
    case NB_DTYPE_I32: s.v.i = (int32_t)to_i64(x); s.size = 4; break;
    case NB_DTYPE_I64: s.v.l = to_i64(x); s.size = 8; break;
    case NB_DTYPE_BOOL: s.v.u = x != 0; s.size = 1; break;
    default: s.v.u = (uint8_t)to_i64(x); s.size = 1; break;
    }
    return s;
}

/* real_t in the kernels: double where the device has fp64, else float */
static scalar real_of(int device, double x)
{
    ocl_dev *d = ocl_device(device, "real");
    return scalar_of(d && d->has_fp64 ? NB_DTYPE_F64 : NB_DTYPE_F32, x);
}

#define SARG(s) ((ocl_arg){(s).size, &(s).v})

/* ---- fill, copy, arange ---- */

static nb_status k_fill(const nb_kernel_args *a)
{
    view v[1];
    nb_status st = n_inputs("fill", a, 0);
    if (st == NB_OK)
        st = check("fill", "out", a->out, -1, &v[0]);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 1, v);
    scalar s = scalar_of(a->out->dtype, a->f[0]);
    ocl_arg extra[] = {SARG(s)};
    return run_elementwise(a->device, "fill", a->out->dtype, OCL_K_fill, 1, v, &g, 1, extra);
}

static nb_status k_copy(const nb_kernel_args *a)
{
    view v[2];
    nb_status st = n_inputs("copy", a, 1);
    if (st == NB_OK)
        st = check("copy", "out", a->out, -1, &v[0]);
    if (st == NB_OK)
        st = check("copy", "input", &a->in[0], -1, &v[1]);
    if (st == NB_OK)
        st = same_shape("copy", "input", &a->in[0], a->out);
    if (st != NB_OK)
        return st;
    static const ocl_kid from[NB_DTYPE_COUNT] = {
        OCL_K_copy_from_f32, OCL_K_copy_from_f64, OCL_K_copy_from_i32,
        OCL_K_copy_from_i64, OCL_K_copy_from_u8,  OCL_K_copy_from_u8};
    if (a->in[0].dtype == NB_DTYPE_F64 && a->out->dtype != NB_DTYPE_F64) {
        ocl_dev *d = ocl_device(a->device, "copy");
        if (d && !d->has_fp64)
            return ERR(NB_DTYPE_UNSUPPORTED, "opencl copy: f64 input needs cl_khr_fp64, which "
                       "%s does not report", d->name);
    }
    nbk_geom g;
    geom_views(&g, 2, v);
    return run_elementwise(a->device, "copy", a->out->dtype, from[a->in[0].dtype], 2, v, &g, 0,
                           NULL);
}

static nb_status k_arange(const nb_kernel_args *a)
{
    view v[1];
    nb_status st = n_inputs("arange", a, 0);
    if (st == NB_OK)
        st = check("arange", "out", a->out, -1, &v[0]);
    if (st != NB_OK)
        return st;
    if (a->out->ndim != 1)
        return ERR(NB_SHAPE_MISMATCH, "opencl arange: out has %d dims, expected 1",
                   (int)a->out->ndim);
    /* no coalescing here: element k's value depends on k, and g keeps row-major order */
    nbk_geom g;
    geom_views(&g, 1, v);
    scalar s0 = real_of(a->device, a->f[0]), s1 = real_of(a->device, a->f[1]);
    ocl_arg extra[] = {SARG(s0), SARG(s1)};
    return run_elementwise(a->device, "arange", a->out->dtype, OCL_K_arange, 1, v, &g, 2, extra);
}

/* ---- unary, scalar, binary, comparisons, logical, where ---- */

/* out and in[0..n_in) checked; inputs must have in_dt (or any when < 0) and out's shape. */
static nb_status check_ew(const char *op, const nb_kernel_args *a, int n_in, int out_dt,
                          int in_dt, view *v)
{
    nb_status st = n_inputs(op, a, n_in);
    if (st == NB_OK)
        st = check(op, "out", a->out, out_dt, &v[0]);
    for (int k = 0; k < n_in && st == NB_OK; k++) {
        char what[24];
        snprintf(what, sizeof what, "input %d", k);
        st = check(op, what, &a->in[k], k == 0 ? in_dt : (int)a->in[0].dtype, &v[k + 1]);
        if (st == NB_OK)
            st = same_shape(op, what, &a->in[k], a->out);
    }
    return st;
}

static nb_status run_unary(const nb_kernel_args *a, const char *op, int code)
{
    view v[2];
    nb_status st = check_ew(op, a, 1, -1, -1, v);
    if (st == NB_OK && a->out->dtype != a->in[0].dtype)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s but the input is %s; expected the "
                 "same dtype", op, dt_name[a->out->dtype], dt_name[a->in[0].dtype]);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 2, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return run_elementwise(a->device, op, a->out->dtype, OCL_K_unary, 2, v, &g, 1, extra);
}

static nb_status run_scalar(const nb_kernel_args *a, const char *op, int code)
{
    view v[2];
    nb_status st = check_ew(op, a, 1, -1, -1, v);
    if (st == NB_OK && a->out->dtype != a->in[0].dtype)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s but the input is %s; expected the "
                 "same dtype", op, dt_name[a->out->dtype], dt_name[a->in[0].dtype]);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 2, v);
    cl_int c = code, flags = code == NBK_CLAMP ? (a->i[0] ? 1 : 0) | (a->i[1] ? 2 : 0) : 0;
    scalar s = scalar_of(a->out->dtype, a->f[0]), s2 = scalar_of(a->out->dtype, a->f[1]);
    ocl_arg extra[] = {OCL_ARG(c), SARG(s), SARG(s2), OCL_ARG(flags)};
    return run_elementwise(a->device, op, a->out->dtype, OCL_K_unary_scalar, 2, v, &g, 4, extra);
}

static nb_status run_binary(const nb_kernel_args *a, const char *op, int code)
{
    view v[3];
    nb_status st = check_ew(op, a, 2, -1, -1, v);
    if (st == NB_OK && a->out->dtype != a->in[0].dtype)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s but the inputs are %s; expected "
                 "the same dtype", op, dt_name[a->out->dtype], dt_name[a->in[0].dtype]);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 3, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return run_elementwise(a->device, op, a->out->dtype, OCL_K_binary, 3, v, &g, 1, extra);
}

static nb_status run_compare(const nb_kernel_args *a, const char *op, int code)
{
    view v[3];
    nb_status st = check_ew(op, a, 2, NB_DTYPE_BOOL, -1, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 3, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return run_elementwise(a->device, op, a->in[0].dtype, OCL_K_compare, 3, v, &g, 1, extra);
}

static nb_status run_compare_scalar(const nb_kernel_args *a, const char *op, int code)
{
    view v[2];
    nb_status st = check_ew(op, a, 1, NB_DTYPE_BOOL, -1, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 2, v);
    cl_int c = code;
    scalar s = real_of(a->device, a->f[0]);
    ocl_arg extra[] = {OCL_ARG(c), SARG(s)};
    return run_elementwise(a->device, op, a->in[0].dtype, OCL_K_compare_scalar, 2, v, &g, 2,
                           extra);
}

static nb_status run_logical(const nb_kernel_args *a, const char *op, int code)
{
    int n_in = code == NBK_NOT ? 1 : 2;
    view v[3];
    nb_status st = check_ew(op, a, n_in, NB_DTYPE_BOOL, -1, v);
    if (st != NB_OK)
        return st;
    if (n_in == 1)
        v[2] = v[1];
    nbk_geom g;
    geom_views(&g, 3, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return run_elementwise(a->device, op, a->in[0].dtype, OCL_K_logical, 3, v, &g, 1, extra);
}

static nb_status k_where(const nb_kernel_args *a)
{
    view v[4];
    nb_status st = n_inputs("where", a, 3);
    if (st == NB_OK)
        st = check("where", "out", a->out, -1, &v[0]);
    if (st == NB_OK && a->in[0].dtype != NB_DTYPE_BOOL && a->in[0].dtype != NB_DTYPE_U8)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl where: the condition is %s, expected bool",
                 dtype_str(a->in[0].dtype));
    static const char *const what[3] = {"condition", "input 1", "input 2"};
    for (int k = 0; k < 3 && st == NB_OK; k++) {
        st = check("where", what[k], &a->in[k], k == 0 ? -1 : (int)a->out->dtype, &v[k + 1]);
        if (st == NB_OK)
            st = same_shape("where", what[k], &a->in[k], a->out);
    }
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 4, v);
    return run_elementwise(a->device, "where", a->out->dtype, OCL_K_where, 4, v, &g, 0, NULL);
}

/* One C function per op name: the ABI passes no op name to a kernel. */
#define UNARY_OPS(X)                                                                       \
    X(neg, NBK_NEG) X(abs, NBK_ABS) X(exp, NBK_EXP) X(log, NBK_LOG) X(sqrt, NBK_SQRT)       \
    X(rsqrt, NBK_RSQRT) X(sin, NBK_SIN) X(cos, NBK_COS) X(tanh, NBK_TANH)                  \
    X(sigmoid, NBK_SIGMOID) X(relu, NBK_RELU) X(sign, NBK_SIGN) X(floor, NBK_FLOOR)        \
    X(ceil, NBK_CEIL) X(round, NBK_ROUND)
#define SCALAR_OPS(X)                                                                      \
    X(add_scalar, NBK_ADD_S) X(mul_scalar, NBK_MUL_S) X(rsub_scalar, NBK_RSUB_S)           \
    X(div_scalar, NBK_DIV_S) X(rdiv_scalar, NBK_RDIV_S) X(pow_scalar, NBK_POW_S)           \
    X(rpow_scalar, NBK_RPOW_S) X(clamp, NBK_CLAMP)
#define BINARY_OPS(X)                                                                      \
    X(add, NBK_ADD) X(sub, NBK_SUB) X(mul, NBK_MUL) X(div, NBK_DIV) X(pow, NBK_POW)         \
    X(maximum, NBK_MAXIMUM) X(minimum, NBK_MINIMUM)
#define COMPARE_OPS(X)                                                                     \
    X(eq, NBK_EQ) X(ne, NBK_NE) X(lt, NBK_LT) X(le, NBK_LE) X(gt, NBK_GT) X(ge, NBK_GE)
#define COMPARE_SCALAR_OPS(X)                                                              \
    X(eq_scalar, NBK_EQ) X(ne_scalar, NBK_NE) X(lt_scalar, NBK_LT) X(le_scalar, NBK_LE)     \
    X(gt_scalar, NBK_GT) X(ge_scalar, NBK_GE)
#define LOGICAL_OPS(X)                                                                     \
    X(logical_and, NBK_AND) X(logical_or, NBK_OR) X(logical_xor, NBK_XOR)                  \
    X(logical_not, NBK_NOT)

#define DEF_UNARY(name, code)                                                              \
    static nb_status k_##name(const nb_kernel_args *a) { return run_unary(a, #name, code); }
#define DEF_SCALAR(name, code)                                                             \
    static nb_status k_##name(const nb_kernel_args *a) { return run_scalar(a, #name, code); }
#define DEF_BINARY(name, code)                                                             \
    static nb_status k_##name(const nb_kernel_args *a) { return run_binary(a, #name, code); }
#define DEF_COMPARE(name, code)                                                            \
    static nb_status k_##name(const nb_kernel_args *a) { return run_compare(a, #name, code); }
#define DEF_COMPARE_SCALAR(name, code)                                                     \
    static nb_status k_##name(const nb_kernel_args *a)                                     \
    {                                                                                      \
        return run_compare_scalar(a, #name, code);                                         \
    }
#define DEF_LOGICAL(name, code)                                                            \
    static nb_status k_##name(const nb_kernel_args *a) { return run_logical(a, #name, code); }
UNARY_OPS(DEF_UNARY)
SCALAR_OPS(DEF_SCALAR)
BINARY_OPS(DEF_BINARY)
COMPARE_OPS(DEF_COMPARE)
COMPARE_SCALAR_OPS(DEF_COMPARE_SCALAR)
LOGICAL_OPS(DEF_LOGICAL)

/* ---- Reductions ---- */

static size_t pow2_floor(size_t x)
{
    size_t p = 1;
    while (p * 2 <= x)
        p *= 2;
    return p;
}

/* Appends dim (size, strides s0/s1) to a list, merging it into the previous entry when the
 * two are contiguous in both stride arrays. */
static void list_push(int64_t *shape, int64_t *s0, int64_t *s1, int64_t *n, int64_t size,
                      int64_t a, int64_t b)
{
    if (size == 1)
        return;
    if (*n > 0 && s0[*n - 1] == a * size && s1[*n - 1] == b * size) {
        shape[*n - 1] *= size;
        s0[*n - 1] = a;
        s1[*n - 1] = b;
        return;
    }
    shape[*n] = size;
    s0[*n] = a;
    s1[*n] = b;
    (*n)++;
}

static nb_status run_reduce(const nb_kernel_args *a, const char *op, int code)
{
    int arg = code == NBK_ARGMAX || code == NBK_ARGMIN;
    view vo, vi;
    nb_status st = n_inputs(op, a, 1);
    if (st == NB_OK)
        st = check(op, "out", a->out, arg ? NB_DTYPE_I64 : -1, &vo);
    if (st == NB_OK)
        st = check(op, "input", &a->in[0], arg ? -1 : (int)a->out->dtype, &vi);
    if (st != NB_OK)
        return st;
    const nb_operand *in = &a->in[0], *out = a->out;
    int32_t nd = in->ndim;
    if (out->ndim != nd)
        return ERR(NB_SHAPE_MISMATCH, "opencl %s: out has %d dims and the input %d; expected "
                   "the same, with size 1 on reduced dims", op, (int)out->ndim, (int)nd);
    int64_t dim = a->i[0];
    if (arg && !(nd == 0 ? (dim == 0 || dim == -1) : (dim >= 0 && dim < nd)))
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: dim %lld out of range for %d dims", op,
                   (long long)dim, (int)nd);
    nbk_red r;
    memset(&r, 0, sizeof r);
    int64_t dummy[NBK_MAX_DIMS];
    for (int32_t d = 0; d < nd; d++) {
        int64_t is = in->shape[d], os = out->shape[d];
        int red = arg ? d == dim : (os == 1 && is != 1);
        if (red && os != 1)
            return ERR(NB_SHAPE_MISMATCH, "opencl %s: out has size %lld in reduced dim %d, "
                       "expected 1", op, (long long)os, (int)d);
        if (!red && os != is)
            return ERR(NB_SHAPE_MISMATCH, "opencl %s: out has size %lld in dim %d where the "
                       "input has %lld; expected equal sizes, or 1 on a reduced dim", op,
                       (long long)os, (int)d, (long long)is);
        if (red)
            list_push(r.shape_red, r.st_in_red, dummy, &r.nd_red, is, in->strides[d], 0);
        else
            list_push(r.shape_out, r.st_in_out, r.st_out, &r.nd_out, is, in->strides[d],
                      out->strides[d]);
    }
    if (arg && nd > 0 && in->shape[dim] == 0)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: dim %lld has size 0; the %s of nothing is "
                   "undefined", op, (long long)dim, op);
    r.n_out = numel((int32_t)r.nd_out, r.shape_out);
    r.n_red = numel((int32_t)r.nd_red, r.shape_red); /* 0 when a reduced dim is empty */
    r.off_in = vi.off;
    r.off_out = vo.off;
    if (r.n_out == 0)
        return NB_OK;

    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    nb_dtype pdt = in->dtype;
    size_t kwg, pwg;
    cl_kernel k = ocl_kernel(d, pdt, OCL_K_reduce, op, &kwg);
    cl_kernel kp = k ? ocl_kernel(d, pdt, OCL_K_reduce_partials, op, &pwg) : NULL;
    if (!k || !kp)
        return NB_DEVICE_ERROR;
    size_t acc_size = pdt == NB_DTYPE_F32 ? 4 : 8;
    size_t wg = pow2_floor(kwg < 256 ? kwg : 256);
    while (wg > 1 && (int64_t)wg / 2 >= r.n_red)
        wg /= 2;
    /* few outputs over many elements: split each over several work-groups, then combine */
    int64_t target = 4 * (int64_t)d->compute_units, split = 1;
    if (r.n_out < target && r.n_red >= (int64_t)wg * 64) {
        split = (2 * target + r.n_out - 1) / r.n_out;
        int64_t most = (r.n_red + (int64_t)wg * 16 - 1) / ((int64_t)wg * 16);
        if (split > most)
            split = most;
        if (split > 1024)
            split = 1024;
    }
    r.chunk = (r.n_red + split - 1) / split;
    if (r.chunk == 0)
        r.chunk = 1;
    r.split = split = (r.n_red + r.chunk - 1) / r.chunk;
    if (split < 1)
        r.split = split = 1;

    ocl_lock(d); /* the scratch buffers are shared by every reduction on the device */
    st = ocl_scratch(d, op, split > 1 ? (size_t)(r.n_out * split) * acc_size : 0,
                     split > 1 ? (size_t)(r.n_out * split) * 8 : 0);
    if (st == NB_OK) {
        cl_int c = code, final_ = split == 1;
        ocl_arg args[] = {OCL_ARG(vo.mem), OCL_ARG(vo.mem), OCL_ARG(vi.mem),
                          OCL_ARG(d->scratch_v), OCL_ARG(d->scratch_i), OCL_ARG(r),
                          OCL_ARG(c), OCL_ARG(final_), {wg * acc_size, NULL}, {wg * 8, NULL}};
        size_t global = (size_t)(r.n_out * split) * wg;
        st = ocl_launch(d, k, op, 10, args, 1, &global, &wg);
        if (st == NB_OK && split > 1) {
            size_t wg2 = pow2_floor(pwg < 256 ? pwg : 256);
            while (wg2 > 1 && (int64_t)wg2 / 2 >= split)
                wg2 /= 2;
            ocl_arg args2[] = {OCL_ARG(vo.mem), OCL_ARG(vo.mem), OCL_ARG(d->scratch_v),
                               OCL_ARG(d->scratch_i), OCL_ARG(r), OCL_ARG(c),
                               {wg2 * acc_size, NULL}, {wg2 * 8, NULL}};
            size_t global2 = (size_t)r.n_out * wg2;
            st = ocl_launch(d, kp, op, 8, args2, 1, &global2, &wg2);
        }
    }
    ocl_unlock(d);
    return st;
}

#define REDUCE_OPS(X)                                                                      \
    X(sum, NBK_SUM) X(prod, NBK_PROD) X(max, NBK_MAX) X(min, NBK_MIN) X(argmax, NBK_ARGMAX) \
    X(argmin, NBK_ARGMIN)
#define DEF_REDUCE(name, code)                                                             \
    static nb_status k_##name(const nb_kernel_args *a) { return run_reduce(a, #name, code); }
REDUCE_OPS(DEF_REDUCE)

/* ---- matmul ---- */

static nb_status k_matmul(const nb_kernel_args *a)
{
    const char *op = "matmul";
    view v[3];
    nb_status st = n_inputs(op, a, 2);
    if (st == NB_OK)
        st = check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && a->out->dtype != NB_DTYPE_F32 && a->out->dtype != NB_DTYPE_F64)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl matmul: out is %s, expected f32 or f64",
                 dt_name[a->out->dtype]);
    if (st == NB_OK)
        st = check(op, "input 0", &a->in[0], (int)a->out->dtype, &v[1]);
    if (st == NB_OK)
        st = check(op, "input 1", &a->in[1], (int)a->out->dtype, &v[2]);
    if (st != NB_OK)
        return st;
    const nb_operand *o = a->out, *x = &a->in[0], *y = &a->in[1];
    if (o->ndim != 3 || x->ndim != 3 || y->ndim != 3)
        return ERR(NB_SHAPE_MISMATCH, "opencl matmul: operands have %d, %d and %d dims, "
                   "expected 3 each (batch, rows, cols)", (int)o->ndim, (int)x->ndim,
                   (int)y->ndim);
    int64_t B = o->shape[0], M = o->shape[1], N = o->shape[2], K = x->shape[2];
    if (x->shape[1] != M || y->shape[1] != K || y->shape[2] != N ||
        (x->shape[0] != B && x->shape[0] != 1) || (y->shape[0] != B && y->shape[0] != 1))
        return ERR(NB_SHAPE_MISMATCH, "opencl matmul: [%lld,%lld,%lld] @ [%lld,%lld,%lld] -> "
                   "[%lld,%lld,%lld] do not match; expected (b,m,k) @ (b,k,n) -> (b,m,n)",
                   (long long)x->shape[0], (long long)x->shape[1], (long long)x->shape[2],
                   (long long)y->shape[0], (long long)y->shape[1], (long long)y->shape[2],
                   (long long)B, (long long)M, (long long)N);
    if (B == 0 || M == 0 || N == 0)
        return NB_OK;
    nbk_mm g;
    memset(&g, 0, sizeof g);
    g.batch = B;
    g.m = M;
    g.n = N;
    g.k = K;
    for (int k = 0; k < 3; k++) {
        const nb_operand *p = v[k].o;
        g.off[k] = v[k].off;
        g.st[k][0] = p->shape[0] == 1 ? 0 : p->strides[0];
        g.st[k][1] = p->strides[1];
        g.st[k][2] = p->strides[2];
    }
    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    size_t wg;
    cl_kernel k = ocl_kernel(d, o->dtype, OCL_K_matmul, op, &wg);
    if (!k)
        return NB_DEVICE_ERROR;
    scalar alpha = scalar_of(o->dtype, a->f[0]), beta = scalar_of(o->dtype, a->f[1]);
    ocl_arg args[] = {OCL_ARG(v[0].mem), OCL_ARG(v[1].mem), OCL_ARG(v[2].mem), OCL_ARG(g),
                      SARG(alpha), SARG(beta)};
    if (wg >= 256) {
        size_t local[3] = {16, 16, 1};
        size_t global[3] = {(size_t)(N + 15) / 16 * 16, (size_t)(M + 15) / 16 * 16, (size_t)B};
        return ocl_launch(d, k, op, 6, args, 3, global, local);
    }
    /* the device cannot run 16x16 work-groups: one work-item per output element */
    k = ocl_kernel(d, o->dtype, OCL_K_matmul_naive, op, NULL);
    if (!k)
        return NB_DEVICE_ERROR;
    size_t global[3] = {(size_t)N, (size_t)M, (size_t)B};
    return ocl_launch(d, k, op, 6, args, 3, global, NULL);
}

/* ---- gather, scatter_add ---- */

/* Fails when any index of vi lies outside [0, size): one small blocking read per call. */
static nb_status check_indices(int device, const char *op, view *vi, int64_t size, int64_t dim)
{
    ocl_dev *d = ocl_device(device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    static const int64_t zero[2] = {0, 0}; /* static: the write below does not block */
    int64_t flag[2] = {0, 0};
    nb_status st = NB_OK;
    ocl_lock(d);
    cl_int err = CL_SUCCESS;
    if (!d->flag)
        d->flag = clCreateBuffer(d->ctx, CL_MEM_READ_WRITE, sizeof flag, NULL, &err);
    if (!d->flag)
        st = ocl_fail(NB_DEVICE_ERROR, op, "clCreateBuffer (index flag)", err);
    if (st == NB_OK &&
        (err = clEnqueueWriteBuffer(d->queue, d->flag, CL_FALSE, 0, sizeof zero, zero, 0, NULL,
                                    NULL)) != CL_SUCCESS)
        st = ocl_fail(NB_DEVICE_ERROR, op, "clEnqueueWriteBuffer (index flag)", err);
    if (st == NB_OK) {
        nbk_geom g;
        geom_views(&g, 1, vi);
        ocl_arg extra[] = {OCL_ARG(size), OCL_ARG(d->flag)};
        st = run_elementwise(device, op, NB_DTYPE_I64, OCL_K_index_check, 1, vi, &g, 2, extra);
    }
    if (st == NB_OK &&
        (err = clEnqueueReadBuffer(d->queue, d->flag, CL_TRUE, 0, sizeof flag, flag, 0, NULL,
                                   NULL)) != CL_SUCCESS)
        st = ocl_fail(NB_DEVICE_ERROR, op, "clEnqueueReadBuffer (index flag)", err);
    ocl_unlock(d);
    if (st == NB_OK && flag[0])
        st = ERR(NB_INDEX_OUT_OF_RANGE, "opencl %s: index %lld is out of range for dim %lld of "
                 "size %lld", op, (long long)flag[1], (long long)dim, (long long)size);
    return st;
}

/* A 0-d operand as 1-d of size 1, so gather/scatter need no special case. */
static const int64_t one_shape[1] = {1}, zero_stride[1] = {0};
static nb_operand as_1d(const nb_operand *o)
{
    nb_operand c = *o;
    if (c.ndim == 0) {
        c.ndim = 1;
        c.shape = one_shape;
        c.strides = zero_stride;
    }
    return c;
}

static nb_status k_gather(const nb_kernel_args *a)
{
    const char *op = "gather";
    nb_status st = n_inputs(op, a, 2);
    if (st != NB_OK)
        return st;
    if (!a->out)
        return ERR(NB_NULL_ARGUMENT, "opencl gather: out is NULL");
    nb_operand out = as_1d(a->out), data = as_1d(&a->in[0]), idx = as_1d(&a->in[1]);
    view v[3];
    st = check(op, "out", &out, -1, &v[0]);
    if (st == NB_OK)
        st = check(op, "input", &data, (int)out.dtype, &v[1]);
    if (st == NB_OK)
        st = check(op, "index", &idx, NB_DTYPE_I64, &v[2]);
    if (st == NB_OK)
        st = same_shape(op, "index", &idx, &out);
    if (st != NB_OK)
        return st;
    int64_t dim = a->i[0];
    if (data.ndim != out.ndim || dim < 0 || dim >= out.ndim)
        return ERR(NB_INVALID_ARGUMENT, "opencl gather: input has %d dims, out %d and dim is "
                   "%lld; expected equal dims and 0 <= dim < dims", (int)data.ndim,
                   (int)out.ndim, (long long)dim);
    for (int32_t e = 0; e < out.ndim; e++)
        if (e != dim && out.shape[e] > data.shape[e])
            return ERR(NB_SHAPE_MISMATCH, "opencl gather: the index has size %lld in dim %d "
                       "but the input only %lld", (long long)out.shape[e], (int)e,
                       (long long)data.shape[e]);
    if (numel(out.ndim, out.shape) == 0)
        return NB_OK;
    if ((st = check_indices(a->device, op, &v[2], data.shape[dim], dim)) != NB_OK)
        return st;
    int64_t dst[NB_MAX_DIMS];
    memcpy(dst, data.strides, sizeof(int64_t) * (size_t)data.ndim);
    dst[dim] = 0; /* the index supplies the coordinate along dim */
    const int64_t *strides[3] = {out.strides, dst, idx.strides};
    int64_t off[3] = {v[0].off, v[1].off, v[2].off};
    nbk_geom g;
    geom_make(&g, out.ndim, out.shape, 3, strides, off);
    int64_t dstride = data.strides[dim];
    ocl_arg extra[] = {OCL_ARG(dstride)};
    return run_elementwise(a->device, op, out.dtype, OCL_K_gather, 3, v, &g, 1, extra);
}

static nb_status k_scatter_add(const nb_kernel_args *a)
{
    const char *op = "scatter_add";
    nb_status st = n_inputs(op, a, 2);
    if (st != NB_OK)
        return st;
    if (!a->out)
        return ERR(NB_NULL_ARGUMENT, "opencl scatter_add: out is NULL");
    nb_operand out = as_1d(a->out), idx = as_1d(&a->in[0]), src = as_1d(&a->in[1]);
    view v[3];
    st = check(op, "out", &out, -1, &v[0]);
    if (st == NB_OK)
        st = check(op, "index", &idx, NB_DTYPE_I64, &v[1]);
    if (st == NB_OK)
        st = check(op, "source", &src, (int)out.dtype, &v[2]);
    if (st == NB_OK)
        st = same_shape(op, "source", &src, &idx);
    if (st != NB_OK)
        return st;
    int64_t dim = a->i[0];
    if (idx.ndim != out.ndim || dim < 0 || dim >= out.ndim)
        return ERR(NB_INVALID_ARGUMENT, "opencl scatter_add: index has %d dims, out %d and dim "
                   "is %lld; expected equal dims and 0 <= dim < dims", (int)idx.ndim,
                   (int)out.ndim, (long long)dim);
    for (int32_t e = 0; e < out.ndim; e++)
        if (e != dim && idx.shape[e] > out.shape[e])
            return ERR(NB_SHAPE_MISMATCH, "opencl scatter_add: the index has size %lld in dim "
                       "%d but out only %lld", (long long)idx.shape[e], (int)e,
                       (long long)out.shape[e]);
    if (numel(idx.ndim, idx.shape) == 0)
        return NB_OK;
    if ((st = check_indices(a->device, op, &v[1], out.shape[dim], dim)) != NB_OK)
        return st;
    /* one work-item per line along dim */
    int64_t lines[NB_MAX_DIMS];
    memcpy(lines, idx.shape, sizeof(int64_t) * (size_t)idx.ndim);
    lines[dim] = 1;
    const int64_t *strides[3] = {out.strides, idx.strides, src.strides};
    int64_t off[3] = {v[0].off, v[1].off, v[2].off};
    nbk_geom g;
    geom_make(&g, idx.ndim, lines, 3, strides, off);
    int64_t len = idx.shape[dim], ost = out.strides[dim], ist = idx.strides[dim],
            sst = src.strides[dim];
    ocl_arg extra[] = {OCL_ARG(len), OCL_ARG(ost), OCL_ARG(ist), OCL_ARG(sst)};
    return run_elementwise(a->device, op, out.dtype, OCL_K_scatter_add, 3, v, &g, 4, extra);
}

/* ---- random ---- */

static nb_status run_random(const nb_kernel_args *a, const char *op, ocl_kid kid)
{
    view v[1];
    nb_status st = n_inputs(op, a, 0);
    if (st == NB_OK)
        st = check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && a->out->dtype != NB_DTYPE_F32 && a->out->dtype != NB_DTYPE_F64)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s, expected f32 or f64", op,
                 dt_name[a->out->dtype]);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 1, v);
    cl_ulong seed = (cl_ulong)a->i[0], offset = (cl_ulong)a->i[1];
    scalar p0 = real_of(a->device, a->f[0]), p1 = real_of(a->device, a->f[1]);
    ocl_arg extra[] = {OCL_ARG(seed), OCL_ARG(offset), SARG(p0), SARG(p1)};
    return run_elementwise(a->device, op, a->out->dtype, kid, 1, v, &g, 4, extra);
}

static nb_status k_random_uniform(const nb_kernel_args *a)
{
    return run_random(a, "random_uniform", OCL_K_random_uniform);
}

static nb_status k_random_normal(const nb_kernel_args *a)
{
    return run_random(a, "random_normal", OCL_K_random_normal);
}

/* ---- Tier 2: relu_backward, softmax family, optimizer steps ---- */

/* out and n_in inputs of one float dtype and out's shape (inputs past n_req may be absent). */
static nb_status check_float_ew(const char *op, const nb_kernel_args *a, int n_req, view *v)
{
    nb_status st = n_inputs(op, a, n_req);
    if (st == NB_OK)
        st = check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && a->out->dtype != NB_DTYPE_F32 && a->out->dtype != NB_DTYPE_F64)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s, expected f32 or f64", op,
                 dt_name[a->out->dtype]);
    for (int k = 0; k < a->n_in && k < 3 && st == NB_OK; k++) {
        char what[24];
        snprintf(what, sizeof what, "input %d", k);
        st = check(op, what, &a->in[k], (int)a->out->dtype, &v[k + 1]);
        if (st == NB_OK)
            st = same_shape(op, what, &a->in[k], a->out);
    }
    return st;
}

static nb_status k_relu_backward(const nb_kernel_args *a)
{
    view v[4];
    nb_status st = check_float_ew("relu_backward", a, 2, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    geom_views(&g, 3, v);
    return run_elementwise(a->device, "relu_backward", a->out->dtype, OCL_K_relu_backward, 3, v,
                           &g, 0, NULL);
}

/* One work-group per row of the last dim; nops operands (out first) of out's shape. */
static nb_status run_rows(const nb_kernel_args *a, const char *op, ocl_kid kid, int nops,
                          int take_log)
{
    view v[4];
    nb_status st = check_float_ew(op, a, nops - 1, v);
    if (st != NB_OK)
        return st;
    const nb_operand *o = a->out;
    if (o->ndim == 0 || a->i[0] != o->ndim - 1)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: dim %lld of a %d-d tensor; this kernel "
                   "only reduces the last dim", op, (long long)a->i[0], (int)o->ndim);
    int64_t len = o->shape[o->ndim - 1];
    const int64_t *strides[3];
    int64_t off[3], last[3];
    for (int k = 0; k < nops; k++) {
        strides[k] = v[k].o->strides;
        off[k] = v[k].off;
        last[k] = v[k].o->strides[o->ndim - 1];
    }
    nbk_geom g;
    geom_make(&g, o->ndim - 1, o->shape, nops, strides, off);
    if (g.n == 0 || len == 0)
        return NB_OK;
    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    size_t kwg;
    cl_kernel k = ocl_kernel(d, o->dtype, kid, op, &kwg);
    if (!k)
        return NB_DEVICE_ERROR;
    size_t wg = pow2_floor(kwg < 256 ? kwg : 256);
    while (wg > 1 && (int64_t)wg / 2 >= len)
        wg /= 2;
    cl_int tl = take_log;
    ocl_arg args[12];
    int n = 0;
    for (int i = 0; i < nops; i++)
        args[n++] = OCL_ARG(v[i].mem);
    args[n++] = OCL_ARG(g);
    args[n++] = OCL_ARG(len);
    for (int i = 0; i < nops; i++)
        args[n++] = OCL_ARG(last[i]);
    args[n++] = OCL_ARG(tl);
    args[n++] = (ocl_arg){wg * dt_size[o->dtype], NULL};
    size_t global = (size_t)g.n * wg;
    return ocl_launch(d, k, op, n, args, 1, &global, &wg);
}

static nb_status k_softmax(const nb_kernel_args *a)
{
    return run_rows(a, "softmax", OCL_K_softmax_rows, 2, 0);
}
static nb_status k_log_softmax(const nb_kernel_args *a)
{
    return run_rows(a, "log_softmax", OCL_K_softmax_rows, 2, 1);
}
static nb_status k_softmax_backward(const nb_kernel_args *a)
{
    return run_rows(a, "softmax_backward", OCL_K_softmax_backward_rows, 3, 0);
}
static nb_status k_log_softmax_backward(const nb_kernel_args *a)
{
    return run_rows(a, "log_softmax_backward", OCL_K_softmax_backward_rows, 3, 1);
}

static nb_status k_sgd_step(const nb_kernel_args *a)
{
    view v[4];
    nb_status st = check_float_ew("sgd_step", a, 1, v);
    if (st != NB_OK)
        return st;
    cl_int has_buf = a->n_in >= 2, nesterov = a->i[0] != 0, first = a->i[1] != 0;
    if (!has_buf)
        v[2] = v[1]; /* never touched: a valid buffer for the unused argument */
    if (!has_buf && a->f[1] != 0)
        return ERR(NB_INVALID_ARGUMENT, "opencl sgd_step: momentum %g needs a momentum buffer "
                   "as input 1; only the gradient was given", a->f[1]);
    nbk_geom g;
    geom_views(&g, 3, v);
    nb_dtype t = a->out->dtype;
    scalar lr = scalar_of(t, a->f[0]), mom = scalar_of(t, a->f[1]), damp = scalar_of(t, a->f[2]),
           wd = scalar_of(t, a->f[3]);
    ocl_arg extra[] = {SARG(lr),           SARG(mom),       SARG(damp),  SARG(wd),
                       OCL_ARG(nesterov), OCL_ARG(first), OCL_ARG(has_buf)};
    return run_elementwise(a->device, "sgd_step", t, OCL_K_sgd_step, 3, v, &g, 7, extra);
}

static nb_status k_adam_step(const nb_kernel_args *a)
{
    view v[4];
    nb_status st = check_float_ew("adam_step", a, 3, v);
    if (st != NB_OK)
        return st;
    if (a->i[0] < 1)
        return ERR(NB_INVALID_ARGUMENT, "opencl adam_step: step %lld, expected 1 or more",
                   (long long)a->i[0]);
    double lr = a->f[0], b1 = a->f[1], b2 = a->f[2];
    double bc1 = 1 - pow(b1, (double)a->i[0]), bc2 = 1 - pow(b2, (double)a->i[0]);
    nbk_geom g;
    geom_views(&g, 4, v);
    nb_dtype t = a->out->dtype;
    scalar s_lr = scalar_of(t, lr), s_b1 = scalar_of(t, b1), s_b2 = scalar_of(t, b2),
           s_eps = scalar_of(t, a->f[3]), s_wd = scalar_of(t, a->f[4]),
           s_step = scalar_of(t, lr / bc1), s_bc2 = scalar_of(t, sqrt(bc2));
    cl_int decoupled = a->i[1] != 0;
    ocl_arg extra[] = {SARG(s_lr), SARG(s_b1),   SARG(s_b2),  SARG(s_eps),
                       SARG(s_wd), SARG(s_step), SARG(s_bc2), OCL_ARG(decoupled)};
    return run_elementwise(a->device, "adam_step", t, OCL_K_adam_step, 4, v, &g, 8, extra);
}

/* ---- Tier 2: conv2d and max_pool2d ---- */

/* Launches kernel kid over n work-items with the three buffers of v and p. */
static nb_status run_flat(int device, const char *op, nb_dtype t, ocl_kid kid, int64_t n,
                          const view *v, const nbk_conv *p)
{
    if (n == 0)
        return NB_OK;
    ocl_dev *d = ocl_device(device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    size_t wg;
    cl_kernel k = ocl_kernel(d, t, kid, op, &wg);
    if (!k)
        return NB_DEVICE_ERROR;
    ocl_arg args[] = {OCL_ARG(v[0].mem), OCL_ARG(v[1].mem), OCL_ARG(v[2].mem),
                      {sizeof *p, p}};
    size_t local = wg < 128 ? wg : 128;
    size_t global = ((size_t)n + local - 1) / local * local;
    return ocl_launch(d, k, op, 4, args, 1, &global, &local);
}

/* out, in[0], in[1] as 4-d float tensors (in[1] int64 for the pooling indices). */
static nb_status check4(const char *op, const nb_kernel_args *a, int idx_dtype, view *v)
{
    nb_status st = n_inputs(op, a, 2);
    if (st == NB_OK)
        st = check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && a->out->dtype != NB_DTYPE_F32 && a->out->dtype != NB_DTYPE_F64)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s, expected f32 or f64", op,
                 dt_name[a->out->dtype]);
    if (st == NB_OK)
        st = check(op, "input 0", &a->in[0], (int)a->out->dtype, &v[1]);
    if (st == NB_OK)
        st = check(op, "input 1", &a->in[1], idx_dtype >= 0 ? idx_dtype : (int)a->out->dtype,
                   &v[2]);
    if (st == NB_OK && (a->out->ndim != 4 || a->in[0].ndim != 4 || a->in[1].ndim != 4))
        st = ERR(NB_SHAPE_MISMATCH, "opencl %s: operands have %d, %d and %d dims, expected 4 "
                 "each", op, (int)a->out->ndim, (int)a->in[0].ndim, (int)a->in[1].ndim);
    return st;
}

static void conv_role(int64_t *off, int64_t *st, const view *v)
{
    *off = v->off;
    for (int k = 0; k < 4; k++)
        st[k] = v->o->strides[k];
}

/* role 0: out = conv2d(in[0] x, in[1] w); 1: out = grad x from in[0] grad y and in[1] w;
 * 2: out = grad w from in[0] grad y and in[1] x. */
static nb_status run_conv(const nb_kernel_args *a, const char *op, ocl_kid kid, int role)
{
    view v[3];
    nb_status st = check4(op, a, -1, v);
    if (st != NB_OK)
        return st;
    const view *vy = role == 0 ? &v[0] : &v[1];
    const view *vx = role == 0 ? &v[1] : role == 1 ? &v[0] : &v[2];
    const view *vw = role == 2 ? &v[0] : &v[2];
    const int64_t *ys = vy->o->shape, *xs = vx->o->shape, *ws = vw->o->shape;
    nbk_conv p;
    memset(&p, 0, sizeof p);
    p.n = xs[0], p.c = xs[1], p.h = xs[2], p.w = xs[3];
    p.o = ys[1], p.oh = ys[2], p.ow = ys[3];
    p.kh = ws[2], p.kw = ws[3];
    p.sh = a->i[0], p.sw = a->i[1], p.ph = a->i[2], p.pw = a->i[3];
    p.dh = a->i[4], p.dw = a->i[5], p.groups = a->i[6];
    if (p.sh < 1 || p.sw < 1 || p.ph < 0 || p.pw < 0 || p.dh < 1 || p.dw < 1 || p.groups < 1)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: stride %lldx%lld, padding %lldx%lld, "
                   "dilation %lldx%lld, groups %lld; expected stride, dilation and groups >= 1 "
                   "and padding >= 0", op, (long long)p.sh, (long long)p.sw, (long long)p.ph,
                   (long long)p.pw, (long long)p.dh, (long long)p.dw, (long long)p.groups);
    int64_t eh = (p.h + 2 * p.ph - p.dh * (p.kh - 1) - 1), ew = (p.w + 2 * p.pw - p.dw * (p.kw - 1) - 1);
    if (ys[0] != p.n || ws[0] != p.o || p.c % p.groups || p.o % p.groups ||
        ws[1] != p.c / p.groups || eh < 0 || ew < 0 || p.oh != eh / p.sh + 1 ||
        p.ow != ew / p.sw + 1)
        return ERR(NB_SHAPE_MISMATCH, "opencl %s: x [%lld,%lld,%lld,%lld], w [%lld,%lld,%lld,"
                   "%lld] and y [%lld,%lld,%lld,%lld] do not fit a conv2d with these stride, "
                   "padding, dilation and %lld groups", op, (long long)xs[0], (long long)xs[1],
                   (long long)xs[2], (long long)xs[3], (long long)ws[0], (long long)ws[1],
                   (long long)ws[2], (long long)ws[3], (long long)ys[0], (long long)ys[1],
                   (long long)ys[2], (long long)ys[3], (long long)p.groups);
    conv_role(&p.off_y, p.st_y, vy);
    conv_role(&p.off_x, p.st_x, vx);
    conv_role(&p.off_w, p.st_w, vw);
    int64_t n = role == 0 ? p.n * p.o * p.oh * p.ow
              : role == 1 ? p.n * p.c * p.h * p.w
                          : p.o * (p.c / p.groups) * p.kh * p.kw;
    return run_flat(a->device, op, a->out->dtype, kid, n, v, &p);
}

static nb_status k_conv2d(const nb_kernel_args *a)
{
    return run_conv(a, "conv2d", OCL_K_conv2d, 0);
}
static nb_status k_conv2d_backward_input(const nb_kernel_args *a)
{
    return run_conv(a, "conv2d_backward_input", OCL_K_conv2d_backward_input, 1);
}
static nb_status k_conv2d_backward_weight(const nb_kernel_args *a)
{
    return run_conv(a, "conv2d_backward_weight", OCL_K_conv2d_backward_weight, 2);
}

/* forward: out y, in[0] x, in[1] indices (written); backward: out grad x, in[0] grad y,
 * in[1] indices. i[] = kernel h,w, stride h,w, padding h,w (backward scans whole planes when
 * they are 0). */
static nb_status run_pool(const nb_kernel_args *a, const char *op, int backward)
{
    view v[3];
    nb_status st = check4(op, a, NB_DTYPE_I64, v);
    if (st != NB_OK)
        return st;
    const view *vy = backward ? &v[1] : &v[0], *vx = backward ? &v[0] : &v[1];
    const int64_t *ys = vy->o->shape, *xs = vx->o->shape, *is = v[2].o->shape;
    nbk_conv p;
    memset(&p, 0, sizeof p);
    p.n = xs[0], p.c = xs[1], p.h = xs[2], p.w = xs[3];
    p.o = ys[1], p.oh = ys[2], p.ow = ys[3];
    p.kh = a->i[0], p.kw = a->i[1], p.sh = a->i[2], p.sw = a->i[3], p.ph = a->i[4],
    p.pw = a->i[5];
    if (ys[0] != p.n || ys[1] != p.c || is[0] != ys[0] || is[1] != ys[1] || is[2] != ys[2] ||
        is[3] != ys[3])
        return ERR(NB_SHAPE_MISMATCH, "opencl %s: x [%lld,%lld,%lld,%lld], y [%lld,%lld,%lld,"
                   "%lld] and indices [%lld,%lld,%lld,%lld]; expected y and indices (N,C,OH,OW) "
                   "for x (N,C,H,W)", op, (long long)xs[0], (long long)xs[1], (long long)xs[2],
                   (long long)xs[3], (long long)ys[0], (long long)ys[1], (long long)ys[2],
                   (long long)ys[3], (long long)is[0], (long long)is[1], (long long)is[2],
                   (long long)is[3]);
    if (!backward && (p.kh < 1 || p.kw < 1 || p.sh < 1 || p.sw < 1 || p.ph < 0 || p.pw < 0 ||
                      p.ph * 2 > p.kh || p.pw * 2 > p.kw))
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: kernel %lldx%lld, stride %lldx%lld, "
                   "padding %lldx%lld; expected kernel and stride >= 1 and 0 <= padding <= "
                   "kernel/2", op, (long long)p.kh, (long long)p.kw, (long long)p.sh,
                   (long long)p.sw, (long long)p.ph, (long long)p.pw);
    conv_role(&p.off_y, p.st_y, vy);
    conv_role(&p.off_x, p.st_x, vx);
    conv_role(&p.off_w, p.st_w, &v[2]);
    int64_t n = backward ? p.n * p.c * p.h * p.w : p.n * p.c * p.oh * p.ow;
    return run_flat(a->device, op, a->out->dtype,
                    backward ? OCL_K_max_pool2d_backward : OCL_K_max_pool2d, n, v, &p);
}

static nb_status k_max_pool2d(const nb_kernel_args *a)
{
    return run_pool(a, "max_pool2d", 0);
}
static nb_status k_max_pool2d_backward(const nb_kernel_args *a)
{
    return run_pool(a, "max_pool2d_backward", 1);
}

/* ---- The kernel table ---- */

#define B_(t) (1u << NB_DTYPE_##t)
#define ALL (B_(F32) | B_(F64) | B_(I32) | B_(I64) | B_(BOOL) | B_(U8))
#define FLT (B_(F32) | B_(F64))
#define NUM (FLT | B_(I32) | B_(I64))

typedef struct spec {
    const char *op;
    nb_kernel_fn fn;
    unsigned dtypes;
} spec;

static const spec specs[] = {
    {"fill", k_fill, ALL},
    {"copy", k_copy, ALL},
    {"arange", k_arange, ALL},
    {"neg", k_neg, NUM},
    {"abs", k_abs, NUM},
    {"relu", k_relu, NUM},
    {"sign", k_sign, NUM},
    {"exp", k_exp, FLT},
    {"log", k_log, FLT},
    {"sqrt", k_sqrt, FLT},
    {"rsqrt", k_rsqrt, FLT},
    {"sin", k_sin, FLT},
    {"cos", k_cos, FLT},
    {"tanh", k_tanh, FLT},
    {"sigmoid", k_sigmoid, FLT},
    {"floor", k_floor, FLT},
    {"ceil", k_ceil, FLT},
    {"round", k_round, FLT},
    {"logical_not", k_logical_not, ALL},
    {"add_scalar", k_add_scalar, NUM},
    {"mul_scalar", k_mul_scalar, NUM},
    {"rsub_scalar", k_rsub_scalar, NUM},
    {"clamp", k_clamp, NUM},
    {"div_scalar", k_div_scalar, FLT},
    {"rdiv_scalar", k_rdiv_scalar, FLT},
    {"pow_scalar", k_pow_scalar, FLT},
    {"rpow_scalar", k_rpow_scalar, FLT},
    {"eq_scalar", k_eq_scalar, ALL},
    {"ne_scalar", k_ne_scalar, ALL},
    {"lt_scalar", k_lt_scalar, ALL},
    {"le_scalar", k_le_scalar, ALL},
    {"gt_scalar", k_gt_scalar, ALL},
    {"ge_scalar", k_ge_scalar, ALL},
    {"add", k_add, NUM},
    {"sub", k_sub, NUM},
    {"mul", k_mul, NUM},
    {"maximum", k_maximum, NUM},
    {"minimum", k_minimum, NUM},
    {"div", k_div, FLT},
    {"pow", k_pow, FLT},
    {"eq", k_eq, ALL},
    {"ne", k_ne, ALL},
    {"lt", k_lt, ALL},
    {"le", k_le, ALL},
    {"gt", k_gt, ALL},
    {"ge", k_ge, ALL},
    {"logical_and", k_logical_and, ALL},
    {"logical_or", k_logical_or, ALL},
    {"logical_xor", k_logical_xor, ALL},
    {"where", k_where, ALL},
    {"sum", k_sum, ALL},
    {"prod", k_prod, ALL},
    {"max", k_max, ALL},
    {"min", k_min, ALL},
    {"argmax", k_argmax, ALL},
    {"argmin", k_argmin, ALL},
    {"matmul", k_matmul, FLT},
    {"gather", k_gather, ALL},
    {"scatter_add", k_scatter_add, ALL},
    {"random_uniform", k_random_uniform, FLT},
    {"random_normal", k_random_normal, FLT},
    {"relu_backward", k_relu_backward, FLT},
    {"softmax", k_softmax, FLT},
    {"log_softmax", k_log_softmax, FLT},
    {"softmax_backward", k_softmax_backward, FLT},
    {"log_softmax_backward", k_log_softmax_backward, FLT},
    {"sgd_step", k_sgd_step, FLT},
    {"adam_step", k_adam_step, FLT},
    {"conv2d", k_conv2d, FLT},
    {"conv2d_backward_input", k_conv2d_backward_input, FLT},
    {"conv2d_backward_weight", k_conv2d_backward_weight, FLT},
    {"max_pool2d", k_max_pool2d, FLT},
    {"max_pool2d_backward", k_max_pool2d_backward, FLT},
};

size_t ocl_kernel_table(nb_kernel_desc *table, int with_f64)
{
    size_t n = 0;
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++)
        for (int t = 0; t < NB_DTYPE_COUNT; t++) {
            if (!(specs[s].dtypes & (1u << t)) || (t == NB_DTYPE_F64 && !with_f64))
                continue;
            if (n < OCL_MAX_TABLE)
                table[n++] = (nb_kernel_desc){specs[s].op, (nb_dtype)t, specs[s].fn};
        }
    return n;
}
