/* Allocation failure injection: a kvtc_set_allocator allocator that fails the
 * k-th allocation. For every k in each step of a round trip (calibrate, plan,
 * compress, decompress three ways, append, stream info, calibration and
 * safetensors save/load/write/read), the call must return a clean error (or
 * succeed with the right result, where a failure has a fallback), and every
 * allocation it made must be freed. LSan (the ASan build) checks the same from
 * the outside. OpenBLAS/LAPACK allocate on their own, not through the hook, so
 * their allocations are not failed here. */
#include "testutil.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Atomic uint64_t g_count; /* allocations since the step started */
static _Atomic uint64_t g_fail_at; /* 1-based index of the one to fail; 0: none */
static _Atomic int64_t g_live;     /* allocations not freed yet */

static void *failing_malloc(size_t n, void *user)
{
    (void)user;
    uint64_t i = ++g_count;
    if (i == g_fail_at)
        return NULL;
    void *p = malloc(n);
    if (p)
        g_live++;
    return p;
}

static void counting_free(void *p, void *user)
{
    (void)user;
    if (p) {
        g_live--;
        free(p);
    }
}

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
} g;

static bool same_bytes(const void *a, size_t a_len, const void *b, size_t b_len)
{
    return a_len == b_len && memcmp(a, b, a_len) == 0;
}

/* Compares through safetensors bytes, with injection paused: the check is not
 * part of the step. */
static bool same_cache(const kvtc_cache *a, const kvtc_cache *b)
{
    uint64_t count = g_count, fail_at = g_fail_at;
    g_fail_at = 0;
    void *sa = NULL, *sb = NULL;
    size_t la = 0, lb = 0;
    bool same = kvtc_cache_save_safetensors(a, &sa, &la, NULL) == KVTC_OK &&
                kvtc_cache_save_safetensors(b, &sb, &lb, NULL) == KVTC_OK &&
                same_bytes(sa, la, sb, lb);
    kvtc_buffer_free(sa);
    kvtc_buffer_free(sb);
    g_count = count;
    g_fail_at = fail_at;
    return same;
}

/* ---- the steps: each frees what it made and reports a wrong result ------------ */

typedef kvtc_status (*step_fn)(kvtc_error *err, bool *wrong);

static kvtc_status step_calibrate(kvtc_error *err, bool *wrong)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 4;
    opt.heldout_every = 4;
    kvtc_calibration *cal = NULL;
    kvtc_calibrator *cb;
    kvtc_status st = kvtc_calibrator_create(&SHAPE, &opt, &cb, err);
    if (st != KVTC_OK)
        return st;
    for (int i = 0; i < 2 && st == KVTC_OK; i++)
        st = kvtc_calibrator_add(cb, g.train[i], err);
    if (st == KVTC_OK)
        st = kvtc_calibrator_finish(cb, &cal, err);
    kvtc_calibrator_free(cb);
    if (st == KVTC_OK)
        *wrong = memcmp(kvtc_calibration_fingerprint(cal), kvtc_calibration_fingerprint(g.cal),
                        32) != 0;
    kvtc_calibration_free(cal);
    return st;
}

static kvtc_status step_plan(kvtc_error *err, bool *wrong)
{
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
        *wrong = !same_bytes(out, len, g.stream, g.stream_len);
    kvtc_buffer_free(out);
    return st;
}

static kvtc_status step_compress(kvtc_error *err, bool *wrong)
{
    return compress_with(1, err, wrong);
}

static kvtc_status step_compress_2_threads(kvtc_error *err, bool *wrong)
{
    return compress_with(2, err, wrong);
}

static kvtc_status step_decompress(kvtc_error *err, bool *wrong)
{
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 2};
    kvtc_cache *out = NULL;
    kvtc_status st = kvtc_decompress(g.cal, g.stream, g.stream_len, &dopt, &out, err);
    if (st == KVTC_OK)
        *wrong = !same_cache(out, g.decoded);
    kvtc_cache_free(out);
    return st;
}

static int count_layer(void *user, uint32_t layer, const void *key, const void *value)
{
    (void)layer;
    (void)key;
    (void)value;
    (*(uint32_t *)user)++;
    return 0;
}

static kvtc_status step_decompress_layers(kvtc_error *err, bool *wrong)
{
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    uint32_t layers = 0;
    kvtc_status st = kvtc_decompress_layers(g.cal, g.stream, g.stream_len, &dopt, count_layer,
                                            &layers, err);
    if (st == KVTC_OK)
        *wrong = layers != SHAPE.n_layer;
    return st;
}

