/* seed1_autograd.c - the first seed tutorial: out = mean(3 (x + 2)^2) on a 2x2 of ones, printed
 * with its grad_fns, then d out / dx = 4.5 everywhere. */
#include <stdio.h>

#include "nabla.h"

int main(void)
{
    nb_scope_begin();
    nb_tensor *x = nb_ones(NB_SHAPE(2, 2), (nb_opts){.requires_grad = true});
    nb_tensor *y = nb_add_scalar(x, 2);
    nb_tensor *z = nb_mul_scalar(nb_mul(y, y), 3);
    nb_tensor *out = nb_mean(z, NULL, 0, false);
    nb_status st = out ? NB_OK : nb_last_status();
    if (st == NB_OK) {
        nb_print(x);
        nb_print(y);
        nb_print(z);
        nb_print(out);
        st = nb_backward(out, NULL, (nb_backward_opts){0});
    }
    nb_tensor *grad = st == NB_OK ? nb_tensor_grad(x) : NULL;
    if (grad)
        nb_print(grad);
    else if (st == NB_OK)
        st = NB_STATE; /* a leaf that required grad must have one after backward */
    nb_scope_end();
    if (st != NB_OK)
        fprintf(stderr, "seed1_autograd: %s\n", nb_last_error());
    return nb_shutdown() == NB_OK && st == NB_OK ? 0 : 1;
}
