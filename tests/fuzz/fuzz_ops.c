/* fuzz_ops.c - op chains on the cpu: the bytes pick shapes (zero, huge and overflowing dims
 * among them), dtypes, views, a short chain of ops over a few live tensors, and backward
 * passes. Every error must come back as a status; tensors the chain keeps stay small (real
 * allocations stay bounded), while the checks on shapes that do not fit are always reached. */
#include <math.h>

#include "fuzz_common.h"

#define SLOTS 6
#define KEEP_MAX 512 /* elements of a tensor the chain keeps working on */
#define CHAIN_MAX 40

static const int64_t dims_table[] = {0, 1, 2, 3, 4, 5, 7, 16, -1, -2, (int64_t)1 << 31,
                                     (int64_t)1 << 32, (int64_t)1 << 62, INT64_MAX, INT64_MIN,
                                     INT64_MAX / 2 + 1};
static const int64_t index_table[] = {0, 1, 2, -1, -2, 3, 5, INT64_MAX, INT64_MIN,
                                      INT64_MAX - 1, INT64_MIN + 1, (int64_t)1 << 32};
static const double scalar_table[] = {0, 1, -1, 0.5, 2, 3, -0.0, 1e308, -1e308, INFINITY,
                                      -INFINITY, NAN, 0x1p63, -0x1p63, 9007199254740993.0, 1e-310};
static const nb_dtype dtype_table[] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_F32, NB_DTYPE_I32,
                                       NB_DTYPE_I64, NB_DTYPE_U8, NB_DTYPE_BOOL, NB_DTYPE_F64};
/* conv/pool parameters: small ones that run, huge ones that must be refused */
static const int64_t param_table[] = {0, 1, 2, 3, 1, 0, 2, -1, INT64_MAX, INT64_MAX / 2,
                                      (int64_t)1 << 40, (int64_t)1 << 62};

#define PICK(b, table) ((table)[fuzz_below((b), sizeof(table) / sizeof((table)[0]))])

typedef struct chain {
    fuzz_bytes in;
    nb_tensor *t[SLOTS];
} chain;

static nb_tensor *slot(chain *c) { return c->t[fuzz_below(&c->in, SLOTS)]; }

/* A shape from the bytes; *fits says whether it is small enough to allocate. */
static nb_shape shape_of(chain *c, int32_t max_ndim, bool *fits)
{
    nb_shape s = {.ndim = (int32_t)fuzz_below(&c->in, (uint32_t)max_ndim + 1)};
    int64_t n = 1;
    bool ok = true;
    for (int32_t d = 0; d < s.ndim; d++) {
        s.dims[d] = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, dims_table) : fuzz_below(&c->in, 6);
        ok = ok && s.dims[d] >= 0 && !__builtin_mul_overflow(n, s.dims[d] ? s.dims[d] : 1, &n);
    }
    *fits = ok && n <= KEEP_MAX;
    return s;
}

/* Keeps r in a slot when it is small, releasing what was there; a big result (a huge view,
 * say) is only made and released. Small means every dim counted as at least 1: an empty
 * [2^31, 0] would let matmul ask for a legitimate [2^31, 1] of 8 GB. */
static void keep(chain *c, nb_tensor *r)
{
    nb_clear_error();
    if (!r)
        return;
    int64_t span = 1;
    for (int32_t d = 0; d < nb_tensor_ndim(r) && span <= KEEP_MAX; d++) {
        int64_t n = nb_tensor_size(r, d);
        span = n > KEEP_MAX ? KEEP_MAX + 1 : span * (n > 1 ? n : 1);
    }
    if (span > KEEP_MAX || nb_tensor_ndim(r) < 0) {
        nb_release(r);
        return;
    }
    int k = (int)fuzz_below(&c->in, SLOTS);
    nb_release(c->t[k]);
    c->t[k] = r;
}

static int32_t small_dim(chain *c) { return (int32_t)fuzz_below(&c->in, 11) - 5; }

