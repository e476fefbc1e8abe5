/* kvtc demo: the project's main demo. A multi-turn chat with the default model
 * whose KV cache is kept on disk, compressed, between turns: every turn starts
 * in a fresh session restored layer by layer from the .kvtc file, and is
 * checked against an exact cache recomputed from the whole conversation. */
#include "default_model.h"
#include "cli.h"
#include "commands.h"
#include "corpus.h"
#include "default_calib.h"
#include "kvtc_internal.h"
#include "model.h"
#include "session.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: kvtc demo [--model MODEL] [-c CALIB] [--ratio R] [--threads N]\n"
    "\n"
    "Holds a short conversation with the default model (SmolLM2-135M-Instruct,\n"
    "fetched on first use) about a license text. Between turns the conversation's\n"
    "KV cache is compressed to a .kvtc file (kvtc_compress, then kvtc_append for\n"
    "each new turn); each next turn restores it into a fresh session with the\n"
    "per-layer decoder (kvtc_decompress_layers). Every reply is compared with the\n"
    "reply of an exact cache recomputed from the whole conversation. The first run\n"
    "also builds the model's default calibration (a few minutes, then cached).\n"
    "\n"
    "options:\n"
    "      --model MODEL  model name (kvtc fetch --list) or GGUF path, with a chat\n"
    "                     template (default: smollm2-135m)\n"
    "  -c, --calibration FILE  calibration (default: the model's default one)\n"
    "  -r, --ratio R      target compression ratio (default " CLI_STR(KVTC_DEFAULT_RATIO) ")\n"
    "      --threads N    threads (default: all CPUs)\n"
    "  -h, --help         this help\n";

enum { OPT_MODEL = 256, OPT_THREADS };

#define MAX_REPLY 60
#define CONTEXT_CAP 4096
/* The document of the first turn: a license from the evaluation corpus,
 * never seen by the calibration. */
#define DOCUMENT_PATH "/usr/share/common-licenses/LGPL-3"
#define DOCUMENT_BYTES 8192

#define DOCUMENT_INTRO "Here is a software license:\n\n"
#define DOCUMENT_QUESTION "What is this document? Answer in two sentences."
#define FIRST_QUESTION DOCUMENT_INTRO "%s\n" DOCUMENT_QUESTION /* %s: the document */
static const char *const questions[] = {
    FIRST_QUESTION,
    "Can I use a library under this license in a program I do not publish the source of?",
    "Who publishes this license?",
    "Thanks. Now summarize the license in one sentence.",
};
#define N_TURNS (sizeof questions / sizeof questions[0])

typedef struct demo_args {
    const char *model_path, *calibration;
    double ratio;
    uint32_t threads;
} demo_args;

static int handle_option(void *user, int opt, const char *arg)
{
    demo_args *a = user;
    switch (opt) {
    case OPT_MODEL: a->model_path = arg; return CLI_OK;
    case 'c': a->calibration = arg; return CLI_OK;
    case 'r': return cli_parse_ratio("--ratio", arg, &a->ratio) ? CLI_OK : CLI_USAGE;
    case OPT_THREADS:
        return cli_parse_u32("--threads", arg, 1, 256, &a->threads) ? CLI_OK : CLI_USAGE;
    }
    return CLI_USAGE;
}

/* ---- generation ------------------------------------------------------------------ */

typedef struct reply {
    int32_t ids[MAX_REPLY];
    uint32_t n;    /* tokens, the end-of-turn token included when produced */
    double nll;    /* summed over the n tokens, under the generating cache */
} reply;

/* Greedy reply from `logits` (those of the prompt's last token): every token
 * but a final end-of-turn is run through the session. */
static kvtc_status generate(session *s, float *logits, int32_t eos, reply *out, kvtc_error *err)
{
    uint32_t vocab = session_model(s)->cfg.vocab_size;
    out->n = 0;
    out->nll = 0;
    while (out->n < MAX_REPLY) {
        int32_t tok = logits_argmax(logits, vocab);
        out->ids[out->n++] = tok;
        out->nll += logits_nll(logits, vocab, tok);
        if (tok == eos)
            break;
        kvtc_status st = session_forward(s, &tok, 1, logits, false, err);
        if (st != KVTC_OK)
            return st;
    }
    return KVTC_OK;
}

