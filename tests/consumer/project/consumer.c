/* consumer.c - an application built against an installed Nabla (by CMake's find_package and by
 * pkg-config): adds two tensors on the CPU and checks the sum. Exit 77 when no CPU device. */
#include <nabla.h>

#include <stdio.h>

int main(void)
{
    if (nb_device_count("cpu") <= 0) {
        printf("consumer: no cpu device (%s): skipped\n", nb_last_error());
        return 77;
    }
    const float a_data[] = {1, 2, 3, 4, 5, 6}, b_data[] = {10, 20, 30};
    nb_tensor *a = nb_from_data(a_data, NB_SHAPE(2, 3), (nb_opts){.device = "cpu"});
    nb_tensor *b = nb_from_data(b_data, NB_SHAPE(3), (nb_opts){.device = "cpu"});
    nb_tensor *c = nb_add(a, b); /* b broadcasts over the rows */
    float got[6] = {0};
    int bad = !c || nb_tensor_copy_to_host(c, got, sizeof got) != NB_OK;
    for (int k = 0; k < 6 && !bad; k++)
        bad = got[k] != a_data[k] + b_data[k % 3];
    if (bad)
        printf("consumer: add failed: %s\n", c ? "wrong values" : nb_last_error());
    nb_release(a);
    nb_release(b);
    nb_release(c);
    if (nb_shutdown() != NB_OK) {
        printf("consumer: %s\n", nb_last_error());
        bad = 1;
    }
    if (!bad)
        printf("consumer: [1,2,3;4,5,6] + [10,20,30] = [%g,%g,%g;%g,%g,%g]\n", got[0], got[1],
               got[2], got[3], got[4], got[5]);
    return bad;
}
