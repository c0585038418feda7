/* reference.c - the float64 reference for every op of the conformance table: plain loops over
 * host arrays, written to be read, with PyTorch's semantics (dtype rules, NaN propagation,
 * broadcasting). Nothing here calls a device or another plugin. */
#include "conformance.h"
#include "nabla_plugin.h" /* the conversion rule and the 16-bit conversions every plugin uses */

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- host arrays ---- */

int64_t conf_numel(const conf_host *h)
{
    int64_t n = 1;
    for (int32_t d = 0; d < h->ndim; d++)
        n *= h->shape[d];
    return n;
}

bool conf_host_alloc(conf_host *h, nb_dtype dtype, int32_t ndim, const int64_t *shape)
{
    h->dtype = dtype;
    h->ndim = ndim;
    for (int32_t d = 0; d < ndim; d++)
        h->shape[d] = shape[d];
    int64_t n = conf_numel(h);
    h->v = calloc((size_t)(n ? n : 1), sizeof(double));
    return h->v != NULL;
}

void conf_host_free(conf_host *h)
{
    free(h->v);
    h->v = NULL;
}

bool conf_is_float(nb_dtype d)
{
    return d == NB_DTYPE_F32 || d == NB_DTYPE_F64 || d == NB_DTYPE_F16 || d == NB_DTYPE_BF16;
}

/* PyTorch's promotion for the dtypes Nabla has: bool < uint8 < int32 < int64 < float32 <
 * float64, so the wider of the two wins. */
static nb_dtype promote(nb_dtype a, nb_dtype b)
{
    /* half: float16 with bfloat16 is float32 (neither holds the other) */
    if ((a == NB_DTYPE_F16 && b == NB_DTYPE_BF16) || (a == NB_DTYPE_BF16 && b == NB_DTYPE_F16))
        return NB_DTYPE_F32;
    static const int rank[NB_DTYPE_COUNT] = {
        [NB_DTYPE_BOOL] = 0, [NB_DTYPE_U8] = 1, [NB_DTYPE_I32] = 2,
        [NB_DTYPE_I64] = 3,  [NB_DTYPE_F32] = 5, [NB_DTYPE_F64] = 6,
        [NB_DTYPE_F16] = 4,  [NB_DTYPE_BF16] = 4};
    return rank[a] >= rank[b] ? a : b;
}

/* The value a dtype stores for v: float32 rounding, truncation toward zero for integers. */
static double cast_to(nb_dtype dt, double v)
{
    switch (dt) {
    case NB_DTYPE_F32: return (double)(float)v;
    case NB_DTYPE_F64: return v;
    /* half: rounded once from the float64 result */
    case NB_DTYPE_F16: return nb_f16_to_f32(nb_f64_to_f16(v));
    case NB_DTYPE_BF16: return nb_bf16_to_f32(nb_f64_to_bf16(v));
    case NB_DTYPE_BOOL: return v != 0;
    /* the SDK's rule: through int64 (NaN and out of range give INT64_MIN), then wrapping */
    case NB_DTYPE_U8: return (double)(uint8_t)(uint64_t)nb_float_to_int64(v);
    case NB_DTYPE_I32: return (double)(int32_t)(uint32_t)(uint64_t)nb_float_to_int64(v);
    default: return (double)nb_float_to_int64(v);
    }
}

/* Rounds every value of out to what its dtype stores. */
void conf_finish(conf_host *out)
{
    int64_t n = conf_numel(out);
    for (int64_t k = 0; k < n; k++)
        out->v[k] = cast_to(out->dtype, out->v[k]);
}

/* Row-major index of element `flat` of shape, into idx. */
static void unravel(int64_t flat, int32_t ndim, const int64_t *shape, int64_t *idx)
{
    for (int32_t d = ndim - 1; d >= 0; d--) {
        idx[d] = shape[d] ? flat % shape[d] : 0;
        flat = shape[d] ? flat / shape[d] : 0;
    }
}

static int64_t ravel(const int64_t *idx, int32_t ndim, const int64_t *shape)
{
    int64_t f = 0;
    for (int32_t d = 0; d < ndim; d++)
        f = f * shape[d] + idx[d];
    return f;
}

/* Value of x at the index of a broadcast result of ndim dims (trailing alignment). */
static double bcast_at(const conf_host *x, const int64_t *idx, int32_t ndim)
{
    int64_t f = 0;
    int32_t lead = ndim - x->ndim;
    for (int32_t d = 0; d < x->ndim; d++)
        f = f * x->shape[d] + (x->shape[d] == 1 ? 0 : idx[d + lead]);
    return x->v[f];
}

