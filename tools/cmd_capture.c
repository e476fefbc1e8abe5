/* kvtc capture: run a model over text (or over tokens it samples itself) and
 * save the KV cache it builds as .safetensors. */
#include "default_model.h"
#include "cli.h"
#include "commands.h"
#include "kvtc_internal.h"
#include "session.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: kvtc capture [--model MODEL] (--text FILE | --prompt TEXT | --sample N)\n"
    "                    [options] -o CACHE.safetensors\n"
    "\n"
    "Runs a model over the input and saves its KV cache (keys after RoPE, as the\n"
    "model holds them), one [kv_heads, tokens, head_dim] tensor per layer and kind.\n"
    "\n"
    "options:\n"
    "  -m, --model MODEL     a model name (kvtc fetch --list; fetched on first use), a\n"
    "                        GGUF or a llama2.c checkpoint (default: smollm2-135m)\n"
    "  -t, --text FILE       text to run, tokenized by the model's tokenizer\n"
    "  -p, --prompt TEXT     the same, given on the command line\n"
    "      --sample N        N tokens: BOS, then tokens sampled from the model itself\n"
    "                        (temperature 1); for models without a tokenizer\n"
    "      --seed S          seed of --sample (default 1)\n"
    "      --max-tokens N    keep only the first N tokens of the input\n"
    "      --dtype TYPE      f16 (default) or f32\n"
    "      --threads N       threads (default: all CPUs)\n"
    "  -o, --output FILE     the cache to write (required)\n"
    "  -h, --help            this help\n";

enum { OPT_SAMPLE = 1100, OPT_SEED, OPT_MAX_TOKENS, OPT_DTYPE };

typedef struct capture_args {
    const char *model, *text_file, *prompt, *output;
    uint32_t sample, seed, max_tokens, threads;
    kvtc_dtype dtype;
} capture_args;

static int handle_option(void *user, int opt, const char *arg)
{
    capture_args *a = user;
    bool ok;
    switch (opt) {
    case 'm': a->model = arg; return CLI_OK;
    case 't': a->text_file = arg; return CLI_OK;
    case 'p': a->prompt = arg; return CLI_OK;
    case 'o': a->output = arg; return CLI_OK;
    case OPT_SAMPLE: ok = cli_parse_u32("--sample", arg, 1, 1u << 24, &a->sample); break;
    case OPT_SEED: ok = cli_parse_u32("--seed", arg, 0, UINT32_MAX, &a->seed); break;
    case OPT_MAX_TOKENS:
        ok = cli_parse_u32("--max-tokens", arg, 1, 1u << 24, &a->max_tokens);
        break;
    case 'T': ok = cli_parse_threads(arg, &a->threads); break;
    case OPT_DTYPE:
        if (strcmp(arg, "f16") == 0)
            a->dtype = KVTC_F16;
        else if (strcmp(arg, "f32") == 0)
            a->dtype = KVTC_F32;
        else
            return cli_usage_error("--dtype must be f16 or f32, not '%s'", arg);
        return CLI_OK;
    default: return CLI_USAGE;
    }
    return ok ? CLI_OK : CLI_USAGE;
}

/* splitmix64: a small, seeded, portable generator. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A token drawn from softmax(logits) (temperature 1). */
static int32_t sample_token(const float *logits, uint32_t vocab, uint64_t *rng)
{
    float max = logits[0];
    for (uint32_t i = 1; i < vocab; i++)
        max = logits[i] > max ? logits[i] : max;
    double total = 0;
    for (uint32_t i = 0; i < vocab; i++)
        total += exp((double)(logits[i] - max));
    double u = (double)(next_random(rng) >> 11) * 0x1.0p-53 * total, acc = 0;
    for (uint32_t i = 0; i < vocab; i++) {
        acc += exp((double)(logits[i] - max));
        if (u < acc)
            return (int32_t)i;
    }
    return (int32_t)(vocab - 1);
}

/* Fills the session with BOS and n - 1 tokens sampled one by one. */
static kvtc_status run_sampled(session *s, uint32_t n, uint32_t seed, kvtc_error *err)
{
    const model_config *c = &session_model(s)->cfg;
    float *logits = malloc((size_t)c->vocab_size * sizeof(float));
    if (!logits)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    uint64_t rng = seed;
    int32_t tok = c->bos_id >= 0 ? c->bos_id : 1;
    kvtc_status st = KVTC_OK;
    for (uint32_t i = 0; i < n && st == KVTC_OK; i++) {
        st = session_forward(s, &tok, 1, logits, false, err);
        tok = sample_token(logits, c->vocab_size, &rng);
    }
    free(logits);
    return st;
}

/* Prefills in slices of 512 tokens (the engine's own batch, so the result
 * is the same as one call) to show progress. */
