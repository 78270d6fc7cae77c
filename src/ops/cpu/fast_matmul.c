/* ops/cpu/fast_matmul.c - y = x W^T on the fast backend: threaded over
 * blocks of weight rows, SIMD through the dr_simd table.
 *
 * Decode (T < GEMV_MAX_T): each weight row is streamed once from memory
 * (with a software prefetch c->gemv_pf bytes ahead) and widened in
 * registers; BF16 rows at the AVX2 and AVX-512 levels meet x prepared once
 * in pair order (k->bf16_pairs), or, with dr_simd_use_bf16_dot, are
 * multiplied as bf16 against x split into two bf16 halves. Prefill: a block
 * of rows is widened to fp32 once into the thread's scratch and reused by
 * every token through a register tile of 4 rows x 4 tokens. Quantized
 * weights (ops/cpu/quant.h): decode prepares x once (group sums, nibble
 * order) and splits the rows the same way; a few tokens (q_multi) are
 * prepared each and meet every row block in one read of it; more
 * dequantize each row block to fp32 in the thread's scratch and run the
 * same tiles as fp32 weights. BF16 and quantized weights with at least
 * DR_AMX_MIN_T tokens run on the AMX tiles where the CPU has them
 * (ops/cpu/amx.h: x prepared once in three bf16 parts, the same fp32
 * numerics).
 */
#include "ops/cpu/amx.h"
#include "ops/cpu/fast.h"
#include "ops/cpu/quant.h"
#include "ops/cpu/quant_kern.h"

#define GEMV_MAX_T 4  /* below this many tokens, stream weights per token */
/* Weight bytes per decode task: long forward streams per thread. 1 MiB, not
 * 256 KiB (session 19, docs/PERFORMANCE.md): on the 2-core dev VM a pure
 * read in 256 KiB tasks ran ~5% below one in 1 MiB ones, and decode gained
 * 3-5 points of the floor (0.8B q4, 0.8B bf16, 2B q4); on the 16-core Xeon
 * 0.8B bf16 +5-8%, q4 within noise. */
#define GEMV_BYTES (1 << 20)
#define GEMV_MIN_BYTES (32 << 10) /* ... but at least this much when split finer to reach every thread */
#define GEMM_FLOATS 65536 /* widened rows per task: 256 KiB, fits L2 */
#define AMX_W_BYTES (1 << 20) /* bf16 rows per AMX task, at most (amx_rows) */
#define Q_MULTI_MAX_T 64 /* quantized weights: the multi-token GEMV up to this many tokens, */
#define Q_MULTI_AMX_T 32 /* ... or this many where the AMX tiles would take them */
#ifndef Q_PREP_POOL_T /* a measurement build may set it */
#define Q_PREP_POOL_T 8 /* from this many tokens their x is prepared on the pool */
#endif
_Static_assert(Q_MULTI_AMX_T <= Q_MULTI_MAX_T && Q_MULTI_MAX_T <= DR_QK_MULTI_T, "the kernel's token limit");

typedef struct {
    dr_cpu_ctx *c;
    float *y;
    const float *x;
    const dr_tensor *w;
    int T, d, n, rb;
    const uint16_t *hi, *lo; /* x split for vdpbf16ps, or NULL */
    const float *xp;         /* x prepared: by dr_cpu_q_prep (quantized GEMV) or in
                                pair order (BF16 GEMV, k->bf16_pairs), or NULL */
    const uint16_t *xa;      /* x prepared for the AMX tiles (dr_amx_prep), or NULL */
    const float *xg;         /* ... and its group sums (quantized weights) */
} mm_job;

static int rows_of(const mm_job *j, int task, int *r0) {
    *r0 = task * j->rb;
    return j->d - *r0 < j->rb ? j->d - *r0 : j->rb;
}

/* ---- decode: GEMV ---- */

