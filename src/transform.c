/* The transform stage: project feature rows onto the PCA basis, reconstruct
 * a layer's features from coefficients (transform.h). */
#include "transform.h"

#include "kernels.h"

#include <cblas.h>
#include <pthread.h>

void kvtc_transform_project(const kvtc_calibration *cal, kvtc_kind kind, float *rows, uint32_t n,
                            uint32_t n_coords, float *coef, double *energy)
{
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    size_t p = (size_t)kvtc_shape_features(&cal->shape);
    for (size_t t = 0; t < n; t++) {
        float *row = rows + t * p;
        for (size_t j = 0; j < p; j++)
            row[j] -= ck->mean[j];
        if (energy)
            for (size_t j = 0; j < p; j++)
                *energy += (double)row[j] * row[j];
    }
    if (n_coords) /* 0: only centring and energy (a BLAS refuses ldc 0) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n_coords, (int)p,
                    1.0f, rows, (int)p, ck->basis, (int)ck->rank, 0.0f, coef, (int)n_coords);
}

static void add_mean(const float *mean, size_t n, size_t hd, float *out)
{
    for (size_t t = 0; t < n; t++)
        for (size_t j = 0; j < hd; j++)
            out[t * hd + j] += mean[j];
}

void kvtc_transform_reconstruct_layer(const kvtc_calibration *cal, kvtc_kind kind, uint32_t layer,
                                      const float *coef, uint32_t n, uint32_t n_coords,
                                      float *out)
{
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    size_t hd = (size_t)cal->shape.n_kv_head * cal->shape.head_dim;
    const float *mean = ck->mean + layer * hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)hd, (int)n_coords, 1.0f,
                coef, (int)n_coords, ck->basis + layer * hd * ck->rank, (int)ck->rank, 0.0f, out,
                (int)hd);
    add_mean(mean, n, hd, out);
}

/* A basis packed for the tiles: all p rows, kp columns per bf16 term. The
 * list of a kind only grows (a decoder may still use an earlier entry). */
struct kvtc_tile_basis {
    struct kvtc_tile_basis *next;
    uint32_t kp, terms;
    uint16_t *data; /* [p / 16 tiles][terms * kp / 2][16][2] */
};

static pthread_mutex_t tiles_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t layer_features(const kvtc_calibration *cal)
{
    return (size_t)cal->shape.n_kv_head * cal->shape.head_dim;
}

bool kvtc_transform_tiles_usable(const kvtc_calibration *cal)
{
    return kvtc_kernels_level() >= KVTC_KERNELS_AVX512_BF16 && layer_features(cal) % 16 == 0;
}

/* The plan's relative error as the DP predicts it from the calibration's
 * table, -1 when a group is not one of the table's (only a crafted stream). */
static double plan_table_error(const kvtc_calibration *cal, const kvtc_plan *plan)
{
    const struct kvtc_calib_kind *ck = &cal->kind[plan->kind];
    if (!ck->err_table || !(ck->heldout_energy > 0) || plan->n_coords > ck->rank)
        return -1;
    double e = 0, in_rank = 0;
    for (uint32_t i = 0; i < plan->n_groups; i++) {
        const kvtc_group *g = &plan->groups[i];
        int si = kvtc_group_size_index(g->size);
        if (si < 0 || g->start % g->size || g->start + g->size > ck->rank)
            return -1;
        e += ck->err_table[kvtc_err_table_index(ck->rank, si, g->start, g->type)];
    }
    for (uint32_t j = 0; j < ck->rank; j++) {
        double none = ck->err_table[kvtc_err_table_index(ck->rank, 0, j, KVTC_Q_NONE)];
        in_rank += none;
        if (j >= plan->n_coords)
            e += none; /* never coded */
    }
    if (ck->heldout_energy > in_rank)
        e += ck->heldout_energy - in_rank; /* outside the basis */
    return e / ck->heldout_energy;
}

uint32_t kvtc_transform_tile_terms(const kvtc_calibration *cal, const kvtc_plan *plan)
{
    return plan_table_error(cal, plan) >= KVTC_TILE_ONE_TERM_ERROR ? 1 : 3;
}

size_t kvtc_transform_tile_row(uint32_t n_coords, uint32_t terms)
{
    return (size_t)terms * kvtc_tile_depth(n_coords);
}

void kvtc_transform_tile_coefficients(const float *coef, size_t ld, uint32_t n,
                                      uint32_t n_coords, uint32_t terms, uint16_t *packed)
{
    kvtc_tile_pack_a(coef, ld, n, n_coords, terms, packed);
}

const struct kvtc_tile_basis *kvtc_transform_tile_basis(const kvtc_calibration *cal,
                                                        kvtc_kind kind, uint32_t n_coords,
                                                        uint32_t terms)
{
    /* Lazily made state of a calibration that is otherwise only read. */
    kvtc_calibration *c = (kvtc_calibration *)cal;
    const struct kvtc_calib_kind *ck = &cal->kind[kind];
    uint32_t kp = kvtc_tile_depth(n_coords);
    pthread_mutex_lock(&tiles_lock);
    struct kvtc_tile_basis *tb = c->tiles[kind];
    while (tb && (tb->kp < kp || tb->terms != terms))
        tb = tb->next;
    if (!tb && (tb = kvtc_calloc(1, sizeof *tb))) {
        size_t p = (size_t)kvtc_shape_features(&cal->shape);
        tb->kp = kp;
        tb->terms = terms;
        tb->data = kvtc_malloc_array(p * terms, kp * sizeof(uint16_t));
        if (!tb->data) {
            kvtc_free(tb);
            tb = NULL;
        } else {
            kvtc_tile_pack_b(ck->basis, ck->rank, (uint32_t)p, kp < ck->rank ? kp : ck->rank,
                             terms, tb->data);
            tb->next = c->tiles[kind];
            c->tiles[kind] = tb;
        }
    }
    pthread_mutex_unlock(&tiles_lock);
    return tb;
}

void kvtc_transform_reconstruct_tiles(const kvtc_calibration *cal, kvtc_kind kind,
                                      uint32_t layer, const uint16_t *packed, uint32_t n,
                                      uint32_t n_coords, const struct kvtc_tile_basis *basis,
                                      float *out)
{
    size_t hd = layer_features(cal);
    const uint16_t *b = basis->data + layer * hd * basis->terms * basis->kp;
    kvtc_tile_gemm(packed, n, kvtc_tile_depth(n_coords), b, basis->kp, (uint32_t)hd,
                   basis->terms, cal->kind[kind].mean + layer * hd, out, hd);
}

void kvtc_transform_release_tiles(kvtc_calibration *cal)
{
    for (int k = 0; k < 2; k++)
        while (cal->tiles[k]) {
            struct kvtc_tile_basis *next = cal->tiles[k]->next;
            kvtc_free(cal->tiles[k]->data);
            kvtc_free(cal->tiles[k]);
            cal->tiles[k] = next;
        }
}
