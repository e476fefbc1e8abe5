/* The codec: compress, append and decompress .kvtc streams.
 *
 * Encode, per coded block and kind (independent chunks, run in parallel):
 * gather feature rows (RoPE undone) -> project them on the plan's basis
 * columns (transform.c: the mean, one sgemm per chunk) -> quantize per token
 * and group -> pack -> DEFLATE -> CRC-32. Raw blocks keep the cache's bytes.
 *
 * Decode: verify and inflate every chunk into the coefficients of all coded
 * tokens, then rebuild one layer at a time (per coded block and kind, in
 * parallel: that layer's features from transform.c, one sgemm plus the mean,
 * then RoPE and the dtype), copying raw tokens in. Whole-cache, layer-by-layer and
 * single-block decoding all go through that one layer loop. */
#include "codec.h"
#include "container.h"
#include "entropy.h"
#include "transform.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void kvtc_compress_options_default(kvtc_compress_options *opt)
{
    if (!opt)
        return;
    memset(opt, 0, sizeof *opt);
    opt->struct_size = sizeof *opt;
    opt->k_ratio = KVTC_DEFAULT_RATIO;
    opt->v_ratio = KVTC_DEFAULT_RATIO;
    opt->block_tokens = KVTC_DEFAULT_BLOCK_TOKENS;
    opt->n_threads = 1;
    opt->deflate_level = KVTC_DEFAULT_DEFLATE_LEVEL;
}

void kvtc_decompress_options_default(kvtc_decompress_options *opt)
{
    if (!opt)
        return;
    memset(opt, 0, sizeof *opt);
    opt->struct_size = sizeof *opt;
    opt->n_threads = 1;
}

/* ---- shared helpers ------------------------------------------------------- */

typedef struct batch {
    kvtc_task_fn fn;
    void *user;
    uint32_t start;
} batch;

static kvtc_status batch_item(void *user, uint32_t item, kvtc_error *err)
{
    const batch *b = user;
    return b->fn(b->user, b->start + item, err);
}

/* Runs items [0, n) in parallel; with a progress callback, in batches so the
 * calling thread can report between them (results never depend on batching). */
static kvtc_status run_items(uint32_t n, uint32_t n_threads, kvtc_task_fn fn, void *user,
                             kvtc_progress_fn progress, void *progress_user, const char *stage,
                             uint64_t done_before, uint64_t total, kvtc_error *err)
{
    n_threads = n_threads ? n_threads : 1;
    uint32_t per_batch = progress ? (n_threads < KVTC_MAX_THREADS ? n_threads : KVTC_MAX_THREADS) * 4 : n;
    for (uint32_t start = 0; start < n; start += per_batch) {
        batch b = {fn, user, start};
        uint32_t count = n - start < per_batch ? n - start : per_batch;
        kvtc_status st = kvtc_parallel_for(count, n_threads, batch_item, &b, err);
        if (st != KVTC_OK)
            return st;
        if (progress)
            progress(progress_user, stage, done_before + start + count, total);
    }
    return KVTC_OK;
}

/* Copies tokens [t0, t0+n) of one layer and kind between a cache (its layer
 * `cache_layer`) and a raw chunk laid out [layer][head][token][dim] holding n
 * tokens (its layer `chunk_layer`). */
static void raw_layer_copy(kvtc_cache *c, kvtc_kind kind, uint32_t cache_layer, uint32_t t0,
                           uint32_t n, uint8_t *chunk, uint32_t chunk_layer, bool into_chunk)
{
    const kvtc_model_shape *s = &c->shape;
    size_t row = (size_t)s->head_dim * kvtc_dtype_size(c->dtype);
    for (uint32_t h = 0; h < s->n_kv_head; h++)
        kvtc_cache_head_io(c, kind, cache_layer, h, t0, n,
                           chunk + ((size_t)chunk_layer * s->n_kv_head + h) * n * row,
                           into_chunk);
}

/* Raw layout every stream made with `cal` has for n tokens. */
static void raw_layout(const kvtc_calibration *cal, uint32_t n, uint32_t *sinks,
                       uint32_t *window)
{
    *sinks = n < cal->sinks ? n : cal->sinks;
    *window = n - *sinks <= cal->window ? n - *sinks : cal->window;
}

/* A stream can only be decoded or extended with the calibration it was made with. */
static kvtc_status check_calibration(const kvtc_calibration *cal, const kvtc_stream *s,
                                     kvtc_error *err)
{
    if (memcmp(s->fingerprint, cal->fingerprint, sizeof s->fingerprint) != 0) {
        char made[13], given[13];
        kvtc_hex(s->fingerprint, 6, made);
        kvtc_hex(cal->fingerprint, 6, given);
        return kvtc_fail(err, KVTC_E_MISMATCH, "stream made with calibration %s, given %s", made,
                         given);
    }
    if (!kvtc_shape_equal(&s->shape, &cal->shape))
        return kvtc_fail(err, KVTC_E_MISMATCH,
                         "stream shape %ux%ux%u differs from its calibration's %ux%ux%u",
                         s->shape.n_layer, s->shape.n_kv_head, s->shape.head_dim,
                         cal->shape.n_layer, cal->shape.n_kv_head, cal->shape.head_dim);
    for (int k = 0; k < 2; k++)
        if (s->plan[k]->n_coords > cal->kind[k].rank)
            return kvtc_fail(err, KVTC_E_MISMATCH,
                             "stream's %s plan uses %u coordinates, the calibration has %u",
                             kvtc_kind_name((kvtc_kind)k), s->plan[k]->n_coords, cal->kind[k].rank);
    uint32_t sinks, window;
    raw_layout(cal, s->n_tokens, &sinks, &window);
    if (s->sinks != sinks || s->window != window)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "stream keeps %u sink and %u window tokens raw; its calibration, %u "
                         "and %u",
                         s->sinks, s->window, sinks, window);
    return KVTC_OK;
}

static kvtc_status check_chunk_crc(const kvtc_block *b, uint32_t index, int kind,
                                   kvtc_error *err)
{
    if (kvtc_crc32(b->data[kind], (size_t)b->length[kind]) != b->crc[kind])
        return kvtc_fail(err, KVTC_E_CHECKSUM, "block %u %s: CRC mismatch (corrupt data)", index,
                         kvtc_kind_name(kind));
    return KVTC_OK;
}

/* The fp16 shifts and scales of a coded chunk are little-endian. */
static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static void put_le32(uint8_t *p, uint32_t v)
{
    put_le16(p, (uint16_t)v);
    put_le16(p + 2, (uint16_t)(v >> 16));
}

static uint32_t get_le32(const uint8_t *p) { return get_le16(p) | (uint32_t)get_le16(p + 2) << 16; }

static uint32_t max_group_size(const kvtc_plan *plan)
{
    uint32_t m = 0;
    for (uint32_t i = 0; i < plan->n_groups; i++)
        m = plan->groups[i].size > m ? plan->groups[i].size : m;
    return m;
}

/* ---- encode ---------------------------------------------------------------- */

typedef struct encoder {
    const kvtc_calibration *cal;
    kvtc_stream *s;
    const kvtc_cache *src; /* holds the stream's tokens [src_first, n_tokens) */
    uint32_t src_first;
    uint32_t first_new;    /* blocks before it are kept as they are */
    int level;
    uint8_t **owned;       /* [2 * (n_blocks - first_new)] chunks made here */
    uint32_t *n_escaped;   /* [2 * (n_blocks - first_new)] escaped tokens per chunk */
    bool force_escapes;    /* write an escape list even when it is empty */
} encoder;

