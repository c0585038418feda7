/* ddp.c - distributed data parallel as PyTorch's DDP does it: same model on every rank (checked,
 * then broadcast from rank 0), gradients packed into buckets in reverse registration order (the
 * first capped at 1 MiB so its allreduce starts early) and, after the first synced backward,
 * repacked in the order that backward produced them (rank 0's order, as PyTorch's reducer
 * rebuilds its buckets once); each bucket allreduced as soon as a post-accumulate-grad hook sees
 * its last gradient, and the averages copied back into .grad (or left there, with
 * gradient_as_bucket_view) when the last parameter's gradient is in. */
#include "nabla_layer.h"

#include <string.h>
#include <time.h>

/* PyTorch's dist._DEFAULT_FIRST_BUCKET_BYTES and default bucket_cap_mb. */
#define DDP_FIRST_BUCKET_MB 1.0
#define DDP_BUCKET_MB 25.0

typedef struct ddp_param {
    nb_ddp *ddp;
    nb_tensor *p;     /* retained */
    nb_tensor *slot;  /* its place in the bucket, shaped like p (NULL when p is empty) */
    const char *name; /* the module's, valid while it lives */
    int32_t index;    /* nb_module_parameter's index */
    int32_t bucket;
    int64_t offset;   /* in elements, within the bucket */
    int64_t numel;
    bool ready;       /* its gradient of this backward is in the bucket */
    bool hooked;      /* its hook is registered */
    bool unreached;   /* find_unused_parameters: the last forward's graph does not reach it */
    bool used;        /* got a gradient since the last reduction (no_sync steps included) */
} ddp_param;

typedef struct ddp_bucket {
    nb_tensor *flat;  /* 1-d, the bucket's gradients back to back */
    int32_t n_params, n_ready;
    nb_work *work;    /* in flight between launch and the end of backward */
} ddp_bucket;

