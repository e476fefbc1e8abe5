/* The .kvtc container (docs/FORMAT.md, section 1): a CRC-protected header that
 * describes everything (shape, positions, calibration fingerprint, the two
 * plans, the block table), then the chunk payloads in block order. The parser
 * checks every field before it allocates or indexes anything, and checks that
 * the table accounts for every byte of the stream. */
#include "container.h"

#include "entropy.h"

#include <math.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "raw chunks are stored as the cache's bytes: little-endian hosts only"
#endif

static const uint8_t MAGIC[8] = {'K', 'V', 'T', 'C', '\r', '\n', 0x1a, '\n'};

#define FIXED_HEADER_BYTES 184u /* magic .. model name */
#define PLAN_FIXED_BYTES 16u    /* ratio, budget, group count */
#define GROUP_BYTES 12u
#define HEADER_LEN_OFFSET 16u

uint64_t kvtc_raw_chunk_bytes(const kvtc_model_shape *shape, kvtc_dtype dtype, uint32_t n)
{
    return kvtc_shape_features(shape) * n * kvtc_dtype_size(dtype);
}

uint64_t kvtc_group_chunk_bytes(const kvtc_group *g, uint32_t n)
{
    uint32_t bits = kvtc_qtype_bits(g->type);
    return bits ? kvtc_qtype_overhead_bits(g->type) / 8ull * n +
                      ((uint64_t)n * g->size * bits + 7) / 8
                : 0;
}

uint64_t kvtc_coded_chunk_bytes(const kvtc_plan *plan, uint32_t n)
{
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < plan->n_groups; i++)
        bytes += kvtc_group_chunk_bytes(&plan->groups[i], n);
    return bytes;
}

uint64_t kvtc_plan_record_bytes(const kvtc_plan *plan)
{
    return PLAN_FIXED_BYTES + (uint64_t)GROUP_BYTES * plan->n_groups;
}

void kvtc_stream_bytes(const kvtc_stream *s, uint64_t *compressed, uint64_t *raw)
{
    /* Compressed tokens pay for the plans and their table entries as well as
     * their chunks; what is left over is the fixed header. */
    bool any_coded = false;
    *compressed = *raw = 0;
    for (uint32_t i = 0; i < s->n_blocks; i++) {
        const kvtc_block *b = &s->blocks[i];
        uint64_t bytes = KVTC_BLOCK_ENTRY_BYTES + b->length[0] + b->length[1];
        if (b->encoding == KVTC_BLOCK_CODED) {
            *compressed += bytes;
            any_coded = true;
        } else {
            *raw += bytes;
        }
    }
    if (any_coded)
        *compressed += kvtc_plan_record_bytes(s->plan[0]) + kvtc_plan_record_bytes(s->plan[1]);
}

void kvtc_stream_release(kvtc_stream *s)
{
    if (!s)
        return;
    kvtc_plan_free(s->plan[0]);
    kvtc_plan_free(s->plan[1]);
    kvtc_free(s->blocks);
    kvtc_free(s->token_ids);
    memset(s, 0, sizeof *s);
}

/* A caller-side INVALID from a shared validator means a bad stream here. */
static kvtc_status as_format_error(kvtc_error *err, kvtc_status st, const char *what)
{
    if (st == KVTC_E_INVALID) {
        if (err)
            err->status = KVTC_E_FORMAT;
        st = KVTC_E_FORMAT;
    }
    kvtc_fail_prefix(err, what);
    return st;
}

/* Whether a plan uses a type of version 2 (the lm types). */
static bool plan_needs_v2(const kvtc_plan *plan)
{
    for (uint32_t i = 0; i < plan->n_groups; i++)
        if (kvtc_qtype_is_lm(plan->groups[i].type))
            return true;
    return false;
}

