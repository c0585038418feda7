/* train.c - nabla-train: trains the seed tutorial's LeNet on Fashion-MNIST (SGD with momentum,
 * cross-entropy), reports test loss/accuracy per epoch, a confusion matrix and run figures, and
 * saves/loads safetensors checkpoints. Under mpirun it trains data-parallel (DDP): each rank
 * takes its share of every global batch, and rank 0 alone prints and saves. --amp trains in
 * mixed precision as PyTorch's recipe: autocast around forward and loss, float32 weights, and a
 * GradScaler for float16. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lenet.h"
#include "mnist.h"
#include "nabla.h"

#define DEFAULT_DATA_DIR "/usr/share/datasets/fashion-mnist"
#define EVAL_BATCH 1000 /* bigger than training batches: evaluation keeps no graph */
#define PIXELS (MNIST_PADDED * MNIST_PADDED)

typedef struct config {
    const char *data_dir;
    const char *device; /* NULL: nb_default_device() (NABLA_DEVICE, else cpu) */
    const char *save_path, *load_path;
    int64_t epochs, batch_size, limit, test_limit, threads;
    double lr, momentum;
    uint64_t seed;
    bool eval_only, normalize;
    nb_dtype amp; /* NB_DTYPE_F16 or NB_DTYPE_BF16 under --amp; NB_DTYPE_F32: off */
} config;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nabla-train [options]\n"
            "  --data DIR         Fashion-MNIST .gz files (default " DEFAULT_DATA_DIR ")\n"
            "  --epochs N         training epochs (default 1)\n"
            "  --batch-size N     images per step (default 64)\n"
            "  --lr X             SGD learning rate (default 0.01)\n"
            "  --momentum X       SGD momentum (default 0.9)\n"
            "  --seed N           seed for weights and shuffling (default 1)\n"
            "  --device D         cpu, cuda:0, opencl:0... (default: NABLA_DEVICE, else cpu)\n"
            "  --limit N          train on the first N training images only\n"
            "  --test-limit N     evaluate on the first N test images only\n"
            "  --no-normalize     inputs in [0, 1] instead of (x - 0.2860) / 0.3530\n"
            "  --save FILE        write the trained weights (safetensors) and the optimizer's\n"
            "                     state to FILE.optim\n"
            "  --load FILE        start from these weights (resume, or evaluate); FILE.optim,\n"
            "                     when there, restores the momentum buffers too\n"
            "  --eval-only        only evaluate (normally with --load)\n"
            "  --threads N        CPU threads (sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS)\n"
            "  --amp bf16|f16     mixed precision: autocast forward and loss to that dtype\n"
            "                     (float32 weights; f16 adds a gradient scaler)\n"
            "  --help\n");
}

static int die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("nabla-train: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static bool parse_int(const char *opt, const char *s, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min) {
        fprintf(stderr, "nabla-train: %s '%s': expected an integer >= %lld\n", opt, s,
                (long long)min);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_double(const char *opt, const char *s, double min, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min) || !isfinite(v)) {
        fprintf(stderr, "nabla-train: %s '%s': expected a number >= %g\n", opt, s, min);
        return false;
    }
    *out = v;
    return true;
}

