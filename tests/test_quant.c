/* Number formats and the group quantizer, each checked against an independent
 * computation: fp8 e4m3 (OCP), fp16, bf16, bit packing, and the per-value
 * error bound of group quantization. */
#include "kvtc_internal.h"
#include "testutil.h"

#include <float.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- fp8 e4m3 ---------------------------------------------------------------- */

/* OCP E4M3: S.EEEE.MMM, bias 7; E=0 is subnormal (M/8 * 2^-6); S.1111.111 is
 * NaN; there are no infinities. Written as an integer significand times a
 * power of two, a different route from the library's. */
static double e4m3_reference(uint8_t code)
{
    int e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7)
        return NAN;
    int significand = e == 0 ? m : 8 + m;
    double v = ldexp(significand, (e == 0 ? 1 : e) - 10);
    return (code & 0x80) ? -v : v;
}

/* Nearest finite non-negative code to a >= 0 by exhaustive search, ties to the
 * even code (mantissa LSB 0); beyond 448 everything is 448 (saturation). */
static uint8_t e4m3_nearest(double a)
{
    uint8_t best = 0;
    for (int c = 1; c <= 0x7e; c++) {
        double dc = fabs(e4m3_reference((uint8_t)c) - a), db = fabs(e4m3_reference(best) - a);
        if (dc < db || (dc == db && (c & 1) == 0))
            best = (uint8_t)c;
    }
    return best;
}

static void check_e4m3_encode(float x)
{
    uint8_t want = (uint8_t)((signbit(x) ? 0x80 : 0) | e4m3_nearest(fabs((double)x)));
    uint8_t got = kvtc_f32_to_e4m3(x);
    CHECK_MSG(got == want, "e4m3 encode(%.9g) = 0x%02x, want 0x%02x", x, got, want);
}

static void test_e4m3(void)
{
    for (int c = 0; c < 256; c++) {
        double want = e4m3_reference((uint8_t)c);
        float got = kvtc_e4m3_to_f32((uint8_t)c);
        if (isnan(want))
            CHECK_MSG(isnan(got), "e4m3 code 0x%02x must decode to nan", c);
        else
            CHECK_MSG((double)got == want && !!signbit(got) == (c >= 0x80),
                      "e4m3 code 0x%02x decodes to %.9g, want %.9g", c, got, want);
    }
    CHECK_EQ(kvtc_e4m3_to_f32(0x7e), 448.0f);
    CHECK_EQ(kvtc_e4m3_to_f32(0x01) * 512.0f, 1.0f); /* smallest subnormal 2^-9 */

    /* Every representable value, every midpoint (ties), and their neighbours. */
    for (int c = 0; c < 0x7e; c++) {
        float v = (float)e4m3_reference((uint8_t)c), next = (float)e4m3_reference((uint8_t)c + 1);
        float mid = 0.5f * (v + next);
        const float probes[] = {v, mid, nextafterf(mid, 0.0f), nextafterf(mid, 1000.0f)};
        for (size_t i = 0; i < 4; i++) {
            check_e4m3_encode(probes[i]);
            check_e4m3_encode(-probes[i]);
        }
    }
    /* Saturation, huge values, and random ones over the whole range. */
    const float big[] = {448.0f, 460.0f, 464.0f, 479.99f, 480.0f, 1e6f, FLT_MAX, INFINITY};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        CHECK_MSG(kvtc_f32_to_e4m3(big[i]) == 0x7e, "e4m3 encode(%g) must saturate to 448",
                  big[i]);
        CHECK_MSG(kvtc_f32_to_e4m3(-big[i]) == 0xfe, "e4m3 encode(%g) must saturate to -448",
                  -big[i]);
    }
    CHECK(isnan(kvtc_e4m3_to_f32(kvtc_f32_to_e4m3(NAN))));
    test_rng r;
    rng_seed(&r, 8);
    for (int i = 0; i < 20000; i++)
        check_e4m3_encode((float)ldexp(rng_uniform(&r) * 2 - 1, (int)rng_below(&r, 22) - 12));
}

