/* activation.c - leaky_relu, elu, silu, softplus, gelu(approximate="tanh"), hardtanh and
 * log_sigmoid, with their modules (LeakyReLU, ELU, SiLU, Softplus, GELU, Hardtanh, LogSigmoid).
 * Each is a composite of public ops; branches that could overflow are clamped first, because a
 * where() passes a zero gradient into its unused branch and 0 * inf would be NaN. gelu (both
 * forms) runs a device's fused "gelu" / "gelu_backward" kernels (tier 2) when it has them. */
#include "nn_common.h"
#include "functional.h"

static bool act_check(const char *op, const nb_tensor *x)
{
    return !nnc_null(op, "input", x) && nnc_float(op, "input", x);
}

/* x > 0 ? x : x * slope (the gradient at 0 is the slope, as in PyTorch) */
static nb_tensor *leaky_relu_impl(const nb_tensor *x, double slope)
{
    if (!act_check("leaky_relu", x))
        return NULL;
    nnc_tmps s = {0};
    nb_tensor *pos = nnc_k(&s, nb_gt_scalar(x, 0));
    nb_tensor *neg = nnc_k(&s, nb_mul_scalar(x, slope));
    return nnc_ret(&s, pos && neg ? nnc_k(&s, nb_where(pos, x, neg)) : NULL);
}

/* x <= 0 ? alpha * (exp(x) - 1) : x. The test is x <= 0, not x > 0, so that NaN takes the
 * linear branch and its gradient 1, as PyTorch's elu_backward does. */
static nb_tensor *elu_impl(const nb_tensor *x, double alpha)
{
    if (!act_check("elu", x))
        return NULL;
    nnc_tmps s = {0};
    nb_tensor *neg_in = nnc_k(&s, nb_le_scalar(x, 0));
    nb_tensor *pos = nnc_k(&s, nb_logical_not(neg_in));
    /* x where x <= 0, else 0: masked_fill, not clamp, so that x = 0 takes the exp branch's
     * gradient alpha as PyTorch does (clamp's gradient is 0 at its bound). */
    nb_tensor *xn = pos ? nnc_k(&s, nb_masked_fill(x, pos, 0)) : NULL;
    nb_tensor *e = nnc_k(&s, nb_exp(xn));
    nb_tensor *em1 = nnc_k(&s, nb_add_scalar(e, -1));
    nb_tensor *neg = nnc_k(&s, nb_mul_scalar(em1, alpha));
    return nnc_ret(&s, pos && neg ? nnc_k(&s, nb_where(pos, x, neg)) : NULL);
}

static nb_tensor *silu_impl(const nb_tensor *x)
{
    if (!act_check("silu", x))
        return NULL;
    nb_tensor *sg = nb_sigmoid(x);
    nb_tensor *r = sg ? nb_mul(x, sg) : NULL;
    nb_release(sg);
    return r;
}

/* beta * x > threshold ? x : log(1 + exp(beta * x)) / beta, with log(1 + exp(z)) written as
 * -log(sigmoid(-z)): exact gradient sigmoid(z) everywhere, and z is clamped to the threshold
 * so that sigmoid(-z) never underflows to 0 in the branch where() does not pick. */
static nb_tensor *softplus_impl(const nb_tensor *x, double beta, double threshold)
{
    if (!act_check("softplus", x))
        return NULL;
    beta = beta == 0 ? 1 : beta;
    threshold = threshold == 0 ? 20 : threshold;
    nnc_tmps s = {0};
    nb_tensor *z = nnc_k(&s, nb_mul_scalar(x, beta));
    nb_tensor *lin = nnc_k(&s, nb_gt_scalar(z, threshold));
    nb_tensor *zc = nnc_k(&s, nb_clamp(z, NAN, threshold));
    nb_tensor *nz = nnc_k(&s, nb_neg(zc));
    nb_tensor *sg = nnc_k(&s, nb_sigmoid(nz));
    nb_tensor *ls = nnc_k(&s, nb_log(sg));
    nb_tensor *sp = nnc_k(&s, nb_mul_scalar(ls, -1.0 / beta));
    return nnc_ret(&s, lin && sp ? nnc_k(&s, nb_where(lin, x, sp)) : NULL);
}

/* 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), computed as x sigmoid(2 sqrt(2 / pi) (..))
 * (the same function: 0.5 (1 + tanh(z)) = sigmoid(2 z)) with x^3 as products: one exp and no
 * pow per element, which is what made the composite slow. */
