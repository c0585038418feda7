/* test_ops_elementwise.c - tests core/tensor/ops_elementwise.c: binary, unary and scalar ops with
 * broadcasting and PyTorch 2.x type promotion, in-place forms, clamp/where, integer wrap-around,
 * and the checks all op families share (ops_internal.h): huge shapes, NULL chains, devices. */
#include "ops_helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- binary elementwise ---- */

typedef nb_tensor *(*binary_fn)(const nb_tensor *, const nb_tensor *);

static double ref_add(double a, double b) { return a + b; }
static double ref_sub(double a, double b) { return a - b; }
static double ref_mul(double a, double b) { return a * b; }
static double ref_div(double a, double b) { return a / b; }
static double ref_max(double a, double b) { return a > b ? a : b; }
static double ref_min(double a, double b) { return a < b ? a : b; }

static const struct {
    const char *name;
    binary_fn fn;
    double (*ref)(double, double);
} binaries[] = {
    {"add", nb_add, ref_add}, {"sub", nb_sub, ref_sub},     {"mul", nb_mul, ref_mul},
    {"div", nb_div, ref_div}, {"pow", nb_pow, pow},         {"maximum", nb_maximum, ref_max},
    {"minimum", nb_minimum, ref_min},
};

static void binary_ops_broadcast_column_with_row(void **state)
{
    (void)state;
    double a[3], b[4], want[12];
    fill_vals(a, 3, 0.5, 3, 1); /* positive: pow is defined */
    fill_vals(b, 4, -2, 2, 2);
    for (size_t o = 0; o < sizeof binaries / sizeof *binaries; o++) {
        for (nb_dtype dt = NB_DTYPE_F32; dt <= NB_DTYPE_F64; dt++) {
            nb_tensor *ta = mk(a, NB_SHAPE(3, 1), dt), *tb = mk(b, NB_SHAPE(1, 4), dt);
            nb_tensor *r = binaries[o].fn(ta, tb);
            expect_shape_dtype(r, NB_SHAPE(3, 4), dt);
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 4; j++) { /* the inputs as the dtype holds them */
                    double x = dt == NB_DTYPE_F32 ? f32(a[i]) : a[i];
                    double y = dt == NB_DTYPE_F32 ? f32(b[j]) : b[j];
                    want[i * 4 + j] = binaries[o].ref(x, y);
                }
            expect_close(r, want, 12, dt == NB_DTYPE_F32 ? RT32 : 1e-12, 0);
            nb_release(ta);
            nb_release(tb);
            nb_release(r);
        }
    }
}

static void binary_ops_broadcast_scalar_tensor_and_strided_inputs(void **state)
{
    (void)state;
    double s = 2.5, m[6], want[6];
    fill_vals(m, 6, -3, 3, 3);
    nb_tensor *ts = mk(&s, NB_SHAPE_SCALAR, NB_DTYPE_F64);
    nb_tensor *tm = mk(m, NB_SHAPE(2, 3), NB_DTYPE_F64);
    nb_tensor *r = nb_sub(ts, tm);
    expect_shape_dtype(r, NB_SHAPE(2, 3), NB_DTYPE_F64);
    for (int k = 0; k < 6; k++)
        want[k] = s - m[k];
    expect_close(r, want, 6, 0, 0);
    nb_release(r);
    /* a transposed operand: (3,2)^T + (2,3) */
    nb_tensor *t32 = mk(m, NB_SHAPE(3, 2), NB_DTYPE_F64), *tt = nb_t(t32);
    r = nb_mul(tt, tm);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            want[i * 3 + j] = m[j * 2 + i] * m[i * 3 + j];
    expect_close(r, want, 6, 0, 0);
    nb_release(r);
    /* 0-d with 0-d stays 0-d */
    r = nb_add(ts, ts);
    expect_shape_dtype(r, NB_SHAPE_SCALAR, NB_DTYPE_F64);
    expect_close(r, (double[]){5}, 1, 0, 0);
    nb_release(r);
    nb_release(t32);
    nb_release(tt);
    nb_release(ts);
    nb_release(tm);
}

static void maximum_and_minimum_propagate_nan(void **state)
{
    (void)state;
    double a[3] = {NAN, 1, 2}, b[3] = {0, NAN, 1};
    nb_tensor *ta = mk(a, NB_SHAPE(3), NB_DTYPE_F32), *tb = mk(b, NB_SHAPE(3), NB_DTYPE_F32);
    nb_tensor *mx = nb_maximum(ta, tb), *mn = nb_minimum(ta, tb);
    expect_close(mx, (double[]){NAN, NAN, 2}, 3, 0, 0);
    expect_close(mn, (double[]){NAN, NAN, 1}, 3, 0, 0);
    nb_release(ta);
    nb_release(tb);
    nb_release(mx);
    nb_release(mn);
}

static void binary_shape_mismatch_names_both_shapes(void **state)
{
    (void)state;
    nb_tensor *a = nb_zeros(NB_SHAPE(2, 3), (nb_opts){0}), *b = nb_zeros(NB_SHAPE(4), (nb_opts){0});
    assert_null(nb_add(a, b));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("add: shapes [2, 3] and [4] cannot be broadcast (size 3 vs 4 at dim 1)");
    nb_clear_error();
    assert_null(nb_eq(a, b));
    NB_ASSERT_ERROR_HAS("eq: shapes");
    nb_release(a);
    nb_release(b);
}

/* ---- type promotion ---- */

