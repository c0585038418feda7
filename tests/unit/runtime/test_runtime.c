/* test_runtime.c - tests core/runtime/runtime.c: status strings, the thread-local last error, scopes,
 * nb_shutdown's leak report, and the replaceable allocator (out of memory injected at every
 * allocation of a small training step: each call fails cleanly or succeeds, nothing leaks). */
#include "nb_test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- status strings ---- */

static void status_str_covers_every_code(void **state)
{
    (void)state;
    struct {
        nb_status code;
        const char *desc;
    } table[] = {
#define ROW_(name, value, desc) {NB_##name, desc},
        NB_STATUS_MAP(ROW_)
#undef ROW_
    };
    size_t n = sizeof table / sizeof *table;
    assert_int_equal(n, NB_NO_DEVICE + 1); /* codes are dense from 0 */
    for (size_t k = 0; k < n; k++) {
        assert_int_equal(table[k].code, (nb_status)k);
        assert_string_equal(nb_status_str(table[k].code), table[k].desc);
        assert_true(strlen(table[k].desc) > 0);
        for (size_t j = 0; j < k; j++) /* each code reads differently */
            assert_string_not_equal(nb_status_str(table[j].code), table[k].desc);
    }
    assert_string_equal(nb_status_str(NB_OK), "success");
    assert_string_equal(nb_status_str((nb_status)(NB_NO_DEVICE + 1)), "unknown status");
    assert_string_equal(nb_status_str((nb_status)-1), "unknown status");
}

/* ---- the last error ---- */

static void no_error_reads_as_empty(void **state)
{
    (void)state;
    nb_clear_error();
    assert_int_equal(nb_last_status(), NB_OK);
    assert_string_equal(nb_last_error(), "");
}

static void last_error_is_kept_and_reading_never_changes_it(void **state)
{
    (void)state;
    assert_int_equal(nb_plugin_load(NULL), NB_NULL_ARGUMENT);
    char first[1024];
    snprintf(first, sizeof first, "%s", nb_last_error());
    assert_true(strlen(first) > 0);
    for (int k = 0; k < 3; k++) { /* reading, status strings and pure queries leave it alone */
        assert_string_equal(nb_last_error(), first);
        assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
        (void)nb_status_str(NB_IO);
        (void)nb_dtype_name(NB_DTYPE_F32);
        (void)nb_live_tensors();
    }
    nb_clear_error();
    assert_int_equal(nb_last_status(), NB_OK);
    assert_string_equal(nb_last_error(), "");
}

static void later_error_replaces_earlier_one(void **state)
{
    (void)state;
    assert_int_equal(nb_plugin_load(NULL), NB_NULL_ARGUMENT);
    assert_int_equal(nb_set_allocator(&(nb_allocator){.malloc = malloc}), NB_NULL_ARGUMENT);
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    NB_ASSERT_ERROR_HAS("nb_set_allocator");
}

static void *error_in_thread(void *arg)
{
    (void)arg;
    /* a fresh thread starts clean and its error stays its own */
    int clean = nb_last_status() == NB_OK && nb_last_error()[0] == '\0';
    nb_plugin_load(NULL);
    return (void *)(intptr_t)clean;
}

static void errors_are_per_thread(void **state)
{
    (void)state;
    nb_scope_end(); /* NB_STATE here */
    assert_int_equal(nb_last_status(), NB_STATE);
    char mine[1024];
    snprintf(mine, sizeof mine, "%s", nb_last_error());
    pthread_t th;
    void *clean = NULL;
    assert_int_equal(pthread_create(&th, NULL, error_in_thread, NULL), 0);
    assert_int_equal(pthread_join(th, &clean), 0);
    assert_true(clean != NULL);
    assert_int_equal(nb_last_status(), NB_STATE);
    assert_string_equal(nb_last_error(), mine);
}

/* ---- scopes ---- */

static nb_tensor *small(void) { return nb_empty(NB_SHAPE(2, 3), (nb_opts){0}); }

static void scope_releases_tensors_at_its_end(void **state)
{
    (void)state;
    nb_scope_begin();
    for (int k = 0; k < 100; k++) /* more than one growth of the scope's list */
        assert_non_null(small());
    assert_int_equal(nb_live_tensors(), 100);
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 0);
    assert_int_equal(nb_live_storages(), 0);
    assert_int_equal(nb_last_status(), NB_OK);
}