/* ---- escaped tokens -------------------------------------------------------- */

/* A token is escaped, stored raw after the groups of its coded chunk, when a
 * coefficient of a kept group has a magnitude no fp16 shift and scale can
 * hold (above 65504, or an overflow): quantizing it would saturate. Its
 * coefficients are zeroed so that its groups cost next to nothing. Returns
 * how many tokens of the n were escaped, their indices in idx. */
static uint32_t find_escapes(const kvtc_plan *plan, float *coef, uint32_t n, uint32_t *idx)
{
    uint32_t nc = plan->n_coords, m = 0;
    for (uint32_t t = 0; t < n; t++) {
        float *row = coef + (size_t)t * nc;
        bool escape = false;
        for (uint32_t g = 0; g < plan->n_groups && !escape; g++) {
            const kvtc_group *gr = &plan->groups[g];
            for (uint32_t i = 0; gr->type != KVTC_Q_NONE && i < gr->size && !escape; i++)
                escape = !(fabsf(row[gr->start + i]) <= KVTC_F16_MAX);
        }
        if (escape) {
            idx[m++] = t;
            memset(row, 0, nc * sizeof *row);
        }
    }
    return m;
}

/* Bytes of an escape list of m tokens of p features of `elem` bytes. */
static size_t escape_list_bytes(uint32_t m, size_t p, size_t elem)
{
    return 4 + (size_t)m * (4 + p * elem);
}

/* Writes the escape list: u32 count, the u32 indices, then each token's
 * features raw in the cache dtype, [layer][head][dim]. */
static void put_escapes(const encoder *e, kvtc_kind kind, uint32_t t0, const uint32_t *idx,
                        uint32_t m, uint8_t *out)
{
    const kvtc_model_shape *s = &e->src->shape;
    size_t elem = kvtc_dtype_size(e->src->dtype), row = (size_t)s->head_dim * elem;
    uint8_t *p = out;
    put_le32(p, m);
    p += 4;
    for (uint32_t i = 0; i < m; i++, p += 4)
        put_le32(p, idx[i]);
    for (uint32_t i = 0; i < m; i++)
        for (uint32_t l = 0; l < s->n_layer; l++)
            for (uint32_t h = 0; h < s->n_kv_head; h++, p += row)
                memcpy(p, kvtc_cache_row(e->src, kind, l, h, t0 + idx[i]), row);
}

/* Quantizes group g of n tokens' coefficients (rows of nc) into its bytes of a
 * coded chunk: n fp16 shifts, n fp16 scales, then the packed codes (none for a
 * group of KVTC_Q_NONE). codes: scratch for n * g->size codes. */
static void quantize_group(const kvtc_group *g, const float *coef, uint32_t nc, uint32_t n,
                           uint8_t *out, uint8_t *codes)
{
    uint32_t bits = kvtc_qtype_bits(g->type);
    bool lm = kvtc_qtype_is_lm(g->type); /* scales only, no shifts */
    uint8_t *scales = lm ? out : out + 2 * (size_t)n;
    for (uint32_t t = 0; t < n && bits; t++) {
        uint16_t shift, scale;
        kvtc_quant_group(g->type, coef + (size_t)t * nc + g->start, g->size, &shift, &scale,
                         codes + (size_t)t * g->size);
        if (!lm)
            put_le16(out + 2 * (size_t)t, shift);
        put_le16(scales + 2 * (size_t)t, scale);
    }
    if (bits)
        kvtc_pack_bits(codes, (size_t)n * g->size, bits, scales + 2 * (size_t)n);
}

static kvtc_status encode_coded_chunk(const encoder *e, const kvtc_block *b, kvtc_kind kind,
                                      uint8_t **out, size_t *out_len, uint32_t *n_escaped,
                                      kvtc_error *err)
{
    const kvtc_plan *plan = e->s->plan[kind];
    uint32_t n = b->n_tokens, nc = plan->n_coords;
    size_t p = (size_t)kvtc_shape_features(&e->cal->shape);
    size_t elem = kvtc_dtype_size(e->src->dtype);
    size_t groups_len = (size_t)kvtc_coded_chunk_bytes(plan, n);
    float *rows = kvtc_malloc_array((size_t)n * p, sizeof *rows);
    float *coef = kvtc_malloc_array((size_t)n * nc, sizeof *coef);
    uint32_t *escaped = kvtc_malloc_array(n, sizeof *escaped);
    uint8_t *raw = NULL;
    uint8_t *codes = kvtc_malloc_array(n, max_group_size(plan));
    kvtc_status st = KVTC_OK;
    if (!rows || !coef || !escaped || !codes) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory encoding a block of %u tokens", n);
        goto done;
    }
    uint32_t t0 = b->first - e->src_first;
    kvtc_cache_gather_rows(e->src, kind, t0, n, rows);
    for (size_t i = 0; i < (size_t)n * p; i++)
        if (!isfinite(rows[i])) {
            st = kvtc_fail(err, KVTC_E_NUMERIC, "token %zu of the %s is not finite",
                           b->first + i / p, kvtc_kind_name(kind));
            goto done;
        }
    kvtc_transform_project(e->cal, kind, rows, n, nc, coef, NULL);
    uint32_t m = find_escapes(plan, coef, n, escaped);
    bool with_list = m > 0 || e->force_escapes;
    size_t raw_len = groups_len + (with_list ? escape_list_bytes(m, p, elem) : 0);
    if (!(raw = kvtc_malloc(raw_len))) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory encoding a block of %u tokens", n);
        goto done;
    }
    uint8_t *group_bytes = raw;
    for (uint32_t i = 0; i < plan->n_groups; i++) {
        quantize_group(&plan->groups[i], coef, nc, n, group_bytes, codes);
        group_bytes += kvtc_group_chunk_bytes(&plan->groups[i], n);
    }
    if (with_list)
        put_escapes(e, kind, b->first - e->src_first, escaped, m, raw + groups_len);
    *n_escaped = m;
    st = kvtc_deflate(e->level, raw, raw_len, out, out_len, err);
done:
    kvtc_free(rows);
    kvtc_free(coef);
    kvtc_free(escaped);
    kvtc_free(raw);
    kvtc_free(codes);
    return st;
}

static kvtc_status encode_raw_chunk(const encoder *e, const kvtc_block *b, kvtc_kind kind,
                                    uint8_t **out, size_t *out_len, kvtc_error *err)
{
    size_t len = (size_t)kvtc_raw_chunk_bytes(&e->src->shape, e->src->dtype, b->n_tokens);
    uint8_t *chunk = kvtc_malloc(len);
    if (!chunk)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %zu raw bytes", len);
    for (uint32_t l = 0; l < e->src->shape.n_layer; l++)
        raw_layer_copy((kvtc_cache *)e->src, kind, l, b->first - e->src_first, b->n_tokens,
                       chunk, l, true);
    *out = chunk;
    *out_len = len;
    return KVTC_OK;
}

static kvtc_status encode_item(void *user, uint32_t item, kvtc_error *err)
{
    encoder *e = user;
    kvtc_block *b = &e->s->blocks[e->first_new + item / 2];
    kvtc_kind kind = (kvtc_kind)(item % 2);
    uint8_t *chunk = NULL;
    size_t len = 0;
    kvtc_status st = b->encoding == KVTC_BLOCK_CODED
                         ? encode_coded_chunk(e, b, kind, &chunk, &len, &e->n_escaped[item], err)
                         : encode_raw_chunk(e, b, kind, &chunk, &len, err);
    if (st != KVTC_OK)
        return st;
    kvtc_free(e->owned[item]); /* the chunk of a first pass, when there was one */
    e->owned[item] = chunk;
    b->data[kind] = chunk;
    b->length[kind] = len;
    b->crc[kind] = kvtc_crc32(chunk, len);
    return KVTC_OK;
}

