/* opencl_blas.c - GEMM for the opencl plugin: batched strided matmul through CLBlast's
 * (strided-batched) Sgemm/Dgemm where the operands' strides fit a BLAS layout, the own tiled
 * kernel (matmul.cl) where they do not or where the plugin was built without CLBlast. */
#include "opencl_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if NBK_HAVE_CLBLAST
#include <clblast_c.h>
#endif

#if NBK_HAVE_CLBLAST
/* NABLA_OPENCL_GEMM=own keeps CLBlast out (for comparing the two, and for testing the own
 * kernel on a build with CLBlast). */
static int use_clblast(void)
{
    const char *e = getenv("NABLA_OPENCL_GEMM");
    return !(e && strcmp(e, "own") == 0);
}
#endif

const char *ocl_gemm_name(void)
{
#if NBK_HAVE_CLBLAST
#define OCL_STR_(x) #x
#define OCL_STR(x) OCL_STR_(x)
    /* the version of the header built against; Debian pins the library to the same */
    return use_clblast() ? "CLBlast " OCL_STR(CLBLAST_VERSION_MAJOR) "." OCL_STR(
                               CLBLAST_VERSION_MINOR) "." OCL_STR(CLBLAST_VERSION_PATCH)
                         : "own tiled kernel (NABLA_OPENCL_GEMM=own)";
#else
    return "own tiled kernel (built without CLBlast)";
#endif
}

/* ---- The own kernel ---- */

/* g: out (batch, m, n) = alpha * a (batch, m, k) @ b (batch, k, n) + beta * out, any strides. */
static nb_status own_gemm(ocl_dev *d, const char *op, nb_dtype t, const nbk_mm *g, cl_mem out,
                          cl_mem a, cl_mem b, double alpha, double beta)
{
    size_t wg;
    cl_kernel k = ocl_kernel(d, t, OCL_K_matmul, op, &wg);
    if (!k)
        return NB_DEVICE_ERROR;
    ocl_scalar sa = ocl_scalar_of(t, alpha), sb = ocl_scalar_of(t, beta);
    ocl_arg args[] = {OCL_ARG(out), OCL_ARG(a), OCL_ARG(b), {sizeof *g, g}, SARG(sa), SARG(sb)};
    if (wg >= 256) {
        size_t local[3] = {16, 16, 1};
        size_t global[3] = {(size_t)(g->n + 15) / 16 * 16, (size_t)(g->m + 15) / 16 * 16,
                            (size_t)g->batch};
        return ocl_launch(d, k, op, 6, args, 3, global, local);
    }
    /* the device cannot run 16x16 work-groups: one work-item per output element */
    k = ocl_kernel(d, t, OCL_K_matmul_naive, op, NULL);
    if (!k)
        return NB_DEVICE_ERROR;
    size_t global[3] = {(size_t)g->n, (size_t)g->m, (size_t)g->batch};
    return ocl_launch(d, k, op, 6, args, 3, global, NULL);
}

/* ---- CLBlast ---- */

#if NBK_HAVE_CLBLAST
static const char *clblast_status_name(CLBlastStatusCode s)
{
    switch (s) {
#define S_(name) case name: return #name;
        S_(CLBlastNotImplemented) S_(CLBlastInvalidMatrixA) S_(CLBlastInvalidMatrixB)
        S_(CLBlastInvalidMatrixC) S_(CLBlastInvalidDimension) S_(CLBlastInvalidLeadDimA)
        S_(CLBlastInvalidLeadDimB) S_(CLBlastInvalidLeadDimC) S_(CLBlastInsufficientMemoryA)
        S_(CLBlastInsufficientMemoryB) S_(CLBlastInsufficientMemoryC)
        S_(CLBlastInsufficientMemoryTemp) S_(CLBlastInvalidBatchCount)
        S_(CLBlastInvalidLocalMemUsage) S_(CLBlastNoDoublePrecision) S_(CLBlastDatabaseError)
        S_(CLBlastUnknownError) S_(CLBlastUnexpectedError)
#undef S_
    default: return (int)s > -1000 ? ocl_err_name((cl_int)s) : "unknown CLBlast status";
    }
}

