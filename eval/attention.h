/* Accumulated attention, the score H2O evicts by (and the last query's, TOVA's): for every layer and KV
 * head, the attention probability each context token received, summed over
 * all later queries of the context and over the query heads that share the
 * KV head.
 *
 * The engine keeps no queries, so the probe runs the context once more through
 * a widened copy of the model that stores them: extra KV heads whose key and
 * value projections are the model's query projections. Their outputs are
 * never used (the extra query heads that read them have zero weights in and
 * out), so every real layer computes exactly what the model computes, and the
 * stored "keys"/"values" of the extra heads are the real queries (keys come
 * out already rotated by RoPE; value slots are rotated here). */
#ifndef KVTC_EVAL_ATTENTION_H
#define KVTC_EVAL_ATTENTION_H

#include "kvtc.h"
#include "model.h"

#include <stdint.h>

typedef struct attention_probe attention_probe;

/* A probe for contexts of up to `capacity` tokens. The model must outlive it. */
kvtc_status attention_probe_create(const model *m, uint32_t capacity, uint32_t n_threads,
                                   attention_probe **out, kvtc_error *err);
void attention_probe_free(attention_probe *p);

/* Runs tokens[0..n) from position 0 and writes acc[n_layer][n_kv_head][n]:
 * the attention token j received, summed over queries i >= j and the query
 * heads of the KV head; and, when last is not NULL, last[n_layer][n_kv_head][n]:
 * the attention of the last query alone (TOVA's score), summed the same way. */
kvtc_status attention_accumulate(attention_probe *p, const int32_t *tokens, uint32_t n,
                                 float *acc, float *last, kvtc_error *err);

#endif /* KVTC_EVAL_ATTENTION_H */
