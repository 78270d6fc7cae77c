/* ops/cpu/attention.c - partial NeoX RoPE and causal GQA attention over the
 * KV cache (MODEL.md 4, 4.1). */
#include "ops/cpu/cpu.h"

#include <math.h>

/* Rotate pairs (i, i + d_rot/2) inside the first d_rot dims of each head.
 * The angle table is fp32 as in transformers: inv_freq = 1/theta^(2i/d_rot),
 * angle = float(pos) * inv_freq, both rounded to fp32. */
void dr_cpu_rope(void *ctx, float *x, int T, int n_heads, int d_head, int d_rot, int pos0, float theta) {
    (void)ctx;
    const int half = d_rot / 2;
    for (int t = 0; t < T; t++) {
        float pos = (float)(pos0 + t);
        for (int i = 0; i < half; i++) {
            float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)d_rot);
            float ang = pos * inv_freq;
            float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < n_heads; h++) {
                float *u = x + ((size_t)t * n_heads + h) * d_head;
                float u1 = u[i], u2 = u[i + half];
                u[i] = u1 * c - u2 * s;
                u[i + half] = u2 * c + u1 * s;
            }
        }
    }
}

/* out [T, nH, hd] = softmax(q K^T * scale, causal) V, per query head h using
 * kv head h / (nH / nKV). Caches are [n_ctx, nKV, hd]. */
void dr_cpu_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                      int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws) {
    (void)ctx;
    const int group = n_heads / n_kv_heads;
    const size_t kv_stride = (size_t)n_kv_heads * d_head;
    for (int t = 0; t < T; t++) {
        const int n_keys = pos0 + t + 1; /* causal: keys 0 .. own position */
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + ((size_t)t * n_heads + h) * d_head;
            const float *kh = k_cache + (size_t)(h / group) * d_head;
            const float *vh = v_cache + (size_t)(h / group) * d_head;
            float mx = -INFINITY;
            for (int s = 0; s < n_keys; s++) {
                const float *ks = kh + (size_t)s * kv_stride;
                float dot = 0.0f;
                for (int i = 0; i < d_head; i++)
                    dot += qh[i] * ks[i];
                ws[s] = dot * scale;
                if (ws[s] > mx)
                    mx = ws[s];
            }
            float sum = 0.0f; /* softmax in fp32 */
            for (int s = 0; s < n_keys; s++) {
                ws[s] = expf(ws[s] - mx);
                sum += ws[s];
            }
            float *oh = out + ((size_t)t * n_heads + h) * d_head;
            for (int i = 0; i < d_head; i++)
                oh[i] = 0.0f;
            for (int s = 0; s < n_keys; s++) {
                const float *vs = vh + (size_t)s * kv_stride;
                float p = ws[s] / sum;
                for (int i = 0; i < d_head; i++)
                    oh[i] += p * vs[i];
            }
        }
    }
}
