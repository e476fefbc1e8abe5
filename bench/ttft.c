/* kvtc bench ttft: time to first token of a resumed conversation, restoring
 * its .kvtc from disk against recomputing the prefill, and where the restore
 * time goes (the codec's DEFLATE and transform stages timed alone). */
#include "bench_common.h"

#include "cli.h"
#include "container.h"
#include "entropy.h"
#include "kernels.h"
#include "kvtc_internal.h"
#include "session.h"
#include "transform.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char ttft_usage[] =
    "usage: kvtc bench ttft [--model MODEL] [-c CALIB] [--ratio R] [--context N]\n"
    "                       [--repeat K] [--threads N] [--json]\n"
    "\n"
    "Time to first token of a resumed conversation, measured side by side:\n"
    "  recompute  prefill the N context tokens and one new token\n"
    "  restore    read the .kvtc file of the context from disk (its cached pages\n"
    "             dropped first), decode it layer by layer into a fresh cache\n"
    "             (kvtc_decompress_layers), run the new token\n"
    "The context is N tokens of the evaluation corpus. Runs alternate; each figure\n"
    "is the median of K runs. Also reports decode-then-import (kvtc_decompress,\n"
    "then session_import_cache) and where the restore time goes.\n"
    "\n"
    "options:\n"
    "      --model MODEL       model name or GGUF path (default: smollm2-135m)\n"
    "  -c, --calibration FILE  calibration (default: the model's default one, built\n"
    "                          on first use)\n"
    "  -r, --ratio R           target compression ratio (default 16)\n"
    "      --context N         context tokens (default 4096)\n"
    "      --repeat K          runs of each method (default 5)\n"
    "      --threads N         threads (default: all CPUs)\n"
    "      --json              print the results as JSON\n"
    "  -h, --help              this help\n";

/* Where one restore's time went. */
typedef struct restore_stages {
    double read, coefficients, first_layer, rebuild, import, forward;
} restore_stages;

/* The layer callback of an instrumented restore: times the import of each
 * layer and notes when layer 0 arrives. */
typedef struct timed_import {
    session *s;
    double start, layer0, import_s;
    double last_progress, coefficients_end; /* progress reports before layer 0 */
} timed_import;

static int timed_import_layer(void *user, uint32_t layer, const void *key, const void *value)
{
    timed_import *t = user;
    double t0 = cli_now();
    if (layer == 0) {
        t->layer0 = t0;
        t->coefficients_end = t->last_progress;
    }
    int rc = session_import_layer(t->s, layer, key, value);
    t->import_s += cli_now() - t0;
    return rc;
}

/* Progress reports come after each batch of chunks decoded and after each
 * layer; the last one before layer 0 arrives ends the coefficient phase. */
static void timed_progress(void *user, const char *stage, uint64_t done, uint64_t total)
{
    (void)stage, (void)done, (void)total;
    timed_import *t = user;
    if (t->layer0 == 0)
        t->last_progress = cli_now();
}

/* Asks the kernel to forget the file's cached pages, so that the next read
 * comes from the disk as when a stored conversation is resumed (advisory:
 * some file systems keep them anyway). */
static void drop_page_cache(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

/* The restore path: read, decode layer by layer into s, one new token. With
 * stages, times each part (a progress callback adds a little overhead, so the
 * timed comparison runs without). */
static kvtc_status restore_layers(const bench_env *e, session *s, const char *path,
                                  int32_t next, float *logits, restore_stages *stages,
                                  kvtc_error *err)
{
    timed_import t = {.s = s};
    drop_page_cache(path);
    double t0 = cli_now();
    t.start = t0;
    void *data = NULL;
    size_t len = 0;
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_status st = kvtc_read_file(path, &data, &len, err);
    double t_read = cli_now();
    if (st == KVTC_OK)
        st = kvtc_stream_info_get(data, len, &info, err);
    if (st == KVTC_OK)
        st = session_begin_import(s, info.dtype, info.n_tokens, info.pos0, err);
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = e->threads};
    if (stages) {
        dopt.progress = timed_progress;
        dopt.progress_user = &t;
    }
    if (st == KVTC_OK) {
        t.last_progress = t.start = cli_now();
        st = kvtc_decompress_layers(e->cal, data, len, &dopt,
                                    stages ? timed_import_layer : session_import_layer,
                                    stages ? (void *)&t : (void *)s, err);
    }
    if (st == KVTC_OK || st == KVTC_E_CANCELLED)
        st = session_finish_import(s, err);
    double t_decoded = cli_now();
    if (st == KVTC_OK)
        st = session_forward(s, &next, 1, logits, false, err);
    double t_end = cli_now();
    kvtc_buffer_free(data);
    if (stages && st == KVTC_OK) {
        stages->read = t_read - t0;
        stages->coefficients = t.coefficients_end - t.start;
        stages->first_layer = t.layer0 - t0;
        stages->import = t.import_s;
        stages->rebuild = t_decoded - t.coefficients_end - t.import_s;
        stages->forward = t_end - t_decoded;
    }
    return st;
}