/* How a cache scores a given reply: summed NLL and top-1 agreement, teacher
 * forced from `logits` (those of the prompt's last token). */
static kvtc_status score(session *s, const float *logits, const reply *r, double *nll,
                         uint32_t *agree, kvtc_error *err)
{
    uint32_t vocab = session_model(s)->cfg.vocab_size;
    *nll = logits_nll(logits, vocab, r->ids[0]);
    *agree = logits_argmax(logits, vocab) == r->ids[0];
    if (r->n < 2)
        return KVTC_OK;
    float *all = kvtc_malloc_array((size_t)(r->n - 1) * vocab, sizeof(float));
    if (!all)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    kvtc_status st = session_forward(s, r->ids, r->n - 1, all, true, err);
    for (uint32_t i = 1; st == KVTC_OK && i < r->n; i++) {
        const float *row = all + (size_t)(i - 1) * vocab;
        *nll += logits_nll(row, vocab, r->ids[i]);
        *agree += logits_argmax(row, vocab) == r->ids[i];
    }
    kvtc_free(all);
    return st;
}

/* ---- the conversation ------------------------------------------------------------ */

typedef struct conversation {
    const model *m;
    const tokenizer *tok;
    const kvtc_calibration *cal;
    uint32_t threads;
    kvtc_compress_options copt;
    char path[4096]; /* the .kvtc file between turns */
    int32_t *history; /* every token run so far */
    uint32_t n_history;
    chat_message msgs[2 * N_TURNS];
    char *texts[2 * N_TURNS]; /* owned message contents */
    size_t n_msgs;
    float *logits;
} conversation;

/* Tokens to run for the last message added: the chat prompt of all messages
 * minus the prompt of all but the last (the template is append-only). */
static kvtc_status turn_tokens(const conversation *c, int32_t **ids, size_t *n, kvtc_error *err)
{
    char *before = NULL, *after = NULL;
    kvtc_status st = tokenizer_chat_prompt(c->tok, c->msgs, c->n_msgs - 1, false, &before, err);
    if (st == KVTC_OK)
        st = tokenizer_chat_prompt(c->tok, c->msgs, c->n_msgs, true, &after, err);
    size_t skip = c->n_msgs > 1 ? strlen(before) : 0;
    if (st == KVTC_OK && strncmp(before, after, skip) != 0)
        st = kvtc_fail(err, KVTC_E_UNSUPPORTED, "the chat template is not append-only");
    if (st == KVTC_OK)
        st = tokenizer_encode(c->tok, after + skip, strlen(after + skip), false, ids, n, err);
    kvtc_free(before);
    kvtc_free(after);
    return st;
}

static kvtc_status add_message(conversation *c, const char *role, char *text, kvtc_error *err)
{
    if (!text)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    c->texts[c->n_msgs] = text;
    c->msgs[c->n_msgs++] = (chat_message){role, text};
    return KVTC_OK;
}

/* Appends to the history, which holds what the live session holds: the
 * session refused any token beyond CONTEXT_CAP. */
static void remember(conversation *c, const int32_t *ids, size_t n)
{
    if (c->n_history + n > CONTEXT_CAP)
        return;
    memcpy(c->history + c->n_history, ids, n * sizeof *ids);
    c->n_history += (uint32_t)n;
}

/* Restores the stored conversation into a fresh session s. */
static kvtc_status restore(conversation *c, session *s, kvtc_error *err)
{
    void *data = NULL;
    size_t len = 0;
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = c->threads};
    session_reset(s);
    kvtc_status st = kvtc_read_file(c->path, &data, &len, err);
    if (st == KVTC_OK)
        st = kvtc_stream_info_get(data, len, &info, err);
    if (st == KVTC_OK)
        st = session_begin_import(s, info.dtype, info.n_tokens, info.pos0, err);
    if (st == KVTC_OK)
        st = kvtc_decompress_layers(c->cal, data, len, &dopt, session_import_layer, s, err);
    if (st == KVTC_OK || st == KVTC_E_CANCELLED)
        st = session_finish_import(s, err);
    kvtc_buffer_free(data);
    return st;
}

