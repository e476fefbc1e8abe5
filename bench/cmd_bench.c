/* kvtc bench: the measurements behind docs/BENCHMARKS.md.
 *
 *   ttft     time to first token: restore a .kvtc from disk vs recompute the prefill
 *   codec        compress/decompress throughput vs zstd -3 and libdeflate -6, bytes
 *                per token at each ratio, time against context length
 *   prefill      the engine's prefill speed, GFLOP/s, and this machine's sgemm peak
 *   calibration  calibration time against calibration tokens
 *
 * Every context is real text from the evaluation corpus (app/corpus.h), run
 * through the model; every figure is a median of repeated runs. */
#include "default_model.h"
#include "cli.h"
#include "codec.h"
#include "bench.h"
#include "container.h"
#include "corpus.h"
#include "default_calib.h"
#include "entropy.h"
#include "kvtc_internal.h"
#include "model.h"
#include "session.h"

#include <cblas.h>
#include <fcntl.h>
#include <getopt.h>
#include <stddef.h>
#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

/* ---- options shared by the benchmarks ------------------------------------------ */

enum {
    OPT_MODEL = 256,
    OPT_CONTEXT,
    OPT_REPEAT,
    OPT_THREADS,
    OPT_JSON,
    OPT_CALIB_CHUNKS,
};

typedef struct bench_args {
    const char *model_path, *calibration;
    double ratio;
    uint32_t context, repeat, threads, calib_chunks;
    bool json;
} bench_args;

#define MAX_REPEAT 64 /* the medians keep per-repeat timings on the stack */

static int handle_option(void *user, int opt, const char *arg)
{
    bench_args *a = user;
    switch (opt) {
    case OPT_MODEL: a->model_path = arg; return CLI_OK;
    case 'c': a->calibration = arg; return CLI_OK;
    case 'r': return cli_parse_ratio("--ratio", arg, &a->ratio) ? CLI_OK : CLI_USAGE;
    case OPT_CONTEXT:
        return cli_parse_u32("--context", arg, 200, 1u << 20, &a->context) ? CLI_OK : CLI_USAGE;
    case OPT_REPEAT:
        return cli_parse_u32("--repeat", arg, 1, MAX_REPEAT, &a->repeat) ? CLI_OK : CLI_USAGE;
    case OPT_THREADS:
        return cli_parse_u32("--threads", arg, 1, 256, &a->threads) ? CLI_OK : CLI_USAGE;
    case OPT_JSON: a->json = true; return CLI_OK;
    case OPT_CALIB_CHUNKS:
        return cli_parse_u32("--calib-chunks", arg, 8, 1024, &a->calib_chunks) ? CLI_OK
                                                                              : CLI_USAGE;
    }
    return CLI_USAGE;
}

#define OPTION_MODEL {"model", required_argument, NULL, OPT_MODEL}
#define OPTION_CALIB {"calibration", required_argument, NULL, 'c'}
#define OPTION_RATIO {"ratio", required_argument, NULL, 'r'}
#define OPTION_CONTEXT {"context", required_argument, NULL, OPT_CONTEXT}
#define OPTION_REPEAT {"repeat", required_argument, NULL, OPT_REPEAT}
#define OPTION_THREADS {"threads", required_argument, NULL, OPT_THREADS}
#define OPTION_JSON {"json", no_argument, NULL, OPT_JSON}

/* Parses argv into a (defaults already set); returns CLI_OK, an exit status,
 * or -1 after --help. No operands are taken. */
static int parse_args(int argc, char **argv, const char *shorts, const struct option *longs,
                      const char *usage, bench_args *a)
{
    int first;
    int rc = cli_parse_options(argc, argv, shorts, longs, usage, handle_option, a, &first);
    if (rc != CLI_OK)
        return rc;
    if (first < argc)
        return cli_usage_error("unexpected argument '%s'", argv[first]);
    return CLI_OK;
}

/* ---- model, calibration, contexts ------------------------------------------------ */

