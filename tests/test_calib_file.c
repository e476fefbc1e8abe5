/* The .kvtcal file: save/load/save is byte-identical; the fingerprint is stable
 * and follows every field; every truncation and every single-bit flip is
 * rejected with the status the format promises; a newer version is refused;
 * files whose checksums were forged around bad fields are refused too. */
#include "kvtc_internal.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define HEADER_BYTES 72
#define SECTION_FIXED_BYTES 36

static const kvtc_model_shape SHAPE = {2, 2, 8, KVTC_ROPE_INTERLEAVED, 0, 10000.0, 0}; /* p 32 */
#define P 32
#define RANK 20

static kvtc_calibration *make_calibration(void)
{
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.window = 16;
    opt.rank = RANK;
    kvtc_error err;
    random_series series = {&SHAPE, KVTC_F16, 200, 200, 6, 0};
    kvtc_calibration *out = NULL;
    CHECK_OK(test_calibrate(&SHAPE, &opt, 3, random_series_cache, &series, &out, &err), &err);
    return out;
}

static size_t section_bytes(void)
{
    return SECTION_FIXED_BYTES + 4 * P + 4 * RANK + 4 * P * RANK +
           8 * kvtc_err_table_len(RANK) + 4;
}

static void put_u32_at(uint8_t *b, size_t off, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[off + i] = (uint8_t)(v >> (8 * i));
}

/* Recomputes every checksum of a file laid out like the test calibration,
 * as a forger would, so that only field validation can catch a bad value. */
static void reseal(uint8_t *b, size_t len)
{
    put_u32_at(b, HEADER_BYTES - 4, kvtc_crc32(b, HEADER_BYTES - 4));
    for (int k = 0; k < 2; k++) {
        size_t start = HEADER_BYTES + k * section_bytes(), n = section_bytes() - 4;
        put_u32_at(b, start + n, kvtc_crc32(b + start, n));
    }
    kvtc_sha256(b, len - 32, b + len - 32);
}

static kvtc_status load_status(const uint8_t *b, size_t len, kvtc_error *err)
{
    kvtc_calibration *cal = NULL;
    kvtc_status st = kvtc_calibration_load(b, len, &cal, err);
    if (st == KVTC_OK) {
        CHECK(cal != NULL);
        kvtc_calibration_free(cal);
    } else {
        CHECK(cal == NULL);
    }
    return st;
}

static void test_round_trip(const kvtc_calibration *cal, const uint8_t *file, size_t len)
{
    kvtc_error err;
    CHECK_EQ(len, HEADER_BYTES + 2 * section_bytes() + 32);
    kvtc_calibration *back = NULL;
    if (!CHECK_OK(kvtc_calibration_load(file, len, &back, &err), &err))
        return;
    void *again = NULL;
    size_t again_len = 0;
    CHECK_OK(kvtc_calibration_save(back, &again, &again_len, &err), &err);
    CHECK(again_len == len && memcmp(again, file, len) == 0);
    kvtc_buffer_free(again);

    uint8_t digest[32];
    kvtc_sha256(file, len - 32, digest);
    CHECK(memcmp(digest, file + len - 32, 32) == 0);
    CHECK(memcmp(kvtc_calibration_fingerprint(cal), digest, 32) == 0);
    CHECK(memcmp(kvtc_calibration_fingerprint(back), digest, 32) == 0);

    CHECK(kvtc_shape_equal(kvtc_calibration_shape(back), &SHAPE));
    CHECK_EQ(kvtc_calibration_sinks(back), 4);
    CHECK_EQ(kvtc_calibration_window(back), 16);
    for (int k = 0; k < 2; k++) {
        CHECK_EQ(kvtc_calibration_rank(back, (kvtc_kind)k), RANK);
        CHECK_EQ(kvtc_calibration_rows(back, (kvtc_kind)k), kvtc_calibration_rows(cal, (kvtc_kind)k));
        CHECK(kvtc_calibration_total_variance(back, (kvtc_kind)k) ==
              kvtc_calibration_total_variance(cal, (kvtc_kind)k));
        CHECK(memcmp(kvtc_calibration_eigenvalues(back, (kvtc_kind)k),
                     kvtc_calibration_eigenvalues(cal, (kvtc_kind)k), RANK * sizeof(float)) == 0);
        CHECK(memcmp(back->kind[k].basis, cal->kind[k].basis, P * RANK * sizeof(float)) == 0);
        CHECK(memcmp(back->kind[k].err_table, cal->kind[k].err_table,
                     kvtc_err_table_len(RANK) * sizeof(double)) == 0);
    }
    CHECK(kvtc_calibration_rank(back, (kvtc_kind)2) == 0);
    CHECK(kvtc_calibration_eigenvalues(back, (kvtc_kind)7) == NULL);
    kvtc_calibration_free(back);
}

