/*
 * kvtc.h — KV-cache transform coding (KVTC) as a C library.
 *
 * The one public header of libkvtc. The data path is:
 *
 *   calibrate (once per model):  caches -> kvtc_calibrator -> kvtc_calibration (.kvtcal)
 *   compress:   kvtc_cache + calibration + ratio -> .kvtc bytes
 *   decompress: .kvtc bytes + calibration        -> kvtc_cache (or layer by layer)
 *
 * Conventions
 * - Every function that can fail returns a kvtc_status (KVTC_OK == 0, errors < 0)
 *   and fills the optional caller-owned `kvtc_error *err` (may be NULL) with the
 *   status and a one-line message naming the problem; objects it makes come back
 *   through an out-parameter, set to NULL on failure. The library never prints,
 *   exits or aborts.
 * - Structs that may gain fields in later versions (options, stream info) start
 *   with `size_t struct_size`, which the caller sets to sizeof the struct it was
 *   compiled with (the *_default() functions do it). The library reads and
 *   writes only that many bytes, so a program built against an older header
 *   keeps working with a newer library; a struct_size the library does not know
 *   (0, or larger than its own) is refused with KVTC_E_INVALID.
 * - Handles are opaque, created and freed by the library. Buffers returned through
 *   `void **out` are freed with kvtc_buffer_free().
 * - Thread safety: a kvtc_calibration is immutable once made and may be shared by
 *   any number of threads compressing and decompressing at once. A kvtc_cache or
 *   kvtc_calibrator must not be used by two threads at once. Functions without a
 *   handle are thread-safe unless stated otherwise.
 * - Output is deterministic: the same input, calibration and options give the
 *   same bytes whatever n_threads is.
 */
#ifndef KVTC_H
#define KVTC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVTC_BUILDING_SHARED)
#define KVTC_API __attribute__((visibility("default")))
#else
#define KVTC_API
#endif

#define KVTC_VERSION_MAJOR 0
#define KVTC_VERSION_MINOR 1
#define KVTC_VERSION_PATCH 0
#define KVTC_VERSION_STRING "0.1.0"

/* Version of the library actually linked (may differ from the header's). */
KVTC_API const char *kvtc_version(void);

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

typedef enum kvtc_status {
    KVTC_OK = 0,
    KVTC_E_INVALID = -1,     /* bad argument or option from the caller */
    KVTC_E_NOMEM = -2,       /* an allocation failed */
    KVTC_E_IO = -3,          /* open/read/write/rename failed */
    KVTC_E_FORMAT = -4,      /* not a valid file of this kind (magic, field out of range) */
    KVTC_E_TRUNCATED = -5,   /* the data ends before the format says it should */
    KVTC_E_CHECKSUM = -6,    /* a CRC32 or fingerprint does not match: corrupt data */
    KVTC_E_VERSION = -7,     /* written by a newer, incompatible format version */
    KVTC_E_MISMATCH = -8,    /* calibration, model shape or positions do not match */
    KVTC_E_UNSUPPORTED = -9, /* valid but not supported (dtype, rope style, ...) */
    KVTC_E_NUMERIC = -10,    /* non-finite input, or the eigensolver failed */
    KVTC_E_CANCELLED = -11,  /* a callback asked to stop */
    KVTC_E_LIMIT = -12       /* the result would exceed a limit the caller set */
} kvtc_status;

typedef struct kvtc_error {
    kvtc_status status;
    char message[256]; /* one line, no trailing newline */
} kvtc_error;

/* Short constant name of a status, e.g. "checksum mismatch". Never NULL. */
KVTC_API const char *kvtc_status_string(kvtc_status status);

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */

typedef struct kvtc_allocator {
    void *(*malloc_fn)(size_t size, void *user);
    void (*free_fn)(void *ptr, void *user);
    void *user;
} kvtc_allocator;

/* Route every allocation the library makes (and libdeflate's) through `a`;
 * NULL restores malloc/free. Process-wide: call it before any other kvtc
 * function and never while one runs. Not thread-safe. */
KVTC_API void kvtc_set_allocator(const kvtc_allocator *a);

/* Frees a buffer returned by the library (compressed streams, saved files). */
KVTC_API void kvtc_buffer_free(void *buf);

/* Progress of long work: stage is a constant string ("calibrate", "eigen",
 * "error table", "compress", "decompress"); done <= total. Called from the
 * thread that called the library function. */
