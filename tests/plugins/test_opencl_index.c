/* test_opencl_index.c - the opencl plugin's index kernels (opencl_index.c): gather and
 * scatter_add, with the late report of a bad index. Part of test_opencl_kernels (main and helpers
 * in test_opencl_kernels.c). */
#include "test_opencl.h"

void gather_and_scatter_add_along_a_dim(void **state)
{
    (void)state;
    enum { R = 4, C = 5, J = 3 };
    float data[R * C];
    for (int k = 0; k < R * C; k++)
        data[k] = (float)k * 0.5f;
    int64_t idx[R * J] = {0, 4, 4, 1, 1, 2, 3, 0, 3, 2, 4, 0};
    void *hd = buf_from(data, sizeof data), *hi = buf_from(idx, sizeof idx);
    void *ho = buf_new(R * J * sizeof(float));
    tview vd = view(hd, 0, NB_DTYPE_F32, 2, (int64_t[]){R, C}, NULL);
    tview vi = view(hi, 0, NB_DTYPE_I64, 2, (int64_t[]){R, J}, NULL);
    tview vo = view(ho, 0, NB_DTYPE_F32, 2, (int64_t[]){R, J}, NULL);
    tview in[2] = {vd, vi};
    int64_t dim1[8] = {1};
    assert_int_equal(run("gather", NB_DTYPE_F32, &vo, 2, in, NULL, dim1), NB_OK);
    float got[R * J];
    buf_read(ho, got, sizeof got);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++)
            assert_true(got[r * J + j] == data[r * C + idx[r * J + j]]);

    /* scatter_add along dim 1: out (R,C) starts at 1, duplicates accumulate */
    float acc[R * C], src[R * J];
    for (int k = 0; k < R * C; k++)
        acc[k] = 1;
    for (int k = 0; k < R * J; k++)
        src[k] = (float)(k + 1);
    void *hs = buf_from(src, sizeof src), *ha = buf_from(acc, sizeof acc);
    tview va = view(ha, 0, NB_DTYPE_F32, 2, (int64_t[]){R, C}, NULL);
    tview sin_[2] = {vi, view(hs, 0, NB_DTYPE_F32, 2, (int64_t[]){R, J}, NULL)};
    assert_int_equal(run("scatter_add", NB_DTYPE_F32, &va, 2, sin_, NULL, dim1), NB_OK);
    float gs[R * C];
    buf_read(ha, gs, sizeof gs);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++)
            acc[r * C + idx[r * J + j]] += src[r * J + j];
    for (int k = 0; k < R * C; k++)
        expect_close("scatter_add", (size_t)k, gs[k], acc[k], 0, 0);

    /* scatter_add along dim 0 of an i64 (C) vector from 7 indices */
    int64_t vidx[7] = {2, 0, 2, 4, 2, 1, 0}, vsrc[7] = {1, 2, 3, 4, 5, 6, 7}, vout[C] = {0};
    void *hvi = buf_from(vidx, sizeof vidx), *hvs = buf_from(vsrc, sizeof vsrc);
    void *hvo = buf_from(vout, sizeof vout);
    tview vvo = view(hvo, 0, NB_DTYPE_I64, 1, (int64_t[]){C}, NULL);
    tview vin[2] = {view(hvi, 0, NB_DTYPE_I64, 1, (int64_t[]){7}, NULL),
                    view(hvs, 0, NB_DTYPE_I64, 1, (int64_t[]){7}, NULL)};
    int64_t dim0[8] = {0};
    assert_int_equal(run("scatter_add", NB_DTYPE_I64, &vvo, 2, vin, NULL, dim0), NB_OK);
    int64_t gv[C];
    buf_read(hvo, gv, sizeof gv);
    for (int k = 0; k < 7; k++)
        vout[vidx[k]] += vsrc[k];
    for (int k = 0; k < C; k++)
        assert_int_equal(gv[k], vout[k]);

    /* an index out of range is found on the device: the op is queued without waiting, and the
     * next synchronisation point (a read or synchronize) is the error naming it, once */
    idx[5] = 5;
    assert_int_equal(P->write(0, hi, 0, idx, sizeof idx), NB_OK);
    assert_int_equal(run("gather", NB_DTYPE_F32, &vo, 2, in, NULL, dim1), NB_OK);
    last_error[0] = '\0';
    assert_int_equal(P->read(0, ho, 0, got, sizeof got), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "gather: index 5 is out of range for dim 1 of size 5"));
    assert_int_equal(P->read(0, ho, 0, got, sizeof got), NB_OK); /* reported once */
    assert_true(got[5] == 0.0f); /* the bad element was skipped, not read out of bounds */
    assert_int_equal(run("scatter_add", NB_DTYPE_F32, &va, 2, sin_, NULL, dim1), NB_OK);
    last_error[0] = '\0';
    assert_int_equal(P->synchronize(0), NB_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(last_error, "scatter_add: index 5 is out of range"));
    assert_int_equal(P->synchronize(0), NB_OK);
    P->free(0, hd);
    P->free(0, hi);
    P->free(0, ho);
    P->free(0, hs);
    P->free(0, ha);
    P->free(0, hvi);
    P->free(0, hvs);
    P->free(0, hvo);
}

