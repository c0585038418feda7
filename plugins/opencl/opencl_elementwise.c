/* opencl_elementwise.c - the elementwise ops of the opencl plugin: fill, copy with cast, arange,
 * unary/scalar/binary arithmetic, comparisons, logical ops, where, and the random fills. */
#include "opencl_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- fill, copy, arange ---- */

static nb_status k_fill(const nb_kernel_args *a)
{
    ocl_view v[1];
    nb_status st = ocl_n_inputs("fill", a, 0);
    if (st == NB_OK)
        st = ocl_check("fill", "out", a->out, -1, &v[0]);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 1, v);
    ocl_scalar s = ocl_scalar_of(a->out->dtype, a->f[0]);
    if (OCL_IS_HALF(a->out->dtype)) { /* the stored bits, rounded once from the double */
        s.v.h = a->out->dtype == NB_DTYPE_F16 ? nb_f64_to_f16(a->f[0]) : nb_f64_to_bf16(a->f[0]);
        s.size = 2;
    }
    ocl_arg extra[] = {SARG(s)};
    return ocl_run_elementwise(a->device, "fill", a->out->dtype, OCL_K_fill, 1, v, &g, 1, extra);
}

static nb_status k_copy(const nb_kernel_args *a)
{
    ocl_view v[2];
    nb_status st = ocl_n_inputs("copy", a, 1);
    if (st == NB_OK)
        st = ocl_check("copy", "out", a->out, -1, &v[0]);
    if (st == NB_OK)
        st = ocl_check("copy", "input", &a->in[0], -1, &v[1]);
    if (st == NB_OK)
        st = ocl_same_shape("copy", "input", &a->in[0], a->out);
    if (st != NB_OK)
        return st;
    static const ocl_kid from[NB_DTYPE_COUNT] = {
        [NB_DTYPE_F32] = OCL_K_copy_from_f32,   [NB_DTYPE_F64] = OCL_K_copy_from_f64,
        [NB_DTYPE_I32] = OCL_K_copy_from_i32,   [NB_DTYPE_I64] = OCL_K_copy_from_i64,
        [NB_DTYPE_BOOL] = OCL_K_copy_from_bool, [NB_DTYPE_U8] = OCL_K_copy_from_u8,
        [NB_DTYPE_F16] = OCL_K_copy_from_f16,   [NB_DTYPE_BF16] = OCL_K_copy_from_bf16};
    ocl_kid kid = from[a->in[0].dtype];
    if (OCL_IS_HALF(a->out->dtype) && a->in[0].dtype == a->out->dtype)
        kid = OCL_K_copy_bits;
    if (a->in[0].dtype == NB_DTYPE_F64 && a->out->dtype != NB_DTYPE_F64) {
        ocl_dev *d = ocl_device(a->device, "copy");
        if (d && !d->has_fp64)
            return ERR(NB_DTYPE_UNSUPPORTED, "opencl copy: f64 input needs cl_khr_fp64, which "
                       "%s does not report", d->name);
    }
    nbk_geom g;
    ocl_geom_views(&g, 2, v);
    return ocl_run_elementwise(a->device, "copy", a->out->dtype, kid, 2, v, &g, 0, NULL);
}

/* True when x is a whole number that int64 holds, into *out. */
static int whole(double x, cl_long *out)
{
    if (!(x >= -0x1p63 && x < 0x1p63) || x != floor(x))
        return 0;
    *out = (cl_long)x;
    return 1;
}

static nb_status k_arange(const nb_kernel_args *a)
{
    ocl_view v[1];
    nb_status st = ocl_n_inputs("arange", a, 0);
    if (st == NB_OK)
        st = ocl_check("arange", "out", a->out, -1, &v[0]);
    if (st != NB_OK)
        return st;
    if (a->out->ndim != 1)
        return ERR(NB_SHAPE_MISMATCH, "opencl arange: out has %d dims, expected 1",
                   (int)a->out->ndim);
    /* no coalescing here: element k's value depends on k, and g keeps row-major order */
    nbk_geom g;
    ocl_geom_views(&g, 1, v);
    ocl_scalar s0 = ocl_real_of(a->device, a->f[0]), s1 = ocl_real_of(a->device, a->f[1]);
    cl_long i0 = 0, i1 = 0;
    cl_int integral = whole(a->f[0], &i0) && whole(a->f[1], &i1);
    ocl_dev *d = ocl_device(a->device, "arange");
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    if (!d->has_fp64 && a->out->dtype == NB_DTYPE_F32) {
        /* the kernel takes start and step as float pairs (value + error) */
        cl_float sh = (cl_float)a->f[0], sl = (cl_float)(a->f[0] - sh), th = (cl_float)a->f[1],
                 tl = (cl_float)(a->f[1] - th);
        ocl_arg extra[] = {OCL_ARG(sh), OCL_ARG(sl), OCL_ARG(th), OCL_ARG(tl), OCL_ARG(i0),
                           OCL_ARG(i1), OCL_ARG(integral)};
        return ocl_run_elementwise(a->device, "arange", a->out->dtype, OCL_K_arange, 1, v, &g, 7,
                                   extra);
    }
    ocl_arg extra[] = {SARG(s0), SARG(s1), OCL_ARG(i0), OCL_ARG(i1), OCL_ARG(integral)};
    return ocl_run_elementwise(a->device, "arange", a->out->dtype, OCL_K_arange, 1, v, &g, 5,
                               extra);
}

