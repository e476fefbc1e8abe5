/* Calibration PCA: samples of a known covariance Q diag(lambda) Q^T give back
 * its eigenvalues and principal subspace; streaming in pieces equals one add;
 * the held-out selection is deterministic and counted across caches; bad
 * input is refused; the exact and randomized eigensolvers agree with a
 * covariance built from known eigenpairs. */
#include "kvtc_internal.h"
#include "pca.h"
#include "test_alloc.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define P 32 /* 2 layers x 2 kv heads x head_dim 8 */
static const kvtc_model_shape SHAPE = {2, 2, 8, KVTC_ROPE_INTERLEAVED, 0, 10000.0, 0};

typedef struct truth {
    double q[P][P]; /* orthonormal columns */
    double lambda[P];
    double mean[P];
} truth;

/* Rows of q ([n][n]) <- a random orthogonal matrix (Gram-Schmidt, twice, on
 * Gaussian rows); its columns are then orthonormal too. */
static void random_orthogonal(double *q, size_t n, test_rng *r)
{
    for (size_t j = 0; j < n; j++) {
        double *row = q + j * n;
        for (size_t i = 0; i < n; i++)
            row[i] = rng_gaussian(r);
        for (int pass = 0; pass < 2; pass++)
            for (size_t k = 0; k < j; k++) {
                const double *prev = q + k * n;
                double dot = 0;
                for (size_t i = 0; i < n; i++)
                    dot += row[i] * prev[i];
                for (size_t i = 0; i < n; i++)
                    row[i] -= dot * prev[i];
            }
        double norm = 0;
        for (size_t i = 0; i < n; i++)
            norm += row[i] * row[i];
        for (size_t i = 0; i < n; i++)
            row[i] /= sqrt(norm);
    }
}

/* |V^T V - I| of vectors [p][rank] is rounding-small (float storage). */
static void check_orthonormal(const char *what, const float *v, size_t p, size_t rank)
{
    double worst = 0;
    for (size_t j = 0; j < rank; j++)
        for (size_t j2 = 0; j2 <= j; j2++) {
            double dot = 0;
            for (size_t i = 0; i < p; i++)
                dot += (double)v[i * rank + j] * v[i * rank + j2];
            double off = fabs(dot - (j == j2));
            if (off > worst)
                worst = off;
        }
    CHECK_MSG(worst < 1e-5, "%s: columns off orthonormal by %g", what, worst);
}

static void make_truth(truth *t, test_rng *r)
{
    random_orthogonal(&t->q[0][0], P, r);
    for (int j = 0; j < P; j++) {
        t->lambda[j] = 10.0 * pow(0.6, j);
        t->mean[j] = 3.0 * rng_gaussian(r);
    }
}

/* A cache of n tokens at pos0 whose key and value rows (keys before RoPE) are
 * mean + Q diag(sqrt(lambda)) z. */
static kvtc_cache *sample_cache(const truth *t, uint32_t n, int64_t pos0, test_rng *r)
{
    kvtc_error err;
    kvtc_cache *c;
    CHECK_OK(kvtc_cache_create(&SHAPE, KVTC_F32, n, pos0, &c, &err), &err);
    if (!c)
        return NULL;
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    for (int kind = 0; kind < 2; kind++)
        for (uint32_t tok = 0; tok < n; tok++) {
            double z[P], x[P];
            for (int j = 0; j < P; j++)
                z[j] = sqrt(t->lambda[j]) * rng_gaussian(r);
            for (int i = 0; i < P; i++) {
                x[i] = t->mean[i];
                for (int j = 0; j < P; j++)
                    x[i] += t->q[i][j] * z[j];
            }
            for (uint32_t l = 0; l < s->n_layer; l++) {
                float *layer = kvtc_cache_data(c, (kvtc_kind)kind, l);
                for (uint32_t h = 0; h < s->n_kv_head; h++) {
                    float *head = layer + ((size_t)h * n + tok) * s->head_dim;
                    for (uint32_t d = 0; d < s->head_dim; d++)
                        head[d] = (float)x[(l * s->n_kv_head + h) * s->head_dim + d];
                    if (kind == KVTC_KEY)
                        kvtc_rope_rotate(s, head, pos0 + tok, false);
                }
            }
        }
    return c;
}

