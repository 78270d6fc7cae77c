/* ops/cpu/gdn.c - Gated DeltaNet kernels: causal conv + SiLU, the gates, the
 * per-token recurrence (MODEL.md 5.3) and the chunked WY form (5.4).
 *
 * tag-gdn-state-layout: state fp32 [Hv, dk, dv]; conv state [K, C], oldest
 * first. The state stays fp32 here and between calls: storing it as bf16 is
 * the bug this project exists to fix.
 */
#include "ops/cpu/cpu.h"

#include <math.h>
#include <string.h>

#define L2_EPS 1e-6f /* inside the sqrt, as transformers and FLA */

size_t dr_gdn_ws_floats(const dr_gdn_dims *d) {
    const size_t C = DR_GDN_CHUNK;
    size_t chunk = C * (2 * (size_t)d->d_k + (size_t)d->d_v + 1) + (size_t)d->d_v;
    size_t rec = 2 * (size_t)d->n_k_heads * d->d_k + (size_t)d->d_v;
    return chunk > rec ? chunk : rec;
}

/* ---- conv and gates ---- */

void dr_cpu_gdn_conv(void *ctx, float *out, const float *m, float *conv_state, const float *w, int T, int C,
                     int K) {
    (void)ctx;
    for (int t = 0; t < T; t++) {
        /* slide the window: drop the oldest input, append m_t as row K-1 */
        memmove(conv_state, conv_state + C, (size_t)(K - 1) * C * sizeof(float));
        memcpy(conv_state + (size_t)(K - 1) * C, m + (size_t)t * C, (size_t)C * sizeof(float));
        for (int ch = 0; ch < C; ch++) {
            float s = 0.0f; /* c_t = sum_j w[ch][j] * m_{t-(K-1)+j}[ch] */
            for (int j = 0; j < K; j++)
                s += w[(size_t)ch * K + j] * conv_state[(size_t)j * C + ch];
            out[(size_t)t * C + ch] = dr_siluf(s);
        }
    }
}

/* softplus as PyTorch: x above the threshold 20 is returned unchanged */
static float softplusf(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

void dr_cpu_gdn_gates(void *ctx, float *beta, float *g, const float *b, const float *a, const float *A_log,
                      const float *dt_bias, int T, int Hv) {
    (void)ctx;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < Hv; j++) {
            size_t i = (size_t)t * Hv + j;
            beta[i] = dr_sigmoidf(b[i]);                              /* fp32, never rounded */
            g[i] = -expf(A_log[j]) * softplusf(a[i] + dt_bias[j]); /* log of the decay, <= 0 */
        }
}

/* ---- shared helpers ---- */

/* dst [n] = src / sqrt(sum src^2 + eps) * scale */
static void l2norm(float *dst, const float *src, int n, float scale) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++)
        ss += src[i] * src[i];
    float inv = scale / sqrtf(ss + L2_EPS);
    for (int i = 0; i < n; i++)
        dst[i] = src[i] * inv;
}

static float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* ---- recurrence (decode) ---- */

/* One token, one v head: S = exp(g) S; d = beta (v - S^T k); S += k d^T; o = S^T q */
static void delta_step(float *S, float *o, float *d, const float *qn, const float *kn, const float *v, float beta,
                       float g, int dk, int dv) {
    const float decay = expf(g);
    for (int c = 0; c < dv; c++)
        o[c] = 0.0f; /* o doubles as u = S^T k until the delta is formed */
    for (int i = 0; i < dk; i++) {
        float *Si = S + (size_t)i * dv;
        for (int c = 0; c < dv; c++) {
            Si[c] *= decay;
            o[c] += Si[c] * kn[i];
        }
    }
    for (int c = 0; c < dv; c++)
        d[c] = beta * (v[c] - o[c]);
    for (int c = 0; c < dv; c++)
        o[c] = 0.0f;
    for (int i = 0; i < dk; i++) {
        float *Si = S + (size_t)i * dv;
        for (int c = 0; c < dv; c++) {
            Si[c] += kn[i] * d[c];
            o[c] += Si[c] * qn[i]; /* read after the update */
        }
    }
}

void dr_cpu_gdn_recurrent(void *ctx, float *o, const float *qkv, const float *beta, const float *g,
                          float *state, const dr_gdn_dims *d, int T, float *ws) {
    (void)ctx;
    const int Hk = d->n_k_heads, Hv = d->n_v_heads, dk = d->d_k, dv = d->d_v, r = Hv / Hk;
    const int C = 2 * Hk * dk + Hv * dv;
    const float qscale = 1.0f / sqrtf((float)dk);
    float *qn = ws, *kn = ws + (size_t)Hk * dk, *delta = kn + (size_t)Hk * dk;
    for (int t = 0; t < T; t++) {
        const float *row = qkv + (size_t)t * C;
        for (int h = 0; h < Hk; h++) {
            l2norm(qn + (size_t)h * dk, row + (size_t)h * dk, dk, qscale);
            l2norm(kn + (size_t)h * dk, row + (size_t)(Hk + h) * dk, dk, 1.0f);
        }
        for (int j = 0; j < Hv; j++) {
            int kh = j / r; /* consecutive v heads share a k head */
            delta_step(state + (size_t)j * dk * dv, o + ((size_t)t * Hv + j) * dv, delta, qn + (size_t)kh * dk,
                       kn + (size_t)kh * dk, row + (size_t)2 * Hk * dk + (size_t)j * dv,
                       beta[(size_t)t * Hv + j], g[(size_t)t * Hv + j], dk, dv);
        }
    }
}

