/* Chained block hashes, the index and entry format the tiers share, and the
 * RAM tier of the prompt cache. */
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

/* ---- the index -------------------------------------------------------------- */

size_t prompt_index_shared(const prompt_index_entry *e, const prompt_hash *hashes,
                           size_t n_blocks)
{
    size_t k = 0;
    size_t max = e->n_blocks < n_blocks ? e->n_blocks : n_blocks;
    while (k < max && memcmp(e->hashes[k].b, hashes[k].b, 32) == 0)
        k++;
    return k;
}

size_t prompt_index_best(const prompt_index *x, const prompt_hash *hashes, size_t n_blocks,
                         size_t *at)
{
    size_t best = 0, best_i = 0;
    for (size_t i = 0; i < x->n; i++) {
        size_t k = prompt_index_shared(&x->e[i], hashes, n_blocks);
        if (k > best || (k == best && k > 0 && x->e[i].bytes < x->e[best_i].bytes)) {
            best = k;
            best_i = i;
        }
    }
    *at = best_i;
    return best;
}

size_t prompt_index_covered(const prompt_index *x, const prompt_hash *hashes, size_t n_blocks)
{
    for (size_t i = 0; i < x->n; i++)
        if (x->e[i].n_blocks <= n_blocks &&
            prompt_index_shared(&x->e[i], hashes, n_blocks) == x->e[i].n_blocks)
            return i;
    return x->n;
}

size_t prompt_index_lru(const prompt_index *x)
{
    size_t lru = 0;
    for (size_t i = 1; i < x->n; i++)
        if (x->e[i].last_used < x->e[lru].last_used)
            lru = i;
    return lru;
}

kvtc_status prompt_index_add(prompt_index *x, const prompt_index_entry *e, kvtc_error *err)
{
    if (x->n == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 16;
        prompt_index_entry *grown = realloc(x->e, cap * sizeof *grown);
        if (!grown)
            return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
        x->e = grown;
        x->cap = cap;
    }
    x->e[x->n++] = *e;
    x->bytes += e->bytes;
    return KVTC_OK;
}

void prompt_index_remove(prompt_index *x, size_t i)
{
    x->bytes -= x->e[i].bytes;
    kvtc_free(x->e[i].hashes);
    x->e[i] = x->e[--x->n];
}

/* ---- the prompt entry ------------------------------------------------------ */

static const char entry_magic[8] = {'K', 'V', 'T', 'C', 'P', 'C', 'E', '1'};

