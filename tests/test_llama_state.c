/* llama.cpp sequence states built here byte by byte (the layout of
 * docs/FORMAT.md section 4, independent of src/llama_state.c's writer): read
 * into caches, written back identically, hostile ones refused; and token ids
 * carried through a .kvtc stream (flags bit 0). The real llama.cpp is
 * exercised by tests/test_llama_cpp.sh. */
#include "kvtc_internal.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kvtc_model_shape SHAPE = {3, 2, 8, KVTC_ROPE_INTERLEAVED, 8, 10000.0, 1.0};

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}
static void put32(buf *b, uint32_t v)
{
    uint8_t le[4];
    test_put_le(le, v, 4);
    put(b, le, 4);
}
static void put64(buf *b, uint64_t v)
{
    uint8_t le[8];
    test_put_le(le, v, 8);
    put(b, le, 8);
}

/* Element e of (kind, layer, token, feature) as f16 bits: a value from its
 * indices, so that any misplaced element is seen. */
static uint16_t elem(int kind, uint32_t l, uint32_t t, uint32_t f)
{
    return kvtc_f32_to_f16((float)(kind * 1000 + l * 100 + t) + (float)f / 64.0f);
}

typedef struct state_spec {
    bool ggsq, v_trans;
    uint32_t n_tok_ids; /* ids listed in the ggsq header */
    bool server;        /* listed in llama-server's packing */
    uint32_t cells, n_stream, stream;
    int32_t pos0, seq_id;
    uint32_t n_seq_of_cell3; /* n_seq_id written for cell 3 (1 normally) */
    int32_t k_type;          /* ggml type of the keys (1 = f16) */
} state_spec;

static state_spec spec_default(void)
{
    state_spec s = {.ggsq = true, .v_trans = true, .n_tok_ids = 10, .cells = 10, .n_stream = 1,
                    .pos0 = 5, .seq_id = 0, .n_seq_of_cell3 = 1, .k_type = 1};
    return s;
}

/* An f16 state of SHAPE as llama.cpp lays it out. */
static buf build_state(const state_spec *s)
{
    buf b = {0};
    uint32_t feat = SHAPE.n_kv_head * SHAPE.head_dim;
    if (s->ggsq) {
        put32(&b, 0x67677371u);
        put32(&b, 3);
        put32(&b, s->n_tok_ids + (s->server ? 4 : 0));
        if (s->server) {
            put32(&b, UINT32_MAX);
            put32(&b, 1);
            put32(&b, s->n_tok_ids);
        }
        for (uint32_t i = 0; i < s->n_tok_ids; i++)
            put32(&b, 1000 + i);
        if (s->server)
            put32(&b, 0);
    } else {
        put32(&b, 0xaf143cd8u);
        put32(&b, (uint32_t)s->seq_id);
    }
    put32(&b, s->n_stream);
    for (uint32_t st = 0; st < s->n_stream; st++) {
        uint32_t cells = st == s->stream ? s->cells : 0;
        put32(&b, cells);
        if (!cells)
            continue;
        for (uint32_t i = 0; i < cells; i++) {
            uint32_t n_seq = i == 3 ? s->n_seq_of_cell3 : 1;
            put32(&b, (uint32_t)(s->pos0 + (int32_t)i));
            put32(&b, n_seq);
            for (uint32_t q = 0; q < n_seq; q++)
                put32(&b, (uint32_t)s->seq_id + q);
        }
        put32(&b, s->v_trans);
        put32(&b, SHAPE.n_layer);
        for (uint32_t l = 0; l < SHAPE.n_layer; l++) {
            put32(&b, (uint32_t)s->k_type);
            put64(&b, feat * 2ull);
            for (uint32_t t = 0; t < cells; t++)
                for (uint32_t f = 0; f < feat; f++) {
                    uint16_t e = elem(0, l, t, f);
                    put(&b, &e, 2);
                }
        }
        for (uint32_t l = 0; l < SHAPE.n_layer; l++) {
            put32(&b, 1);
            if (s->v_trans) {
                put32(&b, 2);
                put32(&b, feat);
                for (uint32_t f = 0; f < feat; f++)
                    for (uint32_t t = 0; t < cells; t++) {
                        uint16_t e = elem(1, l, t, f);
                        put(&b, &e, 2);
                    }
            } else {
                put64(&b, feat * 2ull);
                for (uint32_t t = 0; t < cells; t++)
                    for (uint32_t f = 0; f < feat; f++) {
                        uint16_t e = elem(1, l, t, f);
                        put(&b, &e, 2);
                    }
            }
        }
    }
    return b;
}

