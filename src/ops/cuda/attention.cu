/* ops/cuda/attention.cu - partial NeoX RoPE and causal GQA attention over the
 * KV cache on the GPU (semantics: ops/cpu/attention.c, MODEL.md 4).
 *
 * Attention is split-K (flash-decoding): each block takes one query row, one
 * head and one slice of the keys, keeps an online softmax in fp32 (running
 * max m, sum l, weighted V sum) over its four warps, and a second kernel
 * merges the slices. With one slice (long prefills fill the GPU with rows
 * alone) the block writes the output directly. The same kernel serves decode
 * (T = 1, many slices) and prefill (causal: row t sees pos0 + t + 1 keys).
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "prefill.cuh"

#include <math.h>
#include <stdlib.h>

/* ---- RoPE ---- */

/* inv_freq is computed on the host with the CPU's expression (powf), so the
 * angles are the CPU's bit for bit; only cosf/sinf differ by an ulp. */
static const float *rope_table(dr_cuda_ctx *cx, int d_rot, float theta) {
    if (cx->rope_inv && cx->rope_drot == d_rot && cx->rope_theta == theta)
        return cx->rope_inv;
    if (cx->capturing) { /* can't wait while recording: the step runs again without it */
        cx->cap_bad = 1;
        return NULL;
    }
    cx->scr_gen++; /* recordings hold the old table */
    const int half = d_rot / 2;
    float *h = (float *)malloc((size_t)(half ? half : 1) * sizeof *h);
    if (!h) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_NOMEM, "out of memory (RoPE table)");
        cx->failed = 1;
        return NULL;
    }
    for (int i = 0; i < half; i++)
        h[i] = 1.0f / powf(theta, (float)(2 * i) / (float)d_rot);
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream)); /* the old table may be in use */
    cudaFree(cx->rope_inv);
    cx->rope_inv = NULL;
    float *d = NULL;
    cudaError_t e = cudaMalloc(&d, (size_t)(half ? half : 1) * sizeof(float));
    if (e == cudaSuccess)
        e = dr_cuda_h2d(cx, d, h, (size_t)half * sizeof(float));
    free(h);
    if (e != cudaSuccess) {
        cudaFree(d);
        dr_cuda_note_fail(cx, __FILE__, __LINE__, "RoPE table upload", e);
        return NULL;
    }
    cx->rope_inv = d;
    cx->rope_drot = d_rot;
    cx->rope_theta = theta;
    return d;
}

__global__ void rope_kernel(float *x, const float *inv, int T, int n_heads, int d_head, int half, int pos0,
                            const int32_t *dpos) {
    DR_TL_SCOPE();
    if (dpos) /* an open single-token step: the position is in device memory */
        pos0 = *dpos;
    const size_t n = (size_t)T * n_heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const size_t th = idx / half; /* t * n_heads + h */
        const int t = (int)(th / n_heads);
        const float ang = (float)(pos0 + t) * inv[i];
        const float c = cosf(ang), s = sinf(ang);
        float *u = x + th * d_head;
        const float u1 = u[i], u2 = u[i + half];
        u[i] = u1 * c - u2 * s;
        u[i + half] = u2 * c + u1 * s;
    }
}

void dr_cuda_rope(void *ctx, float *x, int T, int n_heads, int d_head, int d_rot, int pos0, float theta) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int half = d_rot / 2;
    const size_t n = (size_t)T * n_heads * half;
    if (!n)
        return;
    const float *inv = rope_table(cx, d_rot, theta);
    if (!inv)
        return;
    size_t b = (n + 255) / 256, cap = (size_t)cx->n_sm * 16;
    rope_kernel<<<(unsigned)(b > cap ? cap : b), 256, 0, cx->stream>>>(x, inv, T, n_heads, d_head, half, pos0,
                                                                       dr_cuda_step_pos(cx));
    DR_CUDA_LAUNCHED(cx);
}

/* ---- attention ---- */

#define ATT_WARPS 4

/* Warp 0 combines the online-softmax states (m, l, acc) of the block's
 * ATT_WARPS warps: M, L and o[r] = sum_i acc_i[r] exp(m_i - M) for the dims
 * e = lane * ea + r * eb that this lane holds (an empty warp adds nothing).
 * Returns false in the other warps, which are then done. Every thread of
 * the block calls it (a barrier). */
template <int R>
static __device__ __forceinline__ bool att_merge_warps(float m, float l, const float (&acc)[R], int ea, int eb,
                                                       float (&o)[R], float &M, float &L) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS], sacc[ATT_WARPS][32 * R];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) {
        sm[w] = m;
        sl[w] = l;
    }
#pragma unroll
    for (int r = 0; r < R; r++)
        sacc[w][lane * ea + r * eb] = acc[r];
    __syncthreads();
    if (w != 0)
        return false;
    M = -INFINITY;
