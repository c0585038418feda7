/* functional_test.h - what the tests of the functional ops share: random and exact inputs,
 * comparisons with naive loops, gradcheck to second order, and a main that runs a suite on the
 * device's tier-2 kernels and again, re-executed with NABLA_NO_TIER2=1, on the tier-1 composites. */
#ifndef NB_FUNCTIONAL_TEST_H
#define NB_FUNCTIONAL_TEST_H

#include "nb_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
/* uniform in [lo, hi) from xorshift64*, reproducible across runs */
static inline double urand(double lo, double hi)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545F4914F6CDD1Dull;
    return lo + (hi - lo) * (double)(r >> 11) * 0x1p-53;
}

static inline int64_t shape_numel(nb_shape s)
{
    int64_t n = 1;
    for (int32_t d = 0; d < s.ndim; d++)
        n *= s.dims[d];
    return n;
}

/* A tensor of `dtype` holding v (doubles, row-major). */
static inline nb_tensor *make(nb_shape s, const double *v, nb_dtype dtype, bool grad)
{
    nb_tensor *d = nb_from_data(v, s, (nb_opts){.dtype = NB_DTYPE_F64});
    assert_non_null(d);
    nb_tensor *t = nb_to_dtype(d, dtype);
    nb_release(d);
    assert_non_null(t);
    if (grad)
        NB_ASSERT_OK(nb_tensor_set_requires_grad(t, true));
    return t;
}

/* Fills v with uniform values and returns a tensor of them. */
static inline nb_tensor *random_t(nb_shape s, double *v, double lo, double hi, nb_dtype dtype, bool grad)
{
    for (int64_t k = 0; k < shape_numel(s); k++)
        v[k] = urand(lo, hi);
    return make(s, v, dtype, grad);
}

static inline void read_d(const nb_tensor *t, double *out, int64_t n)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    assert_int_equal(nb_tensor_numel(t), n);
    nb_tensor *d = nb_to_dtype(t, NB_DTYPE_F64);
    assert_non_null(d);
    NB_ASSERT_OK(nb_tensor_copy_to_host(d, out, (size_t)n * sizeof *out));
    nb_release(d);
}

static inline void assert_shape(const nb_tensor *t, nb_shape want)
{
    if (!t)
        fail_msg("NULL tensor: %s", nb_last_error());
    nb_shape s = nb_tensor_shape(t);
    assert_int_equal(s.ndim, want.ndim);
    for (int32_t d = 0; d < want.ndim; d++)
        assert_int_equal(s.dims[d], want.dims[d]);
}

/* |got - ref| <= atol + rtol |ref| everywhere (NaN only where ref is NaN). */
static inline void assert_close(const nb_tensor *t, const double *ref, int64_t n, double atol,
                         double rtol, const char *what)
{
    double *got = malloc((size_t)(n ? n : 1) * sizeof *got);
    read_d(t, got, n);
    for (int64_t k = 0; k < n; k++) {
        bool ok = isnan(ref[k]) ? isnan(got[k])
                                : fabs(got[k] - ref[k]) <= atol + rtol * fabs(ref[k]);
        if (!ok) {
            double g = got[k];
            free(got);
            fail_msg("%s: element %lld is %.10g, expected %.10g", what, (long long)k, g, ref[k]);
        }
    }
    free(got);
}

static inline void assert_grad_fn(const nb_tensor *t, const char *name)
{
    assert_non_null(t);
    const char *got = nb_grad_fn_name(nb_tensor_grad_fn(t));
    if (!got || strcmp(got, name))
        fail_msg("grad_fn is %s, expected %s", got ? got : "(none)", name);
}

/* The gradient of t (a leaf) after backward, compared with ref. */
static inline void assert_grad(nb_tensor *t, const double *ref, int64_t n, double atol, const char *what)
{
    nb_tensor *g = nb_tensor_grad(t);
    if (!g)
        fail_msg("%s: no gradient", what);
    assert_close(g, ref, n, atol, 1e-6, what);
    nb_release(g);
}

