/* KV caches as safetensors files (docs/FORMAT.md, section 3): an 8-byte
 * little-endian header length N, N bytes of JSON describing the tensors
 * "layers.{i}.key" / "layers.{i}.value" and the rope metadata, then the data.
 * Every field is checked before it sizes an allocation or an access. */
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c copies tensor bytes as they are: it needs a little-endian host"
#endif

/* The reference implementation's limit on the header, which we share so that
 * what we write, it can read. */
#define MAX_HEADER_LEN 100000000u
#define PREFIX_LEN 8

/* ---- where the bytes come from: a buffer, or a file read piece by piece ---- */

typedef struct source {
    const unsigned char *mem; /* the whole file, or NULL to read from fd */
    int fd;
    uint64_t size;
} source;

static kvtc_status source_read(const source *src, uint64_t off, void *dst, size_t n,
                               kvtc_error *err)
{
    if (src->mem) {
        memcpy(dst, src->mem + off, n);
        return KVTC_OK;
    }
    unsigned char *p = dst;
    while (n > 0) {
        ssize_t got = pread(src->fd, p, n, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return kvtc_fail(err, KVTC_E_IO, "read failed: %s", strerror(errno));
        if (got == 0)
            return kvtc_fail(err, KVTC_E_TRUNCATED, "file shrank while being read");
        p += got;
        off += (uint64_t)got;
        n -= (size_t)got;
    }
    return KVTC_OK;
}

/* ---- the header ---------------------------------------------------------------- */

typedef struct tensor_info {
    const kvtc_json_value *json;
    uint64_t begin, end;
    uint32_t layer;
    kvtc_kind kind;
} tensor_info;

static const char *kind_name(kvtc_kind kind) { return kind == KVTC_KEY ? "key" : "value"; }

/* "layers.{i}.key" or "layers.{i}.value", i in decimal without leading zeros. */
static bool parse_tensor_name(const char *name, size_t len, uint64_t *layer, kvtc_kind *kind)
{
    static const char prefix[] = "layers.";
    size_t np = sizeof prefix - 1;
    if (len <= np || memcmp(name, prefix, np) != 0)
        return false;
    const char *dot = memchr(name + np, '.', len - np);
    if (!dot || !kvtc_parse_u64(name + np, (size_t)(dot - name) - np, layer))
        return false;
    const char *rest = dot + 1;
    size_t rest_len = len - (size_t)(rest - name);
    if (rest_len == 3 && memcmp(rest, "key", 3) == 0)
        *kind = KVTC_KEY;
    else if (rest_len == 5 && memcmp(rest, "value", 5) == 0)
        *kind = KVTC_VALUE;
    else
        return false;
    return true;
}

static bool parse_dtype(const char *s, kvtc_dtype *dtype)
{
    static const kvtc_dtype all[] = {KVTC_F32, KVTC_F16, KVTC_BF16};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, kvtc_dtype_name(all[i])) == 0) {
            *dtype = all[i];
            return true;
        }
    return false;
}

/* An array of exactly n non-negative integers. */
static bool u64_array(const kvtc_json_value *v, uint32_t n, uint64_t *out)
{
    if (!v || v->type != KVTC_JSON_ARRAY || v->count != n)
        return false;
    const kvtc_json_value *item = v->child;
    for (uint32_t i = 0; i < n; i++, item = item->next)
        if (!kvtc_json_u64(item, &out[i]))
            return false;
    return true;
}

