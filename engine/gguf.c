/* GGUF reader. The file is parsed once, up front: every count is bounded by the
 * bytes left before anything is allocated for it, every string and tensor lies
 * inside the buffer, and keys and tensor names are indexed by hash so that
 * lookups (and the duplicate checks) stay fast on hostile files. */
#include "gguf.h"

#include "kvtc_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define KVTC_GGUF_DEFAULT_ALIGNMENT 32
#define KVTC_GGUF_MAX_NAME 65535u    /* longest key or tensor name accepted */
#define KVTC_GGUF_MAX_ARRAY_DEPTH 4  /* arrays of arrays nest at most this deep */
/* The smallest encodings, used to bound counts by the bytes left:
 * a key/value is a name length, a 1-byte name, a type and a 1-byte value;
 * a tensor info is a name length, a 1-byte name, n_dims, one dim, a type and
 * an offset; a nested array element is its element type and count. */
#define KVTC_GGUF_MIN_KV_BYTES (8 + 1 + 4 + 1)
#define KVTC_GGUF_MIN_TENSOR_BYTES (8 + 1 + 4 + 8 + 4 + 8)
#define KVTC_GGUF_MIN_ARRAY_BYTES (4 + 8)

typedef struct kvtc_gguf_kv {
    const char *key;              /* NUL-terminated, in the names blob */
    uint32_t type;                /* kvtc_gguf_value_type */
    const unsigned char *value;   /* scalar bytes; string bytes; first array element */
    uint32_t key_len;
    uint64_t str_len;             /* STRING */
    uint32_t elem_type;           /* ARRAY */
    uint64_t count;               /* ARRAY */
    size_t *str_pos;              /* ARRAY of STRING: buffer offset of each length field */
} kvtc_gguf_kv;

typedef struct tensor_rec {
    kvtc_gguf_tensor t;
    uint64_t offset; /* from the start of the data section */
    uint32_t name_len;
} tensor_rec;

/* Hash index of names: slot holds index + 1, 0 when empty. */
typedef struct name_index {
    uint32_t *slots;
    size_t mask;
} name_index;

struct kvtc_gguf_file {
    const unsigned char *buf;
    size_t len;
    const void *map; /* kvtc_gguf_open's mapping, NULL for kvtc_gguf_load */
    size_t map_len;
    uint32_t version;
    uint64_t alignment;
    uint64_t n_kv, n_tensors;
    kvtc_gguf_kv *kvs;
    tensor_rec *tensors;
    char *names; /* all keys and tensor names, NUL-terminated */
    name_index kv_index, tensor_index;
};

/* ---- ggml types ------------------------------------------------------------- */

typedef struct kvtc_ggml_type_info {
    uint32_t type;
    const char *name;
    uint32_t block_elems, block_bytes;
} kvtc_ggml_type_info;

/* Block layouts of ggml-common.h (e.g. Q4_1: fp16 d, fp16 m, 16 bytes of nibbles). */
static const kvtc_ggml_type_info kvtc_ggml_types[] = {
    {KVTC_GGML_F32, "f32", 1, 4},       {KVTC_GGML_F16, "f16", 1, 2},
    {KVTC_GGML_BF16, "bf16", 1, 2},     {KVTC_GGML_Q4_0, "q4_0", 32, 18},
    {KVTC_GGML_Q4_1, "q4_1", 32, 20},   {KVTC_GGML_Q5_0, "q5_0", 32, 22},
    {KVTC_GGML_Q5_1, "q5_1", 32, 24},   {KVTC_GGML_Q8_0, "q8_0", 32, 34},
    {KVTC_GGML_Q8_1, "q8_1", 32, 36},   {KVTC_GGML_Q2_K, "q2_K", 256, 84},
    {KVTC_GGML_Q3_K, "q3_K", 256, 110}, {KVTC_GGML_Q4_K, "q4_K", 256, 144},
    {KVTC_GGML_Q5_K, "q5_K", 256, 176}, {KVTC_GGML_Q6_K, "q6_K", 256, 210},
    {KVTC_GGML_Q8_K, "q8_K", 256, 292},
};

