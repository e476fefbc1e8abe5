/* kvtc info: describes a .kvtc stream, a .kvtcal calibration, a
 * .safetensors cache or a llama.cpp sequence state, recognized by content,
 * as text or JSON. */
#include "cli.h"
#include "commands.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: kvtc info [--json] [--model GGUF] FILE\n"
    "\n"
    "Describes a .kvtc stream (shape, tokens, plans, sizes, calibration\n"
    "fingerprint), a .kvtcal calibration (shape, rows, rank, explained variance),\n"
    "a .safetensors KV cache or a llama.cpp sequence state. The kind is read from\n"
    "the file's content.\n"
    "\n"
    "options:\n"
    "      --json         print one JSON object instead of text\n"
    "  -m, --model GGUF   for a llama.cpp state: its model (heads and RoPE)\n"
    "  -h, --help         this help\n";

/* First bytes of the formats (docs/FORMAT.md). */
static const unsigned char KVTC_MAGIC[8] = {'K', 'V', 'T', 'C', '\r', '\n', 0x1a, '\n'};
static const unsigned char KVTCAL_MAGIC[8] = {0x89, 'K', 'V', 'T', 'C', 'A', 'L', '\n'};

enum { OPT_JSON = 256 };

typedef struct info_args {
    bool json;
    const char *model;
} info_args;

static int handle_option(void *user, int opt, const char *arg)
{
    info_args *a = user;
    if (opt == OPT_JSON)
        a->json = true;
    else if (opt == 'm')
        a->model = arg;
    else
        return CLI_USAGE;
    return CLI_OK;
}

static bool looks_like_safetensors(const unsigned char *d, size_t len)
{
    if (len < 9 || d[8] != '{')
        return false;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | d[i];
    return n <= len - 8;
}

/* The shape lines every kind prints as text (dtype NULL: none). */
static void print_shape(const kvtc_model_shape *s, const char *dtype)
{
    printf("  shape          %u layers x %u kv heads x %u dims = %llu features%s%s\n",
           s->n_layer, s->n_kv_head, s->head_dim, (unsigned long long)kvtc_shape_features(s),
           dtype ? ", " : "", dtype ? dtype : "");
    printf("  rope           %s", cli_rope_style_name(s->rope_style));
    if (s->rope_style != KVTC_ROPE_NONE)
        printf(", %u dims, theta %g, freq scale %g", s->rope_dims, s->rope_theta,
               s->rope_freq_scale);
    printf("\n");
}

/* ---- .kvtc ------------------------------------------------------------------------- */

typedef struct stream_report {
    const char *path;
    kvtc_stream_info info;
    kvtc_plan *plans[2];
    double ratio;      /* compressed tokens vs fp16; NAN when there are none */
    double file_ratio; /* the whole file vs fp16 */
    char fingerprint[65];
} stream_report;

static kvtc_status stream_report_make(const char *path, const void *data, size_t len,
                                      stream_report *r, kvtc_error *err)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->info.struct_size = sizeof r->info;
    kvtc_status st = kvtc_stream_info_get(data, len, &r->info, err);
    for (int k = 0; k < 2 && st == KVTC_OK; k++)
        st = kvtc_stream_plan(data, len, (kvtc_kind)k, &r->plans[k], err);
    if (st != KVTC_OK)
        return st;
    const kvtc_stream_info *i = &r->info;
    r->ratio = cli_stream_ratio(i);
    r->file_ratio = cli_file_ratio(i);
    kvtc_hex(i->calib_fingerprint, 32, r->fingerprint);
    return KVTC_OK;
}

static void stream_report_free(stream_report *r)
{
    for (int k = 0; k < 2; k++)
        kvtc_plan_free(r->plans[k]);
}

/* Consecutive groups of the same size and type, shown as one run. */
typedef struct group_run {
    kvtc_qtype type;
    uint32_t size, start, end, count;
} group_run;

static uint32_t group_runs(const kvtc_plan *plan, group_run *runs)
{
    const kvtc_group *g = kvtc_plan_groups(plan);
    uint32_t n = 0;
    for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++) {
        if (n && runs[n - 1].type == g[i].type && runs[n - 1].size == g[i].size &&
            runs[n - 1].end == g[i].start) {
            runs[n - 1].end += g[i].size;
            runs[n - 1].count++;
        } else {
            runs[n++] = (group_run){g[i].type, g[i].size, g[i].start, g[i].start + g[i].size, 1};
        }
    }
    return n;
}

