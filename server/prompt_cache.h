/* The prompt cache: KV caches of earlier requests, compressed with kvtc and
 * found again through chained hashes of their token blocks.
 *
 * Block i of a token sequence is tokens [i B, (i+1) B) for B = PROMPT_BLOCK;
 * its hash is SHA-256(fingerprint, hash of block i-1, the block's token ids),
 * where the fingerprint names the model and the calibration. Equal hashes
 * thus mean equal tokens from position 0 under the same model and
 * calibration, so conversations that share a system prompt share its blocks.
 *
 * An entry is one compressed stream of a whole prefix (tokens [0, n B)) and
 * the hashes of its n blocks; a lookup finds the entry sharing the most
 * leading blocks with the new tokens, and may restore only those blocks of it.
 *
 * Storage goes through a tier interface (prompt_tier): the RAM tier here, the
 * disk tier (prompt_tier_disk.c) and the Redis Cluster tier
 * (prompt_tier_redis.c) behind it. Tiers below RAM keep entries serialized as
 * a prompt entry (below), verified whenever one is read back. */
#ifndef KVTC_SERVER_PROMPT_CACHE_H
#define KVTC_SERVER_PROMPT_CACHE_H

#include "kvtc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROMPT_BLOCK 64

typedef struct prompt_hash {
    uint8_t b[32];
} prompt_hash;

/* Chained block hashes of tokens[0, n): writes n / PROMPT_BLOCK hashes. */
void prompt_block_hashes(const prompt_hash *fingerprint, const int32_t *tokens, size_t n,
                         prompt_hash *out);

/* What a tier counts, for /metrics. */
typedef struct prompt_tier_stats {
    uint64_t lookups, hits, stores, evictions;
    uint64_t entries, bytes, budget_bytes;
    uint64_t hit_tokens; /* tokens restored from this tier */
    uint64_t verify_failures; /* entries that failed verification: dropped, never served */
    uint64_t errors;          /* failed reads or writes of the store */
    uint64_t moved, ask;      /* Redis Cluster redirections followed */
    uint64_t slot_refreshes;  /* Redis Cluster slot maps loaded */
} prompt_tier_stats;

/* One storage tier. find returns how many leading blocks of `hashes` an entry
 * holds when that is more than `shorter` (else 0: a tier above found as much,
 * so nothing is read) and, when > 0, a copy of that entry's stream
 * (kvtc_malloc, caller frees). put takes a stream of blocks [0, n_blocks) and its hashes
 * (copied). Every function is safe to call from several threads. */
typedef struct prompt_tier prompt_tier;
struct prompt_tier {
    const char *name; /* "ram", "disk", "redis" */
    size_t (*find)(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks, size_t shorter,
                   void **stream, size_t *stream_len);
    kvtc_status (*put)(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                       const void *stream, size_t stream_len, kvtc_error *err);
    void (*stats)(prompt_tier *t, prompt_tier_stats *out);
    void (*destroy)(prompt_tier *t);
};

/* A RAM tier holding at most budget_bytes of streams, evicting the least
 * recently used entry first (a conversation's next turn usually comes soon,
 * and an old idle one is the cheapest to lose). budget 0 stores nothing. */
kvtc_status prompt_tier_ram_create(uint64_t budget_bytes, prompt_tier **out, kvtc_error *err);

/* A disk tier in dir (created if absent) holding at most budget_bytes of entry
 * files; see prompt_tier_disk.c. */
kvtc_status prompt_tier_disk_create(const char *dir, uint64_t budget_bytes,
                                    const prompt_hash *fingerprint, prompt_tier **out,
                                    kvtc_error *err);

/* A Redis Cluster tier reached through seeds "HOST:PORT[,HOST:PORT...]", keys
 * expiring after ttl_s seconds (0: never); see prompt_tier_redis.c. Starts
 * even when no node answers (every lookup is then a miss). */
kvtc_status prompt_tier_redis_create(const char *seeds, uint32_t ttl_s,
                                     const prompt_hash *fingerprint, prompt_tier **out,
                                     kvtc_error *err);

/* ---- what the RAM and disk tiers share: an index of entries ---------------- */

typedef struct prompt_index_entry {
    prompt_hash *hashes; /* kvtc_malloc'd, owned by the index */
    size_t n_blocks;
    uint64_t bytes;
    uint64_t last_used; /* larger: used more recently */
    void *data;         /* the tier's (the RAM tier: the stream) */
} prompt_index_entry;