/* Saves the session's tokens [stored, n_past) to the .kvtc file: compresses
 * the whole cache the first time, appends the new tokens afterwards. */
static kvtc_status save(conversation *c, session *s, uint32_t stored, kvtc_error *err)
{
    kvtc_cache *all = NULL, *more = NULL;
    void *prev = NULL, *out = NULL;
    size_t prev_len = 0, out_len = 0;
    kvtc_status st = session_export_cache(s, KVTC_F16, &all, err);
    if (st == KVTC_OK && stored == 0) {
        st = kvtc_compress(c->cal, all, &c->copt, &out, &out_len, err);
    } else if (st == KVTC_OK) {
        uint32_t n_new = kvtc_cache_tokens(all) - stored;
        st = kvtc_cache_create(kvtc_cache_shape(all), KVTC_F16, n_new,
                               kvtc_cache_pos0(all) + stored, &more, err);
        if (st == KVTC_OK) {
            kvtc_cache_copy_tokens(more, 0, all, stored, n_new);
            st = kvtc_read_file(c->path, &prev, &prev_len, err);
        }
        if (st == KVTC_OK)
            st = kvtc_append(c->cal, prev, prev_len, more, &c->copt, &out, &out_len, err);
    }
    if (st == KVTC_OK)
        st = kvtc_write_file_atomic(c->path, out, out_len, err);
    kvtc_buffer_free(out);
    kvtc_buffer_free(prev);
    kvtc_cache_free(more);
    kvtc_cache_free(all);
    return st;
}

/* One line of text, shortened to `max` bytes, newlines shown as spaces. */
static void print_line(const char *label, const char *text, size_t max)
{
    printf("  %s", label);
    size_t i = 0;
    for (; text[i] && i < max; i++)
        putchar(text[i] == '\n' ? ' ' : text[i]);
    printf("%s\n", text[i] ? " [...]" : "");
}

/* The reply's text without its end-of-turn token. */
static kvtc_status reply_text(const conversation *c, const reply *r, char **text,
                              kvtc_error *err)
{
    uint32_t n = r->n;
    if (n > 0 && r->ids[n - 1] == tokenizer_eos(c->tok))
        n--;
    return tokenizer_decode(c->tok, r->ids, n, text, err);
}

/* Totals over the restored turns. */
typedef struct demo_totals {
    uint32_t turns, tokens, agree, same_replies;
    double nll_exact, nll_restored;
    double ttft_restored, ttft_recomputed; /* of the last turn */
    uint32_t last_context;
} demo_totals;

