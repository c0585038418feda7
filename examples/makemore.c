/* makemore.c - nabla-makemore: a character-level GPT (Karpathy's makemore Transformer) trained on
 * Debian's English word list. 4 layers, 4 heads, embedding 64, context 16; AdamW with warmup and
 * cosine decay, clip_grad_norm; progress bar, train/validation loss in nats per character,
 * 20 sampled words, and a safetensors checkpoint with PyTorch's state_dict names, which
 * bench/torch_makemore.py loads into the same model in PyTorch. */
#include "nabla.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CTX 16     /* block size: <start> + up to 15 letters */
#define VOCAB 27   /* 0 is the boundary token '.', 1..26 are 'a'..'z' */
#define EMB 64
#define HEADS 4
#define LAYERS 4

/* ---------------------------------------------------------------- a shared generator
 * splitmix64, so that bench/torch_makemore.py reproduces the split and every batch. */
static uint64_t rng = 1337;
static uint64_t next_u64(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double next_unit(void) { return (double)(next_u64() >> 11) * 0x1p-53; }

/* ---------------------------------------------------------------- data */

typedef struct dataset {
    int64_t n;
    int64_t *x, *y; /* (n, CTX): x = [0, c1..ck, 0..], y = [c1..ck, 0, -1..] (-1 is ignored) */
} dataset;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lower-cased words of letters only, at most CTX - 1 long, sorted and unique. */
static char **read_words(const char *path, int64_t *count)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "nabla-makemore: cannot open %s: the word list comes with Debian's "
                "'wamerican' package (apt install wamerican), or give --words FILE\n", path);
        return NULL;
    }
    char line[256];
    int64_t n = 0, cap = 1 << 17;
    char **w = malloc((size_t)cap * sizeof *w);
    while (w && fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        bool ok = len > 0 && len < CTX;
        for (size_t i = 0; ok && i < len; i++) {
            char c = line[i];
            if (c >= 'A' && c <= 'Z')
                line[i] = (char)(c - 'A' + 'a');
            else if (c < 'a' || c > 'z')
                ok = false;
        }
        if (!ok)
            continue;
        if (n == cap) {
            char **g = realloc(w, (size_t)(cap *= 2) * sizeof *w);
            if (!g)
                break;
            w = g;
        }
        w[n] = strdup(line);
        if (w[n])
            n++;
    }
    fclose(f);
    if (!w)
        return NULL;
    qsort(w, (size_t)n, sizeof *w, cmp_str);
    int64_t u = 0;
    for (int64_t i = 0; i < n; i++) {
        if (u && strcmp(w[u - 1], w[i]) == 0)
            free(w[i]);
        else
            w[u++] = w[i];
    }
    *count = u;
    return w;
}

static bool make_set(dataset *d, char **words, const int64_t *order, int64_t from, int64_t to)
{
    d->n = to - from;
    d->x = malloc((size_t)(d->n ? d->n : 1) * CTX * sizeof *d->x);
    d->y = malloc((size_t)(d->n ? d->n : 1) * CTX * sizeof *d->y);
    if (!d->x || !d->y)
        return false;
    for (int64_t r = 0; r < d->n; r++) {
        const char *w = words[order[from + r]];
        int64_t len = (int64_t)strlen(w), *x = d->x + r * CTX, *y = d->y + r * CTX;
        for (int64_t t = 0; t < CTX; t++) {
            x[t] = t == 0 ? 0 : t <= len ? w[t - 1] - 'a' + 1 : 0;
            y[t] = t < len ? w[t] - 'a' + 1 : t == len ? 0 : -1;
        }
    }
    return true;
}

/* ---------------------------------------------------------------- the model */

typedef struct gpt {
    nb_module *root;
} gpt;

static nb_module *sub(nb_module *m, const char *path) { return nb_module_child(m, path); }

static nb_module *group(const char *type) { return nb_module_new(type, NULL, NULL); }

