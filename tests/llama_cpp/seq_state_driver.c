/* Test driver around the real llama.cpp (libllama), built by
 * scripts/build-llama-cpp.sh. It exercises the sequence-state API the way an
 * application does:
 *
 *   run MODEL TEXT N_PROMPT N_GEN STATE
 *       tokenizes TEXT (a file), keeps its first N_PROMPT tokens, decodes them,
 *       saves sequence 0 with llama_state_seq_save_file to STATE and the bare
 *       llama_state_seq_get_data bytes to STATE.bare, then continues greedily.
 *   resume MODEL STATE N_GEN [REF]
 *       loads STATE into a fresh context with llama_state_seq_load_file and
 *       continues greedily; with REF (the "tokens:" line of a run) it also
 *       scores REF teacher-forced from the restored state.
 *
 * Both continue the same way: the last prompt cell is dropped and its token
 * decoded again alone, since a sequence state holds no logits. So a resumed
 * state that equals the saved one gives the same tokens bit for bit.
 * Output: "tokens: t1 t2 ..." and "nll: X" (sum of -log p of those tokens),
 * and for REF "ref_nll: X". Environment: KVTC_DRV_FLASH_ATTN=0|1 (default 0,
 * llama.cpp then stores V transposed), KVTC_DRV_KV_TYPE=f16|f32|bf16|q8_0. */
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet_log(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

static int die(const char *what)
{
    fprintf(stderr, "seq_state_driver: %s\n", what);
    return 1;
}

static struct llama_context *new_context(struct llama_model *model)
{
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;
    cp.n_batch = 2048;
    cp.n_ubatch = 512;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = 2;
    const char *fa = getenv("KVTC_DRV_FLASH_ATTN");
    cp.flash_attn_type = fa && fa[0] == '1' ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                            : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    const char *kt = getenv("KVTC_DRV_KV_TYPE");
    if (kt) {
        enum ggml_type t = !strcmp(kt, "f32")    ? GGML_TYPE_F32
                           : !strcmp(kt, "bf16") ? GGML_TYPE_BF16
                           : !strcmp(kt, "q8_0") ? GGML_TYPE_Q8_0
                                                 : GGML_TYPE_F16;
        cp.type_k = cp.type_v = t;
    }
    return llama_init_from_model(model, cp);
}

/* log softmax of logits at `tok` */
static double logprob(const float *logits, int n_vocab, int tok)
{
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double s = 0;
    for (int i = 0; i < n_vocab; i++)
        s += exp((double)logits[i] - mx);
    return (double)logits[tok] - mx - log(s);
}

static int argmax(const float *logits, int n_vocab)
{
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

/* Drops the last of n_past cells and decodes `last` again at n_past - 1. */
static int redecode_last(struct llama_context *ctx, int n_past, llama_token last)
{
    if (!llama_memory_seq_rm(llama_get_memory(ctx), 0, n_past - 1, -1))
        return -1;
    llama_token t = last;
    return llama_decode(ctx, llama_batch_get_one(&t, 1));
}

/* Greedy continuation of n_gen tokens; or, with ref, teacher-forced scoring. */
static int continue_seq(struct llama_context *ctx, const struct llama_vocab *vocab, int n_gen,
                        const llama_token *ref, const char *label)
{
    int n_vocab = llama_vocab_n_tokens(vocab);
    double nll = 0;
    printf("%s:", label);
    for (int i = 0; i < n_gen; i++) {
        const float *logits = llama_get_logits_ith(ctx, -1);
        llama_token t = ref ? ref[i] : argmax(logits, n_vocab);
        nll -= logprob(logits, n_vocab, t);
        printf(" %d", t);
        if (i + 1 < n_gen && llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0)
            return die("decode failed");
    }
    printf("\n%s_nll: %.9f\n", label, nll);
    return 0;
}

static int read_ref(const char *path, llama_token *out, int n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char word[64];
    int got = 0;
    if (fscanf(f, "%63s", word) == 1 && strcmp(word, "tokens:") == 0)
        while (got < n && fscanf(f, "%d", &out[got]) == 1)
            got++;
    fclose(f);
    return got == n ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return die("usage: run MODEL TEXT N_PROMPT N_GEN STATE | resume MODEL STATE N_GEN [REF]");
    int run = strcmp(argv[1], "run") == 0;
    if ((run && argc != 7) || (!run && (strcmp(argv[1], "resume") != 0 || argc > 6)))
        return die("bad arguments");
    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[2], mp);
    if (!model)
        return die("cannot load the model");
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    struct llama_context *ctx = new_context(model);
    if (!ctx)
        return die("cannot create a context");
    int rc = 0;
    enum { MAX_TOK = 4096 };
    static llama_token toks[MAX_TOK];
    if (run) {
        FILE *f = fopen(argv[3], "rb");
        if (!f)
            return die("cannot open the text");
        static char text[1 << 20];
        size_t len = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[len] = 0;
        /* at most one token per byte, plus BOS */
        llama_token *all = malloc((len + 2) * sizeof *all);
        int n = all ? llama_tokenize(vocab, text, (int32_t)len, all, (int32_t)len + 2, 1, 0) : -1;
        int want = atoi(argv[4]), n_gen = atoi(argv[5]);
        if (n < want || want < 2 || want > MAX_TOK)
            return die("the text has fewer tokens than asked for");
        memcpy(toks, all, (size_t)want * sizeof *toks);
        free(all);
        if (llama_decode(ctx, llama_batch_get_one(toks, want)) != 0)
            return die("prompt decode failed");
        if (llama_state_seq_save_file(ctx, argv[6], 0, toks, (size_t)want) == 0)
            return die("llama_state_seq_save_file failed");
        size_t sz = llama_state_seq_get_size(ctx, 0);
        unsigned char *bare = malloc(sz);
        char bare_path[4096];
        snprintf(bare_path, sizeof bare_path, "%s.bare", argv[6]);
        FILE *b = fopen(bare_path, "wb");
        if (!bare || !b || llama_state_seq_get_data(ctx, bare, sz, 0) != sz ||
            fwrite(bare, 1, sz, b) != sz)
            return die("cannot write the bare state");
        fclose(b);
        free(bare);
        if (redecode_last(ctx, want, toks[want - 1]) != 0)
            return die("decode failed");
        rc = continue_seq(ctx, vocab, n_gen, NULL, "tokens");
    } else {
        int n_gen = atoi(argv[4]);
        size_t n_tok = 0;
        if (llama_state_seq_load_file(ctx, argv[3], 0, toks, MAX_TOK, &n_tok) == 0 || n_tok < 1)
            return die("llama_state_seq_load_file refused the state");
        if (redecode_last(ctx, (int)n_tok, toks[n_tok - 1]) != 0)
            return die("decode failed");
        rc = continue_seq(ctx, vocab, n_gen, NULL, "tokens");
        if (rc == 0 && argc == 6) {
            static llama_token ref[MAX_TOK];
            if (n_gen > MAX_TOK || read_ref(argv[5], ref, n_gen) != 0)
                return die("cannot read the reference tokens");
            if (llama_state_seq_load_file(ctx, argv[3], 0, toks, MAX_TOK, &n_tok) == 0 ||
                redecode_last(ctx, (int)n_tok, toks[n_tok - 1]) != 0)
                return die("cannot reload the state");
            rc = continue_seq(ctx, vocab, n_gen, ref, "ref");
        }
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
