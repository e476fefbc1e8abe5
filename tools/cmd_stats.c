/* kvtc stats: compresses and decompresses a cache in memory and reports the
 * ratios, the reconstruction error and the time each way. */
#include "cli.h"
#include "commands.h"
#include "transform.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: kvtc stats -c CALIB.kvtcal --ratio R [options] CACHE.safetensors\n"
    "\n"
    "Compresses and decompresses one cache in memory (nothing is written) and\n"
    "reports:\n"
    "  ratio        fp16 bytes of the compressed tokens / bytes of their blocks\n"
    "  file_ratio   fp16 bytes of the whole cache / bytes of the whole stream\n"
    "  k_rel_error, v_rel_error\n"
    "               sum |X - X'|^2 / sum |X - mean|^2 over the compressed tokens,\n"
    "               around the calibration mean (keys before RoPE): the error\n"
    "               kvtc eval and the KVTC paper report\n"
    "  k_rel_error_raw, v_rel_error_raw\n"
    "               sum |X - X'|^2 / sum |X|^2: the same error over the raw\n"
    "               energy, smaller where the mean is large (keys)\n"
    "  bits per token of the plans, sizes, and compress/decompress times.\n"
    "\n"
    "options:\n"
    "  -c, --calibration FILE  the model's calibration (required)\n"
    CLI_COMPRESS_HELP
    "      --json              print one JSON object instead of text\n"
    "  -h, --help              this help\n";

enum { OPT_JSON = 256 };

typedef struct stats_args {
    const char *calibration;
    bool json;
    cli_compress_args compress;
} stats_args;

static int handle_option(void *user, int opt, const char *arg)
{
    stats_args *a = user;
    switch (opt) {
    case 'c': a->calibration = arg; return CLI_OK;
    case OPT_JSON: a->json = true; return CLI_OK;
    }
    int rc = cli_compress_option(&a->compress, opt, arg);
    return rc < 0 ? CLI_USAGE : rc;
}

typedef struct error_sums {
    double diff[2], energy[2]; /* per kind, over the compressed tokens */
    double centred[2];         /* their energy around the calibration mean */
    bool raw_exact;            /* the raw sink and window tokens came back bit-exact */
} error_sums;

/* Compares tokens [t0, t1) of every layer and head of both kinds: squared
 * error sums, or bit-exactness (raw tokens). */
static void compare_tokens(const kvtc_cache *a, const kvtc_cache *b, uint32_t t0, uint32_t t1,
                           bool raw, float *x, float *y, error_sums *sums)
{
    const kvtc_model_shape *s = kvtc_cache_shape(a);
    kvtc_dtype dtype = kvtc_cache_dtype(a);
    size_t esize = kvtc_dtype_size(dtype), n = (size_t)(t1 - t0) * s->head_dim;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < s->n_layer; l++)
            for (uint32_t h = 0; h < s->n_kv_head; h++) {
                size_t off = ((size_t)h * kvtc_cache_tokens(a) + t0) * s->head_dim * esize;
                const unsigned char *pa =
                    (const unsigned char *)kvtc_cache_data_const(a, (kvtc_kind)k, l) + off;
                const unsigned char *pb =
                    (const unsigned char *)kvtc_cache_data_const(b, (kvtc_kind)k, l) + off;
                if (raw) {
                    sums->raw_exact &= memcmp(pa, pb, n * esize) == 0;
                    continue;
                }
                kvtc_to_f32(dtype, pa, x, n);
                kvtc_to_f32(dtype, pb, y, n);
                for (size_t i = 0; i < n; i++) {
                    double d = (double)x[i] - y[i];
                    sums->diff[k] += d * d;
                    sums->energy[k] += (double)x[i] * x[i];
                }
            }
}

/* Adds the energy around the calibration mean of tokens [t0, t1) of each kind,
 * rows as the codec sees them (keys with RoPE undone; the rotation does not
 * change squared differences, so compare_tokens' sums need no such step). */
