/* ops_elementwise.c - unary, binary and tensor-scalar ops with broadcasting and PyTorch's type
 * promotion, comparisons and logical ops, clamp, where and fills; each differentiable op
 * records its node here with its backward rule next to it. */
#include "ops_internal.h"

#include <math.h>
#include <string.h>

/* ======================= backward rules for elementwise ops ======================= */

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
    drop_cast(ca, a);
    drop_cast(cb, b);
    return out;
}

nb_tensor *nbi_binary(nbi_op op, const nb_tensor *a, const nb_tensor *b)
{
    return binary_into(op, a, b, NULL);
}

/* In place: without grad the kernel writes into a; with grad the result is computed out of
 * place and a takes over its data and its history (autograd_inplace.c: nbi_inplace_commit). */
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
    drop_cast(ca, a);
    return out;
}

nb_tensor *nbi_unary_kernel(nbi_op op, const nb_tensor *a, nb_dtype dt, nb_dtype out_dt,
                            const double *f, int32_t nf, const int64_t *iv, int32_t ni,
                            nb_tensor *into)
{
    return unary_kernel(op, a, dt, out_dt, f, nf, iv, ni, into);
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
    if ((op == NBI_OP_floor || op == NBI_OP_ceil || op == NBI_OP_round) &&
        !nb_dtype_is_float(dt)) {
        /* Integers are already whole: PyTorch returns a copy in the same dtype (and refuses
         * bool). Done here, not by a kernel, so every device gives it without an integer
         * kernel of its own (opencl has none). */
        if (dt == NB_DTYPE_BOOL) {
            nbi_error(NB_DTYPE_UNSUPPORTED, "%s: not implemented for bool tensors",
                      nbi_op_name(op));
            return NULL;
        }
        return into ? nb_retain(into) : nb_clone(a);
    }
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
        NBI_AUTOCAST(nbi_autocast_kind_of(NBI_OP_##name), &a, &b);                         \
        NBI_NULL_CHECK(#name, a, b);                                                       \
        return NBI_API(binary_into(NBI_OP_##name, a, b, NULL));                            \
    }                                                                                      \
    nb_status nb_##name##_(nb_tensor *a, const nb_tensor *b)                               \
    {                                                                                      \
        return NBI_API_CALL(binary_inplace(NBI_OP_##name, a, b));                        \
    }
NB_BINARY_OPS_(NB_DEFINE_BINARY_)

/* The dtype a tensor-scalar comparison runs in. For int32, uint8 and bool every value is exact
 * in a double, so every plugin's kernel gives what comparing a float64 copy gives, and they
 * run in their own dtype without that copy (8 bytes an element). int64 keeps the float64 copy:
 * past 2^53 the plugins' kernels differ (cpu and cuda round x to a double, opencl compares
 * exactly), and the copy is what all of them agree on. So does a device without the kernel. */
static nb_dtype compare_scalar_dtype(nbi_op op, const nb_tensor *a)
{
    if (nb_dtype_is_float(a->dtype))
        return a->dtype;
    bool exact = a->dtype == NB_DTYPE_I32 || a->dtype == NB_DTYPE_U8 || a->dtype == NB_DTYPE_BOOL;
    return exact && a->storage->device->kernels[op][a->dtype] ? a->dtype : NB_DTYPE_F64;
}

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
        return NBI_API(unary_kernel(NBI_OP_##name##_scalar, a,                             \
                                    compare_scalar_dtype(NBI_OP_##name##_scalar, a),       \
                                    NB_DTYPE_BOOL, f, 1, NULL, 0, NULL));                  \
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
        NBI_AUTOCAST(nbi_autocast_kind_of(NBI_OP_##name), &a);                             \
        NBI_NULL_CHECK(#name, a);                                                          \
        return NBI_API(unary_op(NBI_OP_##name, a, NULL, 0, NULL, 0, NULL));                \
    }                                                                                      \
    nb_status nb_##name##_(nb_tensor *a)                                                   \
    {                                                                                      \
        return NBI_API_CALL(unary_inplace(NBI_OP_##name, a, NULL, 0, NULL, 0));          \
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
        NBI_AUTOCAST(nbi_autocast_kind_of(NBI_OP_##name), &a);                             \
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
    drop_cast(ca, a);
    drop_cast(cb, b);
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
    return NBI_API_CALL(fill_impl("fill_", "FillBackward2", t, value)); /* fill_.Scalar */
}

nb_status nb_zero_(nb_tensor *t) { return NBI_API_CALL(fill_impl("zero_", "ZeroBackward0", t, 0)); }

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

