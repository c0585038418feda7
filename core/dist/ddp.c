/* ddp.c - distributed data parallel as PyTorch's DDP does it: same model on every rank (checked,
 * then broadcast from rank 0), gradients packed into buckets in reverse registration order, each
 * bucket allreduced as soon as a post-accumulate-grad hook sees its last gradient, and the
 * averages copied back into .grad when the last parameter's gradient is in. */
#include "nabla_layer.h"

#include <string.h>
#include <time.h>

typedef struct ddp_param {
    nb_ddp *ddp;
    nb_tensor *p;     /* retained */
    const char *name; /* the module's, valid while it lives */
    int32_t bucket;
    int64_t offset;   /* in elements, within the bucket */
    int64_t numel;
    bool ready;       /* its gradient of this backward is in the bucket */
    bool hooked;      /* its hook is registered */
} ddp_param;

typedef struct ddp_bucket {
    nb_tensor *flat;  /* 1-d, the bucket's gradients back to back */
    int32_t n_params, n_ready;
    nb_work *work;    /* in flight between launch and the end of backward */
} ddp_bucket;

struct nb_ddp {
    nb_module *module;
    nb_process_group *pg;
    ddp_param *params; /* in bucket order: reverse registration order */
    int32_t n_params;
    ddp_bucket *buckets;
    int32_t n_buckets;
    int32_t next_launch; /* buckets launch strictly in index order: the same order on all ranks */
    int32_t n_ready;     /* parameters whose gradient is in, this backward */
    uint64_t bytes_reduced;
    double last_wait_s;
    bool sync;             /* false between nb_ddp_set_sync(d, false) and (d, true): no_sync */
    bool buffer_sync;      /* broadcast buffers from rank 0 before every forward */
    nb_tensor **buffers;   /* the module's state entries that are not parameters (borrowed) */
    int32_t n_buffers;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t k = 0; k < n; k++)
        h = (h ^ b[k]) * 0x100000001b3ull;
    return h;
}

static nb_status allreduce_i64(nb_process_group *pg, int64_t *v, int64_t n, nb_reduce_op op)
{
    nb_tensor *t = nb_from_blob(v, NB_SHAPE(n), (nb_opts){.dtype = NB_DTYPE_I64, .device = "cpu"},
                                NULL, NULL);
    if (!t)
        return nb_last_status();
    nb_status st = nb_work_finish(nb_allreduce(pg, t, op));
    nb_release(t);
    return st;
}

/* Every rank must hold the same state names, dtypes and shapes, in the same order; a mismatch
 * fails on every rank (they all see the same reduced values), naming the first entry. */
static nb_status check_models(nb_ddp *d)
{
    int32_t n = nb_module_state_count(d->module);
    int64_t counts[2] = {n, -(int64_t)n};
    nb_status st = allreduce_i64(d->pg, counts, 2, NB_REDUCE_OP_MAX);
    if (st != NB_OK)
        return st;
    if (counts[0] != -counts[1])
        return nbi_error(NB_SHAPE_MISMATCH, "ddp: ranks have different models: rank %d has %d "
                         "parameters and buffers, the ranks have between %lld and %lld",
                         nb_process_group_rank(d->pg), n, (long long)-counts[1],
                         (long long)counts[0]);
    if (n == 0)
        return NB_OK;
    int64_t *lo = nbi_malloc(2 * (size_t)n * sizeof *lo), *hi = lo + n;
    if (!lo)
        return nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory");
    for (int32_t k = 0; k < n; k++) {
        const char *name = "";
        nb_tensor *t = nb_module_state(d->module, k, &name);
        uint64_t h = fnv(0xcbf29ce484222325ull, name, strlen(name) + 1);
        int32_t meta[2] = {nb_tensor_dtype(t), nb_tensor_ndim(t)};
        h = fnv(h, meta, sizeof meta);
        h = fnv(h, nbi_dims(t), (size_t)nb_tensor_ndim(t) * sizeof nbi_dims(t)[0]);
        lo[k] = hi[k] = (int64_t)(h >> 1); /* keep clear of INT64_MIN */
    }
    st = allreduce_i64(d->pg, lo, n, NB_REDUCE_OP_MIN);
    if (st == NB_OK)
        st = allreduce_i64(d->pg, hi, n, NB_REDUCE_OP_MAX);
    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        if (lo[k] == hi[k])
            continue;
        const char *name = "";
        nb_tensor *t = nb_module_state(d->module, k, &name);
        st = nbi_error(NB_SHAPE_MISMATCH, "ddp: ranks have different models: entry %d is '%s' "
                       "(%s %s) on rank %d, and another rank differs in name, dtype or shape",
                       k, name, nb_dtype_name(nb_tensor_dtype(t)), NBI_SHAPE_STR(t),
                       nb_process_group_rank(d->pg));
    }
    nbi_free(lo);
    return st;
}

