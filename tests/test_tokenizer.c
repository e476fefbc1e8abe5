/* Tokenizers of the default model and of Qwen2.5-Coder-0.5B against token ids
 * from an independent implementation (HuggingFace tokenizers,
 * tests/data/tokenizer_fixtures*.txt, written by scripts/make_tokenizer_fixtures.py):
 * every text encodes to exactly the reference ids and decodes back to itself;
 * chat prompts are formatted exactly as the model's Jinja template renders them. */
#include "gguf.h"
#include "kvtc_internal.h"
#include "test_alloc.h"
#include "testutil.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IDS 4096
#define MAX_MSGS 8

/* Hex of UTF-8 into bytes (NUL-terminated); false on a malformed string. */
static bool unhex(const char *hex, char *out, size_t cap, size_t *len)
{
    size_t n = strlen(hex);
    if (n % 2 || n / 2 >= cap)
        return false;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return false;
        out[i] = (char)v;
    }
    out[n / 2] = '\0';
    *len = n / 2;
    return true;
}

static size_t parse_ids(const char *s, int32_t *ids)
{
    size_t n = 0;
    char *end;
    for (long v = strtol(s, &end, 10); end != s && n < MAX_IDS; v = strtol(s, &end, 10)) {
        ids[n++] = (int32_t)v;
        s = end;
    }
    return n;
}

/* Encodes text and compares with the reference ids; then decodes back. */
static void check_text(const tokenizer *t, int line, const char *text, size_t len,
                       const int32_t *want, size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    kvtc_error err = {0};
    if (!CHECK_OK(tokenizer_encode(t, text, len, false, &ids, &n, &err), &err))
        return;
    size_t i = 0;
    while (i < n && i < n_want && ids[i] == want[i])
        i++;
    CHECK_MSG(i == n && i == n_want,
              "fixture line %d: %zu ids, want %zu; first difference at %zu (%d vs %d)", line, n,
              n_want, i, i < n ? ids[i] : -1, i < n_want ? want[i] : -1);
    char *back = NULL;
    if (CHECK_OK(tokenizer_decode(t, ids, n, &back, &err), &err))
        CHECK_MSG(strlen(back) == len && !memcmp(back, text, len),
                  "fixture line %d: decode(encode(text)) differs", line);
    kvtc_free(back);
    kvtc_free(ids);
}

static void test_fixtures(const tokenizer *t, const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!CHECK_MSG(fp != NULL, "cannot open %s", path))
        return;
    static char line[65536], text[32768], prompt[32768], contents[MAX_MSGS][2048];
    static char roles[MAX_MSGS][32];
    static int32_t ids[MAX_IDS];
    chat_message msgs[MAX_MSGS];
    size_t text_len = 0, n_msgs = 0;
    int gen = -1, lineno = 0, texts = 0, chats = 0, record_line = 0;
    kvtc_error err = {0};
    while (fgets(line, sizeof line, fp)) {
        lineno++;
        line[strcspn(line, "\n")] = '\0';
        size_t len;
        if (!strncmp(line, "text ", 5)) {
            CHECK(unhex(line + 5, text, sizeof text, &text_len));
            record_line = lineno;
            gen = -1;
        } else if (!strncmp(line, "chat ", 5)) {
            gen = atoi(line + 5);
            n_msgs = 0;
            record_line = lineno;
        } else if (!strncmp(line, "msg ", 4) && n_msgs < MAX_MSGS) {
            char *sp = strchr(line + 4, ' ');
            if (!CHECK(sp && (size_t)(sp - line - 4) < sizeof roles[0]))
                continue;
            memcpy(roles[n_msgs], line + 4, (size_t)(sp - line - 4));
            roles[n_msgs][sp - line - 4] = '\0';
            CHECK(unhex(sp + 1, contents[n_msgs], sizeof contents[0], &len));
            msgs[n_msgs] = (chat_message){roles[n_msgs], contents[n_msgs]};
            n_msgs++;
        } else if (!strncmp(line, "prompt ", 7)) {
            CHECK(unhex(line + 7, prompt, sizeof prompt, &text_len));
            char *got = NULL;
            if (CHECK_OK(tokenizer_chat_prompt(t, msgs, n_msgs, gen == 1, &got, &err), &err))
                CHECK_MSG(!strcmp(got, prompt), "chat at line %d:\n got: %s\nwant: %s",
                          record_line, got, prompt);
            kvtc_free(got);
            memcpy(text, prompt, text_len + 1);
        } else if (!strncmp(line, "ids", 3)) {
            size_t n = parse_ids(line + 3, ids);
            check_text(t, record_line, text, text_len, ids, n);
            if (gen >= 0)
                chats++;
            else
                texts++;
        }
    }
    fclose(fp);
    CHECK_MSG(texts >= 40 && chats >= 3, "only %d texts and %d chats in %s", texts, chats, path);
}

