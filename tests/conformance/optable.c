/* optable.c - the one table that drives the conformance suite: for each op its adapter onto the
 * public nabla.h function, reference, dtypes, samples (0-d, empty, broadcast, transposed,
 * stride-0, offset views, edge values), error inputs and tolerances. */
#include "conformance.h"

#include <math.h>
#include <string.h>

/* The nn functions live in core/nn/ (the library on top), which may be absent from a libnabla
 * under construction; weak references keep the suite linking and report those rows as
 * unsupported. */
#pragma weak nb_softmax
#pragma weak nb_log_softmax
#pragma weak nb_conv2d
#pragma weak nb_max_pool2d
#pragma weak nb_avg_pool2d
#pragma weak nb_linear
#pragma weak nb_mse_loss
#pragma weak nb_cross_entropy
#pragma weak nb_binary_cross_entropy_with_logits

/* ---- Tolerances: |got - ref| <= atol + rtol * |ref| ----
 * float32: the reference is exact float64 rounded once to float32, so an elementwise kernel
 * computing in float32 is within a few ulps (rtol 1e-5 = ~80 ulps leaves room for exp/log/pow
 * approximations on GPUs). Ops that accumulate (reductions, matmul, conv, losses) get
 * tol_scale 10. float64: 1e-12 leaves room only for a different summation order. Integers and
 * bool must match exactly. */
#define EXACT_ 1e-300 /* tolerance scale: bit for bit */

conf_tol conf_tolerance(const conf_op *op, nb_dtype dtype)
{
    double s = op->tol_scale > 0 ? op->tol_scale : 1;
    /* half: computed in float32 and rounded once, so about one unit in the last place. A scale
     * below 1 (randn's 0.1: a float32 value a few ulp off the reference) would ask for less than
     * that, yet a float32 value one ulp off rounds to the neighbouring 16-bit value when it sits
     * near a tie (randn on a device without fp64); so 16-bit rows get at least one 16-bit ulp,
     * unless they are bit for bit. */
    double h = s < 1 && s != EXACT_ ? 1 : s;
    switch (dtype) {
    case NB_DTYPE_F32: return (conf_tol){1e-5 * s, 1e-6 * s};
    case NB_DTYPE_F64: return (conf_tol){1e-12 * s, 1e-12 * s};
    case NB_DTYPE_F16: return (conf_tol){1e-3 * h, 1e-3 * h};
    case NB_DTYPE_BF16: return (conf_tol){1e-2 * h, 1e-2 * h};
    default: return (conf_tol){0, 0};
    }
}

/* ---- Sample-building shorthands ---- */

#define NARGS_(...) ((int32_t)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define SHP(...) {.ndim = NARGS_(__VA_ARGS__), .dims = {__VA_ARGS__}}
#define SHP0 {.ndim = 0}
#define COUNT_(arr) ((int32_t)(sizeof(arr) / sizeof((arr)[0])))

/* An input of the dtype under test, from a domain. */
#define IN(dom, ...) {.base = SHP(__VA_ARGS__), .dtype = -1, .domain = (dom)}
#define IN0(dom) {.base = SHP0, .dtype = -1, .domain = (dom)}
/* An input with given values (cycled). */
#define VALS(arr, ...) {.base = SHP(__VA_ARGS__), .dtype = -1, .values = (arr), .n_values = COUNT_(arr)}
/* A fixed-dtype input with given values (indices, conditions). */
#define FIXED(dt, arr, ...) {.base = SHP(__VA_ARGS__), .dtype = (dt), .values = (arr), .n_values = COUNT_(arr)}
#define TRANSPOSED(dom, r, c) {.base = SHP(r, c), .dtype = -1, .domain = (dom), .view = CONF_TRANSPOSE, .a = 0, .b = 1}
#define EXPANDED(dom, base_, to_) {.base = base_, .dtype = -1, .domain = (dom), .view = CONF_EXPAND, .to = to_}
#define NARROWED(dom, base_, dim, start, len) {.base = base_, .dtype = -1, .domain = (dom), .view = CONF_NARROW, .a = dim, .b = start, .c = len}
#define SELECTED(dom, base_, dim, idx) {.base = base_, .dtype = -1, .domain = (dom), .view = CONF_SELECT, .a = dim, .b = idx}

#define FO CONF_FLOAT_ONLY
#define NG CONF_NO_GRAD

/* -0.0, infinities, NaN, halves (round to even) and values near 0 for every unary op. */
static const double EDGE[] = {-0.0, 0.0, INFINITY, -INFINITY, NAN, -1.5, 0.5, 2.5,
                              -2.5, 1.0,  -1.0, 1e-3};
/* Pairs for binary ops: ties, signed zeros, inf against inf, NaN on either side. */
static const double EDGE_A[] = {-0.0, 0.0, INFINITY, -INFINITY, NAN, 1.0, 2.0, -1.0, 0.0, INFINITY, 3.0, -2.0};
static const double EDGE_B[] = {0.0, -0.0, INFINITY, 1.0, 1.0, NAN, 2.0, -1.0, 0.0, -INFINITY, 0.5, 3.0};
/* Integer-valued ties for every dtype: relu/sign at 0, maximum/compare at equality. */
static const double TIES[] = {-1, 0, 1, 0, 2, -2};
static const double TIES_B[] = {-1, 1, 1, 0, -2, -2};

/* ---- Unary ops ---- */

#define UNARY_SAMPLES(dom)                                                                 \
    {"2x3", 1, {IN(dom, 2, 3)}},                                                           \
    {"0-d", 1, {IN0(dom)}},                                                                \
    {"empty 0x3", 1, {IN(dom, 0, 3)}},                                                     \
    {"transposed 3x4", 1, {TRANSPOSED(dom, 3, 4)}},                                        \
    {"stride-0 expand 1x4->3x4", 1, {EXPANDED(dom, SHP(1, 4), SHP(3, 4))}},                \
    {"narrow 5x3 dim0 [1,4)", 1, {NARROWED(dom, SHP(5, 3), 0, 1, 3)}},                     \
    {"select 3x5 dim1 idx2", 1, {SELECTED(dom, SHP(3, 5), 1, 2)}},                         \
    {"edge values", 1, {VALS(EDGE, 12)}, .flags = FO | NG},                               \
    {"integer ties", 1, {VALS(TIES, 6)}, .flags = NG}

static const conf_sample s_unary_any[] = {UNARY_SAMPLES(CONF_ANY)};
static const conf_sample s_unary_pos[] = {UNARY_SAMPLES(CONF_POS)};

static const conf_error e_unary[] = {
    {"NULL input", 1, {IN(CONF_ANY, 2, 3)}, .null_arg = 1},
};

#define A_UNARY_(name)                                                                     \
    static nb_tensor *a_##name(nb_tensor *const *x, int32_t n, const conf_params *p)       \
    {                                                                                      \
        (void)n, (void)p;                                                                  \
        return nb_##name(x[0]);                                                            \
    }
NB_UNARY_OPS_(A_UNARY_)
A_UNARY_(logical_not)

/* ---- Binary ops: broadcasting pairs, views on either side ---- */

#define BINARY_SAMPLES(da, db)                                                             \
    {"2x3 and 2x3", 2, {IN(da, 2, 3), IN(db, 2, 3)}},                                      \
    {"broadcast 3x1 and 1x4", 2, {IN(da, 3, 1), IN(db, 1, 4)}},                            \
    {"broadcast 0-d and 2x3", 2, {IN0(da), IN(db, 2, 3)}},                                 \
    {"broadcast 2x3 and 3", 2, {IN(da, 2, 3), IN(db, 3)}},                                 \
    {"transposed 4x3 and 3x4", 2, {TRANSPOSED(da, 4, 3), IN(db, 3, 4)}},                   \
    {"stride-0 expand and 3x4", 2, {IN(da, 3, 4), EXPANDED(db, SHP(4), SHP(3, 4))}},       \
    {"narrow and select", 2, {NARROWED(da, SHP(5, 3), 0, 1, 3),                            \
                               SELECTED(db, SHP(2, 3, 3), 0, 1)}},                         \
    {"empty 0x3 and 1x3", 2, {IN(da, 0, 3), IN(db, 1, 3)}},                                \
    {"edge values", 2, {VALS(EDGE_A, 12), VALS(EDGE_B, 12)}, .flags = FO | NG}

static const conf_sample s_binary[] = {BINARY_SAMPLES(CONF_ANY, CONF_ANY),
                                       {"integer ties", 2, {VALS(TIES, 6), VALS(TIES_B, 6)}, .flags = NG}};
static const conf_sample s_binary_div[] = {BINARY_SAMPLES(CONF_ANY, CONF_NONZERO)};

/* Signed zeros compared by sign: abs(-0.0) is 0.0, and maximum/minimum of -0.0 and 0.0 keep
 * their first operand, as the cpu plugin does (the edge values above compare |got - ref| only). */
