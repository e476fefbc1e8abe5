/* The forward pass of a Llama-family decoder over a batch of tokens. Products
 * with the weights go through weights.h (a fused dequantizing matvec for a
 * single token, sgemm on dequantized tiles for a batch); the attention's go
 * to BLAS; only normalization, RoPE, softmax and SwiGLU are loops here. */
#include "session.h"
#include "kvtc_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define BATCH 512u       /* tokens per pass through the layers */
#define QUERY_CHUNK 128u /* queries per attention step: bounds the score buffer */

static uint32_t q_dim(const model_config *c) { return c->n_head * c->head_dim; }
static uint32_t kv_dim(const model_config *c) { return c->n_kv_head * c->head_dim; }
static uint32_t qkv_dim(const model_config *c) { return q_dim(c) + 2 * kv_dim(c); }

kvtc_status session_create(const model *m, uint32_t capacity, uint32_t n_threads, session **out,
                           kvtc_error *err)
{
    *out = NULL;
    const model_config *c = &m->cfg;
    if (capacity < 1 || capacity > (1u << 24))
        return kvtc_fail(err, KVTC_E_INVALID, "session capacity %u out of range [1, 2^24]",
                         capacity);
    session *s = kvtc_calloc(1, sizeof *s);
    if (!s)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    s->m = m;
    s->capacity = capacity;
    s->n_threads = n_threads == 0 ? 1 : n_threads > KVTC_MAX_THREADS ? KVTC_MAX_THREADS : n_threads;
    size_t cache = (size_t)c->n_layer * kv_dim(c) * capacity;
    s->keys = kvtc_malloc_array(cache, sizeof(float));
    s->values = kvtc_malloc_array(cache, sizeof(float));
    s->x = kvtc_malloc_array((size_t)BATCH * c->dim, sizeof(float));
    s->xn = kvtc_malloc_array((size_t)BATCH * c->dim, sizeof(float));
    s->qkv = kvtc_malloc_array((size_t)BATCH * qkv_dim(c), sizeof(float));
    s->att = kvtc_malloc_array((size_t)BATCH * q_dim(c), sizeof(float));
    s->ffn = kvtc_malloc_array((size_t)BATCH * 2 * c->hidden_dim, sizeof(float));
    s->scores = kvtc_malloc_array((size_t)s->n_threads * QUERY_CHUNK * capacity, sizeof(float));
    s->rope_cos = kvtc_malloc_array((size_t)BATCH * c->rope_dims / 2, sizeof(float));
    s->rope_sin = kvtc_malloc_array((size_t)BATCH * c->rope_dims / 2, sizeof(float));
    s->panel = kvtc_malloc_array(WEIGHT_PANEL_FLOATS, sizeof(float)); /* touched by prefill only */
    if (!s->keys || !s->values || !s->x || !s->xn || !s->qkv || !s->att || !s->ffn ||
        !s->scores || !s->rope_cos || !s->rope_sin || !s->panel) {
        session_free(s);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a %u-token session", capacity);
    }
    *out = s;
    return KVTC_OK;
}

void session_free(session *s)
{
    if (!s)
        return;
    float *bufs[] = {s->keys,     s->values,   s->x,     s->xn,
                     s->qkv,      s->att,      s->ffn,   s->scores,
                     s->rope_cos, s->rope_sin, s->panel, s->observe.per_thread,
                     s->observe.head_last};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        kvtc_free(bufs[i]);
    kvtc_free(s);
}

const model *session_model(const session *s) { return s->m; }
uint32_t session_n_past(const session *s) { return s->n_past; }
uint32_t session_capacity(const session *s) { return s->capacity; }
int64_t session_pos0(const session *s) { return s->pos0; }

void session_reset(session *s)
{
    s->n_past = 0;
    s->pos0 = 0;
    s->import.active = false;
}

void session_truncate(session *s, uint32_t n)
{
    if (n < s->n_past)
        s->n_past = n; /* the slots after n are overwritten by the next forward */
}

float *session_cache_layer(const session *s, kvtc_kind kind, uint32_t layer)
{
    size_t per_layer = (size_t)kv_dim(&s->m->cfg) * s->capacity;
    return (kind == KVTC_KEY ? s->keys : s->values) + layer * per_layer;
}

/* out[i] = x[i] / rms(x) * w[i] for each of n rows of dim. */
static void rmsnorm(float *out, const float *x, const float *w, uint32_t n, uint32_t dim,
                    float eps)
{
    for (uint32_t r = 0; r < n; r++, x += dim, out += dim) {
        double ss = 0;
        for (uint32_t i = 0; i < dim; i++)
            ss += (double)x[i] * x[i];
        float inv = (float)(1.0 / sqrt(ss / dim + eps));
        for (uint32_t i = 0; i < dim; i++)
            out[i] = x[i] * inv * w[i];
    }
}

