/* seed7_lenet.c - the third seed (60 minute blitz, "neural networks"): LeNet printed, its
 * parameters, one forward pass, an MSE loss, the graph behind it, backward, and an SGD step. */
#include <stdio.h>
#include <string.h>

#include "lenet.h"
#include "nabla.h"

static void print_size(const nb_tensor *t)
{
    nb_shape s = nb_tensor_shape(t);
    printf("torch.Size([");
    for (int i = 0; i < s.ndim; i++)
        printf("%s%lld", i ? ", " : "", (long long)s.dims[i]);
    printf("])\n");
}

static void print_fn(const nb_grad_fn *fn)
{
    printf("<%s>\n", fn ? nb_grad_fn_name(fn) : "None");
}

/* print(net.conv1.bias.grad): None when there is none, as torch >= 2 prints after zero_grad */
static void print_grad(const nb_tensor *p)
{
    nb_tensor *g = nb_tensor_grad(p);
    if (g)
        nb_print(g);
    else
        printf("None\n");
}

/* The bias of conv1: the second parameter of the net. */
static nb_tensor *conv1_bias(nb_module *net)
{
    for (int32_t i = 0; i < nb_module_parameter_count(net); i++)
        if (strcmp(nb_module_parameter_name(net, i), "conv1.bias") == 0)
            return nb_module_parameter(net, i);
    return NULL;
}

static nb_status run(nb_module *net)
{
    char *repr = nb_module_str(net);
    if (!repr)
        return nb_last_status();
    printf("%s\n", repr);
    nb_free(repr);

    int32_t n_params = nb_module_parameter_count(net);
    printf("%d\n", n_params);
    nb_tensor *p0 = nb_module_parameter(net, 0);
    if (!p0)
        return nb_last_status();
    print_size(p0); /* conv1's .weight */

    nb_tensor *input = nb_randn(NB_SHAPE(1, 1, 32, 32), (nb_opts){0});
    nb_tensor *out = nb_module_forward(net, input);
    if (!out)
        return nb_last_status();
    nb_print(out);

    nb_tensor *target = nb_view(nb_randn(NB_SHAPE(10), (nb_opts){0}), NB_SHAPE(1, -1));
    nb_tensor *loss = nb_mse_loss(out, target, NB_REDUCTION_MEAN);
    if (!loss)
        return nb_last_status();
    nb_print(loss);

    const nb_grad_fn *fn = nb_tensor_grad_fn(loss);
    print_fn(fn);                                  /* MSELoss */
    fn = fn ? nb_grad_fn_next(fn, 0) : NULL;
    print_fn(fn);                                  /* Linear */
    print_fn(fn ? nb_grad_fn_next(fn, 0) : NULL); /* ReLU, or what the linear layer is made of */

    nb_tensor *bias = conv1_bias(net);
    if (!bias)
        return nb_last_status() != NB_OK ? nb_last_status() : NB_STATE;
    nb_status st = nb_module_zero_grad(net);
    if (st != NB_OK)
        return st;
    printf("conv1.bias.grad before backward\n");
    print_grad(bias);
    if ((st = nb_backward(loss, NULL, (nb_backward_opts){0})) != NB_OK)
        return st;
    printf("conv1.bias.grad after backward\n");
    print_grad(bias);

    /* optimizer = optim.SGD(net.parameters(), lr=0.01); one step of the training loop */
    nb_optim *opt = nb_sgd_new_for(net, (nb_sgd_opts){.lr = 0.01});
    if (!opt)
        return nb_last_status();
    double before = 0, after = 0;
    st = nb_optim_zero_grad(opt);
    nb_tensor *l1 = st == NB_OK ? nb_mse_loss(nb_module_forward(net, input), target,
                                              NB_REDUCTION_MEAN) : NULL;
    if (l1 && (st = nb_item(l1, &before)) == NB_OK && (st = nb_backward(l1, NULL, (nb_backward_opts){0})) == NB_OK)
        st = nb_optim_step(opt);
    else if (!l1 && st == NB_OK)
        st = nb_last_status();
    nb_tensor *l2 = st == NB_OK ? nb_mse_loss(nb_module_forward(net, input), target,
                                              NB_REDUCTION_MEAN) : NULL;
    if (st == NB_OK && !l2)
        st = nb_last_status();
    if (st == NB_OK && (st = nb_item(l2, &after)) == NB_OK)
        printf("loss before the SGD step %.4f, after %.4f\n", before, after);
    nb_optim_free(opt);
    return st;
}

int main(void)
{
    nb_manual_seed(0);
    nb_module *net = lenet_new((nb_opts){0});
    nb_status st = net ? NB_OK : nb_last_status();
    if (st == NB_OK) {
        nb_scope_begin();
        st = run(net);
        nb_scope_end();
    }
    if (st != NB_OK)
        fprintf(stderr, "seed7_lenet: %s\n", nb_last_error());
    nb_module_free(net);
    return nb_shutdown() == NB_OK && st == NB_OK ? 0 : 1;
}
