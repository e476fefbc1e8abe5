/* The project's default model, SmolLM2-135M-Instruct (GGUF Q4_1), kept in
 * $KVTC_CACHE_DIR or ~/.cache/kvtc and fetched there on first use. */
#ifndef KVTC_APP_DEFAULT_MODEL_H
#define KVTC_APP_DEFAULT_MODEL_H

#include "model.h"

#include <stdbool.h>
#include <stddef.h>

#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"
/* Writes the default model's path into buf. When the file is missing and
 * fetch is true, runs scripts/fetch-model.sh to download it (its stderr goes
 * to the caller's); fails with a one-line reason when it cannot be had. */
kvtc_status default_model_path(char *buf, size_t cap, bool fetch, kvtc_error *err);
/* model_open on `path`, or on the default model (fetched if needed) when path
 * is NULL. */
kvtc_status model_open_or_default(const char *path, model **out, tokenizer **tok,
                                  kvtc_error *err);

#endif /* KVTC_APP_DEFAULT_MODEL_H */
