/* llama.cpp sequence state (llama_state_seq_save_file / llama_state_seq_get_data)
 * read into a kvtc cache and written back. Byte layout: docs/FORMAT.md,
 * section 4. llama.cpp writes in the host's byte order; like it, we assume a
 * little-endian host for the element bytes. */
#include "kvtc_internal.h"

#include <string.h>

#define GGSQ_MAGIC 0x67677371u /* 'ggsq' */
#define GGSQ_VERSION 3u
/* llama_state_seq_get_data's bytes start with this magic and the sequence id */
#define BARE_MAGIC 0xaf143cd8u
#define MAX_STREAMS 256u /* llama.cpp's LLAMA_MAX_SEQ */
#define MAX_LAYERS 4096u

/* ggml type codes of the cell types kvtc holds */
enum { GGML_F32 = 0, GGML_F16 = 1, GGML_BF16 = 30 };

static const char *ggml_type_name(int32_t t)
{
    switch (t) {
    case 0: return "f32";
    case 1: return "f16";
    case 2: return "q4_0";
    case 3: return "q4_1";
    case 6: return "q5_0";
    case 7: return "q5_1";
    case 8: return "q8_0";
    case 20: return "iq4_nl";
    case 30: return "bf16";
    }
    return "unknown";
}

static bool dtype_of_ggml(int32_t t, kvtc_dtype *d)
{
    switch (t) {
    case GGML_F32: *d = KVTC_F32; return true;
    case GGML_F16: *d = KVTC_F16; return true;
    case GGML_BF16: *d = KVTC_BF16; return true;
    }
    return false;
}

static int32_t ggml_of_dtype(kvtc_dtype d)
{
    return d == KVTC_F32 ? GGML_F32 : d == KVTC_BF16 ? GGML_BF16 : GGML_F16;
}

void kvtc_llama_layout_default(kvtc_llama_layout *l)
{
    if (!l)
        return;
    memset(l, 0, sizeof *l);
    l->struct_size = sizeof *l;
    l->ggsq = 1;
    l->n_stream = 1;
}

/* What a walk over the bytes found. With `cache` set, the second walk copies
 * the cells into it. */
typedef struct state_walk {
    kvtc_llama_layout layout;
    uint32_t n_ids;      /* token ids of a ggsq file */
    const uint8_t *ids;  /* n_ids little-endian i32 */
    uint32_t cells;
    bool seq_known;      /* layout.seq_id was set by a bare state's header */
    int32_t pos0;
    uint32_t n_layer;
    uint32_t k_features, v_features; /* elements per cell and layer */
    kvtc_dtype dtype;
} state_walk;

static kvtc_status cell_type(int32_t type, uint64_t row_bytes, uint32_t *features,
                             kvtc_dtype *dtype, bool first, const char *kind, uint32_t layer,
                             kvtc_error *err)
{
    kvtc_dtype d;
    if (!dtype_of_ggml(type, &d))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "layer %u %s cells are ggml type %d (%s): only f32, f16 and bf16 "
                         "cells are supported", layer, kind, type, ggml_type_name(type));
    size_t es = kvtc_dtype_size(d);
    if (row_bytes == 0 || row_bytes % es || row_bytes / es > (1u << 24))
        return kvtc_fail(err, KVTC_E_FORMAT, "layer %u %s rows of %llu bytes are invalid", layer,
                         kind, (unsigned long long)row_bytes);
    if (first) {
        *dtype = d;
        *features = (uint32_t)(row_bytes / es);
    } else if (d != *dtype || row_bytes / es != *features)
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "layer %u %s cells are %s x %llu, unlike layer 0 (%s x %u): mixed cell "
                         "types or widths are not supported", layer, kind, ggml_type_name(type),
                         (unsigned long long)(row_bytes / es), kvtc_dtype_name(*dtype), *features);
    return KVTC_OK;
}

static kvtc_status truncated(kvtc_error *err, const char *where)
{
    return kvtc_fail(err, KVTC_E_TRUNCATED, "llama.cpp state ends inside %s", where);
}

/* Copies n_cells rows of `features` elements (head-major, [head][dim]) into
 * the cache's [head][token][dim] layout of one layer and kind. */
static void rows_to_cache(kvtc_cache *c, kvtc_kind kind, uint32_t layer, const uint8_t *src)
{
    size_t es = kvtc_dtype_size(c->dtype), hd = c->shape.head_dim;
    uint8_t *dst = kvtc_cache_data(c, kind, layer);
    for (uint32_t t = 0; t < c->n_tokens; t++)
        for (uint32_t h = 0; h < c->shape.n_kv_head; h++)
            memcpy(dst + ((size_t)h * c->n_tokens + t) * hd * es,
                   src + ((size_t)t * c->shape.n_kv_head + h) * hd * es, hd * es);
}

