/* test_print.c - tests core/tensor/print.c: nb_tensor_str must print exactly what PyTorch prints.
 * Every expected string below was produced by torch 1.13's repr() for the same tensor (the
 * Python that built each one is in the comment of its builder). */
#include "nb_test.h"

#include <stdio.h>
#include <stdlib.h>

static const struct {
    const char *name, *want;
} expected[] = {
    {"ones_rg",
     "tensor([[1., 1.],\n"
     "        [1., 1.]], requires_grad=True)"},
    {"mean",
     "tensor(27., grad_fn=<MeanBackward0>)"},
    {"y_add",
     "tensor([[3., 3.],\n"
     "        [3., 3.]], grad_fn=<AddBackward0>)"},
    {"half",
     "tensor([[4.5000, 4.5000],\n"
     "        [4.5000, 4.5000]])"},
    {"i64",
     "tensor([1, 2, 3])"},
    {"i32",
     "tensor([1, 2, 3], dtype=torch.int32)"},
    {"bool",
     "tensor([ True, False])"},
    {"f64",
     "tensor([1., 2.], dtype=torch.float64)"},
    {"sci",
     "tensor([1.0000e-05, 1.0000e+03])"},
    {"wrap",
     "tensor([ 0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10., 11., 12., 13.,\n"
     "        14., 15., 16., 17., 18., 19., 20., 21., 22., 23., 24., 25., 26., 27.,\n"
     "        28., 29.])"},
    {"wrap_frac",
     "tensor([0.0000, 0.1429, 0.2857, 0.4286, 0.5714, 0.7143, 0.8571, 1.0000, 1.1429,\n"
     "        1.2857, 1.4286, 1.5714, 1.7143, 1.8571, 2.0000, 2.1429, 2.2857, 2.4286,\n"
     "        2.5714, 2.7143, 2.8571, 3.0000, 3.1429, 3.2857, 3.4286, 3.5714, 3.7143,\n"
     "        3.8571, 4.0000, 4.1429])"},
    {"sum1d",
     "tensor([0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 1.9970e+03, 1.9980e+03,\n"
     "        1.9990e+03])"},
    {"sum2d",
     "tensor([[0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 4.7000e+01, 4.8000e+01,\n"
     "         4.9000e+01],\n"
     "        [5.0000e+01, 5.1000e+01, 5.2000e+01,  ..., 9.7000e+01, 9.8000e+01,\n"
     "         9.9000e+01],\n"
     "        [1.0000e+02, 1.0100e+02, 1.0200e+02,  ..., 1.4700e+02, 1.4800e+02,\n"
     "         1.4900e+02],\n"
     "        ...,\n"
     "        [1.8500e+03, 1.8510e+03, 1.8520e+03,  ..., 1.8970e+03, 1.8980e+03,\n"
     "         1.8990e+03],\n"
     "        [1.9000e+03, 1.9010e+03, 1.9020e+03,  ..., 1.9470e+03, 1.9480e+03,\n"
     "         1.9490e+03],\n"
     "        [1.9500e+03, 1.9510e+03, 1.9520e+03,  ..., 1.9970e+03, 1.9980e+03,\n"
     "         1.9990e+03]])"},
    {"sumint",
     "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])"},
    {"empty",
     "tensor([])"},
    {"empty03",
     "tensor([], size=(0, 3))"},
    {"naninf",
     "tensor([   nan,    inf,   -inf, 1.5000])"},
    {"naninf_int",
     "tensor([nan, 2., -inf])"},
    {"mixed",
     "tensor([-1.5000,  2.2500,  0.0000])"},
    {"u8",
     "tensor([  0,   7, 255], dtype=torch.uint8)"},
    {"scalar_i",
     "tensor(5)"},
    {"scalar_f",
     "tensor(-0.5000)"},
    {"three_d",
     "tensor([[[ 0.,  1.,  2.],\n"
     "         [ 3.,  4.,  5.]],\n"
     "\n"
     "        [[ 6.,  7.,  8.],\n"
     "         [ 9., 10., 11.]]])"},
    {"wide_ints",
     "tensor([   1, -100, 1000])"},
    {"big",
     "tensor([1.0000e+00, 1.0000e+09])"},
    {"tiny",
     "tensor([1.0000e-05, 2.0000e-05])"},
    {"prec",
     "tensor([0.1000, 0.1235])"},
    {"f64_rg",
     "tensor([1., 2.], dtype=torch.float64, requires_grad=True)"},
    {"zeros",
     "tensor([0., 0.])"},
    {"eye_i32",
     "tensor([[1, 0, 0],\n"
     "        [0, 1, 0],\n"
     "        [0, 0, 1]], dtype=torch.int32)"},
    {"col",
     "tensor([[ 1.5000],\n"
     "        [-2.0000],\n"
     "        [ 3.2500]])"},
    {"empty_i32",
     "tensor([], dtype=torch.int32)"},
    {"neg_zero",
     "tensor([-0., 1.])"},
    {"bool2d",
     "tensor([[ True, False],\n"
     "        [False,  True]])"},
};

