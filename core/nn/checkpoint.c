/* checkpoint.c - module checkpoints: nb_module_save writes a module's named state (parameters
 * and buffers) as safetensors, nb_module_load reads one back into a module of the same shape. */
#include "safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ============================== module checkpoints ============================== */

static nb_status module_save_impl(const nb_module *m, const char *path)
{
    if (!m)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_save: module is NULL");
    int32_t n = nb_module_state_count(m);
    if (n < 0)
        return nb_last_status();
    nb_tensor **ts = nbi_malloc((size_t)(n ? n : 1) * sizeof *ts);
    const char **ns = nbi_malloc((size_t)(n ? n : 1) * sizeof *ns);
    nb_status st = NB_OK;
    if (!ts || !ns)
        st = nbi_error(NB_OUT_OF_MEMORY, "nb_module_save: out of host memory");
    for (int32_t i = 0; i < n && st == NB_OK; i++)
        ts[i] = nb_module_state(m, i, &ns[i]);
    if (st == NB_OK)
        st = nn_st_save(path, ts, ns, n);
    nbi_free(ts);
    nbi_free(ns);
    return st;
}

nb_status nb_module_save(const nb_module *m, const char *path)
{
    return NBI_API_CALL(module_save_impl(m, path));
}

static void shape_into(char *buf, size_t len, int32_t ndim, const int64_t *dims)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int32_t d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? ", " : "",
                                 (long long)dims[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Every name must match both ways and every shape must agree before anything is copied, so a
 * refused checkpoint leaves the module as it was; values are copied into the existing tensors
 * (cast to their dtype, onto their device), so optimizers keep their references. */
static nb_status check_and_copy(nb_module *m, const char *path, nb_tensor **ts, char **ns,
                                int32_t n)
{
    const char *what = "nb_module_load";
    int32_t ms = nb_module_state_count(m);
    if (ms < 0)
        return nb_last_status();
    int32_t *match = nbi_malloc((size_t)(ms ? ms : 1) * sizeof *match);
    if (!match)
        return nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
    nb_status st = NB_OK;
    for (int32_t j = 0; j < ms && st == NB_OK; j++) {
        const char *name;
        nb_tensor *dst = nb_module_state(m, j, &name);
        match[j] = -1;
        for (int32_t i = 0; i < n && match[j] < 0; i++)
            if (strcmp(ns[i], name) == 0)
                match[j] = i;
        if (match[j] < 0) {
            st = nbi_error(NB_INVALID_ARGUMENT, "%s: '%s' has no tensor '%s' (the model has %d "
                           "state tensors, the checkpoint %d)", what, path, name, ms, n);
            break;
        }
        nb_shape a = nb_tensor_shape(ts[match[j]]), b = nb_tensor_shape(dst);
        if (a.ndim != b.ndim || memcmp(a.dims, b.dims, (size_t)a.ndim * sizeof a.dims[0])) {
            char sa[200], sb[200];
            shape_into(sa, sizeof sa, a.ndim, a.dims);
            shape_into(sb, sizeof sb, b.ndim, b.dims);
            st = nbi_error(NB_SHAPE_MISMATCH, "%s: '%s': %s: checkpoint has %s, model has %s",
                           what, path, name, sa, sb);
        }
    }
    for (int32_t i = 0; i < n && st == NB_OK; i++) {
        bool used = false;
        for (int32_t j = 0; j < ms && !used; j++)
            used = match[j] == i;
        if (!used)
            st = nbi_error(NB_INVALID_ARGUMENT, "%s: '%s' has tensor '%s', which the model does "
                           "not have", what, path, ns[i]);
    }
    nb_no_grad_begin();
    for (int32_t j = 0; j < ms && st == NB_OK; j++)
        st = nb_tensor_copy_(nb_module_state(m, j, NULL), ts[match[j]]);
    nb_no_grad_end();
    nbi_free(match);
    return st;
}

static nb_status module_load_impl(nb_module *m, const char *path)
{
    if (!m || !path)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_load: %s is NULL", m ? "path" : "module");
    nb_tensor **ts;
    char **ns;
    int32_t n;
    nb_status st = nn_st_load(path, "cpu", &ts, &ns, &n);
    if (st != NB_OK)
        return st;
    st = check_and_copy(m, path, ts, ns, n);
    nb_safetensors_free(ts, ns, n);
    return st;
}

nb_status nb_module_load(nb_module *m, const char *path)
{
    return NBI_API_CALL(module_load_impl(m, path));
}