#pragma unroll
    for (int i = 0; i < ATT_WARPS; i++)
        M = fmaxf(M, sm[i]);
    float f[ATT_WARPS];
    L = 0.0f;
#pragma unroll
    for (int i = 0; i < ATT_WARPS; i++) {
        f[i] = sm[i] == -INFINITY ? 0.0f : expf(sm[i] - M);
        L += sl[i] * f[i];
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_WARPS; i++)
            s += sacc[i][lane * ea + r * eb] * f[i];
        o[r] = s;
    }
    return true;
}

/* Block (h, t, split). R = head dims per lane (d_head <= 32 R). Writes the
 * slice's (m, l) and unnormalised output, or out directly when nsplit == 1. */
template <int R, bool U4>
__global__ void __launch_bounds__(32 * ATT_WARPS)
    attn_split_kernel(float *out, float *part, float *ml, const float *q, const float *kc, const float *vc, int pos0,
                      int nH, int nKV, int hd, float scale, int nsplit, int split_len, const int32_t *dpos) {
    DR_TL_SCOPE();
    const int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z;
    if (dpos) /* an open single-token step: slices past the last key stay empty */
        pos0 = *dpos;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int n_keys = pos0 + t + 1; /* causal */
    const int s0 = sp * split_len, s1 = min(n_keys, s0 + split_len);
    const int kvh = h / (nH / nKV);
    const size_t kvs = (size_t)nKV * hd;
    const float *qh = q + ((size_t)t * nH + h) * hd;
    float qr[R], acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int e = lane + 32 * r;
        qr[r] = e < hd ? qh[e] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    /* four keys per step: their loads and reductions overlap (the chain
       load -> dot -> shuffle -> exp of one key is latency bound) */
    int s = s0 + w;
    /* (decode only: in long prefills the extra registers cost more than the
       overlap gains, measured 113 -> 222 ms at T = 8192 on the H200) */
    for (; U4 && s + 3 * ATT_WARPS < s1; s += 4 * ATT_WARPS) {
        float sc[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const float *ks = kc + (size_t)(s + u * ATT_WARPS) * kvs + (size_t)kvh * hd;
            float dsum = 0.0f;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int e = lane + 32 * r;
                if (e < hd)
                    dsum += qr[r] * ks[e];
            }
            sc[u] = dsum;
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
            sc[u] = dr_warp_sum(sc[u]) * scale;
        const float mn = fmaxf(fmaxf(m, fmaxf(sc[0], sc[1])), fmaxf(sc[2], sc[3]));
        const float corr = expf(m - mn);
        float p[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            p[u] = expf(sc[u] - mn);
        l = l * corr + ((p[0] + p[1]) + (p[2] + p[3]));
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int e = lane + 32 * r;
            float a = acc[r] * corr;
            if (e < hd) {
#pragma unroll
                for (int u = 0; u < 4; u++)
                    a += p[u] * vc[(size_t)(s + u * ATT_WARPS) * kvs + (size_t)kvh * hd + e];
            }
            acc[r] = a;
        }
        m = mn;
    }
    for (; s < s1; s += ATT_WARPS) {
        const float *ks = kc + (size_t)s * kvs + (size_t)kvh * hd;
        const float *vs = vc + (size_t)s * kvs + (size_t)kvh * hd;
        float dsum = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int e = lane + 32 * r;
            if (e < hd)
                dsum += qr[r] * ks[e];
        }
        const float sc = dr_warp_sum(dsum) * scale;
        const float mn = fmaxf(m, sc);
        const float corr = expf(m - mn), p = expf(sc - mn);
        l = l * corr + p;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int e = lane + 32 * r;
            acc[r] = acc[r] * corr + (e < hd ? p * vs[e] : 0.0f);
        }
        m = mn;
    }
    float o[R], M, L;
    if (!att_merge_warps<R>(m, l, acc, 1, 32, o, M, L))
        return;
    const size_t row = (size_t)t * nH + h;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int e = lane + 32 * r;
        if (e >= hd)
            continue;
        if (nsplit == 1)
            out[row * hd + e] = o[r] / L;
        else
            part[(row * nsplit + sp) * hd + e] = o[r];
    }
    if (nsplit > 1 && lane == 0) {
        ml[(row * nsplit + sp) * 2] = M;
        ml[(row * nsplit + sp) * 2 + 1] = L;
    }
}

/* Merge the slices of one (t, h) row: out = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s. */
__global__ void attn_merge_kernel(float *out, const float *part, const float *ml, int nH, int hd, int nsplit,
                                  const float *gate) {
    DR_TL_SCOPE();
    const size_t row = (size_t)blockIdx.y * nH + blockIdx.x;
    const float *mlr = ml + row * nsplit * 2;
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++)
        M = fmaxf(M, mlr[2 * s]);
    float L = 0.0f;
    for (int s = 0; s < nsplit; s++)
        if (mlr[2 * s] != -INFINITY)
            L += mlr[2 * s + 1] * expf(mlr[2 * s] - M);
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < nsplit; s++)
            if (mlr[2 * s] != -INFINITY)
                o += part[(row * nsplit + s) * hd + e] * expf(mlr[2 * s] - M);
        out[row * hd + e] = o / L;
        if (gate) /* the output gate (attention_block), as sigmoid_mul after the merge */
            out[row * hd + e] *= dr_dev_sigmoid(gate[row * hd + e]);
    }
}

