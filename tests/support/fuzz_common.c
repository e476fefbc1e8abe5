/* The bodies of the fuzz targets (see fuzz_common.h). */
#include "fuzz_common.h"

#include "container.h"
#include "gguf.h"
#include "kvtc_internal.h"
#include "llama2c.h"
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BLOCKS_CHECKED 64u      /* single-block decodes compared per input */
#define MAX_GGUF_TENSORS 256u       /* tensors walked per input */
#define MAX_GGUF_DEQUANT (1u << 16) /* elements dequantized per tensor */
#define MAX_GGUF_STRINGS 64u        /* array strings read per key */

static const kvtc_model_shape FUZZ_SHAPE = {
    .n_layer = 2, .n_kv_head = 1, .head_dim = 8, .rope_style = KVTC_ROPE_INTERLEAVED,
    .rope_theta = 10000.0,
};

static int broken(const char *what)
{
    fprintf(stderr, "fuzz invariant broken: %s\n", what);
    return 1;
}

/* Reads every byte so AddressSanitizer sees any out-of-bounds pointer. */
static uint8_t touch(const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    uint8_t x = 0;
    for (size_t i = 0; i < n; i++)
        x ^= b[i];
    return x;
}

/* ---- the fixed calibration ------------------------------------------------------ */

kvtc_cache *fuzz_make_cache(kvtc_dtype dtype, uint32_t n_tokens, int64_t pos0, uint64_t seed)
{
    return make_random_cache(&FUZZ_SHAPE, dtype, n_tokens, pos0, 3, seed);
}

kvtc_status fuzz_make_calibration(kvtc_calibration **out, kvtc_error *err)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 2;
    opt.window = 4;
    opt.heldout_every = 4;
    random_series series = {&FUZZ_SHAPE, KVTC_F32, 48, 0, 3, 0};
    return test_calibrate(&FUZZ_SHAPE, &opt, 4, random_series_cache, &series, out, err);
}

const kvtc_calibration *fuzz_shared_calibration(void)
{
    static kvtc_calibration *cal;
    kvtc_error err;
    if (!cal && fuzz_make_calibration(&cal, &err) != KVTC_OK) {
        fprintf(stderr, "fuzz: cannot build the calibration: %s\n", err.message);
        abort();
    }
    return cal;
}

/* ---- checksum repair -------------------------------------------------------------- */

void fuzz_fix_kvtc_checksums(uint8_t *buf, size_t len)
{
    if (len < 24)
        return;
    uint64_t header = test_get_le(buf + 16, 8);
    if (header < 24 || header > len)
        return;
    test_put_le(buf + header - 4, kvtc_crc32(buf, (size_t)header - 4), 4);
    kvtc_stream s;
    if (kvtc_stream_parse(buf, len, &s, NULL) != KVTC_OK)
        return;
    /* The block table is the last part of the header, just before its CRC. */
    uint8_t *table = buf + header - 4 - (size_t)s.n_blocks * KVTC_BLOCK_ENTRY_BYTES;
    for (uint32_t i = 0; i < s.n_blocks; i++)
        for (int k = 0; k < 2; k++)
            test_put_le(table + (size_t)i * KVTC_BLOCK_ENTRY_BYTES + 20 + 12 * k,
                        kvtc_crc32(s.blocks[i].data[k], (size_t)s.blocks[i].length[k]), 4);
    kvtc_stream_release(&s);
    test_put_le(buf + header - 4, kvtc_crc32(buf, (size_t)header - 4), 4);
}

/* Layout of docs/FORMAT.md, section 2: a 72-byte header (CRC last), two sections
 * (CRC last), a 32-byte SHA-256 of everything before it. */
