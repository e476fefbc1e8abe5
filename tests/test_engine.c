/* The reference engine against an independent numpy implementation
 * (tests/data/engine_fixtures.txt, from scripts/make_engine_fixtures.py):
 * logits of the last prompt position and 32-token greedy continuations, for
 * the default model, stories260K, a tiny random qwen2 model and
 * Qwen2.5-Coder-0.5B (tests/data/engine_fixtures_qwen2.txt). Then: the
 * models' NLL on ordinary English, KV-cache export -> import (whole,
 * through safetensors, and layer by layer) continuing with bit-identical
 * logits, and the session's refusals of bad input. */
#include "default_model.h"
#include "kvtc_internal.h"
#include "session.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "test_engine"
#define MAX_IDS 512
#define LOGIT_TOL 1e-4 /* max |ours - reference| / max |reference| over the top logits */

typedef struct fixture {
    uint32_t n_prompt, n_top, n_greedy;
    int32_t prompt[MAX_IDS];
    int32_t top_id[16];
    double top_logit[16];
    int32_t greedy[64];
} fixture;

#define FIXTURES "tests/data/engine_fixtures.txt"
#define QWEN2_FIXTURES "tests/data/engine_fixtures_qwen2.txt"
#define QWEN2_05B_FILE "Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf"

/* Reads the records of `model_file` from the fixture file `rel` (in the
 * source tree); returns how many. */
static size_t read_fixtures(const char *rel, const char *model_file, fixture *out, size_t cap)
{
    char path[1024];
    if (!CHECK(test_source_path(path, sizeof path, rel)))
        return 0;
    FILE *f = fopen(path, "r");
    if (!CHECK_MSG(f != NULL, "cannot open %s", path))
        return 0;
    static char line[16384];
    size_t n = 0;
    bool ours = false;
    while (fgets(line, sizeof line, f)) {
        char *save, *word = strtok_r(line, " \n", &save);
        if (!word || word[0] == '#')
            continue;
        if (strcmp(word, "model") == 0) {
            char *name = strtok_r(NULL, " \n", &save);
            ours = name && strcmp(name, model_file) == 0;
            continue;
        }
        if (!ours)
            continue;
        if (strcmp(word, "prompt") == 0) {
            if (n == cap)
                break;
            memset(&out[n], 0, sizeof out[n]);
            n++;
        }
        if (n == 0)
            continue;
        fixture *fx = &out[n - 1];
        uint32_t count = (uint32_t)strtoul(strtok_r(NULL, " \n", &save), NULL, 10);
        for (uint32_t i = 0; i < count; i++) {
            char *item = strtok_r(NULL, " \n", &save);
            if (!item)
                break;
            if (strcmp(word, "prompt") == 0 && i < MAX_IDS)
                fx->prompt[fx->n_prompt++] = (int32_t)strtol(item, NULL, 10);
            else if (strcmp(word, "top") == 0 && i < 16) {
                fx->top_id[i] = (int32_t)strtol(item, &item, 10);
                fx->top_logit[i] = strtod(item + 1, NULL);
                fx->n_top++;
            } else if (strcmp(word, "greedy") == 0 && i < 64)
                fx->greedy[fx->n_greedy++] = (int32_t)strtol(item, NULL, 10);
        }
    }
    fclose(f);
    CHECK_MSG(n > 0, "no fixtures for %s in %s", model_file, path);
    return n;
}

/* Prompt logits and greedy continuation of each fixture. */
/* The same logits from a decode step (the fused matvec path): the prompt
 * but its last token as a prefill, then that token alone. */
