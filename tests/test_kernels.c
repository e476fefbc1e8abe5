/* The bf16 tile kernels (src/kernels.c, src/kernels_amx.c, src/kernels_avx512.c), on
 * each level the CPU has: the product of
 * packed operands against a double reference for every tail of m, n and k,
 * within its bound (3 terms: 2^-15 of sum |a b|, measured about 2^-18; 1
 * term: 2^-7, measured about 2^-9); decodes on the tiles against the sgemm
 * decode of the same stream: a near-lossless plan takes 3 terms and comes
 * back value by value within 2^-15 of the largest value, a 16x plan takes 1
 * term and its relative error is the sgemm decode's within 1%; every decode
 * gives the same bytes for 1, 2 and 3 threads. Skips (saying so) on a CPU
 * with neither AMX nor AVX512-BF16. */
#include "codec_common.h"
#include "kernels.h"
#include "kvtc_internal.h"
#include "transform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One m x n x k product with B packed at depth kp_b >= A's. */
static void check_gemm(test_rng *r, uint32_t m, uint32_t n, uint32_t k, uint32_t extra_k,
                       uint32_t terms)
{
    uint32_t kp = kvtc_tile_depth(k), kb = k + extra_k, kp_b = kvtc_tile_depth(kb);
    float *a = malloc((size_t)m * k * sizeof *a), *b = malloc((size_t)n * kb * sizeof *b);
    float *c = malloc(((size_t)m * n + 1) * sizeof *c);
    uint16_t *pa = malloc(((size_t)m * 3 * kp + 1) * 2), *pb = malloc((size_t)n * 3 * kp_b * 2);
    if (!CHECK(a && b && c && pa && pb))
        goto done;
    for (size_t i = 0; i < (size_t)m * k; i++)
        a[i] = (float)(rng_gaussian(r) * 100.0);
    for (size_t i = 0; i < (size_t)n * kb; i++)
        b[i] = (float)rng_gaussian(r) * 0.1f;
    kvtc_tile_pack_a(a, k, m, k, terms, pa);
    kvtc_tile_pack_b(b, kb, n, kb, terms, pb);
    float *bias = malloc(n * sizeof *bias);
    if (!CHECK(bias))
        goto done;
    for (uint32_t j = 0; j < n; j++)
        bias[j] = (float)rng_gaussian(r);
    kvtc_tile_gemm(pa, m, kp, pb, kp_b, n, terms, bias, c, n);
    double bound = terms == 3 ? 0x1p-15 : 0x1p-7;
    int bad = 0;
    double worst = 0;
    for (uint32_t i = 0; i < m; i++)
        for (uint32_t j = 0; j < n; j++) {
            double x = bias[j], mag = fabs(bias[j]);
            for (uint32_t l = 0; l < k; l++) {
                x += (double)a[i * k + l] * b[j * kb + l];
                mag += fabs((double)a[i * k + l] * b[j * kb + l]);
            }
            double e = fabs(c[i * n + j] - x) / (mag + 1e-30);
            worst = e > worst ? e : worst;
            bad += e > bound;
        }
    CHECK_MSG(bad == 0, "m %u n %u k %u, %u terms: %d products off by more than %g of sum |ab| "
              "(worst %g)", m, n, k, terms, bad, bound, worst);
    free(bias);
done:
    free(a), free(b), free(c), free(pa), free(pb);
}

/* Decodes `data` into a cache with n_threads threads. */
static kvtc_cache *decode_with(const kvtc_calibration *cal, const void *data, size_t len,
                               uint32_t n_threads)
{
    kvtc_decompress_options opt;
    kvtc_decompress_options_default(&opt);
    opt.n_threads = n_threads;
    kvtc_cache *out = NULL;
    kvtc_error err;
    return CHECK_OK(kvtc_decompress(cal, data, len, &opt, &out, &err), &err) ? out : NULL;
}

