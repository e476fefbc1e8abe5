/* Golden files: tests/data/golden_v1.kvtcal and tests/data/golden_v1.kvtc were
 * written by this library when format version 1 was fixed. Today's decoder must
 * read them to exactly the same values, so a change that breaks old files fails
 * here. Checked bit for bit: the stream's header fields, the decoded
 * coefficients of every coded token (SHA-256) and the raw sink and window
 * tokens (SHA-256). The final reconstruction goes through BLAS, whose last bits
 * may differ between machines, so it is checked against a double-precision
 * reference within one fp16 rounding step instead (its SHA-256 is printed).
 *
 * To regenerate after an intended format change (bump the version first):
 *   KVTC_WRITE_GOLDEN=1 KVTC_SOURCE_DIR=<repo> ./test_golden
 * then paste the printed values into the EXPECT_* constants below. */
#include "codec.h"
#include "codec_common.h"
#include "container.h"
#include "kernels.h"
#include "transform.h"

#include <math.h>

#define EXPECT_COEF_SHA "f724cec1c30aff1f729345154c3f5d127640416df035d02c3400763a435f5964"
#define EXPECT_RAW_SHA "e69d9cefa781ec3f04d9abeb4b5fa202d5d6fccf212e5740195457cdecc29d7a"
#define EXPECT_TOTAL_BYTES 3772
#define EXPECT_K_BITS 200
#define EXPECT_V_BITS 96

#define TOKENS 60u
#define POS0 5
#define SINKS 4u
#define WINDOW 8u
#define BLOCK_TOKENS 16u

/* 2 layers x 2 kv heads x 8 dims = 32 features, interleaved RoPE with a
 * frequency scale: small files that still exercise every stage. */
static kvtc_model_shape golden_shape(void)
{
    kvtc_model_shape s = {2, 2, 8, KVTC_ROPE_INTERLEAVED, 8, 500.0, 0.5};
    return s;
}

static bool data_path(char *buf, size_t size, const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/%s", name);
    return test_source_path(buf, size, rel);
}

static int write_golden(void)
{
    kvtc_model_shape shape = golden_shape();
    kvtc_calibration *cal = codec_test_calibration(&shape, SINKS, WINDOW, 1, 3, 200);
    kvtc_cache *c = make_random_cache(&shape, KVTC_F16, TOKENS, POS0, CODEC_TEST_LOW_RANK, 4242);
    char cal_path[4096], kvtc_path[4096];
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.k_ratio = 2.5; /* keys: int8, dropped and fp8 groups of sizes 16 and 1 */
    opt.v_ratio = 4;   /* values: int4 */
    opt.block_tokens = BLOCK_TOKENS;
    void *data = NULL;
    size_t len = 0;
    kvtc_error err;
    if (!CHECK(cal && c) || !CHECK(data_path(cal_path, sizeof cal_path, "golden_v1.kvtcal")) ||
        !CHECK(data_path(kvtc_path, sizeof kvtc_path, "golden_v1.kvtc")) ||
        !CHECK_OK(kvtc_cache_set_model_name(c, "golden-v1", &err), &err) ||
        !CHECK_OK(kvtc_compress(cal, c, &opt, &data, &len, &err), &err) ||
        !CHECK_OK(kvtc_calibration_write(cal, cal_path, &err), &err) ||
        !CHECK_OK(kvtc_write_file_atomic(kvtc_path, data, len, &err), &err))
        return test_summary("test_golden");
    printf("wrote %s and %s (%zu bytes); now run without KVTC_WRITE_GOLDEN and paste the "
           "values it prints\n",
           cal_path, kvtc_path, len);
    kvtc_buffer_free(data);
    kvtc_cache_free(c);
    kvtc_calibration_free(cal);
    return test_summary("test_golden");
}

static void sha_hex(const void *data, size_t len, char hex[65])
{
    uint8_t digest[32];
    kvtc_sha256(data, len, digest);
    kvtc_hex(digest, 32, hex);
}

