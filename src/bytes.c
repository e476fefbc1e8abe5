/* Little-endian serialization helpers. Writers remember an allocation failure
 * instead of reporting each write; readers remember an overrun. */
#include "kvtc_internal.h"

#include <stdio.h>
#include <string.h>

void kvtc_writer_init(kvtc_writer *w) { memset(w, 0, sizeof *w); }

void kvtc_writer_free(kvtc_writer *w)
{
    kvtc_free(w->buf);
    kvtc_writer_init(w);
}

void kvtc_put_bytes(kvtc_writer *w, const void *p, size_t n)
{
    if (w->failed || n == 0)
        return;
    if (n > SIZE_MAX - w->len) {
        w->failed = true;
        return;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n)
            cap = cap > SIZE_MAX / 2 ? w->len + n : cap * 2;
        unsigned char *nb = kvtc_malloc(cap);
        if (!nb) {
            w->failed = true;
            return;
        }
        if (w->len)
            memcpy(nb, w->buf, w->len);
        kvtc_free(w->buf);
        w->buf = nb;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void kvtc_put_textv(kvtc_writer *w, const char *fmt, va_list ap)
{
    char small[512];
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n < 0) {
        w->failed = true;
    } else if ((size_t)n < sizeof small) {
        kvtc_put_bytes(w, small, (size_t)n);
    } else {
        char *big = kvtc_malloc((size_t)n + 1);
        if (!big)
            w->failed = true;
        else {
            vsnprintf(big, (size_t)n + 1, fmt, again);
            kvtc_put_bytes(w, big, (size_t)n);
            kvtc_free(big);
        }
    }
    va_end(again);
}

void kvtc_put_u8(kvtc_writer *w, uint8_t v) { kvtc_put_bytes(w, &v, 1); }

void kvtc_put_u16(kvtc_writer *w, uint16_t v)
{
    unsigned char b[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    kvtc_put_bytes(w, b, 2);
}

void kvtc_put_u32(kvtc_writer *w, uint32_t v)
{
    unsigned char b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    kvtc_put_bytes(w, b, 4);
}

void kvtc_put_u64(kvtc_writer *w, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    kvtc_put_bytes(w, b, 8);
}

void kvtc_put_f32(kvtc_writer *w, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    kvtc_put_u32(w, u);
}

void kvtc_put_f64(kvtc_writer *w, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    kvtc_put_u64(w, u);
}

void kvtc_reader_init(kvtc_reader *r, const void *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->pos = 0;
    r->overrun = false;
}

const void *kvtc_get_bytes(kvtc_reader *r, size_t n)
{
    if (r->overrun || n > r->len - r->pos) {
        r->overrun = true;
        return NULL;
    }
    const void *p = r->p + r->pos;
    r->pos += n;
    return p;
}

static uint64_t get_le(kvtc_reader *r, int n)
{
    const unsigned char *b = kvtc_get_bytes(r, (size_t)n);
    uint64_t v = 0;
    if (!b)
        return 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

uint8_t kvtc_get_u8(kvtc_reader *r) { return (uint8_t)get_le(r, 1); }
uint16_t kvtc_get_u16(kvtc_reader *r) { return (uint16_t)get_le(r, 2); }
uint32_t kvtc_get_u32(kvtc_reader *r) { return (uint32_t)get_le(r, 4); }
uint64_t kvtc_get_u64(kvtc_reader *r) { return get_le(r, 8); }

float kvtc_get_f32(kvtc_reader *r)
{
    uint32_t u = kvtc_get_u32(r);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

double kvtc_get_f64(kvtc_reader *r)
{
    uint64_t u = kvtc_get_u64(r);
    double v;
    memcpy(&v, &u, 8);
    return v;
}
