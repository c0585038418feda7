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

/* Reads a whole f32 tensor into a static-size buffer for assertions. */
#define NB_ASSERT_OK(expr) assert_int_equal((expr), NB_OK)

/* Asserts that the last error message contains `needle`. */
#define NB_ASSERT_ERROR_HAS(needle)                                                        \
    do {                                                                                   \
        const char *msg_ = nb_last_error();                                                \
        if (strstr(msg_, (needle)) == NULL)                                                \
            fail_msg("error message \"%s\" lacks \"%s\"", msg_, (needle));                 \
    } while (0)

#endif
