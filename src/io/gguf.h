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

typedef enum gguf_value_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
} gguf_value_type;

/* ggml tensor types (numbering of ggml.h). */
typedef enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_BF16 = 30,
} ggml_type;

typedef struct gguf_tensor {
    const char *name;   /* NUL-terminated copy owned by the gguf_file */
    uint32_t n_dims;    /* 1..4 */
    uint64_t dims[4];   /* ggml order: dims[0] is the fastest-varying (row length) */
    uint32_t type;      /* ggml_type */
    uint64_t n_elements;
    uint64_t n_bytes;   /* validated: lies inside the file's data section */
    const void *data;   /* points into the mapping / caller's buffer */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Maps the file read-only. Error messages name the path. */
kvtc_status gguf_open(const char *path, gguf_file **out, kvtc_error *err);
/* Parses a caller's buffer (which must outlive the gguf_file). */
kvtc_status gguf_load(const void *data, size_t len, gguf_file **out, kvtc_error *err);
void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint64_t gguf_alignment(const gguf_file *f);

/* Metadata. Getters return false when the key is absent or of an incompatible
 * type; integer getters accept any integer type whose value fits. */
bool gguf_has_key(const gguf_file *f, const char *key);
bool gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
bool gguf_get_f32(const gguf_file *f, const char *key, float *out); /* F32 or F64 */
bool gguf_get_bool(const gguf_file *f, const char *key, bool *out);
/* Strings are not NUL-terminated in the file: pointer + length. */
bool gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len);
/* Arrays: element type and count. */
bool gguf_get_arr_info(const gguf_file *f, const char *key, gguf_value_type *elem_type,
                       uint64_t *count);
/* Element i of a string array. */
bool gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t i, const char **s,
                      size_t *len);
/* Raw little-endian elements of a numeric array (e.g. token scores, types). */
bool gguf_get_arr_data(const gguf_file *f, const char *key, const void **data);

/* Tensors. */
uint64_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* gguf.c: names and block sizes of ggml types. */
const char *ggml_type_name(uint32_t type);
/* Elements per block and bytes per block; false for unknown/unsupported types. */
bool ggml_type_block(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes);

/* gguf_dequant.c: dequantization to f32. *//* Dequantizes n elements (a multiple of the block size) starting at data. */
kvtc_status ggml_dequantize(uint32_t type, const void *data, float *out, uint64_t n,
                            kvtc_error *err);
/* Whole tensor to f32 (t->n_elements floats). */
kvtc_status gguf_tensor_to_f32(const gguf_tensor *t, float *out, kvtc_error *err);

#endif /* KVTC_GGUF_H */
