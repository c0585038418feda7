/* cpu_conv.c - the fused conv2d kernel and its two backwards: direct vector loops for few taps,
 * else lowered to gemm (see conv_path). Strided operands are made contiguous first. */
#include "cpu_fused.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <tgmath.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- conv2d ---- */

typedef struct geom {
    int64_t N, C, H, W;    /* input */
    int64_t O, kh, kw;     /* weight (O, C/G, kh, kw) */
    int64_t OH, OW, P;     /* output plane, P = OH * OW */
    int64_t sh, sw, ph, pw, dh, dw, G;
    int64_t Cg, Og, K;     /* channels per group, K = Cg * kh * kw */
} geom;

/* Checks x, w and y shapes against each other and the parameters in a->i. */
static nb_status conv_geom(const char *name, const nb_kernel_args *a, const nb_operand *x,
                           const nb_operand *w, const nb_operand *y, geom *g)
{
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: input, weight and output must be 4-d, got %d, "
                       "%d and %d dims", name, (int)x->ndim, (int)w->ndim, (int)y->ndim);
    if (x->dtype != y->dtype || w->dtype != y->dtype)
        return NBC_ERR(NB_DTYPE_UNSUPPORTED, "%s: input, weight and output are %s, %s and %s; "
                       "expected one float dtype", name, nbc_dtype_name(x->dtype),
                       nbc_dtype_name(w->dtype), nbc_dtype_name(y->dtype));
    *g = (geom){x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0], w->shape[2],
                w->shape[3], y->shape[2], y->shape[3], 0, a->i[0], a->i[1], a->i[2], a->i[3],
                a->i[4], a->i[5], a->i[6] ? a->i[6] : 1, 0, 0, 0};
    if (g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1 || g->ph < 0 || g->pw < 0 || g->G < 1)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: stride (%lld,%lld), padding (%lld,%lld), "
                       "dilation (%lld,%lld), groups %lld; expected stride, dilation and groups "
                       ">= 1 and padding >= 0", name, (long long)g->sh, (long long)g->sw,
                       (long long)g->ph, (long long)g->pw, (long long)g->dh, (long long)g->dw,
                       (long long)g->G);
    if (g->C % g->G || g->O % g->G || w->shape[1] != g->C / g->G)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: %lld input and %lld output channels with %lld "
                       "groups need a weight of (O, C/groups, kh, kw); got C/groups %lld",
                       name, (long long)g->C, (long long)g->O, (long long)g->G,
                       (long long)w->shape[1]);
    int64_t oh = conv_out_size(g->H, g->kh, g->sh, g->ph, g->dh);
    int64_t ow = conv_out_size(g->W, g->kw, g->sw, g->pw, g->dw);
    if (y->shape[0] != g->N || y->shape[1] != g->O || oh != g->OH || ow != g->OW)
        return NBC_ERR(NB_SHAPE_MISMATCH, "%s: output is (%lld,%lld,%lld,%lld), expected "
                       "(%lld,%lld,%lld,%lld)", name, (long long)y->shape[0],
                       (long long)y->shape[1], (long long)y->shape[2], (long long)y->shape[3],
                       (long long)g->N, (long long)g->O, (long long)oh, (long long)ow);
    g->P = g->OH * g->OW;
    g->Cg = g->C / g->G;
    g->Og = g->O / g->G;
    g->K = g->Cg * g->kh * g->kw;
    if (g->K > INT_MAX || g->N * g->P > INT_MAX || g->Og > INT_MAX)
        return NBC_ERR(NB_INVALID_ARGUMENT, "%s: sizes exceed the BLAS limit %d", name, INT_MAX);
    return NB_OK;
}

/* Output columns ow whose input column ow * sw + off lies inside [0, W): [*lo, *hi). Computed
 * once per kernel row, so the copy loops have no bounds tests. */
static void valid_cols(const geom *g, int64_t off, int64_t *lo, int64_t *hi)
{
    /* ceil(a / sw) as a / sw + (a % sw != 0): a + sw - 1 overflows for a stride near 2^63 */
    int64_t l = off >= 0 ? 0 : -off / g->sw + (-off % g->sw != 0);
    int64_t h = g->W - off <= 0 ? 0 : (g->W - off) / g->sw + ((g->W - off) % g->sw != 0);
    if (l > g->OW)
        l = g->OW;
    if (h > g->OW)
        h = g->OW;
    if (h < l)
        h = l;
    *lo = l;
    *hi = h;
}

/* col is (K, N * P) for group grp: row (c, ki, kj), column (n, oh, ow). im2col fills it from
 * x; col2im adds it back into dx (the adjoint). */
