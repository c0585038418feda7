/* nabla_bench.c - nabla-bench: one `name value unit` line per figure (median of repetitions):
 * matmul against cblas called directly, elementwise add against memcpy, per-op dispatch cost,
 * the seed's two-layer net and a LeNet training step/epoch. Never run by ctest. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef NB_BENCH_HAVE_CBLAS
#include <cblas.h>
#endif

#include "lenet.h"
#include "nabla.h"

typedef struct bench_opts {
    const char *device;
    const char *only; /* comma-separated groups or figure names; NULL: all */
    int reps;         /* repetitions of the short measurements */
    int long_reps;    /* repetitions of mlp_seed_500 */
    long dispatch_calls;
} bench_opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void report(const char *name, double value, const char *unit)
{
    printf("%s %.4g %s\n", name, value, unit);
    fflush(stdout);
}

static int fail(const char *what)
{
    fprintf(stderr, "nabla-bench: %s failed: %s\n", what, nb_last_error());
    return 1;
}

/* A group runs when --only names it or one of its figures. */
static bool wanted(const bench_opts *o, const char *group, const char *const *figures)
{
    if (!o->only)
        return true;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", o->only);
    for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, group) == 0)
            return true;
        for (int i = 0; figures[i]; i++)
            if (strcmp(tok, figures[i]) == 0)
                return true;
    }
    return false;
}

/* ---- matmul 1024^3: nb_matmul against cblas_sgemm on the same host data ---- */
static int bench_matmul(const bench_opts *o)
{
    enum { N = 1024 };
    const double flop = 2.0 * N * N * N;
    double t[64];
    nb_tensor *a = nb_randn(NB_SHAPE(N, N), (nb_opts){.device = o->device});
    nb_tensor *b = nb_randn(NB_SHAPE(N, N), (nb_opts){.device = o->device});
    if (!a || !b) {
        nb_release(a);
        nb_release(b);
        return fail("matmul setup");
    }
    for (int r = -1; r < o->reps; r++) { /* r == -1 warms up caches and BLAS threads */
        double t0 = now_s();
        nb_tensor *c = nb_matmul(a, b);
        nb_status st = c ? nb_synchronize(o->device) : nb_last_status();
        double dt = now_s() - t0;
        nb_release(c);
        if (st != NB_OK) {
            nb_release(a);
            nb_release(b);
            return fail("nb_matmul");
        }
        if (r >= 0)
            t[r] = dt;
    }
    double nabla = flop / median(t, o->reps) / 1e9;
    report("matmul_f32_1024", nabla, "GFLOP/s");
#ifdef NB_BENCH_HAVE_CBLAS
    float *ha = malloc(sizeof(float) * N * N), *hb = malloc(sizeof(float) * N * N),
          *hc = malloc(sizeof(float) * N * N);
    int rc = 0;
    if (!ha || !hb || !hc) {
        fprintf(stderr, "nabla-bench: out of memory\n");
        rc = 1;
    } else if (nb_tensor_copy_to_host(a, ha, sizeof(float) * N * N) != NB_OK ||
               nb_tensor_copy_to_host(b, hb, sizeof(float) * N * N) != NB_OK) {
        rc = fail("copy to host");
    } else {
        for (int r = -1; r < o->reps; r++) {
            double t0 = now_s();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, ha, N, hb, N,
                        0.0f, hc, N);
            if (r >= 0)
                t[r] = now_s() - t0;
        }
        double blas = flop / median(t, o->reps) / 1e9;
        report("cblas_sgemm_f32_1024", blas, "GFLOP/s");
        report("matmul_ratio", nabla / blas, "nabla/cblas");
    }
    free(ha);
    free(hb);
    free(hc);
#else
    int rc = 0;
    printf("cblas_sgemm_f32_1024 n/a (built without cblas)\n");
#endif
    nb_release(a);
    nb_release(b);
    return rc;
}

/* ---- add of 16M floats against memcpy. Bytes moved count every byte read or written once:
 * add reads two 64 MB inputs and writes one (3 x 64 MB); memcpy reads and writes 64 MB each
 * (2 x 64 MB). The ratio compares bandwidths, so it is fair whatever the byte count. ---- */
