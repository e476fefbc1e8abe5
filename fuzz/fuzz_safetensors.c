/* libFuzzer target: safetensors cache reading (kvtc_cache_load_safetensors);
 * what loads is saved and loaded again. */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_safetensors(data, size))
        abort();
    return 0;
}
