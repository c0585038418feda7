/* test_ops_extra.c - tests core/tensor/ops_extra.c and core/tensor/ops_sort.c: logsumexp, cumsum, masked_fill,
 * tril/triu, rpow, outer, einsum, sort/argsort/topk. Expected values from PyTorch 2.15 (cpu),
 * with the Python that printed them next to each test. */
#include "nn_extra_helpers.h"

/* torch.logsumexp(torch.tensor([[1., 2., 3.], [-1000., -1000., -999.]], dtype=torch.float64), 1)
 * -> [3.4076059644, -998.4485552861]; torch.logsumexp(torch.tensor([-inf, -inf]), 0) -> -inf */
static void logsumexp_matches_pytorch_without_overflow(void **state)
{
    (void)state;
    nb_tensor *z = tf64(NB_SHAPE(2, 3), ARR(1, 2, 3, -1000, -1000, -999), true);
    nb_tensor *l = nb_logsumexp(z, (int32_t[]){1}, 1, false);
    expect_values(l, ARR(3.4076059644, -998.4485552861), 2, 1e-10);
    nb_tensor *g = grad_of_sum(l, z); /* softmax rows */
    nb_tensor *sm = nb_softmax(z, 1);
    assert_true(nb_allclose(g, sm, 1e-12, 1e-12));
    nb_tensor *k = nb_logsumexp(z, (int32_t[]){1}, 1, true);
    assert_int_equal(nb_tensor_ndim(k), 2);
    nb_tensor *ni = tf64(NB_SHAPE(2), ARR(-INFINITY, -INFINITY), false);
    nb_tensor *li = nb_logsumexp(ni, NULL, 0, false);
    expect_values(li, ARR(-INFINITY), 1, 0);
    /* torch.logsumexp(torch.zeros(0), 0) -> -inf; torch.logsumexp(torch.zeros(3, 0), 1) ->
     * [-inf, -inf, -inf]; torch.logsumexp(torch.zeros(0, 3), 0) -> [-inf, -inf, -inf] */
    nb_tensor *e0 = nb_zeros(NB_SHAPE(0), (nb_opts){0});
    nb_tensor *e30 = nb_zeros(NB_SHAPE(3, 0), (nb_opts){0});
    nb_tensor *e03 = nb_zeros(NB_SHAPE(0, 3), (nb_opts){0});
    nb_tensor *l0 = nb_logsumexp(e0, (int32_t[]){0}, 1, false);
    nb_tensor *l30 = nb_logsumexp(e30, (int32_t[]){1}, 1, false);
    nb_tensor *l03 = nb_logsumexp(e03, (int32_t[]){0}, 1, true);
    assert_int_equal(nb_tensor_ndim(l0), 0);
    expect_values(l0, ARR(-INFINITY), 1, 0);
    expect_values(l30, ARR(-INFINITY, -INFINITY, -INFINITY), 3, 0);
    assert_int_equal(nb_tensor_ndim(l03), 2);
    expect_values(l03, ARR(-INFINITY, -INFINITY, -INFINITY), 3, 0);
    nb_tensor *em[] = {e0, e30, e03, l0, l30, l03};
    for (size_t q = 0; q < sizeof em / sizeof *em; q++)
        nb_release(em[q]);
    nb_release(li);
    nb_release(ni);
    nb_release(k);
    nb_release(sm);
    nb_release(g);
    nb_release(l);
    nb_release(z);
}

/* torch.cumsum(torch.tensor([[1., 2, 3], [4, 5, 6]]), 0) and (.., 1) */
static void cumsum_runs_along_either_dim_and_keeps_integers(void **state)
{
    (void)state;
    nb_tensor *x = tf64(NB_SHAPE(2, 3), ARR(1, 2, 3, 4, 5, 6), true);
    nb_tensor *c0 = nb_cumsum(x, 0), *c1 = nb_cumsum(x, -1);
    expect_values(c0, ARR(1, 2, 3, 5, 7, 9), 6, 0);
    expect_values(c1, ARR(1, 3, 6, 4, 9, 15), 6, 0);
    nb_tensor *g = grad_of_sum(c1, x); /* reversed cumsum of ones */
    expect_values(g, ARR(3, 2, 1, 3, 2, 1), 6, 0);
    nb_tensor *i = ti64(NB_SHAPE(3), (int64_t[]){1, 2, 3});
    nb_tensor *ci = nb_cumsum(i, 0);
    assert_int_equal(nb_tensor_dtype(ci), NB_DTYPE_I64);
    expect_values(ci, ARR(1, 3, 6), 3, 0);
    assert_null(nb_cumsum(x, 2));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    nb_release(ci);
    nb_release(i);
    nb_release(g);
    nb_release(c1);
    nb_release(c0);
    nb_release(x);
}

