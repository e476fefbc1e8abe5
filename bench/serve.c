/* kvtc bench serve: a bounded load of concurrent multi-turn conversations on a
 * real `kvtc serve`, driven over HTTP with libcurl the way a chat client
 * drives it (streamed OpenAI chat completions), then a burst that overfills
 * the server's queue.
 *
 * Each conversation shares one system prompt and has its own long first user
 * message (evaluation-corpus text); later turns append the reply and a short
 * question. Turn 1 is a cold prefill (but for the shared system prompt's
 * blocks), later turns resume from the prompt cache. Time to first token is
 * measured at the client: from sending the request to the first streamed
 * token, so under load it includes waiting behind other conversations. Then,
 * with nothing else running, a few conversations take one more turn alone,
 * resumed on the server and cold on a second server without a prompt cache:
 * the time a restore saves, and how many greedy tokens of the resumed reply
 * are the exact cache's. Per-tier hits and bytes come from /metrics. The burst
 * sends short distinct prompts (under one cache block, so the cache plays no
 * part) all at once: every answer must be 200 with the reply the same prompt
 * got alone, or 429 with a JSON error. */
#include "bench_common.h"

#include "cli.h"
#include "corpus.h"
#include "default_model.h"
#include "gguf.h"
#include "json.h"
#include "kvtc_internal.h"
#include "tokenizer.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char serve_usage[] =
    "usage: kvtc bench serve [--url URL | --model MODEL] [options]\n"
    "\n"
    "Runs N conversations of T turns from C concurrent clients against a kvtc\n"
    "serve (started here on a free loopback port unless --url names one), with\n"
    "an idle time between a conversation's turns, then overfills its queue with a\n"
    "burst. Reports time to first token (p50/p95/p99) under the load of cold\n"
    "first turns and resumed later turns; a turn alone, resumed against cold on a\n"
    "second server without a prompt cache (its time to first token and the share\n"
    "of greedy reply tokens equal to the exact cache's); prompt-cache hits per\n"
    "tier, bytes per conversation, and how many conversations a GB holds\n"
    "compressed against raw fp16. Fails when a\n"
    "request gets anything but 200 (or, in the burst, 429 with a JSON error), or a\n"
    "burst reply differs from the reply its prompt got alone.\n"
    "\n"
    "options:\n"
    "      --url URL           a running server (e.g. http://127.0.0.1:8080)\n"
    "      --cold-url URL      with --url: a server of the same model without a\n"
    "                          prompt cache, for the turns alone (else skipped)\n"
    "      --solo N            conversations that take a turn alone (default 4)\n"
    "      --solo-tokens K     tokens generated in those turns (default 32)\n"
    "      --model MODEL       the model the server runs (started here, or the\n"
    "                          one --url serves): its KV shape sizes raw fp16\n"
    "                          (default: smollm2-135m)\n"
    "  -c, --calibration FILE  the started server's calibration\n"
    "  -r, --ratio R           the started server's compression ratio (default: its\n"
    "                          own, " CLI_STR(KVTC_DEFAULT_RATIO) ")\n"
    "      --conversations N   conversations (default 24)\n"
    "      --turns T           turns per conversation (default 3)\n"
    "      --clients C         concurrent clients (default 4)\n"
    "      --context N         about N tokens in a conversation's first message\n"
    "                          (default 2048)\n"
    "      --idle-ms MS        idle time between a conversation's turns (default 500)\n"
    "      --max-tokens K      tokens generated per turn (default 16)\n"
    "      --ram-budget SIZE   the started server's RAM tier (default 256M: fewer\n"
    "                          conversations than the load has fit in it raw)\n"
    "      --max-queue N       the started server's queue (default 4)\n"
    "      --burst N           burst requests (default 3 x (max queue + 1))\n"
    "      --threads N         the started server's engine threads (default: all)\n"
    "      --json              print the results as JSON\n"
    "  -h, --help              this help\n";

enum { OPT_URL = 1400, OPT_CONVERSATIONS, OPT_TURNS, OPT_CLIENTS, OPT_IDLE, OPT_MAX_TOKENS,
       OPT_RAM_BUDGET, OPT_MAX_QUEUE, OPT_BURST, OPT_COLD_URL, OPT_SOLO, OPT_SOLO_TOKENS };

typedef struct serve_bench_args {
    const char *url, *cold_url, *model, *calibration;
    uint32_t conversations, turns, clients, context, idle_ms, max_tokens, max_queue, burst;
    uint32_t solo, solo_tokens;
    uint32_t threads;
    uint64_t ram_budget;
    const char *ratio; /* passed to the started server as given */
    bool json;
} serve_bench_args;

static int handle_option(void *user, int opt, const char *arg)
{
    serve_bench_args *a = user;
    bool ok = true;
    switch (opt) {
    case OPT_URL: a->url = arg; break;
    case OPT_COLD_URL: a->cold_url = arg; break;
    case OPT_SOLO: ok = cli_parse_u32("--solo", arg, 0, 64, &a->solo); break;
    case OPT_SOLO_TOKENS:
        ok = cli_parse_u32("--solo-tokens", arg, 1, 4096, &a->solo_tokens);
        break;
    case OPT_MODEL: a->model = arg; break;
    case 'c': a->calibration = arg; break;
    case 'r': {
        double r;
        ok = cli_parse_ratio("--ratio", arg, &r);
        a->ratio = arg;
        break;
    }
    case OPT_CONVERSATIONS:
        ok = cli_parse_u32("--conversations", arg, 1, 4096, &a->conversations);
        break;
    case OPT_TURNS: ok = cli_parse_u32("--turns", arg, 2, 64, &a->turns); break;
    case OPT_CLIENTS: ok = cli_parse_u32("--clients", arg, 1, 256, &a->clients); break;
    case OPT_CONTEXT: ok = cli_parse_u32("--context", arg, 64, 1u << 20, &a->context); break;
    case OPT_IDLE: ok = cli_parse_u32("--idle-ms", arg, 0, 3600000, &a->idle_ms); break;
    case OPT_MAX_TOKENS: ok = cli_parse_u32("--max-tokens", arg, 1, 4096, &a->max_tokens); break;
    case OPT_RAM_BUDGET: ok = cli_parse_size("--ram-budget", arg, &a->ram_budget); break;
    case OPT_MAX_QUEUE: ok = cli_parse_u32("--max-queue", arg, 0, 4096, &a->max_queue); break;
    case OPT_BURST: ok = cli_parse_u32("--burst", arg, 1, 1024, &a->burst); break;
    case OPT_THREADS: ok = cli_parse_threads(arg, &a->threads); break;
    case OPT_JSON: a->json = true; break;
    default: return CLI_USAGE;
    }
    return ok ? CLI_OK : CLI_USAGE;
}

