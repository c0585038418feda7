/* cpu_iter.c - the strided N-d iterator under every elementwise kernel of the cpu_blas plugin,
 * plus per-thread scratch buffers and the helpers that turn strided operands into contiguous
 * ones for the kernels (conv, pooling, softmax) that want them. */
#include "cpu_internal.h"

#include <pthread.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

size_t nbc_dtype_size(nb_dtype dt)
{
    switch (dt) {
    case NB_DTYPE_F64:
    case NB_DTYPE_I64:
        return 8;
    case NB_DTYPE_F32:
    case NB_DTYPE_I32:
        return 4;
    case NB_DTYPE_F16:
    case NB_DTYPE_BF16:
        return 2;
    default:
        return 1;
    }
}

const char *nbc_dtype_name(nb_dtype dt)
{
    static const char *names[] = {"float32", "float64", "int32", "int64", "bool", "uint8",
                                  "float16", "bfloat16"};
    return (unsigned)dt < NB_DTYPE_COUNT ? names[dt] : "unknown dtype";
}

int64_t nbc_numel(const nb_operand *o)
{
    int64_t n = 1;
    for (int32_t d = 0; d < o->ndim; d++)
        n *= o->shape[d];
    return n;
}

bool nbc_is_contiguous(const nb_operand *o)
{
    int64_t expect = 1;
    for (int32_t d = o->ndim - 1; d >= 0; d--) {
        if (o->shape[d] == 1)
            continue;
        if (o->strides[d] != expect)
            return false;
        expect *= o->shape[d];
    }
    return true;
}

int nbc_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void nbc_iter_init(nbc_iter *it, int nops, int ndim, const int64_t *shape)
{
    it->nops = nops;
    it->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        it->shape[d] = shape[d];
}

void nbc_iter_operand(nbc_iter *it, int k, char *base, const int64_t *strides, size_t esize)
{
    it->base[k] = base;
    for (int d = 0; d < it->ndim; d++)
        it->st[k][d] = strides[d] * (int64_t)esize;
}

int64_t nbc_iter_prepare(nbc_iter *it)
{
    int nd = 0;
    int64_t total = 1;
    for (int d = 0; d < it->ndim; d++) {
        int64_t n = it->shape[d];
        total *= n;
        if (n == 1)
            continue;
        bool merge = nd > 0;
        for (int k = 0; k < it->nops && merge; k++)
            merge = it->st[k][nd - 1] == it->st[k][d] * n;
        if (merge) {
            it->shape[nd - 1] *= n;
            for (int k = 0; k < it->nops; k++)
                it->st[k][nd - 1] = it->st[k][d];
        } else {
            it->shape[nd] = n;
            for (int k = 0; k < it->nops; k++)
                it->st[k][nd] = it->st[k][d];
            nd++;
        }
    }
    if (nd == 0) {
        it->shape[0] = 1;
        for (int k = 0; k < it->nops; k++)
            it->st[k][0] = 0;
        nd = 1;
    }
    it->ndim = nd;
    return total;
}

/* Divisions happen once per call, never per element. */
void nbc_iter_range(const nbc_iter *it, nbc_row_fn fn, const void *ctx, int64_t start,
                      int64_t end)
{
    const int nd = it->ndim, last = nd - 1, nops = it->nops;
    int64_t idx[NB_MAX_DIMS];
    char *p[NBC_MAX_OPS];
    int64_t s[NBC_MAX_OPS];
    int64_t rem = start;
    for (int d = last; d >= 0; d--) {
        idx[d] = rem % it->shape[d];
        rem /= it->shape[d];
    }
    for (int k = 0; k < nops; k++) {
        p[k] = it->base[k];
        for (int d = 0; d < nd; d++)
            p[k] += idx[d] * it->st[k][d];
        s[k] = it->st[k][last];
    }
    int64_t pos = start;
    while (pos < end) {
        int64_t n = it->shape[last] - idx[last];
        if (n > end - pos)
            n = end - pos;
        fn(p, s, n, pos, ctx);
        pos += n;
        if (pos >= end)
            break;
        idx[last] += n;
        for (int k = 0; k < nops; k++)
            p[k] += n * s[k];
        for (int d = last; d > 0 && idx[d] == it->shape[d]; d--) {
            idx[d] = 0;
            idx[d - 1]++;
            for (int k = 0; k < nops; k++)
                p[k] += it->st[k][d - 1] - it->shape[d] * it->st[k][d];
        }
    }
}

