/* distributed.c - process groups and their collectives: finds and loads the collective backend
 * plugins (nabla_collective_<name>.so, see nabla_collective.h), stages tensors a backend cannot
 * reach through host memory, and the distributed sampler. DDP, built on this, is in ddp.c. */
#define _GNU_SOURCE
#include "nabla_layer.h"
#include "nabla_collective.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_S 600.0

/* ---- backend plugins ---- */

/* A backend, once loaded, stays for the life of the process: MPI cannot be initialised twice,
 * so unloading it at nb_shutdown would make every later group fail. */
typedef struct backend {
    char name[32];
    const nb_collective *api;
    char path[PATH_MAX];
    char note[PATH_MAX + 512]; /* why it did not load */
    nb_status status;
} backend;

static backend backends[8];
static int n_backends;
static pthread_mutex_t backend_lock = PTHREAD_MUTEX_INITIALIZER;

static const nb_host collective_host = {
    .abi_major = NB_PLUGIN_ABI_MAJOR,
    .abi_minor = NB_PLUGIN_ABI_MINOR,
    .size = sizeof(nb_host),
    .error = nbi_error,
    .log = nbi_log,
};

static bool valid_backend_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof backends[0].name)
        return false;
    for (size_t k = 0; k < n; k++)
        if (!((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= '0' && s[k] <= '9') || s[k] == '_'))
            return false;
    return true;
}

/* The first nabla_collective_<name>.so in the plugin search order (NABLA_PLUGIN_PATH, the core
 * library's folder, the install folder) into path; false when there is none, with the folders
 * searched in `searched`. */
static bool find_backend_file(const char *name, char *path, size_t len, nbi_sbuf *searched)
{
    char file[64];
    snprintf(file, sizeof file, "nabla_collective_%s.so", name);
    const char *env = getenv("NABLA_PLUGIN_PATH");
    if (env && *env) {
        char *list = nbi_strdup(env), *save = NULL;
        for (char *tok = list ? strtok_r(list, ":", &save) : NULL; tok;
             tok = strtok_r(NULL, ":", &save)) {
            const char *base = strrchr(tok, '/');
            if (strcmp(base ? base + 1 : tok, file) == 0 && access(tok, F_OK) == 0) {
                snprintf(path, len, "%s", tok);
                nbi_free(list);
                return true;
            }
            snprintf(path, len, "%s/%s", tok, file);
            if (access(path, F_OK) == 0) {
                nbi_free(list);
                return true;
            }
            nbi_sbuf_printf(searched, "%s%s", searched->n ? ", " : "", tok);
        }
        nbi_free(list);
    }
    char dirs[2][PATH_MAX];
    for (int k = 0, n = nbi_core_plugin_dirs(dirs); k < n; k++) {
        if ((size_t)snprintf(path, len, "%s/%s", dirs[k], file) < len && access(path, F_OK) == 0)
            return true;
        nbi_sbuf_printf(searched, "%s%s", searched->n ? ", " : "", dirs[k]);
    }
    return false;
}

