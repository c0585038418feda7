/* test_plugin.c - tests core/runtime/plugin.c: loading plugins by path, every way a plugin can fail
 * (each one reported through nb_plugin_load and kept with its reason in nb_plugin_get), and
 * the plugins that load (the cpu plugin, one with no device, one built for a later ABI minor).
 * The test plugins come from tests/badplugins; NABLA_BADPLUGIN_DIR overrides their folder. */
#include "nb_test.h"

#include <elf.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char plugin_dir[1024];

/* Path of a test plugin into buf, or skips the test when they were not built. */
static const char *bad_path(char *buf, size_t len, const char *kind)
{
    if (!plugin_dir[0])
        skip();
    snprintf(buf, len, "%s/badplugin_%s.so", plugin_dir, kind);
    if (access(buf, R_OK) != 0)
        fail_msg("test plugin %s was not built", buf);
    return buf;
}

/* The nb_plugin_get entry whose path ends in `suffix`; fails the test when there is none. */
static nb_plugin_info info_for(const char *suffix)
{
    nb_plugin_info info;
    size_t n = nb_plugin_count();
    for (size_t i = 0; i < n; i++) {
        NB_ASSERT_OK(nb_plugin_get(i, &info));
        size_t lp = strlen(info.path), ls = strlen(suffix);
        if (lp >= ls && strcmp(info.path + lp - ls, suffix) == 0)
            return info;
    }
    fail_msg("no plugin entry for %s among %zu", suffix, n);
    return info;
}

/* Loads a test plugin that must fail with `want`, and checks the message and the record. */
static void expect_failure(const char *kind, nb_status want, const char *reason)
{
    char path[1200], file[64];
    bad_path(path, sizeof path, kind);
    snprintf(file, sizeof file, "badplugin_%s.so", kind);
    nb_clear_error();
    nb_status st = nb_plugin_load(path);
    if (st != want)
        fail_msg("%s: got status %d (%s), expected %d (%s); message: %s", kind, st,
                 nb_status_str(st), want, nb_status_str(want), nb_last_error());
    assert_int_equal(nb_last_status(), want);
    NB_ASSERT_ERROR_HAS(file); /* says which file */
    NB_ASSERT_ERROR_HAS(reason);
    nb_plugin_info info = info_for(file);
    assert_false(info.loaded);
    assert_string_equal(info.name, file);
    assert_string_equal(info.version, "");
    assert_int_equal(info.devices, 0);
    assert_int_equal(info.n_kernels, 0);
    if (!strstr(info.note, reason))
        fail_msg("%s: note \"%s\" lacks \"%s\"", kind, info.note, reason);
    /* loading it again gives the same answer without a second dlopen */
    size_t count = nb_plugin_count();
    nb_clear_error();
    assert_int_equal(nb_plugin_load(path), want);
    NB_ASSERT_ERROR_HAS(reason);
    assert_int_equal(nb_plugin_count(), count);
}

static void load_null_path_is_an_error(void **state)
{
    (void)state;
    assert_int_equal(nb_plugin_load(NULL), NB_NULL_ARGUMENT);
    NB_ASSERT_ERROR_HAS("path is NULL");
}

static void load_missing_file_fails_and_is_recorded(void **state)
{
    (void)state;
    const char *path = "/nonexistent/folder/nabla_plugin_ghost.so";
    assert_int_equal(nb_plugin_load(path), NB_PLUGIN_LOAD);
    NB_ASSERT_ERROR_HAS("nabla_plugin_ghost.so");
    NB_ASSERT_ERROR_HAS("cannot load");
    nb_plugin_info info = info_for("nabla_plugin_ghost.so");
    assert_false(info.loaded);
    assert_string_equal(info.name, "nabla_plugin_ghost.so");
    assert_non_null(strstr(info.note, "cannot load"));
}

static void load_text_file_fails_with_the_loader_reason(void **state)
{
    (void)state;
    char path[] = "/tmp/nabla_test_textXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "this is not a shared library\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    nb_status st = nb_plugin_load(path);
    unlink(path);
    assert_int_equal(st, NB_PLUGIN_LOAD);
    NB_ASSERT_ERROR_HAS("cannot load");
    nb_plugin_info info = info_for(strrchr(path, '/'));
    assert_false(info.loaded);
    /* dlerror() names the problem (an ELF header that is not there) */
    assert_true(strlen(info.note) > strlen("cannot load: "));
}

