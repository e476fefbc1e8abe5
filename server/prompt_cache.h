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
 * Storage goes through a tier interface (prompt_tier) so that tiers below RAM
 * (disk, a shared store) can be chained behind it; only the RAM tier exists. */
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
} prompt_tier_stats;

/* One storage tier. find returns how many leading blocks of `hashes` an entry
 * holds (0: none) and, when > 0, a copy of that entry's stream (kvtc_malloc,
 * caller frees). put takes a stream of blocks [0, n_blocks) and its hashes
 * (copied). Every function is safe to call from several threads. */
typedef struct prompt_tier prompt_tier;
struct prompt_tier {
    const char *name; /* "ram", later "disk", "redis" */
    size_t (*find)(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks, void **stream,
                   size_t *stream_len);
    kvtc_status (*put)(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                       const void *stream, size_t stream_len, kvtc_error *err);
    void (*stats)(prompt_tier *t, prompt_tier_stats *out);
    void (*destroy)(prompt_tier *t);
};

/* A RAM tier holding at most budget_bytes of streams, evicting the least
 * recently used entry first (a conversation's next turn usually comes soon,
 * and an old idle one is the cheapest to lose). budget 0 stores nothing. */
kvtc_status prompt_tier_ram_create(uint64_t budget_bytes, prompt_tier **out, kvtc_error *err);

#endif /* KVTC_SERVER_PROMPT_CACHE_H */
