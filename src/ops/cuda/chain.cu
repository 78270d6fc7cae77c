/* ops/cuda/chain.cu - consecutive decode GEMVs run as one persistent kernel.
 *
 * Why: a single-token step is a chain of GEMVs that each wait for the one
 * before (out_proj + residual + norm, gate/up, down + residual + norm, the
 * next layer's input projections). As separate kernels each pays a ramp and
 * a tail of a few microseconds in which HBM idles (docs/CUDA.md: a
 * [4096, 4096] GEMV streams at ~60% of the copy bandwidth, a kernel boundary
 * costs 2-4 us in a graph). Here one block per SM walks the ops in order:
 * before waiting for the previous op, every warp already issues the loads of
 * its first weight rows of the next op (weights never depend on the chain),
 * so the memory pipe stays busy across the boundary.
 *
 * How the backend uses it: while a decode step is being recorded into a
 * graph (or always, for tests: dr_cuda_set_chain(2)), the slots matmul,
 * matmul_n, matmul_swiglu and matmul_add_rmsnorm append to a pending chain
 * instead of launching, when the op qualifies (one token, BF16 weights,
 * 16-byte aligned, input width <= CH_N_MAX). Every other slot of the
 * backend first flushes the chain (backend.cu wraps them), so the ops still
 * run in program order. A chain of one op runs through the ordinary kernel.
 *
 * Numerics: each row's dot product is the GEMV kernels' lane-strided walk
 * and warp reduction (matmul.cu), over the same fp32 input read from shared
 * memory, so outputs match the unchained kernels bit for bit. The residual
 * norm is the exception: the residual add writes x and a partial sum of
 * squares per block; each block of the op that reads the normalized vector
 * sums the partials in block order and normalizes x itself while staging it
 * (and writes its slice of xn for readers after the chain). Same formula as
 * the rmsnorm kernel, a different (fixed) summation order: fp32 rounding.
 *
 * Synchronization: op k waits until all blocks have counted op k-1 done
 * (a device counter per op, release/acquire); results of earlier ops are
 * read with L2 (.cg) loads. The grid is one block per SM, all resident
 * (checked with the occupancy API), so the waits cannot deadlock. The last
 * block to leave puts the counters back to zero for the next launch or
 * graph replay.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#include <stdlib.h>
#include <string.h>

#define CH_WARPS 16
#define CH_TPB (32 * CH_WARPS)
/* U: 16-byte loads in flight per lane and row (two rows per warp): 8 by
 * default, DR_CUDA_CHAIN_U=4 for a same-run comparison */

enum { CH_MM, CH_SWIGLU, CH_ADD, CH_NORM };

/* One op. MM: y_m = W_m x for the matrices of a set (rows row0[m] ..
 * row0[m+1] - 1 of the op); SWIGLU: y_0 = silu(W_0 x) * (W_1 x), unit i =
 * rows i of both; ADD: xres += W_0 x (and a partial sum of squares per
 * block); NORM: only writes xn (the normalized residual) for later readers.
 * The input is `in`, or (norm_src >= 0) RMSNorm of the residual of op
 * norm_src: x_res * inv * gain, inv from that op's partials. */
struct ch_op {
    const uint4 *W[CH_MATS];
    float *y[CH_MATS];
    int row0[CH_MATS + 1];
    int nm, kind, n, units;
    const float *in;
    int norm_src, d;
    const float *norm_x, *gain;
    float *norm_out;
    float eps;
    float *xres;
};

struct ch_prog {
    ch_op op[CH_OPS];
    int nops;
    unsigned *cnt; /* [CH_OPS] done counters, [CH_OPS] the exit counter */
    float *parts;  /* [CH_OPS][gridDim.x] partial sums of squares */
};