void fuzz_fix_kvtcal_checksums(uint8_t *buf, size_t len)
{
    enum { HEADER = 72, FINGERPRINT = 32, SECTION_FIXED = 36 };
    if (len < HEADER + FINGERPRINT)
        return;
    size_t body_end = len - FINGERPRINT;
    test_put_le(buf + 12, len, 8);
    test_put_le(buf + HEADER - 4, kvtc_crc32(buf, HEADER - 4), 4);
    uint64_t p; /* features: n_layer * n_kv_head * head_dim */
    if (__builtin_mul_overflow(test_get_le(buf + 20, 4), test_get_le(buf + 24, 4), &p) ||
        __builtin_mul_overflow(p, test_get_le(buf + 28, 4), &p))
        p = UINT64_MAX;
    size_t off = HEADER;
    for (int k = 0; k < 2 && p <= len; k++) {
        if (body_end - off < SECTION_FIXED)
            break;
        uint64_t rank = test_get_le(buf + off + 4, 4);
        if (rank < 1 || rank > p)
            break;
        uint64_t size = SECTION_FIXED + 4 * p + 4 * rank + 4 * p * rank +
                        8 * (uint64_t)kvtc_err_table_len((uint32_t)rank) + 4;
        if (size > body_end - off)
            break;
        test_put_le(buf + off + size - 4, kvtc_crc32(buf + off, (size_t)size - 4), 4);
        off += (size_t)size;
    }
    kvtc_sha256(buf, body_end, buf + body_end);
}

/* ---- .kvtc --------------------------------------------------------------------------- */

static bool cache_matches_info(const kvtc_cache *c, const kvtc_stream_info *info)
{
    return kvtc_shape_equal(kvtc_cache_shape(c), &info->shape) &&
           kvtc_cache_dtype(c) == info->dtype && kvtc_cache_tokens(c) == info->n_tokens &&
           kvtc_cache_pos0(c) == info->pos0;
}

typedef struct layer_check {
    const kvtc_stream_info *info; /* NULL when the header was refused */
    const kvtc_cache *full;       /* the whole decode, or NULL */
    uint32_t next_layer;
    int bad;
} layer_check;

static int on_layer(void *user, uint32_t layer, const void *key, const void *value)
{
    layer_check *lc = user;
    if (!lc->info || layer != lc->next_layer || layer >= lc->info->shape.n_layer) {
        lc->bad |= broken("kvtc_decompress_layers: unexpected layer callback");
        return 1;
    }
    lc->next_layer++;
    const kvtc_model_shape *s = &lc->info->shape;
    size_t bytes = (size_t)s->n_kv_head * lc->info->n_tokens * s->head_dim *
                   kvtc_dtype_size(lc->info->dtype);
    touch(key, bytes);
    touch(value, bytes);
    if (lc->full && (memcmp(key, kvtc_cache_data_const(lc->full, KVTC_KEY, layer), bytes) ||
                     memcmp(value, kvtc_cache_data_const(lc->full, KVTC_VALUE, layer), bytes)))
        lc->bad |= broken("kvtc_decompress_layers differs from kvtc_decompress");
    return 0;
}

/* Every block alone decodes to the same tokens as the whole decode. */
static int check_blocks(const kvtc_calibration *cal, const uint8_t *data, size_t len,
                        const kvtc_stream_info *info, const kvtc_cache *full)
{
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    int bad = 0;
    uint32_t first = 0;
    uint32_t n_checked = info->n_blocks < MAX_BLOCKS_CHECKED ? info->n_blocks : MAX_BLOCKS_CHECKED;
    for (uint32_t b = 0; b < n_checked; b++) {
        kvtc_cache *blk = NULL;
        kvtc_status st = kvtc_decompress_block(cal, data, len, b, &dopt, &blk, NULL);
        if (st != KVTC_OK) {
            if (full)
                bad |= broken("a block of a stream that decodes whole does not decode alone");
            first = UINT32_MAX;
            continue;
        }
        uint32_t n = kvtc_cache_tokens(blk);
        if (!kvtc_shape_equal(kvtc_cache_shape(blk), &info->shape) ||
            kvtc_cache_dtype(blk) != info->dtype || n == 0 || n > info->n_tokens)
            bad |= broken("kvtc_decompress_block: block shape, dtype or size is wrong");
        else if (full && first != UINT32_MAX &&
                 (first > info->n_tokens - n || kvtc_cache_pos0(blk) != info->pos0 + first ||
                  !test_tokens_equal(blk, 0, full, first, n)))
            bad |= broken("kvtc_decompress_block differs from the whole decode");
        if (first != UINT32_MAX)
            first += n;
        kvtc_cache_free(blk);
    }
    if (full && first != UINT32_MAX && n_checked == info->n_blocks && first != info->n_tokens)
        bad |= broken("blocks do not add up to the stream's tokens");
    kvtc_cache *none = NULL;
    if (kvtc_decompress_block(cal, data, len, info->n_blocks, &dopt, &none, NULL) == KVTC_OK) {
        kvtc_cache_free(none);
        bad |= broken("kvtc_decompress_block accepted a block index past the end");
    }
    return bad;
}

