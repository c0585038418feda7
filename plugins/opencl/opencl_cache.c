/* opencl_cache.c - the on-disk program cache: each device's CL_PROGRAM_BINARIES, one file per
 * (device, driver, OpenCL C version, build options, kernel source), so that a second process
 * loads its programs instead of compiling them. A cache that cannot be read or written only
 * costs a build: every failure here is a log line, never an error.
 *
 * Folder: NABLA_OPENCL_CACHE_DIR, else $XDG_CACHE_HOME/nabla, else $HOME/.cache/nabla;
 * NABLA_OPENCL_CACHE_DIR=off switches the cache off. A file is <16 hex digits>.clbin, named by
 * a hash of its key, and holds:
 *   "NBCLBIN1" | u32 key length | u32 0 | u64 binary length | u64 FNV-1a of the binary |
 *   key (text, one "name=value" line each) | binary
 * in the host's byte order. The key is stored whole and compared, so a hash collision or a file
 * copied from another device is a miss; a short or altered file fails the length or hash check.
 * Files are written to a temporary name and renamed, so a reader never sees half a file. */
#define _GNU_SOURCE /* mkostemp */
#include "opencl_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern const char *const nbk_sources[];
extern const size_t nbk_n_sources;

#define MAGIC "NBCLBIN1"
#define HEADER_BYTES 32
#define MAX_KEY 8192
#define MAX_BINARY ((uint64_t)1 << 30)

static char dir[PATH_MAX];   /* "" when off or unresolved */
static char why_off[160];    /* why dir is "" */
static uint64_t source_hash; /* of every embedded kernel source, in order */
static atomic_int warned;    /* one warning per plugin start about an unwritable folder */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_BASIS 0xcbf29ce484222325ull

void ocl_cache_init(void)
{
    source_hash = FNV_BASIS;
    for (size_t i = 0; i < nbk_n_sources; i++)
        source_hash = fnv1a(source_hash, nbk_sources[i], strlen(nbk_sources[i]) + 1);
    atomic_store(&warned, 0);
    dir[0] = why_off[0] = '\0';
    const char *env = getenv("NABLA_OPENCL_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (env && strcmp(env, "off") == 0) {
        snprintf(why_off, sizeof why_off, "off (NABLA_OPENCL_CACHE_DIR=off)");
        return;
    } else if (env && *env) {
        n = snprintf(dir, sizeof dir, "%s", env);
    } else if (xdg && xdg[0] == '/') { /* the XDG spec ignores relative values */
        n = snprintf(dir, sizeof dir, "%s/nabla", xdg);
    } else if (home && home[0] == '/') {
        n = snprintf(dir, sizeof dir, "%s/.cache/nabla", home);
    } else {
        snprintf(why_off, sizeof why_off, "off (neither NABLA_OPENCL_CACHE_DIR, XDG_CACHE_HOME "
                 "nor HOME is set)");
        return;
    }
    if (n < 0 || (size_t)n >= sizeof dir - 32) { /* room for "/<hash>.clbin.XXXXXX" */
        dir[0] = '\0';
        snprintf(why_off, sizeof why_off, "off (the folder name is longer than %zu bytes)",
                 sizeof dir - 32);
    }
}

const char *ocl_cache_dir(void) { return dir[0] ? dir : why_off; }

void ocl_cache_key(const ocl_dev *d, const char *opts, char *key, size_t len)
{
    snprintf(key, len,
             "device=%s\nplatform=%s\ndriver=%s\ndevice_version=%s\nopencl_c=%s\noptions=%s\n"
             "source=%016llx\n",
             d->name, d->platform, d->driver, d->version, d->clc_version, opts,
             (unsigned long long)source_hash);
}

static void file_for(const char *key, char *path, size_t len)
{
    snprintf(path, len, "%s/%016llx.clbin", dir,
             (unsigned long long)fnv1a(FNV_BASIS, key, strlen(key)));
}

/* The whole file (malloc'ed), or NULL with the reason in why; *missing when there is no file
 * (or no folder) at all. */
static unsigned char *slurp(const char *path, size_t *bytes, int *missing, char *why,
                            size_t why_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        *missing = e == ENOENT || e == ENOTDIR;
        snprintf(why, why_len, "%s", e == ENOENT ? "not cached yet" : strerror(e));
        return NULL;
    }
    unsigned char *data = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < HEADER_BYTES ||
        (uint64_t)st.st_size > MAX_BINARY + HEADER_BYTES + MAX_KEY) {
        snprintf(why, why_len, "a file of %lld bytes is no cache entry",
                 (long long)st.st_size);
    } else if (!(data = malloc((size_t)st.st_size))) {
        snprintf(why, why_len, "out of host memory for %lld bytes", (long long)st.st_size);
    } else if (fread(data, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        snprintf(why, why_len, "short read");
        free(data);
        data = NULL;
    } else {
        *bytes = (size_t)st.st_size;
    }
    fclose(f);
    return data;
}

