/* ops/cpu/fast_gdn.c - Gated DeltaNet on the fast backend: the causal conv
 * threaded over channels, the decode step and the chunked prefill threaded
 * over v heads.
 *
 * Decode: one pass per v head reads S once to form u = S^T k and w = S^T q,
 * then one pass writes S = exp(g) S + k d^T (S is still in L2), with
 * o = exp(g) w + (k . q) d: the same value as reading after the update.
 * Prefill: the chunked WY form (MODEL.md 5.4, chunk 64) with every step a
 * blocked matrix product (dr_simd gemm_nn) and the state carried between
 * chunks. tag-gdn-state-layout: state fp32 [Hv, dk, dv]; it stays fp32.
 */
#include "ops/cpu/fast.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#define L2_EPS 1e-6f     /* as the reference (and transformers / FLA) */
#define CONV_CB 256      /* channels per conv task */
#define CONV_MIN 65536   /* T * C below this: the reference conv, unthreaded */
#define CONV_MAX_K 8     /* longer kernels (the models' is 4): the reference conv */

/* ===================== conv ===================== */

typedef struct {
    const dr_simd *k;
    float *out;
    const float *m, *w;
    float *st;
    int T, C, K;
} conv_job;

/* Channels [c0, c1): out_t = silu(sum_j w_j x_{t-K+1+j}); inputs before the
 * block come from the state (row r = input at time r - K), then the state
 * keeps the last K inputs. The task's weights are first copied tap-major
 * (wt[tap][ch]), so the sums run over contiguous channels in the SIMD
 * table's conv_silu (the per-channel stride K kept them scalar: 0.8B, 512
 * tokens, 7 ms a layer); each output is still 0 + w_0 x_0 + ... +
 * w_{K-1} x_{K-1} in that order. */
static void conv_task(void *arg, int task, int thread) {
    const conv_job *j = arg;
    (void)thread;
    const int C = j->C, K = j->K, c0 = task * CONV_CB, c1 = c0 + CONV_CB < C ? c0 + CONV_CB : C, nc = c1 - c0;
    float wt[CONV_MAX_K * CONV_CB];
    for (int tap = 0; tap < K; tap++)
        for (int ch = c0; ch < c1; ch++)
            wt[tap * CONV_CB + (ch - c0)] = j->w[(size_t)ch * K + tap];
    for (int t = 0; t < j->T; t++) {
        const float *src[CONV_MAX_K];
        for (int tap = 0; tap < K; tap++) {
            int s = t - K + 1 + tap; /* time of the input under this tap */
            src[tap] = (s >= 0 ? j->m + (size_t)s * C : j->st + (size_t)(s + K) * C) + c0;
        }
        j->k->conv_silu(j->out + (size_t)t * C + c0, wt, CONV_CB, src, K, nc);
    }
    for (int r = 0; r < K; r++) { /* ascending: a row read from the old state is never overwritten first */
        int s = j->T - K + r;
        const float *src = s >= 0 ? j->m + (size_t)s * C : j->st + (size_t)(s + K) * C;
        memcpy(j->st + (size_t)r * C + c0, src + c0, (size_t)(c1 - c0) * sizeof(float));
    }
}

void dr_fast_gdn_conv(void *ctx, float *out, const float *m, float *conv_state, const float *w, int T, int C,
                      int K) {
    dr_cpu_ctx *c = ctx;
    if ((size_t)T * C < CONV_MIN || K > CONV_MAX_K) {
        dr_cpu_gdn_conv(ctx, out, m, conv_state, w, T, C, K);
        return;
    }
    conv_job j = {.k = c->k, .out = out, .m = m, .w = w, .st = conv_state, .T = T, .C = C, .K = K};
    dr_pool_run(c->pool, (C + CONV_CB - 1) / CONV_CB, conv_task, &j);
}

/* ===================== shared helpers ===================== */

/* dst [n] = src / sqrt(sum src^2 + eps) * scale */
static void l2norm(const dr_simd *k, float *dst, const float *src, int n, float scale) {
    float inv = scale / sqrtf(k->dot(src, src, n) + L2_EPS);
    for (int i = 0; i < n; i++)
        dst[i] = src[i] * inv;
}

typedef struct {
    dr_cpu_ctx *c;
    float *o;
    const float *qkv, *beta, *g;
    float *state;
    dr_gdn_dims d;
    int T;
} gdn_job;

/* ===================== decode ===================== */

