/* test_opencl_kernels.c - the opencl plugin tested on its own: dlopens the built .so (path in
 * argv[1]), runs kernels on device 0 through the plugin table and compares with plain C loops
 * (and, for 16 bits, with the cpu plugin's kernels when argv[2] names it).
 * This file holds main, the helpers (test_opencl.h) and the device checks; the op families'
 * tests are in test_opencl_<family>.c, as the plugin's kernels are in opencl_<family>.c.
 * Exits 77 (skipped) when the plugin finds no OpenCL device. */
#include <dlfcn.h>

#include "test_opencl.h"

const nb_plugin *P, *CPU;
int has_f64;
char last_error[2048];
nb_status last_status;

static nb_status host_error(nb_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    last_status = st;
    return st;
}

static void host_log(int level, const char *fmt, ...)
{
    if (level < NB_LOG_WARN && !getenv("NABLA_LOG"))
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const nb_host host = {NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR, sizeof(nb_host),
                             host_error, host_log};

/* ---- helpers ---- */

const size_t esize[NB_DTYPE_COUNT] = {
    [NB_DTYPE_F32] = 4,  [NB_DTYPE_F64] = 8, [NB_DTYPE_I32] = 4, [NB_DTYPE_I64] = 8,
    [NB_DTYPE_BOOL] = 1, [NB_DTYPE_U8] = 1,  [NB_DTYPE_F16] = 2, [NB_DTYPE_BF16] = 2};

static nb_kernel_fn kernel_of(const nb_plugin *pl, const char *op, nb_dtype t)
{
    for (size_t k = 0; k < pl->n_kernels; k++)
        if (strcmp(pl->kernels[k].op, op) == 0 && pl->kernels[k].dtype == t)
            return pl->kernels[k].fn;
    fail_msg("no kernel %s for dtype %d in %s", op, (int)t, pl->name);
    return NULL;
}

nb_kernel_fn kernel(const char *op, nb_dtype t) { return kernel_of(P, op, t); }

void *buf_new_on(const nb_plugin *pl, size_t bytes)
{
    void *h = NULL;
    assert_int_equal(pl->alloc(0, bytes, &h), NB_OK);
    assert_non_null(h);
    return h;
}

void *buf_from_on(const nb_plugin *pl, const void *data, size_t bytes)
{
    void *h = buf_new_on(pl, bytes);
    assert_int_equal(pl->write(0, h, 0, data, bytes), NB_OK);
    return h;
}

void buf_read_on(const nb_plugin *pl, void *h, void *dst, size_t bytes)
{
    assert_int_equal(pl->read(0, h, 0, dst, bytes), NB_OK);
}

void *buf_new(size_t bytes) { return buf_new_on(P, bytes); }
void *buf_from(const void *data, size_t bytes) { return buf_from_on(P, data, bytes); }
void buf_read(void *h, void *dst, size_t bytes) { buf_read_on(P, h, dst, bytes); }

/* strides NULL: contiguous */
tview view(void *h, int64_t off_elems, nb_dtype t, int ndim, const int64_t *shape,
           const int64_t *strides)
{
    tview v;
    memset(&v, 0, sizeof v);
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        v.shape[d] = shape[d];
        v.strides[d] = strides ? strides[d] : s;
        s *= shape[d];
    }
    v.op = (nb_operand){h, (size_t)off_elems * esize[t], t, ndim, v.shape, v.strides};
    return v;
}

/* operands hold pointers into their tview: fix them after copying by value */
nb_operand opnd(const tview *v)
{
    nb_operand o = v->op;
    o.shape = v->shape;
    o.strides = v->strides;
    return o;
}

nb_status run(const char *op, nb_dtype t, const tview *out, int n_in, const tview *in,
              const double *f, const int64_t *i)
{
    return run_on(P, op, t, out, n_in, in, f, i);
}

nb_status run_on(const nb_plugin *pl, const char *op, nb_dtype t, const tview *out, int n_in,
                 const tview *in, const double *f, const int64_t *i)
{
    nb_operand o = opnd(out), ins[4];
    for (int k = 0; k < n_in; k++)
        ins[k] = opnd(&in[k]);
    nb_kernel_args a;
    memset(&a, 0, sizeof a);
    a.device = 0;
    a.n_in = n_in;
    a.out = &o;
    a.in = ins;
    /* callers pass arrays of 8 (nb_kernel_args.f/i), zero-filled past what the op reads */
    for (int k = 0; f && k < 8; k++)
        a.f[k] = f[k];
    for (int k = 0; i && k < 8; k++)
        a.i[k] = i[k];
    last_error[0] = '\0';
    last_status = NB_OK;
    return kernel_of(pl, op, t)(&a);
}

