/* The HTTP side of kvtc serve (libmicrohttpd, one thread per connection):
 * routing, request validation, replies as JSON or server-sent events, and
 * /metrics. */
#include "json.h"
#include "cli.h"
#include "server_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- responses ------------------------------------------------------------------ */

/* The classes /metrics counts: 200, 400 (and other client errors), 404, 413,
 * 429, 5xx. */
static void count_status(server *sv, unsigned status)
{
    size_t i = status == 200   ? 0
               : status == 404 ? 2
               : status == 413 ? 3
               : status == 429 ? 4
               : status >= 500 ? 5
                               : 1;
    pthread_mutex_lock(&sv->lock);
    sv->mx.requests[i]++;
    pthread_mutex_unlock(&sv->lock);
}

static enum MHD_Result send_buffer(server *sv, struct MHD_Connection *c, unsigned status,
                                   const char *type, const void *data, size_t len)
{
    count_status(sv, status);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(server *sv, struct MHD_Connection *c, unsigned status,
                                 kvtc_writer *w)
{
    if (w->failed)
        return send_buffer(sv, c, 500, "text/plain", "out of memory\n", 14);
    return send_buffer(sv, c, status, "application/json", w->buf, w->len);
}

/* An OpenAI-style error: {"error": {"message", "type", "param", "code"}}. */
static void write_error(kvtc_json_writer *jw, const char *type, const char *code,
                        const char *message)
{
    kvtc_jw_begin_object(jw);
    kvtc_jw_key(jw, "error");
    kvtc_jw_begin_object(jw);
    kvtc_jw_key(jw, "message");
    kvtc_jw_string(jw, message);
    kvtc_jw_key(jw, "type");
    kvtc_jw_string(jw, type);
    kvtc_jw_key(jw, "param");
    kvtc_jw_null(jw);
    kvtc_jw_key(jw, "code");
    if (code)
        kvtc_jw_string(jw, code);
    else
        kvtc_jw_null(jw);
    kvtc_jw_end_object(jw);
    kvtc_jw_end_object(jw);
}

static enum MHD_Result send_error(server *sv, struct MHD_Connection *c, unsigned status,
                                  const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static enum MHD_Result send_error(server *sv, struct MHD_Connection *c, unsigned status,
                                  const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *type = status == 429 ? "rate_limit_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_json_writer jw;
    kvtc_jw_init(&jw, &w, false);
    write_error(&jw, type, code, msg);
    kvtc_put_u8(&w, '\n');
    enum MHD_Result ret = send_json(sv, c, status, &w);
    kvtc_writer_free(&w);
    return ret;
}

/* ---- GET endpoints ------------------------------------------------------------ */

static enum MHD_Result send_models(server *sv, struct MHD_Connection *c)
{
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_json_writer jw;
    kvtc_jw_init(&jw, &w, false);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "object");
    kvtc_jw_string(&jw, "list");
    kvtc_jw_key(&jw, "data");
    kvtc_jw_begin_array(&jw);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "id");
    kvtc_jw_string(&jw, sv->opt->model_id);
    kvtc_jw_key(&jw, "object");
    kvtc_jw_string(&jw, "model");
    kvtc_jw_key(&jw, "created");
    kvtc_jw_int(&jw, 0);
    kvtc_jw_key(&jw, "owned_by");
    kvtc_jw_string(&jw, "kvtc");
    kvtc_jw_end_object(&jw);
    kvtc_jw_end_array(&jw);
    kvtc_jw_end_object(&jw);
    kvtc_put_u8(&w, '\n');
    enum MHD_Result ret = send_json(sv, c, 200, &w);
    kvtc_writer_free(&w);
    return ret;
}

