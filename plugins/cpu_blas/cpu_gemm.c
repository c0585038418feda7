/* cpu_gemm.c - the plugin's own single-precision GEMM for CPUs with AVX-512 (cblas_sgemm's
 * row-major contract), GotoBLAS/BLIS style: packed panels of A and B, a 6x64 register tile.
 * NABLA_CPU_GEMM=blas|own|auto picks who multiplies float32 matrices (read at plugin open):
 *   blas  every sgemm goes to the BLAS library;
 *   own   every row-major sgemm goes here (falling back to the library where the CPU or the OS
 *         lacks AVX-512, or when the packing buffers cannot be allocated);
 *   auto  the shapes measured faster here than in the library (nbc_gemm_wins).
 * The default is auto (NBC_GEMM_DEFAULT, cpu_internal.h, says why). */
#include "cpu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define NBC_HAVE_AVX512_GEMM 1
#include <immintrin.h>
#define NBC_AVX512 __attribute__((target("avx512f,fma")))
#else
#define NBC_HAVE_AVX512_GEMM 0
#endif

/* The register tile: MR rows of C by NR = NV zmm columns. 6 x 64: 24 accumulators, four B
 * vectors and one broadcast A value hold 29 of the 32 zmm registers, and each k step loads 4
 * vectors and 6 scalars for 24 FMAs. 12x32, 14x32 and 8x48 measured 5-10% slower here. */
#ifndef NBC_GEMM_MR
#define NBC_GEMM_MR 6
#define NBC_GEMM_NV 4
#endif
enum { MR = NBC_GEMM_MR, NV = NBC_GEMM_NV, NR = 16 * NV };

nbc_gemm_mode nbc_gemm = NBC_GEMM_BLAS;
static char gemm_note[256];
static int64_t KC = 256, NC = 512, MC = 2040; /* recomputed from the caches at open */

/* Blocking from the cache sizes the C library reports (cpuid leaf 4 on x86), never from the
 * CPU model: a B micro-panel (KC x NR) streams from L2 while an A micro-panel (MR x KC) stays
 * in a quarter of L1; a packed block of B (KC x NC) fills half of L2; a block of A (MC x KC) is
 * packed once per KC step, so only its buffer size bounds MC. */
static void choose_blocking(void)
{
    long l1 = -1, l2 = -1;
#ifdef _SC_LEVEL1_DCACHE_SIZE
    l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (l1 < 16 * 1024 || l1 > 4 * 1024 * 1024)
        l1 = 32 * 1024;
    if (l2 < 128 * 1024 || l2 > 64 * 1024 * 1024)
        l2 = 1024 * 1024;
    int64_t kc = (int64_t)(l1 / 4) / (MR * (int64_t)sizeof(float));
    kc = kc / 16 * 16;
    KC = kc < 64 ? 64 : kc > 1024 ? 1024 : kc;
    int64_t nc = (int64_t)(l2 / 2) / (KC * (int64_t)sizeof(float));
    nc = nc / NR * NR;
    NC = nc < NR ? NR : nc > 4096 ? 4096 : nc;
    MC = 2040; /* 170 row panels, so that B is packed once up to M = 2040; 4 MiB at KC 512 */
}

/* C = beta * C where the product is empty (K == 0) or vanishes (alpha == 0), as BLAS does. */
static void scale_c(float *c, int64_t ldc, int64_t m, int64_t n, float beta)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            c[i * ldc + j] = beta == 0 ? 0.0f : beta * c[i * ldc + j];
}

/* ---- the micro-kernel ---- */
#if NBC_HAVE_AVX512_GEMM
/* C[0:m, 0:n] = alpha * A~ B~ + beta * C, A~ an MR x kc panel (k-major: MR values per k), B~ a
 * kc x NR panel (NR values per k), both zero-padded past m and n. beta == 0 never reads C (a
 * NaN there must not leak through, as in BLAS). */
