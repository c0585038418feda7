/* cpu_matmul.c - batched strided matmul of the cpu_blas plugin: out = f0 * A @ B + f1 * out
 * with A (batch, M, K), B (batch, K, N), out (batch, M, N). Float dtypes go to cblas without a
 * copy whenever each matrix has unit stride along one dim (bfloat16 to cblas_sbgemm when the
 * library exports it); integer dtypes use a plain loop. */
#include "cpu_internal.h"

#include <cblas.h>
#include <limits.h>

/* One matrix of a batch: rows x cols with element strides rs, cs; bs is the batch stride. */
typedef struct mat {
    char *p;
    int64_t rows, cols, rs, cs, bs;
} mat;

/* Describes m to cblas (row-major) as op(stored) with leading dimension ld, or returns false
 * when neither dim has unit stride. */
static bool blas_layout(const mat *m, CBLAS_TRANSPOSE *t, int64_t *ld)
{
    if ((m->cs == 1 || m->cols == 1) && (m->rows == 1 || (m->rs >= m->cols && m->rs >= 1))) {
        *t = CblasNoTrans;
        *ld = m->rows == 1 ? (m->cols > 1 ? m->cols : 1) : m->rs;
        return *ld <= INT_MAX;
    }
    if ((m->rs == 1 || m->rows == 1) && (m->cols == 1 || (m->cs >= m->rows && m->cs >= 1))) {
        *t = CblasTrans;
        *ld = m->cols == 1 ? (m->rows > 1 ? m->rows : 1) : m->cs;
        return *ld <= INT_MAX;
    }
    return false;
}

static mat transposed(mat m)
{
    mat t = m;
    t.rows = m.cols;
    t.cols = m.rows;
    t.rs = m.cs;
    t.cs = m.rs;
    return t;
}

static nb_status operand_mat(const char *what, const nb_operand *o, int64_t batch, mat *m)
{
    if (o->ndim != 3)
        return NBC_ERR(NB_SHAPE_MISMATCH, "matmul: %s has %d dims, expected 3 (batch, rows, "
                       "cols)", what, (int)o->ndim);
    if (o->shape[0] != batch && o->shape[0] != 1)
        return NBC_ERR(NB_SHAPE_MISMATCH, "matmul: %s has batch %lld, expected %lld or 1", what,
                       (long long)o->shape[0], (long long)batch);
    *m = (mat){nbc_ptr(o), o->shape[1], o->shape[2], o->strides[1], o->strides[2],
               o->shape[0] == 1 ? 0 : o->strides[0]};
    return NB_OK;
}

/* Copies batch entry b of m into a contiguous rows x cols buffer and returns its description. */
static mat pack(const mat *m, int64_t b, void *buf, size_t es)
{
    char *dst = buf;
    const char *src = m->p + b * m->bs * (int64_t)es;
    for (int64_t r = 0; r < m->rows; r++)
        for (int64_t c = 0; c < m->cols; c++, dst += es)
            memcpy(dst, src + (r * m->rs + c * m->cs) * (int64_t)es, es);
    return (mat){buf, m->rows, m->cols, m->cols, 1, 0};
}

static nb_status check_shapes(const nb_kernel_args *a, mat *A, mat *B, mat *C, int64_t *batch)
{
    if (a->n_in < 2)
        return NBC_ERR(NB_INVALID_ARGUMENT, "matmul: needs two inputs, got %d", (int)a->n_in);
    if (a->out->ndim != 3)
        return NBC_ERR(NB_SHAPE_MISMATCH, "matmul: output has %d dims, expected 3",
                       (int)a->out->ndim);
    *batch = a->out->shape[0];
    if (operand_mat("output", a->out, *batch, C) != NB_OK ||
        operand_mat("left input", &a->in[0], *batch, A) != NB_OK ||
        operand_mat("right input", &a->in[1], *batch, B) != NB_OK)
        return NB_SHAPE_MISMATCH;
    if (A->rows != C->rows || B->cols != C->cols || A->cols != B->rows)
        return NBC_ERR(NB_SHAPE_MISMATCH, "matmul: [%lld,%lld] @ [%lld,%lld] does not give "
                       "[%lld,%lld]", (long long)A->rows, (long long)A->cols, (long long)B->rows,
                       (long long)B->cols, (long long)C->rows, (long long)C->cols);
    if (A->rows > INT_MAX || B->cols > INT_MAX || A->cols > INT_MAX)
        return NBC_ERR(NB_INVALID_ARGUMENT, "matmul: dims [%lld,%lld,%lld] exceed the BLAS "
                       "limit %d", (long long)A->rows, (long long)A->cols, (long long)B->cols,
                       INT_MAX);
    return NB_OK;
}

