/* Model loading: hyperparameters from GGUF metadata or a llama2.c header,
 * every weight converted to f32 into one arena. */
#include "model.h"
#include "kvtc_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Bounds that keep every size product below 2^63 and reject nonsense early. */
#define MAX_DIM (1u << 16)
#define MAX_HIDDEN (1u << 18)
#define MAX_LAYERS 1024u
#define MAX_HEADS 1024u
#define MAX_VOCAB (1u << 22)

static void set_name(model_config *c, const char *name, size_t len)
{
    if (len >= sizeof c->name)
        len = sizeof c->name - 1;
    memcpy(c->name, name, len);
    c->name[len] = '\0';
}

static kvtc_model_shape config_kv_shape(const model_config *c)
{
    kvtc_model_shape s = {c->n_layer, c->n_kv_head, c->head_dim, c->rope_style,
                          c->rope_dims, c->rope_theta, 1.0};
    return s;
}

static kvtc_status check_config(const model_config *c, kvtc_error *err)
{
    if (c->dim < 1 || c->dim > MAX_DIM || c->hidden_dim < 1 || c->hidden_dim > MAX_HIDDEN ||
        c->n_layer < 1 || c->n_layer > MAX_LAYERS || c->n_head < 1 || c->n_head > MAX_HEADS ||
        c->n_kv_head < 1 || c->n_kv_head > c->n_head || c->n_head % c->n_kv_head ||
        c->head_dim < 2 || c->head_dim > MAX_DIM || c->vocab_size < 1 || c->vocab_size > MAX_VOCAB)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "model hyperparameters out of range: dim %u, hidden %u, %u layers, %u "
                         "heads, %u kv heads, head_dim %u, vocab %u",
                         c->dim, c->hidden_dim, c->n_layer, c->n_head, c->n_kv_head, c->head_dim,
                         c->vocab_size);
    if (c->rope_dims < 2 || c->rope_dims % 2 || c->rope_dims > c->head_dim)
        return kvtc_fail(err, KVTC_E_FORMAT, "RoPE dimension count %u invalid for head_dim %u",
                         c->rope_dims, c->head_dim);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta) || !(c->norm_eps > 0) ||
        !isfinite(c->norm_eps))
        return kvtc_fail(err, KVTC_E_FORMAT, "RoPE base %g or RMSNorm epsilon %g invalid",
                         c->rope_theta, (double)c->norm_eps);
    kvtc_model_shape shape = config_kv_shape(c);
    return kvtc_shape_check(&shape, err);
}

kvtc_model_shape model_kv_shape(const model *m)
{
    return config_kv_shape(&m->cfg);
}

static float *take(float **p, uint64_t n)
{
    float *at = *p;
    *p += n;
    return at;
}

/* Allocates the model and lays every weight out in one arena. */
static kvtc_status model_alloc(const model_config *c, bool tied, bool qkv_bias, model **out,
                               kvtc_error *err)
{
    *out = NULL;
    kvtc_status st = check_config(c, err);
    if (st != KVTC_OK)
        return st;
    uint64_t dim = c->dim, hid = c->hidden_dim, vocab = c->vocab_size;
    uint64_t q_dim = (uint64_t)c->n_head * c->head_dim;
    uint64_t qkv_rows = q_dim + 2ull * c->n_kv_head * c->head_dim;
    uint64_t per_layer = dim + qkv_rows * dim + (qkv_bias ? qkv_rows : 0) + dim * q_dim + dim +
                         2 * hid * dim + dim * hid;
    uint64_t total = vocab * dim * (tied ? 1 : 2) + dim + per_layer * c->n_layer;
    if (total > SIZE_MAX / sizeof(float))
        return kvtc_fail(err, KVTC_E_NOMEM, "model too large: %llu weights",
                         (unsigned long long)total);
    model *m = kvtc_calloc(1, sizeof *m);
    if (m) {
        m->layers = kvtc_calloc(c->n_layer, sizeof *m->layers);
        m->arena = kvtc_malloc_array((size_t)total, sizeof(float));
    }
    if (!m || !m->layers || !m->arena) {
        model_free(m);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %llu model weights",
                         (unsigned long long)total);
    }
    m->cfg = *c;
    float *p = m->arena;
    m->token_embd = take(&p, vocab * dim);
    m->output_norm = take(&p, dim);
    m->output = tied ? m->token_embd : take(&p, vocab * dim);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        model_layer *L = &m->layers[l];
        L->attn_norm = take(&p, dim);
        L->wqkv = take(&p, qkv_rows * dim);
        L->bqkv = qkv_bias ? take(&p, qkv_rows) : NULL;
        L->wo = take(&p, dim * q_dim);
        L->ffn_norm = take(&p, dim);
        L->w_gate_up = take(&p, 2 * hid * dim);
        L->w_down = take(&p, dim * hid);
    }
    *out = m;
    return KVTC_OK;
}

