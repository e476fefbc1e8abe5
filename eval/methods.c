/* The compared methods. Quantizers are small functions over one group of
 * values (in place, returning the bytes the group takes when stored); the
 * methods differ only in which groups they form and which quantizer they use. */
#include "methods.h"

#include "kvtc_internal.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define E4M3_MAX 448.0f
#define F16_MAX 65504.0f
#define H2O_INDEX_BYTES 4u /* each kept token's position, per layer and KV head */

static const char *const method_names[EVAL_METHOD_COUNT] = {
    "exact", "kvtc", "fp8", "int8", "int4", "kivi2", "h2o", "zstd", "h2o-shared", "tova", "gear", "xkv",
    "evict+kvtc"};

const char *eval_method_name(eval_method_id id)
{
    return (unsigned)id < EVAL_METHOD_COUNT ? method_names[id] : "?";
}

bool eval_method_has_ratio(eval_method_id id)
{
    return id == EVAL_KVTC || id == EVAL_XKV || eval_method_evicts(id);
}

bool eval_method_evicts(eval_method_id id)
{
    return id == EVAL_H2O || id == EVAL_H2O_SHARED || id == EVAL_TOVA || id == EVAL_EVICT_KVTC;
}

/* "EVICTION:E+kvtc[:R]": both halves parsed as methods of their own. */
static kvtc_status parse_composition(const char *text, const char *plus, double default_ratio,
                                     eval_method *out, kvtc_error *err)
{
    char first[64];
    size_t len = (size_t)(plus - text);
    if (len >= sizeof first)
        return kvtc_fail(err, KVTC_E_INVALID, "bad method '%s'", text);
    memcpy(first, text, len);
    first[len] = '\0';
    eval_method e, k;
    kvtc_status st = eval_method_parse(first, default_ratio, &e, err);
    if (st != KVTC_OK)
        return st;
    if (e.id != EVAL_H2O && e.id != EVAL_H2O_SHARED && e.id != EVAL_TOVA)
        return kvtc_fail(err, KVTC_E_INVALID,
                         "a composition starts with an eviction (h2o, h2o-shared, tova): '%s'",
                         text);
    if ((st = eval_method_parse(plus + 1, default_ratio, &k, err)) != KVTC_OK)
        return st;
    if (k.id != EVAL_KVTC)
        return kvtc_fail(err, KVTC_E_INVALID, "a composition ends with kvtc: '%s'", text);
    *out = k;
    out->id = EVAL_EVICT_KVTC;
    out->evict = e.id;
    out->evict_ratio = e.target_ratio;
    out->target_ratio = e.target_ratio * k.target_ratio;
    return KVTC_OK;
}

kvtc_status eval_method_parse(const char *text, double default_ratio, eval_method *out,
                              kvtc_error *err)
{
    const char *plus = strchr(text, '+');
    if (plus)
        return parse_composition(text, plus, default_ratio, out, err);
    const char *colon = strchr(text, ':');
    size_t name_len = colon ? (size_t)(colon - text) : strlen(text);
    for (int id = 0; id < EVAL_EVICT_KVTC; id++) { /* the composition has no name of its own */
        if (strlen(method_names[id]) != name_len || strncmp(text, method_names[id], name_len))
            continue;
        *out = (eval_method){.id = (eval_method_id)id, .evict = EVAL_EXACT};
        if (!eval_method_has_ratio(out->id)) {
            if (colon)
                return kvtc_fail(err, KVTC_E_INVALID, "method %s takes no ratio: '%s'",
                                 method_names[id], text);
            return KVTC_OK;
        }
        double k = default_ratio, v = default_ratio;
        if (colon) {
            char *end, *end_v;
            k = v = strtod(colon + 1, &end);
            if (*end == '/' && out->id == EVAL_KVTC) {
                v = strtod(end + 1, &end_v);
                end = end_v == end + 1 ? end : end_v;
            }
            if (end == colon + 1 || *end)
                return kvtc_fail(err, KVTC_E_INVALID, "bad ratio in method '%s'", text);
        }
        if (!(k > 1.0) || !isfinite(k) || !(v > 1.0) || !isfinite(v))
            return kvtc_fail(err, KVTC_E_INVALID, "method %s needs ratios > 1 ('%s')",
                             method_names[id], text);
        out->k_ratio = k;
        out->v_ratio = v;
        out->target_ratio = k == v ? k : 2.0 / (1.0 / k + 1.0 / v);
        return KVTC_OK;
    }
    return kvtc_fail(err, KVTC_E_INVALID,
                     "unknown method '%s' (exact, kvtc, fp8, int8, int4, kivi2, h2o, zstd, "
                     "h2o-shared, tova, gear, xkv, EVICTION:E+kvtc:R)",
                     text);
}

void eval_method_label(const eval_method *m, char *buf, size_t cap)
{
    if (m->id == EVAL_EVICT_KVTC) {
        eval_method k = *m;
        k.id = EVAL_KVTC;
        k.target_ratio = m->target_ratio / m->evict_ratio;
        int n = snprintf(buf, cap, "%s:%g+", eval_method_name(m->evict), m->evict_ratio);
        if (n >= 0 && (size_t)n < cap)
            eval_method_label(&k, buf + n, cap - (size_t)n);
        return;
    }
    if (m->id == EVAL_KVTC && m->k_ratio != m->v_ratio)
        snprintf(buf, cap, "%s:%g/%g", eval_method_name(m->id), m->k_ratio, m->v_ratio);
    else if (eval_method_has_ratio(m->id))
        snprintf(buf, cap, "%s:%g", eval_method_name(m->id), m->target_ratio);
    else
        snprintf(buf, cap, "%s", eval_method_name(m->id));
}

