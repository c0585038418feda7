/* cuda_internal.h - what the cuda plugin's files share: per-device state (stream, cuBLAS handle),
 * error reporting through the host table, and the kernel tables each .cu file contributes. */
#ifndef NABLA_CUDA_INTERNAL_H
#define NABLA_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "nabla_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The host table given to nb_plugin_entry (errors and logging go through it). */
extern const nb_host *nbcu_host;

/* Makes `device` current on the calling thread and returns its stream, creating it on first
 * use. `op` names the caller in error messages. */
nb_status nbcu_stream(const char *op, int device, cudaStream_t *stream);

/* The device's cuBLAS handle, bound to its stream (created on first use). */
nb_status nbcu_blas(const char *op, int device, cublasHandle_t *handle);

/* Reports a failed CUDA runtime call: "op: call failed: cudaErrorX (text)". */
nb_status nbcu_cuda_error(const char *op, const char *call, cudaError_t err);

/* Reports a failed cuBLAS call. */
nb_status nbcu_blas_error(const char *op, const char *call, cublasStatus_t st);

/* Kernel tables, one per .cu file. */
extern const nb_kernel_desc nbcu_elementwise_kernels[];
extern const size_t nbcu_elementwise_count;
extern const nb_kernel_desc nbcu_reduce_kernels[];
extern const size_t nbcu_reduce_count;
extern const nb_kernel_desc nbcu_matmul_kernels[];
extern const size_t nbcu_matmul_count;
extern const nb_kernel_desc nbcu_index_kernels[];
extern const size_t nbcu_index_count;
extern const nb_kernel_desc nbcu_nn_kernels[];
extern const size_t nbcu_nn_count;
extern const nb_kernel_desc nbcu_conv_kernels[];
extern const size_t nbcu_conv_count;

#ifdef __cplusplus
}
#endif
#endif /* NABLA_CUDA_INTERNAL_H */
