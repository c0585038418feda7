/* check.c - runs one op of the table on one device: builds each sample's inputs on the host,
 * hands them to the device with nb_from_data, compares the result with the float64 reference,
 * checks gradients against finite differences of the reference, and classifies the outcome. */
#include "conformance.h"
#include "nabla_plugin.h" /* half: the 16-bit conversions every plugin uses */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool conf_verbose = false;

const char *conf_result_name(conf_result r)
{
    static const char *names[] = {"-", "pass", "composite", "fallback", "unsupported", "FAIL"};
    return (unsigned)r < CONF_RESULT_COUNT ? names[r] : "?";
}

/* ---- Host inputs: a seeded generator, so every device sees the same numbers ---- */

static uint64_t rng;

static uint64_t next_u64(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01(void) { return (double)(next_u64() >> 11) * 0x1p-53; }

static void seed_for(const char *op, nb_dtype dt, int32_t sample)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *c = op; *c; c++)
        h = (h ^ (uint8_t)*c) * 1099511628211ull;
    rng = h ^ ((uint64_t)dt << 40) ^ (uint64_t)sample;
}

static bool is_float(nb_dtype d)
{
    return d == NB_DTYPE_F32 || d == NB_DTYPE_F64 || d == NB_DTYPE_F16 || d == NB_DTYPE_BF16;
}

/* The value dtype dt stores for v (what the device will hold). */
static double representable(nb_dtype dt, double v)
{
    switch (dt) {
    case NB_DTYPE_F32: return (double)(float)v;
    case NB_DTYPE_F64: return v;
    /* half: the SDK's rounding, one step from double */
    case NB_DTYPE_F16: return nb_f16_to_f32(nb_f64_to_f16(v));
    case NB_DTYPE_BF16: return nb_bf16_to_f32(nb_f64_to_bf16(v));
    case NB_DTYPE_BOOL: return v != 0;
    case NB_DTYPE_U8: return (double)(uint8_t)(int64_t)v;
    case NB_DTYPE_I32: return (double)(int32_t)(int64_t)v;
    default: return (double)(int64_t)v;
    }
}

static double draw(conf_domain dom, nb_dtype dt)
{
    double u = uniform01();
    if (dt == NB_DTYPE_BOOL || dom == CONF_BOOL)
        return u < 0.5 ? 0 : 1;
    if (!is_float(dt)) {
        int64_t r = (int64_t)(u * 9); /* 0..8 */
        switch (dom) {
        case CONF_POS: return 1 + r % 4;
        case CONF_NONZERO: return (1 + r % 4) * (next_u64() & 1 ? 1 : -1);
        case CONF_UNIT: return r % 2;
        default: return dt == NB_DTYPE_U8 ? (double)r : (double)(r - 4);
        }
    }
    switch (dom) {
    case CONF_POS: return 0.5 + 1.5 * u;
    case CONF_NONZERO: return (0.5 + 1.5 * u) * (next_u64() & 1 ? 1 : -1);
    case CONF_UNIT: return u;
    default: return -2 + 4 * u;
    }
}

static void put(void *buf, int64_t k, nb_dtype dt, double v)
{
    switch (dt) {
    case NB_DTYPE_F32: ((float *)buf)[k] = (float)v; break;
    case NB_DTYPE_F64: ((double *)buf)[k] = v; break;
    case NB_DTYPE_I32: ((int32_t *)buf)[k] = (int32_t)v; break;
    case NB_DTYPE_I64: ((int64_t *)buf)[k] = (int64_t)v; break;
    /* half */
    case NB_DTYPE_F16: ((uint16_t *)buf)[k] = nb_f64_to_f16(v); break;
    case NB_DTYPE_BF16: ((uint16_t *)buf)[k] = nb_f64_to_bf16(v); break;
    default: ((uint8_t *)buf)[k] = (uint8_t)v; break;
    }
}

static double get(const void *buf, int64_t k, nb_dtype dt)
{
    switch (dt) {
    case NB_DTYPE_F32: return ((const float *)buf)[k];
    case NB_DTYPE_F64: return ((const double *)buf)[k];
    case NB_DTYPE_I32: return ((const int32_t *)buf)[k];
    case NB_DTYPE_I64: return (double)((const int64_t *)buf)[k];
    /* half */
    case NB_DTYPE_F16: return nb_f16_to_f32(((const uint16_t *)buf)[k]);
    case NB_DTYPE_BF16: return nb_bf16_to_f32(((const uint16_t *)buf)[k]);
    default: return ((const uint8_t *)buf)[k];
    }
}

