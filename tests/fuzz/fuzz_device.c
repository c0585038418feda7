/* fuzz_device.c - device strings: the bytes are a string handed to nb_device_parse (with output
 * buffers of every small size) and as nb_opts.device to a creation function. */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* the first byte chooses the output buffer's size, the rest is the string */
    size_t len = data[0] % 80;
    char *s = malloc(size);
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    char *buf = malloc(len ? len : 1);
    nb_status st = nb_device_parse(s, len ? buf : NULL, len);
    if (st == NB_OK && len && strnlen(buf, len) == len)
        abort(); /* a canonical name must come back terminated */
    (void)strlen(nb_last_error()); /* the message is a terminated string */
    nb_clear_error();
    nb_tensor *t = nb_zeros(NB_SHAPE(2), (nb_opts){.device = s});
    if (t && strcmp(nb_tensor_device(t), "cpu") != 0)
        abort(); /* only cpu exists here */
    (void)strlen(nb_last_error());
    nb_release(t);
    nb_clear_error();
    free(buf);
    free(s);
    fuzz_check_clean();
    return 0;
}
