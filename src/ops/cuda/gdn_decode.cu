/* ops/cuda/gdn_decode.cu - one decode token of a Gated DeltaNet layer in one
 * kernel (ops.h gdn_decode; semantics: the CPU chain gdn_conv + gdn_gates +
 * gdn_recurrent + gated_rmsnorm, MODEL.md 5).
 *
 * Block j = v head j (32 * ceil(dv / 8) threads):
 *  1. conv + SiLU of its channels: the q and k channels of its k head and the
 *     v channels of head j, from the conv state rows 1..K-1 and the token's
 *     pre-conv input, into shared memory; the conv state of channels only this
 *     block reads is shifted in place. The q/k channels of a k head are read by
 *     Hv/Hk blocks: the last of them to arrive (a device counter per k head,
 *     reset by that block) shifts those.
 *  2. q/k L2 norms (block sums), beta and the decay from the gates.
 *  3. the delta rule on the fp32 state [dk, dv] of head j, laid out as in
 *     gdn.cu (warp = 8 columns x 4 row groups, rows in registers): read once,
 *     decayed, updated, read out, written once. Never rounded.
 *  4. gated RMSNorm of the head's output with silu(z) -> y.
 * Same operation order as the separate kernels, so the results agree with
 * them to fp32 rounding.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define GD_MAX 256     /* d_k, d_v limit */
#define GD_MAX_K 8     /* conv kernel size limit */
#define GD_CNT 4096    /* k heads the counters cover */
#define GD_L2_EPS 1e-6f /* as gdn.cu and the CPU */

static __device__ __forceinline__ int gd_channel(int e, int kh, int j, int Hk, int dk, int dv) {
    if (e < dk)
        return kh * dk + e;
    if (e < 2 * dk)
        return Hk * dk + kh * dk + (e - dk);
    return 2 * Hk * dk + j * dv + (e - 2 * dk);
}

template <int R>
__global__ void __launch_bounds__(1024)
    gdn_decode_kernel(float *__restrict__ y, const float *__restrict__ m, const float *__restrict__ z,
                      const float *__restrict__ b, const float *__restrict__ a, float *conv_state,
                      float *__restrict__ state, const float *__restrict__ cw, int K, const float *__restrict__ A_log,
                      const float *__restrict__ dt_bias, const float *__restrict__ nw, int Hk, int Hv, int dk, int dv,
                      float eps, int *cnt, int pdl) {
    __shared__ float sq[GD_MAX], sk[GD_MAX], sv[GD_MAX], so[GD_MAX], red[32];
    __shared__ int last;
    /* round 3 (pdl 1 or 2): launched early, so wait; out_proj's GEMV may start streaming its weights
       (1: at once, 2: once this kernel's inputs are ready) */
    if (pdl == 1)
        dr_pdl_trigger();
    dr_pdl_wait();
    if (pdl == 2)
        dr_pdl_trigger();
    const int j = blockIdx.x, ratio = Hv / Hk, kh = j / ratio;
    const size_t C = (size_t)2 * Hk * dk + (size_t)Hv * dv;
    const int tid = threadIdx.x, nt = blockDim.x;

    /* 1. conv + SiLU */
    for (int e = tid; e < 2 * dk + dv; e += nt) {
        const int ch = gd_channel(e, kh, j, Hk, dk, dv);
        const float cur = m[ch];
        float old[GD_MAX_K], s = 0.0f;
#pragma unroll
        for (int t = 0; t < GD_MAX_K - 1; t++)
            if (t < K - 1) {
                old[t] = conv_state[(size_t)(t + 1) * C + ch];
                s += cw[(size_t)ch * K + t] * old[t];
            }
        s += cw[(size_t)ch * K + K - 1] * cur;
        const float o = dr_dev_silu(s);
        if (e < dk)
            sq[e] = o;
        else if (e < 2 * dk)
            sk[e - dk] = o;
        else
            sv[e - 2 * dk] = o;
        if (e >= 2 * dk || ratio == 1) { /* only this block reads the channel */
#pragma unroll
            for (int t = 0; t < GD_MAX_K - 1; t++)
                if (t < K - 1)
                    conv_state[(size_t)t * C + ch] = old[t];
            conv_state[(size_t)(K - 1) * C + ch] = cur;
        }
    }
    __syncthreads();
    if (ratio > 1) { /* the last reader of the k head's q/k channels shifts them */
        if (tid == 0) {
            __threadfence();
            last = atomicAdd(&cnt[kh], 1) == ratio - 1;
        }
        __syncthreads();
        if (last) {
            for (int e = tid; e < 2 * dk; e += nt) {
                const int ch = gd_channel(e, kh, j, Hk, dk, dv);
                for (int t = 0; t < K - 1; t++)
                    conv_state[(size_t)t * C + ch] = conv_state[(size_t)(t + 1) * C + ch];
                conv_state[(size_t)(K - 1) * C + ch] = m[ch];
            }
            if (tid == 0)
                cnt[kh] = 0;
        }
    }

    /* 2. norms and gates */
    float pq = 0.0f, pk = 0.0f;
    for (int e = tid; e < dk; e += nt) {
        pq += sq[e] * sq[e];
        pk += sk[e] * sk[e];
    }
    pq = dr_block_sum(pq, red);
    pk = dr_block_sum(pk, red);
    const float iq = (1.0f / sqrtf((float)dk)) / sqrtf(pq + GD_L2_EPS), ik = 1.0f / sqrtf(pk + GD_L2_EPS);
    const float x = a[j] + dt_bias[j];
    const float sp = x > 20.0f ? x : log1pf(expf(x)); /* softplus as PyTorch */
    const float beta = dr_dev_sigmoid(b[j]);
    const float decay = expf(-expf(A_log[j]) * sp);

    /* 3. the delta rule */
    const int lane = tid & 31, rg = lane >> 3, cc = lane & 7;
    const int c = (tid >> 5) * 8 + cc;
    const bool cok = c < dv;
    float *S = state + (size_t)j * dk * dv;
    float s[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int i = rg + 4 * r;
        s[r] = (cok && i < dk) ? S[(size_t)i * dv + c] : 0.0f;
    }
    float u = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int i = rg + 4 * r;
        s[r] *= decay;
        u += s[r] * ((i < dk ? sk[i] : 0.0f) * ik);
    }
    u += __shfl_xor_sync(0xffffffffu, u, 8);
    u += __shfl_xor_sync(0xffffffffu, u, 16);
    const float dl = beta * ((cok ? sv[c] : 0.0f) - u);
    float ov = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int i = rg + 4 * r;
        s[r] += ((i < dk ? sk[i] : 0.0f) * ik) * dl;
        ov += s[r] * ((i < dk ? sq[i] : 0.0f) * iq); /* read after the update */
    }
    ov += __shfl_xor_sync(0xffffffffu, ov, 8);
    ov += __shfl_xor_sync(0xffffffffu, ov, 16);
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int i = rg + 4 * r;
        if (cok && i < dk)
            S[(size_t)i * dv + c] = s[r];
    }
    if (cok && rg == 0)
        so[c] = ov;
    __syncthreads();

    /* 4. gated RMSNorm: y = w * rmsnorm(o) * silu(z) */
    float ss = 0.0f;
    for (int e = tid; e < dv; e += nt)
        ss += so[e] * so[e];
    ss = dr_block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dv + eps);
    const size_t off = (size_t)j * dv;
    for (int e = tid; e < dv; e += nt)
        y[off + e] = nw[e] * (so[e] * inv) * dr_dev_silu(z[off + e]);
}

