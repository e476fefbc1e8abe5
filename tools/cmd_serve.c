/* kvtc serve: the OpenAI-compatible chat server (server/). This file only
 * parses options and loads the model and calibration. */
#include "cli.h"
#include "commands.h"
#include "default_calib.h"
#include "default_model.h"
#include "fetch.h"
#include "server.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: kvtc serve [--model NAME|PATH] [--port N] [--host ADDR] [options]\n"
    "\n"
    "An HTTP server speaking the OpenAI chat API (POST /v1/chat/completions,\n"
    "streamed or not; GET /v1/models, /health, /metrics). Requests whose tokens\n"
    "extend an earlier conversation restore its KV cache, kept kvtc-compressed\n"
    "in RAM, and run only the new tokens. Decoding is greedy (temperature 0).\n"
    "\n"
    "options:\n"
    "  -m, --model NAME|PATH   a model 'kvtc fetch' knows, or a GGUF file (default:\n"
    "                          SmolLM2-135M-Instruct, fetched on first use)\n"
    "  -c, --calibration FILE  calibration (default: the model's default one)\n"
    "  -p, --port N            TCP port (default 8080; 0: any free port)\n"
    "      --host ADDR         IPv4 address to listen on (default 127.0.0.1)\n"
    "      --port-file FILE    write the port listened on to FILE\n"
    "      --max-queue N       requests waiting beyond the running one before\n"
    "                          429 (default 16)\n"
    "      --max-body SIZE     request body limit, e.g. 1M (default 1M; 413 above)\n"
    "      --max-tokens N      default and upper limit of max_tokens (default 256)\n"
    "      --ram-budget SIZE   compressed caches kept in RAM, e.g. 512M (default\n"
    "                          1G; 0: none in RAM)\n"
    "      --disk-dir DIR      also keep them in DIR (survives restarts)\n"
    "      --disk-budget SIZE  bytes of entries in --disk-dir (default 10G)\n"
    "      --redis HOST:PORT[,HOST:PORT...]\n"
    "                          also keep them in this Redis Cluster, shared by\n"
    "                          every server using it\n"
    "      --redis-ttl S       lifetime of the keys written there (default 86400;\n"
    "                          0: none, the nodes' maxmemory policy evicts)\n"
    "      --timeout S         idle connection timeout in seconds (default 60)\n"
    "  -r, --ratio R           target compression ratio of cached caches (default "
    CLI_STR(KVTC_DEFAULT_RATIO) ")\n"
    "      --threads N         engine threads (default: all CPUs)\n"
    "  -h, --help              this help\n";

enum { OPT_HOST = 1300, OPT_PORT_FILE, OPT_MAX_QUEUE, OPT_MAX_BODY, OPT_MAX_TOKENS,
       OPT_RAM_BUDGET, OPT_TIMEOUT, OPT_THREADS, OPT_DISK_DIR, OPT_DISK_BUDGET, OPT_REDIS,
       OPT_REDIS_TTL };

typedef struct serve_args {
    const char *model, *calibration, *port_file, *host, *disk_dir, *redis;
    uint32_t port, max_queue, max_tokens, timeout, threads, redis_ttl;
    uint64_t max_body, ram_budget, disk_budget;
    double ratio;
} serve_args;

static bool parse_budget(const char *what, const char *text, uint64_t *out)
{
    if (strcmp(text, "0") == 0) {
        *out = 0;
        return true;
    }
    return cli_parse_size(what, text, out);
}

static int handle_option(void *user, int opt, const char *arg)
{
    serve_args *a = user;
    bool ok = true;
    switch (opt) {
    case 'm': a->model = arg; break;
    case 'c': a->calibration = arg; break;
    case 'p': ok = cli_parse_u32("--port", arg, 0, 65535, &a->port); break;
    case 'r': ok = cli_parse_ratio("--ratio", arg, &a->ratio); break;
    case OPT_HOST: a->host = arg; break;
    case OPT_PORT_FILE: a->port_file = arg; break;
    case OPT_MAX_QUEUE: ok = cli_parse_u32("--max-queue", arg, 0, 1u << 20, &a->max_queue); break;
    case OPT_MAX_BODY: ok = cli_parse_size("--max-body", arg, &a->max_body); break;
    case OPT_MAX_TOKENS: ok = cli_parse_u32("--max-tokens", arg, 1, 1u << 20, &a->max_tokens); break;
    case OPT_RAM_BUDGET: ok = parse_budget("--ram-budget", arg, &a->ram_budget); break;
    case OPT_DISK_DIR: a->disk_dir = arg; break;
    case OPT_DISK_BUDGET: ok = parse_budget("--disk-budget", arg, &a->disk_budget); break;
    case OPT_REDIS: a->redis = arg; break;
    case OPT_REDIS_TTL: ok = cli_parse_u32("--redis-ttl", arg, 0, 1u << 30, &a->redis_ttl); break;
    case OPT_TIMEOUT: ok = cli_parse_u32("--timeout", arg, 1, 86400, &a->timeout); break;
    case OPT_THREADS: ok = cli_parse_threads(arg, &a->threads); break;
    default: return CLI_USAGE;
    }
    return ok ? CLI_OK : CLI_USAGE;
}

