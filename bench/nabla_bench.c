/* nabla_bench.c - nabla-bench: one `name value unit` line per figure (median of repetitions):
 * matmul against cblas called directly (in this process, and with each OpenBLAS core in a child),
 * and on opencl devices against CLBlast called directly on the same device,
 * matmul in float16/bfloat16 against float32, on cuda float16 4096^3 against cublasGemmEx,
 * elementwise add against memcpy, per-op dispatch cost,
 * the seed's two-layer net and a LeNet training step/epoch. Never run by ctest. */
#include <dlfcn.h> /* cuda: cuBLAS called directly, loaded at run time */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef NB_BENCH_BLAS_SONAME
#include <cblas.h>
#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
#endif

#ifdef NB_BENCH_CLBLAST
#include <CL/cl.h>
#include <clblast_c.h>
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
#ifdef NB_BENCH_BLAS_SONAME
/* cblas_sgemm 1024^3 on a and b (NULL: made up here), median GFLOP/s; 0 when it cannot run.
 * In this process the library is the one the cpu plugin loaded, with the plugin's core. */
static double sgemm_gflops(const float *a, const float *b, int reps)
{
    enum { N = 1024 };
    void *h = dlopen(NB_BENCH_BLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    __typeof__(cblas_sgemm) *sgemm = h ? (__typeof__(cblas_sgemm) *)dlsym(h, "cblas_sgemm") : NULL;
    float *own = NULL, *c = malloc(sizeof(float) * N * N);
    if (!a) {
        own = malloc(sizeof(float) * N * N);
        for (int k = 0; own && k < N * N; k++)
            own[k] = (float)(k % 13) / 13.0f - 0.5f;
        a = b = own;
    }
    double t[64], g = 0;
    if (sgemm && a && c) {
        for (int r = -1; r < reps; r++) {
            double t0 = now_s();
            sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, c,
                  N);
            if (r >= 0)
                t[r] = now_s() - t0;
        }
        g = 2.0 * N * N * N / median(t, reps) / 1e9;
    } else {
        fprintf(stderr, "nabla-bench: cblas_sgemm from %s: %s\n", NB_BENCH_BLAS_SONAME,
                h ? "no symbol or no memory" : dlerror());
    }
    free(own);
    free(c);
    if (h)
        dlclose(h);
    return g;
}

/* The same figure in a child process with OPENBLAS_CORETYPE=core ("" leaves it unset). */
static double sgemm_gflops_in_child(const char *core, int reps)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    char reps_s[16], env_core[64];
    snprintf(reps_s, sizeof reps_s, "%d", reps);
    snprintf(env_core, sizeof env_core, "OPENBLAS_CORETYPE=%s", core);
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    if (!env) {
        close(fds[0]);
        close(fds[1]);
        return 0;
    }
    size_t m = 0;
    for (size_t k = 0; k < n; k++)
        if (strncmp(environ[k], "OPENBLAS_CORETYPE=", 18) != 0)
            env[m++] = environ[k];
    if (*core)
        env[m++] = env_core;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    char *argv[] = {"nabla-bench", "--sgemm-child", reps_s, NULL};
    pid_t pid;
    int err = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(fds[1]);
    double g = 0;
    if (err == 0) {
        FILE *f = fdopen(fds[0], "r");
        if (f) {
            if (fscanf(f, "%lf", &g) != 1)
                g = 0;
            fclose(f);
        } else {
            close(fds[0]);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            g = 0;
    } else {
        close(fds[0]);
    }
    return g;
}
#endif

static double matmul_f32_1024; /* the figure bench_matmul measured, for bench_clblast's ratio */

/* One nb_matmul of a and b, synchronised: seconds, or -1 on failure. */
static double one_matmul_seconds(const bench_opts *o, const nb_tensor *a, const nb_tensor *b)
{
    double t0 = now_s();
    nb_tensor *c = nb_matmul(a, b);
    nb_status st = c ? nb_synchronize(o->device) : nb_last_status();
    double dt = now_s() - t0;
    nb_release(c);
    return st == NB_OK ? dt : -1;
}

