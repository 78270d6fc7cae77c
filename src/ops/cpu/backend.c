/* ops/cpu/backend.c - the CPU backend tables: the scalar single-threaded
 * reference (dr_ops_cpu_ref) and the fast backend (dr_ops_cpu_create: SIMD
 * kernels chosen at run time, a thread pool and per-thread scratch in its
 * context), plus their (host) memory slots. */
#include "ops/cpu/fast.h"

#include "ops/cpu/quant.h"
#include "quant/quant.h"
#include "util/hugemem.h"
#include "util/status.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Caches and scratch on 2 MiB pages (util/hugemem.h): they are first
 * touched in the first prefill, and a fault per 4 KiB page there cost about
 * a fifth of a cold 35B-A3B prefill on the dev VM (docs/PERFORMANCE.md,
 * CPU, session 21). */
static void *cpu_alloc(void *ctx, size_t n) {
    (void)ctx;
    return dr_huge_advise(calloc(1, n ? n : 1), n); /* calloc: lazily zeroed pages */
}
static void cpu_free(void *ctx, void *p) {
    (void)ctx;
    free(p);
}
static void cpu_copy(void *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    if (n)
        memmove(dst, src, n);
}
static void cpu_zero(void *ctx, void *p, size_t n) {
    (void)ctx;
    if (n)
        memset(p, 0, n);
}

static void cpu_ref_destroy(dr_ops *self) { (void)self; /* static table */ }

static dr_ops g_cpu_ops = {
    .name = "cpu-ref",
    .ctx = NULL,
    .destroy = cpu_ref_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .matmul = dr_cpu_matmul,
    .embed = dr_cpu_embed,
    .rmsnorm = dr_cpu_rmsnorm,
    .add = dr_cpu_add,
    .swiglu = dr_cpu_swiglu,
    .sigmoid_mul = dr_cpu_sigmoid_mul,
    .sigmoid_scale_rows = dr_cpu_sigmoid_scale_rows,
    .split_halves = dr_cpu_split_halves,
    .round_bf16 = dr_cpu_round_bf16,
    .rope = dr_cpu_rope,
    .attention = dr_cpu_attention,
    .gdn_conv = dr_cpu_gdn_conv,
    .gdn_gates = dr_cpu_gdn_gates,
    .gdn_recurrent = dr_cpu_gdn_recurrent,
    .gdn_chunked = dr_cpu_gdn_chunked,
    .gated_rmsnorm = dr_cpu_gated_rmsnorm,
    .moe_route = dr_cpu_moe_route,
    .moe_experts = dr_cpu_moe_experts,
};

dr_ops *dr_ops_cpu_ref(void) { return &g_cpu_ops; }

/* ===================== fast backend ===================== */

bool dr_cpu_reserve(dr_cpu_ctx *c, size_t n) {
    for (int i = 0; i < c->n_threads; i++) {
        dr_cpu_scratch *s = &c->thr[i];
        if (s->cap >= n)
            continue;
        free(s->p);
        s->p = dr_huge_alloc(n * sizeof(float));
        s->cap = s->p ? n : 0;
        if (!s->p)
            return false;
    }
    return true;
}

/* 64-byte aligned: AMX tile loads of a prepared x that straddle cache lines
 * ran ~20% slower (ops/cpu/amx.c; docs/PERFORMANCE.md, CPU, session 20). */
void *dr_cpu_shared_buf(dr_cpu_ctx *c, int slot, size_t bytes) {
    if (c->shared_cap[slot] < bytes) {
        free(c->shared[slot]);
        c->shared[slot] = dr_huge_alloc(bytes);
        c->shared_cap[slot] = c->shared[slot] ? bytes : 0;
    }
    return c->shared[slot];
}

static void ctx_free(dr_cpu_ctx *c) {
    if (!c)
        return;
    dr_pool_free(c->pool);
    for (int i = 0; c->thr && i < c->n_threads; i++)
        free(c->thr[i].p);
    free(c->thr);
    for (int i = 0; i < DR_SHARED_N; i++)
        free(c->shared[i]);
    dr_arena_free(&c->weights);
    free(c);
}

/* t's packed words, scales and biases copied into one block of the weight
 * arena (2 MiB pages, util/hugemem.h) and t pointed at the copy; false (t
 * unchanged) when out of memory. */
static bool rehome(dr_cpu_ctx *c, dr_tensor *t) {
    const int64_t n = t->ne[t->ndim - 1];
    const size_t rows = (size_t)dr_tensor_rows(t), pk = rows * dr_quant_row_bytes(n, t->q.bits);
    const size_t sb = rows * dr_quant_sb_row_bytes(n, t->q.group_size, t->q.sb_dtype);
    const size_t sb_at = (pk + 63) & ~(size_t)63, bi_at = sb_at + ((sb + 63) & ~(size_t)63);
    char *p = dr_arena_alloc(&c->weights, bi_at + sb);
    if (!p)
        return false;
    memcpy(p, t->data, pk);
    memcpy(p + sb_at, t->q.scales, sb);
    memcpy(p + bi_at, t->q.biases, sb);
    t->data = p;
    t->q.scales = p + sb_at;
    t->q.biases = p + bi_at;
    return true;
}

