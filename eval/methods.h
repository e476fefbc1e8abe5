/* The methods the accuracy harness compares: each one treats the tokens
 * [sinks, n - window) of a KV cache the way it would store them, puts back
 * what it would restore, and reports the bytes it actually stored for them.
 *
 * Realized ratio, one definition for every method: fp16 bytes of the treated
 * tokens (2 bytes x 2 kinds x p features x tokens) / bytes stored for them,
 * metadata (scales, shifts, indices, headers) included. Sinks and window are
 * never touched by any method. */
#ifndef KVTC_EVAL_METHODS_H
#define KVTC_EVAL_METHODS_H

#include "kvtc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum eval_method_id {
    EVAL_EXACT = 0, /* untouched: ratio 1 by definition, bits unchanged */
    EVAL_KVTC,      /* kvtc_compress + kvtc_decompress at a target ratio */
    EVAL_FP8,       /* e4m3 per element, fp16 scale per token and head */
    EVAL_INT8,      /* symmetric int8, fp16 scale per token and head */
    EVAL_INT4,      /* symmetric int4, fp16 scale per 32 elements (q4_0-like) */
    EVAL_KIVI2,     /* KIVI 2-bit: keys per channel, values per token, group 32 */
    EVAL_H2O,       /* heavy-hitter eviction per layer and KV head at a target ratio */
    EVAL_ZSTD,      /* lossless zstd level 3 on the fp16 bytes */
    EVAL_H2O_SHARED, /* eviction keeping one set of tokens for every layer and head,
                        ranked by their attention summed over all of them */
    EVAL_TOVA,       /* eviction by the last query's attention, one set per layer
                        (summed over its heads), at a target ratio */
    EVAL_GEAR,       /* GEAR-style: int4 (asymmetric, groups of 32 per token) plus a
                        rank-4 fp16 factorization of the quantization residual plus
                        the largest 2% of values exact (fp16 and a 4-byte index) */
    EVAL_XKV,        /* xKV: per kind, groups of 4 adjacent layers as one matrix (keys
                        with RoPE undone), the context's own truncated SVD in fp16 at
                        the rank that realizes a target ratio */
    EVAL_EVICT_KVTC, /* "h2o:E+kvtc:R" or "h2o-shared:E+kvtc:R": eviction keeping
                        1/E of the treated tokens, then kvtc on what is kept */
    EVAL_METHOD_COUNT
} eval_method_id;

/* KIVI's group length and its own full-precision window of recent tokens
 * (inside the treated range, stored as fp16 and counted). */
#define EVAL_KIVI_GROUP 32u
#define EVAL_KIVI_RESIDUAL 32u
/* int4 group length (llama.cpp q4_0 uses 32). */
#define EVAL_INT4_GROUP 32u
#define EVAL_ZSTD_LEVEL 3
/* GEAR's residual rank and outlier fraction (the paper's defaults), xKV's layers per group. */
#define EVAL_GEAR_RANK 4u
#define EVAL_GEAR_OUTLIERS 0.02
#define EVAL_XKV_GROUP 4u

typedef struct eval_method {
    eval_method_id id;
    double target_ratio; /* kvtc and h2o: the requested ratio (> 1); 0 for the others */
    /* kvtc: the targets of keys and values; both target_ratio unless split
     * ("kvtc:K/V", whose target_ratio 2 / (1/K + 1/V) spends the same bytes) */
    double k_ratio, v_ratio;
    /* evict+kvtc: the eviction (EVAL_H2O, EVAL_H2O_SHARED or EVAL_TOVA) and its token
     * ratio E; target_ratio is then E times kvtc's */
    eval_method_id evict;
    double evict_ratio;
} eval_method;

/* "exact", "kvtc", "fp8", "int8", "int4", "kivi2", "h2o", "zstd", "h2o-shared",
 * "tova", "gear", "xkv", "evict+kvtc". */
const char *eval_method_name(eval_method_id id);
/* True for the methods that take a target ratio (kvtc, xkv, the evictions, evict+kvtc). */
bool eval_method_has_ratio(eval_method_id id);
/* True for the methods that remove tokens (the evictions, evict+kvtc): they
 * need the accumulated attention, and have no per-token error. */
bool eval_method_evicts(eval_method_id id);
/* Parses "NAME", "NAME:RATIO" (e.g. "kvtc:16", "h2o:8") or, for kvtc, a
 * budget split between keys and values "kvtc:K/V" (e.g. "kvtc:32/16"); a
 * ratio method without one gets default_ratio; or a composition
 * "EVICTION:E+kvtc[:R]" (e.g. "h2o:2+kvtc:16"). Fails on an unknown name, a
 * ratio given to a fixed-rate method, or a ratio <= 1. */
kvtc_status eval_method_parse(const char *text, double default_ratio, eval_method *out,
                              kvtc_error *err);
/* "kvtc:16", "kvtc:32/16", "fp8", ... into buf. */
void eval_method_label(const eval_method *m, char *buf, size_t cap);

typedef struct eval_treat_args {
    uint32_t sinks, window;       /* tokens left alone at each end */
    const kvtc_calibration *cal;  /* kvtc: its sinks and window must equal the above */
    /* h2o: accumulated attention each token received, [n_layer][n_kv_head][n_tokens]
     * over the cache's tokens (summed over the query heads sharing the KV head). */
    const float *attention;
    uint32_t n_threads;           /* kvtc: 0 = 1 */
    const float *last_attention;  /* tova: the last query's, laid out as attention */
} eval_treat_args;

typedef struct eval_treat_result {
    uint32_t treated_tokens; /* n - sinks - window (0 when the cache is shorter) */
    uint64_t fp16_bytes;     /* what the treated tokens take in fp16 */
    uint64_t stored_bytes;   /* what the method stored for them */
    double ratio;            /* fp16_bytes / stored_bytes; 1 when nothing was treated */
    uint32_t kept_tokens;    /* h2o: tokens kept per layer and KV head; else treated_tokens */
} eval_treat_result;

/* Treats tokens [sinks, n - window) of *cache through method m. Quantizers
 * work in place; evictions replace *cache with a shorter one (sinks, the kept
 * tokens of each head in order, window) whose pos0 is moved so that the next
 * token still goes at the original position n: keys carry their RoPE, so the
 * kept tokens keep their positions. evict+kvtc codes the kept tokens with
 * kvtc after turning each kept key to the position of its new slot (the
 * codec undoes RoPE at the slot's position), and turns them back after
 * decoding. On error *cache is left valid. */
kvtc_status eval_method_apply(const eval_method *m, const eval_treat_args *a, kvtc_cache **cache,
                              eval_treat_result *res, kvtc_error *err);

/* h2o: tokens kept per layer and KV head out of `treated`, the most whose
 * storage (fp16 keys and values plus a 4-byte index) still realizes target. */
uint32_t eval_h2o_keep_count(uint32_t treated, uint32_t head_dim, double target);

#endif /* KVTC_EVAL_METHODS_H */
