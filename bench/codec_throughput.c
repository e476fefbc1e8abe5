/* kvtc bench codec: compress and decompress throughput against zstd and
 * libdeflate, memory per token at several ratios, time against context. */
#include "bench_common.h"

#include "cli.h"
#include "kvtc_internal.h"

#include <cblas.h>
#include <libdeflate.h>
#include <stdio.h>
#include <string.h>
#include <zstd.h>

static const char codec_usage[] =
    "usage: kvtc bench codec [--model MODEL] [-c CALIB] [--ratio R] [--context N]\n"
    "                        [--repeat K] [--threads N] [--json]\n"
    "\n"
    "Compress and decompress throughput (MB/s of fp16 cache) of kvtc at 1 and N\n"
    "threads, against zstd -3 (libzstd) and libdeflate level 6 on the same raw fp16\n"
    "cache (N context tokens of the evaluation corpus), medians of K runs; the\n"
    "memory per token of the cache in fp16 and stored at ratios 8, 16, 32 and 64;\n"
    "and compress/decompress time against context length (prefixes of the cache).\n"
    "\n"
    "options:\n"
    "      --model MODEL       model name or GGUF path (default: smollm2-135m)\n"
    "  -c, --calibration FILE  calibration (default: the model's default one)\n"
    "  -r, --ratio R           target ratio of the throughput runs (default 16)\n"
    "      --context N         context tokens (default 4096)\n"
    "      --repeat K          runs per figure (default 3)\n"
    "      --threads N         most threads (default: all CPUs)\n"
    "      --json              print the results as JSON\n"
    "  -h, --help              this help\n";

/* Bytes of the cache's keys and values, one contiguous run (kvtc_cache layout). */
static size_t cache_bytes(const kvtc_cache *c)
{
    return 2 * (size_t)kvtc_shape_features(kvtc_cache_shape(c)) * kvtc_cache_tokens(c) *
           kvtc_dtype_size(kvtc_cache_dtype(c));
}

typedef struct codec_row {
    const char *method;
    uint32_t threads;
    double compress_s, decompress_s;
    size_t stored;
} codec_row;

/* kvtc compress and decompress of `cache` on `threads` threads. */
static kvtc_status time_kvtc(const bench_env *e, const kvtc_cache *cache, double ratio,
                             uint32_t threads, uint32_t repeat, codec_row *row, kvtc_error *err)
{
    double c[MAX_REPEAT], d[MAX_REPEAT];
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.k_ratio = copt.v_ratio = ratio;
    copt.n_threads = threads;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = threads};
    openblas_set_num_threads((int)threads);
    kvtc_status st = KVTC_OK;
    for (uint32_t r = 0; r < repeat && st == KVTC_OK; r++) {
        void *out = NULL;
        size_t len = 0;
        kvtc_cache *back = NULL;
        double t0 = cli_now();
        st = kvtc_compress(e->cal, cache, &copt, &out, &len, err);
        c[r] = cli_now() - t0;
        t0 = cli_now();
        if (st == KVTC_OK)
            st = kvtc_decompress(e->cal, out, len, &dopt, &back, err);
        d[r] = cli_now() - t0;
        row->stored = len;
        kvtc_cache_free(back);
        kvtc_buffer_free(out);
    }
    row->method = "kvtc";
    row->threads = threads;
    row->compress_s = bench_median(c, repeat);
    row->decompress_s = bench_median(d, repeat);
    return st;
}

static bool time_zstd(const void *raw, size_t n, uint32_t repeat, codec_row *row)
{
    size_t cap = ZSTD_compressBound(n);
    void *packed = kvtc_malloc(cap), *back = kvtc_malloc(n);
    double c[MAX_REPEAT], d[MAX_REPEAT];
    bool ok = packed && back;
    for (uint32_t r = 0; ok && r < repeat; r++) {
        double t0 = cli_now();
        size_t len = ZSTD_compress(packed, cap, raw, n, 3);
        c[r] = cli_now() - t0;
        ok = !ZSTD_isError(len);
        t0 = cli_now();
        ok = ok && ZSTD_decompress(back, n, packed, len) == n && memcmp(back, raw, n) == 0;
        d[r] = cli_now() - t0;
        row->stored = len;
    }
    *row = (codec_row){"zstd -3", 1, bench_median(c, repeat), bench_median(d, repeat),
                       row->stored};
    kvtc_free(packed);
    kvtc_free(back);
    return ok;
}

