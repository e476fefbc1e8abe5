/* Bit packing of quantization codes, LSB-first within each byte. */
#include "kvtc_internal.h"

#include <string.h>

/* Widths that do not divide 8 (3): code i at stream bit i * bits, crossing bytes. */
static void pack_any(const uint8_t *codes, size_t n, uint32_t bits, uint8_t *out)
{
    memset(out, 0, (n * bits + 7) / 8);
    for (size_t i = 0; i < n; i++) {
        size_t at = i * bits;
        uint32_t v = (uint32_t)codes[i] << (at % 8);
        out[at / 8] |= (uint8_t)v;
        if (v >> 8)
            out[at / 8 + 1] |= (uint8_t)(v >> 8);
    }
}

static void unpack_any(const uint8_t *in, size_t n, uint32_t bits, uint8_t *codes)
{
    uint32_t mask = (1u << bits) - 1u;
    size_t i = 0;
    if (bits == 3) /* 8 codes in each 3 whole bytes */
        for (; i + 8 <= n; i += 8) {
            const uint8_t *b = in + i / 8 * 3;
            uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16;
            for (int j = 0; j < 8; j++)
                codes[i + j] = (uint8_t)((v >> (3 * j)) & 7u);
        }
    for (; i < n; i++) {
        size_t at = i * bits;
        uint32_t v = in[at / 8];
        if (at % 8 + bits > 8)
            v |= (uint32_t)in[at / 8 + 1] << 8;
        codes[i] = (uint8_t)((v >> (at % 8)) & mask);
    }
}

void kvtc_pack_bits(const uint8_t *codes, size_t n, uint32_t bits, uint8_t *out)
{
    if (bits == 8) {
        memcpy(out, codes, n);
        return;
    }
    if (8 % bits) {
        pack_any(codes, n, bits, out);
        return;
    }
    uint32_t per_byte = 8 / bits;
    size_t n_bytes = (n * bits + 7) / 8;
    memset(out, 0, n_bytes);
    for (size_t i = 0; i < n; i++)
        out[i / per_byte] |= (uint8_t)(codes[i] << ((i % per_byte) * bits));
}

void kvtc_unpack_bits(const uint8_t *in, size_t n, uint32_t bits, uint8_t *codes)
{
    if (bits == 8) {
        memcpy(codes, in, n);
        return;
    }
    if (8 % bits) {
        unpack_any(in, n, bits, codes);
        return;
    }
    uint32_t per_byte = 8 / bits;
    uint8_t mask = (uint8_t)((1u << bits) - 1u);
    size_t i = 0;
    /* whole bytes with a constant count per byte (no division per code) */
    if (bits == 4)
        for (; i + 2 <= n; i += 2) {
            uint8_t v = in[i / 2];
            codes[i] = v & 15u;
            codes[i + 1] = v >> 4;
        }
    else if (bits == 1)
        for (; i + 8 <= n; i += 8) {
            uint8_t v = in[i / 8];
            for (int j = 0; j < 8; j++)
                codes[i + j] = (v >> j) & 1u;
        }
    else if (bits == 2)
        for (; i + 4 <= n; i += 4) {
            uint8_t v = in[i / 4];
            codes[i] = v & 3u;
            codes[i + 1] = (v >> 2) & 3u;
            codes[i + 2] = (v >> 4) & 3u;
            codes[i + 3] = v >> 6;
        }
    for (; i < n; i++)
        codes[i] = (uint8_t)((in[i / per_byte] >> ((i % per_byte) * bits)) & mask);
}