typedef void (*kvtc_progress_fn)(void *user, const char *stage, uint64_t done, uint64_t total);

/* ------------------------------------------------------------------------ */
/* Model shape and KV caches                                                 */

typedef enum kvtc_rope_style {
    KVTC_ROPE_NONE = 0,        /* keys carry no rotary embedding */
    KVTC_ROPE_INTERLEAVED = 1, /* pairs (x[2i], x[2i+1]): llama2.c, GGUF llama "norm" */
    KVTC_ROPE_NEOX = 2         /* pairs (x[i], x[i + rope_dims/2]): NeoX, qwen2 */
} kvtc_rope_style;

/* Limits every function checks (one definition each). */
#define KVTC_MAX_ROPE_DIMS 1024              /* rotated dims per head */
#define KVTC_MAX_POSITION ((int64_t)1 << 40) /* largest token position */
#define KVTC_MAX_THREADS 64                  /* larger n_threads act as this */

typedef struct kvtc_model_shape {
    uint32_t n_layer;
    uint32_t n_kv_head;
    uint32_t head_dim;
    kvtc_rope_style rope_style;
    uint32_t rope_dims;     /* rotated dims per head, even, <= head_dim and
                               KVTC_MAX_ROPE_DIMS; 0 means head_dim */
    double rope_theta;      /* frequency base, e.g. 10000 */
    double rope_freq_scale; /* angle = pos * rope_freq_scale * theta^(-2i/rope_dims); 0 means 1 */
} kvtc_model_shape;

/* Features per token and kind: n_layer * n_kv_head * head_dim. */
KVTC_API uint64_t kvtc_shape_features(const kvtc_model_shape *shape);

typedef enum kvtc_dtype { KVTC_F32 = 0, KVTC_F16 = 1, KVTC_BF16 = 2 } kvtc_dtype;
KVTC_API size_t kvtc_dtype_size(kvtc_dtype dtype);
KVTC_API const char *kvtc_dtype_name(kvtc_dtype dtype); /* "F32", "F16", "BF16" */

typedef enum kvtc_kind { KVTC_KEY = 0, KVTC_VALUE = 1 } kvtc_kind;
KVTC_API const char *kvtc_kind_name(kvtc_kind kind); /* "keys", "values"; "?" otherwise */

/* A KV cache of one sequence: for every layer, keys and values of shape
 * [n_kv_head][n_tokens][head_dim] in `dtype`, row-major. Keys are post-RoPE, as
 * the model holds them; token t sits at position pos0 + t. */
typedef struct kvtc_cache kvtc_cache;

/* A zero-filled cache in *out. n_tokens may be 0. KVTC_E_INVALID for a bad
 * shape or pos0, KVTC_E_UNSUPPORTED for an unknown dtype, KVTC_E_NOMEM. */
KVTC_API kvtc_status kvtc_cache_create(const kvtc_model_shape *shape, kvtc_dtype dtype,
                                       uint32_t n_tokens, int64_t pos0, kvtc_cache **out,
                                       kvtc_error *err);
KVTC_API void kvtc_cache_free(kvtc_cache *cache);
KVTC_API const kvtc_model_shape *kvtc_cache_shape(const kvtc_cache *cache);
KVTC_API kvtc_dtype kvtc_cache_dtype(const kvtc_cache *cache);
KVTC_API uint32_t kvtc_cache_tokens(const kvtc_cache *cache);
KVTC_API int64_t kvtc_cache_pos0(const kvtc_cache *cache);
/* Pointer to layer `layer`'s keys or values, [n_kv_head][n_tokens][head_dim]
 * elements of the cache's dtype; NULL if layer is out of range. Owned by the
 * cache; for a wrapped cache, the caller's pointer for that layer, laid out as
 * its kvtc_cache_layout says. */
KVTC_API void *kvtc_cache_data(kvtc_cache *cache, kvtc_kind kind, uint32_t layer);
KVTC_API const void *kvtc_cache_data_const(const kvtc_cache *cache, kvtc_kind kind,
                                           uint32_t layer);
