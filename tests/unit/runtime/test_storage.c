/* test_storage.c - tests core/runtime/storage.c: storages are counted and shared by views, freed with
 * the last one, wrapped host memory is never cached, and the caching allocator reuses blocks
 * (size classes with at most 25% slack, a steady state that allocates nothing new), also from
 * several threads at once. Reads the cache through the core's internal header. */
#include "nb_test.h"

#include "nabla_internal.h"

#include <pthread.h>

#ifdef __SANITIZE_ADDRESS__
/* The huge-allocation tests expect NULL from the allocator, which ASan turns into an abort
 * unless told otherwise; ASAN_OPTIONS from the environment still applies on top. */
const char *__asan_default_options(void);
__attribute__((visibility("default"), used)) const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}
#endif

static nbi_device *cpu(void)
{
    nbi_device *d = NULL;
    NB_ASSERT_OK(nbi_device_get("cpu", &d));
    return d;
}

static void views_share_one_counted_storage(void **state)
{
    (void)state;
    int64_t s0 = nb_live_storages();
    nb_tensor *t = nb_zeros(NB_SHAPE(4, 4), (nb_opts){0});
    assert_int_equal(nb_live_storages(), s0 + 1);
    nb_tensor *v = nb_transpose(t, 0, 1), *w = nb_select(v, 0, 2);
    assert_int_equal(nb_live_storages(), s0 + 1);
    assert_ptr_equal(t->storage, w->storage);
    assert_int_equal(t->storage->refcount, 3);
    nb_release(t);
    nb_release(v);
    assert_int_equal(nb_live_storages(), s0 + 1); /* w still uses it */
    nb_release(w);
    assert_int_equal(nb_live_storages(), s0);
}

static void released_blocks_are_cached_and_reused(void **state)
{
    (void)state;
    nbi_device *d = cpu();
    nbi_storage_cache_flush(d);
    assert_int_equal(d->cached_bytes, 0);
    nb_tensor *t = nb_empty(NB_SHAPE(1000), (nb_opts){0}); /* 4000 bytes */
    void *handle = t->storage->handle;
    size_t block = t->storage->block;
    assert_true(block >= 4000);
    nb_release(t);
    assert_int_equal(d->cached_bytes, block);
    nb_tensor *u = nb_empty(NB_SHAPE(990), (nb_opts){0}); /* same size class */
    assert_ptr_equal(u->storage->handle, handle);
    assert_int_equal(u->storage->bytes, 3960);
    assert_int_equal(d->cached_bytes, 0);
    assert_int_equal(u->storage->version, 0); /* a reused block starts a new history */
    nb_release(u);
}

static void size_classes_waste_at_most_a_quarter(void **state)
{
    (void)state;
    size_t sizes[] = {1, 255, 256, 257, 1000, 1024, 1025, 4097, 65535, 1 << 20, (1 << 20) + 1,
                      12345678};
    char report[1024] = "";
    size_t used = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        nb_tensor *t = nb_empty(NB_SHAPE((int64_t)sizes[k]), (nb_opts){NB_DTYPE_U8});
        assert_non_null(t);
        size_t block = t->storage->block;
        nb_release(t);
        /* storage.c promises four classes per power of two, so at most 25% slack */
        bool ok = block >= sizes[k] && (sizes[k] <= 256 ? block == 256 : block * 4 <= sizes[k] * 5);
        if (!ok && used < sizeof report)
            used += (size_t)snprintf(report + used, sizeof report - used, " %zu->%zu", sizes[k],
                                     block);
    }
    nbi_storage_cache_flush(cpu());
    if (used)
        fail_msg("blocks with more than 25%% slack (bytes->block):%s", report);
}

