/* Principal components: a streaming covariance accumulated in double precision
 * and its top eigenpairs, exact (LAPACK's tridiagonal reduction and MRRR) or,
 * for a rank well short of a large p, by randomized subspace iteration. */
#include "pca.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

kvtc_status kvtc_cov_init(kvtc_cov *c, uint32_t p, uint32_t batch_rows, kvtc_error *err)
{
    memset(c, 0, sizeof *c);
    c->p = p;
    c->batch_rows = batch_rows;
    c->ref = kvtc_calloc(p, sizeof(double));
    c->sum = kvtc_calloc(p, sizeof(double));
    c->cross = kvtc_calloc((size_t)p * p, sizeof(double));
    c->centred = kvtc_malloc_array((size_t)batch_rows * p, sizeof(double));
    if (!c->ref || !c->sum || !c->cross || !c->centred) {
        kvtc_cov_release(c);
        return kvtc_fail(err, KVTC_E_NOMEM,
                         "out of memory for a %u x %u covariance (%.1f GiB); lower the number "
                         "of features",
                         p, p, (double)p * p * 8.0 / (1u << 30));
    }
    return KVTC_OK;
}

void kvtc_cov_release(kvtc_cov *c)
{
    kvtc_free(c->ref);
    kvtc_free(c->sum);
    kvtc_free(c->cross);
    kvtc_free(c->centred);
    memset(c, 0, sizeof *c);
}

void kvtc_cov_add(kvtc_cov *c, const float *rows, uint32_t n)
{
    size_t p = c->p;
    if (n == 0)
        return;
    if (c->n == 0) {
        for (uint32_t t = 0; t < n; t++)
            for (size_t i = 0; i < p; i++)
                c->ref[i] += rows[t * p + i];
        for (size_t i = 0; i < p; i++)
            c->ref[i] /= n;
    }
    for (uint32_t t = 0; t < n; t++) {
        double *dst = c->centred + t * p;
        for (size_t i = 0; i < p; i++) {
            dst[i] = (double)rows[t * p + i] - c->ref[i];
            c->sum[i] += dst[i];
        }
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)p, (int)n, 1.0, c->centred, (int)p,
                1.0, c->cross, (int)p);
    c->n += n;
}

void kvtc_cov_result(const kvtc_cov *c, double *mean, double *cov)
{
    size_t p = c->p;
    double n = (double)c->n;
    /* cov = (S - n d d^T) / (n - 1) with d = mean - ref, all around ref. */
    for (size_t i = 0; i < p; i++) {
        double di = c->sum[i] / n;
        mean[i] = c->ref[i] + di;
        for (size_t j = i; j < p; j++)
            cov[i * p + j] = (c->cross[i * p + j] - n * di * (c->sum[j] / n)) / (n - 1.0);
    }
}

/* Which solver. The exact one costs a tridiagonal reduction, (4/3) p^3 flops
 * half of them memory bound, whatever the rank; the randomized one costs
 * (q + 2) products C X, X p x k with k = rank + oversample, plus QR and a
 * k x k eigenproblem, all BLAS 3. Measured at p = 5760 on one thread (CPU
 * seconds, OpenBLAS SkylakeX / Prescott kernels): exact 26 / 44 s at any rank;
 * randomized 5.5 / 22 s for rank 512 (k = 768), 14 s for rank 1024 (k = 1536),
 * 28 / 115 s for rank 2048 with k = 2304 and 40 s with k = 3072. So it takes
 * over where k <= p / 4, and only where the exact solver takes more than a few
 * seconds. */
#define RANDOMIZED_MIN_P 2048u
#define RANDOMIZED_MIN_P_PER_COLUMN 4u /* p / (rank + oversample) at least */

/* Oversample rank / 2 (at least the minimum) and 3 power iterations keep the
 * captured variance (sum of the top-rank eigenvalues) within 4e-5 of exact,
 * relative, on a (i+1)^-1.5 spectrum with a noise floor and within 2e-5 on
 * one shaped like the default model's (p = 600..5760); 2 iterations or an
 * oversample of rank / 4 do 3-4x worse. */
#define RANDOMIZED_MIN_OVERSAMPLE 32u
#define RANDOMIZED_POWER_ITERATIONS 3u
#define RANDOMIZED_SEED 0x6b767463u /* fixed: the same covariance gives the same basis */

/* The eigenpairs il..n (ascending, 1-based) of the n x n symmetric matrix a
 * (column-major lower triangle, destroyed): values into w [n], vectors into z
 * [n][n - il + 1] column-major. This is dsyevr taken apart: for a subset
 * dsyevr switches to bisection and inverse iteration, which reorthogonalizes
 * every cluster of eigenvalues closer than 1e-3 |A|, and the long tail of a
 * covariance spectrum is one such cluster (quadratic in its size: 33 of the
 * 60-76 CPU seconds dsyevr takes at p = 5760, rank 2048); MRRR (dstemr)
 * computes the subset without reorthogonalizing. */
