#define _XOPEN_SOURCE 700 /* nftw */
#include "testutil.h"

#include "kvtc_internal.h"

#include <cblas.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int test_failures;

/* ---- checks ---------------------------------------------------------------- */

bool test_check(bool ok, const char *file, int line, const char *fmt, ...)
{
    if (ok)
        return true;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: check failed: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    test_failures++;
    return false;
}

bool test_check_status(kvtc_status got, kvtc_status want, const kvtc_error *err,
                       const char *expr, const char *file, int line)
{
    return test_check(got == want, file, line, "%s returned %s (%d), want %s (%d)%s%s", expr,
                      kvtc_status_string(got), (int)got, kvtc_status_string(want), (int)want,
                      err && err->message[0] ? ": " : "", err ? err->message : "");
}

bool test_check_eq(long long a, long long b, const char *sa, const char *sb, const char *file,
                   int line)
{
    return test_check(a == b, file, line, "%s == %s: %lld != %lld", sa, sb, a, b);
}

bool test_check_near(double a, double b, double tol, const char *sa, const char *sb,
                     const char *file, int line)
{
    return test_check(fabs(a - b) <= tol, file, line, "%s ~= %s: %.9g vs %.9g (tolerance %g)",
                      sa, sb, a, b, tol);
}

int test_summary(const char *name)
{
    if (test_failures == 0) {
        printf("%s: ok\n", name);
        return 0;
    }
    printf("%s: %d failed checks\n", name, test_failures);
    return 1;
}

void test_skip(const char *name, const char *why)
{
    if (test_failures)
        exit(test_summary(name));
    printf("%s: skipped: %s\n", name, why);
    exit(77);
}

/* ---- random numbers ---------------------------------------------------------- */

void rng_seed(test_rng *r, uint64_t seed) { r->state = seed; }

uint64_t rng_u64(test_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint32_t rng_below(test_rng *r, uint32_t n) { return (uint32_t)(rng_uniform(r) * n); }

double rng_uniform(test_rng *r) { return (double)(rng_u64(r) >> 11) * 0x1.0p-53; }

double rng_gaussian(test_rng *r)
{
    /* Box-Muller; 1 - u keeps the logarithm finite. */
    double u = 1.0 - rng_uniform(r), v = rng_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* ---- random caches ----------------------------------------------------------- */

/* The "model" of one kind: mean [p], unit directions [rank][p] scaled by their
 * standard deviations, and the noise level. */
typedef struct synthetic_model {
    float *mean;
    float *directions;
    float noise;
} synthetic_model;

static void synthetic_model_free(synthetic_model *m)
{
    free(m->mean);
    free(m->directions);
}

static bool synthetic_model_make(synthetic_model *m, const kvtc_model_shape *s, kvtc_kind kind,
                                 uint32_t rank)
{
    size_t p = (size_t)kvtc_shape_features(s);
    test_rng r;
    rng_seed(&r, 0x6b767463ull ^ ((uint64_t)s->n_layer << 40) ^ ((uint64_t)s->n_kv_head << 24) ^
                     ((uint64_t)s->head_dim << 8) ^ ((uint64_t)rank << 48) ^ (uint64_t)kind);
    m->mean = malloc(p * sizeof(float));
    m->directions = malloc((rank ? rank : 1) * p * sizeof(float));
    if (!m->mean || !m->directions) {
        synthetic_model_free(m);
        return false;
    }
    float magnitude = kind == KVTC_KEY ? 2.0f : 1.0f; /* keys run larger, as in real models */
    m->noise = 0.02f * magnitude;
    for (size_t i = 0; i < p; i++)
        m->mean[i] = (float)(0.5 * magnitude * rng_gaussian(&r));
    for (uint32_t k = 0; k < rank; k++) {
        float *d = m->directions + (size_t)k * p;
        double norm = 0;
        for (size_t i = 0; i < p; i++) {
            d[i] = (float)rng_gaussian(&r);
            norm += (double)d[i] * d[i];
        }
        double sd = magnitude * 2.0 / pow(1.0 + k, 0.75);
        for (size_t i = 0; i < p; i++)
            d[i] = (float)(d[i] * sd / sqrt(norm));
    }
    return true;
}

/* Rows [n][p] = mean + coefficients * directions + noise, keys rotated, stored
 * into tokens [t0, t0+n) of the cache. */
static void fill_tokens(kvtc_cache *c, kvtc_kind kind, const synthetic_model *m, uint32_t rank,
                        uint32_t t0, uint32_t n, test_rng *r, float *coef, float *rows)
{
    const kvtc_model_shape *s = kvtc_cache_shape(c);
    size_t p = (size_t)kvtc_shape_features(s);
    for (size_t i = 0; i < (size_t)n * rank; i++)
        coef[i] = (float)rng_gaussian(r);
    for (uint32_t t = 0; t < n; t++)
        for (size_t i = 0; i < p; i++)
            rows[t * p + i] = m->mean[i] + m->noise * (float)rng_gaussian(r);
    if (rank)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)p, (int)rank, 1.0f,
                    coef, (int)rank, m->directions, (int)p, 1.0f, rows, (int)p);
    size_t esize = kvtc_dtype_size(kvtc_cache_dtype(c));
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t l = 0; l < s->n_layer; l++) {
            unsigned char *layer = kvtc_cache_data(c, kind, l);
            for (uint32_t h = 0; h < s->n_kv_head; h++) {
                float *head = rows + t * p + ((size_t)l * s->n_kv_head + h) * s->head_dim;
                if (kind == KVTC_KEY)
                    kvtc_rope_rotate(s, head, kvtc_cache_pos0(c) + t0 + t, false);
                size_t off = ((size_t)h * kvtc_cache_tokens(c) + t0 + t) * s->head_dim;
                kvtc_from_f32(kvtc_cache_dtype(c), head, layer + off * esize, s->head_dim);
            }
        }
}