/* ---- quantizers of one group: in place, return the bytes stored ------------ */

typedef uint64_t (*group_quant_fn)(float *x, uint32_t n);

static uint64_t packed_bytes(uint32_t n, uint32_t bits) { return ((uint64_t)n * bits + 7) / 8; }

static float group_absmax(const float *x, uint32_t n)
{
    float m = 0.0f;
    for (uint32_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(x[i]));
    return m;
}

/* An fp16 scale >= want (so no value saturates), as it is stored. */
static float stored_scale_up(float want)
{
    if (!(want > 0.0f))
        return 0.0f;
    uint16_t h = kvtc_f32_to_f16(fminf(want, F16_MAX));
    if (kvtc_f16_to_f32(h) < want && h < 0x7bffu)
        h++;
    return kvtc_f16_to_f32(h);
}

static uint64_t quant_fp16(float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        x[i] = kvtc_f16_to_f32(kvtc_f32_to_f16(x[i]));
    return 2ull * n;
}

/* e4m3 codes of x / scale, with one fp16 scale putting the largest magnitude at 448. */
static uint64_t quant_fp8(float *x, uint32_t n)
{
    float scale = stored_scale_up(group_absmax(x, n) / E4M3_MAX);
    float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (uint32_t i = 0; i < n; i++)
        x[i] = scale * kvtc_e4m3_to_f32(kvtc_f32_to_e4m3(x[i] * inv));
    return n + 2ull;
}

/* Symmetric integers in [-(2^(bits-1)-1), 2^(bits-1)-1] with one fp16 scale. */
static uint64_t quant_symmetric(float *x, uint32_t n, uint32_t bits)
{
    float qmax = (float)((1u << (bits - 1)) - 1u);
    float scale = stored_scale_up(group_absmax(x, n) / qmax);
    float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        float q = rintf(x[i] * inv);
        x[i] = scale * fminf(fmaxf(q, -qmax), qmax);
    }
    return packed_bytes(n, bits) + 2;
}

static uint64_t quant_int8(float *x, uint32_t n) { return quant_symmetric(x, n, 8); }
static uint64_t quant_int4(float *x, uint32_t n) { return quant_symmetric(x, n, 4); }

/* Asymmetric 2-bit with an fp16 minimum and scale: the codec's own group
 * quantizer, which is exactly KIVI's min/max scheme. */
static uint64_t quant_int2_minmax(float *x, uint32_t n)
{
    uint8_t codes[EVAL_KIVI_GROUP];
    uint16_t shift, scale;
    kvtc_quant_group(KVTC_Q_INT2, x, n, &shift, &scale, codes);
    kvtc_dequant_group(KVTC_Q_INT2, shift, scale, codes, n, x);
    return packed_bytes(n, 2) + 4;
}

/* ---- groups over a slab: rows = tokens, cols = head_dim ------------------- */

/* Quantizes x[rows][cols] in groups of `group` values (0 = a whole row):
 * along each row (per token) or down each column (per channel, gathered
 * through buf, which holds `group` floats). Returns the bytes stored. */
static uint64_t quantize_slab(float *x, uint32_t rows, uint32_t cols, uint32_t group,
                              bool per_channel, group_quant_fn fn, float *buf)
{
    uint64_t bytes = 0;
    if (!per_channel) {
        uint32_t g = group ? group : cols;
        for (uint32_t r = 0; r < rows; r++)
            for (uint32_t c0 = 0; c0 < cols; c0 += g)
                bytes += fn(x + (size_t)r * cols + c0, cols - c0 < g ? cols - c0 : g);
        return bytes;
    }
    uint32_t g = group ? group : rows;
    for (uint32_t c = 0; c < cols; c++)
        for (uint32_t r0 = 0; r0 < rows; r0 += g) {
            uint32_t n = rows - r0 < g ? rows - r0 : g;
            for (uint32_t i = 0; i < n; i++)
                buf[i] = x[(size_t)(r0 + i) * cols + c];
            bytes += fn(buf, n);
            for (uint32_t i = 0; i < n; i++)
                x[(size_t)(r0 + i) * cols + c] = buf[i];
        }
    return bytes;
}

/* How a fixed-rate quantization method forms its groups. */
typedef struct quant_scheme {
    group_quant_fn fn;
    uint32_t group;        /* values per group; 0 = one token's head vector */
    bool keys_per_channel; /* keys grouped down the token axis (KIVI) */
    uint32_t residual;     /* last treated tokens kept in fp16 (KIVI's window) */
} quant_scheme;

