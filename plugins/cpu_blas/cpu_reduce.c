/* cpu_reduce.c - reductions (sum, prod, max, min over any set of dims), argmax/argmin along
 * one dim, and the indexed ops gather, scatter_add and the fused embedding_backward of the
 * cpu_blas plugin. */
#include "cpu_internal.h"

#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- sum / prod / max / min ----
 * The output starts at the op's identity; the iterator then walks the input with the output's
 * stride set to 0 on reduced dims. A row whose output stride is 0 folds into a local
 * accumulator (double for floats) and touches the output once; any other row combines
 * elementwise into the output, which keeps column reductions vectorised. */

#define STEP_SUM(acc, x) ((acc) + (x))
#define STEP_PROD(acc, x) ((acc) * (x))
/* NaN wins: once acc is NaN, neither test replaces it. */
#define STEP_MAXF(acc, x) (((x) > (acc) || (x) != (x)) ? (x) : (acc))
#define STEP_MINF(acc, x) (((x) < (acc) || (x) != (x)) ? (x) : (acc))
#define STEP_MAXI(acc, x) ((x) > (acc) ? (x) : (acc))
#define STEP_MINI(acc, x) ((x) < (acc) ? (x) : (acc))

#define DEF_REDUCE_ROW(OP, SFX, T, ACC, STEP)                                               \
    static void rr_##OP##_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0,          \
                                const void *ctx)                                            \
    {                                                                                       \
        const ACC init = *(const T *)ctx;                                                   \
        (void)k0;                                                                           \
        if (s[0] == 0) {                                                                    \
            ACC acc = init;                                                                 \
            if (s[1] == (int64_t)sizeof(T)) {                                               \
                const T *x = (const T *)p[1];                                               \
                for (int64_t j = 0; j < n; j++)                                             \
                    acc = STEP(acc, (ACC)x[j]);                                             \
            } else {                                                                        \
                for (int64_t j = 0; j < n; j++)                                             \
                    acc = STEP(acc, (ACC) * (const T *)(p[1] + j * s[1]));                  \
            }                                                                               \
            T *o = (T *)p[0];                                                               \
            *o = (T)STEP((ACC)*o, acc);                                                     \
        } else if (s[0] == (int64_t)sizeof(T) && s[1] == (int64_t)sizeof(T)) {              \
            T *o = (T *)p[0];                                                               \
            const T *x = (const T *)p[1];                                                   \
            for (int64_t j = 0; j < n; j++)                                                 \
                o[j] = (T)STEP((ACC)o[j], (ACC)x[j]);                                       \
        } else {                                                                            \
            for (int64_t j = 0; j < n; j++) {                                               \
                T *o = (T *)(p[0] + j * s[0]);                                              \
                *o = (T)STEP((ACC)*o, (ACC) * (const T *)(p[1] + j * s[1]));               \
            }                                                                               \
        }                                                                                   \
    }

/* Float sums fold eight lanes at a time: without -ffast-math the compiler may not reorder a
 * single accumulator, and eight independent ones vectorise. */
#define DEF_SUM_FLOAT_ROW(SFX, T)                                                           \
    static void rr_sum_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx) \
    {                                                                                       \
        (void)k0, (void)ctx;                                                                \
        if (s[0] == 0) {                                                                    \
            double acc = 0;                                                                 \
            int64_t j = 0;                                                                  \
            if (s[1] == (int64_t)sizeof(T)) {                                               \
                const T *x = (const T *)p[1];                                               \
                double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                  \
                for (; j + 8 <= n; j += 8)                                                  \
                    for (int l = 0; l < 8; l++)                                             \
                        lane[l] += (double)x[j + l];                                        \
                acc = ((lane[0] + lane[4]) + (lane[1] + lane[5])) +                         \
                      ((lane[2] + lane[6]) + (lane[3] + lane[7]));                          \
            }                                                                               \
            for (; j < n; j++)                                                              \
                acc += (double)*(const T *)(p[1] + j * s[1]);                               \
            T *o = (T *)p[0];                                                               \
            *o = (T)((double)*o + acc);                                                     \
        } else if (s[0] == (int64_t)sizeof(T) && s[1] == (int64_t)sizeof(T)) {              \
            T *o = (T *)p[0];                                                               \
            const T *x = (const T *)p[1];                                                   \
            for (int64_t j = 0; j < n; j++)                                                 \
                o[j] += x[j];                                                               \
        } else {                                                                            \
            for (int64_t j = 0; j < n; j++)                                                 \
                *(T *)(p[0] + j * s[0]) += *(const T *)(p[1] + j * s[1]);                   \
        }                                                                                   \
    }

