/* steady_memory - trains the seed's two-layer net (N=64, D_in=1000, H=100, D_out=10) for many
 * steps and checks that resident memory stops growing after the first 100: the caching
 * allocator, scopes and autograd graph must give everything back each step.
 * Usage: steady_memory [steps] (default 10000). Exit 0 when flat; with fewer than 200 steps it
 * only trains (for leak checkers, which are too slow for the long run). */
#include "nabla.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

int main(int argc, char **argv)
{
    long steps = argc > 1 ? strtol(argv[1], NULL, 10) : 10000;
    if (steps < 1) {
        fprintf(stderr, "steady_memory: steps must be positive, got %ld\n", steps);
        return 2;
    }
    nb_manual_seed(0);
    nb_tensor *x = nb_randn(NB_SHAPE(64, 1000), (nb_opts){0});
    nb_tensor *y = nb_randn(NB_SHAPE(64, 10), (nb_opts){0});
    nb_tensor *w1 = nb_randn(NB_SHAPE(1000, 100), (nb_opts){.requires_grad = true});
    nb_tensor *w2 = nb_randn(NB_SHAPE(100, 10), (nb_opts){.requires_grad = true});
    double at100 = 0, peak_after = 0, loss = NAN;
    for (long t = 0; t < steps; t++) {
        nb_scope_begin();
        nb_tensor *pred = nb_mm(nb_clamp(nb_mm(x, w1), 0, NAN), w2);
        nb_tensor *l = nb_sum(nb_pow_scalar(nb_sub(pred, y), 2), NULL, 0, false);
        nb_status st = l ? nb_backward(l, NULL, (nb_backward_opts){0}) : nb_last_status();
        if (st == NB_OK)
            st = nb_item(l, &loss);
        nb_no_grad_begin();
        if (st == NB_OK)
            st = nb_add_scaled_(w1, nb_tensor_grad(w1), -1e-6);
        if (st == NB_OK)
            st = nb_add_scaled_(w2, nb_tensor_grad(w2), -1e-6);
        nb_no_grad_end();
        nb_tensor_zero_grad(w1);
        nb_tensor_zero_grad(w2);
        nb_scope_end();
        if (st != NB_OK) {
            fprintf(stderr, "steady_memory: step %ld: %s\n", t, nb_last_error());
            return 1;
        }
        if (t == 99)
            at100 = rss_mb();
        if (t >= 100) {
            double r = rss_mb();
            peak_after = r > peak_after ? r : peak_after;
        }
    }
    nb_tensor *all[] = {x, y, w1, w2};
    for (int k = 0; k < 4; k++)
        nb_release(all[k]);
    /* A page or two of jitter (stdio, the allocator's trimming) is not growth; 1 MB is. */
    double growth = peak_after - at100;
    printf("steps %ld loss %g rss_at_100 %.2f MB peak_after %.2f MB growth %.2f MB\n", steps, loss,
           at100, peak_after, growth);
    if (nb_shutdown() != NB_OK) {
        fprintf(stderr, "steady_memory: %s\n", nb_last_error());
        return 1;
    }
    return steps < 200 || growth < 1.0 ? 0 : 1;
}