static nb_status load_backend(backend *b)
{
    char path[PATH_MAX];
    nbi_sbuf searched = {0};
    bool found = find_backend_file(b->name, path, sizeof path, &searched);
    if (!found) {
        snprintf(b->note, sizeof b->note, "no nabla_collective_%s.so in %s", b->name,
                 searched.p && !searched.oom ? searched.p : "the plugin folders");
        nbi_free(searched.p);
        return NB_PLUGIN_LOAD;
    }
    nbi_free(searched.p);
    snprintf(b->path, sizeof b->path, "%s", path);
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!dl) {
        const char *why = dlerror();
        snprintf(b->note, sizeof b->note, "%s: cannot load: %s", path, why ? why : "dlopen failed");
        return NB_PLUGIN_LOAD;
    }
    nb_collective_entry_fn entry = (nb_collective_entry_fn)dlsym(dl, NB_COLLECTIVE_ENTRY_SYMBOL);
    if (!entry) {
        snprintf(b->note, sizeof b->note, "%s: not a collective backend: no '%s' symbol", path,
                 NB_COLLECTIVE_ENTRY_SYMBOL);
        dlclose(dl);
        return NB_PLUGIN_LOAD;
    }
    nb_clear_error();
    const nb_collective *a = entry(&collective_host);
    nb_status st = NB_ABI_MISMATCH;
    if (!a) {
        snprintf(b->note, sizeof b->note, "%s: entry point refused to load: %s", path,
                 *nb_last_error() ? nb_last_error() : "no reason given");
        st = NB_PLUGIN_LOAD;
    } else if (a->abi_major != NB_COLLECTIVE_ABI_MAJOR) {
        snprintf(b->note, sizeof b->note, "%s: collective ABI major %u, but this core speaks "
                 "%u.%u", path, a->abi_major, NB_COLLECTIVE_ABI_MAJOR, NB_COLLECTIVE_ABI_MINOR);
    } else if (a->size < offsetof(nb_collective, wait) + sizeof a->wait || !a->name ||
               !a->devices || !a->comm_new || !a->comm_free || !a->start || !a->wait) {
        snprintf(b->note, sizeof b->note, "%s: backend table lacks a required member (name, "
                 "devices, comm_new, comm_free, start or wait)", path);
    } else if (strcmp(a->name, b->name) != 0) {
        snprintf(b->note, sizeof b->note, "%s: the file names backend '%s' but its table says "
                 "'%s'", path, b->name, a->name);
    } else {
        b->api = a;
        nb_clear_error();
        return NB_OK;
    }
    dlclose(dl);
    return st;
}

static backend *find_or_load(const char *name)
{
    pthread_mutex_lock(&backend_lock);
    backend *b = NULL;
    for (int k = 0; k < n_backends; k++)
        if (strcmp(backends[k].name, name) == 0)
            b = &backends[k];
    if (!b && n_backends < (int)(sizeof backends / sizeof backends[0])) {
        b = &backends[n_backends++];
        snprintf(b->name, sizeof b->name, "%s", name);
        b->status = load_backend(b);
        nbi_log(b->status == NB_OK ? NB_LOG_DEBUG : NB_LOG_INFO, "collective backend %s: %s",
                name, b->status == NB_OK ? "loaded" : b->note);
    }
    pthread_mutex_unlock(&backend_lock);
    if (!b)
        nbi_error(NB_PLUGIN_LOAD, "process group: too many backend names tried");
    return b;
}

nb_status nb_process_group_backend_get(const char *name, nb_process_group_backend_info *info)
{
    if (!name || !info)
        return nbi_error(NB_NULL_ARGUMENT, "process_group_backend_get: %s is NULL",
                         name ? "info" : "name");
    if (!valid_backend_name(name))
        return nbi_error(NB_INVALID_ARGUMENT, "process_group_backend_get: '%s' is not a "
                         "backend name", name);
    backend *b = find_or_load(name);
    if (!b)
        return nb_last_status();
    *info = (nb_process_group_backend_info){
        .name = b->name,
        .path = b->path,
        .version = b->api && b->api->version ? b->api->version : "",
        .devices = b->api ? b->api->devices : "",
        .loaded = b->api != NULL,
        .note = b->api ? "" : b->note,
    };
    return NB_OK;
}

static const nb_collective *get_backend(const char *name)
{
    if (!valid_backend_name(name)) {
        nbi_error(NB_INVALID_ARGUMENT, "process group: backend name '%s' is not a plugin name "
                  "(expected lower-case letters, digits and '_', e.g. \"mpi\" or \"nccl\")", name);
        return NULL;
    }
    backend *b = find_or_load(name);
    if (!b)
        return NULL;
    if (!b->api)
        nbi_error(b->status, "process group: backend '%s' is not available: %s", name, b->note);
    return b->api;
}

/* ---- process groups ---- */

struct nb_process_group {
    const nb_collective *api;
    void *comm;
    int32_t rank, world;
    double timeout_s;
    char devices[64]; /* the backend's device list, with commas around: ",cpu," */
    struct nb_work *pending; /* started and not yet waited for, so that free can wait */
};

