/* Moving a session's KV cache to and from a kvtc_cache: whole, or layer by
 * layer as kvtc_decompress_layers hands layers over. The session's layout per
 * layer, [n_kv_head][capacity][head_dim], differs from a kvtc_cache's only in
 * the token stride, so each head is one contiguous conversion. */
#include "kvtc_internal.h"
#include "session.h"

#include <string.h>

static uint32_t n_layer(const session *s) { return s->m->cfg.n_layer; }

/* Converts one layer of n tokens between the cache dtype and the session. */
static void layer_to_session(session *s, uint32_t layer, kvtc_dtype dtype, uint32_t n,
                             const void *key, const void *value)
{
    const model_config *c = &s->m->cfg;
    size_t head = (size_t)n * c->head_dim, esize = kvtc_dtype_size(dtype);
    const void *src[2] = {key, value};
    for (int kind = 0; kind < 2; kind++) {
        float *dst = session_cache_layer(s, (kvtc_kind)kind, layer);
        for (uint32_t h = 0; h < c->n_kv_head; h++)
            kvtc_to_f32(dtype, (const unsigned char *)src[kind] + h * head * esize,
                        dst + (size_t)h * s->capacity * c->head_dim, head);
    }
}

kvtc_status session_export_cache(const session *s, kvtc_dtype dtype, kvtc_cache **out,
                                 kvtc_error *err)
{
    *out = NULL;
    kvtc_model_shape shape = model_kv_shape(s->m);
    kvtc_cache *c;
    kvtc_status st = kvtc_cache_create(&shape, dtype, s->n_past, s->pos0, &c, err);
    if (st != KVTC_OK)
        return st;
    if ((st = kvtc_cache_set_model_name(c, s->m->cfg.name, err)) != KVTC_OK) {
        kvtc_cache_free(c);
        return st;
    }
    size_t head = (size_t)s->n_past * shape.head_dim, esize = kvtc_dtype_size(dtype);
    for (uint32_t l = 0; l < shape.n_layer; l++)
        for (int kind = 0; kind < 2; kind++) {
            const float *src = session_cache_layer(s, (kvtc_kind)kind, l);
            unsigned char *dst = kvtc_cache_data(c, (kvtc_kind)kind, l);
            for (uint32_t h = 0; h < shape.n_kv_head; h++)
                kvtc_from_f32(dtype, src + (size_t)h * s->capacity * shape.head_dim,
                              dst + h * head * esize, head);
        }
    *out = c;
    return KVTC_OK;
}

/* Checks that n_tokens at pos0 in dtype can replace the session's cache. */
static kvtc_status check_import(const session *s, kvtc_dtype dtype, uint32_t n_tokens,
                                int64_t pos0, kvtc_error *err)
{
    if (!kvtc_dtype_valid(dtype))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "unknown cache dtype %d", (int)dtype);
    if (n_tokens > s->capacity)
        return kvtc_fail(err, KVTC_E_INVALID, "cache of %u tokens does not fit a %u-token session",
                         n_tokens, s->capacity);
    if (pos0 < 0 || pos0 > INT64_MAX / 2)
        return kvtc_fail(err, KVTC_E_INVALID, "cache position %lld out of range",
                         (long long)pos0);
    return KVTC_OK;
}

kvtc_status session_import_cache(session *s, const kvtc_cache *c, kvtc_error *err)
{
    kvtc_model_shape shape = model_kv_shape(s->m);
    if (!kvtc_shape_equal(&shape, kvtc_cache_shape(c)))
        return kvtc_fail(err, KVTC_E_MISMATCH,
                         "cache shape (%u layers, %u kv heads, head_dim %u) or its RoPE does not "
                         "match the model's (%u layers, %u kv heads, head_dim %u)",
                         kvtc_cache_shape(c)->n_layer, kvtc_cache_shape(c)->n_kv_head,
                         kvtc_cache_shape(c)->head_dim, shape.n_layer, shape.n_kv_head,
                         shape.head_dim);
    kvtc_dtype dtype = kvtc_cache_dtype(c);
    uint32_t n = kvtc_cache_tokens(c);
    kvtc_status st = session_begin_import(s, dtype, n, kvtc_cache_pos0(c), err);
    if (st != KVTC_OK)
        return st;
    for (uint32_t l = 0; l < n_layer(s); l++)
        session_import_layer(s, l, kvtc_cache_data_const(c, KVTC_KEY, l),
                             kvtc_cache_data_const(c, KVTC_VALUE, l));
    return session_finish_import(s, err);
}

kvtc_status session_begin_import(session *s, kvtc_dtype dtype, uint32_t n_tokens, int64_t pos0,
                                 kvtc_error *err)
{
    kvtc_status st = check_import(s, dtype, n_tokens, pos0, err);
    if (st != KVTC_OK)
        return st;
    session_reset(s);
    s->import.active = true;
    s->import.dtype = dtype;
    s->import.n_tokens = n_tokens;
    s->import.pos0 = pos0;
    s->import.next_layer = 0;
    kvtc_error_clear(&s->import.err);
    return KVTC_OK;
}

int session_import_layer(void *user, uint32_t layer, const void *key, const void *value)
{
    session *s = user;
    if (!s->import.active) {
        kvtc_fail(&s->import.err, KVTC_E_INVALID, "layer %u arrived with no import begun",
                  layer);
        return 1;
    }
    if (s->import.err.status != KVTC_OK)
        return 1;
    if (layer != s->import.next_layer || layer >= n_layer(s)) {
        kvtc_fail(&s->import.err, KVTC_E_INVALID, "layer %u arrived, expected layer %u of %u",
                  layer, s->import.next_layer, n_layer(s));
        return 1;
    }
    layer_to_session(s, layer, s->import.dtype, s->import.n_tokens, key, value);
    s->import.next_layer++;
    return 0;
}

kvtc_status session_finish_import(session *s, kvtc_error *err)
{
    if (!s->import.active && s->import.err.status == KVTC_OK)
        return kvtc_fail(err, KVTC_E_INVALID, "no cache import was begun");
    s->import.active = false;
    if (s->import.err.status != KVTC_OK) {
        kvtc_status st = s->import.err.status;
        if (err)
            *err = s->import.err;
        kvtc_error_clear(&s->import.err);
        return st;
    }
    if (s->import.next_layer != n_layer(s))
        return kvtc_fail(err, KVTC_E_TRUNCATED, "cache import ended after %u of %u layers",
                         s->import.next_layer, n_layer(s));
    s->pos0 = s->import.pos0;
    s->n_past = s->import.n_tokens;
    return KVTC_OK;
}