static size_t dsize(nb_dtype dt)
{
    if (dt == NB_DTYPE_F16 || dt == NB_DTYPE_BF16) /* half */
        return 2;
    return dt == NB_DTYPE_F64 || dt == NB_DTYPE_I64 ? 8 : dt == NB_DTYPE_I32 || dt == NB_DTYPE_F32 ? 4 : 1;
}

/* One prepared input: the base values on the host, the tensors on the device, and the logical
 * (viewed) values the reference reads. */
typedef struct prepared {
    conf_host base;
    conf_host logical;
    nb_tensor *base_t; /* from nb_from_data */
    nb_tensor *t;      /* what the op receives (a view of base_t, or base_t) */
} prepared;

/* The view's geometry on the host: shape, strides and offset into the contiguous base. */
static bool host_view(const conf_input *in, const conf_host *base, conf_host *out)
{
    int32_t nd = base->ndim;
    int64_t shape[NB_MAX_DIMS], strides[NB_MAX_DIMS], off = 0, st = 1;
    for (int32_t d = nd - 1; d >= 0; d--) {
        shape[d] = base->shape[d];
        strides[d] = st;
        st *= base->shape[d];
    }
    switch (in->view) {
    case CONF_PLAIN: break;
    case CONF_TRANSPOSE: {
        int64_t a = in->a, b = in->b, t;
        t = shape[a], shape[a] = shape[b], shape[b] = t;
        t = strides[a], strides[a] = strides[b], strides[b] = t;
        break;
    }
    case CONF_EXPAND: {
        int32_t lead = in->to.ndim - nd;
        int64_t ns[NB_MAX_DIMS];
        for (int32_t d = 0; d < in->to.ndim; d++) {
            int32_t sd = d - lead;
            ns[d] = sd < 0 || shape[sd] != in->to.dims[d] ? 0 : strides[sd];
        }
        memcpy(strides, ns, sizeof ns);
        memcpy(shape, in->to.dims, sizeof shape);
        nd = in->to.ndim;
        break;
    }
    case CONF_NARROW:
        off += in->b * strides[in->a];
        shape[in->a] = in->c;
        break;
    case CONF_SELECT:
        off += in->b * strides[in->a];
        for (int32_t d = (int32_t)in->a; d + 1 < nd; d++) {
            shape[d] = shape[d + 1];
            strides[d] = strides[d + 1];
        }
        nd--;
        break;
    }
    if (!conf_host_alloc(out, base->dtype, nd, shape))
        return false;
    int64_t n = conf_numel(out);
    for (int64_t k = 0; k < n; k++) {
        int64_t rem = k, e = off;
        for (int32_t d = nd - 1; d >= 0; d--) {
            e += (rem % shape[d]) * strides[d];
            rem /= shape[d];
        }
        out->v[k] = base->v[e];
    }
    return true;
}

static nb_tensor *device_view(const conf_input *in, nb_tensor *b)
{
    switch (in->view) {
    case CONF_TRANSPOSE: return nb_transpose(b, (int32_t)in->a, (int32_t)in->b);
    case CONF_EXPAND: return nb_expand(b, in->to);
    case CONF_NARROW: return nb_narrow(b, (int32_t)in->a, in->b, in->c);
    case CONF_SELECT: return nb_select(b, (int32_t)in->a, in->b);
    default: return nb_retain(b);
    }
}

static void prepared_free(prepared *p, int32_t n)
{
    for (int32_t k = 0; k < n; k++) {
        conf_host_free(&p[k].base);
        conf_host_free(&p[k].logical);
        nb_release(p[k].t);
        nb_release(p[k].base_t);
        p[k].t = p[k].base_t = NULL;
    }
}

static nb_dtype input_dtype(const conf_input *in, nb_dtype dt)
{
    return in->dtype < 0 ? dt : (nb_dtype)in->dtype;
}

/* Host values of every input (seeded), then the device tensors. grad: float inputs of the
 * dtype under test become leaves that require grad. Returns false with the reason printed. */
static bool prepare_host(const conf_input *ins, int32_t n, nb_dtype dt, prepared *p)
{
    memset(p, 0, (size_t)n * sizeof *p);
    for (int32_t k = 0; k < n; k++) {
        const conf_input *in = &ins[k];
        nb_dtype idt = input_dtype(in, dt);
        if (!conf_host_alloc(&p[k].base, idt, in->base.ndim, in->base.dims))
            return false;
        int64_t m = conf_numel(&p[k].base);
        for (int64_t e = 0; e < m; e++) {
            double v = in->values ? in->values[e % in->n_values] : draw(in->domain, idt);
            p[k].base.v[e] = representable(idt, v);
        }
        if (!host_view(in, &p[k].base, &p[k].logical))
            return false;
    }
    return true;
}