NBC_AVX512 static void kernel_tile(int64_t kc, const float *restrict a, const float *restrict b,
                                   float *c, int64_t ldc, int m, int n, float alpha, float beta)
{
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_setzero_ps();
    /* The tile of C is wanted after the k loop; ask for it now, as its rows lie ldc apart. */
    for (int i = 0; i < m; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm_prefetch((const char *)(c + i * ldc + 16 * v), _MM_HINT_T0);
    /* B~ streams from L2 front to back, which the hardware prefetcher follows: software
     * prefetches 4, 8 or 16 steps ahead measured 2-4% slower */
#pragma GCC unroll 2
    for (int64_t p = 0; p < kc; p++) {
        __m512 bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            const __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
        a += MR;
        b += NR;
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 km[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        const int left = n - 16 * v;
        km[v] = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        if (i >= m)
            break;
        float *r = c + i * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 x = _mm512_mul_ps(acc[i][v], va);
            if (beta != 0)
                x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(km[v], r + 16 * v), x);
            _mm512_mask_storeu_ps(r + 16 * v, km[v], x);
        }
    }
}

/* ---- packing ---- */

/* One operand as the product sees it: element (r, c) of op(X) is p[r * rs + c * cs]. */
typedef struct view {
    const float *p;
    int64_t rs, cs;
} view;

#if NBC_HAVE_AVX512_GEMM && NBC_GEMM_MR == 6
/* pack_a for contiguous rows of op(A) (A not transposed), 16 k steps at a time: the six rows'
 * 16 values are six vectors, and the 96 values A~ wants next (six per k) are the same six
 * vectors transposed. Output vector j takes lane l from row (16 j + l) % 6 at k (16 j + l) / 6:
 * three two-row permutes (rows 0-1, 2-3, 4-5, one index vector) and two blends make it. The
 * scalar loop it replaces wrote one value per store, a third of the time of the GEMM's
 * packing. */
NBC_AVX512 static void pack_a_rows6(float *restrict d, view a, int64_t i0, int m, int64_t p0,
                                    int64_t kc)
{
    __m512i idx[6];
    __mmask16 m23[6], m45[6];
    for (int j = 0; j < 6; j++) {
        int32_t ix[16];
        unsigned b23 = 0, b45 = 0;
        for (int l = 0; l < 16; l++) {
            const int e = 16 * j + l, row = e % 6;
            ix[l] = e / 6 + (row & 1 ? 16 : 0);
            b23 |= (unsigned)(row == 2 || row == 3) << l;
            b45 |= (unsigned)(row == 4 || row == 5) << l;
        }
        idx[j] = _mm512_loadu_si512(ix);
        m23[j] = (__mmask16)b23;
        m45[j] = (__mmask16)b45;
    }
    const float *s[6];
    for (int i = 0; i < 6; i++)
        s[i] = a.p + (i0 + (i < m ? i : 0)) * a.rs + p0;
    for (int64_t p = 0; p < kc; p += 16, d += 96) {
        const int64_t left = kc - p;
        const __mmask16 kl = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        __m512 r[6];
        for (int i = 0; i < 6; i++)
            r[i] = i < m ? _mm512_maskz_loadu_ps(kl, s[i] + p) : _mm512_setzero_ps();
        const int64_t vals = (left >= 16 ? 16 : left) * 6;
#pragma GCC unroll 6
        for (int j = 0; j < 6; j++) {
            const __m512 p01 = _mm512_permutex2var_ps(r[0], idx[j], r[1]);
            const __m512 p23 = _mm512_permutex2var_ps(r[2], idx[j], r[3]);
            const __m512 p45 = _mm512_permutex2var_ps(r[4], idx[j], r[5]);
            const __m512 o = _mm512_mask_blend_ps(m45[j], _mm512_mask_blend_ps(m23[j], p01, p23), p45);
            const int64_t in_j = vals - 16 * j;
            if (in_j >= 16)
                _mm512_storeu_ps(d + 16 * j, o);
            else if (in_j > 0)
                _mm512_mask_storeu_ps(d + 16 * j, (__mmask16)((1u << in_j) - 1), o);
        }
    }
}
#endif

