/* JSON, markdown and SVG outputs of `kvtc eval` (see report.h). */
#include "report.h"

#include "svg.h"

#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- numbers of one method ---------------------------------------------------------- */

static double delta_nll(const eval_results *r, const eval_method_result *m)
{
    return eval_tally_nll(&m->all) - eval_tally_nll(&r->exact);
}

static double genre_delta(const eval_results *r, const eval_method_result *m, int g)
{
    return eval_tally_nll(&m->genre[g]) - eval_tally_nll(&r->exact_genre[g]);
}

void eval_json_method(cli_json *j, const eval_results *r, uint32_t i)
{
    const eval_method_result *m = &r->methods[i];
    char label[64];
    eval_method_label(&m->method, label, sizeof label);
    cli_json_str(j, "method", eval_method_name(m->method.id));
    cli_json_str(j, "label", label);
    cli_json_f64(j, "ratio", eval_method_ratio(m));
    cli_json_f64(j, "target_ratio", eval_method_has_ratio(m->method.id) ? m->method.target_ratio
                                                                      : NAN);
    cli_json_f64(j, "nll_exact", eval_tally_nll(&r->exact));
    cli_json_f64(j, "nll", eval_tally_nll(&m->all));
    cli_json_f64(j, "delta_nll", delta_nll(r, m));
    cli_json_f64(j, "delta_nll_prose", genre_delta(r, m, EVAL_PROSE));
    cli_json_f64(j, "delta_nll_code", genre_delta(r, m, EVAL_CODE));
    cli_json_f64(j, "top1_agreement", eval_tally_top1(&m->all));
    cli_json_f64(j, "passkey_accuracy_exact", eval_tally_accuracy(&r->exact));
    cli_json_f64(j, "passkey_accuracy", eval_tally_accuracy(&m->all));
    cli_json_u64(j, "passkey_cases", m->all.cases);
    cli_json_u64(j, "passkey_lost", m->all.lost);
    cli_json_u64(j, "passkey_gained", m->all.gained);
    cli_json_f64(j, "kv_accuracy_exact", eval_tally_accuracy(&r->exact_kv));
    cli_json_f64(j, "kv_accuracy", eval_tally_accuracy(&m->kv));
    cli_json_u64(j, "kv_cases", m->kv.cases);
    cli_json_u64(j, "kv_lost", m->kv.lost);
    cli_json_u64(j, "kv_gained", m->kv.gained);
    cli_json_f64(j, "code_accuracy_exact", eval_tally_accuracy(&r->exact_code));
    cli_json_f64(j, "code_accuracy", eval_tally_accuracy(&m->code));
    cli_json_u64(j, "code_cases", m->code.cases);
    cli_json_u64(j, "code_lost", m->code.lost);
    cli_json_u64(j, "code_gained", m->code.gained);
    cli_json_u64(j, "scored_tokens", m->all.tokens);
    cli_json_u64(j, "contexts", r->contexts);
    cli_json_u64(j, "haystacks", r->haystacks);
    cli_json_u64(j, "kv_contexts", r->kv_contexts);
    cli_json_u64(j, "code_contexts", r->code_contexts);
    cli_json_f64(j, "k_rel_error", eval_method_rel_error(r, m, KVTC_KEY));
    cli_json_f64(j, "v_rel_error", eval_method_rel_error(r, m, KVTC_VALUE));
    cli_json_f64(j, "k_fact_rel_error", eval_method_fact_rel_error(r, m, KVTC_KEY));
    cli_json_f64(j, "v_fact_rel_error", eval_method_fact_rel_error(r, m, KVTC_VALUE));
    cli_json_u64(j, "fp16_bytes", m->fp16_bytes);
    cli_json_u64(j, "stored_bytes", m->stored_bytes);
    if (eval_method_evicts(m->method.id))
        cli_json_u64(j, "min_kept_tokens_per_head", m->min_kept);
    if (m->method.id == EVAL_EXACT) {
        kvtc_jw_key(&j->jw, "bit_identical");
        kvtc_jw_bool(&j->jw, r->exact_bit_identical);
    }
    cli_json_f64(j, "treat_seconds", m->treat_seconds);
    cli_json_f64(j, "seconds", r->seconds);
}