static const quant_scheme *scheme_of(eval_method_id id)
{
    static const quant_scheme fp8 = {quant_fp8, 0, false, 0};
    static const quant_scheme int8 = {quant_int8, 0, false, 0};
    static const quant_scheme int4 = {quant_int4, EVAL_INT4_GROUP, false, 0};
    static const quant_scheme kivi2 = {quant_int2_minmax, EVAL_KIVI_GROUP, true,
                                       EVAL_KIVI_RESIDUAL};
    switch (id) {
    case EVAL_FP8: return &fp8;
    case EVAL_INT8: return &int8;
    case EVAL_INT4: return &int4;
    case EVAL_KIVI2: return &kivi2;
    default: return NULL;
    }
}

/* Treats one slab with a scheme: the first q_rows tokens quantized (a whole
 * number of groups when keys go per channel), the rest kept in fp16. */
static uint64_t quantize_scheme_slab(const quant_scheme *s, kvtc_kind kind, float *x,
                                     uint32_t rows, uint32_t cols, float *buf)
{
    uint32_t q_rows = rows;
    if (s->residual)
        q_rows = rows > s->residual ? (rows - s->residual) / s->group * s->group : 0;
    bool per_channel = s->keys_per_channel && kind == KVTC_KEY;
    uint64_t bytes = quantize_slab(x, q_rows, cols, s->group, per_channel, s->fn, buf);
    return bytes + quant_fp16(x + (size_t)q_rows * cols, (rows - q_rows) * cols);
}

/* ---- walking the treated tokens of a cache ----------------------------------- */

/* Called with tokens [t0, t1) of one (kind, layer, head) as f32 rows of head_dim. */
typedef kvtc_status (*slab_fn)(void *user, kvtc_kind kind, float *x, uint32_t rows,
                               uint32_t cols, kvtc_error *err);

/* Runs fn over every (kind, layer, head) slab of tokens [t0, t1) and writes
 * the slabs back in the cache's dtype. */
static kvtc_status for_each_slab(kvtc_cache *c, uint32_t t0, uint32_t t1, slab_fn fn, void *user,
                                 kvtc_error *err)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint32_t rows = t1 - t0, hd = s->head_dim;
    size_t esz = kvtc_dtype_size(kvtc_cache_dtype(c));
    float *x = kvtc_malloc_array((size_t)rows * hd, sizeof(float));
    if (!x)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u tokens", rows);
    kvtc_status st = KVTC_OK;
    for (int k = 0; k < 2 && st == KVTC_OK; k++)
        for (uint32_t l = 0; l < s->n_layer && st == KVTC_OK; l++)
            for (uint32_t h = 0; h < s->n_kv_head && st == KVTC_OK; h++) {
                unsigned char *base = kvtc_cache_data(c, (kvtc_kind)k, l);
                unsigned char *slab = base + (((size_t)h * kvtc_cache_tokens(c) + t0) * hd) * esz;
                kvtc_to_f32(kvtc_cache_dtype(c), slab, x, (size_t)rows * hd);
                st = fn(user, (kvtc_kind)k, x, rows, hd, err);
                kvtc_from_f32(kvtc_cache_dtype(c), x, slab, (size_t)rows * hd);
            }
    kvtc_free(x);
    return st;
}

typedef struct scheme_job {
    const quant_scheme *scheme;
    float *buf;
    uint64_t bytes;
} scheme_job;

static kvtc_status scheme_slab(void *user, kvtc_kind kind, float *x, uint32_t rows,
                               uint32_t cols, kvtc_error *err)
{
    (void)err;
    scheme_job *j = user;
    j->bytes += quantize_scheme_slab(j->scheme, kind, x, rows, cols, j->buf);
    return KVTC_OK;
}

static kvtc_status apply_scheme(const quant_scheme *s, kvtc_cache *c, uint32_t t0, uint32_t t1,
                                uint64_t *bytes, kvtc_error *err)
{
    uint32_t buf_len = s->group ? s->group : t1 - t0;
    scheme_job job = {s, kvtc_malloc_array(buf_len ? buf_len : 1, sizeof(float)), 0};
    if (!job.buf)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    kvtc_status st = for_each_slab(c, t0, t1, scheme_slab, &job, err);
    kvtc_free(job.buf);
    *bytes = job.bytes;
    return st;
}

/* ---- zstd: the fp16 bytes of every slab, one frame -------------------------- */

typedef struct fp16_job {
    uint16_t *out;
    size_t used;
} fp16_job;

/* Appends the slab's fp16 codes; the slab becomes what decoding them gives. */
static kvtc_status fp16_slab(void *user, kvtc_kind kind, float *x, uint32_t rows, uint32_t cols,
                             kvtc_error *err)
{
    (void)kind, (void)err;
    fp16_job *j = user;
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        j->out[j->used + i] = kvtc_f32_to_f16(x[i]);
        x[i] = kvtc_f16_to_f32(j->out[j->used + i]);
    }
    j->used += (size_t)rows * cols;
    return KVTC_OK;
}

