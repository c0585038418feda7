/* seed2_bce.c - the second seed: a one-layer net z = x @ w + b with a binary cross-entropy
 * (logits) loss; prints the grad_fns and the gradients of w and b. */
#include <stdio.h>

#include "nabla.h"

static void print_fn(const char *what, const nb_tensor *t)
{
    const nb_grad_fn *fn = nb_tensor_grad_fn(t);
    printf("Gradient function for %s = <%s>\n", what, fn ? nb_grad_fn_name(fn) : "None");
}

int main(void)
{
    nb_manual_seed(0);
    nb_scope_begin();
    const nb_opts rg = {.requires_grad = true};
    nb_tensor *x = nb_ones(NB_SHAPE(5), (nb_opts){0});  /* input */
    nb_tensor *y = nb_zeros(NB_SHAPE(3), (nb_opts){0}); /* expected output */
    nb_tensor *w = nb_randn(NB_SHAPE(5, 3), rg);
    nb_tensor *b = nb_randn(NB_SHAPE(3), rg);
    nb_tensor *z = nb_add(nb_matmul(x, w), b);
    nb_tensor *loss = nb_binary_cross_entropy_with_logits(z, y, NB_REDUCTION_MEAN);
    nb_status st = loss ? NB_OK : nb_last_status();
    if (st == NB_OK) {
        print_fn("z", z);
        print_fn("loss", loss);
        st = nb_backward(loss, NULL, (nb_backward_opts){0});
    }
    if (st == NB_OK) {
        nb_tensor *gw = nb_tensor_grad(w), *gb = nb_tensor_grad(b);
        if (gw && gb) {
            nb_print(gw);
            nb_print(gb);
        } else {
            st = NB_STATE;
        }
    }
    nb_scope_end();
    if (st != NB_OK)
        fprintf(stderr, "seed2_bce: %s\n", nb_last_error());
    return nb_shutdown() == NB_OK && st == NB_OK ? 0 : 1;
}
