/* safetensors_read.c - nb_safetensors_load: a strict reader with a small JSON parser for just
 * the header's subset (what the Python package accepts, nothing more), checked offsets, and
 * nb_safetensors_free. */
#include "safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Valid safetensors dtypes that Nabla has no type for: a clear "unsupported", not "corrupt". */
static const char *const st_foreign[] = {"I8", "I16", "U16", "U32", "U64",
                                         "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2",
                                         "F4", "C64"};

/* ============================== reading ============================== */

typedef struct st_info {
    char *name;
    nb_dtype dtype;
    int32_t ndim;
    int64_t shape[NB_MAX_DIMS];
    uint64_t begin, end;
} st_info;

/* The header parser: a cursor over the JSON text; the first error sticks with its position. */
typedef struct jp {
    const char *s;
    size_t n, pos;
    const char *path;
    bool failed;
    nb_status status;
} jp;

static bool jfail(jp *p, nb_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool jfail(jp *p, nb_status status, const char *fmt, ...)
{
    if (p->failed)
        return false;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nbi_error(status, "'%s' is not a valid safetensors file: %s", p->path, msg);
    p->failed = true;
    p->status = status;
    return false;
}

static bool jsyntax(jp *p, const char *expected)
{
    if (p->pos >= p->n)
        return jfail(p, NB_FORMAT, "header JSON ends early at byte %zu, expected %s", p->pos,
                     expected);
    char c = p->s[p->pos];
    if (c >= 0x20 && c < 0x7F)
        return jfail(p, NB_FORMAT, "header JSON has '%c' at byte %zu, expected %s", c, p->pos,
                     expected);
    return jfail(p, NB_FORMAT, "header JSON has byte 0x%02x at byte %zu, expected %s",
                 (unsigned char)c, p->pos, expected);
}

static void jws(jp *p)
{
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                             p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static bool jpeek(jp *p, char c)
{
    jws(p);
    return p->pos < p->n && p->s[p->pos] == c;
}

static bool jexpect(jp *p, char c)
{
    if (jpeek(p, c)) {
        p->pos++;
        return true;
    }
    char want[4] = {'\'', c, '\'', '\0'};
    return jsyntax(p, want);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static bool read_hex4(jp *p, uint32_t *v)
{
    if (p->pos + 4 > p->n)
        return jsyntax(p, "four hex digits after \\u");
    *v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->pos]);
        if (h < 0)
            return jsyntax(p, "a hex digit");
        *v = *v << 4 | (uint32_t)h;
        p->pos++;
    }
    return true;
}

