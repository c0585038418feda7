/* cpu_half.c - float16 and bfloat16 on the cpu: every 16-bit kernel widens its 16-bit operands
 * to float32 buffers, runs the plugin's float32 kernel (sgemm for matmul and conv, float32
 * accumulation for reductions) and rounds the output back to nearest even. */
#include "cpu_internal.h"

/* float16 <-> float32 with F16C (vcvtph2ps / vcvtps2ph, round to nearest even; NaN made quiet
 * like the portable code). F16C is part of x86-64-v3, so the plugin's AVX2 level (from cpuid,
 * capped by NABLA_CPU_ISA) implies it; below that the portable loops run. The AVX-512 BF16
 * conversion (vcvtneps2bf16) is not used: it flushes subnormal inputs and outputs to zero,
 * while bfloat16 here keeps them; bfloat16 to float32 is a shift the compiler vectorises. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NBC_HAVE_F16C 1
#include <immintrin.h>
#define NBC_F16C __attribute__((target("avx,f16c")))
NBC_F16C static void f16_to_f32_f16c(const uint16_t *src, float *dst, int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + j))));
    for (; j < n; j++)
        dst[j] = nb_f16_to_f32(src[j]);
}
NBC_F16C static void f32_to_f16_f16c(const float *src, uint16_t *dst, int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128((__m128i *)(dst + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + j),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; j < n; j++)
        dst[j] = nb_f32_to_f16(src[j]);
}
#endif

void nbc_half_to_f32(nb_dtype dt, const uint16_t *src, float *dst, int64_t n)
{
#ifdef NBC_HAVE_F16C
    if (dt == NB_DTYPE_F16 && nbc_isa_level >= NBC_ISA_AVX2 && n >= 8) {
        f16_to_f32_f16c(src, dst, n);
        return;
    }
#endif
    if (dt == NB_DTYPE_F16)
        for (int64_t j = 0; j < n; j++)
            dst[j] = nb_f16_to_f32(src[j]);
    else
        for (int64_t j = 0; j < n; j++)
            dst[j] = nb_bf16_to_f32(src[j]);
}

void nbc_f32_to_half(nb_dtype dt, const float *src, uint16_t *dst, int64_t n)
{
#ifdef NBC_HAVE_F16C
    if (dt == NB_DTYPE_F16 && nbc_isa_level >= NBC_ISA_AVX2 && n >= 8) {
        f32_to_f16_f16c(src, dst, n);
        return;
    }
#endif
    if (dt == NB_DTYPE_F16)
        for (int64_t j = 0; j < n; j++)
            dst[j] = nb_f32_to_f16(src[j]);
    else
        for (int64_t j = 0; j < n; j++)
            dst[j] = nb_f32_to_bf16(src[j]);
}

/* ---- copy with cast: any dtype through double, which holds every value but a large int64's */

static double load(nb_dtype dt, const char *p)
{
    switch (dt) {
    case NB_DTYPE_F32: return *(const float *)p;
    case NB_DTYPE_F64: return *(const double *)p;
    case NB_DTYPE_I32: return *(const int32_t *)p;
    case NB_DTYPE_I64: return (double)*(const int64_t *)p;
    case NB_DTYPE_BOOL: return *(const uint8_t *)p != 0;
    case NB_DTYPE_U8: return *(const uint8_t *)p;
    case NB_DTYPE_F16: return nb_f16_to_f32(*(const uint16_t *)p);
    case NB_DTYPE_BF16: return nb_bf16_to_f32(*(const uint16_t *)p);
    default: return 0;
    }
}

static void store(nb_dtype dt, char *p, double v)
{
    switch (dt) {
    case NB_DTYPE_F32: *(float *)p = (float)v; break;
    case NB_DTYPE_F64: *(double *)p = v; break;
    case NB_DTYPE_I32: *(int32_t *)p = nbc_fromd_i32(v); break;
    case NB_DTYPE_I64: *(int64_t *)p = nbc_fromd_i64(v); break;
    case NB_DTYPE_BOOL: *(uint8_t *)p = v != 0; break;
    case NB_DTYPE_U8: *(uint8_t *)p = nbc_fromd_u8(v); break;
    case NB_DTYPE_F16: *(uint16_t *)p = nb_f64_to_f16(v); break;
    case NB_DTYPE_BF16: *(uint16_t *)p = nb_f64_to_bf16(v); break;
    default: break;
    }
}