/* Appending continues the stream: the new tokens come out, raw ones bit-exact. */
static int check_append(const kvtc_calibration *cal, const uint8_t *data, size_t len,
                        const kvtc_stream_info *info)
{
    enum { MORE = 5 };
    if (!kvtc_positions_valid(info->pos0 + info->n_tokens, MORE))
        return 0; /* no cache can continue it */
    kvtc_cache *more = fuzz_make_cache(info->dtype, MORE, info->pos0 + info->n_tokens, 99);
    if (!more)
        return broken("cannot make a cache to append");
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    void *out = NULL;
    size_t out_len = 0;
    int bad = 0;
    if (kvtc_append(cal, data, len, more, &copt, &out, &out_len, NULL) == KVTC_OK) {
        kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
        kvtc_cache *joined = NULL;
        kvtc_stream_info after = {.struct_size = sizeof after};
        if (kvtc_stream_info_get(out, out_len, &after, NULL) != KVTC_OK ||
            kvtc_decompress(cal, out, out_len, &dopt, &joined, NULL) != KVTC_OK)
            bad |= broken("kvtc_append made a stream that does not decode");
        else {
            uint32_t raw = after.window < MORE ? after.window : MORE;
            if (kvtc_cache_tokens(joined) != info->n_tokens + MORE ||
                kvtc_cache_pos0(joined) != info->pos0 ||
                !test_tokens_equal(joined, info->n_tokens + MORE - raw, more, MORE - raw, raw))
                bad |= broken("kvtc_append lost or changed tokens");
        }
        kvtc_cache_free(joined);
        kvtc_buffer_free(out);
    }
    kvtc_cache_free(more);
    return bad;
}

static int decode_all_ways(const kvtc_calibration *cal, const uint8_t *data, size_t len)
{
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_error err;
    bool have_info = kvtc_stream_info_get(data, len, &info, &err) == KVTC_OK;
    int bad = 0;
    if (have_info && (info.n_tokens != info.sinks + info.window + info.compressed_tokens ||
                      info.total_bytes != len || info.n_blocks > info.n_tokens))
        bad |= broken("kvtc_stream_info_get reports inconsistent counts");

    kvtc_cache *full = NULL;
    kvtc_status st = kvtc_decompress(cal, data, len, &dopt, &full, &err);
    if (st == KVTC_OK && (!have_info || !cache_matches_info(full, &info))) {
        bad |= broken("kvtc_decompress output does not match the stream header");
        kvtc_cache_free(full);
        full = NULL;
    }
    if (full) /* every byte of the result must be readable */
        for (uint32_t l = 0; l < info.shape.n_layer; l++)
            for (int k = 0; k < 2; k++)
                touch(kvtc_cache_data_const(full, (kvtc_kind)k, l),
                      (size_t)info.shape.n_kv_head * info.n_tokens * info.shape.head_dim *
                          kvtc_dtype_size(info.dtype));

    layer_check lc = {have_info ? &info : NULL, full, 0, 0};
    kvtc_status st_layers = kvtc_decompress_layers(cal, data, len, &dopt, on_layer, &lc, NULL);
    bad |= lc.bad;
    if ((st_layers == KVTC_OK) != (st == KVTC_OK) ||
        (st_layers == KVTC_OK && lc.next_layer != info.shape.n_layer))
        bad |= broken("kvtc_decompress_layers and kvtc_decompress disagree");

    if (have_info)
        bad |= check_blocks(cal, data, len, &info, full);
    if (full)
        bad |= check_append(cal, data, len, &info);
    kvtc_cache_free(full);
    return bad;
}

/* Checks the input as given, then, when repairing its checksums changes it,
 * the repaired copy too, so that mutations also reach what lies behind them. */
typedef int (*input_check)(const kvtc_calibration *cal, const uint8_t *data, size_t len);

static int as_given_and_repaired(const kvtc_calibration *cal, const uint8_t *data, size_t len,
                                 void (*repair)(uint8_t *buf, size_t len), input_check check)
{
    int bad = check(cal, data, len);
    uint8_t *fixed = malloc(len ? len : 1);
    if (!fixed)
        return bad;
    memcpy(fixed, data, len);
    repair(fixed, len);
    if (memcmp(fixed, data, len) != 0)
        bad |= check(cal, fixed, len);
    free(fixed);
    return bad;
}