static kvtc_status parse_plan(kvtc_reader *r, kvtc_kind kind, uint32_t p, uint32_t version,
                              kvtc_plan **out, kvtc_error *err)
{
    const char *name = kind == KVTC_KEY ? "key plan" : "value plan";
    double ratio = kvtc_get_f64(r);
    uint32_t budget = kvtc_get_u32(r);
    uint32_t n_groups = kvtc_get_u32(r);
    if (r->overrun)
        return kvtc_fail(err, KVTC_E_FORMAT, "header ends inside the %s", name);
    if (n_groups == 0 || n_groups > p || n_groups > kvtc_reader_left(r) / GROUP_BYTES)
        return kvtc_fail(err, KVTC_E_FORMAT, "%s has %u groups for %u features", name,
                         n_groups, p);
    kvtc_group *groups = kvtc_malloc_array(n_groups, sizeof *groups);
    if (!groups)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a plan of %u groups", n_groups);
    for (uint32_t i = 0; i < n_groups; i++) {
        groups[i].start = kvtc_get_u32(r);
        groups[i].size = kvtc_get_u32(r);
        uint32_t type = kvtc_get_u32(r);
        groups[i].type = kvtc_qtype_valid(type) ? (kvtc_qtype)type : (kvtc_qtype)KVTC_QTYPE_COUNT;
    }
    kvtc_status st = kvtc_plan_from_groups(kind, p, ratio, budget, groups, n_groups, p, out, err);
    kvtc_free(groups);
    if (st != KVTC_OK)
        return as_format_error(err, st, name);
    if (version < 2 && plan_needs_v2(*out)) {
        kvtc_plan_free(*out);
        *out = NULL;
        return kvtc_fail(err, KVTC_E_FORMAT, "%s uses an lm type in a version %u stream", name,
                         version);
    }
    if ((*out)->n_groups != n_groups) { /* written plans never end with dropped groups */
        kvtc_plan_free(*out);
        *out = NULL;
        return kvtc_fail(err, KVTC_E_FORMAT, "%s ends with dropped groups", name);
    }
    return KVTC_OK;
}

/* Checks one block against the layout that (n_tokens, sinks, window,
 * block_tokens) imply, and its chunk lengths against what its tokens need. */
static kvtc_status check_block(const kvtc_stream *s, uint32_t i, const kvtc_block *b,
                               uint32_t expected_first, kvtc_error *err)
{
    uint32_t coded_end = s->n_tokens - s->window;
    if (b->first != expected_first)
        return kvtc_fail(err, KVTC_E_FORMAT, "block %u starts at token %u, expected %u", i,
                         b->first, expected_first);
    if (b->n_tokens == 0 || b->n_tokens > s->n_tokens - b->first)
        return kvtc_fail(err, KVTC_E_FORMAT, "block %u has %u tokens (%u left)", i, b->n_tokens,
                         s->n_tokens - b->first);
    bool is_sinks = b->first < s->sinks;
    bool is_window = s->window > 0 && b->first >= coded_end;
    if (is_sinks || is_window) {
        uint32_t want = is_sinks ? s->sinks : s->window;
        if (b->encoding != KVTC_BLOCK_RAW || b->n_tokens != want)
            return kvtc_fail(err, KVTC_E_FORMAT,
                             "block %u must be the raw %s block of %u tokens", i,
                             is_sinks ? "sinks" : "window", want);
        uint64_t need = kvtc_raw_chunk_bytes(&s->shape, s->dtype, b->n_tokens);
        for (int k = 0; k < 2; k++)
            if (b->length[k] != need)
                return kvtc_fail(err, KVTC_E_FORMAT,
                                 "raw block %u chunk %d has %llu bytes, its tokens need %llu", i, k,
                                 (unsigned long long)b->length[k], (unsigned long long)need);
        return KVTC_OK;
    }
    if (b->encoding != KVTC_BLOCK_CODED || b->n_tokens > s->block_tokens ||
        b->n_tokens > coded_end - b->first)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "block %u must be a coded block of at most %u tokens ending by %u", i,
                         s->block_tokens, coded_end);
    for (int k = 0; k < 2; k++) {
        /* A lower bound of the inflated size, in O(1): the plan's bits per token. */
        uint64_t inflated = (uint64_t)b->n_tokens * s->plan[k]->bits_per_token / 8;
        if (b->length[k] == 0 || b->length[k] > UINT64_MAX / KVTC_DEFLATE_MAX_RATIO ||
            inflated > b->length[k] * KVTC_DEFLATE_MAX_RATIO)
            return kvtc_fail(err, KVTC_E_FORMAT,
                             "coded block %u chunk %d: %llu bytes cannot inflate to %llu", i, k,
                             (unsigned long long)b->length[k], (unsigned long long)inflated);
    }
    return KVTC_OK;
}

