/* The engine's weight kernels (engine/weights.h) against dequantize-then-dot:
 * for every block type the engine keeps, rows of random blocks of odd
 * lengths, the fused kernel this CPU runs and the portable C form each within
 * f32 rounding of the double-precision dot of gguf_dequant.c's values. Then
 * the matrix-vector product of a matrix of three parts of different types on
 * 1 and 3 threads (bit-identical), with and without accumulation, and the
 * batch product on dequantized tiles against it. */
#include "gguf.h"
#include "kernels.h"
#include "kvtc_internal.h"
#include "testutil.h"
#include "weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "test_weights"
#define REL_TOL 1e-5 /* of sum |w x|: f32 rounding of sums of a few thousand terms */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next_u32() % 1000000) / 1e6f; }

static void put_f16(uint8_t *p, float v)
{
    uint16_t h = kvtc_f32_to_f16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

typedef struct block_type {
    uint32_t type;
    const char *name;
    int f16_at[2]; /* offsets of the block's f16 scale and min (-1: none) */
} block_type;

static const block_type types[] = {
    {KVTC_GGML_Q4_0, "Q4_0", {0, -1}},  {KVTC_GGML_Q4_1, "Q4_1", {0, 2}},
    {KVTC_GGML_Q5_0, "Q5_0", {0, -1}},  {KVTC_GGML_Q5_1, "Q5_1", {0, 2}},
    {KVTC_GGML_Q8_0, "Q8_0", {0, -1}},  {KVTC_GGML_Q4_K, "Q4_K", {0, 2}},
    {KVTC_GGML_Q5_K, "Q5_K", {0, 2}},   {KVTC_GGML_Q6_K, "Q6_K", {208, -1}},
    {KVTC_GGML_F32, "F32", {-1, -1}},
};

/* n_blocks random blocks (quants and scales random, f16 scales finite and of
 * either sign) or, for F32, n_blocks random floats. */
static void random_row(const block_type *t, uint8_t *row, uint32_t n_blocks)
{
    uint32_t elems, bytes;
    kvtc_ggml_type_block(t->type, &elems, &bytes);
    if (t->type == KVTC_GGML_F32) {
        for (uint32_t i = 0; i < n_blocks; i++) {
            float v = uniform(-2, 2);
            memcpy(row + 4 * i, &v, 4);
        }
        return;
    }
    for (uint32_t i = 0; i < n_blocks * bytes; i++)
        row[i] = (uint8_t)next_u32();
    for (uint32_t b = 0; b < n_blocks; b++)
        for (int k = 0; k < 2; k++)
            if (t->f16_at[k] >= 0)
                put_f16(row + b * bytes + t->f16_at[k], uniform(-0.05f, 0.05f));
}

/* The reference: gguf_dequant.c's values, dot in double; *mag = sum |w x|. */
static double reference_dot(uint32_t type, const uint8_t *row, const float *x, uint32_t cols,
                            double *mag)
{
    float *w = malloc(cols * sizeof(float));
    kvtc_error err;
    double s = 0;
    *mag = 0;
    if (w && CHECK_OK(kvtc_ggml_dequantize(type, row, w, cols, &err), &err))
        for (uint32_t i = 0; i < cols; i++) {
            s += (double)w[i] * x[i];
            *mag += fabs((double)w[i] * x[i]);
        }
    free(w);
    return s;
}

static void test_dots(void)
{
    static const uint32_t block_counts[] = {1, 3, 7, 13, 35}; /* odd lengths */
    float xsum[35 * 8];
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const block_type *t = &types[ti];
        uint32_t elems, bytes;
        kvtc_ggml_type_block(t->type, &elems, &bytes);
        weight_dot_fn fast = weight_dot_kernel(t->type);
        for (size_t bi = 0; bi < sizeof block_counts / sizeof block_counts[0]; bi++) {
            uint32_t nb = block_counts[bi], cols = nb * elems;
            for (int trial = 0; trial < 4; trial++) {
                uint8_t *row = malloc((size_t)nb * bytes);
                float *x = malloc(cols * sizeof(float));
                if (!CHECK(row && x)) {
                    free(row), free(x);
                    return;
                }
                random_row(t, row, nb);
                for (uint32_t i = 0; i < cols; i++)
                    x[i] = uniform(-1, 1);
                if (cols % 32 == 0)
                    weight_xsum(x, cols, xsum);
                double mag, want = reference_dot(t->type, row, x, cols, &mag);
                double tol = REL_TOL * mag + 1e-30;
                float port = weight_dot_portable(t->type, row, x, cols);
                CHECK_MSG(fabs(port - want) <= tol, "%s x %u portable: %.9g, want %.9g (tol %.2g)",
                          t->name, cols, port, want, tol);
                if (fast) {
                    float got = fast(row, x, xsum, nb);
                    CHECK_MSG(fabs(got - want) <= tol, "%s x %u fused: %.9g, want %.9g (tol %.2g)",
                              t->name, cols, got, want, tol);
                }
                free(row), free(x);
            }
        }
        printf("%-5s %s kernel and portable form checked\n", t->name,
               fast ? "avx2+fma" : "(no fused)");
    }
    /* the portable level turns every fused kernel off */
    kvtc_kernels_limit(KVTC_KERNELS_PORTABLE);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        CHECK_MSG(weight_dot_kernel(types[ti].type) == NULL, "%s: a kernel at the portable level",
                  types[ti].name);
    kvtc_kernels_limit(KVTC_KERNELS_AMX_BF16);
}

