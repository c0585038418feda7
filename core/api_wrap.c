/* api_wrap.c - the public entry points of functional.c, nn.c, optim.c and serialize.c: each
 * runs its implementation one API level deep, so tensors those files create and release
 * internally never enter the application's scope, and returns a result to it at depth 0. */
#include "api_rename.h"
#include "nabla_internal.h"
#define NBI_UNRENAME
#include "api_rename.h"

nb_tensor *nb_linear(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_linear(x, w, b));
}

nb_tensor *nb_conv2d(const nb_tensor *x, const nb_tensor *w, const nb_tensor *b, nb_conv2d_opts opts)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_conv2d(x, w, b, opts));
}

nb_tensor *nb_max_pool2d(const nb_tensor *x, nb_pool2d_opts opts)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_max_pool2d(x, opts));
}

nb_tensor *nb_avg_pool2d(const nb_tensor *x, nb_pool2d_opts opts)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_avg_pool2d(x, opts));
}

nb_tensor *nb_gelu(const nb_tensor *x)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_gelu(x));
}

nb_tensor *nb_softmax(const nb_tensor *x, int32_t dim)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_softmax(x, dim));
}

nb_tensor *nb_log_softmax(const nb_tensor *x, int32_t dim)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_log_softmax(x, dim));
}

nb_tensor *nb_dropout(const nb_tensor *x, double p, bool training)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_dropout(x, p, training));
}

nb_tensor *nb_batch_norm(const nb_tensor *x, nb_tensor *running_mean, nb_tensor *running_var, const nb_tensor *weight, const nb_tensor *bias, bool training, double momentum, double eps)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps));
}

nb_tensor *nb_mse_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_mse_loss(input, target, r));
}

nb_tensor *nb_binary_cross_entropy(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_binary_cross_entropy(input, target, r));
}

nb_tensor *nb_binary_cross_entropy_with_logits(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_binary_cross_entropy_with_logits(input, target, r));
}

nb_tensor *nb_cross_entropy(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_cross_entropy(input, target, r));
}

nb_tensor *nb_nll_loss(const nb_tensor *input, const nb_tensor *target, nb_reduction r)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_nll_loss(input, target, r));
}

nb_tensor *nb_module_forward(nb_module *m, const nb_tensor *x)
{
    nbi_api_depth++;
    return nbi_api_leave(nbi_impl_nb_module_forward(m, x));
}

void nb_module_free(nb_module *m)
{
    nbi_api_depth++;
    nbi_impl_nb_module_free(m);
    nbi_api_depth--;
}

nb_status nb_module_add(nb_module *m, const char *name, nb_module *child)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_add(m, name, child);
    nbi_api_depth--;
    return r;
}

nb_status nb_module_add_parameter(nb_module *m, const char *name, nb_tensor *p)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_add_parameter(m, name, p);
    nbi_api_depth--;
    return r;
}

nb_status nb_module_add_buffer(nb_module *m, const char *name, nb_tensor *b)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_add_buffer(m, name, b);
    nbi_api_depth--;
    return r;
}

nb_status nb_module_zero_grad(nb_module *m)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_zero_grad(m);
    nbi_api_depth--;
    return r;
}

nb_status nb_module_train(nb_module *m, bool training)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_train(m, training);
    nbi_api_depth--;
    return r;
}

nb_status nb_module_to(nb_module *m, const char *device)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_to(m, device);
    nbi_api_depth--;
    return r;
}

char *nb_module_str(const nb_module *m)
{
    nbi_api_depth++;
    char *r = nbi_impl_nb_module_str(m);
    nbi_api_depth--;
    return r;
}

nb_module *nb_linear_new(int64_t in_features, int64_t out_features, bool bias, nb_opts opts)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_linear_new(in_features, out_features, bias, opts);
    nbi_api_depth--;
    return r;
}

nb_module *nb_conv2d_new(int64_t in_channels, int64_t out_channels, int64_t kh, int64_t kw, nb_conv2d_opts conv, bool bias, nb_opts opts)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_conv2d_new(in_channels, out_channels, kh, kw, conv, bias, opts);
    nbi_api_depth--;
    return r;
}

nb_module *nb_max_pool2d_new(nb_pool2d_opts opts)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_max_pool2d_new(opts);
    nbi_api_depth--;
    return r;
}

nb_module *nb_relu_new(void)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_relu_new();
    nbi_api_depth--;
    return r;
}

nb_module *nb_sigmoid_new(void)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_sigmoid_new();
    nbi_api_depth--;
    return r;
}

nb_module *nb_tanh_new(void)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_tanh_new();
    nbi_api_depth--;
    return r;
}

nb_module *nb_flatten_new(int32_t start_dim, int32_t end_dim)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_flatten_new(start_dim, end_dim);
    nbi_api_depth--;
    return r;
}

