/* Writes the seed corpora of the fuzz targets: small valid files made by the
 * project's own writers (and, for GGUF and llama2.c, by the few lines below),
 * each checked to load before it is written.
 *
 *   make_seeds DIR   ->  DIR/{kvtc,kvtcal,safetensors,gguf,llama2c,compress,llama_state}/seed-*
 */
#include "fuzz_common.h"

#include "gguf_builder.h"
#include "kvtc_internal.h"
#include "llama2c.h"
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *g_dir;
static int g_failed;

static void fail(const char *what, const kvtc_error *err)
{
    fprintf(stderr, "make_seeds: %s%s%s\n", what, err ? ": " : "", err ? err->message : "");
    g_failed = 1;
}

static void write_seed(const char *corpus, const char *name, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", g_dir, corpus);
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
        fail(path, NULL);
        return;
    }
    snprintf(path, sizeof path, "%s/%s/%s", g_dir, corpus, name);
    kvtc_error err;
    if (kvtc_write_file_atomic(path, data, len, &err) != KVTC_OK)
        fail("cannot write a seed", &err);
}

/* The loader of a corpus ("kvtcal", "safetensors", "gguf", "llama2c") on a seed. */
static kvtc_status seed_loads(const char *corpus, const void *data, size_t len, kvtc_error *err)
{
    kvtc_calibration *cal = NULL;
    kvtc_cache *cache = NULL;
    kvtc_gguf_file *gguf = NULL;
    llama2c_file *l2c = NULL;
    kvtc_status st = !strcmp(corpus, "kvtcal")        ? kvtc_calibration_load(data, len, &cal, err)
                     : !strcmp(corpus, "safetensors") ? kvtc_cache_load_safetensors(data, len,
                                                                                     &cache, err)
                     : !strcmp(corpus, "gguf")        ? kvtc_gguf_load(data, len, &gguf, err)
                                                      : llama2c_load(data, len, &l2c, err);
    kvtc_calibration_free(cal);
    kvtc_cache_free(cache);
    kvtc_gguf_close(gguf);
    llama2c_close(l2c);
    return st;
}

/* Writes a seed once its fuzz target passes on it and its loader accepts it. */
static void checked_seed(const char *corpus, const char *name, const void *data, size_t len,
                         int (*target)(const uint8_t *data, size_t len))
{
    kvtc_error err;
    if (target(data, len))
        fail(name, NULL);
    else if (seed_loads(corpus, data, len, &err) != KVTC_OK)
        fail(name, &err);
    else
        write_seed(corpus, name, data, len);
}

/* A file written by hand (GGUF, llama2.c): checked_seed, then freed. */
static void hand_made_seed(const char *corpus, const char *name, kvtc_writer *w,
                           int (*target)(const uint8_t *data, size_t len))
{
    if (w->failed)
        fail(name, NULL);
    else
        checked_seed(corpus, name, w->buf, w->len, target);
    kvtc_writer_free(w);
}

/* ---- .kvtc and .kvtcal -------------------------------------------------------------- */

typedef struct stream_seed {
    const char *name;
    kvtc_dtype dtype;
    uint32_t n_tokens;
    int64_t pos0;
    double k_ratio, v_ratio;
    uint32_t block_tokens;
    uint32_t append_tokens; /* > 0: compress, then append this many more */
    float outlier; /* non-zero (F32 only): the middle token's first key feature, escaped (v2) */
    bool lm;       /* its plans must use an lm group (v2) */
} stream_seed;

static bool uses_lm(const void *data, size_t len)
{
    bool lm = false;
    for (int k = 0; k < 2; k++) {
        kvtc_plan *plan = NULL;
        if (kvtc_stream_plan(data, len, (kvtc_kind)k, &plan, NULL) != KVTC_OK)
            continue;
        for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++)
            lm |= kvtc_plan_groups(plan)[i].type >= KVTC_Q_LM1;
        kvtc_plan_free(plan);
    }
    return lm;
}

