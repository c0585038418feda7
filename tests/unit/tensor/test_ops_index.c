/* test_ops_index.c - tests core/tensor/ops_index.c: gather, index_select, scatter_add, cat and
 * stack against plain loops, and the indexing errors. */
#include "ops_helpers.h"

#include <stdio.h>
#include <stdlib.h>

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

/* t = torch.arange(12.).reshape(3, 4); i = torch.tensor([2, 0], dtype=torch.int32):
 * torch.index_select(t, 0, i) -> rows 2 and 0; torch.gather(t, 1, torch.tensor([[3, 1]] * 3,
 * dtype=torch.int32)) -> [[3, 1], [7, 5], [11, 9]]; torch.zeros(3, 4).scatter_add(0,
 * torch.tensor([[0, 1]], dtype=torch.int32), t[:1, :2]) -> 1 at [1, 1], 0 elsewhere */
static void int32_indices_work_like_int64(void **state)
{
    (void)state;
    double v[12];
    for (int k = 0; k < 12; k++)
        v[k] = k;
    nb_tensor *t = mk(v, NB_SHAPE(3, 4), NB_DTYPE_F32);
    nb_tensor *i = mk((double[]){2, 0}, NB_SHAPE(2), NB_DTYPE_I32);
    nb_tensor *gi = mk((double[]){3, 1, 3, 1, 3, 1}, NB_SHAPE(3, 2), NB_DTYPE_I32);
    nb_tensor *si = mk((double[]){0, 1}, NB_SHAPE(1, 2), NB_DTYPE_I32);
    nb_tensor *sel = nb_index_select(t, 0, i), *g = nb_gather(t, 1, gi);
    expect_close(sel, (double[]){8, 9, 10, 11, 0, 1, 2, 3}, 8, 0, 0);
    expect_close(g, (double[]){3, 1, 7, 5, 11, 9}, 6, 0, 0);
    nb_tensor *z = nb_zeros(NB_SHAPE(3, 4), (nb_opts){0});
    nb_tensor *src = nb_slice(t, 1, 0, 2, 1), *src1 = nb_slice(src, 0, 0, 1, 1);
    nb_tensor *sa = nb_scatter_add(z, 0, si, src1);
    expect_close(sa, (double[]){0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 12, 0, 0);
    nb_tensor *rel[] = {t, i, gi, si, sel, g, z, src, src1, sa};
    for (size_t k = 0; k < sizeof rel / sizeof *rel; k++)
        nb_release(rel[k]);
}

/* The int64 copy of an int32 index is the op's own: inside an application's scope, the scope
 * must not track it, or closing the scope releases it a second time (the fuzzer found that
 * use after free under ASan). */
static void int32_indices_inside_a_scope(void **state)
{
    (void)state;
    nb_tensor *i = mk((double[]){2, 0}, NB_SHAPE(2), NB_DTYPE_I32); /* the test's own */
    nb_tensor *gi = mk((double[]){3, 1, 3, 1, 3, 1}, NB_SHAPE(3, 2), NB_DTYPE_I32);
    nb_scope_begin(); /* everything made from here to nb_scope_end belongs to the scope */
    nb_tensor *t = nb_arange(0, 12, 1, (nb_opts){0});
    nb_tensor *t2 = t ? nb_reshape(t, NB_SHAPE(3, 4)) : NULL;
    nb_tensor *z = nb_zeros(NB_SHAPE(3, 4), (nb_opts){0});
    nb_tensor *g = nb_gather(t2, 1, gi), *sel = nb_index_select(t2, 0, i);
    nb_tensor *sa = nb_scatter_add(z, 1, gi, g);
    expect_close(g, (double[]){3, 1, 7, 5, 11, 9}, 6, 0, 0);
    expect_close(sel, (double[]){8, 9, 10, 11, 0, 1, 2, 3}, 8, 0, 0);
    expect_close(sa, (double[]){0, 1, 0, 3, 0, 5, 0, 7, 0, 9, 0, 11}, 12, 0, 0);
    nb_scope_end();
    assert_int_equal(nb_last_status(), NB_OK);
    nb_release(i);
    nb_release(gi);
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
    /* torch.index_select(x, 0, torch.tensor([1], dtype=torch.uint8)) -> "index_select():
     * Expected dtype int32 or int64 for index" */
    nb_tensor *u8 = mk(ok, NB_SHAPE(2), NB_DTYPE_U8);
    assert_null(nb_index_select(t, 0, u8));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("index must be int32 or int64, got uint8");
    nb_clear_error();
    nb_release(u8);
    /* an int32 index is taken, as torch 2.x: index_select, gather and scatter_add; an int32
     * index out of range is the same error as an int64 one */
    nb_tensor *s32 = nb_index_select(t, 0, i32);
    expect_shape_dtype(s32, NB_SHAPE(2, 4), NB_DTYPE_F32);
    nb_release(s32);
    nb_tensor *far32 = mk(bad, NB_SHAPE(1, 2), NB_DTYPE_I32);
    assert_null(nb_gather(t, 1, far32));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    nb_release(far32);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(gather_index_select_and_scatter_add_match_loops),
        NB_TEST(int32_indices_work_like_int64),
        NB_TEST(int32_indices_inside_a_scope),
        NB_TEST(indexing_errors),
        NB_TEST(cat_and_stack_join_along_a_dim),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
