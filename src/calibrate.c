/* Calibration: stream caches into a covariance per kind, keep a held-out
 * sample, then produce the mean, the PCA basis and the DP error table. */
#include "pca.h"
#include "transform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_TOKENS 256u
#define TABLE_SLICE 64u /* error-table items per parallel_for, between progress reports */

typedef struct kind_state {
    kvtc_cov cov;
    float *heldout; /* [heldout_cap][p] */
    uint32_t n_heldout, heldout_cap;
    uint64_t excluded; /* tokens left out for their extreme energy */
} kind_state;

/* A token whose feature row carries more than this many times the median
 * energy of its cache's tokens is left out of the statistics: one such token
 * would otherwise dominate the covariance (a 1e20 value poisons the basis
 * for every other token). 1e4 in energy is 100 times the typical magnitude. */
#define OUTLIER_ENERGY_FACTOR 1e4

struct kvtc_calibrator {
    kvtc_model_shape shape; /* normalized */
    kvtc_calib_options opt;
    uint32_t p, rank;
    uint64_t eligible_seen; /* eligible tokens of all caches added so far */
    float *rows;            /* [BATCH_TOKENS][p] scratch */
    kind_state kind[2];
};

void kvtc_calib_options_default(kvtc_calib_options *opt)
{
    memset(opt, 0, sizeof *opt);
    opt->struct_size = sizeof *opt;
    opt->sinks = KVTC_DEFAULT_SINKS;
    opt->window = KVTC_DEFAULT_WINDOW;
    opt->rank = 0;
    opt->heldout_every = KVTC_DEFAULT_HELDOUT_EVERY;
    opt->max_heldout = KVTC_DEFAULT_MAX_HELDOUT;
    opt->n_threads = 1;
}

static void report(const kvtc_calib_options *opt, const char *stage, uint64_t done,
                   uint64_t total)
{
    if (opt->progress)
        opt->progress(opt->progress_user, stage, done, total);
}

void kvtc_calibrator_free(kvtc_calibrator *cal)
{
    if (!cal)
        return;
    for (int k = 0; k < 2; k++) {
        kvtc_cov_release(&cal->kind[k].cov);
        kvtc_free(cal->kind[k].heldout);
    }
    kvtc_free(cal->rows);
    kvtc_free(cal);
}

kvtc_status kvtc_calibrator_create(const kvtc_model_shape *shape, const kvtc_calib_options *opt,
                                   kvtc_calibrator **out, kvtc_error *err)
{
    if (!out)
        return kvtc_fail(err, KVTC_E_INVALID, "no output given");
    *out = NULL;
    kvtc_calib_options o;
    kvtc_calib_options_default(&o);
    kvtc_status st = opt ? kvtc_struct_in(&o, sizeof o, KVTC_CALIB_OPTIONS_V1_SIZE, opt,
                                          "calibration options", err)
                         : KVTC_OK;
    if (st != KVTC_OK || (st = kvtc_shape_check(shape, err)) != KVTC_OK)
        return st;
    if (o.heldout_every < 1 || o.max_heldout < 1)
        return kvtc_fail(err, KVTC_E_INVALID, "heldout_every (%u) and max_heldout (%u) must be >= 1",
                         o.heldout_every, o.max_heldout);
    kvtc_calibrator *cal = kvtc_calloc(1, sizeof *cal);
    if (!cal)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a calibrator");
    cal->shape = kvtc_shape_normalized(shape);
    cal->opt = o;
    if (cal->opt.n_threads == 0)
        cal->opt.n_threads = 1;
    cal->p = (uint32_t)kvtc_shape_features(&cal->shape);
    uint32_t rank = o.rank ? o.rank : KVTC_DEFAULT_MAX_RANK;
    cal->rank = rank < cal->p ? rank : cal->p;
    cal->rows = kvtc_malloc_array((size_t)BATCH_TOKENS * cal->p, sizeof(float));
    if (!cal->rows)
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a calibrator of %u features", cal->p);
    for (int k = 0; k < 2 && st == KVTC_OK; k++)
        st = kvtc_cov_init(&cal->kind[k].cov, cal->p, BATCH_TOKENS, err);
    if (st != KVTC_OK) {
        kvtc_calibrator_free(cal);
        return st;
    }
    *out = cal;
    return KVTC_OK;
}

