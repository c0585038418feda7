/* device.c - device strings ("type[:index]"), the default device, and the op name table. */
#include "nabla_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

size_t nbi_plugin_total(void);
nbi_plugin *nbi_plugin_at(size_t i);
int32_t nbi_plugin_device_count(nbi_plugin *p);   /* enumerates on first use */
int32_t nbi_plugin_devices_known(const nbi_plugin *p); /* without enumerating */
nbi_device *nbi_plugin_device(nbi_plugin *p, int32_t i);
const nb_plugin *nbi_plugin_api(const nbi_plugin *p);

static const char *op_names[NBI_OP_COUNT] = {
#define NBI_OP_NAME_(name) #name,
    NBI_OPS(NBI_OP_NAME_)
#undef NBI_OP_NAME_
};

const char *nbi_op_name(nbi_op op) { return (unsigned)op < NBI_OP_COUNT ? op_names[op] : "?"; }

int nbi_op_lookup(const char *name)
{
    for (int k = 0; k < NBI_OP_COUNT; k++)
        if (strcmp(op_names[k], name) == 0)
            return k;
    return -1;
}

size_t nb_op_count(void) { return NBI_OP_COUNT; }
const char *nb_op_name(size_t i) { return i < NBI_OP_COUNT ? op_names[i] : NULL; }

/* ---- parsing ---- */

#define NBI_DEVICE_STR_MAX 64

typedef struct parsed {
    char type[NBI_DEVICE_STR_MAX + 1]; /* a type may use all 64 characters */
    long index; /* -1 if absent */
} parsed;

static nb_status parse(const char *s, parsed *p)
{
    size_t len = strnlen(s, NBI_DEVICE_STR_MAX + 1);
    if (len == 0 || len > NBI_DEVICE_STR_MAX)
        return nbi_error(NB_INVALID_ARGUMENT, "malformed device string (%s%zu characters): "
                         "expected 'type[:index]' such as \"cpu\" or \"cuda:0\"",
                         len ? "more than " : "", len ? (size_t)NBI_DEVICE_STR_MAX : len);
    size_t n = 0;
    while (n < len && (islower((unsigned char)s[n]) || isdigit((unsigned char)s[n]) || s[n] == '_'))
        n++;
    if (n == 0 || isdigit((unsigned char)s[0]) || (n < len && s[n] != ':'))
        return nbi_error(NB_INVALID_ARGUMENT, "malformed device string '%s': expected "
                         "'type[:index]' such as \"cpu\" or \"cuda:0\"", s);
    memcpy(p->type, s, n);
    p->type[n] = '\0';
    p->index = -1;
    if (n == len)
        return NB_OK;
    const char *d = s + n + 1;
    if (!*d)
        return nbi_error(NB_INVALID_ARGUMENT, "malformed device string '%s': missing index "
                         "after ':' (expected e.g. \"%s:0\")", s, p->type);
    long v = 0;
    for (const char *c = d; *c; c++) {
        if (!isdigit((unsigned char)*c))
            return nbi_error(NB_INVALID_ARGUMENT, "malformed device string '%s': index '%s' "
                             "is not a non-negative decimal number", s, d);
        v = v * 10 + (*c - '0');
        if (v > 1000000)
            return nbi_error(NB_DEVICE_OUT_OF_RANGE, "device index in '%s' is out of range", s);
    }
    if (d[0] == '0' && d[1]) /* "cpu:00" names no device more than "cpu: 0" does */
        return nbi_error(NB_INVALID_ARGUMENT, "malformed device string '%s': index '%s' has a "
                         "leading zero (expected e.g. \"%s:0\")", s, d, p->type);
    p->index = v;
    return NB_OK;
}

static nbi_plugin *plugin_of_type(const char *type)
{
    for (size_t k = 0; k < nbi_plugin_total(); k++) {
        const nb_plugin *api = nbi_plugin_api(nbi_plugin_at(k));
        if (api && strcmp(api->name, type) == 0)
            return nbi_plugin_at(k);
    }
    return NULL;
}

static void loaded_types(char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < nbi_plugin_total(); k++) {
        const nb_plugin *api = nbi_plugin_api(nbi_plugin_at(k));
        if (api)
            used += (size_t)snprintf(buf + used, used < len ? len - used : 0, "%s%s",
                                     used ? ", " : "", api->name);
    }
    if (!used)
        snprintf(buf, len, "none; is NABLA_PLUGIN_PATH right?");
}

static nb_status resolve(const char *s, nbi_device **out)
{
    parsed p;
    nb_status st = parse(s, &p);
    if (st != NB_OK)
        return st;
    nbi_plugin *pl = plugin_of_type(p.type);
    if (!pl) {
        char types[256];
        loaded_types(types, sizeof types);
        return nbi_error(NB_UNKNOWN_DEVICE, "unknown device type '%s' (loaded: %s)", p.type,
                         types);
    }
    long index = p.index < 0 ? 0 : p.index;
    int32_t count = nbi_plugin_device_count(pl);
    if (index >= count)
        return nbi_error(count ? NB_DEVICE_OUT_OF_RANGE : NB_NO_DEVICE,
                         "device index %ld out of range: %d %s device%s", index, (int)count,
                         p.type, count == 1 ? "" : "s");
    *out = nbi_plugin_device(pl, (int32_t)index);
    return NB_OK;
}

