/* Where the default model lives, fetched on first use (default_model.h). */
#include "default_model.h"
#include "fetch.h"
#include "kvtc_internal.h"

#include <limits.h>

kvtc_status default_model_path(char *buf, size_t cap, bool fetch, kvtc_error *err)
{
    const model_entry *m = model_find(DEFAULT_MODEL_NAME);
    if (!m)
        return kvtc_fail(err, KVTC_E_INVALID, "no model named %s", DEFAULT_MODEL_NAME);
    fetch_options opt = {.download = fetch, .verify = false};
    return fetch_model(m, &opt, buf, cap, err);
}

kvtc_status model_open_or_default(const char *path, model **out, tokenizer **tok,
                                  kvtc_error *err)
{
    char default_path[PATH_MAX];
    if (!path) {
        kvtc_status st = default_model_path(default_path, sizeof default_path, true, err);
        if (st != KVTC_OK)
            return st;
        path = default_path;
    }
    return model_open(path, out, tok, err);
}
