/* ops/cuda/moe_prefill.cu - routed SwiGLU experts for prefill blocks, with
 * BF16 expert weights: grouped tensor-core GEMMs and no host round trip
 * (semantics: ops/cpu/moe.c, MODEL.md 6.2).
 *
 * 1. Counting sort of the (token, pick) rows by expert on the GPU: counts
 *    (atomics), a prefix sum (a thread per expert) that also lists the
 *    row tiles of every expert (64 or 128 rows: the GEMM's), a scatter. Row order
 *    inside one expert does not matter: every output element is one dot
 *    product whose summation order does not depend on where its row sits.
 * 2. gate/up: one launch over (column blocks of I, tiles) computes both
 *    products for the tile's rows, reading x through the row map (no
 *    gather pass), and writes silu(gate) * up.
 * 3. down: one launch over (column blocks of H, tiles).
 *    Two kernels do 2 and 3: mp_gemm2 (128-row tiles, the default where
 *    H % 128 == 0 and I % 64 == 0; x and act as bf16 hi / lo planes) and
 *    mp_gemm (64-row tiles, fp32 x and act, split on the way in).
 * 4. y += sum_j wts[t, j] * out[row(t, j)], picks in order (as the CPU).
 * mp_gemm blocks: 4 warps of 32 x 32, k steps of 32, two stages (weights
 * by cp.async, activations through registers, split into bf16 hi/lo on the
 * way to shared memory). Both kernels: W*hi + W*lo on mma.sync m16n8k16
 * with fp32 accumulate, exact weights: fp32-grade like the dense split
 * GEMMs.
 */
#include "cuda_ops.h"
#include "prefill.cuh"

#define MP_BM 64
#define MP_BN 64
#define MP_BK 32
#define MP_SK (MP_BK + 8) /* smem row stride in bf16 (ldmatrix rows on distinct banks) */
#define MP_THREADS 128

typedef __nv_bfloat16 bf16;

/* int scratch: cnt[E], off[E+1], cur[E], ntile[1], tile_e[MT], tile_r0[MT], rowmap[R], pos[R] */
typedef struct mp_idx {
    int *cnt, *off, *cur, *ntile, *tile_e, *tile_r0, *rowmap, *pos;
} mp_idx;

__global__ void mp_count(mp_idx m, const int32_t *idx, int R, int E) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < R; r += gridDim.x * blockDim.x) {
        const int e = idx[r];
        if (e >= 0 && e < E)
            atomicAdd(&m.cnt[e], 1);
    }
}

__global__ void mp_scan(mp_idx m, int E, int bm) {
    if (threadIdx.x != 0 || blockIdx.x != 0)
        return;
    int o = 0, nt = 0;
    for (int e = 0; e < E; e++) {
        m.off[e] = o;
        m.cur[e] = o;
        for (int r = 0; r < m.cnt[e]; r += bm) {
            m.tile_e[nt] = e;
            m.tile_r0[nt] = o + r;
            nt++;
        }
        o += m.cnt[e];
    }
    m.off[E] = o;
    *m.ntile = nt;
}

/* The same offsets and tile list with one thread per expert (E <= 1024):
 * block scans of the counts and the tile counts; the one-thread loop above
 * took ~73 us per MoE layer. */
__global__ void mp_scan_par(mp_idx m, int E, int bm) {
    __shared__ int sc[1024], stl[1024];
    const int e = threadIdx.x;
    const int c = e < E ? m.cnt[e] : 0, nt = (c + bm - 1) / bm;
    sc[e] = c;
    stl[e] = nt;
    __syncthreads();
    for (int o = 1; o < blockDim.x; o <<= 1) { /* inclusive Hillis-Steele */
        const int a = e >= o ? sc[e - o] : 0, b = e >= o ? stl[e - o] : 0;
        __syncthreads();
        sc[e] += a;
        stl[e] += b;
        __syncthreads();
    }
    if (e < E) {
        const int o0 = sc[e] - c, t0 = stl[e] - nt;
        m.off[e] = o0;
        m.cur[e] = o0;
        for (int r = 0; r < nt; r++) {
            m.tile_e[t0 + r] = e;
            m.tile_r0[t0 + r] = o0 + r * bm;
        }
        if (e == E - 1) {
            m.off[E] = sc[e];
            *m.ntile = stl[e];
        }
    }
}

