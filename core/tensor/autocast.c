/* autocast.c - torch.autocast: the thread's stack of autocast regions and the cast every op on
 * PyTorch's autocast lists makes at its entry (NBI_AUTOCAST, core/layer/nabla_layer.h). It
 * sits with dispatch in tensor/, not in nn/, because matmul, sum and exp live in this layer too
 * and a layer never calls the one above it. */
#include "nabla_internal.h"

#include <assert.h>
#include <string.h>

/* Thread-locals of the core live in the static TLS block (initial-exec): kept small. */
#define AUTOCAST_MAX_DEPTH 32

/* One torch.autocast(...) block: it covers every device of one type ("cpu", "cuda"), named by
 * its plugin's own type string, which is compared by address and never read after the
 * plugin is gone. */
typedef struct autocast_region {
    const char *type;
    uint8_t dtype;
    bool enabled;
} autocast_region;

static _Thread_local autocast_region regions[AUTOCAST_MAX_DEPTH];
_Thread_local int nbi_autocast_depth;
/* > 0 while a listed op runs: the ops it is made of are not cast again, as PyTorch's
 * dispatcher excludes its Autocast keys below an autocast kernel. */
static _Thread_local int excluded;

/* PyTorch's cast cache: a float32 leaf that requires grad (a weight) is cast once per outermost
 * region and dtype, however often it is used, and the cast is dropped when that region ends.
 * Entries hold the source too, so its address cannot be reused while it is a key. Only with
 * grad mode on: a cast made under no_grad has no graph to share. */
typedef struct cast_entry {
    nb_tensor *src, *cast;
} cast_entry;
static _Thread_local cast_entry *cache;
static _Thread_local int cache_n, cache_cap;

static void cache_clear(void)
{
    for (int k = 0; k < cache_n; k++) {
        nb_release(cache[k].cast);
        nb_release(cache[k].src);
    }
    nbi_free(cache);
    cache = NULL;
    cache_n = cache_cap = 0;
}

/* t's cast to dt: from the cache, or made (and cached when t is a weight); a new reference. */
static nb_tensor *cast_of(const nb_tensor *t, nb_dtype dt)
{
    bool cacheable = t->dtype == NB_DTYPE_F32 && t->requires_grad && !t->grad_fn &&
                     !t->view_base && nb_is_grad_enabled();
    for (int k = 0; cacheable && k < cache_n; k++)
        if (cache[k].src == t && cache[k].cast->dtype == dt)
            return nb_retain(cache[k].cast);
    nbi_api_depth++; /* a cast the op owns: no scope of the application tracks it */
    nb_tensor *c = nb_to_dtype(t, dt);
    nbi_api_depth--;
    if (!c || !cacheable)
        return c;
    if (cache_n == cache_cap) {
        int cap = cache_cap ? 2 * cache_cap : 8;
        cast_entry *p = nbi_realloc(cache, (size_t)cap * sizeof *p);
        if (!p)
            return c; /* no room to remember it: correct, only not shared */
        cache = p;
        cache_cap = cap;
    }
    cache[cache_n++] = (cast_entry){nb_retain((nb_tensor *)t), nb_retain(c)};
    return c;
}

/* torch.get_autocast_dtype's defaults: bfloat16 on cpu, float16 on the GPUs. */
static nb_dtype default_dtype(const char *type)
{
    return strcmp(type, "cpu") == 0 ? NB_DTYPE_BF16 : NB_DTYPE_F16;
}

/* The innermost region of this device type, or NULL. */
static const autocast_region *region_for(const char *type)
{
    for (int k = nbi_autocast_depth - 1; k >= 0; k--)
        if (regions[k].type == type)
            return &regions[k];
    return NULL;
}

