/* Dequantization of every supported ggml type against blocks built by hand:
 * each block is packed here from chosen quants and scales (the inverse of
 * what the decoder does), a few elements are checked against values worked
 * out by hand, and every element against the format's formula written from
 * the element's point of view. Bad sizes and unknown types are refused. */
#include "gguf.h"
#include "kvtc_internal.h"
#include "testutil.h"

#include <string.h>

#define NAME "test_gguf_dequant"

static void put_f16(uint8_t *p, float v)
{
    uint16_t h = kvtc_f32_to_f16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* Dequantizes one block and checks it element by element. */
static void check_block(const char *what, uint32_t type, const uint8_t *block, const float *want,
                        uint32_t n)
{
    float got[256];
    kvtc_error err;
    if (!CHECK_OK(kvtc_ggml_dequantize(type, block, got, n, &err), &err))
        return;
    uint32_t bad = 0;
    for (uint32_t i = 0; i < n; i++)
        if (got[i] != want[i] && bad++ < 3)
            CHECK_MSG(false, "%s element %u: got %g, want %g", what, i, got[i], want[i]);
    CHECK_MSG(bad == 0, "%s: %u of %u elements wrong", what, bad, n);
}

/* Q4_0 / Q4_1 / Q5_0 / Q5_1: element j < 16 is the low nibble of qs[j], element
 * j >= 16 the high nibble of qs[j - 16]; the fifth bit of element j is bit j of
 * the little-endian u32 qh. q[] below are the quants we pack. */
static void test_32_element_formats(void)
{
    uint8_t q[32];
    for (int j = 0; j < 32; j++)
        q[j] = (uint8_t)((j * 7 + 3) % 32); /* 5-bit values; the 4-bit formats use q & 15 */

    for (int variant = 0; variant < 4; variant++) {
        bool has_min = variant & 1, has_high = variant & 2;
        static const uint32_t types[] = {KVTC_GGML_Q4_0, KVTC_GGML_Q4_1, KVTC_GGML_Q5_0,
                                         KVTC_GGML_Q5_1};
        static const char *const names[] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1"};
        uint8_t block[24] = {0};
        uint8_t *p = block;
        put_f16(p, 0.5f);
        p += 2;
        if (has_min) {
            put_f16(p, -3.0f);
            p += 2;
        }
        uint32_t qh = 0;
        if (has_high) {
            for (int j = 0; j < 32; j++)
                qh |= (uint32_t)(q[j] >> 4) << j;
            for (int b = 0; b < 4; b++)
                p[b] = (uint8_t)(qh >> (8 * b));
            p += 4;
        }
        for (int j = 0; j < 16; j++)
            p[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
        float want[32];
        for (int j = 0; j < 32; j++) {
            int v = has_high ? q[j] : q[j] & 15;
            want[j] = has_min ? 0.5f * (float)v - 3.0f : 0.5f * (float)(v - (has_high ? 16 : 8));
        }
        check_block(names[variant], types[variant], block, want, 32);
    }

    /* By hand: q[1] = 10 and q[17] = 26 (low nibbles 10 and 10, fifth bits 0 and 1). */
    float out[32];
    uint8_t q4_0[18] = {0};
    put_f16(q4_0, 0.5f);
    q4_0[2 + 1] = 0xa0 | 0x0a; /* element 1 = 10, element 17 = 10 */
    CHECK_OK(kvtc_ggml_dequantize(KVTC_GGML_Q4_0, q4_0, out, 32, NULL), NULL);
    CHECK(out[1] == 1.0f);  /* 0.5 * (10 - 8) */
    CHECK(out[17] == 1.0f);
    CHECK(out[0] == -4.0f); /* 0.5 * (0 - 8) */
    uint8_t q5_1[24] = {0};
    put_f16(q5_1, 0.25f);
    put_f16(q5_1 + 2, 1.0f);
    q5_1[4 + 2] = 0x02; /* qh bit 17: element 17 gets 16 */
    q5_1[8 + 1] = 0xa0 | 0x0a;
    CHECK_OK(kvtc_ggml_dequantize(KVTC_GGML_Q5_1, q5_1, out, 32, NULL), NULL);
    CHECK(out[1] == 3.5f);  /* 0.25 * 10 + 1 */
    CHECK(out[17] == 7.5f); /* 0.25 * 26 + 1 */
}

static void test_q8_0(void)
{
    uint8_t block[34];
    float want[32];
    put_f16(block, 0.125f);
    for (int j = 0; j < 32; j++) {
        int8_t v = (int8_t)(j * 7 - 100);
        block[2 + j] = (uint8_t)v;
        want[j] = 0.125f * v;
    }
    check_block("Q8_0", KVTC_GGML_Q8_0, block, want, 32);
    CHECK(want[0] == -12.5f && want[31] == 14.625f); /* 0.125 * -100, 0.125 * 117 */
}

/* Packs eight 6-bit scales and mins the way Q4_K/Q5_K store them: pairs 0-3
 * in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); pairs 4-7 with their
 * low 4 bits in bytes 8-11 (scale low nibble, min high nibble) and their top
 * 2 bits in the top 2 bits of bytes 0-3 (scales) and 4-7 (mins). */
static void pack_k_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t out[12])
{
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        out[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        out[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
}

/* Q4_K (and Q5_K with a fifth bit): element i is in sub-block i / 32; in its
 * 64-element chunk c = i / 64 it is the low nibble of qs[32 c + i % 32] when
 * i % 64 < 32, else the high nibble; Q5_K adds 16 when bit 2c (low) or 2c+1
 * (high) of qh[i % 32] is set. */
static void test_q45_k(bool five)
{
    static const uint8_t sc[8] = {1, 2, 3, 4, 33, 34, 35, 36};
    static const uint8_t mn[8] = {2, 4, 6, 8, 47, 48, 49, 50};
    uint8_t block[176] = {0};
    put_f16(block, 1.0f);
    put_f16(block + 2, 0.5f);
    pack_k_scales(sc, mn, block + 4);
    uint8_t *qh = block + 16, *qs = block + (five ? 48 : 16);
    uint8_t q[256];
    for (int i = 0; i < 256; i++)
        q[i] = (uint8_t)((i * 13 + 5) % (five ? 32 : 16));
    for (int i = 0; i < 256; i++) {
        int c = i / 64, l = i % 32;
        bool high = i % 64 >= 32;
        qs[32 * c + l] |= (uint8_t)((q[i] & 15) << (high ? 4 : 0));
        if (five && q[i] >= 16)
            qh[l] |= (uint8_t)(1u << (2 * c + high));
    }
    float want[256];
    for (int i = 0; i < 256; i++)
        want[i] = 1.0f * sc[i / 32] * q[i] - 0.5f * mn[i / 32];
    check_block(five ? "Q5_K" : "Q4_K", five ? KVTC_GGML_Q5_K : KVTC_GGML_Q4_K, block, want, 256);

    /* By hand, Q4_K with every quant 3 (low) / 5 (high): element 0 is
     * 1 * 1 * 3 - 0.5 * 2 = 2; element 32 is 2 * 5 - 0.5 * 4 = 8; element 255
     * (sub-block 7, scale 36 = 0b100100, min 50 = 0b110010) is 36 * 5 - 25 = 155. */
    if (!five) {
        memset(qs, 0x53, 128);
        float out[256];
        CHECK_OK(kvtc_ggml_dequantize(KVTC_GGML_Q4_K, block, out, 256, NULL), NULL);
        CHECK(out[0] == 2.0f);
        CHECK(out[32] == 8.0f);
        CHECK(out[255] == 155.0f);
        CHECK(block[4 + 3] == (4 | 2 << 6) && block[4 + 11] == (4 | 2 << 4)); /* the packing */
    }
}

/* Q6_K: element i lies in half h = i / 128, quarter k = (i % 128) / 32, at
 * l = i % 32. Its low 4 bits are the low (k < 2) or high (k >= 2) nibble of
 * ql[64 h + l + 32 (k & 1)], its top 2 bits are bits 2k, 2k+1 of
 * qh[32 h + l]; its scale is scales[8 h + l / 16 + 2 k]; x = d sc (q - 32). */
static void test_q6_k(void)
{
    uint8_t block[210] = {0};
    uint8_t *ql = block, *qh = block + 128;
    int8_t *scales = (int8_t *)(block + 192);
    put_f16(block + 208, 0.25f);
    for (int j = 0; j < 16; j++)
        scales[j] = (int8_t)(j * 9 - 70);
    uint8_t q[256];
    float want[256];
    for (int i = 0; i < 256; i++) {
        q[i] = (uint8_t)((i * 29 + 11) % 64);
        int h = i / 128, k = (i % 128) / 32, l = i % 32;
        ql[64 * h + l + 32 * (k & 1)] |= (uint8_t)((q[i] & 15) << (k >= 2 ? 4 : 0));
        qh[32 * h + l] |= (uint8_t)((q[i] >> 4) << (2 * k));
        want[i] = 0.25f * scales[8 * h + l / 16 + 2 * k] * (float)(q[i] - 32);
    }
    check_block("Q6_K", KVTC_GGML_Q6_K, block, want, 256);
    /* By hand: element 0 has q = 11, scale -70: 0.25 * -70 * (11 - 32) = 367.5. */
    CHECK(want[0] == 367.5f);
}

static void test_floats(void)
{
    uint8_t f16[8], bf16[8];
    const float vals[4] = {1.0f, -2.5f, 65504.0f, 0.000061035156f};
    for (int i = 0; i < 4; i++) {
        put_f16(f16 + 2 * i, vals[i]);
        uint16_t b = kvtc_f32_to_bf16(vals[i] == 65504.0f ? 3.0f : vals[i]);
        bf16[2 * i] = (uint8_t)b;
        bf16[2 * i + 1] = (uint8_t)(b >> 8);
    }
    check_block("F16", KVTC_GGML_F16, f16, vals, 4);
    const float bvals[4] = {1.0f, -2.5f, 3.0f, 0.000061035156f};
    check_block("BF16", KVTC_GGML_BF16, bf16, bvals, 4);
    CHECK(f16[0] == 0x00 && f16[1] == 0x3c); /* 1.0 is 0x3c00 */
    float f32[3] = {1.5f, -0.0f, 7.0f};
    check_block("F32", KVTC_GGML_F32, (const uint8_t *)f32, f32, 3);
}

static void test_refusals(void)
{
    uint8_t block[256] = {0};
    float out[256];
    kvtc_error err;
    CHECK_STATUS(kvtc_ggml_dequantize(KVTC_GGML_Q4_0, block, out, 31, &err), KVTC_E_FORMAT, NULL);
    CHECK_STATUS(kvtc_ggml_dequantize(KVTC_GGML_Q6_K, block, out, 128, &err), KVTC_E_FORMAT, NULL);
    kvtc_status st = kvtc_ggml_dequantize(99, block, out, 32, &err);
    CHECK(st == KVTC_E_UNSUPPORTED || st == KVTC_E_FORMAT);
    /* a tensor whose data is shorter than its element count needs */
    kvtc_gguf_tensor t = {.name = "short", .n_dims = 1, .dims = {64}, .type = KVTC_GGML_Q8_0,
                     .n_elements = 64, .n_bytes = 34, .data = block};
    CHECK_STATUS(kvtc_gguf_tensor_to_f32(&t, out, &err), KVTC_E_FORMAT, NULL);
    CHECK(strstr(err.message, "short") != NULL);
    t.n_bytes = 68;
    CHECK_OK(kvtc_gguf_tensor_to_f32(&t, out, &err), &err);
}

int main(void)
{
    test_32_element_formats();
    test_q8_0();
    test_q45_k(false);
    test_q45_k(true);
    test_q6_k();
    test_floats();
    test_refusals();
    return test_summary(NAME);
}
