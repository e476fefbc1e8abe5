/* kvtc calibrate: streams caches one at a time into a calibrator, or runs a
 * model over the calibration corpus, and writes the calibration (.kvtcal). */
#include "default_model.h"
#include "cli.h"
#include "commands.h"
#include "default_calib.h"

#include <getopt.h>
#include <stdio.h>

static const char usage[] =
    "usage: kvtc calibrate -o CALIB.kvtcal [options] CACHE...\n"
    "       kvtc calibrate -o CALIB.kvtcal --corpus [--model MODEL] [options]\n"
    "\n"
    "Fits the PCA basis and the bit-allocation error table of one model on its KV\n"
    "caches. Caches are read one at a time, so any number of them fit in memory.\n"
    "With --corpus, the caches come from running the model (default: the default\n"
    "model) over the calibration text on this machine, as the default calibration\n"
    "does, with the chunks and rank given here. A CACHE is a .safetensors cache or\n"
    "a llama.cpp sequence state (told apart by content; give its --model).\n"
    "\n"
    "options:\n"
    "  -o, --output FILE       the calibration to write (required)\n"
    "      --rank N            basis columns kept per kind (default min(features, "
    CLI_STR(KVTC_DEFAULT_MAX_RANK) "))\n"
    "      --corpus            calibrate on the calibration corpus instead of caches\n"
    "  -m, --model MODEL       with --corpus: the model, a name (kvtc fetch --list) or\n"
    "                          a GGUF path with a tokenizer; with llama.cpp states:\n"
    "                          their model, for the heads and RoPE the states do not name\n"
    "      --chunks N          with --corpus: chunks of text (default "
    CLI_STR(CALIB_DEFAULT_CHUNKS) ")\n"
    "      --chunk-tokens N    with --corpus: tokens per chunk (default "
    CLI_STR(CALIB_DEFAULT_CHUNK_TOKENS) ")\n"
    "      --sinks N           first tokens of each cache never compressed (default "
    CLI_STR(KVTC_DEFAULT_SINKS) ")\n"
    "      --window N          last tokens of each cache never compressed (default "
    CLI_STR(KVTC_DEFAULT_WINDOW) ")\n"
    "      --heldout-every N   every N-th eligible token is held out to measure\n"
    "                          quantization error for bit allocation (default "
    CLI_STR(KVTC_DEFAULT_HELDOUT_EVERY) ")\n"
    "      --max-heldout N     at most N held-out tokens per kind (default "
    CLI_STR(KVTC_DEFAULT_MAX_HELDOUT) ")\n"
    "      --threads N         worker threads (default: all CPUs)\n"
    "  -h, --help              this help\n";

enum {
    OPT_RANK = 256,
    OPT_SINKS,
    OPT_WINDOW,
    OPT_HELDOUT,
    OPT_MAX_HELDOUT,
    OPT_CORPUS,
    OPT_CHUNKS,
    OPT_CHUNK_TOKENS
};

typedef struct calibrate_args {
    const char *output;
    const char *model; /* --corpus */
    bool corpus;
    const char *corpus_option; /* an option that needs --corpus, when given */
    calib_recipe recipe; /* its opt serves both modes */
} calibrate_args;

