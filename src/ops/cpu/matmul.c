/* ops/cpu/matmul.c - y = x W^T for F32/F16/BF16 weights, and the embedding
 * lookup. Reference code: fp32 accumulation, weights widened in blocks of 64
 * so each block of a row is converted once per tile of 8 tokens. */
#include "ops/cpu/cpu.h"
#include "ops/cpu/quant.h"

#define MM_KB 64 /* weight elements widened at a time */
#define MM_TT 8  /* tokens sharing one widened block */

static void widen(float *dst, const void *row, dr_dtype dt, int i0, int n) {
    for (int i = 0; i < n; i++)
        dst[i] = dr_load_f32(row, dt, (size_t)(i0 + i));
}

/* W [d, n] @ x [T, n] -> y [T, d] */
void dr_cpu_matmul(void *ctx, float *y, const float *x, const dr_tensor *w, int T) {
    (void)ctx;
    const int d = (int)w->ne[w->ndim - 2], n = (int)w->ne[w->ndim - 1];
    if (w->q.bits) {
        dr_cpu_matmul_q_rows(y, x, w, T, 0, d);
        return;
    }
    float wb[MM_KB];
    for (int r = 0; r < d; r++) {
        const void *row = dr_tensor_row(w, r);
        for (int t0 = 0; t0 < T; t0 += MM_TT) {
            int nt = T - t0 < MM_TT ? T - t0 : MM_TT;
            float acc[MM_TT] = {0};
            for (int i0 = 0; i0 < n; i0 += MM_KB) {
                int nb = n - i0 < MM_KB ? n - i0 : MM_KB;
                widen(wb, row, w->dtype, i0, nb);
                for (int t = 0; t < nt; t++) {
                    const float *xt = x + (size_t)(t0 + t) * n + i0;
                    float s = 0.0f;
                    for (int i = 0; i < nb; i++)
                        s += wb[i] * xt[i];
                    acc[t] += s;
                }
            }
            for (int t = 0; t < nt; t++)
                y[(size_t)(t0 + t) * d + r] = acc[t];
        }
    }
}

/* x [T, H] = E[ids[t]] */
void dr_cpu_embed(void *ctx, float *x, const dr_tensor *emb, const int32_t *ids, int T) {
    (void)ctx;
    const int H = (int)emb->ne[1];
    if (emb->q.bits) {
        dr_cpu_embed_q(x, emb, ids, T);
        return;
    }
    for (int t = 0; t < T; t++)
        widen(x + (size_t)t * H, dr_tensor_row(emb, ids[t]), emb->dtype, 0, H);
}
