/* large.c - the conformance suite's "large" tier: one op of each family on a tensor of more
 * than 2^31 elements, where a 32-bit index (an int work-item id, an int loop counter, a 32-bit
 * grid product) goes wrong. The tensor is uint8, so each operand is 2 GiB; every value checked
 * sits at the start, just past 2^31, or at the end. Runs only when the host has the memory for
 * it (the cpu, and devices such as PoCL that allocate from it), and says why when it skips. */
#include "large.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define LARGE_N (((int64_t)1 << 31) + 37) /* elements: past INT32_MAX and not a round size */
#define LARGE_AT (((int64_t)1 << 31) + 11) /* the one element that differs: odd, past 2^31 */
#define LARGE_NEED_BYTES ((int64_t)6 << 30) /* two full operands, a half one, and room */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The first number in a file (scanf format fmt), or -1. */
static long long read_number(const char *path, const char *fmt)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    long long v = -1;
    while (v < 0 && fgets(line, sizeof line, f))
        if (sscanf(line, fmt, &v) != 1)
            v = -1;
    fclose(f);
    return v;
}

/* The memory this process may still use, in bytes: MemAvailable, capped by the cgroup's
 * memory.max - memory.current inside a container (cgroup v2); -1 where neither says. */
static int64_t host_available(void)
{
    long long kb = read_number("/proc/meminfo", "MemAvailable: %lld kB");
    int64_t avail = kb < 0 ? -1 : (int64_t)kb * 1024;
    long long max = read_number("/sys/fs/cgroup/memory.max", "%lld"); /* "max": no limit */
    long long cur = read_number("/sys/fs/cgroup/memory.current", "%lld");
    if (max >= 0 && cur >= 0 && (avail < 0 || max - cur < avail))
        avail = max > cur ? (int64_t)(max - cur) : 0;
    return avail;
}

/* Element i of a 1-d tensor as a double, through a one-element view (no full download). */
static bool value_at(const nb_tensor *t, int64_t i, double *v)
{
    nb_tensor *e = nb_narrow(t, 0, i, 1);
    bool ok = e && nb_item(e, v) == NB_OK;
    nb_release(e);
    return ok;
}

typedef struct large_run {
    const char *device;
    conf_large_counts *counts;
    bool ok;        /* this check so far */
    char why[512];  /* the first thing that went wrong */
} large_run;

static void expect(large_run *r, const char *what, const nb_tensor *t, int64_t i, double want)
{
    double got = 0;
    if (!r->ok)
        return;
    if (!t) {
        r->ok = false;
        snprintf(r->why, sizeof r->why, "%s failed: %s", what, nb_last_error());
    } else if (!value_at(t, i, &got)) {
        r->ok = false;
        snprintf(r->why, sizeof r->why, "%s: reading element %lld failed: %s", what,
                 (long long)i, nb_last_error());
    } else if (got != want) {
        r->ok = false;
        snprintf(r->why, sizeof r->why, "%s: element %lld is %.17g, expected %.17g", what,
                 (long long)i, got, want);
    }
}

static void report(large_run *r, const char *family, const char *op, double t0)
{
    if (r->ok) {
        r->counts->pass++;
        printf("large: %-11s %-13s on %s: pass (%.2f s)\n", family, op, r->device, now_s() - t0);
    } else {
        r->counts->fail++;
        printf("FAIL large: %s %s on %s: %s\n", family, op, r->device, r->why);
    }
    r->ok = true;
    r->why[0] = '\0';
    nb_clear_error();
}

