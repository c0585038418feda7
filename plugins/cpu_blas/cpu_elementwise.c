/* cpu_elementwise.c - the elementwise kernels of the cpu_blas plugin: fill, copy with cast,
 * arange, unary, scalar, binary, comparison and logical ops, where, random fills, and the
 * elementwise tier-2 ops (relu_backward, sgd_step, adam_step). All run on nbc_iter; each row
 * function has a contiguous loop the compiler vectorises, a broadcast-scalar loop where that
 * applies, and a general strided loop. */
#include "cpu_internal.h"

#include <tgmath.h>

/* Dtype groups: G(M, ...) expands M(sfx, C type, enum, ...) for each member. */
#define G_FLOAT(M, ...) M(f32, float, NB_DTYPE_F32, __VA_ARGS__) M(f64, double, NB_DTYPE_F64, __VA_ARGS__)
#define G_SINT(M, ...) M(i32, int32_t, NB_DTYPE_I32, __VA_ARGS__) M(i64, int64_t, NB_DTYPE_I64, __VA_ARGS__)
#define G_U8(M, ...) M(u8, uint8_t, NB_DTYPE_U8, __VA_ARGS__)
#define G_BOOL(M, ...) M(b8, uint8_t, NB_DTYPE_BOOL, __VA_ARGS__)
#define G_INT(M, ...) G_SINT(M, __VA_ARGS__) G_U8(M, __VA_ARGS__)
#define G_NUM(M, ...) G_FLOAT(M, __VA_ARGS__) G_INT(M, __VA_ARGS__)
#define G_ALL(M, ...) G_NUM(M, __VA_ARGS__) G_BOOL(M, __VA_ARGS__)

/* Integer power with PyTorch's results for negative exponents (which only 1 and -1 survive). */
static inline int64_t ipow(int64_t b, int64_t e)
{
    if (e < 0)
        return b == 1 ? 1 : b == -1 ? ((e & 1) ? -1 : 1) : 0;
    uint64_t r = 1, ub = (uint64_t)b;
    while (e) {
        if (e & 1)
            r *= ub;
        ub *= ub;
        e >>= 1;
    }
    return (int64_t)r;
}

/* Integer arithmetic wraps around as in PyTorch: computed in uint64_t, where overflow is
 * defined, and narrowed back (modulo 2^N with GCC and Clang). -INT_MIN stays INT_MIN. */
#define WRAP_NEG(T, x) ((T)(0 - (uint64_t)(x)))
#define WRAP_ADD(T, x, y) ((T)((uint64_t)(x) + (uint64_t)(y)))
#define WRAP_SUB(T, x, y) ((T)((uint64_t)(x) - (uint64_t)(y)))
#define WRAP_MUL(T, x, y) ((T)((uint64_t)(x) * (uint64_t)(y)))

/* ---- row templates ----
 * Expressions see: x (and y) of the element type elem_t, sv and sv1 = f[0] and f[1] converted to
 * elem_t, and f0, f1, i0, i1 from the kernel args. */
#define ROW_PRELUDE(SFX, T)                                                                 \
    typedef T elem_t;                                                                       \
    const nb_kernel_args *a_ = ctx;                                                         \
    const double f0 = a_->f[0], f1 = a_->f[1];                                              \
    const int64_t i0 = a_->i[0], i1 = a_->i[1];                                             \
    const elem_t sv = nbc_fromd_##SFX(f0), sv1 = nbc_fromd_##SFX(f1);                       \
    (void)f0, (void)f1, (void)i0, (void)i1, (void)sv, (void)sv1, (void)k0

/* out TO = EXPR(x) */
#define DEF_UNARY_ROW(NAME, SFX, T, TO, EXPR)                                               \
    static void NAME(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx)    \
    {                                                                                       \
        ROW_PRELUDE(SFX, T);                                                                \
        if (s[0] == (int64_t)sizeof(TO) && s[1] == (int64_t)sizeof(T)) {                    \
            TO *o = (TO *)p[0];                                                             \
            const elem_t *in = (const elem_t *)p[1];                                        \
            for (int64_t j = 0; j < n; j++) {                                               \
                const elem_t x = in[j];                                                     \
                o[j] = (TO)(EXPR);                                                          \
            }                                                                               \
        } else {                                                                            \
            char *po = p[0];                                                                \
            const char *px = p[1];                                                          \
            for (int64_t j = 0; j < n; j++, po += s[0], px += s[1]) {                       \
                const elem_t x = *(const elem_t *)px;                                       \
                *(TO *)po = (TO)(EXPR);                                                     \
            }                                                                               \
        }                                                                                   \
    }