/* Decode (T = 1). Block (head h, slice sp) of 4 warps; a warp takes chunks
 * of AD_K consecutive keys and loads all their K rows (lane: R consecutive
 * dims of the head) before the first dot product, then all their V rows
 * before the first update, so a chunk costs two memory round trips instead
 * of two per key (attn_split_kernel's chain measured 90 us for 128 keys on
 * the H100). Same online softmax, the same (m, l, o) slices and merge. */
#define AD_K 8

/* this lane's R dims of the cache rows c .. c + nk - 1 (zeros past nk) */
template <int R>
static __device__ __forceinline__ void ad_rows(float (&kv)[AD_K][R], const float *cache, size_t kvs, size_t koff, int c,
                                               int nk, bool on) {
#pragma unroll
    for (int j = 0; j < AD_K; j++)
#pragma unroll
        for (int r = 0; r < R; r += 2) {
            const float2 v2 =
                on && j < nk ? *(const float2 *)(cache + (size_t)(c + j) * kvs + koff + r) : make_float2(0.0f, 0.0f);
            kv[j][r] = v2.x, kv[j][r + 1] = v2.y;
        }
}

/* One chunk of nk <= AD_K keys (their K rows kk, this lane's R dims) into a
 * warp's online softmax (query qr): the new running max m and sum l, the
 * chunk's weights p against m, and corr, the factor for the old V sum. */
template <int R>
static __device__ __forceinline__ void ad_softmax(const float (&qr)[R], const float (&kk)[AD_K][R], int nk, float scale,
                                                  float &m, float &l, float (&p)[AD_K], float &corr) {
    float sc[AD_K];
#pragma unroll
    for (int j = 0; j < AD_K; j++) {
        float d = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++)
            d += qr[r] * kk[j][r];
        sc[j] = j < nk ? dr_warp_sum(d) * scale : -INFINITY;
    }
    float mn = m;
#pragma unroll
    for (int j = 0; j < AD_K; j++)
        mn = fmaxf(mn, sc[j]);
    corr = expf(m - mn);
    float ps = 0.0f;
#pragma unroll
    for (int j = 0; j < AD_K; j++) {
        p[j] = j < nk ? expf(sc[j] - mn) : 0.0f;
        ps += p[j];
    }
    l = l * corr + ps;
    m = mn;
}

/* acc = acc corr + sum_j p[j] V row j (this lane's R dims, vv). */
template <int R>
static __device__ __forceinline__ void ad_accum(float (&acc)[R], const float (&p)[AD_K], float corr,
                                                const float (&vv)[AD_K][R]) {
#pragma unroll
    for (int r = 0; r < R; r++) {
        float a = acc[r] * corr;
#pragma unroll
        for (int j = 0; j < AD_K; j++)
            a += p[j] * vv[j][r];
        acc[r] = a;
    }
}

/* One warp's online softmax over keys c0, c0 + ATT_WARPS AD_K, ... (chunks
 * of AD_K) below s1: running max m, sum l and weighted V sum acc of the R
 * dims this lane holds (query qr). */
template <int R>
static __device__ __forceinline__ void ad_scan(const float (&qr)[R], const float *kc, const float *vc, size_t kvs,
                                               size_t koff, int c0, int s1, bool on, float scale, float &m, float &l,
                                               float (&acc)[R]) {
    for (int c = c0; c < s1; c += ATT_WARPS * AD_K) {
        const int nk = min(AD_K, s1 - c);
        float kv[AD_K][R], p[AD_K], corr;
        ad_rows<R>(kv, kc, kvs, koff, c, nk, on);
        ad_softmax<R>(qr, kv, nk, scale, m, l, p, corr);
        ad_rows<R>(kv, vc, kvs, koff, c, nk, on);
        ad_accum<R>(acc, p, corr, kv);
    }
}

/* Warp 0 of block (h, sp) after att_merge_warps: the row's output (one
 * slice: o / L, times sigmoid(gate[h gs + e]) when gate is given) or the
 * slice's unnormalised o and (M, L). */
template <int R>
static __device__ __forceinline__ void ad_write(float *out, float *part, float *ml, int h, int sp, int hd, int nsplit,
                                                const float (&o)[R], float M, float L, const float *gate, int gs) {
    const int lane = threadIdx.x & 31, e0 = lane * R;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int e = e0 + r;
        if (e0 >= hd)
            break;
        if (nsplit == 1) {
            out[(size_t)h * hd + e] = o[r] / L;
            if (gate) /* as sigmoid_mul after the kernel */
                out[(size_t)h * hd + e] *= dr_dev_sigmoid(gate[(size_t)h * gs + e]);
        } else {
            part[((size_t)h * nsplit + sp) * hd + e] = o[r];
        }
    }
    if (nsplit > 1 && lane == 0) {
        ml[((size_t)h * nsplit + sp) * 2] = M;
        ml[((size_t)h * nsplit + sp) * 2 + 1] = L;
    }
}