static kvtc_status run_tokens(session *s, const int32_t *ids, uint32_t n, kvtc_error *err)
{
    cli_progress_state progress;
    cli_progress_init(&progress);
    kvtc_status st = KVTC_OK;
    for (uint32_t done = 0; done < n && st == KVTC_OK;) {
        uint32_t b = n - done < 512 ? n - done : 512;
        st = session_forward(s, ids + done, b, NULL, false, err);
        done += b;
        cli_progress(&progress, "prefill", done, n);
    }
    cli_progress_end(&progress);
    return st;
}

/* The input's token ids (text or prompt), cut to max_tokens. */
static int read_input(const capture_args *a, const tokenizer *tok, int32_t **ids, size_t *n)
{
    size_t len = 0;
    char *text = (char *)a->prompt;
    if (a->text_file && !(text = cli_read_file(a->text_file, &len)))
        return CLI_FAIL;
    if (!a->text_file)
        len = strlen(text);
    kvtc_error err;
    kvtc_status st = tokenizer_encode(tok, text, len, false, ids, n, &err);
    if (a->text_file)
        kvtc_buffer_free(text);
    if (st != KVTC_OK)
        return cli_fail_err(a->text_file, &err);
    if (*n == 0)
        return cli_fail(a->text_file, "the input has no tokens");
    if (a->max_tokens && *n > a->max_tokens)
        *n = a->max_tokens;
    return CLI_OK;
}

int cmd_capture(int argc, char **argv)
{
    static const struct option longs[] = {
        {"model", required_argument, NULL, 'm'},
        {"text", required_argument, NULL, 't'},
        {"prompt", required_argument, NULL, 'p'},
        {"output", required_argument, NULL, 'o'},
        {"sample", required_argument, NULL, OPT_SAMPLE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"dtype", required_argument, NULL, OPT_DTYPE},
        {"threads", required_argument, NULL, 'T'},
        {0},
    };
    capture_args a = {.seed = 1, .threads = cli_default_threads(), .dtype = KVTC_F16};
    int first;
    int rc = cli_parse_options(argc, argv, "m:t:p:o:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (first < argc)
        return cli_usage_error("unexpected argument '%s'", argv[first]);
    if (!a.output)
        return cli_usage_error("-o CACHE.safetensors is required");
    if ((a.text_file != NULL) + (a.prompt != NULL) + (a.sample != 0) != 1)
        return cli_usage_error("give exactly one of --text, --prompt and --sample");
    const char *inputs[] = {a.model, a.text_file};
    if ((rc = cli_check_output(a.output, inputs, 2)) != CLI_OK)
        return rc;
    if (a.sample && a.max_tokens && a.sample > a.max_tokens)
        a.sample = a.max_tokens;

    model *m = NULL;
    tokenizer *tok = NULL;
    session *s = NULL;
    int32_t *ids = NULL;
    size_t n = a.sample;
    kvtc_cache *cache = NULL;
    kvtc_error err;
    rc = CLI_FAIL;
    if (model_open_or_default(a.model, &m, a.sample ? NULL : &tok, &err) != KVTC_OK) {
        cli_fail_err(a.model, &err);
        goto done;
    }
    if (!a.sample && !tok) {
        cli_fail(a.model, "this model has no tokenizer: use --sample N (token-id mode)");
        goto done;
    }
    if (!a.sample && (rc = read_input(&a, tok, &ids, &n)) != CLI_OK)
        goto done;
    rc = CLI_FAIL;
    if (n > m->cfg.context_length) {
        cli_fail(a.text_file, "%zu tokens exceed the model's context of %u (use --max-tokens)",
                 n, m->cfg.context_length);
        goto done;
    }
    if (session_create(m, (uint32_t)n, a.threads, &s, &err) != KVTC_OK) {
        cli_fail_err(NULL, &err);
        goto done;
    }
    double start = cli_now();
    kvtc_status st = a.sample ? run_sampled(s, a.sample, a.seed, &err)
                              : run_tokens(s, ids, (uint32_t)n, &err);
    double seconds = cli_now() - start;
    if (st == KVTC_OK)
        st = session_export_cache(s, a.dtype, &cache, &err);
    if (st == KVTC_OK)
        st = kvtc_cache_write_safetensors(cache, a.output, &err);
    if (st != KVTC_OK) {
        cli_fail_err(st == KVTC_E_IO ? a.output : NULL, &err);
        goto done;
    }
    const model_config *c = &m->cfg;
    char name[sizeof c->name];
    printf("wrote %s: %zu tokens of %s, %u layers x %u kv heads x %u dims, %s\n", a.output, n,
           cli_printable(c->name, name, sizeof name), c->n_layer, c->n_kv_head, c->head_dim, kvtc_dtype_name(a.dtype));
    printf("  %s %zu tokens in %.2f s (%.0f tokens/s)\n", a.sample ? "sampled" : "prefilled", n,
           seconds, (double)n / seconds);
    rc = CLI_OK;
done:
    kvtc_cache_free(cache);
    kvtc_free(ids);
    session_free(s);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}
