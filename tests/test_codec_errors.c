/* Damaged and mismatched input to the decoders and encoders: truncation at
 * every byte, every single-bit flip, hostile header fields with a valid CRC,
 * the wrong calibration or shape, bad options, non-finite tokens, a layer
 * callback that stops, and allocation failure at every allocation. Each must
 * end in a clean error (never a crash, a leak or a silently different cache). */
#include "codec_common.h"
#include "container.h"
#include "entropy.h"
#include "test_alloc.h"

#include <math.h>

#define SINKS 4u
#define WINDOW 16u

static kvtc_calibration *g_cal;
static kvtc_model_shape g_shape;

static kvtc_compress_options small_blocks(void)
{
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.k_ratio = opt.v_ratio = 5;
    opt.ratio_mode = KVTC_RATIO_BUDGET; /* plans fixed by the ratio (with lm groups) */
    opt.block_tokens = 8;
    return opt;
}

typedef enum outcome { REFUSED, IDENTICAL, DIFFERENT } outcome;

/* Decodes `data` and compares the result with `want`; *status (if given) gets
 * the decoder's status. */
static outcome decode_outcome(const void *data, size_t len, const kvtc_cache *want,
                              kvtc_status *status)
{
    kvtc_cache *got = NULL;
    kvtc_status st = kvtc_decompress(g_cal, data, len, NULL, &got, NULL);
    if (status)
        *status = st;
    if (st != KVTC_OK)
        return got == NULL ? REFUSED : DIFFERENT;
    outcome o = test_caches_equal(got, want) ? IDENTICAL : DIFFERENT;
    kvtc_cache_free(got);
    return o;
}

static kvtc_status decode_status(const void *data, size_t len, const kvtc_cache *want)
{
    kvtc_status st;
    decode_outcome(data, len, want, &st);
    return st;
}

/* Recomputes the header CRC after an edit, so the edit reaches the field checks. */
static void fix_header_crc(uint8_t *data)
{
    size_t body = (size_t)test_get_le(data + 16, 8) - 4;
    test_put_le(data + body, kvtc_crc32(data, body), 4);
}

static void test_truncation_and_flips(const uint8_t *data, size_t len, const kvtc_cache *want)
{
    uint8_t *copy = malloc(len + 1);
    if (!CHECK(copy))
        return;
    int bad_truncations = 0, silent_flips = 0;
    for (size_t n = 0; n < len; n++) {
        memcpy(copy, data, n);
        kvtc_stream_info info = {.struct_size = sizeof info};
        kvtc_cache *out = NULL;
        if (kvtc_decompress(g_cal, copy, n, NULL, &out, NULL) == KVTC_OK ||
            kvtc_stream_info_get(copy, n, &info, NULL) == KVTC_OK || out != NULL)
            bad_truncations++;
        kvtc_cache_free(out);
    }
    CHECK_MSG(bad_truncations == 0, "%d truncated streams were accepted", bad_truncations);

    memcpy(copy, data, len);
    for (size_t i = 0; i < len; i++)
        for (int bit = 0; bit < 8; bit++) {
            copy[i] ^= (uint8_t)(1u << bit);
            silent_flips += decode_outcome(copy, len, want, NULL) == DIFFERENT;
            copy[i] ^= (uint8_t)(1u << bit);
        }
    CHECK_MSG(silent_flips == 0, "%d bit flips decoded to a different cache", silent_flips);

    /* One stray byte at the end. */
    memcpy(copy, data, len);
    copy[len] = 0;
    CHECK_STATUS(decode_status(copy, len + 1, want), KVTC_E_FORMAT, NULL);
    free(copy);
}

/* Every 32-bit word of the header set to hostile values, CRC fixed: the
 * decoder must answer (error or the same cache) without crashing or hanging. */