int fuzz_one_kvtc(const kvtc_calibration *cal, const uint8_t *data, size_t len)
{
    return as_given_and_repaired(cal, data, len, fuzz_fix_kvtc_checksums, decode_all_ways);
}

/* ---- compress round trip ----------------------------------------------------------- */

/* Values an edit byte >= FUZZ_VALUE_SPECIAL writes (fuzz_common.h). */
static const float SPECIAL_VALUES[FUZZ_VALUE_RAW - FUZZ_VALUE_SPECIAL] = {
    NAN, -NAN, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, 65504.0f, -65504.0f,
    65520.0f /* inf in fp16 */, 1e20f, -1e20f, 3.3895314e38f /* bf16's largest */, 1e5f, -1e5f,
    300.0f, -300.0f, 255.9f, -256.0f, FLT_MIN, -FLT_MIN, 1e-40f /* f32 subnormal */,
    5.9604645e-8f /* fp16's smallest */, 6.1035156e-5f, -0.0f, 0.0f, 1.0f, -1.0f, 0.5f, 1e-3f,
    1000.0f, -1000.0f,
};

static const double FUZZ_RATIOS[4] = {1.5, 2.0, 4.0, 6.0}; /* p = 16: above ~7 no coordinate fits */
static const uint32_t FUZZ_BLOCK_TOKENS[4] = {1, 3, 8, 256};

/* Element i of the cache's 2 * n_layer * n_kv_head * n_tokens * head_dim:
 * keys first, then values, each layer after layer. */
static uint8_t *element_at(kvtc_cache *c, uint64_t i)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint64_t per_layer = (uint64_t)s->n_kv_head * kvtc_cache_tokens(c) * s->head_dim;
    uint64_t per_kind = per_layer * s->n_layer;
    kvtc_kind kind = (kvtc_kind)(i / per_kind);
    uint32_t layer = (uint32_t)(i % per_kind / per_layer);
    return (uint8_t *)kvtc_cache_data(c, kind, layer) +
           (size_t)(i % per_layer) * kvtc_dtype_size(kvtc_cache_dtype(c));
}

kvtc_cache *fuzz_compress_input(const uint8_t *data, size_t len, kvtc_compress_options *opt)
{
    uint8_t head[4] = {0, 0, 0, 0};
    memcpy(head, data, len < 4 ? len : 4);
    kvtc_dtype dtype = (kvtc_dtype)(head[0] % 3);
    uint32_t n = head[1] % (FUZZ_MAX_TOKENS + 1);
    /* the top bit: the last positions there are */
    int64_t pos0 = head[2] & 0x80 ? KVTC_MAX_POSITION - (n ? n - 1 : 0)
                                  : (int64_t)(head[2] >> 4 & 7) * 1000;
    kvtc_compress_options_default(opt);
    opt->k_ratio = FUZZ_RATIOS[head[2] & 3];
    opt->v_ratio = FUZZ_RATIOS[head[2] >> 2 & 3];
    opt->block_tokens = FUZZ_BLOCK_TOKENS[head[3] & 3];
    opt->n_threads = 1;
    kvtc_cache *c = fuzz_make_cache(dtype, n, pos0, head[3] >> 2);
    uint64_t n_elements = 2 * kvtc_shape_features(&FUZZ_SHAPE) * n;
    for (size_t at = 4; c && n_elements && at + 3 <= len; at += 3) {
        uint8_t *e = element_at(c, (data[at] | (uint64_t)data[at + 1] << 8) % n_elements);
        uint8_t code = data[at + 2];
        if (code == FUZZ_VALUE_RAW) { /* bits of the element's own type */
            size_t size = kvtc_dtype_size(dtype);
            if (at + 3 + size > len)
                break;
            memcpy(e, data + at + 3, size);
            at += size;
            continue;
        }
        float v = code < FUZZ_VALUE_SPECIAL ? (float)(code - FUZZ_VALUE_SPECIAL / 2) / 8.0f
                                            : SPECIAL_VALUES[code - FUZZ_VALUE_SPECIAL];
        kvtc_from_f32(dtype, &v, e, 1);
    }
    return c;
}

/* What the input promises about tokens [t0, t1): all finite, all within
 * +-FUZZ_IN_RANGE. */
