/* seed3_retain_graph.c - the second seed's warnings: gradients accumulate across backward calls
 * that retain the graph until zeroed, and a graph freed by backward cannot be run again. */
#include <stdio.h>

#include "nabla.h"

/* out.backward(ones_like(inp), retain_graph); print(inp.grad) */
static nb_status backward_and_print(nb_tensor *out, nb_tensor *inp, bool retain)
{
    nb_status st = nb_backward(out, nb_ones_like(inp), (nb_backward_opts){.retain_graph = retain});
    if (st != NB_OK)
        return st;
    nb_tensor *g = nb_tensor_grad(inp);
    return g ? nb_print(g) : NB_STATE;
}

int main(void)
{
    nb_scope_begin();
    nb_tensor *inp = nb_eye(3, 0, (nb_opts){.requires_grad = true});
    nb_tensor *out = nb_pow_scalar(nb_add_scalar(inp, 1), 2);
    nb_status st = out ? NB_OK : nb_last_status();
    if (st == NB_OK)
        st = backward_and_print(out, inp, true); /* 2 (inp + 1): 4 on the diagonal, 2 off it */
    if (st == NB_OK)
        st = backward_and_print(out, inp, true); /* accumulated: doubled */
    if (st == NB_OK) {
        st = nb_zero_(nb_tensor_grad(inp)); /* inp.grad.zero_() */
        if (st == NB_OK)
            st = backward_and_print(out, inp, true);
    }
    if (st == NB_OK) {
        /* The last backward that may run frees the graph; the next one must fail. */
        printf("backward without retain_graph: %s\n",
               nb_status_str(nb_backward(out, nb_ones_like(inp), (nb_backward_opts){0})));
        nb_status again = nb_backward(out, nb_ones_like(inp), (nb_backward_opts){0});
        printf("second backward without retain_graph: %s\n", nb_status_str(again));
        if (again == NB_OK) {
            fprintf(stderr, "seed3_retain_graph: the second backward should have failed\n");
            st = NB_STATE;
        } else {
            printf("RuntimeError: %s\n", nb_last_error());
            nb_clear_error();
        }
    }
    nb_scope_end();
    if (st != NB_OK)
        fprintf(stderr, "seed3_retain_graph: %s\n", nb_last_error());
    return nb_shutdown() == NB_OK && st == NB_OK ? 0 : 1;
}