static void fill_row(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx)
{
    const size_t es = ((const size_t *)ctx)[0];
    const void *v = (const size_t *)ctx + 1;
    (void)k0;
    for (int64_t j = 0; j < n; j++)
        memcpy(p[0] + j * s[0], v, es);
}

/* Runs a reduction whose row function is row and whose identity is the value at ident. */
static nb_status reduce(const char *name, const nb_kernel_args *a, nbc_row_fn row,
                        const void *ident)
{
    const nb_operand *out = a->out, *in = &a->in[0];
    if (a->n_in < 1 || in->ndim != out->ndim)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: input and output need the same number of dims "
                       "(got %d and %d)", name, a->n_in < 1 ? -1 : (int)in->ndim, (int)out->ndim);
    int64_t ost[NB_MAX_DIMS];
    for (int32_t d = 0; d < out->ndim; d++) {
        if (out->shape[d] != in->shape[d] && out->shape[d] != 1)
            return NBC_ERR(NB_SHAPE_MISMATCH, "%s: output dim %d has size %lld, expected %lld "
                           "or 1", name, (int)d, (long long)out->shape[d], (long long)in->shape[d]);
        ost[d] = out->shape[d] == in->shape[d] ? out->strides[d] : 0;
    }
    const size_t es = nbc_dtype_size(out->dtype);

    /* out = identity */
    struct {
        size_t es;
        char v[8];
    } fill = {es, {0}};
    memcpy(fill.v, ident, es);
    nbc_iter it;
    nbc_iter_init(&it, 1, out->ndim, out->shape);
    nbc_iter_operand(&it, 0, nbc_ptr(out), out->strides, es);
    nbc_iter_run(&it, fill_row, &fill, true);

    nbc_iter_init(&it, 2, in->ndim, in->shape);
    nbc_iter_operand(&it, 0, nbc_ptr(out), ost, es);
    nbc_iter_operand(&it, 1, nbc_ptr(in), in->strides, es);
    int64_t total = nbc_iter_prepare(&it);
    if (total == 0)
        return NB_OK;
    bool whole = true;
    for (int d = 0; d < it.ndim; d++)
        whole = whole && it.st[0][d] == 0;
    int nt = nbc_max_threads();
#ifdef _OPENMP
    if (whole && total >= NBC_PARALLEL_MIN && nt > 1) {
        /* Reducing everything to one value: a partial per thread, folded in at the end. */
        if (nt > total / (NBC_PARALLEL_MIN / 4))
            nt = (int)(total / (NBC_PARALLEL_MIN / 4));
        double partial[64][8]; /* one cache line per thread */
        if (nt > 64)
            nt = 64;
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            nbc_iter mine = it;
            memcpy(partial[t], ident, es);
            mine.base[0] = (char *)partial[t];
            int64_t chunk = ((total + T - 1) / T + 63) & ~(int64_t)63;
            int64_t lo = chunk * t, hi = lo + chunk < total ? lo + chunk : total;
            if (lo < hi)
                nbc_iter_range(&mine, row, ident, lo, hi);
#pragma omp barrier
#pragma omp single
            {
                char *p[2] = {nbc_ptr(out), NULL};
                const int64_t s[2] = {0, 0};
                for (int k = 0; k < T; k++) {
                    p[1] = (char *)partial[k];
                    row(p, s, 1, 0, ident);
                }
            }
        }
        return NB_OK;
    }
#else
    (void)nt;
#endif
    nbc_iter_range(&it, row, ident, 0, total);
    return NB_OK;
}

