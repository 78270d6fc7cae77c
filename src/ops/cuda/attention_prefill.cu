/* ops/cuda/attention_prefill.cu - causal GQA flash attention for prefill
 * blocks on the tensor cores (semantics: ops/cpu/attention.c, MODEL.md 4).
 *
 * 1. The keys and values the block needs (positions 0 .. pos0+T-1 of the
 *    fp32 cache) are split once into bf16 hi/lo planes (prefill.cuh): K as
 *    [nKV][NK][D], V transposed as [nKV][D][NK] (NK: keys rounded up to 64,
 *    D: head dim rounded up to 64/128/256, padding zero).
 * 2. One block = 64 query rows of one head, 4 warps of 16 rows. Q (split)
 *    stays in shared memory; K/V tiles of 32 keys stream through two
 *    cp.async stages. S = Q K^T and O += P V each take three m16n8k16 bf16
 *    MMAs (hi*hi + hi*lo + lo*hi, fp32 accumulate); the online softmax
 *    (running max, sum, rescale) is fp32 in registers; P is split like the
 *    operands before P V.
 * 3. Head dims 129-256 (D = 256) run ap_flash_dsplit_kernel instead: 8
 *    warps per block, the head dim split over two warps per 16 rows, Q in
 *    registers (why: at the kernel).
 *
 * Accuracy: each operand is represented to 2^-16 relative (worse case;
 * typically 2^-17), so scores and outputs carry ~1e-5 relative error
 * against the fp32 CPU kernel: measured in tests/test_cuda_prefill.c,
 * where the bound held is 1e-4 of the output's scale.
 */
#include "cuda_ops.h"
#include "prefill.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AP_BM 64  /* query rows per block (4 warps x 16) */
#define AP_BN 32  /* keys per tile */
#define AP_THREADS 128

typedef __nv_bfloat16 bf16;

/* K [n_keys, nKV, hd] fp32 -> hi/lo [nKV][NK][D] (d fastest) */
__global__ void ap_split_k(bf16 *kh, bf16 *kl, const float *k, int n_keys, int NK, int nKV, int hd, int D) {
    const size_t n = (size_t)nKV * NK * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(i % D);
        const size_t r = i / D;
        const int s = (int)(r % NK), kvh = (int)(r / NK);
        const float x = (s < n_keys && d < hd) ? k[((size_t)s * nKV + kvh) * hd + d] : 0.0f;
        const bf16 h = __float2bfloat16_rn(x);
        kh[i] = h;
        kl[i] = __float2bfloat16_rn(x - __bfloat162float(h));
    }
}

/* V [n_keys, nKV, hd] fp32 -> transposed hi/lo [nKV][D][NK] (s fastest) */
__global__ void ap_split_vt(bf16 *vh, bf16 *vl, const float *v, int n_keys, int NK, int nKV, int hd, int D) {
    const size_t n = (size_t)nKV * NK * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int s = (int)(i % NK);
        const size_t r = i / NK;
        const int d = (int)(r % D), kvh = (int)(r / D);
        const float x = (s < n_keys && d < hd) ? v[((size_t)s * nKV + kvh) * hd + d] : 0.0f;
        const bf16 h = __float2bfloat16_rn(x);
        vh[i] = h;
        vl[i] = __float2bfloat16_rn(x - __bfloat162float(h));
    }
}

/* shared-memory layout, in bf16 elements */
template <int D> struct ap_lay {
    static const int QS = D + 8;       /* row stride of Q and K tiles (ldmatrix rows hit distinct banks) */
    static const int VS = AP_BN + 8;   /* row stride of the transposed V tile */
    static const int Q = AP_BM * QS;   /* one Q plane */
    static const int K = AP_BN * QS;   /* one K plane */
    static const int V = D * VS;       /* one V^T plane */
    static const int STAGE = 2 * K + 2 * V;
    static const size_t BYTES = (size_t)(2 * Q + 2 * STAGE) * sizeof(bf16);
};

