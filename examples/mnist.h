/* mnist.h - reads (Fashion-)MNIST gzipped IDX files and builds padded, scaled training batches. */
#ifndef NB_EXAMPLES_MNIST_H
#define NB_EXAMPLES_MNIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MNIST_IMAGE_MAGIC 2051
#define MNIST_LABEL_MAGIC 2049
#define MNIST_CLASSES 10
#define MNIST_SIDE 28  /* stored images are 28 x 28 */
#define MNIST_PADDED 32 /* LeNet's input: a zero border of 2 */

/* Fashion-MNIST's pixel statistics over the training set, after scaling to [0, 1]. */
#define FASHION_MNIST_MEAN 0.2860f
#define FASHION_MNIST_STD 0.3530f

typedef struct mnist_set {
    int64_t n;        /* images (== labels) */
    uint8_t *images;  /* n x 28 x 28, row-major */
    uint8_t *labels;  /* n, each in 0..9 */
} mnist_set;

/* Loads DIR/PREFIX-images-idx3-ubyte.gz and DIR/PREFIX-labels-idx1-ubyte.gz (PREFIX "train" or
 * "t10k"), checking magic numbers, counts, 28 x 28 sizes, truncation and labels. On failure
 * returns false with a message naming the file and the problem in err. limit > 0 keeps only the
 * first `limit` images. */
bool mnist_load(const char *dir, const char *prefix, int64_t limit, mnist_set *set, char *err,
                size_t errlen);
void mnist_free(mnist_set *set);

/* Reads one gzipped IDX file whole: magic, ndims big-endian sizes (images must be 28 x 28), then
 * exactly count items and nothing after them, every gzread checked (a damaged stream or a failed
 * CRC is an error naming the file). On success *data (free() it) holds the items, *n their
 * count. The fuzz harness tests/fuzz/fuzz_idx.c calls it. */
bool mnist_read_idx(const char *path, uint32_t magic, int ndims, uint8_t **data, int64_t *n,
                    char *err, size_t errlen);

/* Fills x (count x 1 x 32 x 32 floats) and y (count int64 labels) with images idx[0..count):
 * pixels scaled to [0, 1], the 28 x 28 image centred on a zero border of 2, then (if normalize)
 * shifted and scaled by the dataset mean and std, border included, as torchvision's
 * Compose([Pad(2), ToTensor(), Normalize(mean, std)]) does. */
void mnist_batch(const mnist_set *set, const int64_t *idx, int64_t count, bool normalize, float *x,
                 int64_t *y);

/* Class names of Fashion-MNIST, index = label. */
extern const char *const fashion_mnist_classes[MNIST_CLASSES];

#endif
