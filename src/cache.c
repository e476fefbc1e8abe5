/* KV caches in memory, and the feature rows the transform works on. */
#include "kvtc_internal.h"

#include <math.h>
#include <string.h>

#define MAX_LAYERS 4096u
#define MAX_HEADS 4096u
#define MAX_HEAD_DIM 8192u
#define MAX_FEATURES (1u << 24)

uint64_t kvtc_shape_features(const kvtc_model_shape *s)
{
    return s ? (uint64_t)s->n_layer * s->n_kv_head * s->head_dim : 0;
}

kvtc_model_shape kvtc_shape_normalized(const kvtc_model_shape *shape)
{
    kvtc_model_shape s = *shape;
    if (s.rope_dims == 0)
        s.rope_dims = s.head_dim;
    if (s.rope_freq_scale == 0)
        s.rope_freq_scale = 1.0;
    if (s.rope_style == KVTC_ROPE_NONE) {
        s.rope_dims = s.head_dim;
        s.rope_theta = 0;
        s.rope_freq_scale = 1.0;
    }
    return s;
}

kvtc_status kvtc_shape_check(const kvtc_model_shape *shape, kvtc_error *err)
{
    if (!shape)
        return kvtc_fail(err, KVTC_E_INVALID, "no model shape given");
    kvtc_model_shape s = kvtc_shape_normalized(shape);
    if (s.n_layer < 1 || s.n_layer > MAX_LAYERS || s.n_kv_head < 1 || s.n_kv_head > MAX_HEADS ||
        s.head_dim < 1 || s.head_dim > MAX_HEAD_DIM)
        return kvtc_fail(err, KVTC_E_INVALID,
                         "model shape out of range: %u layers, %u kv heads, head_dim %u",
                         s.n_layer, s.n_kv_head, s.head_dim);
    if (kvtc_shape_features(&s) > MAX_FEATURES)
        return kvtc_fail(err, KVTC_E_INVALID, "model shape has %llu features per token (max %u)",
                         (unsigned long long)kvtc_shape_features(&s), MAX_FEATURES);
    if ((unsigned)s.rope_style > KVTC_ROPE_NEOX)
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "unknown rope style %d", (int)s.rope_style);
    if (s.rope_style != KVTC_ROPE_NONE) {
        if (s.rope_dims % 2 || s.rope_dims > s.head_dim || s.rope_dims > KVTC_MAX_ROPE_DIMS)
            return kvtc_fail(err, KVTC_E_INVALID,
                             "rope_dims %u must be even and at most head_dim %u", s.rope_dims,
                             s.head_dim);
        if (!(s.rope_theta > 0) || !isfinite(s.rope_theta) || !(s.rope_freq_scale > 0) ||
            !isfinite(s.rope_freq_scale))
            return kvtc_fail(err, KVTC_E_INVALID, "rope_theta %g / rope_freq_scale %g invalid",
                             s.rope_theta, s.rope_freq_scale);
    }
    return KVTC_OK;
}

bool kvtc_shape_equal(const kvtc_model_shape *a, const kvtc_model_shape *b)
{
    kvtc_model_shape x = kvtc_shape_normalized(a), y = kvtc_shape_normalized(b);
    return x.n_layer == y.n_layer && x.n_kv_head == y.n_kv_head && x.head_dim == y.head_dim &&
           x.rope_style == y.rope_style && x.rope_dims == y.rope_dims &&
           x.rope_theta == y.rope_theta && x.rope_freq_scale == y.rope_freq_scale;
}

static size_t layer_elems(const kvtc_cache *c)
{
    return (size_t)c->shape.n_kv_head * c->n_tokens * c->shape.head_dim;
}

const char *kvtc_kind_name(kvtc_kind kind)
{
    switch (kind) {
    case KVTC_KEY: return "keys";
    case KVTC_VALUE: return "values";
    }
    return "?";
}