/* scatter_add of R lines of L indices each into (R, M) along dim 1, in dtype t (f32 or i64);
 * the index at bad_at (if >= 0) is M, out of range. Checks against a serial loop on the host,
 * and the late report of the bad index. */
static void scatter_case(nb_dtype t, int64_t R, int64_t L, int64_t M, int64_t bad_at)
{
    size_t n = (size_t)(R * L), no = (size_t)(R * M);
    int64_t *idx = malloc(n * sizeof *idx);
    double *src = malloc(n * sizeof *src), *ref = malloc(no * sizeof *ref);
    void *sbuf = malloc(n * 8), *obuf = malloc(no * 8), *got = malloc(no * 8);
    assert_true(idx && src && ref && sbuf && obuf && got);
    unsigned seed = 5;
    for (size_t k = 0; k < n; k++) {
        seed = seed * 1664525u + 1013904223u;
        idx[k] = (int64_t)((seed >> 8) % (unsigned)M);
        src[k] = t == NB_DTYPE_F32 ? (double)frand(&seed) : (double)(int)(seed % 1000u) - 500;
    }
    if (bad_at >= 0)
        idx[bad_at] = M;
    for (size_t k = 0; k < no; k++)
        ref[k] = 1;
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < L; j++)
            if (idx[r * L + j] < M)
                ref[r * M + idx[r * L + j]] += src[r * L + j];
    for (size_t k = 0; k < n; k++)
        if (t == NB_DTYPE_F32)
            ((float *)sbuf)[k] = (float)src[k];
        else
            ((int64_t *)sbuf)[k] = (int64_t)src[k];
    for (size_t k = 0; k < no; k++)
        if (t == NB_DTYPE_F32)
            ((float *)obuf)[k] = 1;
        else
            ((int64_t *)obuf)[k] = 1;
    void *hi = buf_from(idx, n * 8), *hs = buf_from(sbuf, n * esize[t]);
    void *ho = buf_from(obuf, no * esize[t]);
    tview vo = view(ho, 0, t, 2, (int64_t[]){R, M}, NULL);
    tview in[2] = {view(hi, 0, NB_DTYPE_I64, 2, (int64_t[]){R, L}, NULL),
                   view(hs, 0, t, 2, (int64_t[]){R, L}, NULL)};
    int64_t dim1[8] = {1};
    assert_int_equal(run("scatter_add", t, &vo, 2, in, NULL, dim1), NB_OK);
    last_error[0] = '\0';
    nb_status st = P->read(0, ho, 0, got, no * esize[t]);
    if (bad_at >= 0) {
        assert_int_equal(st, NB_INDEX_OUT_OF_RANGE);
        assert_non_null(strstr(last_error, "scatter_add: index"));
        assert_non_null(strstr(last_error, "is out of range for dim 1"));
        buf_read(ho, got, no * esize[t]);
    } else {
        assert_int_equal(st, NB_OK);
    }
    for (size_t k = 0; k < no; k++)
        if (t == NB_DTYPE_F32)
            expect_close("scatter_add", k, ((float *)got)[k], ref[k], 2e-3, 1e-5);
        else
            assert_int_equal(((int64_t *)got)[k], (int64_t)ref[k]);
    P->free(0, hi);
    P->free(0, hs);
    P->free(0, ho);
    free(idx), free(src), free(ref), free(sbuf), free(obuf), free(got);
}

/* A 1-d scatter_add (one line) and one of three long lines take the chunked path; the same
 * with it forced serial (NABLA_OPENCL_SCATTER) and forced chunked on a short line. */
void scatter_add_of_few_long_lines_runs_in_chunks(void **state)
{
    (void)state;
    const char *old = getenv("NABLA_OPENCL_SCATTER");
    for (int mode = 0; mode < 2; mode++) {
        if (mode == 1)
            setenv("NABLA_OPENCL_SCATTER", "serial", 1);
        scatter_case(NB_DTYPE_F32, 1, 100000, 37, -1);
        scatter_case(NB_DTYPE_I64, 1, 100000, 37, 77777);
        scatter_case(NB_DTYPE_F32, 3, 20000, 11, 3 * 20000 - 1);
    }
    setenv("NABLA_OPENCL_SCATTER", "chunks", 1);
    scatter_case(NB_DTYPE_F32, 2, 9, 4, 3);
    scatter_case(NB_DTYPE_I64, 1, 1, 1, -1);
    if (old)
        setenv("NABLA_OPENCL_SCATTER", old, 1);
    else
        unsetenv("NABLA_OPENCL_SCATTER");
}