static kvtc_status run_turn(conversation *c, size_t turn, session *live, session *exact,
                            demo_totals *t, kvtc_error *err)
{
    const int32_t eos = tokenizer_eos(c->tok);
    const uint32_t vocab = c->m->cfg.vocab_size;
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    kvtc_status st = turn_tokens(c, &prompt, &n_prompt, err);
    if (st != KVTC_OK)
        return st;
    if (turn == 0)
        printf("  user: Here is a software license: [the text of %s] %s\n", DOCUMENT_PATH,
               DOCUMENT_QUESTION);
    else
        print_line("user: ", c->msgs[c->n_msgs - 1].content, 300);
    uint32_t stored = c->n_history;
    reply live_reply, exact_reply;
    double t_restore = 0, t_live = 0, t_exact = 0;
    if (turn == 0) {
        double t0 = cli_now();
        session_reset(live);
        st = session_forward(live, prompt, (uint32_t)n_prompt, c->logits, false, err);
        t_live = cli_now() - t0;
        if (st == KVTC_OK)
            st = generate(live, c->logits, eos, &live_reply, err);
    } else {
        /* The resumed conversation: restore from disk, then the new turn. */
        double t0 = cli_now();
        st = restore(c, live, err);
        t_restore = cli_now() - t0;
        if (st == KVTC_OK)
            st = session_forward(live, prompt, (uint32_t)n_prompt, c->logits, false, err);
        t_live = cli_now() - t0;
        if (st == KVTC_OK)
            st = generate(live, c->logits, eos, &live_reply, err);

        /* The exact reference: recompute everything, reply greedily. */
        float *exact_logits = kvtc_malloc_array(vocab, sizeof(float));
        if (!exact_logits && st == KVTC_OK)
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
        t0 = cli_now();
        session_reset(exact);
        if (st == KVTC_OK)
            st = session_forward(exact, c->history, (uint32_t)c->n_history, NULL, false, err);
        if (st == KVTC_OK)
            st = session_forward(exact, prompt, (uint32_t)n_prompt, exact_logits, false, err);
        t_exact = cli_now() - t0;
        if (st == KVTC_OK)
            st = generate(exact, exact_logits, eos, &exact_reply, err);
        kvtc_free(exact_logits);

        /* How the restored cache scores the exact reply (in `exact`, whose
         * own cache is no longer needed, restored again). */
        double nll = 0;
        uint32_t agree = 0;
        if (st == KVTC_OK)
            st = restore(c, exact, err);
        if (st == KVTC_OK)
            st = session_forward(exact, prompt, (uint32_t)n_prompt, c->logits, false, err);
        if (st == KVTC_OK)
            st = score(exact, c->logits, &exact_reply, &nll, &agree, err);
        if (st == KVTC_OK) {
            bool same = live_reply.n == exact_reply.n &&
                        memcmp(live_reply.ids, exact_reply.ids, live_reply.n * sizeof(int32_t)) == 0;
            t->turns++;
            t->tokens += exact_reply.n;
            t->agree += agree;
            t->same_replies += same;
            t->nll_exact += exact_reply.nll;
            t->nll_restored += nll;
            t->ttft_restored = t_live;
            t->ttft_recomputed = t_exact;
            t->last_context = c->n_history + (uint32_t)n_prompt;
            printf("  restored %u tokens from %s in %.0f ms; first reply token after %.0f ms "
                   "(recomputing all %u tokens: %.0f ms, %.1fx slower)\n",
                   stored, c->path, 1e3 * t_restore, 1e3 * t_live, t->last_context,
                   1e3 * t_exact, t_exact / t_live);
            printf("  vs the exact cache: %s reply; top-1 agreement %u/%u; NLL of the exact "
                   "reply %+.3f nats/token\n",
                   same ? "same" : "different", agree, exact_reply.n,
                   (nll - exact_reply.nll) / exact_reply.n);
        }
    }
    if (turn == 0 && st == KVTC_OK)
        printf("  first turn: prefill of %zu tokens in %.0f ms\n", n_prompt, 1e3 * t_live);
    char *text = NULL;
    if (st == KVTC_OK)
        st = reply_text(c, &live_reply, &text, err);
    if (st == KVTC_OK) {
        print_line("assistant: ", text, 400);
        st = add_message(c, "assistant", text, err);
    }
    /* Close the turn in the live session and store it. */
    int32_t *end = NULL;
    size_t n_end = 0;
    static const char end_text[] = "<|im_end|>\n";
    if (st == KVTC_OK)
        st = tokenizer_encode(c->tok, end_text, strlen(end_text), false, &end, &n_end, err);
    if (st == KVTC_OK) {
        /* generate() ran every reply token but a final end-of-turn */
        uint32_t n_reply = live_reply.n - (live_reply.ids[live_reply.n - 1] == eos);
        st = session_forward(live, end, (uint32_t)n_end, NULL, false, err);
        remember(c, prompt, n_prompt);
        remember(c, live_reply.ids, n_reply);
        remember(c, end, n_end);
        if (st == KVTC_OK && session_n_past(live) != c->n_history)
            st = kvtc_fail(err, KVTC_E_INVALID, "demo: session holds %u tokens, history %u",
                           session_n_past(live), c->n_history);
        if (st == KVTC_OK)
            st = save(c, live, stored, err);
    }
    kvtc_free(end);
    kvtc_free(prompt);
    return st;
}