static void check_decode_logits(const model *m, const fixture *fx, uint32_t threads,
                                const char *model_file, size_t k)
{
    uint32_t vocab = m->cfg.vocab_size;
    float *logits = malloc(vocab * sizeof(float));
    session *s = NULL;
    kvtc_error err;
    if (fx->n_prompt >= 2 && logits &&
        CHECK_OK(session_create(m, fx->n_prompt, threads, &s, &err), &err) &&
        CHECK_OK(session_forward(s, fx->prompt, fx->n_prompt - 1, NULL, false, &err), &err) &&
        CHECK_OK(session_forward(s, fx->prompt + fx->n_prompt - 1, 1, logits, false, &err),
                 &err)) {
        double scale = 0, worst = 0;
        for (uint32_t i = 0; i < fx->n_top; i++) {
            scale = fmax(scale, fabs(fx->top_logit[i]));
            worst = fmax(worst, fabs(logits[fx->top_id[i]] - fx->top_logit[i]));
        }
        CHECK_MSG(worst <= LOGIT_TOL * scale,
                  "%s prompt %zu, last token decoded: logits differ from the reference by %.3g "
                  "(max allowed %.3g)", model_file, k, worst, LOGIT_TOL * scale);
        printf("%s prompt %zu, last token decoded: max logit error %.2e of %.1f\n", model_file,
               k, worst, scale);
    }
    session_free(s);
    free(logits);
}

static void check_fixtures(const model *m, const char *rel, const char *model_file,
                           uint32_t threads)
{
    static fixture fx[8];
    size_t n = read_fixtures(rel, model_file, fx, 8);
    uint32_t vocab = m->cfg.vocab_size;
    float *logits = malloc(vocab * sizeof(float));
    for (size_t k = 0; k < n && logits; k++) {
        session *s;
        kvtc_error err;
        if (!CHECK_OK(session_create(m, fx[k].n_prompt + fx[k].n_greedy, threads, &s, &err),
                      &err))
            break;
        CHECK_OK(session_forward(s, fx[k].prompt, fx[k].n_prompt, logits, false, &err), &err);
        double scale = 0, worst = 0;
        for (uint32_t i = 0; i < fx[k].n_top; i++) {
            scale = fmax(scale, fabs(fx[k].top_logit[i]));
            worst = fmax(worst, fabs(logits[fx[k].top_id[i]] - fx[k].top_logit[i]));
        }
        CHECK_MSG(worst <= LOGIT_TOL * scale,
                  "%s prompt %zu: logits differ from the reference by %.3g (max allowed %.3g)",
                  model_file, k, worst, LOGIT_TOL * scale);
        printf("%s prompt %zu (%u tokens): max logit error %.2e of %.1f\n", model_file, k,
               fx[k].n_prompt, worst, scale);
        check_decode_logits(m, &fx[k], threads, model_file, k);
        for (uint32_t i = 0; i < fx[k].n_greedy; i++) {
            int32_t next = logits_argmax(logits, vocab);
            if (!CHECK_MSG(next == fx[k].greedy[i],
                           "%s prompt %zu: greedy token %u is %d, reference %d", model_file, k,
                           i, next, fx[k].greedy[i]))
                break;
            if (!CHECK_OK(session_forward(s, &next, 1, logits, false, &err), &err))
                break;
        }
        session_free(s);
    }
    free(logits);
}

/* Mean negative log-likelihood (nats/token) of ids[1..n) given their prefix. */
static double mean_nll(const model *m, const int32_t *ids, uint32_t n, uint32_t threads)
{
    uint32_t vocab = m->cfg.vocab_size;
    float *logits = malloc((size_t)n * vocab * sizeof(float));
    session *s = NULL;
    kvtc_error err;
    double nll = NAN;
    if (logits && CHECK_OK(session_create(m, n, threads, &s, &err), &err) &&
        CHECK_OK(session_forward(s, ids, n, logits, true, &err), &err)) {
        double sum = 0;
        for (uint32_t t = 0; t + 1 < n; t++) {
            const float *row = logits + (size_t)t * vocab;
            double max = row[logits_argmax(row, vocab)], z = 0;
            for (uint32_t i = 0; i < vocab; i++)
                z += exp(row[i] - max);
            sum += max + log(z) - row[ids[t + 1]];
        }
        nll = sum / (n - 1);
    }
    session_free(s);
    free(logits);
    return nll;
}