#define ZS CONF_ZERO_SIGN
static const double ZEROS[] = {-0.0, 0.0, -0.0, 0.0};
static const double ZEROS_B[] = {0.0, -0.0, -0.0, 0.0};
static const conf_sample s_unary_zero_sign[] = {
    UNARY_SAMPLES(CONF_ANY),
    {"signed zeros", 1, {VALS(ZEROS, 4)}, .flags = FO | NG | ZS},
};
static const conf_sample s_binary_zero_sign[] = {
    BINARY_SAMPLES(CONF_ANY, CONF_ANY),
    {"integer ties", 2, {VALS(TIES, 6), VALS(TIES_B, 6)}, .flags = NG},
    {"signed zeros", 2, {VALS(ZEROS, 4), VALS(ZEROS_B, 4)}, .flags = FO | NG | ZS},
};
static const conf_sample s_binary_pow[] = {BINARY_SAMPLES(CONF_POS, CONF_POS)};

static const conf_error e_binary[] = {
    {"shapes 2x3 and 4", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 4)}},
    {"NULL first input", 2, {IN(CONF_ANY, 2), IN(CONF_ANY, 2)}, .null_arg = 1},
    {"NULL second input", 2, {IN(CONF_ANY, 2), IN(CONF_ANY, 2)}, .null_arg = 2},
};

#define A_BINARY_(name)                                                                    \
    static nb_tensor *a_##name(nb_tensor *const *x, int32_t n, const conf_params *p)       \
    {                                                                                      \
        (void)n, (void)p;                                                                  \
        return nb_##name(x[0], x[1]);                                                      \
    }
NB_BINARY_OPS_(A_BINARY_)
NB_COMPARE_OPS_(A_BINARY_)
NB_LOGICAL_OPS_(A_BINARY_)

/* ---- Tensor-scalar ops: s[0] is the scalar ---- */

#define SCALAR_SAMPLES(dom, s1, s2, s3)                                                    \
    {"2x3", 1, {IN(dom, 2, 3)}, .p.s = {s1}},                                              \
    {"0-d", 1, {IN0(dom)}, .p.s = {s2}},                                                   \
    {"empty 0x3", 1, {IN(dom, 0, 3)}, .p.s = {s1}},                                        \
    {"transposed 3x4", 1, {TRANSPOSED(dom, 3, 4)}, .p.s = {s2}},                           \
    {"stride-0 expand", 1, {EXPANDED(dom, SHP(1, 4), SHP(3, 4))}, .p.s = {s1}},            \
    {"select offset view", 1, {SELECTED(dom, SHP(3, 5), 1, 2)}, .p.s = {s2}},              \
    {"fractional scalar", 1, {IN(dom, 2, 3)}, .p.s = {s3}},                                \
    {"edge values", 1, {VALS(EDGE, 12)}, .p.s = {s1}, .flags = FO | NG}

static const conf_sample s_scalar[] = {SCALAR_SAMPLES(CONF_ANY, 2, -3, 0.5),
                                       {"integer ties", 1, {VALS(TIES, 6)}, .p.s = {0}, .flags = NG}};
/* maximum_scalar/minimum_scalar: a NaN scalar wins, as in torch.clamp */
static const conf_sample s_scalar_nan[] = {SCALAR_SAMPLES(CONF_ANY, 2, -3, 0.5),
                                           {"integer ties", 1, {VALS(TIES, 6)}, .p.s = {0}, .flags = NG},
                                           {"NaN scalar", 1, {IN(CONF_ANY, 2, 3)}, .p.s = {NAN}, .flags = NG}};
static const conf_sample s_scalar_div[] = {SCALAR_SAMPLES(CONF_ANY, 2, -4, 0.5),
                                           {"divide by zero", 1, {VALS(EDGE, 12)}, .p.s = {0}, .flags = FO | NG}};
static const conf_sample s_scalar_rdiv[] = {SCALAR_SAMPLES(CONF_NONZERO, 2, -4, 0.5)};
static const conf_sample s_scalar_pow[] = {SCALAR_SAMPLES(CONF_POS, 2, 3, 0.5),
                                           {"negative power", 1, {IN(CONF_POS, 2, 3)}, .p.s = {-1}},
                                           {"power 0", 1, {IN(CONF_POS, 2, 3)}, .p.s = {0}}};

static const conf_error e_scalar[] = {
    {"NULL input", 1, {IN(CONF_ANY, 2)}, .null_arg = 1},
};

#define A_SCALAR_(name)                                                                    \
    static nb_tensor *a_##name##_scalar(nb_tensor *const *x, int32_t n, const conf_params *p) \
    {                                                                                      \
        (void)n;                                                                           \
        return nb_##name##_scalar(x[0], p->s[0]);                                          \
    }
NB_BINARY_OPS_(A_SCALAR_)
NB_COMPARE_OPS_(A_SCALAR_)
A_SCALAR_(rsub)
A_SCALAR_(rdiv)

/* ---- where, clamp ---- */

static const double COND[] = {1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1};
static const conf_sample s_where[] = {
    {"2x3", 3, {FIXED(NB_DTYPE_BOOL, COND, 2, 3), IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 3)}},
    {"broadcast cond 3x1, 1x4, 0-d", 3, {FIXED(NB_DTYPE_BOOL, COND, 3, 1), IN(CONF_ANY, 1, 4), IN0(CONF_ANY)}},
    {"transposed and expanded", 3, {FIXED(NB_DTYPE_BOOL, COND, 3, 4), TRANSPOSED(CONF_ANY, 4, 3),
                                    EXPANDED(CONF_ANY, SHP(4), SHP(3, 4))}},
    {"empty", 3, {FIXED(NB_DTYPE_BOOL, COND, 0, 2), IN(CONF_ANY, 0, 2), IN(CONF_ANY, 0, 2)}},
    {"edge values", 3, {FIXED(NB_DTYPE_BOOL, COND, 12), VALS(EDGE_A, 12), VALS(EDGE_B, 12)}, .flags = FO | NG},
};
static const conf_error e_where[] = {
    {"condition not bool", 3, {IN(CONF_ANY, 2), IN(CONF_ANY, 2), IN(CONF_ANY, 2)}},
    {"shapes 2 and 3", 3, {FIXED(NB_DTYPE_BOOL, COND, 2), IN(CONF_ANY, 2), IN(CONF_ANY, 3)}},
    {"NULL condition", 3, {FIXED(NB_DTYPE_BOOL, COND, 2), IN(CONF_ANY, 2), IN(CONF_ANY, 2)}, .null_arg = 1},
};
static nb_tensor *a_where(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n, (void)p;
    return nb_where(x[0], x[1], x[2]);
}

/* clamp: s[0] min, s[1] max (NAN: no bound) */
static const conf_sample s_clamp[] = {
    {"2x3 [-1, 1]", 1, {IN(CONF_ANY, 2, 3)}, .p.s = {-1, 1}},
    {"min only", 1, {IN(CONF_ANY, 2, 3)}, .p.s = {0, NAN}},
    {"max only, transposed", 1, {TRANSPOSED(CONF_ANY, 3, 4)}, .p.s = {NAN, 1}},
    {"0-d", 1, {IN0(CONF_ANY)}, .p.s = {-1, 1}},
    {"empty", 1, {IN(CONF_ANY, 0, 4)}, .p.s = {-1, 1}},
    {"stride-0 expand", 1, {EXPANDED(CONF_ANY, SHP(1, 4), SHP(3, 4))}, .p.s = {-1, 1}},
    {"edge values", 1, {VALS(EDGE, 12)}, .p.s = {-1, 2}, .flags = FO | NG},
    /* integers clamp to the bounds rounded inward (to 0 and 1 here) */
    {"fractional bounds", 1, {IN(CONF_ANY, 2, 3)}, .p.s = {-0.5, 1.5}, .flags = NG},
    {"fractional min only", 1, {IN(CONF_ANY, 2, 3)}, .p.s = {0.25, NAN}, .flags = NG},
    {"ties at the bounds", 1, {VALS(TIES, 6)}, .p.s = {-1, 1}, .flags = NG},
};
static const conf_error e_clamp[] = {
    {"no bound at all", 1, {IN(CONF_ANY, 2)}, .p.s = {NAN, NAN}},
    {"NULL input", 1, {IN(CONF_ANY, 2)}, .p.s = {0, 1}, .null_arg = 1},
};
static nb_tensor *a_clamp(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_clamp(x[0], p->s[0], p->s[1]);
}

/* ---- Reductions: dims/ndims/keepdim; k[1] is var/std's correction, s[0] norm's p ---- */

static const double MAX_TIES[] = {3, 1, 3, 2, 0, 3, -1, 2, 2, -1, 0, -1};
static const double EDGE_RED[] = {1, NAN, 2, INFINITY, -INFINITY, 0, -0.0, 5, 1, 2, 3, 4};

