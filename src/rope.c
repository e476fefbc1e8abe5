/* Rotary position embedding: undone on keys before projection (the basis is
 * position-free) and redone after reconstruction. */
#include "kernels.h"
#include "kvtc_internal.h"

#include <math.h>

static uint32_t rope_dims_of(const kvtc_model_shape *s)
{
    return s->rope_dims ? s->rope_dims : s->head_dim;
}

void kvtc_rope_freqs(const kvtc_model_shape *shape, double *freq)
{
    uint32_t dims = rope_dims_of(shape);
    for (uint32_t i = 0; i < dims / 2; i++)
        freq[i] = pow(shape->rope_theta, -2.0 * (double)i / (double)dims);
}

void kvtc_rope_angles_at(const kvtc_model_shape *shape, const double *freq, int64_t pos,
                         float *cos_out, float *sin_out)
{
    uint32_t dims = rope_dims_of(shape);
    double scale = shape->rope_freq_scale > 0 ? shape->rope_freq_scale : 1.0;
    for (uint32_t i = 0; i < dims / 2; i++) {
        double angle = (double)pos * scale * freq[i];
        cos_out[i] = (float)cos(angle);
        sin_out[i] = (float)sin(angle);
    }
}

void kvtc_rope_angles(const kvtc_model_shape *shape, int64_t pos, float *cos_out, float *sin_out)
{
    double freq[512]; /* rope_dims <= 1024 is enforced by kvtc_shape_check */
    kvtc_rope_freqs(shape, freq);
    kvtc_rope_angles_at(shape, freq, pos, cos_out, sin_out);
}

void kvtc_rope_apply(const kvtc_model_shape *shape, float *head, const float *cos_t,
                     const float *sin_t, bool inverse)
{
    uint32_t half = rope_dims_of(shape) / 2;
    float sign = inverse ? -1.0f : 1.0f;
    /* One loop per style, each with unit-stride (NeoX) or pairwise (interleaved)
     * access the compiler vectorizes; the same operations in the same order. */
    if (shape->rope_style == KVTC_ROPE_NEOX) {
        float *restrict a = head, *restrict b = head + half;
        for (uint32_t i = 0; i < half; i++) {
            float c = cos_t[i], s = sign * sin_t[i];
            float x0 = a[i], x1 = b[i];
            a[i] = x0 * c - x1 * s;
            b[i] = x0 * s + x1 * c;
        }
    } else if (shape->rope_style == KVTC_ROPE_INTERLEAVED &&
               kvtc_kernels_level() >= KVTC_KERNELS_AVX2) {
        kvtc_rope_interleaved_avx2(head, cos_t, sin_t, half, inverse);
    } else if (shape->rope_style == KVTC_ROPE_INTERLEAVED) {
        for (uint32_t i = 0; i < half; i++) {
            float c = cos_t[i], s = sign * sin_t[i];
            float x0 = head[2 * i], x1 = head[2 * i + 1];
            head[2 * i] = x0 * c - x1 * s;
            head[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

void kvtc_rope_rotate(const kvtc_model_shape *shape, float *head, int64_t pos, bool inverse)
{
    float c[512], s[512]; /* rope_dims <= 1024 is enforced by kvtc_shape_check */
    kvtc_rope_angles(shape, pos, c, s);
    kvtc_rope_apply(shape, head, c, s, inverse);
}
