/* optable_nn.h - the conformance rows of core/nn/ and core/ops_extra.c: activations, layer_norm,
 * logsumexp, cumsum, tril, rpow, outer, embedding, attention and the extra losses, with their
 * float64 references. Included by optable.c before its table; CONF_NN_ROWS joins the table.
 * (Kept apart from optable.c so that rows added there and here merge without conflicts.) */
#ifndef NB_CONF_OPTABLE_NN_H
#define NB_CONF_OPTABLE_NN_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* the float dtypes a reference computes for: float64 arithmetic on the (rounded) inputs, the
 * harness rounding the result once into the dtype under test */
static bool nn_float(nb_dtype d)
{
    return d == NB_DTYPE_F32 || d == NB_DTYPE_F64 || d == NB_DTYPE_F16 || d == NB_DTYPE_BF16;
}

/* ---- elementwise references: s[0], s[1] are the op's parameters ---- */

static double r_leaky(double x, const double *s) { return x > 0 ? x : x * s[0]; }
static double r_elu(double x, const double *s) { return x > 0 ? x : s[0] * expm1(x); }
static double r_silu(double x, const double *s) { (void)s; return x / (1 + exp(-x)); }
static double r_softplus(double x, const double *s)
{
    return x * s[0] > s[1] ? x : log1p(exp(x * s[0])) / s[0];
}
static double r_gelu_tanh(double x, const double *s)
{
    (void)s;
    return 0.5 * x * (1 + tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
}
static double r_gelu_erf(double x, const double *s)
{
    (void)s;
    return 0.5 * x * erfc(-x * 0.70710678118654752440);
}
static double r_hardtanh(double x, const double *s)
{
    return isnan(x) ? x : x < s[0] ? s[0] : x > s[1] ? s[1] : x;
}
static double r_log_sigmoid(double x, const double *s)
{
    (void)s;
    return (x < 0 ? x : 0) - log1p(exp(-fabs(x)));
}
static double r_rpow(double x, const double *s) { return pow(s[0], x); }

static bool nn_unary_ref(const conf_host *x, const conf_params *p, conf_host *out,
                         double (*f)(double, const double *))
{
    if (!nn_float(x[0].dtype) || !conf_host_alloc(out, x[0].dtype, x[0].ndim, x[0].shape))
        return false;
    for (int64_t k = 0; k < conf_numel(out); k++)
        out->v[k] = f(x[0].v[k], p->s);
    return true;
}

#define NN_UNARY_(name, call)                                                              \
    static bool ref_##name(const conf_host *x, int32_t n, const conf_params *p,            \
                           conf_host *out)                                                 \
    {                                                                                      \
        (void)n;                                                                           \
        return nn_unary_ref(x, p, out, r_##name);                                          \
    }                                                                                      \
    static nb_tensor *a_##name(nb_tensor *const *x, int32_t n, const conf_params *p)       \
    {                                                                                      \
        (void)n, (void)p;                                                                  \
        return call;                                                                       \
    }
NN_UNARY_(leaky, nb_leaky_relu(x[0], p->s[0]))
NN_UNARY_(elu, nb_elu(x[0], p->s[0]))
NN_UNARY_(silu, nb_silu(x[0]))
NN_UNARY_(softplus, nb_softplus(x[0], p->s[0], p->s[1]))
NN_UNARY_(gelu_tanh, nb_gelu_tanh(x[0]))
NN_UNARY_(gelu_erf, nb_gelu(x[0]))
NN_UNARY_(hardtanh, nb_hardtanh(x[0], p->s[0], p->s[1]))
NN_UNARY_(log_sigmoid, nb_log_sigmoid(x[0]))
NN_UNARY_(rpow, nb_rpow_scalar(x[0], p->s[0]))

#define NN_ACT_SAMPLES(a, b)                                                               \
    {"2x3", 1, {IN(CONF_ANY, 2, 3)}, .p.s = {a, b}},                                       \
    {"0-d", 1, {IN0(CONF_ANY)}, .p.s = {a, b}},                                            \
    {"empty 0x3", 1, {IN(CONF_ANY, 0, 3)}, .p.s = {a, b}},                                 \
    {"transposed 3x4", 1, {TRANSPOSED(CONF_ANY, 3, 4)}, .p.s = {a, b}},                    \
    {"stride-0 expand 1x4->3x4", 1, {EXPANDED(CONF_ANY, SHP(1, 4), SHP(3, 4))},            \
     .p.s = {a, b}},                                                                       \
    {"narrow 5x3 dim0 [1,4)", 1, {NARROWED(CONF_ANY, SHP(5, 3), 0, 1, 3)}, .p.s = {a, b}}, \
    {"edge values", 1, {VALS(EDGE, 12)}, .p.s = {a, b}, .flags = FO | NG}

static const conf_sample s_nn_leaky[] = {NN_ACT_SAMPLES(0.1, 0)};
static const conf_sample s_nn_elu[] = {NN_ACT_SAMPLES(1.5, 0)};
static const conf_sample s_nn_plain[] = {NN_ACT_SAMPLES(0, 0)};
static const conf_sample s_nn_softplus[] = {NN_ACT_SAMPLES(2, 3)};
static const conf_sample s_nn_hardtanh[] = {NN_ACT_SAMPLES(-0.5, 1.5)};
static const conf_sample s_nn_rpow[] = {NN_ACT_SAMPLES(2.5, 0)};
static const conf_error e_nn_act[] = {
    {"NULL input", 1, {IN(CONF_ANY, 2, 3)}, .null_arg = 1},
};

/* ---- layer_norm over the last k[0] dims, no affine / with weight and bias (inputs 1, 2) ---- */

static bool ref_layer_norm(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    int32_t nd = (int32_t)p->k[0];
    if (!nn_float(x[0].dtype) || nd < 1 || nd > x[0].ndim)
        return false;
    int64_t inner = 1;
    for (int32_t d = x[0].ndim - nd; d < x[0].ndim; d++)
        inner *= x[0].shape[d];
    if (n > 1 && conf_numel(&x[1]) != inner)
        return false;
    if (!conf_host_alloc(out, x[0].dtype, x[0].ndim, x[0].shape))
        return false;
    int64_t rows = inner ? conf_numel(out) / inner : 0;
    for (int64_t r = 0; r < rows; r++) {
        const double *v = x[0].v + r * inner;
        double mu = 0, var = 0;
        for (int64_t i = 0; i < inner; i++)
            mu += v[i];
        mu /= (double)inner;
        for (int64_t i = 0; i < inner; i++)
            var += (v[i] - mu) * (v[i] - mu);
        var /= (double)inner;
        for (int64_t i = 0; i < inner; i++) {
            double y = (v[i] - mu) / sqrt(var + 1e-5);
            if (n > 1)
                y = y * x[1].v[i] + x[2].v[i];
            out->v[r * inner + i] = y;
        }
    }
    return true;
}
static nb_tensor *a_layer_norm(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    nb_shape s = nb_tensor_shape(x[0]);
    int32_t nd = (int32_t)p->k[0];
    if (nd < 1 || nd > s.ndim)
        return nb_layer_norm(x[0], s.dims, nd, NULL, NULL, 1e-5);
    return nb_layer_norm(x[0], s.dims + s.ndim - nd, nd, n > 1 ? x[1] : NULL,
                         n > 2 ? x[2] : NULL, 1e-5);
}
static const conf_sample s_nn_layer_norm[] = {
    {"2x5 over 1 dim", 1, {IN(CONF_ANY, 2, 5)}, .p.k = {1}},
    {"2x3x4 over 2 dims", 1, {IN(CONF_ANY, 2, 3, 4)}, .p.k = {2}},
    {"3x4 with weight and bias", 3, {IN(CONF_ANY, 3, 4), IN(CONF_ANY, 4), IN(CONF_ANY, 4)},
     .p.k = {1}},
    {"transposed 4x3", 1, {TRANSPOSED(CONF_ANY, 4, 3)}, .p.k = {1}},
};
static const conf_error e_nn_layer_norm[] = {
    {"3 dims of a 2-d input", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {3}},
    {"NULL input", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {1}, .null_arg = 1},
};

/* ---- logsumexp over dims / cumsum along k[0] ---- */

static bool ref_logsumexp(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    /* over one dim k[0] (the samples use one), keepdim false */
    const conf_host *h = &x[0];
    int32_t dim = (int32_t)p->k[0];
    if (!nn_float(h->dtype) || h->ndim < 1)
        return false;
    if (dim < 0)
        dim += h->ndim;
    if (dim < 0 || dim >= h->ndim)
        return false;
    int64_t shape[NB_MAX_DIMS], len = h->shape[dim], inner = 1;
    int32_t od = 0;
    for (int32_t d = 0; d < h->ndim; d++)
        if (d != dim)
            shape[od++] = h->shape[d];
    for (int32_t d = dim + 1; d < h->ndim; d++)
        inner *= h->shape[d];
    if (!conf_host_alloc(out, h->dtype, od, shape))
        return false;
    int64_t outer = conf_numel(out) / (inner ? inner : 1);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            double m = -INFINITY, s = 0;
            for (int64_t j = 0; j < len; j++)
                m = fmax(m, h->v[(o * len + j) * inner + i]);
            double mm = isinf(m) ? 0 : m;
            for (int64_t j = 0; j < len; j++)
                s += exp(h->v[(o * len + j) * inner + i] - mm);
            out->v[o * inner + i] = log(s) + mm;
        }
    return true;
}
static nb_tensor *a_logsumexp(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    int32_t dim = (int32_t)p->k[0];
    return nb_logsumexp(x[0], &dim, 1, false);
}
static const double LSE_BIG[] = {1000, 999, -INFINITY, -1000, -1001, 3};
static const conf_sample s_nn_logsumexp[] = {
    {"2x5 dim 1", 1, {IN(CONF_ANY, 2, 5)}, .p.k = {1}},
    {"3x4 dim 0", 1, {IN(CONF_ANY, 3, 4)}, .p.k = {0}},
    {"transposed dim -1", 1, {TRANSPOSED(CONF_ANY, 4, 3)}, .p.k = {-1}},
    {"large values and -inf", 1, {VALS(LSE_BIG, 2, 3)}, .p.k = {1}, .flags = FO | NG},
};
static const conf_error e_nn_logsumexp[] = {
    {"NULL input", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {1}, .null_arg = 1},
};