template <int R>
__global__ void __launch_bounds__(32 * ATT_WARPS)
    attn_decode_kernel(float *out, float *part, float *ml, const float *q, const float *kc, const float *vc,
                       int pos0, int nH, int nKV, int hd, float scale, int nsplit, int split_len,
                       const int32_t *dpos, const float *gate) {
    DR_TL_SCOPE();
    const int h = blockIdx.x, sp = blockIdx.y;
    if (dpos) /* an open single-token step: slices past the last key stay empty */
        pos0 = *dpos;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, e0 = lane * R;
    const bool on = e0 < hd; /* hd < 32 R: the last lanes hold no dims */
    const int s0 = sp * split_len, s1 = min(pos0 + 1, s0 + split_len);
    const size_t kvs = (size_t)nKV * hd, koff = (size_t)(h / (nH / nKV)) * hd + e0;
    float qr[R], acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        qr[r] = on ? q[(size_t)h * hd + e0 + r] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    ad_scan<R>(qr, kc, vc, kvs, koff, s0 + w * AD_K, s1, on, scale, m, l, acc);
    float o[R], M, L;
    if (att_merge_warps<R>(m, l, acc, R, 1, o, M, L))
        ad_write<R>(out, part, ml, h, sp, hd, nsplit, o, M, L, gate, hd);
}

/* Head dims per lane of attn_decode_kernel for head size hd (<= 256). */
static int ad_dims(int hd) { return hd <= 64 ? 2 : hd <= 128 ? 4 : 8; }

/* The decode kernel takes hd when every lane's R dims are all inside the
 * head or all past it (a lane holds dims e0 .. e0 + R - 1, e0 = lane R). */
static bool ad_fits(int hd) { return hd <= 256 && hd % ad_dims(hd) == 0; }

static int attn_decode_on(void) { /* DR_CUDA_ATT_DEC=0: the split kernel for decode too (a same-run baseline) */
    static int on = -1;
    return dr_env_on("DR_CUDA_ATT_DEC", &on);
}

/* Keys an attention grid for rows pos0 .. pos0 + T - 1 is shaped for: an
 * open step's capacity (so a recording serves every position up to it),
 * else the keys of the last row. */
static int att_grid_keys(const dr_cuda_ctx *cx, int pos0, int T) { return cx->step_on ? cx->step_cap : pos0 + T; }

/* one token: slices of >= ATT_WARPS * AD_K keys (a chunk per warp), at most
 * 8 blocks per SM in all */
static void ad_split(const dr_cuda_ctx *cx, int pos0, int nH, int *nsplit, int *split_len) {
    const int n_max = att_grid_keys(cx, pos0, 1), per = ATT_WARPS * AD_K;
    int ns = (n_max + per - 1) / per, lim = 8 * cx->n_sm / nH;
    ns = ns > lim ? lim : ns;
    ns = ns < 1 ? 1 : ns;
    *nsplit = ns;
    *split_len = (n_max + ns - 1) / ns;
}

/* The slices' partial outputs and (m, l) (NULL with one slice); false when
 * the scratch could not be had (recorded in cx). */
static bool ad_parts(dr_cuda_ctx *cx, int nH, int hd, int nsplit, float **part, float **ml) {
    *part = *ml = NULL;
    if (nsplit == 1)
        return true;
    *part = (float *)dr_cuda_scratch(cx, DR_SCR_ATTN, (size_t)nH * nsplit * ((size_t)hd + 2) * sizeof(float));
    if (!*part)
        return false;
    *ml = *part + (size_t)nH * nsplit * hd;
    return true;
}

static void attention_decode(dr_cuda_ctx *cx, float *out, const float *q, const float *k_cache, const float *v_cache,
                             int pos0, int nH, int nKV, int hd, float scale, const float *gate) {
    int nsplit, split_len;
    ad_split(cx, pos0, nH, &nsplit, &split_len);
    float *part, *ml;
    if (!ad_parts(cx, nH, hd, nsplit, &part, &ml))
        return;
    dim3 grid((unsigned)nH, (unsigned)nsplit), block(32 * ATT_WARPS);
    const int32_t *dp = dr_cuda_step_pos(cx);
    if (ad_dims(hd) == 2)
        attn_decode_kernel<2><<<grid, block, 0, cx->stream>>>(out, part, ml, q, k_cache, v_cache, pos0, nH, nKV, hd,
                                                              scale, nsplit, split_len, dp, gate);
    else if (ad_dims(hd) == 4)
        attn_decode_kernel<4><<<grid, block, 0, cx->stream>>>(out, part, ml, q, k_cache, v_cache, pos0, nH, nKV, hd,
                                                              scale, nsplit, split_len, dp, gate);
    else
        attn_decode_kernel<8><<<grid, block, 0, cx->stream>>>(out, part, ml, q, k_cache, v_cache, pos0, nH, nKV, hd,
                                                              scale, nsplit, split_len, dp, gate);
    DR_CUDA_LAUNCHED(cx);
    if (nsplit > 1) {
        attn_merge_kernel<<<dim3((unsigned)nH, 1), 128, 0, cx->stream>>>(out, part, ml, nH, hd, nsplit, gate);
        DR_CUDA_LAUNCHED(cx);
    }
}