/* One token of one v head on S [dk, dv]: u = S^T k and w = S^T q in one
 * read pass, then S = exp(g) S + k d^T in one write pass, with
 * d = beta (v - exp(g) u) and o = exp(g) w + (k . q) d. Scratch u, w, dl [dv]. */
static void rec_step(const dr_simd *k, float *S, float *o, const float *qn, const float *kn, const float *v,
                     float decay, float b, int dk, int dv, float *u, float *w, float *dl) {
    k->st2(u, w, S, kn, qn, dk, dv); /* u = S^T k, w = S^T q: the read pass */
    const float kq = k->dot(kn, qn, dk);
    for (int c = 0; c < dv; c++) {
        dl[c] = b * (v[c] - decay * u[c]); /* delta against the decayed state */
        o[c] = decay * w[c] + kq * dl[c]; /* = (exp(g) S + k d^T)^T q */
    }
    k->decay_rank1(S, dk, dv, decay, kn, dl); /* S = exp(g) S + k d^T: the write pass */
}

/* One v head over the block's tokens. Scratch: qn, kn [dk], u, w, dl [dv]. */
static void rec_task(void *arg, int j, int thread) {
    const gdn_job *jb = arg;
    const dr_simd *k = jb->c->k;
    const int Hk = jb->d.n_k_heads, Hv = jb->d.n_v_heads, dk = jb->d.d_k, dv = jb->d.d_v, kh = j / (Hv / Hk);
    const int C = 2 * Hk * dk + Hv * dv;
    float *S = jb->state + (size_t)j * dk * dv;
    float *qn = dr_cpu_tbuf(jb->c, thread), *kn = qn + dk, *u = kn + dk, *w = u + dv, *dl = w + dv;
    for (int t = 0; t < jb->T; t++) {
        const float *row = jb->qkv + (size_t)t * C;
        l2norm(k, qn, row + (size_t)kh * dk, dk, 1.0f / sqrtf((float)dk));
        l2norm(k, kn, row + (size_t)(Hk + kh) * dk, dk, 1.0f);
        const float decay = expf(jb->g[(size_t)t * Hv + j]), b = jb->beta[(size_t)t * Hv + j];
        rec_step(k, S, jb->o + ((size_t)t * Hv + j) * dv, qn, kn, row + (size_t)2 * Hk * dk + (size_t)j * dv, decay,
                 b, dk, dv, u, w, dl);
    }
}

void dr_fast_gdn_recurrent(void *ctx, float *o, const float *qkv, const float *beta, const float *g,
                           float *state, const dr_gdn_dims *d, int T, float *ws) {
    dr_cpu_ctx *c = ctx;
    if (!dr_cpu_reserve(c, 2 * (size_t)d->d_k + 3 * (size_t)d->d_v)) {
        dr_cpu_gdn_recurrent(ctx, o, qkv, beta, g, state, d, T, ws);
        return;
    }
    gdn_job j = {.c = c, .o = o, .qkv = qkv, .beta = beta, .g = g, .state = state, .d = *d, .T = T};
    dr_pool_run(c->pool, d->n_v_heads, rec_task, &j);
}

/* ===================== fused decode step ===================== */

typedef struct {
    dr_cpu_ctx *c;
    float *y, *conv_state, *state;
    const float *qkv_raw, *z, *b, *a, *conv_w, *A_log, *dt_bias, *norm_w;
    dr_gdn_dims d;
    int K;
    float eps;
} dec_job;