struct nb_work {
    nb_process_group *pg;
    void *request;
    nb_tensor *target;  /* written at the wait (allreduce, broadcast: the tensor; allgather: out) */
    nb_tensor *buf;     /* what the backend writes: target itself, or a contiguous/host copy */
    nb_tensor *input;   /* allgather: what the backend reads */
    bool average;
    bool done;
    nb_status status;
    char *message;      /* the error of the wait, repeated by later waits */
    struct nb_work *prev, *next; /* in pg->pending until waited for */
};

static bool env_int(const char *name, int32_t *out)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > INT32_MAX)
        return false;
    *out = (int32_t)v;
    return true;
}

/* rank and world size from the launcher: mpirun (Open MPI, then PMI as MPICH sets it) or
 * torchrun's RANK/WORLD_SIZE. */
static bool env_rank(int32_t *rank, int32_t *world)
{
    static const char *pairs[][2] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                     {"PMI_RANK", "PMI_SIZE"},
                                     {"RANK", "WORLD_SIZE"}};
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
        if (env_int(pairs[k][0], rank) && env_int(pairs[k][1], world) && *rank < *world)
            return true;
    return false;
}

static bool under_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

/* Bootstrap through a file: rank 0 writes it (atomically, by rename), the others wait for it. */
typedef struct file_bootstrap {
    const char *path;
    int32_t rank;
    double timeout_s;
} file_bootstrap;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static nb_status file_bcast(void *ctx, void *buf, size_t bytes)
{
    file_bootstrap *fb = ctx;
    if (fb->rank == 0) {
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s.%ld.tmp", fb->path, (long)getpid());
        FILE *f = fopen(tmp, "wb");
        bool ok = f && fwrite(buf, 1, bytes, f) == bytes;
        if (f && fclose(f) != 0)
            ok = false;
        if (!ok || rename(tmp, fb->path) != 0) {
            int e = errno;
            remove(tmp);
            return nbi_error(NB_IO, "process group: cannot write the bootstrap file %s: %s",
                             fb->path, strerror(e));
        }
        return NB_OK;
    }
    double deadline = now_s() + fb->timeout_s;
    for (;;) {
        FILE *f = fopen(fb->path, "rb");
        if (f) {
            size_t got = fread(buf, 1, bytes, f);
            fclose(f);
            if (got == bytes)
                return NB_OK;
        }
        if (now_s() > deadline)
            return nbi_error(NB_DEVICE_ERROR, "process group: rank %d waited %.1f s for rank 0 to "
                             "write the bootstrap file %s", fb->rank, fb->timeout_s, fb->path);
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }
}

static nb_status group_bcast(void *ctx, void *buf, size_t bytes)
{
    nb_tensor *t = nb_from_blob(buf, NB_SHAPE((int64_t)bytes),
                                (nb_opts){.dtype = NB_DTYPE_U8, .device = "cpu"}, NULL, NULL);
    if (!t)
        return nb_last_status();
    nb_status st = nb_work_finish(nb_broadcast(ctx, t, 0));
    nb_release(t);
    return st;
}