static int bench_add(const bench_opts *o)
{
    enum { N = 16 * 1024 * 1024 };
    const double mb = (double)N * sizeof(float);
    double t[64];
    nb_tensor *a = nb_ones(NB_SHAPE(N), (nb_opts){.device = o->device});
    nb_tensor *b = nb_ones(NB_SHAPE(N), (nb_opts){.device = o->device});
    if (!a || !b) {
        nb_release(a);
        nb_release(b);
        return fail("add setup");
    }
    /* the first result's pages fault in once; the caching allocator reuses them after */
    for (int r = -2; r < o->reps; r++) {
        double t0 = now_s();
        nb_tensor *c = nb_add(a, b);
        nb_status st = c ? nb_synchronize(o->device) : nb_last_status();
        double dt = now_s() - t0;
        nb_release(c);
        if (st != NB_OK) {
            nb_release(a);
            nb_release(b);
            return fail("nb_add");
        }
        if (r >= 0)
            t[r] = dt;
    }
    nb_release(a);
    nb_release(b);
    double add = 3 * mb / median(t, o->reps) / 1e9;
    report("add_f32_16M", add, "GB/s");

    char *src = malloc((size_t)mb), *dst = malloc((size_t)mb);
    if (!src || !dst) {
        free(src);
        free(dst);
        fprintf(stderr, "nabla-bench: out of memory\n");
        return 1;
    }
    memset(src, 1, (size_t)mb);
    memset(dst, 0, (size_t)mb);
    for (int r = -1; r < o->reps; r++) {
        double t0 = now_s();
        memcpy(dst, src, (size_t)mb);
        __asm__ __volatile__("" : : "r"(dst) : "memory"); /* keep the copy */
        if (r >= 0)
            t[r] = now_s() - t0;
    }
    free(src);
    free(dst);
    double cpy = 2 * mb / median(t, o->reps) / 1e9;
    report("memcpy_16M", cpy, "GB/s");
    report("add_ratio", add / cpy, "add/memcpy");
    return 0;
}

/* ---- per-call overhead: a 1-element add and the release of its result ---- */
static int bench_dispatch(const bench_opts *o)
{
    double t[64];
    nb_tensor *a = nb_ones(NB_SHAPE(1), (nb_opts){.device = o->device});
    nb_tensor *b = nb_ones(NB_SHAPE(1), (nb_opts){.device = o->device});
    int rc = a && b ? 0 : fail("dispatch setup");
    int reps = o->reps < 3 ? o->reps : 3;
    for (int r = -1; !rc && r < reps; r++) {
        long calls = r < 0 ? o->dispatch_calls / 10 + 1 : o->dispatch_calls;
        double t0 = now_s();
        for (long k = 0; k < calls; k++) {
            nb_tensor *c = nb_add(a, b);
            if (!c) {
                rc = fail("nb_add");
                break;
            }
            nb_release(c);
        }
        if (!rc && nb_synchronize(o->device) != NB_OK)
            rc = fail("synchronize");
        if (r >= 0)
            t[r] = (now_s() - t0) / (double)calls * 1e9;
    }
    if (!rc)
        report("dispatch_add_1", median(t, reps), "ns");
    nb_release(a);
    nb_release(b);
    return rc;
}

/* ---- seed 6: the two-layer net, 500 steps of forward, backward and update ---- */
static nb_status mlp_run(const char *device)
{
    enum { N = 64, D_IN = 1000, H = 100, D_OUT = 10 };
    const nb_opts d = {.device = device}, rg = {.device = device, .requires_grad = true};
    nb_scope_begin();
    nb_tensor *x = nb_randn(NB_SHAPE(N, D_IN), d), *y = nb_randn(NB_SHAPE(N, D_OUT), d);
    nb_tensor *w1 = nb_randn(NB_SHAPE(D_IN, H), rg), *w2 = nb_randn(NB_SHAPE(H, D_OUT), rg);
    nb_status st = x && y && w1 && w2 ? NB_OK : nb_last_status();
    for (int t = 0; t < 500 && st == NB_OK; t++) {
        nb_scope_begin();
        nb_tensor *pred = nb_mm(nb_clamp(nb_mm(x, w1), 0, NAN), w2);
        nb_tensor *loss = nb_sum(nb_pow_scalar(nb_sub(pred, y), 2), NULL, 0, false);
        st = loss ? nb_backward(loss, NULL, (nb_backward_opts){0}) : nb_last_status();
        if (st == NB_OK) {
            nb_tensor *g1 = nb_tensor_grad(w1), *g2 = nb_tensor_grad(w2);
            nb_no_grad_begin();
            st = nb_add_scaled_(w1, g1, -1e-6);
            if (st == NB_OK)
                st = nb_add_scaled_(w2, g2, -1e-6);
            if (st == NB_OK)
                st = nb_zero_(g1);
            if (st == NB_OK)
                st = nb_zero_(g2);
            nb_no_grad_end();
        }
        nb_scope_end();
    }
    if (st == NB_OK)
        st = nb_synchronize(device);
    nb_scope_end();
    return st;
}

