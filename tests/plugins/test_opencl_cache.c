/* test_opencl_cache.c - the opencl plugin's on-disk program cache (opencl_cache.c), tested
 * through the plugin table alone: a first start builds and writes, a second loads, and damaged
 * entries or an unwritable folder cost a rebuild, never an error. Where a program came from is
 * read from the plugin's info log lines ("built from source" / "loaded from the program cache").
 * argv[1]: the plugin. Exits 77 (skipped) without an OpenCL device. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "nabla_plugin.h"

static nb_plugin_entry_fn entry;
static const nb_plugin *P;
static char folder[256]; /* this test's own cache folder */
static int n_built, n_loaded, n_rejected, n_warned;
static char last_error[2048];
static char last_warning[2048];

static nb_status host_error(nb_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

static void host_log(int level, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    n_built += strstr(line, ": built from source") != NULL;
    n_loaded += strstr(line, ": loaded from the program cache") != NULL;
    n_rejected += strstr(line, "rejected") != NULL;
    if (level == NB_LOG_WARN) {
        n_warned++;
        snprintf(last_warning, sizeof last_warning, "%s", line);
    }
    if (getenv("NABLA_LOG"))
        fprintf(stderr, "%s\n", line);
}

static const nb_host host = {NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR, sizeof(nb_host),
                             host_error, host_log};

/* A fresh plugin start with the cache in dir (the folder is read at discovery). */
static void start(const char *dir)
{
    if (P && P->shutdown)
        P->shutdown();
    setenv("NABLA_OPENCL_CACHE_DIR", dir, 1);
    n_built = n_loaded = n_rejected = n_warned = 0;
    P = entry(&host);
    assert_non_null(P);
    assert_true(P->device_count() > 0);
}

/* Runs fill(f32) on device 0, which needs the f32 program, and checks what it wrote. */
static void use_f32_program(void)
{
    nb_kernel_fn fill = NULL;
    for (size_t k = 0; k < P->n_kernels; k++)
        if (strcmp(P->kernels[k].op, "fill") == 0 && P->kernels[k].dtype == NB_DTYPE_F32)
            fill = P->kernels[k].fn;
    assert_non_null(fill);
    void *h = NULL;
    assert_int_equal(P->alloc(0, 4 * sizeof(float), &h), NB_OK);
    int64_t shape[1] = {4}, strides[1] = {1};
    nb_operand out = {h, 0, NB_DTYPE_F32, 1, shape, strides};
    nb_kernel_args a;
    memset(&a, 0, sizeof a);
    a.out = &out;
    a.f[0] = 2.5;
    assert_int_equal(fill(&a), NB_OK);
    float got[4] = {0};
    assert_int_equal(P->read(0, h, 0, got, sizeof got), NB_OK);
    for (int k = 0; k < 4; k++)
        assert_true(got[k] == 2.5f);
    P->free(0, h);
}

/* The one *.clbin in folder into path; fails if there is not exactly one, or a temp file. */
static void only_entry(char *path, size_t len)
{
    DIR *dir = opendir(folder);
    assert_non_null(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        size_t l = strlen(e->d_name);
        if (l <= 6 || strcmp(e->d_name + l - 6, ".clbin") != 0)
            fail_msg("unexpected file %s in the cache folder (a temp file left behind?)",
                     e->d_name);
        snprintf(path, len, "%s/%s", folder, e->d_name);
        n++;
    }
    closedir(dir);
    assert_int_equal(n, 1);
}

static unsigned char *read_file(const char *path, size_t *bytes)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    assert_true(n > 32);
    unsigned char *data = malloc((size_t)n);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *bytes = (size_t)n;
    return data;
}

static void write_file(const char *path, const void *data, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, bytes, f), bytes);
    assert_int_equal(fclose(f), 0);
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* After damage: the next start rebuilds and rewrites a good entry, the one after loads it. The
 * rewritten entry's size is not compared with the first one's: a driver's binary for the same
 * source may differ between builds (PoCL's, whose own cache is cold at the first build and warm
 * at the rebuild, does); that the next start loads it is the proof that it is whole. */
