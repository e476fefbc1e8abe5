/* kvtc bench calibration: calibration time against calibration tokens, split
 * into prefill, covariance accumulation, eigensolver and error table. */
#include "bench_common.h"

#include "cli.h"
#include "corpus.h"
#include "default_calib.h"
#include "kvtc_internal.h"

#include <stdio.h>
#include <string.h>

static const char calibration_usage[] =
    "usage: kvtc bench calibration [--model MODEL] [--calib-chunks N] [--threads N] [--json]\n"
    "\n"
    "Calibration time against calibration tokens: runs N chunks of the calibration\n"
    "corpus through the model (the default recipe's chunk length), then fits a\n"
    "calibration of the default rank on the first N/4, N/2 and N of them, timing\n"
    "each part: prefill, covariance accumulation, eigensolver, DP error table.\n"
    "\n"
    "options:\n"
    "      --model MODEL       model name or GGUF path (default: smollm2-135m)\n"
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

int bench_calibration(int argc, char **argv)
{
    static const struct option longs[] = {
        OPTION_MODEL, OPTION_THREADS, OPTION_JSON,
        OPTION_CALIB_CHUNKS, {0}};
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
        if (!(caches[k] = bench_prefill_cache(&e, chunks.chunk[k].ids, chunks.chunk[k].n)))
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
    bench_env_close(&e);
    return rc;
}