static bool ref_cumsum(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    const conf_host *h = &x[0];
    int32_t dim = (int32_t)p->k[0];
    if (dim < 0)
        dim += h->ndim;
    if (h->ndim < 1 || dim < 0 || dim >= h->ndim)
        return false;
    nb_dtype dt = nn_float(h->dtype) ? h->dtype : NB_DTYPE_I64;
    if (!conf_host_alloc(out, dt, h->ndim, h->shape))
        return false;
    int64_t len = h->shape[dim], inner = 1;
    for (int32_t d = dim + 1; d < h->ndim; d++)
        inner *= h->shape[d];
    int64_t outer = len && inner ? conf_numel(h) / (len * inner) : 0;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            double s = 0;
            for (int64_t j = 0; j < len; j++) {
                s += h->v[(o * len + j) * inner + i];
                out->v[(o * len + j) * inner + i] = s;
            }
        }
    return true;
}
static nb_tensor *a_cumsum(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_cumsum(x[0], (int32_t)p->k[0]);
}
static const conf_sample s_nn_cumsum[] = {
    {"2x5 dim 1", 1, {IN(CONF_ANY, 2, 5)}, .p.k = {1}},
    {"3x4 dim 0", 1, {IN(CONF_ANY, 3, 4)}, .p.k = {0}},
    {"transposed dim -1", 1, {TRANSPOSED(CONF_ANY, 4, 3)}, .p.k = {-1}},
    {"empty 0x3 dim 0", 1, {IN(CONF_ANY, 0, 3)}, .p.k = {0}},
};
static const conf_error e_nn_cumsum[] = {
    {"dim 2 of a 2-d tensor", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {2}},
    {"NULL input", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {0}, .null_arg = 1},
};

