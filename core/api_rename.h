/* api_rename.h - included first (-include) by the core files built on ops: their public
 * functions compile as nbi_impl_* and core/api_wrap.c defines the public names around them, so
 * every call from application code runs one API level deep (see NBI_API in nabla_internal.h). */
#ifndef NBI_UNRENAME
#define nb_linear nbi_impl_nb_linear
#define nb_conv2d nbi_impl_nb_conv2d
#define nb_max_pool2d nbi_impl_nb_max_pool2d
#define nb_avg_pool2d nbi_impl_nb_avg_pool2d
#define nb_gelu nbi_impl_nb_gelu
#define nb_softmax nbi_impl_nb_softmax
#define nb_log_softmax nbi_impl_nb_log_softmax
#define nb_dropout nbi_impl_nb_dropout
#define nb_batch_norm nbi_impl_nb_batch_norm
#define nb_mse_loss nbi_impl_nb_mse_loss
#define nb_binary_cross_entropy nbi_impl_nb_binary_cross_entropy
#define nb_binary_cross_entropy_with_logits nbi_impl_nb_binary_cross_entropy_with_logits
#define nb_cross_entropy nbi_impl_nb_cross_entropy
#define nb_nll_loss nbi_impl_nb_nll_loss
#define nb_module_forward nbi_impl_nb_module_forward
#define nb_module_free nbi_impl_nb_module_free
#define nb_module_add nbi_impl_nb_module_add
#define nb_module_add_parameter nbi_impl_nb_module_add_parameter
#define nb_module_add_buffer nbi_impl_nb_module_add_buffer
#define nb_module_zero_grad nbi_impl_nb_module_zero_grad
#define nb_module_train nbi_impl_nb_module_train
#define nb_module_to nbi_impl_nb_module_to
#define nb_module_str nbi_impl_nb_module_str
#define nb_linear_new nbi_impl_nb_linear_new
#define nb_conv2d_new nbi_impl_nb_conv2d_new
#define nb_max_pool2d_new nbi_impl_nb_max_pool2d_new
#define nb_relu_new nbi_impl_nb_relu_new
#define nb_sigmoid_new nbi_impl_nb_sigmoid_new
#define nb_tanh_new nbi_impl_nb_tanh_new
#define nb_flatten_new nbi_impl_nb_flatten_new
#define nb_dropout_new nbi_impl_nb_dropout_new
#define nb_batch_norm1d_new nbi_impl_nb_batch_norm1d_new
#define nb_batch_norm2d_new nbi_impl_nb_batch_norm2d_new
#define nb_sequential_new nbi_impl_nb_sequential_new
#define nb_sgd_new nbi_impl_nb_sgd_new
#define nb_adam_new nbi_impl_nb_adam_new
#define nb_adamw_new nbi_impl_nb_adamw_new
#define nb_rmsprop_new nbi_impl_nb_rmsprop_new
#define nb_sgd_new_for nbi_impl_nb_sgd_new_for
#define nb_optim_step nbi_impl_nb_optim_step
#define nb_optim_zero_grad nbi_impl_nb_optim_zero_grad
#define nb_optim_set_lr nbi_impl_nb_optim_set_lr
#define nb_optim_free nbi_impl_nb_optim_free
#define nb_step_lr_new nbi_impl_nb_step_lr_new
#define nb_cosine_annealing_lr_new nbi_impl_nb_cosine_annealing_lr_new
#define nb_lr_scheduler_step nbi_impl_nb_lr_scheduler_step
#define nb_lr_scheduler_free nbi_impl_nb_lr_scheduler_free
#define nb_safetensors_save nbi_impl_nb_safetensors_save
#define nb_safetensors_load nbi_impl_nb_safetensors_load
#define nb_safetensors_free nbi_impl_nb_safetensors_free
#define nb_module_save nbi_impl_nb_module_save
#define nb_module_load nbi_impl_nb_module_load
#else
#undef nb_linear
#undef nb_conv2d
#undef nb_max_pool2d
#undef nb_avg_pool2d
#undef nb_gelu
#undef nb_softmax
#undef nb_log_softmax
#undef nb_dropout
#undef nb_batch_norm
#undef nb_mse_loss
#undef nb_binary_cross_entropy
#undef nb_binary_cross_entropy_with_logits
#undef nb_cross_entropy
#undef nb_nll_loss
#undef nb_module_forward
#undef nb_module_free
#undef nb_module_add
#undef nb_module_add_parameter
#undef nb_module_add_buffer
#undef nb_module_zero_grad
#undef nb_module_train
#undef nb_module_to
#undef nb_module_str
#undef nb_linear_new
#undef nb_conv2d_new
#undef nb_max_pool2d_new
#undef nb_relu_new
#undef nb_sigmoid_new
#undef nb_tanh_new
#undef nb_flatten_new
#undef nb_dropout_new
#undef nb_batch_norm1d_new
#undef nb_batch_norm2d_new
#undef nb_sequential_new
#undef nb_sgd_new
#undef nb_adam_new
#undef nb_adamw_new
#undef nb_rmsprop_new
#undef nb_sgd_new_for
#undef nb_optim_step
#undef nb_optim_zero_grad
#undef nb_optim_set_lr
#undef nb_optim_free
#undef nb_step_lr_new
#undef nb_cosine_annealing_lr_new
#undef nb_lr_scheduler_step
#undef nb_lr_scheduler_free
#undef nb_safetensors_save
#undef nb_safetensors_load
#undef nb_safetensors_free
#undef nb_module_save
#undef nb_module_load
#endif
