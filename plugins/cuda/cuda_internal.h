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

/* cuBLAS, loaded with dlopen on first use so that the plugin loads (and reports its devices)
 * on a machine that has the driver but not the toolkit's libraries. */
typedef struct nbcu_cublas_api {
    cublasStatus_t (*create)(cublasHandle_t *handle);
    cublasStatus_t (*destroy)(cublasHandle_t handle);
    cublasStatus_t (*set_stream)(cublasHandle_t handle, cudaStream_t stream);
    const char *(*status_name)(cublasStatus_t status);
    const char *(*status_string)(cublasStatus_t status);
    cublasStatus_t (*sgemm_strided_batched)(cublasHandle_t h, cublasOperation_t ta,
                                            cublasOperation_t tb, int m, int n, int k,
                                            const float *alpha, const float *A, int lda,
                                            long long sa, const float *B, int ldb, long long sb,
                                            const float *beta, float *C, int ldc, long long sc,
                                            int batch);
    cublasStatus_t (*dgemm_strided_batched)(cublasHandle_t h, cublasOperation_t ta,
                                            cublasOperation_t tb, int m, int n, int k,
                                            const double *alpha, const double *A, int lda,
                                            long long sa, const double *B, int ldb,
                                            long long sb, const double *beta, double *C,
                                            int ldc, long long sc, int batch);
    /* float16/bfloat16 matmul and conv2d (16-bit A and B, C 16-bit or float32) */
    cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t h, cublasOperation_t ta,
                                              cublasOperation_t tb, int m, int n, int k,
                                              const void *alpha, const void *A,
                                              cudaDataType at, int lda, long long sa,
                                              const void *B, cudaDataType bt, int ldb,
                                              long long sb, const void *beta, void *C,
                                              cudaDataType ct, int ldc, long long sc, int batch,
                                              cublasComputeType_t compute,
                                              cublasGemmAlgo_t algo);
    /* the same for one product (batch 1) */
    cublasStatus_t (*gemm_ex)(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                              int m, int n, int k, const void *alpha, const void *A,
                              cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb,
                              const void *beta, void *C, cudaDataType ct, int ldc,
                              cublasComputeType_t compute, cublasGemmAlgo_t algo);
} nbcu_cublas_api;

/* The loaded cuBLAS (NULL once it was found before). Valid after nbcu_blas succeeded. */
extern const nbcu_cublas_api *nbcu_cublas;

/* Device memory for `device`, usable on its stream at once: stream-ordered (cudaMallocAsync)
 * where the device has memory pools, cudaMalloc otherwise. An out-of-memory is cleared (it is
 * not sticky) and reported as NB_OUT_OF_MEMORY naming op and size. */
nb_status nbcu_malloc(const char *op, int device, cudaStream_t stream, size_t bytes, void **p);

/* Frees nbcu_malloc's memory after the work queued on `stream` (never waits where pools
 * exist). */
void nbcu_free(int device, cudaStream_t stream, void *p);

/* The device's index-check word: kernels that meet an out-of-range index record it here
 * (nbcu_report_bad in cuda_common.cuh) and the next read or synchronize reports it, so no op
 * waits for the device to learn whether its indices were good. Valid after nbcu_stream. */
unsigned long long *nbcu_index_flags(int device);

/* What recorded a bad index (flags[3]). */
enum { NBCU_IDX_GATHER = 1, NBCU_IDX_SCATTER_ADD = 2, NBCU_IDX_MAX_POOL2D_BACKWARD = 3 };

/* Checks, on the current device, that this build's kernels can run there (defined in
 * cuda_elementwise.cu, whose fill kernel it asks cudaFuncGetAttributes about). */
cudaError_t nbcu_probe_kernels(void);

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
