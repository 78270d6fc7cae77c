/* ops/cuda/gdn_decode.cu - one decode token of a Gated DeltaNet layer in one
 * kernel (ops.h gdn_decode; semantics: the CPU chain gdn_conv + gdn_gates +
 * gdn_recurrent + gated_rmsnorm, MODEL.md 5). Two kernels:
 *
 * gdn_decode_kernel (sm_80/sm_89, DR_CUDA_GDN_SLICES=0): block j = v head j
 * (32 * ceil(dv / 8) threads):
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
 *
 * gdn_decode_sliced_kernel (sm_90, the default there; decode round 4): the
 * delta rule is independent per state column given q, k, beta, decay and
 * v[c], so head j's d_v columns go to S slices of W (8, 16 or 32) columns,
 * one 128-thread CTA each (grid Hv * S, e.g. 128 CTAs for Hv = 32, dk = dv
 * = 128). A thread-block cluster holds the (Hv / Hk) * S CTAs of a k head
 * when that is <= 8 (the model shapes), else the S CTAs of a v head
 * (DR_CUDA_GDN_KCLUSTER=0: always the latter). Per CTA:
 *  - first every independent load is issued: its state slice [dk, W] into
 *    registers, the gates, z and the norm weight of its columns;
 *  - conv + SiLU of 1/G of the k head's q/k channels (G: cluster size) and
 *    of its own v channels (one channel per thread for the model shapes);
 *    the q/k results are stored into every CTA of the cluster (distributed
 *    shared memory), so each q/k channel is read once per cluster. The new
 *    conv rows go to shared memory. A v channel's are written back by its
 *    CTA; a q/k channel is read by one CTA per cluster: when the cluster
 *    spans the k head, that CTA writes it back, else the last of the
 *    Hv / Hk readers to arrive (a device counter per (k head, rank), reset
 *    by that CTA) does;
 *  - cluster barrier; q/k norms, gates, the delta rule on the slice (fp32,
 *    read once, written once), the slice's sum of squares of the output
 *    stored into the S CTAs of its head, cluster barrier, gated RMSNorm of
 *    its columns;
 *  - only then its global stores (y, the state slice, the conv rows kept in
 *    shared memory). (Storing them before the barriers, as the head kernel
 *    does, measured the same: docs/CUDA.md, decode round 4.)
 * Same operation order per element as the separate kernels (the sums over
 * rows and columns are tree sums in a different order), so the results
 * agree with them to fp32 rounding.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#include <stdlib.h>

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
    DR_TL_SCOPE();
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

/* ---- sliced kernel (sm_90 clusters) ---- */