/* The first turn's question with the document pasted in. */
static char *first_question(kvtc_error *err)
{
    char *doc = NULL;
    size_t len = 0;
    if (corpus_read(DOCUMENT_PATH, DOCUMENT_BYTES, &doc, &len, err) != KVTC_OK)
        return NULL;
    size_t cap = len + strlen(questions[0]) + 1;
    char *text = kvtc_malloc(cap);
    if (text)
        snprintf(text, cap, FIRST_QUESTION, doc);
    else
        kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    kvtc_free(doc);
    return text;
}

static void print_summary(const conversation *c, const demo_totals *t, uint64_t features)
{
    void *data = NULL;
    size_t len = 0;
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_error err;
    if (kvtc_read_file(c->path, &data, &len, &err) != KVTC_OK ||
        kvtc_stream_info_get(data, len, &info, &err) != KVTC_OK) {
        kvtc_buffer_free(data);
        cli_fail_err(c->path, &err);
        return;
    }
    kvtc_buffer_free(data);
    double fp16_token = 4.0 * (double)features; /* keys and values, 2 bytes each */
    printf("\nsummary (target ratio %g, %u restored turns)\n", c->copt.k_ratio, t->turns);
    printf("  KV cache: %u tokens; fp16 %.0f bytes/token -> stored %.0f bytes/token\n",
           info.n_tokens, fp16_token, (double)len / info.n_tokens);
    if (info.compressed_tokens)
        printf("  realized ratio: %.1fx on the %u compressed tokens (%.0f bytes/token), %.1fx for "
               "the whole file (the %u sink and window tokens stay raw fp16)\n",
               fp16_token * info.compressed_tokens / (double)info.compressed_bytes,
               info.compressed_tokens, (double)info.compressed_bytes / info.compressed_tokens,
               fp16_token * info.n_tokens / (double)len, info.sinks + info.window);
    if (t->turns) {
        printf("  quality on the continuation (restored vs exact cache): %u/%u replies "
               "identical, top-1 agreement %.1f%% (%u/%u tokens), NLL %+.3f nats/token\n",
               t->same_replies, t->turns, 100.0 * t->agree / t->tokens, t->agree, t->tokens,
               (t->nll_restored - t->nll_exact) / t->tokens);
        printf("  time to first token at %u tokens: restored %.0f ms vs recomputed %.0f ms "
               "(%.1fx lower; single run, see 'kvtc bench ttft' for medians)\n",
               t->last_context, 1e3 * t->ttft_restored, 1e3 * t->ttft_recomputed,
               t->ttft_recomputed / t->ttft_restored);
    }
}

