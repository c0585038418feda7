/* test_ops_reduce.c - tests core/tensor/ops_reduce.c: sum/mean/prod/amax/amin over dims with
 * keepdim, integer sums, var/std/norm, argmax/argmin and max/min over a dim, and their errors. */
#include "ops_helpers.h"

#include <stdio.h>
#include <stdlib.h>

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
    assert_true(isinf(got) && got > 0); /* N - correction <= 0: 2 / max(0, ...) */
    nb_release(v);
    nb_release(w);
    nb_release(t);
}

/* torch.var(torch.tensor([1., 3.]), correction=2) -> inf (and correction=3: inf);
 * torch.std(torch.tensor([1., 3.]), correction=5) -> inf;
 * torch.var(torch.tensor([2., 2.]), correction=2) -> nan; torch.std(torch.tensor([4.])) -> nan */
static void var_without_degrees_of_freedom_is_inf_or_nan(void **state)
{
    (void)state;
    nb_tensor *t = nb_from_data((float[]){1, 3}, NB_SHAPE(2), (nb_opts){0});
    nb_tensor *c = nb_from_data((float[]){2, 2}, NB_SHAPE(2), (nb_opts){0});
    nb_tensor *one = nb_from_data((float[]){4}, NB_SHAPE(1), (nb_opts){0});
    nb_tensor *r[] = {nb_var(t, NULL, 0, 2, false), nb_var(t, NULL, 0, 3, false),
                      nb_std(t, NULL, 0, 5, false), nb_var(c, NULL, 0, 2, false),
                      nb_std(one, NULL, 0, 1, false)};
    double want[] = {INFINITY, INFINITY, INFINITY, NAN, NAN};
    for (size_t k = 0; k < 5; k++) {
        expect_shape_dtype(r[k], NB_SHAPE_SCALAR, NB_DTYPE_F32);
        double got;
        NB_ASSERT_OK(nb_item(r[k], &got));
        if (isnan(want[k]) ? !isnan(got) : got != want[k])
            fail_msg("case %zu: got %g, expected %g", k, got, want[k]);
        nb_release(r[k]);
    }
    nb_release(one);
    nb_release(c);
    nb_release(t);
}

/* torch.linalg.vector_norm(x, ord) for ord 0 (count of nonzeros), -inf (min |x|), -1 and 0.5:
 * x = torch.tensor([-7., -3., -1., 0., 1., 5.]) -> 5.0, 0.0, 0.0, 74.1987533569336;
 * y = torch.tensor([[2., -4.], [0., 0.5]], requires_grad=True):
 * vector_norm(y, 0, dim=1) -> [2., 1.] (a count: torch's backward gives no gradient, y.grad
 * stays None; Nabla's is zeros); vector_norm(y, -inf, dim=1) -> [2., 0.];
 * vector_norm(y, -2, dim=1) -> [1.7888543820, 0.]; vector_norm(torch.zeros(0), 0) -> 0. */