static bool broadcast_shape(const conf_host *x, int32_t n, int32_t *ndim, int64_t *shape)
{
    int32_t nd = 0;
    for (int32_t k = 0; k < n; k++)
        nd = x[k].ndim > nd ? x[k].ndim : nd;
    for (int32_t d = 0; d < nd; d++) {
        int64_t s = 1;
        for (int32_t k = 0; k < n; k++) {
            int32_t dk = d - (nd - x[k].ndim);
            int64_t v = dk >= 0 ? x[k].shape[dk] : 1;
            if (v != 1 && s != 1 && v != s)
                return false;
            if (v != 1)
                s = v;
        }
        shape[d] = s;
    }
    *ndim = nd;
    return true;
}

int32_t conf_norm_dim(int32_t d, int32_t ndim)
{
    int32_t n = ndim ? ndim : 1;
    return d < 0 ? d + n : d;
}

/* ======================== elementwise ======================== */

typedef double (*fn1)(double x, const conf_params *p);
typedef double (*fn2)(double a, double b);

static bool map1(const conf_host *x, nb_dtype out_dt, fn1 f, const conf_params *p, conf_host *out)
{
    if (!conf_host_alloc(out, out_dt, x->ndim, x->shape))
        return false;
    for (int64_t k = 0; k < conf_numel(x); k++)
        out->v[k] = f(x->v[k], p);
    conf_finish(out);
    return true;
}

static bool map_n(const conf_host *x, int32_t n, nb_dtype out_dt,
                  double (*f)(const double *v, const conf_params *p), const conf_params *p,
                  conf_host *out)
{
    int32_t nd;
    int64_t shape[NB_MAX_DIMS];
    if (!broadcast_shape(x, n, &nd, shape))
        return false;
    if (!conf_host_alloc(out, out_dt, nd, shape))
        return false;
    int64_t idx[NB_MAX_DIMS];
    for (int64_t k = 0; k < conf_numel(out); k++) {
        unravel(k, nd, shape, idx);
        double v[CONF_MAX_IN];
        for (int32_t j = 0; j < n; j++)
            v[j] = bcast_at(&x[j], idx, nd);
        out->v[k] = f(v, p);
    }
    conf_finish(out);
    return true;
}

/* exp, log, ... compute in float: integer inputs give float32 (PyTorch's default dtype). */
static nb_dtype float_of(nb_dtype d) { return conf_is_float(d) ? d : NB_DTYPE_F32; }

/* of two equal values (-0.0 and 0.0) the first is kept, as the cpu plugin does */
double conf_nan_max(double a, double b) { return isnan(a) || isnan(b) ? NAN : a < b ? b : a; }
static double nan_min(double a, double b) { return isnan(a) || isnan(b) ? NAN : a > b ? b : a; }