/* A JSON string into a new NUL-terminated UTF-8 buffer (*out may be NULL to skip it). */
static bool jstring(jp *p, char **out)
{
    if (out)
        *out = NULL;
    if (!jexpect(p, '"'))
        return false;
    size_t start = p->pos;
    nbi_sbuf b = {0};
    while (true) {
        if (p->pos >= p->n) {
            nbi_free(b.p);
            return jfail(p, NB_FORMAT, "header JSON has a string starting at byte %zu that never "
                         "ends", start - 1);
        }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"')
            break;
        if (c < 0x20) {
            nbi_free(b.p);
            return jfail(p, NB_FORMAT, "header JSON has control byte 0x%02x inside a string at "
                         "byte %zu", c, p->pos);
        }
        if (c != '\\') {
            size_t run = p->pos;
            while (run < p->n && p->s[run] != '"' && p->s[run] != '\\' &&
                   (unsigned char)p->s[run] >= 0x20)
                run++;
            nbi_sbuf_putn(&b, p->s + p->pos, run - p->pos);
            p->pos = run;
            continue;
        }
        if (++p->pos >= p->n)
            continue; /* reported as unterminated */
        char e = p->s[p->pos++];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (simple && e) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            nbi_sbuf_putn(&b, &map[simple - "\"\\/bfnrt"], 1);
            continue;
        }
        if (e != 'u') {
            p->pos--;
            nbi_free(b.p);
            return jsyntax(p, "an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
        }
        uint32_t cp;
        if (!read_hex4(p, &cp)) {
            nbi_free(b.p);
            return false;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
            uint32_t lo;
            if (p->pos + 2 > p->n || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                nbi_free(b.p);
                return jfail(p, NB_FORMAT, "header JSON has an unpaired surrogate \\u%04x "
                             "before byte %zu", (unsigned)cp, p->pos);
            }
            p->pos += 2;
            if (!read_hex4(p, &lo)) {
                nbi_free(b.p);
                return false;
            }
            if (lo < 0xDC00 || lo > 0xDFFF) {
                nbi_free(b.p);
                return jfail(p, NB_FORMAT, "header JSON has an unpaired surrogate \\u%04x "
                             "before byte %zu", (unsigned)cp, p->pos);
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            nbi_free(b.p);
            return jfail(p, NB_FORMAT, "header JSON has an unpaired surrogate \\u%04x before "
                         "byte %zu", (unsigned)cp, p->pos);
        }
        if (cp == 0) {
            nbi_free(b.p);
            return jfail(p, NB_FORMAT, "header JSON has \\u0000 in a string before byte %zu; "
                         "names cannot hold NUL", p->pos);
        }
        char u[4];
        size_t un;
        if (cp < 0x80) {
            u[0] = (char)cp;
            un = 1;
        } else if (cp < 0x800) {
            u[0] = (char)(0xC0 | cp >> 6);
            u[1] = (char)(0x80 | (cp & 0x3F));
            un = 2;
        } else if (cp < 0x10000) {
            u[0] = (char)(0xE0 | cp >> 12);
            u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
            u[2] = (char)(0x80 | (cp & 0x3F));
            un = 3;
        } else {
            u[0] = (char)(0xF0 | cp >> 18);
            u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
            u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
            u[3] = (char)(0x80 | (cp & 0x3F));
            un = 4;
        }
        nbi_sbuf_putn(&b, u, un);
    }
    p->pos++; /* the closing quote */
    if (b.oom) {
        nbi_free(b.p);
        return jfail(p, NB_OUT_OF_MEMORY, "out of host memory reading the header");
    }
    if (!b.p) { /* the empty string */
        b.p = nbi_malloc(1);
        if (!b.p)
            return jfail(p, NB_OUT_OF_MEMORY, "out of host memory reading the header");
        b.p[0] = '\0';
    }
    if (!utf8_ok((const unsigned char *)b.p, b.n)) {
        nbi_free(b.p);
        return jfail(p, NB_FORMAT, "header JSON has a string that is not valid UTF-8 ending at "
                     "byte %zu", p->pos);
    }
    if (out)
        *out = b.p;
    else
        nbi_free(b.p);
    return true;
}

/* A non-negative JSON integer (no sign, fraction or exponent) that fits in 63 bits. */
static bool juint(jp *p, const char *what, uint64_t *v)
{
    jws(p);
    size_t start = p->pos;
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
        return p->pos < p->n && p->s[p->pos] == '-'
                   ? jfail(p, NB_FORMAT, "%s is negative at byte %zu", what, p->pos)
                   : jsyntax(p, what);
    if (p->s[p->pos] == '0' && p->pos + 1 < p->n && p->s[p->pos + 1] >= '0' &&
        p->s[p->pos + 1] <= '9')
        return jfail(p, NB_FORMAT, "header JSON has a number with a leading zero at byte %zu",
                     p->pos);
    uint64_t x = 0;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        unsigned d = (unsigned)(p->s[p->pos] - '0');
        if (x > ((uint64_t)INT64_MAX - d) / 10)
            return jfail(p, NB_FORMAT, "%s at byte %zu is too large", what, start);
        x = x * 10 + d;
        p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
        return jfail(p, NB_FORMAT, "%s at byte %zu is not an integer", what, start);
    *v = x;
    return true;
}

/* Skips any JSON value (for keys this reader does not use), at most 64 levels deep. */
static bool jskip(jp *p, int depth)
{
    if (depth > 64)
        return jfail(p, NB_FORMAT, "header JSON nests deeper than 64 levels at byte %zu", p->pos);
    jws(p);
    if (p->pos >= p->n)
        return jsyntax(p, "a value");
    char c = p->s[p->pos];
    if (c == '"')
        return jstring(p, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        p->pos++;
        if (jpeek(p, close)) {
            p->pos++;
            return true;
        }
        do {
            if (c == '{' && (!jstring(p, NULL) || !jexpect(p, ':')))
                return false;
            if (!jskip(p, depth + 1))
                return false;
        } while (jpeek(p, ',') && ++p->pos);
        return jexpect(p, close);
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t l = strlen(words[k]);
        if (p->n - p->pos >= l && memcmp(p->s + p->pos, words[k], l) == 0) {
            p->pos += l;
            return true;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) { /* any number: sign, digits, fraction, exponent */
        size_t q = p->pos + (c == '-');
        size_t digits = 0;
        while (q < p->n && p->s[q] >= '0' && p->s[q] <= '9')
            q++, digits++;
        if (!digits)
            return jsyntax(p, "a number");
        if (q < p->n && p->s[q] == '.') {
            size_t f = ++q;
            while (q < p->n && p->s[q] >= '0' && p->s[q] <= '9')
                q++;
            if (q == f)
                return jsyntax(p, "a number");
        }
        if (q < p->n && (p->s[q] == 'e' || p->s[q] == 'E')) {
            q++;
            if (q < p->n && (p->s[q] == '+' || p->s[q] == '-'))
                q++;
            size_t e = q;
            while (q < p->n && p->s[q] >= '0' && p->s[q] <= '9')
                q++;
            if (q == e)
                return jsyntax(p, "a number");
        }
        p->pos = q;
        return true;
    }
    return jsyntax(p, "a value");
}

/* "__metadata__": null or an object of string values. */
static bool jmetadata(jp *p)
{
    jws(p);
    if (p->n - p->pos >= 4 && memcmp(p->s + p->pos, "null", 4) == 0) {
        p->pos += 4;
        return true;
    }
    if (!jexpect(p, '{'))
        return false;
    if (jpeek(p, '}')) {
        p->pos++;
        return true;
    }
    do {
        if (!jstring(p, NULL) || !jexpect(p, ':'))
            return false;
        if (!jpeek(p, '"'))
            return jfail(p, NB_FORMAT, "__metadata__ values must be strings (byte %zu)", p->pos);
        if (!jstring(p, NULL))
            return false;
    } while (jpeek(p, ',') && ++p->pos);
    return jexpect(p, '}');
}

static bool jdtype(jp *p, st_info *t)
{
    size_t at = p->pos;
    char *name;
    if (!jstring(p, &name))
        return false;
    for (size_t k = 0; k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
        if (strcmp(name, st_dtypes[k].name) == 0) {
            t->dtype = st_dtypes[k].dtype;
            nbi_free(name);
            return true;
        }
    for (size_t k = 0; k < sizeof st_foreign / sizeof st_foreign[0]; k++)
        if (strcmp(name, st_foreign[k]) == 0) {
            jfail(p, NB_DTYPE_UNSUPPORTED, "tensor '%s' has dtype %s, which Nabla does not "
                  "support (it reads F32, F64, I32, I64, BOOL and U8)", t->name, name);
            nbi_free(name);
            return false;
        }
    jfail(p, NB_FORMAT, "tensor '%s' has unknown dtype \"%.40s\" at byte %zu; expected one of "
          "F32, F64, I32, I64, BOOL, U8", t->name, name, at);
    nbi_free(name);
    return false;
}

static bool jshape(jp *p, st_info *t)
{
    if (!jexpect(p, '['))
        return false;
    t->ndim = 0;
    if (jpeek(p, ']')) {
        p->pos++;
        return true;
    }
    do {
        uint64_t d;
        if (!juint(p, "a shape dimension", &d))
            return false;
        if (t->ndim == NB_MAX_DIMS)
            return jfail(p, NB_FORMAT, "tensor '%s' has more than %d dimensions", t->name,
                         NB_MAX_DIMS);
        t->shape[t->ndim++] = (int64_t)d;
    } while (jpeek(p, ',') && ++p->pos);
    return jexpect(p, ']');
}

static bool joffsets(jp *p, st_info *t)
{
    if (!jexpect(p, '[') || !juint(p, "a data offset", &t->begin) || !jexpect(p, ',') ||
        !juint(p, "a data offset", &t->end))
        return false;
    if (jpeek(p, ','))
        return jfail(p, NB_FORMAT, "tensor '%s' has more than two data_offsets", t->name);
    return jexpect(p, ']');
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]}; other keys are skipped. */
static bool jtensor(jp *p, st_info *t)
{
    if (!jexpect(p, '{'))
        return false;
    bool seen[3] = {false, false, false};
    static const char *const keys[3] = {"dtype", "shape", "data_offsets"};
    if (!jpeek(p, '}')) {
        do {
            char *key;
            if (!jstring(p, &key))
                return false;
            int k = 0;
            while (k < 3 && strcmp(key, keys[k]) != 0)
                k++;
            nbi_free(key);
            if (k < 3 && seen[k])
                return jfail(p, NB_FORMAT, "tensor '%s' has \"%s\" twice", t->name, keys[k]);
            if (!jexpect(p, ':'))
                return false;
            bool ok = k == 0 ? jdtype(p, t) : k == 1 ? jshape(p, t) : k == 2 ? joffsets(p, t)
                                                                             : jskip(p, 0);
            if (!ok)
                return false;
            if (k < 3)
                seen[k] = true;
        } while (jpeek(p, ',') && ++p->pos);
    }
    if (!jexpect(p, '}'))
        return false;
    for (int k = 0; k < 3; k++)
        if (!seen[k])
            return jfail(p, NB_FORMAT, "tensor '%s' has no \"%s\"", t->name, keys[k]);
    return true;
}

static void infos_free(st_info *t, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        nbi_free(t[i].name);
    nbi_free(t);
}

static bool jheader(jp *p, st_info **out, int32_t *count)
{
    st_info *t = NULL;
    int32_t n = 0, cap = 0;
    bool meta = false, ok = jexpect(p, '{');
    if (ok && jpeek(p, '}')) {
        p->pos++;
    } else if (ok) {
        do {
            char *name;
            if (!(ok = jstring(p, &name)))
                break;
            if (strcmp(name, "__metadata__") == 0) {
                nbi_free(name);
                if (meta) {
                    ok = jfail(p, NB_FORMAT, "header has __metadata__ twice");
                    break;
                }
                meta = true;
                if (!(ok = jexpect(p, ':') && jmetadata(p)))
                    break;
                continue;
            }
            if (n == cap) {
                int32_t nc = cap ? cap * 2 : 16;
                st_info *nt = n < INT32_MAX / 2 ? nbi_realloc(t, (size_t)nc * sizeof *nt) : NULL;
                if (!nt) {
                    nbi_free(name);
                    ok = jfail(p, NB_OUT_OF_MEMORY, "out of host memory for %d tensors", n);
                    break;
                }
                t = nt;
                cap = nc;
            }
            t[n] = (st_info){.name = name};
            n++;
            if (!(ok = jexpect(p, ':') && jtensor(p, &t[n - 1])))
                break;
        } while (jpeek(p, ',') && ++p->pos);
        ok = ok && jexpect(p, '}');
    }
    if (ok) {
        jws(p);
        if (p->pos != p->n)
            ok = jfail(p, NB_FORMAT, "header JSON has extra bytes after the closing '}' at byte "
                       "%zu", p->pos);
    }
    if (!ok) {
        infos_free(t, n);
        return false;
    }
    *out = t;
    *count = n;
    return true;
}

static int cmp_info_name(const void *a, const void *b)
{
    return strcmp((*(st_info *const *)a)->name, (*(st_info *const *)b)->name);
}

static int cmp_info_begin(const void *a, const void *b)
{
    const st_info *x = *(st_info *const *)a, *y = *(st_info *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : x->end < y->end ? -1 : x->end > y->end;
}

/* Names unique; each tensor's bytes match its dtype and shape; the tensors tile the data
 * section exactly, with no gap, overlap or trailing bytes (the Python reader's rules). */
static nb_status check_infos(const char *path, st_info *t, int32_t n, uint64_t data_len)
{
    for (int32_t i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int32_t d = 0; d < t[i].ndim; d++) {
            uint64_t s = (uint64_t)t[i].shape[d];
            if (s && numel > (uint64_t)INT64_MAX / 8 / s)
                return nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: tensor '%s' "
                                 "has a shape too large to address", path, t[i].name);
            numel *= s;
        }
        uint64_t bytes = numel * nb_dtype_size(t[i].dtype);
        if (t[i].begin > t[i].end)
            return nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: tensor '%s' has "
                             "data_offsets [%llu, %llu] that end before they begin", path,
                             t[i].name, (unsigned long long)t[i].begin,
                             (unsigned long long)t[i].end);
        if (t[i].end > data_len)
            return nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: tensor '%s' has "
                             "data_offsets [%llu, %llu] past the end of the %llu-byte data "
                             "section", path, t[i].name, (unsigned long long)t[i].begin,
                             (unsigned long long)t[i].end, (unsigned long long)data_len);
        if (t[i].end - t[i].begin != bytes)
            return nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: tensor '%s' is "
                             "%s with %llu elements (%llu bytes) but its data_offsets [%llu, "
                             "%llu] span %llu bytes", path, t[i].name,
                             st_dtype_name(t[i].dtype), (unsigned long long)numel,
                             (unsigned long long)bytes, (unsigned long long)t[i].begin,
                             (unsigned long long)t[i].end,
                             (unsigned long long)(t[i].end - t[i].begin));
    }
    st_info **order = nbi_malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!order)
        return nbi_error(NB_OUT_OF_MEMORY, "reading '%s': out of host memory", path);
    for (int32_t i = 0; i < n; i++)
        order[i] = &t[i];
    nb_status st = NB_OK;
    qsort(order, (size_t)n, sizeof *order, cmp_info_name);
    for (int32_t i = 1; i < n && st == NB_OK; i++)
        if (strcmp(order[i - 1]->name, order[i]->name) == 0)
            st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: the name '%s' "
                           "appears twice", path, order[i]->name);
    qsort(order, (size_t)n, sizeof *order, cmp_info_begin);
    uint64_t at = 0;
    for (int32_t i = 0; i < n && st == NB_OK; i++) {
        if (order[i]->begin != at)
            st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: tensor '%s' starts "
                           "at data offset %llu, expected %llu (tensors must tile the data "
                           "without gaps or overlaps)", path, order[i]->name,
                           (unsigned long long)order[i]->begin, (unsigned long long)at);
        at = order[i]->end;
    }
    if (st == NB_OK && at != data_len)
        st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: the tensors cover %llu "
                       "of the %llu data bytes", path, (unsigned long long)at,
                       (unsigned long long)data_len);
    nbi_free(order);
    return st;
}

