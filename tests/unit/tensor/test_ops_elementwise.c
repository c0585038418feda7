/* test_ops.c - tests core/tensor/ops.c: elementwise ops with broadcasting and PyTorch's type promotion,
 * scalar and in-place forms, clamp/where, reductions, matmul family, indexing, cat/stack, each
 * checked against a plain C computation here, and the errors (shapes, dtypes, NULL chains). */
#include "nb_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- helpers ---- */

/* A tensor of `dtype` holding v (given as doubles). */
static nb_tensor *mk(const double *v, nb_shape s, nb_dtype dtype)
{
    nb_tensor *d = nb_from_data(v, s, (nb_opts){NB_DTYPE_F64});
    assert_non_null(d);
    nb_tensor *t = nb_to_dtype(d, dtype);
    nb_release(d);
    assert_non_null(t);
    return t;
}

/* Deterministic values in [lo, hi). */
static void fill_vals(double *v, int64_t n, double lo, double hi, int seed)
{
    for (int64_t k = 0; k < n; k++) {
        double u = fmod(fabs(sin((double)(k + 1) * 12.9898 + seed * 78.233)) * 43758.5453, 1.0);
        v[k] = lo + (hi - lo) * u;
    }
}

static double *read_all(const nb_tensor *t, int64_t *n)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    *n = nb_tensor_numel(t);
    double *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    assert_non_null(d);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, v, (size_t)*n * sizeof *v));
    nb_release(d);
    return v;
}

/* |got - want| <= atol + rtol * |want| element by element (NaN matches NaN). */
static void expect_close(const nb_tensor *t, const double *want, int64_t n, double rtol,
                         double atol)
{
    int64_t got_n;
    double *got = read_all(t, &got_n);
    if (got_n != n)
        fail_msg("%lld elements, expected %lld", (long long)got_n, (long long)n);
    for (int64_t k = 0; k < n; k++) {
        if (isnan(want[k]) && isnan(got[k]))
            continue;
        if (!(fabs(got[k] - want[k]) <= atol + rtol * fabs(want[k])))
            fail_msg("element %lld: got %.9g, expected %.9g", (long long)k, got[k], want[k]);
    }
    free(got);
}

static void expect_shape_dtype(const nb_tensor *t, nb_shape s, nb_dtype dt)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    nb_shape g = nb_tensor_shape(t);
    assert_int_equal(g.ndim, s.ndim);
    for (int32_t d = 0; d < s.ndim; d++)
        assert_int_equal(g.dims[d], s.dims[d]);
    if (nb_tensor_dtype(t) != dt)
        fail_msg("dtype %s, expected %s", nb_dtype_name(nb_tensor_dtype(t)), nb_dtype_name(dt));
}

/* A double rounded to float32, out of line: GCC 12.2's SLP vectoriser at -O2 was seen to drop
 * an inline (float) cast in a loop of this file (want[] kept the double value). */
static __attribute__((noinline)) double f32(double v) { return (float)v; }

/* float32 tolerances: a few ulps of the inputs' magnitude */
#define RT32 1e-5
#define AT32 1e-6

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

/* ---- reductions ---- */

/* Reference reduction of a (2, 3, 4) array over the dims set in mask (keepdim layout). */
static void ref_reduce(const double *x, const bool mask[3], int kind, double *out, int64_t *n_out)
{
    int64_t shp[3] = {2, 3, 4}, os[3];
    for (int d = 0; d < 3; d++)
        os[d] = mask[d] ? 1 : shp[d];
    *n_out = os[0] * os[1] * os[2];
    for (int64_t o = 0; o < *n_out; o++) {
        int64_t oi[3] = {o / (os[1] * os[2]), (o / os[2]) % os[1], o % os[2]};
        double acc = kind == 2 ? 1 : kind == 3 ? -INFINITY : kind == 4 ? INFINITY : 0;
        int64_t cnt = 0;
        for (int64_t i = 0; i < 24; i++) {
            int64_t ii[3] = {i / 12, (i / 4) % 3, i % 4};
            bool in = true;
            for (int d = 0; d < 3; d++)
                in &= mask[d] || ii[d] == oi[d];
            if (!in)
                continue;
            cnt++;
            double v = x[i];
            acc = kind == 0 || kind == 1 ? acc + v : kind == 2 ? acc * v
                : kind == 3 ? fmax(acc, v) : fmin(acc, v);
        }
        out[o] = kind == 1 ? acc / (double)cnt : acc;
    }
}