static void json_plan(cli_json *j, const kvtc_plan *plan, group_run *runs)
{
    kvtc_jw_begin_object(&j->jw);
    cli_json_u64(j, "bits_per_token", kvtc_plan_bits_per_token(plan));
    cli_json_u64(j, "budget_bits", kvtc_plan_budget_bits(plan));
    cli_json_u64(j, "groups", kvtc_plan_group_count(plan));
    kvtc_jw_key(&j->jw, "runs");
    kvtc_jw_begin_array(&j->jw);
    uint32_t n = group_runs(plan, runs);
    for (uint32_t i = 0; i < n; i++) {
        kvtc_jw_begin_object(&j->jw);
        cli_json_str(j, "type", kvtc_qtype_name(runs[i].type));
        cli_json_u64(j, "group_size", runs[i].size);
        cli_json_u64(j, "start", runs[i].start);
        cli_json_u64(j, "end", runs[i].end);
        cli_json_u64(j, "groups", runs[i].count);
        kvtc_jw_end_object(&j->jw);
    }
    kvtc_jw_end_array(&j->jw);
    kvtc_jw_end_object(&j->jw);
}

static void print_plan(const kvtc_plan *plan, kvtc_kind kind, double target, group_run *runs)
{
    printf("  plan %-6s    %u bits per token (budget %u, target %gx), %u groups:\n",
           kvtc_kind_name(kind), kvtc_plan_bits_per_token(plan), kvtc_plan_budget_bits(plan),
           target, kvtc_plan_group_count(plan));
    uint32_t n = group_runs(plan, runs);
    for (uint32_t i = 0; i < n; i++) {
        char range[40];
        snprintf(range, sizeof range, "[%u, %u)", runs[i].start, runs[i].end);
        printf("    %-16s %4u x %-4u %s\n", range, runs[i].count, runs[i].size,
               kvtc_qtype_name(runs[i].type));
    }
}

static int print_stream_report(const stream_report *r, bool json)
{
    const kvtc_stream_info *info = &r->info;
    uint32_t max_groups = 1;
    for (int k = 0; k < 2; k++)
        if (kvtc_plan_group_count(r->plans[k]) > max_groups)
            max_groups = kvtc_plan_group_count(r->plans[k]);
    group_run *runs = kvtc_malloc_array(max_groups, sizeof *runs);
    if (!runs)
        return cli_fail(r->path, "out of memory");
    double targets[2] = {info->k_ratio, info->v_ratio};
    char name[sizeof info->model_name];
    int rc = CLI_OK;
    if (json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_str(&j, "file", r->path);
        cli_json_str(&j, "kind", "kvtc");
        cli_json_u64(&j, "format_version", info->format_version);
        cli_json_str(&j, "model", info->model_name);
        cli_json_shape(&j, &info->shape);
        cli_json_str(&j, "dtype", kvtc_dtype_name(info->dtype));
        cli_json_i64(&j, "pos0", info->pos0);
        cli_json_u64(&j, "tokens", info->n_tokens);
        cli_json_u64(&j, "compressed_tokens", info->compressed_tokens);
        cli_json_u64(&j, "sinks", info->sinks);
        cli_json_u64(&j, "window", info->window);
        cli_json_u64(&j, "blocks", info->n_blocks);
        cli_json_u64(&j, "block_tokens", info->block_tokens);
        cli_json_stream_sizes(&j, info);
        cli_json_f64(&j, "ratio", r->ratio);
        cli_json_f64(&j, "file_ratio", r->file_ratio);
        cli_json_str(&j, "calibration_fingerprint", r->fingerprint);
        cli_json_u64(&j, "token_ids", info->has_token_ids);
        kvtc_jw_key(&j.jw, "plans");
        kvtc_jw_begin_object(&j.jw);
        for (int k = 0; k < 2; k++) {
            kvtc_jw_key(&j.jw, kvtc_kind_name((kvtc_kind)k));
            json_plan(&j, r->plans[k], runs);
        }
        kvtc_jw_end_object(&j.jw);
        rc = cli_json_print(&j);
    } else {
        printf("%s: kvtc stream, format version %u\n", r->path, info->format_version);
        if (info->model_name[0])
            printf("  model          %s\n",
                   cli_printable(info->model_name, name, sizeof name));
        print_shape(&info->shape, kvtc_dtype_name(info->dtype));
        printf("  tokens         %u at positions %lld.. (%u compressed, %u sinks and %u "
               "window raw)\n",
               info->n_tokens, (long long)info->pos0, info->compressed_tokens, info->sinks,
               info->window);
        printf("  blocks         %u of up to %u tokens\n", info->n_blocks, info->block_tokens);
        printf("  sizes          %llu bytes: %llu compressed, %llu raw\n",
               (unsigned long long)info->total_bytes, (unsigned long long)info->compressed_bytes,
               (unsigned long long)info->raw_bytes);
        if (info->compressed_tokens)
            printf("  ratio          %.2fx on compressed tokens, %.2fx for the file (vs fp16)\n",
                   r->ratio, r->file_ratio);
        else
            printf("  ratio          %.2fx for the file (vs fp16)\n", r->file_ratio);
        printf("  calibration    %s\n", r->fingerprint);
        printf("  token ids      %s\n", info->has_token_ids ? "yes" : "no");
        for (int k = 0; k < 2; k++)
            print_plan(r->plans[k], (kvtc_kind)k, targets[k], runs);
    }
    kvtc_free(runs);
    return rc;
}

