/* Exhaustive corruption: every single-bit flip and every truncation of a small
 * valid .kvtc must end in a clean error, or (only where the bit cannot matter)
 * in the byte-identical decoded cache; never in different numbers. The same
 * for a small .kvtcal, where every damaged file must be refused by load. A
 * stream decoded with another calibration is refused, naming both. */
#include "codec_common.h"
#include "testutil.h"

#include "kvtc_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kvtc_model_shape SHAPE = {
    .n_layer = 2, .n_kv_head = 1, .head_dim = 8, .rope_style = KVTC_ROPE_INTERLEAVED,
    .rope_theta = 10000.0,
};

typedef struct counts {
    size_t cases, detected, identical, silent;
    size_t by_status[12]; /* index -status */
} counts;

static kvtc_calibration *make_calibration(uint64_t seed)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 4;
    opt.heldout_every = 4;
    kvtc_calibration *cal = make_random_calibration(&SHAPE, &opt, 3, 48, 3, seed);
    CHECK(cal != NULL);
    return cal;
}

/* A damaged file must fail as damaged data, with a one-line message. */
static bool clean_error(kvtc_status st, const kvtc_error *err)
{
    bool data_error = st == KVTC_E_FORMAT || st == KVTC_E_TRUNCATED || st == KVTC_E_CHECKSUM ||
                      st == KVTC_E_VERSION || st == KVTC_E_MISMATCH || st == KVTC_E_UNSUPPORTED;
    return data_error && err->status == st && err->message[0] != '\0' &&
           strchr(err->message, '\n') == NULL;
}

static void count_error(counts *c, kvtc_status st)
{
    c->detected++;
    if (st < 0 && -st < (int)(sizeof c->by_status / sizeof c->by_status[0]))
        c->by_status[-st]++;
}

/* Decodes one damaged stream and files the outcome. */
static void try_stream(counts *c, const kvtc_calibration *cal, const uint8_t *data, size_t len,
                       const kvtc_cache *ref, const char *what, size_t where)
{
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    kvtc_error err;
    kvtc_cache *out = NULL;
    kvtc_stream_info info = {.struct_size = sizeof info};
    c->cases++;
    kvtc_stream_info_get(data, len, &info, &err); /* must not crash either */
    kvtc_status st = kvtc_decompress(cal, data, len, &dopt, &out, &err);
    if (st == KVTC_OK) {
        if (test_caches_equal(out, ref))
            c->identical++;
        else {
            c->silent++;
            CHECK_MSG(false, "%s at %zu decodes to a different cache", what, where);
        }
    } else if (CHECK_MSG(clean_error(st, &err), "%s at %zu: status %s, message '%s'", what, where,
                         kvtc_status_string(st), err.message)) {
        count_error(c, st);
    }
    kvtc_cache_free(out);
}

static void print_counts(const char *what, const counts *c)
{
    printf("%s: %zu cases, %zu detected, %zu identical, %zu silent wrong outputs, 0 crashes\n",
           what, c->cases, c->detected, c->identical, c->silent);
    printf("  errors by status:");
    for (int s = 1; s < (int)(sizeof c->by_status / sizeof c->by_status[0]); s++)
        if (c->by_status[s])
            printf(" %s %zu", kvtc_status_string((kvtc_status)-s), c->by_status[s]);
    printf("\n");
}

/* escaped: an F32 cache whose token 12 holds a 1e30, stored raw in an escape
 * list (a version 2 stream); otherwise an F16 cache (version 1 with a version
 * 1 calibration, version 2 with lm groups otherwise). */
static void corrupt_stream(const kvtc_calibration *cal, bool escaped, const char *label)
{
    kvtc_cache *cache = make_random_cache(&SHAPE, escaped ? KVTC_F32 : KVTC_F16, 26, 0, 3, 77);
    if (!CHECK(cache != NULL))
        return;
    if (escaped)
        ((float *)kvtc_cache_data(cache, KVTC_VALUE, 1))[12 * SHAPE.head_dim + 3] = 1e30f;
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.k_ratio = 4.0;
    copt.v_ratio = 3.0;
    copt.ratio_mode = KVTC_RATIO_BUDGET; /* plans fixed by the ratios (with lm groups) */
    copt.block_tokens = 8;
    kvtc_error err;
    void *stream = NULL;
    size_t len = 0;
    kvtc_cache *ref = NULL;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    if (CHECK_OK(kvtc_compress(cal, cache, &copt, &stream, &len, &err), &err) &&
        CHECK_OK(kvtc_decompress(cal, stream, len, &dopt, &ref, &err), &err)) {
        kvtc_stream_info info = {.struct_size = sizeof info};
        CHECK_OK(kvtc_stream_info_get(stream, len, &info, &err), &err);
        printf("stream: version %u, %zu bytes, %u tokens in %u blocks (%u raw sinks, %u raw "
               "window)\n",
               info.format_version, len, info.n_tokens, info.n_blocks, info.sinks, info.window);
        CHECK(info.n_blocks >= 4 && info.compressed_tokens > 0); /* raw and coded blocks */
        bool lm = codec_test_uses_lm(stream, len);
        CHECK_EQ(lm, cal->file_version != 1);
        CHECK_EQ(info.format_version, escaped || lm ? 2 : 1);
        counts c = {0};
        uint8_t *damaged = malloc(len);
        if (CHECK(damaged != NULL)) {
            for (size_t i = 0; i < len * 8; i++) {
                memcpy(damaged, stream, len);
                damaged[i / 8] ^= (uint8_t)(1u << (i % 8));
                try_stream(&c, cal, damaged, len, ref, "bit flip", i);
            }
            for (size_t n = 0; n < len; n++) {
                memcpy(damaged, stream, n); /* a fresh buffer: ASan sees over-reads */
                try_stream(&c, cal, damaged, n, ref, "truncation", n);
            }
        }
        free(damaged);
        print_counts(label, &c);
        CHECK_EQ(c.silent, 0);
        CHECK_EQ(c.cases, c.detected + c.identical);
    }
    kvtc_buffer_free(stream);
    kvtc_cache_free(ref);
    kvtc_cache_free(cache);
}

