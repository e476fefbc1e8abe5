/* The transform stage: feature rows to coefficients on a calibration's PCA
 * basis and back. Rows are as kvtc_cache_gather_rows gives them ([n][p], p =
 * kvtc_shape_features, keys with RoPE undone); coefficients are [n][n_coords],
 * coordinate c on the basis column c of the kind, n_coords <= its rank. One
 * sgemm does each direction: its rounding may depend on the BLAS, the machine
 * and the matrix sizes, so callers that must reproduce a result bit for bit
 * transform the same rows in the same batches. Decoding may reconstruct on
 * bf16 tiles instead (below). Thread-safe (the calibration is only read,
 * but for its packed tiles, made once under a lock). */
#ifndef KVTC_TRANSFORM_H
#define KVTC_TRANSFORM_H

#include "kvtc_internal.h"

/* Centres n rows in place (x - mean, in float), then writes their first
 * n_coords coefficients (x - mean) V[:, :n_coords] into coef. With energy
 * non-NULL, adds the squared centred values to *energy one at a time, in
 * double, in row order (so a running sum over batches is the same sum).
 * n_coords may be 0 (coef unused): the energy around the mean alone. */
void kvtc_transform_project(const kvtc_calibration *cal, kvtc_kind kind, float *rows, uint32_t n,
                            uint32_t n_coords, float *coef, double *energy);

/* The features of one layer of n tokens from their first n_coords
 * coefficients: out ([n][n_kv_head * head_dim]) = coef V[layer's rows,
 * :n_coords]^T + mean[layer's rows]. Keys come back with RoPE undone. */
void kvtc_transform_reconstruct_layer(const kvtc_calibration *cal, kvtc_kind kind, uint32_t layer,
                                      const float *coef, uint32_t n, uint32_t n_coords,
                                      float *out);

/* The same reconstruction on bf16 tiles (kernels.h), where
 * kvtc_transform_tiles_usable says so: the coefficients packed once per
 * decode with kvtc_transform_tile_coefficients, the basis once per
 * calibration (kvtc_transform_tile_basis), both with the plan's number of
 * bf16 terms (kvtc_transform_tile_terms). Each row's value depends only on
 * that row: the same bytes for any split of the tokens into blocks or
 * threads. */
bool kvtc_transform_tiles_usable(const kvtc_calibration *cal);
/* 1 term (operands rounded to bf16: about 2^-8 of sum |c v| per value, a
 * relative squared error near 1e-5) where the plan's own error, from the
 * calibration's error table, is at least KVTC_TILE_ONE_TERM_ERROR (so the
 * tiles add at most about 1% to it); else 3 terms (within 2^-15 of sum |c v|,
 * a few float roundings of the sgemm path). */
#define KVTC_TILE_ONE_TERM_ERROR 1e-3
uint32_t kvtc_transform_tile_terms(const kvtc_calibration *cal, const kvtc_plan *plan);
/* bf16 elements per packed coefficient row. */
size_t kvtc_transform_tile_row(uint32_t n_coords, uint32_t terms);
/* n rows of n_coords coefficients (leading dimension ld) into packed rows. */
void kvtc_transform_tile_coefficients(const float *coef, size_t ld, uint32_t n,
                                      uint32_t n_coords, uint32_t terms, uint16_t *packed);
/* The kind's basis packed for at least n_coords columns: made on first use
 * (under a lock; later calls only look it up), kept until the calibration is
 * freed. NULL when out of memory. */
const struct kvtc_tile_basis *kvtc_transform_tile_basis(const kvtc_calibration *cal,
                                                        kvtc_kind kind, uint32_t n_coords,
                                                        uint32_t terms);
void kvtc_transform_reconstruct_tiles(const kvtc_calibration *cal, kvtc_kind kind,
                                      uint32_t layer, const uint16_t *packed, uint32_t n,
                                      uint32_t n_coords, const struct kvtc_tile_basis *basis,
                                      float *out);
/* Frees the packed bases of kvtc_transform_tile_basis. */
void kvtc_transform_release_tiles(kvtc_calibration *cal);

#endif /* KVTC_TRANSFORM_H */
