/* The continuation and retrieval tasks (see tasks.h). Every context is
 * prefilled once; the exact scores and, for h2o, the accumulated attention are
 * computed once; then each method treats its own copy of the exact cache and
 * the model continues on it. */
#include "tasks.h"

#include "corpus.h"
#include "journal.h"
#include "kvtc_internal.h"
#include "session.h"
#include "transform.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

void eval_options_default(eval_options *o)
{
    memset(o, 0, sizeof *o);
    o->nll = o->passkey = true;
    o->n_contexts = 4;
    o->context_tokens = 1024;
    o->continuation_tokens = 256;
    o->n_haystacks = 17;
    o->facts_per_haystack = 3;
    o->haystack_tokens = 1024;
    o->kv_contexts = 8;
    o->kv_tokens = 1024;
    o->kv_questions = 4;
    o->code_contexts = 8;
    o->code_tokens = 1024;
    o->code_questions = 4;
    o->sinks = 4;
    o->window = 128;
    o->n_threads = 1;
}

double eval_tally_nll(const eval_tally *t) { return t->tokens ? t->nll_sum / t->tokens : NAN; }
double eval_tally_top1(const eval_tally *t)
{
    return t->tokens ? (double)t->top1_agree / t->tokens : NAN;
}
double eval_tally_accuracy(const eval_tally *t)
{
    return t->cases ? (double)t->correct / t->cases : NAN;
}
double eval_method_ratio(const eval_method_result *r)
{
    return r->stored_bytes ? (double)r->fp16_bytes / (double)r->stored_bytes : NAN;
}

double eval_method_rel_error(const eval_results *res, const eval_method_result *r, kvtc_kind k)
{
    return !eval_method_evicts(r->method.id) && res->energy[k] > 0 ? r->sq_error[k] / res->energy[k] : NAN;
}

double eval_method_fact_rel_error(const eval_results *res, const eval_method_result *r,
                                  kvtc_kind k)
{
    return !eval_method_evicts(r->method.id) && res->fact_energy[k] > 0
               ? r->fact_sq_error[k] / res->fact_energy[k]
               : NAN;
}

