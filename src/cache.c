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

static size_t row_bytes(const kvtc_cache *c)
{
    return (size_t)c->shape.head_dim * kvtc_dtype_size(c->dtype);
}

const char *kvtc_kind_name(kvtc_kind kind)
{
    switch (kind) {
    case KVTC_KEY: return "keys";
    case KVTC_VALUE: return "values";
    }
    return "?";
}

/* A cache without memory yet: checked shape, dtype and pos0, and the table of
 * layer pointers. */
static kvtc_status cache_new(const kvtc_model_shape *shape, kvtc_dtype dtype, uint32_t n_tokens,
                             int64_t pos0, kvtc_cache **out, kvtc_error *err)
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
    if (c)
        c->layer = kvtc_calloc(2 * (size_t)shape->n_layer, sizeof *c->layer);
    if (!c || !c->layer) {
        kvtc_free(c);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a cache");
    }
    c->shape = kvtc_shape_normalized(shape);
    c->dtype = dtype;
    c->n_tokens = n_tokens;
    c->pos0 = pos0;
    *out = c;
    return KVTC_OK;
}

kvtc_status kvtc_cache_create(const kvtc_model_shape *shape, kvtc_dtype dtype,
                              uint32_t n_tokens, int64_t pos0, kvtc_cache **out, kvtc_error *err)
{
    kvtc_cache *c;
    kvtc_status st = cache_new(shape, dtype, n_tokens, pos0, &c, err);
    if (st != KVTC_OK)
        return st;
    uint64_t elems = 2 * kvtc_shape_features(&c->shape) * (uint64_t)n_tokens;
    if (elems > SIZE_MAX / 4 || !(c->data = kvtc_calloc((size_t)elems, kvtc_dtype_size(dtype)))) {
        kvtc_cache_free(c);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a cache of %u tokens", n_tokens);
    }
    c->token_stride = row_bytes(c);
    c->head_stride = (size_t)n_tokens * c->token_stride;
    size_t layer = c->head_stride * c->shape.n_kv_head;
    for (size_t i = 0; i < 2 * (size_t)c->shape.n_layer; i++)
        c->layer[i] = c->data + i * layer;
    *out = c;
    return KVTC_OK;
}

void kvtc_cache_layout_default(kvtc_cache_layout *layout, const kvtc_model_shape *shape,
                               uint32_t n_tokens, kvtc_layout_order order)
{
    if (!layout || !shape)
        return;
    layout->struct_size = sizeof *layout;
    if (order == KVTC_TOKEN_MAJOR) {
        layout->head_stride = shape->head_dim;
        layout->token_stride = (uint64_t)shape->n_kv_head * shape->head_dim;
    } else {
        layout->head_stride = (uint64_t)n_tokens * shape->head_dim;
        layout->token_stride = shape->head_dim;
    }
}

/* Head vectors of one layer never overlap when tokens nest inside heads or
 * heads inside tokens (a stride over a single head or token does not matter). */
static bool strides_disjoint(uint64_t hd, uint32_t heads, uint64_t hs, uint32_t tokens,
                             uint64_t ts)
{
    if (tokens == 0)
        return true; /* no elements at all */
    bool tokens_in_heads = (tokens <= 1 || ts >= hd) &&
                           (heads <= 1 || hs >= (uint64_t)(tokens - 1) * ts + hd);
    bool heads_in_tokens = (heads <= 1 || hs >= hd) &&
                           (tokens <= 1 || ts >= (uint64_t)(heads - 1) * hs + hd);
    return tokens_in_heads || heads_in_tokens;
}

#define MAX_STRIDE ((uint64_t)1 << 40) /* elements; keeps every offset far from overflow */

kvtc_status kvtc_cache_wrap(const kvtc_model_shape *shape, kvtc_dtype dtype, uint32_t n_tokens,
                            int64_t pos0, void *const *keys, void *const *values,
                            const kvtc_cache_layout *layout, kvtc_cache **out, kvtc_error *err)
{
    if (out)
        *out = NULL;
    if (!layout || layout->struct_size < sizeof *layout)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_cache_wrap: no layout or unknown struct_size");
    if (!keys || !values)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_cache_wrap: no key or value pointers given");
    kvtc_cache *c;
    kvtc_status st = cache_new(shape, dtype, n_tokens, pos0, &c, err);
    if (st != KVTC_OK)
        return st;
    uint64_t hd = c->shape.head_dim, hs = layout->head_stride, ts = layout->token_stride;
    size_t esize = kvtc_dtype_size(dtype);
    if (hs > MAX_STRIDE || ts > MAX_STRIDE ||
        !strides_disjoint(hd, c->shape.n_kv_head, hs, n_tokens, ts)) {
        kvtc_cache_free(c);
        return kvtc_fail(err, KVTC_E_INVALID,
                         "kvtc_cache_wrap: strides (head %llu, token %llu elements) make head "
                         "vectors of %llu elements overlap",
                         (unsigned long long)hs, (unsigned long long)ts, (unsigned long long)hd);
    }
    c->head_stride = (size_t)hs * esize;
    c->token_stride = (size_t)ts * esize;
    for (uint32_t l = 0; l < c->shape.n_layer; l++)
        for (int k = 0; k < 2; k++) {
            unsigned char *base = (k == KVTC_KEY ? keys : values)[l];
            if ((!base && n_tokens) || (uintptr_t)base % esize) {
                kvtc_cache_free(c);
                return kvtc_fail(err, KVTC_E_INVALID,
                                 "kvtc_cache_wrap: layer %u %s pointer is %s", l,
                                 kvtc_kind_name((kvtc_kind)k),
                                 base ? "not aligned to its dtype" : "NULL");
            }
            c->layer[(size_t)k * c->shape.n_layer + l] = base;
        }
    *out = c;
    return KVTC_OK;
}

