/* nb_test.h - shared helpers for the cmocka unit tests: every test's teardown checks that no
 * tensor or storage is left alive, which makes every test a leak test. */
#ifndef NB_TEST_H
#define NB_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nabla.h"

/* Objects alive when the test started: a failed test's leftovers are not charged to the next. */
static int64_t nb_test_tensors_before, nb_test_storages_before;

/* Teardown for cmocka_unit_test_setup_teardown: fails the test if anything leaked. */
static inline int nb_test_teardown(void **state)
{
    (void)state;
    int64_t tensors = nb_live_tensors() - nb_test_tensors_before;
    int64_t storages = nb_live_storages() - nb_test_storages_before;
    if (tensors != 0 || storages != 0) {
        print_error("leak: %lld tensors and %lld storages alive after the test\n",
                    (long long)tensors, (long long)storages);
        return -1;
    }
    nb_clear_error();
    return 0;
}

static inline int nb_test_setup(void **state)
{
    (void)state;
    nb_test_tensors_before = nb_live_tensors();
    nb_test_storages_before = nb_live_storages();
    nb_clear_error();
    return 0;
}

/* A counting allocator for out-of-memory tests (install it with nb_set_allocator): it fails the
 * fail_at-th call (0: never) and counts the blocks still live. */
typedef struct nb_test_alloc {
    long calls, live, fail_at;
} nb_test_alloc;

static inline nb_test_alloc *nb_test_acct(void)
{
    static nb_test_alloc acct;
    return &acct;
}

static inline void *nb_test_malloc(size_t n)
{
    nb_test_alloc *a = nb_test_acct();
    if (++a->calls == a->fail_at)
        return NULL;
    void *p = malloc(n);
    a->live += p != NULL;
    return p;
}

static inline void *nb_test_realloc(void *p, size_t n)
{
    nb_test_alloc *a = nb_test_acct();
    if (++a->calls == a->fail_at)
        return NULL;
    void *q = realloc(p, n);
    a->live += q && !p;
    return q;
}

static inline void nb_test_free(void *p)
{
    nb_test_acct()->live -= p != NULL;
    free(p);
}

#define NB_TEST(fn) cmocka_unit_test_setup_teardown(fn, nb_test_setup, nb_test_teardown)

/* Asserts that expr gives NB_OK. */
#define NB_ASSERT_OK(expr) assert_int_equal((expr), NB_OK)

/* Asserts that the last error message contains `needle`. */
#define NB_ASSERT_ERROR_HAS(needle)                                                        \
    do {                                                                                   \
        const char *msg_ = nb_last_error();                                                \
        if (strstr(msg_, (needle)) == NULL)                                                \
            fail_msg("error message \"%s\" lacks \"%s\"", msg_, (needle));                 \
    } while (0)

/* Runs workload once to warm up (plugins loaded, caches filled), counts its allocations, then
 * runs it again with each allocation in turn failing: every run must fail with an error or
 * succeed, and leave no tensor, storage or host block behind. At least min_allocs allocations
 * and more than half the runs failing keep the test honest. */
static inline void nb_test_every_allocation_fails_cleanly(nb_status (*workload)(void),
                                                          long min_allocs)
{
    static const nb_allocator counting = {nb_test_malloc, nb_test_realloc, nb_test_free};
    NB_ASSERT_OK(nb_shutdown());
    *nb_test_acct() = (nb_test_alloc){0};
    NB_ASSERT_OK(nb_set_allocator(&counting));
    if (workload() != NB_OK)
        fail_msg("workload: %s", nb_last_error());
    long start = nb_test_acct()->calls;
    NB_ASSERT_OK(workload());
    long total = nb_test_acct()->calls - start;
    assert_true(total > min_allocs);
    long failed_runs = 0;
    for (long k = 1; k <= total; k++) {
        nb_clear_error();
        nb_test_acct()->fail_at = nb_test_acct()->calls + k;
        nb_status st = workload();
        nb_test_acct()->fail_at = 0;
        failed_runs += st != NB_OK;
        if (st != NB_OK && nb_last_status() == NB_OK)
            fail_msg("allocation %ld of %ld failed without an error", k, total);
        if (nb_live_tensors() || nb_live_storages())
            fail_msg("allocation %ld of %ld failed (\"%s\") and %lld tensors, %lld storages "
                     "leaked", k, total, nb_last_error(), (long long)nb_live_tensors(),
                     (long long)nb_live_storages());
    }
    nb_clear_error();
    NB_ASSERT_OK(nb_shutdown());
    if (nb_test_acct()->live != 0)
        fail_msg("%ld host blocks leaked", nb_test_acct()->live);
    NB_ASSERT_OK(nb_set_allocator(NULL));
    print_message("out of memory injected at each of %ld allocations: %ld runs failed cleanly\n",
                  total, failed_runs);
    assert_true(failed_runs > total / 2);
}

#endif