static int bench_matmul(const bench_opts *o)
{
    enum { N = 1024 };
    const double flop = 2.0 * N * N * N;
    double t[64];
    nb_tensor *a = nb_randn(NB_SHAPE(N, N), (nb_opts){.device = o->device});
    nb_tensor *b = nb_randn(NB_SHAPE(N, N), (nb_opts){.device = o->device});
    int rc = a && b ? 0 : fail("matmul setup");
    for (int r = -1; !rc && r < o->reps; r++) { /* r == -1 warms up caches and BLAS threads */
        double dt = one_matmul_seconds(o, a, b);
        if (dt < 0)
            rc = fail("nb_matmul");
        else if (r >= 0)
            t[r] = dt;
    }
    double nabla = rc ? 0 : flop / median(t, o->reps) / 1e9;
    if (!rc) {
        report("matmul_f32_1024", nabla, "GFLOP/s");
        matmul_f32_1024 = nabla;
        /* which sgemm that was: the cpu plugin's own GEMM or the library's (NABLA_CPU_GEMM) */
        char info[1024];
        const char *line = nb_device_info(o->device ? o->device : "cpu", info, sizeof info) == NB_OK
                               ? strstr(info, "sgemm: ") : NULL;
        if (line)
            printf("# matmul_f32_1024 %.*s\n", (int)strcspn(line, "\n"), line);
    }
#ifdef NB_BENCH_BLAS_SONAME
    /* The cblas figures compare with the cpu plugin only. */
    bool cpu = !o->device || strncmp(o->device, "cpu", 3) == 0;
    float *ha = NULL, *hb = NULL;
    if (!rc && cpu) {
        ha = malloc(sizeof(float) * N * N);
        hb = malloc(sizeof(float) * N * N);
        if (!ha || !hb)
            rc = fail("out of memory");
        else if (nb_tensor_copy_to_host(a, ha, sizeof(float) * N * N) != NB_OK ||
                 nb_tensor_copy_to_host(b, hb, sizeof(float) * N * N) != NB_OK)
            rc = fail("copy to host");
    }
    /* The ceiling: the same call with each core that might suit this CPU, each in a child
     * process (OpenBLAS reads OPENBLAS_CORETYPE when it is loaded); cores this CPU cannot run
     * fail in their child. A first pass picks the best core; then each round times nabla,
     * cblas in this process and the best core's child one after the other, and the ratios are
     * the medians of the rounds' own ratios, so a machine whose speed drifts (shared cores)
     * moves both sides of each ratio alike. */
    static const char *const cores[] = {"", "SkylakeX", "Haswell", "Zen", "Sandybridge"};
    double best = 0;
    const char *best_core = NULL;
    for (size_t k = 0; !rc && cpu && k < sizeof cores / sizeof *cores; k++) {
        double g = sgemm_gflops_in_child(cores[k], 1);
        if (g > best)
            best = g, best_core = cores[k];
    }
    if (!rc && cpu && best > 0) {
        double same[64], ceil[64], r_same[64], r_best[64];
        int n = 0;
        for (int r = 0; r < o->reps; r++) {
            double dt = one_matmul_seconds(o, a, b);
            double gs = sgemm_gflops(ha, hb, 1), gb = sgemm_gflops_in_child(best_core, 1);
            if (dt <= 0 || gs <= 0 || gb <= 0)
                continue;
            same[n] = gs, ceil[n] = gb;
            r_same[n] = flop / dt / 1e9 / gs;
            r_best[n] = flop / dt / 1e9 / gb;
            n++;
        }
        if (n > 0) {
            report("cblas_sgemm_f32_1024", median(same, n), "GFLOP/s");
            printf("cblas_sgemm_best_f32_1024 %.4g GFLOP/s (core %s)\n", median(ceil, n),
                   *best_core ? best_core : "OpenBLAS's own pick");
            report("matmul_ratio", median(r_best, n), "nabla/best-core-cblas");
            /* with the plugin's own GEMM in use this is own / OpenBLAS, interleaved */
            report("matmul_ratio_same_core", median(r_same, n), "nabla/cblas");
        }
    }
    free(ha);
    free(hb);
#else
    printf("cblas_sgemm_f32_1024 n/a (built without cblas)\n");
#endif
    nb_release(a);
    nb_release(b);
    return rc;
}

