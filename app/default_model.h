/* The project's default model, SmolLM2-135M-Instruct (GGUF Q4_1; the entry
 * DEFAULT_MODEL_NAME of models.h), kept in $KVTC_CACHE_DIR or ~/.cache/kvtc
 * and fetched there on first use (fetch.h). */
#ifndef KVTC_APP_DEFAULT_MODEL_H
#define KVTC_APP_DEFAULT_MODEL_H

#include "model.h"
#include "models.h"

#include <stdbool.h>
#include <stddef.h>

/* Writes the default model's path into buf. A copy there is checked against
 * its size (its sha256 was checked when it was fetched; `kvtc fetch` checks it
 * again). When it is missing or damaged and fetch is true, fetches it (messages
 * on stderr); fails with a one-line reason when it cannot be had. */
kvtc_status default_model_path(char *buf, size_t cap, bool fetch, kvtc_error *err);
/* What a --model option names, as a file path in buf: NULL is the default
 * model, a name of the table (models.h, `kvtc fetch --list`) is that model in
 * the cache folder (fetched as default_model_path does), anything else a path,
 * copied as given (./NAME reaches a file named like a model). */
kvtc_status model_resolve(const char *name_or_path, char *buf, size_t cap, bool fetch,
                          kvtc_error *err);
/* model_open on what model_resolve makes of name_or_path (fetching a named
 * model if needed). */
kvtc_status model_open_or_default(const char *name_or_path, model **out, tokenizer **tok,
                                  kvtc_error *err);

#endif /* KVTC_APP_DEFAULT_MODEL_H */
