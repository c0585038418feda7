/* opencl_index.c - gather and scatter_add along one dim. A bad index is found on the device
 * and reported at the next read or synchronize, so the queue never waits for a check. A
 * scatter_add of few long lines runs in chunks (see scatter_in_chunks); a 16-bit one adds into
 * a float32 copy of out, rounded back once (the cpu plugin's rounding). */
#include "opencl_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- gather, scatter_add ---- */

/* Launches gather (n_extra 0: len is the data stride) or scatter_add with the index flag as the
 * last argument. The kernel checks each index against size and records a bad one in the flag;
 * the next read or synchronize reports it (see ocl_flag). */
static nb_status run_checked(int device, const char *op, nb_dtype t, ocl_kid kid,
                             const ocl_view *v, const nbk_geom *g, int64_t len, int64_t size,
                             int64_t dim, int64_t ost, int scatter, int64_t ist, int64_t sst)
{
    ocl_dev *d = ocl_device(device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    cl_mem flag;
    ocl_lock(d);
    nb_status st = ocl_flag(d, op, &flag);
    if (st == NB_OK && scatter) {
        ocl_arg extra[] = {OCL_ARG(len), OCL_ARG(ost), OCL_ARG(ist), OCL_ARG(sst),
                           OCL_ARG(size), OCL_ARG(dim), OCL_ARG(flag)};
        st = ocl_run_elementwise(device, op, t, kid, 3, v, g, 7, extra);
    } else if (st == NB_OK) {
        ocl_arg extra[] = {OCL_ARG(len), OCL_ARG(size), OCL_ARG(dim), OCL_ARG(flag)};
        st = ocl_run_elementwise(device, op, t, kid, 3, v, g, 4, extra);
    }
    ocl_unlock(d);
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
    nb_status st = ocl_n_inputs(op, a, 2);
    if (st != NB_OK)
        return st;
    if (!a->out)
        return ERR(NB_NULL_ARGUMENT, "opencl gather: out is NULL");
    nb_operand out = as_1d(a->out), data = as_1d(&a->in[0]), idx = as_1d(&a->in[1]);
    ocl_view v[3];
    st = ocl_check(op, "out", &out, -1, &v[0]);
    if (st == NB_OK)
        st = ocl_check(op, "input", &data, (int)out.dtype, &v[1]);
    if (st == NB_OK)
        st = ocl_check(op, "index", &idx, NB_DTYPE_I64, &v[2]);
    if (st == NB_OK)
        st = ocl_same_shape(op, "index", &idx, &out);
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
    if (ocl_numel(out.ndim, out.shape) == 0)
        return NB_OK;
    int64_t dst[NB_MAX_DIMS];
    memcpy(dst, data.strides, sizeof(int64_t) * (size_t)data.ndim);
    dst[dim] = 0; /* the index supplies the coordinate along dim */
    const int64_t *strides[3] = {out.strides, dst, idx.strides};
    int64_t off[3] = {v[0].off, v[1].off, v[2].off};
    nbk_geom g;
    ocl_geom_make(&g, out.ndim, out.shape, 3, strides, off);
    int64_t dstride = data.strides[dim], size = data.shape[dim];
    return run_checked(a->device, op, out.dtype, OCL_K_gather, v, &g, dstride, size, dim, 0, 0, 0,
                       0);
}

/* One work-item per line leaves a scatter_add of few lines serial (a 1-d one is a single
 * loop). Then each line is cut into chunks, summed in parallel into rows of scratch, and the
 * rows are added to out in chunk order: deterministic, and within rounding of the serial sum.
 * Chosen when lines are too few to fill the device, the lines long, and the scratch (chunks x
 * lines x size along dim) small next to the work. NABLA_OPENCL_SCATTER=serial|chunks forces
 * one (chunks still needs the scratch to fit). Returns the chunk count, or 0 for serial. */
static int64_t scatter_chunks(const ocl_dev *d, int64_t lines, int64_t len, int64_t m,
                              size_t esize)
{
    const char *e = getenv("NABLA_OPENCL_SCATTER");
    int force = e && strcmp(e, "chunks") == 0;
    if ((e && strcmp(e, "serial") == 0) || m <= 0)
        return 0;
    int64_t want = 64 * (int64_t)d->compute_units; /* work-items that keep the device busy */
    if (!force && (lines >= want || len < 4096))
        return 0;
    int64_t s = force ? (len < want ? len : want) : want / lines;
    if (!force && s > len / 256) /* chunks of at least 256 indices */
        s = len / 256;
    if (!force && m > 0 && s > 4 * len / m) /* scratch work at most 4x the scatter's */
        s = 4 * len / m;
    int64_t cells, bytes;
    if (s < 2 || __builtin_mul_overflow(s, lines, &cells) || __builtin_mul_overflow(cells, m,
        &cells) || __builtin_mul_overflow(cells, (int64_t)esize, &bytes) ||
        bytes > ((int64_t)64 << 20) || (d->max_alloc && (uint64_t)bytes > d->max_alloc))
        return 0;
    return s;
}

static nb_status run_scatter_chunks(ocl_dev *d, nb_dtype t, const ocl_view *v, const nbk_geom *g,
                                    int64_t chunks, int64_t len, int64_t m, int64_t dim,
                                    int64_t ost, int64_t ist, int64_t sst)
{
    const char *op = "scatter_add";
    size_t wg1, wg2;
    cl_kernel k1 = ocl_kernel(d, t, OCL_K_scatter_add_chunks, op, &wg1);
    cl_kernel k2 = k1 ? ocl_kernel(d, t, OCL_K_scatter_add_combine, op, &wg2) : NULL;
    if (!k2)
        return NB_DEVICE_ERROR;
    int64_t per = (len + chunks - 1) / chunks;
    cl_mem part, flag;
    ocl_lock(d); /* the scratch stays ours until both passes are queued */
    size_t es = OCL_IS_HALF(t) ? 4 : ocl_dt_size[t]; /* a 16-bit scatter sums in float32 */
    nb_status st = ocl_tmp(d, op, 0, (size_t)(chunks * g->n * m) * es, &part);
    if (st == NB_OK)
        st = ocl_flag(d, op, &flag);
    if (st == NB_OK) {
        ocl_arg args[] = {OCL_ARG(part), OCL_ARG(v[1].mem), OCL_ARG(v[2].mem), {sizeof *g, g},
                          OCL_ARG(len), OCL_ARG(per), OCL_ARG(m), OCL_ARG(ist), OCL_ARG(sst),
                          OCL_ARG(dim), OCL_ARG(flag)};
        size_t global[2] = {(size_t)g->n, (size_t)chunks};
        st = ocl_launch(d, k1, op, 11, args, 2, global, NULL);
    }
    if (st == NB_OK) {
        ocl_arg args[] = {OCL_ARG(v[0].mem), OCL_ARG(part), {sizeof *g, g}, OCL_ARG(m),
                          OCL_ARG(chunks), OCL_ARG(ost)};
        size_t local = wg2 < 64 ? wg2 : 64;
        size_t global = ((size_t)(g->n * m) + local - 1) / local * local;
        st = ocl_launch(d, k2, op, 6, args, 1, &global, &local);
    }
    ocl_unlock(d);
    return st;
}

/* scatter_add over the lines of g, serial or in chunks; out is of dtype t, or the float32 copy
 * of a 16-bit out (dtype t, dense strides) */
static nb_status scatter_lines(ocl_dev *d, nb_dtype t, const ocl_view *v, const nbk_geom *g,
                               const nb_operand *out, const nb_operand *idx,
                               const nb_operand *src, int64_t dim)
{
    int64_t chunks = scatter_chunks(d, g->n, idx->shape[dim], out->shape[dim],
                                    OCL_IS_HALF(t) ? 4 : ocl_dt_size[t]);
    if (chunks)
        return run_scatter_chunks(d, t, v, g, chunks, idx->shape[dim], out->shape[dim], dim,
                                  out->strides[dim], idx->strides[dim], src->strides[dim]);
    return run_checked(d->index, "scatter_add", t, OCL_K_scatter_add, v, g, idx->shape[dim],
                       out->shape[dim], dim, out->strides[dim], 1, idx->strides[dim],
                       src->strides[dim]);
}

static nb_status k_scatter_add(const nb_kernel_args *a)
{
    const char *op = "scatter_add";
    nb_status st = ocl_n_inputs(op, a, 2);
    if (st != NB_OK)
        return st;
    if (!a->out)
        return ERR(NB_NULL_ARGUMENT, "opencl scatter_add: out is NULL");
    nb_operand out = as_1d(a->out), idx = as_1d(&a->in[0]), src = as_1d(&a->in[1]);
    ocl_view v[3];
    st = ocl_check(op, "out", &out, -1, &v[0]);
    if (st == NB_OK)
        st = ocl_check(op, "index", &idx, NB_DTYPE_I64, &v[1]);
    if (st == NB_OK)
        st = ocl_check(op, "source", &src, (int)out.dtype, &v[2]);
    if (st == NB_OK)
        st = ocl_same_shape(op, "source", &src, &idx);
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
    if (ocl_numel(idx.ndim, idx.shape) == 0)
        return NB_OK;
    /* one work-item per line along dim */
    int64_t lines[NB_MAX_DIMS];
    memcpy(lines, idx.shape, sizeof(int64_t) * (size_t)idx.ndim);
    lines[dim] = 1;
    const int64_t *strides[3] = {out.strides, idx.strides, src.strides};
    int64_t off[3] = {v[0].off, v[1].off, v[2].off};
    nbk_geom g;
    ocl_geom_make(&g, idx.ndim, lines, 3, strides, off);
    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    if (!OCL_IS_HALF(out.dtype))
        return scatter_lines(d, out.dtype, v, &g, &out, &idx, &src, dim);
    /* out's shape is an existing tensor's: 4 bytes an element cannot overflow */
    int64_t dense[NB_MAX_DIMS], n = 1;
    for (int k = out.ndim - 1; k >= 0; k--) {
        dense[k] = n;
        n *= out.shape[k];
    }
    nb_operand fout = out;
    fout.strides = dense;
    ocl_view fv[3] = {{NULL, 0, &fout}, v[1], v[2]};
    ocl_lock(d); /* the copy stays ours until the way back is queued (chunks use slot 0) */
    st = ocl_tmp(d, op, 1, (size_t)n * 4, &fv[0].mem);
    if (st == NB_OK)
        st = ocl_half_move(a->device, op, &v[0], fv[0].mem, 1);
    if (st == NB_OK) {
        strides[0] = dense;
        off[0] = 0;
        ocl_geom_make(&g, idx.ndim, lines, 3, strides, off);
        st = scatter_lines(d, out.dtype, fv, &g, &fout, &idx, &src, dim);
    }
    if (st == NB_OK)
        st = ocl_half_move(a->device, op, &v[0], fv[0].mem, 0);
    ocl_unlock(d);
    return st;
}


const ocl_spec ocl_specs_index[] = {
    {"gather", k_gather, OCL_ALL16},
    {"scatter_add", k_scatter_add, OCL_ALL16},
};
const size_t ocl_n_specs_index =
    sizeof ocl_specs_index / sizeof ocl_specs_index[0];