static int bench_mlp(const bench_opts *o)
{
    double t[64];
    for (int r = 0; r < o->long_reps; r++) {
        nb_manual_seed(0);
        double t0 = now_s();
        if (mlp_run(o->device) != NB_OK)
            return fail("two-layer net");
        t[r] = now_s() - t0;
    }
    report("mlp_seed_500", median(t, o->long_reps), "s");
    return 0;
}

/* ---- LeNet: one training step at batch 64 on synthetic data, uploaded from the host each
 * step as nabla-train does; an epoch is 938 such steps (60000 images). ---- */
typedef struct lenet_ctx {
    const char *device;
    nb_module *net;
    nb_optim *opt;
    float *x;
    int64_t *y;
} lenet_ctx;

static nb_status lenet_step(lenet_ctx *c)
{
    enum { B = 64 };
    nb_scope_begin();
    nb_tensor *x = nb_from_data(c->x, NB_SHAPE(B, 1, 32, 32), (nb_opts){.device = c->device});
    nb_tensor *y = nb_from_data(c->y, NB_SHAPE(B),
                                (nb_opts){.dtype = NB_DTYPE_I64, .device = c->device});
    nb_tensor *loss = nb_cross_entropy(nb_module_forward(c->net, x), y, NB_REDUCTION_MEAN);
    nb_status st = loss ? nb_optim_zero_grad(c->opt) : nb_last_status();
    if (st == NB_OK)
        st = nb_backward(loss, NULL, (nb_backward_opts){0});
    if (st == NB_OK)
        st = nb_optim_step(c->opt);
    nb_scope_end();
    return st;
}

static int bench_lenet(const bench_opts *o, bool step, bool epoch)
{
    enum { B = 64, STEPS = 938, TIMED = 20 };
    lenet_ctx c = {.device = o->device};
    nb_manual_seed(0);
    c.net = lenet_new((nb_opts){.device = o->device});
    c.opt = c.net ? nb_sgd_new_for(c.net, (nb_sgd_opts){.lr = 0.01, .momentum = 0.9}) : NULL;
    c.x = malloc(sizeof(float) * B * 32 * 32);
    c.y = malloc(sizeof(int64_t) * B);
    int rc = 0;
    if (!c.net || !c.opt || !c.x || !c.y) {
        rc = fail("LeNet setup");
        goto out;
    }
    /* fixed pseudo-random pixels and labels: the figure is about speed, not learning */
    uint32_t s = 12345;
    for (int i = 0; i < B * 32 * 32; i++) {
        s = s * 1664525u + 1013904223u;
        c.x[i] = (float)(s >> 8) / 16777216.0f;
    }
    for (int i = 0; i < B; i++)
        c.y[i] = i % 10;
    for (int w = 0; w < 3; w++)
        if (lenet_step(&c) != NB_OK) {
            rc = fail("LeNet step");
            goto out;
        }
    if (step) {
        double t[TIMED];
        for (int r = 0; r < TIMED; r++) {
            double t0 = now_s();
            if (lenet_step(&c) != NB_OK || nb_synchronize(o->device) != NB_OK) {
                rc = fail("LeNet step");
                goto out;
            }
            t[r] = now_s() - t0;
        }
        report("lenet_step", median(t, TIMED) * 1e3, "ms");
    }
    if (epoch) {
        double t0 = now_s();
        for (int k = 0; k < STEPS; k++)
            if (lenet_step(&c) != NB_OK) {
                rc = fail("LeNet step");
                goto out;
            }
        if (nb_synchronize(o->device) != NB_OK) {
            rc = fail("synchronize");
            goto out;
        }
        report("lenet_epoch", now_s() - t0, "s");
    }
out:
    free(c.x);
    free(c.y);
    nb_optim_free(c.opt);
    nb_module_free(c.net);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: nabla-bench [--device D] [--only NAME[,NAME...]] [--reps N] "
               "[--long-reps N] [--dispatch-calls N]\n"
               "  groups and figures: matmul (matmul_f32_1024, cblas_sgemm_f32_1024, "
               "matmul_ratio),\n"
               "  add (add_f32_16M, memcpy_16M, add_ratio), dispatch (dispatch_add_1),\n"
               "  mlp (mlp_seed_500), lenet (lenet_step, lenet_epoch)\n");
}

