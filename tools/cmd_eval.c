/* kvtc eval: the accuracy harness. Runs a model over evaluation text, puts each
 * context's cache through the chosen methods and measures what the model does
 * on top of the restored caches (see eval/tasks.h). */
#include "default_model.h"
#include "cli.h"
#include "commands.h"
#include "default_calib.h"
#include "kvtc_internal.h"
#include "methods.h"
#include "model.h"
#include "report.h"
#include "tasks.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: kvtc eval --method M[,M...] [options]\n"
    "\n"
    "The model reads contexts of evaluation text; each context's cache (except its\n"
    "sinks and window) goes through the method; the model then continues on top of\n"
    "the restored cache. Tasks: 'nll' (NLL of the next tokens after prose and code\n"
    "contexts, and greedy top-1 agreement with the exact run) and 'passkey' (numbers\n"
    "- a pass key, a door code, ... - hidden in prose, asked with the chat\n"
    "template). Realized ratio = fp16 bytes of the treated tokens / bytes the\n"
    "method stored for them.\n"
    "\n"
    "methods: exact, kvtc[:R], fp8, int8, int4, kivi2, h2o[:R], h2o-shared[:R],\n"
    "tova[:R], gear, xkv[:R], zstd. kvtc:K/V splits the budget between keys and\n"
    "values (target 2/(1/K+1/V), the same bytes). h2o evicts per head by\n"
    "accumulated attention, h2o-shared one set of tokens for every layer and\n"
    "head, tova one set per layer by the last query's attention; gear is int4\n"
    "plus a rank-4 residual plus the largest 2% of values exact; xkv is the\n"
    "context's own SVD across groups of 4 layers. EVICTION:E+kvtc:R (e.g.\n"
    "h2o:2+kvtc:16) evicts to 1/E of the tokens, then codes the kept ones with\n"
    "kvtc.\n"
    "\n"
    "options:\n"
    "      --model MODEL          the model: a name (kvtc fetch --list; fetched on\n"
    "                             first use) or a GGUF path; default smollm2-135m\n"
    "  -c, --calibration FILE     default: the model's default calibration, built on\n"
    "                             first use and cached next to the model\n"
    "  -m, --method LIST          methods, comma-separated (required)\n"
    "  -r, --ratio R              target ratio of the methods without ':R' (default "
    CLI_STR(KVTC_DEFAULT_RATIO) ")\n"
    "      --tasks LIST           of nll, passkey, kv (key-value retrieval in a JSON\n"
    "                             object of UUIDs), code (the values of macros and\n"
    "                             the types of struct fields of a real C header);\n"
    "                             default nll,passkey\n"
    "      --contexts N           continuation contexts (default 4)\n"
    "      --context-tokens N     tokens per context (default 1024)\n"
    "      --continuation-tokens N  tokens scored after each context (default 256)\n"
    "      --haystacks N          retrieval haystacks (default 17)\n"
    "      --facts N              facts per haystack, 1..10; 1 = a single pass key\n"
    "                             (default 3: 51 cases)\n"
    "      --haystack-tokens N    prose tokens per haystack (default 1024)\n"
    "      --kv-contexts N        key-value objects (default 8)\n"
    "      --kv-tokens N          tokens per object (default 1024)\n"
    "      --kv-questions N       keys asked per object, 1..10 (default 4)\n"
    "      --code-contexts N      header excerpts (default 8)\n"
    "      --code-tokens N        tokens per excerpt (default 1024)\n"
    "      --code-questions N     macros and fields asked per excerpt, 1..10 (default 4)\n"
    "      --threads N            worker threads (default: all CPUs)\n"
    "      --json                 JSON: one object, or an array for several methods\n"
    "      --plot OUT.svg         chart: quality vs realized ratio, explained variance,\n"
    "                             bit allocations\n"
    "      --report OUT.md        markdown tables and verdicts\n"
    "      --journal FILE         keep the run's progress in FILE, rewritten after each\n"
    "                             context: run the same command again after an\n"
    "                             interruption and it resumes where it stopped (FILE\n"
    "                             is removed when the run completes)\n"
    "  -h, --help                 this help\n";

enum {
    OPT_MODEL = 256, OPT_TASKS, OPT_CONTEXTS, OPT_CONTEXT_TOKENS, OPT_CONTINUATION, OPT_HAYSTACKS,
    OPT_FACTS, OPT_HAYSTACK_TOKENS, OPT_THREADS, OPT_JSON, OPT_PLOT, OPT_REPORT, OPT_KV_CONTEXTS,
    OPT_KV_TOKENS, OPT_KV_QUESTIONS, OPT_CODE_CONTEXTS, OPT_CODE_TOKENS, OPT_CODE_QUESTIONS,
    OPT_JOURNAL
};