static uint32_t div_up(uint32_t a, uint32_t b) { return a / b + (a % b != 0); }

/* Lays out the blocks after the `n_kept` kept ones (which end at token
 * `kept_end`) for a stream of s->n_tokens tokens, encodes them from `src`
 * (which holds tokens [kept_end, n_tokens)) and serializes the stream. */
static kvtc_status encode_stream(const kvtc_calibration *cal, kvtc_stream *s,
                                 const kvtc_block *kept, uint32_t n_kept, uint32_t kept_end,
                                 const kvtc_cache *src, const kvtc_compress_options *opt,
                                 void **out, size_t *out_len, kvtc_error *err)
{
    uint32_t n = s->n_tokens;
    if (!kvtc_positions_valid(s->pos0, n))
        return kvtc_fail(err, KVTC_E_INVALID, "token positions %lld..%lld exceed %lld",
                         (long long)s->pos0, (long long)s->pos0 + n - 1,
                         (long long)KVTC_MAX_POSITION);
    raw_layout(cal, n, &s->sinks, &s->window);
    uint32_t coded_first = kept_end > s->sinks ? kept_end : s->sinks;
    uint32_t coded_end = n - s->window;
    bool new_sinks = kept_end == 0 && s->sinks > 0;
    uint32_t n_coded_blocks = div_up(coded_end - coded_first, s->block_tokens);
    uint32_t n_new = new_sinks + n_coded_blocks + (s->window > 0);
    s->n_blocks = n_kept + n_new;
    s->blocks = kvtc_calloc(s->n_blocks ? s->n_blocks : 1, sizeof *s->blocks);
    uint8_t **owned = kvtc_calloc(2 * (size_t)n_new + 1, sizeof *owned);
    uint32_t *n_escaped = kvtc_calloc(2 * (size_t)n_new + 1, sizeof *n_escaped);
    kvtc_status st = KVTC_OK;
    if (!s->blocks || !owned || !n_escaped) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u blocks", s->n_blocks);
        goto done;
    }
    if (n_kept)
        memcpy(s->blocks, kept, n_kept * sizeof *kept);
    kvtc_block *b = s->blocks + n_kept;
    if (new_sinks)
        *b++ = (kvtc_block){.first = 0, .n_tokens = s->sinks, .encoding = KVTC_BLOCK_RAW};
    for (uint32_t t = coded_first; t < coded_end; t += s->block_tokens) {
        uint32_t m = coded_end - t < s->block_tokens ? coded_end - t : s->block_tokens;
        *b++ = (kvtc_block){.first = t, .n_tokens = m, .encoding = KVTC_BLOCK_CODED};
    }
    if (s->window > 0)
        *b++ = (kvtc_block){.first = coded_end, .n_tokens = s->window, .encoding = KVTC_BLOCK_RAW};

    encoder e = {cal, s, src, kept_end, n_kept, opt->deflate_level, owned, n_escaped, false};
    st = run_items(2 * n_new, opt->n_threads, encode_item, &e, opt->progress, opt->progress_user,
                   "compress", 0, 2 * (uint64_t)n_new, err);
    /* A block with escapes in one kind needs an (empty) escape list in the
     * other: encode that chunk again, which is rare. */
    e.force_escapes = true;
    for (uint32_t i = 0; i < n_new && st == KVTC_OK; i++) {
        kvtc_block *blk = &s->blocks[n_kept + i];
        blk->escapes = n_escaped[2 * i] + n_escaped[2 * i + 1] > 0;
        for (uint32_t k = 0; k < 2 && blk->escapes && st == KVTC_OK; k++)
            if (n_escaped[2 * i + k] == 0)
                st = encode_item(&e, 2 * i + k, err);
    }
    if (st == KVTC_OK)
        st = kvtc_stream_serialize(s, out, out_len, err);
done:
    if (owned)
        for (uint32_t i = 0; i < 2 * n_new; i++)
            kvtc_free(owned[i]);
    kvtc_free(owned);
    kvtc_free(n_escaped);
    return st;
}

/* What kvtc_compress and kvtc_append check first: the outputs (cleared), the
 * calibration and cache, and the caller's options (NULL: the defaults), which
 * go into *o over the defaults. */
static kvtc_status compress_begin(const kvtc_calibration *cal, const kvtc_cache *cache,
                                  const kvtc_compress_options *opt, kvtc_compress_options *o,
                                  void **out, size_t *out_len, kvtc_error *err)
{
    if (!out || !out_len)
        return kvtc_fail(err, KVTC_E_INVALID, "no output given");
    *out = NULL;
    *out_len = 0;
    if (!cal || !cache)
        return kvtc_fail(err, KVTC_E_INVALID, "no calibration or cache given");
    kvtc_compress_options_default(o);
    kvtc_status st = opt ? kvtc_struct_in(o, sizeof *o, KVTC_COMPRESS_OPTIONS_V1_SIZE, opt,
                                          "compress options", err)
                         : KVTC_OK;
    if (st != KVTC_OK)
        return st;
    if (opt && opt->struct_size < offsetof(kvtc_compress_options, ratio_mode) + sizeof o->ratio_mode)
        o->ratio_mode = KVTC_RATIO_BUDGET; /* a caller from before the stored-bytes target */
    if (o->ratio_mode != KVTC_RATIO_STORED && o->ratio_mode != KVTC_RATIO_BUDGET)
        return kvtc_fail(err, KVTC_E_INVALID, "unknown ratio_mode %d", (int)o->ratio_mode);
    if (!(o->bytes_per_token >= 0) || !isfinite(o->bytes_per_token) ||
        (o->bytes_per_token > 0 && o->ratio_mode != KVTC_RATIO_STORED))
        return kvtc_fail(err, KVTC_E_INVALID,
                         "bytes_per_token %g must be finite, >= 0, and used with "
                         "KVTC_RATIO_STORED",
                         o->bytes_per_token);
    if (o->block_tokens < 1 || o->block_tokens > KVTC_MAX_BLOCK_TOKENS)
        return kvtc_fail(err, KVTC_E_INVALID, "block_tokens %u out of range 1..%u",
                         o->block_tokens, KVTC_MAX_BLOCK_TOKENS);
    if (o->deflate_level < 1 || o->deflate_level > 12)
        return kvtc_fail(err, KVTC_E_INVALID, "deflate_level %d out of range 1..12",
                         o->deflate_level);
    return KVTC_OK;
}

static kvtc_status check_cache(const kvtc_calibration *cal, const kvtc_cache *cache,
                               kvtc_error *err)
{
    if (!kvtc_shape_equal(&cache->shape, &cal->shape))
        return kvtc_fail(err, KVTC_E_MISMATCH,
                         "cache shape %ux%ux%u differs from the calibration's %ux%ux%u",
                         cache->shape.n_layer, cache->shape.n_kv_head, cache->shape.head_dim,
                         cal->shape.n_layer, cal->shape.n_kv_head, cal->shape.head_dim);
    return KVTC_OK;
}

/* Plans for budget ratios scale * (k_ratio, v_ratio) into s. *empty: a kind
 * got no coordinate (no error then; the caller decides). */