kvtc_cache *make_random_cache(const kvtc_model_shape *shape, kvtc_dtype dtype,
                              uint32_t n_tokens, int64_t pos0, uint32_t low_rank, uint64_t seed)
{
    enum { BATCH = 256 };
    kvtc_error err;
    kvtc_cache *c;
    if (kvtc_cache_create(shape, dtype, n_tokens, pos0, &c, &err) != KVTC_OK) {
        fprintf(stderr, "make_random_cache: %s\n", err.message);
        return NULL;
    }
    size_t p = (size_t)kvtc_shape_features(shape);
    float *coef = malloc((size_t)BATCH * (low_rank ? low_rank : 1) * sizeof(float));
    float *rows = malloc((size_t)BATCH * p * sizeof(float));
    bool ok = coef && rows;
    test_rng r;
    rng_seed(&r, seed * 0x2545f4914f6cdd1dull + 1);
    for (int k = 0; ok && k < 2; k++) {
        synthetic_model m = {0};
        if (!synthetic_model_make(&m, kvtc_cache_shape(c), (kvtc_kind)k, low_rank)) {
            ok = false;
            break;
        }
        for (uint32_t t0 = 0; t0 < n_tokens; t0 += BATCH) {
            uint32_t n = n_tokens - t0 < BATCH ? n_tokens - t0 : BATCH;
            fill_tokens(c, (kvtc_kind)k, &m, low_rank, t0, n, &r, coef, rows);
        }
        synthetic_model_free(&m);
    }
    free(coef);
    free(rows);
    if (!ok) {
        fprintf(stderr, "make_random_cache: out of memory\n");
        kvtc_cache_free(c);
        return NULL;
    }
    return c;
}

kvtc_cache *random_series_cache(void *series, uint32_t i)
{
    const random_series *s = series;
    return make_random_cache(s->shape, s->dtype, s->tokens, (int64_t)i * s->pos0_step,
                             s->low_rank, s->seed + i);
}

kvtc_status test_calibrate(const kvtc_model_shape *shape, const kvtc_calib_options *opt,
                           uint32_t n_caches, test_cache_fn make, void *user,
                           kvtc_calibration **out, kvtc_error *err)
{
    kvtc_calibrator *cal;
    kvtc_status st = kvtc_calibrator_create(shape, opt, &cal, err);
    for (uint32_t i = 0; i < n_caches && st == KVTC_OK; i++) {
        kvtc_cache *c = make(user, i);
        st = c ? kvtc_calibrator_add(cal, c, err)
               : kvtc_fail(err, KVTC_E_NOMEM, "cannot make calibration cache %u", i);
        kvtc_cache_free(c);
    }
    if (st == KVTC_OK)
        st = kvtc_calibrator_finish(cal, out, err);
    kvtc_calibrator_free(cal);
    return st;
}

kvtc_calibration *make_random_calibration(const kvtc_model_shape *shape,
                                          const kvtc_calib_options *opt, uint32_t n_caches,
                                          uint32_t tokens, uint32_t low_rank, uint64_t seed)
{
    random_series series = {shape, KVTC_F32, tokens, 0, low_rank, seed};
    kvtc_error err;
    kvtc_calibration *out = NULL;
    if (test_calibrate(shape, opt, n_caches, random_series_cache, &series, &out, &err) != KVTC_OK)
        fprintf(stderr, "make_random_calibration: %s\n", err.message);
    return out;
}

/* ---- comparisons --------------------------------------------------------------- */

bool test_tokens_equal(const kvtc_cache *a, uint32_t ta, const kvtc_cache *b, uint32_t tb,
                       uint32_t n)
{
    const kvtc_model_shape *s = kvtc_cache_shape(a);
    uint32_t na = kvtc_cache_tokens(a), nb = kvtc_cache_tokens(b);
    if (kvtc_cache_dtype(a) != kvtc_cache_dtype(b) || !kvtc_shape_equal(s, kvtc_cache_shape(b)) ||
        ta > na || n > na - ta || tb > nb || n > nb - tb)
        return false;
    size_t row = (size_t)s->head_dim * kvtc_dtype_size(kvtc_cache_dtype(a));
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < s->n_layer; l++) {
            const uint8_t *la = kvtc_cache_data_const(a, (kvtc_kind)k, l);
            const uint8_t *lb = kvtc_cache_data_const(b, (kvtc_kind)k, l);
            for (uint32_t h = 0; h < s->n_kv_head && n; h++)
                if (memcmp(la + ((size_t)h * na + ta) * row, lb + ((size_t)h * nb + tb) * row,
                           n * row) != 0)
                    return false;
        }
    return true;
}

