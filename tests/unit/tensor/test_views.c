/* test_views.c - tests core/tensor/views.c: every view shares its base's storage (a write through one
 * is read through the other), geometry (shapes, strides, offsets) against hand-computed
 * values, reshape copying only when it must, contiguous, and the errors for bad dims. */
#include "nb_test.h"

#include <stdlib.h>

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
    if (s.ndim != want.ndim)
        fail_msg("ndim %d, expected %d", s.ndim, want.ndim);
    for (int32_t d = 0; d < want.ndim; d++)
        if (s.dims[d] != want.dims[d])
            fail_msg("dim %d is %lld, expected %lld", d, (long long)s.dims[d],
                     (long long)want.dims[d]);
}

static void assert_strides(const nb_tensor *t, nb_shape want)
{
    for (int32_t d = 0; d < want.ndim; d++)
        if (nb_tensor_stride(t, d) != want.dims[d])
            fail_msg("stride %d is %lld, expected %lld", d, (long long)nb_tensor_stride(t, d),
                     (long long)want.dims[d]);
}

/* arange(n) as float32 with the given shape: element values equal their flat index. */
static nb_tensor *iota(nb_shape shape)
{
    int64_t n = 1;
    for (int32_t d = 0; d < shape.ndim; d++)
        n *= shape.dims[d];
    nb_tensor *a = nb_arange(0, (double)n, 1, (nb_opts){0});
    nb_tensor *r = nb_reshape(a, shape);
    nb_release(a);
    assert_non_null(r);
    return r;
}

/* Reads the view and checks element (flat k) against base[index(k)]. */
static void check_view(const nb_tensor *v, int64_t n, int64_t (*index)(int64_t k))
{
    double *got = malloc((size_t)n * sizeof *got);
    read_d(v, got, n);
    for (int64_t k = 0; k < n; k++)
        if (got[k] != (double)index(k))
            fail_msg("view element %lld is %g, expected base element %lld", (long long)k,
                     got[k], (long long)index(k));
    free(got);
}

/* ---- view ---- */

static void view_shares_storage_with_base(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 6));
    nb_tensor *v = nb_view(t, NB_SHAPE(3, -1));
    assert_shape(v, NB_SHAPE(3, 4));
    assert_strides(v, NB_SHAPE(4, 1));
    assert_true(nb_tensor_shares_storage(t, v));
    /* write through the view, read through the base */
    nb_tensor *row = nb_select(v, 0, 1); /* elements 4..7 */
    NB_ASSERT_OK(nb_fill_(row, -1));
    double got[12];
    read_d(t, got, 12);
    for (int k = 0; k < 12; k++)
        assert_true(got[k] == (k >= 4 && k < 8 ? -1 : k));
    /* and the other way round */
    NB_ASSERT_OK(nb_fill_(t, 3));
    read_d(v, got, 12);
    for (int k = 0; k < 12; k++)
        assert_true(got[k] == 3);
    assert_int_equal(nb_tensor_version(v), nb_tensor_version(t)); /* one counter per storage */
    nb_release(row);
    nb_release(v);
    nb_release(t);
}

static void view_of_transposed_tensor_asks_for_reshape(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 3)), *tt = nb_t(t);
    assert_null(nb_view(tt, NB_SHAPE(6)));
    assert_int_equal(nb_last_status(), NB_VIEW_STRIDES);
    NB_ASSERT_ERROR_HAS("use nb_reshape");
    NB_ASSERT_ERROR_HAS("[3, 2]");
    nb_clear_error();
    /* splitting or merging within a contiguous run is still a view */
    nb_tensor *ok = nb_view(tt, NB_SHAPE(3, 1, 2));
    assert_non_null(ok);
    assert_true(nb_tensor_shares_storage(ok, t));
    nb_release(ok);
    nb_release(tt);
    nb_release(t);
}