static bool cache_matches(const kvtc_cache *c, const state_spec *s)
{
    uint32_t hd = SHAPE.head_dim;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < SHAPE.n_layer; l++) {
            const uint16_t *d = kvtc_cache_data_const(c, (kvtc_kind)k, l);
            for (uint32_t h = 0; h < SHAPE.n_kv_head; h++)
                for (uint32_t t = 0; t < s->cells; t++)
                    for (uint32_t i = 0; i < hd; i++)
                        if (d[((size_t)h * s->cells + t) * hd + i] != elem(k, l, t, h * hd + i))
                            return false;
        }
    return true;
}

static void check_round_trip(const state_spec *s)
{
    buf b = build_state(s);
    kvtc_cache *c = NULL;
    kvtc_llama_layout layout = {.struct_size = sizeof layout};
    kvtc_error err;
    if (!CHECK_OK(kvtc_llama_state_load(b.p, b.len, &SHAPE, &c, &layout, &err), &err)) {
        free(b.p);
        return;
    }
    CHECK_EQ(kvtc_llama_state_detect(b.p, b.len), s->ggsq ? 1 : 2);
    CHECK_EQ(kvtc_cache_tokens(c), s->cells);
    CHECK_EQ(kvtc_cache_pos0(c), s->pos0);
    CHECK_EQ(kvtc_cache_dtype(c), KVTC_F16);
    CHECK(cache_matches(c, s));
    CHECK_EQ(layout.ggsq, s->ggsq);
    CHECK_EQ(layout.v_trans, s->v_trans);
    CHECK_EQ(layout.n_stream, s->n_stream);
    CHECK_EQ(layout.stream, s->stream);
    CHECK_EQ(layout.seq_id, s->seq_id);
    CHECK_EQ(layout.server_tokens, s->server);
    const int32_t *ids = kvtc_cache_token_ids(c);
    CHECK((ids != NULL) == (s->ggsq && s->n_tok_ids > 0));
    if (ids)
        CHECK(ids[0] == 1000 && ids[s->cells - 1] == (int32_t)(1000 + s->cells - 1));
    void *out = NULL;
    size_t out_len = 0;
    CHECK_OK(kvtc_llama_state_save(c, &layout, &out, &out_len, &err), &err);
    CHECK_MSG(test_bytes_equal(out, out_len, b.p, b.len),
              "written state differs from the one read (ggsq %d, v_trans %d)", s->ggsq,
              s->v_trans);
    kvtc_buffer_free(out);
    kvtc_cache_free(c);
    free(b.p);
}

static void test_round_trips(void)
{
    state_spec s = spec_default();
    check_round_trip(&s);
    s.v_trans = false;
    check_round_trip(&s);
    s.ggsq = false;
    check_round_trip(&s);
    s = spec_default();
    s.n_tok_ids = 0;
    check_round_trip(&s);
    s = spec_default();
    s.server = true;
    check_round_trip(&s);
    s = spec_default();
    s.n_stream = 4;
    s.stream = 2;
    s.seq_id = 2;
    check_round_trip(&s);
}

static void expect_refused(const buf *b, const kvtc_model_shape *shape, kvtc_status want,
                           const char *needle)
{
    kvtc_cache *c = (kvtc_cache *)1;
    kvtc_error err;
    CHECK_STATUS(kvtc_llama_state_load(b->p, b->len, shape, &c, NULL, &err), want, &err);
    CHECK(c == NULL);
    CHECK_MSG(strstr(err.message, needle) != NULL, "message '%s' lacks '%s'", err.message,
              needle);
    CHECK(strchr(err.message, '\n') == NULL);
}

/* a state built from `s` is UNSUPPORTED with a message holding `needle` */
static void refuse_spec(const state_spec *s, const char *needle)
{
    buf b = build_state(s);
    expect_refused(&b, &SHAPE, KVTC_E_UNSUPPORTED, needle);
    free(b.p);
}

