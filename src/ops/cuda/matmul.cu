/* ops/cuda/matmul.cu - y = x W^T for F32/F16/BF16 weights on the GPU, and
 * the embedding lookup.
 *
 * Three engines, all with fp32 results accurate to fp32 rounding:
 *  - GEMV (T <= 8, decode): gemv_rows_kernel (1-4 rows per warp, 8 16-byte
 *    weight loads in flight per lane, programmatic dependent launch), or the
 *    older one-warp-per-row kernel (unaligned shapes, DR_CUDA_GEMV_ROWS=0,
 *    DR_CUDA_GEMV_SPLIT=1); the row read once for all T tokens, fp32
 *    accumulation. Bound by HBM.
 *  - cuBLAS (prefill, BF16 and F32 weights): BF16 weights are exact in bf16,
 *    so x is split into x_hi = bf16(x) and x_lo = bf16(x - x_hi) and
 *    y = W x_hi + W x_lo, two bf16 tensor-core GEMMs accumulating in fp32;
 *    the split leaves a relative error of about 2^-17 on x (fp32-grade, far
 *    inside the 1e-3 logit tolerance; measured in docs/CUDA.md). F32 weights
 *    use cuBLAS fp32 (no TF32).
 *  - tiled fp32 SIMT kernel (F16 weights in prefill, and a cross-check).
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "quant.cuh"

#include <stdlib.h>

static int dr_cuda_mm_force = 0;

extern "C" void dr_cuda_set_mm_engine(int engine) { dr_cuda_mm_force = engine; }

#define GEMV_MAX_T 8

/* ---- GEMV ---- */

template <typename WT> struct wvec; /* widen one 16-byte vector of weights */
template <> struct wvec<float> {
    enum { N = 4 };
    static __device__ __forceinline__ void get(const uint4 &u, float *f) {
        f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y), f[2] = __uint_as_float(u.z),
        f[3] = __uint_as_float(u.w);
    }
};
template <> struct wvec<__nv_bfloat16> {
    enum { N = 8 };
    static __device__ __forceinline__ void get(const uint4 &u, float *f) {
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct wvec<__half> {
    enum { N = 8 };
    static __device__ __forceinline__ void get(const uint4 &u, float *f) {
        const __half2 *h = (const __half2 *)&u;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 v = __half22float2(h[i]);
            f[2 * i] = v.x, f[2 * i + 1] = v.y;
        }
    }
};

static __device__ __forceinline__ float to_f(float v) { return v; }
static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

/* One warp per row of W; `vec`: rows and x are 16-byte aligned and n is a
 * multiple of the vector width. Optional gather/scatter of rows is not
 * needed here (MoE decode has its own kernels). */
/* Up to GEMV_SETS matrices of the same width n read in one launch (the
 * projections that share x): rows row0[m] .. row0[m+1]-1 of the launch are
 * the rows of matrix m. */
#define GEMV_SETS 4
struct gemv_set {
    const void *W[GEMV_SETS];
    float *y[GEMV_SETS];
    int row0[GEMV_SETS + 1];
    int nm;
};

/* One weight row is read by KS warps of a block (KS = 1, 2, 4, 8: split-K,
 * so that narrow matrices still put enough warps on every SM); each warp
 * takes every KS-th 512-byte piece of the row, four 16-byte loads in flight
 * per lane. The block walks row groups (8 / KS rows) with a grid stride, so
 * the grid is at most a few blocks per SM and long matrices (lm_head) do not
 * pay a block launch per 8 rows. The KS partial sums of a row are added in a
 * fixed order (deterministic). */
template <typename WT, int MT>
__global__ void __launch_bounds__(256) gemv_kernel(const gemv_set set, const float *__restrict__ x, int T, int n,
                                                   int vec, int ks) {
    DR_TL_SCOPE();
    __shared__ float part[8][MT];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int rpb = 8 / ks, wr = w / ks, sl = w - wr * ks;
    const int rows = set.row0[set.nm];
    const int ngroups = (rows + rpb - 1) / rpb;
    for (int g = blockIdx.x; g < ngroups; g += gridDim.x) {
        int row = g * rpb + wr;
        const bool live = row < rows;
        float acc[MT];
#pragma unroll
        for (int t = 0; t < MT; t++)
            acc[t] = 0.0f;
        int mi = 0, d = 0;
        if (live) {
            while (mi + 1 < set.nm && row >= set.row0[mi + 1])
                mi++;
            d = set.row0[mi + 1] - set.row0[mi];
            row -= set.row0[mi];
            const WT *wr_ = (const WT *)set.W[mi] + (size_t)row * n;
            if (vec) {
                constexpr int E = wvec<WT>::N;
                const uint4 *wv = (const uint4 *)wr_;
                const int nv = n / E, st = 32 * ks;
                int v = sl * 32 + lane;
                for (; v + 3 * st < nv; v += 4 * st) {
                    uint4 u[4];
#pragma unroll
                    for (int r = 0; r < 4; r++)
                        u[r] = __ldg(wv + v + st * r);
#pragma unroll
                    for (int r = 0; r < 4; r++) {
                        float wf[E];
                        wvec<WT>::get(u[r], wf);
                        const int i0 = (v + st * r) * E;
#pragma unroll
                        for (int t = 0; t < MT; t++) {
                            if (t < T) {
                                const float4 *xv = (const float4 *)(x + (size_t)t * n + i0);
#pragma unroll
                                for (int q = 0; q < E / 4; q++) {
                                    float4 xx = xv[q];
                                    acc[t] += wf[4 * q] * xx.x + wf[4 * q + 1] * xx.y + wf[4 * q + 2] * xx.z +
                                              wf[4 * q + 3] * xx.w;
                                }
                            }
                        }
                    }
                }
                for (; v < nv; v += st) {
                    float wf[E];
                    wvec<WT>::get(__ldg(wv + v), wf);
                    const int i0 = v * E;
#pragma unroll
                    for (int t = 0; t < MT; t++) {
                        if (t < T) {
                            const float4 *xv = (const float4 *)(x + (size_t)t * n + i0);
#pragma unroll
                            for (int q = 0; q < E / 4; q++) {
                                float4 xx = xv[q];
                                acc[t] += wf[4 * q] * xx.x + wf[4 * q + 1] * xx.y + wf[4 * q + 2] * xx.z +
                                          wf[4 * q + 3] * xx.w;
                            }
                        }
                    }
                }
            } else {
                for (int i = sl * 32 + lane; i < n; i += 32 * ks) {
                    float wf = to_f(wr_[i]);
#pragma unroll
                    for (int t = 0; t < MT; t++)
                        if (t < T)
                            acc[t] += wf * x[(size_t)t * n + i];
                }
            }
        }
#pragma unroll
        for (int t = 0; t < MT; t++)
            acc[t] = dr_warp_sum(acc[t]);
        if (ks == 1) {
            if (live && lane == 0) {
                float *__restrict__ y = set.y[mi];
#pragma unroll
                for (int t = 0; t < MT; t++)
                    if (t < T)
                        y[(size_t)t * d + row] = acc[t];
            }
        } else {
            if (lane == 0) {
#pragma unroll
                for (int t = 0; t < MT; t++)
                    part[w][t] = acc[t];
            }
            __syncthreads();
            if (live && sl == 0 && lane == 0) {
                float *__restrict__ y = set.y[mi];
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    if (t < T) {
                        float s_ = part[w][t];
                        for (int j = 1; j < ks; j++)
                            s_ += part[w + j][t];
                        y[(size_t)t * d + row] = s_;
                    }
                }
            }
            __syncthreads();
        }
    }
}