void eval_results_free(eval_results *r)
{
    kvtc_free(r->methods);
    r->methods = NULL;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- shared state of a run ------------------------------------------------------ */

typedef struct run_state {
    const model *m;
    const tokenizer *tok;
    const kvtc_calibration *cal;
    const eval_method *methods;
    uint32_t n_methods;
    const eval_options *o;
    eval_results *res;
    session *s;
    float *attention;       /* [n_layer][n_kv_head][context]; only when a method evicts */
    float *last_attention;  /* the same layout: the last query's alone */
    float *logits;          /* [rows][vocab] */
    uint64_t done, total;   /* progress */
    uint32_t unit, skip;    /* contexts begun so far; those the journal had finished */
    const char *key;        /* the journal's */
    double t0, seconds_before; /* this run's start; the time of the runs it resumes */
} run_state;

/* True when the next context was finished by an earlier run (the journal
 * holds its results): it is skipped, its progress counted. */
static bool already_done(run_state *r)
{
    if (r->unit >= r->skip)
        return false;
    r->unit++;
    r->done += 1 + r->n_methods;
    return true;
}

/* After a finished context: counted, and the journal rewritten. */
static kvtc_status context_done(run_state *r, kvtc_error *err)
{
    r->unit++;
    if (!r->o->journal)
        return KVTC_OK;
    r->res->seconds = r->seconds_before + now_s() - r->t0;
    return eval_journal_save(r->o->journal, r->key, r->res, r->unit, err);
}

static void progress_step(run_state *r)
{
    r->done++;
    if (r->o->progress)
        r->o->progress(r->o->progress_user, "eval", r->done, r->total);
}

static kvtc_status cache_clone(const kvtc_cache *c, kvtc_cache **out, kvtc_error *err)
{
    kvtc_status st = kvtc_cache_create(kvtc_cache_shape(c), kvtc_cache_dtype(c),
                                       kvtc_cache_tokens(c), kvtc_cache_pos0(c), out, err);
    if (st == KVTC_OK)
        kvtc_cache_copy_tokens(*out, 0, c, 0, kvtc_cache_tokens(c));
    return st;
}

/* ---- reconstruction error ----------------------------------------------------------- */

#define ROW_CHUNK 64u

/* Per kind over tokens [t0, t1) of exact, rows as the codec sees them (keys
 * with RoPE undone): the energy around the calibration mean and the part of
 * it outside the basis (energy minus the squared coefficients: the basis is
 * orthonormal). */
static kvtc_status add_energy(const kvtc_calibration *cal, const kvtc_cache *exact, uint32_t t0,
                              uint32_t t1, double energy[2], double outside[2], kvtc_error *err)
{
    size_t p = (size_t)kvtc_shape_features(kvtc_cache_shape(exact));
    uint32_t rank[2] = {kvtc_calibration_rank(cal, KVTC_KEY),
                        kvtc_calibration_rank(cal, KVTC_VALUE)};
    uint32_t most = rank[0] > rank[1] ? rank[0] : rank[1];
    float *x = kvtc_malloc_array(ROW_CHUNK * p, sizeof(float));
    float *coef = kvtc_malloc_array(ROW_CHUNK, (size_t)(most ? most : 1) * sizeof(float));
    if (!x || !coef) {
        kvtc_free(x);
        kvtc_free(coef);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    for (int k = 0; k < 2; k++) {
        for (uint32_t c0 = t0; c0 < t1; c0 += ROW_CHUNK) {
            uint32_t n = t1 - c0 < ROW_CHUNK ? t1 - c0 : ROW_CHUNK;
            double e = 0, inside = 0;
            kvtc_cache_gather_rows(exact, (kvtc_kind)k, c0, n, x);
            kvtc_transform_project(cal, (kvtc_kind)k, x, n, rank[k], coef, &e);
            for (size_t i = 0; i < (size_t)n * rank[k]; i++)
                inside += (double)coef[i] * coef[i];
            energy[k] += e;
            outside[k] += e - inside;
        }
    }
    kvtc_free(x);
    kvtc_free(coef);
    return KVTC_OK;
}

/* Per kind, the squared difference of tokens [t0, t1) of two caches as rows. */
static kvtc_status add_sq_error(const kvtc_cache *a, const kvtc_cache *b, uint32_t t0, uint32_t t1,
                                double sq_error[2], kvtc_error *err)
{
    size_t p = (size_t)kvtc_shape_features(kvtc_cache_shape(a));
    float *x = kvtc_malloc_array(ROW_CHUNK * p, 2 * sizeof(float)), *y = x + ROW_CHUNK * p;
    if (!x)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    for (int k = 0; k < 2; k++)
        for (uint32_t c0 = t0; c0 < t1; c0 += ROW_CHUNK) {
            uint32_t n = t1 - c0 < ROW_CHUNK ? t1 - c0 : ROW_CHUNK;
            kvtc_cache_gather_rows(a, (kvtc_kind)k, c0, n, x);
            kvtc_cache_gather_rows(b, (kvtc_kind)k, c0, n, y);
            for (size_t i = 0; i < n * p; i++)
                sq_error[k] += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        }
    kvtc_free(x);
    return KVTC_OK;
}

static bool needs_attention(const run_state *r)
{
    for (uint32_t i = 0; i < r->n_methods; i++)
        if (eval_method_evicts(r->methods[i].id))
            return true;
    return false;
}

/* A copy of `exact` through method i, with its bytes and time counted. */
static kvtc_status treat(run_state *r, uint32_t i, const kvtc_cache *exact, kvtc_cache **out,
                         kvtc_error *err)
{
    kvtc_cache *c;
    kvtc_status st = cache_clone(exact, &c, err);
    if (st != KVTC_OK)
        return st;
    eval_treat_args args = {r->o->sinks,   r->o->window,     r->cal,
                            r->attention, r->o->n_threads, r->last_attention};
    eval_treat_result tr;
    double t0 = now_s();
    st = eval_method_apply(&r->methods[i], &args, &c, &tr, err);
    eval_method_result *mr = &r->res->methods[i];
    mr->treat_seconds += now_s() - t0;
    if (st != KVTC_OK) {
        kvtc_cache_free(c);
        return st;
    }
    uint32_t n = kvtc_cache_tokens(exact);
    if (tr.treated_tokens && !eval_method_evicts(mr->method.id) &&
        (st = add_sq_error(exact, c, r->o->sinks, n - r->o->window, mr->sq_error, err)) != KVTC_OK) {
        kvtc_cache_free(c);
        return st;
    }
    mr->fp16_bytes += tr.fp16_bytes;
    mr->stored_bytes += tr.stored_bytes;
    if (tr.treated_tokens && (mr->min_kept == 0 || tr.kept_tokens < mr->min_kept))
        mr->min_kept = tr.kept_tokens;
    *out = c;
    return KVTC_OK;
}

/* Prefills tokens[0..n) from position 0 and exports the exact cache; measures
 * its treated tokens' energy and, when a method needs it, the accumulated
 * attention over it. */
static kvtc_status read_context(run_state *r, const int32_t *tokens, uint32_t n,
                                kvtc_cache **exact, kvtc_error *err)
{
    session_reset(r->s);
    kvtc_status st = KVTC_OK;
    if (r->attention) {
        const model_config *c = &session_model(r->s)->cfg;
        memset(r->attention, 0, (size_t)c->n_layer * c->n_kv_head * n * sizeof(float));
        st = session_observe_attention(r->s, r->attention, r->last_attention, n, err);
    }
    if (st == KVTC_OK)
        st = session_forward(r->s, tokens, n, NULL, false, err);
    if (r->attention) /* the questions that follow are not part of the scores */
        session_observe_attention(r->s, NULL, NULL, 0, err);
    if (st == KVTC_OK)
        st = session_export_cache(r->s, KVTC_F32, exact, err);
    if (st == KVTC_OK && r->cal && n > (uint64_t)r->o->sinks + r->o->window)
        st = add_energy(r->cal, *exact, r->o->sinks, n - r->o->window, r->res->energy,
                        r->res->outside_basis, err);
    return st;
}

/* ---- continuation ------------------------------------------------------------------ */

/* Scores tokens[1..T] fed tokens[0..T) on the session's current cache. */
static kvtc_status score_continuation(run_state *r, const int32_t *tokens, uint32_t T,
                                      double *nll, int32_t *argmax, uint32_t *crc,
                                      kvtc_error *err)
{
    uint32_t vocab = r->m->cfg.vocab_size;
    kvtc_status st = session_forward(r->s, tokens, T, r->logits, true, err);
    if (st != KVTC_OK)
        return st;
    for (uint32_t i = 0; i < T; i++) {
        const float *row = r->logits + (size_t)i * vocab;
        nll[i] = logits_nll(row, vocab, tokens[i + 1]);
        argmax[i] = logits_argmax(row, vocab);
    }
    *crc = kvtc_crc32(r->logits, (size_t)T * vocab * sizeof(float));
    return KVTC_OK;
}

static void tally_tokens(eval_tally *t, const double *nll, const int32_t *argmax,
                         const int32_t *exact_argmax, uint32_t T)
{
    for (uint32_t i = 0; i < T; i++) {
        t->nll_sum += nll[i];
        t->top1_agree += argmax[i] == exact_argmax[i];
    }
    t->tokens += T;
}

static kvtc_status run_continuation(run_state *r, const corpus_chunks *chunks, kvtc_error *err)
{
    uint32_t C = r->o->context_tokens, T = r->o->continuation_tokens;
    double *nll = kvtc_malloc_array(T, sizeof *nll);
    int32_t *argmax = kvtc_malloc_array(2 * (size_t)T, sizeof *argmax), *exact_argmax = argmax + T;
    if (!nll || !argmax) {
        kvtc_free(nll);
        kvtc_free(argmax);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    kvtc_status st = KVTC_OK;
    for (size_t c = 0; c < chunks->n_chunks && st == KVTC_OK; c++) {
        if (already_done(r))
            continue;
        const int32_t *ids = chunks->chunk[c].ids;
        int genre = chunks->chunk[c].doc.genre == CORPUS_CODE ? EVAL_CODE : EVAL_PROSE;
        kvtc_cache *exact = NULL;
        uint32_t exact_crc, crc;
        /* the uninterrupted run: context, then continuation on the same session */
        st = read_context(r, ids, C, &exact, err);
        if (st == KVTC_OK)
            st = score_continuation(r, ids + C, T, nll, exact_argmax, &exact_crc, err);
        if (st == KVTC_OK) {
            tally_tokens(&r->res->exact, nll, exact_argmax, exact_argmax, T);
            tally_tokens(&r->res->exact_genre[genre], nll, exact_argmax, exact_argmax, T);
            r->res->contexts++;
            progress_step(r);
        }
        for (uint32_t i = 0; i < r->n_methods && st == KVTC_OK; i++) {
            kvtc_cache *treated = NULL;
            st = treat(r, i, exact, &treated, err);
            if (st == KVTC_OK)
                st = session_import_cache(r->s, treated, err);
            if (st == KVTC_OK)
                st = score_continuation(r, ids + C, T, nll, argmax, &crc, err);
            if (st == KVTC_OK) {
                eval_method_result *mr = &r->res->methods[i];
                tally_tokens(&mr->all, nll, argmax, exact_argmax, T);
                tally_tokens(&mr->genre[genre], nll, argmax, exact_argmax, T);
                if (mr->method.id == EVAL_EXACT && crc != exact_crc)
                    r->res->exact_bit_identical = false;
                progress_step(r);
            }
            kvtc_cache_free(treated);
        }
        kvtc_cache_free(exact);
        if (st == KVTC_OK)
            st = context_done(r, err);
    }
    kvtc_free(nll);
    kvtc_free(argmax);
    return st;
}

/* ---- retrieval ----------------------------------------------------------------------- */

/* What each fact of a haystack names. Distinct things, not one thing of
 * distinct people: with "<Name>'s secret number is N" the exact model gave
 * another person's number in a quarter of the cases (73.5% right over 102),
 * with these 97%. */
static const char *const fact_names[] = {"pass key",    "door code",     "flight number",
                                         "room number", "ticket number", "locker code",
                                         "order number", "serial number", "account number",
                                         "parcel number"};
#define N_FACT_NAMES (sizeof fact_names / sizeof fact_names[0])

typedef struct question {
    int32_t *ids;     /* suffix (question, end of turn, answer prefix) then answer */
    uint32_t n, n_answer;
    char value[40];   /* the number or UUID asked for, as text */
    bool text;        /* a UUID, matched as text; else a number, matched as digits */
    bool exact_right; /* the exact run's outcome, to pair each method's with */
} question;

typedef struct haystack {
    int32_t *ids; /* the context: template head, prose with the facts */
    uint32_t n;
    uint32_t fact_start[N_FACT_NAMES], fact_end[N_FACT_NAMES]; /* token spans of the facts */
    question q[N_FACT_NAMES];
    uint32_t n_questions;
} haystack;

static void haystack_free(haystack *h)
{
    kvtc_free(h->ids);
    for (uint32_t i = 0; i < h->n_questions; i++)
        kvtc_free(h->q[i].ids);
    memset(h, 0, sizeof *h);
}

/* Appends the tokens of text to *ids (capacity grown as needed). */
static kvtc_status append_text(const tokenizer *tok, const char *text, int32_t **ids,
                               uint32_t *n, kvtc_error *err)
{
    int32_t *more;
    size_t k;
    kvtc_status st = tokenizer_encode(tok, text, strlen(text), false, &more, &k, err);
    if (st != KVTC_OK)
        return st;
    int32_t *grown = kvtc_malloc_array(*n + k + 1, sizeof *grown);
    if (!grown) {
        kvtc_free(more);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    if (*n)
        memcpy(grown, *ids, *n * sizeof *grown);
    memcpy(grown + *n, more, k * sizeof *grown);
    kvtc_free(*ids);
    kvtc_free(more);
    *ids = grown;
    *n += (uint32_t)k;
    return KVTC_OK;
}

/* The evaluation prose, tokenized, documents joined by a blank line. */
static kvtc_status prose_tokens(const tokenizer *tok, int32_t **ids, uint32_t *n,
                                kvtc_error *err)
{
    corpus_doc docs[CORPUS_MAX_DOCS];
    size_t n_docs = corpus_documents(CORPUS_EVALUATION, docs, CORPUS_MAX_DOCS);
    *ids = NULL;
    *n = 0;
    kvtc_status st = KVTC_OK;
    for (size_t d = 0; d < n_docs && st == KVTC_OK; d++) {
        if (docs[d].genre != CORPUS_PROSE)
            continue;
        char *text;
        size_t len;
        if ((st = corpus_doc_text(&docs[d], &text, &len, err)) != KVTC_OK)
            break;
        st = append_text(tok, text, ids, n, err);
        kvtc_free(text);
        if (st == KVTC_OK)
            st = append_text(tok, "\n\n", ids, n, err);
    }
    if (st == KVTC_OK && *n == 0)
        st = kvtc_fail(err, KVTC_E_IO, "no evaluation prose on this machine (%s)",
                       "/usr/share/common-licenses");
    return st;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool ends_line(const tokenizer *tok, int32_t id)
{
    char buf[64];
    size_t k = tokenizer_token_bytes(tok, id, buf, sizeof buf);
    return k > 0 && k <= sizeof buf && buf[k - 1] == '\n';
}

/* The text of a fact, of its question, and of the answer's forced start. */
static void fact_text(uint32_t facts, const char *name, unsigned value, char *fact, char *ask,
                      char *lead, size_t cap)
{
    if (facts == 1) {
        snprintf(fact, cap, "The pass key is %u. Remember it. %u is the pass key.\n", value,
                 value);
        snprintf(ask, cap, "\n\nWhat is the pass key?");
        snprintf(lead, cap, "The pass key is");
    } else {
        snprintf(fact, cap, "The %s is %u. Remember it: the %s is %u.\n", name, value, name,
                 value);
        snprintf(ask, cap, "\n\nWhat is the %s?", name);
        snprintf(lead, cap, "The %s is", name);
    }
}

/* Haystack h: prose from a spread offset with facts spliced in at line ends.
 * Over all haystacks the facts' depths cover the treated range evenly:
 * fact f of haystack h sits at (f + (h + 1/2) / H) / F of the prose that is
 * outside the raw window. */
/* The chat template around one user turn: *chat holds the head (up to the
 * user's text), *turn_end the rest ("<|im_end|>\n<|im_start|>assistant\n");
 * both in one allocation, freed with kvtc_free(*chat). */
static kvtc_status chat_frame(const tokenizer *tok, char **chat, const char **turn_end,
                              kvtc_error *err)
{
    chat_message msg = {"user", "\x01"};
    kvtc_status st = tokenizer_chat_prompt(tok, &msg, 1, true, chat, err);
    if (st != KVTC_OK)
        return st;
    char *mark = strchr(*chat, '\x01');
    if (!mark) {
        kvtc_free(*chat);
        *chat = NULL;
        return kvtc_fail(err, KVTC_E_FORMAT, "chat template lost the user message");
    }
    *mark = '\0';
    *turn_end = mark + 1;
    return KVTC_OK;
}

/* Starts a question context: out emptied, then the chat template's head
 * (chat_frame's *chat, freed by the caller) as its first tokens. */
static kvtc_status begin_context(run_state *r, haystack *out, char **chat, const char **turn_end,
                                 kvtc_error *err)
{
    memset(out, 0, sizeof *out);
    *chat = NULL;
    kvtc_status st = chat_frame(r->tok, chat, turn_end, err);
    if (st == KVTC_OK)
        st = append_text(r->tok, *chat, &out->ids, &out->n, err);
    return st;
}

/* A question's tokens: the suffix (question, end of turn, the answer's forced
 * start), then the answer's. */
static kvtc_status make_question(const tokenizer *tok, const char *ask, const char *turn_end,
                                 const char *lead, const char *answer, const char *value,
                                 bool text, question *q, kvtc_error *err)
{
    char suffix[1024];
    snprintf(suffix, sizeof suffix, "%s%s%s", ask, turn_end, lead);
    snprintf(q->value, sizeof q->value, "%s", value);
    q->text = text;
    kvtc_status st = append_text(tok, suffix, &q->ids, &q->n, err);
    uint32_t before = q->n;
    if (st == KVTC_OK)
        st = append_text(tok, answer, &q->ids, &q->n, err);
    q->n_answer = q->n - before;
    return st;
}

static kvtc_status build_haystack(run_state *r, const int32_t *prose, uint32_t n_prose,
                                  uint32_t h, haystack *out, kvtc_error *err)
{
    const eval_options *o = r->o;
    uint32_t F = o->facts_per_haystack, L = o->haystack_tokens;
    char *chat;
    const char *turn_end;
    kvtc_status st = begin_context(r, out, &chat, &turn_end, err);

    /* prose start: spread over the text, then just after a line end */
    uint32_t span = n_prose > L ? n_prose - L : 0;
    uint32_t start = o->n_haystacks > 1 ? (uint32_t)((uint64_t)span * h / (o->n_haystacks - 1)) : 0;
    while (start > 0 && start < span && !ends_line(r->tok, prose[start - 1]))
        start++;
    uint64_t seed = 0x6b7663ull + h;
    uint32_t usable = L > o->window ? L - o->window : L, taken = 0;
    for (uint32_t f = 0; f < F && st == KVTC_OK; f++) {
        double depth = (f + (h + 0.5) / o->n_haystacks) / F;
        uint32_t at = (uint32_t)(depth * usable);
        while (at > 0 && at < usable && !ends_line(r->tok, prose[(start + at - 1) % n_prose]))
            at++;
        if (at < taken)
            at = taken;
        /* prose up to the fact */
        int32_t *grown = kvtc_malloc_array(out->n + (at - taken), sizeof *grown);
        if (!grown) {
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
            break;
        }
        memcpy(grown, out->ids, out->n * sizeof *grown);
        for (uint32_t i = taken; i < at; i++)
            grown[out->n++] = prose[(start + i) % n_prose];
        kvtc_free(out->ids);
        out->ids = grown;
        taken = at;
        /* the fact; names rotate so that depth and name are not tied */
        const char *name = fact_names[(f + h) % N_FACT_NAMES];
        unsigned value = 10000u + (unsigned)(splitmix(&seed) % 90000u);
        char fact[256], ask[256], lead[256], answer[32], digits[16];
        fact_text(F, name, value, fact, ask, lead, sizeof fact);
        out->fact_start[f] = out->n;
        st = append_text(r->tok, fact, &out->ids, &out->n, err);
        out->fact_end[f] = out->n;
        snprintf(answer, sizeof answer, " %u", value);
        snprintf(digits, sizeof digits, "%u", value);
        if (st == KVTC_OK)
            st = make_question(r->tok, ask, turn_end, lead, answer, digits, false,
                               &out->q[out->n_questions], err);
        if (st == KVTC_OK)
            out->n_questions++;
    }
    /* the rest of the prose */
    if (st == KVTC_OK) {
        int32_t *grown = kvtc_malloc_array(out->n + (L - taken), sizeof *grown);
        if (!grown)
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
        else {
            memcpy(grown, out->ids, out->n * sizeof *grown);
            for (uint32_t i = taken; i < L; i++)
                grown[out->n++] = prose[(start + i) % n_prose];
            kvtc_free(out->ids);
            out->ids = grown;
        }
    }
    kvtc_free(chat);
    if (st != KVTC_OK)
        haystack_free(out);
    return st;
}

/* A random UUID (version 4 layout) from the generator. */
static void make_uuid(uint64_t *seed, char out[37])
{
    uint64_t a = splitmix(seed), b = splitmix(seed);
    snprintf(out, 37, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32),
             (unsigned)(a >> 16) & 0xffffu, (unsigned)a & 0xfffu,
             0x8000u | ((unsigned)(b >> 48) & 0x3fffu),
             (unsigned long long)(b & 0xffffffffffffull));
}

/* Key-value context k: an instruction, then a JSON object of UUID pairs of at
 * least kv_tokens tokens; the keys asked sit at spread depths of the treated
 * part, over all contexts covering it evenly (as build_haystack's facts). */
static kvtc_status build_kv_context(run_state *r, uint32_t k, haystack *out, kvtc_error *err)
{
    const eval_options *o = r->o;
    uint32_t Q = o->kv_questions;
    char *chat;
    const char *turn_end;
    kvtc_status st = begin_context(r, out, &chat, &turn_end, err);
    if (st == KVTC_OK)
        st = append_text(r->tok,
                         "Extract the value corresponding to the specified key in the JSON "
                         "object below.\n\nJSON data:\n{",
                         &out->ids, &out->n, err);
    uint32_t head = out->n, body = o->kv_tokens;
    uint32_t usable = body > o->window ? body - o->window : body;
    uint32_t next_q = 0;
    uint64_t seed = 0x6b76726574ull + k;
    for (uint32_t pair = 0; st == KVTC_OK && out->n - head < body; pair++) {
        char key[37], value[37], text[96];
        make_uuid(&seed, key);
        make_uuid(&seed, value);
        snprintf(text, sizeof text, "%s\"%s\": \"%s\"", pair ? ", " : "", key, value);
        uint32_t at = out->n;
        double depth = next_q < Q ? (next_q + (k + 0.5) / o->kv_contexts) / Q : 2;
        bool asked = (double)(at - head) >= depth * usable;
        st = append_text(r->tok, text, &out->ids, &out->n, err);
        if (st != KVTC_OK || !asked)
            continue;
        char ask[128], lead[128], answer[48];
        snprintf(ask, sizeof ask, "\n\nWhat is the value of the key \"%s\"?", key);
        snprintf(lead, sizeof lead, "The value of the key \"%s\" is \"", key);
        snprintf(answer, sizeof answer, "%s\"", value);
        out->fact_start[next_q] = at;
        out->fact_end[next_q] = out->n;
        st = make_question(r->tok, ask, turn_end, lead, answer, value, true,
                           &out->q[next_q], err);
        if (st == KVTC_OK)
            out->n_questions = ++next_q;
    }
    if (st == KVTC_OK)
        st = append_text(r->tok, "}", &out->ids, &out->n, err);
    kvtc_free(chat);
    if (st != KVTC_OK)
        haystack_free(out);
    return st;
}

static bool ident_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/* A constant macro of a header line "#define NAME VALUE [comment]": NAME and
 * VALUE as written (a number with its suffix, or a constant expression of
 * numbers such as "(1U << 5)"), into name and value. */
static bool numeric_define(const char *line, size_t len, char name[64], char value[40])
{
    size_t i, n;
    if (len < 8 || memcmp(line, "#define", 7) != 0 || (line[7] != ' ' && line[7] != '\t'))
        return false;
    for (i = 7; i < len && (line[i] == ' ' || line[i] == '\t'); i++)
        ;
    for (n = 0; i + n < len && ident_char(line[i + n]) && n < 63; n++)
        name[n] = line[i + n];
    name[n] = '\0';
    i += n;
    if (n == 0 || (name[0] >= '0' && name[0] <= '9') || i >= len ||
        (line[i] != ' ' && line[i] != '\t'))
        return false; /* a function-like macro or none */
    for (; i < len && (line[i] == ' ' || line[i] == '\t'); i++)
        ;
    size_t end = len;
    for (size_t k = i; k + 1 < len; k++)
        if (line[k] == '/' && (line[k + 1] == '*' || line[k + 1] == '/')) {
            end = k;
            break;
        }
    while (end > i && (line[end - 1] == ' ' || line[end - 1] == '\t'))
        end--;
    if (end <= i || end - i >= 40 || !((line[i] >= '0' && line[i] <= '9') || line[i] == '('))
        return false;
    bool digits = false;
    for (size_t k = i; k < end; k++) {
        char c = line[k];
        digits |= c >= '0' && c <= '9';
        /* numbers, hex, suffixes and operators; no other identifiers (checked below) */
        if (!ident_char(c) && !strchr(" ()<>|&+-~*", c))
            return false;
    }
    /* every letter belongs to a number: hex digits after 0x, or a U/L suffix */
    for (size_t k = i; k < end; k++) {
        char c = line[k];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'))
            continue;
        size_t s = k;
        while (s > i && ident_char(line[s - 1]))
            s--;
        bool hex = line[s] == '0' && s + 1 < end && (line[s + 1] == 'x' || line[s + 1] == 'X');
        bool ok = (line[s] >= '0' && line[s] <= '9') &&
                  (strchr("uUlL", c) || (hex && (k == s + 1 || strchr("abcdefABCDEF", c))));
        if (!ok)
            return false;
    }
    memcpy(value, line + i, end - i);
    value[end - i] = '\0';
    return digits;
}

/* The words of a line up to a ';' or a comment: at most `max` identifiers
 * separated by blanks, starting at line[i]; their spans into start/end.
 * Returns how many, 0 when anything else comes first. */
static size_t line_words(const char *line, size_t len, size_t i, size_t max, size_t *start,
                         size_t *end, size_t *stop)
{
    size_t n = 0;
    for (;;) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i == len || !ident_char(line[i]) || n == max)
            break;
        start[n] = i;
        while (i < len && ident_char(line[i]))
            i++;
        end[n++] = i;
    }
    *stop = i;
    return n;
}

/* "struct NAME {" opening a line (a comment after it allowed): NAME into name. */
static bool struct_opens(const char *line, size_t len, char name[64])
{
    size_t start[3], end[3], stop;
    size_t n = line_words(line, len, 0, 3, start, end, &stop);
    if (n != 2 || end[0] - start[0] != 6 || memcmp(line + start[0], "struct", 6) != 0 ||
        stop >= len || line[stop] != '{' || end[1] - start[1] >= 64)
        return false;
    memcpy(name, line + start[1], end[1] - start[1]);
    name[end[1] - start[1]] = '\0';
    return true;
}

/* A plain field "TYPE NAME;" of a struct (a comment after it allowed): TYPE
 * one to three words ("__u32", "unsigned int", "struct timespec"), no pointer,
 * array or bit-field, into type, and NAME into name. */
static bool struct_field(const char *line, size_t len, char name[64], char type[40])
{
    size_t start[4], end[4], stop;
    size_t n = line_words(line, len, 0, 4, start, end, &stop);
    if (n < 2 || stop >= len || line[stop] != ';' || end[n - 1] - start[n - 1] >= 64 ||
        end[n - 2] - start[0] >= 40 || (line[start[0]] >= '0' && line[start[0]] <= '9'))
        return false;
    static const char *const not_types[] = {"return", "typedef", "struct", "union", "enum",
                                            "extern", "static", "const", "volatile"};
    for (size_t w = 0; w < sizeof not_types / sizeof *not_types; w++)
        if (end[0] - start[0] == strlen(not_types[w]) &&
            !memcmp(line + start[0], not_types[w], end[0] - start[0]) &&
            !(w == 2 && n == 3)) /* "struct timespec ts;" is a field */
            return false;
    memcpy(name, line + start[n - 1], end[n - 1] - start[n - 1]);
    name[end[n - 1] - start[n - 1]] = '\0';
    size_t t = 0;
    for (size_t w = 0; w + 1 < n; w++) { /* the type's words, one space apart */
        if (w)
            type[t++] = ' ';
        memcpy(type + t, line + start[w], end[w] - start[w]);
        t += end[w] - start[w];
    }
    type[t] = '\0';
    return true;
}

/* Braces of a line outside its comments: +1 for each '{', -1 for each '}'. */
static int brace_change(const char *line, size_t len)
{
    int d = 0;
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '/' && i + 1 < len && (line[i + 1] == '/' || line[i + 1] == '*'))
            break;
        d += (line[i] == '{') - (line[i] == '}');
    }
    return d;
}

