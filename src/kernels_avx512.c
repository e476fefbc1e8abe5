/* The bf16 tile product on AVX512-BF16 dot products (kernels.h), for CPUs
 * that have them but no AMX tiles (AMD Zen 4 on, Intel Cooper Lake). The
 * packed operands are the tiles' own: B's pair-interleaved rows are exactly
 * what vdpbf16ps takes (lane j: columns j's pair (k, k+1)), and A's pair
 * (k, k+1) is broadcast to every lane. Compiled for any x86-64 target: the
 * instructions are enabled per function and run only after
 * kvtc_kernels_level found them; absent where the compiler lacks them. */
#include "kernels.h"

#include <string.h>

#if KVTC_HAVE_TILE_INTRINSICS
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bf16")))
#define INLINE static inline __attribute__((always_inline))

/* Rows of A per block and 16-column tiles of B per block: 24 accumulators,
 * 4 B registers and a broadcast A pair out of the 32 vector registers. */
enum { MR = 6, NT = 4 };

typedef struct product {
    const uint16_t *a, *b;
    size_t depth, depth_b; /* bf16 per row of A; per column of B */
    uint32_t kp, kp_b, terms;
    const float *bias;
    float *c;
    size_t ldc;
} product;

/* c[rows][16 tiles] at (m0, n0) = bias + A B^T; rows and tiles are constants
 * once inlined, and the loops over them unrolled (which -O2 does not do by
 * itself), so the accumulators live in registers, not on the stack. */
#define UNROLL _Pragma("GCC unroll 8")
INLINE TARGET void block(const product *p, uint32_t m0, uint32_t n0, uint32_t rows,
                         uint32_t tiles)
{
    __m512 acc[MR][NT];
    UNROLL for (uint32_t j = 0; j < tiles; j++) {
        __m512 start = p->bias ? _mm512_loadu_ps(p->bias + n0 + 16 * j) : _mm512_setzero_ps();
        UNROLL for (uint32_t r = 0; r < rows; r++)
            acc[r][j] = start;
    }
    const uint16_t *a = p->a + (size_t)m0 * p->depth, *b = p->b + (size_t)n0 * p->depth_b;
    for (uint32_t t = 0; t < p->terms; t++) {
        const uint16_t *at = a + (size_t)t * p->kp, *bt = b + (size_t)t * p->kp_b * 16;
        for (uint32_t k = 0; k < p->kp; k += 2) {
            __m512bh bv[NT];
            UNROLL for (uint32_t j = 0; j < tiles; j++)
                bv[j] = (__m512bh)_mm512_loadu_si512(bt + 16 * (j * p->depth_b + k));
            UNROLL for (uint32_t r = 0; r < rows; r++) {
                int32_t pair;
                memcpy(&pair, at + r * p->depth + k, sizeof pair);
                __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
                UNROLL for (uint32_t j = 0; j < tiles; j++)
                    acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
            }
        }
    }
    float *c = p->c + (size_t)m0 * p->ldc + n0;
    UNROLL for (uint32_t r = 0; r < rows; r++)
        UNROLL for (uint32_t j = 0; j < tiles; j++)
            _mm512_storeu_ps(c + r * p->ldc + 16 * j, acc[r][j]);
}

#define ROWS_CASES(tiles)                                                                         \
    switch (rows) {                                                                               \
    case 1: block(p, m0, n0, 1, tiles); break;                                                    \
    case 2: block(p, m0, n0, 2, tiles); break;                                                    \
    case 3: block(p, m0, n0, 3, tiles); break;                                                    \
    case 4: block(p, m0, n0, 4, tiles); break;                                                    \
    case 5: block(p, m0, n0, 5, tiles); break;                                                    \
    default: block(p, m0, n0, MR, tiles); break;                                                  \
    }

static TARGET void block_1(const product *p, uint32_t m0, uint32_t n0, uint32_t rows)
{
    ROWS_CASES(1)
}
static TARGET void block_2(const product *p, uint32_t m0, uint32_t n0, uint32_t rows)
{
    ROWS_CASES(2)
}
static TARGET void block_3(const product *p, uint32_t m0, uint32_t n0, uint32_t rows)
{
    ROWS_CASES(3)
}
static TARGET void block_4(const product *p, uint32_t m0, uint32_t n0, uint32_t rows)
{
    ROWS_CASES(NT)
}

TARGET void kvtc_tile_gemm_avx512(const uint16_t *a, uint32_t m, uint32_t kp, const uint16_t *b,
                                  uint32_t kp_b, uint32_t n, uint32_t terms, const float *bias,
                                  float *c, size_t ldc)
{
    product p = {a, b, (size_t)terms * kp, (size_t)terms * kp_b, kp, kp_b, terms, bias, c, ldc};
    void (*const by_tiles[NT])(const product *, uint32_t, uint32_t, uint32_t) = {
        block_1, block_2, block_3, block_4};
    /* a block of A's rows (in L1) against every column of B (in L2) */
    for (uint32_t m0 = 0; m0 < m; m0 += MR) {
        uint32_t rows = m - m0 < MR ? m - m0 : MR;
        for (uint32_t n0 = 0; n0 < n; n0 += 16 * NT) {
            uint32_t tiles = (n - n0) / 16 < NT ? (n - n0) / 16 : NT;
            by_tiles[tiles - 1](&p, m0, n0, rows);
        }
    }
}

#endif