/* SHA-256 of both kinds' coefficients, keys first, as little-endian f32. */
static bool coefficients_sha(const kvtc_calibration *cal, const void *data, size_t len,
                             char hex[65])
{
    float *coef[2] = {NULL, NULL};
    uint32_t n[2] = {0, 0}, nc[2] = {0, 0};
    kvtc_error err;
    bool ok = true;
    for (int k = 0; k < 2 && ok; k++)
        ok = CHECK_OK(kvtc_stream_coefficients(cal, data, len, (kvtc_kind)k, &coef[k], &n[k],
                                               &nc[k], &err),
                      &err);
    if (ok) {
        size_t bytes0 = (size_t)n[0] * nc[0] * 4, bytes1 = (size_t)n[1] * nc[1] * 4;
        uint8_t *all = malloc(bytes0 + bytes1 + 1);
        if ((ok = CHECK(all))) {
            memcpy(all, coef[0], bytes0);
            memcpy(all + bytes0, coef[1], bytes1);
            sha_hex(all, bytes0 + bytes1, hex);
        }
        free(all);
        CHECK_EQ(n[0], TOKENS - SINKS - WINDOW);
    }
    kvtc_free(coef[0]);
    kvtc_free(coef[1]);
    return ok;
}

/* SHA-256 of the raw tokens (sinks, then window) of every kind, layer and head. */
static void raw_tokens_sha(const kvtc_cache *c, char hex[65])
{
    size_t row = (size_t)c->shape.head_dim * kvtc_dtype_size(c->dtype);
    size_t per_head = (SINKS + WINDOW) * row;
    size_t total = 2 * (size_t)c->shape.n_layer * c->shape.n_kv_head * per_head;
    uint8_t *all = malloc(total), *at = all;
    if (!CHECK(all))
        return;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < c->shape.n_layer; l++)
            for (uint32_t h = 0; h < c->shape.n_kv_head; h++) {
                const uint8_t *head = (const uint8_t *)kvtc_cache_data_const(c, (kvtc_kind)k, l) +
                                      (size_t)h * c->n_tokens * row;
                memcpy(at, head, SINKS * row);
                memcpy(at + SINKS * row, head + (size_t)(c->n_tokens - WINDOW) * row, WINDOW * row);
                at += per_head;
            }
    sha_hex(all, total, hex);
    free(all);
}

/* Coded tokens against x = coef . V^T + mean computed in double, RoPE applied,
 * allowing one fp16 rounding step and the product's own error: sgemm's is a
 * few float roundings; the bf16 tile path's (transform.h) with 3 terms up to
 * about 2^-16 of sum |coef_j v_ij| (2^-18 measured here; bound 2^-15), with 1
 * term (plans whose own error is large: the values here) about 2^-9 (bound
 * 2^-7). The sum is taken as the largest of the head twice over for RoPE,
 * which mixes two features of a head. */
static void check_reconstruction(const kvtc_calibration *cal, const void *data, size_t len,
                                 const kvtc_cache *out)
{
    const kvtc_model_shape *s = &cal->shape;
    size_t p = (size_t)kvtc_shape_features(s);
    float *row = malloc(p * sizeof *row), *got = malloc(p * sizeof *got);
    float *mag = malloc(p * sizeof *mag);
    int bad = 0;
    kvtc_stream st;
    kvtc_error perr;
    if (!CHECK_OK(kvtc_stream_parse(data, len, &st, &perr), &perr))
        return;
    for (int k = 0; k < 2 && row && got && mag; k++) {
        const struct kvtc_calib_kind *ck = &cal->kind[k];
        float *coef = NULL;
        uint32_t n = 0, nc = 0;
        kvtc_error err;
        if (!CHECK_OK(kvtc_stream_coefficients(cal, data, len, (kvtc_kind)k, &coef, &n, &nc, &err),
                      &err))
            break;
        float product_bound = kvtc_transform_tiles_usable(cal) &&
                                      kvtc_transform_tile_terms(cal, st.plan[k]) == 1
                                  ? 0x1p-7f
                                  : 0x1p-15f;
        for (uint32_t t = 0; t < n; t++) {
            for (size_t i = 0; i < p; i++) {
                double x = ck->mean[i], m = 0;
                for (uint32_t j = 0; j < nc; j++) {
                    double term = (double)coef[(size_t)t * nc + j] * ck->basis[i * ck->rank + j];
                    x += term;
                    m += fabs(term);
                }
                row[i] = (float)x;
                mag[i] = (float)m;
            }
            for (size_t h = 0; h < p / s->head_dim; h++) {
                float most = 0;
                for (size_t i = h * s->head_dim; i < (h + 1) * s->head_dim; i++)
                    most = fmaxf(most, mag[i]);
                for (size_t i = h * s->head_dim; i < (h + 1) * s->head_dim; i++)
                    mag[i] = 2 * most;
            }
            if (k == KVTC_KEY)
                for (size_t h = 0; h < p / s->head_dim; h++)
                    kvtc_rope_rotate(s, row + h * s->head_dim, POS0 + SINKS + t, false);
            /* the decoded token, as floats, in the same [layer][head][dim] order */
            for (uint32_t l = 0; l < s->n_layer; l++)
                for (uint32_t h = 0; h < s->n_kv_head; h++)
                    kvtc_to_f32(out->dtype,
                                (const uint8_t *)kvtc_cache_data_const(out, (kvtc_kind)k, l) +
                                    ((size_t)h * out->n_tokens + SINKS + t) * s->head_dim *
                                        kvtc_dtype_size(out->dtype),
                                got + ((size_t)l * s->n_kv_head + h) * s->head_dim, s->head_dim);
            for (size_t i = 0; i < p; i++)
                bad += fabsf(got[i] - row[i]) >
                       fabsf(row[i]) * 0x1p-10f + mag[i] * product_bound + 1e-6f;
        }
        kvtc_free(coef);
    }
    CHECK_MSG(bad == 0,
              "%d decoded values differ from the reference by more than fp16 rounding and the "
              "product's error",
              bad);
    kvtc_stream_release(&st);
    free(mag);
    free(row);
    free(got);
}