/* Reads dtype, shape and data_offsets of one tensor entry. */
static kvtc_status parse_tensor_entry(const kvtc_json_value *entry, kvtc_dtype *dtype,
                                      uint64_t shape[3], tensor_info *t, kvtc_error *err)
{
    const char *name = entry->key;
    if (entry->type != KVTC_JSON_OBJECT)
        return kvtc_fail(err, KVTC_E_FORMAT, "tensor \"%s\": entry is a %s, not an object", name,
                         kvtc_json_type_name(entry->type));
    for (const kvtc_json_value *f = entry->child; f; f = f->next)
        if (strcmp(f->key, "dtype") && strcmp(f->key, "shape") && strcmp(f->key, "data_offsets"))
            return kvtc_fail(err, KVTC_E_FORMAT, "tensor \"%s\": unknown field \"%.40s\"", name,
                             f->key);
    const kvtc_json_value *d = kvtc_json_get(entry, "dtype");
    if (!d || d->type != KVTC_JSON_STRING)
        return kvtc_fail(err, KVTC_E_FORMAT, "tensor \"%s\": missing dtype string", name);
    if (!parse_dtype(d->str, dtype))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "tensor \"%s\": dtype \"%.20s\" not supported (F32, F16 or BF16)", name,
                         d->str);
    if (!u64_array(kvtc_json_get(entry, "shape"), 3, shape))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "tensor \"%s\": shape must be [n_kv_heads, n_tokens, head_dim]", name);
    uint64_t offsets[2];
    if (!u64_array(kvtc_json_get(entry, "data_offsets"), 2, offsets))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "tensor \"%s\": data_offsets must be two non-negative integers", name);
    t->begin = offsets[0];
    t->end = offsets[1];
    return KVTC_OK;
}

/* A metadata value, or NULL when absent. */
static const char *meta_string(const kvtc_json_value *meta, const char *key)
{
    const kvtc_json_value *v = kvtc_json_get(meta, key);
    return v ? v->str : NULL;
}

static kvtc_status meta_double(const kvtc_json_value *meta, const char *key, double *out,
                               kvtc_error *err)
{
    const char *s = meta_string(meta, key);
    if (s && !kvtc_parse_double(s, strlen(s), out))
        return kvtc_fail(err, KVTC_E_FORMAT, "metadata %s \"%.40s\" is not a number", key, s);
    return KVTC_OK;
}

static kvtc_status meta_u64(const kvtc_json_value *meta, const char *key, uint64_t max,
                            uint64_t *out, kvtc_error *err)
{
    const char *s = meta_string(meta, key);
    if (s && (!kvtc_parse_u64(s, strlen(s), out) || *out > max))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "metadata %s \"%.40s\" is not an integer in [0, %llu]", key, s,
                         (unsigned long long)max);
    return KVTC_OK;
}

/* Rope settings, pos0 and the model name from __metadata__ (may be NULL). */
static kvtc_status parse_metadata(const kvtc_json_value *meta, kvtc_model_shape *shape,
                                  int64_t *pos0, char model[64], kvtc_error *err)
{
    if (meta) {
        if (meta->type != KVTC_JSON_OBJECT)
            return kvtc_fail(err, KVTC_E_FORMAT, "__metadata__ is a %s, not an object",
                             kvtc_json_type_name(meta->type));
        for (const kvtc_json_value *v = meta->child; v; v = v->next)
            if (v->type != KVTC_JSON_STRING)
                return kvtc_fail(err, KVTC_E_FORMAT, "metadata %.40s is a %s, not a string",
                                 v->key, kvtc_json_type_name(v->type));
    }
    const char *style = meta_string(meta, "rope_style");
    if (!style || strcmp(style, "interleaved") == 0)
        shape->rope_style = KVTC_ROPE_INTERLEAVED;
    else if (strcmp(style, "neox") == 0)
        shape->rope_style = KVTC_ROPE_NEOX;
    else if (strcmp(style, "none") == 0)
        shape->rope_style = KVTC_ROPE_NONE;
    else
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "metadata rope_style \"%.40s\" unknown (interleaved, neox or none)",
                         style);
    if (shape->rope_style != KVTC_ROPE_NONE && !meta_string(meta, "rope_theta"))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "metadata rope_theta is missing (required unless rope_style is none)");
    shape->rope_theta = 0;
    shape->rope_freq_scale = 1;
    uint64_t rope_dims = shape->head_dim, start = 0;
    kvtc_status st;
    if ((st = meta_double(meta, "rope_theta", &shape->rope_theta, err)) != KVTC_OK ||
        (st = meta_double(meta, "rope_freq_scale", &shape->rope_freq_scale, err)) != KVTC_OK ||
        (st = meta_u64(meta, "rope_dims", UINT32_MAX, &rope_dims, err)) != KVTC_OK ||
        (st = meta_u64(meta, "pos0", (uint64_t)KVTC_MAX_POSITION, &start, err)) != KVTC_OK)
        return st;
    shape->rope_dims = (uint32_t)rope_dims;
    *pos0 = (int64_t)start;
    /* The model name is informational: keep what fits, cut at a character boundary. */
    const char *name = meta_string(meta, "model");
    size_t n = name ? strlen(name) : 0;
    if (n > 63) {
        n = 63;
        while (n > 0 && ((unsigned char)name[n] & 0xc0) == 0x80)
            n--;
    }
    if (n)
        memcpy(model, name, n);
    model[n] = '\0';
    return KVTC_OK;
}

