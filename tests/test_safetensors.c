/* Safetensors caches: round trips in every dtype, the byte layout checked
 * against files built by hand here, defaults, and hostile files rejected with
 * a message that says what is wrong. */
#include "kvtc_internal.h"
#include "test_alloc.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* "<u64 LE length><header><data>" in a malloc'd buffer. */
static unsigned char *make_file(const char *header, const void *data, size_t data_len,
                                size_t *len)
{
    size_t n = strlen(header);
    unsigned char *buf = malloc(8 + n + data_len + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    if (data_len)
        memcpy(buf + 8 + n, data, data_len);
    *len = 8 + n + data_len;
    return buf;
}

static void round_trip(const kvtc_model_shape *shape, kvtc_dtype dtype, uint32_t n_tokens,
                       int64_t pos0, const char *model)
{
    kvtc_cache *c = make_random_cache(shape, dtype, n_tokens, pos0, 3, 11);
    if (!CHECK(c != NULL))
        return;
    kvtc_error err;
    CHECK_OK(kvtc_cache_set_model_name(c, model, &err), &err);
    void *buf = NULL;
    size_t len = 0;
    kvtc_cache *back = NULL, *from_file = NULL;
    if (!CHECK_OK(kvtc_cache_save_safetensors(c, &buf, &len, &err), &err))
        goto done;
    const unsigned char *b = buf;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | b[i];
    CHECK_EQ(header_len % 8, 0);
    CHECK(b[8] == '{');
    uint64_t data_len = 2ull * shape->n_layer * shape->n_kv_head * n_tokens * shape->head_dim *
                        kvtc_dtype_size(dtype);
    CHECK_EQ(len, 8 + header_len + data_len);
    /* Layer 1's value tensor is the fourth in the data section. */
    if (shape->n_layer > 1 && n_tokens > 0)
        CHECK(memcmp(b + 8 + header_len + 3 * data_len / (2 * shape->n_layer),
                     kvtc_cache_data_const(c, KVTC_VALUE, 1), data_len / (2 * shape->n_layer)) ==
              0);
    if (CHECK_OK(kvtc_cache_load_safetensors(buf, len, &back, &err), &err))
        CHECK_MSG(test_caches_equal(c, back), "%s round trip differs", kvtc_dtype_name(dtype));

    /* Through a file: the same bytes, read back the same. */
    char path[4096];
    if (!temp_path(path, sizeof path, "rt.safetensors"))
        goto done;
    CHECK_OK(kvtc_cache_write_safetensors(c, path, &err), &err);
    void *file = NULL;
    size_t file_len = 0;
    if (CHECK_OK(kvtc_read_file(path, &file, &file_len, &err), &err))
        CHECK(file_len == len && memcmp(file, buf, len) == 0);
    kvtc_buffer_free(file);
    if (CHECK_OK(kvtc_cache_read_safetensors(path, &from_file, &err), &err))
        CHECK(test_caches_equal(c, from_file));
done:
    kvtc_buffer_free(buf);
    kvtc_cache_free(back);
    kvtc_cache_free(from_file);
    kvtc_cache_free(c);
}

static void test_round_trips(void)
{
    kvtc_model_shape neox = {.n_layer = 3, .n_kv_head = 2, .head_dim = 8,
                             .rope_style = KVTC_ROPE_NEOX, .rope_dims = 4,
                             .rope_theta = 500000.5, .rope_freq_scale = 0.25};
    const kvtc_dtype dtypes[] = {KVTC_F32, KVTC_F16, KVTC_BF16};
    for (int i = 0; i < 3; i++)
        round_trip(&neox, dtypes[i], 21, 1000 + i, "m\xc3\xa9tal \"quoted\"\\");
    kvtc_model_shape plain = {.n_layer = 1, .n_kv_head = 1, .head_dim = 2,
                              .rope_style = KVTC_ROPE_NONE};
    round_trip(&plain, KVTC_F16, 5, 0, "");
    kvtc_model_shape interleaved = {.n_layer = 2, .n_kv_head = 4, .head_dim = 16,
                                    .rope_style = KVTC_ROPE_INTERLEAVED, .rope_theta = 10000};
    round_trip(&interleaved, KVTC_BF16, 0, 5, "empty");
    round_trip(&interleaved, KVTC_F32, 300, (int64_t)1 << 40, "far");
}

/* A file written by hand, as another program would: tensors listed and stored
 * in an unusual order, F32 values that encode where they belong. */
static void test_hand_written(void)
{
    enum { H = 2, T = 3, D = 4, PER = H * T * D };
    float data[4 * PER];
    /* data order: layers.1.value, layers.0.key, layers.1.key, layers.0.value */
    static const int order[4][2] = {{1, 1}, {0, 0}, {1, 0}, {0, 1}};
    for (int i = 0; i < 4; i++)
        for (int e = 0; e < PER; e++)
            data[i * PER + e] = (float)(order[i][0] * 1000 + order[i][1] * 100 + e);
    char header[1024];
    int bytes = PER * 4;
    snprintf(header, sizeof header,
             "{\"layers.0.value\": {\"dtype\": \"F32\", \"shape\": [2, 3, 4], "
             "\"data_offsets\": [%d, %d]},\n"
             " \"layers.1.key\": {\"data_offsets\": [%d, %d], \"shape\": [2, 3, 4], "
             "\"dtype\": \"F32\"},\n"
             " \"__metadata__\": {\"rope_theta\": \"1e4\", \"pos0\": \"17\", \"format\": \"pt\"},\n"
             " \"layers.1.value\": {\"dtype\": \"F32\", \"shape\": [2, 3, 4], "
             "\"data_offsets\": [0, %d]},\n"
             " \"layers.0.key\": {\"dtype\": \"F32\", \"shape\": [2, 3, 4], "
             "\"data_offsets\": [%d, %d]}}   ",
             3 * bytes, 4 * bytes, 2 * bytes, 3 * bytes, bytes, bytes, 2 * bytes);
    size_t len;
    unsigned char *file = make_file(header, data, sizeof data, &len);
    kvtc_cache *c = NULL;
    kvtc_error err;
    if (CHECK_OK(kvtc_cache_load_safetensors(file, len, &c, &err), &err)) {
        const kvtc_model_shape *s = kvtc_cache_shape(c);
        CHECK(s->n_layer == 2 && s->n_kv_head == H && s->head_dim == D);
        CHECK(kvtc_cache_tokens(c) == T && kvtc_cache_dtype(c) == KVTC_F32);
        /* Defaults: interleaved, rope_dims = head_dim, scale 1, and the pos0 given. */
        CHECK(s->rope_style == KVTC_ROPE_INTERLEAVED && s->rope_dims == D);
        CHECK(s->rope_theta == 10000.0 && s->rope_freq_scale == 1.0);
        CHECK_EQ(kvtc_cache_pos0(c), 17);
        CHECK(strcmp(kvtc_cache_model_name(c), "") == 0);
        int wrong = 0;
        for (int l = 0; l < 2; l++)
            for (int k = 0; k < 2; k++) {
                const float *x = kvtc_cache_data_const(c, (kvtc_kind)k, (uint32_t)l);
                for (int e = 0; e < PER; e++)
                    wrong += x[e] != (float)(l * 1000 + k * 100 + e);
            }
        CHECK_EQ(wrong, 0);
    }
    kvtc_cache_free(c);
    free(file);
}

/* A small valid file: one layer, [1, 2, 2] F16 tensors; `meta` is the
 * __metadata__ object's contents. */
static unsigned char *small_file(const char *meta, size_t *len)
{
    static const uint16_t data[8] = {0x3c00, 0x4000, 0x4200, 0x4400,
                                     0xbc00, 0xc000, 0xc200, 0xc400};
    char header[512];
    snprintf(header, sizeof header,
             "{\"__metadata__\":{%s},"
             "\"layers.0.key\":{\"dtype\":\"F16\",\"shape\":[1,2,2],\"data_offsets\":[0,8]},"
             "\"layers.0.value\":{\"dtype\":\"F16\",\"shape\":[1,2,2],\"data_offsets\":[8,16]}}",
             meta);
    return make_file(header, data, sizeof data, len);
}

/* Loading must fail with `want` (or any error when want is KVTC_OK) and a
 * message containing `needle`. */
static void expect_reject(const void *file, size_t len, kvtc_status want, const char *needle,
                          const char *what)
{
    kvtc_cache *c = (kvtc_cache *)1;
    kvtc_error err = {0};
    kvtc_status st = kvtc_cache_load_safetensors(file, len, &c, &err);
    if (!CHECK_MSG(st != KVTC_OK && c == NULL, "%s: accepted", what)) {
        if (st == KVTC_OK)
            kvtc_cache_free(c);
        return;
    }
    if (want != KVTC_OK)
        CHECK_MSG(st == want, "%s: status %d (%s), want %d", what, (int)st, err.message,
                  (int)want);
    CHECK_MSG(err.status == st && err.message[0], "%s: no message", what);
    if (needle)
        CHECK_MSG(strstr(err.message, needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what,
                  err.message, needle);
}

static void expect_header_reject(const char *header, size_t data_len, kvtc_status want,
                                 const char *needle)
{
    unsigned char data[256] = {0};
    size_t len;
    unsigned char *file = make_file(header, data, data_len, &len);
    expect_reject(file, len, want, needle, header);
    free(file);
}

#define TENSOR(name, dtype, shape, offsets) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offsets "}"
#define K0 TENSOR("layers.0.key", "F16", "[1,2,2]", "[0,8]")
#define V0 TENSOR("layers.0.value", "F16", "[1,2,2]", "[8,16]")
#define META "\"__metadata__\":{\"rope_theta\":\"10000\"}"

static void test_hostile(void)
{
    size_t len;
    unsigned char *file = small_file("\"rope_theta\":\"10000\"", &len);
    kvtc_cache *c = NULL;
    kvtc_error err;
    CHECK_OK(kvtc_cache_load_safetensors(file, len, &c, &err), &err);
    kvtc_cache_free(c);
    for (size_t n = 0; n < len; n++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", n, len);
        expect_reject(file, n, KVTC_OK, NULL, what);
    }
    /* Header lengths: huge, past the end, too small. */
    unsigned char *bad = malloc(len);
    memcpy(bad, file, len);
    memset(bad, 0xff, 8);
    expect_reject(bad, len, KVTC_E_FORMAT, "header length", "header length 2^64-1");
    memset(bad, 0, 8);
    bad[0] = (unsigned char)(len - 7);
    expect_reject(bad, len, KVTC_E_TRUNCATED, "past the end", "header length past the end");
    memset(bad, 0, 8);
    bad[0] = 1;
    expect_reject(bad, len, KVTC_E_FORMAT, "header length", "header length 1");
    memcpy(bad, file, len);
    bad[len - 1] = 0; /* the data is not checked, but a header byte is */
    bad[8] = '[';
    expect_reject(bad, len, KVTC_E_FORMAT, "'{'", "header not an object");
    free(bad);
    free(file);

    /* Invalid JSON. */
    expect_header_reject("{\"layers.0.key\":{\"dtype\":\"F16\",}}", 0, KVTC_E_FORMAT, "JSON");
    expect_header_reject("{" META "," K0 "," V0 "} x", 16, KVTC_E_FORMAT, "JSON");
    expect_header_reject("{\"a\":\"\xff\"}", 0, KVTC_E_FORMAT, "UTF-8");
    /* Nothing or the wrong things. */
    expect_header_reject("{}", 0, KVTC_E_FORMAT, "no tensors");
    expect_header_reject("{" META "}", 0, KVTC_E_FORMAT, "no tensors");
    expect_header_reject("{" META "," K0 "," V0 "," TENSOR("embed", "F16", "[1,2,2]", "[16,24]")
                         "}", 24, KVTC_E_FORMAT, "\"embed\"");
    expect_header_reject("{" META "," K0 "," V0 "," TENSOR("layers.0.query", "F16", "[1,2,2]",
                         "[16,24]") "}", 24, KVTC_E_FORMAT, "layers.0.query");
    expect_header_reject("{" META "," TENSOR("layers.00.key", "F16", "[1,2,2]", "[0,8]") "," V0
                         "}", 16, KVTC_E_FORMAT, "layers.00.key");
    /* Layers must be 0..L-1, each with a key and a value, once. */
    expect_header_reject("{" META "," K0 "}", 8, KVTC_E_FORMAT, "layers.0.value");
    expect_header_reject("{" META "," K0 "," V0 "," TENSOR("layers.2.key", "F16", "[1,2,2]",
                         "[16,24]") "," TENSOR("layers.2.value", "F16", "[1,2,2]", "[24,32]")
                         "}", 32, KVTC_E_FORMAT, "layers.1.key");
    expect_header_reject("{" META "," K0 "," TENSOR("layers.4000000000.value", "F16", "[1,2,2]",
                         "[8,16]") "}", 16, KVTC_E_FORMAT, "missing tensor layers.0.value");
    expect_header_reject("{" META "," K0 "," V0 "," K0 "}", 16, KVTC_E_FORMAT, "duplicate");
    /* Types, shapes and dtypes. */
    expect_header_reject("{" META "," K0 "," TENSOR("layers.0.value", "F32", "[1,2,1]",
                         "[8,16]") "}", 16, KVTC_E_FORMAT, "F32");
    expect_header_reject("{" META "," TENSOR("layers.0.key", "I8", "[1,2,2]", "[0,4]") ","
                         TENSOR("layers.0.value", "I8", "[1,2,2]", "[4,8]") "}", 8,
                         KVTC_E_UNSUPPORTED, "I8");
    expect_header_reject("{" META "," K0 "," TENSOR("layers.0.value", "F16", "[1,1,4]",
                         "[8,16]") "}", 16, KVTC_E_FORMAT, "shape");
    expect_header_reject("{" META "," TENSOR("layers.0.key", "F16", "[2,2]", "[0,8]") ","
                         TENSOR("layers.0.value", "F16", "[2,2]", "[8,16]") "}", 16,
                         KVTC_E_FORMAT, "shape");
    expect_header_reject("{" META "," TENSOR("layers.0.key", "F16", "[0,2,2]", "[0,0]") ","
                         TENSOR("layers.0.value", "F16", "[0,2,2]", "[0,0]") "}", 0,
                         KVTC_E_FORMAT, "out of range");
    expect_header_reject("{" META "," TENSOR("layers.0.key", "F16", "[1,2.0,2]", "[0,8]") "," V0
                         "}", 16, KVTC_E_FORMAT, "shape");
    expect_header_reject("{" META ",\"layers.0.key\":{\"dtype\":\"F16\",\"shape\":[1,2,2]}," V0
                         "}", 16, KVTC_E_FORMAT, "data_offsets");
    expect_header_reject("{" META ",\"layers.0.key\":{\"dtype\":\"F16\",\"shape\":[1,2,2],"
                         "\"data_offsets\":[0,8],\"extra\":1}," V0 "}", 16, KVTC_E_FORMAT,
                         "extra");
    expect_header_reject("{" META ",\"layers.0.key\":[1]," V0 "}", 16, KVTC_E_FORMAT, "object");
    /* Offsets: past the end, wrong size, reversed, overlapping, gaps, trailing bytes. */
    expect_header_reject("{" META "," K0 "," V0 "}", 15, KVTC_E_TRUNCATED, "past the end");
    expect_header_reject("{" META "," K0 "," V0 "}", 17, KVTC_E_FORMAT, "after the last");
    static const struct {
        const char *value_offsets; /* of layers.0.value, after K0 */
        size_t data_len;
        const char *needle;
    } offsets[] = {
        {"[8,18446744073709551615]", 16, "span"}, {"[16,8]", 16, "span"},
        {"[8,12]", 16, "span"},                   {"[4,12]", 16, "overlaps"},
        {"[0,8]", 16, "overlaps"},                {"[10,18]", 18, "gap"},
        {"[8,-16]", 16, "data_offsets"},
    };
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
        char header[512];
        snprintf(header, sizeof header,
                 "{" META "," K0 "," TENSOR("layers.0.value", "F16", "[1,2,2]", "%s") "}",
                 offsets[i].value_offsets);
        expect_header_reject(header, offsets[i].data_len, KVTC_E_FORMAT, offsets[i].needle);
    }

    /* Metadata. */
    static const struct {
        const char *meta;
        kvtc_status want;
        const char *needle;
    } metas[] = {
        {"", KVTC_E_FORMAT, "rope_theta"},
        {"\"rope_style\":\"neox\"", KVTC_E_FORMAT, "rope_theta"},
        {"\"rope_theta\":\"abc\"", KVTC_E_FORMAT, "rope_theta"},
        {"\"rope_theta\":\"1e4x\"", KVTC_E_FORMAT, "rope_theta"},
        {"\"rope_theta\":\" 1e4\"", KVTC_E_FORMAT, "rope_theta"},
        {"\"rope_theta\":\"inf\"", KVTC_E_FORMAT, "rope_theta"},
        {"\"rope_theta\":\"-1\"", KVTC_E_INVALID, "rope_theta"},
        {"\"rope_theta\":10000", KVTC_E_FORMAT, "rope_theta"},
        {"\"rope_theta\":\"1e4\",\"rope_style\":\"yarn\"", KVTC_E_UNSUPPORTED, "yarn"},
        {"\"rope_theta\":\"1e4\",\"rope_dims\":\"-2\"", KVTC_E_FORMAT, "rope_dims"},
        {"\"rope_theta\":\"1e4\",\"rope_dims\":\"2.0\"", KVTC_E_FORMAT, "rope_dims"},
        {"\"rope_theta\":\"1e4\",\"rope_dims\":\"3\"", KVTC_E_INVALID, "rope_dims"},
        {"\"rope_theta\":\"1e4\",\"rope_dims\":\"4294967296\"", KVTC_E_FORMAT, "rope_dims"},
        {"\"rope_theta\":\"1e4\",\"rope_freq_scale\":\"\"", KVTC_E_FORMAT, "rope_freq_scale"},
        {"\"rope_theta\":\"1e4\",\"pos0\":\"x\"", KVTC_E_FORMAT, "pos0"},
        {"\"rope_theta\":\"1e4\",\"pos0\":\"-1\"", KVTC_E_FORMAT, "pos0"},
        {"\"rope_theta\":\"1e4\",\"pos0\":\"99999999999999999999\"", KVTC_E_FORMAT, "pos0"},
        {"\"rope_theta\":\"1e4\",\"model\":null", KVTC_E_FORMAT, "model"},
    };
    for (size_t i = 0; i < sizeof metas / sizeof metas[0]; i++) {
        file = small_file(metas[i].meta, &len);
        expect_reject(file, len, metas[i].want, metas[i].needle, metas[i].meta);
        free(file);
    }
    expect_header_reject("{\"__metadata__\":[]," K0 "," V0 "}", 16, KVTC_E_FORMAT,
                         "__metadata__");

    /* Metadata that is fine: no rope (theta not needed), a long model name cut
     * at a character boundary, unknown keys ignored. */
    char meta[256] = "\"rope_style\":\"none\",\"other\":\"x\",\"model\":\"";
    for (int i = 0; i < 40; i++)
        strcat(meta, "\xc3\xa9"); /* 80 bytes of two-byte characters */
    strcat(meta, "\"");
    file = small_file(meta, &len);
    c = NULL;
    if (CHECK_OK(kvtc_cache_load_safetensors(file, len, &c, &err), &err)) {
        CHECK(kvtc_cache_shape(c)->rope_style == KVTC_ROPE_NONE);
        CHECK_EQ(strlen(kvtc_cache_model_name(c)), 62);
        const uint16_t *k = kvtc_cache_data_const(c, KVTC_KEY, 0);
        const uint16_t *v = kvtc_cache_data_const(c, KVTC_VALUE, 0);
        CHECK(k[0] == 0x3c00 && k[3] == 0x4400 && v[0] == 0xbc00 && v[3] == 0xc400);
    }
    kvtc_cache_free(c);
    free(file);
}

/* Random corruption of a valid file: any outcome but a crash or a leak. */
static void test_mutations(void)
{
    size_t len;
    unsigned char *file = small_file("\"rope_theta\":\"10000\",\"pos0\":\"4\"", &len);
    unsigned char *buf = malloc(len);
    test_rng rng;
    rng_seed(&rng, 99);
    int accepted = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, file, len);
        int edits = 1 + (int)rng_below(&rng, 3);
        for (int e = 0; e < edits; e++)
            buf[rng_below(&rng, (uint32_t)len)] = (unsigned char)rng_below(&rng, 256);
        kvtc_cache *c = NULL;
        if (kvtc_cache_load_safetensors(buf, len, &c, NULL) == KVTC_OK)
            accepted++;
        kvtc_cache_free(c);
    }
    CHECK(accepted > 0); /* the data bytes may change freely */
    free(buf);
    free(file);
}

