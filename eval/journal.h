/* A long evaluation's progress on disk, so that a run interrupted (killed, the
 * machine rebooted) resumes after its last finished context instead of from
 * the start. The journal holds the results so far and how many contexts they
 * cover, under a key naming everything the results depend on (tasks, sizes,
 * methods, model, calibration); a journal under another key is not used.
 * Rewritten atomically after each context, checksummed (`kvtc eval --journal`). */
#ifndef KVTC_EVAL_JOURNAL_H
#define KVTC_EVAL_JOURNAL_H

#include "kvtc.h"
#include "tasks.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The key of a run: the options and methods that change its results (not the
 * thread count), and `inputs`, the caller's identity of model and calibration. */
void eval_journal_key(const eval_options *o, const eval_method *methods, uint32_t n_methods,
                      const char *inputs, char *buf, size_t cap);

/* Writes res and the count of finished contexts under key, atomically. */
kvtc_status eval_journal_save(const char *path, const char *key, const eval_results *res,
                              uint32_t contexts, kvtc_error *err);

/* Reads a journal into res, whose methods eval_run has set up. *contexts = 0
 * and res untouched when there is no file, or when its key is another run's
 * (*other_run true). A damaged or unreadable journal fails, naming the file. */
kvtc_status eval_journal_load(const char *path, const char *key, eval_results *res,
                              uint32_t *contexts, bool *other_run, kvtc_error *err);

#endif /* KVTC_EVAL_JOURNAL_H */
