/* The transform stage (src/transform.c) against a straightforward double
 * precision reference on a random calibration: projection coefficients,
 * centred rows and their energy, every layer's reconstruction, each within
 * the error bound of a float dot product; rows in the span of the basis
 * columns used come back within float rounding, and with the full basis any
 * row does. */
#include "kvtc_internal.h"
#include "testutil.h"
#include "transform.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

/* 3 layers x 2 kv heads x head_dim 16 */
static const kvtc_model_shape SHAPE = {3, 2, 16, KVTC_ROPE_INTERLEAVED, 0, 10000.0, 0};
#define P 96u
#define HD 32u /* features of one layer */
#define TOKENS 40u

/* Rows of a cache that was not calibrated on: [TOKENS][P]. */
static float *sample_rows(kvtc_kind kind, uint64_t seed)
{
    kvtc_cache *c = make_random_cache(&SHAPE, KVTC_F32, TOKENS, 7, 6, seed);
    float *rows = malloc((size_t)TOKENS * P * sizeof *rows);
    if (c && rows)
        kvtc_cache_gather_rows(c, kind, 0, TOKENS, rows);
    kvtc_cache_free(c);
    return rows;
}

/* Error bound of a float sum of n products whose magnitudes add up to `mag`
 * (with FMA or without, in any order a BLAS may choose). */
static double dot_bound(uint32_t n, double mag) { return (n + 2) * FLT_EPSILON * mag + 1e-30; }

/* Projects x ([TOKENS][P]) on the first nc columns and checks the centred
 * rows, the energy and the coefficients against the reference; coef gets the
 * coefficients. */
static void check_project(const kvtc_calibration *cal, kvtc_kind kind, const float *x,
                          uint32_t nc, float *coef)
{
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    float *rows = malloc((size_t)TOKENS * P * sizeof *rows);
    if (!CHECK(rows != NULL))
        return;
    for (size_t i = 0; i < (size_t)TOKENS * P; i++)
        rows[i] = x[i];
    double energy = 1.0; /* added to, not overwritten */
    kvtc_transform_project(cal, kind, rows, TOKENS, nc, coef, &energy);
    double want_energy = 0;
    for (uint32_t t = 0; t < TOKENS; t++) {
        const float *xt = x + (size_t)t * P;
        for (uint32_t j = 0; j < P; j++) {
            /* centring is one float subtraction, so exact to the bit */
            CHECK(rows[(size_t)t * P + j] == xt[j] - ck->mean[j]);
            double d = (double)xt[j] - ck->mean[j];
            want_energy += d * d;
        }
        for (uint32_t c = 0; c < nc; c++) {
            double want = 0, mag = 0;
            for (uint32_t j = 0; j < P; j++) {
                double d = (double)xt[j] - ck->mean[j], v = ck->basis[(size_t)j * ck->rank + c];
                want += d * v;
                mag += fabs(d * v);
            }
            CHECK_MSG(fabs(coef[(size_t)t * nc + c] - want) <= dot_bound(P, mag),
                      "%s token %u coefficient %u: %.9g, want %.9g", kvtc_kind_name(kind), t, c,
                      coef[(size_t)t * nc + c], want);
        }
    }
    CHECK_NEAR(energy, 1.0 + want_energy, 1e-6 * want_energy);
    /* without an energy the same coefficients, bit for bit */
    float *again = malloc((size_t)TOKENS * nc * sizeof *again);
    if (CHECK(again != NULL)) {
        for (size_t i = 0; i < (size_t)TOKENS * P; i++)
            rows[i] = x[i];
        kvtc_transform_project(cal, kind, rows, TOKENS, nc, again, NULL);
        for (size_t i = 0; i < (size_t)TOKENS * nc; i++)
            CHECK(again[i] == coef[i]);
    }
    free(again);
    free(rows);
}

/* Reconstructs every layer from coef ([TOKENS][nc]) and checks it against the
 * reference; out gets the rows of all layers ([TOKENS][P]). */
static void check_reconstruct(const kvtc_calibration *cal, kvtc_kind kind, const float *coef,
                              uint32_t nc, float *out)
{
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    float layer_rows[TOKENS * HD];
    for (uint32_t l = 0; l < SHAPE.n_layer; l++) {
        kvtc_transform_reconstruct_layer(cal, kind, l, coef, TOKENS, nc, layer_rows);
        for (uint32_t t = 0; t < TOKENS; t++)
            for (uint32_t j = 0; j < HD; j++) {
                size_t f = (size_t)l * HD + j;
                double want = ck->mean[f], mag = fabs(ck->mean[f]);
                for (uint32_t c = 0; c < nc; c++) {
                    double term = (double)coef[(size_t)t * nc + c] * ck->basis[f * ck->rank + c];
                    want += term;
                    mag += fabs(term);
                }
                float got = layer_rows[t * HD + j];
                CHECK_MSG(fabs(got - want) <= dot_bound(nc + 1, mag),
                          "%s layer %u token %u feature %u: %.9g, want %.9g",
                          kvtc_kind_name(kind), l, t, j, got, want);
                out[(size_t)t * P + f] = got;
            }
    }
}

