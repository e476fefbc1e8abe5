/* kvtc compress: a cache (.safetensors or a llama.cpp sequence state) and a
 * calibration in, a .kvtc stream out. */
#include "cli.h"
#include "commands.h"

#include <getopt.h>
#include <stdio.h>

static const char usage[] =
    "usage: kvtc compress -c CALIB.kvtcal --ratio R -o OUT.kvtc CACHE\n"
    "\n"
    "Compresses one KV cache with a calibration of its model. The first sinks and\n"
    "last window tokens (set at calibration) are stored raw, bit-exact. CACHE is a\n"
    ".safetensors cache or a llama.cpp sequence state (llama_state_seq_save_file,\n"
    "llama-server's slot files, or llama_state_seq_get_data bytes), told apart by\n"
    "content; a state's token ids are kept in the stream.\n"
    "\n"
    "options:\n"
    "  -c, --calibration FILE  the model's calibration (required)\n"
    "  -o, --output FILE       the stream to write (required)\n"
    "  -m, --model MODEL       for a llama.cpp state: its model (a GGUF or a name),\n"
    "                          for heads and RoPE (default: the calibration's shape)\n"
    CLI_COMPRESS_HELP
    "  -h, --help              this help\n";

typedef struct compress_args {
    const char *calibration, *output, *model;
    cli_compress_args compress;
} compress_args;

static int handle_option(void *user, int opt, const char *arg)
{
    compress_args *a = user;
    switch (opt) {
    case 'c': a->calibration = arg; return CLI_OK;
    case 'o': a->output = arg; return CLI_OK;
    case 'm': a->model = arg; return CLI_OK;
    }
    int rc = cli_compress_option(&a->compress, opt, arg);
    return rc < 0 ? CLI_USAGE : rc;
}

int cmd_compress(int argc, char **argv)
{
    static const struct option longs[] = {
        {"calibration", required_argument, NULL, 'c'},
        {"output", required_argument, NULL, 'o'},
        {"model", required_argument, NULL, 'm'},
        CLI_COMPRESS_LONG_OPTIONS,
        {0},
    };
    compress_args a = {0};
    cli_compress_args_init(&a.compress);
    int first;
    int rc = cli_parse_options(argc, argv, "c:o:m:r:", longs, usage, handle_option, &a, &first);
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
    kvtc_model_shape model_shape;
    char model_name[64] = "";
    const kvtc_model_shape *llama_shape = cal ? kvtc_calibration_shape(cal) : NULL;
    if (cal && a.model) {
        if (!cli_read_model_shape(a.model, &model_shape, model_name)) {
            kvtc_calibration_free(cal);
            return CLI_FAIL;
        }
        llama_shape = &model_shape;
    }
    kvtc_cache *cache = cal ? cli_read_any_cache(input, llama_shape, NULL) : NULL;
    if (cache && model_name[0] && !kvtc_cache_model_name(cache)[0])
        kvtc_cache_set_model_name(cache, model_name, NULL);
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