/* torch.tril(torch.arange(12.).reshape(3, 4), -1); torch.triu(.., 1) */
static void tril_triu_and_masked_fill(void **state)
{
    (void)state;
    double v[12];
    for (int k = 0; k < 12; k++)
        v[k] = k;
    nb_tensor *x = tf64(NB_SHAPE(3, 4), v, true);
    nb_tensor *lo = nb_tril(x, -1), *up = nb_triu(x, 1);
    expect_values(lo, ARR(0, 0, 0, 0, 4, 0, 0, 0, 8, 9, 0, 0), 12, 0);
    expect_values(up, ARR(0, 1, 2, 3, 0, 0, 6, 7, 0, 0, 0, 11), 12, 0);
    nb_tensor *g = grad_of_sum(lo, x);
    expect_values(g, ARR(0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0), 12, 0);
    bool mb[4] = {true, false, false, true};
    nb_tensor *m = nb_from_data(mb, NB_SHAPE(4), (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *f = nb_masked_fill(x, m, -1);
    expect_values(f, ARR(-1, 1, 2, -1, -1, 5, 6, -1, -1, 9, 10, -1), 12, 0);
    nb_tensor *bad = nb_from_data(mb, NB_SHAPE(1, 4, 1), (nb_opts){.dtype = NB_DTYPE_BOOL});
    assert_null(nb_masked_fill(x, bad, 0));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_clear_error();
    nb_tensor *v1 = tf64(NB_SHAPE(3), ARR(1, 2, 3), false);
    assert_null(nb_tril(v1, 0));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_clear_error();
    nb_release(v1);
    nb_release(bad);
    nb_release(f);
    nb_release(m);
    nb_release(g);
    nb_release(up);
    nb_release(lo);
    nb_release(x);
}

/* e = torch.tensor([0., 1., 2., -1.5], dtype=torch.float64, requires_grad=True); y = 2.5 ** e
 * g, = torch.autograd.grad(y.sum(), e, create_graph=True); gg, = torch.autograd.grad(g.sum(), e)
 * 2 ** torch.tensor([1, 2, 3]) -> [2, 4, 8] (int64) */
static void rpow_matches_pytorch_to_second_order(void **state)
{
    (void)state;
    nb_tensor *e = tf64(NB_SHAPE(4), ARR(0, 1, 2, -1.5), true);
    nb_tensor *y = nb_rpow_scalar(e, 2.5);
    expect_values(y, ARR(1.0, 2.5, 6.25, 0.2529822128), 4, 1e-10);
    assert_string_equal(nb_grad_fn_name(nb_tensor_grad_fn(y)), "PowBackward2");
    nb_tensor *s = nb_sum(y, NULL, 0, false), *g = NULL, *gg = NULL;
    NB_ASSERT_OK_(nb_grad(&s, NULL, 1, &e, 1, (nb_grad_opts){.create_graph = true}, &g));
    expect_values(g, ARR(0.9162907319, 2.2907268297, 5.7268170742, 0.2318052569), 4, 1e-10);
    nb_tensor *s2 = nb_sum(g, NULL, 0, false);
    NB_ASSERT_OK_(nb_grad(&s2, NULL, 1, &e, 1, (nb_grad_opts){0}, &gg));
    expect_values(gg, ARR(0.8395887053, 2.0989717633, 5.2474294082, 0.2124010085), 4, 1e-10);
    nb_tensor *i = ti64(NB_SHAPE(3), (int64_t[]){1, 2, 3});
    nb_tensor *pi = nb_rpow_scalar(i, 2);
    assert_int_equal(nb_tensor_dtype(pi), NB_DTYPE_I64);
    expect_values(pi, ARR(2, 4, 8), 3, 0);
    nb_release(pi);
    nb_release(i);
    nb_release(gg);
    nb_release(s2);
    nb_release(g);
    nb_release(s);
    nb_release(y);
    nb_release(e);
}

/* A = torch.arange(6.).reshape(2, 3); B = torch.arange(12.).reshape(3, 4)
 * einsum("ij,jk->ik", A, B), ("ij,kj->ik", A, A), ("bi,bj->bij", A, A), ("ij,ij->", A, A),
 * ("ij,k->jk", A, torch.tensor([1., 2])) */
static void einsum_two_operand_forms_match_pytorch(void **state)
{
    (void)state;
    double a[6], b[12];
    for (int k = 0; k < 12; k++)
        b[k] = k, a[k % 6] = k % 6;
    nb_tensor *A = tf64(NB_SHAPE(2, 3), a, true), *B = tf64(NB_SHAPE(3, 4), b, false);
    nb_tensor *v = tf64(NB_SHAPE(2), ARR(1, 2), false);
    nb_tensor *r1 = nb_einsum("ij,jk->ik", A, B);
    expect_values(r1, ARR(20, 23, 26, 29, 56, 68, 80, 92), 8, 0);
    nb_tensor *r2 = nb_einsum("ij,kj->ik", A, A);
    expect_values(r2, ARR(5, 14, 14, 50), 4, 0);
    nb_tensor *r3 = nb_einsum("bi,bj->bij", A, A);
    expect_values(r3, ARR(0, 0, 0, 0, 1, 2, 0, 2, 4, 9, 12, 15, 12, 16, 20, 15, 20, 25), 18, 0);
    nb_tensor *r4 = nb_einsum("ij, ij -> ", A, A);
    assert_int_equal(nb_tensor_ndim(r4), 0);
    expect_values(r4, ARR(55), 1, 0);
    nb_tensor *r5 = nb_einsum("ij,k->jk", A, v);
    expect_values(r5, ARR(3, 6, 5, 10, 7, 14), 6, 0);
    nb_tensor *g = grad_of_sum(r4, A); /* d sum(A*A) = 2A */
    expect_values(g, ARR(0, 2, 4, 6, 8, 10), 6, 0);
    /* the transformer's forms */
    nb_tensor *q = nb_randn(NB_SHAPE(2, 3, 5, 4), (nb_opts){.dtype = NB_DTYPE_F64});
    nb_tensor *kk = nb_randn(NB_SHAPE(2, 3, 6, 4), (nb_opts){.dtype = NB_DTYPE_F64});
    nb_tensor *sc = nb_einsum("bhqd,bhkd->bhqk", q, kk);
    nb_tensor *kt = nb_transpose(kk, -2, -1), *ref = nb_matmul(q, kt);
    assert_true(nb_allclose(sc, ref, 1e-12, 1e-12));
    assert_null(nb_einsum("ii,ij->j", A, B));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    assert_null(nb_einsum("ij,jk->ik", A, A));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "'j'"));
    nb_clear_error();
    assert_null(nb_einsum("ij,jk", A, B));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_tensor *o = nb_outer(v, v);
    expect_values(o, ARR(1, 2, 2, 4), 4, 0);
    nb_release(o);
    nb_release(ref);
    nb_release(kt);
    nb_release(sc);
    nb_release(kk);
    nb_release(q);
    nb_release(g);
    nb_release(r5);
    nb_release(r4);
    nb_release(r3);
    nb_release(r2);
    nb_release(r1);
    nb_release(v);
    nb_release(B);
    nb_release(A);
}

