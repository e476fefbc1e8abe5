/* AVX2 + FMA dot products of a GGUF-block row with an f32 vector, fused with
 * the dequantization (block layouts in gguf_dequant.c). Within a (sub-)block
 * the integer codes are converted to f32 and multiplied with x; the block's
 * scale multiplies that sum, and a min is subtracted as min * sum(x), so each
 * result is the dot with gguf_dequant.c's values up to rounding. The kernel
 * level AVX2 (kernels.h) includes F16C; FMA is checked on its own. */
#include "weights.h"

#ifdef WEIGHT_HAVE_AVX2
#include "gguf.h"
#include "kvtc_internal.h"

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* F16C's conversion, exact like dtype.c's (every f16 is an f32) */
static inline AVX2 float f16_at(const uint8_t *p)
{
    return _cvtsh_ss((unsigned short)(p[0] | p[1] << 8));
}

/* The hardware prefetcher alone leaves a single stream of rows short of the
 * memory's bandwidth: ask for the data PREFETCH_AHEAD bytes on. */
#define PREFETCH_AHEAD 2048
static inline void prefetch(const uint8_t *p)
{
    _mm_prefetch((const char *)p + PREFETCH_AHEAD, _MM_HINT_T0);
}

static inline AVX2 float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 8 low bytes of b as signed (i8) or unsigned (u8) floats. */
static inline AVX2 __m256 i8_ps(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); }

/* acc + 16 signed bytes times x[0..16) */
static inline AVX2 __m256 fma16(__m128i q, const float *x, __m256 acc)
{
    acc = _mm256_fmadd_ps(i8_ps(q), _mm256_loadu_ps(x), acc);
    return _mm256_fmadd_ps(i8_ps(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), acc);
}

static inline AVX2 __m128i low_nibbles(__m128i b) { return _mm_and_si128(b, _mm_set1_epi8(0x0f)); }
static inline AVX2 __m128i high_nibbles(__m128i b)
{
    return _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
}

/* 16 bytes, 0x10 where bit i of `bits` (16 bits) is set, else 0. */
static inline AVX2 __m128i bits_to_16(uint32_t bits)
{
    __m128i v = _mm_set1_epi16((short)(uint16_t)bits);
    v = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    const __m128i sel = _mm_set1_epi64x((long long)0x8040201008040201ull);
    return _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(v, sel), sel), _mm_set1_epi8(0x10));
}

static AVX2 float dot_f32(const uint8_t *row, const float *x, const float *xsum, uint32_t n)
{
    (void)xsum;
    const float *w = (const float *)(const void *)row;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    uint32_t i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch((const uint8_t *)(w + i));
        prefetch((const uint8_t *)(w + i + 16));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++)
        s += w[i] * x[i];
    return s;
}

/* Q8_0: d, q[32]. */
static AVX2 float dot_q8_0(const uint8_t *b, const float *x, const float *xsum, uint32_t n)
{
    (void)xsum;
    __m256 total = _mm256_setzero_ps();
    for (uint32_t i = 0; i < n; i++, b += 34, x += 32) {
        prefetch(b);
        __m256 acc = fma16(_mm_loadu_si128((const __m128i *)(b + 2)), x, _mm256_setzero_ps());
        acc = fma16(_mm_loadu_si128((const __m128i *)(b + 18)), x + 16, acc);
        total = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b)), acc, total);
    }
    return hsum(total);
}

/* Q4_0 (offset 8, no min, no fifth bit), Q4_1 (a min), Q5_0 (fifth bits,
 * offset 16): 16 bytes of nibbles, element j low of byte j, j + 16 high. */
static inline AVX2 float dot_q4_q5(const uint8_t *b, const float *x, const float *xsum,
                                   uint32_t n, bool has_min, bool has_high)
{
    const uint32_t bytes = 18 + (has_min ? 2 : 0) + (has_high ? 4 : 0);
    const __m128i offset = _mm_set1_epi8(has_min ? 0 : has_high ? 16 : 8);
    __m256 total = _mm256_setzero_ps();
    float mins = 0;
    for (uint32_t i = 0; i < n; i++, b += bytes, x += 32) {
        prefetch(b);
        const uint8_t *p = b + (has_min ? 4 : 2);
        __m128i lo, hi;
        if (has_high) {
            uint32_t qh = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                          (uint32_t)p[3] << 24;
            __m128i qs = _mm_loadu_si128((const __m128i *)(p + 4));
            lo = _mm_or_si128(low_nibbles(qs), bits_to_16(qh & 0xffff));
            hi = _mm_or_si128(high_nibbles(qs), bits_to_16(qh >> 16));
        } else {
            __m128i qs = _mm_loadu_si128((const __m128i *)p);
            lo = low_nibbles(qs);
            hi = high_nibbles(qs);
        }
        lo = _mm_sub_epi8(lo, offset);
        hi = _mm_sub_epi8(hi, offset);
        __m256 acc = fma16(hi, x + 16, fma16(lo, x, _mm256_setzero_ps()));
        total = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b)), acc, total);
        if (has_min)
            mins += f16_at(b + 2) * xsum[i];
    }
    return hsum(total) + mins;
}