/* ---- tril(k[0]) of the last two dims ---- */

static bool ref_tril(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    const conf_host *h = &x[0];
    if (h->ndim < 2 || !conf_host_alloc(out, h->dtype, h->ndim, h->shape))
        return false;
    int64_t R = h->shape[h->ndim - 2], C = h->shape[h->ndim - 1];
    for (int64_t k = 0; k < conf_numel(h); k++) {
        int64_t j = k % C, i = (k / C) % R;
        out->v[k] = j - i <= p->k[0] ? h->v[k] : 0;
    }
    return true;
}
static nb_tensor *a_tril(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_tril(x[0], p->k[0]);
}
static const conf_sample s_nn_tril[] = {
    {"3x4 diagonal 0", 1, {IN(CONF_ANY, 3, 4)}, .p.k = {0}},
    {"2x3x3 diagonal -1", 1, {IN(CONF_ANY, 2, 3, 3)}, .p.k = {-1}},
    {"transposed 4x3 diagonal 1", 1, {TRANSPOSED(CONF_ANY, 4, 3)}, .p.k = {1}},
};
static const conf_error e_nn_tril[] = {
    {"1-d input", 1, {IN(CONF_ANY, 3)}},
    {"NULL input", 1, {IN(CONF_ANY, 2, 3)}, .null_arg = 1},
};