/* ---- unary, ocl_scalar, binary, comparisons, logical, where ---- */

/* out and in[0..n_in) checked; inputs must have in_dt (or any when < 0) and out's shape. */
static nb_status check_ew(const char *op, const nb_kernel_args *a, int n_in, int out_dt,
                          int in_dt, ocl_view *v)
{
    nb_status st = ocl_n_inputs(op, a, n_in);
    if (st == NB_OK)
        st = ocl_check(op, "out", a->out, out_dt, &v[0]);
    for (int k = 0; k < n_in && st == NB_OK; k++) {
        const char *what = ocl_input_name[k];
        st = ocl_check(op, what, &a->in[k], k == 0 ? in_dt : (int)a->in[0].dtype, &v[k + 1]);
        if (st == NB_OK)
            st = ocl_same_shape(op, what, &a->in[k], a->out);
    }
    return st;
}

/* check_ew for ops whose output has the inputs' dtype (unary, scalar, binary). */
static nb_status check_ew_same_dtype(const char *op, const nb_kernel_args *a, int n_in,
                                     ocl_view *v)
{
    nb_status st = check_ew(op, a, n_in, -1, -1, v);
    if (st == NB_OK && a->out->dtype != a->in[0].dtype)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s but the input%s %s; expected the "
                 "same dtype", op, ocl_dt_name[a->out->dtype], n_in > 1 ? "s are" : " is",
                 ocl_dt_name[a->in[0].dtype]);
    return st;
}