#define ROW_CHUNK 64u
static void add_centred_energy(const kvtc_calibration *cal, const kvtc_cache *c, uint32_t t0,
                               uint32_t t1, float *rows, error_sums *sums)
{
    for (int k = 0; k < 2; k++)
        for (uint32_t c0 = t0; c0 < t1; c0 += ROW_CHUNK) {
            uint32_t n = t1 - c0 < ROW_CHUNK ? t1 - c0 : ROW_CHUNK;
            kvtc_cache_gather_rows(c, (kvtc_kind)k, c0, n, rows);
            kvtc_transform_project(cal, (kvtc_kind)k, rows, n, 0, NULL, &sums->centred[k]);
        }
}

/* What one round trip measured. */
typedef struct stats_report {
    const char *path;
    kvtc_stream_info info;
    double ratio, file_ratio; /* vs fp16: the compressed tokens (NAN if none), the file */
    double rel[2];            /* relative squared error per kind, around the mean */
    double rel_raw[2];        /* the same over the raw energy */
    bool raw_exact;
    double compress_ms, decompress_ms;
} stats_report;

/* Compresses and decompresses `cache` in memory and measures the round trip. */
static kvtc_status stats_measure(const kvtc_calibration *cal, const kvtc_cache *cache,
                                 const kvtc_compress_options *opt, stats_report *r,
                                 kvtc_error *err)
{
    void *stream = NULL;
    size_t stream_len = 0;
    kvtc_cache *restored = NULL;
    float *x = NULL, *y = NULL, *rows = NULL;
    kvtc_decompress_options dopt;
    kvtc_decompress_options_default(&dopt);
    dopt.n_threads = opt->n_threads;
    r->info.struct_size = sizeof r->info;
    double t0 = cli_now();
    kvtc_status st = kvtc_compress(cal, cache, opt, &stream, &stream_len, err);
    double t1 = cli_now();
    if (st == KVTC_OK)
        st = kvtc_decompress(cal, stream, stream_len, &dopt, &restored, err);
    double t2 = cli_now();
    if (st == KVTC_OK)
        st = kvtc_stream_info_get(stream, stream_len, &r->info, err);
    const kvtc_stream_info *info = &r->info;
    uint32_t n = kvtc_cache_tokens(cache), head_dim = kvtc_cache_shape(cache)->head_dim;
    if (st == KVTC_OK) {
        x = kvtc_malloc_array((size_t)(n ? n : 1) * head_dim, sizeof *x);
        y = kvtc_malloc_array((size_t)(n ? n : 1) * head_dim, sizeof *y);
        rows = kvtc_malloc_array((size_t)ROW_CHUNK * kvtc_shape_features(kvtc_cache_shape(cache)),
                                 sizeof *rows);
        if (!x || !y || !rows)
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    if (st == KVTC_OK) {
        uint32_t end = n - info->window;
        if (end < info->sinks) /* all raw: nothing compressed between the two ends */
            end = info->sinks;
        error_sums sums = {.raw_exact = true};
        compare_tokens(cache, restored, 0, info->sinks, true, x, y, &sums);
        compare_tokens(cache, restored, info->sinks, end, false, x, y, &sums);
        compare_tokens(cache, restored, end, n, true, x, y, &sums);
        add_centred_energy(cal, cache, info->sinks, end, rows, &sums);
        r->ratio = cli_stream_ratio(info);
        r->file_ratio = cli_file_ratio(info);
        for (int k = 0; k < 2; k++) {
            r->rel[k] = sums.centred[k] > 0            ? sums.diff[k] / sums.centred[k]
                        : info->compressed_tokens ? 0
                                                  : NAN;
            r->rel_raw[k] = sums.energy[k] > 0            ? sums.diff[k] / sums.energy[k]
                            : info->compressed_tokens ? 0
                                                      : NAN;
        }
        r->raw_exact = sums.raw_exact;
        r->compress_ms = (t1 - t0) * 1e3;
        r->decompress_ms = (t2 - t1) * 1e3;
    }
    kvtc_free(x);
    kvtc_free(y);
    kvtc_free(rows);
    kvtc_buffer_free(stream);
    kvtc_cache_free(restored);
    return st;
}

static int print_stats_report(const stats_report *r, bool json)
{
    const kvtc_stream_info *info = &r->info;
    if (json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_str(&j, "file", r->path);
        cli_json_f64(&j, "ratio", r->ratio);
        cli_json_f64(&j, "file_ratio", r->file_ratio);
        cli_json_f64(&j, "k_rel_error", r->rel[0]);
        cli_json_f64(&j, "v_rel_error", r->rel[1]);
        cli_json_f64(&j, "k_rel_error_raw", r->rel_raw[0]);
        cli_json_f64(&j, "v_rel_error_raw", r->rel_raw[1]);
        cli_json_u64(&j, "tokens", info->n_tokens);
        cli_json_u64(&j, "compressed_tokens", info->compressed_tokens);
        cli_json_stream_sizes(&j, info);
        kvtc_jw_key(&j.jw, "raw_exact");
        kvtc_jw_bool(&j.jw, r->raw_exact);
        cli_json_f64(&j, "compress_ms", r->compress_ms);
        cli_json_f64(&j, "decompress_ms", r->decompress_ms);
        return cli_json_print(&j);
    }
    printf("%s: %u tokens, %u compressed (%u sinks and %u window raw)\n", r->path,
           info->n_tokens, info->compressed_tokens, info->sinks, info->window);
    if (info->compressed_tokens)
        printf("  ratio            %.2fx on compressed tokens (vs fp16)\n", r->ratio);
    printf("  file ratio       %.2fx (%llu bytes for the whole stream)\n", r->file_ratio,
           (unsigned long long)info->total_bytes);
    printf("  plan bits/token  keys %u, values %u (targets %gx, %gx)\n", info->k_bits_per_token,
           info->v_bits_per_token, info->k_ratio, info->v_ratio);
    if (info->compressed_tokens)
        printf("  relative error   keys %.4g, values %.4g (around the calibration mean)\n"
               "                   keys %.4g, values %.4g (over the raw energy)\n",
               r->rel[0], r->rel[1], r->rel_raw[0], r->rel_raw[1]);
    printf("  raw tokens       %s\n", r->raw_exact ? "bit-exact" : "DIFFER");
    printf("  time             compress %.1f ms, decompress %.1f ms\n", r->compress_ms,
           r->decompress_ms);
    return CLI_OK;
}

int cmd_stats(int argc, char **argv)
{
    static const struct option longs[] = {
        {"calibration", required_argument, NULL, 'c'},
        CLI_COMPRESS_LONG_OPTIONS,
        {"json", no_argument, NULL, OPT_JSON},
        {0},
    };
    stats_args a = {0};
    cli_compress_args_init(&a.compress);
    int first;
    int rc = cli_parse_options(argc, argv, "c:r:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (!a.calibration)
        return cli_usage_error("-c CALIB.kvtcal is required");
    if (argc - first != 1)
        return cli_usage_error("give exactly one cache (got %d)", argc - first);
    kvtc_compress_options opt = cli_compress_options(&a.compress);
    stats_report r = {.path = argv[first]};
    kvtc_calibration *cal = cli_read_calibration(a.calibration);
    kvtc_cache *cache = cal ? cli_read_any_cache(r.path, kvtc_calibration_shape(cal), NULL) : NULL;
    kvtc_error err;
    rc = CLI_FAIL;
    if (cache)
        rc = stats_measure(cal, cache, &opt, &r, &err) == KVTC_OK ? print_stats_report(&r, a.json)
                                                                  : cli_fail_err(r.path, &err);
    if (rc == CLI_OK && !r.raw_exact)
        rc = cli_fail(r.path, "raw tokens did not come back bit-exact");
    kvtc_cache_free(cache);
    kvtc_calibration_free(cal);
    return rc;
}