/* ---- the default device ---- */

/* One character more than a device string may have: a longer NABLA_DEVICE stays too long (and
 * is refused by parse) instead of being cut to 64 characters that might name a device. */
static char default_device[NBI_DEVICE_STR_MAX + 2];
static bool default_from_env_checked;

static const char *default_name(void)
{
    if (!default_from_env_checked) {
        default_from_env_checked = true;
        const char *env = getenv("NABLA_DEVICE");
        if (env && *env && !default_device[0])
            snprintf(default_device, sizeof default_device, "%.*s", NBI_DEVICE_STR_MAX + 1, env);
    }
    return default_device[0] ? default_device : "cpu";
}

nb_status nbi_device_get(const char *device, nbi_device **out)
{
    nb_status st = nbi_ensure_init();
    if (st != NB_OK)
        return st;
    return resolve(device ? device : default_name(), out);
}

nbi_device *nbi_cpu_device(void)
{
    nbi_device *d = NULL;
    nb_status saved = nb_last_status();
    if (nbi_device_get("cpu", &d) != NB_OK && saved == NB_OK)
        return NULL;
    return d;
}

nb_status nb_set_default_device(const char *device)
{
    if (!device)
        return nbi_error(NB_NULL_ARGUMENT, "nb_set_default_device: device is NULL");
    nbi_device *d;
    nb_status st = nbi_device_get(device, &d);
    if (st != NB_OK)
        return st;
    default_from_env_checked = true;
    snprintf(default_device, sizeof default_device, "%s", d->name);
    return NB_OK;
}

const char *nb_default_device(void) { return default_name(); }

int nb_device_count(const char *type)
{
    if (!type) {
        nbi_error(NB_NULL_ARGUMENT, "nb_device_count: type is NULL");
        return -1;
    }
    if (nbi_ensure_init() != NB_OK)
        return -1;
    nbi_plugin *pl = plugin_of_type(type);
    if (!pl) {
        char types[256];
        loaded_types(types, sizeof types);
        nbi_error(NB_UNKNOWN_DEVICE, "unknown device type '%s' (loaded: %s)", type, types);
        return -1;
    }
    return nbi_plugin_device_count(pl);
}

nb_status nb_device_parse(const char *device, char *buf, size_t len)
{
    if (!device || !buf)
        return nbi_error(NB_NULL_ARGUMENT, "nb_device_parse: device or buf is NULL");
    nbi_device *d;
    nb_status st = nbi_device_get(device, &d);
    if (st != NB_OK)
        return st;
    if ((size_t)snprintf(buf, len, "%s:%d", d->api->name, (int)d->index) >= len)
        return nbi_error(NB_INVALID_ARGUMENT, "nb_device_parse: buffer of %zu bytes too small",
                         len);
    return NB_OK;
}

nb_status nb_synchronize(const char *device)
{
    nbi_device *d;
    nb_status st = nbi_device_get(device, &d);
    if (st != NB_OK)
        return st;
    return d->api->synchronize ? d->api->synchronize(d->index) : NB_OK;
}

bool nb_device_has_kernel(const char *device, const char *op, nb_dtype dtype)
{
    nbi_device *d;
    if (!op || nbi_device_get(device, &d) != NB_OK)
        return false;
    int k = nbi_op_lookup(op);
    return k >= 0 && (unsigned)dtype < NB_DTYPE_COUNT && d->kernels[k][dtype] != NULL;
}

nb_status nb_device_name(const char *device, char *buf, size_t len)
{
    if (!buf || len == 0)
        return nbi_error(NB_NULL_ARGUMENT, "nb_device_name: buf is NULL or of 0 bytes");
    buf[0] = 0;
    nbi_device *d;
    nb_status st = nbi_device_get(device, &d);
    if (st != NB_OK)
        return st;
    if (!d->api->device_name) {
        snprintf(buf, len, "%s", d->name);
        return NB_OK;
    }
    return d->api->device_name(d->index, buf, len);
}

bool nbi_cpu_fallback_enabled(void)
{
    static int enabled = -1;
    if (enabled < 0) {
        const char *env = getenv("NABLA_CPU_FALLBACK");
        enabled = env && strcmp(env, "1") == 0;
    }
    return enabled;
}

void nbi_devices_shutdown(void)
{
    for (size_t k = 0; k < nbi_plugin_total(); k++) {
        nbi_plugin *p = nbi_plugin_at(k);
        for (int32_t d = 0; d < nbi_plugin_devices_known(p); d++)
            nbi_storage_cache_flush(nbi_plugin_device(p, d));
    }
    default_device[0] = '\0';
    default_from_env_checked = false;
}
