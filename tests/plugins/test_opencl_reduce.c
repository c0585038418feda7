/* test_opencl_reduce.c - the opencl plugin's reduce kernels (opencl_reduce.c): reductions over a
 * dim and the long full sum. Part of test_opencl_kernels (main and helpers in
 * test_opencl_kernels.c). */
#include "test_opencl.h"

/* in is (4,5,6) at element offset 3; reduce dim 1 into a (4,1,6) output. */
void reductions_over_a_middle_dim(void **state)
{
    (void)state;
    enum { A = 4, B = 5, C = 6, OFF = 3 };
    float x[OFF + A * B * C];
    int32_t xi[OFF + A * B * C];
    unsigned seed = 3;
    for (int k = 0; k < OFF + A * B * C; k++) {
        x[k] = frand(&seed);
        xi[k] = (int32_t)(x[k] * 10);
    }
    x[OFF + (1 * B + 2) * C + 4] = NAN; /* row (1, :, 4) holds a NaN */
    x[OFF + (2 * B + 1) * C + 0] = x[OFF + (2 * B + 3) * C + 0] = 9; /* a tie: first wins */
    void *hx = buf_from(x, sizeof x), *hi = buf_from(xi, sizeof xi);
    void *ho = buf_new(A * C * 8);
    int64_t ishape[3] = {A, B, C}, oshape[3] = {A, 1, C};
    tview in = view(hx, OFF, NB_DTYPE_F32, 3, ishape, NULL);
    tview ini = view(hi, OFF, NB_DTYPE_I32, 3, ishape, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 3, oshape, NULL);
    tview outi = view(ho, 0, NB_DTYPE_I32, 3, oshape, NULL);
    tview outl = view(ho, 0, NB_DTYPE_I64, 3, oshape, NULL);
    const char *ops[] = {"sum", "prod", "max", "min", "argmax", "argmin"};
    int64_t dim1[8] = {1};
    for (int o = 0; o < 6; o++) {
        for (int integer = 0; integer < 2; integer++) {
            const tview *o_ = o >= 4 ? &outl : integer ? &outi : &out;
            assert_int_equal(run(ops[o], integer ? NB_DTYPE_I32 : NB_DTYPE_F32, o_, 1,
                                 integer ? &ini : &in, NULL, dim1), NB_OK);
            union { float f[A * C]; int32_t i[A * C]; int64_t l[A * C]; } got;
            buf_read(ho, &got, sizeof got);
            for (int a = 0; a < A; a++)
                for (int c = 0; c < C; c++) {
                    double acc = o == 0 ? 0 : o == 1 ? 1 : NAN;
                    int64_t best = -1;
                    for (int b = 0; b < B; b++) {
                        int k = OFF + (a * B + b) * C + c;
                        double v = integer ? xi[k] : x[k];
                        if (o == 0)
                            acc += v;
                        else if (o == 1)
                            acc *= v;
                        else if (b == 0 || isnan(v) ||
                                 (!isnan(acc) && (o == 2 || o == 4 ? v > acc : v < acc))) {
                            if (!(b > 0 && isnan(acc))) {
                                acc = v;
                                best = b;
                            }
                        }
                    }
                    size_t k = (size_t)(a * C + c);
                    if (o >= 4)
                        assert_int_equal(got.l[k], best);
                    else if (integer)
                        assert_int_equal(got.i[k], (int32_t)acc);
                    else
                        expect_close(ops[o], k, got.f[k], acc, 1e-6, 1e-6);
                }
        }
    }
    P->free(0, hx);
    P->free(0, hi);
    P->free(0, ho);
}

/* A full sum of many elements takes the split (two-pass) path. */
void full_sum_of_a_long_vector_is_accurate(void **state)
{
    (void)state;
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    unsigned seed = 11;
    for (int k = 0; k < N; k++)
        x[k] = frand(&seed) + 1.0f;
    x[N - 3] = 50; /* the maximum is late and appears once */
    double ref = 0;
    for (int k = 0; k < N; k++)
        ref += x[k];
    void *hx = buf_from(x, N * sizeof *x), *ho = buf_new(8);
    int64_t shape[1] = {N}, one[1] = {1};
    tview in = view(hx, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview out = view(ho, 0, NB_DTYPE_F32, 1, one, NULL);
    assert_int_equal(run("sum", NB_DTYPE_F32, &out, 1, &in, NULL, NULL), NB_OK);
    float got;
    buf_read(ho, &got, sizeof got);
    /* one f32 rounding of the f64 sum, plus a little for the tree */
    expect_close("sum", 0, got, ref, 0, 1e-6);
    tview outl = view(ho, 0, NB_DTYPE_I64, 1, one, NULL);
    int64_t dim0[8] = {0}, idx;
    assert_int_equal(run("argmax", NB_DTYPE_F32, &outl, 1, &in, NULL, dim0), NB_OK);
    buf_read(ho, &idx, sizeof idx);
    assert_int_equal(idx, N - 3);
    free(x);
    P->free(0, hx);
    P->free(0, ho);
}
