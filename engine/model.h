/* The reference engine's model: hyperparameters and weights of a
 * Llama-family decoder (arch llama or qwen2), loaded from a GGUF file or a
 * llama2.c checkpoint. Matrices keep the GGUF's quantized blocks (weights.h). */
#ifndef KVTC_ENGINE_MODEL_H
#define KVTC_ENGINE_MODEL_H

#include "gguf.h"
#include "kvtc.h"
#include "llama2c.h"
#include "tokenizer.h"
#include "weights.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum model_arch { MODEL_ARCH_LLAMA = 0, MODEL_ARCH_QWEN2 = 1 } model_arch;

typedef struct model_config {
    model_arch arch;
    uint32_t dim;        /* embedding width */
    uint32_t hidden_dim; /* FFN width */
    uint32_t n_layer, n_head, n_kv_head, head_dim;
    uint32_t vocab_size;
    uint32_t context_length; /* the context the model was trained for */
    float norm_eps;          /* RMSNorm epsilon */
    kvtc_rope_style rope_style;
    uint32_t rope_dims; /* rotated dims per head */
    double rope_theta;
    int32_t bos_id, eos_id; /* -1 when unknown */
    char name[64];
} model_config;

/* Per-layer weights, row-major [out][in]. The Q, K and V projections are
 * rows of one matrix so that one product computes all three; so are the gate
 * and up projections of the FFN. Norms and biases are f32. */
typedef struct model_layer {
    float *attn_norm;         /* [dim] */
    weight_matrix wqkv;       /* [(n_head + 2 n_kv_head) head_dim][dim]: wq, wk, wv */
    float *bqkv;              /* the matching biases (qwen2), or NULL */
    weight_matrix wo;         /* [dim][n_head head_dim] */
    float *ffn_norm;          /* [dim] */
    weight_matrix w_gate_up;  /* [2 hidden][dim]: gate, then up */
    weight_matrix w_down;     /* [dim][hidden] */
} model_layer;

typedef struct model {
    model_config cfg;
    weight_matrix token_embd; /* [vocab][dim] */
    float *output_norm;       /* [dim] */
    weight_matrix output;     /* [vocab][dim]; token_embd's data when tied */
    bool tied;
    model_layer *layers;      /* [n_layer] */
    uint8_t *arena;           /* the weights above that are not in `file`, one allocation */
    kvtc_gguf_file *file;     /* the GGUF the kept matrices point into, or NULL */
} model;

/* Builds a model from an open GGUF: hyperparameters from "<arch>.*" metadata,
 * matrices in their own block types (F16 and BF16 ones converted to f32).
 * Matrices kept as they are point into f's data: on success the model owns f
 * (model_free closes it); on failure the caller still does. */
kvtc_status model_load_gguf(kvtc_gguf_file *f, model **out, kvtc_error *err);
/* Builds a model from a llama2.c checkpoint (RoPE theta 10000, eps 1e-5, BOS 1). */
kvtc_status model_load_llama2c(const llama2c_file *f, model **out, kvtc_error *err);
/* Opens a model file of either kind: GGUF when it starts with the GGUF magic,
 * else a llama2.c checkpoint. When tok is not NULL it receives the GGUF's
 * tokenizer, or NULL for a llama2.c checkpoint, which carries none. */
kvtc_status model_open(const char *path, model **out, tokenizer **tok, kvtc_error *err);
void model_free(model *m);

/* The shape of the model's KV cache as kvtc sees it. */
kvtc_model_shape model_kv_shape(const model *m);
/* The same from a GGUF file's metadata alone (no weights are read), and its
 * name in `name` (64 bytes): what a llama.cpp state of that model lacks. */
kvtc_status model_read_kv_shape(const char *path, kvtc_model_shape *shape, char name[64],
                                kvtc_error *err);

#endif /* KVTC_ENGINE_MODEL_H */