static __device__ __forceinline__ unsigned ch_ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* the rows of unit u: r[0], r[1] (r[1] < 0: none) and where they are */
static __device__ __forceinline__ void ch_rows(const ch_op &op, int u, int nv, const uint4 *(&wp)[2], int (&m)[2],
                                               int (&row)[2]) {
    if (op.kind == CH_SWIGLU) {
        wp[0] = op.W[0] + (size_t)u * nv, wp[1] = op.W[1] + (size_t)u * nv;
        m[0] = m[1] = 0, row[0] = row[1] = u;
        return;
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int g = u + r; /* MM / ADD: a unit is a pair of consecutive rows */
        int mi = 0;
#pragma unroll
        for (int j = 1; j < CH_MATS; j++)
            if (j < op.nm && g >= op.row0[j])
                mi = j;
        const bool ok = g < op.row0[op.nm];
        m[r] = mi;
        row[r] = ok ? g - op.row0[mi] : -1;
        wp[r] = op.W[mi] + (size_t)(ok ? row[r] : 0) * nv;
    }
}

template <int U>
static __device__ __forceinline__ void ch_load(uint4 (&u)[U][2], const uint4 *const (&wp)[2], const int (&row)[2],
                                               int b, int nv) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < U; j++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int v = b * 32 * U + 32 * j + lane;
            u[j][r] = row[r] >= 0 && v < nv ? dr_ld_w(wp[r] + v) : make_uint4(0, 0, 0, 0);
        }
}

/* the staged input: plain, or the normalized residual (and this block's
 * slice of it written to norm_out) */
static __device__ void ch_stage(const ch_prog &P, const ch_op &op, float *xs, float *red) {
    const int G = gridDim.x;
    if (op.norm_src < 0) {
        const float4 *in = (const float4 *)op.in;
        for (int i = threadIdx.x; i < op.n / 4; i += CH_TPB)
            ((float4 *)xs)[i] = __ldcg(in + i);
        return;
    }
    if (threadIdx.x < 32) { /* the partials of the residual op, in block order per lane, then the warp tree */
        float s = 0.0f;
        for (int b = threadIdx.x; b < G; b += 32)
            s += __ldcg(P.parts + (size_t)op.norm_src * G + b);
        s = dr_warp_sum(s);
        if (threadIdx.x == 0)
            red[0] = 1.0f / sqrtf(s / (float)op.d + op.eps);
    }
    __syncthreads();
    const float inv = red[0];
    const int lo = (int)((long)op.d * blockIdx.x / G), hi = (int)((long)op.d * (blockIdx.x + 1) / G);
    if (op.kind == CH_NORM) { /* only this block's slice */
        for (int i = lo + threadIdx.x; i < hi; i += CH_TPB)
            op.norm_out[i] = __ldcg(op.norm_x + i) * inv * op.gain[i];
        return;
    }
    for (int i = threadIdx.x; i < op.d; i += CH_TPB) {
        const float v = __ldcg(op.norm_x + i) * inv * op.gain[i];
        xs[i] = v;
        if (i >= lo && i < hi)
            op.norm_out[i] = v;
    }
}

template <int U>
static __device__ __forceinline__ void ch_dot_step(float (&acc)[2], const uint4 (&u)[U][2], const float *xs,
                                                   int b, int nv) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < U; j++) {
        const int v = b * 32 * U + 32 * j + lane;
        if (v < nv) {
            const float4 *xv = (const float4 *)(xs + (size_t)v * 8);
            const float4 xx[2] = {xv[0], xv[1]};
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const unsigned w4[4] = {u[j][r].x, u[j][r].y, u[j][r].z, u[j][r].w};
                float wf[8];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    wf[2 * i] = __uint_as_float(w4[i] << 16);
                    wf[2 * i + 1] = __uint_as_float(w4[i] & 0xffff0000u);
                }
                float s_ = acc[r];
#pragma unroll
                for (int q = 0; q < 2; q++)
                    s_ += wf[4 * q] * xx[q].x + wf[4 * q + 1] * xx[q].y + wf[4 * q + 2] * xx[q].z +
                          wf[4 * q + 3] * xx[q].w;
                acc[r] = s_;
            }
        }
    }
}

