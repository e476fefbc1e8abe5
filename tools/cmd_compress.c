/* kvtc compress: a cache (.safetensors) and a calibration in, a .kvtc stream out. */
#include "cli.h"
#include "commands.h"

#include <getopt.h>
#include <stdio.h>

static const char usage[] =
    "usage: kvtc compress -c CALIB.kvtcal --ratio R -o OUT.kvtc CACHE.safetensors\n"
    "\n"
    "Compresses one KV cache with a calibration of its model. The first sinks and\n"
    "last window tokens (set at calibration) are stored raw, bit-exact.\n"
    "\n"
    "options:\n"
    "  -c, --calibration FILE  the model's calibration (required)\n"
    "  -o, --output FILE       the stream to write (required)\n"
    CLI_COMPRESS_HELP
    "  -h, --help              this help\n";

typedef struct compress_args {
    const char *calibration, *output;
    cli_compress_args compress;
} compress_args;

static int handle_option(void *user, int opt, const char *arg)
{
    compress_args *a = user;
    switch (opt) {
    case 'c': a->calibration = arg; return CLI_OK;
    case 'o': a->output = arg; return CLI_OK;
    }
    int rc = cli_compress_option(&a->compress, opt, arg);
    return rc < 0 ? CLI_USAGE : rc;
}

int cmd_compress(int argc, char **argv)
{
    static const struct option longs[] = {
        {"calibration", required_argument, NULL, 'c'},
        {"output", required_argument, NULL, 'o'},
        CLI_COMPRESS_LONG_OPTIONS,
        {0},
    };
    compress_args a = {0};
    cli_compress_args_init(&a.compress);
    int first;
    int rc = cli_parse_options(argc, argv, "c:o:r:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (!a.calibration)
        return cli_usage_error("-c CALIB.kvtcal is required");
    if (!a.output)
        return cli_usage_error("-o OUT.kvtc is required");
    if (argc - first != 1)
        return cli_usage_error("give exactly one cache (got %d)", argc - first);
    kvtc_compress_options opt = cli_compress_options(&a.compress);
    const char *input = argv[first];
    const char *inputs[] = {a.calibration, input};
    if ((rc = cli_check_output(a.output, inputs, 2)) != CLI_OK)
        return rc;

    kvtc_calibration *cal = cli_read_calibration(a.calibration);
    kvtc_cache *cache = cal ? cli_read_cache(input) : NULL;
    void *out = NULL;
    size_t out_len = 0;
    rc = CLI_FAIL;
    if (!cache)
        goto done;
    cli_progress_state progress;
    cli_progress_init(&progress);
    opt.progress = cli_progress;
    opt.progress_user = &progress;
    kvtc_error err;
    double start = cli_now();
    kvtc_status st = kvtc_compress(cal, cache, &opt, &out, &out_len, &err);
    cli_progress_end(&progress);
    if (st != KVTC_OK) {
        /* Most failures are about this input against this calibration. */
        cli_fail_err(input, &err);
        goto done;
    }
    double seconds = cli_now() - start;
    kvtc_stream_info info = {.struct_size = sizeof info};
    if (kvtc_stream_info_get(out, out_len, &info, &err) != KVTC_OK) {
        cli_fail_err(input, &err);
        goto done;
    }
    if (kvtc_write_file_atomic(a.output, out, out_len, &err) != KVTC_OK) {
        cli_fail_err(a.output, &err);
        goto done;
    }
    printf("wrote %s: %zu bytes in %.3f s\n", a.output, out_len, seconds);
    printf("  %u tokens: %u compressed, %u sinks and %u window tokens raw\n", info.n_tokens,
           info.compressed_tokens, info.sinks, info.window);
    printf("  plan bits per token: keys %u (target %gx), values %u (target %gx)\n",
           info.k_bits_per_token, info.k_ratio, info.v_bits_per_token, info.v_ratio);
    if (info.compressed_tokens)
        printf("  compressed tokens: %.2fx smaller than fp16\n",
               cli_stream_ratio(&info));
    printf("  whole file: %.2fx smaller than fp16\n", cli_file_ratio(&info));
    rc = CLI_OK;
done:
    kvtc_buffer_free(out);
    kvtc_cache_free(cache);
    kvtc_calibration_free(cal);
    return rc;
}