#define DEF_IM2COL(SFX, T)                                                                  \
    static void im2col_##SFX(const geom *g, const T *x, int64_t grp, T *col)               \
    {                                                                                       \
        const int64_t NP = g->N * g->P;                                                     \
        for (int64_t c = 0; c < g->Cg; c++)                                                 \
            for (int64_t ki = 0; ki < g->kh; ki++)                                          \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                    \
                    T *row = col + ((c * g->kh + ki) * g->kw + kj) * NP;                    \
                    const int64_t off = kj * g->dw - g->pw;                                 \
                    int64_t lo, hi;                                                         \
                    valid_cols(g, off, &lo, &hi);                                           \
                    for (int64_t n = 0; n < g->N; n++) {                                    \
                        const T *xc = x + ((n * g->C + grp * g->Cg + c) * g->H) * g->W;     \
                        for (int64_t oh = 0; oh < g->OH; oh++) {                            \
                            T *dst = row + n * g->P + oh * g->OW;                           \
                            const int64_t ih = oh * g->sh + ki * g->dh - g->ph;             \
                            if (ih < 0 || ih >= g->H) {                                     \
                                memset(dst, 0, (size_t)g->OW * sizeof(T));                  \
                                continue;                                                   \
                            }                                                               \
                            const T *src = xc + ih * g->W + off;                            \
                            for (int64_t ow = 0; ow < lo; ow++)                             \
                                dst[ow] = 0;                                                \
                            /* rows are short (tens of elements): a loop beats memcpy */    \
                            if (g->sw == 1)                                                 \
                                for (int64_t ow = lo; ow < hi; ow++)                        \
                                    dst[ow] = src[ow];                                      \
                            else                                                            \
                                for (int64_t ow = lo; ow < hi; ow++)                        \
                                    dst[ow] = src[ow * g->sw];                              \
                            for (int64_t ow = hi; ow < g->OW; ow++)                         \
                                dst[ow] = 0;                                                \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
    }                                                                                       \
    static void col2im_##SFX(const geom *g, const T *col, int64_t grp, T *dx)              \
    {                                                                                       \
        const int64_t NP = g->N * g->P;                                                     \
        for (int64_t c = 0; c < g->Cg; c++)                                                 \
            for (int64_t ki = 0; ki < g->kh; ki++)                                          \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                    \
                    const T *row = col + ((c * g->kh + ki) * g->kw + kj) * NP;              \
                    const int64_t off = kj * g->dw - g->pw;                                 \
                    int64_t lo, hi;                                                         \
                    valid_cols(g, off, &lo, &hi);                                           \
                    for (int64_t n = 0; n < g->N; n++) {                                    \
                        T *xc = dx + ((n * g->C + grp * g->Cg + c) * g->H) * g->W;          \
                        for (int64_t oh = 0; oh < g->OH; oh++) {                            \
                            const int64_t ih = oh * g->sh + ki * g->dh - g->ph;             \
                            if (ih < 0 || ih >= g->H)                                       \
                                continue;                                                   \
                            const T *srow = row + n * g->P + oh * g->OW;                    \
                            T *d = xc + ih * g->W + off;                                    \
                            if (g->sw == 1)                                                 \
                                for (int64_t ow = lo; ow < hi; ow++)                        \
                                    d[ow] += srow[ow];                                      \
                            else                                                            \
                                for (int64_t ow = lo; ow < hi; ow++)                        \
                                    d[ow * g->sw] += srow[ow];                              \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
    }
DEF_IM2COL(f32, float)
DEF_IM2COL(f64, double)

/* C (M x N) = op(A) @ op(B) + beta * C, row-major. */
static void gemm(nb_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A,
                 int64_t lda, const void *B, int64_t ldb, double beta, void *C, int64_t ldc)
{
    CBLAS_TRANSPOSE tA = ta ? CblasTrans : CblasNoTrans, tB = tb ? CblasTrans : CblasNoTrans;
    if (dt == NB_DTYPE_F32)
        nbc_blas.sgemm(CblasRowMajor, tA, tB, (int)M, (int)N, (int)K, 1.0f, A, (int)lda, B,
                    (int)ldb, (float)beta, C, (int)ldc);
    else
        nbc_blas.dgemm(CblasRowMajor, tA, tB, (int)M, (int)N, (int)K, 1.0, A, (int)lda, B,
                    (int)ldb, beta, C, (int)ldc);
}

/* y (N, O, P) <-> yp (Og, N * P) for one group: the layout a batched gemm reads and writes. */
static void to_group_major(const geom *g, const char *y, int64_t grp, char *yp, size_t es)
{
    const size_t row = (size_t)g->P * es;
    for (int64_t o = 0; o < g->Og; o++)
        for (int64_t n = 0; n < g->N; n++)
            memcpy(yp + (size_t)(o * g->N + n) * row, y + (size_t)(n * g->O + grp * g->Og + o) * row,
                   row);
}

static void from_group_major(const geom *g, const char *yp, int64_t grp, char *y, size_t es)
{
    const size_t row = (size_t)g->P * es;
    for (int64_t o = 0; o < g->Og; o++)
        for (int64_t n = 0; n < g->N; n++)
            memcpy(y + (size_t)(n * g->O + grp * g->Og + o) * row, yp + (size_t)(o * g->N + n) * row,
                   row);
}

static void im2col(nb_dtype dt, const geom *g, const void *x, int64_t grp, void *col)
{
    if (dt == NB_DTYPE_F32)
        im2col_f32(g, x, grp, col);
    else
        im2col_f64(g, x, grp, col);
}

static void col2im(nb_dtype dt, const geom *g, const void *col, int64_t grp, void *dx)
{
    if (dt == NB_DTYPE_F32)
        col2im_f32(g, col, grp, dx);
    else
        col2im_f64(g, col, grp, dx);
}

/* Four ways to run a convolution, picked per call:
 * - direct (stride 1, Cg*kh*kw <= NBC_DIRECT_MAX_K taps per output): vector loops over the
 *   image spans below, no gemm; gemm shapes degenerate there (LeNet's first layer: K = 9).
 * - span (stride 1): the column matrix built from spans, then gemm.
 * - per image: one im2col + gemm per image and group; the column buffer of one image stays in
 *   cache and the gemm reads and writes (N, O, P) in place.
 * - batched: tiny images put all N into one gemm per group, paying a transpose to (Og, N * P).
 * NBC_CONV_PATH=span, =im2col or =batched forces the gemm lowerings (the plugin tests run each). */
enum conv_path { PATH_DIRECT, PATH_SPAN, PATH_IMAGE, PATH_BATCHED };
#define NBC_DIRECT_MAX_K 64

static enum conv_path conv_path(const geom *g)
{
    static int forced = -1;
    if (forced < 0) {
        const char *e = getenv("NBC_CONV_PATH");
        forced = !e ? 0 : !strcmp(e, "span") ? 3 : !strcmp(e, "im2col") ? 1
                        : !strcmp(e, "batched") ? 2 : 0;
    }
    if (g->sh == 1 && g->sw == 1 && (forced == 0 || forced == 3))
        return forced == 0 && g->K <= NBC_DIRECT_MAX_K ? PATH_DIRECT : PATH_SPAN;
    if (forced == 2 || (forced == 0 && g->N > 1 && g->P < 64))
        return PATH_BATCHED;
    return PATH_IMAGE;
}

/* ---- stride-1 convolution over spans ----
 * With stride 1, tap (c, ki, kj) of output (oh, ow) reads x[c, oh + ki*dh, ow + kj*dw] of the
 * padded image. Letting ow run over the whole padded width Wp instead of OW turns each tap's
 * row of the column matrix into one contiguous span of OH * Wp elements starting at
 * (ki*dh, kj*dw): building the matrix is Cg*kh*kw memcpys per image, and its adjoint as many
 * contiguous adds. The Wp - OW extra outputs per row are dropped (forward) or fed zero
 * gradients (backwards). */
typedef struct span {
    int64_t Hp, Wp, plane, L; /* padded image, its size, span length OH * Wp */
    bool padded;
} span;

static span span_of(const geom *g)
{
    span sp;
    sp.Hp = g->H + 2 * g->ph;
    sp.Wp = g->W + 2 * g->pw;
    sp.plane = sp.Hp * sp.Wp;
    sp.L = g->OH * sp.Wp;
    sp.padded = g->ph || g->pw;
    return sp;
}

/* The Cg planes of image n, group grp, zero-padded into pad when the conv pads. */
static const char *span_input(const geom *g, const span *sp, const char *x, int64_t n,
                              int64_t grp, char *pad, size_t es)
{
    const char *src = x + (size_t)((n * g->C + grp * g->Cg) * g->H * g->W) * es;
    if (!sp->padded)
        return src;
    memset(pad, 0, (size_t)(g->Cg * sp->plane) * es);
    for (int64_t c = 0; c < g->Cg; c++)
        for (int64_t h = 0; h < g->H; h++)
            memcpy(pad + (size_t)((c * sp->Hp + h + g->ph) * sp->Wp + g->pw) * es,
                   src + (size_t)((c * g->H + h) * g->W) * es, (size_t)g->W * es);
    return pad;
}

/* Span of tap r = (c, ki, kj): its offset in the (padded) planes and how much of it lies inside
 * its plane (the tail of the last rows would run into the next plane; it only feeds dropped
 * outputs, so it reads as zero). */
static int64_t span_tap(const geom *g, const span *sp, int64_t c, int64_t ki, int64_t kj,
                        int64_t *len)
{
    int64_t off = ki * g->dh * sp->Wp + kj * g->dw;
    *len = sp->plane - off < sp->L ? sp->plane - off : sp->L;
    return c * sp->plane + off;
}

/* Column matrix rows of one image: row r at col + r * ld, this image's L columns. */
static void span_cols(const geom *g, const span *sp, const char *xin, char *col, int64_t ld,
                      size_t es)
{
    for (int64_t c = 0, r = 0; c < g->Cg; c++)
        for (int64_t ki = 0; ki < g->kh; ki++)
            for (int64_t kj = 0; kj < g->kw; kj++, r++) {
                int64_t len, at = span_tap(g, sp, c, ki, kj, &len);
                char *dst = col + (size_t)(r * ld) * es;
                memcpy(dst, xin + (size_t)at * es, (size_t)len * es);
                memset(dst + (size_t)len * es, 0, (size_t)(sp->L - len) * es);
            }
}

#define DEF_SPAN_ADD(SFX, T)                                                                \
    static void span_add_##SFX(void *dst, const void *src, int64_t n)                       \
    {                                                                                       \
        T *d = dst;                                                                         \
        const T *s = src;                                                                   \
        for (int64_t j = 0; j < n; j++)                                                     \
            d[j] += s[j];                                                                   \
    }
DEF_SPAN_ADD(f32, float)
DEF_SPAN_ADD(f64, double)

/* dy rows of image n, group grp, into rows o * ld of (Og, OH, Wp) layout; the dropped columns
 * hold zeros the caller wrote once. */
static void span_grad(const geom *g, const span *sp, const char *dy, int64_t n, int64_t grp,
                      char *dyext, int64_t ld, size_t es)
{
    for (int64_t o = 0; o < g->Og; o++)
        for (int64_t oh = 0; oh < g->OH; oh++)
            memcpy(dyext + (size_t)(o * ld + oh * sp->Wp) * es,
                   dy + (size_t)(((n * g->O + grp * g->Og + o) * g->OH + oh) * g->OW) * es,
                   (size_t)g->OW * es);
}

/* Images per gemm: as many as keep the column matrix near 256 KiB (measured on LeNet's shapes:
 * larger blocks fall out of cache, smaller ones change little). */
static int64_t span_block(const geom *g, const span *sp, size_t es)
{
    int64_t per = g->K * sp->L * (int64_t)es, b = per > 0 ? (256 << 10) / per : g->N;
    return b < 1 ? 1 : b > g->N ? g->N : b;
}

static nb_status span_forward(nb_dtype dt, const geom *g, const char *x, const char *w, char *y)
{
    const size_t es = nbc_dtype_size(dt);
    const span sp = span_of(g);
    const int64_t B = span_block(g, &sp, es), ld = B * sp.L;
    char *col = nbc_scratch(S_COL, (size_t)(g->K * ld) * es);
    char *yext = nbc_scratch(S_PERM, (size_t)(g->Og * ld) * es);
    char *pad = sp.padded ? nbc_scratch(S_IN2, (size_t)(g->Cg * sp.plane) * es) : NULL;
    if (!col || !yext || (sp.padded && !pad))
        return NB_OUT_OF_MEMORY;
    for (int64_t n0 = 0; n0 < g->N; n0 += B) {
        const int64_t nb = g->N - n0 < B ? g->N - n0 : B;
        for (int64_t grp = 0; grp < g->G; grp++) {
            for (int64_t j = 0; j < nb; j++)
                span_cols(g, &sp, span_input(g, &sp, x, n0 + j, grp, pad, es),
                          col + (size_t)(j * sp.L) * es, ld, es);
            gemm(dt, false, false, g->Og, nb * sp.L, g->K,
                 w + (size_t)(grp * g->Og * g->K) * es, g->K, col, ld, 0, yext, ld);
            for (int64_t j = 0; j < nb; j++)
                for (int64_t o = 0; o < g->Og; o++)
                    for (int64_t oh = 0; oh < g->OH; oh++)
                        memcpy(y + (size_t)((((n0 + j) * g->O + grp * g->Og + o) * g->OH + oh) *
                                            g->OW) * es,
                               yext + (size_t)(o * ld + j * sp.L + oh * sp.Wp) * es,
                               (size_t)g->OW * es);
        }
    }
    return NB_OK;
}

/* dx must be zero on entry. */
static nb_status span_backward_input(nb_dtype dt, const geom *g, const char *dy, const char *w,
                                     char *dx)
{
    const size_t es = nbc_dtype_size(dt);
    const span sp = span_of(g);
    const int64_t B = span_block(g, &sp, es), ld = B * sp.L;
    char *dcol = nbc_scratch(S_COL, (size_t)(g->K * ld) * es);
    char *dyext = nbc_scratch(S_PERM, (size_t)(g->Og * ld) * es);
    char *pad = sp.padded ? nbc_scratch(S_IN2, (size_t)(g->Cg * sp.plane) * es) : NULL;
    if (!dcol || !dyext || (sp.padded && !pad))
        return NB_OUT_OF_MEMORY;
    memset(dyext, 0, (size_t)(g->Og * ld) * es);
    for (int64_t n0 = 0; n0 < g->N; n0 += B) {
        const int64_t nb = g->N - n0 < B ? g->N - n0 : B;
        for (int64_t grp = 0; grp < g->G; grp++) {
            for (int64_t j = 0; j < nb; j++)
                span_grad(g, &sp, dy, n0 + j, grp, dyext + (size_t)(j * sp.L) * es, ld, es);
            /* dcol (K, nb L) = W_g^T (K, Og) @ dyext (Og, nb L) */
            gemm(dt, true, false, g->K, nb * sp.L, g->Og, w + (size_t)(grp * g->Og * g->K) * es,
                 g->K, dyext, ld, 0, dcol, ld);
            for (int64_t j = 0; j < nb; j++) {
                char *dxn = dx + (size_t)(((n0 + j) * g->C + grp * g->Cg) * g->H * g->W) * es;
                char *target = sp.padded ? pad : dxn;
                if (sp.padded)
                    memset(pad, 0, (size_t)(g->Cg * sp.plane) * es);
                for (int64_t c = 0, r = 0; c < g->Cg; c++)
                    for (int64_t ki = 0; ki < g->kh; ki++)
                        for (int64_t kj = 0; kj < g->kw; kj++, r++) {
                            int64_t len, at = span_tap(g, &sp, c, ki, kj, &len);
                            char *d = target + (size_t)at * es;
                            const char *src = dcol + (size_t)(r * ld + j * sp.L) * es;
                            if (dt == NB_DTYPE_F32)
                                span_add_f32(d, src, len);
                            else
                                span_add_f64(d, src, len);
                        }
                if (sp.padded)
                    for (int64_t c = 0; c < g->Cg; c++)
                        for (int64_t h = 0; h < g->H; h++)
                            memcpy(dxn + (size_t)((c * g->H + h) * g->W) * es,
                                   pad + (size_t)((c * sp.Hp + h + g->ph) * sp.Wp + g->pw) * es,
                                   (size_t)g->W * es);
            }
        }
    }
    return NB_OK;
}

static nb_status span_backward_weight(nb_dtype dt, const geom *g, const char *dy, const char *x,
                                      char *dw)
{
    const size_t es = nbc_dtype_size(dt);
    const span sp = span_of(g);
    const int64_t B = span_block(g, &sp, es), ld = B * sp.L;
    char *col = nbc_scratch(S_COL, (size_t)(g->K * ld) * es);
    char *dyext = nbc_scratch(S_PERM, (size_t)(g->Og * ld) * es);
    char *pad = sp.padded ? nbc_scratch(S_IN2, (size_t)(g->Cg * sp.plane) * es) : NULL;
    if (!col || !dyext || (sp.padded && !pad))
        return NB_OUT_OF_MEMORY;
    memset(dyext, 0, (size_t)(g->Og * ld) * es);
    for (int64_t n0 = 0; n0 < g->N; n0 += B) {
        const int64_t nb = g->N - n0 < B ? g->N - n0 : B;
        for (int64_t grp = 0; grp < g->G; grp++) {
            for (int64_t j = 0; j < nb; j++) {
                span_cols(g, &sp, span_input(g, &sp, x, n0 + j, grp, pad, es),
                          col + (size_t)(j * sp.L) * es, ld, es);
                span_grad(g, &sp, dy, n0 + j, grp, dyext + (size_t)(j * sp.L) * es, ld, es);
            }
            /* dW_g (Og, K) (+)= dyext (Og, nb L) @ col^T (nb L, K) */
            gemm(dt, false, true, g->Og, g->K, nb * sp.L, dyext, ld, col, ld, n0 == 0 ? 0 : 1,
                 dw + (size_t)(grp * g->Og * g->K) * es, g->K);
        }
    }
    return NB_OK;
}

/* ---- direct stride-1 convolutions ----
 * Output position pos = oh * Wp + ow of the span layout reads tap r at xin[off[r] + pos], so
 * the forward, the weight gradient and the input gradient are loops over pos with the taps'
 * offsets, vectorised 32 bytes at a time with GCC vector types (one build also targets
 * x86-64-v3 for FMA, picked by nbc_isa_level, never by CPU model). Positions run over [0, Lv) with
 * Lv = (OH - 1) * Wp + OW, which keeps every read inside the image; ow >= OW positions are
 * computed and dropped, or read zero gradients. */

#define VLOAD(v, p) memcpy(&(v), (p), sizeof(v))
#define DEF_VEC(SFX, T, LANES)                                                              \
    typedef T vec_##SFX __attribute__((vector_size(32)));                                   \
    /* by pointer: passing 32-byte vectors by value would change with the ABI of AVX */    \
    static inline T vsum_##SFX(const vec_##SFX *v)                                          \
    {                                                                                       \
        T s = 0;                                                                            \
        for (int l = 0; l < LANES; l++)                                                     \
            s += (*v)[l];                                                                   \
        return s;                                                                           \
    }
/* One instance per ISA: ATTR is empty for the baseline one. */
#define DEF_DIRECT(SFX, T, LANES, ISA, ATTR)                                                \
    /* ext (Og, Lv) = sum over taps of w[o][r] * xin[off[r] + pos]; 6 channels per pass,    \
     * w6 padded with zero channels so the loop has no branches */                          \
    ATTR static void direct_fwd_##SFX##_##ISA(const T *xin, const int64_t *off, int64_t K,    \
                                            const T *w, int64_t Og, T *ext, int64_t Lv)     \
    {                                                                                       \
        T w6[6 * NBC_DIRECT_MAX_K];                                                         \
        for (int64_t o = 0; o < Og; o += 6) {                                               \
            const int64_t ob = Og - o < 6 ? Og - o : 6;                                     \
            memset(w6, 0, sizeof w6);                                                       \
            for (int64_t b = 0; b < ob; b++)                                                \
                for (int64_t r = 0; r < K; r++)                                             \
                    w6[r * 6 + b] = w[(o + b) * K + r];                                     \
            int64_t pos = 0;                                                                \
            for (; pos + LANES <= Lv; pos += LANES) {                                       \
                vec_##SFX a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0};        \
                for (int64_t r = 0; r < K; r++) {                                           \
                    vec_##SFX xv;                                                           \
                    VLOAD(xv, xin + off[r] + pos);                                          \
                    const T *wr = w6 + r * 6;                                               \
                    a0 += wr[0] * xv;                                                       \
                    a1 += wr[1] * xv;                                                       \
                    a2 += wr[2] * xv;                                                       \
                    a3 += wr[3] * xv;                                                       \
                    a4 += wr[4] * xv;                                                       \
                    a5 += wr[5] * xv;                                                       \
                }                                                                           \
                const vec_##SFX acc[6] = {a0, a1, a2, a3, a4, a5};                          \
                for (int64_t b = 0; b < ob; b++)                                            \
                    memcpy(ext + (o + b) * Lv + pos, &acc[b], sizeof acc[b]);               \
            }                                                                               \
            for (; pos < Lv; pos++)                                                         \
                for (int64_t b = 0; b < ob; b++) {                                          \
                    T a = 0;                                                                \
                    for (int64_t r = 0; r < K; r++)                                         \
                        a += w6[r * 6 + b] * xin[off[r] + pos];                             \
                    ext[(o + b) * Lv + pos] = a;                                            \
                }                                                                           \
        }                                                                                   \
    }                                                                                       \
    /* dw[o][r] += sum over pos of dy[o][pos] * xin[off[r] + pos]; blocks of 2 channels by  \
     * 4 taps, out-of-range ones duplicated and dropped */                                  \
    ATTR static void direct_bw_w_##SFX##_##ISA(const T *xin, const int64_t *off, int64_t K,   \
                                             const T *dy, int64_t Og, int64_t Lv, T *dw)    \
    {                                                                                       \
        for (int64_t o = 0; o < Og; o += 2)                                                 \
            for (int64_t r = 0; r < K; r += 4) {                                            \
                const T *d0 = dy + o * Lv, *d1 = dy + (o + 1 < Og ? o + 1 : o) * Lv;        \
                const T *x[4];                                                              \
                for (int k = 0; k < 4; k++)                                                 \
                    x[k] = xin + off[r + k < K ? r + k : r];                                \
                vec_##SFX acc[8] = {{0}};                                                   \
                int64_t pos = 0;                                                            \
                for (; pos + LANES <= Lv; pos += LANES) {                                   \
                    vec_##SFX g0, g1;                                                       \
                    VLOAD(g0, d0 + pos);                                                    \
                    VLOAD(g1, d1 + pos);                                                    \
                    for (int k = 0; k < 4; k++) {                                           \
                        vec_##SFX xv;                                                       \
                        VLOAD(xv, x[k] + pos);                                              \
                        acc[k] += g0 * xv;                                                  \
                        acc[4 + k] += g1 * xv;                                              \
                    }                                                                       \
                }                                                                           \
                T sum[8];                                                                   \
                for (int k = 0; k < 8; k++)                                                 \
                    sum[k] = vsum_##SFX(&acc[k]);                                           \
                for (; pos < Lv; pos++)                                                     \
                    for (int k = 0; k < 4; k++) {                                           \
                        sum[k] += d0[pos] * x[k][pos];                                      \
                        sum[4 + k] += d1[pos] * x[k][pos];                                  \
                    }                                                                       \
                for (int b = 0; b < 2 && o + b < Og; b++)                                   \
                    for (int k = 0; k < 4 && r + k < K; k++)                                \
                        dw[(o + b) * K + r + k] += sum[b * 4 + k];                          \
            }                                                                               \
    }                                                                                       \
    /* dxin[c][q] = sum over the taps t of channel c and over o of                         \
     * w[o][c, t] * dyp[o][M + q - offt[t]]: the correlation with the flipped kernel, so     \
     * every element is written once and no two vectors overlap. dyp rows hold M zeros, the  \
     * gradient and zeros up to Lp = M + Q, so all reads stay inside them; four vectors of q \
     * per pass, through row (Q >= plane elements, a multiple of 4 vectors). */             \
    ATTR static void direct_bw_in_##SFX##_##ISA(T *dxin, const int64_t *offt, int64_t taps,   \
                                              int64_t Cg, const T *w, int64_t K,            \
                                              const T *dyp, int64_t Og, int64_t Lp,         \
                                              int64_t M, int64_t plane, T *row, int64_t Q)  \
    {                                                                                       \
        for (int64_t c = 0; c < Cg; c++) {                                                  \
            for (int64_t q = 0; q < Q; q += 4 * LANES) {                                    \
                vec_##SFX a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                           \
                for (int64_t t = 0; t < taps; t++) {                                        \
                    const T *base = dyp + M + q - offt[t];                                  \
                    const T *wc = w + c * taps + t;                                         \
                    for (int64_t o = 0; o < Og; o++) {                                      \
                        const T wv = wc[o * K];                                             \
                        const T *bp = base + o * Lp;                                        \
                        vec_##SFX v0, v1, v2, v3;                                           \
                        VLOAD(v0, bp);                                                      \
                        VLOAD(v1, bp + LANES);                                              \
                        VLOAD(v2, bp + 2 * LANES);                                          \
                        VLOAD(v3, bp + 3 * LANES);                                          \
                        a0 += wv * v0;                                                      \
                        a1 += wv * v1;                                                      \
                        a2 += wv * v2;                                                      \
                        a3 += wv * v3;                                                      \
                    }                                                                       \
                }                                                                           \
                memcpy(row + q, &a0, sizeof a0);                                            \
                memcpy(row + q + LANES, &a1, sizeof a1);                                    \
                memcpy(row + q + 2 * LANES, &a2, sizeof a2);                                \
                memcpy(row + q + 3 * LANES, &a3, sizeof a3);                                \
            }                                                                               \
            memcpy(dxin + c * plane, row, (size_t)plane * sizeof(T));                       \
        }                                                                                   \
    }
DEF_VEC(f32, float, 8)
DEF_VEC(f64, double, 4)
DEF_DIRECT(f32, float, 8, base, )
DEF_DIRECT(f64, double, 4, base, )
#if NBC_HAVE_V3
DEF_DIRECT(f32, float, 8, v3, NBC_V3)
DEF_DIRECT(f64, double, 4, v3, NBC_V3)
#endif

/* Tap offsets into the Cg (padded) planes, and the position count Lv. */
static int64_t direct_taps(const geom *g, const span *sp, int64_t *off)
{
    for (int64_t c = 0, r = 0; c < g->Cg; c++)
        for (int64_t ki = 0; ki < g->kh; ki++)
            for (int64_t kj = 0; kj < g->kw; kj++, r++)
                off[r] = c * sp->plane + ki * g->dh * sp->Wp + kj * g->dw;
    return (g->OH - 1) * sp->Wp + g->OW;
}

/* dy rows of image n, group grp, into (Og, Lv) rows with row stride Wp; the ow >= OW columns
 * keep the zeros the caller wrote once. */
static void direct_grad(const geom *g, const span *sp, const char *dy, int64_t n, int64_t grp,
                        char *dyv, int64_t Lv, size_t es)
{
    for (int64_t o = 0; o < g->Og; o++)
        for (int64_t oh = 0; oh < g->OH; oh++)
            memcpy(dyv + (size_t)(o * Lv + oh * sp->Wp) * es,
                   dy + (size_t)(((n * g->O + grp * g->Og + o) * g->OH + oh) * g->OW) * es,
                   (size_t)g->OW * es);
}

static nb_status direct_forward(nb_dtype dt, const geom *g, const char *x, const char *w,
                                char *y)
{
    const size_t es = nbc_dtype_size(dt);
    const span sp = span_of(g);
    int64_t off[NBC_DIRECT_MAX_K];
    const int64_t Lv = direct_taps(g, &sp, off);
    char *ext = nbc_scratch(S_PERM, (size_t)(g->Og * Lv) * es);
    char *pad = sp.padded ? nbc_scratch(S_IN2, (size_t)(g->Cg * sp.plane) * es) : NULL;
    if (!ext || (sp.padded && !pad))
        return NB_OUT_OF_MEMORY;
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t grp = 0; grp < g->G; grp++) {
            const char *xin = span_input(g, &sp, x, n, grp, pad, es);
            const char *wg = w + (size_t)(grp * g->Og * g->K) * es;
            if (dt == NB_DTYPE_F32)
                NBC_PICK(direct_fwd_f32)((const float *)xin, off, g->K, (const float *)wg, g->Og,
                               (float *)ext, Lv);
            else
                NBC_PICK(direct_fwd_f64)((const double *)xin, off, g->K, (const double *)wg, g->Og,
                               (double *)ext, Lv);
            for (int64_t o = 0; o < g->Og; o++)
                for (int64_t oh = 0; oh < g->OH; oh++)
                    memcpy(y + (size_t)(((n * g->O + grp * g->Og + o) * g->OH + oh) * g->OW) * es,
                           ext + (size_t)(o * Lv + oh * sp.Wp) * es, (size_t)g->OW * es);
        }
    return NB_OK;
}

