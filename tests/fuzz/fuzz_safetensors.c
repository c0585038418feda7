/* fuzz_safetensors.c - the safetensors loader: the bytes become a file, nb_safetensors_load
 * reads it onto the cpu, and every tensor it returns is read back whole (so a header that
 * promises more data than the file holds would show up under ASan). */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_temp_path(".safetensors");
    if (!fuzz_write_file(path, data, size))
        abort();
    nb_tensor **ts = NULL;
    char **names = NULL;
    int32_t n = 0;
    if (nb_safetensors_load(path, "cpu", &ts, &names, &n) == NB_OK) {
        for (int32_t k = 0; k < n; k++) {
            if (!ts[k] || !names[k])
                abort();
            (void)strlen(names[k]);
            int64_t numel = nb_tensor_numel(ts[k]);
            size_t es = nb_dtype_size(nb_tensor_dtype(ts[k]));
            if (numel < 0 || (numel && (size_t)numel > size * 8 / es + 8))
                abort(); /* more elements than the file could hold */
            void *host = malloc(numel ? (size_t)numel * es : 1);
            if (nb_tensor_copy_to_host(ts[k], host, (size_t)numel * es) != NB_OK)
                abort();
            free(host);
        }
        nb_safetensors_free(ts, names, n);
    }
    (void)strlen(nb_last_error());
    unlink(path);
    fuzz_check_clean();
    return 0;
}