int cmd_demo(int argc, char **argv)
{
    static const struct option longs[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"calibration", required_argument, NULL, 'c'},
        {"ratio", required_argument, NULL, 'r'},
        {"threads", required_argument, NULL, OPT_THREADS},
        {0},
    };
    demo_args a = {NULL, NULL, KVTC_DEFAULT_RATIO, cli_default_threads()};
    int first;
    int rc = cli_parse_options(argc, argv, "c:r:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (first < argc)
        return cli_usage_error("unexpected argument '%s'", argv[first]);

    kvtc_error err;
    char model_path[4096], calib_path[4096];
    if (model_resolve(a.model_path, model_path, sizeof model_path, true, &err) != KVTC_OK)
        return cli_fail(NULL, "%s", err.message);
    conversation c = {.threads = a.threads};
    model *m = NULL;
    tokenizer *tok = NULL;
    kvtc_calibration *cal = NULL;
    session *live = NULL, *exact = NULL;
    char dir[] = "/tmp/kvtc-demo-XXXXXX";
    bool have_dir = false;
    demo_totals totals = {0};
    kvtc_status st = model_open(model_path, &m, &tok, &err);
    if (st == KVTC_OK && !tok)
        st = kvtc_fail(&err, KVTC_E_UNSUPPORTED, "%s: no tokenizer in the model", model_path);
    if (st != KVTC_OK) {
        rc = cli_fail_err(model_path, &err);
        goto done;
    }
    double t0 = cli_now();
    if (a.calibration) {
        snprintf(calib_path, sizeof calib_path, "%s", a.calibration);
    } else if (default_calibration(model_path, a.threads, calib_path, sizeof calib_path, &err) !=
               KVTC_OK) {
        rc = cli_fail_err(NULL, &err);
        goto done;
    }
    double calib_s = cli_now() - t0;
    if (!(cal = cli_read_calibration(calib_path))) {
        rc = CLI_FAIL;
        goto done;
    }
    if (!mkdtemp(dir)) {
        rc = cli_fail(dir, "cannot create a temporary folder");
        goto done;
    }
    have_dir = true;
    c.m = m;
    c.tok = tok;
    c.cal = cal;
    kvtc_compress_options_default(&c.copt);
    c.copt.k_ratio = c.copt.v_ratio = a.ratio;
    c.copt.n_threads = a.threads;
    snprintf(c.path, sizeof c.path, "%s/conversation.kvtc", dir);
    c.history = kvtc_malloc_array(CONTEXT_CAP, sizeof *c.history);
    c.logits = kvtc_malloc_array(m->cfg.vocab_size, sizeof(float));
    if (!c.history || !c.logits) {
        rc = cli_fail(NULL, "out of memory");
        goto done;
    }
    st = session_create(m, CONTEXT_CAP, a.threads, &live, &err);
    if (st == KVTC_OK)
        st = session_create(m, CONTEXT_CAP, a.threads, &exact, &err);
    kvtc_model_shape shape = model_kv_shape(m);
    printf("kvtc demo: a chat whose KV cache is stored compressed on disk between turns\n");
    printf("  model: %s (%u layers, %u KV heads x %u dims: %.1f KB/token of fp16 cache)\n",
           model_path, shape.n_layer, shape.n_kv_head, shape.head_dim,
           4.0 * (double)kvtc_shape_features(&shape) / 1024);
    printf("  calibration: %s (%s)\n", calib_path,
           calib_s > 5 ? "built now from text on this machine" : "cached");
    for (size_t turn = 0; turn < N_TURNS && st == KVTC_OK; turn++) {
        printf("\nturn %zu\n", turn + 1);
        char *q = turn == 0 ? first_question(&err) : kvtc_strdup(questions[turn]);
        if (!q && turn != 0)
            kvtc_fail(&err, KVTC_E_NOMEM, "out of memory");
        st = q ? add_message(&c, "user", q, &err) : err.status;
        if (st == KVTC_OK)
            st = run_turn(&c, turn, live, exact, &totals, &err);
        if (st == KVTC_OK) {
            kvtc_stream_info info = {.struct_size = sizeof info};
            void *data = NULL;
            size_t len = 0;
            st = kvtc_read_file(c.path, &data, &len, &err);
            if (st == KVTC_OK)
                st = kvtc_stream_info_get(data, len, &info, &err);
            if (st == KVTC_OK)
                printf("  stored: %u tokens in %zu bytes (%.0f bytes/token; fp16 %.0f)\n",
                       info.n_tokens, len, (double)len / info.n_tokens,
                       4.0 * (double)kvtc_shape_features(&shape));
            kvtc_buffer_free(data);
        }
    }
    if (st != KVTC_OK) {
        rc = cli_fail_err(NULL, &err);
        goto done;
    }
    print_summary(&c, &totals, kvtc_shape_features(&shape));
    rc = CLI_OK;
done:
    if (have_dir) {
        unlink(c.path);
        rmdir(dir);
    }
    for (size_t i = 0; i < c.n_msgs; i++)
        kvtc_free(c.texts[i]);
    kvtc_free(c.history);
    kvtc_free(c.logits);
    session_free(live);
    session_free(exact);
    kvtc_calibration_free(cal);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}