struct nb_ddp {
    nb_module *module;
    nb_process_group *pg;
    ddp_param *params; /* reverse registration order; the hooks hold pointers into it */
    int32_t n_params;
    int32_t *order;    /* positions in params, in bucket layout order */
    ddp_bucket *buckets;
    int32_t n_buckets;
    double first_mb, bucket_mb; /* the caps the layout follows */
    int32_t *arrival;  /* positions in params as the first synced backward made them ready */
    int32_t n_arrived;
    bool rebuilt;      /* the layout follows a backward's order (or never will: find_unused) */
    bool rebuild_due;  /* arrival holds a whole backward: repack before the next one */
    int32_t next_launch; /* buckets launch strictly in index order: the same order on all ranks */
    int32_t n_ready;     /* parameters whose gradient is in, this backward */
    uint64_t bytes_reduced;
    double last_wait_s;
    bool sync;             /* false between nb_ddp_set_sync(d, false) and (d, true): no_sync */
    bool buffer_sync;      /* broadcast buffers from rank 0 before every forward */
    bool find_unused;      /* opts.find_unused_parameters */
    bool grad_view;        /* opts.gradient_as_bucket_view */
    bool traced;           /* the unreached flags describe the forward this backward follows */
    int32_t *used;         /* find_unused: per parameter, 1 where used, MAX over ranks ... */
    nb_tensor *used_map;   /* ... through this cpu tensor over the same memory */
    nb_work *used_work;
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

/* A collective on host int64 values: an allreduce with op, or (root >= 0) a broadcast. */
static nb_status host_i64(nb_process_group *pg, int64_t *v, int64_t n, nb_reduce_op op,
                          int32_t root)
{
    nb_tensor *t = nb_from_blob(v, NB_SHAPE(n), (nb_opts){.dtype = NB_DTYPE_I64, .device = "cpu"},
                                NULL, NULL);
    if (!t)
        return nb_last_status();
    nb_status st = nb_work_finish(root >= 0 ? nb_broadcast(pg, t, root) : nb_allreduce(pg, t, op));
    nb_release(t);
    return st;
}

static nb_status allreduce_i64(nb_process_group *pg, int64_t *v, int64_t n, nb_reduce_op op)
{
    return host_i64(pg, v, n, op, -1);
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

/* Puts p's gradient into its bucket slot: nothing to do when .grad is the slot itself
 * (gradient_as_bucket_view after the first step), zeros when it has none (a parameter this
 * rank did not use: it adds nothing to the sum). With gradient_as_bucket_view, .grad then
 * becomes the slot, so the average lands in it without a copy out. */
static nb_status fill_slot(nb_ddp *d, ddp_param *p)
{
    nb_tensor *grad = nbi_grad_of(p->p);
    if (!p->slot || grad == p->slot)
        return NB_OK;
    bool prev = nb_set_grad_enabled(false);
    nb_status st = grad ? nb_tensor_copy_(p->slot, grad) : nb_fill_(p->slot, 0);
    nb_set_grad_enabled(prev);
    if (st == NB_OK && d->grad_view && grad)
        st = nb_tensor_set_grad(p->p, p->slot);
    return st;
}

static nb_status mark_ready(nb_ddp *d, ddp_param *p)
{
    nb_status st = fill_slot(d, p);
    if (st != NB_OK)
        return st;
    p->ready = true;
    if (!d->rebuilt && d->n_arrived < d->n_params)
        d->arrival[d->n_arrived++] = (int32_t)(p - d->params);
    d->n_ready++;
    d->buckets[p->bucket].n_ready++;
    return launch_ready(d);
}

/* find_unused_parameters, at the first gradient of a backward (as PyTorch's reducer): the
 * ranks agree on which parameters anybody used (one small allreduce, issued before any bucket
 * on every rank), and the parameters the forward's graph did not reach are ready now, with a
 * zero contribution from this rank (or the gradient no_sync steps accumulated). */
static nb_status start_unused(nb_ddp *d)
{
    if (!d->find_unused)
        return NB_OK;
    int32_t *used = d->used;
    for (int32_t k = 0; k < d->n_params; k++) {
        ddp_param *p = &d->params[k];
        if (!d->traced)
            p->unreached = false; /* forward ran outside nb_ddp_forward: assume all used */
        used[k] = p->used || !p->unreached;
    }
    nbi_bump_version(d->used_map);
    d->used_work = nb_allreduce(d->pg, d->used_map, NB_REDUCE_OP_MAX);
    if (!d->used_work)
        return nb_last_status();
    nb_status st = NB_OK;
    for (int32_t k = 0; st == NB_OK && k < d->n_params; k++)
        if (d->params[k].unreached && !d->params[k].ready)
            st = mark_ready(d, &d->params[k]);
    return st;
}

/* The averaged bucket slot back into .grad. A parameter no rank used keeps its .grad as it was
 * (PyTorch leaves it untouched); one that only other ranks used gets the average here too, so
 * every rank steps the same parameters by the same amounts. */
static nb_status copy_back(nb_ddp *d, ddp_param *p, const int32_t *used)
{
    nb_tensor *grad = nbi_grad_of(p->p);
    if (!p->slot || grad == p->slot)
        return NB_OK;
    if (used && !used[p - d->params])
        return NB_OK;
    if (d->grad_view)
        return nb_tensor_set_grad(p->p, p->slot);
    if (!grad) {
        nb_tensor *g = nb_clone(p->slot);
        nb_status st = g ? nb_tensor_set_grad(p->p, g) : nb_last_status();
        nb_release(g);
        return st;
    }
    return nb_tensor_copy_(grad, p->slot);
}

/* Waits for every launched bucket and forgets this backward; on success copies the averaged
 * gradients into .grad. */
static nb_status finish(nb_ddp *d, bool copy)
{
    nb_status st = NB_OK;
    double t0 = now_s();
    if (d->used_work) {
        st = nb_work_wait(d->used_work);
        nb_work_free(d->used_work);
        d->used_work = NULL;
    }
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
    const int32_t *used = d->find_unused ? d->used : NULL;
    bool prev = nb_set_grad_enabled(false);
    for (int32_t k = 0; k < d->n_params; k++) {
        ddp_param *p = &d->params[k];
        if (st == NB_OK && copy)
            st = copy_back(d, p, used);
        p->ready = p->unreached = p->used = false;
    }
    nb_set_grad_enabled(prev);
    for (int32_t k = 0; k < d->n_buckets; k++)
        d->buckets[k].n_ready = 0;
    if (!d->rebuilt) {
        d->rebuild_due = st == NB_OK && copy && d->n_arrived == d->n_params;
        if (!d->rebuild_due)
            d->n_arrived = 0; /* an incomplete backward says nothing about the order */
    }
    d->next_launch = 0;
    d->n_ready = 0;
    d->traced = false;
    return st;
}

static nb_status rebuild_buckets(nb_ddp *d);

/* The post-accumulate-grad hook of one parameter. */
static nb_status on_grad(nb_tensor *t, void *ctx)
{
    ddp_param *p = ctx;
    nb_ddp *d = p->ddp;
    (void)t;
    p->used = true; /* no_sync steps count: their gradient is reduced at the next synced step */
    if (!d->sync)
        return NB_OK; /* gradients accumulate locally; the next synced backward reduces them */
    if (p->ready)
        return nbi_error(NB_AUTOGRAD, "ddp: parameter '%s' received its gradient %s in one "
                         "backward (a second backward before the first finished?)", p->name,
                         p->unreached ? "although the forward did not use it" : "twice");
    nbi_api_depth++;
    /* A forward outside nb_ddp_forward leaves the rebuild to the first gradient. */
    nb_status st = d->n_ready == 0 && d->rebuild_due ? rebuild_buckets(d) : NB_OK;
    if (st == NB_OK && d->n_ready == 0)
        st = start_unused(d);
    if (st == NB_OK)
        st = mark_ready(d, p);
    if (st == NB_OK && d->n_ready == d->n_params)
        st = finish(d, true);
    nbi_api_depth--;
    return st;
}

/* A tiny pointer set for the graph walk (open addressing, grows at half load). */
typedef struct ptr_set {
    const void **slots;
    size_t cap, n;
} ptr_set;

static size_t ptr_hash(const void *p, size_t cap)
{
    return (size_t)(((uintptr_t)p >> 4) * 0x9e3779b97f4a7c15ull) & (cap - 1);
}

/* true if p was added, false if already there; NB_OUT_OF_MEMORY in *st on failure. */
static bool ptr_set_add(ptr_set *s, const void *p, nb_status *st)
{
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        const void **slots = nbi_calloc(cap, sizeof *slots);
        if (!slots) {
            *st = nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory walking the graph");
            return false;
        }
        for (size_t k = 0; k < s->cap; k++)
            if (s->slots[k]) {
                size_t h = ptr_hash(s->slots[k], cap);
                while (slots[h])
                    h = (h + 1) & (cap - 1);
                slots[h] = s->slots[k];
            }
        nbi_free(s->slots);
        s->slots = slots;
        s->cap = cap;
    }
    size_t h = ptr_hash(p, s->cap);
    while (s->slots[h]) {
        if (s->slots[h] == p)
            return false;
        h = (h + 1) & (s->cap - 1);
    }
    s->slots[h] = p;
    s->n++;
    return true;
}

static bool ptr_set_has(const ptr_set *s, const void *p)
{
    if (!s->cap)
        return false;
    for (size_t h = ptr_hash(p, s->cap); s->slots[h]; h = (h + 1) & (s->cap - 1))
        if (s->slots[h] == p)
            return true;
    return false;
}

/* PyTorch's prepare_for_backward with find_unused_parameters: walk the output's graph and flag
 * the parameters whose AccumulateGrad node it does not reach. */
static nb_status trace_unused(nb_ddp *d, const nb_tensor *out)
{
    ptr_set seen = {0}, leaves = {0};
    const nb_grad_fn **stack = NULL;
    size_t sp = 0, cap = 0;
    nb_status st = NB_OK;
    const nb_grad_fn *root = nb_tensor_grad_fn(out);
    if (!root && nbi_requires_grad(out))
        ptr_set_add(&leaves, out, &st); /* the output is a parameter itself */
    if (root && ptr_set_add(&seen, root, &st)) {
        if (!(stack = nbi_malloc(16 * sizeof *stack)))
            st = nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory walking the graph");
        else
            stack[sp++] = root, cap = 16;
    }
    while (st == NB_OK && sp) {
        const nb_grad_fn *x = stack[--sp];
        const nb_tensor *leaf = nbi_grad_fn_leaf(x);
        if (leaf)
            ptr_set_add(&leaves, leaf, &st);
        for (int32_t k = 0; st == NB_OK && k < nb_grad_fn_next_count(x); k++) {
            const nb_grad_fn *y = nb_grad_fn_next(x, k);
            if (!y || !ptr_set_add(&seen, y, &st))
                continue;
            if (sp == cap) {
                const nb_grad_fn **g = nbi_realloc(stack, 2 * cap * sizeof *g);
                if (!g) {
                    st = nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory walking the graph");
                    break;
                }
                stack = g;
                cap *= 2;
            }
            stack[sp++] = y;
        }
    }
    for (int32_t k = 0; st == NB_OK && k < d->n_params; k++)
        d->params[k].unreached = !ptr_set_has(&leaves, d->params[k].p);
    d->traced = st == NB_OK;
    nbi_free(stack);
    nbi_free(seen.slots);
    nbi_free(leaves.slots);
    return st;
}

/* The bucket layout for the parameters taken in `order` (positions in d->params): a bucket
 * closes where the dtype or device changes and once it holds its cap, the first (the gradients
 * that come first) first_mb, the others bucket_mb. PyTorch's compute_bucket_assignment_by_size
 * closes a bucket the same way, after the parameter that reaches the cap. Writes each
 * parameter's bucket and offset (in elements) and each bucket's element count; returns the
 * number of buckets. */
static int32_t plan_buckets(const nb_ddp *d, const int32_t *order, int32_t *bucket,
                            int64_t *offset, int64_t *sizes)
{
    int32_t n_buckets = 0;
    double filled = 0;
    const ddp_param *last = NULL;
    for (int32_t j = 0; j < d->n_params; j++) {
        const ddp_param *p = &d->params[order[j]];
        bool same = last && nb_tensor_dtype(last->p) == nb_tensor_dtype(p->p) &&
                    nbi_same_device(last->p, p->p);
        double cap = (n_buckets <= 1 ? d->first_mb : d->bucket_mb) * 1024.0 * 1024.0;
        if (!same || filled >= cap) {
            sizes[n_buckets++] = 0;
            filled = 0;
        }
        bucket[order[j]] = n_buckets - 1;
        offset[order[j]] = sizes[n_buckets - 1];
        sizes[n_buckets - 1] += p->numel;
        filled += (double)p->numel * nb_dtype_size(nb_tensor_dtype(p->p));
        last = p;
    }
    return n_buckets;
}

/* The flat tensors of a plan (zeroed) and each parameter's slot in them, shaped like it (NULL
 * for an empty one). On failure the caller releases what was made. */
static nb_status make_buckets(const nb_ddp *d, const int32_t *bucket, const int64_t *offset,
                              const int64_t *sizes, ddp_bucket *buckets, nb_tensor **slots)
{
    nb_status st = NB_OK;
    bool prev = nb_set_grad_enabled(false);
    for (int32_t k = 0; st == NB_OK && k < d->n_params; k++) {
        ddp_bucket *b = &buckets[bucket[k]];
        const nb_tensor *p = d->params[k].p;
        b->n_params++;
        if (!b->flat && !(b->flat = nb_zeros(NB_SHAPE(sizes[bucket[k]]),
                                             (nb_opts){.dtype = nb_tensor_dtype(p),
                                                       .device = nb_tensor_device(p)})))
            st = nb_last_status();
    }
    for (int32_t k = 0; st == NB_OK && k < d->n_params; k++) {
        const ddp_param *p = &d->params[k];
        if (p->numel == 0)
            continue;
        nb_tensor *slice = nb_narrow(buckets[bucket[k]].flat, 0, offset[k], p->numel);
        slots[k] = slice ? nb_view(slice, nb_tensor_shape(p->p)) : NULL;
        nb_release(slice);
        if (!slots[k])
            st = nb_last_status();
    }
    nb_set_grad_enabled(prev);
    return st;
}

/* Lays out buckets for `order` and makes them d's, replacing the old layout. A .grad that is a
 * view into an old bucket (gradient_as_bucket_view) moves into its new slot with its values.
 * All or nothing: on failure d keeps its layout. */
static nb_status apply_layout(nb_ddp *d, const int32_t *order)
{
    int32_t n = d->n_params;
    size_t cap = n ? (size_t)n : 1;
    int32_t *bucket = nbi_calloc(cap, sizeof *bucket);
    int32_t *order_copy = nbi_calloc(cap, sizeof *order_copy);
    int64_t *offset = nbi_calloc(cap, sizeof *offset), *sizes = nbi_calloc(cap, sizeof *sizes);
    nb_tensor **slots = nbi_calloc(cap, sizeof *slots);
    ddp_bucket *buckets = nbi_calloc(cap, sizeof *buckets);
    nb_status st = bucket && order_copy && offset && sizes && slots && buckets
                       ? NB_OK
                       : nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory laying out buckets");
    int32_t n_buckets = st == NB_OK ? plan_buckets(d, order, bucket, offset, sizes) : 0;
    if (st == NB_OK)
        st = make_buckets(d, bucket, offset, sizes, buckets, slots);
    bool prev = nb_set_grad_enabled(false);
    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        nb_tensor *grad = nbi_grad_of(d->params[k].p);
        if (grad && grad == d->params[k].slot)
            st = nb_tensor_copy_(slots[k], grad);
    }
    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        ddp_param *p = &d->params[k];
        if (nbi_grad_of(p->p) == p->slot && p->slot)
            st = nb_tensor_set_grad(p->p, slots[k]); /* same shape and dtype: cannot fail */
        nb_release(p->slot);
        p->slot = slots[k];
        slots[k] = NULL;
        p->bucket = bucket[k];
        p->offset = offset[k];
    }
    nb_set_grad_enabled(prev);
    if (st == NB_OK) {
        for (int32_t k = 0; k < d->n_buckets; k++)
            nb_release(d->buckets[k].flat);
        nbi_free(d->buckets);
        d->buckets = buckets;
        d->n_buckets = n_buckets;
        buckets = NULL;
        memcpy(order_copy, order, (size_t)n * sizeof *order);
        nbi_free(d->order);
        d->order = order_copy;
        order_copy = NULL;
    }
    for (int32_t k = 0; buckets && k < n; k++) /* n bounds the buckets of a plan */
        nb_release(buckets[k].flat);
    for (int32_t k = 0; slots && k < n; k++)
        nb_release(slots[k]);
    nbi_free(buckets);
    nbi_free(slots);
    nbi_free(sizes);
    nbi_free(offset);
    nbi_free(order_copy);
    nbi_free(bucket);
    return st;
}