/* The decode-then-import path: the whole cache first, then into s. */
static kvtc_status restore_whole(const bench_env *e, session *s, const char *path, int32_t next,
                                 float *logits, kvtc_error *err)
{
    void *data = NULL;
    size_t len = 0;
    kvtc_cache *cache = NULL;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = e->threads};
    drop_page_cache(path);
    kvtc_status st = kvtc_read_file(path, &data, &len, err);
    if (st == KVTC_OK)
        st = kvtc_decompress(e->cal, data, len, &dopt, &cache, err);
    if (st == KVTC_OK)
        st = session_import_cache(s, cache, err);
    if (st == KVTC_OK)
        st = session_forward(s, &next, 1, logits, false, err);
    kvtc_cache_free(cache);
    kvtc_buffer_free(data);
    return st;
}

/* The two halves of the coefficient and rebuild phases, timed alone on the
 * same stream with the codec's own stages and work split: DEFLATE of every
 * coded chunk (kvtc_inflate_exact), and the inverse projection of every coded
 * block, kind and layer (kvtc_transform_reconstruct_layer: one sgemm over the
 * plan's coordinates, plus the mean). */
typedef struct kernel_job {
    const kvtc_stream *s;
    const kvtc_calibration *cal;
    const kvtc_block **coded; /* the coded blocks */
    uint32_t n_coded_blocks, layer;
    float *coef[2], *rows[2]; /* [tokens][n_coords], [tokens][n_kv_head * head_dim] */
    bool tiles;               /* the codec's bf16 tile path (transform.h) */
    uint32_t tile_terms[2];
    uint16_t *coef_tiles[2];  /* coef packed for it */
    const struct kvtc_tile_basis *basis_tiles[2];
} kernel_job;

static kvtc_status inflate_item(void *user, uint32_t item, kvtc_error *err)
{
    kernel_job *j = user;
    const kvtc_block *b = j->coded[item / 2];
    int k = item % 2;
    size_t n = (size_t)kvtc_coded_chunk_bytes(j->s->plan[k], b->n_tokens);
    uint8_t *out = kvtc_malloc(n ? n : 1);
    if (!out)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    kvtc_status st = kvtc_inflate_exact(b->data[k], (size_t)b->length[k], out, n, err);
    kvtc_free(out);
    return st;
}

static kvtc_status reconstruct_item(void *user, uint32_t item, kvtc_error *err)
{
    (void)err;
    kernel_job *j = user;
    const kvtc_block *b = j->coded[item / 2];
    int k = item % 2;
    uint32_t nc = j->s->plan[k]->n_coords;
    size_t hd = (size_t)j->s->shape.n_kv_head * j->s->shape.head_dim;
    size_t row0 = b->first - j->coded[0]->first;
    if (j->tiles)
        kvtc_transform_reconstruct_tiles(j->cal, (kvtc_kind)k, j->layer,
                                         j->coef_tiles[k] +
                                             row0 * kvtc_transform_tile_row(nc, j->tile_terms[k]),
                                         b->n_tokens, nc, j->basis_tiles[k],
                                         j->rows[k] + row0 * hd);
    else
        kvtc_transform_reconstruct_layer(j->cal, (kvtc_kind)k, j->layer, j->coef[k] + row0 * nc,
                                         b->n_tokens, nc, j->rows[k] + row0 * hd);
    return KVTC_OK;
}

typedef struct kernel_times {
    double inflate, project;
    double project_flops;
} kernel_times;

