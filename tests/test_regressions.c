/* Replays every input in tests/data/regress/ (inputs that once crashed a fuzz
 * target, or broke one of its invariants) through every fuzz target body
 * (tests/support/fuzz_common.c, the very code the fuzzers run). The folder
 * must exist and hold inputs: an empty corpus replays nothing and fails. Run
 * under ASan/UBSan by scripts/test-sanitizers.sh. */
#include "fuzz_common.h"
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the files in dir, not those starting with a dot (NULL if
 * it cannot be read). */
static char **list_files(const char *dir, size_t *n)
{
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    size_t cap = 16;
    char **names = malloc(cap * sizeof *names);
    struct dirent *e;
    while (names && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (*n == cap) {
            char **grown = realloc(names, 2 * cap * sizeof *names);
            if (!CHECK(grown != NULL))
                break;
            names = grown;
            cap *= 2;
        }
        if (CHECK((names[*n] = strdup(e->d_name)) != NULL))
            ++*n;
    }
    closedir(d);
    if (*n)
        qsort(names, *n, sizeof *names, compare_names);
    return names;
}

int main(void)
{
    char dir[4096];
    if (!CHECK(test_source_path(dir, sizeof dir, "tests/data/regress")))
        return test_summary("test_regressions");

    kvtc_error err;
    kvtc_calibration *cal = NULL;
    if (!CHECK_OK(fuzz_make_calibration(&cal, &err), &err))
        return test_summary("test_regressions");

    size_t n = 0;
    char **names = list_files(dir, &n);
    if (CHECK_MSG(names != NULL, "cannot read the regression corpus %s", dir))
        CHECK_MSG(n > 0, "the regression corpus %s holds no inputs", dir);
    size_t n_failed = 0;
    for (size_t i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        void *buf = NULL;
        size_t len = 0;
        if (CHECK_OK(kvtc_read_file(path, &buf, &len, &err), &err)) {
            int bad = 0;
            bad |= fuzz_one_kvtc(cal, buf, len);
            bad |= fuzz_one_kvtcal(buf, len);
            bad |= fuzz_one_safetensors(buf, len);
            bad |= fuzz_one_gguf(buf, len);
            bad |= fuzz_one_llama2c(buf, len);
            bad |= fuzz_one_compress(cal, buf, len);
            bad |= fuzz_one_llama_state(cal, buf, len);
            if (!CHECK_MSG(!bad, "%s breaks a fuzz invariant (see above)", names[i]))
                n_failed++;
        }
        kvtc_buffer_free(buf);
        free(names[i]);
    }
    free(names);
    kvtc_calibration_free(cal);
    printf("regressions: %zu files x 7 targets, %zu failures\n", n, n_failed);
    return test_summary("test_regressions");
}
