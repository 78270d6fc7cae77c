/* ops/cpu/fast_attention.c - causal GQA attention over the KV cache on the
 * fast backend. Blocks of tokens (prefill) or a single token with a short
 * cache: tasks of (token block, kv head), each serving the query heads that
 * share the kv head, for up to QT_MAX tokens, from one read of its keys and
 * values (row_task). A single token with a long cache: tasks of cache
 * segments for every head, whose rows are read whole and in order (each
 * segment keeps its own max, sum and unnormalised output; merge_segments
 * combines them; seg_task). RoPE over blocks of tokens (rope_task). */
#include "ops/cpu/fast.h"

#include <math.h>
#include <string.h>

#define SPLIT_MIN_KEYS 512 /* shorter caches are not split */
#define SEG_MIN 256        /* keys per segment at least */

typedef struct {
    dr_cpu_ctx *c;
    float *out;
    const float *q, *kc, *vc;
    int T, pos0, nH, nKV, hd, n_seg;
    int qt;       /* tokens per row task (row_task) */
    float scale;
    float *part; /* [nH, n_seg, 2 + hd]: max, sum, o (split mode) */
    bool have_sc; /* per-thread score scratch reserved */
} att_job;

#define GQ 8        /* query heads handled together: they share each key / value row read */
#define PV_KEYS 128 /* keys per output GEMM: 128 value rows of 256 floats are 128 KiB */
#define QT_MAX 8    /* tokens per row task: the cache is read once for them */
#define QT_FLOATS (1 << 22) /* row-task scratch at most (16 MiB a thread): fewer tokens for long caches */

/* Without scratch (out of memory): the ng heads at q over keys [0, n) of kb
 * / vb, key by key, each score computed twice; o unnormalised, max and sum
 * at ml[2 g], ml[2 g + 1]. */
static void att_group_slow(const att_job *j, const float *q, int ng, const float *kb, const float *vb, int n,
                           float *o, size_t ostride, float *ml) {
    const dr_simd *k = j->c->k;
    const int hd = j->hd;
    const size_t stride = (size_t)j->nKV * hd;
    for (int g = 0; g < ng; g++) {
        const float *qg = q + (size_t)g * hd;
        float *og = o + (size_t)g * ostride, m = -INFINITY, l = 0.0f;
        for (int s = 0; s < n; s++) {
            const float v = k->dot(qg, kb + (size_t)s * stride, hd) * j->scale;
            m = v > m ? v : m;
        }
        for (int i = 0; i < hd; i++)
            og[i] = 0.0f;
        for (int s = 0; s < n; s++) {
            const float p = expf(k->dot(qg, kb + (size_t)s * stride, hd) * j->scale - m);
            l += p;
            k->axpy(og, p, vb + (size_t)s * stride, hd);
        }
        ml[2 * g] = m, ml[2 * g + 1] = l;
    }
}

/* Scores of keys [a, b) (of a block whose key s is at kb + s * stride) for
 * the ng heads at q (rows hd apart), into sc (head g's row at sc + g * n):
 * register tiles of 4 keys x 4 heads (simd tile). a is a multiple of
 * DR_TILE, so splitting a range gives the same tiles as one call. */
static void scores_range(const dr_simd *k, float *sc, int n, const float *kb, size_t stride, int a, int b,
                         const float *q, int ng, int hd) {
    for (int s = a; s < b; s += DR_TILE)
        for (int g = 0; g < ng; g += DR_TILE)
            k->tile(sc + (size_t)g * n + s, (size_t)n, kb + (size_t)s * stride, stride, b - s < DR_TILE ? b - s : DR_TILE,
                    q + (size_t)g * hd, (size_t)hd, ng - g < DR_TILE ? ng - g : DR_TILE, hd);
}

/* n scores -> unnormalised softmax weights in fp32; their max and sum at
 * ml[0], ml[1]. */
static void softmax_row(const att_job *j, float *w, int n, float *ml) {
    float m = -INFINITY, l = 0.0f;
    for (int s = 0; s < n; s++) {
        w[s] *= j->scale;
        m = w[s] > m ? w[s] : m;
    }
    j->c->k->exp_sub(w, w, m, n);
    for (int s = 0; s < n; s++)
        l += w[s];
    ml[0] = m, ml[1] = l;
}

/* softmax_row over ng rows of n scores (n apart); row g's max and sum at
 * ml[2 g], ml[2 g + 1]. */
static void softmax_rows(const att_job *j, float *sc, int ng, int n, float *ml) {
    for (int g = 0; g < ng; g++)
        softmax_row(j, sc + (size_t)g * n, n, ml + 2 * g);
}

/* o (ng rows, ostride apart) += the weights of keys [s, s + PV_KEYS) times
 * their value rows (simd gemm_nn; s == 0 starts the sums). */