static kvtc_status time_kernels(const bench_env *e, const void *data, size_t len,
                                kernel_times *out, kvtc_error *err)
{
    memset(out, 0, sizeof *out);
    kvtc_stream s;
    kvtc_status st = kvtc_stream_parse(data, len, &s, err);
    if (st != KVTC_OK)
        return st;
    kernel_job j = {.s = &s, .cal = e->cal};
    j.coded = kvtc_malloc_array(s.n_blocks ? s.n_blocks : 1, sizeof *j.coded);
    uint32_t n_coded = 0;
    for (uint32_t i = 0; j.coded && i < s.n_blocks; i++)
        if (s.blocks[i].encoding == KVTC_BLOCK_CODED) {
            j.coded[j.n_coded_blocks++] = &s.blocks[i];
            n_coded += s.blocks[i].n_tokens;
        }
    size_t hd = (size_t)s.shape.n_kv_head * s.shape.head_dim;
    j.tiles = kvtc_transform_tiles_usable(e->cal);
    for (int k = 0; k < 2 && j.coded; k++) {
        uint32_t nc = s.plan[k]->n_coords;
        j.coef[k] = kvtc_calloc((size_t)n_coded * nc + 1, sizeof(float));
        j.rows[k] = kvtc_malloc_array((size_t)n_coded * hd + 1, sizeof(float));
        if (j.tiles && j.coef[k]) {
            /* packed once per decode, like the codec does (with its dequantization) */
            uint32_t terms = j.tile_terms[k] = kvtc_transform_tile_terms(e->cal, s.plan[k]);
            j.coef_tiles[k] = kvtc_calloc(
                (size_t)n_coded * kvtc_transform_tile_row(nc, terms) + 1, sizeof(uint16_t));
            j.basis_tiles[k] = kvtc_transform_tile_basis(e->cal, (kvtc_kind)k, nc, terms);
            if (j.coef_tiles[k])
                kvtc_transform_tile_coefficients(j.coef[k], nc, n_coded, nc, terms,
                                                 j.coef_tiles[k]);
        }
    }
    if (!j.coded || !j.coef[0] || !j.coef[1] || !j.rows[0] || !j.rows[1] ||
        (j.tiles && (!j.coef_tiles[0] || !j.coef_tiles[1] || !j.basis_tiles[0] ||
                     !j.basis_tiles[1])))
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    if (st == KVTC_OK && j.n_coded_blocks) {
        double t0 = cli_now();
        st = kvtc_parallel_for(2 * j.n_coded_blocks, e->threads, inflate_item, &j, err);
        out->inflate = cli_now() - t0;
        t0 = cli_now();
        for (j.layer = 0; st == KVTC_OK && j.layer < s.shape.n_layer; j.layer++)
            st = kvtc_parallel_for(2 * j.n_coded_blocks, e->threads, reconstruct_item, &j, err);
        out->project = cli_now() - t0;
        for (int k = 0; k < 2; k++)
            out->project_flops += 2.0 * n_coded * (double)s.shape.n_layer * (double)hd *
                                  s.plan[k]->n_coords;
    }
    for (int k = 0; k < 2; k++) {
        kvtc_free(j.coef[k]);
        kvtc_free(j.coef_tiles[k]);
        kvtc_free(j.rows[k]);
    }
    kvtc_free(j.coded);
    kvtc_stream_release(&s);
    return st;
}