static void keep_hands_a_tensor_to_the_caller(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *a = small(), *b = small();
    assert_ptr_equal(nb_keep(b), b);
    (void)a;
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 1); /* b survived, a did not */
    assert_int_equal(nb_tensor_numel(b), 6);
    nb_release(b);
}

static void keep_in_a_nested_scope_hands_to_the_enclosing_one(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *outer = small();
    nb_scope_begin();
    nb_tensor *kept = nb_keep(small());
    (void)small();
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 2); /* outer and kept */
    assert_int_equal(nb_tensor_numel(kept), 6);
    assert_int_equal(nb_tensor_numel(outer), 6);
    nb_scope_end(); /* kept belonged to the outer scope: released now */
    assert_int_equal(nb_live_tensors(), 0);
}

static void retained_tensor_outlives_its_scope(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *t = nb_retain(small()); /* one reference the scope drops, one mine */
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 1);
    nb_release(t);
}

/* The scope trap: releasing a tensor the open scope tracks takes it out of the scope, so
 * nb_scope_end does not release it a second time (ASan reports a use after free if it does). */
static void released_tensor_leaves_its_scope(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *a = small(), *b = small();
    assert_non_null(b);
    nb_release(a);
    assert_int_equal(nb_live_tensors(), 1);
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 0);
    assert_int_equal(nb_last_status(), NB_OK);

    /* from an inner scope, a tensor of the outer one */
    nb_scope_begin();
    nb_tensor *outer = small();
    nb_scope_begin();
    nb_release(outer);
    (void)small();
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 0);
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 0);
}

static void each_release_of_a_twice_returned_tensor_takes_one_entry(void **state)
{
    (void)state;
    nb_scope_begin();
    nb_tensor *t = small();
    nb_tensor *same = nb_to_device(t, "cpu"); /* the same object, returned (and tracked) again */
    assert_ptr_equal(same, t);
    nb_release(same);
    assert_int_equal(nb_live_tensors(), 1);
    nb_scope_end(); /* the remaining entry */
    assert_int_equal(nb_live_tensors(), 0);

    /* retain + release inside the scope: the release was the scope's reference, the retained
     * one is the caller's to release */
    nb_scope_begin();
    nb_tensor *r = nb_retain(small());
    nb_release(r);
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 1);
    nb_release(r);
}

static void tensors_outside_any_scope_are_untouched_by_one(void **state)
{
    (void)state;
    nb_tensor *t = small();
    nb_scope_begin();
    nb_tensor *v = nb_reshape(t, NB_SHAPE(6)); /* a view of t made in the scope */
    assert_non_null(v);
    nb_scope_end();
    assert_int_equal(nb_live_tensors(), 1);
    assert_int_equal(nb_tensor_numel(t), 6);
    nb_release(t);
}

static void keep_outside_a_scope_and_keep_null_are_harmless(void **state)
{
    (void)state;
    assert_null(nb_keep(NULL));
    nb_tensor *t = small();
    assert_ptr_equal(nb_keep(t), t);
    nb_release(t);
    nb_release(NULL); /* a no-op */
}

static void scope_end_without_begin_is_an_error(void **state)
{
    (void)state;
    nb_scope_end();
    assert_int_equal(nb_last_status(), NB_STATE);
    NB_ASSERT_ERROR_HAS("no scope is open");
}

static void many_nested_scopes(void **state)
{
    (void)state;
    for (int d = 0; d < 20; d++) { /* deeper than the first allocation of the scope stack */
        nb_scope_begin();
        (void)small();
    }
    assert_int_equal(nb_live_tensors(), 20);
    for (int d = 0; d < 20; d++) {
        nb_scope_end();
        assert_int_equal(nb_live_tensors(), 19 - d);
    }
}

/* ---- shutdown ---- */

