/* Round trips through kvtc_compress / kvtc_append and the three decoders:
 * small error that shrinks as the ratio falls, raw sinks and window bit-exact
 * in every dtype, plan bits respected, every decoder agreeing with the others,
 * appends that keep old blocks byte for byte, and all-raw short caches. */
#include "codec_common.h"
#include "container.h"

#include <math.h>

#define SINKS 4u
#define WINDOW 16u
#define TOKENS 600u
#define POS0 1000

static kvtc_calibration *g_cal;
static kvtc_model_shape g_shape;

static kvtc_compress_options options(double ratio, uint32_t block_tokens)
{
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.k_ratio = opt.v_ratio = ratio;
    opt.block_tokens = block_tokens;
    return opt;
}

static kvtc_cache *decompress(const void *data, size_t len)
{
    kvtc_error err;
    kvtc_cache *out = NULL;
    if (!CHECK_OK(kvtc_decompress(g_cal, data, len, NULL, &out, &err), &err))
        return NULL;
    return out;
}

/* Sinks and window raw and bit-exact, the rest within max_error. Returns the error. */
static double check_roundtrip(const kvtc_cache *c, const void *data, size_t len,
                              double max_error)
{
    kvtc_cache *d = decompress(data, len);
    if (!d)
        return 1e30;
    uint32_t n = c->n_tokens;
    CHECK_EQ(d->n_tokens, n);
    CHECK_EQ(d->pos0, c->pos0);
    CHECK_EQ(d->dtype, c->dtype);
    CHECK(kvtc_shape_equal(&d->shape, &c->shape));
    CHECK(strcmp(d->model, c->model) == 0);
    double e = 0;
    if (n > SINKS + WINDOW) {
        CHECK(test_tokens_equal(c, 0, d, 0, SINKS));
        CHECK(test_tokens_equal(c, n - WINDOW, d, n - WINDOW, WINDOW));
        e = codec_rel_error(c, d, 0, SINKS, n - SINKS - WINDOW);
        CHECK_MSG(e <= max_error, "relative error %g > %g", e, max_error);
    } else {
        CHECK(test_caches_equal(c, d));
    }
    kvtc_cache_free(d);
    return e;
}

/* Error falls with the ratio; realized bits stay within the plans. */
static void test_ratios(void)
{
    kvtc_cache *c = make_random_cache(&g_shape, KVTC_F32, TOKENS, POS0, CODEC_TEST_LOW_RANK, 101);
    if (!CHECK(c))
        return;
    CHECK_OK(kvtc_cache_set_model_name(c, "synthetic-12", NULL), NULL);
    static const double ratios[] = {2.5, 4, 8, 16};
    static const double max_err[] = {0.002, 0.01, 0.05, 0.25};
    double prev = -1;
    uint32_t p = (uint32_t)kvtc_shape_features(&g_shape);
    for (int i = 0; i < 4; i++) {
        kvtc_compress_options opt = options(ratios[i], 64);
        opt.ratio_mode = KVTC_RATIO_BUDGET; /* the plans' budget is floor(16 p / ratio) */
        void *data = NULL;
        size_t len = 0;
        kvtc_error err;
        if (!CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err))
            continue;
        double e = check_roundtrip(c, data, len, max_err[i]);
        printf("ratio %5.1f: %zu bytes, relative error %.5f\n", ratios[i], len, e);
        CHECK_MSG(e >= prev, "error %g at ratio %g is below %g at a lower ratio", e, ratios[i],
                  prev);
        prev = e;

        kvtc_stream_info info = {.struct_size = sizeof info};
        if (CHECK_OK(kvtc_stream_info_get(data, len, &info, &err), &err)) {
            uint32_t coded = TOKENS - SINKS - WINDOW;
            uint32_t budget = (uint32_t)(16.0 * p / ratios[i]);
            CHECK_EQ(info.format_version, codec_test_uses_lm(data, len) ? 2 : 1);
            CHECK_EQ(info.n_tokens, TOKENS);
            CHECK_EQ(info.pos0, POS0);
            CHECK_EQ(info.sinks, SINKS);
            CHECK_EQ(info.window, WINDOW);
            CHECK_EQ(info.compressed_tokens, coded);
            CHECK_EQ(info.n_blocks, 2 + (coded + 63) / 64);
            CHECK_EQ(info.block_tokens, 64);
            CHECK(info.k_bits_per_token <= budget && info.k_bits_per_token > 0);
            CHECK(info.v_bits_per_token <= budget && info.v_bits_per_token > 0);
            CHECK_NEAR(info.k_ratio, ratios[i], 0);
            CHECK_EQ(info.total_bytes, len);
            CHECK(strcmp(info.model_name, "synthetic-12") == 0);
            CHECK(memcmp(info.calib_fingerprint, kvtc_calibration_fingerprint(g_cal), 32) == 0);
            /* Raw blocks hold exactly their tokens (plus two table entries). */
            CHECK_EQ(info.raw_bytes, (uint64_t)(SINKS + WINDOW) * 2 * p * 4 + 2 * 36);
            CHECK(info.compressed_bytes + info.raw_bytes < info.total_bytes);
            /* DEFLATE never costs more than a few bytes per chunk over the plan's bits. */
            uint64_t plan_bytes = (uint64_t)coded * (info.k_bits_per_token + info.v_bits_per_token) / 8;
            uint64_t slack = (uint64_t)(info.n_blocks - 2) * (36 + 2 * 16) + 2 * 16 + 12 * 64;
            CHECK_MSG(info.compressed_bytes <= plan_bytes + slack,
                      "compressed bytes %llu > plan %llu + slack %llu",
                      (unsigned long long)info.compressed_bytes, (unsigned long long)plan_bytes,
                      (unsigned long long)slack);
        }
        kvtc_buffer_free(data);
    }
    kvtc_cache_free(c);
}

