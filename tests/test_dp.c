/* Bit allocation: the DP's optimum equals brute-force enumeration of every
 * aligned segmentation and type assignment; plans respect their budget
 * exactly; more budget never costs accuracy; unreasonable requests fail. */
#include "kvtc_internal.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

/* A calibration with only what the DP reads: shape (p), rank, error table and
 * held-out energy (set so that nothing lies outside [0, rank)). */
static kvtc_calibration *fake_calibration(uint32_t p, uint32_t rank, test_rng *r)
{
    kvtc_calibration *cal = kvtc_calloc(1, sizeof *cal);
    kvtc_model_shape s = {1, 1, p, KVTC_ROPE_NONE, 0, 0, 0};
    cal->shape = kvtc_shape_normalized(&s);
    for (int k = 0; k < 2; k++) {
        struct kvtc_calib_kind *c = &cal->kind[k];
        c->rank = rank;
        size_t len = kvtc_err_table_len(rank);
        c->err_table = kvtc_calloc(len, sizeof(double));
        /* Random tables, not only realistic ones: the DP must be exact for any. */
        for (size_t i = 0; i < len; i++)
            c->err_table[i] = rng_uniform(r) * (k == 0 ? 1.0 : 1 + (i % 7));
        /* Except that dropping a group loses exactly its coordinates' energy,
         * as in every measured table: plans may cut dropped runs any way. */
        for (int si = 1; si < KVTC_GROUP_SIZE_COUNT; si++)
            for (uint32_t start = 0; start + kvtc_group_sizes[si] <= rank;
                 start += kvtc_group_sizes[si]) {
                double energy = 0;
                for (uint32_t j = start; j < start + kvtc_group_sizes[si]; j++)
                    energy += c->err_table[kvtc_err_table_index(rank, 0, j, KVTC_Q_NONE)];
                c->err_table[kvtc_err_table_index(rank, si, start, KVTC_Q_NONE)] = energy;
            }
        c->heldout_energy = 0;
        for (uint32_t j = 0; j < rank; j++)
            c->heldout_energy += c->err_table[kvtc_err_table_index(rank, 0, j, KVTC_Q_NONE)];
    }
    return cal;
}

/* docs/FORMAT.md: size * bits + 32 (fp16 shift and scale), + 16 for the lm
 * types (fp16 scale only), which need groups of 16 or more (UINT32_MAX: not allowed). */
static uint32_t cost_bits(uint32_t size, kvtc_qtype t)
{
    bool lm = t >= KVTC_Q_LM1 && t <= KVTC_Q_LM3;
    if (lm && size < 16)
        return UINT32_MAX;
    return t == KVTC_Q_NONE ? 0 : size * kvtc_qtype_bits(t) + (lm ? 16 : 32);
}

/* Exhaustive search over every aligned segmentation of [pos, rank) and every
 * type per group, skipping only assignments already over budget. */
static void brute_force(const struct kvtc_calib_kind *k, uint32_t pos, uint32_t bits_left,
                        double err_so_far, double *best)
{
    if (pos == k->rank) {
        if (err_so_far < *best)
            *best = err_so_far;
        return;
    }
    for (int si = 0; si < KVTC_GROUP_SIZE_COUNT; si++) {
        uint32_t g = kvtc_group_sizes[si];
        if (pos % g || pos + g > k->rank)
            continue;
        for (int t = 0; t < KVTC_QTYPE_COUNT; t++) {
            uint32_t c = cost_bits(g, (kvtc_qtype)t);
            if (c > bits_left)
                continue;
            double e = k->err_table[kvtc_err_table_index(k->rank, si, pos, (kvtc_qtype)t)];
            brute_force(k, pos + g, bits_left - c, err_so_far + e, best);
        }
    }
}