/* The first layout: reverse registration order. */
static nb_status build_buckets(nb_ddp *d)
{
    int32_t total = nb_module_parameter_count(d->module), n = 0;
    for (int32_t k = 0; k < total; k++)
        n += nbi_requires_grad(nb_module_parameter(d->module, k));
    size_t cap = n ? (size_t)n : 1;
    d->params = nbi_calloc(cap, sizeof *d->params);
    d->arrival = nbi_calloc(cap, sizeof *d->arrival);
    int32_t *order = nbi_calloc(cap, sizeof *order);
    if (!d->params || !d->arrival || !order) {
        nbi_free(order);
        return nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory");
    }
    for (int32_t k = total - 1; k >= 0; k--) {
        nb_tensor *t = nb_module_parameter(d->module, k);
        if (!nbi_requires_grad(t))
            continue;
        order[d->n_params] = d->n_params;
        d->params[d->n_params++] = (ddp_param){.ddp = d, .p = nb_retain(t), .index = k,
                                               .name = nb_module_parameter_name(d->module, k),
                                               .numel = nb_tensor_numel(t)};
    }
    nb_status st = apply_layout(d, order);
    nbi_free(order);
    if (st == NB_OK && d->find_unused) {
        if (!(d->used = nbi_calloc(cap, sizeof *d->used)))
            st = nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory");
        else if (!(d->used_map = nb_from_blob(d->used, NB_SHAPE(n),
                                              (nb_opts){.dtype = NB_DTYPE_I32, .device = "cpu"},
                                              NULL, NULL)))
            st = nb_last_status();
    }
    return st;
}