/* |got - ref| <= atol + rtol * |ref|, NaN only matching NaN */
void expect_close(const char *what, size_t k, double got, double ref, double atol,
                  double rtol)
{
    if (isnan(ref) && isnan(got))
        return;
    if (isinf(ref) && got == ref)
        return;
    if (!(fabs(got - ref) <= atol + rtol * fabs(ref)))
        fail_msg("%s[%zu]: got %.9g, expected %.9g (atol %g, rtol %g)", what, k, got, ref, atol,
                 rtol);
}

float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 65536.0f * 4.0f - 2.0f;
}

/* ---- tests ---- */

static void device_reports_a_name_and_rejects_bad_buffers(void **state)
{
    (void)state;
    char name[256] = "";
    assert_int_equal(P->device_name(0, name, sizeof name), NB_OK);
    assert_true(strlen(name) > 0);
    void *h = NULL;
    assert_int_equal(P->alloc(0, 0, &h), NB_INVALID_ARGUMENT);
    assert_int_equal(P->alloc(P->device_count(), 16, &h), NB_DEVICE_OUT_OF_RANGE);
    h = buf_new(16);
    char tmp[32];
    assert_int_equal(P->read(0, h, 8, tmp, 16), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "do not fit"));
    assert_int_equal(P->write(0, h, 0, NULL, 4), NB_NULL_ARGUMENT);
    P->free(0, h);
    P->free(0, NULL);
}

static void bad_operands_are_errors_not_crashes(void **state)
{
    (void)state;
    void *h = buf_new(16 * sizeof(float));
    int64_t shape[1] = {16}, big[1] = {17}, half[1] = {8};
    tview ok = view(h, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview over = view(h, 0, NB_DTYPE_F32, 1, big, NULL);
    tview small = view(h, 0, NB_DTYPE_F32, 1, half, NULL);
    tview shifted = view(h, 1, NB_DTYPE_F32, 1, shape, NULL);
    tview wrong = view(h, 0, NB_DTYPE_I32, 1, shape, NULL);
    assert_int_equal(run("neg", NB_DTYPE_F32, &ok, 1, &small, NULL, NULL), NB_SHAPE_MISMATCH);
    assert_int_equal(run("neg", NB_DTYPE_F32, &over, 1, &over, NULL, NULL),
                     NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "outside its buffer"));
    assert_int_equal(run("neg", NB_DTYPE_F32, &ok, 1, &shifted, NULL, NULL),
                     NB_INDEX_OUT_OF_RANGE);
    assert_int_equal(run("add", NB_DTYPE_F32, &ok, 1, &ok, NULL, NULL), NB_INVALID_ARGUMENT);
    tview two[2] = {ok, wrong};
    assert_int_equal(run("add", NB_DTYPE_F32, &ok, 2, two, NULL, NULL), NB_DTYPE_UNSUPPORTED);
    nb_kernel_args a;
    memset(&a, 0, sizeof a);
    assert_int_equal(kernel("neg", NB_DTYPE_F32)(&a), NB_INVALID_ARGUMENT);
    assert_int_equal(kernel("fill", NB_DTYPE_F32)(NULL), NB_NULL_ARGUMENT);
    P->free(0, h);
}