static void load_empty_path_is_an_error(void **state)
{
    (void)state;
    size_t count = nb_plugin_count();
    assert_int_equal(nb_plugin_load(""), NB_INVALID_ARGUMENT); /* dlopen("") is the program */
    NB_ASSERT_ERROR_HAS("path is empty");
    assert_int_equal(nb_plugin_count(), count);
}

/* Copies the first `keep` bytes of a real plugin to a fresh file; the caller unlinks it. */
static void truncated_copy(const char *from, long keep, char *path, size_t len)
{
    snprintf(path, len, "/tmp/nabla_test_cutXXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *in = fopen(from, "rb");
    assert_non_null(in);
    static char buf[1 << 16];
    long done = 0;
    size_t n;
    while (done < keep && (n = fread(buf, 1, sizeof buf, in)) > 0) {
        size_t w = keep - done < (long)n ? (size_t)(keep - done) : n;
        assert_int_equal(write(fd, buf, w), (ssize_t)w);
        done += (long)w;
    }
    fclose(in);
    close(fd);
}

/* dlopen of a plugin cut inside its segments dies of SIGBUS: the loader checks the file first
 * and skips it with the reason, like any plugin that fails. */
static void truncated_plugin_is_skipped_not_a_crash(void **state)
{
    (void)state;
    char src[1200], path[64];
    bad_path(src, sizeof src, "mini");
    /* where the loadable segments end: the file past them (section headers) is not mapped */
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    Elf64_Ehdr eh;
    Elf64_Phdr ph;
    assert_int_equal(fread(&eh, sizeof eh, 1, f), 1);
    long size = 0;
    for (int k = 0; k < eh.e_phnum; k++) {
        assert_int_equal(fseek(f, (long)(eh.e_phoff + (size_t)k * sizeof ph), SEEK_SET), 0);
        assert_int_equal(fread(&ph, sizeof ph, 1, f), 1);
        if (ph.p_type == PT_LOAD && (long)(ph.p_offset + ph.p_filesz) > size)
            size = (long)(ph.p_offset + ph.p_filesz);
    }
    fclose(f);
    const struct {
        long keep;
        const char *reason;
    } cuts[] = {{size / 2, "truncated ELF file: segment"},
                {size - 1, "truncated ELF file: segment"},
                {100, "program headers end past its 100 bytes"},
                {40, "bad ELF header"},
                {0, "bad ELF header"}};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        truncated_copy(src, cuts[k].keep, path, sizeof path);
        nb_clear_error();
        nb_status st = nb_plugin_load(path);
        unlink(path);
        if (st != NB_PLUGIN_LOAD || !strstr(nb_last_error(), cuts[k].reason))
            fail_msg("cut at %ld (segments end at %ld): %s (%s), expected \"%s\"", cuts[k].keep, size,
                     nb_status_str(st), nb_last_error(), cuts[k].reason);
        NB_ASSERT_ERROR_HAS("cannot load");
        nb_plugin_info info = info_for(strrchr(path, '/'));
        assert_false(info.loaded);
    }
    assert_int_equal(nb_device_count("cpu"), 1); /* the others keep working */
}

static void library_without_entry_symbol_is_not_a_plugin(void **state)
{
    (void)state;
    expect_failure("noentry", NB_PLUGIN_LOAD, "no 'nb_plugin_entry' symbol");
}

static void entry_returning_null_keeps_its_reason(void **state)
{
    (void)state;
    expect_failure("refuses", NB_PLUGIN_LOAD, "frobnicator driver 0.3 is too old (need 1.2)");
    expect_failure("refuses_silently", NB_PLUGIN_LOAD, "no reason given");
}

static void newer_abi_major_is_refused(void **state)
{
    (void)state;
    expect_failure("abi2", NB_ABI_MISMATCH, "ABI major 2");
}

static void too_small_table_is_refused(void **state)
{
    (void)state;
    expect_failure("small", NB_ABI_MISMATCH, "plugin table is");
}

static void table_lacking_alloc_is_refused(void **state)
{
    (void)state;
    expect_failure("noalloc", NB_ABI_MISMATCH, "lacks a required member");
}

