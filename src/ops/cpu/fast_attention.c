/* ops/cpu/fast_attention.c - causal GQA attention over the KV cache on the
 * fast backend: threaded over (token, kv head) pairs, each task serving the
 * query heads that share the kv head from one read of its keys and values,
 * and for a single token with a long cache also over segments of the cache
 * (each segment keeps its own max, sum and unnormalised output; the caller
 * merges them). */
#include "ops/cpu/fast.h"

#include <math.h>

#define SPLIT_MIN_KEYS 512 /* shorter caches are not split */
#define SEG_MIN 256        /* keys per segment at least */

typedef struct {
    dr_cpu_ctx *c;
    float *out;
    const float *q, *kc, *vc;
    int T, pos0, nH, nKV, hd, n_seg;
    float scale;
    float *part; /* [nH, n_seg, 2 + hd]: max, sum, o (split mode) */
    bool have_sc; /* per-thread score scratch reserved */
} att_job;

#define GQ 8        /* query heads handled together: they share each key / value row read */
#define PV_KEYS 128 /* keys per output GEMM: 128 value rows of 256 floats are 128 KiB */

/* att_group without scratch: key by key, each score computed twice. */
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

/* Keys [s0, s1) for the ng <= GQ query heads at q (rows hd apart) of kv
 * head kvh, a GQA group or part of one: per head g, o_g = sum_s exp(score_gs
 * - max_g) v_s, written at o + g * ostride, with max_g and the sum at
 * ml[2 g], ml[2 g + 1]. The ng heads share every key and value row read.
 * With scratch sc (ng (s1 - s0) floats) the scores are register tiles of 4
 * keys x 4 heads (simd tile) and the output small GEMMs of the weights
 * with PV_KEYS value rows at a time (simd gemm_nn); without it (out of
 * memory) key by key, the scores computed twice. */
