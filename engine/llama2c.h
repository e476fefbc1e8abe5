/* llama2.c checkpoints (the legacy "version 0" export of Karpathy's llama2.c):
 * a header of 7 little-endian int32 — dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, seq_len — then float32 weights, row-major [out][in]:
 * token embedding [vocab][dim], attention RMSNorm [L][dim], wq [L][dim][dim],
 * wk [L][kv_dim][dim], wv [L][kv_dim][dim], wo [L][dim][dim], FFN RMSNorm
 * [L][dim], w1 [L][hidden][dim], w2 [L][dim][hidden], w3 [L][hidden][dim],
 * final RMSNorm [dim], two unused RoPE tables [seq_len][head_dim/2], and, only
 * when vocab_size is negative, a separate classifier [|vocab|][dim]. The file
 * length must match the header exactly. */
#ifndef KVTC_LLAMA2C_H
#define KVTC_LLAMA2C_H

#include "kvtc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LLAMA2C_HEADER_BYTES 28

typedef struct llama2c_config {
    uint32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    bool shared_classifier; /* vocab_size was positive in the header */
} llama2c_config;

typedef struct llama2c_file {
    llama2c_config cfg;
    /* Pointers into the mapping (or the caller's buffer), as laid out above. */
    const float *token_embedding, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3,
        *rms_final, *wcls; /* wcls == token_embedding when shared */
    void *map; /* the mapping when opened from a path, else NULL */
    size_t map_len;
} llama2c_file;

/* Parses a checkpoint held in a caller's buffer (4-byte aligned, outliving
 * the result). Errors: KVTC_E_FORMAT for a header out of range (naming the
 * field), KVTC_E_TRUNCATED / KVTC_E_FORMAT when the length does not match. */
kvtc_status llama2c_load(const void *data, size_t len, llama2c_file **out, kvtc_error *err);
/* Maps a checkpoint file read-only; messages name the path. */
kvtc_status llama2c_open(const char *path, llama2c_file **out, kvtc_error *err);
void llama2c_close(llama2c_file *f);

#endif /* KVTC_LLAMA2C_H */