/* Mean NLL on the first max_tokens (at least 256) tokens of a license text. */
static void check_nll(const model *m, const tokenizer *tok, uint32_t max_tokens)
{
    const char *path = "/usr/share/common-licenses/GPL-3";
    void *text;
    size_t len, n;
    int32_t *ids;
    kvtc_error err;
    if (!test_input_present(NAME, "the NLL check", path, "package base-files"))
        return;
    if (!CHECK_OK(kvtc_read_file(path, &text, &len, &err), &err))
        return;
    if (CHECK_OK(tokenizer_encode(tok, text, len, false, &ids, &n, &err), &err)) {
        uint32_t use = n < max_tokens ? (uint32_t)n : max_tokens;
        double nll = mean_nll(m, ids, use, 2);
        printf("mean NLL on the first %u tokens of %s: %.3f nats/token (uniform: %.2f)\n", use,
               path, nll, log(m->cfg.vocab_size));
        CHECK_MSG(use >= 256, "only %u tokens", use);
        CHECK_MSG(nll < 4.0, "mean NLL %.3f nats/token, want < 4", nll);
        kvtc_free(ids);
    }
    kvtc_buffer_free(text);
}

/* Runs `cont` on a session and returns all its logits (caller frees). */
static float *continue_with(session *s, const int32_t *cont, uint32_t n_cont)
{
    uint32_t vocab = session_model(s)->cfg.vocab_size;
    float *logits = malloc((size_t)(n_cont + 2) * vocab * sizeof(float));
    kvtc_error err;
    if (!logits)
        return NULL;
    /* a batch, then two single-token decode steps */
    if (!CHECK_OK(session_forward(s, cont, n_cont, logits, true, &err), &err) ||
        !CHECK_OK(session_forward(s, &cont[0], 1, logits + (size_t)n_cont * vocab, false, &err),
                  &err) ||
        !CHECK_OK(session_forward(s, &cont[1], 1, logits + (size_t)(n_cont + 1) * vocab, false,
                                  &err), &err)) {
        free(logits);
        return NULL;
    }
    return logits;
}

/* A cache may start at a later position (a window of a longer sequence):
 * the session takes its pos0, and exports the same bits back. */
static void check_moved_window(session *s, const kvtc_cache *c)
{
    kvtc_error err;
    kvtc_cache *moved;
    CHECK_OK(kvtc_cache_create(kvtc_cache_shape(c), KVTC_F32, kvtc_cache_tokens(c), 7, &moved, &err), &err);
    kvtc_cache *back = NULL;
    if (!CHECK(moved != NULL))
        return;
    kvtc_cache_copy_tokens(moved, 0, c, 0, kvtc_cache_tokens(c));
    if (CHECK_OK(session_import_cache(s, moved, &err), &err) &&
        CHECK_OK(session_export_cache(s, KVTC_F32, &back, &err), &err)) {
        CHECK_EQ(session_pos0(s), 7);
        CHECK_EQ(kvtc_cache_pos0(back), 7);
        size_t layer = (size_t)kvtc_cache_tokens(c) * kvtc_shape_features(kvtc_cache_shape(c)) /
                       kvtc_cache_shape(c)->n_layer * sizeof(float);
        uint32_t last = kvtc_cache_shape(c)->n_layer - 1;
        CHECK(memcmp(kvtc_cache_data_const(back, KVTC_KEY, last),
                     kvtc_cache_data_const(c, KVTC_KEY, last), layer) == 0);
        int32_t tok = 1;
        CHECK_OK(session_forward(s, &tok, 1, NULL, false, &err), &err);
    }
    kvtc_cache_free(back);
    kvtc_cache_free(moved);
}

/* A cache exported after `prefix` and imported into fresh sessions (directly,
 * through safetensors bytes, and layer by layer) continues with exactly the
 * logits of the session that never stopped. */