/* Caches of sample_cache for test_calibrate: cache i holds n tokens at
 * position i * pos0_step, drawn from r. */
typedef struct sampler {
    const truth *t;
    uint32_t n;
    int64_t pos0_step;
    test_rng *r;
} sampler;

static kvtc_cache *sampled_cache(void *user, uint32_t i)
{
    sampler *s = user;
    return sample_cache(s->t, s->n, (int64_t)i * s->pos0_step, s->r);
}

static void test_known_covariance(void)
{
    test_rng r;
    rng_seed(&r, 1);
    truth t;
    make_truth(&t, &r);
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.rank = 12;
    kvtc_error err;
    sampler caches = {&t, 4000, 100, &r};
    kvtc_calibration *out = NULL;
    if (!CHECK_OK(test_calibrate(&SHAPE, &opt, 8, sampled_cache, &caches, &out, &err), &err))
        return;
    for (int kind = 0; kind < 2; kind++) {
        const struct kvtc_calib_kind *k = &out->kind[kind];
        CHECK_EQ(k->rank, 12);
        double sum_lambda = 0;
        for (int j = 0; j < P; j++)
            sum_lambda += t.lambda[j];
        CHECK_MSG(fabs(k->total_variance / sum_lambda - 1) < 0.03,
                  "total variance %g, want %g", k->total_variance, sum_lambda);
        for (int i = 0; i < P; i++)
            CHECK_MSG(fabs(k->mean[i] - t.mean[i]) < 0.05, "mean[%d] = %g, want %g", i,
                      k->mean[i], t.mean[i]);
        for (uint32_t j = 0; j < k->rank; j++) {
            CHECK_MSG(fabs(k->eigenvalues[j] / t.lambda[j] - 1) < 0.05,
                      "kind %d eigenvalue %u = %g, want %g", kind, j, k->eigenvalues[j],
                      t.lambda[j]);
            if (j > 0)
                CHECK(k->eigenvalues[j] <= k->eigenvalues[j - 1]);
            /* The first few columns aligned with Q's, each with its largest
             * component positive. */
            double dot_q = 0, biggest = 0;
            for (int i = 0; i < P; i++) {
                float v = k->basis[i * k->rank + j];
                dot_q += v * t.q[i][j];
                if (fabs(v) > fabs(biggest))
                    biggest = v;
            }
            CHECK_MSG(biggest > 0, "column %u: largest component is negative", j);
            if (j < 6)
                CHECK_MSG(fabs(dot_q) > 0.98, "kind %d column %u: |<v, q>| = %g", kind, j,
                          fabs(dot_q));
        }
        check_orthonormal("calibrated basis", k->basis, P, k->rank);
        /* The principal subspace of dimension 8 captures Q's first 8 columns. */
        double captured = 0;
        for (int j = 0; j < 8; j++)
            for (int j2 = 0; j2 < 8; j2++) {
                double dot = 0;
                for (int i = 0; i < P; i++)
                    dot += k->basis[i * k->rank + j2] * t.q[i][j];
                captured += dot * dot;
            }
        CHECK_MSG(captured / 8 > 0.99, "subspace alignment %g", captured / 8);
    }
    kvtc_calibration_free(out);
}

/* Calibrates one cache of n sampled tokens. */
static kvtc_status calibrate_sample(const truth *t, uint32_t n, const kvtc_calib_options *opt,
                                    uint64_t seed, kvtc_calibration **out, kvtc_error *err)
{
    test_rng r;
    rng_seed(&r, seed);
    sampler one = {t, n, 0, &r};
    return test_calibrate(&SHAPE, opt, 1, sampled_cache, &one, out, err);
}