/* The model file: a name from the fetch table, a path, or the default. */
static kvtc_status resolve_model(const char *arg, char *path, size_t cap, kvtc_error *err)
{
    if (!arg)
        return default_model_path(path, cap, true, err);
    const model_entry *e = model_find(arg);
    if (e) {
        fetch_options fo = {.download = true, .verify = false};
        return fetch_model(e, &fo, path, cap, err);
    }
    if ((size_t)snprintf(path, cap, "%s", arg) >= cap)
        return kvtc_fail(err, KVTC_E_INVALID, "model path too long");
    return KVTC_OK;
}

int cmd_serve(int argc, char **argv)
{
    static const struct option longs[] = {
        {"model", required_argument, NULL, 'm'},
        {"calibration", required_argument, NULL, 'c'},
        {"port", required_argument, NULL, 'p'},
        {"ratio", required_argument, NULL, 'r'},
        {"host", required_argument, NULL, OPT_HOST},
        {"port-file", required_argument, NULL, OPT_PORT_FILE},
        {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"ram-budget", required_argument, NULL, OPT_RAM_BUDGET},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"disk-dir", required_argument, NULL, OPT_DISK_DIR},
        {"disk-budget", required_argument, NULL, OPT_DISK_BUDGET},
        {"redis", required_argument, NULL, OPT_REDIS},
        {"redis-ttl", required_argument, NULL, OPT_REDIS_TTL},
        {0},
    };
    serve_args a = {.host = "127.0.0.1", .port = 8080, .max_queue = 16, .max_tokens = 256,
                    .timeout = 60, .threads = cli_default_threads(), .max_body = 1u << 20,
                    .ram_budget = 1ull << 30, .disk_budget = 10ull << 30,
                    .redis_ttl = 86400, .ratio = KVTC_DEFAULT_RATIO};
    int first;
    int rc = cli_parse_options(argc, argv, "m:c:p:r:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (first < argc)
        return cli_usage_error("unexpected argument '%s'", argv[first]);

    char model_path[4096], calib_path[4096];
    model *m = NULL;
    tokenizer *tok = NULL;
    kvtc_calibration *cal = NULL;
    kvtc_error err;
    rc = CLI_FAIL;
    if (resolve_model(a.model, model_path, sizeof model_path, &err) != KVTC_OK) {
        cli_fail_err(a.model, &err);
        goto done;
    }
    if (model_open(model_path, &m, &tok, &err) != KVTC_OK) {
        cli_fail_err(model_path, &err);
        goto done;
    }
    if (!tok) {
        cli_fail(model_path, "this model has no tokenizer, so it cannot serve chat");
        goto done;
    }
    if (a.calibration) {
        snprintf(calib_path, sizeof calib_path, "%s", a.calibration);
    } else if (default_calibration(model_path, a.threads, calib_path, sizeof calib_path, &err) !=
               KVTC_OK) {
        cli_fail_err(NULL, &err);
        goto done;
    }
    if (!(cal = cli_read_calibration(calib_path)))
        goto done;
    /* the id clients name: the file's name without folder and extension */
    char id[4096];
    const char *base = strrchr(model_path, '/');
    snprintf(id, sizeof id, "%s", base ? base + 1 : model_path);
    char *dot = strstr(id, ".gguf");
    if (dot)
        *dot = '\0';
    const char *cal_base = strrchr(calib_path, '/');
    serve_options so = {.m = m, .tok = tok, .model_id = id, .cal = cal,
                        .calib_id = cal_base ? cal_base + 1 : calib_path, .host = a.host,
                        .port = (uint16_t)a.port, .max_queue = a.max_queue,
                        .max_body = a.max_body, .ram_budget = a.ram_budget,
                        .disk_dir = a.disk_dir, .disk_budget = a.disk_budget,
                        .redis = a.redis, .redis_ttl_s = a.redis_ttl,
                        .max_tokens = a.max_tokens, .timeout_s = a.timeout,
                        .threads = a.threads, .port_file = a.port_file};
    kvtc_compress_options_default(&so.copt);
    so.copt.k_ratio = so.copt.v_ratio = a.ratio;
    so.copt.n_threads = a.threads;
    if (serve_run(&so, &err) != KVTC_OK)
        cli_fail_err(NULL, &err);
done:
    kvtc_calibration_free(cal);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}