static void view_errors_name_the_shapes(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 3));
    assert_null(nb_view(t, NB_SHAPE(4, 2)));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("shape [4, 2] is invalid for input of size 6");
    nb_clear_error();
    assert_null(nb_view(t, NB_SHAPE(-1, -1)));
    NB_ASSERT_ERROR_HAS("only one dimension can be inferred");
    nb_clear_error();
    assert_null(nb_view(t, NB_SHAPE(-1, 4)));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_clear_error();
    assert_null(nb_view(t, NB_SHAPE(-2, 3)));
    NB_ASSERT_ERROR_HAS("invalid shape dimension -2");
    nb_clear_error();
    assert_null(nb_view(NULL, NB_SHAPE(6)));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_release(t);
}

/* ---- reshape ---- */

static int64_t transposed_2x3(int64_t k) { return (k % 2) * 3 + k / 2; }

static void reshape_shares_storage_when_it_can_and_copies_when_it_must(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 3));
    nb_tensor *r = nb_reshape(t, NB_SHAPE(3, 2));
    assert_true(nb_tensor_shares_storage(r, t));
    nb_tensor *tt = nb_t(t);
    nb_tensor *c = nb_reshape(tt, NB_SHAPE(6)); /* transposed: needs a copy */
    assert_false(nb_tensor_shares_storage(c, t));
    assert_true(nb_tensor_is_contiguous(c));
    check_view(c, 6, transposed_2x3);
    nb_tensor *s = nb_reshape(tt, NB_SHAPE(3, 2)); /* same shape: still a view */
    assert_true(nb_tensor_shares_storage(s, t));
    nb_tensor *z = nb_reshape(t, NB_SHAPE_SCALAR);
    assert_null(z);
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    nb_release(r);
    nb_release(tt);
    nb_release(c);
    nb_release(s);
    nb_release(t);
}

static void reshape_of_scalar_and_empty(void **state)
{
    (void)state;
    nb_tensor *s = nb_scalar(5, (nb_opts){0});
    nb_tensor *r = nb_reshape(s, NB_SHAPE(1, 1));
    assert_shape(r, NB_SHAPE(1, 1));
    nb_tensor *back = nb_reshape(r, NB_SHAPE_SCALAR);
    assert_int_equal(nb_tensor_ndim(back), 0);
    nb_tensor *e = nb_zeros(NB_SHAPE(0, 4), (nb_opts){0});
    nb_tensor *e2 = nb_reshape(e, NB_SHAPE(2, 0, -1));
    assert_null(e2); /* -1 is ambiguous with a 0 dim: torch refuses too */
    nb_clear_error();
    e2 = nb_reshape(e, NB_SHAPE(4, 0));
    assert_shape(e2, NB_SHAPE(4, 0));
    nb_release(s);
    nb_release(r);
    nb_release(back);
    nb_release(e);
    nb_release(e2);
}

/* ---- transpose / permute ---- */

static int64_t permuted_234(int64_t k)
{
    /* out (4, 2, 3) = in (2, 3, 4).permute(2, 0, 1): out[a][b][c] = in[b][c][a] */
    int64_t a = k / 6, b = (k / 3) % 2, c = k % 3;
    return b * 12 + c * 4 + a;
}

static void transpose_and_permute_swap_strides(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 3, 4));
    nb_tensor *tr = nb_transpose(t, 0, -1);
    assert_shape(tr, NB_SHAPE(4, 3, 2));
    assert_strides(tr, NB_SHAPE(1, 4, 12));
    assert_false(nb_tensor_is_contiguous(tr));
    assert_true(nb_tensor_shares_storage(tr, t));
    int32_t p[3] = {2, 0, 1};
    nb_tensor *pm = nb_permute(t, p, 3);
    assert_shape(pm, NB_SHAPE(4, 2, 3));
    assert_strides(pm, NB_SHAPE(1, 12, 4));
    check_view(pm, 24, permuted_234);
    nb_tensor *c = nb_contiguous(pm);
    assert_true(nb_tensor_is_contiguous(c));
    assert_false(nb_tensor_shares_storage(c, t));
    check_view(c, 24, permuted_234);
    nb_tensor *same = nb_contiguous(t);
    assert_ptr_equal(same, t); /* already contiguous: itself, retained */
    nb_release(same);
    nb_release(tr);
    nb_release(pm);
    nb_release(c);
    nb_release(t);
}