/* softplus as PyTorch (and the reference gates): above 20 the input itself */
static float softplusf(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* Channels [c0, c1) of one token: slide the conv state, out = silu(conv),
 * summed in the reference's order (tap 0 = oldest). */
static void dec_conv(const dec_job *jb, float *out, int c0, int c1, int C) {
    const int K = jb->K;
    float *st = jb->conv_state;
    for (int r = 0; r + 1 < K; r++)
        memcpy(st + (size_t)r * C + c0, st + (size_t)(r + 1) * C + c0, (size_t)(c1 - c0) * sizeof(float));
    memcpy(st + (size_t)(K - 1) * C + c0, jb->qkv_raw + c0, (size_t)(c1 - c0) * sizeof(float));
    if (K == 4) { /* the models' kernel size, unrolled so the compiler vectorizes over channels */
        const float *w = jb->conv_w, *s0 = st, *s1 = st + C, *s2 = st + 2 * (size_t)C, *s3 = st + 3 * (size_t)C;
        for (int ch = c0; ch < c1; ch++) {
            const float *wc = w + (size_t)ch * 4;
            out[ch - c0] = (((0.0f + wc[0] * s0[ch]) + wc[1] * s1[ch]) + wc[2] * s2[ch]) + wc[3] * s3[ch];
        }
    } else {
        for (int ch = c0; ch < c1; ch++) {
            float s = 0.0f;
            for (int tap = 0; tap < K; tap++)
                s += jb->conv_w[(size_t)ch * K + tap] * st[(size_t)tap * C + ch];
            out[ch - c0] = s;
        }
    }
    jb->c->k->silu(out, out, c1 - c0);
}

/* One k head and the v heads that read it (their conv channels are disjoint
 * from every other task's, so the conv state is updated here without a
 * barrier). Scratch: q, k [dk] conv, qn, kn [dk], v [r*dv], o, u, w, dl [dv]. */
static void dec_head(const dec_job *jb, int kh, float *buf) {
    const dr_simd *k = jb->c->k;
    const int Hk = jb->d.n_k_heads, Hv = jb->d.n_v_heads, dk = jb->d.d_k, dv = jb->d.d_v, r = Hv / Hk;
    const int C = 2 * Hk * dk + Hv * dv;
    float *qc = buf, *kc = qc + dk, *qn = kc + dk, *kn = qn + dk, *vc = kn + dk;
    float *o = vc + (size_t)r * dv, *u = o + dv, *w = u + dv, *dl = w + dv;
    dec_conv(jb, qc, kh * dk, (kh + 1) * dk, C);
    dec_conv(jb, kc, (Hk + kh) * dk, (Hk + kh + 1) * dk, C);
    const int v0 = 2 * Hk * dk + kh * r * dv;
    dec_conv(jb, vc, v0, v0 + r * dv, C);
    l2norm(k, qn, qc, dk, 1.0f / sqrtf((float)dk));
    l2norm(k, kn, kc, dk, 1.0f);
    for (int i = 0; i < r; i++) {
        const int j = kh * r + i;
        const float beta = dr_sigmoidf(jb->b[j]);
        const float g = -expf(jb->A_log[j]) * softplusf(jb->a[j] + jb->dt_bias[j]);
        rec_step(k, jb->state + (size_t)j * dk * dv, o, qn, kn, vc + (size_t)i * dv, expf(g), beta, dk, dv, u, w,
                 dl);
        dr_fast_gated_rows(k, jb->y + (size_t)j * dv, o, jb->z + (size_t)j * dv, jb->norm_w, 1, dv, jb->eps);
    }
}

static void dec_task(void *arg, int kh, int thread) {
    const dec_job *jb = arg;
    dec_head(jb, kh, dr_cpu_tbuf(jb->c, thread));
}

static size_t dec_floats(const dr_gdn_dims *d) {
    return 4 * (size_t)d->d_k + (size_t)(d->n_v_heads / d->n_k_heads) * d->d_v + 4 * (size_t)d->d_v;
}

#define DEC_STACK 4096 /* floats: the no-scratch path's buffer (dk = dv = 128, r = 2 needs 1280) */

void dr_fast_gdn_decode(void *ctx, float *y, const float *qkv_raw, const float *z, const float *b, const float *a,
                        float *conv_state, float *state, const float *conv_w, int K, const float *A_log,
                        const float *dt_bias, const float *norm_w, const dr_gdn_dims *d, float eps) {
    dr_cpu_ctx *c = ctx;
    dec_job j = {.c = c, .y = y, .conv_state = conv_state, .state = state, .qkv_raw = qkv_raw, .z = z, .b = b,
                 .a = a, .conv_w = conv_w, .A_log = A_log, .dt_bias = dt_bias, .norm_w = norm_w, .d = *d, .K = K,
                 .eps = eps};
    if (!dr_cpu_reserve(c, dec_floats(d))) { /* out of memory: the caller's thread, a stack buffer */
        float buf[DEC_STACK];
        if (dec_floats(d) > DEC_STACK) { /* no shape of the supported models gets here */
            for (size_t i = 0; i < (size_t)d->n_v_heads * d->d_v; i++)
                y[i] = NAN;
            return;
        }
        for (int kh = 0; kh < d->n_k_heads; kh++)
            dec_head(&j, kh, buf);
        return;
    }
    dr_pool_run(c->pool, d->n_k_heads, dec_task, &j);
}

/* ===================== chunked prefill ===================== */

#define CH DR_GDN_CHUNK

/* Scratch of one thread for one chunk of n <= CH tokens of one v head. */
typedef struct {
    float *Q, *K;  /* [CH, dk] normalised q (scaled) and k */
    float *Kt;     /* [dk, CH] K transposed (then scaled for the state update) */
    float *U;      /* [CH, dv] V' rows */
    float *X;      /* [CH, dv] K S, then Q S */
    float *A, *P;  /* [CH, CH] K K^T -> solve weights, Q K^T -> output weights */
    float *D;      /* [CH, CH] row i: exp(G_i - G_k) for k <= i (both weights' decay) */
    float *G, *nG; /* [CH] cumulative log-decay G and -G */
} chunk_ws;

static size_t chunk_ws_floats(const dr_gdn_dims *d) {
    return 3 * (size_t)CH * d->d_k + 2 * (size_t)CH * d->d_v + 3 * (size_t)CH * CH + 2 * CH;
}

static chunk_ws chunk_ws_carve(float *p, int dk, int dv) {
    chunk_ws c;
    c.Q = p;
    c.K = c.Q + (size_t)CH * dk;
    c.Kt = c.K + (size_t)CH * dk;
    c.U = c.Kt + (size_t)CH * dk;
    c.X = c.U + (size_t)CH * dv;
    c.A = c.X + (size_t)CH * dv;
    c.P = c.A + (size_t)CH * CH;
    c.D = c.P + (size_t)CH * CH;
    c.G = c.D + (size_t)CH * CH;
    c.nG = c.G + CH;
    return c;
}

/* Steps 1-2: normalised q, k rows, K^T, cumulative decay and the decay
 * between tokens, exp(G_i - G_k) = exp(-G_k - (-G_i)) (the same float
 * difference), in vector code: one exp per pair, shared by steps 3-5 and 7. */
static void chunk_load(const gdn_job *jb, chunk_ws *c, int t0, int n, int j) {
    const dr_simd *k = jb->c->k;
    const int Hk = jb->d.n_k_heads, Hv = jb->d.n_v_heads, dk = jb->d.d_k, dv = jb->d.d_v, kh = j / (Hv / Hk);
    const int C = 2 * Hk * dk + Hv * dv;
    float G = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *row = jb->qkv + (size_t)(t0 + i) * C;
        l2norm(k, c->Q + (size_t)i * dk, row + (size_t)kh * dk, dk, 1.0f / sqrtf((float)dk));
        l2norm(k, c->K + (size_t)i * dk, row + (size_t)(Hk + kh) * dk, dk, 1.0f);
        for (int a = 0; a < dk; a++)
            c->Kt[(size_t)a * CH + i] = c->K[(size_t)i * dk + a];
        G += jb->g[(size_t)(t0 + i) * Hv + j];
        c->G[i] = G; /* G_i = sum_{s<=i} g_s */
        c->nG[i] = -G;
    }
    for (int i = 0; i < n; i++)
        k->exp_sub(c->D + (size_t)i * CH, c->nG, c->nG[i], i + 1);
}