static void op_create(chain *c)
{
    bool fits;
    nb_shape s = shape_of(c, 4, &fits);
    nb_dtype dt = PICK(&c->in, dtype_table);
    bool grad = fuzz_u8(&c->in) & 1 && nb_dtype_is_float(dt);
    uint32_t kind = fuzz_below(&c->in, 4);
    /* A shape that fits int64 but not memory is tried only where the core must refuse it
     * before any allocation (span or bytes past int64): malloc of terabytes is not under test. */
    int64_t span = 1, bytes;
    bool refused = false, empty = false;
    for (int32_t d = 0; d < s.ndim; d++) {
        refused |= s.dims[d] < 0 ||
                   __builtin_mul_overflow(span, s.dims[d] > 1 ? s.dims[d] : 1, &span);
        empty |= s.dims[d] == 0;
    }
    if (!fits && !refused && !empty &&
        !__builtin_mul_overflow(span, 16, &bytes)) /* the core's bound: span < 2^63 / 16 */
        return;
    nb_opts o = {.dtype = dt, .requires_grad = grad};
    nb_tensor *r = NULL;
    /* ranges: small ones, and ones whose count is past any tensor (1e60, inf, NaN, step 0) */
    static const double ends[] = {-2, -1, 0, 0.5, 1, 3, 7.5, 1e60, INFINITY, NAN, -0x1p63};
    if (fuzz_u8(&c->in) < 32) {
        double a = PICK(&c->in, ends), b = PICK(&c->in, ends), st = PICK(&c->in, ends);
        switch (fuzz_below(&c->in, 3)) {
        case 0: keep(c, nb_arange(a, b, st, o)); break;
        case 1: { /* negative steps, or at most 1023 */
            uint64_t steps = (uint64_t)PICK(&c->in, index_table) & 0x80000000000003ffull;
            keep(c, nb_linspace(a, b, (int64_t)steps, o));
            break;
        }
        default: {
            int64_t n = PICK(&c->in, index_table);
            /* randperm and eye: small sizes run, the rest must be refused before allocating */
            if (n < 8 || n > (int64_t)1 << 59)
                keep(c, fuzz_u8(&c->in) & 1 ? nb_randperm(n, o) : nb_eye(n, n % 5, o));
        }
        }
        return;
    }
    switch (kind) {
    case 0: r = nb_zeros(s, o); break;
    case 1: r = nb_full(s, PICK(&c->in, scalar_table), o); break;
    case 2: r = nb_dtype_is_float(dt) ? nb_randn(s, o) : nb_randint(-3, 4, s, o); break;
    default: r = nb_ones(s, o); break;
    }
    keep(c, r);
}

static void op_unary(chain *c)
{
    nb_tensor *a = slot(c);
    if (!a)
        return;
    nb_tensor *(*const fns[])(const nb_tensor *) = {
        nb_neg, nb_abs, nb_exp, nb_log, nb_sqrt, nb_rsqrt, nb_sin, nb_cos, nb_tanh,
        nb_sigmoid, nb_relu, nb_sign, nb_floor, nb_ceil, nb_round, nb_logical_not, nb_clone,
        nb_contiguous, nb_detach, nb_gelu, nb_squeeze_all, nb_t};
    keep(c, PICK(&c->in, fns)(a));
}

static void op_binary(chain *c)
{
    nb_tensor *a = slot(c), *b = slot(c);
    if (!a || !b)
        return;
    nb_tensor *(*const fns[])(const nb_tensor *, const nb_tensor *) = {
        nb_add, nb_sub, nb_mul, nb_div, nb_pow, nb_maximum, nb_minimum, nb_eq, nb_ne, nb_lt,
        nb_ge, nb_logical_and, nb_logical_xor, nb_matmul};
    keep(c, PICK(&c->in, fns)(a, b));
}

