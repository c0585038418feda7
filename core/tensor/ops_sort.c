/* ops_sort.c - sort, argsort and topk. The order is found on the host (every device can copy
 * to it), the indices go back to the tensor's device, and the values are a gather of the input,
 * so they are differentiable like any gather. */
#include "nabla_internal.h"
#include "layer/composite.h"

#include <stdlib.h>

typedef struct sort_key {
    double v;
    int64_t i;
} sort_key;

/* NaN is larger than everything; ties keep their original order (stable). */
static int cmp_up(const void *pa, const void *pb)
{
    const sort_key *a = pa, *b = pb;
    bool na = isnan(a->v), nb2 = isnan(b->v);
    if (na != nb2)
        return na ? 1 : -1;
    if (!na && a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

static int cmp_down(const void *pa, const void *pb)
{
    const sort_key *a = pa, *b = pb;
    bool na = isnan(a->v), nb2 = isnan(b->v);
    if (na != nb2)
        return na ? -1 : 1;
    if (!na && a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* int64 indices of t's shape: each line along dim in sorted order. */
static nb_tensor *order(const char *op, const nb_tensor *t, int32_t dim, bool descending)
{
    int64_t n = nbi_numel(t->ndim, t->shape);
    int64_t len = t->ndim ? t->shape[dim] : 1, inner = 1;
    for (int32_t d = dim + 1; d < t->ndim; d++)
        inner *= t->shape[d];
    int64_t outer = len && inner ? n / (len * inner) : 0;
    double *v = nbi_malloc((size_t)(n ? n : 1) * sizeof *v);
    int64_t *idx = nbi_malloc((size_t)(n ? n : 1) * sizeof *idx);
    sort_key *line = nbi_malloc((size_t)(len ? len : 1) * sizeof *line);
    nb_tensor *r = NULL;
    if (!v || !idx || !line) {
        nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory for %lld elements", op,
                  (long long)n);
    } else if (nbi_read_f64(t, v) == NB_OK) {
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < inner; i++) {
                for (int64_t j = 0; j < len; j++)
                    line[j] = (sort_key){v[(o * len + j) * inner + i], j};
                qsort(line, (size_t)len, sizeof *line, descending ? cmp_down : cmp_up);
                for (int64_t j = 0; j < len; j++)
                    idx[(o * len + j) * inner + i] = line[j].i;
            }
        r = nb_from_data(idx, nnc_shape(t), (nb_opts){NB_DTYPE_I64, NNC_DEV(t)});
    }
    nbi_free(v);
    nbi_free(idx);
    nbi_free(line);
    return r;
}

static bool sort_dim(const char *op, const nb_tensor *t, int32_t *dim)
{
    if (t->ndim == 0) {
        if (*dim == 0 || *dim == -1) {
            *dim = 0;
            return true;
        }
        nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: dim %d out of range for a 0-d tensor (expected 0 "
                  "or -1)", op, *dim);
        return false;
    }
    return nbi_check_dim(op, t, dim, false) == NB_OK;
}

/* values = gather(t, dim, idx); a 0-d t is gathered as (1). */
static nb_tensor *take(const nb_tensor *t, int32_t dim, const nb_tensor *idx)
{
    if (t->ndim > 0)
        return nb_gather(t, dim, idx);
    nb_tensor *t1 = nb_reshape(t, NB_SHAPE(1)), *i1 = nb_reshape(idx, NB_SHAPE(1));
    nb_tensor *g = t1 && i1 ? nb_gather(t1, 0, i1) : NULL;
    nb_tensor *r = g ? nb_reshape(g, NB_SHAPE_SCALAR) : NULL;
    nb_release(t1);
    nb_release(i1);
    nb_release(g);
    return r;
}

static nb_status sort_impl(const char *op, const nb_tensor *t, int32_t dim, bool descending,
                           int64_t k, nb_tensor **values, nb_tensor **indices)
{
    if (values)
        *values = NULL;
    if (indices)
        *indices = NULL;
    if (nnc_null(op, "input", t))
        return nb_last_status();
    if (!sort_dim(op, t, &dim))
        return nb_last_status();
    int64_t len = t->ndim ? t->shape[dim] : 1;
    if (k >= 0 && k > len)
        return nbi_error(NB_INDEX_OUT_OF_RANGE, "%s: k=%lld is out of range for dim %d of size "
                         "%lld (input %s)", op, (long long)k, dim, (long long)len,
                         NBI_SHAPE_STR(t));
    nb_tensor *idx = order(op, t, dim, descending);
    if (idx && k >= 0 && t->ndim > 0) {
        nb_tensor *nk = nb_narrow(idx, dim, 0, k);
        nb_tensor *c = nk ? nb_contiguous(nk) : NULL;
        nb_release(nk);
        nb_release(idx);
        idx = c;
    }
    if (!idx)
        return nb_last_status();
    if (values) {
        *values = take(t, dim, idx);
        if (!*values) {
            nb_release(idx);
            return nb_last_status();
        }
    }
    if (indices)
        *indices = idx;
    else
        nb_release(idx);
    return NB_OK;
}

/* The outputs leave through NBI_API one by one, so each goes into the caller's scope. */
static nb_status leave2(nb_status st, nb_tensor **values, nb_tensor **indices)
{
    if (values && *values)
        *values = nbi_api_leave(*values), nbi_api_depth++;
    if (indices && *indices)
        *indices = nbi_api_leave(*indices), nbi_api_depth++;
    nbi_api_depth--;
    return st;
}

nb_status nb_sort(const nb_tensor *t, int32_t dim, bool descending, nb_tensor **values,
                  nb_tensor **indices)
{
    nbi_api_depth++;
    return leave2(sort_impl("sort", t, dim, descending, -1, values, indices), values, indices);
}

nb_tensor *nb_argsort(const nb_tensor *t, int32_t dim, bool descending)
{
    nb_tensor *idx = NULL;
    nbi_api_depth++;
    nb_status st = sort_impl("argsort", t, dim, descending, -1, NULL, &idx);
    (void)st;
    return nbi_api_leave(idx);
}

nb_status nb_topk(const nb_tensor *t, int64_t k, int32_t dim, bool largest, nb_tensor **values,
                  nb_tensor **indices)
{
    nbi_api_depth++;
    if (k < 0) {
        nbi_api_depth--;
        return nbi_error(NB_INDEX_OUT_OF_RANGE, "topk: k=%lld must not be negative",
                         (long long)k);
    }
    return leave2(sort_impl("topk", t, dim, largest, k, values, indices), values, indices);
}