static void duplicate_device_type_is_refused(void **state)
{
    (void)state;
    char path[1200];
    bad_path(path, sizeof path, "dupcpu");
    if (nb_device_count("cpu") < 1) /* the duplicate would be the only cpu */
        skip();
    expect_failure("dupcpu", NB_PLUGIN_LOAD, "device type 'cpu' is already provided by");
    /* the real cpu keeps working */
    assert_int_equal(nb_device_count("cpu"), 1);
}

static void plugin_with_no_device_loads_and_keeps_its_note(void **state)
{
    (void)state;
    char path[1200];
    NB_ASSERT_OK(nb_plugin_load(bad_path(path, sizeof path, "nodev")));
    assert_int_equal(nb_last_status(), NB_OK); /* a successful load leaves no error behind */
    nb_plugin_info info = info_for("badplugin_nodev.so");
    assert_true(info.loaded);
    assert_string_equal(info.name, "nodev");
    assert_string_equal(info.version, "test-1");
    assert_int_equal(info.devices, 0);
    assert_string_equal(info.note, "no frobnicator hardware found");
    assert_int_equal(nb_device_count("nodev"), 0);
    char buf[64];
    assert_int_equal(nb_device_parse("nodev", buf, sizeof buf), NB_NO_DEVICE);
    NB_ASSERT_ERROR_HAS("device index 0 out of range: 0 nodev devices");
    nb_tensor *t = nb_zeros(NB_SHAPE(2), (nb_opts){.device = "nodev"});
    assert_null(t);
    assert_int_equal(nb_last_status(), NB_NO_DEVICE);
}

static void plugin_built_for_a_later_minor_loads(void **state)
{
    (void)state;
    char path[1200];
    NB_ASSERT_OK(nb_plugin_load(bad_path(path, sizeof path, "newminor")));
    nb_plugin_info info = info_for("badplugin_newminor.so");
    assert_true(info.loaded);
    assert_string_equal(info.name, "newminor");
    assert_int_equal(info.abi_major, 1);
    assert_int_equal(info.abi_minor, 7); /* the core's 1.2 plus 5 */
    assert_int_equal(info.devices, 2);
    assert_string_equal(info.note, "");
    /* 3 entries in its table; the unknown op name is ignored when kernels are bound */
    assert_int_equal(info.n_kernels, 3);
    assert_true(nb_device_has_kernel("newminor:1", "fill", NB_DTYPE_F32));
    assert_false(nb_device_has_kernel("newminor:1", "no_such_op", NB_DTYPE_F32));
    assert_false(nb_device_has_kernel("newminor:1", "fill", NB_DTYPE_F64));
}

/* nb_device_info: a 1.2 table's device_info is read; a 1.1 table (size ends at n_kernels) is
 * never read past its end, even where the bytes after it hold a function. */
static void device_info_comes_only_from_tables_that_have_it(void **state)
{
    (void)state;
    char path[1200], buf[64];
    NB_ASSERT_OK(nb_plugin_load(bad_path(path, sizeof path, "newminor")));
    NB_ASSERT_OK(nb_device_info("newminor:1", buf, sizeof buf));
    assert_string_equal(buf, "kind: mini\nmemory: host");
    NB_ASSERT_OK(nb_device_info("newminor:0", buf, 8)); /* truncated to fit */
    assert_string_equal(buf, "kind: m");
    NB_ASSERT_OK(nb_plugin_load(bad_path(path, sizeof path, "oldminor")));
    nb_plugin_info info = info_for("badplugin_oldminor.so");
    assert_true(info.loaded);
    assert_int_equal(info.abi_minor, 1);
    assert_true(nb_device_has_kernel("oldminor:1", "fill", NB_DTYPE_F32));
    strcpy(buf, "junk");
    NB_ASSERT_OK(nb_device_info("oldminor:1", buf, sizeof buf));
    assert_string_equal(buf, "");
    assert_int_equal(nb_device_info("oldminor:7", buf, sizeof buf), NB_DEVICE_OUT_OF_RANGE);
    assert_int_equal(nb_device_info("oldminor:0", NULL, 4), NB_NULL_ARGUMENT);
}

static void loading_the_same_plugin_twice_is_a_no_op(void **state)
{
    (void)state;
    char path[1200];
    bad_path(path, sizeof path, "mini");
    NB_ASSERT_OK(nb_plugin_load(path));
    size_t n = nb_plugin_count();
    NB_ASSERT_OK(nb_plugin_load(path));
    assert_int_equal(nb_plugin_count(), n);
    assert_int_equal(nb_device_count("mini"), 2);
}