#define REDUCE_SAMPLES(dom)                                                                \
    {"2x3x4 over all", 1, {IN(dom, 2, 3, 4)}},                                             \
    {"2x3x4 dim 1 keepdim", 1, {IN(dom, 2, 3, 4)}, .p = {.dims = {1}, .ndims = 1, .keepdim = true}}, \
    {"2x3x4 dims 0,2", 1, {IN(dom, 2, 3, 4)}, .p = {.dims = {0, 2}, .ndims = 2}},          \
    {"3x4 dim -1", 1, {IN(dom, 3, 4)}, .p = {.dims = {-1}, .ndims = 1}},                   \
    {"0-d", 1, {IN0(dom)}},                                                                \
    {"0-d dim 0 keepdim", 1, {IN0(dom)}, .p = {.dims = {0}, .ndims = 1, .keepdim = true}}, \
    {"transposed 3x4 dim 0", 1, {TRANSPOSED(dom, 3, 4)}, .p = {.dims = {0}, .ndims = 1}},  \
    {"stride-0 expand dim 0", 1, {EXPANDED(dom, SHP(1, 4), SHP(3, 4))}, .p = {.dims = {0}, .ndims = 1}}, \
    {"narrow offset view dim 1", 1, {NARROWED(dom, SHP(3, 6), 1, 2, 3)}, .p = {.dims = {1}, .ndims = 1}}, \
    {"empty 0x3 dim 0", 1, {IN(dom, 0, 3)}, .p = {.dims = {0}, .ndims = 1}},               \
    {"empty 0x3 over all", 1, {IN(dom, 0, 3)}}

static const conf_sample s_reduce[] = {
    REDUCE_SAMPLES(CONF_ANY),
    {"ties", 1, {VALS(MAX_TIES, 3, 4)}, .p = {.dims = {1}, .ndims = 1}, .flags = NG},
    {"edge values", 1, {VALS(EDGE_RED, 3, 4)}, .p = {.dims = {1}, .ndims = 1}, .flags = FO | NG},
};
/* prod: values near 1 keep the products tame */
static const conf_sample s_prod[] = {
    REDUCE_SAMPLES(CONF_NONZERO),
    {"edge values", 1, {VALS(EDGE_RED, 3, 4)}, .p = {.dims = {1}, .ndims = 1}, .flags = FO | NG},
};
static const conf_sample s_var[] = {
    REDUCE_SAMPLES(CONF_ANY),
    {"correction 1 dim 1", 1, {IN(CONF_ANY, 3, 4)}, .p = {.dims = {1}, .ndims = 1, .k = {0, 1}}},
    {"correction 2 keepdim", 1, {IN(CONF_ANY, 3, 4)}, .p = {.dims = {0}, .ndims = 1, .keepdim = true, .k = {0, 2}}},
    {"edge values", 1, {VALS(EDGE_RED, 3, 4)}, .p = {.dims = {1}, .ndims = 1, .k = {0, 1}}, .flags = FO | NG},
};
static const conf_sample s_norm[] = {
    {"2-norm over all", 1, {IN(CONF_NONZERO, 2, 3, 4)}, .p.s = {2}},
    {"1-norm dim 1", 1, {IN(CONF_NONZERO, 3, 4)}, .p = {.dims = {1}, .ndims = 1, .s = {1}}},
    {"3-norm dims 0,2 keepdim", 1, {IN(CONF_NONZERO, 2, 3, 4)}, .p = {.dims = {0, 2}, .ndims = 2, .keepdim = true, .s = {3}}},
    {"inf-norm dim 0", 1, {TRANSPOSED(CONF_NONZERO, 3, 4)}, .p = {.dims = {0}, .ndims = 1, .s = {INFINITY}}, .flags = NG},
    {"0-d", 1, {IN0(CONF_NONZERO)}, .p.s = {2}},
    {"stride-0 expand", 1, {EXPANDED(CONF_NONZERO, SHP(1, 4), SHP(3, 4))}, .p = {.dims = {1}, .ndims = 1, .s = {2}}},
    {"empty", 1, {IN(CONF_NONZERO, 0, 3)}, .p = {.dims = {0}, .ndims = 1, .s = {2}}, .flags = NG},
};
static const conf_error e_reduce[] = {
    {"dim 3 of a 2-d tensor", 1, {IN(CONF_ANY, 2, 3)}, .p = {.dims = {3}, .ndims = 1}},
    {"dim repeated", 1, {IN(CONF_ANY, 2, 3)}, .p = {.dims = {0, 0}, .ndims = 2}},
    {"NULL input", 1, {IN(CONF_ANY, 2)}, .null_arg = 1},
};
static const double INTS[] = {1, 2, 3, 4, 5, 6};
static const conf_error e_float_reduce[] = {
    {"dim 3 of a 2-d tensor", 1, {IN(CONF_ANY, 2, 3)}, .p = {.dims = {3}, .ndims = 1, .s = {2}}},
    {"integer input", 1, {FIXED(NB_DTYPE_I64, INTS, 2, 3)}, .p.s = {2}},
    {"NULL input", 1, {IN(CONF_ANY, 2)}, .p.s = {2}, .null_arg = 1},
};

#define A_REDUCE_(name)                                                                    \
    static nb_tensor *a_##name(nb_tensor *const *x, int32_t n, const conf_params *p)       \
    {                                                                                      \
        (void)n;                                                                           \
        return nb_##name(x[0], p->ndims ? p->dims : NULL, p->ndims, p->keepdim);           \
    }
A_REDUCE_(sum)
A_REDUCE_(mean)
A_REDUCE_(prod)
A_REDUCE_(amax)
A_REDUCE_(amin)

/* var/std: k[1] is the correction (0 in the shared reduction samples, 1 and 2 in s_var's own). */
static nb_tensor *a_var(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_var(x[0], p->ndims ? p->dims : NULL, p->ndims, p->k[1], p->keepdim);
}
static nb_tensor *a_std(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_std(x[0], p->ndims ? p->dims : NULL, p->ndims, p->k[1], p->keepdim);
}
static nb_tensor *a_norm(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_norm(x[0], p->s[0], p->ndims ? p->dims : NULL, p->ndims, p->keepdim);
}

/* argmax/argmin: k[0] is the dim (NB_ALL_DIMS: flattened) */
static const conf_sample s_arg[] = {
    {"3x4 flat", 1, {IN(CONF_ANY, 3, 4)}, .p.k = {NB_ALL_DIMS}},
    {"3x4 dim 1", 1, {IN(CONF_ANY, 3, 4)}, .p.k = {1}},
    {"2x3x4 dim -2 keepdim", 1, {IN(CONF_ANY, 2, 3, 4)}, .p = {.keepdim = true, .k = {-2}}},
    {"flat keepdim", 1, {IN(CONF_ANY, 2, 3)}, .p = {.keepdim = true, .k = {NB_ALL_DIMS}}},
    {"0-d", 1, {IN0(CONF_ANY)}, .p.k = {NB_ALL_DIMS}},
    {"transposed dim 0", 1, {TRANSPOSED(CONF_ANY, 3, 4)}, .p.k = {0}},
    {"stride-0 expand dim 0", 1, {EXPANDED(CONF_ANY, SHP(1, 4), SHP(3, 4))}, .p.k = {0}},
    {"select offset view", 1, {SELECTED(CONF_ANY, SHP(3, 5), 0, 2)}, .p.k = {0}},
    {"ties pick the first", 1, {VALS(MAX_TIES, 3, 4)}, .p.k = {1}},
    {"ties flat", 1, {VALS(MAX_TIES, 3, 4)}, .p.k = {NB_ALL_DIMS}},
    {"empty is an error", 1, {IN(CONF_ANY, 0, 3)}, .p.k = {NB_ALL_DIMS}},
};
static const conf_error e_arg[] = {
    {"dim 2 of a 2-d tensor", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {2}},
    {"NULL input", 1, {IN(CONF_ANY, 2)}, .null_arg = 1},
};
static nb_tensor *a_argmax(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_argmax(x[0], (int32_t)p->k[0], p->keepdim);
}
static nb_tensor *a_argmin(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_argmin(x[0], (int32_t)p->k[0], p->keepdim);
}

/* ---- Linear algebra ---- */