static void op_scalar(chain *c)
{
    nb_tensor *a = slot(c);
    if (!a)
        return;
    double v = PICK(&c->in, scalar_table);
    nb_tensor *(*const fns[])(const nb_tensor *, double) = {
        nb_add_scalar, nb_sub_scalar, nb_mul_scalar, nb_div_scalar, nb_pow_scalar,
        nb_maximum_scalar, nb_rsub_scalar, nb_rdiv_scalar, nb_lt_scalar, nb_eq_scalar};
    uint32_t k = fuzz_below(&c->in, sizeof fns / sizeof fns[0] + 2);
    if (k == sizeof fns / sizeof fns[0])
        keep(c, nb_clamp(a, v, PICK(&c->in, scalar_table)));
    else if (k > sizeof fns / sizeof fns[0])
        keep(c, nb_to_dtype(a, PICK(&c->in, dtype_table)));
    else
        keep(c, fns[k](a, v));
}

static void op_view(chain *c)
{
    nb_tensor *a = slot(c);
    if (!a)
        return;
    bool fits;
    int32_t d0 = small_dim(c), d1 = small_dim(c);
    int64_t i0 = PICK(&c->in, index_table), i1 = PICK(&c->in, index_table);
    switch (fuzz_below(&c->in, 12)) {
    case 0: keep(c, nb_view(a, shape_of(c, 5, &fits))); break;
    case 1: keep(c, nb_reshape(a, shape_of(c, 5, &fits))); break;
    case 2: keep(c, nb_expand(a, shape_of(c, 5, &fits))); break;
    case 3: keep(c, nb_transpose(a, d0, d1)); break;
    case 4: keep(c, nb_narrow(a, d0, i0, i1)); break;
    case 5: keep(c, nb_slice(a, d0, i0, i1, PICK(&c->in, index_table))); break;
    case 6: keep(c, nb_select(a, d0, i0)); break;
    case 7: keep(c, nb_squeeze(a, d0)); break;
    case 8: keep(c, nb_unsqueeze(a, d0)); break;
    case 9: keep(c, nb_flatten(a, d0, d1)); break;
    case 10: {
        int32_t p[NB_MAX_DIMS];
        int32_t n = nb_tensor_ndim(a);
        for (int32_t k = 0; k < n; k++)
            p[k] = fuzz_u8(&c->in) & 0x80 ? small_dim(c) : (k + (int32_t)fuzz_below(&c->in, 2)) % n;
        keep(c, nb_permute(a, p, n));
        break;
    }
    default: keep(c, nb_slice(a, d0, 0, i1, 1 + fuzz_below(&c->in, 3))); break;
    }
}

static void op_reduce(chain *c)
{
    nb_tensor *a = slot(c);
    if (!a)
        return;
    int32_t dims[4];
    int32_t nd = (int32_t)fuzz_below(&c->in, 6) - 1; /* -1 .. 4 */
    for (int k = 0; k < 4; k++)
        dims[k] = small_dim(c);
    const int32_t *dp = fuzz_u8(&c->in) & 0x40 ? NULL : dims;
    bool kd = fuzz_u8(&c->in) & 1;
    int64_t corr = PICK(&c->in, index_table);
    switch (fuzz_below(&c->in, 11)) {
    case 0: keep(c, nb_sum(a, dp, nd, kd)); break;
    case 1: keep(c, nb_mean(a, dp, nd, kd)); break;
    case 2: keep(c, nb_prod(a, dp, nd, kd)); break;
    case 3: keep(c, nb_amax(a, dp, nd, kd)); break;
    case 4: keep(c, nb_amin(a, dp, nd, kd)); break;
    case 5: keep(c, nb_var(a, dp, nd, corr, kd)); break;
    case 6: keep(c, nb_std(a, dp, nd, corr, kd)); break;
    case 7: keep(c, nb_argmax(a, fuzz_u8(&c->in) & 1 ? NB_ALL_DIMS : dims[0], kd)); break;
    case 8: keep(c, nb_softmax(a, dims[0])); break;
    case 9: keep(c, nb_log_softmax(a, dims[0])); break;
    default: keep(c, nb_norm(a, PICK(&c->in, scalar_table), dp, nd, kd)); break;
    }
}