#define UNARY_(name, dtype_rule, expr)                                                     \
    static double u_##name(double x, const conf_params *p)                                 \
    {                                                                                      \
        (void)p;                                                                           \
        return (expr);                                                                     \
    }                                                                                      \
    bool conf_ref_##name(const conf_host *x, int32_t n, const conf_params *p, conf_host *out) \
    {                                                                                      \
        (void)n;                                                                           \
        nb_dtype dt = x[0].dtype;                                                          \
        (void)dt;                                                                          \
        return map1(&x[0], (dtype_rule), u_##name, p, out);                                \
    }

UNARY_(neg, dt, -x)
UNARY_(abs, dt, fabs(x))
UNARY_(exp, float_of(dt), exp(x))
UNARY_(log, float_of(dt), log(x))
UNARY_(sqrt, float_of(dt), sqrt(x))
UNARY_(rsqrt, float_of(dt), 1.0 / sqrt(x))
UNARY_(sin, float_of(dt), sin(x))
UNARY_(cos, float_of(dt), cos(x))
UNARY_(tanh, float_of(dt), tanh(x))
UNARY_(sigmoid, float_of(dt), 1.0 / (1.0 + exp(-x)))
UNARY_(relu, dt, isnan(x) ? x : x > 0 ? x : 0.0)
UNARY_(sign, dt, (double)((x > 0) - (x < 0))) /* NaN gives 0, as in PyTorch */
UNARY_(floor, dt, floor(x))
UNARY_(ceil, dt, ceil(x))
UNARY_(round, dt, x - floor(x) == 0.5 ? 2 * round(x / 2) : round(x)) /* half to even */
UNARY_(logical_not, NB_DTYPE_BOOL, x == 0)

/* Scalars keep an integer tensor's dtype when they are integral, else give float32; true
 * division and negative powers of integers give float32. */
static nb_dtype scalar_dtype(nb_dtype dt, double s)
{
    if (conf_is_float(dt))
        return dt;
    bool integral = isfinite(s) && s == floor(s);
    if (dt == NB_DTYPE_BOOL)
        return integral ? NB_DTYPE_I64 : NB_DTYPE_F32;
    return integral ? dt : NB_DTYPE_F32;
}

#define SCALAR_(name, dtype_rule, expr)                                                    \
    static double s_##name(double x, const conf_params *p)                                 \
    {                                                                                      \
        double s = p->s[0];                                                                \
        (void)s;                                                                           \
        return (expr);                                                                     \
    }                                                                                      \
    bool conf_ref_##name(const conf_host *x, int32_t n, const conf_params *p, conf_host *out) \
    {                                                                                      \
        (void)n;                                                                           \
        nb_dtype dt = scalar_dtype(x[0].dtype, p->s[0]);                                   \
        (void)dt;                                                                          \
        return map1(&x[0], (dtype_rule), s_##name, p, out);                                \
    }

SCALAR_(add_scalar, dt, x + s)
SCALAR_(sub_scalar, dt, x - s)
SCALAR_(mul_scalar, dt, x * s)
SCALAR_(div_scalar, float_of(dt), x / s)
SCALAR_(rsub_scalar, dt, s - x)
SCALAR_(rdiv_scalar, float_of(dt), s / x)
SCALAR_(pow_scalar_any, p->s[0] < 0 ? float_of(dt) : dt, pow(x, s))
/* PyTorch 2.x: "Integers to negative integer powers are not allowed." */
bool conf_ref_pow_scalar(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    bool is_int = !conf_is_float(x[0].dtype); /* half: 16-bit floats take negative powers too */
    if (is_int && p->s[0] < 0 && p->s[0] == floor(p->s[0]))
        return false;
    return conf_ref_pow_scalar_any(x, n, p, out);
}
SCALAR_(maximum_scalar, x[0].dtype, conf_nan_max(x, s))
SCALAR_(minimum_scalar, x[0].dtype, nan_min(x, s))
/* comparisons with a scalar: bool out; an integer tensor is compared in float64 */
SCALAR_(eq_scalar, NB_DTYPE_BOOL, x == s)
SCALAR_(ne_scalar, NB_DTYPE_BOOL, x != s)
SCALAR_(lt_scalar, NB_DTYPE_BOOL, x < s)
SCALAR_(le_scalar, NB_DTYPE_BOOL, x <= s)
SCALAR_(gt_scalar, NB_DTYPE_BOOL, x > s)
SCALAR_(ge_scalar, NB_DTYPE_BOOL, x >= s)

/* clamp: s[0] min, s[1] max, NAN = no bound; NaN inputs stay NaN (PyTorch). */
static double s_clamp(double x, const conf_params *p)
{
    if (isnan(x))
        return x;
    if (!isnan(p->s[0]) && x < p->s[0])
        x = p->s[0];
    if (!isnan(p->s[1]) && x > p->s[1])
        x = p->s[1];
    return x;
}

bool conf_ref_clamp(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    if (isnan(p->s[0]) && isnan(p->s[1]))
        return false;
    /* integers clamp to the bounds rounded inward: clamp(int [1,2,3,4], min=2.5) is 3 3 3 4 */
    conf_params q = *p;
    if (!conf_is_float(x[0].dtype)) {
        q.s[0] = ceil(q.s[0]);
        q.s[1] = floor(q.s[1]);
    }
    return map1(&x[0], x[0].dtype, s_clamp, &q, out);
}

#define BINARY_(name, dtype_rule, expr)                                                    \
    static double b_##name(const double *v, const conf_params *p)                          \
    {                                                                                      \
        (void)p;                                                                           \
        double a = v[0], b = v[1];                                                         \
        return (expr);                                                                     \
    }                                                                                      \
    bool conf_ref_##name(const conf_host *x, int32_t n, const conf_params *p, conf_host *out) \
    {                                                                                      \
        (void)n;                                                                           \
        nb_dtype dt = promote(x[0].dtype, x[1].dtype);                                     \
        (void)dt;                                                                          \
        return map_n(x, 2, (dtype_rule), b_##name, p, out);                                \
    }

BINARY_(add, dt, a + b)
BINARY_(sub, dt, a - b)
BINARY_(mul, dt, a * b)
BINARY_(div, float_of(dt), a / b)
BINARY_(pow, dt, pow(a, b))
BINARY_(maximum, dt, conf_nan_max(a, b))
BINARY_(minimum, dt, nan_min(a, b))
BINARY_(eq, NB_DTYPE_BOOL, a == b)
BINARY_(ne, NB_DTYPE_BOOL, a != b)
BINARY_(lt, NB_DTYPE_BOOL, a < b)
BINARY_(le, NB_DTYPE_BOOL, a <= b)
BINARY_(gt, NB_DTYPE_BOOL, a > b)
BINARY_(ge, NB_DTYPE_BOOL, a >= b)
BINARY_(logical_and, NB_DTYPE_BOOL, a != 0 && b != 0)
BINARY_(logical_or, NB_DTYPE_BOOL, a != 0 || b != 0)
BINARY_(logical_xor, NB_DTYPE_BOOL, (a != 0) != (b != 0))

static double w_where(const double *v, const conf_params *p)
{
    (void)p;
    return v[0] != 0 ? v[1] : v[2];
}

bool conf_ref_where(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    if (x[0].dtype != NB_DTYPE_BOOL)
        return false;
    return map_n(x, 3, promote(x[1].dtype, x[2].dtype), w_where, p, out);
}

/* ======================== reductions ======================== */

/* Marks the reduced dims; false for a bad or repeated dim. */
static bool reduced_mask(const conf_host *x, const conf_params *p, bool *mask)
{
    memset(mask, 0, NB_MAX_DIMS * sizeof *mask);
    if (p->ndims == 0) {
        for (int32_t d = 0; d < x->ndim; d++)
            mask[d] = true;
        return true;
    }
    for (int32_t k = 0; k < p->ndims; k++) {
        int32_t d = conf_norm_dim(p->dims[k], x->ndim);
        if (d < 0 || d >= (x->ndim ? x->ndim : 1))
            return false;
        if (x->ndim == 0)
            continue;
        if (mask[d])
            return false;
        mask[d] = true;
    }
    return true;
}

/* Output shape of a reduction, and for each input element the output element it feeds. */
static bool reduce_shape(const conf_host *x, const bool *mask, bool keepdim, nb_dtype dt,
                         conf_host *out, int64_t *kept_shape)
{
    int64_t shape[NB_MAX_DIMS];
    int32_t nd = 0;
    for (int32_t d = 0; d < x->ndim; d++) {
        kept_shape[d] = mask[d] ? 1 : x->shape[d];
        if (keepdim || !mask[d])
            shape[nd++] = kept_shape[d];
    }
    return conf_host_alloc(out, dt, nd, shape);
}

static int64_t out_index(const conf_host *x, int64_t k, const bool *mask, const int64_t *kshape)
{
    int64_t idx[NB_MAX_DIMS];
    unravel(k, x->ndim, x->shape, idx);
    for (int32_t d = 0; d < x->ndim; d++)
        if (mask[d])
            idx[d] = 0;
    return ravel(idx, x->ndim, kshape);
}

typedef enum { RK_SUM, RK_MEAN, RK_PROD, RK_MAX, RK_MIN } red_kind;

static bool reduce(const conf_host *x, const conf_params *p, red_kind kind, conf_host *out)
{
    bool mask[NB_MAX_DIMS];
    if (!reduced_mask(x, p, mask))
        return false;
    nb_dtype dt = x->dtype;
    if ((kind == RK_SUM || kind == RK_PROD) && !conf_is_float(dt))
        dt = NB_DTYPE_I64;
    if (kind == RK_MEAN && !conf_is_float(dt))
        return false;
    if ((kind == RK_MAX || kind == RK_MIN) && conf_numel(x) == 0)
        return false; /* no identity */
    int64_t kshape[NB_MAX_DIMS];
    if (!reduce_shape(x, mask, p->keepdim, dt, out, kshape))
        return false;
    int64_t n_out = conf_numel(out), count = n_out ? conf_numel(x) / n_out : 0;
    if (n_out && conf_numel(x) == 0) { /* reducing an empty dim: every output sees 0 elements */
        count = 0;
    }
    bool *seen = calloc((size_t)(n_out ? n_out : 1), 1);
    if (!seen)
        return false;
    for (int64_t j = 0; j < n_out; j++)
        out->v[j] = kind == RK_PROD ? 1 : 0;
    for (int64_t k = 0; k < conf_numel(x); k++) {
        int64_t j = out_index(x, k, mask, kshape);
        double v = x->v[k];
        switch (kind) {
        case RK_SUM:
        case RK_MEAN: out->v[j] += v; break;
        case RK_PROD: out->v[j] *= v; break;
        case RK_MAX: out->v[j] = seen[j] ? conf_nan_max(out->v[j], v) : v; break;
        case RK_MIN: out->v[j] = seen[j] ? nan_min(out->v[j], v) : v; break;
        }
        seen[j] = true;
    }
    if (kind == RK_MEAN)
        for (int64_t j = 0; j < n_out; j++)
            out->v[j] = count ? out->v[j] / (double)count : NAN;
    free(seen);
    conf_finish(out);
    return true;
}

bool conf_ref_sum(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return reduce(&x[0], p, RK_SUM, out);
}
bool conf_ref_mean(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return reduce(&x[0], p, RK_MEAN, out);
}
bool conf_ref_prod(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return reduce(&x[0], p, RK_PROD, out);
}
bool conf_ref_amax(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return reduce(&x[0], p, RK_MAX, out);
}
bool conf_ref_amin(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return reduce(&x[0], p, RK_MIN, out);
}

/* var/std: k[1] is the correction; a non-positive denominator gives NaN (PyTorch). */
static bool variance(const conf_host *x, const conf_params *p, bool take_sqrt, conf_host *out)
{
    if (!conf_is_float(x->dtype))
        return false;
    conf_params pk = *p;
    pk.keepdim = true;
    conf_host mean = {0};
    if (!reduce(x, &pk, RK_MEAN, &mean))
        return false;
    bool mask[NB_MAX_DIMS];
    reduced_mask(x, p, mask);
    int64_t kshape[NB_MAX_DIMS];
    if (!reduce_shape(x, mask, p->keepdim, x->dtype, out, kshape)) {
        conf_host_free(&mean);
        return false;
    }
    int64_t n_out = conf_numel(out), count = n_out ? conf_numel(x) / n_out : 0;
    for (int64_t k = 0; k < conf_numel(x); k++) {
        int64_t j = out_index(x, k, mask, kshape);
        double c = x->v[k] - mean.v[j];
        out->v[j] += c * c;
    }
    double denom = (double)(count - p->k[1]);
    for (int64_t j = 0; j < n_out; j++) {
        out->v[j] = denom > 0 ? out->v[j] / denom : NAN;
        if (take_sqrt)
            out->v[j] = sqrt(out->v[j]);
    }
    conf_host_free(&mean);
    conf_finish(out);
    return true;
}

bool conf_ref_var(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return variance(&x[0], p, false, out);
}
bool conf_ref_std(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return variance(&x[0], p, true, out);
}

/* norm: s[0] = p (> 0, or INFINITY for the max norm). */
bool conf_ref_norm(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    double pw = p->s[0];
    if (!conf_is_float(x->dtype) || !(pw > 0))
        return false;
    conf_host a = {0};
    if (!conf_host_alloc(&a, x->dtype, x->ndim, x->shape))
        return false;
    for (int64_t k = 0; k < conf_numel(x); k++)
        a.v[k] = isinf(pw) ? fabs(x->v[k]) : pow(fabs(x->v[k]), pw);
    bool ok = reduce(&a, p, isinf(pw) ? RK_MAX : RK_SUM, out);
    if (ok && !isinf(pw)) {
        for (int64_t j = 0; j < conf_numel(out); j++)
            out->v[j] = pow(out->v[j], 1.0 / pw);
        conf_finish(out);
    }
    conf_host_free(&a);
    return ok;
}

/* argmax/argmin: k[0] is the dim (NB_ALL_DIMS: over the flattened tensor); the first index of
 * the extreme wins; NaN counts as the extreme (PyTorch). */
static bool arg_reduce(const conf_host *x, const conf_params *p, bool is_max, conf_host *out)
{
    if (conf_numel(x) == 0)
        return false;
    int32_t dim = (int32_t)p->k[0];
    bool flat = dim == NB_ALL_DIMS || x->ndim == 0;
    conf_host v = *x;
    if (flat) { /* a 1-d view of the data */
        v.ndim = 1;
        v.shape[0] = conf_numel(x);
        dim = 0;
    } else {
        dim = conf_norm_dim(dim, x->ndim);
        if (dim < 0 || dim >= x->ndim)
            return false;
    }
    bool mask[NB_MAX_DIMS] = {0};
    mask[dim] = true;
    int64_t kshape[NB_MAX_DIMS];
    if (!reduce_shape(&v, mask, false, NB_DTYPE_I64, out, kshape))
        return false;
    int64_t n_out = conf_numel(out);
    double *best = malloc((size_t)(n_out ? n_out : 1) * sizeof *best);
    bool *seen = calloc((size_t)(n_out ? n_out : 1), 1);
    if (!best || !seen) {
        free(best);
        free(seen);
        return false;
    }
    int64_t idx[NB_MAX_DIMS];
    for (int64_t k = 0; k < conf_numel(&v); k++) {
        int64_t j = out_index(&v, k, mask, kshape);
        unravel(k, v.ndim, v.shape, idx);
        double e = v.v[k];
        bool better = !seen[j] || (!isnan(best[j]) && (isnan(e) || (is_max ? e > best[j]
                                                                           : e < best[j])));
        if (better) {
            best[j] = e;
            out->v[j] = (double)idx[dim];
        }
        seen[j] = true;
    }
    free(best);
    free(seen);
    if (p->keepdim) { /* keepdim puts back 1s: all of x's dims when flat */
        int32_t nd = flat ? x->ndim : x->ndim;
        for (int32_t d = 0; d < nd; d++)
            out->shape[d] = flat || d == dim ? 1 : x->shape[d];
        out->ndim = nd;
    }
    return true;
}

bool conf_ref_argmax(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return arg_reduce(&x[0], p, true, out);
}
bool conf_ref_argmin(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return arg_reduce(&x[0], p, false, out);
}

/* ======================== linear algebra ======================== */

/* out[b] = a[b] @ c[b] for (B,n,k) @ (B,k,m), with a batch stride of 0 when a side has B = 1. */
static void batched_mm(const double *a, int64_t Ba, const double *c, int64_t Bc, int64_t B,
                       int64_t n, int64_t k, int64_t m, double *out)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++) {
                double acc = 0;
                for (int64_t t = 0; t < k; t++)
                    acc += a[(Ba == 1 ? 0 : b) * n * k + i * k + t] *
                           c[(Bc == 1 ? 0 : b) * k * m + t * m + j];
                out[b * n * m + i * m + j] = acc;
            }
}

static bool mm_rank(const conf_host *x, int32_t rank, conf_host *out)
{
    const conf_host *a = &x[0], *b = &x[1];
    if (a->ndim != rank || b->ndim != rank || a->dtype != b->dtype)
        return false;
    int64_t B = rank == 3 ? a->shape[0] : 1, n = a->shape[rank - 2], k = a->shape[rank - 1];
    int64_t k2 = b->shape[rank - 2], m = b->shape[rank - 1];
    if (k != k2 || (rank == 3 && b->shape[0] != B))
        return false;
    int64_t shape[3] = {B, n, m};
    if (!conf_host_alloc(out, a->dtype, rank, rank == 3 ? shape : shape + 1))
        return false;
    batched_mm(a->v, B, b->v, B, B, n, k, m, out->v);
    conf_finish(out);
    return true;
}

bool conf_ref_mm(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n, (void)p;
    return mm_rank(x, 2, out);
}
bool conf_ref_bmm(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n, (void)p;
    return mm_rank(x, 3, out);
}

/* torch.matmul: 1-d operands gain a dim (removed after); batch dims broadcast. */
bool conf_ref_matmul(const conf_host *x, int32_t n_in, const conf_params *p, conf_host *out)
{
    (void)n_in, (void)p;
    conf_host a = x[0], b = x[1];
    if (a.ndim == 0 || b.ndim == 0 || a.dtype != b.dtype)
        return false;
    bool a1 = a.ndim == 1, b1 = b.ndim == 1;
    if (a1) {
        a.ndim = 2;
        a.shape[1] = a.shape[0];
        a.shape[0] = 1;
    }
    if (b1) {
        b.ndim = 2;
        b.shape[1] = 1;
    }
    int64_t n = a.shape[a.ndim - 2], k = a.shape[a.ndim - 1];
    int64_t k2 = b.shape[b.ndim - 2], m = b.shape[b.ndim - 1];
    if (k != k2)
        return false;
    conf_host ba = a, bb = b; /* batch parts */
    ba.ndim -= 2;
    bb.ndim -= 2;
    conf_host pair[2] = {ba, bb};
    int32_t nb;
    int64_t batch[NB_MAX_DIMS];
    if (!broadcast_shape(pair, 2, &nb, batch))
        return false;
    int64_t B = 1;
    for (int32_t d = 0; d < nb; d++)
        B *= batch[d];
    /* expand each operand's batch to the broadcast batch on the host */
    double *ea = malloc((size_t)(B * n * k + 1) * sizeof *ea);
    double *eb = malloc((size_t)(B * k * m + 1) * sizeof *eb);
    int64_t shape[NB_MAX_DIMS];
    int32_t nd = 0;
    for (int32_t d = 0; d < nb; d++)
        shape[nd++] = batch[d];
    if (!a1)
        shape[nd++] = n;
    if (!b1)
        shape[nd++] = m;
    if (!ea || !eb || !conf_host_alloc(out, a.dtype, nd, shape)) {
        free(ea);
        free(eb);
        return false;
    }
    int64_t idx[NB_MAX_DIMS];
    for (int64_t bi = 0; bi < B; bi++) {
        unravel(bi, nb, batch, idx);
        int64_t fa = 0, fb = 0;
        for (int32_t d = 0; d < ba.ndim; d++) {
            int32_t dd = d + (nb - ba.ndim);
            fa = fa * ba.shape[d] + (ba.shape[d] == 1 ? 0 : idx[dd]);
        }
        for (int32_t d = 0; d < bb.ndim; d++) {
            int32_t dd = d + (nb - bb.ndim);
            fb = fb * bb.shape[d] + (bb.shape[d] == 1 ? 0 : idx[dd]);
        }
        memcpy(ea + bi * n * k, a.v + fa * n * k, (size_t)(n * k) * sizeof *ea);
        memcpy(eb + bi * k * m, b.v + fb * k * m, (size_t)(k * m) * sizeof *eb);
    }
    batched_mm(ea, B, eb, B, B, n, k, m, out->v);
    free(ea);
    free(eb);
    conf_finish(out);
    return true;
}

/* ======================== indexing and joining ======================== */

/* gather: k[0] dim; x[1] int64 index with x[0]'s ndim. */
bool conf_ref_gather(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    const conf_host *t = &x[0], *ix = &x[1];
    int32_t dim = conf_norm_dim((int32_t)p->k[0], t->ndim);
    if (ix->dtype != NB_DTYPE_I64 || ix->ndim != t->ndim || dim < 0 || dim >= t->ndim)
        return false;
    for (int32_t d = 0; d < t->ndim; d++)
        if (d != dim && ix->shape[d] > t->shape[d])
            return false;
    if (!conf_host_alloc(out, t->dtype, ix->ndim, ix->shape))
        return false;
    int64_t idx[NB_MAX_DIMS];
    for (int64_t k = 0; k < conf_numel(ix); k++) {
        unravel(k, ix->ndim, ix->shape, idx);
        int64_t j = (int64_t)ix->v[k];
        if (j < 0 || j >= t->shape[dim]) {
            conf_host_free(out);
            return false;
        }
        idx[dim] = j;
        out->v[k] = t->v[ravel(idx, t->ndim, t->shape)];
    }
    return true;
}

/* index_select: k[0] dim; x[1] a 1-d int64 index. */
bool conf_ref_index_select(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    const conf_host *t = &x[0], *ix = &x[1];
    int32_t dim = conf_norm_dim((int32_t)p->k[0], t->ndim);
    if (ix->dtype != NB_DTYPE_I64 || ix->ndim > 1 || t->ndim == 0 || dim < 0 || dim >= t->ndim)
        return false;
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[dim] = conf_numel(ix);
    if (!conf_host_alloc(out, t->dtype, t->ndim, shape))
        return false;
    int64_t idx[NB_MAX_DIMS];
    for (int64_t k = 0; k < conf_numel(out); k++) {
        unravel(k, out->ndim, out->shape, idx);
        int64_t j = (int64_t)ix->v[idx[dim]];
        if (j < 0 || j >= t->shape[dim]) {
            conf_host_free(out);
            return false;
        }
        idx[dim] = j;
        out->v[k] = t->v[ravel(idx, t->ndim, t->shape)];
    }
    return true;
}

/* scatter_add: k[0] dim; x[1] int64 index, x[2] source; out = x[0] with the sums added. */
bool conf_ref_scatter_add(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    const conf_host *t = &x[0], *ix = &x[1], *src = &x[2];
    int32_t dim = conf_norm_dim((int32_t)p->k[0], t->ndim);
    if (ix->dtype != NB_DTYPE_I64 || ix->ndim != t->ndim || src->ndim != t->ndim || dim < 0 ||
        dim >= t->ndim)
        return false;
    for (int32_t d = 0; d < t->ndim; d++)
        if (ix->shape[d] > src->shape[d] || (d != dim && ix->shape[d] > t->shape[d]))
            return false;
    if (!conf_host_alloc(out, t->dtype, t->ndim, t->shape))
        return false;
    memcpy(out->v, t->v, (size_t)conf_numel(t) * sizeof *out->v);
    int64_t idx[NB_MAX_DIMS];
    for (int64_t k = 0; k < conf_numel(ix); k++) {
        unravel(k, ix->ndim, ix->shape, idx);
        double s = src->v[ravel(idx, src->ndim, src->shape)];
        int64_t j = (int64_t)ix->v[k];
        if (j < 0 || j >= t->shape[dim]) {
            conf_host_free(out);
            return false;
        }
        idx[dim] = j;
        out->v[ravel(idx, t->ndim, t->shape)] += s;
    }
    conf_finish(out);
    return true;
}

/* cat: k[0] dim over all n inputs (1-d empty tensors are skipped, as in PyTorch). */
bool conf_ref_cat(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    const conf_host *ref = &x[0];
    for (int32_t k = 0; k < n; k++)
        if (!(x[k].ndim == 1 && x[k].shape[0] == 0)) {
            ref = &x[k];
            break;
        }
    if (ref->ndim == 0)
        return false;
    int32_t dim = conf_norm_dim((int32_t)p->k[0], ref->ndim);
    if (dim < 0 || dim >= ref->ndim)
        return false;
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, ref->shape, sizeof shape);
    shape[dim] = 0;
    nb_dtype dt = ref->dtype;
    for (int32_t k = 0; k < n; k++) {
        if (x[k].ndim == 1 && x[k].shape[0] == 0 && ref->ndim != 1)
            continue;
        if (x[k].ndim != ref->ndim)
            return false;
        for (int32_t d = 0; d < ref->ndim; d++)
            if (d != dim && x[k].shape[d] != ref->shape[d])
                return false;
        shape[dim] += x[k].shape[dim];
        dt = promote(dt, x[k].dtype);
    }
    if (!conf_host_alloc(out, dt, ref->ndim, shape))
        return false;
    int64_t off = 0, idx[NB_MAX_DIMS];
    for (int32_t k = 0; k < n; k++) {
        if (x[k].ndim != ref->ndim)
            continue;
        for (int64_t e = 0; e < conf_numel(&x[k]); e++) {
            unravel(e, x[k].ndim, x[k].shape, idx);
            idx[dim] += off;
            out->v[ravel(idx, out->ndim, out->shape)] = x[k].v[e];
        }
        off += x[k].shape[dim];
    }
    conf_finish(out);
    return true;
}

