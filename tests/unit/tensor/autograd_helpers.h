/* autograd_helpers.h - what the test_autograd*.c files share: float64 leaves with deterministic
 * values, reading values and gradients back, and the grad_fn name of a tensor. */
#ifndef NABLA_TEST_AUTOGRAD_HELPERS_H
#define NABLA_TEST_AUTOGRAD_HELPERS_H

#include "nb_test.h"

static inline void fill_vals(double *v, int64_t n, double lo, double hi, int seed)
{
    for (int64_t k = 0; k < n; k++) {
        double u = fmod(fabs(sin((double)(k + 1) * 12.9898 + seed * 78.233)) * 43758.5453, 1.0);
        v[k] = lo + (hi - lo) * u;
    }
}

/* A float64 leaf with values in [lo, hi). */
static inline nb_tensor *leaf(nb_shape s, double lo, double hi, int seed)
{
    int64_t n = 1;
    for (int32_t d = 0; d < s.ndim; d++)
        n *= s.dims[d];
    double *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    fill_vals(v, n, lo, hi, seed);
    nb_tensor *t = nb_from_data(v, s, (nb_opts){NB_DTYPE_F64, .requires_grad = true});
    free(v);
    assert_non_null(t);
    return t;
}

static inline double *values(const nb_tensor *t, int64_t *n)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    *n = nb_tensor_numel(t);
    double *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, v, (size_t)*n * sizeof *v));
    nb_release(d);
    return v;
}

static inline void expect_values(const nb_tensor *t, const double *want, int64_t n, double tol)
{
    int64_t got_n;
    double *got = values(t, &got_n);
    assert_int_equal(got_n, n);
    for (int64_t k = 0; k < n; k++)
        if (!(fabs(got[k] - want[k]) <= tol * (1 + fabs(want[k]))))
            fail_msg("element %lld: got %.10g, expected %.10g", (long long)k, got[k], want[k]);
    free(got);
}

static inline void expect_all(const nb_tensor *t, double want, double tol)
{
    int64_t n;
    double *got = values(t, &n);
    for (int64_t k = 0; k < n; k++)
        if (!(fabs(got[k] - want) <= tol))
            fail_msg("element %lld: got %.10g, expected %.10g", (long long)k, got[k], want);
    free(got);
}

static inline const char *fn_name(const nb_tensor *t) { return nb_grad_fn_name(nb_tensor_grad_fn(t)); }

static inline nb_tensor *vec(const double *v, nb_shape s, bool rg)
{
    nb_tensor *t = nb_from_data(v, s, (nb_opts){NB_DTYPE_F64, .requires_grad = rg});
    assert_non_null(t);
    return t;
}

static inline void backward_sum(nb_tensor *t)
{
    nb_scope_begin();
    nb_status st = nb_backward(nb_sum(t, NULL, 0, false), NULL, (nb_backward_opts){0});
    nb_scope_end();
    if (st != NB_OK)
        fail_msg("backward: %s", nb_last_error());
}

static inline void expect_grad(nb_tensor *leaf_t, const double *want, int64_t n)
{
    nb_tensor *g = nb_tensor_grad(leaf_t);
    if (!g)
        fail_msg("no gradient");
    expect_values(g, want, n, 1e-12);
    nb_release(g);
}

#endif