kvtc_status kvtc_cache_create(const kvtc_model_shape *shape, kvtc_dtype dtype,
                              uint32_t n_tokens, int64_t pos0, kvtc_cache **out, kvtc_error *err)
{
    if (!out)
        return kvtc_fail(err, KVTC_E_INVALID, "no output given");
    *out = NULL;
    kvtc_status st = kvtc_shape_check(shape, err);
    if (st != KVTC_OK)
        return st;
    if (!kvtc_dtype_valid(dtype))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "unknown dtype %d", (int)dtype);
    if (pos0 < 0 || pos0 > KVTC_MAX_POSITION)
        return kvtc_fail(err, KVTC_E_INVALID, "pos0 %lld out of range", (long long)pos0);
    kvtc_cache *c = kvtc_calloc(1, sizeof *c);
    if (!c)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a cache");
    c->shape = kvtc_shape_normalized(shape);
    c->dtype = dtype;
    c->n_tokens = n_tokens;
    c->pos0 = pos0;
    uint64_t elems = 2 * kvtc_shape_features(&c->shape) * (uint64_t)n_tokens;
    if (elems > SIZE_MAX / 4 || !(c->data = kvtc_calloc((size_t)elems, kvtc_dtype_size(dtype)))) {
        kvtc_free(c);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a cache of %u tokens", n_tokens);
    }
    *out = c;
    return KVTC_OK;
}

void kvtc_cache_free(kvtc_cache *cache)
{
    if (!cache)
        return;
    kvtc_free(cache->data);
    kvtc_free(cache->token_ids);
    kvtc_free(cache);
}

const kvtc_model_shape *kvtc_cache_shape(const kvtc_cache *c) { return &c->shape; }
kvtc_dtype kvtc_cache_dtype(const kvtc_cache *c) { return c->dtype; }
uint32_t kvtc_cache_tokens(const kvtc_cache *c) { return c->n_tokens; }
int64_t kvtc_cache_pos0(const kvtc_cache *c) { return c->pos0; }
const char *kvtc_cache_model_name(const kvtc_cache *c) { return c->model; }
const int32_t *kvtc_cache_token_ids(const kvtc_cache *c) { return c ? c->token_ids : NULL; }

kvtc_status kvtc_cache_set_token_ids(kvtc_cache *c, const int32_t *ids, kvtc_error *err)
{
    if (!c)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_cache_set_token_ids: no cache");
    int32_t *copy = NULL;
    if (ids && c->n_tokens > 0) {
        if (!(copy = kvtc_malloc_array(c->n_tokens, sizeof *copy)))
            return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u token ids", c->n_tokens);
        memcpy(copy, ids, (size_t)c->n_tokens * sizeof *copy);
    }
    kvtc_free(c->token_ids);
    c->token_ids = copy;
    return KVTC_OK;
}

const void *kvtc_cache_data_const(const kvtc_cache *c, kvtc_kind kind, uint32_t layer)
{
    if (!c || layer >= c->shape.n_layer || (kind != KVTC_KEY && kind != KVTC_VALUE))
        return NULL;
    size_t idx = ((size_t)kind * c->shape.n_layer + layer) * layer_elems(c);
    return c->data + idx * kvtc_dtype_size(c->dtype);
}

void *kvtc_cache_data(kvtc_cache *c, kvtc_kind kind, uint32_t layer)
{
    return (void *)kvtc_cache_data_const(c, kind, layer);
}

kvtc_status kvtc_cache_set_model_name(kvtc_cache *c, const char *name, kvtc_error *err)
{
    if (!c || !name)
        return kvtc_fail(err, KVTC_E_INVALID, "no cache or name given");
    size_t n = strlen(name);
    if (n >= sizeof c->model)
        return kvtc_fail(err, KVTC_E_INVALID, "model name longer than %zu bytes",
                         sizeof c->model - 1);
    memcpy(c->model, name, n + 1);
    return KVTC_OK;
}