/* out TO = EXPR(x, y) */
#define DEF_BINARY_ROW(NAME, SFX, T, TO, EXPR)                                              \
    static void NAME(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx)    \
    {                                                                                       \
        ROW_PRELUDE(SFX, T);                                                                \
        const int64_t es = (int64_t)sizeof(T);                                              \
        TO *o = (TO *)p[0];                                                                 \
        const elem_t *xa = (const elem_t *)p[1], *ya = (const elem_t *)p[2];                \
        if (s[0] == (int64_t)sizeof(TO) && s[1] == es && s[2] == es) {                      \
            for (int64_t j = 0; j < n; j++) {                                               \
                const elem_t x = xa[j], y = ya[j];                                          \
                o[j] = (TO)(EXPR);                                                          \
            }                                                                               \
        } else if (s[0] == (int64_t)sizeof(TO) && s[1] == es && s[2] == 0) {                \
            const elem_t y = *ya;                                                           \
            for (int64_t j = 0; j < n; j++) {                                               \
                const elem_t x = xa[j];                                                     \
                o[j] = (TO)(EXPR);                                                          \
            }                                                                               \
        } else if (s[0] == (int64_t)sizeof(TO) && s[1] == 0 && s[2] == es) {                \
            const elem_t x = *xa;                                                           \
            for (int64_t j = 0; j < n; j++) {                                               \
                const elem_t y = ya[j];                                                     \
                o[j] = (TO)(EXPR);                                                          \
            }                                                                               \
        } else {                                                                            \
            char *po = p[0];                                                                \
            const char *px = p[1], *py = p[2];                                              \
            for (int64_t j = 0; j < n; j++, po += s[0], px += s[1], py += s[2]) {           \
                const elem_t x = *(const elem_t *)px, y = *(const elem_t *)py;              \
                *(TO *)po = (TO)(EXPR);                                                     \
            }                                                                               \
        }                                                                                   \
    }

#define KERNEL_FN(OP, SFX)                                                                  \
    static nb_status k_##OP##_##SFX(const nb_kernel_args *a) { return nbc_ew(a, r_##OP##_##SFX, a); }
#define ENTRY(SFX, T, E, OP) {#OP, E, k_##OP##_##SFX},

/* Ops whose output has the element type (UN), bool output (UNB), two inputs (BIN, BINB). */
#define DEF_UN(SFX, T, E, OP, EXPR) DEF_UNARY_ROW(r_##OP##_##SFX, SFX, T, T, EXPR) KERNEL_FN(OP, SFX)
#define DEF_UNB(SFX, T, E, OP, EXPR) DEF_UNARY_ROW(r_##OP##_##SFX, SFX, T, uint8_t, EXPR) KERNEL_FN(OP, SFX)
#define DEF_BIN(SFX, T, E, OP, EXPR) DEF_BINARY_ROW(r_##OP##_##SFX, SFX, T, T, EXPR) KERNEL_FN(OP, SFX)
#define DEF_BINB(SFX, T, E, OP, EXPR) DEF_BINARY_ROW(r_##OP##_##SFX, SFX, T, uint8_t, EXPR) KERNEL_FN(OP, SFX)

/* The op table: X(kind, group, op, expression). Expanded once to define the kernels and once to
 * list them. */
