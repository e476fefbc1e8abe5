/* The disk tier of the prompt cache: one file per entry in a folder, so that
 * compressed conversations survive a restart.
 *
 * An entry is a prompt entry (prompt_cache.h: a header with the block hashes
 * and SHA-256 sums, then the kvtc stream) in DIR/<hex of its last block
 * hash>.kvtce; the last hash names the whole prefix, so an equal prefix
 * overwrites its own file. Files are written whole to a temporary file and
 * renamed into place (kvtc_write_parts_atomic): a crash leaves the old entry
 * or the new one, never a mix. At startup the index is rebuilt from the
 * headers found in DIR (a header that does not check is deleted and counted);
 * entries of another model or calibration are left alone (never indexed);
 * every read checks the whole entry again, and an entry that fails is deleted,
 * counted and never served: the request recomputes.
 *
 * Budget: at most budget_bytes of files. Eviction is least recently used, the
 * order kept across restarts through the files' modification times (a hit
 * touches its file): an idle conversation that has not come back for longest
 * is the least likely to, and an entry that a longer one extends is dropped at
 * once (the longer one restores the same prefix). */
#include "prompt_cache.h"
#include "kvtc_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ENTRY_SUFFIX ".kvtce"

typedef struct disk_tier {
    prompt_tier base;
    pthread_mutex_t lock;
    char *dir;
    prompt_hash fingerprint;
    prompt_index x; /* bytes: the file's size */
    prompt_tier_stats st;
} disk_tier;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* DIR/<hex of the last hash>.kvtce into path (PATH_MAX). */
static void entry_path(const disk_tier *d, const prompt_hash *last, char *path, size_t cap)
{
    char hex[65];
    kvtc_hex(last->b, 32, hex);
    snprintf(path, cap, "%s/%s" ENTRY_SUFFIX, d->dir, hex);
}

static void drop(disk_tier *d, size_t i)
{
    char path[4096];
    prompt_index_entry *e = &d->x.e[i];
    entry_path(d, &e->hashes[e->n_blocks - 1], path, sizeof path);
    unlink(path);
    prompt_index_remove(&d->x, i);
}

static size_t disk_find(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                        size_t shorter, void **stream, size_t *stream_len)
{
    disk_tier *d = (disk_tier *)t;
    size_t found = 0;
    pthread_mutex_lock(&d->lock);
    d->st.lookups++;
    for (;;) {
        size_t at;
        size_t best = prompt_index_best(&d->x, hashes, n_blocks, &at);
        if (best <= shorter)
            break;
        char path[4096];
        prompt_index_entry *e = &d->x.e[at];
        entry_path(d, &e->hashes[e->n_blocks - 1], path, sizeof path);
        void *data = NULL;
        size_t len = 0;
        if (kvtc_read_file(path, &data, &len, NULL) != KVTC_OK) {
            d->st.errors++; /* gone or unreadable: forget it */
            prompt_index_remove(&d->x, at);
            continue;
        }
        prompt_accept a = prompt_entry_accept(data, len, &d->fingerprint, hashes, best, &d->st,
                                              stream, stream_len);
        kvtc_buffer_free(data);
        if (a == PROMPT_REJECTED) {
            drop(d, at);
            continue; /* another entry may still hold a prefix */
        }
        if (a == PROMPT_ACCEPTED) {
            e->last_used = now_ns();
            utimensat(AT_FDCWD, path, NULL, 0); /* the LRU order, kept across restarts */
            found = best;
        }
        break;
    }
    pthread_mutex_unlock(&d->lock);
    return found;
}

static kvtc_status disk_put(prompt_tier *t, const prompt_hash *hashes, size_t n_blocks,
                            const void *stream, size_t stream_len, kvtc_error *err)
{
    disk_tier *d = (disk_tier *)t;
    uint64_t bytes = PROMPT_ENTRY_HEADER(n_blocks) + (uint64_t)stream_len;
    if (n_blocks == 0 || bytes > d->st.budget_bytes)
        return KVTC_OK;
    uint8_t *header = NULL;
    prompt_index_entry e = {.n_blocks = n_blocks, .bytes = bytes};
    e.hashes = kvtc_malloc_array(n_blocks, sizeof *hashes);
    if (!e.hashes)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    memcpy(e.hashes, hashes, n_blocks * sizeof *hashes);
    kvtc_status st = prompt_entry_header(&d->fingerprint, hashes, n_blocks, stream, stream_len,
                                         &header, err);
    if (st != KVTC_OK) {
        kvtc_free(e.hashes);
        return st;
    }
    char path[4096];
    entry_path(d, &hashes[n_blocks - 1], path, sizeof path);
    pthread_mutex_lock(&d->lock);
    /* redundant entries (this one's prefixes, itself included) go first */
    for (size_t i; (i = prompt_index_covered(&d->x, hashes, n_blocks)) < d->x.n;) {
        if (d->x.e[i].n_blocks == n_blocks)
            prompt_index_remove(&d->x, i); /* the same file: rewritten below */
        else
            drop(d, i);
    }
    while (d->x.n > 0 && d->x.bytes + bytes > d->st.budget_bytes) {
        drop(d, prompt_index_lru(&d->x));
        d->st.evictions++;
    }
    kvtc_span parts[2] = {{header, PROMPT_ENTRY_HEADER(n_blocks)}, {stream, stream_len}};
    st = kvtc_write_parts_atomic(path, parts, 2, err);
    if (st == KVTC_OK) {
        e.last_used = now_ns();
        st = prompt_index_add(&d->x, &e, err);
        if (st != KVTC_OK)
            unlink(path);
    } else {
        d->st.errors++;
    }
    if (st == KVTC_OK)
        d->st.stores++;
    pthread_mutex_unlock(&d->lock);
    if (st != KVTC_OK)
        kvtc_free(e.hashes);
    kvtc_free(header);
    return st;
}