static void pv_block(const dr_simd *k, float *o, size_t ostride, const float *sc, int n, const float *vb,
                     size_t stride, int s, int ng, int hd) {
    k->gemm_nn(o, (int)ostride, sc + s, n, vb + (size_t)s * stride, (int)stride, ng, hd,
               n - s < PV_KEYS ? n - s : PV_KEYS, s > 0);
}

/* Query heads of one task: kv head kvh's group, cut in pieces of GQ. */
static int group_size(const att_job *j) { return j->nH / j->nKV; }
static int pieces(const att_job *j) { return (group_size(j) + GQ - 1) / GQ; }

/* First query head of piece pc of kv head kvh; *ng: its heads (<= GQ). */
static int piece_heads(const att_job *j, int kvh, int pc, int *ng) {
    const int G = group_size(j);
    *ng = G - pc * GQ < GQ ? G - pc * GQ : GQ;
    return kvh * G + pc * GQ;
}

/* Row tasks (more than one token, or a short cache): task = (token block *
 * nKV + kv head) * pieces + piece, a block of j->qt tokens. Its ng heads'
 * query rows for every token of the block are gathered into one matrix
 * (row i ng + g: token t0 + i, head h0 + g), so each key and value row of
 * the cache is read once for the block instead of once a token: the scores
 * of all the rows against the keys of the block's last token, each row's
 * softmax over its own causal keys (the later ones zeroed), one GEMM per
 * PV_KEYS value rows. Scratch: rows x (2 hd + keys) floats (row_plan). */
static void row_task(void *arg, int task, int thread) {
    const att_job *j = arg;
    const dr_simd *k = j->c->k;
    const int np = pieces(j), pc = task % np, kvh = task / np % j->nKV, t0 = task / np / j->nKV * j->qt;
    const int nt = j->T - t0 < j->qt ? j->T - t0 : j->qt, hd = j->hd, n = j->pos0 + t0 + nt;
    int ng;
    const int h0 = piece_heads(j, kvh, pc, &ng), M = nt * ng;
    const size_t stride = (size_t)j->nKV * hd;
    const float *kb = j->kc + (size_t)kvh * hd, *vb = j->vc + (size_t)kvh * hd;
    float ml[2], inv[GQ * QT_MAX];
    if (!j->have_sc) { /* out of memory: token by token, key by key */
        for (int i = 0; i < nt; i++) {
            const size_t r = ((size_t)(t0 + i) * j->nH + h0) * hd;
            float mls[2 * GQ];
            att_group_slow(j, j->q + r, ng, kb, vb, j->pos0 + t0 + i + 1, j->out + r, (size_t)hd, mls);
            for (int g = 0; g < ng; g++)
                for (int e = 0; e < hd; e++)
                    j->out[r + (size_t)g * hd + e] /= mls[2 * g + 1];
        }
        return;
    }
    float *qs = dr_cpu_tbuf(j->c, thread), *os = qs + (size_t)M * hd, *sc = os + (size_t)M * hd;
    for (int i = 0; i < nt; i++)
        memcpy(qs + (size_t)i * ng * hd, j->q + ((size_t)(t0 + i) * j->nH + h0) * hd, (size_t)ng * hd * sizeof(float));
    scores_range(k, sc, n, kb, stride, 0, n, qs, M, hd);
    for (int r = 0; r < M; r++) {
        const int valid = j->pos0 + t0 + r / ng + 1; /* token t0 + r / ng sees keys [0, valid) */
        float *w = sc + (size_t)r * n;
        softmax_row(j, w, valid, ml);
        for (int s = valid; s < n; s++)
            w[s] = 0.0f;
        inv[r] = 1.0f / ml[1];
    }
    for (int s = 0; s < n; s += PV_KEYS)
        pv_block(k, os, (size_t)hd, sc, n, vb, stride, s, M, hd);
    for (int r = 0; r < M; r++) {
        float *o = j->out + ((size_t)(t0 + r / ng) * j->nH + h0 + r % ng) * hd;
        for (int e = 0; e < hd; e++)
            o[e] = os[(size_t)r * hd + e] * inv[r];
    }
}

/* Rows of n cache floats at p read in one sequential stream (the simd sum;
 * a call through the table, so it is not optimised away). The kv heads of a
 * cache row sit side by side, so each head's own pass reads a strided part
 * of every row, which this VM streams at 12-19 GB/s against ~40 for the
 * whole rows in order (session 16); after this the heads' passes hit L2. */
static void read_rows(const dr_simd *k, const float *p, size_t n) { (void)k->sum(p, n); }

#define ATT_BLOCK 128 /* keys whose rows are read together before their scores (256 KiB at 2 x 256) */