#define ELEMENTWISE_OPS(X)                                                                  \
    X(UN, G_FLOAT, neg, -x)                                                                 \
    X(UN, G_INT, neg, WRAP_NEG(elem_t, x))                                                  \
    X(UN, G_FLOAT, abs, fabs(x))                                                            \
    X(UN, G_SINT, abs, x < 0 ? WRAP_NEG(elem_t, x) : x)                                     \
    X(UN, G_U8, abs, x)                                                                     \
    X(UN, G_FLOAT, sign, (x > 0) - (x < 0))                                                 \
    X(UN, G_SINT, sign, (x > 0) - (x < 0))                                                  \
    X(UN, G_U8, sign, x > 0)                                                                \
    X(UN, G_FLOAT, relu, x < 0 ? 0 : x)                                                     \
    X(UN, G_SINT, relu, x < 0 ? 0 : x)                                                      \
    X(UN, G_U8, relu, x)                                                                    \
    X(UN, G_FLOAT, floor, floor(x))                                                         \
    X(UN, G_INT, floor, x)                                                                  \
    X(UN, G_FLOAT, ceil, ceil(x))                                                           \
    X(UN, G_INT, ceil, x)                                                                   \
    X(UN, G_FLOAT, round, nearbyint(x))                                                     \
    X(UN, G_INT, round, x)                                                                  \
    X(UN, G_FLOAT, exp, exp(x))                                                             \
    X(UN, G_FLOAT, log, log(x))                                                             \
    X(UN, G_FLOAT, sqrt, sqrt(x))                                                           \
    X(UN, G_FLOAT, rsqrt, 1 / sqrt(x))                                                      \
    X(UN, G_FLOAT, sin, sin(x))                                                             \
    X(UN, G_FLOAT, cos, cos(x))                                                             \
    X(UN, G_FLOAT, tanh, tanh(x))                                                           \
    X(UN, G_FLOAT, sigmoid, 1 / (1 + exp(-x)))                                              \
    X(UNB, G_ALL, logical_not, x == 0)                                                      \
    X(UN, G_FLOAT, add_scalar, x + sv)                                                      \
    X(UN, G_INT, add_scalar, WRAP_ADD(elem_t, x, sv))                                       \
    X(UN, G_FLOAT, mul_scalar, x * sv)                                                      \
    X(UN, G_INT, mul_scalar, WRAP_MUL(elem_t, x, sv))                                       \
    X(UN, G_FLOAT, rsub_scalar, sv - x)                                                     \
    X(UN, G_INT, rsub_scalar, WRAP_SUB(elem_t, sv, x))                                      \
    X(UN, G_FLOAT, div_scalar, x / sv)                                                      \
    X(UN, G_FLOAT, rdiv_scalar, sv / x)                                                     \
    X(UN, G_FLOAT, pow_scalar, pow(x, sv))                                                  \
    X(UN, G_INT, pow_scalar, ipow(x, sv))                                                   \
    X(UN, G_FLOAT, rpow_scalar, pow(sv, x))                                                 \
    X(UN, G_INT, rpow_scalar, ipow(sv, x))                                                  \
    X(UN, G_FLOAT, clamp, clamp_float(x, sv, sv1, i0, i1))                           \
    X(UN, G_INT, clamp, clamp_int(x, f0, f1, i0, i1))                                       \
    X(UNB, G_FLOAT, eq_scalar, x == sv)                                                     \
    X(UNB, G_FLOAT, ne_scalar, x != sv)                                                     \
    X(UNB, G_FLOAT, lt_scalar, x < sv)                                                      \
    X(UNB, G_FLOAT, le_scalar, x <= sv)                                                     \
    X(UNB, G_FLOAT, gt_scalar, x > sv)                                                      \
    X(UNB, G_FLOAT, ge_scalar, x >= sv)                                                     \
    X(UNB, G_INT, eq_scalar, (double)x == f0)                                               \
    X(UNB, G_INT, ne_scalar, (double)x != f0)                                               \
    X(UNB, G_INT, lt_scalar, (double)x < f0)                                                \
    X(UNB, G_INT, le_scalar, (double)x <= f0)                                               \
    X(UNB, G_INT, gt_scalar, (double)x > f0)                                                \
    X(UNB, G_INT, ge_scalar, (double)x >= f0)                                               \
    X(UNB, G_BOOL, eq_scalar, (double)x == f0)                                              \
    X(UNB, G_BOOL, ne_scalar, (double)x != f0)                                              \
    X(UNB, G_BOOL, lt_scalar, (double)x < f0)                                               \
    X(UNB, G_BOOL, le_scalar, (double)x <= f0)                                              \
    X(UNB, G_BOOL, gt_scalar, (double)x > f0)                                               \
    X(UNB, G_BOOL, ge_scalar, (double)x >= f0)                                              \
    X(BIN, G_FLOAT, add, x + y)                                                             \
    X(BIN, G_INT, add, WRAP_ADD(elem_t, x, y))                                              \
    X(BIN, G_FLOAT, sub, x - y)                                                             \
    X(BIN, G_INT, sub, WRAP_SUB(elem_t, x, y))                                              \
    X(BIN, G_FLOAT, mul, x * y)                                                             \
    X(BIN, G_INT, mul, WRAP_MUL(elem_t, x, y))                                              \
    X(BIN, G_FLOAT, div, x / y)                                                             \
    X(BIN, G_FLOAT, pow, pow(x, y))                                                         \
    X(BIN, G_INT, pow, ipow(x, y))                                                          \
    X(BIN, G_FLOAT, maximum, (x != x || y != y) ? x + y : (x < y ? y : x))                  \
    X(BIN, G_FLOAT, minimum, (x != x || y != y) ? x + y : (x > y ? y : x))                  \
    X(BIN, G_INT, maximum, x < y ? y : x)                                                   \
    X(BIN, G_INT, minimum, x > y ? y : x)                                                   \
    X(BIN, G_BOOL, maximum, x < y ? y : x)                                                  \
    X(BIN, G_BOOL, minimum, x > y ? y : x)                                                  \
    X(BINB, G_ALL, eq, x == y)                                                              \
    X(BINB, G_ALL, ne, x != y)                                                              \
    X(BINB, G_ALL, lt, x < y)                                                               \
    X(BINB, G_ALL, le, x <= y)                                                              \
    X(BINB, G_ALL, gt, x > y)                                                               \
    X(BINB, G_ALL, ge, x >= y)                                                              \
    X(BINB, G_ALL, logical_and, (x != 0) & (y != 0))                                        \
    X(BINB, G_ALL, logical_or, (x != 0) | (y != 0))                                         \
    X(BINB, G_ALL, logical_xor, (x != 0) ^ (y != 0))                                        \
    X(BIN, G_FLOAT, relu_backward, y > 0 ? x : 0)

