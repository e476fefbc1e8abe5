/* The .kvtcal calibration file (docs/FORMAT.md, section 2): a CRC-checked header,
 * one CRC-checked section per kind, and a SHA-256 fingerprint of everything
 * before it. Loading checks the fingerprint before interpreting any section,
 * then validates every field before allocating. */
#include "kvtc_internal.h"
#include "transform.h"

#include <math.h>
#include <string.h>

static const unsigned char MAGIC[8] = {0x89, 'K', 'V', 'T', 'C', 'A', 'L', '\n'};
#define HEADER_BYTES 72u        /* magic .. header CRC */
#define SECTION_FIXED_BYTES 36u /* kind .. heldout_energy */
#define FINGERPRINT_BYTES 32u
#define N_KINDS 2u

/* Error table entries per (size, start) in a file of this version. */
static uint32_t file_qtypes(uint32_t version)
{
    return version == 1 ? KVTC_CALIB_V1_QTYPES : KVTC_QTYPE_COUNT;
}

static uint32_t file_version(const kvtc_calibration *cal)
{
    return cal->file_version ? cal->file_version : KVTC_CALIB_VERSION;
}

static uint64_t section_bytes(uint32_t p, uint32_t rank, uint32_t version)
{
    return SECTION_FIXED_BYTES + 4ull * p + 4ull * rank + 4ull * p * rank +
           8ull * kvtc_err_table_len(rank) / KVTC_QTYPE_COUNT * file_qtypes(version) + 4u;
}

void kvtc_calib_kind_release(struct kvtc_calib_kind *k)
{
    kvtc_free(k->mean);
    kvtc_free(k->basis);
    kvtc_free(k->eigenvalues);
    kvtc_free(k->err_table);
    memset(k, 0, sizeof *k);
}

void kvtc_calibration_free(kvtc_calibration *cal)
{
    if (!cal)
        return;
    for (int k = 0; k < 2; k++)
        kvtc_calib_kind_release(&cal->kind[k]);
    kvtc_transform_release_tiles(cal);
    kvtc_free(cal);
}

/* ---- writing ------------------------------------------------------------------ */

static void put_f32s(kvtc_writer *w, const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kvtc_put_f32(w, v[i]);
}

static void put_crc_since(kvtc_writer *w, size_t start)
{
    kvtc_put_u32(w, w->failed ? 0 : kvtc_crc32(w->buf + start, w->len - start));
}

/* Everything but the fingerprint. */
static kvtc_status serialize_body(const kvtc_calibration *cal, kvtc_writer *w, kvtc_error *err)
{
    const kvtc_model_shape *s = &cal->shape;
    uint32_t p = (uint32_t)kvtc_shape_features(s);
    uint32_t version = file_version(cal), n_types = file_qtypes(version);
    uint64_t file_size = HEADER_BYTES + FINGERPRINT_BYTES;
    for (int k = 0; k < 2; k++)
        file_size += section_bytes(p, cal->kind[k].rank, version);
    kvtc_writer_init(w);
    kvtc_put_bytes(w, MAGIC, sizeof MAGIC);
    kvtc_put_u32(w, version);
    kvtc_put_u64(w, file_size);
    kvtc_put_u32(w, s->n_layer);
    kvtc_put_u32(w, s->n_kv_head);
    kvtc_put_u32(w, s->head_dim);
    kvtc_put_u32(w, (uint32_t)s->rope_style);
    kvtc_put_u32(w, s->rope_dims);
    kvtc_put_f64(w, s->rope_theta);
    kvtc_put_f64(w, s->rope_freq_scale);
    kvtc_put_u32(w, cal->sinks);
    kvtc_put_u32(w, cal->window);
    kvtc_put_u32(w, N_KINDS);
    put_crc_since(w, 0);
    for (uint32_t k = 0; k < N_KINDS; k++) {
        const struct kvtc_calib_kind *c = &cal->kind[k];
        size_t start = w->len;
        kvtc_put_u32(w, k);
        kvtc_put_u32(w, c->rank);
        kvtc_put_u64(w, c->rows);
        kvtc_put_u32(w, c->n_heldout);
        kvtc_put_f64(w, c->total_variance);
        kvtc_put_f64(w, c->heldout_energy);
        put_f32s(w, c->mean, p);
        put_f32s(w, c->eigenvalues, c->rank);
        put_f32s(w, c->basis, (size_t)p * c->rank);
        size_t n_err = kvtc_err_table_len(c->rank);
        for (size_t i = 0; i < n_err; i++)
            if (i % KVTC_QTYPE_COUNT < n_types)
                kvtc_put_f64(w, c->err_table[i]);
        put_crc_since(w, start);
    }
    if (w->failed) {
        kvtc_writer_free(w);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory serializing a calibration (%llu bytes)",
                         (unsigned long long)file_size);
    }
    return KVTC_OK;
}