/* ---- outer ---- */

static bool ref_outer(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n, (void)p;
    if (x[0].ndim != 1 || x[1].ndim != 1)
        return false;
    int64_t shape[2] = {x[0].shape[0], x[1].shape[0]};
    if (!conf_host_alloc(out, x[0].dtype, 2, shape))
        return false;
    for (int64_t i = 0; i < shape[0]; i++)
        for (int64_t j = 0; j < shape[1]; j++)
            out->v[i * shape[1] + j] = x[0].v[i] * x[1].v[j];
    return true;
}
static nb_tensor *a_outer(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n, (void)p;
    return nb_outer(x[0], x[1]);
}
static const conf_sample s_nn_outer[] = {
    {"3 and 4", 2, {IN(CONF_ANY, 3), IN(CONF_ANY, 4)}},
    {"select views", 2, {SELECTED(CONF_ANY, SHP(3, 5), 1, 2), IN(CONF_ANY, 2)}},
};
static const conf_error e_nn_outer[] = {
    {"2-d input", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 3)}},
    {"NULL second input", 2, {IN(CONF_ANY, 2), IN(CONF_ANY, 2)}, .null_arg = 2},
};

/* ---- embedding: x[0] int64 indices, x[1] the table (dtype under test); k[0] 1: padding 0 ---- */

static bool ref_embedding(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n, (void)p;
    const conf_host *idx = &x[0], *w = &x[1];
    if (w->ndim != 2 || !nn_float(w->dtype) || idx->ndim + 1 > NB_MAX_DIMS)
        return false;
    int64_t shape[NB_MAX_DIMS], D = w->shape[1];
    memcpy(shape, idx->shape, (size_t)idx->ndim * sizeof *shape);
    shape[idx->ndim] = D;
    for (int64_t k = 0; k < conf_numel(idx); k++)
        if (idx->v[k] < 0 || idx->v[k] >= (double)w->shape[0])
            return false;
    if (!conf_host_alloc(out, w->dtype, idx->ndim + 1, shape))
        return false;
    for (int64_t k = 0; k < conf_numel(idx); k++)
        for (int64_t d = 0; d < D; d++)
            out->v[k * D + d] = w->v[(int64_t)idx->v[k] * D + d];
    return true;
}
static nb_tensor *a_embedding(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n, (void)p;
    return nb_embedding(x[0], x[1], NB_NO_PADDING_IDX);
}
static const double EMB_IDX[] = {0, 3, 1, 3, 2, 0};
static const double EMB_BAD[] = {0, 4};
static const conf_sample s_nn_embedding[] = {
    {"2x3 indices into 4x5", 2, {FIXED(NB_DTYPE_I64, EMB_IDX, 2, 3), IN(CONF_ANY, 4, 5)}},
    {"0-d index", 2, {FIXED(NB_DTYPE_I64, EMB_IDX, 1), IN(CONF_ANY, 4, 2)}},
    {"transposed table", 2, {FIXED(NB_DTYPE_I64, EMB_IDX, 6), TRANSPOSED(CONF_ANY, 3, 4)}},
};
static const conf_error e_nn_embedding[] = {
    {"index 4 of 4 rows", 2, {FIXED(NB_DTYPE_I64, EMB_BAD, 2), IN(CONF_ANY, 4, 3)}},
    {"NULL table", 2, {FIXED(NB_DTYPE_I64, EMB_IDX, 2), IN(CONF_ANY, 4, 3)}, .null_arg = 2},
};

/* ---- scaled_dot_product_attention; k[0] 1: causal ---- */

