/* libFuzzer target: GGUF reading (kvtc_gguf_load), then metadata getters, the
 * tensor table and dequantization. */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_gguf(data, size))
        abort();
    return 0;
}
