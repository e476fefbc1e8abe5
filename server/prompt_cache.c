/* Chained block hashes and the RAM tier of the prompt cache. */
#include "prompt_cache.h"
#include "kvtc_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

void prompt_block_hashes(const prompt_hash *fingerprint, const int32_t *tokens, size_t n,
                         prompt_hash *out)
{
    /* fingerprint, previous hash, then the block's ids little-endian */
    uint8_t buf[64 + 4 * PROMPT_BLOCK];
    memcpy(buf, fingerprint->b, 32);
    memset(buf + 32, 0, 32);
    for (size_t i = 0; i < n / PROMPT_BLOCK; i++) {
        for (size_t j = 0; j < PROMPT_BLOCK; j++) {
            uint32_t v = (uint32_t)tokens[i * PROMPT_BLOCK + j];
            for (int k = 0; k < 4; k++)
                buf[64 + 4 * j + (size_t)k] = (uint8_t)(v >> (8 * k));
        }
        kvtc_sha256(buf, sizeof buf, out[i].b);
        memcpy(buf + 32, out[i].b, 32);
    }
}

/* ---- the RAM tier ----------------------------------------------------------- */

typedef struct ram_entry {
    prompt_hash *hashes;
    size_t n_blocks;
    void *stream;
    size_t stream_len;
    uint64_t last_used; /* tick of the last find or put */
} ram_entry;

typedef struct ram_tier {
    prompt_tier base;
    pthread_mutex_t lock;
    ram_entry *entries;
    size_t n, cap;
    uint64_t tick;
    prompt_tier_stats st;
} ram_tier;

static size_t shared_blocks(const ram_entry *e, const prompt_hash *hashes, size_t n_blocks)
{
    size_t k = 0;
    size_t max = e->n_blocks < n_blocks ? e->n_blocks : n_blocks;
    while (k < max && memcmp(e->hashes[k].b, hashes[k].b, 32) == 0)
        k++;
    return k;
}

static size_t ram_find(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                       void **stream, size_t *stream_len)
{
    ram_tier *r = (ram_tier *)t;
    pthread_mutex_lock(&r->lock);
    r->st.lookups++;
    size_t best = 0, best_i = 0;
    for (size_t i = 0; i < r->n; i++) {
        size_t k = shared_blocks(&r->entries[i], hashes, n_blocks);
        /* among equals the shortest stream: less to decode */
        if (k > best || (k == best && k > 0 &&
                         r->entries[i].stream_len < r->entries[best_i].stream_len)) {
            best = k;
            best_i = i;
        }
    }
    if (best > 0) {
        ram_entry *e = &r->entries[best_i];
        void *copy = kvtc_malloc(e->stream_len);
        if (copy) {
            memcpy(copy, e->stream, e->stream_len);
            *stream = copy;
            *stream_len = e->stream_len;
            e->last_used = ++r->tick;
            r->st.hits++;
            r->st.hit_tokens += (uint64_t)best * PROMPT_BLOCK;
        } else {
            best = 0; /* out of memory: a miss, the request recomputes */
        }
    }
    pthread_mutex_unlock(&r->lock);
    return best;
}

static void ram_drop(ram_tier *r, size_t i)
{
    r->st.bytes -= r->entries[i].stream_len;
    kvtc_free(r->entries[i].hashes);
    kvtc_free(r->entries[i].stream);
    r->entries[i] = r->entries[--r->n];
}

static kvtc_status ram_put(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                           const void *stream, size_t stream_len, kvtc_error *err)
{
    ram_tier *r = (ram_tier *)t;
    if (n_blocks == 0 || stream_len > r->st.budget_bytes)
        return KVTC_OK; /* nothing to keep, or more than the whole budget */
    ram_entry e = {.n_blocks = n_blocks, .stream_len = stream_len};
    e.hashes = kvtc_malloc(n_blocks * sizeof *hashes);
    e.stream = kvtc_malloc(stream_len);
    if (!e.hashes || !e.stream) {
        kvtc_free(e.hashes);
        kvtc_free(e.stream);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    memcpy(e.hashes, hashes, n_blocks * sizeof *hashes);
    memcpy(e.stream, stream, stream_len);
    pthread_mutex_lock(&r->lock);
    /* an entry this one extends (or equals) is redundant: drop it */
    for (size_t i = 0; i < r->n;) {
        if (r->entries[i].n_blocks <= n_blocks &&
            shared_blocks(&r->entries[i], hashes, n_blocks) == r->entries[i].n_blocks)
            ram_drop(r, i);
        else
            i++;
    }
    while (r->n > 0 && r->st.bytes + stream_len > r->st.budget_bytes) {
        size_t lru = 0;
        for (size_t i = 1; i < r->n; i++)
            if (r->entries[i].last_used < r->entries[lru].last_used)
                lru = i;
        ram_drop(r, lru);
        r->st.evictions++;
    }
    kvtc_status st = KVTC_OK;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        ram_entry *grown = realloc(r->entries, cap * sizeof *grown);
        if (grown) {
            r->entries = grown;
            r->cap = cap;
        } else {
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
        }
    }
    if (st == KVTC_OK) {
        e.last_used = ++r->tick;
        r->entries[r->n++] = e;
        r->st.bytes += stream_len;
        r->st.stores++;
    }
    pthread_mutex_unlock(&r->lock);
    if (st != KVTC_OK) {
        kvtc_free(e.hashes);
        kvtc_free(e.stream);
    }
    return st;
}

static void ram_stats(prompt_tier *t, prompt_tier_stats *out)
{
    ram_tier *r = (ram_tier *)t;
    pthread_mutex_lock(&r->lock);
    *out = r->st;
    out->entries = r->n;
    pthread_mutex_unlock(&r->lock);
}

static void ram_destroy(prompt_tier *t)
{
    ram_tier *r = (ram_tier *)t;
    if (!r)
        return;
    while (r->n > 0)
        ram_drop(r, r->n - 1);
    free(r->entries);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

kvtc_status prompt_tier_ram_create(uint64_t budget_bytes, prompt_tier **out, kvtc_error *err)
{
    ram_tier *r = calloc(1, sizeof *r);
    if (!r)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    pthread_mutex_init(&r->lock, NULL);
    r->base = (prompt_tier){"ram", ram_find, ram_put, ram_stats, ram_destroy};
    r->st.budget_bytes = budget_bytes;
    *out = &r->base;
    return KVTC_OK;
}
