/* Helpers shared by the kvtc subcommands (see cli.h). */
#include "cli.h"
#include "default_model.h"
#include "kvtc_internal.h"
#include "model.h"

#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *g_command = "kvtc";
static bool g_bar_visible; /* a progress bar is on the terminal's last line */

static void clear_bar(void)
{
    if (g_bar_visible) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        g_bar_visible = false;
    }
}

void cli_set_command(const char *name) { g_command = name; }

/* One line on stderr: "kvtc CMD: [FILE: ]MESSAGE[SUFFIX]", control characters
 * (from a file name, an argument) made visible so that nothing a user did
 * not write reaches the terminal as such. */
static void print_line(const char *file, const char *suffix, const char *fmt, va_list ap)
{
    char line[8192];
    size_t n = (size_t)snprintf(line, sizeof line, strcmp(g_command, "kvtc") == 0 ? "kvtc: "
                                                                                  : "kvtc %s: ",
                                g_command);
    if (file && n < sizeof line)
        n += (size_t)snprintf(line + n, sizeof line - n, "%s: ", file);
    if (n < sizeof line)
        vsnprintf(line + n, sizeof line - n, fmt, ap);
    kvtc_text_sanitize(line);
    fflush(stdout);
    clear_bar();
    fprintf(stderr, "%s%s\n", line, suffix);
}

int cli_fail(const char *file, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_line(file, "", fmt, ap);
    va_end(ap);
    return CLI_FAIL;
}

int cli_fail_err(const char *file, const kvtc_error *err)
{
    const char *msg = err->message[0] ? err->message : kvtc_status_string(err->status);
    size_t n = file ? strlen(file) : 0;
    if (file && strncmp(msg, file, n) == 0 && msg[n] == ':')
        file = NULL;
    return cli_fail(file, "%s", msg);
}

int cli_usage_error(const char *fmt, ...)
{
    char see[96];
    if (strcmp(g_command, "kvtc") == 0)
        snprintf(see, sizeof see, " (see 'kvtc --help')");
    else
        snprintf(see, sizeof see, " (see 'kvtc %s --help')", g_command);
    va_list ap;
    va_start(ap, fmt);
    print_line(NULL, see, fmt, ap);
    va_end(ap);
    return CLI_USAGE;
}

