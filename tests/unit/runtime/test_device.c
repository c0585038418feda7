/* test_device.c - tests core/runtime/device.c: device strings ("type[:index]"), their errors, the
 * default device (nb_set_default_device and NABLA_DEVICE), device counts and kernel queries.
 * Uses the "mini" test plugin (two devices) from tests/badplugins when it was built. */
#include "nb_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char mini_path[1200];

/* Loads the two-device test plugin, or skips the test. */
static void need_mini(void)
{
    if (!mini_path[0] || access(mini_path, R_OK) != 0)
        skip();
    NB_ASSERT_OK(nb_plugin_load(mini_path));
}

static void need_cpu(void)
{
    if (nb_device_count("cpu") < 1)
        fail_msg("no cpu device: %s", nb_last_error());
    nb_clear_error();
}

static void parse_ok(const char *s, const char *want)
{
    char buf[64];
    nb_status st = nb_device_parse(s, buf, sizeof buf);
    if (st != NB_OK)
        fail_msg("'%s': %s", s, nb_last_error());
    assert_string_equal(buf, want);
}

static void parse_fails(const char *s, nb_status want, const char *needle)
{
    char buf[64] = "untouched";
    nb_clear_error();
    nb_status st = nb_device_parse(s, buf, sizeof buf);
    if (st != want)
        fail_msg("'%.40s': status %s, expected %s (%s)", s, nb_status_str(st),
                 nb_status_str(want), nb_last_error());
    assert_int_equal(nb_last_status(), want);
    NB_ASSERT_ERROR_HAS(needle);
    assert_string_equal(buf, "untouched");
    /* the same string as a tensor's device fails the same way */
    nb_clear_error();
    nb_tensor *t = nb_zeros(NB_SHAPE(1), (nb_opts){.device = s});
    assert_null(t);
    assert_int_equal(nb_last_status(), want);
    NB_ASSERT_ERROR_HAS(needle);
}

static void cpu_strings_parse_to_canonical_form(void **state)
{
    (void)state;
    need_cpu();
    parse_ok("cpu", "cpu:0");
    parse_ok("cpu:0", "cpu:0");
    assert_int_equal(nb_device_count("cpu"), 1);
    NB_ASSERT_OK(nb_synchronize("cpu"));
    NB_ASSERT_OK(nb_synchronize(NULL)); /* the default device */
}

static void tensors_name_their_device_like_pytorch(void **state)
{
    (void)state;
    need_cpu();
    nb_tensor *a = nb_empty(NB_SHAPE(2), (nb_opts){.device = "cpu:0"});
    nb_tensor *b = nb_empty(NB_SHAPE(2), (nb_opts){0});
    assert_non_null(a);
    assert_string_equal(nb_tensor_device(a), "cpu"); /* torch prints device(type='cpu') */
    assert_string_equal(nb_tensor_device(b), "cpu");
    assert_null(nb_tensor_device(NULL));
    nb_release(a);
    nb_release(b);
}

static void malformed_strings_are_rejected_with_the_grammar(void **state)
{
    (void)state;
    parse_fails("cuda:", NB_INVALID_ARGUMENT, "missing index after ':'");
    parse_fails("cuda:-1", NB_INVALID_ARGUMENT, "index '-1' is not a non-negative decimal");
    parse_fails("cuda:0x", NB_INVALID_ARGUMENT, "index '0x' is not a non-negative decimal");
    parse_fails("cuda: 1", NB_INVALID_ARGUMENT, "not a non-negative decimal");
    parse_fails("", NB_INVALID_ARGUMENT, "expected 'type[:index]'");
    parse_fails("CPU", NB_INVALID_ARGUMENT, "malformed device string 'CPU'");
    parse_fails(":0", NB_INVALID_ARGUMENT, "malformed device string");
    parse_fails("0cpu", NB_INVALID_ARGUMENT, "malformed device string");
    parse_fails("cpu:0:1", NB_INVALID_ARGUMENT, "not a non-negative decimal");
    parse_fails("cpu 0", NB_INVALID_ARGUMENT, "expected 'type[:index]'");
}