static void op_window(chain *c)
{
    nb_tensor *x = slot(c), *w = slot(c);
    if (!x)
        return;
    int64_t p[7];
    for (int k = 0; k < 7; k++)
        p[k] = PICK(&c->in, param_table);
    switch (fuzz_below(&c->in, 3)) {
    case 0:
        if (w)
            keep(c, nb_conv2d(x, w, fuzz_u8(&c->in) & 1 ? slot(c) : NULL,
                              (nb_conv2d_opts){{p[0], p[1]}, {p[2], p[3]}, {p[4], p[5]}, p[6]}));
        break;
    case 1:
        keep(c, nb_max_pool2d(x, (nb_pool2d_opts){{p[0], p[1]}, {p[2], p[3]}, {p[4], p[5]}}));
        break;
    default:
        keep(c, nb_avg_pool2d(x, (nb_pool2d_opts){{p[0], p[1]}, {p[2], p[3]}, {p[4], p[5]}}));
        break;
    }
}

static void op_pair(chain *c)
{
    nb_tensor *a = slot(c), *b = slot(c), *i = slot(c);
    if (!a || !b)
        return;
    nb_tensor *ab[2] = {a, b};
    int32_t d = small_dim(c);
    nb_reduction r = (nb_reduction)fuzz_below(&c->in, 3);
    switch (fuzz_below(&c->in, 11)) {
    case 0: keep(c, nb_cat(ab, 2, d)); break;
    case 1: keep(c, nb_stack(ab, 2, d)); break;
    case 2: keep(c, i ? nb_gather(a, d, i) : NULL); break;
    case 3: keep(c, i ? nb_scatter_add(a, d, i, b) : NULL); break;
    case 4: keep(c, i ? nb_where(i, a, b) : NULL); break;
    case 5: keep(c, nb_mse_loss(a, b, r)); break;
    case 6: keep(c, nb_binary_cross_entropy(a, b, r)); break;
    case 7: keep(c, nb_binary_cross_entropy_with_logits(a, b, r)); break;
    case 8: keep(c, nb_cross_entropy(a, b, r)); break;
    case 9: keep(c, nb_nll_loss(a, b, r)); break;
    default: keep(c, nb_linear(a, b, i)); break;
    }
}

static void op_backward(chain *c)
{
    nb_tensor *a = slot(c);
    if (!a || !nb_tensor_requires_grad(a))
        return;
    /* no create_graph: as in PyTorch, it makes a cycle between a leaf and its .grad */
    const nb_backward_opts opts = {.retain_graph = fuzz_u8(&c->in) & 1};
    if (fuzz_u8(&c->in) & 1) {
        nb_tensor *s = nb_sum(a, NULL, 0, false);
        if (s)
            (void)nb_backward(s, NULL, opts);
        nb_release(s);
    } else {
        nb_tensor *g = nb_ones_like(a);
        (void)nb_backward(a, g, opts);
        nb_release(g);
    }
    nb_clear_error();
    nb_tensor *leaf = slot(c), *g = leaf ? nb_tensor_grad(leaf) : NULL;
    keep(c, g);
}

static void op_read(chain *c)
{
    nb_tensor *a = slot(c);
    if (!a)
        return;
    char *s = nb_tensor_str(a);
    if (s)
        (void)strlen(s);
    nb_free(s);
    double v;
    (void)nb_item(a, &v);
    nb_clear_error();
}

/* The mixed-precision and attention entry points: 16-bit casts, layer_norm with a
 * normalized_shape that may not match, embedding with indices and padding_idx out of range,
 * sdpa with masks of any shape and dtype, a MultiheadAttention of any embed_dim / num_heads,
 * autocast regions opened and closed in any order, and a grad scaler used out of turn. */
static const nb_dtype half_table[] = {NB_DTYPE_F16, NB_DTYPE_BF16, NB_DTYPE_F32, NB_DTYPE_I64,
                                      (nb_dtype)0, NB_DTYPE_BOOL, NB_DTYPE_COUNT, (nb_dtype)-1};

typedef struct mixed_state {
    int open;                /* autocast regions this input opened and has not closed */
    nb_grad_scaler *scaler;
} mixed_state;

static mixed_state mixed;