static void transpose_and_permute_errors(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 3));
    assert_null(nb_transpose(t, 0, 2));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    NB_ASSERT_ERROR_HAS("dimension 2 out of range for a 2-d tensor (expected -2 to 1)");
    nb_clear_error();
    int32_t dup[2] = {0, 0}, three[3] = {0, 1, 2}, bad[2] = {0, 5};
    assert_null(nb_permute(t, dup, 2));
    NB_ASSERT_ERROR_HAS("appears more than once");
    nb_clear_error();
    assert_null(nb_permute(t, three, 3));
    NB_ASSERT_ERROR_HAS("input has 2, permutation has 3");
    nb_clear_error();
    assert_null(nb_permute(t, bad, 2));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    nb_tensor *t3 = iota(NB_SHAPE(2, 2, 2));
    assert_null(nb_t(t3));
    NB_ASSERT_ERROR_HAS("<= 2 dimensions");
    nb_clear_error();
    nb_tensor *v = iota(NB_SHAPE(3)), *vt = nb_t(v); /* 1-d: unchanged */
    assert_shape(vt, NB_SHAPE(3));
    nb_release(v);
    nb_release(vt);
    nb_release(t3);
    nb_release(t);
}

/* ---- squeeze / unsqueeze / flatten ---- */

static void squeeze_and_unsqueeze_change_only_unit_dims(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 1, 3, 1));
    nb_tensor *s1 = nb_squeeze(t, 1), *s0 = nb_squeeze(t, 0), *sa = nb_squeeze_all(t);
    assert_shape(s1, NB_SHAPE(2, 3, 1));
    assert_shape(s0, NB_SHAPE(2, 1, 3, 1)); /* size 2: unchanged, like torch */
    assert_shape(sa, NB_SHAPE(2, 3));
    assert_strides(sa, NB_SHAPE(3, 1));
    nb_tensor *u = nb_unsqueeze(sa, 0), *ue = nb_unsqueeze(sa, -1), *um = nb_unsqueeze(sa, 1);
    assert_shape(u, NB_SHAPE(1, 2, 3));
    assert_shape(ue, NB_SHAPE(2, 3, 1));
    assert_shape(um, NB_SHAPE(2, 1, 3));
    assert_true(nb_tensor_shares_storage(um, t));
    assert_null(nb_unsqueeze(sa, 3));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    assert_null(nb_squeeze(t, 4));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    nb_tensor *m8 = nb_zeros(NB_SHAPE(1, 1, 1, 1, 1, 1, 1, 1), (nb_opts){0});
    assert_null(nb_unsqueeze(m8, 0));
    NB_ASSERT_ERROR_HAS("at most 8 dims");
    nb_release(m8);
    nb_tensor *r[] = {s1, s0, sa, u, ue, um, t};
    for (size_t k = 0; k < sizeof r / sizeof *r; k++)
        nb_release(r[k]);
}

static void flatten_merges_a_range_of_dims(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 3, 4, 5));
    nb_tensor *a = nb_flatten(t, 0, -1), *b = nb_flatten(t, 1, 2), *c = nb_flatten(t, 2, 2);
    assert_shape(a, NB_SHAPE(120));
    assert_shape(b, NB_SHAPE(2, 12, 5));
    assert_shape(c, NB_SHAPE(2, 3, 4, 5));
    assert_true(nb_tensor_shares_storage(a, t));
    assert_null(nb_flatten(t, 2, 1));
    NB_ASSERT_ERROR_HAS("start_dim 2 cannot come after end_dim 1");
    nb_clear_error();
    nb_tensor *s = nb_scalar(1, (nb_opts){0}), *fs = nb_flatten(s, 0, -1);
    assert_shape(fs, NB_SHAPE(1)); /* torch.flatten of a 0-d tensor is 1-d */
    nb_release(s);
    nb_release(fs);
    nb_release(a);
    nb_release(b);
    nb_release(c);
    nb_release(t);
}

