/* Principal components: a streaming covariance accumulated in double precision
 * and the top eigenpairs from LAPACK's MRRR solver (dsyevr). */
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

kvtc_status kvtc_eigen_top(double *a, uint32_t p, uint32_t rank, double *eigenvalues,
                           float *vectors, kvtc_error *err)
{
    lapack_int n = (lapack_int)p, il = (lapack_int)(p - rank + 1), found = 0;
    double *w = kvtc_malloc_array(p, sizeof(double));
    double *z = kvtc_malloc_array((size_t)p * rank, sizeof(double));
    lapack_int *isuppz = kvtc_malloc_array(2 * (size_t)rank, sizeof(lapack_int));
    double *work = NULL, work_query = 0;
    lapack_int *iwork = NULL, iwork_query = 0;
    kvtc_status st = KVTC_OK;
    if (!w || !z || !isuppz) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u eigenvectors of length %u", rank,
                       p);
        goto done;
    }
    /* Row-major upper triangle == column-major lower triangle: no transpose copy. */
    lapack_int info = LAPACKE_dsyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', n, a, n, 0, 0, il, n,
                                          0.0, &found, w, z, n, isuppz, &work_query, -1,
                                          &iwork_query, -1);
    if (info != 0) {
        st = kvtc_fail(err, KVTC_E_NUMERIC, "eigensolver workspace query failed (info %d)",
                       (int)info);
        goto done;
    }
    lapack_int lwork = (lapack_int)work_query, liwork = iwork_query;
    work = kvtc_malloc_array((size_t)lwork, sizeof(double));
    iwork = kvtc_malloc_array((size_t)liwork, sizeof(lapack_int));
    if (!work || !iwork) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for the eigensolver workspace");
        goto done;
    }
    info = LAPACKE_dsyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', n, a, n, 0, 0, il, n, 0.0,
                               &found, w, z, n, isuppz, work, lwork, iwork, liwork);
    if (info != 0 || found != (lapack_int)rank) {
        st = kvtc_fail(err, KVTC_E_NUMERIC,
                       "eigensolver failed (info %d, %d of %u eigenpairs found)", (int)info,
                       (int)found, rank);
        goto done;
    }
    /* LAPACK returns ascending order; column j of the result is the j-th largest. */
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
done:
    kvtc_free(w);
    kvtc_free(z);
    kvtc_free(isuppz);
    kvtc_free(work);
    kvtc_free(iwork);
    return st;
}