/* A~ for rows [i0, i0 + m) and k [p0, p0 + kc) of op(A): MR values per k, zeros past m. */
static void pack_a(float *restrict d, view a, int64_t i0, int m, int64_t p0, int64_t kc)
{
#if NBC_HAVE_AVX512_GEMM && NBC_GEMM_MR == 6
    if (a.cs == 1) {
        pack_a_rows6(d, a, i0, m, p0, kc);
        return;
    }
#endif
    if (a.cs == 1) { /* rows of op(A) are contiguous: read along k, write with stride MR */
        for (int i = 0; i < m; i++) {
            const float *s = a.p + (i0 + i) * a.rs + p0;
            for (int64_t p = 0; p < kc; p++)
                d[p * MR + i] = s[p];
        }
    } else { /* columns are: each k step is one contiguous run of m values */
        for (int64_t p = 0; p < kc; p++) {
            const float *s = a.p + (p0 + p) * a.cs + i0 * a.rs;
            for (int i = 0; i < m; i++)
                d[p * MR + i] = s[i * a.rs];
        }
    }
    for (int i = m; i < MR; i++)
        for (int64_t p = 0; p < kc; p++)
            d[p * MR + i] = 0;
}

/* B~ for k [p0, p0 + kc) and columns [j0, j0 + n) of op(B): NR values per k, zeros past n. */
static void pack_b(float *restrict d, view b, int64_t p0, int64_t kc, int64_t j0, int n)
{
    for (int j = 0; j < n; j++) {
        const float *s = b.p + (j0 + j) * b.cs + p0 * b.rs;
        for (int64_t p = 0; p < kc; p++)
            d[p * NR + j] = s[p * b.rs];
    }
    for (int64_t p = 0; p < kc; p++)
        for (int j = n; j < NR; j++)
            d[p * NR + j] = 0;
}

#if NBC_HAVE_AVX512_GEMM
/* All the B~ panels of a KC x nc block whose rows are contiguous (op(B) = B): each row of B is
 * read once, front to back, and dealt out NR values to a panel (the panels are kc * NR apart);
 * the last panel's tail is zeroed by the masked load. */
NBC_AVX512 static void pack_b_rows(float *restrict d, view b, int64_t p0, int64_t kc, int64_t j0,
                                   int64_t nc)
{
    const int64_t full = nc / NR, rest = nc - full * NR;
    __mmask16 km[NV];
    for (int v = 0; v < NV; v++) {
        const int64_t left = rest - 16 * v;
        km[v] = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
    for (int64_t p = 0; p < kc; p++) {
        const float *s = b.p + (p0 + p) * b.rs + j0;
        float *o = d + p * NR;
        for (int64_t q = 0; q < full; q++, s += NR, o += kc * NR)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                _mm512_store_ps(o + 16 * v, _mm512_loadu_ps(s + 16 * v));
        if (rest)
            for (int v = 0; v < NV; v++)
                _mm512_store_ps(o + 16 * v, _mm512_maskz_loadu_ps(km[v], s + 16 * v));
    }
}
#endif

static int64_t min64(int64_t x, int64_t y) { return x < y ? x : y; }

/* The block for n split into equal parts of at most max (a multiple of unit), rounded up to
 * unit: 1024 rows in blocks of at most 1020 are two of 516, not 1020 and a 4-row remainder
 * that would pack all of B again for 4 rows. */
static int64_t even_block(int64_t n, int64_t max, int64_t unit)
{
    max = max < unit ? unit : max / unit * unit;
    const int64_t parts = (n + max - 1) / max, b = (n + parts - 1) / parts;
    return min64((b + unit - 1) / unit * unit, max);
}


/* The loops around the kernel on one thread: A~ for the MC rows at ic is packed once per KC
 * step, B~ once per (KC, NC) block (all of B once while M <= MC). False, with nothing written,
 * when the panels cannot be allocated. */
static bool gemm_blocked(view a, view b, float *c, int64_t ldc, int64_t M, int64_t N, int64_t K,
                         float alpha, float beta)
{
    const int64_t KCb = even_block(K, KC, 1), MCb = even_block(M, MC, MR),
                  NCb = even_block(N, NC, NR);
    float *pa = nbc_scratch(NBC_SCRATCH_GEMM, (size_t)(MCb * KCb) * sizeof(float));
    float *pb = pa ? nbc_scratch(NBC_SCRATCH_GEMM + 1, (size_t)(NCb * KCb) * sizeof(float)) : NULL;
    if (!pb)
        return false;
    for (int64_t ic = 0; ic < M; ic += MCb) {
        const int64_t mc = min64(MCb, M - ic);
        for (int64_t pc = 0; pc < K; pc += KCb) {
            const int64_t kc = min64(KCb, K - pc);
            const float bt = pc == 0 ? beta : 1.0f;
            for (int64_t ir = 0; ir < mc; ir += MR)
                pack_a(pa + ir * kc, a, ic + ir, (int)min64(MR, mc - ir), pc, kc);
            for (int64_t jc = 0; jc < N; jc += NCb) {
                const int64_t nc = min64(NCb, N - jc);
                if (b.cs == 1)
                    pack_b_rows(pb, b, pc, kc, jc, nc);
                else
                    for (int64_t jr = 0; jr < nc; jr += NR)
                        pack_b(pb + jr * kc, b, pc, kc, jc + jr, (int)min64(NR, nc - jr));
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    const int m = (int)min64(MR, mc - ir);
                    for (int64_t jr = 0; jr < nc; jr += NR)
                        kernel_tile(kc, pa + ir * kc, pb + jr * kc, c + (ic + ir) * ldc + jc + jr,
                                    ldc, m, (int)min64(NR, nc - jr), alpha, bt);
                }
            }
        }
    }
    return true;
}
#endif