static void check_export_import(const model *m, const int32_t *ids, uint32_t n_prefix,
                                uint32_t n_cont, uint32_t threads)
{
    uint32_t cap = n_prefix + n_cont + 2, vocab = m->cfg.vocab_size;
    size_t n_logits = (size_t)(n_cont + 2) * vocab;
    session *orig, *copy[3] = {NULL, NULL, NULL};
    kvtc_cache *cache = NULL, *loaded = NULL;
    void *bytes = NULL;
    size_t n_bytes;
    kvtc_error err;
    if (!CHECK_OK(session_create(m, cap, threads, &orig, &err), &err))
        return;
    CHECK_OK(session_forward(orig, ids, n_prefix, NULL, false, &err), &err);
    CHECK_OK(session_export_cache(orig, KVTC_F32, &cache, &err), &err);
    if (cache) {
        CHECK_EQ(kvtc_cache_tokens(cache), n_prefix);
        CHECK_EQ(kvtc_cache_pos0(cache), 0);
        kvtc_model_shape shape = model_kv_shape(m);
        CHECK(kvtc_shape_equal(kvtc_cache_shape(cache), &shape));
        CHECK_OK(kvtc_cache_save_safetensors(cache, &bytes, &n_bytes, &err), &err);
    }
    if (bytes)
        CHECK_OK(kvtc_cache_load_safetensors(bytes, n_bytes, &loaded, &err), &err);
    for (int i = 0; i < 3; i++)
        CHECK_OK(session_create(m, cap, threads, &copy[i], &err), &err);
    if (cache && loaded && copy[0] && copy[1] && copy[2]) {
        CHECK_OK(session_import_cache(copy[0], cache, &err), &err);
        CHECK_OK(session_import_cache(copy[1], loaded, &err), &err);
        CHECK_OK(session_begin_import(copy[2], KVTC_F32, n_prefix, 0, &err), &err);
        for (uint32_t l = 0; l < m->cfg.n_layer; l++)
            CHECK_EQ(session_import_layer(copy[2], l, kvtc_cache_data(cache, KVTC_KEY, l),
                                          kvtc_cache_data(cache, KVTC_VALUE, l)), 0);
        CHECK_OK(session_finish_import(copy[2], &err), &err);
        float *want = continue_with(orig, ids + n_prefix, n_cont);
        for (int i = 0; i < 3 && want; i++) {
            CHECK_EQ(session_n_past(copy[i]), n_prefix);
            float *got = continue_with(copy[i], ids + n_prefix, n_cont);
            CHECK_MSG(got && memcmp(got, want, n_logits * sizeof(float)) == 0,
                      "import path %d: continuation logits are not bit-identical", i);
            free(got);
        }
        free(want);
        check_moved_window(copy[0], cache);
    }
    for (int i = 0; i < 3; i++)
        session_free(copy[i]);
    session_free(orig);
    kvtc_cache_free(cache);
    kvtc_cache_free(loaded);
    kvtc_buffer_free(bytes);
}

