/* Weight matrices in their GGUF blocks: the portable dot product, the
 * run-time choice of kernel, and the decode and prefill products. */
#include "weights.h"

#include "gguf.h"
#include "kernels.h"
#include "kvtc_internal.h"

#include <cblas.h>
#include <string.h>

#define MAX_BLOCK 256u      /* elements of the largest block (the K types) */
#define MAX_COLS (1u << 18) /* model.c's bound on any row length */
#define MATVEC_ROWS 64u     /* rows per item of a threaded matvec */

bool weight_type_kept(uint32_t type)
{
    return type == KVTC_GGML_F32 || kvtc_ggml_block_dequantizable(type);
}

size_t weight_row_bytes(uint32_t type, uint64_t cols)
{
    uint32_t elems, bytes;
    if (!kvtc_ggml_type_block(type, &elems, &bytes) || cols % elems)
        return 0;
    return (size_t)(cols / elems) * bytes;
}

size_t weight_bytes(const weight_matrix *w)
{
    size_t n = 0;
    for (uint32_t p = 0; p < w->n_parts; p++)
        n += w->part[p].rows * w->part[p].row_bytes;
    return n;
}

/* The part holding row *r, with *r made relative to it. */
static const weight_part *part_of(const weight_matrix *w, uint32_t *r)
{
    uint32_t p = 0;
    while (p + 1 < w->n_parts && *r >= w->part[p].rows)
        *r -= w->part[p++].rows;
    return &w->part[p];
}

void weight_row_f32(const weight_matrix *w, uint32_t r, float *out)
{
    const weight_part *p = part_of(w, &r);
    /* the type and length were checked at load: this cannot fail */
    kvtc_ggml_dequantize(p->type, p->data + (size_t)r * p->row_bytes, out, w->cols, NULL);
}

void weight_to_f32(const weight_matrix *w, float *out)
{
    for (uint32_t p = 0; p < w->n_parts; p++) {
        const weight_part *wp = &w->part[p];
        kvtc_ggml_dequantize(wp->type, wp->data, out, (uint64_t)wp->rows * w->cols, NULL);
        out += (size_t)wp->rows * w->cols;
    }
}

weight_matrix weight_f32_matrix(const float *data, uint32_t rows, uint32_t cols)
{
    weight_matrix w = {rows, cols, 1, {{KVTC_GGML_F32, rows, (size_t)cols * sizeof(float),
                                        (const uint8_t *)(const void *)data}}};
    return w;
}

const float *weight_f32_data(const weight_matrix *w)
{
    return w->n_parts == 1 && w->part[0].type == KVTC_GGML_F32 ? (const float *)w->part[0].data
                                                               : NULL;
}

/* ---- kernels ------------------------------------------------------------------ */