static nb_status begin_impl(const char *device, nb_dtype dtype, bool enabled)
{
    nbi_device *dev;
    if (nbi_device_get(device, &dev) != NB_OK)
        return nb_last_status();
    const char *type = dev->api->name;
    if ((unsigned)dtype >= NB_DTYPE_COUNT)
        return nbi_error(NB_DTYPE_UNSUPPORTED, "autocast: invalid dtype %d (expected float16 or "
                         "bfloat16, or 0 for %s's default, %s)", (int)dtype, type,
                         nb_dtype_name(default_dtype(type)));
    if (dtype == NB_DTYPE_F32)
        dtype = default_dtype(type);
    if (enabled && !nbi_dtype_is_16bit(dtype))
        return nbi_error(NB_DTYPE_UNSUPPORTED, "autocast: %s is not a lower-precision dtype; "
                         "autocast on %s runs in float16 or bfloat16", nb_dtype_name(dtype),
                         type);
    /* matmul stands for the whole lower-precision list: every device plugin that has 16-bit
     * kernels has that one, and without it there is nothing to gain */
    if (enabled && !nbi_device_has_op(dev, NBI_OP_matmul, dtype))
        return nbi_error(NB_DTYPE_UNSUPPORTED, "autocast: %s has no %s matmul kernel, so it "
                         "cannot autocast to %s", dev->name, nb_dtype_name(dtype),
                         nb_dtype_name(dtype));
    if (nbi_autocast_depth == AUTOCAST_MAX_DEPTH)
        return nbi_error(NB_INVALID_ARGUMENT, "autocast: regions nested deeper than %d; is an "
                         "nb_autocast_end missing?", AUTOCAST_MAX_DEPTH);
    regions[nbi_autocast_depth++] = (autocast_region){type, (uint8_t)dtype, enabled};
    return NB_OK;
}

nb_status nb_autocast_begin(const char *device, nb_dtype dtype)
{
    return NBI_API_CALL(begin_impl(device, dtype, true));
}

nb_status nb_autocast_begin_ex(const char *device, nb_dtype dtype, bool enabled)
{
    return NBI_API_CALL(begin_impl(device, dtype, enabled));
}

nb_status nb_autocast_end(void)
{
    if (nbi_autocast_depth == 0)
        return nbi_error(NB_STATE, "autocast: nb_autocast_end without a matching "
                         "nb_autocast_begin on this thread");
    if (--nbi_autocast_depth == 0)
        cache_clear();
    return NB_OK;
}

/* The device's type; NULL, with the usual device error, for a bad device string. */
static const char *type_of(const char *device)
{
    nbi_device *dev;
    if (nbi_device_get(device, &dev) != NB_OK)
        return NULL;
    return dev->api->name;
}

bool nb_autocast_is_enabled(const char *device)
{
    const char *type = type_of(device);
    const autocast_region *r = type ? region_for(type) : NULL;
    return r && r->enabled;
}

nb_dtype nb_autocast_dtype(const char *device)
{
    const char *type = type_of(device);
    if (!type)
        return NB_DTYPE_BF16;
    /* the innermost region's dtype, even a disabled one, as torch.get_autocast_dtype */
    const autocast_region *r = region_for(type);
    return r ? (nb_dtype)r->dtype : default_dtype(type);
}

/* ---- the ops' side ---- */

nb_status nbi_autocast_operands(nbi_autocast_frame *f, nbi_autocast_kind kind,
                                const nb_tensor **const *operands, int n)
{
    if (excluded || kind == NBI_AC_NONE)
        return NB_OK;
    assert(n <= NBI_AUTOCAST_MAX_OPERANDS);
    f->excluding = true;
    excluded++;
    for (int k = 0; k < n; k++) {
        const nb_tensor *t = *operands[k];
        if (!t || !nb_dtype_is_float(t->dtype))
            continue;
        const autocast_region *r = region_for(t->storage->device->api->name);
        if (!r || !r->enabled)
            continue;
        /* float64 is never cast, as PyTorch's is_eligible; lower precision casts float32 and
         * the other 16-bit type, the float32 list casts 16-bit operands only */
        nb_dtype want = kind == NBI_AC_LOWER ? (nb_dtype)r->dtype : NB_DTYPE_F32;
        if (t->dtype == NB_DTYPE_F64 || t->dtype == want ||
            (kind == NBI_AC_FP32 && !nbi_dtype_is_16bit(t->dtype)))
            continue;
        nb_tensor *c = cast_of(t, want);
        if (!c)
            return nb_last_status();
        f->casts[k] = c;
        *operands[k] = c;
    }
    return NB_OK;
}

void nbi_autocast_frame_release(nbi_autocast_frame *f)
{
    for (int k = 0; k < NBI_AUTOCAST_MAX_OPERANDS; k++)
        nb_release(f->casts[k]);
    excluded--;
}

nbi_autocast_kind nbi_autocast_kind_of(nbi_op op)
{
    switch (op) {
    case NBI_OP_exp:
    case NBI_OP_log:
    case NBI_OP_pow:
    case NBI_OP_pow_scalar:
    case NBI_OP_rpow_scalar:
        return NBI_AC_FP32;
    default:
        return NBI_AC_NONE;
    }
}