static int info_stream(const char *path, const void *data, size_t len, bool json)
{
    stream_report r;
    kvtc_error err;
    int rc = stream_report_make(path, data, len, &r, &err) == KVTC_OK
                 ? print_stream_report(&r, json)
                 : cli_fail_err(path, &err);
    stream_report_free(&r);
    return rc;
}

/* ---- .kvtcal ------------------------------------------------------------------------ */

static int print_calibration_report(const char *path, const kvtc_calibration *cal, size_t len,
                                    bool json)
{
    const kvtc_model_shape *s = kvtc_calibration_shape(cal);
    char fingerprint[65];
    kvtc_hex(kvtc_calibration_fingerprint(cal), 32, fingerprint);
    if (!json) {
        printf("%s: kvtc calibration, %zu bytes\n", path, len);
        print_shape(s, NULL);
        printf("  raw tokens     %u sinks, %u window\n", kvtc_calibration_sinks(cal),
               kvtc_calibration_window(cal));
        printf("  fingerprint    %s\n", fingerprint);
        printf("  %-14s %10s %10s\n", "", "keys", "values");
        printf("  %-14s %10llu %10llu\n", "rows fitted",
               (unsigned long long)kvtc_calibration_rows(cal, KVTC_KEY),
               (unsigned long long)kvtc_calibration_rows(cal, KVTC_VALUE));
        printf("  %-14s %10u %10u\n", "rank", kvtc_calibration_rank(cal, KVTC_KEY),
               kvtc_calibration_rank(cal, KVTC_VALUE));
        printf("  %-14s %10.4g %10.4g\n", "total variance",
               kvtc_calibration_total_variance(cal, KVTC_KEY),
               kvtc_calibration_total_variance(cal, KVTC_VALUE));
        cli_print_variance_table(cal, "  ");
        return CLI_OK;
    }
    cli_json j;
    cli_json_begin(&j);
    cli_json_str(&j, "file", path);
    cli_json_str(&j, "kind", "kvtcal");
    cli_json_shape(&j, s);
    cli_json_u64(&j, "sinks", kvtc_calibration_sinks(cal));
    cli_json_u64(&j, "window", kvtc_calibration_window(cal));
    cli_json_u64(&j, "total_bytes", len);
    cli_json_str(&j, "fingerprint", fingerprint);
    uint32_t ranks[16], n = cli_variance_ranks(cal, ranks);
    for (int k = 0; k < 2; k++) {
        kvtc_kind kind = (kvtc_kind)k;
        kvtc_jw_key(&j.jw, kvtc_kind_name(kind));
        kvtc_jw_begin_object(&j.jw);
        cli_json_u64(&j, "rows", kvtc_calibration_rows(cal, kind));
        cli_json_u64(&j, "rank", kvtc_calibration_rank(cal, kind));
        cli_json_f64(&j, "total_variance", kvtc_calibration_total_variance(cal, kind));
        kvtc_jw_key(&j.jw, "explained_variance");
        kvtc_jw_begin_array(&j.jw);
        for (uint32_t i = 0; i < n; i++) {
            kvtc_jw_begin_object(&j.jw);
            cli_json_u64(&j, "rank", ranks[i]);
            cli_json_f64(&j, "fraction", cli_explained_variance(cal, kind, ranks[i]));
            kvtc_jw_end_object(&j.jw);
        }
        kvtc_jw_end_array(&j.jw);
        kvtc_jw_end_object(&j.jw);
    }
    return cli_json_print(&j);
}

static int info_calibration(const char *path, const void *data, size_t len, bool json)
{
    kvtc_calibration *cal = NULL;
    kvtc_error err;
    if (kvtc_calibration_load(data, len, &cal, &err) != KVTC_OK)
        return cli_fail_err(path, &err);
    int rc = print_calibration_report(path, cal, len, json);
    kvtc_calibration_free(cal);
    return rc;
}

/* ---- .safetensors ------------------------------------------------------------------- */