static kvtc_status apply_zstd(kvtc_cache *c, uint32_t t0, uint32_t t1, uint64_t *bytes,
                              kvtc_error *err)
{
    size_t n = 2 * (size_t)kvtc_shape_features(kvtc_cache_shape(c)) * (t1 - t0);
    size_t raw_len = n * sizeof(uint16_t), bound = ZSTD_compressBound(raw_len);
    fp16_job job = {kvtc_malloc_array(n, sizeof(uint16_t)), 0};
    void *packed = kvtc_malloc(bound), *back = kvtc_malloc(raw_len);
    kvtc_status st = KVTC_OK;
    if (!job.out || !packed || !back) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for zstd buffers");
        goto done;
    }
    if ((st = for_each_slab(c, t0, t1, fp16_slab, &job, err)) != KVTC_OK)
        goto done;
    size_t packed_len = ZSTD_compress(packed, bound, job.out, raw_len, EVAL_ZSTD_LEVEL);
    if (ZSTD_isError(packed_len)) {
        st = kvtc_fail(err, KVTC_E_IO, "zstd: %s", ZSTD_getErrorName(packed_len));
        goto done;
    }
    /* Lossless by construction; decoding proves the count is of a real stream. */
    size_t back_len = ZSTD_decompress(back, raw_len, packed, packed_len);
    if (ZSTD_isError(back_len) || back_len != raw_len || memcmp(back, job.out, raw_len)) {
        st = kvtc_fail(err, KVTC_E_NUMERIC, "zstd round trip changed the data");
        goto done;
    }
    *bytes = packed_len;
done:
    kvtc_free(job.out);
    kvtc_free(packed);
    kvtc_free(back);
    return st;
}

/* ---- layer matrices: GEAR and xKV ---------------------------------------------- */

/* Tokens [t0, t1) of `layers` consecutive layers from l0 of one kind as one
 * row-major matrix [t1 - t0][layers * n_kv_head * head_dim] (x), or back into
 * the cache (put). With derope, keys are turned back to position 0 on the way
 * out (RoPE undone, as a position-free factorization wants) and to their own
 * positions on the way in. */
static void layer_matrix(kvtc_cache *c, kvtc_kind kind, uint32_t l0, uint32_t layers,
                         uint32_t t0, uint32_t t1, bool derope, bool put, float *x)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    kvtc_dtype dt = kvtc_cache_dtype(c);
    size_t esz = kvtc_dtype_size(dt), hd = s->head_dim, n = kvtc_cache_tokens(c);
    size_t cols = (size_t)layers * s->n_kv_head * hd;
    bool rope = derope && kind == KVTC_KEY && s->rope_style != KVTC_ROPE_NONE;
    for (uint32_t l = 0; l < layers; l++) {
        unsigned char *base = kvtc_cache_data(c, kind, l0 + l);
        for (uint32_t h = 0; h < s->n_kv_head; h++)
            for (uint32_t t = t0; t < t1; t++) {
                float *row = x + (size_t)(t - t0) * cols + ((size_t)l * s->n_kv_head + h) * hd;
                unsigned char *p = base + ((size_t)h * n + t) * hd * esz;
                int64_t pos = kvtc_cache_pos0(c) + t;
                if (put) {
                    if (rope)
                        kvtc_rope_rotate(s, row, pos, false);
                    kvtc_from_f32(dt, row, p, hd);
                } else {
                    kvtc_to_f32(dt, p, row, hd);
                    if (rope)
                        kvtc_rope_rotate(s, row, pos, true);
                }
            }
    }
}

/* x [rows][cols] ~ U_r S_r V_r^T, its rank-r truncated SVD with both factors
 * rounded to fp16 (as stored), written over x; false when LAPACK fails or
 * memory runs out. */
static bool truncated_svd(float *x, uint32_t rows, uint32_t cols, uint32_t r)
{
    uint32_t k = rows < cols ? rows : cols;
    if (r > k)
        r = k;
    float *a = kvtc_malloc_array((size_t)rows, cols * sizeof(float));
    float *u = kvtc_malloc_array((size_t)rows, k * sizeof(float));
    float *vt = kvtc_malloc_array((size_t)k, cols * sizeof(float));
    float *sv = kvtc_malloc_array(k, sizeof(float));
    bool ok = a && u && vt && sv;
    if (ok) {
        memcpy(a, x, (size_t)rows * cols * sizeof(float));
        ok = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', (int)rows, (int)cols, a, (int)cols, sv, u,
                            (int)k, vt, (int)cols) == 0;
    }
    if (ok) {
        for (uint32_t i = 0; i < rows; i++)
            for (uint32_t j = 0; j < r; j++) {
                float *e = &u[(size_t)i * k + j];
                *e = kvtc_f16_to_f32(kvtc_f32_to_f16(*e * sv[j]));
            }
        for (size_t i = 0; i < (size_t)r * cols; i++)
            vt[i] = kvtc_f16_to_f32(kvtc_f32_to_f16(vt[i]));
        memset(x, 0, (size_t)rows * cols * sizeof(float));
        if (r)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)r,
                        1.0f, u, (int)k, vt, (int)cols, 0.0f, x, (int)cols);
    }
    kvtc_free(a);
    kvtc_free(u);
    kvtc_free(vt);
    kvtc_free(sv);
    return ok;
}

static int by_magnitude_desc(const void *pa, const void *pb)
{
    float a = fabsf(*(const float *)pa), b = fabsf(*(const float *)pb);
    return a > b ? -1 : a < b;
}

/* GEAR on one layer's matrix x [rows][cols]: the largest EVAL_GEAR_OUTLIERS of
 * the values kept exact, int4 on the rest, a rank-EVAL_GEAR_RANK
 * factorization of what int4 left. Returns the bytes stored, 0 when out of
 * memory. */
