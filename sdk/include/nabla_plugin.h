/* nabla_plugin.h - the plugin ABI of Nabla: the only header a backend author needs.
 *
 * A plugin is a shared library exporting one symbol, NB_PLUGIN_ENTRY_SYMBOL, of type
 * nb_plugin_entry_fn. The core hands it a host table and gets back a plugin table. Both tables
 * start with the ABI major/minor and their struct size, and only ever grow: new members are
 * appended under a comment naming the minor version that added them, and a NULL member means
 * "not provided". A plugin never links anything from the core; everything it needs from the
 * host (errors, logging) comes through nb_host.
 *
 * Memory: a plugin allocates raw device buffers and returns an opaque handle. The core never
 * dereferences a handle; it addresses data as (handle, byte offset). Kernels receive operands as
 * descriptors (handle, offset, dtype, shape, strides in elements), where a stride of 0 means the
 * operand is broadcast along that dimension, so views never force a copy.
 */
#ifndef NABLA_PLUGIN_H
#define NABLA_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h> /* memcpy in the 16-bit conversions */

#ifdef __cplusplus
extern "C" {
#endif

#define NB_PLUGIN_ABI_MAJOR 1
#define NB_PLUGIN_ABI_MINOR 2 /* 1.1: NB_DTYPE_F16, NB_DTYPE_BF16; 1.2: nb_plugin.device_info */
#define NB_PLUGIN_ENTRY_SYMBOL "nb_plugin_entry"

#if defined(_WIN32)
#define NB_PLUGIN_EXPORT __declspec(dllexport)
#else
#define NB_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* ---- Types shared with nabla.h (kept identical; the core checks it at compile time) ---- */
#ifndef NB_SHARED_TYPES_DEFINED
#define NB_SHARED_TYPES_DEFINED

#define NB_MAX_DIMS 8

/* Element types. Values are part of the ABI and never change. */
typedef enum nb_dtype {
    NB_DTYPE_F32 = 0,
    NB_DTYPE_F64 = 1,
    NB_DTYPE_I32 = 2,
    NB_DTYPE_I64 = 3,
    NB_DTYPE_BOOL = 4, /* one byte, 0 or 1 */
    NB_DTYPE_U8 = 5,
    /* ABI 1.1: a plugin built for 1.0 registers no kernel for these and never receives them */
    NB_DTYPE_F16 = 6,  /* IEEE 754 binary16, stored as its 16 bits */
    NB_DTYPE_BF16 = 7, /* bfloat16: the top 16 bits of a float32 */
    NB_DTYPE_COUNT
} nb_dtype;

/* Status codes: X(name, value, description). Append only; never renumber. */
#define NB_STATUS_MAP(X)                                                                   \
    X(OK, 0, "success")                                                                    \
    X(INVALID_ARGUMENT, 1, "invalid argument")                                             \
    X(NULL_ARGUMENT, 2, "NULL argument")                                                   \
    X(SHAPE_MISMATCH, 3, "shape mismatch")                                                 \
    X(DTYPE_UNSUPPORTED, 4, "dtype not supported")                                         \
    X(DEVICE_MISMATCH, 5, "tensors on different devices")                                  \
    X(UNKNOWN_DEVICE, 6, "unknown device")                                                 \
    X(DEVICE_OUT_OF_RANGE, 7, "device index out of range")                                 \
    X(OUT_OF_MEMORY, 8, "out of memory")                                                   \
    X(NOT_IMPLEMENTED, 9, "operation not implemented on this device")                      \
    X(PLUGIN_LOAD, 10, "plugin failed to load")                                            \
    X(ABI_MISMATCH, 11, "plugin ABI mismatch")                                             \
    X(DEVICE_ERROR, 12, "device or driver error")                                          \
    X(AUTOGRAD, 13, "autograd error")                                                      \
    X(VIEW_STRIDES, 14, "view not possible with these strides")                            \
    X(INDEX_OUT_OF_RANGE, 15, "index out of range")                                        \
    X(IO, 16, "input/output error")                                                        \
    X(FORMAT, 17, "malformed data")                                                        \
    X(STATE, 18, "object in the wrong state")                                              \
    X(NO_DEVICE, 19, "no device available")

typedef enum nb_status {
#define NB_STATUS_ENUM_(name, value, desc) NB_##name = value,
    NB_STATUS_MAP(NB_STATUS_ENUM_)
#undef NB_STATUS_ENUM_
} nb_status;

#endif /* NB_SHARED_TYPES_DEFINED */

/* ---- What the host gives a plugin ---- */

enum nb_log_level { NB_LOG_DEBUG = 0, NB_LOG_INFO = 1, NB_LOG_WARN = 2, NB_LOG_ERROR = 3 };

typedef struct nb_host {
    uint32_t abi_major; /* NB_PLUGIN_ABI_MAJOR of the core */
    uint32_t abi_minor; /* NB_PLUGIN_ABI_MINOR of the core */
    uint32_t size;      /* sizeof(nb_host) as the core was built */
    /* Records an error for the calling thread (the caller's nb_last_error) and returns status. */
    nb_status (*error)(nb_status status, const char *fmt, ...);
    /* Writes a log line through the core (shown when NABLA_LOG allows the level). */
    void (*log)(int level, const char *fmt, ...);
} nb_host;

/* ---- Kernels ---- */

/* One operand of a kernel: a view of device memory. */
typedef struct nb_operand {
    void *handle;           /* buffer handle from nb_plugin.alloc */
    size_t offset;          /* byte offset of element [0,...,0] from the buffer's start */
    nb_dtype dtype;         /* element type */
    int32_t ndim;           /* 0..NB_MAX_DIMS */
    const int64_t *shape;   /* ndim sizes */
    const int64_t *strides; /* ndim strides in elements; 0 = broadcast along that dim */
} nb_operand;

/* Everything a kernel call receives. Unused parameter slots are zero. */
typedef struct nb_kernel_args {
    int32_t device;        /* device index within this plugin */
    int32_t n_in;          /* number of inputs */
    const nb_operand *out; /* the output (written, or read and written for _accumulate ops) */
    const nb_operand *in;  /* n_in inputs */
    double f[8];           /* float parameters, meaning per op (see the op list) */
    int64_t i[8];          /* integer parameters, meaning per op */
} nb_kernel_args;

/* A kernel returns NB_OK, or reports through nb_host.error and returns that status. */
typedef nb_status (*nb_kernel_fn)(const nb_kernel_args *args);

/* One entry of a plugin's kernel table: op name (see below) and the dtype it handles: the
 * output's dtype ("copy" must then accept every input dtype; "where" is registered under the
 * output's dtype, its condition is bool), except comparison ops, "*_scalar" comparisons and
 * "argmax"/"argmin", which are registered under their input's dtype (their output is bool or
 * int64), and the logical ops, which the core always calls with bool inputs.
 * ABI 1.1: a float16 or bfloat16 operand only ever reaches a kernel whose op the plugin also
 * registers under that dtype (a "copy" from float16 to float32 needs "copy" for float16 too), so
 * a plugin with no 16-bit entries, a 1.0 one included, never sees one. */
typedef struct nb_kernel_desc {
    const char *op;
    nb_dtype dtype;
    nb_kernel_fn fn;
} nb_kernel_desc;

/* ---- What a plugin gives the host ---- */

typedef struct nb_plugin {
    uint32_t abi_major; /* NB_PLUGIN_ABI_MAJOR the plugin was built against */
    uint32_t abi_minor; /* NB_PLUGIN_ABI_MINOR the plugin was built against */
    uint32_t size;      /* sizeof(nb_plugin) as the plugin was built */
    const char *name;    /* device type, as in device strings: "cpu", "cuda", "opencl" */
    const char *version; /* free-form plugin version, for nabla-info */
    /* Number of devices. 0 is valid: write why into the host error (e.g. "no CUDA driver"). */
    int (*device_count)(void);
    /* Human-readable device name into buf. (optional) */
    nb_status (*device_name)(int device, char *buf, size_t len);
    /* Allocates bytes (> 0) of device memory; returns an opaque non-NULL handle in *handle. */
    nb_status (*alloc)(int device, size_t bytes, void **handle);
    /* Frees a handle from alloc. */
    void (*free)(int device, void *handle);
    /* Copies bytes from host memory to (handle + offset). */
    nb_status (*write)(int device, void *handle, size_t offset, const void *src, size_t bytes);
    /* Copies bytes from (handle + offset) to host memory; waits for queued work first. */
    nb_status (*read)(int device, const void *handle, size_t offset, void *dst, size_t bytes);
    /* Waits until all queued work on the device is done. (optional) */
    nb_status (*synchronize)(int device);
    /* Wraps host memory as a buffer without copying; free() later releases only the wrapper.
     * Only for devices that can address host memory directly, such as the CPU. (optional) */
    nb_status (*wrap_host)(int device, void *ptr, size_t bytes, void **handle);
    /* Why device_count() returned 0, or NULL. (optional) */
    const char *(*status_note)(void);
    /* Releases everything; called once at core shutdown. (optional) */
    void (*shutdown)(void);
    const nb_kernel_desc *kernels; /* kernel table */
    size_t n_kernels;              /* entries in kernels */
    /* ABI 1.0 ends here; later members are appended below with the minor that added them. */
    /* ABI 1.2: what an application may want to know about a device beyond its name, one
     * "topic: value" line each, e.g. "GEMM: CLBlast 1.5.3\nprogram cache: /root/.cache/nabla"
     * (nabla-info prints it). The string is the plugin's and stays valid until the next call
     * for the same device or shutdown. NULL or "" when there is nothing to add. (optional) */
    const char *(*device_info)(int32_t device);
} nb_plugin;

/* The entry point. Returns the plugin table, or NULL after calling host->error with the
 * reason. Called once per process. */
typedef const nb_plugin *(*nb_plugin_entry_fn)(const nb_host *host);

/* ---- Op list (names cross the ABI as strings) ----------------------------------------------
 *
 * Conventions: `out` has the result shape; inputs have the same ndim and shape as out unless
 * said otherwise, with stride 0 on broadcast dims. Inputs of elementwise ops have the same dtype
 * as the kernel's registered dtype (the core casts first). Tier 1 is what every plugin must
 * provide for float32 (and for the other dtypes it claims); tier 2 is optional.
 *
 * Tier 1
 *   "fill"           out = f[0]                                             all dtypes
 *   "copy"           out = (cast) in[0]; in[0] may have any dtype           all dtypes
 *   "arange"         out[k] = f[0] + k * f[1], out is 1-d                    all dtypes
 *   unary, out = op(in[0]):
 *     "neg" "abs" "exp" "log" "sqrt" "rsqrt" "sin" "cos" "tanh" "sigmoid" "relu" "sign"
 *     "floor" "ceil" "round" "logical_not" (output bool, input any dtype)
 *   unary with scalar s = f[0]:
 *     "add_scalar" x+s  "mul_scalar" x*s  "rsub_scalar" s-x  "div_scalar" x/s  "rdiv_scalar" s/x
 *     "pow_scalar" x^s  "rpow_scalar" s^x
 *     "clamp"          min(max(x, f[0]), f[1]); i[0] = has min, i[1] = has max
 *     "eq_scalar" "ne_scalar" "lt_scalar" "le_scalar" "gt_scalar" "ge_scalar"  (bool output)
 *   binary, out = op(in[0], in[1]):
 *     "add" "sub" "mul" "div" "pow" "maximum" "minimum"  ("maximum"/"minimum" propagate NaN)
 *     "eq" "ne" "lt" "le" "gt" "ge"                         (bool output)
 *     "logical_and" "logical_or" "logical_xor"             (bool output, any input dtype)
 *   "where"          out = in[0] (bool) ? in[1] : in[2]
 *   reductions: out has in[0]'s ndim with size 1 on every reduced dim (out.shape[d] == 1 while
 *   in.shape[d] > 1 marks d as reduced):
 *     "sum" "prod" "max" "min" (NaN propagates)
 *     "argmax" "argmin"  one reduced dim i[0]; out dtype int64; first index of the extreme
 *   "matmul"         out = f[0] * in[0] @ in[1] + f[1] * out; all three are 3-d
 *                    (batch, rows, cols); batch strides may be 0; f[1] == 0 means out is not read
 *   "gather"         out[..j..] = in[0][..in[1][..j..]..] along dim i[0]; in[1] is int64 with
 *                    out's shape; in[0] has out's ndim; indexes are checked, out of range is an error
 *   "scatter_add"    out[..in[0][..j..]..] += in[1][..j..] along dim i[0]; in[0] int64 index,
 *                    in[1] source with the index's shape; out is read and written
 *   "random_uniform" out = f[0] + (f[1] - f[0]) * u,  u in [0, 1)         float dtypes
 *   "random_normal"  out = f[0] + f[1] * z,  z standard normal            float dtypes
 *                    Both use nb_philox() below with key = i[0] (seed) and element k of the
 *                    row-major order taking counter (k, i[1]) where i[1] is the stream offset.
 *
 * Tier 2 (optional; the core has a composite of tier-1 ops for each)
 *   "relu_backward"     out = in[0] (grad) * (in[1] (x) > 0)
 *   "softmax" "log_softmax"             along the last dim i[0] == ndim-1, contiguous in[0]
 *   "log_softmax_backward"  in[0] grad, in[1] output: out = g - exp(y) * sum(g)
 *   "softmax_backward"      in[0] grad, in[1] output: out = y * (g - sum(g * y))
 *   "conv2d"            in[0] x (N,C,H,W), in[1] w (O,C/g,kh,kw); out (N,O,OH,OW)
 *                       i[] = stride h,w, padding h,w, dilation h,w, groups. No bias.
 *   "conv2d_backward_input"   in[0] grad (N,O,OH,OW), in[1] w; out = grad x; i[] as conv2d
 *   "conv2d_backward_weight"  in[0] grad, in[1] x; out = grad w; i[] as conv2d
 *   "max_pool2d"        in[0] x (N,C,H,W); out (N,C,OH,OW); i[] = kernel h,w, stride h,w,
 *                       padding h,w; also writes int64 argmax (flat h*W+w) into in[1]
 *   "max_pool2d_backward"  in[0] grad (N,C,OH,OW), in[1] indices; out (N,C,H,W) zeroed + added
 *   "sgd_step"          out = param; in[0] grad, in[1] momentum buffer (read and written);
 *                       f[] = lr, momentum, dampening, weight_decay; i[0] nesterov, i[1] first step
 *   "adam_step"         out = param; in[0] grad, in[1] exp_avg, in[2] exp_avg_sq;
 *                       f[] = lr, beta1, beta2, eps, weight_decay; i[0] step (from 1),
 *                       i[1] = 1 for AdamW's decoupled weight decay
 *   "attention"         in[0] q (B,L,E), in[1] k (B,S,E), in[2] v (B,S,Ev), all contiguous;
 *                       out (B,L,Ev) = softmax(q k^T * f[0]) v; i[0] = 1: causal (j <= i only)
 *   "layer_norm"        in[0] x (R,C), then weight (C) if i[0] & 1, bias (C) if i[0] & 2, all
 *                       contiguous; out (R,C) = (x - mean) / sqrt(var + f[0]) * w + b per row,
 *                       var biased
 * --------------------------------------------------------------------------------------------- */

/* Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so every device produces the
 * same numbers for the same (seed, counter). Shared here so all plugins agree bit for bit. */
static inline void nb_philox(uint64_t key, uint64_t ctr_lo, uint64_t ctr_hi, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)ctr_lo, c1 = (uint32_t)(ctr_lo >> 32);
    uint32_t c2 = (uint32_t)ctr_hi, c3 = (uint32_t)(ctr_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The uniform and normal numbers every plugin must produce for element k (see "random_*"). A
 * float32 uniform uses the top 24 bits of out[0]; a float64 one 53 bits of out[0] and out[1].
 * The normal is z = sqrt(-2 ln u1) * cos(2 pi u2), in double, with u1 and u2 as below. */
static inline double nb_philox_uniform(uint64_t seed, uint64_t offset, uint64_t k, int f64)
{
    uint32_t r[4];
    nb_philox(seed, k, offset, r);
    if (f64)
        return (double)(((uint64_t)r[0] << 21) ^ (r[1] >> 11)) * 0x1p-53;
    return (double)(r[0] >> 8) * 0x1p-24;
}

static inline void nb_philox_normal_parts(uint64_t seed, uint64_t offset, uint64_t k,
                                          double *u1, double *u2)
{
    uint32_t r[4];
    nb_philox(seed, k, offset, r);
    *u1 = 1.0 - (double)(((uint64_t)r[0] << 21) ^ (r[1] >> 11)) * 0x1p-53; /* (0, 1] */
    *u2 = (double)(((uint64_t)r[2] << 21) ^ (r[3] >> 11)) * 0x1p-53;       /* [0, 1) */
}

/* ---- Float to integer conversion: one rule for every plugin ----
 * Wherever a float becomes an integer dtype (copy/to_dtype, fill and arange values, integer
 * scalars, clamp bounds after their rounding), every plugin gives the same bits, those PyTorch
 * shows on x86 CPUs:
 *   1. truncate toward zero into int64; NaN and values outside [-2^63, 2^63) give INT64_MIN
 *      (what x86's cvttsd2si returns for them);
 *   2. wrap that int64 modulo 2^bits into the target (int32, uint8), as unsigned C
 *      arithmetic does: u8 of -1.0 is 255, of -3.75 is 253, of 300.0 is 44, of 3e9 is 0.
 * bool is different: a float or integer is true when non-zero (NaN is true), and a bool byte
 * reads as true when any bit is set, so it converts to exactly 0 or 1, never to 255 or -1.
 * Saturating conversions (CUDA's cvt.rzi.sat, OpenCL's convert_*_sat) do not follow this rule. */
static inline int64_t nb_float_to_int64(double x)
{
    /* the comparisons are false for NaN; 2^63 itself is out of range */
    if (x >= -9223372036854775808.0 && x < 9223372036854775808.0)
        return (int64_t)x;
    return INT64_MIN;
}

/* ---- 16-bit floats (ABI 1.1) ----
 * Conversions every plugin and the core share, bit for bit: round to nearest even, NaN stays
 * NaN (made quiet), inf and subnormals exact. A double goes to float rounding to odd first, so
 * the one rounding that matters happens once (float has more than 2 bits over either type). */
static inline float nb_bits_f32_(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
static inline uint32_t nb_f32_bits_(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static inline float nb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f)
        return nb_bits_f32_(sign | 0x7f800000u | (man << 13));
    if (exp)
        return nb_bits_f32_(sign | ((exp + 112) << 23) | (man << 13));
    return nb_bits_f32_(sign | nb_f32_bits_((float)man * 0x1p-24f)); /* zero, subnormal: exact */
}

static inline uint16_t nb_f32_to_f16(float f)
{
    uint32_t x = nb_f32_bits_(f), a = x & 0x7fffffffu;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* 65520 and up (inf too): a tie at 65520 goes to the even inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) /* a normal half: rebias, round the 13 dropped bits to even */
        return (uint16_t)(sign | ((a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u) >> 13));
    uint32_t e = a >> 23;
    if (e < 102) /* below half the smallest subnormal (float subnormals too) */
        return sign;
    uint32_t mant = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    q += rem > half || (rem == half && (q & 1u));
    return (uint16_t)(sign | q); /* q may reach 0x400, the smallest normal */
}

static inline float nb_bf16_to_f32(uint16_t h) { return nb_bits_f32_((uint32_t)h << 16); }

static inline uint16_t nb_f32_to_bf16(float f)
{
    uint32_t x = nb_f32_bits_(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* d rounded to float towards the neighbour whose last bit is odd when inexact. */
static inline float nb_f64_to_f32_odd_(double d)
{
    float f = (float)d;
    if ((double)f == d || d != d || f - f != 0) /* exact, NaN or beyond float's range */
        return f;
    uint32_t b = nb_f32_bits_(f);
    if (!(b & 1u))
        b = (d > 0 ? (double)f > d : (double)f < d) ? b - 1 : b + 1;
    return nb_bits_f32_(b);
}
static inline uint16_t nb_f64_to_f16(double d) { return nb_f32_to_f16(nb_f64_to_f32_odd_(d)); }
static inline uint16_t nb_f64_to_bf16(double d) { return nb_f32_to_bf16(nb_f64_to_f32_odd_(d)); }

#ifdef __cplusplus
}
#endif
#endif /* NABLA_PLUGIN_H */
