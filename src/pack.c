/* Bit packing of quantization codes, LSB-first within each byte. */
#include "kvtc_internal.h"

#include <string.h>

void kvtc_pack_bits(const uint8_t *codes, size_t n, uint32_t bits, uint8_t *out)
{
    if (bits == 8) {
        memcpy(out, codes, n);
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
    uint32_t per_byte = 8 / bits;
    uint8_t mask = (uint8_t)((1u << bits) - 1u);
    for (size_t i = 0; i < n; i++)
        codes[i] = (uint8_t)((in[i / per_byte] >> ((i % per_byte) * bits)) & mask);
}