typedef struct copy_ctx {
    nb_dtype sd, dd;
} copy_ctx;

static void r_copy16(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx)
{
    const copy_ctx *c = ctx;
    (void)k0;
    if (c->sd == c->dd) { /* 16-bit to itself: the bits move unchanged, NaN payloads too */
        for (int64_t j = 0; j < n; j++)
            *(uint16_t *)(p[0] + j * s[0]) = *(const uint16_t *)(p[1] + j * s[1]);
    } else if (c->dd == NB_DTYPE_F32 && s[0] == 4 && s[1] == 2) {
        nbc_half_to_f32(c->sd, (const uint16_t *)p[1], (float *)p[0], n);
    } else if (c->sd == NB_DTYPE_F32 && s[0] == 2 && s[1] == 4) {
        nbc_f32_to_half(c->dd, (const float *)p[1], (uint16_t *)p[0], n);
    } else {
        for (int64_t j = 0; j < n; j++)
            store(c->dd, p[0] + j * s[0], load(c->sd, p[1] + j * s[1]));
    }
}

nb_status nbc_copy_16bit(const nb_kernel_args *a)
{
    if (a->n_in < 1 || (unsigned)a->in[0].dtype >= NB_DTYPE_COUNT)
        return NBC_ERR(NB_DTYPE_UNSUPPORTED, "copy: source dtype %d is not a known dtype",
                       a->n_in < 1 ? -1 : (int)a->in[0].dtype);
    copy_ctx c = {a->in[0].dtype, a->out->dtype};
    return nbc_ew(a, r_copy16, &c);
}

/* ---- every other op: widen, run the float32 kernel, narrow ---- */

/* Operand o as a float32 buffer over its stored extent: broadcast dims (stride 0) stay stride 0,
 * the rest are packed row-major. */
typedef struct wide {
    float *buf;
    int64_t strides[NB_MAX_DIMS];
    int64_t n; /* elements in buf */
} wide;

/* Visits every stored element of o in row-major order of its non-broadcast dims; to_f32 picks
 * the direction. Rows along the last dim go through the bulk converters when contiguous. */
static void transfer(const nb_operand *o, float *buf, bool to_f32)
{
    int nd = o->ndim;
    int64_t shape[NB_MAX_DIMS] = {0}, idx[NB_MAX_DIMS] = {0};
    for (int d = 0; d < nd; d++)
        shape[d] = o->strides[d] ? o->shape[d] : 1;
    int64_t inner = nd ? shape[nd - 1] : 1, ist = nd ? o->strides[nd - 1] : 1;
    for (int d = 0; d < nd; d++)
        if (shape[d] == 0)
            return;
    char *base = nbc_ptr(o);
    for (int64_t k = 0;; k += inner) {
        int64_t off = 0;
        for (int d = 0; d + 1 < nd; d++)
            off += idx[d] * o->strides[d];
        uint16_t *row = (uint16_t *)base + off;
        if (ist == 1 || inner == 1) {
            if (to_f32)
                nbc_half_to_f32(o->dtype, row, buf + k, inner);
            else
                nbc_f32_to_half(o->dtype, buf + k, row, inner);
        } else {
            for (int64_t j = 0; j < inner; j++) {
                if (to_f32)
                    nbc_half_to_f32(o->dtype, row + j * ist, buf + k + j, 1);
                else
                    nbc_f32_to_half(o->dtype, buf + k + j, row + j * ist, 1);
            }
        }
        int d = nd - 2;
        while (d >= 0 && ++idx[d] == shape[d])
            idx[d--] = 0;
        if (d < 0)
            return;
    }
}

/* read: the operand's values are needed (an input, or an output the op reads back). The buffer
 * is the thread's scratch slot, so a training step does not page-fault fresh memory each call. */
static nb_status widen(const nb_operand *o, int slot, bool read, wide *w, nb_operand *f)
{
    int64_t n = 1;
    for (int d = o->ndim - 1; d >= 0; d--) {
        w->strides[d] = o->strides[d] ? n : 0;
        if (o->strides[d])
            n *= o->shape[d];
    }
    w->n = n;
    w->buf = nbc_scratch(NBC_SCRATCH_HALF + slot, (size_t)n * sizeof(float));
    if (!w->buf)
        return NB_OUT_OF_MEMORY; /* reported by nbc_scratch */
    if (read)
        transfer(o, w->buf, true);
    *f = (nb_operand){.handle = w->buf, .offset = 0, .dtype = NB_DTYPE_F32, .ndim = o->ndim,
                      .shape = o->shape, .strides = w->strides};
    return NB_OK;
}

