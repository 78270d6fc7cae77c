/* ops/cuda/gdn_chunked.cu - the gated delta rule over a block of tokens in
 * the chunked (WY) form, chunk 64 (semantics: ops/cpu/gdn.c chunk_head,
 * MODEL.md 5.4). The state is fp32 from end to end: it is never rounded,
 * also not at chunk boundaries.
 *
 * For chunk c (rows i < 64, G_i = cumulative log decay, beta_i, unit q/k):
 *   A_ik = beta_i (k_i . k_k) exp(G_i - G_k)   (k < i)
 *   (I + A) W  = beta exp(G) K,   (I + A) U = beta V       (independent of S)
 *   P_ik = (q_i . k_k) exp(G_i - G_k)          (k <= i)
 * and with the entry state S:
 *   V' = U - W S  (= the CPU's solution of (I + A) V' = beta (V - exp(G) K S))
 *   O  = exp(G) (Q S) + P V'
 *   S  <- exp(G_last) S + (exp(G_last - G) K)^T V'
 *
 * Kernel 1 (gc_prep): one block per (chunk, v head), all chunks at once:
 * normalised q/k, G, A, P, and the forward substitution for W and U (one
 * thread per column, the column in registers). Kernel 2 (gc_scan): one
 * block per (v head, 32 state columns) walks the chunks in order with its
 * state slice in shared memory: V' and Q S in one pass over S, then P V',
 * then the state update. Both are fp32 FMA kernels (no tensor cores): the
 * whole layer is a few per cent of the recurrence's time at T = 8192 and
 * the results stay within fp32 reordering of the CPU (docs/CUDA.md).
 *
 * Tokens are taken in segments of GC_SEG chunks so the scratch stays
 * bounded; the state in `state` carries between segments.
 */
#include "cuda_ops.h"
#include "prefill.cuh"

#include <math.h>

#define GC_C 64        /* chunk */
#define GC_SEG 64      /* chunks per segment (4096 tokens) */
#define GC_COLS 32     /* state columns per scan block */
#define GC_THREADS 256
#define GC_L2_EPS 1e-6f

/* padded head dim of q/k: 32, 64, 128 or 256 (zeros past d_k) */
static int gc_dkp(int dk) { return dk <= 32 ? 32 : dk <= 64 ? 64 : dk <= 128 ? 128 : 256; }

static size_t gc_prep_smem(int DKP) { return (size_t)(2 * GC_C * (DKP + 4) + GC_C * (GC_C + 1) + 2 * GC_C) * 4; }
static size_t gc_scan_smem(int DKP) {
    return (size_t)(DKP * GC_COLS + 2 * GC_C * (DKP + 4) + GC_C * GC_COLS + GC_C * (GC_C + 4) + 2 * GC_C) * 4;
}

/* Scratch, per segment of nc chunks (floats):
 * W [nc][Hv][64][DKP], U [nc][Hv][64][dv], P [nc][Hv][64][64], G [nc][Hv][64],
 * Qn, Kn [nc][Hk][64][DKP]. */
typedef struct gc_buf {
    float *W, *U, *P, *G, *Qn, *Kn;
} gc_buf;