/* Code context k: a header of the evaluation corpus (documents in turn, later
 * rounds further into each), whole lines to at least code_tokens tokens; the
 * things asked sit at spread depths of the treated part, each defined once in
 * the excerpt: numeric macros (their value) and the plain fields of structs
 * opened in the excerpt (their type). */
static kvtc_status build_code_context(run_state *r, uint32_t k, haystack *out, kvtc_error *err)
{
    const eval_options *o = r->o;
    corpus_doc docs[CORPUS_MAX_DOCS], code[CORPUS_MAX_DOCS];
    size_t n_docs = corpus_documents(CORPUS_EVALUATION, docs, CORPUS_MAX_DOCS), n_code = 0;
    for (size_t d = 0; d < n_docs; d++)
        if (docs[d].genre == CORPUS_CODE)
            code[n_code++] = docs[d];
    if (n_code == 0)
        return kvtc_fail(err, KVTC_E_IO, "no evaluation C headers on this machine (%s)",
                         "/usr/include");
    const corpus_doc *doc = &code[k % n_code];
    char *text = NULL, *chat;
    size_t len = 0;
    const char *turn_end;
    kvtc_status st = begin_context(r, out, &chat, &turn_end, err);
    if (st == KVTC_OK)
        st = corpus_doc_text(doc, &text, &len, err);
    char intro[256];
    snprintf(intro, sizeof intro, "Here is part of the C header %s from this machine:\n\n",
             doc->name);
    if (st == KVTC_OK)
        st = append_text(r->tok, intro, &out->ids, &out->n, err);
    /* each round starts somewhere else in the document (golden-ratio steps) */
    double frac = fmod(0.3 + 0.618034 * (double)(k / n_code), 1.0);
    size_t pos = (size_t)(frac * (double)len);
    while (pos > 0 && pos < len && text[pos - 1] != '\n')
        pos++;
    uint32_t head = out->n;
    struct candidate {
        char name[64], value[40];
        char of[64]; /* a field's struct; "" for a macro */
        uint32_t start, end;
        bool twice;
    } *cand = kvtc_calloc(4096, sizeof *cand);
    uint32_t n_cand = 0;
    char in_struct[64] = ""; /* the struct whose own level the lines are at */
    int braces = 0;          /* open since in_struct opened */
    if (!cand && st == KVTC_OK)
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    while (st == KVTC_OK && pos < len && out->n - head < o->code_tokens) {
        const char *line = text + pos, *nl = memchr(line, '\n', len - pos);
        size_t line_len = nl ? (size_t)(nl - line) : len - pos;
        char piece[1024], name[64], value[40], of[64] = "";
        if (line_len + 2 > sizeof piece) { /* an overlong line: skipped */
            pos += line_len + 1;
            continue;
        }
        memcpy(piece, line, line_len);
        piece[line_len] = '\n';
        piece[line_len + 1] = '\0';
        uint32_t at = out->n;
        st = append_text(r->tok, piece, &out->ids, &out->n, err);
        bool found = numeric_define(line, line_len, name, value);
        if (!found && in_struct[0] && braces == 1 && struct_field(line, line_len, name, value)) {
            snprintf(of, sizeof of, "%s", in_struct);
            found = true;
        }
        if (in_struct[0] && (braces += brace_change(line, line_len)) <= 0)
            in_struct[0] = '\0';
        else if (!in_struct[0] && struct_opens(line, line_len, in_struct))
            braces = 1;
        if (st == KVTC_OK && found) {
            uint32_t i = 0;
            while (i < n_cand && (strcmp(cand[i].name, name) || strcmp(cand[i].of, of)))
                i++;
            if (i < n_cand)
                cand[i].twice = true;
            else if (n_cand < 4096) {
                cand[n_cand] = (struct candidate){.start = at, .end = out->n};
                snprintf(cand[n_cand].name, 64, "%s", name);
                snprintf(cand[n_cand].value, 40, "%s", value);
                snprintf(cand[n_cand].of, 64, "%s", of);
                n_cand++;
            }
        }
        pos += line_len + 1;
    }
    /* questions at spread depths of the treated part */
    uint32_t usable = out->n > o->window ? out->n - o->window : 0, next = 0;
    for (uint32_t q = 0; st == KVTC_OK && q < o->code_questions; q++) {
        double depth = (q + (k + 0.5) / o->code_contexts) / o->code_questions;
        uint32_t want = head + (uint32_t)(depth * (usable > head ? usable - head : 0));
        while (next < n_cand && (cand[next].start < want || cand[next].twice))
            next++;
        if (next >= n_cand || cand[next].end > usable)
            break; /* no macro left in the treated part: fewer questions here */
        const struct candidate *c = &cand[next++];
        char ask[256], lead[192];
        if (c->of[0]) {
            snprintf(ask, sizeof ask,
                     "\n\nWhat is the type of the field %s of struct %s in the header above?",
                     c->name, c->of);
            snprintf(lead, sizeof lead, "The field %s of struct %s has the type ", c->name,
                     c->of);
        } else {
            snprintf(ask, sizeof ask,
                     "\n\nWhat is the value of the macro %s in the header above?", c->name);
            snprintf(lead, sizeof lead, "%s is defined as ", c->name);
        }
        out->fact_start[out->n_questions] = c->start;
        out->fact_end[out->n_questions] = c->end;
        st = make_question(r->tok, ask, turn_end, lead, c->value, c->value, true,
                           &out->q[out->n_questions], err);
        if (st == KVTC_OK)
            out->n_questions++;
    }
    kvtc_free(cand);
    kvtc_free(text);
    kvtc_free(chat);
    if (st != KVTC_OK)
        haystack_free(out);
    return st;
}