#define GD_T 128     /* threads of a sliced CTA */
#define GD_MAX_S 8   /* slices (cluster size) limit: the portable cluster size */
#define GD_KEEP (2 * GD_MAX + 32) /* channels a CTA convolves: <= 2 dk + W */

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GD_SM90 1
/* Cluster barrier halves (every thread of every CTA of the cluster). */
static __device__ __forceinline__ void gd_arrive_relaxed(void) {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
static __device__ __forceinline__ void gd_arrive(void) {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
static __device__ __forceinline__ void gd_wait(void) {
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

/* *p (a __shared__ address of this CTA) in the CTA of cluster rank `rank` = v */
static __device__ __forceinline__ void gd_st_rank(float *p, unsigned rank, float v) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(r), "f"(v) : "memory");
}

/* conv + SiLU of channel ch (as gdn_decode_kernel); its new conv rows
   0..K-1 go to keep[t * ks] (written back later). */
static __device__ __forceinline__ float gd_conv(const float *m, const float *conv_state, const float *cw, int K,
                                                size_t C, int ch, float *keep, int ks) {
    const float cur = m[ch];
    float old[GD_MAX_K], s = 0.0f;
#pragma unroll
    for (int t = 0; t < GD_MAX_K - 1; t++)
        if (t < K - 1) {
            old[t] = conv_state[(size_t)(t + 1) * C + ch];
            s += cw[(size_t)ch * K + t] * old[t];
        }
    s += cw[(size_t)ch * K + K - 1] * cur;
#pragma unroll
    for (int t = 0; t < GD_MAX_K - 1; t++)
        if (t < K - 1)
            keep[t * ks] = old[t];
    keep[(K - 1) * ks] = cur;
    return dr_dev_silu(s);
}
#endif

/* Grid Hv * S CTAs of GD_T threads, clusters of G = S or (Hv / Hk) * S (no
 * cluster when G = 1).
 * W: columns per slice (8, 16, 32); a warp holds 8 columns x 4 row groups,
 * the 4 warps W / 8 column groups x P = 32 / W row parts; R >= dk / (4 P)
 * state rows per thread. */
template <int R, int W>
__global__ void __launch_bounds__(GD_T)
    gdn_decode_sliced_kernel(float *__restrict__ y, const float *__restrict__ m, const float *__restrict__ z,
                             const float *__restrict__ b, const float *__restrict__ a, float *conv_state,
                             float *__restrict__ state, const float *__restrict__ cw, int K,
                             const float *__restrict__ A_log, const float *__restrict__ dt_bias,
                             const float *__restrict__ nw, int Hk, int Hv, int dk, int dv, float eps, int *cnt, int pdl,
                             int S, int G) {
    DR_TL_SCOPE();
#ifdef GD_SM90
    constexpr int P = 32 / W, NW = GD_T / 32;
    __shared__ float sq[GD_MAX], sk[GD_MAX], sv[W], so[P][W], su[P][W], red[2][NW], part[GD_MAX_S];
    __shared__ float keep[GD_MAX_K][GD_KEEP]; /* new conv rows of its channels, written at the end */
    __shared__ int last;
    const bool clu = G > 1;
    if (clu)
        gd_arrive_relaxed(); /* phase 0: this CTA has started (its shared memory may be written) */
    if (pdl == 1)
        dr_pdl_trigger();
    dr_pdl_wait();
    if (pdl == 2)
        dr_pdl_trigger();
    const int sl = blockIdx.x % S, j = blockIdx.x / S, ratio = Hv / Hk, kh = j / ratio, rq = blockIdx.x % G;
    const size_t C = (size_t)2 * Hk * dk + (size_t)Hv * dv;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, rg = lane >> 3;
    const int cl = (w % (W / 8)) * 8 + (lane & 7), rp = w / (W / 8), c = sl * W + cl;
    const bool cok = c < dv;
    const int v0 = sl * W, nvc = min(W, dv - v0);

    /* 1. every independent load first: the state slice, gates, z, norm weight. The thread's state rows
       are i0 + 4 P r (r < R); nr of them lie below dk (0 past dv). One base pointer and a fixed stride,
       so each load and store is one address add (recomputing the row index and a 64-bit offset per
       access took the 0.8B's step from 5.5 to 6.3 us: docs/CUDA.md, session 10). */
    const int i0 = rp * 4 + rg, nk = (dk - i0 + 4 * P - 1) / (4 * P), nr = cok ? nk : 0, rstep = 4 * P * dv;
    float *sth = state + (size_t)j * dk * dv + (size_t)i0 * dv + c;
    float st[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        st[r] = r < nr ? sth[r * rstep] : 0.0f;
    const float av = a[j], bv = b[j], dtb = dt_bias[j], al = A_log[j];
    float zv = 0.0f, nwv = 0.0f;
    if (tid < nvc) {
        zv = z[(size_t)j * dv + v0 + tid];
        nwv = nw[v0 + tid];
    }

    /* 2. conv + SiLU: q/k channels [q0, q0 + nq) of the k head's 2 dk (1/G of them: rank rq of the
       cluster), then the slice's v channels */
    const int Q = (2 * dk + G - 1) / G, q0 = rq * Q, nq = max(0, min(Q, 2 * dk - q0)), n = nq + nvc;
    const bool shq = G == ratio * S; /* the cluster holds every reader: this CTA is its q/k channels' only one */
    auto one = [&](int e) -> float {
        const bool isq = e < nq;
        const int ch = gd_channel(isq ? q0 + e : 2 * dk + v0 + e - nq, kh, j, Hk, dk, dv);
        return gd_conv(m, conv_state, cw, K, C, ch, &keep[0][e], GD_KEEP);
    };
    auto put = [&](int e, float o) {
        if (e < nq) {
            const int ee = q0 + e;
            float *d = ee < dk ? &sq[ee] : &sk[ee - dk];
            if (clu)
                for (int r = 0; r < G; r++)
                    gd_st_rank(d, (unsigned)r, o);
            else
                *d = o;
        } else
            sv[e - nq] = o;
    };
    float o0 = 0.0f;
    if (tid < n)
        o0 = one(tid);
    DR_TL_MARK(0, o0);
    if (clu)
        gd_wait(); /* phase 0 complete: every CTA of the cluster runs */
    if (tid < n)
        put(tid, o0);
    for (int e = tid + GD_T; e < n; e += GD_T)
        put(e, one(e));
    if (clu) { /* phase 1: the cluster's q/k and this CTA's v are in shared memory */
        gd_arrive();
        gd_wait();
    } else
        __syncthreads();
    DR_TL_MARK(1, sq[0]);
    /* This CTA has read its q/k channels: count it. Its last thread (no global stores of its own so far,
       so the fence waits for little) keeps the ticket; its first use is at the end, so the atomic's round
       trip overlaps the rest. */
    int ticket = 0;
    if (!shq && nq > 0 && tid == GD_T - 1) {
        __threadfence();
        ticket = atomicAdd(&cnt[kh * S + sl], 1);
    }

    /* 3. norms and gates */
    float pq = 0.0f, pk = 0.0f;
    for (int e = tid; e < dk; e += GD_T) {
        pq += sq[e] * sq[e];
        pk += sk[e] * sk[e];
    }
    pq = dr_warp_sum(pq);
    pk = dr_warp_sum(pk);
    if (lane == 0)
        red[0][w] = pq, red[1][w] = pk;
    __syncthreads();
    pq = 0.0f, pk = 0.0f;
#pragma unroll
    for (int i = 0; i < NW; i++)
        pq += red[0][i], pk += red[1][i];
    const float iq = (1.0f / sqrtf((float)dk)) / sqrtf(pq + GD_L2_EPS), ik = 1.0f / sqrtf(pk + GD_L2_EPS);
    const float x = av + dtb;
    const float sp = x > 20.0f ? x : log1pf(expf(x)); /* softplus as PyTorch */
    const float beta = dr_dev_sigmoid(bv);
    const float decay = expf(-expf(al) * sp);

    /* 4. the delta rule on the slice */
    float u = 0.0f;
    const float *skp = sk + i0, *sqp = sq + i0;
#pragma unroll
    for (int r = 0; r < R; r++) {
        st[r] *= decay;
        u += st[r] * ((r < nk ? skp[4 * P * r] : 0.0f) * ik);
    }
    u += __shfl_xor_sync(0xffffffffu, u, 8);
    u += __shfl_xor_sync(0xffffffffu, u, 16);
    if (P > 1) {
        if (rg == 0)
            su[rp][cl] = u;
        __syncthreads();
        u = 0.0f;
#pragma unroll
        for (int p = 0; p < P; p++)
            u += su[p][cl];
    }
    const float dl = beta * ((cok ? sv[cl] : 0.0f) - u);
    float ov = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        st[r] += ((r < nk ? skp[4 * P * r] : 0.0f) * ik) * dl;
        ov += st[r] * ((r < nk ? sqp[4 * P * r] : 0.0f) * iq); /* read after the update */
    }
    ov += __shfl_xor_sync(0xffffffffu, ov, 8);
    ov += __shfl_xor_sync(0xffffffffu, ov, 16);
    DR_TL_MARK(2, ov);
    if (rg == 0)
        so[rp][cl] = ov;
    __syncthreads();

    /* 5. gated RMSNorm: the slice's sum of squares to every CTA of the head */
    float o = 0.0f;
    if (w == 0) {
        if (lane < W)
#pragma unroll
            for (int p = 0; p < P; p++)
                o += so[p][lane];
        const float ss = dr_warp_sum(o * o); /* columns past dv are 0 */
        if (lane == 0) {
            if (clu) /* the S CTAs of head j: ranks rq - sl .. rq - sl + S - 1 */
                for (int r = 0; r < S; r++)
                    gd_st_rank(&part[sl], (unsigned)(rq - sl + r), ss);
            else
                part[sl] = ss;
        }
    }
    if (clu) { /* phase 2; after it nothing touches another CTA's shared memory, so CTAs may exit */
        gd_arrive();
        gd_wait();
    } else
        __syncthreads();
    DR_TL_MARK(3, part[0]);
    if (tid < nvc) {
        float tot = 0.0f;
        for (int r = 0; r < S; r++) /* rank order: the same total in every CTA of the head */
            tot += part[r];
        const float inv = 1.0f / sqrtf(tot / (float)dv + eps);
        y[(size_t)j * dv + v0 + tid] = nwv * (o * inv) * dr_dev_silu(zv);
    }
    /* the global stores only now: a cluster barrier's release would wait for them */
#pragma unroll
    for (int r = 0; r < R; r++)
        if (r < nr)
            sth[r * rstep] = st[r];
    for (int e = tid; e < n; e += GD_T)
        if (e >= nq || shq) {
            const int ch = gd_channel(e < nq ? q0 + e : 2 * dk + v0 + e - nq, kh, j, Hk, dk, dv);
            for (int t = 0; t < K; t++)
                conv_state[(size_t)t * C + ch] = keep[t][e];
        }

    /* 6. the last reader of this rank's q/k channels (over the k head's clusters) shifts them */
    if (!shq && nq > 0) {
        if (tid == GD_T - 1)
            last = ticket == ratio - 1;
        __syncthreads();
        if (last) {
            for (int e = tid; e < nq; e += GD_T) {
                const int ch = gd_channel(q0 + e, kh, j, Hk, dk, dv);
                for (int t = 0; t < K; t++)
                    conv_state[(size_t)t * C + ch] = keep[t][e];
            }
            if (tid == 0)
                cnt[kh * S + sl] = 0;
        }
    }
#else
    __trap(); /* launched only on compute capability 9.x */
#endif
}

/* ---- host ---- */

static int g_gd_mode = -2; /* -2: DR_CUDA_GDN_SLICES not read yet; -1 auto; 0 the head kernel; N: ~N slices */
static int g_gd_last = -1; /* slices of the last launch (0: the head kernel) */
static int g_gd_kclu = -2; /* -2: DR_CUDA_GDN_KCLUSTER not read yet; 0 off; 1 on */
static int g_gd_last_g = 0; /* cluster size of the last sliced launch */

/* Test hook: mode as DR_CUDA_GDN_SLICES (-1: back to the environment). */
extern "C" void dr_cuda_gdn_decode_slices(int mode) { g_gd_mode = mode < 0 ? -2 : mode; }
extern "C" int dr_cuda_gdn_decode_last_slices(void) { return g_gd_last; }
/* Test hook: the k-head clusters as DR_CUDA_GDN_KCLUSTER (0 off, 1 on, -1: back to the environment);
   the cluster size of the last sliced launch. */
extern "C" void dr_cuda_gdn_decode_kcluster(int on) { g_gd_kclu = on < 0 ? -2 : on != 0; }
extern "C" int dr_cuda_gdn_decode_last_cluster(void) { return g_gd_last_g; }

static int gd_kclu(void) {
    if (g_gd_kclu == -2) {
        const char *e = getenv("DR_CUDA_GDN_KCLUSTER");
        g_gd_kclu = !(e && e[0] == '0');
    }
    return g_gd_kclu;
}

static int gd_mode(void) {
    if (g_gd_mode == -2) {
        const char *e = getenv("DR_CUDA_GDN_SLICES");
        g_gd_mode = e && e[0] ? atoi(e) : -1;
        if (g_gd_mode < 0)
            g_gd_mode = -1;
    }
    return g_gd_mode;
}

/* Compute capability 9.x with cluster launch (the sliced kernel's SASS is sm_90a). */
static bool gd_sm90(int dev) {
    static int known[64]; /* 0 not asked, 1 no, 2 yes */
    if (dev < 0 || dev >= 64)
        return false;
    if (!known[dev]) {
        int major = 0, clu = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&clu, cudaDevAttrClusterLaunch, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            major = 0;
        }
        known[dev] = major == 9 && clu ? 2 : 1;
    }
    return known[dev] == 2;
}