template <int DKP>
__global__ void __launch_bounds__(GC_THREADS)
    gc_prep(gc_buf b, const float *__restrict__ qkv, const float *__restrict__ beta, const float *__restrict__ g,
            int t_base, int T, int Hk, int Hv, int dk, int dv) {
    const int SQ = DKP + 4;
    extern __shared__ __align__(16) float gc_sm[];
    float *sq = gc_sm, *sk = sq + GC_C * SQ, *sA = sk + GC_C * SQ, *sG = sA + GC_C * (GC_C + 1), *sB = sG + GC_C;
    const int c = blockIdx.x, j = blockIdx.y, nc = gridDim.x, kh = j / (Hv / Hk);
    const int t0 = t_base + c * GC_C, n = min(GC_C, T - t0);
    const int C = 2 * Hk * dk + Hv * dv;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const bool first = j % (Hv / Hk) == 0; /* writes the k head's Qn/Kn */
    const float qscale = 1.0f / sqrtf((float)dk);

    /* 1. unit q (times dk^-0.5) and k rows, zero past n and past dk */
    for (int i = w; i < GC_C; i += GC_THREADS / 32) {
        const float *row = qkv + (size_t)(t0 + i) * C;
        float sqq = 0.0f, skk = 0.0f;
        if (i < n)
            for (int d = lane; d < dk; d += 32) {
                const float a = row[(size_t)kh * dk + d], e = row[(size_t)(Hk + kh) * dk + d];
                sqq += a * a;
                skk += e * e;
            }
        sqq = dr_warp_sum(sqq);
        skk = dr_warp_sum(skk);
        const float iq = qscale / sqrtf(sqq + GC_L2_EPS), ik = 1.0f / sqrtf(skk + GC_L2_EPS);
        float *qn = b.Qn + (((size_t)c * Hk + kh) * GC_C + i) * DKP, *kn = b.Kn + (((size_t)c * Hk + kh) * GC_C + i) * DKP;
        for (int d = lane; d < DKP; d += 32) {
            float a = 0.0f, e = 0.0f;
            if (i < n && d < dk) {
                a = row[(size_t)kh * dk + d] * iq;
                e = row[(size_t)(Hk + kh) * dk + d] * ik;
            }
            sq[i * SQ + d] = a;
            sk[i * SQ + d] = e;
            if (first) {
                qn[d] = a;
                kn[d] = e;
            }
        }
    }
    /* 2. G = cumulative g (in order, as the CPU), beta; zero past n */
    if (tid == 0) {
        float G = 0.0f;
        for (int i = 0; i < GC_C; i++) {
            if (i < n)
                G += g[(size_t)(t0 + i) * Hv + j];
            sG[i] = G;
            sB[i] = i < n ? beta[(size_t)(t0 + i) * Hv + j] : 0.0f;
            b.G[((size_t)c * Hv + j) * GC_C + i] = G;
        }
    }
    __syncthreads();
    /* 3. A (strictly lower) into shared memory, P (lower with the diagonal) out */
    {
        const int ty = tid >> 4, tx = tid & 15;
        float kk[4][4], qk[4][4];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                kk[a][e] = qk[a][e] = 0.0f;
        for (int d = 0; d < DKP; d += 4) {
            float4 qi[4], ki[4], kj[4];
#pragma unroll
            for (int a = 0; a < 4; a++) {
                qi[a] = *(const float4 *)(sq + (ty + 16 * a) * SQ + d);
                ki[a] = *(const float4 *)(sk + (ty + 16 * a) * SQ + d);
                kj[a] = *(const float4 *)(sk + (tx + 16 * a) * SQ + d);
            }
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    kk[a][e] += ki[a].x * kj[e].x + ki[a].y * kj[e].y + ki[a].z * kj[e].z + ki[a].w * kj[e].w;
                    qk[a][e] += qi[a].x * kj[e].x + qi[a].y * kj[e].y + qi[a].z * kj[e].z + qi[a].w * kj[e].w;
                }
        }
        float *P = b.P + ((size_t)c * Hv + j) * GC_C * GC_C;
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = ty + 16 * a, k = tx + 16 * e;
                const float dec = k <= i ? expf(sG[i] - sG[k]) : 0.0f;
                sA[i * (GC_C + 1) + k] = k < i ? sB[i] * kk[a][e] * dec : 0.0f;
                P[i * GC_C + k] = qk[a][e] * dec;
            }
    }
    __syncthreads();
    /* 4. forward substitution, one column per thread: W (cols < DKP), U */
    for (int col = tid; col < DKP + dv; col += GC_THREADS) {
        float x[GC_C];
        const bool isw = col < DKP;
        float *dst = isw ? b.W + ((size_t)c * Hv + j) * GC_C * DKP + col
                         : b.U + ((size_t)c * Hv + j) * GC_C * dv + (col - DKP);
        const int ld = isw ? DKP : dv;
        const float *vsrc = qkv + (size_t)t0 * C + (size_t)2 * Hk * dk + (size_t)j * dv + (isw ? 0 : col - DKP);
#pragma unroll
        for (int i = 0; i < GC_C; i++) {
            float acc;
            if (isw)
                acc = sB[i] * expf(sG[i]) * sk[i * SQ + col];
            else
                acc = i < n ? sB[i] * vsrc[(size_t)i * C] : 0.0f;
#pragma unroll
            for (int k = 0; k < i; k++)
                acc -= sA[i * (GC_C + 1) + k] * x[k];
            x[i] = acc;
            dst[(size_t)i * ld] = acc;
        }
    }
    (void)nc;
}