static bool ref_sdpa(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    const conf_host *q = &x[0], *k = &x[1], *v = &x[2];
    int32_t nd = q->ndim;
    if (nd < 2 || k->ndim != nd || v->ndim != nd || !nn_float(q->dtype))
        return false;
    int64_t L = q->shape[nd - 2], E = q->shape[nd - 1], S = k->shape[nd - 2];
    int64_t Ev = v->shape[nd - 1], B = 1;
    for (int32_t d = 0; d < nd - 2; d++) {
        if (q->shape[d] != k->shape[d] || q->shape[d] != v->shape[d])
            return false;
        B *= q->shape[d];
    }
    if (k->shape[nd - 1] != E || v->shape[nd - 2] != S)
        return false;
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, q->shape, (size_t)nd * sizeof *shape);
    shape[nd - 1] = Ev;
    if (!conf_host_alloc(out, q->dtype, nd, shape))
        return false;
    double *w = calloc((size_t)(S ? S : 1), sizeof *w);
    if (!w)
        return false;
    double scale = 1 / sqrt((double)E);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < L; i++) {
            double m = -INFINITY, sum = 0;
            for (int64_t j = 0; j < S; j++) {
                double s = 0;
                for (int64_t e = 0; e < E; e++)
                    s += q->v[(b * L + i) * E + e] * k->v[(b * S + j) * E + e];
                w[j] = p->k[0] && j > i ? -INFINITY : s * scale;
                m = fmax(m, w[j]);
            }
            for (int64_t j = 0; j < S; j++)
                sum += (w[j] = exp(w[j] - m));
            for (int64_t e = 0; e < Ev; e++) {
                double acc = 0;
                for (int64_t j = 0; j < S; j++)
                    acc += w[j] / sum * v->v[(b * S + j) * Ev + e];
                out->v[(b * L + i) * Ev + e] = acc;
            }
        }
    free(w);
    return true;
}
static nb_tensor *a_sdpa(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_scaled_dot_product_attention(x[0], x[1], x[2],
                                           (nb_sdpa_opts){.is_causal = p->k[0] != 0});
}
static const conf_sample s_nn_sdpa[] = {
    {"1x2x3x4, 2x4 keys", 3, {IN(CONF_ANY, 1, 2, 3, 4), IN(CONF_ANY, 1, 2, 5, 4),
                               IN(CONF_ANY, 1, 2, 5, 3)}},
    {"causal 2x4x4", 3, {IN(CONF_ANY, 2, 4, 4), IN(CONF_ANY, 2, 4, 4), IN(CONF_ANY, 2, 4, 2)},
     .p.k = {1}},
    {"transposed query", 3, {{.base = SHP(2, 4, 3), .dtype = -1, .view = CONF_TRANSPOSE,
                              .a = 1, .b = 2}, IN(CONF_ANY, 2, 5, 4), IN(CONF_ANY, 2, 5, 4)}},
};
static const conf_error e_nn_sdpa[] = {
    {"E 4 vs 3", 3, {IN(CONF_ANY, 2, 3, 4), IN(CONF_ANY, 2, 3, 3), IN(CONF_ANY, 2, 3, 3)}},
    {"NULL value", 3, {IN(CONF_ANY, 2, 3, 4), IN(CONF_ANY, 2, 3, 4), IN(CONF_ANY, 2, 3, 4)},
     .null_arg = 3},
};

/* ---- smooth_l1 (s[0] beta), huber (s[0] delta), kl_div: k[0] reduction ---- */

static bool nn_reduce(conf_host *l, int64_t r, conf_host *out)
{
    if (r == NB_REDUCTION_NONE) {
        *out = *l;
        return true;
    }
    double s = 0;
    for (int64_t k = 0; k < conf_numel(l); k++)
        s += l->v[k];
    if (r == NB_REDUCTION_MEAN)
        s /= (double)conf_numel(l);
    bool ok = conf_host_alloc(out, l->dtype, 0, NULL);
    if (ok)
        out->v[0] = s;
    conf_host_free(l);
    return ok;
}