void nbc_iter_run(nbc_iter *it, nbc_row_fn fn, const void *ctx, bool parallel)
{
    int64_t total = nbc_iter_prepare(it);
    if (total == 0)
        return;
#ifdef _OPENMP
    if (parallel && total >= NBC_PARALLEL_MIN) {
        /* A broadcast output would have several threads write one element. */
        for (int d = 0; d < it->ndim; d++)
            if (it->st[0][d] == 0)
                parallel = false;
        int nt = omp_get_max_threads();
        if (nt > total / (NBC_PARALLEL_MIN / 4))
            nt = (int)(total / (NBC_PARALLEL_MIN / 4));
        if (parallel && nt > 1) {
#pragma omp parallel num_threads(nt)
            {
                int t = omp_get_thread_num(), T = omp_get_num_threads();
                /* Chunks are multiples of 64 elements so threads never share a cache line
                 * of a contiguous output. */
                int64_t chunk = ((total + T - 1) / T + 63) & ~(int64_t)63;
                int64_t a = chunk * t, b = a + chunk < total ? a + chunk : total;
                if (a < b)
                    nbc_iter_range(it, fn, ctx, a, b);
            }
            return;
        }
    }
#else
    (void)parallel;
#endif
    nbc_iter_range(it, fn, ctx, 0, total);
}

/* Small operands that are all contiguous or broadcast scalars: one row call, no iterator. */
static __attribute__((noinline)) bool ew_small(const nb_kernel_args *a, int64_t n,
                                               nbc_row_fn fn, const void *ctx)
{
    const nb_operand *out = a->out;
    if (!nbc_is_contiguous(out))
        return false;
    char *p[NBC_MAX_OPS];
    int64_t s[NBC_MAX_OPS];
    p[0] = nbc_ptr(out);
    s[0] = (int64_t)nbc_dtype_size(out->dtype);
    for (int32_t k = 0; k < a->n_in; k++) {
        const nb_operand *in = &a->in[k];
        if (in->ndim != out->ndim)
            return false;
        bool scalar = true, same = true;
        for (int32_t d = 0; d < in->ndim; d++) {
            scalar = scalar && (in->strides[d] == 0 || in->shape[d] == 1);
            same = same && in->shape[d] == out->shape[d];
        }
        if (!same || (!scalar && !nbc_is_contiguous(in)))
            return false;
        p[1 + k] = nbc_ptr(in);
        s[1 + k] = scalar ? 0 : (int64_t)nbc_dtype_size(in->dtype);
    }
    if (n > 0)
        fn(p, s, n, 0, ctx);
    return true;
}

static __attribute__((noinline)) nb_status ew_general(const nb_kernel_args *a, nbc_row_fn fn,
                                                      const void *ctx)
{
    const nb_operand *out = a->out;
    nbc_iter it;
    nbc_iter_init(&it, 1 + a->n_in, out->ndim, out->shape);
    nbc_iter_operand(&it, 0, nbc_ptr(out), out->strides, nbc_dtype_size(out->dtype));
    for (int32_t k = 0; k < a->n_in; k++) {
        const nb_operand *in = &a->in[k];
        if (in->ndim != out->ndim)
            return NBC_ERR(NB_SHAPE_MISMATCH, "cpu: input %d has %d dims, expected %d like the "
                           "output", (int)k, (int)in->ndim, (int)out->ndim);
        nbc_iter_operand(&it, 1 + k, nbc_ptr(in), in->strides, nbc_dtype_size(in->dtype));
    }
    nbc_iter_run(&it, fn, ctx, true);
    return NB_OK;
}

/* Kept small so that a 1-element op costs a few nanoseconds: the iterator's setup lives in
 * functions this one only calls when needed. */