void model_free(model *m)
{
    if (!m)
        return;
    kvtc_free(m->arena);
    kvtc_free(m->layers);
    kvtc_free(m);
}

/* ---- GGUF ------------------------------------------------------------------ */

static bool arch_u32(const kvtc_gguf_file *f, const char *arch, const char *key, uint32_t *out)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return kvtc_gguf_get_u32(f, k, out);
}

static bool arch_f32(const kvtc_gguf_file *f, const char *arch, const char *key, float *out)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return kvtc_gguf_get_f32(f, k, out);
}

/* Dequantizes tensor `name` ([rows][cols] row-major, ggml dims {cols, rows})
 * into dst after checking its shape. */
static kvtc_status load_tensor(const kvtc_gguf_file *f, const char *name, uint64_t rows, uint64_t cols,
                               float *dst, kvtc_error *err)
{
    const kvtc_gguf_tensor *t = kvtc_gguf_find_tensor(f, name);
    if (!t)
        return kvtc_fail(err, KVTC_E_FORMAT, "tensor %s missing", name);
    uint64_t t_rows = 1;
    for (uint32_t d = 1; d < t->n_dims && d < 4; d++)
        t_rows *= t->dims[d];
    if (t->dims[0] != cols || t_rows != rows || (rows > 1 && t->dims[1] != rows))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "tensor %s has shape [%llu, %llu], expected [%llu, %llu]", name,
                         (unsigned long long)t->dims[0], (unsigned long long)t_rows,
                         (unsigned long long)cols, (unsigned long long)rows);
    return kvtc_gguf_tensor_to_f32(t, dst, err);
}

static kvtc_status load_layer_tensor(const kvtc_gguf_file *f, uint32_t layer, const char *what,
                                     uint64_t rows, uint64_t cols, float *dst, kvtc_error *err)
{
    char name[96];
    snprintf(name, sizeof name, "blk.%u.%s", layer, what);
    return load_tensor(f, name, rows, cols, dst, err);
}

static kvtc_status kvtc_gguf_config(const kvtc_gguf_file *f, model_config *c, kvtc_error *err)
{
    memset(c, 0, sizeof *c);
    const char *arch_s;
    size_t arch_len;
    if (!kvtc_gguf_get_str(f, "general.architecture", &arch_s, &arch_len))
        return kvtc_fail(err, KVTC_E_FORMAT, "GGUF has no general.architecture");
    char arch[32];
    if (arch_len >= sizeof arch)
        arch_len = sizeof arch - 1;
    memcpy(arch, arch_s, arch_len);
    arch[arch_len] = '\0';
    if (strcmp(arch, "llama") == 0) {
        c->arch = MODEL_ARCH_LLAMA;
        c->rope_style = KVTC_ROPE_INTERLEAVED; /* the converter permutes Q/K for it */
    } else if (strcmp(arch, "qwen2") == 0) {
        c->arch = MODEL_ARCH_QWEN2;
        c->rope_style = KVTC_ROPE_NEOX;
    } else {
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "model architecture \"%s\" not supported (llama, qwen2)", arch);
    }
    static const char *const required[] = {"block_count", "embedding_length",
                                           "feed_forward_length", "attention.head_count",
                                           "context_length"};
    uint32_t *fields[] = {&c->n_layer, &c->dim, &c->hidden_dim, &c->n_head, &c->context_length};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!arch_u32(f, arch, required[i], fields[i]))
            return kvtc_fail(err, KVTC_E_FORMAT, "GGUF metadata %s.%s missing or invalid", arch,
                             required[i]);
    if (!arch_u32(f, arch, "attention.head_count_kv", &c->n_kv_head))
        c->n_kv_head = c->n_head;
    if (c->n_head == 0 || c->dim % c->n_head)
        return kvtc_fail(err, KVTC_E_FORMAT, "embedding length %u not divisible by %u heads",
                         c->dim, c->n_head);
    c->head_dim = c->dim / c->n_head;
    uint32_t kv_len;
    if ((arch_u32(f, arch, "attention.key_length", &kv_len) && kv_len != c->head_dim) ||
        (arch_u32(f, arch, "attention.value_length", &kv_len) && kv_len != c->head_dim))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "attention key/value length differs from embedding/heads (%u)",
                         c->head_dim);
    if (!arch_u32(f, arch, "rope.dimension_count", &c->rope_dims))
        c->rope_dims = c->head_dim;
    float theta = 10000.0f, eps;
    arch_f32(f, arch, "rope.freq_base", &theta);
    c->rope_theta = theta;
    if (!arch_f32(f, arch, "attention.layer_norm_rms_epsilon", &eps))
        return kvtc_fail(err, KVTC_E_FORMAT, "GGUF metadata %s.attention.layer_norm_rms_epsilon "
                         "missing", arch);
    c->norm_eps = eps;
    char key[96];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    const char *scaling;
    size_t scaling_len;
    if ((kvtc_gguf_get_str(f, key, &scaling, &scaling_len) &&
         !(scaling_len == 4 && memcmp(scaling, "none", 4) == 0)) ||
        kvtc_gguf_find_tensor(f, "rope_freqs.weight"))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "RoPE scaling is not supported");
    const kvtc_gguf_tensor *embd = kvtc_gguf_find_tensor(f, "token_embd.weight");
    if (!embd || embd->n_dims != 2 || embd->dims[1] > MAX_VOCAB)
        return kvtc_fail(err, KVTC_E_FORMAT, "tensor token_embd.weight missing or not 2-D");
    c->vocab_size = (uint32_t)embd->dims[1];
    uint32_t id;
    c->bos_id = kvtc_gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &id) && id < c->vocab_size
                    ? (int32_t)id : -1;
    c->eos_id = kvtc_gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &id) && id < c->vocab_size
                    ? (int32_t)id : -1;
    const char *name;
    size_t name_len;
    if (kvtc_gguf_get_str(f, "general.name", &name, &name_len))
        set_name(c, name, name_len);
    else
        set_name(c, arch, strlen(arch));
    return KVTC_OK;
}

