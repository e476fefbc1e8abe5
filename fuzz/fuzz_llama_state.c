/* libFuzzer target: llama.cpp sequence states (kvtc_llama_state_load); what
 * loads is written back and must give the same bytes, then goes through a
 * .kvtc stream. */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_llama_state(fuzz_shared_calibration(), data, size))
        abort();
    return 0;
}