static void norm_takes_zero_and_negative_orders(void **state)
{
    (void)state;
    nb_tensor *x = mk((double[]){-7, -3, -1, 0, 1, 5}, NB_SHAPE(6), NB_DTYPE_F32);
    double ps[] = {0, -INFINITY, -1, 0.5}, want[] = {5, 0, 0, 74.1987533569336};
    for (int k = 0; k < 4; k++) {
        nb_tensor *n = nb_norm(x, ps[k], NULL, 0, false);
        expect_shape_dtype(n, NB_SHAPE_SCALAR, NB_DTYPE_F32);
        expect_close(n, &want[k], 1, 1e-6, 0);
        nb_release(n);
    }
    nb_tensor *y = mk((double[]){2, -4, 0, 0.5}, NB_SHAPE(2, 2), NB_DTYPE_F64);
    NB_ASSERT_OK(nb_tensor_set_requires_grad(y, true));
    int32_t d1[1] = {1};
    nb_tensor *n0 = nb_norm(y, 0, d1, 1, false), *ni = nb_norm(y, -INFINITY, d1, 1, false);
    nb_tensor *n2 = nb_norm(y, -2, d1, 1, false);
    expect_close(n0, (double[]){2, 1}, 2, 0, 0);
    expect_close(ni, (double[]){2, 0}, 2, 0, 0);
    expect_close(n2, (double[]){1.7888543820, 0}, 2, 1e-9, 0);
    nb_tensor *s0 = nb_sum(n0, NULL, 0, false);
    NB_ASSERT_OK(nb_backward(s0, NULL, (nb_backward_opts){0}));
    nb_tensor *g = nb_tensor_grad(y);
    expect_close(g, (double[]){0, 0, 0, 0}, 4, 0, 0);
    nb_tensor *e = nb_zeros(NB_SHAPE(0), (nb_opts){0}), *ne = nb_norm(e, 0, NULL, 0, false);
    expect_close(ne, (double[]){0}, 1, 0, 0);
    assert_null(nb_norm(x, NAN, NULL, 0, false));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_tensor *all[] = {x, y, n0, ni, n2, s0, g, e, ne};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        nb_release(all[k]);
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

/* sum/prod over every dim of a narrow integer tensor: int64 as in PyTorch, widened a slice at
 * a time (the peak is not 8 bytes an element), with the same value as a sum of the int64
 * copy; a product whose int64 value wraps wraps the same way. A strided view too. */
static void narrow_integer_sums_widen_a_slice_at_a_time(void **state)
{
    (void)state;
    const int64_t n = ((int64_t)1 << 25) + 5; /* 8 slices and a tail */
    nb_tensor *m = nb_full(NB_SHAPE(n), 1, (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *at = nb_narrow(m, 0, n / 3, 7);
    NB_ASSERT_OK(nb_fill_(at, 0));
    int64_t base = nb_memory_allocated();
    nb_memory_reset_peak();
    nb_tensor *s = nb_sum(m, NULL, 0, false);
    assert_true(nb_memory_peak() - base < 2 * n); /* a slice is n / 8 int64s, a full copy 8n */
    assert_int_equal(nb_tensor_dtype(s), NB_DTYPE_I64);
    assert_int_equal(nb_tensor_ndim(s), 0);
    double v;
    NB_ASSERT_OK(nb_item(s, &v));
    assert_true(v == (double)(n - 7));
    nb_tensor *k = nb_sum(m, NULL, 0, true);
    assert_int_equal(nb_tensor_ndim(k), 1);
    NB_ASSERT_OK(nb_item(k, &v));
    assert_true(v == (double)(n - 7));
    /* 3^(n/2) wraps in int64: the sliced product must wrap exactly as the int64 copy's */
    nb_tensor *u = nb_full(NB_SHAPE(n / 2), 3, (nb_opts){.dtype = NB_DTYPE_U8});
    nb_tensor *w = nb_to_dtype(u, NB_DTYPE_I64);
    nb_tensor *p1 = nb_prod(u, NULL, 0, false), *p2 = nb_prod(w, NULL, 0, false);
    int64_t a = 0, b = 1;
    NB_ASSERT_OK(nb_tensor_copy_to_host(p1, &a, sizeof a));
    NB_ASSERT_OK(nb_tensor_copy_to_host(p2, &b, sizeof b));
    assert_true(a == b);
    nb_tensor *odd = nb_slice(m, 0, 1, n, 2), *so = nb_sum(odd, NULL, 0, false);
    nb_tensor *oc = nb_to_dtype(odd, NB_DTYPE_I64), *soc = nb_sum(oc, NULL, 0, false);
    double x, y;
    NB_ASSERT_OK(nb_item(so, &x));
    NB_ASSERT_OK(nb_item(soc, &y));
    assert_true(x == y);
    nb_tensor *all[] = {soc, oc, so, odd, p2, p1, w, u, k, s, at, m};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        nb_release(all[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(reductions_over_all_dims_some_dims_and_keepdim),
        NB_TEST(integer_sums_are_int64_and_mean_needs_float),
        NB_TEST(reduction_errors_and_empty_inputs),
        NB_TEST(reduction_dims_must_be_a_list_or_none),
        NB_TEST(var_with_extreme_corrections_is_defined),
        NB_TEST(var_without_degrees_of_freedom_is_inf_or_nan),
        NB_TEST(norm_takes_zero_and_negative_orders),
        NB_TEST(var_std_and_norm_match_the_formulas),
        NB_TEST(argmax_picks_the_first_of_ties),
        NB_TEST(max_dim_and_min_dim_give_values_and_indices),
        NB_TEST(narrow_integer_sums_widen_a_slice_at_a_time),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
