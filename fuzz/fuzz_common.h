/* What every fuzz target does with one input, shared with the seed generator
 * and with tests/test_regressions.c, so a crash the fuzzer found is replayed by
 * the test suite through exactly the same calls.
 *
 * Each fuzz_one_* feeds the bytes to one parser, uses whatever it accepts the
 * way a caller would, and checks invariants that must hold for any accepted
 * input (a decoded block equals the same tokens of the whole decode, a loaded
 * file re-saves to the same bytes, ...). It returns 0, or 1 after printing one
 * line to stderr when an invariant is broken. A crash is a crash. */
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
/* The synthetic cache number `seed` of that model, n_tokens long. */
kvtc_cache *fuzz_make_cache(kvtc_dtype dtype, uint32_t n_tokens, int64_t pos0, uint64_t seed);

/* Recompute the checksums of a (mutated) file in place, where the layout
 * allows, so mutations reach the code behind the checksum checks. */
void fuzz_fix_kvtc_checksums(uint8_t *buf, size_t len);
void fuzz_fix_kvtcal_checksums(uint8_t *buf, size_t len);

int fuzz_one_kvtc(const kvtc_calibration *cal, const uint8_t *data, size_t len);
int fuzz_one_kvtcal(const uint8_t *data, size_t len);
int fuzz_one_safetensors(const uint8_t *data, size_t len);
int fuzz_one_gguf(const uint8_t *data, size_t len);
int fuzz_one_llama2c(const uint8_t *data, size_t len);

#endif /* KVTC_FUZZ_COMMON_H */
