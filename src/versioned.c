/* Public structs that grow: they start with `size_t struct_size`, the size the
 * caller was compiled with. An older caller's struct is shorter; the fields it
 * lacks keep their defaults on the way in and are not written on the way out. */
#include "kvtc_internal.h"

#include <string.h>

static kvtc_status check_size(size_t given, size_t min_size, size_t full_size, const char *what,
                              kvtc_error *err)
{
    if (given >= min_size && given <= full_size)
        return KVTC_OK;
    if (given == 0)
        return kvtc_fail(err, KVTC_E_INVALID,
                         "%s: struct_size is 0 (initialize them with their _default function)",
                         what);
    return kvtc_fail(err, KVTC_E_INVALID, "%s: struct_size %zu is not one this library knows "
                     "(%zu to %zu bytes)", what, given, min_size, full_size);
}

/* Copies the first `size` bytes of src over dst, keeping dst's struct_size. */
static kvtc_status copy_prefix(void *dst, const void *src, size_t size, size_t min_size,
                               size_t full_size, const char *what, kvtc_error *err)
{
    kvtc_status st = check_size(size, min_size, full_size, what, err);
    if (st == KVTC_OK) {
        size_t keep;
        memcpy(&keep, dst, sizeof keep);
        memcpy(dst, src, size);
        memcpy(dst, &keep, sizeof keep);
    }
    return st;
}

/* `full` (struct_size = full_size) holds the defaults. */
kvtc_status kvtc_struct_in(void *full, size_t full_size, size_t min_size, const void *given,
                           const char *what, kvtc_error *err)
{
    size_t size;
    memcpy(&size, given, sizeof size);
    return copy_prefix(full, given, size, min_size, full_size, what, err);
}

kvtc_status kvtc_struct_out(void *given, const void *full, size_t full_size, size_t min_size,
                            const char *what, kvtc_error *err)
{
    size_t size;
    memcpy(&size, given, sizeof size);
    return copy_prefix(given, full, size, min_size, full_size, what, err);
}
