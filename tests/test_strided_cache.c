/* Caches over caller memory (kvtc_cache_wrap) in token-major, head-major and
 * padded layouts, stacked or one buffer per layer: every dtype compresses,
 * appends, calibrates and saves to the same bytes as a packed copy, and
 * kvtc_decompress_into restores into the caller's layout what kvtc_decompress
 * restores. Bad strides, pointers and mismatched targets are refused. The
 * element offsets here are computed from the header's formula, not by the
 * library. */
#include "codec_common.h"

#include <math.h>

#define TOKENS 300u
#define POS0 7

static kvtc_calibration *g_cal;
static kvtc_model_shape g_shape;

/* One layout under test: strides plus how the layers are laid in memory. */
typedef struct layout_case {
    const char *name;
    kvtc_cache_layout layout;
    bool stacked; /* one buffer for all layers, else one per layer */
    size_t layer_elems; /* elements one layer occupies (with padding) */
} layout_case;

/* Caller buffers shaped by a layout_case: ptr[kind][layer]. */
typedef struct buffers {
    unsigned char *block[2];   /* stacked: one allocation per kind */
    unsigned char **ptr[2];
} buffers;

static size_t elem_at(const layout_case *lc, uint32_t h, uint32_t t, uint32_t d)
{
    return (size_t)h * lc->layout.head_stride + (size_t)t * lc->layout.token_stride + d;
}

static bool buffers_alloc(buffers *b, const layout_case *lc, size_t esize)
{
    memset(b, 0, sizeof *b);
    for (int k = 0; k < 2; k++) {
        b->ptr[k] = calloc(g_shape.n_layer, sizeof *b->ptr[k]);
        if (!b->ptr[k])
            return false;
        if (lc->stacked && !(b->block[k] = calloc(g_shape.n_layer * lc->layer_elems, esize)))
            return false;
        for (uint32_t l = 0; l < g_shape.n_layer; l++) {
            b->ptr[k][l] = lc->stacked ? b->block[k] + l * lc->layer_elems * esize
                                       : calloc(lc->layer_elems, esize);
            if (!b->ptr[k][l])
                return false;
        }
    }
    return true;
}

static void buffers_free(buffers *b, const layout_case *lc)
{
    for (int k = 0; k < 2; k++) {
        if (b->ptr[k] && !lc->stacked)
            for (uint32_t l = 0; l < g_shape.n_layer; l++)
                free(b->ptr[k][l]);
        free(b->ptr[k]);
        free(b->block[k]);
    }
}

/* Copies a packed cache into the buffers (fill) or compares them (!fill). */
static bool buffers_match(buffers *b, const layout_case *lc, const kvtc_cache *packed, bool fill)
{
    size_t esize = kvtc_dtype_size(kvtc_cache_dtype(packed)), hd = g_shape.head_dim;
    uint32_t n = kvtc_cache_tokens(packed);
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < g_shape.n_layer; l++) {
            const unsigned char *src = kvtc_cache_data_const(packed, (kvtc_kind)k, l);
            for (uint32_t h = 0; h < g_shape.n_kv_head; h++)
                for (uint32_t t = 0; t < n; t++) {
                    const unsigned char *want = src + ((size_t)h * n + t) * hd * esize;
                    unsigned char *got = b->ptr[k][l] + elem_at(lc, h, t, 0) * esize;
                    if (fill)
                        memcpy(got, want, hd * esize);
                    else if (memcmp(got, want, hd * esize) != 0)
                        return false;
                }
        }
    return true;
}

static kvtc_cache *wrap(buffers *b, const layout_case *lc, kvtc_dtype dtype, uint32_t n,
                        int64_t pos0)
{
    kvtc_error err;
    kvtc_cache *c = NULL;
    CHECK_OK(kvtc_cache_wrap(&g_shape, dtype, n, pos0, (void *const *)b->ptr[0],
                             (void *const *)b->ptr[1], &lc->layout, &c, &err),
             &err);
    return c;
}

static bool compress(const kvtc_cache *c, void **out, size_t *len)
{
    kvtc_error err;
    kvtc_compress_options opt;
    kvtc_compress_options_default(&opt);
    opt.block_tokens = 64;
    return CHECK_OK(kvtc_compress(g_cal, c, &opt, out, len, &err), &err);
}

