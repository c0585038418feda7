/* ops.c - the op vocabulary on top of dispatch: elementwise (broadcasting and PyTorch's type
 * promotion), reductions, matmul, indexing, casts; each differentiable op records its node here
 * with its backward rule next to it. */
#include "nabla_internal.h"

#include <math.h>
#include <string.h>

/* An op given NULL keeps the first error, so chains need one check at the end. */
#define NBI_NULL_CHECK(op, ...)                                                            \
    do {                                                                                   \
        const nb_tensor *args_[] = {__VA_ARGS__};                                          \
        for (size_t k_ = 0; k_ < sizeof args_ / sizeof *args_; k_++)                       \
            if (!args_[k_]) {                                                              \
                if (!nbi_error_pending())                                                  \
                    nbi_error(NB_NULL_ARGUMENT, "%s: argument %zu is NULL", op, k_ + 1);  \
                return NULL;                                                               \
            }                                                                              \
    } while (0)

static nb_status same_device(const char *op, const nb_tensor *a, const nb_tensor *b)
{
    if (a->storage->device != b->storage->device)
        return nbi_error(NB_DEVICE_MISMATCH, "%s: expected all tensors on the same device, got "
                         "%s and %s", op, a->storage->device->name, b->storage->device->name);
    return NB_OK;
}

/* A stack-only view of t broadcast to `shape`: no object is allocated, it only feeds a kernel. */
static void shadow(nb_tensor *dst, const nb_tensor *src, int32_t ndim, const int64_t *shape)
{
    /* only the fields a kernel launch reads: this sits on the dispatch fast path */
    dst->storage = src->storage;
    dst->offset = src->offset;
    dst->dtype = src->dtype;
    dst->ndim = ndim;
    int32_t lead = ndim - src->ndim;
    for (int32_t d = 0; d < ndim; d++) {
        int32_t sd = d - lead;
        dst->shape[d] = shape[d];
        dst->strides[d] = (sd < 0 || (src->shape[sd] == 1 && shape[d] != 1)) ? 0 : src->strides[sd];
    }
}

static nb_status broadcast_shapes(const char *op, const nb_tensor *a, const nb_tensor *b,
                                  int32_t *ndim, int64_t *shape)
{
    int32_t n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int32_t d = 0; d < n; d++) {
        int32_t da = d - (n - a->ndim), db = d - (n - b->ndim);
        int64_t x = da >= 0 ? a->shape[da] : 1, y = db >= 0 ? b->shape[db] : 1;
        if (x != y && x != 1 && y != 1)
            return nbi_error(NB_SHAPE_MISMATCH, "%s: shapes %s and %s cannot be broadcast "
                             "(size %lld vs %lld at dim %d)", op, NBI_SHAPE_STR(a),
                             NBI_SHAPE_STR(b), (long long)x, (long long)y, d);
        shape[d] = x == 1 ? y : x;
    }
    *ndim = n;
    return nbi_check_shape(op, n, shape); /* [2^32, 1] with [1, 2^32]: 2^64 elements */
}

static bool same_shape(const nb_tensor *a, int32_t ndim, const int64_t *shape)
{
    return a->ndim == ndim && !memcmp(a->shape, shape, (size_t)ndim * sizeof *shape);
}

/* Casts t to dtype when it is not already (a new reference either way). */
static nb_tensor *as_dtype(const nb_tensor *t, nb_dtype dtype)
{
    return t->dtype == dtype ? nb_retain((nb_tensor *)t) : nbi_cast(t, dtype);
}

static int64_t numel(const nb_tensor *t) { return nbi_numel(t->ndim, t->shape); }

/* ======================= backward rules for elementwise ops ======================= */

#define SAVED(k, var)                                                                      \
    nb_tensor *var;                                                                        \
    do {                                                                                   \
        nb_status st_ = nbi_saved(node, k, &var);                                          \
        if (st_ != NB_OK)                                                                  \
            return st_;                                                                    \
    } while (0)

static nb_status done(nb_tensor **gi, int32_t n)
{
    for (int32_t k = 0; k < n; k++)
        if (!gi[k] && nbi_error_pending())
            return nb_last_status();
    return NB_OK;
}

static nb_status bw_identity(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    for (int32_t k = 0; k < node->n_in; k++)
        gi[k] = node->next[k] ? nb_retain(g) : NULL;
    return NB_OK;
}

static nb_status bw_sub(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    gi[0] = nb_retain(g);
    gi[1] = node->next[1] ? nb_neg(g) : NULL;
    return done(gi, 1 + (node->next[1] != NULL));
}

static nb_status bw_mul(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, a);
    SAVED(1, b);
    gi[0] = node->next[0] ? nb_mul(g, b) : NULL;
    gi[1] = node->next[1] ? nb_mul(g, a) : NULL;
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

static nb_status bw_div(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, a);
    SAVED(1, b);
    gi[0] = node->next[0] ? nb_div(g, b) : NULL;
    if (node->next[1]) { /* -g * a / b^2 */
        nb_tensor *q = nb_div(a, b), *r = nb_div(q, b), *m = nb_mul(g, r);
        gi[1] = nb_neg(m);
        nb_release(q);
        nb_release(r);
        nb_release(m);
    }
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

static nb_status bw_pow(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, a);
    SAVED(1, b);
    if (node->next[0]) { /* g * b * a^(b-1) */
        nb_tensor *bm1 = nb_sub_scalar(b, 1), *p = nb_pow(a, bm1), *q = nb_mul(p, b);
        gi[0] = nb_mul(g, q);
        nb_release(bm1);
        nb_release(p);
        nb_release(q);
    }
    if (node->next[1]) { /* g * a^b * log(a) */
        nb_tensor *p = nb_pow(a, b), *l = nb_log(a), *q = nb_mul(p, l);
        gi[1] = nb_mul(g, q);
        nb_release(p);
        nb_release(l);
        nb_release(q);
    }
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

/* maximum/minimum: the gradient goes to the larger (smaller) input, split in half at ties. */
static nb_status bw_maxmin(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, a);
    SAVED(1, b);
    bool is_max = node->i[0];
    nb_tensor *win = is_max ? nb_gt(a, b) : nb_lt(a, b), *tie = nb_eq(a, b);
    nb_tensor *fw = win ? nb_to_dtype(win, g->dtype) : NULL, *ft = tie ? nb_to_dtype(tie, g->dtype) : NULL;
    nb_tensor *half = ft ? nb_mul_scalar(ft, 0.5) : NULL;
    nb_tensor *wa = fw && half ? nb_add(fw, half) : NULL; /* weight for a */
    nb_tensor *wb = wa ? nb_rsub_scalar(wa, 1) : NULL;   /* weight for b */
    gi[0] = node->next[0] && wa ? nb_mul(g, wa) : NULL;
    gi[1] = node->next[1] && wb ? nb_mul(g, wb) : NULL;
    nb_release(win);
    nb_release(tie);
    nb_release(fw);
    nb_release(ft);
    nb_release(half);
    nb_release(wa);
    nb_release(wb);
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

static const struct {
    const char *name;
    nbi_backward_fn bw;
} binary_grad[NBI_OP_COUNT] = {
    [NBI_OP_add] = {"AddBackward0", bw_identity}, [NBI_OP_sub] = {"SubBackward0", bw_sub},
    [NBI_OP_mul] = {"MulBackward0", bw_mul},      [NBI_OP_div] = {"DivBackward0", bw_div},
    [NBI_OP_pow] = {"PowBackward1", bw_pow},      [NBI_OP_maximum] = {"MaximumBackward0", bw_maxmin},
    [NBI_OP_minimum] = {"MinimumBackward0", bw_maxmin},
};

/* ============================== binary ops ============================== */

static bool is_compare(nbi_op op) { return op >= NBI_OP_eq && op <= NBI_OP_ge; }

/* PyTorch 2.x result_type for two tensors: a 0-d tensor takes part only when its category
 * (bool < integer < float) is higher than the other's, so f32 + f64 0-d is f32 and
 * i32 + i64 0-d is i32, while i32 + f64 0-d is f64. */
static nb_dtype result_type(const nb_tensor *a, const nb_tensor *b)
{
    bool za = a->ndim == 0, zb = b->ndim == 0;
    if (za == zb)
        return nb_promote_types(a->dtype, b->dtype);
    nb_dtype dim = za ? b->dtype : a->dtype, zero = za ? a->dtype : b->dtype;
    if (nb_dtype_is_float(dim))
        return dim;
    if (dim == NB_DTYPE_BOOL || nb_dtype_is_float(zero))
        return nb_promote_types(dim, zero);
    return dim;
}

/* torch.can_cast, for in-place results: never float to integer, never anything to bool. */
static bool can_cast(nb_dtype from, nb_dtype to)
{
    if (nb_dtype_is_float(from) && !nb_dtype_is_float(to))
        return false;
    return from == NB_DTYPE_BOOL || to != NB_DTYPE_BOOL;
}
static bool is_logical(nbi_op op) { return op >= NBI_OP_logical_and && op <= NBI_OP_logical_xor; }

/* Computes op(a, b) into a new tensor, or into `into` (in place: a itself) when given. */
static nb_tensor *binary_into(nbi_op op, const nb_tensor *a, const nb_tensor *b, nb_tensor *into)
{
    const char *name = nbi_op_name(op);
    if (same_device(name, a, b) != NB_OK)
        return NULL;
    nb_dtype dt = result_type(a, b);
    if (op == NBI_OP_div && !nb_dtype_is_float(dt))
        dt = nbi_default_float(); /* true division */
    if (dt == NB_DTYPE_BOOL && !is_compare(op) && !is_logical(op)) {
        /* bool arithmetic as in PyTorch: + and maximum are or, * and minimum are and */
        if (op == NBI_OP_add || op == NBI_OP_maximum) {
            op = NBI_OP_logical_or;
        } else if (op == NBI_OP_mul || op == NBI_OP_minimum) {
            op = NBI_OP_logical_and;
        } else if (op == NBI_OP_sub) {
            nbi_error(NB_DTYPE_UNSUPPORTED, "sub: subtraction, the `-` operator, with two bool "
                      "tensors is not supported; use the `^` or logical_xor() operator instead");
            return NULL;
        } else {
            nbi_error(NB_DTYPE_UNSUPPORTED, "\"%s\" not implemented for 'Bool'", name);
            return NULL;
        }
    }
    if (is_logical(op))
        dt = NB_DTYPE_BOOL;
    nb_dtype out_dt = (is_compare(op) || is_logical(op)) ? NB_DTYPE_BOOL : dt;
    int32_t ndim;
    int64_t shape[NB_MAX_DIMS];
    bool same = a->ndim == b->ndim && !memcmp(a->shape, b->shape, (size_t)a->ndim * 8);
    if (same) {
        ndim = a->ndim;
        memcpy(shape, a->shape, (size_t)ndim * 8);
    } else if (broadcast_shapes(name, a, b, &ndim, shape) != NB_OK) {
        return NULL;
    }
    if (into) {
        if (!same_shape(into, ndim, shape)) {
            nbi_error(NB_SHAPE_MISMATCH, "%s_: output with shape %s doesn't match the broadcast "
                      "shape %s", name, NBI_SHAPE_STR(into), nbi_shape_cstr(ndim, shape));
            return NULL;
        }
        if (!can_cast(out_dt, into->dtype)) {
            nbi_error(NB_DTYPE_UNSUPPORTED, "%s_: result type %s can't be cast to the desired "
                      "output type %s", name, nb_dtype_name(out_dt), nb_dtype_name(into->dtype));
            return NULL;
        }
    }
    nb_tensor *ca = as_dtype(a, dt), *cb = ca ? as_dtype(b, dt) : NULL;
    nb_tensor *out = NULL;
    if (cb) {
        if (into && into->dtype == out_dt)
            out = nb_retain(into);
        else
            out = nbi_tensor_new(a->storage->device, out_dt, ndim, shape);
    }
    if (out) {
        nb_tensor sa, sb, *in[2] = {ca, cb};
        if (!same) { /* broadcast views; equal shapes go to the kernel as they are */
            shadow(&sa, ca, ndim, shape);
            shadow(&sb, cb, ndim, shape);
            in[0] = &sa;
            in[1] = &sb;
        }
        if (nbi_numel(ndim, shape) &&
            nbi_launch(op, dt, out, in, 2, NULL, 0, NULL, 0) != NB_OK) {
            nb_release(out);
            out = NULL;
        }
    }
    if (out && into && out != into) { /* computed in a wider type: cast into place */
        nb_tensor *in[1] = {out};
        nb_status st = nbi_launch(NBI_OP_copy, into->dtype, into, in, 1, NULL, 0, NULL, 0);
        nb_release(out);
        out = st == NB_OK ? nb_retain(into) : NULL;
    }
    if (out && !into && binary_grad[op].bw) {
        nb_tensor *ins[2] = {(nb_tensor *)a, (nb_tensor *)b};
        nbi_node *node = nbi_record(out, binary_grad[op].name, binary_grad[op].bw, ins, 2);
        if (node && op != NBI_OP_add && op != NBI_OP_sub) {
            /* a promoted operand is saved through a recorded cast, so that create_graph
             * differentiates the backward along it as well */
            nb_tensor *sa = a->dtype == dt ? nb_retain(ca) : nb_to_dtype(a, dt);
            nb_tensor *sb = b->dtype == dt ? nb_retain(cb) : nb_to_dtype(b, dt);
            nbi_save(node, sa);
            nbi_save(node, sb);
            nb_release(sa);
            nb_release(sb);
            node->i[0] = op == NBI_OP_maximum;
        }
    }
    nb_release(ca);
    nb_release(cb);
    return out;
}