typedef struct layer_check {
    const kvtc_cache *full;
    uint32_t next_layer;
    bool equal;
} layer_check;

static int compare_layer(void *user, uint32_t layer, const void *key, const void *value)
{
    layer_check *lc = user;
    size_t bytes = (size_t)kvtc_raw_chunk_bytes(&lc->full->shape, lc->full->dtype,
                                                lc->full->n_tokens) / lc->full->shape.n_layer;
    lc->equal = lc->equal && layer == lc->next_layer &&
                memcmp(key, kvtc_cache_data_const(lc->full, KVTC_KEY, layer), bytes) == 0 &&
                memcmp(value, kvtc_cache_data_const(lc->full, KVTC_VALUE, layer), bytes) == 0;
    lc->next_layer++;
    return 0;
}

/* Every dtype: raw parts bit-exact; the layer and block decoders agree with
 * the whole-cache one. */
static void test_dtypes_and_decoders(void)
{
    static const kvtc_dtype dtypes[] = {KVTC_F32, KVTC_F16, KVTC_BF16};
    for (int i = 0; i < 3; i++) {
        kvtc_cache *c = make_random_cache(&g_shape, dtypes[i], 333, 7, CODEC_TEST_LOW_RANK, 202 + i);
        if (!CHECK(c))
            continue;
        kvtc_compress_options opt = options(4, 50); /* 333 - 20 = 313 coded: a short last block */
        void *data = NULL;
        size_t len = 0;
        kvtc_error err;
        if (!CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err)) {
            kvtc_cache_free(c);
            continue;
        }
        /* bf16 rounding of the input adds its own error */
        check_roundtrip(c, data, len, dtypes[i] == KVTC_BF16 ? 0.02 : 0.01);
        kvtc_cache *full = decompress(data, len);
        if (full) {
            layer_check lc = {full, 0, true};
            CHECK_OK(kvtc_decompress_layers(g_cal, data, len, NULL, compare_layer, &lc, &err),
                     &err);
            CHECK(lc.equal);
            CHECK_EQ(lc.next_layer, g_shape.n_layer);

            kvtc_stream_info info = {.struct_size = sizeof info};
            CHECK_OK(kvtc_stream_info_get(data, len, &info, &err), &err);
            CHECK_EQ(info.n_blocks, 1 + 7 + 1);
            uint32_t first = 0;
            for (uint32_t b = 0; b < info.n_blocks; b++) {
                kvtc_cache *one = NULL;
                if (!CHECK_OK(kvtc_decompress_block(g_cal, data, len, b, NULL, &one, &err), &err))
                    break;
                CHECK_EQ(one->pos0, full->pos0 + first);
                CHECK_MSG(test_tokens_equal(full, first, one, 0, one->n_tokens),
                          "block %u differs from the whole-cache decode", b);
                first += one->n_tokens;
                kvtc_cache_free(one);
            }
            CHECK_EQ(first, 333);
            kvtc_cache *none = NULL;
            CHECK_STATUS(kvtc_decompress_block(g_cal, data, len, info.n_blocks, NULL, &none, &err),
                         KVTC_E_INVALID, &err);
            CHECK(none == NULL);
            kvtc_cache_free(full);
        }
        kvtc_buffer_free(data);
        kvtc_cache_free(c);
    }
}