/* a 1-d view of n elements of dtype t over a fresh buffer holding data */
tview vec(void *data, nb_dtype t, int64_t n, void **h)
{
    *h = data ? buf_from(data, (size_t)n * esize[t]) : buf_new((size_t)n * esize[t]);
    return view(*h, 0, t, 1, (int64_t[]){n}, NULL);
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "nabla_plugin_opencl.so";
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!dl) {
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        return 1;
    }
    nb_plugin_entry_fn entry = (nb_plugin_entry_fn)dlsym(dl, NB_PLUGIN_ENTRY_SYMBOL);
    P = entry ? entry(&host) : NULL;
    if (!P) {
        fprintf(stderr, "%s: no plugin table (%s)\n", path, last_error);
        return 1;
    }
    if (P->device_count() == 0) {
        fprintf(stderr, "skipped: %s\n", P->status_note ? P->status_note() : "no device");
        return 77;
    }
    for (size_t k = 0; k < P->n_kernels; k++)
        has_f64 |= P->kernels[k].dtype == NB_DTYPE_F64;
    char name[256] = "";
    P->device_name(0, name, sizeof name);
    fprintf(stderr, "opencl:0 is %s (%s f64)\n", name, has_f64 ? "with" : "without");
    void *cdl = NULL;
    if (argc > 2) { /* the cpu plugin, for the 16-bit comparisons */
        cdl = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
        nb_plugin_entry_fn ce = cdl ? (nb_plugin_entry_fn)dlsym(cdl, NB_PLUGIN_ENTRY_SYMBOL) : NULL;
        CPU = ce ? ce(&host) : NULL;
        if (!CPU) {
            fprintf(stderr, "cannot load the cpu plugin %s: %s\n", argv[2],
                    cdl ? last_error : dlerror());
            return 1;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(device_reports_a_name_and_rejects_bad_buffers),
        cmocka_unit_test(binary_ops_follow_strides_and_broadcast),
        cmocka_unit_test(unary_and_scalar_ops_match_libm),
        cmocka_unit_test(copy_casts_between_every_dtype),
        cmocka_unit_test(fill_and_arange_cover_integer_dtypes),
        cmocka_unit_test(reductions_over_a_middle_dim),
        cmocka_unit_test(full_sum_of_a_long_vector_is_accurate),
        cmocka_unit_test(matmul_handles_transposes_batch_stride_0_and_beta),
        cmocka_unit_test(matmul_f64_matches_reference),
        cmocka_unit_test(gather_and_scatter_add_along_a_dim),
        cmocka_unit_test(scatter_add_of_few_long_lines_runs_in_chunks),
        cmocka_unit_test(random_ops_match_philox_on_the_host),
        cmocka_unit_test(where_and_logical_ops_read_any_dtype),
        cmocka_unit_test(softmax_family_matches_reference),
        cmocka_unit_test(optimizer_steps_match_torch_rules),
        cmocka_unit_test(conv2d_and_its_gradients_match_direct_loops),
        cmocka_unit_test(direct_convs_mask_row_ends_padding_and_strides),
        cmocka_unit_test(max_pool2d_picks_first_maximum_and_routes_gradients),
        cmocka_unit_test(bad_operands_are_errors_not_crashes),
        cmocka_unit_test(float_to_integer_follows_the_sdk_rule),
        cmocka_unit_test(clamp_rounds_integer_bounds_inward_and_a_nan_bound_wins),
        cmocka_unit_test(signed_zeros_come_out_as_on_the_cpu),
        cmocka_unit_test(integer_arange_and_scalar_compares_are_exact_past_2_to_24),
        cmocka_unit_test(integer_arithmetic_wraps),
        cmocka_unit_test(integer_pow_and_uint8_arithmetic_match_torch),
        cmocka_unit_test(matmul_with_beta_0_ignores_what_out_held),
        cmocka_unit_test(every_16_bit_pattern_converts_as_the_sdk_does),
        cmocka_unit_test(integers_and_doubles_round_once_into_16_bits),
        cmocka_unit_test(elementwise_ops_compute_in_float_and_round_once),
        cmocka_unit_test(reductions_accumulate_in_float),
        cmocka_unit_test(matmul_widens_to_float32_and_rounds_once),
        cmocka_unit_test(softmax_rows_compute_in_float),
        cmocka_unit_test(conv2d_and_pooling_sum_in_float_and_round_once),
        cmocka_unit_test(index_ops_move_bits_and_scatter_add_sums_in_float),
        cmocka_unit_test(arange_random_and_logical_ops_round_the_float32_values),
        cmocka_unit_test(optimizer_steps_compute_in_float_and_round_each_state_once),
        cmocka_unit_test(every_op_has_16_bit_kernels_and_mixed_dtypes_are_refused),
        cmocka_unit_test(sixteen_bit_results_match_the_cpu_plugins),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (CPU && CPU->shutdown)
        CPU->shutdown();
    if (cdl)
        dlclose(cdl);
    if (P->shutdown)
        P->shutdown();
    dlclose(dl); /* opened RTLD_NODELETE: leak checkers can still name the ICD loader's frames */
    return failed ? 1 : 0;
}