/* clamp is min(max(x, lo), hi) like PyTorch: NaN in x stays, a NaN bound wins. */
static inline double clamp_float(double x, double lo, double hi, int64_t has_lo, int64_t has_hi)
{
    if (has_lo && (x < lo || lo != lo))
        x = lo;
    if (has_hi && (x > hi || hi != hi))
        x = hi;
    return x;
}

static inline int64_t clamp_int(int64_t x, double lo, double hi, int64_t has_lo, int64_t has_hi)
{
    if (has_lo && (double)x < lo)
        x = nbc_fromd_i64(ceil(lo));
    if (has_hi && (double)x > hi)
        x = nbc_fromd_i64(floor(hi));
    return x;
}

#define X_DEFINE(KIND, GROUP, OP, EXPR) GROUP(DEF_##KIND##_SFXEXPR, OP, EXPR)
#define DEF_UN_SFXEXPR(SFX, T, E, OP, EXPR) DEF_UN(SFX, T, E, OP, EXPR)
#define DEF_UNB_SFXEXPR(SFX, T, E, OP, EXPR) DEF_UNB(SFX, T, E, OP, EXPR)
#define DEF_BIN_SFXEXPR(SFX, T, E, OP, EXPR) DEF_BIN(SFX, T, E, OP, EXPR)
#define DEF_BINB_SFXEXPR(SFX, T, E, OP, EXPR) DEF_BINB(SFX, T, E, OP, EXPR)

ELEMENTWISE_OPS(X_DEFINE)

/* ---- fill, arange, copy ---- */

