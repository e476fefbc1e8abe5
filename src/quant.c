/* Group quantization: per token and per group, an fp16 shift and scale and one
 * code per coordinate. The DP error table and the codec both call these, so the
 * error the plan optimizes is exactly the error the codec makes. */
#include "kvtc_internal.h"

#include <math.h>

const uint32_t kvtc_group_sizes[KVTC_GROUP_SIZE_COUNT] = {1, 16, 64, 256, 1024};

#define E4M3_MAX 448.0f

bool kvtc_qtype_valid(uint32_t type) { return type < KVTC_QTYPE_COUNT; }

int kvtc_group_size_index(uint32_t size)
{
    for (int i = 0; i < KVTC_GROUP_SIZE_COUNT; i++)
        if (kvtc_group_sizes[i] == size)
            return i;
    return -1;
}

const char *kvtc_qtype_name(kvtc_qtype t)
{
    static const char *names[KVTC_QTYPE_COUNT] = {"none", "int2", "int4", "fp8", "int8"};
    return kvtc_qtype_valid(t) ? names[t] : "?";
}

uint32_t kvtc_qtype_bits(kvtc_qtype t)
{
    static const uint32_t bits[KVTC_QTYPE_COUNT] = {0, 2, 4, 8, 8};
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

void kvtc_quant_group(kvtc_qtype type, const float *x, uint32_t n, uint16_t *shift,
                      uint16_t *scale, uint8_t *codes)
{
    if (type == KVTC_Q_NONE || n == 0)
        return;
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
