/* Model loading: hyperparameters from GGUF metadata or a llama2.c header,
 * every weight into one arena, matrices in their GGUF block types. */
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

/* What a model holds, in the order of the arena: each matrix (its parts
 * adjacent, so that parts of one type merge) and each f32 vector. */
typedef enum role {
    R_EMBD, R_OUT_NORM, R_OUTPUT, /* model-wide */
    R_ATTN_NORM, R_Q, R_K, R_V, R_BQ, R_BK, R_BV, R_WO, R_FFN_NORM, R_GATE, R_UP, R_DOWN,
    N_ROLES
} role;

static const char *const role_names[N_ROLES] = {
    "token_embd.weight", "output_norm.weight", "output.weight",  "attn_norm.weight",
    "attn_q.weight",     "attn_k.weight",      "attn_v.weight",  "attn_q.bias",
    "attn_k.bias",       "attn_v.bias",        "attn_output.weight", "ffn_norm.weight",
    "ffn_gate.weight",   "ffn_up.weight",      "ffn_down.weight",
};

/* One weight to place: a part of a matrix, or an f32 vector (a bias in three
 * parts continues the previous slot), and where its values come from. */
typedef struct slot {
    role role;
    uint32_t layer;
    weight_matrix *w; /* the matrix this is a part of, or NULL: f32 values */
    float **vec;      /* where the vector's address goes; NULL: continues the last */
    uint64_t rows, cols;
    uint32_t type;     /* as stored: the source's when weight_type_kept, else F32 */
    uint32_t src_type; /* the source's */
    const void *src;
} slot;

/* Lists the model's slots for its config into s (room for 3 + 12 n_layer)
 * and returns their count. m->layers must be allocated. */
static size_t list_slots(model *m, bool qkv_bias, slot *s)
{
    const model_config *c = &m->cfg;
    uint64_t dim = c->dim, hid = c->hidden_dim, vocab = c->vocab_size;
    uint64_t q_dim = (uint64_t)c->n_head * c->head_dim, kv_dim = (uint64_t)c->n_kv_head * c->head_dim;
    size_t n = 0;
#define SLOT(r, l, w_, v_, rows_, cols_) \
    s[n++] = (slot){.role = r, .layer = l, .w = w_, .vec = v_, .rows = rows_, .cols = cols_}
    SLOT(R_EMBD, 0, &m->token_embd, NULL, vocab, dim);
    SLOT(R_OUT_NORM, 0, NULL, &m->output_norm, 1, dim);
    if (!m->tied)
        SLOT(R_OUTPUT, 0, &m->output, NULL, vocab, dim);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        model_layer *L = &m->layers[l];
        SLOT(R_ATTN_NORM, l, NULL, &L->attn_norm, 1, dim);
        SLOT(R_Q, l, &L->wqkv, NULL, q_dim, dim);
        SLOT(R_K, l, &L->wqkv, NULL, kv_dim, dim);
        SLOT(R_V, l, &L->wqkv, NULL, kv_dim, dim);
        if (qkv_bias) {
            SLOT(R_BQ, l, NULL, &L->bqkv, 1, q_dim);
            SLOT(R_BK, l, NULL, NULL, 1, kv_dim);
            SLOT(R_BV, l, NULL, NULL, 1, kv_dim);
        }
        SLOT(R_WO, l, &L->wo, NULL, dim, q_dim);
        SLOT(R_FFN_NORM, l, NULL, &L->ffn_norm, 1, dim);
        SLOT(R_GATE, l, &L->w_gate_up, NULL, hid, dim);
        SLOT(R_UP, l, &L->w_gate_up, NULL, hid, dim);
        SLOT(R_DOWN, l, &L->w_down, NULL, dim, hid);
    }
#undef SLOT
    return n;
}

#define ARENA_ALIGN 64u

/* Whether slot i starts a new aligned block of the arena (a matrix's first
 * part, or a vector's). */
static bool starts_block(const slot *s, size_t i)
{
    return s[i].w ? i == 0 || s[i - 1].w != s[i].w : s[i].vec != NULL;
}

static size_t slot_bytes(const slot *s)
{
    return (size_t)s->rows * weight_row_bytes(s->type, s->cols);
}

/* A matrix part kept in its source's type can stay where it is when the
 * source outlives the model (a GGUF mapping the model owns). */
