/* GGUF files for the tests and the fuzz seeds (gguf_builder.h). */
#include "gguf_builder.h"

#include <string.h>

#define MAX_DATA_BYTES ((uint64_t)1 << 20)

void test_gguf_put_header(kvtc_writer *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    kvtc_put_bytes(w, "GGUF", 4);
    kvtc_put_u32(w, version);
    kvtc_put_u64(w, n_tensors);
    kvtc_put_u64(w, n_kv);
}

void test_gguf_put_str(kvtc_writer *w, const char *s)
{
    kvtc_put_u64(w, strlen(s));
    kvtc_put_bytes(w, s, strlen(s));
}

void test_gguf_put_key(kvtc_writer *w, const char *key, kvtc_gguf_value_type type)
{
    test_gguf_put_str(w, key);
    kvtc_put_u32(w, type);
}

void test_gguf_put_array(kvtc_writer *w, kvtc_gguf_value_type elem_type, uint64_t count)
{
    kvtc_put_u32(w, elem_type);
    kvtc_put_u64(w, count);
}

uint64_t test_gguf_tensor_bytes(const test_gguf_tensor *t)
{
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        n *= d < 4 ? t->dims[d] : 1;
    uint32_t block_elems = 1, block_bytes = 4;
    kvtc_ggml_type_block(t->type, &block_elems, &block_bytes);
    return n / block_elems * block_bytes;
}

void test_gguf_pack_offsets(test_gguf_tensor *t, uint32_t n, uint64_t align)
{
    uint64_t offset = 0;
    for (uint32_t i = 0; i < n; i++) {
        t[i].offset = offset;
        offset = (offset + test_gguf_tensor_bytes(&t[i]) + align - 1) / align * align;
    }
}

void test_gguf_put_tensor_infos(kvtc_writer *w, const test_gguf_tensor *t, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        test_gguf_put_str(w, t[i].name);
        kvtc_put_u32(w, t[i].n_dims);
        for (uint32_t d = 0; d < t[i].n_dims; d++)
            kvtc_put_u64(w, d < 4 ? t[i].dims[d] : 1);
        kvtc_put_u32(w, t[i].type);
        kvtc_put_u64(w, t[i].offset);
    }
}

/* Byte i of a tensor of `type`: f32 values in [0.5, 2), f16 and bf16 values
 * near 1, and for the block types fp16 scales of about 1.0 (0x3c00). */
static uint8_t data_byte(uint32_t type, uint64_t i)
{
    if (type == KVTC_GGML_F32)
        return i % 4 == 3 ? 0x3f : (uint8_t)(i * 7);
    return i % 2 ? 0x3c : (uint8_t)(i * 13);
}

void test_gguf_put_tensor_data(kvtc_writer *w, const test_gguf_tensor *t, uint32_t n,
                               uint64_t align, uint64_t cut)
{
    while (w->len % align)
        kvtc_put_u8(w, 0);
    uint64_t end = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t bytes = test_gguf_tensor_bytes(&t[i]);
        if (t[i].offset + bytes > end)
            end = t[i].offset + bytes;
    }
    if (end > MAX_DATA_BYTES)
        return;
    for (uint64_t at = 0; at + cut < end; at++) {
        uint8_t b = 0;
        for (uint32_t i = 0; i < n; i++)
            if (at >= t[i].offset && at - t[i].offset < test_gguf_tensor_bytes(&t[i])) {
                b = data_byte(t[i].type, at - t[i].offset);
                break;
            }
        kvtc_put_u8(w, b);
    }
}
