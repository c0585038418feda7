/* test_tensor.c - tests core/tensor/tensor.c: every creation function, the generator (seeded,
 * reproducible, the Philox numbers the plugin ABI promises), inspection, data in and out,
 * to(device), allclose/equal, and the errors for bad shapes and buffers. */
#include "nb_test.h"

#include "nabla_plugin.h" /* nb_philox_uniform: the numbers every device must produce */

#include <stdlib.h>

#ifdef __SANITIZE_ADDRESS__
/* The huge-allocation tests expect NULL from the allocator, which ASan turns into an abort
 * unless told otherwise; ASAN_OPTIONS from the environment still applies on top. */
const char *__asan_default_options(void);
__attribute__((visibility("default"), used)) const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}
#endif

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

/* ---- creation from data ---- */

static void from_data_round_trips_every_dtype(void **state)
{
    (void)state;
    float f[6] = {1, -2.5f, 3, 4, 5e-3f, 6};
    double d[2] = {1e300, -0.0};
    int32_t i[3] = {INT32_MIN, 0, INT32_MAX};
    int64_t l[2] = {INT64_MIN, (int64_t)1 << 60};
    uint8_t b[4] = {0, 1, 1, 0}, u[3] = {0, 128, 255};
    struct {
        const void *data;
        size_t bytes;
        nb_shape shape;
        nb_dtype dtype;
    } cases[] = {
        {f, sizeof f, NB_SHAPE(2, 3), NB_DTYPE_F32}, {d, sizeof d, NB_SHAPE(2), NB_DTYPE_F64},
        {i, sizeof i, NB_SHAPE(3, 1), NB_DTYPE_I32}, {l, sizeof l, NB_SHAPE(1, 2), NB_DTYPE_I64},
        {b, sizeof b, NB_SHAPE(2, 2), NB_DTYPE_BOOL}, {u, sizeof u, NB_SHAPE(3), NB_DTYPE_U8},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        nb_tensor *t = nb_from_data(cases[k].data, cases[k].shape, (nb_opts){cases[k].dtype});
        assert_shape(t, cases[k].shape);
        assert_int_equal(nb_tensor_dtype(t), cases[k].dtype);
        assert_true(nb_tensor_is_contiguous(t));
        assert_int_equal(nb_tensor_offset(t), 0);
        char back[64];
        NB_ASSERT_OK(nb_tensor_copy_to_host(t, back, cases[k].bytes));
        assert_memory_equal(back, cases[k].data, cases[k].bytes);
        nb_release(t);
    }
}

static void inspection_reports_geometry(void **state)
{
    (void)state;
    nb_tensor *t = nb_zeros(NB_SHAPE(2, 3, 4), (nb_opts){0});
    assert_int_equal(nb_tensor_ndim(t), 3);
    assert_int_equal(nb_tensor_numel(t), 24);
    assert_int_equal(nb_tensor_size(t, 0), 2);
    assert_int_equal(nb_tensor_size(t, -1), 4);
    assert_int_equal(nb_tensor_size(t, 3), -1);
    assert_int_equal(nb_tensor_stride(t, 0), 12);
    assert_int_equal(nb_tensor_stride(t, 1), 4);
    assert_int_equal(nb_tensor_stride(t, -1), 1);
    assert_int_equal(nb_tensor_dtype(t), NB_DTYPE_F32);
    assert_false(nb_tensor_requires_grad(t));
    assert_true(nb_tensor_is_leaf(t));
    /* NULL reads as "nothing" rather than crashing */
    assert_int_equal(nb_tensor_ndim(NULL), -1);
    assert_int_equal(nb_tensor_numel(NULL), -1);
    assert_int_equal(nb_tensor_dtype(NULL), NB_DTYPE_COUNT);
    assert_false(nb_tensor_is_contiguous(NULL));
    assert_false(nb_tensor_shares_storage(t, NULL));
    nb_release(t);
}