void dr_cuda_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                       int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    (void)ws;
    if (T <= 0)
        return;
    if (d_head > 256) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED, "CUDA attention: head dim %d > 256", d_head);
        cx->failed = 1;
        return;
    }
    if (dr_cuda_attention_prefill(cx, out, q, k_cache, v_cache, T, pos0, n_heads, n_kv_heads, d_head, scale))
        return; /* tensor-core flash attention (attention_prefill.cu) */
    if (T == 1 && ad_fits(d_head) && attn_decode_on()) {
        attention_decode(cx, out, q, k_cache, v_cache, pos0, n_heads, n_kv_heads, d_head, scale, NULL);
        return;
    }
    /* enough blocks to fill the GPU 8 times over (latency hiding: the key
       loop is a dependent chain), slices of at least 128 keys */
    const int n_max = att_grid_keys(cx, pos0, T), rows = T * n_heads, want = 8 * cx->n_sm;
    int nsplit = rows >= want ? 1 : (want + rows - 1) / rows;
    int cap = (n_max + 127) / 128;
    if (nsplit > cap)
        nsplit = cap;
    if (nsplit < 1)
        nsplit = 1;
    const int split_len = (n_max + nsplit - 1) / nsplit;
    float *part = NULL, *ml = NULL;
    if (nsplit > 1) {
        size_t nf = (size_t)rows * nsplit * ((size_t)d_head + 2);
        part = (float *)dr_cuda_scratch(cx, DR_SCR_ATTN, nf * sizeof(float));
        if (!part)
            return;
        ml = part + (size_t)rows * nsplit * d_head;
    }
    dim3 grid((unsigned)n_heads, (unsigned)T, (unsigned)nsplit), block(32 * ATT_WARPS);
#define ATT_LAUNCH(R, U)                                                                                   \
    attn_split_kernel<R, U><<<grid, block, 0, cx->stream>>>(out, part, ml, q, k_cache, v_cache, pos0, n_heads, \
                                                           n_kv_heads, d_head, scale, nsplit, split_len, \
                                                           dr_cuda_step_pos(cx))
    const bool u4 = nsplit > 1;
    if (d_head <= 64) {
        if (u4)
            ATT_LAUNCH(2, true);
        else
            ATT_LAUNCH(2, false);
    } else if (d_head <= 128) {
        if (u4)
            ATT_LAUNCH(4, true);
        else
            ATT_LAUNCH(4, false);
    } else {
        if (u4)
            ATT_LAUNCH(8, true);
        else
            ATT_LAUNCH(8, false);
    }
#undef ATT_LAUNCH
    DR_CUDA_LAUNCHED(cx);
    if (nsplit > 1) {
        attn_merge_kernel<<<dim3((unsigned)n_heads, (unsigned)T), 128, 0, cx->stream>>>(out, part, ml, n_heads,
                                                                                         d_head, nsplit, NULL);
        DR_CUDA_LAUNCHED(cx);
    }
}

/* ---- attention_block (ops.h): the decode side of a full attention layer ---- */

/* Block b < T nH: query head b (its half of qg split from the gate, RMSNorm,
 * RoPE); b >= T nH: KV head (k: RMSNorm, RoPE; k and v stored in the
 * caches). The norm is rmsnorm_kernel's with the same thread count (the
 * same sums) and the rotation rope_kernel's, so q, gate and the cache rows
 * equal the separate kernels'. */