/* Split mode (T = 1, a long cache): task = a segment of the cache for every
 * head. Block by block the segment's key rows are read whole, then each kv
 * head's pieces take their scores from them; the value rows go the same way
 * before each PV_KEYS block of output GEMMs. Per head the tiles and GEMMs
 * are the same as a pass over that head alone, in the same order. Scratch:
 * nH rows of the segment's scores. The part of head h: [max, sum, o] at
 * part + (h n_seg + seg) (2 + hd). */
static void seg_task(void *arg, int sg, int thread) {
    const att_job *j = arg;
    const dr_simd *k = j->c->k;
    const int hd = j->hd, np = pieces(j), n_keys = j->pos0 + 1, per = (n_keys + j->n_seg - 1) / j->n_seg;
    const int s0 = sg * per, n = (s0 + per < n_keys ? s0 + per : n_keys) - s0;
    const size_t stride = (size_t)j->nKV * hd, ps = 2 + (size_t)hd, hs = (size_t)j->n_seg * ps;
    float *sc = dr_cpu_tbuf(j->c, thread), ml[2 * GQ], *part = j->part + (size_t)sg * ps;
    if (n <= 0) { /* empty segment: contributes nothing */
        for (int h = 0; h < j->nH; h++)
            part[(size_t)h * hs] = -INFINITY, part[(size_t)h * hs + 1] = 0.0f;
        return;
    }
    const float *kb = j->kc + (size_t)s0 * stride, *vb = j->vc + (size_t)s0 * stride;
    for (int a = 0; a < n; a += ATT_BLOCK) {
        const int b = n - a < ATT_BLOCK ? n : a + ATT_BLOCK;
        read_rows(k, kb + (size_t)a * stride, (size_t)(b - a) * stride);
        for (int kvh = 0; kvh < j->nKV; kvh++)
            for (int pc = 0; pc < np; pc++) {
                int ng;
                const int h0 = piece_heads(j, kvh, pc, &ng);
                scores_range(k, sc + (size_t)h0 * n, n, kb + (size_t)kvh * hd, stride, a, b, j->q + (size_t)h0 * hd, ng,
                             hd);
            }
    }
    for (int kvh = 0; kvh < j->nKV; kvh++)
        for (int pc = 0; pc < np; pc++) {
            int ng;
            const int h0 = piece_heads(j, kvh, pc, &ng);
            softmax_rows(j, sc + (size_t)h0 * n, ng, n, ml);
            for (int g = 0; g < ng; g++)
                part[(size_t)(h0 + g) * hs] = ml[2 * g], part[(size_t)(h0 + g) * hs + 1] = ml[2 * g + 1];
        }
    for (int s = 0; s < n; s += PV_KEYS) {
        read_rows(k, vb + (size_t)s * stride, (size_t)(n - s < PV_KEYS ? n - s : PV_KEYS) * stride);
        for (int kvh = 0; kvh < j->nKV; kvh++)
            for (int pc = 0; pc < np; pc++) {
                int ng;
                const int h0 = piece_heads(j, kvh, pc, &ng);
                pv_block(k, part + (size_t)h0 * hs + 2, hs, sc + (size_t)h0 * n, n, vb + (size_t)kvh * hd, stride, s, ng,
                         hd);
            }
    }
}

/* out_h = sum_seg exp(m_seg - M) o_seg / sum_seg exp(m_seg - M) l_seg */
static void merge_segments(const att_job *j) {
    for (int h = 0; h < j->nH; h++) {
        const float *ph = j->part + (size_t)h * j->n_seg * (2 + j->hd);
        float M = -INFINITY, L = 0.0f, *o = j->out + (size_t)h * j->hd;
        for (int sg = 0; sg < j->n_seg; sg++)
            M = ph[(size_t)sg * (2 + j->hd)] > M ? ph[(size_t)sg * (2 + j->hd)] : M;
        for (int i = 0; i < j->hd; i++)
            o[i] = 0.0f;
        for (int sg = 0; sg < j->n_seg; sg++) {
            const float *p = ph + (size_t)sg * (2 + j->hd);
            if (p[1] == 0.0f)
                continue;
            float f = expf(p[0] - M);
            L += f * p[1];
            j->c->k->axpy(o, f, p + 2, j->hd);
        }
        for (int i = 0; i < j->hd; i++)
            o[i] /= L;
    }
}

/* Segments of the cache for one token: twice as many as threads (each task
 * serves every head), each at least SEG_MIN keys; 1 (no split) below
 * SPLIT_MIN_KEYS or for more than one token. Depends on the thread count,
 * so a long-cache decode may differ in the last bits between thread counts
 * (the sum order). */