/* Transposed values: element j of every cell lies together. */
static void vtrans_to_cache(kvtc_cache *c, uint32_t layer, const uint8_t *src)
{
    size_t es = kvtc_dtype_size(c->dtype), hd = c->shape.head_dim, n = c->n_tokens;
    uint8_t *dst = kvtc_cache_data(c, KVTC_VALUE, layer);
    for (uint32_t h = 0; h < c->shape.n_kv_head; h++)
        for (size_t d = 0; d < hd; d++)
            for (size_t t = 0; t < n; t++)
                memcpy(dst + ((h * n + t) * hd + d) * es, src + ((h * hd + d) * n + t) * es, es);
}

/* Walks the sequence data (after a ggsq file's token list): streams, the
 * cells' positions and sequence ids, then K and V of every layer. */
static kvtc_status walk_seq_data(kvtc_reader *r, state_walk *w, kvtc_cache *cache,
                                 kvtc_error *err)
{
    if (kvtc_reader_left(r) < 4)
        return truncated(err, "the stream count");
    uint32_t n_stream = kvtc_get_u32(r);
    if (n_stream < 1 || n_stream > MAX_STREAMS)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "not a llama.cpp sequence state: stream count %u (1..%u)", n_stream,
                         MAX_STREAMS);
    w->layout.n_stream = n_stream;
    bool found = false;
    for (uint32_t s = 0; s < n_stream; s++) {
        if (kvtc_reader_left(r) < 4)
            return truncated(err, "a cell count");
        uint32_t cells = kvtc_get_u32(r);
        if (cells == 0)
            continue;
        if (found)
            return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                             "cells in streams %u and %u: a state of several sequences is not "
                             "supported (save one sequence)", w->layout.stream, s);
        found = true;
        w->layout.stream = s;
        w->cells = cells;
        for (uint32_t i = 0; i < cells; i++) {
            if (kvtc_reader_left(r) < 12)
                return truncated(err, "the cell list");
            int32_t pos = (int32_t)kvtc_get_u32(r);
            uint32_t n_seq = kvtc_get_u32(r);
            if (n_seq != 1)
                return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                                 "cell %u belongs to %u sequences: only cells of exactly one "
                                 "sequence are supported", i, n_seq);
            int32_t seq = (int32_t)kvtc_get_u32(r);
            if (i == 0) {
                if (pos < 0)
                    return kvtc_fail(err, KVTC_E_FORMAT, "cell 0 has position %d", pos);
                w->pos0 = pos;
                if (!w->seq_known)
                    w->layout.seq_id = seq;
                w->seq_known = true;
            }
            if (i > 0 && (int64_t)pos != (int64_t)w->pos0 + i)
                return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                                 "cell %u is at position %d after %lld: only consecutive "
                                 "positions are supported", i, pos, (long long)w->pos0 + i - 1);
            else if (seq != w->layout.seq_id)
                return kvtc_fail(err, KVTC_E_FORMAT, "cell %u is of sequence %d, the state of %d",
                                 i, seq, w->layout.seq_id);
            if (seq < 0)
                return kvtc_fail(err, KVTC_E_FORMAT, "cell %u has sequence id %d", i, seq);
        }
        if (kvtc_reader_left(r) < 8)
            return truncated(err, "the layer header");
        uint32_t v_trans = kvtc_get_u32(r), n_layer = kvtc_get_u32(r);
        if (v_trans > 1)
            return kvtc_fail(err, KVTC_E_FORMAT, "V transposition flag %u (0 or 1)", v_trans);
        if (n_layer < 1 || n_layer > MAX_LAYERS)
            return kvtc_fail(err, KVTC_E_FORMAT, "layer count %u (1..%u)", n_layer, MAX_LAYERS);
        w->layout.v_trans = v_trans;
        w->n_layer = n_layer;
        for (uint32_t l = 0; l < n_layer; l++) {
            if (kvtc_reader_left(r) < 12)
                return truncated(err, "a key layer header");
            int32_t type = (int32_t)kvtc_get_u32(r);
            uint64_t row = kvtc_get_u64(r);
            kvtc_status st = cell_type(type, row, &w->k_features, &w->dtype, l == 0, "key", l, err);
            if (st != KVTC_OK)
                return st;
            if (row > kvtc_reader_left(r) / cells)
                return truncated(err, "the key rows");
            const uint8_t *rows = kvtc_get_bytes(r, (size_t)row * cells);
            if (cache)
                rows_to_cache(cache, KVTC_KEY, l, rows);
        }
        for (uint32_t l = 0; l < n_layer; l++) {
            if (kvtc_reader_left(r) < 12) /* type + u64 row, or type + u32 el + u32 width */
                return truncated(err, "a value layer header");
            int32_t type = (int32_t)kvtc_get_u32(r);
            uint64_t row;
            if (v_trans) {
                uint32_t el = kvtc_get_u32(r), n_embd = kvtc_get_u32(r);
                kvtc_dtype d;
                if (dtype_of_ggml(type, &d) && el != kvtc_dtype_size(d))
                    return kvtc_fail(err, KVTC_E_FORMAT, "layer %u value element size %u for %s",
                                     l, el, ggml_type_name(type));
                row = (uint64_t)el * n_embd;
            } else
                row = kvtc_get_u64(r);
            kvtc_dtype vd = w->dtype;
            kvtc_status st = cell_type(type, row, &w->v_features, &vd, l == 0, "value", l, err);
            if (st != KVTC_OK)
                return st;
            if (vd != w->dtype)
                return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                                 "keys are %s but values %s: one cell type for both is needed",
                                 kvtc_dtype_name(w->dtype), kvtc_dtype_name(vd));
            if (row > kvtc_reader_left(r) / cells)
                return truncated(err, "the value rows");
            const uint8_t *rows = kvtc_get_bytes(r, (size_t)row * cells);
            if (cache)
                (v_trans ? vtrans_to_cache(cache, l, rows)
                         : rows_to_cache(cache, KVTC_VALUE, l, rows));
        }
    }
    if (kvtc_reader_left(r) != 0)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "%zu bytes after the sequence state (a model with more than one KV "
                         "cache, e.g. sliding-window or recurrent, is not supported)",
                         kvtc_reader_left(r));
    return KVTC_OK;
}