__global__ void attn_prep_kernel(float *q, float *gate, float *k, float *kc, float *vc, const float *qg, const float *v,
                                 const float *qn, const float *kn, const float *inv, int T, int pos0, int nH, int nKV,
                                 int hd, int half, float eps, const int32_t *dpos) {
    DR_TL_SCOPE();
    if (dpos)
        pos0 = *dpos;
    __shared__ float sh[32], row[256];
    const int b = blockIdx.x, nq = T * nH, nt = blockDim.x;
    const bool isq = b < nq;
    const int t = isq ? b / nH : (b - nq) / nKV, kb = b - nq;
    const float *x = isq ? qg + (size_t)b * 2 * hd : k + (size_t)kb * hd;
    const float *gain = isq ? qn : kn;
    if (isq)
        for (int i = threadIdx.x; i < hd; i += nt)
            gate[(size_t)b * hd + i] = x[hd + i];
    const float ss = dr_row_sumsq(x, hd, sh); /* rmsnorm_kernel's sums */
    const float iv = 1.0f / sqrtf(ss / (float)hd + eps);
    for (int i = threadIdx.x; i < hd; i += nt)
        row[i] = x[i] * iv * gain[i];
    __syncthreads();
    const float ang0 = (float)(pos0 + t);
    for (int i = threadIdx.x; i < half; i += nt) { /* rope_kernel's rotation */
        const float ang = ang0 * inv[i];
        const float c = cosf(ang), s_ = sinf(ang);
        const float u1 = row[i], u2 = row[i + half];
        row[i] = u1 * c - u2 * s_;
        row[i + half] = u2 * c + u1 * s_;
    }
    __syncthreads();
    if (isq) {
        for (int i = threadIdx.x; i < hd; i += nt)
            q[(size_t)b * hd + i] = row[i];
        return;
    }
    const size_t kv_row = (size_t)nKV * hd, dst = (size_t)(pos0 + t) * kv_row + (size_t)(kb % nKV) * hd;
    for (int i = threadIdx.x; i < hd; i += nt) {
        k[(size_t)kb * hd + i] = row[i];
        kc[dst + i] = row[i];
        vc[dst + i] = v[(size_t)kb * hd + i];
    }
}

/* ---- the fused decode block (one kernel) ---- */

#define AB_CNT 1024 /* query heads the fused block's counters cover */

/* RMSNorm (gain) and RoPE (position pos, the first 2 half dims) of one head
 * row x [hd] by one warp: y gets this lane's R dims (e0 = lane R). The same
 * products as attn_prep_kernel (the sum of squares in another order); rot:
 * the warp's hd floats of shared memory. */
template <int R>
static __device__ __forceinline__ void ab_row(float (&y)[R], const float *x, const float *gain, const float *inv,
                                              int hd, int half, float eps, float pos, float *rot, bool on) {
    const int e0 = (threadIdx.x & 31) * R;
    float ss = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        y[r] = on ? x[e0 + r] : 0.0f;
        ss += y[r] * y[r];
    }
    ss = dr_warp_sum(ss);
    const float iv = 1.0f / sqrtf(ss / (float)hd + eps);
#pragma unroll
    for (int r = 0; r < R; r++)
        y[r] = on ? y[r] * iv * gain[e0 + r] : 0.0f;
    if (half <= 0)
        return;
#pragma unroll
    for (int r = 0; r < R; r++)
        if (on)
            rot[e0 + r] = y[r];
    __syncwarp();
#pragma unroll
    for (int r = 0; r < R; r++) { /* rope_kernel's rotation of the pairs (i, i + half) */
        const int e = e0 + r, i = e < half ? e : e - half;
        if (!on || e >= 2 * half)
            continue;
        const float ang = pos * inv[i];
        const float c = cosf(ang), s_ = sinf(ang);
        y[r] = e < half ? rot[e] * c - rot[e + half] * s_ : rot[e] * c + rot[i] * s_;
    }
    __syncwarp(); /* rot may be written again */
}

#define AB_MAX_SPLIT 2048 /* slices the fused block's merge takes */

/* The merge of attn_merge_kernel for head h by one block, in parallel over
 * the slices: M, the weights exp(m_s - M) (in fs) and L from a thread per
 * slice, then each output dim over the slices. Loads bypass L1 (the other
 * blocks of this kernel wrote them). */
static __device__ void ab_merge(float *out, const float *part, const float *ml, int h, int hd, int nsplit,
                                const float *gate, int gs, float *fs, float *sh) {
    const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, w = tid >> 5;
    const float *mlr = ml + (size_t)h * nsplit * 2;
    float M = -INFINITY;
    for (int s = tid; s < nsplit; s += nt)
        M = fmaxf(M, __ldcg(mlr + 2 * s));
    M = dr_warp_max(M);
    if (lane == 0)
        sh[w] = M;
    __syncthreads();
    M = -INFINITY;
    for (int i = 0; i < (nt >> 5); i++)
        M = fmaxf(M, sh[i]);
    float L = 0.0f;
    for (int s = tid; s < nsplit; s += nt) {
        const float ms = __ldcg(mlr + 2 * s), f = ms == -INFINITY ? 0.0f : expf(ms - M);
        fs[s] = f;
        L += __ldcg(mlr + 2 * s + 1) * f;
    }
    L = dr_block_sum(L, sh); /* its barrier also publishes fs */
    for (int e = tid; e < hd; e += nt) {
        const float *pe = part + (size_t)h * nsplit * hd + e;
        float o = 0.0f;
        for (int s = 0; s < nsplit; s++)
            if (fs[s] != 0.0f)
                o += __ldcg(pe + (size_t)s * hd) * fs[s];
        out[(size_t)h * hd + e] = o / L * dr_dev_sigmoid(gate[(size_t)h * gs + e]); /* as sigmoid_mul */
    }
}

