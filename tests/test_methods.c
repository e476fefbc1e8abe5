/* The accuracy harness's methods on small synthetic caches: each stays within
 * its quantizer's error bound, reports exactly the bytes its format stores,
 * leaves sinks and window bit-exact; exact changes nothing; h2o keeps the
 * top-scored tokens of each head and the positions of everything it keeps;
 * the attention it ranks by matches a plain reference forward pass. */
#include "methods.h"
#include "model.h"
#include "session.h"
#include "testutil.h"

#include "kvtc_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SINKS 4u
#define WINDOW 16u
#define TOKENS 150u /* 130 treated: not a multiple of KIVI's group, so it has a tail */

static const kvtc_model_shape shape = {
    .n_layer = 2, .n_kv_head = 2, .head_dim = 64, .rope_style = KVTC_ROPE_INTERLEAVED,
    .rope_theta = 10000.0};

static size_t cache_floats(const kvtc_cache *c)
{
    return 2 * (size_t)kvtc_shape_features(kvtc_cache_shape(c)) * kvtc_cache_tokens(c);
}

static kvtc_cache *clone(const kvtc_cache *c)
{
    kvtc_cache *d = NULL;
    kvtc_cache_create(kvtc_cache_shape(c), kvtc_cache_dtype(c),
                                      kvtc_cache_tokens(c), kvtc_cache_pos0(c), &d, NULL);
    if (d)
        memcpy(d->data, c->data, cache_floats(c) * kvtc_dtype_size(c->dtype));
    return d;
}

/* Pointer to token t's head vector (F32 caches). */
static float *vec(kvtc_cache *c, kvtc_kind k, uint32_t l, uint32_t h, uint32_t t)
{
    return (float *)kvtc_cache_data(c, k, l) + ((size_t)h * c->n_tokens + t) * c->shape.head_dim;
}

/* Sinks [0, SINKS) and window [n - WINDOW, n) of `got` equal those of `orig` bit for bit
 * (got may be shorter: its window is its own last WINDOW tokens). */
static void check_ends_exact(kvtc_cache *orig, kvtc_cache *got, const char *what)
{
    size_t bytes = shape.head_dim * sizeof(float);
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < shape.n_layer; l++)
            for (uint32_t h = 0; h < shape.n_kv_head; h++) {
                for (uint32_t t = 0; t < SINKS; t++)
                    CHECK_MSG(!memcmp(vec(orig, k, l, h, t), vec(got, k, l, h, t), bytes),
                              "%s: sink %u changed", what, t);
                for (uint32_t t = 0; t < WINDOW; t++)
                    CHECK_MSG(!memcmp(vec(orig, k, l, h, orig->n_tokens - WINDOW + t),
                                      vec(got, k, l, h, got->n_tokens - WINDOW + t), bytes),
                              "%s: window token %u changed", what, t);
            }
}

static float absmax(const float *x, uint32_t n, uint32_t stride)
{
    float m = 0;
    for (uint32_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(x[(size_t)i * stride]));
    return m;
}

static float fp16_round(float x) { return kvtc_f16_to_f32(kvtc_f32_to_f16(x)); }

/* Runs a method on a copy of `orig`; returns the treated copy or NULL. */
static kvtc_cache *run(kvtc_cache *orig, const char *spec, const eval_treat_args *a,
                       eval_treat_result *res)
{
    eval_method m;
    kvtc_error err;
    if (!CHECK_OK(eval_method_parse(spec, 16, &m, &err), &err))
        return NULL;
    kvtc_cache *c = clone(orig);
    if (!CHECK(c != NULL) || !CHECK_OK(eval_method_apply(&m, a, &c, res, &err), &err)) {
        kvtc_cache_free(c);
        return NULL;
    }
    uint32_t treated = TOKENS - SINKS - WINDOW;
    CHECK_EQ(res->treated_tokens, treated);
    CHECK_EQ(res->fp16_bytes, 4ull * kvtc_shape_features(&shape) * treated);
    CHECK_NEAR(res->ratio, (double)res->fp16_bytes / (double)res->stored_bytes, 1e-12);
    check_ends_exact(orig, c, spec);
    return c;
}

/* Per-token quantizers: every group of `group` values of every treated head
 * vector within `rel` of the group's largest magnitude (plus, for fp8, of the
 * value itself), and exactly `group_bytes` stored per group. */
