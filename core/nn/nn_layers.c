/* nn_layers.c - the built-in layers (Linear, Conv2d, MaxPool2d, ReLU, Sigmoid, Tanh, Flatten,
 * Dropout, BatchNorm1d/2d, Sequential), all written on the public ops, and the forward
 * dispatch of every module (built-in, user, or a kind defined under core/nn/). */
#include "module.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {
    [NN_USER] = "Module",       [NN_LINEAR] = "Linear",   [NN_CONV2D] = "Conv2d",
    [NN_MAXPOOL2D] = "MaxPool2d", [NN_RELU] = "ReLU",     [NN_SIGMOID] = "Sigmoid",
    [NN_TANH] = "Tanh",         [NN_FLATTEN] = "Flatten", [NN_DROPOUT] = "Dropout",
    [NN_BATCHNORM1D] = "BatchNorm1d", [NN_BATCHNORM2D] = "BatchNorm2d",
    [NN_SEQUENTIAL] = "Sequential",
};

/* ============================== forward ============================== */


static bool check_input(const nb_module *m, const nb_tensor *x)
{
    if (x)
        return true;
    /* an op upstream failed: keep its error, as ops given NULL do */
    nbi_last_or(NB_NULL_ARGUMENT, "nb_module_forward: input is NULL");
    (void)m;
    return false;
}

static nb_tensor *linear_forward(nb_module *m, const nb_tensor *x)
{
    int64_t in = m->cfg.linear.in;
    if (nb_tensor_ndim(x) < 1 || nb_tensor_size(x, -1) != in) {
        char s[160];
        nbi_error(NB_SHAPE_MISMATCH, "Linear(in_features=%lld, out_features=%lld): input of "
                  "shape %s, expected the last dim to be %lld", (long long)in,
                  (long long)m->cfg.linear.out, nnm_shape_str(x, s, sizeof s), (long long)in);
        return NULL;
    }
    return nb_linear(x, m->params[0].t, m->cfg.linear.bias ? m->params[1].t : NULL);
}

/* Conv2d, MaxPool2d and BatchNorm take an unbatched (C, H, W) input as a batch of one. */
static nb_tensor *batched(nb_module *m, const nb_tensor *x,
                          nb_tensor *(*fn)(nb_module *, const nb_tensor *))
{
    if (nb_tensor_ndim(x) != 3)
        return fn(m, x);
    nb_tensor *x4 = nb_unsqueeze(x, 0);
    nb_tensor *y4 = x4 ? fn(m, x4) : NULL;
    nb_tensor *y = y4 ? nb_squeeze(y4, 0) : NULL;
    nb_release(x4);
    nb_release(y4);
    return y;
}

static nb_tensor *conv_forward4(nb_module *m, const nb_tensor *x)
{
    return nb_conv2d(x, m->params[0].t, m->cfg.conv.bias ? m->params[1].t : NULL, m->cfg.conv.o);
}

static nb_tensor *conv_forward(nb_module *m, const nb_tensor *x)
{
    int32_t nd = nb_tensor_ndim(x);
    if ((nd != 3 && nd != 4) || nb_tensor_size(x, -3) != m->cfg.conv.in) {
        char s[160];
        nbi_error(NB_SHAPE_MISMATCH, "Conv2d(%lld, %lld): input of shape %s, expected (N, %lld, "
                  "H, W) or (%lld, H, W)", (long long)m->cfg.conv.in, (long long)m->cfg.conv.out,
                  nnm_shape_str(x, s, sizeof s), (long long)m->cfg.conv.in,
                  (long long)m->cfg.conv.in);
        return NULL;
    }
    return batched(m, x, conv_forward4);
}

static nb_tensor *pool_forward4(nb_module *m, const nb_tensor *x)
{
    return nb_max_pool2d(x, m->cfg.pool);
}

static nb_tensor *pool_forward(nb_module *m, const nb_tensor *x)
{
    int32_t nd = nb_tensor_ndim(x);
    if (nd != 3 && nd != 4) {
        char s[160];
        nbi_error(NB_SHAPE_MISMATCH, "MaxPool2d: input of shape %s, expected (N, C, H, W) or "
                  "(C, H, W)", nnm_shape_str(x, s, sizeof s));
        return NULL;
    }
    return batched(m, x, pool_forward4);
}