static const conf_sample s_mm[] = {
    {"2x3 @ 3x4", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 3, 4)}},
    {"transposed @ stride-0", 2, {TRANSPOSED(CONF_ANY, 3, 2), EXPANDED(CONF_ANY, SHP(1, 4), SHP(3, 4))}},
    {"offset views", 2, {NARROWED(CONF_ANY, SHP(4, 3), 0, 1, 2), SELECTED(CONF_ANY, SHP(2, 3, 5), 0, 1)}},
    {"inner size 0", 2, {IN(CONF_ANY, 2, 0), IN(CONF_ANY, 0, 3)}},
    {"empty rows", 2, {IN(CONF_ANY, 0, 3), IN(CONF_ANY, 3, 2)}},
};
static const conf_error e_mm[] = {
    {"2x3 @ 4x5", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 4, 5)}},
    {"3-d operand", 2, {IN(CONF_ANY, 2, 2, 3), IN(CONF_ANY, 3, 4)}},
    {"dtypes float32 and float64", 2, {IN(CONF_ANY, 2, 3), {.base = SHP(3, 2), .dtype = NB_DTYPE_F64}}},
    {"NULL operand", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 3, 4)}, .null_arg = 2},
};
static const conf_sample s_bmm[] = {
    {"2x2x3 @ 2x3x4", 2, {IN(CONF_ANY, 2, 2, 3), IN(CONF_ANY, 2, 3, 4)}},
    {"stride-0 batch", 2, {IN(CONF_ANY, 3, 2, 3), EXPANDED(CONF_ANY, SHP(1, 3, 4), SHP(3, 3, 4))}},
    {"transposed", 2, {{.base = SHP(2, 3, 2), .dtype = -1, .view = CONF_TRANSPOSE, .a = 1, .b = 2},
                       IN(CONF_ANY, 2, 3, 2)}},
    {"empty batch", 2, {IN(CONF_ANY, 0, 2, 3), IN(CONF_ANY, 0, 3, 4)}},
};
static const conf_error e_bmm[] = {
    {"batch 2 and 3", 2, {IN(CONF_ANY, 2, 2, 3), IN(CONF_ANY, 3, 3, 4)}},
    {"2-d operands", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 3, 4)}},
    {"NULL operand", 2, {IN(CONF_ANY, 1, 2, 3), IN(CONF_ANY, 1, 3, 4)}, .null_arg = 1},
};
static const conf_sample s_matmul[] = {
    {"1-d @ 1-d", 2, {IN(CONF_ANY, 4), IN(CONF_ANY, 4)}},
    {"1-d @ 2-d", 2, {IN(CONF_ANY, 3), IN(CONF_ANY, 3, 2)}},
    {"2-d @ 1-d", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 3)}},
    {"2-d @ 2-d", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 3, 4)}},
    {"3-d @ 2-d", 2, {IN(CONF_ANY, 2, 2, 3), IN(CONF_ANY, 3, 4)}},
    {"broadcast batch 2x1x2x3 @ 3x3x2", 2, {IN(CONF_ANY, 2, 1, 2, 3), IN(CONF_ANY, 3, 3, 2)}},
    {"transposed", 2, {TRANSPOSED(CONF_ANY, 3, 2), IN(CONF_ANY, 3, 3)}},
};
static const conf_error e_matmul[] = {
    {"2x3 @ 2x3", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 3)}},
    {"0-d operand", 2, {IN0(CONF_ANY), IN(CONF_ANY, 3)}},
    {"NULL operand", 2, {IN(CONF_ANY, 3), IN(CONF_ANY, 3)}, .null_arg = 1},
};
static nb_tensor *a_mm(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n, (void)p;
    return nb_mm(x[0], x[1]);
}
static nb_tensor *a_matmul(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n, (void)p;
    return nb_matmul(x[0], x[1]);
}
static nb_tensor *a_bmm(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n, (void)p;
    return nb_bmm(x[0], x[1]);
}

/* ---- Indexing: k[0] is the dim ---- */

static const double IDX_D1[] = {0, 3, 1, 1, 2, 0};       /* (3,2) into size 4 */
static const double IDX_D0[] = {2, 0, 1, 1, 0, 2, 2, 0}; /* (2,4) into size 3 */
static const double IDX_BAD[] = {0, 7};
static const double IDX_SEL[] = {2, 0, 2};
static const conf_sample s_gather[] = {
    {"3x4 dim 1", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D1, 3, 2)}, .p.k = {1}},
    {"3x4 dim 0", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D0, 2, 4)}, .p.k = {0}},
    {"transposed input", 2, {TRANSPOSED(CONF_ANY, 4, 3), FIXED(NB_DTYPE_I64, IDX_D1, 3, 2)}, .p.k = {-1}},
    {"index smaller than input", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D1, 2, 2)}, .p.k = {1}},
    {"out of range index", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_BAD, 1, 2)}, .p.k = {1}},
};
static const conf_error e_gather[] = {
    {"index not int64", 2, {IN(CONF_ANY, 3, 4), IN(CONF_ANY, 3, 2)}, .p.k = {1}},
    {"index with fewer dims", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D1, 6)}, .p.k = {1}},
    {"NULL index", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D1, 3, 2)}, .p.k = {1}, .null_arg = 2},
};
static const conf_sample s_index_select[] = {
    {"3x4 dim 0", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_SEL, 2)}, .p.k = {0}},
    {"3x4 dim 1 repeated", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_SEL, 3)}, .p.k = {1}},
    {"transposed", 2, {TRANSPOSED(CONF_ANY, 4, 3), FIXED(NB_DTYPE_I64, IDX_SEL, 3)}, .p.k = {0}},
    {"empty index", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_SEL, 0)}, .p.k = {0}},
};
static const conf_error e_index_select[] = {
    {"2-d index", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D1, 3, 2)}, .p.k = {0}},
    {"NULL input", 2, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_SEL, 2)}, .null_arg = 1},
};
static const conf_sample s_scatter_add[] = {
    {"3x4 dim 0 with repeats", 3, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D0, 2, 4), IN(CONF_ANY, 2, 4)}, .p.k = {0}},
    {"3x4 dim 1", 3, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D1, 3, 2), IN(CONF_ANY, 3, 2)}, .p.k = {1}},
    /* PyTorch cannot differentiate a src larger than the index either */
    {"transposed input, larger src", 3, {TRANSPOSED(CONF_ANY, 4, 3), FIXED(NB_DTYPE_I64, IDX_D1, 3, 2), IN(CONF_ANY, 3, 3)}, .p.k = {1}, .flags = NG},
};
static const conf_error e_scatter_add[] = {
    {"index not int64", 3, {IN(CONF_ANY, 3, 4), IN(CONF_ANY, 2, 4), IN(CONF_ANY, 2, 4)}, .p.k = {0}},
    {"src smaller than index", 3, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D0, 2, 4), IN(CONF_ANY, 1, 4)}, .p.k = {0}},
    {"NULL src", 3, {IN(CONF_ANY, 3, 4), FIXED(NB_DTYPE_I64, IDX_D0, 2, 4), IN(CONF_ANY, 2, 4)}, .p.k = {0}, .null_arg = 3},
};
static nb_tensor *a_gather(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_gather(x[0], (int32_t)p->k[0], x[1]);
}
static nb_tensor *a_index_select(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_index_select(x[0], (int32_t)p->k[0], x[1]);
}
static nb_tensor *a_scatter_add(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_scatter_add(x[0], (int32_t)p->k[0], x[1], x[2]);
}

/* ---- Joining: every input goes in the list; k[0] is the dim ---- */

static const conf_sample s_cat[] = {
    {"2x3 and 4x3 dim 0", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 4, 3)}, .p.k = {0}},
    {"dim 1 with views", 3, {TRANSPOSED(CONF_ANY, 3, 2), EXPANDED(CONF_ANY, SHP(2, 1), SHP(2, 2)),
                             SELECTED(CONF_ANY, SHP(3, 2, 4), 0, 1)}, .p.k = {-1}},
    {"with an empty part", 2, {IN(CONF_ANY, 0, 3), IN(CONF_ANY, 2, 3)}, .p.k = {0}},
    {"1-d empty is skipped", 2, {IN(CONF_ANY, 0), IN(CONF_ANY, 2, 3)}, .p.k = {1}},
};
static const conf_error e_cat[] = {
    {"sizes differ off the dim", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 4)}, .p.k = {0}},
    {"0-d inputs", 2, {IN0(CONF_ANY), IN0(CONF_ANY)}, .p.k = {0}},
    {"NULL in the list", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 3)}, .p.k = {0}, .null_arg = 2},
};
static const conf_sample s_stack[] = {
    {"two 2x3 dim 0", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 3)}, .p.k = {0}},
    {"three views dim 2", 3, {TRANSPOSED(CONF_ANY, 3, 2), EXPANDED(CONF_ANY, SHP(1, 3), SHP(2, 3)),
                              NARROWED(CONF_ANY, SHP(4, 3), 0, 1, 2)}, .p.k = {2}},
    {"0-d dim -1", 2, {IN0(CONF_ANY), IN0(CONF_ANY)}, .p.k = {-1}},
};
static const conf_error e_stack[] = {
    {"shapes differ", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 3, 2)}, .p.k = {0}},
    {"NULL in the list", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 3)}, .p.k = {0}, .null_arg = 1},
};
static nb_tensor *a_cat(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    return nb_cat(x, n, (int32_t)p->k[0]);
}
static nb_tensor *a_stack(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    return nb_stack(x, n, (int32_t)p->k[0]);
}

/* ---- Copies and casts ---- */

/* copy: x[0] is the destination (a fixed dtype: casting), x[1] the source of the dtype under
 * test; the result is the destination after nb_tensor_copy_. */