/* ---- the server under test ---------------------------------------------------- */

typedef struct started_server {
    pid_t pid;
    char dir[64], log[128];
} started_server;

/* Starts `kvtc serve` (this executable) on a free loopback port and waits for
 * it to listen; writes its URL. */
static bool start_server(const serve_bench_args *a, uint64_t ram_budget, started_server *s,
                         char *url, size_t cap)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return cli_fail(NULL, "cannot find this executable: %s", strerror(errno)), false;
    exe[n] = '\0';
    snprintf(s->dir, sizeof s->dir, "/tmp/kvtc-bench-serve.XXXXXX");
    if (!mkdtemp(s->dir))
        return cli_fail(NULL, "cannot make a temporary folder: %s", strerror(errno)), false;
    char port_file[128], budget[32], queue[16], threads[16];
    snprintf(port_file, sizeof port_file, "%s/port", s->dir);
    snprintf(s->log, sizeof s->log, "%s/serve.log", s->dir);
    snprintf(budget, sizeof budget, "%llu", (unsigned long long)ram_budget);
    snprintf(queue, sizeof queue, "%u", a->max_queue);
    snprintf(threads, sizeof threads, "%u", a->threads);
    char *argv[20] = {exe, "serve", "--port", "0", "--port-file", port_file, "--ram-budget",
                      budget, "--max-queue", queue, "--threads", threads};
    int argc = 12;
    if (a->model) {
        argv[argc++] = "--model";
        argv[argc++] = (char *)a->model;
    }
    if (a->calibration) {
        argv[argc++] = "--calibration";
        argv[argc++] = (char *)a->calibration;
    }
    if (a->ratio) {
        argv[argc++] = "--ratio";
        argv[argc++] = (char *)a->ratio;
    }
    argv[argc] = NULL;
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0)
        return cli_fail(NULL, "out of memory"), false;
    int rc = posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, s->log,
                                              O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    if (rc == 0)
        rc = posix_spawn(&s->pid, exe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return cli_fail(exe, "cannot start kvtc serve: %s", strerror(rc)), false;
    /* the first start may fetch the model and build its calibration */
    for (int i = 0; i < 6000; i++) {
        FILE *f = fopen(port_file, "r");
        unsigned port = 0;
        if (f) {
            int got = fscanf(f, "%u", &port);
            fclose(f);
            if (got == 1 && port > 0) {
                snprintf(url, cap, "http://127.0.0.1:%u", port);
                return true;
            }
        }
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            return cli_fail(s->log, "kvtc serve exited before listening (see its log)"), false;
        }
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    return cli_fail(s->log, "kvtc serve did not listen within 10 minutes"), false;
}

/* Stops the server; true when it was still running (it never crashed). */
static bool stop_server(started_server *s)
{
    bool alive = false;
    if (s->pid > 0) {
        int status;
        alive = waitpid(s->pid, &status, WNOHANG) == 0;
        kill(s->pid, SIGTERM);
        while (waitpid(s->pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    if (s->dir[0]) {
        char path[160];
        snprintf(path, sizeof path, "%s/port", s->dir);
        unlink(path);
        if (alive)
            unlink(s->log);
        rmdir(s->dir); /* kept, with the log, when the server died */
    }
    return alive;
}

/* ---- one HTTP exchange ---------------------------------------------------------- */

typedef struct reply {
    long status;
    kvtc_writer body;  /* the raw body (non-streamed, or an error) */
    kvtc_writer text;  /* streamed: the generated text */
    kvtc_writer event; /* streamed: the event being received */
    double t_sent, t_first, t_done;
    uint64_t prompt_tokens, cached_tokens;
    bool streamed, bad_event;
    int curl_code; /* CURLcode of the transfer */
} reply;

static void reply_free(reply *r)
{
    kvtc_writer_free(&r->body);
    kvtc_writer_free(&r->text);
    kvtc_writer_free(&r->event);
}

/* One server-sent event's data: a chunk of text, or the usage at the end. */
static void on_event(reply *r, const char *data, size_t len)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0)
        return;
    kvtc_json *doc;
    kvtc_error err;
    if (kvtc_json_parse(data, len, &doc, &err) != KVTC_OK) {
        r->bad_event = true;
        return;
    }
    const kvtc_json_value *root = kvtc_json_root(doc), *choices = kvtc_json_get(root, "choices");
    const kvtc_json_value *first = choices && choices->type == KVTC_JSON_ARRAY ? choices->child
                                                                             : NULL;
    const kvtc_json_value *content = kvtc_json_get(kvtc_json_get(first, "delta"), "content");
    if (content && content->type == KVTC_JSON_STRING && content->str[0]) {
        if (r->t_first == 0)
            r->t_first = cli_now();
        kvtc_put_bytes(&r->text, content->str, strlen(content->str));
    }
    const kvtc_json_value *usage = kvtc_json_get(root, "usage");
    if (usage && usage->type == KVTC_JSON_OBJECT) {
        kvtc_json_u64(kvtc_json_get(usage, "prompt_tokens"), &r->prompt_tokens);
        kvtc_json_u64(kvtc_json_get(kvtc_json_get(usage, "prompt_tokens_details"), "cached_tokens"),
                      &r->cached_tokens);
    }
    kvtc_json_free(doc);
}

static size_t on_body(char *p, size_t size, size_t n, void *user)
{
    reply *r = user;
    size_t len = size * n;
    kvtc_put_bytes(&r->body, p, len);
    if (!r->streamed)
        return len;
    /* events are "data: ...\n\n"; chunks of the transfer may split them anywhere */
    for (size_t i = 0; i < len; i++) {
        kvtc_put_bytes(&r->event, p + i, 1);
        size_t m = r->event.len;
        if (m >= 2 && r->event.buf[m - 1] == '\n' && r->event.buf[m - 2] == '\n') {
            const char *e = (const char *)r->event.buf;
            if (m > 8 && memcmp(e, "data: ", 6) == 0)
                on_event(r, e + 6, m - 8);
            r->event.len = 0;
        }
    }
    return len;
}

/* POSTs body to url + path (or GETs it when body is NULL). */
static bool http(const char *url, const char *path, const kvtc_writer *body, bool streamed,
                 reply *r)
{
    memset(r, 0, sizeof *r);
    kvtc_writer_init(&r->body);
    kvtc_writer_init(&r->text);
    kvtc_writer_init(&r->event);
    r->streamed = streamed;
    char full[512];
    snprintf(full, sizeof full, "%s%s", url, path);
    CURL *c = curl_easy_init();
    if (!c)
        return false;
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 900L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    if (body) {
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body->buf);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body->len);
    }
    r->t_sent = cli_now();
    CURLcode rc = curl_easy_perform(c);
    r->curl_code = (int)rc;
    r->t_done = cli_now();
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    return rc == CURLE_OK && !r->body.failed && !r->text.failed;
}

