/* kvtc bench: the measurements behind docs/BENCHMARKS.md, one file each.
 *
 *   ttft         ttft.c: time to first token, restore a .kvtc from disk vs
 *                recompute the prefill, and where a restore's time goes
 *   codec        codec_throughput.c: compress/decompress throughput vs zstd -3
 *                and libdeflate -6, bytes per token at each ratio, time against
 *                context length
 *   prefill      prefill.c: the engine's prefill speed, GFLOP/s, and this
 *                machine's sgemm peak
 *   decode       decode.c: the engine's decode speed, bytes read per second,
 *                and this machine's memory bandwidth
 *   calibration  calibration.c: calibration time against calibration tokens
 *   memory       memory.c: peak memory of compress and decompress against the
 *                sizes of their input and output
 *   serve        serve.c: a load of multi-turn conversations on kvtc serve: time
 *                to first token cold and resumed, hits per tier, capacity
 *
 * Every context is real text from the evaluation corpus (app/corpus.h), run
 * through the model; every figure is a median of repeated runs. What they
 * share is in bench_common.c. */
#include "bench.h"

#include "bench_common.h"
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} benches[] = {
    {"ttft", bench_ttft, "time to first token: restore from a .kvtc vs recompute"},
    {"codec", bench_codec, "codec throughput vs zstd and libdeflate, bytes per token"},
    {"prefill", bench_prefill, "engine prefill speed and this machine's sgemm peak"},
    {"decode", bench_decode, "engine decode speed and this machine's memory bandwidth"},
    {"calibration", bench_calibration, "calibration time against calibration tokens"},
    {"memory", bench_memory, "peak memory of compress and decompress against file sizes"},
    {"serve", bench_serve, "conversations on kvtc serve: TTFT cold/resumed, tiers, capacity"},
};

int cmd_bench(int argc, char **argv)
{
    size_t n = sizeof benches / sizeof benches[0];
    if (argc >= 2)
        for (size_t i = 0; i < n; i++)
            if (strcmp(argv[1], benches[i].name) == 0) {
                static char name[32];
                snprintf(name, sizeof name, "bench %s", benches[i].name);
                cli_set_command(name);
                return benches[i].run(argc - 1, argv + 1);
            }
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: kvtc bench <benchmark> [options]   (kvtc bench <benchmark> --help)\n\n"
               "benchmarks:\n");
        for (size_t i = 0; i < n; i++)
            printf("  %-8s %s\n", benches[i].name, benches[i].summary);
        return CLI_OK;
    }
    char names[128] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                 benches[i].name);
    if (argc < 2)
        return cli_usage_error("no benchmark given (one of %s)", names);
    return cli_usage_error("no benchmark '%s' (one of %s)", argv[1], names);
}