static void test_files(void)
{
    char path[4096];
    if (!temp_path(path, sizeof path, "missing.safetensors"))
        return;
    kvtc_cache *c = (kvtc_cache *)1;
    kvtc_error err = {0};
    CHECK_STATUS(kvtc_cache_read_safetensors(path, &c, &err), KVTC_E_IO, NULL);
    CHECK(c == NULL && strstr(err.message, path) != NULL);

    size_t len;
    unsigned char *file = small_file("\"rope_theta\":\"oops\"", &len);
    if (!temp_path(path, sizeof path, "bad.safetensors"))
        return;
    CHECK_OK(kvtc_write_file_atomic(path, file, len, &err), &err);
    free(file);
    CHECK_STATUS(kvtc_cache_read_safetensors(path, &c, &err), KVTC_E_FORMAT, NULL);
    CHECK_MSG(strncmp(err.message, path, strlen(path)) == 0 && strstr(err.message, "rope_theta"),
              "message \"%s\"", err.message);

    /* A failed write names the file and creates nothing. */
    kvtc_model_shape s = {.n_layer = 1, .n_kv_head = 1, .head_dim = 4,
                          .rope_style = KVTC_ROPE_NONE};
    kvtc_cache *cache;
    CHECK_OK(kvtc_cache_create(&s, KVTC_F16, 3, 0, &cache, &err), &err);
    if (!CHECK(cache))
        return;
    snprintf(path, sizeof path, "%s/no-such-folder/out.safetensors", temp_dir());
    CHECK_STATUS(kvtc_cache_write_safetensors(cache, path, &err), KVTC_E_IO, NULL);
    CHECK(strstr(err.message, path) != NULL);
    struct stat st;
    CHECK(stat(path, &st) != 0);
    kvtc_cache_free(cache);
}