#define DEF_GEMM(SFX, T, GEMM)                                                              \
    static nb_status k_matmul_##SFX(const nb_kernel_args *a)                                \
    {                                                                                       \
        mat A, B, C;                                                                        \
        int64_t batch;                                                                      \
        if (check_shapes(a, &A, &B, &C, &batch) != NB_OK)                                   \
            return NB_SHAPE_MISMATCH;                                                       \
        const T alpha = (T)a->f[0], beta = (T)a->f[1];                                      \
        const size_t es = sizeof(T);                                                        \
        if (C.rows == 0 || C.cols == 0 || batch == 0)                                       \
            return NB_OK;                                                                   \
        /* A column-major output is the row-major transpose: C^T = B^T A^T. */             \
        CBLAS_TRANSPOSE tc;                                                                 \
        int64_t ldc;                                                                        \
        if (blas_layout(&C, &tc, &ldc) && tc == CblasTrans) {                               \
            mat t = A;                                                                      \
            A = transposed(B);                                                              \
            B = transposed(t);                                                              \
            C = transposed(C);                                                              \
        }                                                                                   \
        bool c_direct = blas_layout(&C, &tc, &ldc) && tc == CblasNoTrans;                   \
        if (batch > 1 && C.bs == 0)                                                         \
            return NBC_ERR(NB_INVALID_ARGUMENT, "matmul: output batch stride 0 with batch " \
                           "%lld would write one matrix several times", (long long)batch); \
        CBLAS_TRANSPOSE ta, tb;                                                             \
        int64_t lda, ldb;                                                                   \
        bool a_direct = blas_layout(&A, &ta, &lda), b_direct = blas_layout(&B, &tb, &ldb);  \
        T *abuf = NULL, *bbuf = NULL, *cbuf = NULL;                                         \
        if ((!a_direct && !(abuf = nbc_scratch(0, (size_t)(A.rows * A.cols) * es + 1))) ||  \
            (!b_direct && !(bbuf = nbc_scratch(1, (size_t)(B.rows * B.cols) * es + 1))) ||  \
            (!c_direct && !(cbuf = nbc_scratch(2, (size_t)(C.rows * C.cols) * es + 1))))    \
            return NB_OUT_OF_MEMORY;                                                        \
        for (int64_t b = 0; b < batch; b++) {                                               \
            mat Ab = A, Bb = B, Cb = C;                                                     \
            Ab.p += b * A.bs * (int64_t)es;                                                 \
            Bb.p += b * B.bs * (int64_t)es;                                                 \
            Cb.p += b * C.bs * (int64_t)es;                                                 \
            Ab.bs = Bb.bs = Cb.bs = 0;                                                      \
            if (!a_direct) {                                                                \
                Ab = pack(&Ab, 0, abuf, es);                                                \
                blas_layout(&Ab, &ta, &lda);                                                \
            }                                                                               \
            if (!b_direct) {                                                                \
                Bb = pack(&Bb, 0, bbuf, es);                                                \
                blas_layout(&Bb, &tb, &ldb);                                                \
            }                                                                               \
            mat Cw = Cb;                                                                    \
            if (!c_direct) {                                                                \
                Cw = (mat){(char *)cbuf, C.rows, C.cols, C.cols, 1, 0};                     \
                if (beta != 0)                                                              \
                    pack(&Cb, 0, cbuf, es);                                                 \
                ldc = C.cols;                                                               \
            }                                                                               \
            if (A.cols == 0) {                                                              \
                for (int64_t r = 0; r < Cw.rows; r++)                                       \
                    for (int64_t c = 0; c < Cw.cols; c++) {                                 \
                        T *o = (T *)Cw.p + r * Cw.rs + c * Cw.cs;                           \
                        *o = beta == 0 ? 0 : beta * *o;                                     \
                    }                                                                       \
            } else {                                                                        \
                GEMM(CblasRowMajor, ta, tb, (int)C.rows, (int)C.cols, (int)A.cols, alpha,   \
                     (const T *)Ab.p, (int)lda, (const T *)Bb.p, (int)ldb, beta, (T *)Cw.p, \
                     (int)ldc);                                                             \
            }                                                                               \
            if (!c_direct) {                                                                \
                const T *src = cbuf;                                                        \
                for (int64_t r = 0; r < Cb.rows; r++)                                       \
                    for (int64_t c = 0; c < Cb.cols; c++)                                   \
                        ((T *)Cb.p)[r * Cb.rs + c * Cb.cs] = *src++;                        \
            }                                                                               \
        }                                                                                   \
        return NB_OK;                                                                       \
    }