/* Long runs stay fast and exact: 200k letters, spaces and digits (one token each). */
static void check_long_runs(const tokenizer *t)
{
    kvtc_error err = {0};
    size_t big = 200000, n = 0;
    int32_t *ids = NULL;
    char *s = malloc(big), *back = NULL;
    if (!CHECK(s != NULL))
        return;
    for (int kind = 0; kind < 3; kind++) {
        memset(s, "a 7"[kind], big);
        back = NULL;
        if (CHECK_OK(tokenizer_encode(t, s, big, false, &ids, &n, &err), &err) &&
            CHECK_OK(tokenizer_decode(t, ids, n, &back, &err), &err))
            CHECK_MSG(strlen(back) == big && !memcmp(back, s, big), "run of '%c'", "a 7"[kind]);
        CHECK_MSG(kind != 2 || n == big, "digits are single tokens: %zu", n);
        kvtc_free(back);
        kvtc_free(ids);
    }
    free(s);
}

/* The vocabulary's size, its BOS and EOS ids and where <|im_start|> is. */
static void check_vocab(const tokenizer *t, uint32_t size, int32_t bos, int32_t eos,
                        int32_t im_start)
{
    char buf[64];
    CHECK_EQ(tokenizer_vocab_size(t), size);
    CHECK_EQ(tokenizer_bos(t), bos);
    CHECK_EQ(tokenizer_eos(t), eos);
    CHECK(tokenizer_token_bytes(t, im_start, buf, sizeof buf) == 12 &&
          !memcmp(buf, "<|im_start|>", 12));
}

/* Checks that need no reference: ids, bytes, edges, errors, sizes. */
static void test_edges(const tokenizer *t)
{
    kvtc_error err = {0};
    check_vocab(t, 49152, 1, 2, 1);
    char buf[64];
    CHECK(tokenizer_token_bytes(t, 216, buf, sizeof buf) == 1 && buf[0] == ' '); /* "Ġ" */
    CHECK_EQ(tokenizer_token_bytes(t, -1, buf, sizeof buf), 0);
    CHECK_EQ(tokenizer_token_bytes(t, 49152, buf, sizeof buf), 0);

    int32_t *ids = NULL;
    size_t n = 0;
    if (CHECK_OK(tokenizer_encode(t, "Hi", 2, true, &ids, &n, &err), &err))
        CHECK(n >= 2 && ids[0] == 1);
    kvtc_free(ids);

    /* Malformed UTF-8 survives the round trip (byte-level BPE), as long as each
     * byte has a token: this vocabulary lacks 0xc0, 0xc1, 0xf1, 0xf2, 0xf5..0xff
     * and six control bytes. */
    static const char raw[] = "ok \x80 bad \xe2\x82 \xed\xa0\x80 \xe0\x80\xaf end\xf0\x9f";
    char *back = NULL;
    if (CHECK_OK(tokenizer_encode(t, raw, sizeof raw - 1, false, &ids, &n, &err), &err) &&
        CHECK_OK(tokenizer_decode(t, ids, n, &back, &err), &err))
        CHECK(strlen(back) == sizeof raw - 1 && !memcmp(back, raw, sizeof raw - 1));
    kvtc_free(back);
    kvtc_free(ids);

    check_long_runs(t);

    /* Bytes without a token of their own (0x04 here) are dropped, as by the reference. */
    if (CHECK_OK(tokenizer_encode(t, "\x04", 1, false, &ids, &n, &err), &err))
        CHECK_EQ(n, 0);
    kvtc_free(ids);

    int32_t bad[] = {5, 49152};
    CHECK_STATUS(tokenizer_decode(t, bad, 2, &back, &err), KVTC_E_INVALID, NULL);
    CHECK(tokenizer_encode(t, "", 0, false, &ids, &n, &err) == KVTC_OK && n == 0);
    kvtc_free(ids);

    char *prompt = NULL;
    if (CHECK_OK(tokenizer_chat_prompt(t, NULL, 0, true, &prompt, &err), &err))
        CHECK(!strcmp(prompt, "<|im_start|>assistant\n"));
    kvtc_free(prompt);
    chat_message no_content = {"user", NULL};
    CHECK_STATUS(tokenizer_chat_prompt(t, &no_content, 1, true, &prompt, &err), KVTC_E_INVALID,
                 NULL);
}

