/* opencl_reduce.c - sum/prod/max/min/argmax/argmin over any set of dims, split over several
 * work-groups when a few outputs reduce many elements. */
#include "opencl_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- Reductions ---- */

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
    ocl_view vo, vi;
    nb_status st = ocl_n_inputs(op, a, 1);
    if (st == NB_OK)
        st = ocl_check(op, "out", a->out, arg ? NB_DTYPE_I64 : -1, &vo);
    if (st == NB_OK)
        st = ocl_check(op, "input", &a->in[0], arg ? -1 : (int)a->out->dtype, &vi);
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
    r.n_out = ocl_numel((int32_t)r.nd_out, r.shape_out);
    r.n_red = ocl_numel((int32_t)r.nd_red, r.shape_red); /* 0 when a reduced dim is empty */
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
    size_t acc_size = pdt == NB_DTYPE_F32 || OCL_IS_HALF(pdt) ? 4 : 8; /* ACC in reduce.cl */
    size_t wg = ocl_pow2_floor(kwg < 256 ? kwg : 256);
    while (wg > 1 && (int64_t)wg / 2 >= r.n_red)
        wg /= 2;
    /* On a CPU runtime, many short reductions (a linear layer's bias gradient: 120 sums of 64)
     * run one work-item per output: a group's tree and barriers cost more there than the
     * elements, which one work-item walks in a few hundred cycles. */
    if (!d->is_gpu && r.n_red <= 1024 && r.n_out >= 4 * (int64_t)d->compute_units)
        wg = 1;
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
            size_t wg2 = ocl_pow2_floor(pwg < 256 ? pwg : 256);
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


const ocl_spec ocl_specs_reduce[] = {
    {"sum", k_sum, OCL_ALL16},
    {"prod", k_prod, OCL_ALL16},
    {"max", k_max, OCL_ALL16},
    {"min", k_min, OCL_ALL16},
    {"argmax", k_argmax, OCL_ALL16},
    {"argmin", k_argmin, OCL_ALL16},
};
const size_t ocl_n_specs_reduce =
    sizeof ocl_specs_reduce / sizeof ocl_specs_reduce[0];
