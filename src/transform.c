/* The transform stage: project feature rows onto the PCA basis, reconstruct
 * a layer's features from coefficients (transform.h). */
#include "transform.h"

#include <cblas.h>

void kvtc_transform_project(const kvtc_calibration *cal, kvtc_kind kind, float *rows, uint32_t n,
                            uint32_t n_coords, float *coef, double *energy)
{
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    size_t p = (size_t)kvtc_shape_features(&cal->shape);
    for (size_t t = 0; t < n; t++) {
        float *row = rows + t * p;
        for (size_t j = 0; j < p; j++)
            row[j] -= ck->mean[j];
        if (energy)
            for (size_t j = 0; j < p; j++)
                *energy += (double)row[j] * row[j];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n_coords, (int)p, 1.0f,
                rows, (int)p, ck->basis, (int)ck->rank, 0.0f, coef, (int)n_coords);
}

void kvtc_transform_reconstruct_layer(const kvtc_calibration *cal, kvtc_kind kind, uint32_t layer,
                                      const float *coef, uint32_t n, uint32_t n_coords,
                                      float *out)
{
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    size_t hd = (size_t)cal->shape.n_kv_head * cal->shape.head_dim;
    const float *mean = ck->mean + layer * hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)hd, (int)n_coords, 1.0f,
                coef, (int)n_coords, ck->basis + layer * hd * ck->rank, (int)ck->rank, 0.0f, out,
                (int)hd);
    for (size_t t = 0; t < n; t++)
        for (size_t j = 0; j < hd; j++)
            out[t * hd + j] += mean[j];
}