/* The whole input: a ggsq file, or the bare sequence data. */
static kvtc_status walk(const void *data, size_t len, state_walk *w, kvtc_cache *cache,
                        kvtc_error *err)
{
    kvtc_reader r;
    kvtc_reader_init(&r, data, len);
    memset(w, 0, sizeof *w);
    kvtc_llama_layout_default(&w->layout);
    w->layout.ggsq = 0;
    if (len >= 4 && kvtc_get_u32(&r) == GGSQ_MAGIC) {
        w->layout.ggsq = 1;
        if (kvtc_reader_left(&r) < 8)
            return truncated(err, "the ggsq header");
        uint32_t version = kvtc_get_u32(&r);
        if (version != GGSQ_VERSION)
            return kvtc_fail(err, KVTC_E_VERSION,
                             "llama.cpp sequence state version %u: only version %u is supported",
                             version, GGSQ_VERSION);
        w->n_ids = kvtc_get_u32(&r);
        if (w->n_ids > kvtc_reader_left(&r) / 4)
            return truncated(err, "the token list");
        w->ids = kvtc_get_bytes(&r, (size_t)w->n_ids * 4);
    } else {
        kvtc_reader_init(&r, data, len);
        if (len < 8 || kvtc_get_u32(&r) != BARE_MAGIC)
            return kvtc_fail(err, KVTC_E_FORMAT,
                             "not a llama.cpp sequence state (no ggsq or state magic)");
        w->layout.seq_id = (int32_t)kvtc_get_u32(&r); /* the cells must carry it too */
        w->seq_known = true;
        if (w->layout.seq_id < 0)
            return kvtc_fail(err, KVTC_E_FORMAT, "state of sequence %d", w->layout.seq_id);
    }
    return walk_seq_data(&r, w, cache, err);
}