/* Steps 3-5: (I + A) V' = beta (V - exp(G) K S), A_ik = beta_i (k_i . k_k)
 * exp(G_i - G_k) for k < i, solved row by row (row i needs rows < i). */
static void chunk_solve(const gdn_job *jb, chunk_ws *c, const float *S, int t0, int n, int j) {
    const dr_simd *k = jb->c->k;
    const int Hk = jb->d.n_k_heads, Hv = jb->d.n_v_heads, dk = jb->d.d_k, dv = jb->d.d_v;
    const int C = 2 * Hk * dk + Hv * dv;
    k->gemm_nn(c->X, dv, c->K, dk, S, dv, n, dv, dk, false);   /* K S */
    k->gemm_nn(c->A, CH, c->K, dk, c->Kt, CH, n, n, dk, false); /* K K^T */
    for (int i = 0; i < n; i++) {
        const float b = jb->beta[(size_t)(t0 + i) * Hv + j], eG = expf(c->G[i]);
        const float *v = jb->qkv + (size_t)(t0 + i) * C + (size_t)2 * Hk * dk + (size_t)j * dv;
        float *ui = c->U + (size_t)i * dv, *ai = c->A + (size_t)i * CH, *tmp = c->X + (size_t)i * dv;
        for (int e = 0; e < dv; e++)
            ui[e] = b * (v[e] - eG * tmp[e]);
        if (i == 0)
            continue;
        const float *di = c->D + (size_t)i * CH;
        for (int kk = 0; kk < i; kk++)
            ai[kk] = b * ai[kk] * di[kk];
        k->gemm_nn(tmp, dv, ai, CH, c->U, dv, 1, dv, i, false); /* row i of X is no longer needed */
        for (int e = 0; e < dv; e++)
            ui[e] -= tmp[e];
    }
}