#define DEF_REDUCE_KERNEL(OP, SFX, T, IDENT)                                                \
    static nb_status k_##OP##_##SFX(const nb_kernel_args *a)                                \
    {                                                                                       \
        const T ident = IDENT;                                                              \
        return reduce(#OP, a, rr_##OP##_##SFX, &ident);                                     \
    }

#define DEF_REDUCE_FLOAT(SFX, T)                                                            \
    DEF_SUM_FLOAT_ROW(SFX, T)                                                               \
    DEF_REDUCE_ROW(prod, SFX, T, double, STEP_PROD)                                         \
    DEF_REDUCE_ROW(max, SFX, T, T, STEP_MAXF)                                               \
    DEF_REDUCE_ROW(min, SFX, T, T, STEP_MINF)                                               \
    DEF_REDUCE_KERNEL(sum, SFX, T, 0)                                                       \
    DEF_REDUCE_KERNEL(prod, SFX, T, 1)                                                      \
    DEF_REDUCE_KERNEL(max, SFX, T, -INFINITY)                                               \
    DEF_REDUCE_KERNEL(min, SFX, T, INFINITY)
DEF_REDUCE_FLOAT(f32, float)
DEF_REDUCE_FLOAT(f64, double)

/* Integer sums and products wrap in unsigned arithmetic, which C defines (every row folds in
 * ACC, the output's elementwise rows too: int32 + int32 would overflow in int). */
#define DEF_REDUCE_INT(SFX, T, LO, HI)                                                      \
    DEF_REDUCE_ROW(sum, SFX, T, uint64_t, STEP_SUM)                                         \
    DEF_REDUCE_ROW(prod, SFX, T, uint64_t, STEP_PROD)                                       \
    DEF_REDUCE_ROW(max, SFX, T, T, STEP_MAXI)                                               \
    DEF_REDUCE_ROW(min, SFX, T, T, STEP_MINI)                                               \
    DEF_REDUCE_KERNEL(sum, SFX, T, 0)                                                       \
    DEF_REDUCE_KERNEL(prod, SFX, T, 1)                                                      \
    DEF_REDUCE_KERNEL(max, SFX, T, LO)                                                      \
    DEF_REDUCE_KERNEL(min, SFX, T, HI)
DEF_REDUCE_INT(i32, int32_t, INT32_MIN, INT32_MAX)
DEF_REDUCE_INT(i64, int64_t, INT64_MIN, INT64_MAX)
DEF_REDUCE_INT(u8, uint8_t, 0, UINT8_MAX)
/* bool max/min are any/all */
DEF_REDUCE_ROW(max, b8, uint8_t, uint8_t, STEP_MAXI)
DEF_REDUCE_ROW(min, b8, uint8_t, uint8_t, STEP_MINI)
DEF_REDUCE_KERNEL(max, b8, uint8_t, 0)
DEF_REDUCE_KERNEL(min, b8, uint8_t, 1)

/* ---- argmax / argmin along one dim ---- */

typedef struct arg_ctx {
    int64_t len;    /* size of the reduced dim */
    int64_t stride; /* its byte stride in the input */
} arg_ctx;

/* The first extreme wins ties; the first NaN beats everything, like PyTorch. */
#define DEF_ARG(OP, SFX, T, BETTER)                                                         \
    static void ra_##OP##_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0,          \
                                const void *ctx)                                            \
    {                                                                                       \
        const arg_ctx *c = ctx;                                                             \
        (void)k0;                                                                           \
        for (int64_t j = 0; j < n; j++) {                                                   \
            const char *x = p[1] + j * s[1];                                                \
            T best = *(const T *)x;                                                         \
            int64_t bi = 0;                                                                 \
            if (best == best) {                                                             \
                for (int64_t k = 1; k < c->len; k++) {                                      \
                    T v = *(const T *)(x + k * c->stride);                                  \
                    if (v != v) {                                                           \
                        bi = k;                                                             \
                        break;                                                              \
                    }                                                                       \
                    if (v BETTER best) {                                                    \
                        best = v;                                                           \
                        bi = k;                                                             \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
            *(int64_t *)(p[0] + j * s[0]) = bi;                                             \
        }                                                                                   \
    }                                                                                       \
    static nb_status k_##OP##_##SFX(const nb_kernel_args *a) { return arg_reduce(#OP, a, ra_##OP##_##SFX); }

static nb_status arg_reduce(const char *name, const nb_kernel_args *a, nbc_row_fn row)
{
    const nb_operand *out = a->out, *in = &a->in[0];
    int64_t d = a->i[0];
    if (a->n_in < 1 || in->ndim != out->ndim || d < 0 || d >= (in->ndim ? in->ndim : 1))
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: dim %lld out of range for a %d-d input", name,
                       (long long)d, a->n_in < 1 ? -1 : (int)in->ndim);
    if (out->dtype != NB_DTYPE_I64)
        return NBC_ERR(NB_DTYPE_UNSUPPORTED, "%s: output dtype is %s, expected int64", name,
                       nbc_dtype_name(out->dtype));
    arg_ctx c = {1, 0};
    if (in->ndim > 0) {
        c.len = in->shape[d];
        c.stride = in->strides[d] * (int64_t)nbc_dtype_size(in->dtype);
    }
    if (c.len == 0)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: dim %lld is empty; an empty dim has no "
                       "extreme", name, (long long)d);
    nbc_iter it;
    nbc_iter_init(&it, 2, out->ndim, out->shape);
    nbc_iter_operand(&it, 0, nbc_ptr(out), out->strides, 8);
    nbc_iter_operand(&it, 1, nbc_ptr(in), in->strides, nbc_dtype_size(in->dtype));
    if (out->ndim > 0)
        it.shape[d] = 1;
    nbc_iter_run(&it, row, &c, true);
    return NB_OK;
}

#define DEF_ARGS(SFX, T, E, K) DEF_ARG(argmax, SFX, T, >) DEF_ARG(argmin, SFX, T, <)
NBC_ALL_DTYPES(DEF_ARGS)

/* ---- gather / scatter_add ---- */

typedef struct index_ctx {
    const char *name;
    int64_t size;   /* size of the indexed dim of the indexed tensor */
    int64_t stride; /* its byte stride */
    int64_t dim;
    int64_t bad;    /* first out-of-range index, valid when failed */
    bool failed;
} index_ctx;

/* gather: p = out, source (indexed dim stride 0), index */
#define DEF_GATHER(SFX, T, E, K)                                                            \
    static void rg_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx) \
    {                                                                                       \
        index_ctx *c = (index_ctx *)ctx;                                                    \
        (void)k0;                                                                           \
        for (int64_t j = 0; j < n; j++) {                                                   \
            int64_t k = *(const int64_t *)(p[2] + j * s[2]);                                \
            T *o = (T *)(p[0] + j * s[0]);                                                  \
            if (k < 0 || k >= c->size) {                                                    \
                if (!c->failed) {                                                           \
                    c->failed = true;                                                       \
                    c->bad = k;                                                             \
                }                                                                           \
                *o = 0;                                                                     \
                continue;                                                                   \
            }                                                                               \
            *o = *(const T *)(p[1] + j * s[1] + k * c->stride);                             \
        }                                                                                   \
    }                                                                                       \
    static nb_status k_gather_##SFX(const nb_kernel_args *a) { return gather(a, rg_##SFX); }

