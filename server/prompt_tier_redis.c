/* The Redis Cluster tier of the prompt cache: entries shared by every server
 * of a fleet, so a conversation begun on one server resumes on another.
 *
 * Keys. Every value is namespaced by the chained block hashes themselves
 * (they start from the model and calibration fingerprint), H below being the
 * 64 hex digits of one block hash:
 *   kvtc:e:{H}  a prompt entry (prompt_cache.h: header with the hashes and
 *               SHA-256 sums, then the kvtc stream) whose LAST block hash is H
 *   kvtc:b:{H}  for every block of a stored entry: the H of an entry holding
 *               that block (the latest stored)
 * Equal chained hashes mean equal tokens from position 0, so kvtc:b:{h_i}
 * existing means some entry holds blocks [0, i]. A longest-prefix lookup of a
 * prompt with block hashes h_0..h_{n-1} asks kvtc:b:{h_i} for i = n-1 down to
 * 0 and fetches the entry the first answer names; the entry is verified
 * exactly as a disk entry is (hashes, SHA-256 sums, the stream's header), and
 * its first i+1 hashes must be h_0..h_i, or it is a miss (counted) and the
 * next shorter index key is tried. The hash tag {H} puts an entry and the
 * index key of its last block in one slot, on one node.
 *
 * A store writes the entry, then its index keys, then deletes the entries
 * of its shorter prefixes (kvtc:e:{h_j}, j < n-1), which it makes redundant:
 * an index key names an entry holding its block, and every block of those is
 * this entry's, whose index keys now name it.
 *
 * Budget. Every key is written with a TTL (--redis-ttl, default a day) so
 * that abandoned conversations leave by themselves; the memory bound is
 * Redis's own: run the nodes with maxmemory and maxmemory-policy allkeys-lru
 * (scripts/redis-cluster.sh does), which evicts the least recently used keys,
 * the same policy as the RAM and disk tiers. An index key whose entry was
 * evicted is just a miss.
 *
 * The cluster layer (hiredis 0.14 has none): the slot of a key is CRC16 of
 * the key (of its hash tag when it has one) mod 16384; the slot map comes from
 * CLUSTER SLOTS of any node that answers (seeds first); a command goes to the
 * master of its slot over one connection per node; MOVED updates that slot
 * and reloads the whole map before the next lookup or store; ASK sends ASKING
 * then the command to the node named, once. A node that cannot be reached is
 * left alone for a second and the map is reloaded (a replica that took over
 * shows up there), and the operation is a miss: the request recomputes. Every
 * command has a timeout. All of it runs under one lock; the callers are the
 * engine worker (lookups) and the tier writer (stores). */
#include "prompt_cache.h"
#include "kvtc_internal.h"

#include <hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_SLOTS 16384
#define MAX_NODES 64
#define CONNECT_TIMEOUT_MS 250
#define COMMAND_TIMEOUT_MS 1000
#define NODE_BACKOFF_S 1.0    /* after a failed connection */
#define REFRESH_BACKOFF_S 0.5 /* between failed slot-map loads */
#define MAX_TRIES 5           /* redirections or retries of one command */

typedef struct redis_node {
    char host[64];
    int port;
    redisContext *c;
    double down_until;
} redis_node;

typedef struct redis_tier {
    prompt_tier base;
    pthread_mutex_t lock;
    prompt_hash fingerprint;
    uint32_t ttl_s;
    redis_node nodes[MAX_NODES];
    size_t n_nodes, n_seeds; /* nodes[0, n_seeds) are the seeds */
    int16_t slots[N_SLOTS];  /* the master's node index, -1: unknown */
    bool map_stale;
    double last_failed_refresh;
    prompt_tier_stats st;
} redis_tier;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- key slots ------------------------------------------------------------- */