static bool logical_refresh(const conf_input *ins, int32_t n, prepared *p)
{
    for (int32_t k = 0; k < n; k++) {
        conf_host_free(&p[k].logical);
        if (!host_view(&ins[k], &p[k].base, &p[k].logical))
            return false;
    }
    return true;
}

static nb_tensor *upload(const conf_host *h, const char *device, bool requires_grad)
{
    int64_t m = conf_numel(h);
    void *buf = malloc((size_t)(m ? m : 1) * dsize(h->dtype));
    if (!buf)
        return NULL;
    for (int64_t e = 0; e < m; e++)
        put(buf, e, h->dtype, h->v[e]);
    nb_shape s = {.ndim = h->ndim};
    memcpy(s.dims, h->shape, (size_t)h->ndim * sizeof(int64_t));
    nb_tensor *t = nb_from_data(buf, s, (nb_opts){h->dtype, device, requires_grad});
    free(buf);
    return t;
}

static bool prepare_device(const conf_input *ins, int32_t n, nb_dtype dt, const char *device,
                           bool grad, prepared *p)
{
    for (int32_t k = 0; k < n; k++) {
        bool rg = grad && ins[k].dtype < 0 && is_float(dt);
        p[k].base_t = upload(&p[k].base, device, rg);
        p[k].t = p[k].base_t ? device_view(&ins[k], p[k].base_t) : NULL;
        if (!p[k].t)
            return false;
    }
    return true;
}

/* Reads any tensor as doubles through the device's own read path (no dtype conversion on it). */
static bool download(const nb_tensor *t, double **out)
{
    int64_t m = nb_tensor_numel(t);
    nb_dtype dt = nb_tensor_dtype(t);
    void *buf = malloc((size_t)(m ? m : 1) * dsize(dt));
    *out = malloc((size_t)(m ? m : 1) * sizeof **out);
    if (!buf || !*out || nb_tensor_copy_to_host(t, buf, (size_t)m * dsize(dt)) != NB_OK) {
        free(buf);
        free(*out);
        *out = NULL;
        return false;
    }
    for (int64_t e = 0; e < m; e++)
        (*out)[e] = get(buf, e, dt);
    free(buf);
    return true;
}

/* ---- Classification ---- */

static nb_dtype kernel_dtype(const conf_op *op, nb_dtype dt)
{
    if (op->kdtype == CONF_KD_BOOL)
        return NB_DTYPE_BOOL;
    if (op->kdtype == CONF_KD_FLOAT && !is_float(dt))
        return NB_DTYPE_F32;
    if (op->kdtype == CONF_KD_DOUBLE && !is_float(dt))
        return NB_DTYPE_F64;
    return dt;
}

static bool fallback_on(void)
{
    const char *e = getenv("NABLA_CPU_FALLBACK");
    return e && strcmp(e, "1") == 0;
}

/* What a passing check counts as: fallback when NABLA_CPU_FALLBACK is on and the device lacks
 * one of the tier-1 kernels the op runs on; composite when it has no kernel named for the op. */
static conf_result classify_pass(const conf_op *op, nb_dtype dt, const char *device)
{
    nb_dtype kd = kernel_dtype(op, dt);
    if (fallback_on() && strncmp(device, "cpu", 3) != 0 && op->needs) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", op->needs);
        for (char *save = NULL, *k = strtok_r(buf, " ", &save); k; k = strtok_r(NULL, " ", &save))
            if (!nb_device_has_kernel(device, k, kd))
                return CONF_FALLBACK;
    }
    if (!op->kernel || !nb_device_has_kernel(device, op->kernel, kd))
        return CONF_COMPOSITE;
    return CONF_PASS;
}

static void record(conf_cell_out *out, conf_result r)
{
    out->counts.n[r]++;
    /* a cell shows its worst result: fail > unsupported > fallback > composite > pass */
    if (r > out->cell)
        out->cell = r;
}

static bool unsupported_status(nb_status st)
{
    return st == NB_NOT_IMPLEMENTED || st == NB_DTYPE_UNSUPPORTED;
}