static int handle_option(void *user, int opt, const char *arg)
{
    calibrate_args *a = user;
    kvtc_calib_options *o = &a->recipe.opt;
    switch (opt) {
    case 'o': a->output = arg; return CLI_OK;
    case 'm': a->model = arg; return CLI_OK;
    case OPT_CORPUS: a->corpus = true; return CLI_OK;
    case OPT_CHUNKS:
        a->corpus_option = "--chunks";
        return cli_parse_u32("--chunks", arg, 1, 1u << 20, &a->recipe.n_chunks) ? CLI_OK : CLI_USAGE;
    case OPT_CHUNK_TOKENS:
        a->corpus_option = "--chunk-tokens";
        return cli_parse_u32("--chunk-tokens", arg, 2, 1u << 20, &a->recipe.chunk_tokens)
                   ? CLI_OK
                   : CLI_USAGE;
    case OPT_RANK: return cli_parse_u32("--rank", arg, 1, 1u << 24, &o->rank) ? CLI_OK : CLI_USAGE;
    case OPT_SINKS:
        return cli_parse_u32("--sinks", arg, 0, 1u << 20, &o->sinks) ? CLI_OK : CLI_USAGE;
    case OPT_WINDOW:
        return cli_parse_u32("--window", arg, 0, 1u << 20, &o->window) ? CLI_OK : CLI_USAGE;
    case OPT_HELDOUT:
        return cli_parse_u32("--heldout-every", arg, 1, 1u << 20, &o->heldout_every)
                   ? CLI_OK
                   : CLI_USAGE;
    case OPT_MAX_HELDOUT:
        return cli_parse_u32("--max-heldout", arg, 1, 1u << 24, &o->max_heldout)
                   ? CLI_OK
                   : CLI_USAGE;
    case CLI_OPT_THREADS:
        return cli_parse_threads(arg, &o->n_threads) ? CLI_OK : CLI_USAGE;
    }
    return CLI_USAGE;
}

/* excluded: tokens per kind the calibrator left out for their extreme energy. */
static void print_summary(const kvtc_calibration *cal, const char *path, const char *what,
                          int n_caches, uint64_t tokens, const uint64_t excluded[2],
                          double seconds)
{
    const kvtc_model_shape *s = kvtc_calibration_shape(cal);
    char hex[65];
    kvtc_hex(kvtc_calibration_fingerprint(cal), 32, hex);
    printf("wrote %s in %.2f s\n", path, seconds);
    printf("  %d %s%s, %llu tokens; %u layers x %u kv heads x %u dims = %llu features\n",
           n_caches, what, n_caches == 1 ? "" : "s", (unsigned long long)tokens, s->n_layer,
           s->n_kv_head, s->head_dim, (unsigned long long)kvtc_shape_features(s));
    printf("  sinks %u, window %u\n", kvtc_calibration_sinks(cal), kvtc_calibration_window(cal));
    printf("                      keys      values\n");
    printf("  rows fitted     %10llu  %10llu\n",
           (unsigned long long)kvtc_calibration_rows(cal, KVTC_KEY),
           (unsigned long long)kvtc_calibration_rows(cal, KVTC_VALUE));
    printf("  outliers left out %8llu  %10llu   (energy above 10^4 x their cache's median)\n",
           (unsigned long long)excluded[KVTC_KEY], (unsigned long long)excluded[KVTC_VALUE]);
    printf("  rank            %10u  %10u\n", kvtc_calibration_rank(cal, KVTC_KEY),
           kvtc_calibration_rank(cal, KVTC_VALUE));
    cli_print_variance_table(cal, "  ");
    printf("  fingerprint %s\n", hex);
}

/* --corpus: the model over the calibration corpus. */
static int calibrate_corpus(calibrate_args *a, double start)
{
    model *m = NULL;
    tokenizer *tok = NULL;
    kvtc_calibration *cal = NULL;
    kvtc_error err;
    calib_stats stats;
    int rc = CLI_FAIL;
    if (model_open_or_default(a->model, &m, &tok, &err) != KVTC_OK) {
        cli_fail_err(a->model, &err);
        goto done;
    }
    if (!tok) {
        cli_fail(a->model, "this model has no tokenizer, so no text to calibrate on: "
                           "calibrate on its caches instead");
        goto done;
    }
    kvtc_status st = calibrate_on_corpus(m, tok, &a->recipe, &cal, &stats, &err);
    cli_progress_end(a->recipe.opt.progress_user);
    if (st != KVTC_OK) {
        cli_fail_err(NULL, &err);
        goto done;
    }
    if (kvtc_calibration_write(cal, a->output, &err) != KVTC_OK) {
        cli_fail_err(a->output, &err);
        goto done;
    }
    print_summary(cal, a->output, "chunk", (int)stats.chunks, stats.tokens, stats.excluded,
                  cli_now() - start);
    printf("  prefill %.1f s, accumulate %.1f s, basis and error table %.1f s\n", stats.prefill_s,
           stats.add_s, stats.finish_s);
    rc = CLI_OK;
done:
    kvtc_calibration_free(cal);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}

