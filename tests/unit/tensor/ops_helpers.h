/* ops_helpers.h - what the test_ops_*.c files share: tensors from doubles, deterministic values,
 * and the closeness check |got - want| <= atol + rtol * |want| with float32 tolerances. */
#ifndef NABLA_TEST_OPS_HELPERS_H
#define NABLA_TEST_OPS_HELPERS_H

#include "nb_test.h"

/* A tensor of `dtype` holding v (given as doubles). */
static inline nb_tensor *mk(const double *v, nb_shape s, nb_dtype dtype)
{
    nb_tensor *d = nb_from_data(v, s, (nb_opts){NB_DTYPE_F64});
    assert_non_null(d);
    nb_tensor *t = nb_to_dtype(d, dtype);
    nb_release(d);
    assert_non_null(t);
    return t;
}

/* Deterministic values in [lo, hi). */
static inline void fill_vals(double *v, int64_t n, double lo, double hi, int seed)
{
    for (int64_t k = 0; k < n; k++) {
        double u = fmod(fabs(sin((double)(k + 1) * 12.9898 + seed * 78.233)) * 43758.5453, 1.0);
        v[k] = lo + (hi - lo) * u;
    }
}

static inline double *read_all(const nb_tensor *t, int64_t *n)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    *n = nb_tensor_numel(t);
    double *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    assert_non_null(d);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, v, (size_t)*n * sizeof *v));
    nb_release(d);
    return v;
}

/* |got - want| <= atol + rtol * |want| element by element (NaN matches NaN). */
static inline void expect_close(const nb_tensor *t, const double *want, int64_t n, double rtol,
                         double atol)
{
    int64_t got_n;
    double *got = read_all(t, &got_n);
    if (got_n != n)
        fail_msg("%lld elements, expected %lld", (long long)got_n, (long long)n);
    for (int64_t k = 0; k < n; k++) {
        if (isnan(want[k]) && isnan(got[k]))
            continue;
        if (!(fabs(got[k] - want[k]) <= atol + rtol * fabs(want[k])))
            fail_msg("element %lld: got %.9g, expected %.9g", (long long)k, got[k], want[k]);
    }
    free(got);
}

static inline void expect_shape_dtype(const nb_tensor *t, nb_shape s, nb_dtype dt)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    nb_shape g = nb_tensor_shape(t);
    assert_int_equal(g.ndim, s.ndim);
    for (int32_t d = 0; d < s.ndim; d++)
        assert_int_equal(g.dims[d], s.dims[d]);
    if (nb_tensor_dtype(t) != dt)
        fail_msg("dtype %s, expected %s", nb_dtype_name(nb_tensor_dtype(t)), nb_dtype_name(dt));
}

/* A double rounded to float32, out of line: GCC 12.2's SLP vectoriser at -O2 was seen to drop
 * an inline (float) cast in a loop of these tests (want[] kept the double value). */
static __attribute__((noinline, unused)) double f32(double v) { return (float)v; }

/* float32 tolerances: a few ulps of the inputs' magnitude */
#define RT32 1e-5
#define AT32 1e-6

#endif