static void test_hostile_header(const uint8_t *data, size_t len, const kvtc_cache *want)
{
    static const uint32_t values[] = {0, 1, 2, 3, 7, 255, 256, 65535, 65536, 65537,
                                      0x7fffffffu, 0x80000000u, 0xfffffffeu, 0xffffffffu};
    size_t header = (size_t)test_get_le(data + 16, 8);
    uint8_t *copy = malloc(len);
    if (!CHECK(copy))
        return;
    for (size_t off = 8; off + 4 <= header - 4; off += 4) {
        if (off == 16 || off == 20)
            continue; /* the header length: covered by truncation */
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            memcpy(copy, data, len);
            test_put_le(copy + off, values[v], 4);
            fix_header_crc(copy);
            /* Some edits stay valid (pos0, dtype F16 <-> BF16, fp8 <-> int8 groups,
             * the ratios): then info and decoder must agree on what the stream is. */
            kvtc_stream_info info = {.struct_size = sizeof info};
            kvtc_status info_st = kvtc_stream_info_get(copy, len, &info, NULL);
            kvtc_cache *got = NULL;
            kvtc_status st = kvtc_decompress(g_cal, copy, len, NULL, &got, NULL);
            CHECK_MSG(st != KVTC_OK || (info_st == KVTC_OK && got->n_tokens == info.n_tokens &&
                                        got->pos0 == info.pos0 && got->dtype == info.dtype),
                      "word at %zu = %u: decoder and stream info disagree", off, values[v]);
            CHECK_MSG((st == KVTC_OK) == (got != NULL), "word at %zu = %u: output and status",
                      off, values[v]);
            kvtc_cache_free(got);
        }
    }

    /* Specific fields and the status they must give. */
    memcpy(copy, data, len);
    test_put_le(copy + 8, KVTC_STREAM_VERSION + 1, 4); /* a newer version: refused before the CRC */
    CHECK_STATUS(decode_status(copy, len, want), KVTC_E_VERSION, NULL);
    test_put_le(copy + 8, 0, 4);
    CHECK_STATUS(decode_status(copy, len, want), KVTC_E_FORMAT, NULL);
    memcpy(copy, data, len);
    copy[0] = 'X';
    CHECK_STATUS(decode_status(copy, len, want), KVTC_E_FORMAT, NULL);
    memcpy(copy, data, len);
    test_put_le(copy + 72, test_get_le(copy + 72, 4) + 1, 4); /* n_tokens */
    fix_header_crc(copy);
    CHECK_STATUS(decode_status(copy, len, want), KVTC_E_FORMAT, NULL);
    memcpy(copy, data, len);
    copy[header - 1] ^= 1; /* the CRC itself */
    CHECK_STATUS(decode_status(copy, len, want), KVTC_E_CHECKSUM, NULL);
    free(copy);
}

/* A flip inside a chunk is caught by its CRC. */
static void test_chunk_crc(const uint8_t *data, size_t len)
{
    uint8_t *copy = malloc(len);
    if (!CHECK(copy))
        return;
    memcpy(copy, data, len);
    copy[len - 1] ^= 0x10; /* last byte of the window's values */
    kvtc_error err;
    kvtc_cache *out = NULL;
    CHECK_STATUS(kvtc_decompress(g_cal, copy, len, NULL, &out, &err), KVTC_E_CHECKSUM, NULL);
    CHECK(strstr(err.message, "CRC") != NULL);
    CHECK(out == NULL);
    free(copy);
}

/* Re-serializes `data` with one fp16 scale of the first lm group of the first
 * coded key chunk set to `scale` (inflated, edited, deflated again, every CRC
 * made valid): only the decoder's check of lm scales can catch it. */
static bool forge_lm_scale(const uint8_t *data, size_t len, uint32_t token, uint16_t scale,
                           void **out, size_t *out_len)
{
    kvtc_stream s;
    if (kvtc_stream_parse(data, len, &s, NULL) != KVTC_OK)
        return false;
    bool done = false;
    const kvtc_plan *plan = s.plan[KVTC_KEY];
    uint32_t gi = 0;
    while (gi < plan->n_groups && !kvtc_qtype_is_lm(plan->groups[gi].type))
        gi++;
    for (uint32_t b = 0; b < s.n_blocks && !done && gi < plan->n_groups; b++) {
        kvtc_block *blk = &s.blocks[b];
        if (blk->encoding != KVTC_BLOCK_CODED || blk->escapes || token >= blk->n_tokens)
            continue;
        size_t raw_len = (size_t)kvtc_coded_chunk_bytes(plan, blk->n_tokens);
        uint8_t *raw = malloc(raw_len), *z = NULL;
        size_t z_len = 0, at = 0;
        for (uint32_t i = 0; i < gi; i++)
            at += (size_t)kvtc_group_chunk_bytes(&plan->groups[i], blk->n_tokens);
        if (raw && kvtc_inflate_exact(blk->data[KVTC_KEY], (size_t)blk->length[KVTC_KEY], raw,
                                      raw_len, NULL) == KVTC_OK) {
            raw[at + 2 * token] = (uint8_t)scale; /* the group's scales come first */
            raw[at + 2 * token + 1] = (uint8_t)(scale >> 8);
            if (kvtc_deflate(6, raw, raw_len, &z, &z_len, NULL) == KVTC_OK) {
                blk->data[KVTC_KEY] = z;
                blk->length[KVTC_KEY] = z_len;
                blk->crc[KVTC_KEY] = kvtc_crc32(z, z_len);
                done = kvtc_stream_serialize(&s, out, out_len, NULL) == KVTC_OK;
            }
        }
        free(raw);
        kvtc_free(z);
    }
    kvtc_stream_release(&s);
    return done;
}