/* Whether fact f lies wholly in the treated tokens (not sinks or window). */
static bool fact_treated(const run_state *r, const haystack *h, uint32_t f)
{
    return h->fact_start[f] >= r->o->sinks && h->fact_end[f] + r->o->window <= h->n;
}

/* Greedy decoding after the answer's forced start: right when the first run
 * of digits the model writes is the number. The model may write it its own
 * way (" 41190", " **41190**", ": 41190."), which a token-by-token match of
 * one tokenization would count wrong. */
/* Whether text[0, len) starts with value[0, n), spaces ignored on both
 * sides, followed by something that ends it (a quote, a comma, a full stop:
 * not a letter, digit or underscore); *more when text ran out first. */
static bool starts_with_value(const char *text, size_t len, const char *value, size_t n,
                              bool *more)
{
    size_t i = 0, j = 0;
    for (;;) {
        while (i < len && text[i] == ' ')
            i++;
        while (j < n && value[j] == ' ')
            j++;
        if (j == n)
            break;
        if (i == len) {
            *more = true;
            return false;
        }
        if (text[i++] != value[j++])
            return false;
    }
    if (i == len)
        *more = true;
    return i < len && !ident_char(text[i]);
}

/* Whether the text answers value: as written, or without the parentheses
 * around a whole expression ("1U << 5" for "(1U << 5)"). */