/* On a CPU runtime CLBlast's "direct" GEMM kernel (one pass, no packing), which it picks below
 * XGEMM_MIN_INDIRECT_SIZE^3 multiply-adds, is slow with its default parameters for PoCL (no
 * tuning for it in CLBlast's database): the nine GEMMs of LeNet's linear layers (64x120x576 and
 * smaller) took 11.6 ms through it and 4.0 ms through the indirect kernel with its packing
 * passes, in one test program on a loaded machine; the 64x10x84 ones stayed about even, below
 * 0.2 ms either way. So for devices that are not
 * GPUs, GEMMs of at least 64^3 multiply-adds go the indirect way. Set once per device, before
 * its first GEMM (the device locked); NABLA_OPENCL_GEMM=clblast-default keeps CLBlast's own
 * threshold. A failed override only keeps CLBlast's choice. */
static void clblast_setup(ocl_dev *d)
{
    if (d->gemm_setup)
        return;
    d->gemm_setup = 1;
    const char *e = getenv("NABLA_OPENCL_GEMM");
    if (d->is_gpu || (e && strcmp(e, "clblast-default") == 0))
        return;
    const char *names[] = {"XGEMM_MIN_INDIRECT_SIZE"};
    const size_t values[] = {64};
    const CLBlastPrecision precs[] = {CLBlastPrecisionSingle, CLBlastPrecisionDouble};
    for (int k = 0; k < (d->has_fp64 ? 2 : 1); k++) {
        CLBlastStatusCode s =
            CLBlastOverrideParameters(d->id, "GemmRoutine", precs[k], 1, names, values);
        if (s != CLBlastSuccess)
            ocl_host->log(NB_LOG_DEBUG, "opencl: CLBlastOverrideParameters(GemmRoutine) for %s "
                          "failed: %s (%d); CLBlast's own GEMM choice stays", d->name,
                          clblast_status_name(s), (int)s);
    }
}

/* One strided-batched row-major GEMM; the caller checked that every stride fits. */
static nb_status clblast_gemm(ocl_dev *d, const char *op, nb_dtype t, int ta, int tb, size_t m,
                              size_t n, size_t k, double alpha, cl_mem a, size_t a_off,
                              size_t lda, size_t a_bs, cl_mem b, size_t b_off, size_t ldb,
                              size_t b_bs, double beta, cl_mem c, size_t c_off, size_t ldc,
                              size_t c_bs, size_t batch)
{
    const CLBlastLayout L = CLBlastLayoutRowMajor;
    const CLBlastTranspose TA = ta ? CLBlastTransposeYes : CLBlastTransposeNo,
                           TB = tb ? CLBlastTransposeYes : CLBlastTransposeNo;
    CLBlastStatusCode s;
    const char *call;
    ocl_lock(d); /* CLBlast enqueues on the device's queue: one caller at a time */
    clblast_setup(d);
    if (t == NB_DTYPE_F32 && batch == 1) {
        call = "CLBlastSgemm";
        s = CLBlastSgemm(L, TA, TB, m, n, k, (float)alpha, a, a_off, lda, b, b_off, ldb,
                         (float)beta, c, c_off, ldc, &d->queue, NULL);
    } else if (t == NB_DTYPE_F32) {
        call = "CLBlastSgemmStridedBatched";
        s = CLBlastSgemmStridedBatched(L, TA, TB, m, n, k, (float)alpha, a, a_off, lda, a_bs, b,
                                       b_off, ldb, b_bs, (float)beta, c, c_off, ldc, c_bs, batch,
                                       &d->queue, NULL);
    } else if (batch == 1) {
        call = "CLBlastDgemm";
        s = CLBlastDgemm(L, TA, TB, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off,
                         ldc, &d->queue, NULL);
    } else {
        call = "CLBlastDgemmStridedBatched";
        s = CLBlastDgemmStridedBatched(L, TA, TB, m, n, k, alpha, a, a_off, lda, a_bs, b, b_off,
                                       ldb, b_bs, beta, c, c_off, ldc, c_bs, batch, &d->queue,
                                       NULL);
    }
    ocl_unlock(d);
    if (s == CLBlastSuccess)
        return NB_OK;
    nb_status st = s == CLBlastTempBufferAllocFailure || s == CLBlastOpenCLOutOfHostMemory
                       ? NB_OUT_OF_MEMORY
                       : NB_DEVICE_ERROR;
    return ERR(st, "opencl %s: %s (%zux%zux%zu, batch %zu) failed: %s (%d)", op, call, m, n, k,
               batch, clblast_status_name(s), (int)s);
}
#endif