/* lm scales that no encoder writes (infinite, NaN, negative) are refused as
 * FORMAT, naming the block and group; a finite one decodes (to other values). */
static void test_forged_lm_scales(const uint8_t *data, size_t len, const kvtc_cache *want)
{
    static const uint16_t bad[] = {0x7c00, 0xfc00, 0x7e00, 0x7fff, 0x8000, 0x8001, 0xbc00};
    bool lm = codec_test_uses_lm(data, len);
    CHECK_MSG(lm, "the test stream has no lm group to forge");
    for (size_t i = 0; lm && i < sizeof bad / sizeof *bad; i++) {
        void *forged = NULL;
        size_t forged_len = 0;
        if (!CHECK(forge_lm_scale(data, len, 1, bad[i], &forged, &forged_len)))
            continue;
        kvtc_error err;
        kvtc_cache *out = NULL;
        CHECK_STATUS(kvtc_decompress(g_cal, forged, forged_len, NULL, &out, &err), KVTC_E_FORMAT,
                     &err);
        CHECK_MSG(strstr(err.message, "scale") && strstr(err.message, "block"),
                  "scale 0x%04x: '%s'", bad[i], err.message);
        CHECK(out == NULL);
        kvtc_buffer_free(forged);
    }
    void *forged = NULL;
    size_t forged_len = 0;
    if (lm && CHECK(forge_lm_scale(data, len, 1, 0x3c00, &forged, &forged_len))) {
        kvtc_cache *out = NULL;
        kvtc_error err;
        if (CHECK_OK(kvtc_decompress(g_cal, forged, forged_len, NULL, &out, &err), &err))
            CHECK(out->n_tokens == want->n_tokens);
        kvtc_cache_free(out);
    }
    kvtc_buffer_free(forged);
}

static bool has_hex_prefix(const char *msg, const uint8_t *fingerprint)
{
    char hex[13];
    kvtc_hex(fingerprint, 6, hex);
    return strstr(msg, hex) != NULL;
}

static int stop_at_layer_1(void *user, uint32_t layer, const void *key, const void *value)
{
    (void)key;
    (void)value;
    (*(int *)user)++;
    return layer == 1;
}