DEF_GEMM(f32, float, nbc_blas.sgemm)
DEF_GEMM(f64, double, nbc_blas.dgemm)

/* bfloat16 through cblas_sbgemm when the library has one (cpu_platform.c looks it up): A and B
 * go in as they are (packed only when neither dim has unit stride), the product accumulates in
 * a float32 buffer and is rounded once into out. Otherwise, or for mixed operands, the widened
 * float32 path of cpu_half.c. */
static nb_status k_matmul_bf16(const nb_kernel_args *a)
{
    __typeof__(cblas_sbgemm) *sbgemm = nbc_blas.sbgemm;
    if (!sbgemm || a->n_in < 2 || a->out->dtype != NB_DTYPE_BF16 ||
        a->in[0].dtype != NB_DTYPE_BF16 || a->in[1].dtype != NB_DTYPE_BF16)
        return nbc_half_run("matmul", NB_DTYPE_BF16, a);
    mat A, B, C;
    int64_t batch;
    if (check_shapes(a, &A, &B, &C, &batch) != NB_OK)
        return NB_SHAPE_MISMATCH;
    const float alpha = (float)a->f[0], beta = (float)a->f[1];
    const size_t es = sizeof(uint16_t);
    if (C.rows == 0 || C.cols == 0 || batch == 0)
        return NB_OK;
    if (batch > 1 && C.bs == 0)
        return NBC_ERR(NB_INVALID_ARGUMENT, "matmul: output batch stride 0 with batch %lld "
                       "would write one matrix several times", (long long)batch);
    CBLAS_TRANSPOSE ta, tb;
    int64_t lda, ldb;
    bool a_direct = blas_layout(&A, &ta, &lda), b_direct = blas_layout(&B, &tb, &ldb);
    void *abuf = NULL, *bbuf = NULL;
    float *cbuf = nbc_scratch(2, (size_t)(C.rows * C.cols) * sizeof(float) + 1);
    if ((!a_direct && !(abuf = nbc_scratch(0, (size_t)(A.rows * A.cols) * es + 1))) ||
        (!b_direct && !(bbuf = nbc_scratch(1, (size_t)(B.rows * B.cols) * es + 1))) || !cbuf)
        return NB_OUT_OF_MEMORY;
    for (int64_t b = 0; b < batch; b++) {
        mat Ab = A, Bb = B;
        Ab.p += b * A.bs * (int64_t)es;
        Bb.p += b * B.bs * (int64_t)es;
        Ab.bs = Bb.bs = 0;
        uint16_t *cp = (uint16_t *)C.p + b * C.bs;
        if (!a_direct) {
            Ab = pack(&Ab, 0, abuf, es);
            blas_layout(&Ab, &ta, &lda);
        }
        if (!b_direct) {
            Bb = pack(&Bb, 0, bbuf, es);
            blas_layout(&Bb, &tb, &ldb);
        }
        float *w = cbuf;
        for (int64_t r = 0; r < C.rows; r++)
            for (int64_t c = 0; c < C.cols; c++, w++)
                *w = beta == 0 ? 0.0f : nb_bf16_to_f32(cp[r * C.rs + c * C.cs]);
        if (A.cols == 0) {
            for (int64_t k = 0; k < C.rows * C.cols; k++)
                cbuf[k] *= beta;
        } else {
            sbgemm(CblasRowMajor, ta, tb, (int)C.rows, (int)C.cols, (int)A.cols, alpha,
                   (const bfloat16 *)Ab.p, (int)lda, (const bfloat16 *)Bb.p, (int)ldb, beta,
                   cbuf, (int)C.cols);
        }
        w = cbuf;
        for (int64_t r = 0; r < C.rows; r++)
            for (int64_t c = 0; c < C.cols; c++)
                cp[r * C.rs + c * C.cs] = nb_f32_to_bf16(*w++);
    }
    return NB_OK;
}