/* Caller memory as a cache, without a copy: how element (head h, token t,
 * dim d) of one layer's keys or values sits at `base + h * head_stride +
 * t * token_stride + d`, in elements of the cache's dtype. Head vectors are
 * contiguous (d has stride 1); strides over a single head or token are ignored.
 *   head-major  [n_kv_head][n_tokens][head_dim] (transformers, kvtc_cache_create):
 *               head_stride = n_tokens * head_dim, token_stride = head_dim
 *   token-major [n_tokens][n_kv_head][head_dim] (llama.cpp, vLLM and SGLang pages):
 *               head_stride = head_dim, token_stride = n_kv_head * head_dim
 * Larger strides (padding, a slice of a bigger buffer) are fine as long as
 * head vectors do not overlap. */
typedef struct kvtc_cache_layout {
    size_t struct_size;    /* sizeof(kvtc_cache_layout), set by the _default function */
    uint64_t head_stride;  /* elements between heads */
    uint64_t token_stride; /* elements between tokens */
} kvtc_cache_layout;

typedef enum kvtc_layout_order { KVTC_HEAD_MAJOR = 0, KVTC_TOKEN_MAJOR = 1 } kvtc_layout_order;

/* The gap-free strides of `order` for n_tokens tokens of `shape`, struct_size included. */
KVTC_API void kvtc_cache_layout_default(kvtc_cache_layout *layout, const kvtc_model_shape *shape,
                                        uint32_t n_tokens, kvtc_layout_order order);

/* A cache in *out over the caller's memory: keys[l] and values[l] (n_layer
 * pointers each, aligned to the dtype; NULL allowed only when n_tokens is 0)
 * point at element (0, 0, 0) of layer l, laid out as `layout` says for every
 * layer and both kinds. Layers may live in one stacked buffer or apart. The
 * memory is not copied and not freed by kvtc_cache_free; it must outlive the
 * cache. The library writes to it only through kvtc_cache_data and
 * kvtc_decompress_into, so read-only memory may be wrapped for compression
 * and calibration. KVTC_E_INVALID for a bad shape, pos0, pointer or strides
 * that make head vectors overlap; KVTC_E_UNSUPPORTED for an unknown dtype.
 * Every function that takes a const kvtc_cache accepts a wrapped one; the
 * bytes they produce are the same as for a copy made with kvtc_cache_create. */
KVTC_API kvtc_status kvtc_cache_wrap(const kvtc_model_shape *shape, kvtc_dtype dtype,
                                     uint32_t n_tokens, int64_t pos0, void *const *keys,
                                     void *const *values, const kvtc_cache_layout *layout,
                                     kvtc_cache **out, kvtc_error *err);

/* Free-text model name carried in metadata ("" if unset). */
KVTC_API const char *kvtc_cache_model_name(const kvtc_cache *cache);
KVTC_API kvtc_status kvtc_cache_set_model_name(kvtc_cache *cache, const char *name,
                                               kvtc_error *err);
/* Token ids of the cache's tokens (the prompt that made it), n_tokens of them,
 * or NULL when it carries none. A cache with ids compresses into a stream that
 * keeps them (docs/FORMAT.md, flags bit 0) and decompresses with them. Set
 * copies n_tokens ids from `ids`; NULL removes them. A cache of 0 tokens
 * carries none. */
KVTC_API const int32_t *kvtc_cache_token_ids(const kvtc_cache *cache);
KVTC_API kvtc_status kvtc_cache_set_token_ids(kvtc_cache *cache, const int32_t *ids,
                                              kvtc_error *err);

/* Safetensors I/O. Tensors "layers.{i}.key" / "layers.{i}.value", shape
 * [n_kv_head, n_tokens, head_dim], dtype F32/F16/BF16 (all the same);
 * __metadata__ strings rope_theta, rope_style ("interleaved"|"neox"|"none"),
 * rope_dims, rope_freq_scale, pos0, model. Missing optional metadata takes the
 * documented default (rope_style interleaved, rope_dims head_dim, pos0 0). */
KVTC_API kvtc_status kvtc_cache_load_safetensors(const void *data, size_t len,
                                                 kvtc_cache **out, kvtc_error *err);
KVTC_API kvtc_status kvtc_cache_read_safetensors(const char *path, kvtc_cache **out,
                                                 kvtc_error *err);
KVTC_API kvtc_status kvtc_cache_save_safetensors(const kvtc_cache *cache, void **out,
                                                 size_t *out_len, kvtc_error *err);
/* Writes to a temporary file in the same folder, then renames it into place:
 * a failure never leaves a partial file under `path`. */
KVTC_API kvtc_status kvtc_cache_write_safetensors(const kvtc_cache *cache, const char *path,
                                                  kvtc_error *err);

