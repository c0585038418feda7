/* seed4_dynamic_graph.c - the second seed's dynamic graph: a data-dependent loop of doublings
 * builds a different graph each run; d c / d a = 2^(doublings + 1) whatever a was. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "nabla.h"

int main(int argc, char **argv)
{
    nb_manual_seed(argc > 1 ? (uint64_t)strtoull(argv[1], NULL, 10) : 0);
    nb_scope_begin();
    nb_tensor *a = nb_randn(NB_SHAPE_SCALAR, (nb_opts){.requires_grad = true});
    /* func(a): b = a * 2; while b.norm() < 1000: b = b * 2 */
    nb_tensor *b = nb_mul_scalar(a, 2);
    int doublings = 0;
    double norm = 0;
    nb_status st = NB_OK;
    while ((st = nb_item(nb_norm(b, 2, NULL, 0, false), &norm)) == NB_OK && norm < 1000) {
        b = nb_mul_scalar(b, 2);
        doublings++;
    }
    double av = 0, grad = 0;
    if (st == NB_OK)
        st = nb_item(a, &av);
    if (st == NB_OK)
        st = nb_backward(b, NULL, (nb_backward_opts){0}); /* c.backward() */
    nb_tensor *g = st == NB_OK ? nb_tensor_grad(a) : NULL;
    if (g && nb_item(g, &grad) == NB_OK) {
        double expected = ldexp(1.0, doublings + 1);
        printf("a = %.4f, doublings in the loop = %d\n", av, doublings);
        printf("a.grad = ");
        nb_print(g);
        printf("expected 2^%d = %.0f\n", doublings + 1, expected);
        printf("a.grad == 2^(doublings+1): %s\n", grad == expected ? "True" : "False");
        if (grad != expected)
            st = NB_STATE;
    } else if (st == NB_OK) {
        st = nb_last_status() != NB_OK ? nb_last_status() : NB_STATE;
    }
    nb_scope_end();
    if (st != NB_OK && nb_last_status() != NB_OK)
        fprintf(stderr, "seed4_dynamic_graph: %s\n", nb_last_error());
    return nb_shutdown() == NB_OK && st == NB_OK ? 0 : 1;
}
