/* Whole-file reads and safe writes.
 *
 * A write to a regular file (or to a name that does not exist yet) goes to a
 * temporary file in the destination's folder, named ".kvtc-tmp.<pid>.<tag>"
 * (short, so any valid destination name works, and recognisable), and is
 * renamed into place only once it is complete and synced: a failure never
 * leaves a partial file under the final name, an existing file keeps its
 * permissions, and a symbolic link is written through, not replaced. A
 * destination that exists and is not a regular file (a device such as
 * /dev/null, a FIFO) is written directly and never replaced by a file.
 *
 * Temporaries in flight are listed in fixed slots so that
 * kvtc_remove_temporaries() can unlink them from a signal handler; one left
 * behind by a killed process (its pid no longer runs) is removed by the next
 * write into the same folder. */
#include "kvtc_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TEMP_PREFIX ".kvtc-tmp."

int kvtc_open_regular(const char *path, size_t *size, kvtc_error *err)
{
    /* Non-blocking, so that opening a FIFO (which would wait for a writer)
     * returns at once and is refused below; reads of a regular file never
     * block anyway. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        kvtc_fail_path(err, KVTC_E_IO, path, "cannot open: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    const char *why = NULL;
    int e = 0;
    if (fstat(fd, &st) != 0)
        e = errno, why = "cannot stat";
    else if (!S_ISREG(st.st_mode))
        why = S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file";
    else if (st.st_size < 0 || (uint64_t)st.st_size >= SIZE_MAX)
        why = "file too large";
    else if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0)
        e = errno, why = "cannot read";
    if (why) {
        close(fd);
        if (e)
            kvtc_fail_path(err, KVTC_E_IO, path, "%s: %s", why, strerror(e));
        else
            kvtc_fail_path(err, KVTC_E_IO, path, "%s", why);
        return -1;
    }
    *size = (size_t)st.st_size;
    return fd;
}

kvtc_status kvtc_read_file(const char *path, void **out, size_t *out_len, kvtc_error *err)
{
    if (!path || !out || !out_len)
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_read_file: no path or output given");
    *out = NULL;
    *out_len = 0;
    size_t size;
    int fd = kvtc_open_regular(path, &size, err);
    if (fd < 0)
        return KVTC_E_IO; /* err says why */
    unsigned char *buf = kvtc_malloc(size);
    if (!buf) {
        close(fd);
        return kvtc_fail_path(err, KVTC_E_NOMEM, path, "out of memory for %zu bytes", size);
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
                return kvtc_fail_path(err, KVTC_E_IO, path, "file shrank while being read");
            return kvtc_fail_path(err, KVTC_E_IO, path, "read failed: %s", strerror(e));
        }
        got += (size_t)n;
    }
    close(fd);
    *out = buf;
    *out_len = size;
    return KVTC_OK;
}

kvtc_status kvtc_map_file(const char *path, const void **data, size_t *len, kvtc_error *err)
{
    *data = NULL;
    *len = 0;
    size_t size;
    int fd = kvtc_open_regular(path, &size, err);
    if (fd < 0)
        return KVTC_E_IO; /* err says why */
    kvtc_status status = KVTC_OK;
    if (size > 0) {
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            status = kvtc_fail_path(err, KVTC_E_IO, path, "cannot map: %s", strerror(errno));
        else {
            *data = p;
            *len = size;
        }
    }
    close(fd);
    return status;
}

void kvtc_unmap_file(const void *data, size_t len)
{
    if (data && len)
        munmap((void *)data, len);
}

void kvtc_release_pages(const void *data, size_t upto)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t whole = upto / page * page; /* the mapping starts on a page */
    if (whole)
        madvise((void *)data, whole, MADV_DONTNEED);
}

/* ---- temporaries a signal handler can remove ---------------------------- */

enum { SLOTS = 32, SLOT_FREE = 0, SLOT_TAKEN = 1, SLOT_LIVE = 2 };
static struct {
    _Atomic int state;
    char path[PATH_MAX];
} g_slots[SLOTS];