static void gemv_task(void *arg, int task, int thread) {
    const mm_job *j = arg;
    (void)thread;
    const dr_simd *k = j->c->k;
    int r0, nr = rows_of(j, task, &r0);
    float yb[DR_GEMV_ROWS];
    for (int r = r0; r < r0 + nr; r += DR_GEMV_ROWS) {
        int m = r0 + nr - r < DR_GEMV_ROWS ? r0 + nr - r : DR_GEMV_ROWS;
        const void *row = dr_tensor_row(j->w, r);
        for (int t = 0; t < j->T; t++) {
            if (j->hi)
                k->gemv_bf16x2(yb, row, (size_t)j->n, m, j->hi + (size_t)t * j->n, j->lo + (size_t)t * j->n, j->n);
            else if (j->xp)
                k->gemv_bf16p(yb, row, (size_t)j->n, m, j->xp + (size_t)t * j->n, j->n, j->c->gemv_pf);
            else
                k->gemv(yb, row, j->w->dtype, (size_t)j->n, m, j->x + (size_t)t * j->n, j->n, j->c->gemv_pf);
            for (int i = 0; i < m; i++)
                j->y[(size_t)t * j->d + r + i] = yb[i];
        }
    }
}

/* ---- prefill: widened row block x register tiles ---- */

/* Whether the fp32 path of T tokens packs weight panels (gemm_panel): a
 * panel's packing costs about 16 tokens of its products (64 x 1024 on the
 * dev VM: 13 us against 0.8 us a token; widening and the dot tiles: ~5 us
 * and 1.6 us a token), so from 16 tokens on. */
#define PANEL_MIN_T 16
static bool use_panel(const dr_cpu_ctx *c, int T) { return c->k->gemm_panel && T >= PANEL_MIN_T; }

/* Rows r0 .. r0 + nr - 1, all tokens: from 16 tokens panel by panel
 * (packed into this thread's buffer, then gemm_panel), else widened (or
 * dequantized) into it whole, then the fp32 dot tiles. */
static void fp32_rows(const mm_job *j, int r0, int nr, int thread) {
    const dr_simd *k = j->c->k;
    const int n = j->n;
    float *wb = dr_cpu_tbuf(j->c, thread);
    if (use_panel(j->c, j->T)) { /* panel by panel: packed (quantized: dequantized first), then every token */
        for (int r = r0; r < r0 + nr; r += k->panel) {
            const int m = r0 + nr - r < k->panel ? r0 + nr - r : k->panel;
            if (j->w->q.bits) {
                float *rows = wb + (size_t)k->panel * (size_t)n;
                dr_cpu_q_dequant_rows(rows, j->w, r, m);
                k->pack_panel(wb, rows, DR_DT_F32, (size_t)n, m, n);
            } else
                k->pack_panel(wb, dr_tensor_row(j->w, r), j->w->dtype, (size_t)n, m, n);
            k->gemm_panel(j->y + r, (size_t)j->d, wb, m, j->x, (size_t)n, j->T, n);
        }
        return;
    }
    if (j->w->q.bits) /* quantized: dequantized once here, then the same fp32 tiles */
        dr_cpu_q_dequant_rows(wb, j->w, r0, nr);
    else
        for (int r = 0; r < nr; r++)
            k->widen(wb + (size_t)r * n, dr_tensor_row(j->w, r0 + r), j->w->dtype, n);
    for (int t0 = 0; t0 < j->T; t0 += DR_TILE) {
        int nt = j->T - t0 < DR_TILE ? j->T - t0 : DR_TILE;
        for (int r = 0; r < nr; r += DR_TILE) {
            int m = nr - r < DR_TILE ? nr - r : DR_TILE;
            k->tile(j->y + (size_t)t0 * j->d + r0 + r, (size_t)j->d, wb + (size_t)r * n, (size_t)n, m,
                    j->x + (size_t)t0 * n, (size_t)n, nt, n);
        }
    }
}

static void gemm_task(void *arg, int task, int thread) {
    const mm_job *j = arg;
    int r0, nr = rows_of(j, task, &r0);
    fp32_rows(j, r0, nr, thread);
}