/* C[m][n] (ldc) = alpha A[m][k] (lda) B^T + beta C, with B stored [n][k] (ldb).
 * A single row goes through gemv: gemm would repack all of B for it. */
static void matmul_bt(uint32_t m, uint32_t n, uint32_t k, float alpha, const float *a,
                      uint32_t lda, const float *b, uint32_t ldb, float beta, float *c,
                      uint32_t ldc)
{
    if (m == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)k, alpha, b, (int)ldb, a, 1, beta,
                    c, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, alpha, a,
                    (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* C[n][w->rows] (ldc) = A[n][w->cols] (lda) W^T + beta C, beta 0 or 1. A few
 * tokens go through the fused matvec one by one: dequantizing the whole
 * matrix for sgemm costs about as much as 8 matvecs. */
#define MATVEC_BATCH 8u
static kvtc_status project(session *s, const weight_matrix *w, uint32_t n, const float *a,
                           uint32_t lda, float beta, float *c, uint32_t ldc, kvtc_error *err)
{
    if (n >= MATVEC_BATCH)
        return weight_matmul(w, n, a, lda, beta, c, ldc, s->panel, s->n_threads, err);
    for (uint32_t i = 0; i < n; i++) {
        kvtc_status st = weight_matvec(w, a + (size_t)i * lda, c + (size_t)i * ldc, beta != 0.0f,
                                       s->n_threads, err);
        if (st != KVTC_OK)
            return st;
    }
    return KVTC_OK;
}

/* C[m][n] (ldc) = A[m][k] (lda) B, with B stored [k][n] (ldb). */
static void matmul(uint32_t m, uint32_t n, uint32_t k, const float *a, uint32_t lda,
                   const float *b, uint32_t ldb, float *c, uint32_t ldc)
{
    if (m == 1)
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)k, (int)n, 1.0f, b, (int)ldb, a, 1, 0.0f, c,
                    1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a,
                    (int)lda, b, (int)ldb, 0.0f, c, (int)ldc);
}

/* expf over 4 lanes at once with GCC/clang vector extensions (SSE2 at the
 * x86-64 baseline): the softmax and SiLU call exp hundreds of millions of
 * times in a long prefill, and the scalar libm call dominated them.
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and a degree-7 Taylor
 * polynomial: relative error < 2e-7. Inputs are clamped to [-87.3, 88.3]. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline __attribute__((always_inline)) v4f select4(v4i mask, v4f yes, v4f no)
{
    return (v4f)(((v4i)yes & mask) | ((v4i)no & ~mask));
}

static inline __attribute__((always_inline)) v4f exp4(v4f x)
{
    const v4f lo = {-87.3f, -87.3f, -87.3f, -87.3f}, hi = {88.3f, 88.3f, 88.3f, 88.3f};
    x = select4(x < lo, lo, x);
    x = select4(x > hi, hi, x);
    v4f n = x * 1.44269504f + 12582912.0f; /* adding 1.5 * 2^23 rounds to an integer */
    n -= 12582912.0f;
    v4f r = x - n * 0.693145752f; /* ln2 split in a short and a small part */
    r -= n * 1.42860677e-6f;
    v4f p = r * (1.0f / 5040) + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v4i bits = (__builtin_convertvector(n, v4i) + 127) << 23;
    return p * (v4f)bits;
}

/* x[i] = exp(x[i] - sub) for n elements; returns their sum. */
static float exp_shifted(float *x, uint32_t n, float sub)
{
    v4f sum4 = {0};
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        v4f v;
        memcpy(&v, x + i, sizeof v);
        v = exp4(v - sub);
        memcpy(x + i, &v, sizeof v);
        sum4 += v;
    }
    float sum = 0;
    for (int k = 0; k < 4; k++)
        sum += sum4[k];
    if (i < n) { /* the tail through the same lanes, so each value is the same */
        v4f v = {0};
        memcpy(&v, x + i, (n - i) * sizeof(float));
        v = exp4(v - sub);
        memcpy(x + i, &v, (n - i) * sizeof(float));
        for (; i < n; i++)
            sum += x[i];
    }
    return sum;
}