static nb_tensor *gelu_tanh_ops(const nb_tensor *x)
{
    nnc_tmps s = {0};
    nb_tensor *x2 = nnc_k(&s, nb_mul(x, x));
    nb_tensor *x3 = x2 ? nnc_k(&s, nb_mul(x2, x)) : NULL;
    nb_tensor *c3 = nnc_k(&s, nb_mul_scalar(x3, 0.044715));
    nb_tensor *in = c3 ? nnc_k(&s, nb_add(x, c3)) : NULL;
    nb_tensor *sc = nnc_k(&s, nb_mul_scalar(in, 1.5957691216057307118)); /* 2 sqrt(2 / pi) */
    nb_tensor *sg = nnc_k(&s, nb_sigmoid(sc));
    return nnc_ret(&s, sg ? nnc_k(&s, nb_mul(x, sg)) : NULL);
}

/* ---- the fused tier-2 path: a device's "gelu" kernel forward, "gelu_backward" backward ---- */

/* A backward kernel runs when the gradient needs no graph of its own (create_graph off: the
 * engine then runs with grad mode off), and for float32/float64 only. */
static bool backward_kernel(const nb_tensor *like, const char *op)
{
    return !nb_is_grad_enabled() && nbi_has_kernel(like, op) &&
           (nb_tensor_dtype(like) == NB_DTYPE_F32 || nb_tensor_dtype(like) == NB_DTYPE_F64);
}

typedef struct gelu_ctx {
    int64_t tanh;
    nb_tensor *x; /* the node's input */
} gelu_ctx;

/* the kernel op on contiguous copies of in[0..n), into a new tensor shaped like in[n - 1] */
static nb_tensor *gelu_run(const char *op, const gelu_ctx *c, nb_tensor *const *in, int32_t n)
{
    nnc_tmps s = {0};
    nb_tensor *ops[2] = {0};
    bool ok = true;
    for (int32_t k = 0; k < n; k++)
        ok = ok && (ops[k] = nnc_k(&s, nb_contiguous(in[k])));
    nb_tensor *out = ok ? nnc_run(op, nnc_shape(ops[n - 1]), nnc_opts(ops[n - 1]), ops, n, NULL,
                                  0, &c->tanh, 1)
                        : NULL;
    nnc_free(&s);
    return out;
}

static nb_tensor *gelu_tanh_forward(void *p, nb_tensor *const *in, int32_t n)
{
    (void)n;
    gelu_ctx *c = p;
    nb_tensor *out = gelu_run("gelu", c, in, 1);
    if (out && !c->x)
        c->x = nb_retain(in[0]);
    return out;
}

/* gelu_tanh'(x) = s + x s (1 - s) 2c (1 + 3a x^2), s = sigmoid(2c (x + a x^3)), with ops (the
 * create_graph path, differentiable again). */
static nb_tensor *gelu_tanh_grad_ops(const nb_tensor *x, const nb_tensor *g)
{
    nnc_tmps s = {0};
    nb_tensor *x2 = nnc_k(&s, nb_mul(x, x));
    nb_tensor *x3 = x2 ? nnc_k(&s, nb_mul(x2, x)) : NULL;
    nb_tensor *c3 = nnc_k(&s, nb_mul_scalar(x3, 0.044715));
    nb_tensor *in = c3 ? nnc_k(&s, nb_add(x, c3)) : NULL;
    nb_tensor *sg = nnc_k(&s, nb_sigmoid(nnc_k(&s, nb_mul_scalar(in, 1.5957691216057307118))));
    nb_tensor *om = nnc_k(&s, nb_rsub_scalar(sg, 1));
    nb_tensor *du = nnc_k(&s, nb_add_scalar(nnc_k(&s, nb_mul_scalar(x2, 3 * 0.044715)), 1));
    nb_tensor *t = sg && om ? nnc_k(&s, nb_mul(sg, om)) : NULL;
    t = t && du ? nnc_k(&s, nb_mul(t, du)) : NULL;
    t = t ? nnc_k(&s, nb_mul(t, x)) : NULL;
    t = nnc_k(&s, nb_mul_scalar(t, 1.5957691216057307118));
    nb_tensor *d = t ? nnc_k(&s, nb_add(sg, t)) : NULL;
    return nnc_ret(&s, d ? nnc_k(&s, nb_mul(g, d)) : NULL);
}