/* A truth drawn from r seeded with `seed` (r goes on from there), and options
 * with neither sinks nor window that hold out every heldout_every-th token. */
static kvtc_calib_options seeded_truth(truth *t, test_rng *r, uint64_t seed,
                                       uint32_t heldout_every)
{
    rng_seed(r, seed);
    make_truth(t, r);
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 0;
    opt.window = 0;
    opt.heldout_every = heldout_every;
    return opt;
}

/* Same data, any n_threads: the same bytes; row counts follow heldout_every. */
static void test_threads_and_counts(void)
{
    test_rng r;
    truth t;
    kvtc_calib_options opt = seeded_truth(&t, &r, 2, 5);
    kvtc_error err;
    kvtc_calibration *a = NULL, *b = NULL;
    CHECK_OK(calibrate_sample(&t, 3000, &opt, 9, &a, &err), &err);
    opt.n_threads = 3;
    CHECK_OK(calibrate_sample(&t, 3000, &opt, 9, &b, &err), &err);
    if (a && b) {
        CHECK_MSG(test_calibrations_equal(a, b), "n_threads changed the calibration");
        for (int kind = 0; kind < 2; kind++) {
            CHECK_EQ(a->kind[kind].n_heldout, 600);
            CHECK_EQ(a->kind[kind].rows, 2400);
        }
    }
    kvtc_calibration_free(a);
    kvtc_calibration_free(b);
}

/* Splits one cache into pieces by copying tokens, so that the pieces hold the
 * very same rows: the covariance must not care how the stream was cut. */
static void test_split_equals_whole(void)
{
    test_rng r;
    truth t;
    kvtc_calib_options opt = seeded_truth(&t, &r, 3, 7);
    const uint32_t n = 2600;
    kvtc_cache *whole = sample_cache(&t, n, 0, &r);
    if (!CHECK(whole != NULL))
        return;
    const uint32_t cuts_aligned[] = {0, 512, 1792, n}; /* multiples of the 256-row batch */
    const uint32_t cuts_ragged[] = {0, 1, 333, 334, 2000, n};
    const uint32_t *cut_sets[2] = {cuts_aligned, cuts_ragged};
    const int n_cuts[2] = {4, 6};
    kvtc_error err;
    kvtc_calibration *ref = NULL;
    kvtc_calibrator *cal;
    CHECK_OK(kvtc_calibrator_create(&SHAPE, &opt, &cal, &err), &err);
    CHECK_OK(kvtc_calibrator_add(cal, whole, &err), &err);
    CHECK_OK(kvtc_calibrator_finish(cal, &ref, &err), &err);
    kvtc_calibrator_free(cal);
    for (int set = 0; set < 2 && ref; set++) {
        kvtc_calibrator_create(&SHAPE, &opt, &cal, &err);
        for (int i = 0; i + 1 < n_cuts[set]; i++) {
            uint32_t a = cut_sets[set][i], b = cut_sets[set][i + 1];
            kvtc_cache *piece;
            CHECK_OK(kvtc_cache_create(&SHAPE, KVTC_F32, b - a, a, &piece, &err), &err);
            kvtc_cache_copy_tokens(piece, 0, whole, a, b - a);
            CHECK_OK(kvtc_calibrator_add(cal, piece, &err), &err);
            kvtc_cache_free(piece);
        }
        kvtc_calibration *got = NULL;
        CHECK_OK(kvtc_calibrator_finish(cal, &got, &err), &err);
        kvtc_calibrator_free(cal);
        if (!got)
            continue;
        if (set == 0) {
            CHECK_MSG(test_calibrations_equal(ref, got),
                      "aligned pieces give a different calibration");
        } else {
            /* Other batch cuts change only rounding. */
            for (int kind = 0; kind < 2; kind++) {
                const struct kvtc_calib_kind *x = &ref->kind[kind], *y = &got->kind[kind];
                CHECK_EQ(x->rows, y->rows);
                CHECK_EQ(x->n_heldout, y->n_heldout);
                CHECK_NEAR(x->total_variance, y->total_variance, 1e-9 * x->total_variance);
                for (uint32_t j = 0; j < x->rank; j++)
                    CHECK_NEAR(x->eigenvalues[j], y->eigenvalues[j],
                               1e-5 * x->eigenvalues[0]);
                for (uint32_t j = 0; j < 8; j++)
                    for (int i = 0; i < P; i++)
                        CHECK_NEAR(x->basis[i * x->rank + j], y->basis[i * y->rank + j], 1e-4);
                size_t len = kvtc_err_table_len(x->rank);
                for (size_t e = 0; e < len; e++)
                    CHECK_NEAR(x->err_table[e], y->err_table[e], 1e-4 * (x->err_table[e] + 1e-3));
            }
        }
        kvtc_calibration_free(got);
    }
    kvtc_calibration_free(ref);
    kvtc_cache_free(whole);
}