/* Writes every element of dx. */
static nb_status direct_backward_input(nb_dtype dt, const geom *g, const char *dy,
                                       const char *w, char *dx)
{
    const size_t es = nbc_dtype_size(dt);
    const span sp = span_of(g);
    const int64_t taps = g->kh * g->kw, lanes = 32 / (int64_t)es;
    int64_t off[NBC_DIRECT_MAX_K];
    const int64_t Lv = direct_taps(g, &sp, off);
    /* offsets within a plane are those of channel 0's taps; the largest is the margin */
    const int64_t M = off[taps - 1], Q = (sp.plane + 4 * lanes - 1) / (4 * lanes) * 4 * lanes;
    const int64_t Lp = M + Q;
    char *dyp = nbc_scratch(S_PERM, (size_t)(g->Og * Lp) * es);
    char *row = nbc_scratch(S_COL, (size_t)Q * es);
    char *pad = sp.padded ? nbc_scratch(S_IN2, (size_t)(g->Cg * sp.plane) * es) : NULL;
    if (!dyp || !row || (sp.padded && !pad))
        return NB_OUT_OF_MEMORY;
    (void)Lv;
    memset(dyp, 0, (size_t)(g->Og * Lp) * es);
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t grp = 0; grp < g->G; grp++) {
            direct_grad(g, &sp, dy, n, grp, dyp + (size_t)M * es, Lp, es);
            char *dxn = dx + (size_t)((n * g->C + grp * g->Cg) * g->H * g->W) * es;
            char *target = sp.padded ? pad : dxn;
            const char *wg = w + (size_t)(grp * g->Og * g->K) * es;
            if (dt == NB_DTYPE_F32)
                NBC_PICK(direct_bw_in_f32)((float *)target, off, taps, g->Cg, (const float *)wg, g->K,
                                 (const float *)dyp, g->Og, Lp, M, sp.plane, (float *)row, Q);
            else
                NBC_PICK(direct_bw_in_f64)((double *)target, off, taps, g->Cg, (const double *)wg, g->K,
                                 (const double *)dyp, g->Og, Lp, M, sp.plane, (double *)row, Q);
            if (sp.padded)
                for (int64_t c = 0; c < g->Cg; c++)
                    for (int64_t h = 0; h < g->H; h++)
                        memcpy(dxn + (size_t)((c * g->H + h) * g->W) * es,
                               pad + (size_t)((c * sp.Hp + h + g->ph) * sp.Wp + g->pw) * es,
                               (size_t)g->W * es);
        }
    return NB_OK;
}