static nb_status gelu_tanh_backward(void *p, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    (void)n;
    gelu_ctx *c = p;
    if (backward_kernel(c->x, "gelu_backward"))
        gi[0] = gelu_run("gelu_backward", c, (nb_tensor *[]){(nb_tensor *)g, c->x}, 2);
    else
        gi[0] = gelu_tanh_grad_ops(c->x, g);
    return gi[0] ? NB_OK : nbi_last_or(NB_AUTOGRAD, "gelu backward failed");
}

static void gelu_free(void *p)
{
    gelu_ctx *c = p;
    nb_release(c->x);
    nbi_free(c);
}

static const nb_function gelu_tanh_fn = {"GeluBackward0", gelu_tanh_forward, gelu_tanh_backward,
                                         gelu_free};

static nb_tensor *gelu_tanh_impl(const nb_tensor *x)
{
    if (!act_check("gelu", x))
        return NULL;
    if (nbi_numel(nb_tensor_ndim(x), nbi_dims(x)) == 0 || !nbi_has_kernel(x, "gelu"))
        return gelu_tanh_ops(x);
    gelu_ctx *c = nbi_calloc(1, sizeof *c);
    if (!c) {
        nbi_error(NB_OUT_OF_MEMORY, "gelu: out of host memory");
        return NULL;
    }
    c->tanh = 1;
    /* function_apply owns c from here, on every path */
    return nb_function_apply(&gelu_tanh_fn, c, (nb_tensor *[]){(nb_tensor *)x}, 1);
}

/* PyTorch's hardtanh passes the gradient only strictly inside (min, max), and at NaN (its
 * test is x <= min || x >= max); the outside values are constants from a detached clamp. */
static nb_tensor *hardtanh_impl(const nb_tensor *x, double lo, double hi)
{
    if (!act_check("hardtanh", x))
        return NULL;
    if (!(lo <= hi)) {
        nbi_error(NB_INVALID_ARGUMENT, "hardtanh: min_val %g must not be greater than max_val "
                  "%g", lo, hi);
        return NULL;
    }
    nnc_tmps s = {0};
    nb_tensor *a = nnc_k(&s, nb_le_scalar(x, lo));
    nb_tensor *b = nnc_k(&s, nb_ge_scalar(x, hi));
    nb_tensor *out = a && b ? nnc_k(&s, nb_logical_or(a, b)) : NULL;
    nb_tensor *d = nnc_k(&s, nb_detach(x));
    nb_tensor *c = nnc_k(&s, nb_clamp(d, lo, hi));
    return nnc_ret(&s, out && c ? nnc_k(&s, nb_where(out, c, x)) : NULL);
}

/* log(sigmoid(x)) = -softplus(-x): x itself below -20, where sigmoid would underflow. */
static nb_tensor *log_sigmoid_impl(const nb_tensor *x)
{
    if (!act_check("log_sigmoid", x))
        return NULL;
    nnc_tmps s = {0};
    nb_tensor *lin = nnc_k(&s, nb_lt_scalar(x, -20));
    nb_tensor *xc = nnc_k(&s, nb_clamp(x, -20, NAN));
    nb_tensor *sg = nnc_k(&s, nb_sigmoid(xc));
    nb_tensor *ls = nnc_k(&s, nb_log(sg));
    return nnc_ret(&s, lin && ls ? nnc_k(&s, nb_where(lin, x, ls)) : NULL);
}

nb_tensor *nb_leaky_relu(const nb_tensor *x, double negative_slope)
{
    return NBI_API(leaky_relu_impl(x, negative_slope));
}
nb_tensor *nb_elu(const nb_tensor *x, double alpha) { return NBI_API(elu_impl(x, alpha)); }
nb_tensor *nb_silu(const nb_tensor *x) { return NBI_API(silu_impl(x)); }
nb_tensor *nb_softplus(const nb_tensor *x, double beta, double threshold)
{
    return NBI_API(softplus_impl(x, beta, threshold));
}
nb_tensor *nb_gelu_tanh(const nb_tensor *x) { return NBI_API(gelu_tanh_impl(x)); }
nb_tensor *nb_hardtanh(const nb_tensor *x, double min_val, double max_val)
{
    return NBI_API(hardtanh_impl(x, min_val, max_val));
}
nb_tensor *nb_log_sigmoid(const nb_tensor *x) { return NBI_API(log_sigmoid_impl(x)); }

/* ================================ modules ================================ */