/* scatter_add: p = out (indexed dim stride 0), index, source; added in ACC, which is uint64_t
 * for the integers so that they wrap around (as in PyTorch) instead of overflowing. */
#define DEF_SCATTER(SFX, T, ACC)                                                            \
    static void rs_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx) \
    {                                                                                       \
        index_ctx *c = (index_ctx *)ctx;                                                    \
        (void)k0;                                                                           \
        for (int64_t j = 0; j < n; j++) {                                                   \
            int64_t k = *(const int64_t *)(p[1] + j * s[1]);                                \
            if (k < 0 || k >= c->size) {                                                    \
                if (!c->failed) {                                                           \
                    c->failed = true;                                                       \
                    c->bad = k;                                                             \
                }                                                                           \
                continue;                                                                   \
            }                                                                               \
            T *o = (T *)(p[0] + j * s[0] + k * c->stride);                                  \
            *o = (T)((ACC)*o + (ACC) * (const T *)(p[2] + j * s[2]));                       \
        }                                                                                   \
    }                                                                                       \
    static nb_status k_scatter_add_##SFX(const nb_kernel_args *a) { return scatter_add(a, rs_##SFX); }

/* Checks that index (shaped like `shape`) fits the indexed tensor t along every dim but d. */
static nb_status check_index_op(const char *name, const nb_operand *t, const nb_operand *index,
                                const nb_operand *other, int64_t d)
{
    if (index->dtype != NB_DTYPE_I64)
        return NBC_ERR(NB_DTYPE_UNSUPPORTED, "%s: index dtype is %s, expected int64", name,
                       nbc_dtype_name(index->dtype));
    if (t->ndim != index->ndim || other->ndim != index->ndim)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: index has %d dims, the tensors %d and %d; "
                       "expected the same", name, (int)index->ndim, (int)t->ndim,
                       (int)other->ndim);
    if (d < 0 || d >= (t->ndim ? t->ndim : 1))
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: dim %lld out of range for %d dims", name,
                       (long long)d, (int)t->ndim);
    for (int32_t e = 0; e < t->ndim; e++) {
        if (e != d && index->shape[e] > t->shape[e])
            return NBC_ERR(NB_SHAPE_MISMATCH, "%s: index size %lld at dim %d exceeds the "
                           "tensor's size %lld", name, (long long)index->shape[e], (int)e,
                           (long long)t->shape[e]);
    }
    return NB_OK;
}