static void test_mismatches(const void *data, size_t len, const kvtc_cache *cache)
{
    kvtc_error err;
    kvtc_cache *out = NULL;
    void *buf = NULL;
    size_t buf_len = 0;
    kvtc_compress_options opt = small_blocks();

    /* Another calibration of the same shape: refused, naming both fingerprints. */
    kvtc_calibration *other = codec_test_calibration(&g_shape, SINKS, WINDOW, 77, 2, 200);
    if (CHECK(other)) {
        CHECK_STATUS(kvtc_decompress(other, data, len, NULL, &out, &err), KVTC_E_MISMATCH, &err);
        CHECK_MSG(has_hex_prefix(err.message, kvtc_calibration_fingerprint(g_cal)) &&
                      has_hex_prefix(err.message, kvtc_calibration_fingerprint(other)),
                  "message does not name both fingerprints: %s", err.message);
        uint32_t calls = 0;
        CHECK_STATUS(kvtc_decompress_layers(other, data, len, NULL, test_count_layers, &calls,
                                            &err),
                     KVTC_E_MISMATCH, &err);
        CHECK_EQ(calls, 0);
        CHECK_STATUS(kvtc_decompress_block(other, data, len, 0, NULL, &out, &err),
                     KVTC_E_MISMATCH, &err);
        kvtc_cache *more = make_random_cache(&g_shape, cache->dtype, 3,
                                             cache->pos0 + cache->n_tokens, CODEC_TEST_LOW_RANK, 9);
        CHECK_STATUS(kvtc_append(other, data, len, more, &opt, &buf, &buf_len, &err),
                     KVTC_E_MISMATCH, &err);
        kvtc_cache_free(more);
        kvtc_calibration_free(other);
    }
    CHECK(out == NULL && buf == NULL);

    /* Another shape: its calibration, its caches. */
    kvtc_model_shape wide = g_shape;
    wide.n_kv_head = 3;
    kvtc_calibration *wide_cal = codec_test_calibration(&wide, SINKS, WINDOW, 5, 1, 100);
    kvtc_cache *wide_cache = make_random_cache(&wide, KVTC_F16, 40, 0, CODEC_TEST_LOW_RANK, 6);
    if (CHECK(wide_cal && wide_cache)) {
        CHECK_STATUS(kvtc_decompress(wide_cal, data, len, NULL, &out, &err), KVTC_E_MISMATCH,
                     &err);
        CHECK_STATUS(kvtc_compress(g_cal, wide_cache, &opt, &buf, &buf_len, &err),
                     KVTC_E_MISMATCH, &err);
        CHECK_STATUS(kvtc_append(g_cal, data, len, wide_cache, &opt, &buf, &buf_len, &err),
                     KVTC_E_MISMATCH, &err);
    }
    kvtc_calibration_free(wide_cal);
    kvtc_cache_free(wide_cache);

    /* Appends that do not continue the stream: wrong position or dtype. */
    kvtc_cache *gap = make_random_cache(&g_shape, cache->dtype, 5, cache->pos0 + cache->n_tokens + 1,
                                        CODEC_TEST_LOW_RANK, 10);
    kvtc_cache *f32 = make_random_cache(&g_shape, KVTC_F32, 5, cache->pos0 + cache->n_tokens,
                                        CODEC_TEST_LOW_RANK, 11);
    if (CHECK(gap && f32)) {
        CHECK_STATUS(kvtc_append(g_cal, data, len, gap, &opt, &buf, &buf_len, &err),
                     KVTC_E_MISMATCH, &err);
        CHECK_STATUS(kvtc_append(g_cal, data, len, f32, &opt, &buf, &buf_len, &err),
                     KVTC_E_MISMATCH, &err);
    }
    kvtc_cache_free(gap);
    kvtc_cache_free(f32);
    CHECK(out == NULL && buf == NULL);

    /* A callback that stops after layer 1. */
    int calls = 0;
    CHECK_STATUS(kvtc_decompress_layers(g_cal, data, len, NULL, stop_at_layer_1, &calls, &err),
                 KVTC_E_CANCELLED, &err);
    CHECK_EQ(calls, 2);
}

static void test_bad_options(const kvtc_cache *cache)
{
    void *buf = NULL;
    size_t len = 0;
    kvtc_error err;
    kvtc_compress_options opt = small_blocks();
    opt.block_tokens = 0;
    CHECK_STATUS(kvtc_compress(g_cal, cache, &opt, &buf, &len, &err), KVTC_E_INVALID, &err);
    opt.block_tokens = KVTC_MAX_BLOCK_TOKENS + 1;
    CHECK_STATUS(kvtc_compress(g_cal, cache, &opt, &buf, &len, &err), KVTC_E_INVALID, &err);
    opt = small_blocks();
    opt.deflate_level = 13;
    CHECK_STATUS(kvtc_compress(g_cal, cache, &opt, &buf, &len, &err), KVTC_E_INVALID, &err);
    opt = small_blocks();
    opt.k_ratio = 1.0;
    CHECK_STATUS(kvtc_compress(g_cal, cache, &opt, &buf, &len, &err), KVTC_E_INVALID, &err);
    opt = small_blocks();
    opt.v_ratio = NAN;
    CHECK_STATUS(kvtc_compress(g_cal, cache, &opt, &buf, &len, &err), KVTC_E_INVALID, &err);
    opt = small_blocks();
    opt.v_ratio = 1e6; /* no coordinate fits the budget */
    CHECK_STATUS(kvtc_compress(g_cal, cache, &opt, &buf, &len, &err), KVTC_E_INVALID, &err);
    CHECK(buf == NULL && len == 0);
}