/* A slot naming tmp, or -1 when all are taken (the file is then still
 * removed on every failure, only not by a signal handler). */
static int slot_add(const char *tmp)
{
    if (strlen(tmp) >= PATH_MAX)
        return -1;
    for (int i = 0; i < SLOTS; i++) {
        int expected = SLOT_FREE;
        if (atomic_compare_exchange_strong(&g_slots[i].state, &expected, SLOT_TAKEN)) {
            strcpy(g_slots[i].path, tmp);
            atomic_store(&g_slots[i].state, SLOT_LIVE);
            return i;
        }
    }
    return -1;
}

static void slot_remove(int slot)
{
    if (slot >= 0)
        atomic_store(&g_slots[slot].state, SLOT_FREE);
}

void kvtc_remove_temporaries(void)
{
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&g_slots[i].state) == SLOT_LIVE)
            unlink(g_slots[i].path); /* async-signal-safe */
}

/* ---- the output file ------------------------------------------------------ */

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

/* Removes temporaries in dir left by processes that no longer run. */
static void remove_stale(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    int dfd = dirfd(d);
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, TEMP_PREFIX, sizeof TEMP_PREFIX - 1) != 0)
            continue;
        char *end;
        long pid = strtol(e->d_name + sizeof TEMP_PREFIX - 1, &end, 10);
        if (pid <= 0 || pid > INT_MAX || *end != '.' || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            unlinkat(dfd, e->d_name, 0);
    }
    closedir(d);
}

/* Creates dir/.kvtc-tmp.<pid>.<tag> exclusively with the given mode, its
 * signal slot through *slot. Not mkstemp: that makes the file 0600, and fixing
 * the mode would need umask(), which is process-wide. The name is listed
 * before the file exists, so that a signal arriving just after the open still
 * finds it (unlinking a name not created yet is harmless). */
static int create_temp(const char *dir, char *tmp, size_t tmp_size, mode_t mode, int *slot)
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
        snprintf(tmp, tmp_size, "%s/" TEMP_PREFIX "%ld.%s", dir, (long)getpid(), tag);
        *slot = slot_add(tmp);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd >= 0)
            return fd;
        slot_remove(*slot); /* leaves errno alone */
        *slot = -1;
        if (errno != EEXIST)
            return -1;
    }
    return -1;
}

kvtc_status kvtc_outfile_open(kvtc_outfile *f, const char *path, kvtc_error *err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->slot = -1;
    if (!path || !*path)
        return kvtc_fail(err, KVTC_E_INVALID, "no output path given");
    f->path = path;
    /* Write through a symbolic link: to where it points, which must exist. */
    char *target = NULL;
    struct stat st;
    bool exists = lstat(path, &st) == 0;
    if (exists && S_ISLNK(st.st_mode)) {
        if (!(target = realpath(path, NULL)))
            return kvtc_fail_path(err, KVTC_E_IO, path, "symbolic link to nowhere: %s",
                                  strerror(errno));
        exists = stat(target, &st) == 0;
    }
    const char *dest = target ? target : path;
    if (exists && S_ISDIR(st.st_mode)) {
        free(target);
        return kvtc_fail_path(err, KVTC_E_IO, path, "is a directory");
    }
    if (exists && !S_ISREG(st.st_mode)) {
        /* A device or FIFO: written as it is, never replaced. */
        f->fd = open(dest, O_WRONLY | O_NOCTTY | O_CLOEXEC);
        int e = errno;
        free(target);
        if (f->fd < 0)
            return kvtc_fail_path(err, KVTC_E_IO, path, "cannot open: %s", strerror(e));
        f->direct = true;
        return KVTC_OK;
    }
    size_t n = strlen(dest);
    f->dest = kvtc_malloc(n + 1);
    f->tmp = kvtc_malloc(n + 64);
    if (!f->dest || !f->tmp) {
        free(target);
        kvtc_outfile_abort(f);
        return kvtc_fail_path(err, KVTC_E_NOMEM, path, "out of memory");
    }
    memcpy(f->dest, dest, n + 1);
    free(target);
    /* the destination's folder */
    char *dir = kvtc_malloc(n + 2);
    if (!dir) {
        kvtc_outfile_abort(f);
        return kvtc_fail_path(err, KVTC_E_NOMEM, path, "out of memory");
    }
    const char *slash = strrchr(f->dest, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == f->dest)
        strcpy(dir, "/");
    else
        memcpy(dir, f->dest, (size_t)(slash - f->dest)), dir[slash - f->dest] = '\0';
    remove_stale(dir);
    /* An existing file keeps its permission bits (and, for root, its owner). */
    mode_t mode = exists ? st.st_mode & 07777 : 0666;
    f->fd = create_temp(dir, f->tmp, n + 64, mode, &f->slot);
    int e = errno;
    kvtc_free(dir);
    if (f->fd < 0) {
        kvtc_outfile_abort(f);
        return kvtc_fail_path(err, KVTC_E_IO, path, "cannot create a temporary file: %s",
                              strerror(e));
    }
    if (exists) {
        if (fchmod(f->fd, mode) != 0) {
            /* the mode open() gave, less the umask, stands */
        }
        if (geteuid() == 0 && fchown(f->fd, st.st_uid, st.st_gid) != 0) {
            /* e.g. a file system without owners */
        }
    }
    return KVTC_OK;
}

