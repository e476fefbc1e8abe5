/* A program that uses the installed library and nothing but <kvtc.h>: it
 * checks the version, calibrates on random low-rank caches, round-trips the
 * calibration through its file format, compresses a fresh cache at 4x and
 * restores it, and checks what came back. Built by tests/test_install.sh
 * through find_package(kvtc) and through pkg-config. Exit status 0 = ok. */
#include <kvtc.h>

#include <stdio.h>
#include <string.h>

enum { LAYERS = 2, HEADS = 2, DIM = 16, RANK = 3, TOKENS = 192, SINKS = 2, WINDOW = 8 };
#define FEATURES (LAYERS * HEADS * DIM)

static const kvtc_model_shape SHAPE = {.n_layer = LAYERS, .n_kv_head = HEADS, .head_dim = DIM,
                                       .rope_style = KVTC_ROPE_NONE};

static int failures;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "consumer: %s:%d: %s failed\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

static int fail(const char *what, const kvtc_error *err)
{
    fprintf(stderr, "consumer: %s: %s (%s)\n", what, err->message, kvtc_status_string(err->status));
    return 1;
}

static double uniform(unsigned long long *state) /* in [-1, 1) */
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*state >> 11) / (double)(1ull << 52) - 1.0;
}

/* A cache whose tokens lie near a RANK-dimensional subspace fixed by the
 * "model" (the same for every seed): mean + sum_r c_r dir_r + small noise. */
static kvtc_status random_cache(unsigned long long seed, kvtc_cache **out, kvtc_error *err)
{
    kvtc_status st = kvtc_cache_create(&SHAPE, KVTC_F32, TOKENS, 0, out, err);
    if (st != KVTC_OK)
        return st;
    static float basis[2][RANK + 1][FEATURES];
    unsigned long long model = 42;
    for (int k = 0; k < 2; k++)
        for (int r = 0; r <= RANK; r++)
            for (int i = 0; i < FEATURES; i++)
                basis[k][r][i] = (float)(uniform(&model) / (r + 1));
    for (int k = 0; k < 2; k++)
        for (int t = 0; t < TOKENS; t++) {
            double c[RANK];
            for (int r = 0; r < RANK; r++)
                c[r] = 4 * uniform(&seed);
            for (int l = 0; l < LAYERS; l++) {
                float *d = kvtc_cache_data(*out, (kvtc_kind)k, (uint32_t)l);
                for (int h = 0; h < HEADS; h++)
                    for (int j = 0; j < DIM; j++) {
                        int i = (l * HEADS + h) * DIM + j;
                        double v = basis[k][0][i] + 0.001 * uniform(&seed);
                        for (int r = 0; r < RANK; r++)
                            v += c[r] * basis[k][r + 1][i];
                        d[(h * TOKENS + t) * DIM + j] = (float)v;
                    }
            }
        }
    return KVTC_OK;
}

/* Relative squared error of the tokens between the raw sinks and window,
 * and whether the raw ones came back bit-exact. */
static double compare(const kvtc_cache *a, const kvtc_cache *b, int *raw_exact)
{
    double diff = 0, energy = 0;
    *raw_exact = 1;
    for (int k = 0; k < 2; k++)
        for (int l = 0; l < LAYERS; l++) {
            const float *x = kvtc_cache_data_const(a, (kvtc_kind)k, (uint32_t)l);
            const float *y = kvtc_cache_data_const(b, (kvtc_kind)k, (uint32_t)l);
            for (int h = 0; h < HEADS; h++)
                for (int t = 0; t < TOKENS; t++) {
                    const float *xr = x + (h * TOKENS + t) * DIM, *yr = y + (h * TOKENS + t) * DIM;
                    if (t < SINKS || t >= TOKENS - WINDOW) {
                        *raw_exact &= memcmp(xr, yr, DIM * sizeof *xr) == 0;
                        continue;
                    }
                    for (int j = 0; j < DIM; j++) {
                        diff += ((double)xr[j] - yr[j]) * ((double)xr[j] - yr[j]);
                        energy += (double)xr[j] * xr[j];
                    }
                }
        }
    return diff / energy;
}

