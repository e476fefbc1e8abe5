/* Allocation failure injection: a kvtc_set_allocator allocator that fails the
 * k-th allocation. For every k in each step of a round trip (calibrate, plan,
 * compress, decompress three ways, append, stream info, calibration and
 * safetensors save/load/write/read), the call must return a clean error (or
 * succeed with the right result, where a failure has a fallback), and every
 * allocation it made must be freed. LSan (the ASan build) checks the same from
 * the outside. OpenBLAS/LAPACK allocate on their own, not through the hook, so
 * their allocations are not failed here. */
#include "test_alloc.h"
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const kvtc_model_shape SHAPE = {
    .n_layer = 2, .n_kv_head = 2, .head_dim = 8, .rope_style = KVTC_ROPE_INTERLEAVED,
    .rope_theta = 10000.0,
};

/* Inputs and expected outputs, made once without failures. */
static struct {
    kvtc_cache *train[2], *cache, *more;
    kvtc_calibration *cal;
    kvtc_compress_options copt;
    void *stream, *joined, *calib_file, *st_file;
    size_t stream_len, joined_len, calib_len, st_len;
    kvtc_cache *decoded;
    uint32_t n_blocks;
    char out_path[4096];
    /* an F32 cache with a 1e30 (escaped: a version 2 stream), its stream and decoding */
    kvtc_cache *escaped_cache, *escaped_decoded;
    void *escaped_stream;
    size_t escaped_len;
} g;

/* ---- the steps: each frees what it made and reports a wrong result ------------ */

/* The calibration of the two training caches: the step, and how g.cal is made. */
static kvtc_status calibrate_train(kvtc_calibration **out, kvtc_error *err)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 4;
    opt.heldout_every = 4;
    kvtc_calibrator *cb;
    kvtc_status st = kvtc_calibrator_create(&SHAPE, &opt, &cb, err);
    for (int i = 0; i < 2 && st == KVTC_OK; i++)
        st = kvtc_calibrator_add(cb, g.train[i], err);
    if (st == KVTC_OK)
        st = kvtc_calibrator_finish(cb, out, err);
    kvtc_calibrator_free(cb);
    return st;
}

static kvtc_status step_calibrate(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    kvtc_calibration *cal = NULL;
    kvtc_status st = calibrate_train(&cal, err);
    if (st == KVTC_OK)
        *wrong = memcmp(kvtc_calibration_fingerprint(cal), kvtc_calibration_fingerprint(g.cal),
                        32) != 0;
    kvtc_calibration_free(cal);
    return st;
}

static kvtc_status step_plan(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    (void)wrong;
    kvtc_status st = KVTC_OK;
    for (int k = 0; k < 2 && st == KVTC_OK; k++) {
        kvtc_plan *plan = NULL;
        st = kvtc_plan_create(g.cal, (kvtc_kind)k, 3.0, &plan, err);
        kvtc_plan_free(plan);
    }
    return st;
}

static kvtc_status compress_with(uint32_t n_threads, kvtc_error *err, bool *wrong)
{
    kvtc_compress_options opt = g.copt;
    opt.n_threads = n_threads;
    void *out = NULL;
    size_t len = 0;
    kvtc_status st = kvtc_compress(g.cal, g.cache, &opt, &out, &len, err);
    if (st == KVTC_OK)
        *wrong = !test_bytes_equal(out, len, g.stream, g.stream_len);
    kvtc_buffer_free(out);
    return st;
}

static kvtc_status step_compress(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    return compress_with(1, err, wrong);
}

static kvtc_status step_compress_2_threads(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    return compress_with(2, err, wrong);
}

/* Compression and decompression through the escape path (2 threads). */
static kvtc_status step_escaped_round_trip(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    kvtc_compress_options opt = g.copt;
    opt.n_threads = 2;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 2};
    void *out = NULL;
    size_t len = 0;
    kvtc_cache *back = NULL;
    kvtc_status st = kvtc_compress(g.cal, g.escaped_cache, &opt, &out, &len, err);
    if (st == KVTC_OK) {
        *wrong = !test_bytes_equal(out, len, g.escaped_stream, g.escaped_len);
        st = kvtc_decompress(g.cal, out, len, &dopt, &back, err);
        if (st == KVTC_OK)
            *wrong |= !test_caches_equal(back, g.escaped_decoded);
    }
    kvtc_cache_free(back);
    kvtc_buffer_free(out);
    return st;
}

static kvtc_status step_decompress(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 2};
    kvtc_cache *out = NULL;
    kvtc_status st = kvtc_decompress(g.cal, g.stream, g.stream_len, &dopt, &out, err);
    if (st == KVTC_OK)
        *wrong = !test_caches_equal(out, g.decoded);
    kvtc_cache_free(out);
    return st;
}

static kvtc_status step_decompress_layers(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    uint32_t layers = 0;
    kvtc_status st = kvtc_decompress_layers(g.cal, g.stream, g.stream_len, &dopt, test_count_layers,
                                            &layers, err);
    if (st == KVTC_OK)
        *wrong = layers != SHAPE.n_layer;
    return st;
}

