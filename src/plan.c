/* Bit allocation plans: validation of explicit group lists (from a stream or a
 * caller) and the public accessors. The DP that chooses groups is in dp.c. */
#include "kvtc_internal.h"

#include <math.h>
#include <string.h>

kvtc_status kvtc_plan_from_groups(kvtc_kind kind, uint32_t p, double ratio, uint32_t budget_bits,
                                  const kvtc_group *groups, uint32_t n_groups,
                                  uint32_t max_coords, kvtc_plan **out, kvtc_error *err)
{
    if (!out)
        return kvtc_fail(err, KVTC_E_INVALID, "no plan output given");
    *out = NULL;
    if (kind != KVTC_KEY && kind != KVTC_VALUE)
        return kvtc_fail(err, KVTC_E_INVALID, "unknown tensor kind %d", (int)kind);
    if (p == 0)
        return kvtc_fail(err, KVTC_E_INVALID, "plan for 0 features");
    if (!(ratio > 1.0) || !isfinite(ratio))
        return kvtc_fail(err, KVTC_E_INVALID, "plan ratio %g must be finite and > 1", ratio);
    if (n_groups && !groups)
        return kvtc_fail(err, KVTC_E_INVALID, "plan has %u groups but no group list", n_groups);
    if (max_coords > p)
        max_coords = p;

    uint32_t end = 0;          /* coordinates covered so far */
    uint32_t n_coords = 0;     /* end of the last non-empty group */
    uint32_t n_kept = 0;       /* groups up to the last non-empty one */
    uint64_t bits = 0;
    for (uint32_t i = 0; i < n_groups; i++) {
        const kvtc_group *g = &groups[i];
        if (kvtc_group_size_index(g->size) < 0)
            return kvtc_fail(err, KVTC_E_INVALID, "plan group %u has size %u (not 1/16/64/256/1024)",
                             i, g->size);
        if (g->start != end)
            return kvtc_fail(err, KVTC_E_INVALID,
                             "plan group %u starts at %u, expected %u (groups must be contiguous)",
                             i, g->start, end);
        if (g->start % g->size)
            return kvtc_fail(err, KVTC_E_INVALID,
                             "plan group %u starts at %u, not a multiple of its size %u", i,
                             g->start, g->size);
        if (!kvtc_qtype_valid((uint32_t)g->type))
            return kvtc_fail(err, KVTC_E_INVALID, "plan group %u has unknown type %d", i,
                             (int)g->type);
        if (!kvtc_qtype_size_ok(g->type, g->size))
            return kvtc_fail(err, KVTC_E_INVALID, "plan group %u of size %u has type %s (needs "
                             "groups of 16 or more)", i, g->size, kvtc_qtype_name(g->type));
        if (g->size > max_coords - end)
            return kvtc_fail(err, KVTC_E_INVALID,
                             "plan group %u ends at %llu, beyond the %u coordinates available", i,
                             (unsigned long long)end + g->size, max_coords);
        end += g->size;
        if (g->type != KVTC_Q_NONE) {
            bits += kvtc_group_bits(g->size, g->type);
            n_coords = end;
            n_kept = i + 1;
        }
    }
    if (bits > UINT32_MAX)
        return kvtc_fail(err, KVTC_E_INVALID, "plan spends %llu bits per token (too many)",
                         (unsigned long long)bits);
    if (budget_bits != 0 && bits > budget_bits)
        return kvtc_fail(err, KVTC_E_INVALID, "plan spends %llu bits per token, over its budget %u",
                         (unsigned long long)bits, budget_bits);

    kvtc_plan *plan = kvtc_calloc(1, sizeof *plan);
    kvtc_group *copy = kvtc_malloc_array(n_kept ? n_kept : 1, sizeof *copy);
    if (!plan || !copy) {
        kvtc_free(plan);
        kvtc_free(copy);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory for a plan of %u groups", n_kept);
    }
    if (n_kept)
        memcpy(copy, groups, (size_t)n_kept * sizeof *copy);
    plan->kind = kind;
    plan->p = p;
    plan->budget_bits = budget_bits;
    plan->bits_per_token = (uint32_t)bits;
    plan->n_coords = n_coords;
    plan->n_groups = n_kept; /* trailing dropped groups cost nothing: removed */
    plan->groups = copy;
    plan->ratio = ratio;
    plan->predicted_error = -1.0;
    *out = plan;
    return KVTC_OK;
}

void kvtc_plan_free(kvtc_plan *plan)
{
    if (!plan)
        return;
    kvtc_free(plan->groups);
    kvtc_free(plan);
}

uint32_t kvtc_plan_group_count(const kvtc_plan *plan) { return plan ? plan->n_groups : 0; }
const kvtc_group *kvtc_plan_groups(const kvtc_plan *plan) { return plan ? plan->groups : NULL; }
uint32_t kvtc_plan_bits_per_token(const kvtc_plan *plan) { return plan ? plan->bits_per_token : 0; }
uint32_t kvtc_plan_budget_bits(const kvtc_plan *plan) { return plan ? plan->budget_bits : 0; }
double kvtc_plan_predicted_error(const kvtc_plan *plan) { return plan ? plan->predicted_error : -1.0; }