static kvtc_status make_plans(const kvtc_calibration *cal, kvtc_stream *s,
                              const kvtc_compress_options *opt, double scale, int *empty,
                              kvtc_error *err)
{
    double ratio[2] = {opt->k_ratio * scale, opt->v_ratio * scale};
    *empty = -1;
    for (int k = 0; k < 2; k++) {
        kvtc_plan_free(s->plan[k]);
        s->plan[k] = NULL;
        kvtc_status st = kvtc_plan_create(cal, (kvtc_kind)k, ratio[k], &s->plan[k], err);
        if (st != KVTC_OK)
            return st;
        if (s->plan[k]->n_coords == 0 && *empty < 0)
            *empty = k;
    }
    return KVTC_OK;
}

static kvtc_status no_coordinate(const kvtc_stream *s, int kind, kvtc_error *err)
{
    return kvtc_fail(err, KVTC_E_INVALID,
                     "ratio %g leaves the %s no coordinate (budget %u bits per token)",
                     s->plan[kind]->ratio, kvtc_kind_name((kvtc_kind)kind),
                     s->plan[kind]->budget_bits);
}

/* KVTC_RATIO_BUDGET: the ratios set the plans' bit budgets; one encode. */
static kvtc_status encode_at_budget(const kvtc_calibration *cal, kvtc_stream *s,
                                    const kvtc_cache *cache, const kvtc_compress_options *opt,
                                    void **out, size_t *out_len, kvtc_error *err)
{
    int empty;
    kvtc_status st = make_plans(cal, s, opt, 1.0, &empty, err);
    if (st == KVTC_OK && empty >= 0)
        st = no_coordinate(s, empty, err);
    if (st == KVTC_OK)
        st = encode_stream(cal, s, NULL, 0, 0, cache, opt, out, out_len, err);
    return st;
}

#define STORED_TOLERANCE 0.005 /* stop searching within 0.5% of the target */
#define STORED_ACCEPT 0.03     /* an encode this close storing no more is preferred */
#define STORED_MAX_ENCODES 5

/* Progress of the search's encodes as one monotonic count. */
typedef struct search_progress {
    kvtc_progress_fn fn;
    void *user;
    uint32_t pass;
    uint64_t total; /* of one encode, as last reported */
} search_progress;

static void report_search(void *user, const char *stage, uint64_t done, uint64_t total)
{
    search_progress *sp = user;
    sp->total = total;
    sp->fn(sp->user, stage, sp->pass * total + done, STORED_MAX_ENCODES * total);
}

/* KVTC_RATIO_STORED: DEFLATE's gain depends on the plan and the cache, so the
 * budget is searched. The stored size falls with the budget ratios' scale, in
 * steps (plans change by whole groups), close to proportionally: each encode
 * measures the stored bytes per coded token, narrows the bracket [lo, hi] of
 * scales known to store too much / too little, and tries the proportional
 * guess inside it (else the bracket's middle). Kept: the closest encode that
 * stores no more than asked if one is within STORED_ACCEPT (so a ratio asked
 * is a ratio reached), else the closest. */
static kvtc_status encode_at_stored_size(const kvtc_calibration *cal, kvtc_stream *s,
                                         const kvtc_cache *cache,
                                         const kvtc_compress_options *opt, void **out,
                                         size_t *out_len, kvtc_error *err)
{
    for (int k = 0; k < 2; k++) {
        double r = k ? opt->v_ratio : opt->k_ratio;
        if (!(r > 1.0) || !isfinite(r))
            return kvtc_fail(err, KVTC_E_INVALID, "compression ratio %g must be a number > 1",
                             r);
    }
    double fp16_bytes = 4.0 * kvtc_shape_features(&cal->shape); /* keys + values */
    double want = opt->bytes_per_token > 0
                      ? opt->bytes_per_token
                      : fp16_bytes / (2.0 / (1.0 / opt->k_ratio + 1.0 / opt->v_ratio));
    /* a budget ratio must stay > 1 for both kinds */
    double lo = 1.0000001 / fmin(opt->k_ratio, opt->v_ratio), hi = INFINITY;
    double scale = fmax(1.0, lo);
    uint32_t coded = s->n_tokens > cal->sinks + cal->window ? s->n_tokens - cal->sinks - cal->window : 0;
    search_progress sp = {opt->progress, opt->progress_user, 0, 0};
    kvtc_compress_options o = *opt;
    if (opt->progress) {
        o.progress = report_search;
        o.progress_user = &sp;
    }
    struct {
        void *data;
        size_t len;
        double got;
    } tried[STORED_MAX_ENCODES];
    uint32_t n_tried = 0;
    kvtc_status st = KVTC_OK;
    int empty = -1;
    for (uint32_t i = 0; i < STORED_MAX_ENCODES; i++) {
        sp.pass = i;
        double got = 0;
        if ((st = make_plans(cal, s, opt, scale, &empty, err)) != KVTC_OK)
            break;
        if (empty < 0) {
            void *data = NULL;
            size_t len = 0;
            if ((st = encode_stream(cal, s, NULL, 0, 0, cache, &o, &data, &len, err)) != KVTC_OK)
                break;
            uint64_t stored, raw;
            kvtc_stream_bytes(s, &stored, &raw);
            kvtc_free(s->blocks);
            s->blocks = NULL;
            got = coded ? (double)stored / coded : want;
            tried[n_tried].data = data;
            tried[n_tried].len = len;
            tried[n_tried++].got = got;
            if (got <= want && got >= want * (1 - STORED_TOLERANCE))
                break;
        }
        if (empty < 0 && got > want)
            lo = scale; /* stores too much: a higher ratio */
        else
            hi = scale; /* too little, or no coordinate left: a lower one */
        if (empty < 0 && got < want && scale <= lo)
            break; /* even the least ratio stores fewer bytes than asked */
        double guess = empty < 0 ? scale * got / want : 0;
        if (!(guess > lo && guess < hi))
            guess = isinf(hi) ? 2 * scale : sqrt(lo * hi);
        if (hi / lo < 1.004)
            break; /* a step of the plans lies in between: nothing closer */
        scale = guess;
    }
    /* the closest that stores no more than asked, if within STORED_ACCEPT (a
     * ratio asked is a ratio reached); else the closest */
    int pick = -1, under = -1;
    for (uint32_t i = 0; i < n_tried; i++) {
        double miss = fabs(tried[i].got / want - 1);
        if (pick < 0 || miss < fabs(tried[pick].got / want - 1))
            pick = (int)i;
        if (tried[i].got <= want && miss <= STORED_ACCEPT &&
            (under < 0 || tried[i].got > tried[under].got))
            under = (int)i;
    }
    if (under >= 0)
        pick = under;
    if (st == KVTC_OK && pick < 0)
        st = no_coordinate(s, empty, err);
    for (uint32_t i = 0; i < n_tried; i++)
        if (st != KVTC_OK || (int)i != pick)
            kvtc_buffer_free(tried[i].data);
    if (st != KVTC_OK)
        return st;
    if (opt->progress && sp.total)
        opt->progress(opt->progress_user, "compress", STORED_MAX_ENCODES * sp.total,
                      STORED_MAX_ENCODES * sp.total);
    *out = tried[pick].data;
    *out_len = tried[pick].len;
    return KVTC_OK;
}