/* Work below this many multiply-adds stays on one thread. */
#define GEMM_PARALLEL_MIN (1 << 21)

void nbc_own_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                   const enum CBLAS_TRANSPOSE tb, const blasint M, const blasint N,
                   const blasint K, const float alpha, const float *A, const blasint lda,
                   const float *B, const blasint ldb, const float beta, float *C,
                   const blasint ldc)
{
    const bool at = ta != CblasNoTrans, bt = tb != CblasNoTrans;
    /* Anything the library would refuse (and report) or that this code does not take goes to
     * the library unchanged. */
    const bool ok = order == CblasRowMajor && M >= 0 && N >= 0 && K >= 0 &&
                    lda >= (at ? (M > 1 ? M : 1) : (K > 1 ? K : 1)) &&
                    ldb >= (bt ? (K > 1 ? K : 1) : (N > 1 ? N : 1)) && ldc >= (N > 1 ? N : 1);
    if (!ok || !nbc_gemm_available()) {
        nbc_blas.sgemm_lib(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (M == 0 || N == 0)
        return;
    if (K == 0 || alpha == 0) {
        scale_c(C, ldc, M, N, beta);
        return;
    }
#if NBC_HAVE_AVX512_GEMM
    const view a = at ? (view){A, 1, lda} : (view){A, lda, 1};
    const view b = bt ? (view){B, 1, ldb} : (view){B, ldb, 1};
    int nt = nbc_max_threads();
    if ((double)M * N * K < GEMM_PARALLEL_MIN)
        nt = 1;
    if (nt > M / MR)
        nt = (int)(M / MR) > 1 ? (int)(M / MR) : 1;
    if (nt == 1) {
        if (!gemm_blocked(a, b, C, ldc, M, N, K, alpha, beta))
            nbc_blas.sgemm_lib(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* Threads take bands of rows of C and run the one-thread loops on them, each with its own
     * panels (B is packed once per thread): no barrier inside, so a thread the OS preempts
     * holds up no other. A shared B~ with barriers between packing and kernels measured 3x
     * slower than one thread on this 2-core machine under load. */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        const int64_t panels = (M + MR - 1) / MR;
        const int64_t i0 = panels * t / T * MR, i1 = min64(panels * (t + 1) / T * MR, M);
        if (i1 > i0) {
            const view at_rows = {a.p + i0 * a.rs, a.rs, a.cs};
            if (!gemm_blocked(at_rows, b, C + i0 * ldc, ldc, i1 - i0, N, K, alpha, beta))
                nbc_blas.sgemm_lib(order, ta, tb, (blasint)(i1 - i0), N, K, alpha,
                                   at ? A + i0 : A + i0 * lda, lda, B, ldb, beta, C + i0 * ldc,
                                   ldc);
        }
    }
#endif
#endif
}

bool nbc_gemm_available(void)
{
#if NBC_HAVE_AVX512_GEMM
    /* nbc_isa_level has cpuid's AVX-512 F/CD/BW/DQ/VL and the OS saving the zmm state
     * (XCR0), capped by NABLA_CPU_ISA. */
    return nbc_isa_level >= NBC_ISA_AVX512;
#else
    return false;
#endif
}

/* Where the own GEMM was measured faster than OpenBLAS's SkylakeX sgemm (NOTE-gemm.md): one
 * thread, large enough that the packing is paid back. */
bool nbc_gemm_wins(blasint M, blasint N, blasint K)
{
    return nbc_max_threads() == 1 && M >= NBC_GEMM_AUTO_MIN && N >= NBC_GEMM_AUTO_MIN &&
           K >= NBC_GEMM_AUTO_MIN;
}

/* nbc_blas.sgemm under NABLA_CPU_GEMM=auto: the own GEMM where it wins, else the library. */
static void auto_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                       const enum CBLAS_TRANSPOSE tb, const blasint M, const blasint N,
                       const blasint K, const float alpha, const float *A, const blasint lda,
                       const float *B, const blasint ldb, const float beta, float *C,
                       const blasint ldc)
{
    if (order == CblasRowMajor && nbc_gemm_wins(M, N, K))
        nbc_own_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        nbc_blas.sgemm_lib(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void nbc_gemm_open(void)
{
    nbc_blas.sgemm = nbc_blas.sgemm_lib;
    choose_blocking();
    const char *env = getenv("NABLA_CPU_GEMM");
    char how[96]; /* where the mode came from */
    nbc_gemm = NBC_GEMM_DEFAULT;
    snprintf(how, sizeof how, "default");
    if (env && *env) {
        static const char *const names[] = {"blas", "own", "auto"};
        int k = 0;
        while (k < 3 && strcasecmp(env, names[k]) != 0)
            k++;
        if (k < 3) {
            nbc_gemm = (nbc_gemm_mode)k;
            snprintf(how, sizeof how, "NABLA_CPU_GEMM=%s", names[k]);
        } else {
            snprintf(how, sizeof how, "NABLA_CPU_GEMM='%.24s' ignored: expected blas, own or auto",
                     env);
        }
    }
    if (nbc_gemm != NBC_GEMM_BLAS && !nbc_gemm_available()) {
        snprintf(gemm_note, sizeof gemm_note,
                 "the BLAS library's (%s; the own GEMM needs AVX-512, which %s)", how,
                 nbc_isa_level < NBC_ISA_AVX512 && getenv("NABLA_CPU_ISA") ? "NABLA_CPU_ISA caps off"
                                                                         : "this CPU or OS lacks");
        nbc_gemm = NBC_GEMM_BLAS;
        return;
    }
    switch (nbc_gemm) {
    case NBC_GEMM_BLAS:
        snprintf(gemm_note, sizeof gemm_note, "the BLAS library's (%s)", how);
        break;
    case NBC_GEMM_OWN:
        nbc_blas.sgemm = nbc_own_sgemm;
        snprintf(gemm_note, sizeof gemm_note, "own AVX-512 %dx%d for every product (%s; blocks "
                 "KC %lld, NC %lld, MC %lld)", MR, NR, how, (long long)KC, (long long)NC,
                 (long long)MC);
        break;
    case NBC_GEMM_AUTO:
        nbc_blas.sgemm = auto_sgemm;
        snprintf(gemm_note, sizeof gemm_note, "own AVX-512 %dx%d on one thread for M, N, K >= %d, "
                 "else the BLAS library's (%s)", MR, NR, NBC_GEMM_AUTO_MIN, how);
        break;
    }
}

const char *nbc_gemm_describe(void) { return gemm_note; }