static void check_decode(double ratio, uint32_t expect_terms)
{
    /* 2 layers x 2 kv heads x 32 dims: 64 features per layer, 4 tiles. */
    kvtc_model_shape shape = {2, 2, 32, KVTC_ROPE_NEOX, 0, 10000.0, 0};
    kvtc_calibration *cal = codec_test_calibration(&shape, 4, 16, 11, 3, 300);
    kvtc_cache *c = make_random_cache(&shape, KVTC_F32, 299, 3, CODEC_TEST_LOW_RANK, 77);
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.k_ratio = copt.v_ratio = ratio;
    copt.block_tokens = 64;
    void *data = NULL;
    size_t len = 0;
    kvtc_error err;
    kvtc_cache *tiles[3] = {NULL, NULL, NULL}, *plain = NULL;
    kvtc_plan *plan = NULL;
    if (!CHECK(cal && c) || !CHECK_OK(kvtc_compress(cal, c, &copt, &data, &len, &err), &err) ||
        !CHECK_OK(kvtc_plan_create(cal, KVTC_KEY, ratio, &plan, &err), &err))
        goto done;
    uint32_t terms = kvtc_transform_tile_terms(cal, plan);
    CHECK_MSG(terms == expect_terms, "ratio %g: %u terms (predicted error %g)", ratio, terms,
              kvtc_plan_predicted_error(plan));
    for (uint32_t t = 0; t < 3; t++)
        tiles[t] = decode_with(cal, data, len, t + 1);
    kvtc_kernel_level level = kvtc_kernels_level();
    kvtc_kernels_limit(KVTC_KERNELS_PORTABLE);
    plain = decode_with(cal, data, len, 2);
    kvtc_kernels_limit(level);
    if (!CHECK(tiles[0] && tiles[1] && tiles[2] && plain))
        goto done;
    CHECK_MSG(test_caches_equal(tiles[0], tiles[1]) && test_caches_equal(tiles[0], tiles[2]),
              "the tile decode depends on the thread count");
    /* Value by value against sgemm, relative to each head's largest value
     * (the sum |coef v| is of that order for these caches). */
    size_t elems = (size_t)kvtc_shape_features(&shape) * c->n_tokens * 2;
    const float *x = (const float *)tiles[0]->data, *y = (const float *)plain->data;
    double worst = 0, most = 0;
    for (size_t i = 0; i < elems; i++)
        most = fmax(most, fabs(y[i]));
    for (size_t i = 0; i < elems; i++)
        worst = fmax(worst, fabs((double)x[i] - y[i]));
    double e_tiles = codec_rel_error(c, tiles[0], 0, 4, 299 - 20);
    double e_plain = codec_rel_error(c, plain, 0, 4, 299 - 20);
    printf("ratio %g, %u terms: relative error tiles %.7f, sgemm %.7f; largest difference %.3g "
           "of the largest value\n",
           ratio, terms, e_tiles, e_plain, worst / most);
    if (terms == 3)
        CHECK_MSG(worst <= most * 0x1p-15, "tile decode off the sgemm decode by %g (largest %g)",
                  worst, most);
    CHECK_MSG(fabs(e_tiles - e_plain) <= (terms == 3 ? 1e-4 : 1e-2) * e_plain,
              "errors differ: %g against %g", e_tiles, e_plain);
done:
    kvtc_plan_free(plan);
    for (int t = 0; t < 3; t++)
        kvtc_cache_free(tiles[t]);
    kvtc_cache_free(plain);
    kvtc_cache_free(c);
    kvtc_buffer_free(data);
    kvtc_calibration_free(cal);
}

/* The AVX2 conversions and RoPE against the portable code, bit for bit, on
 * every fp16 boundary class: zeros, subnormals, the rounding ties, overflow,
 * infinities and nans with payloads. */
