/* nn_extra_helpers.h - small helpers for the tests of core/nn/ and the extra tensor ops: float64
 * tensors from literals, value checks with a tolerance, gradients of a sum. */
#ifndef NN_EXTRA_HELPERS_H
#define NN_EXTRA_HELPERS_H

#include "nb_test.h"

#define NB_ASSERT_OK_(expr) assert_int_equal((expr), NB_OK)
#define ARR(...) ((const double[]){__VA_ARGS__})
#define NARR(...) (int64_t)(sizeof((double[]){__VA_ARGS__}) / sizeof(double))

static inline nb_tensor *tf64(nb_shape s, const double *v, bool grad)
{
    nb_tensor *t = nb_from_data(v, s, (nb_opts){.dtype = NB_DTYPE_F64, .requires_grad = grad});
    assert_non_null(t);
    return t;
}

static inline nb_tensor *ti64(nb_shape s, const int64_t *v)
{
    nb_tensor *t = nb_from_data(v, s, (nb_opts){.dtype = NB_DTYPE_I64});
    assert_non_null(t);
    return t;
}

/* |got - want| <= tol (1 + |want|) for every element; NaN matches NaN. */
static inline void expect_values(const nb_tensor *t, const double *want, int64_t n, double tol)
{
    assert_non_null(t);
    assert_int_equal(nb_tensor_numel(t), n);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    assert_non_null(d);
    double *got = malloc((size_t)(n ? n : 1) * sizeof *got);
    assert_non_null(got);
    assert_int_equal(nb_tensor_copy_to_host(d, got, (size_t)n * sizeof *got), NB_OK);
    nb_release(d);
    for (int64_t i = 0; i < n; i++) {
        bool ok = isnan(want[i]) ? isnan(got[i])
                                 : (got[i] == want[i] ||
                                    fabs(got[i] - want[i]) <= tol * (1 + fabs(want[i])));
        if (!ok) {
            print_error("element %lld: got %.12g, want %.12g\n", (long long)i, got[i], want[i]);
            free(got);
            fail();
        }
    }
    free(got);
}

/* d(sum(y))/dx, a new reference. */
static inline nb_tensor *grad_of_sum(nb_tensor *y, nb_tensor *x)
{
    nb_tensor *s = nb_sum(y, NULL, 0, false), *g = NULL;
    assert_non_null(s);
    assert_int_equal(nb_grad(&s, NULL, 1, &x, 1, (nb_grad_opts){0}, &g), NB_OK);
    nb_release(s);
    return g;
}

#endif