static nb_process_group *group_new(nb_process_group_opts o)
{
    if (nbi_ensure_init() != NB_OK)
        return NULL;
    if (!(o.timeout_s >= 0) || o.timeout_s > 1e9) {
        nbi_error(NB_INVALID_ARGUMENT, "process group: timeout_s is %g (expected 0 for the "
                  "default of %g s, or a positive number of seconds)", o.timeout_s,
                  DEFAULT_TIMEOUT_S);
        return NULL;
    }
    double timeout = o.timeout_s > 0 ? o.timeout_s : DEFAULT_TIMEOUT_S;
    if (o.rank < 0 || o.world_size < 0 || (o.world_size > 0 && o.rank >= o.world_size) ||
        (o.world_size == 0 && o.rank != 0)) {
        nbi_error(NB_INVALID_ARGUMENT, "process group: rank %d of world size %d (expected 0 <= "
                  "rank < world_size, or both 0 to take them from the environment)", o.rank,
                  o.world_size);
        return NULL;
    }
    const char *name = o.backend;
    if (!name || !*name)
        name = getenv("NABLA_DIST_BACKEND");
    if ((!name || !*name) && under_mpirun())
        name = "mpi";
    if (!name || !*name) {
        nbi_error(NB_INVALID_ARGUMENT, "process group: no backend given and none in the "
                  "environment (not started by mpirun: OMPI_COMM_WORLD_SIZE and PMI_SIZE are "
                  "unset); set opts.backend (\"mpi\", \"nccl\") or NABLA_DIST_BACKEND");
        return NULL;
    }
    const nb_collective *api = get_backend(name);
    if (!api)
        return NULL;
    if (strlen(api->devices) + 3 > sizeof ((nb_process_group *)0)->devices) {
        nbi_error(NB_ABI_MISMATCH, "process group: backend '%s' lists too many devices", name);
        return NULL;
    }
    int32_t rank = -1, world = -1;
    if (o.world_size > 0) {
        rank = o.rank;
        world = o.world_size;
    } else if (!env_rank(&rank, &world)) {
        rank = world = -1;
    }
    if (o.bootstrap && o.init_file) {
        nbi_error(NB_INVALID_ARGUMENT, "process group: give bootstrap or init_file, not both");
        return NULL;
    }
    file_bootstrap fb = {.path = o.init_file, .rank = rank, .timeout_s = timeout};
    nb_collective_init init = {.size = sizeof init, .rank = rank, .world_size = world,
                               .timeout_s = timeout};
    if (o.bootstrap) {
        if (world >= 0 && (o.bootstrap->rank != rank || o.bootstrap->world != world)) {
            nbi_error(NB_INVALID_ARGUMENT, "process group: rank %d of %d, but the bootstrap "
                      "group says rank %d of %d", rank, world, o.bootstrap->rank,
                      o.bootstrap->world);
            return NULL;
        }
        init.rank = o.bootstrap->rank;
        init.world_size = o.bootstrap->world;
        init.bootstrap_bcast = group_bcast;
        init.bootstrap_ctx = o.bootstrap;
    } else if (o.init_file) {
        if (rank < 0) {
            nbi_error(NB_INVALID_ARGUMENT, "process group: init_file needs the rank and world "
                      "size (opts.rank/world_size, or RANK/WORLD_SIZE in the environment)");
            return NULL;
        }
        init.bootstrap_bcast = file_bcast;
        init.bootstrap_ctx = &fb;
    }
    nb_process_group *pg = nbi_calloc(1, sizeof *pg);
    if (!pg) {
        nbi_error(NB_OUT_OF_MEMORY, "process group: out of memory");
        return NULL;
    }
    pg->api = api;
    pg->timeout_s = timeout;
    snprintf(pg->devices, sizeof pg->devices, ",%s,", api->devices);
    nb_clear_error();
    nb_status st = api->comm_new(&init, &pg->comm, &pg->rank, &pg->world);
    if (st == NB_OK && (pg->world < 1 || pg->rank < 0 || pg->rank >= pg->world)) {
        api->comm_free(pg->comm);
        st = nbi_error(NB_ABI_MISMATCH, "process group: backend '%s' reported rank %d of %d",
                       name, pg->rank, pg->world);
    }
    if (st != NB_OK) {
        if (!nbi_error_pending())
            nbi_error(st, "process group: backend '%s' failed to start", name);
        nbi_free(pg);
        return NULL;
    }
    nbi_log(NB_LOG_DEBUG, "process group: %s rank %d of %d", name, pg->rank, pg->world);
    return pg;
}

/* Public entry points run one API level down so the tensors they make for themselves never go
 * into the caller's scope (see NBI_API). */
#define DIST_API(type, expr)                                                                  \
    do {                                                                                      \
        nbi_api_depth++;                                                                      \
        type r_ = (expr);                                                                     \
        nbi_api_depth--;                                                                      \
        return r_;                                                                            \
    } while (0)

nb_process_group *nb_process_group_new(nb_process_group_opts opts)
{
    DIST_API(nb_process_group *, group_new(opts));
}