static uint64_t gear_matrix(float *x, uint32_t rows, uint32_t cols)
{
    size_t n = (size_t)rows * cols, n_out = (size_t)(EVAL_GEAR_OUTLIERS * (double)n);
    float *sorted = kvtc_malloc_array(n, sizeof(float));
    float *sparse = kvtc_malloc_array(n, sizeof(float)); /* the outliers, 0 elsewhere */
    float *q = kvtc_malloc_array(n, sizeof(float));
    if (!sorted || !sparse || !q) {
        kvtc_free(sorted), kvtc_free(sparse), kvtc_free(q);
        return 0;
    }
    memcpy(sorted, x, n * sizeof(float));
    qsort(sorted, n, sizeof(float), by_magnitude_desc);
    float cut = n_out ? fabsf(sorted[n_out - 1]) : INFINITY;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        bool outlier = kept < n_out && fabsf(x[i]) >= cut;
        kept += outlier;
        sparse[i] = outlier ? kvtc_f16_to_f32(kvtc_f32_to_f16(x[i])) : 0.0f;
        q[i] = outlier ? 0.0f : x[i];
    }
    uint64_t bytes = kept * (2 + H2O_INDEX_BYTES);
    /* int4 of the dense part, groups of 32 along each token */
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t c0 = 0; c0 < cols; c0 += EVAL_INT4_GROUP) {
            uint32_t g = cols - c0 < EVAL_INT4_GROUP ? cols - c0 : EVAL_INT4_GROUP;
            float *v = q + (size_t)r * cols + c0;
            uint8_t codes[EVAL_INT4_GROUP];
            uint16_t shift, scale;
            kvtc_quant_group(KVTC_Q_INT4, v, g, &shift, &scale, codes);
            kvtc_dequant_group(KVTC_Q_INT4, shift, scale, codes, g, v);
            bytes += packed_bytes(g, 4) + 4;
        }
    /* the residual of the dense part, low rank */
    for (size_t i = 0; i < n; i++)
        sorted[i] = (sparse[i] != 0.0f ? 0.0f : x[i]) - q[i];
    bool ok = truncated_svd(sorted, rows, cols, EVAL_GEAR_RANK);
    uint32_t r = EVAL_GEAR_RANK < rows && EVAL_GEAR_RANK < cols ? EVAL_GEAR_RANK
                 : rows < cols                                 ? rows
                                                               : cols;
    bytes += 2ull * r * (rows + cols);
    for (size_t i = 0; ok && i < n; i++)
        x[i] = q[i] + sorted[i] + sparse[i];
    kvtc_free(sorted), kvtc_free(sparse), kvtc_free(q);
    return ok ? bytes : 0;
}

static kvtc_status apply_gear(kvtc_cache *c, uint32_t t0, uint32_t t1, uint64_t *bytes,
                              kvtc_error *err)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint32_t rows = t1 - t0, cols = s->n_kv_head * s->head_dim;
    float *x = kvtc_malloc_array((size_t)rows, cols * sizeof(float));
    if (!x)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for gear");
    *bytes = 0;
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < s->n_layer; l++) {
            layer_matrix(c, (kvtc_kind)k, l, 1, t0, t1, false, false, x);
            uint64_t b = gear_matrix(x, rows, cols);
            if (!b) {
                kvtc_free(x);
                return kvtc_fail(err, KVTC_E_NOMEM, "gear: out of memory or SVD failed");
            }
            *bytes += b;
            layer_matrix(c, (kvtc_kind)k, l, 1, t0, t1, false, true, x);
        }
    kvtc_free(x);
    return KVTC_OK;
}

/* xKV: the rank whose fp16 factors (rows + cols values per rank) realize target. */
static uint32_t xkv_rank(uint32_t rows, uint32_t cols, double target)
{
    double r = floor((double)rows * cols / (target * ((double)rows + cols)));
    return r < 1 ? 1 : (uint32_t)r;
}

static kvtc_status apply_xkv(double target, kvtc_cache *c, uint32_t t0, uint32_t t1,
                             uint64_t *bytes, kvtc_error *err)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint32_t rows = t1 - t0, per_layer = s->n_kv_head * s->head_dim;
    uint32_t group = s->n_layer < EVAL_XKV_GROUP ? s->n_layer : EVAL_XKV_GROUP;
    float *x = kvtc_malloc_array((size_t)rows, (size_t)group * per_layer * sizeof(float));
    if (!x)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for xkv");
    *bytes = 0;
    for (int k = 0; k < 2; k++)
        for (uint32_t l0 = 0; l0 < s->n_layer; l0 += group) {
            uint32_t layers = s->n_layer - l0 < group ? s->n_layer - l0 : group;
            uint32_t cols = layers * per_layer, r = xkv_rank(rows, cols, target);
            r = r < rows && r < cols ? r : rows < cols ? rows : cols;
            layer_matrix(c, (kvtc_kind)k, l0, layers, t0, t1, true, false, x);
            if (!truncated_svd(x, rows, cols, r)) {
                kvtc_free(x);
                return kvtc_fail(err, KVTC_E_NOMEM, "xkv: out of memory or SVD failed");
            }
            layer_matrix(c, (kvtc_kind)k, l0, layers, t0, t1, true, true, x);
            *bytes += 2ull * r * (rows + cols);
        }
    kvtc_free(x);
    return KVTC_OK;
}