int cmd_calibrate(int argc, char **argv)
{
    static const struct option longs[] = {
        {"output", required_argument, NULL, 'o'},
        {"rank", required_argument, NULL, OPT_RANK},
        {"corpus", no_argument, NULL, OPT_CORPUS},
        {"model", required_argument, NULL, 'm'},
        {"chunks", required_argument, NULL, OPT_CHUNKS},
        {"chunk-tokens", required_argument, NULL, OPT_CHUNK_TOKENS},
        {"sinks", required_argument, NULL, OPT_SINKS},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"heldout-every", required_argument, NULL, OPT_HELDOUT},
        {"max-heldout", required_argument, NULL, OPT_MAX_HELDOUT},
        {"threads", required_argument, NULL, CLI_OPT_THREADS},
        {0},
    };
    calibrate_args a = {0};
    calib_recipe_default(&a.recipe);
    kvtc_calib_options_default(&a.recipe.opt); /* the library's rank unless --rank */
    a.recipe.opt.n_threads = cli_default_threads();
    int first;
    int rc = cli_parse_options(argc, argv, "o:m:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (!a.output)
        return cli_usage_error("-o CALIB.kvtcal is required");
    if (a.corpus && first < argc)
        return cli_usage_error("--corpus takes no caches ('%s')", argv[first]);
    if (!a.corpus && a.corpus_option)
        return cli_usage_error("%s: --chunks and --chunk-tokens need --corpus",
                               a.corpus_option);
    if (!a.corpus && first >= argc)
        return cli_usage_error("no caches given");
    if (a.corpus && (rc = cli_check_output(a.output, &a.model, 1)) != CLI_OK)
        return rc;
    if ((rc = cli_check_output(a.output, (const char *const *)argv + first,
                               (size_t)(argc - first))) != CLI_OK)
        return rc;

    cli_progress_state progress;
    cli_progress_init(&progress);
    kvtc_calib_options *opt = &a.recipe.opt;
    opt->progress = cli_progress;
    opt->progress_user = &progress;
    double start = cli_now();
    if (a.corpus)
        return calibrate_corpus(&a, start);
    kvtc_calibrator *calibrator = NULL;
    kvtc_calibration *cal = NULL;
    kvtc_error err;
    uint64_t tokens = 0;
    kvtc_model_shape model_shape;
    char model_name[64];
    if (a.model && !cli_read_model_shape(a.model, &model_shape, model_name))
        return CLI_FAIL;
    rc = CLI_FAIL;
    for (int i = first; i < argc; i++) {
        kvtc_cache *cache = cli_read_any_cache(argv[i], a.model ? &model_shape : NULL, NULL);
        if (!cache)
            goto done;
        if (!calibrator &&
            kvtc_calibrator_create(kvtc_cache_shape(cache), opt, &calibrator, &err) != KVTC_OK) {
            kvtc_cache_free(cache);
            cli_fail_err(argv[i], &err);
            goto done;
        }
        kvtc_status st = kvtc_calibrator_add(calibrator, cache, &err);
        tokens += kvtc_cache_tokens(cache);
        kvtc_cache_free(cache);
        if (st != KVTC_OK) {
            cli_fail_err(argv[i], &err);
            goto done;
        }
    }
    kvtc_status st = kvtc_calibrator_finish(calibrator, &cal, &err);
    cli_progress_end(&progress);
    if (st != KVTC_OK) {
        cli_fail_err(NULL, &err);
        goto done;
    }
    if (kvtc_calibration_write(cal, a.output, &err) != KVTC_OK) {
        cli_fail_err(a.output, &err);
        goto done;
    }
    uint64_t excluded[2] = {kvtc_calibrator_excluded(calibrator, KVTC_KEY),
                            kvtc_calibrator_excluded(calibrator, KVTC_VALUE)};
    print_summary(cal, a.output, "cache", argc - first, tokens, excluded, cli_now() - start);
    rc = CLI_OK;
done:
    kvtc_calibration_free(cal);
    kvtc_calibrator_free(calibrator);
    return rc;
}
