/* test_embedding.c - tests core/nn/embedding.c: row lookup, the padding row's gradient and the
 * out-of-range error. Expected values come from PyTorch 2.15
 * (float64, cpu); the Python that printed them is next to each block. */
#include "nn_extra_helpers.h"

/* ------------------------------------------------------------------ embedding */

/* w = torch.arange(12, dtype=torch.float64).reshape(4, 3).requires_grad_()
 * y = F.embedding(torch.tensor([[0, 2], [2, 3]]), w, padding_idx=2)
 * (y * torch.arange(12, dtype=torch.float64).reshape(2, 2, 3)).sum().backward() */
static void embedding_looks_up_rows_and_skips_the_padding_gradient(void **state)
{
    (void)state;
    double v[12], m[12];
    for (int k = 0; k < 12; k++)
        v[k] = m[k] = k;
    nb_tensor *w = tf64(NB_SHAPE(4, 3), v, true);
    nb_tensor *idx = ti64(NB_SHAPE(2, 2), (int64_t[]){0, 2, 2, 3});
    nb_tensor *y = nb_embedding(idx, w, 2);
    assert_int_equal(nb_tensor_ndim(y), 3);
    expect_values(y, ARR(0, 1, 2, 6, 7, 8, 6, 7, 8, 9, 10, 11), 12, 0);
    nb_tensor *mt = tf64(NB_SHAPE(2, 2, 3), m, false);
    nb_tensor *p = nb_mul(y, mt);
    nb_tensor *g = grad_of_sum(p, w);
    expect_values(g, ARR(0, 1, 2, 0, 0, 0, 0, 0, 0, 9, 10, 11), 12, 0);
    /* -1 counts from the end */
    nb_tensor *y2 = nb_embedding(idx, w, -1);
    assert_non_null(y2);
    nb_release(y2);
    nb_release(g);
    nb_release(p);
    nb_release(mt);
    nb_release(y);
    nb_release(idx);
    nb_release(w);
}

static void embedding_index_out_of_range_names_index_and_table_size(void **state)
{
    (void)state;
    nb_tensor *w = nb_zeros(NB_SHAPE(10, 3), (nb_opts){0});
    nb_tensor *idx = ti64(NB_SHAPE(3), (int64_t[]){1, 12, 3});
    assert_null(nb_embedding(idx, w, NB_NO_PADDING_IDX));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(nb_last_error(), "index 12"));
    assert_non_null(strstr(nb_last_error(), "10 rows"));
    nb_clear_error();
    nb_tensor *neg = ti64(NB_SHAPE(2), (int64_t[]){-1, 0});
    assert_null(nb_embedding(neg, w, NB_NO_PADDING_IDX));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(nb_last_error(), "index -1"));
    nb_clear_error();
    nb_tensor *f = nb_zeros(NB_SHAPE(2), (nb_opts){0});
    assert_null(nb_embedding(f, w, NB_NO_PADDING_IDX));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    nb_clear_error();
    assert_null(nb_embedding(neg, w, 10));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    nb_release(f);
    nb_release(neg);
    nb_release(idx);
    nb_release(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(embedding_looks_up_rows_and_skips_the_padding_gradient),
        NB_TEST(embedding_index_out_of_range_names_index_and_table_size),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
