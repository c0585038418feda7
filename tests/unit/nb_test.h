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
