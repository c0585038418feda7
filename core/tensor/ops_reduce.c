/* ops_reduce.c - reductions: sum, mean, prod, amax/amin, max/min, var/std, norm, argmax/argmin
 * and max/min over a dim, with their backward rules. */
#include "ops_internal.h"

#include <math.h>
#include <string.h>

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

/* The sum or product over every dim of a narrow integer (or bool) tensor, which is int64 as in
 * PyTorch. Widening the whole input first would cost 8 bytes an element (a bool mask of 2^31
 * elements: a 17 GB copy), so it is widened a slice of WIDEN_SLICE elements at a time, each
 * slice reduced, and the partial results combined. Returns kept dims of size 1, as reduce_raw. */
#define WIDEN_SLICE ((int64_t)1 << 22)
static nb_tensor *reduce_all_widening(nbi_op op, const nb_tensor *t)
{
    nb_tensor *flat = nb_reshape(t, NB_SHAPE(-1)); /* a view, or one copy in the narrow dtype */
    nb_tensor *acc = NULL;
    const int64_t n = flat ? nbi_numel(flat->ndim, flat->shape) : 0;
    const bool all[1] = {true};
    bool ok = flat != NULL;
    for (int64_t off = 0; ok && off < n; off += WIDEN_SLICE) {
        nb_tensor *part = nb_narrow(flat, 0, off, n - off < WIDEN_SLICE ? n - off : WIDEN_SLICE);
        nb_tensor *wide = part ? as_dtype(part, NB_DTYPE_I64) : NULL;
        nb_tensor *r = wide ? reduce_raw(op, wide, all, NB_DTYPE_I64, NULL, 0) : NULL;
        if (wide)
            drop_cast(wide, part);
        nb_release(part);
        if (r && acc) {
            nb_tensor *in[2] = {acc, r};
            ok = nbi_launch(op == NBI_OP_prod ? NBI_OP_mul : NBI_OP_add, NB_DTYPE_I64, acc, in,
                            2, NULL, 0, NULL, 0) == NB_OK;
            nb_release(r);
        } else if (r) {
            acc = r;
        } else {
            ok = false;
        }
    }
    nb_release(flat);
    if (!ok) {
        nb_release(acc);
        return NULL;
    }
    int64_t ones[NB_MAX_DIMS], zeros[NB_MAX_DIMS] = {0};
    for (int32_t d = 0; d < t->ndim; d++)
        ones[d] = 1;
    nb_tensor *kept = nbi_tensor_view(acc, t->ndim, ones, zeros, acc->offset);
    nb_release(acc);
    return kept;
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
    bool every_dim = true;
    for (int32_t d = 0; d < t->ndim; d++)
        every_dim = every_dim && mask[d];
    bool widen = dt != t->dtype && every_dim && numel(t) > WIDEN_SLICE;
    /* A 16-bit mean sums and scales in float32 and rounds once, as PyTorch's opmath does: a
     * 16-bit sum then a 16-bit multiply by 1/n would round twice (bfloat16 [1.359375] x 3
     * would average to 1.3515625). */
    const nb_dtype out_dt = dt;
    if (kind == RED_MEAN && (dt == NB_DTYPE_F16 || dt == NB_DTYPE_BF16))
        dt = NB_DTYPE_F32;
    nb_tensor *src = widen ? (nb_tensor *)t : as_dtype(t, dt);
    nb_tensor *kept = !src ? NULL
                      : widen ? reduce_all_widening(op, t)
                              : reduce_raw(op, src, mask, dt, NULL, 0);
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
    if (kept && dt != out_dt) {
        nb_tensor *narrow = as_dtype(kept, out_dt);
        nb_release(kept);
        kept = narrow;
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
    if (!widen)
        drop_cast(src, t);
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
        NBI_AUTOCAST((kind) <= RED_PROD ? NBI_AC_FP32 : NBI_AC_NONE, &t);                  \
        NBI_NULL_CHECK(&#fname[3], t);                                                     \
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
    /* PyTorch divides by max(0, N - correction): no degrees of freedom left gives inf, or NaN
     * where every deviation is 0 (torch.var(torch.tensor([1., 3.]), correction=2) is inf). */
    nb_tensor *v = s ? (denom > 0 ? nb_mul_scalar(s, 1.0 / denom) : nb_div_scalar(s, 0.0))
                     : NULL;
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
    /* 16-bit inputs are computed in float32 and rounded once, as PyTorch's opmath does */
    bool half = t->dtype == NB_DTYPE_F16 || t->dtype == NB_DTYPE_BF16;
    nb_tensor *wide = half ? as_dtype(t, NB_DTYPE_F32) : NULL;
    nb_tensor *v = !half || wide ? var_impl(half ? wide : t, dims, nd, corr, keepdim) : NULL;
    nb_tensor *r = v && is_std ? nbi_unary_kernel(NBI_OP_sqrt, v, v->dtype, v->dtype, NULL, 0,
                                                  NULL, 0, NULL)
                               : nb_retain(v);
    nb_release(v);
    if (half && r) {
        nb_tensor *narrow = as_dtype(r, t->dtype);
        nb_release(r);
        r = narrow;
    }
    if (wide)
        drop_cast(wide, t);
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

/* torch.linalg.vector_norm's backward: g * sign(x) |x|^(p-1) / norm^(p-1); for p = +-inf the
 * gradient is shared among the elements of largest (smallest) |x|; for p = 0 it is 0. Where the norm is 0 the gradient is 0
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
    } else if (p == 0) { /* a count: piecewise constant, gradient 0 as in PyTorch */
        w = nb_zeros_like(x);
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
    if (isnan(p)) {
        nbi_error(NB_INVALID_ARGUMENT, "norm: p must be a number or +-INFINITY, got nan");
        return NULL;
    }
    if (p == 0) { /* the count of nonzero elements, in t's dtype (torch.linalg.vector_norm) */
        nb_tensor *nz = nb_ne_scalar(t, 0);
        nb_tensor *f = nz ? nb_to_dtype(nz, t->dtype) : NULL;
        nb_tensor *r = f ? nb_sum(f, dims, nd, keepdim) : NULL;
        nb_release(nz);
        nb_release(f);
        return r;
    }
    nb_tensor *a = nb_abs(t);
    if (isinf(p)) { /* inf: the largest |x|; -inf: the smallest */
        nb_tensor *r = a ? (p > 0 ? nb_amax : nb_amin)(a, dims, nd, keepdim) : NULL;
        nb_release(a);
        return r;
    }
    /* A negative p takes the same formula: |0|^p = inf, and inf^(1/p) = 0, as in PyTorch. */
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

