/* One calibration shared read-only by 8 threads, each doing 200 compress +
 * decompress round trips (and one single-block decode) of different small
 * caches at once: every stream and every decoded cache must be byte-identical
 * to a single-threaded reference made before the threads start. Run under ThreadSanitizer by
 * scripts/test-sanitizers.sh. */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_THREADS 8
#define ROUND_TRIPS 200
#define N_CACHES 48

static const kvtc_model_shape SHAPE = {
    .n_layer = 2, .n_kv_head = 2, .head_dim = 8, .rope_style = KVTC_ROPE_NEOX,
    .rope_theta = 10000.0,
};

typedef struct reference {
    kvtc_cache *cache;
    kvtc_compress_options opt;
    void *stream;
    size_t stream_len;
    kvtc_cache *decoded;
    uint32_t n_blocks;
} reference;

static reference g_refs[N_CACHES];
static const kvtc_calibration *g_cal;
/* The workers wait for all of them to exist, so their round trips overlap. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_go_cond = PTHREAD_COND_INITIALIZER;
static bool g_go;

typedef struct worker {
    uint32_t id;
    uint32_t mismatches, errors;
    char first_problem[320];
} worker;

/* One block decoded alone equals the same tokens of the reference decode. */
static bool block_matches(const reference *r, const kvtc_cache *block)
{
    int64_t first = kvtc_cache_pos0(block) - kvtc_cache_pos0(r->decoded);
    uint32_t n = kvtc_cache_tokens(block);
    return first >= 0 && first + n <= kvtc_cache_tokens(r->decoded) &&
           test_tokens_equal(block, 0, r->decoded, (uint32_t)first, n);
}

static void note(worker *w, uint32_t *counter, const char *what, uint32_t i, const char *msg)
{
    if (!w->first_problem[0])
        snprintf(w->first_problem, sizeof w->first_problem, "thread %u trip %u: %s %s", w->id, i,
                 what, msg);
    (*counter)++;
}

static void *run_worker(void *arg)
{
    worker *w = arg;
    pthread_mutex_lock(&g_lock);
    while (!g_go)
        pthread_cond_wait(&g_go_cond, &g_lock);
    pthread_mutex_unlock(&g_lock);
    for (uint32_t i = 0; i < ROUND_TRIPS; i++) {
        const reference *r = &g_refs[(w->id * 7 + i) % N_CACHES];
        kvtc_compress_options opt = r->opt;
        opt.n_threads = 1 + (i + w->id) % 2; /* the library's own pool runs too */
        kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1 + i % 2};
        kvtc_error err;
        void *stream = NULL;
        size_t len = 0;
        kvtc_cache *back = NULL;
        if (kvtc_compress(g_cal, r->cache, &opt, &stream, &len, &err) != KVTC_OK)
            note(w, &w->errors, "compress:", i, err.message);
        else if (len != r->stream_len || memcmp(stream, r->stream, len) != 0)
            note(w, &w->mismatches, "stream differs from the reference", i, "");
        else if (kvtc_decompress(g_cal, stream, len, &dopt, &back, &err) != KVTC_OK)
            note(w, &w->errors, "decompress:", i, err.message);
        else if (!test_caches_equal(back, r->decoded))
            note(w, &w->mismatches, "decoded cache differs from the reference", i, "");
        kvtc_cache_free(back);
        back = NULL;
        uint32_t block = i % r->n_blocks;
        if (kvtc_decompress_block(g_cal, r->stream, r->stream_len, block, &dopt, &back, &err))
            note(w, &w->errors, "decompress_block:", i, err.message);
        else if (!block_matches(r, back))
            note(w, &w->mismatches, "a block decoded alone differs from the reference", i, "");
        kvtc_cache_free(back);
        kvtc_buffer_free(stream);
    }
    return NULL;
}

static kvtc_calibration *make_calibration(void)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 6;
    opt.heldout_every = 4;
    kvtc_calibration *cal = make_random_calibration(&SHAPE, &opt, 4, 64, 4, 0);
    CHECK(cal != NULL);
    return cal;
}

/* Caches of every dtype and of lengths from all-raw to several coded blocks. */
static bool make_references(void)
{
    static const kvtc_dtype dtypes[] = {KVTC_F32, KVTC_F16, KVTC_BF16};
    static const double ratios[] = {2.0, 4.0, 8.0};
    for (uint32_t i = 0; i < N_CACHES; i++) {
        reference *r = &g_refs[i];
        kvtc_error err;
        r->cache = make_random_cache(&SHAPE, dtypes[i % 3], 4 + (i * 5) % 44, i * 3, 4, 1000 + i);
        if (!CHECK(r->cache != NULL))
            return false;
        kvtc_compress_options_default(&r->opt);
        r->opt.k_ratio = ratios[i % 3];
        r->opt.v_ratio = ratios[(i / 3) % 3];
        r->opt.block_tokens = 4 + (i % 4) * 4;
        kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
        if (!CHECK_OK(kvtc_compress(g_cal, r->cache, &r->opt, &r->stream, &r->stream_len, &err),
                      &err) ||
            !CHECK_OK(kvtc_decompress(g_cal, r->stream, r->stream_len, &dopt, &r->decoded, &err),
                      &err))
            return false;
        kvtc_stream_info info = {.struct_size = sizeof info};
        if (!CHECK_OK(kvtc_stream_info_get(r->stream, r->stream_len, &info, &err), &err))
            return false;
        r->n_blocks = info.n_blocks;
    }
    return true;
}

int main(void)
{
    kvtc_calibration *cal = make_calibration();
    g_cal = cal;
    if (cal && make_references()) {
        worker workers[N_THREADS];
        pthread_t threads[N_THREADS];
        uint32_t started = 0;
        for (uint32_t t = 0; t < N_THREADS; t++) {
            workers[t] = (worker){.id = t};
            if (!CHECK(pthread_create(&threads[t], NULL, run_worker, &workers[t]) == 0))
                break;
            started++;
        }
        pthread_mutex_lock(&g_lock);
        g_go = true;
        pthread_cond_broadcast(&g_go_cond);
        pthread_mutex_unlock(&g_lock);
        uint32_t mismatches = 0, errors = 0;
        for (uint32_t t = 0; t < started; t++) {
            pthread_join(threads[t], NULL);
            mismatches += workers[t].mismatches;
            errors += workers[t].errors;
            CHECK_MSG(!workers[t].first_problem[0], "%s", workers[t].first_problem);
        }
        if (started == N_THREADS)
            printf("concurrency: %u threads x %u round trips, %u mismatches, %u errors\n",
                   N_THREADS, ROUND_TRIPS, mismatches, errors);
        CHECK_EQ(mismatches, 0);
        CHECK_EQ(errors, 0);
    }
    for (uint32_t i = 0; i < N_CACHES; i++) {
        kvtc_cache_free(g_refs[i].cache);
        kvtc_cache_free(g_refs[i].decoded);
        kvtc_buffer_free(g_refs[i].stream);
    }
    kvtc_calibration_free(cal);
    return test_summary("test_concurrency");
}