static kvtc_status parse_fields(kvtc_reader *r, kvtc_stream *s, size_t len, kvtc_error *err)
{
    uint32_t flags = kvtc_get_u32(r);
    if (flags & ~KVTC_FLAG_TOKEN_IDS)
        return kvtc_fail(err, KVTC_E_FORMAT, "reserved flags 0x%x are not zero",
                         flags & ~KVTC_FLAG_TOKEN_IDS);
    if (flags && s->version < 2)
        return kvtc_fail(err, KVTC_E_FORMAT, "flags 0x%x in a version %u stream", flags,
                         s->version);
    kvtc_get_u64(r); /* header_bytes, already checked */
    s->shape.n_layer = kvtc_get_u32(r);
    s->shape.n_kv_head = kvtc_get_u32(r);
    s->shape.head_dim = kvtc_get_u32(r);
    uint32_t rope_style = kvtc_get_u32(r);
    s->shape.rope_style = rope_style <= KVTC_ROPE_NEOX ? (kvtc_rope_style)rope_style
                                                       : (kvtc_rope_style)(KVTC_ROPE_NEOX + 1);
    s->shape.rope_dims = kvtc_get_u32(r);
    s->shape.rope_theta = kvtc_get_f64(r);
    s->shape.rope_freq_scale = kvtc_get_f64(r);
    uint32_t dtype = kvtc_get_u32(r);
    s->pos0 = (int64_t)kvtc_get_u64(r);
    s->n_tokens = kvtc_get_u32(r);
    s->sinks = kvtc_get_u32(r);
    s->window = kvtc_get_u32(r);
    s->block_tokens = kvtc_get_u32(r);
    const void *fp = kvtc_get_bytes(r, sizeof s->fingerprint);
    const char *model = kvtc_get_bytes(r, sizeof s->model);
    if (r->overrun)
        return kvtc_fail(err, KVTC_E_FORMAT, "header too short for its fixed fields");

    kvtc_status st = kvtc_shape_check(&s->shape, err);
    if (st != KVTC_OK)
        return as_format_error(err, st, "stream model shape");
    kvtc_model_shape canonical = kvtc_shape_normalized(&s->shape);
    if (canonical.rope_dims != s->shape.rope_dims || canonical.rope_theta != s->shape.rope_theta ||
        canonical.rope_freq_scale != s->shape.rope_freq_scale)
        return kvtc_fail(err, KVTC_E_FORMAT, "stream model shape is not in normalized form");
    if (!kvtc_dtype_valid((kvtc_dtype)dtype))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED, "stream dtype %u unknown", dtype);
    s->dtype = (kvtc_dtype)dtype;
    if (!kvtc_positions_valid(s->pos0, s->n_tokens))
        return kvtc_fail(err, KVTC_E_FORMAT, "positions %lld + %u tokens out of range",
                         (long long)s->pos0, s->n_tokens);
    if (s->sinks > s->n_tokens || s->window > s->n_tokens - s->sinks)
        return kvtc_fail(err, KVTC_E_FORMAT, "%u sinks + %u window tokens exceed %u tokens",
                         s->sinks, s->window, s->n_tokens);
    if (s->block_tokens == 0 || s->block_tokens > KVTC_MAX_BLOCK_TOKENS)
        return kvtc_fail(err, KVTC_E_FORMAT, "block_tokens %u out of range 1..%u",
                         s->block_tokens, KVTC_MAX_BLOCK_TOKENS);
    memcpy(s->fingerprint, fp, sizeof s->fingerprint);
    size_t name_len = strnlen(model, sizeof s->model);
    if (name_len == sizeof s->model)
        return kvtc_fail(err, KVTC_E_FORMAT, "model name is not terminated");
    for (size_t i = name_len; i < sizeof s->model; i++)
        if (model[i] != 0)
            return kvtc_fail(err, KVTC_E_FORMAT, "model name padding is not zero");
    memcpy(s->model, model, sizeof s->model);

    uint32_t p = (uint32_t)kvtc_shape_features(&s->shape);
    for (int k = 0; k < 2; k++)
        if ((st = parse_plan(r, (kvtc_kind)k, p, s->version, &s->plan[k], err)) != KVTC_OK)
            return st;

    uint32_t n_blocks = kvtc_get_u32(r);
    uint64_t id_bytes = flags & KVTC_FLAG_TOKEN_IDS ? 4ull * s->n_tokens : 0;
    if (r->overrun || (uint64_t)n_blocks * KVTC_BLOCK_ENTRY_BYTES + id_bytes != kvtc_reader_left(r))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "block table of %u entries%s does not fill the header", n_blocks,
                         id_bytes ? " and the token ids" : "");
    if (n_blocks > s->n_tokens)
        return kvtc_fail(err, KVTC_E_FORMAT, "%u blocks for %u tokens", n_blocks, s->n_tokens);
    s->blocks = kvtc_calloc(n_blocks ? n_blocks : 1, sizeof *s->blocks);
    if (!s->blocks)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u block entries", n_blocks);
    s->n_blocks = n_blocks;

    const uint8_t *base = r->p;
    uint64_t offset = s->header_bytes;
    uint32_t next_token = 0;
    for (uint32_t i = 0; i < n_blocks; i++) {
        kvtc_block *b = &s->blocks[i];
        b->first = kvtc_get_u32(r);
        b->n_tokens = kvtc_get_u32(r);
        uint32_t encoding = kvtc_get_u32(r);
        b->encoding = encoding == KVTC_BLOCK_RAW ? KVTC_BLOCK_RAW : KVTC_BLOCK_CODED;
        b->escapes = encoding == KVTC_ENCODING_CODED_ESCAPES;
        uint32_t known = s->version >= 2 ? KVTC_ENCODING_CODED_ESCAPES : KVTC_BLOCK_CODED;
        if (encoding > known)
            return kvtc_fail(err, KVTC_E_FORMAT, "block %u has unknown encoding %u", i, encoding);
        for (int k = 0; k < 2; k++) {
            b->length[k] = kvtc_get_u64(r);
            b->crc[k] = kvtc_get_u32(r);
        }
        if ((st = check_block(s, i, b, next_token, err)) != KVTC_OK)
            return st;
        next_token = b->first + b->n_tokens;
        for (int k = 0; k < 2; k++) {
            if (b->length[k] > len - offset)
                return kvtc_fail(err, KVTC_E_TRUNCATED,
                                 "stream of %zu bytes ends inside block %u (needs %llu more)",
                                 len, i, (unsigned long long)(b->length[k] - (len - offset)));
            b->data[k] = base + offset;
            offset += b->length[k];
        }
    }
    if (next_token != s->n_tokens)
        return kvtc_fail(err, KVTC_E_FORMAT, "blocks cover %u of %u tokens", next_token,
                         s->n_tokens);
    if (id_bytes) {
        if (!(s->token_ids = kvtc_malloc_array(s->n_tokens ? s->n_tokens : 1, sizeof(int32_t))))
            return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u token ids", s->n_tokens);
        for (uint32_t i = 0; i < s->n_tokens; i++)
            s->token_ids[i] = (int32_t)kvtc_get_u32(r);
    }
    if (offset != len)
        return kvtc_fail(err, KVTC_E_FORMAT, "%llu stray bytes after the last block",
                         (unsigned long long)(len - offset));
    s->total_bytes = offset;
    return KVTC_OK;
}