static void leading_zero_in_the_index_is_malformed(void **state)
{
    (void)state;
    parse_fails("cpu:00", NB_INVALID_ARGUMENT, "index '00' has a leading zero");
    parse_fails("cpu:01", NB_INVALID_ARGUMENT, "leading zero");
    parse_ok("cpu:0", "cpu:0");
}

/* 63, 64 and 65 letters: the longest accepted type fills the whole buffer (it once wrote one past
 * it and left the name unterminated, so the message printed stack bytes). */
static void type_names_at_the_length_limit_stay_in_bounds(void **state)
{
    (void)state;
    for (size_t n = 63; n <= 65; n++) {
        char s[70];
        memset(s, 'a', n);
        s[n] = '\0';
        if (n <= 64) {
            char want[128];
            snprintf(want, sizeof want, "unknown device type '%s' (loaded:", s);
            parse_fails(s, NB_UNKNOWN_DEVICE, want);
            strcat(s, ":0"); /* the limit is on the whole string */
            parse_fails(s, NB_INVALID_ARGUMENT, "more than 64 characters");
        } else {
            parse_fails(s, NB_INVALID_ARGUMENT, "more than 64 characters");
        }
    }
}

static void very_long_string_is_rejected_without_echoing_it(void **state)
{
    (void)state;
    size_t n = 10 * 1024;
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, 'a', n);
    s[n] = '\0';
    parse_fails(s, NB_INVALID_ARGUMENT, "more than");
    assert_true(strlen(nb_last_error()) < 300);
    s[5] = ':'; /* a long index */
    parse_fails(s, NB_INVALID_ARGUMENT, "malformed device string");
    free(s);
}

static void unknown_type_lists_the_loaded_types(void **state)
{
    (void)state;
    need_cpu();
    parse_fails("cdua", NB_UNKNOWN_DEVICE, "unknown device type 'cdua' (loaded: ");
    NB_ASSERT_ERROR_HAS("cpu");
    parse_fails("cdua:1", NB_UNKNOWN_DEVICE, "unknown device type 'cdua'");
    assert_int_equal(nb_device_count("cdua"), -1);
    assert_int_equal(nb_last_status(), NB_UNKNOWN_DEVICE);
    NB_ASSERT_ERROR_HAS("cpu");
}

static void out_of_range_index_counts_the_devices(void **state)
{
    (void)state;
    need_cpu();
    parse_fails("cpu:3", NB_DEVICE_OUT_OF_RANGE, "device index 3 out of range: 1 cpu device");
    NB_ASSERT_ERROR_HAS("1 cpu device"); /* singular */
    assert_null(strstr(nb_last_error(), "devices"));
    parse_fails("cpu:1", NB_DEVICE_OUT_OF_RANGE, "device index 1 out of range");
    parse_fails("cpu:99999999999999999999", NB_DEVICE_OUT_OF_RANGE, "out of range");
}

static void second_plugin_devices_are_indexed(void **state)
{
    (void)state;
    need_mini();
    assert_int_equal(nb_device_count("mini"), 2);
    parse_ok("mini", "mini:0");
    parse_ok("mini:1", "mini:1");
    parse_fails("mini:2", NB_DEVICE_OUT_OF_RANGE, "device index 2 out of range: 2 mini devices");
    parse_fails("cdua", NB_UNKNOWN_DEVICE, "mini");
    nb_tensor *t = nb_zeros(NB_SHAPE(3), (nb_opts){.device = "mini:1"});
    assert_non_null(t);
    assert_string_equal(nb_tensor_device(t), "mini:1");
    nb_release(t);
}