static nb_status index_error(const index_ctx *c)
{
    return NBC_ERR(NB_INDEX_OUT_OF_RANGE, "%s: index %lld out of range for dim %lld of size %lld",
                   c->name, (long long)c->bad, (long long)c->dim, (long long)c->size);
}

static nb_status gather(const nb_kernel_args *a, nbc_row_fn row)
{
    const nb_operand *out = a->out, *src = &a->in[0], *index = &a->in[1];
    int64_t d = a->i[0];
    if (a->n_in < 2)
        return NBC_ERR(NB_INVALID_ARGUMENT, "gather: needs a source and an index");
    if (check_index_op("gather", src, index, out, d) != NB_OK)
        return NB_SHAPE_MISMATCH;
    for (int32_t e = 0; e < out->ndim; e++)
        if (out->shape[e] != index->shape[e])
            return NBC_ERR(NB_SHAPE_MISMATCH, "gather: output and index differ at dim %d "
                           "(%lld vs %lld)", (int)e, (long long)out->shape[e],
                           (long long)index->shape[e]);
    size_t es = nbc_dtype_size(out->dtype);
    index_ctx c = {"gather", src->ndim ? src->shape[d] : 1, 0, d, 0, false};
    int64_t sst[NB_MAX_DIMS];
    for (int32_t e = 0; e < src->ndim; e++)
        sst[e] = e == d ? 0 : src->strides[e];
    if (src->ndim)
        c.stride = src->strides[d] * (int64_t)es;
    nbc_iter it;
    nbc_iter_init(&it, 3, out->ndim, out->shape);
    nbc_iter_operand(&it, 0, nbc_ptr(out), out->strides, es);
    nbc_iter_operand(&it, 1, nbc_ptr(src), sst, es);
    nbc_iter_operand(&it, 2, nbc_ptr(index), index->strides, 8);
    nbc_iter_run(&it, row, &c, false);
    return c.failed ? index_error(&c) : NB_OK;
}

static nb_status scatter_add(const nb_kernel_args *a, nbc_row_fn row)
{
    const nb_operand *out = a->out, *index = &a->in[0], *src = &a->in[1];
    int64_t d = a->i[0];
    if (a->n_in < 2)
        return NBC_ERR(NB_INVALID_ARGUMENT, "scatter_add: needs an index and a source");
    if (check_index_op("scatter_add", out, index, src, d) != NB_OK)
        return NB_SHAPE_MISMATCH;
    for (int32_t e = 0; e < src->ndim; e++)
        if (src->shape[e] < index->shape[e])
            return NBC_ERR(NB_SHAPE_MISMATCH, "scatter_add: source size %lld at dim %d is "
                           "smaller than the index's %lld", (long long)src->shape[e], (int)e,
                           (long long)index->shape[e]);
    size_t es = nbc_dtype_size(out->dtype);
    index_ctx c = {"scatter_add", out->ndim ? out->shape[d] : 1, 0, d, 0, false};
    int64_t ost[NB_MAX_DIMS];
    for (int32_t e = 0; e < out->ndim; e++)
        ost[e] = e == d ? 0 : out->strides[e];
    if (out->ndim)
        c.stride = out->strides[d] * (int64_t)es;
    nbc_iter it;
    nbc_iter_init(&it, 3, index->ndim, index->shape);
    nbc_iter_operand(&it, 0, nbc_ptr(out), ost, es);
    nbc_iter_operand(&it, 1, nbc_ptr(index), index->strides, 8);
    nbc_iter_operand(&it, 2, nbc_ptr(src), src->strides, es);
    nbc_iter_run(&it, row, &c, false);
    return c.failed ? index_error(&c) : NB_OK;
}

