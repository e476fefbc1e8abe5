/* What every fuzz target does with one input, compiled once into the test
 * support library and shared by the fuzz targets (fuzz/), their seed
 * generator and tests/test_regressions.c, so a crash the fuzzer found is
 * replayed by the test suite through exactly the same calls.
 *
 * Each fuzz_one_* feeds the bytes to one parser (or, for compress, builds a
 * cache from them), uses whatever it accepts the way a caller would, and
 * checks invariants that must hold for any accepted input (a decoded block
 * equals the same tokens of the whole decode, a loaded file re-saves to the
 * same bytes, ...). It returns 0, or 1 after printing one line to stderr when
 * an invariant is broken. A crash is a crash. */
#ifndef KVTC_FUZZ_COMMON_H
#define KVTC_FUZZ_COMMON_H

#include "kvtc.h"

#include <stddef.h>
#include <stdint.h>

/* The fixed calibration .kvtc inputs are decoded with: built from
 * deterministic synthetic caches (2 layers, 1 KV head, head_dim 8, sinks 2,
 * window 4), so the seed generator, the fuzzer and the regression test all
 * get the same fingerprint. */
kvtc_status fuzz_make_calibration(kvtc_calibration **out, kvtc_error *err);
/* That calibration, made on the first call and kept for the process: what
 * the fuzz targets that need one use. Prints and aborts if it cannot be made. */
const kvtc_calibration *fuzz_shared_calibration(void);
/* The synthetic cache number `seed` of that model, n_tokens long. */
kvtc_cache *fuzz_make_cache(kvtc_dtype dtype, uint32_t n_tokens, int64_t pos0, uint64_t seed);

/* Recompute the checksums of a (mutated) file in place, where the layout
 * allows, so mutations reach the code behind the checksum checks. */
void fuzz_fix_kvtc_checksums(uint8_t *buf, size_t len);
void fuzz_fix_kvtcal_checksums(uint8_t *buf, size_t len);

int fuzz_one_kvtc(const kvtc_calibration *cal, const uint8_t *data, size_t len);

/* The compress round trip reads its input as a cache of the calibration's
 * shape and compress options:
 *   byte 0  dtype (% 3: F32, F16, BF16)
 *   byte 1  tokens (% (FUZZ_MAX_TOKENS + 1))
 *   byte 2  bits 0-1 key ratio, 2-3 value ratio (1.5, 2, 4, 6), 4-6 pos0 / 1000,
 *           bit 7: the last positions there are instead
 *   byte 3  bits 0-1 block tokens (1, 3, 8, 256), 2-7 the seed of the synthetic
 *           tokens (fuzz_make_cache) the edits start from
 * then edits of 3 bytes: a 16-bit little-endian element index (modulo the
 * cache's elements: keys then values, layer by layer, each
 * [n_kv_head][n_tokens][head_dim]) and a value code: below
 * FUZZ_VALUE_SPECIAL, (code - FUZZ_VALUE_SPECIAL / 2) / 8; up to
 * FUZZ_VALUE_RAW, one of a table of extreme and non-finite values (NaN, inf,
 * the largest f32, fp16 and bf16 values, subnormals, -0, ...); FUZZ_VALUE_RAW,
 * the element's own bits from the next dtype-size bytes. Values are stored
 * converted to the cache's dtype. */
#define FUZZ_MAX_TOKENS 40
#define FUZZ_VALUE_SPECIAL 0xe0
#define FUZZ_VALUE_RAW 0xff
#define FUZZ_IN_RANGE 256.0f /* coded tokens no larger than this decode to finite values */
/* The cache (NULL, printed, if it cannot be made) and options an input says. */
kvtc_cache *fuzz_compress_input(const uint8_t *data, size_t len, kvtc_compress_options *opt);
/* Compresses that cache with `cal` (fuzz_make_calibration): a cache whose
 * coded tokens (all but the calibration's sinks and window) are finite must
 * compress, one with a non-finite coded token must be refused with
 * KVTC_E_NUMERIC and a one-line message; a stream made decodes to the same
 * shape, dtype and positions with the raw tokens bit for bit, to finite
 * values where every coded input was within +-FUZZ_IN_RANGE, passes
 * fuzz_one_kvtc, and is made again byte for byte with 2 threads. */
int fuzz_one_compress(const kvtc_calibration *cal, const uint8_t *data, size_t len);
int fuzz_one_kvtcal(const uint8_t *data, size_t len);
int fuzz_one_safetensors(const uint8_t *data, size_t len);
int fuzz_one_gguf(const uint8_t *data, size_t len);
int fuzz_one_llama2c(const uint8_t *data, size_t len);
/* A llama.cpp sequence state of the fuzz calibration's shape: what loads is
 * written back to the same bytes, and compresses and decompresses with its
 * token ids and raw tokens intact. */
int fuzz_one_llama_state(const kvtc_calibration *cal, const uint8_t *data, size_t len);

#endif /* KVTC_FUZZ_COMMON_H */