/* x[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u for n elements. */
static void swiglu(float *g, const float *u, uint32_t n)
{
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        v4f a, b;
        memcpy(&a, g + i, sizeof a);
        memcpy(&b, u + i, sizeof b);
        a = a / (1.0f + exp4(-a)) * b;
        memcpy(g + i, &a, sizeof a);
    }
    if (i < n) {
        v4f a = {0}, b = {0};
        memcpy(&a, g + i, (n - i) * sizeof(float));
        memcpy(&b, u + i, (n - i) * sizeof(float));
        a = a / (1.0f + exp4(-a)) * b;
        memcpy(g + i, &a, (n - i) * sizeof(float));
    }
}

/* max of x[0..n), n >= 1; two accumulators halve the dependency chain */
static float max_of(const float *x, uint32_t n)
{
    float max = x[0];
    uint32_t i = 0;
    if (n >= 8) {
        v4f a, b;
        memcpy(&a, x, sizeof a);
        memcpy(&b, x + 4, sizeof b);
        for (i = 8; i + 8 <= n; i += 8) {
            v4f u, v;
            memcpy(&u, x + i, sizeof u);
            memcpy(&v, x + i + 4, sizeof v);
            a = select4(u > a, u, a);
            b = select4(v > b, v, b);
        }
        a = select4(b > a, b, a);
        for (int k = 0; k < 4; k++)
            max = a[k] > max ? a[k] : max;
    }
    for (; i < n; i++)
        max = x[i] > max ? x[i] : max;
    return max;
}

typedef struct attention_job {
    session *s;
    uint32_t layer, n; /* the batch's n queries sit at cache slots n_past.. */
    uint32_t n_chunks; /* of QUERY_CHUNK queries */
} attention_job;

/* Adds a chunk's probabilities (rows of unnormalized scores over width keys,
 * zero past each row's last visible key) to the thread's sums for head h,
 * and keeps the batch's last row for head h. */
static void observe_chunk(const attention_job *j, uint32_t h, uint32_t thread, uint32_t q0,
                          uint32_t rows, const float *scores, uint32_t width, const float *sums)
{
    const session *s = j->s;
    size_t per_head = s->capacity;
    float *acc = s->observe.per_thread + ((size_t)thread * s->m->cfg.n_head + h) * per_head;
    for (uint32_t r = 0; r < rows; r++) {
        const float *row = scores + (size_t)r * width;
        float inv = 1.0f / sums[r];
        for (uint32_t t = 0; t < width; t++)
            acc[t] += row[t] * inv;
        if (q0 + r + 1 == j->n) {
            float *last = s->observe.head_last + h * per_head;
            for (uint32_t t = 0; t < width; t++)
                last[t] = row[t] * inv;
        }
    }
}

/* Moves the layer's observed sums (keys [0, width)) into the caller's arrays
 * and clears them for the next layer. */
static void observe_layer(session *s, uint32_t layer, uint32_t width)
{
    const model_config *c = &s->m->cfg;
    uint32_t group = c->n_head / c->n_kv_head, stride = s->observe.stride;
    for (uint32_t g = 0; g < c->n_kv_head; g++) {
        size_t at = ((size_t)layer * c->n_kv_head + g) * stride;
        float *acc = s->observe.acc + at, *last = s->observe.last ? s->observe.last + at : NULL;
        if (last)
            memset(last, 0, (size_t)stride * sizeof(float));
        for (uint32_t h = g * group; h < (g + 1) * group; h++) {
            for (uint32_t t = 0; t < s->n_threads; t++) {
                float *sum = s->observe.per_thread + ((size_t)t * c->n_head + h) * s->capacity;
                for (uint32_t k = 0; k < width; k++)
                    acc[k] += sum[k];
                memset(sum, 0, (size_t)width * sizeof(float));
            }
            for (uint32_t k = 0; last && k < width; k++)
                last[k] += s->observe.head_last[(size_t)h * s->capacity + k];
        }
    }
}

/* One query head over one chunk of queries: scores = scale Q K^T against
 * every key the chunk's last query may see, causal softmax left
 * unnormalized, output = scores V, then each row divided by its sum. */