kvtc_status model_load_gguf(const kvtc_gguf_file *f, model **out, kvtc_error *err)
{
    *out = NULL;
    model_config c;
    kvtc_status st = kvtc_gguf_config(f, &c, err);
    if (st != KVTC_OK)
        return st;
    bool tied = kvtc_gguf_find_tensor(f, "output.weight") == NULL;
    bool bias = c.arch == MODEL_ARCH_QWEN2;
    model *m;
    if ((st = model_alloc(&c, tied, bias, &m, err)) != KVTC_OK)
        return st;
    uint64_t dim = c.dim, hid = c.hidden_dim, hd = c.head_dim;
    uint64_t q_dim = c.n_head * hd, kv_dim = c.n_kv_head * hd;
    st = load_tensor(f, "token_embd.weight", c.vocab_size, dim, m->token_embd, err);
    if (st == KVTC_OK)
        st = load_tensor(f, "output_norm.weight", 1, dim, m->output_norm, err);
    if (st == KVTC_OK && !tied)
        st = load_tensor(f, "output.weight", c.vocab_size, dim, m->output, err);
    for (uint32_t l = 0; l < c.n_layer && st == KVTC_OK; l++) {
        model_layer *L = &m->layers[l];
        const struct {
            const char *name;
            uint64_t rows, cols;
            float *dst;
        } parts[] = {
            {"attn_norm.weight", 1, dim, L->attn_norm},
            {"attn_q.weight", q_dim, dim, L->wqkv},
            {"attn_k.weight", kv_dim, dim, L->wqkv + q_dim * dim},
            {"attn_v.weight", kv_dim, dim, L->wqkv + (q_dim + kv_dim) * dim},
            {"attn_output.weight", dim, q_dim, L->wo},
            {"ffn_norm.weight", 1, dim, L->ffn_norm},
            {"ffn_gate.weight", hid, dim, L->w_gate_up},
            {"ffn_up.weight", hid, dim, L->w_gate_up + hid * dim},
            {"ffn_down.weight", dim, hid, L->w_down},
            {"attn_q.bias", 1, q_dim, L->bqkv},
            {"attn_k.bias", 1, kv_dim, bias ? L->bqkv + q_dim : NULL},
            {"attn_v.bias", 1, kv_dim, bias ? L->bqkv + q_dim + kv_dim : NULL},
        };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0] && st == KVTC_OK; i++)
            if (parts[i].dst)
                st = load_layer_tensor(f, l, parts[i].name, parts[i].rows, parts[i].cols,
                                       parts[i].dst, err);
    }
    if (st != KVTC_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return KVTC_OK;
}

/* ---- llama2.c ---------------------------------------------------------------- */

/* Copies `rows` rows of `cols` floats from layer l of a stacked tensor. */
static void copy_layer(float *dst, const float *stacked, uint32_t l, uint64_t rows, uint64_t cols)
{
    memcpy(dst, stacked + l * rows * cols, rows * cols * sizeof(float));
}