NBC_ALL_DTYPES(DEF_GATHER)
DEF_SCATTER(f32, float, float)
DEF_SCATTER(f64, double, double)
DEF_SCATTER(i32, int32_t, uint64_t)
DEF_SCATTER(i64, int64_t, uint64_t)
DEF_SCATTER(u8, uint8_t, uint64_t)

/* in[0] grad (M, D), in[1] int64 indices (M), contiguous; out (V, D) contiguous: zeroed, then
 * row idx[m] += grad row m for every m whose index is not i[0] (the padding row; -1: none). */
#define DEF_EMBEDDING_BACKWARD(SFX, T)                                                      \
    static nb_status k_embedding_backward_##SFX(const nb_kernel_args *a)                    \
    {                                                                                       \
        const char *name = "embedding_backward";                                            \
        const nb_operand *g = &a->in[0], *ix = &a->in[1], *o = a->out;                      \
        if (a->n_in != 2 || g->ndim != 2 || ix->ndim != 1 || o->ndim != 2 ||                \
            ix->dtype != NB_DTYPE_I64 || g->shape[0] != ix->shape[0] ||                     \
            g->shape[1] != o->shape[1])                                                     \
            return NBC_ERR(NB_SHAPE_MISMATCH, "%s: expected grad (M, D), int64 indices (M) " \
                           "and out (V, D)", name);                                         \
        if (!nbc_is_contiguous(g) || !nbc_is_contiguous(ix) || !nbc_is_contiguous(o))      \
            return NBC_ERR(NB_INVALID_ARGUMENT, "%s: operands must be contiguous", name);   \
        int64_t M = g->shape[0], D = g->shape[1], V = o->shape[0], pad = a->i[0];           \
        const T *gp = (const T *)nbc_ptr(g);                                                \
        const int64_t *ip = (const int64_t *)nbc_ptr(ix);                                   \
        T *op = (T *)nbc_ptr(o);                                                            \
        memset(op, 0, (size_t)(V * D) * sizeof(T));                                         \
        for (int64_t m = 0; m < M; m++) {                                                   \
            int64_t r = ip[m];                                                              \
            if (r < 0 || r >= V)                                                            \
                return NBC_ERR(NB_INDEX_OUT_OF_RANGE, "%s: index %lld out of range for a "  \
                               "table of %lld rows", name, (long long)r, (long long)V);     \
            if (r == pad)                                                                   \
                continue;                                                                   \
            T *dst = op + r * D;                                                            \
            const T *src = gp + m * D;                                                      \
            for (int64_t d = 0; d < D; d++)                                                 \
                dst[d] += src[d];                                                           \
        }                                                                                   \
        return NB_OK;                                                                       \
    }
DEF_EMBEDDING_BACKWARD(f32, float)
DEF_EMBEDDING_BACKWARD(f64, double)

#define E_RED(SFX, T, E, K)                                                                 \
    {"argmax", E, k_argmax_##SFX}, {"argmin", E, k_argmin_##SFX}, {"gather", E, k_gather_##SFX},
#define E_NUM(SFX, E)                                                                       \
    {"sum", E, k_sum_##SFX}, {"prod", E, k_prod_##SFX}, {"max", E, k_max_##SFX},            \
        {"min", E, k_min_##SFX}, {"scatter_add", E, k_scatter_add_##SFX},

const nb_kernel_desc nbc_reduce_kernels[] = {
    NBC_ALL_DTYPES(E_RED)
    E_NUM(f32, NB_DTYPE_F32) E_NUM(f64, NB_DTYPE_F64) E_NUM(i32, NB_DTYPE_I32)
    E_NUM(i64, NB_DTYPE_I64) E_NUM(u8, NB_DTYPE_U8)
    {"max", NB_DTYPE_BOOL, k_max_b8},
    {"min", NB_DTYPE_BOOL, k_min_b8},
    {"embedding_backward", NB_DTYPE_F32, k_embedding_backward_f32},
    {"embedding_backward", NB_DTYPE_F64, k_embedding_backward_f64},
};
const size_t nbc_reduce_count = sizeof nbc_reduce_kernels / sizeof nbc_reduce_kernels[0];