static bool answers(const char *text, size_t len, const char *value, bool *more)
{
    size_t n = strlen(value);
    *more = false;
    if (starts_with_value(text, len, value, n, more))
        return true;
    bool outer = n > 2 && value[0] == '(' && value[n - 1] == ')';
    for (size_t d = 0, i = 0; outer && i < n; i++) { /* the first '(' closes at the end */
        d += value[i] == '(';
        d -= value[i] == ')';
        if (d == 0 && i + 1 < n)
            outer = false;
    }
    return outer && starts_with_value(text, len, value + 1, n - 2, more);
}

/* Greedy decoding after q's forced lead, at most max_steps tokens, each
 * handed to `want`, which says whether it needs the next. The answer's own
 * tokens are the guess: the lead's last token and the guess go through in one
 * forward with a row of logits each, and greedy decoding reads its choices
 * from those rows for as long as they are the guess (the same tokens in, the
 * same choices out, up to the rounding of a batch against single tokens);
 * from its first other choice on it decodes token by token. A right answer
 * thus costs one forward instead of one per token. `want` gets each token's
 * text. */
typedef bool (*answer_fn)(void *user, const char *bytes, size_t n); /* a token's text */

static kvtc_status greedy_answer(run_state *r, const question *q, uint32_t max_steps,
                                 answer_fn want, void *user, kvtc_error *err)
{
    uint32_t vocab = r->m->cfg.vocab_size, lead = q->n - q->n_answer;
    uint32_t base = session_n_past(r->s); /* the context */
    kvtc_status st =
        lead > 1 ? session_forward(r->s, q->ids, lead - 1, NULL, false, err) : KVTC_OK;
    if (st == KVTC_OK)
        st = session_forward(r->s, q->ids + lead - 1, q->n_answer + 1, r->logits, true, err);
    const float *row = r->logits; /* the choice after the lead */
    bool on_guess = true;
    for (uint32_t step = 0; st == KVTC_OK && step < max_steps; step++) {
        int32_t next = logits_argmax(row, vocab);
        char bytes[64];
        size_t k = tokenizer_token_bytes(r->tok, next, bytes, sizeof bytes);
        if (!want(user, bytes, k < sizeof bytes ? k : sizeof bytes) || step + 1 == max_steps)
            break;
        if (on_guess && step < q->n_answer && next == q->ids[lead + step]) {
            row = r->logits + (size_t)(step + 1) * vocab; /* fed already */
            continue;
        }
        if (on_guess) { /* back to the lead and the guess's tokens taken */
            session_truncate(r->s, base + lead + step);
            on_guess = false;
        }
        st = session_forward(r->s, &next, 1, r->logits, false, err);
        row = r->logits;
    }
    return st;
}