/* Queue the cp.async copies of key tile kt into one stage. */
template <int D, int NT = AP_THREADS>
static __device__ __forceinline__ void ap_load(bf16 *st, const bf16 *gKh, const bf16 *gKl, const bf16 *gVh,
                                               const bf16 *gVl, int kt, int NK) {
    typedef ap_lay<D> L;
    bf16 *sKh = st, *sKl = st + L::K, *sVh = st + 2 * L::K, *sVl = sVh + L::V;
    const int s0 = kt * AP_BN;
    for (int i = threadIdx.x; i < AP_BN * D / 8; i += NT) {
        const int r = i / (D / 8), c = (i % (D / 8)) * 8;
        const size_t go = (size_t)(s0 + r) * D + c;
        dr_cp16(sKh + r * L::QS + c, gKh + go);
        dr_cp16(sKl + r * L::QS + c, gKl + go);
    }
    for (int i = threadIdx.x; i < D * AP_BN / 8; i += NT) {
        const int r = i / (AP_BN / 8), c = (i % (AP_BN / 8)) * 8;
        const size_t go = (size_t)r * NK + s0 + c;
        dr_cp16(sVh + r * L::VS + c, gVh + go);
        dr_cp16(sVl + r * L::VS + c, gVl + go);
    }
}

/* Queue key tile kt + 1 (if any) into the other stage, then wait until tile
 * kt has landed for every thread: its stage (K planes, then V^T planes). */
template <int D, int NT>
static __device__ __forceinline__ const bf16 *ap_next_tile(bf16 *sKV, const bf16 *gKh, const bf16 *gKl,
                                                           const bf16 *gVh, const bf16 *gVl, int kt, int nt, int NK) {
    if (kt + 1 < nt)
        ap_load<D, NT>(sKV + ((kt + 1) & 1) * ap_lay<D>::STAGE, gKh, gKl, gVh, gVl, kt + 1, NK);
    dr_cp_commit();
    dr_cp_wait<1>();
    __syncthreads();
    return sKV + (kt & 1) * ap_lay<D>::STAGE;
}

/* q's elements (t, c) and (t, c + 1) of head h, split (zero past T and hd) */
static __device__ __forceinline__ void ap_q_pair(const float *q, int t, int c, int T, int nH, int h, int hd,
                                                 uint32_t &hi, uint32_t &lo) {
    float a = 0.0f, b = 0.0f;
    if (t < T) {
        const float *qr = q + ((size_t)t * nH + h) * hd;
        if (c < hd)
            a = qr[c];
        if (c + 1 < hd)
            b = qr[c + 1];
    }
    dr_split2(a, b, hi, lo);
}

/* acc[2 j], acc[2 j + 1] (the n8 tiles of B rows b0 + 16 j ..) += A B^T over
 * one k step of 16, j < NP: A as split fragments (ah, al), B's hi plane at
 * sB and its lo plane lo elements further (row stride ST, columns k0 ..
 * k0 + 15); three MMAs per tile, hi*hi + hi*lo + lo*hi. S = Q K^T (B = K)
 * and O += P V (B = V^T) both go through it. */
template <int NP, int ST>
static __device__ __forceinline__ void ap_mma3(float (*acc)[4], const uint32_t ah[4], const uint32_t al[4],
                                               const bf16 *sB, int lo, int b0, int k0) {
    const int lane = threadIdx.x & 31, mi = lane >> 3, rr = lane & 7;
#pragma unroll
    for (int jp = 0; jp < NP; jp++) {
        uint32_t bh[4], bl[4];
        const bf16 *pb = sB + (b0 + jp * 16 + (mi >> 1) * 8 + rr) * ST + k0 + (mi & 1) * 8;
        dr_ldsm4(bh, pb);
        dr_ldsm4(bl, pb + lo);
        dr_mma(acc[2 * jp], ah, bh);
        dr_mma(acc[2 * jp], ah, bl);
        dr_mma(acc[2 * jp], al, bh);
        dr_mma(acc[2 * jp + 1], ah, bh + 2);
        dr_mma(acc[2 * jp + 1], ah, bl + 2);
        dr_mma(acc[2 * jp + 1], al, bh + 2);
    }
}

