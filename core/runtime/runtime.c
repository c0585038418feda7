/* runtime.c - errors, the host allocator, scopes, logging, and init/shutdown of the core. */
#include "nabla_internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* The two headers must agree on the shared types: checked once, here. */
_Static_assert(NB_DTYPE_COUNT == 8 && NB_DTYPE_BF16 == 7, "nb_dtype changed: update both headers");
_Static_assert(NB_NO_DEVICE == 19, "nb_status changed: update both headers");

_Atomic int64_t nbi_live_tensor_count;
_Atomic int64_t nbi_live_storage_count;

/* ---- errors ---- */

static _Thread_local struct {
    nb_status status;
    char message[1024];
} tls_error;

const char *nb_status_str(nb_status status)
{
    switch (status) {
#define NB_STATUS_STR_(name, value, desc)                                                  \
    case NB_##name:                                                                        \
        return desc;
        NB_STATUS_MAP(NB_STATUS_STR_)
#undef NB_STATUS_STR_
    }
    return "unknown status";
}

static nb_status verror(nb_status status, const char *fmt, va_list ap)
{
    tls_error.status = status;
    vsnprintf(tls_error.message, sizeof tls_error.message, fmt, ap);
    return status;
}

nb_status nbi_error(nb_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(status, fmt, ap);
    va_end(ap);
    return status;
}

nb_status nbi_last_or(nb_status status, const char *msg)
{
    return tls_error.status != NB_OK ? tls_error.status : nbi_error(status, "%s", msg);
}

const char *nb_last_error(void) { return tls_error.message; }
nb_status nb_last_status(void) { return tls_error.status; }
bool nbi_error_pending(void) { return tls_error.status != NB_OK; }

void nb_clear_error(void)
{
    tls_error.status = NB_OK;
    tls_error.message[0] = '\0';
}

/* ---- logging ---- */

static int log_level = -1;

void nbi_log(int level, const char *fmt, ...)
{
    if (log_level < 0) {
        const char *env = getenv("NABLA_LOG");
        log_level = env && *env ? atoi(env) : NB_LOG_WARN;
    }
    if (level < log_level)
        return;
    static const char *names[] = {"debug", "info", "warning", "error"};
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nabla %s: ", names[level < 0 ? 0 : level > 3 ? 3 : level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- host allocator ---- */

static nb_allocator allocator = {malloc, realloc, free};

void *nbi_malloc(size_t size) { return allocator.malloc(size ? size : 1); }
void *nbi_realloc(void *p, size_t size) { return allocator.realloc(p, size ? size : 1); }
void nbi_free(void *p)
{
    if (p)
        allocator.free(p);
}
void nb_free(void *p) { nbi_free(p); }

void *nbi_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = nbi_malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

char *nbi_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = nbi_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

nb_status nb_set_allocator(const nb_allocator *a)
{
    if (nbi_live_tensor_count || nbi_live_storage_count)
        return nbi_error(NB_STATE, "nb_set_allocator: %lld tensors and %lld storages are alive; "
                         "replace the allocator only while none is",
                         (long long)nbi_live_tensor_count, (long long)nbi_live_storage_count);
    if (a && (!a->malloc || !a->realloc || !a->free))
        return nbi_error(NB_NULL_ARGUMENT, "nb_set_allocator: malloc, realloc and free must all "
                         "be set");
    allocator = a ? *a : (nb_allocator){malloc, realloc, free};
    return NB_OK;
}

/* ---- growable strings (printing, reprs, safetensors headers) ---- */

static bool sbuf_reserve(nbi_sbuf *b, size_t extra)
{
    if (b->oom)
        return false;
    if (b->n + extra + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1)
        cap *= 2;
    char *p = nbi_realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void nbi_sbuf_putn(nbi_sbuf *b, const char *s, size_t n)
{
    if (!sbuf_reserve(b, n))
        return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void nbi_sbuf_puts(nbi_sbuf *b, const char *s) { nbi_sbuf_putn(b, s, strlen(s)); }

void nbi_sbuf_printf(nbi_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0 || !sbuf_reserve(b, (size_t)need))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)need;
}

/* ---- scopes: a stack of tensor lists per thread ---- */

typedef struct scope {
    nb_tensor **items;
    size_t n, cap;
} scope;

static _Thread_local scope *scopes;
static _Thread_local int scope_depth, scope_cap;
static _Thread_local int scope_floor; /* scopes below it belong to the code that called back */

nbi_user_call nbi_call_user_begin(void)
{
    nbi_user_call saved = {nbi_api_depth, scope_floor};
    nbi_api_depth = 0;
    scope_floor = scope_depth;
    return saved;
}

void nbi_call_user_end(nbi_user_call saved)
{
    while (scope_depth > scope_floor) /* a callback that left its own scope open */
        nb_scope_end();
    nbi_api_depth = saved.depth;
    scope_floor = saved.floor;
}

void nb_scope_begin(void)
{
    if (scope_depth == scope_cap) {
        int cap = scope_cap ? scope_cap * 2 : 8;
        scope *s = nbi_realloc(scopes, (size_t)cap * sizeof *s);
        if (!s) {
            nbi_error(NB_OUT_OF_MEMORY, "nb_scope_begin: out of memory");
            return;
        }
        memset(s + scope_cap, 0, (size_t)(cap - scope_cap) * sizeof *s);
        scopes = s;
        scope_cap = cap;
    }
    scopes[scope_depth++].n = 0;
}

void nb_scope_end(void)
{
    if (scope_depth <= scope_floor) {
        nbi_error(NB_STATE, "nb_scope_end: no scope is open");
        return;
    }
    scope *s = &scopes[--scope_depth];
    for (size_t k = 0; k < s->n; k++) {
        s->items[k]->tracked--;
        nb_release(s->items[k]);
    }
    s->n = 0;
    if (scope_depth == 0) { /* outermost scope closed: give the memory back */
        for (int d = 0; d < scope_cap; d++)
            nbi_free(scopes[d].items);
        nbi_free(scopes);
        scopes = NULL;
        scope_cap = 0;
    }
}

_Thread_local int nbi_api_depth;

bool nbi_scope_track(nb_tensor *t)
{
    if (!t || scope_depth <= scope_floor)
        return true;
    scope *s = &scopes[scope_depth - 1];
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        nb_tensor **items = nbi_realloc(s->items, cap * sizeof *items);
        if (!items) { /* the caller cannot own what the scope cannot track: fail the call */
            nb_release(t);
            nbi_error(NB_OUT_OF_MEMORY, "out of memory tracking a tensor in the open scope");
            return false;
        }
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n++] = t;
    t->tracked++;
    return true;
}