static kvtc_calibration *calibrate_one(const kvtc_cache *c)
{
    kvtc_error err;
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.sinks = 4;
    opt.window = 16;
    kvtc_calibrator *cr = NULL;
    kvtc_calibration *cal = NULL;
    if (CHECK_OK(kvtc_calibrator_create(&g_shape, &opt, &cr, &err), &err) &&
        CHECK_OK(kvtc_calibrator_add(cr, c, &err), &err))
        CHECK_OK(kvtc_calibrator_finish(cr, &cal, &err), &err);
    kvtc_calibrator_free(cr);
    return cal;
}

static layout_case make_case(const char *name, kvtc_layout_order order, uint64_t pad_token,
                             uint64_t pad_head, bool stacked, uint32_t n)
{
    layout_case lc = {.name = name, .stacked = stacked};
    kvtc_cache_layout_default(&lc.layout, &g_shape, n, order);
    uint64_t hd = g_shape.head_dim, heads = g_shape.n_kv_head;
    if (order == KVTC_TOKEN_MAJOR) {
        lc.layout.head_stride = hd + pad_head;
        lc.layout.token_stride = heads * lc.layout.head_stride + pad_token;
        lc.layer_elems = n * lc.layout.token_stride;
    } else {
        lc.layout.token_stride = hd + pad_token;
        lc.layout.head_stride = n * lc.layout.token_stride + pad_head;
        lc.layer_elems = heads * lc.layout.head_stride;
    }
    return lc;
}

/* Everything a wrapped cache must do exactly like its packed twin. */
static void check_layout(const layout_case *lc, kvtc_dtype dtype)
{
    size_t esize = kvtc_dtype_size(dtype);
    kvtc_cache *ref = make_random_cache(&g_shape, dtype, TOKENS, POS0, CODEC_TEST_LOW_RANK, 11);
    buffers b;
    if (!CHECK(ref) || !CHECK(buffers_alloc(&b, lc, esize))) {
        kvtc_cache_free(ref);
        return;
    }
    kvtc_cache_set_model_name(ref, "strided", NULL);
    buffers_match(&b, lc, ref, true);
    kvtc_cache *w = wrap(&b, lc, dtype, TOKENS, POS0);
    if (!w)
        goto done;
    kvtc_cache_set_model_name(w, "strided", NULL);
    CHECK(kvtc_cache_data(w, KVTC_VALUE, 1) == b.ptr[1][1]);

    /* the same stream, safetensors file and calibration as the packed cache */
    void *s_ref = NULL, *s_w = NULL;
    size_t n_ref = 0, n_w = 0;
    if (compress(ref, &s_ref, &n_ref) && compress(w, &s_w, &n_w))
        CHECK_MSG(test_bytes_equal(s_ref, n_ref, s_w, n_w), "%s %s: streams differ", lc->name,
                  kvtc_dtype_name(dtype));
    void *f_ref = NULL, *f_w = NULL;
    size_t nf_ref = 0, nf_w = 0;
    kvtc_error err;
    if (CHECK_OK(kvtc_cache_save_safetensors(ref, &f_ref, &nf_ref, &err), &err) &&
        CHECK_OK(kvtc_cache_save_safetensors(w, &f_w, &nf_w, &err), &err))
        CHECK_MSG(test_bytes_equal(f_ref, nf_ref, f_w, nf_w), "%s: safetensors differ", lc->name);
    kvtc_calibration *c_ref = calibrate_one(ref), *c_w = calibrate_one(w);
    CHECK(c_ref && c_w && test_calibrations_equal(c_ref, c_w));
    kvtc_calibration_free(c_ref);
    kvtc_calibration_free(c_w);

    /* restored into the caller's layout: what kvtc_decompress restores */
    kvtc_cache *d = NULL;
    buffers out;
    if (s_ref && CHECK_OK(kvtc_decompress(g_cal, s_ref, n_ref, NULL, &d, &err), &err) &&
        CHECK(buffers_alloc(&out, lc, esize))) {
        kvtc_cache *into = wrap(&out, lc, dtype, TOKENS, 0);
        if (into && CHECK_OK(kvtc_decompress_into(g_cal, s_ref, n_ref, NULL, into, &err), &err)) {
            CHECK_MSG(buffers_match(&out, lc, d, false), "%s %s: decompress_into differs",
                      lc->name, kvtc_dtype_name(dtype));
            CHECK_EQ(kvtc_cache_pos0(into), POS0);
            CHECK(strcmp(kvtc_cache_model_name(into), "strided") == 0);
        }
        kvtc_cache_free(into);
        buffers_free(&out, lc);
    }

    /* appending a wrapped continuation: the packed continuation's bytes */
    if (s_ref) {
        kvtc_cache *more = make_random_cache(&g_shape, dtype, 90, POS0 + TOKENS,
                                             CODEC_TEST_LOW_RANK, 12);
        layout_case mc = make_case(lc->name, lc->layout.token_stride > lc->layout.head_stride
                                      ? KVTC_TOKEN_MAJOR : KVTC_HEAD_MAJOR,
                       1, 3, lc->stacked, 90);
        buffers mb;
        if (CHECK(more) && CHECK(buffers_alloc(&mb, &mc, esize))) {
            buffers_match(&mb, &mc, more, true);
            kvtc_cache *mw = wrap(&mb, &mc, dtype, 90, POS0 + TOKENS);
            void *a_ref = NULL, *a_w = NULL;
            size_t na_ref = 0, na_w = 0;
            if (mw &&
                CHECK_OK(kvtc_append(g_cal, s_ref, n_ref, more, NULL, &a_ref, &na_ref, &err),
                         &err) &&
                CHECK_OK(kvtc_append(g_cal, s_ref, n_ref, mw, NULL, &a_w, &na_w, &err), &err))
                CHECK_MSG(test_bytes_equal(a_ref, na_ref, a_w, na_w), "%s: appends differ",
                          lc->name);
            kvtc_buffer_free(a_ref);
            kvtc_buffer_free(a_w);
            kvtc_cache_free(mw);
            buffers_free(&mb, &mc);
        }
        kvtc_cache_free(more);
    }
    kvtc_cache_free(d);
    kvtc_buffer_free(s_ref);
    kvtc_buffer_free(s_w);
    kvtc_buffer_free(f_ref);
    kvtc_buffer_free(f_w);
done:
    kvtc_cache_free(w);
    kvtc_cache_free(ref);
    buffers_free(&b, lc);
}