static nb_status read_at(FILE *f, uint64_t offset, void *dst, size_t n, const char *path)
{
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0)
        return nbi_error(NB_IO, "cannot read '%s': %s", path, strerror(errno));
    if (n && fread(dst, 1, n, f) != n)
        return ferror(f) ? nbi_error(NB_IO, "cannot read '%s': %s", path, strerror(errno))
                         : nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: it ends "
                                     "early", path);
    return NB_OK;
}

static nb_tensor *load_tensor(FILE *f, uint64_t data_start, const st_info *t, const char *path,
                              const char *device)
{
    size_t bytes = (size_t)(t->end - t->begin), elem = nb_dtype_size(t->dtype);
    void *buf = nbi_malloc(bytes ? bytes : 1);
    if (!buf) {
        nbi_error(NB_OUT_OF_MEMORY, "reading '%s': out of host memory for tensor '%s' (%zu "
                  "bytes)", path, t->name, bytes);
        return NULL;
    }
    nb_status st = read_at(f, data_start + t->begin, buf, bytes, path);
    if (st == NB_OK && t->dtype == NB_DTYPE_BOOL)
        for (size_t k = 0; k < bytes && st == NB_OK; k++)
            if (((uint8_t *)buf)[k] > 1)
                st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: BOOL tensor "
                               "'%s' holds byte %u at element %zu (expected 0 or 1)", path,
                               t->name, ((uint8_t *)buf)[k], k);
    nb_tensor *r = NULL;
    if (st == NB_OK) {
        to_from_le(buf, bytes / elem, elem);
        nb_shape s = {.ndim = t->ndim};
        memcpy(s.dims, t->shape, sizeof t->shape);
        r = nb_from_data(buf, s, (nb_opts){.dtype = t->dtype, .device = device});
    }
    nbi_free(buf);
    return r;
}

