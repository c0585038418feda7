/* test_opencl.h - what the files of test_opencl_kernels share: the plugin under test, a host
 * that records the last error, buffer and view helpers, and the tests each family file defines. */
#ifndef TEST_OPENCL_H
#define TEST_OPENCL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nabla_plugin.h"

extern const nb_plugin *P;
extern const nb_plugin *CPU; /* the cpu plugin when argv[2] names it, else NULL */
extern int has_f64;
extern char last_error[2048];
extern nb_status last_status;
extern const size_t esize[NB_DTYPE_COUNT];

/* A view: operand plus the arrays it points to. */
typedef struct tview {
    nb_operand op;
    int64_t shape[NB_MAX_DIMS];
    int64_t strides[NB_MAX_DIMS];
} tview;

nb_kernel_fn kernel(const char *op, nb_dtype t);
void *buf_new(size_t bytes);
void *buf_from(const void *data, size_t bytes);
void buf_read(void *h, void *dst, size_t bytes);
/* strides NULL: contiguous */
tview view(void *h, int64_t off_elems, nb_dtype t, int ndim, const int64_t *shape,
           const int64_t *strides);
/* operands hold pointers into their tview: fix them after copying by value */
nb_operand opnd(const tview *v);
nb_status run(const char *op, nb_dtype t, const tview *out, int n_in, const tview *in,
               const double *f, const int64_t *i);
/* the same on plugin pl (its device 0) */
nb_status run_on(const nb_plugin *pl, const char *op, nb_dtype t, const tview *out, int n_in,
                 const tview *in, const double *f, const int64_t *i);
void *buf_new_on(const nb_plugin *pl, size_t bytes);
void *buf_from_on(const nb_plugin *pl, const void *data, size_t bytes);
void buf_read_on(const nb_plugin *pl, void *h, void *dst, size_t bytes);
/* |got - ref| <= atol + rtol * |ref|, NaN only matching NaN */
void expect_close(const char *what, size_t k, double got, double ref, double atol,
                  double rtol);
float frand(unsigned *s);
/* a 1-d view of n elements of dtype t over a fresh buffer holding data */
tview vec(void *data, nb_dtype t, int64_t n, void **h);

/* test_opencl_conv.c: direct loops in double, the references of the conv and pooling tests.
 * ref_conv2d: x (N, C, H, W) contiguous, w (O, C/G, KH, KW) at element strides w_st (NULL:
 * contiguous); y = conv2d(x, w), and gx, gw (zeroed here) the adjoints for the upstream
 * gradient gy, with gw laid out as w. */
typedef struct conv_ref {
    int N, C, H, W, O, G, KH, KW, SH, SW, PH, PW, DH, DW;
    const int64_t *w_st;
} conv_ref;
void ref_conv2d(const conv_ref *g, const double *x, const double *w, const double *gy, double *y,
                double *gx, double *gw);
/* max_pool2d of K x K windows, stride S, padding PD over nc planes of H x W: y the first
 * maximum of each window, idx its index in the plane, gx (zeroed here) gy added at idx. */
void ref_max_pool2d(int nc, int H, int W, int K, int S, int PD, const double *x,
                    const double *gy, double *y, int64_t *idx, double *gx);

/* test_opencl_elementwise.c */
void binary_ops_follow_strides_and_broadcast(void **state);
void unary_and_scalar_ops_match_libm(void **state);
void copy_casts_between_every_dtype(void **state);
void fill_and_arange_cover_integer_dtypes(void **state);
void random_ops_match_philox_on_the_host(void **state);
void where_and_logical_ops_read_any_dtype(void **state);
void float_to_integer_follows_the_sdk_rule(void **state);
void clamp_rounds_integer_bounds_inward_and_a_nan_bound_wins(void **state);
void signed_zeros_come_out_as_on_the_cpu(void **state);
void integer_arange_and_scalar_compares_are_exact_past_2_to_24(void **state);
void integer_arithmetic_wraps(void **state);
void integer_pow_and_uint8_arithmetic_match_torch(void **state);
/* test_opencl_reduce.c */
void reductions_over_a_middle_dim(void **state);
void full_sum_of_a_long_vector_is_accurate(void **state);
/* test_opencl_blas.c */
void matmul_handles_transposes_batch_stride_0_and_beta(void **state);
void matmul_f64_matches_reference(void **state);
void matmul_with_beta_0_ignores_what_out_held(void **state);
/* test_opencl_index.c */
void gather_and_scatter_add_along_a_dim(void **state);
void scatter_add_of_few_long_lines_runs_in_chunks(void **state);
/* test_opencl_nn.c */
void softmax_family_matches_reference(void **state);
void optimizer_steps_match_torch_rules(void **state);
/* test_opencl_conv.c */
void conv2d_and_its_gradients_match_direct_loops(void **state);
void direct_convs_mask_row_ends_padding_and_strides(void **state);
void max_pool2d_picks_first_maximum_and_routes_gradients(void **state);
/* test_opencl_half.c */
void every_16_bit_pattern_converts_as_the_sdk_does(void **state);
void integers_and_doubles_round_once_into_16_bits(void **state);
void elementwise_ops_compute_in_float_and_round_once(void **state);
void reductions_accumulate_in_float(void **state);
void matmul_widens_to_float32_and_rounds_once(void **state);
void softmax_rows_compute_in_float(void **state);
void conv2d_and_pooling_sum_in_float_and_round_once(void **state);
void index_ops_move_bits_and_scatter_add_sums_in_float(void **state);
void arange_random_and_logical_ops_round_the_float32_values(void **state);
void optimizer_steps_compute_in_float_and_round_each_state_once(void **state);
void every_op_has_16_bit_kernels_and_mixed_dtypes_are_refused(void **state);
void sixteen_bit_results_match_the_cpu_plugins(void **state);

#endif