/* ---- kvtc ----------------------------------------------------------------------- */

static kvtc_status apply_kvtc(const eval_method *m, const eval_treat_args *a, kvtc_cache **cache,
                              uint64_t *bytes, kvtc_error *err)
{
    if (!a->cal)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc needs a calibration");
    if (kvtc_calibration_sinks(a->cal) != a->sinks ||
        kvtc_calibration_window(a->cal) != a->window)
        return kvtc_fail(err, KVTC_E_MISMATCH,
                         "calibration has sinks %u / window %u, the harness uses %u / %u",
                         kvtc_calibration_sinks(a->cal), kvtc_calibration_window(a->cal),
                         a->sinks, a->window);
    kvtc_compress_options copt;
    kvtc_compress_options_default(&copt);
    copt.k_ratio = m->k_ratio;
    copt.v_ratio = m->v_ratio;
    copt.n_threads = a->n_threads;
    void *stream = NULL;
    size_t len = 0;
    kvtc_status st = kvtc_compress(a->cal, *cache, &copt, &stream, &len, err);
    if (st != KVTC_OK)
        return st;
    kvtc_stream_info info = {.struct_size = sizeof info};
    kvtc_decompress_options dopt = {.struct_size = sizeof dopt, .n_threads = a->n_threads};
    kvtc_cache *back = NULL;
    if ((st = kvtc_stream_info_get(stream, len, &info, err)) == KVTC_OK &&
        (st = kvtc_decompress(a->cal, stream, len, &dopt, &back, err)) == KVTC_OK) {
        /* Everything but the raw sink and window blocks: the header, plans,
         * block table and coded blocks are all paid for by the treated tokens. */
        *bytes = info.total_bytes - info.raw_bytes;
        kvtc_cache_free(*cache);
        *cache = back;
    }
    kvtc_buffer_free(stream);
    return st;
}

/* ---- eviction ------------------------------------------------------------------ */

/* The most tokens out of `treated` whose storage (per_token bytes each plus
 * index_bytes for its position) still realizes target. */
static uint32_t keep_count(uint32_t treated, double per_token, double index_bytes, double target)
{
    if (treated == 0)
        return 0;
    double m = floor(treated * per_token / (target * (per_token + index_bytes)));
    return m < 1 ? 1 : m > treated ? treated : (uint32_t)m;
}

uint32_t eval_h2o_keep_count(uint32_t treated, uint32_t head_dim, double target)
{
    return keep_count(treated, 4.0 * head_dim, H2O_INDEX_BYTES, target); /* fp16 K and V */
}

typedef struct scored_token {
    float score;
    uint32_t index;
} scored_token;