kvtc_status model_load_llama2c(const llama2c_file *f, model **out, kvtc_error *err)
{
    const llama2c_config *h = &f->cfg;
    model_config c = {
        .arch = MODEL_ARCH_LLAMA,
        .dim = h->dim,
        .hidden_dim = h->hidden_dim,
        .n_layer = h->n_layers,
        .n_head = h->n_heads,
        .n_kv_head = h->n_kv_heads,
        .head_dim = h->dim / h->n_heads,
        .vocab_size = h->vocab_size,
        .context_length = h->seq_len,
        .norm_eps = 1e-5f,
        .rope_style = KVTC_ROPE_INTERLEAVED,
        .rope_dims = h->dim / h->n_heads,
        .rope_theta = 10000.0,
        .bos_id = 1,
        .eos_id = -1,
    };
    set_name(&c, "llama2.c", 8);
    model *m;
    kvtc_status st = model_alloc(&c, h->shared_classifier, false, &m, err);
    if (st != KVTC_OK)
        return st;
    uint64_t dim = c.dim, hid = c.hidden_dim, kv_dim = (uint64_t)c.n_kv_head * c.head_dim;
    memcpy(m->token_embd, f->token_embedding, (size_t)(c.vocab_size * dim) * sizeof(float));
    memcpy(m->output_norm, f->rms_final, dim * sizeof(float));
    if (!h->shared_classifier)
        memcpy(m->output, f->wcls, (size_t)(c.vocab_size * dim) * sizeof(float));
    for (uint32_t l = 0; l < c.n_layer; l++) {
        model_layer *L = &m->layers[l];
        copy_layer(L->attn_norm, f->rms_att, l, 1, dim);
        copy_layer(L->wqkv, f->wq, l, dim, dim);
        copy_layer(L->wqkv + dim * dim, f->wk, l, kv_dim, dim);
        copy_layer(L->wqkv + (dim + kv_dim) * dim, f->wv, l, kv_dim, dim);
        copy_layer(L->wo, f->wo, l, dim, dim);
        copy_layer(L->ffn_norm, f->rms_ffn, l, 1, dim);
        copy_layer(L->w_gate_up, f->w1, l, hid, dim);
        copy_layer(L->w_gate_up + hid * dim, f->w3, l, hid, dim);
        copy_layer(L->w_down, f->w2, l, dim, hid);
    }
    *out = m;
    return KVTC_OK;
}

/* ---- either format ------------------------------------------------------------ */

static bool is_gguf(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return false;
    char magic[4];
    bool yes = fread(magic, 1, 4, fp) == 4 && memcmp(magic, "GGUF", 4) == 0;
    fclose(fp);
    return yes;
}

/* The file name without folders and extension, as the model's name. */
static void name_from_path(model_config *c, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t len = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    if (len)
        set_name(c, base, len);
}

kvtc_status model_read_kv_shape(const char *path, kvtc_model_shape *shape, char name[64],
                                kvtc_error *err)
{
    kvtc_gguf_file *f;
    kvtc_status st = kvtc_gguf_open(path, &f, err);
    if (st != KVTC_OK)
        return st;
    model_config c;
    st = kvtc_gguf_config(f, &c, err);
    kvtc_gguf_close(f);
    if (st == KVTC_OK)
        st = check_config(&c, err);
    if (st != KVTC_OK)
        return kvtc_fail_prefix(err, path);
    name_from_path(&c, path);
    *shape = config_kv_shape(&c);
    memcpy(name, c.name, 64);
    return KVTC_OK;
}

kvtc_status model_open(const char *path, model **out, tokenizer **tok, kvtc_error *err)
{
    *out = NULL;
    if (tok)
        *tok = NULL;
    kvtc_status st;
    if (is_gguf(path)) {
        kvtc_gguf_file *f;
        if ((st = kvtc_gguf_open(path, &f, err)) != KVTC_OK)
            return st;
        st = model_load_gguf(f, out, err);
        if (st == KVTC_OK && tok && (st = tokenizer_load_gguf(f, tok, err)) != KVTC_OK) {
            model_free(*out);
            *out = NULL;
        }
        kvtc_gguf_close(f);
    } else {
        llama2c_file *f;
        if ((st = llama2c_open(path, &f, err)) != KVTC_OK)
            return st;
        st = model_load_llama2c(f, out, err);
        llama2c_close(f);
    }
    if (st != KVTC_OK)
        return kvtc_fail_prefix(err, path);
    name_from_path(&(*out)->cfg, path);
    return KVTC_OK;
}