#define MAX_METHODS 32

typedef struct eval_args {
    const char *model, *calibration, *methods, *plot, *report, *journal;
    double ratio;
    bool json;
    eval_options opt;
} eval_args;

static bool parse_tasks(const char *text, eval_options *o)
{
    o->nll = o->passkey = o->kv = o->code = false;
    char buf[64];
    if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf)
        return false;
    for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "nll"))
            o->nll = true;
        else if (!strcmp(t, "passkey"))
            o->passkey = true;
        else if (!strcmp(t, "kv"))
            o->kv = true;
        else if (!strcmp(t, "code"))
            o->code = true;
        else
            return false;
    }
    return o->nll || o->passkey || o->kv || o->code;
}

static int handle_option(void *user, int opt, const char *arg)
{
    eval_args *a = user;
    eval_options *o = &a->opt;
    bool ok = true;
    switch (opt) {
    case OPT_MODEL: a->model = arg; break;
    case 'c': a->calibration = arg; break;
    case 'm': a->methods = arg; break;
    case 'r': ok = cli_parse_ratio("--ratio", arg, &a->ratio); break;
    case OPT_TASKS:
        if (!parse_tasks(arg, o))
            return cli_usage_error("--tasks takes a list of nll, passkey, kv, code (got '%s')", arg);
        break;
    case OPT_CONTEXTS: ok = cli_parse_u32("--contexts", arg, 1, 1024, &o->n_contexts); break;
    case OPT_CONTEXT_TOKENS:
        ok = cli_parse_u32("--context-tokens", arg, 2, 1u << 16, &o->context_tokens);
        break;
    case OPT_CONTINUATION:
        ok = cli_parse_u32("--continuation-tokens", arg, 1, 4096, &o->continuation_tokens);
        break;
    case OPT_HAYSTACKS: ok = cli_parse_u32("--haystacks", arg, 1, 1024, &o->n_haystacks); break;
    case OPT_FACTS: ok = cli_parse_u32("--facts", arg, 1, 10, &o->facts_per_haystack); break;
    case OPT_HAYSTACK_TOKENS:
        ok = cli_parse_u32("--haystack-tokens", arg, 2, 1u << 16, &o->haystack_tokens);
        break;
    case OPT_KV_CONTEXTS:
        ok = cli_parse_u32("--kv-contexts", arg, 1, 1024, &o->kv_contexts);
        break;
    case OPT_KV_TOKENS: ok = cli_parse_u32("--kv-tokens", arg, 2, 1u << 16, &o->kv_tokens); break;
    case OPT_KV_QUESTIONS:
        ok = cli_parse_u32("--kv-questions", arg, 1, 10, &o->kv_questions);
        break;
    case OPT_CODE_CONTEXTS:
        ok = cli_parse_u32("--code-contexts", arg, 1, 1024, &o->code_contexts);
        break;
    case OPT_CODE_TOKENS:
        ok = cli_parse_u32("--code-tokens", arg, 2, 1u << 16, &o->code_tokens);
        break;
    case OPT_CODE_QUESTIONS:
        ok = cli_parse_u32("--code-questions", arg, 1, 10, &o->code_questions);
        break;
    case OPT_THREADS: ok = cli_parse_threads(arg, &o->n_threads); break;
    case OPT_JSON: a->json = true; break;
    case OPT_PLOT: a->plot = arg; break;
    case OPT_REPORT: a->report = arg; break;
    case OPT_JOURNAL: a->journal = arg; break;
    default: return CLI_USAGE;
    }
    return ok ? CLI_OK : CLI_USAGE;
}

/* Splits the comma-separated method list. */
static int parse_methods(const eval_args *a, eval_method *out, uint32_t *n)
{
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", a->methods) >= (int)sizeof buf)
        return cli_usage_error("--method list too long");
    *n = 0;
    for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        kvtc_error err;
        if (*n == MAX_METHODS)
            return cli_usage_error("at most %d methods", MAX_METHODS);
        if (eval_method_parse(t, a->ratio, &out[*n], &err) != KVTC_OK)
            return cli_usage_error("%s", err.message);
        (*n)++;
    }
    return *n ? CLI_OK : cli_usage_error("--method needs at least one method");
}