static void test_layouts(void)
{
    const kvtc_dtype dtypes[] = {KVTC_F32, KVTC_F16, KVTC_BF16};
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        layout_case cases[] = {
            make_case("token-major stacked", KVTC_TOKEN_MAJOR, 0, 0, true, TOKENS),
            make_case("token-major per layer, padded", KVTC_TOKEN_MAJOR, 5, 2, false, TOKENS),
            make_case("head-major stacked", KVTC_HEAD_MAJOR, 0, 0, true, TOKENS),
            make_case("head-major per layer, padded", KVTC_HEAD_MAJOR, 3, 7, false, TOKENS),
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_layout(&cases[c], dtypes[i]);
    }
}

/* Refusals: each names its problem and makes no cache. */
static void test_refused(void)
{
    kvtc_error err;
    kvtc_cache *c = (kvtc_cache *)1;
    float buf[4096];
    void *ptrs[2] = {buf, buf + 2048};
    kvtc_cache_layout lay;
    kvtc_cache_layout_default(&lay, &g_shape, 8, KVTC_TOKEN_MAJOR);
    CHECK_EQ(lay.head_stride, g_shape.head_dim);
    CHECK_EQ(lay.token_stride, g_shape.n_kv_head * g_shape.head_dim);

    kvtc_cache_layout overlap = lay;
    overlap.head_stride = g_shape.head_dim - 1; /* heads overlap inside a token */
    CHECK_STATUS(kvtc_cache_wrap(&g_shape, KVTC_F32, 8, 0, ptrs, ptrs, &overlap, &c, &err),
                 KVTC_E_INVALID, NULL);
    CHECK(c == NULL);
    CHECK(strstr(err.message, "overlap") != NULL);
    overlap = lay;
    overlap.token_stride = g_shape.head_dim; /* tokens land on the next head */
    CHECK_STATUS(kvtc_cache_wrap(&g_shape, KVTC_F32, 8, 0, ptrs, ptrs, &overlap, &c, &err),
                 KVTC_E_INVALID, NULL);

    void *odd[2] = {(char *)buf + 2, buf};
    CHECK_STATUS(kvtc_cache_wrap(&g_shape, KVTC_F32, 8, 0, odd, ptrs, &lay, &c, &err),
                 KVTC_E_INVALID, NULL);
    CHECK(strstr(err.message, "aligned") != NULL);
    void *none[2] = {buf, NULL};
    CHECK_STATUS(kvtc_cache_wrap(&g_shape, KVTC_F32, 8, 0, ptrs, none, &lay, &c, &err),
                 KVTC_E_INVALID, NULL);
    CHECK(strstr(err.message, "layer 1 values pointer is NULL") != NULL);
    kvtc_cache_layout zero = lay;
    zero.struct_size = 0;
    CHECK_STATUS(kvtc_cache_wrap(&g_shape, KVTC_F32, 8, 0, ptrs, ptrs, &zero, &c, &err),
                 KVTC_E_INVALID, NULL);
    CHECK_STATUS(kvtc_cache_wrap(&g_shape, (kvtc_dtype)7, 8, 0, ptrs, ptrs, &lay, &c, &err),
                 KVTC_E_UNSUPPORTED, NULL);
    /* a single token or head: its stride does not matter */
    kvtc_cache_layout one = lay;
    one.token_stride = 0;
    if (CHECK_OK(kvtc_cache_wrap(&g_shape, KVTC_F32, 1, 0, ptrs, ptrs, &one, &c, &err), &err))
        kvtc_cache_free(c);

    /* no tokens: any strides, NULL pointers (the gap-free head-major strides are 0) */
    void *nulls[2] = {NULL, NULL};
    kvtc_cache_layout empty;
    kvtc_cache_layout_default(&empty, &g_shape, 0, KVTC_HEAD_MAJOR);
    if (CHECK_OK(kvtc_cache_wrap(&g_shape, KVTC_F32, 0, 0, nulls, nulls, &empty, &c, &err), &err))
        kvtc_cache_free(c);

    /* decompress_into a cache of other tokens or dtype; a NaN where the calibrator refuses it */
    kvtc_cache *ref = make_random_cache(&g_shape, KVTC_F16, TOKENS, 0, CODEC_TEST_LOW_RANK, 3);
    void *s = NULL;
    size_t n = 0;
    if (CHECK(ref) && compress(ref, &s, &n)) {
        kvtc_cache *other = NULL;
        if (CHECK_OK(kvtc_cache_create(&g_shape, KVTC_F16, TOKENS - 1, 0, &other, &err), &err))
            CHECK_STATUS(kvtc_decompress_into(g_cal, s, n, NULL, other, &err), KVTC_E_MISMATCH,
                         NULL);
        kvtc_cache_free(other);
        if (CHECK_OK(kvtc_cache_create(&g_shape, KVTC_F32, TOKENS, 0, &other, &err), &err))
            CHECK_STATUS(kvtc_decompress_into(g_cal, s, n, NULL, other, &err), KVTC_E_MISMATCH,
                         NULL);
        CHECK(strstr(err.message, "F16") && strstr(err.message, "F32"));
        kvtc_cache_free(other);
        CHECK_STATUS(kvtc_decompress_into(g_cal, s, n, NULL, NULL, &err), KVTC_E_INVALID, NULL);
    }
    kvtc_buffer_free(s);
    kvtc_cache_free(ref);

    layout_case lc = make_case("token-major", KVTC_TOKEN_MAJOR, 0, 0, true, 64);
    buffers b;
    kvtc_cache *src = make_random_cache(&g_shape, KVTC_F32, 64, 0, CODEC_TEST_LOW_RANK, 5);
    if (CHECK(src) && CHECK(buffers_alloc(&b, &lc, 4))) {
        buffers_match(&b, &lc, src, true);
        float nan = NAN;
        memcpy(b.ptr[KVTC_VALUE][1] + elem_at(&lc, 1, 33, 2) * 4, &nan, 4);
        kvtc_cache *w = wrap(&b, &lc, KVTC_F32, 64, 0);
        kvtc_calib_options opt;
        kvtc_calib_options_default(&opt);
        opt.sinks = 4;
        opt.window = 16;
        kvtc_calibrator *cr = NULL;
        if (w && CHECK_OK(kvtc_calibrator_create(&g_shape, &opt, &cr, &err), &err)) {
            CHECK_STATUS(kvtc_calibrator_add(cr, w, &err), KVTC_E_NUMERIC, NULL);
            CHECK_MSG(strstr(err.message, "value in layer 1, head 1, token 33") != NULL, "%s",
                      err.message);
        }
        kvtc_calibrator_free(cr);
        kvtc_cache_free(w);
        buffers_free(&b, &lc);
    }
    kvtc_cache_free(src);
}

int main(void)
{
    g_shape = codec_test_shape();
    g_cal = codec_test_calibration(&g_shape, 4, 16, 1, 4, 400);
    if (!CHECK(g_cal))
        return test_summary("test_strided_cache");
    test_layouts();
    test_refused();
    kvtc_calibration_free(g_cal);
    return test_summary("test_strided_cache");
}
