/* Replays every input in tests/data/regress/ (inputs that once crashed a fuzz
 * target, or broke one of its invariants) through every parser, exactly as the
 * fuzz targets do. Run under ASan/UBSan by scripts/test-sanitizers.sh. */
#include "testutil.h"

/* The fuzz target bodies, compiled into this test: the top-level build links
 * tests with tests/support only, and the replay must run the same code. */
#include "../fuzz/fuzz_common.c"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the regular files in dir (NULL if it cannot be read). */
static char **list_files(const char *dir, size_t *n)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char **names = NULL;
    size_t cap = 0;
    *n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown)
                break;
            names = grown;
        }
        names[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    if (*n)
        qsort(names, *n, sizeof *names, compare_names);
    return names;
}

int main(void)
{
    const char *src = getenv("KVTC_SOURCE_DIR");
    if (!src)
        test_skip("test_regressions", "KVTC_SOURCE_DIR is not set (run it through ctest)");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/regress", src);

    kvtc_error err;
    kvtc_calibration *cal = NULL;
    if (!CHECK_OK(fuzz_make_calibration(&cal, &err), &err))
        return test_summary("test_regressions");

    size_t n = 0;
    char **names = list_files(dir, &n);
    size_t n_failed = 0;
    for (size_t i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        void *buf = NULL;
        size_t len = 0;
        if (!CHECK_OK(kvtc_read_file(path, &buf, &len, &err), &err))
            continue;
        int bad = 0;
        bad |= fuzz_one_kvtc(cal, buf, len);
        bad |= fuzz_one_kvtcal(buf, len);
        bad |= fuzz_one_safetensors(buf, len);
        bad |= fuzz_one_gguf(buf, len);
        bad |= fuzz_one_llama2c(buf, len);
        if (!CHECK_MSG(!bad, "%s breaks a parser invariant (see above)", names[i]))
            n_failed++;
        kvtc_buffer_free(buf);
        free(names[i]);
    }
    free(names);
    kvtc_calibration_free(cal);
    printf("regressions: %zu files x 5 parsers, %zu failures\n", n, n_failed);
    return test_summary("test_regressions");
}