__global__ void mp_scatter(mp_idx m, const int32_t *idx, int R, int E) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < R; r += gridDim.x * blockDim.x) {
        const int e = idx[r];
        if (e >= 0 && e < E) {
            const int p = atomicAdd(&m.cur[e], 1);
            m.rowmap[p] = r;
            m.pos[r] = p;
        } else {
            m.pos[r] = -1; /* (the route never gives one) contributes nothing */
        }
    }
}

/* GATEUP: out[p, n] = silu(x_p . gate_n) * (x_p . up_n), x_p = x[rowmap[p] / k],
 *         W = gate (B0) and up (B1), [N = I, K = H].
 * else:   out[p, n] = a_p . down_n, a = act rows, W = down [N = H, K = I]. */
template <bool GATEUP>
__global__ void __launch_bounds__(MP_THREADS)
    mp_gemm(float *__restrict__ out, const float *__restrict__ a, mp_idx m, const void *const *tab, int E, int k,
            int N, int K, bool cols_fast) {
    const int NB = GATEUP ? 2 : 1;
    __shared__ __align__(16) bf16 sA[2][2][MP_BM * MP_SK]; /* [stage][hi/lo] */
    __shared__ __align__(16) bf16 sB[2][NB][MP_BN * MP_SK];
    const int tile = cols_fast ? blockIdx.y : blockIdx.x;
    if (tile >= *m.ntile)
        return;
    const int e = m.tile_e[tile], r0 = m.tile_r0[tile], rn = min(MP_BM, m.off[e + 1] - r0);
    const int n0 = (cols_fast ? blockIdx.x : blockIdx.y) * MP_BN;
    const bf16 *W0 = GATEUP ? (const bf16 *)tab[e] : (const bf16 *)tab[2 * E + e];
    const bf16 *W1 = GATEUP ? (const bf16 *)tab[E + e] : W0;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, wm = w >> 1, wn = w & 1;
    const int g = lane >> 2, t4 = lane & 3, mi = lane >> 3, rr = lane & 7;

    /* this thread's 4 float4 of the A tile: rows (tid + 128 u) / 8, cols 4 ((tid + 128 u) % 8) */
    const float *arow[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int i = tid + MP_THREADS * u, r = i / 8;
        if (r < rn) {
            const int p = r0 + r;
            arow[u] = GATEUP ? a + (size_t)(m.rowmap[p] / k) * K : a + (size_t)p * K;
        } else {
            arow[u] = NULL;
        }
    }
    float4 av[4];
#define MP_LOAD_A(k0)                                                                                \
    for (int u = 0; u < 4; u++) {                                                                    \
        const int c4 = ((tid + MP_THREADS * u) % 8) * 4;                                             \
        av[u] = arow[u] ? *(const float4 *)(arow[u] + (k0) + c4) : make_float4(0.f, 0.f, 0.f, 0.f); \
    }
#define MP_STORE_A(st)                                                                  \
    for (int u = 0; u < 4; u++) {                                                       \
        const int i = tid + MP_THREADS * u, r = i / 8, c4 = (i % 8) * 4;                \
        uint32_t h0, l0, h1, l1;                                                        \
        dr_split2(av[u].x, av[u].y, h0, l0);                                            \
        dr_split2(av[u].z, av[u].w, h1, l1);                                            \
        *(uint2 *)(&sA[st][0][r * MP_SK + c4]) = make_uint2(h0, h1);                   \
        *(uint2 *)(&sA[st][1][r * MP_SK + c4]) = make_uint2(l0, l1);                   \
    }
#define MP_LOAD_B(st, k0)                                                                     \
    for (int i = tid; i < MP_BN * MP_BK / 8; i += MP_THREADS) {                               \
        const int r = i / (MP_BK / 8), c = (i % (MP_BK / 8)) * 8;                             \
        const size_t go = (size_t)(n0 + r) * K + (k0) + c;                                    \
        dr_cp16(&sB[st][0][r * MP_SK + c], W0 + go);                                          \
        if (GATEUP)                                                                           \
            dr_cp16(&sB[st][NB - 1][r * MP_SK + c], W1 + go);                                 \
    }

    float acc[NB][2][4][4];
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
        for (int x = 0; x < 2; x++)
#pragma unroll
            for (int y = 0; y < 4; y++)
                acc[b][x][y][0] = acc[b][x][y][1] = acc[b][x][y][2] = acc[b][x][y][3] = 0.0f;

    const int nk = K / MP_BK;
    MP_LOAD_B(0, 0);
    dr_cp_commit();
    MP_LOAD_A(0);
    MP_STORE_A(0);
    for (int kt = 0; kt < nk; kt++) {
        const int st = kt & 1;
        if (kt + 1 < nk) {
            MP_LOAD_B(st ^ 1, (kt + 1) * MP_BK);
            MP_LOAD_A((kt + 1) * MP_BK);
        }
        dr_cp_commit();
        dr_cp_wait<1>();
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MP_BK / 16; kk++) {
            uint32_t ah[2][4], al[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int off = (wm * 32 + mt * 16 + (mi & 1) * 8 + rr) * MP_SK + kk * 16 + (mi >> 1) * 8;
                dr_ldsm4(ah[mt], &sA[st][0][off]);
                dr_ldsm4(al[mt], &sA[st][1][off]);
            }
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int np = 0; np < 2; np++) {
                    uint32_t bw[4];
                    dr_ldsm4(bw, &sB[st][b][(wn * 32 + np * 16 + (mi >> 1) * 8 + rr) * MP_SK + kk * 16 + (mi & 1) * 8]);
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        dr_mma(acc[b][mt][2 * np], ah[mt], bw);
                        dr_mma(acc[b][mt][2 * np], al[mt], bw);
                        dr_mma(acc[b][mt][2 * np + 1], ah[mt], bw + 2);
                        dr_mma(acc[b][mt][2 * np + 1], al[mt], bw + 2);
                    }
                }
        }
        if (kt + 1 < nk) {
            MP_STORE_A(st ^ 1); /* the other stage was last read before the previous barrier */
        }
        __syncthreads();
    }