static void check_per_token(kvtc_cache *orig, const char *spec, uint32_t group,
                            uint64_t group_bytes, double rel_absmax, double rel_value)
{
    eval_treat_args a = {SINKS, WINDOW, NULL, NULL, 1, NULL};
    eval_treat_result res;
    kvtc_cache *c = run(orig, spec, &a, &res);
    if (!c)
        return;
    uint32_t treated = TOKENS - SINKS - WINDOW, hd = shape.head_dim;
    uint64_t groups = 2ull * shape.n_layer * shape.n_kv_head * treated * (hd / group);
    CHECK_EQ(res.stored_bytes, groups * group_bytes);
    uint32_t bad = 0;
    double se = 0, energy = 0;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < shape.n_layer; l++)
            for (uint32_t h = 0; h < shape.n_kv_head; h++)
                for (uint32_t t = SINKS; t < TOKENS - WINDOW; t++)
                    for (uint32_t g0 = 0; g0 < hd; g0 += group) {
                        const float *x = vec(orig, k, l, h, t) + g0, *y = vec(c, k, l, h, t) + g0;
                        float am = absmax(x, group, 1);
                        for (uint32_t i = 0; i < group; i++) {
                            double d = fabs((double)x[i] - y[i]);
                            se += d * d;
                            energy += (double)x[i] * x[i];
                            bad += d > rel_absmax * am + rel_value * fabs(x[i]) + 1e-7;
                        }
                    }
    CHECK_MSG(bad == 0, "%s: %u values beyond the quantizer's error bound", spec, bad);
    CHECK_MSG(se > 0 && se < 0.05 * energy, "%s: relative squared error %g", spec, se / energy);
    kvtc_cache_free(c);
}

/* KIVI: keys per channel over groups of 32 tokens, values per token over
 * groups of 32 channels, 2 bits with fp16 min and scale; the tokens after the
 * last whole key group (at least the 32-token residual) kept in fp16. */
static void check_kivi(kvtc_cache *orig)
{
    eval_treat_args a = {SINKS, WINDOW, NULL, NULL, 1, NULL};
    eval_treat_result res;
    kvtc_cache *c = run(orig, "kivi2", &a, &res);
    if (!c)
        return;
    uint32_t treated = TOKENS - SINKS - WINDOW, hd = shape.head_dim, G = EVAL_KIVI_GROUP;
    uint32_t q = (treated - EVAL_KIVI_RESIDUAL) / G * G; /* 96 of 130 */
    uint64_t per_head = (uint64_t)hd * (q / G) * (G / 4 + 4)          /* keys */
                        + (uint64_t)q * (hd / G) * (G / 4 + 4)        /* values */
                        + 2ull * (treated - q) * hd * 2;              /* fp16 tail */
    CHECK_EQ(res.stored_bytes, per_head * shape.n_layer * shape.n_kv_head);
    uint32_t bad = 0;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < shape.n_layer; l++)
            for (uint32_t h = 0; h < shape.n_kv_head; h++)
                for (uint32_t t = SINKS; t < TOKENS - WINDOW; t++)
                    for (uint32_t i = 0; i < hd; i++) {
                        float x = vec(orig, k, l, h, t)[i], y = vec(c, k, l, h, t)[i];
                        uint32_t r = t - SINKS;
                        if (r >= q) {
                            bad += y != fp16_round(x);
                            continue;
                        }
                        /* the group's range: down the channel for keys, along the token for values */
                        float lo = INFINITY, hi = -INFINITY;
                        for (uint32_t j = 0; j < G; j++) {
                            float v = k == KVTC_KEY ? vec(orig, k, l, h, SINKS + r / G * G + j)[i]
                                                    : vec(orig, k, l, h, t)[i / G * G + j];
                            lo = fminf(lo, v);
                            hi = fmaxf(hi, v);
                        }
                        double step = (hi - lo) / 3.0;
                        bad += fabs((double)x - y) > 0.5 * step * 1.01 + fabs(lo) * 1e-3 + 1e-6;
                    }
    CHECK_MSG(bad == 0, "kivi2: %u values beyond the quantizer's error bound", bad);
    kvtc_cache_free(c);
}