/* llama.cpp sequence state (docs/FORMAT.md, section 4): the file of
 * llama_state_seq_save_file (magic "ggsq", version 3, the token ids, then the
 * sequence data), or the bare bytes of llama_state_seq_get_data, as llama-server's
 * --slot-save-path files are ggsq files. The state names no shape beyond layer
 * count and row widths, so the caller gives the model's (heads, head size,
 * RoPE; for GGUF models of arch llama and qwen2, llama.cpp's keys are post-RoPE
 * with the same convention kvtc's engine uses: interleaved for llama, NeoX for
 * qwen2). Supported: one sequence in one stream, consecutive positions, f32,
 * f16 or bf16 cells (the same for K and V in every layer), V in rows or
 * transposed. Anything else (quantized cells such as q8_0, cells shared by
 * several sequences, models with two KV caches, other versions, another
 * model's state, truncated or trailing bytes) is refused with a one-line error. */
typedef struct kvtc_llama_layout {
    size_t struct_size; /* sizeof(kvtc_llama_layout), set by the _default function */
    uint32_t ggsq;      /* 1: a ggsq file with token ids; 0: bare sequence data */
    uint32_t n_stream;  /* KV streams of the context (1 unless kv_unified is off) */
    uint32_t stream;    /* the stream holding the sequence's cells */
    uint32_t v_trans;   /* 1: V stored transposed (llama.cpp without flash attention) */
    int32_t seq_id;     /* sequence id stored with every cell */
    uint32_t server_tokens; /* ggsq token list: 0 the plain ids; 1 llama-server's packing
                               (-1, version 1, count, the ids, 0 media chunks) */
} kvtc_llama_layout;

/* Defaults for writing: a ggsq file, one stream, V in rows (flash attention,
 * llama.cpp's choice on CPU), sequence 0. */
KVTC_API void kvtc_llama_layout_default(kvtc_llama_layout *layout);
/* 1 when the bytes start with the ggsq magic, 2 with the magic of
 * llama_state_seq_get_data's bytes (d8 3c 14 af, then the sequence id), 0
 * otherwise. Looks at the first 4 bytes only. */
KVTC_API int kvtc_llama_state_detect(const void *data, size_t len);
/* A cache of the state's cells in *out, with the token ids of a ggsq file
 * (kvtc_cache_token_ids); pos0 is the first cell's position. `layout`, when
 * not NULL (struct_size set by the caller), receives how the state was laid
 * out, so that kvtc_llama_state_save can write it back byte for byte.
 * KVTC_E_MISMATCH for a state of another shape, KVTC_E_VERSION, KVTC_E_FORMAT,
 * KVTC_E_TRUNCATED, KVTC_E_UNSUPPORTED as above. _read prefixes the path. */
KVTC_API kvtc_status kvtc_llama_state_load(const void *data, size_t len,
                                           const kvtc_model_shape *shape, kvtc_cache **out,
                                           kvtc_llama_layout *layout, kvtc_error *err);
KVTC_API kvtc_status kvtc_llama_state_read(const char *path, const kvtc_model_shape *shape,
                                           kvtc_cache **out, kvtc_llama_layout *layout,
                                           kvtc_error *err);
/* The state llama.cpp's llama_state_seq_load_file (ggsq) or
 * llama_state_seq_set_data (bare) accepts for this cache; layout NULL means
 * the defaults. The context loading it must match the layout (V transposed or
 * not, stream count) and the cache's dtype (its type_k and type_v). */
KVTC_API kvtc_status kvtc_llama_state_save(const kvtc_cache *cache,
                                           const kvtc_llama_layout *layout, void **out,
                                           size_t *out_len, kvtc_error *err);
KVTC_API kvtc_status kvtc_llama_state_write(const kvtc_cache *cache,
                                            const kvtc_llama_layout *layout, const char *path,
                                            kvtc_error *err); /* atomic */

/* ------------------------------------------------------------------------ */
/* Calibration                                                               */

/* Defaults of the _default functions, for help texts that state them. */
#define KVTC_DEFAULT_SINKS 4
#define KVTC_DEFAULT_WINDOW 128
#define KVTC_DEFAULT_MAX_RANK 2048
#define KVTC_DEFAULT_HELDOUT_EVERY 8
#define KVTC_DEFAULT_MAX_HELDOUT 4096
#define KVTC_DEFAULT_RATIO 16
#define KVTC_DEFAULT_BLOCK_TOKENS 256
#define KVTC_DEFAULT_DEFLATE_LEVEL 6