void nb_process_group_free(nb_process_group *pg)
{
    if (!pg)
        return;
    /* Work still in flight uses the communicator and its tensors: finish it first (its handles
     * stay the caller's, and report what the wait returned). */
    nb_status saved = nb_last_status();
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", nb_last_error());
    while (pg->pending)
        nb_work_wait(pg->pending);
    if (saved == NB_OK)
        nb_clear_error();
    else
        nbi_error(saved, "%s", msg);
    pg->api->comm_free(pg->comm);
    nbi_free(pg);
}

int32_t nb_process_group_rank(const nb_process_group *pg) { return pg ? pg->rank : -1; }
int32_t nb_process_group_size(const nb_process_group *pg) { return pg ? pg->world : -1; }
const char *nb_process_group_backend(const nb_process_group *pg)
{
    return pg ? pg->api->name : NULL;
}

/* ---- collectives ---- */

static bool reaches(const nb_process_group *pg, const char *type)
{
    char key[40];
    snprintf(key, sizeof key, ",%s,", type);
    return strstr(pg->devices, key) != NULL;
}

/* What the backend works on for t: t itself when it can reach t's memory and t is contiguous,
 * else a contiguous copy on t's device, else a copy in host memory. */
static nb_tensor *buffer_for(const char *what, const nb_process_group *pg, const nb_tensor *t)
{
    const char *type = nbi_tensor_memory_of(t).device_type;
    if (reaches(pg, type))
        return nb_contiguous(t);
    if (reaches(pg, "cpu")) {
        nb_tensor *h = nb_to_device(t, "cpu");
        nb_tensor *c = h ? nb_contiguous(h) : NULL;
        nb_release(h);
        return c;
    }
    nbi_error(NB_DEVICE_MISMATCH, "%s: the %s backend reaches %s tensors, not a tensor on %s",
              what, pg->api->name, pg->api->devices, nb_tensor_device(t));
    return NULL;
}

static nb_collective_buffer describe(const nb_tensor *t)
{
    nbi_tensor_memory mem = nbi_tensor_memory_of(t);
    int64_t n = nb_tensor_numel(t);
    return (nb_collective_buffer){
        .device_type = mem.device_type,
        .device = mem.device,
        .handle = n ? mem.handle : NULL,
        .offset = mem.offset,
        .dtype = nb_tensor_dtype(t),
        .count = (size_t)n,
    };
}

/* FNV-1a over what every rank must agree on. */
static uint64_t digest(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t k = 0; k < n; k++)
        h = (h ^ b[k]) * 0x100000001b3ull;
    return h;
}

static uint64_t call_digest(nb_collective_kind kind, int op, int32_t root, const nb_tensor *t)
{
    uint64_t h = 0xcbf29ce484222325ull;
    int32_t head[3] = {(int32_t)kind, op, root};
    h = digest(h, head, sizeof head);
    if (t) {
        int32_t meta[2] = {(int32_t)nb_tensor_dtype(t), nb_tensor_ndim(t)};
        h = digest(h, meta, sizeof meta);
        h = digest(h, nbi_dims(t), (size_t)nb_tensor_ndim(t) * sizeof nbi_dims(t)[0]);
    }
    return h;
}

static void work_release(nb_work *w)
{
    nb_release(w->target);
    nb_release(w->buf);
    nb_release(w->input);
    w->target = w->buf = w->input = NULL;
}

static nb_work *work_start(nb_process_group *pg, nb_collective_args *args, nb_work *w)
{
    if (w->buf)
        args->send = describe(w->input ? w->input : w->buf);
    if (w->input)
        args->recv = describe(w->buf);
    /* Kernels queued on an asynchronous device must have written the data first. */
    const nb_tensor *dev_t = w->input ? w->input : w->buf;
    if (dev_t) {
        nb_status st = nbi_tensor_synchronize(dev_t);
        if (st != NB_OK) {
            if (!nbi_error_pending())
                nbi_error(st, "collective: synchronizing %s failed", nb_tensor_device(dev_t));
            goto fail;
        }
    }
    nb_status st = pg->api->start(pg->comm, args, &w->request);
    if (st != NB_OK) {
        if (!nbi_error_pending())
            nbi_error(st, "collective: the %s backend refused the call", pg->api->name);
        goto fail;
    }
    w->next = pg->pending;
    if (pg->pending)
        pg->pending->prev = w;
    pg->pending = w;
    return w;
fail:
    work_release(w);
    nbi_free(w);
    return NULL;
}