typedef struct act_cfg {
    double a, b;
    bool tanh;
} act_cfg;

static nb_tensor *fw_leaky(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m;
    return leaky_relu_impl(x, ((const act_cfg *)p)->a);
}
static nb_tensor *fw_elu(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m;
    return elu_impl(x, ((const act_cfg *)p)->a);
}
static nb_tensor *fw_silu(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m, (void)p;
    return silu_impl(x);
}
static nb_tensor *fw_softplus(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m;
    return softplus_impl(x, ((const act_cfg *)p)->a, ((const act_cfg *)p)->b);
}
static nb_tensor *fw_gelu(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m;
    return ((const act_cfg *)p)->tanh ? gelu_tanh_impl(x) : nb_gelu(x);
}
static nb_tensor *fw_hardtanh(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m;
    return hardtanh_impl(x, ((const act_cfg *)p)->a, ((const act_cfg *)p)->b);
}
static nb_tensor *fw_log_sigmoid(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m, (void)p;
    return log_sigmoid_impl(x);
}

/* PyTorch's extra_repr strings */
static void rp_leaky(const void *p, char *buf, size_t len)
{
    char a[40];
    nbi_py_float_repr(((const act_cfg *)p)->a, a, sizeof a);
    snprintf(buf, len, "negative_slope=%s", a);
}
static void rp_elu(const void *p, char *buf, size_t len)
{
    char a[40];
    nbi_py_float_repr(((const act_cfg *)p)->a, a, sizeof a);
    snprintf(buf, len, "alpha=%s", a);
}
static void rp_softplus(const void *p, char *buf, size_t len)
{
    char a[40], b[40];
    nbi_py_float_repr(((const act_cfg *)p)->a, a, sizeof a);
    nbi_py_float_repr(((const act_cfg *)p)->b, b, sizeof b);
    snprintf(buf, len, "beta=%s, threshold=%s", a, b);
}
static void rp_gelu(const void *p, char *buf, size_t len)
{
    snprintf(buf, len, "approximate='%s'", ((const act_cfg *)p)->tanh ? "tanh" : "none");
}
static void rp_hardtanh(const void *p, char *buf, size_t len)
{
    char a[40], b[40];
    nbi_py_float_repr(((const act_cfg *)p)->a, a, sizeof a);
    nbi_py_float_repr(((const act_cfg *)p)->b, b, sizeof b);
    snprintf(buf, len, "min_val=%s, max_val=%s", a, b);
}

static const nbi_module_kind k_leaky = {"LeakyReLU", fw_leaky, rp_leaky};
static const nbi_module_kind k_elu = {"ELU", fw_elu, rp_elu};
static const nbi_module_kind k_silu = {"SiLU", fw_silu, NULL};
static const nbi_module_kind k_softplus = {"Softplus", fw_softplus, rp_softplus};
static const nbi_module_kind k_gelu = {"GELU", fw_gelu, rp_gelu};
static const nbi_module_kind k_hardtanh = {"Hardtanh", fw_hardtanh, rp_hardtanh};
static const nbi_module_kind k_log_sigmoid = {"LogSigmoid", fw_log_sigmoid, NULL};

static nb_module *act_new(const nbi_module_kind *k, act_cfg c)
{
    return NNC_API_MODULE(nbi_module_new_kind(k, &c, sizeof c));
}

nb_module *nb_leaky_relu_new(double negative_slope)
{
    return act_new(&k_leaky, (act_cfg){.a = negative_slope});
}
nb_module *nb_elu_new(double alpha) { return act_new(&k_elu, (act_cfg){.a = alpha}); }
nb_module *nb_silu_new(void) { return act_new(&k_silu, (act_cfg){0}); }
nb_module *nb_softplus_new(double beta, double threshold)
{
    return act_new(&k_softplus, (act_cfg){.a = beta == 0 ? 1 : beta,
                                          .b = threshold == 0 ? 20 : threshold});
}
nb_module *nb_gelu_new(bool approximate_tanh)
{
    return act_new(&k_gelu, (act_cfg){.tanh = approximate_tanh});
}
nb_module *nb_hardtanh_new(double min_val, double max_val)
{
    if (!(min_val <= max_val)) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_hardtanh_new: min_val %g must not be greater than "
                  "max_val %g", min_val, max_val);
        return NULL;
    }
    return act_new(&k_hardtanh, (act_cfg){.a = min_val, .b = max_val});
}
nb_module *nb_log_sigmoid_new(void) { return act_new(&k_log_sigmoid, (act_cfg){0}); }


