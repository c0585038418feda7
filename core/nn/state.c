/* state.c - load_state_dict with strict and non-strict loading: the missing and unexpected keys
 * are reported as PyTorch reports them; shapes must always match. Built on the public module
 * and safetensors API. */
#include "nn_common.h"

#include <stdio.h>

static bool push(char ***list, int32_t *n, const char *s)
{
    char **l = nbi_realloc(*list, (size_t)(*n + 1) * sizeof *l);
    if (!l)
        return false;
    *list = l;
    l[*n] = nbi_strdup(s);
    if (!l[*n])
        return false;
    (*n)++;
    return true;
}

void nb_load_report_free(nb_load_report *r)
{
    if (!r)
        return;
    for (int32_t i = 0; i < r->n_missing; i++)
        nbi_free(r->missing[i]);
    for (int32_t i = 0; i < r->n_unexpected; i++)
        nbi_free(r->unexpected[i]);
    nbi_free(r->missing);
    nbi_free(r->unexpected);
    *r = (nb_load_report){0};
}

/* 'Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "a", "b". ...' */
static nb_status strict_error(const nb_module *m, const nb_load_report *r)
{
    nbi_sbuf b = {0};
    nbi_sbuf_printf(&b, "Error(s) in loading state_dict for %s:", nb_module_type(m));
    if (r->n_missing) {
        nbi_sbuf_puts(&b, "\n\tMissing key(s) in state_dict: ");
        for (int32_t i = 0; i < r->n_missing; i++)
            nbi_sbuf_printf(&b, "%s\"%s\"", i ? ", " : "", r->missing[i]);
        nbi_sbuf_puts(&b, ".");
    }
    if (r->n_unexpected) {
        nbi_sbuf_puts(&b, "\n\tUnexpected key(s) in state_dict: ");
        for (int32_t i = 0; i < r->n_unexpected; i++)
            nbi_sbuf_printf(&b, "%s\"%s\"", i ? ", " : "", r->unexpected[i]);
        nbi_sbuf_puts(&b, ".");
    }
    nb_status st = nbi_error(NB_INVALID_ARGUMENT, "%s", b.oom || !b.p ? "state_dict keys do "
                             "not match" : b.p);
    nbi_free(b.p);
    return st;
}

static nb_status load_state_impl(nb_module *m, nb_tensor *const *ts, const char *const *ns,
                                 int32_t n, bool strict, nb_load_report *out)
{
    const char *what = "nb_module_load_state";
    if (!m || (n > 0 && (!ts || !ns)))
        return nbi_error(NB_NULL_ARGUMENT, "%s: %s is NULL", what, m ? "tensors" : "module");
    int32_t ms = nb_module_state_count(m);
    if (ms < 0)
        return nb_last_status();
    nb_load_report r = {0};
    int32_t *match = nbi_calloc((size_t)(ms ? ms : 1), sizeof *match);
    nb_status st = match ? NB_OK : nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
    for (int32_t j = 0; j < ms && st == NB_OK; j++) {
        const char *name;
        nb_tensor *dst = nb_module_state(m, j, &name);
        match[j] = -1;
        for (int32_t i = 0; i < n && match[j] < 0; i++)
            if (ns[i] && strcmp(ns[i], name) == 0)
                match[j] = i;
        if (match[j] < 0) {
            if (!push(&r.missing, &r.n_missing, name))
                st = nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
            continue;
        }
        nb_shape a = nb_tensor_shape(ts[match[j]]), b = nb_tensor_shape(dst);
        if (a.ndim != b.ndim || memcmp(a.dims, b.dims, (size_t)a.ndim * sizeof a.dims[0]))
            st = nbi_error(NB_SHAPE_MISMATCH, "%s: size mismatch for %s: copying a param with "
                           "shape %s from checkpoint, the shape in current model is %s", what,
                           name, nbi_shape_cstr(a.ndim, a.dims), nbi_shape_cstr(b.ndim, b.dims));
    }
    for (int32_t i = 0; i < n && st == NB_OK; i++) {
        bool used = false;
        for (int32_t j = 0; j < ms && !used; j++)
            used = match[j] == i;
        if (!used && !push(&r.unexpected, &r.n_unexpected, ns[i] ? ns[i] : "(null)"))
            st = nbi_error(NB_OUT_OF_MEMORY, "%s: out of host memory", what);
    }
    if (st == NB_OK && strict && (r.n_missing || r.n_unexpected))
        st = strict_error(m, &r);
    nb_no_grad_begin();
    for (int32_t j = 0; j < ms && st == NB_OK; j++)
        if (match[j] >= 0)
            st = nb_tensor_copy_(nb_module_state(m, j, NULL), ts[match[j]]);
    nb_no_grad_end();
    nbi_free(match);
    if (out && (st == NB_OK || st == NB_INVALID_ARGUMENT))
        *out = r;
    else
        nb_load_report_free(&r);
    return st;
}

nb_status nb_module_load_state(nb_module *m, nb_tensor *const *tensors, const char *const *names,
                               int32_t n, bool strict, nb_load_report *report)
{
    if (report)
        *report = (nb_load_report){0};
    return NBI_API_CALL(load_state_impl(m, tensors, names, n, strict, report));
}

static nb_status load_file(nb_module *m, const char *path, bool strict, nb_load_report *report)
{
    if (!m || !path)
        return nbi_error(NB_NULL_ARGUMENT, "nb_module_load_ex: %s is NULL",
                         m ? "path" : "module");
    nb_tensor **ts;
    char **ns;
    int32_t n;
    nb_status st = nb_safetensors_load(path, "cpu", &ts, &ns, &n);
    if (st != NB_OK)
        return st;
    st = load_state_impl(m, ts, (const char *const *)ns, n, strict, report);
    nb_safetensors_free(ts, ns, n);
    return st;
}

nb_status nb_module_load_ex(nb_module *m, const char *path, bool strict, nb_load_report *report)
{
    if (report)
        *report = (nb_load_report){0};
    return NBI_API_CALL(load_file(m, path, strict, report));
}