/* Several tokens on the AMX tiles (ops/cpu/amx.h): BF16 rows straight from
 * W; quantized rows as bf16 codes and fp32 scales / biases in the thread's
 * buffer, then dr_amx_gemm_q. The last rows of a weight whose row count is
 * not a multiple of 16 take the fp32 path. */
static void amx_task(void *arg, int task, int thread) {
    const mm_job *j = arg;
    int r0, nr = rows_of(j, task, &r0);
    const int full = nr / DR_AMX_ROWS * DR_AMX_ROWS;
    if (full && j->w->q.bits) {
        const int G = j->n / j->w->q.group_size;
        float *tb = dr_cpu_tbuf(j->c, thread), *s = tb + (size_t)full * (size_t)j->n / 2, *b = s + (size_t)full * G;
        uint16_t *codes = (uint16_t *)(void *)tb;
        dr_cpu_q_codes_rows(codes, s, b, j->w, r0, full);
        dr_amx_gemm_q(j->y + r0, (size_t)j->d, codes, s, b, j->w->q.group_size, full, j->xa, j->xg, j->T, j->n);
    } else if (full) {
        dr_amx_gemm(j->y + r0, (size_t)j->d, dr_tensor_row(j->w, r0), (size_t)j->n, full, j->xa, j->T, j->n);
    }
    if (full < nr)
        fp32_rows(j, r0 + full, nr - full, thread);
}

/* Rows per AMX task: about AMX_W_BYTES of bf16 rows, which stay in L2 while
 * the task runs them against one 32-token slice of the prepared x after
 * another (each task reads all of x once, so larger tasks read it fewer
 * times); fewer where that leaves threads idle (at least two tasks a
 * thread); whole blocks of 32 rows. The outputs don't depend on it. */
static int amx_rows(const dr_cpu_ctx *c, int d, int n) {
    const int spread_tasks = 2 * c->n_threads;
    int rb = AMX_W_BYTES / (2 * (n > 0 ? n : 1)), spread = (d + spread_tasks - 1) / spread_tasks;
    rb = (spread < rb ? spread : rb) / 32 * 32;
    return rb < 32 ? 32 : rb;
}

_Static_assert(DR_AMX_MIN_T > 1 && DR_AMX_MIN_T >= GEMV_MAX_T, "plan() tries the tiles before the few-token paths");

/* Whether W [d, n] @ x [T, n] takes the AMX tiles: BF16, or MLX-quantized
 * with groups of whole tile rows. */
static bool use_amx(const dr_tensor *w, int T) {
    const int64_t n = w->ne[w->ndim - 1];
    if (T < DR_AMX_MIN_T || n % DR_AMX_K || !dr_amx_enabled())
        return false;
    return w->q.bits ? w->q.group_size % DR_AMX_K == 0 : w->dtype == DR_DT_BF16;
}

/* Whether T > 1 tokens on quantized w take the multi-token GEMV (each row
 * read once for all of them) rather than rows dequantized for the AMX tiles
 * or the fp32 GEMM: up to Q_MULTI_AMX_T tokens where the tiles would run,
 * else up to Q_MULTI_MAX_T (docs/PERFORMANCE.md, session 23). */
static bool q_multi(const dr_tensor *w, int T) {
    const int most = use_amx(w, T) ? Q_MULTI_AMX_T : Q_MULTI_MAX_T;
    return w->q.bits && T > 1 && T <= most && T <= dr_cpu_q_multi_max(w);
}

/* Bytes of x prepared for the tiles, to the next 64 (its group sums follow). */
static size_t amx_xa_bytes(int T, int n) { return (dr_amx_x_bytes(T, n) + 63) / 64 * 64; }

/* Scratch of the AMX plan: x prepared, then (quantized) its group sums. */
static size_t amx_x_bytes(const dr_tensor *w, int T) {
    const int n = (int)w->ne[w->ndim - 1];
    return amx_xa_bytes(T, n) + (w->q.bits ? dr_amx_group_floats(T, n, w->q.group_size) * sizeof(float) : 0);
}