/* 0: go on, 1: exit 0 (help), 2: usage error. */
static int parse_args(int argc, char **argv, config *c)
{
    enum { O_DATA = 256, O_EPOCHS, O_BATCH, O_LR, O_MOMENTUM, O_SEED, O_DEVICE, O_LIMIT,
           O_TEST_LIMIT, O_NO_NORM, O_SAVE, O_LOAD, O_EVAL, O_THREADS, O_AMP, O_HELP };
    static const struct option opts[] = {
        {"data", required_argument, 0, O_DATA},
        {"epochs", required_argument, 0, O_EPOCHS},
        {"batch-size", required_argument, 0, O_BATCH},
        {"lr", required_argument, 0, O_LR},
        {"momentum", required_argument, 0, O_MOMENTUM},
        {"seed", required_argument, 0, O_SEED},
        {"device", required_argument, 0, O_DEVICE},
        {"limit", required_argument, 0, O_LIMIT},
        {"test-limit", required_argument, 0, O_TEST_LIMIT},
        {"no-normalize", no_argument, 0, O_NO_NORM},
        {"save", required_argument, 0, O_SAVE},
        {"load", required_argument, 0, O_LOAD},
        {"eval-only", no_argument, 0, O_EVAL},
        {"threads", required_argument, 0, O_THREADS},
        {"amp", required_argument, 0, O_AMP},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    *c = (config){.data_dir = DEFAULT_DATA_DIR, .epochs = 1, .batch_size = 64, .lr = 0.01,
                  .momentum = 0.9, .seed = 1, .normalize = true};
    opterr = 0;
    int o;
    int64_t v;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_DATA: c->data_dir = optarg; break;
        case O_EPOCHS: if (!parse_int("--epochs", optarg, 1, &c->epochs)) return 2; break;
        case O_BATCH: if (!parse_int("--batch-size", optarg, 1, &c->batch_size)) return 2; break;
        case O_LR: if (!parse_double("--lr", optarg, 0, &c->lr)) return 2; break;
        case O_MOMENTUM: if (!parse_double("--momentum", optarg, 0, &c->momentum)) return 2; break;
        case O_SEED: if (!parse_int("--seed", optarg, 0, &v)) return 2; c->seed = (uint64_t)v; break;
        case O_DEVICE: c->device = optarg; break;
        case O_LIMIT: if (!parse_int("--limit", optarg, 1, &c->limit)) return 2; break;
        case O_TEST_LIMIT: if (!parse_int("--test-limit", optarg, 1, &c->test_limit)) return 2; break;
        case O_NO_NORM: c->normalize = false; break;
        case O_SAVE: c->save_path = optarg; break;
        case O_LOAD: c->load_path = optarg; break;
        case O_EVAL: c->eval_only = true; break;
        case O_THREADS: if (!parse_int("--threads", optarg, 1, &c->threads)) return 2; break;
        case O_AMP:
            if (strcmp(optarg, "bf16") == 0 || strcmp(optarg, "bfloat16") == 0)
                c->amp = NB_DTYPE_BF16;
            else if (strcmp(optarg, "f16") == 0 || strcmp(optarg, "float16") == 0)
                c->amp = NB_DTYPE_F16;
            else {
                fprintf(stderr, "nabla-train: --amp '%s': expected bf16 or f16\n", optarg);
                return 2;
            }
            break;
        case O_HELP: usage(stdout); return 1;
        default:
            if (optopt)
                fprintf(stderr, "nabla-train: option '%s' needs a value\n", argv[optind - 1]);
            else
                fprintf(stderr, "nabla-train: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nabla-train: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64: a tiny seeded generator for the sampler, independent of nb's own stream. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle(int64_t *perm, int64_t n, uint64_t *rng)
{
    for (int64_t i = n - 1; i > 0; i--) {
        /* multiply-shift maps 64 random bits onto 0..i without modulo bias worth the name */
        int64_t j = (int64_t)(((unsigned __int128)rng_next(rng) * (uint64_t)(i + 1)) >> 64);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static void fmt_duration(char *buf, size_t len, double s)
{
    if (!(s >= 0) || s > 1e7)
        s = 0;
    long t = lround(s);
    snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

typedef struct run_state {
    const config *cfg;
    const char *device;
    nb_module *net;
    nb_process_group *pg; /* NULL unless mpirun started more than one rank */
    nb_ddp *ddp;
    int rank, world;
    nb_optim *opt;
    nb_grad_scaler *scaler; /* --amp f16 only: bfloat16 has float32's range and needs none */
    nb_tensor *loss_acc; /* sum over a window of steps of loss * batch, kept on the device */
    float *xbuf;
    int64_t *ybuf;
    double train_seconds;
    int64_t trained_images;
} run_state;

/* Reads and resets the device-side loss accumulator (one synchronisation per report). */
static bool take_loss_sum(run_state *r, double *sum)
{
    if (nb_item(r->loss_acc, sum) != NB_OK || nb_zero_(r->loss_acc) != NB_OK)
        return false;
    return true;
}

static bool train_epoch(run_state *r, const mnist_set *train, int64_t *perm, uint64_t *rng,
                        int64_t epoch)
{
    const config *c = r->cfg;
    const int64_t n = train->n, bs = c->batch_size;
    const int64_t steps = (n + bs - 1) / bs;
    const bool tty = isatty(STDOUT_FILENO);
    const int64_t every = steps >= 10 ? steps / 10 : 1; /* plain output: about every 10% */
    shuffle(perm, n, rng);

    double t0 = now_s(), last_draw = 0;
    int64_t window_images = 0;
    for (int64_t s = 0; s < steps; s++) {
        const int64_t count = s == steps - 1 ? n - s * bs : bs;
        if (count < r->world)
            continue; /* a last batch too small to give every rank an image (all ranks skip it) */
        /* This rank's share of the global batch; the same shuffle on every rank. */
        const int64_t lo = count * r->rank / r->world, mine = count * (r->rank + 1) / r->world - lo;
        mnist_batch(train, perm + s * bs + lo, mine, c->normalize, r->xbuf, r->ybuf);

        nb_scope_begin();
        nb_tensor *x = nb_from_data(r->xbuf, NB_SHAPE(mine, 1, MNIST_PADDED, MNIST_PADDED),
                                    (nb_opts){.device = r->device});
        nb_tensor *y = nb_from_data(r->ybuf, NB_SHAPE(mine),
                                    (nb_opts){.dtype = NB_DTYPE_I64, .device = r->device});
        /* forward and loss under autocast; backward and step outside it, as PyTorch's recipe */
        bool amp = c->amp != NB_DTYPE_F32 && nb_autocast_begin(r->device, c->amp) == NB_OK;
        nb_tensor *out = r->ddp ? nb_ddp_forward(r->ddp, x) : nb_module_forward(r->net, x);
        nb_tensor *loss = nb_cross_entropy(out, y, NB_REDUCTION_MEAN); /* float32 either way */
        if (amp)
            nb_autocast_end();
        /* DDP averages the ranks' gradients: weighting each rank's mean by its share makes that
         * the gradient of the global batch's mean even when the shares differ. */
        nb_tensor *scaled = r->ddp ? nb_mul_scalar(loss, (double)mine * r->world / count) : loss;
        if (r->scaler)
            scaled = nb_grad_scaler_scale(r->scaler, scaled);
        bool ok = scaled && (amp || c->amp == NB_DTYPE_F32) &&
                  nb_optim_zero_grad(r->opt) == NB_OK &&
                  nb_backward(scaled, NULL, (nb_backward_opts){0}) == NB_OK &&
                  (!r->ddp || nb_ddp_finish(r->ddp) == NB_OK) &&
                  (r->scaler ? nb_grad_scaler_step(r->scaler, r->opt) == NB_OK &&
                                   nb_grad_scaler_update(r->scaler) == NB_OK
                             : nb_optim_step(r->opt) == NB_OK);
        if (ok) {
            nb_no_grad_begin();
            ok = nb_add_scaled_(r->loss_acc, loss, (double)count) == NB_OK; /* rank 0's estimate */
            nb_no_grad_end();
        }
        nb_scope_end();
        if (!ok) {
            if (tty)
                putchar('\n');
            return !die("training step %lld of epoch %lld failed: %s", (long long)s + 1,
                        (long long)epoch, nb_last_error());
        }
        window_images += count;
        r->trained_images += count;

        double t = now_s();
        bool last = s == steps - 1;
        bool report = tty ? (t - last_draw >= 0.25 || last) : ((s + 1) % every == 0 || last);
        if (!report)
            continue;
        double sum;
        if (!take_loss_sum(r, &sum))
            return !die("reading the loss failed: %s", nb_last_error());
        double loss_avg = sum / (double)window_images;
        window_images = 0;
        double elapsed = now_s() - t0;
        double ips = (double)(s + 1 < steps ? (s + 1) * bs : n) / elapsed;
        double left = elapsed / (double)(s + 1) * (double)(steps - s - 1);
        char eta[32], el[32];
        fmt_duration(eta, sizeof eta, left);
        fmt_duration(el, sizeof el, elapsed);
        if (tty) {
            enum { WIDTH = 24 };
            char bar[WIDTH + 1];
            int filled = (int)((s + 1) * WIDTH / steps);
            for (int i = 0; i < WIDTH; i++)
                bar[i] = i < filled ? '#' : '.';
            bar[WIDTH] = 0;
            printf("\repoch %lld/%lld [%s] %lld/%lld loss %.4f %.0f img/s %s left   ",
                   (long long)epoch, (long long)c->epochs, bar, (long long)s + 1,
                   (long long)steps, loss_avg, ips, eta);
            if (last)
                printf("\n");
            fflush(stdout);
            last_draw = t;
        } else {
            printf("epoch %lld step %lld/%lld loss %.4f images/s %.1f elapsed %s left %s\n",
                   (long long)epoch, (long long)s + 1, (long long)steps, loss_avg, ips, el, eta);
            fflush(stdout);
        }
    }
    r->train_seconds += now_s() - t0;
    return true;
}

/* Test loss (mean cross-entropy) and accuracy; confusion[true][predicted] counts. */
static bool evaluate(run_state *r, const mnist_set *test, int64_t confusion[10][10],
                     double *loss_out, double *acc_out)
{
    memset(confusion, 0, sizeof(int64_t[10][10]));
    int64_t idx[EVAL_BATCH], pred[EVAL_BATCH];
    double loss_sum = 0;
    int64_t correct = 0;
    bool ok = nb_module_train(r->net, false) == NB_OK;
    nb_no_grad_begin();
    for (int64_t start = 0; ok && start < test->n; start += EVAL_BATCH) {
        int64_t count = test->n - start < EVAL_BATCH ? test->n - start : EVAL_BATCH;
        for (int64_t k = 0; k < count; k++)
            idx[k] = start + k;
        mnist_batch(test, idx, count, r->cfg->normalize, r->xbuf, r->ybuf);
        nb_scope_begin();
        nb_tensor *x = nb_from_data(r->xbuf, NB_SHAPE(count, 1, MNIST_PADDED, MNIST_PADDED),
                                    (nb_opts){.device = r->device});
        nb_tensor *y = nb_from_data(r->ybuf, NB_SHAPE(count),
                                    (nb_opts){.dtype = NB_DTYPE_I64, .device = r->device});
        bool amp = r->cfg->amp != NB_DTYPE_F32 &&
                   nb_autocast_begin(r->device, r->cfg->amp) == NB_OK;
        nb_tensor *logits = nb_module_forward(r->net, x);
        nb_tensor *loss = nb_cross_entropy(logits, y, NB_REDUCTION_SUM);
        if (amp)
            nb_autocast_end();
        nb_tensor *am = nb_argmax(logits, 1, false);
        double l;
        ok = loss && am && nb_item(loss, &l) == NB_OK &&
             nb_tensor_copy_to_host(am, pred, (size_t)count * sizeof *pred) == NB_OK;
        nb_scope_end();
        if (!ok)
            break;
        loss_sum += l;
        for (int64_t k = 0; k < count; k++) {
            if (pred[k] < 0 || pred[k] >= 10) {
                ok = false;
                break;
            }
            confusion[r->ybuf[k]][pred[k]]++;
            correct += pred[k] == r->ybuf[k];
        }
    }
    nb_no_grad_end();
    if (nb_module_train(r->net, true) != NB_OK)
        ok = false;
    if (!ok)
        return !die("evaluation failed: %s", nb_last_error());
    *loss_out = loss_sum / (double)test->n;
    *acc_out = (double)correct / (double)test->n;
    return true;
}

static void print_confusion(int64_t confusion[10][10])
{
    printf("confusion matrix (rows: true class, columns: predicted class)\n");
    printf("%-14s", "");
    for (int j = 0; j < 10; j++)
        printf(" %5d", j);
    printf("\n");
    for (int i = 0; i < 10; i++) {
        printf("%d %-12s", i, fashion_mnist_classes[i]);
        for (int j = 0; j < 10; j++)
            printf(" %5lld", (long long)confusion[i][j]);
        printf("\n");
    }
}

/* The checkpoint is written beside its final name and renamed into place, so a failed or
 * interrupted save never leaves a partial file under that name. */
static void temp_name(char *buf, size_t len, const char *path)
{
    snprintf(buf, len, "%s.tmp-%ld", path, (long)getpid());
}

static bool check_writable(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) /* rename() onto it would fail at the end */
        return !die("cannot write the checkpoint '%s': it is a directory (expected a file name "
                    "such as %s/lenet.safetensors)", path, path);
    char tmp[4096];
    temp_name(tmp, sizeof tmp, path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return !die("cannot write the checkpoint '%s' (tried '%s'): %s", path, tmp,
                    strerror(errno));
    fclose(f);
    unlink(tmp);
    return true;
}

static bool save_checkpoint(nb_module *net, const char *path)
{
    char tmp[4096];
    temp_name(tmp, sizeof tmp, path);
    if (nb_module_save(net, tmp) != NB_OK) {
        unlink(tmp);
        return !die("saving the checkpoint to '%s' failed: %s", path, nb_last_error());
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return !die("cannot move the checkpoint into place at '%s': %s", path, strerror(e));
    }
    return true;
}

int main(int argc, char **argv)
{
    config cfg;
    int pa = parse_args(argc, argv, &cfg);
    if (pa)
        return pa == 1 ? 0 : 2;
    /* BLAS and OpenMP read these when the first plugin initialises them. */
    if (cfg.threads > 0) {
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)cfg.threads);
        setenv("OMP_NUM_THREADS", buf, 1);
        setenv("OPENBLAS_NUM_THREADS", buf, 1);
    }
    if (cfg.save_path && !check_writable(cfg.save_path))
        return 1;

    /* the device first: a typo should not wait for 60000 images to load */
    char device[64];
    const char *want = cfg.device ? cfg.device : nb_default_device();
    if (nb_device_parse(want, device, sizeof device) != NB_OK) {
        die("device '%s': %s", want, nb_last_error());
        nb_shutdown();
        return 1;
    }

    /* and whether it can autocast to --amp's dtype (the error names what it lacks) */
    if (cfg.amp != NB_DTYPE_F32 &&
        (nb_autocast_begin(device, cfg.amp) != NB_OK || nb_autocast_end() != NB_OK)) {
        die("--amp %s on %s: %s", nb_dtype_name(cfg.amp), device, nb_last_error());
        nb_shutdown();
        return 1;
    }

    char err[8192];
    mnist_set train = {0}, test = {0};
    if (!cfg.eval_only && !mnist_load(cfg.data_dir, "train", cfg.limit, &train, err, sizeof err))
        return nb_shutdown(), die("%s", err);
    if (!mnist_load(cfg.data_dir, "t10k", cfg.test_limit, &test, err, sizeof err)) {
        mnist_free(&train);
        return nb_shutdown(), die("%s", err);
    }

    int rc = 1;
    run_state r = {.cfg = &cfg, .world = 1};
    int64_t *perm = NULL;
    r.device = device;
    /* Under mpirun with more than one rank: a process group; otherwise training runs as ever. */
    const char *ranks = getenv("OMPI_COMM_WORLD_SIZE") ? getenv("OMPI_COMM_WORLD_SIZE")
                                                       : getenv("PMI_SIZE");
    if (ranks && atoi(ranks) > 1) {
        if (!(r.pg = nb_process_group_new((nb_process_group_opts){0}))) {
            die("starting data-parallel training failed: %s", nb_last_error());
            goto out;
        }
        r.rank = nb_process_group_rank(r.pg);
        r.world = nb_process_group_size(r.pg);
        if (r.rank != 0 && !freopen("/dev/null", "w", stdout)) /* one set of figures: rank 0's */
            goto out;
    }
    nb_manual_seed(cfg.seed);
    r.net = lenet_new((nb_opts){.device = device});
    if (!r.net) {
        die("building LeNet on %s failed: %s", device, nb_last_error());
        goto out;
    }
    if (cfg.load_path && nb_module_load(r.net, cfg.load_path) != NB_OK) {
        die("loading the checkpoint '%s' failed: %s", cfg.load_path, nb_last_error());
        goto out;
    }
    if (r.pg && !(r.ddp = nb_ddp_new(r.net, r.pg, (nb_ddp_opts){0}))) {
        die("wrapping LeNet in DDP failed: %s", nb_last_error());
        goto out;
    }
    r.opt = nb_sgd_new_for(r.net, (nb_sgd_opts){.lr = cfg.lr, .momentum = cfg.momentum});
    if (r.opt && cfg.load_path) {
        /* resume continues the momentum exactly when the optimizer's state was saved too */
        char optim_path[4096];
        snprintf(optim_path, sizeof optim_path, "%s.optim", cfg.load_path);
        if (access(optim_path, R_OK) == 0 && nb_optim_load(r.opt, optim_path) != NB_OK) {
            die("loading the optimizer state '%s' failed: %s", optim_path, nb_last_error());
            goto out;
        }
    }
    if (r.opt && cfg.amp == NB_DTYPE_F16 &&
        !(r.scaler = nb_grad_scaler_new((nb_grad_scaler_opts){0}))) {
        die("creating the gradient scaler failed: %s", nb_last_error());
        goto out;
    }
    r.loss_acc = nb_zeros(NB_SHAPE_SCALAR, (nb_opts){.device = device});
    int64_t cap = cfg.batch_size > EVAL_BATCH ? cfg.batch_size : EVAL_BATCH;
    r.xbuf = malloc((size_t)cap * PIXELS * sizeof *r.xbuf);
    r.ybuf = malloc((size_t)cap * sizeof *r.ybuf);
    perm = malloc((size_t)(train.n > 0 ? train.n : 1) * sizeof *perm);
    if (!r.opt || !r.loss_acc || !r.xbuf || !r.ybuf || !perm) {
        die("setting up training failed: %s", r.opt && r.loss_acc ? "out of memory"
                                                                   : nb_last_error());
        goto out;
    }
    for (int64_t k = 0; k < train.n; k++)
        perm[k] = k;
    uint64_t rng = cfg.seed;

    printf("nabla-train: LeNet on %s, %lld training / %lld test images, batch %lld, "
           "lr %g, momentum %g, seed %llu%s%s%s%s\n",
           device, (long long)train.n, (long long)test.n, (long long)cfg.batch_size, cfg.lr,
           cfg.momentum, (unsigned long long)cfg.seed, cfg.load_path ? ", from " : "",
           cfg.load_path ? cfg.load_path : "", cfg.amp != NB_DTYPE_F32 ? ", amp " : "",
           cfg.amp != NB_DTYPE_F32 ? nb_dtype_name(cfg.amp) : "");
    if (r.pg)
        printf("world_size %d (batch %lld: about %lld per rank)\n", r.world,
               (long long)cfg.batch_size, (long long)(cfg.batch_size / r.world));
    int64_t confusion[10][10];
    double test_loss = 0, test_acc = 0;
    int64_t epochs = cfg.eval_only ? 0 : cfg.epochs;
    for (int64_t e = 1; e <= epochs; e++) {
        if (!train_epoch(&r, &train, perm, &rng, e) ||
            !evaluate(&r, &test, confusion, &test_loss, &test_acc))
            goto out;
        printf("epoch %lld test_loss %.4f test_accuracy %.4f\n", (long long)e, test_loss,
               test_acc);
        fflush(stdout);
    }
    if (epochs == 0) {
        if (!evaluate(&r, &test, confusion, &test_loss, &test_acc))
            goto out;
        printf("test_loss %.4f test_accuracy %.4f\n", test_loss, test_acc);
    }
    print_confusion(confusion);
    if (cfg.save_path && r.rank == 0) { /* every rank holds the same weights */
        if (!save_checkpoint(r.net, cfg.save_path))
            goto out;
        char optim_path[4096];
        snprintf(optim_path, sizeof optim_path, "%s.optim", cfg.save_path);
        if (nb_optim_save(r.opt, optim_path) != NB_OK) {
            die("saving the optimizer state to '%s' failed: %s", optim_path, nb_last_error());
            goto out;
        }
        printf("saved %s (optimizer state: %s)\n", cfg.save_path, optim_path);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("test_accuracy %.4f\n", test_acc);
    printf("test_loss %.4f\n", test_loss);
    printf("train_seconds %.3f\n", r.train_seconds);
    printf("images_per_second %.1f\n",
           r.train_seconds > 0 ? (double)r.trained_images / r.train_seconds : 0.0);
    printf("peak_rss_mb %.1f\n", (double)ru.ru_maxrss / 1024.0);
    /* tensors only (nb_memory_peak): the dataset is host memory outside them */
    printf("peak_tensor_mb %.2f\n", (double)nb_memory_peak() / (1024.0 * 1024.0));
    if (r.scaler)
        printf("amp_skipped_steps %lld\namp_final_scale %g\n",
               (long long)nb_grad_scaler_skipped_steps(r.scaler),
               nb_grad_scaler_get_scale(r.scaler));
    rc = 0;
out:
    free(perm);
    free(r.xbuf);
    free(r.ybuf);
    nb_release(r.loss_acc);
    nb_grad_scaler_free(r.scaler);
    nb_optim_free(r.opt);
    nb_ddp_free(r.ddp);
    nb_module_free(r.net);
    nb_process_group_free(r.pg);
    mnist_free(&train);
    mnist_free(&test);
    if (nb_shutdown() != NB_OK && rc == 0) {
        die("%s", nb_last_error());
        rc = 1;
    }
    return rc;
}