void dr_cuda_gdn_decode(void *ctx, float *y, const float *qkv_raw, const float *z, const float *b, const float *a,
                        float *conv_state, float *state, const float *conv_w, int K, const float *A_log,
                        const float *dt_bias, const float *norm_w, const dr_gdn_dims *d, float eps) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int Hk = d->n_k_heads, Hv = d->n_v_heads, dk = d->d_k, dv = d->d_v;
    if (Hk <= 0 || Hv <= 0 || Hv % Hk || dk > GD_MAX || dv > GD_MAX || K < 1 || K > GD_MAX_K || Hk > GD_CNT) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED,
                   "CUDA gdn_decode: Hk %d, Hv %d, d_k %d, d_v %d, conv %d outside what the kernel handles", Hk, Hv,
                   dk, dv, K);
        cx->failed = 1;
        return;
    }
    if (!cx->gdn_cnt) {
        if (cx->capturing) { /* first use while recording: the step runs again without it */
            cx->cap_bad = 1;
            return;
        }
        void *p = NULL;
        DR_CUDA_NOTE(cx, cudaMalloc(&p, GD_CNT * sizeof(int)));
        if (!p)
            return;
        DR_CUDA_NOTE(cx, cudaMemsetAsync(p, 0, GD_CNT * sizeof(int), cx->stream));
        cx->gdn_cnt = (int *)p;
    }
    const unsigned threads = 32u * (unsigned)((dv + 7) / 8);
#define GD_LAUNCH(R)                                                                                             \
    dr_cuda_launch(cx, cx->pdl_gdn > 0, gdn_decode_kernel<R>, dim3((unsigned)Hv), dim3(threads), 0, y, qkv_raw, z, \
                   b, a, conv_state, state, conv_w, K, A_log, dt_bias, norm_w, Hk, Hv, dk, dv, eps, cx->gdn_cnt,   \
                   cx->pdl_gdn)
    if (dk <= 32)
        GD_LAUNCH(8);
    else if (dk <= 64)
        GD_LAUNCH(16);
    else if (dk <= 128)
        GD_LAUNCH(32);
    else
        GD_LAUNCH(64);
#undef GD_LAUNCH
}