/* Step 7: O_i = exp(G_i) q_i S + sum_{k<=i} (q_i . k_k) exp(G_i - G_k) V'_k */
static void chunk_output(const gdn_job *jb, chunk_ws *c, const float *S, int t0, int n, int j) {
    const dr_simd *k = jb->c->k;
    const int Hv = jb->d.n_v_heads, dk = jb->d.d_k, dv = jb->d.d_v;
    const int ldo = Hv * dv;
    float *O = jb->o + ((size_t)t0 * Hv + j) * dv;
    k->gemm_nn(c->X, dv, c->Q, dk, S, dv, n, dv, dk, false);   /* Q S */
    k->gemm_nn(c->P, CH, c->Q, dk, c->Kt, CH, n, n, dk, false); /* Q K^T */
    for (int i = 0; i < n; i++) {
        float *pi = c->P + (size_t)i * CH, *oi = O + (size_t)i * ldo;
        const float eG = expf(c->G[i]), *xi = c->X + (size_t)i * dv, *di = c->D + (size_t)i * CH;
        for (int kk = 0; kk < n; kk++)
            pi[kk] = kk <= i ? pi[kk] * di[kk] : 0.0f;
        for (int e = 0; e < dv; e++)
            oi[e] = eG * xi[e];
    }
    k->gemm_nn(O, ldo, c->P, CH, c->U, dv, n, dv, n, true);
}

/* Step 8: S = exp(G_last) S + sum_i exp(G_last - G_i) k_i V'_i^T */
static void chunk_state(const gdn_job *jb, chunk_ws *c, float *S, int n) {
    const int dk = jb->d.d_k, dv = jb->d.d_v;
    const float Gl = c->G[n - 1], eGl = expf(Gl);
    for (size_t e = 0; e < (size_t)dk * dv; e++)
        S[e] *= eGl;
    for (int i = 0; i < n; i++) {
        const float f = expf(Gl - c->G[i]);
        for (int a = 0; a < dk; a++)
            c->Kt[(size_t)a * CH + i] *= f;
    }
    jb->c->k->gemm_nn(S, dv, c->Kt, CH, c->U, dv, dk, dv, n, true);
}

/* Subnormals flushed to zero on this thread (MXCSR flush-to-zero, bit 15,
 * and denormals-are-zero, bit 6) until flush_end(the returned value):
 * strong decay makes exp(G_i - G_k) subnormal inside a chunk, and each
 * operation on one took a microcode assist (5x slower; NUMERICS.md). */
static unsigned flush_begin(void) {
#if defined(__x86_64__) || defined(__i386__)
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);
    return csr;
#else
    return 0;
#endif
}

static void flush_end(unsigned csr) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(csr);
#else
    (void)csr;
#endif
}

/* One v head over every chunk of the block (its state carried in place). */
static void chunk_task(void *arg, int j, int thread) {
    const gdn_job *jb = arg;
    const unsigned csr = flush_begin();
    chunk_ws c = chunk_ws_carve(dr_cpu_tbuf(jb->c, thread), jb->d.d_k, jb->d.d_v);
    float *S = jb->state + (size_t)j * jb->d.d_k * jb->d.d_v;
    for (int t0 = 0; t0 < jb->T; t0 += CH) {
        int n = jb->T - t0 < CH ? jb->T - t0 : CH; /* a short last chunk = zero padding */
        chunk_load(jb, &c, t0, n, j);
        chunk_solve(jb, &c, S, t0, n, j);
        chunk_output(jb, &c, S, t0, n, j);
        chunk_state(jb, &c, S, n);
    }
    flush_end(csr);
}

void dr_fast_gdn_chunked(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                         const dr_gdn_dims *d, int T, float *ws) {
    dr_cpu_ctx *c = ctx;
    if (!dr_cpu_reserve(c, chunk_ws_floats(d))) {
        dr_cpu_gdn_chunked(ctx, o, qkv, beta, g, state, d, T, ws);
        return;
    }
    gdn_job j = {.c = c, .o = o, .qkv = qkv, .beta = beta, .g = g, .state = state, .d = *d, .T = T};
    dr_pool_run(c->pool, d->n_v_heads, chunk_task, &j);
}
