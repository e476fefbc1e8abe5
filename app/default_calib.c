/* The default calibration of a model: the recipe, the build from the
 * calibration corpus, and the cache next to the model file. */
#include "default_calib.h"
#include "fetch.h"

#include "cli.h"
#include "corpus.h"
#include "kvtc_internal.h"
#include "session.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Part of the cache key: bump when the corpus lists or the build change. */
#define RECIPE_VERSION "corpus-3" /* 3: error tables with the lm types (.kvtcal v2) */
#define IDENTITY_SPAN ((size_t)4 << 20)

void calib_recipe_default(calib_recipe *r)
{
    memset(r, 0, sizeof *r);
    r->chunk_tokens = CALIB_DEFAULT_CHUNK_TOKENS;
    r->n_chunks = CALIB_DEFAULT_CHUNKS;
    kvtc_calib_options_default(&r->opt);
    r->opt.rank = CALIB_DEFAULT_RANK;
    r->opt.n_threads = 1;
}

kvtc_status calibrate_on_corpus(const model *m, const tokenizer *tok, const calib_recipe *r,
                                kvtc_calibration **out, calib_stats *stats, kvtc_error *err)
{
    *out = NULL;
    calib_stats local;
    if (!stats)
        stats = &local;
    memset(stats, 0, sizeof *stats);

    corpus_chunks chunks;
    kvtc_status st = corpus_make_chunks(tok, CORPUS_CALIBRATION, r->chunk_tokens, r->n_chunks,
                                        false, &chunks, err);
    if (st != KVTC_OK)
        return st;
    session *s = NULL;
    kvtc_calibrator *cal = NULL;
    kvtc_progress_fn progress = r->opt.progress;
    st = session_create(m, r->chunk_tokens, r->opt.n_threads, &s, err);
    if (st == KVTC_OK) {
        kvtc_model_shape shape = model_kv_shape(m);
        st = kvtc_calibrator_create(&shape, &r->opt, &cal, err);
    }
    for (size_t i = 0; st == KVTC_OK && i < chunks.n_chunks; i++) {
        if (progress)
            progress(r->opt.progress_user, "prefill", i, chunks.n_chunks);
        double t0 = cli_now();
        kvtc_cache *cache = NULL;
        session_reset(s);
        st = session_forward(s, chunks.chunk[i].ids, chunks.chunk[i].n, NULL, false, err);
        if (st == KVTC_OK)
            st = session_export_cache(s, KVTC_F32, &cache, err);
        double t1 = cli_now();
        if (st == KVTC_OK)
            st = kvtc_calibrator_add(cal, cache, err);
        stats->prefill_s += t1 - t0;
        stats->add_s += cli_now() - t1;
        stats->tokens += chunks.chunk[i].n;
        stats->chunks++;
        kvtc_cache_free(cache);
    }
    if (st == KVTC_OK) {
        if (progress)
            progress(r->opt.progress_user, "prefill", chunks.n_chunks, chunks.n_chunks);
        stats->rows[KVTC_KEY] = kvtc_calibrator_rows(cal, KVTC_KEY);
        stats->rows[KVTC_VALUE] = kvtc_calibrator_rows(cal, KVTC_VALUE);
        stats->excluded[KVTC_KEY] = kvtc_calibrator_excluded(cal, KVTC_KEY);
        stats->excluded[KVTC_VALUE] = kvtc_calibrator_excluded(cal, KVTC_VALUE);
        double t0 = cli_now();
        st = kvtc_calibrator_finish(cal, out, err);
        stats->finish_s = cli_now() - t0;
    }
    kvtc_calibrator_free(cal);
    session_free(s);
    corpus_chunks_free(&chunks);
    return st;
}

/* ---- the cached file --------------------------------------------------------- */

static kvtc_status read_at(int fd, uint64_t offset, unsigned char *buf, size_t n,
                           const char *path, kvtc_error *err)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, buf + got, n - got, (off_t)(offset + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return kvtc_fail(err, KVTC_E_IO, "%s: read failed: %s", path,
                             k == 0 ? "file shrank" : strerror(errno));
        got += (size_t)k;
    }
    return KVTC_OK;
}

/* 16 hex digits naming the model file's content and the recipe. */
static kvtc_status cache_key(const char *model_path, int fd, char key[17], kvtc_error *err)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot stat: %s", model_path, strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    size_t head = size < IDENTITY_SPAN ? (size_t)size : IDENTITY_SPAN;
    size_t tail = size - head < IDENTITY_SPAN ? (size_t)(size - head) : IDENTITY_SPAN;
    char recipe[160];
    int rl = snprintf(recipe, sizeof recipe, "kvtc %s %s chunks=%ux%u rank=%u size=%llu",
                      KVTC_VERSION_STRING, RECIPE_VERSION, CALIB_DEFAULT_CHUNKS, CALIB_DEFAULT_CHUNK_TOKENS,
                      CALIB_DEFAULT_RANK, (unsigned long long)size);
    size_t n = (size_t)rl + head + tail;
    unsigned char *buf = kvtc_malloc(n);
    if (!buf)
        return kvtc_fail(err, KVTC_E_NOMEM, "%s: out of memory", model_path);
    memcpy(buf, recipe, (size_t)rl);
    kvtc_status s = read_at(fd, 0, buf + rl, head, model_path, err);
    if (s == KVTC_OK)
        s = read_at(fd, size - tail, buf + rl + head, tail, model_path, err);
    if (s == KVTC_OK) {
        uint8_t digest[32];
        kvtc_sha256(buf, n, digest);
        kvtc_hex(digest, 8, key);
    }
    kvtc_free(buf);
    return s;
}

