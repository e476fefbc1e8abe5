/* Golden files, written by this library when each format version was fixed:
 *   tests/data/golden_v1.kvtc  version 1 (F16; int8, fp8, int4 and dropped groups)
 *   tests/data/golden_v2.kvtc  version 2 (F32; escaped tokens: a key token of
 *                              1e20s and a value feature of 3e38, stored raw)
 * both with tests/data/golden_v1.kvtcal. Today's decoder must read them to
 * exactly the same values, so a change that breaks old files fails here.
 * Checked bit for bit: the stream's header fields, the decoded coefficients of
 * every coded token (SHA-256), the raw sink and window tokens (SHA-256) and the
 * escaped tokens. The final reconstruction goes through BLAS, whose last bits
 * may differ between machines, so it is checked against a double-precision
 * reference within one fp16 rounding step instead (its SHA-256 is printed).
 *
 * To regenerate one after an intended format change (bump the version first):
 *   KVTC_WRITE_GOLDEN=golden_vN KVTC_SOURCE_DIR=<repo> ./test_golden
 * then paste the printed values into its entry of `goldens` below. Never
 * regenerate a file of a released version: old files must keep decoding. */
#include "codec.h"
#include "codec_common.h"
#include "container.h"
#include "kernels.h"
#include "transform.h"

#include <math.h>

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

/* An escaped token of a golden stream: the stream token index and the kind,
 * and the feature that was set to `value` (every feature when `feature` < 0). */
typedef struct golden_escape {
    kvtc_kind kind;
    uint32_t token;
    int feature;
    float value;
} golden_escape;

typedef struct golden {
    const char *name, *model; /* tests/data/<name>.kvtc; its model name */
    uint32_t version;
    kvtc_dtype dtype;
    double k_ratio, v_ratio;
    const char *coef_sha, *raw_sha;
    size_t total_bytes;
    uint32_t k_bits, v_bits;
    golden_escape escapes[2];
    size_t n_escapes;
} golden;

static const golden goldens[] = {
    /* keys: int8, dropped and fp8 groups of sizes 16 and 1; values: int4 */
    {"golden_v1", "golden-v1", 1, KVTC_F16, 2.5, 4,
     "f724cec1c30aff1f729345154c3f5d127640416df035d02c3400763a435f5964",
     "e69d9cefa781ec3f04d9abeb4b5fa202d5d6fccf212e5740195457cdecc29d7a", 3772, 200, 96,
     {{0}}, 0},
    {"golden_v2", "golden-v2", 2, KVTC_F32, 2.5, 4, 
     "fe892d45574a9470a9e64e2a6681583831f7aab7a90cccbe67a06b5c18a9e154",
     "2f00203b33c53f1f93f5ae81e34234b635abab4d33f382e915748f0c44e291d1", 5445, 200, 96,
     {{KVTC_KEY, 20, -1, 1e20f}, {KVTC_VALUE, 33, 5, 3e38f}}, 2},
};

static bool data_path(char *buf, size_t size, const char *name, const char *ext)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/%s%s", name, ext);
    return test_source_path(buf, size, rel);
}

/* Where feature f (in [layer][head][dim] order) of token t of kind k lives. */
static uint8_t *feature_at(kvtc_cache *c, kvtc_kind k, uint32_t t, uint32_t f)
{
    uint32_t d = c->shape.head_dim, h = f / d % c->shape.n_kv_head, l = f / d / c->shape.n_kv_head;
    size_t at = ((size_t)h * c->n_tokens + t) * d + f % d;
    return (uint8_t *)kvtc_cache_data(c, k, l) + at * kvtc_dtype_size(c->dtype);
}

static kvtc_cache *golden_cache(const golden *g)
{
    kvtc_model_shape shape = golden_shape();
    kvtc_cache *c = make_random_cache(&shape, g->dtype, TOKENS, POS0, CODEC_TEST_LOW_RANK, 4242);
    uint32_t p = (uint32_t)kvtc_shape_features(&shape);
    for (size_t e = 0; c && e < g->n_escapes; e++) {
        const golden_escape *x = &g->escapes[e];
        for (uint32_t f = 0; f < p; f++)
            if (x->feature < 0 || (uint32_t)x->feature == f)
                memcpy(feature_at(c, x->kind, x->token, f), &x->value, sizeof x->value);
    }
    return c;
}