static const conf_sample s_copy[] = {
    {"into float64", 2, {{.base = SHP(2, 3), .dtype = NB_DTYPE_F64}, IN(CONF_ANY, 2, 3)}},
    {"into float32 transposed dst", 2, {{.base = SHP(4, 3), .dtype = NB_DTYPE_F32, .view = CONF_TRANSPOSE, .a = 0, .b = 1},
                                        TRANSPOSED(CONF_ANY, 4, 3)}},
    {"into int64, broadcast 1x4", 2, {{.base = SHP(3, 4), .dtype = NB_DTYPE_I64}, IN(CONF_ANY, 1, 4)}},
    {"into an offset view", 2, {{.base = SHP(3, 5), .dtype = NB_DTYPE_F32, .view = CONF_SELECT, .a = 1, .b = 2},
                                EXPANDED(CONF_ANY, SHP(1), SHP(3))}},
    {"0-d into 2x2", 2, {{.base = SHP(2, 2), .dtype = NB_DTYPE_F64}, IN0(CONF_ANY)}},
    {"empty", 2, {{.base = SHP(0, 2), .dtype = NB_DTYPE_F32}, IN(CONF_ANY, 0, 2)}},
    {"edge values into float64", 2, {{.base = SHP(12), .dtype = NB_DTYPE_F64}, VALS(EDGE, 12)}, .flags = FO},
};
static const conf_error e_copy[] = {
    {"source 2x3 into 3x2", 2, {IN(CONF_ANY, 3, 2), IN(CONF_ANY, 2, 3)}},
    {"NULL source", 2, {IN(CONF_ANY, 2), IN(CONF_ANY, 2)}, .null_arg = 2},
};
static nb_tensor *a_copy(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n, (void)p;
    if (nb_tensor_copy_(x[0], x[1]) != NB_OK)
        return NULL;
    return nb_retain(x[0]);
}

/* to_dtype: k[0] is the target dtype */
static const double FRACTIONS[] = {-3.75, -1.5, -0.5, 0.0, 0.25, 1.0, 2.5, 3.9};
static const double TO_U8[] = {-1, -3.75, 300, 3e9};                   /* 255 253 44 0 */
static const double OUT_OF_RANGE[] = {3e9, -3e9, 1e19, -1e19, INFINITY, NAN};
static const conf_sample s_to_dtype[] = {
    /* rounding to float32 is a step function at finite-difference scale: no gradient check */
    {"to float32", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {NB_DTYPE_F32}, .flags = NG},
    {"to float64 transposed", 1, {TRANSPOSED(CONF_ANY, 3, 4)}, .p.k = {NB_DTYPE_F64}},
    {"to int64 truncates", 1, {VALS(FRACTIONS, 8)}, .p.k = {NB_DTYPE_I64}},
    {"to int32 stride-0", 1, {EXPANDED(CONF_ANY, SHP(1, 4), SHP(2, 4))}, .p.k = {NB_DTYPE_I32}},
    {"to bool", 1, {VALS(FRACTIONS, 2, 4)}, .p.k = {NB_DTYPE_BOOL}},
    {"0-d to float64", 1, {IN0(CONF_ANY)}, .p.k = {NB_DTYPE_F64}},
    {"empty to int64", 1, {IN(CONF_ANY, 0, 3)}, .p.k = {NB_DTYPE_I64}},
    {"edge values to float64", 1, {VALS(EDGE, 12)}, .p.k = {NB_DTYPE_F64}, .flags = FO | NG},
    /* the SDK's conversion rule: through int64, NaN and out of range giving INT64_MIN, then
     * wrapping into narrower targets */
    {"to uint8 wraps", 1, {VALS(TO_U8, 4)}, .p.k = {NB_DTYPE_U8}, .flags = FO | NG},
    {"to int32 out of range", 1, {VALS(OUT_OF_RANGE, 6)}, .p.k = {NB_DTYPE_I32}, .flags = FO | NG},
    {"to int64 out of range", 1, {VALS(OUT_OF_RANGE, 6)}, .p.k = {NB_DTYPE_I64}, .flags = FO | NG},
    {"to uint8 out of range", 1, {VALS(OUT_OF_RANGE, 6)}, .p.k = {NB_DTYPE_U8}, .flags = FO | NG},
};
static const conf_error e_to_dtype[] = {
    {"dtype 99", 1, {IN(CONF_ANY, 2)}, .p.k = {99}},
    {"NULL input", 1, {IN(CONF_ANY, 2)}, .p.k = {NB_DTYPE_F64}, .null_arg = 1},
};
static nb_tensor *a_to_dtype(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_to_dtype(x[0], (nb_dtype)p->k[0]);
}

/* ---- nn functional ---- */

static const double BIG_ROW[] = {1000, 0, -INFINITY, -1000, 999, 1, 2, 3};
static const conf_sample s_softmax[] = {
    {"2x5 dim -1", 1, {IN(CONF_ANY, 2, 5)}, .p.k = {-1}},
    {"3x4 dim 0", 1, {IN(CONF_ANY, 3, 4)}, .p.k = {0}},
    {"2x3x4 dim 1", 1, {IN(CONF_ANY, 2, 3, 4)}, .p.k = {1}},
    {"transposed dim -1", 1, {TRANSPOSED(CONF_ANY, 4, 3)}, .p.k = {-1}},
    {"stride-0 expand", 1, {EXPANDED(CONF_ANY, SHP(1, 4), SHP(3, 4))}, .p.k = {-1}},
    {"large and -inf logits", 1, {VALS(BIG_ROW, 2, 4)}, .p.k = {-1}, .flags = FO | NG},
    {"empty rows", 1, {IN(CONF_ANY, 0, 4)}, .p.k = {-1}},
};
static const conf_error e_softmax[] = {
    {"dim 2 of a 2-d tensor", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {2}},
    {"NULL input", 1, {IN(CONF_ANY, 2, 3)}, .p.k = {-1}, .null_arg = 1},
};
static nb_tensor *a_softmax(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_softmax(x[0], (int32_t)p->k[0]);
}
static nb_tensor *a_log_softmax(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_log_softmax(x[0], (int32_t)p->k[0]);
}

/* conv2d: k[] = stride h,w, padding h,w, dilation h,w, groups */
static const conf_sample s_conv2d[] = {
    {"1x2x5x5 * 3x2x3x3 + bias", 3, {IN(CONF_ANY, 1, 2, 5, 5), IN(CONF_ANY, 3, 2, 3, 3), IN(CONF_ANY, 3)}},
    {"stride 2 padding 1, no bias", 2, {IN(CONF_ANY, 2, 2, 5, 4), IN(CONF_ANY, 2, 2, 3, 3)}, .p.k = {2, 2, 1, 1}},
    {"dilation 2", 2, {IN(CONF_ANY, 1, 1, 6, 6), IN(CONF_ANY, 2, 1, 2, 2)}, .p.k = {1, 1, 0, 0, 2, 2}},
    {"groups 2", 3, {IN(CONF_ANY, 1, 4, 4, 4), IN(CONF_ANY, 2, 2, 3, 3), IN(CONF_ANY, 2)}, .p.k = {1, 1, 1, 1, 1, 1, 2}},
    {"1x1 kernel, strided input view", 2, {{.base = SHP(1, 3, 4, 4), .dtype = -1, .view = CONF_TRANSPOSE, .a = 2, .b = 3},
                                           IN(CONF_ANY, 2, 3, 1, 1)}},
};
static const conf_error e_conv2d[] = {
    {"channels 2 vs weight 3", 2, {IN(CONF_ANY, 1, 2, 5, 5), IN(CONF_ANY, 1, 3, 3, 3)}},
    {"2-d input", 2, {IN(CONF_ANY, 5, 5), IN(CONF_ANY, 1, 2, 3, 3)}},
    {"NULL weight", 2, {IN(CONF_ANY, 1, 2, 5, 5), IN(CONF_ANY, 1, 2, 3, 3)}, .null_arg = 2},
};
static nb_tensor *a_conv2d(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    nb_conv2d_opts o = {{p->k[0], p->k[1]}, {p->k[2], p->k[3]}, {p->k[4], p->k[5]}, p->k[6]};
    return nb_conv2d(x[0], x[1], n > 2 ? x[2] : NULL, o);
}