/* ---- expand ---- */

static int64_t expanded_row(int64_t k) { return k % 3; }

static void expand_broadcasts_with_stride_zero(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(1, 3));
    nb_tensor *e = nb_expand(t, NB_SHAPE(4, -1));
    assert_shape(e, NB_SHAPE(4, 3));
    assert_strides(e, NB_SHAPE(0, 1));
    assert_true(nb_tensor_shares_storage(e, t));
    check_view(e, 12, expanded_row);
    nb_tensor *e3 = nb_expand(t, NB_SHAPE(2, 4, 3)); /* a new leading dim */
    assert_strides(e3, NB_SHAPE(0, 0, 1));
    check_view(e3, 24, expanded_row);
    nb_tensor *c = nb_contiguous(e3);
    check_view(c, 24, expanded_row);
    assert_null(nb_expand(t, NB_SHAPE(4, 2)));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("expanded size of the tensor (2) must match the existing size (3)");
    nb_clear_error();
    assert_null(nb_expand(t, NB_SHAPE(3)));
    NB_ASSERT_ERROR_HAS("number of sizes provided (1)");
    nb_clear_error();
    assert_null(nb_expand(t, NB_SHAPE(-1, 1, 3)));
    NB_ASSERT_ERROR_HAS("-1 is not allowed in a leading");
    nb_release(c);
    nb_release(e3);
    nb_release(e);
    nb_release(t);
}

/* ---- narrow / slice / select ---- */

static int64_t narrowed(int64_t k) { return (k / 2) * 5 + 1 + k % 2; }  /* cols 1..2 of (4,5) */
static int64_t stepped(int64_t k) { return (k / 2) * 5 + k % 2 * 3; }   /* cols 0,3 */
static int64_t selected(int64_t k) { return 2 * 5 + k; }                 /* row 2 */
static int64_t column(int64_t k) { return k * 5 + 4; }                   /* col -1 */
static int64_t rows_back(int64_t k) { return (1 + 2 * (k / 5)) * 5 + k % 5; } /* rows 1, 3 */

static void narrow_slice_and_select_offset_into_the_base(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(4, 5));
    nb_tensor *n = nb_narrow(t, 1, 1, 2);
    assert_shape(n, NB_SHAPE(4, 2));
    assert_int_equal(nb_tensor_offset(n), 1);
    assert_strides(n, NB_SHAPE(5, 1));
    check_view(n, 8, narrowed);
    nb_tensor *s = nb_slice(t, 1, 0, 5, 3);
    assert_shape(s, NB_SHAPE(4, 2));
    assert_strides(s, NB_SHAPE(5, 3));
    check_view(s, 8, stepped);
    nb_tensor *sel = nb_select(t, 0, 2);
    assert_shape(sel, NB_SHAPE(5));
    assert_int_equal(nb_tensor_offset(sel), 10);
    check_view(sel, 5, selected);
    nb_tensor *col = nb_select(t, -1, -1);
    assert_shape(col, NB_SHAPE(4));
    check_view(col, 4, column);
    nb_tensor *rb = nb_slice(t, 0, 1, 100, 2); /* end clamps, like Python */
    assert_shape(rb, NB_SHAPE(2, 5));
    check_view(rb, 10, rows_back);
    nb_tensor *neg = nb_slice(t, 0, -3, -1, 1); /* rows 1, 2 */
    assert_shape(neg, NB_SHAPE(2, 5));
    assert_int_equal(nb_tensor_offset(neg), 5);
    nb_tensor *none = nb_slice(t, 0, 3, 1, 1); /* empty, not an error */
    assert_shape(none, NB_SHAPE(0, 5));
    /* a view of a view adds up the offsets */
    nb_tensor *vv = nb_narrow(sel, 0, 2, 3);
    assert_int_equal(nb_tensor_offset(vv), 12);
    nb_tensor *r[] = {n, s, sel, col, rb, neg, none, vv, t};
    for (size_t k = 0; k < sizeof r / sizeof *r; k++)
        nb_release(r[k]);
}