/* Weight loads that do not allocate in L1 (cuda_common.cuh). */
static __device__ __forceinline__ uint4 ld_w(const uint4 *p) { return dr_ld_w(p); }

/* What a block needs to stage RMSNorm(x; gain) into sx; sh: 32 floats of
 * shared memory for the block sum. */
struct gn_args {
    float *sx;
    const float *x, *gain;
    int n;
    float eps;
    float *sh;
};
#define GN_BATCH 8

/* sx [n] = RMSNorm(x; gain) staged by the whole block in three steps, so
 * that the GEMV issues its first weight loads between the second and the
 * third (gemv_rows_dot): gn_load reads this thread's first GN_BATCH
 * elements of x and gain (one round trip for n <= GN_BATCH x threads) into
 * v, g; gn_stage_sq stages x * gain and returns the thread's sum of squares
 * in index order, as dr_row_sumsq does (further elements GN_BATCH at a
 * time); gn_scale scales sx by 1 / rms once the block has the sum. Every
 * thread must call all three. */
static __device__ __forceinline__ void gn_load(const gn_args &ga, int i0, float (&v)[GN_BATCH],
                                               float (&g)[GN_BATCH]) {
#pragma unroll
    for (int k = 0; k < GN_BATCH; k++) {
        const int i = i0 + k * (int)blockDim.x;
        v[k] = i < ga.n ? ga.x[i] : 0.0f;
        g[k] = i < ga.n ? ga.gain[i] : 0.0f;
    }
}
static __device__ __forceinline__ float gn_stage_sq(const gn_args &ga, float (&v)[GN_BATCH], float (&g)[GN_BATCH]) {
    const int nt = blockDim.x, n = ga.n;
    float ss = 0.0f;
    for (int i0 = threadIdx.x;;) {
#pragma unroll
        for (int k = 0; k < GN_BATCH; k++)
            if (i0 + k * nt < n) {
                ss += v[k] * v[k];
                ga.sx[i0 + k * nt] = v[k] * g[k];
            }
        i0 += GN_BATCH * nt;
        if (i0 >= n)
            return ss;
        gn_load(ga, i0, v, g);
    }
}
static __device__ __forceinline__ void gn_scale(const gn_args &ga, float ss) {
    const float inv = 1.0f / sqrtf(dr_block_sum(ss, ga.sh) / (float)ga.n + ga.eps);
    for (int i = threadIdx.x; i < ga.n; i += blockDim.x) /* this thread's own elements: no barrier before */
        ga.sx[i] *= inv;
    __syncthreads();
}

/* Default decode GEMV (16-byte aligned rows and x, n a multiple of the
 * vector width): each warp owns R consecutive rows and keeps R x U 16-byte
 * weight loads in flight per lane (R * U = 8) before their first use; the
 * x vector (fp32, small) is read through L1 once per R rows. No split-K, no
 * atomics: each row's sum is one lane-strided walk plus a warp reduction
 * (a fixed order, deterministic). The first batch of weight loads is issued
 * before dr_pdl_wait() (unless the block stages x first, SX below), so with
 * programmatic dependent launch the weights stream while the kernel that
 * writes x is still finishing.
 * gemv_rows_dot is its streaming loop: acc[r][t] = dot(row r, x_t) for the
 * R rows at wp[r] (16-byte vectors, nv of them); every lane gets the
 * warp-reduced sums. Each row is one lane-strided walk (v = lane, lane +
 * 32, ...) whatever R and U are, then a warp reduction: the same sums, bit
 * for bit, for every kernel built on it.
 * SX: x is staged in shared memory by the whole block from what the kernel
 * before wrote (ga: gn_args; plain loads of x, __ldg being for global
 * memory only). Then x's loads come first after the PDL wait, and the
 * first weight loads once x is back and staged, before the block sum of the
 * norm (gn_scale): the norm is this kernel's critical path, and x's loads
 * issued with or behind a batch of weight loads came back that much later
 * (docs/CUDA.md, session 12). */
template <typename WT, int MT, int R, int U, bool SX = false>
static __device__ __forceinline__ void gemv_rows_dot(const uint4 *const (&wp)[R], const float *__restrict__ x, int T,
                                                     int n, float (&acc)[R][MT], const gn_args &ga = gn_args()) {
    constexpr int E = wvec<WT>::N;
    const int lane = threadIdx.x & 31, nv = n / E;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < MT; t++)
            acc[r][t] = 0.0f;
    uint4 u[U][R];
    float gv[GN_BATCH], gg[GN_BATCH], ss = 0.0f;
    int v0 = lane;
#ifdef DR_CUDA_PRELOAD_AFTER /* measurement build: every decode GEMV's first weight loads after the wait */
    constexpr bool after = true;
#else
    constexpr bool after = SX;
#endif
    if (after) {
        dr_pdl_wait();
        if (SX) {
            gn_load(ga, threadIdx.x, gv, gg);
            ss = gn_stage_sq(ga, gv, gg);
        }
        dr_pdl_wait_fenced((unsigned)nv); /* waits no more; ptxas does not hoist the weight loads above it */
    }
#pragma unroll
    for (int j = 0; j < U; j++)
#pragma unroll
        for (int r = 0; r < R; r++)
            u[j][r] = v0 + 32 * j < nv ? ld_w(wp[r] + v0 + 32 * j) : make_uint4(0, 0, 0, 0);
    if (SX)
        gn_scale(ga, ss);
    else if (!after)
        dr_pdl_wait_fenced((unsigned)nv);
    for (;;) {
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int v = v0 + 32 * j;
            if (v < nv) {
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    if (t < T) {
                        const float4 *xv = (const float4 *)(x + (size_t)t * n + (size_t)v * E);
                        float4 xx[E / 4];
#pragma unroll
                        for (int q = 0; q < E / 4; q++)
                            xx[q] = SX ? xv[q] : __ldg(xv + q);
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            float wf[E];
                            wvec<WT>::get(u[j][r], wf);
                            float s_ = acc[r][t];
#pragma unroll
                            for (int q = 0; q < E / 4; q++)
                                s_ += wf[4 * q] * xx[q].x + wf[4 * q + 1] * xx[q].y + wf[4 * q + 2] * xx[q].z +
                                      wf[4 * q + 3] * xx[q].w;
                            acc[r][t] = s_;
                        }
                    }
                }
            }
        }
        v0 += 32 * U;
        if (v0 >= nv)
            break;
#pragma unroll
        for (int j = 0; j < U; j++)
#pragma unroll
            for (int r = 0; r < R; r++)
                u[j][r] = v0 + 32 * j < nv ? ld_w(wp[r] + v0 + 32 * j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < MT; t++)
            acc[r][t] = dr_warp_sum(acc[r][t]);
}

/* Rows r0 .. r0+R-1 of a gemv_set: their weight rows (nv 16-byte vectors
 * each), outputs (NULL past the end: a row past the end re-reads the last
 * row, result dropped) and output strides between tokens. */