static void moving_between_devices_keeps_values(void **state)
{
    (void)state;
    need_mini();
    float v[4] = {1.5f, -2, 3, 4.25f}, back[4] = {0};
    nb_tensor *m = nb_from_data(v, NB_SHAPE(2, 2), (nb_opts){.device = "mini:1"});
    nb_tensor *c = nb_to_device(m, "cpu");
    assert_non_null(c);
    assert_string_equal(nb_tensor_device(c), "cpu");
    NB_ASSERT_OK(nb_tensor_copy_to_host(c, back, sizeof back));
    assert_memory_equal(back, v, sizeof v);
    nb_tensor *same = nb_to_device(m, "mini:1");
    assert_ptr_equal(same, m); /* already there: the same tensor, retained */
    nb_release(same);
    /* ops never mix devices */
    nb_tensor *bad = nb_add(c, m);
    assert_null(bad);
    assert_int_equal(nb_last_status(), NB_DEVICE_MISMATCH);
    NB_ASSERT_ERROR_HAS("cpu");
    NB_ASSERT_ERROR_HAS("mini:1");
    nb_release(m);
    nb_release(c);
}

static void default_device_is_cpu_and_can_be_set(void **state)
{
    (void)state;
    need_cpu();
    assert_string_equal(nb_default_device(), "cpu");
    NB_ASSERT_OK(nb_set_default_device("cpu:0"));
    assert_string_equal(nb_default_device(), "cpu");
    /* a bad device leaves the default alone */
    assert_int_equal(nb_set_default_device("cdua"), NB_UNKNOWN_DEVICE);
    assert_int_equal(nb_set_default_device(NULL), NB_NULL_ARGUMENT);
    assert_string_equal(nb_default_device(), "cpu");
}

static void default_device_places_new_tensors(void **state)
{
    (void)state;
    need_mini();
    NB_ASSERT_OK(nb_set_default_device("mini:1"));
    assert_string_equal(nb_default_device(), "mini:1");
    nb_tensor *t = nb_zeros(NB_SHAPE(2), (nb_opts){0});
    assert_non_null(t);
    assert_string_equal(nb_tensor_device(t), "mini:1");
    nb_release(t);
    NB_ASSERT_OK(nb_set_default_device("cpu"));
    t = nb_empty(NB_SHAPE(2), (nb_opts){0});
    assert_string_equal(nb_tensor_device(t), "cpu");
    nb_release(t);
}

static void nabla_device_sets_the_default(void **state)
{
    (void)state;
    need_cpu();
    NB_ASSERT_OK(nb_shutdown()); /* the variable is read when the runtime starts */
    setenv("NABLA_DEVICE", "cpu:0", 1);
    assert_string_equal(nb_default_device(), "cpu:0");
    nb_tensor *t = nb_empty(NB_SHAPE(2), (nb_opts){0});
    assert_non_null(t);
    assert_string_equal(nb_tensor_device(t), "cpu");
    nb_release(t);

    /* a bad NABLA_DEVICE is an error at the first tensor, not a crash */
    NB_ASSERT_OK(nb_shutdown());
    setenv("NABLA_DEVICE", "cdua:0", 1);
    t = nb_empty(NB_SHAPE(2), (nb_opts){0});
    assert_null(t);
    assert_int_equal(nb_last_status(), NB_UNKNOWN_DEVICE);
    NB_ASSERT_ERROR_HAS("cdua");
    /* an explicit device still works */
    t = nb_empty(NB_SHAPE(2), (nb_opts){.device = "cpu"});
    assert_non_null(t);
    nb_release(t);

    /* one too long is refused whole, not cut to 64 characters that might name a device */
    NB_ASSERT_OK(nb_shutdown());
    char longname[80];
    memset(longname, 'a', sizeof longname);
    memcpy(longname, "cpu", 3);
    longname[65] = '\0';
    setenv("NABLA_DEVICE", longname, 1);
    nb_clear_error();
    t = nb_empty(NB_SHAPE(2), (nb_opts){0});
    assert_null(t);
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("more than 64 characters");
    nb_clear_error();

    NB_ASSERT_OK(nb_shutdown());
    unsetenv("NABLA_DEVICE");
    assert_string_equal(nb_default_device(), "cpu");
}