static uint32_t id_at(const state_walk *w, uint32_t i)
{
    const uint8_t *p = w->ids + 4 * (size_t)i;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* llama-server saves its slot's prompt packed: LLAMA_TOKEN_NULL, version 1,
 * the count and the ids, then the media chunk count (0 for text). If so,
 * points ids at the plain ids and notes the packing in the layout. */
static bool server_token_list(state_walk *w)
{
    if (w->cells == 0 || w->n_ids != w->cells + 4 || id_at(w, 0) != UINT32_MAX || id_at(w, 1) != 1 ||
        id_at(w, 2) != w->cells || id_at(w, 3 + w->cells) != 0)
        return false;
    w->ids += 12;
    w->n_ids = w->cells;
    w->layout.server_tokens = 1;
    return true;
}

int kvtc_llama_state_detect(const void *data, size_t len)
{
    if (!data)
        return 0;
    if (len >= 4 && !memcmp(data, "qsgg", 4)) /* GGSQ_MAGIC, little-endian */
        return 1;
    if (len >= 4 && !memcmp(data, "\xd8\x3c\x14\xaf", 4)) /* BARE_MAGIC */
        return 2;
    return 0;
}

kvtc_status kvtc_llama_state_load(const void *data, size_t len, const kvtc_model_shape *shape,
                                  kvtc_cache **out, kvtc_llama_layout *layout, kvtc_error *err)
{
    if (!out || (!data && len))
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_llama_state_load: no input or output");
    *out = NULL;
    state_walk w;
    kvtc_status st = walk(data, len, &w, NULL, err);
    if (st != KVTC_OK)
        return st;
    if (!shape)
        return kvtc_fail(err, KVTC_E_INVALID,
                         "a llama.cpp state of %u layers x %u key features needs the model's "
                         "shape (heads, head size, RoPE: --model GGUF)", w.n_layer, w.k_features);
    if ((st = kvtc_shape_check(shape, err)) != KVTC_OK)
        return st;
    uint64_t feat = (uint64_t)shape->n_kv_head * shape->head_dim;
    if (w.cells > 0 && (w.n_layer != shape->n_layer || w.k_features != feat ||
                        w.v_features != feat))
        return kvtc_fail(err, KVTC_E_MISMATCH,
                         "state has %u layers of %u key and %u value features, the model %u "
                         "layers of %u x %u: another model's state", w.n_layer, w.k_features,
                         w.v_features, shape->n_layer, shape->n_kv_head, shape->head_dim);
    if (w.n_ids != 0 && w.n_ids != w.cells && !server_token_list(&w))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "state lists %u token ids for %u cells: only one id per cell, none, or "
                         "llama-server's list without media is supported", w.n_ids, w.cells);
    kvtc_cache *c;
    if ((st = kvtc_cache_create(shape, w.cells ? w.dtype : KVTC_F16, w.cells, w.pos0, &c, err)) !=
        KVTC_OK)
        return st;
    st = walk(data, len, &w, c, err);
    if (st == KVTC_OK && w.n_ids != w.cells)
        server_token_list(&w); /* checked above */
    if (st == KVTC_OK && w.n_ids) {
        if (!(c->token_ids = kvtc_malloc_array(w.n_ids, sizeof *c->token_ids)))
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u token ids", w.n_ids);
        else
            memcpy(c->token_ids, w.ids, (size_t)w.n_ids * 4);
    }
    if (st == KVTC_OK && layout)
        st = kvtc_struct_out(layout, &w.layout, sizeof w.layout, sizeof w.layout,
                             "llama.cpp layout", err);
    if (st != KVTC_OK) {
        kvtc_cache_free(c);
        return st;
    }
    *out = c;
    return KVTC_OK;
}

kvtc_status kvtc_llama_state_read(const char *path, const kvtc_model_shape *shape,
                                  kvtc_cache **out, kvtc_llama_layout *layout, kvtc_error *err)
{
    if (!path || !out)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_llama_state_read: no path or output");
    *out = NULL;
    void *buf;
    size_t len;
    kvtc_status st = kvtc_read_file(path, &buf, &len, err);
    if (st != KVTC_OK)
        return st;
    if ((st = kvtc_llama_state_load(buf, len, shape, out, layout, err)) != KVTC_OK)
        kvtc_fail_prefix(err, path);
    kvtc_buffer_free(buf);
    return st;
}

static void cache_to_rows(const kvtc_cache *c, kvtc_kind kind, uint32_t layer, kvtc_writer *w)
{
    size_t es = kvtc_dtype_size(c->dtype), hd = c->shape.head_dim;
    const uint8_t *src = kvtc_cache_data_const(c, kind, layer);
    for (uint32_t t = 0; t < c->n_tokens; t++)
        for (uint32_t h = 0; h < c->shape.n_kv_head; h++)
            kvtc_put_bytes(w, src + ((size_t)h * c->n_tokens + t) * hd * es, hd * es);
}

static void cache_to_vtrans(const kvtc_cache *c, uint32_t layer, kvtc_writer *w)
{
    size_t es = kvtc_dtype_size(c->dtype), hd = c->shape.head_dim, n = c->n_tokens;
    const uint8_t *src = kvtc_cache_data_const(c, KVTC_VALUE, layer);
    for (uint32_t h = 0; h < c->shape.n_kv_head; h++)
        for (size_t d = 0; d < hd; d++)
            for (size_t t = 0; t < n; t++)
                kvtc_put_bytes(w, src + ((h * n + t) * hd + d) * es, es);
}