typedef struct bench_env {
    char model_path[4096], calib_path[4096];
    model *m;
    tokenizer *tok;
    kvtc_calibration *cal; /* NULL unless asked for */
    uint32_t threads;
} bench_env;

static void env_close(bench_env *e)
{
    kvtc_calibration_free(e->cal);
    tokenizer_free(e->tok);
    model_free(e->m);
    memset(e, 0, sizeof *e);
}

/* Opens the model (the default one, fetched if missing, when a->model_path is
 * NULL) and, with need_cal, its calibration (the default one when -c is not
 * given). Prints the error and returns CLI_FAIL on failure. */
static int env_open(bench_env *e, const bench_args *a, bool need_cal)
{
    memset(e, 0, sizeof *e);
    e->threads = a->threads;
    kvtc_error err;
    if (a->model_path)
        snprintf(e->model_path, sizeof e->model_path, "%s", a->model_path);
    else if (default_model_path(e->model_path, sizeof e->model_path, true, &err) != KVTC_OK)
        return cli_fail(NULL, "%s", err.message);
    if (model_open(e->model_path, &e->m, &e->tok, &err) != KVTC_OK)
        return cli_fail_err(e->model_path, &err);
    if (!e->tok) {
        env_close(e);
        return cli_fail(a->model_path, "the model carries no tokenizer; benchmarks need a GGUF "
                                       "model with one");
    }
    if (!need_cal)
        return CLI_OK;
    if (a->calibration)
        snprintf(e->calib_path, sizeof e->calib_path, "%s", a->calibration);
    else if (default_calibration(e->model_path, e->threads, e->calib_path, sizeof e->calib_path,
                                 &err) != KVTC_OK) {
        env_close(e);
        return cli_fail_err(NULL, &err);
    }
    if (!(e->cal = cli_read_calibration(e->calib_path))) {
        env_close(e);
        return CLI_FAIL;
    }
    return CLI_OK;
}

/* Every bench subcommand starts the same way: parse its options, then open the
 * model (and the calibration when need_cal). False when the command ends here,
 * with its exit status in *rc (0 after --help). */
static bool bench_begin(int argc, char **argv, const char *shorts, const struct option *longs,
                        const char *usage, bench_args *a, bench_env *e, bool need_cal, int *rc)
{
    *rc = parse_args(argc, argv, shorts, longs, usage, a);
    if (*rc != CLI_OK) {
        *rc = *rc < 0 ? CLI_OK : *rc;
        return false;
    }
    *rc = env_open(e, a, need_cal);
    return *rc == CLI_OK;
}

/* The first n tokens of the evaluation corpus. */
static int32_t *context_ids(const bench_env *e, size_t n)
{
    int32_t *ids;
    kvtc_error err;
    if (corpus_context(e->tok, CORPUS_EVALUATION, n, false, &ids, &err) != KVTC_OK) {
        cli_fail_err(NULL, &err);
        return NULL;
    }
    return ids;
}

/* Runs ids through a fresh session and returns its cache in f16, the dtype an
 * engine keeps it in. */
static kvtc_cache *prefill_cache(const bench_env *e, const int32_t *ids, uint32_t n)
{
    session *s = NULL;
    kvtc_cache *cache = NULL;
    kvtc_error err;
    if (session_create(e->m, n, e->threads, &s, &err) != KVTC_OK ||
        session_forward(s, ids, n, NULL, false, &err) != KVTC_OK ||
        session_export_cache(s, KVTC_F16, &cache, &err) != KVTC_OK)
        cli_fail_err(e->model_path, &err);
    session_free(s);
    return cache;
}

/* ---- measurement helpers --------------------------------------------------------- */

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, size_t n)
{
    double sorted[64];
    if (n == 0)
        return 0;
    if (n > 64)
        n = 64;
    memcpy(sorted, v, n * sizeof *v);
    qsort(sorted, n, sizeof *sorted, compare_double);
    return n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
}

/* 1000 x the median of a double field (at byte `offset`) of n structs of `size` bytes. */
static double median_field(const void *array, size_t n, size_t size, size_t offset)
{
    double v[64];
    if (n > 64)
        n = 64;
    for (size_t i = 0; i < n; i++)
        memcpy(&v[i], (const char *)array + i * size + offset, sizeof v[i]);
    return 1e3 * median(v, n);
}