typedef struct kvtc_calib_options {
    size_t struct_size;     /* sizeof(kvtc_calib_options), set by the _default function */
    uint32_t sinks;         /* first tokens never compressed */
    uint32_t window;        /* last tokens never compressed */
    uint32_t rank;          /* max basis columns kept per kind; 0 = min(p, KVTC_DEFAULT_MAX_RANK) */
    uint32_t heldout_every; /* every k-th eligible token is held out for the DP */
    uint32_t max_heldout;   /* cap on held-out rows per kind */
    uint32_t n_threads;     /* 0 = 1 */
    kvtc_progress_fn progress;
    void *progress_user;
} kvtc_calib_options;

/* Fills every field with its default, struct_size included. */
KVTC_API void kvtc_calib_options_default(kvtc_calib_options *opt);

typedef struct kvtc_calibrator kvtc_calibrator;
typedef struct kvtc_calibration kvtc_calibration;

/* A calibrator for caches of `shape` in *out; opt NULL means the defaults.
 * KVTC_E_INVALID for a bad shape or option, KVTC_E_NOMEM. */
KVTC_API kvtc_status kvtc_calibrator_create(const kvtc_model_shape *shape,
                                            const kvtc_calib_options *opt,
                                            kvtc_calibrator **out, kvtc_error *err);
/* Streams one cache in: its tokens (minus sinks and window) update the running
 * covariance in double precision; every heldout_every-th goes to the held-out
 * set instead. The cache is not kept. Shape must match the calibrator's. */
KVTC_API kvtc_status kvtc_calibrator_add(kvtc_calibrator *cal, const kvtc_cache *cache,
                                         kvtc_error *err);
/* Mean, PCA basis (LAPACK symmetric eigensolver), and the DP error table.
 * The result is checked the way kvtc_calibration_load checks a file: one that
 * would not load back (values beyond float range, say) is KVTC_E_NUMERIC. */
KVTC_API kvtc_status kvtc_calibrator_finish(kvtc_calibrator *cal, kvtc_calibration **out,
                                            kvtc_error *err);
KVTC_API uint64_t kvtc_calibrator_rows(const kvtc_calibrator *cal, kvtc_kind kind);
/* Tokens left out of the statistics because their feature row carries more
 * than 1e4 times the median energy of their cache's tokens (one such token
 * would dominate the basis). */
KVTC_API uint64_t kvtc_calibrator_excluded(const kvtc_calibrator *cal, kvtc_kind kind);
KVTC_API void kvtc_calibrator_free(kvtc_calibrator *cal);

/* .kvtcal files (docs/FORMAT.md). Loading verifies every checksum and the fingerprint. */
KVTC_API kvtc_status kvtc_calibration_load(const void *data, size_t len,
                                           kvtc_calibration **out, kvtc_error *err);
KVTC_API kvtc_status kvtc_calibration_read(const char *path, kvtc_calibration **out,
                                           kvtc_error *err);
KVTC_API kvtc_status kvtc_calibration_save(const kvtc_calibration *cal, void **out,
                                           size_t *out_len, kvtc_error *err);
KVTC_API kvtc_status kvtc_calibration_write(const kvtc_calibration *cal, const char *path,
                                            kvtc_error *err); /* atomic, like above */
KVTC_API void kvtc_calibration_free(kvtc_calibration *cal);

KVTC_API const kvtc_model_shape *kvtc_calibration_shape(const kvtc_calibration *cal);
KVTC_API uint32_t kvtc_calibration_sinks(const kvtc_calibration *cal);
KVTC_API uint32_t kvtc_calibration_window(const kvtc_calibration *cal);
KVTC_API uint32_t kvtc_calibration_rank(const kvtc_calibration *cal, kvtc_kind kind);
KVTC_API uint64_t kvtc_calibration_rows(const kvtc_calibration *cal, kvtc_kind kind);
/* Eigenvalues (variance per basis column, decreasing), `rank` of them; and the
 * total variance over all p features, for explained-variance curves. */
KVTC_API const float *kvtc_calibration_eigenvalues(const kvtc_calibration *cal, kvtc_kind kind);
KVTC_API double kvtc_calibration_total_variance(const kvtc_calibration *cal, kvtc_kind kind);
/* 32-byte SHA-256 of the file's contents; a .kvtc records it. */
KVTC_API const uint8_t *kvtc_calibration_fingerprint(const kvtc_calibration *cal);