/* the results of one unit (lane 0 holds the warp sums) */
static __device__ __forceinline__ void ch_store(const ch_op &op, const float (&acc)[2], const int (&m)[2],
                                                const int (&row)[2], float &sq) {
    if (op.kind == CH_SWIGLU) {
        op.y[0][row[0]] = dr_dev_silu(acc[0]) * acc[1];
        return;
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (row[r] < 0)
            continue;
        if (op.kind == CH_ADD) {
            float *p = op.xres + row[r];
            const float v = __ldcg(p) + acc[r];
            *p = v;
            sq += v * v;
        } else {
            op.y[m[r]][row[r]] = acc[r];
        }
    }
}

template <int U>
__global__ void __launch_bounds__(CH_TPB, 1) chain_kernel(const __grid_constant__ ch_prog P) {
    extern __shared__ float4 ch_sm[];
    float *xs = (float *)ch_sm;
    __shared__ float red[CH_WARPS];
    __shared__ int last;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, G = gridDim.x;
    const long gw = (long)blockIdx.x * CH_WARPS + w, GW = (long)G * CH_WARPS;
    for (int k = 0; k < P.nops; k++) {
        const ch_op &op = P.op[k];
        const int nv = op.n / 8, nb = (nv + 32 * U - 1) / (32 * U);
        const int step = op.kind == CH_SWIGLU ? 1 : 2; /* rows per unit */
        const int units = op.kind == CH_NORM ? 0 : (op.units + step - 1) / step;
        const int u0 = (int)(units * gw / GW), u1 = (int)(units * (gw + 1) / GW);
        const int nsteps = (u1 - u0) * nb;
        const uint4 *wp[2];
        int m[2], row[2];
        uint4 u[U][2];
        if (nsteps > 0) { /* the first weights stream while the previous op finishes */
            ch_rows(op, u0 * step, nv, wp, m, row);
            ch_load<U>(u, wp, row, 0, nv);
        }
        if (k == 0) {
            dr_pdl_wait();
        } else if (threadIdx.x == 0) {
            while (ch_ld_acquire(P.cnt + k - 1) < (unsigned)G)
                __nanosleep(20);
        }
        __syncthreads();
        ch_stage(P, op, xs, red);
        __syncthreads();
        float acc[2] = {0.0f, 0.0f}, sq = 0.0f;
        for (int s = 0; s < nsteps; s++) {
            const int b = s % nb;
            ch_dot_step<U>(acc, u, xs, b, nv);
            const int wpu = (u0 + s / nb) * step; /* this unit's first row */
            int mc[2] = {m[0], m[1]}, rc[2] = {row[0], row[1]};
            if (s + 1 < nsteps) { /* the next step's loads before this unit's reduction */
                if (b + 1 == nb)
                    ch_rows(op, wpu + step, nv, wp, m, row);
                ch_load<U>(u, wp, row, (s + 1) % nb, nv);
            }
            if (b + 1 == nb) {
                acc[0] = dr_warp_sum(acc[0]);
                acc[1] = dr_warp_sum(acc[1]);
                if (lane == 0)
                    ch_store(op, acc, mc, rc, sq);
                acc[0] = acc[1] = 0.0f;
            }
        }
        if (op.kind == CH_ADD) { /* this block's sum of squares, warp by warp */
            if (lane == 0)
                red[w] = sq;
            __syncthreads();
            if (threadIdx.x == 0) {
                float t = 0.0f;
                for (int j = 0; j < CH_WARPS; j++)
                    t += red[j];
                P.parts[(size_t)k * G + blockIdx.x] = t;
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence(); /* this block's outputs before its count */
            atomicAdd(P.cnt + k, 1u);
        }
    }
    if (threadIdx.x == 0) /* every block is past its waits: the last one resets the counters */
        last = atomicAdd(P.cnt + CH_OPS, 1u) == (unsigned)G - 1;
    __syncthreads();
    if (last && threadIdx.x <= CH_OPS)
        P.cnt[threadIdx.x] = 0;
}

/* ---- host: the pending chain ---- */

struct dr_cuda_chain {
    ch_prog prog;
    int n_max;
    int norm_op;      /* the ADD op whose normalized residual is pending, or -1 */
    bool norm_read;   /* some op read it (and wrote its slices of xn) */
    /* a chain of one plain GEMV runs through the ordinary kernel (lm_head: 99% of the copy bandwidth) */
    float *solo_ys[CH_MATS];
    const dr_tensor *solo_ws[CH_MATS];
    const float *solo_x;
};

static int g_chain_mode = -1; /* 0 off, 1 while recording a step (default), 2 always (tests) */
static long g_launches, g_ops;  /* chain kernels launched (recorded), ops they held */

extern "C" void dr_cuda_chain_counts(long *launches, long *ops) {
    *launches = g_launches;
    *ops = g_ops;
}

extern "C" void dr_cuda_set_chain(int mode) { g_chain_mode = mode; }

static int chain_mode(void) {
    if (g_chain_mode < 0) {
        const char *e = getenv("DR_CUDA_CHAIN");
        g_chain_mode = e && e[0] == '0' ? 0 : e && e[0] == '2' ? 2 : 1;
    }
    return g_chain_mode;
}

/* device counters and partials, and the check that one block per SM fits */
static bool chain_ready(dr_cuda_ctx *cx) {
    if (cx->ch_state)
        return cx->ch_state > 0;
    cx->ch_state = -1;
    int per_sm = 0, per_sm4 = 0;
    if (cudaFuncSetAttribute(chain_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, CH_N_MAX * 4) !=
            cudaSuccess ||
        cudaFuncSetAttribute(chain_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, CH_N_MAX * 4) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, chain_kernel<8>, CH_TPB, CH_N_MAX * 4) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm4, chain_kernel<4>, CH_TPB, CH_N_MAX * 4) !=
            cudaSuccess ||
        per_sm < 1 || per_sm4 < 1 || cx->n_sm < 1) { /* one block per SM must fit: the waits need them all */
        cudaGetLastError();
        return false;
    }
    void *p = NULL;
    const size_t bytes = 64 * sizeof(unsigned) + (size_t)CH_OPS * cx->n_sm * sizeof(float);
    if (cudaMalloc(&p, bytes) != cudaSuccess || cudaMemset(p, 0, bytes) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(p);
        return false;
    }
    cx->ch_mem = p;
    cx->chain = (dr_cuda_chain *)calloc(1, sizeof(dr_cuda_chain));
    if (!cx->chain)
        return false;
    cx->chain->norm_op = -1;
    cx->ch_state = 1;
    return true;
}

