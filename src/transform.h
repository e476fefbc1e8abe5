/* The transform stage: feature rows to coefficients on a calibration's PCA
 * basis and back. Rows are as kvtc_cache_gather_rows gives them ([n][p], p =
 * kvtc_shape_features, keys with RoPE undone); coefficients are [n][n_coords],
 * coordinate c on the basis column c of the kind, n_coords <= its rank. One
 * sgemm does each direction: its rounding may depend on the BLAS, the machine
 * and the matrix sizes, so callers that must reproduce a result bit for bit
 * transform the same rows in the same batches. Thread-safe (the calibration
 * is only read). */
#ifndef KVTC_TRANSFORM_H
#define KVTC_TRANSFORM_H

#include "kvtc_internal.h"

/* Centres n rows in place (x - mean, in float), then writes their first
 * n_coords coefficients (x - mean) V[:, :n_coords] into coef. With energy
 * non-NULL, adds the squared centred values to *energy one at a time, in
 * double, in row order (so a running sum over batches is the same sum). */
void kvtc_transform_project(const kvtc_calibration *cal, kvtc_kind kind, float *rows, uint32_t n,
                            uint32_t n_coords, float *coef, double *energy);

/* The features of one layer of n tokens from their first n_coords
 * coefficients: out ([n][n_kv_head * head_dim]) = coef V[layer's rows,
 * :n_coords]^T + mean[layer's rows]. Keys come back with RoPE undone. */
void kvtc_transform_reconstruct_layer(const kvtc_calibration *cal, kvtc_kind kind, uint32_t layer,
                                      const float *coef, uint32_t n, uint32_t n_coords,
                                      float *out);

#endif /* KVTC_TRANSFORM_H */
