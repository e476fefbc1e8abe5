/* Writing small GGUF files (the format engine/gguf.h reads) into a
 * kvtc_writer, for the GGUF tests and the fuzz seeds: the header, keys and
 * their values, the tensor table and the data section. Hostile files come
 * from writing wrong counts, offsets or dimensions on purpose. */
#ifndef KVTC_TEST_GGUF_BUILDER_H
#define KVTC_TEST_GGUF_BUILDER_H

#include "gguf.h"
#include "kvtc_internal.h"

#include <stdint.h>

/* "GGUF", the version, the tensor count and the key/value count. */
void test_gguf_put_header(kvtc_writer *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv);
/* A GGUF string: u64 length, then the bytes. */
void test_gguf_put_str(kvtc_writer *w, const char *s);
/* A key and its value type; the value follows (kvtc_put_*). */
void test_gguf_put_key(kvtc_writer *w, const char *key, kvtc_gguf_value_type type);
/* The head of an array value (after a key of type KVTC_GGUF_ARRAY); the
 * elements follow. */
void test_gguf_put_array(kvtc_writer *w, kvtc_gguf_value_type elem_type, uint64_t count);

typedef struct test_gguf_tensor {
    const char *name;
    uint32_t n_dims;
    uint64_t dims[4]; /* a dimension past the fourth is written as 1 */
    uint32_t type;    /* a kvtc_ggml_type, or not */
    uint64_t offset;  /* from the start of the data section */
} test_gguf_tensor;

/* Bytes of a tensor's data, in 64-bit arithmetic that wraps as a careless
 * reader's would (a type the reader does not know counts 4 bytes an element). */
uint64_t test_gguf_tensor_bytes(const test_gguf_tensor *t);
/* Sets the offsets: packed from 0 in order, each a multiple of align. */
void test_gguf_pack_offsets(test_gguf_tensor *t, uint32_t n, uint64_t align);
/* The tensor table: name, dimensions, type and offset of each. */
void test_gguf_put_tensor_infos(kvtc_writer *w, const test_gguf_tensor *t, uint32_t n);
/* Zero padding up to a multiple of align, then the data section up to the
 * end of the tensor that ends last, less `cut` bytes: each tensor's bytes
 * are small finite values in its type (fp16 block scales included), gaps are
 * zero. When that end lies past 1 MiB (an absurd tensor), no data at all. */
void test_gguf_put_tensor_data(kvtc_writer *w, const test_gguf_tensor *t, uint32_t n,
                               uint64_t align, uint64_t cut);

#endif /* KVTC_TEST_GGUF_BUILDER_H */
