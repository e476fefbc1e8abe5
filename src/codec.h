/* Internal entry points of the codec (codec.c) beyond the public API. */
#ifndef KVTC_CODEC_H
#define KVTC_CODEC_H

#include "kvtc_internal.h"

/* The dequantized coefficients of every coded token of a stream, for one kind:
 * [*n_coded][*n_coords] floats in token order, freed with kvtc_free. These are
 * the exact values the format defines; the reconstruction from them goes
 * through BLAS, whose low bits may vary between machines. */
kvtc_status kvtc_stream_coefficients(const kvtc_calibration *cal, const void *data, size_t len,
                                     kvtc_kind kind, float **coef, uint32_t *n_coded,
                                     uint32_t *n_coords, kvtc_error *err);

#endif /* KVTC_CODEC_H */
