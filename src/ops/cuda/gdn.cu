/* ops/cuda/gdn.cu - Gated DeltaNet on the GPU (semantics: ops/cpu/gdn.c,
 * MODEL.md 5): causal conv + SiLU with its state, the gates, and the delta
 * rule with the recurrent state in fp32.
 *
 * tag-gdn-state-layout: state fp32 [Hv, dk, dv], conv state [K, C] oldest
 * first. The state is never rounded: it is read into registers once per call,
 * updated in fp32 for every token and written back once.
 *
 * Delta-rule kernel layout: one warp owns 8 consecutive state columns c of
 * one v head; its 32 lanes are 4 row groups x 8 columns, lane (rg, cc) holds
 * S[i, c0 + cc] for rows i = rg, rg + 4, ... in registers. The two reductions
 * over i per token (u = S^T k and o = S^T q) are two shuffles each; warps are
 * independent (no shared memory, no barriers), so a head of dv = 128 is 16
 * warps and the whole layer fills the GPU in decode.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define L2_EPS 1e-6f /* inside the sqrt, as transformers and FLA (and the CPU) */
#define CONV_MAX_K 8

/* ---- conv ---- */

/* out[t, ch] = silu(sum_j w[ch, j] * in(t - (K-1) + j)); in(s) for s < 0 comes
 * from the conv state (row s + K). */
__global__ void conv_out_kernel(float *out, const float *m, const float *st, const float *w, int T, int C, int K) {
    DR_TL_SCOPE();
    const size_t n = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int t = (int)(i / C), ch = (int)(i % C);
        float s = 0.0f;
        for (int j = 0; j < K; j++) {
            const int src = t - (K - 1) + j;
            const float v = src >= 0 ? m[(size_t)src * C + ch] : st[(size_t)(src + K) * C + ch];
            s += w[(size_t)ch * K + j] * v;
        }
        out[i] = dr_dev_silu(s);
    }
}

/* K = 4 (every Qwen3.5/3.6/Next model): one thread per channel walks 32
 * consecutive tokens with the 4-tap window in registers (each input read
 * once, no 64-bit index division); same products in the same order as
 * conv_out_kernel, so the same results. */
#define CONV_TT 32
__global__ void conv_out4_kernel(float *__restrict__ out, const float *__restrict__ m, const float *__restrict__ st,
                                 const float *__restrict__ w, int T, int C) {
    DR_TL_SCOPE();
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= C)
        return;
    const int t0 = blockIdx.y * CONV_TT, t1 = min(T, t0 + CONV_TT);
    const float w0 = w[(size_t)ch * 4], w1 = w[(size_t)ch * 4 + 1], w2 = w[(size_t)ch * 4 + 2],
                w3 = w[(size_t)ch * 4 + 3];
    float a[3];
#pragma unroll
    for (int j = 0; j < 3; j++) {
        const int src = t0 - 3 + j;
        a[j] = src >= 0 ? m[(size_t)src * C + ch] : st[(size_t)(src + 4) * C + ch];
    }
#pragma unroll 8
    for (int t = t0; t < t1; t++) {
        const float cur = m[(size_t)t * C + ch];
        float s = 0.0f;
        s += w0 * a[0];
        s += w1 * a[1];
        s += w2 * a[2];
        s += w3 * cur;
        out[(size_t)t * C + ch] = dr_dev_silu(s);
        a[0] = a[1];
        a[1] = a[2];
        a[2] = cur;
    }
}

/* New state row j = input at time T - K + j (old state row j + T when < 0).
 * One thread per channel reads all K first, so the update is in place. */
__global__ void conv_state_kernel(float *st, const float *m, int T, int C, int K) {
    DR_TL_SCOPE();
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= C)
        return;
    float v[CONV_MAX_K];
    for (int j = 0; j < K; j++) {
        const int src = T - K + j;
        v[j] = src >= 0 ? m[(size_t)src * C + ch] : st[(size_t)(j + T) * C + ch];
    }
    for (int j = 0; j < K; j++)
        st[(size_t)j * C + ch] = v[j];
}

void dr_cuda_gdn_conv(void *ctx, float *out, const float *m, float *conv_state, const float *w, int T, int C, int K) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (T <= 0 || C <= 0)
        return;
    if (K > CONV_MAX_K) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED, "CUDA gdn_conv: kernel size %d > %d", K, CONV_MAX_K);
        cx->failed = 1;
        return;
    }
    if (K == 4 && T >= CONV_TT) {
        conv_out4_kernel<<<dim3(dr_cdiv((size_t)C, 256), dr_cdiv((size_t)T, CONV_TT)), 256, 0, cx->stream>>>(
            out, m, conv_state, w, T, C);
    } else {
        size_t n = (size_t)T * C, b = (n + 255) / 256, cap = (size_t)cx->n_sm * 16;
        conv_out_kernel<<<(unsigned)(b > cap ? cap : b), 256, 0, cx->stream>>>(out, m, conv_state, w, T, C, K);
    }
    DR_CUDA_LAUNCHED(cx);
    conv_state_kernel<<<dr_cdiv((size_t)C, 256), 256, 0, cx->stream>>>(conv_state, m, T, C, K);
    DR_CUDA_LAUNCHED(cx);
}

/* ---- gates ---- */