/* A [37 + 50 + 29][96] matrix of Q5_0, Q8_0 and Q4_1 parts. */
static void test_products(void)
{
    enum { COLS = 96, M = 3, ROWS = 37 + 50 + 29 };
    const block_type *pt[3] = {&types[2], &types[4], &types[1]};
    const uint32_t part_rows[3] = {37, 50, 29}, rows = ROWS;
    weight_matrix w = {ROWS, COLS, 3, {{0}}};
    uint8_t *data[3] = {NULL};
    for (int p = 0; p < 3; p++) {
        size_t rb = weight_row_bytes(pt[p]->type, COLS);
        data[p] = malloc(part_rows[p] * rb);
        if (!CHECK(data[p] && rb))
            goto out;
        for (uint32_t r = 0; r < part_rows[p]; r++)
            random_row(pt[p], data[p] + r * rb, COLS / 32);
        w.part[p] = (weight_part){pt[p]->type, part_rows[p], rb, data[p]};
    }
    static float x[M * COLS], y1[ROWS], y3[ROWS], acc[ROWS], c[M * ROWS];
    float *panel = malloc(WEIGHT_PANEL_FLOATS * sizeof(float));
    if (!CHECK(panel))
        goto out;
    for (int i = 0; i < M * COLS; i++)
        x[i] = uniform(-1, 1);
    kvtc_error err;
    CHECK_OK(weight_matvec(&w, x, y1, false, 1, &err), &err);
    CHECK_OK(weight_matvec(&w, x, y3, false, 3, &err), &err);
    CHECK_MSG(memcmp(y1, y3, sizeof y1) == 0, "matvec differs between 1 and 3 threads");
    for (uint32_t r = 0; r < rows; r++)
        acc[r] = 1.0f;
    CHECK_OK(weight_matvec(&w, x, acc, true, 2, &err), &err);
    float row[COLS];
    uint32_t bad = 0;
    for (uint32_t r = 0; r < rows; r++) {
        weight_row_f32(&w, r, row);
        double want = 0, mag = 0;
        for (int i = 0; i < COLS; i++) {
            want += (double)row[i] * x[i];
            mag += fabs((double)row[i] * x[i]);
        }
        if (fabs(y1[r] - want) > REL_TOL * mag || fabs(acc[r] - (1 + want)) > REL_TOL * (1 + mag))
            bad++;
    }
    CHECK_MSG(bad == 0, "matvec: %u of %u rows off the dequantized rows' dots", bad, rows);
    for (uint32_t i = 0; i < M * rows; i++)
        c[i] = 0.5f;
    CHECK_OK(weight_matmul(&w, M, x, COLS, 1.0f, c, rows, panel, 2, &err), &err);
    bad = 0;
    for (int m = 0; m < M; m++) {
        CHECK_OK(weight_matvec(&w, x + m * COLS, y1, false, 1, &err), &err);
        for (uint32_t r = 0; r < rows; r++)
            bad += fabsf(c[m * rows + r] - 0.5f - y1[r]) > 1e-4f * (1 + fabsf(y1[r]));
    }
    CHECK_MSG(bad == 0, "matmul: %u of %u products off the matvec's", bad, M * rows);
    free(panel);
out:
    for (int p = 0; p < 3; p++)
        free(data[p]);
}

int main(void)
{
    test_dots();
    test_products();
    return test_summary(NAME);
}
