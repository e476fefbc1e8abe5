/* Helpers shared by the kvtc subcommands: option values, one-line error
 * messages, the progress bar, JSON output and reading inputs. */
#ifndef KVTC_CLI_H
#define KVTC_CLI_H

#include "json.h"
#include "kvtc.h"

#include <stdbool.h>
#include <stdint.h>

/* Exit statuses: 0 success, 1 a failure (bad file, I/O), 2 a usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Sets the subcommand name that prefixes every message ("kvtc compress: ..."). */
void cli_set_command(const char *name);

/* "kvtc <cmd>: <file>: <message>" on stderr; returns CLI_FAIL. file may be NULL. */
int cli_fail(const char *file, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same for a library error; the file is not repeated when the library's
 * message already starts with it. */
int cli_fail_err(const char *file, const kvtc_error *err);
/* "kvtc <cmd>: <message> (see 'kvtc <cmd> --help')" on stderr; returns CLI_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Strict option values: the whole text must be the number, in range. On
 * failure they print a usage error naming the option and return false. */
bool cli_parse_u32(const char *option, const char *text, uint32_t min, uint32_t max,
                   uint32_t *out);
/* A compression ratio: finite and > 1. */
bool cli_parse_ratio(const char *option, const char *text, double *out);
/* "4096", "64K", "512M", "2G" (powers of 1024) into bytes; > 0. */
bool cli_parse_size(const char *option, const char *text, uint64_t *out);

/* Parses the options of a subcommand with getopt_long (options may follow
 * operands). `shorts` is a getopt option string; every subcommand also takes
 * -h/--help. Calls handle(user, opt, optarg) per option; it returns CLI_OK or an
 * exit status. Unknown options and missing arguments are usage errors. On
 * return *first_operand is the index of the first operand in argv. Returns
 * CLI_OK, an exit status, or -1 when --help was printed (exit 0). */
struct option;
typedef int (*cli_option_fn)(void *user, int opt, const char *arg);
int cli_parse_options(int argc, char **argv, const char *shorts, const struct option *longs,
                      const char *usage, cli_option_fn handle, void *user, int *first_operand);

/* CLI_OK, or a usage error when `output` names an existing regular file that
 * is one of the inputs (the same file, by any name): writing would destroy
 * it before, or instead of, it is read. Commands call it before any work. */
int cli_check_output(const char *output, const char *const *inputs, size_t n_inputs);

/* s made safe to print on a terminal (control characters as '?'), in buf:
 * for names read from files. Returns buf. */
const char *cli_printable(const char *s, char *buf, size_t cap);

/* A numeric macro as a string literal, for usage texts. */
#define CLI_STR_(x) #x
#define CLI_STR(x) CLI_STR_(x)

/* Threads to use by default: the CPUs online. */
uint32_t cli_default_threads(void);

/* Options every command that compresses takes, parsed in one place. Add
 * CLI_COMPRESS_LONG_OPTIONS to the getopt_long table, "r:" to the short
 * options and CLI_COMPRESS_HELP to the usage text (needs <getopt.h>). */
enum {
    CLI_OPT_K_RATIO = 1000,
    CLI_OPT_V_RATIO,
    CLI_OPT_BLOCK_TOKENS,
    CLI_OPT_LEVEL,
    CLI_OPT_THREADS,
    CLI_OPT_BUDGET_RATIO,
    CLI_OPT_BYTES_PER_TOKEN
};
#define CLI_COMPRESS_LONG_OPTIONS                                     \
    {"ratio", required_argument, NULL, 'r'},                          \
    {"k-ratio", required_argument, NULL, CLI_OPT_K_RATIO},            \
    {"v-ratio", required_argument, NULL, CLI_OPT_V_RATIO},            \
    {"budget-ratio", required_argument, NULL, CLI_OPT_BUDGET_RATIO},  \
    {"bytes-per-token", required_argument, NULL, CLI_OPT_BYTES_PER_TOKEN}, \
    {"block-tokens", required_argument, NULL, CLI_OPT_BLOCK_TOKENS},  \
    {"level", required_argument, NULL, CLI_OPT_LEVEL},                \
    {"threads", required_argument, NULL, CLI_OPT_THREADS}
#define CLI_COMPRESS_HELP                                                              \
    "  -r, --ratio R           ratio vs fp16 of the stored bytes of the compressed\n"     \
    "                          tokens, met within ~1% (default "                         \
    CLI_STR(KVTC_DEFAULT_RATIO) ")\n"                                                 \
    "      --k-ratio R         the same for keys only (keys and values together meet\n" \
    "      --v-ratio R         2/(1/K + 1/V); these set the split)\n"                   \
    "      --bytes-per-token B stored bytes per compressed token (keys and values)\n"   \
    "                          instead of a ratio\n"                                     \
    "      --budget-ratio R    a hard cap instead: R sets the bits before DEFLATE\n"      \
    "                          (16 p / R per token and kind), one pass; the stored\n"    \
    "                          ratio comes out 5-20% higher\n"                           \
    "      --block-tokens N    tokens per independently decodable block (default "    \
    CLI_STR(KVTC_DEFAULT_BLOCK_TOKENS) ")\n"                                          \
    "      --level L           DEFLATE level 1..12 (default "                         \
    CLI_STR(KVTC_DEFAULT_DEFLATE_LEVEL) ")\n"                                         \
    "      --threads N         worker threads (default: all CPUs)\n"

typedef struct cli_compress_args {
    double ratio, k_ratio, v_ratio; /* as given; 0 = not given */
    double budget_ratio, bytes_per_token; /* as given; 0 = not given */
    kvtc_compress_options opt;      /* library defaults, all CPUs */
} cli_compress_args;

void cli_compress_args_init(cli_compress_args *a);
/* Handles one of the options above: CLI_OK, CLI_USAGE (message printed), or
 * -1 when `opt` is not one of them. */
int cli_compress_option(cli_compress_args *a, int opt, const char *arg);
/* The options to compress with: --k-ratio and --v-ratio override --ratio. */
kvtc_compress_options cli_compress_options(const cli_compress_args *a);
/* --threads N, shared with the commands that do not compress. */
bool cli_parse_threads(const char *text, uint32_t *out);

/* A progress bar on stderr, drawn only when stderr is a terminal, with the
 * time left once it can be estimated (from the rate since the stage's first
 * report, so a resumed run's skipped work does not count). Pass cli_progress
 * as the kvtc_progress_fn and a cli_progress_state as its user. Long jobs may
 * set log_every: when stderr is not a terminal (a log file), a plain line at
 * most every log_every seconds instead. */
typedef struct cli_progress_state {
    bool enabled;
    const char *stage;
    int shown_percent;
    long shown_left;        /* minutes left last drawn; -1 none */
    double log_every;       /* seconds between log lines; 0 = no log lines */
    double stage_start, last_log;
    uint64_t stage_first;   /* done at the stage's first report */
} cli_progress_state;

void cli_progress_init(cli_progress_state *p);
void cli_progress(void *user, const char *stage, uint64_t done, uint64_t total);
/* Clears the bar's line (call before printing anything else). */
void cli_progress_end(cli_progress_state *p);

/* Seconds on a monotonic clock. */
double cli_now(void);

/* JSON output: begin, fill with kvtc_jw_* calls, then print it on stdout. */
typedef struct cli_json {
    kvtc_writer buf;
    kvtc_json_writer jw;
} cli_json;

void cli_json_begin(cli_json *j);
/* Prints the document and a newline; returns CLI_OK or CLI_FAIL. */
int cli_json_print(cli_json *j);
/* Short forms for "key": value members. */
void cli_json_str(cli_json *j, const char *key, const char *value);
void cli_json_u64(cli_json *j, const char *key, uint64_t value);
void cli_json_i64(cli_json *j, const char *key, int64_t value);
void cli_json_f64(cli_json *j, const char *key, double value);
/* The model shape's members (layers, heads, rope settings) into the open object. */
void cli_json_shape(cli_json *j, const kvtc_model_shape *shape);
/* A stream's plan bits, ratio targets and sizes: the keys k_bits_per_token ..
 * total_bytes that kvtc info and kvtc stats print alike. */
void cli_json_stream_sizes(cli_json *j, const kvtc_stream_info *info);
/* Realized ratios against fp16: of the compressed tokens (NAN when there are
 * none) and of the whole stream. */
double cli_stream_ratio(const kvtc_stream_info *info);
double cli_file_ratio(const kvtc_stream_info *info);

/* Reading inputs; on failure they print the error naming the file and return NULL. */
kvtc_cache *cli_read_cache(const char *path);
/* The same for a .safetensors cache or a llama.cpp sequence state (told apart
 * by content). A llama.cpp state names no heads or RoPE: they come from
 * `llama_shape` (a --model GGUF's or the calibration's); NULL fails with a
 * message asking for --model. `layout` (may be NULL) receives the state's
 * layout; ggsq 0 / n_stream 0 there for a safetensors cache. */
kvtc_cache *cli_read_any_cache(const char *path, const kvtc_model_shape *llama_shape,
                               kvtc_llama_layout *layout);
/* The KV shape of a GGUF model (a path or a name of the model table, fetched
 * if needed) from its metadata, and its name (64 bytes). */
bool cli_read_model_shape(const char *name_or_path, kvtc_model_shape *shape, char name[64]);
/* True when the bytes are a llama.cpp sequence state (ggsq file or bare). */
bool cli_is_llama_state(const void *data, size_t len);
kvtc_calibration *cli_read_calibration(const char *path);
void *cli_read_file(const char *path, size_t *len);

/* Calibrations: the fraction of total variance the first `rank` basis columns
 * of a kind explain (rank is clamped to the kind's), the ranks worth showing
 * (1, 4, 16, ... and the largest; returns how many), and a table of both kinds
 * on stdout, each line starting with `indent`. */
double cli_explained_variance(const kvtc_calibration *cal, kvtc_kind kind, uint32_t rank);
uint32_t cli_variance_ranks(const kvtc_calibration *cal, uint32_t ranks[16]);
void cli_print_variance_table(const kvtc_calibration *cal, const char *indent);

/* "interleaved", "neox" or "none". */
const char *cli_rope_style_name(kvtc_rope_style style);

#endif /* KVTC_CLI_H */