uint64_t kvtc_calibrator_rows(const kvtc_calibrator *cal, kvtc_kind kind)
{
    if (!cal || (kind != KVTC_KEY && kind != KVTC_VALUE))
        return 0;
    return cal->kind[kind].cov.n;
}

/* Every element of tokens [t0, t1) of both kinds must be finite. */
static kvtc_status check_finite(const kvtc_cache *cache, uint32_t t0, uint32_t t1,
                                kvtc_error *err)
{
    const kvtc_model_shape *s = kvtc_cache_shape(cache);
    size_t esize = kvtc_dtype_size(kvtc_cache_dtype(cache)), hd = s->head_dim;
    float buf[1024];
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < s->n_layer; l++)
            for (uint32_t h = 0; h < s->n_kv_head; h++)
                for (uint32_t t = t0; t < t1; t++) {
                    const unsigned char *row = kvtc_cache_row(cache, (kvtc_kind)k, l, h, t);
                    for (size_t off = 0; off < hd; off += 1024) {
                        size_t m = hd - off < 1024 ? hd - off : 1024;
                        kvtc_to_f32(kvtc_cache_dtype(cache), row + off * esize, buf, m);
                        for (size_t i = 0; i < m; i++)
                            if (!isfinite(buf[i]))
                                return kvtc_fail(err, KVTC_E_NUMERIC,
                                                 "cache has a non-finite %s in layer %u, head "
                                                 "%u, token %u",
                                                 k == KVTC_KEY ? "key" : "value", l, h, t);
                    }
                }
    return KVTC_OK;
}

/* Grows the held-out buffer of kind k to hold `need` rows (at most max_heldout). */
static kvtc_status reserve_heldout(kvtc_calibrator *cal, kind_state *ks, uint32_t need,
                                   kvtc_error *err)
{
    if (need <= ks->heldout_cap)
        return KVTC_OK;
    uint32_t cap = ks->heldout_cap ? ks->heldout_cap : 64;
    if (cap > cal->opt.max_heldout)
        cap = cal->opt.max_heldout;
    while (cap < need)
        cap = cap > cal->opt.max_heldout / 2 ? cal->opt.max_heldout : cap * 2;
    float *rows = kvtc_malloc_array((size_t)cap * cal->p, sizeof(float));
    if (!rows)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u held-out rows", cap);
    if (ks->n_heldout)
        memcpy(rows, ks->heldout, (size_t)ks->n_heldout * cal->p * sizeof(float));
    kvtc_free(ks->heldout);
    ks->heldout = rows;
    ks->heldout_cap = cap;
    return KVTC_OK;
}

/* The e-th eligible token (counted over all caches) is held out when it is
 * the heldout_every-th of its run and the held-out set still has room. */
static bool is_heldout(const kvtc_calibrator *cal, uint64_t e, uint32_t n_heldout)
{
    uint32_t k = cal->opt.heldout_every;
    return e % k == k - 1 && n_heldout < cal->opt.max_heldout;
}

