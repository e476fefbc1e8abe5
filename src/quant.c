/* Group quantization: per token and per group, an fp16 shift and scale and one
 * code per coordinate (int2/int4/int8/fp8), or an fp16 scale and one code per
 * coordinate naming a Lloyd-Max level of the unit Gaussian (lm1/lm2/lm3). The
 * DP error table and the codec both call these, so the error the plan
 * optimizes is exactly the error the codec makes. */
#include "kvtc_internal.h"

#include <math.h>

const uint32_t kvtc_group_sizes[KVTC_GROUP_SIZE_COUNT] = {1, 16, 64, 256, 1024};

#define E4M3_MAX 448.0f

bool kvtc_qtype_valid(uint32_t type) { return type < KVTC_QTYPE_COUNT; }

bool kvtc_qtype_is_lm(kvtc_qtype t) { return t >= KVTC_Q_LM1 && t <= KVTC_Q_LM3; }

uint32_t kvtc_qtype_overhead_bits(kvtc_qtype t)
{
    return t == KVTC_Q_NONE || !kvtc_qtype_valid(t) ? 0 : kvtc_qtype_is_lm(t) ? 16 : 32;
}

uint32_t kvtc_group_bits(uint32_t size, kvtc_qtype t)
{
    return t == KVTC_Q_NONE ? 0 : size * kvtc_qtype_bits(t) + kvtc_qtype_overhead_bits(t);
}

/* A per-token RMS scale over a single coordinate would be that coordinate's
 * magnitude in fp16: not a quantizer, so the lm types take groups of 16+. */
bool kvtc_qtype_size_ok(kvtc_qtype t, uint32_t size) { return !kvtc_qtype_is_lm(t) || size >= 16; }

/* Lloyd-Max (MSE-optimal) reconstruction levels of N(0, 1) for 2, 4 and 8
 * levels, ascending: code c is level c. tests/test_quant.c recomputes them. */
static const float LM_LEVELS_1[2] = {-0.7978846f, 0.7978846f};
static const float LM_LEVELS_2[4] = {-1.5104176f, -0.4527800f, 0.4527800f, 1.5104176f};
static const float LM_LEVELS_3[8] = {-2.1519457f, -1.3439093f, -0.7560053f, -0.2450942f,
                                     0.2450942f,  0.7560053f,  1.3439093f,  2.1519457f};

const float *kvtc_lm_levels(kvtc_qtype t)
{
    return t == KVTC_Q_LM1 ? LM_LEVELS_1 : t == KVTC_Q_LM2 ? LM_LEVELS_2 : t == KVTC_Q_LM3 ? LM_LEVELS_3 : NULL;
}

bool kvtc_lm_scale_valid(uint16_t scale) { return (scale & 0xfc00u) != 0x7c00u && !(scale & 0x8000u); }

int kvtc_group_size_index(uint32_t size)
{
    for (int i = 0; i < KVTC_GROUP_SIZE_COUNT; i++)
        if (kvtc_group_sizes[i] == size)
            return i;
    return -1;
}

const char *kvtc_qtype_name(kvtc_qtype t)
{
    static const char *names[KVTC_QTYPE_COUNT] = {"none", "int2", "int4", "fp8",
                                                  "int8", "lm1",  "lm2",  "lm3"};
    return kvtc_qtype_valid(t) ? names[t] : "?";
}

uint32_t kvtc_qtype_bits(kvtc_qtype t)
{
    static const uint32_t bits[KVTC_QTYPE_COUNT] = {0, 2, 4, 8, 8, 1, 2, 3};
    return kvtc_qtype_valid(t) ? bits[t] : 0;
}

static float clamp_f16_range(float v)
{
    return v > KVTC_F16_MAX ? KVTC_F16_MAX : v < -KVTC_F16_MAX ? -KVTC_F16_MAX : v;
}

/* fp16 of a non-negative scale, rounded up so that the range is always covered. */
static uint16_t scale_up_f16(float want)
{
    if (!(want > 0.0f))
        return 0;
    uint16_t h = kvtc_f32_to_f16(clamp_f16_range(want));
    if (kvtc_f16_to_f32(h) < want && h < 0x7bffu)
        h++; /* next representable fp16 above */
    return h;
}

/* Nearest level of x / sc: the count of midpoints between levels below it
 * (branch-free, so the compiler can vectorize it). */
static void lm_assign(const float *lv, uint32_t n_levels, const float *x, uint32_t n, float sc,
                      uint8_t *codes)
{
    float mid[7] = {0};
    for (uint32_t c = 0; c + 1 < n_levels; c++)
        mid[c] = 0.5f * (lv[c] + lv[c + 1]) * (sc > 0.0f ? sc : 0.0f);
    uint32_t m = n_levels - 1;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t c = 0;
        for (uint32_t j = 0; j < m; j++)
            c += x[i] > mid[j];
        codes[i] = (uint8_t)c;
    }
}

/* The per-token scale: the group's RMS (the Gaussian's sigma), then twice the
 * least-squares scale for the codes it gives; codes are finally chosen for the
 * fp16 scale the decoder will read. */
