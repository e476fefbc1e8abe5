/* GGUF reader: a small file written here parses with every value readable;
 * hostile variants of it (bad magic, every truncation, huge counts and
 * lengths, bad tensors, duplicates, random corruption, failing allocations)
 * give clean errors; the real default model parses with sane values. */
#include "gguf_builder.h"
#include "test_alloc.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the sample file ------------------------------------------------------------ */

/* Knobs that make the sample file hostile in one way each. */
typedef struct variant {
    uint32_t version;
    uint64_t n_kv_delta;        /* added to the true key/value count */
    uint64_t n_tensors_delta;
    const char *dup_key;        /* written twice */
    uint32_t alignment;         /* 0: no general.alignment key */
    const test_gguf_tensor *tensors; /* NULL: the default two */
    uint32_t n_tensors;
    uint32_t nest_depth;        /* arrays of arrays this deep (1 = plain array) */
    uint32_t data_cut;          /* bytes left off the end of the tensor data */
} variant;

static const test_gguf_tensor default_tensors[] = {
    {"weights.f32", 2, {4, 2}, KVTC_GGML_F32, 0},
    {"weights.q8", 1, {32}, KVTC_GGML_Q8_0, 64},
};

/* Writes a GGUF whose last tensor ends exactly at the end of the file. */
static void write_sample(kvtc_writer *w, const variant *v)
{
    const test_gguf_tensor *ts = v->tensors ? v->tensors : default_tensors;
    uint32_t nt = v->tensors ? v->n_tensors : 2;
    uint64_t n_kv = 9 + (v->dup_key != NULL) + (v->alignment != 0);
    kvtc_writer_init(w);
    test_gguf_put_header(w, v->version ? v->version : 3, nt + v->n_tensors_delta,
                         n_kv + v->n_kv_delta);

    test_gguf_put_key(w, "general.architecture", KVTC_GGUF_STRING);
    test_gguf_put_str(w, "llama");
    test_gguf_put_key(w, "test.u8", KVTC_GGUF_UINT8);
    kvtc_put_u8(w, 200);
    test_gguf_put_key(w, "test.i32_negative", KVTC_GGUF_INT32);
    kvtc_put_u32(w, (uint32_t)-5);
    test_gguf_put_key(w, "test.u64_big", KVTC_GGUF_UINT64);
    kvtc_put_u64(w, 1ull << 40);
    test_gguf_put_key(w, "test.f64", KVTC_GGUF_FLOAT64);
    kvtc_put_f64(w, 0.25);
    test_gguf_put_key(w, "test.flag", KVTC_GGUF_BOOL);
    kvtc_put_u8(w, 1);
    test_gguf_put_key(w, "test.words", KVTC_GGUF_ARRAY);
    test_gguf_put_array(w, KVTC_GGUF_STRING, 3);
    test_gguf_put_str(w, "alpha");
    test_gguf_put_str(w, "");
    test_gguf_put_str(w, "gamma delta");
    test_gguf_put_key(w, "test.ints", KVTC_GGUF_ARRAY);
    test_gguf_put_array(w, KVTC_GGUF_INT32, 3);
    for (int i = 0; i < 3; i++)
        kvtc_put_u32(w, (uint32_t)(i * 10 - 10));
    /* Arrays of arrays: [[1, 2]] nested nest_depth deep; the innermost holds strings. */
    test_gguf_put_key(w, "test.nested", KVTC_GGUF_ARRAY);
    uint32_t depth = v->nest_depth ? v->nest_depth : 2;
    for (uint32_t d = 1; d < depth; d++)
        test_gguf_put_array(w, KVTC_GGUF_ARRAY, 1);
    test_gguf_put_array(w, KVTC_GGUF_STRING, 2);
    test_gguf_put_str(w, "x");
    test_gguf_put_str(w, "yz");
    if (v->dup_key) {
        test_gguf_put_key(w, v->dup_key, KVTC_GGUF_UINT8);
        kvtc_put_u8(w, 1);
    }
    if (v->alignment) {
        test_gguf_put_key(w, "general.alignment", KVTC_GGUF_UINT32);
        kvtc_put_u32(w, v->alignment);
    }
    test_gguf_put_tensor_infos(w, ts, nt);
    uint32_t align = v->alignment && !(v->alignment & (v->alignment - 1)) ? v->alignment : 32;
    test_gguf_put_tensor_data(w, ts, nt, align, v->data_cut);
}

