/* The .kvtc stream container: header, plans, block table, chunk payloads.
 * Byte-level specification: docs/FORMAT.md, section 1. */
#ifndef KVTC_CONTAINER_H
#define KVTC_CONTAINER_H

#include "kvtc_internal.h"

/* The newest version this library reads. It writes the oldest one that can
 * hold the stream: 1, or 2 when a block has escaped tokens. */
#define KVTC_STREAM_VERSION 2u
/* Block table encodings: 0 raw, 1 coded, 2 coded with escaped tokens (v2). */
#define KVTC_ENCODING_CODED_ESCAPES 2u
#define KVTC_MAX_BLOCK_TOKENS 65536u
#define KVTC_BLOCK_ENTRY_BYTES 36u
/* flags bit 0 (v2): the block table is followed by n_tokens i32 token ids. */
#define KVTC_FLAG_TOKEN_IDS 1u
/* Largest token position a stream may hold: kvtc_cache_create's limit on pos0,
 * so that every block of a stream can be decoded into a cache of its own. */

typedef enum kvtc_block_encoding {
    KVTC_BLOCK_RAW = 0,  /* tokens bit-exact in the cache dtype */
    KVTC_BLOCK_CODED = 1 /* transform-coded, one DEFLATE chunk per kind */
} kvtc_block_encoding;

/* One block of consecutive tokens; chunk k holds kind k (keys, then values). */
typedef struct kvtc_block {
    uint32_t first;    /* index of its first token in the stream */
    uint32_t n_tokens;
    kvtc_block_encoding encoding;
    bool escapes;      /* coded, and its chunks end with an escape list (v2) */
    uint64_t length[2];
    uint32_t crc[2];        /* CRC-32 of the chunk's stored bytes */
    const uint8_t *data[2]; /* parsed: points into the stream; written: the bytes to store */
} kvtc_block;

typedef struct kvtc_stream {
    uint32_t version;
    kvtc_model_shape shape; /* normalized */
    kvtc_dtype dtype;
    int64_t pos0;
    uint32_t n_tokens;
    uint32_t sinks, window; /* raw tokens stored at each end */
    uint32_t block_tokens;  /* most tokens in one coded block */
    uint8_t fingerprint[32];
    char model[64];
    kvtc_plan *plan[2];     /* owned */
    uint32_t n_blocks;
    kvtc_block *blocks;     /* owned */
    int32_t *token_ids;     /* owned: n_tokens ids (flags bit 0), or NULL */
    uint64_t header_bytes;  /* set by parse and serialize */
    uint64_t total_bytes;
} kvtc_stream;

/* Parses and validates the whole header of a stream of `len` bytes: magic,
 * version, header CRC, every field, the plans, and a block table that covers
 * [0, n_tokens) with chunk sizes that add up to exactly `len`. Payloads are not
 * read. On success *s owns its plans and blocks (kvtc_stream_release). */
kvtc_status kvtc_stream_parse(const void *data, size_t len, kvtc_stream *s, kvtc_error *err);
void kvtc_stream_release(kvtc_stream *s);

/* Writes header and payloads (blocks[i].data) into one new buffer freed with
 * kvtc_buffer_free; sets s->header_bytes and s->total_bytes. */
kvtc_status kvtc_stream_serialize(kvtc_stream *s, void **out, size_t *out_len, kvtc_error *err);

/* True if tokens at positions [pos0, pos0 + n) all lie in [0, KVTC_MAX_POSITION]. */
static inline bool kvtc_positions_valid(int64_t pos0, uint32_t n)
{
    return pos0 >= 0 && pos0 <= KVTC_MAX_POSITION && (n == 0 || pos0 + n - 1 <= KVTC_MAX_POSITION);
}

/* Bytes of a raw chunk (one kind) of n tokens. */
uint64_t kvtc_raw_chunk_bytes(const kvtc_model_shape *shape, kvtc_dtype dtype, uint32_t n);
/* Bytes one group takes in a coded chunk of n tokens before DEFLATE: n fp16
 * shifts, n fp16 scales and the packed codes (0 for a dropped group). */
uint64_t kvtc_group_chunk_bytes(const kvtc_group *g, uint32_t n);
/* The whole coded chunk of n tokens before DEFLATE: its groups in order. */
uint64_t kvtc_coded_chunk_bytes(const kvtc_plan *plan, uint32_t n);
/* Bytes the header spends on plan records and on one block's table entry. */
uint64_t kvtc_plan_record_bytes(const kvtc_plan *plan);
/* Bytes of a laid-out stream (its chunk lengths set) that its coded tokens
 * pay for (chunks, table entries, the plans) and that its raw blocks take
 * (chunks, table entries): kvtc_stream_info's compressed_bytes and raw_bytes. */
void kvtc_stream_bytes(const kvtc_stream *s, uint64_t *compressed, uint64_t *raw);

#endif /* KVTC_CONTAINER_H */