static void shutdown_reports_live_tensors(void **state)
{
    (void)state;
    nb_tensor *a = small(), *b = small();
    assert_non_null(a);
    assert_int_equal(nb_shutdown(), NB_STATE);
    NB_ASSERT_ERROR_HAS("2 tensors and 2 storages are still alive");
    nb_tensor *v = nb_reshape(a, NB_SHAPE(3, 2)); /* a view: a tensor, no new storage */
    assert_int_equal(nb_shutdown(), NB_STATE);
    NB_ASSERT_ERROR_HAS("3 tensors and 2 storages");
    nb_release(a);
    nb_release(b);
    assert_int_equal(nb_shutdown(), NB_STATE);
    NB_ASSERT_ERROR_HAS("2 tensors and 1 storages"); /* a view keeps its base (torch's ._base) */
    nb_release(v);
    nb_clear_error();
    NB_ASSERT_OK(nb_shutdown());
    NB_ASSERT_OK(nb_shutdown()); /* twice is fine */
    /* and the runtime comes back on the next call */
    nb_tensor *c = small();
    assert_non_null(c);
    nb_release(c);
}

/* ---- the allocator ---- */

/* Counts live blocks and fails the fail_at-th allocation (0: never). */
static struct {
    long calls, live, fail_at, failures;
} acct;

static void *count_malloc(size_t n)
{
    if (++acct.calls == acct.fail_at) {
        acct.failures++;
        return NULL;
    }
    void *p = malloc(n);
    if (p)
        acct.live++;
    return p;
}

static void *count_realloc(void *p, size_t n)
{
    if (++acct.calls == acct.fail_at) {
        acct.failures++;
        return NULL;
    }
    void *q = realloc(p, n);
    if (q && !p)
        acct.live++;
    return q;
}

static void count_free(void *p)
{
    if (p)
        acct.live--;
    free(p);
}

static const nb_allocator counting = {count_malloc, count_realloc, count_free};

static void set_allocator_refuses_while_tensors_live(void **state)
{
    (void)state;
    nb_tensor *t = small();
    assert_int_equal(nb_set_allocator(&counting), NB_STATE);
    NB_ASSERT_ERROR_HAS("1 tensors");
    nb_release(t);
}

static void set_allocator_needs_all_three_functions(void **state)
{
    (void)state;
    nb_allocator partial = {.malloc = malloc, .realloc = realloc};
    assert_int_equal(nb_set_allocator(&partial), NB_NULL_ARGUMENT);
    NB_ASSERT_ERROR_HAS("malloc, realloc and free");
    NB_ASSERT_OK(nb_set_allocator(NULL));
}

static void check(bool ok_or_error)
{
    /* every call either worked or left a reason */
    if (!ok_or_error && nb_last_status() == NB_OK)
        fail_msg("a call failed without an error (allocation %ld)", acct.fail_at);
}

/* A small training step: creation, ops with broadcasting, autograd, scopes, printing. */
static void workload(void)
{
    float data[6] = {1, 2, 3, 4, 5, 6};
    nb_tensor *x = nb_from_data(data, NB_SHAPE(2, 3), (nb_opts){.requires_grad = true});
    check(x != NULL);
    /* nb_scope_begin returns nothing: a scope that could not open shows as the error */
    nb_clear_error();
    nb_scope_begin();
    if (nb_last_status() != NB_OK) {
        nb_release(x);
        return;
    }
    nb_tensor *w = nb_full(NB_SHAPE(3), 0.5, (nb_opts){0});
    check(w != NULL);
    nb_tensor *y = nb_mul(x, w);
    nb_tensor *z = nb_add_scalar(y, 1);
    nb_tensor *s = nb_sum(nb_relu(z), NULL, 0, false);
    check(s != NULL);
    if (s)
        check(nb_backward(s, NULL, (nb_backward_opts){0}) == NB_OK);
    char *str = nb_tensor_str(s);
    check(str != NULL || s == NULL);
    nb_free(str);
    nb_tensor *m = nb_matmul(x, nb_t(x));
    check(m != NULL);
    nb_tensor *parts[2] = {x, y};
    nb_tensor *c = nb_reshape(nb_t(nb_cat(parts, 2, 0)), NB_SHAPE(-1)); /* a copying reshape */
    check(c != NULL);
    int64_t iv[2] = {2, 0};
    nb_tensor *idx = nb_from_data(iv, NB_SHAPE(2), (nb_opts){NB_DTYPE_I64});
    nb_tensor *g2 = NULL, *sq = nb_sum(nb_pow_scalar(nb_index_select(x, 1, idx), 3), NULL, 0,
                                        false);
    if (sq) /* a second-order graph */
        check(nb_grad(&sq, NULL, 1, &x, 1, (nb_grad_opts){.create_graph = true}, &g2) ==
              NB_OK);
    nb_scope_end();
    nb_tensor *g = nb_tensor_grad(x);
    nb_release(g);
    nb_release(x);
}