static const kvtc_ggml_type_info *kvtc_ggml_type_lookup(uint32_t type)
{
    for (size_t i = 0; i < sizeof kvtc_ggml_types / sizeof kvtc_ggml_types[0]; i++)
        if (kvtc_ggml_types[i].type == type)
            return &kvtc_ggml_types[i];
    return NULL;
}

const char *kvtc_ggml_type_name(uint32_t type)
{
    const kvtc_ggml_type_info *t = kvtc_ggml_type_lookup(type);
    return t ? t->name : "unknown";
}

bool kvtc_ggml_type_block(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes)
{
    const kvtc_ggml_type_info *t = kvtc_ggml_type_lookup(type);
    if (!t)
        return false;
    if (block_elems)
        *block_elems = t->block_elems;
    if (block_bytes)
        *block_bytes = t->block_bytes;
    return true;
}

/* Bytes of one element of a numeric value type; 0 for STRING, ARRAY, unknown. */
static size_t kvtc_gguf_scalar_size(uint32_t type)
{
    switch (type) {
    case KVTC_GGUF_UINT8:
    case KVTC_GGUF_INT8:
    case KVTC_GGUF_BOOL: return 1;
    case KVTC_GGUF_UINT16:
    case KVTC_GGUF_INT16: return 2;
    case KVTC_GGUF_UINT32:
    case KVTC_GGUF_INT32:
    case KVTC_GGUF_FLOAT32: return 4;
    case KVTC_GGUF_UINT64:
    case KVTC_GGUF_INT64:
    case KVTC_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static uint64_t load_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- name index --------------------------------------------------------------- */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

typedef const char *(*name_at_fn)(const kvtc_gguf_file *f, uint32_t i);

static const char *kv_name_at(const kvtc_gguf_file *f, uint32_t i) { return f->kvs[i].key; }
static const char *tensor_name_at(const kvtc_gguf_file *f, uint32_t i) { return f->tensors[i].t.name; }

static int64_t index_find(const kvtc_gguf_file *f, const name_index *ix, name_at_fn name_at,
                          const char *name)
{
    if (!ix->slots || !name)
        return -1;
    for (size_t s = (size_t)hash_name(name) & ix->mask;; s = (s + 1) & ix->mask) {
        uint32_t v = ix->slots[s];
        if (v == 0)
            return -1;
        if (strcmp(name_at(f, v - 1), name) == 0)
            return v - 1;
    }
}

/* Indexes names 0..n-1; fails on a duplicate (what = "key" or "tensor"). */
static kvtc_status index_build(const kvtc_gguf_file *f, name_index *ix, name_at_fn name_at,
                               uint64_t n, const char *what, kvtc_error *err)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    ix->slots = kvtc_calloc(cap, sizeof *ix->slots);
    if (!ix->slots)
        return kvtc_fail(err, KVTC_E_NOMEM, "gguf: out of memory for the %s index", what);
    ix->mask = cap - 1;
    for (uint32_t i = 0; i < n; i++) {
        const char *name = name_at(f, i);
        size_t s = (size_t)hash_name(name) & ix->mask;
        for (; ix->slots[s]; s = (s + 1) & ix->mask)
            if (strcmp(name_at(f, ix->slots[s] - 1), name) == 0)
                return kvtc_fail(err, KVTC_E_FORMAT, "gguf: duplicate %s '%s'", what, name);
        ix->slots[s] = i + 1;
    }
    return KVTC_OK;
}

/* ---- parsing ------------------------------------------------------------------- */

typedef struct parser {
    const unsigned char *buf;
    size_t len, pos;
    kvtc_error *err;
} parser;

static size_t left(const parser *p) { return p->len - p->pos; }

static kvtc_status need(parser *p, uint64_t n, const char *what)
{
    if (n > left(p))
        return kvtc_fail(p->err, KVTC_E_TRUNCATED,
                         "gguf: truncated at byte %zu reading %s (%" PRIu64
                         " bytes needed, %zu left)",
                         p->pos, what, n, left(p));
    return KVTC_OK;
}

/* A count of items that cannot fit in the bytes left (checked before allocating). */
static kvtc_status count_too_big(parser *p, const char *what, const char *name, uint64_t count)
{
    return kvtc_fail(p->err, KVTC_E_TRUNCATED,
                     "gguf: truncated at byte %zu: %s %s claims %" PRIu64
                     " elements, more than the %zu bytes left can hold",
                     p->pos, what, name, count, left(p));
}

static kvtc_status read_uint(parser *p, int n, uint64_t *v, const char *what)
{
    kvtc_status st = need(p, (uint64_t)n, what);
    if (st)
        return st;
    *v = load_le(p->buf + p->pos, n);
    p->pos += (size_t)n;
    return KVTC_OK;
}

static kvtc_status read_u32(parser *p, uint32_t *v, const char *what)
{
    uint64_t x = 0;
    kvtc_status st = read_uint(p, 4, &x, what);
    *v = (uint32_t)x;
    return st;
}

/* A string: u64 length then bytes. Returns its bytes (inside the buffer). */
static kvtc_status read_string(parser *p, const unsigned char **s, uint64_t *n, const char *what)
{
    kvtc_status st = read_uint(p, 8, n, what);
    if (!st)
        st = need(p, *n, what);
    if (st)
        return st;
    *s = p->buf + p->pos;
    p->pos += (size_t)*n;
    return KVTC_OK;
}

/* A key or tensor name: 1..KVTC_GGUF_MAX_NAME bytes, no NUL. */
static kvtc_status read_name(parser *p, const unsigned char **s, uint64_t *n, const char *what)
{
    size_t at = p->pos;
    kvtc_status st = read_string(p, s, n, what);
    if (st)
        return st;
    if (*n == 0 || *n > KVTC_GGUF_MAX_NAME || memchr(*s, 0, (size_t)*n))
        return kvtc_fail(p->err, KVTC_E_FORMAT,
                         "gguf: %s at byte %zu has a bad length (%" PRIu64 ") or a NUL byte", what,
                         at, *n);
    return KVTC_OK;
}

/* 'name' for messages, cut to fit. */
static void quote_name(char *buf, size_t size, const unsigned char *name, uint64_t len)
{
    int room = (int)size - 3;
    snprintf(buf, size, "'%.*s'", len < (uint64_t)room ? (int)len : room, (const char *)name);
}

static bool value_type_valid(uint32_t t) { return t <= KVTC_GGUF_FLOAT64; }

/* The elements of an array of elem_type (count already read). String
 * positions are recorded in str_pos when given. */
static kvtc_status parse_array_body(parser *p, uint32_t elem_type, uint64_t count, int depth,
                                    size_t *str_pos, const char *key)
{
    if (!value_type_valid(elem_type))
        return kvtc_fail(p->err, KVTC_E_FORMAT, "gguf: array %s has unknown element type %u",
                         key, elem_type);
    if (elem_type == KVTC_GGUF_ARRAY && count > left(p) / KVTC_GGUF_MIN_ARRAY_BYTES)
        return count_too_big(p, "array", key, count);
    size_t size = kvtc_gguf_scalar_size(elem_type);
    if (size) {
        if (count > left(p) / size)
            return count_too_big(p, "array", key, count);
        p->pos += (size_t)(count * size);
        return KVTC_OK;
    }
    for (uint64_t i = 0; i < count; i++) {
        kvtc_status st;
        if (elem_type == KVTC_GGUF_STRING) {
            const unsigned char *s;
            uint64_t n;
            if (str_pos)
                str_pos[i] = p->pos;
            st = read_string(p, &s, &n, key);
        } else {
            uint32_t inner_type;
            uint64_t inner_count;
            if (depth >= KVTC_GGUF_MAX_ARRAY_DEPTH)
                return kvtc_fail(p->err, KVTC_E_FORMAT, "gguf: arrays nested too deep in %s",
                                 key);
            st = read_u32(p, &inner_type, key);
            if (!st)
                st = read_uint(p, 8, &inner_count, key);
            if (!st)
                st = parse_array_body(p, inner_type, inner_count, depth + 1, NULL, key);
        }
        if (st)
            return st;
    }
    return KVTC_OK;
}

static kvtc_status parse_kv(parser *p, kvtc_gguf_kv *kv, uint64_t index)
{
    char what[64];
    snprintf(what, sizeof what, "the key of key/value %" PRIu64, index);
    const unsigned char *name;
    uint64_t name_len;
    kvtc_status st = read_name(p, &name, &name_len, what);
    if (st)
        return st;
    /* Until the names blob exists, key points into the buffer (not terminated). */
    kv->key = (const char *)name;
    kv->key_len = (uint32_t)name_len;
    char key[96];
    quote_name(key, sizeof key, name, name_len);
    if ((st = read_u32(p, &kv->type, key)))
        return st;
    if (!value_type_valid(kv->type))
        return kvtc_fail(p->err, KVTC_E_FORMAT, "gguf: key %s has unknown value type %u", key,
                         kv->type);
    if (kv->type == KVTC_GGUF_STRING)
        return read_string(p, &kv->value, &kv->str_len, key);
    if (kv->type != KVTC_GGUF_ARRAY) {
        size_t size = kvtc_gguf_scalar_size(kv->type);
        if ((st = need(p, size, key)))
            return st;
        kv->value = p->buf + p->pos;
        p->pos += size;
        return KVTC_OK;
    }
    if ((st = read_u32(p, &kv->elem_type, key)) || (st = read_uint(p, 8, &kv->count, key)))
        return st;
    if (kv->elem_type == KVTC_GGUF_STRING) {
        /* Every string needs its 8-byte length: this bounds the table below. */
        if (kv->count > left(p) / 8)
            return count_too_big(p, "array", key, kv->count);
        kv->str_pos = kvtc_malloc_array((size_t)kv->count, sizeof *kv->str_pos);
        if (!kv->str_pos)
            return kvtc_fail(p->err, KVTC_E_NOMEM, "gguf: out of memory for the strings of %s",
                             key);
    }
    kv->value = p->buf + p->pos;
    return parse_array_body(p, kv->elem_type, kv->count, 1, kv->str_pos, key);
}

static kvtc_status parse_tensor_info(parser *p, tensor_rec *r, uint64_t index)
{
    char what[64];
    snprintf(what, sizeof what, "the name of tensor %" PRIu64, index);
    const unsigned char *name;
    uint64_t name_len;
    kvtc_status st = read_name(p, &name, &name_len, what);
    if (st)
        return st;
    kvtc_gguf_tensor *t = &r->t;
    t->name = (const char *)name; /* not terminated until the names blob exists */
    r->name_len = (uint32_t)name_len;
    char tname[96];
    quote_name(tname, sizeof tname, name, name_len);
    if ((st = read_u32(p, &t->n_dims, tname)))
        return st;
    if (t->n_dims < 1 || t->n_dims > 4)
        return kvtc_fail(p->err, KVTC_E_FORMAT, "gguf: tensor %s has %u dimensions (1..4 allowed)",
                         tname, t->n_dims);
    t->n_elements = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if ((st = read_uint(p, 8, &t->dims[d], tname)))
            return st;
        if (t->dims[d] == 0 || t->dims[d] > (uint64_t)INT64_MAX / t->n_elements)
            return kvtc_fail(p->err, KVTC_E_FORMAT,
                             "gguf: tensor %s has a bad dimension %u (%" PRIu64 ")", tname, d,
                             t->dims[d]);
        t->n_elements *= t->dims[d];
    }
    for (uint32_t d = t->n_dims; d < 4; d++)
        t->dims[d] = 1;
    if ((st = read_u32(p, &t->type, tname)) || (st = read_uint(p, 8, &r->offset, tname)))
        return st;
    uint32_t block_elems, block_bytes;
    if (!kvtc_ggml_type_block(t->type, &block_elems, &block_bytes))
        return kvtc_fail(p->err, KVTC_E_UNSUPPORTED, "gguf: unknown tensor type %u for %s",
                         t->type, tname);
    /* Rows are whole blocks, as ggml requires. */
    if (t->dims[0] % block_elems)
        return kvtc_fail(p->err, KVTC_E_FORMAT,
                         "gguf: tensor %s: row length %" PRIu64
                         " is not a multiple of the %s block size %u",
                         tname, t->dims[0], kvtc_ggml_type_name(t->type), block_elems);
    uint64_t blocks = t->n_elements / block_elems;
    if (blocks > UINT64_MAX / block_bytes)
        return kvtc_fail(p->err, KVTC_E_FORMAT, "gguf: tensor %s is too large", tname);
    t->n_bytes = blocks * block_bytes;
    return KVTC_OK;
}