/* attention_block for one token in one launch (instead of prep, decode and
 * merge: two launch latencies less per attention layer). Block (h, sp), the
 * grid of attn_decode_kernel; warp w takes the chunks of AD_K keys from
 * s0 + w AD_K, as there:
 *  - before the PDL wait: the K rows of the warp's first chunk below pos0
 *    into registers (rows earlier steps wrote, and the position: each
 *    step starts with a kernel launched without PDL, the embedding, so no
 *    kernel of an earlier step still runs);
 *  - after it, each warp: q of head h (its half of qg, RMSNorm, RoPE);
 *  - the slice that ends at pos0: warp 0 makes the new key (k of KV head
 *    h / (nH / nKV): RMSNorm, RoPE) and stores it and v at row pos0 of the
 *    caches (the nH / nKV query heads of a KV head store the same values;
 *    no other block reads that row); block barrier; the warp whose first
 *    chunk holds pos0 loads that K row;
 *  - the online softmax as attn_decode_kernel (the first chunk's K rows from registers);
 *  - one slice: the gated output; else the slice's part, and the last of
 *    the head's nsplit blocks to finish (a device counter per head, reset
 *    by that block) merges them.
 * It lets the next kernel (o_proj's GEMV, PDL) start loading its weights at
 * once. */
template <int R>
__global__ void __launch_bounds__(32 * ATT_WARPS)
    attn_block_kernel(float *out, float *part, float *ml, int *cnt, const float *qg, const float *k, const float *v,
                      float *kc, float *vc, const float *qnw, const float *knw, const float *inv, int pos0,
                      const int32_t *dpos, int nH, int nKV, int hd, int half, float eps, float scale, int nsplit,
                      int split_len) {
    DR_TL_SCOPE();
    __shared__ float rot[ATT_WARPS][256], fs[AB_MAX_SPLIT], sh[32];
    __shared__ int last;
    dr_pdl_trigger();
    if (dpos)
        pos0 = *dpos;
    const int h = blockIdx.x, sp = blockIdx.y, g = h / (nH / nKV);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, e0 = lane * R;
    const bool on = e0 < hd;
    const int s0 = sp * split_len, s1 = min(pos0 + 1, s0 + split_len), c0 = s0 + w * AD_K;
    const size_t kvs = (size_t)nKV * hd, koff = (size_t)g * hd + e0;
    float kv[AD_K][R]; /* the first chunk's K rows, then its V rows (one set of registers: one wave) */
    const int nold = min(AD_K, min(s1 - 1, pos0 - 1) - c0 + 1); /* rows c0 .. < pos0 of the first chunk */
    ad_rows<R>(kv, kc, kvs, koff, c0, nold, on);
    dr_pdl_wait();
    float m = -INFINITY, l = 0.0f, acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
    if (s0 < s1) { /* (block-uniform) */
        float qr[R];
        ab_row<R>(qr, qg + (size_t)h * 2 * hd, qnw, inv, hd, half, eps, (float)pos0, rot[w], on);
        if (pos0 < s1) { /* the slice ends with the new key */
            if (w == 0) {
                float kr[R];
                ab_row<R>(kr, k + (size_t)g * hd, knw, inv, hd, half, eps, (float)pos0, rot[0], on);
                const size_t dst = (size_t)pos0 * kvs + koff;
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (on) {
                        kc[dst + r] = kr[r];
                        vc[dst + r] = v[(size_t)g * hd + e0 + r];
                    }
            }
            __syncthreads(); /* the block's reads of that row below see the stores */
#pragma unroll
            for (int j = 0; j < AD_K; j++)
                if (c0 + j == pos0 && on)
#pragma unroll
                    for (int r = 0; r < R; r++)
                        kv[j][r] = kc[(size_t)pos0 * kvs + koff + r];
        }
        const int nk = min(AD_K, s1 - c0);
        if (nk > 0) {
            float p[AD_K], corr;
            ad_softmax<R>(qr, kv, nk, scale, m, l, p, corr);
            ad_rows<R>(kv, vc, kvs, koff, c0, nk, on);
            ad_accum<R>(acc, p, corr, kv);
        }
        ad_scan<R>(qr, kc, vc, kvs, koff, c0 + ATT_WARPS * AD_K, s1, on, scale, m, l, acc);
    }
    float o[R], M, L;
    const bool w0 = att_merge_warps<R>(m, l, acc, R, 1, o, M, L);
    if (w0)
        ad_write<R>(out, part, ml, h, sp, hd, nsplit, o, M, L, qg + hd, 2 * hd);
    if (nsplit == 1)
        return;
    if (w0)
        __threadfence(); /* the slice's part and (M, L) before the count */
    __syncthreads();
    if (threadIdx.x == 0)
        last = atomicAdd(&cnt[h], 1) == nsplit - 1;
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    ab_merge(out, part, ml, h, hd, nsplit, qg + hd, 2 * hd, fs, sh);
    if (threadIdx.x == 0)
        cnt[h] = 0;
}

