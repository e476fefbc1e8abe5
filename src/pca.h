/* Streaming covariance and the symmetric eigensolver behind calibration. */
#ifndef KVTC_PCA_H
#define KVTC_PCA_H

#include "kvtc_internal.h"

/* Running sums of rows in double precision, taken around a fixed reference
 * vector (the mean of the first batch) so that large means do not cancel the
 * variance away. */
typedef struct kvtc_cov {
    uint32_t p;
    uint32_t batch_rows; /* most rows one kvtc_cov_add takes */
    uint64_t n;          /* rows accumulated */
    double *ref;         /* [p] reference, set by the first batch */
    double *sum;         /* [p] sum of (x - ref) */
    double *cross;       /* [p][p] upper triangle of sum of (x - ref)(x - ref)^T */
    double *centred;     /* [batch_rows][p] scratch */
} kvtc_cov;

kvtc_status kvtc_cov_init(kvtc_cov *c, uint32_t p, uint32_t batch_rows, kvtc_error *err);
void kvtc_cov_release(kvtc_cov *c);
/* Adds n <= batch_rows rows ([n][p], all finite). */
void kvtc_cov_add(kvtc_cov *c, const float *rows, uint32_t n);
/* Mean [p] and sample covariance [p][p] (full upper triangle, row-major; the
 * lower triangle is left undefined) of the rows added; needs n >= 2. */
void kvtc_cov_result(const kvtc_cov *c, double *mean, double *cov);

/* The `rank` largest eigenpairs of the symmetric positive semi-definite matrix
 * a ([p][p], upper triangle read, contents destroyed): eigenvalues decreasing
 * (negative rounding noise clamped to 0) and vectors [p][rank] row-major,
 * column j the j-th, each signed so that its largest-magnitude component (the
 * first such) is positive. Exact for p <= 2048 or a rank over about p / 6,
 * randomized subspace iteration otherwise (captured variance within about
 * 1e-4 of exact); both deterministic for a given BLAS and BLAS thread count.
 * KVTC_E_NUMERIC if LAPACK fails. */
kvtc_status kvtc_eigen_top(double *a, uint32_t p, uint32_t rank, double *eigenvalues,
                           float *vectors, kvtc_error *err);
/* The two paths of kvtc_eigen_top, same contract, callable directly (tests,
 * measurements). */
kvtc_status kvtc_eigen_top_exact(double *a, uint32_t p, uint32_t rank, double *eigenvalues,
                                 float *vectors, kvtc_error *err);
/* Rayleigh-Ritz on orth(C^(power_iterations + 1) omega), omega a fixed
 * pseudo-random p x min(rank + oversample, p); a is left intact. */
kvtc_status kvtc_eigen_top_randomized(const double *a, uint32_t p, uint32_t rank,
                                      uint32_t oversample, uint32_t power_iterations,
                                      double *eigenvalues, float *vectors, kvtc_error *err);

#endif /* KVTC_PCA_H */