nb_status nn_st_load(const char *path, const char *device, nb_tensor ***tensors,
                     char ***names, int32_t *count)
{
    const char *what = "nb_safetensors_load";
    if (!path || !tensors || !names || !count)
        return nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", what,
                         !path ? "path" : !tensors ? "tensors" : !names ? "names" : "n");
    *tensors = NULL;
    *names = NULL;
    *count = 0;
    char canon[64];
    nb_status st = nb_device_parse(device ? device : nb_default_device(), canon, sizeof canon);
    if (st != NB_OK)
        return st;
    FILE *f = fopen(path, "rb");
    if (!f)
        return nbi_error(NB_IO, "cannot open '%s': %s", path, strerror(errno));
    uint64_t file_size = 0, header_len = 0;
    uint8_t len8[8];
    if (fseeko(f, 0, SEEK_END) != 0 || (file_size = (uint64_t)ftello(f)) == (uint64_t)-1) {
        st = nbi_error(NB_IO, "cannot read '%s': %s", path, strerror(errno));
    } else if (file_size < 8) {
        st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: it is %llu bytes, too "
                       "short for the 8-byte header length", path, (unsigned long long)file_size);
    } else if ((st = read_at(f, 0, len8, 8, path)) == NB_OK) {
        for (int k = 7; k >= 0; k--)
            header_len = header_len << 8 | len8[k];
        if (header_len > file_size - 8)
            st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: its header length "
                           "%llu exceeds the %llu bytes that follow (truncated?)", path,
                           (unsigned long long)header_len, (unsigned long long)(file_size - 8));
        else if (header_len > ST_MAX_HEADER)
            st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: its header length "
                           "%llu exceeds the %llu-byte limit", path,
                           (unsigned long long)header_len, ST_MAX_HEADER);
        else if (header_len < 2)
            st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: its header length "
                           "%llu is too small for a JSON object", path,
                           (unsigned long long)header_len);
    }
    char *header = NULL;
    if (st == NB_OK && !(header = nbi_malloc((size_t)header_len)))
        st = nbi_error(NB_OUT_OF_MEMORY, "reading '%s': out of host memory for a %llu-byte "
                       "header", path, (unsigned long long)header_len);
    if (st == NB_OK)
        st = read_at(f, 8, header, (size_t)header_len, path);
    if (st == NB_OK && header[0] != '{')
        st = nbi_error(NB_FORMAT, "'%s' is not a valid safetensors file: the header does not "
                       "start with '{'", path);
    st_info *info = NULL;
    int32_t n = 0;
    if (st == NB_OK) {
        jp p = {.s = header, .n = (size_t)header_len, .path = path};
        if (!jheader(&p, &info, &n))
            st = p.status;
    }
    nbi_free(header);
    if (st == NB_OK)
        st = check_infos(path, info, n, file_size - 8 - header_len);
    nb_tensor **ts = NULL;
    char **ns = NULL;
    if (st == NB_OK) {
        ts = nbi_calloc((size_t)(n ? n : 1), sizeof *ts);
        ns = nbi_calloc((size_t)(n ? n : 1), sizeof *ns);
        if (!ts || !ns)
            st = nbi_error(NB_OUT_OF_MEMORY, "reading '%s': out of host memory", path);
    }
    /* the tensors come back in the header's order */
    for (int32_t i = 0; i < n && st == NB_OK; i++) {
        ts[i] = load_tensor(f, 8 + header_len, &info[i], path, canon);
        if (!ts[i])
            st = nbi_last_or(NB_OUT_OF_MEMORY, "reading a tensor failed");
        ns[i] = info[i].name;
        info[i].name = NULL;
    }
    fclose(f);
    infos_free(info, n);
    if (st != NB_OK) {
        if (ts || ns)
            nb_safetensors_free(ts, ns, n);
        return st;
    }
    *tensors = ts;
    *names = ns;
    *count = n;
    return NB_OK;
}

nb_status nb_safetensors_load(const char *path, const char *device, nb_tensor ***tensors,
                              char ***names, int32_t *n)
{
    return NBI_API_CALL(nn_st_load(path, device, tensors, names, n));
}

static void safetensors_free_impl(nb_tensor **tensors, char **names, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        if (tensors)
            nb_release(tensors[i]);
        if (names)
            nbi_free(names[i]);
    }
    nbi_free(tensors);
    nbi_free(names);
}

void nb_safetensors_free(nb_tensor **tensors, char **names, int32_t n)
{
    NBI_API_VOID(safetensors_free_impl(tensors, names, n));
}