kvtc_status prompt_entry_header(const prompt_hash *fingerprint, const prompt_hash *hashes,
                                size_t n_blocks, const void *stream, size_t stream_len,
                                uint8_t **out, kvtc_error *err)
{
    uint8_t sum[32];
    kvtc_sha256(stream, stream_len, sum);
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_put_bytes(&w, entry_magic, 8);
    kvtc_put_u32(&w, (uint32_t)n_blocks);
    kvtc_put_u32(&w, 0);
    kvtc_put_u64(&w, stream_len);
    kvtc_put_bytes(&w, fingerprint->b, 32);
    kvtc_put_bytes(&w, sum, 32);
    kvtc_put_bytes(&w, hashes, 32 * n_blocks);
    if (!w.failed) {
        kvtc_sha256(w.buf, w.len, sum);
        kvtc_put_bytes(&w, sum, 32);
    }
    if (w.failed) {
        kvtc_writer_free(&w);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    *out = w.buf; /* the writer's buffer is kvtc_malloc'd */
    return KVTC_OK;
}

/* At most 2^20 blocks (64 Mi tokens): a bound that keeps header sizes sane. */
#define ENTRY_MAX_BLOCKS (1u << 20)

bool prompt_entry_fixed(const uint8_t *data, const prompt_hash *fingerprint, size_t *header_len,
                        uint64_t *stream_len)
{
    kvtc_reader r;
    kvtc_reader_init(&r, data, PROMPT_ENTRY_FIXED);
    const void *magic = kvtc_get_bytes(&r, 8);
    uint32_t n = kvtc_get_u32(&r);
    uint32_t reserved = kvtc_get_u32(&r);
    *stream_len = kvtc_get_u64(&r);
    const void *fp = kvtc_get_bytes(&r, 32);
    if (r.overrun || memcmp(magic, entry_magic, 8) != 0 || n == 0 || n > ENTRY_MAX_BLOCKS ||
        reserved != 0 || memcmp(fp, fingerprint->b, 32) != 0)
        return false;
    *header_len = PROMPT_ENTRY_HEADER(n);
    return true;
}

bool prompt_entry_foreign(const uint8_t *data, const prompt_hash *fingerprint)
{
    return memcmp(data, entry_magic, 8) == 0 && memcmp(data + 24, fingerprint->b, 32) != 0;
}

bool prompt_entry_hashes(const uint8_t *data, size_t header_len, prompt_hash **hashes,
                         size_t *n_blocks)
{
    uint8_t sum[32];
    kvtc_sha256(data, header_len - 32, sum);
    if (memcmp(sum, data + header_len - 32, 32) != 0)
        return false;
    size_t n = (header_len - 32 - PROMPT_ENTRY_FIXED) / 32;
    *hashes = kvtc_malloc_array(n, sizeof **hashes);
    if (!*hashes)
        return false;
    memcpy(*hashes, data + PROMPT_ENTRY_FIXED, n * sizeof **hashes);
    *n_blocks = n;
    return true;
}

bool prompt_entry_verify(const uint8_t *data, size_t len, const prompt_hash *fingerprint,
                         const prompt_hash *want, size_t want_blocks, const uint8_t **stream,
                         size_t *stream_len)
{
    size_t header_len;
    uint64_t slen;
    if (len < PROMPT_ENTRY_FIXED || !prompt_entry_fixed(data, fingerprint, &header_len, &slen) ||
        len < header_len || len - header_len != slen)
        return false;
    size_t n = (header_len - 32 - PROMPT_ENTRY_FIXED) / 32;
    uint8_t sum[32];
    kvtc_sha256(data, header_len - 32, sum);
    if (memcmp(sum, data + header_len - 32, 32) != 0 || want_blocks > n ||
        memcmp(data + PROMPT_ENTRY_FIXED, want, 32 * want_blocks) != 0)
        return false;
    kvtc_sha256(data + header_len, (size_t)slen, sum);
    if (memcmp(sum, data + 56, 32) != 0)
        return false;
    /* the kvtc stream's own header CRC, and that it holds the blocks */
    kvtc_stream_info info = {.struct_size = sizeof info};
    if (kvtc_stream_info_get(data + header_len, (size_t)slen, &info, NULL) != KVTC_OK ||
        info.pos0 != 0 || info.n_tokens < (uint64_t)n * PROMPT_BLOCK)
        return false;
    *stream = data + header_len;
    *stream_len = (size_t)slen;
    return true;
}

prompt_accept prompt_entry_accept(const uint8_t *data, size_t len, const prompt_hash *fingerprint,
                                  const prompt_hash *want, size_t blocks, prompt_tier_stats *st,
                                  void **stream, size_t *stream_len)
{
    const uint8_t *s;
    size_t slen;
    if (!prompt_entry_verify(data, len, fingerprint, want, blocks, &s, &slen)) {
        st->verify_failures++;
        return PROMPT_REJECTED;
    }
    void *copy = kvtc_malloc(slen);
    if (!copy)
        return PROMPT_NO_MEMORY;
    memcpy(copy, s, slen);
    *stream = copy;
    *stream_len = slen;
    st->hits++;
    st->hit_tokens += (uint64_t)blocks * PROMPT_BLOCK;
    return PROMPT_ACCEPTED;
}

/* ---- the RAM tier ----------------------------------------------------------- */

typedef struct ram_tier {
    prompt_tier base;
    pthread_mutex_t lock;
    prompt_index x; /* data: the stream, bytes: its length */
    uint64_t tick;
    prompt_tier_stats st;
} ram_tier;

static size_t ram_find(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                       size_t shorter, void **stream, size_t *stream_len)
{
    ram_tier *r = (ram_tier *)t;
    pthread_mutex_lock(&r->lock);
    r->st.lookups++;
    size_t at;
    size_t best = prompt_index_best(&r->x, hashes, n_blocks, &at);
    if (best <= shorter)
        best = 0;
    if (best > 0) {
        prompt_index_entry *e = &r->x.e[at];
        void *copy = kvtc_malloc(e->bytes);
        if (copy) {
            memcpy(copy, e->data, e->bytes);
            *stream = copy;
            *stream_len = e->bytes;
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
    kvtc_free(r->x.e[i].data);
    prompt_index_remove(&r->x, i);
}

static kvtc_status ram_put(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                           const void *stream, size_t stream_len, kvtc_error *err)
{
    ram_tier *r = (ram_tier *)t;
    if (n_blocks == 0 || stream_len > r->st.budget_bytes)
        return KVTC_OK; /* nothing to keep, or more than the whole budget */
    prompt_index_entry e = {.n_blocks = n_blocks, .bytes = stream_len};
    e.hashes = kvtc_malloc(n_blocks * sizeof *hashes);
    e.data = kvtc_malloc(stream_len);
    if (!e.hashes || !e.data) {
        kvtc_free(e.hashes);
        kvtc_free(e.data);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    memcpy(e.hashes, hashes, n_blocks * sizeof *hashes);
    memcpy(e.data, stream, stream_len);
    pthread_mutex_lock(&r->lock);
    /* an entry this one extends (or equals) is redundant: drop it */
    for (size_t i; (i = prompt_index_covered(&r->x, hashes, n_blocks)) < r->x.n;)
        ram_drop(r, i);
    while (r->x.n > 0 && r->x.bytes + stream_len > r->st.budget_bytes) {
        ram_drop(r, prompt_index_lru(&r->x));
        r->st.evictions++;
    }
    e.last_used = ++r->tick;
    kvtc_status st = prompt_index_add(&r->x, &e, err);
    if (st == KVTC_OK)
        r->st.stores++;
    pthread_mutex_unlock(&r->lock);
    if (st != KVTC_OK) {
        kvtc_free(e.hashes);
        kvtc_free(e.data);
    }
    return st;
}

static void ram_stats(prompt_tier *t, prompt_tier_stats *out)
{
    ram_tier *r = (ram_tier *)t;
    pthread_mutex_lock(&r->lock);
    *out = r->st;
    out->entries = r->x.n;
    out->bytes = r->x.bytes;
    pthread_mutex_unlock(&r->lock);
}

static void ram_destroy(prompt_tier *t)
{
    ram_tier *r = (ram_tier *)t;
    if (!r)
        return;
    while (r->x.n > 0)
        ram_drop(r, r->x.n - 1);
    free(r->x.e);
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