/* Changing any one field changes the fingerprint; recomputing it restores it. */
static void test_fingerprint(kvtc_calibration *cal)
{
    uint8_t orig[32], now[32];
    memcpy(orig, cal->fingerprint, 32);
    CHECK_OK(kvtc_calibration_compute_fingerprint(cal, NULL), NULL);
    CHECK(memcmp(orig, cal->fingerprint, 32) == 0);
    struct {
        const char *what;
        void *field;
        size_t size;
    } fields[] = {
        {"sinks", &cal->sinks, sizeof cal->sinks},
        {"window", &cal->window, sizeof cal->window},
        {"rope_theta", &cal->shape.rope_theta, sizeof cal->shape.rope_theta},
        {"rows", &cal->kind[1].rows, sizeof cal->kind[1].rows},
        {"heldout", &cal->kind[0].n_heldout, sizeof cal->kind[0].n_heldout},
        {"mean", &cal->kind[0].mean[P - 1], sizeof(float)},
        {"eigenvalue", &cal->kind[1].eigenvalues[3], sizeof(float)},
        {"basis", &cal->kind[1].basis[P * RANK / 2], sizeof(float)},
        {"error table", &cal->kind[0].err_table[9], sizeof(double)},
        {"energy", &cal->kind[1].heldout_energy, sizeof(double)},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        unsigned char *b = fields[i].field;
        b[0] ^= 1; /* the lowest bit: the smallest possible change */
        CHECK_OK(kvtc_calibration_compute_fingerprint(cal, NULL), NULL);
        memcpy(now, cal->fingerprint, 32);
        CHECK_MSG(memcmp(now, orig, 32) != 0, "changing %s kept the fingerprint", fields[i].what);
        b[0] ^= 1;
    }
    CHECK_OK(kvtc_calibration_compute_fingerprint(cal, NULL), NULL);
    CHECK(memcmp(orig, cal->fingerprint, 32) == 0);
}

static void test_truncation(const uint8_t *file, size_t len)
{
    kvtc_error err;
    for (size_t n = 0; n < len; n++) {
        kvtc_status st = load_status(file, n, &err);
        CHECK_MSG(st == KVTC_E_TRUNCATED, "truncated to %zu of %zu bytes: %s (%s)", n, len,
                  kvtc_status_string(st), err.message);
    }
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, file, len);
    longer[len] = 0;
    CHECK_STATUS(load_status(longer, len + 1, &err), KVTC_E_FORMAT, &err);
    free(longer);
}

/* The status a single flipped bit at `off` must give. */
static kvtc_status flip_expectation(size_t off, uint32_t flipped_version)
{
    if (off < 8)
        return KVTC_E_FORMAT; /* magic */
    if (off < 12)
        return flipped_version == 0 ? KVTC_E_FORMAT : KVTC_E_VERSION;
    return KVTC_E_CHECKSUM; /* header CRC, section CRC or fingerprint */
}