/* Highest score first; ties keep the earlier token. */
static int by_score_desc(const void *pa, const void *pb)
{
    const scored_token *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

static int by_index(const void *pa, const void *pb)
{
    const scored_token *a = pa, *b = pb;
    return a->index < b->index ? -1 : a->index > b->index;
}

/* The m treated tokens of highest score, in their order, into keep[0, m). */
static void top_tokens(const float *score, uint32_t sinks, uint32_t treated, uint32_t m,
                       scored_token *tok, uint32_t *keep)
{
    for (uint32_t i = 0; i < treated; i++)
        tok[i] = (scored_token){score[sinks + i], sinks + i};
    qsort(tok, treated, sizeof *tok, by_score_desc);
    qsort(tok, m, sizeof *tok, by_index);
    for (uint32_t i = 0; i < m; i++)
        keep[i] = tok[i].index;
}

/* Which heads share one set of kept tokens: each its own (h2o), a layer's
 * (tova), or every head (h2o-shared). */
typedef enum evict_scope { EVICT_HEAD, EVICT_LAYER, EVICT_ALL } evict_scope;

static evict_scope scope_of(eval_method_id id)
{
    return id == EVAL_TOVA ? EVICT_LAYER : id == EVAL_H2O_SHARED ? EVICT_ALL : EVICT_HEAD;
}

/* KV heads per set of kept tokens. */
static size_t scope_heads(evict_scope scope, const kvtc_model_shape *s)
{
    return scope == EVICT_HEAD ? 1 : scope == EVICT_LAYER ? s->n_kv_head
                                                          : (size_t)s->n_layer * s->n_kv_head;
}

/* Which m tokens each layer and KV head keeps: keep[(l * n_kv_head + h) * m + i],
 * ranked by `score` ([n_layer][n_kv_head][n]) summed over the heads that
 * share a set. */
static kvtc_status select_tokens(evict_scope scope, const float *score, uint32_t m,
                                 const eval_treat_args *a, const kvtc_cache *c, uint32_t *keep,
                                 kvtc_error *err)
{
    if (!score)
        return kvtc_fail(err, KVTC_E_INVALID, "eviction needs the attention scores");
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint32_t n = kvtc_cache_tokens(c), treated = n - a->sinks - a->window;
    size_t heads = (size_t)s->n_layer * s->n_kv_head, per = scope_heads(scope, s);
    scored_token *tok = kvtc_malloc_array(treated, sizeof *tok);
    float *sum = kvtc_malloc_array(n, sizeof *sum);
    if (!tok || !sum) {
        kvtc_free(tok);
        kvtc_free(sum);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for eviction");
    }
    for (size_t g = 0; g < heads; g += per) {
        memcpy(sum, score + g * n, (size_t)n * sizeof *sum);
        for (size_t lh = g + 1; lh < g + per; lh++)
            for (uint32_t t = 0; t < n; t++)
                sum[t] += score[lh * n + t];
        top_tokens(sum, a->sinks, treated, m, tok, keep + g * m);
        for (size_t lh = g + 1; lh < g + per; lh++)
            memcpy(keep + lh * m, keep + g * m, (size_t)m * sizeof *keep);
    }
    kvtc_free(tok);
    kvtc_free(sum);
    return KVTC_OK;
}

/* Replaces *cache with sinks, the kept tokens of each head (stored as fp16)
 * and the window; pos0 moves so that the next token still goes at n. */
static kvtc_status evict_tokens(const uint32_t *keep, uint32_t m, const eval_treat_args *a,
                                kvtc_cache **cache, kvtc_error *err)
{
    kvtc_cache *c = *cache;
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    uint32_t n = kvtc_cache_tokens(c), n_new = a->sinks + m + a->window;
    float *row = kvtc_malloc_array(s->head_dim, sizeof(float));
    kvtc_error cerr;
    kvtc_cache *out;
    kvtc_cache_create(s, kvtc_cache_dtype(c), n_new, kvtc_cache_pos0(c) + (n - n_new), &out,
                      &cerr);
    if (!out || !row) {
        kvtc_cache_free(out);
        kvtc_free(row);
        return out ? kvtc_fail(err, KVTC_E_NOMEM, "out of memory for eviction")
                   : kvtc_fail(err, cerr.status, "eviction: %s", cerr.message);
    }
    kvtc_cache_copy_tokens(out, 0, c, 0, a->sinks);
    kvtc_cache_copy_tokens(out, a->sinks + m, c, n - a->window, a->window);
    kvtc_dtype dt = kvtc_cache_dtype(c);
    size_t esz = kvtc_dtype_size(dt), hd = s->head_dim;
    for (uint32_t l = 0; l < s->n_layer; l++)
        for (uint32_t h = 0; h < s->n_kv_head; h++) {
            const uint32_t *kept = keep + ((size_t)l * s->n_kv_head + h) * m;
            for (int k = 0; k < 2; k++) {
                const unsigned char *src = kvtc_cache_data_const(c, (kvtc_kind)k, l);
                unsigned char *dst = kvtc_cache_data(out, (kvtc_kind)k, l);
                for (uint32_t i = 0; i < m; i++) {
                    kvtc_to_f32(dt, src + ((size_t)h * n + kept[i]) * hd * esz, row, hd);
                    quant_fp16(row, (uint32_t)hd);
                    kvtc_from_f32(dt, row, dst + ((size_t)h * n_new + a->sinks + i) * hd * esz,
                                  hd);
                }
            }
        }
    kvtc_free(row);
    kvtc_cache_free(c);
    *cache = out;
    return KVTC_OK;
}

/* Bytes of the kept tokens' positions: one list per set of kept tokens. */
static uint64_t index_bytes(evict_scope scope, const kvtc_model_shape *s, uint32_t m)
{
    size_t sets = (size_t)s->n_layer * s->n_kv_head / scope_heads(scope, s);
    return (uint64_t)sets * m * H2O_INDEX_BYTES;
}

static kvtc_status apply_eviction(eval_method_id id, uint32_t m, const eval_treat_args *a,
                                  kvtc_cache **cache, uint32_t **keep, kvtc_error *err)
{
    const kvtc_model_shape *s = kvtc_cache_shape(*cache);
    *keep = kvtc_malloc_array((size_t)s->n_layer * s->n_kv_head * m, sizeof **keep);
    if (!*keep)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for eviction");
    const float *score = id == EVAL_TOVA ? a->last_attention : a->attention;
    kvtc_status st = select_tokens(scope_of(id), score, m, a, *cache, *keep, err);
    if (st == KVTC_OK)
        st = evict_tokens(*keep, m, a, cache, err);
    if (st != KVTC_OK) {
        kvtc_free(*keep);
        *keep = NULL;
    }
    return st;
}

/* An eviction alone (h2o, h2o-shared, tova): the kept tokens in fp16 and
 * their positions realize the ratio. */
static kvtc_status apply_evict(eval_method_id id, double ratio, const eval_treat_args *a,
                               kvtc_cache **cache, uint64_t *bytes, uint32_t *kept,
                               kvtc_error *err)
{
    kvtc_model_shape shape = *kvtc_cache_shape(*cache), *s = &shape; /* *cache is replaced */
    uint32_t treated = kvtc_cache_tokens(*cache) - a->sinks - a->window;
    double heads = (double)s->n_layer * s->n_kv_head;
    uint32_t m = keep_count(treated, heads * 4.0 * s->head_dim,
                            (double)index_bytes(scope_of(id), s, 1), ratio);
    uint32_t *keep;
    kvtc_status st = apply_eviction(id, m, a, cache, &keep, err);
    if (st != KVTC_OK)
        return st;
    kvtc_free(keep);
    *bytes = (uint64_t)heads * m * 4 * s->head_dim + index_bytes(scope_of(id), s, m);
    *kept = m;
    return KVTC_OK;
}

/* Turns each kept key of the evicted cache c from its original position
 * (orig_pos0 + keep) to its slot's (pos0 + slot), or back with `back`. */
static void move_kept_keys(kvtc_cache *c, const uint32_t *keep, uint32_t m, uint32_t sinks,
                           int64_t orig_pos0, bool back, float *row)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    if (s->rope_style == KVTC_ROPE_NONE)
        return;
    kvtc_dtype dt = kvtc_cache_dtype(c);
    size_t esz = kvtc_dtype_size(dt), hd = s->head_dim;
    uint32_t n = kvtc_cache_tokens(c);
    for (uint32_t l = 0; l < s->n_layer; l++) {
        unsigned char *keys = kvtc_cache_data(c, KVTC_KEY, l);
        for (uint32_t h = 0; h < s->n_kv_head; h++)
            for (uint32_t i = 0; i < m; i++) {
                int64_t from = orig_pos0 + keep[((size_t)l * s->n_kv_head + h) * m + i];
                int64_t to = kvtc_cache_pos0(c) + sinks + i;
                unsigned char *p = keys + ((size_t)h * n + sinks + i) * hd * esz;
                kvtc_to_f32(dt, p, row, hd);
                kvtc_rope_rotate(s, row, back ? from - to : to - from, false);
                kvtc_from_f32(dt, row, p, hd);
            }
    }
}