static inline void expect_error(nb_tensor *r, nb_status st, const char *needle)
{
    if (r) {
        nb_release(r);
        fail_msg("expected an error containing \"%s\", got a tensor", needle);
    }
    assert_int_equal(nb_last_status(), st);
    NB_ASSERT_ERROR_HAS(needle);
    nb_clear_error();
}

/* gradcheck tolerances (PyTorch's defaults for float64) */
#define GC_EPS 1e-6
#define GC_ATOL 1e-5
#define GC_RTOL 1e-3

static inline void gradcheck_ok(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *in, int32_t n)
{
    nb_status st = nb_gradcheck(fn, ctx, in, n, GC_EPS, GC_ATOL, GC_RTOL);
    if (st != NB_OK)
        fail_msg("gradcheck: %s", nb_last_error());
}

/* Second order: the gradient of sum(f(inputs)^2) with respect to input 0, built with
 * create_graph, is itself gradchecked (this runs each backward through public ops). */
typedef struct gg_ctx {
    nb_gradcheck_fn fn;
    void *ctx;
} gg_ctx;

static inline nb_tensor *grad_of_square(nb_tensor *const *in, int32_t n, void *p)
{
    gg_ctx *c = p;
    nb_tensor *o = c->fn(in, n, c->ctx);
    nb_tensor *o2 = o ? nb_mul(o, o) : NULL;
    nb_tensor *s = o2 ? nb_sum(o2, NULL, 0, false) : NULL;
    nb_tensor *g = NULL;
    if (s && nb_grad(&s, NULL, 1, in, 1, (nb_grad_opts){.create_graph = true}, &g) != NB_OK)
        g = NULL;
    nb_release(o);
    nb_release(o2);
    nb_release(s);
    return g;
}

static inline void gradgradcheck_ok(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *in, int32_t n)
{
    gg_ctx c = {fn, ctx};
    gradcheck_ok(grad_of_square, &c, in, n);
}

static inline void release_all(nb_tensor **ts, int n)
{
    for (int k = 0; k < n; k++)
        nb_release(ts[k]);
}

static const nb_dtype float_dtypes[] = {NB_DTYPE_F32, NB_DTYPE_F64};
/* float32 results against float64 loops */
static inline double tol_for(nb_dtype dt) { return dt == NB_DTYPE_F32 ? 2e-5 : 1e-12; }

/* class indices (int64) for nll_loss and cross_entropy */
static inline nb_tensor *targets(const int64_t *v, nb_shape s)
{
    nb_tensor *t = nb_from_data(v, s, (nb_opts){.dtype = NB_DTYPE_I64});
    assert_non_null(t);
    return t;
}

/* ---------------------------------------------------------------------- main */

#define NBT_COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Runs `twice` on the tier-2 kernels, then `once` (PyTorch reference tests, n_once may be 0), and
 * re-executes the binary with NABLA_NO_TIER2=1 to run `twice` again on the composites; the core
 * reads the switch on first use. Nonzero when anything failed or leaked. */
static inline int nbt_run_tiers(const char *file, const struct CMUnitTest *twice, size_t n_twice,
                                const struct CMUnitTest *once, size_t n_once, char **argv)
{
    const char *no_tier2 = getenv("NABLA_NO_TIER2");
    bool composite = no_tier2 && strcmp(no_tier2, "1") == 0;
    char name[96];
    snprintf(name, sizeof name, "%s (%s)", file,
             composite ? "tier-1 composites" : "tier-2 kernels");
    int failed = _cmocka_run_group_tests(name, twice, n_twice, NULL, NULL);
    if (!composite && n_once)
        failed = _cmocka_run_group_tests(file, once, n_once, NULL, NULL) || failed;
    failed = failed || nb_shutdown() != NB_OK;
    if (composite || no_tier2)
        return failed;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("NABLA_NO_TIER2", "1", 1);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        failed = 1;
    return failed;
}

#endif