static int write_golden(const char *name)
{
    const golden *g = NULL;
    for (size_t i = 0; i < sizeof goldens / sizeof *goldens; i++)
        if (strcmp(goldens[i].name, name) == 0)
            g = &goldens[i];
    if (!CHECK_MSG(g, "no golden file '%s' (KVTC_WRITE_GOLDEN names one)", name))
        return test_summary("test_golden");
    kvtc_cache *c = golden_cache(g);
    char cal_path[4096], kvtc_path[4096];
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.k_ratio = g->k_ratio;
    opt.v_ratio = g->v_ratio;
    opt.block_tokens = BLOCK_TOKENS;
    void *data = NULL;
    size_t len = 0;
    kvtc_error err;
    /* The calibration is version 1's, written with it; later streams use that file. */
    kvtc_calibration *cal = NULL;
    if (!CHECK(c) || !CHECK(data_path(cal_path, sizeof cal_path, "golden_v1", ".kvtcal")))
        return test_summary("test_golden");
    if (g->version == 1) {
        kvtc_model_shape shape = golden_shape();
        cal = codec_test_calibration(&shape, SINKS, WINDOW, 1, 3, 200);
        if (!CHECK(cal) || !CHECK_OK(kvtc_calibration_write(cal, cal_path, &err), &err))
            return test_summary("test_golden");
    } else if (!CHECK_OK(kvtc_calibration_read(cal_path, &cal, &err), &err)) {
        return test_summary("test_golden");
    }
    if (!CHECK(data_path(kvtc_path, sizeof kvtc_path, g->name, ".kvtc")) ||
        !CHECK_OK(kvtc_cache_set_model_name(c, g->model, &err), &err) ||
        !CHECK_OK(kvtc_compress(cal, c, &opt, &data, &len, &err), &err) ||
        !CHECK_OK(kvtc_write_file_atomic(kvtc_path, data, len, &err), &err))
        return test_summary("test_golden");
    printf("wrote %s%s%s (%zu bytes); now run without KVTC_WRITE_GOLDEN and paste the "
           "values it prints\n",
           g->version == 1 ? cal_path : "", g->version == 1 ? " and " : "", kvtc_path, len);
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

/* Whether g escaped this token of this kind (its row comes back raw). */
static bool escaped(const golden *g, kvtc_kind k, uint32_t token)
{
    for (size_t e = 0; e < g->n_escapes; e++)
        if (g->escapes[e].token == token && g->escapes[e].kind == k)
            return true;
    return false;
}

/* Coded tokens against x = coef . V^T + mean computed in double, RoPE applied,
 * allowing one fp16 rounding step and the product's own error: sgemm's is a
 * few float roundings; the bf16 tile path's (transform.h) with 3 terms up to
 * about 2^-16 of sum |coef_j v_ij| (2^-18 measured here; bound 2^-15), with 1
 * term (plans whose own error is large: the values here) about 2^-9 (bound
 * 2^-7). The sum is taken as the largest of the head twice over for RoPE,
 * which mixes two features of a head. Escaped tokens are checked apart. */
static void check_reconstruction(const kvtc_calibration *cal, const void *data, size_t len,
                                 const kvtc_cache *out, const golden *g)
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
            if (escaped(g, (kvtc_kind)k, SINKS + t))
                continue;
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

/* Escaped tokens come back bit-exact: the injected values, and the rest of
 * the row as the original cache held it. */
static void check_escapes(const golden *g, kvtc_cache *out)
{
    kvtc_cache *in = golden_cache(g);
    if (!CHECK(in))
        return;
    uint32_t p = (uint32_t)kvtc_shape_features(&out->shape);
    size_t size = kvtc_dtype_size(out->dtype);
    for (size_t e = 0; e < g->n_escapes; e++) {
        const golden_escape *x = &g->escapes[e];
        int differ = 0;
        for (uint32_t f = 0; f < p; f++)
            differ += memcmp(feature_at(in, x->kind, x->token, f),
                             feature_at(out, x->kind, x->token, f), size) != 0;
        float v;
        memcpy(&v, feature_at(out, x->kind, x->token, x->feature < 0 ? 0 : (uint32_t)x->feature),
               sizeof v);
        CHECK_MSG(differ == 0 && v == x->value,
                  "%s: escaped %s token %u: %d features differ, feature holds %g (want %g)",
                  g->name, kvtc_kind_name(x->kind), x->token, differ, (double)v,
                  (double)x->value);
    }
    kvtc_cache_free(in);
}

/* The stream's escaped tokens are skipped by the reconstruction check. */
static void check_golden(const golden *g, const kvtc_calibration *cal, const char *kvtc_path)
{
    void *data = NULL;
    size_t len = 0;
    kvtc_error err;
    kvtc_cache *out = NULL;
    if (!CHECK_OK(kvtc_read_file(kvtc_path, &data, &len, &err), &err))
        return;
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_model_shape shape = golden_shape();
    if (CHECK_OK(kvtc_stream_info_get(data, len, &info, &err), &err)) {
        CHECK_EQ(info.format_version, g->version);
        CHECK(kvtc_shape_equal(&info.shape, &shape));
        CHECK_EQ(info.dtype, g->dtype);
        CHECK_EQ(info.pos0, POS0);
        CHECK_EQ(info.n_tokens, TOKENS);
        CHECK_EQ(info.sinks, SINKS);
        CHECK_EQ(info.window, WINDOW);
        CHECK_EQ(info.block_tokens, BLOCK_TOKENS);
        CHECK_EQ(info.n_blocks, 2 + (TOKENS - SINKS - WINDOW + BLOCK_TOKENS - 1) / BLOCK_TOKENS);
        CHECK_EQ(info.k_bits_per_token, g->k_bits);
        CHECK_EQ(info.v_bits_per_token, g->v_bits);
        CHECK_NEAR(info.k_ratio, g->k_ratio, 0);
        CHECK_NEAR(info.v_ratio, g->v_ratio, 0);
        CHECK_EQ(info.total_bytes, g->total_bytes);
        CHECK(strcmp(info.model_name, g->model) == 0);
        CHECK(memcmp(info.calib_fingerprint, kvtc_calibration_fingerprint(cal), 32) == 0);
    }
    char coef_sha[65] = "", raw_sha[65] = "", out_sha[65] = "";
    if (coefficients_sha(cal, data, len, coef_sha))
        CHECK_MSG(strcmp(coef_sha, g->coef_sha) == 0, "%s: coefficients SHA-256 %s", g->name,
                  coef_sha);
    if (CHECK_OK(kvtc_decompress(cal, data, len, NULL, &out, &err), &err)) {
        raw_tokens_sha(out, raw_sha);
        CHECK_MSG(strcmp(raw_sha, g->raw_sha) == 0, "%s: raw tokens SHA-256 %s", g->name,
                  raw_sha);
        check_escapes(g, out);
        check_reconstruction(cal, data, len, out, g);
        sha_hex(out->data,
                (size_t)kvtc_raw_chunk_bytes(&out->shape, out->dtype, out->n_tokens) * 2,
                out_sha);
    }
    printf("%s: total_bytes %zu, k_bits %u, v_bits %u\ncoefficients %s\nraw tokens   %s\n"
           "decoded (this machine's %s kernels) %s\n",
           g->name, len, info.k_bits_per_token, info.v_bits_per_token, coef_sha, raw_sha,
           kvtc_kernels_name(kvtc_kernels_level()), out_sha);
    kvtc_cache_free(out);
    kvtc_buffer_free(data);
}

int main(void)
{
    const char *write = getenv("KVTC_WRITE_GOLDEN");
    if (write)
        return write_golden(write);
    char cal_path[4096];
    kvtc_calibration *cal = NULL;
    kvtc_error err;
    if (CHECK(data_path(cal_path, sizeof cal_path, "golden_v1", ".kvtcal")) &&
        CHECK_OK(kvtc_calibration_read(cal_path, &cal, &err), &err))
        for (size_t i = 0; i < sizeof goldens / sizeof *goldens; i++) {
            char kvtc_path[4096];
            if (CHECK(data_path(kvtc_path, sizeof kvtc_path, goldens[i].name, ".kvtc")))
                check_golden(&goldens[i], cal, kvtc_path);
        }
    kvtc_calibration_free(cal);
    return test_summary("test_golden");
}