static nb_status direct_backward_weight(nb_dtype dt, const geom *g, const char *dy,
                                        const char *x, char *dw)
{
    const size_t es = nbc_dtype_size(dt);
    const span sp = span_of(g);
    int64_t off[NBC_DIRECT_MAX_K];
    const int64_t Lv = direct_taps(g, &sp, off);
    char *dyv = nbc_scratch(S_PERM, (size_t)(g->Og * Lv) * es);
    char *pad = sp.padded ? nbc_scratch(S_IN2, (size_t)(g->Cg * sp.plane) * es) : NULL;
    if (!dyv || (sp.padded && !pad))
        return NB_OUT_OF_MEMORY;
    memset(dyv, 0, (size_t)(g->Og * Lv) * es);
    memset(dw, 0, (size_t)(g->O * g->K) * es);
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t grp = 0; grp < g->G; grp++) {
            direct_grad(g, &sp, dy, n, grp, dyv, Lv, es);
            const char *xin = span_input(g, &sp, x, n, grp, pad, es);
            char *dwg = dw + (size_t)(grp * g->Og * g->K) * es;
            if (dt == NB_DTYPE_F32)
                NBC_PICK(direct_bw_w_f32)((const float *)xin, off, g->K, (const float *)dyv, g->Og, Lv,
                                (float *)dwg);
            else
                NBC_PICK(direct_bw_w_f64)((const double *)xin, off, g->K, (const double *)dyv, g->Og, Lv,
                                (double *)dwg);
        }
    return NB_OK;
}