/* Checks a plan's structure and returns its table error (dropped tail included). */
static double plan_table_error(const kvtc_plan *plan, const struct kvtc_calib_kind *k)
{
    uint32_t pos = 0, bits = 0;
    double e = 0;
    for (uint32_t i = 0; i < plan->n_groups; i++) {
        const kvtc_group *g = &plan->groups[i];
        int si = kvtc_group_size_index(g->size);
        if (!CHECK(si >= 0 && g->start == pos && g->start % g->size == 0 &&
                   g->start + g->size <= k->rank))
            return INFINITY;
        e += k->err_table[kvtc_err_table_index(k->rank, si, g->start, g->type)];
        bits += cost_bits(g->size, g->type);
        pos += g->size;
    }
    CHECK_EQ(pos, plan->n_coords);
    CHECK(plan->n_groups == 0 || plan->groups[plan->n_groups - 1].type != KVTC_Q_NONE);
    CHECK_EQ(bits, plan->bits_per_token);
    for (uint32_t j = pos; j < k->rank; j++)
        e += k->err_table[kvtc_err_table_index(k->rank, 0, j, KVTC_Q_NONE)];
    return e;
}

/* DP vs brute force for one rank over budgets [0, max_budget]. */
static void check_against_brute_force(uint32_t rank, uint32_t max_budget, uint32_t step,
                                      uint64_t seed)
{
    const uint32_t p = 1024; /* ratio = 16p / budget hits every budget we want */
    test_rng r;
    rng_seed(&r, seed);
    kvtc_calibration *cal = fake_calibration(p, rank, &r);
    kvtc_error err;
    for (uint32_t budget = 0; budget <= max_budget; budget += step) {
        double ratio = budget ? 16.0 * p / (budget + 0.5) : 1e9; /* floor gives budget */
        for (int kind = 0; kind < 2; kind++) {
            const struct kvtc_calib_kind *k = &cal->kind[kind];
            kvtc_plan *plan = NULL;
            if (!CHECK_OK(kvtc_plan_create(cal, (kvtc_kind)kind, ratio, &plan, &err), &err))
                continue;
            CHECK_EQ(plan->budget_bits, budget);
            CHECK(plan->bits_per_token <= plan->budget_bits);
            double best = INFINITY;
            brute_force(k, 0, budget, 0.0, &best);
            double dp_best = plan->predicted_error * k->heldout_energy;
            CHECK_MSG(fabs(dp_best - best) <= 1e-12 * best,
                      "rank %u budget %u kind %d: DP error %.17g, brute force %.17g", rank,
                      budget, kind, dp_best, best);
            double achieved = plan_table_error(plan, k);
            CHECK_MSG(fabs(achieved - best) <= 1e-9 * best,
                      "rank %u budget %u: the plan's groups give %.17g, optimum %.17g", rank,
                      budget, achieved, best);
            kvtc_plan_free(plan);
        }
    }
    kvtc_calibration_free(cal);
}

/* A real calibration: budgets always respected, error never rises with budget. */
static void check_budget_and_monotonicity(void)
{
    kvtc_model_shape s = {4, 2, 16, KVTC_ROPE_NEOX, 0, 10000.0, 0}; /* p = 128 */
    kvtc_calib_options opt;
    kvtc_calib_options_default(&opt);
    opt.window = 16;
    kvtc_error err;
    random_series series = {&s, KVTC_F16, 300, 1000, 10, 0};
    kvtc_calibration *out = NULL;
    if (!CHECK_OK(test_calibrate(&s, &opt, 6, random_series_cache, &series, &out, &err), &err))
        return;
    uint32_t p = 128;
    for (int kind = 0; kind < 2; kind++) {
        double prev_error = INFINITY;
        for (double ratio = 200.0; ratio > 1.05; ratio /= 1.07) {
            kvtc_plan *plan = NULL;
            if (!CHECK_OK(kvtc_plan_create(out, (kvtc_kind)kind, ratio, &plan, &err), &err))
                break;
            uint32_t budget = (uint32_t)floor(16.0 * p / ratio);
            CHECK_EQ(plan->budget_bits, budget);
            CHECK_MSG(plan->bits_per_token <= budget, "ratio %g: %u bits over budget %u", ratio,
                      plan->bits_per_token, budget);
            double e = plan->predicted_error;
            CHECK_MSG(e >= 0 && e <= 1.0 + 1e-9, "ratio %g: predicted error %g", ratio, e);
            CHECK_MSG(e <= prev_error * (1 + 1e-12), "ratio %g: error %g rose from %g", ratio, e,
                      prev_error);
            prev_error = e;
            plan_table_error(plan, &out->kind[kind]);
            kvtc_plan_free(plan);
        }
        CHECK_MSG(prev_error < 0.01, "kind %d: error at ratio ~1 is still %g", kind, prev_error);
    }
    kvtc_calibration_free(out);
}