static void print_text(const eval_results *r)
{
    printf("exact: NLL %.4f over %llu tokens, retrieval %u/%u, key-value %u/%u, code %u/%u\n",
           eval_tally_nll(&r->exact), (unsigned long long)r->exact.tokens, r->exact.correct,
           r->exact.cases, r->exact_kv.correct, r->exact_kv.cases, r->exact_code.correct,
           r->exact_code.cases);
    int width = 10; /* the longest label */
    for (uint32_t i = 0; i < r->n_methods; i++) {
        char label[64];
        eval_method_label(&r->methods[i].method, label, sizeof label);
        width = (int)strlen(label) > width ? (int)strlen(label) : width;
    }
    printf("%-*s %8s %9s %9s %8s %10s %10s %10s\n", width, "method", "ratio", "NLL", "ΔNLL",
           "top-1", "retrieval", "key-value", "code");
    for (uint32_t i = 0; i < r->n_methods; i++) {
        const eval_method_result *m = &r->methods[i];
        char label[64];
        eval_method_label(&m->method, label, sizeof label);
        printf("%-*s %7.2fx %9.4f %+9.4f %8.4f %5u/%-4u %5u/%-4u %5u/%-4u\n", width, label,
               eval_method_ratio(m), eval_tally_nll(&m->all),
               eval_tally_nll(&m->all) - eval_tally_nll(&r->exact), eval_tally_top1(&m->all),
               m->all.correct, m->all.cases, m->kv.correct, m->kv.cases, m->code.correct,
               m->code.cases);
    }
    for (uint32_t i = 0; i < r->n_methods; i++)
        if (r->methods[i].method.id == EVAL_EXACT && r->exact.tokens)
            printf("exact run reproduced bit for bit: %s\n", r->exact_bit_identical ? "yes" : "NO");
}

/* One object, or an array of them for several methods. */
static int print_json(const eval_results *r)
{
    if (r->n_methods == 1) {
        cli_json j;
        cli_json_begin(&j);
        eval_json_method(&j, r, 0);
        return cli_json_print(&j);
    }
    cli_json j;
    kvtc_writer_init(&j.buf);
    kvtc_jw_init(&j.jw, &j.buf, true);
    kvtc_jw_begin_array(&j.jw);
    for (uint32_t i = 0; i < r->n_methods; i++) {
        kvtc_jw_begin_object(&j.jw);
        eval_json_method(&j, r, i);
        kvtc_jw_end_object(&j.jw);
    }
    kvtc_jw_end_array(&j.jw);
    kvtc_put_u8(&j.buf, '\n');
    int rc = CLI_OK;
    if (j.buf.failed)
        rc = cli_fail(NULL, "out of memory writing JSON");
    else if (fwrite(j.buf.buf, 1, j.buf.len, stdout) != j.buf.len || fflush(stdout) != 0)
        rc = cli_fail("<stdout>", "write failed");
    kvtc_writer_free(&j.buf);
    return rc;
}

/* What the journal's key says of the inputs: the model file (path, size,
 * modification time) and the calibration's fingerprint. */
static void journal_inputs(const char *model_path, const kvtc_calibration *cal, char *buf,
                           size_t cap)
{
    struct stat sb = {0};
    stat(model_path, &sb);
    char fp[65];
    kvtc_hex(kvtc_calibration_fingerprint(cal), 32, fp);
    snprintf(buf, cap, "model %s %lld %lld|calibration %s", model_path, (long long)sb.st_size,
             (long long)sb.st_mtime, fp);
}

/* The command line, for the report. */
static void join_args(int argc, char **argv, char *buf, size_t cap)
{
    size_t used = (size_t)snprintf(buf, cap, "kvtc");
    for (int i = 0; i < argc && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, " %s", argv[i]);
}

