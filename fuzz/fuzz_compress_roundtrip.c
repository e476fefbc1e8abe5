/* libFuzzer target: compress round trip. The input is a small cache of the
 * fixed calibration's shape (values from the bytes, extreme and non-finite
 * ones included) and compress options (fuzz_common.h says how); it is
 * compressed with the calibration and decoded every way, checking what
 * kvtc.h promises (fuzz_one_compress). */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_one_compress(fuzz_shared_calibration(), data, size))
        abort();
    return 0;
}
