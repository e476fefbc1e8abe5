/* Byte-level BPE tokenizer read from a GGUF file's tokenizer.ggml.* metadata
 * (GPT-2 style pre-tokenization, merges applied by rank), decoding back to
 * bytes, and the chat template of the Instruct model. */
#ifndef KVTC_TOKENIZER_H
#define KVTC_TOKENIZER_H

#include "gguf.h"
#include "kvtc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

typedef struct chat_message {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content;
} chat_message;

/* Builds the tokenizer from the GGUF metadata (tokens, merges, token types,
 * bos/eos ids, pre-tokenizer name). The kvtc_gguf_file may be closed afterwards. */
kvtc_status tokenizer_load_gguf(const kvtc_gguf_file *f, tokenizer **out, kvtc_error *err);
void tokenizer_free(tokenizer *t);

uint32_t tokenizer_vocab_size(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t); /* -1 if none */
int32_t tokenizer_eos(const tokenizer *t); /* -1 if none */

/* Text (UTF-8, len bytes) to token ids; *ids is allocated with kvtc_malloc and
 * freed with kvtc_free. Special tokens written literally in the text (e.g.
 * "<|im_start|>") are recognized as such. */
kvtc_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_bos,
                             int32_t **ids, size_t *n_ids, kvtc_error *err);

/* The bytes of one token (byte-level BPE unmapped); may be a partial UTF-8
 * sequence. Returns the byte count (0 for an invalid id); writes at most cap. */
size_t tokenizer_token_bytes(const tokenizer *t, int32_t id, char *buf, size_t cap);

/* Ids to text; *text is NUL-terminated, allocated with kvtc_malloc. */
kvtc_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, char **text,
                             kvtc_error *err);

/* The model's chat template applied to messages (ChatML for SmolLM2:
 * "<|im_start|>role\ncontent<|im_end|>\n" ..., with the default system message
 * when none is given), plus "<|im_start|>assistant\n" if add_generation_prompt. */
kvtc_status tokenizer_chat_prompt(const tokenizer *t, const chat_message *msgs, size_t n,
                                  bool add_generation_prompt, char **out, kvtc_error *err);

#endif /* KVTC_TOKENIZER_H */