static void scan_tokens(const kvtc_cache *c, uint32_t t0, uint32_t t1, bool *finite,
                        bool *in_range)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    size_t esize = kvtc_dtype_size(kvtc_cache_dtype(c));
    *finite = *in_range = true;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < s->n_layer; l++)
            for (uint32_t h = 0; h < s->n_kv_head; h++)
                for (uint32_t t = t0; t < t1; t++)
                    for (uint32_t d = 0; d < s->head_dim; d++) {
                        const uint8_t *layer = kvtc_cache_data_const(c, (kvtc_kind)k, l);
                        size_t i = ((size_t)h * kvtc_cache_tokens(c) + t) * s->head_dim + d;
                        float v;
                        kvtc_to_f32(kvtc_cache_dtype(c), layer + i * esize, &v, 1);
                        *finite &= isfinite(v) != 0;
                        *in_range &= fabsf(v) <= FUZZ_IN_RANGE;
                    }
}

static bool one_line_error(kvtc_status st, const kvtc_error *err)
{
    return err->status == st && err->message[0] && !strchr(err->message, '\n');
}

/* A stream just made from `c` decodes to its shape and positions, with the
 * raw tokens bit for bit and, when the coded ones were in range, finite
 * values; every other decoder agrees (fuzz_one_kvtc). */
static int check_stream(const kvtc_calibration *cal, const kvtc_cache *c, const void *out,
                        size_t out_len, uint32_t sinks, uint32_t window, bool in_range)
{
    uint32_t n = kvtc_cache_tokens(c);
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_decompress_options dopt;
    kvtc_decompress_options_default(&dopt);
    kvtc_error err;
    kvtc_cache *back = NULL;
    int bad = 0;
    if (kvtc_stream_info_get(out, out_len, &info, &err) != KVTC_OK)
        return broken("a stream kvtc_compress made has no valid header");
    if (info.n_tokens != n || info.pos0 != kvtc_cache_pos0(c) ||
        info.dtype != kvtc_cache_dtype(c) || !kvtc_shape_equal(&info.shape, &FUZZ_SHAPE) ||
        info.sinks != sinks || info.window != window || info.total_bytes != out_len)
        bad |= broken("the stream's header does not describe the cache compressed");
    if (kvtc_decompress(cal, out, out_len, &dopt, &back, &err) != KVTC_OK)
        return bad | broken("a stream kvtc_compress made does not decode");
    if (!cache_matches_info(back, &info))
        bad |= broken("the decoded cache differs in shape, dtype, tokens or positions");
    else if (!test_tokens_equal(back, 0, c, 0, sinks) ||
             !test_tokens_equal(back, n - window, c, n - window, window))
        bad |= broken("raw sink or window tokens did not come back bit for bit");
    else if (in_range) {
        bool finite, unused;
        scan_tokens(back, sinks, n - window, &finite, &unused);
        if (!finite)
            bad |= broken("finite, in-range tokens decoded to non-finite values");
    }
    kvtc_cache_free(back);
    return bad | fuzz_one_kvtc(cal, out, out_len);
}

int fuzz_one_compress(const kvtc_calibration *cal, const uint8_t *data, size_t len)
{
    kvtc_compress_options opt;
    kvtc_cache *c = fuzz_compress_input(data, len, &opt);
    if (!c)
        return broken("cannot make the cache to compress");
    uint32_t n = kvtc_cache_tokens(c);
    uint32_t sinks = n < kvtc_calibration_sinks(cal) ? n : kvtc_calibration_sinks(cal);
    uint32_t window = n - sinks < kvtc_calibration_window(cal) ? n - sinks
                                                               : kvtc_calibration_window(cal);
    bool finite, in_range;
    scan_tokens(c, sinks, n - window, &finite, &in_range);
    void *out = NULL, *again = NULL;
    size_t out_len = 0, again_len = 0;
    kvtc_error err;
    kvtc_status st = kvtc_compress(cal, c, &opt, &out, &out_len, &err);
    int bad = 0;
    if (st != KVTC_OK) {
        if (!one_line_error(st, &err) || out != NULL)
            bad |= broken("kvtc_compress failed without a one-line error, or left an output");
        if (st != (finite ? KVTC_OK : KVTC_E_NUMERIC)) {
            fprintf(stderr, "kvtc_compress: %s: %s\n", kvtc_status_string(st), err.message);
            bad |= broken(finite ? "kvtc_compress refused a finite cache"
                                 : "a non-finite coded token was refused with the wrong status");
        }
    } else if (!finite) {
        bad |= broken("kvtc_compress accepted a non-finite token it had to code");
    } else {
        bad |= check_stream(cal, c, out, out_len, sinks, window, in_range);
        opt.n_threads = 2; /* the same bytes whatever n_threads is */
        if (kvtc_compress(cal, c, &opt, &again, &again_len, &err) != KVTC_OK ||
            !test_bytes_equal(out, out_len, again, again_len))
            bad |= broken("kvtc_compress with 2 threads made other bytes");
    }
    kvtc_buffer_free(out);
    kvtc_buffer_free(again);
    kvtc_cache_free(c);
    return bad;
}