/* ======================= gelu, softmax, log_softmax (nn.functional) ======================= */
/* Moved from functional.c: gelu (exact, through erfc) and softmax / log_softmax, each one
 * autograd node (functional.h's plumbing) taking the device's tier-2 kernel where it has one. */

/* =================================== gelu =================================== */

/* erfc from tier-1 ops: erfc(z) = exp(-z^2) * P(u) / (1 + 2z) for z >= 0, u = (z - 3)/(z + 3)
 * maps [0, inf) onto [-1, 1), and P interpolates (1 + 2z) exp(z^2) erfc(z) at Chebyshev
 * nodes in u (fitted for this file). Absolute error: 1e-15 with 25 terms (float64), 2e-9 with
 * 13 (float32). erfc(-z) = 2 - erfc(z). */
static const double erfc_p64[] = {
    1.2530080582697296,     -0.13562110612458136,   -0.04756229435348143,
    0.1296451587027844,     -0.11927366341387352,   0.068308027343299715,
    -0.023770514946105076,  0.0025293918238416492,  0.0018886906248438346,
    -0.00077983231904351713, -0.00010516129911117481, 0.00012509952336074541,
    4.9548228613538245e-06, -2.0100970248142274e-05, -7.4399676795559982e-07,
    3.4730415763437519e-06, 3.7630979128482896e-07, -6.1729208060277201e-07,
    -1.6165573076465465e-07, 1.0228463135417644e-07, 5.4911807719924692e-08,
    -1.3478296678029114e-08, -1.3421960253322798e-08, 1.0125121810234313e-09,
    1.6957521080555031e-09};
static const double erfc_p32[] = {
    1.2530080582697298,     -0.13562106822069508,  -0.047562293827715402,
    0.12964409102498059,    -0.11927367843153054,  0.06831669729427188,
    -0.023770388711273325,  0.0024988226116692044, 0.0018882157006223333,
    -0.00072616080148177841, -0.00010422117696086445, 7.7204139505166535e-05,
    3.8917515142564585e-06};

#define SQRT1_2 0.70710678118654752440      /* 1 / sqrt(2) */
#define INV_SQRT_2PI 0.39894228040143267794 /* 1 / sqrt(2 pi) */

static nb_tensor *erfc_ops(const nb_tensor *z)
{
    const double *p = nb_tensor_dtype(z) == NB_DTYPE_F64 ? erfc_p64 : erfc_p32;
    int np = nb_tensor_dtype(z) == NB_DTYPE_F64 ? (int)(sizeof erfc_p64 / sizeof *erfc_p64)
                                                : (int)(sizeof erfc_p32 / sizeof *erfc_p32);
    nnc_tmps s = {0};
    /* beyond |z| = 40 erfc is 0 (or 2) in float64; the clamp keeps u finite for infinities */
    nb_tensor *a = nnc_k(&s, nb_clamp(nnc_k(&s, nb_abs(z)), NAN, 40.0));
    nb_tensor *am3 = nnc_k(&s, nb_add_scalar(a, -3.0)), *ap3 = nnc_k(&s, nb_add_scalar(a, 3.0));
    nb_tensor *u = nnc_k(&s, nb_div(am3, ap3));
    /* Horner in u; the loop releases as it goes to stay within the temporaries */
    nb_tensor *q = u ? nb_mul_scalar(u, p[np - 1]) : NULL;
    for (int k = np - 2; q && k >= 0; k--) {
        nb_tensor *q1 = nb_add_scalar(q, p[k]);
        nb_release(q);
        q = q1;
        if (q && k > 0) {
            nb_tensor *q2 = nb_mul(q, u);
            nb_release(q);
            q = q2;
        }
    }
    nnc_k(&s, q);
    nb_tensor *den = nnc_k(&s, nb_add_scalar(nnc_k(&s, nb_mul_scalar(a, 2.0)), 1.0));
    nb_tensor *ex = nnc_k(&s, nb_exp(nnc_k(&s, nb_mul(a, nnc_k(&s, nb_neg(a))))));
    nb_tensor *e = nnc_k(&s, nb_mul(ex, nnc_k(&s, nb_div(q, den))));
    nb_tensor *neg = nnc_k(&s, nb_lt_scalar(z, 0.0));
    return nnc_ret(&s, nnc_k(&s, nb_where(neg, nnc_k(&s, nb_rsub_scalar(e, 2.0)), e)));
}

