/* The error contract (docs/RELIABILITY.md) on caches with outlier channels
 * and extreme finite values: whatever goes in comes back within the
 * documented bound, or bit-exact, or is refused with a clear status; never
 * saturated. For random caches of every dtype with injected outliers:
 *   - sinks, window and escaped tokens come back bit-exact;
 *   - a token is escaped exactly when a coefficient of a kept group exceeds
 *     what an fp16 shift and scale hold (|d| > 65504 or not finite);
 *   - every other coefficient is restored within its group's quantization
 *     bound (half a step for the integer types, fp8's rounding), computed here
 *     from the true coefficients, independently of the encoder;
 *   - every restored value is finite; non-finite input is refused. */
#include "codec.h"
#include "testutil.h"
#include "transform.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kvtc_model_shape SHAPE = {3, 2, 8, KVTC_ROPE_NEOX, 8, 10000.0, 1.0};
enum { SINKS = 2, WINDOW = 4, TOKENS = 90, TRIALS = 60 };

/* The most a group's restored coefficients may differ from the true ones x
 * (n of them) under `type`: the encoder's step, from its documented rule. */
static double group_bound(kvtc_qtype type, const float *x, uint32_t n)
{
    double lo = x[0], hi = x[0];
    for (uint32_t i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    double amax = fmax(fabs(lo), fabs(hi));
    double fp16_rel = 1.0 / 1024; /* an fp16 shift or scale is within 2^-11, doubled */
    /* lm: the nearest level of a symmetric set is never farther than the
     * value's magnitude or the smallest level, and the refitted scale times
     * any level is at most the largest magnitude of the group. */
    if (type >= KVTC_Q_LM1)
        return amax * (1 + 2 * fp16_rel) + 1e-30;
    if (type == KVTC_Q_FP8) {
        double half_range = (hi - lo) / 2 + amax * fp16_rel;
        /* e4m3 keeps 3 mantissa bits: relative rounding 2^-4, plus its subnormal step */
        return half_range / 16 + half_range / 448 / 8 + amax * fp16_rel + 1e-30;
    }
    double levels = (double)((1u << kvtc_qtype_bits(type)) - 1);
    double step = (hi - lo + amax * fp16_rel) / levels * (1 + fp16_rel);
    return step / 2 + amax * fp16_rel + 1e-6 * amax + 1e-30;
}

static bool escaped_by_contract(const kvtc_plan *plan, const float *row)
{
    const kvtc_group *g = kvtc_plan_groups(plan);
    for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++)
        for (uint32_t j = 0; g[i].type != KVTC_Q_NONE && j < g[i].size; j++)
            if (!(fabsf(row[g[i].start + j]) <= 65504.0f))
                return true;
    return false;
}

/* Sets feature f of token t of one kind (layer-major feature index). */
static void set_feature(kvtc_cache *c, kvtc_kind kind, uint32_t t, uint32_t f, float v)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint32_t l = f / (s->n_kv_head * s->head_dim), h = f / s->head_dim % s->n_kv_head,
             d = f % s->head_dim;
    size_t elem = kvtc_dtype_size(kvtc_cache_dtype(c));
    uint8_t *p = (uint8_t *)kvtc_cache_data(c, kind, l) +
                 (((size_t)h * kvtc_cache_tokens(c) + t) * s->head_dim + d) * elem;
    kvtc_from_f32(kvtc_cache_dtype(c), &v, p, 1);
}

static float get_feature(const kvtc_cache *c, kvtc_kind kind, uint32_t t, uint32_t f)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint32_t l = f / (s->n_kv_head * s->head_dim), h = f / s->head_dim % s->n_kv_head,
             d = f % s->head_dim;
    size_t elem = kvtc_dtype_size(kvtc_cache_dtype(c));
    const uint8_t *p = (const uint8_t *)kvtc_cache_data_const(c, kind, l) +
                       (((size_t)h * kvtc_cache_tokens(c) + t) * s->head_dim + d) * elem;
    float v;
    kvtc_to_f32(kvtc_cache_dtype(c), p, &v, 1);
    return v;
}

/* Injects outliers into some coded tokens: channels scaled by 1e2..1e4, and
 * single values as large as the dtype holds. */