static nb_status launch_ready(nb_ddp *d)
{
    while (d->next_launch < d->n_buckets) {
        ddp_bucket *b = &d->buckets[d->next_launch];
        if (b->n_ready < b->n_params)
            break;
        b->work = nb_allreduce(d->pg, b->flat, NB_REDUCE_OP_AVG);
        if (!b->work)
            return nb_last_status();
        d->bytes_reduced +=
            (uint64_t)nb_tensor_numel(b->flat) * nb_dtype_size(nb_tensor_dtype(b->flat));
        d->next_launch++;
    }
    return NB_OK;
}

/* Waits for every launched bucket and forgets this backward; on success copies the averaged
 * gradients into .grad. */
static nb_status finish(nb_ddp *d, bool copy_back)
{
    nb_status st = NB_OK;
    double t0 = now_s();
    for (int32_t k = 0; k < d->n_buckets; k++) {
        ddp_bucket *b = &d->buckets[k];
        if (b->work) {
            nb_status s = nb_work_wait(b->work);
            nb_work_free(b->work);
            b->work = NULL;
            if (st == NB_OK && s != NB_OK)
                st = s;
        }
    }
    d->last_wait_s = now_s() - t0;
    bool prev = nb_set_grad_enabled(false);
    for (int32_t k = 0; k < d->n_params; k++) {
        ddp_param *p = &d->params[k];
        if (st == NB_OK && copy_back && p->numel > 0) {
            ddp_bucket *b = &d->buckets[p->bucket];
            nb_tensor *slice = nb_narrow(b->flat, 0, p->offset, p->numel);
            nb_tensor *view = slice ? nb_view(slice, nb_tensor_shape(p->p)) : NULL;
            st = view ? nb_tensor_copy_(nbi_grad_of(p->p), view) : nb_last_status();
            nb_release(view);
            nb_release(slice);
        }
        p->ready = false;
    }
    nb_set_grad_enabled(prev);
    for (int32_t k = 0; k < d->n_buckets; k++)
        d->buckets[k].n_ready = 0;
    d->next_launch = 0;
    d->n_ready = 0;
    return st;
}

/* The post-accumulate-grad hook of one parameter. */
static nb_status on_grad(nb_tensor *t, void *ctx)
{
    ddp_param *p = ctx;
    nb_ddp *d = p->ddp;
    if (!d->sync)
        return NB_OK; /* gradients accumulate locally; the next synced backward reduces them */
    if (p->ready)
        return nbi_error(NB_AUTOGRAD, "ddp: parameter '%s' received its gradient twice in one "
                         "backward (a second backward before the first finished?)", p->name);
    nbi_api_depth++;
    nb_status st = NB_OK;
    if (p->numel > 0) {
        ddp_bucket *b = &d->buckets[p->bucket];
        bool prev = nb_set_grad_enabled(false);
        nb_tensor *slice = nb_narrow(b->flat, 0, p->offset, p->numel);
        nb_tensor *view = slice ? nb_view(slice, nb_tensor_shape(t)) : NULL;
        st = view ? nb_tensor_copy_(view, nbi_grad_of(t)) : nb_last_status();
        nb_release(view);
        nb_release(slice);
        nb_set_grad_enabled(prev);
    }
    if (st == NB_OK) {
        p->ready = true;
        d->buckets[p->bucket].n_ready++;
        st = launch_ready(d);
    }
    if (st == NB_OK && ++d->n_ready == d->n_params)
        st = finish(d, true);
    nbi_api_depth--;
    return st;
}