#define NBC_HALF_SLOTS 192

static struct {
    const char *op;
    nb_kernel_fn f32;
    bool reads_out; /* as nabla_plugin.h lists: *_accumulate, scatter_add, matmul with f[1] */
    bool compares_scalar; /* eq_scalar ... ge_scalar */
    bool uniform;         /* random_uniform: the result stays below the high end */
} slots[NBC_HALF_SLOTS];

/* random_uniform's float32 numbers lie in [lo, hi), but u near 1 rounds up to hi in 16 bits
 * (one draw in 2^12 for float16 at [0, 1), one in 2^9 for bfloat16). [lo, hi) maps those back
 * to lo, as PyTorch's CUDA uniform does; the opencl and cuda plugins do the same. */
static void keep_below_hi(nb_dtype dt, float *v, int64_t n, double lo, double hi)
{
    for (int64_t k = 0; k < n; k++) {
        uint16_t h;
        float r;
        nbc_f32_to_half(dt, &v[k], &h, 1);
        nbc_half_to_f32(dt, &h, &r, 1);
        if ((double)r >= hi)
            v[k] = (float)lo;
    }
}

/* eq_scalar ... ge_scalar: the scalar is rounded to the 16-bit dtype first, as torch does
 * (bfloat16 1.0 == 1.001 is true there); arithmetic with a scalar keeps it in float32. */
static bool is_compare_scalar(const char *op)
{
    static const char *const names[] = {"eq_scalar", "ne_scalar", "lt_scalar",
                                        "le_scalar", "gt_scalar", "ge_scalar"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++)
        if (!strcmp(op, names[k]))
            return true;
    return false;
}

static nb_status run_widened(int slot, nb_dtype dt, const nb_kernel_args *a)
{
    if (a->n_in + 1 > NBC_MAX_OPS + 3)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: %d inputs are more than the 16-bit path takes",
                       slots[slot].op, (int)a->n_in);
    nb_operand ops[NBC_MAX_OPS + 3];
    wide w[NBC_MAX_OPS + 3] = {{0}};
    nb_status st = NB_OK;
    for (int k = 0; k <= a->n_in && st == NB_OK; k++) {
        const nb_operand *o = k == 0 ? a->out : &a->in[k - 1];
        ops[k] = *o;
        if (nbc_is_16bit(o->dtype) && o->dtype != dt)
            st = NBC_ERR(NB_DTYPE_UNSUPPORTED, "%s: a %s operand in a %s kernel", slots[slot].op,
                         nbc_dtype_name(o->dtype), nbc_dtype_name(dt));
        else if (o->dtype == dt)
            st = widen(o, k, k > 0 || (slots[slot].reads_out &&
                                       (strcmp(slots[slot].op, "matmul") || a->f[1] != 0)),
                       &w[k], &ops[k]);
    }
    if (st == NB_OK) {
        nb_kernel_args f = *a;
        f.out = &ops[0];
        f.in = &ops[1];
        if (slots[slot].compares_scalar) /* PyTorch compares in the tensor's dtype */
            f.f[0] = dt == NB_DTYPE_F16 ? nb_f16_to_f32(nb_f64_to_f16(a->f[0]))
                                        : nb_bf16_to_f32(nb_f64_to_bf16(a->f[0]));
        st = slots[slot].f32(&f);
    }
    if (st == NB_OK && slots[slot].uniform && a->out->dtype == dt)
        keep_below_hi(dt, w[0].buf, w[0].n, a->f[0], a->f[1]);
    if (st == NB_OK && a->out->dtype == dt)
        transfer(a->out, w[0].buf, false);
    return st;
}

/* One function per (slot, dtype): a kernel receives only its args, so the slot is in its name.
 * Slot (r, j) is index 8 * (r - 1) + j. */
