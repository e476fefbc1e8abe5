/* What the benchmarks share (bench_common.h): options, the model and its
 * calibration, contexts from the evaluation corpus, medians, the sgemm peak. */
#include "bench_common.h"

#include "cli.h"
#include "corpus.h"
#include "default_calib.h"
#include "default_model.h"
#include "kvtc_internal.h"
#include "session.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void bench_env_close(bench_env *e)
{
    kvtc_calibration_free(e->cal);
    tokenizer_free(e->tok);
    model_free(e->m);
    memset(e, 0, sizeof *e);
}

/* Opens the model (a->model_path as model_resolve reads it: the default one
 * when NULL, a named one fetched if missing) and, with need_cal, its
 * calibration (the default one when -c is not given). Prints the error and
 * returns CLI_FAIL on failure. */
static int env_open(bench_env *e, const bench_args *a, bool need_cal)
{
    memset(e, 0, sizeof *e);
    e->threads = a->threads;
    kvtc_error err;
    if (model_resolve(a->model_path, e->model_path, sizeof e->model_path, true, &err) != KVTC_OK)
        return cli_fail(NULL, "%s", err.message);
    if (model_open(e->model_path, &e->m, &e->tok, &err) != KVTC_OK)
        return cli_fail_err(e->model_path, &err);
    if (!e->tok) {
        bench_env_close(e);
        return cli_fail(a->model_path, "the model carries no tokenizer; benchmarks need a GGUF "
                                       "model with one");
    }
    if (!need_cal)
        return CLI_OK;
    if (a->calibration)
        snprintf(e->calib_path, sizeof e->calib_path, "%s", a->calibration);
    else if (default_calibration(e->model_path, e->threads, e->calib_path, sizeof e->calib_path,
                                 &err) != KVTC_OK) {
        bench_env_close(e);
        return cli_fail_err(NULL, &err);
    }
    if (!(e->cal = cli_read_calibration(e->calib_path))) {
        bench_env_close(e);
        return CLI_FAIL;
    }
    return CLI_OK;
}

bool bench_begin(int argc, char **argv, const char *shorts, const struct option *longs,
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

int bench_fail(bench_env *e, kvtc_status st, const kvtc_error *err)
{
    if (st != KVTC_E_IO)
        cli_fail_err(e->model_path, err);
    bench_env_close(e);
    return CLI_FAIL;
}

int32_t *bench_context_ids(const bench_env *e, size_t n)
{
    int32_t *ids;
    kvtc_error err;
    if (corpus_context(e->tok, CORPUS_EVALUATION, n, false, &ids, &err) != KVTC_OK) {
        cli_fail_err(NULL, &err);
        return NULL;
    }
    return ids;
}

kvtc_cache *bench_prefill_cache(const bench_env *e, const int32_t *ids, uint32_t n)
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

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(const double *v, size_t n)
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

double bench_median_ms(const void *array, size_t n, size_t size, size_t offset)
{
    double v[64];
    if (n > 64)
        n = 64;
    for (size_t i = 0; i < n; i++)
        memcpy(&v[i], (const char *)array + i * size + offset, sizeof v[i]);
    return 1e3 * bench_median(v, n);
}

double bench_sgemm_peak_gflops(uint32_t threads, int n)
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

double bench_memory_bandwidth_gbs(uint32_t threads)
{
    const size_t n = (size_t)64 << 20; /* floats: 256 MiB per vector */
    float *x = kvtc_malloc_array(n, sizeof(float)), *y = kvtc_malloc_array(n, sizeof(float));
    double best = 0;
    if (x && y) {
        for (size_t i = 0; i < n; i++)
            x[i] = y[i] = (float)(i % 7);
        openblas_set_num_threads((int)threads);
        volatile float sink = 0;
        for (int rep = 0; rep < 4; rep++) {
            double t0 = cli_now();
            sink += cblas_sdot((int)n, x, 1, y, 1);
            double s = cli_now() - t0;
            if (rep > 0 && 2.0 * n * sizeof(float) / s / 1e9 > best)
                best = 2.0 * n * sizeof(float) / s / 1e9;
        }
        (void)sink;
    }
    kvtc_free(x);
    kvtc_free(y);
    return best;
}