/* ---- .kvtcal ----------------------------------------------------------------------- */

static int check_plan(const kvtc_plan *plan)
{
    const kvtc_group *g = kvtc_plan_groups(plan);
    uint32_t next = 0, bits = 0;
    for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++) {
        if (g[i].start != next || kvtc_group_size_index(g[i].size) < 0 ||
            g[i].start % g[i].size || !kvtc_qtype_valid(g[i].type))
            return broken("kvtc_plan_create made groups that do not tile from 0");
        next += g[i].size;
        if (g[i].type != KVTC_Q_NONE)
            bits += kvtc_group_bits(g[i].size, g[i].type);
    }
    if (bits != kvtc_plan_bits_per_token(plan) ||
        kvtc_plan_bits_per_token(plan) > kvtc_plan_budget_bits(plan))
        return broken("kvtc_plan_create: bits per token wrong or over budget");
    return 0;
}

/* A calibration that loads can make plans and code a cache of its shape. */
static int use_calibration(const kvtc_calibration *cal)
{
    static const double ratios[] = {1.5, 4.0, 16.0, 64.0};
    int bad = 0;
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < sizeof ratios / sizeof ratios[0]; i++) {
            kvtc_plan *plan = NULL;
            if (kvtc_plan_create(cal, (kvtc_kind)k, ratios[i], &plan, NULL) == KVTC_OK)
                bad |= check_plan(plan);
            kvtc_plan_free(plan);
        }
    const kvtc_model_shape *shape = kvtc_calibration_shape(cal);
    if (kvtc_shape_features(shape) > 4096)
        return bad; /* keep each input fast */
    /* In 64 bits: a file's sinks + window may wrap a uint32_t (the codec clamps both). */
    uint64_t n64 = (uint64_t)kvtc_calibration_sinks(cal) + kvtc_calibration_window(cal) + 9;
    if (n64 > 64)
        return bad;
    uint32_t n = (uint32_t)n64;
    kvtc_cache *c = make_random_cache(shape, KVTC_F16, n, 3, 2, 7);
    if (!c)
        return bad;
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.k_ratio = copt.v_ratio = 4.0;
    copt.block_tokens = 4;
    void *out = NULL;
    size_t out_len = 0;
    if (kvtc_compress(cal, c, &copt, &out, &out_len, NULL) == KVTC_OK) {
        kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = 1};
        kvtc_cache *back = NULL;
        bool decoded = kvtc_decompress(cal, out, out_len, &dopt, &back, NULL) == KVTC_OK;
        if (!decoded || kvtc_cache_tokens(back) != n ||
            !test_tokens_equal(back, 0, c, 0, kvtc_calibration_sinks(cal)))
            bad |= broken(decoded ? "round trip through a loaded calibration lost the sinks"
                                  : "a stream just compressed with a loaded calibration does "
                                    "not decode");
        kvtc_cache_free(back);
        kvtc_buffer_free(out);
    }
    kvtc_cache_free(c);
    return bad;
}

static int load_calibration(const kvtc_calibration *unused, const uint8_t *data, size_t len)
{
    (void)unused;
    kvtc_calibration *cal = NULL;
    if (kvtc_calibration_load(data, len, &cal, NULL) != KVTC_OK)
        return 0;
    int bad = 0;
    void *saved = NULL;
    size_t saved_len = 0;
    if (kvtc_calibration_save(cal, &saved, &saved_len, NULL) != KVTC_OK)
        bad |= broken("a loaded calibration cannot be saved");
    else if (saved_len != len || memcmp(saved, data, len) != 0)
        bad |= broken("a loaded calibration re-saves to different bytes");
    else if (memcmp(kvtc_calibration_fingerprint(cal), data + len - 32, 32) != 0)
        bad |= broken("calibration fingerprint is not the file's SHA-256");
    kvtc_buffer_free(saved);
    bad |= use_calibration(cal);
    kvtc_calibration_free(cal);
    return bad;
}