/* ---- conversations ----------------------------------------------------------------- */

typedef struct message {
    const char *role;
    char *content; /* kvtc_malloc */
} message;

typedef struct conversation {
    message *msgs;
    uint32_t n_msgs;
    uint32_t turn; /* turns done */
    double due;    /* when the next turn may start */
    bool busy;
} conversation;

/* What one turn measured. */
typedef struct turn_result {
    uint32_t turn;
    double ttft;
    uint64_t prompt_tokens, cached_tokens;
} turn_result;

typedef struct load {
    const serve_bench_args *a;
    const char *url, *model_id;
    pthread_mutex_t lock;
    conversation *conv;
    turn_result *results;
    uint32_t n_results;
    atomic_uint retries;
    bool failed;
    char failure[512];
} load;

static char *dup_text(const char *s, size_t n)
{
    char *d = kvtc_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void fail_load(load *l, const char *why)
{
    pthread_mutex_lock(&l->lock);
    if (!l->failed)
        snprintf(l->failure, sizeof l->failure, "%s", why);
    l->failed = true;
    pthread_mutex_unlock(&l->lock);
}

static void request_body(const char *model_id, const message *msgs, uint32_t n, uint32_t max_tokens,
                         bool stream, kvtc_writer *w)
{
    kvtc_writer_init(w);
    kvtc_json_writer jw;
    kvtc_jw_init(&jw, w, false);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "model");
    kvtc_jw_string(&jw, model_id);
    kvtc_jw_key(&jw, "max_tokens");
    kvtc_jw_uint(&jw, max_tokens);
    kvtc_jw_key(&jw, "stream");
    kvtc_jw_bool(&jw, stream);
    if (stream) {
        kvtc_jw_key(&jw, "stream_options");
        kvtc_jw_begin_object(&jw);
        kvtc_jw_key(&jw, "include_usage");
        kvtc_jw_bool(&jw, true);
        kvtc_jw_end_object(&jw);
    }
    kvtc_jw_key(&jw, "messages");
    kvtc_jw_begin_array(&jw);
    for (uint32_t i = 0; i < n; i++) {
        kvtc_jw_begin_object(&jw);
        kvtc_jw_key(&jw, "role");
        kvtc_jw_string(&jw, msgs[i].role);
        kvtc_jw_key(&jw, "content");
        kvtc_jw_string(&jw, msgs[i].content);
        kvtc_jw_end_object(&jw);
    }
    kvtc_jw_end_array(&jw);
    kvtc_jw_end_object(&jw);
    kvtc_put_bytes(w, "", 1); /* NUL-terminated for curl's error paths; not sent */
    w->len--;
}

static const char *const follow_ups[] = {
    "Thank you. What is the main point of the text above, in one sentence?",
    "Which part of it would a newcomer find hardest, and why?",
    "Name one thing the text leaves out.",
    "Say that again more briefly.",
};

/* Sends conversation c's messages to url as a streamed completion, waiting
 * and retrying while the server answers 429 (counted in *retries); false with
 * the reason in why on failure. */
static bool send_turn(const char *url, const char *model_id, const conversation *c,
                      uint32_t max_tokens, reply *r, atomic_uint *retries, char why[256])
{
    kvtc_writer body;
    request_body(model_id, c->msgs, c->n_msgs, max_tokens, true, &body);
    for (;;) {
        bool ok = !body.failed && http(url, "/v1/chat/completions", &body, true, r);
        if (ok && r->status == 429) { /* the queue is full: a client waits and retries */
            reply_free(r);
            atomic_fetch_add(retries, 1);
            struct timespec ts = {0, 200000000};
            nanosleep(&ts, NULL);
            continue;
        }
        kvtc_writer_free(&body);
        if (ok && r->status == 200 && !r->bad_event && r->t_first > 0 && r->prompt_tokens > 0)
            return true;
        snprintf(why, 256, "a conversation turn failed: status %ld, %s", r->status,
                 !ok            ? curl_easy_strerror((CURLcode)r->curl_code)
                 : r->bad_event ? "a malformed event"
                 : r->t_first == 0 ? "no token streamed"
                                   : "no usage");
        reply_free(r);
        return false;
    }
}

/* Appends the reply and the next question to c. */
static bool extend_conversation(conversation *c, const reply *r)
{
    message *grown = realloc(c->msgs, (c->n_msgs + 2) * sizeof *grown);
    if (grown)
        c->msgs = grown;
    char *answer = dup_text(r->text.buf ? (const char *)r->text.buf : "", r->text.len);
    const char *q = follow_ups[c->turn % (sizeof follow_ups / sizeof follow_ups[0])];
    char *question = dup_text(q, strlen(q));
    if (!grown || !answer || !question) {
        kvtc_free(answer);
        kvtc_free(question);
        return false;
    }
    c->msgs[c->n_msgs++] = (message){"assistant", answer};
    c->msgs[c->n_msgs++] = (message){"user", question};
    return true;
}

