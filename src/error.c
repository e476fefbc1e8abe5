/* Error values and messages: the library reports, the caller decides what to show. */
#include "kvtc_internal.h"

#include <stdio.h>
#include <string.h>

const char *kvtc_version(void) { return KVTC_VERSION_STRING; }

const char *kvtc_status_string(kvtc_status status)
{
    switch (status) {
    case KVTC_OK: return "ok";
    case KVTC_E_INVALID: return "invalid argument";
    case KVTC_E_NOMEM: return "out of memory";
    case KVTC_E_IO: return "i/o error";
    case KVTC_E_FORMAT: return "invalid format";
    case KVTC_E_TRUNCATED: return "truncated data";
    case KVTC_E_CHECKSUM: return "checksum mismatch";
    case KVTC_E_VERSION: return "unsupported format version";
    case KVTC_E_MISMATCH: return "mismatch";
    case KVTC_E_UNSUPPORTED: return "unsupported";
    case KVTC_E_NUMERIC: return "numerical failure";
    case KVTC_E_CANCELLED: return "cancelled";
    case KVTC_E_LIMIT: return "over the limit";
    }
    return "unknown error";
}

kvtc_status kvtc_fail(kvtc_error *err, kvtc_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

kvtc_status kvtc_fail_prefix(kvtc_error *err, const char *prefix)
{
    if (!err)
        return KVTC_E_INVALID;
    char old[sizeof err->message];
    memcpy(old, err->message, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof err->message - 3)
        n = sizeof err->message - 3;
    memcpy(err->message, prefix, n);
    memcpy(err->message + n, ": ", 2);
    size_t room = sizeof err->message - n - 3;
    size_t m = strnlen(old, room);
    memcpy(err->message + n + 2, old, m);
    err->message[n + 2 + m] = '\0';
    return err->status;
}
