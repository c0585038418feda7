/* seed6_two_layer.c - the first seed's two-layer network trained with raw tensors and autograd:
 * y_pred = relu(x w1) w2, squared-error loss, plain gradient descent, 500 steps. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "nabla.h"

/* Python's repr of a float: the shortest decimal that reads back as the same double. */
static void print_py_float(double v)
{
    char buf[64];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    /* repr keeps a ".0" on integral values in plain notation */
    bool plain = true;
    for (const char *p = buf; *p; p++)
        if (*p == '.' || *p == 'e' || *p == 'n' || *p == 'i')
            plain = false;
    printf("%s%s", buf, plain ? ".0" : "");
}

int main(void)
{
    enum { N = 64, D_IN = 1000, H = 100, D_OUT = 10, STEPS = 500 };
    const double learning_rate = 1e-6;
    nb_manual_seed(0);
    const nb_opts rg = {.requires_grad = true};
    nb_tensor *x = nb_randn(NB_SHAPE(N, D_IN), (nb_opts){0});
    nb_tensor *y = nb_randn(NB_SHAPE(N, D_OUT), (nb_opts){0});
    nb_tensor *w1 = nb_randn(NB_SHAPE(D_IN, H), rg);
    nb_tensor *w2 = nb_randn(NB_SHAPE(H, D_OUT), rg);
    nb_status st = x && y && w1 && w2 ? NB_OK : nb_last_status();

    for (int t = 0; t < STEPS && st == NB_OK; t++) {
        nb_scope_begin();
        nb_tensor *y_pred = nb_mm(nb_clamp(nb_mm(x, w1), 0, NAN), w2);
        nb_tensor *loss = nb_sum(nb_pow_scalar(nb_sub(y_pred, y), 2), NULL, 0, false);
        double lv = 0;
        st = nb_item(loss, &lv);
        if (st == NB_OK && t % 100 == 99) {
            printf("%d ", t);
            print_py_float(lv);
            printf("\n");
        }
        if (st == NB_OK)
            st = nb_backward(loss, NULL, (nb_backward_opts){0});
        if (st == NB_OK) {
            nb_tensor *g1 = nb_tensor_grad(w1), *g2 = nb_tensor_grad(w2);
            nb_no_grad_begin(); /* with torch.no_grad(): the update is not part of the graph */
            st = nb_add_scaled_(w1, g1, -learning_rate);
            if (st == NB_OK)
                st = nb_add_scaled_(w2, g2, -learning_rate);
            if (st == NB_OK)
                st = nb_zero_(g1); /* w1.grad.zero_() */
            if (st == NB_OK)
                st = nb_zero_(g2);
            nb_no_grad_end();
        }
        nb_scope_end();
    }
    if (st != NB_OK)
        fprintf(stderr, "seed6_two_layer: %s\n", nb_last_error());
    nb_release(x);
    nb_release(y);
    nb_release(w1);
    nb_release(w2);
    return nb_shutdown() == NB_OK && st == NB_OK ? 0 : 1;
}