static kvtc_status step_decompress_blocks(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    kvtc_status st = KVTC_OK;
    uint32_t tokens = 0;
    for (uint32_t b = 0; b < g.n_blocks && st == KVTC_OK; b++) {
        kvtc_cache *out = NULL;
        st = kvtc_decompress_block(g.cal, g.stream, g.stream_len, b, &dopt, &out, err);
        if (st == KVTC_OK)
            tokens += kvtc_cache_tokens(out);
        kvtc_cache_free(out);
    }
    if (st == KVTC_OK)
        *wrong = tokens != kvtc_cache_tokens(g.cache);
    return st;
}

static kvtc_status step_append(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    void *out = NULL;
    size_t len = 0;
    kvtc_status st = kvtc_append(g.cal, g.stream, g.stream_len, g.more, &g.copt, &out, &len, err);
    if (st == KVTC_OK)
        *wrong = !test_bytes_equal(out, len, g.joined, g.joined_len);
    kvtc_buffer_free(out);
    return st;
}

static kvtc_status step_stream_info(void *arg, kvtc_error *err, bool *wrong)
{
    (void)arg;
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_status st = kvtc_stream_info_get(g.stream, g.stream_len, &info, err);
    if (st == KVTC_OK)
        *wrong = info.n_blocks != g.n_blocks;
    return st;
}

/* What step_save, step_load and step_write_read work on (their arg points to one). */
typedef enum saved { SAVED_CALIBRATION, SAVED_CACHE } saved;
static saved g_saved[] = {SAVED_CALIBRATION, SAVED_CACHE};

/* Saving the calibration or the cache gives the reference bytes. */
static kvtc_status step_save(void *arg, kvtc_error *err, bool *wrong)
{
    bool calibration = *(const saved *)arg == SAVED_CALIBRATION;
    void *out = NULL;
    size_t len = 0;
    kvtc_status st = calibration ? kvtc_calibration_save(g.cal, &out, &len, err)
                                 : kvtc_cache_save_safetensors(g.cache, &out, &len, err);
    if (st == KVTC_OK)
        *wrong = calibration ? !test_bytes_equal(out, len, g.calib_file, g.calib_len)
                             : !test_bytes_equal(out, len, g.st_file, g.st_len);
    kvtc_buffer_free(out);
    return st;
}

/* What came back (a calibration, else a cache) is the reference one. */
static bool is_reference(const kvtc_calibration *cal, const kvtc_cache *c)
{
    return cal ? memcmp(kvtc_calibration_fingerprint(cal), kvtc_calibration_fingerprint(g.cal),
                        32) == 0
               : test_caches_equal(c, g.cache);
}

/* Loading the saved calibration or cache gives back the same one. */
static kvtc_status step_load(void *arg, kvtc_error *err, bool *wrong)
{
    bool calibration = *(const saved *)arg == SAVED_CALIBRATION;
    kvtc_calibration *cal = NULL;
    kvtc_cache *c = NULL;
    kvtc_status st = calibration ? kvtc_calibration_load(g.calib_file, g.calib_len, &cal, err)
                                 : kvtc_cache_load_safetensors(g.st_file, g.st_len, &c, err);
    if (st == KVTC_OK)
        *wrong = !is_reference(cal, c);
    kvtc_calibration_free(cal);
    kvtc_cache_free(c);
    return st;
}

/* Nothing but the final file may be left in the folder, and that only on success. */
static bool folder_clean(bool expect_file)
{
    DIR *d = opendir(temp_dir());
    if (!d)
        return false;
    bool clean = true, seen = false;
    struct dirent *e;
    const char *name = strrchr(g.out_path, '/') + 1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (strcmp(e->d_name, name) == 0)
            seen = true;
        else
            clean = false;
    }
    closedir(d);
    return clean && seen == expect_file;
}

/* Writing the calibration or the cache to a file, then reading it back. */
static kvtc_status step_write_read(void *arg, kvtc_error *err, bool *wrong)
{
    bool calibration = *(const saved *)arg == SAVED_CALIBRATION;
    unlink(g.out_path);
    kvtc_status st = calibration ? kvtc_calibration_write(g.cal, g.out_path, err)
                                 : kvtc_cache_write_safetensors(g.cache, g.out_path, err);
    *wrong = !folder_clean(st == KVTC_OK);
    kvtc_calibration *cal = NULL;
    kvtc_cache *c = NULL;
    if (st == KVTC_OK)
        st = calibration ? kvtc_calibration_read(g.out_path, &cal, err)
                         : kvtc_cache_read_safetensors(g.out_path, &c, err);
    if (st == KVTC_OK)
        *wrong |= !is_reference(cal, c);
    kvtc_calibration_free(cal);
    kvtc_cache_free(c);
    unlink(g.out_path);
    return st;
}