/* Runs the next turn of conversation c; false on failure (recorded in l). */
static bool run_turn(load *l, conversation *c)
{
    reply r;
    char why[256];
    if (!send_turn(l->url, l->model_id, c, l->a->max_tokens, &r, &l->retries, why)) {
        fail_load(l, why);
        return false;
    }
    turn_result t = {c->turn, r.t_first - r.t_sent, r.prompt_tokens, r.cached_tokens};
    bool ok = extend_conversation(c, &r);
    reply_free(&r);
    if (!ok) {
        fail_load(l, "out of memory");
        return false;
    }
    pthread_mutex_lock(&l->lock);
    l->results[l->n_results++] = t;
    pthread_mutex_unlock(&l->lock);
    return true;
}

/* A client: takes the conversation whose next turn is due first, waits for
 * it if it is not due yet, runs it; until every turn is done. */
static void *client_main(void *arg)
{
    load *l = arg;
    for (;;) {
        pthread_mutex_lock(&l->lock);
        conversation *next = NULL;
        for (uint32_t i = 0; i < l->a->conversations && !l->failed; i++) {
            conversation *c = &l->conv[i];
            if (!c->busy && c->turn < l->a->turns && (!next || c->due < next->due))
                next = c;
        }
        if (next)
            next->busy = true;
        pthread_mutex_unlock(&l->lock);
        if (!next)
            return NULL; /* all done or taken (a busy one is another client's) */
        double wait = next->due - cli_now();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
            nanosleep(&ts, NULL);
        }
        bool ok = run_turn(l, next);
        pthread_mutex_lock(&l->lock);
        next->turn++;
        next->due = cli_now() + l->a->idle_ms / 1000.0;
        next->busy = false;
        pthread_mutex_unlock(&l->lock);
        if (!ok)
            return NULL;
    }
}

/* The evaluation corpus's text, documents one after another. */
static char *corpus_text(size_t *len)
{
    corpus_doc docs[64];
    size_t n = corpus_documents(CORPUS_EVALUATION, docs, 64);
    kvtc_writer w;
    kvtc_writer_init(&w);
    for (size_t i = 0; i < n && i < 64; i++) {
        char *t;
        size_t tl;
        kvtc_error err;
        if (corpus_doc_text(&docs[i], &t, &tl, &err) != KVTC_OK)
            continue;
        kvtc_put_bytes(&w, t, tl);
        kvtc_put_bytes(&w, "\n\n", 2);
        kvtc_free(t);
    }
    kvtc_put_bytes(&w, "", 1);
    if (w.failed || w.len < 2) {
        kvtc_writer_free(&w);
        return NULL;
    }
    *len = w.len - 1;
    return (char *)w.buf;
}

/* chars of text from `start` (wrapping around), cut to whole words and
 * whole UTF-8 characters. */
static char *text_piece(const char *text, size_t len, size_t start, size_t chars)
{
    char *out = kvtc_malloc(chars + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < chars; i++)
        out[i] = text[(start + i) % len];
    size_t end = chars;
    while (end > 0 && out[end - 1] != ' ' && out[end - 1] != '\n')
        end--;
    out[end ? end : chars] = '\0';
    return out;
}

/* ---- metrics -------------------------------------------------------------------------- */

#define MAX_TIERS 4
typedef struct tier_metrics {
    char name[16];
    double lookups, hits, hit_tokens, stores, evictions, entries, bytes, budget;
} tier_metrics;

/* The prompt-cache lines of /metrics ("kvtc_cache_X{tier=\"T\"} V"), by tier;
 * returns how many tiers. */
static uint32_t read_tiers(const char *url, tier_metrics *t)
{
    reply r;
    uint32_t n = 0;
    if (!http(url, "/metrics", NULL, false, &r) || r.status != 200) {
        reply_free(&r);
        return 0;
    }
    kvtc_put_bytes(&r.body, "", 1);
    static const struct {
        const char *name;
        size_t off;
    } fields[] = {
        {"kvtc_cache_lookups_total", offsetof(tier_metrics, lookups)},
        {"kvtc_cache_hits_total", offsetof(tier_metrics, hits)},
        {"kvtc_cache_hit_tokens_total", offsetof(tier_metrics, hit_tokens)},
        {"kvtc_cache_stores_total", offsetof(tier_metrics, stores)},
        {"kvtc_cache_evictions_total", offsetof(tier_metrics, evictions)},
        {"kvtc_cache_entries", offsetof(tier_metrics, entries)},
        {"kvtc_cache_bytes", offsetof(tier_metrics, bytes)},
        {"kvtc_cache_budget_bytes", offsetof(tier_metrics, budget)},
    };
    for (char *line = (char *)r.body.buf; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char name[64], tier[16];
        double v;
        if (line[0] != '#' &&
            sscanf(line, "%63[a-z_]{tier=\"%15[a-z0-9_-]\"} %lf", name, tier, &v) == 3) {
            uint32_t i = 0;
            while (i < n && strcmp(t[i].name, tier))
                i++;
            if (i == n && n < MAX_TIERS) {
                memset(&t[n], 0, sizeof t[n]);
                snprintf(t[n].name, sizeof t[n].name, "%s", tier);
                n++;
            }
            for (size_t f = 0; i < n && f < sizeof fields / sizeof fields[0]; f++)
                if (strcmp(name, fields[f].name) == 0)
                    *(double *)((char *)&t[i] + fields[f].off) = v;
        }
        line = next;
    }
    reply_free(&r);
    return n;
}

/* The id /v1/models lists first, into id. */
static bool read_model_id(const char *url, char *id, size_t cap)
{
    reply r;
    bool ok = http(url, "/v1/models", NULL, false, &r) && r.status == 200;
    kvtc_json *doc = NULL;
    kvtc_error err;
    ok = ok && kvtc_json_parse((const char *)r.body.buf, r.body.len, &doc, &err) == KVTC_OK;
    const kvtc_json_value *data = ok ? kvtc_json_get(kvtc_json_root(doc), "data") : NULL;
    const kvtc_json_value *name =
        data && data->type == KVTC_JSON_ARRAY ? kvtc_json_get(data->child, "id") : NULL;
    ok = name && name->type == KVTC_JSON_STRING;
    if (ok)
        snprintf(id, cap, "%s", name->str);
    kvtc_json_free(doc);
    reply_free(&r);
    return ok;
}