static nb_tensor *bn_forward(nb_module *m, const nb_tensor *x)
{
    int32_t nd = nb_tensor_ndim(x);
    bool two_d = m->kind == NN_BATCHNORM2D;
    bool ok_rank = two_d ? nd == 4 : (nd == 2 || nd == 3);
    int64_t c = m->cfg.bn.features;
    char s[160];
    if (!ok_rank) {
        nbi_error(NB_SHAPE_MISMATCH, "%s(%lld): expected %s input, got shape %s",
                  m->type_name, (long long)c, two_d ? "4D (N, C, H, W)" : "2D (N, C) or 3D "
                  "(N, C, L)", nnm_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (nb_tensor_size(x, 1) != c) {
        nbi_error(NB_SHAPE_MISMATCH, "%s(%lld): input of shape %s has %lld channels in dim 1, "
                  "expected %lld", m->type_name, (long long)c, nnm_shape_str(x, s, sizeof s),
                  (long long)nb_tensor_size(x, 1), (long long)c);
        return NULL;
    }
    if (m->training && nb_tensor_numel(x) / c <= 1) {
        nbi_error(NB_INVALID_ARGUMENT, "%s(%lld): expected more than 1 value per channel when "
                  "training, got input of shape %s", m->type_name, (long long)c,
                  nnm_shape_str(x, s, sizeof s));
        return NULL;
    }
    /* params: weight, bias; buffers: running_mean, running_var, num_batches_tracked */
    nb_tensor *y = nb_batch_norm(x, m->buffers[0].t, m->buffers[1].t, m->params[0].t,
                                 m->params[1].t, m->training, m->cfg.bn.momentum, m->cfg.bn.eps);
    if (y && m->training) {
        nb_no_grad_begin();
        nb_status st = nb_add_scalar_(m->buffers[2].t, 1);
        nb_no_grad_end();
        if (st != NB_OK) {
            nb_release(y);
            return NULL;
        }
    }
    return y;
}

static nb_tensor *sequential_forward(nb_module *m, const nb_tensor *x)
{
    nb_tensor *h = nb_retain((nb_tensor *)x);
    for (int32_t i = 0; i < m->n_children && h; i++) {
        nb_tensor *next = nnm_call(m->children[i].m, h);
        nb_release(h);
        h = next;
    }
    return h;
}

static nb_tensor *user_forward(nb_module *m, const nb_tensor *x)
{
    if (!m->forward) {
        nbi_error(NB_STATE, "nb_module_forward: %s was created without a forward function",
                  m->type_name);
        return NULL;
    }
    /* application code: it runs at API depth 0 with its own scopes, and what it returns comes
     * back to the core, out of whatever scope it was tracked in */
    nbi_user_call saved = nbi_call_user_begin();
    nb_tensor *y = m->forward(m, x);
    nbi_call_user_end(saved);
    nbi_scope_untrack(y);
    if (!y)
        nbi_last_or(NB_STATE, "nb_module_forward: the forward function returned NULL without "
                    "an error");
    return y;
}

nb_tensor *nnm_forward_of(nb_module *m, const nb_tensor *x)
{
    if (!check_input(m, x))
        return NULL;
    switch (m->kind) {
    case NN_USER: return user_forward(m, x);
    case NN_LINEAR: return linear_forward(m, x);
    case NN_CONV2D: return conv_forward(m, x);
    case NN_MAXPOOL2D: return pool_forward(m, x);
    case NN_RELU: return nb_relu(x);
    case NN_SIGMOID: return nb_sigmoid(x);
    case NN_TANH: return nb_tanh(x);
    case NN_FLATTEN: return nb_flatten(x, m->cfg.flatten.start, m->cfg.flatten.end);
    case NN_DROPOUT: return nb_dropout(x, m->cfg.p, m->training);
    case NN_BATCHNORM1D:
    case NN_BATCHNORM2D: return bn_forward(m, x);
    case NN_SEQUENTIAL: return sequential_forward(m, x);
    case NN_EXT: return m->ext->forward(m, x, m->ext_cfg);
    }
    nbi_error(NB_STATE, "nb_module_forward: unknown module kind");
    return NULL;
}


static nb_tensor *module_forward_impl(nb_module *m, const nb_tensor *x)
{
    if (!m) {
        nbi_last_or(NB_NULL_ARGUMENT, "nb_module_forward: module is NULL");
        return NULL;
    }
    return nnm_call(m, x);
}

nb_tensor *nb_module_forward(nb_module *m, const nb_tensor *x)
{
    return NBI_API(module_forward_impl(m, x));
}

/* ============================== built-in layers ============================== */

static bool check_param_opts(const char *what, nb_opts opts)
{
    if (opts.dtype < 0 || opts.dtype >= NB_DTYPE_COUNT || !nb_dtype_is_float(opts.dtype)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "%s: parameters must be float32 or float64, got dtype "
                  "%s", what, opts.dtype >= 0 && opts.dtype < NB_DTYPE_COUNT ?
                  nb_dtype_name(opts.dtype) : "(invalid)");
        return false;
    }
    return true;
}

/* uniform(-bound, bound) from the global generator, requiring grad. */
static nb_status add_uniform_param(nb_module *m, const char *name, nb_shape shape, double bound,
                                   nb_opts opts)
{
    opts.requires_grad = true;
    nb_tensor *p = nb_uniform(-bound, bound, shape, opts);
    if (!p)
        return nbi_last_or(NB_OUT_OF_MEMORY, "creating a parameter failed");
    nb_status st = nb_module_add_parameter(m, name, p);
    nb_release(p);
    return st;
}

static nb_module *linear_new_impl(int64_t in_features, int64_t out_features, bool bias, nb_opts opts)
{
    if (in_features <= 0 || out_features <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_linear_new: in_features=%lld, out_features=%lld; "
                  "both must be positive", (long long)in_features, (long long)out_features);
        return NULL;
    }
    if (!check_param_opts("nb_linear_new", opts))
        return NULL;
    nb_module *m = nnm_alloc("Linear", NN_LINEAR);
    if (!m)
        return NULL;
    m->cfg.linear.in = in_features;
    m->cfg.linear.out = out_features;
    m->cfg.linear.bias = bias;
    /* kaiming_uniform(a=sqrt(5)) reduces to bound 1/sqrt(fan_in); the bias uses the same */
    double bound = 1.0 / sqrt((double)in_features);
    nb_status st = add_uniform_param(m, "weight", NB_SHAPE(out_features, in_features), bound,
                                     opts);
    if (st == NB_OK && bias)
        st = add_uniform_param(m, "bias", NB_SHAPE(out_features), bound, opts);
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_linear_new(int64_t in_features, int64_t out_features, bool bias, nb_opts opts)
{
    return NBI_API_CALL(linear_new_impl(in_features, out_features, bias, opts));
}

static nb_module *conv2d_new_impl(int64_t in_channels, int64_t out_channels, int64_t kh, int64_t kw,
                         nb_conv2d_opts conv, bool bias, nb_opts opts)
{
    const char *what = "nb_conv2d_new";
    if (in_channels <= 0 || out_channels <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: in_channels=%lld, out_channels=%lld; both must be "
                  "positive", what, (long long)in_channels, (long long)out_channels);
        return NULL;
    }
    if (kh <= 0 || kw <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: kernel_size=(%lld, %lld); both must be positive",
                  what, (long long)kh, (long long)kw);
        return NULL;
    }
    for (int d = 0; d < 2; d++)
        if (conv.stride[d] < 0 || conv.padding[d] < 0 || conv.dilation[d] < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: stride=(%lld, %lld), padding=(%lld, %lld), "
                      "dilation=(%lld, %lld); none may be negative (0 means the default for "
                      "stride and dilation)", what, (long long)conv.stride[0],
                      (long long)conv.stride[1], (long long)conv.padding[0],
                      (long long)conv.padding[1], (long long)conv.dilation[0],
                      (long long)conv.dilation[1]);
            return NULL;
        }
    int64_t groups = conv.groups ? conv.groups : 1;
    if (groups < 0 || in_channels % groups || out_channels % groups) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: groups=%lld must be positive and divide "
                  "in_channels=%lld and out_channels=%lld", what, (long long)groups,
                  (long long)in_channels, (long long)out_channels);
        return NULL;
    }
    if (!check_param_opts(what, opts))
        return NULL;
    nb_module *m = nnm_alloc("Conv2d", NN_CONV2D);
    if (!m)
        return NULL;
    for (int d = 0; d < 2; d++) {
        conv.stride[d] = conv.stride[d] ? conv.stride[d] : 1;
        conv.dilation[d] = conv.dilation[d] ? conv.dilation[d] : 1;
    }
    conv.groups = groups;
    m->cfg.conv.in = in_channels;
    m->cfg.conv.out = out_channels;
    m->cfg.conv.kh = kh;
    m->cfg.conv.kw = kw;
    m->cfg.conv.o = conv;
    m->cfg.conv.bias = bias;
    double bound = 1.0 / sqrt((double)(in_channels / groups * kh * kw));
    nb_status st = add_uniform_param(m, "weight",
                                     NB_SHAPE(out_channels, in_channels / groups, kh, kw), bound,
                                     opts);
    if (st == NB_OK && bias)
        st = add_uniform_param(m, "bias", NB_SHAPE(out_channels), bound, opts);
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_conv2d_new(int64_t in_channels, int64_t out_channels, int64_t kh, int64_t kw, nb_conv2d_opts conv, bool bias, nb_opts opts)
{
    return NBI_API_CALL(conv2d_new_impl(in_channels, out_channels, kh, kw, conv, bias, opts));
}