/* Bytes of the cache's keys and values, one contiguous run (kvtc_cache layout). */
static size_t cache_bytes(const kvtc_cache *c)
{
    return 2 * (size_t)kvtc_shape_features(&c->shape) * c->n_tokens * kvtc_dtype_size(c->dtype);
}

/* GFLOP/s of the best of a few square sgemms of size n on `threads` threads. */
static double sgemm_peak_gflops(uint32_t threads, int n)
{
    float *a = kvtc_malloc_array((size_t)n * n, sizeof(float));
    float *b = kvtc_malloc_array((size_t)n * n, sizeof(float));
    float *c = kvtc_malloc_array((size_t)n * n, sizeof(float));
    double best = 0;
    if (a && b && c) {
        for (size_t i = 0; i < (size_t)n * n; i++) {
            a[i] = (float)((i * 7 % 13) - 6) / 8.0f;
            b[i] = (float)((i * 5 % 11) - 5) / 8.0f;
        }
        openblas_set_num_threads((int)threads);
        for (int rep = 0; rep < 4; rep++) {
            double t0 = cli_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                        0.0f, c, n);
            double s = cli_now() - t0;
            double g = 2.0 * n * n * (double)n / s / 1e9;
            if (rep > 0 && g > best) /* the first run warms up the threads */
                best = g;
        }
    }
    kvtc_free(a);
    kvtc_free(b);
    kvtc_free(c);
    return best;
}

/* FLOPs of a forward pass over tokens [t0, t0 + n) with logits for the last one. */
static double forward_flops(const model_config *c, uint64_t t0, uint64_t n)
{
    double q = (double)c->n_head * c->head_dim, kv = (double)c->n_kv_head * c->head_dim;
    double per_layer = c->dim * (q + 2 * kv) + q * c->dim + 3.0 * c->dim * c->hidden_dim;
    /* attention: q.k and p.v over t + 1 keys for the token at position t */
    double keys = (double)n * (double)t0 + (double)n * (double)(n + 1) / 2;
    double attention = 4.0 * q * keys;
    return c->n_layer * (2.0 * per_layer * (double)n + attention) +
           2.0 * c->dim * (double)c->vocab_size;
}

/* ---- ttft --------------------------------------------------------------------------- */

static const char ttft_usage[] =
    "usage: kvtc bench ttft [--model PATH] [-c CALIB] [--ratio R] [--context N]\n"
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
    "      --model PATH        GGUF model (default: SmolLM2-135M-Instruct, fetched)\n"
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
 * same stream with the codec's own primitives and work split: DEFLATE of every
 * coded chunk, and the inverse projection (one sgemm per coded block, kind
 * and layer, over the plan's coordinates). */
typedef struct kernel_job {
    const kvtc_stream *s;
    const kvtc_calibration *cal;
    const kvtc_block **coded; /* the coded blocks */
    uint32_t n_coded_blocks, layer;
    float *coef[2], *rows[2]; /* [tokens][n_coords], [tokens][n_kv_head * head_dim] */
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

static kvtc_status project_item(void *user, uint32_t item, kvtc_error *err)
{
    (void)err;
    kernel_job *j = user;
    const kvtc_block *b = j->coded[item / 2];
    int k = item % 2;
    const struct kvtc_calib_kind *ck = &j->cal->kind[k];
    int nc = (int)j->s->plan[k]->n_coords;
    int hd = (int)(j->s->shape.n_kv_head * j->s->shape.head_dim);
    size_t row0 = b->first - j->coded[0]->first;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)b->n_tokens, hd, nc, 1.0f,
                j->coef[k] + row0 * nc, nc, ck->basis + (size_t)j->layer * hd * ck->rank,
                (int)ck->rank, 0.0f, j->rows[k] + row0 * hd, hd);
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
    for (int k = 0; k < 2 && j.coded; k++) {
        j.coef[k] = kvtc_calloc((size_t)n_coded * s.plan[k]->n_coords + 1, sizeof(float));
        j.rows[k] = kvtc_malloc_array((size_t)n_coded * hd + 1, sizeof(float));
    }
    if (!j.coded || !j.coef[0] || !j.coef[1] || !j.rows[0] || !j.rows[1])
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    if (st == KVTC_OK && j.n_coded_blocks) {
        double t0 = cli_now();
        st = kvtc_parallel_for(2 * j.n_coded_blocks, e->threads, inflate_item, &j, err);
        out->inflate = cli_now() - t0;
        t0 = cli_now();
        for (j.layer = 0; st == KVTC_OK && j.layer < s.shape.n_layer; j.layer++)
            st = kvtc_parallel_for(2 * j.n_coded_blocks, e->threads, project_item, &j, err);
        out->project = cli_now() - t0;
        for (int k = 0; k < 2; k++)
            out->project_flops += 2.0 * n_coded * (double)s.shape.n_layer * (double)hd *
                                  s.plan[k]->n_coords;
    }
    for (int k = 0; k < 2; k++) {
        kvtc_free(j.coef[k]);
        kvtc_free(j.rows[k]);
    }
    kvtc_free(j.coded);
    kvtc_stream_release(&s);
    return st;
}