/* Copies every key and tensor name into one blob, NUL-terminated. */
static kvtc_status copy_names(kvtc_gguf_file *f, kvtc_error *err)
{
    size_t total = 0; /* bounded by the buffer length: names lie inside it */
    for (uint64_t i = 0; i < f->n_kv; i++)
        total += (size_t)f->kvs[i].key_len + 1;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        total += (size_t)f->tensors[i].name_len + 1;
    f->names = kvtc_malloc(total);
    if (!f->names)
        return kvtc_fail(err, KVTC_E_NOMEM, "gguf: out of memory for %zu bytes of names", total);
    char *dst = f->names;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        memcpy(dst, f->kvs[i].key, f->kvs[i].key_len);
        dst[f->kvs[i].key_len] = '\0';
        f->kvs[i].key = dst;
        dst += f->kvs[i].key_len + 1;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        tensor_rec *r = &f->tensors[i];
        memcpy(dst, r->t.name, r->name_len);
        dst[r->name_len] = '\0';
        r->t.name = dst;
        dst += r->name_len + 1;
    }
    return KVTC_OK;
}

static const kvtc_gguf_kv *find_kv(const kvtc_gguf_file *f, const char *key)
{
    int64_t i = f ? index_find(f, &f->kv_index, kv_name_at, key) : -1;
    return i < 0 ? NULL : &f->kvs[i];
}