static void inject(kvtc_cache *c, test_rng *r)
{
    static const float huge_f32[] = {1e6f, -3e9f, 1e20f, -1e30f, 3e38f};
    static const float huge_f16[] = {65504.0f, -65504.0f, 6e4f, 3e4f};
    uint32_t p = (uint32_t)kvtc_shape_features(kvtc_cache_shape(c));
    uint32_t n_out = 1 + rng_below(r, 6);
    for (uint32_t i = 0; i < n_out; i++) {
        kvtc_kind kind = (kvtc_kind)rng_below(r, 2);
        uint32_t t = SINKS + rng_below(r, TOKENS - SINKS - WINDOW);
        uint32_t f = rng_below(r, p);
        if (rng_below(r, 2)) { /* an outlier channel of this token */
            float scale = (float)pow(10.0, 2 + 2 * rng_uniform(r));
            float v = get_feature(c, kind, t, f) * scale;
            set_feature(c, kind, t, f, kvtc_cache_dtype(c) == KVTC_F16 ? fmaxf(fminf(v, 65504), -65504) : v);
        } else if (kvtc_cache_dtype(c) == KVTC_F16) {
            set_feature(c, kind, t, f, huge_f16[rng_below(r, 4)]);
        } else {
            set_feature(c, kind, t, f, huge_f32[rng_below(r, 5)]);
        }
    }
}

/* Token t of one kind is bit for bit the same in a and b. */
static bool token_kind_equal(const kvtc_cache *a, const kvtc_cache *b, kvtc_kind kind, uint32_t t)
{
    const kvtc_model_shape *s = kvtc_cache_shape(a);
    size_t row = s->head_dim * kvtc_dtype_size(kvtc_cache_dtype(a));
    for (uint32_t l = 0; l < s->n_layer; l++)
        for (uint32_t h = 0; h < s->n_kv_head; h++) {
            size_t off = ((size_t)h * kvtc_cache_tokens(a) + t) * row;
            if (memcmp((const uint8_t *)kvtc_cache_data_const(a, kind, l) + off,
                       (const uint8_t *)kvtc_cache_data_const(b, kind, l) + off, row) != 0)
                return false;
        }
    return true;
}

static void check_trial(const kvtc_calibration *cal, kvtc_dtype dtype, double ratio,
                        uint64_t seed, uint32_t *escapes_seen)
{
    test_rng r;
    rng_seed(&r, seed);
    kvtc_cache *c = make_random_cache(&SHAPE, dtype, TOKENS, 3, 6, seed);
    if (!CHECK(c))
        return;
    inject(c, &r);
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.k_ratio = opt.v_ratio = ratio;
    opt.block_tokens = 32;
    void *stream = NULL;
    size_t len = 0;
    kvtc_error err;
    kvtc_cache *back = NULL;
    if (!CHECK_OK(kvtc_compress(cal, c, &opt, &stream, &len, &err), &err) ||
        !CHECK_OK(kvtc_decompress(cal, stream, len, NULL, &back, &err), &err))
        goto done;
    uint32_t p = (uint32_t)kvtc_shape_features(&SHAPE);
    uint32_t n_coded = TOKENS - SINKS - WINDOW;
    float *rows = malloc((size_t)n_coded * p * sizeof *rows);
    float *truth = malloc((size_t)n_coded * p * sizeof *truth);
    for (int k = 0; k < 2 && rows && truth; k++) {
        kvtc_kind kind = (kvtc_kind)k;
        kvtc_plan *plan = NULL;
        float *got = NULL;
        uint32_t n_got = 0, nc = 0;
        if (!CHECK_OK(kvtc_stream_plan(stream, len, kind, &plan, &err), &err) ||
            !CHECK_OK(kvtc_stream_coefficients(cal, stream, len, kind, &got, &n_got, &nc, &err),
                      &err)) {
            kvtc_plan_free(plan);
            continue;
        }
        CHECK_EQ(n_got, n_coded);
        kvtc_cache_gather_rows(c, kind, SINKS, n_coded, rows);
        kvtc_transform_project(cal, kind, rows, n_coded, nc, truth, NULL);
        const kvtc_group *g = kvtc_plan_groups(plan);
        for (uint32_t t = 0; t < n_coded; t++) {
            const float *d = truth + (size_t)t * nc, *dh = got + (size_t)t * nc;
            if (escaped_by_contract(plan, d)) {
                ++*escapes_seen;
                CHECK_MSG(token_kind_equal(c, back, kind, SINKS + t),
                          "seed %llu: escaped %s token %u not bit-exact",
                          (unsigned long long)seed, kvtc_kind_name(kind), SINKS + t);
                continue;
            }
            for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++) {
                if (g[i].type == KVTC_Q_NONE)
                    continue;
                double bound = group_bound(g[i].type, d + g[i].start, g[i].size), worst = 0;
                for (uint32_t j = 0; j < g[i].size; j++)
                    worst = fmax(worst, fabs((double)dh[g[i].start + j] - d[g[i].start + j]));
                CHECK_MSG(worst <= bound,
                          "seed %llu %s token %u group %u (%s x%u): error %.3g over bound %.3g",
                          (unsigned long long)seed, kvtc_kind_name(kind), SINKS + t, i,
                          kvtc_qtype_name(g[i].type), g[i].size, worst, bound);
            }
        }
        /* every restored value is finite */
        for (uint32_t t = 0; t < TOKENS; t++)
            for (uint32_t f = 0; f < p; f++)
                if (!isfinite(get_feature(back, kind, t, f))) {
                    CHECK_MSG(false, "seed %llu: %s token %u feature %u restored as %g",
                              (unsigned long long)seed, kvtc_kind_name(kind), t, f,
                              get_feature(back, kind, t, f));
                    t = TOKENS;
                    break;
                }
        kvtc_free(got);
        kvtc_plan_free(plan);
    }
    CHECK(test_tokens_equal(c, 0, back, 0, SINKS));
    CHECK(test_tokens_equal(c, TOKENS - WINDOW, back, TOKENS - WINDOW, WINDOW));
    free(rows);
    free(truth);