static int compare_begin(const void *a, const void *b)
{
    const tensor_info *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Everything the header says, checked against itself and the data size. */
typedef struct header_info {
    kvtc_model_shape shape;
    kvtc_dtype dtype;
    uint32_t n_tokens;
    int64_t pos0;
    char model[64];
    tensor_info *tensors; /* [layer][kind], 2 * n_layer */
} header_info;

static kvtc_status parse_header(const kvtc_json *doc, uint64_t data_len, header_info *h,
                                kvtc_error *err)
{
    const kvtc_json_value *root = kvtc_json_root(doc);
    if (root->type != KVTC_JSON_OBJECT)
        return kvtc_fail(err, KVTC_E_FORMAT, "header is a JSON %s, not an object",
                         kvtc_json_type_name(root->type));
    const kvtc_json_value *meta = kvtc_json_get(root, "__metadata__");
    uint32_t n_tensors = root->count - (meta != NULL);
    if (n_tensors == 0)
        return kvtc_fail(err, KVTC_E_FORMAT, "no tensors (expected layers.N.key/value)");
    /* Layers are numbered 0..L-1 with two tensors each, so a complete file has
     * no index at or above ceil(n_tensors / 2): that bounds the table before
     * any index is trusted. */
    uint32_t max_layers = n_tensors / 2 + n_tensors % 2;
    h->tensors = kvtc_calloc((size_t)max_layers * 2, sizeof *h->tensors);
    if (!h->tensors)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u tensors", n_tensors);

    uint32_t n_layer = 0;
    uint64_t shape[3] = {0}, first_shape[3] = {0};
    const char *first_name = NULL;
    kvtc_status st;
    for (const kvtc_json_value *e = root->child; e; e = e->next) {
        if (e == meta)
            continue;
        uint64_t layer;
        kvtc_kind kind;
        if (!parse_tensor_name(e->key, e->key_len, &layer, &kind))
            return kvtc_fail(err, KVTC_E_FORMAT,
                             "unknown tensor \"%.80s\" (expected layers.N.key or layers.N.value)",
                             e->key);
        if (layer >= max_layers) {
            /* Then some lower layer must be missing: reported below. */
            n_layer = max_layers;
            continue;
        }
        tensor_info *t = &h->tensors[layer * 2 + kind];
        t->json = e;
        t->layer = (uint32_t)layer;
        t->kind = kind;
        if (layer + 1 > n_layer)
            n_layer = (uint32_t)layer + 1;
        kvtc_dtype dtype = KVTC_F32;
        if ((st = parse_tensor_entry(e, &dtype, shape, t, err)) != KVTC_OK)
            return st;
        if (!first_name) {
            first_name = e->key;
            h->dtype = dtype;
            memcpy(first_shape, shape, sizeof shape);
        } else if (dtype != h->dtype) {
            return kvtc_fail(err, KVTC_E_FORMAT, "tensor \"%s\" is %s but \"%s\" is %s", e->key,
                             kvtc_dtype_name(dtype), first_name, kvtc_dtype_name(h->dtype));
        } else if (memcmp(shape, first_shape, sizeof shape) != 0) {
            return kvtc_fail(err, KVTC_E_FORMAT,
                             "tensor \"%s\" has shape [%llu, %llu, %llu] but \"%s\" has "
                             "[%llu, %llu, %llu]",
                             e->key, (unsigned long long)shape[0], (unsigned long long)shape[1],
                             (unsigned long long)shape[2], first_name,
                             (unsigned long long)first_shape[0],
                             (unsigned long long)first_shape[1],
                             (unsigned long long)first_shape[2]);
        }
    }
    for (uint32_t l = 0; l < n_layer; l++)
        for (int k = 0; k < 2; k++)
            if (!h->tensors[l * 2 + k].json)
                return kvtc_fail(err, KVTC_E_FORMAT, "missing tensor layers.%u.%s", l,
                                 kind_name((kvtc_kind)k));

    if (first_shape[0] < 1 || first_shape[0] > UINT32_MAX || first_shape[1] > UINT32_MAX ||
        first_shape[2] < 1 || first_shape[2] > UINT32_MAX)
        return kvtc_fail(err, KVTC_E_FORMAT, "tensor shape [%llu, %llu, %llu] out of range",
                         (unsigned long long)first_shape[0], (unsigned long long)first_shape[1],
                         (unsigned long long)first_shape[2]);
    h->shape.n_layer = n_layer;
    h->shape.n_kv_head = (uint32_t)first_shape[0];
    h->shape.head_dim = (uint32_t)first_shape[2];
    h->n_tokens = (uint32_t)first_shape[1];
    if ((st = parse_metadata(meta, &h->shape, &h->pos0, h->model, err)) != KVTC_OK ||
        (st = kvtc_shape_check(&h->shape, err)) != KVTC_OK)
        return st;

    /* Bounded by the shape check, so this cannot overflow 64 bits. */
    uint64_t tensor_bytes = (uint64_t)h->shape.n_kv_head * h->shape.head_dim * h->n_tokens *
                            kvtc_dtype_size(h->dtype);
    tensor_info *sorted = kvtc_malloc_array((size_t)n_layer * 2, sizeof *sorted);
    if (!sorted)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u tensors", n_tensors);
    memcpy(sorted, h->tensors, (size_t)n_layer * 2 * sizeof *sorted);
    qsort(sorted, (size_t)n_layer * 2, sizeof *sorted, compare_begin);
    /* The tensors must tile the data section exactly, as the reference
     * implementation requires: no gap, no overlap, nothing after the last. */
    uint64_t expected_begin = 0;
    st = KVTC_OK;
    for (uint32_t i = 0; i < n_layer * 2 && st == KVTC_OK; i++) {
        const tensor_info *t = &sorted[i];
        const char *name = t->json->key;
        if (t->end < t->begin || t->end - t->begin != tensor_bytes)
            st = kvtc_fail(err, KVTC_E_FORMAT,
                           "tensor \"%s\": data_offsets [%llu, %llu) should span %llu bytes",
                           name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)tensor_bytes);
        else if (t->end > data_len)
            st = kvtc_fail(err, KVTC_E_TRUNCATED,
                           "tensor \"%s\": data_offsets [%llu, %llu) run past the end of the "
                           "%llu-byte data section",
                           name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)data_len);
        else if (t->begin < expected_begin)
            st = kvtc_fail(err, KVTC_E_FORMAT, "tensor \"%s\" overlaps \"%s\"", name,
                           sorted[i - 1].json->key);
        else if (t->begin > expected_begin)
            st = kvtc_fail(err, KVTC_E_FORMAT, "gap of %llu bytes before tensor \"%s\"",
                           (unsigned long long)(t->begin - expected_begin), name);
        expected_begin = t->end;
    }
    kvtc_free(sorted);
    if (st == KVTC_OK && expected_begin != data_len)
        st = kvtc_fail(err, KVTC_E_FORMAT, "%llu bytes after the last tensor",
                       (unsigned long long)(data_len - expected_begin));
    return st;
}

