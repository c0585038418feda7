/* conformance.h - what the op table (optable.c), the float64 reference (reference.c), the
 * checker (check.c) and the nabla-conformance runner share: host arrays, samples, op entries. */
#ifndef NB_CONFORMANCE_H
#define NB_CONFORMANCE_H

#include "nabla.h"

#include <stdbool.h>
#include <stdint.h>

#define CONF_MAX_IN 4

/* A tensor on the host: logical values (row-major, numel doubles) of a dtype. Inputs hold the
 * exact values the device receives (float32 inputs are rounded to float before anything else). */
typedef struct conf_host {
    nb_dtype dtype;
    int32_t ndim;
    int64_t shape[NB_MAX_DIMS];
    double *v;
} conf_host;

int64_t conf_numel(const conf_host *h);
/* Allocates h->v for ndim/shape (zeroed); false when out of memory. */
bool conf_host_alloc(conf_host *h, nb_dtype dtype, int32_t ndim, const int64_t *shape);
void conf_host_free(conf_host *h);

/* reference.c's rules that reference_nn.c shares: floating dtypes, rounding a result to its
 * dtype, a negative dim counted from the end, max with NaN propagating (first of equals kept). */
bool conf_is_float(nb_dtype d);
void conf_finish(conf_host *out);
int32_t conf_norm_dim(int32_t d, int32_t ndim);
double conf_nan_max(double a, double b);

/* Op parameters, meaning per op (written next to each adapter in optable.c). */
typedef struct conf_params {
    int32_t dims[NB_MAX_DIMS]; /* reduction dims; ndims 0 = all */
    int32_t ndims;
    bool keepdim;
    double s[4];  /* scalars: the scalar operand, clamp bounds, norm p, ... */
    int64_t k[8]; /* integers: dim, correction, conv/pool geometry, reduction mode */
} conf_params;

/* How a sample input's values are made. */
typedef enum conf_domain {
    CONF_ANY,     /* uniform in [-2, 2]; integers in [-4, 4] (u8: [0, 8]) */
    CONF_POS,     /* uniform in [0.5, 2]; integers in [1, 4] */
    CONF_NONZERO, /* |x| in [0.5, 2] with a random sign; integers in [1, 4] with a sign */
    CONF_UNIT,    /* uniform in [0, 1] (targets of losses) */
    CONF_BOOL,    /* 0 or 1 */
} conf_domain;

/* How the tensor handed to the op is made from the base made by nb_from_data. */
typedef enum conf_view {
    CONF_PLAIN,     /* the base itself */
    CONF_TRANSPOSE, /* nb_transpose(base, a, b): non-contiguous */
    CONF_EXPAND,    /* nb_expand(base, to): stride 0 on the expanded dims */
    CONF_NARROW,    /* nb_narrow(base, a, b, c): an offset view */
    CONF_SELECT,    /* nb_select(base, a, b): an offset view with one dim fewer */
} conf_view;

/* Sample input. dtype -1 means "the dtype under test"; anything else is fixed (index tensors
 * are int64, conditions bool). `values`, when given, are cycled over the base's elements. */
typedef struct conf_input {
    nb_shape base;
    int dtype;
    conf_domain domain;
    const double *values;
    int32_t n_values;
    conf_view view;
    int64_t a, b, c;
    nb_shape to;
} conf_input;

enum {
    CONF_FLOAT_ONLY = 1, /* values integers cannot hold (NaN, inf, fractions that matter) */
    CONF_NO_GRAD = 2,    /* not differentiable here (ties, kinks, poles): skip gradients */
    CONF_ZERO_SIGN = 4,  /* zeros must also match in sign (-0.0 is not 0.0) */
};

typedef struct conf_sample {
    const char *name;
    int32_t n_in;
    conf_input in[CONF_MAX_IN];
    conf_params p;
    int flags;
} conf_sample;

/* An error input: the call must return NULL with a non-OK status and a message. A NULL
 * argument is given with null_arg = 1 + its position. */
typedef struct conf_error {
    const char *name;
    int32_t n_in;
    conf_input in[CONF_MAX_IN];
    conf_params p;
    int null_arg;
} conf_error;

/* Adapter: calls the public function with the prepared inputs (a new tensor or NULL). */
typedef nb_tensor *(*conf_run_fn)(nb_tensor *const *x, int32_t n, const conf_params *p);
/* Reference: fills *out (allocating out->v) from host inputs; false when the op is an error
 * for these inputs (the core must then fail too). */
typedef bool (*conf_ref_fn)(const conf_host *x, int32_t n, const conf_params *p, conf_host *out);

/* Which dtype the op's kernel is registered under, for nb_device_has_kernel. */
typedef enum conf_kdtype {
    CONF_KD_SAME,  /* the dtype under test */
    CONF_KD_FLOAT, /* float32 for integer inputs (exp, log, true division, ...) */
    CONF_KD_BOOL,  /* logical ops run on bool */
    CONF_KD_DOUBLE, /* float64 for integer inputs (comparisons with a scalar) */
} conf_kdtype;

