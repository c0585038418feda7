/* make_idx.c - writes small synthetic Fashion-MNIST-style datasets, valid or damaged in one
 * chosen way, so the trainer's input checks can be tested without touching the real files. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

enum { N = 100, SIDE = 28 };

static int write_gz(const char *dir, const char *name, const unsigned char *buf, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    gzFile f = gzopen(path, "wb");
    if (!f || gzwrite(f, buf, (unsigned)len) != (int)len || gzclose(f) != Z_OK) {
        fprintf(stderr, "make_idx: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

/* Cuts the compressed file itself: a gzip stream that ends early. */
static int cut_file(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return 1;
    static unsigned char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    f = fopen(path, "wb");
    if (!f)
        return 1;
    fwrite(buf, 1, n / 2, f);
    return fclose(f) != 0;
}

/* Flips one byte of the compressed file: at its middle, or (at_crc) in the gzip trailer's CRC. */
static int flip_byte(const char *dir, const char *name, int at_crc)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r+b");
    if (!f || fseek(f, 0, SEEK_END) != 0)
        return 1;
    long n = ftell(f), at = at_crc ? n - 8 : n / 2;
    int c;
    if (n < 32 || fseek(f, at, SEEK_SET) != 0 || (c = fgetc(f)) == EOF ||
        fseek(f, at, SEEK_SET) != 0 || fputc(c ^ 0x5a, f) == EOF)
        return fclose(f), 1;
    return fclose(f) != 0;
}

static void be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static int write_set(const char *dir, const char *prefix, const char *kind)
{
    static unsigned char img[16 + N * SIDE * SIDE], lab[8 + N];
    be32(img, strcmp(kind, "bad_magic") == 0 ? 2049 : 2051);
    be32(img + 4, N);
    be32(img + 8, SIDE);
    be32(img + 12, SIDE);
    be32(lab, 2049);
    be32(lab + 4, strcmp(kind, "count_mismatch") == 0 ? N - 1 : N);
    for (int k = 0; k < N; k++) {
        lab[8 + k] = (unsigned char)(k % 10);
        /* a class-dependent stripe, so the data is learnable if anyone wants to */
        for (int p = 0; p < SIDE * SIDE; p++)
            img[16 + k * SIDE * SIDE + p] = (unsigned char)((p / SIDE) / 3 == k % 10 ? 255 : 0);
    }
    if (strcmp(kind, "label10") == 0)
        lab[8 + N / 2] = 10;
    size_t img_len = sizeof img, lab_len = sizeof lab;
    if (strcmp(kind, "truncated") == 0)
        img_len = 16 + N / 2 * SIDE * SIDE + 7; /* the header promises N images */
    if (strcmp(kind, "count_mismatch") == 0)
        lab_len -= 1;
    char iname[64], lname[64];
    snprintf(iname, sizeof iname, "%s-images-idx3-ubyte.gz", prefix);
    snprintf(lname, sizeof lname, "%s-labels-idx1-ubyte.gz", prefix);
    if (write_gz(dir, iname, img, img_len) || write_gz(dir, lname, lab, lab_len))
        return 1;
    if (strcmp(kind, "truncated_gz") == 0)
        return cut_file(dir, iname);
    if (strcmp(kind, "flipped_gz") == 0 || strcmp(kind, "bad_crc") == 0)
        return flip_byte(dir, iname, strcmp(kind, "bad_crc") == 0);
    return 0;
}

int main(int argc, char **argv)
{
    static const char *kinds[] = {"good", "truncated", "truncated_gz", "flipped_gz", "bad_crc",
                                  "bad_magic", "label10", "count_mismatch"};
    if (argc != 3) {
        fprintf(stderr, "usage: make_idx DIR KIND (good truncated truncated_gz flipped_gz bad_crc "
                        "bad_magic label10 count_mismatch)\n");
        return 2;
    }
    int known = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        known |= strcmp(argv[2], kinds[i]) == 0;
    if (!known) {
        fprintf(stderr, "make_idx: unknown kind '%s'\n", argv[2]);
        return 2;
    }
    /* both sets damaged the same way: the trainer reads whichever it opens first */
    return write_set(argv[1], "train", argv[2]) || write_set(argv[1], "t10k", argv[2]);
}