/* A gauge of /metrics without labels ("name value"); NAN when absent. */
static double read_gauge(const char *url, const char *name)
{
    reply r;
    double v = NAN;
    if (http(url, "/metrics", NULL, false, &r) && r.status == 200) {
        kvtc_put_bytes(&r.body, "", 1);
        size_t n = strlen(name);
        for (const char *line = (const char *)r.body.buf; line && *line;) {
            if (strncmp(line, name, n) == 0 && line[n] == ' ')
                v = strtod(line + n + 1, NULL);
            line = strchr(line, '\n');
            line = line ? line + 1 : NULL;
        }
    }
    reply_free(&r);
    return v;
}

/* Waits until the server runs nothing and queues nothing (the compression
 * after a reply included), at most 10 minutes. */
static bool wait_idle(const char *url)
{
    for (int i = 0; i < 6000; i++) {
        if (read_gauge(url, "kvtc_engine_busy") == 0 && read_gauge(url, "kvtc_queue_depth") == 0)
            return true;
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* ---- turns alone: resumed against cold ------------------------------------------------ */

typedef struct solo_result {
    uint32_t n;
    double resumed_ttft[64], cold_ttft[64];
    double resumed_p50, cold_p50;
    uint64_t cached_tokens, prompt_tokens;
    uint64_t agree_tokens, exact_tokens; /* greedy reply tokens equal at the same position */
    double min_agreement;
} solo_result;

/* Tokens of a reply's text (the model's tokenizer), into *ids. */
static size_t reply_tokens(const tokenizer *tok, const reply *r, int32_t **ids)
{
    size_t n = 0;
    kvtc_error err;
    *ids = NULL;
    if (tokenizer_encode(tok, r->text.buf ? (const char *)r->text.buf : "", r->text.len, false,
                         ids, &n, &err) != KVTC_OK)
        return 0;
    return n;
}

/* The first n conversations take one more turn, each with nothing else
 * running: on the server (resumed) and on the cache-less one (cold). */
static bool run_solo(load *l, const char *cold_url, const tokenizer *tok, solo_result *res,
                     char why[256])
{
    res->min_agreement = 1;
    atomic_uint retries = 0;
    for (uint32_t i = 0; i < l->a->solo && i < l->a->conversations && i < 64; i++) {
        conversation *c = &l->conv[i];
        reply warm, cold;
        if (!wait_idle(l->url) || !wait_idle(cold_url)) {
            snprintf(why, 256, "%s: the server did not go idle", l->url);
            return false;
        }
        if (!send_turn(l->url, l->model_id, c, l->a->solo_tokens, &warm, &retries, why))
            return false;
        if (!send_turn(cold_url, l->model_id, c, l->a->solo_tokens, &cold, &retries, why)) {
            reply_free(&warm);
            return false;
        }
        res->resumed_ttft[res->n] = warm.t_first - warm.t_sent;
        res->cold_ttft[res->n] = cold.t_first - cold.t_sent;
        res->cached_tokens += warm.cached_tokens;
        res->prompt_tokens += warm.prompt_tokens;
        int32_t *a = NULL, *b = NULL;
        size_t na = reply_tokens(tok, &warm, &a), nb = reply_tokens(tok, &cold, &b), same = 0;
        for (size_t k = 0; k < na && k < nb; k++)
            same += a[k] == b[k];
        res->agree_tokens += same;
        res->exact_tokens += nb;
        if (nb && (double)same / (double)nb < res->min_agreement)
            res->min_agreement = (double)same / (double)nb;
        kvtc_free(a);
        kvtc_free(b);
        reply_free(&warm);
        reply_free(&cold);
        res->n++;
    }
    double v[64];
    memcpy(v, res->resumed_ttft, res->n * sizeof *v);
    res->resumed_p50 = bench_median(v, res->n);
    memcpy(v, res->cold_ttft, res->n * sizeof *v);
    res->cold_p50 = bench_median(v, res->n);
    return true;
}

/* ---- the burst ----------------------------------------------------------------------- */

typedef struct burst_request {
    const char *url;
    kvtc_writer body;
    reply r;
    bool ok;
    pthread_mutex_t *gate;
} burst_request;

static void *burst_main(void *arg)
{
    burst_request *b = arg;
    pthread_mutex_lock(b->gate); /* all wait here until the burst is released */
    pthread_mutex_unlock(b->gate);
    b->ok = http(b->url, "/v1/chat/completions", &b->body, false, &b->r);
    return NULL;
}

/* The reply text of a non-streamed completion (kvtc_malloc), or NULL. */
static char *reply_content(const reply *r)
{
    kvtc_json *doc;
    kvtc_error err;
    if (kvtc_json_parse((const char *)r->body.buf, r->body.len, &doc, &err) != KVTC_OK)
        return NULL;
    const kvtc_json_value *choices = kvtc_json_get(kvtc_json_root(doc), "choices");
    const kvtc_json_value *content = kvtc_json_get(
        kvtc_json_get(choices && choices->type == KVTC_JSON_ARRAY ? choices->child : NULL,
                      "message"),
        "content");
    char *out = content && content->type == KVTC_JSON_STRING
                    ? dup_text(content->str, strlen(content->str))
                    : NULL;
    kvtc_json_free(doc);
    return out;
}

static bool is_json_error(const reply *r)
{
    kvtc_json *doc;
    kvtc_error err;
    if (kvtc_json_parse((const char *)r->body.buf, r->body.len, &doc, &err) != KVTC_OK)
        return false;
    const kvtc_json_value *e = kvtc_json_get(kvtc_json_root(doc), "error");
    bool ok = e && e->type == KVTC_JSON_OBJECT;
    kvtc_json_free(doc);
    return ok;
}

typedef struct burst_result {
    uint32_t sent, ok, refused, wrong;
    char failure[256];
} burst_result;

/* n short distinct prompts, each first alone (its expected reply), then all
 * at once. */
static bool run_burst(const char *url, const char *model_id, uint32_t n, burst_result *res)
{
    memset(res, 0, sizeof *res);
    burst_request *b = kvtc_calloc(n, sizeof *b);
    char **expected = kvtc_calloc(n, sizeof *expected);
    pthread_t *th = kvtc_calloc(n, sizeof *th);
    pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
    bool ok = b && expected && th;
    for (uint32_t i = 0; ok && i < n; i++) {
        char q[128];
        snprintf(q, sizeof q, "Request %u: write the number %u in words.", i, 7 * i + 3);
        message m = {"user", q};
        request_body(model_id, &m, 1, 8, false, &b[i].body);
        b[i].url = url;
        b[i].gate = &gate;
        reply r;
        ok = !b[i].body.failed && http(url, "/v1/chat/completions", &b[i].body, false, &r) &&
             r.status == 200 && (expected[i] = reply_content(&r)) != NULL;
        if (!ok)
            snprintf(res->failure, sizeof res->failure,
                     "burst prompt %u alone: status %ld", i, r.status);
        reply_free(&r);
    }
    uint32_t started = 0;
    if (ok) {
        pthread_mutex_lock(&gate);
        for (; started < n; started++)
            if (pthread_create(&th[started], NULL, burst_main, &b[started]) != 0)
                break;
        pthread_mutex_unlock(&gate);
    }
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        res->sent++;
        char *got = b[i].ok && b[i].r.status == 200 ? reply_content(&b[i].r) : NULL;
        if (b[i].ok && b[i].r.status == 200 && got && strcmp(got, expected[i]) == 0)
            res->ok++;
        else if (b[i].ok && b[i].r.status == 429 && is_json_error(&b[i].r))
            res->refused++;
        else {
            res->wrong++;
            if (!res->failure[0])
                snprintf(res->failure, sizeof res->failure,
                         "burst request %u: status %ld%s", i, b[i].r.status,
                         b[i].r.status == 200 ? ", a reply other than its prompt's" : "");
        }
        kvtc_free(got);
        reply_free(&b[i].r);
    }
    ok = ok && started == n && res->wrong == 0;
    for (uint32_t i = 0; b && expected && i < n; i++) {
        kvtc_writer_free(&b[i].body);
        kvtc_free(expected[i]);
    }
    kvtc_free(b);
    kvtc_free(expected);
    kvtc_free(th);
    return ok;
}

/* ---- report ------------------------------------------------------------------------------ */

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? -1 : a > b;
}