static void check_exact_and_zstd(kvtc_cache *orig)
{
    eval_treat_args a = {SINKS, WINDOW, NULL, NULL, 1, NULL};
    eval_treat_result res;
    kvtc_cache *c = run(orig, "exact", &a, &res);
    if (c) {
        CHECK(!memcmp(c->data, orig->data, cache_floats(c) * sizeof(float)));
        CHECK_EQ(res.stored_bytes, res.fp16_bytes);
        CHECK_NEAR(res.ratio, 1.0, 0);
        kvtc_cache_free(c);
    }
    c = run(orig, "zstd", &a, &res);
    if (c) {
        uint32_t bad = 0;
        for (int k = 0; k < 2; k++)
            for (uint32_t l = 0; l < shape.n_layer; l++)
                for (uint32_t h = 0; h < shape.n_kv_head; h++)
                    for (uint32_t t = SINKS; t < TOKENS - WINDOW; t++)
                        for (uint32_t i = 0; i < shape.head_dim; i++)
                            bad += vec(c, k, l, h, t)[i] != fp16_round(vec(orig, k, l, h, t)[i]);
        CHECK_MSG(bad == 0, "zstd: %u values differ from their fp16 rounding", bad);
        /* Gaussian fp16 mantissas are near-incompressible: a modest gain, never a loss
         * beyond the frame overhead. */
        CHECK_MSG(res.ratio > 1.0 && res.ratio < 2.0, "zstd ratio %g", res.ratio);
        kvtc_cache_free(c);
    }
}

/* Scores for the eviction tests: token t of head (l, h) scores
 * (t * 37 + 11 * (l * 2 + h)) mod TOKENS, distinct within a head. */
static float *known_scores(void)
{
    size_t n_scores = (size_t)shape.n_layer * shape.n_kv_head * TOKENS;
    float *att = malloc(n_scores * sizeof *att);
    for (size_t i = 0; att && i < n_scores; i++)
        att[i] = (float)((i % TOKENS * 37 + 11 * (i / TOKENS)) % TOKENS);
    return att;
}

/* Which heads share a set of kept tokens: their own (h2o), the layer's
 * (tova), every head (h2o-shared). */
enum { PER_HEAD, PER_LAYER, SHARED };

/* Whether treated token t is among the m kept by head (l, h): fewer than m
 * treated tokens rank above it (higher score, or equal and earlier), the
 * scores summed over the heads that share the set. */
static bool is_kept(const float *att, int scope, uint32_t l, uint32_t h, uint32_t m, uint32_t t)
{
    size_t heads = (size_t)shape.n_layer * shape.n_kv_head;
    size_t lh0 = scope == SHARED ? 0 : scope == PER_LAYER ? (size_t)l * shape.n_kv_head
                                                          : (size_t)l * shape.n_kv_head + h;
    size_t lh1 = scope == SHARED ? heads : scope == PER_LAYER ? lh0 + shape.n_kv_head : lh0 + 1;
    double st = 0;
    for (size_t lh = lh0; lh < lh1; lh++)
        st += att[lh * TOKENS + t];
    uint32_t above = 0;
    for (uint32_t u = SINKS; u < TOKENS - WINDOW; u++) {
        double su = 0;
        for (size_t lh = lh0; lh < lh1; lh++)
            su += att[lh * TOKENS + u];
        above += su > st || (su == st && u < t);
    }
    return above < m;
}

/* h2o, tova and h2o-shared: scores are known, so the kept set is known (tova
 * ranks by the last query's attention, given here as the same scores). */
static void check_h2o(kvtc_cache *orig, double target, int scope)
{
    uint32_t treated = TOKENS - SINKS - WINDOW, hd = shape.head_dim;
    float *att = known_scores();
    if (!CHECK(att != NULL))
        return;
    eval_treat_args a = {SINKS, WINDOW, NULL, scope == PER_LAYER ? NULL : att, 1,
                         scope == PER_LAYER ? att : NULL};
    eval_treat_result res;
    char spec[32];
    static const char *const names[] = {"h2o", "tova", "h2o-shared"};
    snprintf(spec, sizeof spec, "%s:%g", names[scope], target);
    kvtc_cache *c = run(orig, spec, &a, &res);
    if (!c) {
        free(att);
        return;
    }
    /* the most kept tokens that still realize the target: m + 1 would not;
     * a set of kept tokens stores its positions once, not once per head */
    uint32_t heads = shape.n_layer * shape.n_kv_head, m = res.kept_tokens;
    uint32_t sets = scope == SHARED ? 1 : scope == PER_LAYER ? shape.n_layer : heads;
    double per = 4.0 * hd * heads, index = 4.0 * sets;
    CHECK(treated * per / (m * (per + index)) >= target);
    CHECK(treated * per / ((m + 1) * (per + index)) < target);
    if (scope == PER_HEAD)
        CHECK_EQ(m, eval_h2o_keep_count(treated, hd, target));
    CHECK_EQ(kvtc_cache_tokens(c), SINKS + m + WINDOW);
    CHECK_EQ(kvtc_cache_pos0(c) + kvtc_cache_tokens(c), kvtc_cache_pos0(orig) + TOKENS);
    CHECK_EQ(res.stored_bytes, (uint64_t)(m * (per + index)));
    CHECK(res.ratio >= target);
    uint32_t bad = 0;
    for (uint32_t l = 0; l < shape.n_layer; l++)
        for (uint32_t h = 0; h < shape.n_kv_head; h++) {
            uint32_t slot = SINKS;
            for (uint32_t t = SINKS; t < TOKENS - WINDOW; t++) {
                if (!is_kept(att, scope, l, h, m, t))
                    continue;
                for (int k = 0; k < 2; k++)
                    for (uint32_t i = 0; i < hd; i++)
                        bad += vec(c, k, l, h, slot)[i] != fp16_round(vec(orig, k, l, h, t)[i]);
                slot++;
            }
            CHECK_EQ(slot, SINKS + m);
        }
    CHECK_MSG(bad == 0, "%s: kept tokens are not the top-scored ones in order", spec);
    kvtc_cache_free(c);
    free(att);
}