static nb_module *block_new(nb_opts o)
{
    nb_module *b = group("Block"), *attn = group("CausalSelfAttention"), *mlp = group("MLP");
    int64_t ns[1] = {EMB};
    nb_module_add(attn, "c_attn", nb_linear_new(EMB, 3 * EMB, true, o));
    nb_module_add(attn, "c_proj", nb_linear_new(EMB, EMB, true, o));
    nb_module_add(mlp, "c_fc", nb_linear_new(EMB, 4 * EMB, true, o));
    nb_module_add(mlp, "c_proj", nb_linear_new(4 * EMB, EMB, true, o));
    nb_module_add(b, "ln_1", nb_layer_norm_new(ns, 1, 1e-5, true, true, o));
    nb_module_add(b, "attn", attn);
    nb_module_add(b, "ln_2", nb_layer_norm_new(ns, 1, 1e-5, true, true, o));
    nb_module_add(b, "mlp", mlp);
    return b;
}

/* The names are PyTorch's (transformer.h.0.attn.c_attn.weight, ...), so that the checkpoint
 * loads into the same model written with torch.nn. */
static nb_module *gpt_new(nb_opts o)
{
    nb_module *root = group("Transformer"), *tr = group("ModuleDict"), *h = group("ModuleList");
    int64_t ns[1] = {EMB};
    nb_module_add(tr, "wte", nb_embedding_new(VOCAB, EMB, NB_NO_PADDING_IDX, o));
    nb_module_add(tr, "wpe", nb_embedding_new(CTX, EMB, NB_NO_PADDING_IDX, o));
    for (int l = 0; l < LAYERS; l++) {
        char name[8];
        snprintf(name, sizeof name, "%d", l);
        nb_module_add(h, name, block_new(o));
    }
    nb_module_add(tr, "h", h);
    nb_module_add(tr, "ln_f", nb_layer_norm_new(ns, 1, 1e-5, true, true, o));
    nb_module_add(root, "transformer", tr);
    nb_module_add(root, "lm_head", nb_linear_new(EMB, VOCAB, false, o));
    return nb_last_status() == NB_OK ? root : (nb_module_free(root), NULL);
}

static nb_tensor *fwd(nb_module *m, const char *path, const nb_tensor *x)
{
    return nb_module_forward(sub(m, path), x);
}

/* idx (B, T) int64 -> logits (B, T, VOCAB); inside the caller's scope. The activations stay
 * (B T, EMB) rows between the attention blocks, so that each Linear is one matrix product
 * (a (B, T, C) input would be B products and a sum over them in the weight's gradient). */
static nb_tensor *gpt_forward(nb_module *m, const nb_tensor *idx)
{
    nb_shape s = nb_tensor_shape(idx);
    int64_t B = s.dims[0], T = s.dims[1], D = EMB / HEADS;
    nb_tensor *pos = nb_arange(0, (double)T, 1, (nb_opts){.dtype = NB_DTYPE_I64});
    nb_tensor *x = nb_add(fwd(m, "transformer.wte", idx), fwd(m, "transformer.wpe", pos));
    x = nb_reshape(x, NB_SHAPE(B * T, EMB));
    for (int l = 0; l < LAYERS; l++) {
        char p[64];
        snprintf(p, sizeof p, "transformer.h.%d", l);
        nb_module *b = sub(m, p);
        /* q, k and v each from their rows of c_attn's (3 EMB, EMB) weight: the same products
         * as one (B T, 3 EMB) linear split in three, but the narrow backwards then scatter
         * into the small weight and bias instead of three zeroed (B T, 3 EMB) gradients that
         * the engine sums (Nabla has no one-node SplitBackward0 yet). */
        nb_module *ca = sub(b, "attn.c_attn");
        nb_tensor *w = nb_module_parameter(ca, 0), *bias = nb_module_parameter(ca, 1);
        nb_tensor *h = fwd(b, "ln_1", x), *hd[3];
        for (int k = 0; k < 3; k++) {
            nb_tensor *part = nb_linear(h, nb_narrow(w, 0, k * EMB, EMB),
                                        nb_narrow(bias, 0, k * EMB, EMB)); /* (B T, EMB) */
            hd[k] = nb_transpose(nb_view(part, NB_SHAPE(B, T, HEADS, D)), 1, 2); /* (B, H, T, D) */
        }
        nb_tensor *y = nb_scaled_dot_product_attention(hd[0], hd[1], hd[2],
                                                       (nb_sdpa_opts){.is_causal = true});
        nb_tensor *yc = nb_reshape(nb_transpose(y, 1, 2), NB_SHAPE(B * T, EMB));
        x = nb_add(x, fwd(b, "attn.c_proj", yc));
        nb_tensor *hid = nb_gelu_tanh(fwd(b, "mlp.c_fc", fwd(b, "ln_2", x)));
        x = nb_add(x, fwd(b, "mlp.c_proj", hid));
    }
    nb_tensor *logits = fwd(m, "lm_head", fwd(m, "transformer.ln_f", x));
    return nb_reshape(logits, NB_SHAPE(B, T, VOCAB));
}

