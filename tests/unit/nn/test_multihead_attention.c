/* test_multihead_attention.c - tests core/nn/multihead_attention.c: nn.MultiheadAttention
 * against PyTorch 2.15 (float64, cpu) with the same weights, for every constructor option
 * (kdim/vdim, add_bias_kv, add_zero_attn, bias, batch_first, dropout) and forward option
 * (masks, averaged or per-head weights, the is_causal hint); state_dict names and files torch
 * wrote, the repr, init, dropout in training and eval, gradcheck and bad shapes. */
#include "nn_extra_helpers.h"

#include <stdio.h>

/* ref_* below: python3 test_multihead_attention_ref.py > test_multihead_attention_ref.h */
#include "test_multihead_attention_ref.h"

/* The PyTorch side (every number below comes from it):
 * def seq(n, f): return torch.tensor([f(i) for i in range(n)], dtype=torch.float64)
 * m = torch.nn.MultiheadAttention(4, 2, bias=True, batch_first=bf, dtype=torch.float64)
 * in_proj_weight = seq(48, 0.5 sin(0.3 i + 0.1)).view(12, 4); in_proj_bias = seq(12, 0.1 cos i)
 * out_proj.weight = seq(16, 0.4 sin(0.7 i)).view(4, 4); out_proj.bias = seq(4, 0.05 i)
 * q = seq(24, sin(0.37 i)).view(2, 3, 4); k = seq(40, cos(0.23 i)).view(2, 5, 4)
 * v = seq(40, sin(0.11 i + 1)).view(2, 5, 4); x = seq(32, sin(0.41 i)).view(4, 2, 4)
 * A: m(q, k, v, need_weights=True) (batch_first)
 * B: m(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
 * C: m2(x, x, x, attn_mask=triu(ones(4, 4), 1).bool(), is_causal=True, need_weights=False)
 *    (m2: batch_first=False); D: the same with need_weights=True (weights D_w, output = C) */
static const double A_out[] = {
    -0.00311805182329, -0.256297985982, 0.680319662412, -0.637282315325, 0.01434851374,
    -0.277360600923, 0.702544429549, -0.65810104461, 0.0451834645844, -0.366232393664,
    0.839183455855, -0.826717938256, -0.167144160482, 0.550733818172, -0.676461019938,
    1.11246402112, -0.175452202602, 0.545126401904, -0.657586112056, 1.08250271761,
    -0.180476841593, 0.532091633078, -0.627998172279, 1.0397806507};
static const double A_w[] = {
    0.0935286898691, 0.124742528679, 0.212062620698, 0.300670721612, 0.268995439143,
    0.132861765448, 0.144497935595, 0.195241248547, 0.258398699224, 0.269000351186,
    0.288264444305, 0.240469760259, 0.175394501399, 0.143045283816, 0.152826010221,
    0.159074022425, 0.201649043442, 0.235280623782, 0.223773979159, 0.180222331192, 0.21212065878,
    0.146756102071, 0.141476234522, 0.196007883799, 0.303639120829, 0.253775747845,
    0.163455991709, 0.137275525325, 0.17305560399, 0.272437131131};
static const double B_out[] = {
    0.0524872747596, -0.4299653602, 0.951980895495, -0.975545506917, 0.0641986030711,
    -0.456497418466, 0.990267763269, -1.02116293299, 0.0632799339309, -0.464619761948,
    1.00649253938, -1.04361528256, -0.165806082913, 0.565760646968, -0.706116325108,
    1.15332097442, -0.171586388853, 0.513532199859, -0.601914399801, 1.0091866576,
    -0.178452541976, 0.639570787683, -0.832560993145, 1.31778881587};
static const double C_out[] = {
    0.155069482624, -0.368603835383, 0.733766288552, -0.625693676288, -0.0710612478409,
    -0.211667358238, 0.664158909352, -0.651458897919, 0.0200774871454, 0.0315475299459,
    0.114695171906, 0.140760231515, -0.0869636633373, 0.0659108976956, 0.156980456799,
    0.0267125835485, -0.10220687646, 0.0704918984953, 0.16359102733, 0.00967432827117,
    -0.0316267137009, 0.0267618334327, 0.175417753093, 0.0311175828735, 0.0337567313335,
    0.00663060436644, 0.147970495601, 0.102971650337, -0.0758485181632, 0.0893297542128,
    0.101733772019, 0.107403048328};
static const double D_w[] = {
    1, 0, 0, 0, 0.536761961775, 0.463238038225, 0, 0, 0.316227445301, 0.418013132357,
    0.265759422341, 0, 0.254720123434, 0.241881871626, 0.290984751523, 0.212413253416, 1, 0, 0, 0,
    0.537312761465, 0.462687238535, 0, 0, 0.298805103993, 0.411570816631, 0.289624079376, 0,
    0.230943995658, 0.270176034775, 0.246789956987, 0.252090012581};

static nb_tensor *seq(nb_shape s, double a, double b, double c, bool use_cos)
{
    int64_t n = 1;
    for (int32_t d = 0; d < s.ndim; d++)
        n *= s.dims[d];
    double v[64];
    assert_true(n <= 64);
    for (int64_t i = 0; i < n; i++)
        v[i] = a * (use_cos ? cos(b * (double)i + c) : sin(b * (double)i + c));
    return tf64(s, v, false);
}

/* state tensor by name */
static nb_tensor *state(nb_module *m, const char *name)
{
    for (int32_t i = 0; i < nb_module_state_count(m); i++) {
        const char *n = NULL;
        nb_tensor *t = nb_module_state(m, i, &n);
        if (n && strcmp(n, name) == 0)
            return t;
    }
    fail_msg("no state tensor %s", name);
    return NULL;
}

static void set_state(nb_module *m, const char *name, nb_tensor *value)
{
    nb_no_grad_begin();
    NB_ASSERT_OK_(nb_tensor_copy_(state(m, name), value));
    nb_no_grad_end();
    nb_release(value);
}

static nb_module *make(bool batch_first)
{
    nb_module *m = nb_multihead_attention_new(4, 2, true, batch_first,
                                              (nb_opts){.dtype = NB_DTYPE_F64});
    assert_non_null(m);
    set_state(m, "in_proj_weight", seq(NB_SHAPE(12, 4), 0.5, 0.3, 0.1, false));
    double b[12], ob[4];
    for (int i = 0; i < 12; i++)
        b[i] = 0.1 * cos((double)i);
    for (int i = 0; i < 4; i++)
        ob[i] = 0.05 * i;
    set_state(m, "in_proj_bias", tf64(NB_SHAPE(12), b, false));
    set_state(m, "out_proj.weight", seq(NB_SHAPE(4, 4), 0.4, 0.7, 0, false));
    set_state(m, "out_proj.bias", tf64(NB_SHAPE(4), ob, false));
    return m;
}