/* Byte offset of (kind, layer, head, token) in c->data. */
static size_t elem_offset(const kvtc_cache *c, kvtc_kind kind, uint32_t l, uint32_t h, uint32_t t)
{
    size_t idx = ((size_t)kind * c->shape.n_layer + l) * layer_elems(c) +
                 ((size_t)h * c->n_tokens + t) * c->shape.head_dim;
    return idx * kvtc_dtype_size(c->dtype);
}

/* The RoPE angles of token after token of a cache, for its keys (off for
 * values and rope-less shapes). */
typedef struct token_rope {
    bool on;
    double freq[KVTC_MAX_ROPE_DIMS / 2];
    float cs[KVTC_MAX_ROPE_DIMS / 2], sn[KVTC_MAX_ROPE_DIMS / 2];
} token_rope;

static void token_rope_init(token_rope *r, const kvtc_cache *c, kvtc_kind kind)
{
    r->on = kind == KVTC_KEY && c->shape.rope_style != KVTC_ROPE_NONE;
    if (r->on)
        kvtc_rope_freqs(&c->shape, r->freq);
}

static void token_rope_at(token_rope *r, const kvtc_cache *c, uint32_t t)
{
    if (r->on)
        kvtc_rope_angles_at(&c->shape, r->freq, c->pos0 + t, r->cs, r->sn);
}

void kvtc_cache_gather_rows(const kvtc_cache *c, kvtc_kind kind, uint32_t t0, uint32_t n,
                            float *rows)
{
    const kvtc_model_shape *s = &c->shape;
    size_t p = (size_t)kvtc_shape_features(s);
    token_rope r;
    token_rope_init(&r, c, kind);
    for (uint32_t t = 0; t < n; t++) {
        float *row = rows + (size_t)t * p;
        token_rope_at(&r, c, t0 + t);
        for (uint32_t l = 0; l < s->n_layer; l++)
            for (uint32_t h = 0; h < s->n_kv_head; h++) {
                float *dst = row + ((size_t)l * s->n_kv_head + h) * s->head_dim;
                kvtc_to_f32(c->dtype, c->data + elem_offset(c, kind, l, h, t0 + t), dst,
                            s->head_dim);
                if (r.on)
                    kvtc_rope_apply(s, dst, r.cs, r.sn, true);
            }
    }
}

void kvtc_cache_scatter_rows(kvtc_cache *c, kvtc_kind kind, uint32_t t0, uint32_t n,
                             const float *rows)
{
    const kvtc_model_shape *s = &c->shape;
    size_t p = (size_t)kvtc_shape_features(s);
    token_rope r;
    token_rope_init(&r, c, kind);
    float head[MAX_HEAD_DIM];
    for (uint32_t t = 0; t < n; t++) {
        const float *row = rows + (size_t)t * p;
        token_rope_at(&r, c, t0 + t);
        for (uint32_t l = 0; l < s->n_layer; l++)
            for (uint32_t h = 0; h < s->n_kv_head; h++) {
                memcpy(head, row + ((size_t)l * s->n_kv_head + h) * s->head_dim,
                       s->head_dim * sizeof(float));
                if (r.on)
                    kvtc_rope_apply(s, head, r.cs, r.sn, false);
                kvtc_from_f32(c->dtype, head, c->data + elem_offset(c, kind, l, h, t0 + t),
                              s->head_dim);
            }
    }
}

void kvtc_cache_copy_tokens(kvtc_cache *dst, uint32_t dst_t0, const kvtc_cache *src,
                            uint32_t src_t0, uint32_t n)
{
    size_t bytes = (size_t)n * src->shape.head_dim * kvtc_dtype_size(src->dtype);
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < src->shape.n_layer; l++)
            for (uint32_t h = 0; h < src->shape.n_kv_head; h++)
                memcpy(dst->data + elem_offset(dst, (kvtc_kind)k, l, h, dst_t0),
                       src->data + elem_offset(src, (kvtc_kind)k, l, h, src_t0), bytes);
}