/* Mean cross-entropy over the counted targets (ignore_index -1), in nats per character. */
static nb_tensor *gpt_loss(nb_module *m, const nb_tensor *x, const nb_tensor *y, nb_reduction r)
{
    nb_tensor *logits = gpt_forward(m, x);
    return nb_cross_entropy_ex(nb_reshape(logits, NB_SHAPE(-1, VOCAB)),
                               nb_reshape(y, NB_SHAPE(-1)),
                               (nb_class_loss_opts){.reduction = r, .ignore_index = -1,
                                                    .ignore_index_set = true});
}

static nb_tensor *batch_tensor(const int64_t *rows, const int64_t *pick, int64_t B)
{
    int64_t *buf = malloc((size_t)B * CTX * sizeof *buf);
    if (!buf)
        return NULL;
    for (int64_t b = 0; b < B; b++)
        memcpy(buf + b * CTX, rows + pick[b] * CTX, CTX * sizeof *buf);
    nb_tensor *t = nb_from_data(buf, NB_SHAPE(B, CTX), (nb_opts){.dtype = NB_DTYPE_I64});
    free(buf);
    return t;
}

/* The loss over a whole set, in chunks, weighted by counted characters. */
static double evaluate(nb_module *m, const dataset *d)
{
    double sum = 0, count = 0;
    int64_t chunk = 512, *pick = malloc((size_t)chunk * sizeof *pick);
    nb_no_grad_begin();
    for (int64_t s = 0; pick && s < d->n; s += chunk) {
        int64_t B = d->n - s < chunk ? d->n - s : chunk;
        for (int64_t b = 0; b < B; b++)
            pick[b] = s + b;
        for (int64_t k = 0; k < B * CTX; k++)
            count += d->y[s * CTX + k] >= 0;
        nb_scope_begin();
        double v = NAN;
        nb_tensor *l = gpt_loss(m, batch_tensor(d->x, pick, B), batch_tensor(d->y, pick, B),
                                NB_REDUCTION_SUM);
        if (!l || nb_item(l, &v) != NB_OK)
            fprintf(stderr, "nabla-makemore: evaluation failed: %s\n", nb_last_error());
        sum += v;
        nb_scope_end();
    }
    nb_no_grad_end();
    free(pick);
    return sum / count;
}

/* Sampling: softmax of the last position's logits, one multinomial draw at a time. */
static void sample_words(nb_module *m, int n)
{
    nb_no_grad_begin();
    for (int w = 0; w < n; w++) {
        int64_t ctx[CTX] = {0};
        char word[CTX] = {0};
        int len = 0;
        for (int t = 0; t < CTX - 1; t++) {
            nb_scope_begin();
            nb_tensor *x = nb_from_data(ctx, NB_SHAPE(1, t + 1), (nb_opts){.dtype = NB_DTYPE_I64});
            nb_tensor *logits = gpt_forward(m, x);
            nb_tensor *last = nb_select(nb_select(logits, 0, 0), 0, t);
            nb_tensor *p = nb_softmax(last, 0);
            float probs[VOCAB];
            int next = 0;
            if (p && nb_tensor_copy_to_host(p, probs, sizeof probs) == NB_OK) {
                double u = next_unit(), acc = 0;
                for (next = 0; next < VOCAB - 1; next++)
                    if ((acc += probs[next]) > u)
                        break;
            }
            nb_scope_end();
            if (next == 0)
                break;
            ctx[t + 1] = next;
            word[len++] = (char)('a' + next - 1);
        }
        printf("%s%s", w ? " " : "  ", word);
    }
    printf("\n");
    nb_no_grad_end();
}

/* ---------------------------------------------------------------- training */