/* layout NULL: a safetensors cache */
static int print_cache_report(const char *path, const kvtc_cache *cache, size_t len, bool json,
                              const kvtc_llama_layout *layout)
{
    const kvtc_model_shape *s = kvtc_cache_shape(cache);
    const char *dtype = kvtc_dtype_name(kvtc_cache_dtype(cache));
    uint64_t bytes_per_token =
        2 * kvtc_shape_features(s) * kvtc_dtype_size(kvtc_cache_dtype(cache));
    if (!json) {
        char name[256];
        if (layout)
            printf("%s: llama.cpp sequence state (%s), %zu bytes\n", path,
                   layout->ggsq ? "ggsq file" : "bare", len);
        else
            printf("%s: KV cache (safetensors), %zu bytes\n", path, len);
        if (kvtc_cache_model_name(cache)[0])
            printf("  model          %s\n",
                   cli_printable(kvtc_cache_model_name(cache), name, sizeof name));
        print_shape(s, dtype);
        printf("  tokens         %u at positions %lld..\n", kvtc_cache_tokens(cache),
               (long long)kvtc_cache_pos0(cache));
        printf("  per token      %llu bytes (keys and values)\n",
               (unsigned long long)bytes_per_token);
        if (layout)
            printf("  llama.cpp      sequence %d, stream %u of %u, V %s, token ids %s\n",
                   layout->seq_id, layout->stream, layout->n_stream,
                   layout->v_trans ? "transposed" : "in rows",
                   !kvtc_cache_token_ids(cache) ? "no"
                   : layout->server_tokens      ? "yes (llama-server's packing)"
                                                : "yes");
        return CLI_OK;
    }
    cli_json j;
    cli_json_begin(&j);
    cli_json_str(&j, "file", path);
    cli_json_str(&j, "kind", layout ? (layout->ggsq ? "llama.cpp ggsq" : "llama.cpp bare")
                                    : "safetensors");
    if (layout) {
        cli_json_i64(&j, "seq_id", layout->seq_id);
        cli_json_u64(&j, "v_trans", layout->v_trans);
        cli_json_u64(&j, "n_stream", layout->n_stream);
        cli_json_u64(&j, "token_ids", kvtc_cache_token_ids(cache) != NULL);
        cli_json_u64(&j, "server_tokens", layout->server_tokens);
    }
    cli_json_str(&j, "model", kvtc_cache_model_name(cache));
    cli_json_shape(&j, s);
    cli_json_str(&j, "dtype", dtype);
    cli_json_i64(&j, "pos0", kvtc_cache_pos0(cache));
    cli_json_u64(&j, "tokens", kvtc_cache_tokens(cache));
    cli_json_u64(&j, "bytes_per_token", bytes_per_token);
    cli_json_u64(&j, "total_bytes", len);
    return cli_json_print(&j);
}

static int info_cache(const char *path, const void *data, size_t len, bool json)
{
    kvtc_cache *cache = NULL;
    kvtc_error err;
    if (kvtc_cache_load_safetensors(data, len, &cache, &err) != KVTC_OK)
        return cli_fail_err(path, &err);
    int rc = print_cache_report(path, cache, len, json, NULL);
    kvtc_cache_free(cache);
    return rc;
}

static int info_llama_state(const char *path, const void *data, size_t len, const info_args *a)
{
    kvtc_model_shape shape;
    char name[64];
    if (!a->model)
        return cli_fail(path, "a llama.cpp sequence state names no heads or RoPE: give its "
                              "model with --model GGUF");
    if (!cli_read_model_shape(a->model, &shape, name))
        return CLI_FAIL;
    kvtc_cache *cache = NULL;
    kvtc_llama_layout layout = {.struct_size = sizeof layout};
    kvtc_error err;
    if (kvtc_llama_state_load(data, len, &shape, &cache, &layout, &err) != KVTC_OK)
        return cli_fail_err(path, &err);
    kvtc_cache_set_model_name(cache, name, NULL);
    int rc = print_cache_report(path, cache, len, a->json, &layout);
    kvtc_cache_free(cache);
    return rc;
}

int cmd_info(int argc, char **argv)
{
    static const struct option longs[] = {{"json", no_argument, NULL, OPT_JSON},
                                          {"model", required_argument, NULL, 'm'},
                                          {0}};
    info_args a = {0};
    int first;
    int rc = cli_parse_options(argc, argv, "m:", longs, usage, handle_option, &a, &first);
    bool json = a.json;
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (argc - first != 1)
        return cli_usage_error("give exactly one file (got %d)", argc - first);
    const char *path = argv[first];
    size_t len = 0;
    unsigned char *data = cli_read_file(path, &len);
    if (!data)
        return CLI_FAIL;
    if (len >= 8 && memcmp(data, KVTC_MAGIC, 8) == 0)
        rc = info_stream(path, data, len, json);
    else if (len >= 8 && memcmp(data, KVTCAL_MAGIC, 8) == 0)
        rc = info_calibration(path, data, len, json);
    else if (looks_like_safetensors(data, len))
        rc = info_cache(path, data, len, json);
    else if (cli_is_llama_state(data, len))
        rc = info_llama_state(path, data, len, &a);
    else
        rc = cli_fail(path, "not a .kvtc stream, .kvtcal calibration, .safetensors cache or "
                            "llama.cpp sequence state");
    kvtc_buffer_free(data);
    return rc;
}