static bool chain_on(dr_cuda_ctx *cx) {
    const int md = chain_mode();
    if (md == 0 || cx->failed || (md == 1 && !cx->capturing))
        return false;
    return !cx->capturing || cx->ch_state ? chain_ready(cx) : false; /* never allocate while recording */
}

void dr_cuda_chain_prepare(dr_cuda_ctx *cx) {
    if (chain_mode() && !cx->capturing && !cx->ch_state)
        chain_ready(cx);
}

/* a weight the chain kernel reads: uploaded BF16, [d, n] with n the input width */
static bool ch_weight(const dr_tensor *w, int n) {
    return w->dev && !w->q.bits && w->dtype == DR_DT_BF16 && w->ndim == 2 && w->ne[1] == n && w->ne[0] > 0 &&
           (uintptr_t)w->dev % 16 == 0;
}

static bool ch_input(const float *x, int n) { return n > 0 && n % 8 == 0 && n <= CH_N_MAX && (uintptr_t)x % 16 == 0; }

static void chain_launch(dr_cuda_ctx *cx);

/* a new op at the end of the chain (flushed first when full: one slot stays
 * free for the NORM op a flush may add) */
static ch_op *chain_add(dr_cuda_ctx *cx, int kind, const float *x, int n) {
    dr_cuda_chain *c = cx->chain;
    if (c->prog.nops >= CH_OPS - 1 ||
        (c->norm_op >= 0 && x == c->prog.op[c->norm_op].norm_out && n != c->prog.op[c->norm_op].d))
        chain_launch(cx); /* full, or an odd reader of the pending norm: xn is written first */
    ch_op *op = &c->prog.op[c->prog.nops];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->n = n;
    op->in = x;
    op->norm_src = -1;
    if (c->norm_op >= 0 && x == c->prog.op[c->norm_op].norm_out) { /* reads the pending normalized residual */
        const ch_op &a = c->prog.op[c->norm_op];
        op->norm_src = c->norm_op;
        op->d = a.d, op->norm_x = a.norm_x, op->gain = a.gain, op->norm_out = a.norm_out, op->eps = a.eps;
        c->norm_read = true;
    }
    c->n_max = n > c->n_max ? n : c->n_max;
    c->prog.nops++;
    return op;
}