void conf_check_large(const char *device, conf_large_counts *counts)
{
    memset(counts, 0, sizeof *counts);
    int64_t avail = host_available();
    if (avail >= 0 && avail < LARGE_NEED_BYTES) {
        counts->skip++;
        printf("large: skipped on %s: the tier needs %lld GiB of free host memory, %.1f GiB is "
               "available\n", device, (long long)(LARGE_NEED_BYTES >> 30),
               (double)avail / (1 << 30));
        return;
    }
    const nb_opts u8 = {.dtype = NB_DTYPE_U8, .device = device};
    double t0 = now_s();
    nb_tensor *x = nb_full(NB_SHAPE(LARGE_N), 1, u8);
    if (!x) {
        nb_status st = nb_last_status();
        counts->skip += st == NB_OUT_OF_MEMORY;
        counts->fail += st != NB_OUT_OF_MEMORY;
        printf("%slarge: %s on %s: a uint8 tensor of %lld elements: %s\n",
               st == NB_OUT_OF_MEMORY ? "" : "FAIL ", st == NB_OUT_OF_MEMORY ? "skipped" : "failed",
               device, (long long)LARGE_N, nb_last_error());
        nb_clear_error();
        return;
    }
    large_run r = {.device = device, .counts = counts, .ok = true};

    /* creation: fill, then one element past 2^31 set through a view */
    nb_tensor *at = nb_narrow(x, 0, LARGE_AT, 1);
    if (!at || nb_fill_(at, 9) != NB_OK) {
        r.ok = false;
        snprintf(r.why, sizeof r.why, "fill_ of a view at %lld: %s", (long long)LARGE_AT,
                 nb_last_error());
    }
    nb_release(at);
    expect(&r, "full", x, 0, 1);
    expect(&r, "full", x, LARGE_AT, 9);
    expect(&r, "full", x, LARGE_N - 1, 1);
    report(&r, "creation", "full, fill_", t0);

    t0 = now_s();
    nb_tensor *y = nb_eq_scalar(x, 9); /* bool out; uint8 arithmetic is not every plugin's */
    expect(&r, "eq_scalar", y, 0, 0);
    expect(&r, "eq_scalar", y, LARGE_AT, 1);
    expect(&r, "eq_scalar", y, LARGE_N - 1, 0);
    nb_release(y);
    report(&r, "elementwise", "eq_scalar", t0);

    t0 = now_s();
    nb_tensor *mx = nb_amax(x, NULL, 0, false); /* a uint8 result: sum's int64 would widen */
    double top = 0;
    if (!mx || nb_item(mx, &top) != NB_OK || top != 9) {
        r.ok = false;
        snprintf(r.why, sizeof r.why, "amax is %.17g, expected 9%s%s", top, mx ? "" : ": ",
                 mx ? "" : nb_last_error());
    }
    nb_release(mx);
    report(&r, "reduction", "amax", t0);

    t0 = now_s();
    nb_tensor *am = nb_argmax(x, NB_ALL_DIMS, false);
    double where = -1;
    if (!am || nb_item(am, &where) != NB_OK || where != (double)LARGE_AT) {
        r.ok = false;
        snprintf(r.why, sizeof r.why, "argmax is %.17g, expected %lld%s%s", where,
                 (long long)LARGE_AT, am ? "" : ": ", am ? "" : nb_last_error());
    }
    nb_release(am);
    report(&r, "reduction", "argmax", t0);

    t0 = now_s();
    nb_tensor *odd = nb_slice(x, 0, 1, LARGE_N, 2); /* a strided view reaching past 2^31 */
    nb_tensor *z = odd ? nb_contiguous(odd) : NULL;
    expect(&r, "contiguous(x[1::2])", z, (LARGE_AT - 1) / 2, 9);
    expect(&r, "contiguous(x[1::2])", z, (LARGE_AT - 1) / 2 - 1, 1);
    expect(&r, "contiguous(x[1::2])", z, (LARGE_N - 1) / 2 - 1, 1);
    nb_release(z);
    nb_release(odd);
    report(&r, "copy", "contiguous", t0);

    t0 = now_s();
    const int64_t picks[3] = {0, LARGE_AT, LARGE_N - 1};
    nb_tensor *idx_host = nb_from_data(picks, NB_SHAPE(3), (nb_opts){.dtype = NB_DTYPE_I64});
    nb_tensor *idx = idx_host ? nb_to_device(idx_host, device) : NULL;
    nb_tensor *g = idx ? nb_index_select(x, 0, idx) : NULL;
    expect(&r, "index_select", g, 0, 1);
    expect(&r, "index_select", g, 1, 9);
    expect(&r, "index_select", g, 2, 1);
    nb_release(g);
    nb_release(idx);
    nb_release(idx_host);
    report(&r, "index", "index_select", t0);

    nb_release(x);
    /* matmul is left out: its smallest operand past 2^31 elements is 8 GiB of float32 */
}