kvtc_status kvtc_stream_parse(const void *data, size_t len, kvtc_stream *s, kvtc_error *err)
{
    memset(s, 0, sizeof *s);
    if (!data && len)
        return kvtc_fail(err, KVTC_E_INVALID, "no stream data given");
    size_t magic_seen = len < sizeof MAGIC ? len : sizeof MAGIC;
    if (memcmp(data ? data : "", MAGIC, magic_seen) != 0)
        return kvtc_fail(err, KVTC_E_FORMAT, "not a .kvtc stream (bad magic)");
    kvtc_reader r;
    kvtc_reader_init(&r, data, len);
    kvtc_get_bytes(&r, sizeof MAGIC);
    s->version = kvtc_get_u32(&r);
    kvtc_get_u32(&r); /* flags, checked with the other fields below */
    s->header_bytes = kvtc_get_u64(&r);
    if (r.overrun)
        return kvtc_fail(err, KVTC_E_TRUNCATED, "stream of %zu bytes ends inside its header", len);
    if (s->version == 0)
        return kvtc_fail(err, KVTC_E_FORMAT, "stream format version 0 is invalid");
    if (s->version > KVTC_STREAM_VERSION)
        return kvtc_fail(err, KVTC_E_VERSION,
                         "stream format version %u is newer than this library's %u", s->version,
                         KVTC_STREAM_VERSION);
    uint64_t min_header =
        FIXED_HEADER_BYTES + 2 * (PLAN_FIXED_BYTES + GROUP_BYTES) + 4 /* n_blocks */ + 4 /* crc */;
    if (s->header_bytes < min_header)
        return kvtc_fail(err, KVTC_E_FORMAT, "header length %llu is too small",
                         (unsigned long long)s->header_bytes);
    if (s->header_bytes > len)
        return kvtc_fail(err, KVTC_E_TRUNCATED,
                         "stream of %zu bytes ends inside its %llu-byte header", len,
                         (unsigned long long)s->header_bytes);
    size_t body = (size_t)s->header_bytes - 4;
    const uint8_t *bytes = data;
    uint32_t want_crc = (uint32_t)bytes[body] | (uint32_t)bytes[body + 1] << 8 |
                        (uint32_t)bytes[body + 2] << 16 | (uint32_t)bytes[body + 3] << 24;
    if (kvtc_crc32(data, body) != want_crc)
        return kvtc_fail(err, KVTC_E_CHECKSUM, "stream header CRC mismatch (corrupt data)");

    /* Read the fields after magic and version again, now from the checked body. */
    kvtc_reader_init(&r, data, body);
    kvtc_get_bytes(&r, sizeof MAGIC + 4);
    kvtc_status st = parse_fields(&r, s, len, err);
    if (st != KVTC_OK)
        kvtc_stream_release(s);
    return st;
}