static nb_module *max_pool2d_new_impl(nb_pool2d_opts opts)
{
    const char *what = "nb_max_pool2d_new";
    for (int d = 0; d < 2; d++) {
        if (opts.kernel[d] <= 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: kernel_size=(%lld, %lld); both must be positive",
                      what, (long long)opts.kernel[0], (long long)opts.kernel[1]);
            return NULL;
        }
        if (opts.stride[d] < 0 || opts.padding[d] < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: stride=(%lld, %lld), padding=(%lld, %lld); none "
                      "may be negative (stride 0 means the kernel size)", what,
                      (long long)opts.stride[0], (long long)opts.stride[1],
                      (long long)opts.padding[0], (long long)opts.padding[1]);
            return NULL;
        }
        if (opts.padding[d] > opts.kernel[d] / 2) {
            nbi_error(NB_INVALID_ARGUMENT, "%s: padding=(%lld, %lld) should be at most half of "
                      "kernel_size=(%lld, %lld)", what, (long long)opts.padding[0],
                      (long long)opts.padding[1], (long long)opts.kernel[0],
                      (long long)opts.kernel[1]);
            return NULL;
        }
    }
    nb_module *m = nnm_alloc("MaxPool2d", NN_MAXPOOL2D);
    if (!m)
        return NULL;
    for (int d = 0; d < 2; d++)
        opts.stride[d] = opts.stride[d] ? opts.stride[d] : opts.kernel[d];
    m->cfg.pool = opts;
    return m;
}