/* A copy of tokens [t0, t0+n) of c as a cache of its own. */
static kvtc_cache *slice(const kvtc_cache *c, uint32_t t0, uint32_t n)
{
    kvtc_cache *s = NULL;
    kvtc_cache_create(&c->shape, c->dtype, n, c->pos0 + t0, &s, NULL);
    if (s)
        kvtc_cache_copy_tokens(s, 0, c, t0, n);
    return s;
}

static bool append(const void *prev, size_t prev_len, const kvtc_cache *more, double ratio,
                   void **out, size_t *out_len)
{
    kvtc_compress_options opt = options(ratio, 64);
    kvtc_error err;
    return CHECK_OK(kvtc_append(g_cal, prev, prev_len, more, &opt, out, out_len, &err), &err);
}

/* Earlier coded blocks of `prev` sit unchanged in `next`. */
static void check_blocks_kept(const void *prev, size_t prev_len, const void *next, size_t next_len)
{
    kvtc_stream a, b;
    kvtc_error err;
    if (!CHECK_OK(kvtc_stream_parse(prev, prev_len, &a, &err), &err))
        return;
    if (CHECK_OK(kvtc_stream_parse(next, next_len, &b, &err), &err)) {
        for (uint32_t i = 0; i < a.n_blocks; i++) {
            const kvtc_block *x = &a.blocks[i], *y = &b.blocks[i];
            if (x->encoding != KVTC_BLOCK_CODED)
                continue;
            CHECK_MSG(i < b.n_blocks && y->first == x->first && y->n_tokens == x->n_tokens &&
                          y->length[0] == x->length[0] && y->length[1] == x->length[1] &&
                          memcmp(y->data[0], x->data[0], x->length[0]) == 0 &&
                          memcmp(y->data[1], x->data[1], x->length[1]) == 0,
                      "coded block %u was not kept byte for byte", i);
        }
        kvtc_stream_release(&b);
    }
    kvtc_stream_release(&a);
}

static void test_append(void)
{
    const uint32_t n = 700;
    kvtc_cache *c = make_random_cache(&g_shape, KVTC_F16, n, 50, CODEC_TEST_LOW_RANK, 303);
    void *whole = NULL, *s1 = NULL, *s2 = NULL, *s3 = NULL, *s4 = NULL;
    size_t whole_len = 0, len1 = 0, len2 = 0, len3 = 0, len4 = 0;
    kvtc_cache *a = c ? slice(c, 0, 250) : NULL, *b = c ? slice(c, 250, 5) : NULL;
    kvtc_cache *rest = c ? slice(c, 255, n - 255) : NULL;
    kvtc_compress_options opt = options(4, 64);
    kvtc_error err;
    if (!CHECK(a && b && rest) ||
        !CHECK_OK(kvtc_compress(g_cal, c, &opt, &whole, &whole_len, &err), &err) ||
        !CHECK_OK(kvtc_compress(g_cal, a, &opt, &s1, &len1, &err), &err))
        goto done;
    /* 250 -> 255 tokens (fewer than the window), then -> 700. */
    if (!append(s1, len1, b, 4, &s2, &len2) || !append(s2, len2, rest, 4, &s3, &len3))
        goto done;
    check_blocks_kept(s1, len1, s2, len2);
    check_blocks_kept(s2, len2, s3, len3);
    kvtc_cache *one_shot = decompress(whole, whole_len), *appended = decompress(s3, len3);
    if (one_shot && appended) {
        CHECK(test_tokens_equal(c, 0, appended, 0, SINKS));
        CHECK(test_tokens_equal(c, n - WINDOW, appended, n - WINDOW, WINDOW));
        CHECK_EQ(appended->pos0, 50);
        /* The first coded block has the same tokens and boundaries in both. */
        CHECK(test_tokens_equal(one_shot, SINKS, appended, SINKS, 64));
        double e_one = codec_rel_error(c, one_shot, 0, SINKS, n - SINKS - WINDOW);
        double e_app = codec_rel_error(c, appended, 0, SINKS, n - SINKS - WINDOW);
        printf("append: one-shot error %.5f, appended %.5f\n", e_one, e_app);
        CHECK(e_app <= 1.25 * e_one + 1e-4);
        CHECK(e_app < 0.01);
    }
    kvtc_cache_free(one_shot);
    kvtc_cache_free(appended);

    /* An all-raw stream grows into exactly what a one-shot compress makes. */
    kvtc_cache *tiny = slice(c, 0, 10), *tail = slice(c, 10, n - 10);
    if (CHECK(tiny && tail) && CHECK_OK(kvtc_compress(g_cal, tiny, &opt, &s4, &len4, &err), &err)) {
        void *grown = NULL;
        size_t grown_len = 0;
        if (append(s4, len4, tail, 4, &grown, &grown_len))
            CHECK(grown_len == whole_len && memcmp(grown, whole, whole_len) == 0);
        kvtc_buffer_free(grown);
    }
    kvtc_cache_free(tiny);
    kvtc_cache_free(tail);

    /* Appending nothing changes nothing. */
    kvtc_cache *empty = NULL;
    kvtc_cache_create(&g_shape, KVTC_F16, 0, 50 + n, &empty, NULL);
    void *same = NULL;
    size_t same_len = 0;
    if (CHECK(empty) && append(s3, len3, empty, 4, &same, &same_len))
        CHECK(same_len == len3 && memcmp(same, s3, len3) == 0);
    kvtc_buffer_free(same);
    kvtc_cache_free(empty);
done:
    kvtc_buffer_free(whole);
    kvtc_buffer_free(s1);
    kvtc_buffer_free(s2);
    kvtc_buffer_free(s3);
    kvtc_buffer_free(s4);
    kvtc_cache_free(a);
    kvtc_cache_free(b);
    kvtc_cache_free(rest);
    kvtc_cache_free(c);
}