template <int R>
static __device__ __forceinline__ void gemv_set_rows(const gemv_set &set, int r0, int nv, const uint4 *(&wp)[R],
                                                     float *(&yp)[R], int (&ld)[R]) {
    const int rows = set.row0[set.nm];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int row = r0 + r < rows ? r0 + r : rows - 1;
        const void *W = set.W[0];
        float *Y = set.y[0];
        int b = 0, e = set.row0[1];
#pragma unroll
        for (int m = 1; m < GEMV_SETS; m++) /* constant indices: the set stays in the parameter bank */
            if (m < set.nm && row >= set.row0[m])
                W = set.W[m], Y = set.y[m], b = set.row0[m], e = set.row0[m + 1];
        wp[r] = (const uint4 *)W + (size_t)(row - b) * nv;
        yp[r] = r0 + r < rows ? Y + (row - b) : NULL;
        ld[r] = e - b;
    }
}

template <typename WT, int MT, int R, int U>
__global__ void __launch_bounds__(256) gemv_rows_kernel(const gemv_set set, const float *__restrict__ x, int T,
                                                        int n) {
    DR_TL_SCOPE();
    constexpr int E = wvec<WT>::N;
    dr_pdl_trigger();
    const int lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    const int rows = set.row0[set.nm];
    if (r0 >= rows)
        return;
    const uint4 *wp[R];
    float *yp[R];
    int ld[R];
    gemv_set_rows<R>(set, r0, n / E, wp, yp, ld);
    float acc[R][MT];
    gemv_rows_dot<WT, MT, R, U>(wp, x, T, n, acc);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < MT; t++)
            if (lane == 0 && yp[r] && t < T)
                yp[r][(size_t)t * ld[r]] = acc[r][t];
}

#define GN_MAX_N 6144
#define GN_BLOCKS_PER_SM 3 /* gemv_rows_norm_kernel's launch bounds: at most 80 registers */

/* DR_CUDA_NORM_IN=0: rmsnorm_matmul_n and matmul_swiglu with a gain decline (the
 * norm made by the block before, a same-run baseline); 2: only matmul_swiglu
 * with a gain declines */
static int norm_in_mode(void) {
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("DR_CUDA_NORM_IN");
        mode = e && (e[0] == '0' || e[0] == '2') ? e[0] - '0' : 1;
    }
    return mode;
}

/* y_i = W_i RMSNorm(x; gain) for one token (ops.h rmsnorm_matmul_n): each
 * block normalises x into shared memory (gn_load, gn_stage_sq, gn_scale)
 * once the kernel before it is done, its first weight loads issued once x
 * is back, and runs
 * gemv_rows_kernel's dot on it. The norm is not a kernel of its own
 * (session 5, docs/CUDA.md). Widths up to GN_MAX_N (x in the default shared
 * memory). At most 80 registers, 3 blocks per SM (session 6): the 386 blocks
 * of the 35B-A3B's GDN input projections then run as one wave (2 per SM at
 * 102 registers left a second wave; decode +2%, 9B +0.7%). */
template <typename WT, int R, int U>
__global__ void __launch_bounds__(256, GN_BLOCKS_PER_SM) gemv_rows_norm_kernel(const gemv_set set, const float *x,
                                                             const float *__restrict__ gain, int n, float eps) {
    DR_TL_SCOPE();
    constexpr int E = wvec<WT>::N;
    extern __shared__ float4 gn_x[];
    __shared__ float sh[32];
    dr_pdl_trigger();
    float *sx = (float *)gn_x;
    const int lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R; /* no early exit: barriers */
    const uint4 *wp[R];
    float *yp[R];
    int ld[R];
    gemv_set_rows<R>(set, r0, n / E, wp, yp, ld);
    float acc[R][1];
    gemv_rows_dot<WT, 1, R, U, true>(wp, sx, 1, n, acc, gn_args{sx, x, gain, n, eps, sh});
#pragma unroll
    for (int r = 0; r < R; r++)
        if (lane == 0 && yp[r])
            *yp[r] = acc[r][0];
}

/* ---- GEMV epilogue fusions (docs/CUDA.md, "Decode round 4") ---- */

/* out [T, d] = silu(gate x) * (up x): a warp owns P output rows and reads
 * the P gate rows and the P up rows together (R = 2P rows of the GEMV),
 * so silu(g) * u is formed in registers. Same dot products as the gate/up
 * GEMV, same silu as swiglu_kernel: the unfused chain's results exactly.
 * NORM (T = 1, session 5): x is the residual stream, normalised with gain
 * into shared memory by every block first (as gemv_rows_norm_kernel). */
template <typename WT, int MT, int P, bool NORM = false>
__global__ void __launch_bounds__(256) gemv_swiglu_kernel(float *__restrict__ out, const WT *gate, const WT *up,
                                                          const float *x, int T, int d, int n,
                                                          const float *__restrict__ gain, float eps) {
    DR_TL_SCOPE();
    constexpr int E = wvec<WT>::N, R = 2 * P;
    extern __shared__ float4 gs_x[];
    __shared__ float sh[32];
    dr_pdl_trigger();
    const int i0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * P;
    if (!NORM && i0 >= d) /* with NORM every warp reaches the norm's barriers */
        return;
    const int nv = n / E;
    const uint4 *wp[R];
#pragma unroll
    for (int p = 0; p < P; p++) {
        const size_t row = i0 + p < d ? i0 + p : d - 1; /* past the end: re-read row d-1, result dropped */
        wp[p] = (const uint4 *)gate + row * nv;
        wp[P + p] = (const uint4 *)up + row * nv;
    }
    float acc[R][MT];
    if (NORM)
        gemv_rows_dot<WT, MT, R, 8 / R, true>(wp, (const float *)gs_x, T, n, acc,
                                              gn_args{(float *)gs_x, x, gain, n, eps, sh});
    else
        gemv_rows_dot<WT, MT, R, 8 / R>(wp, x, T, n, acc);
    if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int p = 0; p < P; p++)
#pragma unroll
            for (int t = 0; t < MT; t++)
                if (t < T && i0 + p < d)
                    out[(size_t)t * d + i0 + p] = dr_dev_silu(acc[p][t]) * acc[P + p][t];
}

/* The last block's norm of one token's row (gemv_add_norm_kernel, d at
 * most 8 times the block's threads): xn = x / rms * gain with the sum of
 * squares from the blocks' parts [G], summed as the wide path does (per
 * thread in block order, then the block reduction), so the values are the
 * same; x and gain are loaded before the parts are summed, not after. */
static __device__ __forceinline__ void gn_last_one(float *__restrict__ xn, const float *x,
                                                   const float *__restrict__ gain, const float *parts, int G, int d,
                                                   float eps, float *sh) {
    const int nt = blockDim.x;
    float v[8], g[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int i = threadIdx.x + k * nt;
        v[k] = i < d ? __ldcg(x + i) : 0.0f;
        g[k] = i < d ? gain[i] : 0.0f;
    }
    float ss = 0.0f;
    for (int j = threadIdx.x; j < G; j += nt)
        ss += __ldcg(parts + j);
    ss = dr_block_sum(ss, sh);
    const float iv = 1.0f / sqrtf(ss / (float)d + eps);
    DR_TL_MARK(2, iv);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int i = threadIdx.x + k * nt;
        if (i < d)
            xn[i] = v[k] * iv * g[k];
    }
}