kvtc_status kvtc_llama_state_save(const kvtc_cache *c, const kvtc_llama_layout *layout,
                                  void **out, size_t *out_len, kvtc_error *err)
{
    if (!c || !out || !out_len)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_llama_state_save: no cache or output");
    *out = NULL;
    *out_len = 0;
    kvtc_llama_layout l;
    kvtc_llama_layout_default(&l);
    kvtc_status st = layout ? kvtc_struct_in(&l, sizeof l, sizeof l, layout, "llama.cpp layout",
                                             err)
                            : KVTC_OK;
    if (st != KVTC_OK)
        return st;
    if (l.ggsq > 1 || l.v_trans > 1 || l.server_tokens > 1 || l.n_stream < 1 || l.n_stream > MAX_STREAMS ||
        l.stream >= l.n_stream || l.seq_id < 0)
        return kvtc_fail(err, KVTC_E_INVALID,
                         "llama.cpp layout out of range (ggsq %u, v_trans %u, stream %u of %u, "
                         "sequence %d)", l.ggsq, l.v_trans, l.stream, l.n_stream, l.seq_id);
    uint32_t n = c->n_tokens;
    if (n && (c->pos0 + n - 1 > INT32_MAX))
        return kvtc_fail(err, KVTC_E_INVALID,
                         "positions up to %lld do not fit llama.cpp's 32-bit positions",
                         (long long)(c->pos0 + n - 1));
    size_t es = kvtc_dtype_size(c->dtype);
    uint32_t feat = c->shape.n_kv_head * c->shape.head_dim;
    kvtc_writer w;
    kvtc_writer_init(&w);
    if (l.ggsq) {
        kvtc_put_u32(&w, GGSQ_MAGIC);
        kvtc_put_u32(&w, GGSQ_VERSION);
        bool packed = l.server_tokens && c->token_ids;
        kvtc_put_u32(&w, c->token_ids ? n + (packed ? 4 : 0) : 0);
        if (packed) {
            kvtc_put_u32(&w, UINT32_MAX); /* LLAMA_TOKEN_NULL */
            kvtc_put_u32(&w, 1);
            kvtc_put_u32(&w, n);
        }
        for (uint32_t i = 0; c->token_ids && i < n; i++)
            kvtc_put_u32(&w, (uint32_t)c->token_ids[i]);
        if (packed)
            kvtc_put_u32(&w, 0); /* no media chunks */
    } else {
        kvtc_put_u32(&w, BARE_MAGIC);
        kvtc_put_u32(&w, (uint32_t)l.seq_id);
    }
    kvtc_put_u32(&w, l.n_stream);
    for (uint32_t s = 0; s < l.n_stream; s++) {
        uint32_t cells = s == l.stream ? n : 0;
        kvtc_put_u32(&w, cells);
        if (cells == 0)
            continue;
        for (uint32_t i = 0; i < n; i++) {
            kvtc_put_u32(&w, (uint32_t)(c->pos0 + i));
            kvtc_put_u32(&w, 1);
            kvtc_put_u32(&w, (uint32_t)l.seq_id);
        }
        kvtc_put_u32(&w, l.v_trans);
        kvtc_put_u32(&w, c->shape.n_layer);
        for (uint32_t layer = 0; layer < c->shape.n_layer; layer++) {
            kvtc_put_u32(&w, (uint32_t)ggml_of_dtype(c->dtype));
            kvtc_put_u64(&w, (uint64_t)feat * es);
            cache_to_rows(c, KVTC_KEY, layer, &w);
        }
        for (uint32_t layer = 0; layer < c->shape.n_layer; layer++) {
            kvtc_put_u32(&w, (uint32_t)ggml_of_dtype(c->dtype));
            if (l.v_trans) {
                kvtc_put_u32(&w, (uint32_t)es);
                kvtc_put_u32(&w, feat);
                cache_to_vtrans(c, layer, &w);
            } else {
                kvtc_put_u64(&w, (uint64_t)feat * es);
                cache_to_rows(c, KVTC_VALUE, layer, &w);
            }
        }
    }
    if (w.failed) {
        kvtc_writer_free(&w);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a llama.cpp state of %u cells", n);
    }
    *out = w.buf;
    *out_len = w.len;
    return KVTC_OK;
}

kvtc_status kvtc_llama_state_write(const kvtc_cache *cache, const kvtc_llama_layout *layout,
                                   const char *path, kvtc_error *err)
{
    if (!path)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_llama_state_write: no path");
    void *buf;
    size_t len;
    kvtc_status st = kvtc_llama_state_save(cache, layout, &buf, &len, err);
    if (st != KVTC_OK)
        return st;
    st = kvtc_write_file_atomic(path, buf, len, err);
    kvtc_buffer_free(buf);
    return st;
}