int fuzz_one_kvtcal(const uint8_t *data, size_t len)
{
    return as_given_and_repaired(NULL, data, len, fuzz_fix_kvtcal_checksums, load_calibration);
}

/* ---- llama.cpp sequence state ------------------------------------------------------- */

int fuzz_one_llama_state(const kvtc_calibration *cal, const uint8_t *data, size_t len)
{
    kvtc_cache *c = NULL;
    kvtc_llama_layout layout = {.struct_size = sizeof layout};
    kvtc_error err;
    kvtc_status st = kvtc_llama_state_load(data, len, kvtc_calibration_shape(cal), &c, &layout,
                                           &err);
    if (st != KVTC_OK)
        return strchr(err.message, '\n') ? broken("a multi-line llama.cpp state error") : 0;
    int bad = 0;
    void *saved = NULL, *stream = NULL;
    size_t saved_len = 0, stream_len = 0;
    kvtc_cache *back = NULL;
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.k_ratio = opt.v_ratio = 2.0; /* p = 16: higher ratios leave no coordinate */
    opt.block_tokens = 8;
    if (kvtc_llama_state_save(c, &layout, &saved, &saved_len, NULL) != KVTC_OK)
        bad |= broken("a loaded llama.cpp state cannot be written");
    else if (saved_len != len || memcmp(saved, data, len) != 0)
        bad |= broken("a loaded llama.cpp state is written back to other bytes");
    /* non-finite cells are refused by compress (KVTC_E_NUMERIC); finite ones round trip */
    else if (kvtc_cache_tokens(c) == 0)
        ; /* nothing to compress */
    else if (kvtc_compress(cal, c, &opt, &stream, &stream_len, &err) == KVTC_OK) {
        if (kvtc_decompress(cal, stream, stream_len, NULL, &back, NULL) != KVTC_OK)
            bad |= broken("a compressed llama.cpp state does not decompress");
        else if ((kvtc_cache_token_ids(c) == NULL) != (kvtc_cache_token_ids(back) == NULL) ||
                 (kvtc_cache_token_ids(c) &&
                  memcmp(kvtc_cache_token_ids(c), kvtc_cache_token_ids(back),
                         4 * (size_t)kvtc_cache_tokens(c)) != 0))
            bad |= broken("token ids changed through a .kvtc stream");
    } else if (err.status != KVTC_E_NUMERIC)
        bad |= broken("a loaded llama.cpp state does not compress");
    kvtc_buffer_free(saved);
    kvtc_buffer_free(stream);
    kvtc_cache_free(back);
    kvtc_cache_free(c);
    return bad;
}

/* ---- safetensors ----------------------------------------------------------------- */

int fuzz_one_safetensors(const uint8_t *data, size_t len)
{
    kvtc_cache *c = NULL;
    if (kvtc_cache_load_safetensors(data, len, &c, NULL) != KVTC_OK)
        return 0;
    int bad = 0;
    void *saved = NULL, *again = NULL;
    size_t saved_len = 0, again_len = 0;
    kvtc_cache *back = NULL;
    if (kvtc_cache_save_safetensors(c, &saved, &saved_len, NULL) != KVTC_OK)
        bad |= broken("a loaded safetensors cache cannot be saved");
    else if (kvtc_cache_load_safetensors(saved, saved_len, &back, NULL) != KVTC_OK)
        bad |= broken("a saved safetensors cache does not load");
    else if (!test_caches_equal(c, back))
        bad |= broken("safetensors save + load changed the cache");
    else if (kvtc_cache_save_safetensors(back, &again, &again_len, NULL) != KVTC_OK ||
             again_len != saved_len || memcmp(again, saved, saved_len) != 0)
        bad |= broken("safetensors save is not deterministic");
    kvtc_buffer_free(saved);
    kvtc_buffer_free(again);
    kvtc_cache_free(back);
    kvtc_cache_free(c);
    return bad;
}

/* ---- GGUF ------------------------------------------------------------------------ */

static const char *const KVTC_GGUF_KEYS[] = {
    "general.architecture", "general.alignment", "general.name",
    "llama.block_count", "llama.context_length", "llama.embedding_length",
    "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.rope.freq_base", "llama.rope.dimension_count",
    "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.add_bos_token",
};