void nbi_scope_untrack(nb_tensor *t)
{
    if (!t || !t->tracked)
        return;
    for (int d = scope_depth; d-- > 0;) {
        scope *s = &scopes[d];
        for (size_t k = s->n; k-- > 0;)
            if (s->items[k] == t) {
                s->items[k] = s->items[--s->n];
                t->tracked--;
                return;
            }
    }
}

nb_tensor *nb_keep(nb_tensor *t)
{
    if (!t || scope_depth <= scope_floor)
        return t;
    nbi_scope_untrack(t);
    if (scope_depth - 1 > scope_floor) { /* handed to the enclosing scope */
        scope_depth--;
        bool ok = nbi_scope_track(t);
        scope_depth++;
        if (!ok)
            return NULL;
    }
    return t;
}

/* ---- init / shutdown ---- */

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static bool initialized;

nb_status nbi_ensure_init(void)
{
    if (NBI_LIKELY(initialized))
        return NB_OK;
    return nb_init();
}

nb_status nb_init(void)
{
    pthread_mutex_lock(&init_lock);
    nb_status st = NB_OK;
    if (!initialized) {
        st = nbi_plugins_discover();
        initialized = (st == NB_OK);
    }
    pthread_mutex_unlock(&init_lock);
    return st;
}

int64_t nb_live_tensors(void) { return nbi_live_tensor_count; }
int64_t nb_live_storages(void) { return nbi_live_storage_count; }

nb_status nb_shutdown(void)
{
    pthread_mutex_lock(&init_lock);
    int64_t t = nbi_live_tensor_count, s = nbi_live_storage_count;
    nb_status st = NB_OK;
    if (t || s) {
        st = nbi_error(NB_STATE, "nb_shutdown: %lld tensors and %lld storages are still alive",
                       (long long)t, (long long)s);
    } else if (initialized) {
        nbi_devices_shutdown();
        nbi_plugins_unload();
        initialized = false;
    }
    pthread_mutex_unlock(&init_lock);
    return st;
}