#define DEF_FILL(SFX, T, E, ...)                                                            \
    static void r_fill_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx) \
    {                                                                                       \
        const T v = nbc_fromd_##SFX(((const nb_kernel_args *)ctx)->f[0]);                   \
        (void)k0;                                                                           \
        if (s[0] == (int64_t)sizeof(T)) {                                                   \
            T *o = (T *)p[0];                                                               \
            for (int64_t j = 0; j < n; j++)                                                 \
                o[j] = v;                                                                   \
        } else {                                                                            \
            for (int64_t j = 0; j < n; j++)                                                 \
                *(T *)(p[0] + j * s[0]) = v;                                                \
        }                                                                                   \
    }                                                                                       \
    KERNEL_FN(fill, SFX)                                                                    \
    static void r_arange_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0,           \
                               const void *ctx)                                             \
    {                                                                                       \
        const nb_kernel_args *a_ = ctx;                                                     \
        for (int64_t j = 0; j < n; j++)                                                     \
            *(T *)(p[0] + j * s[0]) = nbc_fromd_##SFX(a_->f[0] + (double)(k0 + j) * a_->f[1]); \
    }                                                                                       \
    KERNEL_FN(arange, SFX)
NBC_ALL_DTYPES(DEF_FILL)

/* Copy rows, one per (source, destination) dtype pair. */
#define DEF_COPY_ROW(DS, DT, SS, ST, SK)                                                    \
    static void r_copy_##SS##_##DS(char **p, const int64_t *s, int64_t n, int64_t k0,       \
                                   const void *ctx)                                         \
    {                                                                                       \
        (void)k0, (void)ctx;                                                                \
        if (s[0] == (int64_t)sizeof(DT) && s[1] == (int64_t)sizeof(ST)) {                   \
            DT *o = (DT *)p[0];                                                             \
            const ST *x = (const ST *)p[1];                                                 \
            for (int64_t j = 0; j < n; j++)                                                 \
                o[j] = nbc_from##SK##_##DS(x[j]);                                           \
        } else if (s[0] == (int64_t)sizeof(DT) && s[1] == 0) {                              \
            DT *o = (DT *)p[0];                                                             \
            const DT v = nbc_from##SK##_##DS(*(const ST *)p[1]);                            \
            for (int64_t j = 0; j < n; j++)                                                 \
                o[j] = v;                                                                   \
        } else {                                                                            \
            char *po = p[0];                                                                \
            const char *px = p[1];                                                          \
            for (int64_t j = 0; j < n; j++, po += s[0], px += s[1])                         \
                *(DT *)po = nbc_from##SK##_##DS(*(const ST *)px);                           \
        }                                                                                   \
    }
#define COPY_FROM_EACH(DS, DT, DE, DK) NBC_ALL_DTYPES_SRC(DEF_COPY_ROW, DS, DT)
#define NBC_ALL_DTYPES_SRC(M, DS, DT)                                                       \
    M(DS, DT, f32, float, d) M(DS, DT, f64, double, d) M(DS, DT, i32, int32_t, i)            \
    M(DS, DT, i64, int64_t, i) M(DS, DT, u8, uint8_t, i) M(DS, DT, b8, uint8_t, b)
NBC_ALL_DTYPES(COPY_FROM_EACH)

/* Identical dtype and contiguous layouts on both sides: one memcpy per row. */
static void r_copy_same(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx)
{
    size_t es = *(const size_t *)ctx;
    (void)k0;
    if (s[0] == (int64_t)es && s[1] == (int64_t)es) {
        memcpy(p[0], p[1], (size_t)n * es);
        return;
    }
    char *o = p[0];
    const char *x = p[1];
    if (es == 4) {
        for (int64_t j = 0; j < n; j++, o += s[0], x += s[1])
            *(uint32_t *)o = *(const uint32_t *)x;
    } else if (es == 8) {
        for (int64_t j = 0; j < n; j++, o += s[0], x += s[1])
            *(uint64_t *)o = *(const uint64_t *)x;
    } else {
        for (int64_t j = 0; j < n; j++, o += s[0], x += s[1])
            *o = *x;
    }
}

