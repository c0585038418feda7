// cuda_matmul.cu - batched strided matmul through cuBLAS (integers: a plain kernel; float16 and
// bfloat16: cublasGemmEx / cublasGemmStridedBatchedEx with float32 compute, on the tensor cores).
// Row-major C = A B is computed as the column-major product C^T = B^T A^T; an operand with unit
// stride in neither matrix dim (or with a broadcast row or column) is first copied to dense
// scratch memory.
#include <limits.h>

#include "cuda_common.cuh"

namespace nbcu {

// How cuBLAS reads one operand: its buffer, the transpose flag for the C^T = B^T A^T product,
// its leading dimension and batch stride (elements).
template <class T> struct Mat {
    const T *p;
    cublasOperation_t op;
    int64_t ld, batch_stride;
};

// A row-major (r x c) matrix with element strides (sr, sc) as a cuBLAS operand of the
// transposed product: unit column stride is the column-major X^T (no transpose), unit row stride
// the column-major X (transpose). False when neither fits.
static bool blas_view(int64_t r, int64_t c, int64_t sr, int64_t sc, cublasOperation_t *op,
                      int64_t *ld)
{
    if ((sc == 1 || c == 1) && (r == 1 || sr >= c)) {
        *op = CUBLAS_OP_N;
        *ld = r == 1 ? (c > 1 ? c : 1) : sr;
        return true;
    }
    if ((sr == 1 || r == 1) && (c == 1 || sc >= r)) {
        *op = CUBLAS_OP_T;
        *ld = c == 1 ? (r > 1 ? r : 1) : sc;
        return true;
    }
    return false;
}

// out = beta * out (beta == 0: zeros), for k == 0, where the product is empty.
template <class T> struct ScaleF {
    T *out;
    opmath_t<T> beta;
    __device__ void operator()(int64_t, const int64_t *off) const
    {
        out[off[0]] = beta == 0 ? zero_of<T>() : convert<T>(beta * widen(out[off[0]]));
    }
};

static cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *a, int lda,
                           long long sa, const float *b, int ldb, long long sb, const float *beta,
                           float *c, int ldc, long long sc, int batch)
{
    return nbcu_cublas->sgemm_strided_batched(h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb,
                                              beta, c, ldc, sc, batch);
}

static cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const double *alpha, const double *a, int lda,
                           long long sa, const double *b, int ldb, long long sb,
                           const double *beta, double *c, int ldc, long long sc, int batch)
{
    return nbcu_cublas->dgemm_strided_batched(h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb,
                                              beta, c, ldc, sc, batch);
}

// The 16-bit types (and a float32 C, where conv2d's backwards sum several products): cuBLAS's
// mixed-precision GEMM, float32 compute and float alpha/beta. CUBLAS_COMPUTE_32F lets cuBLAS 12+
// use the tensor cores (its default math mode allows them; no TF32 is involved for 16-bit A/B).
template <class T> struct cuda_type;
template <> struct cuda_type<__half> { static constexpr cudaDataType value = CUDA_R_16F; };
template <> struct cuda_type<__nv_bfloat16> { static constexpr cudaDataType value = CUDA_R_16BF; };
template <> struct cuda_type<float> { static constexpr cudaDataType value = CUDA_R_32F; };

