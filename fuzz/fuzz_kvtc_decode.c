/* libFuzzer target: .kvtc decoding (kvtc_stream_info_get, kvtc_decompress,
 * kvtc_decompress_layers, kvtc_decompress_block, kvtc_append) against a fixed
 * calibration built once at startup. */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>

static kvtc_calibration *g_cal;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvtc_error err;
    if (fuzz_make_calibration(&g_cal, &err) != KVTC_OK) {
        fprintf(stderr, "fuzz_kvtc_decode: cannot build the calibration: %s\n", err.message);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_kvtc(g_cal, data, size))
        abort();
    return 0;
}
