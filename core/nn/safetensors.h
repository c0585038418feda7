/* safetensors.h - what the safetensors writer and reader share: the dtype table, byte order
 * and the UTF-8 check; and the two entry points module checkpoints (checkpoint.c) call inside
 * the API. */
#ifndef NB_NN_SAFETENSORS_H
#define NB_NN_SAFETENSORS_H

#include "nabla_layer.h"

#include <stdint.h>
#include <string.h>

/* The Python package refuses headers over 100 MB; so do we, before allocating one. */
#define ST_MAX_HEADER 100000000ull

static const struct {
    const char *name;
    nb_dtype dtype;
} st_dtypes[] = {
    {"F32", NB_DTYPE_F32}, {"F64", NB_DTYPE_F64}, {"I32", NB_DTYPE_I32},
    {"I64", NB_DTYPE_I64}, {"BOOL", NB_DTYPE_BOOL}, {"U8", NB_DTYPE_U8},
    {"F16", NB_DTYPE_F16}, {"BF16", NB_DTYPE_BF16},
};

static inline const char *st_dtype_name(nb_dtype d)
{
    for (size_t k = 0; k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
        if (st_dtypes[k].dtype == d)
            return st_dtypes[k].name;
    return NULL;
}

static inline bool host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* The file is little-endian; on a big-endian host every element is reversed in place. */
static inline void to_from_le(void *data, size_t n_elems, size_t elem)
{
    if (elem == 1 || host_is_little_endian())
        return;
    uint8_t *p = data;
    for (size_t k = 0; k < n_elems; k++, p += elem)
        for (size_t a = 0, b = elem - 1; a < b; a++, b--) {
            uint8_t t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* true if s[0..n) is well-formed UTF-8 (JSON text must be; the Python reader checks it). */
static inline bool utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + len > n || (len == 2 && c < 0xC2))
            return false;
        uint32_t cp = len == 1 ? c : c & (0x7F >> len);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* nb_safetensors_save / nb_safetensors_load without the API framing (safetensors_write.c,
 * safetensors_read.c). */
nb_status nn_st_save(const char *path, nb_tensor *const *tensors, const char *const *names,
                     int32_t n);
nb_status nn_st_load(const char *path, const char *device, nb_tensor ***tensors, char ***names,
                     int32_t *n);

#endif
