/* The default calibration of a model: built on first use by running the model
 * over the calibration corpus (corpus.h), then cached next to the model file
 * (or in $KVTC_CACHE_DIR / ~/.cache/kvtc when that folder is not writable).
 *
 * The cached file is named "<model file>.<key>.kvtcal", where key is a hash of
 * the model file's identity (its size and its first and last 4 MiB) and of the
 * recipe below, so another model, or a changed recipe or library version,
 * never picks up a stale calibration. */
#ifndef KVTC_TOOLS_DEFAULT_CALIB_H
#define KVTC_TOOLS_DEFAULT_CALIB_H

#include "kvtc.h"
#include "model.h"
#include "tokenizer.h"

#include <stddef.h>
#include <stdint.h>

/* The default recipe: 64 chunks of 1024 tokens (56K fitted rows per kind) and
 * rank 2048. Measured on SmolLM2-135M (`kvtc calibrate --corpus`, then
 * `kvtc eval --report` on 2048-token evaluation contexts): rank 1024 leaves
 * 5.1% (keys) and 8.4% (values) of the evaluation caches' energy outside the
 * basis, and ratios 8 and 16 were both stuck at that floor; rank 2048 leaves
 * 1.5% and 2.6%, and ratio 16 keeps ~1536 coordinates. Twice the text (130
 * chunks) or 2048-token chunks left the floor unchanged. The build takes ~3 min
 * on 2 cores with OpenBLAS's AVX-512 kernels (prefill 2/3 of it, the two
 * 5760 x 5760 eigensolves and the error table 30 s); the file is ~95 MB. */
#define CALIB_DEFAULT_CHUNK_TOKENS 1024
#define CALIB_DEFAULT_CHUNKS 64
#define CALIB_DEFAULT_RANK 2048

/* The recipe: chunks of calibration text (prose and code alternating), each
 * run through the model from position 0, and the basis rank kept per kind. */
typedef struct calib_recipe {
    uint32_t chunk_tokens; /* tokens per chunk, BOS included */
    uint32_t n_chunks;
    /* rank, sinks, window, threads (also the prefill's) and progress (stages
     * "prefill", then the calibrator's) */
    kvtc_calib_options opt;
} calib_recipe;

/* What a default build uses. */
void calib_recipe_default(calib_recipe *r);

/* Where the time of a calibration went. */
typedef struct calib_stats {
    uint64_t chunks;            /* chunks run (fewer than asked when the corpus ends) */
    uint64_t tokens;            /* tokens run through the model */
    uint64_t rows[2];           /* rows the calibrator fitted per kind (K, V) */
    uint64_t excluded[2];       /* tokens left out for their extreme energy, per kind */
    double prefill_s;           /* running the model and exporting caches */
    double add_s;               /* kvtc_calibrator_add (covariance accumulation) */
    double finish_s;            /* kvtc_calibrator_finish (eigen, error table) */
} calib_stats;

/* Calibrates `m` on the recipe's chunks of the calibration corpus. stats may
 * be NULL. */
kvtc_status calibrate_on_corpus(const model *m, const tokenizer *tok, const calib_recipe *r,
                                kvtc_calibration **out, calib_stats *stats, kvtc_error *err);

/* Writes the path of the model's default calibration into path_out, building
 * and caching it first when it does not exist yet (under a lock, so two
 * processes never build it at once; written atomically). Says on stderr when
 * it builds, with a progress bar when stderr is a terminal. n_threads 0 = 1. */
kvtc_status default_calibration(const char *model_path, uint32_t n_threads, char *path_out,
                                size_t cap, kvtc_error *err);

#endif /* KVTC_TOOLS_DEFAULT_CALIB_H */
