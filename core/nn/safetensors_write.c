/* safetensors_write.c - nb_safetensors_save: checks the names, writes the JSON header and the
 * little-endian data to path.tmp, and renames it over path only once all of it is written. */
#include "safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ============================== writing ============================== */


static void sb_json_string(nbi_sbuf *b, const char *s)
{
    nbi_sbuf_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            nbi_sbuf_putn(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            nbi_sbuf_puts(b, esc);
        } else {
            nbi_sbuf_putn(b, (const char *)&c, 1);
        }
    }
    nbi_sbuf_puts(b, "\"");
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that appears twice, or NULL (sorts a copy of the pointers). */
static nb_status find_duplicate(const char *const *names, int32_t n, const char **dup)
{
    *dup = NULL;
    if (n < 2)
        return NB_OK;
    const char **sorted = nbi_malloc((size_t)n * sizeof *sorted);
    if (!sorted)
        return nbi_error(NB_OUT_OF_MEMORY, "safetensors: out of host memory");
    memcpy(sorted, names, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_str_ptr);
    for (int32_t i = 1; i < n && !*dup; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            *dup = sorted[i];
    nbi_free(sorted);
    return NB_OK;
}

static nb_status check_save_args(const char *path, nb_tensor *const *tensors,
                                 const char *const *names, int32_t n)
{
    const char *what = "nb_safetensors_save";
    if (!path || !*path)
        return nbi_error(NB_NULL_ARGUMENT, "%s: path is %s", what, path ? "empty" : "NULL");
    if (n < 0)
        return nbi_error(NB_INVALID_ARGUMENT, "%s: n=%d must not be negative", what, n);
    if (n > 0 && (!tensors || !names))
        return nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL with n=%d", what,
                         tensors ? "names" : "tensors", n);
    for (int32_t i = 0; i < n; i++) {
        if (!names[i] || !*names[i])
            return nbi_error(NB_INVALID_ARGUMENT, "%s: name %d is %s", what, i,
                             names[i] ? "empty" : "NULL");
        if (!tensors[i])
            return nbi_error(NB_NULL_ARGUMENT, "%s: tensor %d ('%s') is NULL", what, i, names[i]);
        if (strcmp(names[i], "__metadata__") == 0)
            return nbi_error(NB_INVALID_ARGUMENT, "%s: '__metadata__' is reserved by the format "
                             "and cannot name a tensor", what);
        if (!utf8_ok((const unsigned char *)names[i], strlen(names[i])))
            return nbi_error(NB_INVALID_ARGUMENT, "%s: name %d is not valid UTF-8", what, i);
        if (!st_dtype_name(nb_tensor_dtype(tensors[i])))
            return nbi_error(NB_DTYPE_UNSUPPORTED, "%s: tensor '%s' has a dtype safetensors "
                             "cannot hold", what, names[i]);
    }
    const char *dup;
    nb_status st = find_duplicate(names, n, &dup);
    if (st == NB_OK && dup)
        st = nbi_error(NB_INVALID_ARGUMENT, "%s: the name '%s' is used twice", what, dup);
    return st;
}

/* {"__metadata__":{"format":"pt"},"name":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},...}
 * padded with spaces so the data starts 8-byte aligned. */
static nb_status build_header(nb_tensor *const *tensors, const char *const *names, int32_t n,
                              nbi_sbuf *h)
{
    uint64_t offset = 0;
    char num[64];
    nbi_sbuf_puts(h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int32_t i = 0; i < n; i++) {
        nb_shape s = nb_tensor_shape(tensors[i]);
        uint64_t bytes = (uint64_t)nb_tensor_numel(tensors[i]) *
                         nb_dtype_size(nb_tensor_dtype(tensors[i]));
        nbi_sbuf_puts(h, ",");
        sb_json_string(h, names[i]);
        nbi_sbuf_puts(h, ":{\"dtype\":\"");
        nbi_sbuf_puts(h, st_dtype_name(nb_tensor_dtype(tensors[i])));
        nbi_sbuf_puts(h, "\",\"shape\":[");
        for (int32_t d = 0; d < s.ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)s.dims[d]);
            nbi_sbuf_puts(h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}",
                 (unsigned long long)offset, (unsigned long long)(offset + bytes));
        nbi_sbuf_puts(h, num);
        offset += bytes;
    }
    nbi_sbuf_puts(h, "}");
    while (!h->oom && h->n % 8)
        nbi_sbuf_puts(h, " ");
    return h->oom ? nbi_error(NB_OUT_OF_MEMORY, "nb_safetensors_save: out of host memory for "
                              "the header") : NB_OK;
}