static void a_repeated_step_reaches_a_steady_state(void **state)
{
    (void)state;
    nbi_device *d = cpu();
    nbi_storage_cache_flush(d);
    size_t after_first = 0;
    for (int it = 0; it < 20; it++) {
        nb_scope_begin();
        nb_tensor *x = nb_rand(NB_SHAPE(64, 32), (nb_opts){0});
        nb_tensor *w = nb_rand(NB_SHAPE(32, 10), (nb_opts){.requires_grad = true});
        nb_tensor *loss = nb_mean(nb_relu(nb_matmul(x, w)), NULL, 0, false);
        NB_ASSERT_OK(nb_backward(loss, NULL, (nb_backward_opts){0}));
        nb_scope_end();
        assert_int_equal(nb_live_storages(), 0);
        if (it == 0)
            after_first = d->cached_bytes;
        else if (d->cached_bytes != after_first) /* every block came from the cache */
            fail_msg("iteration %d: %zu bytes cached, %zu after the first", it, d->cached_bytes,
                     after_first);
    }
    assert_true(after_first > 0);
    nbi_storage_cache_flush(d);
    assert_int_equal(d->cached_bytes, 0);
}

static int blob_releases;
static void blob_release(void *ctx)
{
    (void)ctx;
    blob_releases++;
}

static void wrapped_host_memory_is_not_cached(void **state)
{
    (void)state;
    nbi_device *d = cpu();
    nbi_storage_cache_flush(d);
    float data[64];
    blob_releases = 0;
    nb_tensor *t = nb_from_blob(data, NB_SHAPE(64), (nb_opts){0}, blob_release, NULL);
    assert_int_equal(t->storage->block, 0);
    assert_int_equal(nb_live_storages(), 1);
    nb_release(t);
    assert_int_equal(blob_releases, 1);
    assert_int_equal(nb_live_storages(), 0);
    assert_int_equal(d->cached_bytes, 0);
}

static void huge_allocation_fails_with_a_message(void **state)
{
    (void)state;
    nb_tensor *t = nb_empty(NB_SHAPE((int64_t)1 << 42), (nb_opts){NB_DTYPE_U8});
    assert_null(t);
    assert_int_equal(nb_last_status(), NB_OUT_OF_MEMORY);
    NB_ASSERT_ERROR_HAS("cannot allocate");
    NB_ASSERT_ERROR_HAS("cpu");
    assert_int_equal(nb_live_storages(), 0);
}

static void *churn(void *arg)
{
    long fails = 0;
    for (int k = 0; k < 2000; k++) {
        nb_tensor *t = nb_empty(NB_SHAPE(1 + (k * 37 + (intptr_t)arg) % 3000), (nb_opts){0});
        nb_tensor *v = t ? nb_reshape(t, NB_SHAPE(-1, 1)) : NULL;
        fails += !t || !v;
        nb_release(v);
        nb_release(t);
    }
    return (void *)fails;
}

static void threads_share_the_cache_safely(void **state)
{
    (void)state;
    pthread_t th[4];
    for (intptr_t k = 0; k < 4; k++)
        assert_int_equal(pthread_create(&th[k], NULL, churn, (void *)k), 0);
    long fails = 0;
    for (int k = 0; k < 4; k++) {
        void *r;
        pthread_join(th[k], &r);
        fails += (long)r;
    }
    assert_int_equal(fails, 0);
    assert_int_equal(nb_live_storages(), 0);
    assert_int_equal(nb_live_tensors(), 0);
}

static void shutdown_gives_cached_blocks_back(void **state)
{
    (void)state;
    nb_tensor *t = nb_empty(NB_SHAPE(100), (nb_opts){0});
    nb_release(t);
    assert_true(cpu()->cached_bytes > 0);
    NB_ASSERT_OK(nb_shutdown()); /* flushes every device's cache, then unloads */
    assert_int_equal(cpu()->cached_bytes, 0); /* a fresh runtime starts empty */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(views_share_one_counted_storage),
        NB_TEST(released_blocks_are_cached_and_reused),
        NB_TEST(size_classes_waste_at_most_a_quarter),
        NB_TEST(a_repeated_step_reaches_a_steady_state),
        NB_TEST(wrapped_host_memory_is_not_cached),
        NB_TEST(huge_allocation_fails_with_a_message),
        NB_TEST(threads_share_the_cache_safely),
        NB_TEST(shutdown_gives_cached_blocks_back),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
