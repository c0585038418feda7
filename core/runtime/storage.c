/* storage.c - reference-counted device buffers, and the per-device caching allocator that lets a
 * training step run without a single driver allocation in steady state. */
#include "nabla_internal.h"

#include <stdint.h>
#include <string.h>

/* Blocks are rounded up to a size class: four classes per power of two (at most 25% slack),
 * 256 bytes at least. Unused blocks wait in the device's free list of their class. */
static size_t size_class(size_t bytes, int *cls)
{
    if (bytes <= 256) {
        *cls = 0;
        return 256;
    }
    int e = 63 - __builtin_clzll((unsigned long long)(bytes - 1)); /* 2^e < bytes <= 2^(e+1) */
    size_t step = (size_t)1 << (e - 2);                            /* an eighth of 2^(e+1) */
    size_t n = (bytes + step - 1) / step;                          /* 5..8 (2^e = 4 steps) */
    *cls = (e - 8) * 4 + (int)(n - 5) + 1;
    return n * step;
}

/* Bytes of the storages alive now, on every device, and their peak since the last reset
 * (torch.cuda.memory_allocated / max_memory_allocated); wrapped host memory is not counted.
 * These and nbi_live_storage_count change only under the cache lock, by plain load and store:
 * a storage's birth or death then costs one locked instruction (the lock) instead of four, which
 * is a third of what a one-element op spends outside its kernel. Readers load them lock-free. */
static _Atomic int64_t live_bytes, peak_bytes;

#define LOAD(v) atomic_load_explicit(&(v), memory_order_relaxed)
#define STORE(v, x) atomic_store_explicit(&(v), (x), memory_order_relaxed)

/* A spinlock: the critical sections are a few pointer moves, on the dispatch fast path. */
static atomic_flag cache_flag = ATOMIC_FLAG_INIT;

static void cache_lock(void)
{
    while (atomic_flag_test_and_set_explicit(&cache_flag, memory_order_acquire))
        ;
}

static void cache_unlock(void) { atomic_flag_clear_explicit(&cache_flag, memory_order_release); }

/* Under the lock: a storage of `bytes` (0 for wrapped memory) is born (+1) or dies (-1). */
static void count_locked(int sign, size_t bytes)
{
    STORE(nbi_live_storage_count, LOAD(nbi_live_storage_count) + sign);
    int64_t now = LOAD(live_bytes) + sign * (int64_t)bytes;
    STORE(live_bytes, now);
    if (now > LOAD(peak_bytes))
        STORE(peak_bytes, now);
}

int64_t nb_memory_allocated(void) { return atomic_load(&live_bytes); }
int64_t nb_memory_peak(void) { return atomic_load(&peak_bytes); }
void nb_memory_reset_peak(void)
{
    cache_lock();
    STORE(peak_bytes, LOAD(live_bytes));
    cache_unlock();
}

/* A cached block of class cls, counted as born with `bytes` in it; NULL when the list is empty
 * (nothing counted: the caller allocates and counts with count_born). */
static nbi_storage *cache_pop(nbi_device *dev, int cls, size_t bytes)
{
    cache_lock();
    nbi_storage *s = dev->free_lists[cls];
    if (s) {
        dev->free_lists[cls] = s->next_free;
        dev->cached_bytes -= s->block;
        count_locked(+1, bytes);
    }
    cache_unlock();
    return s;
}

static void count_born(size_t bytes)
{
    cache_lock();
    count_locked(+1, bytes);
    cache_unlock();
}

void nbi_storage_cache_flush(nbi_device *dev)
{
    cache_lock();
    for (int c = 0; c < 256; c++) {
        nbi_storage *s = dev->free_lists[c];
        while (s) {
            nbi_storage *next = s->next_free;
            dev->api->free(dev->index, s->handle);
            nbi_free(s);
            s = next;
        }
        dev->free_lists[c] = NULL;
    }
    dev->cached_bytes = 0;
    cache_unlock();
}

nbi_storage *nbi_storage_new(nbi_device *dev, size_t bytes)
{
    if (bytes > PTRDIFF_MAX) { /* no size class, and no plugin should be asked */
        nbi_error(NB_OUT_OF_MEMORY, "cannot allocate %zu bytes on %s: more than PTRDIFF_MAX",
                  bytes, dev->name);
        return NULL;
    }
    int cls;
    size_t block = size_class(bytes, &cls);
    if (cls < 0 || cls >= 256) {
        nbi_error(NB_OUT_OF_MEMORY, "cannot allocate %zu bytes on %s", bytes, dev->name);
        return NULL;
    }
    nbi_storage *s = cache_pop(dev, cls, bytes);
    if (!s) {
        s = nbi_malloc(sizeof *s);
        if (!s) {
            nbi_error(NB_OUT_OF_MEMORY, "out of host memory for a storage");
            return NULL;
        }
        void *handle = NULL;
        nb_status st = dev->api->alloc(dev->index, block, &handle);
        if (st != NB_OK || !handle) { /* give cached blocks back to the driver and retry once */
            nbi_storage_cache_flush(dev);
            st = dev->api->alloc(dev->index, block, &handle);
        }
        if (st != NB_OK || !handle) {
            nbi_free(s);
            nbi_error(NB_OUT_OF_MEMORY, "cannot allocate %zu bytes on %s", block, dev->name);
            return NULL;
        }
        s->handle = handle;
        s->block = block;
        s->device = dev;
        count_born(bytes);
    }
    s->next_free = NULL;
    s->bytes = bytes;
    s->release = NULL;
    s->release_ctx = NULL;
    atomic_store_explicit(&s->refcount, 1, memory_order_relaxed);
    atomic_store_explicit(&s->version, 0, memory_order_relaxed);
    return s;
}

nbi_storage *nbi_storage_wrap(nbi_device *dev, void *ptr, size_t bytes, void (*release)(void *),
                              void *ctx)
{
    nbi_storage *s = nbi_calloc(1, sizeof *s);
    if (!s) {
        nbi_error(NB_OUT_OF_MEMORY, "out of host memory for a storage");
        return NULL;
    }
    void *handle = NULL;
    nb_status st = dev->api->wrap_host(dev->index, ptr, bytes, &handle);
    if (st != NB_OK) {
        nbi_free(s);
        return NULL;
    }
    s->device = dev;
    s->handle = handle;
    s->bytes = bytes;
    s->release = release;
    s->release_ctx = ctx;
    atomic_store(&s->refcount, 1);
    count_born(0);
    return s;
}

void nbi_storage_release(nbi_storage *s)
{
    if (!s || !nbi_unref(&s->refcount))
        return;
    nbi_device *dev = s->device;
    if (s->block == 0) { /* wrapped host memory: free the wrapper, then tell the owner */
        cache_lock();
        count_locked(-1, 0);
        cache_unlock();
        dev->api->free(dev->index, s->handle);
        if (s->release)
            s->release(s->release_ctx);
        nbi_free(s);
        return;
    }
    int cls;
    size_class(s->block, &cls);
    cache_lock();
    count_locked(-1, s->bytes);
    s->next_free = dev->free_lists[cls];
    dev->free_lists[cls] = s;
    dev->cached_bytes += s->block;
    cache_unlock();
}
