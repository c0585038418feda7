/* autograd_gradcheck.c - nb_gradcheck and nb_gradgradcheck: analytical gradients (first and
 * second order) against central finite differences in float64, as torch.autograd.gradcheck. */
#include "nabla_internal.h"

#include <math.h>
#include <string.h>

/* ---- gradcheck ---- */

static nb_status read_doubles(const nb_tensor *t, double **out, int64_t *n)
{
    *n = nbi_numel(t->ndim, t->shape);
    *out = nbi_malloc((size_t)(*n ? *n : 1) * sizeof **out);
    if (!*out)
        return nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
    return nbi_read_f64(t, *out);
}

static nb_tensor *call_fn(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *in, int32_t n)
{
    nbi_user_call saved = nbi_call_user_begin();
    nb_tensor *r = fn(in, n, ctx);
    nbi_call_user_end(saved);
    nbi_scope_untrack(r);
    return r;
}

static nb_status gradcheck_impl(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs,
                                int32_t n, double eps, double atol, double rtol)
{
    if (!fn || !inputs || n <= 0)
        return nbi_error(NB_NULL_ARGUMENT, "gradcheck: fn and at least one input are required");
    if (n > 16)
        return nbi_error(NB_INVALID_ARGUMENT, "gradcheck: %d inputs, at most 16", n);
    if (!(eps > 0))
        eps = 1e-6;
    nb_tensor *x[16] = {0};
    nb_status st = NB_OK;
    /* float64 copies of the inputs, so the finite differences are meaningful */
    for (int32_t k = 0; k < n; k++) {
        if (!inputs[k])
            return nbi_error(NB_NULL_ARGUMENT, "gradcheck: input %d is NULL", k);
        nb_tensor *c = nb_to_dtype(inputs[k], nb_dtype_is_float(inputs[k]->dtype)
                                                  ? NB_DTYPE_F64 : inputs[k]->dtype);
        x[k] = c ? nb_detach(c) : NULL;
        nb_release(c);
        if (!x[k]) {
            st = nb_last_status();
            goto done;
        }
        if (inputs[k]->requires_grad)
            x[k]->requires_grad = true;
    }
    nb_tensor *out = call_fn(fn, ctx, x, n);
    if (!out) {
        st = nbi_last_or(NB_AUTOGRAD, "gradcheck: fn returned NULL");
        goto done;
    }
    int64_t m = nbi_numel(out->ndim, out->shape);
    double *base = NULL;
    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        if (!x[k]->requires_grad)
            continue;
        int64_t len;
        double *xv = NULL, *num = NULL, *ana = NULL;
        st = read_doubles(x[k], &xv, &len);
        if (st == NB_OK && !(num = nbi_calloc((size_t)(len * m + 1), sizeof *num)))
            st = nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
        if (st == NB_OK && !(ana = nbi_calloc((size_t)(len * m + 1), sizeof *ana)))
            st = nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
        /* numeric Jacobian, column by column: d out / d x[k][e] */
        for (int64_t e = 0; st == NB_OK && e < len; e++) {
            double keep = xv[e];
            double *fp = NULL, *fm = NULL;
            int64_t mm;
            for (int s = 0; s < 2 && st == NB_OK; s++) {
                xv[e] = keep + (s ? -eps : eps);
                st = nb_tensor_copy_from_host(x[k], xv, (size_t)len * 8);
                nb_tensor *o = st == NB_OK ? call_fn(fn, ctx, x, n) : NULL;
                if (!o && st == NB_OK)
                    st = nbi_last_or(NB_AUTOGRAD, "gradcheck: fn returned NULL");
                if (o)
                    st = read_doubles(o, s ? &fm : &fp, &mm);
                nb_release(o);
            }
            xv[e] = keep;
            if (st == NB_OK)
                st = nb_tensor_copy_from_host(x[k], xv, (size_t)len * 8);
            for (int64_t j = 0; st == NB_OK && j < m; j++)
                num[j * len + e] = (fp[j] - fm[j]) / (2 * eps);
            nbi_free(fp);
            nbi_free(fm);
        }
        /* analytic Jacobian, row by row: one backward per output element */
        nb_tensor *o = st == NB_OK ? call_fn(fn, ctx, x, n) : NULL;
        /* an output that does not require grad has a zero analytical Jacobian (PyTorch's rule;
         * the numerical one must then be zero too) */
        for (int64_t j = 0; o && o->requires_grad && st == NB_OK && j < m; j++) {
            double *onehot = nbi_calloc((size_t)m, sizeof *onehot);
            if (!onehot) {
                st = nbi_error(NB_OUT_OF_MEMORY, "gradcheck: out of memory");
                break;
            }
            onehot[j] = 1;
            nb_tensor *go = nb_from_data(onehot, nb_tensor_shape(o),
                                         (nb_opts){NB_DTYPE_F64, o->storage->device->name});
            nbi_free(onehot);
            nb_tensor *gin = NULL, *oo = o, *xk = x[k];
            nb_tensor *go_c = go && o->dtype != NB_DTYPE_F64 ? nb_to_dtype(go, o->dtype) : go;
            st = go_c ? nb_grad(&oo, &go_c, 1, &xk, 1,
                                (nb_grad_opts){.retain_graph = true, .allow_unused = true}, &gin)
                      : nb_last_status();
            if (go_c != go)
                nb_release(go_c);
            nb_release(go);
            double *gv = NULL;
            int64_t gl;
            if (st == NB_OK && gin && (st = read_doubles(gin, &gv, &gl)) == NB_OK)
                memcpy(ana + j * len, gv, (size_t)len * sizeof *gv);
            nbi_free(gv);
            nb_release(gin);
        }
        nb_release(o);
        for (int64_t q = 0; st == NB_OK && q < m * len; q++) {
            double a = ana[q], b = num[q];
            if (!(fabs(a - b) <= atol + rtol * fabs(b)))
                st = nbi_error(NB_AUTOGRAD, "gradcheck: Jacobian mismatch for output %lld with "
                               "respect to input %d element %lld: numerical %.10g, analytical "
                               "%.10g", (long long)(q / len), k, (long long)(q % len), b, a);
        }
        nbi_free(xv);
        nbi_free(num);
        nbi_free(ana);
    }
    nbi_free(base);
    nb_release(out);