/* Writes a seed only once it decodes and passes the fuzz checks. */
static void stream_seed_check(const kvtc_calibration *cal, const char *name, const void *data,
                              size_t len)
{
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    kvtc_cache *back = NULL;
    kvtc_error err;
    if (kvtc_decompress(cal, data, len, &dopt, &back, &err) != KVTC_OK)
        fail(name, &err);
    else if (fuzz_one_kvtc(cal, data, len))
        fail(name, NULL);
    else
        write_seed("kvtc", name, data, len);
    kvtc_cache_free(back);
}

static void kvtc_seed(const kvtc_calibration *cal, const stream_seed *s, uint64_t seed)
{
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.k_ratio = s->k_ratio;
    opt.v_ratio = s->v_ratio;
    opt.block_tokens = s->block_tokens;
    kvtc_error err;
    void *out = NULL, *joined = NULL;
    size_t out_len = 0, joined_len = 0;
    kvtc_cache *c = fuzz_make_cache(s->dtype, s->n_tokens, s->pos0, seed);
    kvtc_cache *more = s->append_tokens ? fuzz_make_cache(s->dtype, s->append_tokens,
                                                          s->pos0 + s->n_tokens, seed + 1)
                                        : NULL;
    kvtc_stream_info info = {.struct_size = sizeof info};
    if (c && s->outlier != 0)
        memcpy((float *)kvtc_cache_data(c, KVTC_KEY, 0) +
                   (size_t)(s->n_tokens / 2) * kvtc_cache_shape(c)->head_dim,
               &s->outlier, sizeof s->outlier);
    if (!c || (s->append_tokens && !more))
        fail("cannot make a cache", NULL);
    else if (kvtc_compress(cal, c, &opt, &out, &out_len, &err) != KVTC_OK)
        fail(s->name, &err);
    else if (more && kvtc_append(cal, out, out_len, more, &opt, &joined, &joined_len, &err))
        fail(s->name, &err);
    else if (s->outlier != 0 && (kvtc_stream_info_get(out, out_len, &info, &err) != KVTC_OK ||
                                 info.format_version != 2))
        fail(s->name, NULL); /* the outlier must have been escaped */
    else if (s->lm && !uses_lm(out, out_len))
        fail(s->name, NULL); /* the seed is there for its lm groups */
    else
        stream_seed_check(cal, s->name, joined ? joined : out, joined ? joined_len : out_len);
    kvtc_buffer_free(out);
    kvtc_buffer_free(joined);
    kvtc_cache_free(c);
    kvtc_cache_free(more);
}

static void kvtcal_seed(const char *name, const kvtc_calibration *cal)
{
    kvtc_error err;
    void *buf = NULL;
    size_t len = 0;
    if (kvtc_calibration_save(cal, &buf, &len, &err) != KVTC_OK)
        fail(name, &err);
    else
        checked_seed("kvtcal", name, buf, len, fuzz_one_kvtcal);
    kvtc_buffer_free(buf);
}

/* A second, smaller calibration of another shape (NeoX, one layer, rank 4). */
static const kvtc_model_shape SMALL_SHAPE = {
    .n_layer = 1, .n_kv_head = 1, .head_dim = 8, .rope_style = KVTC_ROPE_NEOX,
    .rope_dims = 4, .rope_theta = 500000.0, .rope_freq_scale = 0.5,
};

static void small_calibration_seed(void)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 1;
    opt.window = 2;
    opt.rank = 4;
    opt.heldout_every = 3;
    random_series series = {&SMALL_SHAPE, KVTC_F32, 40, 0, 2, 11};
    kvtc_error err;
    kvtc_calibration *cal = NULL;
    if (test_calibrate(&SMALL_SHAPE, &opt, 1, random_series_cache, &series, &cal, &err))
        fail("small calibration", &err);
    else
        kvtcal_seed("seed-small-neox", cal);
    kvtc_calibration_free(cal);
}

/* ---- safetensors --------------------------------------------------------------------- */