/* the pending normalized residual is written for readers after the chain */
static void chain_close_norm(dr_cuda_ctx *cx) {
    dr_cuda_chain *c = cx->chain;
    if (c->norm_op < 0 || c->norm_read) {
        c->norm_op = -1;
        return;
    }
    const ch_op a = c->prog.op[c->norm_op];
    ch_op *op = &c->prog.op[c->prog.nops++];
    memset(op, 0, sizeof *op);
    op->kind = CH_NORM;
    op->n = a.d;
    op->norm_src = c->norm_op;
    op->d = a.d, op->norm_x = a.norm_x, op->gain = a.gain, op->norm_out = a.norm_out, op->eps = a.eps;
    c->norm_op = -1;
}

static void chain_launch(dr_cuda_ctx *cx) {
    dr_cuda_chain *c = cx->chain;
    if (!c || !c->prog.nops)
        return;
    if (c->prog.nops == 1 && c->prog.op[0].kind == CH_MM) { /* alone: the ordinary GEMV */
        c->prog.nops = 0;
        c->n_max = 0;
        dr_cuda_matmul_n(cx, c->prog.op[0].nm, c->solo_ys, c->solo_x, c->solo_ws, 1);
        return;
    }
    chain_close_norm(cx);
    c->prog.cnt = (unsigned *)cx->ch_mem;
    c->prog.parts = (float *)((char *)cx->ch_mem + 64 * sizeof(unsigned));
    static int U = 0;
    if (!U) {
        const char *e = getenv("DR_CUDA_CHAIN_U");
        U = e && e[0] == '4' ? 4 : 8;
    }
    void (*k)(const ch_prog) = U == 4 ? chain_kernel<4> : chain_kernel<8>;
    dr_cuda_launch(cx, true, k, dim3(cx->n_sm), dim3(CH_TPB), (size_t)c->n_max * 4, c->prog);
    g_launches++;
    g_ops += c->prog.nops;
    c->prog.nops = 0;
    c->n_max = 0;
    c->norm_op = -1;
}

void dr_cuda_chain_flush(dr_cuda_ctx *cx) {
    if (cx->chain && cx->chain->prog.nops)
        chain_launch(cx);
}

/* ---- the chained slots (the table's matmul, matmul_n, matmul_swiglu, matmul_add_rmsnorm) ---- */

static void solo_mm(dr_cuda_chain *c, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws) {
    c->solo_x = x;
    for (int i = 0; i < n_w; i++)
        c->solo_ys[i] = ys[i], c->solo_ws[i] = ws[i];
}

/* T = 1, up to CH_MATS BF16 matrices of one width over an aligned input */
static bool ch_mm_ok(dr_cuda_ctx *cx, int n_w, const float *x, const dr_tensor *const *ws, int T) {
    if (T != 1 || n_w < 1 || n_w > CH_MATS || ws[0]->ndim != 2)
        return false;
    const int n = (int)ws[0]->ne[1];
    bool ok = ch_input(x, n);
    for (int i = 0; ok && i < n_w; i++)
        ok = ch_weight(ws[i], n);
    return ok && chain_on(cx);
}