static nb_tensor *from(const void *data, nb_shape s, nb_dtype dt)
{
    nb_tensor *t = nb_from_data(data, s, (nb_opts){dt});
    assert_non_null(t);
    return t;
}

static nb_tensor *arange_f32(int64_t n) { return nb_arange(0, (double)n, 1, (nb_opts){0}); }

/* The tensor for a case name; graph cases keep their inputs alive in `keep`. */
static nb_tensor *build(const char *name, nb_tensor **keep)
{
#define IS(s) (strcmp(name, s) == 0)
    if (IS("ones_rg")) /* torch.ones(2, 2, requires_grad=True) */
        return nb_ones(NB_SHAPE(2, 2), (nb_opts){.requires_grad = true});
    if (IS("mean") || IS("y_add")) { /* y = x + 2; (y * y * 3).mean() */
        keep[0] = nb_ones(NB_SHAPE(2, 2), (nb_opts){.requires_grad = true});
        nb_tensor *y = nb_add_scalar(keep[0], 2);
        if (IS("y_add"))
            return y;
        nb_tensor *yy = nb_mul(y, y), *z = nb_mul_scalar(yy, 3);
        nb_tensor *m = nb_mean(z, NULL, 0, false);
        nb_release(y);
        nb_release(yy);
        nb_release(z);
        return m;
    }
    if (IS("half")) /* torch.full((2, 2), 4.5) */
        return nb_full(NB_SHAPE(2, 2), 4.5, (nb_opts){0});
    if (IS("i64")) /* torch.tensor([1, 2, 3]) */
        return from((int64_t[]){1, 2, 3}, NB_SHAPE(3), NB_DTYPE_I64);
    if (IS("i32"))
        return from((int32_t[]){1, 2, 3}, NB_SHAPE(3), NB_DTYPE_I32);
    if (IS("bool"))
        return from((uint8_t[]){1, 0}, NB_SHAPE(2), NB_DTYPE_BOOL);
    if (IS("f64"))
        return from((double[]){1, 2}, NB_SHAPE(2), NB_DTYPE_F64);
    if (IS("sci")) /* torch.tensor([1e-5, 1e3]) */
        return from((float[]){1e-5f, 1e3f}, NB_SHAPE(2), NB_DTYPE_F32);
    if (IS("wrap")) /* torch.arange(30.) */
        return arange_f32(30);
    if (IS("wrap_frac")) { /* torch.arange(30.) / 7 */
        nb_tensor *a = arange_f32(30), *r = nb_div_scalar(a, 7);
        nb_release(a);
        return r;
    }
    if (IS("sum1d")) /* torch.arange(2000.) */
        return arange_f32(2000);
    if (IS("sum2d")) { /* torch.arange(2000.).reshape(40, 50) */
        nb_tensor *a = arange_f32(2000), *r = nb_reshape(a, NB_SHAPE(40, 50));
        nb_release(a);
        return r;
    }
    if (IS("sumint")) /* torch.arange(2000) */
        return nb_arange(0, 2000, 1, (nb_opts){NB_DTYPE_I64});
    if (IS("empty")) /* torch.tensor([]) */
        return nb_zeros(NB_SHAPE(0), (nb_opts){0});
    if (IS("empty03"))
        return nb_zeros(NB_SHAPE(0, 3), (nb_opts){0});
    if (IS("naninf"))
        return from((float[]){NAN, INFINITY, -INFINITY, 1.5f}, NB_SHAPE(4), NB_DTYPE_F32);
    if (IS("naninf_int"))
        return from((float[]){NAN, 2, -INFINITY}, NB_SHAPE(3), NB_DTYPE_F32);
    if (IS("mixed"))
        return from((float[]){-1.5f, 2.25f, 0}, NB_SHAPE(3), NB_DTYPE_F32);
    if (IS("u8"))
        return from((uint8_t[]){0, 7, 255}, NB_SHAPE(3), NB_DTYPE_U8);
    if (IS("scalar_i")) /* torch.tensor(5) */
        return nb_scalar(5, (nb_opts){NB_DTYPE_I64});
    if (IS("scalar_f"))
        return nb_scalar(-0.5, (nb_opts){0});
    if (IS("three_d")) { /* torch.arange(12.).reshape(2, 2, 3) */
        nb_tensor *a = arange_f32(12), *r = nb_reshape(a, NB_SHAPE(2, 2, 3));
        nb_release(a);
        return r;
    }
    if (IS("wide_ints"))
        return from((int64_t[]){1, -100, 1000}, NB_SHAPE(3), NB_DTYPE_I64);
    if (IS("big"))
        return from((float[]){1, 1e9f}, NB_SHAPE(2), NB_DTYPE_F32);
    if (IS("tiny"))
        return from((float[]){1e-5f, 2e-5f}, NB_SHAPE(2), NB_DTYPE_F32);
    if (IS("prec"))
        return from((float[]){0.1f, 0.123456789f}, NB_SHAPE(2), NB_DTYPE_F32);
    if (IS("f64_rg"))
        return nb_from_data((double[]){1, 2}, NB_SHAPE(2),
                            (nb_opts){NB_DTYPE_F64, .requires_grad = true});
    if (IS("zeros"))
        return nb_zeros(NB_SHAPE(2), (nb_opts){0});
    if (IS("eye_i32"))
        return nb_eye(3, 0, (nb_opts){NB_DTYPE_I32});
    if (IS("col"))
        return from((float[]){1.5f, -2, 3.25f}, NB_SHAPE(3, 1), NB_DTYPE_F32);
    if (IS("empty_i32"))
        return nb_zeros(NB_SHAPE(0), (nb_opts){NB_DTYPE_I32});
    if (IS("neg_zero"))
        return from((float[]){-0.0f, 1}, NB_SHAPE(2), NB_DTYPE_F32);
    if (IS("bool2d"))
        return from((uint8_t[]){1, 0, 0, 1}, NB_SHAPE(2, 2), NB_DTYPE_BOOL);
#undef IS
    fail_msg("no builder for case %s", name);
    return NULL;
}