/* stack: k[0] dim (from 0 to ndim); every input has the same shape. */
bool conf_ref_stack(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    conf_host u[CONF_MAX_IN];
    int32_t nd = x[0].ndim + 1, dim = (int32_t)p->k[0];
    if (dim < 0)
        dim += nd;
    if (dim < 0 || dim >= nd || n > CONF_MAX_IN)
        return false;
    for (int32_t k = 0; k < n; k++) {
        if (x[k].ndim != x[0].ndim || memcmp(x[k].shape, x[0].shape, (size_t)x[0].ndim * 8))
            return false;
        u[k] = x[k];
        u[k].ndim = nd;
        for (int32_t d = 0, s = 0; d < nd; d++)
            u[k].shape[d] = d == dim ? 1 : x[k].shape[s++];
    }
    conf_params q = *p;
    q.k[0] = dim;
    return conf_ref_cat(u, n, &q, out);
}

/* copy: x[0] is the destination (its shape and dtype), x[1] the source broadcast into it. */
bool conf_ref_copy(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n, (void)p;
    const conf_host *dst = &x[0], *src = &x[1];
    conf_host pair[2] = {*dst, *src};
    int32_t nd;
    int64_t shape[NB_MAX_DIMS];
    if (!broadcast_shape(pair, 2, &nd, shape) || nd != dst->ndim ||
        memcmp(shape, dst->shape, (size_t)nd * 8))
        return false;
    if (!conf_host_alloc(out, dst->dtype, dst->ndim, dst->shape))
        return false;
    int64_t idx[NB_MAX_DIMS];
    for (int64_t k = 0; k < conf_numel(out); k++) {
        unravel(k, nd, shape, idx);
        out->v[k] = bcast_at(src, idx, nd);
    }
    conf_finish(out);
    return true;
}

