/* opencl_ops.c - what every op of the opencl plugin is built on: operand checks (every element a
 * view addresses must lie in its buffer), coalesced geometry, scalars as kernel arguments, and
 * the 1-d elementwise launch. */
#include "opencl_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* designated, so that a dtype appended to the enum is a NULL/0 here, not a neighbour's entry */
const char *const ocl_dt_name[NB_DTYPE_COUNT] = {
    [NB_DTYPE_F32] = "f32", [NB_DTYPE_F64] = "f64",   [NB_DTYPE_I32] = "i32",
    [NB_DTYPE_I64] = "i64", [NB_DTYPE_BOOL] = "bool", [NB_DTYPE_U8] = "u8",
    [NB_DTYPE_F16] = "f16", [NB_DTYPE_BF16] = "bf16"};
const size_t ocl_dt_size[NB_DTYPE_COUNT] = {
    [NB_DTYPE_F32] = 4, [NB_DTYPE_F64] = 8,  [NB_DTYPE_I32] = 4, [NB_DTYPE_I64] = 8,
    [NB_DTYPE_BOOL] = 1, [NB_DTYPE_U8] = 1, [NB_DTYPE_F16] = 2, [NB_DTYPE_BF16] = 2};

/* ---- Operands ---- */

/* formatted once, not per launch: snprintf was a tenth of the host's time per elementwise op */
const char *const ocl_input_name[NBK_MAX_OPERANDS] = {"input 0", "input 1", "input 2",
                                                      "input 3"};

int64_t ocl_numel(int32_t ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int32_t d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

const char *ocl_dtype_str(nb_dtype t)
{
    return (unsigned)t < NB_DTYPE_COUNT ? ocl_dt_name[t] : "an invalid dtype";
}

/* Checks o (named what) and that every element it addresses lies inside its buffer, so a bad
 * ocl_view is an error here rather than a wild access on the device. want < 0: any dtype. */
nb_status ocl_check(const char *op, const char *what, const nb_operand *o, int want, ocl_view *v)
{
    if (!o || !o->handle)
        return ERR(NB_NULL_ARGUMENT, "opencl %s: %s is NULL", op, what);
    if ((unsigned)o->dtype >= NB_DTYPE_COUNT)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: %s has dtype %d, expected 0..%d", op, what,
                   (int)o->dtype, NB_DTYPE_COUNT - 1);
    if (want >= 0 && o->dtype != (nb_dtype)want)
        return ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: %s is %s, expected %s", op, what,
                   ocl_dt_name[o->dtype], ocl_dt_name[want]);
    if (o->ndim < 0 || o->ndim > NB_MAX_DIMS || (o->ndim && (!o->shape || !o->strides)))
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: %s has %d dims (or no shape/strides), "
                   "expected 0..%d", op, what, (int)o->ndim, NB_MAX_DIMS);
    const ocl_buf *b = o->handle;
    size_t es = ocl_dt_size[o->dtype];
    if (o->offset % es)
        return ERR(NB_INVALID_ARGUMENT, "opencl %s: %s starts at byte %zu, not a multiple of "
                   "the %zu-byte %s element", op, what, o->offset, es, ocl_dt_name[o->dtype]);
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