static void from_data_null_is_an_error(void **state)
{
    (void)state;
    assert_null(nb_from_data(NULL, NB_SHAPE(2), (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
}

static void retain_and_release_count_references(void **state)
{
    (void)state;
    nb_tensor *t = nb_ones(NB_SHAPE(2), (nb_opts){0});
    assert_ptr_equal(nb_retain(t), t);
    nb_release(t);
    assert_int_equal(nb_live_tensors(), 1);
    nb_release(t);
    assert_int_equal(nb_live_tensors(), 0);
    assert_null(nb_retain(NULL));
}

/* ---- from_blob ---- */

static int releases;
static void count_release(void *ctx)
{
    releases++;
    *(int *)ctx += 1;
}

static void from_blob_shares_memory_and_releases_once(void **state)
{
    (void)state;
    float blob[6] = {0, 1, 2, 3, 4, 5};
    int calls = 0;
    releases = 0;
    nb_tensor *t = nb_from_blob(blob, NB_SHAPE(2, 3), (nb_opts){0}, count_release, &calls);
    assert_non_null(t);
    blob[4] = 40; /* the tensor sees the caller's writes */
    double v[6];
    read_d(t, v, 6);
    assert_true(v[4] == 40);
    NB_ASSERT_OK(nb_fill_(t, 7)); /* and the caller sees the tensor's */
    assert_true(blob[0] == 7 && blob[5] == 7);
    nb_tensor *view = nb_transpose(t, 0, 1);
    nb_release(t);
    assert_int_equal(calls, 0); /* a view still uses the memory */
    nb_release(view);
    assert_int_equal(calls, 1);
    assert_int_equal(releases, 1);
}

static void from_blob_without_release_and_with_bad_input(void **state)
{
    (void)state;
    int64_t blob[3] = {1, 2, 3};
    nb_tensor *t = nb_from_blob(blob, NB_SHAPE(3), (nb_opts){NB_DTYPE_I64}, NULL, NULL);
    assert_non_null(t);
    double v[3];
    read_d(t, v, 3);
    assert_true(v[2] == 3);
    nb_release(t);
    int calls = 0;
    assert_null(nb_from_blob(NULL, NB_SHAPE(3), (nb_opts){0}, count_release, &calls));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_null(nb_from_blob(blob, NB_SHAPE(-3), (nb_opts){0}, count_release, &calls));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    assert_int_equal(calls, 0); /* on failure the caller keeps ownership */
}

/* ---- constant creation ---- */

static void check_all(const nb_tensor *t, int64_t n, double want)
{
    double *v = malloc((size_t)n * sizeof *v);
    read_d(t, v, n);
    for (int64_t k = 0; k < n; k++)
        if (v[k] != want)
            fail_msg("element %lld is %g, expected %g", (long long)k, v[k], want);
    free(v);
}

static void constant_creators_fill_with_their_value(void **state)
{
    (void)state;
    nb_dtype dts[] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_U8,
                      NB_DTYPE_BOOL};
    for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
        nb_opts o = {dts[k]};
        nb_tensor *z = nb_zeros(NB_SHAPE(3, 5), o), *one = nb_ones(NB_SHAPE(7), o);
        nb_tensor *f = nb_full(NB_SHAPE(2, 2, 2), dts[k] == NB_DTYPE_BOOL ? 1 : 7, o);
        nb_tensor *e = nb_empty(NB_SHAPE(4), o), *s = nb_scalar(1, o);
        assert_int_equal(nb_tensor_dtype(z), dts[k]);
        assert_int_equal(nb_tensor_dtype(e), dts[k]);
        assert_shape(e, NB_SHAPE(4));
        check_all(z, 15, 0);
        check_all(one, 7, 1);
        check_all(f, 8, dts[k] == NB_DTYPE_BOOL ? 1 : 7);
        assert_int_equal(nb_tensor_ndim(s), 0);
        assert_int_equal(nb_tensor_numel(s), 1);
        check_all(s, 1, 1);
        nb_release(z);
        nb_release(one);
        nb_release(f);
        nb_release(e);
        nb_release(s);
    }
    nb_tensor *h = nb_full(NB_SHAPE(3), -0.25, (nb_opts){0});
    check_all(h, 3, -0.25);
    nb_release(h);
}

static void empty_shapes_are_fine(void **state)
{
    (void)state;
    nb_tensor *t = nb_zeros(NB_SHAPE(0, 3), (nb_opts){0});
    assert_non_null(t);
    assert_int_equal(nb_tensor_numel(t), 0);
    char none[1];
    NB_ASSERT_OK(nb_tensor_copy_to_host(t, none, 0)); /* nothing to copy */
    nb_tensor *o = nb_ones_like(t);
    assert_shape(o, NB_SHAPE(0, 3));
    nb_release(t);
    nb_release(o);
}

static void arange_and_linspace_match_torch(void **state)
{
    (void)state;
    double v[8];
    nb_tensor *a = nb_arange(0, 5, 1, (nb_opts){NB_DTYPE_I64});
    assert_shape(a, NB_SHAPE(5));
    assert_int_equal(nb_tensor_dtype(a), NB_DTYPE_I64);
    read_d(a, v, 5);
    for (int k = 0; k < 5; k++)
        assert_true(v[k] == k);
    nb_release(a);
    /* torch.arange(1, 2, 0.3) has ceil(1 / 0.3) = 4 elements */
    a = nb_arange(1, 2, 0.3, (nb_opts){NB_DTYPE_F64});
    read_d(a, v, 4);
    for (int k = 0; k < 4; k++)
        assert_true(fabs(v[k] - (1 + 0.3 * k)) < 1e-12);
    nb_release(a);
    a = nb_arange(5, 0, -2, (nb_opts){0}); /* 5, 3, 1 */
    read_d(a, v, 3);
    assert_true(v[0] == 5 && v[1] == 3 && v[2] == 1);
    nb_release(a);

    nb_tensor *l = nb_linspace(-1, 1, 5, (nb_opts){0});
    read_d(l, v, 5);
    for (int k = 0; k < 5; k++)
        assert_true(fabs(v[k] - (-1 + 0.5 * k)) < 1e-7);
    nb_release(l);
    l = nb_linspace(3, 9, 1, (nb_opts){0});
    read_d(l, v, 1);
    assert_true(v[0] == 3);
    nb_release(l);
    l = nb_linspace(3, 9, 0, (nb_opts){0});
    assert_shape(l, NB_SHAPE(0));
    nb_release(l);
}

static void arange_and_linspace_reject_impossible_ranges(void **state)
{
    (void)state;
    assert_null(nb_arange(0, 5, 0, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("cannot go from 0 to 5 in steps of 0");
    nb_clear_error();
    assert_null(nb_arange(5, 0, 1, (nb_opts){0}));
    NB_ASSERT_ERROR_HAS("cannot go from 5 to 0");
    nb_clear_error();
    assert_null(nb_arange(0, INFINITY, 1, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    assert_null(nb_linspace(0, 1, -1, (nb_opts){0}));
    NB_ASSERT_ERROR_HAS("steps must be non-negative, got -1");
}

static void eye_has_ones_on_the_diagonal(void **state)
{
    (void)state;
    int64_t shapes[][2] = {{3, 0}, {2, 4}, {4, 2}, {1, 1}};
    for (size_t s = 0; s < 4; s++) {
        int64_t n = shapes[s][0], m = shapes[s][1] ? shapes[s][1] : n;
        nb_tensor *e = nb_eye(shapes[s][0], shapes[s][1], (nb_opts){NB_DTYPE_I32});
        assert_shape(e, NB_SHAPE(n, m));
        assert_int_equal(nb_tensor_dtype(e), NB_DTYPE_I32);
        double v[16];
        read_d(e, v, n * m);
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < m; c++)
                assert_true(v[r * m + c] == (r == c));
        nb_release(e);
    }
    assert_null(nb_eye(-1, 0, (nb_opts){0}));
    NB_ASSERT_ERROR_HAS("non-negative");
}

/* ---- random ---- */

static void rand_is_uniform_in_unit_interval_and_reproducible(void **state)
{
    (void)state;
    enum { N = 10000 };
    static double a[N], b[N], c[N];
    nb_manual_seed(1234);
    assert_int_equal(nb_initial_seed(), 1234);
    nb_tensor *t = nb_rand(NB_SHAPE(100, 100), (nb_opts){0});
    read_d(t, a, N);
    nb_release(t);
    nb_manual_seed(1234);
    t = nb_rand(NB_SHAPE(N), (nb_opts){0});
    read_d(t, b, N);
    nb_release(t);
    nb_manual_seed(4321);
    t = nb_rand(NB_SHAPE(N), (nb_opts){0});
    read_d(t, c, N);
    nb_release(t);
    double sum = 0;
    int differ = 0;
    for (int k = 0; k < N; k++) {
        assert_true(a[k] >= 0 && a[k] < 1);
        assert_true(a[k] == b[k]); /* same seed, same numbers, whatever the shape */
        differ += a[k] != c[k];
        sum += a[k];
    }
    assert_true(differ > N * 0.99);
    assert_true(fabs(sum / N - 0.5) < 0.02); /* 4 sigma for N = 10^4 */
}

static void consecutive_calls_give_different_numbers(void **state)
{
    (void)state;
    double a[64], b[64];
    nb_manual_seed(7);
    nb_tensor *t = nb_rand(NB_SHAPE(64), (nb_opts){0}), *u = nb_rand(NB_SHAPE(64), (nb_opts){0});
    read_d(t, a, 64);
    read_d(u, b, 64);
    assert_memory_not_equal(a, b, sizeof a);
    nb_release(t);
    nb_release(u);
}

static void rand_produces_the_philox_numbers_of_the_abi(void **state)
{
    (void)state;
    double v[32];
    nb_manual_seed(42);
    nb_tensor *t = nb_rand(NB_SHAPE(32), (nb_opts){0});       /* offset 0, float32 */
    nb_tensor *u = nb_rand(NB_SHAPE(32), (nb_opts){NB_DTYPE_F64}); /* offset 1 */
    nb_tensor *n = nb_randn(NB_SHAPE(32), (nb_opts){NB_DTYPE_F64}); /* offset 2 */
    read_d(t, v, 32);
    for (uint64_t k = 0; k < 32; k++)
        assert_true(v[k] == (float)nb_philox_uniform(42, 0, k, 0));
    read_d(u, v, 32);
    for (uint64_t k = 0; k < 32; k++)
        assert_true(v[k] == nb_philox_uniform(42, 1, k, 1));
    read_d(n, v, 32);
    for (uint64_t k = 0; k < 32; k++) {
        double u1, u2;
        nb_philox_normal_parts(42, 2, k, &u1, &u2);
        double z = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
        assert_true(fabs(v[k] - z) <= 1e-12 * (1 + fabs(z)));
    }
    nb_release(t);
    nb_release(u);
    nb_release(n);
}

static void randn_has_mean_zero_and_std_one(void **state)
{
    (void)state;
    enum { N = 100000 };
    static double v[N];
    nb_manual_seed(99);
    nb_tensor *t = nb_randn(NB_SHAPE(N), (nb_opts){0});
    read_d(t, v, N);
    nb_release(t);
    double s = 0, s2 = 0;
    for (int k = 0; k < N; k++)
        s += v[k];
    double mean = s / N;
    for (int k = 0; k < N; k++)
        s2 += (v[k] - mean) * (v[k] - mean);
    double sd = sqrt(s2 / (N - 1));
    /* standard errors: 1/sqrt(N) = 0.003 for the mean, 1/sqrt(2N) = 0.002 for the std */
    assert_true(fabs(mean) < 0.015);
    assert_true(fabs(sd - 1) < 0.01);
}

static void normal_and_uniform_scale_and_shift(void **state)
{
    (void)state;
    enum { N = 20000 };
    static double v[N];
    nb_tensor *t = nb_normal(3, 2, NB_SHAPE(N), (nb_opts){NB_DTYPE_F64});
    read_d(t, v, N);
    nb_release(t);
    double s = 0, s2 = 0;
    for (int k = 0; k < N; k++)
        s += v[k], s2 += v[k] * v[k];
    double mean = s / N, sd = sqrt(s2 / N - mean * mean);
    assert_true(fabs(mean - 3) < 0.06);
    assert_true(fabs(sd - 2) < 0.05);
    t = nb_uniform(-2, 5, NB_SHAPE(N), (nb_opts){0});
    read_d(t, v, N);
    nb_release(t);
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < N; k++)
        lo = fmin(lo, v[k]), hi = fmax(hi, v[k]);
    assert_true(lo >= -2 && lo < -1.9 && hi < 5 && hi > 4.9);
    assert_null(nb_uniform(1, 0, NB_SHAPE(2), (nb_opts){0}));
    NB_ASSERT_ERROR_HAS("low 1 must not exceed high 0");
    nb_clear_error();
    assert_null(nb_normal(0, -1, NB_SHAPE(2), (nb_opts){0}));
    NB_ASSERT_ERROR_HAS("std must be >= 0");
}

static void random_floats_need_a_float_dtype(void **state)
{
    (void)state;
    assert_null(nb_rand(NB_SHAPE(2), (nb_opts){NB_DTYPE_I32}));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("int32");
    nb_clear_error();
    assert_null(nb_randn(NB_SHAPE(2), (nb_opts){NB_DTYPE_BOOL}));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
}

static void randint_stays_in_range_and_hits_every_value(void **state)
{
    (void)state;
    enum { N = 5000 };
    static double v[N];
    nb_tensor *t = nb_randint(-3, 4, NB_SHAPE(N), (nb_opts){0});
    assert_int_equal(nb_tensor_dtype(t), NB_DTYPE_I64); /* torch.randint's default */
    read_d(t, v, N);
    nb_release(t);
    int seen[7] = {0};
    for (int k = 0; k < N; k++) {
        assert_true(v[k] >= -3 && v[k] < 4 && v[k] == floor(v[k]));
        seen[(int)v[k] + 3]++;
    }
    for (int k = 0; k < 7; k++)
        assert_true(seen[k] > N / 7 / 2);
    t = nb_randint(0, 10, NB_SHAPE(3), (nb_opts){NB_DTYPE_I32});
    assert_int_equal(nb_tensor_dtype(t), NB_DTYPE_I32);
    nb_release(t);
    assert_null(nb_randint(5, 5, NB_SHAPE(1), (nb_opts){0}));
    NB_ASSERT_ERROR_HAS("low 5 must be less than high 5");
}

static void randperm_is_a_permutation(void **state)
{
    (void)state;
    enum { N = 200 };
    double v[N];
    nb_manual_seed(5);
    nb_tensor *p = nb_randperm(N, (nb_opts){0});
    assert_int_equal(nb_tensor_dtype(p), NB_DTYPE_I64);
    read_d(p, v, N);
    nb_release(p);
    bool seen[N] = {0};
    int moved = 0;
    for (int k = 0; k < N; k++) {
        assert_true(v[k] >= 0 && v[k] < N);
        assert_false(seen[(int)v[k]]);
        seen[(int)v[k]] = true;
        moved += v[k] != k;
    }
    assert_true(moved > N / 2);
    double w[N];
    nb_manual_seed(5);
    p = nb_randperm(N, (nb_opts){NB_DTYPE_I32});
    assert_int_equal(nb_tensor_dtype(p), NB_DTYPE_I32);
    read_d(p, w, N);
    nb_release(p);
    assert_memory_equal(v, w, sizeof v);
    p = nb_randperm(0, (nb_opts){0});
    assert_int_equal(nb_tensor_numel(p), 0);
    nb_release(p);
    assert_null(nb_randperm(-1, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
}

static void like_functions_copy_shape_dtype_and_device(void **state)
{
    (void)state;
    nb_tensor *t = nb_zeros(NB_SHAPE(2, 3), (nb_opts){NB_DTYPE_F64, .requires_grad = true});
    nb_tensor *r[6] = {nb_empty_like(t), nb_zeros_like(t),  nb_ones_like(t),
                       nb_full_like(t, 2.5), nb_rand_like(t), nb_randn_like(t)};
    for (int k = 0; k < 6; k++) {
        assert_shape(r[k], NB_SHAPE(2, 3));
        assert_int_equal(nb_tensor_dtype(r[k]), NB_DTYPE_F64);
        assert_string_equal(nb_tensor_device(r[k]), nb_tensor_device(t));
        assert_false(nb_tensor_requires_grad(r[k])); /* like torch.*_like */
    }
    check_all(r[1], 6, 0);
    check_all(r[2], 6, 1);
    check_all(r[3], 6, 2.5);
    for (int k = 0; k < 6; k++)
        nb_release(r[k]);
    nb_release(t);
    assert_null(nb_zeros_like(NULL));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
}

/* ---- bad shapes and options ---- */

static void negative_shape_is_rejected(void **state)
{
    (void)state;
    assert_null(nb_zeros(NB_SHAPE(3, -2), (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("negative size -2 in shape [3, -2]");
}

static void too_many_dims_are_rejected(void **state)
{
    (void)state;
    nb_shape s = {.ndim = NB_MAX_DIMS + 1};
    assert_null(nb_zeros(s, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("9 dimensions, expected 0 to 8");
    nb_clear_error();
    s.ndim = -1;
    assert_null(nb_empty(s, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    float x = 1;
    assert_null(nb_from_data(&x, (nb_shape){.ndim = 100}, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
}

static void absurdly_large_shape_is_an_error_not_a_crash(void **state)
{
    (void)state;
    /* 2^90 elements: the count overflows int64, an invalid shape (PyTorch: "Storage size
     * calculation overflowed") */
    assert_null(nb_empty(NB_SHAPE(1 << 30, 1 << 30, 1 << 30), (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("[1073741824, 1073741824, 1073741824]");
    nb_clear_error();
    /* 2^40 doubles fit int64 but not the machine: the plugin's allocation fails */
    assert_null(nb_empty(NB_SHAPE((int64_t)1 << 40), (nb_opts){NB_DTYPE_F64}));
    assert_int_equal(nb_last_status(), NB_OUT_OF_MEMORY);
}

/* numel and contiguous strides are checked products: a zero dim does not hide the overflow of
 * the strides, and more than PTRDIFF_MAX bytes never reaches the plugin. */
static void shapes_whose_size_overflows_are_invalid(void **state)
{
    (void)state;
    const int64_t big = (int64_t)1 << 32;
    assert_null(nb_empty(NB_SHAPE(big, big), (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("[4294967296, 4294967296]");
    nb_clear_error();
    assert_null(nb_zeros(NB_SHAPE(0, big, big), (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("[0, 4294967296, 4294967296]");
    nb_clear_error();
    float x = 0;
    assert_null(nb_from_blob(&x, NB_SHAPE(0, big, big), (nb_opts){0}, NULL, NULL));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    /* 2^62 floats: 2^64 bytes; their byte strides would overflow in a plugin */
    assert_null(nb_empty(NB_SHAPE((int64_t)1 << 62), (nb_opts){NB_DTYPE_F32}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("[4611686018427387904] is too large");
    nb_clear_error();
    /* found by fuzz_ops: numel 0, but a byte stride of 2^62 * 4 once overflowed in the plugin */
    assert_null(nb_zeros(NB_SHAPE(0, (int64_t)1 << 62), (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    /* a zero dim with strides that fit is an ordinary empty tensor */
    nb_tensor *e = nb_zeros(NB_SHAPE(0, big), (nb_opts){0});
    assert_non_null(e);
    assert_int_equal(nb_tensor_numel(e), 0);
    assert_int_equal(nb_tensor_stride(e, 0), big);
    nb_release(e);
}

static void randperm_of_a_size_past_the_bound_is_an_error(void **state)
{
    (void)state;
    /* 2^62 * 8 bytes once wrapped to a 0-byte buffer that the shuffle then overran */
    assert_null(nb_randperm((int64_t)1 << 62, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("randperm: shape [4611686018427387904] is too large");
}

static void arange_of_more_elements_than_int64_is_an_error(void **state)
{
    (void)state;
    assert_null(nb_arange(0, 1e60, 1, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("arange: going from 0 to 1e+60 in steps of 1");
    nb_clear_error();
    assert_null(nb_arange(-1e308, 1e308, 1, (nb_opts){NB_DTYPE_F64})); /* the span is inf */
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    /* 2^62 elements fit int64, not a tensor: a clean error, no allocation tried */
    assert_null(nb_arange(0, 0x1p62, 1, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
}

static void invalid_dtype_in_options_is_rejected(void **state)
{
    (void)state;
    assert_null(nb_zeros(NB_SHAPE(2), (nb_opts){(nb_dtype)77}));
    assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
    NB_ASSERT_ERROR_HAS("invalid dtype 77");
}

static void integer_tensors_cannot_require_grad(void **state)
{
    (void)state;
    nb_dtype ints[] = {NB_DTYPE_I32, NB_DTYPE_I64, NB_DTYPE_BOOL, NB_DTYPE_U8};
    for (int k = 0; k < 4; k++) {
        nb_clear_error();
        assert_null(nb_ones(NB_SHAPE(2), (nb_opts){ints[k], .requires_grad = true}));
        assert_int_equal(nb_last_status(), NB_DTYPE_UNSUPPORTED);
        NB_ASSERT_ERROR_HAS("only floating point tensors can require gradients");
        nb_tensor *t = nb_ones(NB_SHAPE(2), (nb_opts){ints[k]});
        assert_int_equal(nb_tensor_set_requires_grad(t, true), NB_DTYPE_UNSUPPORTED);
        NB_ASSERT_ERROR_HAS("only floating point tensors can require gradients");
        assert_false(nb_tensor_requires_grad(t));
        nb_release(t);
    }
}

/* ---- data in and out ---- */

static void copy_to_host_checks_the_buffer_size(void **state)
{
    (void)state;
    nb_tensor *t = nb_zeros(NB_SHAPE(2, 3), (nb_opts){0});
    float buf[6];
    assert_int_equal(nb_tensor_copy_to_host(t, buf, 8), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("buffer of 8 bytes, tensor [2, 3] of float32 needs 24");
    nb_clear_error();
    assert_int_equal(nb_tensor_copy_to_host(t, buf, 100), NB_INVALID_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_tensor_copy_to_host(t, NULL, 24), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_tensor_copy_to_host(NULL, buf, 24), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_tensor_copy_from_host(t, buf, 23), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("buffer of 23 bytes");
    nb_release(t);
}

static void copy_from_host_writes_through_a_view(void **state)
{
    (void)state;
    nb_tensor *t = nb_zeros(NB_SHAPE(2, 3), (nb_opts){0});
    int64_t v0 = nb_tensor_version(t);
    float src[6] = {1, 2, 3, 4, 5, 6}, out[6];
    nb_tensor *tt = nb_t(t); /* (3, 2), not contiguous */
    NB_ASSERT_OK(nb_tensor_copy_from_host(tt, src, sizeof src));
    NB_ASSERT_OK(nb_tensor_copy_to_host(t, out, sizeof out));
    /* tt[i][j] = src[i*2+j] lands in t[j][i] */
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++)
            assert_true(out[j * 3 + i] == src[i * 2 + j]);
    assert_true(nb_tensor_version(t) > v0); /* an in-place change */
    nb_release(tt);
    nb_release(t);
}

static void item_reads_one_element_tensors_only(void **state)
{
    (void)state;
    double v = 0;
    nb_tensor *s = nb_full(NB_SHAPE(1, 1), 4.5, (nb_opts){0});
    nb_tensor *m = nb_ones(NB_SHAPE(2), (nb_opts){0});
    NB_ASSERT_OK(nb_item(s, &v));
    assert_true(v == 4.5);
    assert_int_equal(nb_item(m, &v), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("a tensor with 2 elements cannot be converted to a number");
    nb_clear_error();
    assert_int_equal(nb_item(NULL, &v), NB_NULL_ARGUMENT);
    nb_clear_error();
    assert_int_equal(nb_item(s, NULL), NB_NULL_ARGUMENT);
    nb_tensor *i = nb_scalar(-7, (nb_opts){NB_DTYPE_I64});
    NB_ASSERT_OK(nb_item(i, &v));
    assert_true(v == -7);
    nb_release(i);
    nb_release(s);
    nb_release(m);
}

static void to_device_cpu_returns_the_same_tensor(void **state)
{
    (void)state;
    nb_tensor *t = nb_ones(NB_SHAPE(2), (nb_opts){0});
    nb_tensor *c = nb_to_device(t, "cpu");
    assert_ptr_equal(c, t);
    assert_int_equal(nb_live_tensors(), 1);
    nb_release(c);
    assert_null(nb_to_device(t, "cdua"));
    assert_int_equal(nb_last_status(), NB_UNKNOWN_DEVICE);
    nb_clear_error();
    assert_null(nb_to_device(NULL, "cpu"));
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_release(t);
}

static void allclose_and_equal_compare_values_and_shapes(void **state)
{
    (void)state;
    float a[3] = {1, 2, 3}, b[3] = {1, 2, 3.001f}, n[3] = {1, NAN, 3};
    nb_tensor *ta = nb_from_data(a, NB_SHAPE(3), (nb_opts){0});
    nb_tensor *tb = nb_from_data(b, NB_SHAPE(3), (nb_opts){0});
    nb_tensor *tn = nb_from_data(n, NB_SHAPE(3), (nb_opts){0});
    nb_tensor *tr = nb_from_data(a, NB_SHAPE(3, 1), (nb_opts){0});
    nb_tensor *ti = nb_arange(1, 4, 1, (nb_opts){NB_DTYPE_I64});
    assert_true(nb_equal(ta, ta));
    assert_false(nb_equal(ta, tb));
    assert_true(nb_allclose(ta, tb, 1e-3, 0));
    assert_false(nb_allclose(ta, tb, 1e-5, 1e-5));
    assert_true(nb_allclose(ta, tb, 0, 1e-2));
    assert_false(nb_equal(tn, tn)); /* NaN is not equal to itself */
    assert_false(nb_equal(ta, tr)); /* same values, other shape */
    assert_true(nb_equal(ta, ti));  /* values compare across dtypes */
    assert_false(nb_equal(ta, NULL));
    nb_release(ta);
    nb_release(tb);
    nb_release(tn);
    nb_release(tr);
    nb_release(ti);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(from_data_round_trips_every_dtype),
        NB_TEST(inspection_reports_geometry),
        NB_TEST(from_data_null_is_an_error),
        NB_TEST(retain_and_release_count_references),
        NB_TEST(from_blob_shares_memory_and_releases_once),
        NB_TEST(from_blob_without_release_and_with_bad_input),
        NB_TEST(constant_creators_fill_with_their_value),
        NB_TEST(empty_shapes_are_fine),
        NB_TEST(arange_and_linspace_match_torch),
        NB_TEST(arange_and_linspace_reject_impossible_ranges),
        NB_TEST(eye_has_ones_on_the_diagonal),
        NB_TEST(rand_is_uniform_in_unit_interval_and_reproducible),
        NB_TEST(consecutive_calls_give_different_numbers),
        NB_TEST(rand_produces_the_philox_numbers_of_the_abi),
        NB_TEST(randn_has_mean_zero_and_std_one),
        NB_TEST(normal_and_uniform_scale_and_shift),
        NB_TEST(random_floats_need_a_float_dtype),
        NB_TEST(randint_stays_in_range_and_hits_every_value),
        NB_TEST(randperm_is_a_permutation),
        NB_TEST(like_functions_copy_shape_dtype_and_device),
        NB_TEST(negative_shape_is_rejected),
        NB_TEST(too_many_dims_are_rejected),
        NB_TEST(absurdly_large_shape_is_an_error_not_a_crash),
        NB_TEST(shapes_whose_size_overflows_are_invalid),
        NB_TEST(arange_of_more_elements_than_int64_is_an_error),
        NB_TEST(randperm_of_a_size_past_the_bound_is_an_error),
        NB_TEST(invalid_dtype_in_options_is_rejected),
        NB_TEST(integer_tensors_cannot_require_grad),
        NB_TEST(copy_to_host_checks_the_buffer_size),
        NB_TEST(copy_from_host_writes_through_a_view),
        NB_TEST(item_reads_one_element_tensors_only),
        NB_TEST(to_device_cpu_returns_the_same_tensor),
        NB_TEST(allclose_and_equal_compare_values_and_shapes),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
