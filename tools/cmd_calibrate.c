/* kvtc calibrate: streams caches one at a time into a calibrator and writes
 * the calibration (.kvtcal). */
#include "cli.h"
#include "commands.h"

#include <getopt.h>
#include <stdio.h>

static const char usage[] =
    "usage: kvtc calibrate -o CALIB.kvtcal [options] CACHE.safetensors...\n"
    "\n"
    "Fits the PCA basis and the bit-allocation error table of one model on its KV\n"
    "caches. Caches are read one at a time, so any number of them fit in memory.\n"
    "\n"
    "options:\n"
    "  -o, --output FILE       the calibration to write (required)\n"
    "      --rank N            basis columns kept per kind (default min(features, 2048))\n"
    "      --sinks N           first tokens of each cache never compressed (default 4)\n"
    "      --window N          last tokens of each cache never compressed (default 128)\n"
    "      --heldout-every N   every N-th eligible token is held out to measure\n"
    "                          quantization error for bit allocation (default 8)\n"
    "      --max-heldout N     at most N held-out tokens per kind (default 4096)\n"
    "      --threads N         worker threads (default: all CPUs)\n"
    "  -h, --help              this help\n";

enum { OPT_RANK = 256, OPT_SINKS, OPT_WINDOW, OPT_HELDOUT, OPT_MAX_HELDOUT };

typedef struct calibrate_args {
    const char *output;
    kvtc_calib_options opt;
} calibrate_args;

static int handle_option(void *user, int opt, const char *arg)
{
    calibrate_args *a = user;
    switch (opt) {
    case 'o': a->output = arg; return CLI_OK;
    case OPT_RANK: return cli_parse_u32("--rank", arg, 1, 1u << 24, &a->opt.rank) ? CLI_OK : CLI_USAGE;
    case OPT_SINKS:
        return cli_parse_u32("--sinks", arg, 0, 1u << 20, &a->opt.sinks) ? CLI_OK : CLI_USAGE;
    case OPT_WINDOW:
        return cli_parse_u32("--window", arg, 0, 1u << 20, &a->opt.window) ? CLI_OK : CLI_USAGE;
    case OPT_HELDOUT:
        return cli_parse_u32("--heldout-every", arg, 1, 1u << 20, &a->opt.heldout_every)
                   ? CLI_OK
                   : CLI_USAGE;
    case OPT_MAX_HELDOUT:
        return cli_parse_u32("--max-heldout", arg, 1, 1u << 24, &a->opt.max_heldout)
                   ? CLI_OK
                   : CLI_USAGE;
    case CLI_OPT_THREADS:
        return cli_parse_threads(arg, &a->opt.n_threads) ? CLI_OK : CLI_USAGE;
    }
    return CLI_USAGE;
}

static void print_summary(const kvtc_calibration *cal, const char *path, int n_caches,
                          uint64_t tokens, double seconds)
{
    const kvtc_model_shape *s = kvtc_calibration_shape(cal);
    char hex[65];
    kvtc_hex(kvtc_calibration_fingerprint(cal), 32, hex);
    printf("wrote %s in %.2f s\n", path, seconds);
    printf("  %d cache%s, %llu tokens; %u layers x %u kv heads x %u dims = %llu features\n",
           n_caches, n_caches == 1 ? "" : "s", (unsigned long long)tokens, s->n_layer,
           s->n_kv_head, s->head_dim, (unsigned long long)kvtc_shape_features(s));
    printf("  sinks %u, window %u\n", kvtc_calibration_sinks(cal), kvtc_calibration_window(cal));
    printf("                      keys      values\n");
    printf("  rows fitted     %10llu  %10llu\n",
           (unsigned long long)kvtc_calibration_rows(cal, KVTC_KEY),
           (unsigned long long)kvtc_calibration_rows(cal, KVTC_VALUE));
    printf("  rank            %10u  %10u\n", kvtc_calibration_rank(cal, KVTC_KEY),
           kvtc_calibration_rank(cal, KVTC_VALUE));
    cli_print_variance_table(cal, "  ");
    printf("  fingerprint %s\n", hex);
}

int cmd_calibrate(int argc, char **argv)
{
    static const struct option longs[] = {
        {"output", required_argument, NULL, 'o'},
        {"rank", required_argument, NULL, OPT_RANK},
        {"sinks", required_argument, NULL, OPT_SINKS},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"heldout-every", required_argument, NULL, OPT_HELDOUT},
        {"max-heldout", required_argument, NULL, OPT_MAX_HELDOUT},
        {"threads", required_argument, NULL, CLI_OPT_THREADS},
        {0},
    };
    calibrate_args a = {0};
    kvtc_calib_options_default(&a.opt);
    a.opt.n_threads = cli_default_threads();
    int first;
    int rc = cli_parse_options(argc, argv, "o:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (!a.output)
        return cli_usage_error("-o CALIB.kvtcal is required");
    if (first >= argc)
        return cli_usage_error("no caches given");

    cli_progress_state progress;
    cli_progress_init(&progress);
    a.opt.progress = cli_progress;
    a.opt.progress_user = &progress;
    double start = cli_now();
    kvtc_calibrator *calibrator = NULL;
    kvtc_calibration *cal = NULL;
    kvtc_error err;
    uint64_t tokens = 0;
    rc = CLI_FAIL;
    for (int i = first; i < argc; i++) {
        kvtc_cache *cache = cli_read_cache(argv[i]);
        if (!cache)
            goto done;
        if (!calibrator &&
            !(calibrator = kvtc_calibrator_create(kvtc_cache_shape(cache), &a.opt, &err))) {
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
    print_summary(cal, a.output, argc - first, tokens, cli_now() - start);
    rc = CLI_OK;
done:
    kvtc_calibration_free(cal);
    kvtc_calibrator_free(calibrator);
    return rc;
}