/* Slices S (0: the sliced kernel does not apply) and their width *W. Auto:
 * the widest W in 32, 16, 8 whose grid Hv * S covers ~7/8 of the SMs
 * (else the narrowest that fits S <= 8); force > 0: the narrowest W >=
 * dv / force. */
static int gd_pick(int Hv, int dv, int n_sm, int force, int *W) {
    static const int Ws[3] = {32, 16, 8};
    if (force > 0) {
        const int want = (dv + force - 1) / force;
        for (int i = 2; i >= 0; i--)
            if (Ws[i] >= want && (dv + Ws[i] - 1) / Ws[i] <= GD_MAX_S) {
                *W = Ws[i];
                return (dv + Ws[i] - 1) / Ws[i];
            }
    }
    int S = 0;
    for (int i = 0; i < 3; i++) {
        const int s = (dv + Ws[i] - 1) / Ws[i];
        if (s > GD_MAX_S)
            break;
        *W = Ws[i], S = s;
        if (Hv * s >= n_sm - n_sm / 8)
            break;
    }
    return S;
}

/* cudaLaunchKernelEx with a cluster of G CTAs (G > 1) and optional PDL. */
template <typename... P, typename... A>
static void gd_launch(dr_cuda_ctx *cx, int G, bool pdl, void (*k)(P...), unsigned grid, A... args) {
    cudaLaunchAttribute at[2];
    unsigned na = 0;
    if (G > 1) {
        at[na].id = cudaLaunchAttributeClusterDimension;
        at[na].val.clusterDim.x = (unsigned)G;
        at[na].val.clusterDim.y = 1;
        at[na].val.clusterDim.z = 1;
        na++;
    }
    if (pdl && cx->pdl) {
        at[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[na].val.programmaticStreamSerializationAllowed = 1;
        na++;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(GD_T);
    cfg.stream = cx->stream;
    cfg.attrs = at;
    cfg.numAttrs = na;
    DR_CUDA_NOTE(cx, cudaLaunchKernelEx(&cfg, k, ((P)args)...));
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
    if (!cx->gdn_cnt && !(cx->gdn_cnt = (int *)dr_cuda_zeroed(cx, GD_CNT * sizeof(int))))
        return; /* first use while recording (the step runs again without it), or failed */
    const int mode = gd_mode();
    int W = 0, S = mode != 0 && gd_sm90(cx->device) ? gd_pick(Hv, dv, cx->n_sm, mode, &W) : 0;
    if (S > 0 && Hk * S > GD_CNT)
        S = 0;
    g_gd_last = S;
    if (S > 0) {
        /* clusters of the k head's Hv / Hk heads when they fit (no q/k counter), else of the head's S CTAs */
        const int G = gd_kclu() && (Hv / Hk) * S <= GD_MAX_S ? (Hv / Hk) * S : S;
        g_gd_last_g = G;
        const int need = (dk * W + 127) / 128; /* state rows per thread */
        const unsigned grid = (unsigned)(Hv * S);
#define GD_SL(R, WW)                                                                                           \
    gd_launch(cx, G, cx->pdl_gdn > 0, gdn_decode_sliced_kernel<R, WW>, grid, y, qkv_raw, z, b, a, conv_state, state, \
              conv_w, K, A_log, dt_bias, norm_w, Hk, Hv, dk, dv, eps, cx->gdn_cnt, cx->pdl_gdn, S, G)
#define GD_SLW(R)                                                                                              \
    do {                                                                                                       \
        if (W == 32)                                                                                           \
            GD_SL(R, 32);                                                                                      \
        else if (W == 16)                                                                                      \
            GD_SL(R, 16);                                                                                      \
        else                                                                                                   \
            GD_SL(R, 8);                                                                                       \
    } while (0)
        if (need <= 8)
            GD_SLW(8);
        else if (need <= 16)
            GD_SLW(16);
        else if (need <= 32)
            GD_SLW(32);
        else
            GD_SLW(64);
#undef GD_SLW
#undef GD_SL
        cx->prev_waits = cx->pdl_gdn == 0; /* no early trigger: the next kernel starts when this one ends */
        return;
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
    cx->prev_waits = cx->pdl_gdn == 0; /* as above (dr_cuda_launch cleared it) */
}