bool kvtc_cache_is_packed(const kvtc_cache *c)
{
    if ((c->n_tokens > 1 && c->token_stride != row_bytes(c)) ||
        (c->shape.n_kv_head > 1 && c->head_stride != (size_t)c->n_tokens * row_bytes(c)))
        return false;
    return true;
}

kvtc_status kvtc_cache_packed(const kvtc_cache *cache, const kvtc_cache **packed,
                              kvtc_cache **copy, kvtc_error *err)
{
    *copy = NULL;
    *packed = cache;
    if (kvtc_cache_is_packed(cache))
        return KVTC_OK;
    kvtc_status st = kvtc_cache_create(&cache->shape, cache->dtype, cache->n_tokens, cache->pos0,
                                       copy, err);
    if (st != KVTC_OK)
        return st;
    memcpy((*copy)->model, cache->model, sizeof cache->model);
    kvtc_cache_copy_tokens(*copy, 0, cache, 0, cache->n_tokens);
    *packed = *copy;
    return KVTC_OK;
}

void kvtc_cache_free(kvtc_cache *cache)
{
    if (!cache)
        return;
    kvtc_free(cache->data);
    kvtc_free(cache->layer);
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
    return c->layer[(size_t)kind * c->shape.n_layer + layer];
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
                kvtc_to_f32(c->dtype, kvtc_cache_row(c, kind, l, h, t0 + t), dst,
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
                kvtc_from_f32(c->dtype, head, kvtc_cache_row(c, kind, l, h, t0 + t),
                              s->head_dim);
            }
    }
}

/* n tokens of one head between two caches (or a cache and itself). */
static void copy_head_tokens(kvtc_cache *dst, kvtc_kind k, uint32_t dl, uint32_t h,
                             uint32_t dst_t0, const kvtc_cache *src, uint32_t sl,
                             uint32_t src_t0, uint32_t n)
{
    size_t row = row_bytes(src);
    if (dst->token_stride == row && src->token_stride == row) {
        memcpy(kvtc_cache_row(dst, k, dl, h, dst_t0), kvtc_cache_row(src, k, sl, h, src_t0),
               n * row);
        return;
    }
    for (uint32_t t = 0; t < n; t++)
        memcpy(kvtc_cache_row(dst, k, dl, h, dst_t0 + t), kvtc_cache_row(src, k, sl, h, src_t0 + t),
               row);
}

void kvtc_cache_copy_tokens(kvtc_cache *dst, uint32_t dst_t0, const kvtc_cache *src,
                            uint32_t src_t0, uint32_t n)
{
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < src->shape.n_layer; l++)
            for (uint32_t h = 0; h < src->shape.n_kv_head; h++)
                copy_head_tokens(dst, (kvtc_kind)k, l, h, dst_t0, src, l, src_t0, n);
}

void kvtc_cache_copy_layer(kvtc_cache *dst, uint32_t dst_layer, const kvtc_cache *src,
                           uint32_t src_layer)
{
    for (int k = 0; k < 2; k++)
        for (uint32_t h = 0; h < src->shape.n_kv_head; h++)
            copy_head_tokens(dst, (kvtc_kind)k, dst_layer, h, 0, src, src_layer, 0, src->n_tokens);
}

void kvtc_cache_head_io(kvtc_cache *c, kvtc_kind kind, uint32_t l, uint32_t h, uint32_t t0,
                        uint32_t n, void *buf, bool into_buf)
{
    size_t row = row_bytes(c);
    unsigned char *b = buf;
    if (c->token_stride == row) {
        if (into_buf)
            memcpy(b, kvtc_cache_row(c, kind, l, h, t0), n * row);
        else
            memcpy(kvtc_cache_row(c, kind, l, h, t0), b, n * row);
        return;
    }
    for (uint32_t t = 0; t < n; t++, b += row) {
        if (into_buf)
            memcpy(b, kvtc_cache_row(c, kind, l, h, t0 + t), row);
        else
            memcpy(kvtc_cache_row(c, kind, l, h, t0 + t), b, row);
    }
}