/* Thread buffer floats fp32_rows wants for tasks of rb rows: a packed
 * panel (and its rows dequantized), or the rows widened. */
static size_t fp32_floats(const dr_cpu_ctx *c, const dr_tensor *w, int rb, int T) {
    const size_t n = (size_t)w->ne[w->ndim - 1];
    if (use_panel(c, T))
        return (size_t)c->k->panel * n * (w->q.bits ? 2 : 1);
    return (size_t)rb * n;
}

/* Thread buffer floats an AMX task of rb rows wants: codes, scales and
 * biases (quantized), and what fp32_rows wants for the last rows. */
static size_t amx_tbuf(const dr_cpu_ctx *c, const dr_tensor *w, int rb, int T) {
    const size_t n = (size_t)w->ne[w->ndim - 1], tail = fp32_floats(c, w, DR_AMX_ROWS, T);
    if (!w->q.bits)
        return tail;
    const size_t q = (size_t)rb * n / 2 + 2 * (size_t)rb * (n / (size_t)w->q.group_size);
    return q > tail ? q : tail;
}

typedef struct {
    uint16_t *xa;
    float *xg; /* or NULL (unquantized) */
    const float *x;
    int T, n, gs;
} amx_prep_job;

/* One block of 16 tokens of x prepared (and its group sums). */
static void amx_prep_task(void *arg, int task, int thread) {
    const amx_prep_job *p = arg;
    (void)thread;
    dr_amx_prep(p->xa, p->x, p->T, p->n, task, task + 1);
    if (p->xg)
        dr_amx_group_sums(p->xg, p->x, p->T, p->n, p->gs, task, task + 1);
}

/* x prepared for the tiles in buf (unless filled: another weight's plan
 * wrote the same), and the job's pointers to it. The preparation runs on
 * the pool: on the calling thread alone it was ~7% of a 0.8B prefill. */
static void amx_plan(mm_job *j, const float *x, void *buf, bool filled) {
    float *xg = j->w->q.bits ? (float *)(void *)((char *)buf + amx_xa_bytes(j->T, j->n)) : NULL;
    j->xa = buf;
    j->xg = xg;
    if (filled)
        return;
    amx_prep_job p = {.xa = buf, .xg = xg, .x = x, .T = j->T, .n = j->n, .gs = j->w->q.group_size};
    dr_pool_run(j->c->pool, dr_amx_prep_blocks(j->T), amx_prep_task, &p);
}

/* ---- quantized ---- */

/* One token: rows against the shared prepared x (group sums computed once). */
static void q_gemv_task(void *arg, int task, int thread) {
    const mm_job *j = arg;
    (void)thread;
    int r0, nr = rows_of(j, task, &r0);
    dr_cpu_q_gemv_rows(j->y, j->xp, j->w, r0, r0 + nr);
}

/* A few tokens: rows against every token's prepared x (dr_cpu_q_gemv_rows_n). */
static void q_gemvn_task(void *arg, int task, int thread) {
    const mm_job *j = arg;
    (void)thread;
    int r0, nr = rows_of(j, task, &r0);
    dr_cpu_q_gemv_rows_n(j->y, j->xp, j->T, j->w, r0, r0 + nr);
}

/* No scratch: the self-contained kernel per row range. */
static void q_task(void *arg, int task, int thread) {
    const mm_job *j = arg;
    (void)thread;
    int r0, nr = rows_of(j, task, &r0);
    dr_cpu_matmul_q_rows(j->y, j->x, j->w, j->T, r0, r0 + nr);
}

/* Rows per prefill task: one panel (gemm_panel), else as many as fit
 * GEMM_FLOATS widened, a multiple of the tile height. Each output is one
 * task's whole sum either way, so results don't depend on the thread count. */
