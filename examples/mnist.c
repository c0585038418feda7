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

/* zlib's message for the stream, without the "path: " it puts in front. */
static const char *gz_message(gzFile f, const char *path)
{
    int zerr = Z_OK;
    const char *msg = gzerror(f, &zerr);
    size_t n = strlen(path);
    if (zerr == Z_ERRNO)
        return strerror(errno);
    if (zerr == Z_BUF_ERROR)
        return "the gzip stream ends early";
    return strncmp(msg, path, n) == 0 && strncmp(msg + n, ": ", 2) == 0 ? msg + n + 2 : msg;
}

/* Reads up to len bytes; *got says how many came (fewer only at the end of the stream). Every
 * gzread is checked: -1 is a damaged stream (a bad deflate block, or "incorrect data check"
 * when the CRC of the whole file fails, which zlib reports only on the last read). */
static bool read_some(gzFile f, unsigned char *p, size_t len, size_t *got, const char *path,
                      const char *what, char *err, size_t errlen)
{
    *got = 0;
    while (*got < len) {
        size_t chunk = len - *got > (1u << 30) ? (1u << 30) : len - *got;
        int r = gzread(f, p + *got, (unsigned)chunk);
        if (r < 0)
            return fail(err, errlen, "%s: cannot read %s: %s", path, what, gz_message(f, path));
        if (r == 0)
            break;
        *got += (size_t)r;
    }
    return true;
}

/* A gzip stream cut short (or with a damaged trailer) reports it only through gzerror. */
static bool stream_ok(gzFile f, const char *path, const char *what, char *err, size_t errlen)
{
    int zerr = Z_OK;
    gzerror(f, &zerr);
    if (zerr == Z_OK)
        return true;
    return fail(err, errlen, "%s: cannot read %s: %s", path, what, gz_message(f, path));
}

static bool read_exact(gzFile f, void *buf, size_t len, const char *path, const char *what,
                       char *err, size_t errlen)
{
    size_t got;
    if (!read_some(f, buf, len, &got, path, what, err, errlen))
        return false;
    if (got < len) {
        int zerr = Z_OK;
        gzerror(f, &zerr);
        return fail(err, errlen, "%s: truncated: %s needs %zu bytes, the file holds %zu%s", path,
                    what, len, got, zerr == Z_BUF_ERROR ? " (gzip stream ends early)" : "");
    }
    return true;
}

bool mnist_read_idx(const char *path, uint32_t magic, int ndims, uint8_t **data, int64_t *n,
                    char *err, size_t errlen)
{
    *data = NULL;
    *n = 0;
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return fail(err, errlen, "%s: cannot open: %s", path,
                    errno ? strerror(errno) : "out of memory");
    bool ok = false;
    unsigned char hdr[16], *buf = NULL;
    size_t hdr_len = 4 + 4 * (size_t)ndims;
    if (!read_exact(f, hdr, hdr_len, path, "the IDX header", err, errlen))
        goto done;
    uint32_t got = be32(hdr);
    if (got != magic) {
        fail(err, errlen, "%s: bad magic number %u (0x%08x), expected %u for an IDX %s file", path,
             got, got, magic, magic == MNIST_IMAGE_MAGIC ? "image" : "label");
        goto done;
    }
    int64_t count = be32(hdr + 4);
    if (count == 0) {
        fail(err, errlen, "%s: the header says 0 items", path);
        goto done;
    }
    size_t item = 1;
    if (ndims == 3) {
        uint32_t rows = be32(hdr + 8), cols = be32(hdr + 12);
        if (rows != MNIST_SIDE || cols != MNIST_SIDE) {
            fail(err, errlen, "%s: images are %u x %u, expected %d x %d", path, rows, cols,
                 MNIST_SIDE, MNIST_SIDE);
            goto done;
        }
        item = MNIST_SIDE * MNIST_SIDE;
    }
    /* Memory grows with the data that arrives, not with what the header claims: a damaged
     * count cannot ask for terabytes. */
    const size_t want = (size_t)count * item;
    size_t have = 0, cap = 0;
    while (have < want) {
        size_t step = want - have < ((size_t)1 << 24) ? want - have : (size_t)1 << 24, got_now;
        if (have + step > cap) {
            size_t ncap = cap ? cap * 2 : step;
            ncap = ncap < have + step ? have + step : ncap > want ? want : ncap;
            unsigned char *g = realloc(buf, ncap);
            if (!g) {
                fail(err, errlen, "%s: out of memory for %zu bytes", path, ncap);
                goto done;
            }
            buf = g, cap = ncap;
        }
        if (!read_some(f, buf + have, step, &got_now, path, "the data", err, errlen))
            goto done;
        have += got_now;
        if (got_now < step)
            break;
    }
    if (have < want) {
        int zerr = Z_OK;
        gzerror(f, &zerr);
        fail(err, errlen, "%s: truncated: the header's %lld items need %zu bytes, the file holds "
             "%zu%s", path, (long long)count, want, have,
             zerr == Z_BUF_ERROR ? " (gzip stream ends early)" : "");
        goto done;
    }
    /* After the last item nothing may follow (extra bytes mean the header's count is wrong),
     * and the read that finds the end is the one that checks the gzip trailer (CRC, length). */
    unsigned char extra;
    size_t more;
    if (!read_some(f, &extra, 1, &more, path, "the end of the data", err, errlen) ||
        !stream_ok(f, path, "the end of the data", err, errlen))
        goto done;
    if (more) {
        fail(err, errlen, "%s: data continues past the count in the header", path);
        goto done;
    }
    *data = buf;
    *n = count;
    buf = NULL;
    ok = true;
done:
    free(buf);
    gzclose(f);
    return ok;
}

bool mnist_load(const char *dir, const char *prefix, int64_t limit, mnist_set *set, char *err,
                size_t errlen)
{
    memset(set, 0, sizeof *set);
    char ipath[4096], lpath[4096];
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);

    int64_t ni = 0, nl = 0;
    /* Everything is read even with a limit, so a damaged file is reported the same way. */
    if (!mnist_read_idx(ipath, MNIST_IMAGE_MAGIC, 3, &set->images, &ni, err, errlen) ||
        !mnist_read_idx(lpath, MNIST_LABEL_MAGIC, 1, &set->labels, &nl, err, errlen))
        goto bad;
    if (ni != nl) {
        fail(err, errlen, "%s holds %lld images but %s holds %lld labels", ipath, (long long)ni,
             lpath, (long long)nl);
        goto bad;
    }
    for (int64_t k = 0; k < nl; k++)
        if (set->labels[k] >= MNIST_CLASSES) {
            fail(err, errlen, "%s: label %u at index %lld, expected 0..%d", lpath,
                 set->labels[k], (long long)k, MNIST_CLASSES - 1);
            goto bad;
        }
    set->n = limit > 0 && limit < ni ? limit : ni;
    return true;
bad:
    mnist_free(set);
    return false;
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
