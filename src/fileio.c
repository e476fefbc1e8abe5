/* Whole-file reads and atomic writes: a write goes to a temporary file in the
 * destination's folder and is renamed into place only once it is complete and
 * synced, so a failure never leaves a partial file under the final name. */
#include "kvtc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

kvtc_status kvtc_read_file(const char *path, void **out, size_t *out_len, kvtc_error *err)
{
    if (!path || !out || !out_len)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_read_file: no path or output given");
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return kvtc_fail(err, KVTC_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 0 || (uint64_t)st.st_size >= SIZE_MAX) {
        close(fd);
        return kvtc_fail(err, KVTC_E_IO, "%s: file too large", path);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = kvtc_malloc(size);
    if (!buf) {
        close(fd);
        return kvtc_fail(err, KVTC_E_NOMEM, "%s: out of memory for %zu bytes", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            close(fd);
            kvtc_free(buf);
            if (n == 0)
                return kvtc_fail(err, KVTC_E_IO, "%s: file shrank while being read", path);
            return kvtc_fail(err, KVTC_E_IO, "%s: read failed: %s", path, strerror(e));
        }
        got += (size_t)n;
    }
    close(fd);
    *out = buf;
    *out_len = size;
    return KVTC_OK;
}

static int write_all(int fd, const unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) { /* no progress: treat as a full device */
            errno = ENOSPC;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Creates "<path>.tmp.XXXXXX" exclusively. Not mkstemp: that makes the file
 * 0600, and fixing the mode would need umask(), which is process-wide. */
static int create_temp(const char *path, char *tmp, size_t tmp_size)
{
    static _Atomic unsigned counter;
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t x = ((uint64_t)getpid() << 32) ^ (uint64_t)(counter++ * 2654435761u) ^
                     (uint64_t)(uintptr_t)tmp ^ (uint64_t)attempt * 0x9e3779b97f4a7c15ull;
        char tag[7];
        for (int i = 0; i < 6; i++, x /= 36)
            tag[i] = digits[x % 36];
        tag[6] = '\0';
        snprintf(tmp, tmp_size, "%s.tmp.%s", path, tag);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    return -1;
}

kvtc_status kvtc_write_parts_atomic(const char *path, const kvtc_span *parts, size_t n,
                                    kvtc_error *err)
{
    if (!path || !*path || (!parts && n))
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_write_file_atomic: no path or data given");
    for (size_t i = 0; i < n; i++)
        if (!parts[i].data && parts[i].len)
            return kvtc_fail(err, KVTC_E_INVALID, "%s: no data given for part %zu", path, i);
    size_t tmp_size = strlen(path) + sizeof ".tmp.XXXXXX";
    char *tmp = kvtc_malloc(tmp_size);
    if (!tmp)
        return kvtc_fail(err, KVTC_E_NOMEM, "%s: out of memory", path);

    const char *what = "cannot create a temporary file";
    int fd = create_temp(path, tmp, tmp_size);
    if (fd < 0) {
        int e = errno;
        kvtc_free(tmp);
        return kvtc_fail(err, KVTC_E_IO, "%s: %s: %s", path, what, strerror(e));
    }
    what = "cannot write";
    for (size_t i = 0; i < n; i++)
        if (write_all(fd, parts[i].data, parts[i].len) != 0)
            goto fail;
    what = "cannot sync";
    if (fsync(fd) != 0)
        goto fail;
    what = "cannot close";
    int rc = close(fd);
    fd = -1;
    if (rc != 0)
        goto fail;
    what = "cannot rename into place";
    if (rename(tmp, path) != 0)
        goto fail;
    kvtc_free(tmp);
    return KVTC_OK;

fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    kvtc_free(tmp);
    return kvtc_fail(err, KVTC_E_IO, "%s: %s: %s", path, what, strerror(e));
}

kvtc_status kvtc_write_file_atomic(const char *path, const void *data, size_t len,
                                   kvtc_error *err)
{
    kvtc_span part = {data, len};
    return kvtc_write_parts_atomic(path, &part, 1, err);
}