#undef MP_LOAD_A
#undef MP_STORE_A
#undef MP_LOAD_B
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = wm * 32 + mt * 16 + g + 8 * h;
                if (r >= rn)
                    continue;
                const int n = n0 + wn * 32 + nt * 8 + 2 * t4;
                float v0, v1;
                if (GATEUP) {
                    v0 = dr_dev_silu(acc[0][mt][nt][2 * h]) * acc[NB - 1][mt][nt][2 * h];
                    v1 = dr_dev_silu(acc[0][mt][nt][2 * h + 1]) * acc[NB - 1][mt][nt][2 * h + 1];
                } else {
                    v0 = acc[0][mt][nt][2 * h];
                    v1 = acc[0][mt][nt][2 * h + 1];
                }
                *(float2 *)(out + (size_t)(r0 + r) * N + n) = make_float2(v0, v1);
            }
}

/* ---- the 128-row GEMMs (default where the shapes allow; DR_CUDA_MOE_GEMM=1: mp_gemm) ----
 *
 * mp_gemm is bound by the memory system, not the tensor cores (ncu, 35B-A3B
 * at 8192 tokens: tensor pipe 51% / 34% active for gate/up / down; L2 73%
 * busy for gate/up, whose 64-row tiles read each weight column block once
 * per 64 rows; L1 / shared memory 82% busy for down, whose warps load 192
 * bytes of fragments per MMA). Here a block is 8 warps over 128 rows and
 * 128 weight rows (gate/up: 64 of gate and the same 64 of up; down: 128),
 * each warp 32 rows x 64 weight rows: half the weight traffic per row of
 * gate/up, 128 bytes of fragments per MMA. A arrives pre-split into bf16
 * hi / lo planes (x by mp_split, act by the gate/up epilogue), so A and W
 * both stream by cp.async through 3 stages with one barrier per k step.
 * A warp whose 32 rows all lie past the tile's end skips its MMAs (an
 * expert's last tile is partly empty). Each accumulator sees the same MMAs
 * in the same order as in mp_gemm (k ascending, hi then lo): bit-identical
 * results. Measured (docs/CUDA.md, session 9): gate/up -8%, down -32%
 * against mp_gemm; L2 is then ~93% busy. 256 weight rows per block (16
 * warps, one block per SM: a third less L2 traffic) and issuing the hi
 * products of four accumulators before their lo ones were no faster. */