/* RS = DKP / 16 state rows per thread in the update */
template <int DKP>
__global__ void __launch_bounds__(GC_THREADS)
    gc_scan(gc_buf b, float *__restrict__ o, float *__restrict__ state, int nc, int t_base, int T, int Hk, int Hv,
            int dk, int dv) {
    const int SQ = DKP + 4, SP = GC_C + 4, RS = DKP / 16;
    extern __shared__ __align__(16) float gc_sm[];
    float *sS = gc_sm, *sW = sS + DKP * GC_COLS, *sQ = sW + GC_C * SQ, *sV = sQ + GC_C * SQ, *sP = sV + GC_C * GC_COLS;
    float *sG = sP + GC_C * SP, *sF = sG + GC_C;
    const int j = blockIdx.x, c0 = blockIdx.y * GC_COLS, kh = j / (Hv / Hk);
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    float *S = state + (size_t)j * dk * dv;
    for (int i = tid; i < DKP * GC_COLS; i += GC_THREADS) {
        const int r = i / GC_COLS, cc = i % GC_COLS;
        sS[i] = (r < dk && c0 + cc < dv) ? S[(size_t)r * dv + c0 + cc] : 0.0f;
    }
    for (int c = 0; c < nc; c++) {
        const int t0 = t_base + c * GC_C, n = min(GC_C, T - t0);
        const float *W = b.W + ((size_t)c * Hv + j) * GC_C * DKP;
        const float *Qn = b.Qn + ((size_t)c * Hk + kh) * GC_C * DKP;
        const float *Kn = b.Kn + ((size_t)c * Hk + kh) * GC_C * DKP;
        const float *U = b.U + ((size_t)c * Hv + j) * GC_C * dv;
        const float *P = b.P + ((size_t)c * Hv + j) * GC_C * GC_C;
        for (int i = tid; i < GC_C * DKP / 4; i += GC_THREADS) {
            const int r = i / (DKP / 4), e = (i % (DKP / 4)) * 4;
            *(float4 *)(sW + r * SQ + e) = *(const float4 *)(W + (size_t)r * DKP + e);
            *(float4 *)(sQ + r * SQ + e) = *(const float4 *)(Qn + (size_t)r * DKP + e);
        }
        for (int i = tid; i < GC_C * GC_COLS; i += GC_THREADS) {
            const int r = i / GC_COLS, cc = i % GC_COLS;
            sV[i] = c0 + cc < dv ? U[(size_t)r * dv + c0 + cc] : 0.0f;
        }
        for (int i = tid; i < GC_C * GC_C / 4; i += GC_THREADS) {
            const int r = i / (GC_C / 4), e = (i % (GC_C / 4)) * 4;
            *(float4 *)(sP + r * SP + e) = *(const float4 *)(P + (size_t)r * GC_C + e);
        }
        if (tid < GC_C)
            sG[tid] = b.G[((size_t)c * Hv + j) * GC_C + tid];
        __syncthreads();
        /* V' = U - W S and Q S over one pass of S: rows 4 ty.., cols 2 tx.. */
        float av[4][2], ao[4][2];
#pragma unroll
        for (int a = 0; a < 4; a++) {
            const float2 u = *(const float2 *)(sV + (4 * ty + a) * GC_COLS + 2 * tx);
            av[a][0] = u.x;
            av[a][1] = u.y;
            ao[a][0] = ao[a][1] = 0.0f;
        }
        for (int k = 0; k < DKP; k += 4) {
            float2 s2[4];
#pragma unroll
            for (int e = 0; e < 4; e++)
                s2[e] = *(const float2 *)(sS + (k + e) * GC_COLS + 2 * tx);
#pragma unroll
            for (int a = 0; a < 4; a++) {
                const float4 w4 = *(const float4 *)(sW + (4 * ty + a) * SQ + k);
                const float4 q4 = *(const float4 *)(sQ + (4 * ty + a) * SQ + k);
                av[a][0] -= w4.x * s2[0].x + w4.y * s2[1].x + w4.z * s2[2].x + w4.w * s2[3].x;
                av[a][1] -= w4.x * s2[0].y + w4.y * s2[1].y + w4.z * s2[2].y + w4.w * s2[3].y;
                ao[a][0] += q4.x * s2[0].x + q4.y * s2[1].x + q4.z * s2[2].x + q4.w * s2[3].x;
                ao[a][1] += q4.x * s2[0].y + q4.y * s2[1].y + q4.z * s2[2].y + q4.w * s2[3].y;
            }
        }
        __syncthreads(); /* every read of sV (U) and sQ is done */
#pragma unroll
        for (int a = 0; a < 4; a++) {
            *(float2 *)(sV + (4 * ty + a) * GC_COLS + 2 * tx) = make_float2(av[a][0], av[a][1]);
            const float eg = expf(sG[4 * ty + a]);
            ao[a][0] *= eg;
            ao[a][1] *= eg;
        }
        /* K (for the update) into the Q buffer; f_i = exp(G_last - G_i) */
        for (int i = tid; i < GC_C * DKP / 4; i += GC_THREADS) {
            const int r = i / (DKP / 4), e = (i % (DKP / 4)) * 4;
            *(float4 *)(sQ + r * SQ + e) = *(const float4 *)(Kn + (size_t)r * DKP + e);
        }
        if (tid < GC_C)
            sF[tid] = expf(sG[GC_C - 1] - sG[tid]);
        __syncthreads();
        /* O = exp(G) Q S + P V' */
        for (int i = 0; i < GC_C; i += 4) {
            float2 v2[4];
#pragma unroll
            for (int e = 0; e < 4; e++)
                v2[e] = *(const float2 *)(sV + (i + e) * GC_COLS + 2 * tx);
#pragma unroll
            for (int a = 0; a < 4; a++) {
                const float4 p4 = *(const float4 *)(sP + (4 * ty + a) * SP + i);
                ao[a][0] += p4.x * v2[0].x + p4.y * v2[1].x + p4.z * v2[2].x + p4.w * v2[3].x;
                ao[a][1] += p4.x * v2[0].y + p4.y * v2[1].y + p4.z * v2[2].y + p4.w * v2[3].y;
            }
        }
#pragma unroll
        for (int a = 0; a < 4; a++) {
            const int r = 4 * ty + a;
            if (r < n) {
                float *orow = o + ((size_t)(t0 + r) * Hv + j) * dv + c0 + 2 * tx;
                if (c0 + 2 * tx < dv)
                    orow[0] = ao[a][0];
                if (c0 + 2 * tx + 1 < dv)
                    orow[1] = ao[a][1];
            }
        }
        /* S <- exp(G_last) S + (f K)^T V': rows RS ty.., cols 2 tx.. */
        {
            const float el = expf(sG[GC_C - 1]);
            float as[RS][2];
#pragma unroll
            for (int a = 0; a < RS; a++) {
                const float2 s = *(const float2 *)(sS + (RS * ty + a) * GC_COLS + 2 * tx);
                as[a][0] = s.x * el;
                as[a][1] = s.y * el;
            }
            for (int i = 0; i < GC_C; i++) {
                const float2 v = *(const float2 *)(sV + i * GC_COLS + 2 * tx);
                const float f = sF[i];
                const float *kr = sQ + i * SQ + RS * ty;
#pragma unroll
                for (int a = 0; a < RS; a++) {
                    const float kf = kr[a] * f;
                    as[a][0] += kf * v.x;
                    as[a][1] += kf * v.y;
                }
            }
#pragma unroll
            for (int a = 0; a < RS; a++)
                *(float2 *)(sS + (RS * ty + a) * GC_COLS + 2 * tx) = make_float2(as[a][0], as[a][1]);
        }
        __syncthreads(); /* the next chunk reloads every buffer */
    }
    for (int i = tid; i < DKP * GC_COLS; i += GC_THREADS) {
        const int r = i / GC_COLS, cc = i % GC_COLS;
        if (r < dk && c0 + cc < dv)
            S[(size_t)r * dv + c0 + cc] = sS[i];
    }
}