static void corrupt_calibration(const kvtc_calibration *cal)
{
    kvtc_error err;
    void *file = NULL;
    size_t len = 0;
    if (!CHECK_OK(kvtc_calibration_save(cal, &file, &len, &err), &err))
        return;
    counts c = {0};
    uint8_t *damaged = malloc(len);
    for (size_t i = 0; damaged && i < len * 9; i++) {
        size_t n = len; /* cases [0, 8 len): bit flips; then truncations */
        memcpy(damaged, file, len);
        if (i < len * 8)
            damaged[i / 8] ^= (uint8_t)(1u << (i % 8));
        else
            n = i - len * 8;
        kvtc_calibration *back = NULL;
        kvtc_status st = kvtc_calibration_load(damaged, n, &back, &err);
        c.cases++;
        if (st == KVTC_OK) {
            c.silent++;
            CHECK_MSG(false, "calibration %s at %zu loads", i < len * 8 ? "bit flip" : "truncation",
                      i < len * 8 ? i : n);
        } else if (CHECK_MSG(clean_error(st, &err), "calibration case %zu: %s '%s'", i,
                             kvtc_status_string(st), err.message)) {
            count_error(&c, st);
        }
        kvtc_calibration_free(back);
    }
    free(damaged);
    printf("calibration file: %zu bytes\n", len);
    print_counts("corruption (.kvtcal)", &c);
    CHECK_EQ(c.silent, 0);
    CHECK_EQ(c.cases, len * 9);
    kvtc_buffer_free(file);
}

/* The right bytes with the wrong calibration: refused, naming both. */
static void wrong_calibration(const kvtc_calibration *cal, const kvtc_calibration *other)
{
    kvtc_cache *cache = make_random_cache(&SHAPE, KVTC_F32, 20, 5, 3, 3);
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.k_ratio = copt.v_ratio = 4.0;
    kvtc_error err;
    void *stream = NULL;
    size_t len = 0;
    if (CHECK(cache != NULL) &&
        CHECK_OK(kvtc_compress(cal, cache, &copt, &stream, &len, &err), &err)) {
        kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
        kvtc_cache *out = NULL;
        CHECK_STATUS(kvtc_decompress(other, stream, len, &dopt, &out, &err), KVTC_E_MISMATCH,
                     &err);
        char made[13], given[13];
        kvtc_hex(kvtc_calibration_fingerprint(cal), 6, made);
        kvtc_hex(kvtc_calibration_fingerprint(other), 6, given);
        CHECK_MSG(strstr(err.message, made) && strstr(err.message, given),
                  "mismatch message '%s' does not name %s and %s", err.message, made, given);
        CHECK(out == NULL);
        CHECK_STATUS(kvtc_decompress_block(other, stream, len, 0, &dopt, &out, &err),
                     KVTC_E_MISMATCH, &err);
    }
    kvtc_buffer_free(stream);
    kvtc_cache_free(cache);
}

int main(void)
{
    kvtc_calibration *cal = make_calibration(1), *other = make_calibration(100);
    if (cal && other) {
        CHECK(memcmp(kvtc_calibration_fingerprint(cal), kvtc_calibration_fingerprint(other),
                     32) != 0);
        kvtc_calibration *v1 = codec_test_as_v1(cal);
        if (CHECK(v1 != NULL))
            corrupt_stream(v1, false, "corruption (v1)");
        kvtc_calibration_free(v1);
        corrupt_stream(cal, false, "corruption (v2, lm groups)");
        corrupt_stream(cal, true, "corruption (v2, lm groups and an escaped token)");
        corrupt_calibration(cal);
        wrong_calibration(cal, other);
    }
    kvtc_calibration_free(cal);
    kvtc_calibration_free(other);
    return test_summary("test_corruption");
}