static void narrow_slice_and_select_errors(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(4, 5)), *s = nb_scalar(1, (nb_opts){0});
    assert_null(nb_narrow(t, 1, 3, 3));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    NB_ASSERT_ERROR_HAS("start 3 + length 3 exceeds dimension 1 of size 5");
    nb_clear_error();
    assert_null(nb_narrow(t, 0, 0, -1));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    assert_null(nb_slice(t, 0, 0, 4, 0));
    NB_ASSERT_ERROR_HAS("step must be positive, got 0");
    nb_clear_error();
    assert_null(nb_select(t, 0, 4));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    NB_ASSERT_ERROR_HAS("index 4 out of range for tensor of size [4, 5] at dimension 0");
    nb_clear_error();
    assert_null(nb_select(t, 0, -5));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    assert_null(nb_select(t, 2, 0));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    assert_null(nb_select(s, 0, 0));
    NB_ASSERT_ERROR_HAS("cannot be applied to a 0-dim tensor");
    nb_clear_error();
    assert_null(nb_narrow(s, 0, 0, 1));
    NB_ASSERT_ERROR_HAS("0-dim");
    nb_clear_error();
    assert_null(nb_slice(s, 0, 0, 1, 1));
    NB_ASSERT_ERROR_HAS("0-dim");
    nb_release(t);
    nb_release(s);
}

/* Shape arithmetic from the caller is checked: an element count that wraps to 0 once let a
 * view of an empty tensor claim 2^64 elements, and select on it read far outside its storage. */
static void views_whose_size_overflows_are_errors(void **state)
{
    (void)state;
    const int64_t big = (int64_t)1 << 32;
    nb_tensor *e = nb_zeros(NB_SHAPE(0), (nb_opts){0}), *one = nb_ones(NB_SHAPE(1), (nb_opts){0});
    assert_null(nb_view(e, NB_SHAPE(big, big)));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("view: shape [4294967296, 4294967296] is too large");
    nb_clear_error();
    assert_null(nb_reshape(e, NB_SHAPE(0, big, big))); /* numel 0, strides overflow */
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    assert_null(nb_view(e, NB_SHAPE(big, big, -1)));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    assert_null(nb_expand(one, NB_SHAPE(big, big)));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("expand: shape [4294967296, 4294967296] is too large");
    nb_clear_error();
    assert_null(nb_expand(one, NB_SHAPE(0, big, big)));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    /* expand to a huge size that fits is a view of stride 0 */
    nb_tensor *x = nb_expand(one, NB_SHAPE(big, 2));
    assert_non_null(x);
    assert_int_equal(nb_tensor_numel(x), 2 * big);
    nb_tensor *sel = nb_select(x, 0, big - 1);
    double v[2];
    read_d(sel, v, 2);
    assert_true(v[0] == 1 && v[1] == 1);
    nb_release(sel);
    nb_release(x);
    nb_release(e);
    nb_release(one);
}