static double row_energy(const float *row, size_t p)
{
    double e = 0;
    for (size_t i = 0; i < p; i++)
        e += (double)row[i] * row[i];
    return e;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The energy above which a token of tokens [t0, t1) of one kind is an outlier:
 * OUTLIER_ENERGY_FACTOR times their median (infinity when the median is 0). */
static kvtc_status energy_limit(kvtc_calibrator *cal, const kvtc_cache *cache, kvtc_kind kind,
                                uint32_t t0, uint32_t t1, double *limit, kvtc_error *err)
{
    uint32_t m = t1 - t0;
    double *energy = kvtc_malloc_array(m, sizeof *energy);
    if (!energy)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for %u token energies", m);
    for (uint32_t b0 = t0; b0 < t1; b0 += BATCH_TOKENS) {
        uint32_t nb = t1 - b0 < BATCH_TOKENS ? t1 - b0 : BATCH_TOKENS;
        kvtc_cache_gather_rows(cache, kind, b0, nb, cal->rows);
        for (uint32_t t = 0; t < nb; t++)
            energy[b0 - t0 + t] = row_energy(cal->rows + (size_t)t * cal->p, cal->p);
    }
    qsort(energy, m, sizeof *energy, compare_doubles);
    double median = energy[m / 2];
    *limit = median > 0 ? OUTLIER_ENERGY_FACTOR * median : INFINITY;
    kvtc_free(energy);
    return KVTC_OK;
}

kvtc_status kvtc_calibrator_add(kvtc_calibrator *cal, const kvtc_cache *cache, kvtc_error *err)
{
    if (!cal || !cache)
        return kvtc_fail(err, KVTC_E_INVALID, "no calibrator or cache given");
    const kvtc_model_shape *cs = kvtc_cache_shape(cache);
    if (!kvtc_shape_equal(cs, &cal->shape))
        return kvtc_fail(err, KVTC_E_MISMATCH,
                         "cache shape %u layers x %u kv heads x %u dims (rope %d/%u) differs "
                         "from the calibrator's %u x %u x %u (rope %d/%u)",
                         cs->n_layer, cs->n_kv_head, cs->head_dim, (int)cs->rope_style,
                         cs->rope_dims, cal->shape.n_layer, cal->shape.n_kv_head,
                         cal->shape.head_dim, (int)cal->shape.rope_style, cal->shape.rope_dims);
    uint64_t n = kvtc_cache_tokens(cache), skip = (uint64_t)cal->opt.sinks + cal->opt.window;
    if (n <= skip)
        return KVTC_OK; /* everything is sink or window: nothing to learn from */
    uint32_t t0 = cal->opt.sinks, t1 = (uint32_t)(n - cal->opt.window), m = t1 - t0;
    kvtc_status st = check_finite(cache, t0, t1, err);
    if (st != KVTC_OK)
        return st;

    /* Reserve held-out room first, so that nothing below can fail halfway. */
    double limit[2];
    for (int kind = 0; kind < 2 && st == KVTC_OK; kind++)
        st = energy_limit(cal, cache, (kvtc_kind)kind, t0, t1, &limit[kind], err);
    if (st != KVTC_OK)
        return st;
    uint64_t k = cal->opt.heldout_every, seen = cal->eligible_seen;
    uint64_t selected = (seen + m) / k - seen / k;
    uint64_t room = cal->opt.max_heldout - cal->kind[0].n_heldout;
    uint32_t taken = (uint32_t)(selected < room ? selected : room);
    for (int kind = 0; kind < 2; kind++) {
        kind_state *ks = &cal->kind[kind];
        if ((st = reserve_heldout(cal, ks, ks->n_heldout + taken, err)) != KVTC_OK)
            return st;
    }

    size_t p = cal->p;
    for (int kind = 0; kind < 2; kind++) {
        kind_state *ks = &cal->kind[kind];
        uint64_t e = seen;
        for (uint32_t b0 = t0; b0 < t1; b0 += BATCH_TOKENS) {
            uint32_t nb = t1 - b0 < BATCH_TOKENS ? t1 - b0 : BATCH_TOKENS, n_fit = 0;
            kvtc_cache_gather_rows(cache, (kvtc_kind)kind, b0, nb, cal->rows);
            for (uint32_t t = 0; t < nb; t++, e++) {
                const float *row = cal->rows + t * p;
                if (row_energy(row, p) > limit[kind])
                    ks->excluded++;
                else if (is_heldout(cal, e, ks->n_heldout))
                    memcpy(ks->heldout + (size_t)ks->n_heldout++ * p, row, p * sizeof(float));
                else if (n_fit++ != t)
                    memcpy(cal->rows + (size_t)(n_fit - 1) * p, row, p * sizeof(float));
            }
            kvtc_cov_add(&ks->cov, cal->rows, n_fit);
            report(&cal->opt, "calibrate", (uint64_t)kind * m + (b0 + nb - t0), 2 * (uint64_t)m);
        }
    }
    cal->eligible_seen += m;
    return KVTC_OK;
}

/* ---- finish ------------------------------------------------------------------- */

/* Mean, total variance, eigenvalues and basis of one kind. */
static kvtc_status fit_basis(const kvtc_calibrator *cal, const kind_state *ks,
                             struct kvtc_calib_kind *out, kvtc_error *err)
{
    size_t p = cal->p;
    double *mean = kvtc_malloc_array(p, sizeof(double));
    double *cov = kvtc_malloc_array(p * p, sizeof(double));
    double *lambda = kvtc_malloc_array(cal->rank, sizeof(double));
    kvtc_status st = KVTC_OK;
    if (!mean || !cov || !lambda) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a %zu x %zu covariance", p, p);
        goto done;
    }
    kvtc_cov_result(&ks->cov, mean, cov);
    out->total_variance = 0;
    for (size_t i = 0; i < p; i++) {
        out->mean[i] = (float)mean[i];
        out->total_variance += cov[i * p + i];
    }
    if (!isfinite(out->total_variance)) {
        st = kvtc_fail(err, KVTC_E_NUMERIC, "covariance is not finite (values too large?)");
        goto done;
    }
    st = kvtc_eigen_top(cov, cal->p, cal->rank, lambda, out->basis, err);
    for (uint32_t j = 0; st == KVTC_OK && j < cal->rank; j++)
        out->eigenvalues[j] = (float)lambda[j];
done:
    kvtc_free(mean);
    kvtc_free(cov);
    kvtc_free(lambda);
    return st;
}

