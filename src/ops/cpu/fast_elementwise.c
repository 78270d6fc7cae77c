/* ops/cpu/fast_elementwise.c - the norms and activations that touch every
 * activation (RMSNorm, gated RMSNorm, SwiGLU, sigmoid gate), threaded over
 * rows or element ranges when the block is large enough to pay for it.
 * Each element is computed as the reference does; the activations take exp
 * from the SIMD table (simd.h silu, swiglu, sigmoid_mul: within a few ulp of
 * expf, exact at the scalar level), since expf one element at a time was
 * the largest serial step of a decoded layer (~20 us for SwiGLU's 3584
 * elements of the 0.8B, session 16). */
#include "ops/cpu/fast.h"

#include "util/argmax.h"

#include <math.h>

#define EW_MIN 32768  /* elements below which the reference runs unthreaded */
#define EW_CHUNK 8192 /* elements per task */

typedef struct {
    const dr_simd *k;
    float *y;
    const float *a, *b, *w;
    int rows, n;
    size_t len;
    float eps;
} ew_job;

static int row_tasks(int rows, int n) {
    int per = EW_CHUNK / (n > 0 ? n : 1);
    per = per < 1 ? 1 : per;
    return (rows + per - 1) / per;
}

static void row_range(const ew_job *j, int task, int *r0, int *r1) {
    int per = EW_CHUNK / (j->n > 0 ? j->n : 1);
    per = per < 1 ? 1 : per;
    *r0 = task * per;
    *r1 = *r0 + per < j->rows ? *r0 + per : j->rows;
}

static void rms_task(void *arg, int task, int thread) {
    const ew_job *j = arg;
    (void)thread;
    int r0, r1;
    row_range(j, task, &r0, &r1);
    dr_cpu_rmsnorm(NULL, j->y + (size_t)r0 * j->n, j->a + (size_t)r0 * j->n, j->w, r1 - r0, j->n, j->eps);
}

void dr_fast_rmsnorm(void *ctx, float *y, const float *x, const float *gain, int rows, int n, float eps) {
    dr_cpu_ctx *c = ctx;
    if ((size_t)rows * n < EW_MIN) {
        dr_cpu_rmsnorm(ctx, y, x, gain, rows, n, eps);
        return;
    }
    ew_job j = {.y = y, .a = x, .w = gain, .rows = rows, .n = n, .eps = eps};
    dr_pool_run(c->pool, row_tasks(rows, n), rms_task, &j);
}

/* x += d, then y = rmsnorm(x) for rows [r0, r1): each row read while in cache. */
static void add_rms_rows(float *x, const float *d, float *y, const float *gain, int r0, int r1, int n, float eps) {
    for (int r = r0; r < r1; r++) {
        float *xr = x + (size_t)r * n;
        const float *dr = d + (size_t)r * n;
        for (int i = 0; i < n; i++)
            xr[i] += dr[i];
        dr_cpu_rmsnorm(NULL, y + (size_t)r * n, xr, gain, 1, n, eps);
    }
}

typedef struct {
    float *x, *y;
    const float *d, *gain;
    int rows, n;
    float eps;
} addrms_job;

static void addrms_task(void *arg, int task, int thread) {
    const addrms_job *j = arg;
    (void)thread;
    ew_job e = {.rows = j->rows, .n = j->n};
    int r0, r1;
    row_range(&e, task, &r0, &r1);
    add_rms_rows(j->x, j->d, j->y, j->gain, r0, r1, j->n, j->eps);
}

void dr_fast_add_rmsnorm(void *ctx, float *x, const float *d, float *y, const float *gain, int rows, int n,
                         float eps) {
    dr_cpu_ctx *c = ctx;
    if ((size_t)rows * n < EW_MIN) { /* decode: no parallel loop at all */
        add_rms_rows(x, d, y, gain, 0, rows, n, eps);
        return;
    }
    addrms_job j = {.x = x, .y = y, .d = d, .gain = gain, .rows = rows, .n = n, .eps = eps};
    dr_pool_run(c->pool, row_tasks(rows, n), addrms_task, &j);
}

#define GATE_CHUNK 256 /* silu(z) computed this many elements at a time */

void dr_fast_gated_rows(const dr_simd *k, float *y, const float *x, const float *z, const float *w, int rows, int n,
                        float eps) {
    float s[GATE_CHUNK];
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n, *zr = z + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float ss = 0.0f; /* the reference's sum, in its order */
        for (int i = 0; i < n; i++)
            ss += xr[i] * xr[i];
        const float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i0 = 0; i0 < n; i0 += GATE_CHUNK) { /* y may be x or z: each chunk read before written */
            const int m = n - i0 < GATE_CHUNK ? n - i0 : GATE_CHUNK;
            k->silu(s, zr + i0, m);
            for (int i = 0; i < m; i++)
                yr[i0 + i] = w[i0 + i] * (xr[i0 + i] * inv) * s[i];
        }
    }
}