/* ---- opencl: CLBlastSgemm 1024^3 called directly, on the device the opencl plugin calls
 * opencl:N (found by its CL_DEVICE_NAME), in its own context and queue ---- */
#ifdef NB_BENCH_CLBLAST
static cl_device_id clblast_find_device(const char *name)
{
    cl_platform_id plats[16];
    cl_uint np = 0;
    if (clGetPlatformIDs(16, plats, &np) != CL_SUCCESS)
        return NULL;
    for (cl_uint p = 0; p < np && p < 16; p++) {
        cl_device_id ids[64];
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 64, ids, &nd) != CL_SUCCESS)
            continue;
        for (cl_uint k = 0; k < nd && k < 64; k++) {
            char n[256] = "";
            clGetDeviceInfo(ids[k], CL_DEVICE_NAME, sizeof n - 1, n, NULL);
            if (strcmp(n, name) == 0)
                return ids[k];
        }
    }
    return NULL;
}

/* Median GFLOP/s of reps calls after one warm-up; 0 with the reason on stderr. */
static double clblast_sgemm_gflops(cl_device_id dev, int reps)
{
    enum { N = 1024 };
    const size_t bytes = sizeof(float) * N * N;
    cl_int err = CL_SUCCESS;
    double g = 0, t[64];
    cl_context ctx = clCreateContext(NULL, 1, &dev, NULL, NULL, &err);
    cl_command_queue q = ctx ? clCreateCommandQueue(ctx, dev, 0, &err) : NULL;
    cl_mem m[3] = {NULL, NULL, NULL};
    float *host = malloc(bytes);
    for (int k = 0; q && k < 3; k++)
        m[k] = clCreateBuffer(ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (!q || !m[0] || !m[1] || !m[2] || !host) {
        fprintf(stderr, "nabla-bench: clblast_sgemm_1024: OpenCL setup failed (%d)\n", (int)err);
        goto done;
    }
    for (int k = 0; k < N * N; k++)
        host[k] = (float)(k % 13) / 13.0f - 0.5f;
    clEnqueueWriteBuffer(q, m[0], CL_TRUE, 0, bytes, host, 0, NULL, NULL);
    clEnqueueWriteBuffer(q, m[1], CL_TRUE, 0, bytes, host, 0, NULL, NULL);
    for (int r = -1; r < reps; r++) {
        double t0 = now_s();
        CLBlastStatusCode st = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo,
                                            CLBlastTransposeNo, N, N, N, 1.0f, m[0], 0, N, m[1],
                                            0, N, 0.0f, m[2], 0, N, &q, NULL);
        if (st != CLBlastSuccess || clFinish(q) != CL_SUCCESS) {
            fprintf(stderr, "nabla-bench: CLBlastSgemm failed: status %d\n", (int)st);
            goto done;
        }
        if (r >= 0)
            t[r] = now_s() - t0;
    }
    g = 2.0 * N * N * N / median(t, reps) / 1e9;
done:
    free(host);
    for (int k = 0; k < 3; k++)
        if (m[k])
            clReleaseMemObject(m[k]);
    if (q)
        clReleaseCommandQueue(q);
    if (ctx)
        clReleaseContext(ctx);
    return g;
}
#endif

