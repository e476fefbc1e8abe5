/* libFuzzer target: llama2.c checkpoint reading (llama2c_load), then every
 * weight is read. */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_llama2c(data, size))
        abort();
    return 0;
}
