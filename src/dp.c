/* Bit allocation: the exact DP over aligned groups and quantization types that
 * minimizes the measured held-out error under a per-token bit budget.
 *
 * A group of size g starts at a multiple of g. This alignment costs little
 * (coordinates are ordered by variance, so neighbours want similar precision)
 * and keeps the error table at rank/g entries per size instead of rank, and
 * the DP at a handful of transitions per coordinate. */
#include "kvtc_internal.h"

#include <math.h>

#define MAX_DP_BYTES ((uint64_t)2 << 30)

size_t kvtc_err_table_len(uint32_t rank)
{
    size_t n = 0;
    for (int si = 0; si < KVTC_GROUP_SIZE_COUNT; si++)
        n += rank / kvtc_group_sizes[si];
    return n * KVTC_QTYPE_COUNT;
}

size_t kvtc_err_table_index(uint32_t rank, int size_index, uint32_t start, kvtc_qtype type)
{
    size_t before = 0;
    for (int si = 0; si < size_index; si++)
        before += rank / kvtc_group_sizes[si];
    return (before + start / kvtc_group_sizes[size_index]) * KVTC_QTYPE_COUNT + (size_t)type;
}

/* Costs are even (the odd-bit lm types need groups of 16+), so the DP counts
 * in units of 2 bits. */
static uint32_t group_cost_units(uint32_t size, kvtc_qtype type)
{
    return kvtc_group_bits(size, type) / 2;
}

/* dp[i][b]: least table error covering coordinates [0, i) with at most b
 * units; choice[i][b] = size_index * KVTC_QTYPE_COUNT + type of the last group.
 * Groups of 16 or more start at multiples of 16, so only those rows of dp are
 * read again later; any other row is read once, by the next one. Keeping just
 * those cuts dp's memory sixteenfold; choice is kept whole for the walk back. */
#define KEPT_ROW_STRIDE 16u

typedef struct dp_tables {
    uint32_t rank, units;
    double *kept;    /* [rank / 16 + 1][units + 1]: rows 0, 16, 32, ... */
    double *rolling; /* [2][units + 1]: the latest other rows */
    uint8_t *choice; /* [rank + 1][units + 1] */
} dp_tables;

static size_t dp_width(const dp_tables *d) { return (size_t)d->units + 1; }

static double *dp_row(dp_tables *d, uint32_t i)
{
    if (i % KEPT_ROW_STRIDE == 0)
        return d->kept + (size_t)(i / KEPT_ROW_STRIDE) * dp_width(d);
    return d->rolling + (size_t)(i & 1) * dp_width(d);
}

static uint64_t dp_bytes(uint32_t rank, uint32_t units)
{
    uint64_t w = (uint64_t)units + 1;
    return (rank / KEPT_ROW_STRIDE + 1 + 2) * w * sizeof(double) + ((uint64_t)rank + 1) * w;
}

static void dp_run(dp_tables *d, const double *table)
{
    size_t w = dp_width(d);
    double *first = dp_row(d, 0);
    for (size_t b = 0; b < w; b++)
        first[b] = 0.0;
    for (uint32_t i = 1; i <= d->rank; i++) {
        double *cur = dp_row(d, i);
        uint8_t *pick = d->choice + (size_t)i * w;
        for (size_t b = 0; b < w; b++)
            cur[b] = INFINITY;
        /* Fixed order and strict < : ties go to the smaller group, then the cheaper type. */
        for (int si = 0; si < KVTC_GROUP_SIZE_COUNT; si++) {
            uint32_t g = kvtc_group_sizes[si];
            if (i % g)
                continue;
            const double *prev = dp_row(d, i - g);
            for (int t = 0; t < KVTC_QTYPE_COUNT; t++) {
                if (!kvtc_qtype_size_ok((kvtc_qtype)t, g))
                    continue;
                uint32_t c = group_cost_units(g, (kvtc_qtype)t);
                double e = table[kvtc_err_table_index(d->rank, si, i - g, (kvtc_qtype)t)];
                uint8_t tag = (uint8_t)(si * KVTC_QTYPE_COUNT + t);
                for (size_t b = c; b < w; b++) {
                    double cand = prev[b - c] + e;
                    if (cand < cur[b]) {
                        cur[b] = cand;
                        pick[b] = tag;
                    }
                }
            }
        }
    }
}

/* Groups from the DP walk-back (last first) into `out` in order, every run of
 * dropped coordinates rewritten as the fewest aligned groups and trailing ones
 * removed. Dropping is dropping however the run is cut; the DP's choice among
 * such cuts reflects only summation rounding. Returns the group count. */
