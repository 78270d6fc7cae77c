/* ops/cpu/fast_moe.c - the routed SwiGLU experts on the fast backend.
 *
 * Tokens are grouped per expert: each selected expert gathers its tokens into
 * one block and runs three threaded matmuls over it, so its weights stream
 * once per block however many tokens chose it (decode: once per token, only
 * the k routed experts). Experts run in ascending id order and scatter their
 * weighted outputs in that order, so results don't depend on the threads.
 */
#include "ops/cpu/fast.h"

#include <string.h>

typedef struct {
    int32_t *count; /* [E] tokens routed to each expert */
    int32_t *start; /* [E + 1] offsets into rows */
    int32_t *rows;  /* [T k] entries t * k + j, grouped by expert */
    float *xe, *ge, *ue, *ye; /* [T, H], [T, I], [T, I], [T, H] */
} moe_ws;

/* Carve the shared slot; false when out of memory. */
static bool moe_ws_get(dr_cpu_ctx *c, moe_ws *w, int T, int k, int E, int H, int I) {
    size_t ints = 2 * (size_t)E + 1 + (size_t)T * k, floats = (size_t)T * (2 * (size_t)H + 2 * (size_t)I);
    char *p = dr_cpu_shared_buf(c, DR_SHARED_MOE, ints * 4 + floats * 4 + 64);
    if (!p)
        return false;
    w->count = (int32_t *)p;
    w->start = w->count + E;
    w->rows = w->start + E + 1;
    w->xe = (float *)(w->rows + (size_t)T * k);
    w->ge = w->xe + (size_t)T * H;
    w->ue = w->ge + (size_t)T * I;
    w->ye = w->ue + (size_t)T * I;
    return true;
}

/* Counting sort of the (token, slot) entries by expert id. */
static void group_by_expert(moe_ws *w, const int32_t *idx, int T, int k, int E) {
    memset(w->count, 0, (size_t)E * sizeof *w->count);
    for (int i = 0; i < T * k; i++)
        w->count[idx[i]]++;
    w->start[0] = 0;
    for (int e = 0; e < E; e++)
        w->start[e + 1] = w->start[e] + w->count[e];
    for (int e = 0; e < E; e++)
        w->count[e] = w->start[e]; /* reused as the fill cursor */
    for (int i = 0; i < T * k; i++)
        w->rows[w->count[idx[i]]++] = i;
}

void dr_fast_moe_experts(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const dr_expert *experts, int E, int T, int k, int H, int I, float *ws) {
    dr_cpu_ctx *c = ctx;
    moe_ws w;
    if (!moe_ws_get(c, &w, T, k, E, H, I)) {
        dr_cpu_moe_experts(NULL, y, x, idx, wts, experts, E, T, k, H, I, ws);
        return;
    }
    group_by_expert(&w, idx, T, k, E);
    for (int e = 0; e < E; e++) {
        const int n = w.start[e + 1] - w.start[e];
        if (n == 0)
            continue; /* only routed experts are computed */
        const int32_t *rows = w.rows + w.start[e];
        for (int r = 0; r < n; r++)
            memcpy(w.xe + (size_t)r * H, x + (size_t)(rows[r] / k) * H, (size_t)H * sizeof(float));
        float *const gu[2] = {w.ge, w.ue}; /* one parallel loop, x prepared once */
        const dr_tensor *const wgu[2] = {&experts[e].gate, &experts[e].up};
        dr_fast_matmul_n(c, 2, gu, w.xe, wgu, n);
        dr_fast_swiglu(c, w.ge, w.ge, w.ue, (size_t)n * I);
        dr_fast_matmul(c, w.ye, w.ge, &experts[e].down, n);
        for (int r = 0; r < n; r++) /* y_t += w_tj * expert(x_t) */
            c->k->axpy(y + (size_t)(rows[r] / k) * H, wts[rows[r]], w.ye + (size_t)r * H, H);
    }
}
