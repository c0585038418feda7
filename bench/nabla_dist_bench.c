/* nabla_dist_bench.c - data-parallel figures, run under mpirun (never by ctest): allreduce
 * bandwidth by message size, and LeNet training steps with DDP (global batch 64 split over the
 * ranks) against the same steps in one process: images/s, bytes allreduced per step against the
 * parameter bytes, and the time backward waits for communication as a fraction of the step.
 *   mpirun -np 1 build/bin/nabla-dist-bench; mpirun -np 2 build/bin/nabla-dist-bench
 *   options after the step count: --bucket-mb X (DDP's bucket_mb), --grad-view
 *   (gradient_as_bucket_view), --global-batch N (default 64; a 1-rank run with the per-rank
 *   batch of an N-rank run gives that run's ideal, N times its images/s),
 *   --no-allreduce-table (LeNet figures only) */
#include "lenet.h"
#include "nabla.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of this process (every thread: the communication thread too). */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The step time that ranks stepping like the sorted samples t[0..n) would take if each step
 * waited for the slowest of `world` of them, drawn independently: the expected maximum of
 * `world` draws from the samples, sum over k of t[k] * P(the maximum is the k-th smallest). */
static double expected_max(const double *t, int n, int world)
{
    double e = 0;
    for (int k = 0; k < n; k++)
        e += t[k] * (pow((k + 1.0) / n, world) - pow((double)k / n, world));
    return e;
}

static int fail(const char *what)
{
    fprintf(stderr, "nabla-dist-bench: %s: %s\n", what, nb_last_error());
    return 1;
}

static int bench_allreduce(nb_process_group *pg, int rank, int world)
{
    if (rank == 0)
        printf("allreduce (sum, float32, cpu), %d ranks\n%12s %10s %12s %12s\n", world, "bytes",
               "iters", "time_us", "busbw_GB/s");
    for (int64_t n = 1024; n <= 16 * 1024 * 1024; n *= 8) {
        nb_tensor *t = nb_ones(NB_SHAPE(n), (nb_opts){0});
        if (!t)
            return fail("allocating");
        int iters = n >= 1 << 22 ? 10 : 50;
        if (nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_SUM)) != NB_OK) /* warm up */
            return fail("allreduce");
        if (nb_work_finish(nb_barrier(pg)) != NB_OK)
            return fail("barrier");
        double t0 = now_s();
        for (int k = 0; k < iters; k++)
            if (nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_SUM)) != NB_OK)
                return fail("allreduce");
        double dt = (now_s() - t0) / iters;
        /* Bus bandwidth as nccl-tests define it: what each link carries in a ring. */
        double bytes = (double)n * 4, bus = world > 1 ? bytes * 2 * (world - 1) / world / dt : 0;
        if (rank == 0)
            printf("%12.0f %10d %12.1f %12.3f\n", bytes, iters, dt * 1e6, bus / 1e9);
        nb_release(t);
    }
    return 0;
}