kvtc_status kvtc_compress(const kvtc_calibration *cal, const kvtc_cache *cache,
                          const kvtc_compress_options *opt, void **out, size_t *out_len,
                          kvtc_error *err)
{
    kvtc_compress_options o;
    kvtc_status st = compress_begin(cal, cache, opt, &o, out, out_len, err);
    if (st == KVTC_OK)
        st = check_cache(cal, cache, err);
    if (st != KVTC_OK)
        return st;
    opt = &o;

    kvtc_stream s;
    memset(&s, 0, sizeof s);
    s.version = KVTC_STREAM_VERSION;
    s.shape = cal->shape;
    s.dtype = cache->dtype;
    s.pos0 = cache->pos0;
    s.n_tokens = cache->n_tokens;
    s.block_tokens = opt->block_tokens;
    memcpy(s.fingerprint, cal->fingerprint, sizeof s.fingerprint);
    memcpy(s.model, cache->model, sizeof s.model);
    if (cache->token_ids && cache->n_tokens) {
        if (!(s.token_ids = kvtc_malloc_array(cache->n_tokens, sizeof(int32_t))))
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u token ids", cache->n_tokens);
        else
            memcpy(s.token_ids, cache->token_ids, (size_t)cache->n_tokens * sizeof(int32_t));
    }
    if (st == KVTC_OK)
        st = opt->ratio_mode == KVTC_RATIO_BUDGET
                 ? encode_at_budget(cal, &s, cache, opt, out, out_len, err)
                 : encode_at_stored_size(cal, &s, cache, opt, out, out_len, err);
    kvtc_stream_release(&s);
    return st;
}

kvtc_status kvtc_append(const kvtc_calibration *cal, const void *prev, size_t prev_len,
                        const kvtc_cache *more, const kvtc_compress_options *opt, void **out,
                        size_t *out_len, kvtc_error *err)
{
    kvtc_compress_options o;
    kvtc_stream s;
    kvtc_status st = compress_begin(cal, more, opt, &o, out, out_len, err);
    if (st != KVTC_OK || (st = kvtc_stream_parse(prev, prev_len, &s, err)) != KVTC_OK)
        return st;
    opt = &o;
    kvtc_cache *tail = NULL;
    if ((st = check_calibration(cal, &s, err)) != KVTC_OK || (st = check_cache(cal, more, err)))
        goto done;
    if (more->dtype != s.dtype || more->pos0 != s.pos0 + (int64_t)s.n_tokens) {
        st = kvtc_fail(err, KVTC_E_MISMATCH,
                       "appended cache (%s, pos0 %lld) does not continue the stream (%s, next "
                       "position %lld)",
                       kvtc_dtype_name(more->dtype), (long long)more->pos0,
                       kvtc_dtype_name(s.dtype), (long long)(s.pos0 + s.n_tokens));
        goto done;
    }
    if (more->n_tokens > UINT32_MAX - s.n_tokens) {
        st = kvtc_fail(err, KVTC_E_INVALID, "stream would exceed %u tokens", UINT32_MAX);
        goto done;
    }
    /* Keep every block up to the last coded one; re-split the raw tokens after it. */
    uint32_t n_kept = 0, kept_end = 0;
    for (uint32_t i = 0; i < s.n_blocks; i++)
        if (s.blocks[i].encoding == KVTC_BLOCK_CODED) {
            n_kept = i + 1;
            kept_end = s.blocks[i].first + s.blocks[i].n_tokens;
        }
    uint32_t old_tail = s.n_tokens - kept_end;
    st = kvtc_cache_create(&s.shape, s.dtype, old_tail + more->n_tokens, s.pos0 + kept_end,
                           &tail, err);
    if (st != KVTC_OK)
        goto done;
    for (uint32_t i = 0; i < s.n_blocks; i++) {
        const kvtc_block *b = &s.blocks[i];
        for (int k = 0; k < 2; k++) {
            if ((st = check_chunk_crc(b, i, k, err)) != KVTC_OK)
                goto done;
            if (i < n_kept)
                continue;
            for (uint32_t l = 0; l < s.shape.n_layer; l++)
                raw_layer_copy(tail, (kvtc_kind)k, l, b->first - kept_end, b->n_tokens,
                               (uint8_t *)b->data[k], l, false);
        }
    }
    kvtc_cache_copy_tokens(tail, old_tail, more, 0, more->n_tokens);

    if ((s.token_ids != NULL) != (more->token_ids != NULL) && more->n_tokens && s.n_tokens) {
        st = kvtc_fail(err, KVTC_E_MISMATCH, "the stream %s token ids but the appended cache %s",
                       s.token_ids ? "carries" : "carries no", s.token_ids ? "none" : "does");
        goto done;
    }
    if (more->token_ids && more->n_tokens) {
        int32_t *ids = kvtc_malloc_array((size_t)s.n_tokens + more->n_tokens, sizeof *ids);
        if (!ids) {
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for token ids");
            goto done;
        }
        if (s.token_ids)
            memcpy(ids, s.token_ids, (size_t)s.n_tokens * sizeof *ids);
        memcpy(ids + s.n_tokens, more->token_ids, (size_t)more->n_tokens * sizeof *ids);
        kvtc_free(s.token_ids);
        s.token_ids = ids;
    }
    kvtc_block *kept = s.blocks;
    s.blocks = NULL;
    s.n_tokens += more->n_tokens;
    st = encode_stream(cal, &s, kept, n_kept, kept_end, tail, opt, out, out_len, err);
    kvtc_free(kept);
done:
    kvtc_cache_free(tail);
    kvtc_stream_release(&s);
    return st;
}

/* ---- decode ---------------------------------------------------------------- */

typedef struct decoder {
    const kvtc_calibration *cal;
    kvtc_stream s;
    uint32_t b0, b1;           /* blocks decoded */
    uint32_t coded_b0, coded_b1; /* the coded ones among them (contiguous) */
    uint32_t first, n_tokens;  /* tokens decoded */
    uint32_t coded_first, n_coded;
    float *coef[2];            /* [n_coded][n_coords of the kind] */
    bool tiles;                /* reconstruct on bf16 tiles (transform.h) */
    uint32_t tile_terms[2];
    uint16_t *coef_tiles[2];   /* coef packed for them: [n_coded][kvtc_transform_tile_row] */
    const struct kvtc_tile_basis *basis_tiles[2];
    float *rows[2];            /* features of one layer: [n_coded][n_kv_head * head_dim] */
    float *rope_cos, *rope_sin; /* RoPE angles of the coded tokens: [n_coded][rope_dims / 2] */
    kvtc_cache *layer;         /* one layer of the decoded tokens, keys and values */
    struct escape_list *escapes[2]; /* per coded block [coded_b0, coded_b1) and kind */
    uint32_t cur_layer;
    kvtc_decompress_options opt; /* the caller's, over the defaults */
} decoder;

/* The inverse of quantize_group: group g's coefficients of n tokens (rows of
 * nc) from its bytes of a coded chunk; zeros for a group of KVTC_Q_NONE. An
 * lm scale that is not a finite non-negative fp16 (never written) is FORMAT. */
