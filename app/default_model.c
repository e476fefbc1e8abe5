/* Where the default model lives, fetched on first use (default_model.h). */
#include "default_model.h"
#include "fetch.h"
#include "kvtc_internal.h"

#include <limits.h>
#include <stdio.h>

kvtc_status default_model_path(char *buf, size_t cap, bool fetch, kvtc_error *err)
{
    return model_resolve(NULL, buf, cap, fetch, err);
}

kvtc_status model_resolve(const char *name_or_path, char *buf, size_t cap, bool fetch,
                          kvtc_error *err)
{
    const model_entry *m = model_find(name_or_path ? name_or_path : DEFAULT_MODEL_NAME);
    if (m) {
        fetch_options opt = {.download = fetch, .verify = false};
        return fetch_model(m, &opt, buf, cap, err);
    }
    if (!name_or_path)
        return kvtc_fail(err, KVTC_E_INVALID, "no model named %s", DEFAULT_MODEL_NAME);
    if ((size_t)snprintf(buf, cap, "%s", name_or_path) >= cap)
        return kvtc_fail(err, KVTC_E_INVALID, "%.64s...: path too long", name_or_path);
    return KVTC_OK;
}

kvtc_status model_open_or_default(const char *name_or_path, model **out, tokenizer **tok,
                                  kvtc_error *err)
{
    char path[PATH_MAX];
    kvtc_status st = model_resolve(name_or_path, path, sizeof path, true, err);
    return st != KVTC_OK ? st : model_open(path, out, tok, err);
}