static void check_elementwise(test_rng *r)
{
    enum { N = 4099 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *z = malloc(N * sizeof *z);
    uint16_t *a = malloc(N * 2), *b = malloc(N * 2);
    if (!CHECK(x && y && z && a && b))
        goto done;
    for (uint32_t i = 0; i < N; i++) {
        uint32_t bits = (uint32_t)rng_u64(r);
        switch (i % 6) {
        case 0: break;                                                 /* any pattern */
        case 1: bits = (bits & 0x80000000u) | (0x33000000u + (bits & 0xffffffu)); break; /* f16 subnormal */
        case 2: bits = (bits & 0x80000000u) | 0x477fe000u | (bits & 0x3000u); break; /* near 65504 */
        case 3: bits = (bits & 0xffffe000u) | 0x1000u; break;          /* f16 ties */
        case 4: bits = (bits & 0xffff0000u) | 0x8000u; break;          /* bf16 ties */
        case 5: bits = (bits & 0x80000000u) | 0x7f800000u | (bits & 0x7fffffu); break; /* inf, nan */
        }
        memcpy(&x[i], &bits, 4);
    }
    for (int dt = 0; dt < 2; dt++) {
        kvtc_dtype dtype = dt ? KVTC_BF16 : KVTC_F16;
        kvtc_kernels_limit(KVTC_KERNELS_PORTABLE);
        kvtc_from_f32(dtype, x, a, N);
        kvtc_kernels_limit(KVTC_KERNELS_AMX_BF16);
        kvtc_from_f32(dtype, x, b, N);
        CHECK_MSG(memcmp(a, b, N * 2) == 0, "AVX2 %s conversion differs from the portable one",
                  kvtc_dtype_name(dtype));
    }
    kvtc_model_shape shape = {1, 1, 128, KVTC_ROPE_INTERLEAVED, 128, 10000.0, 1};
    float c[64], s[64];
    for (uint32_t i = 0; i < N; i++)
        x[i] = (float)rng_gaussian(r);
    for (int inverse = 0; inverse < 2; inverse++)
        for (int64_t pos = 0; pos < 3000; pos += 997) {
            kvtc_rope_angles(&shape, pos, c, s);
            memcpy(y, x, 128 * sizeof *x);
            memcpy(z, x, 128 * sizeof *x);
            kvtc_kernels_limit(KVTC_KERNELS_PORTABLE);
            kvtc_rope_apply(&shape, y, c, s, inverse);
            kvtc_kernels_limit(KVTC_KERNELS_AMX_BF16);
            kvtc_rope_apply(&shape, z, c, s, inverse);
            CHECK_MSG(memcmp(y, z, 128 * sizeof *y) == 0, "AVX2 RoPE differs at position %lld",
                      (long long)pos);
        }
done:
    free(x), free(y), free(z), free(a), free(b);
}

int main(void)
{
    test_rng r;
    rng_seed(&r, 5);
    if (kvtc_kernels_level() >= KVTC_KERNELS_AVX2)
        check_elementwise(&r);
    else
        printf("this CPU has no AVX2: the element-wise kernels are the portable ones\n");
    kvtc_kernel_level best = kvtc_kernels_level();
    if (best < KVTC_KERNELS_AVX512_BF16)
        test_skip("test_kernels",
                  "this CPU (or OS) has neither AMX tiles nor AVX512-BF16; decodes use sgemm");
    /* every tail of the blocks: 16 and 32 rows (tiles), 6 (AVX-512); 16 to 80 columns */
    const uint32_t ms[] = {1, 5, 6, 7, 15, 16, 17, 31, 32, 33, 70};
    const uint32_t ns[] = {16, 32, 48, 64, 80, 96};
    const uint32_t ks[] = {1, 31, 32, 33, 100};
    for (int level = best; level >= KVTC_KERNELS_AVX512_BF16; level--) {
        kvtc_kernels_limit((kvtc_kernel_level)level);
        printf("tile product on %s\n", kvtc_kernels_name((kvtc_kernel_level)level));
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
            for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++)
                for (size_t l = 0; l < sizeof ks / sizeof ks[0]; l++)
                    for (uint32_t terms = 1; terms <= 3; terms += 2)
                        check_gemm(&r, ms[i], ns[j], ks[l], (uint32_t)(l % 2) * 40, terms);
        check_decode(2, 3);
        check_decode(16, 1);
    }
    kvtc_kernels_limit(KVTC_KERNELS_AMX_BF16);
    return test_summary("test_kernels");
}