/* Token positions stay within KVTC_MAX_POSITION, so every block decodes alone. */
static void test_position_limit(void)
{
    const uint32_t n = 30;
    kvtc_compress_options opt = small_blocks();
    kvtc_error err;
    kvtc_cache *last = make_random_cache(&g_shape, KVTC_F16, n, KVTC_MAX_POSITION - (n - 1),
                                         CODEC_TEST_LOW_RANK, 14);
    kvtc_cache *beyond = make_random_cache(&g_shape, KVTC_F16, n, KVTC_MAX_POSITION - (n - 2),
                                           CODEC_TEST_LOW_RANK, 14);
    void *buf = NULL, *more_buf = NULL;
    size_t len = 0, more_len = 0;
    if (CHECK(last && beyond) && CHECK_OK(kvtc_compress(g_cal, last, &opt, &buf, &len, &err), &err)) {
        kvtc_stream_info info = {.struct_size = sizeof info};
        CHECK_OK(kvtc_stream_info_get(buf, len, &info, &err), &err);
        for (uint32_t b = 0; b < info.n_blocks; b++) {
            kvtc_cache *one = NULL;
            CHECK_OK(kvtc_decompress_block(g_cal, buf, len, b, NULL, &one, &err), &err);
            kvtc_cache_free(one);
        }
        kvtc_cache *more = NULL;
        kvtc_cache_create(&g_shape, KVTC_F16, 1, KVTC_MAX_POSITION + 1, &more, NULL);
        CHECK(more == NULL); /* no cache can continue it */
        CHECK_STATUS(kvtc_compress(g_cal, beyond, &opt, &more_buf, &more_len, &err),
                     KVTC_E_INVALID, &err);
        CHECK(more_buf == NULL);
    }
    kvtc_buffer_free(buf);
    kvtc_cache_free(last);
    kvtc_cache_free(beyond);
}

/* A NaN among coded tokens is refused; among raw tokens it is kept bit for bit. */
static void test_non_finite(void)
{
    kvtc_cache *c = make_random_cache(&g_shape, KVTC_F32, 40, 0, CODEC_TEST_LOW_RANK, 12);
    if (!CHECK(c))
        return;
    float *values = kvtc_cache_data(c, KVTC_VALUE, 1);
    values[(size_t)1 * 40 * 16 + 2 * 16 + 3] = NAN; /* head 1, token 2 (a sink), dim 3 */
    kvtc_compress_options opt = small_blocks();
    void *buf = NULL;
    size_t len = 0;
    kvtc_error err;
    if (CHECK_OK(kvtc_compress(g_cal, c, &opt, &buf, &len, &err), &err)) {
        kvtc_cache *d = NULL;
        if (CHECK_OK(kvtc_decompress(g_cal, buf, len, NULL, &d, &err), &err))
            CHECK(test_tokens_equal(c, 0, d, 0, SINKS));
        kvtc_cache_free(d);
        kvtc_buffer_free(buf);
        buf = NULL;
    }
    values[(size_t)1 * 40 * 16 + 10 * 16 + 3] = INFINITY; /* token 10: coded */
    CHECK_STATUS(kvtc_compress(g_cal, c, &opt, &buf, &len, &err), KVTC_E_NUMERIC, &err);
    CHECK(buf == NULL);
    kvtc_cache_free(c);
}

/* ---- allocation failure injection -------------------------------------------- */

typedef struct alloc_args {
    enum { COMPRESS, DECOMPRESS, APPEND } op;
    const kvtc_cache *cache; /* compressed into data with small_blocks(), or appended */
    const void *data;
    size_t len;
} alloc_args;