nb_module *nb_max_pool2d_new(nb_pool2d_opts opts)
{
    return NBI_API_CALL(max_pool2d_new_impl(opts));
}

static nb_module *relu_new_impl(void) { return nnm_alloc("ReLU", NN_RELU); }
static nb_module *sigmoid_new_impl(void) { return nnm_alloc("Sigmoid", NN_SIGMOID); }
static nb_module *tanh_new_impl(void) { return nnm_alloc("Tanh", NN_TANH); }

/* The dims are checked against each input's rank at forward time, as nn.Flatten does. */
static nb_module *flatten_new_impl(int32_t start_dim, int32_t end_dim)
{
    nb_module *m = nnm_alloc("Flatten", NN_FLATTEN);
    if (m) {
        m->cfg.flatten.start = start_dim;
        m->cfg.flatten.end = end_dim;
    }
    return m;
}

nb_module *nb_flatten_new(int32_t start_dim, int32_t end_dim)
{
    return NBI_API_CALL(flatten_new_impl(start_dim, end_dim));
}

nb_module *nb_tanh_new(void)
{
    return NBI_API_CALL(tanh_new_impl());
}

nb_module *nb_sigmoid_new(void)
{
    return NBI_API_CALL(sigmoid_new_impl());
}

nb_module *nb_relu_new(void)
{
    return NBI_API_CALL(relu_new_impl());
}

static nb_module *dropout_new_impl(double p)
{
    if (!(p >= 0 && p <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "nb_dropout_new: dropout probability has to be between 0 "
                  "and 1, but got %g", p);
        return NULL;
    }
    nb_module *m = nnm_alloc("Dropout", NN_DROPOUT);
    if (m)
        m->cfg.p = p;
    return m;
}

nb_module *nb_dropout_new(double p)
{
    return NBI_API_CALL(dropout_new_impl(p));
}

/* eps and momentum of 0 mean PyTorch's defaults (1e-5, 0.1), like the zero-valued options
 * elsewhere in the API. */