template <class T, class TC>
static cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const T *a, int lda, long long sa,
                           const T *b, int ldb, long long sb, const float *beta, TC *c, int ldc,
                           long long sc, int batch)
{
    static_assert(is_half<T>::value, "the Ex gemm is for 16-bit operands");
    if (batch == 1) // one product: cublasGemmEx itself (what nabla-bench compares with)
        return nbcu_cublas->gemm_ex(h, ta, tb, m, n, k, alpha, a, cuda_type<T>::value, lda, b,
                                    cuda_type<T>::value, ldb, beta, c, cuda_type<TC>::value, ldc,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return nbcu_cublas->gemm_strided_batched_ex(h, ta, tb, m, n, k, alpha, a, cuda_type<T>::value,
                                                lda, sa, b, cuda_type<T>::value, ldb, sb, beta, c,
                                                cuda_type<TC>::value, ldc, sc, batch,
                                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

// The cuBLAS call gemm() makes for T and the batch count, for error messages.
template <class T> static const char *gemm_name(int64_t batch)
{
    if (is_half<T>::value)
        return batch == 1 ? "cublasGemmEx" : "cublasGemmStridedBatchedEx";
    return sizeof(T) == 4 ? "cublasSgemmStridedBatched" : "cublasDgemmStridedBatched";
}

static bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// Prepares one input: a view cuBLAS can read directly, or a dense copy in `scratch` (also for a
// view whose row stride exceeds cuBLAS's 32-bit leading dimension: the copy's is the width).
template <class T>
static nb_status prepare(const char *op, int device, cudaStream_t s, const nb_operand *x,
                         int64_t batch, Scratch &scratch, Mat<T> *m)
{
    int64_t r = x->shape[1], c = x->shape[2];
    m->batch_stride = x->shape[0] == 1 ? 0 : x->strides[0];
    if (blas_view(r, c, x->strides[1], x->strides[2], &m->op, &m->ld) && fits_int(m->ld)) {
        m->p = data<const T>(x);
        return NB_OK;
    }
    int64_t shape[3] = {x->shape[0], r, c};
    nb_status st = scratch.get(op, device, s, (size_t)(shape[0] * r * c) * sizeof(T));
    if (st != NB_OK)
        return st;
    Dense d(scratch.p, dtype_of<T>::value, 3, shape);
    if ((st = copy_strided(op, device, &d.op, x)) != NB_OK)
        return st;
    m->p = (const T *)scratch.p;
    m->op = CUBLAS_OP_N;
    m->ld = c;
    m->batch_stride = x->shape[0] == 1 ? 0 : r * c;
    (void)batch;
    return NB_OK;
}

template <class T, class TC>
nb_status gemm_rm(const char *op, int device, bool ta, bool tb, int64_t n, int64_t m, int64_t k,
                  opmath_t<T> alpha, const T *A, int64_t lda, int64_t sa, const T *B, int64_t ldb,
                  int64_t sb, opmath_t<T> beta, TC *C, int64_t ldc, int64_t sc, int64_t batch)
{
    if (!fits_int(n) || !fits_int(m) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldc) || !fits_int(batch))
        return fail(NB_INVALID_ARGUMENT, "%s: a matrix size or leading dimension exceeds "
                    "cuBLAS's 32-bit limit", op);
    cublasHandle_t h;
    nb_status st = nbcu_blas(op, device, &h);
    if (st != NB_OK)
        return st;
    // Row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T.
    cublasStatus_t bs = gemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                             (int)m, (int)n, (int)k, &alpha, B, (int)ldb, (long long)sb, A,
                             (int)lda, (long long)sa, &beta, C, (int)ldc, (long long)sc,
                             (int)batch);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return nbcu_blas_error(op, gemm_name<T>(batch), bs);
    return NB_OK;
}
#define NBCU_GEMM_RM(T, TC)                                                                   \
    template nb_status gemm_rm<T, TC>(const char *, int, bool, bool, int64_t, int64_t, int64_t, \
                                      opmath_t<T>, const T *, int64_t, int64_t, const T *,      \
                                      int64_t, int64_t, opmath_t<T>, TC *, int64_t, int64_t,    \
                                      int64_t);
NBCU_GEMM_RM(float, float)
NBCU_GEMM_RM(double, double)
NBCU_GEMM_RM(__half, __half)
NBCU_GEMM_RM(__half, float)
NBCU_GEMM_RM(__nv_bfloat16, __nv_bfloat16)
NBCU_GEMM_RM(__nv_bfloat16, float)
#undef NBCU_GEMM_RM

// Integer matmul, as the cpu computes it: products summed in 64-bit wrapping arithmetic; with
// alpha != 1 or beta != 0 the result is alpha * sum + beta * out in double, converted by the
// plugins' rule. A thread per output element (cuBLAS has no integer GEMM of these types).
template <class T> struct IntMatmulF {
    T *c;
    const T *a, *b;
    int64_t n, m, k;
    int64_t as0, as1, as2, bs0, bs1, bs2, cs0, cs1, cs2; // batch strides 0 when broadcast
    double alpha, beta;
    __device__ void operator()(int64_t e, const int64_t *) const
    {
        int64_t col = e % m, row = e / m % n, bat = e / (m * n);
        const T *pa = a + bat * as0 + row * as1, *pb = b + bat * bs0 + col * bs2;
        uint64_t acc = 0;
        for (int64_t j = 0; j < k; j++)
            acc += (uint64_t)(int64_t)pa[j * as2] * (uint64_t)(int64_t)pb[j * bs1];
        T *pc = c + bat * cs0 + row * cs1 + col * cs2;
        if (alpha == 1 && beta == 0)
            *pc = (T)acc;
        else
            *pc = convert<T>(alpha * (double)(int64_t)acc + (beta == 0 ? 0 : beta * (double)*pc));
    }
};

template <class T> static nb_status int_matmul(const nb_kernel_args *a, int64_t batch, int64_t n,
                                               int64_t m, int64_t k)
{
    const nb_operand *o = a->out, *x = &a->in[0], *y = &a->in[1];
    if (batch > 1 && o->strides[0] == 0)
        return fail(NB_INVALID_ARGUMENT, "matmul: output batch stride 0 with batch %lld would "
                    "write one matrix several times", (long long)batch);
    IntMatmulF<T> f{data<T>(o), data<const T>(x), data<const T>(y), n, m, k,
                    x->shape[0] == 1 ? 0 : x->strides[0], x->strides[1], x->strides[2],
                    y->shape[0] == 1 ? 0 : y->strides[0], y->strides[1], y->strides[2],
                    o->strides[0], o->strides[1], o->strides[2], a->f[0], a->f[1]};
    const nb_operand *ops[1] = {o};
    return launch_ew<1>("matmul", a->device, ops, f);
}

template <class T>
static nb_status blas_matmul(const nb_kernel_args *a, int64_t batch, int64_t n, int64_t m,
                             int64_t k);

template <class T> static nb_status k_matmul(const nb_kernel_args *a)
{
    const char *op = "matmul";
    nb_status st = check_args(op, a, 2);
    if (st == NB_OK)
        st = check_dtype(op, "output", a->out, dtype_of<T>::value);
    for (int k = 0; k < 2 && st == NB_OK; k++)
        st = check_dtype(op, k ? "input 1" : "input 0", &a->in[k], dtype_of<T>::value);
    if (st != NB_OK)
        return st;
    const nb_operand *o = a->out, *x = &a->in[0], *y = &a->in[1];
    if (o->ndim != 3 || x->ndim != 3 || y->ndim != 3)
        return fail(NB_SHAPE_MISMATCH, "matmul: operands must be 3-d (batch, rows, cols), got "
                    "%d-d output and %d-d, %d-d inputs", (int)o->ndim, (int)x->ndim,
                    (int)y->ndim);
    int64_t batch = o->shape[0], n = o->shape[1], m = o->shape[2], k = x->shape[2];
    if (x->shape[1] != n || y->shape[1] != k || y->shape[2] != m ||
        (x->shape[0] != batch && x->shape[0] != 1) || (y->shape[0] != batch && y->shape[0] != 1))
        return fail(NB_SHAPE_MISMATCH, "matmul: shapes [%lld,%lld,%lld] @ [%lld,%lld,%lld] do "
                    "not give the output [%lld,%lld,%lld]", (long long)x->shape[0],
                    (long long)x->shape[1], (long long)x->shape[2], (long long)y->shape[0],
                    (long long)y->shape[1], (long long)y->shape[2], (long long)batch,
                    (long long)n, (long long)m);
    if (batch == 0 || n == 0 || m == 0)
        return NB_OK;
    if constexpr (!is_float<T>::value && !is_half<T>::value)
        return int_matmul<T>(a, batch, n, m, k);
    else
        return blas_matmul<T>(a, batch, n, m, k);
}

// Float matmul through cuBLAS; sizes checked by k_matmul, none of batch, n, m is 0.
template <class T>
static nb_status blas_matmul(const nb_kernel_args *a, int64_t batch, int64_t n, int64_t m,
                             int64_t k)
{
    const char *op = "matmul";
    const nb_operand *o = a->out, *x = &a->in[0], *y = &a->in[1];
    nb_status st;
    opmath_t<T> alpha = (opmath_t<T>)a->f[0], beta = (opmath_t<T>)a->f[1];
    if (k == 0) {
        const nb_operand *ops[1] = {o};
        return launch_ew<1>(op, a->device, ops, ScaleF<T>{data<T>(o), beta});
    }
    if (!fits_int(batch) || !fits_int(n) || !fits_int(m) || !fits_int(k))
        return fail(NB_INVALID_ARGUMENT, "matmul: sizes (batch %lld, %lld x %lld x %lld) exceed "
                    "cuBLAS's 32-bit limit", (long long)batch, (long long)n, (long long)k,
                    (long long)m);
    cublasHandle_t h;
    if ((st = nbcu_blas(op, a->device, &h)) != NB_OK)
        return st;
    cudaStream_t s;
    if ((st = nbcu_stream(op, a->device, &s)) != NB_OK)
        return st;

    Scratch sx, sy, so;
    Mat<T> mx, my;
    if ((st = prepare<T>(op, a->device, s, x, batch, sx, &mx)) != NB_OK ||
        (st = prepare<T>(op, a->device, s, y, batch, sy, &my)) != NB_OK)
        return st;
    // The output must be row-major with unit column stride (C^T column-major) and a batch
    // stride that keeps batches apart; otherwise the product goes to scratch first.
    T *c = data<T>(o);
    int64_t ldc = 0, sc = batch == 1 ? 0 : o->strides[0];
    cublasOperation_t cop;
    bool direct = blas_view(n, m, o->strides[1], o->strides[2], &cop, &ldc) &&
                  cop == CUBLAS_OP_N && fits_int(ldc) && (batch == 1 || o->strides[0] != 0);
    int64_t dshape[3] = {batch, n, m};
    Dense dense(nullptr, dtype_of<T>::value, 3, dshape);
    if (!direct) {
        if ((st = so.get(op, a->device, s, (size_t)(batch * n * m) * sizeof(T))) != NB_OK)
            return st;
        dense.op.handle = so.p;
        if (beta != 0 && (st = copy_strided(op, a->device, &dense.op, o)) != NB_OK)
            return st;
        c = (T *)so.p;
        ldc = m;
        sc = n * m;
    }
    cublasStatus_t bs = gemm(h, my.op, mx.op, (int)m, (int)n, (int)k, &alpha, my.p, (int)my.ld,
                             (long long)my.batch_stride, mx.p, (int)mx.ld,
                             (long long)mx.batch_stride, &beta, c, (int)ldc, (long long)sc,
                             (int)batch);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return nbcu_blas_error(op, gemm_name<T>(batch), bs);
    if (!direct && (st = copy_strided(op, a->device, o, &dense.op)) != NB_OK)
        return st;
    return launched(op);
}

} // namespace nbcu

using namespace nbcu;

extern "C" const nb_kernel_desc nbcu_matmul_kernels[] = {
    {"matmul", NB_DTYPE_F32, k_matmul<float>},
    {"matmul", NB_DTYPE_F64, k_matmul<double>},
    {"matmul", NB_DTYPE_I32, k_matmul<int32_t>},
    {"matmul", NB_DTYPE_I64, k_matmul<int64_t>},
    {"matmul", NB_DTYPE_U8, k_matmul<uint8_t>},
    {"matmul", NB_DTYPE_F16, k_matmul<__half>},
    {"matmul", NB_DTYPE_BF16, k_matmul<__nv_bfloat16>},
};
extern "C" const size_t nbcu_matmul_count =
    sizeof nbcu_matmul_kernels / sizeof nbcu_matmul_kernels[0];