static void null_arguments_are_errors(void **state)
{
    (void)state;
    char buf[16];
    assert_int_equal(nb_device_parse(NULL, buf, sizeof buf), NB_NULL_ARGUMENT);
    assert_int_equal(nb_device_parse("cpu", NULL, 0), NB_NULL_ARGUMENT);
    assert_int_equal(nb_device_count(NULL), -1);
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    assert_false(nb_device_has_kernel("cpu", NULL, NB_DTYPE_F32));
}

static void small_parse_buffer_is_an_error(void **state)
{
    (void)state;
    need_cpu();
    char buf[4];
    assert_int_equal(nb_device_parse("cpu", buf, sizeof buf), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("too small");
}

static void kernel_queries_answer_for_known_and_unknown_names(void **state)
{
    (void)state;
    need_cpu();
    assert_true(nb_device_has_kernel("cpu", "fill", NB_DTYPE_F32));
    assert_true(nb_device_has_kernel(NULL, "copy", NB_DTYPE_F32)); /* default device */
    assert_false(nb_device_has_kernel("cpu", "frobnicate", NB_DTYPE_F32));
    assert_false(nb_device_has_kernel("cpu", "fill", NB_DTYPE_COUNT));
    assert_false(nb_device_has_kernel("cpu", "fill", (nb_dtype)-3));
    assert_false(nb_device_has_kernel("cdua", "fill", NB_DTYPE_F32));
}

static void device_name_comes_from_the_plugin(void **state)
{
    (void)state;
    need_cpu();
    char name[512];
    NB_ASSERT_OK(nb_device_name("cpu", name, sizeof name));
    assert_non_null(strstr(name, "ISA ")); /* cpu_blas: CPU model; ISA ...; BLAS ..., core ... */
    assert_int_equal(nb_device_name("cdua", name, sizeof name), NB_UNKNOWN_DEVICE);
    assert_string_equal(name, "");
    assert_int_equal(nb_device_name("cpu", NULL, 8), NB_NULL_ARGUMENT);
    assert_int_equal(nb_device_name("cpu", name, 0), NB_NULL_ARGUMENT);
}

int main(void)
{
    unsetenv("NABLA_DEVICE");
    const char *dir = getenv("NABLA_BADPLUGIN_DIR");
#ifdef BADPLUGIN_DIR
    if (!dir || !*dir)
        dir = BADPLUGIN_DIR;
#endif
    if (dir && *dir)
        snprintf(mini_path, sizeof mini_path, "%s/badplugin_mini.so", dir);
    const struct CMUnitTest tests[] = {
        NB_TEST(cpu_strings_parse_to_canonical_form),
        NB_TEST(tensors_name_their_device_like_pytorch),
        NB_TEST(malformed_strings_are_rejected_with_the_grammar),
        NB_TEST(leading_zero_in_the_index_is_malformed),
        NB_TEST(type_names_at_the_length_limit_stay_in_bounds),
        NB_TEST(very_long_string_is_rejected_without_echoing_it),
        NB_TEST(unknown_type_lists_the_loaded_types),
        NB_TEST(out_of_range_index_counts_the_devices),
        NB_TEST(second_plugin_devices_are_indexed),
        NB_TEST(moving_between_devices_keeps_values),
        NB_TEST(default_device_is_cpu_and_can_be_set),
        NB_TEST(default_device_places_new_tensors),
        NB_TEST(nabla_device_sets_the_default),
        NB_TEST(null_arguments_are_errors),
        NB_TEST(small_parse_buffer_is_an_error),
        NB_TEST(kernel_queries_answer_for_known_and_unknown_names),
        NB_TEST(device_name_comes_from_the_plugin),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed || nb_shutdown() != NB_OK;
}