static void put_plan(kvtc_writer *w, const kvtc_plan *plan)
{
    kvtc_put_f64(w, plan->ratio);
    kvtc_put_u32(w, plan->budget_bits);
    kvtc_put_u32(w, plan->n_groups);
    for (uint32_t i = 0; i < plan->n_groups; i++) {
        kvtc_put_u32(w, plan->groups[i].start);
        kvtc_put_u32(w, plan->groups[i].size);
        kvtc_put_u32(w, (uint32_t)plan->groups[i].type);
    }
}

kvtc_status kvtc_stream_serialize(kvtc_stream *s, void **out, size_t *out_len, kvtc_error *err)
{
    *out = NULL;
    *out_len = 0;
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_put_bytes(&w, MAGIC, sizeof MAGIC);
    /* flags bit 0 is a version 2 field, so token ids need version 2 */
    uint32_t flags = s->token_ids && s->n_tokens ? KVTC_FLAG_TOKEN_IDS : 0;
    s->version = flags ? 2 : 1;
    for (uint32_t i = 0; i < s->n_blocks; i++)
        if (s->blocks[i].escapes)
            s->version = 2;
    for (int k = 0; k < 2; k++)
        if (s->plan[k] && plan_needs_v2(s->plan[k]))
            s->version = 2;
    kvtc_put_u32(&w, s->version);
    kvtc_put_u32(&w, flags);
    kvtc_put_u64(&w, 0); /* header_bytes, patched below */
    kvtc_put_u32(&w, s->shape.n_layer);
    kvtc_put_u32(&w, s->shape.n_kv_head);
    kvtc_put_u32(&w, s->shape.head_dim);
    kvtc_put_u32(&w, (uint32_t)s->shape.rope_style);
    kvtc_put_u32(&w, s->shape.rope_dims);
    kvtc_put_f64(&w, s->shape.rope_theta);
    kvtc_put_f64(&w, s->shape.rope_freq_scale);
    kvtc_put_u32(&w, (uint32_t)s->dtype);
    kvtc_put_u64(&w, (uint64_t)s->pos0);
    kvtc_put_u32(&w, s->n_tokens);
    kvtc_put_u32(&w, s->sinks);
    kvtc_put_u32(&w, s->window);
    kvtc_put_u32(&w, s->block_tokens);
    kvtc_put_bytes(&w, s->fingerprint, sizeof s->fingerprint);
    char model[sizeof s->model] = {0};
    memcpy(model, s->model, strnlen(s->model, sizeof model - 1));
    kvtc_put_bytes(&w, model, sizeof model);
    put_plan(&w, s->plan[0]);
    put_plan(&w, s->plan[1]);
    kvtc_put_u32(&w, s->n_blocks);
    uint64_t payload = 0;
    for (uint32_t i = 0; i < s->n_blocks; i++) {
        const kvtc_block *b = &s->blocks[i];
        kvtc_put_u32(&w, b->first);
        kvtc_put_u32(&w, b->n_tokens);
        kvtc_put_u32(&w, b->escapes ? KVTC_ENCODING_CODED_ESCAPES : (uint32_t)b->encoding);
        for (int k = 0; k < 2; k++) {
            kvtc_put_u64(&w, b->length[k]);
            kvtc_put_u32(&w, b->crc[k]);
            payload += b->length[k];
        }
    }
    for (uint32_t i = 0; flags && i < s->n_tokens; i++)
        kvtc_put_u32(&w, (uint32_t)s->token_ids[i]);
    if (w.failed) {
        kvtc_writer_free(&w);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a stream header");
    }
    uint64_t header_bytes = (uint64_t)w.len + 4;
    for (unsigned i = 0; i < 8; i++)
        w.buf[HEADER_LEN_OFFSET + i] = (uint8_t)(header_bytes >> (8 * i));
    kvtc_put_u32(&w, kvtc_crc32(w.buf, w.len));
    uint64_t total = header_bytes + payload;
    uint8_t *buf = w.failed || total > SIZE_MAX ? NULL : kvtc_malloc((size_t)total);
    if (!buf) {
        kvtc_writer_free(&w);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a stream of %llu bytes",
                         (unsigned long long)total);
    }
    memcpy(buf, w.buf, w.len);
    size_t at = w.len;
    kvtc_writer_free(&w);
    for (uint32_t i = 0; i < s->n_blocks; i++)
        for (int k = 0; k < 2; k++) {
            memcpy(buf + at, s->blocks[i].data[k], (size_t)s->blocks[i].length[k]);
            at += (size_t)s->blocks[i].length[k];
        }
    s->header_bytes = header_bytes;
    s->total_bytes = total;
    *out = buf;
    *out_len = (size_t)total;
    return KVTC_OK;
}