static nb_status build_buckets(nb_ddp *d, double bucket_mb)
{
    int32_t total = nb_module_parameter_count(d->module), n = 0;
    for (int32_t k = 0; k < total; k++)
        n += nbi_requires_grad(nb_module_parameter(d->module, k));
    d->params = nbi_calloc(n ? (size_t)n : 1, sizeof *d->params);
    d->buckets = nbi_calloc(n ? (size_t)n : 1, sizeof *d->buckets);
    if (!d->params || !d->buckets)
        return nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory");
    double cap = bucket_mb * 1024.0 * 1024.0;
    double filled = 0;
    int64_t *sizes = nbi_calloc(n ? (size_t)n : 1, sizeof *sizes);
    if (!sizes)
        return nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory");
    /* Reverse registration order: backward produces the last layers' gradients first. */
    for (int32_t k = total - 1; k >= 0; k--) {
        nb_tensor *t = nb_module_parameter(d->module, k);
        if (!nbi_requires_grad(t))
            continue;
        ddp_param *p = &d->params[d->n_params];
        ddp_param *last = d->n_params ? p - 1 : NULL;
        bool same = last && nb_tensor_dtype(last->p) == nb_tensor_dtype(t) &&
                    nbi_same_device(last->p, t);
        if (!last || !same || filled >= cap) {
            d->n_buckets++;
            filled = 0;
        }
        *p = (ddp_param){.ddp = d, .p = nb_retain(t), .bucket = d->n_buckets - 1,
                         .name = nb_module_parameter_name(d->module, k),
                         .numel = nb_tensor_numel(t)};
        p->offset = sizes[p->bucket];
        sizes[p->bucket] += p->numel;
        d->buckets[p->bucket].n_params++;
        filled += (double)p->numel * nb_dtype_size(nb_tensor_dtype(t));
        d->n_params++;
    }
    nb_status st = NB_OK;
    for (int32_t b = 0; st == NB_OK && b < d->n_buckets; b++) {
        const nb_tensor *first = NULL;
        for (int32_t k = 0; k < d->n_params && !first; k++)
            if (d->params[k].bucket == b)
                first = d->params[k].p;
        d->buckets[b].flat = nb_zeros(NB_SHAPE(sizes[b]),
                                      (nb_opts){.dtype = nb_tensor_dtype(first),
                                                .device = nb_tensor_device(first)});
        if (!d->buckets[b].flat)
            st = nb_last_status();
    }
    nbi_free(sizes);
    return st;
}

static void ddp_free(nb_ddp *d)
{
    if (!d)
        return;
    for (int32_t k = 0; d->buckets && k < d->n_buckets; k++) {
        nb_work_free(d->buckets[k].work);
        nb_release(d->buckets[k].flat);
    }
    for (int32_t k = 0; d->params && k < d->n_params; k++) {
        if (d->params[k].hooked)
            nb_tensor_remove_post_accumulate_grad_hook(d->params[k].p, on_grad, &d->params[k]);
        nb_release(d->params[k].p);
    }
    nbi_free(d->params);
    nbi_free(d->buckets);
    nbi_free(d->buffers);
    nbi_free(d);
}

static nb_ddp *ddp_new(nb_module *m, nb_process_group *pg, nb_ddp_opts o)
{
    if (!m || !pg) {
        nbi_error(NB_NULL_ARGUMENT, "ddp_new: %s is NULL", m ? "process group" : "module");
        return NULL;
    }
    if (!(o.bucket_mb >= 0) || o.bucket_mb > 1e6) {
        nbi_error(NB_INVALID_ARGUMENT, "ddp_new: bucket_mb is %g (expected 0 for 25, or a "
                  "positive size in MiB)", o.bucket_mb);
        return NULL;
    }
    nb_ddp *d = nbi_calloc(1, sizeof *d);
    if (!d) {
        nbi_error(NB_OUT_OF_MEMORY, "ddp_new: out of memory");
        return NULL;
    }
    d->module = m;
    d->pg = pg;
    d->sync = true;
    d->buffer_sync = !o.no_buffer_sync;
    nb_status st = check_models(d);
    int32_t n_state = nb_module_state_count(m), n_params = nb_module_parameter_count(m);
    if (st == NB_OK && !(d->buffers = nbi_calloc(n_state > 0 ? (size_t)n_state : 1,
                                                 sizeof *d->buffers)))
        st = nbi_error(NB_OUT_OF_MEMORY, "ddp_new: out of memory");
    for (int32_t k = 0; st == NB_OK && k < n_state; k++) {
        nb_tensor *t = nb_module_state(m, k, NULL);
        bool is_param = false;
        for (int32_t j = 0; j < n_params && !is_param; j++)
            is_param = nb_module_parameter(m, j) == t;
        if (!is_param)
            d->buffers[d->n_buffers++] = t;
    }
    for (int32_t k = 0; st == NB_OK && !o.no_broadcast && k < nb_module_state_count(m); k++)
        st = nb_work_finish(nb_broadcast(pg, nb_module_state(m, k, NULL), 0));
    if (st == NB_OK)
        st = build_buckets(d, o.bucket_mb > 0 ? o.bucket_mb : 25.0);
    for (int32_t k = 0; st == NB_OK && k < d->n_params; k++) {
        st = nb_tensor_register_post_accumulate_grad_hook(d->params[k].p, on_grad,
                                                          &d->params[k]);
        d->params[k].hooked = st == NB_OK;
    }
    if (st != NB_OK) {
        nb_status keep = nb_last_status();
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", nb_last_error());
        ddp_free(d);
        nbi_error(keep, "%s", msg);
        return NULL;
    }
    return d;
}