/* general.alignment: a u32 power of two, 32 when absent. */
static kvtc_status read_alignment(kvtc_gguf_file *f, kvtc_error *err)
{
    f->alignment = KVTC_GGUF_DEFAULT_ALIGNMENT;
    const kvtc_gguf_kv *kv = find_kv(f, "general.alignment");
    if (!kv)
        return KVTC_OK;
    if (kv->type != KVTC_GGUF_UINT32)
        return kvtc_fail(err, KVTC_E_FORMAT, "gguf: general.alignment is not a uint32");
    uint64_t a = load_le(kv->value, 4);
    if (a == 0 || (a & (a - 1)))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "gguf: general.alignment %" PRIu64 " is not a power of two", a);
    f->alignment = a;
    return KVTC_OK;
}

/* Places each tensor in the data section and checks it lies inside the buffer. */
static kvtc_status place_tensors(kvtc_gguf_file *f, size_t header_end, kvtc_error *err)
{
    uint64_t data_start = ((uint64_t)header_end + f->alignment - 1) & ~(f->alignment - 1);
    uint64_t data_len = data_start < f->len ? f->len - data_start : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        tensor_rec *r = &f->tensors[i];
        if (r->offset % f->alignment)
            return kvtc_fail(err, KVTC_E_FORMAT,
                             "gguf: tensor '%s' offset %" PRIu64 " is not aligned to %" PRIu64,
                             r->t.name, r->offset, f->alignment);
        if (r->offset > data_len || r->t.n_bytes > data_len - r->offset)
            return kvtc_fail(err, KVTC_E_FORMAT,
                             "gguf: tensor '%s' out of bounds (bytes %" PRIu64 "..%" PRIu64
                             " of a %" PRIu64 "-byte data section)",
                             r->t.name, r->offset, r->offset + r->t.n_bytes, data_len);
        r->t.data = f->buf + data_start + r->offset;
    }
    return KVTC_OK;
}