/* pooling: k[] = kernel h,w, stride h,w, padding h,w */
static const double POOL_EDGE[] = {1, 1, -INFINITY, 2, NAN, 0, 3, 3, -0.0, 0.0, 5, 5, 4, 4, 1, 1};
static const conf_sample s_pool[] = {
    {"1x2x4x4 kernel 2", 1, {IN(CONF_ANY, 1, 2, 4, 4)}, .p.k = {2, 2}},
    {"kernel 3 stride 2 padding 1", 1, {IN(CONF_ANY, 2, 1, 5, 5)}, .p.k = {3, 3, 2, 2, 1, 1}},
    {"kernel 2x1 stride 1", 1, {IN(CONF_ANY, 1, 1, 3, 4)}, .p.k = {2, 1, 1, 1}},
    {"transposed input", 1, {{.base = SHP(1, 2, 4, 6), .dtype = -1, .view = CONF_TRANSPOSE, .a = 2, .b = 3}}, .p.k = {2, 2}},
    {"ties, -inf and NaN", 1, {VALS(POOL_EDGE, 1, 1, 4, 4)}, .p.k = {2, 2}, .flags = FO | NG},
};
static const conf_error e_pool[] = {
    {"2-d input", 1, {IN(CONF_ANY, 4, 4)}, .p.k = {2, 2}},
    {"kernel larger than input", 1, {IN(CONF_ANY, 1, 1, 2, 2)}, .p.k = {3, 3}},
    {"NULL input", 1, {IN(CONF_ANY, 1, 1, 4, 4)}, .p.k = {2, 2}, .null_arg = 1},
};
static nb_pool2d_opts pool_opts(const conf_params *p)
{
    return (nb_pool2d_opts){{p->k[0], p->k[1]}, {p->k[2], p->k[3]}, {p->k[4], p->k[5]}};
}
static nb_tensor *a_max_pool2d(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_max_pool2d(x[0], pool_opts(p));
}
static nb_tensor *a_avg_pool2d(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_avg_pool2d(x[0], pool_opts(p));
}

static const conf_sample s_linear[] = {
    {"4x3 with bias", 3, {IN(CONF_ANY, 4, 3), IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2)}},
    {"2x4x3 without bias", 2, {IN(CONF_ANY, 2, 4, 3), IN(CONF_ANY, 5, 3)}},
    {"1-d input", 3, {IN(CONF_ANY, 3), IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2)}},
    {"transposed weight view", 3, {IN(CONF_ANY, 4, 3), TRANSPOSED(CONF_ANY, 3, 2), EXPANDED(CONF_ANY, SHP(1), SHP(2))}},
    {"empty batch", 3, {IN(CONF_ANY, 0, 3), IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2)}},
};
static const conf_error e_linear[] = {
    {"features 3 vs weight 4", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 4)}},
    {"NULL input", 2, {IN(CONF_ANY, 2, 3), IN(CONF_ANY, 2, 3)}, .null_arg = 1},
};
static nb_tensor *a_linear(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)p;
    return nb_linear(x[0], x[1], n > 2 ? x[2] : NULL);
}

/* losses: k[0] is the reduction (0 mean, 1 sum, 2 none) */
static const double LOGITS_EDGE[] = {100, -100, 0, -0.0, 30, -30};
static const double TARGETS01[] = {1, 0, 0.5, 1, 0, 1};
#define LOSS_SAMPLES(db)                                                                   \
    {"3x4 mean", 2, {IN(CONF_ANY, 3, 4), IN(db, 3, 4)}, .p.k = {NB_REDUCTION_MEAN}},       \
    {"3x4 sum", 2, {IN(CONF_ANY, 3, 4), IN(db, 3, 4)}, .p.k = {NB_REDUCTION_SUM}},         \
    {"3x4 none", 2, {IN(CONF_ANY, 3, 4), IN(db, 3, 4)}, .p.k = {NB_REDUCTION_NONE}},       \
    {"transposed and stride-0", 2, {TRANSPOSED(CONF_ANY, 4, 3), EXPANDED(db, SHP(1, 4), SHP(3, 4))}, .p.k = {NB_REDUCTION_MEAN}}, \
    {"0-d", 2, {IN0(CONF_ANY), IN0(db)}, .p.k = {NB_REDUCTION_MEAN}}
static const conf_sample s_mse[] = {LOSS_SAMPLES(CONF_ANY)};
static const conf_sample s_bce[] = {
    LOSS_SAMPLES(CONF_UNIT),
    {"large logits", 2, {VALS(LOGITS_EDGE, 6), VALS(TARGETS01, 6)}, .p.k = {NB_REDUCTION_NONE}, .flags = FO},
};
static const conf_error e_loss[] = {
    {"shapes 3x4 and 4x3", 2, {IN(CONF_ANY, 3, 4), IN(CONF_ANY, 4, 3)}},
    {"NULL target", 2, {IN(CONF_ANY, 3), IN(CONF_ANY, 3)}, .null_arg = 2},
};
static nb_tensor *a_mse_loss(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_mse_loss(x[0], x[1], (nb_reduction)p->k[0]);
}
static nb_tensor *a_bce_with_logits(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_binary_cross_entropy_with_logits(x[0], x[1], (nb_reduction)p->k[0]);
}

static const double CLASSES[] = {1, 0, 4, 2, 3};
static const double CLASSES_BAD[] = {1, 9};
static const conf_sample s_cross_entropy[] = {
    {"4x5 mean", 2, {IN(CONF_ANY, 4, 5), FIXED(NB_DTYPE_I64, CLASSES, 4)}, .p.k = {NB_REDUCTION_MEAN}},
    {"4x5 sum", 2, {IN(CONF_ANY, 4, 5), FIXED(NB_DTYPE_I64, CLASSES, 4)}, .p.k = {NB_REDUCTION_SUM}},
    {"5x3 none, transposed", 2, {TRANSPOSED(CONF_ANY, 3, 5), FIXED(NB_DTYPE_I64, CLASSES, 5)}, .p.k = {NB_REDUCTION_NONE}},
    {"class out of range", 2, {IN(CONF_ANY, 2, 5), FIXED(NB_DTYPE_I64, CLASSES_BAD, 2)}, .p.k = {NB_REDUCTION_MEAN}},
};
static const conf_error e_cross_entropy[] = {
    {"float target", 2, {IN(CONF_ANY, 4, 5), IN(CONF_ANY, 4)}},
    {"target length 3 for 4 rows", 2, {IN(CONF_ANY, 4, 5), FIXED(NB_DTYPE_I64, CLASSES, 3)}},
    {"NULL input", 2, {IN(CONF_ANY, 4, 5), FIXED(NB_DTYPE_I64, CLASSES, 4)}, .null_arg = 1},
};
static nb_tensor *a_cross_entropy(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_cross_entropy(x[0], x[1], (nb_reduction)p->k[0]);
}

/* ---- Creation, bit for bit ----
 * fill and arange against the SDK's conversion rule, rand/randn against the cpu's numbers for
 * the same seed (k[0]); input 0 only gives the dtype, the shape and the device. Tolerances are
 * scaled to nothing: these must match exactly. */
static const conf_sample s_full[] = {
    {"2x3 of 2.5", 1, {IN(CONF_ANY, 2, 3)}, .p.s = {2.5}},
    {"-1 (uint8 wraps)", 1, {IN(CONF_ANY, 4)}, .p.s = {-1}},
    {"300", 1, {IN(CONF_ANY, 2)}, .p.s = {300}},
    {"3e9", 1, {IN(CONF_ANY, 2)}, .p.s = {3e9}},
    {"-3.75", 1, {IN(CONF_ANY, 3)}, .p.s = {-3.75}},
    {"NaN", 1, {IN(CONF_ANY, 3)}, .p.s = {NAN}},
    {"-0.0", 1, {IN(CONF_ANY, 3)}, .p.s = {-0.0}, .flags = ZS},
    {"0-d", 1, {IN0(CONF_ANY)}, .p.s = {7}},
    {"empty", 1, {IN(CONF_ANY, 0, 3)}, .p.s = {1}},
};
static const conf_error e_full[] = {
    {"NULL like", 1, {IN(CONF_ANY, 2)}, .p.s = {1}, .null_arg = 1},
};
static nb_tensor *a_full(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    return nb_full_like(x[0], p->s[0]);
}

static const conf_sample s_arange[] = {
    {"0 to 10", 1, {IN(CONF_ANY, 1)}, .p.s = {0, 10, 1}},
    {"past 2^24", 1, {IN(CONF_ANY, 1)}, .p.s = {16777200, 16777240, 1}},
    {"past 2^31 by 3", 1, {IN(CONF_ANY, 1)}, .p.s = {2147483640, 2147483670, 3}},
    {"-1.5 to 2.3 by 0.1", 1, {IN(CONF_ANY, 1)}, .p.s = {-1.5, 2.3, 0.1}, .flags = FO},
    {"5 down to -5 by -1.5", 1, {IN(CONF_ANY, 1)}, .p.s = {5, -5, -1.5}, .flags = FO},
};
static const conf_error e_arange[] = {
    {"step 0", 1, {IN(CONF_ANY, 1)}, .p.s = {0, 5, 0}},
};
static nb_tensor *a_arange(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    if (!x[0])
        return nb_full_like(NULL, 0);
    return nb_arange(p->s[0], p->s[1], p->s[2],
                     (nb_opts){.dtype = nb_tensor_dtype(x[0]), .device = nb_tensor_device(x[0])});
}