/* The geometry of image n alone: x, y and dx pointers advance by one image per step. */
static geom one_image(const geom *g)
{
    geom g1 = *g;
    g1.N = 1;
    return g1;
}

/* in[0] x (N,C,H,W), in[1] w (O,C/G,kh,kw); out y (N,O,OH,OW). */
static nb_status k_conv2d(const nb_kernel_args *a)
{
    geom g;
    if (a->n_in < 2 || conv_geom("conv2d", a, &a->in[0], &a->in[1], a->out, &g) != NB_OK)
        return a->n_in < 2 ? NBC_ERR(NB_INVALID_ARGUMENT, "conv2d: needs x and w") : NB_SHAPE_MISMATCH;
    const nb_dtype dt = a->out->dtype;
    const size_t es = nbc_dtype_size(dt);
    const int64_t NP = g.N * g.P;
    if (NP == 0 || g.O == 0)
        return NB_OK;
    char *y = out_buffer(a->out, S_OUT);
    if (!y)
        return NB_OUT_OF_MEMORY;
    if (g.K == 0) {
        memset(y, 0, (size_t)(NP * g.O) * es);
        out_finish(a->out, y);
        return NB_OK;
    }
    const char *x = nbc_contiguous_in(&a->in[0], S_IN0);
    const char *w = nbc_contiguous_in(&a->in[1], S_IN1);
    const enum conv_path path = conv_path(&g);
    if (path == PATH_SPAN || path == PATH_DIRECT) {
        nb_status st = !x || !w              ? NB_OUT_OF_MEMORY
                       : path == PATH_DIRECT ? direct_forward(dt, &g, x, w, y)
                                             : span_forward(dt, &g, x, w, y);
        if (st == NB_OK)
            out_finish(a->out, y);
        return st;
    }
    const bool each = path == PATH_IMAGE;
    const geom g1 = one_image(&g);
    char *col = nbc_scratch(S_COL, (size_t)(g.K * (each ? g.P : NP)) * es);
    char *yp = each ? y : nbc_scratch(S_PERM, (size_t)(g.Og * NP) * es);
    if (!x || !w || !col || !yp)
        return NB_OUT_OF_MEMORY;
    if (each) {
        for (int64_t n = 0; n < g.N; n++) {
            const char *xn = x + (size_t)(n * g.C * g.H * g.W) * es;
            char *yn = y + (size_t)(n * g.O * g.P) * es;
            for (int64_t grp = 0; grp < g.G; grp++) {
                im2col(dt, &g1, xn, grp, col);
                gemm(dt, false, false, g.Og, g.P, g.K, w + (size_t)(grp * g.Og * g.K) * es, g.K,
                     col, g.P, 0, yn + (size_t)(grp * g.Og * g.P) * es, g.P);
            }
        }
    } else {
        for (int64_t grp = 0; grp < g.G; grp++) {
            im2col(dt, &g, x, grp, col);
            gemm(dt, false, false, g.Og, NP, g.K, w + (size_t)(grp * g.Og * g.K) * es, g.K, col,
                 NP, 0, yp, NP);
            from_group_major(&g, yp, grp, y, es);
        }
    }
    out_finish(a->out, y);
    return NB_OK;
}

