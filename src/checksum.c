/* Checksums: CRC-32 (libdeflate) for every header and chunk, SHA-256
 * (nettle, which uses the CPU's SHA instructions where it has them) for the
 * calibration fingerprint. */
#include "kvtc_internal.h"

#include <libdeflate.h>
#include <nettle/sha2.h>

uint32_t kvtc_crc32(const void *data, size_t len) { return libdeflate_crc32(0, data, len); }

void kvtc_sha256(const void *data, size_t len, uint8_t out[32])
{
    kvtc_sha256_stepwise(data, len, out, NULL);
}

/* SHA-256 of a large buffer in steps, calling after(data, done) behind each
 * step: a caller reading a file mapping lets its pages go there. */
enum { CHECKSUM_STEP = 4 << 20 };

void kvtc_sha256_stepwise(const void *data, size_t len, uint8_t out[32], kvtc_consumed_fn after)
{
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    for (size_t done = 0; done < len;) {
        size_t n = len - done < CHECKSUM_STEP ? len - done : CHECKSUM_STEP;
        sha256_update(&ctx, n, (const unsigned char *)data + done);
        done += n;
        if (after)
            after(data, done);
    }
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

void kvtc_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}
