/* kvtc bench decode: the reference engine's decode speed against this
 * machine's memory bandwidth (a decode step reads every weight matrix once). */
#include "bench_common.h"

#include "cli.h"
#include "kvtc_internal.h"
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

static const char decode_usage[] =
    "usage: kvtc bench decode [--model MODEL] [--context N] [--threads N] [--json]\n"
    "\n"
    "Decode speed of the reference engine: after a prefill of N tokens of the\n"
    "evaluation corpus, 32 greedy single-token steps on 1 and N threads. Reports\n"
    "tokens/s (the median step), the bytes each step reads (the weights in the\n"
    "blocks the engine keeps them in, and the KV cache) per second, this\n"
    "machine's memory bandwidth (the best of a few OpenBLAS sdot over two 256 MiB\n"
    "vectors) and the peak resident memory of the process.\n"
    "\n"
    "options:\n"
    "      --model MODEL  model name or GGUF path (default: smollm2-135m)\n"
    "      --context N    tokens before the first step (default 512, at least 200)\n"
    "      --threads N    most threads (default: all CPUs)\n"
    "      --json         print the results as JSON\n"
    "  -h, --help         this help\n";

#define DECODE_STEPS 32

/* Bytes a decode step at position t reads: every weight matrix once, in the
 * blocks the engine keeps it in (weights.h), one row of the embedding, the
 * f32 norms and biases, and the keys and values of t + 1 positions. */
static double step_bytes(const model *m, uint64_t t)
{
    const model_config *c = &m->cfg;
    double q = (double)c->n_head * c->head_dim, kv = (double)c->n_kv_head * c->head_dim;
    double matrices = (double)weight_bytes(&m->output);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const model_layer *L = &m->layers[l];
        matrices += (double)(weight_bytes(&L->wqkv) + weight_bytes(&L->wo) +
                             weight_bytes(&L->w_gate_up) + weight_bytes(&L->w_down));
    }
    double embd_row = (double)weight_bytes(&m->token_embd) / c->vocab_size;
    double vectors = c->n_layer * (2.0 * c->dim + (m->layers[0].bqkv ? q + 2 * kv : 0)) + c->dim;
    return matrices + embd_row +
           sizeof(float) * (vectors + 2.0 * c->n_layer * kv * (double)(t + 1));
}

typedef struct decode_run {
    uint32_t threads;
    double step_s; /* median */
    double bytes;  /* read by the median step's position */
    double bandwidth_gbs;
} decode_run;

/* Prefills ids[0, n) on a fresh session, then times DECODE_STEPS greedy steps. */
static kvtc_status time_steps(const bench_env *e, const int32_t *ids, uint32_t n,
                              uint32_t threads, double *median_s, kvtc_error *err)
{
    uint32_t vocab = e->m->cfg.vocab_size;
    float *logits = malloc((size_t)vocab * sizeof(float));
    session *s = NULL;
    kvtc_status st = logits ? session_create(e->m, n + DECODE_STEPS, threads, &s, err)
                            : kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    if (st == KVTC_OK)
        st = session_forward(s, ids, n, logits, false, err);
    double steps[DECODE_STEPS];
    for (uint32_t i = 0; i < DECODE_STEPS && st == KVTC_OK; i++) {
        int32_t next = logits_argmax(logits, vocab);
        double t0 = cli_now();
        st = session_forward(s, &next, 1, logits, false, err);
        steps[i] = cli_now() - t0;
    }
    if (st == KVTC_OK)
        *median_s = bench_median(steps, DECODE_STEPS);
    session_free(s);
    free(logits);
    return st;
}

int bench_decode(int argc, char **argv)
{
    static const struct option longs[] = {OPTION_MODEL, OPTION_CONTEXT, OPTION_THREADS,
                                          OPTION_JSON, {0}};
    bench_args a = {.context = 512, .threads = cli_default_threads()};
    bench_env e;
    int rc;
    if (!bench_begin(argc, argv, "", longs, decode_usage, &a, &e, false, &rc))
        return rc;
    if (a.context + DECODE_STEPS > e.m->cfg.context_length) {
        cli_usage_error("--context %u: the model holds %u tokens, %d of them for the steps",
                        a.context, e.m->cfg.context_length, DECODE_STEPS);
        bench_env_close(&e);
        return CLI_USAGE;
    }
    int32_t *ids = bench_context_ids(&e, a.context);
    decode_run runs[2] = {{.threads = 1}, {.threads = a.threads}};
    size_t n_runs = a.threads > 1 ? 2 : 1;
    kvtc_error err;
    kvtc_status st = ids ? KVTC_OK : KVTC_E_IO;
    for (size_t i = 0; i < n_runs && st == KVTC_OK; i++) {
        st = time_steps(&e, ids, a.context, runs[i].threads, &runs[i].step_s, &err);
        runs[i].bytes = step_bytes(e.m, a.context + DECODE_STEPS / 2);
        runs[i].bandwidth_gbs = bench_memory_bandwidth_gbs(runs[i].threads);
    }
    kvtc_free(ids);
    if (st != KVTC_OK)
        return bench_fail(&e, st, &err);
    struct rusage ru;
    double peak_mb = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss / 1024.0 : 0;
    if (a.json) {
        cli_json j;
        cli_json_begin(&j);
        cli_json_str(&j, "model", e.m->cfg.name);
        cli_json_u64(&j, "context", a.context);
        cli_json_u64(&j, "steps", DECODE_STEPS);
        cli_json_f64(&j, "peak_rss_mb", peak_mb);
        kvtc_jw_key(&j.jw, "runs");
        kvtc_jw_begin_array(&j.jw);
        for (size_t i = 0; i < n_runs; i++) {
            kvtc_jw_begin_object(&j.jw);
            cli_json_u64(&j, "threads", runs[i].threads);
            cli_json_f64(&j, "ms_per_token", 1e3 * runs[i].step_s);
            cli_json_f64(&j, "tokens_per_s", 1 / runs[i].step_s);
            cli_json_f64(&j, "bytes_per_token", runs[i].bytes);
            cli_json_f64(&j, "gb_per_s", runs[i].bytes / runs[i].step_s / 1e9);
            cli_json_f64(&j, "memory_bandwidth_gb_per_s", runs[i].bandwidth_gbs);
            kvtc_jw_end_object(&j.jw);
        }
        kvtc_jw_end_array(&j.jw);
        rc = cli_json_print(&j);
    } else {
        printf("decode after %u tokens of the evaluation corpus, %s (median of %d steps)\n",
               a.context, e.m->cfg.name, DECODE_STEPS);
        printf("  %7s %10s %10s %12s %8s %12s %9s\n", "threads", "ms/token", "tokens/s",
               "MB/token", "GB/s", "memory GB/s", "of it");
        for (size_t i = 0; i < n_runs; i++) {
            double gbs = runs[i].bytes / runs[i].step_s / 1e9;
            printf("  %7u %10.1f %10.2f %12.1f %8.2f %12.2f %8.0f%%\n", runs[i].threads,
                   1e3 * runs[i].step_s, 1 / runs[i].step_s, runs[i].bytes / 1e6, gbs,
                   runs[i].bandwidth_gbs, 100 * gbs / runs[i].bandwidth_gbs);
        }
        printf("peak resident memory: %.0f MB\n", peak_mb);
        rc = CLI_OK;
    }
    bench_env_close(&e);
    return rc;
}
