/* A session: one sequence being run through a model, with its KV cache.
 *
 * The cache holds, per layer, keys (post-RoPE) and values laid out
 * [n_kv_head][capacity][head_dim] in f32, the layout of a kvtc_cache. Slot t
 * holds the token at position pos0 + t; slots [0, n_past) are filled. */
#ifndef KVTC_ENGINE_SESSION_H
#define KVTC_ENGINE_SESSION_H

#include "kvtc.h"
#include "model.h"

#include <stdbool.h>
#include <stdint.h>

/* Fields are for the engine's own files (forward.c, kv_io.c); other code
 * uses the functions below. */
typedef struct session {
    const model *m;
    uint32_t capacity, n_past, n_threads;
    int64_t pos0;
    float *keys, *values; /* [n_layer][n_kv_head][capacity][head_dim] */
    /* scratch for one batch of tokens */
    float *x;                  /* [batch][dim] residual stream */
    float *xn;                 /* [batch][dim] normalized */
    float *qkv;                /* [batch][q_dim + 2 kv_dim] */
    float *att;                /* [batch][q_dim] attention output */
    float *ffn;                /* [batch][2 hidden] gate and up */
    float *scores;             /* [n_threads][query chunk][capacity] */
    float *rope_cos, *rope_sin; /* [batch][rope_dims / 2] */
    float *panel;              /* [WEIGHT_PANEL_FLOATS]: dequantized weight tiles */
    /* attention observed for eviction scores (session_observe_attention) */
    struct {
        float *acc, *last;     /* the caller's [n_layer][n_kv_head][stride], or NULL */
        uint32_t stride;
        float *per_thread;     /* [n_threads][n_head][capacity]: this layer's sums */
        float *head_last;      /* [n_head][capacity]: this batch's last query */
    } observe;
    /* layer-by-layer import in progress */
    struct {
        bool active;
        kvtc_dtype dtype;
        uint32_t n_tokens, next_layer;
        int64_t pos0;
        kvtc_error err;
    } import;
} session;

/* A session over `m` (which must outlive it) holding up to `capacity` tokens;
 * n_threads (0 = 1, at most 64) is used for the matrix products and the
 * attention. OpenBLAS's thread count is process-wide: each forward sets it. */
kvtc_status session_create(const model *m, uint32_t capacity, uint32_t n_threads, session **out,
                           kvtc_error *err);
void session_free(session *s);

const model *session_model(const session *s);
uint32_t session_n_past(const session *s);
uint32_t session_capacity(const session *s);
int64_t session_pos0(const session *s);
/* Forgets every token: the next forward starts at position 0. */
void session_reset(session *s);
/* Keeps the first n tokens (n <= n_past) and forgets the rest: the next
 * forward continues after token n, as if the others had never run. */
void session_truncate(session *s, uint32_t n);
/* Layer `layer`'s keys or values, [n_kv_head][capacity][head_dim]. */
float *session_cache_layer(const session *s, kvtc_kind kind, uint32_t layer);

/* Runs tokens[0..n) at positions pos0 + n_past + i, appending their keys and
 * values to the cache (prefill when n > 1, decode when n == 1). Long inputs
 * are processed in batches; the same call on the same cache gives the same
 * bits, while splitting tokens differently over calls changes results only
 * by float rounding. logits may be NULL; else it receives
 * vocab_size floats for the last token, or n * vocab_size (row i for token i)
 * when all_logits. Fails without running anything when a token id is out of
 * range or the cache would overflow. */
kvtc_status session_forward(session *s, const int32_t *tokens, uint32_t n, float *logits,
                            bool all_logits, kvtc_error *err);

/* Observing attention, the scores H2O and TOVA evict by. While on, every
 * forward adds to acc[layer][kv_head][slot] (slot < stride) the attention
 * probability cache slot `slot` receives from each query it runs, summed over
 * the query heads that share the KV head, and writes to last (the same
 * layout; may be NULL) the probabilities the last query it ran gave each slot
 * (zero past that query). The caller zeroes acc. Forwards then fail when
 * they would fill slots at or beyond stride. acc NULL turns observing off. */
kvtc_status session_observe_attention(session *s, float *acc, float *last, uint32_t stride,
                                      kvtc_error *err);

/* ---- KV cache hooks (kv_io.c) ------------------------------------------- */

/* A copy of the cache, tokens [0, n_past), in dtype (F32 keeps it bit-exact),
 * with the model's shape, pos0 and name. */
kvtc_status session_export_cache(const session *s, kvtc_dtype dtype, kvtc_cache **out,
                                 kvtc_error *err);
/* Replaces the session's cache with `c` (shape must match the model's):
 * afterwards pos0 = c's pos0 and n_past = c's n_tokens, so the next forward
 * continues right after the restored tokens. */
kvtc_status session_import_cache(session *s, const kvtc_cache *c, kvtc_error *err);

/* Layer-by-layer import, for kvtc_decompress_layers: begin with the dtype,
 * token count and first position of what will arrive, pass
 * session_import_layer and the session as the kvtc_layer_fn and its user,
 * then finish, which checks that every layer arrived and sets n_past. Until
 * then the session holds no tokens. */
kvtc_status session_begin_import(session *s, kvtc_dtype dtype, uint32_t n_tokens, int64_t pos0,
                                 kvtc_error *err);
/* A kvtc_layer_fn: key and value are [n_kv_head][n_tokens][head_dim] of the
 * begun dtype. Returns non-zero (and finish reports why) on a layer out of
 * order or an import not begun. */
int session_import_layer(void *session, uint32_t layer, const void *key, const void *value);
kvtc_status session_finish_import(session *s, kvtc_error *err);

/* ---- reading logits (logits.c) ------------------------------------------- */

/* The index of the largest logit (the first of equals): the greedy choice. */
int32_t logits_argmax(const float *logits, uint32_t vocab);
/* -log softmax(logits)[token], computed in double. */
double logits_nll(const float *logits, uint32_t vocab, int32_t token);

#endif /* KVTC_ENGINE_SESSION_H */