static void usage(void)
{
    fprintf(stderr,
            "usage: nabla-makemore [options]\n"
            "  --words FILE       word list (default /usr/share/dict/words, package wamerican)\n"
            "  --steps N          optimizer steps (default 3000)\n"
            "  --batch N          words per step (default 32)\n"
            "  --lr X             peak learning rate (default 5e-4)\n"
            "  --warmup N         linear warmup steps (default 100), then cosine to lr/10\n"
            "  --eval-every N     train and validation loss every N steps (default 500)\n"
            "  --seed N           split, batches and sampling (default 1337)\n"
            "  --init-out FILE    save the initial weights (for bench/torch_makemore.py)\n"
            "  --init-in FILE     start from these weights\n"
            "  --losses-out FILE  write every step's training loss, one a line\n"
            "  --save FILE        checkpoint (safetensors, PyTorch's names; default makemore.safetensors)\n");
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
/* the process's CPU time: what a loaded machine's scheduler does not inflate */
static double cpu_now(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

int main(int argc, char **argv)
{
    const char *words_path = "/usr/share/dict/words", *init_out = NULL, *init_in = NULL;
    const char *losses_out = NULL, *save = "makemore.safetensors";
    int64_t steps = 3000, batch = 32, warmup = 100, eval_every = 500;
    double lr = 5e-4;
    uint64_t seed = 1337;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        }
        if (!v) {
            fprintf(stderr, "nabla-makemore: %s needs a value\n", a);
            usage();
            return 2;
        }
        i++;
        if (!strcmp(a, "--words")) words_path = v;
        else if (!strcmp(a, "--steps")) steps = atoll(v);
        else if (!strcmp(a, "--batch")) batch = atoll(v);
        else if (!strcmp(a, "--lr")) lr = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atoll(v);
        else if (!strcmp(a, "--eval-every")) eval_every = atoll(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--init-out")) init_out = v;
        else if (!strcmp(a, "--init-in")) init_in = v;
        else if (!strcmp(a, "--losses-out")) losses_out = v;
        else if (!strcmp(a, "--save")) save = v;
        else {
            fprintf(stderr, "nabla-makemore: unknown option %s\n", a);
            usage();
            return 2;
        }
    }
    if (steps < 0 || batch <= 0 || warmup < 0 || eval_every <= 0) {
        fprintf(stderr, "nabla-makemore: steps, batch, warmup and eval-every must be positive\n");
        return 2;
    }
    int64_t nw = 0;
    char **words = read_words(words_path, &nw);
    if (!words)
        return 1;
    if (nw < 10) {
        fprintf(stderr, "nabla-makemore: %s has only %lld usable words\n", words_path,
                (long long)nw);
        return 1;
    }
    /* the 90/10 split: a Fisher-Yates shuffle from the seed */
    rng = seed;
    int64_t *order = malloc((size_t)nw * sizeof *order);
    for (int64_t i = 0; order && i < nw; i++)
        order[i] = i;
    for (int64_t i = nw - 1; order && i > 0; i--) {
        int64_t j = (int64_t)(next_u64() % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int64_t n_train = nw * 9 / 10;
    dataset train = {0}, val = {0};
    if (!order || !make_set(&train, words, order, 0, n_train) ||
        !make_set(&val, words, order, n_train, nw)) {
        fprintf(stderr, "nabla-makemore: out of memory\n");
        return 1;
    }
    printf("nabla-makemore: %lld words from %s (%lld train, %lld validation), vocabulary %d, "
           "context %d\n", (long long)nw, words_path, (long long)train.n, (long long)val.n, VOCAB,
           CTX);

    nb_manual_seed(seed);
    nb_module *model = gpt_new((nb_opts){0});
    if (!model) {
        fprintf(stderr, "nabla-makemore: building the model failed: %s\n", nb_last_error());
        return 1;
    }
    if (init_in && nb_module_load(model, init_in) != NB_OK) {
        fprintf(stderr, "nabla-makemore: %s\n", nb_last_error());
        return 1;
    }
    if (init_out && nb_module_save(model, init_out) != NB_OK) {
        fprintf(stderr, "nabla-makemore: %s\n", nb_last_error());
        return 1;
    }
    int32_t np = nb_module_parameter_count(model);
    nb_tensor **params = malloc((size_t)np * sizeof *params);
    int64_t n_weights = 0;
    for (int32_t i = 0; i < np; i++) {
        params[i] = nb_module_parameter(model, i);
        n_weights += nb_tensor_numel(params[i]);
    }
    printf("model: %d layers, %d heads, embedding %d: %lld parameters\n", LAYERS, HEADS, EMB,
           (long long)n_weights);
    nb_optim *opt = nb_adamw_new(params, np, (nb_adam_opts){.lr = lr, .beta1 = 0.9,
                                                            .beta2 = 0.99, .eps = 1e-8,
                                                            .weight_decay = 0.01});
    FILE *lf = losses_out ? fopen(losses_out, "w") : NULL;
    int64_t *pick = malloc((size_t)batch * sizeof *pick);
    if (!opt || !pick || (losses_out && !lf)) {
        fprintf(stderr, "nabla-makemore: setting up training failed: %s\n", nb_last_error());
        return 1;
    }
    double t0 = now(), t_steps = 0, c_steps = 0, last_loss = NAN, last_val = NAN;
    rng = seed ^ 0x5DEECE66Dull; /* the batch stream, apart from the split's */
    for (int64_t step = 0; step < steps; step++) {
        double progress = warmup < steps ? (double)(step - warmup) / (double)(steps - warmup) : 1;
        double cur = step < warmup ? lr * (double)(step + 1) / (double)warmup
                                   : lr * 0.1 + 0.5 * (lr - lr * 0.1) * (1 + cos(M_PI * progress));
        nb_optim_set_lr(opt, cur);
        for (int64_t b = 0; b < batch; b++)
            pick[b] = (int64_t)(next_u64() % (uint64_t)train.n);
        double ts = now(), cs = cpu_now();
        nb_scope_begin();
        nb_tensor *loss = gpt_loss(model, batch_tensor(train.x, pick, batch),
                                   batch_tensor(train.y, pick, batch), NB_REDUCTION_MEAN);
        nb_status st = loss ? nb_optim_zero_grad(opt) : nb_last_status();
        if (st == NB_OK)
            st = nb_backward(loss, NULL, (nb_backward_opts){0});
        if (st == NB_OK)
            st = nb_clip_grad_norm_(params, np, 1.0, 2.0, NULL);
        if (st == NB_OK)
            st = nb_optim_step(opt);
        if (st == NB_OK)
            st = nb_item(loss, &last_loss);
        nb_scope_end();
        t_steps += now() - ts;
        c_steps += cpu_now() - cs;
        if (st != NB_OK) {
            fprintf(stderr, "\nnabla-makemore: step %lld failed: %s\n", (long long)step,
                    nb_last_error());
            return 1;
        }
        if (lf)
            fprintf(lf, "%.9g\n", last_loss);
        int width = 30, filled = (int)((double)(step + 1) / (double)steps * width);
        fprintf(stderr, "\r[%.*s%*s] %lld/%lld loss %.4f", filled,
                "##############################", width - filled, "", (long long)step + 1,
                (long long)steps, last_loss);
        if ((step + 1) % eval_every == 0 || step + 1 == steps) {
            double vl = last_val = evaluate(model, &val);
            fprintf(stderr, "\n");
            printf("step %lld: train loss %.4f, validation loss %.4f nats/char (lr %.2e, "
                   "%.1f ms/step)\n", (long long)step + 1, last_loss, vl, cur,
                   1e3 * t_steps / (double)(step + 1));
            fflush(stdout);
        }
    }
    if (lf)
        fclose(lf);
    if (!steps)
        printf("validation loss %.4f nats/char (untrained)\n", last_val = evaluate(model, &val));
    printf("step time %.3f ms (mean of %lld steps), total %.1f s\n",
           steps ? 1e3 * t_steps / (double)steps : 0.0, (long long)steps, now() - t0);
    /* for bench/compare_pytorch.sh */
    printf("makemore_step_ms %.3f\nmakemore_step_cpu_ms %.3f\nmakemore_val_loss %.6f\n",
           steps ? 1e3 * t_steps / (double)steps : 0.0,
           steps ? 1e3 * c_steps / (double)steps : 0.0, last_val);
    printf("samples:\n");
    rng = seed ^ 0xC0FFEEull;
    sample_words(model, 20);
    if (save && nb_module_save(model, save) != NB_OK) {
        fprintf(stderr, "nabla-makemore: saving %s failed: %s\n", save, nb_last_error());
        return 1;
    }
    if (save)
        printf("checkpoint: %s\n", save);
    nb_optim_free(opt);
    nb_module_free(model);
    free(params);
    free(pick);
    free(order);
    free(train.x), free(train.y), free(val.x), free(val.y);
    for (int64_t i = 0; i < nw; i++)
        free(words[i]);
    free(words);
    return nb_shutdown() == NB_OK ? 0 : 1;
}
