/* Writes the seed corpora of the fuzz targets: small valid files made by the
 * project's own writers (and, for GGUF and llama2.c, by the few lines below),
 * each checked to load before it is written.
 *
 *   make_seeds DIR   ->  DIR/{kvtc,kvtcal,safetensors,gguf,llama2c}/seed-*
 */
#include "fuzz_common.h"

#include "gguf.h"
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

/* ---- .kvtc and .kvtcal -------------------------------------------------------------- */

typedef struct stream_seed {
    const char *name;
    kvtc_dtype dtype;
    uint32_t n_tokens;
    int64_t pos0;
    double k_ratio, v_ratio;
    uint32_t block_tokens;
    uint32_t append_tokens; /* > 0: compress, then append this many more */
} stream_seed;

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
    if (!c || (s->append_tokens && !more))
        fail("cannot make a cache", NULL);
    else if (kvtc_compress(cal, c, &opt, &out, &out_len, &err) != KVTC_OK)
        fail(s->name, &err);
    else if (more && kvtc_append(cal, out, out_len, more, &opt, &joined, &joined_len, &err))
        fail(s->name, &err);
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
    void *buf;
    size_t len;
    if (kvtc_calibration_save(cal, &buf, &len, &err) != KVTC_OK) {
        fail(name, &err);
        return;
    }
    kvtc_calibration *back = NULL;
    if (kvtc_calibration_load(buf, len, &back, &err) != KVTC_OK)
        fail(name, &err);
    else if (fuzz_one_kvtcal(buf, len))
        fail(name, NULL);
    else
        write_seed("kvtcal", name, buf, len);
    kvtc_calibration_free(back);
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
    kvtc_error err;
    kvtc_calibrator *cb = NULL;
    kvtc_calibrator_create(&SMALL_SHAPE, &opt, &cb, &err);
    kvtc_cache *c = make_random_cache(&SMALL_SHAPE, KVTC_F32, 40, 0, 2, 11);
    kvtc_calibration *cal = NULL;
    if (!cb || !c || kvtc_calibrator_add(cb, c, &err) || kvtc_calibrator_finish(cb, &cal, &err))
        fail("small calibration", &err);
    else
        kvtcal_seed("seed-small-neox", cal);
    kvtc_calibration_free(cal);
    kvtc_calibrator_free(cb);
    kvtc_cache_free(c);
}

/* ---- safetensors --------------------------------------------------------------------- */

static void safetensors_seed(const char *name, kvtc_cache *c, const char *model)
{
    kvtc_error err;
    kvtc_cache *back = NULL;
    void *buf = NULL;
    size_t len = 0;
    if (!c)
        fail("cannot make a cache", NULL);
    else if (model && kvtc_cache_set_model_name(c, model, &err) != KVTC_OK)
        fail(name, &err);
    else if (kvtc_cache_save_safetensors(c, &buf, &len, &err) != KVTC_OK)
        fail(name, &err);
    else if (kvtc_cache_load_safetensors(buf, len, &back, &err) != KVTC_OK)
        fail(name, &err);
    else if (fuzz_one_safetensors(buf, len))
        fail(name, NULL);
    else
        write_seed("safetensors", name, buf, len);
    kvtc_buffer_free(buf);
    kvtc_cache_free(back);
    kvtc_cache_free(c);
}

/* ---- GGUF ------------------------------------------------------------------------------- */

static void put_str(kvtc_writer *w, const char *s)
{
    kvtc_put_u64(w, strlen(s));
    kvtc_put_bytes(w, s, strlen(s));
}

static void put_key(kvtc_writer *w, const char *key, kvtc_gguf_value_type type)
{
    put_str(w, key);
    kvtc_put_u32(w, type);
}

typedef struct seed_tensor {
    const char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t dims[2];
} seed_tensor;

static uint64_t tensor_bytes(const seed_tensor *t)
{
    uint32_t block_elems, block_bytes;
    if (!kvtc_ggml_type_block(t->type, &block_elems, &block_bytes))
        return 0;
    uint64_t n = t->dims[0] * (t->n_dims > 1 ? t->dims[1] : 1);
    return n / block_elems * block_bytes;
}

/* Tensor data: small values that are finite in every format, including the
 * fp16 block scales of quantized types (0x3c00 = 1.0). */
static void put_tensor_data(kvtc_writer *w, const seed_tensor *t, uint64_t bytes)
{
    for (uint64_t i = 0; i < bytes; i++)
        kvtc_put_u8(w, t->type == KVTC_GGML_F32 ? (i % 4 == 3 ? 0x3f : (uint8_t)(i * 7))
                       : (i % 2 ? 0x3c : (uint8_t)(i * 13)));
}