/* ------------------------------------------------------------------------ */
/* Bit allocation plans                                                      */

typedef enum kvtc_qtype {
    KVTC_Q_NONE = 0, /* dropped: 0 bits, no shift/scale */
    KVTC_Q_INT2 = 1,
    KVTC_Q_INT4 = 2,
    KVTC_Q_FP8 = 3,  /* e4m3 */
    KVTC_Q_INT8 = 4,
    /* Lloyd-Max levels of a unit Gaussian times a per-token fp16 scale (no
     * shift), 1, 2 and 3 bits per code; groups of 16 or more only. */
    KVTC_Q_LM1 = 5,
    KVTC_Q_LM2 = 6,
    KVTC_Q_LM3 = 7
} kvtc_qtype;
#define KVTC_QTYPE_COUNT 8
/* "none","int2","int4","fp8","int8","lm1","lm2","lm3" */
KVTC_API const char *kvtc_qtype_name(kvtc_qtype t);
KVTC_API uint32_t kvtc_qtype_bits(kvtc_qtype t); /* 0, 2, 4, 8, 8, 1, 2, 3 */

/* A group of basis coordinates [start, start + size) quantized with `type`.
 * Sizes are 1, 16, 64, 256 or 1024 and start is a multiple of size. */
typedef struct kvtc_group {
    uint32_t start;
    uint32_t size;
    kvtc_qtype type;
} kvtc_group;

/* The plan of one kind: groups covering [0, n_coords) in order, trailing
 * dropped groups removed. Bits per token: sum(size*bits + overhead) over non-empty
 * groups, overhead 32 (fp16 shift and scale) or 16 for the lm types (fp16 scale). */
typedef struct kvtc_plan kvtc_plan;

/* The DP-optimal plan for target ratio `ratio` (> 1): budget floor(16*p/ratio)
 * bits per token, minimizing the held-out squared error from the error table. */
KVTC_API kvtc_status kvtc_plan_create(const kvtc_calibration *cal, kvtc_kind kind, double ratio,
                                      kvtc_plan **out, kvtc_error *err);
KVTC_API void kvtc_plan_free(kvtc_plan *plan);
KVTC_API uint32_t kvtc_plan_group_count(const kvtc_plan *plan);
KVTC_API const kvtc_group *kvtc_plan_groups(const kvtc_plan *plan);
KVTC_API uint32_t kvtc_plan_bits_per_token(const kvtc_plan *plan);
KVTC_API uint32_t kvtc_plan_budget_bits(const kvtc_plan *plan);
/* Held-out relative squared error the error table predicts for this plan. */
KVTC_API double kvtc_plan_predicted_error(const kvtc_plan *plan);

/* ------------------------------------------------------------------------ */
/* Compression (.kvtc streams, docs/FORMAT.md)                               */

/* What a compression target means.
 * KVTC_RATIO_STORED (the default): the ratio realized in stored bytes, fp16
 *   bytes of the coded tokens over the bytes their blocks take (after DEFLATE,
 *   with their metadata; kvtc_stream_info's compressed_bytes), for keys and
 *   values together at 2 / (1/k_ratio + 1/v_ratio). kvtc_compress meets it
 *   within about 1% on large models by encoding with up to 5 bit budgets and
 *   keeping the closest one that stores no more than asked (if within 3%),
 *   else the closest; small models' plans can be too coarse for 3%.
 * KVTC_RATIO_BUDGET: the ratio sets only the bit budget before DEFLATE,
 *   floor(16 p / ratio) bits per token and kind: a hard cap on the quantized
 *   bits (DEFLATE then makes the stream 5-20% smaller still), one encode. */
typedef enum kvtc_ratio_mode { KVTC_RATIO_STORED = 0, KVTC_RATIO_BUDGET = 1 } kvtc_ratio_mode;

typedef struct kvtc_compress_options {
    size_t struct_size;      /* sizeof(kvtc_compress_options), set by the _default function */
    double k_ratio;          /* target ratio for keys (> 1); see KVTC_DEFAULT_RATIO */
    double v_ratio;          /* target ratio for values (> 1); see KVTC_DEFAULT_RATIO */
    uint32_t block_tokens;   /* tokens per independently decodable block */
    uint32_t n_threads;      /* 0 = 1 */
    int deflate_level;       /* 1..12 */
    kvtc_progress_fn progress;
    void *progress_user;
    /* added after the first release (a caller's struct_size without them: the
     * pre-DEFLATE budget, as before) */
    kvtc_ratio_mode ratio_mode; /* what k_ratio and v_ratio mean; see kvtc_ratio_mode */
    double bytes_per_token;     /* > 0: the stored bytes per coded token (keys and values
                                   together) to meet instead of the ratios' level, with their
                                   key/value split kept; KVTC_RATIO_STORED only */
} kvtc_compress_options;