static void put_text(kvtc_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put_text(kvtc_writer *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvtc_put_textv(w, fmt, ap);
    va_end(ap);
}

static void put_metric(kvtc_writer *w, const char *name, const char *type, const char *help)
{
    put_text(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static enum MHD_Result send_metrics(server *sv, struct MHD_Connection *c)
{
    pthread_mutex_lock(&sv->lock);
    serve_metrics mx = sv->mx;
    uint32_t queued = sv->queued;
    bool busy = sv->busy;
    uint64_t store_queued = sv->store_queued_bytes;
    pthread_mutex_unlock(&sv->lock);
    prompt_tier_stats ts[3] = {{0}};
    for (size_t t = 0; t < sv->n_tiers; t++)
        sv->tiers[t]->stats(sv->tiers[t], &ts[t]);
    static const char *const codes[] = {"200", "400", "404", "413", "429", "5xx"};
    kvtc_writer w;
    kvtc_writer_init(&w);
    put_metric(&w, "kvtc_requests_total", "counter", "HTTP requests answered, by status");
    for (size_t i = 0; i < 6; i++)
        put_text(&w, "kvtc_requests_total{code=\"%s\"} %llu\n", codes[i],
                 (unsigned long long)mx.requests[i]);
    put_metric(&w, "kvtc_queue_depth", "gauge", "requests waiting for the engine");
    put_text(&w, "kvtc_queue_depth %u\n", queued);
    put_metric(&w, "kvtc_engine_busy", "gauge", "1 while the engine runs a request");
    put_text(&w, "kvtc_engine_busy %d\n", busy ? 1 : 0);
    put_metric(&w, "kvtc_completions_total", "counter", "chat completions run");
    put_text(&w, "kvtc_completions_total %llu\n", (unsigned long long)mx.completions);
    put_metric(&w, "kvtc_prompt_tokens_total", "counter", "prompt tokens of completions");
    put_text(&w, "kvtc_prompt_tokens_total %llu\n", (unsigned long long)mx.prompt_tokens);
    put_metric(&w, "kvtc_completion_tokens_total", "counter", "tokens generated");
    put_text(&w, "kvtc_completion_tokens_total %llu\n", (unsigned long long)mx.completion_tokens);
    struct {
        const char *name, *help;
        double sum;
        uint64_t n;
    } sums[] = {
        {"kvtc_time_to_first_token_seconds", "from queueing to the first token", mx.ttft_sum,
         mx.ttft_n},
        {"kvtc_prefill_seconds", "running the uncached part of the prompt", mx.prefill_sum,
         mx.prefill_n},
        {"kvtc_restore_seconds", "decompressing a cached prefix into the engine",
         mx.restore_sum, mx.restore_n},
        {"kvtc_compress_seconds", "compressing a conversation into the prompt cache",
         mx.compress_sum, mx.compress_n},
    };
    for (size_t i = 0; i < sizeof sums / sizeof sums[0]; i++) {
        put_metric(&w, sums[i].name, "summary", sums[i].help);
        put_text(&w, "%s_sum %.6f\n%s_count %llu\n", sums[i].name, sums[i].sum, sums[i].name,
                 (unsigned long long)sums[i].n);
    }
    put_metric(&w, "kvtc_restore_failures_total", "counter",
               "cached prefixes that did not decode (recomputed instead)");
    put_text(&w, "kvtc_restore_failures_total %llu\n", (unsigned long long)mx.restore_failures);
    put_metric(&w, "kvtc_compress_failures_total", "counter",
               "conversations that could not be stored");
    put_text(&w, "kvtc_compress_failures_total %llu\n", (unsigned long long)mx.compress_failures);
    put_metric(&w, "kvtc_store_drops_total", "counter",
               "streams not stored below RAM: the tier writer's queue was full");
    put_text(&w, "kvtc_store_drops_total %llu\n", (unsigned long long)mx.store_drops);
    put_metric(&w, "kvtc_store_queue_bytes", "gauge",
               "streams waiting for (or being written by) the tier writer");
    put_text(&w, "kvtc_store_queue_bytes %llu\n", (unsigned long long)store_queued);
    /* per tier; a server without the RAM tier still shows it, empty */
    static const struct {
        const char *name, *type, *help;
        size_t off;
        bool redis_only;
    } tier[] = {
#define TIER_FIELD(f) offsetof(prompt_tier_stats, f)
        {"kvtc_cache_lookups_total", "counter", "prompt-cache lookups", TIER_FIELD(lookups), false},
        {"kvtc_cache_hits_total", "counter", "lookups that found a cached prefix", TIER_FIELD(hits),
         false},
        {"kvtc_cache_hit_tokens_total", "counter", "prompt tokens restored instead of run",
         TIER_FIELD(hit_tokens), false},
        {"kvtc_cache_stores_total", "counter", "compressed prefixes stored", TIER_FIELD(stores),
         false},
        {"kvtc_cache_evictions_total", "counter", "entries evicted for the budget",
         TIER_FIELD(evictions), false},
        {"kvtc_cache_entries", "gauge", "entries held", TIER_FIELD(entries), false},
        {"kvtc_cache_bytes", "gauge", "compressed bytes held (redis: written by this server)",
         TIER_FIELD(bytes), false},
        {"kvtc_cache_budget_bytes", "gauge", "byte budget (redis: the nodes' maxmemory)",
         TIER_FIELD(budget_bytes), false},
        {"kvtc_cache_verify_failures_total", "counter",
         "entries that failed verification: dropped, recomputed, never served",
         TIER_FIELD(verify_failures), false},
        {"kvtc_cache_errors_total", "counter", "failed reads or writes of the store",
         TIER_FIELD(errors), false},
        {"kvtc_redis_moved_total", "counter", "MOVED redirections followed", TIER_FIELD(moved),
         true},
        {"kvtc_redis_ask_total", "counter", "ASK redirections followed", TIER_FIELD(ask), true},
        {"kvtc_redis_slot_refreshes_total", "counter", "cluster slot maps loaded",
         TIER_FIELD(slot_refreshes), true},
#undef TIER_FIELD
    };
    for (size_t i = 0; i < sizeof tier / sizeof tier[0]; i++) {
        put_metric(&w, tier[i].name, tier[i].type, tier[i].help);
        if (!sv->ram && !tier[i].redis_only)
            put_text(&w, "%s{tier=\"ram\"} 0\n", tier[i].name);
        for (size_t t = 0; t < sv->n_tiers; t++) {
            if (tier[i].redis_only && strcmp(sv->tiers[t]->name, "redis") != 0)
                continue;
            uint64_t v;
            memcpy(&v, (const char *)&ts[t] + tier[i].off, sizeof v);
            put_text(&w, "%s{tier=\"%s\"} %llu\n", tier[i].name, sv->tiers[t]->name,
                     (unsigned long long)v);
        }
    }
    enum MHD_Result ret;
    if (w.failed)
        ret = send_buffer(sv, c, 500, "text/plain", "out of memory\n", 14);
    else
        ret = send_buffer(sv, c, 200, "text/plain; version=0.0.4", w.buf, w.len);
    kvtc_writer_free(&w);
    return ret;
}

/* ---- POST /v1/chat/completions ------------------------------------------------ */

#define MAX_MESSAGES 1024

typedef struct chat_request {
    chat_message msgs[MAX_MESSAGES];
    size_t n_msgs;
    uint32_t max_tokens;
    bool stream, include_usage;
} chat_request;

/* Checks the request's fields; on failure writes the reason into why. */
static bool parse_chat_request(const server *sv, const kvtc_json_value *root, chat_request *r,
                               unsigned *status, char *why, size_t cap)
{
    *status = 400;
    if (root->type != KVTC_JSON_OBJECT) {
        snprintf(why, cap, "the request body must be a JSON object");
        return false;
    }
    const kvtc_json_value *v = kvtc_json_get(root, "model");
    if (!v || v->type != KVTC_JSON_STRING) {
        snprintf(why, cap, "'model' must be a string");
        return false;
    }
    if (strcmp(v->str, sv->opt->model_id) != 0) {
        *status = 404;
        snprintf(why, cap, "the model '%.200s' does not exist; this server has '%.200s'", v->str,
                 sv->opt->model_id);
        return false;
    }
    const kvtc_json_value *msgs = kvtc_json_get(root, "messages");
    if (!msgs || msgs->type != KVTC_JSON_ARRAY || msgs->count == 0) {
        snprintf(why, cap, "'messages' must be a non-empty array");
        return false;
    }
    if (msgs->count > MAX_MESSAGES) {
        snprintf(why, cap, "'messages' has more than %d entries", MAX_MESSAGES);
        return false;
    }
    r->n_msgs = 0;
    size_t i = 0;
    for (const kvtc_json_value *m = msgs->child; m; m = m->next, i++) {
        const kvtc_json_value *role = kvtc_json_get(m, "role");
        const kvtc_json_value *content = kvtc_json_get(m, "content");
        if (m->type != KVTC_JSON_OBJECT || !role || role->type != KVTC_JSON_STRING ||
            !content || content->type != KVTC_JSON_STRING) {
            snprintf(why, cap, "messages[%zu] must be an object with string 'role' and 'content'",
                     i);
            return false;
        }
        if (strcmp(role->str, "system") != 0 && strcmp(role->str, "user") != 0 &&
            strcmp(role->str, "assistant") != 0) {
            snprintf(why, cap, "messages[%zu].role must be system, user or assistant", i);
            return false;
        }
        if (strstr(content->str, "<|im_")) {
            /* the template's own markers would let a message forge turns */
            snprintf(why, cap, "messages[%zu].content contains a chat-template marker", i);
            return false;
        }
        r->msgs[r->n_msgs++] = (chat_message){role->str, content->str};
    }
    r->max_tokens = sv->opt->max_tokens;
    const char *names[] = {"max_tokens", "max_completion_tokens"};
    for (size_t k = 0; k < 2; k++) {
        v = kvtc_json_get(root, names[k]);
        if (!v || v->type == KVTC_JSON_NULL)
            continue;
        uint64_t n;
        if (!kvtc_json_u64(v, &n) || n < 1 || n > sv->opt->max_tokens) {
            snprintf(why, cap, "'%s' must be an integer from 1 to %u", names[k],
                     sv->opt->max_tokens);
            return false;
        }
        r->max_tokens = (uint32_t)n;
    }
    v = kvtc_json_get(root, "temperature");
    if (v && v->type != KVTC_JSON_NULL && (v->type != KVTC_JSON_NUMBER || v->number != 0)) {
        snprintf(why, cap, "only greedy decoding is supported: 'temperature' must be 0");
        return false;
    }
    v = kvtc_json_get(root, "n");
    uint64_t n_choices;
    if (v && v->type != KVTC_JSON_NULL && (!kvtc_json_u64(v, &n_choices) || n_choices != 1)) {
        snprintf(why, cap, "'n' must be 1");
        return false;
    }
    r->stream = false;
    v = kvtc_json_get(root, "stream");
    if (v && v->type != KVTC_JSON_NULL) {
        if (v->type != KVTC_JSON_TRUE && v->type != KVTC_JSON_FALSE) {
            snprintf(why, cap, "'stream' must be a boolean");
            return false;
        }
        r->stream = v->type == KVTC_JSON_TRUE;
    }
    r->include_usage = false;
    v = kvtc_json_get(root, "stream_options");
    if (v && v->type == KVTC_JSON_OBJECT) {
        const kvtc_json_value *u = kvtc_json_get(v, "include_usage");
        r->include_usage = u && u->type == KVTC_JSON_TRUE;
    }
    return true;
}

/* The reply so far, cut before an incomplete UTF-8 sequence at its end. */
static size_t complete_utf8(const unsigned char *p, size_t len)
{
    size_t i = len, back = 0;
    while (i > 0 && back < 4 && (p[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0)
        return len;
    unsigned char lead = p[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return need > back + 1 ? i - 1 : len;
}

/* The parts every completion object starts with. */
static void begin_completion(kvtc_json_writer *jw, const server *sv, const char *id,
                             const char *object, time_t created)
{
    kvtc_jw_begin_object(jw);
    kvtc_jw_key(jw, "id");
    kvtc_jw_string(jw, id);
    kvtc_jw_key(jw, "object");
    kvtc_jw_string(jw, object);
    kvtc_jw_key(jw, "created");
    kvtc_jw_int(jw, (int64_t)created);
    kvtc_jw_key(jw, "model");
    kvtc_jw_string(jw, sv->opt->model_id);
}

static void write_usage(kvtc_json_writer *jw, const job *j)
{
    kvtc_jw_key(jw, "usage");
    kvtc_jw_begin_object(jw);
    kvtc_jw_key(jw, "prompt_tokens");
    kvtc_jw_uint(jw, j->n_prompt);
    kvtc_jw_key(jw, "completion_tokens");
    kvtc_jw_uint(jw, j->n_generated);
    kvtc_jw_key(jw, "total_tokens");
    kvtc_jw_uint(jw, j->n_prompt + j->n_generated);
    kvtc_jw_key(jw, "prompt_tokens_details");
    kvtc_jw_begin_object(jw);
    kvtc_jw_key(jw, "cached_tokens");
    kvtc_jw_uint(jw, j->cached_tokens);
    kvtc_jw_end_object(jw);
    kvtc_jw_end_object(jw);
}

/* A streamed reply: the connection thread pulls server-sent events as the
 * worker writes the text. */
typedef struct stream_state {
    server *sv;
    job *j;
    char id[48];
    time_t created;
    bool include_usage;
    size_t sent;      /* bytes of the reply's text already sent */
    int phase;        /* 0 role, 1 content, 2 final chunk sent, 3 [DONE] sent */
    kvtc_writer out;  /* events not yet handed to libmicrohttpd */
    size_t out_pos;
} stream_state;

static void put_event_start(stream_state *ss, kvtc_json_writer *jw)
{
    kvtc_put_bytes(&ss->out, "data: ", 6);
    kvtc_jw_init(jw, &ss->out, false);
    begin_completion(jw, ss->sv, ss->id, "chat.completion.chunk", ss->created);
}

static void put_chunk(stream_state *ss, const char *role, const char *text, size_t len,
                      const char *finish)
{
    kvtc_json_writer jw;
    put_event_start(ss, &jw);
    kvtc_jw_key(&jw, "choices");
    kvtc_jw_begin_array(&jw);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "index");
    kvtc_jw_int(&jw, 0);
    kvtc_jw_key(&jw, "delta");
    kvtc_jw_begin_object(&jw);
    if (role) {
        kvtc_jw_key(&jw, "role");
        kvtc_jw_string(&jw, role);
    }
    if (text) {
        kvtc_jw_key(&jw, "content");
        kvtc_jw_string_n(&jw, text, len);
    }
    kvtc_jw_end_object(&jw);
    kvtc_jw_key(&jw, "finish_reason");
    if (finish)
        kvtc_jw_string(&jw, finish);
    else
        kvtc_jw_null(&jw);
    kvtc_jw_end_object(&jw);
    kvtc_jw_end_array(&jw);
    kvtc_jw_end_object(&jw);
    kvtc_put_bytes(&ss->out, "\n\n", 2);
}

/* Fills ss->out with the next events, waiting for the worker; false at the end. */
static bool next_events(stream_state *ss)
{
    job *j = ss->j;
    if (ss->phase == 3)
        return false;
    if (ss->phase == 0) {
        put_chunk(ss, "assistant", "", 0, NULL);
        ss->phase = 1;
        return true;
    }
    pthread_mutex_lock(&j->lock);
    for (;;) {
        size_t ready = j->done ? j->text.len : complete_utf8(j->text.buf, j->text.len);
        if (ready > ss->sent && !j->failed) {
            put_chunk(ss, NULL, (const char *)j->text.buf + ss->sent, ready - ss->sent, NULL);
            ss->sent = ready;
            break;
        }
        if (j->done) {
            if (j->failed) {
                kvtc_put_bytes(&ss->out, "data: ", 6);
                kvtc_json_writer jw;
                kvtc_jw_init(&jw, &ss->out, false);
                write_error(&jw, "server_error", NULL, j->error);
                kvtc_put_bytes(&ss->out, "\n\n", 2);
            } else {
                put_chunk(ss, NULL, NULL, 0, j->finish_reason);
                if (ss->include_usage) {
                    kvtc_json_writer jw;
                    put_event_start(ss, &jw);
                    kvtc_jw_key(&jw, "choices");
                    kvtc_jw_begin_array(&jw);
                    kvtc_jw_end_array(&jw);
                    write_usage(&jw, j);
                    kvtc_jw_end_object(&jw);
                    kvtc_put_bytes(&ss->out, "\n\n", 2);
                }
            }
            kvtc_put_bytes(&ss->out, "data: [DONE]\n\n", 14);
            ss->phase = 3;
            break;
        }
        /* While the request waits (queued, or a long prefill), an SSE comment
         * every half idle timeout keeps the connection from counting as idle:
         * libmicrohttpd would close it when this callback returns late. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        uint32_t t = ss->sv->opt->timeout_s;
        until.tv_sec += t >= 2 ? t / 2 : 1;
        if (pthread_cond_timedwait(&j->cond, &j->lock, &until) == ETIMEDOUT) {
            kvtc_put_bytes(&ss->out, ": waiting\n\n", 11);
            break;
        }
    }
    pthread_mutex_unlock(&j->lock);
    return true;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_state *ss = cls;
    while (ss->out_pos == ss->out.len) {
        ss->out.len = 0;
        ss->out_pos = 0;
        if (!next_events(ss))
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (ss->out.failed)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = ss->out.len - ss->out_pos;
    if (n > max)
        n = max;
    memcpy(buf, ss->out.buf + ss->out_pos, n);
    ss->out_pos += n;
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    stream_state *ss = cls;
    pthread_mutex_lock(&ss->j->lock);
    ss->j->cancelled = !ss->j->done; /* the client went away: stop generating */
    pthread_mutex_unlock(&ss->j->lock);
    job_release(ss->j);
    kvtc_writer_free(&ss->out);
    free(ss);
}

static enum MHD_Result send_completion(server *sv, struct MHD_Connection *c, job *j,
                                       const char *id, time_t created)
{
    pthread_mutex_lock(&j->lock);
    while (!j->done)
        pthread_cond_wait(&j->cond, &j->lock);
    pthread_mutex_unlock(&j->lock);
    if (j->failed)
        return send_error(sv, c, 500, NULL, "generation failed: %s", j->error);
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_json_writer jw;
    kvtc_jw_init(&jw, &w, false);
    begin_completion(&jw, sv, id, "chat.completion", created);
    kvtc_jw_key(&jw, "choices");
    kvtc_jw_begin_array(&jw);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "index");
    kvtc_jw_int(&jw, 0);
    kvtc_jw_key(&jw, "message");
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "role");
    kvtc_jw_string(&jw, "assistant");
    kvtc_jw_key(&jw, "content");
    kvtc_jw_string_n(&jw, (const char *)j->text.buf, j->text.len);
    kvtc_jw_end_object(&jw);
    kvtc_jw_key(&jw, "finish_reason");
    kvtc_jw_string(&jw, j->finish_reason);
    kvtc_jw_end_object(&jw);
    kvtc_jw_end_array(&jw);
    write_usage(&jw, j);
    kvtc_jw_end_object(&jw);
    kvtc_put_u8(&w, '\n');
    enum MHD_Result ret = send_json(sv, c, 200, &w);
    kvtc_writer_free(&w);
    return ret;
}

static enum MHD_Result chat_completions(server *sv, struct MHD_Connection *c, const char *body,
                                        size_t len)
{
    kvtc_json *doc = NULL;
    kvtc_error err;
    if (kvtc_json_parse(body, len, &doc, &err) != KVTC_OK)
        return send_error(sv, c, 400, "invalid_json", "the request body is not valid JSON: %s",
                          err.message);
    chat_request *r = malloc(sizeof *r);
    char why[512];
    unsigned status = 500;
    enum MHD_Result ret;
    if (!r) {
        ret = send_error(sv, c, 500, NULL, "out of memory");
        goto done;
    }
    if (!parse_chat_request(sv, kvtc_json_root(doc), r, &status, why, sizeof why)) {
        ret = send_error(sv, c, status, status == 404 ? "model_not_found" : "invalid_request",
                         "%s", why);
        goto done;
    }
    char *text = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    kvtc_status st = tokenizer_chat_prompt(sv->opt->tok, r->msgs, r->n_msgs, true, &text, &err);
    if (st == KVTC_OK)
        st = tokenizer_encode(sv->opt->tok, text, strlen(text), false, &ids, &n_ids, &err);
    kvtc_free(text);
    if (st != KVTC_OK) {
        ret = send_error(sv, c, 500, NULL, "cannot tokenize the messages: %s", err.message);
        goto done;
    }
    uint32_t ctx = sv->opt->m->cfg.context_length;
    if (n_ids == 0 || n_ids + r->max_tokens > ctx) {
        kvtc_free(ids);
        ret = send_error(sv, c, 400, "context_length_exceeded",
                         "the messages (%zu tokens) and max_tokens (%u) exceed the model's "
                         "context of %u tokens", n_ids, r->max_tokens, ctx);
        goto done;
    }
    job *j = calloc(1, sizeof *j);
    if (!j) {
        kvtc_free(ids);
        ret = send_error(sv, c, 500, NULL, "out of memory");
        goto done;
    }
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    kvtc_writer_init(&j->text);
    j->refs = 1;
    j->prompt = ids;
    j->n_prompt = n_ids;
    j->max_tokens = r->max_tokens;
    j->stream = r->stream;
    j->t_queued = cli_now();
    if (!server_enqueue(sv, j)) {
        job_release(j);
        ret = send_error(sv, c, 429, "queue_full",
                         "the server is busy: %u requests are already waiting; retry later",
                         sv->opt->max_queue);
        goto done;
    }
    static unsigned long long counter;
    char id[48];
    snprintf(id, sizeof id, "chatcmpl-%d-%llu", (int)getpid(),
             __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    time_t created = time(NULL);
    if (!r->stream) {
        ret = send_completion(sv, c, j, id, created);
        job_release(j);
        goto done;
    }
    stream_state *ss = calloc(1, sizeof *ss);
    struct MHD_Response *resp = NULL;
    if (ss) {
        ss->sv = sv;
        ss->j = j;
        memcpy(ss->id, id, sizeof id);
        ss->created = created;
        ss->include_usage = r->include_usage;
        kvtc_writer_init(&ss->out);
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, ss,
                                                 stream_free);
    }
    if (!resp) {
        if (ss)
            stream_free(ss);
        else
            job_release(j);
        ret = send_error(sv, c, 500, NULL, "out of memory");
        goto done;
    }
    count_status(sv, 200);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
done:
    free(r);
    kvtc_json_free(doc);
    return ret;
}

/* ---- the connection handler ---------------------------------------------------- */

/* A request body being received. */
typedef struct upload {
    kvtc_writer body;
    bool too_big;
} upload;

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    server *sv = cls;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    if (post && !*con_cls) {
        upload *u = calloc(1, sizeof *u);
        if (!u)
            return MHD_NO;
        kvtc_writer_init(&u->body);
        *con_cls = u;
        return MHD_YES;
    }
    if (post && *upload_data_size > 0) {
        upload *u = *con_cls;
        if (u->too_big || u->body.len + *upload_data_size > sv->opt->max_body)
            u->too_big = true;
        else
            kvtc_put_bytes(&u->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/health") == 0 && get)
        return send_buffer(sv, c, 200, "application/json", "{\"status\":\"ok\"}\n", 16);
    if (strcmp(url, "/v1/models") == 0 && get)
        return send_models(sv, c);
    if (strcmp(url, "/metrics") == 0 && get)
        return send_metrics(sv, c);
    if (strcmp(url, "/v1/chat/completions") == 0 && post) {
        upload *u = *con_cls;
        if (u->too_big)
            return send_error(sv, c, 413, "request_too_large",
                              "the request body exceeds %llu bytes",
                              (unsigned long long)sv->opt->max_body);
        if (u->body.failed)
            return send_error(sv, c, 500, NULL, "out of memory");
        return chat_completions(sv, c, (const char *)u->body.buf, u->body.len);
    }
    bool known = strcmp(url, "/health") == 0 || strcmp(url, "/v1/models") == 0 ||
                 strcmp(url, "/metrics") == 0 || strcmp(url, "/v1/chat/completions") == 0;
    if (known)
        return send_error(sv, c, 405, "method_not_allowed", "%s is not allowed on %s", method,
                          url);
    return send_error(sv, c, 404, "not_found", "no endpoint %s", url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    upload *u = *con_cls;
    if (u) {
        kvtc_writer_free(&u->body);
        free(u);
        *con_cls = NULL;
    }
}

/* ---- starting --------------------------------------------------------------------- */

kvtc_status serve_run(const serve_options *opt, kvtc_error *err)
{
    static server sv; /* lives as long as the process */
    sv.opt = opt;
    pthread_mutex_init(&sv.lock, NULL);
    pthread_cond_init(&sv.queue_cond, NULL);
    kvtc_writer fp;
    kvtc_writer_init(&fp);
    kvtc_put_bytes(&fp, "kvtc-serve-prompt-cache-1\0", 26);
    kvtc_put_bytes(&fp, opt->model_id, strlen(opt->model_id) + 1);
    kvtc_put_bytes(&fp, opt->calib_id, strlen(opt->calib_id) + 1);
    kvtc_put_f64(&fp, opt->copt.k_ratio);
    kvtc_put_f64(&fp, opt->copt.v_ratio);
    if (fp.failed) {
        kvtc_writer_free(&fp);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    kvtc_sha256(fp.buf, fp.len, sv.fingerprint.b);
    kvtc_writer_free(&fp);
    kvtc_status st = KVTC_OK;
    if (opt->ram_budget > 0 && (st = prompt_tier_ram_create(opt->ram_budget, &sv.ram, err)) ==
                                   KVTC_OK)
        sv.tiers[sv.n_tiers++] = sv.ram;
    sv.first_lower = sv.n_tiers;
    if (st == KVTC_OK && opt->disk_dir &&
        (st = prompt_tier_disk_create(opt->disk_dir, opt->disk_budget, &sv.fingerprint,
                                      &sv.tiers[sv.n_tiers], err)) == KVTC_OK)
        sv.n_tiers++;
    if (st == KVTC_OK && opt->redis &&
        (st = prompt_tier_redis_create(opt->redis, opt->redis_ttl_s, &sv.fingerprint,
                                       &sv.tiers[sv.n_tiers], err)) == KVTC_OK)
        sv.n_tiers++;
    if (st != KVTC_OK)
        return st;
    pthread_cond_init(&sv.store_cond, NULL);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opt->port);
    if (inet_pton(AF_INET, opt->host, &addr.sin_addr) != 1)
        return kvtc_fail(err, KVTC_E_INVALID, "--host %s is not an IPv4 address", opt->host);
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up is not fatal */
    pthread_t worker;
    if (pthread_create(&worker, NULL, worker_main, &sv) != 0)
        return kvtc_fail(err, KVTC_E_IO, "cannot start the engine worker");
    pthread_detach(worker);
    if (sv.first_lower < sv.n_tiers) {
        pthread_t writer;
        if (pthread_create(&writer, NULL, tier_writer_main, &sv) != 0)
            return kvtc_fail(err, KVTC_E_IO, "cannot start the tier writer");
        pthread_detach(writer);
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
        opt->port, NULL, NULL, on_request, &sv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)opt->timeout_s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
        MHD_OPTION_END);
    if (!d)
        return kvtc_fail(err, KVTC_E_IO, "cannot listen on %s:%u", opt->host, opt->port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info ? info->port : opt->port;
    fprintf(stderr, "kvtc serve: %s on http://%s:%u (queue %u, RAM cache %llu bytes%s%s%s%s)\n",
            opt->model_id, opt->host, port, opt->max_queue,
            (unsigned long long)opt->ram_budget, opt->disk_dir ? ", disk " : "",
            opt->disk_dir ? opt->disk_dir : "", opt->redis ? ", Redis Cluster " : "",
            opt->redis ? opt->redis : "");
    if (opt->port_file) {
        char text[16];
        int n = snprintf(text, sizeof text, "%u\n", port);
        st = kvtc_write_file_atomic(opt->port_file, text, (size_t)n, err);
        if (st != KVTC_OK) {
            MHD_stop_daemon(d);
            return st;
        }
    }
    for (;;)
        pause(); /* until a signal ends the process */
}
