/* Internal declarations shared by the files of libkvtc. Not installed. */
#ifndef KVTC_INTERNAL_H
#define KVTC_INTERNAL_H

#include "kvtc.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>

/* ---- errors (error.c) --------------------------------------------------- */

/* Fills *err (if non-NULL) with status and a printf-formatted one-line message;
 * returns status so call sites can `return kvtc_fail(err, ...)`. */
kvtc_status kvtc_fail(kvtc_error *err, kvtc_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "path: <problem>", the path shortened in its middle when the whole would
 * not fit, so that the problem is never cut off. */
kvtc_status kvtc_fail_path(kvtc_error *err, kvtc_status status, const char *path,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Prefixes an existing message: "what: <old message>", shortened like
 * kvtc_fail_path's. Messages never carry control characters (they become '?'). */
kvtc_status kvtc_fail_prefix(kvtc_error *err, const char *prefix);
/* Replaces control characters (C0, DEL, C1 in UTF-8) with '?' in place. */
void kvtc_text_sanitize(char *s);
static inline void kvtc_error_clear(kvtc_error *err)
{
    if (err) {
        err->status = KVTC_OK;
        err->message[0] = '\0';
    }
}

/* ---- memory (alloc.c) ---------------------------------------------------- */

/* All library allocations go through these (see kvtc_set_allocator). They
 * return NULL on overflow of n*size as well as on failure. */
void *kvtc_malloc(size_t n);
void *kvtc_calloc(size_t n, size_t size);
void *kvtc_malloc_array(size_t n, size_t size);
void kvtc_free(void *p);
char *kvtc_strdup(const char *s);

/* ---- number formats (dtype.c) -------------------------------------------- */

#define KVTC_F16_MAX 65504.0f /* the largest finite fp16 */
uint16_t kvtc_f32_to_f16(float f); /* round to nearest even; overflow -> +-inf */
float kvtc_f16_to_f32(uint16_t h);
uint16_t kvtc_f32_to_bf16(float f); /* round to nearest even */
float kvtc_bf16_to_f32(uint16_t h);
uint8_t kvtc_f32_to_e4m3(float f); /* saturating to +-448, round to nearest even */
float kvtc_e4m3_to_f32(uint8_t b);
/* Converts n elements between a cache dtype and f32. */
void kvtc_to_f32(kvtc_dtype dtype, const void *src, float *dst, size_t n);
void kvtc_from_f32(kvtc_dtype dtype, const float *src, void *dst, size_t n);
bool kvtc_dtype_valid(kvtc_dtype dtype);

/* ---- caches (cache.c) ---------------------------------------------------- */

struct kvtc_cache {
    kvtc_model_shape shape;
    kvtc_dtype dtype;
    uint32_t n_tokens;
    int64_t pos0;
    char model[64];
    /* layer[kind * n_layer + l]: element (head h, token t, dim d) of that layer
     * at layer[...] + h * head_stride + t * token_stride + d * dtype size */
    unsigned char **layer;
    size_t head_stride, token_stride; /* bytes */
    /* the cache's own [kind][layer][head][token][dim] memory; NULL when it
     * wraps the caller's (kvtc_cache_wrap) */
    unsigned char *data;
    int32_t *token_ids; /* n_tokens ids, or NULL when the cache carries none */
};

/* The head vector (head_dim elements, contiguous) of token t, head h, layer l. */
static inline unsigned char *kvtc_cache_row(const kvtc_cache *c, kvtc_kind kind, uint32_t l,
                                            uint32_t h, uint32_t t)
{
    return c->layer[(size_t)kind * c->shape.n_layer + l] + h * c->head_stride +
           (size_t)t * c->token_stride;
}
/* True when every layer is [head][token][dim] without gaps (kvtc_cache_create's layout). */
bool kvtc_cache_is_packed(const kvtc_cache *cache);
/* `cache` itself when it is packed, otherwise a packed copy in *copy (freed by
 * the caller) so that a layer can be written out as one span. */
kvtc_status kvtc_cache_packed(const kvtc_cache *cache, const kvtc_cache **packed,
                              kvtc_cache **copy, kvtc_error *err);

/* Checks a shape for sane, non-overflowing dimensions and rope settings. */
kvtc_status kvtc_shape_check(const kvtc_model_shape *shape, kvtc_error *err);
bool kvtc_shape_equal(const kvtc_model_shape *a, const kvtc_model_shape *b);
/* rope_dims with 0 resolved to head_dim, rope_freq_scale 0 resolved to 1. */
kvtc_model_shape kvtc_shape_normalized(const kvtc_model_shape *shape);

/* Feature rows: row t of `rows` ([n][p] f32, p = kvtc_shape_features) is token
 * t0 + t of the cache, all layers x heads x dims concatenated; keys with RoPE
 * undone at their true positions. */
void kvtc_cache_gather_rows(const kvtc_cache *cache, kvtc_kind kind, uint32_t t0, uint32_t n,
                            float *rows);
/* The inverse: writes rows back into tokens [t0, t0+n), re-applying RoPE to
 * keys and converting to the cache dtype. */
void kvtc_cache_scatter_rows(kvtc_cache *cache, kvtc_kind kind, uint32_t t0, uint32_t n,
                             const float *rows);
/* Copies tokens [src_t0, src_t0+n) of every layer/head/kind, bytes as they are. */
void kvtc_cache_copy_tokens(kvtc_cache *dst, uint32_t dst_t0, const kvtc_cache *src,
                            uint32_t src_t0, uint32_t n);
/* Copies every token of one layer (both kinds), bytes as they are; same heads,
 * head_dim, dtype and n_tokens. */
void kvtc_cache_copy_layer(kvtc_cache *dst, uint32_t dst_layer, const kvtc_cache *src,
                           uint32_t src_layer);
/* Copies n tokens of one head of one layer between a cache and a buffer of n
 * contiguous head vectors. */
void kvtc_cache_head_io(kvtc_cache *c, kvtc_kind kind, uint32_t l, uint32_t h, uint32_t t0,
                        uint32_t n, void *buf, bool into_buf);

/* ---- rotary embedding (rope.c) ------------------------------------------- */

/* Angles of position pos: rope_dims/2 cosines and sines (computed in double). */
void kvtc_rope_angles(const kvtc_model_shape *shape, int64_t pos, float *cos_out, float *sin_out);
/* The same split in two, for many positions: the rope_dims/2 frequencies once
 * (freq needs room for 512), then each position's angles, bit-identical. */
void kvtc_rope_freqs(const kvtc_model_shape *shape, double *freq);
void kvtc_rope_angles_at(const kvtc_model_shape *shape, const double *freq, int64_t pos,
                         float *cos_out, float *sin_out);
/* Rotates one head vector (head_dim floats) by precomputed angles; inverse
 * undoes it (exact up to float rounding). No-op for KVTC_ROPE_NONE. */
void kvtc_rope_apply(const kvtc_model_shape *shape, float *head, const float *cos_t,
                     const float *sin_t, bool inverse);
/* Convenience: angles + apply for one head. */
void kvtc_rope_rotate(const kvtc_model_shape *shape, float *head, int64_t pos, bool inverse);

/* ---- quantization (quant.c) ---------------------------------------------- */

#define KVTC_GROUP_SIZE_COUNT 5
extern const uint32_t kvtc_group_sizes[KVTC_GROUP_SIZE_COUNT]; /* 1, 16, 64, 256, 1024 */
/* Metadata bits per token of a non-dropped group: fp16 shift + fp16 scale (32),
 * or the lm types' fp16 scale alone (16); 0 for KVTC_Q_NONE. */
uint32_t kvtc_qtype_overhead_bits(kvtc_qtype t);
bool kvtc_qtype_is_lm(kvtc_qtype t);
/* Bits per token of a group: size * bits + overhead (0 for KVTC_Q_NONE). */
uint32_t kvtc_group_bits(uint32_t size, kvtc_qtype t);
/* Whether a group of `size` may use type t (the lm types need 16 or more). */
bool kvtc_qtype_size_ok(kvtc_qtype t, uint32_t size);
/* The 2^bits ascending levels of an lm type (NULL for any other type). */
const float *kvtc_lm_levels(kvtc_qtype t);
/* An lm scale a decoder accepts: finite and non-negative (what encoders write). */
bool kvtc_lm_scale_valid(uint16_t scale);

/* Quantizes one token's group of n values: fp16 shift and scale, one code per
 * value (codes[i] < 2^bits); the lm types set shift to 0 and do not store it.
 * For KVTC_Q_NONE nothing is written. */
void kvtc_quant_group(kvtc_qtype type, const float *x, uint32_t n, uint16_t *shift,
                      uint16_t *scale, uint8_t *codes);
/* Reconstructs n values from shift, scale and codes (KVTC_Q_NONE gives zeros). */
void kvtc_dequant_group(kvtc_qtype type, uint16_t shift, uint16_t scale, const uint8_t *codes,
                        uint32_t n, float *out);
/* kvtc_dequant_group of an lm type straight from its packed codes (the
 * decoder's path: no unpacked copy); packed starts at a byte boundary. */
void kvtc_lm_dequant_packed(kvtc_qtype type, uint16_t scale, const uint8_t *packed, uint32_t n,
                            float *out);
/* Squared error of quantizing then dequantizing x exactly as the codec does. */
double kvtc_quant_group_error(kvtc_qtype type, const float *x, uint32_t n);
bool kvtc_qtype_valid(uint32_t type);
int kvtc_group_size_index(uint32_t size); /* -1 if not an allowed size */

/* ---- calibrations (calibrate.c, pca.c, calib_file.c) --------------------- */

struct kvtc_calib_kind {
    uint32_t rank;          /* basis columns kept */
    uint64_t rows;          /* rows the covariance was fitted on */
    uint32_t n_heldout;     /* rows the error table was measured on */
    float *mean;            /* [p] */
    float *basis;           /* [p][rank] row-major; column j = j-th principal direction */
    float *eigenvalues;     /* [rank], decreasing */
    double total_variance;  /* trace of the covariance over all p features */
    double heldout_energy;  /* sum over held-out rows of ||x - mean||^2 over all p features */
    double *err_table;      /* see kvtc_err_table_index; kvtc_err_table_len(rank) entries */
};

/* .kvtcal versions: 1 has the error table of types 0..4; 2 (what calibrating
 * writes) of all KVTC_QTYPE_COUNT. In memory the table always has every type;
 * a version 1 file's lm entries are INFINITY, so the DP never picks them. */
#define KVTC_CALIB_VERSION 2u
#define KVTC_CALIB_V1_QTYPES 5u

struct kvtc_calibration {
    uint32_t file_version;  /* 1 or 2: saving writes this version (0: the current one) */
    kvtc_model_shape shape; /* normalized */
    uint32_t sinks, window;
    struct kvtc_calib_kind kind[2];
    uint8_t fingerprint[32];
    /* The basis packed for the bf16 tile product, made on first use
     * (transform.c); freed with the calibration. */
    struct kvtc_tile_basis *tiles[2];
};

/* Error table: for every allowed group size g (index si), every start that is a
 * multiple of g with start + g <= rank, and every qtype: the summed squared
 * error over held-out rows of coding that group with that type (KVTC_Q_NONE:
 * the group's energy). */
size_t kvtc_err_table_len(uint32_t rank);
size_t kvtc_err_table_index(uint32_t rank, int size_index, uint32_t start, kvtc_qtype type);
/* Fills cal->fingerprint: SHA-256 of the canonical serialization. */
kvtc_status kvtc_calibration_compute_fingerprint(kvtc_calibration *cal, kvtc_error *err);
void kvtc_calib_kind_release(struct kvtc_calib_kind *k);

/* ---- plans (dp.c) --------------------------------------------------------- */

struct kvtc_plan {
    kvtc_kind kind;
    uint32_t p;              /* features of the kind */
    uint32_t budget_bits;    /* floor(16 p / ratio) */
    uint32_t bits_per_token; /* spent by the groups */
    uint32_t n_coords;       /* basis columns used: end of the last non-empty group */
    uint32_t n_groups;
    kvtc_group *groups;
    double ratio;
    double predicted_error;  /* relative, from the error table; -1 if unknown */
};

/* Builds a plan from explicit groups (read from a stream): checks sizes,
 * alignment, contiguity from 0, types, and n_coords <= max_coords. */
kvtc_status kvtc_plan_from_groups(kvtc_kind kind, uint32_t p, double ratio, uint32_t budget_bits,
                                  const kvtc_group *groups, uint32_t n_groups,
                                  uint32_t max_coords, kvtc_plan **out, kvtc_error *err);

/* ---- bits and DEFLATE (pack.c, entropy.c) --------------------------------- */

/* Packs n codes of `bits` bits each (2, 4 or 8), LSB-first, into ceil(n*bits/8) bytes. */
void kvtc_pack_bits(const uint8_t *codes, size_t n, uint32_t bits, uint8_t *out);
void kvtc_unpack_bits(const uint8_t *in, size_t n, uint32_t bits, uint8_t *codes);

/* ---- checksums (checksum.c) ----------------------------------------------- */

uint32_t kvtc_crc32(const void *data, size_t len); /* libdeflate's CRC-32 */
void kvtc_sha256(const void *data, size_t len, uint8_t out[32]);
/* Told that data[0, upto) has been read and will not be read again. */
typedef void (*kvtc_consumed_fn)(const void *data, size_t upto);
void kvtc_sha256_stepwise(const void *data, size_t len, uint8_t out[32], kvtc_consumed_fn after);
/* Lower-case hex of the first n bytes into out (2n+1 chars). */
void kvtc_hex(const uint8_t *bytes, size_t n, char *out);

/* ---- UTF-8 (utf8.c) ------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (at most n bytes), storing its code
 * point; 0 if invalid (overlong, surrogate, above U+10FFFF, cut short). */
size_t kvtc_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
/* Writes cp (<= U+10FFFF) as 1 to 4 bytes; returns how many. */
size_t kvtc_utf8_encode(uint32_t cp, char *out);

/* ---- public structs that grow (versioned.c) ------------------------------- */

/* The smallest struct_size each growing struct had in a release: the size of
 * its first version. Raise none of these; a new field goes at the end. */
#define KVTC_CALIB_OPTIONS_V1_SIZE sizeof(kvtc_calib_options)
#define KVTC_COMPRESS_OPTIONS_V1_SIZE offsetof(kvtc_compress_options, ratio_mode)
#define KVTC_DECOMPRESS_OPTIONS_V1_SIZE sizeof(kvtc_decompress_options)
#define KVTC_STREAM_INFO_V1_SIZE offsetof(kvtc_stream_info, has_token_ids)

/* `full` holds the defaults; the caller's struct_size bytes of `given` are
 * copied over them. `what` names the struct in the error message. */
kvtc_status kvtc_struct_in(void *full, size_t full_size, size_t min_size, const void *given,
                           const char *what, kvtc_error *err);
/* Copies `full` into the caller's struct, as many bytes as its struct_size says. */
kvtc_status kvtc_struct_out(void *given, const void *full, size_t full_size, size_t min_size,
                            const char *what, kvtc_error *err);

/* ---- little-endian byte I/O (bytes.c) ------------------------------------ */

typedef struct kvtc_writer {
    unsigned char *buf;
    size_t len, cap;
    bool failed; /* an allocation failed; everything after is dropped */
} kvtc_writer;

void kvtc_writer_init(kvtc_writer *w);
void kvtc_writer_free(kvtc_writer *w);
void kvtc_put_bytes(kvtc_writer *w, const void *p, size_t n);
void kvtc_put_u8(kvtc_writer *w, uint8_t v);
void kvtc_put_u16(kvtc_writer *w, uint16_t v);
void kvtc_put_u32(kvtc_writer *w, uint32_t v);
void kvtc_put_u64(kvtc_writer *w, uint64_t v);
void kvtc_put_f32(kvtc_writer *w, float v);
void kvtc_put_f64(kvtc_writer *w, double v);
/* printf-style text, any length (a formatting error marks the writer failed). */
void kvtc_put_textv(kvtc_writer *w, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

typedef struct kvtc_reader {
    const unsigned char *p;
    size_t len, pos;
    bool overrun; /* a read went past the end; reads then return 0 */
} kvtc_reader;

void kvtc_reader_init(kvtc_reader *r, const void *p, size_t len);

/* A whole regular file mapped read-only (fileio.c), for loaders that copy what
 * they read: kvtc_release_pages lets the pages behind them go from the
 * resident set (they stay in the page cache), so a load peaks near the size
 * of what it builds rather than twice that. */
kvtc_status kvtc_map_file(const char *path, const void **data, size_t *len, kvtc_error *err);
/* Opens a regular file for reading (a directory, FIFO or device is refused
 * without blocking); its size through *size. -1 with err set on failure. */
int kvtc_open_regular(const char *path, size_t *size, kvtc_error *err);
void kvtc_unmap_file(const void *data, size_t len);
void kvtc_release_pages(const void *data, size_t upto); /* a kvtc_consumed_fn */
const void *kvtc_get_bytes(kvtc_reader *r, size_t n); /* NULL on overrun */
uint8_t kvtc_get_u8(kvtc_reader *r);
uint16_t kvtc_get_u16(kvtc_reader *r);
uint32_t kvtc_get_u32(kvtc_reader *r);
uint64_t kvtc_get_u64(kvtc_reader *r);
float kvtc_get_f32(kvtc_reader *r);
double kvtc_get_f64(kvtc_reader *r);
static inline size_t kvtc_reader_left(const kvtc_reader *r) { return r->len - r->pos; }

/* ---- files (fileio.c) ---------------------------------------------------- */

/* One piece of a file written by kvtc_write_parts_atomic. */
typedef struct kvtc_span {
    const void *data;
    size_t len;
} kvtc_span;

/* An output file written piece by piece (see fileio.c for where the bytes
 * go until commit). open, then write any number of times, then commit or
 * abort; a failed write or commit aborts by itself. */
typedef struct kvtc_outfile {
    const char *path; /* as given, for messages */
    char *dest;       /* where it lands (symbolic links resolved) */
    char *tmp;        /* the temporary file; NULL when written directly */
    int fd, slot;
    bool direct;      /* a device or FIFO, written in place */
} kvtc_outfile;
kvtc_status kvtc_outfile_open(kvtc_outfile *f, const char *path, kvtc_error *err);
kvtc_status kvtc_outfile_write(kvtc_outfile *f, const void *data, size_t len, kvtc_error *err);
kvtc_status kvtc_outfile_commit(kvtc_outfile *f, kvtc_error *err);
void kvtc_outfile_abort(kvtc_outfile *f);

/* kvtc_write_file_atomic for a file made of n consecutive parts, written
 * without first copying them into one buffer. */
kvtc_status kvtc_write_parts_atomic(const char *path, const kvtc_span *parts, size_t n,
                                    kvtc_error *err);

/* ---- threads (threadpool.c) ----------------------------------------------- */

/* Runs fn(user, i) for i in [0, n) on up to n_threads threads (the caller's
 * thread included) and waits. Items are independent; which thread runs which
 * item never changes results. Each call gets its own error slot; the failure
 * of the lowest item index is returned and copied to *err. Once an item fails,
 * items not yet started are skipped. */
typedef kvtc_status (*kvtc_task_fn)(void *user, uint32_t item, kvtc_error *err);
kvtc_status kvtc_parallel_for(uint32_t n, uint32_t n_threads, kvtc_task_fn fn, void *user,
                              kvtc_error *err);

#endif /* KVTC_INTERNAL_H */