static void expect_rebuilt_then_cached(const char *path)
{
    start(folder);
    use_f32_program();
    assert_int_equal(n_built, 1);
    assert_int_equal(n_loaded, 0);
    assert_int_equal(n_rejected, 1);
    assert_int_equal(n_warned, 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true((size_t)st.st_size > 32); /* more than the header */
    start(folder);
    use_f32_program();
    assert_int_equal(n_built, 0);
    assert_int_equal(n_loaded, 1);
}

static void second_start_loads_what_the_first_built(void **state)
{
    (void)state;
    start(folder);
    use_f32_program();
    assert_int_equal(n_built, 1);
    assert_int_equal(n_loaded, 0);
    assert_int_equal(n_warned, 0);
    char path[512];
    only_entry(path, sizeof path);
    start(folder);
    use_f32_program();
    assert_int_equal(n_built, 0);
    assert_int_equal(n_loaded, 1);
    only_entry(path, sizeof path);
    /* nabla-info's view of the same (nb_plugin.device_info, ABI 1.2) */
    assert_true(P->abi_minor >= 2 && P->device_info);
    const char *info = P->device_info(0);
    assert_non_null(info);
    char want[400];
    snprintf(want, sizeof want, "program cache: %s\n", folder);
    assert_non_null(strstr(info, want));
    assert_non_null(strstr(info, "programs: 0 built from source, 1 loaded from the cache"));
    assert_non_null(strstr(info, "GEMM: "));
    assert_null(P->device_info(P->device_count()));
}

static void truncated_entry_is_rebuilt(void **state)
{
    (void)state;
    char path[512];
    only_entry(path, sizeof path);
    size_t n;
    unsigned char *good = read_file(path, &n);
    write_file(path, good, n / 2);
    expect_rebuilt_then_cached(path);
    write_file(path, good, 20); /* shorter than the header */
    expect_rebuilt_then_cached(path);
    free(good);
}

/* The same file with another device named in its key (the binary and hashes left as they are). */
static void entry_of_another_device_is_rebuilt(void **state)
{
    (void)state;
    char path[512];
    only_entry(path, sizeof path);
    size_t n;
    unsigned char *data = read_file(path, &n);
    unsigned char *dev = memmem(data + 32, n - 32, "device=", 7);
    assert_non_null(dev);
    dev[7] = dev[7] == 'X' ? 'Y' : 'X';
    write_file(path, data, n);
    expect_rebuilt_then_cached(path);
    free(data);
}

static void bad_magic_and_corrupt_binary_are_rebuilt(void **state)
{
    (void)state;
    char path[512];
    only_entry(path, sizeof path);
    size_t n;
    unsigned char *data = read_file(path, &n);
    data[0] ^= 0xff;
    write_file(path, data, n);
    expect_rebuilt_then_cached(path);
    free(data);
    /* a binary the driver cannot take, behind a valid header and hash: the driver's own
     * clCreateProgramWithBinary / clBuildProgram failure is what makes it rebuild */
    data = read_file(path, &n);
    uint32_t key_len;
    memcpy(&key_len, data + 8, 4);
    unsigned char *bin = data + 32 + key_len;
    size_t bin_len = n - 32 - key_len;
    memset(bin, 0x5a, bin_len);
    uint64_t h = fnv1a(bin, bin_len);
    memcpy(data + 24, &h, 8);
    write_file(path, data, n);
    expect_rebuilt_then_cached(path);
    free(data);
}

/* A folder that cannot be made (its parent is a file) or written: a warning, and the kernels
 * still run, built from source. */
static void unwritable_folder_is_a_warning(void **state)
{
    (void)state;
    char file[300], below[320];
    snprintf(file, sizeof file, "%s/plain-file", folder);
    write_file(file, "x", 1);
    snprintf(below, sizeof below, "%s/cache", file);
    start(below);
    use_f32_program();
    assert_int_equal(n_built, 1);
    assert_int_equal(n_warned, 1);
    assert_non_null(strstr(last_warning, "cannot write the program cache"));
    unlink(file);
    if (geteuid() != 0) { /* root writes into a 0555 folder anyway */
        char ro[300];
        snprintf(ro, sizeof ro, "%s/read-only", folder);
        assert_int_equal(mkdir(ro, 0555), 0);
        start(ro);
        use_f32_program();
        assert_int_equal(n_built, 1);
        assert_int_equal(n_warned, 1);
        rmdir(ro);
    }
    start("off");
    use_f32_program();
    assert_int_equal(n_built, 1);
    assert_int_equal(n_warned, 0);
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "nabla_plugin_opencl.so";
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!dl) {
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        return 1;
    }
    entry = (nb_plugin_entry_fn)dlsym(dl, NB_PLUGIN_ENTRY_SYMBOL);
    P = entry ? entry(&host) : NULL;
    if (!P) {
        fprintf(stderr, "%s: no plugin table (%s)\n", path, last_error);
        return 1;
    }
    if (P->device_count() == 0) {
        fprintf(stderr, "skipped: %s\n", P->status_note ? P->status_note() : "no device");
        return 77;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(folder, sizeof folder, "%s/nabla-opencl-cache-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(folder)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(second_start_loads_what_the_first_built),
        cmocka_unit_test(truncated_entry_is_rebuilt),
        cmocka_unit_test(entry_of_another_device_is_rebuilt),
        cmocka_unit_test(bad_magic_and_corrupt_binary_are_rebuilt),
        cmocka_unit_test(unwritable_folder_is_a_warning),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (P->shutdown)
        P->shutdown();
    /* the one entry, then the folder */
    DIR *dir = opendir(folder);
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
        char f[600];
        snprintf(f, sizeof f, "%s/%s", folder, e->d_name);
        if (e->d_name[0] != '.')
            unlink(f);
    }
    if (dir)
        closedir(dir);
    rmdir(folder);
    dlclose(dl);
    return failed ? 1 : 0;
}