static kvtc_status parse_file(kvtc_gguf_file *f, kvtc_error *err)
{
    parser p = {f->buf, f->len, 0, err};
    kvtc_status st = need(&p, 4, "the magic");
    if (st)
        return st;
    if (memcmp(f->buf, "GGUF", 4) != 0)
        return kvtc_fail(err, KVTC_E_FORMAT, "gguf: bad magic (not a GGUF file)");
    p.pos = 4;
    if ((st = read_u32(&p, &f->version, "the version")))
        return st;
    if (f->version != 2 && f->version != 3)
        return kvtc_fail(err, KVTC_E_VERSION,
                         "gguf: unsupported version %u (2 and 3 are read; big-endian "
                         "files are not)", f->version);
    if ((st = read_uint(&p, 8, &f->n_tensors, "the tensor count")) ||
        (st = read_uint(&p, 8, &f->n_kv, "the key/value count")))
        return st;
    if (f->n_kv > left(&p) / KVTC_GGUF_MIN_KV_BYTES)
        return count_too_big(&p, "the key/value table", "of the header", f->n_kv);
    if (f->n_tensors > (left(&p) - f->n_kv * KVTC_GGUF_MIN_KV_BYTES) / KVTC_GGUF_MIN_TENSOR_BYTES)
        return count_too_big(&p, "the tensor table", "of the header", f->n_tensors);
    if (f->n_kv > UINT32_MAX / 2 || f->n_tensors > UINT32_MAX / 2) /* the indexes hold u32 */
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "gguf: %" PRIu64 " key/values and %" PRIu64
                         " tensors are too many", f->n_kv, f->n_tensors);

    f->kvs = kvtc_calloc((size_t)f->n_kv, sizeof *f->kvs);
    f->tensors = kvtc_calloc((size_t)f->n_tensors, sizeof *f->tensors);
    if (!f->kvs || !f->tensors)
        return kvtc_fail(err, KVTC_E_NOMEM, "gguf: out of memory for %" PRIu64
                         " key/values and %" PRIu64 " tensors", f->n_kv, f->n_tensors);
    for (uint64_t i = 0; i < f->n_kv; i++)
        if ((st = parse_kv(&p, &f->kvs[i], i)))
            return st;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if ((st = parse_tensor_info(&p, &f->tensors[i], i)))
            return st;
    if ((st = copy_names(f, err)) ||
        (st = index_build(f, &f->kv_index, kv_name_at, f->n_kv, "key", err)) ||
        (st = index_build(f, &f->tensor_index, tensor_name_at, f->n_tensors, "tensor", err)) ||
        (st = read_alignment(f, err)))
        return st;
    return place_tensors(f, p.pos, err);
}