/* Relative squared error of the treated tokens of c against orig. */
static double treated_error(kvtc_cache *orig, kvtc_cache *c)
{
    double se = 0, energy = 0;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < shape.n_layer; l++)
            for (uint32_t h = 0; h < shape.n_kv_head; h++)
                for (uint32_t t = SINKS; t < TOKENS - WINDOW; t++)
                    for (uint32_t i = 0; i < shape.head_dim; i++) {
                        double x = vec(orig, k, l, h, t)[i], d = vec(c, k, l, h, t)[i] - x;
                        se += d * d;
                        energy += x * x;
                    }
    return se / energy;
}

/* GEAR: int4 plus what it adds, so below int4's error, at its counted bytes.
 * xKV: the synthetic caches are rank 24 plus noise across all layers with
 * RoPE undone, so a rank of at least 24 restores them to the noise (keys
 * factorized with their rotation give 0.034 at rank 28), a smaller one not. */
static void check_gear_xkv(kvtc_cache *orig)
{
    eval_treat_args a = {SINKS, WINDOW, NULL, NULL, 1, NULL};
    eval_treat_result res, res4;
    uint32_t treated = TOKENS - SINKS - WINDOW, cols = shape.n_kv_head * shape.head_dim;
    kvtc_cache *int4 = run(orig, "int4", &a, &res4), *gear = run(orig, "gear", &a, &res);
    if (int4 && gear) {
        double e4 = treated_error(orig, int4), eg = treated_error(orig, gear);
        CHECK_MSG(eg < 0.5 * e4, "gear error %g, int4 %g", eg, e4);
        size_t n = (size_t)treated * cols;
        uint64_t outliers = (uint64_t)(EVAL_GEAR_OUTLIERS * (double)n) * 6;
        uint64_t int4_bytes = (uint64_t)treated * (cols / 32) * (16 + 4);
        uint64_t low_rank = 2ull * EVAL_GEAR_RANK * (treated + cols);
        CHECK_EQ(res.stored_bytes, 2ull * shape.n_layer * (outliers + int4_bytes + low_rank));
        CHECK_MSG(res.ratio > 2 && res.ratio < res4.ratio, "gear ratio %g", res.ratio);
    }
    kvtc_cache_free(int4);
    kvtc_cache_free(gear);
    uint32_t all = shape.n_layer * cols; /* both layers form one group */
    for (int i = 0; i < 2; i++) {
        double target = i == 0 ? 3 : 24;
        uint32_t r = (uint32_t)floor((double)treated * all / (target * (treated + all)));
        char spec[32];
        snprintf(spec, sizeof spec, "xkv:%g", target);
        kvtc_cache *c = run(orig, spec, &a, &res);
        if (!c)
            continue;
        CHECK_EQ(res.stored_bytes, 2ull * 2 * r * (treated + all));
        CHECK(res.ratio >= target);
        double e = treated_error(orig, c);
        if (i == 0)
            CHECK_MSG(r >= 24 && e < 2e-3, "xkv:3 (rank %u) error %g", r, e);
        else
            CHECK_MSG(r < 24 && e > 1e-2, "xkv:24 (rank %u) error %g", r, e);
        kvtc_cache_free(c);
    }
}

/* evict+kvtc: the kept tokens (as the eviction alone picks them) come back
 * within kvtc's error, keys at their own positions; sinks and window exact. */