static kvtc_status dequantize_group(const kvtc_group *g, uint32_t index, const uint8_t *in,
                                    uint32_t n, float *coef, uint32_t nc, uint8_t *codes,
                                    kvtc_error *err)
{
    uint32_t bits = kvtc_qtype_bits(g->type);
    if (kvtc_qtype_is_lm(g->type)) {
        /* n scales, then each token's codes from a byte boundary (size >= 16) */
        const uint8_t *packed = in + 2 * (size_t)n;
        size_t token_bytes = (size_t)g->size * bits / 8;
        for (uint32_t t = 0; t < n; t++) {
            uint16_t scale = get_le16(in + 2 * (size_t)t);
            if (!kvtc_lm_scale_valid(scale))
                return kvtc_fail(err, KVTC_E_FORMAT,
                                 "group %u (%s) token %u has scale 0x%04x, not a finite "
                                 "non-negative fp16",
                                 index, kvtc_qtype_name(g->type), t, scale);
            kvtc_lm_dequant_packed(g->type, scale, packed + t * token_bytes, g->size,
                                   coef + (size_t)t * nc + g->start);
        }
        return KVTC_OK;
    }
    if (bits)
        kvtc_unpack_bits(in + 4 * (size_t)n, (size_t)n * g->size, bits, codes);
    for (uint32_t t = 0; t < n; t++)
        kvtc_dequant_group(g->type, bits ? get_le16(in + 2 * (size_t)t) : 0,
                           bits ? get_le16(in + 2 * ((size_t)n + t)) : 0,
                           codes + (size_t)t * g->size, g->size, coef + (size_t)t * nc + g->start);
    return KVTC_OK;
}

/* The escaped tokens of one coded chunk, as read from it. */
typedef struct escape_list {
    uint32_t n;
    uint32_t *index; /* in the block, increasing */
    uint8_t *rows;   /* n feature rows raw in the stream's dtype */
} escape_list;

/* Reads the escape list at the end of an inflated chunk of `got` bytes whose
 * groups take groups_len bytes, for a block of n tokens. */
static kvtc_status get_escapes(const uint8_t *raw, size_t got, size_t groups_len, uint32_t n,
                               size_t row_bytes, escape_list *list, kvtc_error *err)
{
    if (got < groups_len + 4)
        return kvtc_fail(err, KVTC_E_FORMAT, "escape list missing");
    const uint8_t *p = raw + groups_len;
    uint32_t m = get_le32(p);
    if (m > n || got != groups_len + 4 + (size_t)m * (4 + row_bytes))
        return kvtc_fail(err, KVTC_E_FORMAT, "escape list of %u tokens in a block of %u does "
                         "not fill its chunk", m, n);
    list->n = m;
    if (m == 0)
        return KVTC_OK;
    list->index = kvtc_malloc_array(m, sizeof *list->index);
    list->rows = kvtc_malloc_array(m, row_bytes);
    if (!list->index || !list->rows)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u escaped tokens", m);
    for (uint32_t i = 0; i < m; i++) {
        list->index[i] = get_le32(p + 4 + 4 * (size_t)i);
        if (list->index[i] >= n || (i > 0 && list->index[i] <= list->index[i - 1]))
            return kvtc_fail(err, KVTC_E_FORMAT, "escaped token %u out of order or range",
                             list->index[i]);
    }
    memcpy(list->rows, p + 4 + 4 * (size_t)m, (size_t)m * row_bytes);
    return KVTC_OK;
}

/* Item: one chunk of the decoded blocks. Raw chunks are only checked here. */
static kvtc_status decode_item(void *user, uint32_t item, kvtc_error *err)
{
    decoder *d = user;
    uint32_t index = d->b0 + item / 2;
    const kvtc_block *b = &d->s.blocks[index];
    int kind = item % 2;
    kvtc_status st = check_chunk_crc(b, index, kind, err);
    if (st != KVTC_OK || b->encoding == KVTC_BLOCK_RAW)
        return st;
    const kvtc_plan *plan = d->s.plan[kind];
    size_t groups_len = (size_t)kvtc_coded_chunk_bytes(plan, b->n_tokens);
    size_t row_bytes = (size_t)kvtc_shape_features(&d->s.shape) * kvtc_dtype_size(d->s.dtype);
    size_t raw_len = groups_len + (b->escapes ? escape_list_bytes(b->n_tokens, row_bytes, 1) : 0);
    size_t got = raw_len;
    uint8_t *raw = kvtc_malloc(raw_len);
    uint8_t *codes = kvtc_malloc_array(b->n_tokens, max_group_size(plan));
    if (!raw || !codes) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory decoding block %u", index);
    } else if ((st = kvtc_inflate(b->data[kind], (size_t)b->length[kind], raw, raw_len,
                                  b->escapes ? &got : NULL, err)) != KVTC_OK ||
               (b->escapes &&
                (st = get_escapes(raw, got, groups_len, b->n_tokens, row_bytes,
                                  &d->escapes[kind][index - d->coded_b0], err)) != KVTC_OK)) {
        char where[48];
        snprintf(where, sizeof where, "block %u %s", index, kvtc_kind_name(kind));
        kvtc_fail_prefix(err, where);
    } else {
        float *coef = d->coef[kind] + (size_t)(b->first - d->coded_first) * plan->n_coords;
        const uint8_t *group_bytes = raw;
        for (uint32_t i = 0; i < plan->n_groups && st == KVTC_OK; i++) {
            st = dequantize_group(&plan->groups[i], i, group_bytes, b->n_tokens, coef,
                                  plan->n_coords, codes, err);
            group_bytes += kvtc_group_chunk_bytes(&plan->groups[i], b->n_tokens);
        }
        if (st != KVTC_OK) {
            char where[48];
            snprintf(where, sizeof where, "block %u %s", index, kvtc_kind_name(kind));
            kvtc_fail_prefix(err, where);
        } else if (d->tiles)
            kvtc_transform_tile_coefficients(
                coef, plan->n_coords, b->n_tokens, plan->n_coords, d->tile_terms[kind],
                d->coef_tiles[kind] + (size_t)(b->first - d->coded_first) *
                                          kvtc_transform_tile_row(plan->n_coords,
                                                                  d->tile_terms[kind]));
    }
    kvtc_free(raw);
    kvtc_free(codes);
    return st;
}

/* Item: one coded block and kind of the current layer: its features from its
 * coefficients (the transform's one sgemm plus the mean), then RoPE (with the
 * angles computed once per decode, not once per layer) and dtype into d->layer. Per-block
 * products keep every block's result independent of which other blocks are
 * decoded with it (BLAS rounding can depend on matrix sizes). */
static kvtc_status rebuild_item(void *user, uint32_t item, kvtc_error *err)
{
    (void)err;
    decoder *d = user;
    const kvtc_block *b = &d->s.blocks[d->coded_b0 + item / 2];
    int kind = item % 2;
    const kvtc_model_shape *shape = &d->s.shape;
    uint32_t nc = d->s.plan[kind]->n_coords;
    size_t hd = (size_t)shape->n_kv_head * shape->head_dim;
    size_t row0 = b->first - d->coded_first;
    float *rows = d->rows[kind] + row0 * hd;
    if (d->tiles)
        kvtc_transform_reconstruct_tiles(
            d->cal, (kvtc_kind)kind, d->cur_layer,
            d->coef_tiles[kind] + row0 * kvtc_transform_tile_row(nc, d->tile_terms[kind]),
            b->n_tokens, nc,
            d->basis_tiles[kind], rows);
    else
        kvtc_transform_reconstruct_layer(d->cal, (kvtc_kind)kind, d->cur_layer,
                                         d->coef[kind] + row0 * nc, b->n_tokens, nc, rows);
    bool rope = kind == KVTC_KEY && shape->rope_style != KVTC_ROPE_NONE;
    size_t half = shape->rope_dims / 2, elem = kvtc_dtype_size(d->s.dtype);
    uint8_t *out = kvtc_cache_data(d->layer, (kvtc_kind)kind, 0);
    for (uint32_t t = 0; t < b->n_tokens; t++) {
        float *row = rows + t * hd;
        size_t token = b->first - d->first + t;
        for (uint32_t h = 0; h < shape->n_kv_head; h++) {
            float *head = row + (size_t)h * shape->head_dim;
            if (rope)
                kvtc_rope_apply(shape, head, d->rope_cos + (row0 + t) * half,
                                d->rope_sin + (row0 + t) * half, false);
            kvtc_from_f32(d->s.dtype, head,
                          out + ((size_t)h * d->n_tokens + token) * shape->head_dim * elem,
                          shape->head_dim);
        }
    }
    /* Escaped tokens come back bit-exact from their raw rows. */
    const escape_list *list = &d->escapes[kind][item / 2];
    size_t head_bytes = shape->head_dim * elem;
    for (uint32_t i = 0; i < list->n; i++) {
        size_t token = b->first - d->first + list->index[i];
        const uint8_t *row = list->rows + ((size_t)i * shape->n_layer + d->cur_layer) * hd * elem;
        for (uint32_t h = 0; h < shape->n_kv_head; h++)
            memcpy(out + ((size_t)h * d->n_tokens + token) * head_bytes, row + h * head_bytes,
                   head_bytes);
    }
    return KVTC_OK;
}