float weight_dot_portable(uint32_t type, const uint8_t *row, const float *x, uint32_t cols)
{
    uint32_t elems = 1, bytes = 4;
    kvtc_ggml_type_block(type, &elems, &bytes);
    if (type == KVTC_GGML_F32) /* one "block" of the whole row */
        elems = cols;
    float acc[8] = {0};
    float buf[MAX_BLOCK];
    for (uint32_t i = 0; i < cols; i += elems) {
        const float *v = (const float *)(const void *)row;
        if (type != KVTC_GGML_F32) {
            kvtc_ggml_dequantize(type, row + (size_t)(i / elems) * bytes, buf, elems, NULL);
            v = buf;
        }
        uint32_t j = 0;
        for (; j + 8 <= elems; j += 8)
            for (int k = 0; k < 8; k++)
                acc[k] += v[j + k] * x[i + j + k];
        for (; j < elems; j++)
            acc[j % 8] += v[j] * x[i + j];
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

weight_dot_fn weight_dot_kernel(uint32_t type)
{
#ifdef WEIGHT_HAVE_AVX2
    if (kvtc_kernels_level() >= KVTC_KERNELS_AVX2 && __builtin_cpu_supports("fma"))
        return weight_dot_avx2(type);
#endif
    (void)type;
    return NULL;
}

void weight_xsum(const float *x, uint32_t cols, float *xsum)
{
    for (uint32_t b = 0; b < cols / 32; b++) {
        float s[4] = {0};
        for (uint32_t j = 0; j < 32; j++)
            s[j % 4] += x[32 * b + j];
        xsum[b] = (s[0] + s[2]) + (s[1] + s[3]);
    }
}

/* ---- decode: y = W x ---------------------------------------------------------- */

typedef struct matvec_job {
    const weight_matrix *w;
    const float *x, *xsum;
    float *y;
    bool accumulate;
    weight_dot_fn fn[WEIGHT_MAX_PARTS];
} matvec_job;

static void matvec_rows(const matvec_job *j, uint32_t r0, uint32_t r1)
{
    const weight_matrix *w = j->w;
    uint32_t base = 0;
    for (uint32_t p = 0; p < w->n_parts; base += w->part[p++].rows) {
        const weight_part *wp = &w->part[p];
        uint32_t a = r0 > base ? r0 - base : 0, b = r1 - base < wp->rows ? r1 - base : wp->rows;
        if (r1 <= base || a >= wp->rows)
            continue;
        uint32_t elems = 1;
        kvtc_ggml_type_block(wp->type, &elems, NULL);
        for (uint32_t r = a; r < b; r++) {
            const uint8_t *row = wp->data + (size_t)r * wp->row_bytes;
            float d = j->fn[p] ? j->fn[p](row, j->x, j->xsum, w->cols / elems)
                               : weight_dot_portable(wp->type, row, j->x, w->cols);
            float *y = j->y + base + r;
            *y = j->accumulate ? *y + d : d;
        }
    }
}

static kvtc_status matvec_item(void *user, uint32_t item, kvtc_error *err)
{
    (void)err;
    const matvec_job *j = user;
    uint32_t r0 = item * MATVEC_ROWS;
    uint32_t r1 = r0 + MATVEC_ROWS < j->w->rows ? r0 + MATVEC_ROWS : j->w->rows;
    matvec_rows(j, r0, r1);
    return KVTC_OK;
}

kvtc_status weight_matvec(const weight_matrix *w, const float *x, float *y, bool accumulate,
                          uint32_t n_threads, kvtc_error *err)
{
    float xsum[MAX_COLS / 32];
    matvec_job j = {w, x, xsum, y, accumulate, {NULL}};
    bool sums = w->cols % 32 == 0 && w->cols <= MAX_COLS;
    for (uint32_t p = 0; p < w->n_parts; p++) /* kernels other than f32's need the sums */
        j.fn[p] = sums || w->part[p].type == KVTC_GGML_F32 ? weight_dot_kernel(w->part[p].type)
                                                           : NULL;
    if (sums)
        weight_xsum(x, w->cols, xsum);
    if (n_threads <= 1 || w->rows <= MATVEC_ROWS) {
        matvec_rows(&j, 0, w->rows);
        return KVTC_OK;
    }
    return kvtc_parallel_for((w->rows + MATVEC_ROWS - 1) / MATVEC_ROWS, n_threads, matvec_item,
                             &j, err);
}

/* ---- prefill: C = A W^T ------------------------------------------------------- */

typedef struct panel_job {
    const weight_part *part;
    uint32_t cols, r0, rows; /* rows [r0, r0 + rows) of the part */
    float *panel;
} panel_job;

static kvtc_status panel_item(void *user, uint32_t item, kvtc_error *err)
{
    (void)err;
    const panel_job *j = user;
    uint32_t a = item * MATVEC_ROWS, n = j->rows - a < MATVEC_ROWS ? j->rows - a : MATVEC_ROWS;
    kvtc_ggml_dequantize(j->part->type, j->part->data + (size_t)(j->r0 + a) * j->part->row_bytes,
                         j->panel + (size_t)a * j->cols, (uint64_t)n * j->cols, NULL);
    return KVTC_OK;
}

kvtc_status weight_matmul(const weight_matrix *w, uint32_t m, const float *a, uint32_t lda,
                          float beta, float *c, uint32_t ldc, float *panel, uint32_t n_threads,
                          kvtc_error *err)
{
    uint32_t k = w->cols, base = 0;
    for (uint32_t p = 0; p < w->n_parts; base += w->part[p++].rows) {
        const weight_part *wp = &w->part[p];
        if (wp->type == KVTC_GGML_F32) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)wp->rows, (int)k,
                        1.0f, a, (int)lda, (const float *)(const void *)wp->data, (int)k, beta,
                        c + base, (int)ldc);
            continue;
        }
        uint32_t tile = WEIGHT_PANEL_FLOATS / k;
        for (uint32_t r0 = 0; r0 < wp->rows; r0 += tile) {
            uint32_t rows = wp->rows - r0 < tile ? wp->rows - r0 : tile;
            panel_job j = {wp, k, r0, rows, panel};
            kvtc_status st = kvtc_parallel_for((rows + MATVEC_ROWS - 1) / MATVEC_ROWS, n_threads,
                                               panel_item, &j, err);
            if (st != KVTC_OK)
                return st;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)rows, (int)k, 1.0f,
                        a, (int)lda, panel, (int)k, beta, c + base + r0, (int)ldc);
        }
    }
    return KVTC_OK;
}
