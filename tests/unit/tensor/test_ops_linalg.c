/* test_ops_linalg.c - tests core/tensor/ops_linalg.c: mm, bmm, matmul (1-d operands, broadcast
 * batches) and addmm against triple loops, and the errors naming shapes and dtypes. */
#include "ops_helpers.h"

#include <stdio.h>
#include <stdlib.h>

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

static nb_tensor *gc_matmul(nb_tensor *const *in, int32_t n, void *ctx)
{
    (void)n, (void)ctx;
    return nb_matmul(in[0], in[1]);
}

/* (..., n, k) @ (k, m) and @ (k): torch.matmul folds a's batch dims into its rows, so the
 * weight's gradient is one product over every row (values checked against the per-batch
 * loops, transposed a included) and the fold is differentiable twice. */
static void matmul_folds_batch_dims_of_a_into_rows(void **state)
{
    (void)state;
    double a[2 * 3 * 4], b[4 * 5], v[4], want[30];
    fill_vals(a, 24, -1, 1, 21);
    fill_vals(b, 20, -1, 1, 22);
    fill_vals(v, 4, -1, 1, 23);
    nb_tensor *a3 = mk(a, NB_SHAPE(2, 3, 4), NB_DTYPE_F64);
    nb_tensor *w = mk(b, NB_SHAPE(4, 5), NB_DTYPE_F64), *v4 = mk(v, NB_SHAPE(4), NB_DTYPE_F64);
    nb_tensor *r = nb_matmul(a3, v4); /* (2,3,4) @ (4) -> (2,3) */
    ref_bmm(a, v, want, 2, 1, 3, 4, 1);
    expect_shape_dtype(r, NB_SHAPE(2, 3), NB_DTYPE_F64);
    expect_close(r, want, 6, 1e-12, 1e-12);
    nb_release(r);
    /* a non-contiguous a: (2,4,3) transposed to (2,3,4), the same values as a3 */
    double at[24];
    for (int z = 0; z < 2; z++)
        for (int i = 0; i < 3; i++)
            for (int q = 0; q < 4; q++)
                at[z * 12 + q * 3 + i] = a[z * 12 + i * 4 + q];
    nb_tensor *a243 = mk(at, NB_SHAPE(2, 4, 3), NB_DTYPE_F64);
    nb_tensor *a3t = nb_transpose(a243, 1, 2);
    r = nb_matmul(a3t, w);
    ref_bmm(a, b, want, 2, 1, 3, 4, 5);
    expect_shape_dtype(r, NB_SHAPE(2, 3, 5), NB_DTYPE_F64);
    expect_close(r, want, 30, 1e-12, 1e-12);
    nb_release(r);
    /* the weight's gradient of sum(a @ w) is the column sums of a's rows, over both batches */
    assert_int_equal(nb_tensor_set_requires_grad(w, true), NB_OK);
    r = nb_matmul(a3, w);
    nb_tensor *s = nb_sum(r, NULL, 0, false);
    assert_int_equal(nb_backward(s, NULL, (nb_backward_opts){0}), NB_OK);
    nb_tensor *gw = nb_tensor_grad(w);
    double gwant[20];
    for (int q = 0; q < 4; q++)
        for (int j = 0; j < 5; j++) {
            double c = 0;
            for (int row = 0; row < 6; row++)
                c += a[row * 4 + q];
            gwant[q * 5 + j] = c;
        }
    expect_close(gw, gwant, 20, 1e-12, 1e-12);
    nb_release(gw);
    nb_release(s);
    nb_release(r);
    assert_int_equal(nb_tensor_set_requires_grad(a3, true), NB_OK);
    assert_int_equal(nb_tensor_set_requires_grad(v4, true), NB_OK);
    nb_tensor *in2[2] = {a3, w}, *in1[2] = {a3, v4};
    assert_int_equal(nb_gradcheck(gc_matmul, NULL, in2, 2, 1e-6, 1e-8, 1e-6), NB_OK);
    assert_int_equal(nb_gradcheck(gc_matmul, NULL, in1, 2, 1e-6, 1e-8, 1e-6), NB_OK);
    assert_int_equal(nb_gradgradcheck(gc_matmul, NULL, in2, 2, 1e-6, 1e-8, 1e-6), NB_OK);
    /* a mismatch still names both shapes */
    nb_tensor *w35 = mk(b, NB_SHAPE(3, 5), NB_DTYPE_F64);
    assert_null(nb_matmul(a3, w35));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("[2, 3, 4]");
    NB_ASSERT_ERROR_HAS("[3, 5]");
    nb_clear_error();
    nb_tensor *rel[] = {a3, w, v4, a243, a3t, w35};
    for (size_t k = 0; k < 6; k++)
        nb_release(rel[k]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(mm_and_bmm_match_triple_loops),
        NB_TEST(matmul_follows_torch_rules_for_1d_and_batches),
        NB_TEST(matmul_errors_name_shapes_and_dtypes),
        NB_TEST(addmm_scales_and_broadcasts_the_input),
        NB_TEST(matmul_folds_batch_dims_of_a_into_rows),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