done:
    kvtc_buffer_free(stream);
    kvtc_cache_free(back);
    kvtc_cache_free(c);
}

/* Values the codec cannot restore at all are refused, with no output. */
static void check_refusals(const kvtc_calibration *cal)
{
    static const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kvtc_cache *c = make_random_cache(&SHAPE, KVTC_F32, TOKENS, 0, 6, 99);
        if (!CHECK(c))
            return;
        set_feature(c, KVTC_VALUE, 40, 7, bad[i]);
        void *stream = (void *)1;
        size_t len = 1;
        kvtc_error err;
        CHECK_STATUS(kvtc_compress(cal, c, NULL, &stream, &len, &err), KVTC_E_NUMERIC, &err);
        CHECK(stream == NULL && len == 0);
        CHECK(strstr(err.message, "token 40") != NULL);
        kvtc_cache_free(c);
    }
}

/* One token with a huge value in one calibration cache is left out of the
 * statistics: the calibration it gives is the one of the clean caches. */
static void check_poisoned_calibration(const kvtc_calib_options *copt)
{
    static const float poison[] = {1e20f, 1e30f, 3e38f};
    kvtc_error err;
    for (size_t i = 0; i < sizeof poison / sizeof poison[0]; i++) {
        kvtc_calibrator *clean, *dirty;
        if (!CHECK_OK(kvtc_calibrator_create(&SHAPE, copt, &clean, &err), &err) ||
            !CHECK_OK(kvtc_calibrator_create(&SHAPE, copt, &dirty, &err), &err))
            return;
        for (uint64_t seed = 1; seed <= 4; seed++) {
            kvtc_cache *c = make_random_cache(&SHAPE, KVTC_F32, 200, 0, 6, seed);
            if (!CHECK(c))
                continue;
            CHECK_OK(kvtc_calibrator_add(clean, c, &err), &err);
            if (seed == 2)
                set_feature(c, KVTC_KEY, 50, 11, poison[i]);
            CHECK_OK(kvtc_calibrator_add(dirty, c, &err), &err);
            kvtc_cache_free(c);
        }
        CHECK_EQ(kvtc_calibrator_excluded(clean, KVTC_KEY), 0);
        CHECK_EQ(kvtc_calibrator_excluded(dirty, KVTC_KEY), 1);
        CHECK_EQ(kvtc_calibrator_excluded(dirty, KVTC_VALUE), 0);
        kvtc_calibration *a = NULL, *b = NULL;
        CHECK_OK(kvtc_calibrator_finish(clean, &a, &err), &err);
        CHECK_OK(kvtc_calibrator_finish(dirty, &b, &err), &err);
        /* the basis is not poisoned: the top variance matches the clean one */
        if (a && b)
            CHECK_NEAR(kvtc_calibration_eigenvalues(b, KVTC_KEY)[0],
                       kvtc_calibration_eigenvalues(a, KVTC_KEY)[0],
                       0.05 * kvtc_calibration_eigenvalues(a, KVTC_KEY)[0]);
        kvtc_calibration_free(a);
        kvtc_calibration_free(b);
        kvtc_calibrator_free(clean);
        kvtc_calibrator_free(dirty);
    }
}

int main(void)
{
    kvtc_calib_options copt;
    kvtc_calib_options_default(&copt);
    copt.sinks = SINKS;
    copt.window = WINDOW;
    copt.heldout_every = 3;
    kvtc_calibration *cal = make_random_calibration(&SHAPE, &copt, 6, 200, 6, 1);
    if (!CHECK(cal))
        return test_summary("test_extreme_values");
    static const kvtc_dtype dtypes[] = {KVTC_F32, KVTC_F16, KVTC_BF16};
    static const double ratios[] = {2, 4, 8, 16};
    uint32_t escapes = 0;
    for (uint64_t trial = 0; trial < TRIALS; trial++)
        check_trial(cal, dtypes[trial % 3], ratios[trial / 3 % 4], 1000 + trial, &escapes);
    printf("test_extreme_values: %d trials, %u escaped tokens checked bit-exact\n", TRIALS,
           escapes);
    CHECK(escapes > 0); /* the injected values did reach the escape path */
    check_refusals(cal);
    check_poisoned_calibration(&copt);
    kvtc_calibration_free(cal);
    return test_summary("test_extreme_values");
}