static int bench_clblast(const bench_opts *o)
{
    if (strncmp(o->device, "opencl:", 7) != 0)
        return 0;
#ifdef NB_BENCH_CLBLAST
    char name[512];
    if (nb_device_name(o->device, name, sizeof name) != NB_OK)
        return fail("nb_device_name");
    cl_device_id dev = clblast_find_device(name);
    if (!dev) {
        printf("clblast_sgemm_1024 n/a (no OpenCL device named '%s' outside the plugin)\n",
               name);
        return 0;
    }
    double g = clblast_sgemm_gflops(dev, o->reps);
    if (g <= 0)
        return 1;
    report("clblast_sgemm_1024", g, "GFLOP/s");
    if (matmul_f32_1024 > 0)
        report("matmul_ratio_clblast", matmul_f32_1024 / g, "nabla/clblast");
#else
    printf("clblast_sgemm_1024 n/a (nabla-bench built without CLBlast: libclblast-dev)\n");
#endif
    return 0;
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

/* ---- matmul 1024^3 in 16-bit: nb_matmul in float16 and bfloat16 against float32 in the same
 * run (issue 12's target: bfloat16 at least 0.8x the float32 time, conversions included). The
 * cpu's bfloat16 path is cblas_sbgemm where OpenBLAS exports it, else widen + sgemm. ---- */
static double matmul_seconds(const bench_opts *o, nb_dtype dt, bool *ok)
{
    enum { N = 1024 };
    double t[64];
    nb_tensor *a = nb_randn(NB_SHAPE(N, N), (nb_opts){.dtype = dt, .device = o->device});
    nb_tensor *b = nb_randn(NB_SHAPE(N, N), (nb_opts){.dtype = dt, .device = o->device});
    *ok = a && b;
    for (int r = -1; *ok && r < o->reps; r++) { /* r == -1 warms up */
        double t0 = now_s();
        nb_tensor *c = nb_matmul(a, b);
        *ok = c && nb_synchronize(o->device) == NB_OK;
        double dt_s = now_s() - t0;
        nb_release(c);
        if (r >= 0)
            t[r] = dt_s;
    }
    nb_release(a);
    nb_release(b);
    return *ok ? median(t, o->reps) : 0;
}

static int bench_matmul_16bit(const bench_opts *o)
{
    const double flop = 2.0 * 1024 * 1024 * 1024;
    bool ok;
    double f32 = matmul_seconds(o, NB_DTYPE_F32, &ok);
    if (!ok)
        return fail("matmul float32");
    report("matmul_f32_1024_ms", f32 * 1e3, "ms");
    const struct {
        nb_dtype dt;
        const char *name, *ratio;
    } cases[] = {{NB_DTYPE_BF16, "matmul_bf16_1024", "matmul_bf16_ratio"},
                 {NB_DTYPE_F16, "matmul_f16_1024", "matmul_f16_ratio"}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        if (!nb_device_has_kernel(o->device, "matmul", cases[k].dt)) {
            printf("%s n/a (no %s matmul kernel on %s)\n", cases[k].name,
                   nb_dtype_name(cases[k].dt), o->device);
            continue;
        }
        double s = matmul_seconds(o, cases[k].dt, &ok);
        if (!ok)
            return fail(cases[k].name);
        report(cases[k].name, flop / s / 1e9, "GFLOP/s");
        report(cases[k].ratio, f32 / s, "f32-time/16bit-time");
    }
    return 0;
}

/* ---- cuda: matmul float16 4096^3 against cublasGemmEx called directly on the same sizes, in
 * the same run (issue 12's GPU target: nabla at least 0.8x). The CUDA runtime and cuBLAS are
 * dlopened here, so nabla-bench builds and runs without CUDA; on other devices the row is not
 * run, and without the libraries it says n/a. Both sides time the same way: a warm-up, then
 * each product followed by a device-wide synchronisation, median of --reps. ---- */
typedef struct cublas_direct {
    int (*set_device)(int);
    int (*malloc_)(void **, size_t);
    int (*free_)(void *);
    int (*memcpy_)(void *, const void *, size_t, int); /* kind 1: host to device */
    int (*sync)(void);
    int (*create)(void **);
    int (*destroy)(void *);
    /* cublasGemmEx: the enums are passed as int (C enums of int size) */
    int (*gemm_ex)(void *h, int ta, int tb, int m, int n, int k, const void *alpha,
                   const void *a, int at, int lda, const void *b, int bt, int ldb,
                   const void *beta, void *c, int ct, int ldc, int compute, int algo);
} cublas_direct;

enum { CUDA_R_16F_ = 2, CUBLAS_COMPUTE_32F_ = 68, CUBLAS_GEMM_DEFAULT_ = -1 };

static void *dlopen_first(const char *const *names)
{
    for (int k = 0; names[k]; k++) {
        void *h = dlopen(names[k], RTLD_NOW | RTLD_LOCAL);
        if (h)
            return h;
    }
    return NULL;
}

/* Seconds per cublasGemmEx of two n x n float16 matrices (float32 compute), median of reps;
 * -1 with *why set when the libraries or the device are not there. */
static double cublas_gemmex_f16_seconds(int ordinal, int n, int reps, const char **why)
{
    static const char *const rt_names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so",
                                           "/usr/local/cuda/lib64/libcudart.so", NULL};
    static const char *const blas_names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so",
                                             "/usr/local/cuda/lib64/libcublas.so", NULL};
    void *rt = dlopen_first(rt_names), *bl = rt ? dlopen_first(blas_names) : NULL;
    if (!rt || !bl) {
        *why = rt ? "cuBLAS not loadable" : "CUDA runtime not loadable";
        return -1;
    }
    cublas_direct c;
    struct { void **slot; void *lib; const char *name; } syms[] = {
        {(void **)&c.set_device, rt, "cudaSetDevice"}, {(void **)&c.malloc_, rt, "cudaMalloc"},
        {(void **)&c.free_, rt, "cudaFree"}, {(void **)&c.memcpy_, rt, "cudaMemcpy"},
        {(void **)&c.sync, rt, "cudaDeviceSynchronize"},
        {(void **)&c.create, bl, "cublasCreate_v2"}, {(void **)&c.destroy, bl, "cublasDestroy_v2"},
        {(void **)&c.gemm_ex, bl, "cublasGemmEx"}};
    double secs = -1;
    void *h = NULL, *a = NULL, *b = NULL, *out = NULL;
    size_t bytes = (size_t)n * (size_t)n * 2;
    /* random operands, as nabla's side gets (a tensor-core GEMM on constant data draws less
     * power and may clock higher): float16 with a random sign and mantissa in [0.5, 1) */
    uint16_t *host = malloc(bytes);
    if (!host) {
        *why = "out of host memory";
        return -1;
    }
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t k = 0; k < (size_t)n * (size_t)n; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        host[k] = (uint16_t)(((x >> 20) & 0x8000) | (14u << 10) | (x & 0x3ff));
    }
    for (size_t k = 0; k < sizeof syms / sizeof *syms; k++)
        if (!(*syms[k].slot = dlsym(syms[k].lib, syms[k].name))) {
            *why = "a CUDA symbol is missing";
            goto done;
        }
    if (c.set_device(ordinal) || c.malloc_(&a, bytes) || c.malloc_(&b, bytes) ||
        c.malloc_(&out, bytes) || c.memcpy_(a, host, bytes, 1) || c.memcpy_(b, host, bytes, 1) ||
        c.create(&h)) {
        *why = "CUDA setup failed";
        goto done;
    }
    const float alpha = 1, beta = 0;
    double t[64];
    for (int r = -1; r < reps; r++) { /* r == -1 warms up (cuBLAS picks its kernel) */
        double t0 = now_s();
        if (c.gemm_ex(h, 0, 0, n, n, n, &alpha, a, CUDA_R_16F_, n, b, CUDA_R_16F_, n, &beta, out,
                      CUDA_R_16F_, n, CUBLAS_COMPUTE_32F_, CUBLAS_GEMM_DEFAULT_) || c.sync()) {
            *why = "cublasGemmEx failed";
            goto done;
        }
        if (r >= 0)
            t[r] = now_s() - t0;
    }
    secs = median(t, reps);
