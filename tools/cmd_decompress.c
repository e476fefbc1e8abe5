/* kvtc decompress: a .kvtc stream and its calibration in, a cache out: a
 * .safetensors file with the tensor names, shapes, dtype and metadata the
 * compressed cache had, or a llama.cpp sequence state with its token ids. */
#include "cli.h"
#include "commands.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: kvtc decompress -c CALIB.kvtcal -o OUT [--format F] IN.kvtc\n"
    "\n"
    "Restores the KV cache of a .kvtc stream. The calibration must be the one the\n"
    "stream was compressed with (its fingerprint is checked).\n"
    "\n"
    "options:\n"
    "  -c, --calibration FILE  the calibration the stream was made with (required)\n"
    "  -o, --output FILE       the cache to write (required)\n"
    "      --format F          safetensors (default); ggsq: a llama.cpp sequence state\n"
    "                          file (llama_state_seq_load_file, llama-server slot\n"
    "                          restore); bare: llama_state_seq_set_data bytes\n"
    "      --v-trans 0|1       llama.cpp formats: 1 when the loading context stores V\n"
    "                          transposed (flash attention off), default 0\n"
    "      --seq-id N          llama.cpp formats: sequence id stored with the cells\n"
    "                          (default 0)\n"
    "      --server-tokens     ggsq: list the tokens packed as llama-server's slot\n"
    "                          files do (it also reads them plain)\n"
    "      --max-output SIZE   refuse a stream whose restored cache would be larger\n"
    "                          than SIZE bytes (K, M, G suffixes; default: no limit)\n"
    "      --threads N         worker threads (default: all CPUs)\n"
    "  -h, --help              this help\n";

enum { OPT_MAX_OUTPUT = 256, OPT_FORMAT, OPT_V_TRANS, OPT_SEQ_ID, OPT_SERVER_TOKENS };

typedef struct decompress_args {
    const char *calibration, *output;
    kvtc_decompress_options opt;
    bool llama;               /* --format ggsq or bare */
    kvtc_llama_layout layout; /* its layout */
} decompress_args;

static int handle_option(void *user, int opt, const char *arg)
{
    decompress_args *a = user;
    switch (opt) {
    case 'c': a->calibration = arg; return CLI_OK;
    case 'o': a->output = arg; return CLI_OK;
    case CLI_OPT_THREADS:
        return cli_parse_threads(arg, &a->opt.n_threads) ? CLI_OK : CLI_USAGE;
    case OPT_MAX_OUTPUT:
        return cli_parse_size("--max-output", arg, &a->opt.max_output_bytes) ? CLI_OK : CLI_USAGE;
    case OPT_FORMAT:
        a->llama = strcmp(arg, "ggsq") == 0 || strcmp(arg, "bare") == 0;
        a->layout.ggsq = strcmp(arg, "ggsq") == 0;
        if (a->llama || strcmp(arg, "safetensors") == 0)
            return CLI_OK;
        cli_usage_error("--format must be safetensors, ggsq or bare, not '%s'", arg);
        return CLI_USAGE;
    case OPT_V_TRANS:
        return cli_parse_u32("--v-trans", arg, 0, 1, &a->layout.v_trans) ? CLI_OK : CLI_USAGE;
    case OPT_SERVER_TOKENS: a->layout.server_tokens = 1; return CLI_OK;
    case OPT_SEQ_ID: {
        uint32_t id;
        if (!cli_parse_u32("--seq-id", arg, 0, INT32_MAX, &id))
            return CLI_USAGE;
        a->layout.seq_id = (int32_t)id;
        return CLI_OK;
    }
    }
    return CLI_USAGE;
}

int cmd_decompress(int argc, char **argv)
{
    static const struct option longs[] = {
        {"calibration", required_argument, NULL, 'c'},
        {"output", required_argument, NULL, 'o'},
        {"threads", required_argument, NULL, CLI_OPT_THREADS},
        {"max-output", required_argument, NULL, OPT_MAX_OUTPUT},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"v-trans", required_argument, NULL, OPT_V_TRANS},
        {"seq-id", required_argument, NULL, OPT_SEQ_ID},
        {"server-tokens", no_argument, NULL, OPT_SERVER_TOKENS},
        {0},
    };
    decompress_args a = {0};
    kvtc_llama_layout_default(&a.layout);
    kvtc_decompress_options_default(&a.opt);
    a.opt.n_threads = cli_default_threads();
    int first;
    int rc = cli_parse_options(argc, argv, "c:o:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (!a.calibration)
        return cli_usage_error("-c CALIB.kvtcal is required");
    if (!a.output)
        return cli_usage_error("-o OUT is required");
    if (argc - first != 1)
        return cli_usage_error("give exactly one .kvtc stream (got %d)", argc - first);
    const char *input = argv[first];
    const char *inputs[] = {a.calibration, input};
    if ((rc = cli_check_output(a.output, inputs, 2)) != CLI_OK)
        return rc;

    kvtc_calibration *cal = cli_read_calibration(a.calibration);
    size_t len = 0;
    void *data = cal ? cli_read_file(input, &len) : NULL;
    rc = CLI_FAIL;
    if (!data)
        goto done;
    cli_progress_state progress;
    cli_progress_init(&progress);
    a.opt.progress = cli_progress;
    a.opt.progress_user = &progress;
    kvtc_error err;
    double start = cli_now();
    kvtc_status st;
    if (a.llama) {
        kvtc_cache *cache = NULL;
        st = kvtc_decompress(cal, data, len, &a.opt, &cache, &err);
        if (st == KVTC_OK)
            st = kvtc_llama_state_write(cache, &a.layout, a.output, &err);
        kvtc_cache_free(cache);
    } else
        st = kvtc_decompress_to_safetensors(cal, data, len, &a.opt, a.output, &err);
    cli_progress_end(&progress);
    if (st != KVTC_OK) {
        /* write errors name the output; the others are about the stream */
        bool about_output = strncmp(err.message, a.output, strlen(a.output)) == 0;
        cli_fail_err(about_output ? NULL : input, &err);
        goto done;
    }
    double seconds = cli_now() - start;
    kvtc_stream_info info = {.struct_size = sizeof info};
    if (kvtc_stream_info_get(data, len, &info, &err) != KVTC_OK) {
        cli_fail_err(input, &err);
        goto done;
    }
    printf("wrote %s: %u tokens, %u layers x %u kv heads x %u dims, %s, in %.3f s\n",
           a.output, info.n_tokens, info.shape.n_layer, info.shape.n_kv_head,
           info.shape.head_dim, kvtc_dtype_name(info.dtype), seconds);
    rc = CLI_OK;
done:
    kvtc_buffer_free(data);
    kvtc_calibration_free(cal);
    return rc;
}