static int bench_ttft(int argc, char **argv)
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
    int32_t *ids = context_ids(&e, (size_t)n + 1); /* the context, then the new token */
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
    if (!(cache = prefill_cache(&e, ids, n)))
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
    double peak = sgemm_peak_gflops(e.threads, 2048);

#define STAGE_MS(field) median_field(runs, a.repeat, sizeof runs[0], offsetof(restore_stages, field))
#define KERNEL_MS(field) \
    median_field(kernels, a.repeat, sizeof kernels[0], offsetof(kernel_times, field))
    double rec_ms = 1e3 * median(recompute, a.repeat), res_ms = 1e3 * median(restore, a.repeat);
    double whole_ms = 1e3 * median(whole, a.repeat);
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
        cli_json_f64(&j, "rope_mean_dtype", rope_ms);
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
               "projection %.1f,\n    RoPE+mean+dtype %.1f, import into the session %.1f, forward "
               "of the new token %.1f\n",
               read_ms, inflate_ms, dequant_ms, project_ms, rope_ms, import_ms, forward_ms);
        printf("  layer 0 restored after %.1f ms; inverse projection at %.1f GFLOP/s = %.0f%% of "
               "the sgemm peak (%.1f GFLOP/s)\n",
               first_ms, project_gflops, peak > 0 ? 100 * project_gflops / peak : 0, peak);
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
    env_close(&e);
    return rc;
}

/* ---- codec ---------------------------------------------------------------------------- */

static const char codec_usage[] =
    "usage: kvtc bench codec [--model PATH] [-c CALIB] [--ratio R] [--context N]\n"
    "                        [--repeat K] [--threads N] [--json]\n"
    "\n"
    "Compress and decompress throughput (MB/s of fp16 cache) of kvtc at 1 and N\n"
    "threads, against zstd -3 (libzstd) and libdeflate level 6 on the same raw fp16\n"
    "cache (N context tokens of the evaluation corpus), medians of K runs; the\n"
    "memory per token of the cache in fp16 and stored at ratios 8, 16, 32 and 64;\n"
    "and compress/decompress time against context length (prefixes of the cache).\n"
    "\n"
    "options:\n"
    "      --model PATH        GGUF model (default: SmolLM2-135M-Instruct, fetched)\n"
    "  -c, --calibration FILE  calibration (default: the model's default one)\n"
    "  -r, --ratio R           target ratio of the throughput runs (default 16)\n"
    "      --context N         context tokens (default 4096)\n"
    "      --repeat K          runs per figure (default 3)\n"
    "      --threads N         most threads (default: all CPUs)\n"
    "      --json              print the results as JSON\n"
    "  -h, --help              this help\n";

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
    row->compress_s = median(c, repeat);
    row->decompress_s = median(d, repeat);
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
    *row = (codec_row){"zstd -3", 1, median(c, repeat), median(d, repeat), row->stored};
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
    *row = (codec_row){"libdeflate -6", 1, median(c, repeat), median(d, repeat), row->stored};
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