/* x [T, d] += a W^T, then (gain not NULL) xn = x / rms(x) * gain per token.
 * Each warp adds its R rows of W a into x (it owns them: no atomics) and
 * each block writes the sum of squares of its rows (warp by warp, row by
 * row) to parts [T, gridDim.x]; then every block bumps the device counter
 * (acquire-release), and the last block to arrive sums the parts in block
 * order (per thread, then the block reduction: a fixed order), writes xn
 * for the whole rows, and puts the counter back to 0 for the next launch or
 * graph replay. No early exit before the barriers. */
#define FN_PARTS 16384 /* floats of parts after the counter (gridDim.x * T at most) */
template <typename WT, int MT, int R, int U = 8 / R>
__global__ void __launch_bounds__(256) gemv_add_norm_kernel(float *x, float *__restrict__ xn, const WT *W,
                                                            const float *__restrict__ a,
                                                            const float *__restrict__ gain, int T, int d, int n,
                                                            float eps, unsigned *cnt, int rel) {
    DR_TL_SCOPE();
    constexpr int E = wvec<WT>::N;
    __shared__ float sh[32], wsq[8][MT], inv[MT];
    __shared__ int last;
    dr_pdl_trigger();
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int r0 = (blockIdx.x * nw + w) * R;
    const int nv = n / E;
    const uint4 *wp[R];
#pragma unroll
    for (int r = 0; r < R; r++) { /* rows past the end re-read row d - 1, results dropped */
        const size_t row = r0 + r < d ? r0 + r : d - 1;
        wp[r] = (const uint4 *)W + row * nv;
    }
    float acc[R][MT];
    gemv_rows_dot<WT, MT, R, U>(wp, a, T, n, acc);
    DR_TL_MARK(0, acc[0][0]);
    float sq[MT];
#pragma unroll
    for (int t = 0; t < MT; t++) {
        sq[t] = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++)
            if (lane == 0 && t < T && r0 + r < d) {
                float *p = x + (size_t)t * d + r0 + r;
                const float v = *p + acc[r][t];
                *p = v;
                sq[t] += v * v;
            }
    }
    if (!gain)
        return;
    float *parts = (float *)(cnt + 64);
    if (lane == 0)
#pragma unroll
        for (int t = 0; t < MT; t++)
            wsq[w][t] = sq[t];
    __syncthreads();
    if ((int)threadIdx.x < T) {
        float s_ = 0.0f;
        for (int j = 0; j < nw; j++)
            s_ += wsq[j][threadIdx.x];
        parts[(size_t)threadIdx.x * gridDim.x + blockIdx.x] = s_;
    }
    if (rel) {
        /* the block's barrier, then one acquire-release add by thread 0: its release carries the block's x rows
           and parts (ordered before it by the barrier), its acquire the other blocks' to this block after the
           next barrier (CUTLASS's semaphore does the same). No fence.sc (__threadfence): in session 32's timeline
           the fence and the count took ~1 us at out_proj's end; this way decoded 0.3-0.7% faster (docs/CUDA.md). */
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned old;
            asm volatile("atom.add.acq_rel.gpu.u32 %0, [%1], 1;" : "=r"(old) : "l"(cnt) : "memory");
            last = old == gridDim.x - 1;
        }
        __syncthreads();
    } else {
        __threadfence(); /* this block's x rows and parts are visible before its arrival is counted */
        __syncthreads();
        if (threadIdx.x == 0)
            last = atomicAdd(cnt, 1u) == gridDim.x - 1;
        __syncthreads();
    }
    DR_TL_MARK(1, (float)last);
    if (!last)
        return;
    if (!rel)
        __threadfence();
    const int nt = blockDim.x, G = gridDim.x;
    if (d <= 8 * nt) { /* x and gain load with the parts: one round trip per token (session 11) */
        for (int t = 0; t < T; t++)
            gn_last_one(xn + (size_t)t * d, x + (size_t)t * d, gain, parts + (size_t)t * G, G, d, eps, sh);
        if (threadIdx.x == 0)
            *cnt = 0;
        return;
    }
    for (int t = 0; t < T; t++) {
        float ss = 0.0f;
        for (int j = threadIdx.x; j < G; j += nt)
            ss += __ldcg(parts + (size_t)t * G + j);
        ss = dr_block_sum(ss, sh);
        if (threadIdx.x == 0)
            inv[t] = 1.0f / sqrtf(ss / (float)d + eps);
    }
    __syncthreads();
    DR_TL_MARK(2, inv[0]);
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * d, iv = inv[t];
        float *yr = xn + (size_t)t * d;
        for (int i0 = threadIdx.x; i0 < d; i0 += 8 * nt) { /* 16 loads in flight per thread */
            float v[8], g[8];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int i = i0 + k * nt;
                v[k] = i < d ? __ldcg(xr + i) : 0.0f;
                g[k] = i < d ? gain[i] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (i0 + k * nt < d)
                    yr[i0 + k * nt] = v[k] * iv * g[k];
        }
    }
    if (threadIdx.x == 0)
        *cnt = 0;
}


template <typename WT, int MT, int R>
static void gemv_rows_launch(dr_cuda_ctx *cx, const gemv_set &set, const float *x, int T, int n) {
    const int rows = set.row0[set.nm];
    /* warps per block: 8, or DR_CUDA_GEMV_WARPS=4 (finer blocks, an experiment for few-row matrices) */
    static int wpb = 0;
    if (!wpb) {
        const char *e = getenv("DR_CUDA_GEMV_WARPS");
        wpb = e && e[0] == '4' ? 4 : 8;
    }
    dim3 grid(dr_cdiv((size_t)rows, (size_t)(wpb * R))), block(32 * wpb);
    void (*k)(const gemv_set, const float *, int, int) = gemv_rows_kernel<WT, MT, R, 8 / R>;
    dr_cuda_launch(cx, true, k, grid, block, 0, set, x, T, n);
}

/* rows per warp: enough warps first (16 per SM), then fewer x reads */
template <typename WT, int MT>
static void gemv_rows_pick(dr_cuda_ctx *cx, const gemv_set &set, const float *x, int T, int n) {
    const long rows = set.row0[set.nm], sm = cx->n_sm > 0 ? cx->n_sm : 132;
    if (MT <= 2 && rows >= 4 * 16 * sm)
        gemv_rows_launch<WT, MT, 4>(cx, set, x, T, n);
    else if (MT <= 2 && rows >= 2 * 16 * sm)
        gemv_rows_launch<WT, MT, 2>(cx, set, x, T, n);
    else
        gemv_rows_launch<WT, MT, 1>(cx, set, x, T, n);
}

static int gemv_env[2] = {-1, -1}; /* DR_CUDA_GEMV_SPLIT, DR_CUDA_GEMV_ROWS, read once */
static void gemv_env_read(void) {
    if (gemv_env[0] < 0) {
        const char *e = getenv("DR_CUDA_GEMV_SPLIT");
        gemv_env[0] = e && e[0] == '1' ? 1 : 0;
        e = getenv("DR_CUDA_GEMV_ROWS"); /* 0: the previous one-warp-per-row kernel (same-run baseline) */
        gemv_env[1] = e && e[0] == '0' ? 0 : 1;
    }
}
static int gemv_split(void) { return gemv_env_read(), gemv_env[0]; }
static int gemv_rowsk(void) { return gemv_env_read(), gemv_env[1]; }