kvtc_status kvtc_gguf_load(const void *data, size_t len, kvtc_gguf_file **out, kvtc_error *err)
{
    if (!out || (!data && len))
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_gguf_load: no buffer or output given");
    *out = NULL;
    kvtc_gguf_file *f = kvtc_calloc(1, sizeof *f);
    if (!f)
        return kvtc_fail(err, KVTC_E_NOMEM, "gguf: out of memory");
    f->buf = data;
    f->len = len;
    kvtc_status st = parse_file(f, err);
    if (st) {
        kvtc_gguf_close(f);
        return st;
    }
    *out = f;
    return KVTC_OK;
}

kvtc_status kvtc_gguf_open(const char *path, kvtc_gguf_file **out, kvtc_error *err)
{
    if (!path || !out)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_gguf_open: no path or output given");
    *out = NULL;
    const void *map;
    size_t len;
    kvtc_status s = kvtc_map_file(path, &map, &len, err);
    if (s != KVTC_OK)
        return s;
    kvtc_gguf_file *f;
    if ((s = kvtc_gguf_load(map, len, &f, err)) != KVTC_OK) {
        kvtc_unmap_file(map, len);
        kvtc_fail_prefix(err, path);
        return s;
    }
    f->map = map;
    f->map_len = len;
    *out = f;
    return KVTC_OK;
}

void kvtc_gguf_close(kvtc_gguf_file *f)
{
    if (!f)
        return;
    for (uint64_t i = 0; f->kvs && i < f->n_kv; i++)
        kvtc_free(f->kvs[i].str_pos);
    kvtc_free(f->kvs);
    kvtc_free(f->tensors);
    kvtc_free(f->names);
    kvtc_free(f->kv_index.slots);
    kvtc_free(f->tensor_index.slots);
    kvtc_unmap_file(f->map, f->map_len);
    kvtc_free(f);
}

/* ---- accessors --------------------------------------------------------------------- */

uint32_t kvtc_gguf_version(const kvtc_gguf_file *f) { return f->version; }
uint64_t kvtc_gguf_alignment(const kvtc_gguf_file *f) { return f->alignment; }

