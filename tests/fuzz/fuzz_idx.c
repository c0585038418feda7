/* fuzz_idx.c - nabla-train's IDX reader (examples/mnist.c): the bytes become a file (gzip, or
 * plain bytes, which zlib reads through as they are) read as an image file or a label file. */
#include "fuzz_common.h"
#include "mnist.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* the first byte chooses images (3 sizes) or labels (1) */
    bool images = data[0] & 1;
    const char *path = fuzz_temp_path(".idx.gz");
    if (!fuzz_write_file(path, data + 1, size - 1))
        abort();
    uint8_t *items = NULL;
    int64_t n = 0;
    char err[512] = "";
    if (mnist_read_idx(path, images ? MNIST_IMAGE_MAGIC : MNIST_LABEL_MAGIC, images ? 3 : 1,
                       &items, &n, err, sizeof err)) {
        size_t bytes = (size_t)n * (images ? MNIST_SIDE * MNIST_SIDE : 1);
        volatile uint8_t sum = 0;
        for (size_t k = 0; k < bytes; k++) /* every byte it claims is there */
            sum += items[k];
        free(items);
    } else if (items || !err[0] || !strstr(err, path)) {
        abort(); /* a failure names the file and hands back nothing */
    }
    unlink(path);
    return 0;
}