template <typename WT> static void gemv_set_launch(dr_cuda_ctx *cx, const gemv_set &set, const float *x, int T, int n) {
    const int E = wvec<WT>::N;
    int vec = (n % E == 0) && ((uintptr_t)x % 16 == 0);
    for (int i = 0; i < set.nm; i++)
        vec = vec && ((uintptr_t)set.W[i] % 16 == 0);
    /* split-K until the warps cover two waves of the GPU (64 warps per SM),
       keeping at least one 16-byte load per lane and slice */
    const int rows = set.row0[set.nm], units = vec ? n / E : n / 8;
    const long want = 128L * (cx->n_sm > 0 ? cx->n_sm : 132);
    /* Default: one warp per row, a block per 8 rows (ks = 1, no grid stride).
       DR_CUDA_GEMV_SPLIT=1: split-K + a grid of 8 blocks per SM. Measured on
       the H200 in one call, the split shape was slower end to end (9B decode
       115.6 vs 122.8 tok/s, 0.8B 350 vs 360), so it is off by default. */
    const int split = gemv_split(), rowsk = gemv_rowsk();
    if (vec && !split && rowsk) {
        if (T == 1)
            gemv_rows_pick<WT, 1>(cx, set, x, T, n);
        else if (T == 2)
            gemv_rows_pick<WT, 2>(cx, set, x, T, n);
        else if (T <= 4)
            gemv_rows_pick<WT, 4>(cx, set, x, T, n);
        else
            gemv_rows_pick<WT, 8>(cx, set, x, T, n);
        return;
    }
    int ks = 1;
    while (split && ks < 8 && (long)rows * ks < want && units >= 32 * ks * 2)
        ks *= 2;
    const size_t groups = dr_cdiv((size_t)rows, (size_t)(8 / ks));
    const size_t cap = split ? (size_t)8 * (cx->n_sm > 0 ? cx->n_sm : 132) : groups;
    dim3 grid((unsigned)(groups < cap ? groups : cap)), block(256);
    if (T == 1)
        gemv_kernel<WT, 1><<<grid, block, 0, cx->stream>>>(set, x, T, n, vec, ks);
    else if (T == 2)
        gemv_kernel<WT, 2><<<grid, block, 0, cx->stream>>>(set, x, T, n, vec, ks);
    else if (T <= 4)
        gemv_kernel<WT, 4><<<grid, block, 0, cx->stream>>>(set, x, T, n, vec, ks);
    else
        gemv_kernel<WT, 8><<<grid, block, 0, cx->stream>>>(set, x, T, n, vec, ks);
    DR_CUDA_LAUNCHED(cx);
}

template <typename WT>
static void gemv_launch(dr_cuda_ctx *cx, float *y, const float *x, const WT *W, int T, int d, int n) {
    gemv_set set = {};
    set.W[0] = W;
    set.y[0] = y;
    set.row0[1] = d;
    set.nm = 1;
    gemv_set_launch<WT>(cx, set, x, T, n);
}

/* ---- the fused decode slots (GEMV epilogues) ---- */

/* DR_CUDA_FUSE: bit 0 matmul_swiglu, bit 1 matmul_add_rmsnorm (default 3) */
static int fuse_mode(void) {
    static int m = -1;
    if (m < 0) {
        const char *e = getenv("DR_CUDA_FUSE");
        m = e && e[0] >= '0' && e[0] <= '3' ? e[0] - '0' : 3;
    }
    return m;
}

/* w goes through gemv_rows_kernel for input x: an uploaded F32/F16/BF16
 * weight, T <= GEMV_MAX_T, 16-byte aligned rows and input, the default GEMV
 * engine. Anything else: the slots decline and the unfused chain runs. */
static bool fusable(const dr_tensor *w, const float *x, int T) {
    if (!w->dev || w->q.bits || T < 1 || T > GEMV_MAX_T || (dr_cuda_mm_force != 0 && dr_cuda_mm_force != 1) ||
        gemv_split() || !gemv_rowsk())
        return false;
    if (w->dtype != DR_DT_BF16 && w->dtype != DR_DT_F16 && w->dtype != DR_DT_F32)
        return false;
    const long n = w->ne[w->ndim - 1], E = w->dtype == DR_DT_F32 ? 4 : 8;
    return n % E == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w->dev % 16 == 0;
}

/* rows per warp, as gemv_rows_pick: enough warps first (16 per SM) */
static int rows_per_warp(const dr_cuda_ctx *cx, long rows, int MT) {
    const long sm = cx->n_sm > 0 ? cx->n_sm : 132;
    return MT <= 2 && rows >= 4 * 16 * sm ? 4 : MT <= 2 && rows >= 2 * 16 * sm ? 2 : 1;
}

template <typename WT, int MT>
static void swiglu_launch(dr_cuda_ctx *cx, float *out, const void *gate, const void *up, const float *x, int T, int d,
                          int n) {
    if (rows_per_warp(cx, 2L * d, MT) >= 4)
        dr_cuda_launch(cx, true, gemv_swiglu_kernel<WT, MT, 2>, dim3(dr_cdiv((size_t)d, 16)), dim3(256), 0, out,
                       (const WT *)gate, (const WT *)up, x, T, d, n, (const float *)NULL, 0.0f);
    else
        dr_cuda_launch(cx, true, gemv_swiglu_kernel<WT, MT, 1>, dim3(dr_cdiv((size_t)d, 8)), dim3(256), 0, out,
                       (const WT *)gate, (const WT *)up, x, T, d, n, (const float *)NULL, 0.0f);
}

/* Whether a warp's `rows` weight rows of n elements take at most two of
 * gemv_rows_dot's batches of loads (8 16-byte vectors a lane, 32 lanes). */
template <typename WT> static bool two_batches(int rows, int n) {
    return (long)rows * (n / wvec<WT>::N) <= 2 * 8 * 32;
}

/* one token of the residual stream x, normalised with gain by the kernel:
 * two gate/up pairs a warp where every GEMV would take 4 rows, unless one
 * pair's two rows fit in two batches of loads (512 16-byte vectors). More
 * rows a warp add round trips, each after the block's norm (session 26,
 * H200: the 2B's FFN, rows of 2048, one pair a warp: decode +3.0-4.0% in
 * 4 of 4 rounds; the 9B's, rows of 4096, within noise, so it keeps two).
 * DR_CUDA_SWG_PICK=0: two pairs wherever 4 rows (a same-run baseline). */
template <typename WT>
static void swiglu_norm_launch(dr_cuda_ctx *cx, float *out, const void *gate, const void *up, const float *x,
                               const float *gain, float eps, int d, int n) {
    const size_t smem = (size_t)n * sizeof(float);
    static int pick = -1;
    if (rows_per_warp(cx, 2L * d, 1) >= 4 && !(dr_env_on("DR_CUDA_SWG_PICK", &pick) && two_batches<WT>(2, n)))
        dr_cuda_launch(cx, true, gemv_swiglu_kernel<WT, 1, 2, true>, dim3(dr_cdiv((size_t)d, 16)), dim3(256), smem,
                       out, (const WT *)gate, (const WT *)up, x, 1, d, n, gain, eps);
    else
        dr_cuda_launch(cx, true, gemv_swiglu_kernel<WT, 1, 1, true>, dim3(dr_cdiv((size_t)d, 8)), dim3(256), smem,
                       out, (const WT *)gate, (const WT *)up, x, 1, d, n, gain, eps);
}