#define M2_BM 128 /* rows per tile: 4 warps of 32 */
#define M2_BN 128 /* weight rows per block: 2 warps of 64 */
#define M2_BK 32
#define M2_SK (M2_BK + 8)
#define M2_STAGES 3
#define M2_THREADS 256
#define M2_PASS (M2_THREADS / 4)                     /* rows per pass of 16-byte pieces (4 per row) */
#define M2_STAGE (2 * M2_BM * M2_SK + M2_BN * M2_SK) /* bf16: A hi, A lo, W */
#define M2_SMEM (M2_STAGES * M2_STAGE * 2)            /* 92,160 bytes: two blocks per SM */

/* hi / lo planes of x [n] (n a multiple of 4), as dr_split2 makes them */
__global__ void mp_split(bf16 *__restrict__ hi, bf16 *__restrict__ lo, const float *__restrict__ x, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        const float4 v = ((const float4 *)x)[i];
        uint32_t h0, l0, h1, l1;
        dr_split2(v.x, v.y, h0, l0);
        dr_split2(v.z, v.w, h1, l1);
        ((uint2 *)hi)[i] = make_uint2(h0, h1);
        ((uint2 *)lo)[i] = make_uint2(l0, l1);
    }
}

/* GATEUP: act[p, n] = silu(x_p . gate_n) * (x_p . up_n) into the hi / lo planes oh, ol [R, N = I];
 *         A = x planes [T, K = H], row p reads x row rowmap[p] / k; block columns n0 .. n0 + 63.
 * else:   of[p, n] = act_p . down_n [R, N = H]; A = act planes [R, K = I]; columns n0 .. n0 + 127.
 * Grid (column blocks, tiles). */