static int gemm_rows(const dr_cpu_ctx *c, int n, int T) {
    if (use_panel(c, T))
        return c->k->panel;
    int rb = GEMM_FLOATS / (n > 0 ? n : 1) / DR_TILE * DR_TILE;
    return rb < DR_TILE ? DR_TILE : rb > 64 ? 64 : rb;
}

/* Rows per decode task for W [d, n]: about GEMV_BYTES of weights, so each
 * thread reads long contiguous runs (the prefetcher needs them to reach full
 * bandwidth); fewer where that would leave threads idle: at least two tasks
 * a thread, as long as a task keeps GEMV_MIN_BYTES. One core streams only a
 * share of the memory bandwidth (~8 GB/s on a 16-core Xeon), so a weight in
 * 4 tasks on 16 threads ran at a quarter of the machine's bandwidth. Each
 * output row is one thread's whole dot, so results don't depend on this. */
static int gemv_rows(const dr_cpu_ctx *c, int d, int n, dr_dtype dt) {
    const size_t row = (size_t)(n > 0 ? n : 1) * dr_dtype_size(dt), spread_tasks = 2 * (size_t)c->n_threads;
    size_t rb = GEMV_BYTES / row, spread = ((size_t)d + spread_tasks - 1) / spread_tasks;
    if (spread * row < GEMV_MIN_BYTES)
        spread = GEMV_MIN_BYTES / row;
    rb = spread < rb ? spread : rb;
    return rb < DR_GEMV_ROWS ? DR_GEMV_ROWS : (int)(rb / DR_GEMV_ROWS * DR_GEMV_ROWS);
}

/* Bytes of shared scratch a plan of W for T tokens wants (prepared or split x). */
static size_t plan_bytes(const dr_cpu_ctx *c, const dr_tensor *w, int T) {
    const size_t n = (size_t)w->ne[w->ndim - 1];
    if (w->q.bits && (T == 1 || q_multi(w, T)))
        return (size_t)T * dr_cpu_q_prep_floats(w) * sizeof(float);
    if (w->q.bits)
        return use_amx(w, T) ? amx_x_bytes(w, T) : 0;
    if (T < GEMV_MAX_T && w->dtype == DR_DT_BF16 && c->bf16_dot)
        return 2 * (size_t)T * n * sizeof(uint16_t);
    if (T < GEMV_MAX_T && w->dtype == DR_DT_BF16 && c->k->gemv_bf16p)
        return (size_t)T * n * sizeof(float);
    if (use_amx(w, T))
        return amx_x_bytes(w, T);
    return 0;
}

/* Rows per quantized GEMV task (decode layout: whole 16-row tiles). */
static int q_gemv_rows(const dr_cpu_ctx *c, const mm_job *j) {
    int rb = gemv_rows(c, j->d, j->n * j->w->q.bits / 16, DR_DT_BF16); /* packed rows as bf16-sized */
    if (j->w->q.tiled_rows)
        rb = (rb + DR_QK_TILE_ROWS - 1) / DR_QK_TILE_ROWS * DR_QK_TILE_ROWS;
    return rb;
}

typedef struct {
    float *xp;
    const float *x;
    const dr_tensor *w;
    size_t n, pf; /* x's row length, floats of one prepared token */
} q_prep_job;

/* Token `task` of x prepared for the multi-token GEMV. */
static void q_prep_task(void *arg, int task, int thread) {
    const q_prep_job *p = arg;
    (void)thread;
    dr_cpu_q_prep_n(p->xp + (size_t)task * p->pf, p->x + (size_t)task * p->n, p->w);
}

/* Fill j (tasks, kernel) for W [d, n] @ x [T, n] -> y [T, d]. buf: plan_bytes
 * of shared scratch for this weight, or NULL (then the paths that need none);
 * filled: buf already holds what this plan would write there (another
 * weight's, see same_scratch). */
