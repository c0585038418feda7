/* mnist.c - IDX reader over zlib (gzopen/gzread) with every header field checked, and the batch
 * builder that pads 28 x 28 images to LeNet's 32 x 32. */
#include "mnist.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

const char *const fashion_mnist_classes[MNIST_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot",
};

static bool fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return false;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads exactly len bytes; gzread returns fewer at the end of a truncated file. */
static bool read_exact(gzFile f, void *buf, size_t len, const char *path, const char *what,
                       char *err, size_t errlen)
{
    unsigned char *p = buf;
    size_t got = 0;
    while (got < len) {
        size_t chunk = len - got > (1u << 30) ? (1u << 30) : len - got;
        int r = gzread(f, p + got, (unsigned)chunk);
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            return fail(err, errlen, "%s: cannot read %s: %s", path, what,
                        zerr == Z_ERRNO ? strerror(errno) : msg);
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    if (got < len) {
        /* a gzip stream cut short reports Z_BUF_ERROR only through gzerror */
        int zerr = Z_OK;
        gzerror(f, &zerr);
        return fail(err, errlen, "%s: truncated: %s needs %zu bytes, the file holds %zu%s", path,
                    what, len, got, zerr == Z_BUF_ERROR ? " (gzip stream ends early)" : "");
    }
    return true;
}

/* Opens one IDX file and checks its header: magic, then `ndims` sizes. Returns the open file
 * positioned at the data, the count in *n. */
static gzFile open_idx(const char *path, uint32_t magic, int ndims, int64_t *n, char *err,
                       size_t errlen)
{
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        fail(err, errlen, "%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
        return NULL;
    }
    unsigned char hdr[16];
    size_t hdr_len = 4 + 4 * (size_t)ndims;
    if (!read_exact(f, hdr, hdr_len, path, "the IDX header", err, errlen))
        goto bad;
    uint32_t got = be32(hdr);
    if (got != magic) {
        fail(err, errlen, "%s: bad magic number %u (0x%08x), expected %u for an IDX %s file", path,
             got, got, magic, magic == MNIST_IMAGE_MAGIC ? "image" : "label");
        goto bad;
    }
    *n = be32(hdr + 4);
    if (*n == 0) {
        fail(err, errlen, "%s: the header says 0 items", path);
        goto bad;
    }
    if (ndims == 3) {
        uint32_t rows = be32(hdr + 8), cols = be32(hdr + 12);
        if (rows != MNIST_SIDE || cols != MNIST_SIDE) {
            fail(err, errlen, "%s: images are %u x %u, expected %d x %d", path, rows, cols,
                 MNIST_SIDE, MNIST_SIDE);
            goto bad;
        }
    }
    return f;
bad:
    gzclose(f);
    return NULL;
}

/* After the last item nothing may follow: extra bytes mean the header's count is wrong. */
static bool check_end(gzFile f, const char *path, char *err, size_t errlen)
{
    unsigned char extra;
    int r = gzread(f, &extra, 1);
    if (r > 0)
        return fail(err, errlen, "%s: data continues past the count in the header", path);
    return true;
}

bool mnist_load(const char *dir, const char *prefix, int64_t limit, mnist_set *set, char *err,
                size_t errlen)
{
    memset(set, 0, sizeof *set);
    char ipath[4096], lpath[4096];
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);

    int64_t ni = 0, nl = 0;
    gzFile fi = open_idx(ipath, MNIST_IMAGE_MAGIC, 3, &ni, err, errlen);
    if (!fi)
        return false;
    gzFile fl = open_idx(lpath, MNIST_LABEL_MAGIC, 1, &nl, err, errlen);
    if (!fl) {
        gzclose(fi);
        return false;
    }
    bool ok = false;
    if (ni != nl) {
        fail(err, errlen, "%s holds %lld images but %s holds %lld labels", ipath, (long long)ni,
             lpath, (long long)nl);
        goto done;
    }
    const size_t px = MNIST_SIDE * MNIST_SIDE;
    set->images = malloc((size_t)ni * px);
    set->labels = malloc((size_t)nl);
    if (!set->images || !set->labels) {
        fail(err, errlen, "out of memory for %lld images", (long long)ni);
        goto done;
    }
    /* Read everything even with a limit, so a damaged file is reported the same way. */
    if (!read_exact(fi, set->images, (size_t)ni * px, ipath, "the pixel data", err, errlen) ||
        !check_end(fi, ipath, err, errlen) ||
        !read_exact(fl, set->labels, (size_t)nl, lpath, "the label data", err, errlen) ||
        !check_end(fl, lpath, err, errlen))
        goto done;
    for (int64_t k = 0; k < nl; k++)
        if (set->labels[k] >= MNIST_CLASSES) {
            fail(err, errlen, "%s: label %u at index %lld, expected 0..%d", lpath,
                 set->labels[k], (long long)k, MNIST_CLASSES - 1);
            goto done;
        }
    set->n = limit > 0 && limit < ni ? limit : ni;
    ok = true;
done:
    gzclose(fi);
    gzclose(fl);
    if (!ok)
        mnist_free(set);
    return ok;
}

void mnist_free(mnist_set *set)
{
    if (!set)
        return;
    free(set->images);
    free(set->labels);
    memset(set, 0, sizeof *set);
}

void mnist_batch(const mnist_set *set, const int64_t *idx, int64_t count, bool normalize, float *x,
                 int64_t *y)
{
    const int pad = (MNIST_PADDED - MNIST_SIDE) / 2;
    const float scale = normalize ? 1.0f / (255.0f * FASHION_MNIST_STD) : 1.0f / 255.0f;
    const float border = normalize ? -FASHION_MNIST_MEAN / FASHION_MNIST_STD : 0.0f;
    const float shift = normalize ? border : 0.0f;
    for (int64_t b = 0; b < count; b++) {
        const uint8_t *src = set->images + idx[b] * MNIST_SIDE * MNIST_SIDE;
        float *dst = x + b * MNIST_PADDED * MNIST_PADDED;
        for (int i = 0; i < MNIST_PADDED * MNIST_PADDED; i++)
            dst[i] = border;
        for (int r = 0; r < MNIST_SIDE; r++)
            for (int c = 0; c < MNIST_SIDE; c++)
                dst[(r + pad) * MNIST_PADDED + c + pad] = src[r * MNIST_SIDE + c] * scale + shift;
        y[b] = set->labels[idx[b]];
    }
}
