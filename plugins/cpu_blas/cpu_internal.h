/* cpu_internal.h - what the files of the cpu_blas plugin share: the host table, the one strided
 * N-d iterator every elementwise kernel runs on, per-thread scratch memory, dtype conversions
 * and the per-file kernel tables that cpu_plugin.c joins. */
#ifndef NBC_INTERNAL_H
#define NBC_INTERNAL_H

#include "nabla_plugin.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

extern const nb_host *nbc_host;

/* Reports through the host when there is one (the plugin tests provide one too). */
#define NBC_ERR(status, ...)                                                                \
    (nbc_host && nbc_host->error ? nbc_host->error((status), __VA_ARGS__) : (status))

/* Elementwise work below this many elements stays on the calling thread. */
#define NBC_PARALLEL_MIN 32768

/* ---- dtypes ----
 * X(suffix, C type, enum, kind): kind is d for float types and i for integer ones, and picks
 * how a value converts to another dtype (nbc_fromd_* or nbc_fromi_*). bool is one byte, 0 or 1. */
#define NBC_ALL_DTYPES(X)                                                                   \
    X(f32, float, NB_DTYPE_F32, d)                                                          \
    X(f64, double, NB_DTYPE_F64, d)                                                         \
    X(i32, int32_t, NB_DTYPE_I32, i)                                                        \
    X(i64, int64_t, NB_DTYPE_I64, i)                                                        \
    X(u8, uint8_t, NB_DTYPE_U8, i)                                                          \
    X(b8, uint8_t, NB_DTYPE_BOOL, i)

/* Float to integer follows the SDK's rule (nb_float_to_int64: NaN and out-of-range give
 * INT64_MIN, narrower targets wrap), so no conversion is undefined behaviour. */
static inline int64_t nbc_fromd_i64(double x) { return nb_float_to_int64(x); }
static inline float nbc_fromd_f32(double x) { return (float)x; }
static inline double nbc_fromd_f64(double x) { return x; }
static inline int32_t nbc_fromd_i32(double x)
{
    return (int32_t)(uint32_t)(uint64_t)nbc_fromd_i64(x);
}
static inline uint8_t nbc_fromd_u8(double x) { return (uint8_t)(uint64_t)nbc_fromd_i64(x); }
static inline uint8_t nbc_fromd_b8(double x) { return x != 0; }
static inline float nbc_fromi_f32(int64_t x) { return (float)x; }
static inline double nbc_fromi_f64(int64_t x) { return (double)x; }
static inline int32_t nbc_fromi_i32(int64_t x) { return (int32_t)x; }
static inline int64_t nbc_fromi_i64(int64_t x) { return x; }
static inline uint8_t nbc_fromi_u8(int64_t x) { return (uint8_t)x; }
static inline uint8_t nbc_fromi_b8(int64_t x) { return x != 0; }
/* A bool byte is true when any bit is set (nb_from_data may hand in 0xFF or 2): it converts as
 * exactly 0 or 1, never as the raw byte (the SDK's rule). */
#define NBC_FROMB_(SFX, T, E, K)                                                            \
    static inline T nbc_fromb_##SFX(uint8_t x) { return nbc_fromi_##SFX(x != 0); }
NBC_ALL_DTYPES(NBC_FROMB_)

size_t nbc_dtype_size(nb_dtype dt);
const char *nbc_dtype_name(nb_dtype dt);

static inline char *nbc_ptr(const nb_operand *o) { return (char *)o->handle + o->offset; }

int64_t nbc_numel(const nb_operand *o);
/* True when o is laid out row-major without gaps. */
bool nbc_is_contiguous(const nb_operand *o);

/* ---- the strided iterator ----
 * A kernel describes up to NBC_MAX_OPS operands over one shape (byte strides, 0 = broadcast);
 * the iterator drops size-1 dims, merges dims that are contiguous for every operand, and calls
 * a row function for each run along the innermost remaining dim. Rows come in row-major order
 * of the shape; k0 is the linear (row-major) index of the row's first element. */