bool kvtc_gguf_has_key(const kvtc_gguf_file *f, const char *key) { return find_kv(f, key) != NULL; }

bool kvtc_gguf_get_u32(const kvtc_gguf_file *f, const char *key, uint32_t *out)
{
    const kvtc_gguf_kv *kv = find_kv(f, key);
    if (!kv)
        return false;
    int size = (int)kvtc_gguf_scalar_size(kv->type);
    bool is_signed = kv->type == KVTC_GGUF_INT8 || kv->type == KVTC_GGUF_INT16 ||
                     kv->type == KVTC_GGUF_INT32 || kv->type == KVTC_GGUF_INT64;
    bool is_unsigned = kv->type == KVTC_GGUF_UINT8 || kv->type == KVTC_GGUF_UINT16 ||
                       kv->type == KVTC_GGUF_UINT32 || kv->type == KVTC_GGUF_UINT64;
    if (!is_signed && !is_unsigned)
        return false;
    uint64_t v = load_le(kv->value, size);
    if (is_signed && (v >> (8 * size - 1)) & 1)
        return false; /* negative */
    if (v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

bool kvtc_gguf_get_f32(const kvtc_gguf_file *f, const char *key, float *out)
{
    const kvtc_gguf_kv *kv = find_kv(f, key);
    if (!kv)
        return false;
    if (kv->type == KVTC_GGUF_FLOAT32) {
        uint32_t u = (uint32_t)load_le(kv->value, 4);
        memcpy(out, &u, 4);
        return true;
    }
    if (kv->type == KVTC_GGUF_FLOAT64) {
        uint64_t u = load_le(kv->value, 8);
        double d;
        memcpy(&d, &u, 8);
        *out = (float)d;
        return true;
    }
    return false;
}

bool kvtc_gguf_get_bool(const kvtc_gguf_file *f, const char *key, bool *out)
{
    const kvtc_gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != KVTC_GGUF_BOOL)
        return false;
    *out = kv->value[0] != 0;
    return true;
}

bool kvtc_gguf_get_str(const kvtc_gguf_file *f, const char *key, const char **s, size_t *len)
{
    const kvtc_gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != KVTC_GGUF_STRING)
        return false;
    *s = (const char *)kv->value;
    *len = (size_t)kv->str_len;
    return true;
}

bool kvtc_gguf_get_arr_info(const kvtc_gguf_file *f, const char *key, kvtc_gguf_value_type *elem_type,
                       uint64_t *count)
{
    const kvtc_gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != KVTC_GGUF_ARRAY)
        return false;
    if (elem_type)
        *elem_type = (kvtc_gguf_value_type)kv->elem_type;
    if (count)
        *count = kv->count;
    return true;
}

bool kvtc_gguf_get_arr_str(const kvtc_gguf_file *f, const char *key, uint64_t i, const char **s,
                      size_t *len)
{
    const kvtc_gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != KVTC_GGUF_ARRAY || kv->elem_type != KVTC_GGUF_STRING ||
        i >= kv->count)
        return false;
    size_t pos = kv->str_pos[i];
    *len = (size_t)load_le(f->buf + pos, 8);
    *s = (const char *)f->buf + pos + 8;
    return true;
}

bool kvtc_gguf_get_arr_data(const kvtc_gguf_file *f, const char *key, const void **data)
{
    const kvtc_gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != KVTC_GGUF_ARRAY || !kvtc_gguf_scalar_size(kv->elem_type))
        return false;
    *data = kv->value;
    return true;
}

uint64_t kvtc_gguf_tensor_count(const kvtc_gguf_file *f) { return f->n_tensors; }

const kvtc_gguf_tensor *kvtc_gguf_tensor_at(const kvtc_gguf_file *f, uint64_t i)
{
    return i < f->n_tensors ? &f->tensors[i].t : NULL;
}

const kvtc_gguf_tensor *kvtc_gguf_find_tensor(const kvtc_gguf_file *f, const char *name)
{
    int64_t i = f ? index_find(f, &f->tensor_index, tensor_name_at, name) : -1;
    return i < 0 ? NULL : &f->tensors[i].t;
}