bool test_caches_equal(const kvtc_cache *a, const kvtc_cache *b)
{
    return kvtc_cache_tokens(a) == kvtc_cache_tokens(b) &&
           kvtc_cache_pos0(a) == kvtc_cache_pos0(b) &&
           strcmp(kvtc_cache_model_name(a), kvtc_cache_model_name(b)) == 0 &&
           test_tokens_equal(a, 0, b, 0, kvtc_cache_tokens(a));
}

bool test_bytes_equal(const void *a, size_t a_len, const void *b, size_t b_len)
{
    return a_len == b_len && (a_len == 0 || memcmp(a, b, a_len) == 0);
}

bool test_calibrations_equal(const kvtc_calibration *a, const kvtc_calibration *b)
{
    void *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    bool same = kvtc_calibration_save(a, &x, &nx, NULL) == KVTC_OK &&
                kvtc_calibration_save(b, &y, &ny, NULL) == KVTC_OK &&
                test_bytes_equal(x, nx, y, ny);
    kvtc_buffer_free(x);
    kvtc_buffer_free(y);
    return same;
}

int test_count_layers(void *user, uint32_t layer, const void *key, const void *value)
{
    (void)layer;
    (void)key;
    (void)value;
    ++*(uint32_t *)user;
    return 0;
}

void test_put_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t test_get_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- inputs ---------------------------------------------------------------------- */

/* "<dir><sub>/<rel>"; dir NULL means the variable `unset` names is not set. */
static bool join_path(char *buf, size_t size, const char *dir, const char *sub, const char *rel,
                      const char *unset)
{
    if (!dir) {
        fprintf(stderr, "test inputs: %s is not set\n", unset);
        return false;
    }
    int n = snprintf(buf, size, "%s%s/%s", dir, sub, rel);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "test input path too long: %s%s/%s\n", dir, sub, rel);
        return false;
    }
    return true;
}

/* $name when it is set and not empty, else NULL. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static const char *source_dir(void)
{
#ifdef KVTC_TEST_SOURCE_DIR
    return env("KVTC_SOURCE_DIR") ? env("KVTC_SOURCE_DIR") : KVTC_TEST_SOURCE_DIR;
#else
    return env("KVTC_SOURCE_DIR");
#endif
}

bool test_source_path(char *buf, size_t size, const char *rel)
{
    return join_path(buf, size, source_dir(), "", rel, "KVTC_SOURCE_DIR");
}

bool test_shared_path(char *buf, size_t size, const char *rel)
{
    if (env("KVTC_SHARED_DIR"))
        return join_path(buf, size, env("KVTC_SHARED_DIR"), "", rel, "KVTC_SHARED_DIR");
    return join_path(buf, size, source_dir(), "/../shared", rel,
                     "KVTC_SHARED_DIR (nor KVTC_SOURCE_DIR)");
}

bool test_model_cache_path(char *buf, size_t size, const char *rel)
{
    if (env("KVTC_CACHE_DIR"))
        return join_path(buf, size, env("KVTC_CACHE_DIR"), "", rel, "KVTC_CACHE_DIR");
    return join_path(buf, size, env("HOME"), "/.cache/kvtc", rel, "KVTC_CACHE_DIR (nor HOME)");
}

bool test_input_present(const char *test, const char *what, const char *path, const char *hint)
{
    struct stat st;
    if (stat(path, &st) == 0 || (errno != ENOENT && errno != ENOTDIR))
        return true;
    printf("%s: %s skipped: %s is absent (%s)\n", test, what, path, hint);
    return false;
}

/* ---- temporary files --------------------------------------------------------- */

static char g_temp_dir[4096];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_temp_dir(void)
{
    if (g_temp_dir[0])
        nftw(g_temp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *temp_dir(void)
{
    if (g_temp_dir[0])
        return g_temp_dir;
    const char *base = getenv("TMPDIR");
    if (!base || !base[0])
        base = "/tmp";
    int n = snprintf(g_temp_dir, sizeof g_temp_dir, "%s/kvtc-test-XXXXXX", base);
    if (n < 0 || (size_t)n >= sizeof g_temp_dir || !mkdtemp(g_temp_dir)) {
        fprintf(stderr, "temp_dir: cannot create a folder under %s\n", base);
        g_temp_dir[0] = '\0';
        return NULL;
    }
    atexit(remove_temp_dir);
    return g_temp_dir;
}

bool temp_path(char *buf, size_t size, const char *name)
{
    const char *dir = temp_dir();
    if (!dir)
        return false;
    int n = snprintf(buf, size, "%s/%s", dir, name);
    return n >= 0 && (size_t)n < size;
}