static bool readable_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, R_OK) == 0;
}

/* Removes "<base>.<16 hex>.kvtcal" files of `dir` other than `keep`: stale
 * calibrations of the same model file (tens of MB each). */
static void remove_stale(const char *dir, const char *base, const char *keep)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t bl = strlen(base);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strlen(name) != bl + 1 + 16 + 7 || strncmp(name, base, bl) != 0 ||
            name[bl] != '.' || strcmp(name + bl + 17, ".kvtcal") != 0 || strcmp(name, keep) == 0)
            continue;
        bool hex = true;
        for (size_t i = bl + 1; i < bl + 17; i++)
            hex = hex && ((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'));
        char path[4096];
        if (hex && snprintf(path, sizeof path, "%s/%s", dir, name) < (int)sizeof path)
            unlink(path);
    }
    closedir(d);
}

/* Builds the calibration of model_path and writes it to path. */
static kvtc_status build(const char *model_path, uint32_t n_threads, const char *path,
                         kvtc_error *err)
{
    /* the time grows with the model (qwen2.5-coder-1.5b: 1812 s measured) */
    fprintf(stderr, "kvtc: building the default calibration of %s (first use; on 2 cores, "
                    "3-7 minutes for smollm2-135m, about 30 for qwen2.5-coder-1.5b)\n",
            model_path);
    double t0 = cli_now();
    model *m = NULL;
    tokenizer *tok = NULL;
    kvtc_status st = model_open(model_path, &m, &tok, err);
    if (st == KVTC_OK && !tok)
        st = kvtc_fail(err, KVTC_E_UNSUPPORTED,
                       "%s: no tokenizer in the model file, so no text to calibrate on; "
                       "calibrate with 'kvtc calibrate' on your own caches",
                       model_path);
    kvtc_calibration *cal = NULL;
    calib_stats stats;
    if (st == KVTC_OK) {
        cli_progress_state bar;
        cli_progress_init(&bar);
        calib_recipe r;
        calib_recipe_default(&r);
        r.opt.n_threads = n_threads ? n_threads : 1;
        r.opt.progress = cli_progress;
        r.opt.progress_user = &bar;
        st = calibrate_on_corpus(m, tok, &r, &cal, &stats, err);
        cli_progress_end(&bar);
    }
    if (st == KVTC_OK)
        st = kvtc_calibration_write(cal, path, err);
    if (st == KVTC_OK)
        fprintf(stderr, "kvtc: calibrated on %llu tokens in %.0f s: %s\n",
                (unsigned long long)stats.tokens, cli_now() - t0, path);
    kvtc_calibration_free(cal);
    tokenizer_free(tok);
    model_free(m);
    return st;
}

kvtc_status default_calibration(const char *model_path, uint32_t n_threads, char *path_out,
                                size_t cap, kvtc_error *err)
{
    int fd = open(model_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot open: %s", model_path, strerror(errno));
    char key[17];
    kvtc_status st = cache_key(model_path, fd, key, err);

    /* The model's folder first, then the cache folder. */
    const char *slash = strrchr(model_path, '/');
    const char *base = slash ? slash + 1 : model_path;
    char dirs[2][4096];
    if (!slash)
        snprintf(dirs[0], sizeof dirs[0], ".");
    else
        snprintf(dirs[0], sizeof dirs[0], "%.*s", slash == model_path ? 1 : (int)(slash - model_path),
                 model_path);
    if (st == KVTC_OK)
        st = fetch_cache_dir(dirs[1], sizeof dirs[1], true, err);
    char name[1024], paths[2][4096 + 1024];
    if (st == KVTC_OK && snprintf(name, sizeof name, "%s.%s.kvtcal", base, key) >= (int)sizeof name)
        st = kvtc_fail(err, KVTC_E_INVALID, "%s: model file name too long", model_path);
    for (int i = 0; st == KVTC_OK && i < 2; i++)
        if (snprintf(paths[i], sizeof paths[i], "%s/%s", dirs[i], name) >= (int)sizeof paths[i])
            st = kvtc_fail(err, KVTC_E_INVALID, "%s: calibration path too long", dirs[i]);

    /* Built before, or by another process while this one waited for the lock. */
    bool locked = false;
    int found = -1;
    while (st == KVTC_OK && found < 0) {
        for (int i = 0; i < 2 && found < 0; i++)
            if (readable_file(paths[i]))
                found = i;
        if (found >= 0 || locked)
            break;
        if (flock(fd, LOCK_EX) != 0)
            st = kvtc_fail(err, KVTC_E_IO, "%s: cannot lock: %s", model_path, strerror(errno));
        locked = true;
    }
    if (st == KVTC_OK && found < 0) {
        found = access(dirs[0], W_OK) == 0 ? 0 : 1;
        st = build(model_path, n_threads, paths[found], err);
        if (st == KVTC_OK)
            remove_stale(dirs[found], base, name);
    }
    if (st == KVTC_OK && snprintf(path_out, cap, "%s", paths[found]) >= (int)cap)
        st = kvtc_fail(err, KVTC_E_INVALID, "%s: calibration path too long", paths[found]);
    close(fd); /* also releases the lock */
    return st;
}