static void disk_stats(prompt_tier *t, prompt_tier_stats *out)
{
    disk_tier *d = (disk_tier *)t;
    pthread_mutex_lock(&d->lock);
    *out = d->st;
    out->entries = d->x.n;
    out->bytes = d->x.bytes;
    pthread_mutex_unlock(&d->lock);
}

static void disk_destroy(prompt_tier *t)
{
    disk_tier *d = (disk_tier *)t;
    if (!d)
        return;
    while (d->x.n > 0)
        prompt_index_remove(&d->x, d->x.n - 1);
    free(d->x.e);
    free(d->dir);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* ---- rebuilding the index at startup ------------------------------------------ */

/* Indexes one entry file by its header; false when it does not check. */
typedef enum { FILE_INDEXED, FILE_BAD, FILE_FOREIGN } file_verdict;

static file_verdict index_file(disk_tier *d, const char *path, const char *name)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return FILE_FOREIGN; /* not readable: not ours to judge */
    struct stat sb;
    uint8_t fixed[PROMPT_ENTRY_FIXED];
    size_t header_len;
    uint64_t stream_len;
    bool ok = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) &&
              pread(fd, fixed, sizeof fixed, 0) == (ssize_t)sizeof fixed;
    if (ok && prompt_entry_foreign(fixed, &d->fingerprint)) {
        close(fd);
        return FILE_FOREIGN;
    }
    ok = ok && prompt_entry_fixed(fixed, &d->fingerprint, &header_len, &stream_len) &&
              (uint64_t)sb.st_size == header_len + stream_len;
    uint8_t *header = ok ? kvtc_malloc(header_len) : NULL;
    prompt_index_entry e = {0};
    ok = ok && header && pread(fd, header, header_len, 0) == (ssize_t)header_len &&
         prompt_entry_hashes(header, header_len, &e.hashes, &e.n_blocks);
    close(fd);
    kvtc_free(header);
    if (ok) { /* the name must be the one its last hash gives */
        char want[4096];
        entry_path(d, &e.hashes[e.n_blocks - 1], want, sizeof want);
        ok = strcmp(strrchr(want, '/') + 1, name) == 0;
    }
    if (ok) {
        e.bytes = (uint64_t)sb.st_size;
        e.last_used = (uint64_t)sb.st_mtim.tv_sec * 1000000000u + (uint64_t)sb.st_mtim.tv_nsec;
        ok = prompt_index_add(&d->x, &e, NULL) == KVTC_OK;
    }
    if (!ok)
        kvtc_free(e.hashes);
    return ok ? FILE_INDEXED : FILE_BAD;
}

static kvtc_status scan(disk_tier *d, kvtc_error *err)
{
    DIR *dir = opendir(d->dir);
    if (!dir)
        return kvtc_fail_path(err, KVTC_E_IO, d->dir, "cannot open the folder: %s",
                              strerror(errno));
    struct dirent *de;
    while ((de = readdir(dir))) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", d->dir, de->d_name) >= sizeof path)
            continue;
        size_t n = strlen(de->d_name);
        if (n <= strlen(ENTRY_SUFFIX) ||
            strcmp(de->d_name + n - strlen(ENTRY_SUFFIX), ENTRY_SUFFIX) != 0)
            continue; /* not an entry (temporaries a crash left: the next write removes them) */
        if (index_file(d, path, de->d_name) == FILE_BAD) {
            unlink(path);
            d->st.verify_failures++;
        }
    }
    closedir(dir);
    while (d->x.n > 0 && d->x.bytes > d->st.budget_bytes) { /* a smaller budget than before */
        drop(d, prompt_index_lru(&d->x));
        d->st.evictions++;
    }
    return KVTC_OK;
}

kvtc_status prompt_tier_disk_create(const char *dir, uint64_t budget_bytes,
                                    const prompt_hash *fingerprint, prompt_tier **out,
                                    kvtc_error *err)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return kvtc_fail_path(err, KVTC_E_IO, dir, "cannot create the folder: %s",
                              strerror(errno));
    disk_tier *d = calloc(1, sizeof *d);
    if (!d || !(d->dir = strdup(dir))) {
        free(d);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    pthread_mutex_init(&d->lock, NULL);
    d->base = (prompt_tier){"disk", disk_find, disk_put, disk_stats, disk_destroy};
    d->fingerprint = *fingerprint;
    d->st.budget_bytes = budget_bytes;
    kvtc_status st = scan(d, err);
    if (st != KVTC_OK) {
        disk_destroy(&d->base);
        return st;
    }
    *out = &d->base;
    return KVTC_OK;
}
