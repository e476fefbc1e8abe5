/* CPU kernels chosen at run time: the bf16 tile product the inverse
 * projection runs on where the CPU has bf16 dot products (Intel AMX tiles, or
 * AVX512-BF16; elsewhere, or when kvtc_kernels_limit turned them off, callers
 * keep the OpenBLAS sgemm, which makes its own choice among AVX-512, AVX2 and
 * portable kernels), and AVX2
 * forms of the per-element stages (dtype conversion, RoPE) that give the
 * portable code's bytes.
 *
 * The tile product computes C = A B^T in float from bf16 operands. Each float
 * operand is split into `terms` bf16 parts: 1 (x ~ hi, 8 significant bits) or
 * 3 (x ~ hi + lo, products hi*hi + lo*hi + hi*lo, about 16 bits: a result
 * within a few float roundings of sgemm's). The parts are laid along k, so the
 * kernel is one plain bf16 product over terms * kp columns. Thread-safe. */
#ifndef KVTC_KERNELS_H
#define KVTC_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether this compiler has the AMX and AVX512-BF16 intrinsics (gcc 11, clang
 * 12 on). */
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define KVTC_HAVE_TILE_INTRINSICS 1
#else
#define KVTC_HAVE_TILE_INTRINSICS 0
#endif

typedef enum kvtc_kernel_level {
    KVTC_KERNELS_PORTABLE = 0, /* C loops; sgemm (OpenBLAS picks its own kernels) */
    KVTC_KERNELS_AVX2 = 1,     /* AVX2 + F16C conversions and RoPE; sgemm */
    KVTC_KERNELS_AVX512_BF16 = 2, /* and the tile product on AVX512-BF16 dot products */
    KVTC_KERNELS_AMX_BF16 = 3  /* and on bf16 tiles */
} kvtc_kernel_level;

/* The best level this CPU and OS allow (asking Linux for the tile state
 * once), capped by kvtc_kernels_limit. */
kvtc_kernel_level kvtc_kernels_level(void);
/* Caps the level for the whole process (tests compare the paths). */
void kvtc_kernels_limit(kvtc_kernel_level max);
const char *kvtc_kernels_name(kvtc_kernel_level level);

/* k rounded up to the tile depth (32). */
uint32_t kvtc_tile_depth(uint32_t k);
/* Rows of A: row r of src (k floats, leading dimension lda) into dst row r
 * (terms * kp bf16, zero past k). */
void kvtc_tile_pack_a(const float *src, size_t lda, uint32_t rows, uint32_t k, uint32_t terms,
                      uint16_t *dst);
/* Rows of B (n rows of k floats, leading dimension ldb; n a multiple of 16)
 * into the tiles' pair-interleaved layout (n * terms * kp bf16). */
void kvtc_tile_pack_b(const float *src, size_t ldb, uint32_t n, uint32_t k, uint32_t terms,
                      uint16_t *dst);
/* c[m][n] (leading dimension ldc) = bias + A B^T over the first kp columns
 * of each term (A packed with depth kp, B with depth kp_b >= kp); bias (n
 * floats, added to every row, as the accumulators' start) may be NULL; n a
 * multiple of 16. Only when kvtc_kernels_level() >= KVTC_KERNELS_AVX512_BF16:
 * on the tiles at KVTC_KERNELS_AMX_BF16 (kernels_amx.c), else on AVX512-BF16
 * (kernels_avx512.c); the two differ only in the order of float additions. */
void kvtc_tile_gemm(const uint16_t *a, uint32_t m, uint32_t kp, const uint16_t *b, uint32_t kp_b,
                    uint32_t n, uint32_t terms, const float *bias, float *c, size_t ldc);
#if KVTC_HAVE_TILE_INTRINSICS
/* The two forms, defined only where the compiler has their intrinsics. */
void kvtc_tile_gemm_amx(const uint16_t *a, uint32_t m, uint32_t kp, const uint16_t *b,
                        uint32_t kp_b, uint32_t n, uint32_t terms, const float *bias, float *c,
                        size_t ldc);
void kvtc_tile_gemm_avx512(const uint16_t *a, uint32_t m, uint32_t kp, const uint16_t *b,
                           uint32_t kp_b, uint32_t n, uint32_t terms, const float *bias, float *c,
                           size_t ldc);
#endif

/* AVX2 kernels (kernels_avx2.c), only when kvtc_kernels_level() >=
 * KVTC_KERNELS_AVX2: the bytes of kvtc_f32_to_f16 / kvtc_f32_to_bf16 on each
 * element, and kvtc_rope_apply's values for interleaved pairs. */
void kvtc_f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n);
void kvtc_f32_to_bf16_avx2(const float *src, uint16_t *dst, size_t n);
void kvtc_rope_interleaved_avx2(float *head, const float *cos_t, const float *sin_t,
                                uint32_t half, bool inverse);

#endif /* KVTC_KERNELS_H */