uint32_t eval_plan_ratios(const eval_results *r, double ratios[16])
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->n_methods && n < 16; i++)
        if (r->methods[i].method.id == EVAL_KVTC &&
            r->methods[i].method.k_ratio == r->methods[i].method.v_ratio)
            ratios[n++] = r->methods[i].method.target_ratio;
    if (n == 0)
        for (double x = 8; x <= 64; x *= 2)
            ratios[n++] = x;
    return n;
}

/* ---- markdown --------------------------------------------------------------------------- */

typedef struct md {
    kvtc_writer w;
} md;

static void mdf(md *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mdf(md *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvtc_put_textv(&d->w, fmt, ap);
    va_end(ap);
}

/* "%.4f" of v, or "n/a" when it was not measured. Every caller passes a
 * literal format of one double, which the compiler cannot see through. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static const char *num(char *buf, size_t cap, const char *fmt, double v)
{
    if (isfinite(v))
        snprintf(buf, cap, fmt, v);
    else
        snprintf(buf, cap, "n/a");
    return buf;
}
#pragma GCC diagnostic pop

static const char *yes(bool b) { return b ? "**yes**" : "**no**"; }

static bool is_baseline(const eval_method_result *m)
{
    return m->method.id != EVAL_KVTC && m->method.id != EVAL_EXACT;
}

/* Baseline b is at least as good as KVTC point k on one quality axis while
 * storing no more bytes (ratio >= k's): k is then not above b's front. */
static bool dominates(const eval_results *r, const eval_method_result *b,
                      const eval_method_result *k, bool retrieval)
{
    if (!(eval_method_ratio(b) >= eval_method_ratio(k)))
        return false;
    if (retrieval)
        return eval_tally_accuracy(&b->all) >= eval_tally_accuracy(&k->all);
    return delta_nll(r, b) <= delta_nll(r, k);
}

static const eval_method_result *find_kvtc(const eval_results *r, double target)
{
    for (uint32_t i = 0; i < r->n_methods; i++)
        if (r->methods[i].method.id == EVAL_KVTC && r->methods[i].method.k_ratio == target &&
            r->methods[i].method.v_ratio == target)
            return &r->methods[i];
    return NULL;
}

static void write_setup(md *d, const eval_setup *s, const eval_results *r)
{
    const eval_options *o = s->options;
    const kvtc_model_shape *sh = kvtc_calibration_shape(s->cal);
    mdf(d, "## Setup\n\n");
    mdf(d, "- Command: `%s`\n", s->command);
    mdf(d, "- Model: `%s` (%u layers x %u KV heads x head_dim %u = %llu features per token and "
           "kind)\n",
        s->model_path, sh->n_layer, sh->n_kv_head, sh->head_dim,
        (unsigned long long)kvtc_shape_features(sh));
    mdf(d, "- Calibration: `%s`: %llu key rows, %llu value rows, basis rank %u (keys) / %u "
           "(values); sinks %u and window %u tokens are never treated, by any method\n",
        s->calib_path, (unsigned long long)kvtc_calibration_rows(s->cal, KVTC_KEY),
        (unsigned long long)kvtc_calibration_rows(s->cal, KVTC_VALUE),
        kvtc_calibration_rank(s->cal, KVTC_KEY), kvtc_calibration_rank(s->cal, KVTC_VALUE),
        o->sinks, o->window);
    if (o->nll)
        mdf(d, "- Continuation: %u contexts of %u tokens of the evaluation corpus (prose and "
               "code alternate), %u tokens scored after each (%llu in all)\n",
            r->contexts, o->context_tokens, o->continuation_tokens,
            (unsigned long long)r->exact.tokens);
    if (o->passkey)
        mdf(d, "- Retrieval: %u haystacks of %u prose tokens, %u %s each, %u cases; exact "
               "model accuracy %.1f%%\n",
            r->haystacks, o->haystack_tokens, o->facts_per_haystack,
            o->facts_per_haystack == 1 ? "pass key" : "facts", r->exact.cases,
            100 * eval_tally_accuracy(&r->exact));
    if (o->kv)
        mdf(d, "- Key-value retrieval: %u JSON objects of %u tokens of random UUID pairs, %u keys "
               "asked each, %u cases; exact model accuracy %.1f%%\n",
            r->kv_contexts, o->kv_tokens, o->kv_questions, r->exact_kv.cases,
            100 * eval_tally_accuracy(&r->exact_kv));
    if (o->code)
        mdf(d, "- Code questions: %u excerpts of at least %u tokens of C headers, up to %u "
               "numeric macros and struct field types asked each, %u cases; exact model "
               "accuracy %.1f%%\n",
            r->code_contexts, o->code_tokens, o->code_questions, r->exact_code.cases,
            100 * eval_tally_accuracy(&r->exact_code));
    mdf(d, "- Wall time: %.0f s with %u threads\n\n", r->seconds, o->n_threads);
}

/* One question task's table (when it ran): each method's tally at `offset`. */
static void task_table(md *d, const eval_results *r, const char *title,
                       const eval_tally *exact, size_t offset)
{
    char b[3][32];
    if (!exact->cases)
        return;
    double acc_exact = eval_tally_accuracy(exact);
    mdf(d, "\n%s:\n\n| method | realized ratio | accuracy | Δ (points) | cases lost / gained |\n"
           "|---|---:|---:|---:|---:|\n| (exact reference) | 1.00 | %s | | |\n",
        title, num(b[0], 32, "%.1f", 100 * acc_exact));
    for (uint32_t i = 0; i < r->n_methods; i++) {
        const eval_method_result *m = &r->methods[i];
        const eval_tally *t = (const eval_tally *)((const char *)m + offset);
        char label[64];
        eval_method_label(&m->method, label, sizeof label);
        double acc = eval_tally_accuracy(t);
        mdf(d, "| %s | %s | %s | %s | %u / %u |\n", label,
            num(b[0], 32, "%.2f", eval_method_ratio(m)), num(b[1], 32, "%.1f", 100 * acc),
            num(b[2], 32, "%+.1f", 100 * (acc - acc_exact)), t->lost, t->gained);
    }
}

static void write_table(md *d, const eval_results *r)
{
    char b[10][32];
    mdf(d, "## Results\n\n");
    mdf(d, "Realized ratio = fp16 bytes of the treated tokens / bytes stored for them "
           "(metadata included), summed over every treated cache of both tasks. "
           "ΔNLL in nats per token against the exact run; retrieval in %% of cases.\n\n");
    mdf(d, "| method | realized ratio | NLL | ΔNLL | ΔNLL prose | ΔNLL code | top-1 agreement | "
           "retrieval | Δ retrieval (points) | cases lost / gained | K rel. error | "
           "V rel. error |\n");
    mdf(d, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    double acc_exact = eval_tally_accuracy(&r->exact);
    mdf(d, "| (exact reference) | 1.00 | %s | | | | | %s | | | | |\n",
        num(b[0], 32, "%.4f", eval_tally_nll(&r->exact)), num(b[1], 32, "%.1f", 100 * acc_exact));
    for (uint32_t i = 0; i < r->n_methods; i++) {
        const eval_method_result *m = &r->methods[i];
        char label[64];
        eval_method_label(&m->method, label, sizeof label);
        double acc = eval_tally_accuracy(&m->all);
        mdf(d, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %u / %u | %s | %s |\n", label,
            num(b[0], 32, "%.2f", eval_method_ratio(m)), num(b[1], 32, "%.4f", eval_tally_nll(&m->all)),
            num(b[2], 32, "%+.4f", delta_nll(r, m)), num(b[3], 32, "%+.4f", genre_delta(r, m, EVAL_PROSE)),
            num(b[4], 32, "%+.4f", genre_delta(r, m, EVAL_CODE)),
            num(b[5], 32, "%.4f", eval_tally_top1(&m->all)), num(b[6], 32, "%.1f", 100 * acc),
            num(b[7], 32, "%+.1f", 100 * (acc - acc_exact)), m->all.lost, m->all.gained,
            num(b[8], 32, "%.4f", eval_method_rel_error(r, m, KVTC_KEY)),
            num(b[9], 32, "%.4f", eval_method_rel_error(r, m, KVTC_VALUE)));
    }
    task_table(d, r, "Key-value retrieval (a UUID value for its UUID key in a JSON object)",
               &r->exact_kv, offsetof(eval_method_result, kv));
    task_table(d, r, "Code questions (a macro's value, a struct field's type in a real C header)",
               &r->exact_code, offsetof(eval_method_result, code));
    mdf(d, "\nCases lost / gained: retrieval cases the exact model answers and the method "
           "does not, and the reverse (the same questions on the same haystacks).\n");
    mdf(d, "Relative error = squared error of the restored treated tokens / their energy "
           "around the calibration mean (keys compared before RoPE, as the codec sees them); "
           "not defined for the evictions (h2o, h2o-shared, tova and their compositions "
           "with kvtc), which remove tokens.\n\n");
}

static void write_verdicts(md *d, const eval_results *r)
{
    char b[5][32];
    mdf(d, "## Verdicts against issue #4\n\n");
    double acc_exact = eval_tally_accuracy(&r->exact);
    const eval_method_result *k16 = find_kvtc(r, 16), *k32 = find_kvtc(r, 32);
    for (uint32_t i = 0; i < r->n_methods; i++)
        if (r->methods[i].method.id == EVAL_EXACT)
            mdf(d, "- `exact` reproduces the uninterrupted run bit for bit: %s\n",
                yes(r->exact_bit_identical));
    if (k16) {
        double ratio = eval_method_ratio(k16), dn = delta_nll(r, k16);
        double dacc = 100 * (eval_tally_accuracy(&k16->all) - acc_exact);
        mdf(d, "- KVTC at 16x realizes >= 16x: %s (%s); ΔNLL <= 0.03: %s (%s); retrieval within "
               "2 points of exact: %s (%s points)\n",
            yes(ratio >= 16), num(b[0], 32, "%.2fx", ratio), yes(dn <= 0.03),
            num(b[1], 32, "%+.4f", dn), yes(isfinite(dacc) && dacc >= -2),
            num(b[2], 32, "%+.1f", dacc));
    }
    if (k32) {
        bool all = true;
        mdf(d, "- KVTC at 32x (%s) against every baseline that stores more bytes "
               "(lower ratio) — better ΔNLL and no lower retrieval:\n",
            num(b[0], 32, "%.2fx", eval_method_ratio(k32)));
        for (uint32_t i = 0; i < r->n_methods; i++) {
            const eval_method_result *m = &r->methods[i];
            if (!is_baseline(m) || !(eval_method_ratio(m) < eval_method_ratio(k32)))
                continue;
            char label[64];
            eval_method_label(&m->method, label, sizeof label);
            bool beats = delta_nll(r, k32) < delta_nll(r, m) &&
                         !(eval_tally_accuracy(&k32->all) < eval_tally_accuracy(&m->all));
            all = all && beats;
            mdf(d, "  - vs %s (%s): ΔNLL %s vs %s, retrieval %s vs %s: %s\n", label,
                num(b[0], 32, "%.2fx", eval_method_ratio(m)), num(b[1], 32, "%+.4f", delta_nll(r, k32)),
                num(b[2], 32, "%+.4f", delta_nll(r, m)),
                num(b[3], 32, "%.1f%%", 100 * eval_tally_accuracy(&k32->all)),
                num(b[4], 32, "%.1f%%", 100 * eval_tally_accuracy(&m->all)), yes(beats));
        }
        mdf(d, "  - beats all of them: %s\n", yes(all));
    }
    /* Pareto: no baseline at least as cheap is at least as good */
    for (int retrieval = 0; retrieval < 2; retrieval++) {
        bool on_front = true;
        mdf(d, "- KVTC on or above the baselines' Pareto front (%s vs realized ratio): ",
            retrieval ? "retrieval accuracy" : "ΔNLL");
        for (uint32_t i = 0; i < r->n_methods; i++) {
            const eval_method_result *k = &r->methods[i];
            if (k->method.id != EVAL_KVTC)
                continue;
            for (uint32_t j = 0; j < r->n_methods; j++) {
                const eval_method_result *m = &r->methods[j];
                if (!is_baseline(m) || !dominates(r, m, k, retrieval))
                    continue;
                char kl[64], ml[64];
                eval_method_label(&k->method, kl, sizeof kl);
                eval_method_label(&m->method, ml, sizeof ml);
                mdf(d, "%s%s is matched by %s", on_front ? "" : "; ", kl, ml);
                on_front = false;
            }
        }
        mdf(d, "%s%s\n", on_front ? "" : " — ", yes(on_front));
    }
    mdf(d, "\n");
}

/* Where KVTC's error comes from, measured on this run's evaluation caches. */
static kvtc_status write_limits(md *d, const eval_setup *s, const eval_results *r,
                                kvtc_error *err)
{
    char b[6][32];
    double floor_k = r->energy[0] > 0 ? r->outside_basis[0] / r->energy[0] : NAN;
    double floor_v = r->energy[1] > 0 ? r->outside_basis[1] / r->energy[1] : NAN;
    mdf(d, "## What limits KVTC here\n\n");
    mdf(d, "- Energy of the evaluation contexts' treated tokens outside the calibration's basis "
           "(rank %u / %u), which no bit allocation can restore: keys %s, values %s of their "
           "energy around the calibration mean. On the rows it was fitted on, the same basis "
           "leaves out %s (keys) and %s (values) of the variance.\n",
        kvtc_calibration_rank(s->cal, KVTC_KEY), kvtc_calibration_rank(s->cal, KVTC_VALUE),
        num(b[0], 32, "%.4f", floor_k), num(b[1], 32, "%.4f", floor_v),
        num(b[2], 32, "%.4f", 1 - cli_explained_variance(s->cal, KVTC_KEY, 1u << 30)),
        num(b[3], 32, "%.4f", 1 - cli_explained_variance(s->cal, KVTC_VALUE, 1u << 30)));
    mdf(d, "- Per target ratio: the error the plan predicts on the calibration's held-out rows, "
           "the error measured on the evaluation caches, and the part of it that is the basis "
           "floor above:\n\n");
    mdf(d, "| method | K predicted | K measured | K floor | V predicted | V measured | "
           "V floor |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    for (uint32_t i = 0; i < r->n_methods; i++) {
        const eval_method_result *m = &r->methods[i];
        if (m->method.id != EVAL_KVTC)
            continue;
        double pred[2], kind_ratio[2] = {m->method.k_ratio, m->method.v_ratio};
        char label[64];
        eval_method_label(&m->method, label, sizeof label);
        for (int k = 0; k < 2; k++) {
            kvtc_plan *plan;
            kvtc_status st = kvtc_plan_create(s->cal, (kvtc_kind)k, kind_ratio[k], &plan, err);
            if (st != KVTC_OK)
                return st;
            pred[k] = kvtc_plan_predicted_error(plan);
            kvtc_plan_free(plan);
        }
        mdf(d, "| %s | %s | %s | %s | %s | %s | %s |\n", label,
            num(b[0], 32, "%.4f", pred[0]), num(b[1], 32, "%.4f", eval_method_rel_error(r, m, KVTC_KEY)),
            num(b[2], 32, "%.4f", floor_k), num(b[3], 32, "%.4f", pred[1]),
            num(b[4], 32, "%.4f", eval_method_rel_error(r, m, KVTC_VALUE)),
            num(b[5], 32, "%.4f", floor_v));
    }
    double ffloor_k = r->fact_energy[0] > 0 ? r->fact_outside_basis[0] / r->fact_energy[0] : NAN;
    double ffloor_v = r->fact_energy[1] > 0 ? r->fact_outside_basis[1] / r->fact_energy[1] : NAN;
    mdf(d, "\n- The retrieval facts' own tokens (the sentences that hold the numbers asked "
           "for) against all treated tokens: outside the basis keys %s (all: %s), values %s "
           "(all: %s); restored with these relative errors:\n\n",
        num(b[0], 32, "%.4f", ffloor_k), num(b[1], 32, "%.4f", floor_k),
        num(b[2], 32, "%.4f", ffloor_v), num(b[3], 32, "%.4f", floor_v));
    mdf(d, "| method | K facts | K all | V facts | V all | Δ retrieval (points) |\n"
           "|---|---:|---:|---:|---:|---:|\n");
    for (uint32_t i = 0; i < r->n_methods; i++) {
        const eval_method_result *m = &r->methods[i];
        if (eval_method_evicts(m->method.id) || m->method.id == EVAL_EXACT)
            continue;
        char label[64];
        eval_method_label(&m->method, label, sizeof label);
        mdf(d, "| %s | %s | %s | %s | %s | %s |\n", label,
            num(b[0], 32, "%.4f", eval_method_fact_rel_error(r, m, KVTC_KEY)),
            num(b[1], 32, "%.4f", eval_method_rel_error(r, m, KVTC_KEY)),
            num(b[2], 32, "%.4f", eval_method_fact_rel_error(r, m, KVTC_VALUE)),
            num(b[3], 32, "%.4f", eval_method_rel_error(r, m, KVTC_VALUE)),
            num(b[4], 32, "%+.1f",
                100 * (eval_tally_accuracy(&m->all) - eval_tally_accuracy(&r->exact))));
    }
    mdf(d, "\n- Sinks and window: %u + %u tokens of every context stay raw for every method "
           "and are not counted in any ratio.\n\n",
        s->options->sinks, s->options->window);
    return KVTC_OK;
}

/* "[0, 16) fp8·1, [16, 64) int4·16, ...": runs of neighbouring groups of one
 * type and size (·size: coordinates sharing one shift and scale). */
static void write_groups(md *d, const kvtc_plan *plan)
{
    const kvtc_group *g = kvtc_plan_groups(plan);
    uint32_t n = kvtc_plan_group_count(plan);
    for (uint32_t i = 0; i < n;) {
        uint32_t j = i;
        while (j + 1 < n && g[j + 1].type == g[i].type && g[j + 1].size == g[i].size)
            j++;
        mdf(d, "%s[%u, %u) %s·%u", i ? ", " : "", g[i].start, g[j].start + g[j].size,
            kvtc_qtype_name(g[i].type), g[i].size);
        i = j + 1;
    }
}

static kvtc_status write_calibration(md *d, const eval_setup *s, const eval_results *r,
                                     kvtc_error *err)
{
    uint32_t ranks[16], n = cli_variance_ranks(s->cal, ranks);
    mdf(d, "## Calibration: explained variance\n\n");
    mdf(d, "Fraction of the total variance (over all features) that the first r principal "
           "directions of the calibration explain.\n\n| r | keys | values |\n|---:|---:|---:|\n");
    for (uint32_t i = 0; i < n; i++)
        mdf(d, "| %u | %.2f%% | %.2f%% |\n", ranks[i],
            100 * cli_explained_variance(s->cal, KVTC_KEY, ranks[i]),
            100 * cli_explained_variance(s->cal, KVTC_VALUE, ranks[i]));
    double ratios[16];
    uint32_t nr = eval_plan_ratios(r, ratios);
    mdf(d, "\n## Bit allocation per target ratio\n\n");
    mdf(d, "The DP's plan: contiguous groups of principal coordinates, written "
           "[first, end) type·group size; each group stores one fp16 shift and scale per "
           "token (so a group of 1 is exact to fp16 whatever its type), coordinates past the "
           "last group are dropped. Budget = floor(16 p / ratio) bits per token and kind, "
           "before DEFLATE.\n\n");
    mdf(d, "| ratio | kind | budget bits | bits used | coordinates kept | predicted rel. error | "
           "groups |\n|---:|---|---:|---:|---:|---:|---|\n");
    for (uint32_t i = 0; i < nr; i++)
        for (int k = 0; k < 2; k++) {
            kvtc_plan *plan;
            kvtc_status st = kvtc_plan_create(s->cal, (kvtc_kind)k, ratios[i], &plan, err);
            if (st != KVTC_OK)
                return st;
            const kvtc_group *g = kvtc_plan_groups(plan);
            uint32_t ng = kvtc_plan_group_count(plan);
            mdf(d, "| %g | %s | %u | %u | %u | %.4f | ", ratios[i], k ? "values" : "keys",
                kvtc_plan_budget_bits(plan), kvtc_plan_bits_per_token(plan),
                ng ? g[ng - 1].start + g[ng - 1].size : 0, kvtc_plan_predicted_error(plan));
            write_groups(d, plan);
            mdf(d, " |\n");
            kvtc_plan_free(plan);
        }
    mdf(d, "\n");
    return KVTC_OK;
}

kvtc_status eval_write_report(const char *path, const eval_setup *s, const eval_results *r,
                              kvtc_error *err)
{
    md d;
    kvtc_writer_init(&d.w);
    write_setup(&d, s, r);
    write_table(&d, r);
    write_verdicts(&d, r);
    kvtc_status st = write_limits(&d, s, r, err);
    if (st == KVTC_OK)
        st = write_calibration(&d, s, r, err);
    if (st == KVTC_OK)
        st = d.w.failed ? kvtc_fail(err, KVTC_E_NOMEM, "%s: out of memory", path)
                        : kvtc_write_file_atomic(path, d.w.buf, d.w.len, err);
    kvtc_writer_free(&d.w);
    return st;
}

/* ---- chart ---------------------------------------------------------------------------------- */

static const char *method_color(eval_method_id id)
{
    static const char *const colors[EVAL_METHOD_COUNT] = {
        "#000000", "#1f5fbf", "#2ca02c", "#17becf", "#9467bd", "#d62728", "#ff7f0e", "#8c564b",
        "#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a", "#e377c2"};
    return (unsigned)id < EVAL_METHOD_COUNT ? colors[id] : "#777";
}

static const char *qtype_color(kvtc_qtype t)
{
    static const char *const colors[KVTC_QTYPE_COUNT] = {
        "#f0f0f0", "#fdd49e", "#fc8d59", "#d7301f", "#7f0000", "#c6dbef", "#6baed6", "#2171b5"};
    return (unsigned)t < KVTC_QTYPE_COUNT ? colors[t] : "#777";
}

/* One quality panel: every method's points, those with a ratio joined across ratios;
 * values above y1 are drawn on the top edge with their value. */
static void quality_panel(svg_doc *d, const svg_axes *a, const eval_results *r, bool retrieval,
                          const char *title, const char *y_label)
{
    svg_axes_draw(d, a, title, "realized compression ratio (log scale)", y_label);
    for (int id = 0; id < EVAL_METHOD_COUNT; id++) {
        double xs[32], ys[32];
        size_t n = 0;
        for (uint32_t i = 0; i < r->n_methods && n < 32; i++) {
            const eval_method_result *m = &r->methods[i];
            if ((int)m->method.id != id)
                continue;
            double y = retrieval ? 100 * eval_tally_accuracy(&m->all) : delta_nll(r, m);
            xs[n] = eval_method_ratio(m);
            ys[n] = y > a->y1 ? a->y1 : y < a->y0 ? a->y0 : y;
            char label[64], text[96];
            eval_method_label(&m->method, label, sizeof label);
            if (y > a->y1)
                snprintf(text, sizeof text, "%s (%.2f)", label, y);
            else
                snprintf(text, sizeof text, "%s", label);
            if (isfinite(xs[n]) && isfinite(ys[n]))
                svg_text(d, svg_px(a, xs[n]) + 6, svg_py(a, ys[n]) - 5, 10, "start",
                         method_color(m->method.id), text);
            n++;
        }
        svg_series(d, a, xs, ys, n, method_color((eval_method_id)id),
                   eval_method_has_ratio((eval_method_id)id));
    }
}

static void variance_panel(svg_doc *d, const svg_axes *a, const kvtc_calibration *cal)
{
    svg_axes_draw(d, a, "calibration: explained variance", "principal directions kept (log scale)",
                  "fraction of variance");
    static const char *const colors[2] = {"#1f5fbf", "#d62728"};
    for (int k = 0; k < 2; k++) {
        double xs[40], ys[40];
        size_t n = 0;
        uint32_t rank = kvtc_calibration_rank(cal, (kvtc_kind)k);
        for (uint32_t x = 1; n < 40; x = x * 2 > rank ? rank : x * 2) {
            xs[n] = x;
            ys[n++] = cli_explained_variance(cal, (kvtc_kind)k, x);
            if (x == rank)
                break;
        }
        svg_series(d, a, xs, ys, n, colors[k], true);
        svg_text(d, a->x + a->w - 8, a->y + a->h - 12 - 16 * k, 11, "end", colors[k],
                 k ? "values" : "keys");
    }
}

static kvtc_status allocation_panel(svg_doc *d, const svg_axes *a, const eval_setup *s,
                                    const eval_results *r, kvtc_error *err)
{
    double ratios[16];
    uint32_t nr = eval_plan_ratios(r, ratios);
    svg_text(d, a->x + a->w / 2, a->y - 10, 14, "middle", "#000", "KVTC bit allocation per target ratio");
    svg_rect(d, a->x, a->y, a->w, a->h, "none", "#888");
    double row_h = a->h / (2.0 * nr);
    char buf[64];
    for (uint32_t i = 0; i < nr; i++)
        for (int k = 0; k < 2; k++) {
            kvtc_plan *plan;
            kvtc_status st = kvtc_plan_create(s->cal, (kvtc_kind)k, ratios[i], &plan, err);
            if (st != KVTC_OK)
                return st;
            double y = a->y + (2 * i + k) * row_h;
            const kvtc_group *g = kvtc_plan_groups(plan);
            for (uint32_t j = 0; j < kvtc_plan_group_count(plan); j++) {
                double x0 = svg_px(a, g[j].start + 1.0), x1 = svg_px(a, g[j].start + g[j].size + 1.0);
                svg_rect(d, x0, y + 2, x1 - x0, row_h - 4, qtype_color(g[j].type), NULL);
            }
            snprintf(buf, sizeof buf, "%gx %s", ratios[i], k ? "V" : "K");
            svg_text(d, a->x - 5, y + row_h / 2 + 4, 11, "end", "#333", buf);
            kvtc_plan_free(plan);
        }
    for (double x = 1; x <= a->x1; x *= 4) {
        snprintf(buf, sizeof buf, "%g", x - 1);
        svg_text(d, svg_px(a, x), a->y + a->h + 14, 11, "middle", "#333", buf);
    }
    svg_text(d, a->x + a->w / 2, a->y + a->h + 32, 12, "middle", "#333",
             "principal coordinate index (log scale)");
    for (int t = 0; t < KVTC_QTYPE_COUNT; t++) {
        double x = a->x + 10 + 52 * t, y = a->y + a->h + 44;
        svg_rect(d, x, y, 12, 12, qtype_color((kvtc_qtype)t), "#999");
        svg_text(d, x + 16, y + 10, 11, "start", "#333", kvtc_qtype_name((kvtc_qtype)t));
    }
    svg_text(d, a->x + 10 + 52 * KVTC_QTYPE_COUNT, a->y + a->h + 54, 10, "start", "#666",
             "(a group of 1 is exact to fp16)");
    return KVTC_OK;
}

kvtc_status eval_write_chart(const char *path, const eval_setup *s, const eval_results *r,
                             kvtc_error *err)
{
    double max_ratio = 2, worst = 0.05, best = -0.005;
    for (uint32_t i = 0; i < r->n_methods; i++) {
        double x = eval_method_ratio(&r->methods[i]), dn = delta_nll(r, &r->methods[i]);
        max_ratio = isfinite(x) && x > max_ratio ? x : max_ratio;
        /* the scale follows the methods that keep ΔNLL below 0.5; worse ones are clipped */
        worst = isfinite(dn) && dn < 0.5 && dn > worst ? dn : worst;
        best = isfinite(dn) && dn < best ? dn : best;
    }
    double x1 = exp2(ceil(log2(max_ratio * 1.15)));
    svg_doc d;
    svg_open(&d, 1200, 860);
    svg_axes nll = {80, 50, 480, 290, 1, x1, best * 1.15, worst * 1.15, true};
    svg_axes acc = {680, 50, 480, 290, 1, x1, 0, 105, true};
    quality_panel(&d, &nll, r, false, "continuation: ΔNLL vs realized ratio (lower is better)",
                  "ΔNLL (nats/token)");
    quality_panel(&d, &acc, r, true, "retrieval accuracy vs realized ratio", "accuracy (%)");
    uint32_t rank = kvtc_calibration_rank(s->cal, KVTC_KEY);
    if (kvtc_calibration_rank(s->cal, KVTC_VALUE) > rank)
        rank = kvtc_calibration_rank(s->cal, KVTC_VALUE);
    svg_axes var = {80, 460, 480, 300, 1, rank > 1 ? rank : 2, 0, 1, true};
    svg_axes alloc = {680, 460, 480, 300, 1, rank + 1.0, 0, 1, true};
    variance_panel(&d, &var, s->cal);
    kvtc_status st = allocation_panel(&d, &alloc, s, r, err);
    if (st != KVTC_OK) {
        svg_discard(&d);
        return st;
    }
    return svg_save(&d, path, err);
}
