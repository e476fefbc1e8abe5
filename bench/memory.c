/* kvtc bench memory: the peak resident memory of `kvtc compress` and
 * `kvtc decompress`, each run as a child process of this same executable on a
 * real cache, against the sizes of what they read and write. */
#include "bench_common.h"

#include "cli.h"
#include "kvtc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char memory_usage[] =
    "usage: kvtc bench memory [--model PATH] [-c CALIB] [--ratio R] [--context N]\n"
    "                         [--threads N] [--json]\n"
    "\n"
    "Peak resident memory (the kernel's maximum RSS of the process) of kvtc compress\n"
    "and kvtc decompress run as child processes on an f16 cache of N context tokens\n"
    "of the evaluation corpus, against the sizes of their input and output files and\n"
    "of the calibration each loads. A child that only prints its version gives the\n"
    "executable's own baseline; 'above baseline' subtracts it.\n"
    "\n"
    "options:\n"
    "      --model PATH        GGUF model (default: SmolLM2-135M-Instruct, fetched)\n"
    "  -c, --calibration FILE  calibration (default: the model's default one)\n"
    "  -r, --ratio R           target ratio (default 16)\n"
    "      --context N         context tokens (default 4096)\n"
    "      --threads N         threads of each child (default: all CPUs)\n"
    "      --json              print the results as JSON\n"
    "  -h, --help              this help\n";

typedef struct memory_run {
    const char *name;
    const char *in_path, *out_path;
    uint64_t in_bytes, out_bytes, peak_bytes;
} memory_run;

/* Linux carries a process's peak RSS across exec, and a spawned child starts
 * with its parent's; children spawned after the model is loaded would all
 * report the benchmark's own peak. So a launcher is forked first, while this
 * process is small, and spawns every measured child: the parent sends it an
 * argv (NUL-terminated strings, then an empty one) and reads back the exit
 * status and peak RSS. */
typedef struct launcher {
    pid_t pid;
    int to, from; /* pipe ends: commands to it, results from it */
} launcher;

typedef struct child_result {
    int status;
    uint64_t peak_bytes;
} child_result;

static bool read_full(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static bool write_full(int fd, const void *buf, size_t n)
{
    for (size_t put = 0; put < n;) {
        ssize_t w = write(fd, (const char *)buf + put, n - put);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        put += (size_t)w;
    }
    return true;
}

/* Spawns argv with stdout on /dev/null and waits for it. */
static child_result spawn_and_wait(char *const *argv)
{
    child_result r = {-1, 0};
    pid_t pid;
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0)
        return r;
    if (posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0) == 0 &&
        posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ) == 0) {
        int status;
        struct rusage ru;
        pid_t w;
        while ((w = wait4(pid, &status, 0, &ru)) < 0 && errno == EINTR)
            ;
        if (w == pid) {
            r.status = status;
            r.peak_bytes = (uint64_t)ru.ru_maxrss * 1024; /* Linux reports kilobytes */
        }
    }
    posix_spawn_file_actions_destroy(&fa);
    return r;
}

static void launcher_serve(int in, int out)
{
    enum { MAX_ARGS = 32, MAX_TEXT = 65536 };
    static char text[MAX_TEXT];
    for (;;) {
        char *argv[MAX_ARGS + 1];
        size_t n = 0, used = 0;
        for (;;) { /* one string, byte by byte: commands are short */
            size_t start = used;
            do {
                if (used == MAX_TEXT || !read_full(in, &text[used], 1))
                    _exit(0); /* the parent is done (or gone) */
            } while (text[used++] != '\0');
            if (used - start == 1)
                break;
            if (n < MAX_ARGS)
                argv[n++] = &text[start];
        }
        argv[n] = NULL;
        child_result r = spawn_and_wait(argv);
        if (!write_full(out, &r, sizeof r))
            _exit(0);
    }
}

static bool launcher_start(launcher *l)
{
    int to[2], from[2];
    if (pipe(to) != 0)
        return false;
    if (pipe(from) != 0) {
        close(to[0]), close(to[1]);
        return false;
    }
    fflush(NULL);
    l->pid = fork();
    if (l->pid == 0) {
        close(to[1]), close(from[0]);
        launcher_serve(to[0], from[1]);
    }
    close(to[0]), close(from[1]);
    if (l->pid < 0) {
        close(to[1]), close(from[0]);
        return false;
    }
    l->to = to[1];
    l->from = from[0];
    return true;
}

