/* The same input, calibration and options give the same bytes for any
 * n_threads (and with or without a progress callback, which batches the
 * work); decoding gives the same cache for any n_threads. */
#include "codec_common.h"

#define TOKENS 1500u

static kvtc_calibration *g_cal;

typedef struct progress_log {
    uint64_t last_done, total;
    int calls;
    bool monotonic;
} progress_log;

static void record_progress(void *user, const char *stage, uint64_t done, uint64_t total)
{
    progress_log *p = user;
    p->monotonic = p->monotonic && done >= p->last_done && done <= total && stage != NULL;
    p->last_done = done;
    p->total = total;
    p->calls++;
}

int main(void)
{
    kvtc_model_shape shape = codec_test_shape();
    g_cal = codec_test_calibration(&shape, 4, 16, 1, 3, 500);
    kvtc_cache *c = make_random_cache(&shape, KVTC_BF16, TOKENS, 123, CODEC_TEST_LOW_RANK, 31);
    kvtc_cache *more = make_random_cache(&shape, KVTC_BF16, 300, 123 + TOKENS, CODEC_TEST_LOW_RANK,
                                         32);
    if (!CHECK(g_cal && c && more))
        return test_summary("test_determinism");

    static const uint32_t threads[] = {1, 2, 4, 8};
    void *ref = NULL, *ref_app = NULL;
    size_t ref_len = 0, ref_app_len = 0;
    kvtc_cache *ref_dec = NULL;
    kvtc_error err;
    for (int i = 0; i < 4; i++)
        for (int with_progress = 0; with_progress < 2; with_progress++) {
            kvtc_compress_options opt;
            kvtc_compress_options_default(&opt);
            opt.k_ratio = 6;
            opt.v_ratio = 9;
            opt.block_tokens = 32;
            opt.n_threads = threads[i];
            progress_log log = {0, 0, 0, true};
            if (with_progress) {
                opt.progress = record_progress;
                opt.progress_user = &log;
            }
            void *data = NULL, *app = NULL;
            size_t len = 0, app_len = 0;
            if (!CHECK_OK(kvtc_compress(g_cal, c, &opt, &data, &len, &err), &err))
                continue;
            if (with_progress)
                CHECK(log.monotonic && log.calls > 1 && log.last_done == log.total);
            log = (progress_log){0, 0, 0, true};
            if (!CHECK_OK(kvtc_append(g_cal, data, len, more, &opt, &app, &app_len, &err), &err)) {
                kvtc_buffer_free(data);
                continue;
            }
            if (with_progress)
                CHECK(log.monotonic && log.calls >= 1 && log.last_done == log.total);

            kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = threads[i]};
            progress_log dlog = {0, 0, 0, true};
            if (with_progress) {
                dopt.progress = record_progress;
                dopt.progress_user = &dlog;
            }
            kvtc_cache *dec = NULL;
            CHECK_OK(kvtc_decompress(g_cal, app, app_len, &dopt, &dec, &err), &err);
            if (with_progress)
                CHECK(dlog.monotonic && dlog.calls > 1 && dlog.last_done == dlog.total);

            if (!ref) {
                ref = data;
                ref_len = len;
                ref_app = app;
                ref_app_len = app_len;
                ref_dec = dec;
                printf("stream %zu bytes, after append %zu bytes\n", len, app_len);
                continue;
            }
            CHECK_MSG(test_bytes_equal(ref, ref_len, data, len),
                      "compress with %u threads%s gave other bytes", threads[i],
                      with_progress ? " and progress" : "");
            CHECK_MSG(test_bytes_equal(ref_app, ref_app_len, app, app_len),
                      "append with %u threads%s gave other bytes", threads[i],
                      with_progress ? " and progress" : "");
            CHECK_MSG(dec && ref_dec && test_caches_equal(ref_dec, dec),
                      "decompress with %u threads gave another cache", threads[i]);
            kvtc_buffer_free(data);
            kvtc_buffer_free(app);
            kvtc_cache_free(dec);
        }
    kvtc_buffer_free(ref);
    kvtc_buffer_free(ref_app);
    kvtc_cache_free(ref_dec);
    kvtc_cache_free(c);
    kvtc_cache_free(more);
    kvtc_calibration_free(g_cal);
    return test_summary("test_determinism");
}
