/* Run-time choice of the CPU kernels, and the packing of operands for the
 * bf16 tile product (kernels.h). */
#include "kernels.h"

#include "kvtc_internal.h"

#include <pthread.h>
#include <stdatomic.h>

#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#endif

static kvtc_kernel_level detected = KVTC_KERNELS_PORTABLE;
static atomic_int limit = KVTC_KERNELS_AMX_BF16;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

static void detect(void)
{
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && __GNUC__ >= 11
    __builtin_cpu_init();
    /* Linux hands out the 8 KB tile state only to a process that asks. */
    if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
        syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0)
        detected = KVTC_KERNELS_AMX_BF16;
#endif
}

kvtc_kernel_level kvtc_kernels_level(void)
{
    pthread_once(&detect_once, detect);
    int cap = atomic_load(&limit);
    return (int)detected < cap ? detected : (kvtc_kernel_level)cap;
}

void kvtc_kernels_limit(kvtc_kernel_level max) { atomic_store(&limit, (int)max); }

const char *kvtc_kernels_name(kvtc_kernel_level level)
{
    return level == KVTC_KERNELS_AMX_BF16 ? "amx-bf16" : "sgemm";
}

uint32_t kvtc_tile_depth(uint32_t k) { return (k + 31u) & ~31u; }

/* x = hi + lo + (about 2^-16 x): hi rounded to bf16, lo the bf16 of the rest. */
static void split_bf16(float x, uint16_t *hi, uint16_t *lo)
{
    *hi = kvtc_f32_to_bf16(x);
    *lo = kvtc_f32_to_bf16(x - kvtc_bf16_to_f32(*hi));
}

/* Part t of x[i] in the k order of a packed row: A takes [hi | lo | hi], B
 * [hi | hi | lo], so that their product is hi*hi + lo*hi + hi*lo (with one
 * term: hi*hi). Zero past k. */
static uint16_t part(const float *x, uint32_t k, uint32_t i, uint32_t t, bool is_a)
{
    if (i >= k)
        return 0;
    uint16_t hi, lo;
    split_bf16(x[i], &hi, &lo);
    return t == (is_a ? 1u : 2u) ? lo : hi;
}

void kvtc_tile_pack_a(const float *src, size_t lda, uint32_t rows, uint32_t k, uint32_t terms,
                      uint16_t *dst)
{
    uint32_t kp = kvtc_tile_depth(k);
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t t = 0; t < terms; t++)
            for (uint32_t i = 0; i < kp; i++)
                dst[((size_t)r * terms + t) * kp + i] = part(src + r * lda, k, i, t, true);
}

void kvtc_tile_pack_b(const float *src, size_t ldb, uint32_t n, uint32_t k, uint32_t terms,
                      uint16_t *dst)
{
    uint32_t kp = kvtc_tile_depth(k);
    size_t depth = (size_t)terms * kp;
    for (uint32_t j = 0; j < n; j++) {
        /* Tile j/16 holds depth/2 rows of 16 pairs: (k, k+1) of its 16 columns. */
        uint16_t *tile = dst + (size_t)(j / 16) * 16 * depth + (j % 16) * 2;
        for (uint32_t t = 0; t < terms; t++)
            for (uint32_t i = 0; i < kp; i++) {
                size_t at = (size_t)t * kp + i;
                tile[(at / 2) * 32 + at % 2] = part(src + j * ldb, k, i, t, false);
            }
    }
}
