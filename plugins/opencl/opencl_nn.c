/* opencl_nn.c - tier-2 ops with their own kernels: relu_backward, softmax/log_softmax and their
 * backwards, the SGD and Adam steps. */
#include "opencl_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- Tier 2: relu_backward, softmax family, optimizer steps ---- */

/* out and n_in inputs of one float dtype and out's shape (inputs past n_req may be absent). */
/* half: the op also takes f16/bf16 (its kernel is in OCL_HALF_KERNELS) */
static nb_status check_float_ew(const char *op, const nb_kernel_args *a, int n_req, ocl_view *v,
                                int half)
{
    nb_status st = ocl_n_inputs(op, a, n_req);
    if (st == NB_OK)
        st = ocl_check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && a->out->dtype != NB_DTYPE_F32 && a->out->dtype != NB_DTYPE_F64 &&
        !(half && OCL_IS_HALF(a->out->dtype)))
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s, expected f32 or f64%s", op,
                 ocl_dt_name[a->out->dtype], half ? " (or f16, bf16)" : "");
    for (int k = 0; k < a->n_in && k < 3 && st == NB_OK; k++) {
        const char *what = ocl_input_name[k];
        st = ocl_check(op, what, &a->in[k], (int)a->out->dtype, &v[k + 1]);
        if (st == NB_OK)
            st = ocl_same_shape(op, what, &a->in[k], a->out);
    }
    return st;
}

static nb_status k_relu_backward(const nb_kernel_args *a)
{
    ocl_view v[4];
    nb_status st = check_float_ew("relu_backward", a, 2, v, 1);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 3, v);
    return ocl_run_elementwise(a->device, "relu_backward", a->out->dtype, OCL_K_relu_backward, 3, v,
                               &g, 0, NULL);
}

/* One work-group per row of the last dim; nops operands (out first) of out's shape. */
static nb_status run_rows(const nb_kernel_args *a, const char *op, ocl_kid kid, int nops,
                          int take_log)
{
    ocl_view v[4];
    nb_status st = check_float_ew(op, a, nops - 1, v, 1);
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
    ocl_geom_make(&g, o->ndim - 1, o->shape, nops, strides, off);
    if (g.n == 0 || len == 0)
        return NB_OK;
    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    size_t kwg;
    cl_kernel k = ocl_kernel(d, o->dtype, kid, op, &kwg);
    if (!k)
        return NB_DEVICE_ERROR;
    size_t wg = ocl_pow2_floor(kwg < 256 ? kwg : 256);
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
    /* lv holds T, the compute type: float for the 16-bit programs */
    args[n++] = (ocl_arg){wg * (OCL_IS_HALF(o->dtype) ? 4 : ocl_dt_size[o->dtype]), NULL};
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
    ocl_view v[4];
    nb_status st = check_float_ew("sgd_step", a, 1, v, 1);
    if (st != NB_OK)
        return st;
    cl_int has_buf = a->n_in >= 2, nesterov = a->i[0] != 0, first = a->i[1] != 0;
    if (!has_buf)
        v[2] = v[1]; /* never touched: a valid buffer for the unused argument */
    if (!has_buf && a->f[1] != 0)
        return ERR(NB_INVALID_ARGUMENT, "opencl sgd_step: momentum %g needs a momentum buffer "
                   "as input 1; only the gradient was given", a->f[1]);
    nbk_geom g;
    ocl_geom_views(&g, 3, v);
    nb_dtype t = a->out->dtype;
    ocl_scalar lr = ocl_scalar_of(t, a->f[0]), mom = ocl_scalar_of(t, a->f[1]),
               damp = ocl_scalar_of(t, a->f[2]), wd = ocl_scalar_of(t, a->f[3]);
    ocl_arg extra[] = {SARG(lr),           SARG(mom),       SARG(damp),  SARG(wd),
                       OCL_ARG(nesterov), OCL_ARG(first), OCL_ARG(has_buf)};
    return ocl_run_elementwise(a->device, "sgd_step", t, OCL_K_sgd_step, 3, v, &g, 7, extra);
}

static nb_status k_adam_step(const nb_kernel_args *a)
{
    ocl_view v[4];
    nb_status st = check_float_ew("adam_step", a, 3, v, 1);
    if (st != NB_OK)
        return st;
    if (a->i[0] < 1)
        return ERR(NB_INVALID_ARGUMENT, "opencl adam_step: step %lld, expected 1 or more",
                   (long long)a->i[0]);
    double lr = a->f[0], b1 = a->f[1], b2 = a->f[2];
    double bc1 = 1 - pow(b1, (double)a->i[0]), bc2 = 1 - pow(b2, (double)a->i[0]);
    nbk_geom g;
    ocl_geom_views(&g, 4, v);
    nb_dtype t = a->out->dtype;
    ocl_scalar s_lr = ocl_scalar_of(t, lr), s_b1 = ocl_scalar_of(t, b1),
               s_b2 = ocl_scalar_of(t, b2), s_eps = ocl_scalar_of(t, a->f[3]),
               s_wd = ocl_scalar_of(t, a->f[4]), s_step = ocl_scalar_of(t, lr / bc1),
               s_bc2 = ocl_scalar_of(t, sqrt(bc2));
    cl_int decoupled = a->i[1] != 0;
    ocl_arg extra[] = {SARG(s_lr), SARG(s_b1),   SARG(s_b2),  SARG(s_eps),
                       SARG(s_wd), SARG(s_step), SARG(s_bc2), OCL_ARG(decoupled)};
    return ocl_run_elementwise(a->device, "adam_step", t, OCL_K_adam_step, 4, v, &g, 8, extra);
}


const ocl_spec ocl_specs_nn[] = {
    {"relu_backward", k_relu_backward, OCL_FLT16},
    {"softmax", k_softmax, OCL_FLT16},
    {"log_softmax", k_log_softmax, OCL_FLT16},
    {"softmax_backward", k_softmax_backward, OCL_FLT16},
    {"log_softmax_backward", k_log_softmax_backward, OCL_FLT16},
    {"sgd_step", k_sgd_step, OCL_FLT16},
    {"adam_step", k_adam_step, OCL_FLT16},
};
const size_t ocl_n_specs_nn =
    sizeof ocl_specs_nn / sizeof ocl_specs_nn[0];
