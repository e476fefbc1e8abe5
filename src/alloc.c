/* One place for every allocation, so callers can bring their own allocator and
 * tests can inject failures. */
#include "kvtc_internal.h"

#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>

static kvtc_allocator g_alloc; /* zero = malloc/free */

/* libdeflate 1.14 takes plain function pointers; forward to the current allocator. */
static void *deflate_malloc(size_t n) { return kvtc_malloc(n); }
static void deflate_free(void *p) { kvtc_free(p); }

void kvtc_set_allocator(const kvtc_allocator *a)
{
    if (a && a->malloc_fn && a->free_fn) {
        g_alloc = *a;
        libdeflate_set_memory_allocator(deflate_malloc, deflate_free);
    } else {
        memset(&g_alloc, 0, sizeof g_alloc);
        libdeflate_set_memory_allocator(malloc, free);
    }
}

void *kvtc_malloc(size_t n)
{
    if (n == 0)
        n = 1;
    return g_alloc.malloc_fn ? g_alloc.malloc_fn(n, g_alloc.user) : malloc(n);
}

void *kvtc_malloc_array(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    return kvtc_malloc(n * size);
}

void *kvtc_calloc(size_t n, size_t size)
{
    void *p = kvtc_malloc_array(n, size);
    if (p)
        memset(p, 0, (n && size) ? n * size : 1);
    return p;
}

void kvtc_free(void *p)
{
    if (!p)
        return;
    if (g_alloc.free_fn)
        g_alloc.free_fn(p, g_alloc.user);
    else
        free(p);
}

char *kvtc_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = kvtc_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void kvtc_buffer_free(void *buf) { kvtc_free(buf); }