/* Coefficients D = (H - mean) V of the held-out rows, [n_heldout][rank], and
 * their energy over all p features, for kind k of c (its mean and basis made). */
static kvtc_status project_heldout(const kvtc_calibrator *cal, const kind_state *ks,
                                   kvtc_calibration *c, kvtc_kind k, float *coef,
                                   kvtc_error *err)
{
    size_t p = cal->p;
    struct kvtc_calib_kind *out = &c->kind[k];
    float *centred = kvtc_malloc_array((size_t)BATCH_TOKENS * p, sizeof(float));
    if (!centred)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory projecting held-out rows");
    out->heldout_energy = 0;
    for (uint32_t r0 = 0; r0 < ks->n_heldout; r0 += BATCH_TOKENS) {
        uint32_t n = ks->n_heldout - r0 < BATCH_TOKENS ? ks->n_heldout - r0 : BATCH_TOKENS;
        memcpy(centred, ks->heldout + (size_t)r0 * p, (size_t)n * p * sizeof(float));
        kvtc_transform_project(c, k, centred, n, out->rank, coef + (size_t)r0 * out->rank,
                               &out->heldout_energy);
    }
    kvtc_free(centred);
    return KVTC_OK;
}

typedef struct table_job {
    struct kvtc_calib_kind *kind;
    const float *coef;         /* [n_heldout][rank] */
    uint32_t first_item;       /* items of this parallel_for start here */
    uint32_t items_before[KVTC_GROUP_SIZE_COUNT + 1];
} table_job;

/* One item is one (group size, start): the summed error of every qtype. */
static kvtc_status table_item(void *user, uint32_t item, kvtc_error *err)
{
    (void)err;
    const table_job *job = user;
    struct kvtc_calib_kind *k = job->kind;
    uint32_t global = job->first_item + item;
    int si = 0;
    while (global >= job->items_before[si + 1])
        si++;
    uint32_t g = kvtc_group_sizes[si], start = (global - job->items_before[si]) * g;
    for (int t = 0; t < KVTC_QTYPE_COUNT; t++) {
        double sum = 0;
        for (uint32_t r = 0; r < k->n_heldout; r++)
            sum += kvtc_quant_group_error((kvtc_qtype)t, job->coef + (size_t)r * k->rank + start,
                                          g);
        k->err_table[kvtc_err_table_index(k->rank, si, start, (kvtc_qtype)t)] = sum;
    }
    return KVTC_OK;
}

static kvtc_status fill_error_table(const kvtc_calibrator *cal, struct kvtc_calib_kind *k,
                                    const float *coef, int kind_index, kvtc_error *err)
{
    table_job job = {.kind = k, .coef = coef};
    for (int si = 0; si < KVTC_GROUP_SIZE_COUNT; si++)
        job.items_before[si + 1] = job.items_before[si] + k->rank / kvtc_group_sizes[si];
    uint32_t n_items = job.items_before[KVTC_GROUP_SIZE_COUNT];
    for (uint32_t first = 0; first < n_items; first += TABLE_SLICE) {
        uint32_t n = n_items - first < TABLE_SLICE ? n_items - first : TABLE_SLICE;
        job.first_item = first;
        kvtc_status st = kvtc_parallel_for(n, cal->opt.n_threads, table_item, &job, err);
        if (st != KVTC_OK)
            return st;
        report(&cal->opt, "error table", (uint64_t)kind_index * n_items + first + n,
               2 * (uint64_t)n_items);
    }
    return KVTC_OK;
}