#define DDP_API(type, expr)                                                                   \
    do {                                                                                      \
        nbi_api_depth++;                                                                      \
        type r_ = (expr);                                                                     \
        nbi_api_depth--;                                                                      \
        return r_;                                                                            \
    } while (0)

nb_ddp *nb_ddp_new(nb_module *m, nb_process_group *pg, nb_ddp_opts opts)
{
    DDP_API(nb_ddp *, ddp_new(m, pg, opts));
}

void nb_ddp_free(nb_ddp *d)
{
    nbi_api_depth++;
    ddp_free(d);
    nbi_api_depth--;
}

static nb_status finish_impl(nb_ddp *d)
{
    if (!d)
        return nbi_error(NB_NULL_ARGUMENT, "ddp_finish: ddp is NULL");
    if (d->n_ready == 0)
        return NB_OK;
    const char *missing = "?";
    for (int32_t k = 0; k < d->n_params; k++)
        if (!d->params[k].ready) {
            missing = d->params[k].name;
            break;
        }
    char name[256];
    snprintf(name, sizeof name, "%s", missing);
    int32_t got = d->n_ready;
    nb_status st = finish(d, false);
    if (st != NB_OK)
        return st;
    return nbi_error(NB_AUTOGRAD, "ddp: the last backward produced gradients for %d of %d "
                     "parameters; '%s' got none (every parameter must take part in the loss)",
                     got, d->n_params, name);
}

nb_status nb_ddp_finish(nb_ddp *d) { return NBI_API_CALL(finish_impl(d)); }

nb_tensor *nb_ddp_forward(nb_ddp *d, const nb_tensor *x)
{
    if (!d) {
        nbi_error(NB_NULL_ARGUMENT, "ddp_forward: ddp is NULL");
        return NULL;
    }
    if (nb_ddp_finish(d) != NB_OK)
        return NULL;
    /* PyTorch's broadcast_buffers: running statistics follow rank 0's. */
    for (int32_t k = 0; d->buffer_sync && k < d->n_buffers; k++)
        if (nb_work_finish(nb_broadcast(d->pg, d->buffers[k], 0)) != NB_OK)
            return NULL;
    return nb_module_forward(d->module, x);
}

nb_status nb_ddp_set_sync(nb_ddp *d, bool sync)
{
    if (!d)
        return nbi_error(NB_NULL_ARGUMENT, "ddp_set_sync: ddp is NULL");
    if (d->n_ready > 0)
        return nbi_error(NB_STATE, "ddp_set_sync: a backward is half reduced (%d of %d "
                         "gradients in); call nb_ddp_finish first", d->n_ready, d->n_params);
    d->sync = sync;
    return NB_OK;
}

int32_t nb_ddp_bucket_count(const nb_ddp *d) { return d ? d->n_buckets : -1; }
uint64_t nb_ddp_bytes_reduced(const nb_ddp *d) { return d ? d->bytes_reduced : 0; }
double nb_ddp_last_wait_s(const nb_ddp *d) { return d ? d->last_wait_s : 0; }