static void op_mixed(chain *c)
{
    nb_tensor *a = slot(c), *b = slot(c), *d = slot(c);
    int64_t i0 = PICK(&c->in, index_table);
    double v = PICK(&c->in, scalar_table);
    switch (fuzz_below(&c->in, 10)) {
    case 0:
        if (a)
            keep(c, nb_to_dtype(a, PICK(&c->in, half_table)));
        break;
    case 1: { /* normalized_shape: the tail of a's shape, or anything */
        int64_t ns[NB_MAX_DIMS + 1];
        int32_t n = small_dim(c) + 2; /* -3 .. 7 */
        for (int32_t k = 0; k < NB_MAX_DIMS + 1; k++) {
            int32_t at = a ? nb_tensor_ndim(a) - (n > 0 ? n : 0) + k : -1;
            ns[k] = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, dims_table)
                    : a && at >= 0 && at < nb_tensor_ndim(a) ? nb_tensor_size(a, at)
                                                             : fuzz_below(&c->in, 4);
        }
        keep(c, nb_layer_norm(a, fuzz_u8(&c->in) & 1 ? NULL : ns, n, b, d, v));
        break;
    }
    case 2:
        keep(c, nb_embedding(a, b, fuzz_u8(&c->in) & 1 ? NB_NO_PADDING_IDX : i0));
        break;
    case 3: {
        nb_tensor *v3 = slot(c);
        nb_sdpa_opts o = {.attn_mask = fuzz_u8(&c->in) & 1 ? d : NULL,
                          .dropout_p = fuzz_u8(&c->in) & 1 ? PICK(&c->in, scalar_table) : 0,
                          .is_causal = fuzz_u8(&c->in) & 1,
                          .scale = fuzz_u8(&c->in) & 1 ? PICK(&c->in, scalar_table) : 0};
        keep(c, nb_scaled_dot_product_attention(a, b, v3, o));
        break;
    }
    case 4: { /* embed_dim, num_heads from small values and huge ones */
        int64_t e = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 9);
        int64_t h = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 5);
        uint8_t f = fuzz_u8(&c->in);
        if (e > 64 && e < ((int64_t)1 << 40)) /* a real allocation of e^2: not under test */
            break;
        nb_module *m;
        if (fuzz_u8(&c->in) & 1) {
            m = nb_multihead_attention_new(e, h, f & 1, f & 2, (nb_opts){0});
        } else { /* the full constructor: dropout, bias_kv, zero_attn, kdim and vdim */
            uint8_t g = fuzz_u8(&c->in);
            int64_t kd = g & 0x80 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 9);
            int64_t vd = g & 0x40 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 9);
            if ((kd > 64 && kd < ((int64_t)1 << 40)) || (vd > 64 && vd < ((int64_t)1 << 40)))
                break;
            nb_mha_config cfg = {.dropout = g & 1 ? PICK(&c->in, scalar_table) : 0,
                                 .no_bias = g & 2, .add_bias_kv = g & 4, .add_zero_attn = g & 8,
                                 .kdim = kd, .vdim = vd, .batch_first = g & 16};
            m = nb_multihead_attention_new_opts(e, h, cfg, (nb_opts){0});
            if (m && g & 32)
                (void)nb_module_train(m, false);
        }
        if (!m) {
            nb_clear_error();
            break;
        }
        nb_tensor *w = NULL, **wp = f & 4 ? &w : NULL;
        nb_mha_opts o = {.key_padding_mask = f & 8 ? slot(c) : NULL,
                         .attn_mask = f & 16 ? slot(c) : NULL, .is_causal = f & 32,
                         .per_head_weights = fuzz_u8(&c->in) & 1};
        if (f & 64)
            keep(c, nb_module_forward(m, a));
        else
            keep(c, nb_multihead_attention(m, a, f & 128 ? a : b, f & 128 ? a : d, o, wp));
        if (w)
            keep(c, w);
        nb_module_free(m);
        break;
    }
    case 5: {
        static const char *const devs[] = {"cpu", NULL, "cpu:0", "cpu:7", "", "opencl:0", "x"};
        const char *dev = PICK(&c->in, devs);
        nb_dtype dt = PICK(&c->in, half_table);
        nb_status st = fuzz_u8(&c->in) & 1 ? nb_autocast_begin(dev, dt)
                                           : nb_autocast_begin_ex(dev, dt, fuzz_u8(&c->in) & 1);
        mixed.open += st == NB_OK;
        (void)nb_autocast_is_enabled(PICK(&c->in, devs));
        (void)nb_autocast_dtype(PICK(&c->in, devs));
        nb_clear_error();
        break;
    }
    case 6: /* closed more often than opened: NB_STATE, never a crash */
        if (nb_autocast_end() == NB_OK)
            mixed.open--;
        nb_clear_error();
        break;
    case 7:
        if (!mixed.scaler || fuzz_u8(&c->in) & 1) {
            nb_grad_scaler_free(mixed.scaler);
            nb_grad_scaler_opts o = {.init_scale = v, .growth_factor = PICK(&c->in, scalar_table),
                                     .backoff_factor = PICK(&c->in, scalar_table),
                                     .growth_interval = PICK(&c->in, index_table),
                                     .disabled = fuzz_u8(&c->in) & 1};
            if (fuzz_u8(&c->in) & 1)
                o = (nb_grad_scaler_opts){.disabled = o.disabled};
            mixed.scaler = nb_grad_scaler_new(o);
        }
        keep(c, nb_grad_scaler_scale(fuzz_u8(&c->in) & 1 ? mixed.scaler : NULL, a));
        (void)nb_grad_scaler_get_scale(mixed.scaler);
        (void)nb_grad_scaler_skipped_steps(mixed.scaler);
        break;
    case 8: { /* unscale / step / update in any order, on an optimizer over the slots */
        nb_tensor *ps[3] = {a, b, d};
        int32_t n = 0;
        for (int k = 0; k < 3; k++)
            if (ps[k] && nb_tensor_requires_grad(ps[k]))
                ps[n++] = ps[k];
        nb_optim *o = nb_sgd_new(ps, n, (nb_sgd_opts){.lr = 0.1});
        nb_grad_scaler *s = fuzz_u8(&c->in) & 1 ? mixed.scaler : NULL;
        for (int k = 0; k < 4; k++) {
            switch (fuzz_below(&c->in, 4)) {
            case 0: (void)nb_grad_scaler_unscale(s, o); break;
            case 1: (void)nb_grad_scaler_step(s, o); break;
            case 2: (void)nb_grad_scaler_update(s); break;
            default: (void)nb_grad_scaler_unscale(s, NULL); break;
            }
        }
        nb_optim_free(o);
        nb_clear_error();
        break;
    }
    default: {
        char buf[64];
        static const char *const devs[] = {"cpu", NULL, "cpu:1", "", "opencl:9"};
        size_t len = PICK(&c->in, ((const size_t[]){0, 1, 2, 16, 64}));
        (void)nb_device_info(PICK(&c->in, devs), fuzz_u8(&c->in) & 1 ? buf : NULL, len);
        nb_clear_error();
        break;
    }
    }
}

