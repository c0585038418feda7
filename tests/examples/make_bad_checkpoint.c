/* make_bad_checkpoint.c - writes a LeNet checkpoint whose names are all right but whose
 * conv1.weight has the wrong shape (6, 1, 5, 5), to test that loading refuses it. */
#include <stdio.h>
#include <string.h>

#include "lenet.h"
#include "nabla.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_bad_checkpoint FILE.safetensors\n");
        return 2;
    }
    nb_module *net = lenet_new((nb_opts){0});
    if (!net) {
        fprintf(stderr, "make_bad_checkpoint: %s\n", nb_last_error());
        return 1;
    }
    enum { MAX_STATE = 64 };
    nb_tensor *ts[MAX_STATE];
    const char *names[MAX_STATE];
    int32_t n = nb_module_state_count(net);
    nb_tensor *wrong = nb_zeros(NB_SHAPE(6, 1, 5, 5), (nb_opts){0});
    int rc = n > 0 && n <= MAX_STATE && wrong ? 0 : 1;
    for (int32_t i = 0; !rc && i < n; i++) {
        ts[i] = nb_module_state(net, i, &names[i]);
        if (strcmp(names[i], "conv1.weight") == 0)
            ts[i] = wrong;
    }
    if (!rc && nb_safetensors_save(argv[1], ts, names, n) != NB_OK)
        rc = 1;
    if (rc)
        fprintf(stderr, "make_bad_checkpoint: %s\n", nb_last_error());
    nb_release(wrong);
    nb_module_free(net);
    nb_shutdown();
    return rc;
}
