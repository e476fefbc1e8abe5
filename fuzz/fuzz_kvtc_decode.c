/* libFuzzer target: .kvtc decoding (kvtc_stream_info_get, kvtc_decompress,
 * kvtc_decompress_layers, kvtc_decompress_block, kvtc_append) against the
 * fixed calibration, built once. */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_kvtc(fuzz_shared_calibration(), data, size))
        abort();
    return 0;
}