/* Held-out tokens are every k-th eligible token counted across caches, up to
 * max_heldout; sinks and window never count. */
static void test_heldout_selection(void)
{
    kvtc_error err;
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 3;
    opt.heldout_every = 3;
    /* Eligible tokens per cache: 5, 7, 4, 0 (too short), 0 (shorter still). */
    const uint32_t lengths[5] = {10, 12, 9, 5, 2};
    for (int capped = 0; capped < 2; capped++) {
        opt.max_heldout = capped ? 2 : 4096;
        kvtc_calibrator *cal;
        CHECK_OK(kvtc_calibrator_create(&SHAPE, &opt, &cal, &err), &err);
        if (!CHECK(cal != NULL))
            return;
        for (int i = 0; i < 5; i++) {
            kvtc_cache *c = make_random_cache(&SHAPE, KVTC_BF16, lengths[i], 0, 4, (uint64_t)i);
            CHECK_OK(kvtc_calibrator_add(cal, c, &err), &err);
            kvtc_cache_free(c);
        }
        /* 16 eligible: tokens 2, 5, 8, 11, 14 held out (per-cache counting would give 4). */
        uint64_t want_heldout = capped ? 2 : 5;
        CHECK_EQ(kvtc_calibrator_rows(cal, KVTC_KEY), 16 - want_heldout);
        CHECK_EQ(kvtc_calibrator_rows(cal, KVTC_VALUE), 16 - want_heldout);
        kvtc_calibration *out = NULL;
        CHECK_OK(kvtc_calibrator_finish(cal, &out, &err), &err);
        if (out) {
            CHECK_EQ(out->kind[0].n_heldout, want_heldout);
            CHECK_EQ(out->kind[1].n_heldout, want_heldout);
            CHECK_EQ(kvtc_calibration_rows(out, KVTC_VALUE), 16 - want_heldout);
        }
        kvtc_calibration_free(out);
        kvtc_calibrator_free(cal);
    }
}