typedef struct conf_tol {
    double rtol, atol;
} conf_tol;

typedef struct conf_op {
    const char *name;   /* row of the matrix, also --op NAME */
    const char *api;    /* the nabla.h function it calls */
    const char *kernel; /* op-list name of a native kernel for it; NULL: always a composite */
    const char *needs;  /* the tier-1 kernels it runs on, space separated (fallback detection) */
    conf_kdtype kdtype;
    unsigned dtypes;    /* bit (1 << dtype) for each dtype it takes */
    bool differentiable;
    double tol_scale;   /* multiplies the per-dtype tolerances (accumulating ops); 0 means 1 */
    conf_run_fn run;
    conf_ref_fn ref;
    const conf_sample *samples;
    int32_t n_samples;
    const conf_error *errors;
    int32_t n_errors;
} conf_op;

extern const conf_op conf_ops[];
extern const int32_t conf_n_ops;
/* Tolerances per dtype (next to the table in optable.c). */
conf_tol conf_tolerance(const conf_op *op, nb_dtype dtype);
/* True when the adapter's function is missing from this libnabla (weakly linked). */
bool conf_op_available(const conf_op *op);
/* False for the ops the table lists as once-differentiable (create_graph must be refused). */
bool conf_op_twice_differentiable(const conf_op *op);
/* True for a sample on the op's kink (optable.c): no gradgradcheck, and no comparison of a
 * narrow float's gradient with a wider one's. */
bool conf_sample_at_kink(const conf_op *op, const conf_sample *s);

/* ---- reference.c: float64 loops, one per op ---- */
#define CONF_REF_LIST_(X)                                                                  \
    X(neg) X(abs) X(exp) X(log) X(sqrt) X(rsqrt) X(sin) X(cos) X(tanh) X(sigmoid) X(relu)  \
    X(sign) X(floor) X(ceil) X(round) X(logical_not)                                       \
    X(add) X(sub) X(mul) X(div) X(pow) X(maximum) X(minimum)                               \
    X(add_scalar) X(sub_scalar) X(mul_scalar) X(div_scalar) X(pow_scalar) X(rsub_scalar)   \
    X(rdiv_scalar) X(maximum_scalar) X(minimum_scalar)                                     \
    X(eq) X(ne) X(lt) X(le) X(gt) X(ge) X(eq_scalar) X(ne_scalar) X(lt_scalar)             \
    X(le_scalar) X(gt_scalar) X(ge_scalar) X(logical_and) X(logical_or) X(logical_xor)     \
    X(where) X(clamp) X(sum) X(mean) X(prod) X(amax) X(amin) X(argmax) X(argmin) X(var)    \
    X(std) X(norm) X(mm) X(bmm) X(matmul) X(gather) X(index_select) X(scatter_add) X(cat)  \
    X(stack) X(copy) X(to_dtype) X(softmax) X(log_softmax) X(conv2d) X(max_pool2d)         \
    X(avg_pool2d) X(linear) X(mse_loss) X(cross_entropy) X(bce_with_logits)
#define CONF_REF_DECL_(name)                                                               \
    bool conf_ref_##name(const conf_host *x, int32_t n, const conf_params *p, conf_host *out);
CONF_REF_LIST_(CONF_REF_DECL_)

/* Creation ops checked bit for bit: fill and arange against the SDK's conversion rule, random
 * fills against the same call on the cpu device (input 0 only gives dtype and shape). */
#define CONF_REF_CREATION_LIST_(X) X(full) X(arange) X(rand) X(randn)
CONF_REF_CREATION_LIST_(CONF_REF_DECL_)

/* ---- check.c: running one op on one device ---- */

typedef enum conf_result {
    CONF_NONE = 0, /* not run (dtype not taken) */
    CONF_PASS,
    CONF_COMPOSITE,
    CONF_FALLBACK,
    CONF_UNSUPPORTED,
    CONF_FAIL,
    CONF_RESULT_COUNT
} conf_result;

const char *conf_result_name(conf_result r);

typedef struct conf_counts {
    int64_t n[CONF_RESULT_COUNT];
} conf_counts;

typedef struct conf_cell_out {
    conf_result cell;      /* the worst result of the cell */
    conf_counts counts;    /* per check */
    conf_counts gradgrad;  /* the gradgradchecks among them (float64 cells of differentiable ops) */
} conf_cell_out;

/* Runs every sample of op at dtype on device (forward; gradients when dtype is float64 and the
 * op is differentiable). Failures are printed to stdout as they happen. */
void conf_check_cell(const conf_op *op, nb_dtype dtype, const char *device, conf_cell_out *out);
/* Runs the op's error inputs on device. */
void conf_check_errors(const conf_op *op, const char *device, conf_cell_out *out);
extern bool conf_verbose;

#endif