#define NBC_MAX_OPS 5

typedef void (*nbc_row_fn)(char **p, const int64_t *s, int64_t n, int64_t k0, const void *ctx);

typedef struct nbc_iter {
    int nops;
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    int64_t st[NBC_MAX_OPS][NB_MAX_DIMS]; /* byte strides */
    char *base[NBC_MAX_OPS];
} nbc_iter;

void nbc_iter_init(nbc_iter *it, int nops, int ndim, const int64_t *shape);
/* Operand k starts at base and moves by strides (in elements of esize bytes). */
void nbc_iter_operand(nbc_iter *it, int k, char *base, const int64_t *strides, size_t esize);
/* Runs fn over every element; parallel allows splitting the range over OpenMP threads, which
 * is only correct when no two elements write the same output. */
void nbc_iter_run(nbc_iter *it, nbc_row_fn fn, const void *ctx, bool parallel);

/* The two halves of nbc_iter_run, for kernels that split the work themselves. prepare drops
 * size-1 dims, merges dims contiguous for every operand (afterwards ndim >= 1) and returns the
 * element count (0 when a dim is empty); range visits linear elements [start, end). */
int64_t nbc_iter_prepare(nbc_iter *it);
void nbc_iter_range(const nbc_iter *it, nbc_row_fn fn, const void *ctx, int64_t start,
                    int64_t end);

/* The common case: out and args->in[0..n_in-1] over out's shape. */
nb_status nbc_ew(const nb_kernel_args *a, nbc_row_fn fn, const void *ctx);

/* ---- scratch ----
 * Grow-only buffers of the calling thread (slot 0..NBC_SCRATCH_SLOTS-1), 64-byte aligned, so a
 * training step reuses the same memory every iteration. NULL (after reporting) when out of
 * memory. */
/* slots 0-5 for the kernels, NBC_SCRATCH_HALF.. for cpu_half.c's float32 copies of operands */
#define NBC_SCRATCH_HALF 6
/* two slots after cpu_half.c's for cpu_gemm.c's packed panels */
#define NBC_SCRATCH_GEMM (NBC_SCRATCH_HALF + NBC_MAX_OPS + 3)
#define NBC_SCRATCH_SLOTS (NBC_SCRATCH_GEMM + 2)
void *nbc_scratch(int slot, size_t bytes);
void nbc_scratch_release(void);

/* Copies src into a contiguous row-major buffer dst of the same dtype. */
void nbc_gather_contiguous(void *dst, const nb_operand *src);
/* Copies the contiguous row-major buffer src into the (maybe strided) operand dst. */
void nbc_scatter_contiguous(const nb_operand *dst, const void *src);
/* Returns o's data as a contiguous buffer: o's own memory when it already is, else a copy in
 * scratch slot `slot`. NULL when out of memory. */
void *nbc_contiguous_in(const nb_operand *o, int slot);

/* Threads available to an OpenMP region (1 without OpenMP). */
int nbc_max_threads(void);

/* ---- the machine (cpu_platform.c) ---- */

/* The widest ISA the plugin's own kernels may use: the CPU's (cpuid and the OS's saved
 * registers), capped by NABLA_CPU_ISA=baseline|avx2|avx512. */
typedef enum nbc_isa { NBC_ISA_BASELINE, NBC_ISA_AVX2, NBC_ISA_AVX512 } nbc_isa;
extern nbc_isa nbc_isa_level;