template <bool GATEUP>
__global__ void __launch_bounds__(M2_THREADS, 2)
    mp_gemm2(bf16 *__restrict__ oh, bf16 *__restrict__ ol, float *__restrict__ of, const bf16 *__restrict__ ah,
             const bf16 *__restrict__ al, mp_idx m, const void *const *tab, int E, int k, int N, int K) {
    extern __shared__ __align__(16) bf16 m2s[];
    const int tile = blockIdx.y;
    if (tile >= *m.ntile)
        return;
    const int e = m.tile_e[tile], r0 = m.tile_r0[tile], rn = min(M2_BM, m.off[e + 1] - r0);
    const int n0 = blockIdx.x * (GATEUP ? M2_BN / 2 : M2_BN);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, wm = w >> 1, wn = w & 1;
    const int g = lane >> 2, t4 = lane & 3, mi = lane >> 3, rr = lane & 7;

    /* this thread's 16-byte pieces of a stage: A rows ra and ra + 64 (both planes), W rows ra and ra + 64,
       columns c8 .. c8 + 7 of the k step */
    const int ra = tid >> 2, c8 = (tid & 3) * 8;
    size_t aoff[2];
    bool aok[2];
#pragma unroll
    for (int u = 0; u < 2; u++) {
        const int r = ra + M2_PASS * u;
        aok[u] = r < rn;
        const int p = r0 + (aok[u] ? r : 0);
        aoff[u] = (size_t)(GATEUP ? m.rowmap[p] / k : p) * K + c8;
    }
    const bf16 *wrow[2];
    if (GATEUP) {
        wrow[0] = (const bf16 *)tab[e] + (size_t)(n0 + ra) * K + c8;     /* gate: smem W rows 0..63 */
        wrow[1] = (const bf16 *)tab[E + e] + (size_t)(n0 + ra) * K + c8; /* up: 64..127 */
    } else {
        wrow[0] = (const bf16 *)tab[2 * E + e] + (size_t)(n0 + ra) * K + c8;
        wrow[1] = wrow[0] + (size_t)M2_PASS * K;
    }
    auto load = [&](int st, int k0) {
        bf16 *s = m2s + st * M2_STAGE;
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int so = (ra + M2_PASS * u) * M2_SK + c8;
            dr_cp16z(s + so, ah + aoff[u] + k0, aok[u]);
            dr_cp16z(s + M2_BM * M2_SK + so, al + aoff[u] + k0, aok[u]);
            dr_cp16(s + 2 * M2_BM * M2_SK + so, wrow[u] + k0);
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int j = 0; j < 8; j++)
            acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;
    const bool active = wm * 32 < rn; /* warp-uniform */
    const int nk = K / M2_BK;
#pragma unroll
    for (int st = 0; st < M2_STAGES - 1; st++) {
        if (st < nk)
            load(st, st * M2_BK);
        dr_cp_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        dr_cp_wait<M2_STAGES - 2>();
        __syncthreads(); /* stage kt landed for every thread; stage kt - 1 is free */
        const int nx = kt + M2_STAGES - 1;
        if (nx < nk)
            load(nx % M2_STAGES, nx * M2_BK);
        dr_cp_commit();
        if (!active)
            continue;
        const bf16 *s = m2s + (kt % M2_STAGES) * M2_STAGE;
#pragma unroll
        for (int kk = 0; kk < M2_BK / 16; kk++) {
            uint32_t fh[2][4], fl[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int off = (wm * 32 + mt * 16 + (mi & 1) * 8 + rr) * M2_SK + kk * 16 + (mi >> 1) * 8;
                dr_ldsm4(fh[mt], s + off);
                dr_ldsm4(fl[mt], s + M2_BM * M2_SK + off);
            }
#pragma unroll
            for (int c = 0; c < 4; c++) { /* 16 weight rows each */
                const int wr = GATEUP ? (c >> 1) * 64 + wn * 32 + (c & 1) * 16 : wn * 64 + c * 16;
                uint32_t bw[4];
                dr_ldsm4(bw, s + 2 * M2_BM * M2_SK + (wr + (mi >> 1) * 8 + rr) * M2_SK + kk * 16 + (mi & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    dr_mma(acc[mt][2 * c], fh[mt], bw);
                    dr_mma(acc[mt][2 * c], fl[mt], bw);
                    dr_mma(acc[mt][2 * c + 1], fh[mt], bw + 2);
                    dr_mma(acc[mt][2 * c + 1], fl[mt], bw + 2);
                }
            }
        }
    }
    if (!active)
        return;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = wm * 32 + mt * 16 + g + 8 * h;
            if (r >= rn)
                continue;
            const size_t ro = (size_t)(r0 + r) * N;
            if (GATEUP) {
#pragma unroll
                for (int j = 0; j < 4; j++) { /* gate n8 tile j, its up tile j + 4 */
                    const int n = n0 + wn * 32 + j * 8 + 2 * t4;
                    const float v0 = dr_dev_silu(acc[mt][j][2 * h]) * acc[mt][j + 4][2 * h];
                    const float v1 = dr_dev_silu(acc[mt][j][2 * h + 1]) * acc[mt][j + 4][2 * h + 1];
                    uint32_t hv, lv;
                    dr_split2(v0, v1, hv, lv);
                    *(uint32_t *)(oh + ro + n) = hv;
                    *(uint32_t *)(ol + ro + n) = lv;
                }
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int n = n0 + wn * 64 + j * 8 + 2 * t4;
                    *(float2 *)(of + ro + n) = make_float2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
                }
            }
        }
}