static void att_group(const att_job *j, const float *q, int ng, int kvh, int s0, int s1, float *o, size_t ostride,
                      float *ml, float *sc) {
    const dr_simd *k = j->c->k;
    const int hd = j->hd, n = s1 - s0;
    const size_t stride = (size_t)j->nKV * hd;
    const float *kb = j->kc + (size_t)kvh * hd + (size_t)s0 * stride;
    const float *vb = j->vc + (size_t)kvh * hd + (size_t)s0 * stride;
    if (!sc) {
        att_group_slow(j, q, ng, kb, vb, n, o, ostride, ml);
        return;
    }
    for (int s = 0; s < n; s += DR_TILE)
        for (int g = 0; g < ng; g += DR_TILE)
            k->tile(sc + (size_t)g * n + s, (size_t)n, kb + (size_t)s * stride, stride,
                    n - s < DR_TILE ? n - s : DR_TILE, q + (size_t)g * hd, (size_t)hd,
                    ng - g < DR_TILE ? ng - g : DR_TILE, hd);
    for (int g = 0; g < ng; g++) { /* softmax weights in fp32, unnormalised */
        float *w = sc + (size_t)g * n, m = -INFINITY, l = 0.0f;
        for (int s = 0; s < n; s++) {
            w[s] *= j->scale;
            m = w[s] > m ? w[s] : m;
        }
        k->exp_sub(w, w, m, n);
        for (int s = 0; s < n; s++)
            l += w[s];
        ml[2 * g] = m, ml[2 * g + 1] = l;
    }
    for (int s = 0; s < n; s += PV_KEYS) /* value rows of a block stay in L2 over gemm_nn's column passes */
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

/* The task's score scratch (att_group), or NULL when it could not be reserved. */
static float *scores(const att_job *j, int thread) { return j->have_sc ? dr_cpu_tbuf(j->c, thread) : NULL; }

/* task = (token * nKV + kv head) * pieces + piece: its heads' whole causal rows */
static void row_task(void *arg, int task, int thread) {
    const att_job *j = arg;
    const int np = pieces(j), pc = task % np, kvh = task / np % j->nKV, t = task / np / j->nKV;
    int ng;
    const int h0 = piece_heads(j, kvh, pc, &ng), n_keys = j->pos0 + t + 1;
    float *o = j->out + ((size_t)t * j->nH + h0) * j->hd, ml[2 * GQ];
    att_group(j, j->q + ((size_t)t * j->nH + h0) * j->hd, ng, kvh, 0, n_keys, o, (size_t)j->hd, ml,
              scores(j, thread));
    for (int g = 0; g < ng; g++) {
        const float inv = 1.0f / ml[2 * g + 1];
        for (int i = 0; i < j->hd; i++)
            o[(size_t)g * j->hd + i] *= inv;
    }
}

/* split mode (T = 1): task = (kv head * pieces + piece) * n_seg + segment */
static void seg_task(void *arg, int task, int thread) {
    const att_job *j = arg;
    const int np = pieces(j), sg = task % j->n_seg, pc = task / j->n_seg % np, kvh = task / j->n_seg / np;
    int ng;
    const int h0 = piece_heads(j, kvh, pc, &ng), n_keys = j->pos0 + 1, per = (n_keys + j->n_seg - 1) / j->n_seg, s0 = sg * per;
    const int s1 = s0 + per < n_keys ? s0 + per : n_keys;
    const size_t ps = 2 + (size_t)j->hd, hs = (size_t)j->n_seg * ps; /* part: [nH, n_seg, 2 + hd] */
    float *p = j->part + (size_t)h0 * hs + (size_t)sg * ps, ml[2 * GQ];
    if (s0 >= s1) { /* empty segment: contributes nothing */
        for (int g = 0; g < ng; g++)
            p[(size_t)g * hs] = -INFINITY, p[(size_t)g * hs + 1] = 0.0f;
        return;
    }
    att_group(j, j->q + (size_t)h0 * j->hd, ng, kvh, s0, s1, p + 2, hs, ml, scores(j, thread));
    for (int g = 0; g < ng; g++)
        p[(size_t)g * hs] = ml[2 * g], p[(size_t)g * hs + 1] = ml[2 * g + 1];
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

/* Segments of the cache for one token: enough tasks (kv heads x pieces x
 * segments) to keep every thread busy, each at least SEG_MIN keys. Depends
 * on the thread count, so a long-cache decode may differ in the last bits
 * between thread counts (the sum order). */
static int n_segments(const dr_cpu_ctx *c, int T, int n_keys, int groups) {
    if (T != 1 || n_keys < SPLIT_MIN_KEYS || groups >= 2 * c->n_threads)
        return 1;
    int want = (2 * c->n_threads + groups - 1) / groups, most = n_keys / SEG_MIN;
    return want < most ? want : most;
}

void dr_fast_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                       int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws) {
    dr_cpu_ctx *c = ctx;
    (void)ws;
    att_job j = {.c = c, .out = out, .q = q, .kc = k_cache, .vc = v_cache, .T = T, .pos0 = pos0,
                 .nH = n_heads, .nKV = n_kv_heads, .hd = d_head, .scale = scale};
    const int tasks = n_kv_heads * pieces(&j); /* per token */
    j.n_seg = n_segments(c, T, pos0 + T, tasks);
    j.have_sc = dr_cpu_reserve(c, (size_t)GQ * (size_t)(pos0 + T)); /* the pieces' scores (att_group) */
    if (j.n_seg > 1)
        j.part = dr_cpu_shared_buf(c, DR_SHARED_ATT, (size_t)n_heads * j.n_seg * (2 + d_head) * sizeof(float));
    if (j.part) {
        dr_pool_run(c->pool, tasks * j.n_seg, seg_task, &j);
        merge_segments(&j);
        return;
    }
    dr_pool_run(c->pool, T * tasks, row_task, &j);
}