/* A text answer (a UUID, a macro's value): right when the text greedy
 * decoding writes is the value (see answers). */
typedef struct text_answer {
    const question *q;
    char text[128];
    size_t len;
    bool right;
} text_answer;

static bool text_wants(void *user, const char *bytes, size_t k)
{
    text_answer *a = user;
    for (size_t i = 0; i < k && a->len + 1 < sizeof a->text; i++)
        a->text[a->len++] = bytes[i];
    bool more;
    a->right = answers(a->text, a->len, a->q->value, &more);
    return more;
}

/* A number: right when the first run of digits greedy decoding writes is it. */
typedef struct number_answer {
    char digits[16];
    size_t n_digits;
} number_answer;

static bool number_wants(void *user, const char *bytes, size_t k)
{
    number_answer *a = user;
    for (size_t i = 0; i < k; i++) {
        if (bytes[i] >= '0' && bytes[i] <= '9') {
            if (a->n_digits + 1 == sizeof a->digits)
                return false;
            a->digits[a->n_digits++] = bytes[i];
        } else if (a->n_digits > 0) {
            return false;
        }
    }
    return true;
}

/* The number's or text's tokens plus a few for what the model writes around it. */
static kvtc_status answer_right(run_state *r, const question *q, bool *right, kvtc_error *err)
{
    uint32_t steps = q->n_answer + 4;
    if (q->text) {
        text_answer a = {.q = q};
        kvtc_status st = greedy_answer(r, q, steps, text_wants, &a, err);
        *right = a.right;
        return st;
    }
    number_answer a = {0};
    kvtc_status st = greedy_answer(r, q, steps, number_wants, &a, err);
    a.digits[a.n_digits] = '\0';
    *right = a.n_digits > 0 && strcmp(a.digits, q->value) == 0;
    return st;
}