static bool parse_count(const char *opt, const char *s, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > max) {
        fprintf(stderr, "nabla-bench: %s '%s': expected an integer in 1..%ld\n", opt, s, max);
        return false;
    }
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    bench_opts o = {.reps = 5, .long_reps = 3, .dispatch_calls = 1000000};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (!v && (strcmp(a, "--device") == 0 || strcmp(a, "--only") == 0 ||
                          strcmp(a, "--reps") == 0 || strcmp(a, "--long-reps") == 0 ||
                          strcmp(a, "--dispatch-calls") == 0)) {
            fprintf(stderr, "nabla-bench: %s needs a value\n", a);
            return 2;
        } else if (strcmp(a, "--device") == 0) {
            o.device = argv[++i];
        } else if (strcmp(a, "--only") == 0) {
            o.only = argv[++i];
        } else if (strcmp(a, "--reps") == 0) {
            if (!parse_count(a, argv[++i], 64, &n))
                return 2;
            o.reps = (int)n;
        } else if (strcmp(a, "--long-reps") == 0) {
            if (!parse_count(a, argv[++i], 64, &n))
                return 2;
            o.long_reps = (int)n;
        } else if (strcmp(a, "--dispatch-calls") == 0) {
            if (!parse_count(a, argv[++i], 1000000000L, &n))
                return 2;
            o.dispatch_calls = n;
        } else {
            fprintf(stderr, "nabla-bench: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    static const char *const g_matmul[] = {"matmul_f32_1024", "cblas_sgemm_f32_1024",
                                           "matmul_ratio", NULL};
    static const char *const g_add[] = {"add_f32_16M", "memcpy_16M", "add_ratio", NULL};
    static const char *const g_dispatch[] = {"dispatch_add_1", NULL};
    static const char *const g_mlp[] = {"mlp_seed_500", NULL};
    static const char *const g_step[] = {"lenet_step", NULL};
    static const char *const g_epoch[] = {"lenet_epoch", NULL};
    if (o.only) {
        /* a name that matches nothing is a typo, not an empty run */
        char buf[1024];
        snprintf(buf, sizeof buf, "%s", o.only);
        for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            bench_opts one = o;
            one.only = tok;
            if (!wanted(&one, "matmul", g_matmul) && !wanted(&one, "add", g_add) &&
                !wanted(&one, "dispatch", g_dispatch) && !wanted(&one, "mlp", g_mlp) &&
                !wanted(&one, "lenet", g_step) && !wanted(&one, "lenet", g_epoch)) {
                fprintf(stderr, "nabla-bench: --only: unknown name '%s'\n", tok);
                usage(stderr);
                return 2;
            }
        }
    }

    char dev[64];
    const char *want = o.device ? o.device : nb_default_device();
    if (nb_device_parse(want, dev, sizeof dev) != NB_OK) {
        fprintf(stderr, "nabla-bench: device '%s': %s\n", want, nb_last_error());
        nb_shutdown();
        return 1;
    }
    o.device = dev;
    printf("# nabla-bench on %s\n", dev);
    int rc = 0;
    if (wanted(&o, "matmul", g_matmul))
        rc |= bench_matmul(&o);
    if (wanted(&o, "add", g_add))
        rc |= bench_add(&o);
    if (wanted(&o, "dispatch", g_dispatch))
        rc |= bench_dispatch(&o);
    if (wanted(&o, "mlp", g_mlp))
        rc |= bench_mlp(&o);
    bool step = wanted(&o, "lenet", g_step), epoch = wanted(&o, "lenet", g_epoch);
    if (step || epoch)
        rc |= bench_lenet(&o, step, epoch);
    if (nb_shutdown() != NB_OK) {
        fprintf(stderr, "nabla-bench: %s\n", nb_last_error());
        rc = 1;
    }
    return rc;
}