/* Qwen2.5's vocabulary: its ids, no BOS added (the GGUF says add_bos_token
 * false; tokenizer_encode adds it only when asked), every byte has a token. */
static void test_qwen2_edges(const tokenizer *t)
{
    kvtc_error err = {0};
    check_vocab(t, 151936, 151643, 151645, 151644);
    char all[256], *back = NULL;
    for (int b = 0; b < 256; b++)
        all[b] = (char)(255 - b);
    int32_t *ids = NULL;
    size_t n = 0;
    if (CHECK_OK(tokenizer_encode(t, all, sizeof all, false, &ids, &n, &err), &err) &&
        CHECK_OK(tokenizer_decode(t, ids, n, &back, &err), &err))
        CHECK(strlen(back) == 255 && !memcmp(back, all, 255)); /* up to the NUL byte */
    kvtc_free(back);
    kvtc_free(ids);
    check_long_runs(t);
}

/* Allocation failures while encoding and loading: NOMEM, nothing leaked. */
typedef struct alloc_args {
    const kvtc_gguf_file *f;
    const tokenizer *t;
    bool load; /* tokenizer_load_gguf, else tokenizer_encode */
} alloc_args;

static kvtc_status alloc_step(void *arg, kvtc_error *err, bool *wrong)
{
    static const char text[] = "<|im_start|>user\nHello 123<|im_end|>";
    const alloc_args *a = arg;
    int32_t *ids = NULL;
    size_t n = 0;
    tokenizer *t = NULL;
    kvtc_status st = a->load ? tokenizer_load_gguf(a->f, &t, err)
                             : tokenizer_encode(a->t, text, sizeof text - 1, false, &ids, &n, err);
    *wrong = st == KVTC_OK && !a->load && n == 0;
    kvtc_free(ids);
    tokenizer_free(t);
    return st;
}

static void test_alloc_failures(const kvtc_gguf_file *f, const tokenizer *t)
{
    alloc_args encode = {f, t, false}, load = {f, t, true};
    test_alloc_sweep("tokenizer_encode", alloc_step, &encode, TEST_ALLOC_STICKY);
    test_alloc_sweep("tokenizer_load_gguf", alloc_step, &load, TEST_ALLOC_STICKY);
}

/* A GGUF without tokenizer metadata is refused with a message. */
static void test_missing_vocab(void)
{
    unsigned char empty[24] = {'G', 'G', 'U', 'F', 3};
    kvtc_gguf_file *f = NULL;
    tokenizer *t = NULL;
    kvtc_error err = {0};
    if (!CHECK_OK(kvtc_gguf_load(empty, sizeof empty, &f, &err), &err))
        return;
    CHECK_STATUS(tokenizer_load_gguf(f, &t, &err), KVTC_E_FORMAT, NULL);
    CHECK(t == NULL && strstr(err.message, "tokenizer.ggml.tokens"));
    kvtc_gguf_close(f);
}

/* One model's tokenizer: its fixtures, its edges, its allocation failures;
 * skipped (printed) when the model is absent. */
static void test_model(const char *file, const char *fixtures_rel,
                       void (*edges)(const tokenizer *))
{
    char model[4096], fixtures[4096];
    if (!CHECK(test_model_cache_path(model, sizeof model, file)) ||
        !CHECK(test_source_path(fixtures, sizeof fixtures, fixtures_rel)) ||
        !test_input_present("test_tokenizer", file, model, "make test fetches it"))
        return;
    kvtc_gguf_file *f = NULL;
    kvtc_error err = {0};
    if (!CHECK_OK(kvtc_gguf_open(model, &f, &err), &err))
        return;
    tokenizer *t = NULL;
    if (CHECK_OK(tokenizer_load_gguf(f, &t, &err), &err)) {
        test_fixtures(t, fixtures);
        edges(t);
        test_alloc_failures(f, t);
    }
    tokenizer_free(t);
    kvtc_gguf_close(f);
}

int main(void)
{
    test_alloc_install(); /* before any other kvtc call */
    test_missing_vocab();
    test_model("SmolLM2-135M-Instruct.Q4_1.gguf", "tests/data/tokenizer_fixtures.txt", test_edges);
    test_model("Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf",
               "tests/data/tokenizer_fixtures_qwen2.txt", test_qwen2_edges);
    return test_summary("test_tokenizer");
}