static nb_status run_unary(const nb_kernel_args *a, const char *op, int code)
{
    ocl_view v[2];
    nb_status st = check_ew_same_dtype(op, a, 1, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 2, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return ocl_run_elementwise(a->device, op, a->out->dtype, OCL_K_unary, 2, v, &g, 1, extra);
}

static nb_status run_scalar(const nb_kernel_args *a, const char *op, int code)
{
    ocl_view v[2];
    nb_status st = check_ew_same_dtype(op, a, 1, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 2, v);
    cl_int c = code, flags = code == NBK_CLAMP ? (a->i[0] ? 1 : 0) | (a->i[1] ? 2 : 0) : 0;
    ocl_scalar s = ocl_scalar_of(a->out->dtype, a->f[0]),
               s2 = ocl_scalar_of(a->out->dtype, a->f[1]);
    /* integer clamp bounds rounded inward; a NaN bound leaves integers alone, as on the cpu */
    cl_long lo = nb_float_to_int64(ceil(a->f[0])), hi = nb_float_to_int64(floor(a->f[1]));
    if (code == NBK_CLAMP && !OCL_IS_FLOAT(a->out->dtype)) {
        if (isnan(a->f[0]))
            flags &= ~1;
        if (isnan(a->f[1]))
            flags &= ~2;
    }
    ocl_arg extra[] = {OCL_ARG(c), SARG(s), SARG(s2), OCL_ARG(flags), OCL_ARG(lo), OCL_ARG(hi)};
    return ocl_run_elementwise(a->device, op, a->out->dtype, OCL_K_unary_scalar, 2, v, &g, 6,
                               extra);
}

static nb_status run_binary(const nb_kernel_args *a, const char *op, int code)
{
    ocl_view v[3];
    nb_status st = check_ew_same_dtype(op, a, 2, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 3, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return ocl_run_elementwise(a->device, op, a->out->dtype, OCL_K_binary, 3, v, &g, 1, extra);
}

static nb_status run_compare(const nb_kernel_args *a, const char *op, int code)
{
    ocl_view v[3];
    nb_status st = check_ew(op, a, 2, NB_DTYPE_BOOL, -1, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 3, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return ocl_run_elementwise(a->device, op, a->in[0].dtype, OCL_K_compare, 3, v, &g, 1, extra);
}

/* For an integer x: turns "x op s" into "x op' *t" with *t whole, or into a constant result
 * (returned, 0 or 1; -1 when the comparison stays). Exact for every long, with no float math
 * on the device: x < 2.5 is x < 3, x <= 2.5 is x <= 2, x == 2.5 is false. */
static cl_int int_threshold(cl_int code, double s, cl_int *op, cl_long *t)
{
    const double big = 0x1p63;
    if (isnan(s))
        return code == NBK_NE;
    if (code == NBK_EQ || code == NBK_NE) {
        cl_long w;
        if (!whole(s, &w))
            return code == NBK_NE;
        *t = w;
        return -1;
    }
    /* lt and ge compare with ceil(s), le and gt with floor(s) */
    double r = (code == NBK_LT || code == NBK_GE) ? ceil(s) : floor(s);
    if (r >= big) /* above every long */
        return code == NBK_LT || code == NBK_LE;
    if (r < -big) /* below every long */
        return code == NBK_GT || code == NBK_GE;
    *t = (cl_long)r;
    *op = code;
    return -1;
}

static nb_status run_compare_scalar(const nb_kernel_args *a, const char *op, int code)
{
    ocl_view v[2];
    nb_status st = check_ew(op, a, 1, NB_DTYPE_BOOL, -1, v);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 2, v);
    cl_int c = code;
    nb_dtype t = a->in[0].dtype;
    int is_float = OCL_IS_FLOAT(t);
    ocl_scalar s = ocl_scalar_of(t, a->f[0]); /* read by the float kernels only */
    /* a 16-bit tensor compares with the scalar rounded to its dtype, as torch does
     * (bf16 1.0 == 1.001 is true); arithmetic takes the scalar in float (opmath) */
    if (t == NB_DTYPE_F16)
        s.v.f = nb_f16_to_f32(nb_f64_to_f16(a->f[0]));
    else if (t == NB_DTYPE_BF16)
        s.v.f = nb_bf16_to_f32(nb_f64_to_bf16(a->f[0]));
    cl_long th = 0;
    cl_int konst = is_float ? -1 : int_threshold(code, a->f[0], &c, &th);
    ocl_arg extra[] = {OCL_ARG(c), SARG(s), OCL_ARG(th), OCL_ARG(konst)};
    return ocl_run_elementwise(a->device, op, t, OCL_K_compare_scalar, 2, v, &g, 4, extra);
}

static nb_status run_logical(const nb_kernel_args *a, const char *op, int code)
{
    int n_in = code == NBK_NOT ? 1 : 2;
    ocl_view v[3];
    nb_status st = check_ew(op, a, n_in, NB_DTYPE_BOOL, -1, v);
    if (st != NB_OK)
        return st;
    if (n_in == 1)
        v[2] = v[1];
    nbk_geom g;
    ocl_geom_views(&g, 3, v);
    cl_int c = code;
    ocl_arg extra[] = {OCL_ARG(c)};
    return ocl_run_elementwise(a->device, op, a->in[0].dtype, OCL_K_logical, 3, v, &g, 1, extra);
}

static nb_status k_where(const nb_kernel_args *a)
{
    ocl_view v[4];
    nb_status st = ocl_n_inputs("where", a, 3);
    if (st == NB_OK)
        st = ocl_check("where", "out", a->out, -1, &v[0]);
    if (st == NB_OK && a->in[0].dtype != NB_DTYPE_BOOL && a->in[0].dtype != NB_DTYPE_U8)
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl where: the condition is %s, expected bool",
                 ocl_dtype_str(a->in[0].dtype));
    static const char *const what[3] = {"condition", "input 1", "input 2"};
    for (int k = 0; k < 3 && st == NB_OK; k++) {
        st = ocl_check("where", what[k], &a->in[k], k == 0 ? -1 : (int)a->out->dtype, &v[k + 1]);
        if (st == NB_OK)
            st = ocl_same_shape("where", what[k], &a->in[k], a->out);
    }
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 4, v);
    return ocl_run_elementwise(a->device, "where", a->out->dtype, OCL_K_where, 4, v, &g, 0, NULL);
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

/* ---- random ---- */

static nb_status run_random(const nb_kernel_args *a, const char *op, ocl_kid kid)
{
    ocl_view v[1];
    nb_status st = ocl_n_inputs(op, a, 0);
    if (st == NB_OK)
        st = ocl_check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && !OCL_IS_FLOAT(a->out->dtype))
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl %s: out is %s, expected f32, f64, f16 or bf16", op,
                 ocl_dt_name[a->out->dtype]);
    if (st != NB_OK)
        return st;
    nbk_geom g;
    ocl_geom_views(&g, 1, v);
    cl_ulong seed = (cl_ulong)a->i[0], offset = (cl_ulong)a->i[1];
    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    if (!d->has_fp64) {
        /* the kernel works in float pairs: each parameter split into value + error */
        double p0 = a->f[0], p1 = kid == OCL_K_random_uniform ? a->f[1] - a->f[0] : a->f[1];
        cl_float h0 = (cl_float)p0, l0 = (cl_float)(p0 - h0), h1 = (cl_float)p1,
                 l1 = (cl_float)(p1 - h1);
        ocl_arg extra[] = {OCL_ARG(seed), OCL_ARG(offset), OCL_ARG(h0), OCL_ARG(l0),
                           OCL_ARG(h1), OCL_ARG(l1)};
        return ocl_run_elementwise(a->device, op, a->out->dtype, kid, 1, v, &g, 6, extra);
    }
    ocl_scalar p0 = ocl_real_of(a->device, a->f[0]), p1 = ocl_real_of(a->device, a->f[1]);
    ocl_arg extra[] = {OCL_ARG(seed), OCL_ARG(offset), SARG(p0), SARG(p1)};
    return ocl_run_elementwise(a->device, op, a->out->dtype, kid, 1, v, &g, 4, extra);
}