static bool stays_in_source(const slot *s, bool map) { return map && s->w && s->type == s->src_type; }

/* Bytes of the slot in the arena. */
static size_t arena_bytes(const slot *s, bool map) { return stays_in_source(s, map) ? 0 : slot_bytes(s); }

/* Places slot s at `at` in the arena and copies (or converts) its values,
 * or points at its source when it stays there. */
static kvtc_status fill_slot(const slot *s, uint8_t *at, bool map, kvtc_error *err)
{
    if (stays_in_source(s, map))
        at = (uint8_t *)(uintptr_t)s->src; /* read only, like the mapping */
    if (s->vec)
        *s->vec = (float *)(void *)at;
    if (s->w) {
        weight_matrix *w = s->w;
        weight_part *last = w->n_parts ? &w->part[w->n_parts - 1] : NULL;
        if (last && last->type == s->type && last->data + last->rows * last->row_bytes == at)
            last->rows += (uint32_t)s->rows; /* adjacent: one part */
        else
            w->part[w->n_parts++] = (weight_part){s->type, (uint32_t)s->rows,
                                                  weight_row_bytes(s->type, s->cols), at};
        w->rows += (uint32_t)s->rows;
        w->cols = (uint32_t)s->cols;
    }
    if (stays_in_source(s, map))
        return KVTC_OK;
    if (s->type == s->src_type) {
        memcpy(at, s->src, slot_bytes(s));
        return KVTC_OK;
    }
    return kvtc_ggml_dequantize(s->src_type, s->src, (float *)(void *)at, s->rows * s->cols,
                                err);
}

/* Allocates the arena for the slots (their types and sources set) and fills
 * it; with `map`, matrices kept in their source's type stay there. */
static kvtc_status fill_arena(model *m, const slot *s, size_t n, bool map, kvtc_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (starts_block(s, i))
            total = (total + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        total += arena_bytes(&s[i], map);
    }
    m->arena = kvtc_malloc(total);
    if (!m->arena)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %zu bytes of model weights",
                         total);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (starts_block(s, i))
            at = (at + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        kvtc_status st = fill_slot(&s[i], m->arena + at, map, err);
        if (st != KVTC_OK)
            return st;
        at += arena_bytes(&s[i], map);
    }
    if (m->tied)
        m->output = m->token_embd;
    return KVTC_OK;
}

/* A model with its config checked, layers allocated and slots listed (in
 * *slots, freed by the caller). */
static kvtc_status model_alloc(const model_config *c, bool tied, bool qkv_bias, model **out,
                               slot **slots, size_t *n_slots, kvtc_error *err)
{
    *out = NULL;
    *slots = NULL;
    kvtc_status st = check_config(c, err);
    if (st != KVTC_OK)
        return st;
    model *m = kvtc_calloc(1, sizeof *m);
    if (m) {
        m->cfg = *c;
        m->tied = tied;
        m->layers = kvtc_calloc(c->n_layer, sizeof *m->layers);
        *slots = kvtc_malloc_array(3 + 12 * (size_t)c->n_layer, sizeof **slots);
    }
    if (!m || !m->layers || !*slots) {
        model_free(m);
        kvtc_free(*slots);
        *slots = NULL;
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for the model");
    }
    *n_slots = list_slots(m, qkv_bias, *slots);
    *out = m;
    return KVTC_OK;
}