static void test_rejections(void)
{
    kvtc_error err;
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    kvtc_calibrator *cal;
    CHECK_OK(kvtc_calibrator_create(&SHAPE, &opt, &cal, &err), &err);
    if (!CHECK(cal != NULL))
        return;
    kvtc_calibration *out = NULL;
    CHECK_STATUS(kvtc_calibrator_finish(cal, &out, &err), KVTC_E_INVALID, &err);
    CHECK(out == NULL);

    kvtc_model_shape other = SHAPE;
    other.rope_style = KVTC_ROPE_NEOX;
    kvtc_cache *wrong = make_random_cache(&other, KVTC_F16, 200, 0, 2, 1);
    CHECK_STATUS(kvtc_calibrator_add(cal, wrong, &err), KVTC_E_MISMATCH, &err);
    kvtc_cache_free(wrong);

    kvtc_cache *short_cache = make_random_cache(&SHAPE, KVTC_F16, 132, 0, 2, 1);
    CHECK_OK(kvtc_calibrator_add(cal, short_cache, &err), &err);
    CHECK_EQ(kvtc_calibrator_rows(cal, KVTC_KEY), 0);
    kvtc_cache_free(short_cache);

    kvtc_cache *bad = make_random_cache(&SHAPE, KVTC_F32, 300, 0, 2, 1);
    ((float *)kvtc_cache_data(bad, KVTC_VALUE, 1))[(300 + 50) * 8 + 3] = NAN; /* head 1, token 50 */
    CHECK_STATUS(kvtc_calibrator_add(cal, bad, &err), KVTC_E_NUMERIC, &err);
    CHECK_EQ(kvtc_calibrator_rows(cal, KVTC_KEY), 0); /* nothing half-added */
    kvtc_cache_free(bad);

    /* One eligible token: a held-out row but no covariance yet. */
    opt.heldout_every = 1;
    kvtc_calibrator *one;
    CHECK_OK(kvtc_calibrator_create(&SHAPE, &opt, &one, &err), &err);
    kvtc_cache *c = make_random_cache(&SHAPE, KVTC_F16, 133, 0, 2, 1);
    CHECK_OK(kvtc_calibrator_add(one, c, &err), &err);
    CHECK_STATUS(kvtc_calibrator_finish(one, &out, &err), KVTC_E_INVALID, &err);
    kvtc_cache_free(c);
    kvtc_calibrator_free(one);

    opt.heldout_every = 0;
    kvtc_calibrator *refused = NULL;
    CHECK_STATUS(kvtc_calibrator_create(&SHAPE, &opt, &refused, &err), KVTC_E_INVALID, &err);
    CHECK(refused == NULL);
    kvtc_calibrator_free(cal);
}

/* ---- eigensolvers ------------------------------------------------------------ */

#define EIG_P 600
#define EIG_RANK 100
#define EIG_OVERSAMPLE 50
#define EIG_POWER_ITERATIONS 3

/* eigvec ([p][p], row j the j-th eigenvector) and lambda [p] of a covariance
 * eigvec^T diag(lambda) eigvec ([p][p], full, row-major) with lambda_j =
 * (j+1)^-1.5 + 1e-4 for j < true_rank and 0 beyond: the decaying spectrum of
 * real features, whose long flat tail is the hard case for both solvers. */
static double *make_covariance(size_t p, size_t true_rank, double *eigvec, double *lambda,
                               uint64_t seed)
{
    test_rng r;
    rng_seed(&r, seed);
    random_orthogonal(eigvec, p, &r);
    double *cov = calloc(p * p, sizeof(double));
    if (!cov)
        return NULL;
    for (size_t j = 0; j < p; j++) {
        lambda[j] = j < true_rank ? pow((double)(j + 1), -1.5) + 1e-4 : 0.0;
        const double *v = eigvec + j * p;
        for (size_t a = 0; a < p && lambda[j] > 0; a++) {
            double scaled = lambda[j] * v[a];
            for (size_t b = 0; b < p; b++)
                cov[a * p + b] += scaled * v[b];
        }
    }
    return cov;
}

typedef struct eigen_result {
    double values[EIG_RANK];
    float vectors[EIG_P * EIG_RANK];
} eigen_result;

/* Runs one solver on a copy of cov (which the exact one destroys). */
static bool solve(const double *cov, bool randomized, eigen_result *out)
{
    size_t bytes = (size_t)EIG_P * EIG_P * sizeof(double);
    double *a = malloc(bytes);
    if (!CHECK(a != NULL))
        return false;
    memcpy(a, cov, bytes);
    kvtc_error err;
    kvtc_status st =
        randomized ? kvtc_eigen_top_randomized(a, EIG_P, EIG_RANK, EIG_OVERSAMPLE,
                                               EIG_POWER_ITERATIONS, out->values, out->vectors,
                                               &err)
                   : kvtc_eigen_top_exact(a, EIG_P, EIG_RANK, out->values, out->vectors, &err);
    CHECK_OK(st, &err);
    if (randomized)
        CHECK_MSG(memcmp(a, cov, bytes) == 0, "the randomized solver changed its input");
    free(a);
    return st == KVTC_OK;
}