static nb_work *work_new(nb_process_group *pg)
{
    nb_work *w = nbi_calloc(1, sizeof *w);
    if (!w)
        nbi_error(NB_OUT_OF_MEMORY, "collective: out of memory");
    else
        w->pg = pg;
    return w;
}

static bool check_count(const char *what, const nb_tensor *t)
{
    if (nb_tensor_numel(t) > INT32_MAX) {
        nbi_error(NB_INVALID_ARGUMENT, "%s: %lld elements; the backends take at most 2^31-1 "
                  "per call", what, (long long)nb_tensor_numel(t));
        return false;
    }
    return true;
}

/* The work of a collective on target (written in place) and, for allgather, a separate input:
 * each gets its staging buffer (with grad off: buffers are not part of any graph). NULL, with
 * the error set and nothing left allocated, when either fails. */
static nb_work *work_for(const char *what, nb_process_group *pg, nb_tensor *target,
                         const nb_tensor *input)
{
    nb_work *w = work_new(pg);
    if (!w)
        return NULL;
    bool prev = nb_set_grad_enabled(false);
    w->target = nb_retain(target);
    if (input)
        w->input = buffer_for(what, pg, input);
    w->buf = !input || w->input ? buffer_for(what, pg, target) : NULL;
    nb_set_grad_enabled(prev);
    if (!w->buf) {
        work_release(w);
        nbi_free(w);
        return NULL;
    }
    return w;
}

static nb_work *allreduce_impl(nb_process_group *pg, nb_tensor *t, nb_reduce_op op)
{
    if (!pg || !t) {
        if (!nbi_error_pending())
            nbi_error(NB_NULL_ARGUMENT, "allreduce: %s is NULL", pg ? "tensor" : "process group");
        return NULL;
    }
    static const int to_abi[] = {NB_COLLECTIVE_SUM, NB_COLLECTIVE_SUM, NB_COLLECTIVE_PROD,
                                 NB_COLLECTIVE_MIN, NB_COLLECTIVE_MAX};
    if ((unsigned)op > NB_REDUCE_OP_MAX) {
        nbi_error(NB_INVALID_ARGUMENT, "allreduce: reduce op %d (expected NB_REDUCE_OP_SUM, _AVG, "
                  "_PROD, _MIN or _MAX)", (int)op);
        return NULL;
    }
    if (op == NB_REDUCE_OP_AVG && !nb_dtype_is_float(nb_tensor_dtype(t))) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "allreduce: average of a %s tensor (expected a floating "
                  "dtype; use NB_REDUCE_OP_SUM)", nb_dtype_name(nb_tensor_dtype(t)));
        return NULL;
    }
    if (!check_count("allreduce", t))
        return NULL;
    nb_work *w = work_for("allreduce", pg, t, NULL);
    if (!w)
        return NULL;
    w->average = op == NB_REDUCE_OP_AVG && pg->world > 1;
    nb_collective_args args = {.kind = NB_COLLECTIVE_ALLREDUCE, .op = to_abi[op],
                               .check = call_digest(NB_COLLECTIVE_ALLREDUCE, to_abi[op], 0, t)};
    return work_start(pg, &args, w);
}

static nb_work *broadcast_impl(nb_process_group *pg, nb_tensor *t, int32_t root)
{
    if (!pg || !t) {
        if (!nbi_error_pending())
            nbi_error(NB_NULL_ARGUMENT, "broadcast: %s is NULL", pg ? "tensor" : "process group");
        return NULL;
    }
    if (root < 0 || root >= pg->world) {
        nbi_error(NB_INDEX_OUT_OF_RANGE, "broadcast: root %d out of range: world size %d", root,
                  pg->world);
        return NULL;
    }
    if (!check_count("broadcast", t))
        return NULL;
    nb_work *w = work_for("broadcast", pg, t, NULL);
    if (!w)
        return NULL;
    nb_collective_args args = {.kind = NB_COLLECTIVE_BROADCAST, .root = root,
                               .check = call_digest(NB_COLLECTIVE_BROADCAST, 0, root, t)};
    return work_start(pg, &args, w);
}