static nb_status k_random_uniform(const nb_kernel_args *a)
{
    return run_random(a, "random_uniform", OCL_K_random_uniform);
}

static nb_status k_random_normal(const nb_kernel_args *a)
{
    return run_random(a, "random_normal", OCL_K_random_normal);
}


/* Integer arithmetic takes uint8 too (wrapping, as the cpu plugin and PyTorch); pow, pow_scalar
 * and rpow_scalar run on integers by squaring (nbk_ipow in elementwise.cl). */
#define OCL_ARITH16 (OCL_NUM16 | OCL_B(U8))

const ocl_spec ocl_specs_elementwise[] = {
    {"fill", k_fill, OCL_ALL16},
    {"copy", k_copy, OCL_ALL16},
    {"arange", k_arange, OCL_ALL16},
    {"neg", k_neg, OCL_ARITH16},
    {"abs", k_abs, OCL_ARITH16},
    {"relu", k_relu, OCL_ARITH16},
    {"sign", k_sign, OCL_ARITH16},
    {"exp", k_exp, OCL_FLT16},
    {"log", k_log, OCL_FLT16},
    {"sqrt", k_sqrt, OCL_FLT16},
    {"rsqrt", k_rsqrt, OCL_FLT16},
    {"sin", k_sin, OCL_FLT16},
    {"cos", k_cos, OCL_FLT16},
    {"tanh", k_tanh, OCL_FLT16},
    {"sigmoid", k_sigmoid, OCL_FLT16},
    {"floor", k_floor, OCL_FLT16},
    {"ceil", k_ceil, OCL_FLT16},
    {"round", k_round, OCL_FLT16},
    {"logical_not", k_logical_not, OCL_ALL16},
    {"add_scalar", k_add_scalar, OCL_ARITH16},
    {"mul_scalar", k_mul_scalar, OCL_ARITH16},
    {"rsub_scalar", k_rsub_scalar, OCL_ARITH16},
    {"clamp", k_clamp, OCL_ARITH16},
    {"div_scalar", k_div_scalar, OCL_FLT16},
    {"rdiv_scalar", k_rdiv_scalar, OCL_FLT16},
    {"pow_scalar", k_pow_scalar, OCL_ARITH16},
    {"rpow_scalar", k_rpow_scalar, OCL_ARITH16},
    {"eq_scalar", k_eq_scalar, OCL_ALL16},
    {"ne_scalar", k_ne_scalar, OCL_ALL16},
    {"lt_scalar", k_lt_scalar, OCL_ALL16},
    {"le_scalar", k_le_scalar, OCL_ALL16},
    {"gt_scalar", k_gt_scalar, OCL_ALL16},
    {"ge_scalar", k_ge_scalar, OCL_ALL16},
    {"add", k_add, OCL_ARITH16},
    {"sub", k_sub, OCL_ARITH16},
    {"mul", k_mul, OCL_ARITH16},
    {"maximum", k_maximum, OCL_ARITH16},
    {"minimum", k_minimum, OCL_ARITH16},
    {"div", k_div, OCL_FLT16},
    {"pow", k_pow, OCL_ARITH16},
    {"eq", k_eq, OCL_ALL16},
    {"ne", k_ne, OCL_ALL16},
    {"lt", k_lt, OCL_ALL16},
    {"le", k_le, OCL_ALL16},
    {"gt", k_gt, OCL_ALL16},
    {"ge", k_ge, OCL_ALL16},
    {"logical_and", k_logical_and, OCL_ALL16},
    {"logical_or", k_logical_or, OCL_ALL16},
    {"logical_xor", k_logical_xor, OCL_ALL16},
    {"where", k_where, OCL_ALL16},
    {"random_uniform", k_random_uniform, OCL_FLT16},
    {"random_normal", k_random_normal, OCL_FLT16},
};
const size_t ocl_n_specs_elementwise =
    sizeof ocl_specs_elementwise / sizeof ocl_specs_elementwise[0];