nb_tensor *nbi_binary(nbi_op op, const nb_tensor *a, const nb_tensor *b)
{
    return binary_into(op, a, b, NULL);
}

/* In place: without grad the kernel writes into a; with grad the result is computed out of
 * place and a takes over its data and its history (autograd.c: nbi_inplace_commit). */
static nb_status inplace_finish(const char *op, nb_tensor *a, nb_tensor *r)
{
    return nbi_inplace_commit(op, a, r);
}

static nb_status binary_inplace(nbi_op op, nb_tensor *a, const nb_tensor *b)
{
    const char *name = nbi_op_name(op);
    if (!a || !b)
        return nbi_error(NB_NULL_ARGUMENT, "%s_: argument is NULL", name);
    if (nbi_check_inplace(name, a) != NB_OK)
        return nb_last_status();
    nb_tensor *ab[2] = {a, (nb_tensor *)b};
    if (nbi_grad_needed(ab, 2))
        return inplace_finish(name, a, binary_into(op, a, b, NULL));
    return inplace_finish(name, a, binary_into(op, a, b, a));
}

/* ============================== unary and scalar ops ============================== */

/* Scalars keep an integer tensor's dtype when they are integral, else go to float. */
static nb_dtype scalar_dtype(const nb_tensor *a, double s)
{
    if (nb_dtype_is_float(a->dtype))
        return a->dtype;
    if (a->dtype == NB_DTYPE_BOOL)
        return s == floor(s) ? NB_DTYPE_I64 : nbi_default_float();
    return s == floor(s) && isfinite(s) ? a->dtype : nbi_default_float();
}

static nb_tensor *unary_kernel(nbi_op op, const nb_tensor *a, nb_dtype dt, nb_dtype out_dt,
                               const double *f, int32_t nf, const int64_t *iv, int32_t ni,
                               nb_tensor *into)
{
    nb_tensor *ca = as_dtype(a, dt);
    if (!ca)
        return NULL;
    nb_tensor *out = into && into->dtype == out_dt ? nb_retain(into)
                                                   : nbi_tensor_new(a->storage->device, out_dt,
                                                                    a->ndim, a->shape);
    nb_tensor *in[1] = {ca};
    if (out && numel(a) && nbi_launch(op, dt, out, in, 1, f, nf, iv, ni) != NB_OK) {
        nb_release(out);
        out = NULL;
    }
    if (out && into && out != into) {
        nb_tensor *src[1] = {out};
        nb_status st = nbi_launch(NBI_OP_copy, into->dtype, into, src, 1, NULL, 0, NULL, 0);
        nb_release(out);
        out = st == NB_OK ? nb_retain(into) : NULL;
    }
    nb_release(ca);
    return out;
}

/* ---- backward rules ---- */

static nb_status bw_neg(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    gi[0] = nb_neg(g);
    return done(gi, 1);
}

#define UNARY_BW(fname, expr)                                                              \
    static nb_status fname(nbi_node *node, nb_tensor *g, nb_tensor **gi)                   \
    {                                                                                      \
        SAVED(0, x);                                                                       \
        nb_tensor *t1 = NULL, *t2 = NULL, *t3 = NULL;                                      \
        double s = node->f[0];                                                             \
        (void)s;                                                                           \
        gi[0] = (expr);                                                                    \
        nb_release(t1);                                                                    \
        nb_release(t2);                                                                    \
        nb_release(t3);                                                                    \
        return done(gi, 1);                                                                \
    }

/* x is the saved input, or the saved output for the rules that read it (exp, tanh, ...). */
UNARY_BW(bw_abs, nb_mul(g, t1 = nb_sign(x)))
UNARY_BW(bw_exp, nb_mul(g, x))
UNARY_BW(bw_log, nb_div(g, x))
UNARY_BW(bw_sqrt, nb_div(g, t1 = nb_mul_scalar(x, 2)))
UNARY_BW(bw_rsqrt, nb_mul(g, t2 = nb_mul_scalar(t1 = nb_pow_scalar(x, 3), -0.5)))
UNARY_BW(bw_sin, nb_mul(g, t1 = nb_cos(x)))
UNARY_BW(bw_cos, nb_mul(g, t2 = nb_neg(t1 = nb_sin(x))))
UNARY_BW(bw_tanh, nb_mul(g, t2 = nb_rsub_scalar(t1 = nb_mul(x, x), 1)))
UNARY_BW(bw_sigmoid, nb_mul(g, t2 = nb_mul(x, t1 = nb_rsub_scalar(x, 1))))
UNARY_BW(bw_zero, nb_zeros_like(g))
UNARY_BW(bw_mul_scalar, nb_mul_scalar(g, s))
UNARY_BW(bw_div_scalar, nb_div_scalar(g, s))
UNARY_BW(bw_rdiv_scalar, nb_mul(g, t3 = nb_mul_scalar(t2 = nb_rdiv_scalar(t1 = nb_mul(x, x), 1), -s)))
UNARY_BW(bw_pow_scalar, s == 0 ? nb_zeros_like(g)
                               : nb_mul(g, t2 = nb_mul_scalar(t1 = nb_pow_scalar(x, s - 1), s)))
UNARY_BW(bw_rpow_scalar, nb_mul(g, t1 = nb_mul_scalar(x, log(s))))

static nb_status bw_relu(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, y);
    if (nbi_has_kernel(g, "relu_backward") && !nb_is_grad_enabled() && g->dtype == y->dtype) {
        gi[0] = nbi_tensor_new(g->storage->device, g->dtype, g->ndim, g->shape);
        nb_tensor sg, sy, *in[2] = {&sg, &sy};
        shadow(&sg, g, g->ndim, g->shape);
        shadow(&sy, y, g->ndim, g->shape);
        if (gi[0] && numel(g) &&
            nbi_launch(NBI_OP_relu_backward, g->dtype, gi[0], in, 2, NULL, 0, NULL, 0) != NB_OK) {
            nb_release(gi[0]);
            gi[0] = NULL;
        }
        return done(gi, 1);
    }
    nb_tensor *m = nb_gt_scalar(y, 0), *mf = m ? nb_to_dtype(m, g->dtype) : NULL;
    gi[0] = mf ? nb_mul(g, mf) : NULL;
    nb_release(m);
    nb_release(mf);
    return done(gi, 1);
}

static nb_status bw_clamp(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, x);
    nb_tensor *m = NULL;
    /* PyTorch 2.x: exactly at min or max the gradient is 0 (1.13 passed it through) */
    if (node->i[0] && node->i[1]) {
        nb_tensor *lo = nb_gt_scalar(x, node->f[0]), *hi = nb_lt_scalar(x, node->f[1]);
        m = nb_logical_and(lo, hi);
        nb_release(lo);
        nb_release(hi);
    } else if (node->i[0]) {
        m = nb_gt_scalar(x, node->f[0]);
    } else {
        m = nb_lt_scalar(x, node->f[1]);
    }
    nb_tensor *mf = m ? nb_to_dtype(m, g->dtype) : NULL;
    gi[0] = mf ? nb_mul(g, mf) : NULL;
    nb_release(m);
    nb_release(mf);
    return done(gi, 1);
}

typedef enum { SAVE_NONE, SAVE_INPUT, SAVE_OUTPUT } save_kind;

static const struct {
    const char *name;
    nbi_backward_fn bw;
    save_kind save;
    bool to_float; /* integer inputs compute in float (exp, sqrt, ...) */
} unary_info[NBI_OP_COUNT] = {
    [NBI_OP_neg] = {"NegBackward0", bw_neg, SAVE_NONE, false},
    [NBI_OP_abs] = {"AbsBackward0", bw_abs, SAVE_INPUT, false},
    [NBI_OP_exp] = {"ExpBackward0", bw_exp, SAVE_OUTPUT, true},
    [NBI_OP_log] = {"LogBackward0", bw_log, SAVE_INPUT, true},
    [NBI_OP_sqrt] = {"SqrtBackward0", bw_sqrt, SAVE_OUTPUT, true},
    [NBI_OP_rsqrt] = {"RsqrtBackward0", bw_rsqrt, SAVE_OUTPUT, true},
    [NBI_OP_sin] = {"SinBackward0", bw_sin, SAVE_INPUT, true},
    [NBI_OP_cos] = {"CosBackward0", bw_cos, SAVE_INPUT, true},
    [NBI_OP_tanh] = {"TanhBackward0", bw_tanh, SAVE_OUTPUT, true},
    [NBI_OP_sigmoid] = {"SigmoidBackward0", bw_sigmoid, SAVE_OUTPUT, true},
    [NBI_OP_relu] = {"ReluBackward0", bw_relu, SAVE_OUTPUT, false},
    [NBI_OP_sign] = {"SignBackward0", bw_zero, SAVE_NONE, false},
    [NBI_OP_floor] = {"FloorBackward0", bw_zero, SAVE_NONE, false},
    [NBI_OP_ceil] = {"CeilBackward0", bw_zero, SAVE_NONE, false},
    [NBI_OP_round] = {"RoundBackward0", bw_zero, SAVE_NONE, false},
    [NBI_OP_add_scalar] = {"AddBackward0", bw_identity, SAVE_NONE, false},
    [NBI_OP_mul_scalar] = {"MulBackward0", bw_mul_scalar, SAVE_NONE, false},
    [NBI_OP_div_scalar] = {"DivBackward0", bw_div_scalar, SAVE_NONE, false},
    [NBI_OP_rsub_scalar] = {"RsubBackward1", bw_neg, SAVE_NONE, false},
    [NBI_OP_rdiv_scalar] = {"MulBackward0", bw_rdiv_scalar, SAVE_INPUT, false}, /* s / x */
    [NBI_OP_pow_scalar] = {"PowBackward0", bw_pow_scalar, SAVE_INPUT, false},
    [NBI_OP_rpow_scalar] = {"PowBackward2", bw_rpow_scalar, SAVE_OUTPUT, false},
    [NBI_OP_clamp] = {"ClampBackward1", bw_clamp, SAVE_INPUT, false},
};

/* One path for every unary and tensor-scalar op: dtype, kernel, then the graph node. */
static nb_tensor *unary_op(nbi_op op, const nb_tensor *a, const double *f, int32_t nf,
                           const int64_t *iv, int32_t ni, nb_tensor *into)
{
    nb_dtype dt = a->dtype;
    if (unary_info[op].to_float && !nb_dtype_is_float(dt))
        dt = nbi_default_float();
    if (op >= NBI_OP_add_scalar && op <= NBI_OP_rpow_scalar)
        dt = scalar_dtype(a, f[0]);
    if ((op == NBI_OP_div_scalar || op == NBI_OP_rdiv_scalar) && !nb_dtype_is_float(dt))
        dt = nbi_default_float();
    if (op == NBI_OP_pow_scalar && f[0] < 0 && f[0] == floor(f[0]) && !nb_dtype_is_float(dt)) {
        nbi_error(NB_INVALID_ARGUMENT, "pow: integers to negative integer powers are not allowed "
                  "(%s tensor ** %g)", nb_dtype_name(a->dtype), f[0]);
        return NULL;
    }
    if (into && !can_cast(dt, into->dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s_: result type %s can't be cast to the desired "
                  "output type %s", nbi_op_name(op), nb_dtype_name(dt), nb_dtype_name(into->dtype));
        return NULL;
    }
    nb_tensor *out = unary_kernel(op, a, dt, dt, f, nf, iv, ni, into);
    if (out && !into && unary_info[op].bw) {
        nb_tensor *in[1] = {(nb_tensor *)a};
        nbi_node *node = nbi_record(out, unary_info[op].name, unary_info[op].bw, in, 1);
        if (node) {
            if (unary_info[op].save == SAVE_INPUT)
                nbi_save(node, a);
            else if (unary_info[op].save == SAVE_OUTPUT)
                nbi_save_output(node, out);
            for (int32_t k = 0; k < nf && k < 4; k++)
                node->f[k] = f[k];
            for (int32_t k = 0; k < ni && k < 2; k++)
                node->i[k] = iv[k];
        }
    }
    return out;
}

