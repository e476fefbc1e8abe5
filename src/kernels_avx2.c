/* AVX2 (+F16C) forms of the decoder's per-element stages (kernels.h): f32 to
 * fp16 and bf16, bit-identical to the scalar conversions of dtype.c, and
 * interleaved RoPE with the scalar form's operations. No FMA is enabled, so
 * nothing is contracted and every rounding is the scalar code's. */
#include "kernels.h"

#include "kvtc_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) /* gcc and clang */
#include <immintrin.h>

__attribute__((target("avx2,f16c"))) void kvtc_f32_to_f16_avx2(const float *src, uint16_t *dst,
                                                               size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        /* The hardware keeps a nan's payload; dtype.c's one quiet nan is kept
         * by converting those lanes the scalar way. */
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) {
            for (size_t j = i; j < i + 8; j++)
                dst[j] = kvtc_f32_to_f16(src[j]);
            continue;
        }
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; i++)
        dst[i] = kvtc_f32_to_f16(src[i]);
}

__attribute__((target("avx2"))) void kvtc_f32_to_bf16_avx2(const float *src, uint16_t *dst,
                                                           size_t n)
{
    const __m256i round = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int h = 0; h < 2; h++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(src + i + 8 * h));
            /* round half to even on the 16 dropped bits; a nan becomes quiet */
            __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), one);
            __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, round), odd), 16);
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs_mask), inf);
            __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), quiet);
            r[h] = _mm256_blendv_epi8(rounded, quiet_nan, nan);
        }
        /* 16 lanes of 32 bits, each < 2^16, packed in order */
        __m256i packed = _mm256_packus_epi32(r[0], r[1]);
        packed = _mm256_permute4x64_epi64(packed, 0xd8);
        _mm256_storeu_si256((__m256i *)(dst + i), packed);
    }
    for (; i < n; i++)
        dst[i] = kvtc_f32_to_bf16(src[i]);
}

__attribute__((target("avx2"))) void kvtc_rope_interleaved_avx2(float *head, const float *cos_t,
                                                                const float *sin_t, uint32_t half,
                                                                bool inverse)
{
    const __m256 flip = _mm256_castsi256_ps(_mm256_set1_epi64x((long long)0x80000000u));
    uint32_t i = 0;
    for (; i + 4 <= half; i += 4) {
        /* pairs (x0, x1) -> (x0 c - x1 s, x1 c + x0 s) = x c + swap(x) (-s, s) */
        __m128 c4 = _mm_loadu_ps(cos_t + i), s4 = _mm_loadu_ps(sin_t + i);
        __m256 c = _mm256_setr_m128(_mm_unpacklo_ps(c4, c4), _mm_unpackhi_ps(c4, c4));
        __m256 s = _mm256_setr_m128(_mm_unpacklo_ps(s4, s4), _mm_unpackhi_ps(s4, s4));
        if (inverse)
            s = _mm256_xor_ps(s, _mm256_set1_ps(-0.0f));
        s = _mm256_xor_ps(s, flip); /* (-s, s) */
        __m256 x = _mm256_loadu_ps(head + 2 * i);
        __m256 swapped = _mm256_permute_ps(x, 0xb1);
        _mm256_storeu_ps(head + 2 * i, _mm256_add_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(swapped, s)));
    }
    for (; i < half; i++) {
        float c = cos_t[i], s = inverse ? -sin_t[i] : sin_t[i];
        float x0 = head[2 * i], x1 = head[2 * i + 1];
        head[2 * i] = x0 * c - x1 * s;
        head[2 * i + 1] = x0 * s + x1 * c;
    }
}

#endif