/* The largest |a - b| over rows [TOKENS][P], relative to each row's scale:
 * its distance from the mean plus the mean's largest magnitude. */
static double rel_distance(const kvtc_calibration *cal, kvtc_kind kind, const float *a,
                           const float *b)
{
    const float *mean = cal->kind[kind].mean;
    double mean_max = 0, worst = 0;
    for (uint32_t j = 0; j < P; j++)
        mean_max = fabs(mean[j]) > mean_max ? fabs(mean[j]) : mean_max;
    for (uint32_t t = 0; t < TOKENS; t++) {
        double norm = 0, diff = 0;
        for (uint32_t j = 0; j < P; j++) {
            double d = (double)a[(size_t)t * P + j] - mean[j];
            norm += d * d;
            double e = fabs((double)a[(size_t)t * P + j] - b[(size_t)t * P + j]);
            diff = e > diff ? e : diff;
        }
        double r = diff / (sqrt(norm) + mean_max);
        worst = r > worst ? r : worst;
    }
    return worst;
}

/* Rows mean + sum_c a_c V[:, c] over c < nc (random a, the row's scale set
 * by the kind's eigenvalues): in the span, so they come back. */
static void check_span(const kvtc_calibration *cal, kvtc_kind kind, uint32_t nc, uint64_t seed)
{
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    float *x = malloc((size_t)TOKENS * P * sizeof *x);
    float *coef = malloc((size_t)TOKENS * nc * sizeof *coef);
    float *back = malloc((size_t)TOKENS * P * sizeof *back);
    if (!CHECK(x && coef && back))
        goto done;
    test_rng r;
    rng_seed(&r, seed);
    for (uint32_t t = 0; t < TOKENS; t++) {
        double a[P];
        for (uint32_t c = 0; c < nc; c++)
            a[c] = sqrt(ck->eigenvalues[c] + 1e-3) * rng_gaussian(&r);
        for (uint32_t j = 0; j < P; j++) {
            double v = ck->mean[j];
            for (uint32_t c = 0; c < nc; c++)
                v += a[c] * ck->basis[(size_t)j * ck->rank + c];
            x[(size_t)t * P + j] = (float)v;
        }
    }
    check_project(cal, kind, x, nc, coef);
    check_reconstruct(cal, kind, coef, nc, back);
    /* rounding of x, of the basis' orthonormality and of two float products:
     * about one epsilon in practice; a wrong layer, mean or column is O(1) */
    double d = rel_distance(cal, kind, x, back);
    CHECK_MSG(d <= 16 * FLT_EPSILON, "%s, %u columns: span rows come back %.3g away (%.1f eps)",
              kvtc_kind_name(kind), nc, d, d / FLT_EPSILON);
done:
    free(x);
    free(coef);
    free(back);
}

/* Rows of another cache on nc columns: checked against the reference; with
 * the full basis (nc = P) they come back. */
static void check_rows(const kvtc_calibration *cal, kvtc_kind kind, uint32_t nc, uint64_t seed)
{
    float *x = sample_rows(kind, seed);
    float *coef = malloc((size_t)TOKENS * nc * sizeof *coef);
    float *back = malloc((size_t)TOKENS * P * sizeof *back);
    if (CHECK(x && coef && back)) {
        check_project(cal, kind, x, nc, coef);
        check_reconstruct(cal, kind, coef, nc, back);
        if (nc == P) {
            double d = rel_distance(cal, kind, x, back);
            CHECK_MSG(d <= 16 * FLT_EPSILON, "%s, full basis: rows come back %.3g away",
                      kvtc_kind_name(kind), d);
        }
    }
    free(x);
    free(coef);
    free(back);
}

int main(void)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 4;
    opt.rank = P; /* the full basis, so nc = P is possible; smaller nc read part of each row */
    kvtc_calibration *cal = make_random_calibration(&SHAPE, &opt, 4, 80, 6, 1);
    if (!CHECK(cal != NULL))
        return test_summary("test_transform");
    CHECK_EQ(kvtc_calibration_rank(cal, KVTC_KEY), P);
    static const uint32_t coords[] = {1, 6, 17, 64, P};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < sizeof coords / sizeof coords[0]; i++) {
            check_rows(cal, (kvtc_kind)k, coords[i], 100 + i);
            check_span(cal, (kvtc_kind)k, coords[i], 200 + i);
        }
    kvtc_calibration_free(cal);

    /* a calibration of lower rank: the basis' leading dimension is its rank */
    opt.rank = 24;
    cal = make_random_calibration(&SHAPE, &opt, 4, 80, 6, 2);
    if (CHECK(cal != NULL)) {
        for (int k = 0; k < 2; k++) {
            check_rows(cal, (kvtc_kind)k, 24, 300);
            check_rows(cal, (kvtc_kind)k, 10, 301);
            check_span(cal, (kvtc_kind)k, 10, 302);
        }
    }
    kvtc_calibration_free(cal);
    return test_summary("test_transform");
}
