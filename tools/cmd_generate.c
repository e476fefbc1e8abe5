/* kvtc generate: greedy text generation, optionally continuing from a saved
 * KV cache. The generated text goes to stdout as it is made; timings go to
 * stderr. */
#include "default_model.h"
#include "cli.h"
#include "commands.h"
#include "kvtc_internal.h"
#include "session.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: kvtc generate [--model MODEL] --prompt TEXT [-n N] [--chat] [options]\n"
    "\n"
    "Greedy generation: prints the continuation of the prompt (stopping at the\n"
    "model's end-of-text token or after N tokens).\n"
    "\n"
    "options:\n"
    "  -m, --model MODEL     a model name (kvtc fetch --list; fetched on first use) or\n"
    "                        a GGUF path (default: smollm2-135m)\n"
    "  -p, --prompt TEXT     the prompt (required)\n"
    "  -n, --tokens N        tokens to generate at most (default 64)\n"
    "      --chat            wrap the prompt in the model's chat template as a user\n"
    "                        message and generate the assistant's reply\n"
    "      --cache FILE      continue after a saved cache (.safetensors from\n"
    "                        'kvtc capture' or 'kvtc decompress') of the same model\n"
    "      --threads N       threads (default: all CPUs)\n"
    "  -h, --help            this help\n";

enum { OPT_CHAT = 1200, OPT_CACHE, OPT_THREADS };

typedef struct generate_args {
    const char *model, *prompt, *cache;
    uint32_t n_tokens, threads;
    bool chat;
} generate_args;

static int handle_option(void *user, int opt, const char *arg)
{
    generate_args *a = user;
    bool ok = true;
    switch (opt) {
    case 'm': a->model = arg; break;
    case 'p': a->prompt = arg; break;
    case 'n': ok = cli_parse_u32("--tokens", arg, 1, 1u << 20, &a->n_tokens); break;
    case OPT_CHAT: a->chat = true; break;
    case OPT_CACHE: a->cache = arg; break;
    case OPT_THREADS: ok = cli_parse_threads(arg, &a->threads); break;
    default: return CLI_USAGE;
    }
    return ok ? CLI_OK : CLI_USAGE;
}

/* The prompt's token ids, through the chat template when asked. */
static kvtc_status encode_prompt(const generate_args *a, const tokenizer *tok, int32_t **ids,
                                 size_t *n, kvtc_error *err)
{
    char *text = NULL;
    if (a->chat) {
        chat_message msg = {"user", a->prompt};
        kvtc_status st = tokenizer_chat_prompt(tok, &msg, 1, true, &text, err);
        if (st != KVTC_OK)
            return st;
    }
    const char *src = text ? text : a->prompt;
    kvtc_status st = tokenizer_encode(tok, src, strlen(src), false, ids, n, err);
    kvtc_free(text);
    return st;
}

static void print_token(const tokenizer *tok, int32_t id)
{
    char buf[256];
    size_t len = tokenizer_token_bytes(tok, id, buf, sizeof buf);
    fwrite(buf, 1, len < sizeof buf ? len : sizeof buf, stdout);
    fflush(stdout);
}

int cmd_generate(int argc, char **argv)
{
    static const struct option longs[] = {
        {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'p'},
        {"tokens", required_argument, NULL, 'n'},
        {"chat", no_argument, NULL, OPT_CHAT},
        {"cache", required_argument, NULL, OPT_CACHE},
        {"threads", required_argument, NULL, OPT_THREADS},
        {0},
    };
    generate_args a = {.n_tokens = 64, .threads = cli_default_threads()};
    int first;
    int rc = cli_parse_options(argc, argv, "m:p:n:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (first < argc)
        return cli_usage_error("unexpected argument '%s'", argv[first]);
    if (!a.prompt)
        return cli_usage_error("--prompt TEXT is required");

    model *m = NULL;
    tokenizer *tok = NULL;
    session *s = NULL;
    kvtc_cache *cache = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    size_t n_prompt = 0;
    kvtc_error err;
    rc = CLI_FAIL;
    if (model_open_or_default(a.model, &m, &tok, &err) != KVTC_OK) {
        cli_fail_err(a.model, &err);
        goto done;
    }
    if (!tok) {
        cli_fail(a.model, "this model has no tokenizer, so it cannot take a text prompt");
        goto done;
    }
    if (encode_prompt(&a, tok, &ids, &n_prompt, &err) != KVTC_OK) {
        cli_fail_err(NULL, &err);
        goto done;
    }
    if (n_prompt == 0) {
        cli_fail(NULL, "the prompt has no tokens");
        goto done;
    }
    if (a.cache && !(cache = cli_read_cache(a.cache)))
        goto done;
    uint64_t held = cache ? kvtc_cache_tokens(cache) : 0;
    uint64_t capacity = held + n_prompt + a.n_tokens;
    if (capacity > m->cfg.context_length) {
        cli_fail(NULL, "%llu tokens (cache, prompt and -n) exceed the model's context of %u",
                 (unsigned long long)capacity, m->cfg.context_length);
        goto done;
    }
    logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    if (!logits) {
        cli_fail(NULL, "out of memory");
        goto done;
    }
    kvtc_status st = session_create(m, (uint32_t)capacity, a.threads, &s, &err);
    if (st == KVTC_OK && cache && (st = session_import_cache(s, cache, &err)) != KVTC_OK) {
        cli_fail_err(a.cache, &err);
        goto done;
    }
    double t0 = cli_now();
    if (st == KVTC_OK)
        st = session_forward(s, ids, (uint32_t)n_prompt, logits, false, &err);
    double t1 = cli_now();
    uint32_t generated = 0;
    int32_t eos = tokenizer_eos(tok);
    while (st == KVTC_OK && generated < a.n_tokens) {
        int32_t next = logits_argmax(logits, m->cfg.vocab_size);
        if (next == eos)
            break;
        print_token(tok, next);
        generated++;
        if (generated < a.n_tokens)
            st = session_forward(s, &next, 1, logits, false, &err);
    }
    double t2 = cli_now();
    printf("\n");
    fflush(stdout);
    if (st != KVTC_OK) {
        cli_fail_err(NULL, &err);
        goto done;
    }
    fprintf(stderr, "kvtc generate: prompt %zu tokens in %.2f s (%.0f tokens/s), %u generated "
            "in %.2f s (%.1f tokens/s)\n", n_prompt, t1 - t0, (double)n_prompt / (t1 - t0),
            generated, t2 - t1, generated / (t2 - t1 > 0 ? t2 - t1 : 1));
    rc = CLI_OK;
done:
    free(logits);
    kvtc_free(ids);
    kvtc_cache_free(cache);
    session_free(s);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}