#define ROW_FOR_SRC(SS, ST, SE, SK, DS) [SE] = r_copy_##SS##_##DS,
#define DEF_COPY_KERNEL(DS, DT, DE, DK)                                                     \
    static nb_status k_copy_##DS(const nb_kernel_args *a)                                   \
    {                                                                                       \
        static const nbc_row_fn rows[NB_DTYPE_COUNT] = {NBC_ALL_DTYPES_ARG(ROW_FOR_SRC, DS)}; \
        nb_dtype sd = a->in[0].dtype;                                                       \
        if ((unsigned)sd >= NB_DTYPE_COUNT)                                                 \
            return NBC_ERR(NB_DTYPE_UNSUPPORTED, "copy: source dtype %d is not a known dtype", \
                           (int)sd);                                                        \
        if (nbc_is_16bit(sd))                                                               \
            return nbc_copy_16bit(a);                                                       \
        /* bool sources may hold any non-zero byte when wrapped from host memory */         \
        if (sd == DE && DE != NB_DTYPE_BOOL) {                                              \
            size_t es = sizeof(DT);                                                         \
            return nbc_ew(a, r_copy_same, &es);                                             \
        }                                                                                   \
        return nbc_ew(a, rows[sd], a);                                                      \
    }
#define NBC_ALL_DTYPES_ARG(M, A)                                                            \
    M(f32, float, NB_DTYPE_F32, d, A) M(f64, double, NB_DTYPE_F64, d, A)                    \
    M(i32, int32_t, NB_DTYPE_I32, i, A) M(i64, int64_t, NB_DTYPE_I64, i, A)                 \
    M(u8, uint8_t, NB_DTYPE_U8, i, A) M(b8, uint8_t, NB_DTYPE_BOOL, i, A)
NBC_ALL_DTYPES(DEF_COPY_KERNEL)

/* ---- where ---- */

#define DEF_WHERE(SFX, T, E, ...)                                                           \
    static void r_where_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx) \
    {                                                                                       \
        (void)k0, (void)ctx;                                                                \
        const int64_t es = (int64_t)sizeof(T);                                              \
        if (s[0] == es && s[1] == 1 && s[2] == es && s[3] == es) {                          \
            T *o = (T *)p[0];                                                               \
            const uint8_t *c = (const uint8_t *)p[1];                                       \
            const T *x = (const T *)p[2], *y = (const T *)p[3];                             \
            for (int64_t j = 0; j < n; j++)                                                 \
                o[j] = c[j] ? x[j] : y[j];                                                  \
        } else {                                                                            \
            for (int64_t j = 0; j < n; j++)                                                 \
                *(T *)(p[0] + j * s[0]) = *(const uint8_t *)(p[1] + j * s[1])               \
                                              ? *(const T *)(p[2] + j * s[2])               \
                                              : *(const T *)(p[3] + j * s[3]);              \
        }                                                                                   \
    }                                                                                       \
    KERNEL_FN(where, SFX)
NBC_ALL_DTYPES(DEF_WHERE)

/* ---- random ---- */

/* Element k of out (row-major) takes Philox counter (k, offset) under key seed, as
 * nabla_plugin.h specifies, so every device draws the same numbers. */
#define DEF_RANDOM(SFX, T, E, IS64)                                                         \
    static void r_random_uniform_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0,   \
                                       const void *ctx)                                     \
    {                                                                                       \
        const nb_kernel_args *a_ = ctx;                                                     \
        const double lo = a_->f[0], span = a_->f[1] - a_->f[0];                             \
        for (int64_t j = 0; j < n; j++) {                                                   \
            double u = nb_philox_uniform((uint64_t)a_->i[0], (uint64_t)a_->i[1],            \
                                         (uint64_t)(k0 + j), IS64);                         \
            *(T *)(p[0] + j * s[0]) = (T)(lo + span * u);                                   \
        }                                                                                   \
    }                                                                                       \
    KERNEL_FN(random_uniform, SFX)                                                          \
    static void r_random_normal_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0,    \
                                      const void *ctx)                                      \
    {                                                                                       \
        const nb_kernel_args *a_ = ctx;                                                     \
        for (int64_t j = 0; j < n; j++) {                                                   \
            double u1, u2;                                                                  \
            nb_philox_normal_parts((uint64_t)a_->i[0], (uint64_t)a_->i[1],                  \
                                   (uint64_t)(k0 + j), &u1, &u2);                           \
            double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);            \
            *(T *)(p[0] + j * s[0]) = (T)(a_->f[0] + a_->f[1] * z);                         \
        }                                                                                   \
    }                                                                                       \
    KERNEL_FN(random_normal, SFX)