static nb_status unary_inplace(nbi_op op, nb_tensor *a, const double *f, int32_t nf,
                               const int64_t *iv, int32_t ni)
{
    const char *name = nbi_op_name(op);
    if (!a)
        return nbi_error(NB_NULL_ARGUMENT, "%s_: tensor is NULL", name);
    if (nbi_check_inplace(name, a) != NB_OK)
        return nb_last_status();
    if (nbi_grad_needed(&a, 1))
        return inplace_finish(name, a, unary_op(op, a, f, nf, iv, ni, NULL));
    return inplace_finish(name, a, unary_op(op, a, f, nf, iv, ni, a));
}

/* ---- the public elementwise functions ---- */

#define NB_DEFINE_BINARY_(name)                                                            \
    nb_tensor *nb_##name(const nb_tensor *a, const nb_tensor *b)                           \
    {                                                                                      \
        NBI_NULL_CHECK(#name, a, b);                                                       \
        return NBI_API(binary_into(NBI_OP_##name, a, b, NULL));                            \
    }                                                                                      \
    nb_status nb_##name##_(nb_tensor *a, const nb_tensor *b)                               \
    {                                                                                      \
        return NBI_API_STATUS(binary_inplace(NBI_OP_##name, a, b));                        \
    }
NB_BINARY_OPS_(NB_DEFINE_BINARY_)

#define NB_DEFINE_COMPARE_(name)                                                           \
    nb_tensor *nb_##name(const nb_tensor *a, const nb_tensor *b)                           \
    {                                                                                      \
        NBI_NULL_CHECK(#name, a, b);                                                       \
        return NBI_API(binary_into(NBI_OP_##name, a, b, NULL));                            \
    }                                                                                      \
    nb_tensor *nb_##name##_scalar(const nb_tensor *a, double s)                            \
    {                                                                                      \
        NBI_NULL_CHECK(#name "_scalar", a);                                                \
        double f[1] = {s};                                                                 \
        nb_dtype dt = nb_dtype_is_float(a->dtype) ? a->dtype : NB_DTYPE_F64;               \
        return NBI_API(unary_kernel(NBI_OP_##name##_scalar, a, dt, NB_DTYPE_BOOL, f, 1,    \
                                    NULL, 0, NULL));                                       \
    }
NB_COMPARE_OPS_(NB_DEFINE_COMPARE_)

#define NB_DEFINE_LOGICAL_(name)                                                           \
    nb_tensor *nb_##name(const nb_tensor *a, const nb_tensor *b)                           \
    {                                                                                      \
        NBI_NULL_CHECK(#name, a, b);                                                       \
        return NBI_API(binary_into(NBI_OP_##name, a, b, NULL));                            \
    }
NB_LOGICAL_OPS_(NB_DEFINE_LOGICAL_)

nb_tensor *nb_logical_not(const nb_tensor *a)
{
    NBI_NULL_CHECK("logical_not", a);
    return NBI_API(unary_kernel(NBI_OP_logical_not, a, NB_DTYPE_BOOL, NB_DTYPE_BOOL, NULL, 0,
                                NULL, 0, NULL));
}

#define NB_DEFINE_UNARY_(name)                                                             \
    nb_tensor *nb_##name(const nb_tensor *a)                                               \
    {                                                                                      \
        NBI_NULL_CHECK(#name, a);                                                          \
        return NBI_API(unary_op(NBI_OP_##name, a, NULL, 0, NULL, 0, NULL));                \
    }                                                                                      \
    nb_status nb_##name##_(nb_tensor *a)                                                   \
    {                                                                                      \
        return NBI_API_STATUS(unary_inplace(NBI_OP_##name, a, NULL, 0, NULL, 0));          \
    }
NB_UNARY_OPS_(NB_DEFINE_UNARY_)

/* Tensor-scalar arithmetic maps onto the scalar kernels: a - s is a + (-s), and so on. */
static nb_tensor *scalar_op(const char *name, nbi_op op, const nb_tensor *a, double s,
                            nb_tensor *into)
{
    double f[1] = {s};
    switch (op) {
    case NBI_OP_add: return unary_op(NBI_OP_add_scalar, a, f, 1, NULL, 0, into);
    case NBI_OP_sub: {
        f[0] = -s;
        nb_tensor *r = unary_op(NBI_OP_add_scalar, a, f, 1, NULL, 0, into);
        if (r && !into && r->grad_fn)
            r->grad_fn->name = "SubBackward0";
        return r;
    }
    case NBI_OP_mul: return unary_op(NBI_OP_mul_scalar, a, f, 1, NULL, 0, into);
    case NBI_OP_div: return unary_op(NBI_OP_div_scalar, a, f, 1, NULL, 0, into);
    case NBI_OP_pow: return unary_op(NBI_OP_pow_scalar, a, f, 1, NULL, 0, into);
    case NBI_OP_maximum:
    case NBI_OP_minimum: {
        double c[2] = {s, s};
        int64_t has[2] = {op == NBI_OP_maximum, op == NBI_OP_minimum};
        return unary_op(NBI_OP_clamp, a, c, 2, has, 2, into);
    }
    default: break;
    }
    nbi_error(NB_INVALID_ARGUMENT, "%s: no scalar form", name);
    return NULL;
}

#define NB_DEFINE_BINARY_SCALAR_(name)                                                     \
    nb_tensor *nb_##name##_scalar(const nb_tensor *a, double s)                            \
    {                                                                                      \
        NBI_NULL_CHECK(#name "_scalar", a);                                                \
        return NBI_API(scalar_op(#name "_scalar", NBI_OP_##name, a, s, NULL));             \
    }                                                                                      \
    nb_status nb_##name##_scalar_(nb_tensor *a, double s)                                  \
    {                                                                                      \
        if (!a)                                                                            \
            return nbi_error(NB_NULL_ARGUMENT, #name "_scalar_: tensor is NULL");          \
        if (nbi_check_inplace(#name "_scalar_", a) != NB_OK)                               \
            return nb_last_status();                                                       \
        nbi_api_depth++;                                                                   \
        nb_tensor *r = scalar_op(#name "_scalar_", NBI_OP_##name, a, s,                    \
                                 nbi_grad_needed(&a, 1) ? NULL : a);                       \
        nb_status st = inplace_finish(#name "_scalar_", a, r);                             \
        nbi_api_depth--;                                                                   \
        return st;                                                                         \
    }
NB_BINARY_OPS_(NB_DEFINE_BINARY_SCALAR_)

nb_tensor *nb_rsub_scalar(const nb_tensor *a, double s)
{
    NBI_NULL_CHECK("rsub_scalar", a);
    double f[1] = {s};
    return NBI_API(unary_op(NBI_OP_rsub_scalar, a, f, 1, NULL, 0, NULL));
}

nb_tensor *nb_rdiv_scalar(const nb_tensor *a, double s)
{
    NBI_NULL_CHECK("rdiv_scalar", a);
    double f[1] = {s};
    return NBI_API(unary_op(NBI_OP_rdiv_scalar, a, f, 1, NULL, 0, NULL));
}

static nb_tensor *clamp_impl(const nb_tensor *a, double lo, double hi, nb_tensor *into)
{
    if (isnan(lo) && isnan(hi)) {
        nbi_error(NB_INVALID_ARGUMENT, "clamp: at least one of min or max must be given (both "
                  "are NAN)");
        return NULL;
    }
    double f[2] = {isnan(lo) ? 0 : lo, isnan(hi) ? 0 : hi};
    int64_t has[2] = {!isnan(lo), !isnan(hi)};
    return unary_op(NBI_OP_clamp, a, f, 2, has, 2, into);
}

nb_tensor *nb_clamp(const nb_tensor *a, double lo, double hi)
{
    NBI_NULL_CHECK("clamp", a);
    return NBI_API(clamp_impl(a, lo, hi, NULL));
}

nb_status nb_clamp_(nb_tensor *a, double lo, double hi)
{
    if (!a)
        return nbi_error(NB_NULL_ARGUMENT, "clamp_: tensor is NULL");
    if (nbi_check_inplace("clamp_", a) != NB_OK)
        return nb_last_status();
    nbi_api_depth++;
    nb_status st = inplace_finish("clamp_", a, clamp_impl(a, lo, hi, nbi_grad_needed(&a, 1) ? NULL : a));
    nbi_api_depth--;
    return st;
}

/* ---- where ---- */

static nb_status bw_where(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, c);
    nb_tensor *z = nb_zeros(NB_SHAPE_SCALAR, (nb_opts){g->dtype, g->storage->device->name});
    gi[1] = node->next[1] && z ? nb_where(c, g, z) : NULL;
    gi[2] = node->next[2] && z ? nb_where(c, z, g) : NULL;
    nb_release(z);
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

static nb_tensor *where_impl(const nb_tensor *cond, const nb_tensor *a, const nb_tensor *b)
{
    if (same_device("where", cond, a) != NB_OK || same_device("where", a, b) != NB_OK)
        return NULL;
    if (cond->dtype != NB_DTYPE_BOOL) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "where: condition must be bool, got %s",
                  nb_dtype_name(cond->dtype));
        return NULL;
    }
    int32_t n1, n;
    int64_t s1[NB_MAX_DIMS], shape[NB_MAX_DIMS];
    if (broadcast_shapes("where", a, b, &n1, s1) != NB_OK)
        return NULL;
    nb_tensor tmp;
    shadow(&tmp, a, n1, s1);
    if (broadcast_shapes("where", cond, &tmp, &n, shape) != NB_OK)
        return NULL;
    nb_dtype dt = result_type(a, b);
    nb_tensor *ca = as_dtype(a, dt), *cb = ca ? as_dtype(b, dt) : NULL;
    nb_tensor *out = cb ? nbi_tensor_new(a->storage->device, dt, n, shape) : NULL;
    if (out) {
        nb_tensor sc, sa, sb, *in[3] = {&sc, &sa, &sb};
        shadow(&sc, cond, n, shape);
        shadow(&sa, ca, n, shape);
        shadow(&sb, cb, n, shape);
        if (nbi_numel(n, shape) && nbi_launch(NBI_OP_where, dt, out, in, 3, NULL, 0, NULL, 0) != NB_OK) {
            nb_release(out);
            out = NULL;
        }
    }
    nb_tensor *ins[3] = {(nb_tensor *)cond, (nb_tensor *)a, (nb_tensor *)b};
    nbi_node *node = out ? nbi_record(out, "WhereBackward0", bw_where, ins, 3) : NULL;
    if (node)
        nbi_save(node, cond);
    nb_release(ca);
    nb_release(cb);
    return out;
}

nb_tensor *nb_where(const nb_tensor *cond, const nb_tensor *a, const nb_tensor *b)
{
    NBI_NULL_CHECK("where", cond, a, b);
    return NBI_API(where_impl(cond, a, b));
}

/* ---- fills and the optimizer's axpy ---- */

static nb_status bw_fill(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    (void)node;
    gi[0] = nb_zeros_like(g); /* the old values were overwritten */
    return done(gi, 1);
}

static nb_status fill_impl(const char *op, const char *node_name, nb_tensor *t, double value)
{
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "%s: tensor is NULL", op);
    if (nbi_check_inplace(op, t) != NB_OK)
        return nb_last_status();
    double f[1] = {value};
    if (!nbi_grad_needed(&t, 1)) {
        nb_status st = numel(t) ? nbi_launch(NBI_OP_fill, t->dtype, t, NULL, 0, f, 1, NULL, 0)
                                : NB_OK;
        if (st == NB_OK)
            nbi_bump_version(t);
        return st;
    }
    /* with grad: the filled values come from a node whose gradient for the old ones is 0 */
    nb_tensor *r = nbi_tensor_new(t->storage->device, t->dtype, t->ndim, t->shape);
    if (r && numel(r) && nbi_launch(NBI_OP_fill, r->dtype, r, NULL, 0, f, 1, NULL, 0) != NB_OK) {
        nb_release(r);
        r = NULL;
    }
    if (r && !nbi_record(r, node_name, bw_fill, &t, 1)) {
        nb_release(r);
        r = NULL;
    }
    return nbi_inplace_commit(op, t, r);
}

nb_status nb_fill_(nb_tensor *t, double value)
{
    return NBI_API_STATUS(fill_impl("fill_", "FillBackward2", t, value)); /* fill_.Scalar */
}

nb_status nb_zero_(nb_tensor *t) { return NBI_API_STATUS(fill_impl("zero_", "ZeroBackward0", t, 0)); }

nb_status nb_add_scaled_(nb_tensor *a, const nb_tensor *b, double alpha)
{
    if (!a || !b)
        return nbi_error(NB_NULL_ARGUMENT, "add_scaled_: argument is NULL");
    nbi_api_depth++;
    nb_tensor *sb = nb_mul_scalar(b, alpha);
    nb_status st = sb ? binary_inplace(NBI_OP_add, a, sb) : nb_last_status();
    nb_release(sb);
    nbi_api_depth--;
    return st;
}

/* ============================== casts and copies ============================== */

static nb_status bw_to_copy(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    (void)node;
    gi[0] = nb_retain(g); /* the engine casts it back to the input's dtype */
    return NB_OK;
}

static nb_tensor *record_copy(nb_tensor *out, const nb_tensor *src, const char *name)
{
    nb_tensor *in[1] = {(nb_tensor *)src};
    if (out)
        nbi_record(out, name, bw_to_copy, in, 1);
    return out;
}

nb_tensor *nb_to_dtype(const nb_tensor *t, nb_dtype dtype)
{
    NBI_NULL_CHECK("to_dtype", t);
    if ((unsigned)dtype >= NB_DTYPE_COUNT) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "to_dtype: invalid dtype %d", (int)dtype);
        return NULL;
    }
    if (dtype == t->dtype)
        return NBI_API(nb_retain((nb_tensor *)t));
    nb_tensor *r = nbi_cast(t, dtype);
    if (r && nb_dtype_is_float(dtype))
        record_copy(r, t, "ToCopyBackward0");
    return NBI_API(r);
}

nb_tensor *nb_clone(const nb_tensor *t)
{
    NBI_NULL_CHECK("clone", t);
    return NBI_API(record_copy(nbi_cast(t, t->dtype), t, "CloneBackward0"));
}

nb_tensor *nb_contiguous(const nb_tensor *t)
{
    NBI_NULL_CHECK("contiguous", t);
    if (nbi_is_contiguous(t))
        return NBI_API(nb_retain((nb_tensor *)t));
    return NBI_API(record_copy(nbi_cast(t, t->dtype), t, "CloneBackward0"));
}

/* to(device) keeps the graph: the gradient flows back to the source device. */
static nb_status bw_to_device(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, src);
    gi[0] = nb_to_device(g, src->storage->device->name);
    return done(gi, 1);
}

nb_tensor *nbi_to_device_graph(const nb_tensor *t, nb_tensor *moved)
{
    if (moved && moved != t) {
        nb_tensor *in[1] = {(nb_tensor *)t};
        nbi_node *node = nbi_record(moved, "ToCopyBackward0", bw_to_device, in, 1);
        if (node)
            nbi_save_detached(node, t);
    }
    return moved;
}

/* PyTorch's CopyBackwards: nothing flows to the overwritten values, the source gets the
 * gradient back on its own device (the engine undoes broadcasting and casts its dtype). */
static nb_status bw_copy(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    gi[0] = node->next[0] ? nb_zeros_like(g) : NULL;
    if (node->next[1])
        gi[1] = g->storage->device == node->src_device ? nb_retain(g)
                                                       : nb_to_device(g, node->src_device->name);
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

/* raw: a data write with no autograd at all (copy_from_host, internal fills). */
static nb_status copy_impl(nb_tensor *dst, const nb_tensor *src, bool raw)
{
    if (!dst || !src)
        return nbi_error(NB_NULL_ARGUMENT, "copy_: destination or source is NULL");
    int32_t n;
    int64_t shape[NB_MAX_DIMS];
    if (broadcast_shapes("copy_", dst, src, &n, shape) != NB_OK)
        return nb_last_status();
    if (!same_shape(dst, n, shape))
        return nbi_error(NB_SHAPE_MISMATCH, "copy_: source %s cannot be broadcast to destination "
                         "%s", NBI_SHAPE_STR(src), NBI_SHAPE_STR(dst));
    if (!raw && nbi_check_inplace("copy_", dst) != NB_OK)
        return nb_last_status();
    nb_tensor *ds[2] = {dst, (nb_tensor *)src};
    bool grad = !raw && nbi_grad_needed(ds, 2);
    bool prev = nb_set_grad_enabled(false); /* the move itself is not recorded */
    nb_tensor *s = src->storage->device == dst->storage->device
                       ? nb_retain((nb_tensor *)src)
                       : nb_to_device(src, dst->storage->device->name);
    nb_set_grad_enabled(prev);
    if (!s)
        return nb_last_status();
    nb_tensor *into = grad ? nbi_tensor_new(dst->storage->device, dst->dtype, dst->ndim,
                                            dst->shape)
                           : nb_retain(dst);
    nb_tensor ss, *in[1] = {&ss};
    shadow(&ss, s, n, shape);
    nb_status st = !into ? nb_last_status()
                 : numel(dst) ? nbi_launch(NBI_OP_copy, dst->dtype, into, in, 1, NULL, 0, NULL, 0)
                              : NB_OK;
    nb_release(s);
    if (st != NB_OK) {
        nb_release(into);
        return st;
    }
    if (!grad) {
        nb_release(into);
        nbi_bump_version(dst);
        return NB_OK;
    }
    nbi_node *node = nbi_record(into, "CopyBackwards", bw_copy, ds, 2);
    if (!node) {
        nb_release(into);
        return nb_last_status();
    }
    node->src_device = src->storage->device;
    return nbi_inplace_commit("copy_", dst, into);
}

nb_status nbi_copy_raw(nb_tensor *dst, const nb_tensor *src) { return copy_impl(dst, src, true); }

nb_status nb_tensor_copy_(nb_tensor *dst, const nb_tensor *src)
{
    return NBI_API_STATUS(copy_impl(dst, src, false));
}

/* ============================== reductions ============================== */

static nb_status reduce_dims(const char *op, const nb_tensor *t, const int32_t *dims, int32_t nd,
                             bool *mask)
{
    memset(mask, 0, NB_MAX_DIMS * sizeof *mask);
    if (nd < 0 || (!dims && nd > 0))
        return nbi_error(nd < 0 ? NB_INVALID_ARGUMENT : NB_NULL_ARGUMENT, "%s: %d dims given in "
                         "%s list; expected a list of 0 to %d dims (0: all)", op, nd,
                         dims ? "a" : "a NULL", NB_MAX_DIMS);
    if (nd == 0) {
        for (int32_t d = 0; d < t->ndim; d++)
            mask[d] = true;
        return NB_OK;
    }
    for (int32_t k = 0; k < nd; k++) {
        int32_t d = dims[k];
        if (nbi_check_dim(op, t, &d, false) != NB_OK)
            return nb_last_status();
        if (t->ndim == 0)
            continue;
        if (mask[d])
            return nbi_error(NB_INVALID_ARGUMENT, "%s: dim %d appears multiple times in the list "
                             "of dims", op, d);
        mask[d] = true;
    }
    return NB_OK;
}

/* The reduction kernel writes a keepdim-shaped output; without keepdim it is a view of it. */
static nb_tensor *drop_dims(nb_tensor *kept, const bool *mask, bool keepdim)
{
    if (!kept || keepdim)
        return kept;
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
    int32_t n = 0;
    for (int32_t d = 0; d < kept->ndim; d++)
        if (!mask[d]) {
            shape[n] = kept->shape[d];
            strides[n++] = kept->strides[d];
        }
    nb_tensor *v = nbi_tensor_view(kept, n, shape, strides, kept->offset);
    nb_release(kept);
    return v;
}

static nb_tensor *reduce_raw(nbi_op op, const nb_tensor *t, const bool *mask, nb_dtype out_dt,
                             const int64_t *iv, int32_t ni)
{
    int64_t shape[NB_MAX_DIMS];
    for (int32_t d = 0; d < t->ndim; d++)
        shape[d] = mask[d] ? 1 : t->shape[d];
    nb_tensor *out = nbi_tensor_new(t->storage->device, out_dt, t->ndim, shape);
    if (!out)
        return NULL;
    int64_t n_out = nbi_numel(t->ndim, shape);
    nb_status st = NB_OK;
    if (numel(t) == 0) { /* empty reduction: the identity, or an error for max/min */
        if (op == NBI_OP_sum || op == NBI_OP_prod) {
            double f[1] = {op == NBI_OP_prod};
            st = n_out ? nbi_launch(NBI_OP_fill, out_dt, out, NULL, 0, f, 1, NULL, 0) : NB_OK;
        } else if (n_out) {
            st = nbi_error(NB_INVALID_ARGUMENT, "%s: cannot reduce an empty tensor %s (the "
                           "operation has no identity)", nbi_op_name(op), NBI_SHAPE_STR(t));
        }
    } else {
        nb_tensor *in[1] = {(nb_tensor *)t};
        nb_dtype kd = (op == NBI_OP_argmax || op == NBI_OP_argmin) ? t->dtype : out_dt;
        st = nbi_launch(op, kd, out, in, 1, NULL, 0, iv, ni);
    }
    if (st != NB_OK) {
        nb_release(out);
        return NULL;
    }
    return out;
}

static nb_tensor *grad_expand(const nb_tensor *g, const nbi_node *node)
{
    /* g has the reduced shape (keepdim or not): unsqueeze and expand back to the input */
    const nb_shape *in = &node->in_shape[0];
    int64_t kshape[NB_MAX_DIMS];
    for (int32_t d = 0; d < in->ndim; d++)
        kshape[d] = (node->i[d] ? 1 : in->dims[d]);
    nb_shape ks = {.ndim = in->ndim};
    memcpy(ks.dims, kshape, sizeof kshape);
    nb_tensor *r = nb_reshape(g, ks);
    nb_tensor *e = r ? nb_expand(r, *in) : NULL;
    nb_release(r);
    return e;
}

static nb_status bw_sum(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    gi[0] = grad_expand(g, node);
    return done(gi, 1);
}

static nb_status bw_mean(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    nb_tensor *e = grad_expand(g, node);
    gi[0] = e ? nb_mul_scalar(e, node->f[0]) : NULL;
    nb_release(e);
    return done(gi, 1);
}

/* d prod / d x_i is the product of the others, also where x_i is 0 (PyTorch's rule): with p
 * the product of the non-zero elements and z the number of zeros in the slice, it is p / x_i
 * when z = 0, p at the zero when z = 1, and 0 otherwise. Written with ops: twice
 * differentiable (except across exact zeros, where PyTorch uses cumprod). */
static nb_status bw_prod(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, x);
    int32_t dims[NB_MAX_DIMS], nd = 0;
    for (int32_t d = 0; d < x->ndim; d++)
        if (node->i[d])
            dims[nd++] = d;
    nb_opts o = {x->dtype, x->storage->device->name};
    nb_tensor *zero = nb_zeros(NB_SHAPE_SCALAR, o), *one = nb_ones(NB_SHAPE_SCALAR, o);
    nb_tensor *isz = nb_eq_scalar(x, 0), *xs = isz ? nb_where(isz, one, x) : NULL;
    nb_tensor *p = xs ? (nd ? nb_prod(xs, dims, nd, true) : nb_retain(xs)) : NULL;
    nb_tensor *zf = isz ? nb_to_dtype(isz, x->dtype) : NULL;
    nb_tensor *nz = zf ? (nd ? nb_sum(zf, dims, nd, true) : nb_retain(zf)) : NULL;
    nb_tensor *none = nz ? nb_eq_scalar(nz, 0) : NULL, *single = nz ? nb_eq_scalar(nz, 1) : NULL;
    nb_tensor *two = nz ? nb_eq_scalar(nz, 2) : NULL;
    /* The product of the others, with its derivatives right to second order at exact zeros:
     * zs is the sum of x over the zero positions, 0 in value but carrying their gradient, so
     * with one zero the others get q * zs (d/d zero = q) and the zero gets p; with two zeros
     * each zero gets p * (zs - x) (d/d the other zero = p); with more, every term is 0. */
    nb_tensor *xz = isz ? nb_where(isz, x, zero) : NULL;
    nb_tensor *zs = xz ? (nd ? nb_sum(xz, dims, nd, true) : nb_retain(xz)) : NULL;
    nb_tensor *q = p ? nb_div(p, xs) : NULL, *qz = q && zs ? nb_mul(q, zs) : NULL;
    nb_tensor *others = zs ? nb_sub(zs, x) : NULL, *pz = p && others ? nb_mul(p, others) : NULL;
    nb_tensor *nz1 = single && qz ? nb_where(single, qz, zero) : NULL;
    nb_tensor *at_nonzero = none && q && nz1 ? nb_where(none, q, nz1) : NULL;
    nb_tensor *z2 = two && pz ? nb_where(two, pz, zero) : NULL;
    nb_tensor *at_zero = single && p && z2 ? nb_where(single, p, z2) : NULL;
    nb_tensor *w = at_nonzero && at_zero ? nb_where(isz, at_zero, at_nonzero) : NULL;
    nb_tensor *eg = grad_expand(g, node);
    gi[0] = w && eg ? nb_mul(eg, w) : NULL;
    nb_tensor *tmp[] = {zero, one, isz,    xs,  p,   zf,         nz,      none, single, two,
                        xz,   zs,  q,      qz,  others, pz,      nz1,     at_nonzero,   z2,
                        at_zero, w, eg};
    for (size_t k = 0; k < sizeof tmp / sizeof *tmp; k++)
        nb_release(tmp[k]);
    return done(gi, 1);
}

/* amax/amin: the gradient is shared evenly among the positions that reached the extreme. */
static nb_status bw_amax(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, x);
    SAVED(1, out);
    nb_tensor *eo = grad_expand(out, node), *mask = eo ? nb_eq(x, eo) : NULL;
    nb_tensor *mf = mask ? nb_to_dtype(mask, g->dtype) : NULL;
    int32_t dims[NB_MAX_DIMS], nd = 0;
    for (int32_t d = 0; d < x->ndim; d++)
        if (node->i[d])
            dims[nd++] = d;
    nb_tensor *cnt = mf ? (nd ? nb_sum(mf, dims, nd, true) : nb_retain(mf)) : NULL;
    nb_tensor *ec = cnt ? nb_expand(cnt, nb_tensor_shape(x)) : NULL;
    nb_tensor *eg = grad_expand(g, node);
    nb_tensor *w = ec ? nb_div(mf, ec) : NULL;
    gi[0] = w && eg ? nb_mul(eg, w) : NULL;
    nb_release(eo);
    nb_release(mask);
    nb_release(mf);
    nb_release(cnt);
    nb_release(ec);
    nb_release(eg);
    nb_release(w);
    return done(gi, 1);
}

typedef enum { RED_SUM, RED_MEAN, RED_PROD, RED_AMAX, RED_AMIN } red_kind;

static nb_tensor *reduce_impl(red_kind kind, const nb_tensor *t, const int32_t *dims, int32_t nd,
                              bool keepdim)
{
    static const char *names[] = {"sum", "mean", "prod", "amax", "amin"};
    bool mask[NB_MAX_DIMS];
    if (reduce_dims(names[kind], t, dims, nd, mask) != NB_OK)
        return NULL;
    nbi_op op = kind == RED_PROD ? NBI_OP_prod : kind == RED_AMAX ? NBI_OP_max
              : kind == RED_AMIN ? NBI_OP_min : NBI_OP_sum;
    nb_dtype dt = t->dtype;
    if ((kind == RED_SUM || kind == RED_PROD) && !nb_dtype_is_float(dt))
        dt = NB_DTYPE_I64;
    if (kind == RED_MEAN && !nb_dtype_is_float(dt)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "mean: could not infer output dtype; input dtype must be "
                  "floating point, got %s", nb_dtype_name(dt));
        return NULL;
    }
    nb_tensor *src = as_dtype(t, dt);
    nb_tensor *kept = src ? reduce_raw(op, src, mask, dt, NULL, 0) : NULL;
    int64_t count = 1;
    for (int32_t d = 0; d < t->ndim; d++)
        if (mask[d])
            count *= t->shape[d];
    if (kept && kind == RED_MEAN) {
        double f[1] = {count ? 1.0 / (double)count : NAN};
        nb_tensor *in[1] = {kept};
        if (nbi_launch(NBI_OP_mul_scalar, dt, kept, in, 1, f, 1, NULL, 0) != NB_OK) {
            nb_release(kept);
            kept = NULL;
        }
    }
    nb_tensor *out = drop_dims(kept, mask, keepdim);
    static const char *bw_names[][2] = {{"SumBackward0", "SumBackward1"},
                                        {"MeanBackward0", "MeanBackward1"},
                                        {"ProdBackward0", "ProdBackward1"},
                                        {"AmaxBackward0", "AmaxBackward0"},
                                        {"AminBackward0", "AminBackward0"}};
    static const nbi_backward_fn bws[] = {bw_sum, bw_mean, bw_prod, bw_amax, bw_amax};
    nb_tensor *in[1] = {(nb_tensor *)t};
    nbi_node *node = out ? nbi_record(out, bw_names[kind][dims && nd ? 1 : 0], bws[kind], in, 1)
                         : NULL;
    if (node) {
        for (int32_t d = 0; d < t->ndim; d++)
            node->i[d] = mask[d];
        node->f[0] = count ? 1.0 / (double)count : NAN;
        if (kind == RED_PROD || kind == RED_AMAX || kind == RED_AMIN) {
            nbi_save(node, t);
            nbi_save_output(node, out);
        }
    }
    nb_release(src);
    return out;
}

nb_tensor *nbi_reduce(nbi_op op, const nb_tensor *t, const int32_t *dims, int32_t nd, bool keepdim)
{
    red_kind k = op == NBI_OP_prod ? RED_PROD : op == NBI_OP_max ? RED_AMAX
               : op == NBI_OP_min ? RED_AMIN : RED_SUM;
    return reduce_impl(k, t, dims, nd, keepdim);
}

#define NB_DEFINE_REDUCE_(fname, kind)                                                     \
    nb_tensor *fname(const nb_tensor *t, const int32_t *dims, int32_t nd, bool keepdim)    \
    {                                                                                      \
        NBI_NULL_CHECK(#fname + 3, t);                                                     \
        return NBI_API(reduce_impl(kind, t, dims, nd, keepdim));                           \
    }
NB_DEFINE_REDUCE_(nb_sum, RED_SUM)
NB_DEFINE_REDUCE_(nb_mean, RED_MEAN)
NB_DEFINE_REDUCE_(nb_prod, RED_PROD)
NB_DEFINE_REDUCE_(nb_amax, RED_AMAX)
NB_DEFINE_REDUCE_(nb_amin, RED_AMIN)

/* torch.max(t) / torch.min(t): amax over every dim under PyTorch's own node name (the gradient
 * is shared evenly among tied extremes, as amax's). */
static nb_tensor *extreme_all(const nb_tensor *t, bool is_max)
{
    nb_tensor *out = reduce_impl(is_max ? RED_AMAX : RED_AMIN, t, NULL, 0, false);
    if (out && out->grad_fn)
        out->grad_fn->name = is_max ? "MaxBackward1" : "MinBackward1";
    return out;
}
nb_tensor *nb_max(const nb_tensor *t)
{
    NBI_NULL_CHECK("max", t);
    return NBI_API(extreme_all(t, true));
}
nb_tensor *nb_min(const nb_tensor *t)
{
    NBI_NULL_CHECK("min", t);
    return NBI_API(extreme_all(t, false));
}

/* var and std are composites of differentiable ops; norm has a node of its own. */
static nb_tensor *norm_value(const nb_tensor *t, double p, const int32_t *dims, int32_t nd,
                             bool keepdim);
static nb_tensor *var_impl(const nb_tensor *t, const int32_t *dims, int32_t nd, int64_t corr,
                           bool keepdim)
{
    bool mask[NB_MAX_DIMS];
    if (reduce_dims("var", t, dims, nd, mask) != NB_OK)
        return NULL;
    if (!nb_dtype_is_float(t->dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "var: expected a floating point tensor, got %s",
                  nb_dtype_name(t->dtype));
        return NULL;
    }
    int64_t count = 1;
    for (int32_t d = 0; d < t->ndim; d++)
        if (mask[d])
            count *= t->shape[d];
    nb_tensor *m = nb_mean(t, dims, nd, true), *c = m ? nb_sub(t, m) : NULL;
    nb_tensor *sq = c ? nb_mul(c, c) : NULL, *s = sq ? nb_sum(sq, dims, nd, keepdim) : NULL;
    double denom = (double)count - (double)corr; /* corr may be any int64: no overflow */
    nb_tensor *v = s ? nb_mul_scalar(s, denom > 0 ? 1.0 / denom : NAN) : NULL;
    nb_release(m);
    nb_release(c);
    nb_release(sq);
    nb_release(s);
    return v;
}

/* var and std are one node each, as in PyTorch (VarBackward0, StdBackward0 straight to their
 * input): d var / dx = 2 (x - mean) / (N - correction); d std = d var / (2 std), and 0 where
 * std is 0 (PyTorch's rule), with a safe denominator so higher orders see no inf or NaN.
 * node->f[0] is 1 / (N - correction) (NaN when that is not positive, as the value). */
static nb_status bw_var_std(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, x);
    SAVED(1, y); /* std's output; NULL for var */
    int32_t dims[NB_MAX_DIMS], nd = 0;
    for (int32_t d = 0; d < x->ndim; d++)
        if (node->i[d])
            dims[nd++] = d;
    nb_opts o = {x->dtype, x->storage->device->name};
    nb_tensor *m = nd ? nb_mean(x, dims, nd, true) : nb_retain(x), *c = m ? nb_sub(x, m) : NULL;
    nb_tensor *eg = grad_expand(g, node), *w = NULL, *zero = NULL, *one = NULL, *ey = NULL;
    nb_tensor *yz = NULL, *ys = NULL, *q = NULL;
    if (!y) {
        w = c ? nb_mul_scalar(c, 2 * node->f[0]) : NULL;
    } else {
        zero = nb_zeros(NB_SHAPE_SCALAR, o);
        one = nb_ones(NB_SHAPE_SCALAR, o);
        ey = grad_expand(y, node);
        yz = ey ? nb_eq_scalar(ey, 0) : NULL;
        ys = yz && one ? nb_where(yz, one, ey) : NULL;
        q = c && ys ? nb_div(c, ys) : NULL;
        nb_tensor *qs = q ? nb_mul_scalar(q, node->f[0]) : NULL;
        w = qs && yz && zero ? nb_where(yz, zero, qs) : NULL;
        nb_release(qs);
    }
    gi[0] = w && eg ? nb_mul(eg, w) : NULL;
    nb_tensor *tmp[] = {m, c, eg, w, zero, one, ey, yz, ys, q};
    for (size_t k = 0; k < sizeof tmp / sizeof *tmp; k++)
        nb_release(tmp[k]);
    return done(gi, 1);
}

static nb_tensor *var_std(bool is_std, const nb_tensor *t, const int32_t *dims, int32_t nd,
                          int64_t corr, bool keepdim)
{
    nb_tensor *in[1] = {(nb_tensor *)t};
    bool grad = nbi_grad_needed(in, 1);
    bool prev = nb_set_grad_enabled(false);
    nb_tensor *v = var_impl(t, dims, nd, corr, keepdim);
    nb_tensor *r = v && is_std ? unary_kernel(NBI_OP_sqrt, v, v->dtype, v->dtype, NULL, 0, NULL, 0,
                                              NULL)
                               : nb_retain(v);
    nb_release(v);
    nb_set_grad_enabled(prev);
    bool mask[NB_MAX_DIMS];
    nbi_node *node = r && grad && reduce_dims("var", t, dims, nd, mask) == NB_OK
                         ? nbi_record(r, is_std ? "StdBackward0" : "VarBackward0", bw_var_std,
                                      in, 1)
                         : NULL;
    if (node) {
        double count = 1;
        for (int32_t d = 0; d < t->ndim; d++) {
            node->i[d] = mask[d];
            if (mask[d])
                count *= (double)t->shape[d];
        }
        double denom = count - (double)corr;
        node->f[0] = denom > 0 ? 1.0 / denom : NAN;
        nbi_save(node, t);
        if (is_std)
            nbi_save_output(node, r);
    }
    return r;
}

nb_tensor *nb_var(const nb_tensor *t, const int32_t *dims, int32_t nd, int64_t corr, bool keepdim)
{
    NBI_NULL_CHECK("var", t);
    return NBI_API(var_std(false, t, dims, nd, corr, keepdim));
}

nb_tensor *nb_std(const nb_tensor *t, const int32_t *dims, int32_t nd, int64_t corr, bool keepdim)
{
    NBI_NULL_CHECK("std", t);
    return NBI_API(var_std(true, t, dims, nd, corr, keepdim));
}

/* torch.linalg.vector_norm's backward: g * sign(x) |x|^(p-1) / norm^(p-1); for p = inf the
 * gradient is shared among the elements of largest |x|. Where the norm is 0 the gradient is 0
 * (PyTorch's rule), with a safe denominator so that higher orders see no inf or NaN. */
static nb_status bw_norm(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, x);
    SAVED(1, r);
    double p = node->f[0];
    nb_opts o = {x->dtype, x->storage->device->name};
    nb_tensor *zero = nb_zeros(NB_SHAPE_SCALAR, o), *one = nb_ones(NB_SHAPE_SCALAR, o);
    nb_tensor *er = grad_expand(r, node), *eg = grad_expand(g, node);
    nb_tensor *rz = er ? nb_eq_scalar(er, 0) : NULL, *rs = rz ? nb_where(rz, one, er) : NULL;
    nb_tensor *sg = nb_sign(x), *w = NULL, *t1 = NULL, *t2 = NULL, *t3 = NULL;
    if (isinf(p)) {
        nb_tensor *ax = nb_abs(x), *hit = ax && er ? nb_eq(ax, er) : NULL;
        nb_tensor *hf = hit ? nb_to_dtype(hit, x->dtype) : NULL;
        int32_t dims[NB_MAX_DIMS], nd = 0;
        for (int32_t d = 0; d < x->ndim; d++)
            if (node->i[d])
                dims[nd++] = d;
        nb_tensor *cnt = hf ? (nd ? nb_sum(hf, dims, nd, true) : nb_retain(hf)) : NULL;
        t1 = hf && sg ? nb_mul(hf, sg) : NULL;
        w = t1 && cnt ? nb_div(t1, cnt) : NULL;
        nb_release(ax);
        nb_release(hit);
        nb_release(hf);
        nb_release(cnt);
    } else if (p == 2) {
        w = rs ? nb_div(x, rs) : NULL;
    } else if (p == 1) {
        w = nb_retain(sg);
    } else {
        nb_tensor *ax = nb_abs(x);
        t1 = ax ? nb_pow_scalar(ax, p - 1) : NULL;
        t2 = rs ? nb_pow_scalar(rs, p - 1) : NULL;
        t3 = t1 && sg ? nb_mul(sg, t1) : NULL;
        w = t3 && t2 ? nb_div(t3, t2) : NULL;
        nb_release(ax);
    }
    nb_tensor *gw = w && eg ? nb_mul(eg, w) : NULL;
    gi[0] = gw && rz ? nb_where(rz, zero, gw) : NULL;
    nb_tensor *tmp[] = {zero, one, er, eg, rz, rs, sg, w, t1, t2, t3, gw};
    for (size_t k = 0; k < sizeof tmp / sizeof *tmp; k++)
        nb_release(tmp[k]);
    return done(gi, 1);
}

static nb_tensor *norm_impl(const nb_tensor *t, double p, const int32_t *dims, int32_t nd,
                            bool keepdim)
{
    bool mask[NB_MAX_DIMS];
    if (reduce_dims("norm", t, dims, nd, mask) != NB_OK)
        return NULL;
    nb_tensor *in[1] = {(nb_tensor *)t};
    bool grad = nbi_grad_needed(in, 1);
    bool prev = nb_set_grad_enabled(false); /* one node for the whole norm, as in PyTorch */
    nb_tensor *r = norm_value(t, p, dims, nd, keepdim);
    nb_set_grad_enabled(prev);
    nbi_node *node = r && grad ? nbi_record(r, "LinalgVectorNormBackward0", bw_norm, in, 1)
                               : NULL;
    if (node) {
        for (int32_t d = 0; d < t->ndim; d++)
            node->i[d] = mask[d];
        node->f[0] = p;
        nbi_save(node, t);
        nbi_save_output(node, r);
    }
    return r;
}

static nb_tensor *norm_value(const nb_tensor *t, double p, const int32_t *dims, int32_t nd,
                             bool keepdim)
{
    if (!nb_dtype_is_float(t->dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "norm: expected a floating point tensor, got %s",
                  nb_dtype_name(t->dtype));
        return NULL;
    }
    if (!(p > 0)) {
        nbi_error(NB_INVALID_ARGUMENT, "norm: p must be positive (or INFINITY), got %g", p);
        return NULL;
    }
    nb_tensor *a = nb_abs(t);
    if (isinf(p)) {
        nb_tensor *r = a ? nb_amax(a, dims, nd, keepdim) : NULL;
        nb_release(a);
        return r;
    }
    nb_tensor *pw = a ? (p == 2 ? nb_mul(t, t) : nb_pow_scalar(a, p)) : NULL;
    nb_tensor *s = pw ? nb_sum(pw, dims, nd, keepdim) : NULL;
    nb_tensor *r = s ? (p == 2 ? nb_sqrt(s) : nb_pow_scalar(s, 1.0 / p)) : NULL;
    nb_release(a);
    nb_release(pw);
    nb_release(s);
    return r;
}

nb_tensor *nb_norm(const nb_tensor *t, double p, const int32_t *dims, int32_t nd, bool keepdim)
{
    NBI_NULL_CHECK("norm", t);
    return NBI_API(norm_impl(t, p, dims, nd, keepdim));
}

/* ---- arg reductions and max/min over a dim ---- */

static nb_tensor *arg_impl(nbi_op op, const nb_tensor *t, int32_t dim, bool keepdim)
{
    const char *name = nbi_op_name(op);
    if (numel(t) == 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: cannot take the %s of an empty tensor", name, name);
        return NULL;
    }
    if (dim == NB_ALL_DIMS || t->ndim == 0) { /* over the flattened tensor */
        nb_tensor *c = nb_contiguous(t);
        int64_t n = numel(t), one = 1;
        nb_tensor *flat = c ? nbi_tensor_view(c, 1, &n, &one, c->offset) : NULL;
        nb_release(c);
        nb_tensor *r = flat ? arg_impl(op, flat, 0, false) : NULL;
        nb_release(flat);
        if (r && keepdim && t->ndim) {
            int64_t ones[NB_MAX_DIMS] = {1, 1, 1, 1, 1, 1, 1, 1}, st[NB_MAX_DIMS] = {0};
            nb_tensor *v = nbi_tensor_view(r, t->ndim, ones, st, r->offset);
            nb_release(r);
            r = v;
        }
        return r;
    }
    if (nbi_check_dim(name, t, &dim, false) != NB_OK)
        return NULL;
    bool mask[NB_MAX_DIMS] = {0};
    mask[dim] = true;
    int64_t iv[1] = {dim};
    return drop_dims(reduce_raw(op, t, mask, NB_DTYPE_I64, iv, 1), mask, keepdim);
}

nb_tensor *nb_argmax(const nb_tensor *t, int32_t dim, bool keepdim)
{
    NBI_NULL_CHECK("argmax", t);
    return NBI_API(arg_impl(NBI_OP_argmax, t, dim, keepdim));
}

nb_tensor *nb_argmin(const nb_tensor *t, int32_t dim, bool keepdim)
{
    NBI_NULL_CHECK("argmin", t);
    return NBI_API(arg_impl(NBI_OP_argmin, t, dim, keepdim));
}

/* The gradient goes to the position of the extreme: a zero tensor with g scattered there
 * (scatter_add is differentiable in g, so this is twice differentiable). */
static nb_status bw_max_dim(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, idx); /* keepdim indices */
    const nb_shape *in = &node->in_shape[0];
    int32_t dim = (int32_t)node->i[0];
    nb_tensor *z = nb_zeros(*in, (nb_opts){g->dtype, g->storage->device->name});
    if (in->ndim == 0) {
        gi[0] = z ? nb_add(z, g) : NULL;
    } else {
        nb_tensor *gk = g->ndim == in->ndim ? nb_retain(g) : nb_unsqueeze(g, dim);
        gi[0] = z && gk ? nb_scatter_add(z, dim, idx, gk) : NULL;
        nb_release(gk);
    }
    nb_release(z);
    return done(gi, 1);
}

static nb_status max_dim_impl(bool is_max, const nb_tensor *t, int32_t dim, bool keepdim,
                              nb_tensor **values, nb_tensor **indices)
{
    const char *name = is_max ? "max" : "min";
    if (values)
        *values = NULL;
    if (indices)
        *indices = NULL;
    if (!t)
        return nbi_error(NB_NULL_ARGUMENT, "%s: tensor is NULL", name);
    if (nbi_check_dim(name, t, &dim, false) != NB_OK)
        return nb_last_status();
    if (t->ndim == 0)
        dim = 0;
    nb_tensor *idx = arg_impl(is_max ? NBI_OP_argmax : NBI_OP_argmin, t, t->ndim ? dim : NB_ALL_DIMS, true);
    if (!idx)
        return nb_last_status();
    nb_tensor *val = NULL;
    nb_tensor *tin[1] = {(nb_tensor *)t};
    bool grad = values && nbi_grad_needed(tin, 1);
    if (values) {
        bool prev = nb_set_grad_enabled(false); /* one node below, as in PyTorch */
        nb_tensor *v = t->ndim ? nb_gather(t, dim, idx) : nb_clone(t);
        nb_set_grad_enabled(prev);
        bool mask[NB_MAX_DIMS] = {0};
        mask[dim] = true;
        if (v && !keepdim && t->ndim) {
            nb_tensor *d = drop_dims(nbi_tensor_alias(v), mask, false);
            /* give the squeezed view v's history */
            if (d && v->grad_fn) {
                nb_release(d);
                d = nb_squeeze(v, dim);
            }
            nb_release(v);
            v = d;
        }
        val = v;
        /* torch.max(x, dim) values: MaxBackward0 (MinBackward0), straight to the input */
        nbi_node *node = val && grad ? nbi_record(val, is_max ? "MaxBackward0" : "MinBackward0",
                                                  bw_max_dim, tin, 1)
                                     : NULL;
        if (node) {
            node->i[0] = dim;
            nbi_save(node, idx);
        }
        if (!val) {
            nb_release(idx);
            return nb_last_status();
        }
    }
    if (values)
        *values = val;
    if (indices) {
        bool mask[NB_MAX_DIMS] = {0};
        mask[dim] = true;
        *indices = t->ndim ? drop_dims(idx, mask, keepdim) : idx;
    } else {
        nb_release(idx);
    }
    return NB_OK;
}

/* Hands both results of max_dim/min_dim to the application's scope. */
static nb_status track_pair(nb_tensor **values, nb_tensor **indices)
{
    if (nbi_api_depth != 0)
        return NB_OK;
    nb_tensor **out[2] = {values, indices};
    nb_status st = NB_OK;
    for (int k = 0; k < 2; k++)
        if (out[k] && !nbi_scope_track(*out[k])) {
            *out[k] = NULL;
            st = NB_OUT_OF_MEMORY;
        }
    return st;
}

nb_status nb_max_dim(const nb_tensor *t, int32_t dim, bool keepdim, nb_tensor **values,
                     nb_tensor **indices)
{
    nbi_api_depth++;
    nb_status st = max_dim_impl(true, t, dim, keepdim, values, indices);
    nbi_api_depth--;
    return st == NB_OK ? track_pair(values, indices) : st;
}

nb_status nb_min_dim(const nb_tensor *t, int32_t dim, bool keepdim, nb_tensor **values,
                     nb_tensor **indices)
{
    nbi_api_depth++;
    nb_status st = max_dim_impl(false, t, dim, keepdim, values, indices);
    nbi_api_depth--;
    return st == NB_OK ? track_pair(values, indices) : st;
}

/* ============================== linear algebra ============================== */

/* Runs the batched kernel on 3-d shadows: out (B, n, m) = alpha * a (B, n, k) @ b (B, k, m)
 * + beta * out. */
static nb_status matmul3(nb_tensor *out, const nb_tensor *a, const nb_tensor *b, double alpha,
                         double beta)
{
    nb_tensor sa, sb, so, *in[2] = {&sa, &sb};
    const nb_tensor *src[3] = {a, b, out};
    nb_tensor *dst[3] = {&sa, &sb, &so};
    for (int k = 0; k < 3; k++) {
        const nb_tensor *t = src[k];
        int64_t shape[3], strides[3];
        if (t->ndim == 2) {
            shape[0] = 1;
            strides[0] = 0;
            shape[1] = t->shape[0];
            shape[2] = t->shape[1];
            strides[1] = t->strides[0];
            strides[2] = t->strides[1];
        } else {
            memcpy(shape, t->shape, sizeof shape);
            memcpy(strides, t->strides, sizeof strides);
        }
        shadow(dst[k], t, 3, shape);
        memcpy(dst[k]->strides, strides, sizeof strides);
    }
    if (so.shape[0] == 1)
        sa.strides[0] = sb.strides[0] = so.strides[0] = 0;
    double f[2] = {alpha, beta};
    if (numel(&so) == 0)
        return NB_OK;
    if (sa.shape[2] == 0) { /* k == 0: the product is zero */
        double z[1] = {0};
        return beta == 0 ? nbi_launch(NBI_OP_fill, out->dtype, out, NULL, 0, z, 1, NULL, 0)
                         : nbi_launch(NBI_OP_mul_scalar, out->dtype, out, (nb_tensor *[]){out},
                                      1, (double[]){beta}, 1, NULL, 0);
    }
    return nbi_launch(NBI_OP_matmul, out->dtype, &so, in, 2, f, 2, NULL, 0);
}

static nb_status check_matmul_args(const char *op, const nb_tensor *a, const nb_tensor *b)
{
    if (same_device(op, a, b) != NB_OK)
        return nb_last_status();
    if (a->dtype != b->dtype)
        return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: expected both operands to have the same "
                         "dtype, got %s and %s", op, nb_dtype_name(a->dtype),
                         nb_dtype_name(b->dtype));
    return NB_OK;
}

static nb_status bw_mm(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, a);
    SAVED(1, b);
    int32_t r = g->ndim;
    if (node->next[0]) {
        nb_tensor *bt = nb_transpose(b, r - 2, r - 1);
        gi[0] = bt ? nb_matmul(g, bt) : NULL;
        nb_release(bt);
    }
    if (node->next[1]) {
        nb_tensor *at = nb_transpose(a, r - 2, r - 1);
        gi[1] = at ? nb_matmul(at, g) : NULL;
        nb_release(at);
    }
    if (node->f[0] != 1)
        for (int k = 0; k < 2; k++)
            if (gi[k]) {
                nb_tensor *s = nb_mul_scalar(gi[k], node->f[0]);
                nb_release(gi[k]);
                gi[k] = s;
            }
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

static nb_tensor *mm_impl(const char *op, const nb_tensor *a, const nb_tensor *b, int32_t rank)
{
    if (check_matmul_args(op, a, b) != NB_OK)
        return NULL;
    if (a->ndim != rank || b->ndim != rank) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: expected %d-d tensors, got %s and %s", op, rank,
                  NBI_SHAPE_STR(a), NBI_SHAPE_STR(b));
        return NULL;
    }
    int32_t r = rank;
    if (a->shape[r - 1] != b->shape[r - 2] || (rank == 3 && a->shape[0] != b->shape[0])) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: shapes %s and %s cannot be multiplied (%lldx%lld and "
                  "%lldx%lld)", op, NBI_SHAPE_STR(a), NBI_SHAPE_STR(b),
                  (long long)a->shape[r - 2], (long long)a->shape[r - 1],
                  (long long)b->shape[r - 2], (long long)b->shape[r - 1]);
        return NULL;
    }
    int64_t shape[3] = {a->shape[0], a->shape[1], b->shape[r - 1]};
    if (rank == 2) {
        shape[0] = a->shape[0];
        shape[1] = b->shape[1];
    }
    nb_tensor *out = nbi_tensor_new(a->storage->device, a->dtype, rank, shape);
    if (out && matmul3(out, a, b, 1, 0) != NB_OK) {
        nb_release(out);
        return NULL;
    }
    nb_tensor *in[2] = {(nb_tensor *)a, (nb_tensor *)b};
    nbi_node *node = out ? nbi_record(out, rank == 2 ? "MmBackward0" : "BmmBackward0", bw_mm, in, 2)
                         : NULL;
    if (node) {
        nbi_save(node, a);
        nbi_save(node, b);
        node->f[0] = 1;
    }
    return out;
}

nb_tensor *nb_mm(const nb_tensor *a, const nb_tensor *b)
{
    NBI_NULL_CHECK("mm", a, b);
    return NBI_API(mm_impl("mm", a, b, 2));
}

nb_tensor *nb_bmm(const nb_tensor *a, const nb_tensor *b)
{
    NBI_NULL_CHECK("bmm", a, b);
    return NBI_API(mm_impl("bmm", a, b, 3));
}

/* torch.matmul: 1-d operands gain a dim that is removed afterwards; batch dims broadcast. */
static nb_tensor *matmul_impl(const nb_tensor *a, const nb_tensor *b)
{
    if (check_matmul_args("matmul", a, b) != NB_OK)
        return NULL;
    if (a->ndim == 0 || b->ndim == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "matmul: both arguments need at least 1 dimension, got %s "
                  "and %s", NBI_SHAPE_STR(a), NBI_SHAPE_STR(b));
        return NULL;
    }
    if (a->ndim == 2 && b->ndim == 2)
        return mm_impl("matmul", a, b, 2);
    nb_tensor *a2 = a->ndim == 1 ? nb_unsqueeze(a, 0) : nb_retain((nb_tensor *)a);
    nb_tensor *b2 = b->ndim == 1 ? nb_unsqueeze(b, 1) : nb_retain((nb_tensor *)b);
    nb_tensor *out = NULL;
    if (!a2 || !b2)
        goto done;
    int64_t n = a2->shape[a2->ndim - 2], k = a2->shape[a2->ndim - 1];
    int64_t k2 = b2->shape[b2->ndim - 2], m = b2->shape[b2->ndim - 1];
    if (k != k2) {
        nbi_error(NB_SHAPE_MISMATCH, "matmul: shapes %s and %s cannot be multiplied (%lldx%lld "
                  "and %lldx%lld)", NBI_SHAPE_STR(a), NBI_SHAPE_STR(b), (long long)n,
                  (long long)k, (long long)k2, (long long)m);
        goto done;
    }
    /* broadcast the batch dims */
    nb_tensor ba, bb;
    shadow(&ba, a2, a2->ndim - 2, a2->shape);
    shadow(&bb, b2, b2->ndim - 2, b2->shape);
    int32_t nb;
    int64_t batch[NB_MAX_DIMS];
    if (broadcast_shapes("matmul", &ba, &bb, &nb, batch) != NB_OK)
        goto done;
    if (nb > NB_MAX_DIMS - 2) {
        nbi_error(NB_INVALID_ARGUMENT, "matmul: too many dimensions");
        goto done;
    }
    int64_t B = nbi_numel(nb, batch);
    nb_shape ea = {.ndim = nb + 2}, eb = {.ndim = nb + 2}, a3 = NB_SHAPE(B, n, k),
             b3 = NB_SHAPE(B, k, m), os = {.ndim = nb + 2};
    memcpy(ea.dims, batch, (size_t)nb * 8);
    memcpy(eb.dims, batch, (size_t)nb * 8);
    memcpy(os.dims, batch, (size_t)nb * 8);
    ea.dims[nb] = n, ea.dims[nb + 1] = k;
    eb.dims[nb] = k, eb.dims[nb + 1] = m;
    os.dims[nb] = n, os.dims[nb + 1] = m;
    nb_tensor *xa = nb_expand(a2, ea), *xb = nb_expand(b2, eb);
    nb_tensor *ra = xa ? nb_reshape(xa, a3) : NULL, *rb = xb ? nb_reshape(xb, b3) : NULL;
    nb_tensor *o3 = ra && rb ? mm_impl("matmul", ra, rb, 3) : NULL;
    nb_tensor *o = o3 ? nb_reshape(o3, os) : NULL;
    nb_release(xa);
    nb_release(xb);
    nb_release(ra);
    nb_release(rb);
    nb_release(o3);
    if (o && a->ndim == 1) {
        nb_tensor *s = nb_squeeze(o, -2);
        nb_release(o);
        o = s;
    }
    if (o && b->ndim == 1) {
        nb_tensor *s = nb_squeeze(o, -1);
        nb_release(o);
        o = s;
    }
    out = o;
done:
    nb_release(a2);
    nb_release(b2);
    return out;
}

nb_tensor *nb_matmul(const nb_tensor *a, const nb_tensor *b)
{
    NBI_NULL_CHECK("matmul", a, b);
    return NBI_API(matmul_impl(a, b));
}

static nb_status bw_addmm(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    nb_status st = NB_OK;
    if (node->next[1] || node->next[2]) {
        nbi_node sub = *node; /* the mm part: inputs 1 and 2 */
        nbi_node *next[2] = {node->next[1], node->next[2]};
        sub.next = next;
        sub.n_in = 2;
        st = bw_mm(&sub, g, gi + 1);
    }
    if (st == NB_OK && node->next[0])
        gi[0] = node->f[1] == 1 ? nb_retain(g) : nb_mul_scalar(g, node->f[1]);
    return st == NB_OK && nbi_error_pending() ? nb_last_status() : st;
}

static nb_tensor *addmm_impl(const nb_tensor *c, const nb_tensor *a, const nb_tensor *b,
                             double beta, double alpha)
{
    if (check_matmul_args("addmm", a, b) != NB_OK || same_device("addmm", a, c) != NB_OK)
        return NULL;
    if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[0]) {
        nbi_error(NB_SHAPE_MISMATCH, "addmm: shapes %s and %s cannot be multiplied",
                  NBI_SHAPE_STR(a), NBI_SHAPE_STR(b));
        return NULL;
    }
    int64_t shape[2] = {a->shape[0], b->shape[1]};
    nb_tensor sc;
    int32_t nd;
    int64_t bs[NB_MAX_DIMS];
    shadow(&sc, a, 2, shape);
    if (broadcast_shapes("addmm", c, &sc, &nd, bs) != NB_OK || !same_shape(&sc, nd, bs)) {
        if (!nbi_error_pending())
            nbi_error(NB_SHAPE_MISMATCH, "addmm: input %s cannot be broadcast to %s",
                      NBI_SHAPE_STR(c), nbi_shape_cstr(2, shape));
        return NULL;
    }
    nb_tensor *out = nbi_tensor_new(a->storage->device, a->dtype, 2, shape);
    nb_tensor *cc = out ? as_dtype(c, a->dtype) : NULL;
    nb_status st = cc ? NB_OK : NB_OUT_OF_MEMORY;
    if (cc) {
        nb_tensor s2, *in[1] = {&s2};
        shadow(&s2, cc, 2, shape);
        st = numel(out) ? nbi_launch(NBI_OP_copy, out->dtype, out, in, 1, NULL, 0, NULL, 0) : NB_OK;
    }
    if (st == NB_OK)
        st = matmul3(out, a, b, alpha, beta);
    nb_release(cc);
    if (st != NB_OK) {
        nb_release(out);
        return NULL;
    }
    nb_tensor *ins[3] = {(nb_tensor *)c, (nb_tensor *)a, (nb_tensor *)b};
    nbi_node *node = nbi_record(out, "AddmmBackward0", bw_addmm, ins, 3);
    if (node) {
        nbi_save(node, a);
        nbi_save(node, b);
        node->f[0] = alpha;
        node->f[1] = beta;
    }
    return out;
}

nb_tensor *nb_addmm(const nb_tensor *c, const nb_tensor *a, const nb_tensor *b, double beta,
                    double alpha)
{
    NBI_NULL_CHECK("addmm", c, a, b);
    return NBI_API(addmm_impl(c, a, b, beta, alpha));
}

/* ============================== indexing ============================== */

static nb_status check_index(const char *op, const nb_tensor *t, const nb_tensor *index)
{
    if (same_device(op, t, index) != NB_OK)
        return nb_last_status();
    if (index->dtype != NB_DTYPE_I64)
        return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: index must be int64, got %s", op,
                         nb_dtype_name(index->dtype));
    return NB_OK;
}

static nb_status bw_gather(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, idx);
    nb_tensor *z = nb_zeros(node->in_shape[0], (nb_opts){g->dtype, g->storage->device->name});
    gi[0] = z ? nb_scatter_add(z, (int32_t)node->i[0], idx, g) : NULL;
    nb_release(z);
    return done(gi, 1);
}

static nb_tensor *gather_impl(const char *name, const nb_tensor *t, int32_t dim,
                              const nb_tensor *index)
{
    if (check_index(name, t, index) != NB_OK || nbi_check_dim(name, t, &dim, false) != NB_OK)
        return NULL;
    if (index->ndim != t->ndim) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: index %s must have as many dims as the input %s", name,
                  NBI_SHAPE_STR(index), NBI_SHAPE_STR(t));
        return NULL;
    }
    for (int32_t d = 0; d < t->ndim; d++)
        if (d != dim && index->shape[d] > t->shape[d]) {
            nbi_error(NB_SHAPE_MISMATCH, "%s: index %s is larger than input %s at dim %d", name,
                      NBI_SHAPE_STR(index), NBI_SHAPE_STR(t), d);
            return NULL;
        }
    nb_tensor *out = nbi_tensor_new(t->storage->device, t->dtype, index->ndim, index->shape);
    if (!out)
        return NULL;
    /* the kernel reads the input at the index's shape on the non-gathered dims */
    nb_tensor st = {0}, *in[2] = {&st, (nb_tensor *)index};
    shadow(&st, t, t->ndim, t->shape);
    for (int32_t d = 0; d < t->ndim; d++)
        if (d != dim)
            st.shape[d] = index->shape[d];
    int64_t iv[1] = {dim};
    if (numel(out) && nbi_launch(NBI_OP_gather, t->dtype, out, in, 2, NULL, 0, iv, 1) != NB_OK) {
        nb_release(out);
        return NULL;
    }
    nb_tensor *ins[2] = {(nb_tensor *)t, NULL};
    nbi_node *node = nbi_record(out, strcmp(name, "gather") ? "IndexSelectBackward0"
                                                            : "GatherBackward0",
                                bw_gather, ins, 2);
    if (node) {
        nbi_save(node, index);
        node->i[0] = dim;
    }
    return out;
}

nb_tensor *nb_gather(const nb_tensor *t, int32_t dim, const nb_tensor *index)
{
    NBI_NULL_CHECK("gather", t, index);
    return NBI_API(gather_impl("gather", t, dim, index));
}

nb_tensor *nb_index_select(const nb_tensor *t, int32_t dim, const nb_tensor *index)
{
    NBI_NULL_CHECK("index_select", t, index);
    if (nbi_check_dim("index_select", t, &dim, false) != NB_OK)
        return NULL;
    if (index->ndim > 1) {
        nbi_error(NB_SHAPE_MISMATCH, "index_select: index must be 0-d or 1-d, got %s",
                  NBI_SHAPE_STR(index));
        return NULL;
    }
    if (t->ndim == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "index_select: input must have at least one dimension");
        return NULL;
    }
    /* a stride-0 expansion of the index turns index_select into gather */
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS] = {0};
    memcpy(shape, t->shape, sizeof shape);
    shape[dim] = index->ndim ? index->shape[0] : 1;
    strides[dim] = index->ndim ? index->strides[0] : 0;
    nb_tensor *ex = nbi_tensor_view(index, t->ndim, shape, strides, index->offset);
    nb_tensor *r = ex ? gather_impl("index_select", t, dim, ex) : NULL;
    nb_release(ex);
    return NBI_API(r);
}

static nb_status bw_scatter_add(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    SAVED(0, idx);
    gi[0] = node->next[0] ? nb_retain(g) : NULL;
    gi[2] = node->next[2] ? nb_gather(g, (int32_t)node->i[0], idx) : NULL;
    return nbi_error_pending() ? nb_last_status() : NB_OK;
}

static nb_tensor *scatter_add_impl(const nb_tensor *t, int32_t dim, const nb_tensor *index,
                                   const nb_tensor *src)
{
    if (check_index("scatter_add", t, index) != NB_OK || same_device("scatter_add", t, src) ||
        nbi_check_dim("scatter_add", t, &dim, false) != NB_OK)
        return NULL;
    if (index->ndim != t->ndim || src->ndim != t->ndim) {
        nbi_error(NB_SHAPE_MISMATCH, "scatter_add: index %s and src %s must have the dims of the "
                  "input %s", NBI_SHAPE_STR(index), NBI_SHAPE_STR(src), NBI_SHAPE_STR(t));
        return NULL;
    }
    for (int32_t d = 0; d < t->ndim; d++)
        if (index->shape[d] > src->shape[d] || (d != dim && index->shape[d] > t->shape[d])) {
            nbi_error(NB_SHAPE_MISMATCH, "scatter_add: index %s is larger than src %s or input "
                      "%s at dim %d", NBI_SHAPE_STR(index), NBI_SHAPE_STR(src), NBI_SHAPE_STR(t), d);
            return NULL;
        }
    nb_tensor *out = nbi_cast(t, t->dtype), *cs = out ? as_dtype(src, t->dtype) : NULL;
    if (!cs) {
        nb_release(out);
        return NULL;
    }
    nb_tensor so = {0}, ss = {0}, *in[2] = {(nb_tensor *)index, &ss};
    shadow(&so, out, out->ndim, out->shape);
    shadow(&ss, cs, cs->ndim, cs->shape);
    for (int32_t d = 0; d < t->ndim; d++) {
        ss.shape[d] = index->shape[d];
        if (d != dim)
            so.shape[d] = index->shape[d];
    }
    int64_t iv[1] = {dim};
    nb_status st = numel(index) ? nbi_launch(NBI_OP_scatter_add, t->dtype, &so, in, 2, NULL, 0, iv, 1)
                                : NB_OK;
    nb_release(cs);
    if (st != NB_OK) {
        nb_release(out);
        return NULL;
    }
    nb_tensor *ins[3] = {(nb_tensor *)t, NULL, (nb_tensor *)src};
    nbi_node *node = nbi_record(out, "ScatterAddBackward0", bw_scatter_add, ins, 3);
    if (node) {
        nbi_save(node, index);
        node->i[0] = dim;
    }
    return out;
}

nb_tensor *nb_scatter_add(const nb_tensor *t, int32_t dim, const nb_tensor *index,
                          const nb_tensor *src)
{
    NBI_NULL_CHECK("scatter_add", t, index, src);
    return NBI_API(scatter_add_impl(t, dim, index, src));
}

static nb_status bw_cat(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    int32_t dim = (int32_t)node->i[0];
    int64_t off = 0;
    for (int32_t k = 0; k < node->n_in; k++) {
        int64_t len = node->in_shape[k].ndim ? node->in_shape[k].dims[dim] : 0;
        if (node->next[k] && !(gi[k] = nb_narrow(g, dim, off, len)))
            return nb_last_status();
        off += len;
    }
    return NB_OK;
}

static nb_tensor *cat_impl(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    if (!ts || n <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "cat: expected a non-empty list of tensors, got %d", n);
        return NULL;
    }
    const nb_tensor *ref = NULL; /* PyTorch skips 1-d empty tensors in cat */
    for (int32_t k = 0; k < n; k++) {
        if (!ts[k]) {
            if (!nbi_error_pending())
                nbi_error(NB_NULL_ARGUMENT, "cat: tensor %d is NULL", k);
            return NULL;
        }
        if (!ref && !(ts[k]->ndim == 1 && ts[k]->shape[0] == 0))
            ref = ts[k];
    }
    if (!ref)
        ref = ts[0];
    if (ref->ndim == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "cat: zero-dimensional tensor (at position 0) cannot be "
                  "concatenated");
        return NULL;
    }
    if (nbi_check_dim("cat", ref, &dim, false) != NB_OK)
        return NULL;
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, ref->shape, sizeof shape);
    shape[dim] = 0;
    nb_dtype dt = ref->dtype;
    for (int32_t k = 0; k < n; k++) {
        const nb_tensor *t = ts[k];
        if (t->ndim == 1 && t->shape[0] == 0 && ref->ndim != 1)
            continue;
        if (same_device("cat", ref, t) != NB_OK)
            return NULL;
        if (t->ndim != ref->ndim) {
            nbi_error(NB_SHAPE_MISMATCH, "cat: tensors must have the same number of dimensions: "
                      "got %d and %d (tensor %d)", ref->ndim, t->ndim, k);
            return NULL;
        }
        for (int32_t d = 0; d < t->ndim; d++)
            if (d != dim && t->shape[d] != ref->shape[d]) {
                nbi_error(NB_SHAPE_MISMATCH, "cat: sizes of tensors must match except in "
                          "dimension %d: expected size %lld but got size %lld for tensor %d at "
                          "dim %d", dim, (long long)ref->shape[d], (long long)t->shape[d], k, d);
                return NULL;
            }
        if (nbi_add_i64("cat", "size", shape[dim], t->shape[dim], &shape[dim]) != NB_OK)
            return NULL;
        dt = nb_promote_types(dt, t->dtype);
    }
    nb_tensor *out = nbi_tensor_new(ref->storage->device, dt, ref->ndim, shape);
    if (!out)
        return NULL;
    int64_t off = 0;
    for (int32_t k = 0; k < n; k++) {
        const nb_tensor *t = ts[k];
        if (t->ndim != ref->ndim)
            continue;
        nb_tensor part;
        shadow(&part, out, out->ndim, out->shape);
        memcpy(part.strides, out->strides, sizeof part.strides);
        part.shape[dim] = t->shape[dim];
        part.offset = out->offset + off * out->strides[dim];
        nb_tensor *in[1] = {(nb_tensor *)t};
        if (numel(t) && nbi_launch(NBI_OP_copy, dt, &part, in, 1, NULL, 0, NULL, 0) != NB_OK) {
            nb_release(out);
            return NULL;
        }
        off += t->shape[dim];
    }
    nbi_node *node = nbi_record(out, "CatBackward0", bw_cat, ts, n);
    if (node)
        node->i[0] = dim;
    return out;
}

