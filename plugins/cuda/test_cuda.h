/* test_cuda.h - what the cuda kernel test's files share (test_cuda_kernels.c defines it): the
 * loaded plugin, operand views and a kernel runner, and the 16-bit tests of test_cuda_half.c. */
#ifndef NABLA_TEST_CUDA_H
#define NABLA_TEST_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "nabla_plugin.h"

extern const nb_plugin *P;        /* the plugin under test, on device 0 */
extern char last_error[2048];     /* the last message it reported */
extern const size_t esize[NB_DTYPE_COUNT];

/* An operand together with the arrays it points to. */
typedef struct tview {
    nb_operand op;
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS];
} tview;

nb_kernel_fn kernel(const char *op, nb_dtype t);     /* fails the test when missing */
void *buf_from(const void *data, size_t bytes);      /* device buffer, data copied in (or NULL) */
void buf_read(void *h, void *dst, size_t bytes);
/* strides NULL: contiguous; off in elements */
tview view(void *h, int64_t off, nb_dtype t, int ndim, const int64_t *shape,
           const int64_t *strides);
/* runs op's kernel for dtype t; f and i are NULL or 8 values */
nb_status run(const char *op, nb_dtype t, tview *out, int n_in, tview *in, const double *f,
              const int64_t *i);
/* fails unless |got - ref| <= atol + rtol * |ref| */
void expect_close(const char *what, int k, double got, double ref, double atol, double rtol);
float frand(unsigned *s); /* in [-2, 2) */

/* test_cuda_half.c */
void half_copies_match_the_sdk_bit_for_bit(void **state);
void half_elementwise_computes_in_float(void **state);
void half_reductions_fold_in_float(void **state);
void half_matmul_reads_transposed_and_broadcast_batches(void **state);
void half_softmax_rows_match_the_reference(void **state);
void half_conv2d_and_backwards_match_loops(void **state);
void half_scatter_add_and_pool_backward_sum_in_float(void **state);
void half_random_is_the_float32_numbers_rounded(void **state);

#endif /* NABLA_TEST_CUDA_H */