/* The functional ops past the tutorial (issue 14's list): activations with any parameter,
 * group_norm and batch_norm with stats of any shape, the option-carrying losses, window ops
 * with every option, sorting and selection, triangles, einsum equations from a small grammar
 * of good and bad strings, and the gradient clippers over the slots. */
static const char *const einsum_table[] = {
    "ij,jk->ik", "bhqd,bhkd->bhqk", "bi,bj->bij", "i,i->", "ij,ij->ij", "ij,kj->ik",
    "i,j->ij",   "ii,i->i",         "ij,jk",      "",      "->",        "ij,jk->iz",
    "i j,j->i",  "ab,bc->ac,",      "IJ,JK->IK",  "ijklmnopq,q->i"};

static void op_extra(chain *c)
{
    nb_tensor *a = slot(c), *b = slot(c), *d = slot(c);
    int64_t i0 = PICK(&c->in, index_table);
    int32_t d0 = small_dim(c);
    double v = PICK(&c->in, scalar_table), w = PICK(&c->in, scalar_table);
    nb_reduction r = (nb_reduction)fuzz_below(&c->in, 5); /* BATCHMEAN and one past the end */
    bool f = fuzz_u8(&c->in) & 1;
    switch (fuzz_below(&c->in, 16)) {
    case 0: {
        nb_tensor *(*const fns[])(const nb_tensor *) = {nb_silu, nb_gelu_tanh, nb_log_sigmoid};
        keep(c, PICK(&c->in, fns)(a));
        break;
    }
    case 1:
        switch (fuzz_below(&c->in, 5)) {
        case 0: keep(c, nb_leaky_relu(a, v)); break;
        case 1: keep(c, nb_elu(a, v)); break;
        case 2: keep(c, nb_softplus(a, v, w)); break;
        case 3: keep(c, nb_hardtanh(a, v, w)); break;
        default: keep(c, nb_rpow_scalar(a, v)); break;
        }
        break;
    case 2:
        keep(c, nb_group_norm(a, i0, f ? b : NULL, fuzz_u8(&c->in) & 1 ? d : NULL, v));
        break;
    case 3:
        keep(c, nb_batch_norm(a, f ? b : NULL, f ? d : NULL, fuzz_u8(&c->in) & 1 ? slot(c) : NULL,
                              fuzz_u8(&c->in) & 1 ? slot(c) : NULL, fuzz_u8(&c->in) & 1, v, w));
        break;
    case 4: {
        nb_class_loss_opts o = {.reduction = r, .weight = f ? d : NULL, .ignore_index = i0,
                                .ignore_index_set = fuzz_u8(&c->in) & 1, .label_smoothing = v};
        keep(c, fuzz_u8(&c->in) & 1 ? nb_cross_entropy_ex(a, b, o) : nb_nll_loss_ex(a, b, o));
        break;
    }
    case 5:
        switch (fuzz_below(&c->in, 4)) {
        case 0: keep(c, nb_smooth_l1_loss(a, b, r, v)); break;
        case 1: keep(c, nb_huber_loss(a, b, r, v)); break;
        case 2: keep(c, nb_kl_div(a, b, r, f)); break;
        default: {
            nb_tensor *pw = fuzz_u8(&c->in) & 1 ? slot(c) : NULL;
            keep(c, nb_binary_cross_entropy_with_logits_ex(a, b, f ? d : NULL, pw, r));
            break;
        }
        }
        break;
    case 6: { /* pool options the first chain leaves at zero */
        int64_t p[8];
        for (int k = 0; k < 8; k++)
            p[k] = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 4);
        nb_pool2d_opts o = {{p[0], p[1]}, {p[2], p[3]}, {p[4], p[5]}, {p[6], p[7]}, f,
                            fuzz_u8(&c->in) & 1};
        keep(c, fuzz_u8(&c->in) & 1 ? nb_max_pool2d(a, o) : nb_avg_pool2d(a, o));
        break;
    }
    case 7: {
        int64_t oh = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 5);
        int64_t ow = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 5);
        keep(c, nb_adaptive_avg_pool2d(a, oh, ow));
        break;
    }
    case 8: { /* conv with padding="same" and dilation */
        int64_t p[4];
        for (int k = 0; k < 4; k++)
            p[k] = fuzz_u8(&c->in) & 0x80 ? PICK(&c->in, param_table) : fuzz_below(&c->in, 3);
        if (b)
            keep(c, nb_conv2d(a, b, f ? d : NULL,
                              (nb_conv2d_opts){.stride = {p[0], p[0]}, .dilation = {p[1], p[2]},
                                               .groups = p[3], .padding_same = true}));
        break;
    }
    case 9: {
        nb_tensor *vals = NULL, *idx = NULL;
        nb_tensor **vp = fuzz_u8(&c->in) & 1 ? &vals : NULL, **ip = f ? &idx : NULL;
        switch (fuzz_below(&c->in, 3)) {
        case 0: (void)nb_sort(a, d0, fuzz_u8(&c->in) & 1, vp, ip); break;
        case 1: (void)nb_topk(a, i0, d0, fuzz_u8(&c->in) & 1, vp, ip); break;
        default: keep(c, nb_argsort(a, d0, f)); break;
        }
        keep(c, vals);
        keep(c, idx);
        break;
    }
    case 10: {
        nb_tensor *vals = NULL, *idx = NULL;
        (void)(f ? nb_max_dim : nb_min_dim)(a, d0, fuzz_u8(&c->in) & 1,
                                             fuzz_u8(&c->in) & 1 ? &vals : NULL,
                                             fuzz_u8(&c->in) & 1 ? &idx : NULL);
        nb_tensor *am = nb_argmin(a, fuzz_u8(&c->in) & 1 ? NB_ALL_DIMS : d0, f);
        keep(c, vals); /* keep may release a slot: a is not used after this */
        keep(c, idx);
        keep(c, am);
        break;
    }
    case 11:
        switch (fuzz_below(&c->in, 5)) {
        case 0: keep(c, nb_cumsum(a, d0)); break;
        case 1: keep(c, nb_tril(a, i0)); break;
        case 2: keep(c, nb_triu(a, i0)); break;
        case 3: keep(c, nb_masked_fill(a, b, v)); break;
        default: keep(c, nb_index_select(a, d0, b)); break;
        }
        break;
    case 12: {
        int32_t dims[3] = {d0, small_dim(c), small_dim(c)};
        int32_t nd = (int32_t)fuzz_below(&c->in, 4);
        keep(c, nb_logsumexp(a, fuzz_u8(&c->in) & 1 ? NULL : dims, nd, f));
        break;
    }
    case 13:
        switch (fuzz_below(&c->in, 4)) {
        case 0: {
            const char *eq = fuzz_u8(&c->in) & 1 ? PICK(&c->in, einsum_table) : NULL;
            keep(c, nb_einsum(eq, a, b));
            break;
        }
        case 1: keep(c, nb_outer(a, b)); break;
        case 2: keep(c, nb_bmm(a, b)); break;
        default: keep(c, nb_addmm(d, a, b, v, w)); break;
        }
        break;
    case 14: { /* the clippers over whichever slots hold gradients */
        nb_tensor *ps[3] = {a, b, d};
        double total = 0;
        int32_t n = (int32_t)fuzz_below(&c->in, 4);
        if (f)
            (void)nb_clip_grad_norm_(n ? ps : NULL, n, v, w, fuzz_u8(&c->in) & 1 ? &total : NULL);
        else
            (void)nb_clip_grad_value_(n ? ps : NULL, n, v);
        nb_clear_error();
        break;
    }
    default:
        keep(c, nb_dropout(a, v, f));
        break;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    chain c = {.in = {data, size, 0}};
    uint8_t mode = fuzz_u8(&c.in);
    if (mode & 1) /* every tensor the chain receives is tracked, and released by the chain too */
        nb_scope_begin();
    if (mode & 2)
        nb_no_grad_begin();
    nb_manual_seed(mode);
    void (*const ops[])(chain *) = {op_create, op_create, op_unary, op_binary, op_scalar,
                                    op_view, op_view, op_reduce, op_window, op_pair,
                                    op_backward, op_read, op_mixed, op_mixed};
    /* The table's length fixes how every op byte decodes, so the checked-in inputs keep their
     * meaning only while it stays as it is: later families hang off the one byte value no
     * regression input holds at an op position, 0xff. */
    for (int k = 0; k < CHAIN_MAX && !fuzz_done(&c.in); k++) {
        uint8_t b = fuzz_u8(&c.in);
        if (b == 0xff)
            op_extra(&c);
        else
            ops[b % (sizeof ops / sizeof ops[0])](&c);
    }
    for (int k = 0; k < SLOTS; k++)
        nb_release(c.t[k]);
    for (; mixed.open > 0; mixed.open--) /* before the scopes: a region holds its casts */
        (void)nb_autocast_end();
    nb_grad_scaler_free(mixed.scaler);
    mixed.scaler = NULL;
    if (mode & 2)
        nb_no_grad_end();
    if (mode & 1)
        nb_scope_end();
    fuzz_check_clean();
    return 0;
}