static void reductions_over_all_dims_some_dims_and_keepdim(void **state)
{
    (void)state;
    double x[24], want[24];
    fill_vals(x, 24, 0.5, 1.5, 8);
    nb_tensor *t = mk(x, NB_SHAPE(2, 3, 4), NB_DTYPE_F64);
    nb_tensor *(*fns[5])(const nb_tensor *, const int32_t *, int32_t, bool) = {
        nb_sum, nb_mean, nb_prod, nb_amax, nb_amin};
    int32_t dim_sets[][2] = {{0, 0}, {1, 0}, {0, 2}, {-1, 0}, {2, 0}};
    int32_t nds[] = {0, 1, 2, 1, 1};
    for (int kind = 0; kind < 5; kind++)
        for (int s = 0; s < 5; s++)
            for (int keep = 0; keep < 2; keep++) {
                bool mask[3] = {nds[s] == 0, nds[s] == 0, nds[s] == 0};
                for (int j = 0; j < nds[s]; j++)
                    mask[(dim_sets[s][j] + 3) % 3] = true;
                int64_t n;
                ref_reduce(x, mask, kind, want, &n);
                nb_tensor *r = fns[kind](t, nds[s] ? dim_sets[s] : NULL, nds[s], keep);
                nb_shape ws = {0};
                for (int d = 0; d < 3; d++)
                    if (keep || !mask[d])
                        ws.dims[ws.ndim++] = mask[d] ? 1 : (int64_t[]){2, 3, 4}[d];
                expect_shape_dtype(r, ws, NB_DTYPE_F64);
                expect_close(r, want, n, 1e-12, 0);
                nb_release(r);
            }
    nb_release(t);
}

static void integer_sums_are_int64_and_mean_needs_float(void **state)
{
    (void)state;
    double v[4] = {1, 2, 3, 4};
    nb_tensor *t = mk(v, NB_SHAPE(2, 2), NB_DTYPE_I32), *b = mk(v, NB_SHAPE(4), NB_DTYPE_BOOL);
    nb_tensor *s = nb_sum(t, NULL, 0, false), *p = nb_prod(t, NULL, 0, false);
    nb_tensor *sb = nb_sum(b, NULL, 0, false), *mx = nb_amax(t, NULL, 0, false);
    expect_shape_dtype(s, NB_SHAPE_SCALAR, NB_DTYPE_I64);
    expect_shape_dtype(p, NB_SHAPE_SCALAR, NB_DTYPE_I64);
    expect_shape_dtype(sb, NB_SHAPE_SCALAR, NB_DTYPE_I64);
    expect_shape_dtype(mx, NB_SHAPE_SCALAR, NB_DTYPE_I32);
    expect_close(s, (double[]){10}, 1, 0, 0);
    expect_close(p, (double[]){24}, 1, 0, 0);
    expect_close(sb, (double[]){4}, 1, 0, 0);
    expect_close(mx, (double[]){4}, 1, 0, 0);
    assert_null(nb_mean(t, NULL, 0, false));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("mean");
    nb_tensor *r[] = {t, b, s, p, sb, mx};
    for (size_t k = 0; k < 6; k++)
        nb_release(r[k]);
}