kvtc_status kvtc_stream_info_get(const void *data, size_t len, kvtc_stream_info *info,
                                 kvtc_error *err)
{
    if (!info)
        return kvtc_fail(err, KVTC_E_INVALID, "no stream info output given");
    kvtc_stream_info full;
    memset(&full, 0, sizeof full);
    full.struct_size = sizeof full;
    /* the caller's struct_size is checked before any work */
    kvtc_status st = kvtc_struct_out(info, &full, sizeof full, KVTC_STREAM_INFO_V1_SIZE,
                                     "stream info", err);
    if (st != KVTC_OK)
        return st;
    kvtc_stream s;
    if ((st = kvtc_stream_parse(data, len, &s, err)) != KVTC_OK)
        return st;
    kvtc_stream_info *caller = info;
    info = &full;
    info->format_version = s.version;
    info->shape = s.shape;
    info->dtype = s.dtype;
    info->pos0 = s.pos0;
    info->n_tokens = s.n_tokens;
    info->sinks = s.sinks;
    info->window = s.window;
    info->compressed_tokens = s.n_tokens - s.sinks - s.window;
    info->n_blocks = s.n_blocks;
    info->block_tokens = s.block_tokens;
    info->k_bits_per_token = s.plan[KVTC_KEY]->bits_per_token;
    info->v_bits_per_token = s.plan[KVTC_VALUE]->bits_per_token;
    info->k_ratio = s.plan[KVTC_KEY]->ratio;
    info->v_ratio = s.plan[KVTC_VALUE]->ratio;
    kvtc_stream_bytes(&s, &info->compressed_bytes, &info->raw_bytes);
    info->total_bytes = s.total_bytes;
    uint64_t fp16_token = 2 * 2 * kvtc_shape_features(&s.shape);
    info->fp16_bytes = fp16_token * s.n_tokens;
    info->compressed_fp16_bytes = fp16_token * info->compressed_tokens;
    memcpy(info->calib_fingerprint, s.fingerprint, sizeof info->calib_fingerprint);
    memcpy(info->model_name, s.model, sizeof info->model_name);
    info->has_token_ids = s.token_ids != NULL;
    kvtc_stream_release(&s);
    return kvtc_struct_out(caller, &full, sizeof full, KVTC_STREAM_INFO_V1_SIZE, "stream info",
                           err);
}