nb_status ocl_same_shape(const char *op, const char *what, const nb_operand *o,
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

nb_status ocl_n_inputs(const char *op, const nb_kernel_args *a, int want)
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
void ocl_geom_make(nbk_geom *g, int32_t ndim, const int64_t *shape, int nops,
                      const int64_t *const *st, const int64_t *off)
{
    memset(g, 0, sizeof *g);
    g->n = ocl_numel(ndim, shape);
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

int ocl_chunked_kernel(ocl_kid kid)
{
#define OCL_CHUNKED_CASE_(name) case OCL_K_##name:
    switch (kid) {
    OCL_CHUNKED_KERNELS(OCL_CHUNKED_CASE_)
        return 1;
    default:
        return 0;
    }
#undef OCL_CHUNKED_CASE_
}

/* Launches a 1-d elementwise kernel over g->n work-items with arguments: the nops buffers, g,
 * then extra. Kernel program dtype pdt. */
nb_status ocl_run_elementwise(int device, const char *op, nb_dtype pdt, ocl_kid kid,
                                 int nops, const ocl_view *v, const nbk_geom *g, int n_extra,
                                 const ocl_arg *extra)
{
    if (g->n == 0)
        return NB_OK;
    ocl_dev *d = ocl_device(device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    if (OCL_IS_HALF(pdt) && !ocl_half_kernel(kid)) {
        ocl_kernel(d, pdt, kid, op, NULL); /* reports it */
        return NB_DTYPE_UNSUPPORTED;
    }
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
    /* a chunked kernel takes up to NBK_CHUNK elements of a row per work-item (common.cl) */
    size_t items = (size_t)g->n;
    if (ocl_chunked_kernel(kid)) {
        int64_t inner = g->shape[g->ndim - 1];
        int64_t chunk = ocl_chunk(d);
        items = (size_t)(g->n / inner) * (size_t)((inner + chunk - 1) / chunk);
    }
    /* groups of 256, but a single work-item alone: on PoCL each work-item of a group costs
     * about 9 ns even when it returns at once, so a one-element op (a loss, a scalar) in a
     * group of 256 paid 2.3 us more than in a group of 1 (a bare PoCL loop: 6.0 vs 3.7 us per
     * enqueue). PoCL compiles a kernel once per group size, so there are only these two. */
    size_t local = items == 1 ? 1 : wg < 256 ? wg : 256;
    size_t global = (items + local - 1) / local * local;
    return ocl_launch(d, k, op, n, args, 1, &global, &local);
}

/* Operands of the same shape as out[0]: coalesced geometry from views v[0..nops). */
void ocl_geom_views(nbk_geom *g, int nops, const ocl_view *v)
{
    const int64_t *st[NBK_MAX_OPERANDS];
    int64_t off[NBK_MAX_OPERANDS];
    for (int k = 0; k < nops; k++) {
        st[k] = v[k].o->strides;
        off[k] = v[k].off;
    }
    ocl_geom_make(g, v[0].o->ndim, v[0].o->shape, nops, st, off);
}

nb_status ocl_half_move(int device, const char *op, const ocl_view *v, cl_mem tmp, int to_f32)
{
    const nb_operand *o = v->o;
    int64_t dense[NB_MAX_DIMS], n = 1;
    for (int k = o->ndim - 1; k >= 0; k--) {
        dense[k] = n;
        n *= o->shape[k];
    }
    if (n == 0)
        return NB_OK;
    nb_operand c = {NULL, 0, NB_DTYPE_F32, o->ndim, o->shape, dense};
    ocl_view pair[2];
    pair[to_f32 ? 0 : 1] = (ocl_view){tmp, 0, &c};
    pair[to_f32 ? 1 : 0] = *v;
    nbk_geom g;
    ocl_geom_views(&g, 2, pair);
    ocl_kid kid = !to_f32 ? OCL_K_copy_from_f32
                  : o->dtype == NB_DTYPE_F16 ? OCL_K_copy_from_f16 : OCL_K_copy_from_bf16;
    return ocl_run_elementwise(device, op, to_f32 ? NB_DTYPE_F32 : o->dtype, kid, 2, pair, &g, 0,
                               NULL);
}

/* ---- Scalars ---- */

ocl_scalar ocl_scalar_of(nb_dtype t, double x)
{
    ocl_scalar s;
    memset(&s, 0, sizeof s);
    switch (t) {
    case NB_DTYPE_F32: s.v.f = (float)x; s.size = 4; break;
    case NB_DTYPE_F64: s.v.d = x; s.size = 8; break;
    case NB_DTYPE_I32: s.v.i = (int32_t)(uint32_t)(uint64_t)nb_float_to_int64(x); s.size = 4; break;
    case NB_DTYPE_I64: s.v.l = nb_float_to_int64(x); s.size = 8; break;
    case NB_DTYPE_BOOL: s.v.u = x != 0; s.size = 1; break;
    case NB_DTYPE_F16:
    case NB_DTYPE_BF16: s.v.f = (float)x; s.size = 4; break;
    default: s.v.u = (uint8_t)(uint64_t)nb_float_to_int64(x); s.size = 1; break;
    }
    return s;
}

/* real_t in the kernels: double where the device has fp64, else float */
ocl_scalar ocl_real_of(int device, double x)
{
    ocl_dev *d = ocl_device(device, "real");
    return ocl_scalar_of(d && d->has_fp64 ? NB_DTYPE_F64 : NB_DTYPE_F32, x);
}



size_t ocl_pow2_floor(size_t x)
{
    size_t p = 1;
    while (p * 2 <= x)
        p *= 2;
    return p;
}

/* ---- The kernel table ---- */

size_t ocl_kernel_table(nb_kernel_desc *table, int with_f64)
{
#define OCL_FAMILY_(fam) {ocl_specs_##fam, ocl_n_specs_##fam},
    const struct {
        const ocl_spec *specs;
        size_t n;
    } families[] = {OCL_FAMILIES(OCL_FAMILY_)};
#undef OCL_FAMILY_
    size_t n = 0;
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
        for (size_t s = 0; s < families[f].n; s++)
            for (int t = 0; t < NB_DTYPE_COUNT; t++) {
                const ocl_spec *sp = &families[f].specs[s];
                if (!(sp->dtypes & (1u << t)) || (t == NB_DTYPE_F64 && !with_f64))
                    continue;
                if (n < OCL_MAX_TABLE)
                    table[n++] = (nb_kernel_desc){sp->op, (nb_dtype)t, sp->fn};
            }
    return n;
}