/* Phi(x) = P(X <= x) for a standard normal X = erfc(-x / sqrt 2) / 2. */
static nb_tensor *normal_cdf(const nb_tensor *x)
{
    nnc_tmps s = {0};
    nb_tensor *z = nnc_k(&s, nb_mul_scalar(x, -SQRT1_2));
    nb_tensor *e = z ? nnc_k(&s, erfc_ops(z)) : NULL;
    return nnc_ret(&s, nnc_k(&s, nb_mul_scalar(e, 0.5)));
}

/* With a device's "gelu" kernel (i[0] = 0: the erf form) forward and "gelu_backward" when the
 * gradient needs no graph; the composites otherwise. */
static nb_tensor *gelu_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    nb_tensor *out;
    if (nb_tensor_numel(in[0]) > 0 && nbi_has_kernel(in[0], "gelu")) {
        out = gelu_run("gelu", &(gelu_ctx){.tanh = 0}, in, 1);
    } else {
        nb_tensor *phi = normal_cdf(in[0]);
        out = phi ? nb_mul(in[0], phi) : NULL;
        nb_release(phi);
    }
    if (out && c->record)
        save(c, 0, in[0]);
    return out;
}

/* d/dx x Phi(x) = Phi(x) + x phi(x) */
static nb_status gelu_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    if (!c->need[0])
        return NB_OK;
    if (backward_kernel(x, "gelu_backward")) {
        gi[0] = gelu_run("gelu_backward", &(gelu_ctx){.tanh = 0},
                         (nb_tensor *[]){(nb_tensor *)g, (nb_tensor *)x}, 2);
        return bw_done(c, gi, n);
    }
    nnc_tmps s = {0};
    nb_tensor *phi = nnc_k(&s, normal_cdf(x));
    nb_tensor *x2 = nnc_k(&s, nb_mul(x, x));
    nb_tensor *pdf = nnc_k(&s, nb_mul_scalar(nnc_k(&s, nb_exp(nnc_k(&s, nb_mul_scalar(x2, -0.5)))),
                                          INV_SQRT_2PI));
    nb_tensor *d = nnc_k(&s, nb_add(phi, nnc_k(&s, nb_mul(x, pdf))));
    gi[0] = d ? nb_mul(g, d) : NULL;
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function gelu_fn = {"GeluBackward0", gelu_forward, gelu_backward, fctx_free};

static nb_tensor *gelu_impl(const nb_tensor *x)
{
    if (nnc_null("gelu", "input", x) || !nnc_float("gelu", "input", x))
        return NULL;
    return apply(&gelu_fn, fctx_new("gelu"), (nb_tensor *[]){(nb_tensor *)x}, 1);
}

/* ============================ softmax, log_softmax ============================ */

/* ctx->i: dim, log; saved: 0 = input, 1 = output (detached) */
static nb_tensor *softmax_composite(const nb_tensor *x, int32_t dim, bool log)
{
    nnc_tmps s = {0};
    nb_tensor *m = nnc_k(&s, nb_amax(x, &dim, 1, true));
    nb_tensor *sh = nnc_k(&s, nb_sub(x, m));
    nb_tensor *e = nnc_k(&s, nb_exp(sh));
    nb_tensor *sum = nnc_k(&s, nb_sum(e, &dim, 1, true));
    nb_tensor *r = log ? nnc_k(&s, nb_sub(sh, nnc_k(&s, nb_log(sum)))) : nnc_k(&s, nb_div(e, sum));
    return nnc_ret(&s, r);
}

static nb_tensor *softmax_forward(void *ctx, nb_tensor *const *in, int32_t n)
{
    fctx *c = ctx;
    const nb_tensor *x = in[0];
    int32_t dim = (int32_t)c->i[0];
    bool log = c->i[1] != 0;
    const char *kop = log ? "log_softmax" : "softmax";
    nb_tensor *out;
    if (numel_of(x) == 0) {
        out = nb_empty(nnc_shape(x), nnc_opts(x));
    } else if (dim == nb_tensor_ndim(x) - 1 && nbi_has_kernel(x, kop)) {
        nb_tensor *xc = nb_contiguous(x);
        int64_t iv[1] = {dim};
        out = xc ? nnc_run(kop, nnc_shape(x), nnc_opts(x), &xc, 1, NULL, 0, iv, 1) : NULL;
        nb_release(xc);
    } else {
        out = softmax_composite(x, dim, log);
    }
    if (out && c->record) {
        save(c, 0, x);
        save_output(c, 1, out);
    }
    return out;
}