nb_module *nb_dropout_new(double p)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_dropout_new(p);
    nbi_api_depth--;
    return r;
}

nb_module *nb_batch_norm1d_new(int64_t features, double eps, double momentum, nb_opts opts)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_batch_norm1d_new(features, eps, momentum, opts);
    nbi_api_depth--;
    return r;
}

nb_module *nb_batch_norm2d_new(int64_t features, double eps, double momentum, nb_opts opts)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_batch_norm2d_new(features, eps, momentum, opts);
    nbi_api_depth--;
    return r;
}

nb_module *nb_sequential_new(nb_module *const *children, int32_t n)
{
    nbi_api_depth++;
    nb_module *r = nbi_impl_nb_sequential_new(children, n);
    nbi_api_depth--;
    return r;
}

nb_optim *nb_sgd_new(nb_tensor *const *params, int32_t n, nb_sgd_opts opts)
{
    nbi_api_depth++;
    nb_optim *r = nbi_impl_nb_sgd_new(params, n, opts);
    nbi_api_depth--;
    return r;
}

nb_optim *nb_adam_new(nb_tensor *const *params, int32_t n, nb_adam_opts opts)
{
    nbi_api_depth++;
    nb_optim *r = nbi_impl_nb_adam_new(params, n, opts);
    nbi_api_depth--;
    return r;
}

nb_optim *nb_adamw_new(nb_tensor *const *params, int32_t n, nb_adam_opts opts)
{
    nbi_api_depth++;
    nb_optim *r = nbi_impl_nb_adamw_new(params, n, opts);
    nbi_api_depth--;
    return r;
}

nb_optim *nb_rmsprop_new(nb_tensor *const *params, int32_t n, nb_rmsprop_opts opts)
{
    nbi_api_depth++;
    nb_optim *r = nbi_impl_nb_rmsprop_new(params, n, opts);
    nbi_api_depth--;
    return r;
}

nb_optim *nb_sgd_new_for(const nb_module *m, nb_sgd_opts opts)
{
    nbi_api_depth++;
    nb_optim *r = nbi_impl_nb_sgd_new_for(m, opts);
    nbi_api_depth--;
    return r;
}

nb_status nb_optim_step(nb_optim *o)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_optim_step(o);
    nbi_api_depth--;
    return r;
}

nb_status nb_optim_zero_grad(nb_optim *o)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_optim_zero_grad(o);
    nbi_api_depth--;
    return r;
}

nb_status nb_optim_set_lr(nb_optim *o, double lr)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_optim_set_lr(o, lr);
    nbi_api_depth--;
    return r;
}

void nb_optim_free(nb_optim *o)
{
    nbi_api_depth++;
    nbi_impl_nb_optim_free(o);
    nbi_api_depth--;
}

nb_lr_scheduler *nb_step_lr_new(nb_optim *o, int64_t step_size, double gamma)
{
    nbi_api_depth++;
    nb_lr_scheduler *r = nbi_impl_nb_step_lr_new(o, step_size, gamma);
    nbi_api_depth--;
    return r;
}

nb_lr_scheduler *nb_cosine_annealing_lr_new(nb_optim *o, int64_t t_max, double eta_min)
{
    nbi_api_depth++;
    nb_lr_scheduler *r = nbi_impl_nb_cosine_annealing_lr_new(o, t_max, eta_min);
    nbi_api_depth--;
    return r;
}

nb_status nb_lr_scheduler_step(nb_lr_scheduler *s)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_lr_scheduler_step(s);
    nbi_api_depth--;
    return r;
}

void nb_lr_scheduler_free(nb_lr_scheduler *s)
{
    nbi_api_depth++;
    nbi_impl_nb_lr_scheduler_free(s);
    nbi_api_depth--;
}

nb_status nb_safetensors_save(const char *path, nb_tensor *const *tensors, const char *const *names, int32_t n)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_safetensors_save(path, tensors, names, n);
    nbi_api_depth--;
    return r;
}

nb_status nb_safetensors_load(const char *path, const char *device, nb_tensor ***tensors, char ***names, int32_t *n)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_safetensors_load(path, device, tensors, names, n);
    nbi_api_depth--;
    return r;
}

void nb_safetensors_free(nb_tensor **tensors, char **names, int32_t n)
{
    nbi_api_depth++;
    nbi_impl_nb_safetensors_free(tensors, names, n);
    nbi_api_depth--;
}

nb_status nb_module_save(const nb_module *m, const char *path)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_save(m, path);
    nbi_api_depth--;
    return r;
}

nb_status nb_module_load(nb_module *m, const char *path)
{
    nbi_api_depth++;
    nb_status r = nbi_impl_nb_module_load(m, path);
    nbi_api_depth--;
    return r;
}