static void test_bit_flips(const uint8_t *file, size_t len)
{
    uint8_t *b = malloc(len);
    memcpy(b, file, len);
    kvtc_error err;
    for (size_t off = 0; off < len; off++) {
        uint8_t bit = (uint8_t)(1u << (off % 8));
        b[off] ^= bit;
        uint32_t version = (uint32_t)b[8] | (uint32_t)b[9] << 8 | (uint32_t)b[10] << 16 |
                           (uint32_t)b[11] << 24;
        kvtc_status want = flip_expectation(off, version), got = load_status(b, len, &err);
        CHECK_MSG(got == want, "bit %u of byte %zu flipped: %s, want %s (%s)", (unsigned)(off % 8), off,
                  kvtc_status_string(got), kvtc_status_string(want), err.message);
        b[off] ^= bit;
    }
    free(b);
}

/* Valid checksums around invalid content: only validation stands in the way. */
static void test_forged(const uint8_t *file, size_t len)
{
    uint8_t *b = malloc(len);
    kvtc_error err;
    size_t sec0 = HEADER_BYTES, sec1 = HEADER_BYTES + section_bytes();
    size_t mean0 = sec0 + SECTION_FIXED_BYTES;
    size_t basis1 = sec1 + SECTION_FIXED_BYTES + 4 * P + 4 * RANK;
    size_t table1 = basis1 + 4 * P * RANK;
    const float nan = NAN, minus = -1.0f;
    const double dnan = NAN;
    struct {
        const char *what;
        size_t off;
        const void *bytes;
        size_t n;
        kvtc_status want;
    } cases[] = {
        {"version 3", 8, "\x03\0\0\0", 4, KVTC_E_VERSION},
        {"version 0", 8, "\0\0\0\0", 4, KVTC_E_FORMAT},
        {"rank > p", sec0 + 4, "\x21\0\0\0", 4, KVTC_E_FORMAT},
        {"rank 0", sec1 + 4, "\0\0\0\0", 4, KVTC_E_FORMAT},
        {"kind tag", sec1, "\0\0\0\0", 4, KVTC_E_FORMAT},
        {"no held-out rows", sec0 + 16, "\0\0\0\0", 4, KVTC_E_FORMAT},
        {"nan mean", mean0 + 8, &nan, 4, KVTC_E_FORMAT},
        {"nan basis", basis1 + 40, &nan, 4, KVTC_E_FORMAT},
        {"negative eigenvalue", mean0 + 4 * P + 4 * (RANK - 1), &minus, 4, KVTC_E_FORMAT},
        {"nan error table", table1 + 16, &dnan, 8, KVTC_E_FORMAT},
        {"3 kinds", 64, "\x03\0\0\0", 4, KVTC_E_FORMAT},
        {"rope style 7", 32, "\x07\0\0\0", 4, KVTC_E_UNSUPPORTED},
        {"0 layers", 20, "\0\0\0\0", 4, KVTC_E_FORMAT},
        {"rope_dims 0 (not normalized)", 36, "\0\0\0\0", 4, KVTC_E_FORMAT},
        {"file size + 1", 12, "\0", 0, KVTC_E_TRUNCATED}, /* patched below */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(b, file, len);
        if (cases[i].n)
            memcpy(b + cases[i].off, cases[i].bytes, cases[i].n);
        else
            b[12] = (uint8_t)(b[12] + 1);
        reseal(b, len);
        kvtc_status got = load_status(b, len, &err);
        CHECK_MSG(got == cases[i].want, "forged %s: %s, want %s (%s)", cases[i].what,
                  kvtc_status_string(got), kvtc_status_string(cases[i].want), err.message);
    }
    free(b);
}

