/* The benchmarks behind `kvtc bench` (docs/BENCHMARKS.md is their report). */
#ifndef KVTC_BENCH_H
#define KVTC_BENCH_H

/* Runs `kvtc bench <benchmark> [options]`; argv[0] is "bench". Returns the
 * exit status: 0 success, 1 failure, 2 usage error. */
int cmd_bench(int argc, char **argv);

#endif /* KVTC_BENCH_H */
