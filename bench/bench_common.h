/* What the benchmarks of `kvtc bench` share: their options, the model and
 * calibration they open, the contexts they run, and medians. One file per
 * benchmark (ttft.c, codec_throughput.c, prefill.c, decode.c, calibration.c), each
 * entry point taking the benchmark's own argv (argv[0] its name). */
#ifndef KVTC_BENCH_COMMON_H
#define KVTC_BENCH_COMMON_H

#include "kvtc.h"
#include "model.h"

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int bench_ttft(int argc, char **argv);
int bench_codec(int argc, char **argv);
int bench_prefill(int argc, char **argv);
int bench_decode(int argc, char **argv);
int bench_calibration(int argc, char **argv);
int bench_memory(int argc, char **argv);
int bench_serve(int argc, char **argv);

/* ---- options ------------------------------------------------------------------- */

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

#define OPTION_MODEL {"model", required_argument, NULL, OPT_MODEL}
#define OPTION_CALIB {"calibration", required_argument, NULL, 'c'}
#define OPTION_RATIO {"ratio", required_argument, NULL, 'r'}
#define OPTION_CONTEXT {"context", required_argument, NULL, OPT_CONTEXT}
#define OPTION_REPEAT {"repeat", required_argument, NULL, OPT_REPEAT}
#define OPTION_THREADS {"threads", required_argument, NULL, OPT_THREADS}
#define OPTION_JSON {"json", no_argument, NULL, OPT_JSON}
#define OPTION_CALIB_CHUNKS {"calib-chunks", required_argument, NULL, OPT_CALIB_CHUNKS}

/* ---- model, calibration, contexts ------------------------------------------------ */

typedef struct bench_env {
    char model_path[4096], calib_path[4096];
    model *m;
    tokenizer *tok;
    kvtc_calibration *cal; /* NULL unless asked for */
    uint32_t threads;
} bench_env;

/* Every benchmark starts the same way: parse its options into a (defaults
 * already set; no operands taken), then open the model (the default one,
 * fetched if missing, without --model) and, with need_cal, its calibration
 * (the default one without -c). False when the command ends here, with its
 * exit status in *rc (0 after --help; errors printed). */
bool bench_begin(int argc, char **argv, const char *shorts, const struct option *longs,
                 const char *usage, bench_args *a, bench_env *e, bool need_cal, int *rc);
void bench_env_close(bench_env *e);
/* A benchmark that failed with st: prints err (unless st is KVTC_E_IO, the
 * status of a failure already printed), closes e and returns CLI_FAIL. */
int bench_fail(bench_env *e, kvtc_status st, const kvtc_error *err);

/* The first n tokens of the evaluation corpus; NULL on failure (printed). */
int32_t *bench_context_ids(const bench_env *e, size_t n);
/* Runs ids through a fresh session and returns its cache in f16, the dtype an
 * engine keeps it in; NULL on failure (printed). */
kvtc_cache *bench_prefill_cache(const bench_env *e, const int32_t *ids, uint32_t n);

/* ---- measurements --------------------------------------------------------------- */

/* The median of the first n (at most 64) values. */
double bench_median(const double *v, size_t n);
/* 1000 x the median of a double field (at byte `offset`) of n structs of `size` bytes. */
double bench_median_ms(const void *array, size_t n, size_t size, size_t offset);
/* GFLOP/s of the best of a few square sgemms of size n on `threads` threads. */
double bench_sgemm_peak_gflops(uint32_t threads, int n);
/* GB/s read by the best of a few OpenBLAS sdot over two 256 MiB vectors on
 * `threads` threads (0 when out of memory). */
double bench_memory_bandwidth_gbs(uint32_t threads);

#endif /* KVTC_BENCH_COMMON_H */