static void check_case(const char *name)
{
    const char *want = NULL;
    for (size_t k = 0; k < sizeof expected / sizeof *expected; k++)
        if (strcmp(expected[k].name, name) == 0)
            want = expected[k].want;
    assert_non_null(want);
    nb_tensor *keep[2] = {0};
    nb_tensor *t = build(name, keep);
    if (!t)
        fail_msg("%s: %s", name, nb_last_error());
    char *got = nb_tensor_str(t);
    /* released before judging, so that one wrong string does not fail the next tests' leak
     * checks too */
    nb_release(t);
    nb_release(keep[0]);
    nb_release(keep[1]);
    if (!got)
        fail_msg("%s: %s", name, nb_last_error());
    bool same = strcmp(got, want) == 0;
    if (!same)
        print_error("%s: got\n%s\nexpected (torch)\n%s\n", name, got, want);
    nb_free(got);
    assert_true(same);
}

#define PRINT_TEST(name)                                                                   \
    static void prints_##name##_like_torch(void **state)                                   \
    {                                                                                      \
        (void)state;                                                                       \
        check_case(#name);                                                                 \
    }
#define PRINT_CASES(X)                                                                     \
    X(ones_rg) X(mean) X(y_add) X(half) X(i64) X(i32) X(bool) X(f64) X(sci) X(wrap)        \
    X(wrap_frac) X(sum1d) X(sum2d) X(sumint) X(empty) X(empty03) X(naninf) X(naninf_int)   \
    X(mixed) X(u8) X(scalar_i) X(scalar_f) X(three_d) X(wide_ints) X(big) X(tiny) X(prec)  \
    X(f64_rg) X(zeros) X(eye_i32) X(col) X(empty_i32) X(neg_zero) X(bool2d)
PRINT_CASES(PRINT_TEST)

static void every_expected_string_has_a_test(void **state)
{
    (void)state;
    const char *names[] = {
#define NAME_(name) #name,
        PRINT_CASES(NAME_)
#undef NAME_
    };
    assert_int_equal(sizeof names / sizeof *names, sizeof expected / sizeof *expected);
}

static void fprint_adds_a_newline(void **state)
{
    (void)state;
    nb_tensor *t = nb_from_data((int64_t[]){1, 2, 3}, NB_SHAPE(3), (nb_opts){NB_DTYPE_I64});
    char buf[128] = {0};
    FILE *f = fmemopen(buf, sizeof buf, "w");
    assert_non_null(f);
    NB_ASSERT_OK(nb_fprint(f, t));
    fclose(f);
    assert_string_equal(buf, "tensor([1, 2, 3])\n");
    nb_release(t);
}

static void printing_a_view_prints_its_elements(void **state)
{
    (void)state;
    nb_tensor *a = arange_f32(6), *m = nb_reshape(a, NB_SHAPE(2, 3)), *t = nb_t(m);
    char *s = nb_tensor_str(t); /* torch.arange(6.).reshape(2, 3).t() */
    assert_string_equal(s, "tensor([[0., 3.],\n        [1., 4.],\n        [2., 5.]])");
    nb_free(s);
    nb_release(a);
    nb_release(m);
    nb_release(t);
}

/* Integers print exactly: INT64_MAX once went through a double (2^63, out of range for long
 * long: undefined behaviour) and came out wrong. torch prints these same strings. */
static void int64_extremes_print_exactly(void **state)
{
    (void)state;
    nb_tensor *t = nb_from_data((int64_t[]){INT64_MAX, INT64_MIN, 9007199254740993},
                                NB_SHAPE(3), (nb_opts){NB_DTYPE_I64});
    char *s = nb_tensor_str(t);
    assert_string_equal(s, "tensor([ 9223372036854775807, -9223372036854775808,     "
                           "9007199254740993])");
    nb_free(s);
    nb_release(t);
    nb_tensor *i = nb_from_data((int32_t[]){INT32_MIN, 7}, NB_SHAPE(2), (nb_opts){NB_DTYPE_I32});
    s = nb_tensor_str(i);
    assert_string_equal(s, "tensor([-2147483648,           7], dtype=torch.int32)");
    nb_free(s);
    nb_release(i);
}

static void printing_null_is_an_error(void **state)
{
    (void)state;
    assert_null(nb_tensor_str(NULL));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_fprint(NULL, NULL), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_fprint(stdout, NULL), NB_NULL_ARGUMENT);
}

int main(void)
{
#define ENTRY_(name) NB_TEST(prints_##name##_like_torch),
    const struct CMUnitTest tests[] = {
        PRINT_CASES(ENTRY_)
        NB_TEST(every_expected_string_has_a_test),
        NB_TEST(fprint_adds_a_newline),
        NB_TEST(printing_a_view_prints_its_elements),
        NB_TEST(int64_extremes_print_exactly),
        NB_TEST(printing_null_is_an_error),
    };
#undef ENTRY_
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
