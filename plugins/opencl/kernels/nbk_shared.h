/* nbk_shared.h - what the plugin's host code and its OpenCL kernels must agree on: op codes and
 * the structs passed to kernels by value. Every struct member is 64-bit, so C and OpenCL C lay
 * them out identically without packing pragmas. Compiled as C and as OpenCL C. */
#ifndef NBK_SHARED_H
#define NBK_SHARED_H

#ifdef __OPENCL_VERSION__
typedef long nbk_i64;
#else
#include <stdint.h>
typedef int64_t nbk_i64;
#endif

#define NBK_MAX_DIMS 8
/* The index flag: [0] set, [1..2] the bad index (low, high word), [3..4] the size it was
 * checked against, [5] the dim, [6] 0 gather / 1 scatter_add. */
#define NBK_FLAG_WORDS 8
#define NBK_MAX_OPERANDS 4
/* Elements per work-item of the chunked elementwise kernels (NBK_CHUNKED in common.cl) on a
 * CPU runtime; a GPU takes one each (neighbouring work-items then read neighbouring elements).
 * The host builds the programs with -DNBK_CHUNK and sizes the launches by it (ocl_chunk). */
#define NBK_CHUNK_CPU 32

/* Up to four operands sharing one (coalesced) shape; work-item i is element i in row-major
 * order. off and st are in elements. ndim >= 1 (a 0-d view becomes shape [1]). */
typedef struct nbk_geom {
    nbk_i64 n;
    nbk_i64 ndim;
    nbk_i64 off[NBK_MAX_OPERANDS];
    nbk_i64 shape[NBK_MAX_DIMS];
    nbk_i64 st[NBK_MAX_OPERANDS][NBK_MAX_DIMS];
} nbk_geom;

/* A reduction: output element o (row-major over the kept dims) reduces n_red input elements
 * (row-major over the reduced dims). With split > 1, work-group g handles output g / split,
 * elements [chunk * (g % split), chunk * (g % split + 1)), and writes a partial. */
typedef struct nbk_red {
    nbk_i64 n_out;
    nbk_i64 n_red;
    nbk_i64 split;
    nbk_i64 chunk;
    nbk_i64 off_in;
    nbk_i64 off_out;
    nbk_i64 nd_out;
    nbk_i64 nd_red;
    nbk_i64 shape_out[NBK_MAX_DIMS];
    nbk_i64 st_out[NBK_MAX_DIMS];    /* output strides of the kept dims */
    nbk_i64 st_in_out[NBK_MAX_DIMS]; /* input strides of the kept dims */
    nbk_i64 shape_red[NBK_MAX_DIMS];
    nbk_i64 st_in_red[NBK_MAX_DIMS]; /* input strides of the reduced dims */
} nbk_red;

/* Batched matmul: operand 0 is out (batch, m, n), 1 is a (batch, m, k), 2 is b (batch, k, n);
 * st[x] holds the batch, row and column strides in elements. */
typedef struct nbk_mm {
    nbk_i64 batch;
    nbk_i64 m;
    nbk_i64 n;
    nbk_i64 k;
    nbk_i64 off[3];
    nbk_i64 st[3][3];
} nbk_mm;

/* conv2d and max_pool2d. Three tensors by role: y (N,O,OH,OW) the output side, x (N,C,H,W) the
 * input side, w (O,C/groups,KH,KW) the weight (for pooling: the int64 indices, shaped like y). */
typedef struct nbk_conv {
    nbk_i64 n, c, h, w;
    nbk_i64 o, oh, ow;
    nbk_i64 kh, kw, sh, sw, ph, pw, dh, dw, groups;
    nbk_i64 off_y, off_x, off_w;
    nbk_i64 st_y[4], st_x[4], st_w[4];
    nbk_i64 len_y, len_x, len_w; /* elements in each role's buffer (the direct convs' loads) */
} nbk_conv;
/* The direct conv2d's register block (conv.cl): output channels per work-item */
#define NBK_CONV_OB 8

/* unary, out = op(x) */
#define NBK_NEG 0
#define NBK_ABS 1
#define NBK_EXP 2
#define NBK_LOG 3
#define NBK_SQRT 4
#define NBK_RSQRT 5
#define NBK_SIN 6
#define NBK_COS 7
#define NBK_TANH 8
#define NBK_SIGMOID 9
#define NBK_RELU 10
#define NBK_SIGN 11
#define NBK_FLOOR 12
#define NBK_CEIL 13
#define NBK_ROUND 14

/* unary with a scalar */
#define NBK_ADD_S 0
#define NBK_MUL_S 1
#define NBK_RSUB_S 2
#define NBK_DIV_S 3
#define NBK_RDIV_S 4
#define NBK_POW_S 5
#define NBK_RPOW_S 6
#define NBK_CLAMP 7

/* binary */
#define NBK_ADD 0
#define NBK_SUB 1
#define NBK_MUL 2
#define NBK_DIV 3
#define NBK_POW 4
#define NBK_MAXIMUM 5
#define NBK_MINIMUM 6

/* comparisons (binary and with a scalar), bool output */
#define NBK_EQ 0
#define NBK_NE 1
#define NBK_LT 2
#define NBK_LE 3
#define NBK_GT 4
#define NBK_GE 5

/* logical ops, bool output */
#define NBK_AND 0
#define NBK_OR 1
#define NBK_XOR 2
#define NBK_NOT 3

/* reductions */
#define NBK_SUM 0
#define NBK_PROD 1
#define NBK_MAX 2
#define NBK_MIN 3
#define NBK_ARGMAX 4
#define NBK_ARGMIN 5

#endif