/* Asks every question of h on the cache (imported once; each question is
 * cut off again before the next). The exact run records its outcomes; a
 * method's are paired with them. */
static kvtc_status ask(run_state *r, haystack *h, const kvtc_cache *cache, bool exact,
                       eval_tally *t, kvtc_error *err)
{
    kvtc_status st = session_import_cache(r->s, cache, err);
    uint32_t context = session_n_past(r->s);
    for (uint32_t i = 0; i < h->n_questions && st == KVTC_OK; i++) {
        question *q = &h->q[i];
        bool right = false;
        session_truncate(r->s, context);
        st = answer_right(r, q, &right, err);
        if (st != KVTC_OK)
            return st;
        t->correct += right;
        t->cases++;
        if (exact)
            q->exact_right = right;
        t->lost += q->exact_right && !right;
        t->gained += !q->exact_right && right;
    }
    return st;
}

typedef enum question_task { TASK_PASSKEY, TASK_KV, TASK_CODE } question_task;

/* The tally of a question task: the exact run's (method NULL) or a method's. */
static eval_tally *task_tally(run_state *r, question_task task, eval_method_result *method)
{
    if (task == TASK_KV)
        return method ? &method->kv : &r->res->exact_kv;
    if (task == TASK_CODE)
        return method ? &method->code : &r->res->exact_code;
    return method ? &method->all : &r->res->exact;
}

/* A question task: pass-key retrieval (prose given), key-value retrieval or
 * code questions. */
static kvtc_status run_retrieval(run_state *r, question_task task, const int32_t *prose,
                                 uint32_t n_prose, kvtc_error *err)
{
    kvtc_status st = KVTC_OK;
    bool kv = task != TASK_PASSKEY; /* no fact errors: those are the pass keys' */
    uint32_t n_contexts = task == TASK_KV     ? r->o->kv_contexts
                          : task == TASK_CODE ? r->o->code_contexts
                                              : r->o->n_haystacks;
    for (uint32_t h = 0; h < n_contexts && st == KVTC_OK; h++) {
        if (already_done(r))
            continue;
        haystack hs;
        kvtc_cache *exact = NULL;
        st = task == TASK_KV     ? build_kv_context(r, h, &hs, err)
             : task == TASK_CODE ? build_code_context(r, h, &hs, err)
                                 : build_haystack(r, prose, n_prose, h, &hs, err);
        if (st != KVTC_OK)
            break;
        st = read_context(r, hs.ids, hs.n, &exact, err);
        if (st == KVTC_OK)
            st = ask(r, &hs, exact, true, task_tally(r, task, NULL), err);
        if (st == KVTC_OK && r->cal && !kv)
            for (uint32_t f = 0; f < hs.n_questions && st == KVTC_OK; f++)
                if (fact_treated(r, &hs, f))
                    st = add_energy(r->cal, exact, hs.fact_start[f], hs.fact_end[f],
                                    r->res->fact_energy, r->res->fact_outside_basis, err);
        if (st == KVTC_OK) {
            *(task == TASK_KV     ? &r->res->kv_contexts
              : task == TASK_CODE ? &r->res->code_contexts
                                  : &r->res->haystacks) += 1;
            progress_step(r);
        }
        for (uint32_t i = 0; i < r->n_methods && st == KVTC_OK; i++) {
            kvtc_cache *treated = NULL;
            st = treat(r, i, exact, &treated, err);
            eval_method_result *mr = &r->res->methods[i];
            for (uint32_t f = 0; f < hs.n_questions && st == KVTC_OK && !kv; f++)
                if (!eval_method_evicts(mr->method.id) && fact_treated(r, &hs, f))
                    st = add_sq_error(exact, treated, hs.fact_start[f], hs.fact_end[f],
                                      mr->fact_sq_error, err);
            if (st == KVTC_OK)
                st = ask(r, &hs, treated, false, task_tally(r, task, mr), err);
            kvtc_cache_free(treated);
            if (st == KVTC_OK)
                progress_step(r);
        }
        kvtc_cache_free(exact);
        haystack_free(&hs);
        if (st == KVTC_OK)
            st = context_done(r, err);
    }
    return st;
}