kvtc_status kvtc_outfile_write(kvtc_outfile *f, const void *data, size_t len, kvtc_error *err)
{
    if (f->fd < 0)
        return kvtc_fail_path(err, KVTC_E_IO, f->path, "output already closed");
    if (write_all(f->fd, data, len) != 0) {
        int e = errno;
        kvtc_outfile_abort(f);
        return kvtc_fail_path(err, KVTC_E_IO, f->path, "cannot write: %s", strerror(e));
    }
    return KVTC_OK;
}

kvtc_status kvtc_outfile_commit(kvtc_outfile *f, kvtc_error *err)
{
    if (f->fd < 0)
        return kvtc_fail_path(err, KVTC_E_IO, f->path, "output already closed");
    const char *what = "cannot sync";
    int e = 0;
    if (!f->direct && fsync(f->fd) != 0)
        goto fail;
    what = "cannot close";
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0)
        goto fail;
    what = "cannot rename into place";
    if (!f->direct && rename(f->tmp, f->dest) != 0)
        goto fail;
    slot_remove(f->slot);
    f->slot = -1;
    kvtc_free(f->tmp);
    kvtc_free(f->dest);
    f->tmp = f->dest = NULL;
    return KVTC_OK;
fail:
    e = errno;
    kvtc_outfile_abort(f);
    return kvtc_fail_path(err, KVTC_E_IO, f->path, "%s: %s", what, strerror(e));
}

void kvtc_outfile_abort(kvtc_outfile *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (f->tmp && !f->direct)
        unlink(f->tmp);
    slot_remove(f->slot);
    f->slot = -1;
    kvtc_free(f->tmp);
    kvtc_free(f->dest);
    f->tmp = f->dest = NULL;
}

kvtc_status kvtc_write_parts_atomic(const char *path, const kvtc_span *parts, size_t n,
                                    kvtc_error *err)
{
    if (!path || !*path || (!parts && n))
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_write_file_atomic: no path or data given");
    for (size_t i = 0; i < n; i++)
        if (!parts[i].data && parts[i].len)
            return kvtc_fail_path(err, KVTC_E_INVALID, path, "no data given for part %zu", i);
    kvtc_outfile f;
    kvtc_status st = kvtc_outfile_open(&f, path, err);
    for (size_t i = 0; i < n && st == KVTC_OK; i++)
        st = kvtc_outfile_write(&f, parts[i].data, parts[i].len, err);
    return st == KVTC_OK ? kvtc_outfile_commit(&f, err) : st;
}

kvtc_status kvtc_write_file_atomic(const char *path, const void *data, size_t len,
                                   kvtc_error *err)
{
    kvtc_span part = {data, len};
    return kvtc_write_parts_atomic(path, &part, 1, err);
}
