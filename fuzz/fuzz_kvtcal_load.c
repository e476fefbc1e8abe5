/* libFuzzer target: .kvtcal loading (kvtc_calibration_load); what loads then
 * makes plans and codes a small cache. */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_kvtcal(data, size))
        abort();
    return 0;
}