template <typename WT, int MT>
static void add_norm_launch(dr_cuda_ctx *cx, float *x, float *xn, const void *W, const float *a, const float *gain,
                            int T, int d, int n, float eps) {
    const int R = rows_per_warp(cx, d, MT);
    static int rel = -1; /* DR_CUDA_AN_REL=0: the fence and plain atomic (a same-run baseline) */
    const int rl = dr_env_on("DR_CUDA_AN_REL", &rel);
#define AN_LAUNCH(R_, U_)                                                                                         \
    dr_cuda_launch(cx, true, gemv_add_norm_kernel<WT, MT, R_, U_>, dim3(dr_cdiv((size_t)d, 8 * R_)), dim3(256), 0, \
                   x, xn, (const WT *)W, a, gain, T, d, n, eps, cx->mm_cnt, rl)
    /* one token, one row per warp of 257-512 16-byte pieces: all of the row in flight before the PDL wait
       (82 registers, 2 blocks per SM, so only grids of one wave; session 6: the 0.8B's FFN down +2%,
       35B-A3B within noise), when the kernel before lets this one start early (the FFN down after the
       SwiGLU GEMV); after one that does not (out_proj after the fused GDN step) the 8-piece kernel
       measured faster (session 12: 35B-A3B +1%). DR_CUDA_AN16=0: 8 pieces, the rest after the wait
       (a same-run baseline). */
    static int u16 = -1;
    const int E = wvec<WT>::N;
    if (dr_env_on("DR_CUDA_AN16", &u16) && !cx->prev_waits && MT == 1 && R == 1 && n / E > 256 && n / E <= 512 &&
        (long)dr_cdiv((size_t)d, 8) <= 2L * cx->n_sm)
        AN_LAUNCH(1, 16);
    else if (R == 4)
        AN_LAUNCH(4, 2);
    else if (R == 2)
        AN_LAUNCH(2, 4);
    else
        AN_LAUNCH(1, 8);
#undef AN_LAUNCH
}

/* f<WT, MT>(args...) for the weight dtype and the token count */
#define FUSE_DISPATCH(f, dt, T, ...)                                                                              \
    do {                                                                                                           \
        if ((dt) == DR_DT_BF16)                                                                                    \
            FUSE_DISPATCH_T(f, __nv_bfloat16, T, __VA_ARGS__);                                                     \
        else if ((dt) == DR_DT_F16)                                                                                \
            FUSE_DISPATCH_T(f, __half, T, __VA_ARGS__);                                                            \
        else                                                                                                       \
            FUSE_DISPATCH_T(f, float, T, __VA_ARGS__);                                                             \
    } while (0)
#define FUSE_DISPATCH_T(f, WT, T, ...)                                                                            \
    do {                                                                                                           \
        if ((T) == 1)                                                                                              \
            f<WT, 1>(__VA_ARGS__);                                                                                 \
        else if ((T) == 2)                                                                                         \
            f<WT, 2>(__VA_ARGS__);                                                                                 \
        else if ((T) <= 4)                                                                                         \
            f<WT, 4>(__VA_ARGS__);                                                                                 \
        else                                                                                                       \
            f<WT, 8>(__VA_ARGS__);                                                                                 \
    } while (0)

bool dr_cuda_matmul_swiglu(void *ctx, float *out, const float *x, const dr_tensor *gate, const dr_tensor *up, int T,
                           const float *gain, float eps) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (gate->q.bits || up->q.bits) /* 4-bit gate / up on the dp4a GEMV (quant.cu), or declined */
        return (fuse_mode() & 1) && (!gain || norm_in_mode() == 1) && gate->q.bits && up->q.bits &&
               dr_cuda_quant_matmul_swiglu(cx, out, x, gate, up, T, gain, eps);
    if (!(fuse_mode() & 1) || !fusable(gate, x, T) || !fusable(up, x, T) || gate->dtype != up->dtype)
        return false;
    const int d = (int)gate->ne[gate->ndim - 2], n = (int)gate->ne[gate->ndim - 1];
    if (d <= 0 || (int)up->ne[up->ndim - 2] != d || (int)up->ne[up->ndim - 1] != n)
        return false;
    if (gain) { /* the pre-norm in the kernel: one token, x in shared memory */
        if (norm_in_mode() != 1 || T != 1 || n > GN_MAX_N)
            return false;
        if (gate->dtype == DR_DT_BF16)
            swiglu_norm_launch<__nv_bfloat16>(cx, out, gate->dev, up->dev, x, gain, eps, d, n);
        else if (gate->dtype == DR_DT_F16)
            swiglu_norm_launch<__half>(cx, out, gate->dev, up->dev, x, gain, eps, d, n);
        else
            swiglu_norm_launch<float>(cx, out, gate->dev, up->dev, x, gain, eps, d, n);
        return true;
    }
    FUSE_DISPATCH(swiglu_launch, gate->dtype, T, cx, out, gate->dev, up->dev, x, T, d, n);
    return true;
}

bool dr_cuda_matmul_add_rmsnorm(void *ctx, float *x, float *xn, const float *a, const dr_tensor *w, const float *gain,
                                int T, float eps) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int d = (int)w->ne[w->ndim - 2], n = (int)w->ne[w->ndim - 1];
    if (w->q.bits) /* the residual add alone, on the 4-bit GEMV (quant.cu) */
        return !gain && (fuse_mode() & 2) && dr_cuda_quant_matmul_add(cx, x, a, w, T);
    if (!(fuse_mode() & 2) || !fusable(w, a, T) || d <= 0 ||
        (long)dr_cdiv((size_t)d, 8) * T > FN_PARTS) /* the parts of the largest grid fit */
        return false;
    /* the arrival counter and parts, made outside any recording */
    if (gain && !cx->mm_cnt &&
        !(cx->mm_cnt = (unsigned *)dr_cuda_zeroed(cx, 64 * sizeof(unsigned) + FN_PARTS * sizeof(float))))
        return true; /* first use while recording (the step runs again without it), or failed */
    FUSE_DISPATCH(add_norm_launch, w->dtype, T, cx, x, xn, w->dev, a, gain, T, d, n, eps);
    return true;
}

/* ---- tiled fp32 SIMT GEMM: 64 tokens x 64 rows of W per block ---- */

#define TB 64
#define TK 16

template <typename WT>
__global__ void __launch_bounds__(256) gemm_tiled_kernel(float *__restrict__ y, const float *__restrict__ x,
                                                         const WT *__restrict__ W, int T, int d, int n) {
    DR_TL_SCOPE();
    __shared__ float xs[TK][TB + 4]; /* x tile, k-major */
    __shared__ float ws[TK][TB + 4]; /* widened W tile, k-major */
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int t0 = blockIdx.y * TB, r0 = blockIdx.x * TB;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < n; k0 += TK) {
#pragma unroll
        for (int l = 0; l < 4; l++) { /* 1024 elements of each tile, 4 per thread */
            int e = tid + 256 * l, rr = e / TK, kk = e % TK;
            int t = t0 + rr, r = r0 + rr, k = k0 + kk;
            xs[kk][rr] = (t < T && k < n) ? x[(size_t)t * n + k] : 0.0f;
            ws[kk][rr] = (r < d && k < n) ? to_f(W[(size_t)r * n + k]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                a[i] = xs[kk][ty * 4 + i];
                b[i] = ws[kk][tx * 4 + i];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int t = t0 + ty * 4 + i;
        if (t >= T)
            continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int r = r0 + tx * 4 + j;
            if (r < d)
                y[(size_t)t * d + r] = acc[i][j];
        }
    }
}