#define SLOT(r, j)                                                                          \
    static nb_status h_##r##_##j(const nb_kernel_args *a)                                   \
    {                                                                                       \
        return run_widened(8 * ((r) - 1) + (j), NB_DTYPE_F16, a);                           \
    }                                                                                       \
    static nb_status b_##r##_##j(const nb_kernel_args *a)                                   \
    {                                                                                       \
        return run_widened(8 * ((r) - 1) + (j), NB_DTYPE_BF16, a);                          \
    }
#define SLOT8(r) SLOT(r, 0) SLOT(r, 1) SLOT(r, 2) SLOT(r, 3) SLOT(r, 4) SLOT(r, 5) SLOT(r, 6) SLOT(r, 7)
#define ALL_SLOTS(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) \
    M(13) M(14) M(15) M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24)
ALL_SLOTS(SLOT8)
#define FN8(r) h_##r##_0, h_##r##_1, h_##r##_2, h_##r##_3, h_##r##_4, h_##r##_5, h_##r##_6, h_##r##_7,
#define BFN8(r) b_##r##_0, b_##r##_1, b_##r##_2, b_##r##_3, b_##r##_4, b_##r##_5, b_##r##_6, b_##r##_7,
static const nb_kernel_fn f16_fns[NBC_HALF_SLOTS] = {ALL_SLOTS(FN8)};
static const nb_kernel_fn bf16_fns[NBC_HALF_SLOTS] = {ALL_SLOTS(BFN8)};

/* Ops that write an input (the optimizer steps' state, the fused backwards' second and third
 * outputs): widening would lose those writes, so they stay off the 16-bit table and the core
 * runs its composites. copy has its own kernel. */
static bool widenable(const char *op)
{
    static const char *const writes_an_input[] = {"copy", "sgd_step", "adam_step",
                                                  "attention_backward", "layer_norm_backward"};
    for (size_t k = 0; k < sizeof writes_an_input / sizeof *writes_an_input; k++)
        if (!strcmp(op, writes_an_input[k]))
            return false;
    return true;
}

size_t nbc_half_kernels(const nb_kernel_desc *f32, size_t n, nb_kernel_desc *out)
{
    size_t m = 0, s = 0;
    out[m++] = (nb_kernel_desc){"copy", NB_DTYPE_F16, nbc_copy_16bit};
    out[m++] = (nb_kernel_desc){"copy", NB_DTYPE_BF16, nbc_copy_16bit};
    for (size_t k = 0; k < n && s < NBC_HALF_SLOTS; k++) {
        if (f32[k].dtype != NB_DTYPE_F32 || !f32[k].fn || !widenable(f32[k].op))
            continue;
        bool native[NB_DTYPE_COUNT] = {false}; /* 16-bit kernels of its own keep their place */
        for (size_t j = 0; j < n; j++)
            if (nbc_is_16bit(f32[j].dtype) && f32[j].fn && !strcmp(f32[j].op, f32[k].op))
                native[f32[j].dtype] = true;
        slots[s].op = f32[k].op;
        slots[s].f32 = f32[k].fn;
        slots[s].reads_out = strstr(f32[k].op, "accumulate") || !strcmp(f32[k].op, "scatter_add") ||
                             !strcmp(f32[k].op, "matmul");
        slots[s].compares_scalar = is_compare_scalar(f32[k].op);
        slots[s].uniform = !strcmp(f32[k].op, "random_uniform");
        if (!native[NB_DTYPE_F16])
            out[m++] = (nb_kernel_desc){f32[k].op, NB_DTYPE_F16, f16_fns[s]};
        if (!native[NB_DTYPE_BF16])
            out[m++] = (nb_kernel_desc){f32[k].op, NB_DTYPE_BF16, bf16_fns[s]};
        s++;
    }
    if (s == NBC_HALF_SLOTS && nbc_host && nbc_host->log)
        nbc_host->log(NB_LOG_WARN, "cpu: more than %d float32 kernels; the rest have no 16-bit "
                      "twin", NBC_HALF_SLOTS);
    return m;
}

nb_status nbc_half_run(const char *op, nb_dtype dt, const nb_kernel_args *a)
{
    for (int s = 0; s < NBC_HALF_SLOTS && slots[s].op; s++)
        if (!strcmp(slots[s].op, op))
            return run_widened(s, dt, a);
    return NBC_ERR(NB_NOT_IMPLEMENTED, "%s: no float32 kernel to widen %s operands for", op,
                   nbc_dtype_name(dt));
}