/* The online softmax of one key tile (keys kb .. kb + 31) for this thread's
 * rows g and g + 8 of its warp's 16 (positions qp0, qp1; qbase: the
 * block's first): s (the m16n8 accumulators of S) scaled, masked past the
 * row's position, and exponentiated against the new running max; l and the
 * NJ tiles of O rescaled to it. fp32 throughout. */
template <int NJ>
static __device__ __forceinline__ void ap_softmax(float (&s)[4][4], float (&o)[NJ][4], float &m0, float &m1,
                                                  float &l0, float &l1, int kb, int qbase, int qp0, int qp1,
                                                  float scale) {
    const int t4 = threadIdx.x & 3;
    const bool mask = kb + AP_BN - 1 > qbase;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int key = kb + j * 8 + 2 * t4 + e;
            float v0 = s[j][e] * scale, v1 = s[j][2 + e] * scale;
            if (mask && key > qp0)
                v0 = -INFINITY;
            if (mask && key > qp1)
                v1 = -INFINITY;
            s[j][e] = v0;
            s[j][2 + e] = v1;
            mx0 = fmaxf(mx0, v0);
            mx1 = fmaxf(mx1, v1);
        }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    /* key 0 is in tile 0 and visible to every row: the max is finite from then on */
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float c0 = expf(m0 - mn0), c1 = expf(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    l0 *= c0;
    l1 *= c1;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        o[j][0] *= c0;
        o[j][1] *= c0;
        o[j][2] *= c1;
        o[j][3] *= c1;
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        s[j][0] = expf(s[j][0] - mn0);
        s[j][1] = expf(s[j][1] - mn0);
        s[j][2] = expf(s[j][2] - mn1);
        s[j][3] = expf(s[j][3] - mn1);
        l0 += s[j][0] + s[j][1];
        l1 += s[j][2] + s[j][3];
    }
}

/* P's A fragments for keys 16 kk .. 16 kk + 15, split (the S accumulators
 * are laid out as the A operand) */