static void check_evict_kvtc(kvtc_cache *orig, const kvtc_calibration *calib)
{
    float *att = known_scores();
    if (!CHECK(att != NULL))
        return;
    uint32_t treated = TOKENS - SINKS - WINDOW, m = treated / 2, hd = shape.head_dim;
    for (int shared = 0; shared < 2; shared++) {
        const char *spec = shared ? "h2o-shared:2+kvtc:4" : "h2o:2+kvtc:4";
        eval_treat_args a = {SINKS, WINDOW, calib, att, 1, NULL};
        eval_treat_result res;
        kvtc_cache *c = run(orig, spec, &a, &res);
        if (!c)
            continue;
        CHECK_EQ(res.kept_tokens, m);
        CHECK_EQ(kvtc_cache_tokens(c), SINKS + m + WINDOW);
        CHECK_EQ(kvtc_cache_pos0(c) + kvtc_cache_tokens(c), kvtc_cache_pos0(orig) + TOKENS);
        /* kvtc:4 on half the tokens, plus their positions */
        CHECK_MSG(res.ratio > 7, "%s realized %g", spec, res.ratio);
        double se = 0, energy = 0;
        uint32_t raw_bad = 0;
        for (uint32_t l = 0; l < shape.n_layer; l++)
            for (uint32_t h = 0; h < shape.n_kv_head; h++) {
                uint32_t slot = SINKS;
                for (uint32_t t = SINKS; t < TOKENS - WINDOW; t++) {
                    if (!is_kept(att, shared ? SHARED : PER_HEAD, l, h, m, t))
                        continue;
                    for (int k = 0; k < 2; k++)
                        for (uint32_t i = 0; i < hd; i++) {
                            double x = vec(orig, k, l, h, t)[i], d = vec(c, k, l, h, slot)[i] - x;
                            se += d * d;
                            energy += x * x;
                        }
                    slot++;
                }
                CHECK_EQ(slot, SINKS + m);
                for (int k = 0; k < 2; k++) {
                    size_t bytes = hd * sizeof(float);
                    const float *win = vec(orig, k, l, h, SINKS + treated);
                    raw_bad += memcmp(vec(c, k, l, h, 0), vec(orig, k, l, h, 0), SINKS * bytes) != 0;
                    raw_bad += memcmp(vec(c, k, l, h, SINKS + m), win, WINDOW * bytes) != 0;
                }
            }
        CHECK_MSG(raw_bad == 0, "%s changed sinks or window", spec);
        /* Measured: shared 0.0002 (whole token rows kept; without turning the
         * keys to their slots 0.075, off the basis's span), per head 0.006
         * (a row mixes tokens of different heads, which the basis does not
         * model). */
        CHECK_MSG(se < (shared ? 0.002 : 0.05) * energy, "%s relative squared error %g", spec,
                  se / energy);
        kvtc_cache_free(c);
    }
    free(att);
}

/* kvtc through a calibration of caches of the same synthetic "model". */
static void check_kvtc(kvtc_cache *orig)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = SINKS;
    opt.window = WINDOW;
    kvtc_error err;
    kvtc_calibration *calib = make_random_calibration(&shape, &opt, 8, 512, 24, 100);
    if (!CHECK(calib != NULL))
        return;
    eval_treat_args a = {SINKS, WINDOW, calib, NULL, 1, NULL};
    eval_treat_result res;
    kvtc_cache *c = run(orig, "kvtc:4", &a, &res);
    if (c) {
        double se = 0, energy = 0;
        for (int k = 0; k < 2; k++)
            for (uint32_t l = 0; l < shape.n_layer; l++)
                for (uint32_t h = 0; h < shape.n_kv_head; h++)
                    for (uint32_t t = SINKS; t < TOKENS - WINDOW; t++)
                        for (uint32_t i = 0; i < shape.head_dim; i++) {
                            double x = vec(orig, k, l, h, t)[i], d = x - vec(c, k, l, h, t)[i];
                            se += d * d;
                            energy += x * x;
                        }
        CHECK_MSG(se < 0.05 * energy, "kvtc:4 relative squared error %g", se / energy);
        /* the stream's own bytes: compress again and compare with the report */
        kvtc_compress_options copt;
        kvtc_compress_options_default(&copt);
        copt.k_ratio = copt.v_ratio = 4;
        void *stream = NULL;
        size_t len = 0;
        kvtc_stream_info info = {.struct_size = sizeof info};
        if (CHECK_OK(kvtc_compress(calib, orig, &copt, &stream, &len, &err), &err) &&
            CHECK_OK(kvtc_stream_info_get(stream, len, &info, &err), &err))
            CHECK_EQ(res.stored_bytes, len - info.raw_bytes);
        kvtc_buffer_free(stream);
        kvtc_cache_free(c);
    }
    /* a calibration with other sinks/window than the harness is refused */
    check_evict_kvtc(orig, calib);
    eval_treat_args wrong = {SINKS + 1, WINDOW, calib, NULL, 1, NULL};
    eval_method m = {.id = EVAL_KVTC, .target_ratio = 8, .k_ratio = 8, .v_ratio = 8};
    c = clone(orig);
    CHECK_STATUS(eval_method_apply(&m, &wrong, &c, &res, &err), KVTC_E_MISMATCH, &err);
    kvtc_cache_free(c);
    kvtc_calibration_free(calib);
}

