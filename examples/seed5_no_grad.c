/* seed5_no_grad.c - the second seed's "disabling gradient tracking": a result requires grad,
 * the same computation under no-grad does not, and neither does a detached tensor. */
#include <stdio.h>

#include "nabla.h"

static const char *py_bool(bool b) { return b ? "True" : "False"; }

int main(void)
{
    nb_manual_seed(0);
    nb_scope_begin();
    const nb_opts rg = {.requires_grad = true};
    nb_tensor *x = nb_ones(NB_SHAPE(5), (nb_opts){0});
    nb_tensor *w = nb_randn(NB_SHAPE(5, 3), rg);
    nb_tensor *b = nb_randn(NB_SHAPE(3), rg);

    nb_tensor *z = nb_add(nb_matmul(x, w), b);
    bool tracked = nb_tensor_requires_grad(z);

    nb_no_grad_begin(); /* with torch.no_grad(): */
    nb_tensor *z_ng = nb_add(nb_matmul(x, w), b);
    nb_no_grad_end();
    bool no_grad = nb_tensor_requires_grad(z_ng);

    nb_tensor *z_det = nb_detach(z);
    bool detached = nb_tensor_requires_grad(z_det);

    nb_status st = z && z_ng && z_det ? NB_OK : nb_last_status();
    if (st == NB_OK) {
        printf("%s\n%s\n%s\n", py_bool(tracked), py_bool(no_grad), py_bool(detached));
        if (!tracked || no_grad || detached)
            st = NB_STATE;
    }
    nb_scope_end();
    if (st != NB_OK)
        fprintf(stderr, "seed5_no_grad: %s\n", st == NB_STATE ? "unexpected requires_grad"
                                                              : nb_last_error());
    return nb_shutdown() == NB_OK && st == NB_OK ? 0 : 1;
}