static void kvtc_gguf_seed(const char *name, uint32_t version, bool with_alignment,
                      const seed_tensor *tensors, uint32_t n_tensors)
{
    static const char *tokens[] = {"<unk>", "<s>", "</s>", "hello", " world"};
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_put_bytes(&w, "GGUF", 4);
    kvtc_put_u32(&w, version);
    kvtc_put_u64(&w, n_tensors);
    kvtc_put_u64(&w, with_alignment ? 9 : 8);
    put_key(&w, "general.architecture", KVTC_GGUF_STRING);
    put_str(&w, "llama");
    put_key(&w, "llama.block_count", KVTC_GGUF_UINT32);
    kvtc_put_u32(&w, 1);
    put_key(&w, "llama.context_length", KVTC_GGUF_UINT64);
    kvtc_put_u64(&w, 128);
    put_key(&w, "llama.attention.head_count", KVTC_GGUF_INT32);
    kvtc_put_u32(&w, 2);
    put_key(&w, "llama.rope.freq_base", KVTC_GGUF_FLOAT32);
    kvtc_put_f32(&w, 10000.0f);
    put_key(&w, "tokenizer.ggml.add_bos_token", KVTC_GGUF_BOOL);
    kvtc_put_u8(&w, 1);
    put_key(&w, "tokenizer.ggml.tokens", KVTC_GGUF_ARRAY);
    kvtc_put_u32(&w, KVTC_GGUF_STRING);
    kvtc_put_u64(&w, 5);
    for (int i = 0; i < 5; i++)
        put_str(&w, tokens[i]);
    put_key(&w, "tokenizer.ggml.scores", KVTC_GGUF_ARRAY);
    kvtc_put_u32(&w, KVTC_GGUF_FLOAT32);
    kvtc_put_u64(&w, 5);
    for (int i = 0; i < 5; i++)
        kvtc_put_f32(&w, -(float)i);
    if (with_alignment) {
        put_key(&w, "general.alignment", KVTC_GGUF_UINT32);
        kvtc_put_u32(&w, 64);
    }
    uint64_t align = with_alignment ? 64 : 32, offset = 0;
    for (uint32_t i = 0; i < n_tensors; i++) {
        put_str(&w, tensors[i].name);
        kvtc_put_u32(&w, tensors[i].n_dims);
        for (uint32_t d = 0; d < tensors[i].n_dims; d++)
            kvtc_put_u64(&w, tensors[i].dims[d]);
        kvtc_put_u32(&w, tensors[i].type);
        kvtc_put_u64(&w, offset);
        offset = (offset + tensor_bytes(&tensors[i]) + align - 1) / align * align;
    }
    for (uint32_t i = 0; i < n_tensors; i++) {
        while (w.len % align)
            kvtc_put_u8(&w, 0);
        put_tensor_data(&w, &tensors[i], tensor_bytes(&tensors[i]));
    }
    if (w.failed || fuzz_one_gguf(w.buf, w.len))
        fail(name, NULL);
    kvtc_gguf_file *f = NULL;
    kvtc_error err;
    if (!w.failed && kvtc_gguf_load(w.buf, w.len, &f, &err) != KVTC_OK)
        fail(name, &err);
    else if (!w.failed)
        write_seed("gguf", name, w.buf, w.len);
    kvtc_gguf_close(f);
    kvtc_writer_free(&w);
}

static void kvtc_gguf_seeds(void)
{
    static const seed_tensor tensors[] = {
        {"token_embd.weight", KVTC_GGML_F32, 2, {8, 5}},
        {"blk.0.attn_norm.weight", KVTC_GGML_F16, 1, {8, 1}},
        {"blk.0.attn_q.weight", KVTC_GGML_BF16, 2, {8, 2}},
        {"blk.0.attn_k.weight", KVTC_GGML_Q4_0, 1, {32, 1}},
        {"blk.0.ffn_down.weight", KVTC_GGML_Q8_0, 2, {32, 2}},
        {"blk.0.ffn_up.weight", KVTC_GGML_Q4_K, 1, {256, 1}},
        {"blk.0.ffn_gate.weight", KVTC_GGML_Q6_K, 1, {256, 1}},
    };
    kvtc_gguf_seed("seed-v3-tensors", 3, true, tensors, sizeof tensors / sizeof tensors[0]);
    kvtc_gguf_seed("seed-v3-f32", 3, false, tensors, 2);
    kvtc_gguf_seed("seed-v2-metadata-only", 2, false, NULL, 0);
}

/* ---- llama2.c ----------------------------------------------------------------------------- */

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
    if (w.failed || fuzz_one_llama2c(w.buf, w.len))
        fail(name, NULL);
    llama2c_file *f = NULL;
    kvtc_error err;
    if (!w.failed && llama2c_load(w.buf, w.len, &f, &err) != KVTC_OK)
        fail(name, &err);
    else if (!w.failed)
        write_seed("llama2c", name, w.buf, w.len);
    llama2c_close(f);
    kvtc_writer_free(&w);
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
        {"seed-f32-blocks", KVTC_F32, 40, 0, 4.0, 4.0, 8, 0},
        {"seed-f16-mixed", KVTC_F16, 24, 0, 6.0, 2.0, 16, 0},
        {"seed-bf16-raw-only", KVTC_BF16, 5, 0, 3.0, 3.0, 256, 0},
        {"seed-f32-pos0", KVTC_F32, 12, 100, 5.0, 5.0, 4, 0},
        {"seed-f16-appended", KVTC_F16, 20, 0, 4.0, 6.0, 8, 10},
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
    kvtc_gguf_seeds();
    llama2c_seed("seed-shared-classifier", 5);
    llama2c_seed("seed-own-classifier", -5);
    kvtc_calibration_free(cal);
    return g_failed;
}