/* Nearest-rank percentile q of n sorted values. */
static double percentile(const double *v, size_t n, double q)
{
    if (n == 0)
        return NAN;
    size_t k = (size_t)ceil(q * (double)n);
    return v[k ? k - 1 : 0];
}

typedef struct ttft_summary {
    size_t n;
    double p50, p95, p99, mean_prompt, mean_cached;
} ttft_summary;

static ttft_summary summarize(const turn_result *t, size_t n, bool resumed, double *scratch)
{
    ttft_summary s = {0};
    double prompt = 0, cached = 0;
    for (size_t i = 0; i < n; i++)
        if ((t[i].turn > 0) == resumed) {
            scratch[s.n++] = t[i].ttft;
            prompt += (double)t[i].prompt_tokens;
            cached += (double)t[i].cached_tokens;
        }
    qsort(scratch, s.n, sizeof *scratch, cmp_double);
    s.p50 = percentile(scratch, s.n, 0.50);
    s.p95 = percentile(scratch, s.n, 0.95);
    s.p99 = percentile(scratch, s.n, 0.99);
    s.mean_prompt = s.n ? prompt / (double)s.n : NAN;
    s.mean_cached = s.n ? cached / (double)s.n : NAN;
    return s;
}

static void json_summary(cli_json *j, const char *key, const ttft_summary *s)
{
    kvtc_jw_key(&j->jw, key);
    kvtc_jw_begin_object(&j->jw);
    cli_json_u64(j, "turns", s->n);
    cli_json_f64(j, "ttft_p50_ms", 1e3 * s->p50);
    cli_json_f64(j, "ttft_p95_ms", 1e3 * s->p95);
    cli_json_f64(j, "ttft_p99_ms", 1e3 * s->p99);
    cli_json_f64(j, "mean_prompt_tokens", s->mean_prompt);
    cli_json_f64(j, "mean_cached_tokens", s->mean_cached);
    kvtc_jw_end_object(&j->jw);
}

typedef struct serve_report {
    const serve_bench_args *a;
    ttft_summary cold, resumed;
    tier_metrics tiers[MAX_TIERS];
    uint32_t n_tiers, retries;
    double raw_bytes_per_conv, seconds;
    bool solo_run;
    solo_result solo;
    burst_result burst;
} serve_report;