/* Eviction to 1/E of the treated tokens, then kvtc on the kept ones. */
static kvtc_status apply_evict_kvtc(const eval_method *m, const eval_treat_args *a,
                                    kvtc_cache **cache, uint64_t *bytes, uint32_t *kept,
                                    kvtc_error *err)
{
    int64_t orig_pos0 = kvtc_cache_pos0(*cache);
    uint32_t treated = kvtc_cache_tokens(*cache) - a->sinks - a->window;
    uint32_t mk = (uint32_t)fmin(treated, fmax(1.0, floor(treated / m->evict_ratio)));
    kvtc_model_shape shape = *kvtc_cache_shape(*cache), *s = &shape; /* *cache is replaced */
    uint32_t *keep = NULL;
    float *row = kvtc_malloc_array(s->head_dim, sizeof(float));
    kvtc_status st = row ? apply_eviction(m->evict, mk, a, cache, &keep, err)
                         : kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    if (st == KVTC_OK) {
        move_kept_keys(*cache, keep, mk, a->sinks, orig_pos0, false, row);
        st = apply_kvtc(m, a, cache, bytes, err);
        /* on failure *cache is the evicted one, its keys still moved: turn them back */
        move_kept_keys(*cache, keep, mk, a->sinks, orig_pos0, true, row);
    }
    if (st == KVTC_OK) {
        *bytes += index_bytes(scope_of(m->evict), s, mk);
        *kept = mk;
    }
    kvtc_free(keep);
    kvtc_free(row);
    return st;
}

/* ---- dispatch ----------------------------------------------------------------------- */

kvtc_status eval_method_apply(const eval_method *m, const eval_treat_args *a, kvtc_cache **cache,
                              eval_treat_result *res, kvtc_error *err)
{
    kvtc_cache *c = *cache;
    uint32_t n = kvtc_cache_tokens(c);
    memset(res, 0, sizeof *res);
    res->ratio = 1.0;
    if ((uint64_t)a->sinks + a->window >= n)
        return KVTC_OK; /* nothing to treat: every method keeps the cache as it is */
    uint32_t t0 = a->sinks, t1 = n - a->window;
    res->treated_tokens = res->kept_tokens = t1 - t0;
    res->fp16_bytes = 4 * kvtc_shape_features(kvtc_cache_shape(c)) * res->treated_tokens;
    kvtc_status st;
    switch (m->id) {
    case EVAL_EXACT:
        res->stored_bytes = res->fp16_bytes;
        st = KVTC_OK;
        break;
    case EVAL_KVTC: st = apply_kvtc(m, a, cache, &res->stored_bytes, err); break;
    case EVAL_H2O:
    case EVAL_H2O_SHARED:
    case EVAL_TOVA:
        st = apply_evict(m->id, m->target_ratio, a, cache, &res->stored_bytes, &res->kept_tokens,
                         err);
        break;
    case EVAL_GEAR: st = apply_gear(c, t0, t1, &res->stored_bytes, err); break;
    case EVAL_XKV: st = apply_xkv(m->target_ratio, c, t0, t1, &res->stored_bytes, err); break;
    case EVAL_EVICT_KVTC:
        st = apply_evict_kvtc(m, a, cache, &res->stored_bytes, &res->kept_tokens, err);
        break;
    case EVAL_ZSTD: st = apply_zstd(c, t0, t1, &res->stored_bytes, err); break;
    default: {
        const quant_scheme *s = scheme_of(m->id);
        st = s ? apply_scheme(s, c, t0, t1, &res->stored_bytes, err)
               : kvtc_fail(err, KVTC_E_INVALID, "unknown method %d", (int)m->id);
    }
    }
    if (st == KVTC_OK && res->stored_bytes)
        res->ratio = (double)res->fp16_bytes / (double)res->stored_bytes;
    return st;
}