kvtc_status kvtc_calibration_compute_fingerprint(kvtc_calibration *cal, kvtc_error *err)
{
    kvtc_writer w;
    kvtc_status st = serialize_body(cal, &w, err);
    if (st != KVTC_OK)
        return st;
    kvtc_sha256(w.buf, w.len, cal->fingerprint);
    kvtc_writer_free(&w);
    return KVTC_OK;
}

kvtc_status kvtc_calibration_save(const kvtc_calibration *cal, void **out, size_t *out_len,
                                  kvtc_error *err)
{
    if (!cal || !out || !out_len)
        return kvtc_fail(err, KVTC_E_INVALID, "no calibration or output given");
    *out = NULL;
    *out_len = 0;
    kvtc_writer w;
    kvtc_status st = serialize_body(cal, &w, err);
    if (st != KVTC_OK)
        return st;
    uint8_t digest[FINGERPRINT_BYTES];
    kvtc_sha256(w.buf, w.len, digest);
    kvtc_put_bytes(&w, digest, sizeof digest);
    if (w.failed) {
        kvtc_writer_free(&w);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory serializing a calibration");
    }
    *out = w.buf;
    *out_len = w.len;
    return KVTC_OK;
}

kvtc_status kvtc_calibration_write(const kvtc_calibration *cal, const char *path,
                                   kvtc_error *err)
{
    if (!path)
        return kvtc_fail(err, KVTC_E_INVALID, "no path given");
    void *buf;
    size_t len;
    kvtc_status st = kvtc_calibration_save(cal, &buf, &len, err);
    if (st != KVTC_OK) {
        kvtc_fail_prefix(err, path);
        return st;
    }
    st = kvtc_write_file_atomic(path, buf, len, err); /* its messages name the path */
    kvtc_buffer_free(buf);
    return st;
}

/* ---- reading ------------------------------------------------------------------ */

/* Reads n floats; false if any is not finite or (when nonneg) is negative. */
/* The reader of a load, and what to tell as it consumes a file mapping. */
typedef struct loader {
    kvtc_reader r;
    kvtc_consumed_fn consumed; /* NULL when the data is the caller's buffer */
} loader;

static bool get_f32s(loader *l, float *v, size_t n, bool nonneg)
{
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        v[i] = kvtc_get_f32(&l->r);
        ok &= isfinite(v[i]) && !(nonneg && v[i] < 0);
        if (l->consumed && (i & 0xfffff) == 0xfffff)
            l->consumed(l->r.p, l->r.pos);
    }
    return ok;
}

static bool finite_nonneg(double v) { return isfinite(v) && v >= 0; }

/* One kind's section at r's position; the fingerprint already matched, so a
 * bad field here means a malformed (not a corrupted) file. */