#if NBK_HAVE_CLBLAST
/* A (rows x cols) matrix with element strides sr, sc as BLAS sees it: row-major (trans 0, ld
 * = sr) or row-major of the transpose (trans 1, ld = sc). False when neither fits. */
static int blas_form(int64_t rows, int64_t cols, int64_t sr, int64_t sc, int *trans, int64_t *ld)
{
    if ((cols == 1 || sc == 1) && (rows == 1 || sr >= (cols > 1 ? cols : 1))) {
        *trans = 0;
        *ld = rows == 1 ? (cols > 1 ? cols : 1) : sr;
        return *ld >= 1;
    }
    if ((rows == 1 || sr == 1) && (cols == 1 || sc >= (rows > 1 ? rows : 1))) {
        *trans = 1;
        *ld = cols == 1 ? (rows > 1 ? rows : 1) : sc;
        return *ld >= 1;
    }
    return 0;
}
#endif

/* Runs g through CLBlast when every operand fits a BLAS layout; *done says whether it did. */
static nb_status try_clblast(ocl_dev *d, const char *op, nb_dtype t, const nbk_mm *g,
                             cl_mem out, cl_mem a, cl_mem b, double alpha, double beta, int *done)
{
    *done = 0;
#if NBK_HAVE_CLBLAST
    if (!use_clblast() || g->k == 0 || g->m == 0 || g->n == 0 || g->batch == 0)
        return NB_OK;
    if (t == NB_DTYPE_F64 && !d->has_fp64)
        return NB_OK;
    int64_t m = g->m, n = g->n, k = g->k;
    int tc, ta, tb;
    int64_t ldc, lda, ldb;
    if (!blas_form(m, n, g->st[0][1], g->st[0][2], &tc, &ldc) ||
        !blas_form(m, k, g->st[1][1], g->st[1][2], &ta, &lda) ||
        !blas_form(k, n, g->st[2][1], g->st[2][2], &tb, &ldb))
        return NB_OK;
    for (int x = 0; x < 3; x++)
        if (g->st[x][0] < 0 || g->off[x] < 0)
            return NB_OK;
    if (g->batch > 1 && g->st[0][0] == 0)
        return NB_OK; /* every batch writing one output: let the own kernel define it */
    *done = 1;
    if (!tc) /* C = A @ B */
        return clblast_gemm(d, op, t, ta, tb, (size_t)m, (size_t)n, (size_t)k, alpha, a,
                            (size_t)g->off[1], (size_t)lda, (size_t)g->st[1][0], b,
                            (size_t)g->off[2], (size_t)ldb, (size_t)g->st[2][0], beta, out,
                            (size_t)g->off[0], (size_t)ldc, (size_t)g->st[0][0],
                            (size_t)g->batch);
    /* C stored transposed: C^T = B^T @ A^T, each operand's transposition flipped */
    return clblast_gemm(d, op, t, !tb, !ta, (size_t)n, (size_t)m, (size_t)k, alpha, b,
                        (size_t)g->off[2], (size_t)ldb, (size_t)g->st[2][0], a,
                        (size_t)g->off[1], (size_t)lda, (size_t)g->st[1][0], beta, out,
                        (size_t)g->off[0], (size_t)ldc, (size_t)g->st[0][0], (size_t)g->batch);
#else
    (void)d, (void)op, (void)t, (void)g, (void)out, (void)a, (void)b, (void)alpha, (void)beta;
    return NB_OK;
#endif
}

