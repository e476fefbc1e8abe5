/* Number formats: fp16, bf16 and fp8 (e4m3) conversions, and cache dtypes. */
#include "kernels.h"
#include "kvtc_internal.h"

#include <math.h>
#include <string.h>

static uint32_t f32_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

static float bits_f32(uint32_t x)
{
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t kvtc_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow */
        return sign | 0x7c00u;
    if (ax < 0x38800000u) { /* below 2^-14: fp16 subnormal or zero */
        /* Scaling by 2^24 is exact; rintf rounds half to even. */
        return sign | (uint16_t)rintf(bits_f32(ax) * 16777216.0f);
    }
    uint32_t h = ((((ax >> 23) - 127u + 15u)) << 10) | ((ax & 0x7fffffu) >> 13);
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* a carry into the exponent is the correct rounding */
    return sign | (uint16_t)h;
}

float kvtc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float f = (float)m * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t kvtc_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet nan, sign kept */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float kvtc_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* OCP fp8 E4M3 ("e4m3fn"): bias 7, no infinities, max 448, 0x7f/0xff = nan. */
uint8_t kvtc_f32_to_e4m3(float f)
{
    if (isnan(f))
        return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0x00;
    float a = fabsf(f);
    if (a >= 448.0f)
        return sign | 0x7e;
    if (a < 0.015625f) /* below 2^-6: subnormal steps of 2^-9 */
        return sign | (uint8_t)rintf(a * 512.0f); /* 8 -> 0x08 = 2^-6, correct */
    int e;
    frexpf(a, &e);                      /* a = m * 2^e, m in [0.5, 1) */
    float q = ldexpf(a, 4 - e);         /* in [8, 16): 1.mmm scaled by 8 */
    uint32_t r = (uint32_t)rintf(q);
    int exp = e - 1;                    /* a in [2^exp, 2^(exp+1)) */
    if (r == 16) {
        r = 8;
        exp++;
    }
    int be = exp + 7;
    uint32_t code = ((uint32_t)be << 3) | (r - 8);
    if (code > 0x7e)
        code = 0x7e;
    return sign | (uint8_t)code;
}

float kvtc_e4m3_to_f32(uint8_t b)
{
    uint32_t e = (b >> 3) & 15u, m = b & 7u;
    float v;
    if (e == 15 && m == 7)
        return NAN;
    if (e == 0)
        v = (float)m * (1.0f / 512.0f);
    else
        v = ldexpf(1.0f + (float)m / 8.0f, (int)e - 7);
    return (b & 0x80) ? -v : v;
}

bool kvtc_dtype_valid(kvtc_dtype dtype)
{
    return dtype == KVTC_F32 || dtype == KVTC_F16 || dtype == KVTC_BF16;
}

size_t kvtc_dtype_size(kvtc_dtype dtype)
{
    switch (dtype) {
    case KVTC_F32: return 4;
    case KVTC_F16: return 2;
    case KVTC_BF16: return 2;
    }
    return 0;
}

const char *kvtc_dtype_name(kvtc_dtype dtype)
{
    switch (dtype) {
    case KVTC_F32: return "F32";
    case KVTC_F16: return "F16";
    case KVTC_BF16: return "BF16";
    }
    return "?";
}

/* Array conversions: branch-free per-element forms of the scalar functions
 * above (bit-identical to them, tests/test_quant.c checks every f16 code and
 * many f32 values), run in fixed-size chunks so that -O2's cheap vectorizer
 * turns each chunk into SIMD code. */
enum { CONVERT_CHUNK = 16 };

/* a where cond holds, else b: a mask, not a branch, keeps the loops vectorizable. */
static inline uint32_t select_u32(bool cond, uint32_t a, uint32_t b)
{
    uint32_t mask = 0u - (uint32_t)cond;
    return (a & mask) | (b & ~mask);
}

static inline float f16_to_f32_lane(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = h & 0x7c00u, m = h & 0x3ffu;
    uint32_t normal = ((uint32_t)(h & 0x7fffu) << 13) + (112u << 23);
    uint32_t special = 0x7f800000u | (m << 13);
    uint32_t subnormal = f32_bits((float)(int32_t)m * (1.0f / 16777216.0f));
    uint32_t r = select_u32(e == 0, subnormal, select_u32(e == 0x7c00u, special, normal));
    return bits_f32(sign | r);
}

static inline uint16_t f32_to_f16_lane(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t ax = (int32_t)(x & 0x7fffffffu);
    /* Rebias, then round half to even on the 13 dropped bits. */
    uint32_t normal = ((uint32_t)ax - (112u << 23) + 0xfffu + (((uint32_t)ax >> 13) & 1u)) >> 13;
    /* Adding 0.5 rounds to a multiple of 2^-24 (half to even), like rintf(f * 2^24). */
    uint32_t subnormal = f32_bits(bits_f32((uint32_t)ax) + 0.5f) - 0x3f000000u;
    uint32_t special = 0x7c00u | ((uint32_t)(ax > 0x7f800000) << 9); /* nan, or inf and overflow */
    uint32_t r = select_u32(ax < 0x38800000, subnormal, select_u32(ax >= 0x477ff000, special, normal));
    return (uint16_t)(sign | r);
}

static inline uint16_t f32_to_bf16_lane(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (x >> 16) | 0x40u;
    return (uint16_t)select_u32((int32_t)(x & 0x7fffffffu) > 0x7f800000, quiet_nan, rounded);
}

#define CONVERT_ARRAY(dst, src, n, lane)                                                     \
    do {                                                                                     \
        size_t i_ = 0;                                                                       \
        for (; i_ + CONVERT_CHUNK <= (n); i_ += CONVERT_CHUNK)                               \
            for (size_t j_ = 0; j_ < CONVERT_CHUNK; j_++)                                    \
                (dst)[i_ + j_] = lane((src)[i_ + j_]);                                       \
        for (; i_ < (n); i_++)                                                               \
            (dst)[i_] = lane((src)[i_]);                                                     \
    } while (0)

void kvtc_to_f32(kvtc_dtype dtype, const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    switch (dtype) {
    case KVTC_F32: memcpy(dst, src, n * 4); break;
    case KVTC_F16: CONVERT_ARRAY(dst, h, n, f16_to_f32_lane); break;
    case KVTC_BF16: CONVERT_ARRAY(dst, h, n, kvtc_bf16_to_f32); break;
    }
}

void kvtc_from_f32(kvtc_dtype dtype, const float *src, void *dst, size_t n)
{
    uint16_t *h = dst;
    bool avx2 = kvtc_kernels_level() >= KVTC_KERNELS_AVX2;
    switch (dtype) {
    case KVTC_F32: memcpy(dst, src, n * 4); break;
    case KVTC_F16:
        if (avx2)
            kvtc_f32_to_f16_avx2(src, h, n);
        else
            CONVERT_ARRAY(h, src, n, f32_to_f16_lane);
        break;
    case KVTC_BF16:
        if (avx2)
            kvtc_f32_to_bf16_avx2(src, h, n);
        else
            CONVERT_ARRAY(h, src, n, f32_to_bf16_lane);
        break;
    }
}