cl_program ocl_cache_load(ocl_dev *d, const char *key, const char *opts, const char *what)
{
    if (!dir[0])
        return NULL;
    char path[PATH_MAX + 32], why[256] = "";
    file_for(key, path, sizeof path);
    size_t bytes = 0;
    int missing = 0;
    unsigned char *data = slurp(path, &bytes, &missing, why, sizeof why);
    cl_program p = NULL;
    if (data) {
        uint32_t key_len;
        uint64_t bin_len, bin_hash;
        memcpy(&key_len, data + 8, 4);
        memcpy(&bin_len, data + 16, 8);
        memcpy(&bin_hash, data + 24, 8);
        if (memcmp(data, MAGIC, 8) != 0)
            snprintf(why, sizeof why, "not a cache entry (bad magic)");
        else if (key_len > MAX_KEY || bin_len > MAX_BINARY || bin_len == 0 ||
                 HEADER_BYTES + key_len + bin_len != bytes)
            snprintf(why, sizeof why, "truncated or padded: %zu bytes, the header promises %llu",
                     bytes, (unsigned long long)(HEADER_BYTES + (uint64_t)key_len + bin_len));
        else if (key_len != strlen(key) || memcmp(data + HEADER_BYTES, key, key_len) != 0)
            snprintf(why, sizeof why, "built for another device, driver, source or options");
        else if (fnv1a(FNV_BASIS, data + HEADER_BYTES + key_len, bin_len) != bin_hash)
            snprintf(why, sizeof why, "its binary is corrupt (hash mismatch)");
        else {
            const unsigned char *bin = data + HEADER_BYTES + key_len;
            size_t len = (size_t)bin_len;
            cl_int status = CL_SUCCESS, err;
            p = clCreateProgramWithBinary(d->ctx, 1, &d->id, &len, &bin, &status, &err);
            if (!p || status != CL_SUCCESS) {
                snprintf(why, sizeof why, "clCreateProgramWithBinary failed: %s (%d)",
                         ocl_err_name(p ? status : err), (int)(p ? status : err));
            } else if ((err = clBuildProgram(p, 1, &d->id, opts, NULL, NULL)) != CL_SUCCESS) {
                snprintf(why, sizeof why, "clBuildProgram on its binary failed: %s (%d)",
                         ocl_err_name(err), (int)err);
            } else {
                free(data);
                ocl_host->log(NB_LOG_INFO, "opencl: %s for %s: loaded from the program cache (%s)",
                              what, d->name, path);
                return p;
            }
            if (p)
                clReleaseProgram(p);
            p = NULL;
        }
        free(data);
        ocl_host->log(NB_LOG_INFO, "opencl: %s for %s: cache entry %s rejected: %s; building "
                      "from source", what, d->name, path, why);
    } else if (missing) {
        ocl_host->log(NB_LOG_DEBUG, "opencl: %s for %s: %s: %s", what, d->name, path, why);
    } else {
        ocl_host->log(NB_LOG_INFO, "opencl: %s for %s: cache entry %s rejected: %s; building "
                      "from source", what, d->name, path, why);
    }
    return NULL;
}

/* mkdir -p; 0 or an errno */
static int make_dirs(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *s = tmp + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
                return errno;
            *s = c;
            if (!c)
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : ENOSPC;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static void save_failed(const ocl_dev *d, const char *what, const char *path, const char *step,
                        int e)
{
    /* the first time a warning (the user may want to fix the folder), then quietly */
    ocl_host->log(atomic_exchange(&warned, 1) ? NB_LOG_DEBUG : NB_LOG_WARN, "opencl: %s for %s: "
                  "cannot write the program cache (%s: %s: %s); the next start will build them "
                  "again", what, d->name, step, path, strerror(e));
}

int ocl_cache_save(ocl_dev *d, cl_program p, const char *key, const char *what)
{
    if (!dir[0])
        return 0;
    size_t len = 0;
    if (clGetProgramInfo(p, CL_PROGRAM_BINARY_SIZES, sizeof len, &len, NULL) != CL_SUCCESS ||
        len == 0 || len > MAX_BINARY) {
        ocl_host->log(NB_LOG_DEBUG, "opencl: %s for %s: the driver offers no binary to cache",
                      what, d->name);
        return 0;
    }
    size_t key_len = strlen(key);
    unsigned char *bin = malloc(len);
    if (!bin)
        return 0;
    if (clGetProgramInfo(p, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) != CL_SUCCESS) {
        free(bin);
        return 0;
    }
    char path[PATH_MAX + 32], tmp[PATH_MAX + 40];
    file_for(key, path, sizeof path);
    int e = make_dirs(dir);
    if (e) {
        save_failed(d, what, dir, "mkdir", e);
        free(bin);
        return 0;
    }
    snprintf(tmp, sizeof tmp, "%s.XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        save_failed(d, what, dir, "create", errno);
        free(bin);
        return 0;
    }
    unsigned char head[HEADER_BYTES] = MAGIC;
    uint32_t kl = (uint32_t)key_len, zero = 0;
    uint64_t bl = len, bh = fnv1a(FNV_BASIS, bin, len);
    memcpy(head + 8, &kl, 4);
    memcpy(head + 12, &zero, 4);
    memcpy(head + 16, &bl, 8);
    memcpy(head + 24, &bh, 8);
    e = write_all(fd, head, sizeof head);
    if (!e)
        e = write_all(fd, key, key_len);
    if (!e)
        e = write_all(fd, bin, len);
    free(bin);
    if (close(fd) != 0 && !e)
        e = errno; /* a full disk may only show here */
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (e) {
        unlink(tmp);
        save_failed(d, what, path, "write", e);
        return 0;
    }
    return 1;
}
