/* GGUF v3 reader: metadata key/values, tensor table, tensor data (memory-mapped
 * from a file, or over a caller's buffer). Every length, count and offset read
 * from the file is validated before use; bad files give a kvtc_error, never a
 * crash. Dequantization of tensor data lives in gguf_dequant.c. */
#ifndef KVTC_GGUF_H
#define KVTC_GGUF_H

#include "kvtc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum kvtc_gguf_value_type {
    KVTC_GGUF_UINT8 = 0,
    KVTC_GGUF_INT8 = 1,
    KVTC_GGUF_UINT16 = 2,
    KVTC_GGUF_INT16 = 3,
    KVTC_GGUF_UINT32 = 4,
    KVTC_GGUF_INT32 = 5,
    KVTC_GGUF_FLOAT32 = 6,
    KVTC_GGUF_BOOL = 7,
    KVTC_GGUF_STRING = 8,
    KVTC_GGUF_ARRAY = 9,
    KVTC_GGUF_UINT64 = 10,
    KVTC_GGUF_INT64 = 11,
    KVTC_GGUF_FLOAT64 = 12,
} kvtc_gguf_value_type;

/* ggml tensor types (numbering of ggml.h). */
typedef enum kvtc_ggml_type {
    KVTC_GGML_F32 = 0,
    KVTC_GGML_F16 = 1,
    KVTC_GGML_Q4_0 = 2,
    KVTC_GGML_Q4_1 = 3,
    KVTC_GGML_Q5_0 = 6,
    KVTC_GGML_Q5_1 = 7,
    KVTC_GGML_Q8_0 = 8,
    KVTC_GGML_Q8_1 = 9,
    KVTC_GGML_Q2_K = 10,
    KVTC_GGML_Q3_K = 11,
    KVTC_GGML_Q4_K = 12,
    KVTC_GGML_Q5_K = 13,
    KVTC_GGML_Q6_K = 14,
    KVTC_GGML_Q8_K = 15,
    KVTC_GGML_BF16 = 30,
} kvtc_ggml_type;

typedef struct kvtc_gguf_tensor {
    const char *name;   /* NUL-terminated copy owned by the kvtc_gguf_file */
    uint32_t n_dims;    /* 1..4 */
    uint64_t dims[4];   /* ggml order: dims[0] is the fastest-varying (row length) */
    uint32_t type;      /* kvtc_ggml_type */
    uint64_t n_elements;
    uint64_t n_bytes;   /* validated: lies inside the file's data section */
    const void *data;   /* points into the mapping / caller's buffer */
} kvtc_gguf_tensor;

typedef struct kvtc_gguf_file kvtc_gguf_file;

/* Maps the file read-only. Error messages name the path. */
kvtc_status kvtc_gguf_open(const char *path, kvtc_gguf_file **out, kvtc_error *err);
/* Parses a caller's buffer (which must outlive the kvtc_gguf_file). */
kvtc_status kvtc_gguf_load(const void *data, size_t len, kvtc_gguf_file **out, kvtc_error *err);
void kvtc_gguf_close(kvtc_gguf_file *f);

uint32_t kvtc_gguf_version(const kvtc_gguf_file *f);
uint64_t kvtc_gguf_alignment(const kvtc_gguf_file *f);

/* Metadata. Getters return false when the key is absent or of an incompatible
 * type; integer getters accept any integer type whose value fits. */
bool kvtc_gguf_has_key(const kvtc_gguf_file *f, const char *key);
bool kvtc_gguf_get_u32(const kvtc_gguf_file *f, const char *key, uint32_t *out);
bool kvtc_gguf_get_f32(const kvtc_gguf_file *f, const char *key, float *out); /* F32 or F64 */
bool kvtc_gguf_get_bool(const kvtc_gguf_file *f, const char *key, bool *out);
/* Strings are not NUL-terminated in the file: pointer + length. */
bool kvtc_gguf_get_str(const kvtc_gguf_file *f, const char *key, const char **s, size_t *len);
/* Arrays: element type and count. */
bool kvtc_gguf_get_arr_info(const kvtc_gguf_file *f, const char *key, kvtc_gguf_value_type *elem_type,
                       uint64_t *count);
/* Element i of a string array. */
bool kvtc_gguf_get_arr_str(const kvtc_gguf_file *f, const char *key, uint64_t i, const char **s,
                      size_t *len);
/* Raw little-endian elements of a numeric array (e.g. token scores, types). */
bool kvtc_gguf_get_arr_data(const kvtc_gguf_file *f, const char *key, const void **data);

/* Tensors. */
uint64_t kvtc_gguf_tensor_count(const kvtc_gguf_file *f);
const kvtc_gguf_tensor *kvtc_gguf_tensor_at(const kvtc_gguf_file *f, uint64_t i);
const kvtc_gguf_tensor *kvtc_gguf_find_tensor(const kvtc_gguf_file *f, const char *name);

/* gguf.c: names and block sizes of ggml types. */
const char *kvtc_ggml_type_name(uint32_t type);
/* Elements per block and bytes per block; false for unknown/unsupported types. */
bool kvtc_ggml_type_block(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes);

/* gguf_dequant.c: dequantization to f32. *//* Whether the type is one of the quantized block types dequantized below. */
bool kvtc_ggml_block_dequantizable(uint32_t type);
/* Dequantizes n elements (a multiple of the block size) starting at data. */
kvtc_status kvtc_ggml_dequantize(uint32_t type, const void *data, float *out, uint64_t n,
                            kvtc_error *err);
/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, from
 * its 12 bytes of scales: the first four pairs are the low 6 bits of bytes
 * 0..7; the last four take their low 4 bits from bytes 8..11 and their top 2
 * bits from the spare bits of bytes 0..7. Inline: the kernels call it per
 * sub-block. */
static inline void kvtc_ggml_k_scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | (s[j - 4] >> 6) << 4;
        *mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}
/* Whole tensor to f32 (t->n_elements floats). */
kvtc_status kvtc_gguf_tensor_to_f32(const kvtc_gguf_tensor *t, float *out, kvtc_error *err);

#endif /* KVTC_GGUF_H */