static void test_files(const kvtc_calibration *cal, const uint8_t *file, size_t len)
{
    char path[4096], missing[4096], corrupt[4096];
    if (!CHECK(temp_path(path, sizeof path, "model.kvtcal") &&
               temp_path(missing, sizeof missing, "missing.kvtcal") &&
               temp_path(corrupt, sizeof corrupt, "corrupt.kvtcal")))
        return;
    kvtc_error err;
    CHECK_OK(kvtc_calibration_write(cal, path, &err), &err);
    void *disk = NULL;
    size_t disk_len = 0;
    CHECK_OK(kvtc_read_file(path, &disk, &disk_len, &err), &err);
    CHECK(disk_len == len && disk && memcmp(disk, file, len) == 0);
    kvtc_buffer_free(disk);
    kvtc_calibration *back = NULL;
    CHECK_OK(kvtc_calibration_read(path, &back, &err), &err);
    if (back)
        CHECK(memcmp(back->fingerprint, cal->fingerprint, 32) == 0);
    kvtc_calibration_free(back);

    CHECK_STATUS(kvtc_calibration_read(missing, &back, &err), KVTC_E_IO, &err);
    CHECK_MSG(strstr(err.message, missing) != NULL, "message does not name the path: %s",
              err.message);
    CHECK_OK(kvtc_write_file_atomic(corrupt, file, len - 1, &err), &err);
    CHECK_STATUS(kvtc_calibration_read(corrupt, &back, &err), KVTC_E_TRUNCATED, &err);
    CHECK_MSG(strstr(err.message, corrupt) != NULL, "message does not name the path: %s",
              err.message);
    CHECK(back == NULL);
}

/* A version 1 file (no lm types in its error table) still loads, saves back
 * to the same bytes, and its plans use only the types it measured. */
static void test_version1(const kvtc_calibration *cal, size_t v2_len)
{
    kvtc_calibration copy = *cal, *back = NULL;
    copy.file_version = 1;
    void *v1 = NULL, *again = NULL;
    size_t len = 0, again_len = 0;
    kvtc_error err;
    if (!CHECK_OK(kvtc_calibration_save(&copy, &v1, &len, &err), &err))
        return;
    size_t per_type = kvtc_err_table_len(RANK) / KVTC_QTYPE_COUNT;
    CHECK_EQ(len, v2_len - 2 * 8 * per_type * 3); /* two sections, 3 types fewer */
    CHECK_EQ(((const uint8_t *)v1)[8], 1);
    if (CHECK_OK(kvtc_calibration_load(v1, len, &back, &err), &err)) {
        CHECK_EQ(back->file_version, 1);
        for (int k = 0; k < 2; k++)
            for (size_t i = 0; i < kvtc_err_table_len(RANK); i++) {
                double want = cal->kind[k].err_table[i], got = back->kind[k].err_table[i];
                if (i % KVTC_QTYPE_COUNT >= 5)
                    CHECK_MSG(isinf(got), "v1 entry %zu of an lm type is %g, not infinite", i, got);
                else
                    CHECK_MSG(got == want, "v1 entry %zu: %g, saved %g", i, got, want);
            }
        if (CHECK_OK(kvtc_calibration_save(back, &again, &again_len, &err), &err))
            CHECK(again_len == len && memcmp(again, v1, len) == 0);
        for (double ratio = 1.5; ratio <= 64; ratio *= 2)
            for (int k = 0; k < 2; k++) {
                kvtc_plan *plan = NULL;
                if (!CHECK_OK(kvtc_plan_create(back, (kvtc_kind)k, ratio, &plan, &err), &err))
                    continue;
                for (uint32_t i = 0; i < kvtc_plan_group_count(plan); i++)
                    CHECK_MSG(kvtc_plan_groups(plan)[i].type < KVTC_Q_LM1,
                              "a v1 calibration's plan at ratio %g uses %s", ratio,
                              kvtc_qtype_name(kvtc_plan_groups(plan)[i].type));
                kvtc_plan_free(plan);
            }
    }
    kvtc_calibration_free(back);
    kvtc_buffer_free(v1);
    kvtc_buffer_free(again);
}

int main(void)
{
    kvtc_calibration *cal = make_calibration();
    if (!CHECK(cal != NULL))
        return test_summary("test_calib_file");
    void *file = NULL;
    size_t len = 0;
    kvtc_error err;
    if (CHECK_OK(kvtc_calibration_save(cal, &file, &len, &err), &err)) {
        test_round_trip(cal, file, len);
        test_fingerprint(cal);
        test_truncation(file, len);
        test_bit_flips(file, len);
        test_forged(file, len);
        test_files(cal, file, len);
        test_version1(cal, len);
    }
    kvtc_buffer_free(file);
    kvtc_calibration_free(cal);
    return test_summary("test_calib_file");
}