/* ---- fp16 -------------------------------------------------------------------- */

/* IEEE binary16 value of a code, from its fields. */
static double f16_reference(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/* Round-to-nearest-even by bracketing: the codes of non-negative finite halves
 * are ordered like their values; code 0x7c00 stands for 2^16 while rounding,
 * which is exactly where IEEE overflows to infinity. */
static uint16_t f16_round_reference(float x)
{
    double a = fabs((double)x);
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    if (isnan(x))
        return 0xffff; /* only "is nan" is compared */
    if (a >= 65520.0)
        return sign | 0x7c00;
    uint16_t lo = 0, hi = 0x7c00;
    while (hi - lo > 1) { /* largest code with value <= a */
        uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (f16_reference(mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    double vlo = f16_reference(lo), vhi = lo + 1 == 0x7c00 ? 65536.0 : f16_reference(lo + 1);
    if (vlo == a)
        return sign | lo;
    double dlo = a - vlo, dhi = vhi - a;
    uint16_t pick = dlo < dhi ? lo : dhi < dlo ? (uint16_t)(lo + 1) : (lo & 1) ? lo + 1 : lo;
    return sign | pick;
}

static void check_f16_encode(float x)
{
    uint16_t want = f16_round_reference(x), got = kvtc_f32_to_f16(x);
    if (isnan(x))
        CHECK_MSG(isnan(kvtc_f16_to_f32(got)), "f16 encode(nan) = 0x%04x, not a nan", got);
    else
        CHECK_MSG(got == want, "f16 encode(%.9g) = 0x%04x, want 0x%04x", x, got, want);
}

static void test_f16(void)
{
    for (uint32_t c = 0; c < 65536; c++) {
        uint16_t h = (uint16_t)c;
        float f = kvtc_f16_to_f32(h);
        double want = f16_reference(h);
        if (isnan(want)) {
            CHECK_MSG(isnan(f), "f16 0x%04x must decode to nan", h);
            uint16_t back = kvtc_f32_to_f16(f);
            CHECK_MSG(isnan(f16_reference(back)) && (back & 0x8000) == (h & 0x8000),
                      "f16 nan 0x%04x comes back as 0x%04x", h, back);
            continue;
        }
        CHECK_MSG((double)f == want && !!signbit(f) == (h >= 0x8000),
                  "f16 0x%04x decodes to %.9g, want %.9g", h, f, want);
        CHECK_MSG(kvtc_f32_to_f16(f) == h, "f16 0x%04x does not round-trip (0x%04x)", h,
                  kvtc_f32_to_f16(f));
    }
    /* Exact midpoints between neighbouring halves (ties) and their neighbours. */
    for (uint32_t c = 0; c < 0x7bff; c += 7) {
        float mid = (float)(0.5 * (f16_reference((uint16_t)c) + f16_reference((uint16_t)(c + 1))));
        check_f16_encode(mid);
        check_f16_encode(-mid);
        check_f16_encode(nextafterf(mid, 0.0f));
        check_f16_encode(nextafterf(mid, 1e9f));
    }
    const float edge[] = {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e30f, INFINITY, NAN,
                          5.9604645e-8f, 2.9802322e-8f, 2.98023259e-8f, 6.1035156e-5f, 0.0f,
                          -0.0f};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        check_f16_encode(edge[i]);
        check_f16_encode(-edge[i]);
    }
    test_rng r;
    rng_seed(&r, 16);
    for (int i = 0; i < 200000; i++) {
        float x = float_of((uint32_t)rng_u64(&r));
        if (fabsf(x) > 1e6f || fabsf(x) < 1e-9f) /* keep most samples where halves live */
            x = (float)ldexp(rng_uniform(&r) - 0.5, (int)rng_below(&r, 44) - 26);
        check_f16_encode(x);
    }
}

/* ---- bf16 -------------------------------------------------------------------- */

/* The two bf16 neighbours of x are its f32 bits truncated and that plus one
 * bf16 ulp; pick the nearer in double, ties to the even code. */
static uint16_t bf16_round_reference(float x)
{
    uint32_t u = bits_of(x);
    uint16_t lo = (uint16_t)(u >> 16);
    uint32_t sign = u & 0x80000000u;
    double a = fabs((double)x), vlo = fabs((double)float_of((uint32_t)lo << 16));
    uint32_t next = ((u & 0x7fffffffu) >> 16) + 1;
    double vhi = next >= 0x7f80 ? ldexp(1.0, 128) : fabs((double)float_of(next << 16));
    double dlo = a - vlo, dhi = vhi - a;
    bool up = dhi < dlo || (dhi == dlo && (lo & 1));
    return up ? (uint16_t)((sign >> 16) | next) : lo;
}

static void test_bf16(void)
{
    test_rng r;
    rng_seed(&r, 32);
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)rng_u64(&r);
        if (i % 3 == 0)
            u = (u & 0xffff0000u) | 0x8000u; /* an exact tie */
        float x = float_of(u);
        if (isnan(x) || isinf(x))
            continue;
        uint16_t want = bf16_round_reference(x), got = kvtc_f32_to_bf16(x);
        CHECK_MSG(got == want, "bf16 encode(%.9g, bits 0x%08x) = 0x%04x, want 0x%04x", x, u,
                  got, want);
    }
    for (uint32_t c = 0; c < 65536; c++) {
        float f = kvtc_bf16_to_f32((uint16_t)c);
        CHECK_MSG(bits_of(f) == c << 16, "bf16 0x%04x decodes to the wrong bits", c);
        if (!isnan(f))
            CHECK_MSG(kvtc_f32_to_bf16(f) == c, "bf16 0x%04x does not round-trip", c);
    }
    CHECK(isnan(kvtc_bf16_to_f32(kvtc_f32_to_bf16(NAN))));
    CHECK_EQ(kvtc_f32_to_bf16(INFINITY), 0x7f80);
    CHECK_EQ(kvtc_f32_to_bf16(FLT_MAX), 0x7f80); /* rounds up to infinity */
}

/* ---- whole-array conversions ---------------------------------------------------- */

/* kvtc_to_f32 / kvtc_from_f32 take a separate, vectorized route: every f16 and
 * bf16 code, and many f32 values (random bits, ties, subnormals, the overflow
 * edge, nans with payloads), must give the scalar functions' exact bits. An odd
 * length covers the loops' tails. */
static void test_array_conversions(void)
{
    enum { N_CODES = 65536, N_VALUES = 1000003 };
    uint16_t *codes = malloc(N_CODES * sizeof *codes), *h = malloc(N_VALUES * sizeof *h);
    float *f = malloc(N_VALUES * sizeof *f);
    CHECK(codes && h && f);
    if (!codes || !h || !f)
        goto done;
    for (uint32_t c = 0; c < N_CODES; c++)
        codes[c] = (uint16_t)c;
    kvtc_to_f32(KVTC_F16, codes, f, N_CODES);
    for (uint32_t c = 0; c < N_CODES; c++)
        CHECK_MSG(bits_of(f[c]) == bits_of(kvtc_f16_to_f32((uint16_t)c)),
                  "f16 array decode of 0x%04x differs from the scalar one", c);
    kvtc_to_f32(KVTC_BF16, codes, f, N_CODES);
    for (uint32_t c = 0; c < N_CODES; c++)
        CHECK_MSG(bits_of(f[c]) == bits_of(kvtc_bf16_to_f32((uint16_t)c)),
                  "bf16 array decode of 0x%04x differs from the scalar one", c);

    const uint32_t edges[] = {0x00000000u, 0x00000001u, 0x007fffffu, 0x33000000u, 0x33000001u,
                              0x387fe000u, 0x387ff000u, 0x387fffffu, 0x38800000u, 0x477fefffu,
                              0x477ff000u, 0x7f7fffffu, 0x7f800000u, 0x7f800001u, 0x7fc00000u,
                              0x7fffffffu, 0x7f7f8000u, 0x3f808000u, 0x3f818000u};
    const size_t n_edges = sizeof edges / sizeof edges[0];
    test_rng r;
    rng_seed(&r, 64);
    for (size_t i = 0; i < N_VALUES; i++) {
        uint32_t u = (uint32_t)rng_u64(&r);
        switch (i % 5) {
        case 0: u = (u & 0x80000000u) | edges[(i / 5) % n_edges]; break;
        case 1: u = (u & 0x8fffe000u) | 0x38000000u | 0x1000u; break; /* f16 ties near 1 */
        case 2: u = (u & 0x807fffffu) | ((0x67u + (u >> 23) % 0x20u) << 23); break; /* f16 range */
        default: break;
        }
        f[i] = float_of(u);
    }
    kvtc_from_f32(KVTC_F16, f, h, N_VALUES);
    for (size_t i = 0; i < N_VALUES; i++)
        CHECK_MSG(h[i] == kvtc_f32_to_f16(f[i]),
                  "f16 array encode of bits 0x%08x = 0x%04x, scalar 0x%04x", bits_of(f[i]),
                  h[i], kvtc_f32_to_f16(f[i]));
    kvtc_from_f32(KVTC_BF16, f, h, N_VALUES);
    for (size_t i = 0; i < N_VALUES; i++)
        CHECK_MSG(h[i] == kvtc_f32_to_bf16(f[i]),
                  "bf16 array encode of bits 0x%08x = 0x%04x, scalar 0x%04x", bits_of(f[i]),
                  h[i], kvtc_f32_to_bf16(f[i]));
done:
    free(codes);
    free(h);
    free(f);
}

/* ---- bit packing ------------------------------------------------------------- */

static void test_pack(void)
{
    const uint8_t c2[6] = {1, 2, 3, 0, 3, 1};
    const uint8_t p2[2] = {0x39, 0x07}; /* 01|11|10|01, then 01|11 */
    const uint8_t c4[3] = {0x1, 0xa, 0x3};
    const uint8_t p4[2] = {0xa1, 0x03};
    const uint8_t c8[3] = {0x00, 0x7f, 0xff};
    uint8_t out[16], back[64];
    memset(out, 0xee, sizeof out);
    kvtc_pack_bits(c2, 6, 2, out);
    CHECK(memcmp(out, p2, 2) == 0);
    CHECK_EQ(out[2], 0xee); /* writes exactly ceil(n*bits/8) bytes */
    kvtc_pack_bits(c4, 3, 4, out);
    CHECK(memcmp(out, p4, 2) == 0);
    kvtc_pack_bits(c8, 3, 8, out);
    CHECK(memcmp(out, c8, 3) == 0);
    kvtc_unpack_bits(p2, 6, 2, back);
    CHECK(memcmp(back, c2, 6) == 0);
    kvtc_unpack_bits(p4, 3, 4, back);
    CHECK(memcmp(back, c4, 3) == 0);

    /* 3 bits straddle bytes: codes 5,3,7,1,0,6,2,4 at bits 0,3,6,... LSB first */
    const uint8_t c3[8] = {5, 3, 7, 1, 0, 6, 2, 4};
    const uint8_t p3[3] = {0xdd, 0x03, 0x8b};
    kvtc_pack_bits(c3, 8, 3, out);
    CHECK_MSG(memcmp(out, p3, 3) == 0, "3-bit pack: %02x %02x %02x", out[0], out[1], out[2]);
    kvtc_unpack_bits(p3, 8, 3, back);
    CHECK(memcmp(back, c3, 8) == 0);

    test_rng r;
    rng_seed(&r, 64);
    const uint32_t widths[5] = {1, 2, 3, 4, 8};
    for (int w = 0; w < 5; w++)
        for (size_t n = 1; n <= 37; n++) {
            uint8_t codes[64], packed[64];
            for (size_t i = 0; i < n; i++)
                codes[i] = (uint8_t)(rng_u64(&r) & ((1u << widths[w]) - 1));
            kvtc_pack_bits(codes, n, widths[w], packed);
            size_t bytes = (n * widths[w] + 7) / 8;
            uint8_t ref[64] = {0}; /* bit k of code i is stream bit i * width + k */
            for (size_t i = 0; i < n; i++)
                for (uint32_t k = 0; k < widths[w]; k++)
                    if (codes[i] >> k & 1)
                        ref[(i * widths[w] + k) / 8] |= (uint8_t)(1u << ((i * widths[w] + k) % 8));
            CHECK_MSG(memcmp(packed, ref, bytes) == 0, "%u-bit pack of %zu codes differs from "
                      "the bit-by-bit reference", widths[w], n);
            size_t used_bits = n * widths[w] - (bytes - 1) * 8;
            CHECK_MSG(used_bits == 8 || (packed[bytes - 1] >> used_bits) == 0,
                      "%u-bit pack of %zu codes leaves garbage in the last byte", widths[w], n);
            kvtc_unpack_bits(packed, n, widths[w], back);
            CHECK_MSG(memcmp(back, codes, n) == 0, "%u-bit round trip of %zu codes fails",
                      widths[w], n);
        }
}

/* ---- group quantization ------------------------------------------------------ */

static void check_group(kvtc_qtype type, const float *x, uint32_t n)
{
    uint16_t shift = 0, scale = 0;
    uint8_t codes[1024];
    float y[1024];
    kvtc_quant_group(type, x, n, &shift, &scale, codes);
    kvtc_dequant_group(type, shift, scale, codes, n, y);
    float s = kvtc_f16_to_f32(shift), sc = kvtc_f16_to_f32(scale);
    CHECK_MSG(isfinite(s) && isfinite(sc) && sc >= 0, "%s: shift %g / scale %g not finite",
              kvtc_qtype_name(type), s, sc);
    float lo = x[0], hi = x[0];
    for (uint32_t i = 1; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    double sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        double d = fabs((double)x[i] - y[i]);
        sum += d * d;
        /* Slack for float arithmetic in (x - shift) / scale and shift + scale * code. */
        double slack = 8 * FLT_EPSILON * (fabs(x[i]) + fabs(s) + 255.0 * sc);
        if (type == KVTC_Q_FP8) {
            double q = fabs(((double)x[i] - s) / (sc > 0 ? sc : 1));
            double bound = sc * fmax(q / 16.0, 1.0 / 1024.0); /* half an e4m3 step */
            CHECK_MSG(d <= bound + slack, "fp8 group of %u: value %u off by %g (bound %g)", n, i,
                      d, bound);
            continue;
        }
        uint32_t levels = (1u << kvtc_qtype_bits(type)) - 1;
        CHECK_MSG(codes[i] <= levels, "%s code %u out of range", kvtc_qtype_name(type), codes[i]);
        /* shift is the minimum rounded to fp16: values below it clamp to code 0. */
        double bound = fmax(sc / 2.0, (double)s - lo);
        CHECK_MSG(d <= bound + slack, "%s group of %u: value %u off by %g (scale %g, bound %g)",
                  kvtc_qtype_name(type), n, i, d, sc, bound);
        if (i == 0) /* the rounded-up scale always reaches the maximum */
            CHECK_MSG((double)s + (double)sc * levels >= hi - slack,
                      "%s: shift %g + scale %g * %u does not reach max %g", kvtc_qtype_name(type),
                      s, sc, levels, hi);
    }
    double err = kvtc_quant_group_error(type, x, n);
    CHECK_MSG(fabs(err - sum) <= 1e-9 * (sum + 1e-30), "%s: group error %g, direct sum %g",
              kvtc_qtype_name(type), err, sum);
}

static void test_group_quant(void)
{
    test_rng r;
    rng_seed(&r, 128);
    float x[1024];
    for (int trial = 0; trial < 300; trial++) {
        uint32_t n = kvtc_group_sizes[trial % KVTC_GROUP_SIZE_COUNT];
        double magnitude = ldexp(1.0, (int)rng_below(&r, 30) - 15);
        double offset = (trial % 4 == 0) ? magnitude * 10 * (rng_uniform(&r) - 0.5) : 0;
        for (uint32_t i = 0; i < n; i++)
            x[i] = (float)(offset + magnitude * rng_gaussian(&r));
        if (trial % 7 == 0) /* a constant group: scale 0 */
            for (uint32_t i = 0; i < n; i++)
                x[i] = x[0];
        for (int t = KVTC_Q_INT2; t <= KVTC_Q_INT8; t++)
            check_group((kvtc_qtype)t, x, n);
    }
    /* Extremes of the fp16 range must neither overflow shift nor scale. */
    const float wide[4] = {-65504.0f, 65504.0f, 0.0f, 1.0f};
    for (int t = KVTC_Q_INT2; t <= KVTC_Q_INT8; t++)
        check_group((kvtc_qtype)t, wide, 4);
    /* none: zeros back, error is the energy. */
    float y[4] = {1, 1, 1, 1};
    kvtc_dequant_group(KVTC_Q_NONE, 0, 0, NULL, 4, y);
    CHECK(y[0] == 0 && y[3] == 0);
    const float e[3] = {1, -2, 3};
    CHECK_NEAR(kvtc_quant_group_error(KVTC_Q_NONE, e, 3), 14.0, 0);
}

/* ---- Lloyd-Max Gaussian levels (lm1, lm2, lm3) --------------------------------- */

static double gauss_pdf(double x) { return exp(-x * x / 2) / sqrt(2 * M_PI); }
static double gauss_cdf(double x) { return 0.5 * erfc(-x / sqrt(2)); }

/* Lloyd's fixed point for N(0,1) with m levels: thresholds at midpoints, each
 * level the conditional mean of its cell (closed form for the Gaussian). */
static void lloyd_max_gaussian(int m, double *level, double *mse)
{
    for (int i = 0; i < m; i++)
        level[i] = -2.0 + 4.0 * (i + 0.5) / m;
    double t[9];
    for (int it = 0; it < 5000; it++) {
        t[0] = -INFINITY;
        t[m] = INFINITY;
        for (int i = 1; i < m; i++)
            t[i] = 0.5 * (level[i - 1] + level[i]);
        for (int i = 0; i < m; i++)
            level[i] = (gauss_pdf(t[i]) - gauss_pdf(t[i + 1])) / (gauss_cdf(t[i + 1]) - gauss_cdf(t[i]));
    }
    *mse = 1.0; /* E[(x - Q(x))^2] = 1 - sum p_i l_i^2 at the fixed point */
    for (int i = 0; i < m; i++)
        *mse -= (gauss_cdf(t[i + 1]) - gauss_cdf(t[i])) * level[i] * level[i];
}

static void test_lm_levels(void)
{
    /* Max (1960), Table I, positive half: 0.7980; 0.4528, 1.510; 0.2451, 0.7560, 1.344, 2.152 */
    static const double published[3][4] = {
        {0.798}, {0.453, 1.510}, {0.245, 0.756, 1.344, 2.152}};
    static const double published_mse[3] = {0.3634, 0.1175, 0.03454};
    for (int b = 1; b <= 3; b++) {
        kvtc_qtype t = (kvtc_qtype)(KVTC_Q_LM1 + b - 1);
        int m = 1 << b;
        const float *lv = kvtc_lm_levels(t);
        double ref[8], mse;
        lloyd_max_gaussian(m, ref, &mse);
        CHECK_EQ(kvtc_qtype_bits(t), (uint32_t)b);
        CHECK_NEAR(mse, published_mse[b - 1], 1e-4);
        for (int i = 0; i < m; i++) {
            CHECK_MSG(fabs(lv[i] - ref[i]) < 1e-6, "%s level %d: %.7f, Lloyd-Max %.7f",
                      kvtc_qtype_name(t), i, lv[i], ref[i]);
            if (i >= m / 2)
                CHECK_MSG(fabs(lv[i] - published[b - 1][i - m / 2]) < 5e-4,
                          "%s level %d: %.4f, published %.3f", kvtc_qtype_name(t), i, lv[i],
                          published[b - 1][i - m / 2]);
        }
    }
}

/* On N(0, sigma^2) data in groups of 1024 the per-token scale is sigma to
 * within ~2%, so the MSE per coefficient is the Lloyd-Max distortion times
 * sigma^2 (per-group refitting can only lower it, by O(1/n)). Every code is
 * the nearest level for the stored scale. */
static void test_lm_quant(void)
{
    static const double theory[3] = {0.36338, 0.11748, 0.03455};
    test_rng r;
    rng_seed(&r, 1960);
    enum { N = 1024, GROUPS = 64 };
    static float x[N], y[N];
    uint8_t codes[N];
    for (int b = 1; b <= 3; b++) {
        kvtc_qtype t = (kvtc_qtype)(KVTC_Q_LM1 + b - 1);
        const float *lv = kvtc_lm_levels(t);
        double sq = 0, sigma = 3.0;
        for (int g = 0; g < GROUPS; g++) {
            for (int i = 0; i < N; i++)
                x[i] = (float)(sigma * rng_gaussian(&r));
            uint16_t shift = 1, scale = 0;
            kvtc_quant_group(t, x, N, &shift, &scale, codes);
            CHECK_EQ(shift, 0);
            CHECK(kvtc_lm_scale_valid(scale));
            float sc = kvtc_f16_to_f32(scale);
            CHECK_MSG(fabs(sc / sigma - 1) < 0.1, "%s scale %g for sigma %g", kvtc_qtype_name(t),
                      sc, sigma);
            kvtc_dequant_group(t, 0, scale, codes, N, y);
            for (int i = 0; i < N; i++) {
                CHECK(codes[i] < (1u << b));
                CHECK_NEAR(y[i], sc * lv[codes[i]], 0);
                for (int c = 0; c < (1 << b); c++)
                    CHECK_MSG(fabsf(x[i] - sc * lv[c]) >= fabsf(x[i] - y[i]) - 1e-6f * sigma,
                              "%s: code %u is not the nearest level", kvtc_qtype_name(t), codes[i]);
                sq += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            }
            double e = kvtc_quant_group_error(t, x, N), direct = 0;
            for (int i = 0; i < N; i++)
                direct += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            CHECK_NEAR(e, direct, 1e-9 * direct);
        }
        double mse = sq / ((double)N * GROUPS) / (sigma * sigma);
        printf("%s on N(0,1) in groups of %d: MSE %.5f, Lloyd-Max %.5f\n", kvtc_qtype_name(t), N,
               mse, theory[b - 1]);
        CHECK_MSG(mse < theory[b - 1] * 1.02 && mse > theory[b - 1] * 0.95,
                  "%s MSE %.5f far from the Gaussian's %.5f", kvtc_qtype_name(t), mse, theory[b - 1]);
    }
    /* a zero group: scale 0, zeros back; sizes below 16 are refused by plans */
    float z[16] = {0}, back[16];
    uint16_t shift, scale = 7;
    kvtc_quant_group(KVTC_Q_LM3, z, 16, &shift, &scale, codes);
    kvtc_dequant_group(KVTC_Q_LM3, shift, scale, codes, 16, back);
    CHECK_EQ(scale, 0);
    for (int i = 0; i < 16; i++)
        CHECK_NEAR(back[i], 0, 0);
    CHECK(!kvtc_qtype_size_ok(KVTC_Q_LM2, 1) && kvtc_qtype_size_ok(KVTC_Q_LM2, 16) &&
          kvtc_qtype_size_ok(KVTC_Q_INT2, 1));
    CHECK(!kvtc_lm_scale_valid(0x7c00) && !kvtc_lm_scale_valid(0x7e00) &&
          !kvtc_lm_scale_valid(0x8001) && kvtc_lm_scale_valid(0x7bff) && kvtc_lm_scale_valid(0));
}

int main(void)
{
    test_e4m3();
    test_f16();
    test_bf16();
    test_array_conversions();
    test_pack();
    test_group_quant();
    test_lm_levels();
    test_lm_quant();
    return test_summary("test_quant");
}