/* in[0] grad y (N,O,OH,OW), in[1] w; out dx (N,C,H,W). */
static nb_status k_conv2d_backward_input(const nb_kernel_args *a)
{
    geom g;
    if (a->n_in < 2 || conv_geom("conv2d_backward_input", a, a->out, &a->in[1], &a->in[0], &g))
        return a->n_in < 2 ? NBC_ERR(NB_INVALID_ARGUMENT, "conv2d_backward_input: needs grad "
                                     "and w") : NB_SHAPE_MISMATCH;
    const nb_dtype dt = a->out->dtype;
    const size_t es = nbc_dtype_size(dt);
    const int64_t NP = g.N * g.P;
    char *dx = out_buffer(a->out, S_OUT);
    if (!dx)
        return NB_OUT_OF_MEMORY;
    memset(dx, 0, (size_t)nbc_numel(a->out) * es);
    if (NP > 0 && g.K > 0 && g.Og > 0) {
        const enum conv_path path = conv_path(&g);
        const bool each = path == PATH_IMAGE;
        const geom g1 = one_image(&g);
        const char *dy = nbc_contiguous_in(&a->in[0], S_IN0);
        const char *w = nbc_contiguous_in(&a->in[1], S_IN1);
        if (path == PATH_SPAN || path == PATH_DIRECT) {
            nb_status st = !dy || !w              ? NB_OUT_OF_MEMORY
                           : path == PATH_DIRECT ? direct_backward_input(dt, &g, dy, w, dx)
                                                 : span_backward_input(dt, &g, dy, w, dx);
            if (st == NB_OK)
                out_finish(a->out, dx);
            return st;
        }
        char *col = nbc_scratch(S_COL, (size_t)(g.K * (each ? g.P : NP)) * es);
        char *dyp = each ? (char *)dy : nbc_scratch(S_PERM, (size_t)(g.Og * NP) * es);
        if (!dy || !w || !col || !dyp)
            return NB_OUT_OF_MEMORY;
        for (int64_t n = 0; n < (each ? g.N : 1); n++) {
            for (int64_t grp = 0; grp < g.G; grp++) {
                const char *wg = w + (size_t)(grp * g.Og * g.K) * es;
                /* dcol (K, P) = W_g^T (K, Og) @ dy_g (Og, P) */
                if (each) {
                    gemm(dt, true, false, g.K, g.P, g.Og, wg, g.K,
                         dy + (size_t)((n * g.O + grp * g.Og) * g.P) * es, g.P, 0, col, g.P);
                    col2im(dt, &g1, col, grp, dx + (size_t)(n * g.C * g.H * g.W) * es);
                } else {
                    to_group_major(&g, dy, grp, dyp, es);
                    gemm(dt, true, false, g.K, NP, g.Og, wg, g.K, dyp, NP, 0, col, NP);
                    col2im(dt, &g, col, grp, dx);
                }
            }
        }
    }
    out_finish(a->out, dx);
    return NB_OK;
}