static kvtc_status load(const source *src, kvtc_cache **out, kvtc_error *err)
{
    *out = NULL;
    unsigned char prefix[PREFIX_LEN];
    if (src->size < PREFIX_LEN)
        return kvtc_fail(err, KVTC_E_TRUNCATED,
                         "%llu bytes is too short for a safetensors file",
                         (unsigned long long)src->size);
    kvtc_status st = source_read(src, 0, prefix, PREFIX_LEN, err);
    if (st != KVTC_OK)
        return st;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = (header_len << 8) | prefix[i];
    if (header_len < 2 || header_len > MAX_HEADER_LEN)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "not a safetensors file: header length %llu out of range",
                         (unsigned long long)header_len);
    if (header_len > src->size - PREFIX_LEN)
        return kvtc_fail(err, KVTC_E_TRUNCATED,
                         "header length %llu runs past the end of the %llu-byte file",
                         (unsigned long long)header_len, (unsigned long long)src->size);

    char *header_copy = NULL;
    const char *header = (const char *)src->mem + PREFIX_LEN;
    if (!src->mem) {
        if (!(header_copy = kvtc_malloc((size_t)header_len)))
            return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a %llu-byte header",
                             (unsigned long long)header_len);
        if ((st = source_read(src, PREFIX_LEN, header_copy, (size_t)header_len, err)) != KVTC_OK) {
            kvtc_free(header_copy);
            return st;
        }
        header = header_copy;
    }
    kvtc_json *doc = NULL;
    header_info h = {0};
    kvtc_cache *cache = NULL;
    if (header[0] != '{') {
        st = kvtc_fail(err, KVTC_E_FORMAT, "not a safetensors file: header does not start with '{'");
        goto done;
    }
    if ((st = kvtc_json_parse(header, (size_t)header_len, &doc, err)) != KVTC_OK) {
        kvtc_fail_prefix(err, "safetensors header");
        goto done;
    }
    uint64_t data_start = PREFIX_LEN + header_len;
    if ((st = parse_header(doc, src->size - data_start, &h, err)) != KVTC_OK)
        goto done;
    if ((st = kvtc_cache_create(&h.shape, h.dtype, h.n_tokens, h.pos0, &cache, err)) != KVTC_OK)
        goto done;
    memcpy(cache->model, h.model, sizeof cache->model);
    for (uint32_t i = 0; i < h.shape.n_layer * 2 && st == KVTC_OK; i++) {
        const tensor_info *t = &h.tensors[i];
        st = source_read(src, data_start + t->begin, kvtc_cache_data(cache, t->kind, t->layer),
                         (size_t)(t->end - t->begin), err);
    }
    if (st == KVTC_OK) {
        *out = cache;
        cache = NULL;
    }
