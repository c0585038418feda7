/* pooling.c - adaptive_avg_pool2d and the AvgPool2d and AdaptiveAvgPool2d modules. The adaptive
 * pool is two matmuls with averaging matrices (PyTorch's bins: floor(i*H/oh) to
 * ceil((i+1)*H/oh)), which every device runs and autograd differentiates. */
#include "nn_common.h"

/* (o, n): row i averages [floor(i n / o), ceil((i + 1) n / o)). */
static nb_tensor *bins(int64_t o, int64_t n, const nb_tensor *like)
{
    int64_t cnt;
    if (__builtin_mul_overflow(o, n, &cnt)) {
        nbi_error(NB_OUT_OF_MEMORY, "adaptive_avg_pool2d: output %lld for size %lld is too large",
                  (long long)o, (long long)n);
        return NULL;
    }
    double *a = nbi_calloc((size_t)(cnt ? cnt : 1), sizeof *a);
    if (!a) {
        nbi_error(NB_OUT_OF_MEMORY, "adaptive_avg_pool2d: out of host memory");
        return NULL;
    }
    for (int64_t i = 0; i < o; i++) {
        int64_t s = i * n / o, e = ((i + 1) * n + o - 1) / o;
        for (int64_t j = s; j < e; j++)
            a[i * n + j] = 1.0 / (double)(e - s);
    }
    nb_tensor *f = nb_from_data(a, NB_SHAPE(o, n), (nb_opts){NB_DTYPE_F64, NNC_DEV(like)});
    nbi_free(a);
    nb_tensor *r = f ? nb_to_dtype(f, nb_tensor_dtype(like)) : NULL;
    nb_release(f);
    return r;
}

static nb_tensor *adaptive_impl(const nb_tensor *x, int64_t oh, int64_t ow)
{
    const char *op = "adaptive_avg_pool2d";
    if (nnc_null(op, "input", x) || !nnc_float(op, "input", x))
        return NULL;
    if (nb_tensor_ndim(x) != 3 && nb_tensor_ndim(x) != 4) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: expected a 3-d (C, H, W) or 4-d (N, C, H, W) input, "
                  "got %s", op, NBI_SHAPE_STR(x));
        return NULL;
    }
    if (oh <= 0 || ow <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: output_size (%lld, %lld) must be positive", op,
                  (long long)oh, (long long)ow);
        return NULL;
    }
    int64_t H = nbi_dims(x)[nb_tensor_ndim(x) - 2], W = nbi_dims(x)[nb_tensor_ndim(x) - 1];
    if (H == 0 || W == 0) {
        nbi_error(NB_SHAPE_MISMATCH, "%s: input %s has an empty spatial dim", op,
                  NBI_SHAPE_STR(x));
        return NULL;
    }
    nnc_tmps s = {0};
    nb_tensor *ah = nnc_k(&s, bins(oh, H, x));
    nb_tensor *aw = nnc_k(&s, bins(ow, W, x));
    nb_tensor *awt = nnc_k(&s, nb_t(aw));
    nb_tensor *r1 = ah ? nnc_k(&s, nb_matmul(ah, x)) : NULL; /* (.., oh, W) */
    return nnc_ret(&s, r1 && awt ? nnc_k(&s, nb_matmul(r1, awt)) : NULL);
}

nb_tensor *nb_adaptive_avg_pool2d(const nb_tensor *x, int64_t oh, int64_t ow)
{
    return NBI_API(adaptive_impl(x, oh, ow));
}

/* ================================ modules ================================ */

static nb_tensor *fw_avg(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m;
    return nb_avg_pool2d(x, *(const nb_pool2d_opts *)p);
}

static void pair(char *buf, size_t len, const int64_t v[2])
{
    if (v[0] == v[1])
        snprintf(buf, len, "%lld", (long long)v[0]);
    else
        snprintf(buf, len, "(%lld, %lld)", (long long)v[0], (long long)v[1]);
}

/* AvgPool2d(kernel_size=2, stride=2, padding=0), PyTorch's extra_repr */
static void rp_avg(const void *p, char *buf, size_t len)
{
    const nb_pool2d_opts *o = p;
    char a[48], b[48], c[48];
    pair(a, sizeof a, o->kernel);
    pair(b, sizeof b, o->stride);
    pair(c, sizeof c, o->padding);
    snprintf(buf, len, "kernel_size=%s, stride=%s, padding=%s", a, b, c);
}

static nb_tensor *fw_adaptive(nb_module *m, const nb_tensor *x, const void *p)
{
    (void)m;
    const int64_t *o = p;
    return adaptive_impl(x, o[0], o[1]);
}

static void rp_adaptive(const void *p, char *buf, size_t len)
{
    const int64_t *o = p;
    snprintf(buf, len, "output_size=(%lld, %lld)", (long long)o[0], (long long)o[1]);
}

static const nbi_module_kind k_avg = {"AvgPool2d", fw_avg, rp_avg};
static const nbi_module_kind k_adaptive = {"AdaptiveAvgPool2d", fw_adaptive, rp_adaptive};

static nb_module *avg_new(nb_pool2d_opts o)
{
    for (int d = 0; d < 2; d++)
        if (o.kernel[d] <= 0 || o.stride[d] < 0 || o.padding[d] < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "nb_avg_pool2d_new: kernel_size=(%lld, %lld) must be "
                      "positive, stride=(%lld, %lld) and padding=(%lld, %lld) not negative",
                      (long long)o.kernel[0], (long long)o.kernel[1], (long long)o.stride[0],
                      (long long)o.stride[1], (long long)o.padding[0], (long long)o.padding[1]);
            return NULL;
        }
    for (int d = 0; d < 2; d++)
        o.stride[d] = o.stride[d] ? o.stride[d] : o.kernel[d];
    return nbi_module_new_kind(&k_avg, &o, sizeof o);
}

static nb_module *adaptive_new(int64_t oh, int64_t ow)
{
    if (oh <= 0 || ow <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_adaptive_avg_pool2d_new: output_size (%lld, %lld) "
                  "must be positive", (long long)oh, (long long)ow);
        return NULL;
    }
    int64_t o[2] = {oh, ow};
    return nbi_module_new_kind(&k_adaptive, o, sizeof o);
}

nb_module *nb_avg_pool2d_new(nb_pool2d_opts opts) { return NNC_API_MODULE(avg_new(opts)); }
nb_module *nb_adaptive_avg_pool2d_new(int64_t oh, int64_t ow)
{
    return NNC_API_MODULE(adaptive_new(oh, ow));
}