bool cli_parse_u32(const char *option, const char *text, uint32_t min, uint32_t max,
                   uint32_t *out)
{
    uint64_t v;
    if (!kvtc_parse_u64(text, strlen(text), &v) || v < min || v > max) {
        cli_usage_error("%s: '%s' is not an integer in [%u, %u]", option, text, min, max);
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

bool cli_parse_size(const char *option, const char *text, uint64_t *out)
{
    size_t n = strlen(text);
    unsigned shift = 0;
    if (n > 1) {
        switch (text[n - 1]) {
        case 'K': case 'k': shift = 10; break;
        case 'M': case 'm': shift = 20; break;
        case 'G': case 'g': shift = 30; break;
        case 'T': case 't': shift = 40; break;
        }
    }
    uint64_t v;
    if (!kvtc_parse_u64(text, shift ? n - 1 : n, &v) || v == 0 || v > (UINT64_MAX >> shift)) {
        cli_usage_error("%s: '%s' is not a size in bytes (a positive integer, optionally with "
                        "K, M, G or T)", option, text);
        return false;
    }
    *out = v << shift;
    return true;
}

bool cli_parse_ratio(const char *option, const char *text, double *out)
{
    double v;
    if (!kvtc_parse_double(text, strlen(text), &v) || !(v > 1) || v > 1e6) {
        cli_usage_error("%s: '%s' is not a compression ratio (a number above 1)", option, text);
        return false;
    }
    *out = v;
    return true;
}

int cli_parse_options(int argc, char **argv, const char *shorts, const struct option *longs,
                      const char *usage, cli_option_fn handle, void *user, int *first_operand)
{
    char all_shorts[64];
    snprintf(all_shorts, sizeof all_shorts, ":h%s", shorts);
    struct option all_longs[32];
    size_t n = 0;
    for (; longs && longs[n].name && n < 30; n++)
        all_longs[n] = longs[n];
    all_longs[n++] = (struct option){"help", no_argument, NULL, 'h'};
    all_longs[n] = (struct option){0};

    optind = 1;
    opterr = 0;
    for (;;) {
        int prev = optind;
        int opt = getopt_long(argc, argv, all_shorts, all_longs, NULL);
        if (opt == -1)
            break;
        /* The option as the user wrote it, for messages. */
        const char *written = prev < argc ? argv[prev] : "?";
        if (opt == 'h') {
            fputs(usage, stdout);
            return -1;
        }
        if (opt == '?') {
            if (optopt)
                return cli_usage_error("unknown option '-%c'", optopt);
            return cli_usage_error("unknown option '%s'", written);
        }
        if (opt == ':' || (optarg && !*optarg))
            return cli_usage_error("option '%s' needs a value", written);
        int rc = handle(user, opt, optarg);
        if (rc != CLI_OK)
            return rc;
    }
    *first_operand = optind;
    return CLI_OK;
}

const char *cli_printable(const char *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", s);
    kvtc_text_sanitize(buf);
    return buf;
}

int cli_check_output(const char *output, const char *const *inputs, size_t n_inputs)
{
    struct stat out;
    if (!output || stat(output, &out) != 0 || !S_ISREG(out.st_mode))
        return CLI_OK; /* a new file, or a device or FIFO written as it is */
    for (size_t i = 0; i < n_inputs; i++) {
        struct stat in;
        if (inputs[i] && stat(inputs[i], &in) == 0 && in.st_dev == out.st_dev &&
            in.st_ino == out.st_ino)
            return cli_usage_error("the output '%s' is the input '%s': write it elsewhere",
                                   output, inputs[i]);
    }
    return CLI_OK;
}

uint32_t cli_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (uint32_t)n;
}

bool cli_parse_threads(const char *text, uint32_t *out)
{
    return cli_parse_u32("--threads", text, 1, 256, out);
}

void cli_compress_args_init(cli_compress_args *a)
{
    a->ratio = a->k_ratio = a->v_ratio = a->budget_ratio = a->bytes_per_token = 0;
    kvtc_compress_options_default(&a->opt);
    a->opt.n_threads = cli_default_threads();
}

int cli_compress_option(cli_compress_args *a, int opt, const char *arg)
{
    uint32_t level;
    bool ok;
    switch (opt) {
    case 'r': ok = cli_parse_ratio("--ratio", arg, &a->ratio); break;
    case CLI_OPT_K_RATIO: ok = cli_parse_ratio("--k-ratio", arg, &a->k_ratio); break;
    case CLI_OPT_V_RATIO: ok = cli_parse_ratio("--v-ratio", arg, &a->v_ratio); break;
    case CLI_OPT_BUDGET_RATIO:
        ok = cli_parse_ratio("--budget-ratio", arg, &a->budget_ratio);
        break;
    case CLI_OPT_BYTES_PER_TOKEN: {
        double v;
        ok = kvtc_parse_double(arg, strlen(arg), &v) && v > 0 && v < 1e12;
        if (ok)
            a->bytes_per_token = v;
        else
            cli_usage_error("--bytes-per-token: '%s' is not a positive number of bytes", arg);
        break;
    }
    case CLI_OPT_BLOCK_TOKENS:
        ok = cli_parse_u32("--block-tokens", arg, 1, 65536, &a->opt.block_tokens);
        break;
    case CLI_OPT_LEVEL:
        if ((ok = cli_parse_u32("--level", arg, 1, 12, &level)))
            a->opt.deflate_level = (int)level;
        break;
    case CLI_OPT_THREADS: ok = cli_parse_threads(arg, &a->opt.n_threads); break;
    default: return -1;
    }
    if (ok && a->budget_ratio > 0 && (a->ratio > 0 || a->bytes_per_token > 0)) {
        cli_usage_error("--budget-ratio is a target of its own: not with --ratio or "
                        "--bytes-per-token");
        ok = false;
    }
    return ok ? CLI_OK : CLI_USAGE;
}

kvtc_compress_options cli_compress_options(const cli_compress_args *a)
{
    kvtc_compress_options opt = a->opt;
    if (a->ratio > 0)
        opt.k_ratio = opt.v_ratio = a->ratio;
    if (a->budget_ratio > 0) {
        opt.k_ratio = opt.v_ratio = a->budget_ratio;
        opt.ratio_mode = KVTC_RATIO_BUDGET;
    }
    opt.bytes_per_token = a->bytes_per_token;
    if (a->k_ratio > 0)
        opt.k_ratio = a->k_ratio;
    if (a->v_ratio > 0)
        opt.v_ratio = a->v_ratio;
    return opt;
}

/* ---- progress ------------------------------------------------------------------- */

void cli_progress_init(cli_progress_state *p)
{
    p->enabled = isatty(STDERR_FILENO) != 0;
    p->stage = NULL;
    p->shown_percent = -1;
    p->shown_left = -1;
    p->log_every = 0;
    p->stage_start = p->last_log = 0;
    p->stage_first = 0;
}

/* "  1h 05m left", "  12m left", or "" while no rate is known. */
static void format_left(long minutes, char *buf, size_t cap)
{
    if (minutes < 0)
        buf[0] = '\0';
    else if (minutes >= 60)
        snprintf(buf, cap, "  %ldh %02ldm left", minutes / 60, minutes % 60);
    else
        snprintf(buf, cap, "  %ldm left", minutes < 1 ? 1 : minutes);
}

void cli_progress(void *user, const char *stage, uint64_t done, uint64_t total)
{
    cli_progress_state *p = user;
    if (!p || (!p->enabled && p->log_every <= 0))
        return;
    double now = cli_now();
    if (stage != p->stage) {
        p->stage_start = p->last_log = now;
        p->stage_first = done;
        p->shown_left = -1;
        p->shown_percent = -1;
    }
    int percent = total ? (int)(done * 100 / total) : 100;
    if (percent > 100)
        percent = 100;
    /* minutes left at the rate since the stage began here, after 5 s of it */
    long left = -1;
    double elapsed = now - p->stage_start;
    if (done > p->stage_first && done < total && elapsed >= 5)
        left = (long)(elapsed / (double)(done - p->stage_first) * (double)(total - done) / 60 +
                      0.5);
    char left_text[32];
    format_left(left, left_text, sizeof left_text);
    if (!p->enabled) {
        /* nothing for short work: a first line after log_every, a last one
         * when lines were printed */
        p->stage = stage;
        if (done < total ? now - p->last_log < p->log_every : p->shown_percent < 0)
            return;
        p->last_log = now;
        p->shown_percent = percent;
        fprintf(stderr, "%s: %llu/%llu (%d%%)%s\n", stage, (unsigned long long)done,
                (unsigned long long)total, percent, left_text);
        fflush(stderr);
        return;
    }
    if (stage == p->stage && percent == p->shown_percent && left == p->shown_left)
        return; /* redraw only when something visible changes */
    p->stage = stage;
    p->shown_percent = percent;
    p->shown_left = left;
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    int filled = percent * WIDTH / 100;
    memset(bar, '#', (size_t)filled);
    memset(bar + filled, '.', (size_t)(WIDTH - filled));
    bar[WIDTH] = '\0';
    fprintf(stderr, "\r\033[K%-12s [%s] %3d%%%s", stage, bar, percent, left_text);
    fflush(stderr);
    g_bar_visible = true;
}

void cli_progress_end(cli_progress_state *p)
{
    clear_bar();
    p->stage = NULL;
    p->shown_percent = -1;
    p->shown_left = -1;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- JSON ------------------------------------------------------------------------- */

void cli_json_begin(cli_json *j)
{
    kvtc_writer_init(&j->buf);
    kvtc_jw_init(&j->jw, &j->buf, true);
    kvtc_jw_begin_object(&j->jw);
}

int cli_json_print(cli_json *j)
{
    kvtc_jw_end_object(&j->jw);
    kvtc_put_u8(&j->buf, '\n');
    int rc = CLI_OK;
    if (j->buf.failed)
        rc = cli_fail(NULL, "out of memory writing JSON");
    else if (fwrite(j->buf.buf, 1, j->buf.len, stdout) != j->buf.len || fflush(stdout) != 0)
        rc = cli_fail("<stdout>", "write failed");
    kvtc_writer_free(&j->buf);
    return rc;
}

void cli_json_str(cli_json *j, const char *key, const char *value)
{
    kvtc_jw_key(&j->jw, key);
    kvtc_jw_string(&j->jw, value);
}

void cli_json_u64(cli_json *j, const char *key, uint64_t value)
{
    kvtc_jw_key(&j->jw, key);
    kvtc_jw_uint(&j->jw, value);
}

void cli_json_i64(cli_json *j, const char *key, int64_t value)
{
    kvtc_jw_key(&j->jw, key);
    kvtc_jw_int(&j->jw, value);
}

void cli_json_f64(cli_json *j, const char *key, double value)
{
    kvtc_jw_key(&j->jw, key);
    kvtc_jw_double(&j->jw, value);
}

const char *cli_rope_style_name(kvtc_rope_style style)
{
    switch (style) {
    case KVTC_ROPE_NONE: return "none";
    case KVTC_ROPE_INTERLEAVED: return "interleaved";
    case KVTC_ROPE_NEOX: return "neox";
    }
    return "unknown";
}

void cli_json_stream_sizes(cli_json *j, const kvtc_stream_info *info)
{
    cli_json_u64(j, "k_bits_per_token", info->k_bits_per_token);
    cli_json_u64(j, "v_bits_per_token", info->v_bits_per_token);
    cli_json_f64(j, "k_ratio_target", info->k_ratio);
    cli_json_f64(j, "v_ratio_target", info->v_ratio);
    cli_json_u64(j, "compressed_bytes", info->compressed_bytes);
    cli_json_u64(j, "raw_bytes", info->raw_bytes);
    cli_json_u64(j, "total_bytes", info->total_bytes);
}

double cli_stream_ratio(const kvtc_stream_info *info)
{
    return info->compressed_tokens
               ? (double)info->compressed_fp16_bytes / (double)info->compressed_bytes
               : NAN;
}

double cli_file_ratio(const kvtc_stream_info *info)
{
    return (double)info->fp16_bytes / (double)info->total_bytes;
}

void cli_json_shape(cli_json *j, const kvtc_model_shape *s)
{
    cli_json_u64(j, "layers", s->n_layer);
    cli_json_u64(j, "kv_heads", s->n_kv_head);
    cli_json_u64(j, "head_dim", s->head_dim);
    cli_json_u64(j, "features", kvtc_shape_features(s));
    cli_json_str(j, "rope_style", cli_rope_style_name(s->rope_style));
    if (s->rope_style != KVTC_ROPE_NONE) {
        cli_json_u64(j, "rope_dims", s->rope_dims ? s->rope_dims : s->head_dim);
        cli_json_f64(j, "rope_theta", s->rope_theta);
        cli_json_f64(j, "rope_freq_scale", s->rope_freq_scale > 0 ? s->rope_freq_scale : 1.0);
    }
}

/* ---- calibrations ----------------------------------------------------------------- */

double cli_explained_variance(const kvtc_calibration *cal, kvtc_kind kind, uint32_t rank)
{
    uint32_t kept = kvtc_calibration_rank(cal, kind);
    const float *ev = kvtc_calibration_eigenvalues(cal, kind);
    double total = kvtc_calibration_total_variance(cal, kind), sum = 0;
    for (uint32_t i = 0; i < rank && i < kept; i++)
        sum += ev[i];
    return total > 0 ? sum / total : 0;
}

uint32_t cli_variance_ranks(const kvtc_calibration *cal, uint32_t ranks[16])
{
    uint32_t rk = kvtc_calibration_rank(cal, KVTC_KEY), rv = kvtc_calibration_rank(cal, KVTC_VALUE);
    uint32_t max_rank = rk > rv ? rk : rv, n = 0;
    for (uint32_t r = 1; r < max_rank && n < 15; r *= 4)
        ranks[n++] = r;
    ranks[n++] = max_rank;
    return n;
}

void cli_print_variance_table(const kvtc_calibration *cal, const char *indent)
{
    uint32_t ranks[16], n = cli_variance_ranks(cal, ranks);
    printf("%svariance explained by the first r columns:\n", indent);
    printf("%s  %-10s %10s %10s\n", indent, "r", "keys", "values");
    for (uint32_t i = 0; i < n; i++)
        printf("%s  %-10u %9.3f%% %9.3f%%\n", indent, ranks[i],
               100 * cli_explained_variance(cal, KVTC_KEY, ranks[i]),
               100 * cli_explained_variance(cal, KVTC_VALUE, ranks[i]));
}

/* ---- inputs ----------------------------------------------------------------------- */

kvtc_cache *cli_read_cache(const char *path)
{
    kvtc_cache *cache = NULL;
    kvtc_error err;
    if (kvtc_cache_read_safetensors(path, &cache, &err) != KVTC_OK) {
        cli_fail_err(path, &err);
        return NULL;
    }
    return cache;
}

bool cli_is_llama_state(const void *data, size_t len)
{
    return kvtc_llama_state_detect(data, len) != 0;
}

bool cli_read_model_shape(const char *name_or_path, kvtc_model_shape *shape, char name[64])
{
    kvtc_error err;
    char path[4096];
    if (model_resolve(name_or_path, path, sizeof path, true, &err) != KVTC_OK ||
        model_read_kv_shape(path, shape, name, &err) != KVTC_OK) {
        cli_fail_err(NULL, &err);
        return false;
    }
    return true;
}

kvtc_cache *cli_read_any_cache(const char *path, const kvtc_model_shape *llama_shape,
                               kvtc_llama_layout *layout)
{
    /* A safetensors file is read tensor by tensor, never held whole: its
     * first bytes tell it apart (the header length, then '{'). */
    unsigned char head[9] = {0};
    size_t size = 0;
    kvtc_error open_err;
    int fd = kvtc_open_regular(path, &size, &open_err); /* a FIFO is refused, not waited on */
    bool safetensors = fd < 0 || read(fd, head, sizeof head) != (ssize_t)sizeof head;
    if (fd >= 0)
        close(fd);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | head[i];
    /* unreadable: the safetensors reader says why */
    if (safetensors || (head[8] == '{' && hlen <= (uint64_t)size - 8))
        return cli_read_cache(path);
    size_t len;
    void *data = cli_read_file(path, &len);
    if (!data)
        return NULL;
    kvtc_cache *cache = NULL;
    if (!cli_is_llama_state(data, len)) {
        kvtc_buffer_free(data);
        return cli_read_cache(path);
    }
    kvtc_error err;
    if (!llama_shape)
        cli_fail(path, "a llama.cpp sequence state names no heads or RoPE: give its model "
                       "with --model GGUF");
    else if (kvtc_llama_state_load(data, len, llama_shape, &cache, layout, &err) != KVTC_OK)
        cli_fail_err(path, &err);
    kvtc_buffer_free(data);
    return cache;
}

kvtc_calibration *cli_read_calibration(const char *path)
{
    kvtc_calibration *cal = NULL;
    kvtc_error err;
    if (kvtc_calibration_read(path, &cal, &err) != KVTC_OK) {
        cli_fail_err(path, &err);
        return NULL;
    }
    return cal;
}

void *cli_read_file(const char *path, size_t *len)
{
    void *data = NULL;
    kvtc_error err;
    if (kvtc_read_file(path, &data, len, &err) != KVTC_OK) {
        cli_fail_err(path, &err);
        return NULL;
    }
    return data;
}