done:
    kvtc_cache_free(cache);
    kvtc_free(h.tensors);
    kvtc_json_free(doc);
    kvtc_free(header_copy);
    return st;
}

kvtc_status kvtc_cache_load_safetensors(const void *data, size_t len, kvtc_cache **out,
                                        kvtc_error *err)
{
    if (!out || (!data && len))
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_cache_load_safetensors: no data or output");
    source src = {.mem = data ? data : (const unsigned char *)"", .fd = -1, .size = len};
    return load(&src, out, err);
}

kvtc_status kvtc_cache_read_safetensors(const char *path, kvtc_cache **out, kvtc_error *err)
{
    if (!path || !out)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_cache_read_safetensors: no path or output");
    *out = NULL;
    /* Tensors are read straight into the cache, so a large file is never held twice. */
    size_t size;
    int fd = kvtc_open_regular(path, &size, err);
    if (fd < 0)
        return KVTC_E_IO; /* err says why */
    source src = {.mem = NULL, .fd = fd, .size = size};
    kvtc_status st = load(&src, out, err);
    if (st != KVTC_OK)
        kvtc_fail_prefix(err, path);
    close(fd);
    return st;
}

/* ---- writing -------------------------------------------------------------------- */

static void put_meta(kvtc_json_writer *jw, const char *key, const char *value)
{
    kvtc_jw_key(jw, key);
    kvtc_jw_string(jw, value);
}

