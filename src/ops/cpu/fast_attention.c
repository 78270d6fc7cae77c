/* ops/cpu/fast_attention.c - causal GQA attention over the KV cache on the
 * fast backend: threaded over (token, head) pairs, and for a single token
 * with a long cache also over segments of the cache (each segment keeps its
 * own max, sum and unnormalised output; the caller merges them). */
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

/* Keys [s0, s1) for query qh: o = sum_s exp(score_s - max) v_s, with the
 * max and the sum returned through mx / sum. sc: scratch of s1 - s0 floats,
 * or NULL (then the scores are computed twice). */
static void att_segment(const att_job *j, const float *qh, int kvh, int s0, int s1, float *o, float *mx,
                        float *sum, float *sc) {
    const dr_simd *k = j->c->k;
    const size_t stride = (size_t)j->nKV * j->hd;
    const float *kb = j->kc + (size_t)kvh * j->hd, *vb = j->vc + (size_t)kvh * j->hd;
    float m = -INFINITY, l = 0.0f;
    for (int s = s0; s < s1; s++) {
        float v = k->dot(qh, kb + (size_t)s * stride, j->hd) * j->scale;
        if (sc)
            sc[s - s0] = v;
        m = v > m ? v : m;
    }
    for (int i = 0; i < j->hd; i++)
        o[i] = 0.0f;
    for (int s = s0; s < s1; s++) { /* softmax in fp32 */
        float v = sc ? sc[s - s0] : k->dot(qh, kb + (size_t)s * stride, j->hd) * j->scale;
        float p = expf(v - m);
        l += p;
        k->axpy(o, p, vb + (size_t)s * stride, j->hd);
    }
    *mx = m;
    *sum = l;
}

/* task = token * nH + head: the whole causal row */
static void row_task(void *arg, int task, int thread) {
    const att_job *j = arg;
    const int t = task / j->nH, h = task % j->nH, n_keys = j->pos0 + t + 1;
    float *o = j->out + ((size_t)t * j->nH + h) * j->hd, mx, sum;
    att_segment(j, j->q + ((size_t)t * j->nH + h) * j->hd, h / (j->nH / j->nKV), 0, n_keys, o, &mx, &sum,
                j->have_sc ? dr_cpu_tbuf(j->c, thread) : NULL);
    const float inv = 1.0f / sum;
    for (int i = 0; i < j->hd; i++)
        o[i] *= inv;
}

/* split mode (T = 1): task = head * n_seg + segment */
static void seg_task(void *arg, int task, int thread) {
    const att_job *j = arg;
    const int h = task / j->n_seg, sg = task % j->n_seg, n_keys = j->pos0 + 1;
    const int per = (n_keys + j->n_seg - 1) / j->n_seg, s0 = sg * per;
    const int s1 = s0 + per < n_keys ? s0 + per : n_keys;
    float *p = j->part + (size_t)task * (2 + j->hd);
    if (s0 >= s1) { /* empty segment: contributes nothing */
        p[0] = -INFINITY;
        p[1] = 0.0f;
        return;
    }
    att_segment(j, j->q + (size_t)h * j->hd, h / (j->nH / j->nKV), s0, s1, p + 2, &p[0], &p[1],
                j->have_sc ? dr_cpu_tbuf(j->c, thread) : NULL);
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

/* Segments per head for one token: enough tasks to keep every thread busy,
 * each at least SEG_MIN keys. Depends on the thread count, so a long-cache
 * decode may differ in the last bits between thread counts (the sum order). */
static int n_segments(const dr_cpu_ctx *c, int T, int n_keys, int nH) {
    if (T != 1 || n_keys < SPLIT_MIN_KEYS || nH >= 2 * c->n_threads)
        return 1;
    int want = (2 * c->n_threads + nH - 1) / nH, most = n_keys / SEG_MIN;
    return want < most ? want : most;
}

void dr_fast_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                       int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws) {
    dr_cpu_ctx *c = ctx;
    (void)ws;
    att_job j = {.c = c, .out = out, .q = q, .kc = k_cache, .vc = v_cache, .T = T, .pos0 = pos0,
                 .nH = n_heads, .nKV = n_kv_heads, .hd = d_head, .scale = scale};
    j.n_seg = n_segments(c, T, pos0 + T, n_heads);
    j.have_sc = dr_cpu_reserve(c, (size_t)pos0 + T); /* scores; without them each is computed twice */
    if (j.n_seg > 1)
        j.part = dr_cpu_shared_buf(c, DR_SHARED_ATT, (size_t)n_heads * j.n_seg * (2 + d_head) * sizeof(float));
    if (j.part) {
        dr_pool_run(c->pool, n_heads * j.n_seg, seg_task, &j);
        merge_segments(&j);
        return;
    }
    dr_pool_run(c->pool, T * n_heads, row_task, &j);
}