/* PyTorch's Reducer::rebuild_buckets, once, before the second synced backward: the parameters
 * in the order the first one made their gradients ready, so each bucket fills (and its
 * allreduce starts) as early as the graph allows. Every rank takes rank 0's order, so the
 * layouts agree even where the ranks' backwards ran in different orders. Not with
 * find_unused_parameters, whose order changes from step to step (as PyTorch). */
static nb_status rebuild_buckets(nb_ddp *d)
{
    d->rebuild_due = false;
    d->rebuilt = true;
    int32_t n = d->n_params;
    int64_t *order64 = nbi_calloc(n ? (size_t)n : 1, sizeof *order64);
    int32_t *order = nbi_calloc(n ? (size_t)n : 1, sizeof *order);
    nb_status st = order64 && order ? NB_OK : nbi_error(NB_OUT_OF_MEMORY, "ddp: out of memory");
    for (int32_t k = 0; st == NB_OK && k < n; k++)
        order64[k] = d->arrival[k];
    if (st == NB_OK)
        st = host_i64(d->pg, order64, n, NB_REDUCE_OP_SUM, 0); /* rank 0's */
    /* The same values on every rank, so every rank takes the same branch below. order first
     * marks the positions seen (a permutation hits each once), then takes the values. */
    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        int64_t v = order64[k];
        if (v < 0 || v >= n || order[v])
            st = nbi_error(NB_STATE, "ddp: rank 0's gradient order (entry %d is %lld) is not a "
                           "permutation of the %d parameters", k, (long long)v, n);
        else
            order[v] = 1;
    }
    bool same = true;
    for (int32_t k = 0; st == NB_OK && k < n; k++) {
        order[k] = (int32_t)order64[k];
        same = same && order[k] == d->order[k];
    }
    if (st == NB_OK && !same)
        st = apply_layout(d, order);
    nbi_free(order);
    nbi_free(order64);
    return st;
}