/* Bad input is refused with a status, never run. */
static void check_refusals(const model *m)
{
    session *s;
    kvtc_error err;
    float *logits = malloc(m->cfg.vocab_size * sizeof(float));
    if (!logits || !CHECK_OK(session_create(m, 4, 1, &s, &err), &err)) {
        free(logits);
        return;
    }
    int32_t ids[5] = {1, 2, 3, 4, 5};
    int32_t bad[2] = {1, (int32_t)m->cfg.vocab_size};
    CHECK_STATUS(session_forward(s, ids, 5, logits, false, &err), KVTC_E_INVALID, NULL);
    CHECK_STATUS(session_forward(s, bad, 2, logits, false, &err), KVTC_E_INVALID, NULL);
    CHECK_EQ(session_n_past(s), 0);
    CHECK_OK(session_forward(s, ids, 4, logits, false, &err), &err);
    CHECK_STATUS(session_forward(s, ids, 1, logits, false, &err), KVTC_E_INVALID, NULL);

    /* a cache of another shape, too many tokens, layers out of order */
    kvtc_model_shape other = model_kv_shape(m);
    other.n_layer++;
    kvtc_cache *c;
    CHECK_OK(kvtc_cache_create(&other, KVTC_F16, 2, 0, &c, &err), &err);
    CHECK_STATUS(session_import_cache(s, c, &err), KVTC_E_MISMATCH, NULL);
    kvtc_cache_free(c);
    kvtc_model_shape shape = model_kv_shape(m);
    CHECK_OK(kvtc_cache_create(&shape, KVTC_F16, 5, 0, &c, &err), &err);
    CHECK_STATUS(session_import_cache(s, c, &err), KVTC_E_INVALID, NULL);
    CHECK_OK(session_begin_import(s, KVTC_F16, 2, 0, &err), &err);
    CHECK_STATUS(session_forward(s, ids, 1, logits, false, &err), KVTC_E_INVALID, NULL);
    CHECK_EQ(session_import_layer(s, 1, kvtc_cache_data(c, KVTC_KEY, 0),
                                  kvtc_cache_data(c, KVTC_VALUE, 0)), 1);
    CHECK_STATUS(session_finish_import(s, &err), KVTC_E_INVALID, NULL);
    CHECK_OK(session_begin_import(s, KVTC_F16, 2, 0, &err), &err);
    CHECK_EQ(session_import_layer(s, 0, kvtc_cache_data(c, KVTC_KEY, 0),
                                  kvtc_cache_data(c, KVTC_VALUE, 0)), 0);
    CHECK_STATUS(session_finish_import(s, &err), KVTC_E_TRUNCATED, NULL);
    CHECK_EQ(session_n_past(s), 0);
    kvtc_cache_free(c);
    session_free(s);
    free(logits);
}

static void test_stories(void)
{
    char path[1024];
    if (!CHECK(test_shared_path(path, sizeof path, "models/stories260K.bin")) ||
        !test_input_present(NAME, "the stories260K checks", path, "the shared test model"))
        return;
    model *m;
    kvtc_error err;
    if (!CHECK_OK(model_open(path, &m, NULL, &err), &err))
        return;
    check_fixtures(m, FIXTURES, "stories260K.bin", 1);
    int32_t ids[300];
    test_rng rng;
    rng_seed(&rng, 3);
    ids[0] = 1;
    for (int i = 1; i < 300; i++)
        ids[i] = (int32_t)rng_below(&rng, m->cfg.vocab_size);
    check_export_import(m, ids, 200, 40, 2);
    check_export_import(m, ids, 1, 7, 1);
    check_refusals(m);
    model_free(m);
}

/* A small random qwen2 model (scripts/make_engine_fixtures.py): NeoX RoPE,
 * Q/K/V biases and a separate output matrix. */
static void test_tiny_qwen2(void)
{
    char path[1024];
    if (!CHECK(test_source_path(path, sizeof path, "tests/data/tiny-qwen2.gguf")))
        return;
    model *m;
    kvtc_error err;
    if (!CHECK_OK(model_open(path, &m, NULL, &err), &err))
        return;
    CHECK_EQ(m->cfg.arch, MODEL_ARCH_QWEN2);
    CHECK_EQ(m->cfg.rope_style, KVTC_ROPE_NEOX);
    CHECK(m->layers[0].bqkv != NULL);
    CHECK(!m->tied);
    check_fixtures(m, FIXTURES, "tiny-qwen2.gguf", 2);
    int32_t ids[60];
    for (int i = 0; i < 60; i++)
        ids[i] = (i * 37 + 5) % 64;
    check_export_import(m, ids, 45, 12, 2);
    model_free(m);
}