/* Kind k of c from the calibrator's state of that kind. */
static kvtc_status finish_kind(const kvtc_calibrator *cal, const kind_state *ks,
                               kvtc_calibration *c, kvtc_kind k, kvtc_error *err)
{
    size_t p = cal->p;
    struct kvtc_calib_kind *out = &c->kind[k];
    out->rank = cal->rank;
    out->rows = ks->cov.n;
    out->n_heldout = ks->n_heldout;
    out->mean = kvtc_malloc_array(p, sizeof(float));
    out->basis = kvtc_malloc_array(p * cal->rank, sizeof(float));
    out->eigenvalues = kvtc_malloc_array(cal->rank, sizeof(float));
    out->err_table = kvtc_calloc(kvtc_err_table_len(cal->rank), sizeof(double));
    float *coef = kvtc_malloc_array((size_t)ks->n_heldout * cal->rank, sizeof(float));
    kvtc_status st = KVTC_OK;
    if (!out->mean || !out->basis || !out->eigenvalues || !out->err_table || !coef)
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a calibration of %zu x %u", p,
                       cal->rank);
    if (st == KVTC_OK) {
        report(&cal->opt, "eigen", (uint64_t)k, 2);
        st = fit_basis(cal, ks, out, err);
    }
    if (st == KVTC_OK) {
        report(&cal->opt, "eigen", (uint64_t)k + 1, 2);
        st = project_heldout(cal, ks, c, k, coef, err);
    }
    if (st == KVTC_OK)
        st = fill_error_table(cal, out, coef, k, err);
    kvtc_free(coef);
    return st;
}

/* A calibration is handed out only if the loader would accept its file: the
 * same checks (finite values, ranges) on what was made as on what is read. */
static kvtc_status check_loads_back(const kvtc_calibration *c, kvtc_error *err)
{
    void *file = NULL;
    size_t len = 0;
    kvtc_calibration *back = NULL;
    kvtc_status st = kvtc_calibration_save(c, &file, &len, err);
    if (st == KVTC_OK && (st = kvtc_calibration_load(file, len, &back, err)) != KVTC_OK) {
        kvtc_fail_prefix(err, "the calibration made from these caches is unusable");
        st = KVTC_E_NUMERIC;
        if (err)
            err->status = st;
    }
    kvtc_calibration_free(back);
    kvtc_buffer_free(file);
    return st;
}

kvtc_status kvtc_calibrator_finish(kvtc_calibrator *cal, kvtc_calibration **out,
                                   kvtc_error *err)
{
    if (!cal || !out)
        return kvtc_fail(err, KVTC_E_INVALID, "no calibrator or output given");
    *out = NULL;
    for (int k = 0; k < 2; k++) {
        const kind_state *ks = &cal->kind[k];
        if (ks->cov.n < 2 || ks->n_heldout < 1)
            return kvtc_fail(err, KVTC_E_INVALID,
                             "too little calibration data: %llu fitted and %u held-out rows "
                             "(need at least 2 and 1); each cache contributes its tokens "
                             "[sinks, n - window) = [%u, n - %u)",
                             (unsigned long long)ks->cov.n, ks->n_heldout, cal->opt.sinks,
                             cal->opt.window);
    }
    kvtc_calibration *c = kvtc_calloc(1, sizeof *c);
    if (!c)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a calibration");
    c->shape = cal->shape;
    c->sinks = cal->opt.sinks;
    c->window = cal->opt.window;
    kvtc_status st = KVTC_OK;
    for (int k = 0; k < 2 && st == KVTC_OK; k++)
        st = finish_kind(cal, &cal->kind[k], c, (kvtc_kind)k, err);
    if (st == KVTC_OK)
        st = kvtc_calibration_compute_fingerprint(c, err);
    if (st == KVTC_OK)
        st = check_loads_back(c, err);
    if (st != KVTC_OK) {
        kvtc_calibration_free(c);
        return st;
    }
    *out = c;
    return KVTC_OK;
}

uint64_t kvtc_calibrator_excluded(const kvtc_calibrator *cal, kvtc_kind kind)
{
    return cal && (kind == KVTC_KEY || kind == KVTC_VALUE) ? cal->kind[kind].excluded : 0;
}
