/* Run-time choice of the CPU kernels, and the packing of operands for the
 * bf16 tile product (kernels.h). */
#include "kernels.h"

#include "kvtc_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#endif

static kvtc_kernel_level detected = KVTC_KERNELS_PORTABLE;
static atomic_int limit = KVTC_KERNELS_AMX_BF16;
/* detected capped by limit, -1 until first asked: one load on the hot path */
static atomic_int level = -1;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

/* From cpuid itself (the compilers' __builtin_cpu_supports do not all know
 * the tile features): the instructions, and the OS saving the AVX state. */
static void detect(void)
{
#if defined(__x86_64__)
    unsigned a, b, c, d, b7 = 0, d7 = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    bool f16c = c & (1u << 29), osxsave = c & (1u << 27);
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        b7 = b;
        d7 = d;
    }
    unsigned xcr0 = 0, xcr0_hi = 0;
    if (osxsave)
        __asm__("xgetbv" : "=a"(xcr0), "=d"(xcr0_hi) : "c"(0));
    if (f16c && (b7 & (1u << 5)) && (xcr0 & 6u) == 6u)
        detected = KVTC_KERNELS_AVX2;
    /* AVX512F and AVX512-BF16 (leaf 7, sub-leaf 1), the OS saving the
     * opmask and upper ZMM state too */
    unsigned a71 = 0;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d))
        a71 = a;
    if (KVTC_HAVE_TILE_INTRINSICS && detected == KVTC_KERNELS_AVX2 &&
        (b7 & (1u << 16)) && (a71 & (1u << 5)) && (xcr0 & 0xe6u) == 0xe6u)
        detected = KVTC_KERNELS_AVX512_BF16;
#if defined(__linux__) && KVTC_HAVE_TILE_INTRINSICS
    /* AMX-TILE and AMX-BF16; Linux hands out the 8 KB tile state only to a
     * process that asks. */
    if (detected >= KVTC_KERNELS_AVX2 && (d7 & (1u << 24)) && (d7 & (1u << 22)) &&
        syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0)
        detected = KVTC_KERNELS_AMX_BF16;
#endif
#endif
}

kvtc_kernel_level kvtc_kernels_level(void)
{
    int l = atomic_load_explicit(&level, memory_order_relaxed);
    if (l >= 0)
        return (kvtc_kernel_level)l;
    pthread_once(&detect_once, detect);
    int cap = atomic_load(&limit);
    l = (int)detected < cap ? (int)detected : cap;
    atomic_store(&level, l);
    return (kvtc_kernel_level)l;
}

void kvtc_kernels_limit(kvtc_kernel_level max)
{
    atomic_store(&limit, (int)max);
    atomic_store(&level, -1);
}

const char *kvtc_kernels_name(kvtc_kernel_level l)
{
    static const char *names[] = {"portable", "avx2", "avx512-bf16", "amx-bf16"};
    return (unsigned)l < 4 ? names[l] : "?";
}

void kvtc_tile_gemm(const uint16_t *a, uint32_t m, uint32_t kp, const uint16_t *b, uint32_t kp_b,
                    uint32_t n, uint32_t terms, const float *bias, float *c, size_t ldc)
{
#if KVTC_HAVE_TILE_INTRINSICS
    if (kvtc_kernels_level() == KVTC_KERNELS_AMX_BF16)
        kvtc_tile_gemm_amx(a, m, kp, b, kp_b, n, terms, bias, c, ldc);
    else
        kvtc_tile_gemm_avx512(a, m, kp, b, kp_b, n, terms, bias, c, ldc);
#else
    /* never reached: without the intrinsics the level stays below these */
    (void)a, (void)m, (void)kp, (void)b, (void)kp_b, (void)n, (void)terms, (void)bias, (void)c,
        (void)ldc;
#endif
}

uint32_t kvtc_tile_depth(uint32_t k) { return (k + 31u) & ~31u; }

/* The bf16 parts of x[0..k): hi = bf16(x), lo = bf16(x - hi) (x = hi + lo
 * within about 2^-16 x), through the vectorized array conversions, in chunks. */
enum { SPLIT_CHUNK = 256 };

static void split_chunk(const float *x, uint32_t m, uint16_t *hi, uint16_t *lo)
{
    float back[SPLIT_CHUNK];
    kvtc_from_f32(KVTC_BF16, x, hi, m);
    if (!lo)
        return;
    kvtc_to_f32(KVTC_BF16, hi, back, m);
    for (uint32_t i = 0; i < m; i++)
        back[i] = x[i] - back[i];
    kvtc_from_f32(KVTC_BF16, back, lo, m);
}

/* A row takes the parts along k as [hi | lo | hi], B as [hi | hi | lo], so
 * that their product is hi*hi + lo*hi + hi*lo (with one term: hi*hi). Zero
 * past k. */
void kvtc_tile_pack_a(const float *src, size_t lda, uint32_t rows, uint32_t k, uint32_t terms,
                      uint16_t *dst)
{
    uint32_t kp = kvtc_tile_depth(k);
    uint16_t lo[SPLIT_CHUNK];
    for (uint32_t r = 0; r < rows; r++) {
        uint16_t *row = dst + (size_t)r * terms * kp;
        for (uint32_t i = 0; i < k; i += SPLIT_CHUNK) {
            uint32_t m = k - i < SPLIT_CHUNK ? k - i : SPLIT_CHUNK;
            split_chunk(src + r * lda + i, m, row + i, terms == 3 ? lo : NULL);
            if (terms == 3) {
                memcpy(row + kp + i, lo, m * sizeof *lo);
                memcpy(row + 2 * kp + i, row + i, m * sizeof *lo);
            }
        }
        for (uint32_t t = 0; t < terms; t++)
            memset(row + (size_t)t * kp + k, 0, (kp - k) * sizeof *row);
    }
}

void kvtc_tile_pack_b(const float *src, size_t ldb, uint32_t n, uint32_t k, uint32_t terms,
                      uint16_t *dst)
{
    uint32_t kp = kvtc_tile_depth(k);
    size_t depth = (size_t)terms * kp;
    uint16_t hi[SPLIT_CHUNK], lo[SPLIT_CHUNK];
    memset(dst, 0, (size_t)n * depth * sizeof *dst);
    for (uint32_t j = 0; j < n; j++) {
        /* Tile j/16 holds depth/2 rows of 16 pairs: (k, k+1) of its 16 columns. */
        uint16_t *tile = dst + (size_t)(j / 16) * 16 * depth + (j % 16) * 2;
        for (uint32_t i = 0; i < k; i += SPLIT_CHUNK) {
            uint32_t m = k - i < SPLIT_CHUNK ? k - i : SPLIT_CHUNK;
            split_chunk(src + j * ldb + i, m, hi, terms == 3 ? lo : NULL);
            for (uint32_t t = 0; t < terms; t++)
                for (uint32_t l = 0; l < m; l++) {
                    size_t at = (size_t)t * kp + i + l;
                    tile[(at / 2) * 32 + at % 2] = t == 2 ? lo[l] : hi[l];
                }
        }
    }
}