DEF_RANDOM(f32, float, NB_DTYPE_F32, 0)
DEF_RANDOM(f64, double, NB_DTYPE_F64, 1)

/* ---- optimizer steps (tier 2) ---- */

/* out = param; in[0] grad, in[1] momentum buffer; f = lr, momentum, dampening, weight_decay;
 * i[0] nesterov, i[1] first step. Follows torch.optim.SGD. */
#define DEF_SGD(SFX, T, E, ...)                                                             \
    static void r_sgd_step_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0,         \
                                 const void *ctx)                                           \
    {                                                                                       \
        const nb_kernel_args *a_ = ctx;                                                     \
        const T lr = (T)a_->f[0], mom = (T)a_->f[1], damp = (T)a_->f[2], wd = (T)a_->f[3];  \
        const bool nesterov = a_->i[0] != 0, first = a_->i[1] != 0;                         \
        const bool has_buf = a_->n_in >= 2 && mom != 0;                                     \
        const int64_t es = (int64_t)sizeof(T);                                              \
        (void)k0;                                                                           \
        if (s[0] == es && s[1] == es && (!has_buf || s[2] == es)) {                         \
            /* The common case, written with selects so that it vectorises; the same      \
             * operations in the same order as the strided loop, so the same bits. */       \
            T *w = (T *)p[0], *buf = has_buf ? (T *)p[2] : NULL;                            \
            const T *g = (const T *)p[1];                                                   \
            if (has_buf)                                                                    \
                for (int64_t j = 0; j < n; j++) {                                           \
                    T d = wd != 0 ? g[j] + wd * w[j] : g[j];                                \
                    T b = first ? d : mom * buf[j] + (1 - damp) * d;                        \
                    buf[j] = b;                                                             \
                    w[j] -= lr * (nesterov ? d + mom * b : b);                              \
                }                                                                           \
            else                                                                            \
                for (int64_t j = 0; j < n; j++)                                             \
                    w[j] -= lr * (wd != 0 ? g[j] + wd * w[j] : g[j]);                       \
            return;                                                                         \
        }                                                                                   \
        for (int64_t j = 0; j < n; j++) {                                                   \
            T *w = (T *)(p[0] + j * s[0]);                                                  \
            T d = *(const T *)(p[1] + j * s[1]);                                            \
            if (wd != 0)                                                                    \
                d += wd * *w;                                                               \
            if (has_buf) {                                                                  \
                T *buf = (T *)(p[2] + j * s[2]);                                            \
                *buf = first ? d : mom * *buf + (1 - damp) * d;                             \
                d = nesterov ? d + mom * *buf : *buf;                                       \
            }                                                                               \
            *w -= lr * d;                                                                   \
        }                                                                                   \
    }                                                                                       \
    KERNEL_FN(sgd_step, SFX)
G_FLOAT(DEF_SGD, 0)

/* out = param; in[0] grad, in[1] exp_avg, in[2] exp_avg_sq; f = lr, beta1, beta2, eps,
 * weight_decay; i[0] step (from 1), i[1] decoupled decay (AdamW). Follows torch.optim.Adam. */
typedef struct adam_ctx {
    double lr, b1, b2, eps, wd, step_size, inv_sqrt_bc2;
    bool decoupled;
} adam_ctx;