static bool nn_pair_loss(const conf_host *x, const conf_params *p, conf_host *out, int which)
{
    if (x[0].ndim != x[1].ndim || memcmp(x[0].shape, x[1].shape, (size_t)x[0].ndim * 8) ||
        !nn_float(x[0].dtype))
        return false;
    conf_host l = {0};
    if (!conf_host_alloc(&l, x[0].dtype, x[0].ndim, x[0].shape))
        return false;
    double b = p->s[0];
    for (int64_t k = 0; k < conf_numel(&l); k++) {
        double a = x[0].v[k], t = x[1].v[k], d = fabs(a - t);
        if (which == 0)
            l.v[k] = d < b ? 0.5 * d * d / b : d - 0.5 * b;
        else if (which == 1)
            l.v[k] = d < b ? 0.5 * d * d : b * (d - 0.5 * b);
        else
            l.v[k] = (t > 0 ? t * log(t) : 0) - t * a;
    }
    return nn_reduce(&l, p->k[0], out);
}
static bool ref_smooth_l1(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return nn_pair_loss(x, p, out, 0);
}
static bool ref_huber(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return nn_pair_loss(x, p, out, 1);
}
static bool ref_kl_div(const conf_host *x, int32_t n, const conf_params *p, conf_host *out)
{
    (void)n;
    return nn_pair_loss(x, p, out, 2);
}
static nb_tensor *a_smooth_l1(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_smooth_l1_loss(x[0], x[1], (nb_reduction)p->k[0], p->s[0]);
}
static nb_tensor *a_huber(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_huber_loss(x[0], x[1], (nb_reduction)p->k[0], p->s[0]);
}
static nb_tensor *a_kl_div(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_kl_div(x[0], x[1], (nb_reduction)p->k[0], false);
}
static const conf_sample s_nn_pair_loss[] = {
    {"2x3 mean", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 3)}, .p.s = {0.7}},
    {"4 sum", 2, {IN(CONF_ANY, 4), IN(CONF_ANY, 4)}, .p.s = {1.3}, .p.k = {NB_REDUCTION_SUM}},
    {"3x2 none", 2, {IN(CONF_ANY, 3, 2), IN(CONF_ANY, 3, 2)}, .p.s = {1},
     .p.k = {NB_REDUCTION_NONE}},
    {"transposed", 2, {TRANSPOSED(CONF_ANY, 3, 4), IN(CONF_ANY, 4, 3)}, .p.s = {0.5}},
};
static const conf_sample s_nn_kl[] = {
    {"2x3 mean", 2, {IN(CONF_ANY, 2, 3), IN(CONF_UNIT, 2, 3)}},
    {"4 sum", 2, {IN(CONF_ANY, 4), IN(CONF_UNIT, 4)}, .p.k = {NB_REDUCTION_SUM}},
    {"3x2 none", 2, {IN(CONF_ANY, 3, 2), IN(CONF_UNIT, 3, 2)}, .p.k = {NB_REDUCTION_NONE}},
};
static const conf_error e_nn_loss[] = {
    /* 2x3 and 3 broadcast (PyTorch's smooth_l1/huber/kl_div take them); 2x3 and 2 do not */
    {"shapes 2x3 and 2", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2)}, .p.s = {1}},
    {"NULL target", 2, {IN(CONF_ANY, 2), IN(CONF_ANY, 2)}, .p.s = {1}, .null_arg = 2},
};

#define NN_FO_ (1u << NB_DTYPE_F32 | 1u << NB_DTYPE_F64)
/* float16 and bfloat16 too: every op below runs in both in PyTorch 2.x */
#define NN_FH_ (NN_FO_ | 1u << NB_DTYPE_F16 | 1u << NB_DTYPE_BF16)
#define NN_ROW_(name, api, needs, dtypes, diff, scale, run, ref, samples, errors)          \
    {name, api, NULL, needs, CONF_KD_SAME, dtypes, diff, scale, run, ref, samples,         \
     COUNT_(samples), errors, COUNT_(errors)}
/* a row whose op has a tier-2 kernel of that name */
#define NN_ROW_K_(name, api, kernel, needs, dtypes, diff, scale, run, ref, samples, errors) \
    {name, api, kernel, needs, CONF_KD_SAME, dtypes, diff, scale, run, ref, samples,       \
     COUNT_(samples), errors, COUNT_(errors)}

