/* random.cl - random_uniform and random_normal through Philox4x32-10, the same function as
 * nb_philox() in nabla_plugin.h, so a seed gives the CPU's numbers on every device. A 16-bit
 * output gets the float32 number rounded once (the cpu plugin's float32 kernel, narrowed). */
#if IS_FLOAT
void nbk_philox(ulong key, ulong ctr_lo, ulong ctr_hi, uint r[4])
{
    uint c0 = (uint)ctr_lo, c1 = (uint)(ctr_lo >> 32), c2 = (uint)ctr_hi,
         c3 = (uint)(ctr_hi >> 32);
    uint k0 = (uint)key, k1 = (uint)(key >> 32);
    for (int rr = 0; rr < 10; rr++) {
        uint lo0 = 0xD2511F53u * c0, hi0 = mul_hi(0xD2511F53u, c0);
        uint lo1 = 0xCD9E8D57u * c2, hi1 = mul_hi(0xCD9E8D57u, c2);
        uint n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c1 = lo1;
        c3 = lo0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    r[0] = c0;
    r[1] = c1;
    r[2] = c2;
    r[3] = c3;
}

/* 53 random bits from two words, as nb_philox_uniform and nb_philox_normal_parts take them */
#define NBK_BITS53(hi, lo) ((((ulong)(hi)) << 21) ^ (ulong)((lo) >> 11))

/* A 16-bit uniform: u near 1 rounds up to the high end, and [lo, hi) maps that back to lo, as
 * the cpu and cuda plugins (and PyTorch's CUDA uniform) do. */
#if IS_HALF
#define NBK_BELOW_HI(v, lo, hi) (LD_ROUNDED(v) >= (hi) ? (T)(lo) : (v))
#if NBK_KIND == 6
#define LD_ROUNDED(v) nbk_f16_to_f32(nbk_f32_to_f16(v))
#else
#define LD_ROUNDED(v) nbk_bf16_to_f32(nbk_f32_to_bf16(v))
#endif
#else
#define NBK_BELOW_HI(v, lo, hi) (v)
#endif

#if HAS_FP64
/* out = lo + (hi - lo) * u; the element's row-major index is its counter */
__kernel void random_uniform(__global ST *out, nbk_geom g, ulong seed, ulong offset, real_t lo,
                             real_t hi)
{
    NBK_ELEMENT(1);
    uint r[4];
    nbk_philox(seed, (ulong)i, offset, r);
#if NBK_KIND == 1
    real_t u = (real_t)NBK_BITS53(r[0], r[1]) * (real_t)0x1p-53f;
#else
    real_t u = (real_t)(r[0] >> 8) * (real_t)0x1p-24f;
#endif
    T v = (T)(lo + (hi - lo) * u);
    STORE(out, o[0], NBK_BELOW_HI(v, lo, hi));
}

/* out = mean + std * z with z = sqrt(-2 ln u1) cos(2 pi u2); u1 in (0, 1] */
__kernel void random_normal(__global ST *out, nbk_geom g, ulong seed, ulong offset, real_t mean,
                            real_t std)
{
    NBK_ELEMENT(1);
    uint r[4];
    nbk_philox(seed, (ulong)i, offset, r);
    /* 2^53 - bits is exact in integers, so u1 never rounds to 0 */
    real_t u1 = (real_t)(((ulong)1 << 53) - NBK_BITS53(r[0], r[1])) * (real_t)0x1p-53f;
    real_t u2 = (real_t)NBK_BITS53(r[2], r[3]) * (real_t)0x1p-53f;
    real_t z = sqrt((real_t)-2 * log(u1)) * cos((real_t)2 * NBK_PI * u2);
    STORE(out, o[0], (T)(mean + std * z));
}
#else
/* Without fp64 (float32 only): the double arithmetic of the reference is carried in float
 * pairs (nbk_axpm, common.cl), so results round once from nearly the exact value. Parameters
 * arrive split: a = a_h + a_l. */

/* out = lo + (hi - lo) * u, u exact in float (24 bits); d = hi - lo from the host */
__kernel void random_uniform(__global ST *out, nbk_geom g, ulong seed, ulong offset, float lo_h,
                             float lo_l, float d_h, float d_l)
{
    NBK_ELEMENT(1);
    uint r[4];
    nbk_philox(seed, (ulong)i, offset, r);
    float v = nbk_axpm(lo_h, lo_l, d_h, d_l, (float)(r[0] >> 8) * 0x1p-24f);
    /* the high end in float: it differs from the double comparison only where hi is no float */
    STORE(out, o[0], NBK_BELOW_HI(v, lo_h + lo_l, (lo_h + d_h) + (lo_l + d_l)));
}

/* z = sqrt(-2 ln u1) cos(2 pi u2) from the same 53-bit u1 = 1 - v and u2 as the reference:
 * ln u1 comes from whichever of v and u1 is the smaller (no cancellation), and cos(2 pi u2)
 * takes the low bits of u2 as a first-order correction to cospi of its high bits */
__kernel void random_normal(__global ST *out, nbk_geom g, ulong seed, ulong offset, float m_h,
                            float m_l, float s_h, float s_l)
{
    NBK_ELEMENT(1);
    uint r[4];
    nbk_philox(seed, (ulong)i, offset, r);
    ulong b1 = NBK_BITS53(r[0], r[1]), b2 = NBK_BITS53(r[2], r[3]);
    /* below one half, v = 1 - u1 is exact enough for log1p; above, u1 itself is */
    float ln_u1 = b1 < ((ulong)1 << 52) ? log1p(-(float)b1 * 0x1p-53f)
                                         : log((float)(((ulong)1 << 53) - b1) * 0x1p-53f);
    float rad = sqrt(-2.0f * ln_u1);
    float u2h = (float)(b2 >> 29) * 0x1p-24f, u2l = (float)(b2 & 0x1fffffff) * 0x1p-53f;
    float c = cospi(2.0f * u2h) - sinpi(2.0f * u2h) * (2.0f * M_PI_F * u2l);
    STORE(out, o[0], nbk_axpm(m_h, m_l, s_h, s_l, rad * c));
}
#endif
#endif