static nb_status write_all(FILE *f, const void *p, size_t n, const char *path)
{
    if (n && fwrite(p, 1, n, f) != n)
        return nbi_error(NB_IO, "cannot write '%s': %s", path, strerror(errno));
    return NB_OK;
}

static nb_status write_tensor(FILE *f, nb_tensor *t, const char *name, const char *tmp)
{
    size_t elem = nb_dtype_size(nb_tensor_dtype(t));
    size_t n = (size_t)nb_tensor_numel(t);
    if (n == 0)
        return NB_OK;
    void *buf = nbi_malloc(n * elem);
    if (!buf)
        return nbi_error(NB_OUT_OF_MEMORY, "nb_safetensors_save: out of host memory for tensor "
                         "'%s' (%zu bytes)", name, n * elem);
    nb_status st = nb_tensor_copy_to_host(t, buf, n * elem);
    if (st == NB_OK) {
        to_from_le(buf, n, elem);
        st = write_all(f, buf, n * elem, tmp);
    }
    nbi_free(buf);
    return st;
}

nb_status nn_st_save(const char *path, nb_tensor *const *tensors, const char *const *names,
                     int32_t n)
{
    nb_status st = check_save_args(path, tensors, names, n);
    if (st != NB_OK)
        return st;
    nbi_sbuf h = {0};
    if ((st = build_header(tensors, names, n, &h)) != NB_OK) {
        nbi_free(h.p);
        return st;
    }
    size_t plen = strlen(path);
    char *tmp = nbi_malloc(plen + 5);
    if (!tmp) {
        nbi_free(h.p);
        return nbi_error(NB_OUT_OF_MEMORY, "nb_safetensors_save: out of host memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    /* everything goes to path.tmp first: an error never leaves a half-written file at path */
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        st = nbi_error(NB_IO, "cannot write '%s' (opening '%s' failed): %s", path, tmp,
                       strerror(errno));
        nbi_free(tmp);
        nbi_free(h.p);
        return st;
    }
    uint8_t len8[8];
    for (int k = 0; k < 8; k++)
        len8[k] = (uint8_t)((uint64_t)h.n >> (8 * k));
    st = write_all(f, len8, 8, tmp);
    if (st == NB_OK)
        st = write_all(f, h.p, h.n, tmp);
    for (int32_t i = 0; i < n && st == NB_OK; i++)
        st = write_tensor(f, tensors[i], names[i], tmp);
    if (st == NB_OK && (fflush(f) != 0 || fsync(fileno(f)) != 0))
        st = nbi_error(NB_IO, "cannot write '%s': %s", tmp, strerror(errno));
    if (fclose(f) != 0 && st == NB_OK)
        st = nbi_error(NB_IO, "cannot write '%s': %s", tmp, strerror(errno));
    if (st == NB_OK && rename(tmp, path) != 0)
        st = nbi_error(NB_IO, "cannot write '%s' (renaming '%s' into place failed): %s", path,
                       tmp, strerror(errno));
    if (st != NB_OK)
        remove(tmp);
    nbi_free(tmp);
    nbi_free(h.p);
    return st;
}

nb_status nb_safetensors_save(const char *path, nb_tensor *const *tensors,
                              const char *const *names, int32_t n)
{
    return NBI_API_CALL(nn_st_save(path, tensors, names, n));
}
