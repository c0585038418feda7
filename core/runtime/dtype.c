/* dtype.c - element types: names, sizes and PyTorch's promotion rules. */
#include "nabla_internal.h"

static const struct {
    const char *name;
    size_t size;
    bool is_float;
} dtypes[NB_DTYPE_COUNT] = {
    [NB_DTYPE_F32] = {"float32", 4, true}, [NB_DTYPE_F64] = {"float64", 8, true},
    [NB_DTYPE_I32] = {"int32", 4, false},  [NB_DTYPE_I64] = {"int64", 8, false},
    [NB_DTYPE_BOOL] = {"bool", 1, false},  [NB_DTYPE_U8] = {"uint8", 1, false},
    [NB_DTYPE_F16] = {"float16", 2, true}, [NB_DTYPE_BF16] = {"bfloat16", 2, true},
};

const uint8_t nbi_dtype_bytes[NB_DTYPE_COUNT] = {4, 8, 4, 8, 1, 1, 2, 2};

static bool valid(nb_dtype d) { return (unsigned)d < NB_DTYPE_COUNT; }

const char *nb_dtype_name(nb_dtype d) { return valid(d) ? dtypes[d].name : "invalid dtype"; }
size_t nb_dtype_size(nb_dtype d) { return valid(d) ? dtypes[d].size : 0; }
bool nb_dtype_is_float(nb_dtype d) { return valid(d) && dtypes[d].is_float; }

nb_dtype nbi_default_float(void) { return NB_DTYPE_F32; }

/* Category order bool < integer < float; within a category the wider type wins, and uint8 with
 * a signed integer goes to the signed type that holds both (int32 needs int16, which we lack:
 * PyTorch gives int16 for u8+i8; with i32/i64 the signed one holds every u8). The two 16-bit
 * floats rank below float32 and neither holds the other, so float16 + bfloat16 is float32. */
nb_dtype nb_promote_types(nb_dtype a, nb_dtype b)
{
    if (a == b)
        return a;
    if (!valid(a) || !valid(b))
        return NB_DTYPE_COUNT;
    if (nbi_dtype_is_16bit(a) && nbi_dtype_is_16bit(b))
        return NB_DTYPE_F32;
    static const int rank[NB_DTYPE_COUNT] = {
        [NB_DTYPE_BOOL] = 0, [NB_DTYPE_U8] = 1,  [NB_DTYPE_I32] = 2,  [NB_DTYPE_I64] = 3,
        [NB_DTYPE_F16] = 4,  [NB_DTYPE_BF16] = 4, [NB_DTYPE_F32] = 5, [NB_DTYPE_F64] = 6,
    };
    return rank[a] > rank[b] ? a : b;
}