/* Exact and randomized solvers against a covariance of known eigenpairs; the
 * randomized one against the exact one: the precision calibration needs. */
static void test_eigensolvers(void)
{
    double *eigvec = malloc((size_t)EIG_P * EIG_P * sizeof(double));
    double lambda[EIG_P];
    double *cov = eigvec ? make_covariance(EIG_P, EIG_P, eigvec, lambda, 4) : NULL;
    eigen_result *exact = malloc(sizeof *exact), *fast = malloc(sizeof *fast);
    eigen_result *again = malloc(sizeof *again);
    if (!CHECK(cov && exact && fast && again) || !solve(cov, false, exact) ||
        !solve(cov, true, fast) || !solve(cov, true, again))
        goto done;

    double captured_exact = 0, captured_fast = 0;
    for (size_t j = 0; j < EIG_RANK; j++) {
        CHECK_MSG(fabs(exact->values[j] / lambda[j] - 1) < 1e-10,
                  "exact eigenvalue %zu = %.12g, want %.12g", j, exact->values[j], lambda[j]);
        /* Ritz values never exceed the eigenvalues; the leading ones converge
         * fast, the ones near the rank cut slowly. */
        double rel = fast->values[j] / exact->values[j] - 1;
        CHECK_MSG(rel < 1e-12 && rel > (j < EIG_RANK / 2 ? -1e-5 : -0.02),
                  "randomized eigenvalue %zu off by %g", j, rel);
        captured_exact += exact->values[j];
        captured_fast += fast->values[j];
    }
    CHECK_MSG(captured_fast / captured_exact > 1 - 1e-4,
              "randomized basis captures %.8f of the exact variance",
              captured_fast / captured_exact);

    /* Leading vectors: the true ones, with the same sign in both solvers. */
    for (size_t j = 0; j < 16; j++) {
        double dot_true = 0, dot_fast = 0;
        for (size_t i = 0; i < EIG_P; i++) {
            dot_true += exact->vectors[i * EIG_RANK + j] * eigvec[j * EIG_P + i];
            dot_fast +=
                (double)exact->vectors[i * EIG_RANK + j] * fast->vectors[i * EIG_RANK + j];
        }
        CHECK_MSG(fabs(dot_true) > 1 - 1e-6, "exact vector %zu: |<v, true>| = %.9f", j,
                  fabs(dot_true));
        CHECK_MSG(dot_fast > 1 - 1e-5, "vector %zu: <exact, randomized> = %.9f", j, dot_fast);
    }
    /* The whole subspace: |V_exact^T V_fast|_F^2 / rank. */
    double aligned = 0;
    for (size_t j = 0; j < EIG_RANK; j++)
        for (size_t j2 = 0; j2 < EIG_RANK; j2++) {
            double dot = 0;
            for (size_t i = 0; i < EIG_P; i++)
                dot += (double)exact->vectors[i * EIG_RANK + j] * fast->vectors[i * EIG_RANK + j2];
            aligned += dot * dot;
        }
    CHECK_MSG(aligned / EIG_RANK > 0.995, "subspace alignment %.6f", aligned / EIG_RANK);
    check_orthonormal("exact", exact->vectors, EIG_P, EIG_RANK);
    check_orthonormal("randomized", fast->vectors, EIG_P, EIG_RANK);
    CHECK_MSG(memcmp(fast, again, sizeof *fast) == 0, "randomized solver is not deterministic");

    /* Below the size where it pays, kvtc_eigen_top is the exact solver. */
    double *a = malloc((size_t)EIG_P * EIG_P * sizeof(double));
    if (CHECK(a != NULL)) {
        kvtc_error err;
        memcpy(a, cov, (size_t)EIG_P * EIG_P * sizeof(double));
        CHECK_OK(kvtc_eigen_top(a, EIG_P, EIG_RANK, again->values, again->vectors, &err), &err);
        CHECK(memcmp(exact, again, sizeof *exact) == 0);
        free(a);
    }
done:
    free(cov);
    free(eigvec);
    free(exact);
    free(fast);
    free(again);
}

