/* test_cpu_sbgemm.c - the cpu plugin's bfloat16 matmul with cblas_sbgemm and without it: run
 * as `test_cpu_sbgemm reference` under NABLA_CPU_SBGEMM=reference (the plugin's stand-in with
 * sbgemm's signature, since Debian's OpenBLAS exports none) and as `test_cpu_sbgemm 0` under
 * NABLA_CPU_SBGEMM=0 (the widened sgemm path). Both must pick the path the variable names and
 * give the float32 product of the same bfloat16 values, rounded to bfloat16. */
#include "nb_test.h"

static const char *mode;

/* bf16 tolerance of the product, against float32 sgemm of the same (exact) bf16 inputs */
static const double ATOL = 1e-2, RTOL = 1e-2;

static void the_path_is_the_one_asked_for(void **state)
{
    (void)state;
    char name[512];
    NB_ASSERT_OK(nb_device_name("cpu", name, sizeof name));
    const char *want = strcmp(mode, "reference") == 0 ? "sbgemm the plugin's reference loop"
                                                     : "sbgemm off (NABLA_CPU_SBGEMM=0)";
    if (!strstr(name, want))
        fail_msg("device name \"%s\" lacks \"%s\"", name, want);
    assert_true(nb_device_has_kernel("cpu", "matmul", NB_DTYPE_BF16));
}

/* bf16 result of op(a, b) against the float32 op of the same values */
static void check(nb_tensor *got, nb_tensor *ref32)
{
    assert_non_null(got);
    assert_non_null(ref32);
    assert_int_equal(nb_tensor_dtype(got), NB_DTYPE_BF16);
    nb_tensor *g32 = nb_to_dtype(got, NB_DTYPE_F32);
    if (!nb_allclose(g32, ref32, RTOL, ATOL)) {
        nb_print(g32);
        nb_print(ref32);
        fail_msg("bfloat16 matmul differs from float32's");
    }
    nb_release(g32);
    nb_release(got);
    nb_release(ref32);
}

static void bfloat16_products_match_float32_in_every_layout(void **state)
{
    (void)state;
    nb_manual_seed(3);
    nb_scope_begin();
    nb_opts bf = {.dtype = NB_DTYPE_BF16};
    nb_tensor *a = nb_randn(NB_SHAPE(5, 7), bf), *b = nb_randn(NB_SHAPE(7, 3), bf);
    nb_tensor *a32 = nb_to_dtype(a, NB_DTYPE_F32), *b32 = nb_to_dtype(b, NB_DTYPE_F32);
    /* contiguous, and each operand transposed (the Trans flags) */
    check(nb_keep(nb_mm(a, b)), nb_keep(nb_mm(a32, b32)));
    nb_tensor *at = nb_contiguous(nb_t(a)), *bt = nb_contiguous(nb_t(b));
    check(nb_keep(nb_mm(nb_t(at), nb_t(bt))), nb_keep(nb_mm(a32, b32)));
    /* a column-major output: out^T = b^T a^T */
    check(nb_keep(nb_t(nb_mm(nb_t(b), nb_t(a)))), nb_keep(nb_t(nb_mm(nb_t(b32), nb_t(a32)))));
    /* neither dim of unit stride: packed first */
    nb_tensor *big = nb_randn(NB_SHAPE(10, 14), bf), *big32 = nb_to_dtype(big, NB_DTYPE_F32);
    nb_tensor *s = nb_slice(nb_slice(big, 0, 0, 10, 2), 1, 0, 14, 2);
    nb_tensor *s32 = nb_slice(nb_slice(big32, 0, 0, 10, 2), 1, 0, 14, 2);
    check(nb_keep(nb_mm(s, b)), nb_keep(nb_mm(s32, b32)));
    /* batches, and a broadcast (batch stride 0) right operand */
    nb_tensor *x = nb_randn(NB_SHAPE(3, 4, 6), bf), *y = nb_randn(NB_SHAPE(3, 6, 2), bf);
    nb_tensor *w = nb_randn(NB_SHAPE(6, 2), bf);
    nb_tensor *x32 = nb_to_dtype(x, NB_DTYPE_F32), *y32 = nb_to_dtype(y, NB_DTYPE_F32);
    nb_tensor *w32 = nb_to_dtype(w, NB_DTYPE_F32);
    check(nb_keep(nb_bmm(x, y)), nb_keep(nb_bmm(x32, y32)));
    check(nb_keep(nb_matmul(x, w)), nb_keep(nb_matmul(x32, w32)));
    /* alpha and beta: the output is read back before the product is added */
    nb_tensor *c = nb_randn(NB_SHAPE(5, 3), bf), *c32 = nb_to_dtype(c, NB_DTYPE_F32);
    check(nb_keep(nb_addmm(c, a, b, 0.5, 2.0)), nb_keep(nb_addmm(c32, a32, b32, 0.5, 2.0)));
    /* k == 0: beta * c alone */
    nb_tensor *e = nb_zeros(NB_SHAPE(5, 0), bf), *f = nb_zeros(NB_SHAPE(0, 3), bf);
    check(nb_keep(nb_addmm(c, e, f, 0.5, 1.0)), nb_keep(nb_mul_scalar(c32, 0.5)));
    nb_scope_end();
    assert_int_equal(nb_last_status(), NB_OK);
}

int main(int argc, char **argv)
{
    if (argc != 2 || (strcmp(argv[1], "reference") && strcmp(argv[1], "0"))) {
        fprintf(stderr, "usage: test_cpu_sbgemm reference|0 (the value of NABLA_CPU_SBGEMM)\n");
        return 2;
    }
    mode = argv[1];
    const char *env = getenv("NABLA_CPU_SBGEMM");
    if (!env || strcmp(env, mode)) {
        fprintf(stderr, "test_cpu_sbgemm %s needs NABLA_CPU_SBGEMM=%s\n", mode, mode);
        return 2;
    }
    const struct CMUnitTest tests[] = {
        NB_TEST(the_path_is_the_one_asked_for),
        NB_TEST(bfloat16_products_match_float32_in_every_layout),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