static void narrow_and_slice_near_int64_max_do_not_overflow(void **state)
{
    (void)state;
    float d[4] = {1, 2, 3, 4};
    nb_tensor *t = nb_from_data(d, NB_SHAPE(4), (nb_opts){0});
    assert_null(nb_narrow(t, 0, 1, INT64_MAX));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    NB_ASSERT_ERROR_HAS("length 9223372036854775807 exceeds dimension 0 of size 4");
    nb_clear_error();
    assert_null(nb_narrow(t, 0, INT64_MAX, 1));
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    nb_clear_error();
    /* slices clamp like Python's: [1:INT64_MAX:INT64_MAX] is the one element 2 */
    nb_tensor *a = nb_slice(t, 0, 1, INT64_MAX, INT64_MAX);
    assert_non_null(a);
    assert_int_equal(nb_tensor_numel(a), 1);
    double v[4];
    read_d(a, v, 1);
    assert_true(v[0] == 2);
    /* found by fuzz_ops: the size-1 dim kept stride INT64_MAX, which the plugin's byte strides
     * overflowed on; any stride serves a size-1 dim, so it keeps one that fits */
    assert_true(nb_tensor_stride(a, 0) <= INT64_MAX / 16);
    nb_tensor *na = nb_rsub_scalar(a, 1);
    read_d(na, v, 1);
    assert_true(v[0] == -1);
    nb_release(na);
    nb_tensor *b = nb_slice(t, 0, INT64_MIN, INT64_MAX, 3); /* [0, 3] */
    assert_int_equal(nb_tensor_numel(b), 2);
    read_d(b, v, 2);
    assert_true(v[0] == 1 && v[1] == 4);
    nb_tensor *c = nb_slice(t, 0, INT64_MAX - 1, INT64_MAX, 1); /* empty */
    assert_int_equal(nb_tensor_numel(c), 0);
    nb_tensor *g = nb_slice(b, 0, 0, INT64_MAX, INT64_MAX); /* a slice of a strided slice */
    assert_int_equal(nb_tensor_numel(g), 1);
    read_d(g, v, 1);
    assert_true(v[0] == 1);
    nb_release(a);
    nb_release(b);
    nb_release(c);
    nb_release(g);
    nb_release(t);
}

static void writes_through_a_strided_view_land_in_the_base(void **state)
{
    (void)state;
    nb_tensor *t = nb_zeros(NB_SHAPE(4, 5), (nb_opts){0});
    nb_tensor *s = nb_slice(t, 1, 1, 5, 2); /* cols 1 and 3 */
    nb_tensor *o = nb_ones(NB_SHAPE(4, 2), (nb_opts){0});
    NB_ASSERT_OK(nb_tensor_copy_(s, o));
    double v[20];
    read_d(t, v, 20);
    for (int k = 0; k < 20; k++)
        assert_true(v[k] == (k % 5 == 1 || k % 5 == 3));
    nb_release(s);
    nb_release(o);
    nb_release(t);
}

static void detach_shares_storage_without_grad(void **state)
{
    (void)state;
    nb_tensor *t = nb_ones(NB_SHAPE(3), (nb_opts){.requires_grad = true});
    nb_tensor *d = nb_detach(t);
    assert_true(nb_tensor_shares_storage(d, t));
    assert_false(nb_tensor_requires_grad(d));
    assert_true(nb_tensor_is_leaf(d));
    nb_release(d);
    nb_release(t);
}

static void views_of_null_keep_the_first_error(void **state)
{
    (void)state;
    nb_tensor *t = iota(NB_SHAPE(2, 3));
    nb_tensor *r = nb_unsqueeze(nb_transpose(t, 0, 7), 0); /* the inner call fails */
    assert_null(r);
    assert_int_equal(nb_last_status(), NB_INDEX_OUT_OF_RANGE);
    NB_ASSERT_ERROR_HAS("transpose");
    nb_release(t);
}

/* A view and its base share one version counter and one history (PyTorch 2.x):
 * b = torch.arange(6.).reshape(2, 3) * 1; v = b[1]; v.mul_(10) -> b[1] is [30, 40, 50],
 * b._version == v._version; with x requiring grad, b.grad_fn -> <CopySlices> and every other
 * view of b (taken before) now has grad_fn <AsStridedBackward0>. */