static kvtc_status load_section(loader *l, uint32_t kind, uint32_t p, uint32_t version,
                                size_t body_end, struct kvtc_calib_kind *c, kvtc_error *err)
{
    kvtc_reader *r = &l->r;
    const char *name = kind == KVTC_KEY ? "key" : "value";
    size_t start = r->pos;
    if (body_end - start < SECTION_FIXED_BYTES)
        return kvtc_fail(err, KVTC_E_FORMAT, "%s section runs past the end of the file", name);
    uint32_t tag = kvtc_get_u32(r), rank = kvtc_get_u32(r);
    uint64_t rows = kvtc_get_u64(r);
    uint32_t n_heldout = kvtc_get_u32(r);
    double total_variance = kvtc_get_f64(r), heldout_energy = kvtc_get_f64(r);
    if (tag != kind)
        return kvtc_fail(err, KVTC_E_FORMAT, "section %u is tagged as kind %u", kind, tag);
    if (rank < 1 || rank > p)
        return kvtc_fail(err, KVTC_E_FORMAT, "%s rank %u out of range 1..%u", name, rank, p);
    uint64_t size = section_bytes(p, rank, version);
    if (size > body_end - start)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "%s section of %llu bytes runs past the end of the file", name,
                         (unsigned long long)size);
    uint32_t crc = kvtc_crc32(r->p + start, (size_t)size - 4);
    uint32_t stored_crc;
    {
        kvtc_reader at_crc;
        kvtc_reader_init(&at_crc, r->p + start + size - 4, 4);
        stored_crc = kvtc_get_u32(&at_crc);
    }
    if (crc != stored_crc)
        return kvtc_fail(err, KVTC_E_CHECKSUM, "%s section CRC mismatch", name);
    if (rows < 2 || n_heldout < 1 || !finite_nonneg(total_variance) ||
        !finite_nonneg(heldout_energy))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "%s section has invalid statistics (rows %llu, held-out %u, variance "
                         "%g, energy %g)",
                         name, (unsigned long long)rows, n_heldout, total_variance,
                         heldout_energy);
    c->rank = rank;
    c->rows = rows;
    c->n_heldout = n_heldout;
    c->total_variance = total_variance;
    c->heldout_energy = heldout_energy;
    size_t n_err = kvtc_err_table_len(rank);
    c->mean = kvtc_malloc_array(p, sizeof(float));
    c->eigenvalues = kvtc_malloc_array(rank, sizeof(float));
    c->basis = kvtc_malloc_array((size_t)p * rank, sizeof(float));
    c->err_table = kvtc_malloc_array(n_err, sizeof(double));
    if (!c->mean || !c->eigenvalues || !c->basis || !c->err_table)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a %u x %u calibration", p, rank);
    if (!get_f32s(l, c->mean, p, false))
        return kvtc_fail(err, KVTC_E_FORMAT, "%s mean has a non-finite value", name);
    if (!get_f32s(l, c->eigenvalues, rank, true))
        return kvtc_fail(err, KVTC_E_FORMAT, "%s eigenvalues must be finite and >= 0", name);
    for (uint32_t j = 1; j < rank; j++)
        if (c->eigenvalues[j] > c->eigenvalues[j - 1])
            return kvtc_fail(err, KVTC_E_FORMAT, "%s eigenvalues are not in decreasing order",
                             name);
    if (!get_f32s(l, c->basis, (size_t)p * rank, false))
        return kvtc_fail(err, KVTC_E_FORMAT, "%s basis has a non-finite value", name);
    uint32_t n_types = file_qtypes(version);
    for (size_t i = 0, in_file = 0; i < n_err; i++) {
        if (i % KVTC_QTYPE_COUNT >= n_types) {
            c->err_table[i] = INFINITY; /* a type the file predates: never chosen */
            continue;
        }
        if (!finite_nonneg(c->err_table[i] = kvtc_get_f64(r)))
            return kvtc_fail(err, KVTC_E_FORMAT, "%s error table entry %zu is %g", name,
                             in_file, c->err_table[i]);
        in_file++;
    }
    kvtc_get_u32(r); /* the CRC, checked above */
    return KVTC_OK;
}

