/* ops/cpu/fast_moe.c - the routed SwiGLU experts on the fast backend.
 *
 * Tokens are grouped per expert: each selected expert gathers its tokens into
 * one block and runs three threaded matmuls over it, so its weights stream
 * once per block however many tokens chose it (decode: once per token, only
 * the k routed experts). Experts run in ascending id order and scatter their
 * weighted outputs in that order, so results don't depend on the threads.
 *
 * Decode (a few tokens) runs every routed expert in the same two parallel
 * loops, gate/up of all, then down of all, instead of two loops per expert:
 * an expert's matrices are ~1-2 MB at 4 bits, and a barrier per matrix left
 * the threads waiting for the slower one and starting each matrix's stream
 * cold (docs/PERFORMANCE.md, CPU, session 22). Each matrix is still computed
 * as dr_fast_matmul computes it, and the scatter order is the same.
 */
#include "ops/cpu/fast.h"

#include <string.h>

typedef struct {
    int32_t *count; /* [E] tokens routed to each expert */
    int32_t *start; /* [E + 1] offsets into rows */
    int32_t *rows;  /* [T k] entries t * k + j, grouped by expert */
    float *xe, *ge, *ue, *ye; /* [T, H], [T, I], [T, I], [T, H] */
} moe_ws;

/* Up to this many tokens, the routed experts run batched (above); a block
 * of T tokens routes to at most T k experts, each with its gate, up and
 * down in one batch. */
#define BATCH_T 4
#define BATCH_MAX 40

/* Carve the shared slot for blocks of `rows` token rows; false when out of
 * memory. */
static bool moe_ws_get(dr_cpu_ctx *c, moe_ws *w, int T, int k, int E, int H, int I, int rows) {
    size_t ints = 2 * (size_t)E + 1 + (size_t)T * k, floats = (size_t)rows * (2 * (size_t)H + 2 * (size_t)I);
    char *p = dr_cpu_shared_buf(c, DR_SHARED_MOE, ints * 4 + floats * 4 + 64);
    if (!p)
        return false;
    w->count = (int32_t *)p;
    w->start = w->count + E;
    w->rows = w->start + E + 1;
    w->xe = (float *)(w->rows + (size_t)T * k);
    w->ge = w->xe + (size_t)rows * H;
    w->ue = w->ge + (size_t)rows * I;
    w->ye = w->ue + (size_t)rows * I;
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

/* Expert e's block of n rows: its tokens' x rows gathered at xe, or x itself
 * when every token of the block chose e (then the experts share x's
 * preparation). */
static const float *expert_x(const float *x, const int32_t *rows, int n, int T, int k, int H, float *xe) {
    if (n == T)
        return x; /* rows are the tokens in order: group_by_expert is stable */
    for (int r = 0; r < n; r++)
        memcpy(xe + (size_t)r * H, x + (size_t)(rows[r] / k) * H, (size_t)H * sizeof(float));
    return xe;
}

/* y_t += w_tj * expert(x_t) for expert rows [rows, rows + n) of ye */
static void scatter(dr_cpu_ctx *c, float *y, const float *ye, const int32_t *rows, int n, const float *wts, int k,
                    int H) {
    for (int r = 0; r < n; r++)
        c->k->axpy(y + (size_t)(rows[r] / k) * H, wts[rows[r]], ye + (size_t)r * H, H);
}

/* Every routed expert of a small block in two parallel loops (see the top).
 * Routed expert j (ascending ids) owns rows [r[j], r[j] + n[j]) of the
 * gathered blocks. */
static void experts_batched(dr_cpu_ctx *c, moe_ws *w, float *y, const float *x, const float *wts,
                            const dr_expert *experts, int E, int T, int k, int H, int I) {
    int ids[BATCH_MAX / 2], n[BATCH_MAX / 2], r[BATCH_MAX / 2 + 1], m = 0;
    r[0] = 0;
    for (int e = 0; e < E; e++)
        if (w->start[e + 1] > w->start[e]) {
            ids[m] = e, n[m] = w->start[e + 1] - w->start[e];
            r[m + 1] = r[m] + n[m];
            m++;
        }
    float *ys[BATCH_MAX] = {0};
    const float *xs[BATCH_MAX] = {0};
    const dr_tensor *ws[BATCH_MAX] = {0};
    int Ts[BATCH_MAX] = {0};
    for (int j = 0; j < m; j++) { /* gate and up of each */
        const float *xe = expert_x(x, w->rows + w->start[ids[j]], n[j], T, k, H, w->xe + (size_t)r[j] * H);
        ys[2 * j] = w->ge + (size_t)r[j] * I, ys[2 * j + 1] = w->ue + (size_t)r[j] * I;
        xs[2 * j] = xs[2 * j + 1] = xe;
        ws[2 * j] = &experts[ids[j]].gate, ws[2 * j + 1] = &experts[ids[j]].up;
        Ts[2 * j] = Ts[2 * j + 1] = n[j];
    }
    dr_fast_matmul_batch(c, 2 * m, ys, xs, ws, Ts);
    dr_fast_swiglu(c, w->ge, w->ge, w->ue, (size_t)r[m] * I);
    for (int j = 0; j < m; j++) { /* down of each */
        ys[j] = w->ye + (size_t)r[j] * H, xs[j] = w->ge + (size_t)r[j] * I;
        ws[j] = &experts[ids[j]].down, Ts[j] = n[j];
    }
    dr_fast_matmul_batch(c, m, ys, xs, ws, Ts);
    for (int j = 0; j < m; j++) /* in ascending ids, as the unbatched loop */
        scatter(c, y, w->ye + (size_t)r[j] * H, w->rows + w->start[ids[j]], n[j], wts, k, H);
}

void dr_fast_moe_experts(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const dr_expert *experts, int E, int T, int k, int H, int I, float *ws) {
    dr_cpu_ctx *c = ctx;
    moe_ws w;
    const bool batched = T <= BATCH_T && 2 * T * k <= BATCH_MAX;
    if (!moe_ws_get(c, &w, T, k, E, H, I, batched ? T * k : T)) {
        dr_cpu_moe_experts(NULL, y, x, idx, wts, experts, E, T, k, H, I, ws);
        return;
    }
    group_by_expert(&w, idx, T, k, E);
    if (batched) {
        experts_batched(c, &w, y, x, wts, experts, E, T, k, H, I);
        return;
    }
    for (int e = 0; e < E; e++) {
        const int n = w.start[e + 1] - w.start[e];
        if (n == 0)
            continue; /* only routed experts are computed */
        const int32_t *rows = w.rows + w.start[e];
        const float *xe = expert_x(x, rows, n, T, k, H, w.xe);
        float *const gu[2] = {w.ge, w.ue}; /* one parallel loop, x prepared once */
        const dr_tensor *const wgu[2] = {&experts[e].gate, &experts[e].up};
        dr_fast_matmul_n(c, 2, gu, xe, wgu, n);
        dr_fast_swiglu(c, w.ge, w.ge, w.ue, (size_t)n * I);
        dr_fast_matmul(c, w.ye, w.ge, &experts[e].down, n);
        scatter(c, y, w.ye, rows, n, wts, k, H);
    }
}