static nb_status run_gemm(ocl_dev *d, const char *op, nb_dtype t, const nbk_mm *g, cl_mem out,
                          cl_mem a, cl_mem b, double alpha, double beta)
{
    int done;
    nb_status st = try_clblast(d, op, t, g, out, a, b, alpha, beta, &done);
    if (st != NB_OK || done)
        return st;
    return own_gemm(d, op, t, g, out, a, b, alpha, beta);
}

nb_status ocl_gemm(ocl_dev *d, const char *op, nb_dtype t, int trans_a, int trans_b, int64_t m,
                   int64_t n, int64_t k, double alpha, cl_mem a, int64_t a_off, int64_t lda,
                   int64_t a_bs, cl_mem b, int64_t b_off, int64_t ldb, int64_t b_bs, double beta,
                   cl_mem c, int64_t c_off, int64_t ldc, int64_t c_bs, int64_t batch)
{
    nbk_mm g;
    memset(&g, 0, sizeof g);
    g.batch = batch, g.m = m, g.n = n, g.k = k;
    g.off[0] = c_off, g.off[1] = a_off, g.off[2] = b_off;
    g.st[0][0] = c_bs, g.st[0][1] = ldc, g.st[0][2] = 1;
    g.st[1][0] = a_bs, g.st[1][1] = trans_a ? 1 : lda, g.st[1][2] = trans_a ? lda : 1;
    g.st[2][0] = b_bs, g.st[2][1] = trans_b ? 1 : ldb, g.st[2][2] = trans_b ? ldb : 1;
    if (batch == 0 || m == 0 || n == 0)
        return NB_OK;
    return run_gemm(d, op, t, &g, c, a, b, alpha, beta);
}

/* ---- matmul ---- */

/* ocl_half_move of a (batch, rows, cols) operand; a broadcast batch (stride 0) stays one batch
 * in the float32 copy. */
static nb_status half_move(int device, const char *op, const ocl_view *v, cl_mem tmp,
                           int to_f32)
{
    nb_operand w = *v->o;
    int64_t shape[3] = {w.strides[0] == 0 ? 1 : w.shape[0], w.shape[1], w.shape[2]};
    w.shape = shape;
    ocl_view wv = {v->mem, v->off, &w};
    return ocl_half_move(device, op, &wv, tmp, to_f32);
}

/* A 16-bit matmul: the operands widened into float32 temporaries, one float32 GEMM (CLBlast or
 * the own kernel), the result rounded once into out. */
static nb_status half_matmul(ocl_dev *d, const char *op, int device, const ocl_view *v,
                             const nbk_mm *g, double alpha, double beta)
{
    size_t bytes[3];
    int64_t rows[3] = {g->m, g->m, g->k}, cols[3] = {g->n, g->k, g->n};
    for (int x = 0; x < 3; x++) {
        /* the sizes are of existing tensors (checked against their buffers): no overflow */
        int64_t b = g->st[x][0] == 0 ? 1 : v[x].o->shape[0];
        bytes[x] = (size_t)(b * rows[x] * cols[x]) * 4;
    }
    ocl_lock(d); /* the temporaries stay ours until the queued kernels are done */
    cl_mem t[3];
    nb_status st = NB_OK;
    for (int x = 0; x < 3 && st == NB_OK; x++)
        st = ocl_tmp(d, op, x, bytes[x] ? bytes[x] : 4, &t[x]);
    for (int x = beta != 0 ? 0 : 1; x < 3 && st == NB_OK; x++)
        st = half_move(device, op, &v[x], t[x], 1);
    if (st == NB_OK) {
        nbk_mm f;
        memset(&f, 0, sizeof f);
        f.batch = g->batch, f.m = g->m, f.n = g->n, f.k = g->k;
        for (int x = 0; x < 3; x++) {
            f.st[x][0] = g->st[x][0] == 0 ? 0 : rows[x] * cols[x];
            f.st[x][1] = cols[x];
            f.st[x][2] = 1;
        }
        st = run_gemm(d, op, NB_DTYPE_F32, &f, t[0], t[1], t[2], alpha, beta);
    }
    if (st == NB_OK)
        st = half_move(device, op, &v[0], t[0], 0);
    ocl_unlock(d);
    return st;
}

