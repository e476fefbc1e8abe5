/* The engine worker: takes jobs off the queue and runs them on the reference
 * engine, restoring the longest cached prefix of the prompt first, and stores
 * the conversation's cache, compressed, once the reply is complete. */
#include "cli.h"
#include "server_internal.h"
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void job_release(job *j)
{
    pthread_mutex_lock(&j->lock);
    int left = --j->refs;
    pthread_mutex_unlock(&j->lock);
    if (left > 0)
        return;
    kvtc_free(j->prompt);
    kvtc_writer_free(&j->text);
    pthread_cond_destroy(&j->cond);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

bool server_enqueue(server *s, job *j)
{
    pthread_mutex_lock(&s->lock);
    bool ok = s->queued < s->opt->max_queue;
    if (ok) {
        j->refs++; /* not yet shared: no need for j->lock */
        j->next = NULL;
        if (s->tail)
            s->tail->next = j;
        else
            s->head = j;
        s->tail = j;
        s->queued++;
        pthread_cond_signal(&s->queue_cond);
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* ---- restoring a cached prefix ----------------------------------------------- */

/* Passes the first n_tokens of each layer of a longer stream to the session. */
typedef struct prefix_import {
    session *s;
    uint32_t n_stream, n_tokens, n_kv_head, head_dim;
    size_t elem;
    unsigned char *k, *v; /* [n_kv_head][n_tokens][head_dim] */
} prefix_import;

static int import_prefix_layer(void *user, uint32_t layer, const void *key, const void *value)
{
    prefix_import *p = user;
    if (p->n_tokens == p->n_stream)
        return session_import_layer(p->s, layer, key, value);
    size_t row = (size_t)p->head_dim * p->elem;
    for (uint32_t h = 0; h < p->n_kv_head; h++) {
        memcpy(p->k + (size_t)h * p->n_tokens * row,
               (const unsigned char *)key + (size_t)h * p->n_stream * row, p->n_tokens * row);
        memcpy(p->v + (size_t)h * p->n_tokens * row,
               (const unsigned char *)value + (size_t)h * p->n_stream * row, p->n_tokens * row);
    }
    return session_import_layer(p->s, layer, p->k, p->v);
}

/* Restores tokens [0, n_tokens) of a cached stream into the empty session. */
static kvtc_status restore_prefix(const server *sv, session *s, const void *stream, size_t len,
                                  uint32_t n_tokens, kvtc_error *err)
{
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_status st = kvtc_stream_info_get(stream, len, &info, err);
    if (st != KVTC_OK)
        return st;
    if (info.pos0 != 0 || info.n_tokens < n_tokens)
        return kvtc_fail(err, KVTC_E_FORMAT, "cached stream does not hold the prefix");
    const model *m = session_model(s);
    prefix_import p = {.s = s, .n_stream = (uint32_t)info.n_tokens, .n_tokens = n_tokens,
                       .n_kv_head = m->cfg.n_kv_head, .head_dim = m->cfg.head_dim,
                       .elem = kvtc_dtype_size(info.dtype)};
    if (p.n_tokens != p.n_stream) {
        size_t bytes = (size_t)p.n_kv_head * n_tokens * p.head_dim * p.elem;
        p.k = kvtc_malloc(bytes);
        p.v = kvtc_malloc(bytes);
        if (!p.k || !p.v)
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    /* streams come from disk and a shared store too: none restores more than
     * the model's context (requests never exceed it, so neither do entries) */
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = sv->opt->threads};
    dopt.max_output_bytes = (uint64_t)m->cfg.context_length * m->cfg.n_layer * 2 *
                            m->cfg.n_kv_head * m->cfg.head_dim * sizeof(float);
    if (st == KVTC_OK)
        st = session_begin_import(s, info.dtype, n_tokens, 0, err);
    if (st == KVTC_OK)
        st = kvtc_decompress_layers(sv->opt->cal, stream, len, &dopt, import_prefix_layer, &p, err);
    if (st == KVTC_OK || st == KVTC_E_CANCELLED)
        st = session_finish_import(s, err);
    kvtc_free(p.k);
    kvtc_free(p.v);
    return st;
}

/* ---- storing a conversation -------------------------------------------------- */

/* The writer's queue holds at most this many bytes of streams; beyond it a
 * store is dropped (counted): the lower tiers are a copy, and a slow disk or
 * Redis must not grow the server's memory without bound. */
#define STORE_QUEUE_BYTES (256u << 20)

/* Hands a stream to the tier writer (which frees hashes and stream). */
static void queue_store(server *sv, prompt_hash *hashes, size_t n_blocks, void *stream,
                        size_t stream_len)
{
    store_item *it = malloc(sizeof *it);
    pthread_mutex_lock(&sv->lock);
    bool ok = it && sv->store_queued_bytes + stream_len <= STORE_QUEUE_BYTES;
    if (ok) {
        *it = (store_item){NULL, hashes, n_blocks, stream, stream_len};
        if (sv->store_tail)
            sv->store_tail->next = it;
        else
            sv->store_head = it;
        sv->store_tail = it;
        sv->store_queued_bytes += stream_len;
        pthread_cond_signal(&sv->store_cond);
    } else {
        sv->mx.store_drops++;
    }
    pthread_mutex_unlock(&sv->lock);
    if (!ok) {
        free(it);
        kvtc_free(hashes);
        kvtc_buffer_free(stream);
    }
}

void *tier_writer_main(void *arg)
{
    server *sv = arg;
    for (;;) {
        pthread_mutex_lock(&sv->lock);
        while (!sv->store_head)
            pthread_cond_wait(&sv->store_cond, &sv->lock);
        store_item *it = sv->store_head;
        sv->store_head = it->next;
        if (!sv->store_head)
            sv->store_tail = NULL;
        pthread_mutex_unlock(&sv->lock);
        for (size_t t = sv->first_lower; t < sv->n_tiers; t++) {
            kvtc_error err;
            sv->tiers[t]->put(sv->tiers[t], it->hashes, it->n_blocks, it->stream,
                              it->stream_len, &err); /* a failure is counted by the tier */
        }
        pthread_mutex_lock(&sv->lock);
        sv->store_queued_bytes -= it->stream_len;
        pthread_mutex_unlock(&sv->lock);
        kvtc_free(it->hashes);
        kvtc_buffer_free(it->stream);
        free(it);
    }
    return NULL;
}

/* The longest cached prefix of blocks [0, n_blocks) over the tiers, looked up
 * in order (RAM, disk, Redis); a lower tier is asked only while the prefix
 * found is shorter than the whole. A hit below RAM is promoted to RAM. */
static size_t lookup_prefix(server *sv, const prompt_hash *h, size_t n_blocks, void **stream,
                            size_t *stream_len)
{
    size_t best = 0, from = 0;
    for (size_t t = 0; t < sv->n_tiers && best < n_blocks; t++) {
        /* a lower tier reads only an entry longer than the one found above */
        void *s = NULL;
        size_t len = 0;
        size_t k = sv->tiers[t]->find(sv->tiers[t], h, n_blocks, best, &s, &len);
        if (k > best) {
            kvtc_buffer_free(*stream);
            *stream = s;
            *stream_len = len;
            best = k;
            from = t;
        }
    }
    if (best > 0 && sv->ram && sv->tiers[from] != sv->ram) {
        kvtc_error err;
        sv->ram->put(sv->ram, h, best, *stream, *stream_len, &err);
    }
    return best;
}

/* Compresses the session's whole blocks and puts them into the RAM tier, and
 * queues them for the lower tiers. When the session began from a cached stream of exactly `from_blocks` blocks, only
 * the new blocks are compressed and appended to it, so restored tokens are not
 * compressed a second time. */
static kvtc_status store_conversation(server *sv, session *s, const int32_t *tokens,
                                      const void *from, size_t from_len, size_t from_blocks,
                                      bool *stored, kvtc_error *err)
{
    size_t n_blocks = session_n_past(s) / PROMPT_BLOCK;
    *stored = false;
    if (n_blocks <= from_blocks)
        return KVTC_OK; /* nothing new */
    kvtc_cache *all = NULL, *part = NULL;
    void *out = NULL;
    size_t out_len = 0;
    prompt_hash *hashes = kvtc_malloc_array(n_blocks, sizeof *hashes);
    if (!hashes)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    prompt_block_hashes(&sv->fingerprint, tokens, n_blocks * PROMPT_BLOCK, hashes);
    kvtc_status st = session_export_cache(s, KVTC_F16, &all, err);
    uint32_t start = from ? (uint32_t)(from_blocks * PROMPT_BLOCK) : 0;
    uint32_t n_new = (uint32_t)(n_blocks * PROMPT_BLOCK) - start;
    if (st == KVTC_OK)
        st = kvtc_cache_create(kvtc_cache_shape(all), KVTC_F16, n_new, kvtc_cache_pos0(all) + start,
                               &part, err);
    if (st == KVTC_OK) {
        kvtc_cache_copy_tokens(part, 0, all, start, n_new);
        if (from)
            st = kvtc_append(sv->opt->cal, from, from_len, part, &sv->opt->copt, &out, &out_len,
                             err);
        else
            st = kvtc_compress(sv->opt->cal, part, &sv->opt->copt, &out, &out_len, err);
    }
    if (st == KVTC_OK && sv->ram)
        st = sv->ram->put(sv->ram, hashes, n_blocks, out, out_len, err);
    *stored = st == KVTC_OK;
    if (st == KVTC_OK && sv->first_lower < sv->n_tiers) {
        queue_store(sv, hashes, n_blocks, out, out_len); /* takes hashes and out */
        hashes = NULL;
        out = NULL;
    }
    kvtc_buffer_free(out);
    kvtc_cache_free(part);
    kvtc_cache_free(all);
    kvtc_free(hashes);
    return st;
}

/* ---- running one job ------------------------------------------------------------ */

static void job_fail(job *j, const kvtc_error *err)
{
    pthread_mutex_lock(&j->lock);
    j->failed = true;
    snprintf(j->error, sizeof j->error, "%s", err->message);
    pthread_mutex_unlock(&j->lock);
}

static void run_job(server *sv, job *j)
{
    const model *m = sv->opt->m;
    const tokenizer *tok = sv->opt->tok;
    uint32_t vocab = m->cfg.vocab_size;
    size_t n_all = j->n_prompt + j->max_tokens;
    int32_t *tokens = kvtc_malloc_array(n_all, sizeof *tokens);
    float *logits = kvtc_malloc_array(vocab, sizeof *logits);
    session *s = NULL;
    void *cached = NULL;
    size_t cached_len = 0, cached_blocks = 0;
    kvtc_error err = {0};
    kvtc_status st = tokens && logits ? KVTC_OK : kvtc_fail(&err, KVTC_E_NOMEM, "out of memory");
    if (st == KVTC_OK) {
        memcpy(tokens, j->prompt, j->n_prompt * sizeof *tokens);
        st = session_create(m, (uint32_t)n_all, sv->opt->threads, &s, &err);
    }
    double t0 = cli_now();
    /* the longest cached prefix, leaving at least one prompt token to run */
    size_t lookup_blocks = (j->n_prompt - 1) / PROMPT_BLOCK;
    if (st == KVTC_OK && sv->n_tiers > 0 && lookup_blocks > 0) {
        prompt_hash *h = kvtc_malloc_array(lookup_blocks, sizeof *h);
        if (h) {
            prompt_block_hashes(&sv->fingerprint, tokens, lookup_blocks * PROMPT_BLOCK, h);
            cached_blocks = lookup_prefix(sv, h, lookup_blocks, &cached, &cached_len);
            kvtc_free(h);
        }
    }
    uint32_t restored = 0;
    if (cached_blocks > 0) {
        kvtc_error rerr;
        double tr = cli_now();
        uint32_t n = (uint32_t)(cached_blocks * PROMPT_BLOCK);
        if (restore_prefix(sv, s, cached, cached_len, n, &rerr) == KVTC_OK) {
            restored = n;
            pthread_mutex_lock(&sv->lock);
            sv->mx.restore_sum += cli_now() - tr;
            sv->mx.restore_n++;
            pthread_mutex_unlock(&sv->lock);
        } else {
            /* a stream that does not decode is never served: recompute */
            session_reset(s);
            pthread_mutex_lock(&sv->lock);
            sv->mx.restore_failures++;
            pthread_mutex_unlock(&sv->lock);
        }
        /* appending onto the stream is only right when it is exactly the prefix */
        kvtc_stream_info info = {.struct_size = sizeof info};
        if (!restored || kvtc_stream_info_get(cached, cached_len, &info, NULL) != KVTC_OK ||
            info.n_tokens != n) {
            kvtc_buffer_free(cached);
            cached = NULL;
        }
    }
    double tp = cli_now();
    if (st == KVTC_OK)
        st = session_forward(s, tokens + restored, (uint32_t)(j->n_prompt - restored), logits,
                             false, &err);
    double t_first = cli_now();
    uint32_t n_gen = 0;
    int32_t eos = tokenizer_eos(tok);
    const char *finish = "length";
    while (st == KVTC_OK && n_gen < j->max_tokens) {
        int32_t next = logits_argmax(logits, vocab);
        if (next == eos) {
            finish = "stop";
            break;
        }
        char buf[256];
        size_t len = tokenizer_token_bytes(tok, next, buf, sizeof buf);
        tokens[j->n_prompt + n_gen++] = next;
        pthread_mutex_lock(&j->lock);
        kvtc_put_bytes(&j->text, buf, len < sizeof buf ? len : sizeof buf);
        j->n_generated = n_gen;
        bool cancelled = j->cancelled;
        pthread_cond_broadcast(&j->cond);
        pthread_mutex_unlock(&j->lock);
        if (cancelled)
            break;
        if (n_gen < j->max_tokens)
            st = session_forward(s, &next, 1, logits, false, &err);
    }
    if (st == KVTC_OK && j->text.failed)
        st = kvtc_fail(&err, KVTC_E_NOMEM, "out of memory");
    if (st != KVTC_OK)
        job_fail(j, &err);
    pthread_mutex_lock(&j->lock);
    j->done = true;
    j->finish_reason = finish;
    j->cached_tokens = restored;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);

    pthread_mutex_lock(&sv->lock);
    sv->mx.completions++;
    sv->mx.prompt_tokens += j->n_prompt;
    sv->mx.completion_tokens += n_gen;
    sv->mx.queue_wait_sum += t0 - j->t_queued;
    if (st == KVTC_OK) {
        sv->mx.prefill_sum += t_first - tp;
        sv->mx.prefill_n++;
        sv->mx.ttft_sum += t_first - j->t_queued;
        sv->mx.ttft_n++;
    }
    pthread_mutex_unlock(&sv->lock);

    /* the reply is out: now the cache, off the request's path */
    if (st == KVTC_OK && sv->n_tiers > 0) {
        double tc = cli_now();
        kvtc_error cerr;
        bool stored;
        kvtc_status cs = store_conversation(sv, s, tokens, cached, cached_len,
                                            restored / PROMPT_BLOCK, &stored, &cerr);
        pthread_mutex_lock(&sv->lock);
        if (cs == KVTC_OK && stored) {
            sv->mx.compress_sum += cli_now() - tc;
            sv->mx.compress_n++;
        } else if (cs != KVTC_OK) {
            sv->mx.compress_failures++;
        }
        pthread_mutex_unlock(&sv->lock);
    }
    kvtc_buffer_free(cached);
    session_free(s);
    kvtc_free(logits);
    kvtc_free(tokens);
}

void *worker_main(void *arg)
{
    server *sv = arg;
    for (;;) {
        pthread_mutex_lock(&sv->lock);
        while (!sv->head)
            pthread_cond_wait(&sv->queue_cond, &sv->lock);
        job *j = sv->head;
        sv->head = j->next;
        if (!sv->head)
            sv->tail = NULL;
        sv->queued--;
        sv->busy = true;
        pthread_mutex_unlock(&sv->lock);
        pthread_mutex_lock(&j->lock);
        bool cancelled = j->cancelled;
        pthread_mutex_unlock(&j->lock);
        if (!cancelled) {
            run_job(sv, j);
        } else {
            pthread_mutex_lock(&j->lock);
            j->done = true;
            pthread_cond_broadcast(&j->cond);
            pthread_mutex_unlock(&j->lock);
        }
        pthread_mutex_lock(&sv->lock);
        sv->busy = false;
        pthread_mutex_unlock(&sv->lock);
        job_release(j);
    }
    return NULL;
}