int main(void)
{
    if (getenv("KVTC_WRITE_GOLDEN"))
        return write_golden();
    char cal_path[4096], kvtc_path[4096];
    if (!CHECK(data_path(cal_path, sizeof cal_path, "golden_v1.kvtcal") &&
               data_path(kvtc_path, sizeof kvtc_path, "golden_v1.kvtc")))
        return test_summary("test_golden");
    kvtc_calibration *cal = NULL;
    void *data = NULL;
    size_t len = 0;
    kvtc_error err;
    kvtc_cache *out = NULL;
    if (!CHECK_OK(kvtc_calibration_read(cal_path, &cal, &err), &err) ||
        !CHECK_OK(kvtc_read_file(kvtc_path, &data, &len, &err), &err))
        goto done;

    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_model_shape shape = golden_shape();
    if (CHECK_OK(kvtc_stream_info_get(data, len, &info, &err), &err)) {
        CHECK_EQ(info.format_version, 1);
        CHECK(kvtc_shape_equal(&info.shape, &shape));
        CHECK_EQ(info.dtype, KVTC_F16);
        CHECK_EQ(info.pos0, POS0);
        CHECK_EQ(info.n_tokens, TOKENS);
        CHECK_EQ(info.sinks, SINKS);
        CHECK_EQ(info.window, WINDOW);
        CHECK_EQ(info.block_tokens, BLOCK_TOKENS);
        CHECK_EQ(info.n_blocks, 2 + (TOKENS - SINKS - WINDOW + BLOCK_TOKENS - 1) / BLOCK_TOKENS);
        CHECK_EQ(info.k_bits_per_token, EXPECT_K_BITS);
        CHECK_EQ(info.v_bits_per_token, EXPECT_V_BITS);
        CHECK_NEAR(info.k_ratio, 2.5, 0);
        CHECK_NEAR(info.v_ratio, 4, 0);
        CHECK_EQ(info.total_bytes, EXPECT_TOTAL_BYTES);
        CHECK(strcmp(info.model_name, "golden-v1") == 0);
        CHECK(memcmp(info.calib_fingerprint, kvtc_calibration_fingerprint(cal), 32) == 0);
    }
    char coef_sha[65] = "", raw_sha[65] = "", out_sha[65] = "";
    if (coefficients_sha(cal, data, len, coef_sha))
        CHECK_MSG(strcmp(coef_sha, EXPECT_COEF_SHA) == 0, "coefficients SHA-256 %s", coef_sha);
    if (!CHECK_OK(kvtc_decompress(cal, data, len, NULL, &out, &err), &err))
        goto done;
    raw_tokens_sha(out, raw_sha);
    CHECK_MSG(strcmp(raw_sha, EXPECT_RAW_SHA) == 0, "raw tokens SHA-256 %s", raw_sha);
    check_reconstruction(cal, data, len, out);
    sha_hex(out->data, (size_t)kvtc_raw_chunk_bytes(&out->shape, out->dtype, out->n_tokens) * 2,
            out_sha);
    printf("total_bytes %zu, k_bits %u, v_bits %u\ncoefficients %s\nraw tokens   %s\n"
           "decoded (this machine's %s kernels) %s\n",
           len, info.k_bits_per_token, info.v_bits_per_token, coef_sha, raw_sha,
           kvtc_kernels_name(kvtc_kernels_level()), out_sha);
done:
    kvtc_cache_free(out);
    kvtc_buffer_free(data);
    kvtc_calibration_free(cal);
    return test_summary("test_golden");
}
