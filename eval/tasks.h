/* The harness's tasks. Protocol, the same for every method: the model reads a
 * context; the context's cache, except its sinks and window, goes through the
 * method; the model then continues on top of the restored cache.
 *
 * - continuation: contexts of real English prose and real source code from the
 *   evaluation corpus (corpus.h, disjoint from the calibration text); the model
 *   scores the next tokens of the text on the restored cache. Reports the mean
 *   NLL per token, exact and per method, and how often the method's greedy
 *   top-1 token equals the exact run's.
 * - retrieval: secret numbers hidden at spread depths in evaluation prose, in
 *   one user turn of the Instruct chat template; each question is appended on
 *   top of the restored cache and the answer is scored by teacher forcing: a
 *   case is right when every digit is the model's greedy (top-1) choice, i.e.
 *   exactly when greedy decoding would write the number. Several facts share a
 *   haystack, so its prefill serves several cases.
 * - key-value retrieval (the KVTC paper's, after "Lost in the Middle"): a JSON
 *   object of random UUID keys and values in one user turn; the question asks
 *   for the value of one key (keys at spread positions), and a case is right
 *   when greedy decoding writes that UUID exactly.
 * - code questions: a real C header of the machine (evaluation corpus) as the
 *   context, questions on the numeric macros it defines ("What is the value
 *   of the macro X?") and on the types of its structs' plain fields ("What is
 *   the type of the field F of struct S?"), right when greedy decoding writes
 *   the value or type exactly as the source does. */
#ifndef KVTC_EVAL_TASKS_H
#define KVTC_EVAL_TASKS_H

#include "kvtc.h"
#include "methods.h"
#include "model.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct eval_options {
    bool nll, passkey, kv, code;   /* which tasks run */
    uint32_t n_contexts;           /* continuation contexts; prose and code alternate */
    uint32_t context_tokens;       /* tokens each context holds (BOS included) */
    uint32_t continuation_tokens;  /* tokens scored after it */
    uint32_t n_haystacks;          /* retrieval haystacks */
    uint32_t facts_per_haystack;   /* questions per haystack (1 = a single pass key) */
    uint32_t haystack_tokens;      /* tokens of the haystack's user turn before the question */
    uint32_t kv_contexts;          /* key-value retrieval: JSON objects */
    uint32_t kv_tokens;            /* tokens of each object (whole pairs, at least this) */
    uint32_t kv_questions;         /* keys asked per object, 1..10 */
    uint32_t code_contexts;        /* code questions: header excerpts */
    uint32_t code_tokens;          /* tokens of each excerpt (whole lines, at least this) */
    uint32_t code_questions;       /* macros and fields asked per excerpt, 1..10 */
    uint32_t sinks, window;        /* never treated (the calibration's) */
    uint32_t n_threads;
    kvtc_progress_fn progress;     /* stage "eval": done / total work items */
    void *progress_user;
    /* When set, a journal (journal.h) kept at this path: the run resumes
     * after the contexts it records and rewrites it after each context.
     * journal_inputs names the model and calibration for its key. */
    const char *journal, *journal_inputs;
} eval_options;

/* The defaults of `kvtc eval` (a few minutes on 2 cores). */
void eval_options_default(eval_options *o);

typedef struct eval_tally {
    double nll_sum;      /* over scored tokens */
    uint64_t top1_agree; /* tokens whose greedy choice equals the exact run's */
    uint64_t tokens;
    uint32_t correct, cases; /* retrieval */
    uint32_t lost, gained;   /* cases the exact run got right and this one wrong, and the reverse */
} eval_tally;

enum { EVAL_PROSE = 0, EVAL_CODE = 1 };

typedef struct eval_method_result {
    eval_method method;
    eval_tally all, genre[2]; /* genre: continuation tokens by context genre */
    eval_tally kv;            /* key-value retrieval */
    eval_tally code;          /* code questions */
    uint64_t fp16_bytes, stored_bytes; /* summed over every treated cache of both tasks */
    uint32_t min_kept;                 /* h2o: fewest tokens kept per head in one cache */
    /* squared error of the restored treated tokens per kind (keys before
     * RoPE), over every treated cache; not measured for h2o (tokens removed) */
    double sq_error[2];
    double fact_sq_error[2];           /* the same over the retrieval facts' tokens */
    double treat_seconds;              /* time spent in eval_method_apply */
} eval_method_result;

typedef struct eval_results {
    eval_tally exact, exact_genre[2], exact_kv, exact_code;
    uint32_t contexts, haystacks, kv_contexts, code_contexts;
    uint32_t n_methods;
    eval_method_result *methods; /* [n_methods] */
    bool exact_bit_identical;    /* "exact" reproduced the uninterrupted run's logits */
    /* Over the treated tokens of every context, per kind: energy around the
     * calibration's mean, and the part of it outside the calibration's basis
     * (what no plan can restore). Relative errors divide by energy. */
    double energy[2], outside_basis[2];
    /* The same over the tokens of the retrieval facts (the sentences that hold
     * the numbers asked for): how well the basis and each method keep what
     * retrieval needs, against the average token. */
    double fact_energy[2], fact_outside_basis[2];
    double seconds;              /* the runs that made these results, all together */
    uint32_t resumed_contexts;   /* contexts taken from the journal, not run again */
    bool journal_other_run;      /* the journal found was another run's: started over */
} eval_results;

/* Runs the enabled tasks for every method; the exact runs and prefills are
 * shared by all methods. cal is needed by kvtc. */
kvtc_status eval_run(const model *m, const tokenizer *tok, const kvtc_calibration *cal,
                     const eval_method *methods, uint32_t n_methods, const eval_options *o,
                     eval_results *out, kvtc_error *err);
void eval_results_free(eval_results *r);

/* Derived numbers (NaN when nothing was measured). */
double eval_tally_nll(const eval_tally *t);
double eval_tally_top1(const eval_tally *t);
double eval_tally_accuracy(const eval_tally *t);
double eval_method_ratio(const eval_method_result *r);
/* sq_error / energy of a kind (NaN when not measured). */
double eval_method_rel_error(const eval_results *res, const eval_method_result *r, kvtc_kind k);
/* fact_sq_error / fact_energy of a kind (NaN when not measured). */
double eval_method_fact_rel_error(const eval_results *res, const eval_method_result *r,
                                  kvtc_kind k);

#endif /* KVTC_EVAL_TASKS_H */