static kvtc_status alloc_step(void *arg, kvtc_error *err, bool *wrong)
{
    const alloc_args *a = arg;
    kvtc_compress_options opt = small_blocks();
    void *buf = NULL;
    size_t len = 0;
    kvtc_cache *out = NULL;
    kvtc_status st;
    if (a->op == COMPRESS) {
        st = kvtc_compress(g_cal, a->cache, &opt, &buf, &len, err);
        *wrong = st == KVTC_OK && !test_bytes_equal(buf, len, a->data, a->len);
    } else if (a->op == DECOMPRESS) {
        st = kvtc_decompress(g_cal, a->data, a->len, NULL, &out, err);
    } else {
        st = kvtc_append(g_cal, a->data, a->len, a->cache, &opt, &buf, &len, err);
    }
    kvtc_buffer_free(buf);
    kvtc_cache_free(out);
    return st;
}

static void test_alloc_failures(const kvtc_cache *cache, const void *data, size_t len)
{
    kvtc_cache *more = make_random_cache(&g_shape, cache->dtype, 12, cache->pos0 + cache->n_tokens,
                                         CODEC_TEST_LOW_RANK, 13);
    if (!CHECK(more))
        return;
    /* Once one allocation fails, every later one fails too: the cleanup paths
     * must cope with that as well. */
    alloc_args compress = {COMPRESS, cache, data, len}, decompress = {DECOMPRESS, cache, data, len};
    alloc_args append = {APPEND, more, data, len};
    test_alloc_sweep("compress", alloc_step, &compress, TEST_ALLOC_STICKY);
    test_alloc_sweep("decompress", alloc_step, &decompress, TEST_ALLOC_STICKY);
    test_alloc_sweep("append", alloc_step, &append, TEST_ALLOC_STICKY);
    kvtc_cache_free(more);
}

/* max_output_bytes: the exact size passes, one byte less is refused before
 * decoding, for the whole stream, one block and the layer callback. */
static void test_output_limit(const void *data, size_t len, const kvtc_cache *want)
{
    uint64_t size = (uint64_t)kvtc_cache_tokens(want) * kvtc_shape_features(&g_shape) *
                    kvtc_dtype_size(KVTC_F16) * 2;
    kvtc_decompress_options opt = {.struct_size = sizeof opt, .n_threads = 1, .max_output_bytes = size};
    kvtc_cache *out = NULL;
    kvtc_error err;
    if (CHECK_OK(kvtc_decompress(g_cal, data, len, &opt, &out, &err), &err))
        CHECK(test_caches_equal(out, want));
    kvtc_cache_free(out);
    out = NULL;
    opt.max_output_bytes = size - 1;
    CHECK_STATUS(kvtc_decompress(g_cal, data, len, &opt, &out, &err), KVTC_E_LIMIT, &err);
    CHECK(out == NULL && strstr(err.message, "over the limit") != NULL);
    uint32_t layers = 0;
    CHECK_STATUS(kvtc_decompress_layers(g_cal, data, len, &opt, test_count_layers, &layers, &err),
                 KVTC_E_LIMIT, &err);
    CHECK(layers == 0);
    /* a block alone fits a limit the whole stream does not */
    CHECK_OK(kvtc_decompress_block(g_cal, data, len, 0, &opt, &out, &err), &err);
    kvtc_cache_free(out);
}

int main(void)
{
    test_alloc_install(); /* before any other kvtc call */
    g_shape = codec_test_shape();
    g_cal = codec_test_calibration(&g_shape, SINKS, WINDOW, 1, 3, 300);
    kvtc_cache *c = make_random_cache(&g_shape, KVTC_F16, 40, 20, CODEC_TEST_LOW_RANK, 3);
    kvtc_compress_options opt = small_blocks();
    void *data = NULL;
    size_t len = 0;
    kvtc_error err;
    kvtc_cache *want = NULL;
    if (CHECK(g_cal && c) && CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err) &&
        CHECK_OK(kvtc_decompress(g_cal, data, len, NULL, &want, &err), &err)) {
        printf("stream of %zu bytes\n", len);
        test_truncation_and_flips(data, len, want);
        test_hostile_header(data, len, want);
        test_chunk_crc(data, len);
        test_forged_lm_scales(data, len, want);
        test_mismatches(data, len, c);
        test_bad_options(c);
        test_non_finite();
        test_position_limit();
        test_output_limit(data, len, want);
        test_alloc_failures(c, data, len);
    }
    kvtc_cache_free(want);
    kvtc_buffer_free(data);
    kvtc_cache_free(c);
    kvtc_calibration_free(g_cal);
    return test_summary("test_codec_errors");
}