/* ---- the run ----------------------------------------------------------------------------- */

/* Longest question suffix + answer any haystack asks (a generous bound). */
#define QUESTION_TOKENS 128u

kvtc_status eval_run(const model *m, const tokenizer *tok, const kvtc_calibration *cal,
                     const eval_method *methods, uint32_t n_methods, const eval_options *o,
                     eval_results *out, kvtc_error *err)
{
    memset(out, 0, sizeof *out);
    if (o->facts_per_haystack < 1 || o->facts_per_haystack > N_FACT_NAMES)
        return kvtc_fail(err, KVTC_E_INVALID, "facts per haystack must be 1..%zu",
                         N_FACT_NAMES);
    if ((o->kv && (o->kv_questions < 1 || o->kv_questions > N_FACT_NAMES || !o->kv_contexts ||
                   o->kv_tokens <= o->window)) ||
        (o->code && (o->code_questions < 1 || o->code_questions > N_FACT_NAMES ||
                     !o->code_contexts || o->code_tokens <= o->window)))
        return kvtc_fail(err, KVTC_E_INVALID,
                         "question tasks need 1..%zu questions and contexts longer than "
                         "the window (%u tokens)",
                         N_FACT_NAMES, o->window);
    if ((o->nll &&
         (o->context_tokens <= (uint64_t)o->sinks + o->window || !o->continuation_tokens)) ||
        (o->passkey && o->haystack_tokens <= o->window))
        return kvtc_fail(err, KVTC_E_INVALID,
                         "contexts must be longer than sinks + window (%u + %u tokens)", o->sinks,
                         o->window);
    out->methods = kvtc_calloc(n_methods ? n_methods : 1, sizeof *out->methods);
    if (!out->methods)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    out->n_methods = n_methods;
    out->exact_bit_identical = true;
    for (uint32_t i = 0; i < n_methods; i++)
        out->methods[i].method = methods[i];

    run_state r = {.m = m, .tok = tok, .cal = cal, .methods = methods, .n_methods = n_methods,
                   .o = o, .res = out};
    char key[8192];
    if (o->journal) {
        eval_journal_key(o, methods, n_methods, o->journal_inputs ? o->journal_inputs : "", key,
                         sizeof key);
        r.key = key;
        kvtc_status st = eval_journal_load(o->journal, key, out, &r.skip, &out->journal_other_run,
                                           err);
        if (st != KVTC_OK) {
            eval_results_free(out);
            return st;
        }
        out->resumed_contexts = r.skip;
        r.seconds_before = out->seconds;
    }
    r.t0 = now_s();
    corpus_chunks chunks = {0};
    int32_t *prose = NULL;
    uint32_t n_prose = 0;
    kvtc_status st = KVTC_OK;
    if (o->nll)
        st = corpus_make_chunks(tok, CORPUS_EVALUATION, o->context_tokens + o->continuation_tokens + 1,
                                o->n_contexts, false, &chunks, err);
    if (st == KVTC_OK && o->passkey)
        st = prose_tokens(tok, &prose, &n_prose, err);
    /* the template head and facts come on top of the haystack's prose */
    uint32_t max_context = o->passkey ? o->haystack_tokens + 128 * (o->facts_per_haystack + 1) : 0;
    /* the instruction and one pair past kv_tokens */
    if (o->kv && o->kv_tokens + 256 > max_context)
        max_context = o->kv_tokens + 256;
    /* the intro and one line (at most 1024 bytes) past code_tokens */
    if (o->code && o->code_tokens + 1100 > max_context)
        max_context = o->code_tokens + 1100;
    if (o->nll && o->context_tokens > max_context)
        max_context = o->context_tokens;
    uint32_t capacity = max_context + (o->continuation_tokens > QUESTION_TOKENS
                                           ? o->continuation_tokens
                                           : QUESTION_TOKENS);
    uint32_t rows = capacity - max_context;
    if (st == KVTC_OK)
        st = session_create(m, capacity, o->n_threads, &r.s, err);
    if (st == KVTC_OK && needs_attention(&r)) {
        size_t heads = (size_t)m->cfg.n_layer * m->cfg.n_kv_head;
        if ((!(r.attention = kvtc_malloc_array(heads, (size_t)max_context * sizeof(float))) ||
             !(r.last_attention = kvtc_malloc_array(heads, (size_t)max_context * sizeof(float)))))
            st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for attention scores");
    }
    if (st == KVTC_OK &&
        !(r.logits = kvtc_malloc_array((size_t)rows * m->cfg.vocab_size, sizeof(float))))
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for logits");
    r.total = (uint64_t)(chunks.n_chunks + (o->passkey ? o->n_haystacks : 0) +
                         (o->kv ? o->kv_contexts : 0) + (o->code ? o->code_contexts : 0)) *
              (1 + n_methods);
    if (st == KVTC_OK && o->nll)
        st = run_continuation(&r, &chunks, err);
    if (st == KVTC_OK && o->passkey)
        st = run_retrieval(&r, TASK_PASSKEY, prose, n_prose, err);
    if (st == KVTC_OK && o->kv)
        st = run_retrieval(&r, TASK_KV, NULL, 0, err);
    if (st == KVTC_OK && o->code)
        st = run_retrieval(&r, TASK_CODE, NULL, 0, err);
    out->seconds = r.seconds_before + now_s() - r.t0;
    kvtc_free(r.logits);
    kvtc_free(r.attention);
    kvtc_free(r.last_attention);
    session_free(r.s);
    kvtc_free(prose);
    corpus_chunks_free(&chunks);
    if (st != KVTC_OK)
        eval_results_free(out);
    return st;
}