static void test_refusals(void)
{
    state_spec s = spec_default();
    buf b = build_state(&s);
    /* every truncation is refused, never read past the end */
    for (size_t n = 0; n < b.len; n++) {
        kvtc_cache *c = NULL;
        kvtc_error err;
        kvtc_status st = kvtc_llama_state_load(b.p, n, &SHAPE, &c, NULL, &err);
        if (!CHECK_MSG(st != KVTC_OK && c == NULL, "truncated to %zu bytes accepted", n))
            break;
    }
    buf t = b;
    t.len = b.len - 1;
    expect_refused(&t, &SHAPE, KVTC_E_TRUNCATED, "ends inside");
    buf longer = {0};
    put(&longer, b.p, b.len);
    put32(&longer, 0);
    expect_refused(&longer, &SHAPE, KVTC_E_FORMAT, "bytes after");
    free(longer.p);
    b.p[4] = 4; /* version 4 */
    expect_refused(&b, &SHAPE, KVTC_E_VERSION, "version 4");
    b.p[4] = 3;
    kvtc_model_shape other = SHAPE;
    other.n_layer = 4;
    expect_refused(&b, &other, KVTC_E_MISMATCH, "another model");
    other = SHAPE;
    other.head_dim = 4;
    other.rope_dims = 4;
    expect_refused(&b, &other, KVTC_E_MISMATCH, "another model");
    expect_refused(&b, NULL, KVTC_E_INVALID, "--model");
    free(b.p);

    s = spec_default();
    s.n_seq_of_cell3 = 2;
    refuse_spec(&s, "cell 3 belongs to 2 sequences");
    s = spec_default();
    s.k_type = 8;
    refuse_spec(&s, "q8_0");
    s = spec_default();
    s.n_tok_ids = 3;
    refuse_spec(&s, "3 token ids for 10 cells");
    /* a gap in the positions */
    s = spec_default();
    b = build_state(&s);
    size_t cell5 = 12 + 4 * s.n_tok_ids + 8 + 5 * 12;
    test_put_le(b.p + cell5, 100, 4);
    expect_refused(&b, &SHAPE, KVTC_E_UNSUPPORTED, "consecutive");
    free(b.p);
    buf junk = {0};
    put32(&junk, 0x12345678);
    put32(&junk, 0);
    CHECK_EQ(kvtc_llama_state_detect(junk.p, junk.len), 0);
    expect_refused(&junk, &SHAPE, KVTC_E_FORMAT, "not a llama.cpp sequence state");
    free(junk.p);
}