/* Receives each rebuilt layer (keys and values of d->layer). */
typedef kvtc_status (*layer_sink_fn)(void *user, uint32_t layer, const decoder *d,
                                     kvtc_error *err);

static void decoder_release(decoder *d)
{
    for (int k = 0; k < 2; k++) {
        kvtc_free(d->coef[k]);
        kvtc_free(d->coef_tiles[k]);
        kvtc_free(d->rows[k]);
        for (uint32_t i = 0; d->escapes[k] && i < d->coded_b1 - d->coded_b0; i++) {
            kvtc_free(d->escapes[k][i].index);
            kvtc_free(d->escapes[k][i].rows);
        }
        kvtc_free(d->escapes[k]);
    }
    kvtc_free(d->rope_cos);
    kvtc_free(d->rope_sin);
    kvtc_cache_free(d->layer);
    kvtc_stream_release(&d->s);
}

static uint64_t progress_total(const decoder *d)
{
    return 2 * (uint64_t)(d->b1 - d->b0) + d->s.shape.n_layer;
}

/* Phase 1: checks every chunk of blocks [b0, b1) and decodes the coefficients
 * of their coded tokens into d->coef. */
static kvtc_status decode_coefficients(decoder *d, kvtc_error *err)
{
    const kvtc_stream *s = &d->s;
    d->first = d->b0 < d->b1 ? s->blocks[d->b0].first : 0;
    d->coded_b0 = d->coded_b1 = d->b0;
    for (uint32_t i = d->b0; i < d->b1; i++) {
        d->n_tokens += s->blocks[i].n_tokens;
        if (s->blocks[i].encoding == KVTC_BLOCK_CODED) {
            if (d->n_coded == 0)
                d->coded_b0 = i;
            d->coded_b1 = i + 1;
            d->n_coded += s->blocks[i].n_tokens;
        }
    }
    d->coded_first = d->n_coded ? s->blocks[d->coded_b0].first : 0;
    d->tiles = d->n_coded > 0 && kvtc_transform_tiles_usable(d->cal);
    for (int k = 0; k < 2; k++) {
        d->coef[k] = kvtc_malloc_array((size_t)d->n_coded * s->plan[k]->n_coords, sizeof(float));
        d->escapes[k] = kvtc_calloc((size_t)(d->coded_b1 - d->coded_b0) + 1, sizeof(escape_list));
        if (d->tiles) {
            uint32_t nc = s->plan[k]->n_coords;
            d->tile_terms[k] = kvtc_transform_tile_terms(d->cal, s->plan[k]);
            d->coef_tiles[k] = kvtc_malloc_array(
                (size_t)d->n_coded, kvtc_transform_tile_row(nc, d->tile_terms[k]) * 2);
            d->basis_tiles[k] = kvtc_transform_tile_basis(d->cal, (kvtc_kind)k, nc,
                                                          d->tile_terms[k]);
        }
        if (!d->coef[k] || !d->escapes[k] ||
            (d->tiles && (!d->coef_tiles[k] || !d->basis_tiles[k])))
            return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u decoded tokens",
                             d->n_coded);
    }
    const kvtc_decompress_options *opt = &d->opt;
    return run_items(2 * (d->b1 - d->b0), opt->n_threads, decode_item, d, opt->progress,
                     opt->progress_user, "decompress", 0, progress_total(d), err);
}

/* Phase 2: rebuilds one layer at a time and hands it to sink. */
static kvtc_status rebuild_layers(decoder *d, layer_sink_fn sink, void *sink_user,
                                  kvtc_error *err)
{
    const kvtc_stream *s = &d->s;
    const kvtc_decompress_options *opt = &d->opt;
    size_t hd = (size_t)s->shape.n_kv_head * s->shape.head_dim;
    size_t half = s->shape.rope_dims / 2;
    for (int k = 0; k < 2; k++)
        d->rows[k] = kvtc_malloc_array((size_t)d->n_coded * hd, sizeof(float));
    d->rope_cos = kvtc_malloc_array((size_t)d->n_coded * half, sizeof(float));
    d->rope_sin = kvtc_malloc_array((size_t)d->n_coded * half, sizeof(float));
    if (!d->rows[0] || !d->rows[1] || !d->rope_cos || !d->rope_sin)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u decoded tokens", d->n_coded);
    if (s->shape.rope_style != KVTC_ROPE_NONE) {
        double freq[512];
        kvtc_rope_freqs(&s->shape, freq);
        for (uint32_t t = 0; t < d->n_coded; t++)
            kvtc_rope_angles_at(&s->shape, freq, s->pos0 + d->coded_first + t,
                                d->rope_cos + t * half, d->rope_sin + t * half);
    }
    kvtc_model_shape layer_shape = s->shape;
    layer_shape.n_layer = 1;
    kvtc_status st =
        kvtc_cache_create(&layer_shape, s->dtype, d->n_tokens, s->pos0 + d->first, &d->layer, err);
    for (uint32_t l = 0; l < s->shape.n_layer && st == KVTC_OK; l++) {
        d->cur_layer = l;
        st = kvtc_parallel_for(2 * (d->coded_b1 - d->coded_b0), opt->n_threads, rebuild_item, d,
                               err);
        for (uint32_t i = d->b0; i < d->b1 && st == KVTC_OK; i++) {
            const kvtc_block *b = &s->blocks[i];
            if (b->encoding == KVTC_BLOCK_RAW)
                for (int k = 0; k < 2; k++)
                    raw_layer_copy(d->layer, (kvtc_kind)k, 0, b->first - d->first, b->n_tokens,
                                   (uint8_t *)b->data[k], l, false);
        }
        if (st == KVTC_OK)
            st = sink(sink_user, l, d, err);
        if (st == KVTC_OK && opt->progress)
            opt->progress(opt->progress_user, "decompress",
                          progress_total(d) - s->shape.n_layer + l + 1, progress_total(d));
    }
    return st;
}

/* Parses `data`, checks it against `cal`, selects all blocks or only `block`,
 * and decodes their coefficients. d is released by the caller in any case. */