static void promotion_matches_pytorch(void **state)
{
    (void)state;
    double a[3] = {7, -3, 4}, b[3] = {2, 2, -8};
    struct {
        binary_fn fn;
        nb_dtype da, db, want;
    } cases[] = {
        {nb_add, NB_DTYPE_I32, NB_DTYPE_F32, NB_DTYPE_F32},
        {nb_add, NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_I64},
        {nb_mul, NB_DTYPE_U8, NB_DTYPE_BOOL, NB_DTYPE_U8},
        {nb_add, NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_F64},
        {nb_div, NB_DTYPE_I64, NB_DTYPE_I64, NB_DTYPE_F32}, /* true division */
        {nb_div, NB_DTYPE_I32, NB_DTYPE_F64, NB_DTYPE_F64},
        {nb_sub, NB_DTYPE_I64, NB_DTYPE_F32, NB_DTYPE_F32},
        {nb_maximum, NB_DTYPE_I32, NB_DTYPE_I32, NB_DTYPE_I32},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        double x[3], y[3];
        for (int i = 0; i < 3; i++) { /* u8 and bool hold only what they can */
            x[i] = cases[k].da == NB_DTYPE_U8 ? fabs(a[i]) : a[i];
            y[i] = cases[k].db == NB_DTYPE_BOOL ? (b[i] > 0) : b[i];
        }
        nb_tensor *ta = mk(x, NB_SHAPE(3), cases[k].da), *tb = mk(y, NB_SHAPE(3), cases[k].db);
        nb_tensor *r = cases[k].fn(ta, tb);
        expect_shape_dtype(r, NB_SHAPE(3), cases[k].want);
        double want[3];
        for (int i = 0; i < 3; i++)
            want[i] = cases[k].fn == nb_add ? x[i] + y[i]
                    : cases[k].fn == nb_sub ? x[i] - y[i]
                    : cases[k].fn == nb_mul ? x[i] * y[i]
                    : cases[k].fn == nb_div ? x[i] / y[i]
                                            : fmax(x[i], y[i]);
        expect_close(r, want, 3, RT32, 0);
        nb_release(ta);
        nb_release(tb);
        nb_release(r);
    }
}

static void comparisons_give_bool_and_promote_their_inputs(void **state)
{
    (void)state;
    double a[4] = {1, 2.5, -1, 3}, b[4] = {1, 2, 0, 4};
    nb_tensor *ta = mk(a, NB_SHAPE(4), NB_DTYPE_F32), *tb = mk(b, NB_SHAPE(4), NB_DTYPE_I64);
    binary_fn fns[6] = {nb_eq, nb_ne, nb_lt, nb_le, nb_gt, nb_ge};
    for (int f = 0; f < 6; f++) {
        nb_tensor *r = fns[f](ta, tb);
        expect_shape_dtype(r, NB_SHAPE(4), NB_DTYPE_BOOL);
        double want[4];
        for (int i = 0; i < 4; i++) {
            double x = a[i], y = b[i];
            want[i] = f == 0 ? x == y : f == 1 ? x != y : f == 2 ? x < y
                    : f == 3 ? x <= y : f == 4 ? x > y : x >= y;
        }
        expect_close(r, want, 4, 0, 0);
        nb_release(r);
    }
    /* scalar forms */
    nb_tensor *(*sfns[6])(const nb_tensor *, double) = {nb_eq_scalar, nb_ne_scalar,
                                                         nb_lt_scalar, nb_le_scalar,
                                                         nb_gt_scalar, nb_ge_scalar};
    for (int f = 0; f < 6; f++) {
        nb_tensor *r = sfns[f](tb, 1.5); /* an int64 tensor against a fractional scalar */
        expect_shape_dtype(r, NB_SHAPE(4), NB_DTYPE_BOOL);
        double want[4];
        for (int i = 0; i < 4; i++) {
            double x = b[i], y = 1.5;
            want[i] = f == 0 ? x == y : f == 1 ? x != y : f == 2 ? x < y
                    : f == 3 ? x <= y : f == 4 ? x > y : x >= y;
        }
        expect_close(r, want, 4, 0, 0);
        nb_release(r);
    }
    /* bool against bool */
    nb_tensor *p = nb_gt_scalar(ta, 0), *q = nb_lt_scalar(tb, 2), *e = nb_eq(p, q);
    expect_shape_dtype(e, NB_SHAPE(4), NB_DTYPE_BOOL);
    expect_close(e, (double[]){1, 0, 0, 0}, 4, 0, 0); /* {T,T,F,T} == {T,F,T,F} */
    nb_release(p);
    nb_release(q);
    nb_release(e);
    nb_release(ta);
    nb_release(tb);
}