static void attend(const attention_job *j, uint32_t item, uint32_t thread, float *scores)
{
    session *s = j->s;
    const model_config *c = &s->m->cfg;
    uint32_t h = item / j->n_chunks, q0 = item % j->n_chunks * QUERY_CHUNK;
    uint32_t hd = c->head_dim, kv_head = h / (c->n_head / c->n_kv_head);
    uint32_t ld_qkv = qkv_dim(c), ld_att = q_dim(c);
    uint32_t rows = j->n - q0 < QUERY_CHUNK ? j->n - q0 : QUERY_CHUNK;
    uint32_t width = s->n_past + q0 + rows; /* keys the chunk's last query sees */
    size_t head_at = (size_t)kv_head * s->capacity * hd;
    const float *k = session_cache_layer(s, KVTC_KEY, j->layer) + head_at;
    const float *v = session_cache_layer(s, KVTC_VALUE, j->layer) + head_at;
    float *out = s->att + (size_t)q0 * ld_att + h * hd;
    float sums[QUERY_CHUNK];
    matmul_bt(rows, width, hd, 1.0f / sqrtf((float)hd), s->qkv + (size_t)q0 * ld_qkv + h * hd,
              ld_qkv, k, hd, 0.0f, scores, width);
    for (uint32_t r = 0; r < rows; r++) {
        float *row = scores + (size_t)r * width;
        uint32_t visible = s->n_past + q0 + r + 1;
        sums[r] = exp_shifted(row, visible, max_of(row, visible));
        memset(row + visible, 0, (size_t)(width - visible) * sizeof(float));
    }
    if (s->observe.acc)
        observe_chunk(j, h, thread, q0, rows, scores, width, sums);
    matmul(rows, hd, width, scores, width, v, hd, out, ld_att);
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t d = 0; d < hd; d++)
            out[(size_t)r * ld_att + d] /= sums[r];
}

/* Worker t takes items t, t + n_threads, ... with score buffer t. */
static kvtc_status attention_worker(void *user, uint32_t t, kvtc_error *err)
{
    (void)err;
    const attention_job *j = user;
    session *s = j->s;
    float *scores = s->scores + (size_t)t * QUERY_CHUNK * s->capacity;
    for (uint32_t item = t; item < s->m->cfg.n_head * j->n_chunks; item += s->n_threads)
        attend(j, item, t, scores);
    return KVTC_OK;
}

/* Grouped-query causal attention of the batch's n queries (their keys and
 * values already in the cache) into s->att. Items run on n_threads threads,
 * each with single-threaded BLAS. */
static kvtc_status attention(session *s, uint32_t layer, uint32_t n, kvtc_error *err)
{
    attention_job job = {s, layer, n, (n + QUERY_CHUNK - 1) / QUERY_CHUNK};
    openblas_set_num_threads(1);
    kvtc_status st = kvtc_parallel_for(s->n_threads, s->n_threads, attention_worker, &job, err);
    openblas_set_num_threads((int)s->n_threads);
    if (st == KVTC_OK && s->observe.acc)
        observe_layer(s, layer, s->n_past + n);
    return st;
}

kvtc_status session_observe_attention(session *s, float *acc, float *last, uint32_t stride,
                                      kvtc_error *err)
{
    size_t per_head = (size_t)s->m->cfg.n_head * s->capacity;
    if (acc && !s->observe.per_thread) {
        s->observe.per_thread = kvtc_calloc((size_t)s->n_threads * per_head, sizeof(float));
        s->observe.head_last = kvtc_calloc(per_head, sizeof(float));
        if (!s->observe.per_thread || !s->observe.head_last) {
            kvtc_free(s->observe.per_thread);
            kvtc_free(s->observe.head_last);
            s->observe.per_thread = s->observe.head_last = NULL;
            return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for attention scores");
        }
    }
    s->observe.acc = acc;
    s->observe.last = acc ? last : NULL;
    s->observe.stride = acc ? stride : 0;
    return KVTC_OK;
}

/* ---- one batch ------------------------------------------------------------------ */

/* Rotates the batch's query and key heads and appends keys and values to the
 * layer's cache at slots n_past... */
static void rope_and_store(session *s, uint32_t layer, uint32_t n)
{
    const model_config *c = &s->m->cfg;
    kvtc_model_shape shape = model_kv_shape(s->m);
    uint32_t hd = c->head_dim, half = c->rope_dims / 2, ld = qkv_dim(c);
    float *keys = session_cache_layer(s, KVTC_KEY, layer);
    float *values = session_cache_layer(s, KVTC_VALUE, layer);
    for (uint32_t i = 0; i < n; i++) {
        float *q = s->qkv + (size_t)i * ld, *k = q + q_dim(c), *v = k + kv_dim(c);
        const float *cos_t = s->rope_cos + (size_t)i * half;
        const float *sin_t = s->rope_sin + (size_t)i * half;
        for (uint32_t h = 0; h < c->n_head; h++)
            kvtc_rope_apply(&shape, q + h * hd, cos_t, sin_t, false);
        for (uint32_t h = 0; h < c->n_kv_head; h++) {
            kvtc_rope_apply(&shape, k + h * hd, cos_t, sin_t, false);
            size_t slot = ((size_t)h * s->capacity + s->n_past + i) * hd;
            memcpy(keys + slot, k + h * hd, hd * sizeof(float));
            memcpy(values + slot, v + h * hd, hd * sizeof(float));
        }
    }
}