static int print_report(const serve_report *r)
{
    const tier_metrics *ram = NULL;
    for (uint32_t i = 0; i < r->n_tiers; i++)
        if (strcmp(r->tiers[i].name, "ram") == 0)
            ram = &r->tiers[i];
    double per_conv = ram && ram->entries > 0 ? ram->bytes / ram->entries : NAN;
    double speedup = r->cold.p50 / r->resumed.p50;
    if (r->a->json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_u64(&j, "conversations", r->a->conversations);
        cli_json_u64(&j, "turns", r->a->turns);
        cli_json_u64(&j, "clients", r->a->clients);
        cli_json_u64(&j, "idle_ms", r->a->idle_ms);
        cli_json_u64(&j, "max_tokens", r->a->max_tokens);
        json_summary(&j, "cold", &r->cold);
        json_summary(&j, "resumed", &r->resumed);
        cli_json_f64(&j, "ttft_p50_speedup_under_load", speedup);
        if (r->solo_run) {
            const solo_result *o = &r->solo;
            kvtc_jw_key(&j.jw, "alone");
            kvtc_jw_begin_object(&j.jw);
            cli_json_u64(&j, "turns", o->n);
            cli_json_f64(&j, "resumed_ttft_p50_ms", 1e3 * o->resumed_p50);
            cli_json_f64(&j, "cold_ttft_p50_ms", 1e3 * o->cold_p50);
            cli_json_f64(&j, "ttft_speedup", o->cold_p50 / o->resumed_p50);
            cli_json_f64(&j, "mean_prompt_tokens", o->n ? (double)o->prompt_tokens / o->n : NAN);
            cli_json_f64(&j, "mean_cached_tokens", o->n ? (double)o->cached_tokens / o->n : NAN);
            cli_json_f64(&j, "greedy_agreement",
                         o->exact_tokens ? (double)o->agree_tokens / o->exact_tokens : NAN);
            cli_json_f64(&j, "min_greedy_agreement", o->min_agreement);
            kvtc_jw_end_object(&j.jw);
        }
        cli_json_u64(&j, "retries_after_429", r->retries);
        kvtc_jw_key(&j.jw, "tiers");
        kvtc_jw_begin_array(&j.jw);
        for (uint32_t i = 0; i < r->n_tiers; i++) {
            const tier_metrics *t = &r->tiers[i];
            kvtc_jw_begin_object(&j.jw);
            cli_json_str(&j, "tier", t->name);
            cli_json_f64(&j, "lookups", t->lookups);
            cli_json_f64(&j, "hits", t->hits);
            cli_json_f64(&j, "hit_rate", t->lookups > 0 ? t->hits / t->lookups : NAN);
            cli_json_f64(&j, "hit_tokens", t->hit_tokens);
            cli_json_f64(&j, "stores", t->stores);
            cli_json_f64(&j, "evictions", t->evictions);
            cli_json_f64(&j, "entries", t->entries);
            cli_json_f64(&j, "bytes", t->bytes);
            cli_json_f64(&j, "budget_bytes", t->budget);
            kvtc_jw_end_object(&j.jw);
        }
        kvtc_jw_end_array(&j.jw);
        cli_json_f64(&j, "compressed_bytes_per_conversation", per_conv);
        cli_json_f64(&j, "raw_fp16_bytes_per_conversation", r->raw_bytes_per_conv);
        cli_json_f64(&j, "conversations_per_gb_compressed", 1e9 / per_conv);
        cli_json_f64(&j, "conversations_per_gb_raw_fp16", 1e9 / r->raw_bytes_per_conv);
        cli_json_u64(&j, "burst_sent", r->burst.sent);
        cli_json_u64(&j, "burst_ok", r->burst.ok);
        cli_json_u64(&j, "burst_refused_429", r->burst.refused);
        cli_json_u64(&j, "burst_wrong", r->burst.wrong);
        cli_json_f64(&j, "seconds", r->seconds);
        return cli_json_print(&j);
    }
    printf("%u conversations x %u turns from %u clients, %u ms idle between turns, "
           "%u tokens per reply (%.0f s)\n",
           r->a->conversations, r->a->turns, r->a->clients, r->a->idle_ms, r->a->max_tokens,
           r->seconds);
    printf("  time to first token      p50        p95        p99   turns  prompt  cached\n");
    const ttft_summary *s[2] = {&r->cold, &r->resumed};
    const char *names[2] = {"cold (turn 1)", "resumed (later)"};
    for (int i = 0; i < 2; i++)
        printf("  %-18s %7.0f ms %7.0f ms %7.0f ms %7zu %7.0f %7.0f\n", names[i], 1e3 * s[i]->p50,
               1e3 * s[i]->p95, 1e3 * s[i]->p99, s[i]->n, s[i]->mean_prompt, s[i]->mean_cached);
    printf("  under load resumed first tokens come %.1fx sooner (p50); %u retries after 429\n",
           speedup, r->retries);
    if (r->solo_run) {
        const solo_result *o = &r->solo;
        printf("  alone (%u turns, %.0f prompt tokens, %.0f cached): first token resumed %.0f ms, "
               "cold %.0f ms (%.1fx sooner)\n",
               o->n, o->n ? (double)o->prompt_tokens / o->n : 0,
               o->n ? (double)o->cached_tokens / o->n : 0, 1e3 * o->resumed_p50,
               1e3 * o->cold_p50, o->cold_p50 / o->resumed_p50);
        printf("  greedy reply tokens equal to the exact cache's: %.1f%% (%llu of %llu; worst "
               "turn %.1f%%)\n",
               o->exact_tokens ? 100.0 * o->agree_tokens / o->exact_tokens : 0,
               (unsigned long long)o->agree_tokens, (unsigned long long)o->exact_tokens,
               100 * o->min_agreement);
    } else {
        printf("  turns alone: skipped (--url without --cold-url)\n");
    }
    for (uint32_t i = 0; i < r->n_tiers; i++) {
        const tier_metrics *t = &r->tiers[i];
        printf("  tier %-6s hits %.0f / %.0f lookups (%.0f%%), %.0f stores, %.0f evictions, "
               "%.0f entries, %.1f MB of %.1f MB\n",
               t->name, t->hits, t->lookups, t->lookups > 0 ? 100 * t->hits / t->lookups : 0,
               t->stores, t->evictions, t->entries, t->bytes / 1e6, t->budget / 1e6);
    }
    printf("  per conversation %.2f MB compressed, %.2f MB raw fp16: a GB holds %.0f "
           "compressed, %.0f raw (%.1fx)\n",
           per_conv / 1e6, r->raw_bytes_per_conv / 1e6, 1e9 / per_conv,
           1e9 / r->raw_bytes_per_conv, r->raw_bytes_per_conv / per_conv);
    printf("  burst of %u at once: %u answered right, %u refused with 429, %u wrong\n",
           r->burst.sent, r->burst.ok, r->burst.refused, r->burst.wrong);
    return CLI_OK;
}

/* ---- the benchmark ---------------------------------------------------------------------- */