static int n_segments(const dr_cpu_ctx *c, int T, int n_keys) {
    if (T != 1 || n_keys < SPLIT_MIN_KEYS)
        return 1;
    const int want = 2 * c->n_threads, most = n_keys / SEG_MIN;
    return want < most ? want : most;
}

/* Tokens per row task and its scratch (qs, os: rows x hd; scores: rows x
 * keys): up to QT_MAX tokens, fewer when that would pass QT_FLOATS, and
 * fewer when the blocks would leave threads idle; one token without
 * scratch. Returns the number of token blocks. */
static int row_plan(att_job *j) {
    const int rows = j->nH / j->nKV < GQ ? j->nH / j->nKV : GQ, n = j->pos0 + j->T;
    const int tasks = j->nKV * pieces(j);
    int qt = QT_MAX < j->T ? QT_MAX : j->T;
    while (qt > 1 && (size_t)qt * rows * (2 * (size_t)j->hd + (size_t)n) > QT_FLOATS)
        qt /= 2;
    while (qt > 1 && (size_t)(j->T + qt - 1) / (size_t)qt * (size_t)tasks < 2 * (size_t)j->c->n_threads)
        qt /= 2;
    j->have_sc = dr_cpu_reserve(j->c, (size_t)qt * rows * (2 * (size_t)j->hd + (size_t)n));
    j->qt = j->have_sc ? qt : 1;
    return (j->T + j->qt - 1) / j->qt;
}

void dr_fast_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                       int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws) {
    dr_cpu_ctx *c = ctx;
    (void)ws;
    att_job j = {.c = c, .out = out, .q = q, .kc = k_cache, .vc = v_cache, .T = T, .pos0 = pos0,
                 .nH = n_heads, .nKV = n_kv_heads, .hd = d_head, .scale = scale};
    j.n_seg = n_segments(c, T, pos0 + T);
    if (j.n_seg > 1) { /* every head's scores of one segment per thread; else the row tasks below */
        const size_t per = (size_t)(pos0 + T + j.n_seg - 1) / (size_t)j.n_seg;
        if (dr_cpu_reserve(c, (size_t)n_heads * per))
            j.part = dr_cpu_shared_buf(c, DR_SHARED_ATT, (size_t)n_heads * j.n_seg * (2 + d_head) * sizeof(float));
        if (j.part) {
            dr_pool_run(c->pool, j.n_seg, seg_task, &j);
            merge_segments(&j);
            return;
        }
        j.n_seg = 1;
    }
    dr_pool_run(c->pool, row_plan(&j) * n_kv_heads * pieces(&j), row_task, &j);
}

/* ===================== RoPE ===================== */

#define ROPE_MAX_HALF 256 /* d_rot / 2 up to this (the models': 32); more: the reference */
#define ROPE_TOKENS 16    /* tokens per task */

typedef struct {
    float *x;
    const float *inv_freq;
    int T, nh, dh, half, pos0;
} rope_job;

/* Tokens [16 task, 16 task + 16): the reference's rotation, its angles
 * (float(pos) * inv_freq) and its cosf / sinf, so the same values. */
static void rope_task(void *arg, int task, int thread) {
    const rope_job *j = arg;
    (void)thread;
    const int t1 = (task + 1) * ROPE_TOKENS < j->T ? (task + 1) * ROPE_TOKENS : j->T;
    for (int t = task * ROPE_TOKENS; t < t1; t++) {
        const float pos = (float)(j->pos0 + t);
        for (int i = 0; i < j->half; i++) {
            const float ang = pos * j->inv_freq[i], c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < j->nh; h++) {
                float *u = j->x + ((size_t)t * j->nh + h) * j->dh;
                const float u1 = u[i], u2 = u[i + j->half];
                u[i] = u1 * c - u2 * s;
                u[i + j->half] = u2 * c + u1 * s;
            }
        }
    }
}

/* As dr_cpu_rope, over token blocks on the pool (one token: the reference). */
void dr_fast_rope(void *ctx, float *x, int T, int n_heads, int d_head, int d_rot, int pos0, float theta) {
    dr_cpu_ctx *c = ctx;
    const int half = d_rot / 2;
    if (T < 2 || half > ROPE_MAX_HALF) {
        dr_cpu_rope(ctx, x, T, n_heads, d_head, d_rot, pos0, theta);
        return;
    }
    float inv_freq[ROPE_MAX_HALF];
    for (int i = 0; i < half; i++) /* the reference's expression */
        inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)d_rot);
    rope_job j = {.x = x, .inv_freq = inv_freq, .T = T, .nh = n_heads, .dh = d_head, .half = half, .pos0 = pos0};
    dr_pool_run(c->pool, (T + ROPE_TOKENS - 1) / ROPE_TOKENS, rope_task, &j);
}