static void ch_append_mm(dr_cuda_ctx *cx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws) {
    ch_op *op = chain_add(cx, CH_MM, x, (int)ws[0]->ne[1]);
    op->nm = n_w;
    for (int i = 0; i < n_w; i++) {
        op->W[i] = (const uint4 *)ws[i]->dev;
        op->y[i] = ys[i];
        op->row0[i + 1] = op->row0[i] + (int)ws[i]->ne[0];
    }
    op->units = op->row0[n_w];
    if (cx->chain->prog.nops == 1)
        solo_mm(cx->chain, n_w, ys, x, ws);
}

extern "C" void dr_cuda_chain_matmul_n(void *ctx, int n_w, float *const *ys, const float *x,
                                       const dr_tensor *const *ws, int T) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!ch_mm_ok(cx, n_w, x, ws, T)) {
        dr_cuda_chain_flush(cx);
        dr_cuda_matmul_n(ctx, n_w, ys, x, ws, T);
        return;
    }
    ch_append_mm(cx, n_w, ys, x, ws);
}

extern "C" void dr_cuda_chain_matmul(void *ctx, float *y, const float *x, const dr_tensor *w, int T) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    float *const ys[1] = {y};
    const dr_tensor *const ws[1] = {w};
    if (!ch_mm_ok(cx, 1, x, ws, T)) {
        dr_cuda_chain_flush(cx);
        dr_cuda_matmul(ctx, y, x, w, T);
        return;
    }
    ch_append_mm(cx, 1, ys, x, ws);
}

extern "C" bool dr_cuda_chain_matmul_swiglu(void *ctx, float *out, const float *x, const dr_tensor *gate,
                                            const dr_tensor *up, int T) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int n = (int)gate->ne[gate->ndim - 1];
    if (!(T == 1 && ch_input(x, n) && ch_weight(gate, n) && ch_weight(up, n) && gate->ne[0] == up->ne[0] &&
          chain_on(cx))) {
        dr_cuda_chain_flush(cx);
        return dr_cuda_matmul_swiglu(ctx, out, x, gate, up, T);
    }
    ch_op *op = chain_add(cx, CH_SWIGLU, x, n);
    op->nm = 1;
    op->W[0] = (const uint4 *)gate->dev, op->W[1] = (const uint4 *)up->dev;
    op->y[0] = out;
    op->units = (int)gate->ne[0];
    op->row0[1] = op->units;
    return true;
}

extern "C" bool dr_cuda_chain_matmul_add_rmsnorm(void *ctx, float *x, float *xn, const float *a, const dr_tensor *w,
                                                 const float *gain, int T, float eps) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const int n = (int)w->ne[w->ndim - 1], d = (int)w->ne[w->ndim - 2];
    if (!(T == 1 && ch_input(a, n) && ch_weight(w, n) && d > 0 && chain_on(cx))) {
        dr_cuda_chain_flush(cx);
        return dr_cuda_matmul_add_rmsnorm(ctx, x, xn, a, w, gain, T, eps);
    }
    dr_cuda_chain *c = cx->chain;
    if (c->norm_op >= 0 && !c->norm_read) /* an unread earlier norm: written before this add changes x */
        chain_close_norm(cx);
    ch_op *op = chain_add(cx, CH_ADD, a, n);
    op->nm = 1;
    op->W[0] = (const uint4 *)w->dev;
    op->units = d;
    op->row0[1] = d;
    op->xres = x;
    op->d = d, op->norm_x = x, op->gain = gain, op->norm_out = xn, op->eps = eps;
    c->norm_op = gain ? c->prog.nops - 1 : -1;
    c->norm_read = false;
    return true;
}

void dr_cuda_chain_free(dr_cuda_ctx *cx) {
    free(cx->chain);
    cx->chain = NULL;
    cudaFree(cx->ch_mem);
    cx->ch_mem = NULL;
    cx->ch_state = 0;
}
