/* Where the default model lives, and fetching it on first use with
 * scripts/fetch-model.sh (found in the source tree this was built from, or
 * near the executable for a relocated build). */
#include "default_model.h"
#include "kvtc_internal.h"
#include "model.h"

#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#ifndef KVTC_SOURCE_DIR
#define KVTC_SOURCE_DIR "."
#endif

static kvtc_status cache_dir(char *buf, size_t cap, kvtc_error *err)
{
    const char *dir = getenv("KVTC_CACHE_DIR"), *home = getenv("HOME");
    int n;
    if (dir && *dir)
        n = snprintf(buf, cap, "%s", dir);
    else if (home && *home)
        n = snprintf(buf, cap, "%s/.cache/kvtc", home);
    else
        return kvtc_fail(err, KVTC_E_INVALID,
                         "cannot place the model cache: neither KVTC_CACHE_DIR nor HOME is set");
    if (n < 0 || (size_t)n >= cap)
        return kvtc_fail(err, KVTC_E_INVALID, "model cache folder path too long");
    return KVTC_OK;
}

/* First existing fetch-model.sh among the source tree's and those beside
 * the running executable (<bin>/scripts, <bin>/../scripts). */
static bool find_fetch_script(char *buf, size_t cap)
{
    if ((size_t)snprintf(buf, cap, "%s/scripts/fetch-model.sh", KVTC_SOURCE_DIR) < cap &&
        access(buf, R_OK) == 0)
        return true;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return false;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return false;
    *slash = '\0';
    static const char *const rel[] = {"scripts", "../scripts"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++)
        if ((size_t)snprintf(buf, cap, "%s/%s/fetch-model.sh", exe, rel[i]) < cap &&
            access(buf, R_OK) == 0)
            return true;
    return false;
}

/* Runs the fetch script (which finds the cache folder from the same
 * environment) with its stdout sent to stderr, so that a command whose
 * output is data (generated text) is not polluted. */
static kvtc_status run_fetch(const char *script, kvtc_error *err)
{
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0)
        return kvtc_fail(err, KVTC_E_NOMEM, "cannot run %s", script);
    posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
    char *argv[] = {"bash", (char *)script, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "bash", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return kvtc_fail(err, KVTC_E_IO, "cannot run %s: %s", script, strerror(rc));
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return kvtc_fail(err, KVTC_E_IO, "waiting for %s: %s", script, strerror(errno));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return kvtc_fail(err, KVTC_E_IO,
                         "the default model could not be fetched (%s failed; see its message "
                         "above)", script);
    return KVTC_OK;
}

kvtc_status default_model_path(char *buf, size_t cap, bool fetch, kvtc_error *err)
{
    char dir[PATH_MAX];
    kvtc_status st = cache_dir(dir, sizeof dir, err);
    if (st != KVTC_OK)
        return st;
    int n = snprintf(buf, cap, "%s/%s", dir, DEFAULT_MODEL_FILE);
    if (n < 0 || (size_t)n >= cap)
        return kvtc_fail(err, KVTC_E_INVALID, "default model path too long");
    if (access(buf, R_OK) == 0)
        return KVTC_OK;
    if (!fetch)
        return kvtc_fail(err, KVTC_E_IO,
                         "default model not found at %s (scripts/fetch-model.sh fetches it)", buf);
    char script[PATH_MAX];
    if (!find_fetch_script(script, sizeof script))
        return kvtc_fail(err, KVTC_E_IO,
                         "default model not found at %s, and scripts/fetch-model.sh to fetch it "
                         "is not found either", buf);
    if ((st = run_fetch(script, err)) != KVTC_OK)
        return st;
    if (access(buf, R_OK) != 0)
        return kvtc_fail(err, KVTC_E_IO, "%s still missing after fetching it", buf);
    return KVTC_OK;
}

kvtc_status model_open_or_default(const char *path, model **out, tokenizer **tok,
                                  kvtc_error *err)
{
    char default_path[PATH_MAX];
    if (!path) {
        kvtc_status st = default_model_path(default_path, sizeof default_path, true, err);
        if (st != KVTC_OK)
            return st;
        path = default_path;
    }
    return model_open(path, out, tok, err);
}