/* softmax: g_x = y (g - sum(g y));  log_softmax: g_x = g - exp(y) sum(g) */
static nb_status softmax_backward(void *ctx, const nb_tensor *g, nb_tensor **gi, int32_t n)
{
    fctx *c = ctx;
    SAVED(0, x);
    SAVED(1, y);
    int32_t dim = (int32_t)c->i[0];
    bool log = c->i[1] != 0;
    if (!c->need[0])
        return NB_OK;
    nnc_tmps s = {0};
    const char *kop = log ? "log_softmax_backward" : "softmax_backward";
    if (numel_of(g) == 0) {
        gi[0] = nb_zeros_like(x);
    } else if (dim == nb_tensor_ndim(x) - 1 && bw_fast(x, kop)) {
        nb_tensor *gc = nnc_k(&s, nb_contiguous(g)), *yc = nnc_k(&s, nb_contiguous(y));
        int64_t iv[1] = {dim};
        gi[0] = gc && yc ? nnc_run(kop, nnc_shape(x), nnc_opts(x), (nb_tensor *[]){gc, yc}, 2,
                                   NULL, 0, iv, 1)
                         : NULL;
    } else {
        /* building a graph of the gradient: y must come from x again to carry its history */
        if (nb_is_grad_enabled() && nbi_requires_grad(x))
            y = nnc_k(&s, log ? nb_log_softmax(x, dim) : nb_softmax(x, dim));
        if (log) {
            nb_tensor *sg = nnc_k(&s, nb_sum(g, &dim, 1, true));
            gi[0] = y && sg ? nb_sub(g, nnc_k(&s, nb_mul(nnc_k(&s, nb_exp(y)), sg))) : NULL;
        } else {
            nb_tensor *gy = y ? nnc_k(&s, nb_mul(g, y)) : NULL;
            nb_tensor *sg = nnc_k(&s, nb_sum(gy, &dim, 1, true));
            gi[0] = sg ? nb_mul(y, nnc_k(&s, nb_sub(g, sg))) : NULL;
        }
    }
    nnc_free(&s);
    return bw_done(c, gi, n);
}

static const nb_function softmax_fn = {"SoftmaxBackward0", softmax_forward, softmax_backward,
                                       fctx_free};
static const nb_function log_softmax_fn = {"LogSoftmaxBackward0", softmax_forward,
                                           softmax_backward, fctx_free};

static nb_tensor *softmax_impl(const nb_tensor *x, int32_t dim, bool log)
{
    const char *op = log ? "log_softmax" : "softmax";
    if (nnc_null(op, "input", x) || !nnc_float(op, "input", x))
        return NULL;
    if (nb_tensor_ndim(x) == 0) { /* a 0-d input is one row of one element */
        if (dim != 0 && dim != -1) {
            nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: dimension out of range (expected to be in "
                      "range of [-1, 0], but got %d)", op, dim);
            return NULL;
        }
        nb_tensor *x1 = nb_reshape(x, NB_SHAPE(1));
        nb_tensor *r = x1 ? softmax_impl(x1, 0, log) : NULL;
        nb_tensor *out = r ? nb_reshape(r, NB_SHAPE_SCALAR) : NULL;
        nb_release(x1);
        nb_release(r);
        return out;
    }
    if (nbi_check_dim(op, x, &dim, false) != NB_OK)
        return NULL;
    fctx *c = fctx_new(op);
    if (c) {
        c->i[0] = dim;
        c->i[1] = log;
    }
    return apply(log ? &log_softmax_fn : &softmax_fn, c, (nb_tensor *[]){(nb_tensor *)x}, 1);
}

nb_tensor *nb_gelu(const nb_tensor *x) { return NBI_API(gelu_impl(x)); }

nb_tensor *nb_softmax(const nb_tensor *x, int32_t dim)
{
    NBI_AUTOCAST(NBI_AC_FP32, &x);
    return NBI_API(softmax_impl(x, dim, false));
}

nb_tensor *nb_log_softmax(const nb_tensor *x, int32_t dim)
{
    NBI_AUTOCAST(NBI_AC_FP32, &x);
    return NBI_API(softmax_impl(x, dim, true));
}