static kvtc_status load_header(loader *l, kvtc_calibration *cal, uint64_t *file_size,
                               kvtc_error *err)
{
    kvtc_reader *r = &l->r;
    size_t len = r->len;
    size_t have = len < sizeof MAGIC ? len : sizeof MAGIC;
    if (memcmp(r->p, MAGIC, have) != 0)
        return kvtc_fail(err, KVTC_E_FORMAT, "not a kvtc calibration file (bad magic)");
    if (len < sizeof MAGIC + 4)
        return kvtc_fail(err, KVTC_E_TRUNCATED, "calibration file of %zu bytes is truncated",
                         len);
    kvtc_get_bytes(r, sizeof MAGIC);
    uint32_t version = kvtc_get_u32(r);
    if (version > KVTC_CALIB_VERSION)
        return kvtc_fail(err, KVTC_E_VERSION,
                         "calibration format version %u is newer than this library's %u",
                         version, KVTC_CALIB_VERSION);
    if (version == 0)
        return kvtc_fail(err, KVTC_E_FORMAT, "calibration format version 0 is invalid");
    if (len < HEADER_BYTES)
        return kvtc_fail(err, KVTC_E_TRUNCATED, "calibration header truncated (%zu bytes)", len);
    cal->file_version = version;
    *file_size = kvtc_get_u64(r);
    kvtc_model_shape s;
    s.n_layer = kvtc_get_u32(r);
    s.n_kv_head = kvtc_get_u32(r);
    s.head_dim = kvtc_get_u32(r);
    s.rope_style = (kvtc_rope_style)kvtc_get_u32(r);
    s.rope_dims = kvtc_get_u32(r);
    s.rope_theta = kvtc_get_f64(r);
    s.rope_freq_scale = kvtc_get_f64(r);
    cal->sinks = kvtc_get_u32(r);
    cal->window = kvtc_get_u32(r);
    uint32_t n_kinds = kvtc_get_u32(r);
    uint32_t crc = kvtc_crc32(r->p, r->pos);
    if (kvtc_get_u32(r) != crc)
        return kvtc_fail(err, KVTC_E_CHECKSUM, "calibration header CRC mismatch");
    if (*file_size < HEADER_BYTES + FINGERPRINT_BYTES)
        return kvtc_fail(err, KVTC_E_FORMAT, "calibration file size field %llu is too small",
                         (unsigned long long)*file_size);
    if (len < *file_size)
        return kvtc_fail(err, KVTC_E_TRUNCATED,
                         "calibration file is truncated: %zu of %llu bytes", len,
                         (unsigned long long)*file_size);
    if (len > *file_size)
        return kvtc_fail(err, KVTC_E_FORMAT, "calibration file has %llu trailing bytes",
                         (unsigned long long)(len - *file_size));
    uint8_t digest[FINGERPRINT_BYTES];
    kvtc_sha256_stepwise(r->p, len - FINGERPRINT_BYTES, digest, l->consumed);
    if (memcmp(digest, r->p + len - FINGERPRINT_BYTES, FINGERPRINT_BYTES) != 0)
        return kvtc_fail(err, KVTC_E_CHECKSUM, "calibration fingerprint mismatch");
    memcpy(cal->fingerprint, digest, FINGERPRINT_BYTES);

    kvtc_error why;
    kvtc_status st = kvtc_shape_check(&s, &why);
    if (st != KVTC_OK)
        return kvtc_fail(err, st == KVTC_E_INVALID ? KVTC_E_FORMAT : st, "calibration header: %s",
                         why.message);
    cal->shape = kvtc_shape_normalized(&s);
    /* Only the normalized form is canonical: anything else would load and re-save differently. */
    if (cal->shape.rope_dims != s.rope_dims || cal->shape.rope_theta != s.rope_theta ||
        cal->shape.rope_freq_scale != s.rope_freq_scale)
        return kvtc_fail(err, KVTC_E_FORMAT, "calibration shape is not in normalized form");
    if (n_kinds != N_KINDS)
        return kvtc_fail(err, KVTC_E_FORMAT, "calibration has %u kinds (expected %u)", n_kinds,
                         N_KINDS);
    return KVTC_OK;
}