static nb_module *batch_norm_new(const char *what, nn_kind kind, int64_t features, double eps,
                                 double momentum, nb_opts opts)
{
    if (features <= 0) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: num_features=%lld must be positive", what,
                  (long long)features);
        return NULL;
    }
    if (!(eps >= 0) || isinf(eps)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: eps=%g must be a positive number (0 means 1e-05)",
                  what, eps);
        return NULL;
    }
    if (!(momentum >= 0 && momentum <= 1)) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: momentum=%g must be in [0, 1] (0 means 0.1)", what,
                  momentum);
        return NULL;
    }
    if (!check_param_opts(what, opts))
        return NULL;
    nb_module *m = nnm_alloc(kind_names[kind], kind);
    if (!m)
        return NULL;
    m->cfg.bn.features = features;
    m->cfg.bn.eps = eps > 0 ? eps : 1e-5;
    m->cfg.bn.momentum = momentum > 0 ? momentum : 0.1;
    nb_opts param = opts, buf = opts;
    param.requires_grad = true;
    buf.requires_grad = false;
    nb_opts count = {.dtype = NB_DTYPE_I64, .device = opts.device};
    nb_tensor *t[5] = {
        nb_ones(NB_SHAPE(features), param),
        nb_zeros(NB_SHAPE(features), param),
        nb_zeros(NB_SHAPE(features), buf),
        nb_ones(NB_SHAPE(features), buf),
        nb_zeros(NB_SHAPE_SCALAR, count),
    };
    static const char *const names[5] = {"weight", "bias", "running_mean", "running_var",
                                          "num_batches_tracked"};
    nb_status st = NB_OK;
    for (int k = 0; k < 5 && st == NB_OK; k++) {
        if (!t[k])
            st = nbi_last_or(NB_OUT_OF_MEMORY, "creating a BatchNorm tensor failed");
        else
            st = k < 2 ? nb_module_add_parameter(m, names[k], t[k])
                       : nb_module_add_buffer(m, names[k], t[k]);
    }
    for (int k = 0; k < 5; k++)
        nb_release(t[k]);
    if (st != NB_OK) {
        nb_module_free(m);
        return NULL;
    }
    return m;
}

nb_module *nb_batch_norm1d_new(int64_t features, double eps, double momentum, nb_opts opts)
{
    return NBI_API_CALL(batch_norm_new("nb_batch_norm1d_new", NN_BATCHNORM1D, features, eps, momentum, opts));
}

nb_module *nb_batch_norm2d_new(int64_t features, double eps, double momentum, nb_opts opts)
{
    return NBI_API_CALL(batch_norm_new("nb_batch_norm2d_new", NN_BATCHNORM2D, features, eps, momentum, opts));
}

/* Takes ownership whatever happens, so nested constructor calls cannot leak: on failure every
 * child it was given (and owns) is freed. A child that already has a parent is not ours and is
 * left alone. */
static nb_module *sequential_new_impl(nb_module *const *children, int32_t n)
{
    const char *what = "nb_sequential_new";
    nb_status st = NB_OK;
    if (n < 0)
        st = nbi_error(NB_INVALID_ARGUMENT, "%s: n=%d must not be negative", what, n);
    else if (n > 0 && !children)
        st = nbi_error(NB_NULL_ARGUMENT, "%s: children is NULL with n=%d", what, n);
    for (int32_t i = 0; st == NB_OK && i < n; i++) {
        if (!children[i])
            st = nbi_last_or(NB_NULL_ARGUMENT, "nb_sequential_new: a child is NULL");
        else if (children[i]->parent)
            st = nbi_error(NB_INVALID_ARGUMENT, "%s: child %d (%s) already belongs to a %s", what,
                           i, children[i]->type_name, children[i]->parent->type_name);
        for (int32_t j = 0; st == NB_OK && j < i; j++)
            if (children[j] == children[i])
                st = nbi_error(NB_INVALID_ARGUMENT, "%s: children %d and %d are the same %s; a "
                               "module has one parent", what, j, i, children[i]->type_name);
    }
    nb_module *m = st == NB_OK ? nnm_alloc("Sequential", NN_SEQUENTIAL) : NULL;
    for (int32_t i = 0; m && i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "%d", i);
        if (nb_module_add(m, name, children[i]) != NB_OK) {
            nb_module_free(m); /* frees the children added so far */
            m = NULL;
            for (int32_t j = i; j < n; j++)
                nb_module_free(children[j]);
            return NULL;
        }
    }
    if (!m && n > 0 && children) {
        for (int32_t i = 0; i < n; i++) {
            bool dup = false;
            for (int32_t j = 0; j < i && !dup; j++)
                dup = children[j] == children[i];
            if (!dup && children[i] && !children[i]->parent)
                nb_module_free(children[i]);
        }
    }
    return m;
}

nb_module *nb_sequential_new(nb_module *const *children, int32_t n)
{
    return NBI_API_CALL(sequential_new_impl(children, n));
}