nb_tensor *nb_cat(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    return NBI_API(cat_impl(ts, n, dim));
}

static nb_tensor *stack_impl(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    if (!ts || n <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "stack: expected a non-empty list of tensors, got %d", n);
        return NULL;
    }
    nb_tensor **u = nbi_calloc((size_t)n, sizeof *u);
    if (!u) {
        nbi_error(NB_OUT_OF_MEMORY, "stack: out of memory");
        return NULL;
    }
    nb_tensor *r = NULL;
    for (int32_t k = 0; k < n; k++) {
        if (!ts[k]) {
            if (!nbi_error_pending())
                nbi_error(NB_NULL_ARGUMENT, "stack: tensor %d is NULL", k);
            goto done;
        }
        if (ts[k]->ndim != ts[0]->ndim || memcmp(ts[k]->shape, ts[0]->shape, (size_t)ts[0]->ndim * 8)) {
            nbi_error(NB_SHAPE_MISMATCH, "stack: expects each tensor to be equal size, but got "
                      "%s at entry 0 and %s at entry %d", NBI_SHAPE_STR(ts[0]),
                      NBI_SHAPE_STR(ts[k]), k);
            goto done;
        }
        if (!(u[k] = nb_unsqueeze(ts[k], dim)))
            goto done;
    }
    r = cat_impl(u, n, dim < 0 ? dim : dim);
done:
    for (int32_t k = 0; k < n; k++)
        nb_release(u[k]);
    nbi_free(u);
    return r;
}

/* Input k's gradient is slice k of g along the new dim. */
static nb_status bw_stack(nbi_node *node, nb_tensor *g, nb_tensor **gi)
{
    for (int32_t k = 0; k < node->n_in; k++)
        if (node->next[k] && !(gi[k] = nb_select(g, (int32_t)node->i[0], k)))
            return nb_last_status();
    return NB_OK;
}

nb_tensor *nb_stack(nb_tensor *const *ts, int32_t n, int32_t dim)
{
    nbi_api_depth++;
    bool grad = ts && n > 0 && nbi_grad_needed(ts, n);
    bool prev = nb_set_grad_enabled(false); /* one StackBackward0 node, as in PyTorch */
    nb_tensor *r = stack_impl(ts, n, dim);
    nb_set_grad_enabled(prev);
    nbi_node *node = r && grad ? nbi_record(r, "StackBackward0", bw_stack, ts, n) : NULL;
    if (node)
        node->i[0] = dim < 0 ? dim + r->ndim : dim;
    nbi_api_depth--;
    return NBI_API(r);
}