int cmd_eval(int argc, char **argv)
{
    static const struct option longs[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"calibration", required_argument, NULL, 'c'},
        {"method", required_argument, NULL, 'm'},
        {"ratio", required_argument, NULL, 'r'},
        {"tasks", required_argument, NULL, OPT_TASKS},
        {"contexts", required_argument, NULL, OPT_CONTEXTS},
        {"context-tokens", required_argument, NULL, OPT_CONTEXT_TOKENS},
        {"continuation-tokens", required_argument, NULL, OPT_CONTINUATION},
        {"haystacks", required_argument, NULL, OPT_HAYSTACKS},
        {"facts", required_argument, NULL, OPT_FACTS},
        {"haystack-tokens", required_argument, NULL, OPT_HAYSTACK_TOKENS},
        {"kv-contexts", required_argument, NULL, OPT_KV_CONTEXTS},
        {"kv-tokens", required_argument, NULL, OPT_KV_TOKENS},
        {"kv-questions", required_argument, NULL, OPT_KV_QUESTIONS},
        {"code-contexts", required_argument, NULL, OPT_CODE_CONTEXTS},
        {"code-tokens", required_argument, NULL, OPT_CODE_TOKENS},
        {"code-questions", required_argument, NULL, OPT_CODE_QUESTIONS},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"json", no_argument, NULL, OPT_JSON},
        {"plot", required_argument, NULL, OPT_PLOT},
        {"report", required_argument, NULL, OPT_REPORT},
        {"journal", required_argument, NULL, OPT_JOURNAL},
        {0},
    };
    eval_args a = {0};
    a.ratio = KVTC_DEFAULT_RATIO;
    eval_options_default(&a.opt);
    a.opt.n_threads = cli_default_threads();
    int first;
    int rc = cli_parse_options(argc, argv, "c:m:r:", longs, usage, handle_option, &a, &first);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (first < argc)
        return cli_usage_error("unexpected argument '%s'", argv[first]);
    if (!a.methods)
        return cli_usage_error("--method is required");
    eval_method methods[MAX_METHODS];
    uint32_t n_methods = 0;
    if ((rc = parse_methods(&a, methods, &n_methods)) != CLI_OK)
        return rc;

    kvtc_error err;
    char model_path[4096], calib_path[4096];
    if (model_resolve(a.model, model_path, sizeof model_path, true, &err) != KVTC_OK)
        return cli_fail_err(NULL, &err);
    a.model = model_path;
    if (!a.calibration) {
        if (default_calibration(a.model, a.opt.n_threads, calib_path, sizeof calib_path, &err) !=
            KVTC_OK)
            return cli_fail_err(a.model, &err);
        a.calibration = calib_path;
    }
    model *m = NULL;
    tokenizer *tok = NULL;
    kvtc_calibration *cal = NULL;
    eval_results res = {0};
    rc = CLI_FAIL;
    if (model_open(a.model, &m, &tok, &err) != KVTC_OK) {
        cli_fail_err(a.model, &err);
        goto done;
    }
    if (!tok) {
        cli_fail(a.model, "no tokenizer in the model file: eval needs text (use a GGUF model)");
        goto done;
    }
    if (!(cal = cli_read_calibration(a.calibration)))
        goto done;
    kvtc_model_shape shape = model_kv_shape(m);
    if (!kvtc_shape_equal(&shape, kvtc_calibration_shape(cal))) {
        cli_fail(a.calibration, "calibration is for another model shape than %s", a.model);
        goto done;
    }
    a.opt.sinks = kvtc_calibration_sinks(cal);
    a.opt.window = kvtc_calibration_window(cal);
    char inputs[4096 + 128];
    if (a.journal) {
        journal_inputs(a.model, cal, inputs, sizeof inputs);
        a.opt.journal = a.journal;
        a.opt.journal_inputs = inputs;
    }
    cli_progress_state bar;
    cli_progress_init(&bar);
    bar.log_every = 60; /* long runs go to log files */
    a.opt.progress = cli_progress;
    a.opt.progress_user = &bar;
    kvtc_status st = eval_run(m, tok, cal, methods, n_methods, &a.opt, &res, &err);
    cli_progress_end(&bar);
    if (st != KVTC_OK) {
        cli_fail_err(NULL, &err);
        goto done;
    }
    if (res.journal_other_run)
        fprintf(stderr, "kvtc eval: %s was another run's journal: started over\n", a.journal);
    if (res.resumed_contexts)
        fprintf(stderr, "kvtc eval: resumed after %u contexts from %s\n", res.resumed_contexts,
                a.journal);
    char command[2048];
    join_args(argc, argv, command, sizeof command);
    eval_setup setup = {a.model, a.calibration, command, &a.opt, cal};
    if (a.report && eval_write_report(a.report, &setup, &res, &err) != KVTC_OK) {
        cli_fail_err(a.report, &err);
        goto done;
    }
    if (a.plot && eval_write_chart(a.plot, &setup, &res, &err) != KVTC_OK) {
        cli_fail_err(a.plot, &err);
        goto done;
    }
    if (a.json)
        rc = print_json(&res);
    else {
        print_text(&res);
        rc = CLI_OK;
    }
    /* complete and written: nothing left to resume */
    if (rc == CLI_OK && a.journal && unlink(a.journal) != 0 && errno != ENOENT)
        rc = cli_fail(a.journal, "cannot remove the finished journal: %s", strerror(errno));
done:
    eval_results_free(&res);
    kvtc_calibration_free(cal);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}