/* Runs n <= BATCH tokens through every layer; leaves the final residual
 * stream in s->x and advances n_past. */
static kvtc_status forward_batch(session *s, const int32_t *tokens, uint32_t n,
                                 kvtc_error *err)
{
    const model *m = s->m;
    const model_config *c = &m->cfg;
    uint32_t dim = c->dim, hid = c->hidden_dim, ld = qkv_dim(c);
    kvtc_model_shape shape = model_kv_shape(m);
    size_t half = c->rope_dims / 2;
    for (uint32_t i = 0; i < n; i++) {
        weight_row_f32(&m->token_embd, (uint32_t)tokens[i], s->x + (size_t)i * dim);
        kvtc_rope_angles(&shape, s->pos0 + s->n_past + i, s->rope_cos + i * half,
                         s->rope_sin + i * half);
    }
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const model_layer *L = &m->layers[l];
        rmsnorm(s->xn, s->x, L->attn_norm, n, dim, c->norm_eps);
        kvtc_status st = project(s, &L->wqkv, n, s->xn, dim, 0.0f, s->qkv, ld, err);
        if (st != KVTC_OK)
            return st; /* n_past unchanged: the slots written are simply reused */
        if (L->bqkv)
            for (uint32_t i = 0; i < n; i++)
                for (uint32_t j = 0; j < ld; j++)
                    s->qkv[(size_t)i * ld + j] += L->bqkv[j];
        rope_and_store(s, l, n);
        if ((st = attention(s, l, n, err)) != KVTC_OK ||
            (st = project(s, &L->wo, n, s->att, q_dim(c), 1.0f, s->x, dim, err)) != KVTC_OK)
            return st;
        rmsnorm(s->xn, s->x, L->ffn_norm, n, dim, c->norm_eps);
        st = project(s, &L->w_gate_up, n, s->xn, dim, 0.0f, s->ffn, 2 * hid, err);
        if (st != KVTC_OK)
            return st;
        for (uint32_t i = 0; i < n; i++)
            swiglu(s->ffn + (size_t)i * 2 * hid, s->ffn + (size_t)i * 2 * hid + hid, hid);
        if ((st = project(s, &L->w_down, n, s->ffn, 2 * hid, 1.0f, s->x, dim, err)) != KVTC_OK)
            return st;
    }
    s->n_past += n;
    return KVTC_OK;
}

/* Logits of `rows` rows of the final residual stream. */
static kvtc_status output_logits(session *s, const float *x, uint32_t rows, float *logits,
                                 kvtc_error *err)
{
    const model *m = s->m;
    uint32_t dim = m->cfg.dim;
    rmsnorm(s->xn, x, m->output_norm, rows, dim, m->cfg.norm_eps);
    return project(s, &m->output, rows, s->xn, dim, 0.0f, logits, m->cfg.vocab_size, err);
}

kvtc_status session_forward(session *s, const int32_t *tokens, uint32_t n, float *logits,
                            bool all_logits, kvtc_error *err)
{
    const model_config *c = &s->m->cfg;
    if (n == 0)
        return kvtc_fail(err, KVTC_E_INVALID, "no tokens to run");
    if (s->import.active)
        return kvtc_fail(err, KVTC_E_INVALID, "a cache import is in progress");
    if (n > s->capacity - s->n_past)
        return kvtc_fail(err, KVTC_E_INVALID,
                         "context full: %u tokens held, %u more do not fit in %u", s->n_past, n,
                         s->capacity);
    if (s->observe.acc && (s->n_past > s->observe.stride || n > s->observe.stride - s->n_past))
        return kvtc_fail(err, KVTC_E_INVALID,
                         "attention observed for %u slots: %u tokens held, %u more do not fit",
                         s->observe.stride, s->n_past, n);
    for (uint32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= c->vocab_size)
            return kvtc_fail(err, KVTC_E_INVALID, "token id %d out of range [0, %u)", tokens[i],
                             c->vocab_size);
    openblas_set_num_threads((int)s->n_threads);
    for (uint32_t done = 0; done < n;) {
        uint32_t b = n - done < BATCH ? n - done : BATCH;
        kvtc_status st = forward_batch(s, tokens + done, b, err);
        if (st != KVTC_OK)
            return st;
        if (logits && all_logits)
            st = output_logits(s, s->x, b, logits + (size_t)done * c->vocab_size, err);
        done += b;
        if (st == KVTC_OK && logits && !all_logits && done == n)
            st = output_logits(s, s->x + (size_t)(b - 1) * c->dim, 1, logits, err);
        if (st != KVTC_OK)
            return st;
    }
    return KVTC_OK;
}