#define DEF_ADAM(SFX, T, E, ...)                                                            \
    static void r_adam_step_##SFX(char **p, const int64_t *s, int64_t n, int64_t k0,        \
                                  const void *ctx)                                          \
    {                                                                                       \
        const adam_ctx *c = ctx;                                                            \
        const T b1 = (T)c->b1, b2 = (T)c->b2, eps = (T)c->eps, wd = (T)c->wd;               \
        const T step_size = (T)c->step_size, inv_sqrt_bc2 = (T)c->inv_sqrt_bc2;             \
        const T decay = (T)(1 - c->lr * c->wd);                                             \
        const int64_t es = (int64_t)sizeof(T);                                              \
        (void)k0;                                                                           \
        if (s[0] == es && s[1] == es && s[2] == es && s[3] == es) {                         \
            /* The common case, with selects so that it vectorises (same operations and      \
             * order as the strided loop below, so the same bits). */                       \
            T *w = (T *)p[0], *m = (T *)p[2], *v = (T *)p[3];                               \
            const T *gr = (const T *)p[1];                                                  \
            const bool dec = c->decoupled, l2 = !c->decoupled && wd != 0;                   \
            for (int64_t j = 0; j < n; j++) {                                               \
                const T w0 = w[j], g = l2 ? gr[j] + wd * w0 : gr[j];                        \
                const T w1 = dec ? w0 * decay : w0;                                         \
                const T mj = m[j] + (g - m[j]) * (1 - b1);                                  \
                const T vj = b2 * v[j] + (1 - b2) * g * g;                                  \
                m[j] = mj;                                                                  \
                v[j] = vj;                                                                  \
                w[j] = w1 - step_size * mj / (sqrt(vj) * inv_sqrt_bc2 + eps);               \
            }                                                                               \
            return;                                                                         \
        }                                                                                   \
        for (int64_t j = 0; j < n; j++) {                                                   \
            T *w = (T *)(p[0] + j * s[0]);                                                  \
            T g = *(const T *)(p[1] + j * s[1]);                                            \
            T *m = (T *)(p[2] + j * s[2]), *v = (T *)(p[3] + j * s[3]);                     \
            if (c->decoupled)                                                               \
                *w *= decay;                                                                \
            else if (wd != 0)                                                               \
                g += wd * *w;                                                               \
            *m += (g - *m) * (1 - b1);                                                      \
            *v = b2 * *v + (1 - b2) * g * g;                                                \
            *w -= step_size * *m / (sqrt(*v) * inv_sqrt_bc2 + eps);                         \
        }                                                                                   \
    }                                                                                       \
    static nb_status k_adam_step_##SFX(const nb_kernel_args *a)                             \
    {                                                                                       \
        if (a->n_in < 3 || a->i[0] < 1)                                                     \
            return NBC_ERR(NB_INVALID_ARGUMENT, "adam_step: needs grad, exp_avg, exp_avg_sq " \
                           "and step >= 1 (got %d inputs, step %lld)", (int)a->n_in,        \
                           (long long)a->i[0]);                                             \
        adam_ctx c = {a->f[0], a->f[1], a->f[2], a->f[3], a->f[4], 0, 0, a->i[1] != 0};     \
        double bc1 = 1 - pow(c.b1, (double)a->i[0]), bc2 = 1 - pow(c.b2, (double)a->i[0]);  \
        c.step_size = c.lr / bc1;                                                           \
        c.inv_sqrt_bc2 = 1 / sqrt(bc2);                                                     \
        return nbc_ew(a, r_adam_step_##SFX, &c);                                            \
    }
G_FLOAT(DEF_ADAM, 0)

/* ---- the table ---- */

#define X_ENTRY(KIND, GROUP, OP, EXPR) GROUP(ENTRY, OP)
#define ENTRY_ALL(SFX, T, E, K) {"fill", E, k_fill_##SFX}, {"arange", E, k_arange_##SFX},      \
    {"copy", E, k_copy_##SFX}, {"where", E, k_where_##SFX},

const nb_kernel_desc nbc_elementwise_kernels[] = {
    ELEMENTWISE_OPS(X_ENTRY)
    NBC_ALL_DTYPES(ENTRY_ALL)
    G_FLOAT(ENTRY, random_uniform)
    G_FLOAT(ENTRY, random_normal)
    G_FLOAT(ENTRY, sgd_step)
    G_FLOAT(ENTRY, adam_step)
};
const size_t nbc_elementwise_count = sizeof nbc_elementwise_kernels / sizeof nbc_elementwise_kernels[0];
