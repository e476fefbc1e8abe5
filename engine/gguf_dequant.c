/* Dequantization of ggml tensor data to f32. Block layouts follow ggml's
 * (ggml-common.h); every multi-byte field is little-endian. Formulas:
 *   Q8_0  (32 elems, 34 B):  d:f16, q:i8[32]             x = d*q
 *   Q4_0  (32, 18 B):        d:f16, qs[16]               x = d*(nibble - 8)
 *   Q4_1  (32, 20 B):        d:f16, m:f16, qs[16]        x = d*nibble + m
 *   Q5_0  (32, 22 B):        d, qh:u32, qs[16]           x = d*(5-bit - 16)
 *   Q5_1  (32, 24 B):        d, m, qh:u32, qs[16]        x = d*5-bit + m
 * In the 32-element formats element j < 16 is the low nibble of qs[j] and
 * element j + 16 its high nibble; bit j of qh is the fifth bit of element j.
 *   Q4_K  (256, 144 B):  d, dmin, scales[12], qs[128]: 8 sub-blocks of 32 with
 *                        6-bit scale/min pairs; x = d*sc*nibble - dmin*mn
 *   Q5_K  (256, 176 B):  d, dmin, scales[12], qh[32], qs[128]: as Q4_K plus a
 *                        fifth bit per element from qh
 *   Q6_K  (256, 210 B):  ql[128], qh[64], scales:i8[16], d: 16 sub-blocks of
 *                        16; x = d*sc*(6-bit - 32) */
#include "gguf.h"
#include "kvtc_internal.h"

#include <stdio.h>
#include <string.h>

#define QK 32
#define QK_K 256

static float f16_at(const uint8_t *p) { return kvtc_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

static uint32_t u32_at(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Q4_0, Q4_1, Q5_0, Q5_1 share one shape: scale, optional min, optional high
 * bits, 16 bytes of nibbles. `offset` is subtracted when there is no min. */
static void dequant_q4_q5(const uint8_t *b, float *y, bool has_min, bool has_high)
{
    float d = f16_at(b);
    float m = has_min ? f16_at(b + 2) : 0.0f;
    const uint8_t *p = b + (has_min ? 4 : 2);
    uint32_t qh = has_high ? u32_at(p) : 0;
    const uint8_t *qs = p + (has_high ? 4 : 0);
    int offset = has_min ? 0 : (has_high ? 16 : 8);
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0x0f) | (int)((qh >> j) & 1u) << 4;
        int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
        y[j] = d * (float)(lo - offset) + m;
        y[j + QK / 2] = d * (float)(hi - offset) + m;
    }
}

static void dequant_q8_0(const uint8_t *b, float *y)
{
    float d = f16_at(b);
    for (int j = 0; j < QK; j++)
        y[j] = d * (float)(int8_t)b[2 + j];
}

/* Q4_K and Q5_K: each 64-element chunk is 32 bytes of qs, low nibbles for
 * its first sub-block and high nibbles for its second; in Q5_K, bit 2c (for
 * the first) and 2c+1 (for the second) of qh[l] add 16 to element l. */
