/* test_dtype.c - tests core/runtime/dtype.c: element sizes, names, the float flag, and PyTorch's type
 * promotion (bool < uint8 < int32 < int64 < float16, bfloat16 < float32 < float64). */
#include "nb_test.h"

static const nb_dtype all[NB_DTYPE_COUNT] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32,
                                             NB_DTYPE_I64, NB_DTYPE_BOOL, NB_DTYPE_U8,
                                             NB_DTYPE_F16, NB_DTYPE_BF16};

static void sizes_match_the_c_types(void **state)
{
    (void)state;
    assert_int_equal(nb_dtype_size(NB_DTYPE_F32), sizeof(float));
    assert_int_equal(nb_dtype_size(NB_DTYPE_F64), sizeof(double));
    assert_int_equal(nb_dtype_size(NB_DTYPE_I32), sizeof(int32_t));
    assert_int_equal(nb_dtype_size(NB_DTYPE_I64), sizeof(int64_t));
    assert_int_equal(nb_dtype_size(NB_DTYPE_BOOL), 1);
    assert_int_equal(nb_dtype_size(NB_DTYPE_U8), sizeof(uint8_t));
    assert_int_equal(nb_dtype_size(NB_DTYPE_F16), 2);
    assert_int_equal(nb_dtype_size(NB_DTYPE_BF16), 2);
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
    assert_string_equal(nb_dtype_name(NB_DTYPE_F16), "float16");
    assert_string_equal(nb_dtype_name(NB_DTYPE_BF16), "bfloat16");
}

static void only_the_four_float_types_are_floating(void **state)
{
    (void)state;
    for (int k = 0; k < NB_DTYPE_COUNT; k++)
        assert_int_equal(nb_dtype_is_float(all[k]),
                         all[k] == NB_DTYPE_F32 || all[k] == NB_DTYPE_F64 ||
                             all[k] == NB_DTYPE_F16 || all[k] == NB_DTYPE_BF16);
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

/* torch.promote_types(a, b) for every pair, in the order of `all` (torch 2.15):
 *   print([[names[dts.index(torch.promote_types(a, b))] for b in dts] for a in dts]) */
static const nb_dtype torch_promote[NB_DTYPE_COUNT][NB_DTYPE_COUNT] = {
    {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_F32, NB_DTYPE_F32, NB_DTYPE_F32, NB_DTYPE_F32, NB_DTYPE_F32, NB_DTYPE_F32},
    {NB_DTYPE_F64, NB_DTYPE_F64, NB_DTYPE_F64, NB_DTYPE_F64, NB_DTYPE_F64, NB_DTYPE_F64, NB_DTYPE_F64, NB_DTYPE_F64},
    {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_I32, NB_DTYPE_I32, NB_DTYPE_F16, NB_DTYPE_BF16},
    {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I64, NB_DTYPE_I64, NB_DTYPE_I64, NB_DTYPE_I64, NB_DTYPE_F16, NB_DTYPE_BF16},
    {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_BOOL, NB_DTYPE_U8, NB_DTYPE_F16, NB_DTYPE_BF16},
    {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_U8, NB_DTYPE_U8, NB_DTYPE_F16, NB_DTYPE_BF16},
    {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_F16, NB_DTYPE_F16, NB_DTYPE_F16, NB_DTYPE_F16, NB_DTYPE_F16, NB_DTYPE_F32},
    {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_BF16, NB_DTYPE_BF16, NB_DTYPE_BF16, NB_DTYPE_BF16, NB_DTYPE_F32, NB_DTYPE_BF16},
};

static void promotion_is_torchs_for_every_pair(void **state)
{
    (void)state;
    for (int i = 0; i < NB_DTYPE_COUNT; i++)
        for (int j = 0; j < NB_DTYPE_COUNT; j++) {
            nb_dtype a = all[i], b = all[j];
            nb_dtype want = torch_promote[i][j];
            nb_dtype got = nb_promote_types(a, b);
            if (got != want)
                fail_msg("promote(%s, %s) = %s, expected %s", nb_dtype_name(a),
                         nb_dtype_name(b), nb_dtype_name(got), nb_dtype_name(want));
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
        NB_TEST(only_the_four_float_types_are_floating),
        NB_TEST(invalid_dtypes_are_reported_not_crashed_on),
        NB_TEST(promotion_is_torchs_for_every_pair),
        NB_TEST(promotion_spot_checks_against_torch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