/* Fewer directions than the rank (fewer tokens than features), or none: the
 * surplus columns are still orthonormal and their eigenvalues 0. */
static void test_eigensolvers_rank_deficient(void)
{
    double *eigvec = malloc((size_t)EIG_P * EIG_P * sizeof(double));
    double lambda[EIG_P];
    eigen_result *got = malloc(sizeof *got);
    for (size_t true_rank = 0; true_rank <= 60; true_rank += 60) {
        double *cov = eigvec ? make_covariance(EIG_P, true_rank, eigvec, lambda, 5) : NULL;
        for (int randomized = 0; randomized < 2 && CHECK(cov && got); randomized++) {
            if (!solve(cov, randomized, got))
                continue;
            for (size_t j = 0; j < EIG_RANK; j++)
                CHECK_MSG(fabs(got->values[j] - lambda[j]) < 1e-10 * lambda[0] + 1e-300,
                          "rank %zu, %s: eigenvalue %zu = %g, want %g", true_rank,
                          randomized ? "randomized" : "exact", j, got->values[j], lambda[j]);
            check_orthonormal(randomized ? "randomized, rank deficient" : "exact, rank deficient",
                              got->vectors, EIG_P, EIG_RANK);
        }
        free(cov);
    }
    free(eigvec);
    free(got);
}

/* Every allocation of either solver may fail: each gives a clean
 * KVTC_E_NOMEM and frees what it took. */
typedef struct eigen_case {
    bool randomized;
    const double *cov;
    double *a, lambda0;
} eigen_case;

enum { EIGEN_P = 48, EIGEN_RANK = 6 };

static kvtc_status alloc_eigen(void *arg, kvtc_error *err, bool *wrong)
{
    eigen_case *c = arg;
    double values[EIGEN_RANK];
    float vectors[EIGEN_P * EIGEN_RANK];
    memcpy(c->a, c->cov, EIGEN_P * EIGEN_P * sizeof(double));
    kvtc_status st = c->randomized ? kvtc_eigen_top_randomized(c->a, EIGEN_P, EIGEN_RANK, 4, 1,
                                                               values, vectors, err)
                                   : kvtc_eigen_top_exact(c->a, EIGEN_P, EIGEN_RANK, values,
                                                          vectors, err);
    *wrong = st == KVTC_OK && fabs(values[0] - c->lambda0) > 1e-6;
    return st;
}

static void test_eigensolver_alloc_failures(void)
{
    double *eigvec = malloc(EIGEN_P * EIGEN_P * sizeof(double)), lambda[EIGEN_P];
    double *cov = eigvec ? make_covariance(EIGEN_P, EIGEN_P, eigvec, lambda, 6) : NULL;
    double *a = malloc(EIGEN_P * EIGEN_P * sizeof(double));
    for (int randomized = 0; randomized < 2 && CHECK(cov && a); randomized++) {
        eigen_case c = {randomized, cov, a, lambda[0]};
        test_alloc_sweep(randomized ? "randomized eigensolver" : "exact eigensolver",
                         alloc_eigen, &c, 0);
    }
    free(eigvec);
    free(cov);
    free(a);
}

int main(void)
{
    test_alloc_install(); /* before any other kvtc call */
    test_eigensolver_alloc_failures();
    test_known_covariance();
    test_threads_and_counts();
    test_split_equals_whole();
    test_heldout_selection();
    test_rejections();
    test_eigensolvers();
    test_eigensolvers_rank_deficient();
    return test_summary("test_pca");
}