/* s = torch.tensor([[3., 1., nan, 2., 1.], [0., -1., 5., 5., 4.]])
 * torch.sort(s, dim=1, stable=True), (.., descending=True); torch.argsort(s, dim=0, stable=True);
 * torch.topk(torch.tensor([[3., 1., 7., 2., 5.]]), 3) */
static void sort_argsort_topk_match_pytorch(void **state)
{
    (void)state;
    nb_tensor *s = nb_from_data((float[]){3, 1, NAN, 2, 1, 0, -1, 5, 5, 4}, NB_SHAPE(2, 5),
                                (nb_opts){.requires_grad = true});
    nb_tensor *v = NULL, *i = NULL;
    NB_ASSERT_OK_(nb_sort(s, 1, false, &v, &i));
    expect_values(v, ARR(1, 1, 2, 3, NAN, -1, 0, 4, 5, 5), 10, 0);
    expect_values(i, ARR(1, 4, 3, 0, 2, 1, 0, 4, 2, 3), 10, 0);
    assert_int_equal(nb_tensor_dtype(i), NB_DTYPE_I64);
    nb_release(v);
    nb_release(i);
    NB_ASSERT_OK_(nb_sort(s, -1, true, &v, &i));
    expect_values(v, ARR(NAN, 3, 2, 1, 1, 5, 5, 4, 0, -1), 10, 0);
    expect_values(i, ARR(2, 0, 3, 1, 4, 2, 3, 4, 0, 1), 10, 0);
    nb_tensor *a = nb_argsort(s, 0, false);
    expect_values(a, ARR(1, 1, 1, 0, 0, 0, 0, 0, 1, 1), 10, 0);
    nb_release(a);
    nb_tensor *g = grad_of_sum(v, s); /* a permutation: every element once */
    expect_values(g, ARR(1, 1, 1, 1, 1, 1, 1, 1, 1, 1), 10, 0);
    nb_release(g);
    nb_release(v);
    nb_release(i);
    nb_tensor *t = nb_from_data((float[]){3, 1, 7, 2, 5}, NB_SHAPE(1, 5), (nb_opts){0});
    NB_ASSERT_OK_(nb_topk(t, 3, 1, true, &v, &i));
    expect_values(v, ARR(7, 5, 3), 3, 0);
    expect_values(i, ARR(2, 4, 0), 3, 0);
    nb_release(v);
    nb_release(i);
    NB_ASSERT_OK_(nb_topk(t, 2, -1, false, &v, NULL));
    expect_values(v, ARR(1, 2), 2, 0);
    nb_release(v);
    assert_int_equal(nb_topk(t, 6, 1, true, &v, &i), NB_INDEX_OUT_OF_RANGE);
    assert_null(v);
    assert_non_null(strstr(nb_last_error(), "k=6"));
    nb_clear_error();
    nb_release(t);
    nb_release(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(logsumexp_matches_pytorch_without_overflow),
        NB_TEST(cumsum_runs_along_either_dim_and_keeps_integers),
        NB_TEST(tril_triu_and_masked_fill),
        NB_TEST(rpow_matches_pytorch_to_second_order),
        NB_TEST(einsum_two_operand_forms_match_pytorch),
        NB_TEST(sort_argsort_topk_match_pytorch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