static void out_of_memory_at_every_allocation_fails_cleanly(void **state)
{
    (void)state;
    if (nb_device_count("cpu") < 1 || !nb_device_has_kernel("cpu", "add", NB_DTYPE_F32))
        skip(); /* needs the cpu plugin's kernels */
    /* measure a clean run with everything (plugins too) allocated through the counter */
    NB_ASSERT_OK(nb_shutdown());
    acct = (typeof(acct)){0};
    NB_ASSERT_OK(nb_set_allocator(&counting));
    workload();
    assert_int_equal(nb_last_status(), NB_OK);
    NB_ASSERT_OK(nb_shutdown());
    long total = acct.calls;
    assert_int_equal(acct.live, 0);
    NB_ASSERT_OK(nb_set_allocator(NULL));
    assert_true(total > 10);

    /* every k is tried, and the leaks are reported together, so that one report lists them */
    long failed_runs = 0, leaky_runs = 0;
    char report[2048] = "";
    size_t used = 0;
    for (long k = 1; k <= total; k++) {
        acct = (typeof(acct)){.fail_at = k};
        nb_clear_error();
        NB_ASSERT_OK(nb_set_allocator(&counting));
        workload();
        failed_runs += nb_last_status() != NB_OK;
        long long lt = nb_live_tensors(), ls = nb_live_storages();
        char why[256];
        snprintf(why, sizeof why, "%s", nb_last_error());
        if (lt || ls) { /* drop what leaked so the next run starts clean */
            nb_clear_error();
            nb_scope_end(); /* a scope the workload could not close */
        }
        nb_status st = nb_shutdown();
        if (lt || ls || st != NB_OK || acct.live != 0) {
            leaky_runs++;
            if (used < sizeof report)
                used += (size_t)snprintf(report + used, sizeof report - used,
                                         "\n  allocation %ld: %lld tensors, %lld storages, %ld "
                                         "host blocks left (error: \"%s\")",
                                         k, lt, ls, acct.live, why);
        }
        if (st != NB_OK) /* leaked tensors keep the runtime up: nothing more can be learnt */
            break;
        NB_ASSERT_OK(nb_set_allocator(NULL));
    }
    nb_set_allocator(NULL);
    print_message("out of memory injected at each of %ld allocations: %ld calls failed "
                  "cleanly\n", total, failed_runs);
    if (leaky_runs)
        fail_msg("%ld of %ld injected failures leaked:%s", leaky_runs, total, report);
    assert_true(failed_runs > total / 2); /* the failures surface as errors */
    nb_clear_error();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(status_str_covers_every_code),
        NB_TEST(no_error_reads_as_empty),
        NB_TEST(last_error_is_kept_and_reading_never_changes_it),
        NB_TEST(later_error_replaces_earlier_one),
        NB_TEST(errors_are_per_thread),
        NB_TEST(scope_releases_tensors_at_its_end),
        NB_TEST(keep_hands_a_tensor_to_the_caller),
        NB_TEST(keep_in_a_nested_scope_hands_to_the_enclosing_one),
        NB_TEST(released_tensor_leaves_its_scope),
        NB_TEST(each_release_of_a_twice_returned_tensor_takes_one_entry),
        NB_TEST(retained_tensor_outlives_its_scope),
        NB_TEST(tensors_outside_any_scope_are_untouched_by_one),
        NB_TEST(keep_outside_a_scope_and_keep_null_are_harmless),
        NB_TEST(scope_end_without_begin_is_an_error),
        NB_TEST(many_nested_scopes),
        NB_TEST(shutdown_reports_live_tensors),
        NB_TEST(set_allocator_refuses_while_tensors_live),
        NB_TEST(set_allocator_needs_all_three_functions),
        NB_TEST(out_of_memory_at_every_allocation_fails_cleanly),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
