/* The bf16 tile product on Intel AMX (kernels.h). Compiled for any x86-64
 * target: the instructions are enabled per function and run only after
 * kvtc_kernels_level found them; absent where the compiler lacks them (kernels.h). */
#include "kernels.h"

#include <string.h>

#if KVTC_HAVE_TILE_INTRINSICS
#include <immintrin.h>

/* The 64-byte tile configuration (palette 1). Tiles 0-3 accumulate C (rows
 * m0.. and m0+16.. by columns n0.. and n0+16..), 4-5 hold A, 6-7 B. */
typedef struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

__attribute__((target("amx-tile"))) static void configure(uint32_t r0, uint32_t r1)
{
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    const uint8_t rows[8] = {(uint8_t)r0, (uint8_t)r0, (uint8_t)r1, (uint8_t)r1,
                             (uint8_t)r0, (uint8_t)r1, 16, 16};
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = rows[t];
        cfg.colsb[t] = rows[t] ? 64 : 0;
    }
    _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile,amx-bf16"))) void
kvtc_tile_gemm_amx(const uint16_t *a, uint32_t m, uint32_t kp, const uint16_t *b, uint32_t kp_b,
               uint32_t n, uint32_t terms, const float *bias, float *c, size_t ldc)
{
    static const float zeros[32];
    size_t depth = (size_t)terms * kp, depth_b = (size_t)terms * kp_b;
    size_t a_stride = depth * 2, c_stride = ldc * 4;
    uint32_t config = 0; /* r0 << 8 | r1 of the loaded configuration */
    for (uint32_t m0 = 0; m0 < m; m0 += 32) {
        uint32_t r0 = m - m0 < 16 ? m - m0 : 16;
        uint32_t r1 = m - m0 <= 16 ? 0 : m - m0 - 16 < 16 ? m - m0 - 16 : 16;
        if ((r0 << 8 | r1) != config) {
            configure(r0, r1);
            config = r0 << 8 | r1;
        }
        const uint16_t *a0 = a + (size_t)m0 * depth, *a1 = a0 + 16 * depth;
        for (uint32_t n0 = 0; n0 < n; n0 += 32) {
            bool two_n = n - n0 >= 32, two_m = r1 > 0;
            const uint16_t *b0 = b + (size_t)n0 * depth_b, *b1 = b0 + 16 * depth_b;
            /* every row of an accumulator starts at the bias (a load with stride 0) */
            const float *start = bias ? bias + n0 : zeros;
            _tile_loadd(0, start, 0);
            if (two_n)
                _tile_loadd(1, start + 16, 0);
            if (two_m) {
                _tile_loadd(2, start, 0);
                if (two_n)
                    _tile_loadd(3, start + 16, 0);
            }
            for (uint32_t t = 0; t < terms; t++)
                for (size_t k = 0; k < kp; k += 32) {
                    size_t ka = (size_t)t * kp + k, kb = ((size_t)t * kp_b + k) * 16;
                    _tile_loadd(4, a0 + ka, a_stride);
                    _tile_loadd(6, b0 + kb, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    if (two_n) {
                        _tile_loadd(7, b1 + kb, 64);
                        _tile_dpbf16ps(1, 4, 7);
                    }
                    if (two_m) {
                        _tile_loadd(5, a1 + ka, a_stride);
                        _tile_dpbf16ps(2, 5, 6);
                        if (two_n)
                            _tile_dpbf16ps(3, 5, 7);
                    }
                }
            float *c0 = c + (size_t)m0 * ldc + n0, *c1 = c0 + 16 * ldc;
            _tile_stored(0, c0, c_stride);
            if (two_n)
                _tile_stored(1, c0 + 16, c_stride);
            if (two_m) {
                _tile_stored(2, c1, c_stride);
                if (two_n)
                    _tile_stored(3, c1 + 16, c_stride);
            }
        }
    }
    _tile_release();
}

#endif