static void print_shape(char *buf, size_t len, int32_t ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int32_t d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, d ? ",%lld" : "%lld", (long long)shape[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

#define FAILF(op, dt, device, sample, ...)                                                 \
    do {                                                                                   \
        printf("FAIL %s %s on %s, sample '%s': ", (op)->name, nb_dtype_name(dt), device,   \
               sample);                                                                    \
        printf(__VA_ARGS__);                                                               \
        printf("\n");                                                                      \
    } while (0)

static bool values_match(double got, double ref, conf_tol tol, bool zero_sign)
{
    if (zero_sign && got == 0 && ref == 0)
        return signbit(got) == signbit(ref);
    if (isnan(ref))
        return isnan(got);
    if (isinf(ref))
        return got == ref;
    return fabs(got - ref) <= tol.atol + tol.rtol * fabs(ref);
}

/* Compares a result with the reference; prints the first mismatch. */
static bool compare(const conf_op *op, nb_dtype dt, const char *device, const char *sample,
                    const nb_tensor *got, const conf_host *ref, int flags)
{
    char gs[96], rs[96];
    nb_shape shape = nb_tensor_shape(got);
    print_shape(gs, sizeof gs, shape.ndim, shape.dims);
    print_shape(rs, sizeof rs, ref->ndim, ref->shape);
    if (strcmp(gs, rs) != 0) {
        FAILF(op, dt, device, sample, "shape %s, expected %s", gs, rs);
        return false;
    }
    if (nb_tensor_dtype(got) != ref->dtype) {
        FAILF(op, dt, device, sample, "dtype %s, expected %s", nb_dtype_name(nb_tensor_dtype(got)),
              nb_dtype_name(ref->dtype));
        return false;
    }
    double *v;
    if (!download(got, &v)) {
        FAILF(op, dt, device, sample, "reading the result failed: %s", nb_last_error());
        return false;
    }
    conf_tol tol = conf_tolerance(op, ref->dtype);
    bool ok = true;
    for (int64_t e = 0; e < conf_numel(ref) && ok; e++)
        if (!values_match(v[e], ref->v[e], tol, (flags & CONF_ZERO_SIGN) != 0)) {
            FAILF(op, dt, device, sample, "index %lld: got %.17g, expected %.17g (rtol %g, atol %g)",
                  (long long)e, v[e], ref->v[e], tol.rtol, tol.atol);
            ok = false;
        }
    free(v);
    return ok;
}

/* ---- Forward ---- */

static conf_result check_forward(const conf_op *op, nb_dtype dt, const char *device,
                                 int32_t si)
{
    const conf_sample *s = &op->samples[si];
    prepared p[CONF_MAX_IN];
    nb_tensor *x[CONF_MAX_IN] = {0};
    conf_host ref = {0};
    conf_result r = CONF_FAIL;
    nb_clear_error();
    seed_for(op->name, dt, si);
    if (!prepare_host(s->in, s->n_in, dt, p)) {
        FAILF(op, dt, device, s->name, "out of host memory");
        prepared_free(p, s->n_in);
        return CONF_FAIL;
    }
    if (!prepare_device(s->in, s->n_in, dt, device, false, p)) {
        nb_status st = nb_last_status();
        if (unsupported_status(st))
            r = CONF_UNSUPPORTED;
        else
            FAILF(op, dt, device, s->name, "creating the inputs failed: %s", nb_last_error());
        prepared_free(p, s->n_in);
        return r;
    }
    conf_host lh[CONF_MAX_IN];
    for (int32_t k = 0; k < s->n_in; k++) {
        x[k] = p[k].t;
        lh[k] = p[k].logical;
    }
    bool ref_ok = op->ref(lh, s->n_in, &s->p, &ref);
    nb_tensor *got = op->run(x, s->n_in, &s->p);
    nb_status st = nb_last_status();
    if (!got) {
        if (!ref_ok && st != NB_OK && nb_last_error()[0])
            r = CONF_PASS; /* an error where PyTorch raises one */
        else if (!ref_ok)
            FAILF(op, dt, device, s->name, "returned NULL as expected, but status %s and message "
                  "'%s'", nb_status_str(st), nb_last_error());
        else if (unsupported_status(st))
            r = CONF_UNSUPPORTED;
        else
            FAILF(op, dt, device, s->name, "returned NULL: %s (%s)", nb_last_error(),
                  nb_status_str(st));
    } else if (!ref_ok) {
        /* an asynchronous device checks indexes as the op runs and reports a bad one at the
         * next synchronisation point, as CUDA does with device asserts */
        nb_clear_error();
        nb_status sync = nb_synchronize(device);
        if (sync != NB_OK && nb_last_error()[0])
            r = CONF_PASS;
        else
            FAILF(op, dt, device, s->name, "expected an error, got a result (and synchronize "
                  "returned %s)", nb_status_str(sync));
    } else if (compare(op, dt, device, s->name, got, &ref, s->flags)) {
        r = CONF_PASS;
    }
    if (r == CONF_PASS)
        r = classify_pass(op, dt, device);
    if (r == CONF_UNSUPPORTED && conf_verbose)
        printf("unsupported: %s %s on %s, sample '%s': %s\n", op->name, nb_dtype_name(dt), device,
               s->name, nb_last_error());
    nb_release(got);
    conf_host_free(&ref);
    prepared_free(p, s->n_in);
    return r;
}

/* ---- Gradients (float64) ---- */

/* sum(ref(x) * r) on the host: the function whose gradient the device must produce. */
static bool host_loss(const conf_op *op, const conf_sample *s, prepared *p, const double *r,
                      double *loss)
{
    if (!logical_refresh(s->in, s->n_in, p))
        return false;
    conf_host lh[CONF_MAX_IN], out = {0};
    for (int32_t k = 0; k < s->n_in; k++)
        lh[k] = p[k].logical;
    if (!op->ref(lh, s->n_in, &s->p, &out))
        return false;
    double acc = 0;
    for (int64_t e = 0; e < conf_numel(&out); e++)
        acc += out.v[e] * r[e];
    conf_host_free(&out);
    *loss = acc;
    return true;
}

typedef struct gc_ctx {
    const conf_op *op;
    const conf_sample *s;
    prepared *p;
} gc_ctx;

/* nb_gradcheck's function: the float leaves come in, the fixed inputs come from ctx, views are
 * applied again so they are part of the differentiated function. */
static nb_tensor *gc_fn(nb_tensor *const *inputs, int32_t n_inputs, void *vctx)
{
    gc_ctx *c = vctx;
    nb_tensor *x[CONF_MAX_IN] = {0}, *views[CONF_MAX_IN] = {0};
    int32_t j = 0;
    for (int32_t k = 0; k < c->s->n_in; k++) {
        if (c->s->in[k].dtype < 0 && j < n_inputs) {
            views[k] = device_view(&c->s->in[k], inputs[j++]);
            x[k] = views[k];
        } else {
            x[k] = c->p[k].t;
        }
    }
    nb_tensor *out = c->op->run(x, c->s->n_in, &c->s->p);
    for (int32_t k = 0; k < c->s->n_in; k++)
        nb_release(views[k]);
    return out;
}

static conf_result check_gradgrad(const conf_op *op, const char *device, const conf_sample *s,
                                  gc_ctx *ctx, nb_tensor *const *leaves, int32_t nl);

/* Returns three results: the finite-difference comparison, nb_gradcheck, nb_gradgradcheck. */
static void check_grad(const conf_op *op, const char *device, int32_t si, conf_result res[3])
{
    const conf_sample *s = &op->samples[si];
    const nb_dtype dt = NB_DTYPE_F64;
    const double h = 1e-6, rtol = 1e-4, atol = 1e-5; /* central differences: error ~ h^2 */
    prepared p[CONF_MAX_IN];
    nb_tensor *x[CONF_MAX_IN] = {0};
    res[0] = res[1] = res[2] = CONF_NONE;
    nb_clear_error();
    seed_for(op->name, dt, si);
    if (!prepare_host(s->in, s->n_in, dt, p) || !prepare_device(s->in, s->n_in, dt, device, true, p)) {
        res[0] = unsupported_status(nb_last_status()) ? CONF_UNSUPPORTED : CONF_FAIL;
        if (res[0] == CONF_FAIL)
            FAILF(op, dt, device, s->name, "gradient: creating the inputs failed: %s", nb_last_error());
        prepared_free(p, s->n_in);
        return;
    }
    for (int32_t k = 0; k < s->n_in; k++)
        x[k] = p[k].t;
    nb_tensor *out = op->run(x, s->n_in, &s->p);
    if (out && nb_synchronize(device) != NB_OK) { /* an error the device reports late */
        nb_release(out);
        out = NULL;
    }
    if (!out || !is_float(nb_tensor_dtype(out)) || nb_tensor_numel(out) == 0) {
        /* forward failures are reported by the forward check; nothing to differentiate */
        if (!out && unsupported_status(nb_last_status()))
            res[0] = CONF_UNSUPPORTED;
        nb_release(out);
        prepared_free(p, s->n_in);
        return;
    }
    int64_t m = nb_tensor_numel(out);
    double *r = malloc((size_t)m * sizeof *r);
    conf_host rh = {0};
    for (int64_t e = 0; e < m && r; e++)
        r[e] = -1 + 2 * uniform01();
    nb_shape os = nb_tensor_shape(out);
    bool ok = r && conf_host_alloc(&rh, NB_DTYPE_F64, os.ndim, os.dims);
    if (ok)
        memcpy(rh.v, r, (size_t)m * sizeof *r);
    nb_tensor *rt = ok ? upload(&rh, device, false) : NULL;
    nb_tensor *prod = rt ? nb_mul(out, rt) : NULL, *loss = prod ? nb_sum(prod, NULL, 0, false) : NULL;
    nb_status st = loss ? nb_backward(loss, NULL, (nb_backward_opts){0}) : nb_last_status();
    nb_release(loss);
    nb_release(prod);
    nb_release(rt);
    nb_release(out);
    conf_host_free(&rh);
    if (st != NB_OK) {
        res[0] = unsupported_status(st) ? CONF_UNSUPPORTED : CONF_FAIL;
        if (res[0] == CONF_FAIL)
            FAILF(op, dt, device, s->name, "backward failed: %s", nb_last_error());
    } else {
        res[0] = CONF_PASS;
        for (int32_t k = 0; k < s->n_in && res[0] == CONF_PASS; k++) {
            if (s->in[k].dtype >= 0)
                continue;
            nb_tensor *g = nb_tensor_grad(p[k].base_t);
            int64_t nb = conf_numel(&p[k].base);
            double *gv = NULL;
            if (g && !download(g, &gv)) {
                FAILF(op, dt, device, s->name, "reading the gradient of input %d failed", k);
                res[0] = CONF_FAIL;
            }
            nb_release(g);
            for (int64_t e = 0; e < nb && res[0] == CONF_PASS; e++) {
                double keep = p[k].base.v[e], lp, lm;
                p[k].base.v[e] = keep + h;
                bool a = host_loss(op, s, p, r, &lp);
                p[k].base.v[e] = keep - h;
                bool b = host_loss(op, s, p, r, &lm);
                p[k].base.v[e] = keep;
                if (!a || !b)
                    continue;
                double fd = (lp - lm) / (2 * h), an = gv ? gv[e] : 0;
                if (!(fabs(an - fd) <= atol + rtol * fabs(fd))) {
                    FAILF(op, dt, device, s->name, "gradient of input %d at index %lld: got %.10g, "
                          "finite differences give %.10g", k, (long long)e, an, fd);
                    res[0] = CONF_FAIL;
                }
            }
            free(gv);
        }
        logical_refresh(s->in, s->n_in, p);
    }
    free(r);
    /* nb_gradcheck on the same function, with fresh leaves */
    nb_tensor *leaves[CONF_MAX_IN];
    int32_t nl = 0;
    for (int32_t k = 0; k < s->n_in; k++)
        if (s->in[k].dtype < 0)
            leaves[nl++] = p[k].base_t;
    for (int32_t k = 0; k < nl; k++)
        nb_tensor_zero_grad(leaves[k]);
    gc_ctx ctx = {op, s, p};
    nb_clear_error();
    st = nb_gradcheck(gc_fn, &ctx, leaves, nl, 1e-6, 1e-5, 1e-3);
    if (st == NB_OK) {
        res[1] = CONF_PASS;
    } else if (unsupported_status(st)) {
        res[1] = CONF_UNSUPPORTED;
    } else {
        res[1] = CONF_FAIL;
        FAILF(op, dt, device, s->name, "nb_gradcheck: %s", nb_last_error());
    }
    res[2] = check_gradgrad(op, device, s, &ctx, leaves, nl);
    for (int k = 0; k < 3; k++)
        if (res[k] == CONF_PASS)
            res[k] = classify_pass(op, dt, device);
    prepared_free(p, s->n_in);
}

/* Second derivatives against finite differences of the first (float64). An op the table
 * marks once-differentiable must refuse create_graph with an error instead. */
static conf_result check_gradgrad(const conf_op *op, const char *device, const conf_sample *s,
                                  gc_ctx *ctx, nb_tensor *const *leaves, int32_t nl)
{
    const nb_dtype dt = NB_DTYPE_F64;
    if (conf_sample_at_kink(op, s))
        return CONF_NONE;
    nb_clear_error();
    nb_status st = nb_gradgradcheck(gc_fn, ctx, leaves, nl, 1e-6, 1e-5, 1e-3);
    if (!conf_op_twice_differentiable(op)) {
        if (st != NB_OK && nb_last_error()[0])
            return CONF_PASS;
        FAILF(op, dt, device, s->name, "marked once-differentiable, but gradgradcheck returned "
              "%s without an error", nb_status_str(st));
        return CONF_FAIL;
    }
    if (st == NB_OK)
        return CONF_PASS;
    if (unsupported_status(st))
        return CONF_UNSUPPORTED;
    FAILF(op, dt, device, s->name, "nb_gradgradcheck: %s", nb_last_error());
    return CONF_FAIL;
}

/* A narrower float's gradients against the next wider one's (16-bit against float32, float32
 * against float64), on the same inputs (values of dt, exact in the wider type) and the same
 * upstream gradient, within dt's tolerance: backward in dt computes what the wider type
 * computes, up to the rounding of each of its steps. This is what catches a float32 backward
 * kernel that is wrong where the float64 one is right (gradcheck runs in float64 only,
 * check_grad). No comparison where the device cannot run the wider type (no fp64). */
static conf_result check_grad_narrow(const conf_op *op, nb_dtype dt, const char *device,
                                     int32_t si)
{
    const conf_sample *s = &op->samples[si];
    const nb_dtype wide = dt == NB_DTYPE_F32 ? NB_DTYPE_F64 : NB_DTYPE_F32;
    const nb_dtype run_dt[2] = {dt, wide};
    prepared p[2][CONF_MAX_IN];
    double *g[2][CONF_MAX_IN] = {{0}};
    conf_result res = CONF_NONE;
    nb_clear_error();
    seed_for(op->name, dt, si);
    bool ok = prepare_host(s->in, s->n_in, dt, p[0]);
    memset(p[1], 0, sizeof p[1]);
    for (int32_t k = 0; ok && k < s->n_in; k++) { /* the same values, held in the wider type */
        const conf_host *b = &p[0][k].base;
        ok = conf_host_alloc(&p[1][k].base, s->in[k].dtype < 0 ? wide : b->dtype,
                             b->ndim, b->shape);
        if (ok)
            memcpy(p[1][k].base.v, b->v, (size_t)conf_numel(b) * sizeof *b->v);
    }
    double *up = NULL; /* upstream gradient, 16-bit values */
    int64_t m = -1;
    for (int r = 0; ok && r < 2; r++) {
        ok = prepare_device(s->in, s->n_in, run_dt[r], device, true, p[r]);
        nb_tensor *x[CONF_MAX_IN] = {0};
        for (int32_t k = 0; ok && k < s->n_in; k++)
            x[k] = p[r][k].t;
        nb_tensor *out = ok ? op->run(x, s->n_in, &s->p) : NULL;
        if (!out || !is_float(nb_tensor_dtype(out)) || nb_tensor_numel(out) == 0) {
            nb_release(out); /* forward failures are the forward check's to report */
            ok = false;
            break;
        }
        if (m < 0) {
            m = nb_tensor_numel(out);
            up = malloc((size_t)m * sizeof *up);
            for (int64_t e = 0; up && e < m; e++)
                up[e] = representable(dt, -1 + 2 * uniform01());
        }
        nb_shape os = nb_tensor_shape(out);
        conf_host uh = {0};
        ok = up && nb_tensor_numel(out) == m &&
             conf_host_alloc(&uh, nb_tensor_dtype(out), os.ndim, os.dims);
        if (ok)
            memcpy(uh.v, up, (size_t)m * sizeof *up);
        nb_tensor *ut = ok ? upload(&uh, device, false) : NULL;
        nb_tensor *prod = ut ? nb_mul(out, ut) : NULL;
        nb_tensor *loss = prod ? nb_sum(prod, NULL, 0, false) : NULL;
        /* no loss: the upstream gradient cannot live on this device in out's dtype (float64
         * without fp64); then there is nothing to compare, rather than a missing gradient */
        nb_status st = loss ? nb_backward(loss, NULL, (nb_backward_opts){0}) : NB_OK;
        ok = loss != NULL;
        nb_release(loss);
        nb_release(prod);
        nb_release(ut);
        nb_release(out);
        conf_host_free(&uh);
        if (ok && st != NB_OK) {
            /* a wider reference this device cannot differentiate leaves nothing to compare */
            res = unsupported_status(st) ? (r == 0 ? CONF_UNSUPPORTED : CONF_NONE) : CONF_FAIL;
            if (res == CONF_FAIL)
                FAILF(op, run_dt[r], device, s->name, "backward failed: %s", nb_last_error());
            ok = false;
        }
        for (int32_t k = 0; ok && k < s->n_in; k++) {
            if (s->in[k].dtype >= 0)
                continue;
            nb_tensor *gt = nb_tensor_grad(p[r][k].base_t);
            if (gt && !download(gt, &g[r][k]))
                ok = false;
            nb_release(gt);
        }
    }
    if (ok) {
        conf_tol tol = conf_tolerance(op, dt);
        res = CONF_PASS;
        for (int32_t k = 0; k < s->n_in && res == CONF_PASS; k++) {
            if (s->in[k].dtype >= 0 || (!g[0][k] && !g[1][k]))
                continue;
            if (!g[0][k] || !g[1][k]) {
                FAILF(op, dt, device, s->name, "input %d has a gradient only in %s", k,
                      nb_dtype_name(g[0][k] ? dt : wide));
                res = CONF_FAIL;
                break;
            }
            for (int64_t e = 0; e < conf_numel(&p[0][k].base); e++)
                if (!values_match(g[0][k][e], g[1][k][e], tol, false)) {
                    FAILF(op, dt, device, s->name, "gradient of input %d at index %lld: %.9g, "
                          "%s gives %.9g (rtol %g, atol %g)", k, (long long)e,
                          g[0][k][e], nb_dtype_name(wide), g[1][k][e], tol.rtol, tol.atol);
                    res = CONF_FAIL;
                    break;
                }
        }
        if (res == CONF_PASS)
            res = classify_pass(op, dt, device);
    }
    free(up);
    for (int r = 0; r < 2; r++) {
        for (int32_t k = 0; k < s->n_in; k++)
            free(g[r][k]);
        prepared_free(p[r], s->n_in);
    }
    nb_clear_error();
    return res;
}

void conf_check_cell(const conf_op *op, nb_dtype dt, const char *device, conf_cell_out *out)
{
    memset(out, 0, sizeof *out);
    if (!(op->dtypes & (1u << dt)))
        return;
    if (!conf_op_available(op)) {
        record(out, CONF_UNSUPPORTED);
        return;
    }
    int64_t live = nb_live_tensors();
    for (int32_t si = 0; si < op->n_samples; si++) {
        const conf_sample *s = &op->samples[si];
        if ((s->flags & CONF_FLOAT_ONLY) && !is_float(dt))
            continue;
        conf_result r = check_forward(op, dt, device, si);
        /* float32 is tier 1: every plugin must run it */
        if (r == CONF_UNSUPPORTED && dt == NB_DTYPE_F32) {
            FAILF(op, dt, device, s->name, "not supported, but float32 is tier 1: %s",
                  nb_last_error());
            r = CONF_FAIL;
        }
        record(out, r);
        if (dt == NB_DTYPE_F64 && op->differentiable && !(s->flags & CONF_NO_GRAD) &&
            (r == CONF_PASS || r == CONF_COMPOSITE || r == CONF_FALLBACK)) {
            conf_result g[3];
            check_grad(op, device, si, g);
            for (int k = 0; k < 3; k++)
                if (g[k] != CONF_NONE)
                    record(out, g[k]);
            if (g[2] != CONF_NONE)
                out->gradgrad.n[g[2]]++;
        }
        if ((dt == NB_DTYPE_F16 || dt == NB_DTYPE_BF16 || dt == NB_DTYPE_F32) &&
            op->differentiable && !(s->flags & CONF_NO_GRAD) && !conf_sample_at_kink(op, s) &&
            (r == CONF_PASS || r == CONF_COMPOSITE || r == CONF_FALLBACK)) {
            conf_result g = check_grad_narrow(op, dt, device, si);
            if (g != CONF_NONE)
                record(out, g);
        }
    }
    if (nb_live_tensors() != live) {
        printf("FAIL %s %s on %s: %lld tensors leaked\n", op->name, nb_dtype_name(dt), device,
               (long long)(nb_live_tensors() - live));
        record(out, CONF_FAIL);
    }
}

void conf_check_errors(const conf_op *op, const char *device, conf_cell_out *out)
{
    memset(out, 0, sizeof *out);
    if (!conf_op_available(op)) {
        record(out, CONF_UNSUPPORTED);
        return;
    }
    const nb_dtype dt = NB_DTYPE_F32;
    for (int32_t ei = 0; ei < op->n_errors; ei++) {
        const conf_error *e = &op->errors[ei];
        prepared p[CONF_MAX_IN];
        nb_tensor *x[CONF_MAX_IN] = {0};
        nb_clear_error();
        seed_for(op->name, dt, 1000 + ei);
        if (!prepare_host(e->in, e->n_in, dt, p) ||
            !prepare_device(e->in, e->n_in, dt, device, false, p)) {
            FAILF(op, dt, device, e->name, "creating the error inputs failed: %s", nb_last_error());
            record(out, CONF_FAIL);
            prepared_free(p, e->n_in);
            continue;
        }
        for (int32_t k = 0; k < e->n_in; k++)
            x[k] = e->null_arg == k + 1 ? NULL : p[k].t;
        nb_clear_error();
        nb_tensor *got = op->run(x, e->n_in, &e->p);
        nb_status st = nb_last_status();
        if (got) {
            FAILF(op, dt, device, e->name, "bad input accepted (expected NULL and an error)");
            record(out, CONF_FAIL);
        } else if (st == NB_OK || !nb_last_error()[0]) {
            FAILF(op, dt, device, e->name, "returned NULL with status %s and message '%s'",
                  nb_status_str(st), nb_last_error());
            record(out, CONF_FAIL);
        } else {
            if (conf_verbose)
                printf("error ok: %s '%s': %s\n", op->name, e->name, nb_last_error());
            record(out, CONF_PASS);
        }
        nb_release(got);
        prepared_free(p, e->n_in);
        nb_clear_error();
    }
}