static bool time_libdeflate(const void *raw, size_t n, uint32_t repeat, codec_row *row)
{
    struct libdeflate_compressor *comp = libdeflate_alloc_compressor(6);
    struct libdeflate_decompressor *dec = libdeflate_alloc_decompressor();
    size_t cap = comp ? libdeflate_deflate_compress_bound(comp, n) : 0;
    void *packed = kvtc_malloc(cap ? cap : 1), *back = kvtc_malloc(n);
    double c[MAX_REPEAT], d[MAX_REPEAT];
    bool ok = comp && dec && packed && back;
    for (uint32_t r = 0; ok && r < repeat; r++) {
        double t0 = cli_now();
        size_t len = libdeflate_deflate_compress(comp, raw, n, packed, cap);
        c[r] = cli_now() - t0;
        size_t got = 0;
        t0 = cli_now();
        ok = len > 0 &&
             libdeflate_deflate_decompress(dec, packed, len, back, n, &got) == LIBDEFLATE_SUCCESS &&
             got == n && memcmp(back, raw, n) == 0;
        d[r] = cli_now() - t0;
        row->stored = len;
    }
    *row = (codec_row){"libdeflate -6", 1, bench_median(c, repeat), bench_median(d, repeat),
                       row->stored};
    kvtc_free(packed);
    kvtc_free(back);
    libdeflate_free_compressor(comp);
    libdeflate_free_decompressor(dec);
    return ok;
}

static const double memory_ratios[] = {8, 16, 32, 64};
static const uint32_t growth_contexts[] = {512, 1024, 2048, 4096};
#define N_GROWTH_CONTEXTS (sizeof growth_contexts / sizeof growth_contexts[0])
#define N_MEMORY_RATIOS (sizeof memory_ratios / sizeof memory_ratios[0])

