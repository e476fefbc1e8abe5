/* Helpers shared by the codec tests (test_codec_*.c, test_determinism.c,
 * test_golden.c): a calibration fitted with the public calibrator on random
 * low-rank caches, and reconstruction error (cache comparisons are in
 * testutil.h). */
#ifndef KVTC_CODEC_COMMON_H
#define KVTC_CODEC_COMMON_H

#include "kvtc_internal.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2 layers x 2 kv heads x 16 dims = 64 features, NeoX RoPE on 8 of 16 dims. */
static inline kvtc_model_shape codec_test_shape(void)
{
    kvtc_model_shape s = {2, 2, 16, KVTC_ROPE_NEOX, 8, 10000.0, 1.0};
    return s;
}

#define CODEC_TEST_LOW_RANK 12u

/* Fits a calibration on `n_caches` random caches of `tokens` tokens (seeds
 * seed, seed+1, ...). NULL on failure (printed). */
static inline kvtc_calibration *codec_test_calibration(const kvtc_model_shape *shape,
                                                       uint32_t sinks, uint32_t window,
                                                       uint64_t seed, uint32_t n_caches,
                                                       uint32_t tokens)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = sinks;
    opt.window = window;
    return make_random_calibration(shape, &opt, n_caches, tokens, CODEC_TEST_LOW_RANK, seed);
}

/* The same calibration as a version 1 .kvtcal (saved in version 1, loaded
 * back): its error table lacks the lm types, so its plans and streams are
 * those of a library before them. NULL on failure (printed). */
static inline kvtc_calibration *codec_test_as_v1(const kvtc_calibration *cal)
{
    kvtc_calibration copy = *cal, *back = NULL;
    copy.file_version = 1;
    void *buf = NULL;
    size_t len = 0;
    kvtc_error err;
    if (kvtc_calibration_save(&copy, &buf, &len, &err) != KVTC_OK ||
        kvtc_calibration_load(buf, len, &back, &err) != KVTC_OK)
        fprintf(stderr, "version 1 calibration: %s\n", err.message);
    kvtc_buffer_free(buf);
    return back;
}

/* Whether a stream's plans use an lm type (and so need format version 2). */
static inline bool codec_test_uses_lm(const void *data, size_t len)
{
    bool lm = false;
    for (int k = 0; k < 2; k++) {
        kvtc_plan *plan = NULL;
        kvtc_error err;
        if (kvtc_stream_plan(data, len, (kvtc_kind)k, &plan, &err) != KVTC_OK)
            continue;
        for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++)
            lm |= kvtc_plan_groups(plan)[i].type >= KVTC_Q_LM1;
        kvtc_plan_free(plan);
    }
    return lm;
}

/* Relative squared error of tokens [t0, t0+n) of `got` (a decoded cache whose
 * token 0 is ref's token `offset`) against ref, over both kinds: sum of squared
 * differences over the energy of ref's rows around their mean. */
static inline double codec_rel_error(const kvtc_cache *ref, const kvtc_cache *got,
                                     uint32_t offset, uint32_t t0, uint32_t n)
{
    size_t p = (size_t)kvtc_shape_features(&ref->shape);
    float *x = malloc((size_t)n * p * sizeof *x), *y = malloc((size_t)n * p * sizeof *y);
    double *mean = calloc(p, sizeof *mean);
    double diff = 0, energy = 0;
    if (!x || !y || !mean || n == 0) {
        free(x);
        free(y);
        free(mean);
        return n == 0 ? 0.0 : 1e30;
    }
    for (int k = 0; k < 2; k++) {
        kvtc_cache_gather_rows(ref, (kvtc_kind)k, offset + t0, n, x);
        kvtc_cache_gather_rows(got, (kvtc_kind)k, t0, n, y);
        memset(mean, 0, p * sizeof *mean);
        for (size_t i = 0; i < (size_t)n * p; i++)
            mean[i % p] += x[i] / (double)n;
        for (size_t i = 0; i < (size_t)n * p; i++) {
            double d = (double)x[i] - y[i], c = (double)x[i] - mean[i % p];
            diff += d * d;
            energy += c * c;
        }
    }
    free(x);
    free(y);
    free(mean);
    return energy > 0 ? diff / energy : diff;
}

#endif /* KVTC_CODEC_COMMON_H */