static void safetensors_seed(const char *name, kvtc_cache *c, const char *model)
{
    kvtc_error err;
    void *buf = NULL;
    size_t len = 0;
    if (!c)
        fail("cannot make a cache", NULL);
    else if (model && kvtc_cache_set_model_name(c, model, &err) != KVTC_OK)
        fail(name, &err);
    else if (kvtc_cache_save_safetensors(c, &buf, &len, &err) != KVTC_OK)
        fail(name, &err);
    else
        checked_seed("safetensors", name, buf, len, fuzz_one_safetensors);
    kvtc_buffer_free(buf);
    kvtc_cache_free(c);
}

/* ---- llama.cpp sequence states ----------------------------------------------------------- */

static void llama_state_seed(const kvtc_calibration *cal, const char *name, kvtc_dtype dtype,
                             uint32_t n, int64_t pos0, bool ids, uint32_t ggsq, uint32_t v_trans)
{
    kvtc_error err;
    kvtc_cache *c = fuzz_make_cache(dtype, n, pos0, n + 17);
    kvtc_llama_layout layout;
    kvtc_llama_layout_default(&layout);
    layout.ggsq = ggsq;
    layout.v_trans = v_trans;
    int32_t tok[64];
    for (uint32_t i = 0; i < n && i < 64; i++)
        tok[i] = (int32_t)(i * 37 + 1);
    void *buf = NULL;
    size_t len = 0;
    if (!c || n > 64)
        fail("cannot make a cache", NULL);
    else if (ids && kvtc_cache_set_token_ids(c, tok, &err) != KVTC_OK)
        fail(name, &err);
    else if (kvtc_llama_state_save(c, &layout, &buf, &len, &err) != KVTC_OK)
        fail(name, &err);
    else if (fuzz_one_llama_state(cal, buf, len))
        fail(name, NULL);
    else
        write_seed("llama_state", name, buf, len);
    kvtc_buffer_free(buf);
    kvtc_cache_free(c);
}

/* ---- GGUF and llama2.c ------------------------------------------------------------------ */

static void gguf_seed(const char *name, uint32_t version, bool with_alignment,
                      const test_gguf_tensor *given, uint32_t n_tensors)
{
    static const char *tokens[] = {"<unk>", "<s>", "</s>", "hello", " world"};
    test_gguf_tensor tensors[8];
    if (n_tensors)
        memcpy(tensors, given, n_tensors * sizeof *tensors);
    uint64_t align = with_alignment ? 64 : 32;
    test_gguf_pack_offsets(tensors, n_tensors, align);
    kvtc_writer w;
    kvtc_writer_init(&w);
    test_gguf_put_header(&w, version, n_tensors, with_alignment ? 9 : 8);
    test_gguf_put_key(&w, "general.architecture", KVTC_GGUF_STRING);
    test_gguf_put_str(&w, "llama");
    test_gguf_put_key(&w, "llama.block_count", KVTC_GGUF_UINT32);
    kvtc_put_u32(&w, 1);
    test_gguf_put_key(&w, "llama.context_length", KVTC_GGUF_UINT64);
    kvtc_put_u64(&w, 128);
    test_gguf_put_key(&w, "llama.attention.head_count", KVTC_GGUF_INT32);
    kvtc_put_u32(&w, 2);
    test_gguf_put_key(&w, "llama.rope.freq_base", KVTC_GGUF_FLOAT32);
    kvtc_put_f32(&w, 10000.0f);
    test_gguf_put_key(&w, "tokenizer.ggml.add_bos_token", KVTC_GGUF_BOOL);
    kvtc_put_u8(&w, 1);
    test_gguf_put_key(&w, "tokenizer.ggml.tokens", KVTC_GGUF_ARRAY);
    test_gguf_put_array(&w, KVTC_GGUF_STRING, 5);
    for (int i = 0; i < 5; i++)
        test_gguf_put_str(&w, tokens[i]);
    test_gguf_put_key(&w, "tokenizer.ggml.scores", KVTC_GGUF_ARRAY);
    test_gguf_put_array(&w, KVTC_GGUF_FLOAT32, 5);
    for (int i = 0; i < 5; i++)
        kvtc_put_f32(&w, -(float)i);
    if (with_alignment) {
        test_gguf_put_key(&w, "general.alignment", KVTC_GGUF_UINT32);
        kvtc_put_u32(&w, 64);
    }
    test_gguf_put_tensor_infos(&w, tensors, n_tensors);
    test_gguf_put_tensor_data(&w, tensors, n_tensors, align, 0);
    hand_made_seed("gguf", name, &w, fuzz_one_gguf);
}