/* CRC-16/XMODEM (polynomial 0x1021, initial 0), the cluster's key hash. */
static uint16_t crc16(const char *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)((uint8_t)p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

/* The slot of a key: of the text between the first '{' and the next '}' when
 * that is not empty, else of the whole key. */
static unsigned key_slot(const char *key, size_t n)
{
    const char *open = memchr(key, '{', n);
    if (open) {
        const char *close = memchr(open + 1, '}', n - (size_t)(open + 1 - key));
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (N_SLOTS - 1);
    }
    return crc16(key, n) & (N_SLOTS - 1);
}

/* ---- nodes and the slot map --------------------------------------------------- */

static int node_index(redis_tier *r, const char *host, size_t host_len, int port)
{
    for (size_t i = 0; i < r->n_nodes; i++)
        if (r->nodes[i].port == port && strlen(r->nodes[i].host) == host_len &&
            memcmp(r->nodes[i].host, host, host_len) == 0)
            return (int)i;
    if (r->n_nodes == MAX_NODES || host_len >= sizeof r->nodes[0].host)
        return -1;
    redis_node *nd = &r->nodes[r->n_nodes];
    memset(nd, 0, sizeof *nd);
    memcpy(nd->host, host, host_len);
    nd->port = port;
    return (int)r->n_nodes++;
}

static void node_close(redis_node *nd)
{
    if (nd->c)
        redisFree(nd->c);
    nd->c = NULL;
}

/* The node's connection, connecting when needed; NULL when it cannot be had. */
static redisContext *node_conn(redis_tier *r, int i)
{
    redis_node *nd = &r->nodes[i];
    if (nd->c && nd->c->err)
        node_close(nd);
    if (nd->c)
        return nd->c;
    if (now_s() < nd->down_until)
        return NULL;
    struct timeval ct = {0, CONNECT_TIMEOUT_MS * 1000};
    struct timeval rt = {COMMAND_TIMEOUT_MS / 1000, (COMMAND_TIMEOUT_MS % 1000) * 1000};
    nd->c = redisConnectWithTimeout(nd->host, nd->port, ct);
    if (!nd->c || nd->c->err || redisSetTimeout(nd->c, rt) != REDIS_OK) {
        node_close(nd);
        nd->down_until = now_s() + NODE_BACKOFF_S;
        r->st.errors++;
        return NULL;
    }
    return nd->c;
}

/* A command on node i; NULL (connection closed, node backed off) on failure. */
static redisReply *node_command(redis_tier *r, int i, int argc, const char **argv,
                                const size_t *lens)
{
    redisContext *c = node_conn(r, i);
    if (!c)
        return NULL;
    redisReply *reply = redisCommandArgv(c, argc, argv, lens);
    if (!reply) {
        node_close(&r->nodes[i]);
        r->nodes[i].down_until = now_s() + NODE_BACKOFF_S;
        r->st.errors++;
    }
    return reply;
}

/* Loads the map from one slot range [start, end, [host, port, ...], ...]. */
static bool map_range(redis_tier *r, const redisReply *e, const char *asked)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER ||
        e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
        return false;
    long long lo = e->element[0]->integer, hi = e->element[1]->integer;
    const redisReply *m = e->element[2];
    if (lo < 0 || hi >= N_SLOTS || lo > hi || m->element[0]->type != REDIS_REPLY_STRING ||
        m->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    /* an empty host means "the address you asked me on" */
    const char *host = m->element[0]->len ? m->element[0]->str : asked;
    size_t host_len = m->element[0]->len ? m->element[0]->len : strlen(asked);
    int i = node_index(r, host, host_len, (int)m->element[1]->integer);
    if (i < 0)
        return false;
    for (long long s = lo; s <= hi; s++)
        r->slots[s] = (int16_t)i;
    return true;
}

/* Reloads the slot map from the first node that answers CLUSTER SLOTS. */
static bool refresh_map(redis_tier *r)
{
    if (now_s() - r->last_failed_refresh < REFRESH_BACKOFF_S)
        return false;
    static const char *argv[] = {"CLUSTER", "SLOTS"};
    static const size_t lens[] = {7, 5};
    for (size_t i = 0; i < r->n_nodes; i++) {
        redisReply *reply = node_command(r, (int)i, 2, argv, lens);
        if (!reply)
            continue;
        bool ok = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0;
        if (ok) {
            for (size_t s = 0; s < N_SLOTS; s++)
                r->slots[s] = -1;
            for (size_t k = 0; k < reply->elements && ok; k++)
                ok = map_range(r, reply->element[k], r->nodes[i].host);
        }
        freeReplyObject(reply);
        if (ok) {
            r->map_stale = false;
            r->st.slot_refreshes++;
            return true;
        }
    }
    r->last_failed_refresh = now_s();
    return false;
}

/* "MOVED 3999 127.0.0.1:6381" or "ASK ...": the node named, or -1. */
static int redirect_target(redis_tier *r, const char *msg)
{
    const char *sp = strchr(msg, ' ');
    sp = sp ? strchr(sp + 1, ' ') : NULL;
    const char *colon = sp ? strrchr(sp, ':') : NULL;
    if (!colon)
        return -1;
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        return -1;
    return node_index(r, sp + 1, (size_t)(colon - sp - 1), port);
}

/* Runs a command on the master of key argv[1]'s slot, following redirections.
 * NULL: unreachable, or an error reply (counted). */
static redisReply *cluster_command(redis_tier *r, int argc, const char **argv,
                                   const size_t *lens)
{
    unsigned slot = key_slot(argv[1], lens[1]);
    int ask = -1;
    for (int attempt = 0; attempt < MAX_TRIES; attempt++) {
        int i = ask >= 0 ? ask : r->slots[slot];
        if (i < 0) {
            if (!refresh_map(r) || r->slots[slot] < 0)
                return NULL;
            i = r->slots[slot];
        }
        if (ask >= 0) {
            static const char *asking[] = {"ASKING"};
            static const size_t asking_len[] = {6};
            redisReply *a = node_command(r, i, 1, asking, asking_len);
            if (a)
                freeReplyObject(a);
            ask = -1;
        }
        redisReply *reply = node_command(r, i, argc, argv, lens);
        if (!reply) {
            /* maybe failed over: ask the others for the map once; while it still
             * names the same node, the cluster has not failed over yet */
            if (!refresh_map(r) || r->slots[slot] == i)
                return NULL;
            continue;
        }
        if (reply->type != REDIS_REPLY_ERROR)
            return reply;
        bool moved = strncmp(reply->str, "MOVED ", 6) == 0;
        bool asked = strncmp(reply->str, "ASK ", 4) == 0;
        int to = moved || asked ? redirect_target(r, reply->str) : -1;
        freeReplyObject(reply);
        if (to < 0) { /* CLUSTERDOWN, TRYAGAIN, OOM, ...: give up on this one */
            r->st.errors++;
            r->map_stale = true;
            return NULL;
        }
        if (moved) {
            r->st.moved++;
            r->slots[slot] = (int16_t)to;
            r->map_stale = true; /* one slot moved: others may have too */
        } else {
            r->st.ask++;
            ask = to;
        }
    }
    r->st.errors++;
    return NULL;
}

/* ---- the tier -------------------------------------------------------------------- */

#define KEY_LEN 73 /* "kvtc:b:{" 64 hex digits "}" */

static void key_of(char out[KEY_LEN + 1], char kind, const prompt_hash *h)
{
    memcpy(out, "kvtc:?:{", 8);
    out[5] = kind;
    kvtc_hex(h->b, 32, out + 8);
    out[72] = '}';
    out[73] = '\0';
}

static void start_operation(redis_tier *r)
{
    if (r->map_stale)
        refresh_map(r);
}

/* GET of one key: the reply (a string), NULL for none or an error. *failed
 * tells the two apart. */
static redisReply *get_key(redis_tier *r, const char *key, bool *failed)
{
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, KEY_LEN};
    redisReply *reply = cluster_command(r, 2, argv, lens);
    *failed = !reply;
    if (reply && reply->type != REDIS_REPLY_STRING) {
        if (reply->type != REDIS_REPLY_NIL) {
            r->st.errors++;
            *failed = true;
        }
        freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

static size_t redis_find(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                         size_t shorter, void **stream, size_t *stream_len)
{
    redis_tier *r = (redis_tier *)t;
    size_t found = 0;
    pthread_mutex_lock(&r->lock);
    r->st.lookups++;
    start_operation(r);
    char key[KEY_LEN + 1];
    int tries = 3; /* entries fetched at most, when they fail to verify */
    for (size_t i = n_blocks; i-- > shorter && tries > 0;) {
        bool failed;
        key_of(key, 'b', &hashes[i]);
        redisReply *idx = get_key(r, key, &failed);
        if (failed)
            break; /* the store does not answer: a miss, the request recomputes */
        if (!idx)
            continue;
        prompt_hash last;
        bool named = idx->len == 64;
        for (size_t k = 0; named && k < 32; k++) {
            unsigned v;
            named = sscanf(idx->str + 2 * k, "%2x", &v) == 1;
            last.b[k] = (uint8_t)v;
        }
        freeReplyObject(idx);
        if (!named) {
            r->st.verify_failures++;
            continue;
        }
        key_of(key, 'e', &last);
        redisReply *e = get_key(r, key, &failed);
        if (failed)
            break;
        if (!e)
            continue; /* evicted or expired: a shorter prefix may remain */
        tries--;
        prompt_accept a = prompt_entry_accept((const uint8_t *)e->str, e->len, &r->fingerprint,
                                              hashes, i + 1, &r->st, stream, stream_len);
        freeReplyObject(e);
        if (a == PROMPT_REJECTED)
            continue;
        if (a == PROMPT_ACCEPTED)
            found = i + 1;
        break;
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}

/* SET key value [PX ttl]; false on failure. */
static bool set_key(redis_tier *r, const char *key, const void *value, size_t len)
{
    char ttl[24];
    int ttl_len = snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)r->ttl_s * 1000);
    const char *argv[] = {"SET", key, value, "PX", ttl};
    size_t lens[] = {3, KEY_LEN, len, 2, (size_t)ttl_len};
    redisReply *reply = cluster_command(r, r->ttl_s ? 5 : 3, argv, lens);
    bool ok = reply && reply->type == REDIS_REPLY_STATUS;
    if (reply && !ok)
        r->st.errors++;
    if (reply)
        freeReplyObject(reply);
    return ok;
}

static kvtc_status redis_put(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                             const void *stream, size_t stream_len, kvtc_error *err)
{
    redis_tier *r = (redis_tier *)t;
    if (n_blocks == 0)
        return KVTC_OK;
    uint8_t *header = NULL;
    kvtc_status st = prompt_entry_header(&r->fingerprint, hashes, n_blocks, stream, stream_len,
                                         &header, err);
    if (st != KVTC_OK)
        return st;
    size_t header_len = PROMPT_ENTRY_HEADER(n_blocks);
    uint8_t *value = kvtc_malloc(header_len + stream_len);
    if (!value) {
        kvtc_free(header);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    memcpy(value, header, header_len);
    memcpy(value + header_len, stream, stream_len);
    kvtc_free(header);
    char key[KEY_LEN + 1], last[65];
    kvtc_hex(hashes[n_blocks - 1].b, 32, last);
    pthread_mutex_lock(&r->lock);
    start_operation(r);
    /* the entry first: an index key never names an entry not yet there */
    key_of(key, 'e', &hashes[n_blocks - 1]);
    bool ok = set_key(r, key, value, header_len + stream_len);
    for (size_t i = n_blocks; ok && i-- > 0;) {
        key_of(key, 'b', &hashes[i]);
        ok = set_key(r, key, last, 64);
    }
    if (ok) {
        r->st.stores++;
        r->st.bytes += header_len + stream_len; /* written by this server */
    }
    /* entries of this one's shorter prefixes (a conversation's earlier turns)
     * are redundant: every index key naming them names this one now */
    for (size_t i = 0; ok && i + 1 < n_blocks; i++) {
        key_of(key, 'e', &hashes[i]);
        const char *argv[] = {"DEL", key};
        size_t lens[] = {3, KEY_LEN};
        redisReply *reply = cluster_command(r, 2, argv, lens);
        if (reply)
            freeReplyObject(reply);
    }
    pthread_mutex_unlock(&r->lock);
    kvtc_free(value);
    return ok ? KVTC_OK : kvtc_fail(err, KVTC_E_IO, "the Redis Cluster did not take the entry");
}

static void redis_stats(prompt_tier *t, prompt_tier_stats *out)
{
    redis_tier *r = (redis_tier *)t;
    pthread_mutex_lock(&r->lock);
    *out = r->st;
    pthread_mutex_unlock(&r->lock);
}

static void redis_destroy(prompt_tier *t)
{
    redis_tier *r = (redis_tier *)t;
    if (!r)
        return;
    for (size_t i = 0; i < r->n_nodes; i++)
        node_close(&r->nodes[i]);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

kvtc_status prompt_tier_redis_create(const char *seeds, uint32_t ttl_s,
                                     const prompt_hash *fingerprint, prompt_tier **out,
                                     kvtc_error *err)
{
    redis_tier *r = calloc(1, sizeof *r);
    if (!r)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    pthread_mutex_init(&r->lock, NULL);
    r->base = (prompt_tier){"redis", redis_find, redis_put, redis_stats, redis_destroy};
    r->fingerprint = *fingerprint;
    r->ttl_s = ttl_s;
    for (size_t s = 0; s < N_SLOTS; s++)
        r->slots[s] = -1;
    for (const char *p = seeds; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *colon = memchr(p, ':', n);
        char *stop = NULL;
        long port = colon ? strtol(colon + 1, &stop, 10) : 0;
        if (!colon || colon == p || stop != p + n || port <= 0 || port > 65535 ||
            node_index(r, p, (size_t)(colon - p), (int)port) < 0) {
            redis_destroy(&r->base);
            return kvtc_fail(err, KVTC_E_INVALID,
                             "--redis %s: expected HOST:PORT[,HOST:PORT...]", seeds);
        }
        p += n;
        if (*p == ',')
            p++;
    }
    r->n_seeds = r->n_nodes;
    if (r->n_seeds == 0) {
        redis_destroy(&r->base);
        return kvtc_fail(err, KVTC_E_INVALID, "--redis: no HOST:PORT given");
    }
    refresh_map(r); /* may fail: the tier then misses until the cluster answers */
    *out = &r->base;
    return KVTC_OK;
}
