/* Rotary embedding: undo after redo is the identity for every style, one
 * rotation matches hand-computed values, and cache rows come out position-free. */
#include "kvtc_internal.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

static kvtc_model_shape shape_of(kvtc_rope_style style, uint32_t head_dim, uint32_t rope_dims,
                                 double theta, double freq_scale)
{
    kvtc_model_shape s = {1, 1, head_dim, style, rope_dims, theta, freq_scale};
    return s;
}

static void check_identity(const kvtc_model_shape *s, const char *what)
{
    test_rng r;
    rng_seed(&r, 42);
    float x[256], y[256];
    const int64_t positions[] = {0, 1, 7, 513, 32767, 1000003};
    for (size_t k = 0; k < sizeof positions / sizeof positions[0]; k++) {
        for (uint32_t i = 0; i < s->head_dim; i++)
            x[i] = y[i] = (float)rng_gaussian(&r);
        kvtc_rope_rotate(s, y, positions[k], false);
        float norm_x = 0, norm_y = 0;
        for (uint32_t i = 0; i < s->head_dim; i++) {
            norm_x += x[i] * x[i];
            norm_y += y[i] * y[i];
        }
        CHECK_MSG(fabsf(norm_x - norm_y) <= 1e-4f * norm_x, "%s: rotation changed the norm", what);
        kvtc_rope_rotate(s, y, positions[k], true);
        float worst = 0;
        for (uint32_t i = 0; i < s->head_dim; i++)
            worst = fmaxf(worst, fabsf(x[i] - y[i]));
        CHECK_MSG(worst <= 1e-5f, "%s: undo(redo(x)) differs by %g at position %lld", what,
                  worst, (long long)positions[k]);
    }
}

static void check_rotation(const kvtc_model_shape *s, const float in[4], const float want[4],
                           int64_t pos, const char *what)
{
    float x[4];
    memcpy(x, in, sizeof x);
    kvtc_rope_rotate(s, x, pos, false);
    for (int i = 0; i < 4; i++)
        CHECK_MSG(fabsf(x[i] - want[i]) <= 1e-6f, "%s: element %d is %.8f, want %.8f", what, i,
                  x[i], want[i]);
}

/* Rows gathered from a cache whose keys were rotated at pos0 + t equal the
 * unrotated vectors: gather undoes RoPE at the true positions. */
static void check_gather_undoes_rope(void)
{
    kvtc_model_shape s = {2, 2, 8, KVTC_ROPE_NEOX, 6, 10000.0, 0.5};
    const uint32_t n = 5;
    const int64_t pos0 = 1234;
    kvtc_error err;
    kvtc_cache *c;
    CHECK_OK(kvtc_cache_create(&s, KVTC_F32, n, pos0, &c, &err), &err);
    if (!CHECK(c != NULL))
        return;
    const kvtc_model_shape *cs = kvtc_cache_shape(c);
    size_t p = (size_t)kvtc_shape_features(cs);
    float plain[5 * 32], rows[5 * 32];
    test_rng r;
    rng_seed(&r, 7);
    for (size_t i = 0; i < n * p; i++)
        plain[i] = (float)rng_gaussian(&r);
    for (uint32_t l = 0; l < cs->n_layer; l++) {
        float *layer = kvtc_cache_data(c, KVTC_KEY, l);
        for (uint32_t h = 0; h < cs->n_kv_head; h++)
            for (uint32_t t = 0; t < n; t++) {
                float *dst = layer + ((size_t)h * n + t) * cs->head_dim;
                memcpy(dst, plain + t * p + ((size_t)l * cs->n_kv_head + h) * cs->head_dim,
                       cs->head_dim * sizeof(float));
                kvtc_rope_rotate(cs, dst, pos0 + t, false);
            }
    }
    kvtc_cache_gather_rows(c, KVTC_KEY, 1, n - 1, rows);
    float worst = 0;
    for (size_t i = 0; i < (n - 1) * p; i++)
        worst = fmaxf(worst, fabsf(rows[i] - plain[p + i]));
    CHECK_MSG(worst <= 1e-5f, "gathered key rows differ from the unrotated ones by %g", worst);
    kvtc_cache_free(c);
}

int main(void)
{
    kvtc_model_shape inter = shape_of(KVTC_ROPE_INTERLEAVED, 64, 0, 10000.0, 0);
    kvtc_model_shape neox = shape_of(KVTC_ROPE_NEOX, 128, 0, 1000000.0, 0);
    kvtc_model_shape partial_inter = shape_of(KVTC_ROPE_INTERLEAVED, 64, 32, 10000.0, 0.25);
    kvtc_model_shape partial_neox = shape_of(KVTC_ROPE_NEOX, 96, 64, 500000.0, 0);
    kvtc_model_shape none = shape_of(KVTC_ROPE_NONE, 64, 0, 0, 0);
    check_identity(&inter, "interleaved");
    check_identity(&neox, "neox");
    check_identity(&partial_inter, "interleaved, rope_dims 32 of 64, freq_scale 0.25");
    check_identity(&partial_neox, "neox, rope_dims 64 of 96");
    check_identity(&none, "none");

    /* head_dim 4, theta 10000: pair 0 turns by pos rad, pair 1 by pos/100 rad. */
    const float c1 = 0.5403023058681398f, s1 = 0.8414709848078965f;
    const float c01 = 0.9999500004166653f, s01 = 0.009999833334166665f;
    const float in[4] = {1, 0, 0, 1};
    kvtc_model_shape i4 = shape_of(KVTC_ROPE_INTERLEAVED, 4, 0, 10000.0, 0);
    kvtc_model_shape n4 = shape_of(KVTC_ROPE_NEOX, 4, 0, 10000.0, 0);
    check_rotation(&i4, in, (const float[4]){c1, s1, -s01, c01}, 1, "interleaved pos 1");
    check_rotation(&n4, in, (const float[4]){c1, -s01, s1, c01}, 1, "neox pos 1");
    /* Only the first pair rotates (rope_dims 2, frequency 1); freq_scale 0.5 at pos 2 is 1 rad. */
    kvtc_model_shape i4p = shape_of(KVTC_ROPE_INTERLEAVED, 4, 2, 10000.0, 0.5);
    check_rotation(&i4p, (const float[4]){1, 0, 3, 4}, (const float[4]){c1, s1, 3, 4}, 2,
                   "interleaved partial, freq_scale 0.5, pos 2");
    check_rotation(&n4, in, in, 0, "position 0 is the identity");
    kvtc_model_shape n4none = shape_of(KVTC_ROPE_NONE, 4, 0, 10000.0, 0);
    check_rotation(&n4none, in, in, 5, "rope none is the identity");

    check_gather_undoes_rope();
    return test_summary("test_rope");
}
