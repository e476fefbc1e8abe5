/* Accumulated attention through a widened copy of the model (see attention.h). */
#include "attention.h"

#include "kvtc_internal.h"
#include "session.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define QUERY_CHUNK 128u

struct attention_probe {
    model wide;            /* the model's weights, with widened attention layers */
    model_layer *layers;   /* wide.layers, owned */
    float *weights;        /* every widened matrix, one allocation */
    uint32_t n_head, n_kv_head; /* the real model's */
    uint32_t extra;        /* extra KV heads: slots for n_head queries, two per head */
    uint32_t capacity, n_threads;
    session *s;
    float *scores;         /* [n_head][QUERY_CHUNK][capacity] */
    float *head_acc;       /* [n_head][capacity] */
    float *head_last;      /* [n_head][capacity]: the last query's probabilities */
    float *rotated;        /* [n_head][capacity][head_dim]: value-slot queries, rotated */
};

/* Copies `rows` rows of `dim` from src, or zeros when src is NULL. */
static float *put_rows(float *dst, const float *src, size_t rows, size_t dim)
{
    if (src)
        memcpy(dst, src, rows * dim * sizeof(float));
    else
        memset(dst, 0, rows * dim * sizeof(float));
    return dst + rows * dim;
}

/* Widened projection [(n_head' + 2 n_kv') hd][cols] (cols 1 for a bias):
 * real queries, zero queries for the extra heads; real keys, then the
 * queries of heads [0, extra) as extra keys; real values, then the queries of
 * heads [extra, n_head) as extra values, zero-padded. */
static float *widen_qkv(float *dst, const float *src, const model_config *c, uint32_t extra,
                        size_t cols)
{
    size_t hd = c->head_dim, group = c->n_head / c->n_kv_head;
    size_t head = hd * cols, nq = c->n_head, nkv = c->n_kv_head;
    const float *q = src, *k = src + nq * head, *v = k + nkv * head;
    dst = put_rows(dst, q, nq * hd, cols);
    dst = put_rows(dst, NULL, (group * (nkv + extra) - nq) * hd, cols);
    dst = put_rows(dst, k, nkv * hd, cols);
    dst = put_rows(dst, q, extra * hd, cols);
    dst = put_rows(dst, v, nkv * hd, cols);
    dst = put_rows(dst, q + extra * head, (nq - extra) * hd, cols);
    return put_rows(dst, NULL, (2 * extra - nq) * hd, cols);
}

kvtc_status attention_probe_create(const model *m, uint32_t capacity, uint32_t n_threads,
                                   attention_probe **out, kvtc_error *err)
{
    *out = NULL;
    const model_config *c = &m->cfg;
    attention_probe *p = kvtc_calloc(1, sizeof *p);
    if (!p)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for the attention probe");
    p->wide = *m;
    p->n_head = c->n_head;
    p->n_kv_head = c->n_kv_head;
    p->extra = (c->n_head + 1) / 2;
    p->capacity = capacity;
    p->n_threads = n_threads ? n_threads : 1;
    model_config *w = &p->wide.cfg;
    uint32_t group = c->n_head / c->n_kv_head;
    w->n_kv_head = c->n_kv_head + p->extra;
    w->n_head = group * w->n_kv_head;
    size_t hd = c->head_dim, dim = c->dim;
    size_t qkv_rows = (size_t)(w->n_head + 2 * w->n_kv_head) * hd;
    size_t per_layer = qkv_rows * dim + qkv_rows + dim * w->n_head * hd;
    p->layers = kvtc_malloc_array(c->n_layer, sizeof *p->layers);
    p->weights = kvtc_malloc_array(per_layer, (size_t)c->n_layer * sizeof(float));
    p->scores = kvtc_malloc_array((size_t)c->n_head * QUERY_CHUNK, (size_t)capacity * sizeof(float));
    p->head_acc = kvtc_malloc_array((size_t)c->n_head * capacity, sizeof(float));
    p->head_last = kvtc_malloc_array((size_t)c->n_head * capacity, sizeof(float));
    p->rotated = kvtc_malloc_array((size_t)c->n_head * capacity, hd * sizeof(float));
    if (!p->layers || !p->weights || !p->scores || !p->head_acc || !p->head_last ||
        !p->rotated) {
        attention_probe_free(p);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for the attention probe");
    }
    /* the real layer's projections in f32, whatever blocks the model keeps */
    size_t real_qkv = (size_t)(c->n_head + 2 * c->n_kv_head) * hd, real_q = c->n_head * hd;
    float *qkv_f32 = kvtc_malloc_array(real_qkv * dim, sizeof(float));
    float *wo_f32 = kvtc_malloc_array(dim * real_q, sizeof(float));
    if (!qkv_f32 || !wo_f32) {
        kvtc_free(qkv_f32);
        kvtc_free(wo_f32);
        attention_probe_free(p);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for the attention probe");
    }
    float *dst = p->weights;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const model_layer *src = &m->layers[l];
        model_layer *L = &p->layers[l];
        *L = *src;
        weight_to_f32(&src->wqkv, qkv_f32);
        weight_to_f32(&src->wo, wo_f32);
        L->wqkv = weight_f32_matrix(dst, (uint32_t)qkv_rows, (uint32_t)dim);
        dst = widen_qkv(dst, qkv_f32, c, p->extra, dim);
        L->bqkv = src->bqkv ? dst : NULL;
        dst = src->bqkv ? widen_qkv(dst, src->bqkv, c, p->extra, 1) : dst + qkv_rows;
        /* output projection: real heads' columns, zero for the extra heads */
        L->wo = weight_f32_matrix(dst, (uint32_t)dim, w->n_head * (uint32_t)hd);
        for (size_t r = 0; r < dim; r++) {
            dst = put_rows(dst, wo_f32 + r * real_q, 1, real_q);
            dst = put_rows(dst, NULL, 1, (size_t)(w->n_head - c->n_head) * hd);
        }
    }
    kvtc_free(qkv_f32);
    kvtc_free(wo_f32);
    p->wide.layers = p->layers;
    kvtc_status st = session_create(&p->wide, capacity, p->n_threads, &p->s, err);
    if (st != KVTC_OK) {
        attention_probe_free(p);
        return st;
    }
    *out = p;
    return KVTC_OK;
}