static kvtc_status step_decompress_blocks(kvtc_error *err, bool *wrong)
{
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

static kvtc_status step_append(kvtc_error *err, bool *wrong)
{
    void *out = NULL;
    size_t len = 0;
    kvtc_status st = kvtc_append(g.cal, g.stream, g.stream_len, g.more, &g.copt, &out, &len, err);
    if (st == KVTC_OK)
        *wrong = !same_bytes(out, len, g.joined, g.joined_len);
    kvtc_buffer_free(out);
    return st;
}

static kvtc_status step_stream_info(kvtc_error *err, bool *wrong)
{
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_status st = kvtc_stream_info_get(g.stream, g.stream_len, &info, err);
    if (st == KVTC_OK)
        *wrong = info.n_blocks != g.n_blocks;
    return st;
}

static kvtc_status step_calibration_save(kvtc_error *err, bool *wrong)
{
    void *out = NULL;
    size_t len = 0;
    kvtc_status st = kvtc_calibration_save(g.cal, &out, &len, err);
    if (st == KVTC_OK)
        *wrong = !same_bytes(out, len, g.calib_file, g.calib_len);
    kvtc_buffer_free(out);
    return st;
}

static kvtc_status step_calibration_load(kvtc_error *err, bool *wrong)
{
    kvtc_calibration *cal = NULL;
    kvtc_status st = kvtc_calibration_load(g.calib_file, g.calib_len, &cal, err);
    if (st == KVTC_OK)
        *wrong = memcmp(kvtc_calibration_fingerprint(cal), kvtc_calibration_fingerprint(g.cal),
                        32) != 0;
    kvtc_calibration_free(cal);
    return st;
}

static kvtc_status step_safetensors_save(kvtc_error *err, bool *wrong)
{
    void *out = NULL;
    size_t len = 0;
    kvtc_status st = kvtc_cache_save_safetensors(g.cache, &out, &len, err);
    if (st == KVTC_OK)
        *wrong = !same_bytes(out, len, g.st_file, g.st_len);
    kvtc_buffer_free(out);
    return st;
}

static kvtc_status step_safetensors_load(kvtc_error *err, bool *wrong)
{
    kvtc_cache *c = NULL;
    kvtc_status st = kvtc_cache_load_safetensors(g.st_file, g.st_len, &c, err);
    if (st == KVTC_OK)
        *wrong = !same_cache(c, g.cache);
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

static kvtc_status step_write_read_calibration(kvtc_error *err, bool *wrong)
{
    unlink(g.out_path);
    kvtc_status st = kvtc_calibration_write(g.cal, g.out_path, err);
    *wrong = !folder_clean(st == KVTC_OK);
    kvtc_calibration *back = NULL;
    if (st == KVTC_OK && (st = kvtc_calibration_read(g.out_path, &back, err)) == KVTC_OK)
        *wrong |= memcmp(kvtc_calibration_fingerprint(back), kvtc_calibration_fingerprint(g.cal),
                         32) != 0;
    kvtc_calibration_free(back);
    unlink(g.out_path);
    return st;
}

static kvtc_status step_write_read_safetensors(kvtc_error *err, bool *wrong)
{
    unlink(g.out_path);
    kvtc_status st = kvtc_cache_write_safetensors(g.cache, g.out_path, err);
    *wrong = !folder_clean(st == KVTC_OK);
    kvtc_cache *back = NULL;
    if (st == KVTC_OK && (st = kvtc_cache_read_safetensors(g.out_path, &back, err)) == KVTC_OK)
        *wrong |= !same_cache(back, g.cache);
    kvtc_cache_free(back);
    unlink(g.out_path);
    return st;
}

/* ---- the driver ------------------------------------------------------------------------------ */

static uint64_t g_points, g_leaks;

/* Fails allocation 1, 2, ... of the step until it runs through without
 * reaching the failing one. */
static void fail_every_allocation(const char *name, step_fn step)
{
    uint64_t points = 0, leaks = 0, fallbacks = 0, other_status = 0;
    for (uint64_t k = 1;; k++) {
        kvtc_error err = {0};
        bool wrong = false;
        int64_t live_before = g_live;
        g_count = 0;
        g_fail_at = k;
        kvtc_status st = step(&err, &wrong);
        bool reached = g_count >= k;
        g_fail_at = 0;
        if (g_live != live_before) {
            leaks++;
            CHECK_MSG(false, "%s, allocation %llu failed: %lld allocations leaked", name,
                      (unsigned long long)k, (long long)(g_live - live_before));
        }
        CHECK_MSG(!wrong, "%s, allocation %llu failed: wrong result or files left behind", name,
                  (unsigned long long)k);
        if (!reached) {
            CHECK_MSG(st == KVTC_OK, "%s fails without an injected failure: %s", name,
                      err.message);
            break;
        }
        points++;
        if (st == KVTC_OK)
            fallbacks++;
        else {
            CHECK_MSG(err.status == st && err.message[0] && !strchr(err.message, '\n'),
                      "%s, allocation %llu failed: status %s without a proper message", name,
                      (unsigned long long)k, kvtc_status_string(st));
            other_status += st != KVTC_E_NOMEM;
        }
        if (!CHECK_MSG(k < 1000000, "%s never finishes", name))
            break;
    }
    printf("  %-26s %6llu points, %llu leaks, %llu succeeded anyway, %llu other errors\n", name,
           (unsigned long long)points, (unsigned long long)leaks, (unsigned long long)fallbacks,
           (unsigned long long)other_status);
    g_points += points;
    g_leaks += leaks;
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
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 4;
    opt.heldout_every = 4;
    kvtc_calibrator *cb;
    CHECK_OK(kvtc_calibrator_create(&SHAPE, &opt, &cb, &err), &err);
    bool ok = CHECK(cb != NULL) && CHECK_OK(kvtc_calibrator_add(cb, g.train[0], &err), &err) &&
              CHECK_OK(kvtc_calibrator_add(cb, g.train[1], &err), &err) &&
              CHECK_OK(kvtc_calibrator_finish(cb, &g.cal, &err), &err);
    kvtc_calibrator_free(cb);
    if (!ok)
        return false;
    kvtc_compress_options_default(&g.copt);
    g.copt.k_ratio = 4.0;
    g.copt.v_ratio = 3.0;
    g.copt.block_tokens = 8;
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    kvtc_stream_info info = {.struct_size = sizeof info};
    ok = CHECK_OK(kvtc_compress(g.cal, g.cache, &g.copt, &g.stream, &g.stream_len, &err), &err) &&
         CHECK_OK(kvtc_decompress(g.cal, g.stream, g.stream_len, &dopt, &g.decoded, &err), &err) &&
         CHECK_OK(kvtc_stream_info_get(g.stream, g.stream_len, &info, &err), &err) &&
         CHECK_OK(kvtc_append(g.cal, g.stream, g.stream_len, g.more, &g.copt, &g.joined,
                              &g.joined_len, &err), &err) &&
         CHECK_OK(kvtc_calibration_save(g.cal, &g.calib_file, &g.calib_len, &err), &err) &&
         CHECK_OK(kvtc_cache_save_safetensors(g.cache, &g.st_file, &g.st_len, &err), &err) &&
         CHECK(temp_path(g.out_path, sizeof g.out_path, "out.file"));
    g.n_blocks = ok ? info.n_blocks : 0;
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
}

int main(void)
{
    /* Before any other kvtc call, so every library allocation is counted. */
    kvtc_allocator a = {failing_malloc, counting_free, NULL};
    kvtc_set_allocator(&a);
    static const struct {
        const char *name;
        step_fn fn;
    } steps[] = {
        {"calibrate", step_calibrate},
        {"plan", step_plan},
        {"compress", step_compress},
        {"compress (2 threads)", step_compress_2_threads},
        {"decompress (2 threads)", step_decompress},
        {"decompress_layers", step_decompress_layers},
        {"decompress_block (all)", step_decompress_blocks},
        {"append", step_append},
        {"stream_info", step_stream_info},
        {"calibration save", step_calibration_save},
        {"calibration load", step_calibration_load},
        {"calibration write+read", step_write_read_calibration},
        {"safetensors save", step_safetensors_save},
        {"safetensors load", step_safetensors_load},
        {"safetensors write+read", step_write_read_safetensors},
    };
    if (make_inputs())
        for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
            fail_every_allocation(steps[i].name, steps[i].fn);
    free_inputs();
    CHECK_MSG(g_live == 0, "%lld allocations still live at the end", (long long)g_live);
    printf("alloc failure: %llu points tried, %llu leaks\n", (unsigned long long)g_points,
           (unsigned long long)g_leaks);
    kvtc_set_allocator(NULL);
    return test_summary("test_alloc_failure");
}