static const conf_sample s_rand[] = {
    {"1000 values", 1, {IN(CONF_ANY, 1000)}, .p.k = {42}},
    {"3x5x7", 1, {IN(CONF_ANY, 3, 5, 7)}, .p.k = {7}},
    {"0-d", 1, {IN0(CONF_ANY)}, .p.k = {1}},
    {"empty", 1, {IN(CONF_ANY, 0, 3)}, .p.k = {1}},
};
static const conf_error e_rand[] = {
    {"NULL like", 1, {IN(CONF_ANY, 2)}, .null_arg = 1},
};
static nb_tensor *a_rand(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    nb_manual_seed((uint64_t)p->k[0]);
    return nb_rand_like(x[0]);
}
static nb_tensor *a_randn(nb_tensor *const *x, int32_t n, const conf_params *p)
{
    (void)n;
    nb_manual_seed((uint64_t)p->k[0]);
    return nb_randn_like(x[0]);
}
#include "optable_nn.h" /* the rows of core/nn/ and ops_extra.c: CONF_NN_ROWS */

/* ---- The table ---- */

#define F_ (1u << NB_DTYPE_F32 | 1u << NB_DTYPE_F64)
#define I_ (1u << NB_DTYPE_I32 | 1u << NB_DTYPE_I64)
#define U8_ (1u << NB_DTYPE_U8)
#define B_ (1u << NB_DTYPE_BOOL)
#define ALL_ (F_ | I_ | U8_ | B_)
/* half: float16 and bfloat16, on the rows the cpu plugin runs through float32 */
#define H_ (1u << NB_DTYPE_F16 | 1u << NB_DTYPE_BF16)

#define OP_(name, api, kernel, needs, kd, dtypes, diff, scale, run, ref, samples, errors)  \
    {name, api, kernel, needs, kd, dtypes, diff, scale, run, ref, samples,                 \
     COUNT_(samples), errors, COUNT_(errors)}
#define UNARY_OP_(name, kd, dtypes, diff, samples)                                         \
    OP_(#name, "nb_" #name, #name, #name, kd, dtypes, diff, 0, a_##name, conf_ref_##name,  \
        samples, e_unary)
#define BINARY_OP_(name, kd, dtypes, diff, samples)                                        \
    OP_(#name, "nb_" #name, #name, #name, kd, dtypes, diff, 0, a_##name, conf_ref_##name,  \
        samples, e_binary)