/* Fills every field with its default, struct_size included. */
KVTC_API void kvtc_compress_options_default(kvtc_compress_options *opt);

/* Compresses a whole cache. The first `sinks` and last `window` tokens (from the
 * calibration) are stored raw, bit-exact in the cache's dtype; a cache shorter
 * than sinks + window is stored entirely raw. *out is freed with kvtc_buffer_free. */
KVTC_API kvtc_status kvtc_compress(const kvtc_calibration *cal, const kvtc_cache *cache,
                                   const kvtc_compress_options *opt, void **out,
                                   size_t *out_len, kvtc_error *err);

/* Appends tokens to an existing stream without re-encoding its earlier blocks:
 * `more` must continue `prev` (more's pos0 == prev's pos0 + prev's n_tokens, same
 * shape and dtype). Tokens leaving the raw window are encoded into new blocks. */
KVTC_API kvtc_status kvtc_append(const kvtc_calibration *cal, const void *prev, size_t prev_len,
                                 const kvtc_cache *more, const kvtc_compress_options *opt,
                                 void **out, size_t *out_len, kvtc_error *err);

typedef struct kvtc_decompress_options {
    size_t struct_size; /* sizeof(kvtc_decompress_options), set by the _default function */
    uint32_t n_threads; /* 0 = 1; default 1 */
    kvtc_progress_fn progress;
    void *progress_user;
    /* 0 = no limit. Otherwise a stream whose restored tokens (the selected
     * block for kvtc_decompress_block) would take more bytes than this is
     * refused with KVTC_E_LIMIT before anything is allocated: a valid stream
     * can ask for ~240 tokens of output per stored byte, so a server decoding
     * streams from elsewhere should set it. */
    uint64_t max_output_bytes;
} kvtc_decompress_options;

/* Fills every field with its default, struct_size included. */
KVTC_API void kvtc_decompress_options_default(kvtc_decompress_options *opt);

/* Restores the whole cache (dtype and positions as compressed). Refuses a
 * stream made with another calibration (KVTC_E_MISMATCH naming both fingerprints). */
KVTC_API kvtc_status kvtc_decompress(const kvtc_calibration *cal, const void *data, size_t len,
                                     const kvtc_decompress_options *opt, kvtc_cache **out,
                                     kvtc_error *err);

/* Restores the whole stream into an existing cache, typically one that wraps
 * the caller's memory (kvtc_cache_wrap) in the layout an engine wants: one
 * copy from the decoder into place. dst must have the stream's shape, dtype
 * and n_tokens (KVTC_E_MISMATCH otherwise); its pos0 and model name become
 * the stream's. On failure dst's tokens are unspecified. */
KVTC_API kvtc_status kvtc_decompress_into(const kvtc_calibration *cal, const void *data,
                                          size_t len, const kvtc_decompress_options *opt,
                                          kvtc_cache *dst, kvtc_error *err);

/* Restores a stream straight into a safetensors file at `path` (written like
 * kvtc_write_file_atomic), one layer at a time: memory stays near the
 * coefficients and one layer, not the whole restored cache. The file is
 * byte for byte what kvtc_decompress + kvtc_cache_write_safetensors give. */
KVTC_API kvtc_status kvtc_decompress_to_safetensors(const kvtc_calibration *cal,
                                                    const void *data, size_t len,
                                                    const kvtc_decompress_options *opt,
                                                    const char *path, kvtc_error *err);

/* Called once per layer, in order 0..n_layer-1, as soon as that layer is
 * restored; key and value are [n_kv_head][n_tokens][head_dim] of the stream's
 * dtype, valid only during the call. Return non-zero to stop (KVTC_E_CANCELLED). */
typedef int (*kvtc_layer_fn)(void *user, uint32_t layer, const void *key, const void *value);

/* Layer-by-layer decode: the shared coefficients are decoded first, then each
 * layer is reconstructed and handed over, so a model can start on layer 0. */