/* 0 tokens, fewer than the sinks, and up to sinks + window: all raw. */
static void test_short_caches(void)
{
    static const uint32_t sizes[] = {0, 1, SINKS, SINKS + 1, SINKS + WINDOW};
    static const kvtc_dtype dtypes[] = {KVTC_F32, KVTC_F16, KVTC_BF16};
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 3; j++) {
            kvtc_cache *c = make_random_cache(&g_shape, dtypes[j], sizes[i], 3, CODEC_TEST_LOW_RANK,
                                              400 + i);
            kvtc_compress_options opt = options(16, 256);
            void *data = NULL;
            size_t len = 0;
            kvtc_error err;
            if (CHECK(c) && CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err)) {
                check_roundtrip(c, data, len, 0);
                kvtc_stream_info info = {.struct_size = sizeof info};
                if (CHECK_OK(kvtc_stream_info_get(data, len, &info, &err), &err)) {
                    CHECK_EQ(info.compressed_tokens, 0);
                    CHECK_EQ(info.compressed_bytes, 0);
                    CHECK_EQ(info.sinks + info.window, sizes[i]);
                    CHECK_EQ(info.n_blocks, (info.sinks > 0) + (info.window > 0));
                }
                uint32_t calls = 0;
                CHECK_OK(kvtc_decompress_layers(g_cal, data, len, NULL, test_count_layers, &calls,
                                                &err), &err);
                CHECK_EQ(calls, g_shape.n_layer);
            }
            kvtc_buffer_free(data);
            kvtc_cache_free(c);
        }
}

/* Stored ratio of a stream's coded part: fp16 bytes of its coded tokens over
 * the bytes they take (kvtc_stream_info, docs/FORMAT.md "Stream info accounting"). */
static double stored_ratio(const void *data, size_t len)
{
    kvtc_stream_info info = {.struct_size = sizeof info};
    if (!CHECK_OK(kvtc_stream_info_get(data, len, &info, NULL), NULL) || !info.compressed_bytes)
        return 0;
    return (double)info.compressed_tokens * 4 * kvtc_shape_features(&info.shape) /
           (double)info.compressed_bytes;
}

/* KVTC_RATIO_STORED (the default) meets the ratio in stored bytes within 3% on
 * a cache the calibration never saw (seed 202; it was fitted on seeds 1-4),
 * also with a key/value split and as bytes per token; KVTC_RATIO_BUDGET, and a
 * caller whose struct_size predates ratio_mode, keep the pre-DEFLATE budget.
 * 4 x 2 x 64 = 512 features of rank 160: with only a dozen coordinates (the
 * other tests' shape) plans are too coarse to land within 3%. */