static void ddp_free(nb_ddp *d)
{
    if (!d)
        return;
    nb_work_free(d->used_work);
    for (int32_t k = 0; d->buckets && k < d->n_buckets; k++)
        nb_work_free(d->buckets[k].work);
    for (int32_t k = 0; d->params && k < d->n_params; k++) {
        ddp_param *p = &d->params[k];
        if (p->hooked)
            nb_tensor_remove_post_accumulate_grad_hook(p->p, on_grad, p);
        /* gradient_as_bucket_view: .grad outlives the bucket as a tensor of its own. */
        if (p->slot && nbi_grad_of(p->p) == p->slot) {
            nb_tensor *g = nb_clone(p->slot);
            nb_tensor_set_grad(p->p, g); /* NULL (out of memory) clears it */
            nb_release(g);
        }
        nb_release(p->slot);
        nb_release(p->p);
    }
    for (int32_t k = 0; d->buckets && k < d->n_buckets; k++)
        nb_release(d->buckets[k].flat);
    nb_release(d->used_map);
    nbi_free(d->used);
    nbi_free(d->params);
    nbi_free(d->order);
    nbi_free(d->arrival);
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
    d->find_unused = o.find_unused_parameters;
    d->grad_view = o.gradient_as_bucket_view;
    d->rebuilt = d->find_unused; /* its order changes from step to step: no rebuild */
    /* As PyTorch 2.x: the small first bucket only at the default size; an explicit bucket_mb
     * caps every bucket, the first too. */
    d->first_mb = o.bucket_mb > 0 ? o.bucket_mb : DDP_FIRST_BUCKET_MB;
    d->bucket_mb = o.bucket_mb > 0 ? o.bucket_mb : DDP_BUCKET_MB;
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
        st = build_buckets(d);
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

/* PyTorch's "Expected to have finished reduction in the prior iteration" error, with the
 * parameters that got no gradient named (as its TORCH_DISTRIBUTED_DEBUG=DETAIL does). */
static nb_status finish_impl(nb_ddp *d)
{
    if (!d)
        return nbi_error(NB_NULL_ARGUMENT, "ddp_finish: ddp is NULL");
    if (d->n_ready == 0)
        return NB_OK;
    nbi_sbuf names = {0};
    int32_t missing = 0;
    for (int32_t k = d->n_params - 1; k >= 0; k--) /* registration order */
        if (!d->params[k].ready && missing++ < 8)
            nbi_sbuf_printf(&names, "%s'%s'", missing > 1 ? ", " : "", d->params[k].name);
    if (missing > 8)
        nbi_sbuf_printf(&names, " and %d more", missing - 8);
    char list[512];
    snprintf(list, sizeof list, "%s", names.p && !names.oom ? names.p : "?");
    nbi_free(names.p);
    int32_t rank = nb_process_group_rank(d->pg);
    bool find_unused = d->find_unused;
    nb_status st = finish(d, false);
    if (st != NB_OK)
        return st;
    if (find_unused)
        return nbi_error(NB_AUTOGRAD, "ddp: expected to have finished reduction in the prior "
                         "iteration before starting a new one: on rank %d, %d parameter%s the "
                         "forward output's graph reaches got no gradient: %s (does every "
                         "output of the forward take part in the loss?)", rank, missing,
                         missing == 1 ? "" : "s", list);
    return nbi_error(NB_AUTOGRAD, "ddp: expected to have finished reduction in the prior "
                     "iteration before starting a new one: the module has parameters that were "
                     "not used in producing the loss; parameters which did not receive grad "
                     "for rank %d: %s. Set find_unused_parameters = true in nb_ddp_opts, and "
                     "make sure every output of the forward takes part in the loss", rank, list);
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
    if (d->rebuild_due && nb_is_grad_enabled()) {
        nbi_api_depth++;
        nb_status st = rebuild_buckets(d);
        nbi_api_depth--;
        if (st != NB_OK)
            return NULL;
    }
    /* PyTorch's broadcast_buffers: running statistics follow rank 0's. */
    for (int32_t k = 0; d->buffer_sync && k < d->n_buffers; k++)
        if (nb_work_finish(nb_broadcast(d->pg, d->buffers[k], 0)) != NB_OK)
            return NULL;
    nb_tensor *out = nb_module_forward(d->module, x);
    if (out && d->find_unused && d->sync && nb_is_grad_enabled()) {
        nbi_api_depth++;
        nb_status st = trace_unused(d, out);
        nbi_api_depth--;
        if (st != NB_OK) {
            nb_release(out);
            return NULL;
        }
    }
    return out;
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

static int32_t bucket_params_impl(const nb_ddp *d, int32_t bucket, int32_t *idx, int32_t cap)
{
    if (!d || (!idx && cap > 0)) {
        nbi_error(NB_NULL_ARGUMENT, "ddp_bucket_params: %s is NULL", d ? "idx" : "ddp");
        return -1;
    }
    if (bucket < 0 || bucket >= d->n_buckets || cap < 0) {
        nbi_error(NB_INVALID_ARGUMENT, "ddp_bucket_params: bucket %d, cap %d (expected a bucket "
                  "in [0, %d) and cap >= 0)", bucket, cap, d->n_buckets);
        return -1;
    }
    int32_t n = 0;
    for (int32_t j = 0; j < d->n_params; j++) {
        const ddp_param *p = &d->params[d->order[j]];
        if (p->bucket == bucket) {
            if (n < cap)
                idx[n] = p->index;
            n++;
        }
    }
    return n;
}

int32_t nb_ddp_bucket_params(const nb_ddp *d, int32_t bucket, int32_t *idx, int32_t cap)
{
    return NBI_API_CALL(bucket_params_impl(d, bucket, idx, cap));
}

uint64_t nb_ddp_bytes_reduced(const nb_ddp *d) { return d ? d->bytes_reduced : 0; }
double nb_ddp_last_wait_s(const nb_ddp *d) { return d ? d->last_wait_s : 0; }
