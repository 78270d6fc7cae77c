/* ops/cpu/matmul_quant.c - reference kernels for MLX affine-quantized
 * weights: each element is dequantized (w = scale * q + bias) on the fly and
 * accumulated in fp32. */
#include "ops/cpu/quant.h"

#include <string.h>

float dr_q_get(const dr_tensor *w, int64_t r, int64_t i) {
    const int bits = w->q.bits, per_word = 32 / bits;
    const int64_t n = w->ne[w->ndim - 1], words = n / per_word, groups = n / w->q.group_size;
    uint32_t word;
    memcpy(&word, (const unsigned char *)w->data + ((size_t)r * words + (size_t)(i / per_word)) * 4, 4);
    uint32_t q = (word >> ((i % per_word) * bits)) & ((1u << bits) - 1u);
    size_t g = (size_t)r * groups + (size_t)(i / w->q.group_size);
    float scale = dr_load_f32(w->q.scales, w->q.sb_dtype, g), bias = dr_load_f32(w->q.biases, w->q.sb_dtype, g);
    return scale * (float)q + bias;
}

void dr_cpu_matmul_q_rows(float *y, const float *x, const dr_tensor *w, int T, int r0, int r1) {
    const int64_t d = w->ne[w->ndim - 2], n = w->ne[w->ndim - 1];
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < T; t++) {
            float s = 0.0f;
            for (int64_t i = 0; i < n; i++)
                s += dr_q_get(w, r, i) * x[(size_t)t * n + i];
            y[(size_t)t * d + r] = s;
        }
}

void dr_cpu_embed_q(float *x, const dr_tensor *emb, const int32_t *ids, int T) {
    const int64_t H = emb->ne[1];
    for (int t = 0; t < T; t++)
        for (int64_t i = 0; i < H; i++)
            x[(size_t)t * H + i] = dr_q_get(emb, ids[t], i);
}