int bench_ttft(int argc, char **argv)
{
    static const struct option longs[] = {OPTION_MODEL,  OPTION_CALIB,  OPTION_RATIO,
                                          OPTION_CONTEXT, OPTION_REPEAT, OPTION_THREADS,
                                          OPTION_JSON,   {0}};
    bench_args a = {.ratio = 16, .context = 4096, .repeat = 5, .threads = cli_default_threads()};
    bench_env e;
    int rc;
    if (!bench_begin(argc, argv, "c:r:", longs, ttft_usage, &a, &e, true, &rc))
        return rc;

    const uint32_t n = a.context;
    const uint32_t vocab = e.m->cfg.vocab_size;
    char path[] = "/tmp/kvtc-bench-XXXXXX.kvtc";
    bool have_file = false;
    int32_t *ids = bench_context_ids(&e, (size_t)n + 1); /* the context, then the new token */
    kvtc_cache *cache = NULL;
    session *s = NULL;
    float *logits[2] = {kvtc_malloc_array(vocab, sizeof(float)),
                        kvtc_malloc_array(vocab, sizeof(float))};
    void *stream = NULL;
    size_t stream_len = 0;
    kvtc_error err;
    kvtc_status st = KVTC_OK;
    rc = CLI_FAIL;
    if (!ids || !logits[0] || !logits[1])
        goto done;
    if (!(cache = bench_prefill_cache(&e, ids, n)))
        goto done;

    /* The stored conversation. */
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.k_ratio = copt.v_ratio = a.ratio;
    copt.n_threads = e.threads;
    double t0 = cli_now();
    if ((st = kvtc_compress(e.cal, cache, &copt, &stream, &stream_len, &err)) != KVTC_OK)
        goto fail;
    double compress_s = cli_now() - t0;
    kvtc_stream_info info = {.struct_size = sizeof info};
    if ((st = kvtc_stream_info_get(stream, stream_len, &info, &err)) != KVTC_OK)
        goto fail;
    int fd = mkstemps(path, 5);
    if (fd < 0) {
        cli_fail(path, "cannot create a temporary file");
        goto done;
    }
    close(fd);
    have_file = true;
    if ((st = kvtc_write_file_atomic(path, stream, stream_len, &err)) != KVTC_OK)
        goto fail;
    if ((st = session_create(e.m, n + 1, e.threads, &s, &err)) != KVTC_OK)
        goto fail;

    /* Warm-up: page cache, allocator, thread pools. */
    if ((st = restore_layers(&e, s, path, ids[n], logits[1], NULL, &err)) != KVTC_OK)
        goto fail;

    double recompute[MAX_REPEAT], restore[MAX_REPEAT], whole[MAX_REPEAT];
    bool agree = true;
    for (uint32_t r = 0; r < a.repeat; r++) {
        /* recompute, then both restores, which swap places every run so that
         * each follows the recompute as often as the other */
        for (int step = 0; step < 3 && st == KVTC_OK; step++) {
            int method = step == 0 ? 0 : r % 2 ? 3 - step : step;
            t0 = cli_now();
            if (method == 0) {
                session_reset(s);
                st = session_forward(s, ids, n + 1, logits[0], false, &err);
                recompute[r] = cli_now() - t0;
            } else if (method == 1) {
                st = restore_layers(&e, s, path, ids[n], logits[1], NULL, &err);
                restore[r] = cli_now() - t0;
            } else {
                st = restore_whole(&e, s, path, ids[n], logits[1], &err);
                whole[r] = cli_now() - t0;
            }
        }
        if (st != KVTC_OK)
            goto fail;
        /* logits[1] holds a restored run's, logits[0] the recompute's. */
        agree = agree && logits_argmax(logits[0], vocab) == logits_argmax(logits[1], vocab);
    }

    /* Where the restore time goes: instrumented runs, then the kernels alone. */
    restore_stages runs[MAX_REPEAT];
    kernel_times kernels[MAX_REPEAT];
    for (uint32_t r = 0; r < a.repeat; r++)
        if ((st = restore_layers(&e, s, path, ids[n], logits[1], &runs[r], &err)) != KVTC_OK ||
            (st = time_kernels(&e, stream, stream_len, &kernels[r], &err)) != KVTC_OK)
            goto fail;
    double peak = bench_sgemm_peak_gflops(e.threads, 2048);

#define STAGE_MS(field) \
    bench_median_ms(runs, a.repeat, sizeof runs[0], offsetof(restore_stages, field))
#define KERNEL_MS(field) \
    bench_median_ms(kernels, a.repeat, sizeof kernels[0], offsetof(kernel_times, field))
    double rec_ms = 1e3 * bench_median(recompute, a.repeat);
    double res_ms = 1e3 * bench_median(restore, a.repeat);
    double whole_ms = 1e3 * bench_median(whole, a.repeat);
    double read_ms = STAGE_MS(read), coef_ms = STAGE_MS(coefficients);
    double rebuild_ms = STAGE_MS(rebuild), import_ms = STAGE_MS(import);
    double forward_ms = STAGE_MS(forward), first_ms = STAGE_MS(first_layer);
    double inflate_ms = KERNEL_MS(inflate), project_ms = KERNEL_MS(project);
#undef STAGE_MS
#undef KERNEL_MS
    double dequant_ms = coef_ms > inflate_ms ? coef_ms - inflate_ms : 0;
    double rope_ms = rebuild_ms > project_ms ? rebuild_ms - project_ms : 0;
    double project_gflops = project_ms > 0 ? kernels[0].project_flops / (project_ms * 1e6) : 0;
    double fp16_kb = 4.0 * (double)kvtc_shape_features(&info.shape) / 1024;
    /* decode speed: the restored fp16 cache over the codec's share of a restore */
    double decode_ms = coef_ms + rebuild_ms;
    double decode_mb_s = decode_ms > 0 ? fp16_kb * 1024 * n / 1e6 / (decode_ms / 1e3) : 0;
    kvtc_kernel_level level = kvtc_kernels_level();
    const char *kernel_name = kvtc_kernels_name(
        kvtc_transform_tiles_usable(e.cal) || level < KVTC_KERNELS_AVX2 ? level : KVTC_KERNELS_AVX2);

    if (a.json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_u64(&j, "context", n);
        cli_json_f64(&j, "ratio", a.ratio);
        cli_json_u64(&j, "threads", e.threads);
        cli_json_u64(&j, "repeat", a.repeat);
        cli_json_f64(&j, "recompute_ms", rec_ms);
        cli_json_f64(&j, "restore_ms", res_ms);
        cli_json_f64(&j, "ttft_ratio", rec_ms / res_ms);
        cli_json_f64(&j, "restore_whole_ms", whole_ms);
        cli_json_f64(&j, "overlap_gain_ms", whole_ms - res_ms);
        cli_json_f64(&j, "first_layer_ms", first_ms);
        cli_json_f64(&j, "decode_ms", decode_ms);
        cli_json_f64(&j, "decode_mb_s", decode_mb_s);
        cli_json_f64(&j, "decode_mb_s_per_core", decode_mb_s / e.threads);
        kvtc_jw_key(&j.jw, "kernels");
        kvtc_jw_string(&j.jw, kernel_name);
        cli_json_f64(&j, "compress_ms", 1e3 * compress_s);
        cli_json_u64(&j, "file_bytes", stream_len);
        cli_json_f64(&j, "fp16_kb_per_token", fp16_kb);
        cli_json_f64(&j, "stored_kb_per_token", (double)stream_len / 1024 / n);
        cli_json_f64(&j, "file_ratio", fp16_kb * 1024 * n / (double)stream_len);
        kvtc_jw_key(&j.jw, "next_token_agrees");
        kvtc_jw_bool(&j.jw, agree);
        kvtc_jw_key(&j.jw, "stages_ms");
        kvtc_jw_begin_object(&j.jw);
        cli_json_f64(&j, "read", read_ms);
        cli_json_f64(&j, "inflate", inflate_ms);
        cli_json_f64(&j, "dequantize", dequant_ms);
        cli_json_f64(&j, "inverse_projection", project_ms);
        cli_json_f64(&j, "rope_dtype", rope_ms);
        cli_json_f64(&j, "import", import_ms);
        cli_json_f64(&j, "forward_1_token", forward_ms);
        kvtc_jw_end_object(&j.jw);
        cli_json_f64(&j, "inverse_projection_gflops", project_gflops);
        cli_json_f64(&j, "sgemm_peak_gflops", peak);
        rc = cli_json_print(&j);
    } else {
        printf("context %u tokens (evaluation corpus), ratio %g, %u threads, median of %u\n", n,
               a.ratio, e.threads, a.repeat);
        printf("  stored: %zu bytes (%.2f KB/token vs %.2f KB/token fp16, %.1fx), compressed in "
               "%.0f ms\n",
               stream_len, (double)stream_len / 1024 / n, fp16_kb,
               fp16_kb * 1024 * n / (double)stream_len, 1e3 * compress_s);
        char what[64];
        snprintf(what, sizeof what, "recompute: prefill %u + 1 token", n);
        printf("  %-46s %9.1f ms\n", what, rec_ms);
        printf("  %-46s %9.1f ms   TTFT %.1fx lower\n", "restore: read, decode per layer, 1 token",
               res_ms, rec_ms / res_ms);
        printf("  %-46s %9.1f ms   (per-layer decode gains %.1f ms)\n",
               "restore: read, decode whole, import, 1 token", whole_ms, whole_ms - res_ms);
        printf("  next token same as recompute: %s\n", agree ? "yes" : "no");
        printf("  where a restore goes (ms): read %.1f, inflate %.1f, dequantize %.1f, inverse "
               "projection+mean %.1f,\n    RoPE+dtype %.1f, import into the session %.1f, forward "
               "of the new token %.1f\n",
               read_ms, inflate_ms, dequant_ms, project_ms, rope_ms, import_ms, forward_ms);
        printf("  decode (coefficients and layers) %.1f ms: %.1f MB/s of restored fp16, %.1f MB/s "
               "per core\n",
               decode_ms, decode_mb_s, decode_mb_s / e.threads);
        printf("  layer 0 restored after %.1f ms; inverse projection (%s) at %.1f GFLOP/s = %.0f%% "
               "of the sgemm peak (%.1f GFLOP/s)\n",
               first_ms, kernel_name, project_gflops, peak > 0 ? 100 * project_gflops / peak : 0,
               peak);
        rc = CLI_OK;
    }
    goto done;
fail:
    rc = cli_fail_err(NULL, &err);
done:
    if (have_file)
        unlink(path);
    kvtc_buffer_free(stream);
    session_free(s);
    kvtc_cache_free(cache);
    kvtc_free(logits[0]);
    kvtc_free(logits[1]);
    kvtc_free(ids);
    bench_env_close(&e);
    return rc;
}