static void reduction_errors_and_empty_inputs(void **state)
{
    (void)state;
    nb_tensor *t = nb_ones(NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *e = nb_zeros(NB_SHAPE(0, 3), (nb_opts){0});
    int32_t dup[2] = {1, -1}, far[1] = {2};
    assert_null(nb_sum(t, dup, 2, false));
    NB_ASSERT_ERROR_HAS("appears multiple times");
    nb_clear_error();
    assert_null(nb_sum(t, far, 1, false));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    nb_tensor *se = nb_sum(e, NULL, 0, false), *pe = nb_prod(e, NULL, 0, false);
    expect_close(se, (double[]){0}, 1, 0, 0); /* the identities, like torch */
    expect_close(pe, (double[]){1}, 1, 0, 0);
    int32_t d0[1] = {0};
    nb_tensor *se0 = nb_sum(e, d0, 1, false);
    expect_shape_dtype(se0, NB_SHAPE(3), NB_DTYPE_F32);
    expect_close(se0, (double[]){0, 0, 0}, 3, 0, 0);
    assert_null(nb_amax(e, NULL, 0, false));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("empty");
    nb_clear_error();
    assert_null(nb_argmax(e, NB_ALL_DIMS, false));
    NB_ASSERT_ERROR_HAS("empty");
    nb_tensor *r[] = {t, e, se, pe, se0};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
}

static void reduction_dims_must_be_a_list_or_none(void **state)
{
    (void)state;
    nb_tensor *t = nb_ones(NB_SHAPE(2, 3), (nb_opts){0});
    int32_t dims[2] = {0, 1};
    assert_null(nb_sum(t, NULL, 2, false)); /* once summed everything */
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    NB_ASSERT_ERROR_HAS("sum: 2 dims given in a NULL list");
    nb_clear_error();
    assert_null(nb_sum(t, dims, -1, false));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("-1 dims");
    nb_clear_error();
    assert_null(nb_mean(t, NULL, 1, true));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_null(nb_var(t, dims, -3, 1, false));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_tensor *all = nb_sum(t, dims, 0, false); /* an empty list still means all dims */
    expect_close(all, (double[]){6}, 1, 0, 0);
    nb_release(all);
    nb_release(t);
}

/* Any int64 correction: count - correction is computed in double, so INT64_MIN is no overflow
 * (PyTorch: sum of squares / max(0, N - correction)). */
static void var_with_extreme_corrections_is_defined(void **state)
{
    (void)state;
    nb_tensor *t = nb_from_data((float[]){1, 3}, NB_SHAPE(2), (nb_opts){0});
    nb_tensor *v = nb_var(t, NULL, 0, INT64_MIN, false);
    double got;
    NB_ASSERT_OK(nb_item(v, &got));
    assert_true(got > 0 && got < 1e-17); /* 2 / (2 + 2^63) */
    nb_tensor *w = nb_var(t, NULL, 0, INT64_MAX, false);
    NB_ASSERT_OK(nb_item(w, &got));
    assert_true(isnan(got)); /* N - correction <= 0 */
    nb_release(v);
    nb_release(w);
    nb_release(t);
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

static void var_std_and_norm_match_the_formulas(void **state)
{
    (void)state;
    double x[12];
    fill_vals(x, 12, -2, 2, 9);
    nb_tensor *t = mk(x, NB_SHAPE(3, 4), NB_DTYPE_F64);
    int32_t d1[1] = {1};
    for (int corr = 0; corr <= 1; corr++) {
        nb_tensor *v = nb_var(t, d1, 1, corr, false), *s = nb_std(t, d1, 1, corr, true);
        double wv[3], ws[3];
        for (int r = 0; r < 3; r++) {
            double m = 0, q = 0;
            for (int c = 0; c < 4; c++)
                m += x[r * 4 + c] / 4;
            for (int c = 0; c < 4; c++)
                q += (x[r * 4 + c] - m) * (x[r * 4 + c] - m);
            wv[r] = q / (4 - corr);
            ws[r] = sqrt(wv[r]);
        }
        expect_shape_dtype(v, NB_SHAPE(3), NB_DTYPE_F64);
        expect_shape_dtype(s, NB_SHAPE(3, 1), NB_DTYPE_F64);
        expect_close(v, wv, 3, 1e-12, 0);
        expect_close(s, ws, 3, 1e-12, 0);
        nb_release(v);
        nb_release(s);
    }
    double ps[4] = {1, 2, 3, INFINITY};
    for (int k = 0; k < 4; k++) {
        nb_tensor *n = nb_norm(t, ps[k], NULL, 0, false);
        double acc = 0;
        for (int i = 0; i < 12; i++)
            acc = isinf(ps[k]) ? fmax(acc, fabs(x[i])) : acc + pow(fabs(x[i]), ps[k]);
        double w = isinf(ps[k]) ? acc : pow(acc, 1 / ps[k]);
        expect_close(n, &w, 1, 1e-12, 0);
        nb_release(n);
    }
    assert_null(nb_norm(t, 0, NULL, 0, false));
    NB_ASSERT_ERROR_HAS("p must be positive");
    nb_clear_error();
    nb_tensor *ti = mk(x, NB_SHAPE(12), NB_DTYPE_I64);
    assert_null(nb_var(ti, NULL, 0, 1, false));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    nb_release(ti);
    nb_release(t);
}

static void argmax_picks_the_first_of_ties(void **state)
{
    (void)state;
    double v[8] = {1, 5, 5, 0, /**/ 7, 7, -1, 7};
    nb_tensor *t = mk(v, NB_SHAPE(2, 4), NB_DTYPE_F32);
    nb_tensor *am = nb_argmax(t, 1, false), *an = nb_argmin(t, -1, true);
    nb_tensor *flat = nb_argmax(t, NB_ALL_DIMS, false), *col = nb_argmax(t, 0, false);
    expect_shape_dtype(am, NB_SHAPE(2), NB_DTYPE_I64);
    expect_shape_dtype(an, NB_SHAPE(2, 1), NB_DTYPE_I64);
    expect_shape_dtype(flat, NB_SHAPE_SCALAR, NB_DTYPE_I64);
    expect_close(am, (double[]){1, 0}, 2, 0, 0);
    expect_close(an, (double[]){3, 2}, 2, 0, 0);
    expect_close(flat, (double[]){4}, 1, 0, 0);
    expect_close(col, (double[]){1, 1, 0, 1}, 4, 0, 0);
    nb_tensor *r[] = {t, am, an, flat, col};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
}

static void max_dim_and_min_dim_give_values_and_indices(void **state)
{
    (void)state;
    double v[12];
    fill_vals(v, 12, -5, 5, 10);
    v[5] = v[4]; /* a tie in row 1 */
    nb_tensor *t = mk(v, NB_SHAPE(3, 4), NB_DTYPE_F32);
    nb_tensor *vals = NULL, *idx = NULL, *mins = NULL;
    NB_ASSERT_OK(nb_max_dim(t, 1, false, &vals, &idx));
    NB_ASSERT_OK(nb_min_dim(t, 0, true, &mins, NULL));
    double wv[3], wi[3], wm[4];
    for (int r = 0; r < 3; r++) {
        wi[r] = 0;
        for (int c = 1; c < 4; c++)
            if (f32(v[r * 4 + c]) > f32(v[r * 4 + (int)wi[r]]))
                wi[r] = c;
        wv[r] = f32(v[r * 4 + (int)wi[r]]);
    }
    for (int c = 0; c < 4; c++)
        wm[c] = fmin(fmin(f32(v[c]), f32(v[4 + c])), f32(v[8 + c]));
    expect_shape_dtype(vals, NB_SHAPE(3), NB_DTYPE_F32);
    expect_shape_dtype(idx, NB_SHAPE(3), NB_DTYPE_I64);
    expect_shape_dtype(mins, NB_SHAPE(1, 4), NB_DTYPE_F32);
    expect_close(vals, wv, 3, 0, 0);
    expect_close(idx, wi, 3, 0, 0);
    expect_close(mins, wm, 4, 0, 0);
    nb_tensor *x = (nb_tensor *)1;
    assert_int_equal(nb_max_dim(t, 2, false, &x, NULL), NB_INDEX_OUT_OF_RANGE);
    assert_null(x); /* outputs are cleared on error */
    nb_clear_error();
    assert_int_equal(nb_max_dim(NULL, 0, false, &x, NULL), NB_NULL_ARGUMENT);
    nb_release(t);
    nb_release(vals);
    nb_release(idx);
    nb_release(mins);
}

/* ---- linear algebra ---- */

/* c (b, n, m) = a (b, n, k) @ b (b, k, m), with a batch stride of 0 where the size is 1 */
static void ref_bmm(const double *a, const double *b, double *c, int64_t ba, int64_t bb,
                    int64_t n, int64_t k, int64_t m)
{
    int64_t B = ba > bb ? ba : bb;
    for (int64_t z = 0; z < B; z++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++) {
                double s = 0;
                for (int64_t q = 0; q < k; q++)
                    s += a[(ba == 1 ? 0 : z) * n * k + i * k + q] *
                         b[(bb == 1 ? 0 : z) * k * m + q * m + j];
                c[z * n * m + i * m + j] = s;
            }
}

static void mm_and_bmm_match_triple_loops(void **state)
{
    (void)state;
    double a[2 * 3 * 5], b[2 * 5 * 4], want[2 * 3 * 4];
    fill_vals(a, 30, -1, 1, 11);
    fill_vals(b, 40, -1, 1, 12);
    for (nb_dtype dt = NB_DTYPE_F32; dt <= NB_DTYPE_F64; dt++) {
        double tol = dt == NB_DTYPE_F32 ? 1e-5 : 1e-12;
        nb_tensor *ta = mk(a, NB_SHAPE(3, 5), dt), *tb = mk(b, NB_SHAPE(5, 4), dt);
        nb_tensor *r = nb_mm(ta, tb);
        ref_bmm(a, b, want, 1, 1, 3, 5, 4);
        expect_shape_dtype(r, NB_SHAPE(3, 4), dt);
        expect_close(r, want, 12, tol, tol);
        nb_release(r);
        /* transposed operands: (5,3)^T @ (4,5)^T */
        nb_tensor *at = nb_t(ta);
        nb_tensor *bt = nb_t(tb), *att = nb_contiguous(at), *btt = nb_contiguous(bt);
        nb_tensor *at2 = nb_t(att), *bt2 = nb_t(btt); /* same values, transposed strides */
        r = nb_mm(at2, bt2);
        expect_close(r, want, 12, tol, tol);
        nb_release(r);
        nb_tensor *rel[] = {ta, tb, at, bt, att, btt, at2, bt2};
        for (size_t k = 0; k < 8; k++)
            nb_release(rel[k]);

        nb_tensor *ba = mk(a, NB_SHAPE(2, 3, 5), dt), *bb = mk(b, NB_SHAPE(2, 5, 4), dt);
        r = nb_bmm(ba, bb);
        ref_bmm(a, b, want, 2, 2, 3, 5, 4);
        expect_shape_dtype(r, NB_SHAPE(2, 3, 4), dt);
        expect_close(r, want, 24, tol, tol);
        nb_release(r);
        nb_release(ba);
        nb_release(bb);
    }
}

static void matmul_follows_torch_rules_for_1d_and_batches(void **state)
{
    (void)state;
    double a[2 * 3 * 4], b[4 * 5], v[4], want[40];
    fill_vals(a, 24, -1, 1, 13);
    fill_vals(b, 20, -1, 1, 14);
    fill_vals(v, 4, -1, 1, 15);
    nb_tensor *m34 = mk(a, NB_SHAPE(3, 4), NB_DTYPE_F64);
    nb_tensor *m45 = mk(b, NB_SHAPE(4, 5), NB_DTYPE_F64);
    nb_tensor *v4 = mk(v, NB_SHAPE(4), NB_DTYPE_F64);
    nb_tensor *b234 = mk(a, NB_SHAPE(2, 3, 4), NB_DTYPE_F64);
    nb_tensor *r = nb_matmul(v4, m45); /* (4) @ (4,5) -> (5) */
    ref_bmm(v, b, want, 1, 1, 1, 4, 5);
    expect_shape_dtype(r, NB_SHAPE(5), NB_DTYPE_F64);
    expect_close(r, want, 5, 1e-12, 1e-12);
    nb_release(r);
    r = nb_matmul(m34, v4); /* (3,4) @ (4) -> (3) */
    ref_bmm(a, v, want, 1, 1, 3, 4, 1);
    expect_shape_dtype(r, NB_SHAPE(3), NB_DTYPE_F64);
    expect_close(r, want, 3, 1e-12, 1e-12);
    nb_release(r);
    r = nb_matmul(v4, v4); /* dot product, 0-d */
    double dot = 0;
    for (int k = 0; k < 4; k++)
        dot += v[k] * v[k];
    expect_shape_dtype(r, NB_SHAPE_SCALAR, NB_DTYPE_F64);
    expect_close(r, &dot, 1, 1e-12, 0);
    nb_release(r);
    r = nb_matmul(b234, m45); /* batch (2) with a broadcast matrix */
    ref_bmm(a, b, want, 2, 1, 3, 4, 5);
    expect_shape_dtype(r, NB_SHAPE(2, 3, 5), NB_DTYPE_F64);
    expect_close(r, want, 30, 1e-12, 1e-12);
    nb_release(r);
    nb_tensor *b1 = mk(b, NB_SHAPE(1, 4, 5), NB_DTYPE_F64);
    nb_tensor *b2134 = mk(a, NB_SHAPE(2, 1, 3, 4), NB_DTYPE_F64);
    r = nb_matmul(b2134, b1); /* batch dims (2,1) and (1) broadcast to (2,1) */
    expect_shape_dtype(r, NB_SHAPE(2, 1, 3, 5), NB_DTYPE_F64);
    expect_close(r, want, 30, 1e-12, 1e-12);
    nb_release(r);
    assert_null(nb_matmul(m34, m34));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("[3, 4]");
    nb_clear_error();
    nb_tensor *s = nb_scalar(1, (nb_opts){NB_DTYPE_F64});
    assert_null(nb_matmul(s, v4));
    NB_ASSERT_ERROR_HAS("at least 1 dimension");
    nb_tensor *rel[] = {m34, m45, v4, b234, b1, b2134, s};
    for (size_t k = 0; k < 7; k++)
        nb_release(rel[k]);
}

static void matmul_errors_name_shapes_and_dtypes(void **state)
{
    (void)state;
    nb_tensor *a = nb_ones(NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *b = nb_ones(NB_SHAPE(4, 5), (nb_opts){0});
    nb_tensor *d = nb_ones(NB_SHAPE(3, 2), (nb_opts){NB_DTYPE_F64});
    nb_tensor *b3 = nb_ones(NB_SHAPE(2, 3, 4), (nb_opts){0});
    nb_tensor *c3 = nb_ones(NB_SHAPE(3, 4, 2), (nb_opts){0});
    assert_null(nb_mm(a, b));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("mm: shapes [2, 3] and [4, 5] cannot be multiplied (2x3 and 4x5)");
    nb_clear_error();
    assert_null(nb_mm(a, d));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("float32 and float64");
    nb_clear_error();
    assert_null(nb_mm(a, b3));
    NB_ASSERT_ERROR_HAS("expected 2-d tensors");
    nb_clear_error();
    assert_null(nb_bmm(b3, c3)); /* batch 2 vs 3 */
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_tensor *r[] = {a, b, d, b3, c3};
    for (size_t k = 0; k < 5; k++)
        nb_release(r[k]);
}

static void addmm_scales_and_broadcasts_the_input(void **state)
{
    (void)state;
    double a[6], b[12], c[4], want[8];
    fill_vals(a, 6, -1, 1, 16);
    fill_vals(b, 12, -1, 1, 17);
    fill_vals(c, 4, -1, 1, 18);
    nb_tensor *ta = mk(a, NB_SHAPE(2, 3), NB_DTYPE_F64), *tb = mk(b, NB_SHAPE(3, 4), NB_DTYPE_F64);
    nb_tensor *tc = mk(c, NB_SHAPE(4), NB_DTYPE_F64);
    nb_tensor *r = nb_addmm(tc, ta, tb, 0.5, -2);
    ref_bmm(a, b, want, 1, 1, 2, 3, 4);
    for (int i = 0; i < 8; i++)
        want[i] = 0.5 * c[i % 4] - 2 * want[i];
    expect_shape_dtype(r, NB_SHAPE(2, 4), NB_DTYPE_F64);
    expect_close(r, want, 8, 1e-12, 1e-12);
    nb_tensor *bad = nb_ones(NB_SHAPE(3), (nb_opts){NB_DTYPE_F64});
    assert_null(nb_addmm(bad, ta, tb, 1, 1));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_tensor *rel[] = {ta, tb, tc, r, bad};
    for (size_t k = 0; k < 5; k++)
        nb_release(rel[k]);
}

/* ---- indexing ---- */

static void gather_index_select_and_scatter_add_match_loops(void **state)
{
    (void)state;
    double x[12], idx[6] = {2, 0, 3, 3, 1, 0}, sel[3] = {2, 0, 2}, want[12];
    fill_vals(x, 12, -5, 5, 19);
    nb_tensor *t = mk(x, NB_SHAPE(3, 4), NB_DTYPE_F32);
    nb_tensor *ti = mk(idx, NB_SHAPE(3, 2), NB_DTYPE_I64), *ts = mk(sel, NB_SHAPE(3), NB_DTYPE_I64);
    nb_tensor *g = nb_gather(t, 1, ti); /* out[i][j] = x[i][idx[i][j]] */
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++)
            want[i * 2 + j] = f32(x[i * 4 + (int)idx[i * 2 + j]]);
    expect_shape_dtype(g, NB_SHAPE(3, 2), NB_DTYPE_F32);
    expect_close(g, want, 6, 0, 0);
    nb_tensor *s0 = nb_index_select(t, 0, ts); /* rows 2, 0, 2 */
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
            want[i * 4 + j] = f32(x[(int)sel[i] * 4 + j]);
    expect_shape_dtype(s0, NB_SHAPE(3, 4), NB_DTYPE_F32);
    expect_close(s0, want, 12, 0, 0);
    nb_tensor *s1 = nb_index_select(t, 1, ts); /* columns 2, 0, 2 */
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            want[i * 3 + j] = f32(x[i * 4 + (int)sel[j]]);
    expect_close(s1, want, 9, 0, 0);
    /* scatter_add: out = t; out[i][idx[i][j]] += src[i][j] (repeated indices add up) */
    double src[6] = {1, 2, 3, 4, 5, 6};
    nb_tensor *tsrc = mk(src, NB_SHAPE(3, 2), NB_DTYPE_F32);
    nb_tensor *sa = nb_scatter_add(t, 1, ti, tsrc);
    for (int k = 0; k < 12; k++)
        want[k] = f32(x[k]);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++)
            want[i * 4 + (int)idx[i * 2 + j]] += src[i * 2 + j];
    expect_shape_dtype(sa, NB_SHAPE(3, 4), NB_DTYPE_F32);
    expect_close(sa, want, 12, RT32, AT32);
    double again[12];
    for (int k = 0; k < 12; k++)
        again[k] = f32(x[k]);
    expect_close(t, again, 12, 0, 0); /* the input is untouched */
    nb_tensor *rel[] = {t, ti, ts, g, s0, s1, tsrc, sa};
    for (size_t k = 0; k < 8; k++)
        nb_release(rel[k]);
}

static void indexing_errors(void **state)
{
    (void)state;
    nb_tensor *t = nb_ones(NB_SHAPE(3, 4), (nb_opts){0});
    double bad[2] = {0, 7}, ok[2] = {0, 1};
    nb_tensor *far = mk(bad, NB_SHAPE(2), NB_DTYPE_I64), *i32 = mk(ok, NB_SHAPE(2), NB_DTYPE_I32);
    nb_tensor *far2 = mk(bad, NB_SHAPE(1, 2), NB_DTYPE_I64);
    assert_null(nb_index_select(t, 1, far));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    assert_null(nb_gather(t, 1, far2));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    assert_null(nb_index_select(t, 0, i32));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("index must be int64, got int32");
    nb_clear_error();
    assert_null(nb_gather(t, 0, far)); /* 1-d index for a 2-d input */
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_clear_error();
    assert_null(nb_scatter_add(t, 1, far2, t));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_release(t);
    nb_release(far);
    nb_release(far2);
    nb_release(i32);
}

/* ---- cat / stack ---- */

static void cat_and_stack_join_along_a_dim(void **state)
{
    (void)state;
    double a[6], b[4], want[12];
    fill_vals(a, 6, -1, 1, 20);
    fill_vals(b, 4, -1, 1, 21);
    nb_tensor *ta = mk(a, NB_SHAPE(2, 3), NB_DTYPE_F64), *tb = mk(b, NB_SHAPE(2, 2), NB_DTYPE_F64);
    nb_tensor *ab[2] = {ta, tb};
    nb_tensor *c = nb_cat(ab, 2, -1);
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 3; j++)
            want[i * 5 + j] = a[i * 3 + j];
        for (int j = 0; j < 2; j++)
            want[i * 5 + 3 + j] = b[i * 2 + j];
    }
    expect_shape_dtype(c, NB_SHAPE(2, 5), NB_DTYPE_F64);
    expect_close(c, want, 10, 0, 0);
    nb_tensor *aa[2] = {ta, ta};
    nb_tensor *s0 = nb_stack(aa, 2, 0), *s2 = nb_stack(aa, 2, 2), *c0 = nb_cat(aa, 2, 0);
    expect_shape_dtype(s0, NB_SHAPE(2, 2, 3), NB_DTYPE_F64);
    expect_shape_dtype(s2, NB_SHAPE(2, 3, 2), NB_DTYPE_F64);
    expect_shape_dtype(c0, NB_SHAPE(4, 3), NB_DTYPE_F64);
    for (int k = 0; k < 12; k++)
        want[k] = a[k % 6];
    expect_close(s0, want, 12, 0, 0);
    expect_close(c0, want, 12, 0, 0);
    for (int k = 0; k < 12; k++)
        want[k] = a[k / 2];
    expect_close(s2, want, 12, 0, 0);
    /* mixed dtypes promote */
    nb_tensor *ti = nb_ones(NB_SHAPE(1, 3), (nb_opts){NB_DTYPE_I32});
    nb_tensor *mix[2] = {ti, ta}, *cm = nb_cat(mix, 2, 0);
    expect_shape_dtype(cm, NB_SHAPE(3, 3), NB_DTYPE_F64);
    /* errors */
    assert_null(nb_cat(ab, 2, 0));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("sizes of tensors must match except in dimension 0");
    nb_clear_error();
    assert_null(nb_stack(ab, 2, 0));
    NB_ASSERT_ERROR_HAS("stack: expects each tensor to be equal size");
    nb_clear_error();
    assert_null(nb_cat(ab, 0, 0));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_tensor *withnull[2] = {ta, NULL};
    assert_null(nb_cat(withnull, 2, 0));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_null(nb_cat(ab, 2, 2));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_tensor *rel[] = {ta, tb, c, s0, s2, c0, ti, cm};
    for (size_t k = 0; k < 8; k++)
        nb_release(rel[k]);
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
        NB_TEST(scalar_ops_keep_integer_dtype_for_integral_scalars),
        NB_TEST(scalar_ops_on_floats),
        NB_TEST(in_place_ops_write_into_their_first_argument),
        NB_TEST(in_place_errors_for_shape_and_dtype),
        NB_TEST(clamp_with_min_max_or_both),
        NB_TEST(where_broadcasts_and_promotes),
        NB_TEST(reductions_over_all_dims_some_dims_and_keepdim),
        NB_TEST(integer_sums_are_int64_and_mean_needs_float),
        NB_TEST(reduction_errors_and_empty_inputs),
        NB_TEST(reduction_dims_must_be_a_list_or_none),
        NB_TEST(var_with_extreme_corrections_is_defined),
        NB_TEST(integer_arithmetic_wraps_around_like_torch),
        NB_TEST(result_shapes_that_overflow_are_errors),
        NB_TEST(var_std_and_norm_match_the_formulas),
        NB_TEST(argmax_picks_the_first_of_ties),
        NB_TEST(max_dim_and_min_dim_give_values_and_indices),
        NB_TEST(mm_and_bmm_match_triple_loops),
        NB_TEST(matmul_follows_torch_rules_for_1d_and_batches),
        NB_TEST(matmul_errors_name_shapes_and_dtypes),
        NB_TEST(addmm_scales_and_broadcasts_the_input),
        NB_TEST(gather_index_select_and_scatter_add_match_loops),
        NB_TEST(indexing_errors),
        NB_TEST(cat_and_stack_join_along_a_dim),
        NB_TEST(null_input_propagates_and_keeps_the_first_error),
        NB_TEST(ops_refuse_operands_on_different_devices),
        NB_TEST(zero_dim_tensors_do_not_widen_their_category),
        NB_TEST(in_place_results_are_cast_to_the_destination_when_allowed),
        NB_TEST(bool_arithmetic_gives_bool),
        NB_TEST(integers_to_negative_integer_powers_are_refused),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