static nb_status k_matmul(const nb_kernel_args *a)
{
    const char *op = "matmul";
    ocl_view v[3];
    nb_status st = ocl_n_inputs(op, a, 2);
    if (st == NB_OK)
        st = ocl_check(op, "out", a->out, -1, &v[0]);
    if (st == NB_OK && !OCL_IS_FLOAT(a->out->dtype))
        st = ERR(NB_DTYPE_UNSUPPORTED, "opencl matmul: out is %s, expected f32, f64, f16 or "
                 "bf16", ocl_dt_name[a->out->dtype]);
    if (st == NB_OK)
        st = ocl_check(op, "input 0", &a->in[0], (int)a->out->dtype, &v[1]);
    if (st == NB_OK)
        st = ocl_check(op, "input 1", &a->in[1], (int)a->out->dtype, &v[2]);
    if (st != NB_OK)
        return st;
    const nb_operand *o = a->out, *x = &a->in[0], *y = &a->in[1];
    if (o->ndim != 3 || x->ndim != 3 || y->ndim != 3)
        return ERR(NB_SHAPE_MISMATCH, "opencl matmul: operands have %d, %d and %d dims, "
                   "expected 3 each (batch, rows, cols)", (int)o->ndim, (int)x->ndim,
                   (int)y->ndim);
    int64_t B = o->shape[0], M = o->shape[1], N = o->shape[2], K = x->shape[2];
    if (x->shape[1] != M || y->shape[1] != K || y->shape[2] != N ||
        (x->shape[0] != B && x->shape[0] != 1) || (y->shape[0] != B && y->shape[0] != 1))
        return ERR(NB_SHAPE_MISMATCH, "opencl matmul: [%lld,%lld,%lld] @ [%lld,%lld,%lld] -> "
                   "[%lld,%lld,%lld] do not match; expected (b,m,k) @ (b,k,n) -> (b,m,n)",
                   (long long)x->shape[0], (long long)x->shape[1], (long long)x->shape[2],
                   (long long)y->shape[0], (long long)y->shape[1], (long long)y->shape[2],
                   (long long)B, (long long)M, (long long)N);
    if (B == 0 || M == 0 || N == 0)
        return NB_OK;
    nbk_mm g;
    memset(&g, 0, sizeof g);
    g.batch = B, g.m = M, g.n = N, g.k = K;
    for (int k = 0; k < 3; k++) {
        const nb_operand *p = v[k].o;
        g.off[k] = v[k].off;
        g.st[k][0] = p->shape[0] == 1 ? 0 : p->strides[0];
        g.st[k][1] = p->strides[1];
        g.st[k][2] = p->strides[2];
    }
    ocl_dev *d = ocl_device(a->device, op);
    if (!d)
        return NB_DEVICE_OUT_OF_RANGE;
    if (OCL_IS_HALF(o->dtype))
        return half_matmul(d, op, a->device, v, &g, a->f[0], a->f[1]);
    return run_gemm(d, op, o->dtype, &g, v[0].mem, v[1].mem, v[2].mem, a->f[0], a->f[1]);
}

const ocl_spec ocl_specs_blas[] = {
    {"matmul", k_matmul, OCL_FLT16},
};
const size_t ocl_n_specs_blas =
    sizeof ocl_specs_blas / sizeof ocl_specs_blas[0];
