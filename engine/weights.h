/* The engine's weight matrices, kept in the GGUF's own blocks (Q4_K, Q6_K,
 * Q8_0, ...) or in f32, and the two products the forward pass needs from
 * them: a matrix-vector product for decode, fused with dequantization, and a
 * matrix product for prefill, which dequantizes tiles of rows to f32 for
 * sgemm. Both give the f32 dequantization's products up to rounding (scales
 * are applied per block, after the sum). */
#ifndef KVTC_ENGINE_WEIGHTS_H
#define KVTC_ENGINE_WEIGHTS_H

#include "kvtc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Up to three row ranges of one matrix may differ in type (a GGUF stores
 * Q, K and V, or gate and up, as separate tensors). */
#define WEIGHT_MAX_PARTS 3

typedef struct weight_part {
    uint32_t type;    /* kvtc_ggml_type: F32 or a block type of weight_type_supported */
    uint32_t rows;
    size_t row_bytes; /* bytes of one row in that type */
    const uint8_t *data;
} weight_part;

typedef struct weight_matrix {
    uint32_t rows, cols; /* row-major [rows][cols]; rows = sum of the parts' */
    uint32_t n_parts;
    weight_part part[WEIGHT_MAX_PARTS];
} weight_matrix;

/* Whether the engine keeps a tensor of this type as it is (F32 and the block
 * types below); others (F16, BF16) are converted to f32 at load. */
bool weight_type_kept(uint32_t type);
/* Bytes of one row of cols elements in `type`; 0 when cols is not a whole
 * number of its blocks or the type is unknown. */
size_t weight_row_bytes(uint32_t type, uint64_t cols);
/* Bytes the matrix holds. */
size_t weight_bytes(const weight_matrix *w);

/* Row r (of all the parts') dequantized to f32: cols floats. */
void weight_row_f32(const weight_matrix *w, uint32_t r, float *out);
/* The whole matrix to f32, [rows][cols]. */
void weight_to_f32(const weight_matrix *w, float *out);
/* A matrix of one f32 part over data [rows][cols]. */
weight_matrix weight_f32_matrix(const float *data, uint32_t rows, uint32_t cols);
/* The matrix's f32 data when it is one f32 part, else NULL. */
const float *weight_f32_data(const weight_matrix *w);

/* y[rows] (+)= W x on n_threads threads (each row is computed by one thread,
 * so the result does not depend on their count). */
kvtc_status weight_matvec(const weight_matrix *w, const float *x, float *y, bool accumulate,
                          uint32_t n_threads, kvtc_error *err);

/* Floats of the f32 panel weight_matmul dequantizes tiles of rows into. */
#define WEIGHT_PANEL_FLOATS (4u << 20)

/* C[m][rows] (ldc) = A[m][cols] (lda) W^T + beta C, through sgemm; quantized
 * parts are dequantized a tile of rows at a time into panel
 * (WEIGHT_PANEL_FLOATS floats, or NULL when every part is f32). */
kvtc_status weight_matmul(const weight_matrix *w, uint32_t m, const float *a, uint32_t lda,
                          float beta, float *c, uint32_t ldc, float *panel, uint32_t n_threads,
                          kvtc_error *err);

/* ---- kernels (weights.c, weights_avx2.c) ------------------------------------ */

/* Dot product of one row (n_blocks blocks of `type`) with x. xsum holds the
 * sums of x over each 32 elements (the types with a min use them). */
typedef float (*weight_dot_fn)(const uint8_t *row, const float *x, const float *xsum,
                               uint32_t n_blocks);
/* The portable C form, for every kept type. */
float weight_dot_portable(uint32_t type, const uint8_t *row, const float *x, uint32_t cols);
/* The fastest kernel this CPU runs for the type (NULL: use the portable form). */
weight_dot_fn weight_dot_kernel(uint32_t type);
/* sums of x over each 32 elements, cols / 32 of them (cols a multiple of 32) */
void weight_xsum(const float *x, uint32_t cols, float *xsum);

#if defined(__x86_64__) && defined(__GNUC__)
#define WEIGHT_HAVE_AVX2 1
/* AVX2 + FMA kernels; NULL for a type without one. */
weight_dot_fn weight_dot_avx2(uint32_t type);
#endif

#endif /* KVTC_ENGINE_WEIGHTS_H */