done:
    free(host);
    if (h)
        c.destroy(h);
    if (a)
        c.free_(a);
    if (b)
        c.free_(b);
    if (out)
        c.free_(out);
    /* rt and bl stay loaded: the plugin's own (static) runtime shares the device's primary
     * context, and unloading a CUDA runtime in the middle of a process buys nothing */
    return secs;
}

static int bench_cuda_matmul_f16(const bench_opts *o)
{
    enum { N = 4096 };
    if (strncmp(o->device, "cuda:", 5) != 0)
        return 0;
    if (!nb_device_has_kernel(o->device, "matmul", NB_DTYPE_F16)) {
        printf("matmul_f16_4096 n/a (no float16 matmul kernel on %s)\n", o->device);
        return 0;
    }
    const double flop = 2.0 * N * N * N;
    /* inputs drawn in float32 and rounded: the comparison is about the product alone */
    nb_tensor *a32 = nb_randn(NB_SHAPE(N, N), (nb_opts){.device = o->device});
    nb_tensor *b32 = nb_randn(NB_SHAPE(N, N), (nb_opts){.device = o->device});
    nb_tensor *a = nb_to_dtype(a32, NB_DTYPE_F16), *b = nb_to_dtype(b32, NB_DTYPE_F16);
    nb_release(a32);
    nb_release(b32);
    bool ok = a && b && nb_synchronize(o->device) == NB_OK;
    double t[64];
    for (int r = -1; ok && r < o->reps; r++) {
        double t0 = now_s();
        nb_tensor *c = nb_matmul(a, b);
        ok = c && nb_synchronize(o->device) == NB_OK;
        nb_release(c);
        if (r >= 0)
            t[r] = now_s() - t0;
    }
    nb_release(a);
    nb_release(b);
    if (!ok)
        return fail("matmul float16 4096");
    double ours = median(t, o->reps);
    report("matmul_f16_4096", flop / ours / 1e9, "GFLOP/s");
    /* cuda:N is taken as CUDA ordinal N: the plugin maps them 1:1 unless it skipped a GPU
     * whose architecture this build lacks */
    const char *why = NULL;
    double theirs = cublas_gemmex_f16_seconds(atoi(o->device + 5), N, o->reps, &why);
    if (theirs <= 0) {
        printf("cublas_gemmex_f16_4096 n/a (%s)\n", why ? why : "failed");
        return 0;
    }
    report("cublas_gemmex_f16_4096", flop / theirs / 1e9, "GFLOP/s");
    report("matmul_f16_4096_ratio", theirs / ours, "nabla/cublas");
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: nabla-bench [--device D] [--only NAME[,NAME...]] [--reps N] "
               "[--long-reps N] [--dispatch-calls N]\n"
               "  groups and figures: matmul (matmul_f32_1024, cblas_sgemm_f32_1024, "
               "cblas_sgemm_best_f32_1024,\n"
               "  matmul_ratio, matmul_ratio_same_core; on opencl:N clblast_sgemm_1024,\n"
               "  matmul_ratio_clblast),\n"
               "  matmul16 (matmul_f32_1024_ms, matmul_bf16_1024, matmul_bf16_ratio, "
               "matmul_f16_1024, matmul_f16_ratio;\n"
               "  on cuda:N matmul_f16_4096, cublas_gemmex_f16_4096, matmul_f16_4096_ratio),\n"
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
#ifdef NB_BENCH_BLAS_SONAME
    if (argc == 3 && strcmp(argv[1], "--sgemm-child") == 0) { /* internal: see bench_matmul */
        double g = sgemm_gflops(NULL, NULL, atoi(argv[2]) > 0 && atoi(argv[2]) <= 64 ? atoi(argv[2]) : 5);
        printf("%.6g\n", g);
        return g > 0 ? 0 : 1;
    }
#endif
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
                                           "cblas_sgemm_best_f32_1024", "matmul_ratio",
                                           "matmul_ratio_same_core", "clblast_sgemm_1024",
                                           "matmul_ratio_clblast", NULL};
    static const char *const g_matmul16[] = {"matmul_f32_1024_ms", "matmul_bf16_1024",
                                             "matmul_bf16_ratio", "matmul_f16_1024",
                                             "matmul_f16_ratio", "matmul_f16_4096",
                                             "cublas_gemmex_f16_4096", "matmul_f16_4096_ratio",
                                             NULL};
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
            if (!wanted(&one, "matmul", g_matmul) && !wanted(&one, "matmul16", g_matmul16) &&
                !wanted(&one, "add", g_add) &&
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
    if (wanted(&o, "matmul", g_matmul))
        rc |= bench_clblast(&o);
    if (wanted(&o, "matmul16", g_matmul16))
        rc |= bench_matmul_16bit(&o);
    if (wanted(&o, "matmul16", g_matmul16))
        rc |= bench_cuda_matmul_f16(&o);
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