done:
    for (int32_t k = 0; k < n; k++)
        nb_release(x[k]);
    return st;
}

nb_status nb_gradcheck(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs, int32_t n,
                       double eps, double atol, double rtol)
{
    return NBI_API_CALL(gradcheck_impl(fn, ctx, inputs, n, eps, atol, rtol));
}

/* ---- gradgradcheck ---- */

typedef struct ggc_ctx {
    nb_gradcheck_fn fn;
    void *ctx;
    int32_t n; /* fn's inputs; the gradient's seed v comes after them */
} ggc_ctx;

/* The first derivative as one flat tensor: cat(flatten(d(sum fn(x) * v) / dx_k)). */
static nb_tensor *ggc_fn(nb_tensor *const *in, int32_t n_in, void *vctx)
{
    ggc_ctx *c = vctx;
    nb_tensor *v = in[n_in - 1], *out = call_fn(c->fn, c->ctx, in, c->n);
    if (!out)
        return NULL;
    nb_tensor *wrt[16], *g[16] = {0}, *flat[16] = {0};
    int32_t nw = 0;
    for (int32_t k = 0; k < c->n; k++)
        if (in[k]->requires_grad)
            wrt[nw++] = in[k];
    nb_status st = out->requires_grad
                       ? nb_grad(&out, &v, 1, wrt, nw,
                                 (nb_grad_opts){.create_graph = true, .allow_unused = true}, g)
                       : nbi_error(NB_AUTOGRAD, "gradgradcheck: the output does not require grad");
    nb_release(out);
    nb_tensor *r = NULL;
    for (int32_t k = 0; st == NB_OK && k < nw; k++) {
        int64_t numel = nbi_numel(wrt[k]->ndim, wrt[k]->shape);
        flat[k] = g[k] ? nb_reshape(g[k], NB_SHAPE(-1))
                       : nb_zeros(NB_SHAPE(numel), (nb_opts){wrt[k]->dtype,
                                                             wrt[k]->storage->device->name});
        if (!flat[k])
            st = nb_last_status();
    }
    if (st == NB_OK)
        r = nb_cat(flat, nw, 0);
    for (int32_t k = 0; k < nw; k++) {
        nb_release(g[k]);
        nb_release(flat[k]);
    }
    return r;
}

static nb_status gradgradcheck_impl(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs,
                                    int32_t n, double eps, double atol, double rtol)
{
    if (!fn || !inputs || n <= 0 || n > 15)
        return nbi_error(NB_NULL_ARGUMENT, "gradgradcheck: fn and 1 to 15 inputs are required "
                         "(got %d)", n);
    for (int32_t k = 0; k < n; k++)
        if (!inputs[k])
            return nbi_error(NB_NULL_ARGUMENT, "gradgradcheck: input %d is NULL", k);
    nb_tensor *out = call_fn(fn, ctx, inputs, n);
    if (!out)
        return nbi_last_or(NB_AUTOGRAD, "gradgradcheck: fn returned NULL");
    int64_t m = nbi_numel(out->ndim, out->shape);
    double *vv = nbi_malloc((size_t)(m ? m : 1) * sizeof *vv);
    nb_status st = vv ? NB_OK : nbi_error(NB_OUT_OF_MEMORY, "gradgradcheck: out of memory");
    for (int64_t e = 0; st == NB_OK && e < m; e++) /* fixed, varied, in [-1, 1] */
        vv[e] = fmod(fabs(sin((double)(e + 1) * 12.9898)) * 43758.5453, 2.0) - 1.0;
    nb_tensor *v = st == NB_OK ? nb_from_data(vv, nb_tensor_shape(out),
                                              (nb_opts){NB_DTYPE_F64, out->storage->device->name,
                                                        true})
                               : NULL;
    nbi_free(vv);
    nb_release(out);
    if (!v)
        return nb_last_status();
    nb_tensor *all[16];
    memcpy(all, inputs, (size_t)n * sizeof *all);
    all[n] = v;
    ggc_ctx c = {fn, ctx, n};
    st = gradcheck_impl(ggc_fn, &c, all, n + 1, eps, atol, rtol);
    nb_release(v);
    return st;
}

nb_status nb_gradgradcheck(nb_gradcheck_fn fn, void *ctx, nb_tensor *const *inputs, int32_t n,
                           double eps, double atol, double rtol)
{
    return NBI_API_CALL(gradgradcheck_impl(fn, ctx, inputs, n, eps, atol, rtol));
}