/* OpenBLAS 0.3.21's dsymv kernel (called by dsytrd) reads past the end of the
 * workspace dsytrd's own size query asks for: under ThreadSanitizer's
 * allocator that read crossed into an unmapped page. The workspace gets this
 * much zeroed slack (dsyevr's larger workspace hid it before). */
#define SYMV_OVERREAD_SLACK 4096

static kvtc_status eigen_range(double *a, lapack_int n, lapack_int il, double *w, double *z,
                               kvtc_error *err)
{
    lapack_int want = n - il + 1, found = 0, liwork = 0, info;
    lapack_logical try_relative_accuracy = 1;
    double *diagonal = kvtc_malloc_array((size_t)n, sizeof(double));
    double *off_diagonal = kvtc_malloc_array((size_t)n, sizeof(double));
    double *tau = kvtc_malloc_array((size_t)n, sizeof(double));
    lapack_int *isuppz = kvtc_malloc_array(2 * (size_t)want, sizeof(lapack_int));
    double *work = NULL, query[3] = {0, 0, 0};
    lapack_int *iwork = NULL;
    kvtc_status st = KVTC_OK;
    if (!diagonal || !off_diagonal || !tau || !isuppz) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a %d x %d eigenproblem", (int)n,
                       (int)n);
        goto done;
    }
    info = LAPACKE_dsytrd_work(LAPACK_COL_MAJOR, 'L', n, a, n, diagonal, off_diagonal, tau,
                               &query[0], -1);
    if (info == 0)
        info = LAPACKE_dstemr_work(LAPACK_COL_MAJOR, 'V', 'I', n, diagonal, off_diagonal, 0, 0,
                                   il, n, &found, w, z, n, want, isuppz, &try_relative_accuracy,
                                   &query[1], -1, &liwork, -1);
    if (info == 0)
        info = LAPACKE_dormtr_work(LAPACK_COL_MAJOR, 'L', 'L', 'N', n, want, a, n, tau, z, n,
                                   &query[2], -1);
    if (info != 0) {
        st = kvtc_fail(err, KVTC_E_NUMERIC, "eigensolver workspace query failed (info %d)",
                       (int)info);
        goto done;
    }
    double most = query[0] > query[1] ? query[0] : query[1];
    lapack_int lwork = (lapack_int)(most > query[2] ? most : query[2]);
    work = kvtc_calloc((size_t)lwork + SYMV_OVERREAD_SLACK, sizeof(double));
    iwork = kvtc_malloc_array((size_t)liwork, sizeof(lapack_int));
    if (!work || !iwork) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for the eigensolver workspace");
        goto done;
    }
    info = LAPACKE_dsytrd_work(LAPACK_COL_MAJOR, 'L', n, a, n, diagonal, off_diagonal, tau,
                               work, lwork);
    if (info == 0)
        info = LAPACKE_dstemr_work(LAPACK_COL_MAJOR, 'V', 'I', n, diagonal, off_diagonal, 0, 0,
                                   il, n, &found, w, z, n, want, isuppz, &try_relative_accuracy,
                                   work, lwork, iwork, liwork);
    if (info == 0 && found == want)
        info = LAPACKE_dormtr_work(LAPACK_COL_MAJOR, 'L', 'L', 'N', n, want, a, n, tau, z, n,
                                   work, lwork);
    if (info != 0 || found != want)
        st = kvtc_fail(err, KVTC_E_NUMERIC,
                       "eigensolver failed (info %d, %d of %d eigenpairs found)", (int)info,
                       (int)found, (int)want);
done:
    kvtc_free(diagonal);
    kvtc_free(off_diagonal);
    kvtc_free(tau);
    kvtc_free(isuppz);
    kvtc_free(work);
    kvtc_free(iwork);
    return st;
}

/* z [p][rank] column-major and w hold eigenpairs in ascending order: writes
 * them largest first, with the sign convention of kvtc_eigen_top. */
static void store_descending(const double *z, const double *w, size_t p, uint32_t rank,
                             double *eigenvalues, float *vectors)
{
    for (uint32_t j = 0; j < rank; j++) {
        const double *v = z + (size_t)(rank - 1 - j) * p;
        size_t big = 0;
        for (size_t i = 1; i < p; i++)
            if (fabs(v[i]) > fabs(v[big]))
                big = i;
        double sign = v[big] < 0 ? -1.0 : 1.0;
        for (size_t i = 0; i < p; i++)
            vectors[i * rank + j] = (float)(sign * v[i]);
        double lambda = w[rank - 1 - j];
        eigenvalues[j] = lambda > 0 ? lambda : 0.0;
    }
}

kvtc_status kvtc_eigen_top_exact(double *a, uint32_t p, uint32_t rank, double *eigenvalues,
                                 float *vectors, kvtc_error *err)
{
    double *w = kvtc_malloc_array(p, sizeof(double));
    double *z = kvtc_malloc_array((size_t)p * rank, sizeof(double));
    kvtc_status st;
    if (!w || !z) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u eigenvectors of length %u", rank,
                       p);
    } else {
        /* Row-major upper triangle == column-major lower triangle: no transpose copy. */
        st = eigen_range(a, (lapack_int)p, (lapack_int)(p - rank + 1), w, z, err);
        if (st == KVTC_OK)
            store_descending(z, w, p, rank, eigenvalues, vectors);
    }
    kvtc_free(w);
    kvtc_free(z);
    return st;
}