void attention_probe_free(attention_probe *p)
{
    if (!p)
        return;
    session_free(p->s);
    kvtc_free(p->layers);
    kvtc_free(p->weights);
    kvtc_free(p->scores);
    kvtc_free(p->head_last);
    kvtc_free(p->head_acc);
    kvtc_free(p->rotated);
    kvtc_free(p);
}

typedef struct head_job {
    attention_probe *p;
    uint32_t layer, n;
} head_job;

/* Query head h's probabilities over the layer's keys, summed per key. Its
 * queries sit in extra KV head h's key slot (h < extra) or in extra KV head
 * (h - extra)'s value slot. */
static kvtc_status accumulate_head(void *user, uint32_t h, kvtc_error *err)
{
    (void)err;
    const head_job *j = user;
    attention_probe *p = j->p;
    uint32_t hd = p->wide.cfg.head_dim, n = j->n, cap = p->capacity;
    uint32_t group = p->n_head / p->n_kv_head, extra = p->extra;
    const float *keys = session_cache_layer(p->s, KVTC_KEY, j->layer);
    const float *values = session_cache_layer(p->s, KVTC_VALUE, j->layer);
    const float *k = keys + (size_t)(h / group) * cap * hd;
    const float *q = keys + (size_t)(p->n_kv_head + h) * cap * hd;
    if (h >= extra) {
        /* value slots hold the query before RoPE: rotate it at its position */
        float *rot = p->rotated + (size_t)h * cap * hd;
        kvtc_model_shape shape = model_kv_shape(&p->wide);
        memcpy(rot, values + (size_t)(p->n_kv_head + h - extra) * cap * hd,
               (size_t)n * hd * sizeof(float));
        for (uint32_t i = 0; i < n; i++)
            kvtc_rope_rotate(&shape, rot + (size_t)i * hd, i, false);
        q = rot;
    }
    float *acc = p->head_acc + (size_t)h * cap, *scores = p->scores + (size_t)h * QUERY_CHUNK * cap;
    float *last = p->head_last + (size_t)h * cap;
    memset(acc, 0, (size_t)n * sizeof(float));
    float scale = 1.0f / sqrtf((float)hd);
    for (uint32_t q0 = 0; q0 < n; q0 += QUERY_CHUNK) {
        uint32_t rows = n - q0 < QUERY_CHUNK ? n - q0 : QUERY_CHUNK, width = q0 + rows;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)width, (int)hd,
                    scale, q + (size_t)q0 * hd, (int)hd, k, (int)hd, 0.0f, scores, (int)width);
        for (uint32_t r = 0; r < rows; r++) {
            float *row = scores + (size_t)r * width;
            uint32_t visible = q0 + r + 1;
            float max = row[0], sum = 0.0f;
            for (uint32_t t = 1; t < visible; t++)
                max = row[t] > max ? row[t] : max;
            for (uint32_t t = 0; t < visible; t++)
                sum += row[t] = expf(row[t] - max);
            float inv = 1.0f / sum;
            for (uint32_t t = 0; t < visible; t++)
                acc[t] += row[t] * inv;
            if (visible == n)
                for (uint32_t t = 0; t < n; t++)
                    last[t] = row[t] * inv;
        }
    }
    return KVTC_OK;
}

kvtc_status attention_accumulate(attention_probe *p, const int32_t *tokens, uint32_t n,
                                 float *acc, float *last, kvtc_error *err)
{
    if (n > p->capacity)
        return kvtc_fail(err, KVTC_E_INVALID, "%u tokens exceed the probe's %u", n, p->capacity);
    session_reset(p->s);
    kvtc_status st = session_forward(p->s, tokens, n, NULL, false, err);
    if (st != KVTC_OK)
        return st;
    uint32_t group = p->n_head / p->n_kv_head;
    openblas_set_num_threads(1); /* the heads run in parallel instead */
    for (uint32_t l = 0; l < p->wide.cfg.n_layer; l++) {
        head_job job = {p, l, n};
        if ((st = kvtc_parallel_for(p->n_head, p->n_threads, accumulate_head, &job, err)) !=
            KVTC_OK)
            break;
        for (uint32_t g = 0; g < p->n_kv_head; g++) {
            float *dst = acc + ((size_t)l * p->n_kv_head + g) * n;
            memset(dst, 0, (size_t)n * sizeof(float));
            for (uint32_t h = g * group; h < (g + 1) * group; h++)
                for (uint32_t t = 0; t < n; t++)
                    dst[t] += p->head_acc[(size_t)h * p->capacity + t];
            if (!last)
                continue;
            float *lst = last + ((size_t)l * p->n_kv_head + g) * n;
            memset(lst, 0, (size_t)n * sizeof(float));
            for (uint32_t h = g * group; h < (g + 1) * group; h++)
                for (uint32_t t = 0; t < n; t++)
                    lst[t] += p->head_last[(size_t)h * p->capacity + t];
        }
    }
    openblas_set_num_threads((int)p->n_threads);
    return st;
}
