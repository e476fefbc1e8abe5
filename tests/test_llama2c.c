/* llama2.c checkpoints: small synthetic ones (shared and separate classifier)
 * load with every tensor where the format puts it; bad headers, truncated and
 * overlong files are refused with clear errors; stories260K loads with its
 * documented shape (skipped, saying so, only when the file is absent; a file
 * that is there must load). */
#include "kvtc_internal.h"
#include "llama2c.h"
#include "model.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "test_llama2c"

/* A checkpoint of header h whose float k is k (so offsets can be checked). */
static float *make_checkpoint(const int32_t h[7], size_t *len)
{
    uint64_t dim = h[0], hid = h[1], L = h[2], hd = dim / h[3], kv = hd * h[4];
    uint64_t vocab = h[5] < 0 ? -(int64_t)h[5] : h[5];
    uint64_t floats = vocab * dim + L * dim * 2 + L * dim * dim * 2 + L * kv * dim * 2 +
                      L * hid * dim * 3 + dim + h[6] * hd + (h[5] < 0 ? vocab * dim : 0);
    *len = 28 + 4 * floats;
    float *buf = malloc(*len);
    if (!buf)
        return NULL;
    memcpy(buf, h, 28);
    for (uint64_t k = 0; k < floats; k++)
        buf[7 + k] = (float)k;
    return buf;
}

static void test_synthetic(void)
{
    const int32_t shared[7] = {16, 24, 2, 4, 2, 10, 6};
    size_t len;
    float *buf = make_checkpoint(shared, &len);
    llama2c_file *f;
    kvtc_error err;
    if (!CHECK(buf != NULL))
        return;
    if (CHECK_OK(llama2c_load(buf, len, &f, &err), &err)) {
        CHECK_EQ(f->cfg.dim, 16);
        CHECK_EQ(f->cfg.n_kv_heads, 2);
        CHECK(f->cfg.shared_classifier);
        CHECK(f->token_embedding == buf + 7);
        CHECK(f->wcls == f->token_embedding);
        /* rms_att follows the 10 x 16 embedding; wk follows wq (2 x 16 x 16) */
        CHECK(f->rms_att[0] == 160.0f);
        CHECK(f->wk[0] == 160.0f + 32 + 512);
        CHECK(f->rms_final[15] + 1 + 6 * 4 == (float)(len / 4 - 7));
        llama2c_close(f);
    }
    /* every truncation, and one extra float */
    for (size_t cut = 0; cut < len; cut += cut < 64 ? 1 : 97) {
        kvtc_status st = llama2c_load(buf, cut, &f, &err);
        if (!CHECK_MSG(st == KVTC_E_TRUNCATED, "length %zu of %zu: status %d (%s)", cut, len,
                       (int)st, err.message))
            break;
    }
    float *longer = realloc(buf, len + 4);
    if (CHECK(longer != NULL)) {
        buf = longer;
        CHECK_STATUS(llama2c_load(buf, len + 4, &f, &err), KVTC_E_FORMAT, NULL);
        CHECK(strstr(err.message, "must be") != NULL);
    }
    /* bad header fields, one at a time */
    static const struct { int field; int32_t value; } bad[] = {
        {0, 0}, {0, -16}, {1, 0}, {2, 0}, {2, 100000}, {3, 0}, {3, 5}, {4, 0}, {4, 8},
        {5, 0}, {5, 1 << 30}, {6, 0}, {6, -1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t h[7];
        memcpy(h, shared, sizeof h);
        h[bad[i].field] = bad[i].value;
        memcpy(buf, h, 28);
        CHECK_MSG(llama2c_load(buf, len, &f, &err) == KVTC_E_FORMAT,
                  "header field %d = %d was not refused", bad[i].field, bad[i].value);
    }
    const uint32_t v1_magic = 0x616b3432u;
    memcpy(buf, &v1_magic, 4);
    CHECK_STATUS(llama2c_load(buf, len, &f, &err), KVTC_E_UNSUPPORTED, NULL);
    free(buf);

    /* a separate classifier (negative vocab) sits after the RoPE tables */
    const int32_t unshared[7] = {16, 24, 2, 4, 2, -10, 6};
    buf = make_checkpoint(unshared, &len);
    if (buf && CHECK_OK(llama2c_load(buf, len, &f, &err), &err)) {
        CHECK(!f->cfg.shared_classifier);
        CHECK_EQ(f->cfg.vocab_size, 10);
        CHECK(f->wcls == buf + len / 4 - 160);
        model *m;
        if (CHECK_OK(model_load_llama2c(f, &m, &err), &err)) {
            CHECK(!m->tied && m->output.part[0].data != m->token_embd.part[0].data);
            CHECK(weight_f32_data(&m->output)[0] == f->wcls[0]);
            /* wk rows follow wq's in the fused projection */
            CHECK(weight_f32_data(&m->layers[1].wqkv)[16 * 16] == f->wk[8 * 16]);
            model_free(m);
        }
        llama2c_close(f);
    }
    free(buf);
}

static void test_files(const char *model_path)
{
    llama2c_file *f;
    kvtc_error err;
    CHECK_STATUS(llama2c_open("/nonexistent/stories.bin", &f, &err), KVTC_E_IO, NULL);
    CHECK(strstr(err.message, "/nonexistent/stories.bin") != NULL);
    void *data;
    size_t len;
    char path[512];
    if (!CHECK_OK(kvtc_read_file(model_path, &data, &len, &err), &err))
        return;
    if (CHECK(temp_path(path, sizeof path, "cut.bin"))) {
        FILE *fp = fopen(path, "wb");
        if (CHECK(fp != NULL)) {
            fwrite(data, 1, len / 2, fp);
            fclose(fp);
            CHECK_STATUS(llama2c_open(path, &f, &err), KVTC_E_TRUNCATED, NULL);
            CHECK(strstr(err.message, "cut.bin") != NULL);
        }
        model *m;
        CHECK(model_open(path, &m, NULL, &err) == KVTC_E_TRUNCATED);
    }
    kvtc_buffer_free(data);
}

int main(void)
{
    test_synthetic();
    char path[1024];
    if (!CHECK(test_shared_path(path, sizeof path, "models/stories260K.bin")))
        return test_summary(NAME);
    if (!test_input_present(NAME, "the stories260K checks", path, "the shared test model"))
        test_skip(NAME, "stories260K.bin is absent; the synthetic checks passed");
    llama2c_file *f;
    kvtc_error err;
    if (!CHECK_OK(llama2c_open(path, &f, &err), &err))
        return test_summary(NAME);
    const llama2c_config *c = &f->cfg;
    CHECK_EQ(c->dim, 64);
    CHECK_EQ(c->hidden_dim, 172);
    CHECK_EQ(c->n_layers, 5);
    CHECK_EQ(c->n_heads, 8);
    CHECK_EQ(c->n_kv_heads, 4);
    CHECK_EQ(c->vocab_size, 512);
    CHECK_EQ(c->seq_len, 512);
    CHECK(c->shared_classifier);
    llama2c_close(f);
    model *m;
    tokenizer *tok = (tokenizer *)&err; /* must come back NULL: no tokenizer in llama2.c */
    if (CHECK_OK(model_open(path, &m, &tok, &err), &err)) {
        CHECK(tok == NULL);
        CHECK_EQ(m->cfg.head_dim, 8);
        CHECK_EQ(m->cfg.rope_style, KVTC_ROPE_INTERLEAVED);
        CHECK_EQ(m->cfg.bos_id, 1);
        CHECK(strcmp(m->cfg.name, "stories260K") == 0);
        model_free(m);
    }
    test_files(path);
    return test_summary(NAME);
}