static int bench_codec(int argc, char **argv)
{
    static const struct option longs[] = {OPTION_MODEL,  OPTION_CALIB,  OPTION_RATIO,
                                          OPTION_CONTEXT, OPTION_REPEAT, OPTION_THREADS,
                                          OPTION_JSON,   {0}};
    bench_args a = {.ratio = 16, .context = 4096, .repeat = 3, .threads = cli_default_threads()};
    bench_env e;
    int rc;
    if (!bench_begin(argc, argv, "c:r:", longs, codec_usage, &a, &e, true, &rc))
        return rc;
    int32_t *ids = context_ids(&e, a.context);
    kvtc_cache *cache = ids ? prefill_cache(&e, ids, a.context) : NULL;
    kvtc_free(ids);
    rc = CLI_FAIL;
    if (!cache) {
        env_close(&e);
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
        st = kvtc_cache_create(&cache->shape, cache->dtype, growth_contexts[i], cache->pos0,
                               &prefix, &err);
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
    double fp16_kb = 4.0 * (double)kvtc_shape_features(&cache->shape) / 1024;
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
    env_close(&e);
    return rc;
}

/* ---- prefill -------------------------------------------------------------------------- */

static const char prefill_usage[] =
    "usage: kvtc bench prefill [--model PATH] [--repeat K] [--threads N] [--json]\n"
    "\n"
    "Prefill speed of the reference engine at 512, 2048 and 4096 tokens of the\n"
    "evaluation corpus on 1 and N threads: tokens/s and achieved GFLOP/s, next to\n"
    "the peak of a 2048x2048 sgemm on this machine.\n"
    "\n"
    "options:\n"
    "      --model PATH   GGUF model (default: SmolLM2-135M-Instruct, fetched)\n"
    "      --repeat K     runs per figure, median (default 1)\n"
    "      --threads N    most threads (default: all CPUs)\n"
    "      --json         print the results as JSON\n"
    "  -h, --help         this help\n";

static const uint32_t prefill_contexts[] = {512, 2048, 4096};
#define N_PREFILL_CONTEXTS (sizeof prefill_contexts / sizeof prefill_contexts[0])

static int bench_prefill(int argc, char **argv)
{
    static const struct option longs[] = {OPTION_MODEL, OPTION_REPEAT, OPTION_THREADS,
                                          OPTION_JSON, {0}};
    bench_args a = {.repeat = 1, .threads = cli_default_threads()};
    bench_env e;
    int rc;
    if (!bench_begin(argc, argv, "", longs, prefill_usage, &a, &e, false, &rc))
        return rc;
    const uint32_t max_n = prefill_contexts[N_PREFILL_CONTEXTS - 1];
    int32_t *ids = context_ids(&e, max_n);
    uint32_t thread_counts[2] = {1, a.threads};
    size_t n_threads = a.threads > 1 ? 2 : 1;
    double seconds[2][N_PREFILL_CONTEXTS], peak[2];
    kvtc_error err;
    kvtc_status st = ids ? KVTC_OK : KVTC_E_IO;
    rc = CLI_FAIL;
    for (size_t ti = 0; ti < n_threads && st == KVTC_OK; ti++) {
        session *s = NULL;
        st = session_create(e.m, max_n, thread_counts[ti], &s, &err);
        if (st == KVTC_OK) /* warm-up */
            st = session_forward(s, ids, 64, NULL, false, &err);
        for (size_t ci = 0; ci < N_PREFILL_CONTEXTS && st == KVTC_OK; ci++) {
            double runs[MAX_REPEAT];
            for (uint32_t r = 0; r < a.repeat && st == KVTC_OK; r++) {
                session_reset(s);
                double t0 = cli_now();
                st = session_forward(s, ids, prefill_contexts[ci], NULL, false, &err);
                runs[r] = cli_now() - t0;
            }
            seconds[ti][ci] = median(runs, a.repeat);
        }
        session_free(s);
        peak[ti] = sgemm_peak_gflops(thread_counts[ti], 2048);
    }
    kvtc_free(ids);
    if (st != KVTC_OK) {
        if (st != KVTC_E_IO)
            cli_fail_err(e.model_path, &err);
        env_close(&e);
        return rc;
    }
    if (a.json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_u64(&j, "repeat", a.repeat);
        cli_json_str(&j, "openblas", openblas_get_config());
        cli_json_str(&j, "openblas_kernels", openblas_get_corename());
        kvtc_jw_key(&j.jw, "runs");
        kvtc_jw_begin_array(&j.jw);
        for (size_t ti = 0; ti < n_threads; ti++)
            for (size_t ci = 0; ci < N_PREFILL_CONTEXTS; ci++) {
                double f = forward_flops(&e.m->cfg, 0, prefill_contexts[ci]);
                kvtc_jw_begin_object(&j.jw);
                cli_json_u64(&j, "threads", thread_counts[ti]);
                cli_json_u64(&j, "tokens", prefill_contexts[ci]);
                cli_json_f64(&j, "ms", 1e3 * seconds[ti][ci]);
                cli_json_f64(&j, "tokens_per_s", prefill_contexts[ci] / seconds[ti][ci]);
                cli_json_f64(&j, "gflops", f / seconds[ti][ci] / 1e9);
                cli_json_f64(&j, "sgemm_peak_gflops", peak[ti]);
                kvtc_jw_end_object(&j.jw);
            }
        kvtc_jw_end_array(&j.jw);
        rc = cli_json_print(&j);
    } else {
        printf("prefill of the evaluation corpus, %s (median of %u)\n", e.m->cfg.name, a.repeat);
        printf("OpenBLAS: %s (kernels: %s)\n", openblas_get_config(), openblas_get_corename());
        printf("  %7s %7s %10s %10s %9s %12s %10s\n", "threads", "tokens", "ms", "tokens/s",
               "GFLOP/s", "sgemm peak", "of peak");
        for (size_t ti = 0; ti < n_threads; ti++)
            for (size_t ci = 0; ci < N_PREFILL_CONTEXTS; ci++) {
                double g = forward_flops(&e.m->cfg, 0, prefill_contexts[ci]) / seconds[ti][ci] /
                           1e9;
                printf("  %7u %7u %10.1f %10.1f %9.1f %12.1f %9.0f%%\n", thread_counts[ti],
                       prefill_contexts[ci], 1e3 * seconds[ti][ci],
                       prefill_contexts[ci] / seconds[ti][ci], g, peak[ti], 100 * g / peak[ti]);
            }
        rc = CLI_OK;
    }
    env_close(&e);
    return rc;
}

/* ---- calibration ---------------------------------------------------------------------- */

static const char calibration_usage[] =
    "usage: kvtc bench calibration [--model PATH] [--calib-chunks N] [--threads N] [--json]\n"
    "\n"
    "Calibration time against calibration tokens: runs N chunks of the calibration\n"
    "corpus through the model (the default recipe's chunk length), then fits a\n"
    "calibration of the default rank on the first N/4, N/2 and N of them, timing\n"
    "each part: prefill, covariance accumulation, eigensolver, DP error table.\n"
    "\n"
    "options:\n"
    "      --model PATH        GGUF model (default: SmolLM2-135M-Instruct, fetched)\n"
    "      --calib-chunks N    most chunks (default " CLI_STR(CALIB_DEFAULT_CHUNKS) ", the default calibration's)\n"
    "      --threads N         threads (default: all CPUs)\n"
    "      --json              print the results as JSON\n"
    "  -h, --help              this help\n";

#define N_CALIB_STEPS 3

typedef struct calib_step {
    uint32_t chunks;
    uint64_t tokens, rows;
    double prefill_s, add_s, eigen_s, table_s;
} calib_step;

/* Splits kvtc_calibrator_finish by its progress reports: an "eigen" report
 * comes as each kind's eigensolver starts, the others as work completes, so
 * the time after an "eigen" report is the eigensolver's. */
typedef struct finish_clock {
    bool armed; /* reports before finish (accumulation) are ignored */
    bool last_was_eigen;
    double last, eigen_s;
} finish_clock;

static void finish_progress(void *user, const char *stage, uint64_t done, uint64_t total)
{
    (void)done, (void)total;
    finish_clock *f = user;
    if (!f->armed)
        return;
    double now = cli_now();
    if (f->last_was_eigen)
        f->eigen_s += now - f->last;
    f->last = now;
    f->last_was_eigen = strcmp(stage, "eigen") == 0;
}

/* Calibrates on the first steps[i].chunks of `caches` for every step. */
static kvtc_status time_calibrations(const bench_env *e, uint32_t rank,
                                     kvtc_cache *const *caches, const double *prefill_s,
                                     calib_step *steps, kvtc_error *err)
{
    kvtc_model_shape shape = model_kv_shape(e->m);
    kvtc_status st = KVTC_OK;
    for (int i = 0; i < N_CALIB_STEPS && st == KVTC_OK; i++) {
        calib_step *c = &steps[i];
        finish_clock clock = {0};
        kvtc_calib_options opt;
        kvtc_calib_options_default(&opt);
        opt.rank = rank;
        opt.n_threads = e->threads;
        opt.progress = finish_progress;
        opt.progress_user = &clock;
        kvtc_calibrator *cal;
        if ((st = kvtc_calibrator_create(&shape, &opt, &cal, err)) != KVTC_OK)
            return st;
        double t0 = cli_now();
        for (uint32_t k = 0; k < c->chunks && st == KVTC_OK; k++) {
            st = kvtc_calibrator_add(cal, caches[k], err);
            c->tokens += kvtc_cache_tokens(caches[k]);
            c->prefill_s += prefill_s[k];
        }
        c->add_s = cli_now() - t0;
        c->rows = kvtc_calibrator_rows(cal, KVTC_KEY);
        kvtc_calibration *out = NULL;
        clock.armed = true;
        clock.last = t0 = cli_now();
        if (st == KVTC_OK)
            st = kvtc_calibrator_finish(cal, &out, err);
        c->eigen_s = clock.eigen_s;
        c->table_s = cli_now() - t0 - clock.eigen_s;
        kvtc_calibration_free(out);
        kvtc_calibrator_free(cal);
    }
    return st;
}

static int bench_calibration(int argc, char **argv)
{
    static const struct option longs[] = {
        OPTION_MODEL, OPTION_THREADS, OPTION_JSON,
        {"calib-chunks", required_argument, NULL, OPT_CALIB_CHUNKS}, {0}};
    bench_args a = {.threads = cli_default_threads(), .calib_chunks = CALIB_DEFAULT_CHUNKS};
    bench_env e;
    int rc;
    if (!bench_begin(argc, argv, "", longs, calibration_usage, &a, &e, false, &rc))
        return rc;
    rc = CLI_FAIL;
    kvtc_error err;
    calib_step steps[N_CALIB_STEPS] = {{0}};
    calib_recipe recipe;
    calib_recipe_default(&recipe);
    corpus_chunks chunks = {0};
    kvtc_cache **caches = NULL;
    double *prefill_s = NULL;
    kvtc_status st = corpus_make_chunks(e.tok, CORPUS_CALIBRATION, recipe.chunk_tokens,
                                        a.calib_chunks, false, &chunks, &err);
    if (st != KVTC_OK)
        goto fail;
    caches = kvtc_calloc(chunks.n_chunks, sizeof *caches);
    prefill_s = kvtc_calloc(chunks.n_chunks, sizeof *prefill_s);
    if (!caches || !prefill_s) {
        cli_fail(NULL, "out of memory");
        goto done;
    }
    for (size_t k = 0; k < chunks.n_chunks; k++) {
        double t0 = cli_now();
        if (!(caches[k] = prefill_cache(&e, chunks.chunk[k].ids, chunks.chunk[k].n)))
            goto done;
        prefill_s[k] = cli_now() - t0;
    }
    for (int i = 0; i < N_CALIB_STEPS; i++)
        steps[i].chunks = (uint32_t)(chunks.n_chunks >> (N_CALIB_STEPS - 1 - i));
    if ((st = time_calibrations(&e, recipe.opt.rank, caches, prefill_s, steps, &err)) != KVTC_OK)
        goto fail;

    if (a.json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_u64(&j, "threads", e.threads);
        cli_json_u64(&j, "rank", recipe.opt.rank);
        cli_json_u64(&j, "chunk_tokens", recipe.chunk_tokens);
        kvtc_jw_key(&j.jw, "steps");
        kvtc_jw_begin_array(&j.jw);
        for (int i = 0; i < N_CALIB_STEPS; i++) {
            kvtc_jw_begin_object(&j.jw);
            cli_json_u64(&j, "tokens", steps[i].tokens);
            cli_json_u64(&j, "rows", steps[i].rows);
            cli_json_f64(&j, "prefill_s", steps[i].prefill_s);
            cli_json_f64(&j, "accumulate_s", steps[i].add_s);
            cli_json_f64(&j, "eigen_s", steps[i].eigen_s);
            cli_json_f64(&j, "error_table_s", steps[i].table_s);
            kvtc_jw_end_object(&j.jw);
        }
        kvtc_jw_end_array(&j.jw);
        rc = cli_json_print(&j);
    } else {
        printf("calibration time against calibration tokens (chunks of %u tokens, rank %u, %u "
               "threads)\n",
               recipe.chunk_tokens, recipe.opt.rank, e.threads);
        printf("  %7s %7s %10s %13s %8s %15s %8s\n", "tokens", "rows", "prefill s",
               "accumulate s", "eigen s", "error table s", "total s");
        for (int i = 0; i < N_CALIB_STEPS; i++) {
            const calib_step *c = &steps[i];
            printf("  %7llu %7llu %10.1f %13.1f %8.1f %15.1f %8.1f\n",
                   (unsigned long long)c->tokens, (unsigned long long)c->rows, c->prefill_s,
                   c->add_s, c->eigen_s, c->table_s,
                   c->prefill_s + c->add_s + c->eigen_s + c->table_s);
        }
        printf("  (rows: key rows fitted, without sinks, window and held-out rows; error "
               "table: projecting the held-out rows and measuring each group's quantization "
               "error)\n");
        rc = CLI_OK;
    }
    goto done;
fail:
    rc = cli_fail_err(NULL, &err);
done:
    for (size_t k = 0; caches && k < chunks.n_chunks; k++)
        kvtc_cache_free(caches[k]);
    kvtc_free(caches);
    kvtc_free(prefill_s);
    corpus_chunks_free(&chunks);
    env_close(&e);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------------------- */

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} benches[] = {
    {"ttft", bench_ttft, "time to first token: restore from a .kvtc vs recompute"},
    {"codec", bench_codec, "codec throughput vs zstd and libdeflate, bytes per token"},
    {"prefill", bench_prefill, "engine prefill speed and this machine's sgemm peak"},
    {"calibration", bench_calibration, "calibration time against calibration tokens"},
};

int cmd_bench(int argc, char **argv)
{
    size_t n = sizeof benches / sizeof benches[0];
    if (argc >= 2)
        for (size_t i = 0; i < n; i++)
            if (strcmp(argv[1], benches[i].name) == 0) {
                static char name[32];
                snprintf(name, sizeof name, "bench %s", benches[i].name);
                cli_set_command(name);
                return benches[i].run(argc - 1, argv + 1);
            }
    bool help = argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
    FILE *out = help ? stdout : stderr;
    fprintf(out, "usage: kvtc bench <benchmark> [options]   (kvtc bench <benchmark> --help)\n\n"
                 "benchmarks:\n");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "  %-8s %s\n", benches[i].name, benches[i].summary);
    if (help)
        return CLI_OK;
    return argc >= 2 ? cli_usage_error("no benchmark '%s'", argv[1]) : CLI_USAGE;
}