#define CONF_NN_ROWS                                                                       \
    NN_ROW_("leaky_relu", "nb_leaky_relu", "gt_scalar mul_scalar where", NN_FH_, true, 0,  \
            a_leaky, ref_leaky, s_nn_leaky, e_nn_act),                                     \
    NN_ROW_("elu", "nb_elu", "gt_scalar clamp exp where", NN_FH_, true, 0, a_elu, ref_elu, \
            s_nn_elu, e_nn_act),                                                           \
    NN_ROW_("silu", "nb_silu", "sigmoid mul", NN_FH_, true, 0, a_silu, ref_silu,           \
            s_nn_plain, e_nn_act),                                                         \
    NN_ROW_("softplus", "nb_softplus", "clamp sigmoid log where", NN_FH_, true, 0,         \
            a_softplus, ref_softplus, s_nn_softplus, e_nn_act),                            \
    NN_ROW_K_("gelu_tanh", "nb_gelu_tanh", "gelu", "mul add sigmoid", NN_FH_, true, 0,     \
              a_gelu_tanh, ref_gelu_tanh, s_nn_plain, e_nn_act),                           \
    NN_ROW_K_("gelu", "nb_gelu", "gelu", "mul exp abs div where", NN_FH_, true, 0,         \
              a_gelu_erf, ref_gelu_erf, s_nn_plain, e_nn_act),                             \
    NN_ROW_("hardtanh", "nb_hardtanh", "gt_scalar lt_scalar clamp where", NN_FH_, true, 0, \
            a_hardtanh, ref_hardtanh, s_nn_hardtanh, e_nn_act),                            \
    NN_ROW_("log_sigmoid", "nb_log_sigmoid", "clamp sigmoid log where", NN_FH_, true, 0,   \
            a_log_sigmoid, ref_log_sigmoid, s_nn_plain, e_nn_act),                         \
    NN_ROW_("rpow_scalar", "nb_rpow_scalar", "rpow_scalar", NN_FH_, true, 0, a_rpow,       \
            ref_rpow, s_nn_rpow, e_nn_act),                                                \
    NN_ROW_K_("layer_norm", "nb_layer_norm", "layer_norm", "sum sub mul rsqrt add", NN_FH_,\
              true, 10, a_layer_norm, ref_layer_norm, s_nn_layer_norm, e_nn_layer_norm),   \
    NN_ROW_("logsumexp", "nb_logsumexp", "max sub exp sum log where", NN_FH_, true, 10,    \
            a_logsumexp, ref_logsumexp, s_nn_logsumexp, e_nn_logsumexp),                   \
    NN_ROW_("cumsum", "nb_cumsum", "matmul where copy", NN_FH_, true, 10, a_cumsum,        \
            ref_cumsum, s_nn_cumsum, e_nn_cumsum),                                         \
    NN_ROW_("tril", "nb_tril", "where", NN_FH_ | (1u << NB_DTYPE_I32 | 1u << NB_DTYPE_I64),\
            true, 0, a_tril, ref_tril, s_nn_tril, e_nn_tril),                              \
    NN_ROW_("outer", "nb_outer", "mul", NN_FH_, true, 0, a_outer, ref_outer, s_nn_outer,   \
            e_nn_outer),                                                                   \
    NN_ROW_K_("embedding", "nb_embedding", "embedding_backward", "gather scatter_add", NN_FH_,\
              true, 0, a_embedding, ref_embedding, s_nn_embedding, e_nn_embedding),        \
    NN_ROW_K_("scaled_dot_product_attention", "nb_scaled_dot_product_attention",           \
              "attention", "matmul max sub exp sum div where", NN_FH_, true, 10, a_sdpa,   \
              ref_sdpa, s_nn_sdpa, e_nn_sdpa),                                             \
    NN_ROW_("smooth_l1_loss", "nb_smooth_l1_loss", "sub abs mul where sum", NN_FH_, true,  \
            10, a_smooth_l1, ref_smooth_l1, s_nn_pair_loss, e_nn_loss),                    \
    NN_ROW_("huber_loss", "nb_huber_loss", "sub abs mul where sum", NN_FH_, true, 10,      \
            a_huber, ref_huber, s_nn_pair_loss, e_nn_loss),                                \
    NN_ROW_("kl_div", "nb_kl_div", "log mul sub where sum", NN_FH_, true, 10, a_kl_div,    \
            ref_kl_div, s_nn_kl, e_nn_loss),

#endif
