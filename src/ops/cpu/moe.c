/* ops/cpu/moe.c - router (fp32 softmax, top-k, renormalise) and the routed
 * SwiGLU experts (MODEL.md 6.2). Only the selected experts are computed. */
#include "ops/cpu/cpu.h"

#include <math.h>

void dr_cpu_moe_route(void *ctx, int32_t *idx, float *wts, const float *logits, int T, int E, int k,
                      bool renorm) {
    (void)ctx;
    for (int t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * E;
        float mx = -INFINITY, sum = 0.0f;
        for (int e = 0; e < E; e++)
            mx = l[e] > mx ? l[e] : mx;
        for (int e = 0; e < E; e++)
            sum += expf(l[e] - mx);
        int32_t *it = idx + (size_t)t * k;
        float *wt = wts + (size_t)t * k, picked = 0.0f;
        for (int j = 0; j < k; j++) { /* k-th best by selection; ties keep the lower id */
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool used = false;
                for (int u = 0; u < j; u++)
                    used |= it[u] == e;
                if (!used && (best < 0 || l[e] > l[best]))
                    best = e;
            }
            it[j] = best;
            wt[j] = expf(l[best] - mx) / sum;
            picked += wt[j];
        }
        if (renorm)
            for (int j = 0; j < k; j++)
                wt[j] /= picked;
    }
}

void dr_cpu_moe_experts(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                        const dr_expert *experts, int E, int T, int k, int H, int I, float *ws) {
    (void)E; /* experts[] has E entries; moe_route only picks ids below E */
    float *gate = ws, *up = ws + I, *out = ws + 2 * (size_t)I;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * H;
        float *yt = y + (size_t)t * H;
        for (int j = 0; j < k; j++) {
            const dr_expert *ex = &experts[idx[(size_t)t * k + j]];
            dr_cpu_matmul(ctx, gate, xt, &ex->gate, 1);
            dr_cpu_matmul(ctx, up, xt, &ex->up, 1);
            dr_cpu_swiglu(ctx, gate, gate, up, (size_t)I);
            dr_cpu_matmul(ctx, out, gate, &ex->down, 1);
            float w = wts[(size_t)t * k + j];
            for (int i = 0; i < H; i++)
                yt[i] += w * out[i];
        }
    }
}