static __device__ __forceinline__ void ap_p_frag(const float (&s)[4][4], int kk, uint32_t ph[4], uint32_t pl[4]) {
    dr_split2(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
    dr_split2(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
    dr_split2(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
    dr_split2(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
}

/* out rows t0 and t0 + 8 (those < T), dims d0 + 8 j + 2 t4, +1 (those < hd):
 * O / l after l's sum over the row's four threads */
template <int NJ>
static __device__ __forceinline__ void ap_store(float *out, const float (&o)[NJ][4], float l0, float l1, int t0,
                                                int T, int nH, int h, int hd, int d0, int t4) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
    const int t1 = t0 + 8;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int d = d0 + j * 8 + 2 * t4;
        if (t0 < T) {
            float *r = out + ((size_t)t0 * nH + h) * hd;
            if (d < hd)
                r[d] = o[j][0] * i0;
            if (d + 1 < hd)
                r[d + 1] = o[j][1] * i0;
        }
        if (t1 < T) {
            float *r = out + ((size_t)t1 * nH + h) * hd;
            if (d < hd)
                r[d] = o[j][2] * i1;
            if (d + 1 < hd)
                r[d + 1] = o[j][3] * i1;
        }
    }
}

template <int D>
__global__ void __launch_bounds__(AP_THREADS)
    ap_flash_kernel(float *__restrict__ out, const float *__restrict__ q, const bf16 *__restrict__ Kh,
                    const bf16 *__restrict__ Kl, const bf16 *__restrict__ Vh, const bf16 *__restrict__ Vl, int T,
                    int pos0, int nH, int nKV, int hd, int NK, float scale, int nqt) {
    typedef ap_lay<D> L;
    extern __shared__ __align__(16) unsigned char ap_smem[];
    bf16 *sQh = (bf16 *)ap_smem, *sQl = sQh + L::Q, *sKV = sQl + L::Q;
    const int qt = nqt - 1 - (int)blockIdx.x; /* the longest rows first */
    const int h = blockIdx.y, kvh = h / (nH / nKV), q0 = qt * AP_BM;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int mi = lane >> 3, rr = lane & 7; /* ldmatrix: which 8x8 matrix, which row of it */

    const size_t kvo = (size_t)kvh * NK * D;
    const bf16 *gKh = Kh + kvo, *gKl = Kl + kvo, *gVh = Vh + kvo, *gVl = Vl + kvo;
    const int kmax = min(pos0 + T, pos0 + q0 + AP_BM); /* keys this block's rows see */
    const int nt = (kmax + AP_BN - 1) / AP_BN;
    ap_load<D>(sKV, gKh, gKl, gVh, gVl, 0, NK);
    dr_cp_commit();

    /* Q rows q0.. of head h, split; rows past T and dims past hd are zero */
    for (int i = tid; i < AP_BM * (D / 2); i += AP_THREADS) {
        const int r = i / (D / 2), c = (i % (D / 2)) * 2;
        uint32_t hi, lo;
        ap_q_pair(q, q0 + r, c, T, nH, h, hd, hi, lo);
        *(uint32_t *)(sQh + r * L::QS + c) = hi;
        *(uint32_t *)(sQl + r * L::QS + c) = lo;
    }

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int qp0 = pos0 + q0 + warp * 16 + g, qp1 = qp0 + 8; /* positions of this thread's two rows */

    for (int kt = 0; kt < nt; kt++) {
        const bf16 *sKh = ap_next_tile<D, AP_THREADS>(sKV, gKh, gKl, gVh, gVl, kt, nt, NK), *sVh = sKh + 2 * L::K;

        /* S = Q K^T: 16 rows x 32 keys per warp */
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll 4
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t ah[4], al[4];
            const bf16 *pa = sQh + (warp * 16 + (mi & 1) * 8 + rr) * L::QS + kk * 16 + (mi >> 1) * 8;
            dr_ldsm4(ah, pa);
            dr_ldsm4(al, pa + L::Q);
            ap_mma3<2, L::QS>(s, ah, al, sKh, L::K, 0, kk * 16);
        }

        ap_softmax(s, o, m0, m1, l0, l1, kt * AP_BN, pos0 + q0, qp0, qp1, scale);

        /* O += P V: the S accumulators are P's A fragments */
#pragma unroll
        for (int kk = 0; kk < AP_BN / 16; kk++) {
            uint32_t ph[4], pl[4];
            ap_p_frag(s, kk, ph, pl);
            ap_mma3<D / 16, L::VS>(o, ph, pl, sVh, L::V, 0, kk * 16);
        }
        __syncthreads(); /* the next iteration refills the stage read here */
    }

    ap_store<D / 8>(out, o, l0, l1, q0 + warp * 16 + g, T, nH, h, hd, 0, t4);
}


/* D = 256 with the head dim split over two warps (the default there;
 * DR_CUDA_ATT_DSPLIT=0: ap_flash_kernel<256>). ap_flash_kernel<256> needs
 * 255 registers (128 of them O) and 217 KB of shared memory (Q's planes 68
 * KB), so an SM runs one block of 4 warps, one warp per scheduler, and the
 * MMA chains stall on latency (ncu, 35B-A3B at 8192 tokens: tensor pipe 36%
 * active, 6% occupancy). Here 8 warps share the 64 rows: warp w takes rows
 * 16 (w % 4) .. and dims 128 (w / 4) .. of the head. Its Q fragments (half
 * the dims, split) live in registers, loaded once from global memory, which
 * frees Q's shared memory; O is 64 registers. Per key tile each warp forms
 * the partial S = Q K^T over its dims, the two halves are added through
 * shared memory (a + b in both warps: the same S), both warps run the same
 * online softmax, and each accumulates P V for its dims. */
#define A2_THREADS 256
#define A2_XBUF (8 * 512) /* floats: each warp's 16 x 32 partial S */

template <int D>
__global__ void __launch_bounds__(A2_THREADS, 1)
    ap_flash_dsplit_kernel(float *__restrict__ out, const float *__restrict__ q, const bf16 *__restrict__ Kh,
                           const bf16 *__restrict__ Kl, const bf16 *__restrict__ Vh, const bf16 *__restrict__ Vl,
                           int T, int pos0, int nH, int nKV, int hd, int NK, float scale, int nqt) {
    typedef ap_lay<D> L;
    constexpr int DH = D / 2, KQ = DH / 16; /* dims per warp, their k steps */
    extern __shared__ __align__(16) unsigned char ap_smem[];
    bf16 *sKV = (bf16 *)ap_smem;
    float *xb = (float *)(sKV + 2 * L::STAGE);
    const int qt = nqt - 1 - (int)blockIdx.x; /* the longest rows first */
    const int h = blockIdx.y, kvh = h / (nH / nKV), q0 = qt * AP_BM;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, rg = warp & 3, dh = warp >> 2;
    const int g = lane >> 2, t4 = lane & 3;

    const size_t kvo = (size_t)kvh * NK * D;
    const bf16 *gKh = Kh + kvo, *gKl = Kl + kvo, *gVh = Vh + kvo, *gVl = Vl + kvo;
    const int kmax = min(pos0 + T, pos0 + q0 + AP_BM);
    const int nt = (kmax + AP_BN - 1) / AP_BN;
    ap_load<D, A2_THREADS>(sKV, gKh, gKl, gVh, gVl, 0, NK);
    dr_cp_commit();

    /* Q fragments (m16n8k16 A layout: register r holds row g + 8 (r & 1), cols 8 (r >> 1) + 2 t4, +1), split;
       rows past T and dims past hd are zero */
    const int t0 = q0 + rg * 16 + g, t1 = t0 + 8;
    uint32_t qh[KQ][4], ql[KQ][4];
#pragma unroll
    for (int kk = 0; kk < KQ; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int c = dh * DH + kk * 16 + (r >> 1) * 8 + 2 * t4;
            ap_q_pair(q, r & 1 ? t1 : t0, c, T, nH, h, hd, qh[kk][r], ql[kk][r]);
        }

    float o[DH / 8][4];
#pragma unroll
    for (int j = 0; j < DH / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int qp0 = pos0 + t0, qp1 = qp0 + 8;
    float *mine = xb + warp * 512, *other = xb + (warp ^ 4) * 512;

    for (int kt = 0; kt < nt; kt++) {
        const bf16 *sKh = ap_next_tile<D, A2_THREADS>(sKV, gKh, gKl, gVh, gVl, kt, nt, NK), *sVh = sKh + 2 * L::K;

        /* partial S over this warp's dims, then the other half added */
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KQ; kk++)
            ap_mma3<2, L::QS>(s, qh[kk], ql[kk], sKh, L::K, 0, (dh * KQ + kk) * 16);
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                mine[(j * 4 + e) * 32 + lane] = s[j][e];
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[j][e] += other[(j * 4 + e) * 32 + lane];

        ap_softmax(s, o, m0, m1, l0, l1, kt * AP_BN, pos0 + q0, qp0, qp1, scale);

        /* O += P V over this warp's dims */
#pragma unroll
        for (int kk = 0; kk < AP_BN / 16; kk++) {
            uint32_t ph[4], pl[4];
            ap_p_frag(s, kk, ph, pl);
            ap_mma3<DH / 16, L::VS>(o, ph, pl, sVh, L::V, dh * DH, kk * 16);
        }
        __syncthreads(); /* the next iteration refills the stage read here, and the partial S */
    }
    ap_store<DH / 8>(out, o, l0, l1, t0, T, nH, h, hd, dh * DH, t4);
}

/* The two-warp head-dim split for D = 256 unless DR_CUDA_ATT_DSPLIT=0
 * (read at every call: a same-run baseline). */
static bool use_dsplit(int D) {
    const char *e = getenv("DR_CUDA_ATT_DSPLIT");
    return D == 256 && !(e && !strcmp(e, "0"));
}

/* Shared memory of the kernel that runs for D: Q's planes and two K/V
 * stages, or (split) the two stages and the partial-S exchange. */
template <int D> static size_t ap_smem(void) {
    return use_dsplit(D) ? 2 * ap_lay<D>::STAGE * sizeof(bf16) + A2_XBUF * sizeof(float) : ap_lay<D>::BYTES;
}

template <int D>
static void ap_launch(dr_cuda_ctx *cx, float *out, const float *q, const bf16 *kh, const bf16 *kl, const bf16 *vh,
                      const bf16 *vl, int T, int pos0, int nH, int nKV, int hd, int NK, float scale) {
    const size_t smem = ap_smem<D>();
    const int nqt = (T + AP_BM - 1) / AP_BM;
    const dim3 grid((unsigned)nqt, (unsigned)nH);
    if constexpr (D == 256) {
        if (use_dsplit(D)) {
            DR_CUDA_NOTE(cx, cudaFuncSetAttribute(ap_flash_dsplit_kernel<D>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            ap_flash_dsplit_kernel<D><<<grid, A2_THREADS, smem, cx->stream>>>(out, q, kh, kl, vh, vl, T, pos0, nH,
                                                                              nKV, hd, NK, scale, nqt);
            DR_CUDA_LAUNCHED(cx);
            return;
        }
    }
    {
        DR_CUDA_NOTE(cx, cudaFuncSetAttribute(ap_flash_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        ap_flash_kernel<D><<<grid, AP_THREADS, smem, cx->stream>>>(out, q, kh, kl, vh, vl, T, pos0, nH, nKV, hd, NK,
                                                                   scale, nqt);
    }
    DR_CUDA_LAUNCHED(cx);
}

bool dr_cuda_prefill_enabled(void) {
    const char *e = getenv("DR_CUDA_PREFILL");
    return !(e && !strcmp(e, "0"));
}

bool dr_cuda_attention_prefill(dr_cuda_ctx *cx, float *out, const float *q, const float *k_cache,
                               const float *v_cache, int T, int pos0, int n_heads, int n_kv_heads, int d_head,
                               float scale) {
    if (!dr_cuda_prefill_enabled() || T < DR_ATT_PREFILL_MIN_T || d_head <= 0 || d_head > 256 || n_kv_heads <= 0 || n_heads % n_kv_heads)
        return false;
    const int D = d_head <= 64 ? 64 : d_head <= 128 ? 128 : 256;
    const size_t smem = D == 64 ? ap_smem<64>() : D == 128 ? ap_smem<128>() : ap_smem<256>();
    if ((size_t)dr_cuda_smem_optin(cx) < smem)
        return false; /* e.g. sm_89 with d_head 256: the split-K kernel runs */
    const int n_keys = pos0 + T, NK = (n_keys + 63) / 64 * 64;
    const size_t per = (size_t)n_kv_heads * NK * D;
    bf16 *kh = (bf16 *)dr_cuda_scratch(cx, DR_SCR_ATTN, 4 * per * sizeof(bf16));
    if (!kh)
        return true; /* the failure is recorded */
    bf16 *kl = kh + per, *vh = kl + per, *vl = vh + per;
    size_t b = (per + 255) / 256, cap = (size_t)cx->n_sm * 16;
    const unsigned grid = (unsigned)(b > cap ? cap : b);
    ap_split_k<<<grid, 256, 0, cx->stream>>>(kh, kl, k_cache, n_keys, NK, n_kv_heads, d_head, D);
    DR_CUDA_LAUNCHED(cx);
    ap_split_vt<<<grid, 256, 0, cx->stream>>>(vh, vl, v_cache, n_keys, NK, n_kv_heads, d_head, D);
    DR_CUDA_LAUNCHED(cx);
    if (D == 64)
        ap_launch<64>(cx, out, q, kh, kl, vh, vl, T, pos0, n_heads, n_kv_heads, d_head, NK, scale);
    else if (D == 128)
        ap_launch<128>(cx, out, q, kh, kl, vh, vl, T, pos0, n_heads, n_kv_heads, d_head, NK, scale);
    else
        ap_launch<256>(cx, out, q, kh, kl, vh, vl, T, pos0, n_heads, n_kv_heads, d_head, NK, scale);
    return true;
}
