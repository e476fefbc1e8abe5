/* kvtc bench prefill: the reference engine's prefill speed against this
 * machine's sgemm peak. */
#include "bench_common.h"

#include "cli.h"
#include "kvtc_internal.h"
#include "session.h"

#include <cblas.h>
#include <stdio.h>

static const char prefill_usage[] =
    "usage: kvtc bench prefill [--model MODEL] [--context N] [--repeat K] [--threads N]\n"
    "                          [--json]\n"
    "\n"
    "Prefill speed of the reference engine at 512, 2048 and 4096 tokens of the\n"
    "evaluation corpus on 1 and N threads: tokens/s and achieved GFLOP/s, next to\n"
    "the peak of a 2048x2048 sgemm on this machine.\n"
    "\n"
    "options:\n"
    "      --model MODEL  model name or GGUF path (default: smollm2-135m)\n"
    "      --context N    only N tokens (at least 200) instead of the three lengths\n"
    "      --repeat K     runs per figure, median (default 1)\n"
    "      --threads N    most threads (default: all CPUs)\n"
    "      --json         print the results as JSON\n"
    "  -h, --help         this help\n";

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

static const uint32_t default_contexts[] = {512, 2048, 4096};
#define N_PREFILL_CONTEXTS (sizeof default_contexts / sizeof default_contexts[0])

int bench_prefill(int argc, char **argv)
{
    static const struct option longs[] = {OPTION_MODEL, OPTION_CONTEXT, OPTION_REPEAT,
                                          OPTION_THREADS, OPTION_JSON, {0}};
    bench_args a = {.repeat = 1, .threads = cli_default_threads()};
    bench_env e;
    int rc;
    if (!bench_begin(argc, argv, "", longs, prefill_usage, &a, &e, false, &rc))
        return rc;
    const uint32_t *prefill_contexts = a.context ? &a.context : default_contexts;
    const size_t n_contexts = a.context ? 1 : N_PREFILL_CONTEXTS;
    const uint32_t max_n = prefill_contexts[n_contexts - 1];
    if (max_n > e.m->cfg.context_length) {
        cli_usage_error("--context %u: the model holds %u tokens", max_n, e.m->cfg.context_length);
        bench_env_close(&e);
        return CLI_USAGE;
    }
    int32_t *ids = bench_context_ids(&e, max_n);
    uint32_t thread_counts[2] = {1, a.threads};
    size_t n_threads = a.threads > 1 ? 2 : 1;
    double seconds[2][N_PREFILL_CONTEXTS], peak[2];
    kvtc_error err;
    kvtc_status st = ids ? KVTC_OK : KVTC_E_IO;
    for (size_t ti = 0; ti < n_threads && st == KVTC_OK; ti++) {
        session *s = NULL;
        st = session_create(e.m, max_n, thread_counts[ti], &s, &err);
        if (st == KVTC_OK) /* warm-up */
            st = session_forward(s, ids, 64, NULL, false, &err);
        for (size_t ci = 0; ci < n_contexts && st == KVTC_OK; ci++) {
            double runs[MAX_REPEAT];
            for (uint32_t r = 0; r < a.repeat && st == KVTC_OK; r++) {
                session_reset(s);
                double t0 = cli_now();
                st = session_forward(s, ids, prefill_contexts[ci], NULL, false, &err);
                runs[r] = cli_now() - t0;
            }
            seconds[ti][ci] = bench_median(runs, a.repeat);
        }
        session_free(s);
        peak[ti] = bench_sgemm_peak_gflops(thread_counts[ti], 2048);
    }
    kvtc_free(ids);
    if (st != KVTC_OK)
        return bench_fail(&e, st, &err);
    if (a.json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_u64(&j, "repeat", a.repeat);
        cli_json_str(&j, "openblas", openblas_get_config());
        cli_json_str(&j, "openblas_kernels", openblas_get_corename());
        kvtc_jw_key(&j.jw, "runs");
        kvtc_jw_begin_array(&j.jw);
        for (size_t ti = 0; ti < n_threads; ti++)
            for (size_t ci = 0; ci < n_contexts; ci++) {
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
            for (size_t ci = 0; ci < n_contexts; ci++) {
                double g = forward_flops(&e.m->cfg, 0, prefill_contexts[ci]) / seconds[ti][ci] /
                           1e9;
                printf("  %7u %7u %10.1f %10.1f %9.1f %12.1f %9.0f%%\n", thread_counts[ti],
                       prefill_contexts[ci], 1e3 * seconds[ti][ci],
                       prefill_contexts[ci] / seconds[ti][ci], g, peak[ti], 100 * g / peak[ti]);
            }
        rc = CLI_OK;
    }
    bench_env_close(&e);
    return rc;
}