/* y[t, h] += sum_j wts[t, j] * ob[pos[t k + j], h], j in order */
__global__ void mp_combine(float *y, const float *ob, const float *wts, const int *pos, int T, int k, int H) {
    const size_t n = (size_t)T * H;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / H, h = i % H;
        float acc = y[i];
        for (int j = 0; j < k; j++) {
            const int p = pos[t * k + j];
            if (p >= 0)
                acc += wts[t * k + j] * ob[(size_t)p * H + h];
        }
        y[i] = acc;
    }
}

/* The same sums, one block per token row (no 64-bit index division): the
 * token's picks are read once, h by threads. */
__global__ void mp_combine_rows(float *y, const float *ob, const float *wts, const int *pos, int T, int k, int H) {
    for (int t = blockIdx.x; t < T; t += gridDim.x) {
        float *yr = y + (size_t)t * H;
        for (int h = threadIdx.x; h < H; h += blockDim.x) {
            float acc = yr[h];
            for (int j = 0; j < k; j++) {
                const int p = pos[(size_t)t * k + j];
                if (p >= 0)
                    acc += wts[(size_t)t * k + j] * ob[(size_t)p * H + h];
            }
            yr[h] = acc;
        }
    }
}

/* The order the GEMM blocks run in. Columns fastest: the column blocks of
 * one tile run side by side and share its A rows in L2, and consecutive
 * tiles of one expert follow each other and share its weights. Tiles
 * fastest (DR_CUDA_MOE_GRID=0, the earlier order, a same-run baseline):
 * every tile's A rows are read again by each column block in a later sweep,
 * by then mostly out of L2 (act is R x I fp32, 128 MB at 8192 tokens of
 * the 35B shape). gridDim.y caps the tile count at 65535. */
static bool cols_fast(int MT) {
    static int on = -1;
    return dr_env_on("DR_CUDA_MOE_GRID", &on) && MT <= 65535;
}

static dim3 mp_grid(bool cf, int MT, int N) {
    const unsigned nc = (unsigned)(N / MP_BN);
    return cf ? dim3(nc, (unsigned)MT) : dim3((unsigned)MT, nc);
}

/* mp_gemm2 unless DR_CUDA_MOE_GEMM=1 (mp_gemm, a same-run baseline; read
 * at every call) or the shapes don't suit it: H a multiple of down's 128
 * columns per block, I of gate/up's 64. */
static bool use_gemm2(int H, int I) {
    const char *e = getenv("DR_CUDA_MOE_GEMM");
    return !(e && e[0] == '1') && H % M2_BN == 0 && I % (M2_BN / 2) == 0;
}

