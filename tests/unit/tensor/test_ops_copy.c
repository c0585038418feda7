/* test_ops_copy.c - tests core/tensor/ops_copy.c: copy_ broadcasting and casting between
 * dtypes, to_dtype converting as torch does, and clone into new contiguous storage. */
#include "nb_test.h"

#include <stdlib.h>

/* All elements of t as doubles (through a float64 copy on the device). */
static void read_d(const nb_tensor *t, double *out, int64_t n)
{
    assert_non_null(t);
    assert_int_equal(nb_tensor_numel(t), n);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    assert_non_null(d);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, out, (size_t)n * sizeof *out));
    nb_release(d);
}

static void assert_shape(const nb_tensor *t, nb_shape want)
{
    assert_non_null(t);
    nb_shape s = nb_tensor_shape(t);
    assert_int_equal(s.ndim, want.ndim);
    for (int32_t d = 0; d < want.ndim; d++)
        assert_int_equal(s.dims[d], want.dims[d]);
}

static void tensor_copy_broadcasts_and_casts(void **state)
{
    (void)state;
    int32_t row[3] = {1, 2, 3};
    nb_tensor *src = nb_from_data(row, NB_SHAPE(3), (nb_opts){NB_DTYPE_I32});
    nb_tensor *dst = nb_zeros(NB_SHAPE(2, 3), (nb_opts){NB_DTYPE_F64});
    NB_ASSERT_OK(nb_tensor_copy_(dst, src));
    double v[6];
    read_d(dst, v, 6);
    for (int k = 0; k < 6; k++)
        assert_true(v[k] == row[k % 3]);
    nb_tensor *wrong = nb_zeros(NB_SHAPE(4), (nb_opts){0});
    assert_int_equal(nb_tensor_copy_(dst, wrong), NB_SHAPE_MISMATCH);
    nb_clear_error();
    assert_int_equal(nb_tensor_copy_(src, dst), NB_SHAPE_MISMATCH); /* [2,3] does not fit [3] */
    NB_ASSERT_ERROR_HAS("[2, 3]");
    nb_release(wrong);
    nb_release(src);
    nb_release(dst);
}

/* ---- dtype and device moves, clone, comparison ---- */

static void to_dtype_converts_like_torch(void **state)
{
    (void)state;
    float x[6] = {2.7f, -2.7f, 0, 0.5f, -0.0f, 300};
    nb_tensor *t = nb_from_data(x, NB_SHAPE(6), (nb_opts){0});
    nb_tensor *i = nb_to_dtype(t, NB_DTYPE_I32), *b = nb_to_dtype(t, NB_DTYPE_BOOL);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    int32_t iv[6];
    uint8_t bv[6];
    NB_ASSERT_OK(nb_tensor_copy_to_host(i, iv, sizeof iv));
    NB_ASSERT_OK(nb_tensor_copy_to_host(b, bv, sizeof bv));
    /* torch: truncation toward zero; nonzero is True */
    int32_t want_i[6] = {2, -2, 0, 0, 0, 300};
    uint8_t want_b[6] = {1, 1, 0, 1, 0, 1};
    assert_memory_equal(iv, want_i, sizeof iv);
    assert_memory_equal(bv, want_b, sizeof bv);
    double dv[6];
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, dv, sizeof dv));
    for (int k = 0; k < 6; k++)
        assert_true(dv[k] == (double)x[k]);
    nb_tensor *same = nb_to_dtype(t, NB_DTYPE_F32);
    assert_ptr_equal(same, t);
    nb_release(same);
    assert_null(nb_to_dtype(t, NB_DTYPE_COUNT));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    nb_release(t);
    nb_release(i);
    nb_release(b);
    nb_release(d);
}

static void clone_copies_into_new_contiguous_storage(void **state)
{
    (void)state;
    float x[6] = {1, 2, 3, 4, 5, 6};
    nb_tensor *t = nb_from_data(x, NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *tt = nb_t(t), *c = nb_clone(tt);
    assert_false(nb_tensor_shares_storage(c, t));
    assert_true(nb_tensor_is_contiguous(c));
    assert_shape(c, NB_SHAPE(3, 2));
    assert_true(nb_equal(c, tt));
    NB_ASSERT_OK(nb_fill_(c, 0)); /* the original is untouched */
    double v[6];
    read_d(t, v, 6);
    for (int k = 0; k < 6; k++)
        assert_true(v[k] == x[k]);
    nb_release(t);
    nb_release(tt);
    nb_release(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(tensor_copy_broadcasts_and_casts),
        NB_TEST(to_dtype_converts_like_torch),
        NB_TEST(clone_copies_into_new_contiguous_storage),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
