/* test_dtype.c - tests core/runtime/dtype.c: element sizes, names, the float flag, and PyTorch's type
 * promotion (bool < uint8 < int32 < int64 < float32 < float64 for the types Nabla has). */
#include "nb_test.h"

static const nb_dtype all[NB_DTYPE_COUNT] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32,
                                             NB_DTYPE_I64, NB_DTYPE_BOOL, NB_DTYPE_U8};

static void sizes_match_the_c_types(void **state)
{
    (void)state;
    assert_int_equal(nb_dtype_size(NB_DTYPE_F32), sizeof(float));
    assert_int_equal(nb_dtype_size(NB_DTYPE_F64), sizeof(double));
    assert_int_equal(nb_dtype_size(NB_DTYPE_I32), sizeof(int32_t));
    assert_int_equal(nb_dtype_size(NB_DTYPE_I64), sizeof(int64_t));
    assert_int_equal(nb_dtype_size(NB_DTYPE_BOOL), 1);
    assert_int_equal(nb_dtype_size(NB_DTYPE_U8), sizeof(uint8_t));
}

static void names_are_pytorchs(void **state)
{
    (void)state;
    assert_string_equal(nb_dtype_name(NB_DTYPE_F32), "float32");
    assert_string_equal(nb_dtype_name(NB_DTYPE_F64), "float64");
    assert_string_equal(nb_dtype_name(NB_DTYPE_I32), "int32");
    assert_string_equal(nb_dtype_name(NB_DTYPE_I64), "int64");
    assert_string_equal(nb_dtype_name(NB_DTYPE_BOOL), "bool");
    assert_string_equal(nb_dtype_name(NB_DTYPE_U8), "uint8");
}

static void only_f32_and_f64_are_floating(void **state)
{
    (void)state;
    for (int k = 0; k < NB_DTYPE_COUNT; k++)
        assert_int_equal(nb_dtype_is_float(all[k]),
                         all[k] == NB_DTYPE_F32 || all[k] == NB_DTYPE_F64);
}

static void invalid_dtypes_are_reported_not_crashed_on(void **state)
{
    (void)state;
    nb_dtype bad[] = {NB_DTYPE_COUNT, (nb_dtype)-1, (nb_dtype)1000};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        assert_string_equal(nb_dtype_name(bad[k]), "invalid dtype");
        assert_int_equal(nb_dtype_size(bad[k]), 0);
        assert_false(nb_dtype_is_float(bad[k]));
        assert_int_equal(nb_promote_types(bad[k], NB_DTYPE_F32), NB_DTYPE_COUNT);
        assert_int_equal(nb_promote_types(NB_DTYPE_I64, bad[k]), NB_DTYPE_COUNT);
    }
}

/* Position in the promotion order: the result of promoting two types is the later one. */
static int rank_of(nb_dtype d)
{
    static const nb_dtype order[] = {NB_DTYPE_BOOL, NB_DTYPE_U8, NB_DTYPE_I32,
                                     NB_DTYPE_I64,  NB_DTYPE_F32, NB_DTYPE_F64};
    for (int k = 0; k < 6; k++)
        if (order[k] == d)
            return k;
    return -1;
}

static void promotion_follows_the_order_and_is_symmetric(void **state)
{
    (void)state;
    for (int i = 0; i < NB_DTYPE_COUNT; i++)
        for (int j = 0; j < NB_DTYPE_COUNT; j++) {
            nb_dtype a = all[i], b = all[j];
            nb_dtype want = rank_of(a) >= rank_of(b) ? a : b;
            nb_dtype got = nb_promote_types(a, b);
            if (got != want)
                fail_msg("promote(%s, %s) = %s, expected %s", nb_dtype_name(a),
                         nb_dtype_name(b), nb_dtype_name(got), nb_dtype_name(want));
            assert_int_equal(nb_promote_types(b, a), got);
        }
}

static void promotion_spot_checks_against_torch(void **state)
{
    (void)state;
    /* torch.promote_types(...) for the pairs people trip over */
    assert_int_equal(nb_promote_types(NB_DTYPE_I32, NB_DTYPE_F32), NB_DTYPE_F32);
    assert_int_equal(nb_promote_types(NB_DTYPE_I64, NB_DTYPE_F32), NB_DTYPE_F32);
    assert_int_equal(nb_promote_types(NB_DTYPE_F32, NB_DTYPE_F64), NB_DTYPE_F64);
    assert_int_equal(nb_promote_types(NB_DTYPE_BOOL, NB_DTYPE_U8), NB_DTYPE_U8);
    assert_int_equal(nb_promote_types(NB_DTYPE_U8, NB_DTYPE_I32), NB_DTYPE_I32);
    assert_int_equal(nb_promote_types(NB_DTYPE_BOOL, NB_DTYPE_BOOL), NB_DTYPE_BOOL);
    assert_int_equal(nb_promote_types(NB_DTYPE_I32, NB_DTYPE_I64), NB_DTYPE_I64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(sizes_match_the_c_types),
        NB_TEST(names_are_pytorchs),
        NB_TEST(only_f32_and_f64_are_floating),
        NB_TEST(invalid_dtypes_are_reported_not_crashed_on),
        NB_TEST(promotion_follows_the_order_and_is_symmetric),
        NB_TEST(promotion_spot_checks_against_torch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
