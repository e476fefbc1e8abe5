/* DEFLATE (raw, RFC 1951) of the chunks of a .kvtc stream, via libdeflate. */
#ifndef KVTC_ENTROPY_H
#define KVTC_ENTROPY_H

#include "kvtc_internal.h"

/* A DEFLATE stream inflates to at most 1032 bytes per byte (a 258-byte match
 * in 2 bits); a chunk claiming more is rejected before anything is allocated. */
#define KVTC_DEFLATE_MAX_RATIO 1032u

/* Compresses n bytes at `level` (1..12) into a new buffer (*out, freed with
 * kvtc_free). Allocates its own compressor: safe to call from any thread. */
kvtc_status kvtc_deflate(int level, const void *in, size_t n, uint8_t **out, size_t *out_len,
                         kvtc_error *err);

/* Inflates `in` into exactly out_len bytes. A stream that is malformed, inflates
 * to any other size, or has bytes after its final block is KVTC_E_FORMAT. Safe
 * to call from any thread. */
kvtc_status kvtc_inflate_exact(const void *in, size_t n, void *out, size_t out_len,
                               kvtc_error *err);
/* The same with *got receiving the inflated size, which may be below out_len
 * (got NULL: exactly out_len, as kvtc_inflate_exact). */
kvtc_status kvtc_inflate(const void *in, size_t n, void *out, size_t out_len, size_t *got,
                         kvtc_error *err);

#endif /* KVTC_ENTROPY_H */