/* Loads a hostile variant: must fail with `want` and a message containing `needle`. */
static void expect_rejected(const char *what, const void *buf, size_t len, kvtc_status want,
                            const char *needle)
{
    kvtc_gguf_file *f = NULL;
    kvtc_error err = {0};
    kvtc_status st = kvtc_gguf_load(buf, len, &f, &err);
    CHECK_MSG(st == want, "%s: status %s, want %s (%s)", what, kvtc_status_string(st),
              kvtc_status_string(want), err.message);
    CHECK_MSG(f == NULL, "%s: output set on failure", what);
    CHECK_MSG(strstr(err.message, needle) != NULL, "%s: message '%s' lacks '%s'", what,
              err.message, needle);
    kvtc_gguf_close(f);
}

static void expect_variant_rejected(const char *what, const variant *v, kvtc_status want,
                                    const char *needle)
{
    kvtc_writer w;
    write_sample(&w, v);
    expect_rejected(what, w.buf, w.len, want, needle);
    kvtc_writer_free(&w);
}

/* ---- the valid sample ------------------------------------------------------------ */

static void test_sample(void)
{
    kvtc_writer w;
    write_sample(&w, &(variant){0});
    kvtc_gguf_file *f = NULL;
    kvtc_error err = {0};
    if (!CHECK_OK(kvtc_gguf_load(w.buf, w.len, &f, &err), &err)) {
        kvtc_writer_free(&w);
        return;
    }
    CHECK_EQ(kvtc_gguf_version(f), 3);
    CHECK_EQ(kvtc_gguf_alignment(f), 32);
    const char *s;
    size_t n;
    CHECK(kvtc_gguf_get_str(f, "general.architecture", &s, &n) && n == 5 && !memcmp(s, "llama", 5));
    uint32_t u;
    CHECK(kvtc_gguf_get_u32(f, "test.u8", &u) && u == 200);
    CHECK(!kvtc_gguf_get_u32(f, "test.i32_negative", &u));
    CHECK(!kvtc_gguf_get_u32(f, "test.u64_big", &u));
    CHECK(!kvtc_gguf_get_u32(f, "general.architecture", &u));
    CHECK(!kvtc_gguf_get_u32(f, "no.such.key", &u));
    float x;
    CHECK(kvtc_gguf_get_f32(f, "test.f64", &x) && x == 0.25f);
    CHECK(!kvtc_gguf_get_f32(f, "test.u8", &x));
    bool b = false;
    CHECK(kvtc_gguf_get_bool(f, "test.flag", &b) && b);
    CHECK(kvtc_gguf_has_key(f, "test.nested") && !kvtc_gguf_has_key(f, "test"));

    kvtc_gguf_value_type et;
    uint64_t count;
    CHECK(kvtc_gguf_get_arr_info(f, "test.words", &et, &count) && et == KVTC_GGUF_STRING &&
          count == 3);
    CHECK(kvtc_gguf_get_arr_str(f, "test.words", 2, &s, &n) && n == 11 && !memcmp(s, "gamma delta", 11));
    CHECK(kvtc_gguf_get_arr_str(f, "test.words", 1, &s, &n) && n == 0);
    CHECK(!kvtc_gguf_get_arr_str(f, "test.words", 3, &s, &n));
    const void *data;
    CHECK(!kvtc_gguf_get_arr_data(f, "test.words", &data));
    CHECK(kvtc_gguf_get_arr_data(f, "test.ints", &data) &&
          !memcmp((const char *)data + 8, "\x0a\0\0\0", 4)); /* third element: 10 */
    CHECK(kvtc_gguf_get_arr_info(f, "test.nested", &et, &count) && et == KVTC_GGUF_ARRAY && count == 1);

    CHECK_EQ(kvtc_gguf_tensor_count(f), 2);
    const kvtc_gguf_tensor *t = kvtc_gguf_find_tensor(f, "weights.q8");
    if (CHECK(t != NULL)) {
        CHECK_EQ(t->type, KVTC_GGML_Q8_0);
        CHECK_EQ(t->n_elements, 32);
        CHECK_EQ(t->n_bytes, 34);
        CHECK(t->data == (const unsigned char *)w.buf + w.len - 34);
    }
    t = kvtc_gguf_tensor_at(f, 0);
    if (CHECK(t != NULL)) {
        CHECK(strcmp(t->name, "weights.f32") == 0);
        CHECK(t->n_dims == 2 && t->dims[0] == 4 && t->dims[1] == 2 && t->dims[2] == 1);
        CHECK_EQ(t->n_bytes, 32);
    }
    CHECK(kvtc_gguf_tensor_at(f, 2) == NULL);
    CHECK(kvtc_gguf_find_tensor(f, "weights") == NULL);
    kvtc_gguf_close(f);

    /* Every proper prefix of the file is rejected cleanly. */
    for (size_t len = 0; len < w.len; len++) {
        kvtc_status st = kvtc_gguf_load(w.buf, len, &f, &err);
        bool clean = st == KVTC_E_TRUNCATED ||
                     (st == KVTC_E_FORMAT && strstr(err.message, "out of bounds"));
        CHECK_MSG(clean, "prefix of %zu bytes: %s (%s)", len, kvtc_status_string(st),
                  err.message);
        if (st == KVTC_OK)
            kvtc_gguf_close(f);
    }
    kvtc_writer_free(&w);

    /* Version 2 has the same layout. */
    write_sample(&w, &(variant){.version = 2});
    CHECK_OK(kvtc_gguf_load(w.buf, w.len, &f, &err), &err);
    kvtc_gguf_close(f);
    kvtc_writer_free(&w);
}