static void check_parse_and_short(kvtc_cache *orig)
{
    eval_method m;
    kvtc_error err;
    CHECK_OK(eval_method_parse("kvtc:32", 16, &m, &err), &err);
    CHECK(m.id == EVAL_KVTC && m.target_ratio == 32);
    CHECK(m.k_ratio == 32 && m.v_ratio == 32);
    CHECK_OK(eval_method_parse("h2o", 8, &m, &err), &err);
    CHECK(m.id == EVAL_H2O && m.target_ratio == 8);
    CHECK_OK(eval_method_parse("int4", 8, &m, &err), &err);
    CHECK(m.k_ratio == 0 && m.v_ratio == 0);
    /* a key/value split spends what its harmonic-mean ratio spends */
    CHECK_OK(eval_method_parse("kvtc:32/16", 16, &m, &err), &err);
    CHECK(m.k_ratio == 32 && m.v_ratio == 16);
    CHECK_NEAR(m.target_ratio, 2.0 / (1.0 / 32 + 1.0 / 16), 1e-12);
    char label[64];
    eval_method_label(&m, label, sizeof label);
    CHECK(!strcmp(label, "kvtc:32/16"));
    CHECK_STATUS(eval_method_parse("h2o:8/4", 16, &m, &err), KVTC_E_INVALID, &err);
    /* compositions: an eviction, then kvtc */
    CHECK_OK(eval_method_parse("h2o:2+kvtc:16", 8, &m, &err), &err);
    CHECK(m.id == EVAL_EVICT_KVTC && m.evict == EVAL_H2O && m.evict_ratio == 2);
    CHECK(m.k_ratio == 16 && m.v_ratio == 16 && m.target_ratio == 32);
    eval_method_label(&m, label, sizeof label);
    CHECK(!strcmp(label, "h2o:2+kvtc:16"));
    CHECK_OK(eval_method_parse("h2o-shared:4+kvtc:32/16", 8, &m, &err), &err);
    CHECK(m.evict == EVAL_H2O_SHARED && m.k_ratio == 32 && m.v_ratio == 16);
    eval_method_label(&m, label, sizeof label);
    CHECK_MSG(!strcmp(label, "h2o-shared:4+kvtc:32/16"), "label %s", label);
    CHECK_OK(eval_method_parse("h2o-shared", 8, &m, &err), &err);
    CHECK(m.id == EVAL_H2O_SHARED && m.target_ratio == 8 && eval_method_evicts(m.id));
    CHECK_STATUS(eval_method_parse("int4+kvtc:8", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("h2o:2+int4", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_OK(eval_method_parse("tova:4+kvtc:8", 16, &m, &err), &err);
    CHECK(m.evict == EVAL_TOVA && m.target_ratio == 32);
    CHECK_OK(eval_method_parse("xkv", 12, &m, &err), &err);
    CHECK(m.id == EVAL_XKV && m.target_ratio == 12 && !eval_method_evicts(m.id));
    CHECK_STATUS(eval_method_parse("gear:4", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("h2o:2+h2o:2+kvtc:8", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("evict+kvtc", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("kvtc:8/", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("kvtc:8/1", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("fp8:2", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("kvtc:1", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("kvtc:x", 16, &m, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(eval_method_parse("int3", 16, &m, &err), KVTC_E_INVALID, &err);
    /* a cache with nothing between sinks and window is left as it is */
    kvtc_cache *c = clone(orig);
    eval_treat_args a = {SINKS, TOKENS - SINKS, NULL, NULL, 1, NULL};
    eval_treat_result res;
    CHECK_OK(eval_method_parse("int4", 16, &m, &err), &err);
    CHECK_OK(eval_method_apply(&m, &a, &c, &res, &err), &err);
    CHECK_EQ(res.treated_tokens, 0);
    CHECK_NEAR(res.ratio, 1.0, 0);
    CHECK(!memcmp(c->data, orig->data, cache_floats(c) * sizeof(float)));
    kvtc_cache_free(c);
}

/* ---- the attention h2o ranks by, against a plain reference forward pass ---- */

static void rmsnorm_ref(float *out, const float *x, const float *w, uint32_t dim, float eps)
{
    double ss = 0;
    for (uint32_t i = 0; i < dim; i++)
        ss += (double)x[i] * x[i];
    double inv = 1.0 / sqrt(ss / dim + eps);
    for (uint32_t i = 0; i < dim; i++)
        out[i] = (float)(x[i] * inv * w[i]);
}

/* y[rows] = W[rows][cols] x */
static void matvec_ref(float *y, const float *w, const float *x, uint32_t rows, uint32_t cols)
{
    for (uint32_t r = 0; r < rows; r++) {
        double s = 0;
        for (uint32_t c = 0; c < cols; c++)
            s += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = (float)s;
    }
}

/* Runs tokens through the model one plain loop at a time and sums, per layer
 * and KV head, the causal attention probability each token receives (acc)
 * and that the last token's query gives it (last). */
static void reference_attention(const model *m, const int32_t *tokens, uint32_t n, double *acc,
                                double *last)
{
    const model_config *c = &m->cfg;
    uint32_t dim = c->dim, hd = c->head_dim, nq = c->n_head, nkv = c->n_kv_head;
    uint32_t group = nq / nkv, qkv = (nq + 2 * nkv) * hd, hid = c->hidden_dim;
    kvtc_model_shape kv_shape = model_kv_shape(m);
    float *x = calloc((size_t)n * dim, 4), *xn = calloc(dim, 4), *act = calloc((size_t)n * qkv, 4);
    float *att = calloc((size_t)nq * hd, 4), *ffn = calloc(2 * (size_t)hid, 4), *tmp = calloc(dim, 4);
    double *p = calloc(n, sizeof *p);
    for (uint32_t t = 0; t < n; t++)
        weight_row_f32(&m->token_embd, (uint32_t)tokens[t], x + (size_t)t * dim);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const model_layer *L = &m->layers[l];
        for (uint32_t t = 0; t < n; t++) {
            float *a = act + (size_t)t * qkv;
            rmsnorm_ref(xn, x + (size_t)t * dim, L->attn_norm, dim, c->norm_eps);
            matvec_ref(a, weight_f32_data(&L->wqkv), xn, qkv, dim);
            for (uint32_t i = 0; L->bqkv && i < qkv; i++)
                a[i] += L->bqkv[i];
            for (uint32_t h = 0; h < nq + nkv; h++) /* queries and keys */
                kvtc_rope_rotate(&kv_shape, a + h * hd, t, false);
        }
        for (uint32_t t = 0; t < n; t++) {
            for (uint32_t h = 0; h < nq; h++) {
                const float *q = act + (size_t)t * qkv + h * hd;
                uint32_t g = h / group;
                double max = -INFINITY, sum = 0;
                for (uint32_t j = 0; j <= t; j++) {
                    const float *k = act + (size_t)j * qkv + (nq + g) * hd;
                    double s = 0;
                    for (uint32_t i = 0; i < hd; i++)
                        s += (double)q[i] * k[i];
                    p[j] = s / sqrt((double)hd);
                    max = p[j] > max ? p[j] : max;
                }
                for (uint32_t j = 0; j <= t; j++)
                    sum += p[j] = exp(p[j] - max);
                for (uint32_t i = 0; i < hd; i++)
                    att[h * hd + i] = 0;
                for (uint32_t j = 0; j <= t; j++) {
                    acc[((size_t)l * nkv + g) * n + j] += p[j] / sum;
                    if (t == n - 1)
                        last[((size_t)l * nkv + g) * n + j] += p[j] / sum;
                    const float *v = act + (size_t)j * qkv + (nq + nkv + g) * hd;
                    for (uint32_t i = 0; i < hd; i++)
                        att[h * hd + i] += (float)(p[j] / sum) * v[i];
                }
            }
            /* the layer's keys and values of every token are already in act,
             * so token t's residual stream can move on to the next layer now */
            float *xt = x + (size_t)t * dim;
            matvec_ref(tmp, weight_f32_data(&L->wo), att, dim, nq * hd);
            for (uint32_t i = 0; i < dim; i++)
                xt[i] += tmp[i];
            rmsnorm_ref(xn, xt, L->ffn_norm, dim, c->norm_eps);
            matvec_ref(ffn, weight_f32_data(&L->w_gate_up), xn, 2 * hid, dim);
            for (uint32_t i = 0; i < hid; i++)
                ffn[i] = ffn[i] / (1.0f + expf(-ffn[i])) * ffn[hid + i];
            matvec_ref(tmp, weight_f32_data(&L->w_down), ffn, dim, hid);
            for (uint32_t i = 0; i < dim; i++)
                xt[i] += tmp[i];
        }
    }
    free(x), free(xn), free(act), free(att), free(ffn), free(tmp), free(p);
}

/* The attention a session observes during its forwards, against the
 * reference: the context runs in two forwards (the second after cached
 * tokens), on two threads, so sums carry across calls and threads. */
static void check_observed_attention(void)
{
    char path[1024];
    if (!CHECK(test_shared_path(path, sizeof path, "models/stories260K.bin")) ||
        !test_input_present("test_methods", "the observed attention check", path,
                            "the shared test model"))
        return;
    model *m = NULL;
    kvtc_error err;
    if (!CHECK_OK(model_open(path, &m, NULL, &err), &err))
        return;
    enum { N = 40, FIRST = 23 };
    int32_t tokens[N];
    for (uint32_t i = 0; i < N; i++)
        tokens[i] = (int32_t)((i * 97 + 13) % m->cfg.vocab_size);
    size_t n_acc = (size_t)m->cfg.n_layer * m->cfg.n_kv_head * N;
    float *acc = calloc(n_acc, sizeof *acc), *last = calloc(n_acc, sizeof *last);
    double *ref = calloc(n_acc, sizeof *ref), *ref_last = calloc(n_acc, sizeof *ref_last);
    session *s = NULL;
    if (CHECK(acc && last && ref && ref_last) &&
        CHECK_OK(session_create(m, N + 4, 2, &s, &err), &err) &&
        CHECK_OK(session_observe_attention(s, acc, last, N, &err), &err) &&
        CHECK_OK(session_forward(s, tokens, FIRST, NULL, false, &err), &err) &&
        CHECK_OK(session_forward(s, tokens + FIRST, N - FIRST, NULL, false, &err), &err)) {
        reference_attention(m, tokens, N, ref, ref_last);
        double worst = 0, worst_last = 0, total = 0, total_last = 0;
        for (size_t i = 0; i < n_acc; i++) {
            worst = fmax(worst, fabs(acc[i] - ref[i]));
            worst_last = fmax(worst_last, fabs(last[i] - ref_last[i]));
            total += acc[i];
            total_last += last[i];
        }
        CHECK_MSG(worst < 1e-3, "observed attention differs from the reference by %g", worst);
        CHECK_MSG(worst_last < 1e-4, "last query's attention differs from the reference by %g",
                  worst_last);
        /* every query's probabilities sum to one */
        CHECK_NEAR(total, (double)m->cfg.n_layer * m->cfg.n_head * N, 1e-2);
        CHECK_NEAR(total_last, (double)m->cfg.n_layer * m->cfg.n_head, 1e-3);
        /* past the observed slots a forward is refused; once off, it runs and adds nothing */
        CHECK(session_forward(s, tokens, 1, NULL, false, &err) == KVTC_E_INVALID);
        float before = acc[0];
        CHECK_OK(session_observe_attention(s, NULL, NULL, 0, &err), &err);
        CHECK_OK(session_forward(s, tokens, 1, NULL, false, &err), &err);
        CHECK(acc[0] == before);
    }
    session_free(s);
    free(acc), free(last), free(ref), free(ref_last);
    model_free(m);
}

int main(void)
{
    kvtc_cache *orig = make_random_cache(&shape, KVTC_F32, TOKENS, 7, 24, 1);
    if (!CHECK(orig != NULL))
        return test_summary("test_methods");
    check_parse_and_short(orig);
    check_exact_and_zstd(orig);
    /* fp8: 3 mantissa bits (half a step is 1/16 of the value), subnormals
     * step by 2^-9 of the scale; int8/int4: half a step of amax/127, amax/7. */
    check_per_token(orig, "fp8", shape.head_dim, shape.head_dim + 2, 1.01 / 448 / 1024, 1.0 / 16);
    check_per_token(orig, "int8", shape.head_dim, shape.head_dim + 2, 0.501 / 127, 0);
    check_per_token(orig, "int4", EVAL_INT4_GROUP, EVAL_INT4_GROUP / 2 + 2, 0.501 / 7, 0);
    check_kivi(orig);
    check_h2o(orig, 8, PER_HEAD);
    check_h2o(orig, 16, PER_HEAD);
    check_h2o(orig, 8, PER_LAYER);
    check_h2o(orig, 8, SHARED);
    check_gear_xkv(orig);
    check_kvtc(orig);
    check_observed_attention();
    kvtc_cache_free(orig);
    return test_summary("test_methods");
}