static void in_place_through_a_view_writes_and_rebases_the_base(void **state)
{
    (void)state;
    nb_tensor *b = iota(NB_SHAPE(2, 3)), *v = nb_select(b, 0, 1), *w = nb_select(b, 1, 0);
    int64_t v0 = nb_tensor_version(b);
    NB_ASSERT_OK(nb_mul_scalar_(v, 10));
    assert_true(nb_tensor_version(b) > v0);
    assert_int_equal(nb_tensor_version(b), nb_tensor_version(v));
    double got[6];
    nb_tensor *d = nb_to_dtype(b, NB_DTYPE_F64);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, got, sizeof got));
    nb_release(d);
    assert_true(got[2] == 2 && got[3] == 30 && got[5] == 50);
    assert_null(nb_tensor_grad_fn(b)); /* nothing requires grad: no history */
    /* with grad */
    nb_tensor *x = nb_ones(NB_SHAPE(2, 3), (nb_opts){.requires_grad = true});
    nb_tensor *a = nb_mul_scalar(x, 1), *r0 = nb_select(a, 0, 0), *r1 = nb_select(a, 0, 1);
    assert_string_equal(nb_grad_fn_name(nb_tensor_grad_fn(r0)), "SelectBackward0");
    NB_ASSERT_OK(nb_add_scalar_(r1, 1));
    assert_string_equal(nb_grad_fn_name(nb_tensor_grad_fn(a)), "CopySlices");
    assert_string_equal(nb_grad_fn_name(nb_tensor_grad_fn(r0)), "AsStridedBackward0");
    assert_string_equal(nb_grad_fn_name(nb_tensor_grad_fn(r1)), "AsStridedBackward0");
    /* a detached alias is not a differentiable view: writing it leaves a's history alone */
    nb_tensor *det = nb_detach(a);
    NB_ASSERT_OK(nb_fill_(det, 0));
    assert_string_equal(nb_grad_fn_name(nb_tensor_grad_fn(a)), "CopySlices");
    nb_tensor *r[] = {det, r1, r0, a, x, w, v, b};
    for (size_t k = 0; k < 8; k++)
        nb_release(r[k]);
}

static void writes_into_an_expanded_view_are_refused(void **state)
{
    (void)state;
    /* torch.zeros(1, 3).expand(2, 3).add_(1) -> RuntimeError: unsupported operation: more than
     * one element of the written-to tensor refers to a single memory location. */
    nb_tensor *b = iota(NB_SHAPE(1, 3)), *e = nb_expand(b, NB_SHAPE(2, 3));
    assert_int_equal(nb_add_scalar_(e, 1), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("refers to a single memory location");
    int64_t v0 = nb_tensor_version(b);
    assert_int_equal(nb_fill_(e, 1), NB_INVALID_ARGUMENT);
    assert_int_equal(nb_tensor_version(b), v0);
    /* a size-1 dim of stride 0 is no overlap: writing a row of the expand is fine */
    nb_tensor *row = nb_select(e, 0, 1);
    NB_ASSERT_OK(nb_fill_(row, 7));
    nb_release(row);
    nb_release(e);
    nb_release(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(view_shares_storage_with_base),
        NB_TEST(view_of_transposed_tensor_asks_for_reshape),
        NB_TEST(view_errors_name_the_shapes),
        NB_TEST(reshape_shares_storage_when_it_can_and_copies_when_it_must),
        NB_TEST(reshape_of_scalar_and_empty),
        NB_TEST(transpose_and_permute_swap_strides),
        NB_TEST(transpose_and_permute_errors),
        NB_TEST(squeeze_and_unsqueeze_change_only_unit_dims),
        NB_TEST(flatten_merges_a_range_of_dims),
        NB_TEST(expand_broadcasts_with_stride_zero),
        NB_TEST(narrow_slice_and_select_offset_into_the_base),
        NB_TEST(narrow_slice_and_select_errors),
        NB_TEST(views_whose_size_overflows_are_errors),
        NB_TEST(narrow_and_slice_near_int64_max_do_not_overflow),
        NB_TEST(writes_through_a_strided_view_land_in_the_base),
        NB_TEST(detach_shares_storage_without_grad),
        NB_TEST(views_of_null_keep_the_first_error),
        NB_TEST(in_place_through_a_view_writes_and_rebases_the_base),
        NB_TEST(writes_into_an_expanded_view_are_refused),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