/* cblas_sbgemm's contract, row-major, written as plainly as possible: it stands in for the
 * library's under NABLA_CPU_SBGEMM=reference and is never chosen otherwise. */
void nbc_reference_sbgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                          const enum CBLAS_TRANSPOSE tb, const blasint m, const blasint n,
                          const blasint k, const float alpha, const bfloat16 *A,
                          const blasint lda, const bfloat16 *B, const blasint ldb,
                          const float beta, float *C, const blasint ldc)
{
    if (order != CblasRowMajor)
        return; /* the plugin only ever asks for row-major */
    for (blasint i = 0; i < m; i++)
        for (blasint j = 0; j < n; j++) {
            float acc = 0;
            for (blasint p = 0; p < k; p++) {
                bfloat16 x = ta == CblasNoTrans ? A[(int64_t)i * lda + p] : A[(int64_t)p * lda + i];
                bfloat16 y = tb == CblasNoTrans ? B[(int64_t)p * ldb + j] : B[(int64_t)j * ldb + p];
                acc += nb_bf16_to_f32(x) * nb_bf16_to_f32(y);
            }
            float *o = &C[(int64_t)i * ldc + j];
            *o = alpha * acc + (beta == 0 ? 0.0f : beta * *o);
        }
}

/* Integers: a plain triple loop, products summed in 64-bit wrapping arithmetic. */
#define DEF_IMATMUL(SFX, T)                                                                 \
    static nb_status k_matmul_##SFX(const nb_kernel_args *a)                                \
    {                                                                                       \
        mat A, B, C;                                                                        \
        int64_t batch;                                                                      \
        if (check_shapes(a, &A, &B, &C, &batch) != NB_OK)                                   \
            return NB_SHAPE_MISMATCH;                                                       \
        const double alpha = a->f[0], beta = a->f[1];                                       \
        const bool plain = alpha == 1 && beta == 0;                                         \
        for (int64_t b = 0; b < batch; b++) {                                               \
            const T *pa = (const T *)A.p + b * A.bs, *pb = (const T *)B.p + b * B.bs;       \
            T *pc = (T *)C.p + b * C.bs;                                                    \
            for (int64_t r = 0; r < C.rows; r++)                                            \
                for (int64_t c = 0; c < C.cols; c++) {                                      \
                    uint64_t acc = 0;                                                       \
                    for (int64_t k = 0; k < A.cols; k++)                                    \
                        acc += (uint64_t)pa[r * A.rs + k * A.cs] * (uint64_t)pb[k * B.rs + c * B.cs]; \
                    T *o = pc + r * C.rs + c * C.cs;                                        \
                    *o = plain ? (T)acc                                                     \
                               : (T)nbc_fromd_i64(alpha * (double)(int64_t)acc +            \
                                                  (beta == 0 ? 0 : beta * (double)*o));     \
                }                                                                           \
        }                                                                                   \
        return NB_OK;                                                                       \
    }
DEF_IMATMUL(i32, int32_t)
DEF_IMATMUL(i64, int64_t)
DEF_IMATMUL(u8, uint8_t)

const nb_kernel_desc nbc_matmul_kernels[] = {
    {"matmul", NB_DTYPE_F32, k_matmul_f32}, {"matmul", NB_DTYPE_F64, k_matmul_f64},
    {"matmul", NB_DTYPE_I32, k_matmul_i32}, {"matmul", NB_DTYPE_I64, k_matmul_i64},
    {"matmul", NB_DTYPE_U8, k_matmul_u8},     {"matmul", NB_DTYPE_BF16, k_matmul_bf16},
};
const size_t nbc_matmul_count = sizeof nbc_matmul_kernels / sizeof nbc_matmul_kernels[0];