/* Uniform in [-1, 1) from splitmix64. */
static double next_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1p-52 - 1.0;
}

/* Overwrites the p x k column-major x with an orthonormal basis of its range
 * (Householder QR: stays orthonormal even when x is rank deficient). */
static kvtc_status orthonormalize(double *x, lapack_int p, lapack_int k, double *tau,
                                  double *work, lapack_int lwork, kvtc_error *err)
{
    lapack_int info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, p, k, x, p, tau, work, lwork);
    if (info == 0)
        info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, p, k, k, x, p, tau, work, lwork);
    if (info != 0)
        return kvtc_fail(err, KVTC_E_NUMERIC, "QR factorization failed (info %d)", (int)info);
    return KVTC_OK;
}

kvtc_status kvtc_eigen_top_randomized(const double *a, uint32_t p, uint32_t rank,
                                      uint32_t oversample, uint32_t power_iterations,
                                      double *eigenvalues, float *vectors, kvtc_error *err)
{
    lapack_int n = (lapack_int)p;
    lapack_int k = (lapack_int)(oversample < p - rank ? rank + oversample : p);
    double *basis = kvtc_malloc_array((size_t)p * k, sizeof(double));
    double *image = kvtc_malloc_array((size_t)p * k, sizeof(double));
    double *small = kvtc_malloc_array((size_t)k * k, sizeof(double));
    double *ritz_vectors = kvtc_malloc_array((size_t)k * rank, sizeof(double));
    double *ritz_values = kvtc_malloc_array((size_t)k, sizeof(double));
    double *tau = kvtc_malloc_array((size_t)k, sizeof(double));
    double *work = NULL, query[2] = {0, 0};
    kvtc_status st = KVTC_OK;
    if (!basis || !image || !small || !ritz_vectors || !ritz_values || !tau) {
        st = kvtc_fail(err, KVTC_E_NOMEM,
                       "out of memory for a randomized eigensolver of %u x %d", p, (int)k);
        goto done;
    }
    lapack_int info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, n, k, basis, n, tau, &query[0], -1);
    if (info == 0)
        info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, n, k, k, basis, n, tau, &query[1], -1);
    if (info != 0) {
        st = kvtc_fail(err, KVTC_E_NUMERIC, "QR workspace query failed (info %d)", (int)info);
        goto done;
    }
    lapack_int lwork = (lapack_int)(query[0] > query[1] ? query[0] : query[1]);
    work = kvtc_malloc_array((size_t)lwork, sizeof(double));
    if (!work) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for the QR workspace");
        goto done;
    }
    uint64_t state = RANDOMIZED_SEED;
    for (size_t i = 0; i < (size_t)p * k; i++)
        basis[i] = next_uniform(&state);
    /* basis <- orth(C^(q+1) omega); a is C's column-major lower triangle. */
    for (uint32_t it = 0; it <= power_iterations; it++) {
        cblas_dsymm(CblasColMajor, CblasLeft, CblasLower, n, k, 1.0, a, n, basis, n, 0.0,
                    image, n);
        st = orthonormalize(image, n, k, tau, work, lwork, err);
        if (st != KVTC_OK)
            goto done;
        double *swap = basis;
        basis = image;
        image = swap;
    }
    /* Rayleigh-Ritz: the top eigenpairs of Q^T C Q, lifted back by Q. */
    cblas_dsymm(CblasColMajor, CblasLeft, CblasLower, n, k, 1.0, a, n, basis, n, 0.0, image, n);
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, k, k, n, 1.0, basis, n, image, n, 0.0,
                small, k);
    st = eigen_range(small, k, k - (lapack_int)rank + 1, ritz_values, ritz_vectors, err);
    if (st != KVTC_OK)
        goto done;
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, (lapack_int)rank, k, 1.0, basis,
                n, ritz_vectors, k, 0.0, image, n);
    store_descending(image, ritz_values, p, rank, eigenvalues, vectors);
done:
    kvtc_free(basis);
    kvtc_free(image);
    kvtc_free(small);
    kvtc_free(ritz_vectors);
    kvtc_free(ritz_values);
    kvtc_free(tau);
    kvtc_free(work);
    return st;
}

kvtc_status kvtc_eigen_top(double *a, uint32_t p, uint32_t rank, double *eigenvalues,
                           float *vectors, kvtc_error *err)
{
    uint32_t oversample = rank / 2 > RANDOMIZED_MIN_OVERSAMPLE ? rank / 2
                                                               : RANDOMIZED_MIN_OVERSAMPLE;
    if (p > RANDOMIZED_MIN_P &&
        ((uint64_t)rank + oversample) * RANDOMIZED_MIN_P_PER_COLUMN <= p)
        return kvtc_eigen_top_randomized(a, p, rank, oversample, RANDOMIZED_POWER_ITERATIONS,
                                         eigenvalues, vectors, err);
    return kvtc_eigen_top_exact(a, p, rank, eigenvalues, vectors, err);
}