static dr_pool_fn plan(mm_job *j, dr_cpu_ctx *c, float *y, const float *x, const dr_tensor *w, int T, void *buf,
                       bool filled) {
    *j = (mm_job){.c = c, .y = y, .x = x, .w = w, .T = T};
    j->d = (int)w->ne[w->ndim - 2];
    j->n = (int)w->ne[w->ndim - 1];
    if (buf && q_multi(w, T)) { /* a few tokens, quantized: each row read once for all */
        q_prep_job p = {.xp = buf, .x = x, .w = w, .n = (size_t)j->n, .pf = dr_cpu_q_prep_floats(w)};
        if (!filled && T >= Q_PREP_POOL_T) /* on the calling thread alone: ~5% of a 32-token 0.8B prefill */
            dr_pool_run(c->pool, T, q_prep_task, &p);
        else if (!filled) /* (filled: another weight's plan prepared the same x) */
            for (int t = 0; t < T; t++)
                q_prep_task(&p, t, 0);
        j->xp = buf;
        j->rb = q_gemv_rows(c, j);
        return q_gemvn_task;
    }
    if (buf && use_amx(w, T) && (j->rb = amx_rows(c, j->d, j->n), dr_cpu_reserve(c, amx_tbuf(c, w, j->rb, T)))) {
        amx_plan(j, x, buf, filled); /* BF16 or quantized, 8+ tokens: never the one-token paths below */
        return amx_task;
    }
    if (w->q.bits) {
        if (T == 1 && buf) {
            if (!filled)
                dr_cpu_q_prep(buf, x, w); /* once per call, shared by every row */
            j->xp = buf;
            j->rb = q_gemv_rows(c, j);
            return q_gemv_task;
        }
        if (T > 1 && (j->rb = gemm_rows(c, j->n, T), dr_cpu_reserve(c, fp32_floats(c, w, j->rb, T))))
            return gemm_task; /* blocks of rows dequantized once, reused by every token */
        j->rb = gemv_rows(c, j->d, j->n * w->q.bits / 16, DR_DT_BF16);
        return q_task;
    }
    if (T < GEMV_MAX_T) {
        j->rb = gemv_rows(c, j->d, j->n, w->dtype);
        if (w->dtype == DR_DT_BF16 && c->bf16_dot && buf) {
            const size_t n = (size_t)T * j->n;
            uint16_t *hl = buf;
            if (!filled)
                dr_split_bf16x2(hl, hl + n, x, (int)n);
            j->hi = hl;
            j->lo = hl + n;
        } else if (w->dtype == DR_DT_BF16 && c->k->gemv_bf16p && buf) {
            float *xp = buf;
            for (int t = 0; t < T && !filled; t++)
                c->k->bf16_pairs(xp + (size_t)t * j->n, x + (size_t)t * j->n, j->n);
            j->xp = xp;
        }
        return gemv_task;
    }
    j->rb = gemm_rows(c, j->n, T);
    if (dr_cpu_reserve(c, fp32_floats(c, w, j->rb, T)))
        return gemm_task;
    j->rb = gemv_rows(c, j->d, j->n, w->dtype); /* no scratch: stream the rows per token */
    return gemv_task;
}

static int n_tasks(const mm_job *j) { return (j->d + j->rb - 1) / j->rb; }

/* W [d, n] @ x [T, n] -> y [T, d] */
void dr_fast_matmul(void *ctx, float *y, const float *x, const dr_tensor *w, int T) {
    dr_cpu_ctx *c = ctx;
    size_t nb = plan_bytes(c, w, T);
    void *buf = nb ? dr_cpu_shared_buf(c, DR_SHARED_X, nb) : NULL;
    mm_job j;
    dr_pool_fn fn = plan(&j, c, y, x, w, T, buf, false);
    dr_pool_run(c->pool, n_tasks(&j), fn, &j);
}

/* ---- several weights in one parallel loop ---- */

#define MMN_MAX 40