#define SCALAR_OP_(name, kernel, kd, dtypes, diff, samples)                                \
    OP_(#name, "nb_" #name, kernel, kernel, kd, dtypes, diff, 0, a_##name,                 \
        conf_ref_##name, samples, e_scalar)

const conf_op conf_ops[] = {
    UNARY_OP_(neg, CONF_KD_SAME, F_ | H_ | I_, true, s_unary_zero_sign),
    UNARY_OP_(abs, CONF_KD_SAME, F_ | H_ | I_, true, s_unary_zero_sign),
    UNARY_OP_(exp, CONF_KD_FLOAT, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(log, CONF_KD_FLOAT, F_ | H_ | I_, true, s_unary_pos),
    UNARY_OP_(sqrt, CONF_KD_FLOAT, F_ | H_ | I_, true, s_unary_pos),
    UNARY_OP_(rsqrt, CONF_KD_FLOAT, F_ | H_, true, s_unary_pos),
    UNARY_OP_(sin, CONF_KD_FLOAT, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(cos, CONF_KD_FLOAT, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(tanh, CONF_KD_FLOAT, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(sigmoid, CONF_KD_FLOAT, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(relu, CONF_KD_SAME, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(sign, CONF_KD_SAME, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(floor, CONF_KD_SAME, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(ceil, CONF_KD_SAME, F_ | H_ | I_, true, s_unary_any),
    UNARY_OP_(round, CONF_KD_SAME, F_ | H_ | I_, true, s_unary_any),
    OP_("logical_not", "nb_logical_not", "logical_not", "logical_not copy", CONF_KD_BOOL, ALL_ | H_,
        false, 0, a_logical_not, conf_ref_logical_not, s_unary_any, e_unary),

    BINARY_OP_(add, CONF_KD_SAME, F_ | H_ | I_ | U8_, true, s_binary),
    BINARY_OP_(sub, CONF_KD_SAME, F_ | H_ | I_, true, s_binary),
    BINARY_OP_(mul, CONF_KD_SAME, F_ | H_ | I_ | U8_, true, s_binary),
    BINARY_OP_(div, CONF_KD_FLOAT, F_ | H_ | I_, true, s_binary_div),
    BINARY_OP_(pow, CONF_KD_SAME, F_ | H_ | I_, true, s_binary_pow),
    BINARY_OP_(maximum, CONF_KD_SAME, F_ | H_ | I_, true, s_binary_zero_sign),
    BINARY_OP_(minimum, CONF_KD_SAME, F_ | H_ | I_, true, s_binary_zero_sign),
    BINARY_OP_(eq, CONF_KD_SAME, ALL_ | H_, false, s_binary),
    BINARY_OP_(ne, CONF_KD_SAME, ALL_ | H_, false, s_binary),
    BINARY_OP_(lt, CONF_KD_SAME, F_ | H_ | I_ | U8_, false, s_binary),
    BINARY_OP_(le, CONF_KD_SAME, F_ | H_ | I_ | U8_, false, s_binary),
    BINARY_OP_(gt, CONF_KD_SAME, F_ | H_ | I_ | U8_, false, s_binary),
    BINARY_OP_(ge, CONF_KD_SAME, F_ | H_ | I_ | U8_, false, s_binary),
    OP_("logical_and", "nb_logical_and", "logical_and", "logical_and copy", CONF_KD_BOOL, ALL_ | H_,
        false, 0, a_logical_and, conf_ref_logical_and, s_binary, e_binary),
    OP_("logical_or", "nb_logical_or", "logical_or", "logical_or copy", CONF_KD_BOOL, ALL_ | H_,
        false, 0, a_logical_or, conf_ref_logical_or, s_binary, e_binary),
    OP_("logical_xor", "nb_logical_xor", "logical_xor", "logical_xor copy", CONF_KD_BOOL, ALL_ | H_,
        false, 0, a_logical_xor, conf_ref_logical_xor, s_binary, e_binary),

    SCALAR_OP_(add_scalar, "add_scalar", CONF_KD_SAME, F_ | H_ | I_, true, s_scalar),
    SCALAR_OP_(sub_scalar, "add_scalar", CONF_KD_SAME, F_ | H_ | I_, true, s_scalar),
    SCALAR_OP_(mul_scalar, "mul_scalar", CONF_KD_SAME, F_ | H_ | I_, true, s_scalar),
    SCALAR_OP_(div_scalar, "div_scalar", CONF_KD_FLOAT, F_ | H_ | I_, true, s_scalar_div),
    SCALAR_OP_(pow_scalar, "pow_scalar", CONF_KD_SAME, F_ | H_ | I_, true, s_scalar_pow),
    SCALAR_OP_(rsub_scalar, "rsub_scalar", CONF_KD_SAME, F_ | H_ | I_, true, s_scalar),
    SCALAR_OP_(rdiv_scalar, "rdiv_scalar", CONF_KD_FLOAT, F_ | H_ | I_, true, s_scalar_rdiv),
    SCALAR_OP_(maximum_scalar, "clamp", CONF_KD_SAME, F_ | H_, true, s_scalar_nan),
    SCALAR_OP_(minimum_scalar, "clamp", CONF_KD_SAME, F_ | H_, true, s_scalar_nan),
    SCALAR_OP_(eq_scalar, "eq_scalar", CONF_KD_DOUBLE, F_ | H_ | I_, false, s_scalar),
    SCALAR_OP_(ne_scalar, "ne_scalar", CONF_KD_DOUBLE, F_ | H_ | I_, false, s_scalar),
    SCALAR_OP_(lt_scalar, "lt_scalar", CONF_KD_DOUBLE, F_ | H_ | I_, false, s_scalar),
    SCALAR_OP_(le_scalar, "le_scalar", CONF_KD_DOUBLE, F_ | H_ | I_, false, s_scalar),
    SCALAR_OP_(gt_scalar, "gt_scalar", CONF_KD_DOUBLE, F_ | H_ | I_, false, s_scalar),
    SCALAR_OP_(ge_scalar, "ge_scalar", CONF_KD_DOUBLE, F_ | H_ | I_, false, s_scalar),

    OP_("where", "nb_where", "where", "where", CONF_KD_SAME, F_ | H_ | I_, true, 0, a_where,
        conf_ref_where, s_where, e_where),
    OP_("clamp", "nb_clamp", "clamp", "clamp", CONF_KD_SAME, F_ | H_ | I_, true, 0, a_clamp,
        conf_ref_clamp, s_clamp, e_clamp),

    OP_("sum", "nb_sum", "sum", "sum fill", CONF_KD_SAME, F_ | H_ | I_, true, 10, a_sum, conf_ref_sum,
        s_reduce, e_reduce),
    OP_("mean", "nb_mean", NULL, "sum mul_scalar", CONF_KD_SAME, F_ | H_, true, 10, a_mean,
        conf_ref_mean, s_reduce, e_float_reduce),
    OP_("prod", "nb_prod", "prod", "prod fill", CONF_KD_SAME, F_ | H_ | I_, true, 10, a_prod,
        conf_ref_prod, s_prod, e_reduce),
    OP_("amax", "nb_amax", "max", "max", CONF_KD_SAME, F_ | H_ | I_, true, 0, a_amax, conf_ref_amax,
        s_reduce, e_reduce),
    OP_("amin", "nb_amin", "min", "min", CONF_KD_SAME, F_ | H_ | I_, true, 0, a_amin, conf_ref_amin,
        s_reduce, e_reduce),
    OP_("argmax", "nb_argmax", "argmax", "argmax", CONF_KD_SAME, F_ | H_ | I_, false, 0, a_argmax,
        conf_ref_argmax, s_arg, e_arg),
    OP_("argmin", "nb_argmin", "argmin", "argmin", CONF_KD_SAME, F_ | H_ | I_, false, 0, a_argmin,
        conf_ref_argmin, s_arg, e_arg),
    OP_("var", "nb_var", NULL, "sum mul_scalar sub mul", CONF_KD_SAME, F_ | H_, true, 10, a_var,
        conf_ref_var, s_var, e_float_reduce),
    OP_("std", "nb_std", NULL, "sum mul_scalar sub mul sqrt", CONF_KD_SAME, F_ | H_, true, 10, a_std,
        conf_ref_std, s_var, e_float_reduce),
    OP_("norm", "nb_norm", NULL, "abs mul sum sqrt pow_scalar max", CONF_KD_SAME, F_ | H_, true, 10,
        a_norm, conf_ref_norm, s_norm, e_float_reduce),

    OP_("mm", "nb_mm", "matmul", "matmul", CONF_KD_SAME, F_ | H_ | I_, true, 10, a_mm, conf_ref_mm,
        s_mm, e_mm),
    OP_("bmm", "nb_bmm", "matmul", "matmul", CONF_KD_SAME, F_ | H_ | I_, true, 10, a_bmm,
        conf_ref_bmm, s_bmm, e_bmm),
    OP_("matmul", "nb_matmul", "matmul", "matmul copy", CONF_KD_SAME, F_ | H_ | I_, true, 10, a_matmul,
        conf_ref_matmul, s_matmul, e_matmul),

    OP_("gather", "nb_gather", "gather", "gather", CONF_KD_SAME, F_ | H_ | I_, true, 0, a_gather,
        conf_ref_gather, s_gather, e_gather),
    OP_("index_select", "nb_index_select", "gather", "gather", CONF_KD_SAME, F_ | H_ | I_, true, 0,
        a_index_select, conf_ref_index_select, s_index_select, e_index_select),
    OP_("scatter_add", "nb_scatter_add", "scatter_add", "scatter_add copy", CONF_KD_SAME,
        F_ | H_ | I_, true, 0, a_scatter_add, conf_ref_scatter_add, s_scatter_add, e_scatter_add),
    OP_("cat", "nb_cat", "copy", "copy", CONF_KD_SAME, ALL_ | H_, true, 0, a_cat, conf_ref_cat, s_cat,
        e_cat),
    OP_("stack", "nb_stack", "copy", "copy", CONF_KD_SAME, ALL_ | H_, true, 0, a_stack, conf_ref_stack,
        s_stack, e_stack),
    OP_("copy", "nb_tensor_copy_", "copy", "copy", CONF_KD_SAME, ALL_ | H_, false, 0, a_copy,
        conf_ref_copy, s_copy, e_copy),
    OP_("to_dtype", "nb_to_dtype", "copy", "copy", CONF_KD_SAME, F_ | H_ | I_ | U8_, true, 0,
        a_to_dtype, conf_ref_to_dtype, s_to_dtype, e_to_dtype),
    OP_("full", "nb_full_like", "fill", "fill", CONF_KD_SAME, ALL_ | H_, false, EXACT_, a_full,
        conf_ref_full, s_full, e_full),
    OP_("arange", "nb_arange", "arange", "arange", CONF_KD_SAME, F_ | H_ | I_ | U8_, false, EXACT_,
        a_arange, conf_ref_arange, s_arange, e_arange),
    OP_("rand", "nb_rand_like", "random_uniform", "random_uniform", CONF_KD_SAME, F_ | H_, false,
        EXACT_, a_rand, conf_ref_rand, s_rand, e_rand),
    /* normals go through log and cos, which an OpenCL device without fp64 cannot carry in
     * double as the reference does: a tenth of the usual tolerance rather than bit for bit */
    OP_("randn", "nb_randn_like", "random_normal", "random_normal", CONF_KD_SAME, F_ | H_, false,
        0.1, a_randn, conf_ref_randn, s_rand, e_rand),

    OP_("softmax", "nb_softmax", "softmax", "max sub exp sum div", CONF_KD_SAME, F_ | H_, true, 10,
        a_softmax, conf_ref_softmax, s_softmax, e_softmax),
    OP_("log_softmax", "nb_log_softmax", "log_softmax", "max sub exp sum log", CONF_KD_SAME,
        F_ | H_, true, 10, a_log_softmax, conf_ref_log_softmax, s_softmax, e_softmax),
    OP_("conv2d", "nb_conv2d", "conv2d", "matmul copy add", CONF_KD_SAME, F_ | H_, true, 10,
        a_conv2d, conf_ref_conv2d, s_conv2d, e_conv2d),
    OP_("max_pool2d", "nb_max_pool2d", "max_pool2d", "max copy", CONF_KD_SAME, F_ | H_, true, 0,
        a_max_pool2d, conf_ref_max_pool2d, s_pool, e_pool),
    OP_("avg_pool2d", "nb_avg_pool2d", NULL, "sum copy mul_scalar", CONF_KD_SAME, F_ | H_, true, 10,
        a_avg_pool2d, conf_ref_avg_pool2d, s_pool, e_pool),
    OP_("linear", "nb_linear", NULL, "matmul add", CONF_KD_SAME, F_ | H_, true, 10, a_linear,
        conf_ref_linear, s_linear, e_linear),
    OP_("mse_loss", "nb_mse_loss", NULL, "sub mul sum", CONF_KD_SAME, F_ | H_, true, 10, a_mse_loss,
        conf_ref_mse_loss, s_mse, e_loss),
    OP_("cross_entropy", "nb_cross_entropy", NULL, "max sub exp sum log gather", CONF_KD_SAME,
        F_ | H_, true, 10, a_cross_entropy, conf_ref_cross_entropy, s_cross_entropy, e_cross_entropy),
    OP_("binary_cross_entropy_with_logits", "nb_binary_cross_entropy_with_logits", NULL,
        "exp log mul sub sum", CONF_KD_SAME, F_ | H_, true, 10, a_bce_with_logits,
        conf_ref_bce_with_logits, s_bce, e_loss),
    CONF_NN_ROWS
};
const int32_t conf_n_ops = COUNT_(conf_ops);

bool conf_op_available(const conf_op *op)
{
    /* only the weakly linked nn functions can be missing */
    void *fn = NULL;
    if (op->run == a_softmax) fn = (void *)nb_softmax;
    else if (op->run == a_log_softmax) fn = (void *)nb_log_softmax;
    else if (op->run == a_conv2d) fn = (void *)nb_conv2d;
    else if (op->run == a_max_pool2d) fn = (void *)nb_max_pool2d;
    else if (op->run == a_avg_pool2d) fn = (void *)nb_avg_pool2d;
    else if (op->run == a_linear) fn = (void *)nb_linear;
    else if (op->run == a_mse_loss) fn = (void *)nb_mse_loss;
    else if (op->run == a_cross_entropy) fn = (void *)nb_cross_entropy;
    else if (op->run == a_bce_with_logits) fn = (void *)nb_binary_cross_entropy_with_logits;
    else return true;
    return fn != NULL;
}

/* Ops whose backward cannot be differentiated again: gradgradcheck expects an error from them.
 * Every differentiable op in the table is twice differentiable today, so the list is empty;
 * a row added here documents the exception. */
static const char *const once_differentiable[] = {NULL};

bool conf_op_twice_differentiable(const conf_op *op)
{
    for (size_t k = 0; once_differentiable[k]; k++)
        if (!strcmp(once_differentiable[k], op->name))
            return false;
    return true;
}

/* Samples that sit on an op's kink: std over a constant slice is 0, where std is
 * differentiable once but not twice, and where its gradient, (x - mean) / ((n - 1) std), is 0/0
 * up to rounding: each float type's mean of equal values rounds its own way, so the gradient
 * of one type says nothing about another's. gradgradcheck and the narrow-against-wide gradient
 * comparison skip them; the float64 gradient checks still run. */
static const struct {
    const char *op, *sample;
} at_kink[] = {
    {"std", "stride-0 expand dim 0"},
    {NULL, NULL},
};

bool conf_sample_at_kink(const conf_op *op, const conf_sample *s)
{
    for (size_t k = 0; at_kink[k].op; k++)
        if (!strcmp(at_kink[k].op, op->name) && !strcmp(at_kink[k].sample, s->name))
            return true;
    return false;
}