static void names_and_init_follow_pytorch(void **state_)
{
    (void)state_;
    nb_module *m = nb_multihead_attention_new(64, 4, true, true, (nb_opts){0});
    assert_non_null(m);
    static const char *names[] = {"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                  "out_proj.bias"};
    assert_int_equal(nb_module_state_count(m), 4);
    for (int i = 0; i < 4; i++) {
        const char *n = NULL;
        assert_non_null(nb_module_state(m, i, &n));
        assert_string_equal(n, names[i]);
    }
    assert_string_equal(nb_module_type(m), "MultiheadAttention");
    /* xavier_uniform_: |w| <= sqrt(6 / (64 + 192)); the biases start at zero */
    nb_tensor *w = state(m, "in_proj_weight"), *b = state(m, "in_proj_bias");
    nb_scope_begin();
    nb_tensor *amax = nb_max(nb_abs(w)), *bsum = nb_sum(nb_abs(b), NULL, 0, false);
    nb_tensor *obsum = nb_sum(nb_abs(state(m, "out_proj.bias")), NULL, 0, false);
    double vmax = 0, vb = 1, vob = 1;
    NB_ASSERT_OK_(nb_item(amax, &vmax));
    NB_ASSERT_OK_(nb_item(bsum, &vb));
    NB_ASSERT_OK_(nb_item(obsum, &vob));
    assert_true(vmax <= sqrt(6.0 / 256) && vmax > 0.5 * sqrt(6.0 / 256));
    assert_true(vb == 0 && vob == 0);
    nb_scope_end();
    nb_module_free(m);
}

static void batch_first_cross_attention_and_weights_match_pytorch(void **state_)
{
    (void)state_;
    nb_module *m = make(true);
    nb_tensor *q = seq(NB_SHAPE(2, 3, 4), 1, 0.37, 0, false);
    nb_tensor *k = seq(NB_SHAPE(2, 5, 4), 1, 0.23, 0, true);
    nb_tensor *v = seq(NB_SHAPE(2, 5, 4), 1, 0.11, 1, false);
    nb_tensor *w = NULL;
    nb_tensor *o = nb_multihead_attention(m, q, k, v, (nb_mha_opts){0}, &w);
    expect_values(o, A_out, 24, 1e-10);
    expect_values(w, A_w, 30, 1e-10);
    nb_shape ws = nb_tensor_shape(w);
    assert_int_equal(ws.ndim, 3);
    assert_int_equal(ws.dims[2], 5);
    nb_release(o);
    nb_release(w);
    /* no weights asked: the fused path, the same output */
    o = nb_multihead_attention(m, q, k, v, (nb_mha_opts){0}, NULL);
    expect_values(o, A_out, 24, 1e-10);
    nb_release(o);
    /* masks: key_padding_mask (N, S) and attn_mask (L, S), true = masked out */
    const uint8_t kpm_v[] = {0, 0, 0, 1, 1, 0, 1, 0, 0, 0};
    const uint8_t am_v[] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0};
    nb_tensor *kpm = nb_from_data(kpm_v, NB_SHAPE(2, 5), (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *am = nb_from_data(am_v, NB_SHAPE(3, 5), (nb_opts){.dtype = NB_DTYPE_BOOL});
    o = nb_multihead_attention(m, q, k, v,
                               (nb_mha_opts){.key_padding_mask = kpm, .attn_mask = am}, NULL);
    expect_values(o, B_out, 24, 1e-10);
    nb_release(o);
    nb_release(kpm);
    nb_release(am);
    nb_release(q);
    nb_release(k);
    nb_release(v);
    nb_module_free(m);
}

static void seq_first_causal_hint_matches_the_explicit_mask(void **state_)
{
    (void)state_;
    nb_module *m = make(false);
    nb_tensor *x = seq(NB_SHAPE(4, 2, 4), 1, 0.41, 0, false);
    uint8_t cm[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            cm[i * 4 + j] = j > i;
    nb_tensor *mask = nb_from_data(cm, NB_SHAPE(4, 4), (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *o = nb_multihead_attention(m, x, x, x,
                                          (nb_mha_opts){.attn_mask = mask, .is_causal = true},
                                          NULL);
    expect_values(o, C_out, 32, 1e-10);
    nb_shape os = nb_tensor_shape(o);
    assert_int_equal(os.dims[0], 4); /* (L, N, E) back */
    assert_int_equal(os.dims[1], 2);
    nb_release(o);
    nb_tensor *w = NULL;
    o = nb_multihead_attention(m, x, x, x, (nb_mha_opts){.attn_mask = mask}, &w);
    expect_values(o, C_out, 32, 1e-10);
    expect_values(w, D_w, 32, 1e-10);
    nb_release(o);
    nb_release(w);
    /* nb_module_forward is self-attention without a mask; an unbatched (L, E) input works */
    nb_tensor *x0 = nb_select(x, 1, 0);
    nb_tensor *o1 = nb_module_forward(m, x0);
    nb_tensor *o2 = nb_multihead_attention(m, x0, x0, x0, (nb_mha_opts){0}, NULL);
    assert_non_null(o1);
    os = nb_tensor_shape(o1);
    assert_int_equal(os.ndim, 2);
    double d[32], e[32];
    NB_ASSERT_OK_(nb_tensor_copy_to_host(o1, d, 16 * sizeof(double)));
    NB_ASSERT_OK_(nb_tensor_copy_to_host(o2, e, 16 * sizeof(double)));
    for (int i = 0; i < 16; i++)
        assert_true(fabs(d[i] - e[i]) < 1e-14);
    nb_release(o1);
    nb_release(o2);
    nb_release(x0);
    nb_release(mask);
    nb_release(x);
    nb_module_free(m);
}

typedef struct gc_ctx {
    nb_module *m;
    const nb_tensor *mask;
} gc_ctx;

static nb_tensor *mha_fn(nb_tensor *const *in, int32_t n, void *p)
{
    (void)n;
    const gc_ctx *c = p;
    return nb_multihead_attention(c->m, in[0], in[1], in[1],
                                  (nb_mha_opts){.attn_mask = c->mask, .is_causal = c->mask != NULL},
                                  NULL);
}

static void gradients_pass_gradcheck(void **state_)
{
    (void)state_;
    nb_module *m = make(true);
    nb_tensor *q = seq(NB_SHAPE(2, 3, 4), 1, 0.37, 0, false);
    nb_tensor *k = seq(NB_SHAPE(2, 3, 4), 1, 0.23, 0, true);
    NB_ASSERT_OK_(nb_tensor_set_requires_grad(q, true));
    NB_ASSERT_OK_(nb_tensor_set_requires_grad(k, true));
    uint8_t cm[9];
    for (int i = 0; i < 9; i++)
        cm[i] = i % 3 > i / 3;
    nb_tensor *mask = nb_from_data(cm, NB_SHAPE(3, 3), (nb_opts){.dtype = NB_DTYPE_BOOL});
    gc_ctx plain = {m, NULL}, causal = {m, mask};
    NB_ASSERT_OK_(nb_gradcheck(mha_fn, &plain, (nb_tensor *[]){q, k}, 2, 1e-6, 1e-6, 1e-5));
    NB_ASSERT_OK_(nb_gradcheck(mha_fn, &causal, (nb_tensor *[]){q, k}, 2, 1e-6, 1e-6, 1e-5));
    /* and the parameters get gradients */
    nb_tensor *o = mha_fn((nb_tensor *[]){q, k}, 2, &causal);
    nb_tensor *s = nb_sum(o, NULL, 0, false);
    NB_ASSERT_OK_(nb_backward(s, NULL, (nb_backward_opts){0}));
    nb_tensor *g1 = nb_tensor_grad(state(m, "in_proj_weight"));
    nb_tensor *g2 = nb_tensor_grad(state(m, "out_proj.bias"));
    assert_non_null(g1);
    assert_non_null(g2);
    nb_release(g1);
    nb_release(g2);
    nb_release(s);
    nb_release(o);
    nb_release(mask);
    nb_release(q);
    nb_release(k);
    nb_module_free(m);
}

static void bad_input_names_what_was_given(void **state_)
{
    (void)state_;
    assert_null(nb_multihead_attention_new(6, 4, true, true, (nb_opts){0}));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    assert_non_null(strstr(nb_last_error(), "divisible"));
    nb_module *m = make(true);
    nb_tensor *q = seq(NB_SHAPE(2, 3, 4), 1, 0.37, 0, false);
    nb_tensor *k5 = seq(NB_SHAPE(2, 3, 5), 1, 0.2, 0, false);
    assert_null(nb_multihead_attention(m, q, k5, k5, (nb_mha_opts){0}, NULL));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "[2, 3, 5]"));
    nb_clear_error();
    nb_tensor *bad = nb_zeros(NB_SHAPE(2, 4), (nb_opts){.dtype = NB_DTYPE_BOOL});
    assert_null(nb_multihead_attention(m, q, q, q, (nb_mha_opts){.key_padding_mask = bad}, NULL));
    assert_int_equal(nb_last_status(), NB_SHAPE_MISMATCH);
    assert_non_null(strstr(nb_last_error(), "key_padding_mask"));
    nb_clear_error();
    assert_null(nb_multihead_attention(m, q, q, q, (nb_mha_opts){.is_causal = true}, NULL));
    assert_int_equal(nb_last_status(), NB_INVALID_ARGUMENT);
    nb_clear_error();
    nb_module *lin = nb_linear_new(4, 4, true, (nb_opts){0});
    assert_null(nb_multihead_attention(lin, q, q, q, (nb_mha_opts){0}, NULL));
    assert_non_null(strstr(nb_last_error(), "Linear"));
    nb_clear_error();
    nb_tensor *w = (nb_tensor *)1;
    assert_null(nb_multihead_attention(m, NULL, q, q, (nb_mha_opts){0}, &w));
    assert_null(w);
    assert_int_equal(nb_last_status(), NB_NULL_ARGUMENT);
    nb_module_free(lin);
    nb_release(bad);
    nb_release(q);
    nb_release(k5);
    nb_module_free(m);
}

/* ============ every option against PyTorch (test_multihead_attention_ref.py) ============ */

enum { E_ = 4, H_ = 2, N_ = 2, L_ = 3, S_ = 5, KD_ = 3, VD_ = 5 };

/* a sin(b i + c) (or cos) over shape, float64 */
static nb_tensor *gen(nb_shape s, double a, double b, double c, bool use_cos, bool grad)
{
    int64_t n = 1;
    for (int32_t d = 0; d < s.ndim; d++)
        n *= s.dims[d];
    double *v = malloc((size_t)n * sizeof *v);
    assert_non_null(v);
    for (int64_t i = 0; i < n; i++)
        v[i] = a * (use_cos ? cos(b * (double)i + c) : sin(b * (double)i + c));
    nb_tensor *t = tf64(s, v, grad);
    free(v);
    return t;
}

/* state tensor j, element i: 0.5 sin(0.7 i + 1.3 j + 0.2), as the script fills torch's */
static void fill_state(nb_module *m)
{
    for (int32_t j = 0; j < nb_module_state_count(m); j++) {
        const char *name = NULL;
        nb_tensor *t = nb_module_state(m, j, &name);
        set_state(m, name, gen(nb_tensor_shape(t), 0.5, 0.7, 1.3 * j + 0.2, false, false));
    }
}

static void expect_names(nb_module *m, const char *const *names)
{
    int32_t n = 0;
    for (; names[n]; n++) {
        const char *got = NULL;
        assert_true(n < nb_module_state_count(m));
        assert_non_null(nb_module_state(m, n, &got));
        assert_string_equal(got, names[n]);
    }
    assert_int_equal(nb_module_state_count(m), n);
}

typedef struct mha_case {
    const char *name;
    nb_mha_config cfg;
    bool unbatched, kpm, am, am3, need_weights, per_head;
    const double *out, *w;
    int64_t n_out, n_w;
    const char *const *names;
} mha_case;

#define REF(n) .out = ref_##n##_out, .n_out = (int64_t)(sizeof ref_##n##_out / sizeof(double)), \
               .names = ref_##n##_names
#define REFW(n) REF(n), .w = ref_##n##_w, .n_w = (int64_t)(sizeof ref_##n##_w / sizeof(double))

/* the script's CASES, in its order */
static const mha_case cases[] = {
    {"kvdim", {.kdim = KD_, .vdim = VD_, .batch_first = true}, .need_weights = true, REFW(kvdim)},
    {"bias_kv", {.add_bias_kv = true}, .kpm = true, .am = true, .need_weights = true,
     .per_head = true, REFW(bias_kv)},
    {"zero_attn", {.add_zero_attn = true, .batch_first = true}, .am3 = true, REF(zero_attn)},
    {"zero_attn_w", {.add_zero_attn = true, .batch_first = true}, .am3 = true, .kpm = true,
     .need_weights = true, .per_head = true, REFW(zero_attn_w)},
    {"everything", {.no_bias = true, .add_bias_kv = true, .add_zero_attn = true, .kdim = KD_,
                    .vdim = VD_, .batch_first = true},
     .kpm = true, .am = true, .need_weights = true, REFW(everything)},
    {"unbatched_nobias", {.no_bias = true}, .unbatched = true, .need_weights = true,
     .per_head = true, REFW(unbatched_nobias)},
    {"default", {0}, .am = true, REF(default)},
};

/* the module's input shape for n_seq positions of d features */
static nb_shape in_shape(const mha_case *c, int64_t n_seq, int64_t d)
{
    return c->unbatched ? NB_SHAPE(n_seq, d)
           : c->cfg.batch_first ? NB_SHAPE(N_, n_seq, d) : NB_SHAPE(n_seq, N_, d);
}

typedef struct case_io {
    nb_tensor *q, *k, *v, *kpm, *am;
} case_io;

static case_io case_inputs(const mha_case *c)
{
    static const uint8_t kpm_v[] = {0, 0, 0, 1, 1, 0, 1, 0, 0, 0};
    static const uint8_t am_v[] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0};
    int64_t kd = c->cfg.kdim ? c->cfg.kdim : E_, vd = c->cfg.vdim ? c->cfg.vdim : E_;
    case_io io = {gen(in_shape(c, L_, E_), 1, 0.37, 0, false, false),
                  gen(in_shape(c, S_, kd), 1, 0.23, 0, true, false),
                  gen(in_shape(c, S_, vd), 1, 0.11, 1, false, false), NULL, NULL};
    if (c->kpm)
        io.kpm = nb_from_data(kpm_v, c->unbatched ? NB_SHAPE(S_) : NB_SHAPE(N_, S_),
                              (nb_opts){.dtype = NB_DTYPE_BOOL});
    if (c->am)
        io.am = nb_from_data(am_v, NB_SHAPE(L_, S_), (nb_opts){.dtype = NB_DTYPE_BOOL});
    if (c->am3)
        io.am = gen(NB_SHAPE(N_ * H_, L_, S_), 0.5, 0.9, 0, false, false);
    return io;
}

static void case_io_release(case_io *io)
{
    nb_release(io->q);
    nb_release(io->k);
    nb_release(io->v);
    nb_release(io->kpm);
    nb_release(io->am);
}

static nb_tensor *case_forward(nb_module *m, const mha_case *c, const case_io *io,
                               nb_tensor **w)
{
    nb_mha_opts o = {.key_padding_mask = io->kpm, .attn_mask = io->am,
                     .per_head_weights = c->per_head};
    nb_tensor *out = nb_multihead_attention(m, io->q, io->k, io->v, o, c->need_weights ? w : NULL);
    if (!out)
        fail_msg("%s: %s", c->name, nb_last_error());
    return out;
}

static double max_abs(const nb_tensor *t)
{
    nb_tensor *a = nb_abs(t), *mx = a ? nb_max(a) : NULL;
    double v = -1;
    NB_ASSERT_OK_(nb_item(mx, &v));
    nb_release(a);
    nb_release(mx);
    return v;
}

static double max_diff(const nb_tensor *a, const nb_tensor *b)
{
    nb_tensor *d = nb_sub(a, b);
    double v = max_abs(d);
    nb_release(d);
    return v;
}

static void every_option_matches_pytorch(void **state_)
{
    (void)state_;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const mha_case *c = &cases[i];
        nb_module *m = nb_multihead_attention_new_opts(E_, H_, c->cfg,
                                                       (nb_opts){.dtype = NB_DTYPE_F64});
        assert_non_null(m);
        expect_names(m, c->names);
        fill_state(m);
        NB_ASSERT_OK_(nb_module_train(m, false));
        case_io io = case_inputs(c);
        nb_tensor *w = NULL, *o = case_forward(m, c, &io, &w);
        expect_values(o, c->out, c->n_out, 1e-10);
        /* the output keeps the input's layout */
        nb_shape os = nb_tensor_shape(o), qs = nb_tensor_shape(io.q);
        assert_int_equal(os.ndim, qs.ndim);
        assert_memory_equal(os.dims, qs.dims, sizeof(int64_t) * (size_t)os.ndim);
        if (c->need_weights) {
            expect_values(w, c->w, c->n_w, 1e-10);
            /* (N, [H,] L, S + extra keys), without N unbatched */
            nb_shape ws = nb_tensor_shape(w);
            int64_t extra = (int64_t)c->cfg.add_bias_kv + (int64_t)c->cfg.add_zero_attn;
            assert_int_equal(ws.ndim, 2 + !c->unbatched + c->per_head);
            assert_int_equal(ws.dims[ws.ndim - 1], S_ + extra);
            assert_int_equal(ws.dims[ws.ndim - 2], L_);
            if (c->per_head)
                assert_int_equal(ws.dims[ws.ndim - 3], H_);
        }
        nb_release(o);
        nb_release(w);
        /* without masks and weights the heads take sdpa's fused kernel: the same output as
         * the composite that computes the weights */
        nb_tensor *wc = NULL;
        nb_tensor *fused = nb_multihead_attention(m, io.q, io.k, io.v, (nb_mha_opts){0}, NULL);
        nb_tensor *comp = nb_multihead_attention(m, io.q, io.k, io.v, (nb_mha_opts){0}, &wc);
        assert_non_null(fused);
        assert_non_null(comp);
        assert_true(max_diff(fused, comp) < 1e-12);
        nb_release(fused);
        nb_release(comp);
        nb_release(wc);
        case_io_release(&io);
        nb_module_free(m);
    }
    /* kdim = vdim = embed_dim given explicitly is still the packed layout, as in PyTorch */
    nb_module *m = nb_multihead_attention_new_opts(E_, H_, (nb_mha_config){.kdim = E_, .vdim = E_},
                                                   (nb_opts){0});
    expect_names(m, ref_default_names);
    nb_module_free(m);
}

/* The state dicts and outputs torch wrote (test_multihead_attention.cmake), loaded by name. */
static void state_dicts_torch_wrote_load_by_name(void **state_)
{
    (void)state_;
#ifndef NB_MHA_TORCH_DIR
    print_message("no PyTorch when CMake ran: names checked against the committed list only\n");
    skip();
#else
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const mha_case *c = &cases[i];
        nb_module *m = nb_multihead_attention_new_opts(E_, H_, c->cfg,
                                                       (nb_opts){.dtype = NB_DTYPE_F64});
        assert_non_null(m);
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.state.safetensors", NB_MHA_TORCH_DIR, c->name);
        nb_load_report rep = {0};
        if (nb_module_load_ex(m, path, true, &rep) != NB_OK)
            fail_msg("%s: %s", path, nb_last_error());
        assert_int_equal(rep.n_missing + rep.n_unexpected, 0);
        nb_load_report_free(&rep);
        NB_ASSERT_OK_(nb_module_train(m, false));
        snprintf(path, sizeof path, "%s/%s.io.safetensors", NB_MHA_TORCH_DIR, c->name);
        nb_tensor **t = NULL;
        char **names = NULL;
        int32_t n = 0;
        NB_ASSERT_OK_(nb_safetensors_load(path, NULL, &t, &names, &n));
        case_io io = {0};
        nb_tensor *want = NULL, *want_w = NULL;
        for (int32_t j = 0; j < n; j++) {
            nb_tensor **slot = !strcmp(names[j], "query")   ? &io.q
                               : !strcmp(names[j], "key")   ? &io.k
                               : !strcmp(names[j], "value") ? &io.v
                               : !strcmp(names[j], "attn_mask") ? &io.am
                               : !strcmp(names[j], "key_padding_mask") ? &io.kpm
                               : !strcmp(names[j], "output") ? &want
                                                             : &want_w;
            *slot = nb_retain(t[j]);
        }
        nb_safetensors_free(t, names, n);
        nb_tensor *w = NULL, *o = case_forward(m, c, &io, &w);
        double buf[256];
        int64_t no = nb_tensor_numel(want), nw = want_w ? nb_tensor_numel(want_w) : 0;
        assert_true(no <= 256 && nw <= 256);
        NB_ASSERT_OK_(nb_tensor_copy_to_host(want, buf, (size_t)no * sizeof(double)));
        expect_values(o, buf, no, 1e-10);
        assert_true((w != NULL) == (want_w != NULL));
        if (w) {
            NB_ASSERT_OK_(nb_tensor_copy_to_host(want_w, buf, (size_t)nw * sizeof(double)));
            expect_values(w, buf, nw, 1e-10);
        }
        nb_release(o);
        nb_release(w);
        nb_release(want);
        nb_release(want_w);
        case_io_release(&io);
        nb_module_free(m);
    }
#endif
}