/* The 8-byte length and the JSON header, padded with spaces to a multiple of 8. */
static kvtc_status build_header(const kvtc_cache *c, kvtc_writer *w, kvtc_error *err)
{
    const kvtc_model_shape *s = &c->shape;
    static const char *const styles[] = {"none", "interleaved", "neox"};
    uint64_t tensor_bytes =
        (uint64_t)s->n_kv_head * c->n_tokens * s->head_dim * kvtc_dtype_size(c->dtype);
    char num[KVTC_NUMBER_BUF], dims[16], start[24];
    snprintf(dims, sizeof dims, "%u", s->rope_dims);
    snprintf(start, sizeof start, "%lld", (long long)c->pos0);

    kvtc_put_u64(w, 0); /* patched below */
    kvtc_json_writer jw;
    kvtc_jw_init(&jw, w, false);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "__metadata__");
    kvtc_jw_begin_object(&jw);
    put_meta(&jw, "model", c->model);
    put_meta(&jw, "pos0", start);
    put_meta(&jw, "rope_dims", dims);
    put_meta(&jw, "rope_freq_scale", kvtc_format_double(s->rope_freq_scale, num));
    put_meta(&jw, "rope_style", styles[s->rope_style]);
    put_meta(&jw, "rope_theta", kvtc_format_double(s->rope_theta, num));
    kvtc_jw_end_object(&jw);
    uint64_t offset = 0;
    for (uint32_t l = 0; l < s->n_layer; l++)
        for (int k = 0; k < 2; k++) {
            char name[48];
            snprintf(name, sizeof name, "layers.%u.%s", l, kind_name((kvtc_kind)k));
            kvtc_jw_key(&jw, name);
            kvtc_jw_begin_object(&jw);
            kvtc_jw_key(&jw, "dtype");
            kvtc_jw_string(&jw, kvtc_dtype_name(c->dtype));
            kvtc_jw_key(&jw, "shape");
            kvtc_jw_begin_array(&jw);
            kvtc_jw_uint(&jw, s->n_kv_head);
            kvtc_jw_uint(&jw, c->n_tokens);
            kvtc_jw_uint(&jw, s->head_dim);
            kvtc_jw_end_array(&jw);
            kvtc_jw_key(&jw, "data_offsets");
            kvtc_jw_begin_array(&jw);
            kvtc_jw_uint(&jw, offset);
            kvtc_jw_uint(&jw, offset + tensor_bytes);
            kvtc_jw_end_array(&jw);
            kvtc_jw_end_object(&jw);
            offset += tensor_bytes;
        }
    kvtc_jw_end_object(&jw);
    while (w->len % 8 != 0)
        kvtc_put_u8(w, ' ');
    if (w->failed)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a safetensors header");
    uint64_t header_len = w->len - PREFIX_LEN;
    for (int i = 0; i < 8; i++)
        w->buf[i] = (unsigned char)(header_len >> (8 * i));
    return KVTC_OK;
}

static size_t layer_bytes(const kvtc_cache *c)
{
    return (size_t)c->shape.n_kv_head * c->n_tokens * c->shape.head_dim *
           kvtc_dtype_size(c->dtype);
}

/* The two writers below send each tensor out as one span of a packed cache. */
static kvtc_status save_packed(const kvtc_cache *cache, void **out, size_t *out_len,
                               kvtc_error *err)
{
    *out = NULL;
    *out_len = 0;
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_status st = build_header(cache, &w, err);
    if (st != KVTC_OK) {
        kvtc_writer_free(&w);
        return st;
    }
    size_t per_tensor = layer_bytes(cache), n_tensors = (size_t)cache->shape.n_layer * 2;
    size_t total = w.len + per_tensor * n_tensors; /* the cache already holds this many bytes */
    unsigned char *buf = kvtc_malloc(total);
    if (!buf) {
        kvtc_writer_free(&w);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a %zu-byte safetensors file",
                         total);
    }
    memcpy(buf, w.buf, w.len);
    unsigned char *p = buf + w.len;
    for (uint32_t l = 0; l < cache->shape.n_layer; l++)
        for (int k = 0; k < 2; k++, p += per_tensor)
            memcpy(p, kvtc_cache_data_const(cache, (kvtc_kind)k, l), per_tensor);
    kvtc_writer_free(&w);
    *out = buf;
    *out_len = total;
    return KVTC_OK;
}