/* ---- chunked WY / UT form (prefill) ---- */

/* Scratch of one chunk of n <= 64 tokens of one v head. */
typedef struct {
    float *q, *k; /* [n, dk] normalised q (scaled) and k */
    float *u;     /* [n, dv] V' rows */
    float *G;     /* [n]     cumulative log-decay */
    float *tmp;   /* [dv] */
} chunk_ws;

static chunk_ws chunk_ws_carve(float *ws, int dk, int dv) {
    const size_t C = DR_GDN_CHUNK;
    chunk_ws c;
    c.q = ws;
    c.k = c.q + C * dk;
    c.u = c.k + C * dk;
    c.G = c.u + C * dv;
    c.tmp = c.G + C;
    return c;
}

/* row [dv] = x [dk] @ S [dk, dv] */
static void vec_mat(float *row, const float *x, const float *S, int dk, int dv) {
    for (int c = 0; c < dv; c++)
        row[c] = 0.0f;
    for (int i = 0; i < dk; i++)
        for (int c = 0; c < dv; c++)
            row[c] += x[i] * S[(size_t)i * dv + c];
}

/* One chunk of n tokens (t0 ..) for v head j; S is that head's state. */
static void chunk_head(chunk_ws *c, float *o, const float *qkv, const float *beta, const float *g, float *S,
                       const dr_gdn_dims *d, int t0, int n, int j) {
    const int Hk = d->n_k_heads, Hv = d->n_v_heads, dk = d->d_k, dv = d->d_v, kh = j / (Hv / Hk);
    const int C = 2 * Hk * dk + Hv * dv;
    const float qscale = 1.0f / sqrtf((float)dk);
    float G = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *row = qkv + (size_t)(t0 + i) * C;
        l2norm(c->q + (size_t)i * dk, row + (size_t)kh * dk, dk, qscale);
        l2norm(c->k + (size_t)i * dk, row + (size_t)(Hk + kh) * dk, dk, 1.0f);
        G += g[(size_t)(t0 + i) * Hv + j];
        c->G[i] = G; /* 1. G_i = sum_{s<=i} g_s */
    }
    /* 3.-5. V' = U - W S where (I + A) U = beta V and (I + A) W = beta K exp(G),
       A_ik = beta_i (k_i . k_k) exp(G_i - G_k) for k < i. (I + A) is linear, so
       V' solves (I + A) V' = beta (V - exp(G) K S) directly: one forward
       substitution, no W. */
    for (int i = 0; i < n; i++) {
        const float b = beta[(size_t)(t0 + i) * Hv + j];
        const float *v = qkv + (size_t)(t0 + i) * C + (size_t)2 * Hk * dk + (size_t)j * dv;
        const float *ki = c->k + (size_t)i * dk;
        float *ui = c->u + (size_t)i * dv;
        const float eG = expf(c->G[i]);
        vec_mat(c->tmp, ki, S, dk, dv);
        for (int e = 0; e < dv; e++)
            ui[e] = b * (v[e] - eG * c->tmp[e]);
        for (int k = 0; k < i; k++) {
            const float a = b * dot(ki, c->k + (size_t)k * dk, dk) * expf(c->G[i] - c->G[k]);
            const float *uk = c->u + (size_t)k * dv;
            for (int e = 0; e < dv; e++)
                ui[e] -= a * uk[e];
        }
    }
    /* 7. O_i = exp(G_i) q_i S + sum_{k<=i} (q_i . k_k) exp(G_i - G_k) V'_k */
    for (int i = 0; i < n; i++) {
        const float *qi = c->q + (size_t)i * dk;
        float *oi = o + ((size_t)(t0 + i) * Hv + j) * dv;
        vec_mat(oi, qi, S, dk, dv);
        const float eG = expf(c->G[i]);
        for (int e = 0; e < dv; e++)
            oi[e] *= eG;
        for (int k = 0; k <= i; k++) {
            float p = dot(qi, c->k + (size_t)k * dk, dk) * expf(c->G[i] - c->G[k]);
            const float *uk = c->u + (size_t)k * dv;
            for (int e = 0; e < dv; e++)
                oi[e] += p * uk[e];
        }
    }
    /* 8. S = exp(G_last) S + sum_i exp(G_last - G_i) k_i V'_i^T */
    const float Gl = c->G[n - 1], eGl = expf(Gl);
    for (size_t e = 0; e < (size_t)dk * dv; e++)
        S[e] *= eGl;
    for (int i = 0; i < n; i++) {
        const float f = expf(Gl - c->G[i]);
        const float *ki = c->k + (size_t)i * dk, *ui = c->u + (size_t)i * dv;
        for (int a = 0; a < dk; a++) {
            const float s = f * ki[a];
            float *Sa = S + (size_t)a * dv;
            for (int e = 0; e < dv; e++)
                Sa[e] += s * ui[e];
        }
    }
}

void dr_cpu_gdn_chunked(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                        const dr_gdn_dims *d, int T, float *ws) {
    (void)ctx;
    chunk_ws c = chunk_ws_carve(ws, d->d_k, d->d_v);
    for (int t0 = 0; t0 < T; t0 += DR_GDN_CHUNK) {
        int n = T - t0 < DR_GDN_CHUNK ? T - t0 : DR_GDN_CHUNK; /* a short last chunk = zero padding */
        for (int j = 0; j < d->n_v_heads; j++)
            chunk_head(&c, o, qkv, beta, g, state + (size_t)j * d->d_k * d->d_v, d, t0, n, j);
    }
}