typedef struct {
    mm_job j[MMN_MAX];
    dr_pool_fn fn[MMN_MAX];
    int first[MMN_MAX + 1]; /* task ranges: weight i owns [first[i], first[i+1]) */
    int n;
} mmn_job;

static void mmn_task(void *arg, int task, int thread) {
    const mmn_job *m = arg;
    int lo = 0, hi = m->n - 1; /* the weight whose range holds task */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (task >= m->first[mid])
            lo = mid;
        else
            hi = mid - 1;
    }
    m->fn[lo]((void *)&m->j[lo], task - m->first[lo], thread);
}

/* Whether plan() writes the same scratch for a and b from one x and T, both
 * wanting some: the same row length and quantization (x is prepared per bits,
 * group size and layout; unquantized, the bf16 split or pair order depends
 * on x alone). */
static bool same_scratch(const dr_tensor *a, const dr_tensor *b) {
    return a->ne[a->ndim - 1] == b->ne[b->ndim - 1] && a->q.bits == b->q.bits &&
           (!a->q.bits || (a->q.group_size == b->q.group_size && !a->q.tiled_rows == !b->q.tiled_rows));
}

/* ys[i] = xs[i] W_i^T (Ts[i] tokens) for every weight in one dr_pool_run:
 * one barrier instead of n_w, and the threads stream one weight after the
 * next without waiting at each. Each weight keeps its own rows per task and
 * kernel, so every output is computed exactly as dr_fast_matmul computes it.
 * Weights whose prepared x would be the same (the same x and T, e.g. a GDN
 * layer's input projections) share one. */
void dr_fast_matmul_batch(void *ctx, int n_w, float *const *ys, const float *const *xs, const dr_tensor *const *ws,
                          const int *Ts) {
    dr_cpu_ctx *c = ctx;
    if (n_w < 1 || n_w > MMN_MAX) {
        for (int i = 0; i < n_w; i++)
            dr_fast_matmul(ctx, ys[i], xs[i], ws[i], Ts[i]);
        return;
    }
    size_t off[MMN_MAX], nb[MMN_MAX], total = 0;
    int from[MMN_MAX]; /* the weight whose scratch i shares (i: its own) */
    for (int i = 0; i < n_w; i++) { /* 64-byte aligned pieces of one shared buffer */
        nb[i] = plan_bytes(c, ws[i], Ts[i]);
        from[i] = i;
        for (int k = 0; k < i && nb[i] && from[i] == i; k++)
            if (nb[k] && from[k] == k && xs[k] == xs[i] && Ts[k] == Ts[i] && same_scratch(ws[i], ws[k]))
                from[i] = k;
        off[i] = from[i] == i ? total : off[from[i]];
        total += from[i] == i ? (nb[i] + 63) & ~(size_t)63 : 0;
    }
    char *buf = total ? dr_cpu_shared_buf(c, DR_SHARED_X, total) : NULL;
    mmn_job m = {.n = n_w};
    m.first[0] = 0;
    for (int i = 0; i < n_w; i++) {
        void *b = buf && nb[i] ? buf + off[i] : NULL;
        m.fn[i] = plan(&m.j[i], c, ys[i], xs[i], ws[i], Ts[i], b, from[i] != i);
        m.first[i + 1] = m.first[i] + n_tasks(&m.j[i]);
    }
    dr_pool_run(c->pool, m.first[n_w], mmn_task, &m);
}

/* ys[i] = x W_i^T for every weight: dr_fast_matmul_batch with one x. */
void dr_fast_matmul_n(void *ctx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws, int T) {
    const float *xs[MMN_MAX];
    int Ts[MMN_MAX];
    if (n_w < 1 || n_w > MMN_MAX) {
        for (int i = 0; i < n_w; i++)
            dr_fast_matmul(ctx, ys[i], x, ws[i], T);
        return;
    }
    for (int i = 0; i < n_w; i++)
        xs[i] = x, Ts[i] = T;
    dr_fast_matmul_batch(ctx, n_w, ys, xs, ws, Ts);
}