static nb_work *allgather_impl(nb_process_group *pg, const nb_tensor *in, nb_tensor *out)
{
    if (!pg || !in || !out) {
        if (!nbi_error_pending())
            nbi_error(NB_NULL_ARGUMENT, "allgather: %s is NULL",
                      !pg ? "process group" : !in ? "in" : "out");
        return NULL;
    }
    if (nb_tensor_dtype(in) != nb_tensor_dtype(out)) {
        nbi_error(NB_DTYPE_UNSUPPORTED, "allgather: in is %s but out is %s (expected the same "
                  "dtype)", nb_dtype_name(nb_tensor_dtype(in)),
                  nb_dtype_name(nb_tensor_dtype(out)));
        return NULL;
    }
    if (!nbi_same_device(in, out)) {
        nbi_error(NB_DEVICE_MISMATCH, "allgather: in is on %s but out on %s",
                  nb_tensor_device(in), nb_tensor_device(out));
        return NULL;
    }
    int64_t n = nb_tensor_numel(in), want;
    if (__builtin_mul_overflow(n, (int64_t)pg->world, &want) ||
        nb_tensor_numel(out) != want) {
        nbi_error(NB_SHAPE_MISMATCH, "allgather: out has shape %s (%lld elements), expected "
                  "world size %d x %lld elements of in %s", NBI_SHAPE_STR(out),
                  (long long)nb_tensor_numel(out), pg->world, (long long)n,
                  nbi_shape_cstr(nb_tensor_ndim(in), nbi_dims(in)));
        return NULL;
    }
    if (!check_count("allgather", out))
        return NULL;
    nb_work *w = work_for("allgather", pg, out, in);
    if (!w)
        return NULL;
    nb_collective_args args = {.kind = NB_COLLECTIVE_ALLGATHER,
                               .check = call_digest(NB_COLLECTIVE_ALLGATHER, 0, 0, in)};
    return work_start(pg, &args, w);
}

static nb_work *barrier_impl(nb_process_group *pg)
{
    if (!pg) {
        nbi_error(NB_NULL_ARGUMENT, "barrier: process group is NULL");
        return NULL;
    }
    nb_work *w = work_new(pg);
    if (!w)
        return NULL;
    nb_collective_args args = {.kind = NB_COLLECTIVE_BARRIER,
                               .check = call_digest(NB_COLLECTIVE_BARRIER, 0, 0, NULL)};
    return work_start(pg, &args, w);
}

nb_work *nb_allreduce(nb_process_group *pg, nb_tensor *t, nb_reduce_op op)
{
    DIST_API(nb_work *, allreduce_impl(pg, t, op));
}

nb_work *nb_broadcast(nb_process_group *pg, nb_tensor *t, int32_t root)
{
    DIST_API(nb_work *, broadcast_impl(pg, t, root));
}

nb_work *nb_allgather(nb_process_group *pg, const nb_tensor *in, nb_tensor *out)
{
    DIST_API(nb_work *, allgather_impl(pg, in, out));
}

nb_work *nb_barrier(nb_process_group *pg) { DIST_API(nb_work *, barrier_impl(pg)); }