static void quant_lm(kvtc_qtype type, const float *x, uint32_t n, uint16_t *scale,
                     uint8_t *codes)
{
    const float *lv = kvtc_lm_levels(type);
    uint32_t n_levels = 1u << kvtc_qtype_bits(type);
    double e2 = 0.0;
    for (uint32_t i = 0; i < n; i++)
        e2 += (double)x[i] * x[i];
    float sc = (float)sqrt(e2 / n);
    for (int it = 0; it < 2 && sc > 0.0f; it++) {
        lm_assign(lv, n_levels, x, n, sc, codes);
        double xl = 0.0, ll = 0.0;
        for (uint32_t i = 0; i < n; i++) {
            xl += (double)x[i] * lv[codes[i]];
            ll += (double)lv[codes[i]] * lv[codes[i]];
        }
        sc = ll > 0.0 ? (float)(xl / ll) : 0.0f;
    }
    *scale = sc > 0.0f ? kvtc_f32_to_f16(clamp_f16_range(sc)) : 0;
    lm_assign(lv, n_levels, x, n, kvtc_f16_to_f32(*scale), codes);
}

void kvtc_quant_group(kvtc_qtype type, const float *x, uint32_t n, uint16_t *shift,
                      uint16_t *scale, uint8_t *codes)
{
    if (type == KVTC_Q_NONE || n == 0)
        return;
    if (kvtc_qtype_is_lm(type)) {
        *shift = 0;
        quant_lm(type, x, n, scale, codes);
        return;
    }
    float lo = x[0], hi = x[0];
    for (uint32_t i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    if (type == KVTC_Q_FP8) {
        /* Centre the group, then scale its largest magnitude onto fp8's 448. */
        *shift = kvtc_f32_to_f16(clamp_f16_range(0.5f * lo + 0.5f * hi));
        float s = kvtc_f16_to_f32(*shift);
        float amax = fmaxf(fabsf(hi - s), fabsf(lo - s));
        *scale = scale_up_f16(amax / E4M3_MAX);
        float sc = kvtc_f16_to_f32(*scale);
        float inv = sc > 0.0f ? 1.0f / sc : 0.0f;
        for (uint32_t i = 0; i < n; i++)
            codes[i] = kvtc_f32_to_e4m3((x[i] - s) * inv);
        return;
    }
    uint32_t levels = (1u << kvtc_qtype_bits(type)) - 1u;
    *shift = kvtc_f32_to_f16(clamp_f16_range(lo));
    float s = kvtc_f16_to_f32(*shift);
    *scale = scale_up_f16((hi - s) / (float)levels);
    float sc = kvtc_f16_to_f32(*scale);
    float inv = sc > 0.0f ? 1.0f / sc : 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        float q = floorf((x[i] - s) * inv + 0.5f);
        /* NaN (from inf inputs) goes to 0: converting it to an integer is undefined. */
        codes[i] = (uint8_t)(q >= (float)levels ? levels : q > 0.0f ? (uint32_t)q : 0u);
    }
}

void kvtc_dequant_group(kvtc_qtype type, uint16_t shift, uint16_t scale, const uint8_t *codes,
                        uint32_t n, float *out)
{
    if (type == KVTC_Q_NONE) {
        for (uint32_t i = 0; i < n; i++)
            out[i] = 0.0f;
        return;
    }
    float s = kvtc_f16_to_f32(shift), sc = kvtc_f16_to_f32(scale);
    if (kvtc_qtype_is_lm(type)) {
        const float *lv = kvtc_lm_levels(type);
        uint8_t mask = (uint8_t)((1u << kvtc_qtype_bits(type)) - 1u);
        for (uint32_t i = 0; i < n; i++)
            out[i] = sc * lv[codes[i] & mask];
        return;
    }
    if (type == KVTC_Q_FP8) {
        for (uint32_t i = 0; i < n; i++) {
            float v = kvtc_e4m3_to_f32(codes[i]);
            out[i] = s + sc * (isnan(v) ? 0.0f : v); /* nan codes come only from corrupt data */
        }
        return;
    }
    for (uint32_t i = 0; i < n; i++)
        out[i] = s + sc * (float)codes[i];
}

void kvtc_lm_dequant_packed(kvtc_qtype type, uint16_t scale, const uint8_t *packed, uint32_t n,
                            float *out)
{
    const float *lv = kvtc_lm_levels(type);
    float sc = kvtc_f16_to_f32(scale), t[8];
    uint32_t bits = kvtc_qtype_bits(type), mask = (1u << bits) - 1, i = 0;
    for (uint32_t c = 0; c <= mask; c++)
        t[c] = sc * lv[c];
    const uint8_t *p = packed;
    if (bits == 3) /* 8 codes in each 3 bytes */
        for (; i + 8 <= n; i += 8, p += 3) {
            uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
            for (int j = 0; j < 8; j++)
                out[i + j] = t[(v >> (3 * j)) & 7u];
        }
    else /* 1 or 2 bits: 8 / bits whole codes in each byte */
        for (uint32_t per = 8 / bits; i + per <= n; i += per, p++)
            for (uint32_t j = 0; j < per; j++)
                out[i + j] = t[(*p >> (bits * j)) & mask];
    for (; i < n; i++) { /* the rest (groups are multiples of 16: never) */
        size_t at = (size_t)i * bits;
        uint32_t v = packed[at / 8];
        if (at % 8 + bits > 8)
            v |= (uint32_t)packed[at / 8 + 1] << 8;
        out[i] = t[(v >> (at % 8)) & mask];
    }
}

double kvtc_quant_group_error(kvtc_qtype type, const float *x, uint32_t n)
{
    uint8_t codes[1024];
    float y[1024];
    uint16_t shift = 0, scale = 0;
    double e = 0.0;
    for (uint32_t off = 0; off < n; off += 1024) {
        uint32_t m = n - off < 1024 ? n - off : 1024;
        kvtc_quant_group(type, x + off, m, &shift, &scale, codes);
        kvtc_dequant_group(type, shift, scale, codes, m, y);
        for (uint32_t i = 0; i < m; i++) {
            double d = (double)x[off + i] - (double)y[i];
            e += d * d;
        }
    }
    return e;
}