static int bench_ddp(nb_process_group *pg, int rank, int world, int steps, int global,
                     nb_ddp_opts dopts)
{
    const int per = global / world;
    nb_manual_seed(1);
    nb_module *net = lenet_new((nb_opts){0});
    nb_ddp *d = world > 1 ? nb_ddp_new(net, pg, dopts) : NULL;
    nb_optim *o = nb_sgd_new_for(net, (nb_sgd_opts){.lr = 0.01, .momentum = 0.9});
    if (!net || !o || (world > 1 && !d))
        return fail("setting up LeNet");
    uint64_t param_bytes = 0;
    for (int32_t k = 0; k < nb_module_parameter_count(net); k++)
        param_bytes += (uint64_t)nb_tensor_numel(nb_module_parameter(net, k)) * 4;
    nb_tensor *x = nb_randn(NB_SHAPE(per, 1, 32, 32), (nb_opts){0});
    nb_tensor *y = nb_randint(0, 10, NB_SHAPE(per), (nb_opts){.dtype = NB_DTYPE_I64});
    double waited = 0, t0 = 0, c0 = 0;
    double *busy = malloc(sizeof(double) * (size_t)steps); /* each step's time less its wait */
    if (!busy)
        return fail("out of memory");
    for (int s = -5; s < steps; s++) { /* 5 warm-up steps */
        if (s == 0) {
            nb_work_finish(nb_barrier(pg));
            t0 = now_s();
            c0 = cpu_s();
            waited = 0;
        }
        double s0 = now_s(); /* after the barrier: step 0's time must not include it */
        nb_scope_begin();
        nb_tensor *out = d ? nb_ddp_forward(d, x) : nb_module_forward(net, x);
        nb_tensor *loss = nb_cross_entropy(out, y, NB_REDUCTION_MEAN);
        bool ok = loss && nb_optim_zero_grad(o) == NB_OK && nb_backward(loss, NULL, (nb_backward_opts){0}) == NB_OK &&
                  (!d || nb_ddp_finish(d) == NB_OK) && nb_optim_step(o) == NB_OK;
        nb_scope_end();
        if (!ok) {
            free(busy);
            return fail("training step");
        }
        double w = d ? nb_ddp_last_wait_s(d) : 0;
        waited += w;
        if (s >= 0)
            busy[s] = now_s() - s0 - w;
    }
    double dt = now_s() - t0;
    /* CPU time summed over the ranks: unlike images/s it hardly depends on how many other
     * processes share the cores, so it shows what the ranks cost even on a busy machine. */
    double cpu = cpu_s() - c0;
    nb_tensor *ct = nb_from_blob(&cpu, NB_SHAPE(1), (nb_opts){.dtype = NB_DTYPE_F64}, NULL, NULL);
    if (!ct || nb_work_finish(nb_allreduce(pg, ct, NB_REDUCE_OP_SUM)) != NB_OK) {
        free(busy);
        return fail("summing cpu time");
    }
    nb_release(ct);
    /* Each rank's wait: one that always waits has a faster partner, not just jitter. */
    double w[2] = {waited, -waited};
    nb_tensor *wt = nb_from_blob(w, NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_F64}, NULL, NULL);
    if (!wt || nb_work_finish(nb_allreduce(pg, wt, NB_REDUCE_OP_MAX)) != NB_OK) {
        free(busy);
        return fail("collecting the waits");
    }
    nb_release(wt);
    qsort(busy, (size_t)steps, sizeof *busy, cmp_double);
    double mean = 0;
    for (int k = 0; k < steps; k++)
        mean += busy[k] / steps;
    uint64_t reduced = d ? nb_ddp_bytes_reduced(d) : 0;
    if (rank == 0) {
        printf("\nLeNet training, global batch %d = %d ranks x %d, %d steps, 1 thread per rank\n",
               global, world, per, steps);
        printf("images_per_second %.1f\n", global * steps / dt);
        printf("step_ms %.3f\n", dt / steps * 1e3);
        printf("cpu_us_per_image %.1f (all ranks, every thread)\n", cpu / global / steps * 1e6);
        /* The jitter: with ranks in lockstep, every step lasts as long as the slowest rank's. */
        printf("busy_step_ms %.3f (rank 0, less the wait; p10 %.3f p50 %.3f p90 %.3f)\n",
               mean * 1e3, busy[steps / 10] * 1e3, busy[steps / 2] * 1e3,
               busy[steps - 1 - steps / 10] * 1e3);
        if (!d)
            for (int w = 2; w <= 3; w++) {
                double e = expected_max(busy, steps, w);
                printf("lockstep_%d_ranks %.1f images/s, wait fraction %.3f (%d ranks each "
                       "stepping like this one, every step as long as the slowest's)\n",
                       w, w * per / e, (e - mean) / e, w);
            }
        if (d) {
            printf("buckets %d (bucket_mb %g%s)\n", nb_ddp_bucket_count(d), dopts.bucket_mb,
                   dopts.gradient_as_bucket_view ? ", gradient_as_bucket_view" : "");
            printf("bytes_allreduced_per_step %.0f (parameter bytes %llu)\n",
                   (double)reduced / (steps + 5), (unsigned long long)param_bytes);
            printf("comm_wait_fraction %.3f (rank 0; the ranks from %.3f to %.3f)\n",
                   waited / dt, -w[1] / dt, w[0] / dt);
        } else {
            printf("ddp: off (world size 1, plain training)\n");
        }
    }
    free(busy);
    nb_release(x);
    nb_release(y);
    nb_optim_free(o);
    nb_ddp_free(d);
    nb_module_free(net);
    return 0;
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 200;
    nb_ddp_opts dopts = {0};
    bool table = true;
    long global = 64;
    for (int k = 2; k < argc && steps >= 1; k++) {
        char *end = NULL;
        if (strcmp(argv[k], "--bucket-mb") == 0 && k + 1 < argc)
            dopts.bucket_mb = strtod(argv[++k], &end);
        else if (strcmp(argv[k], "--grad-view") == 0)
            dopts.gradient_as_bucket_view = true;
        else if (strcmp(argv[k], "--no-allreduce-table") == 0)
            table = false;
        else if (strcmp(argv[k], "--global-batch") == 0 && k + 1 < argc) {
            global = strtol(argv[++k], &end, 10);
            if (global < 1 || global > 65536) {
                fprintf(stderr, "nabla-dist-bench: --global-batch %s: expected 1 to 65536\n",
                        argv[k]);
                steps = 0;
            }
        } else
            steps = 0;
        if (end && (*end || dopts.bucket_mb < 0))
            steps = 0;
    }
    if (steps < 1) {
        fprintf(stderr, "usage: nabla-dist-bench [steps [--bucket-mb X] [--grad-view] "
                        "[--global-batch N] [--no-allreduce-table]]\n");
        return 2;
    }
    /* One thread per rank: the ranks are the parallelism being measured. */
    setenv("OMP_NUM_THREADS", "1", 0);
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    nb_process_group *pg = nb_process_group_new((nb_process_group_opts){.backend = "mpi"});
    if (!pg)
        return fail("process group");
    int rank = nb_process_group_rank(pg), world = nb_process_group_size(pg);
    int rc = table ? bench_allreduce(pg, rank, world) : 0;
    if (rc == 0 && global % world != 0) {
        if (rank == 0)
            fprintf(stderr, "nabla-dist-bench: --global-batch %ld does not split over %d ranks\n",
                    global, world);
        rc = 2;
    }
    if (rc == 0)
        rc = bench_ddp(pg, rank, world, steps, (int)global, dopts);
    nb_process_group_free(pg);
    if (nb_shutdown() != NB_OK && rc == 0)
        rc = fail("shutdown");
    return rc;
}