static void grms_task(void *arg, int task, int thread) {
    const ew_job *j = arg;
    (void)thread;
    int r0, r1;
    row_range(j, task, &r0, &r1);
    const size_t o = (size_t)r0 * j->n;
    dr_fast_gated_rows(j->k, j->y + o, j->a + o, j->b + o, j->w, r1 - r0, j->n, j->eps);
}

void dr_fast_gated_rmsnorm(void *ctx, float *y, const float *x, const float *z, const float *w, int rows, int n,
                           float eps) {
    dr_cpu_ctx *c = ctx;
    if ((size_t)rows * n < EW_MIN) {
        dr_fast_gated_rows(c->k, y, x, z, w, rows, n, eps);
        return;
    }
    ew_job j = {.k = c->k, .y = y, .a = x, .b = z, .w = w, .rows = rows, .n = n, .eps = eps};
    dr_pool_run(c->pool, row_tasks(rows, n), grms_task, &j);
}

static size_t span(const ew_job *j, int task, size_t *i0) {
    *i0 = (size_t)task * EW_CHUNK;
    return j->len - *i0 < EW_CHUNK ? j->len - *i0 : EW_CHUNK;
}

static void swiglu_task(void *arg, int task, int thread) {
    const ew_job *j = arg;
    (void)thread;
    size_t i0, n = span(j, task, &i0);
    j->k->swiglu(j->y + i0, j->a + i0, j->b + i0, (int)n);
}

/* fn over j->len elements in EW_CHUNK spans: on this thread below EW_MIN
 * (a parallel loop would cost more than it saves), else on the pool. */
static void run_spans(dr_cpu_ctx *c, dr_pool_fn fn, ew_job *j) {
    const int tasks = (int)((j->len + EW_CHUNK - 1) / EW_CHUNK);
    if (j->len < EW_MIN) {
        for (int t = 0; t < tasks; t++)
            fn(j, t, 0);
        return;
    }
    dr_pool_run(c->pool, tasks, fn, j);
}

void dr_fast_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n) {
    dr_cpu_ctx *c = ctx;
    ew_job j = {.k = c->k, .y = out, .a = gate, .b = up, .len = n};
    run_spans(c, swiglu_task, &j);
}

static void sigmul_task(void *arg, int task, int thread) {
    const ew_job *j = arg;
    (void)thread;
    size_t i0, n = span(j, task, &i0);
    j->k->sigmoid_mul(j->y + i0, j->a + i0, (int)n);
}

void dr_fast_sigmoid_mul(void *ctx, float *x, const float *gate, size_t n) {
    dr_cpu_ctx *c = ctx;
    ew_job j = {.k = c->k, .y = x, .a = gate, .len = n};
    run_spans(c, sigmul_task, &j);
}

/* ---- the greedy pick (ops.h argmax) on the logits where they are ---- */

#define AM_MIN 65536  /* logits below which one thread scans them */
#define AM_PIECES 16  /* pieces of a threaded scan */

typedef struct {
    const float *x;
    int n, per;
    int32_t best[AM_PIECES];
} am_job;

static void am_task(void *arg, int task, int thread) {
    am_job *j = arg;
    (void)thread;
    const int i0 = task * j->per, i1 = i0 + j->per < j->n ? i0 + j->per : j->n;
    j->best[task] = task == 0 ? dr_argmax_f32(j->x, i1) : dr_argmax_f32_from(j->x, i0, i1);
}

/* dr_argmax_f32 of x [n], read in place (no copy to the host: it is host
 * memory): pieces scanned in parallel, then combined in order with `>`,
 * which keeps its rule for ties and NaN (util/argmax.h). */
bool dr_fast_argmax(void *ctx, int32_t *out, const float *x, int n) {
    dr_cpu_ctx *c = ctx;
    if (n < AM_MIN) {
        *out = dr_argmax_f32(x, n);
        return true;
    }
    am_job j = {.x = x, .n = n, .per = (n + AM_PIECES - 1) / AM_PIECES};
    dr_pool_run(c->pool, AM_PIECES, am_task, &j);
    int32_t best = j.best[0];
    for (int p = 1; p < AM_PIECES; p++)
        if (j.best[p] >= 0 && x[j.best[p]] > x[best])
            best = j.best[p];
    *out = best;
    return true;
}