/* to_dtype: k[0] is the target dtype. */
bool conf_ref_to_dtype(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    if (p->k[0] < 0 || p->k[0] >= NB_DTYPE_COUNT)
        return false;
    if (!conf_host_alloc(out, (nb_dtype)p->k[0], x[0].ndim, x[0].shape))
        return false;
    memcpy(out->v, x[0].v, (size_t)conf_numel(out) * sizeof *out->v);
    conf_finish(out);
    return true;
}

/* ======================== creation, bit for bit ======================== */

/* full: s[0] into the dtype of x[0] by the conversion rule. */
bool conf_ref_full(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    if (!conf_host_alloc(out, x[0].dtype, x[0].ndim, x[0].shape))
        return false;
    for (int64_t k = 0; k < conf_numel(out); k++)
        out->v[k] = p->s[0];
    conf_finish(out);
    return true;
}

/* arange(s[0], s[1], s[2]) in x[0]'s dtype: element k is s[0] + k * s[2] in double, then the
 * conversion rule (PyTorch computes it the same way). */
bool conf_ref_arange(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    double len = ceil((p->s[1] - p->s[0]) / p->s[2]);
    if (!(p->s[2] != 0) || !(len >= 0) || len > 1e9)
        return false;
    int64_t shape[1] = {(int64_t)len};
    if (!conf_host_alloc(out, x[0].dtype, 1, shape))
        return false;
    for (int64_t k = 0; k < shape[0]; k++)
        out->v[k] = p->s[0] + (double)k * p->s[2];
    conf_finish(out);
    return true;
}

/* The cpu's numbers for seed k[0]: a random fill is the same on every device. */
static bool ref_random(const conf_host *x, const conf_params *p, bool normal, conf_host *out)
{
    nb_manual_seed((uint64_t)p->k[0]);
    nb_shape sh = {.ndim = x[0].ndim};
    for (int32_t d = 0; d < x[0].ndim; d++)
        sh.dims[d] = x[0].shape[d];
    nb_opts o = {.dtype = x[0].dtype, .device = "cpu"};
    nb_tensor *t = normal ? nb_randn(sh, o) : nb_rand(sh, o);
    nb_tensor *d = t ? nb_to_dtype(t, NB_DTYPE_F64) : NULL;
    bool ok = d && conf_host_alloc(out, x[0].dtype, x[0].ndim, x[0].shape) &&
              nb_tensor_copy_to_host(d, out->v, (size_t)conf_numel(out) * sizeof(double)) ==
                  NB_OK;
    nb_release(d);
    nb_release(t);
    return ok;
}

bool conf_ref_rand(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return ref_random(x, p, false, out);
}

bool conf_ref_randn(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return ref_random(x, p, true, out);
}
