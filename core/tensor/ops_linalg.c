/* ops_linalg.c - linear algebra: mm, bmm, matmul (1-d operands, broadcast batch dims) and addmm,
 * all on the one batched matmul kernel. */
#include "ops_internal.h"

#include <string.h>

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

/* (..., n, k) @ (k, m) or (k): as torch.matmul does, the batch dims of a fold into its rows, so
 * the product is one (B n, k) @ (k, m) and so is the weight's gradient, instead of B products
 * of a broadcast b and a sum over them (what a Linear on (B, T, C) activations would pay). */
static nb_tensor *matmul_folded(const nb_tensor *a, const nb_tensor *b)
{
    int32_t r = a->ndim;
    int64_t n = a->shape[r - 2], k = a->shape[r - 1], k2 = b->shape[0];
    int64_t m = b->ndim == 2 ? b->shape[1] : 1;
    if (k != k2) {
        nbi_error(NB_SHAPE_MISMATCH, "matmul: shapes %s and %s cannot be multiplied (%lldx%lld "
                  "and %lldx%lld)", NBI_SHAPE_STR(a), NBI_SHAPE_STR(b), (long long)n,
                  (long long)k, (long long)k2, (long long)m);
        return NULL;
    }
    nb_shape os = {.ndim = b->ndim == 2 ? r : r - 1};
    memcpy(os.dims, a->shape, (size_t)(r - 1) * 8);
    if (b->ndim == 2)
        os.dims[r - 1] = m;
    int64_t rows = nbi_numel(r - 1, a->shape); /* checked when a was made */
    nb_tensor *ra = nb_reshape(a, NB_SHAPE(rows, k));
    nb_tensor *b2 = b->ndim == 1 ? nb_unsqueeze(b, 1) : nb_retain((nb_tensor *)b);
    nb_tensor *o2 = ra && b2 ? mm_impl("matmul", ra, b2, 2) : NULL;
    nb_tensor *out = o2 ? nb_reshape(o2, os) : NULL;
    nb_release(ra);
    nb_release(b2);
    nb_release(o2);
    return out;
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
    if (a->ndim >= 3 && b->ndim <= 2)
        return matmul_folded(a, b);
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
    drop_cast(cc, c);
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