static kvtc_status load(const void *data, size_t len, kvtc_consumed_fn consumed,
                        kvtc_calibration **out, kvtc_error *err)
{
    if (!out || (!data && len))
        return kvtc_fail(err, KVTC_E_INVALID, "no data or output given");
    *out = NULL;
    kvtc_calibration *cal = kvtc_calloc(1, sizeof *cal);
    if (!cal)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a calibration");
    loader l = {.consumed = consumed};
    kvtc_reader_init(&l.r, data, len);
    uint64_t file_size = 0;
    kvtc_status st = load_header(&l, cal, &file_size, err);
    uint32_t p = (uint32_t)kvtc_shape_features(&cal->shape);
    size_t body_end = (size_t)file_size - FINGERPRINT_BYTES;
    for (uint32_t k = 0; k < N_KINDS && st == KVTC_OK; k++)
        st = load_section(&l, k, p, cal->file_version, body_end, &cal->kind[k], err);
    if (st == KVTC_OK && l.r.pos != body_end)
        st = kvtc_fail(err, KVTC_E_FORMAT, "calibration has %zu unexplained bytes",
                       body_end - l.r.pos);
    if (st != KVTC_OK) {
        kvtc_calibration_free(cal);
        return st;
    }
    *out = cal;
    return KVTC_OK;
}

kvtc_status kvtc_calibration_load(const void *data, size_t len, kvtc_calibration **out,
                                  kvtc_error *err)
{
    return load(data, len, NULL, out, err);
}

kvtc_status kvtc_calibration_read(const char *path, kvtc_calibration **out, kvtc_error *err)
{
    if (!path || !out)
        return kvtc_fail(err, KVTC_E_INVALID, "no path or output given");
    *out = NULL;
    const void *map;
    size_t len;
    kvtc_status st = kvtc_map_file(path, &map, &len, err);
    if (st != KVTC_OK)
        return st;
    /* Mapped, its pages let go as they are copied: reading the file into a
     * buffer first would double the peak of every command that loads one. */
    st = load(map, len, kvtc_release_pages, out, err);
    kvtc_unmap_file(map, len);
    if (st != KVTC_OK)
        kvtc_fail_prefix(err, path);
    return st;
}

/* ---- accessors ------------------------------------------------------------------ */

static const struct kvtc_calib_kind *kind_of(const kvtc_calibration *cal, kvtc_kind kind)
{
    return cal && (kind == KVTC_KEY || kind == KVTC_VALUE) ? &cal->kind[kind] : NULL;
}

const kvtc_model_shape *kvtc_calibration_shape(const kvtc_calibration *cal)
{
    return cal ? &cal->shape : NULL;
}
uint32_t kvtc_calibration_sinks(const kvtc_calibration *cal) { return cal ? cal->sinks : 0; }
uint32_t kvtc_calibration_window(const kvtc_calibration *cal) { return cal ? cal->window : 0; }
const uint8_t *kvtc_calibration_fingerprint(const kvtc_calibration *cal)
{
    return cal ? cal->fingerprint : NULL;
}

uint32_t kvtc_calibration_rank(const kvtc_calibration *cal, kvtc_kind kind)
{
    const struct kvtc_calib_kind *k = kind_of(cal, kind);
    return k ? k->rank : 0;
}

uint64_t kvtc_calibration_rows(const kvtc_calibration *cal, kvtc_kind kind)
{
    const struct kvtc_calib_kind *k = kind_of(cal, kind);
    return k ? k->rows : 0;
}

const float *kvtc_calibration_eigenvalues(const kvtc_calibration *cal, kvtc_kind kind)
{
    const struct kvtc_calib_kind *k = kind_of(cal, kind);
    return k ? k->eigenvalues : NULL;
}

double kvtc_calibration_total_variance(const kvtc_calibration *cal, kvtc_kind kind)
{
    const struct kvtc_calib_kind *k = kind_of(cal, kind);
    return k ? k->total_variance : 0.0;
}