static kvtc_status write_packed(const kvtc_cache *cache, const char *path, kvtc_error *err)
{
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_status st = build_header(cache, &w, err);
    size_t n_parts = 1 + (size_t)cache->shape.n_layer * 2;
    kvtc_span *parts = NULL;
    if (st == KVTC_OK && !(parts = kvtc_malloc_array(n_parts, sizeof *parts)))
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    if (st == KVTC_OK) {
        parts[0] = (kvtc_span){w.buf, w.len};
        for (uint32_t l = 0; l < cache->shape.n_layer; l++)
            for (int k = 0; k < 2; k++)
                parts[1 + l * 2 + k] = (kvtc_span){kvtc_cache_data_const(cache, (kvtc_kind)k, l),
                                                   layer_bytes(cache)};
        st = kvtc_write_parts_atomic(path, parts, n_parts, err);
    } else {
        kvtc_fail_prefix(err, path);
    }
    kvtc_free(parts);
    kvtc_writer_free(&w);
    return st;
}

kvtc_status kvtc_cache_save_safetensors(const kvtc_cache *cache, void **out, size_t *out_len,
                                        kvtc_error *err)
{
    if (!cache || !out || !out_len)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_cache_save_safetensors: no cache or output");
    const kvtc_cache *packed;
    kvtc_cache *copy;
    kvtc_status st = kvtc_cache_packed(cache, &packed, &copy, err);
    if (st == KVTC_OK)
        st = save_packed(packed, out, out_len, err);
    kvtc_cache_free(copy);
    return st;
}

kvtc_status kvtc_cache_write_safetensors(const kvtc_cache *cache, const char *path,
                                         kvtc_error *err)
{
    if (!cache || !path)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_cache_write_safetensors: no cache or path");
    const kvtc_cache *packed;
    kvtc_cache *copy;
    kvtc_status st = kvtc_cache_packed(cache, &packed, &copy, err);
    if (st == KVTC_OK)
        st = write_packed(packed, path, err);
    else
        kvtc_fail_prefix(err, path);
    kvtc_cache_free(copy);
    return st;
}

/* ---- decompressing straight into a file ------------------------------------ */

typedef struct layer_writer {
    kvtc_outfile *f;
    size_t layer_bytes;
    kvtc_error err; /* its own: the decoder's "stopped" message would replace it */
    kvtc_status st;
} layer_writer;

static int write_layer(void *user, uint32_t layer, const void *key, const void *value)
{
    (void)layer;
    layer_writer *lw = user;
    lw->st = kvtc_outfile_write(lw->f, key, lw->layer_bytes, &lw->err);
    if (lw->st == KVTC_OK)
        lw->st = kvtc_outfile_write(lw->f, value, lw->layer_bytes, &lw->err);
    return lw->st != KVTC_OK;
}

kvtc_status kvtc_decompress_to_safetensors(const kvtc_calibration *cal, const void *data,
                                           size_t len, const kvtc_decompress_options *opt,
                                           const char *path, kvtc_error *err)
{
    if (!path)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_decompress_to_safetensors: no path");
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_status st = kvtc_stream_info_get(data, len, &info, err);
    if (st != KVTC_OK)
        return st;
    /* The header needs the cache's description, not its data. */
    kvtc_cache described = {.shape = info.shape, .dtype = info.dtype, .n_tokens = info.n_tokens,
                            .pos0 = info.pos0};
    memcpy(described.model, info.model_name, sizeof described.model);
    kvtc_writer w;
    kvtc_writer_init(&w);
    if ((st = build_header(&described, &w, err)) != KVTC_OK) {
        kvtc_writer_free(&w);
        return st;
    }
    kvtc_outfile f;
    if ((st = kvtc_outfile_open(&f, path, err)) == KVTC_OK &&
        (st = kvtc_outfile_write(&f, w.buf, w.len, err)) == KVTC_OK) {
        layer_writer lw = {.f = &f, .layer_bytes = layer_bytes(&described), .st = KVTC_OK};
        st = kvtc_decompress_layers(cal, data, len, opt, write_layer, &lw, err);
        if (st == KVTC_E_CANCELLED && lw.st != KVTC_OK) {
            st = lw.st; /* the write failed, and said why */
            if (err)
                *err = lw.err;
        }
        if (st == KVTC_OK)
            st = kvtc_outfile_commit(&f, err);
        else
            kvtc_outfile_abort(&f);
    }
    kvtc_writer_free(&w);
    return st;
}