int bench_codec(int argc, char **argv)
{
    static const struct option longs[] = {OPTION_MODEL,  OPTION_CALIB,  OPTION_RATIO,
                                          OPTION_CONTEXT, OPTION_REPEAT, OPTION_THREADS,
                                          OPTION_JSON,   {0}};
    bench_args a = {.ratio = 16, .context = 4096, .repeat = 3, .threads = cli_default_threads()};
    bench_env e;
    int rc;
    if (!bench_begin(argc, argv, "c:r:", longs, codec_usage, &a, &e, true, &rc))
        return rc;
    int32_t *ids = bench_context_ids(&e, a.context);
    kvtc_cache *cache = ids ? bench_prefill_cache(&e, ids, a.context) : NULL;
    kvtc_free(ids);
    rc = CLI_FAIL;
    if (!cache) {
        bench_env_close(&e);
        return rc;
    }
    kvtc_error err;
    codec_row rows[4];
    size_t n_rows = 0;
    uint32_t thread_counts[2] = {1, a.threads};
    kvtc_status st = KVTC_OK;
    for (int i = 0; i < (a.threads > 1 ? 2 : 1) && st == KVTC_OK; i++)
        st = time_kvtc(&e, cache, a.ratio, thread_counts[i], a.repeat, &rows[n_rows++], &err);
    const void *raw = kvtc_cache_data_const(cache, KVTC_KEY, 0);
    size_t raw_len = cache_bytes(cache);
    if (st == KVTC_OK && (!time_zstd(raw, raw_len, a.repeat, &rows[n_rows++]) ||
                          !time_libdeflate(raw, raw_len, a.repeat, &rows[n_rows++]))) {
        cli_fail(NULL, "a baseline compressor failed its round trip");
        goto done;
    }

    /* Memory per token at each ratio. */
    kvtc_stream_info mem[N_MEMORY_RATIOS];
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.n_threads = a.threads;
    openblas_set_num_threads((int)a.threads);
    for (size_t i = 0; i < N_MEMORY_RATIOS && st == KVTC_OK; i++) {
        void *out = NULL;
        size_t len;
        copt.k_ratio = copt.v_ratio = memory_ratios[i];
        mem[i] = (kvtc_stream_info){.struct_size = sizeof mem[i]};
        st = kvtc_compress(e.cal, cache, &copt, &out, &len, &err);
        if (st == KVTC_OK)
            st = kvtc_stream_info_get(out, len, &mem[i], &err);
        kvtc_buffer_free(out);
    }
    /* Time against context: prefixes of the same cache. */
    codec_row growth[N_GROWTH_CONTEXTS];
    size_t n_growth = 0;
    for (size_t i = 0; i < N_GROWTH_CONTEXTS && st == KVTC_OK; i++) {
        if (growth_contexts[i] > a.context)
            break;
        kvtc_cache *prefix;
        st = kvtc_cache_create(kvtc_cache_shape(cache), kvtc_cache_dtype(cache),
                               growth_contexts[i], kvtc_cache_pos0(cache), &prefix, &err);
        if (st != KVTC_OK)
            break;
        kvtc_cache_copy_tokens(prefix, 0, cache, 0, growth_contexts[i]);
        st = time_kvtc(&e, prefix, a.ratio, a.threads, a.repeat, &growth[n_growth++], &err);
        kvtc_cache_free(prefix);
    }
    if (st != KVTC_OK) {
        rc = cli_fail_err(NULL, &err);
        goto done;
    }

    double mb = (double)raw_len / 1e6;
    double fp16_kb = 4.0 * (double)kvtc_shape_features(kvtc_cache_shape(cache)) / 1024;
    if (a.json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_u64(&j, "context", a.context);
        cli_json_f64(&j, "ratio", a.ratio);
        cli_json_u64(&j, "fp16_bytes", raw_len);
        cli_json_u64(&j, "repeat", a.repeat);
        kvtc_jw_key(&j.jw, "throughput");
        kvtc_jw_begin_array(&j.jw);
        for (size_t i = 0; i < n_rows; i++) {
            kvtc_jw_begin_object(&j.jw);
            cli_json_str(&j, "method", rows[i].method);
            cli_json_u64(&j, "threads", rows[i].threads);
            cli_json_f64(&j, "compress_mb_s", mb / rows[i].compress_s);
            cli_json_f64(&j, "decompress_mb_s", mb / rows[i].decompress_s);
            cli_json_f64(&j, "compress_mb_s_per_thread", mb / rows[i].compress_s / rows[i].threads);
            cli_json_f64(&j, "decompress_mb_s_per_thread",
                         mb / rows[i].decompress_s / rows[i].threads);
            cli_json_u64(&j, "stored_bytes", rows[i].stored);
            cli_json_f64(&j, "file_ratio", (double)raw_len / (double)rows[i].stored);
            kvtc_jw_end_object(&j.jw);
        }
        kvtc_jw_end_array(&j.jw);
        cli_json_f64(&j, "fp16_kb_per_token", fp16_kb);
        kvtc_jw_key(&j.jw, "memory");
        kvtc_jw_begin_array(&j.jw);
        for (size_t i = 0; i < N_MEMORY_RATIOS; i++) {
            const kvtc_stream_info *m = &mem[i];
            kvtc_jw_begin_object(&j.jw);
            cli_json_f64(&j, "ratio", memory_ratios[i]);
            cli_json_f64(&j, "stored_kb_per_token",
                         (double)m->compressed_bytes / 1024 / m->compressed_tokens);
            cli_json_f64(&j, "realized_ratio", fp16_kb * 1024 * m->compressed_tokens /
                                                   (double)m->compressed_bytes);
            cli_json_f64(&j, "file_kb_per_token", (double)m->total_bytes / 1024 / m->n_tokens);
            kvtc_jw_end_object(&j.jw);
        }
        kvtc_jw_end_array(&j.jw);
        kvtc_jw_key(&j.jw, "context_growth");
        kvtc_jw_begin_array(&j.jw);
        for (size_t i = 0; i < n_growth; i++) {
            kvtc_jw_begin_object(&j.jw);
            cli_json_u64(&j, "context", growth_contexts[i]);
            cli_json_u64(&j, "threads", growth[i].threads);
            cli_json_f64(&j, "compress_ms", 1e3 * growth[i].compress_s);
            cli_json_f64(&j, "decompress_ms", 1e3 * growth[i].decompress_s);
            kvtc_jw_end_object(&j.jw);
        }
        kvtc_jw_end_array(&j.jw);
        rc = cli_json_print(&j);
    } else {
        printf("fp16 cache of %u tokens (evaluation corpus): %.1f MB; kvtc at ratio %g; median "
               "of %u\n",
               a.context, mb, a.ratio, a.repeat);
        printf("  %-14s %7s %13s %13s %15s %15s %9s\n", "method", "threads", "compress MB/s",
               "per thread", "decompress MB/s", "per thread", "ratio");
        for (size_t i = 0; i < n_rows; i++)
            printf("  %-14s %7u %13.1f %13.1f %15.1f %15.1f %8.2fx\n", rows[i].method,
                   rows[i].threads, mb / rows[i].compress_s,
                   mb / rows[i].compress_s / rows[i].threads, mb / rows[i].decompress_s,
                   mb / rows[i].decompress_s / rows[i].threads,
                   (double)raw_len / (double)rows[i].stored);
        printf("memory per token (fp16 cache: %.2f KB/token)\n", fp16_kb);
        printf("  %-6s %22s %15s %24s\n", "ratio", "stored KB/token", "realized", "whole file KB/token");
        for (size_t i = 0; i < N_MEMORY_RATIOS; i++) {
            const kvtc_stream_info *m = &mem[i];
            printf("  %-6g %22.3f %14.1fx %24.3f\n", memory_ratios[i],
                   (double)m->compressed_bytes / 1024 / m->compressed_tokens,
                   fp16_kb * 1024 * m->compressed_tokens / (double)m->compressed_bytes,
                   (double)m->total_bytes / 1024 / m->n_tokens);
        }
        printf("  (stored = compressed tokens only; the whole file adds the raw sinks and "
               "window of %u tokens)\n",
               mem[0].sinks + mem[0].window);
        printf("time against context (ratio %g, %u threads)\n", a.ratio, a.threads);
        printf("  %7s %13s %15s %17s %19s\n", "tokens", "compress ms", "decompress ms",
               "compress us/tok", "decompress us/tok");
        for (size_t i = 0; i < n_growth; i++)
            printf("  %7u %13.1f %15.1f %17.1f %19.1f\n", growth_contexts[i],
                   1e3 * growth[i].compress_s, 1e3 * growth[i].decompress_s,
                   1e6 * growth[i].compress_s / growth_contexts[i],
                   1e6 * growth[i].decompress_s / growth_contexts[i]);
        rc = CLI_OK;
    }
done:
    kvtc_cache_free(cache);
    bench_env_close(&e);
    return rc;
}