void model_free(model *m)
{
    if (!m)
        return;
    kvtc_free(m->arena);
    kvtc_free(m->layers);
    kvtc_gguf_close(m->file);
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

/* Points slot s at its GGUF tensor after checking the tensor's shape, type
 * and length, and picks the type it is stored in. */
static kvtc_status gguf_source(const kvtc_gguf_file *f, slot *s, kvtc_error *err)
{
    char name[96];
    if (s->role >= R_ATTN_NORM)
        snprintf(name, sizeof name, "blk.%u.%s", s->layer, role_names[s->role]);
    else
        snprintf(name, sizeof name, "%s", role_names[s->role]);
    const kvtc_gguf_tensor *t = kvtc_gguf_find_tensor(f, name);
    if (!t)
        return kvtc_fail(err, KVTC_E_FORMAT, "tensor %s missing", name);
    uint64_t t_rows = 1;
    for (uint32_t d = 1; d < t->n_dims && d < 4; d++)
        t_rows *= t->dims[d];
    if (t->dims[0] != s->cols || t_rows != s->rows || (s->rows > 1 && t->dims[1] != s->rows))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "tensor %s has shape [%llu, %llu], expected [%llu, %llu]", name,
                         (unsigned long long)t->dims[0], (unsigned long long)t_rows,
                         (unsigned long long)s->cols, (unsigned long long)s->rows);
    size_t need = (size_t)s->rows * weight_row_bytes(t->type, s->cols);
    if (need == 0 || t->n_bytes < need) {
        kvtc_status st =
            need == 0 ? kvtc_fail(err, KVTC_E_UNSUPPORTED, "tensor type %s not supported",
                                  kvtc_ggml_type_name(t->type))
                      : kvtc_fail(err, KVTC_E_FORMAT, "%llu bytes of data do not hold %llu "
                                  "elements", (unsigned long long)t->n_bytes,
                                  (unsigned long long)t->n_elements);
        char prefix[128];
        snprintf(prefix, sizeof prefix, "tensor %s", name);
        (void)st;
        return kvtc_fail_prefix(err, prefix);
    }
    s->src = t->data;
    s->src_type = t->type;
    s->type = s->w && weight_type_kept(t->type) ? t->type : KVTC_GGML_F32;
    if (s->type != s->src_type && s->src_type != KVTC_GGML_F16 && s->src_type != KVTC_GGML_BF16 &&
        !weight_type_kept(s->src_type))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "tensor %s: type %s cannot be dequantized",
                         name, kvtc_ggml_type_name(t->type));
    return KVTC_OK;
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

kvtc_status model_load_gguf(kvtc_gguf_file *f, model **out, kvtc_error *err)
{
    *out = NULL;
    model_config c;
    kvtc_status st = kvtc_gguf_config(f, &c, err);
    if (st != KVTC_OK)
        return st;
    bool tied = kvtc_gguf_find_tensor(f, "output.weight") == NULL;
    model *m;
    slot *s;
    size_t n;
    if ((st = model_alloc(&c, tied, c.arch == MODEL_ARCH_QWEN2, &m, &s, &n, err)) != KVTC_OK)
        return st;
    for (size_t i = 0; i < n && st == KVTC_OK; i++)
        st = gguf_source(f, &s[i], err);
    if (st == KVTC_OK)
        st = fill_arena(m, s, n, true, err);
    kvtc_free(s);
    if (st != KVTC_OK) {
        model_free(m);
        return st;
    }
    m->file = f;
    *out = m;
    return KVTC_OK;
}

/* ---- llama2.c ---------------------------------------------------------------- */

kvtc_status model_load_llama2c(const llama2c_file *f, model **out, kvtc_error *err)
{
    *out = NULL;
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
    slot *s;
    size_t n;
    kvtc_status st = model_alloc(&c, h->shared_classifier, false, &m, &s, &n, err);
    if (st != KVTC_OK)
        return st;
    for (size_t i = 0; i < n; i++) {
        /* the stacked tensors hold layer l's rows after l such blocks */
        const float *stacked[N_ROLES] = {
            [R_EMBD] = f->token_embedding, [R_OUT_NORM] = f->rms_final, [R_OUTPUT] = f->wcls,
            [R_ATTN_NORM] = f->rms_att, [R_Q] = f->wq, [R_K] = f->wk, [R_V] = f->wv,
            [R_WO] = f->wo, [R_FFN_NORM] = f->rms_ffn, [R_GATE] = f->w1, [R_UP] = f->w3,
            [R_DOWN] = f->w2,
        };
        s[i].type = s[i].src_type = KVTC_GGML_F32;
        s[i].src = stacked[s[i].role] + (size_t)s[i].layer * s[i].rows * s[i].cols;
    }
    st = fill_arena(m, s, n, false, err);
    kvtc_free(s);
    if (st != KVTC_OK) {
        model_free(m);
        return st;
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
        if (st != KVTC_OK)
            kvtc_gguf_close(f);
        else if (tok && (st = tokenizer_load_gguf(f, tok, err)) != KVTC_OK) {
            model_free(*out); /* and f with it */
            *out = NULL;
        }
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