typedef struct prompt_index {
    prompt_index_entry *e;
    size_t n, cap;
    uint64_t bytes; /* sum of the entries' bytes */
} prompt_index;

/* How many leading blocks of `hashes` entry e holds. */
size_t prompt_index_shared(const prompt_index_entry *e, const prompt_hash *hashes,
                           size_t n_blocks);
/* The entry sharing the most leading blocks (returned; 0: none), the smallest
 * among equals (less to decode); its index in *at. */
size_t prompt_index_best(const prompt_index *x, const prompt_hash *hashes, size_t n_blocks,
                         size_t *at);
/* The index of an entry that blocks [0, n_blocks) with `hashes` make redundant
 * (one holding a prefix of them), or x->n when none does. */
size_t prompt_index_covered(const prompt_index *x, const prompt_hash *hashes, size_t n_blocks);
/* The least recently used entry (x->n > 0). */
size_t prompt_index_lru(const prompt_index *x);
/* Adds e, taking its hashes and data. */
kvtc_status prompt_index_add(prompt_index *x, const prompt_index_entry *e, kvtc_error *err);
/* Removes entry i, freeing its hashes (not its data: the caller's). */
void prompt_index_remove(prompt_index *x, size_t i);

/* ---- a prompt entry: how the disk and Redis tiers store one -------------------
 *
 *   0   8       magic "KVTCPCE1"
 *   8   u32     n_blocks
 *   12  u32     0 (reserved)
 *   16  u64     stream_len
 *   24  32      fingerprint of the model and calibration
 *   56  32      SHA-256 of the stream
 *   88  32 × n  the chained block hashes of blocks [0, n)
 *   ..  32      SHA-256 of all the header bytes before it
 *   ..          the kvtc stream, stream_len bytes
 *
 * The header alone can be checked (the disk tier's index at startup); a full
 * check adds the stream's SHA-256 and the kvtc stream's own header (its CRCs
 * are checked again as it decodes). All integers little-endian. */
#define PROMPT_ENTRY_FIXED 88
#define PROMPT_ENTRY_HEADER(n) (PROMPT_ENTRY_FIXED + 32 * (size_t)(n) + 32)

/* The header for a stream of blocks [0, n_blocks) (PROMPT_ENTRY_HEADER bytes,
 * kvtc_malloc'd). */
kvtc_status prompt_entry_header(const prompt_hash *fingerprint, const prompt_hash *hashes,
                                size_t n_blocks, const void *stream, size_t stream_len,
                                uint8_t **out, kvtc_error *err);
/* Checks a header's first PROMPT_ENTRY_FIXED bytes (magic, a sane n_blocks, the
 * fingerprint) and gives the full header's length. */
bool prompt_entry_fixed(const uint8_t *data, const prompt_hash *fingerprint, size_t *header_len,
                        uint64_t *stream_len);
/* Whether those bytes begin an entry of another model or calibration. */
bool prompt_entry_foreign(const uint8_t *data, const prompt_hash *fingerprint);
/* Checks a whole header (header_len bytes) and gives a copy of its hashes. */
bool prompt_entry_hashes(const uint8_t *data, size_t header_len, prompt_hash **hashes,
                         size_t *n_blocks);
/* Checks a whole entry of len bytes, and that its first want_blocks hashes
 * are `want`; on success *stream points into data. */
bool prompt_entry_verify(const uint8_t *data, size_t len, const prompt_hash *fingerprint,
                         const prompt_hash *want, size_t want_blocks, const uint8_t **stream,
                         size_t *stream_len);
/* An entry read back from a tier as a hit of `blocks` blocks: verified, its
 * stream copied (kvtc_malloc) into *stream, the hit or the verification
 * failure counted in st. PROMPT_NO_MEMORY counts nothing (a miss). */
typedef enum { PROMPT_ACCEPTED, PROMPT_REJECTED, PROMPT_NO_MEMORY } prompt_accept;
prompt_accept prompt_entry_accept(const uint8_t *data, size_t len, const prompt_hash *fingerprint,
                                  const prompt_hash *want, size_t blocks, prompt_tier_stats *st,
                                  void **stream, size_t *stream_len);

#endif /* KVTC_SERVER_PROMPT_CACHE_H */