KVTC_API kvtc_status kvtc_decompress_layers(const kvtc_calibration *cal, const void *data,
                                            size_t len, const kvtc_decompress_options *opt,
                                            kvtc_layer_fn fn, void *user, kvtc_error *err);

/* Decodes the tokens of one block alone (see kvtc_stream_info.n_blocks); the
 * returned cache's pos0 is the block's first position. Block 0 and the last
 * block are the raw sinks and window when present. */
KVTC_API kvtc_status kvtc_decompress_block(const kvtc_calibration *cal, const void *data,
                                           size_t len, uint32_t block,
                                           const kvtc_decompress_options *opt, kvtc_cache **out,
                                           kvtc_error *err);

typedef struct kvtc_stream_info {
    size_t struct_size; /* set by the caller to sizeof(kvtc_stream_info) */
    uint32_t format_version;
    kvtc_model_shape shape;
    kvtc_dtype dtype;
    int64_t pos0;
    uint32_t n_tokens;          /* all tokens */
    uint32_t sinks, window;     /* raw tokens at each end actually stored */
    uint32_t compressed_tokens; /* n_tokens - raw ones */
    uint32_t n_blocks;          /* all blocks, raw ones included */
    uint32_t block_tokens;
    uint32_t k_bits_per_token, v_bits_per_token; /* plans' bits before DEFLATE */
    double k_ratio, v_ratio;    /* targets the plans were made for */
    uint64_t compressed_bytes;  /* bytes of the compressed blocks (records, headers, CRCs) */
    uint64_t raw_bytes;         /* bytes of the raw sink and window blocks */
    uint64_t total_bytes;       /* the whole stream */
    uint64_t fp16_bytes;        /* the whole cache at 2 bytes a value, keys and values */
    uint64_t compressed_fp16_bytes; /* the compressed tokens alone at 2 bytes a value */
    uint8_t calib_fingerprint[32];
    char model_name[64];
    /* added after the first release (read only up to the caller's struct_size) */
    uint32_t has_token_ids;     /* 1: the stream carries its tokens' ids (flags bit 0) */
} kvtc_stream_info;

/* Parses and checks the header (not the block payloads). The caller sets
 * info->struct_size first. Ratios against fp16: fp16_bytes / total_bytes for
 * the file, compressed_fp16_bytes / compressed_bytes for the coded tokens. */
KVTC_API kvtc_status kvtc_stream_info_get(const void *data, size_t len, kvtc_stream_info *info,
                                          kvtc_error *err);

/* The bit-allocation plan a stream was encoded with, for one kind, in *out
 * (freed with kvtc_plan_free). Its predicted error is -1: a stream carries
 * its groups, not the calibration's error table. */
KVTC_API kvtc_status kvtc_stream_plan(const void *data, size_t len, kvtc_kind kind,
                                      kvtc_plan **out, kvtc_error *err);

/* The token ids a stream carries (kvtc_cache_token_ids of the cache it was
 * made from): *n of them in *out, freed with kvtc_buffer_free; *out NULL and
 * *n 0 when it carries none. Checks the header like kvtc_stream_info_get. */
KVTC_API kvtc_status kvtc_stream_token_ids(const void *data, size_t len, int32_t **out,
                                           uint32_t *n, kvtc_error *err);

/* Reads a whole file into a buffer freed with kvtc_buffer_free. */
KVTC_API kvtc_status kvtc_read_file(const char *path, void **out, size_t *out_len,
                                    kvtc_error *err);
/* Writes a buffer to `path` so that a failure never leaves a partial file
 * there: through a temporary file ".kvtc-tmp.<pid>.<tag>" in the same folder,
 * synced and renamed into place. An existing file keeps its permissions; a
 * symbolic link is written through; a device or FIFO (e.g. /dev/null) is
 * written directly, never replaced; a directory is refused. Temporaries that
 * a killed process left in that folder are removed. Every function that
 * writes a file (kvtc_*_write*) works this way. */
KVTC_API kvtc_status kvtc_write_file_atomic(const char *path, const void *data, size_t len,
                                            kvtc_error *err);

/* Removes the temporary files of writes in progress. Async-signal-safe: call
 * it from a SIGINT/SIGTERM handler before the process dies, so that no
 * temporary is left behind (the library installs no handler itself). */
KVTC_API void kvtc_remove_temporaries(void);

#ifdef __cplusplus
}
#endif
#endif /* KVTC_H */