template <typename WT>
static void tiled_launch(dr_cuda_ctx *cx, float *y, const float *x, const WT *W, int T, int d, int n) {
    dim3 grid(dr_cdiv((size_t)d, TB), dr_cdiv((size_t)T, TB)), block(256);
    gemm_tiled_kernel<WT><<<grid, block, 0, cx->stream>>>(y, x, W, T, d, n);
    DR_CUDA_LAUNCHED(cx);
}

/* ---- cuBLAS ---- */

/* hi = bf16(x), lo = bf16(x - hi) */
__global__ void split_bf16_kernel(__nv_bfloat16 *hi, __nv_bfloat16 *lo, const float *x, size_t n) {
    DR_TL_SCOPE();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        __nv_bfloat16 h = __float2bfloat16_rn(v);
        hi[i] = h;
        lo[i] = __float2bfloat16_rn(v - __bfloat162float(h));
    }
}

static unsigned grid_1d(dr_cuda_ctx *cx, size_t n) {
    size_t b = (n + 255) / 256, cap = (size_t)cx->n_sm * 16;
    return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

static void blas_launch(dr_cuda_ctx *cx, float *y, const float *x, const void *W, dr_dtype dt, int T, int d, int n) {
    const float one = 1.0f, zero = 0.0f;
    /* row-major y[T,d] = x[T,n] W^T is column-major y^T[d,T] = W^T(cm)[d,n] x^T(cm)[n,T] */
    if (dt == DR_DT_F32) {
        DR_BLAS_NOTE(cx, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, d, T, n, &one, W, CUDA_R_32F, n, x,
                                      CUDA_R_32F, n, &zero, y, CUDA_R_32F, d, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
        return;
    }
    size_t nx = (size_t)T * n;
    __nv_bfloat16 *hi = (__nv_bfloat16 *)dr_cuda_scratch(cx, DR_SCR_SPLIT, 2 * nx * sizeof(__nv_bfloat16));
    if (!hi)
        return;
    __nv_bfloat16 *lo = hi + nx;
    split_bf16_kernel<<<grid_1d(cx, nx), 256, 0, cx->stream>>>(hi, lo, x, nx);
    DR_CUDA_LAUNCHED(cx);
    DR_BLAS_NOTE(cx, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, d, T, n, &one, W, CUDA_R_16BF, n, hi,
                                  CUDA_R_16BF, n, &zero, y, CUDA_R_32F, d, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    DR_BLAS_NOTE(cx, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, d, T, n, &one, W, CUDA_R_16BF, n, lo,
                                  CUDA_R_16BF, n, &one, y, CUDA_R_32F, d, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
}

void dr_cuda_split_bf16(dr_cuda_ctx *cx, __nv_bfloat16 *hi, __nv_bfloat16 *lo, const float *x, size_t n) {
    if (!n)
        return;
    split_bf16_kernel<<<grid_1d(cx, n), 256, 0, cx->stream>>>(hi, lo, x, n);
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_mm_presplit(dr_cuda_ctx *cx, float *y, const float *x, const __nv_bfloat16 *hi, const __nv_bfloat16 *lo,
                         const void *W, int T, int d, int n) {
    if (T <= 0 || d <= 0)
        return;
    if (T <= GEMV_MAX_T || dr_cuda_mm_force == 1 || dr_cuda_mm_force == 2) {
        dr_cuda_mm(cx, y, x, W, DR_DT_BF16, T, d, n);
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    DR_BLAS_NOTE(cx, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, d, T, n, &one, W, CUDA_R_16BF, n, hi,
                                  CUDA_R_16BF, n, &zero, y, CUDA_R_32F, d, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    DR_BLAS_NOTE(cx, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, d, T, n, &one, W, CUDA_R_16BF, n, lo,
                                  CUDA_R_16BF, n, &one, y, CUDA_R_32F, d, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
}

void dr_cuda_mm(dr_cuda_ctx *cx, float *y, const float *x, const void *W, dr_dtype dt, int T, int d, int n) {
    if (T <= 0 || d <= 0)
        return;
    int eng = dr_cuda_mm_force;
    if (eng == 1 && T > GEMV_MAX_T)
        eng = 0;
    if (eng == 3 && dt == DR_DT_F16)
        eng = 2; /* no split path for f16 (its range is too small for activations) */
    if (eng == 0)
        eng = T <= GEMV_MAX_T ? 1 : dt == DR_DT_F16 ? 2 : 3;
    if (eng == 1) {
        if (dt == DR_DT_BF16)
            gemv_launch(cx, y, x, (const __nv_bfloat16 *)W, T, d, n);
        else if (dt == DR_DT_F16)
            gemv_launch(cx, y, x, (const __half *)W, T, d, n);
        else
            gemv_launch(cx, y, x, (const float *)W, T, d, n);
    } else if (eng == 2) {
        if (dt == DR_DT_BF16)
            tiled_launch(cx, y, x, (const __nv_bfloat16 *)W, T, d, n);
        else if (dt == DR_DT_F16)
            tiled_launch(cx, y, x, (const __half *)W, T, d, n);
        else
            tiled_launch(cx, y, x, (const float *)W, T, d, n);
    } else {
        blas_launch(cx, y, x, W, dt, T, d, n);
    }
}

void dr_cuda_matmul(void *ctx, float *y, const float *x, const dr_tensor *w, int T) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int d = (int)w->ne[w->ndim - 2], n = (int)w->ne[w->ndim - 1];
    if (!w->dev) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_ARG, "CUDA matmul: tensor %s was not uploaded",
                   w->name ? w->name : "?");
        cx->failed = 1;
        return;
    }
    if (w->q.bits) {
        dr_cuda_qmm(cx, y, x, w, T); /* quant.cu */
        return;
    }
    dr_cuda_mm(cx, y, x, w->dev, w->dtype, T, d, n);
}

/* gemv_rows_norm_kernel over a set, rows per warp as gemv_rows_pick, or
 * twice that where it makes the grid one wave and a warp's rows still take
 * at most two batches of loads (512 16-byte vectors). The kernel runs 3
 * blocks an SM (its launch bounds) and each block normalises x before its
 * first weight load, so a second, partial wave costs a whole block's
 * lifetime; each further batch costs a round trip. On the H200 (docs/CUDA.md,
 * session 26): the 0.8B's GDN input projections, 514 blocks of 2 rows a
 * warp, as 257 of 4: decode +0.2-3.3% in 12 of 12 rounds; the 2B's, where 4
 * rows a warp take 4 batches: -0.4% on average, so they stay at 2. */
template <typename WT> static void norm_set_launch(dr_cuda_ctx *cx, const gemv_set &set, const float *x,
                                                   const float *gain, int n, float eps) {
    static int wave = -1; /* DR_CUDA_NORM_WAVE=0: rows per warp as every GEMV's (a same-run baseline) */
    const int rows = set.row0[set.nm], slots = GN_BLOCKS_PER_SM * (cx->n_sm > 0 ? cx->n_sm : 132);
    int R = rows_per_warp(cx, rows, 1);
    if (dr_env_on("DR_CUDA_NORM_WAVE", &wave) && R < 4 && dr_cdiv((size_t)rows, (size_t)(8 * R)) > (size_t)slots &&
        dr_cdiv((size_t)rows, (size_t)(16 * R)) <= (size_t)slots && two_batches<WT>(2 * R, n))
        R *= 2;
    const dim3 grid(dr_cdiv((size_t)rows, (size_t)(8 * R))), block(256);
    const size_t smem = (size_t)n * sizeof(float);
    if (R == 4)
        dr_cuda_launch(cx, true, gemv_rows_norm_kernel<WT, 4, 2>, grid, block, smem, set, x, gain, n, eps);
    else if (R == 2)
        dr_cuda_launch(cx, true, gemv_rows_norm_kernel<WT, 2, 4>, grid, block, smem, set, x, gain, n, eps);
    else
        dr_cuda_launch(cx, true, gemv_rows_norm_kernel<WT, 1, 8>, grid, block, smem, set, x, gain, n, eps);
}

/* The decode GEMV's conditions (fusable: T = 1 here) for every matrix, one
 * dtype and width, x at most GN_MAX_N wide. */
bool dr_cuda_rmsnorm_matmul_n(void *ctx, int n_w, float *const *ys, const float *x, const float *gain, float eps,
                              const dr_tensor *const *ws, int T) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!norm_in_mode() || T != 1 || n_w < 1 || n_w > GEMV_SETS)
        return false;
    if (ws[0]->q.bits) /* quant.cu: every w 4-bit, or declined */
        return dr_cuda_quant_rmsnorm_matmul_n(cx, n_w, ys, x, gain, eps, ws, T);
    const dr_dtype dt = ws[0]->dtype;
    const long n = ws[0]->ne[ws[0]->ndim - 1];
    if (n > GN_MAX_N)
        return false;
    gemv_set set = {};
    for (int i = 0; i < n_w; i++) {
        const dr_tensor *w = ws[i];
        if (!fusable(w, x, T) || w->dtype != dt || w->ne[w->ndim - 1] != n)
            return false;
        set.W[i] = w->dev;
        set.y[i] = ys[i];
        set.row0[i + 1] = set.row0[i] + (int)w->ne[w->ndim - 2];
    }
    set.nm = n_w;
    if (dt == DR_DT_BF16)
        norm_set_launch<__nv_bfloat16>(cx, set, x, gain, (int)n, eps);
    else if (dt == DR_DT_F16)
        norm_set_launch<__half>(cx, set, x, gain, (int)n, eps);
    else
        norm_set_launch<float>(cx, set, x, gain, (int)n, eps);
    return true;
}

/* Several weights of the same width and dtype over one x: one GEMV launch
 * for T <= GEMV_MAX_T (decode), else one matmul each. */
void dr_cuda_matmul_n(void *ctx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws, int T) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (dr_cuda_quant_matmul_n(cx, n_w, ys, x, ws, T)) /* any of them quantized: quant.cu */
        return;
    bool one = n_w >= 1 && n_w <= GEMV_SETS && T <= GEMV_MAX_T && (dr_cuda_mm_force == 0 || dr_cuda_mm_force == 1);
    const int n = one ? (int)ws[0]->ne[ws[0]->ndim - 1] : 0;
    gemv_set set = {};
    for (int i = 0; one && i < n_w; i++) {
        const dr_tensor *w = ws[i];
        one = w->dev && w->dtype == ws[0]->dtype && (int)w->ne[w->ndim - 1] == n;
        if (one) {
            set.W[i] = w->dev;
            set.y[i] = ys[i];
            set.row0[i + 1] = set.row0[i] + (int)w->ne[w->ndim - 2];
        }
    }
    if (!one) {
        /* prefill, BF16 weights of one width: x split into hi/lo once for all */
        bool split = n_w > 1 && T > GEMV_MAX_T && dr_cuda_mm_force == 0;
        const int nw = split ? (int)ws[0]->ne[ws[0]->ndim - 1] : 0;
        for (int i = 0; split && i < n_w; i++)
            split = ws[i]->dev && ws[i]->dtype == DR_DT_BF16 && (int)ws[i]->ne[ws[i]->ndim - 1] == nw;
        if (split) {
            const size_t nx = (size_t)T * nw;
            __nv_bfloat16 *hi = (__nv_bfloat16 *)dr_cuda_scratch(cx, DR_SCR_SPLIT, 2 * nx * sizeof(__nv_bfloat16));
            if (!hi)
                return;
            dr_cuda_split_bf16(cx, hi, hi + nx, x, nx);
            for (int i = 0; i < n_w; i++)
                dr_cuda_mm_presplit(cx, ys[i], x, hi, hi + nx, ws[i]->dev, T, (int)ws[i]->ne[ws[i]->ndim - 2], nw);
            return;
        }
        for (int i = 0; i < n_w; i++)
            dr_cuda_matmul(ctx, ys[i], x, ws[i], T);
        return;
    }
    set.nm = n_w;
    if (T <= 0 || set.row0[n_w] <= 0)
        return;
    if (ws[0]->dtype == DR_DT_BF16)
        gemv_set_launch<__nv_bfloat16>(cx, set, x, T, n);
    else if (ws[0]->dtype == DR_DT_F16)
        gemv_set_launch<__half>(cx, set, x, T, n);
    else
        gemv_set_launch<float>(cx, set, x, T, n);
}

/* ---- embedding ---- */

__global__ void embed_kernel(float *x, const void *E, dr_dtype dt, const int32_t *ids, int H) {
    DR_TL_SCOPE();
    const int t = blockIdx.y;
    const size_t row = (size_t)ids[t];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x)
        x[(size_t)t * H + i] = dr_dev_load(E, dt, row * H + i);
}

void dr_cuda_embed(void *ctx, float *x, const dr_tensor *emb, const int32_t *ids, int T) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int H = (int)emb->ne[1];
    if (T <= 0)
        return;
    if (!emb->dev) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_ARG, "CUDA embed: tensor %s was not uploaded",
                   emb->name ? emb->name : "?");
        cx->failed = 1;
        return;
    }
    const int32_t *dids = cx->step_dev; /* an open single-token step: its token id is there */
    if (!cx->step_on || T != 1) {
        int32_t *d = (int32_t *)dr_cuda_scratch(cx, DR_SCR_IDX, (size_t)T * sizeof(int32_t));
        if (!d)
            return;
        /* ids are pageable host memory: the copy is staged before this returns */
        DR_CUDA_NOTE(cx, cudaMemcpyAsync(d, ids, (size_t)T * sizeof(int32_t), cudaMemcpyHostToDevice, cx->stream));
        dids = d;
    }
    dim3 grid(dr_cdiv((size_t)H, 256), (unsigned)T);
    if (emb->q.bits) {
        dr_cuda_qembed(cx, x, emb, dids, T); /* quant.cu */
        return;
    }
    embed_kernel<<<grid, 256, 0, cx->stream>>>(x, emb->dev, emb->dtype, dids, H);
    DR_CUDA_LAUNCHED(cx);
}