static void launcher_stop(launcher *l)
{
    close(l->to);
    close(l->from);
    while (waitpid(l->pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* Runs this executable with argv (argv[0] ignored) through the launcher; its
 * peak RSS in bytes through *peak. False (printed) when it fails. */
static bool run_child(const launcher *l, char *const *argv, uint64_t *peak)
{
    bool sent = true;
    for (size_t i = 0; argv[i] && sent; i++)
        sent = write_full(l->to, argv[i], strlen(argv[i]) + 1);
    child_result r;
    if (!sent || !write_full(l->to, "", 1) || !read_full(l->from, &r, sizeof r)) {
        cli_fail(NULL, "the launcher of the measured commands stopped");
        return false;
    }
    if (r.status < 0 || !WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
        cli_fail(NULL, "'kvtc %s' failed (wait status %d)", argv[1], r.status);
        return false;
    }
    *peak = r.peak_bytes;
    return true;
}

static uint64_t file_bytes(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static double mb(uint64_t bytes) { return (double)bytes / 1e6; }

static void print_runs(const memory_run *runs, size_t n, uint64_t baseline, uint64_t calib,
                       const bench_args *a, const bench_env *e)
{
    printf("peak memory of kvtc compress and decompress (%u tokens, f16 cache, ratio %g, %u "
           "threads)\n",
           a->context, a->ratio, e->threads);
    printf("  executable baseline (kvtc --version): %.1f MB; calibration file: %.1f MB\n",
           mb(baseline), mb(calib));
    printf("  %-11s %10s %10s %9s %15s %16s\n", "command", "input MB", "output MB", "peak MB",
           "above baseline", "÷ larger file");
    for (size_t i = 0; i < n; i++) {
        const memory_run *r = &runs[i];
        uint64_t above = r->peak_bytes > baseline ? r->peak_bytes - baseline : 0;
        uint64_t larger = r->in_bytes > r->out_bytes ? r->in_bytes : r->out_bytes;
        printf("  %-11s %10.1f %10.1f %9.1f %12.1f MB %15.2f×\n", r->name, mb(r->in_bytes),
               mb(r->out_bytes), mb(r->peak_bytes), mb(above),
               larger ? (double)above / (double)larger : 0.0);
    }
    printf("  (peak: the child's maximum resident set, which counts the pages of memory-mapped\n"
           "  input it has touched; the calibration is loaded by both commands)\n");
}

static int print_json(const memory_run *runs, size_t n, uint64_t baseline, uint64_t calib,
                      const bench_args *a, const bench_env *e)
{
    cli_json j;
    cli_json_begin(&j);
    cli_json_u64(&j, "context", a->context);
    cli_json_f64(&j, "ratio", a->ratio);
    cli_json_u64(&j, "threads", e->threads);
    cli_json_u64(&j, "baseline_bytes", baseline);
    cli_json_u64(&j, "calibration_bytes", calib);
    for (size_t i = 0; i < n; i++) {
        kvtc_jw_key(&j.jw, runs[i].name);
        kvtc_jw_begin_object(&j.jw);
        cli_json_u64(&j, "input_bytes", runs[i].in_bytes);
        cli_json_u64(&j, "output_bytes", runs[i].out_bytes);
        cli_json_u64(&j, "peak_bytes", runs[i].peak_bytes);
        kvtc_jw_end_object(&j.jw);
    }
    return cli_json_print(&j);
}

int bench_memory(int argc, char **argv)
{
    static const struct option longs[] = {OPTION_MODEL,   OPTION_CALIB,   OPTION_RATIO,
                                          OPTION_CONTEXT, OPTION_THREADS, OPTION_JSON,
                                          {0}};
    bench_args a = {.ratio = 16, .context = 4096, .threads = cli_default_threads()};
    bench_env e;
    int rc;
    launcher l;
    if (!launcher_start(&l))
        return cli_fail(NULL, "cannot start the launcher of the measured commands: %s",
                        strerror(errno));
    if (!bench_begin(argc, argv, "c:r:", longs, memory_usage, &a, &e, true, &rc)) {
        launcher_stop(&l);
        return rc;
    }
    rc = CLI_FAIL;
    const char *tmp = getenv("TMPDIR");
    char dir[4096], cache_path[4200], stream_path[4200], restored_path[4200];
    snprintf(dir, sizeof dir, "%s/kvtc-bench-memory.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        cli_fail(dir, "cannot create a temporary folder: %s", strerror(errno));
        bench_env_close(&e);
        return CLI_FAIL;
    }
    snprintf(cache_path, sizeof cache_path, "%s/cache.safetensors", dir);
    snprintf(stream_path, sizeof stream_path, "%s/cache.kvtc", dir);
    snprintf(restored_path, sizeof restored_path, "%s/restored.safetensors", dir);

    int32_t *ids = bench_context_ids(&e, a.context);
    kvtc_cache *cache = ids ? bench_prefill_cache(&e, ids, a.context) : NULL;
    kvtc_error err;
    if (cache && kvtc_cache_write_safetensors(cache, cache_path, &err) != KVTC_OK)
        cli_fail_err(cache_path, &err);
    else if (cache) {
        char ratio[32], threads[16];
        snprintf(ratio, sizeof ratio, "%g", a.ratio);
        snprintf(threads, sizeof threads, "%u", e.threads);
        char *version[] = {"kvtc", "--version", NULL};
        char *compress[] = {"kvtc", "compress", "-c", e.calib_path, "-r", ratio, "--threads",
                            threads, "-o", stream_path, cache_path, NULL};
        char *decompress[] = {"kvtc", "decompress", "-c", e.calib_path, "--threads", threads,
                              "-o", restored_path, stream_path, NULL};
        memory_run runs[] = {{"compress", cache_path, stream_path, 0, 0, 0},
                             {"decompress", stream_path, restored_path, 0, 0, 0}};
        char *const *argvs[] = {compress, decompress};
        uint64_t baseline;
        bool ok = run_child(&l, version, &baseline);
        for (size_t i = 0; ok && i < 2; i++) {
            ok = run_child(&l, argvs[i], &runs[i].peak_bytes);
            runs[i].in_bytes = file_bytes(runs[i].in_path);
            runs[i].out_bytes = file_bytes(runs[i].out_path);
        }
        if (ok) {
            uint64_t calib = file_bytes(e.calib_path);
            if (a.json)
                rc = print_json(runs, 2, baseline, calib, &a, &e);
            else {
                print_runs(runs, 2, baseline, calib, &a, &e);
                rc = CLI_OK;
            }
        }
    }
    remove(cache_path);
    remove(stream_path);
    remove(restored_path);
    rmdir(dir);
    launcher_stop(&l);
    kvtc_cache_free(cache);
    kvtc_free(ids);
    bench_env_close(&e);
    return rc;
}