static void gguf_seeds(void)
{
    static const test_gguf_tensor tensors[] = {
        {"token_embd.weight", 2, {8, 5}, KVTC_GGML_F32, 0},
        {"blk.0.attn_norm.weight", 1, {8}, KVTC_GGML_F16, 0},
        {"blk.0.attn_q.weight", 2, {8, 2}, KVTC_GGML_BF16, 0},
        {"blk.0.attn_k.weight", 1, {32}, KVTC_GGML_Q4_0, 0},
        {"blk.0.ffn_down.weight", 2, {32, 2}, KVTC_GGML_Q8_0, 0},
        {"blk.0.ffn_up.weight", 1, {256}, KVTC_GGML_Q4_K, 0},
        {"blk.0.ffn_gate.weight", 1, {256}, KVTC_GGML_Q6_K, 0},
    };
    gguf_seed("seed-v3-tensors", 3, true, tensors, sizeof tensors / sizeof tensors[0]);
    gguf_seed("seed-v3-f32", 3, false, tensors, 2);
    gguf_seed("seed-v2-metadata-only", 2, false, NULL, 0);
}

static void llama2c_seed(const char *name, int32_t vocab)
{
    const int32_t dim = 8, hidden = 16, layers = 1, heads = 2, kv_heads = 1, seq = 4;
    int64_t v = vocab < 0 ? -(int64_t)vocab : vocab;
    int64_t head_dim = dim / heads, kv_dim = head_dim * kv_heads;
    int64_t floats = v * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv_dim * dim +
                                         3 * hidden * dim) +
                     dim + seq * head_dim + (vocab < 0 ? v * dim : 0);
    kvtc_writer w;
    kvtc_writer_init(&w);
    const int32_t header[7] = {dim, hidden, layers, heads, kv_heads, vocab, seq};
    for (int i = 0; i < 7; i++)
        kvtc_put_u32(&w, (uint32_t)header[i]);
    for (int64_t i = 0; i < floats; i++)
        kvtc_put_f32(&w, (float)((i * 37) % 19 - 9) / 16.0f);
    hand_made_seed("llama2c", name, &w, fuzz_one_llama2c);
}

/* ---- compress round trip ----------------------------------------------------------------- */

typedef struct compress_seed {
    const char *name;
    uint8_t head[4];   /* dtype, tokens, ratios/pos0, block tokens/seed */
    uint8_t edits[24]; /* index (2 bytes), value code; raw bits follow FUZZ_VALUE_RAW */
    size_t n_edits;    /* bytes of edits */
} compress_seed;