static kvtc_status decoder_open(decoder *d, const kvtc_calibration *cal, const void *data,
                                size_t len, const kvtc_decompress_options *opt, bool one_block,
                                uint32_t block, kvtc_error *err)
{
    memset(d, 0, sizeof *d);
    d->cal = cal;
    kvtc_decompress_options_default(&d->opt);
    kvtc_status st = KVTC_OK;
    if (opt)
        st = kvtc_struct_in(&d->opt, sizeof d->opt, KVTC_DECOMPRESS_OPTIONS_V1_SIZE, opt,
                            "decompress options", err);
    if (st != KVTC_OK)
        return st;
    if (!cal)
        return kvtc_fail(err, KVTC_E_INVALID, "no calibration given");
    st = kvtc_stream_parse(data, len, &d->s, err);
    if (st != KVTC_OK || (st = check_calibration(cal, &d->s, err)) != KVTC_OK)
        return st;
    if (one_block && block >= d->s.n_blocks)
        return kvtc_fail(err, KVTC_E_INVALID, "block %u out of range (stream has %u)", block,
                         d->s.n_blocks);
    d->b0 = one_block ? block : 0;
    d->b1 = one_block ? block + 1 : d->s.n_blocks;
    if (d->opt.max_output_bytes) {
        uint64_t tokens = 0;
        for (uint32_t i = d->b0; i < d->b1; i++)
            tokens += d->s.blocks[i].n_tokens;
        /* < 2^32 tokens x < 2^32 features x 4 bytes x 2 kinds: no overflow in
         * long double, and the comparison needs no exact product */
        long double bytes = (long double)tokens * kvtc_shape_features(&d->s.shape) *
                            kvtc_dtype_size(d->s.dtype) * 2;
        if (bytes > (long double)d->opt.max_output_bytes)
            return kvtc_fail(err, KVTC_E_LIMIT,
                             "the restored cache would take %.0Lf bytes, over the limit of %llu",
                             bytes, (unsigned long long)d->opt.max_output_bytes);
    }
    return decode_coefficients(d, err);
}

static kvtc_status decode(const kvtc_calibration *cal, const void *data, size_t len,
                          const kvtc_decompress_options *opt, bool one_block, uint32_t block,
                          layer_sink_fn sink, void *sink_user, kvtc_error *err)
{
    decoder d;
    kvtc_status st = decoder_open(&d, cal, data, len, opt, one_block, block, err);
    if (st == KVTC_OK)
        st = rebuild_layers(&d, sink, sink_user, err);
    decoder_release(&d);
    return st;
}

kvtc_status kvtc_stream_coefficients(const kvtc_calibration *cal, const void *data, size_t len,
                                     kvtc_kind kind, float **coef, uint32_t *n_coded,
                                     uint32_t *n_coords, kvtc_error *err)
{
    if (!coef || !n_coded || !n_coords || (kind != KVTC_KEY && kind != KVTC_VALUE))
        return kvtc_fail(err, KVTC_E_INVALID, "no output or valid kind given");
    *coef = NULL;
    decoder d;
    kvtc_status st = decoder_open(&d, cal, data, len, NULL, false, 0, err);
    if (st == KVTC_OK) {
        *coef = d.coef[kind];
        *n_coded = d.n_coded;
        *n_coords = d.s.plan[kind]->n_coords;
        d.coef[kind] = NULL;
    }
    decoder_release(&d);
    return st;
}

/* Sink of kvtc_decompress, kvtc_decompress_block and kvtc_decompress_into:
 * copies each layer into a cache, made on the first layer unless given. */
typedef struct cache_sink {
    kvtc_cache *cache;
} cache_sink;

static kvtc_status copy_layer_into_cache(void *user, uint32_t layer, const decoder *d,
                                         kvtc_error *err)
{
    cache_sink *cs = user;
    if (!cs->cache) {
        kvtc_status st = kvtc_cache_create(&d->s.shape, d->s.dtype, d->n_tokens,
                                           d->s.pos0 + d->first, &cs->cache, err);
        if (st != KVTC_OK)
            return st;
        memcpy(cs->cache->model, d->s.model, sizeof cs->cache->model);
        if (d->s.token_ids &&
            (st = kvtc_cache_set_token_ids(cs->cache, d->s.token_ids + d->first, err)) != KVTC_OK)
            return st;
    }
    kvtc_cache_copy_layer(cs->cache, layer, d->layer, 0);
    return KVTC_OK;
}

static kvtc_status decode_to_cache(const kvtc_calibration *cal, const void *data, size_t len,
                                   const kvtc_decompress_options *opt, bool one_block,
                                   uint32_t block, kvtc_cache **out, kvtc_error *err)
{
    if (!out)
        return kvtc_fail(err, KVTC_E_INVALID, "no output given");
    *out = NULL;
    cache_sink cs = {NULL};
    kvtc_status st = decode(cal, data, len, opt, one_block, block, copy_layer_into_cache, &cs, err);
    if (st != KVTC_OK) {
        kvtc_cache_free(cs.cache);
        return st;
    }
    *out = cs.cache;
    return KVTC_OK;
}

kvtc_status kvtc_decompress(const kvtc_calibration *cal, const void *data, size_t len,
                            const kvtc_decompress_options *opt, kvtc_cache **out, kvtc_error *err)
{
    return decode_to_cache(cal, data, len, opt, false, 0, out, err);
}

kvtc_status kvtc_decompress_block(const kvtc_calibration *cal, const void *data, size_t len,
                                  uint32_t block, const kvtc_decompress_options *opt,
                                  kvtc_cache **out, kvtc_error *err)
{
    return decode_to_cache(cal, data, len, opt, true, block, out, err);
}

kvtc_status kvtc_decompress_into(const kvtc_calibration *cal, const void *data, size_t len,
                                 const kvtc_decompress_options *opt, kvtc_cache *dst,
                                 kvtc_error *err)
{
    if (!dst)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_decompress_into: no cache given");
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_status st = kvtc_stream_info_get(data, len, &info, err);
    if (st != KVTC_OK)
        return st;
    if (!kvtc_shape_equal(&info.shape, &dst->shape) || info.dtype != dst->dtype ||
        info.n_tokens != dst->n_tokens)
        return kvtc_fail(err, KVTC_E_MISMATCH,
                         "stream holds %u tokens of %ux%ux%u %s, the cache %u tokens of "
                         "%ux%ux%u %s",
                         info.n_tokens, info.shape.n_layer, info.shape.n_kv_head,
                         info.shape.head_dim, kvtc_dtype_name(info.dtype), dst->n_tokens,
                         dst->shape.n_layer, dst->shape.n_kv_head, dst->shape.head_dim,
                         kvtc_dtype_name(dst->dtype));
    cache_sink cs = {dst};
    st = decode(cal, data, len, opt, false, 0, copy_layer_into_cache, &cs, err);
    if (st == KVTC_OK) {
        dst->pos0 = info.pos0;
        memcpy(dst->model, info.model_name, sizeof dst->model);
    }
    return st;
}

typedef struct user_sink {
    kvtc_layer_fn fn;
    void *user;
} user_sink;

static kvtc_status call_user_layer(void *user, uint32_t layer, const decoder *d, kvtc_error *err)
{
    user_sink *us = user;
    if (us->fn(us->user, layer, kvtc_cache_data_const(d->layer, KVTC_KEY, 0),
               kvtc_cache_data_const(d->layer, KVTC_VALUE, 0)) != 0)
        return kvtc_fail(err, KVTC_E_CANCELLED, "layer callback stopped decoding at layer %u",
                         layer);
    return KVTC_OK;
}

kvtc_status kvtc_decompress_layers(const kvtc_calibration *cal, const void *data, size_t len,
                                   const kvtc_decompress_options *opt, kvtc_layer_fn fn,
                                   void *user, kvtc_error *err)
{
    if (!fn)
        return kvtc_fail(err, KVTC_E_INVALID, "no layer callback given");
    user_sink us = {fn, user};
    return decode(cal, data, len, opt, false, 0, call_user_layer, &us, err);
}