int bench_serve(int argc, char **argv)
{
    static const struct option longs[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"cold-url", required_argument, NULL, OPT_COLD_URL},
        {"solo", required_argument, NULL, OPT_SOLO},
        {"solo-tokens", required_argument, NULL, OPT_SOLO_TOKENS},
        OPTION_MODEL,
        OPTION_CALIB,
        OPTION_RATIO,
        {"conversations", required_argument, NULL, OPT_CONVERSATIONS},
        {"turns", required_argument, NULL, OPT_TURNS},
        {"clients", required_argument, NULL, OPT_CLIENTS},
        OPTION_CONTEXT,
        {"idle-ms", required_argument, NULL, OPT_IDLE},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"ram-budget", required_argument, NULL, OPT_RAM_BUDGET},
        {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
        {"burst", required_argument, NULL, OPT_BURST},
        OPTION_THREADS,
        OPTION_JSON,
        {0},
    };
    serve_bench_args a = {.conversations = 24, .turns = 3, .clients = 4, .context = 2048,
                          .idle_ms = 500, .max_tokens = 16, .max_queue = 4, .solo = 4,
                          .solo_tokens = 32,
                          .threads = cli_default_threads(), .ram_budget = 256u << 20};
    int first;
    int rc = cli_parse_options(argc, argv, "c:r:", longs, serve_usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (first != argc)
        return cli_usage_error("unexpected argument '%s'", argv[first]);
    if (a.url && (a.calibration || a.ratio))
        return cli_usage_error("--url names a running server: -c and --ratio are its own");
    if (a.cold_url && !a.url)
        return cli_usage_error("--cold-url goes with --url (without, both are started here)");
    if (!a.burst)
        a.burst = 3 * (a.max_queue + 1);
    kvtc_model_shape shape;
    char model_name[64], model_path[4096];
    const char *model_arg = a.model ? a.model : "smollm2-135m";
    kvtc_error err;
    kvtc_gguf_file *gguf = NULL;
    tokenizer *tok = NULL;
    if (!cli_read_model_shape(model_arg, &shape, model_name))
        return CLI_FAIL;
    /* the tokenizer compares resumed and exact replies token by token */
    if (model_resolve(model_arg, model_path, sizeof model_path, true, &err) != KVTC_OK ||
        kvtc_gguf_open(model_path, &gguf, &err) != KVTC_OK ||
        tokenizer_load_gguf(gguf, &tok, &err) != KVTC_OK) {
        kvtc_gguf_close(gguf);
        return cli_fail_err(model_arg, &err);
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
        return cli_fail(NULL, "cannot initialize libcurl");

    serve_report rep = {.a = &a};
    size_t text_len = 0;
    char *text = corpus_text(&text_len);
    started_server srv = {0}, cold_srv = {0};
    char url[128], cold_url[128] = "", model_id[256];
    load l = {.a = &a, .url = url, .model_id = model_id, .lock = PTHREAD_MUTEX_INITIALIZER};
    l.conv = kvtc_calloc(a.conversations, sizeof *l.conv);
    l.results = kvtc_calloc((size_t)a.conversations * a.turns, sizeof *l.results);
    double *scratch = kvtc_calloc((size_t)a.conversations * a.turns, sizeof *scratch);
    pthread_t *clients = kvtc_calloc(a.clients, sizeof *clients);
    rc = CLI_FAIL;
    if (!text || !l.conv || !l.results || !scratch || !clients) {
        cli_fail(NULL, text ? "out of memory" : "no evaluation corpus text on this machine");
        goto done;
    }
    if (a.url) {
        snprintf(url, sizeof url, "%s", a.url);
        if (a.cold_url)
            snprintf(cold_url, sizeof cold_url, "%s", a.cold_url);
    } else if (!start_server(&a, a.ram_budget, &srv, url, sizeof url) ||
               (a.solo && !start_server(&a, 0, &cold_srv, cold_url, sizeof cold_url))) {
        goto done;
    }
    if (!read_model_id(url, model_id, sizeof model_id)) {
        cli_fail(url, "GET /v1/models gave no model id");
        goto done;
    }
    /* about 4.2 characters per token of English prose and C; the server's
     * usage says how many tokens each turn really had */
    size_t chars = (size_t)a.context * 42 / 10;
    char *system = text_piece(text, text_len, 0, 1200);
    for (uint32_t i = 0; system && i < a.conversations; i++) {
        conversation *c = &l.conv[i];
        c->msgs = malloc(2 * sizeof *c->msgs);
        char *user = text_piece(text, text_len, 1200 + (size_t)i * chars, chars);
        char *sys = dup_text(system, strlen(system));
        if (!c->msgs || !user || !sys) {
            kvtc_free(user);
            kvtc_free(sys);
            free(c->msgs);
            c->msgs = NULL;
            break;
        }
        c->msgs[0] = (message){"system", sys};
        c->msgs[1] = (message){"user", user};
        c->n_msgs = 2;
    }
    kvtc_free(system);
    if (!l.conv[a.conversations - 1].msgs) {
        cli_fail(NULL, "out of memory");
        goto done;
    }
    double t0 = cli_now();
    uint32_t started = 0;
    for (; started < a.clients; started++)
        if (pthread_create(&clients[started], NULL, client_main, &l) != 0)
            break;
    for (uint32_t i = 0; i < started; i++)
        pthread_join(clients[i], NULL);
    rep.seconds = cli_now() - t0;
    if (l.failed || started == 0) {
        cli_fail(url, "%s", l.failed ? l.failure : "cannot start client threads");
        goto done;
    }
    rep.cold = summarize(l.results, l.n_results, false, scratch);
    rep.resumed = summarize(l.results, l.n_results, true, scratch);
    rep.retries = atomic_load(&l.retries);
    rep.n_tiers = read_tiers(url, rep.tiers);
    char why[256];
    if (cold_url[0] && a.solo) {
        if (!run_solo(&l, cold_url, tok, &rep.solo, why)) {
            cli_fail(NULL, "%s", why);
            goto done;
        }
        rep.solo_run = true;
    }
    /* raw fp16 of a conversation's cache after its last turn */
    double tokens = 0;
    for (size_t i = 0; i < l.n_results; i++)
        if (l.results[i].turn == a.turns - 1)
            tokens += (double)l.results[i].prompt_tokens + a.max_tokens;
    rep.raw_bytes_per_conv = tokens / a.conversations * 4.0 * (double)kvtc_shape_features(&shape);
    bool burst_ok = run_burst(url, model_id, a.burst, &rep.burst);
    print_report(&rep);
    if (!burst_ok)
        cli_fail(url, "%s", rep.burst.failure[0] ? rep.burst.failure : "the burst failed");
    else
        rc = CLI_OK;
done:
    if (!a.url && srv.pid && !stop_server(&srv) && rc == CLI_OK)
        rc = cli_fail(srv.log, "kvtc serve died during the load (its log is kept)");
    if (!a.url && cold_srv.pid && !stop_server(&cold_srv) && rc == CLI_OK)
        rc = cli_fail(cold_srv.log, "kvtc serve died during the load (its log is kept)");
    tokenizer_free(tok);
    kvtc_gguf_close(gguf);
    for (uint32_t i = 0; l.conv && i < a.conversations; i++) {
        for (uint32_t m = 0; m < l.conv[i].n_msgs; m++)
            kvtc_free(l.conv[i].msgs[m].content);
        free(l.conv[i].msgs);
    }
    kvtc_free(l.conv);
    kvtc_free(l.results);
    kvtc_free(scratch);
    kvtc_free(clients);
    kvtc_free(text);
    curl_global_cleanup();
    return rc;
}