/* 4- and 8-bit weights are copied to 2 MiB pages (rehome; decode +12-20%
 * on the dev VM, docs/PERFORMANCE.md, CPU, session 22) and, for the
 * avx512vnni GEMVs, put into their decode layout there (dr_cpu_q_tile:
 * 16-row tiles read as one stream, a row per lane; sessions 19 and 20); the
 * other levels read file order faster (they would see the layout through
 * copies). The model frees a host buffer a copy replaces (model/weights.c);
 * a mapped file's pages stay clean page cache. At most half the machine's
 * memory, so a model larger than that keeps the rest where it was, where
 * the page cache can still drop and reread it. Not where transparent huge
 * pages are off. DR_CPU_TILE=0 keeps every weight where and as it is;
 * DR_CPU_HUGE_WEIGHTS=0 lays them out in place, without copies, and =1
 * copies even without THP (A/B runs, tests). */
static dr_status cpu_weight_upload(void *ctx, dr_tensor *t) {
    dr_cpu_ctx *c = ctx;
    const bool tile = dr_cpu_quant_level() == DR_QLEVEL_AVX512_VNNI;
    const size_t need = t->q.bits && !t->q.tiled_rows ? dr_cpu_q_tile_bytes(t) : 0;
    if (!need || need > c->tile_left)
        return DR_OK;
    const bool copied = c->huge_weights && rehome(c, t);
    const bool tiled = tile && dr_cpu_q_tile(t, c->tile_left) > 0; /* fails if the memory can't be written */
    if (copied || tiled)
        c->tile_left -= need;
    return DR_OK;
}

/* How far ahead the unquantized decode GEMVs (BF16, F16, F32) prefetch
 * their rows into L2 (bytes; the quantized kernels have their own).
 * 16 KiB, measured (docs/PERFORMANCE.md, CPU, session 18): on the 16-core
 * Intel Xeon of the GPU host, 1 GiB of rows read 1.4-1.6x faster at 1, 8
 * and 16 threads (16 threads: 92 -> 125-135 GB/s, the plain read's rate);
 * on the dev VM's 2-core Zen 4, 0.8B / 2B decode +10% / +18% when its
 * memory reads ~50 GB/s, within noise at ~30. DR_CPU_PREFETCH=BYTES (0:
 * none) overrides it, for A/B runs. */
static size_t gemv_prefetch(void) {
    const char *e = getenv("DR_CPU_PREFETCH");
    if (e && *e) {
        char *end;
        unsigned long long v = strtoull(e, &end, 10);
        if (*end == '\0' && v <= (1u << 20))
            return (size_t)v;
    }
    return 16384;
}

/* Half the physical memory, or 0 when DR_CPU_TILE=0 or unknown. */
static size_t tile_budget(void) {
    const char *e = getenv("DR_CPU_TILE");
    const long pages = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
    if ((e && e[0] == '0') || pages <= 0 || pg <= 0)
        return 0;
    return (size_t)pages / 2 * (size_t)pg;
}

static void cpu_destroy(dr_ops *self) {
    ctx_free(self->ctx);
    free(self);
}

dr_status dr_ops_cpu_create(const dr_backend_params *p, dr_ops **out) {
    *out = NULL;
    int n = p && p->n_threads > 0 ? p->n_threads : dr_cpu_n_cores();
    dr_ops *o = malloc(sizeof *o);
    dr_cpu_ctx *c = calloc(1, sizeof *c);
    if (c)
        c->thr = calloc((size_t)n, sizeof *c->thr);
    if (!o || !c || !c->thr) {
        free(o);
        ctx_free(c);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory creating the CPU backend");
    }
    c->n_threads = n;
    c->tile_left = tile_budget();
    const char *hw = getenv("DR_CPU_HUGE_WEIGHTS"); /* 0 / 1: off / on even without THP (A/B runs, tests) */
    c->huge_weights = hw && *hw ? hw[0] != '0' : dr_huge_available(); /* without THP a copy only costs time */
    c->k = dr_simd_get();
    c->bf16_dot = dr_simd_bf16_dot() && c->k->gemv_bf16x2;
    c->gemv_pf = gemv_prefetch();
    dr_status st = dr_pool_new(n, &c->pool);
    if (st != DR_OK) {
        free(o);
        ctx_free(c);
        return st;
    }
    *o = g_cpu_ops;
    o->name = "cpu";
    o->ctx = c;
    o->destroy = cpu_destroy;
    o->weight_upload = cpu_weight_upload;
    o->matmul = dr_fast_matmul;
    o->matmul_n = dr_fast_matmul_n;
    o->gdn_decode = dr_fast_gdn_decode;
    o->add_rmsnorm = dr_fast_add_rmsnorm;
    o->attention = dr_fast_attention;
    o->rope = dr_fast_rope;
    o->gdn_conv = dr_fast_gdn_conv;
    o->gdn_recurrent = dr_fast_gdn_recurrent;
    o->gdn_chunked = dr_fast_gdn_chunked;
    o->moe_experts = dr_fast_moe_experts;
    o->rmsnorm = dr_fast_rmsnorm;
    o->gated_rmsnorm = dr_fast_gated_rmsnorm;
    o->swiglu = dr_fast_swiglu;
    o->sigmoid_mul = dr_fast_sigmoid_mul;
    o->argmax = dr_fast_argmax;
    *out = o;
    return DR_OK;
}
