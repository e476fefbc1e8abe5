/* Entropy coding: DEFLATE through libdeflate. Compressor and decompressor
 * objects are not thread-safe, so each call makes its own (they are cheap next
 * to a chunk's transform). */
#include "entropy.h"

#include <libdeflate.h>

kvtc_status kvtc_deflate(int level, const void *in, size_t n, uint8_t **out, size_t *out_len,
                         kvtc_error *err)
{
    *out = NULL;
    *out_len = 0;
    if (level < 1 || level > 12)
        return kvtc_fail(err, KVTC_E_INVALID, "DEFLATE level %d out of range 1..12", level);
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(level);
    if (!c)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a DEFLATE compressor");
    size_t cap = libdeflate_deflate_compress_bound(c, n);
    uint8_t *buf = kvtc_malloc(cap);
    if (!buf) {
        libdeflate_free_compressor(c);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %zu compressed bytes", cap);
    }
    size_t len = libdeflate_deflate_compress(c, in, n, buf, cap);
    libdeflate_free_compressor(c);
    if (len == 0) { /* cannot happen with a buffer of the bound's size */
        kvtc_free(buf);
        return kvtc_fail(err, KVTC_E_INVALID, "DEFLATE output exceeded its bound");
    }
    *out = buf;
    *out_len = len;
    return KVTC_OK;
}

kvtc_status kvtc_inflate_exact(const void *in, size_t n, void *out, size_t out_len,
                               kvtc_error *err)
{
    return kvtc_inflate(in, n, out, out_len, NULL, err);
}

kvtc_status kvtc_inflate(const void *in, size_t n, void *out, size_t out_len, size_t *got,
                         kvtc_error *err)
{
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!d)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a DEFLATE decompressor");
    size_t used = 0;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(d, in, n, out, out_len, &used, got);
    libdeflate_free_decompressor(d);
    switch (r) {
    case LIBDEFLATE_SUCCESS:
        break;
    case LIBDEFLATE_SHORT_OUTPUT:
        return kvtc_fail(err, KVTC_E_FORMAT, "DEFLATE chunk inflates to fewer than %zu bytes",
                         out_len);
    case LIBDEFLATE_INSUFFICIENT_SPACE:
        return kvtc_fail(err, KVTC_E_FORMAT, "DEFLATE chunk inflates to more than %zu bytes",
                         out_len);
    default:
        return kvtc_fail(err, KVTC_E_FORMAT, "invalid DEFLATE data");
    }
    if (used != n)
        return kvtc_fail(err, KVTC_E_FORMAT, "%zu stray bytes after a DEFLATE chunk", n - used);
    return KVTC_OK;
}