/* Allocation failures: fail the n-th allocation for every n until a run
 * succeeds; each failed run must report KVTC_E_NOMEM and free everything. */
typedef struct alloc_case {
    int op; /* load, save, write, read back what was written */
    const kvtc_cache *cache;
    const void *file;
    size_t len;
    const char *path;
} alloc_case;

static kvtc_status alloc_op(void *arg, kvtc_error *err, bool *wrong)
{
    const alloc_case *c = arg;
    kvtc_cache *back = NULL;
    void *saved = NULL;
    size_t saved_len = 0;
    kvtc_status st;
    if (c->op == 0)
        st = kvtc_cache_load_safetensors(c->file, c->len, &back, err);
    else if (c->op == 1)
        st = kvtc_cache_save_safetensors(c->cache, &saved, &saved_len, err);
    else if (c->op == 2)
        st = kvtc_cache_write_safetensors(c->cache, c->path, err);
    else
        st = kvtc_cache_read_safetensors(c->path, &back, err);
    if (st == KVTC_OK)
        *wrong = back ? !test_caches_equal(back, c->cache)
                      : saved && !test_bytes_equal(saved, saved_len, c->file, c->len);
    kvtc_cache_free(back);
    kvtc_buffer_free(saved);
    return st;
}

static void test_allocation_failures(void)
{
    kvtc_model_shape shape = {.n_layer = 2, .n_kv_head = 1, .head_dim = 4,
                              .rope_style = KVTC_ROPE_INTERLEAVED, .rope_theta = 10000};
    kvtc_cache *c = make_random_cache(&shape, KVTC_F16, 6, 0, 2, 5);
    void *file = NULL;
    size_t len = 0;
    kvtc_error err;
    char path[4096];
    if (CHECK(c) && CHECK_OK(kvtc_cache_save_safetensors(c, &file, &len, &err), &err) &&
        CHECK(temp_path(path, sizeof path, "alloc.safetensors"))) {
        static const char *const names[] = {"safetensors load", "safetensors save",
                                            "safetensors write", "safetensors read"};
        for (int op = 0; op < 4; op++) {
            alloc_case ac = {op, c, file, len, path};
            test_alloc_sweep(names[op], alloc_op, &ac, 0);
        }
    }
    kvtc_buffer_free(file);
    kvtc_cache_free(c);
}

int main(void)
{
    test_alloc_install(); /* before any other kvtc call */
    test_round_trips();
    test_hand_written();
    test_hostile();
    test_mutations();
    test_files();
    test_allocation_failures();
    return test_summary("test_safetensors");
}