int main(void)
{
    printf("consumer: libkvtc %s, header %s\n", kvtc_version(), KVTC_VERSION_STRING);
    CHECK(strcmp(kvtc_version(), KVTC_VERSION_STRING) == 0);

    kvtc_error err;
    kvtc_calib_options copt;
    kvtc_calib_options_default(&copt);
    CHECK(copt.struct_size == sizeof copt);
    copt.sinks = SINKS;
    copt.window = WINDOW;
    kvtc_calibrator *calibrator;
    if (kvtc_calibrator_create(&SHAPE, &copt, &calibrator, &err) != KVTC_OK)
        return fail("kvtc_calibrator_create", &err);
    for (unsigned long long seed = 1; seed <= 4; seed++) {
        kvtc_cache *c;
        if (random_cache(seed, &c, &err) != KVTC_OK ||
            kvtc_calibrator_add(calibrator, c, &err) != KVTC_OK)
            return fail("calibrating", &err);
        kvtc_cache_free(c);
    }
    kvtc_calibration *made, *cal;
    if (kvtc_calibrator_finish(calibrator, &made, &err) != KVTC_OK)
        return fail("kvtc_calibrator_finish", &err);
    kvtc_calibrator_free(calibrator);

    void *file;
    size_t file_len;
    if (kvtc_calibration_save(made, &file, &file_len, &err) != KVTC_OK ||
        kvtc_calibration_load(file, file_len, &cal, &err) != KVTC_OK)
        return fail("calibration save and load", &err);
    CHECK(memcmp(kvtc_calibration_fingerprint(made), kvtc_calibration_fingerprint(cal), 32) == 0);
    kvtc_buffer_free(file);
    kvtc_calibration_free(made);

    kvtc_cache *cache, *back;
    if (random_cache(99, &cache, &err) != KVTC_OK)
        return fail("kvtc_cache_create", &err);
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    CHECK(opt.struct_size == sizeof opt);
    opt.k_ratio = opt.v_ratio = 4;
    void *stream;
    size_t len;
    if (kvtc_compress(cal, cache, &opt, &stream, &len, &err) != KVTC_OK)
        return fail("kvtc_compress", &err);
    kvtc_stream_info info;
    info.struct_size = sizeof info;
    if (kvtc_stream_info_get(stream, len, &info, &err) != KVTC_OK)
        return fail("kvtc_stream_info_get", &err);
    CHECK(info.n_tokens == TOKENS && info.sinks == SINKS && info.window == WINDOW);
    CHECK(memcmp(info.calib_fingerprint, kvtc_calibration_fingerprint(cal), 32) == 0);
    kvtc_decompress_options dopt;
    kvtc_decompress_options_default(&dopt);
    CHECK(dopt.struct_size == sizeof dopt);
    if (kvtc_decompress(cal, stream, len, &dopt, &back, &err) != KVTC_OK)
        return fail("kvtc_decompress", &err);
    CHECK(kvtc_cache_tokens(back) == TOKENS && kvtc_cache_pos0(back) == 0);
    CHECK(kvtc_cache_dtype(back) == KVTC_F32);
    int raw_exact;
    double rel = compare(cache, back, &raw_exact);
    CHECK(raw_exact);
    CHECK(rel < 0.01);
    printf("consumer: %zu-byte stream (%.2fx vs fp16), relative error %.2e\n", len,
           (double)info.fp16_bytes / (double)len, rel);

    /* The ABI contract of growing structs, against the installed library. A
     * caller built with a newer header (a larger struct) or one that never
     * set struct_size is refused, not read past; an output struct is written
     * only as far as its struct_size. */
    struct {
        kvtc_decompress_options opt;
        uint64_t field_of_a_later_version;
    } newer;
    kvtc_decompress_options_default(&newer.opt);
    newer.opt.struct_size = sizeof newer;
    kvtc_cache *none = NULL;
    CHECK(kvtc_decompress(cal, stream, len, &newer.opt, &none, &err) == KVTC_E_INVALID);
    CHECK(none == NULL && strstr(err.message, "struct_size") != NULL);
    kvtc_compress_options unset = opt;
    unset.struct_size = 0;
    void *no_stream = NULL;
    size_t no_len = 0;
    CHECK(kvtc_compress(cal, cache, &unset, &no_stream, &no_len, &err) == KVTC_E_INVALID);
    CHECK(no_stream == NULL);
    union {
        kvtc_stream_info info;
        unsigned char bytes[sizeof(kvtc_stream_info) + 64];
    } guarded;
    memset(guarded.bytes, 0xa5, sizeof guarded.bytes);
    guarded.info.struct_size = sizeof guarded.info;
    CHECK(kvtc_stream_info_get(stream, len, &guarded.info, &err) == KVTC_OK);
    for (size_t i = sizeof guarded.info; i < sizeof guarded.bytes; i++)
        CHECK(guarded.bytes[i] == 0xa5);
    CHECK(guarded.info.total_bytes == info.total_bytes);

    kvtc_buffer_free(stream);
    kvtc_cache_free(back);
    kvtc_cache_free(cache);
    kvtc_calibration_free(cal);
    if (failures)
        return 1;
    printf("consumer: ok\n");
    return 0;
}