static void read_gguf_key(const kvtc_gguf_file *f, const char *key)
{
    uint32_t u;
    float x;
    bool b;
    const char *s;
    size_t n;
    kvtc_gguf_value_type et;
    uint64_t count;
    const void *arr;
    kvtc_gguf_get_u32(f, key, &u);
    kvtc_gguf_get_f32(f, key, &x);
    kvtc_gguf_get_bool(f, key, &b);
    if (kvtc_gguf_get_str(f, key, &s, &n))
        touch(s, n);
    if (kvtc_gguf_get_arr_info(f, key, &et, &count)) {
        for (uint64_t i = 0; i < count && i < MAX_GGUF_STRINGS; i++)
            if (kvtc_gguf_get_arr_str(f, key, i, &s, &n))
                touch(s, n);
        kvtc_gguf_get_arr_str(f, key, count, &s, &n); /* one past the end: must say no */
        kvtc_gguf_get_arr_data(f, key, &arr);
    }
}

int fuzz_one_gguf(const uint8_t *data, size_t len)
{
    kvtc_gguf_file *f = NULL;
    if (kvtc_gguf_load(data, len, &f, NULL) != KVTC_OK)
        return 0;
    int bad = 0;
    uint64_t a = kvtc_gguf_alignment(f);
    if (a == 0 || (a & (a - 1)))
        bad |= broken("gguf alignment is not a power of two");
    for (size_t i = 0; i < sizeof KVTC_GGUF_KEYS / sizeof KVTC_GGUF_KEYS[0]; i++)
        read_gguf_key(f, KVTC_GGUF_KEYS[i]);
    uint64_t n = kvtc_gguf_tensor_count(f);
    for (uint64_t i = 0; i < n && i < MAX_GGUF_TENSORS; i++) {
        const kvtc_gguf_tensor *t = kvtc_gguf_tensor_at(f, i);
        const uint8_t *p = t->data;
        if (p < data || p > data + len || t->n_bytes > (size_t)(data + len - p)) {
            bad |= broken("gguf tensor data lies outside the buffer");
            continue;
        }
        if (kvtc_gguf_find_tensor(f, t->name) != t)
            bad |= broken("kvtc_gguf_find_tensor does not find a listed tensor");
        touch(t->name, strlen(t->name));
        if (t->n_elements <= MAX_GGUF_DEQUANT) {
            float *out = malloc((size_t)t->n_elements * sizeof(float));
            if (out)
                kvtc_gguf_tensor_to_f32(t, out, NULL);
            free(out);
        }
    }
    if (kvtc_gguf_tensor_at(f, n) != NULL)
        bad |= broken("kvtc_gguf_tensor_at returned a tensor past the end");
    kvtc_gguf_close(f);
    return bad;
}

/* ---- llama2.c ----------------------------------------------------------------------- */

int fuzz_one_llama2c(const uint8_t *data, size_t len)
{
    /* The loader wants a 4-byte aligned buffer, as a mapping is. */
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, len);
    llama2c_file *f = NULL;
    int bad = 0;
    if (llama2c_load(buf, len, &f, NULL) == KVTC_OK) {
        const llama2c_config *c = &f->cfg;
        uint64_t dim = c->dim, hid = c->hidden_dim, L = c->n_layers;
        uint64_t kv_dim = dim / c->n_heads * c->n_kv_heads;
        const struct {
            const float *p;
            uint64_t n;
        } parts[] = {
            {f->token_embedding, (uint64_t)c->vocab_size * dim},
            {f->rms_att, L * dim}, {f->wq, L * dim * dim}, {f->wk, L * kv_dim * dim},
            {f->wv, L * kv_dim * dim}, {f->wo, L * dim * dim}, {f->rms_ffn, L * dim},
            {f->w1, L * hid * dim}, {f->w2, L * dim * hid}, {f->w3, L * hid * dim},
            {f->rms_final, dim}, {f->wcls, (uint64_t)c->vocab_size * dim},
        };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            const uint8_t *p = (const uint8_t *)parts[i].p;
            if (p < buf + LLAMA2C_HEADER_BYTES || p > buf + len ||
                parts[i].n * 4 > (uint64_t)(buf + len - p)) {
                bad |= broken("llama2.c weights lie outside the buffer");
                break;
            }
            touch(p, (size_t)parts[i].n * 4);
        }
        llama2c_close(f);
    }
    free(buf);
    return bad;
}
