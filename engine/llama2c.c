/* llama2.c checkpoint loader: checks the header against sane bounds and the
 * file length against the header before any pointer is formed. */
#include "llama2c.h"
#include "kvtc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LLAMA2C_V1_MAGIC 0x616b3432u /* "ak42": the newer export formats */

static int32_t i32_at(const unsigned char *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

/* A header field must lie in [1, max]. */
static kvtc_status check_field(const char *name, int64_t v, int64_t max, kvtc_error *err)
{
    if (v < 1 || v > max)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "not a llama2.c checkpoint: header field %s = %lld out of range "
                         "[1, %lld]", name, (long long)v, (long long)max);
    return KVTC_OK;
}

kvtc_status llama2c_load(const void *data, size_t len, llama2c_file **out, kvtc_error *err)
{
    *out = NULL;
    const unsigned char *p = data;
    if (len < LLAMA2C_HEADER_BYTES)
        return kvtc_fail(err, KVTC_E_TRUNCATED,
                         "llama2.c checkpoint truncated: %zu bytes, the header alone is %d", len,
                         LLAMA2C_HEADER_BYTES);
    if ((uint32_t)i32_at(p) == LLAMA2C_V1_MAGIC)
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "llama2.c export version 1 or later is not supported (only the "
                         "legacy format)");
    int32_t h[7];
    for (int i = 0; i < 7; i++)
        h[i] = i32_at(p + 4 * i);
    int64_t vocab = h[5] < 0 ? -(int64_t)h[5] : h[5];
    const struct { const char *name; int64_t value, max; } fields[] = {
        {"dim", h[0], 1 << 16},      {"hidden_dim", h[1], 1 << 18},
        {"n_layers", h[2], 1024},    {"n_heads", h[3], 1024},
        {"n_kv_heads", h[4], h[3]},  {"vocab_size", vocab, 1 << 22},
        {"seq_len", h[6], 1 << 22},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        kvtc_status st = check_field(fields[i].name, fields[i].value, fields[i].max, err);
        if (st != KVTC_OK)
            return st;
    }
    llama2c_config c = {
        .dim = (uint32_t)h[0], .hidden_dim = (uint32_t)h[1], .n_layers = (uint32_t)h[2],
        .n_heads = (uint32_t)h[3], .n_kv_heads = (uint32_t)h[4], .vocab_size = (uint32_t)vocab,
        .seq_len = (uint32_t)h[6], .shared_classifier = h[5] > 0,
    };
    if (c.dim % c.n_heads || c.n_heads % c.n_kv_heads || (c.dim / c.n_heads) % 2)
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "not a llama2.c checkpoint: dim %u, %u heads, %u kv heads do not divide "
                         "into even head sizes", c.dim, c.n_heads, c.n_kv_heads);
    /* Every product below is < 2^63 given the bounds above. */
    uint64_t dim = c.dim, hid = c.hidden_dim, L = c.n_layers, head_dim = dim / c.n_heads;
    uint64_t kv_dim = head_dim * c.n_kv_heads;
    uint64_t sizes[] = {
        vocab * dim,            /* token_embedding */
        L * dim,                /* rms_att */
        L * dim * dim,          /* wq */
        L * kv_dim * dim,       /* wk */
        L * kv_dim * dim,       /* wv */
        L * dim * dim,          /* wo */
        L * dim,                /* rms_ffn */
        L * hid * dim,          /* w1 */
        L * dim * hid,          /* w2 */
        L * hid * dim,          /* w3 */
        dim,                    /* rms_final */
        c.seq_len * head_dim,   /* the two RoPE tables, unused */
        c.shared_classifier ? 0 : vocab * dim, /* wcls */
    };
    uint64_t floats = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        floats += sizes[i];
    uint64_t want = LLAMA2C_HEADER_BYTES + 4 * floats;
    if (len != want)
        return kvtc_fail(err, len < want ? KVTC_E_TRUNCATED : KVTC_E_FORMAT,
                         "llama2.c checkpoint of this header (dim %u, %u layers, vocab %u) must be "
                         "%llu bytes, the file has %zu",
                         c.dim, c.n_layers, c.vocab_size, (unsigned long long)want, len);
    if ((uintptr_t)data % 4)
        return kvtc_fail(err, KVTC_E_INVALID, "llama2.c checkpoint buffer is not 4-byte aligned");

    llama2c_file *f = kvtc_calloc(1, sizeof *f);
    if (!f)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    f->cfg = c;
    const float *w = (const float *)(p + LLAMA2C_HEADER_BYTES);
    const float **tensors[] = {&f->token_embedding, &f->rms_att, &f->wq, &f->wk, &f->wv, &f->wo,
                               &f->rms_ffn, &f->w1, &f->w2, &f->w3, &f->rms_final};
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        *tensors[i] = w;
        w += sizes[i];
    }
    w += sizes[11];
    f->wcls = c.shared_classifier ? f->token_embedding : w;
    *out = f;
    return KVTC_OK;
}

kvtc_status llama2c_open(const char *path, llama2c_file **out, kvtc_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kvtc_fail(err, KVTC_E_IO, "%s: not a readable regular file", path);
    }
    if (st.st_size < LLAMA2C_HEADER_BYTES) {
        close(fd);
        return kvtc_fail(err, KVTC_E_TRUNCATED, "%s: llama2.c checkpoint truncated: %lld bytes",
                         path, (long long)st.st_size);
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot map: %s", path, strerror(errno));
    kvtc_status s = llama2c_load(map, len, out, err);
    if (s != KVTC_OK) {
        munmap(map, len);
        return kvtc_fail_prefix(err, path);
    }
    (*out)->map = map;
    (*out)->map_len = len;
    return KVTC_OK;
}

void llama2c_close(llama2c_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    kvtc_free(f);
}
