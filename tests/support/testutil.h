/* Small helpers shared by the test programs: checks that report file:line and
 * count failures, a deterministic PRNG, realistic random KV caches and a
 * per-process temporary folder. */
#ifndef KVTC_TESTUTIL_H
#define KVTC_TESTUTIL_H

#include "kvtc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- checks ---------------------------------------------------------------- */

/* Number of failed checks so far. */
extern int test_failures;

/* Each check prints one line "file:line: what" on failure, counts it, and
 * evaluates to true when it passed (so `if (!CHECK(p)) return;` works). */
#define CHECK(cond) test_check((cond), __FILE__, __LINE__, "%s", #cond)
#define CHECK_MSG(cond, ...) test_check((cond), __FILE__, __LINE__, __VA_ARGS__)
/* `expr` returns a kvtc_status; errp is a kvtc_error * or NULL (its message is printed). */
#define CHECK_STATUS(expr, want, errp) \
    test_check_status((expr), (want), (errp), #expr, __FILE__, __LINE__)
#define CHECK_OK(expr, errp) CHECK_STATUS(expr, KVTC_OK, errp)
#define CHECK_EQ(a, b) \
    test_check_eq((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
/* |a - b| <= tol */
#define CHECK_NEAR(a, b, tol) \
    test_check_near((double)(a), (double)(b), (double)(tol), #a, #b, __FILE__, __LINE__)

bool test_check(bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
bool test_check_status(kvtc_status got, kvtc_status want, const kvtc_error *err,
                       const char *expr, const char *file, int line);
bool test_check_eq(long long a, long long b, const char *sa, const char *sb, const char *file,
                   int line);
bool test_check_near(double a, double b, double tol, const char *sa, const char *sb,
                     const char *file, int line);

/* Prints "name: ok" or "name: N failed checks" and returns the exit status
 * (0 or 1): `return test_summary("test_quant");`. */
int test_summary(const char *name);
/* Prints "name: skipped: why" and exits with 77, for a test whose input is
 * absent (see test_input_present); when checks have already failed, prints
 * the summary and exits with 1 instead: a skip never hides a failure. */
void test_skip(const char *name, const char *why) __attribute__((noreturn));

/* ---- deterministic random numbers (splitmix64) ----------------------------- */

typedef struct test_rng {
    uint64_t state;
} test_rng;

void rng_seed(test_rng *r, uint64_t seed);
uint64_t rng_u64(test_rng *r);
uint32_t rng_below(test_rng *r, uint32_t n); /* uniform in [0, n), n > 0 */
double rng_uniform(test_rng *r);             /* uniform in [0, 1) */
double rng_gaussian(test_rng *r);            /* standard normal */

/* ---- random caches ----------------------------------------------------------- */

/* A cache whose feature rows (keys before RoPE, values) look like a model's:
 * a per-feature mean, `low_rank` directions with decaying variance, and small
 * isotropic noise; keys are then rotated by RoPE at their true positions with
 * kvtc_rope_rotate, as a model stores them. The mean, directions and variances
 * depend only on the shape and low_rank (one "model"); `seed` picks the tokens,
 * so caches of different seeds are different prompts of the same model.
 * low_rank 0 gives mean + noise only. Returns NULL on error (printed). */
kvtc_cache *make_random_cache(const kvtc_model_shape *shape, kvtc_dtype dtype,
                              uint32_t n_tokens, int64_t pos0, uint32_t low_rank, uint64_t seed);

/* A calibration fitted with `opt` on n_caches make_random_cache caches of
 * `tokens` tokens each (f32, positions from 0, seeds seed, seed+1, ...).
 * NULL on failure (printed). */
kvtc_calibration *make_random_calibration(const kvtc_model_shape *shape,
                                          const kvtc_calib_options *opt, uint32_t n_caches,
                                          uint32_t tokens, uint32_t low_rank, uint64_t seed);

/* A cache to fit a calibration on: number i of a series (NULL on failure, printed). */
typedef kvtc_cache *(*test_cache_fn)(void *user, uint32_t i);

/* Fits a calibration with `opt` on caches 0 .. n_caches-1 of `make`, each
 * freed once it is added; *out is set on success. */
kvtc_status test_calibrate(const kvtc_model_shape *shape, const kvtc_calib_options *opt,
                           uint32_t n_caches, test_cache_fn make, void *user,
                           kvtc_calibration **out, kvtc_error *err);

/* A series of make_random_cache caches for test_calibrate (random_series_cache
 * is its test_cache_fn): cache i has `tokens` tokens of `dtype` at position
 * i * pos0_step, seed seed + i. */
typedef struct random_series {
    const kvtc_model_shape *shape;
    kvtc_dtype dtype;
    uint32_t tokens;
    int64_t pos0_step;
    uint32_t low_rank;
    uint64_t seed;
} random_series;
kvtc_cache *random_series_cache(void *series, uint32_t i);

/* ---- comparisons --------------------------------------------------------------- */

/* True if tokens [ta, ta+n) of a and [tb, tb+n) of b exist and hold the same
 * bytes, both kinds, every layer and head (the caches' shapes and dtypes must
 * be equal). */
bool test_tokens_equal(const kvtc_cache *a, uint32_t ta, const kvtc_cache *b, uint32_t tb,
                       uint32_t n);
/* Same shape, dtype, tokens, pos0, model name and bytes. */
bool test_caches_equal(const kvtc_cache *a, const kvtc_cache *b);
/* Same length and bytes. */
bool test_bytes_equal(const void *a, size_t a_len, const void *b, size_t b_len);
/* The two calibrations save to the same bytes. */
bool test_calibrations_equal(const kvtc_calibration *a, const kvtc_calibration *b);

/* A kvtc_layer_fn that counts its calls in the uint32_t `user` points to. */
int test_count_layers(void *user, uint32_t layer, const void *key, const void *value);

/* Little-endian fields of a file being edited (bytes 1..8). */
void test_put_le(uint8_t *p, uint64_t v, int bytes);
uint64_t test_get_le(const uint8_t *p, int bytes);

/* ---- inputs: files the tests read ---------------------------------------------- */

/* Writes "<dir>/<rel>" into buf, where dir is the source tree
 * ($KVTC_SOURCE_DIR, else the tree the tests were built from), the shared
 * folder ($KVTC_SHARED_DIR, else <source tree>/../shared) or the model cache
 * ($KVTC_CACHE_DIR, else ~/.cache/kvtc). False (printed) if it does not fit or
 * the folder is unknown. */
bool test_source_path(char *buf, size_t size, const char *rel);
bool test_shared_path(char *buf, size_t size, const char *rel);
bool test_model_cache_path(char *buf, size_t size, const char *rel);

/* An optional input: true when `path` exists (what follows must then CHECK
 * that it opens). When it does not, prints "<test>: <what> skipped: <path> is
 * absent (<hint>)" and returns false. Anything else that keeps stat() from
 * answering counts as present, so that the open fails loudly. */
bool test_input_present(const char *test, const char *what, const char *path, const char *hint);

/* ---- temporary files --------------------------------------------------------- */

/* A folder private to this process, created on first use and removed with its
 * contents at exit. NULL if it cannot be made (printed). */
const char *temp_dir(void);
/* Writes "<temp_dir()>/<name>" into buf; false if it does not fit or there is
 * no temporary folder. */
bool temp_path(char *buf, size_t size, const char *name);

#endif /* KVTC_TESTUTIL_H */
