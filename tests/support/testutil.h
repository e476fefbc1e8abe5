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
/* Prints "name: skipped: why" and exits with 77. */
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

/* ---- temporary files --------------------------------------------------------- */

/* A folder private to this process, created on first use and removed with its
 * contents at exit. NULL if it cannot be made (printed). */
const char *temp_dir(void);
/* Writes "<temp_dir()>/<name>" into buf; false if it does not fit or there is
 * no temporary folder. */
bool temp_path(char *buf, size_t size, const char *name);

#endif /* KVTC_TESTUTIL_H */