static uint32_t canonical_groups(const kvtc_group *rev, uint32_t n, kvtc_group *out)
{
    uint32_t m = 0;
    for (uint32_t a = n; a-- > 0;) {
        if (rev[a].type != KVTC_Q_NONE) {
            out[m++] = rev[a];
            continue;
        }
        uint32_t pos = rev[a].start, end = pos + rev[a].size;
        while (a > 0 && rev[a - 1].type == KVTC_Q_NONE)
            end += rev[--a].size;
        if (a == 0)
            break; /* a trailing run: the plan ends before it */
        while (pos < end) {
            int si = KVTC_GROUP_SIZE_COUNT - 1;
            while (pos % kvtc_group_sizes[si] || pos + kvtc_group_sizes[si] > end)
                si--;
            out[m++] = (kvtc_group){pos, kvtc_group_sizes[si], KVTC_Q_NONE};
            pos += kvtc_group_sizes[si];
        }
    }
    return m;
}

kvtc_status kvtc_plan_create(const kvtc_calibration *cal, kvtc_kind kind, double ratio,
                             kvtc_plan **out, kvtc_error *err)
{
    if (!cal || !out || (kind != KVTC_KEY && kind != KVTC_VALUE))
        return kvtc_fail(err, KVTC_E_INVALID, "no calibration, output or valid kind given");
    *out = NULL;
    if (!(ratio > 1.0) || !isfinite(ratio))
        return kvtc_fail(err, KVTC_E_INVALID, "compression ratio %g must be a number > 1", ratio);
    const struct kvtc_calib_kind *k = &cal->kind[kind];
    uint32_t p = (uint32_t)kvtc_shape_features(&cal->shape);
    uint32_t budget = (uint32_t)floor(16.0 * p / ratio);
    uint64_t most = (uint64_t)k->rank * (8 + 32) / 2; /* all int8 in groups of 1 */
    dp_tables d = {.rank = k->rank, .units = budget / 2 < most ? budget / 2 : (uint32_t)most};
    uint64_t bytes = dp_bytes(d.rank, d.units);
    if (bytes > MAX_DP_BYTES)
        return kvtc_fail(err, KVTC_E_NOMEM,
                         "bit allocation for rank %u at ratio %g needs %.1f GiB; calibrate with "
                         "a smaller --rank",
                         d.rank, ratio, (double)bytes / (1u << 30));
    size_t w = dp_width(&d);
    d.kept = kvtc_malloc_array((size_t)(d.rank / KEPT_ROW_STRIDE + 1) * w, sizeof(double));
    d.rolling = kvtc_malloc_array(2 * w, sizeof(double));
    d.choice = kvtc_malloc_array((size_t)(d.rank + 1) * w, 1);
    kvtc_group *groups = kvtc_malloc_array(d.rank ? d.rank : 1, sizeof(kvtc_group));
    kvtc_group *merged = kvtc_malloc_array(d.rank ? d.rank : 1, sizeof(kvtc_group));
    kvtc_status st = KVTC_OK;
    if (!d.kept || !d.rolling || !d.choice || !groups || !merged) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory for bit allocation (rank %u)", d.rank);
        goto done;
    }
    dp_run(&d, k->err_table);

    /* Walk back from (rank, units); groups come out last first. */
    uint32_t n_groups = 0, i = d.rank;
    size_t b = d.units;
    double best = dp_row(&d, d.rank)[d.units];
    while (i > 0) {
        uint8_t tag = d.choice[(size_t)i * w + b];
        int si = tag / KVTC_QTYPE_COUNT;
        kvtc_qtype t = (kvtc_qtype)(tag % KVTC_QTYPE_COUNT);
        uint32_t g = kvtc_group_sizes[si];
        groups[n_groups++] = (kvtc_group){i - g, g, t};
        b -= group_cost_units(g, t);
        i -= g;
    }
    n_groups = canonical_groups(groups, n_groups, merged);
    st = kvtc_plan_from_groups(kind, p, ratio, budget, merged, n_groups, k->rank, out, err);
    if (st == KVTC_OK) {
        /* Energy outside [0, rank) is never coded: add it to the table's error. */
        double in_rank = 0;
        for (uint32_t j = 0; j < k->rank; j++)
            in_rank += k->err_table[kvtc_err_table_index(k->rank, 0, j, KVTC_Q_NONE)];
        double outside = k->heldout_energy - in_rank;
        (*out)->predicted_error = k->heldout_energy > 0
                                      ? (best + (outside > 0 ? outside : 0)) / k->heldout_energy
                                      : 0.0;
    }
done:
    kvtc_free(d.kept);
    kvtc_free(d.rolling);
    kvtc_free(d.choice);
    kvtc_free(groups);
    kvtc_free(merged);
    return st;
}