/* Token ids in .kvtc streams: flags bit 0, version 2; none: version 1, flags 0. */
static void test_stream_token_ids(void)
{
    kvtc_model_shape shape = {2, 2, 16, KVTC_ROPE_NEOX, 16, 10000.0, 1.0};
    kvtc_calib_options co;
    kvtc_calib_options_default(&co);
    co.sinks = 2;
    co.window = 4;
    kvtc_calibration *cal = make_random_calibration(&shape, &co, 2, 200, 8, 7);
    kvtc_cache *c = make_random_cache(&shape, KVTC_F16, 300, 0, 8, 99);
    if (!CHECK(cal && c))
        return;
    kvtc_error err;
    void *plain = NULL, *with = NULL;
    size_t plain_len = 0, with_len = 0;
    CHECK_OK(kvtc_compress(cal, c, NULL, &plain, &plain_len, &err), &err);
    int32_t *ids = malloc(300 * sizeof *ids);
    for (int i = 0; i < 300; i++)
        ids[i] = 7 * i - 3;
    CHECK_OK(kvtc_cache_set_token_ids(c, ids, &err), &err);
    CHECK_OK(kvtc_compress(cal, c, NULL, &with, &with_len, &err), &err);
    kvtc_stream_info a = {.struct_size = sizeof a}, b = {.struct_size = sizeof b};
    CHECK_OK(kvtc_stream_info_get(plain, plain_len, &a, &err), &err);
    CHECK_OK(kvtc_stream_info_get(with, with_len, &b, &err), &err);
    CHECK_EQ(a.has_token_ids, 0);
    CHECK_EQ(b.has_token_ids, 1);
    bool lm = false; /* lm groups need version 2 too */
    for (int k = 0; k < 2; k++) {
        kvtc_plan *plan = NULL;
        if (kvtc_stream_plan(plain, plain_len, (kvtc_kind)k, &plan, NULL) == KVTC_OK)
            for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++)
                lm |= kvtc_plan_groups(plan)[i].type >= KVTC_Q_LM1;
        kvtc_plan_free(plan);
    }
    CHECK_EQ(test_get_le((const uint8_t *)plain + 8, 4), lm ? 2 : 1); /* version */
    CHECK_EQ(test_get_le((const uint8_t *)plain + 12, 4), 0); /* flags */
    CHECK_EQ(test_get_le((const uint8_t *)with + 8, 4), 2);
    CHECK_EQ(test_get_le((const uint8_t *)with + 12, 4), 1);
    CHECK_EQ(with_len, plain_len + 4 * 300);
    /* the ids sit in the header; the payloads are the same bytes */
    size_t plain_hdr = (size_t)test_get_le((const uint8_t *)plain + 16, 8);
    size_t with_hdr = (size_t)test_get_le((const uint8_t *)with + 16, 8);
    CHECK_EQ(with_hdr, plain_hdr + 4 * 300);
    CHECK(memcmp((const uint8_t *)with + with_hdr, (const uint8_t *)plain + plain_hdr,
                 plain_len - plain_hdr) == 0);
    kvtc_cache *back = NULL;
    CHECK_OK(kvtc_decompress(cal, with, with_len, NULL, &back, &err), &err);
    if (back && CHECK(kvtc_cache_token_ids(back) != NULL))
        CHECK(memcmp(kvtc_cache_token_ids(back), ids, 300 * sizeof *ids) == 0);
    kvtc_cache_free(back);
    back = NULL;
    CHECK_OK(kvtc_decompress(cal, plain, plain_len, NULL, &back, &err), &err);
    CHECK(back && kvtc_cache_token_ids(back) == NULL);
    kvtc_cache_free(back);
    back = NULL;
    CHECK_OK(kvtc_decompress_block(cal, with, with_len, 1, NULL, &back, &err), &err);
    if (back && CHECK(kvtc_cache_token_ids(back) != NULL))
        CHECK_EQ(kvtc_cache_token_ids(back)[0], ids[kvtc_cache_pos0(back)]);
    kvtc_cache_free(back);
    int32_t *got = NULL;
    uint32_t n = 0;
    CHECK_OK(kvtc_stream_token_ids(with, with_len, &got, &n, &err), &err);
    CHECK(n == 300 && got && memcmp(got, ids, 300 * sizeof *ids) == 0);
    kvtc_buffer_free(got);
    CHECK_OK(kvtc_stream_token_ids(plain, plain_len, &got, &n, &err), &err);
    CHECK(n == 0 && got == NULL);
    /* a flipped id is a header CRC failure */
    uint8_t *bad = malloc(with_len);
    memcpy(bad, with, with_len);
    bad[with_hdr - 4 - 4 * 300 + 17] ^= 1; /* inside the ids */
    CHECK_STATUS(kvtc_stream_info_get(bad, with_len, &b, &err), KVTC_E_CHECKSUM, &err);
    free(bad);
    /* appending keeps the ids of both parts */
    kvtc_cache *more = make_random_cache(&shape, KVTC_F16, 50, 300, 8, 5);
    int32_t more_ids[50];
    for (int i = 0; i < 50; i++)
        more_ids[i] = 5000 + i;
    void *app = NULL;
    size_t app_len = 0;
    CHECK_STATUS(kvtc_append(cal, with, with_len, more, NULL, &app, &app_len, &err),
                 KVTC_E_MISMATCH, &err);
    CHECK_OK(kvtc_cache_set_token_ids(more, more_ids, &err), &err);
    CHECK_OK(kvtc_append(cal, with, with_len, more, NULL, &app, &app_len, &err), &err);
    CHECK_OK(kvtc_stream_token_ids(app, app_len, &got, &n, &err), &err);
    CHECK(n == 350 && got && got[299] == ids[299] && got[300] == 5000 && got[349] == 5049);
    kvtc_buffer_free(got);
    kvtc_buffer_free(app);
    kvtc_cache_free(more);
    free(ids);
    kvtc_buffer_free(plain);
    kvtc_buffer_free(with);
    kvtc_cache_free(c);
    kvtc_calibration_free(cal);
}

int main(void)
{
    test_round_trips();
    test_refusals();
    test_stream_token_ids();
    return test_summary("test_llama_state");
}