/* ---- hostile files ------------------------------------------------------------------ */

static void test_hostile(void)
{
    kvtc_writer w;
    write_sample(&w, &(variant){0});
    unsigned char *buf = malloc(w.len);
    if (!buf)
        return;

    memcpy(buf, w.buf, w.len);
    buf[0] = 'X';
    expect_rejected("bad magic", buf, w.len, KVTC_E_FORMAT, "bad magic");
    expect_variant_rejected("version 1", &(variant){.version = 1}, KVTC_E_VERSION, "version 1");
    expect_variant_rejected("huge key/value count", &(variant){.n_kv_delta = 1ull << 60},
                            KVTC_E_TRUNCATED, "key/value");
    expect_variant_rejected("huge tensor count", &(variant){.n_tensors_delta = UINT64_MAX - 2},
                            KVTC_E_TRUNCATED, "tensor table");

    /* The first key's length (bytes 24..31) claims nearly 2^64 bytes. */
    memcpy(buf, w.buf, w.len);
    memset(buf + 24, 0xff, 8);
    expect_rejected("huge key length", buf, w.len, KVTC_E_TRUNCATED, "truncated");
    /* The architecture string's length: right after the key and its type. */
    size_t at = 24 + 8 + strlen("general.architecture") + 4;
    memcpy(buf, w.buf, w.len);
    memset(buf + at, 0xee, 8);
    expect_rejected("huge string length", buf, w.len, KVTC_E_TRUNCATED, "general.architecture");
    memcpy(buf, w.buf, w.len);
    buf[24 + 8 + 3] = 0;
    expect_rejected("NUL in a key", buf, w.len, KVTC_E_FORMAT, "NUL byte");
    memcpy(buf, w.buf, w.len);
    buf[at - 4] = 13;
    expect_rejected("unknown value type", buf, w.len, KVTC_E_FORMAT, "unknown value type 13");

    /* The string array's count. */
    const char *words = "test.words";
    size_t key_at = 0;
    while (key_at + strlen(words) <= w.len && memcmp(w.buf + key_at, words, strlen(words)))
        key_at++;
    if (CHECK(key_at + strlen(words) <= w.len)) {
        size_t count_at = key_at + strlen(words) + 4 + 4;
        memcpy(buf, w.buf, w.len);
        memset(buf + count_at, 0x7f, 8);
        expect_rejected("huge array count", buf, w.len, KVTC_E_TRUNCATED, "test.words");
        memcpy(buf, w.buf, w.len);
        buf[count_at - 4] = 77;
        expect_rejected("unknown element type", buf, w.len, KVTC_E_FORMAT, "element type 77");
    }
    free(buf);
    kvtc_writer_free(&w);

    expect_variant_rejected("duplicate key", &(variant){.dup_key = "test.flag"}, KVTC_E_FORMAT,
                            "duplicate key 'test.flag'");
    expect_variant_rejected("alignment 24", &(variant){.alignment = 24}, KVTC_E_FORMAT,
                            "power of two");
    expect_variant_rejected("nested 6 deep", &(variant){.nest_depth = 6}, KVTC_E_FORMAT,
                            "nested too deep");

    /* Tensor tables, one flaw each. */
    struct {
        const char *what;
        test_gguf_tensor t[2];
        uint32_t n, data_cut;
        kvtc_status want;
        const char *needle;
    } cases[] = {
        {"unknown type", {{"w", 1, {32}, 4, 0}}, 1, 0, KVTC_E_UNSUPPORTED,
         "unknown tensor type 4 for 'w'"},
        {"out of bounds", {{"w", 1, {32}, KVTC_GGML_Q8_0, 0}, {"big", 1, {64}, KVTC_GGML_F32, 64}},
         2, 1, KVTC_E_FORMAT, "tensor 'big' out of bounds"},
        {"offset past the end",
         {{"far", 1, {8}, KVTC_GGML_F32, UINT64_MAX - 31}, {"w", 1, {8}, KVTC_GGML_F32, 0}}, 2, 0,
         KVTC_E_FORMAT, "tensor 'far' out of bounds"},
        {"misaligned", {{"w", 1, {8}, KVTC_GGML_F32, 4}}, 1, 0, KVTC_E_FORMAT, "not aligned"},
        {"0 dims", {{"w", 0, {8}, KVTC_GGML_F32, 0}}, 1, 0, KVTC_E_FORMAT, "0 dimensions"},
        {"5 dims", {{"w", 5, {1, 1, 1, 1}, KVTC_GGML_F32, 0}}, 1, 0, KVTC_E_FORMAT, "5 dimensions"},
        {"zero dim", {{"w", 2, {8, 0}, KVTC_GGML_F32, 0}}, 1, 0, KVTC_E_FORMAT, "bad dimension 1"},
        {"dims overflow", {{"w", 3, {1ull << 32, 1ull << 32, 4}, KVTC_GGML_F32, 0}}, 1, 0,
         KVTC_E_FORMAT, "bad dimension 1"},
        {"bytes overflow", {{"w", 2, {1ull << 31, 1ull << 31}, KVTC_GGML_F32, 0}}, 1, 0,
         KVTC_E_FORMAT, "too large"},
        {"partial block", {{"w", 2, {16, 2}, KVTC_GGML_Q4_1, 0}}, 1, 0, KVTC_E_FORMAT,
         "not a multiple of the q4_1 block size 32"},
        {"duplicate tensor", {{"w", 1, {8}, KVTC_GGML_F32, 0}, {"w", 1, {8}, KVTC_GGML_F32, 32}},
         2, 0, KVTC_E_FORMAT, "duplicate tensor 'w'"},
        {"empty name", {{"", 1, {8}, KVTC_GGML_F32, 0}}, 1, 0, KVTC_E_FORMAT, "bad length"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_variant_rejected(cases[i].what,
                                &(variant){.tensors = cases[i].t, .n_tensors = cases[i].n,
                                           .data_cut = cases[i].data_cut},
                                cases[i].want, cases[i].needle);
}

/* Random byte corruption: any outcome but a crash (the sanitizer build checks
 * the memory accesses); a file that loads must have its tensors in bounds. */
static void test_corruption(void)
{
    kvtc_writer w;
    write_sample(&w, &(variant){.alignment = 64});
    unsigned char *buf = malloc(w.len);
    test_rng r;
    rng_seed(&r, 12345);
    int loaded = 0;
    for (int iter = 0; buf && iter < 20000; iter++) {
        memcpy(buf, w.buf, w.len);
        int flips = 1 + (int)rng_below(&r, 4);
        for (int k = 0; k < flips; k++)
            buf[rng_below(&r, (uint32_t)w.len)] = (unsigned char)rng_u64(&r);
        kvtc_gguf_file *f = NULL;
        if (kvtc_gguf_load(buf, w.len, &f, NULL) == KVTC_OK) {
            loaded++;
            for (uint64_t i = 0; i < kvtc_gguf_tensor_count(f); i++) {
                const kvtc_gguf_tensor *t = kvtc_gguf_tensor_at(f, i);
                const unsigned char *d = t->data;
                CHECK(d >= buf && d + t->n_bytes <= buf + w.len);
            }
            const char *s;
            size_t n;
            if (kvtc_gguf_get_arr_str(f, "test.words", 0, &s, &n))
                CHECK((const unsigned char *)s + n <= buf + w.len);
            kvtc_gguf_close(f);
        }
    }
    CHECK(loaded > 0); /* flips inside tensor data are harmless */
    free(buf);
    kvtc_writer_free(&w);
}

/* Allocation failures at every point, each later one failing too: NOMEM and
 * nothing leaked. */
static kvtc_status alloc_load(void *arg, kvtc_error *err, bool *wrong)
{
    const kvtc_writer *w = arg;
    kvtc_gguf_file *f = NULL;
    kvtc_status st = kvtc_gguf_load(w->buf, w->len, &f, err);
    *wrong = st == KVTC_OK && kvtc_gguf_tensor_count(f) != 2;
    kvtc_gguf_close(f);
    return st;
}

static void test_alloc_failures(void)
{
    kvtc_writer w;
    write_sample(&w, &(variant){0});
    test_alloc_sweep("kvtc_gguf_load", alloc_load, &w, TEST_ALLOC_STICKY);
    kvtc_writer_free(&w);
}

/* ---- the real model -------------------------------------------------------------------- */

static void test_model(const char *path)
{
    kvtc_gguf_file *f = NULL;
    kvtc_error err = {0};
    if (!CHECK_OK(kvtc_gguf_open(path, &f, &err), &err))
        return;
    const char *s;
    size_t n;
    CHECK(kvtc_gguf_get_str(f, "general.architecture", &s, &n) && n == 5 && !memcmp(s, "llama", 5));
    uint32_t blocks = 0, heads = 0, kv_heads = 0, embd = 0;
    CHECK(kvtc_gguf_get_u32(f, "llama.block_count", &blocks) && blocks == 30);
    CHECK(kvtc_gguf_get_u32(f, "llama.attention.head_count", &heads) && heads == 9);
    CHECK(kvtc_gguf_get_u32(f, "llama.attention.head_count_kv", &kv_heads) && kv_heads == 3);
    CHECK(kvtc_gguf_get_u32(f, "llama.embedding_length", &embd) && embd == 576);
    float base = 0;
    CHECK(kvtc_gguf_get_f32(f, "llama.rope.freq_base", &base) && base == 100000.0f);
    kvtc_gguf_value_type et;
    uint64_t vocab = 0;
    CHECK(kvtc_gguf_get_arr_info(f, "tokenizer.ggml.tokens", &et, &vocab) && et == KVTC_GGUF_STRING &&
          vocab == 49152);
    CHECK(kvtc_gguf_get_arr_str(f, "tokenizer.ggml.tokens", 1, &s, &n) && n == 12 &&
          !memcmp(s, "<|im_start|>", 12));
    CHECK(kvtc_gguf_get_arr_str(f, "tokenizer.ggml.merges", 0, &s, &n) && n == 4 &&
          !memcmp(s, "\xc4\xa0 t", 4));

    /* 9 tensors per block plus token_embd and output_norm (embeddings are tied). */
    CHECK_EQ(kvtc_gguf_tensor_count(f), 9 * blocks + 2);
    uint64_t total = 0;
    for (uint64_t i = 0; i < kvtc_gguf_tensor_count(f); i++) {
        const kvtc_gguf_tensor *t = kvtc_gguf_tensor_at(f, i);
        CHECK_MSG(t->type == KVTC_GGML_F32 || t->type == KVTC_GGML_Q4_1 ||
                      t->type == KVTC_GGML_Q8_0,
                  "tensor %s has type %s", t->name, kvtc_ggml_type_name(t->type));
        CHECK(kvtc_gguf_find_tensor(f, t->name) == t);
        total += t->n_elements;
    }
    CHECK_MSG(total > 130000000 && total < 140000000, "%llu parameters", (unsigned long long)total);
    const kvtc_gguf_tensor *e = kvtc_gguf_find_tensor(f, "token_embd.weight");
    CHECK(e && e->dims[0] == embd && e->dims[1] == vocab);
    const kvtc_gguf_tensor *q = kvtc_gguf_find_tensor(f, "blk.29.attn_k.weight");
    CHECK(q && q->dims[0] == embd && q->dims[1] == kv_heads * 64 && q->type == KVTC_GGML_Q4_1);
    kvtc_gguf_close(f);

    CHECK_STATUS(kvtc_gguf_open("/nonexistent/model.gguf", &f, &err), KVTC_E_IO, NULL);
    CHECK(strstr(err.message, "/nonexistent/model.gguf") != NULL);
}

int main(void)
{
    test_alloc_install(); /* before any other kvtc call */
    CHECK(kvtc_ggml_type_block(KVTC_GGML_Q4_K, NULL, NULL) && !kvtc_ggml_type_block(4, NULL, NULL));
    CHECK(strcmp(kvtc_ggml_type_name(KVTC_GGML_Q6_K), "q6_K") == 0);
    test_sample();
    test_hostile();
    test_corruption();
    test_alloc_failures();
    char path[4096];
    if (!CHECK(test_model_cache_path(path, sizeof path, "SmolLM2-135M-Instruct.Q4_1.gguf")))
        return test_summary("test_gguf");
    if (!test_input_present("test_gguf", "the default model's checks", path,
                            "make test fetches it"))
        test_skip("test_gguf", "the default model is absent; the synthetic checks passed");
    test_model(path);
    return test_summary("test_gguf");
}