__global__ void gates_kernel(float *beta, float *g, const float *b, const float *a, const float *A_log,
                             const float *dt_bias, int n, int Hv) {
    DR_TL_SCOPE();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int j = i % Hv;
        const float x = a[i] + dt_bias[j];
        const float sp = x > 20.0f ? x : log1pf(expf(x)); /* softplus as PyTorch */
        beta[i] = dr_dev_sigmoid(b[i]);
        g[i] = -expf(A_log[j]) * sp;
    }
}

void dr_cuda_gdn_gates(void *ctx, float *beta, float *g, const float *b, const float *a, const float *A_log,
                       const float *dt_bias, int T, int Hv) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int n = T * Hv;
    if (n <= 0)
        return;
    gates_kernel<<<dr_cdiv((size_t)n, 256), 256, 0, cx->stream>>>(beta, g, b, a, A_log, dt_bias, n, Hv);
    DR_CUDA_LAUNCHED(cx);
}

/* ---- the delta rule ---- */

/* R = rows per lane = ceil(dk / 4). */
template <int R>
__global__ void __launch_bounds__(128)
    delta_rule_kernel(float *__restrict__ o, const float *__restrict__ qkv, const float *__restrict__ beta,
                      const float *__restrict__ g, float *__restrict__ state, int Hk, int Hv, int dk, int dv, int T) {
    DR_TL_SCOPE();
    const int lane = threadIdx.x & 31, rg = lane >> 3, cc = lane & 7;
    const int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int wph = (dv + 7) / 8; /* warps per head */
    if (warp >= Hv * wph)
        return; /* whole warps leave together */
    const int j = warp / wph, c = (warp % wph) * 8 + cc, kh = j / (Hv / Hk);
    const bool cok = c < dv;
    const int C = 2 * Hk * dk + Hv * dv;
    const float qscale = 1.0f / sqrtf((float)dk);
    float *S = state + (size_t)j * dk * dv;
    float s[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int i = rg + 4 * r;
        s[r] = (cok && i < dk) ? S[(size_t)i * dv + c] : 0.0f;
    }
    for (int t = 0; t < T; t++) {
        const float *row = qkv + (size_t)t * C;
        const float *qr = row + (size_t)kh * dk, *kr = row + (size_t)(Hk + kh) * dk;
        float qv[R], kv[R], sq = 0.0f, sk = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int i = rg + 4 * r;
            qv[r] = i < dk ? qr[i] : 0.0f;
            kv[r] = i < dk ? kr[i] : 0.0f;
            sq += qv[r] * qv[r];
            sk += kv[r] * kv[r];
        }
        /* the 4 row groups together hold every element once */
        sq += __shfl_xor_sync(0xffffffffu, sq, 8);
        sq += __shfl_xor_sync(0xffffffffu, sq, 16);
        sk += __shfl_xor_sync(0xffffffffu, sk, 8);
        sk += __shfl_xor_sync(0xffffffffu, sk, 16);
        const float iq = qscale / sqrtf(sq + L2_EPS), ik = 1.0f / sqrtf(sk + L2_EPS);
        const float decay = expf(g[(size_t)t * Hv + j]), b = beta[(size_t)t * Hv + j];
        float u = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) {
            s[r] *= decay;
            u += s[r] * (kv[r] * ik);
        }
        u += __shfl_xor_sync(0xffffffffu, u, 8);
        u += __shfl_xor_sync(0xffffffffu, u, 16);
        const float v = cok ? row[(size_t)2 * Hk * dk + (size_t)j * dv + c] : 0.0f;
        const float dl = b * (v - u);
        float ov = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) {
            s[r] += (kv[r] * ik) * dl;
            ov += s[r] * (qv[r] * iq); /* read after the update */
        }
        ov += __shfl_xor_sync(0xffffffffu, ov, 8);
        ov += __shfl_xor_sync(0xffffffffu, ov, 16);
        if (cok && rg == 0)
            o[((size_t)t * Hv + j) * dv + c] = ov;
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int i = rg + 4 * r;
        if (cok && i < dk)
            S[(size_t)i * dv + c] = s[r];
    }
}

static void delta_rule(dr_cuda_ctx *cx, float *o, const float *qkv, const float *beta, const float *g,
                       float *state, const dr_gdn_dims *d, int T) {
    if (T <= 0)
        return;
    const int dk = d->d_k, dv = d->d_v;
    if (dk > 256 || d->n_v_heads % d->n_k_heads) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED, "CUDA GDN: d_k %d > 256 or Hv %% Hk != 0", dk);
        cx->failed = 1;
        return;
    }
    const size_t warps = (size_t)d->n_v_heads * ((dv + 7) / 8);
    const unsigned grid = dr_cdiv(warps, 4);
#define DELTA_LAUNCH(R)                                                                                        \
    delta_rule_kernel<R><<<grid, 128, 0, cx->stream>>>(o, qkv, beta, g, state, d->n_k_heads, d->n_v_heads, dk, \
                                                       dv, T)
    if (dk <= 32)
        DELTA_LAUNCH(8);
    else if (dk <= 64)
        DELTA_LAUNCH(16);
    else if (dk <= 128)
        DELTA_LAUNCH(32);
    else
        DELTA_LAUNCH(64);
#undef DELTA_LAUNCH
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_gdn_recurrent(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                           const dr_gdn_dims *d, int T, float *ws) {
    (void)ws;
    delta_rule((dr_cuda_ctx *)ctx, o, qkv, beta, g, state, d, T);
}

/* gdn_chunked (the chunked WY form for prefill blocks): gdn_chunked.cu */