/* When the fused kernel runs: DR_CUDA_ATT_FUSED=0 never (prep, decode and
 * merge kernels, a same-run baseline), 2 always, else for grids shaped for
 * more than AB_MIN_KEYS keys. Measured on the H100 (docs/CUDA.md, session
 * 7): after 128-token prompts the three kernels are 1-1.6% faster over the
 * whole decode step; after 4096 the fused one is 6% faster (0.8B), after
 * 8192 the same (9B, 35B-A3B). */
#define AB_MIN_KEYS 4096
static bool ab_fused_for(int n_max) {
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("DR_CUDA_ATT_FUSED");
        mode = e && (e[0] == '0' || e[0] == '2') ? e[0] - '0' : 1;
    }
    return mode == 2 || (mode == 1 && n_max > AB_MIN_KEYS);
}

/* The fused block's launch; false when it does not take the case (nothing
 * queued), true otherwise (also when it failed or was first needed while
 * recording: recorded in cx). */
static bool attention_block_fused(dr_cuda_ctx *cx, float *att, const float *qg, const float *k, const float *v,
                                  float *k_cache, float *v_cache, const float *q_norm, const float *k_norm,
                                  const float *inv, int pos0, int nH, int nKV, int hd, int d_rot, float eps,
                                  float scale) {
    int nsplit, split_len;
    ad_split(cx, pos0, nH, &nsplit, &split_len);
    if (!ab_fused_for(att_grid_keys(cx, pos0, 1)) || nH > AB_CNT || nsplit > AB_MAX_SPLIT)
        return false;
    float *part, *ml;
    if (!ad_parts(cx, nH, hd, nsplit, &part, &ml))
        return true;
    if (!cx->att_cnt && !(cx->att_cnt = (int *)dr_cuda_zeroed(cx, AB_CNT * sizeof(int))))
        return true; /* first use while recording (the step runs again without it), or failed */
    const dim3 grid((unsigned)nH, (unsigned)nsplit), block(32 * ATT_WARPS);
    const int32_t *dp = dr_cuda_step_pos(cx);
#define AB_LAUNCH(R)                                                                                              \
    dr_cuda_launch(cx, true, attn_block_kernel<R>, grid, block, 0, att, part, ml, cx->att_cnt, qg, k, v, k_cache, \
                   v_cache, q_norm, k_norm, inv, pos0, dp, nH, nKV, hd, d_rot / 2, eps, scale, nsplit, split_len)
    if (ad_dims(hd) == 2)
        AB_LAUNCH(2);
    else if (ad_dims(hd) == 4)
        AB_LAUNCH(4);
    else
        AB_LAUNCH(8);
#undef AB_LAUNCH
    return true;
}

/* Decode only (T = 1, a head size the decode kernel takes and it on): the
 * fused kernel (long contexts, see ab_fused_for), or prep, attention (the
 * gate applied where the output is written), merge. */
bool dr_cuda_attention_block(void *ctx, float *att, float *q, float *gate, float *k, const float *qg, const float *v,
                             float *k_cache, float *v_cache, const float *q_norm, const float *k_norm, int T,
                             int pos0, int nH, int nKV, int hd, int d_rot, float theta, float eps, float scale) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    static int on = -1; /* DR_CUDA_ATT_BLOCK=0: declined (the steps op by op, a same-run baseline) */
    if (!dr_env_on("DR_CUDA_ATT_BLOCK", &on) || T != 1 || !ad_fits(hd) || d_rot > hd || d_rot < 0 || nKV <= 0 ||
        nH % nKV || !attn_decode_on())
        return false;
    const float *inv = d_rot >= 2 ? rope_table(cx, d_rot, theta) : NULL;
    if (d_rot >= 2 && !inv)
        return true; /* failed or recording (the step runs again): recorded in cx */
    if (attention_block_fused(cx, att, qg, k, v, k_cache, v_cache, q_norm, k_norm, inv, pos0, nH, nKV, hd, d_rot, eps,
                              scale))
        return true;
    const int nt = dr_cuda_norm_threads(cx, T * nH, hd); /* rmsnorm's block for these rows: the same sums */
    attn_prep_kernel<<<(unsigned)(T * (nH + nKV)), nt, 0, cx->stream>>>(q, gate, k, k_cache, v_cache, qg, v, q_norm,
                                                                       k_norm, inv, T, pos0, nH, nKV, hd, d_rot / 2,
                                                                       eps, dr_cuda_step_pos(cx));
    DR_CUDA_LAUNCHED(cx);
    attention_decode(cx, att, q, k_cache, v_cache, pos0, nH, nKV, hd, scale, gate);
    cx->prev_waits = 1; /* plain launches: o_proj's GEMV starts when the attention ends */
    return true;
}