static bool make_inputs(void)
{
    kvtc_error err;
    for (int i = 0; i < 2; i++)
        g.train[i] = make_random_cache(&SHAPE, KVTC_F32, 40, 0, 4, 10 + i);
    g.cache = make_random_cache(&SHAPE, KVTC_F16, 30, 0, 4, 20);
    g.more = make_random_cache(&SHAPE, KVTC_F16, 7, 30, 4, 21);
    if (!CHECK(g.train[0] && g.train[1] && g.cache && g.more))
        return false;
    if (!CHECK_OK(calibrate_train(&g.cal, &err), &err))
        return false;
    kvtc_compress_options_default(&g.copt);
    g.copt.k_ratio = 4.0;
    g.copt.v_ratio = 3.0;
    g.copt.block_tokens = 8;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    kvtc_stream_info info = {.struct_size = sizeof info};
    bool ok = CHECK_OK(kvtc_compress(g.cal, g.cache, &g.copt, &g.stream, &g.stream_len, &err), &err) &&
              CHECK_OK(kvtc_decompress(g.cal, g.stream, g.stream_len, &dopt, &g.decoded, &err),
                       &err) &&
              CHECK_OK(kvtc_stream_info_get(g.stream, g.stream_len, &info, &err), &err) &&
              CHECK_OK(kvtc_append(g.cal, g.stream, g.stream_len, g.more, &g.copt, &g.joined,
                                   &g.joined_len, &err), &err) &&
              CHECK_OK(kvtc_calibration_save(g.cal, &g.calib_file, &g.calib_len, &err), &err) &&
              CHECK_OK(kvtc_cache_save_safetensors(g.cache, &g.st_file, &g.st_len, &err), &err) &&
              CHECK(temp_path(g.out_path, sizeof g.out_path, "out.file"));
    g.n_blocks = ok ? info.n_blocks : 0;
    if (ok && CHECK(g.escaped_cache = make_random_cache(&SHAPE, KVTC_F32, 30, 0, 4, 22))) {
        ((float *)kvtc_cache_data(g.escaped_cache, KVTC_KEY, 1))[13 * SHAPE.head_dim] = 1e30f;
        ok = CHECK_OK(kvtc_compress(g.cal, g.escaped_cache, &g.copt, &g.escaped_stream,
                                    &g.escaped_len, &err), &err) &&
             CHECK_OK(kvtc_decompress(g.cal, g.escaped_stream, g.escaped_len, &dopt,
                                      &g.escaped_decoded, &err), &err) &&
             CHECK_OK(kvtc_stream_info_get(g.escaped_stream, g.escaped_len, &info, &err), &err) &&
             CHECK_EQ(info.format_version, 2);
    }
    return ok;
}

static void free_inputs(void)
{
    for (int i = 0; i < 2; i++)
        kvtc_cache_free(g.train[i]);
    kvtc_cache_free(g.cache);
    kvtc_cache_free(g.more);
    kvtc_cache_free(g.decoded);
    kvtc_calibration_free(g.cal);
    kvtc_buffer_free(g.stream);
    kvtc_buffer_free(g.joined);
    kvtc_buffer_free(g.calib_file);
    kvtc_buffer_free(g.st_file);
    kvtc_cache_free(g.escaped_cache);
    kvtc_cache_free(g.escaped_decoded);
    kvtc_buffer_free(g.escaped_stream);
}

int main(void)
{
    /* Before any other kvtc call, so every library allocation is counted. */
    test_alloc_install();
    static const struct {
        const char *name;
        test_alloc_step fn;
        void *arg;
    } steps[] = {
        {"calibrate", step_calibrate, NULL},
        {"plan", step_plan, NULL},
        {"compress", step_compress, NULL},
        {"compress (2 threads)", step_compress_2_threads, NULL},
        {"decompress (2 threads)", step_decompress, NULL},
        {"decompress_layers", step_decompress_layers, NULL},
        {"decompress_block (all)", step_decompress_blocks, NULL},
        {"append", step_append, NULL},
        {"stream_info", step_stream_info, NULL},
        {"escaped token round trip (v2)", step_escaped_round_trip, NULL},
        {"calibration save", step_save, &g_saved[SAVED_CALIBRATION]},
        {"calibration load", step_load, &g_saved[SAVED_CALIBRATION]},
        {"calibration write+read", step_write_read, &g_saved[SAVED_CALIBRATION]},
        {"safetensors save", step_save, &g_saved[SAVED_CACHE]},
        {"safetensors load", step_load, &g_saved[SAVED_CACHE]},
        {"safetensors write+read", step_write_read, &g_saved[SAVED_CACHE]},
    };
    uint64_t points = 0, leaks = 0;
    if (make_inputs())
        for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
            test_alloc_tally t = test_alloc_sweep(steps[i].name, steps[i].fn, steps[i].arg,
                                                  TEST_ALLOC_ANY_STATUS | TEST_ALLOC_FALLBACK);
            points += t.points;
            leaks += t.leaks;
        }
    free_inputs();
    CHECK_MSG(test_alloc_live() == 0, "%lld allocations still live at the end",
              (long long)test_alloc_live());
    printf("alloc failure: %llu points tried, %llu leaks\n", (unsigned long long)points,
           (unsigned long long)leaks);
    test_alloc_remove();
    return test_summary("test_alloc_failure");
}