static void check_rejections(void)
{
    test_rng r;
    rng_seed(&r, 5);
    kvtc_calibration *cal = fake_calibration(64, 20, &r);
    kvtc_error err;
    kvtc_plan *plan = NULL;
    CHECK_STATUS(kvtc_plan_create(cal, KVTC_KEY, 1.0, &plan, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(kvtc_plan_create(cal, KVTC_KEY, 0.5, &plan, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(kvtc_plan_create(cal, KVTC_KEY, NAN, &plan, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(kvtc_plan_create(cal, KVTC_KEY, INFINITY, &plan, &err), KVTC_E_INVALID, &err);
    CHECK_STATUS(kvtc_plan_create(cal, (kvtc_kind)2, 4, &plan, &err), KVTC_E_INVALID, &err);
    CHECK(plan == NULL);
    /* A budget too small for any group: an empty plan, everything dropped. */
    CHECK_OK(kvtc_plan_create(cal, KVTC_VALUE, 16.0 * 64 / 31.5, &plan, &err), &err);
    if (plan) {
        CHECK_EQ(plan->n_groups, 0);
        CHECK_EQ(plan->n_coords, 0);
        CHECK_NEAR(plan->predicted_error, 1.0, 1e-12);
    }
    kvtc_plan_free(plan);
    kvtc_calibration_free(cal);

    /* A huge rank and budget: refused before allocating gigabytes. */
    cal = fake_calibration(6000, 12000, &r);
    kvtc_model_shape big = {20, 1, 6000, KVTC_ROPE_NONE, 0, 0, 0};
    cal->shape = kvtc_shape_normalized(&big);
    CHECK_STATUS(kvtc_plan_create(cal, KVTC_KEY, 1.01, &plan, &err), KVTC_E_NOMEM, &err);
    CHECK_MSG(strstr(err.message, "rank") != NULL, "message should suggest a smaller rank: %s",
              err.message);
    kvtc_calibration_free(cal);
}

static void check_table_layout(void)
{
    /* Every (size, aligned start, type) has its own slot, and they fill the table. */
    const uint32_t rank = 1100;
    size_t len = kvtc_err_table_len(rank);
    CHECK_EQ(len, (size_t)(1100 + 68 + 17 + 4 + 1) * KVTC_QTYPE_COUNT);
    unsigned char *seen = kvtc_calloc(len, 1);
    for (int si = 0; si < KVTC_GROUP_SIZE_COUNT; si++)
        for (uint32_t start = 0; start + kvtc_group_sizes[si] <= rank;
             start += kvtc_group_sizes[si])
            for (int t = 0; t < KVTC_QTYPE_COUNT; t++) {
                size_t i = kvtc_err_table_index(rank, si, start, (kvtc_qtype)t);
                if (CHECK(i < len))
                    seen[i]++;
            }
    size_t once = 0;
    for (size_t i = 0; i < len; i++)
        once += seen[i] == 1;
    CHECK_EQ(once, len);
    kvtc_free(seen);
}

int main(void)
{
    check_table_layout();
    /* Small ranks: every budget up to all-int8 singles. */
    for (uint32_t rank = 1; rank <= 6; rank++)
        check_against_brute_force(rank, rank * 40 + 4, 2, 100 + rank);
    /* Ranks with 16- and 64-groups: budgets up to a few non-empty singles. */
    check_against_brute_force(16, 180, 2, 7);
    check_against_brute_force(17, 150, 3, 8);
    check_against_brute_force(33, 120, 5, 9);
    check_against_brute_force(64, 110, 4, 10);
    check_against_brute_force(70, 105, 7, 11);
    check_budget_and_monotonicity();
    check_rejections();
    return test_summary("test_dp");
}