nb_status nbc_ew(const nb_kernel_args *a, nbc_row_fn fn, const void *ctx)
{
    const nb_operand *out = a->out;
    if ((uint32_t)a->n_in + 1 > NBC_MAX_OPS)
        return NBC_ERR(NB_INVALID_ARGUMENT, "cpu: %d inputs given, at most %d supported",
                       (int)a->n_in, NBC_MAX_OPS - 1);
    int64_t n = 1;
    for (int32_t d = 0; d < out->ndim; d++)
        n *= out->shape[d];
    if (n == 1) {
        /* one element: strides are irrelevant */
        static const int64_t s[NBC_MAX_OPS] = {0};
        char *p[NBC_MAX_OPS];
        p[0] = nbc_ptr(out);
        for (int32_t k = 0; k < a->n_in; k++)
            p[1 + k] = nbc_ptr(&a->in[k]);
        fn(p, s, 1, 0, ctx);
        return NB_OK;
    }
    if (n < NBC_PARALLEL_MIN && ew_small(a, n, fn, ctx))
        return NB_OK;
    return ew_general(a, fn, ctx);
}

/* ---- scratch ---- */

typedef struct scratch_buf {
    void *p;
    size_t cap;
} scratch_buf;

static _Thread_local scratch_buf scratch[NBC_SCRATCH_SLOTS];

/* A thread that used scratch frees it when it exits (the key's destructor), so application
 * threads that run kernels leave nothing behind. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free_thread(void *bufs)
{
    scratch_buf *b = bufs;
    for (int k = 0; k < NBC_SCRATCH_SLOTS; k++) {
        free(b[k].p);
        b[k].p = NULL;
        b[k].cap = 0;
    }
}

static void scratch_key_create(void) { pthread_key_create(&scratch_key, scratch_free_thread); }

void *nbc_scratch(int slot, size_t bytes)
{
    if (bytes == 0)
        bytes = 1; /* an empty operand still gets a valid pointer */
    if (bytes <= scratch[slot].cap)
        return scratch[slot].p;
    pthread_once(&scratch_once, scratch_key_create);
    pthread_setspecific(scratch_key, scratch);
    size_t cap = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, cap);
    if (!p) {
        NBC_ERR(NB_OUT_OF_MEMORY, "cpu: out of memory for a %zu-byte scratch buffer", bytes);
        return NULL;
    }
    free(scratch[slot].p);
    scratch[slot].p = p;
    scratch[slot].cap = cap;
    return p;
}

void nbc_scratch_release(void) { scratch_free_thread(scratch); }

/* ---- contiguous copies ---- */

static void copy_bytes_row(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx)
{
    size_t es = *(const size_t *)ctx;
    (void)k0;
    if (s[0] == (int64_t)es && s[1] == (int64_t)es) {
        memcpy(p[0], p[1], (size_t)n * es);
        return;
    }
    char *o = p[0];
    const char *x = p[1];
    for (int64_t i = 0; i < n; i++, o += s[0], x += s[1])
        memcpy(o, x, es);
}

static void contiguous_strides(const nb_operand *o, int64_t *st)
{
    int64_t acc = 1;
    for (int32_t d = o->ndim - 1; d >= 0; d--) {
        st[d] = acc;
        acc *= o->shape[d];
    }
}

void nbc_gather_contiguous(void *dst, const nb_operand *src)
{
    int64_t st[NB_MAX_DIMS];
    size_t es = nbc_dtype_size(src->dtype);
    contiguous_strides(src, st);
    nbc_iter it;
    nbc_iter_init(&it, 2, src->ndim, src->shape);
    nbc_iter_operand(&it, 0, dst, st, es);
    nbc_iter_operand(&it, 1, nbc_ptr(src), src->strides, es);
    nbc_iter_run(&it, copy_bytes_row, &es, true);
}

void nbc_scatter_contiguous(const nb_operand *dst, const void *src)
{
    int64_t st[NB_MAX_DIMS];
    size_t es = nbc_dtype_size(dst->dtype);
    contiguous_strides(dst, st);
    nbc_iter it;
    nbc_iter_init(&it, 2, dst->ndim, dst->shape);
    nbc_iter_operand(&it, 0, nbc_ptr(dst), dst->strides, es);
    nbc_iter_operand(&it, 1, (char *)src, st, es);
    nbc_iter_run(&it, copy_bytes_row, &es, true);
}

void *nbc_contiguous_in(const nb_operand *o, int slot)
{
    if (nbc_is_contiguous(o))
        return nbc_ptr(o);
    void *buf = nbc_scratch(slot, (size_t)nbc_numel(o) * nbc_dtype_size(o->dtype));
    if (buf)
        nbc_gather_contiguous(buf, o);
    return buf;
}