static nb_status work_wait_impl(nb_work *w)
{
    if (!w)
        return nbi_error(NB_NULL_ARGUMENT, "work_wait: work is NULL");
    if (w->done)
        return w->status == NB_OK ? NB_OK
                                  : nbi_error(w->status, "%s", w->message ? w->message
                                                                          : "collective failed");
    nb_clear_error();
    nb_status st = w->pg->api->wait(w->pg->comm, w->request);
    w->request = NULL;
    if (w->prev)
        w->prev->next = w->next;
    else
        w->pg->pending = w->next;
    if (w->next)
        w->next->prev = w->prev;
    if (st != NB_OK && !nbi_error_pending())
        nbi_error(st, "collective failed in the %s backend", w->pg->api->name);
    if (st == NB_OK && w->target) {
        bool prev = nb_set_grad_enabled(false);
        if (w->average)
            st = nb_div_scalar_(w->buf, (double)w->pg->world);
        if (st == NB_OK && w->buf != w->target)
            st = nb_tensor_copy_(w->target, w->buf);
        else if (st == NB_OK && !w->average)
            nbi_bump_version(w->target); /* the backend wrote it behind the core's back */
        nb_set_grad_enabled(prev);
    }
    w->done = true;
    w->status = st;
    if (st != NB_OK)
        w->message = nbi_strdup(nb_last_error());
    work_release(w);
    return st;
}

nb_status nb_work_wait(nb_work *w) { return NBI_API_CALL(work_wait_impl(w)); }

void nb_work_free(nb_work *w)
{
    if (!w)
        return;
    if (!w->done) {
        nb_status saved = nb_last_status();
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", nb_last_error());
        nb_work_wait(w);
        if (saved == NB_OK)
            nb_clear_error();
        else
            nbi_error(saved, "%s", msg);
    }
    nbi_free(w->message);
    nbi_free(w);
}

nb_status nb_work_finish(nb_work *w)
{
    if (!w)
        return nbi_last_or(NB_NULL_ARGUMENT, "work_finish: work is NULL");
    nb_status st = nb_work_wait(w);
    nb_work_free(w);
    return st;
}

/* ---- distributed sampler ---- */

int64_t nb_distributed_sampler_count(int64_t n, int32_t world_size)
{
    if (n < 0 || world_size < 1) {
        nbi_error(NB_INVALID_ARGUMENT, "distributed_sampler_count: %lld samples over %d ranks "
                  "(expected n >= 0 and world_size >= 1)", (long long)n, world_size);
        return -1;
    }
    return n / world_size + (n % world_size != 0);
}

nb_status nb_distributed_sampler_indices(int64_t n, int32_t rank, int32_t world_size,
                                         uint64_t seed, int64_t epoch, bool shuffle,
                                         int64_t *out, int64_t count)
{
    int64_t per = nb_distributed_sampler_count(n, world_size);
    if (per < 0)
        return nb_last_status();
    if (!out && count > 0)
        return nbi_error(NB_NULL_ARGUMENT, "distributed_sampler_indices: out is NULL");
    if (rank < 0 || rank >= world_size)
        return nbi_error(NB_INDEX_OUT_OF_RANGE, "distributed_sampler_indices: rank %d out of "
                         "range: world size %d", rank, world_size);
    if (count != per)
        return nbi_error(NB_SHAPE_MISMATCH, "distributed_sampler_indices: room for %lld "
                         "indices, rank %d of %d takes %lld of %lld", (long long)count, rank,
                         world_size, (long long)per, (long long)n);
    if (n == 0)
        return NB_OK;
    int64_t *perm = nbi_malloc((size_t)n * sizeof *perm); /* n * 8 fits: n <= count * w */
    if (!perm)
        return nbi_error(NB_OUT_OF_MEMORY, "distributed_sampler_indices: out of memory for %lld "
                         "indices", (long long)n);
    for (int64_t k = 0; k < n; k++)
        perm[k] = k;
    /* Fisher-Yates with Philox numbers keyed by (seed, epoch): the same on every rank. */
    for (int64_t k = n - 1; shuffle && k > 0; k--) {
        uint32_t r[4];
        nb_philox(seed, (uint64_t)k, (uint64_t)epoch, r);
        uint64_t u = ((uint64_t)r[0] << 32) | r[1];
        int64_t j = (int64_t)(u % (uint64_t)(k + 1));
        int64_t t = perm[k];
        perm[k] = perm[j];
        perm[j] = t;
    }
    /* Position rank + i * w of the permutation padded by wrapping around. */
    for (int64_t i = 0; i < count; i++)
        out[i] = perm[((int64_t)rank + i * world_size) % n];
    nbi_free(perm);
    return NB_OK;
}