/* The hyperparameters a model file must give. */
static void check_config(const model *m, const model_config *want)
{
    CHECK_EQ(m->cfg.arch, want->arch);
    CHECK_EQ(m->cfg.n_layer, want->n_layer);
    CHECK_EQ(m->cfg.n_head, want->n_head);
    CHECK_EQ(m->cfg.n_kv_head, want->n_kv_head);
    CHECK_EQ(m->cfg.head_dim, want->head_dim);
    CHECK_EQ(m->cfg.rope_style, want->rope_style);
    CHECK(m->cfg.rope_theta == want->rope_theta);
}

/* Qwen2.5-Coder-0.5B, when fetched: its hyperparameters, the reference's
 * logits and greedy continuations on prose, code and a chat prompt, its NLL,
 * and cache export -> import. */
static void test_qwen2_05b(void)
{
    char path[1024];
    if (!CHECK(test_model_cache_path(path, sizeof path, QWEN2_05B_FILE)) ||
        !test_input_present(NAME, "the Qwen2.5-Coder-0.5B checks", path,
                            "make test fetches it: kvtc fetch qwen2.5-coder-0.5b"))
        return;
    model *m;
    tokenizer *tok;
    kvtc_error err;
    if (!CHECK_OK(model_open(path, &m, &tok, &err), &err))
        return;
    model_config want = {.arch = MODEL_ARCH_QWEN2, .n_layer = 24, .n_head = 14, .n_kv_head = 2,
                         .head_dim = 64, .rope_style = KVTC_ROPE_NEOX, .rope_theta = 1e6};
    check_config(m, &want);
    CHECK(m->layers[0].bqkv != NULL && !m->tied);
    check_fixtures(m, QWEN2_FIXTURES, QWEN2_05B_FILE, 2);
    check_nll(m, tok, 256);
    static fixture fx[8];
    size_t n = read_fixtures(QWEN2_FIXTURES, QWEN2_05B_FILE, fx, 8);
    if (CHECK(n >= 3 && fx[2].n_prompt >= 130)) /* the C source: over one query chunk */
        check_export_import(m, fx[2].prompt, 110, 20, 2);
    tokenizer_free(tok);
    model_free(m);
}

int main(void)
{
    test_stories();
    test_tiny_qwen2();
    test_qwen2_05b();
    char path[1024];
    kvtc_error err;
    if (!CHECK(test_model_cache_path(path, sizeof path, DEFAULT_MODEL_FILE)))
        return test_summary(NAME);
    if (!test_input_present(NAME, "the default model's checks", path, "make test fetches it"))
        test_skip(NAME, "the default model is absent; the other checks passed");
    /* There: the application must find it where it looks, and it must load. */
    char found[1024];
    model *m;
    tokenizer *tok;
    if (!CHECK_OK(default_model_path(found, sizeof found, false, &err), &err) ||
        !CHECK_MSG(strcmp(found, path) == 0, "default_model_path gives %s, not %s", found, path) ||
        !CHECK_OK(model_open(path, &m, &tok, &err), &err))
        return test_summary(NAME);
    model_config want = {.arch = MODEL_ARCH_LLAMA, .n_layer = 30, .n_head = 9, .n_kv_head = 3,
                         .head_dim = 64, .rope_style = KVTC_ROPE_INTERLEAVED,
                         .rope_theta = 100000.0};
    check_config(m, &want);
    CHECK(m->tied && m->output.part[0].data == m->token_embd.part[0].data);
    check_fixtures(m, FIXTURES, DEFAULT_MODEL_FILE, 2);
    check_nll(m, tok, 512);
    static fixture fx[8];
    size_t n = read_fixtures(FIXTURES, DEFAULT_MODEL_FILE, fx, 8);
    if (n > 0 && fx[n - 1].n_prompt > 150)
        check_export_import(m, fx[n - 1].prompt, 130, 20, 2);
    check_refusals(m);
    tokenizer_free(tok);
    model_free(m);
    return test_summary(NAME);
}