static void dequant_q45_k(const uint8_t *b, float *y, bool has_high)
{
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *scales = b + 4;
    const uint8_t *qh = b + 16;
    const uint8_t *qs = b + (has_high ? 48 : 16);
    for (int c = 0; c < 4; c++) {
        int sc0, mn0, sc1, mn1;
        kvtc_ggml_k_scale_min(scales, 2 * c, &sc0, &mn0);
        kvtc_ggml_k_scale_min(scales, 2 * c + 1, &sc1, &mn1);
        float d0 = d * (float)sc0, m0 = dmin * (float)mn0;
        float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
        for (int l = 0; l < 32; l++) {
            int lo = qs[32 * c + l] & 0x0f, hi = qs[32 * c + l] >> 4;
            if (has_high) {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            y[64 * c + l] = d0 * (float)lo - m0;
            y[64 * c + 32 + l] = d1 * (float)hi - m1;
        }
    }
}

/* Q6_K: each 128-element half uses 64 bytes of ql and 32 of qh. Element l
 * (0..31) of its four 32-element quarters takes the low nibble of ql[l], of
 * ql[l+32], the high nibble of ql[l], of ql[l+32], with bits 0-1, 2-3, 4-5,
 * 6-7 of qh[l] on top. Scales are per 16 elements. */
static void dequant_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16_at(b + 208);
    for (int half = 0; half < 2; half++) {
        for (int l = 0; l < 32; l++) {
            int q[4] = {
                (ql[l] & 0x0f) | ((qh[l] >> 0) & 3) << 4,
                (ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4,
                (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4,
                (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4,
            };
            for (int k = 0; k < 4; k++)
                y[32 * k + l] = d * (float)sc[l / 16 + 2 * k] * (float)(q[k] - 32);
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

bool kvtc_ggml_block_dequantizable(uint32_t type)
{
    switch (type) {
    case KVTC_GGML_Q4_0:
    case KVTC_GGML_Q4_1:
    case KVTC_GGML_Q5_0:
    case KVTC_GGML_Q5_1:
    case KVTC_GGML_Q8_0:
    case KVTC_GGML_Q4_K:
    case KVTC_GGML_Q5_K:
    case KVTC_GGML_Q6_K: return true;
    default: return false;
    }
}

kvtc_status kvtc_ggml_dequantize(uint32_t type, const void *data, float *out, uint64_t n,
                            kvtc_error *err)
{
    uint32_t block_elems, block_bytes;
    if (!kvtc_ggml_type_block(type, &block_elems, &block_bytes))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "unknown ggml tensor type %u", type);
    if (n % block_elems)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "%llu elements of %s are not a whole number of %u-element blocks",
                         (unsigned long long)n, kvtc_ggml_type_name(type), block_elems);
    const uint8_t *b = data;
    uint64_t n_blocks = n / block_elems;
    switch (type) {
    case KVTC_GGML_F32:
        memcpy(out, data, n * sizeof(float));
        return KVTC_OK;
    case KVTC_GGML_F16:
    case KVTC_GGML_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(b[2 * i] | b[2 * i + 1] << 8);
            out[i] = type == KVTC_GGML_F16 ? kvtc_f16_to_f32(h) : kvtc_bf16_to_f32(h);
        }
        return KVTC_OK;
    default:
        if (!kvtc_ggml_block_dequantizable(type))
            return kvtc_fail(err, KVTC_E_UNSUPPORTED, "tensor type %s cannot be dequantized",
                             kvtc_ggml_type_name(type));
    }
    for (uint64_t i = 0; i < n_blocks; i++, b += block_bytes, out += block_elems) {
        switch (type) {
        case KVTC_GGML_Q4_0: dequant_q4_q5(b, out, false, false); break;
        case KVTC_GGML_Q4_1: dequant_q4_q5(b, out, true, false); break;
        case KVTC_GGML_Q5_0: dequant_q4_q5(b, out, false, true); break;
        case KVTC_GGML_Q5_1: dequant_q4_q5(b, out, true, true); break;
        case KVTC_GGML_Q8_0: dequant_q8_0(b, out); break;
        case KVTC_GGML_Q4_K: dequant_q45_k(b, out, false); break;
        case KVTC_GGML_Q5_K: dequant_q45_k(b, out, true); break;
        default: dequant_q6_k(b, out); break;
        }
    }
    return KVTC_OK;
}

kvtc_status kvtc_gguf_tensor_to_f32(const kvtc_gguf_tensor *t, float *out, kvtc_error *err)
{
    uint32_t block_elems, block_bytes;
    kvtc_status st = KVTC_OK;
    if (kvtc_ggml_type_block(t->type, &block_elems, &block_bytes) &&
        t->n_elements / block_elems * block_bytes > t->n_bytes)
        st = kvtc_fail(err, KVTC_E_FORMAT, "%llu bytes of data do not hold %llu elements",
                       (unsigned long long)t->n_bytes, (unsigned long long)t->n_elements);
    else
        st = kvtc_ggml_dequantize(t->type, t->data, out, t->n_elements, err);
    if (st != KVTC_OK) {
        char prefix[160];
        snprintf(prefix, sizeof prefix, "tensor %s", t->name);
        return kvtc_fail_prefix(err, prefix);
    }
    return KVTC_OK;
}