static void compress_seeds(const kvtc_calibration *cal)
{
    enum { NAN_CODE = FUZZ_VALUE_SPECIAL, INF_CODE = FUZZ_VALUE_SPECIAL + 2 };
    /* 40 tokens: element t * 8 of keys layer 0 head 0 is token t (t < 40). */
    static const compress_seed seeds[] = {
        {"seed-f32-plain", {0, 40, 0x05, 0x02}, {0}, 0},
        {"seed-f16-small-values", {1, 30, 0x0a, 0x05}, {8, 0, 0x10, 80, 0, 0xd0, 3, 1, 0x70}, 9},
        {"seed-bf16-short", {2, 5, 0x0f, 0x13}, {0}, 0},
        {"seed-f32-nan-sink", {0, 20, 0x05, 0x01}, {1, 0, NAN_CODE}, 3},
        {"seed-f16-inf-coded", {1, 20, 0x05, 0x02}, {80, 0, INF_CODE}, 3},
        {"seed-f32-nan-payload-window",
         {0, 12, 0x25, 0x02},
         {88, 0, FUZZ_VALUE_RAW, 0x01, 0x00, 0xc0, 0x7f},
         7},
        {"seed-f16-extremes", {1, 24, 0x06, 0x01},
         {40, 0, FUZZ_VALUE_SPECIAL + 6, 48, 0, FUZZ_VALUE_SPECIAL + 9, 56, 0, FUZZ_VALUE_SPECIAL + 20},
         9},
        {"seed-f32-huge-finite", {0, 24, 0x0a, 0x02},
         {40, 0, FUZZ_VALUE_SPECIAL + 4, 48, 0, FUZZ_VALUE_SPECIAL + 9, 57, 0, FUZZ_VALUE_SPECIAL + 20},
         9},
        {"seed-bf16-last-positions", {2, 16, 0x80, 0x03}, {0}, 0},
        {"seed-empty", {0, 0, 0, 0}, {0}, 0},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        uint8_t buf[4 + sizeof seeds[i].edits];
        memcpy(buf, seeds[i].head, 4);
        memcpy(buf + 4, seeds[i].edits, seeds[i].n_edits);
        if (fuzz_one_compress(cal, buf, 4 + seeds[i].n_edits))
            fail(seeds[i].name, NULL);
        else
            write_seed("compress", seeds[i].name, buf, 4 + seeds[i].n_edits);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    g_dir = argv[1];
    if (mkdir(g_dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_seeds: cannot create %s: %s\n", g_dir, strerror(errno));
        return 1;
    }
    kvtc_error err;
    kvtc_calibration *cal = NULL;
    if (fuzz_make_calibration(&cal, &err) != KVTC_OK) {
        fail("fuzz calibration", &err);
        return 1;
    }
    /* p = 16 features: a ratio above ~7 leaves a kind no coordinate at all. */
    static const stream_seed streams[] = {
        {"seed-f32-blocks", KVTC_F32, 40, 0, 4.0, 4.0, 8, 0, 0, false},
        {"seed-f16-mixed", KVTC_F16, 24, 0, 6.0, 2.0, 16, 0, 0, false},
        {"seed-bf16-raw-only", KVTC_BF16, 5, 0, 3.0, 3.0, 256, 0, 0, false},
        {"seed-f32-pos0", KVTC_F32, 12, 100, 5.0, 5.0, 4, 0, 0, false},
        {"seed-f16-appended", KVTC_F16, 20, 0, 4.0, 6.0, 8, 10, 0, false},
        {"seed-f32-escaped-v2", KVTC_F32, 32, 0, 4.0, 4.0, 8, 0, 1e30f, false},
        {"seed-f16-lm-v2", KVTC_F16, 40, 0, 8.0, 8.0, 8, 0, 0, true},
    };
    for (size_t i = 0; i < sizeof streams / sizeof streams[0]; i++)
        kvtc_seed(cal, &streams[i], 100 + i);
    kvtcal_seed("seed-fuzz-calibration", cal);
    small_calibration_seed();
    safetensors_seed("seed-f32", fuzz_make_cache(KVTC_F32, 10, 0, 1), NULL);
    safetensors_seed("seed-f16-named", fuzz_make_cache(KVTC_F16, 6, 7, 2), "tiny model");
    safetensors_seed("seed-bf16-neox", make_random_cache(&SMALL_SHAPE, KVTC_BF16, 3, 0, 2, 3),
                     NULL);
    safetensors_seed("seed-empty", fuzz_make_cache(KVTC_F32, 0, 0, 4), NULL);
    gguf_seeds();
    llama2c_seed("seed-shared-classifier", 5);
    llama2c_seed("seed-own-classifier", -5);
    compress_seeds(cal);
    llama_state_seed(cal, "seed-ggsq-f16-vtrans", KVTC_F16, 12, 0, true, 1, 1);
    llama_state_seed(cal, "seed-ggsq-f32-rows", KVTC_F32, 9, 3, true, 1, 0);
    llama_state_seed(cal, "seed-ggsq-bf16-no-ids", KVTC_BF16, 7, 0, false, 1, 1);
    llama_state_seed(cal, "seed-bare-f16", KVTC_F16, 10, 20, false, 0, 0);
    llama_state_seed(cal, "seed-ggsq-empty", KVTC_F16, 0, 0, false, 1, 0);
    kvtc_calibration_free(cal);
    return g_failed;
}