static void test_stored_target(void)
{
    kvtc_model_shape shape = {4, 2, 64, KVTC_ROPE_NEOX, 64, 10000.0, 1.0};
    kvtc_calib_options copt;
    kvtc_calib_options_default(&copt);
    copt.sinks = SINKS;
    copt.window = WINDOW;
    kvtc_calibration *cal = make_random_calibration(&shape, &copt, 4, 400, 160, 1);
    kvtc_cache *c = make_random_cache(&shape, KVTC_F16, 1000, 0, 160, 202);
    kvtc_calibration *saved = g_cal;
    g_cal = cal; /* for check_roundtrip */
    if (!CHECK(c && cal))
        goto done;
    uint32_t p = (uint32_t)kvtc_shape_features(&shape);
    static const double ratios[] = {4, 8, 16, 24, 32};
    for (int i = 0; i < 5; i++) {
        kvtc_compress_options opt = options(ratios[i], 64);
        void *data = NULL, *capped = NULL, *old = NULL;
        size_t len = 0, capped_len = 0, old_len = 0;
        kvtc_error err;
        if (CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err)) {
            double r = stored_ratio(data, len);
            printf("stored target %5.1f: realized %.3f (%+.2f%%)\n", ratios[i], r,
                   100 * (r / ratios[i] - 1));
            CHECK_MSG(fabs(r / ratios[i] - 1) <= 0.03, "stored ratio %g for a target of %g", r,
                      ratios[i]);
            check_roundtrip(c, data, len, 0.8);
        }
        opt.ratio_mode = KVTC_RATIO_BUDGET;
        kvtc_compress_options v1 = opt; /* a caller built before ratio_mode existed */
        v1.struct_size = offsetof(kvtc_compress_options, ratio_mode);
        v1.ratio_mode = KVTC_RATIO_STORED;
        kvtc_plan *plan = NULL;
        if (CHECK_OK(kvtc_compress(g_cal, c, &opt, &capped, &capped_len, &err), &err) &&
            CHECK_OK(kvtc_compress(g_cal, c, &v1, &old, &old_len, &err), &err) &&
            CHECK_OK(kvtc_stream_plan(capped, capped_len, KVTC_KEY, &plan, &err), &err)) {
            CHECK_EQ(kvtc_plan_budget_bits(plan), (uint32_t)(16.0 * p / ratios[i]));
            CHECK(old_len == capped_len && memcmp(old, capped, old_len) == 0);
        }
        kvtc_plan_free(plan);
        kvtc_buffer_free(data);
        kvtc_buffer_free(capped);
        kvtc_buffer_free(old);
    }
    /* a key/value split: together 2 / (1/4 + 1/12) = 6 */
    kvtc_compress_options opt = options(4, 64);
    opt.v_ratio = 12;
    void *data = NULL;
    size_t len = 0;
    kvtc_error err;
    if (CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err))
        CHECK_MSG(fabs(stored_ratio(data, len) / 6 - 1) <= 0.03, "split 4/12: stored ratio %g",
                  stored_ratio(data, len));
    kvtc_buffer_free(data);
    data = NULL;
    /* bytes per token: 4 p fp16 bytes per token (keys and values) / 10 */
    opt = options(16, 64);
    opt.bytes_per_token = 4.0 * p / 10;
    if (CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err))
        CHECK_MSG(fabs(stored_ratio(data, len) / 10 - 1) <= 0.03, "%g bytes per token: ratio %g",
                  opt.bytes_per_token, stored_ratio(data, len));
    kvtc_buffer_free(data);
    data = NULL;
    opt.ratio_mode = KVTC_RATIO_BUDGET; /* bytes per token needs the stored target */
    CHECK_STATUS(kvtc_compress(g_cal, c, &opt, &data, &len, &err), KVTC_E_INVALID, &err);
    opt = options(4, 64);
    opt.ratio_mode = (kvtc_ratio_mode)7;
    CHECK_STATUS(kvtc_compress(g_cal, c, &opt, &data, &len, &err), KVTC_E_INVALID, &err);
done:
    g_cal = saved;
    kvtc_calibration_free(cal);
    kvtc_cache_free(c);
}

int main(void)
{
    g_shape = codec_test_shape();
    g_cal = codec_test_calibration(&g_shape, SINKS, WINDOW, 1, 4, 500);
    if (!CHECK(g_cal))
        return test_summary("test_codec_roundtrip");
    test_ratios();
    test_stored_target();
    test_dtypes_and_decoders();
    test_append();
    test_short_caches();
    kvtc_calibration_free(g_cal);
    return test_summary("test_codec_roundtrip");
}