kvtc_status kvtc_stream_plan(const void *data, size_t len, kvtc_kind kind, kvtc_plan **out,
                             kvtc_error *err)
{
    if (!out)
        return kvtc_fail(err, KVTC_E_INVALID, "no plan output given");
    *out = NULL;
    if (kind != KVTC_KEY && kind != KVTC_VALUE)
        return kvtc_fail(err, KVTC_E_INVALID, "unknown kind %d", (int)kind);
    kvtc_stream s;
    kvtc_status st = kvtc_stream_parse(data, len, &s, err);
    if (st != KVTC_OK)
        return st;
    *out = s.plan[kind];
    s.plan[kind] = NULL; /* now the caller's */
    kvtc_stream_release(&s);
    return KVTC_OK;
}

kvtc_status kvtc_stream_token_ids(const void *data, size_t len, int32_t **out, uint32_t *n,
                                  kvtc_error *err)
{
    if (!out || !n)
        return kvtc_fail(err, KVTC_E_INVALID, "no token id output given");
    *out = NULL;
    *n = 0;
    kvtc_stream s;
    kvtc_status st = kvtc_stream_parse(data, len, &s, err);
    if (st != KVTC_OK)
        return st;
    if (s.token_ids) {
        *out = s.token_ids;
        *n = s.n_tokens;
        s.token_ids = NULL; /* now the caller's */
    }
    kvtc_stream_release(&s);
    return KVTC_OK;
}