/* ISA clones: a hot loop is built twice, for the baseline and for x86-64-v3 (AVX2 + FMA), and
 * NBC_PICK(fn) takes fn_v3 or fn_base by nbc_isa_level (the CPU's features, never its model).
 * GCC only; not under ASan, whose checks the target attribute does not mix with. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define NBC_HAVE_V3 1
#define NBC_V3 __attribute__((target("arch=x86-64-v3")))
#define NBC_PICK(fn) (nbc_isa_level >= NBC_ISA_AVX2 ? fn##_v3 : fn##_base)
#else
#define NBC_HAVE_V3 0
#define NBC_PICK(fn) fn##_base
#endif

/* exp(x) in float32 written so that a loop of it vectorises (libm's expf does not): x = n ln2 + r
 * with |r| <= ln2 / 2, a degree-6 Taylor polynomial for exp(r) (relative error about 1e-7), and
 * 2^n as two exponent-bit factors so that n = 128 still fits. inf above 88.7228, NaN stays NaN;
 * results below 2^-126 (x < -87.33) are flushed to 0 instead of going subnormal. */
static inline float nbc_expf(float x)
{
    float xc = x < -87.33f ? -87.33f : x > 88.7228f ? 88.7228f : x;
    float t = xc * 1.44269504088896341f + 12582912.0f; /* + 1.5 * 2^23 rounds to an integer */
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    int32_t ni = (int32_t)(tb & 0x7fffff) - 0x400000; /* that integer, from the mantissa */
    float n = t - 12582912.0f;
    float r = xc - n * 0.693145751953125f; /* ln 2 in two parts, so that r is exact */
    r -= n * 1.42860682030941723212e-6f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n1 = ni / 2, b1 = (n1 + 127) << 23, b2 = (ni - n1 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    float y = p * s1 * s2;
    return x > 88.7228f ? INFINITY : x < -87.33f ? 0.0f : y;
}

/* The BLAS library, loaded at run time (so the plugin can choose its OpenBLAS core); the
 * openblas_* members are NULL for another BLAS. */
#include <cblas.h>
typedef struct nbc_blas_fns {
    /* what the plugin calls: the library's sgemm_lib, or cpu_gemm.c's (nbc_gemm_open) */
    __typeof__(cblas_sgemm) *sgemm;
    __typeof__(cblas_sgemm) *sgemm_lib; /* the library's own */
    __typeof__(cblas_dgemm) *dgemm;
    char *(*get_config)(void);
    char *(*get_corename)(void);
    int (*get_num_threads)(void);
    void (*thread_shutdown)(void);
    /* (optional) bfloat16 A and B, float32 C: OpenBLAS's when it exports it, else NULL, or
     * nbc_reference_sbgemm under NABLA_CPU_SBGEMM=reference (cpu_platform.c says why) */
    __typeof__(cblas_sbgemm) *sbgemm;
} nbc_blas_fns;
extern nbc_blas_fns nbc_blas;

nb_status nbc_platform_open(void);       /* at plugin entry: ISA level, BLAS library */
void nbc_platform_stop_threads(void);    /* at shutdown: joins OpenMP and BLAS workers */
void nbc_platform_describe(char *buf, size_t len); /* CPU model, ISA, BLAS and core, threads */
void nbc_platform_info(char *buf, size_t len);     /* the same, one "topic: value" line each */
/* cpu_matmul.c: a plain loop with cblas_sbgemm's signature (row-major only), the stand-in that
 * lets the tests run the sbgemm path where the library has none. */
__typeof__(cblas_sbgemm) nbc_reference_sbgemm;

/* ---- the own GEMM (cpu_gemm.c) ----
 * A packed-panel AVX-512 sgemm with cblas_sgemm's row-major contract. NABLA_CPU_GEMM=blas|own|
 * auto (read by nbc_gemm_open at plugin open, after the BLAS is loaded) decides what
 * nbc_blas.sgemm points to, so matmul and the convolutions' gemms follow it alike. */
/* in the order of NABLA_CPU_GEMM's names: blas, own, auto */
typedef enum nbc_gemm_mode { NBC_GEMM_BLAS, NBC_GEMM_OWN, NBC_GEMM_AUTO } nbc_gemm_mode;
extern nbc_gemm_mode nbc_gemm; /* the mode in use (BLAS where the CPU lacks AVX-512) */
/* Without NABLA_CPU_GEMM: auto (the own GEMM measured 1.1-1.2x OpenBLAS's SkylakeX sgemm on one
 * thread from 256^3 to 1024^3 on an Ice Lake server, and slower at 64^3; NOTE-gemm.md). */
#define NBC_GEMM_DEFAULT NBC_GEMM_AUTO
/* Under auto, the own GEMM takes one-thread products whose M, N and K all reach this; the
 * rest, and every product run with more threads (where OpenBLAS's threading measured faster),
 * stays with the library. */
#define NBC_GEMM_AUTO_MIN 256
void nbc_gemm_open(void);
/* The CPU and OS run the own kernel (AVX-512, zmm state saved, NABLA_CPU_ISA not below it). */
bool nbc_gemm_available(void);
/* Under auto: whether an M x N x K product goes to the own GEMM. */
bool nbc_gemm_wins(blasint M, blasint N, blasint K);
/* For nabla-info: which sgemm matmul uses, and why. */
const char *nbc_gemm_describe(void);
/* cblas_sgemm's contract; what it does not take (column-major, bad leading dimensions, no
 * AVX-512, no memory for the panels) goes to the library's sgemm unchanged. */
__typeof__(cblas_sgemm) nbc_own_sgemm;

/* ---- 16-bit floats (cpu_half.c) ----
 * float16 and bfloat16 kernels widen their 16-bit operands to float32 and run the float32
 * kernel: half_kernels fills out[] with a 16-bit twin of every float32 entry of f32 that can
 * take one, for both types, and returns how many (at most 2 * n; NULL fn entries skipped). */
static inline bool nbc_is_16bit(nb_dtype d) { return d == NB_DTYPE_F16 || d == NB_DTYPE_BF16; }
size_t nbc_half_kernels(const nb_kernel_desc *f32, size_t n, nb_kernel_desc *out);
/* Runs the widened twin of the float32 kernel `op` for dt, for a native 16-bit kernel that
 * cannot take these operands (NB_NOT_IMPLEMENTED if op has no twin). A native 16-bit entry of
 * the table replaces the twin nbc_half_kernels would otherwise register for it. */
nb_status nbc_half_run(const char *op, nb_dtype dt, const nb_kernel_args *a);
/* copy into or out of a 16-bit dtype, any other side */
nb_status nbc_copy_16bit(const nb_kernel_args *a);
/* n values between a 16-bit buffer and float32 (the F16C or AVX-512 BF16 path where the CPU
 * has it) */
void nbc_half_to_f32(nb_dtype dt, const uint16_t *src, float *dst, int64_t n);
void nbc_f32_to_half(nb_dtype dt, const float *src, uint16_t *dst, int64_t n);

/* ---- kernel tables of each file ---- */
extern const nb_kernel_desc nbc_elementwise_kernels[];
extern const size_t nbc_elementwise_count;
extern const nb_kernel_desc nbc_reduce_kernels[];
extern const size_t nbc_reduce_count;
extern const nb_kernel_desc nbc_matmul_kernels[];
extern const size_t nbc_matmul_count;
extern const nb_kernel_desc nbc_softmax_kernels[]; /* cpu_softmax.c */
extern const size_t nbc_softmax_count;
extern const nb_kernel_desc nbc_conv_kernels[]; /* cpu_conv.c */
extern const size_t nbc_conv_count;
extern const nb_kernel_desc nbc_pool_kernels[]; /* cpu_pool.c */
extern const size_t nbc_pool_count;
extern const nb_kernel_desc nbc_attention_kernels[]; /* cpu_attention.c */
extern const size_t nbc_attention_count;
extern const nb_kernel_desc nbc_norm_kernels[]; /* cpu_norm.c */
extern const size_t nbc_norm_count;
extern const nb_kernel_desc nbc_act_kernels[]; /* cpu_act.c */
extern const size_t nbc_act_count;

#endif /* NBC_INTERNAL_H */