/* A query whose every key is masked out: PyTorch's sdpa path gives it zero attention (the
 * output is out_proj.bias), its weights path NaN, as plain softmax does. */
static void fully_masked_rows_follow_pytorch(void **state_)
{
    (void)state_;
    const mha_case *c = &cases[0]; /* kvdim, batch_first */
    nb_module *m = nb_multihead_attention_new_opts(E_, H_, c->cfg,
                                                   (nb_opts){.dtype = NB_DTYPE_F64});
    assert_non_null(m);
    fill_state(m);
    case_io io = case_inputs(c);
    static const uint8_t all_of_batch_0[] = {1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
    nb_tensor *kpm = nb_from_data(all_of_batch_0, NB_SHAPE(N_, S_),
                                  (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_mha_opts o = {.key_padding_mask = kpm};
    nb_tensor *w = NULL;
    nb_tensor *y = nb_multihead_attention(m, io.q, io.k, io.v, o, NULL);
    nb_tensor *yw = nb_multihead_attention(m, io.q, io.k, io.v, o, &w);
    double bias[E_], got[N_ * L_ * E_], gotw[N_ * L_ * S_];
    NB_ASSERT_OK_(nb_tensor_copy_to_host(state(m, "out_proj.bias"), bias, sizeof bias));
    NB_ASSERT_OK_(nb_tensor_copy_to_host(y, got, sizeof got));
    for (int i = 0; i < L_ * E_; i++)
        assert_true(fabs(got[i] - bias[i % E_]) < 1e-15);
    NB_ASSERT_OK_(nb_tensor_copy_to_host(w, gotw, sizeof gotw));
    for (int i = 0; i < N_ * L_ * S_; i++)
        assert_true(i < L_ * S_ ? isnan(gotw[i]) : !isnan(gotw[i]));
    NB_ASSERT_OK_(nb_tensor_copy_to_host(yw, got, sizeof got));
    for (int i = 0; i < N_ * L_ * E_; i++)
        assert_true(i < L_ * E_ ? isnan(got[i]) : !isnan(got[i]));
    nb_release(y);
    nb_release(yw);
    nb_release(w);
    nb_release(kpm);
    case_io_release(&io);
    nb_module_free(m);
}

static void repr_and_out_proj_name_follow_pytorch(void **state_)
{
    (void)state_;
    nb_module *m = nb_multihead_attention_new_opts(
        64, 4, (nb_mha_config){.kdim = 32, .vdim = 16, .add_bias_kv = true}, (nb_opts){0});
    nb_module *nb = nb_multihead_attention_new_opts(64, 4, (nb_mha_config){.no_bias = true},
                                                    (nb_opts){0});
    assert_non_null(m);
    assert_non_null(nb);
    char *s = nb_module_str(m), *t = nb_module_str(nb);
    assert_string_equal(s, ref_repr);
    assert_string_equal(t, ref_repr_nobias);
    nb_free(s);
    nb_free(t);
    assert_string_equal(nb_module_type(nb_module_child(m, "out_proj")),
                        "NonDynamicallyQuantizableLinear");
    nb_module_free(m);
    nb_module_free(nb);
}

static double stddev(const nb_tensor *t)
{
    nb_tensor *sd = nb_std(t, NULL, 0, 1, false);
    double v = -1;
    NB_ASSERT_OK_(nb_item(sd, &v));
    nb_release(sd);
    return v;
}

static void separate_weights_and_bias_kv_get_pytorchs_init(void **state_)
{
    (void)state_;
    nb_module *m = nb_multihead_attention_new_opts(
        64, 4, (nb_mha_config){.kdim = 32, .vdim = 16, .add_bias_kv = true}, (nb_opts){0});
    assert_non_null(m);
    /* xavier_uniform_: bound sqrt(6 / (fan_in + fan_out)); thousands of draws come close */
    const struct {
        const char *name;
        double fan_in;
    } w[] = {{"q_proj_weight", 64}, {"k_proj_weight", 32}, {"v_proj_weight", 16}};
    for (int i = 0; i < 3; i++) {
        double bound = sqrt(6.0 / (w[i].fan_in + 64)), got = max_abs(state(m, w[i].name));
        assert_true(got <= bound && got > 0.95 * bound);
    }
    assert_true(max_abs(state(m, "in_proj_bias")) == 0);
    assert_true(max_abs(state(m, "out_proj.bias")) == 0);
    nb_shape bs = nb_tensor_shape(state(m, "bias_v"));
    assert_int_equal(bs.ndim, 3);
    assert_int_equal(bs.dims[0] * bs.dims[1], 1);
    assert_int_equal(bs.dims[2], 64);
    nb_module_free(m);
    /* xavier_normal_ on (1, 1, E): std sqrt(2 / (E + E)); 1024 draws give it within 10% */
    m = nb_multihead_attention_new_opts(1024, 4, (nb_mha_config){.add_bias_kv = true},
                                        (nb_opts){0});
    assert_non_null(m);
    double want = sqrt(1.0 / 1024);
    for (int i = 0; i < 2; i++) {
        double sd = stddev(state(m, i ? "bias_v" : "bias_k"));
        assert_true(sd > 0.9 * want && sd < 1.1 * want);
    }
    nb_module_free(m);
}

static void dropout_drops_weights_in_training_and_is_identity_in_eval(void **state_)
{
    (void)state_;
    const double p = 0.25;
    nb_opts f64 = {.dtype = NB_DTYPE_F64};
    nb_module *m = nb_multihead_attention_new_opts(8, 2, (nb_mha_config){.dropout = p,
                                                                          .batch_first = true},
                                                   f64);
    nb_module *m0 = nb_multihead_attention_new_opts(8, 2, (nb_mha_config){.batch_first = true},
                                                    f64);
    assert_non_null(m);
    assert_non_null(m0);
    for (int32_t j = 0; j < nb_module_state_count(m); j++) {
        const char *name = NULL;
        nb_tensor *t = nb_module_state(m, j, &name);
        set_state(m0, name, nb_contiguous(t));
    }
    nb_tensor *x = gen(NB_SHAPE(4, 16, 8), 1, 0.37, 0, false, false);
    nb_mha_opts heads = {.per_head_weights = true};
    /* eval: exactly the module without dropout, on both paths */
    NB_ASSERT_OK_(nb_module_train(m, false));
    nb_tensor *w_ev = NULL, *w0 = NULL;
    nb_tensor *o_ev = nb_multihead_attention(m, x, x, x, heads, &w_ev);
    nb_tensor *o0 = nb_multihead_attention(m0, x, x, x, heads, &w0);
    nb_tensor *o_fused = nb_multihead_attention(m, x, x, x, heads, NULL);
    assert_true(max_diff(o_ev, o0) == 0 && max_diff(w_ev, w0) == 0);
    assert_true(max_diff(o_fused, o0) < 1e-12);
    /* training: each weight is dropped or scaled by 1 / (1 - p) */
    NB_ASSERT_OK_(nb_module_train(m, true));
    nb_manual_seed(7);
    nb_tensor *w_tr = NULL, *o_tr = nb_multihead_attention(m, x, x, x, heads, &w_tr);
    assert_non_null(o_tr);
    assert_true(max_diff(o_tr, o_ev) > 1e-3);
    int64_t n = nb_tensor_numel(w_tr), zeros = 0;
    assert_int_equal(n, 4 * 2 * 16 * 16);
    double *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    NB_ASSERT_OK_(nb_tensor_copy_to_host(w_tr, a, (size_t)n * sizeof *a));
    NB_ASSERT_OK_(nb_tensor_copy_to_host(w_ev, b, (size_t)n * sizeof *b));
    for (int64_t i = 0; i < n; i++) {
        if (a[i] == 0)
            zeros++;
        else if (fabs(a[i] - b[i] / (1 - p)) > 1e-12)
            fail_msg("weight %lld: %g in training, %g in eval", (long long)i, a[i], b[i]);
    }
    free(a);
    free(b);
    /* 2048 draws: the dropped share is p within 4 standard deviations (0.0096 each) */
    double share = (double)zeros / (double)n;
    assert_true(fabs(share - p) < 0.04);
    /* the path without weights (sdpa with dropout_p) drops the same weights for one seed */
    nb_manual_seed(7);
    nb_tensor *o_sdpa = nb_multihead_attention(m, x, x, x, heads, NULL);
    assert_true(max_diff(o_sdpa, o_tr) < 1e-12);
    nb_tensor *xs[] = {o_ev, o0, o_fused, o_tr, o_sdpa, w_ev, w0, w_tr, x};
    for (size_t i = 0; i < sizeof xs / sizeof *xs; i++)
        nb_release(xs[i]);
    nb_module_free(m);
    nb_module_free(m0);
}

typedef struct gc2_ctx {
    nb_module *m;
    const nb_tensor *kpm, *am;
    bool weights, per_head;
    uint64_t seed; /* reseeded before each call: dropout draws the same mask every time */
} gc2_ctx;

static nb_tensor *mha_fn2(nb_tensor *const *in, int32_t n, void *p)
{
    (void)n;
    const gc2_ctx *c = p;
    if (c->seed)
        nb_manual_seed(c->seed);
    nb_tensor *w = NULL;
    nb_tensor *o = nb_multihead_attention(c->m, in[0], in[1], in[2],
                                          (nb_mha_opts){.key_padding_mask = c->kpm,
                                                        .attn_mask = c->am,
                                                        .per_head_weights = c->per_head},
                                          c->weights ? &w : NULL);
    if (!c->weights)
        return o;
    nb_release(o);
    return w;
}

static void new_paths_pass_gradcheck(void **state_)
{
    (void)state_;
    const mha_case *every = &cases[4], *zero_w = &cases[3];
    nb_module *m = nb_multihead_attention_new_opts(E_, H_, every->cfg,
                                                   (nb_opts){.dtype = NB_DTYPE_F64});
    assert_non_null(m);
    fill_state(m);
    case_io io = case_inputs(every);
    nb_tensor *in[3] = {io.q, io.k, io.v};
    for (int j = 0; j < 3; j++)
        NB_ASSERT_OK_(nb_tensor_set_requires_grad(in[j], true));
    /* kdim/vdim, bias_k/bias_v, zero attention, masks: output, then per-head weights */
    gc2_ctx c = {m, io.kpm, io.am, false, false, 0};
    NB_ASSERT_OK_(nb_gradcheck(mha_fn2, &c, in, 3, 1e-6, 1e-6, 1e-5));
    c.weights = c.per_head = true;
    NB_ASSERT_OK_(nb_gradcheck(mha_fn2, &c, in, 3, 1e-6, 1e-6, 1e-5));
    c.weights = c.per_head = false; /* and differentiable twice, as PyTorch's */
    NB_ASSERT_OK_(nb_gradgradcheck(mha_fn2, &c, in, 3, 1e-6, 1e-5, 1e-4));
    /* and bias_k, bias_v and the separate weights get gradients */
    c.weights = false;
    nb_tensor *o = mha_fn2(in, 3, &c), *s = nb_sum(o, NULL, 0, false);
    NB_ASSERT_OK_(nb_backward(s, NULL, (nb_backward_opts){0}));
    static const char *const with_grad[] = {"q_proj_weight", "k_proj_weight", "v_proj_weight",
                                            "bias_k", "bias_v"};
    for (int i = 0; i < 5; i++) {
        nb_tensor *g = nb_tensor_grad(state(m, with_grad[i]));
        assert_non_null(g);
        assert_true(max_abs(g) > 0);
        nb_release(g);
    }
    nb_release(s);
    nb_release(o);
    case_io_release(&io);
    nb_module_free(m);
    /* dropout in training on both paths, one mask per seed; a 3-d additive attn_mask */
    nb_mha_config dcfg = zero_w->cfg;
    dcfg.dropout = 0.3;
    m = nb_multihead_attention_new_opts(E_, H_, dcfg, (nb_opts){.dtype = NB_DTYPE_F64});
    assert_non_null(m);
    fill_state(m);
    io = case_inputs(zero_w);
    nb_tensor *in2[3] = {io.q, io.k, io.v};
    for (int j = 0; j < 3; j++)
        NB_ASSERT_OK_(nb_tensor_set_requires_grad(in2[j], true));
    gc2_ctx d = {m, io.kpm, io.am, false, false, 11};
    NB_ASSERT_OK_(nb_gradcheck(mha_fn2, &d, in2, 3, 1e-6, 1e-6, 1e-5));
    d.weights = true;
    NB_ASSERT_OK_(nb_gradcheck(mha_fn2, &d, in2, 3, 1e-6, 1e-6, 1e-5));
    case_io_release(&io);
    nb_module_free(m);
}

/* status and every fragment expected in the message */
static void refused_with(nb_tensor *r, nb_status st, const char *a, const char *b)
{
    if (r) {
        nb_release(r);
        fail_msg("accepted; expected %s", a);
    }
    if (nb_last_status() != st || !strstr(nb_last_error(), a) || (b && !strstr(nb_last_error(), b)))
        fail_msg("status %d, message '%s'; expected '%s' and '%s'", (int)nb_last_status(),
                 nb_last_error(), a, b ? b : "");
    nb_clear_error();
}

static void bad_shapes_name_the_shapes(void **state_)
{
    (void)state_;
    nb_opts f64 = {.dtype = NB_DTYPE_F64};
    const struct {
        int64_t e, h;
        nb_mha_config cfg;
        const char *a, *b;
    } bad_new[] = {
        {6, 4, {0}, "embed_dim must be divisible by num_heads", "embed_dim=6 and num_heads=4"},
        {0, 2, {0}, "greater than 0", "embed_dim=0"},
        {4, 2, {.dropout = 1.5}, "between 0 and 1", "1.5"},
        {4, 2, {.dropout = NAN}, "between 0 and 1", "nan"},
        {4, 2, {.kdim = -3}, "kdim=-3", NULL},
    };
    for (size_t i = 0; i < sizeof bad_new / sizeof *bad_new; i++) {
        nb_module *m = nb_multihead_attention_new_opts(bad_new[i].e, bad_new[i].h, bad_new[i].cfg,
                                                       f64);
        if (m)
            nb_module_free(m);
        refused_with(NULL, NB_INVALID_ARGUMENT, bad_new[i].a, bad_new[i].b);
        assert_null(m);
    }
    nb_module *m = nb_multihead_attention_new_opts(E_, H_, cases[0].cfg, f64); /* kvdim, bf */
    nb_tensor *q = gen(NB_SHAPE(2, 3, 4), 1, 0.37, 0, false, false);
    nb_tensor *k = gen(NB_SHAPE(2, 5, 3), 1, 0.2, 0, false, false);
    nb_tensor *v = gen(NB_SHAPE(2, 5, 5), 1, 0.2, 0, false, false);
    nb_tensor *q5 = gen(NB_SHAPE(2, 3, 5), 1, 0.1, 0, false, false);
    nb_tensor *k4 = gen(NB_SHAPE(2, 5, 4), 1, 0.1, 0, false, false);
    nb_tensor *v4 = gen(NB_SHAPE(2, 4, 5), 1, 0.1, 0, false, false);
    nb_tensor *kb = gen(NB_SHAPE(3, 5, 3), 1, 0.1, 0, false, false);
    nb_tensor *vb = gen(NB_SHAPE(3, 5, 5), 1, 0.1, 0, false, false);
    nb_tensor *q4d = gen(NB_SHAPE(1, 2, 3, 4), 1, 0.1, 0, false, false);
    nb_tensor *k2d = gen(NB_SHAPE(5, 3), 1, 0.1, 0, false, false);
    nb_tensor *am = nb_zeros(NB_SHAPE(3, 4), f64);
    nb_tensor *am3 = nb_zeros(NB_SHAPE(2, 3, 5), f64);
    nb_tensor *am1 = nb_zeros(NB_SHAPE(5), f64);
    nb_tensor *kpm = nb_zeros(NB_SHAPE(2, 4), (nb_opts){.dtype = NB_DTYPE_BOOL});
    nb_tensor *kpm_i = nb_zeros(NB_SHAPE(2, 5), (nb_opts){.dtype = NB_DTYPE_I64});
    nb_mha_opts none = {0};
    refused_with(nb_multihead_attention(m, q5, k, v, none, NULL), NB_SHAPE_MISMATCH,
                 "was expecting embedding dimension of 4, but got 5", "[2, 3, 5]");
    refused_with(nb_multihead_attention(m, q, k4, v, none, NULL), NB_SHAPE_MISMATCH,
                 "key [2, 5, 4] has 4 features", "kdim=3");
    refused_with(nb_multihead_attention(m, q, k, k, none, NULL), NB_SHAPE_MISMATCH,
                 "value [2, 5, 3] has 3 features", "vdim=5");
    refused_with(nb_multihead_attention(m, q, k, v4, none, NULL), NB_SHAPE_MISMATCH,
                 "key's sequence and batch dims [2, 5] do not match value's [2, 4]", NULL);
    refused_with(nb_multihead_attention(m, q, kb, vb, none, NULL), NB_SHAPE_MISMATCH,
                 "query [2, 3, 4] and key [3, 5, 3] have different batch sizes", NULL);
    refused_with(nb_multihead_attention(m, q4d, q4d, q4d, none, NULL), NB_SHAPE_MISMATCH,
                 "received 4-D query tensor [1, 2, 3, 4]", NULL);
    refused_with(nb_multihead_attention(m, q, k2d, v, none, NULL), NB_SHAPE_MISMATCH,
                 "expected key and value to be 3-D but found 2-D and 3-D", "[5, 3]");
    refused_with(nb_multihead_attention(m, q, k, v, (nb_mha_opts){.attn_mask = am}, NULL),
                 NB_SHAPE_MISMATCH, "2D attn_mask is [3, 4], but should be [3, 5]", NULL);
    refused_with(nb_multihead_attention(m, q, k, v, (nb_mha_opts){.attn_mask = am3}, NULL),
                 NB_SHAPE_MISMATCH, "3D attn_mask is [2, 3, 5], but should be [4, 3, 5]", NULL);
    refused_with(nb_multihead_attention(m, q, k, v, (nb_mha_opts){.attn_mask = am1}, NULL),
                 NB_SHAPE_MISMATCH, "expected attn_mask to be NULL, 2-D or 3-D", "[5]");
    refused_with(nb_multihead_attention(m, q, k, v, (nb_mha_opts){.key_padding_mask = kpm}, NULL),
                 NB_SHAPE_MISMATCH, "key_padding_mask is [2, 4], but should be [2, 5]", NULL);
    refused_with(nb_multihead_attention(m, q, k, v, (nb_mha_opts){.key_padding_mask = kpm_i},
                                        NULL),
                 NB_DTYPE_UNSUPPORTED, "key_padding_mask must be bool or float64", "int64");
    nb_module_free(m);
    /* packed: key and value must have one shape */
    m = nb_multihead_attention_new_opts(E_, H_, (nb_mha_config){.batch_first = true}, f64);
    refused_with(nb_multihead_attention(m, q, k4, v4, none, NULL), NB_SHAPE_MISMATCH,
                 "key shape [2, 5, 4] does not match value shape [2, 4, 5]", NULL);
    nb_module_free(m);
    nb_tensor *xs[] = {q, k, v, q5, k4, v4, kb, vb, q4d, k2d, am, am3, am1, kpm, kpm_i};
    for (size_t i = 0; i < sizeof xs / sizeof *xs; i++)
        nb_release(xs[i]);
}

static void empty_batches_and_huge_sizes_are_handled(void **state_)
{
    (void)state_;
    /* an empty batch through every option: PyTorch returns empty outputs of the same layout */
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const mha_case *c = &cases[i];
        if (c->unbatched)
            continue;
        nb_module *m = nb_multihead_attention_new_opts(E_, H_, c->cfg,
                                                       (nb_opts){.dtype = NB_DTYPE_F64});
        int64_t kd = c->cfg.kdim ? c->cfg.kdim : E_, vd = c->cfg.vdim ? c->cfg.vdim : E_;
        nb_shape qs = c->cfg.batch_first ? NB_SHAPE(0, L_, E_) : NB_SHAPE(L_, 0, E_);
        nb_shape ks = c->cfg.batch_first ? NB_SHAPE(0, S_, kd) : NB_SHAPE(S_, 0, kd);
        nb_shape vs = c->cfg.batch_first ? NB_SHAPE(0, S_, vd) : NB_SHAPE(S_, 0, vd);
        nb_opts f64 = {.dtype = NB_DTYPE_F64};
        nb_tensor *q = nb_zeros(qs, f64), *k = nb_zeros(ks, f64), *v = nb_zeros(vs, f64);
        for (int weights = 0; weights < 2; weights++) {
            nb_tensor *w = NULL;
            nb_tensor *o = nb_multihead_attention(m, q, k, v, (nb_mha_opts){0},
                                                  weights ? &w : NULL);
            if (!o)
                fail_msg("%s: %s", c->name, nb_last_error());
            assert_int_equal(nb_tensor_numel(o), 0);
            assert_true(!weights || (w && nb_tensor_numel(w) == 0));
            nb_release(o);
            nb_release(w);
        }
        nb_release(q);
        nb_release(k);
        nb_release(v);
        nb_module_free(m);
    }
    /* sizes whose byte counts overflow fail with a status, never a crash */
    const nb_mha_config huge[] = {{.kdim = INT64_MAX}, {.vdim = (int64_t)1 << 62},
                                  {.kdim = (int64_t)1 << 61, .add_bias_kv = true}};
    for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
        nb_module *m = nb_multihead_attention_new_opts(4, 2, huge[i], (nb_opts){0});
        if (m) {
            nb_module_free(m);
            fail_msg("kdim=%lld vdim=%lld accepted", (long long)huge[i].kdim,
                     (long long)huge[i].vdim);
        }
        assert_int_not_equal(nb_last_status(), NB_OK);
        nb_clear_error();
    }
}

/* A forward pre-hook that runs another MultiheadAttention (a probe, a shared encoder) must not
 * take the outer call's key, value and weights: the outer result and weights stay as without
 * the hook. */
static nb_tensor *run_other_mha(nb_module *m, const nb_tensor *input, void *ctx)
{
    (void)m;
    nb_release(nb_module_forward((nb_module *)ctx, input));
    return NULL;
}

static void a_pre_hook_running_another_mha_leaves_the_call_alone(void **state)
{
    (void)state;
    nb_manual_seed(3);
    nb_module *outer = nb_multihead_attention_new(4, 2, true, true, (nb_opts){0});
    nb_module *other = nb_multihead_attention_new(4, 2, true, true, (nb_opts){0});
    nb_tensor *q = nb_randn(NB_SHAPE(1, 3, 4), (nb_opts){0});
    nb_tensor *k = nb_randn(NB_SHAPE(1, 5, 4), (nb_opts){0});
    nb_tensor *w0 = NULL, *w1 = NULL;
    nb_tensor *y0 = nb_multihead_attention(outer, q, k, k, (nb_mha_opts){0}, &w0);
    assert_true(nb_module_register_forward_pre_hook(outer, run_other_mha, other) > 0);
    nb_tensor *y1 = nb_multihead_attention(outer, q, k, k, (nb_mha_opts){0}, &w1);
    assert_non_null(y1);
    assert_non_null(w1);
    assert_int_equal(nb_tensor_size(w1, 2), 5);
    assert_true(nb_allclose(y0, y1, 0, 0));
    assert_true(nb_allclose(w0, w1, 0, 0));
    nb_tensor *all[] = {y0, y1, w0, w1, q, k};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        nb_release(all[i]);
    nb_module_free(other);
    nb_module_free(outer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(names_and_init_follow_pytorch),
        NB_TEST(batch_first_cross_attention_and_weights_match_pytorch),
        NB_TEST(seq_first_causal_hint_matches_the_explicit_mask),
        NB_TEST(gradients_pass_gradcheck),
        NB_TEST(bad_input_names_what_was_given),
        NB_TEST(every_option_matches_pytorch),
        NB_TEST(state_dicts_torch_wrote_load_by_name),
        NB_TEST(fully_masked_rows_follow_pytorch),
        NB_TEST(repr_and_out_proj_name_follow_pytorch),
        NB_TEST(separate_weights_and_bias_kv_get_pytorchs_init),
        NB_TEST(dropout_drops_weights_in_training_and_is_identity_in_eval),
        NB_TEST(new_paths_pass_gradcheck),
        NB_TEST(bad_shapes_name_the_shapes),
        NB_TEST(empty_batches_and_huge_sizes_are_handled),
        NB_TEST(a_pre_hook_running_another_mha_leaves_the_call_alone),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return nb_shutdown() == NB_OK ? rc : 1;
}