static void logical_ops_take_any_dtype(void **state)
{
    (void)state;
    double a[4] = {0, 0, 2, -1}, b[4] = {0, 3, 0, 0.5};
    nb_tensor *ta = mk(a, NB_SHAPE(4), NB_DTYPE_I32), *tb = mk(b, NB_SHAPE(4), NB_DTYPE_F32);
    nb_tensor *andr = nb_logical_and(ta, tb), *orr = nb_logical_or(ta, tb);
    nb_tensor *xorr = nb_logical_xor(ta, tb), *notr = nb_logical_not(tb);
    expect_shape_dtype(andr, NB_SHAPE(4), NB_DTYPE_BOOL);
    expect_shape_dtype(notr, NB_SHAPE(4), NB_DTYPE_BOOL);
    expect_close(andr, (double[]){0, 0, 0, 1}, 4, 0, 0);
    expect_close(orr, (double[]){0, 1, 1, 1}, 4, 0, 0);
    expect_close(xorr, (double[]){0, 1, 1, 0}, 4, 0, 0);
    expect_close(notr, (double[]){1, 0, 1, 0}, 4, 0, 0);
    nb_tensor *r[] = {ta, tb, andr, orr, xorr, notr};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

/* ---- unary ---- */

static double ref_neg(double x) { return -x; }
static double ref_rsqrt(double x) { return 1 / sqrt(x); }
static double ref_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double ref_relu(double x) { return x > 0 ? x : 0; }
static double ref_sign(double x) { return (x > 0) - (x < 0); }

static void unary_ops_match_libm(void **state)
{
    (void)state;
    struct {
        const char *name;
        nb_tensor *(*fn)(const nb_tensor *);
        nb_status (*fn_)(nb_tensor *);
        double (*ref)(double);
        bool positive;
    } ops[] = {
        {"neg", nb_neg, nb_neg_, ref_neg, false},      {"abs", nb_abs, nb_abs_, fabs, false},
        {"exp", nb_exp, nb_exp_, exp, false},          {"log", nb_log, nb_log_, log, true},
        {"sqrt", nb_sqrt, nb_sqrt_, sqrt, true},
        {"rsqrt", nb_rsqrt, nb_rsqrt_, ref_rsqrt, true},
        {"sin", nb_sin, nb_sin_, sin, false},          {"cos", nb_cos, nb_cos_, cos, false},
        {"tanh", nb_tanh, nb_tanh_, tanh, false},
        {"sigmoid", nb_sigmoid, nb_sigmoid_, ref_sigmoid, false},
        {"relu", nb_relu, nb_relu_, ref_relu, false},  {"sign", nb_sign, nb_sign_, ref_sign, false},
        {"floor", nb_floor, nb_floor_, floor, false},  {"ceil", nb_ceil, nb_ceil_, ceil, false},
        {"round", nb_round, nb_round_, nearbyint, false}, /* half to even, like torch */
    };
    enum { N = 17 };
    double v[N], want[N];
    fill_vals(v, N, -4, 4, 4);
    v[0] = 2.5, v[1] = -0.5, v[2] = 0, v[3] = 3.5, v[4] = -2.5; /* rounding ties */
    for (size_t o = 0; o < sizeof ops / sizeof *ops; o++) {
        double x[N];
        for (int k = 0; k < N; k++)
            x[k] = ops[o].positive ? fabs(v[k]) + 0.25 : v[k];
        for (nb_dtype dt = NB_DTYPE_F32; dt <= NB_DTYPE_F64; dt++) {
            nb_tensor *t = mk(x, NB_SHAPE(N), dt), *r = ops[o].fn(t);
            if (!r)
                fail_msg("%s: %s", ops[o].name, nb_last_error());
            expect_shape_dtype(r, NB_SHAPE(N), dt);
            for (int k = 0; k < N; k++)
                want[k] = ops[o].ref(dt == NB_DTYPE_F32 ? f32(x[k]) : x[k]);
            expect_close(r, want, N, dt == NB_DTYPE_F32 ? 2e-6 : 1e-12, 1e-7);
            /* the in-place form writes the same values into t */
            NB_ASSERT_OK(ops[o].fn_(t));
            expect_close(t, want, N, dt == NB_DTYPE_F32 ? 2e-6 : 1e-12, 1e-7);
            nb_release(t);
            nb_release(r);
        }
    }
}

static void unary_ops_on_integers_follow_torch_dtypes(void **state)
{
    (void)state;
    double v[4] = {1, 4, 9, -2};
    nb_tensor *t = mk(v, NB_SHAPE(4), NB_DTYPE_I64);
    nb_tensor *n = nb_neg(t), *a = nb_abs(t), *s = nb_sqrt(t), *e = nb_exp(t);
    expect_shape_dtype(n, NB_SHAPE(4), NB_DTYPE_I64); /* stays integral */
    expect_shape_dtype(a, NB_SHAPE(4), NB_DTYPE_I64);
    expect_shape_dtype(s, NB_SHAPE(4), NB_DTYPE_F32); /* goes to the default float */
    expect_shape_dtype(e, NB_SHAPE(4), NB_DTYPE_F32);
    expect_close(n, (double[]){-1, -4, -9, 2}, 4, 0, 0);
    expect_close(a, (double[]){1, 4, 9, 2}, 4, 0, 0);
    expect_close(s, (double[]){1, 2, 3, NAN}, 4, RT32, 0);
    /* an integer tensor cannot hold exp's result in place */
    assert_int_equal(nb_exp_(t), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("result type float32 can't be cast to the desired output type int64");
    nb_release(t);
    nb_release(n);
    nb_release(a);
    nb_release(s);
    nb_release(e);
}

/* torch.floor/ceil/round(torch.tensor([-7, 0, 5], dtype=torch.int32)) -> the same values,
 * int32 (likewise int64 and uint8); on a bool tensor torch raises "not implemented for 'Bool'".
 * A copy in the core, so a device with no integer rounding kernel (opencl) gives it too. */
static void floor_ceil_round_on_integers_are_copies(void **state)
{
    (void)state;
    nb_dtype dts[] = {NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_U8};
    for (size_t k = 0; k < 3; k++) {
        bool u = dts[k] == NB_DTYPE_U8;
        double v[3] = {u ? 7 : -7, 0, 5};
        nb_tensor *t = mk(v, NB_SHAPE(3), dts[k]);
        nb_tensor *r[3] = {nb_floor(t), nb_ceil(t), nb_round(t)};
        for (int j = 0; j < 3; j++) {
            expect_shape_dtype(r[j], NB_SHAPE(3), dts[k]);
            expect_close(r[j], v, 3, 0, 0);
        }
        NB_ASSERT_OK(nb_fill_(r[0], 1)); /* a copy: t keeps its values */
        expect_close(t, v, 3, 0, 0);
        NB_ASSERT_OK(nb_floor_(t));
        expect_close(t, v, 3, 0, 0);
        for (int j = 0; j < 3; j++)
            nb_release(r[j]);
        nb_release(t);
    }
    nb_tensor *b = mk((double[]){1, 0}, NB_SHAPE(2), NB_DTYPE_BOOL);
    assert_null(nb_round(b));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("bool");
    nb_clear_error();
    nb_release(b);
}

/* ---- scalar forms ---- */

static void scalar_ops_keep_integer_dtype_for_integral_scalars(void **state)
{
    (void)state;
    double v[3] = {1, 2, 3};
    nb_tensor *i = mk(v, NB_SHAPE(3), NB_DTYPE_I32), *b = mk(v, NB_SHAPE(3), NB_DTYPE_BOOL);
    struct {
        nb_tensor *r;
        nb_dtype want;
        double w[3];
    } cases[] = {
        {nb_add_scalar(i, 2), NB_DTYPE_I32, {3, 4, 5}},
        {nb_mul_scalar(i, 2.5), NB_DTYPE_F32, {2.5, 5, 7.5}},
        {nb_sub_scalar(i, 1), NB_DTYPE_I32, {0, 1, 2}},
        {nb_div_scalar(i, 2), NB_DTYPE_F32, {0.5, 1, 1.5}}, /* true division */
        {nb_pow_scalar(i, 2), NB_DTYPE_I32, {1, 4, 9}},
        {nb_rsub_scalar(i, 10), NB_DTYPE_I32, {9, 8, 7}},
        {nb_rdiv_scalar(i, 6), NB_DTYPE_F32, {6, 3, 2}},
        {nb_maximum_scalar(i, 2), NB_DTYPE_I32, {2, 2, 3}},
        {nb_minimum_scalar(i, 2), NB_DTYPE_I32, {1, 2, 2}},
        {nb_add_scalar(b, 1), NB_DTYPE_I64, {2, 2, 2}}, /* torch: bool + int -> int64 */
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        expect_shape_dtype(cases[k].r, NB_SHAPE(3), cases[k].want);
        expect_close(cases[k].r, cases[k].w, 3, RT32, 0);
        nb_release(cases[k].r);
    }
    nb_release(i);
    nb_release(b);
}

static void scalar_ops_on_floats(void **state)
{
    (void)state;
    double v[4];
    fill_vals(v, 4, 0.5, 2, 5);
    nb_tensor *t = mk(v, NB_SHAPE(2, 2), NB_DTYPE_F64);
    nb_tensor *p = nb_pow_scalar(t, -1.5), *rp = nb_rdiv_scalar(t, 3), *d = nb_div_scalar(t, 4);
    double w1[4], w2[4], w3[4];
    for (int k = 0; k < 4; k++)
        w1[k] = pow(v[k], -1.5), w2[k] = 3 / v[k], w3[k] = v[k] / 4;
    expect_close(p, w1, 4, 1e-12, 0);
    expect_close(rp, w2, 4, 1e-12, 0);
    expect_close(d, w3, 4, 1e-12, 0);
    nb_release(p);
    nb_release(rp);
    nb_release(d);
    nb_release(t);
}

/* ---- in place ---- */

static void in_place_ops_write_into_their_first_argument(void **state)
{
    (void)state;
    double a[6], b[3], want[6];
    fill_vals(a, 6, -1, 1, 6);
    fill_vals(b, 3, -1, 1, 7);
    nb_tensor *ta = mk(a, NB_SHAPE(2, 3), NB_DTYPE_F64), *tb = mk(b, NB_SHAPE(3), NB_DTYPE_F64);
    int64_t v0 = nb_tensor_version(ta);
    NB_ASSERT_OK(nb_mul_(ta, tb)); /* b broadcasts into a */
    for (int k = 0; k < 6; k++)
        want[k] = a[k] * b[k % 3];
    expect_close(ta, want, 6, 0, 0);
    assert_true(nb_tensor_version(ta) > v0);
    NB_ASSERT_OK(nb_add_scalar_(ta, 1));
    NB_ASSERT_OK(nb_sub_scalar_(ta, 0.5));
    for (int k = 0; k < 6; k++)
        want[k] += 0.5;
    expect_close(ta, want, 6, 1e-15, 0);
    NB_ASSERT_OK(nb_add_scaled_(ta, tb, -2)); /* a += -2 b */
    for (int k = 0; k < 6; k++)
        want[k] -= 2 * b[k % 3];
    expect_close(ta, want, 6, 1e-15, 1e-15);
    /* an int tensor accepts int results; a float tensor accepts int operands */
    nb_tensor *ti = mk(b, NB_SHAPE(3), NB_DTYPE_I32);
    NB_ASSERT_OK(nb_add_(tb, ti));
    NB_ASSERT_OK(nb_fill_(ti, 4));
    NB_ASSERT_OK(nb_mul_scalar_(ti, 3));
    expect_shape_dtype(ti, NB_SHAPE(3), NB_DTYPE_I32);
    expect_close(ti, (double[]){12, 12, 12}, 3, 0, 0);
    NB_ASSERT_OK(nb_zero_(ta));
    expect_close(ta, (double[6]){0}, 6, 0, 0);
    nb_release(ta);
    nb_release(tb);
    nb_release(ti);
}

static void in_place_errors_for_shape_and_dtype(void **state)
{
    (void)state;
    nb_tensor *a = nb_zeros(NB_SHAPE(3), (nb_opts){0}), *b = nb_zeros(NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *i = nb_zeros(NB_SHAPE(3), (nb_opts){NB_DTYPE_I32});
    int64_t v0 = nb_tensor_version(a);
    assert_int_equal(nb_add_(a, b), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("output with shape [3] doesn't match the broadcast shape [2, 3]");
    assert_int_equal(nb_tensor_version(a), v0); /* nothing written */
    nb_clear_error();
    assert_int_equal(nb_add_(i, a), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("result type float32 can't be cast to the desired output type int32");
    nb_clear_error();
    assert_int_equal(nb_mul_scalar_(i, 0.5), NB_DTYPE_UNSUPPORTED);
    nb_clear_error();
    assert_int_equal(nb_div_(i, i), NB_DTYPE_UNSUPPORTED); /* true division gives float */
    nb_clear_error();
    assert_int_equal(nb_add_(NULL, a), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_exp_(NULL), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_fill_(NULL, 1), NB_NULL_ARGUMENT);
    nb_release(a);
    nb_release(b);
    nb_release(i);
}

/* ---- clamp, where ---- */

static void clamp_with_min_max_or_both(void **state)
{
    (void)state;
    double v[7] = {-3, -1, -0.5, 0, 0.5, 1, 3}, want[7];
    nb_tensor *t = mk(v, NB_SHAPE(7), NB_DTYPE_F32);
    nb_tensor *lo = nb_clamp(t, -1, NAN), *hi = nb_clamp(t, NAN, 0.5), *both = nb_clamp(t, -1, 0.5);
    for (int k = 0; k < 7; k++)
        want[k] = fmax(v[k], -1);
    expect_close(lo, want, 7, 0, 0);
    for (int k = 0; k < 7; k++)
        want[k] = fmin(v[k], 0.5);
    expect_close(hi, want, 7, 0, 0);
    for (int k = 0; k < 7; k++)
        want[k] = fmin(fmax(v[k], -1), 0.5);
    expect_close(both, want, 7, 0, 0);
    NB_ASSERT_OK(nb_clamp_(t, -1, 0.5));
    expect_close(t, want, 7, 0, 0);
    assert_null(nb_clamp(t, NAN, NAN));
    NB_ASSERT_ERROR_HAS("at least one of min or max");
    nb_clear_error();
    nb_tensor *ti = mk(v, NB_SHAPE(7), NB_DTYPE_I64), *ci = nb_clamp(ti, -2, 2);
    expect_shape_dtype(ci, NB_SHAPE(7), NB_DTYPE_I64);
    expect_close(ci, (double[]){-2, -1, 0, 0, 0, 1, 2}, 7, 0, 0);
    nb_tensor *r[] = {t, lo, hi, both, ti, ci};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

static void where_broadcasts_and_promotes(void **state)
{
    (void)state;
    double c[3] = {1, 0, 1}, a[2] = {10, 20}, b = -1;
    nb_tensor *tc = mk(c, NB_SHAPE(1, 3), NB_DTYPE_BOOL), *ta = mk(a, NB_SHAPE(2, 1), NB_DTYPE_I64);
    nb_tensor *tb = mk(&b, NB_SHAPE_SCALAR, NB_DTYPE_F32);
    nb_tensor *r = nb_where(tc, ta, tb);
    expect_shape_dtype(r, NB_SHAPE(2, 3), NB_DTYPE_F32);
    expect_close(r, (double[]){10, -1, 10, 20, -1, 20}, 6, 0, 0);
    nb_tensor *notbool = mk(c, NB_SHAPE(1, 3), NB_DTYPE_F32);
    assert_null(nb_where(notbool, ta, tb));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("condition must be bool, got float32");
    nb_clear_error();
    nb_tensor *wide = nb_zeros(NB_SHAPE(3, 3), (nb_opts){NB_DTYPE_BOOL}); /* vs (2, 1) */
    assert_null(nb_where(wide, ta, tb));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_tensor *rel[] = {tc, ta, tb, r, notbool, wide};
    for (size_t k = 0; k < 6; k++)
        nb_release(rel[k]);
}

/* Result shapes computed from two valid inputs can overflow too: broadcasting [2^32, 1] with
 * [1, 2^32], or concatenating 64 views of 2^58 elements. */
static void result_shapes_that_overflow_are_errors(void **state)
{
    (void)state;
    const int64_t big = (int64_t)1 << 32, huge = (int64_t)1 << 58;
    nb_tensor *one = nb_ones(NB_SHAPE(1, 1), (nb_opts){0});
    nb_tensor *col = nb_expand(one, NB_SHAPE(big, 1)), *row = nb_expand(one, NB_SHAPE(1, big));
    assert_null(nb_add(col, row));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("add: shape [4294967296, 4294967296] is too large");
    nb_clear_error();
    nb_tensor *c3 = nb_expand(one, NB_SHAPE(big, 1, 1, 1)), *r3 = nb_expand(one, NB_SHAPE(1, big, 1, 1));
    assert_null(nb_matmul(c3, r3)); /* batch dims [2^32, 2^32] */
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_tensor *v = nb_ones(NB_SHAPE(1), (nb_opts){0}), *h = nb_expand(v, NB_SHAPE(huge));
    nb_tensor *parts[64];
    for (int k = 0; k < 64; k++)
        parts[k] = h;
    assert_null(nb_cat(parts, 64, 0)); /* 64 * 2^58 */
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("cat: size");
    nb_clear_error();
    nb_tensor *r[] = {one, col, row, c3, r3, v, h};
    for (size_t k = 0; k < sizeof r / sizeof *r; k++)
        nb_release(r[k]);
}

static void read_i64(const nb_tensor *t, int64_t *out, int64_t n)
{
    assert_non_null(t);
    assert_int_equal(nb_tensor_numel(t), n);
    nb_tensor *c = nb_to_dtype(t, NB_DTYPE_I64);
    NB_ASSERT_OK(nb_tensor_copy_to_host(c, out, (size_t)n * sizeof *out));
    nb_release(c);
}

/* Integer overflow wraps around modulo 2^bits, as in PyTorch (and without UB: the kernels compute
 * in unsigned arithmetic; UBSan reports a signed overflow otherwise). */
static void integer_arithmetic_wraps_around_like_torch(void **state)
{
    (void)state;
    int64_t got[4];
    nb_tensor *a64 = nb_from_data((int64_t[]){INT64_MAX, INT64_MIN, (int64_t)1 << 62, -3},
                                  NB_SHAPE(4), (nb_opts){NB_DTYPE_I64});
    nb_tensor *two = nb_from_data((int64_t[]){2, -1, 4, 5}, NB_SHAPE(4), (nb_opts){NB_DTYPE_I64});
    nb_tensor *m = nb_mul(a64, two), *ad = nb_add(a64, a64), *sb = nb_sub(two, a64);
    read_i64(m, got, 4);
    assert_true(got[0] == -2 && got[1] == INT64_MIN && got[2] == 0 && got[3] == -15);
    read_i64(ad, got, 4);
    assert_true(got[0] == -2 && got[1] == 0 && got[2] == INT64_MIN && got[3] == -6);
    read_i64(sb, got, 4);
    assert_true(got[0] == INT64_MIN + 3 && got[1] == INT64_MAX && got[3] == 8);
    nb_tensor *ng = nb_neg(a64), *ab = nb_abs(a64), *ms = nb_mul_scalar(a64, 4);
    nb_tensor *as = nb_add_scalar(a64, 1), *rs = nb_rsub_scalar(a64, -2);
    read_i64(ng, got, 4);
    assert_true(got[0] == -INT64_MAX && got[1] == INT64_MIN && got[3] == 3);
    read_i64(ab, got, 4);
    assert_true(got[0] == INT64_MAX && got[1] == INT64_MIN && got[3] == 3);
    read_i64(ms, got, 4);
    assert_true(got[0] == -4 && got[1] == 0 && got[2] == 0 && got[3] == -12);
    read_i64(as, got, 4);
    assert_true(got[0] == INT64_MIN && got[1] == INT64_MIN + 1);
    read_i64(rs, got, 4);
    assert_true(got[0] == INT64_MAX && got[1] == INT64_MAX - 1); /* -2 - x */
    nb_tensor *s64 = nb_sum(a64, NULL, 0, false); /* MAX + MIN + 2^62 - 3 */
    read_i64(s64, got, 1);
    assert_true(got[0] == ((int64_t)1 << 62) - 4);
    nb_tensor *p64 = nb_prod(a64, NULL, 0, false);
    assert_non_null(p64);

    nb_tensor *a32 = nb_from_data((int32_t[]){INT32_MAX, INT32_MIN}, NB_SHAPE(2),
                                  (nb_opts){NB_DTYPE_I32});
    nb_tensor *one = nb_from_data((int32_t[]){1, 1}, NB_SHAPE(2), (nb_opts){NB_DTYPE_I32});
    nb_tensor *p32 = nb_add(a32, one), *d32 = nb_sub(a32, one), *n32 = nb_neg(a32);
    nb_tensor *q32 = nb_mul(a32, a32), *b32 = nb_abs(a32);
    assert_int_equal(nb_tensor_dtype(p32), NB_DTYPE_I32);
    read_i64(p32, got, 2);
    assert_true(got[0] == INT32_MIN && got[1] == INT32_MIN + 1);
    read_i64(d32, got, 2);
    assert_true(got[0] == INT32_MAX - 1 && got[1] == INT32_MAX);
    read_i64(n32, got, 2);
    assert_true(got[0] == -INT32_MAX && got[1] == INT32_MIN);
    read_i64(q32, got, 2);
    assert_true(got[0] == 1 && got[1] == 0);
    read_i64(b32, got, 2);
    assert_true(got[0] == INT32_MAX && got[1] == INT32_MIN);
    /* int32 accumulation in scatter_add wraps too */
    nb_tensor *z = nb_zeros(NB_SHAPE(1), (nb_opts){NB_DTYPE_I32});
    nb_tensor *idx = nb_zeros(NB_SHAPE(2), (nb_opts){NB_DTYPE_I64});
    nb_tensor *src = nb_from_data((int32_t[]){INT32_MAX, 2}, NB_SHAPE(2), (nb_opts){NB_DTYPE_I32});
    nb_tensor *sc = nb_scatter_add(z, 0, idx, src);
    read_i64(sc, got, 1);
    assert_true(got[0] == INT32_MIN + 1);
    nb_tensor *u = nb_from_data((uint8_t[]){200, 0}, NB_SHAPE(2), (nb_opts){NB_DTYPE_U8});
    nb_tensor *uu = nb_add(u, u), *un = nb_neg(u);
    read_i64(uu, got, 2);
    assert_true(got[0] == 144 && got[1] == 0);
    read_i64(un, got, 2);
    assert_true(got[0] == 56 && got[1] == 0);
    nb_tensor *r[] = {a64, two, m, ad, sb, ng, ab, ms, as, rs, s64, p64, a32, one, p32, d32, n32,
                      q32, b32, z, idx, src, sc, u, uu, un};
    for (size_t k = 0; k < sizeof r / sizeof *r; k++)
        nb_release(r[k]);
}

/* ---- NULL chains ---- */

static void null_input_propagates_and_keeps_the_first_error(void **state)
{
    (void)state;
    nb_tensor *b = nb_ones(NB_SHAPE(2), (nb_opts){0});
    nb_tensor *r = nb_sum(nb_mul(NULL, b), NULL, 0, false);
    assert_null(r);
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    NB_ASSERT_ERROR_HAS("mul: argument 1 is NULL");
    nb_clear_error();
    /* a real error deep in a chain survives every later step */
    nb_tensor *m = nb_ones(NB_SHAPE(3, 3), (nb_opts){0});
    nb_scope_begin();
    r = nb_mean(nb_relu(nb_add_scalar(nb_exp(nb_matmul(b, m)), 1)), NULL, 0, false);
    nb_scope_end();
    assert_null(r);
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("matmul: shapes [2] and [3, 3]");
    nb_clear_error();
    nb_tensor *t = nb_t(NULL);
    assert_null(t);
    NB_ASSERT_ERROR_HAS("NULL");
    nb_release(b);
    nb_release(m);
}

/* ---- devices ---- */

static char mini_path[1200]; /* the two-device test plugin from tests/badplugins */

static void ops_refuse_operands_on_different_devices(void **state)
{
    (void)state;
    if (!mini_path[0] || access(mini_path, R_OK) != 0)
        skip();
    NB_ASSERT_OK(nb_plugin_load(mini_path));
    nb_tensor *c = nb_ones(NB_SHAPE(2, 2), (nb_opts){0});
    nb_tensor *m = nb_ones(NB_SHAPE(2, 2), (nb_opts){.device = "mini:1"});
    nb_tensor *b = nb_ones(NB_SHAPE(2, 2), (nb_opts){NB_DTYPE_BOOL});
    nb_tensor *cm[2] = {c, m};
    nb_tensor *r[] = {nb_add(c, m), nb_mul(m, c), nb_eq(c, m), nb_matmul(c, m), nb_mm(m, c),
                      nb_where(b, c, m), nb_cat(cm, 2, 0), nb_addmm(m, c, c, 1, 1)};
    for (size_t k = 0; k < sizeof r / sizeof *r; k++) {
        if (r[k])
            fail_msg("case %zu mixed cpu and mini:1 without an error", k);
    }
    assert_int_equal(nb_last_status(), NB_DEVICE_MISMATCH);
    nb_clear_error();
    assert_null(nb_sub(c, m));
    NB_ASSERT_ERROR_HAS("sub: expected all tensors on the same device, got cpu and mini:1");
    nb_release(c);
    nb_release(m);
    nb_release(b);
}

/* ---- type promotion as PyTorch 2.x (values from torch 2.15, snippets in the comments) ---- */

static nb_tensor *full_of(nb_shape s, double v, nb_dtype dt)
{
    nb_tensor *t = nb_full(s, v, (nb_opts){dt});
    assert_non_null(t);
    return t;
}

static void zero_dim_tensors_do_not_widen_their_category(void **state)
{
    (void)state;
    struct {
        nb_dtype a, b; /* a is [2], b is 0-d */
        nb_dtype want;
    } rows[] = {
        {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_F32},  /* torch.ones(2) + torch.tensor(2., dtype=float64) -> float32 */
        {NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_I32},  /* int32 [2] + torch.tensor(3) -> int32 */
        {NB_DTYPE_I32, NB_DTYPE_F64, NB_DTYPE_F64},  /* int32 [2] + float64 0-d -> float64 */
        {NB_DTYPE_I32, NB_DTYPE_F32, NB_DTYPE_F32},  /* int32 [2] + torch.tensor(1.5) -> float32 */
        {NB_DTYPE_BOOL, NB_DTYPE_I64, NB_DTYPE_I64}, /* torch.tensor([True]) + torch.tensor(3) -> int64 */
        {NB_DTYPE_F32, NB_DTYPE_I64, NB_DTYPE_F32},  /* float32 [2] + int64 0-d -> float32 */
    };
    for (size_t k = 0; k < sizeof rows / sizeof *rows; k++) {
        nb_tensor *a = full_of(NB_SHAPE(2), 1, rows[k].a), *b = full_of(NB_SHAPE_SCALAR, 1, rows[k].b);
        nb_tensor *r1 = nb_add(a, b), *r2 = nb_mul(b, a);
        assert_non_null(r1);
        assert_non_null(r2);
        if (nb_tensor_dtype(r1) != rows[k].want || nb_tensor_dtype(r2) != rows[k].want)
            fail_msg("row %zu: %s and 0-d %s give %s / %s, expected %s", k,
                     nb_dtype_name(rows[k].a), nb_dtype_name(rows[k].b),
                     nb_dtype_name(nb_tensor_dtype(r1)), nb_dtype_name(nb_tensor_dtype(r2)),
                     nb_dtype_name(rows[k].want));
        nb_release(a);
        nb_release(b);
        nb_release(r1);
        nb_release(r2);
    }
    /* both 0-d: the usual promotion. torch.tensor(2., dtype=float64) + torch.tensor(1.) -> float64 */
    nb_tensor *a = full_of(NB_SHAPE_SCALAR, 2, NB_DTYPE_F64), *b = full_of(NB_SHAPE_SCALAR, 1, NB_DTYPE_F32);
    nb_tensor *r = nb_add(a, b);
    assert_int_equal(nb_tensor_dtype(r), NB_DTYPE_F64);
    nb_release(r);
    /* where follows the same rule: torch.where(c, torch.ones(2), float64 0-d) -> float32 */
    nb_tensor *c = full_of(NB_SHAPE(2), 1, NB_DTYPE_BOOL), *f = full_of(NB_SHAPE(2), 1, NB_DTYPE_F32);
    r = nb_where(c, f, a);
    assert_int_equal(nb_tensor_dtype(r), NB_DTYPE_F32);
    nb_release(r);
    nb_release(c);
    nb_release(f);
    nb_release(a);
    nb_release(b);
}

static void in_place_results_are_cast_to_the_destination_when_allowed(void **state)
{
    (void)state;
    /* torch.ones(2).add_(torch.ones(2, dtype=torch.float64)) -> float32 [2, 2] */
    nb_tensor *f32 = full_of(NB_SHAPE(2), 1, NB_DTYPE_F32), *f64 = full_of(NB_SHAPE(2), 1, NB_DTYPE_F64);
    NB_ASSERT_OK(nb_add_(f32, f64));
    assert_int_equal(nb_tensor_dtype(f32), NB_DTYPE_F32);
    double v[2];
    nb_tensor *d = nb_to_dtype(f32, NB_DTYPE_F64);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, v, sizeof v));
    assert_true(v[0] == 2 && v[1] == 2);
    nb_release(d);
    /* torch.ones(2, dtype=torch.int32).add_(torch.ones(2, dtype=torch.int64)) -> int32 [2, 2] */
    nb_tensor *i32 = full_of(NB_SHAPE(2), 1, NB_DTYPE_I32), *i64 = full_of(NB_SHAPE(2), 1, NB_DTYPE_I64);
    NB_ASSERT_OK(nb_add_(i32, i64));
    assert_int_equal(nb_tensor_dtype(i32), NB_DTYPE_I32);
    /* int32.add_(float32) -> RuntimeError: result type Float can't be cast to the desired output
     * type Int; bool.add_(int32) likewise */
    assert_int_equal(nb_add_(i32, f32), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("can't be cast to the desired output type");
    nb_tensor *b = full_of(NB_SHAPE(2), 1, NB_DTYPE_BOOL);
    assert_int_equal(nb_add_(b, i32), NB_DTYPE_UNSUPPORTED);
    nb_tensor *r[] = {f32, f64, i32, i64, b};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
}

static void bool_arithmetic_gives_bool(void **state)
{
    (void)state;
    /* b = torch.tensor([True, False]); c = torch.tensor([True, True])
     * b + c -> bool [True, True]; b * c -> bool [True, False]; torch.maximum -> [True, True];
     * torch.minimum -> [True, False]; b - c -> RuntimeError (use ^ or logical_xor) */
    const double bv[2] = {1, 0}, cv[2] = {1, 1};
    nb_tensor *b = mk(bv, NB_SHAPE(2), NB_DTYPE_BOOL), *c = mk(cv, NB_SHAPE(2), NB_DTYPE_BOOL);
    struct {
        nb_tensor *r;
        double want[2];
    } rows[] = {{nb_add(b, c), {1, 1}}, {nb_mul(b, c), {1, 0}},
                {nb_maximum(b, c), {1, 1}}, {nb_minimum(b, c), {1, 0}}};
    for (size_t k = 0; k < 4; k++) {
        assert_non_null(rows[k].r);
        assert_int_equal(nb_tensor_dtype(rows[k].r), NB_DTYPE_BOOL);
        uint8_t got[2];
        NB_ASSERT_OK(nb_tensor_copy_to_host(rows[k].r, got, 2));
        assert_true(got[0] == rows[k].want[0] && got[1] == rows[k].want[1]);
        nb_release(rows[k].r);
    }
    assert_null(nb_sub(b, c));
    NB_ASSERT_ERROR_HAS("logical_xor");
    nb_clear_error();
    NB_ASSERT_OK(nb_mul_(b, c)); /* b.mul_(c) stays bool */
    nb_release(b);
    nb_release(c);
}

static void integers_to_negative_integer_powers_are_refused(void **state)
{
    (void)state;
    /* torch.tensor([2, 3]) ** -1 -> RuntimeError: Integers to negative integer powers are not
     * allowed.; ** 2 -> int64 [4, 9]; ** -0.5 -> float32 */
    const double v[2] = {2, 3};
    nb_tensor *x = mk(v, NB_SHAPE(2), NB_DTYPE_I64);
    assert_null(nb_pow_scalar(x, -1));
    NB_ASSERT_ERROR_HAS("negative integer powers are not allowed");
    nb_clear_error();
    assert_int_equal(nb_pow_scalar_(x, -2), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_tensor *sq = nb_pow_scalar(x, 2), *rt = nb_pow_scalar(x, -0.5);
    assert_int_equal(nb_tensor_dtype(sq), NB_DTYPE_I64);
    assert_true(nb_dtype_is_float(nb_tensor_dtype(rt)));
    nb_release(sq);
    nb_release(rt);
    nb_release(x);
}

/* An integer tensor compared with a scalar gives the same answers as through float64 (the
 * scalar may be fractional or past the dtype's range) without a float64 copy of the input:
 * the peak is the bool output, not 9 bytes an element. */
static void integer_scalar_comparisons_make_no_float64_copy(void **state)
{
    (void)state;
    const int64_t n = 1 << 16;
    nb_tensor *x = nb_arange(0, (double)n, 1, (nb_opts){.dtype = NB_DTYPE_I32});
    nb_tensor *u = nb_full(NB_SHAPE(n), 200, (nb_opts){.dtype = NB_DTYPE_U8});
    int64_t base = nb_memory_allocated();
    nb_memory_reset_peak();
    nb_tensor *lt = nb_lt_scalar(x, 2.5), *ge = nb_ge_scalar(u, 300), *eq = nb_eq_scalar(u, 200);
    assert_true(nb_memory_peak() - base <= 3 * n + 4096);
    double v;
    nb_tensor *s1 = nb_sum(lt, NULL, 0, false), *s2 = nb_sum(ge, NULL, 0, false);
    nb_tensor *s3 = nb_sum(eq, NULL, 0, false);
    NB_ASSERT_OK(nb_item(s1, &v));
    assert_true(v == 3); /* 0, 1, 2 < 2.5 */
    NB_ASSERT_OK(nb_item(s2, &v));
    assert_true(v == 0); /* no uint8 is >= 300 */
    NB_ASSERT_OK(nb_item(s3, &v));
    assert_true(v == (double)n);
    nb_tensor *all[] = {s1, s2, s3, lt, ge, eq, x, u};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        nb_release(all[k]);
}

int main(void)
{
    const char *dir = getenv("NABLA_BADPLUGIN_DIR");
#ifdef BADPLUGIN_DIR
    if (!dir || !*dir)
        dir = BADPLUGIN_DIR;
#endif
    if (dir && *dir)
        snprintf(mini_path, sizeof mini_path, "%s/badplugin_mini.so", dir);
    const struct CMUnitTest tests[] = {
        NB_TEST(binary_ops_broadcast_column_with_row),
        NB_TEST(binary_ops_broadcast_scalar_tensor_and_strided_inputs),
        NB_TEST(maximum_and_minimum_propagate_nan),
        NB_TEST(binary_shape_mismatch_names_both_shapes),
        NB_TEST(promotion_matches_pytorch),
        NB_TEST(comparisons_give_bool_and_promote_their_inputs),
        NB_TEST(logical_ops_take_any_dtype),
        NB_TEST(unary_ops_match_libm),
        NB_TEST(unary_ops_on_integers_follow_torch_dtypes),
        NB_TEST(floor_ceil_round_on_integers_are_copies),
        NB_TEST(scalar_ops_keep_integer_dtype_for_integral_scalars),
        NB_TEST(scalar_ops_on_floats),
        NB_TEST(in_place_ops_write_into_their_first_argument),
        NB_TEST(in_place_errors_for_shape_and_dtype),
        NB_TEST(clamp_with_min_max_or_both),
        NB_TEST(where_broadcasts_and_promotes),
        NB_TEST(integer_arithmetic_wraps_around_like_torch),
        NB_TEST(result_shapes_that_overflow_are_errors),
        NB_TEST(null_input_propagates_and_keeps_the_first_error),
        NB_TEST(ops_refuse_operands_on_different_devices),
        NB_TEST(zero_dim_tensors_do_not_widen_their_category),
        NB_TEST(in_place_results_are_cast_to_the_destination_when_allowed),
        NB_TEST(bool_arithmetic_gives_bool),
        NB_TEST(integers_to_negative_integer_powers_are_refused),
        NB_TEST(integer_scalar_comparisons_make_no_float64_copy),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