template <int DKP>
static void gc_run(dr_cuda_ctx *cx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                   const dr_gdn_dims *d, int T, gc_buf b) {
    const int Hk = d->n_k_heads, Hv = d->n_v_heads, dk = d->d_k, dv = d->d_v;
    const size_t s1 = gc_prep_smem(DKP), s2 = gc_scan_smem(DKP);
    DR_CUDA_NOTE(cx, cudaFuncSetAttribute(gc_prep<DKP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s1));
    DR_CUDA_NOTE(cx, cudaFuncSetAttribute(gc_scan<DKP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s2));
    for (int t_base = 0; t_base < T; t_base += GC_SEG * GC_C) {
        const int rem = T - t_base, nc = (rem < GC_SEG * GC_C ? rem + GC_C - 1 : GC_SEG * GC_C) / GC_C;
        gc_prep<DKP><<<dim3((unsigned)nc, (unsigned)Hv), GC_THREADS, s1, cx->stream>>>(b, qkv, beta, g, t_base, T, Hk,
                                                                                       Hv, dk, dv);
        DR_CUDA_LAUNCHED(cx);
        gc_scan<DKP><<<dim3((unsigned)Hv, (unsigned)((dv + GC_COLS - 1) / GC_COLS)), GC_THREADS, s2, cx->stream>>>(
            b, o, state, nc, t_base, T, Hk, Hv, dk, dv);
        DR_CUDA_LAUNCHED(cx);
    }
}

