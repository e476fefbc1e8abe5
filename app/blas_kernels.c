/* Debian 12's OpenBLAS (0.3.21, built for every x86 kernel set) picks its kernels
 * from the CPU's family and model numbers. On a CPU it does not know, such as a
 * recent Xeon or a virtual CPU that hides its model, it falls back to Prescott
 * (SSE3), 3-5x slower than the AVX2 or AVX-512 kernels the CPU can run: the
 * first calibration of the default model then takes minutes longer. OpenBLAS
 * reads OPENBLAS_CORETYPE only as it loads, before main, so the tool sets it and
 * runs itself again. The library never does this: it leaves the process alone. */
#include "blas_kernels.h"

#include <cblas.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

/* The fastest OpenBLAS kernel set this CPU (and its OS) can run, or NULL. */
static const char *supported_kernels(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#endif
    return NULL;
}

void cli_choose_blas_kernels(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE")) /* the user's choice, or this is the second run */
        return;
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "Prescott") != 0)
        return;
    const char *kernels = supported_kernels();
    if (!kernels || setenv("OPENBLAS_CORETYPE", kernels, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* not re-executed: keep the environment as it was */
}