static AVX2 float dot_q4_0(const uint8_t *b, const float *x, const float *xsum, uint32_t n)
{
    return dot_q4_q5(b, x, xsum, n, false, false);
}

static AVX2 float dot_q4_1(const uint8_t *b, const float *x, const float *xsum, uint32_t n)
{
    return dot_q4_q5(b, x, xsum, n, true, false);
}

static AVX2 float dot_q5_0(const uint8_t *b, const float *x, const float *xsum, uint32_t n)
{
    return dot_q4_q5(b, x, xsum, n, false, true);
}

/* Q4_K: d, dmin, scales[12], qs[128]; chunk c of 64 elements is 32 bytes of
 * qs, low nibbles for sub-block 2c and high ones for 2c + 1. */
static AVX2 float dot_q4_k(const uint8_t *b, const float *x, const float *xsum, uint32_t n)
{
    __m256 total = _mm256_setzero_ps();
    float mins = 0;
    for (uint32_t i = 0; i < n; i++, b += 144, x += 256, xsum += 8) {
        prefetch(b);
        prefetch(b + 64);
        prefetch(b + 128);
        float d = f16_at(b), dmin = f16_at(b + 2);
        const uint8_t *qs = b + 16;
        for (int c = 0; c < 4; c++, qs += 32) {
            int sc0, mn0, sc1, mn1;
            kvtc_ggml_k_scale_min(b + 4, 2 * c, &sc0, &mn0);
            kvtc_ggml_k_scale_min(b + 4, 2 * c + 1, &sc1, &mn1);
            __m128i q0 = _mm_loadu_si128((const __m128i *)qs);
            __m128i q1 = _mm_loadu_si128((const __m128i *)(qs + 16));
            const float *xc = x + 64 * c;
            __m256 a = fma16(low_nibbles(q1), xc + 16, fma16(low_nibbles(q0), xc, _mm256_setzero_ps()));
            __m256 h = fma16(high_nibbles(q1), xc + 48,
                             fma16(high_nibbles(q0), xc + 32, _mm256_setzero_ps()));
            total = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc0), a, total);
            total = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc1), h, total);
            mins += dmin * (float)mn0 * xsum[2 * c] + dmin * (float)mn1 * xsum[2 * c + 1];
        }
    }
    return hsum(total) - mins;
}

/* Q6_K: ql[128], qh[64], scales:i8[16], d. In each 128-element half, element
 * 32k + l takes nibble k >> 1 of ql[l + 32 (k & 1)] and bits 2k, 2k + 1 of
 * qh[l]; scale l / 16 + 2k. */
static AVX2 float dot_q6_k(const uint8_t *b, const float *x, const float *xsum, uint32_t n)
{
    (void)xsum;
    __m256 total = _mm256_setzero_ps();
    const __m128i three = _mm_set1_epi8(3), off = _mm_set1_epi8(32);
    for (uint32_t i = 0; i < n; i++, b += 210, x += 256) {
        for (int k = 0; k < 4; k++)
            prefetch(b + 64 * k);
        float d = f16_at(b + 208);
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = b + 64 * half, *qh = b + 128 + 32 * half;
            const float *xh = x + 128 * half;
            for (int l0 = 0; l0 < 32; l0 += 16) {
                __m128i h = _mm_loadu_si128((const __m128i *)(qh + l0));
                __m128i la = _mm_loadu_si128((const __m128i *)(ql + l0));
                __m128i lb = _mm_loadu_si128((const __m128i *)(ql + l0 + 32));
                __m128i nib[4] = {low_nibbles(la), low_nibbles(lb), high_nibbles(la),
                                  high_nibbles(lb)};
                for (int k = 0; k < 4; k++) {
                    __m128i hb = _mm_and_si128(_mm_srli_epi16(h, 2 * k), three);
                    __m128i q = _mm_sub_epi8(_mm_or_si128(nib[k], _mm_slli_epi16(hb, 4)), off);
                    __m256 acc = fma16(q, xh + 32 * k + l0, _mm256_setzero_ps());
                    float s = d * (float)sc[8 * half + l0 / 16 + 2 * k];
                    total = _mm256_fmadd_ps(_mm256_set1_ps(s), acc, total);
                }
            }
        }
    }
    return hsum(total);
}

weight_dot_fn weight_dot_avx2(uint32_t type)
{
    switch (type) {
    case KVTC_GGML_F32: return dot_f32;
    case KVTC_GGML_Q8_0: return dot_q8_0;
    case KVTC_GGML_Q4_0: return dot_q4_0;
    case KVTC_GGML_Q4_1: return dot_q4_1;
    case KVTC_GGML_Q5_0: return dot_q5_0;
    case KVTC_GGML_Q4_K: return dot_q4_k;
    case KVTC_GGML_Q6_K: return dot_q6_k;
    default: return NULL;
    }
}
#endif