void dr_cuda_gdn_chunked(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                         const dr_gdn_dims *d, int T, float *ws) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (T <= 0)
        return;
    const int Hk = d->n_k_heads, Hv = d->n_v_heads, dk = d->d_k, dv = d->d_v;
    if (dk > 256 || dk <= 0 || dv <= 0 || Hk <= 0 || Hv % Hk) {
        dr_cuda_gdn_recurrent(ctx, o, qkv, beta, g, state, d, T, ws); /* reports the shape */
        return;
    }
    const int DKP = gc_dkp(dk);
    const size_t optin = (size_t)dr_cuda_smem_optin(cx);
    if (T < 2 || !dr_cuda_prefill_enabled() || gc_prep_smem(DKP) > optin || gc_scan_smem(DKP) > optin) {
        /* (e.g. sm_89 with d_k 256) the recurrence computes the same function */
        dr_cuda_gdn_recurrent(ctx, o, qkv, beta, g, state, d, T, ws);
        return;
    }
    const int ncs = (T < GC_SEG * GC_C ? T + GC_C - 1 : GC_SEG * GC_C) / GC_C;
    const size_t rows = (size_t)ncs * GC_C;
    const size_t nW = rows * Hv * DKP, nU = rows * Hv * dv, nP = rows * Hv * GC_C, nG = rows * Hv,
                 nQ = rows * Hk * DKP;
    float *base = (float *)dr_cuda_scratch(cx, DR_SCR_ATTN, (nW + nU + nP + nG + 2 * nQ) * sizeof(float));
    if (!base)
        return;
    gc_buf b;
    b.W = base;
    b.U = b.W + nW;
    b.P = b.U + nU;
    b.G = b.P + nP;
    b.Qn = b.G + nG;
    b.Kn = b.Qn + nQ;
    switch (DKP) {
    case 32: gc_run<32>(cx, o, qkv, beta, g, state, d, T, b); break;
    case 64: gc_run<64>(cx, o, qkv, beta, g, state, d, T, b); break;
    case 128: gc_run<128>(cx, o, qkv, beta, g, state, d, T, b); break;
    default: gc_run<256>(cx, o, qkv, beta, g, state, d, T, b); break;
    }
}