bool dr_cuda_moe_prefill(dr_cuda_ctx *cx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const dr_expert *experts, dr_cuda_expert_tab_fn get_tab, int E, int T, int k, int H,
                         int I) {
    if (!dr_cuda_prefill_enabled() || T < DR_MOE_PREFILL_MIN_T || H % MP_BN || I % MP_BN || H % MP_BK || I % MP_BK)
        return false;
    for (int e = 0; e < E; e++)
        if (experts[e].gate.dtype != DR_DT_BF16 || experts[e].up.dtype != DR_DT_BF16 ||
            experts[e].down.dtype != DR_DT_BF16)
            return false;
    const void *const *tab = get_tab(cx, experts, E);
    if (!tab)
        return true; /* the table's failure is recorded */
    const int R = T * k;
    const bool v2 = use_gemm2(H, I) && R / M2_BM + E <= 65535;
    const int bm = v2 ? M2_BM : MP_BM, MT = R / bm + E;
    const size_t ni = (size_t)E + (E + 1) + E + 1 + 2 * (size_t)MT + 2 * (size_t)R;
    int *ib = (int *)dr_cuda_scratch(cx, DR_SCR_MOE2, ni * sizeof(int));
    /* act [R, I] (fp32, or its bf16 hi / lo planes), ob [R, H]; v2: x's planes [T, H] */
    const size_t nf = (size_t)R * I + (size_t)R * H + (v2 ? (size_t)T * H : 0);
    float *act = (float *)dr_cuda_scratch(cx, DR_SCR_MOE, nf * sizeof(float));
    if (!ib || !act)
        return true;
    float *ob = act + (size_t)R * I;
    mp_idx m;
    m.cnt = ib;
    m.off = m.cnt + E;
    m.cur = m.off + E + 1;
    m.ntile = m.cur + E;
    m.tile_e = m.ntile + 1;
    m.tile_r0 = m.tile_e + MT;
    m.rowmap = m.tile_r0 + MT;
    m.pos = m.rowmap + R;
    DR_CUDA_NOTE(cx, cudaMemsetAsync(m.cnt, 0, (size_t)E * sizeof(int), cx->stream));
    const unsigned gr = dr_cdiv((size_t)R, 256);
    mp_count<<<gr, 256, 0, cx->stream>>>(m, idx, R, E);
    DR_CUDA_LAUNCHED(cx);
    if (E <= 1024)
        mp_scan_par<<<1, (E + 31) / 32 * 32, 0, cx->stream>>>(m, E, bm);
    else
        mp_scan<<<1, 32, 0, cx->stream>>>(m, E, bm);
    DR_CUDA_LAUNCHED(cx);
    mp_scatter<<<gr, 256, 0, cx->stream>>>(m, idx, R, E);
    DR_CUDA_LAUNCHED(cx);
    if (v2) {
        bf16 *act_h = (bf16 *)act, *act_l = act_h + (size_t)R * I;
        bf16 *x_h = (bf16 *)(ob + (size_t)R * H), *x_l = x_h + (size_t)T * H;
        const size_t n4 = (size_t)T * H / 4;
        mp_split<<<(unsigned)dr_cdiv(n4, 256), 256, 0, cx->stream>>>(x_h, x_l, x, n4);
        DR_CUDA_LAUNCHED(cx);
        DR_CUDA_NOTE(cx, cudaFuncSetAttribute(mp_gemm2<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, M2_SMEM));
        DR_CUDA_NOTE(cx, cudaFuncSetAttribute(mp_gemm2<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, M2_SMEM));
        mp_gemm2<true><<<dim3((unsigned)(I / (M2_BN / 2)), (unsigned)MT), M2_THREADS, M2_SMEM, cx->stream>>>(
            act_h, act_l, NULL, x_h, x_l, m, tab, E, k, I, H);
        DR_CUDA_LAUNCHED(cx);
        mp_gemm2<false><<<dim3((unsigned)(H / M2_BN), (unsigned)MT), M2_THREADS, M2_SMEM, cx->stream>>>(
            NULL, NULL, ob, act_h, act_l, m, tab, E, k, H, I);
        DR_CUDA_LAUNCHED(cx);
    } else {
        const bool cf = cols_fast(MT);
        mp_gemm<true><<<mp_grid(cf, MT, I), MP_THREADS, 0, cx->stream>>>(act, x, m, tab, E, k, I, H, cf);
        DR_CUDA_LAUNCHED(cx);
        mp_gemm<false><<<mp_grid(cf, MT, H), MP_THREADS, 0, cx->stream>>>(ob, act, m, tab, E, k, H, I, cf);
        DR_CUDA_LAUNCHED(cx);
    }
    mp_combine_rows<<<(unsigned)(T < 16 * cx->n_sm ? T : 16 * cx->n_sm), 256, 0, cx->stream>>>(y, ob, wts, m.pos, T,
                                                                                                 k, H);
    DR_CUDA_LAUNCHED(cx);
    return true;
}