/* in[0] grad y (N,O,OH,OW), in[1] x; out dw (O,C/G,kh,kw). */
static nb_status k_conv2d_backward_weight(const nb_kernel_args *a)
{
    geom g;
    if (a->n_in < 2 || conv_geom("conv2d_backward_weight", a, &a->in[1], a->out, &a->in[0], &g))
        return a->n_in < 2 ? NBC_ERR(NB_INVALID_ARGUMENT, "conv2d_backward_weight: needs grad "
                                     "and x") : NB_SHAPE_MISMATCH;
    const nb_dtype dt = a->out->dtype;
    const size_t es = nbc_dtype_size(dt);
    const int64_t NP = g.N * g.P;
    char *dw = out_buffer(a->out, S_OUT);
    if (!dw)
        return NB_OUT_OF_MEMORY;
    if (NP == 0) {
        memset(dw, 0, (size_t)nbc_numel(a->out) * es);
    } else if (g.K > 0 && g.Og > 0) {
        const enum conv_path path = conv_path(&g);
        const bool each = path == PATH_IMAGE;
        const geom g1 = one_image(&g);
        const char *dy = nbc_contiguous_in(&a->in[0], S_IN0);
        const char *x = nbc_contiguous_in(&a->in[1], S_IN1);
        if (path == PATH_SPAN || path == PATH_DIRECT) {
            nb_status st = !dy || !x              ? NB_OUT_OF_MEMORY
                           : path == PATH_DIRECT ? direct_backward_weight(dt, &g, dy, x, dw)
                                                 : span_backward_weight(dt, &g, dy, x, dw);
            if (st == NB_OK)
                out_finish(a->out, dw);
            return st;
        }
        char *col = nbc_scratch(S_COL, (size_t)(g.K * (each ? g.P : NP)) * es);
        char *dyp = each ? (char *)dy : nbc_scratch(S_PERM, (size_t)(g.Og * NP) * es);
        if (!dy || !x || !col || !dyp)
            return NB_OUT_OF_MEMORY;
        for (int64_t n = 0; n < (each ? g.N : 1); n++) {
            for (int64_t grp = 0; grp < g.G; grp++) {
                char *dwg = dw + (size_t)(grp * g.Og * g.K) * es;
                /* dW_g (Og, K) (+)= dy_g (Og, P) @ col^T (P, K), summed over images */
                if (each) {
                    im2col(dt, &g1, x + (size_t)(n * g.C * g.H * g.W) * es, grp, col);
                    gemm(dt, false, true, g.Og, g.K, g.P,
                         dy + (size_t)((n * g.O + grp * g.Og) * g.P) * es, g.P, col, g.P,
                         n == 0 ? 0 : 1, dwg, g.K);
                } else {
                    im2col(dt, &g, x, grp, col);
                    to_group_major(&g, dy, grp, dyp, es);
                    gemm(dt, false, true, g.Og, g.K, NP, dyp, NP, col, NP, 0, dwg, g.K);
                }
            }
        }
    }
    out_finish(a->out, dw);
    return NB_OK;
}

const nb_kernel_desc nbc_conv_kernels[] = {
    {"conv2d", NB_DTYPE_F32, k_conv2d},
    {"conv2d_backward_input", NB_DTYPE_F32, k_conv2d_backward_input},
    {"conv2d_backward_weight", NB_DTYPE_F32, k_conv2d_backward_weight},
    {"conv2d", NB_DTYPE_F64, k_conv2d},
    {"conv2d_backward_input", NB_DTYPE_F64, k_conv2d_backward_input},
    {"conv2d_backward_weight", NB_DTYPE_F64, k_conv2d_backward_weight},
};
const size_t nbc_conv_count = sizeof nbc_conv_kernels / sizeof nbc_conv_kernels[0];
