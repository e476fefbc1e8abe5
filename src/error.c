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

/* Control characters (C0, DEL, and C1 as UTF-8) become '?', so that a name
 * read from a crafted file cannot move a terminal's cursor or split a line. */
void kvtc_text_sanitize(char *m)
{
    for (unsigned char *p = (unsigned char *)m; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
        else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            p[0] = p[1] = '?';
    }
}

kvtc_status kvtc_fail(kvtc_error *err, kvtc_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        kvtc_text_sanitize(err->message);
        err->status = status;
    }
    return status;
}

/* "<prefix>: <problem>" in the message. A prefix too long to leave the
 * problem whole (a deep path) loses its middle, keeping its start and its
 * end, where the file's name is. */
static void join(kvtc_error *err, const char *prefix, const char *problem)
{
    enum { CAP = sizeof err->message, MIN_PREFIX = 40 };
    size_t np = strlen(prefix), nq = strnlen(problem, CAP - 1 - MIN_PREFIX - 2);
    size_t room = CAP - 1 - 2 - nq; /* for the prefix */
    char *m = err->message;
    if (np <= room) {
        memcpy(m, prefix, np);
    } else {
        size_t head = (room - 3) / 3, tail = room - 3 - head;
        memcpy(m, prefix, head);
        memcpy(m + head, "...", 3);
        memcpy(m + head + 3, prefix + np - tail, tail);
        np = room;
    }
    memcpy(m + np, ": ", 2);
    memcpy(m + np + 2, problem, nq);
    m[np + 2 + nq] = '\0';
    kvtc_text_sanitize(m);
}

kvtc_status kvtc_fail_path(kvtc_error *err, kvtc_status status, const char *path,
                           const char *fmt, ...)
{
    if (err) {
        char problem[sizeof err->message];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(problem, sizeof problem, fmt, ap);
        va_end(ap);
        join(err, path, problem);
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
    join(err, prefix, old);
    return err->status;
}