static void a_failed_plugin_never_stops_the_others(void **state)
{
    (void)state;
    /* after every failure above, the discovered plugins are still there and still work */
    if (nb_device_count("cpu") < 1)
        skip();
    nb_plugin_info info = info_for("nabla_plugin_cpu_blas.so");
    assert_true(info.loaded);
    assert_string_equal(info.name, "cpu");
    assert_int_equal(info.devices, 1);
    assert_true(info.n_kernels > 0);
    assert_int_equal(info.abi_major, 1);
    nb_tensor *t = nb_ones(NB_SHAPE(3), (nb_opts){0});
    assert_non_null(t);
    nb_release(t);
}

static void plugin_get_checks_its_arguments(void **state)
{
    (void)state;
    nb_plugin_info info;
    assert_int_equal(nb_plugin_get(0, NULL), NB_NULL_ARGUMENT);
    size_t n = nb_plugin_count();
    assert_int_equal(nb_plugin_get(n, &info), NB_INDEX_OUT_OF_RANGE);
    NB_ASSERT_ERROR_HAS("out of range");
}

static void op_names_are_listed(void **state)
{
    (void)state;
    size_t n = nb_op_count();
    assert_true(n > 50);
    bool has_fill = false, has_matmul = false;
    for (size_t i = 0; i < n; i++) {
        assert_non_null(nb_op_name(i));
        has_fill |= strcmp(nb_op_name(i), "fill") == 0;
        has_matmul |= strcmp(nb_op_name(i), "matmul") == 0;
    }
    assert_true(has_fill && has_matmul);
    assert_null(nb_op_name(n));
}

static void shutdown_unloads_and_a_later_call_reloads(void **state)
{
    (void)state;
    size_t before = nb_plugin_count();
    NB_ASSERT_OK(nb_shutdown());
    /* explicit loads are forgotten; discovery runs again */
    size_t after = nb_plugin_count();
    assert_true(after <= before);
    if (plugin_dir[0]) {
        char path[1200];
        NB_ASSERT_OK(nb_plugin_load(bad_path(path, sizeof path, "mini")));
        assert_int_equal(nb_device_count("mini"), 2);
    }
}

int main(void)
{
    const char *env = getenv("NABLA_BADPLUGIN_DIR");
#ifdef BADPLUGIN_DIR
    if (!env || !*env)
        env = BADPLUGIN_DIR;
#endif
    if (env && *env)
        snprintf(plugin_dir, sizeof plugin_dir, "%s", env);
    else
        fprintf(stderr, "test_plugin: test plugins not built (add badplugins to "
                        "tests/CMakeLists.txt or set NABLA_BADPLUGIN_DIR); skipping those\n");
    const struct CMUnitTest tests[] = {
        NB_TEST(load_null_path_is_an_error),
        NB_TEST(load_missing_file_fails_and_is_recorded),
        NB_TEST(load_text_file_fails_with_the_loader_reason),
        NB_TEST(load_empty_path_is_an_error),
        NB_TEST(truncated_plugin_is_skipped_not_a_crash),
        NB_TEST(library_without_entry_symbol_is_not_a_plugin),
        NB_TEST(entry_returning_null_keeps_its_reason),
        NB_TEST(newer_abi_major_is_refused),
        NB_TEST(too_small_table_is_refused),
        NB_TEST(table_lacking_alloc_is_refused),
        NB_TEST(duplicate_device_type_is_refused),
        NB_TEST(plugin_with_no_device_loads_and_keeps_its_note),
        NB_TEST(plugin_built_for_a_later_minor_loads),
        NB_TEST(device_info_comes_only_from_tables_that_have_it),
        NB_TEST(loading_the_same_plugin_twice_is_a_no_op),
        NB_TEST(a_failed_plugin_never_stops_the_others),
        NB_TEST(plugin_get_checks_its_arguments),
        NB_TEST(op_names_are_listed),
        NB_TEST(shutdown_unloads_and_a_later_call_reloads),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    nb_status st = nb_shutdown();
    if (st != NB_OK)
        fprintf(stderr, "%s\n", nb_last_error());
    return failed || st != NB_OK;
}
