/* ops/cuda/moe.cu - MoE on the GPU (semantics: ops/cpu/moe.c, MODEL.md 6.2):
 * router softmax + top-k, and the routed SwiGLU experts.
 *
 * Decode (T <= MOE_GEMV_T): no host round trip. A device table of expert
 * weight pointers lets one launch compute gate/up for every (token, pick)
 * row reading the expert indices on the device, a second the down
 * projection, a third the weighted sum in pick order (as the CPU). For BF16
 * experts (round 3, docs/CUDA.md) two PDL-launched kernels do it:
 * gate/up + SiLU * up, then down + the weighted sum; in the fused
 * moe_decode slot after one GEMV for the router (sessions 5 and 6), the
 * gate/up kernel also routes and projects the shared expert, and the down
 * kernel also adds the shared expert's down. 8/4-bit experts take the same
 * shape of block in quant.cu (dr_cuda_quant_moe_block, session 29).
 * Prefill: the picks are read back once per MoE layer, grouped by expert on
 * the host (counting sort), the token rows gathered, and each used expert
 * runs dense GEMMs (cuBLAS, split bf16 for BF16 weights) over its rows.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "moe_route.cuh"
#include "prefill.cuh"
#include "quant.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>


/* ---- router: one warp per token ---- */

__global__ void route_kernel(int32_t *idx, float *wts, const float *logits, int T, int E, int k, int renorm) {
    DR_TL_SCOPE();
    dr_pdl_trigger(); /* round 3: the expert kernels may be scheduled */
    dr_pdl_wait();    /* launched early (PDL): the logits come from the GEMV before */
    const int lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= T)
        return;
    const float *l = logits + (size_t)t * E;
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32)
        mx = fmaxf(mx, l[e]);
    mx = dr_warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32)
        sum += expf(l[e] - mx);
    sum = dr_warp_sum(sum);
    int sel[ROUTE_MAX_K];
    float wt[ROUTE_MAX_K], picked = 0.0f;
    for (int j = 0; j < k; j++) {
        /* best unused expert of this lane; ties keep the lower id */
        int best = -1;
        float bv = -INFINITY;
        for (int e = lane; e < E; e += 32) {
            bool used = false;
            for (int u = 0; u < j; u++)
                used |= sel[u] == e;
            if (!used && (best < 0 || l[e] > bv)) {
                best = e;
                bv = l[e];
            }
        }
        route_best_shfl(best, bv);
        sel[j] = best;
        wt[j] = expf(l[best] - mx) / sum;
        picked += wt[j];
    }
    if (lane == 0)
        for (int j = 0; j < k; j++) {
            idx[(size_t)t * k + j] = sel[j];
            wts[(size_t)t * k + j] = renorm ? wt[j] / picked : wt[j];
        }
}

template <int PER>
__global__ void route_reg_kernel(int32_t *idx, float *wts, const float *logits, int T, int E, int k, int renorm) {
    DR_TL_SCOPE();
    dr_pdl_trigger(); /* round 3: the expert kernels may be scheduled */
    dr_pdl_wait();    /* launched early (PDL): the logits come from the GEMV before */
    const int lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= T)
        return;
    int sel;
    float wt;
    route_warp<PER>(logits + (size_t)t * E, E, k, renorm, lane, &sel, &wt);
    if (lane < k) {
        idx[(size_t)t * k + lane] = sel;
        wts[(size_t)t * k + lane] = wt;
    }
}

void dr_cuda_moe_route(void *ctx, int32_t *idx, float *wts, const float *logits, int T, int E, int k, bool renorm) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (T <= 0)
        return;
    if (k > ROUTE_MAX_K || k > E) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED, "CUDA moe_route: top-%d of %d experts", k, E);
        cx->failed = 1;
        return;
    }
    const dim3 grid(dr_cdiv((size_t)T, 4)), block(128);
    const int rn = renorm ? 1 : 0;
    if (E <= 256)
        dr_cuda_launch(cx, cx->dec3, route_reg_kernel<8>, grid, block, 0, idx, wts, logits, T, E, k, rn);
    else if (E <= 512)
        dr_cuda_launch(cx, cx->dec3, route_reg_kernel<16>, grid, block, 0, idx, wts, logits, T, E, k, rn);
    else
        dr_cuda_launch(cx, cx->dec3, route_kernel, grid, block, 0, idx, wts, logits, T, E, k, rn);
}

/* ---- expert pointer table ---- */

/* The device pointers of the E experts' gate, up and down, in table order;
 * false (error noted) when one is missing or the dtypes differ. */
static bool expert_ptrs(dr_cuda_ctx *cx, const dr_expert *ex, int E, const void **h) {
    for (int e = 0; e < E; e++) {
        if (!ex[e].gate.dev || !ex[e].up.dev || !ex[e].down.dev || ex[e].gate.dtype != ex[0].gate.dtype ||
            ex[e].up.dtype != ex[0].gate.dtype || ex[e].down.dtype != ex[0].gate.dtype) {
            dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED,
                       "CUDA moe_experts: expert %d is not uploaded or its dtypes differ", e);
            cx->failed = 1;
            return false;
        }
        h[e] = ex[e].gate.dev;
        h[E + e] = ex[e].up.dev;
        h[2 * E + e] = ex[e].down.dev;
    }
    return true;
}

/* The device table of an experts array, made on first use. A table is found
 * by the host array's address, so it is checked against the pointers the
 * array holds now: an array freed and another made at the same address
 * (weights freed and uploaded again) gets its table rewritten. */
static const void *const *expert_table(dr_cuda_ctx *cx, const dr_expert *ex, int E) {
    dr_cuda_expert_tab *tb = NULL;
    for (int i = 0; i < cx->n_tabs && !tb; i++)
        if (cx->tabs[i].key == ex && cx->tabs[i].E == E)
            tb = &cx->tabs[i];
    if (tb) {
        bool same = true;
        for (int e = 0; e < E && same; e++)
            same = tb->host[e] == ex[e].gate.dev && tb->host[E + e] == ex[e].up.dev &&
                   tb->host[2 * E + e] == ex[e].down.dev;
        if (same)
            return tb->dev;
    }
    if (cx->capturing) { /* first use (or a change) while recording: the step runs again without it */
        cx->cap_bad = 1;
        return NULL;
    }
    const bool fresh = !tb; /* a new device table: no queued kernel can read it */
    if (!tb) {
        if (cx->n_tabs == cx->cap_tabs) {
            int cap = cx->cap_tabs ? 2 * cx->cap_tabs : 64;
            void *nt = realloc(cx->tabs, (size_t)cap * sizeof *cx->tabs);
            if (!nt)
                goto nomem;
            cx->tabs = (dr_cuda_expert_tab *)nt;
            cx->cap_tabs = cap;
        }
        tb = &cx->tabs[cx->n_tabs];
        memset(tb, 0, sizeof *tb);
        tb->host = (const void **)malloc(3 * (size_t)E * sizeof *tb->host);
        void *d = NULL;
        if (!tb->host)
            goto nomem;
        cudaError_t e = cudaMalloc(&d, 3 * (size_t)E * sizeof(void *));
        if (e != cudaSuccess) {
            free(tb->host);
            dr_cuda_note_fail(cx, __FILE__, __LINE__, "expert table allocation", e);
            return NULL;
        }
        tb->key = ex;
        tb->E = E;
        tb->dev = (const void **)d;
        cx->n_tabs++;
    }
    if (!expert_ptrs(cx, ex, E, tb->host)) {
        memset(tb->host, 0, 3 * (size_t)E * sizeof *tb->host); /* never matches: checked again next time */
        return NULL;
    }
    /* kernels still queued may read a rewritten table's old contents; a new one needs no wait (the waits
       held the host in each MoE layer of a process's first prefill: docs/CUDA.md, session 9) */
    if (!fresh)
        DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
    DR_CUDA_NOTE(cx, dr_cuda_h2d(cx, tb->dev, tb->host, 3 * (size_t)E * sizeof(void *)));
    return cx->failed ? NULL : (const void *const *)tb->dev;
nomem:
    dr_fail_at(__FILE__, __LINE__, DR_ERR_NOMEM, "out of memory (expert table)");
    cx->failed = 1;
    return NULL;
}

/* ---- decode kernels ---- */

/* Full-warp dot of W row (n elements, dtype dt) with x. */
static __device__ __forceinline__ float warp_dot(const void *w, dr_dtype dt, const float *x, int n) {
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    if (dt == DR_DT_BF16 && n % 8 == 0 && ((uintptr_t)w % 16) == 0 && ((uintptr_t)x % 16) == 0) {
        const uint4 *wv = (const uint4 *)w;
#pragma unroll 4
        for (int v = lane; v < n / 8; v += 32) {
            const uint4 u = __ldg(wv + v);
            const float4 x0 = ((const float4 *)x)[2 * v], x1 = ((const float4 *)x)[2 * v + 1];
            s += __uint_as_float(u.x << 16) * x0.x + __uint_as_float(u.x & 0xffff0000u) * x0.y +
                 __uint_as_float(u.y << 16) * x0.z + __uint_as_float(u.y & 0xffff0000u) * x0.w +
                 __uint_as_float(u.z << 16) * x1.x + __uint_as_float(u.z & 0xffff0000u) * x1.y +
                 __uint_as_float(u.w << 16) * x1.z + __uint_as_float(u.w & 0xffff0000u) * x1.w;
        }
    } else {
        for (int i = lane; i < n; i += 32)
            s += dr_dev_load(w, dt, i) * x[i];
    }
    return dr_warp_sum(s);
}

/* act[r, i] = silu(gate_e[i] . x_t) * (up_e[i] . x_t), r = t*k + j, e = idx[r] */
__global__ void moe_gate_up_kernel(float *act, const float *x, const int32_t *idx, const void *const *tab, int E,
                                   dr_dtype dt, int k, int H, int I) {
    DR_TL_SCOPE();
    const int r = blockIdx.y;
    const int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (i >= I)
        return;
    const int e = idx[r];
    const float *xt = x + (size_t)(r / k) * H;
    const size_t es = dr_dtype_size_dev(dt);
    const char *gw = (const char *)tab[e] + (size_t)i * H * es;
    const char *uw = (const char *)tab[E + e] + (size_t)i * H * es;
    const float gv = warp_dot(gw, dt, xt, H), uv = warp_dot(uw, dt, xt, H);
    if ((threadIdx.x & 31) == 0)
        act[(size_t)r * I + i] = dr_dev_silu(gv) * uv;
}

/* out[r, h] = down_e[h] . act[r] */
__global__ void moe_down_kernel(float *out, const float *act, const int32_t *idx, const void *const *tab, int E,
                                dr_dtype dt, int H, int I) {
    DR_TL_SCOPE();
    const int r = blockIdx.y;
    const int h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (h >= H)
        return;
    const int e = idx[r];
    const size_t es = dr_dtype_size_dev(dt);
    const char *dw = (const char *)tab[2 * E + e] + (size_t)h * I * es;
    const float v = warp_dot(dw, dt, act + (size_t)r * I, I);
    if ((threadIdx.x & 31) == 0)
        out[(size_t)r * H + h] = v;
}

/* y[t, h] += sum_j wts[t, j] * out[pos(t, j), h], j in order (as the CPU);
 * pos = NULL: row t*k + j. */
__global__ void moe_combine_kernel(float *y, const float *out, const float *wts, const int32_t *pos, int T, int k,
                                   int H) {
    DR_TL_SCOPE();
    const size_t n = (size_t)T * H;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / H, h = i % H;
        float acc = y[i];
        for (int j = 0; j < k; j++) {
            const size_t r = t * k + j;
            acc += wts[r] * out[(size_t)(pos ? pos[r] : (int32_t)r) * H + h];
        }
        y[i] = acc;
    }
}

/* xg[r] = x[tok[r] / k] */
__global__ void moe_gather_kernel(float *xg, const float *x, const int32_t *tk, int R, int k, int H) {
    DR_TL_SCOPE();
    const size_t n = (size_t)R * H;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / H, h = i % H;
        xg[i] = x[(size_t)(tk[r] / k) * H + h];
    }
}

__global__ void moe_swiglu_kernel(float *g, const float *u, size_t n) {
    DR_TL_SCOPE();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        g[i] = dr_dev_silu(g[i]) * u[i];
}

/* ---- decode kernels, round 3 (BF16 experts, 16-byte aligned rows) ----
 * The weights stream as in matmul.cu's rows kernel: 16-byte loads that do
 * not allocate in L1, several in flight per lane before their first use,
 * programmatic dependent launch. The expert ids come from the kernel just
 * before, so nothing of a routed expert can be read before dr_pdl_wait(),
 * except where the routing gate/up kernel raises a picks-ready flag (the
 * down kernel then waits on the flag, not on the whole kernel); the shared
 * expert's rows can. What earlier kernels
 * wrote (x, ids, weights, activations) is read with coherent loads, not the
 * read-only path: with PDL those kernels may still run while this one
 * starts, and the read-only path assumes data constant for the kernel's
 * lifetime. */

#define MD_U 4 /* gate/up kernel: 16-byte loads in flight per lane and matrix */
#define MD_J 8 /* down kernel: picks whose rows are in flight together */
#define MD_SMEM (48 * 1024) /* the activations each block stages in shared memory */

/* s + the 8 bf16 weights of u times x0, x1 (index order) */
static __device__ __forceinline__ float dot8_bf16(const uint4 &u, const float4 &x0, const float4 &x1, float s) {
    return s + (__uint_as_float(u.x << 16) * x0.x + __uint_as_float(u.x & 0xffff0000u) * x0.y +
                __uint_as_float(u.y << 16) * x0.z + __uint_as_float(u.y & 0xffff0000u) * x0.w +
                __uint_as_float(u.z << 16) * x1.x + __uint_as_float(u.z & 0xffff0000u) * x1.y +
                __uint_as_float(u.w << 16) * x1.z + __uint_as_float(u.w & 0xffff0000u) * x1.w);
}

/* The first MD_U 16-byte pieces per lane of gate row g and up row u. */
static __device__ __forceinline__ void md_gu_first(uint4 (&a)[MD_U], uint4 (&b)[MD_U], const uint4 *g,
                                                   const uint4 *u, int lane, int nv) {
#pragma unroll
    for (int q = 0; q < MD_U; q++) {
        const int v = lane + 32 * q;
        a[q] = v < nv ? dr_ld_w(g + v) : make_uint4(0, 0, 0, 0);
        b[q] = v < nv ? dr_ld_w(u + v) : make_uint4(0, 0, 0, 0);
    }
}

/* silu(g . x) * (u . x) for the rows g, u (nv 16-byte pieces each) and x in
 * shared memory, the first pieces already in a, b (md_gu_first); every lane
 * gets the result. */
static __device__ __forceinline__ float md_gu_dot(uint4 (&a)[MD_U], uint4 (&b)[MD_U], const uint4 *g,
                                                  const uint4 *u, const float4 *sx, int lane, int nv) {
    float sg = 0.0f, su = 0.0f;
    for (int v0 = lane;;) {
#pragma unroll
        for (int q = 0; q < MD_U; q++) {
            const int v = v0 + 32 * q;
            if (v < nv) {
                const float4 x0 = sx[2 * v], x1 = sx[2 * v + 1];
                sg = dot8_bf16(a[q], x0, x1, sg);
                su = dot8_bf16(b[q], x0, x1, su);
            }
        }
        v0 += 32 * MD_U;
        if (v0 >= nv)
            break;
#pragma unroll
        for (int q = 0; q < MD_U; q++) {
            const int v = v0 + 32 * q;
            a[q] = v < nv ? dr_ld_w(g + v) : make_uint4(0, 0, 0, 0);
            b[q] = v < nv ? dr_ld_w(u + v) : make_uint4(0, 0, 0, 0);
        }
    }
    return dr_dev_silu(dr_warp_sum(sg)) * dr_warp_sum(su);
}

/* n4 16-byte pieces from global memory into shared memory, by the whole
 * block: MD_SB loads a thread in flight before their stores. (A plain
 * `dst[c] = src[c]` loop is compiled as load, store, load, ...: one L2
 * round trip per piece a thread, on the kernel's critical path; docs/CUDA.md,
 * session 14.) Two, not more: the routing gate/up kernel runs at 48
 * registers, and x (H = 2048) is two pieces a thread at 256 threads. */
#define MD_SB 2
static __device__ __forceinline__ void md_stage_f4(float4 *dst, const float4 *src, int n4) {
    const int nt = blockDim.x;
    for (int c0 = threadIdx.x; c0 < n4; c0 += MD_SB * nt) {
        float4 v[MD_SB];
#pragma unroll
        for (int q = 0; q < MD_SB; q++)
            if (c0 + q * nt < n4)
                v[q] = __ldcg(src + c0 + q * nt);
#pragma unroll
        for (int q = 0; q < MD_SB; q++)
            if (c0 + q * nt < n4)
                dst[c0 + q * nt] = v[q];
    }
}

/* Token t's x (H floats) into shared memory, by the whole block. */
static __device__ __forceinline__ void md_stage_x(float4 *sx, const float *x, int t, int H) {
    md_stage_f4(sx, (const float4 *)(x + (size_t)t * H), H / 4);
}

/* act[r, i] = silu(gate_e[i] . x_t) * (up_e[i] . x_t), r = t*k + j, e = idx[r]:
 * one warp per (r, i), the gate and up rows streamed together (2 * MD_U loads
 * in flight per lane); x_t is staged in shared memory once per block while
 * the first loads are in flight (read through L1 it cost one cache round
 * trip per 16-byte piece). 8 experts x 512 rows = 4096 warps at T = 1. */
__global__ void __launch_bounds__(256) moe_gu_bf16_kernel(float *__restrict__ act, const float *x, const int32_t *idx,
                                                          const void *const *__restrict__ tab, int E, int k, int H,
                                                          int I) {
    DR_TL_SCOPE();
    extern __shared__ float4 md_sx[];
    dr_pdl_trigger(); /* the down kernel may start: it prefetches only the shared expert's weights */
    dr_pdl_wait();    /* idx (router) and x come from earlier kernels */
    const int lane = threadIdx.x & 31, r = blockIdx.y;
    const int i0 = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool live = i0 < I;
    const int i = live ? i0 : I - 1; /* a warp past the end streams row I-1 too (it must reach the barrier) */
    const int e = idx[r];
    const int nv = H / 8;
    const uint4 *g = (const uint4 *)tab[e] + (size_t)i * nv, *u = (const uint4 *)tab[E + e] + (size_t)i * nv;
    uint4 a[MD_U], b[MD_U];
    md_gu_first(a, b, g, u, lane, nv);
    md_stage_x(md_sx, x, r / k, H);
    __syncthreads();
    const float v = md_gu_dot(a, b, g, u, md_sx, lane, nv);
    if (live && lane == 0)
        act[(size_t)r * I + i] = v;
}

/* sa[t, i] = silu(g[i] . x_t) * (u[i] . x_t) for the shared expert's rows
 * of this block (Is rows in all): no routing to wait for, so the first
 * weights load before the PDL wait. The shared-expert blocks of the routing
 * gate/up kernel (session 6). */
static __device__ __forceinline__ void md_gu_shared(float *sa, const float *x, const uint4 *gw, const uint4 *uw, int t,
                                                    int H, int Is) {
    extern __shared__ float4 md_sx[];
    dr_pdl_trigger();
    const int lane = threadIdx.x & 31, i0 = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if ((int)blockIdx.x * (int)(blockDim.x >> 5) >= Is) /* only routed rows here (I > Is) */
        return;
    const bool live = i0 < Is;
    const int i = live ? i0 : Is - 1, nv = H / 8;
    const uint4 *g = gw + (size_t)i * nv, *u = uw + (size_t)i * nv;
    uint4 a[MD_U], b[MD_U];
    md_gu_first(a, b, g, u, lane, nv);
    dr_pdl_wait_fenced((unsigned)nv); /* x comes from earlier kernels */
    md_stage_x(md_sx, x, t, H);
    __syncthreads();
    const float v = md_gu_dot(a, b, g, u, md_sx, lane, nv);
    if (live && lane == 0)
        sa[(size_t)t * Is + i] = v;
}

/* The same with the routing done here (session 5, docs/CUDA.md): warp 0 of
 * every block runs route_warp on token t's router logits (the route
 * kernel's arithmetic: identical picks and weights) while the other warps
 * stage x, so the separate route launch and its round trip through idx go.
 * Block (0, t*k) writes the token's idx and wts for the down kernel and,
 * with `ready`, raises the token's picks-ready flag, so the down kernel
 * can load its expert rows before this kernel ends (session 6). With sgw /
 * suw, the block rows past R are the shared expert's gate / up of each
 * token (md_gu_shared). At most 48 registers, 5 blocks per SM (session 6):
 * one token's 9 x 64 blocks (8 picks and the shared expert) fit in one
 * wave on the H100. */
template <int PER, bool RX>
__global__ void __launch_bounds__(256, 5) moe_gu_route_bf16_kernel(float *__restrict__ act, int32_t *idx, float *wts,
                                                                const float *logits, int renorm, const float *x,
                                                                const void *const *__restrict__ tab, int E, int k,
                                                                int H, int I, int *ready, int R,
                                                                const uint4 *__restrict__ sgw,
                                                                const uint4 *__restrict__ suw, int Is) {
    DR_TL_SCOPE();
    extern __shared__ float4 md_sx[];
    __shared__ int pick;
    if ((int)blockIdx.y >= R) { /* the shared expert of token blockIdx.y - R: rows Is, output after the picks' */
        md_gu_shared(act + (size_t)R * I, x, sgw, suw, (int)blockIdx.y - R, H, Is);
        return;
    }
    const int lane = threadIdx.x & 31, r = blockIdx.y, t = r / k, j = r - t * k;
    if ((int)blockIdx.x * (int)(blockDim.x >> 5) >= I) /* only shared-expert rows here (Is > I) */
        return;
    const bool writer = blockIdx.x == 0 && j == 0; /* writes the token's idx and wts */
    if (ready && writer) {
        /* the picks-ready flag of token t is cleared before the down kernel can start: that kernel
           (PDL) is scheduled only once every block of this one has triggered */
        dr_pdl_wait(); /* the previous layer's down kernel, which read the flag, has finished */
        md_ready_clear(ready, t);
    } else {
        dr_pdl_trigger(); /* the down kernel may start: it prefetches only the shared expert's weights */
        dr_pdl_wait();    /* the logits and x come from earlier kernels */
    }
    if (threadIdx.x < 32)
        route_publish<PER, RX>(logits + (size_t)t * E, E, k, renorm, lane, j, writer, idx + (size_t)t * k,
                               wts + (size_t)t * k, ready, t, &pick);
    DR_TL_MARK(0, 0.0f); /* routed (thread 0 is the routing warp's) */
    md_stage_x(md_sx, x, t, H);
    __syncthreads();
    DR_TL_MARK(1, 0.0f); /* x staged */
    const int i0 = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool live = i0 < I;
    const int i = live ? i0 : I - 1, e = pick, nv = H / 8;
    const uint4 *g = (const uint4 *)tab[e] + (size_t)i * nv, *u = (const uint4 *)tab[E + e] + (size_t)i * nv;
    uint4 a[MD_U], b[MD_U];
    md_gu_first(a, b, g, u, lane, nv);
    const float v = md_gu_dot(a, b, g, u, md_sx, lane, nv);
    DR_TL_MARK(2, v); /* the dot done */
    if (live && lane == 0)
        act[(size_t)r * I + i] = v;
}

/* Down rows of picks j0 .. j0+MD_J-1 of token t for row h (NULL past k), and
 * their first 16-byte pieces (2 per lane). */
static __device__ __forceinline__ void md_down_rows(const uint4 **dw, uint4 (*w)[2], const int32_t *it,
                                                    const void *const *tab, int E, int k, int j0, size_t off, int lane,
                                                    int nv) {
#pragma unroll
    for (int jj = 0; jj < MD_J; jj++)
        dw[jj] = j0 + jj < k ? (const uint4 *)tab[2 * E + __ldcg(it + j0 + jj)] + off : NULL;
#pragma unroll
    for (int jj = 0; jj < MD_J; jj++)
#pragma unroll
        for (int q = 0; q < 2; q++)
            w[jj][q] = dw[jj] && lane + 32 * q < nv ? dr_ld_w(dw[jj] + lane + 32 * q) : make_uint4(0, 0, 0, 0);
}

/* y[t, h] = (acc_y ? y[t, h] : 0) + sum_j wts[t, j] * (down_{e_j}[h] . act[t*k + j]), j in pick order (the
 * CPU's order), then + sigmoid(shs[t]) * (shd[h] . silu(shg[t]) * shu[t]) when shd is given (the shared
 * expert, MODEL.md 6.2; the same products as swiglu + matmul + sigmoid_scale_rows + add). One warp per
 * (t, h): the down rows of MD_J picks, 2 loads each per lane, in flight together. The block stages the
 * token's k activation rows and the shared expert's silu(g) * u (sha: made by the gate/up kernel) in
 * shared memory while the first loads are in flight; the shared row's first pieces are loaded before
 * dr_pdl_wait(), and with `ready` (session 6) so are the first MD_J picks' rows, once token t's
 * picks-ready flag is up. */
__global__ void __launch_bounds__(256) moe_down_bf16_kernel(float *__restrict__ y, const float *act,
                                                            const int32_t *idx, const float *wts,
                                                            const void *const *__restrict__ tab, int E, int k, int H,
                                                            int I, int acc_y, const uint4 *__restrict__ shd,
                                                            const float *shg, const float *shu, const float *shs,
                                                            int Is, const int *ready, const float *sha) {
    DR_TL_SCOPE();
    extern __shared__ float4 md_sa[]; /* [k * I] activations, then [Is] shared-expert activations */
    dr_pdl_trigger();
    const int lane = threadIdx.x & 31, t = blockIdx.y;
    const int h0 = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool live = h0 < H;
    const int h = live ? h0 : H - 1; /* a warp past the end reads row H-1 too (it must reach the barrier) */
    const int nvs = Is / 8, nv = I / 8;
    const uint4 *sr = shd ? shd + (size_t)h * nvs : NULL;
    uint4 sp[2];
#pragma unroll
    for (int q = 0; q < 2; q++)
        sp[q] = sr && lane + 32 * q < nvs ? dr_ld_w(sr + lane + 32 * q) : make_uint4(0, 0, 0, 0);
    const int32_t *it = idx + (size_t)t * k;
    const uint4 *dw[MD_J];
    uint4 w[MD_J][2];
    if (ready) { /* the picks are out before the gate/up kernel ends: the first down rows load meanwhile */
        md_ready_wait(ready + t, lane);
        md_down_rows(dw, w, it, tab, E, k, 0, (size_t)h * nv, lane, nv);
    }
    dr_pdl_wait_fenced((unsigned)nv); /* act, idx, wts and the shared projections come from earlier kernels */
    if (!ready)
        md_down_rows(dw, w, it, tab, E, k, 0, (size_t)h * nv, lane, nv);
    { /* the token's k * I activations and the shared expert's Is, their loads together (md_stage_f4) */
        const float4 *at = (const float4 *)(act + (size_t)t * k * I);
        const int na = k * I / 4, nt = blockDim.x;
        float *ss = (float *)(md_sa + na);
        for (int c0 = threadIdx.x; c0 < na || c0 < Is; c0 += MD_SB * nt) {
            float4 va[MD_SB];
            float vs[MD_SB];
#pragma unroll
            for (int q = 0; q < MD_SB; q++) {
                const int c = c0 + q * nt;
                if (c < na)
                    va[q] = __ldcg(at + c);
                if (c < Is)
                    vs[q] = sha ? __ldcg(sha + (size_t)t * Is + c)
                                : dr_dev_silu(shg[(size_t)t * Is + c]) * shu[(size_t)t * Is + c];
            }
#pragma unroll
            for (int q = 0; q < MD_SB; q++) {
                const int c = c0 + q * nt;
                if (c < na)
                    md_sa[c] = va[q];
                if (c < Is)
                    ss[c] = vs[q];
            }
        }
    }
    __syncthreads();
    DR_TL_MARK(0, md_sa[0].x);
    float acc = acc_y && live ? y[(size_t)t * H + h] : 0.0f;
    for (int j0 = 0;;) {
        float d[MD_J];
#pragma unroll
        for (int jj = 0; jj < MD_J; jj++)
            d[jj] = 0.0f;
        for (int v0 = lane;;) {
#pragma unroll
            for (int jj = 0; jj < MD_J; jj++)
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    const int v = v0 + 32 * q;
                    if (dw[jj] && v < nv) {
                        const float4 *av = md_sa + (size_t)(j0 + jj) * (I / 4) + 2 * v;
                        d[jj] = dot8_bf16(w[jj][q], av[0], av[1], d[jj]);
                    }
                }
            v0 += 64;
            if (v0 >= nv)
                break;
#pragma unroll
            for (int jj = 0; jj < MD_J; jj++)
#pragma unroll
                for (int q = 0; q < 2; q++)
                    w[jj][q] = dw[jj] && v0 + 32 * q < nv ? dr_ld_w(dw[jj] + v0 + 32 * q) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int jj = 0; jj < MD_J; jj++)
            if (j0 + jj < k) /* the same for the whole warp */
                acc += wts[(size_t)t * k + j0 + jj] * dr_warp_sum(d[jj]);
        j0 += MD_J;
        if (j0 >= k)
            break;
        md_down_rows(dw, w, it, tab, E, k, j0, (size_t)h * nv, lane, nv);
    }
    DR_TL_MARK(1, acc);
    if (sr) {
        const float4 *sa = md_sa + (size_t)k * I / 4;
        float s = 0.0f;
        for (int v0 = lane; v0 < nvs; v0 += 64) {
#pragma unroll
            for (int q = 0; q < 2; q++) {
                const int v = v0 + 32 * q;
                if (v < nvs) {
                    const uint4 wq = v0 == lane ? sp[q] : dr_ld_w(sr + v);
                    s = dot8_bf16(wq, sa[2 * v], sa[2 * v + 1], s);
                }
            }
        }
        acc += dr_warp_sum(s) * dr_dev_sigmoid(shs[t]);
    }
    DR_TL_MARK(2, acc);
    if (live && lane == 0)
        y[(size_t)t * H + h] = acc;
}

/* The round-3 kernels serve: BF16 experts, H and I multiples of 8, x 16-byte aligned. */
static bool experts_fast_ok(const dr_cuda_ctx *cx, const dr_expert *ex, const float *x, int k, int H, int I,
                            int Is) {
    return cx->dec3 && ex[0].gate.dtype == DR_DT_BF16 && ex[0].up.dtype == DR_DT_BF16 &&
           ex[0].down.dtype == DR_DT_BF16 && H % 8 == 0 && I % 8 == 0 && (uintptr_t)x % 16 == 0 &&
           (size_t)H * sizeof(float) <= MD_SMEM && ((size_t)k * I + (size_t)Is) * sizeof(float) <= MD_SMEM;
}

/* The routing folded into the gate/up kernel (moe_decode): the router
 * logits, whether the picked weights are renormalised, and where the picks
 * go (the idx and wts the down kernel reads). */
typedef struct {
    const float *logits;
    int renorm;
    int32_t *idx;
    float *wts;
} md_route;

/* Whether the gate/up kernel can do the routing of E experts (its warp
 * holds the logits in registers); DR_CUDA_MOE_ROUTE=0: never (the separate
 * route kernel). */
static bool route_in_gu(int E) {
    static int on = -1;
    return dr_env_on("DR_CUDA_MOE_ROUTE", &on) && E <= 512;
}

/* Session 6 (docs/CUDA.md), each with its baseline at 0:
 * DR_CUDA_MOE_EARLY, the down kernel loads its first expert rows as soon as
 * the picks are out (the picks-ready flag), not behind its PDL wait;
 * DR_CUDA_ROUTE_RX, the routing warp picks by integer reductions, not
 * shuffles; DR_CUDA_MOE_SHGU, the gate/up kernel projects the shared expert
 * (its rows stream while the picks are made), not the router's GEMV. */
static bool md_early(void) {
    static int on = -1;
    return dr_env_on("DR_CUDA_MOE_EARLY", &on);
}
static bool md_rx(void) {
    static int on = -1;
    return dr_env_on("DR_CUDA_ROUTE_RX", &on);
}
static bool md_shgu(void) {
    static int on = -1;
    return dr_env_on("DR_CUDA_MOE_SHGU", &on);
}

/* The shared expert as the decode kernels take it: its down rows, the raw
 * scalar gate s [T], and either its projections (gate, up [T, Is], made by a
 * GEMV before) or its gate / up weights (the gate/up kernel projects). */
typedef struct {
    const uint4 *down, *gate_w, *up_w;
    const float *gate, *up, *s;
    int Is;
} md_shared;

/* gate/up (+ SiLU * up) for the T*k picks (routing first when rt is given:
 * idx and wts are written; the shared expert's gate/up too when sh has its
 * weights), then down + weighted sum (+ the shared expert's down when sh is
 * given): two launches. acc_y: add to y. */
static void experts_fast(dr_cuda_ctx *cx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const void *const *tab, int E, int T, int k, int H, int I, int acc_y, const md_shared *sh,
                         const md_route *rt) {
    const int R = T * k, Is = sh ? sh->Is : 0;
    const bool shgu = rt && sh && sh->gate_w; /* the gate/up kernel projects the shared expert */
    const size_t n_act = (size_t)R * I + (shgu ? (size_t)T * Is : 0); /* the picks', then the shared expert's */
    float *act = (float *)dr_cuda_scratch(cx, DR_SCR_MOE, n_act * sizeof(float));
    if (!act)
        return;
    const size_t gs = (size_t)H * sizeof(float);
    /* the picks-ready flags: only where the gate/up kernel routes (it writes idx) */
    int *ready = rt && md_early() ? cx->moe_ready : NULL;
    if (!rt) {
        const dim3 gg(dr_cdiv((size_t)I, 8), (unsigned)R);
        dr_cuda_launch(cx, true, moe_gu_bf16_kernel, gg, dim3(256), gs, act, x, idx, tab, E, k, H, I);
    } else {
        const dim3 gg(dr_cdiv((size_t)(shgu && Is > I ? Is : I), 8), (unsigned)(R + (shgu ? T : 0)));
        const uint4 *sgw = shgu ? sh->gate_w : NULL, *suw = shgu ? sh->up_w : NULL;
#define MD_GU_ROUTE(PER, RX)                                                                                     \
    dr_cuda_launch(cx, true, moe_gu_route_bf16_kernel<PER, RX>, gg, dim3(256), gs, act, rt->idx, rt->wts, rt->logits, \
                   rt->renorm, x, tab, E, k, H, I, ready, R, sgw, suw, Is)
        const bool rx = md_rx();
        if (E <= 256 && rx)
            MD_GU_ROUTE(8, true);
        else if (E <= 256)
            MD_GU_ROUTE(8, false);
        else if (rx)
            MD_GU_ROUTE(16, true);
        else
            MD_GU_ROUTE(16, false);
#undef MD_GU_ROUTE
    }
    if (ready && cx->failed) /* the gate/up launch failed: its flag may never be raised */
        return;
    dr_cuda_launch(cx, true, moe_down_bf16_kernel, dim3(dr_cdiv((size_t)H, 8), (unsigned)T), dim3(256),
                   ((size_t)k * I + (size_t)Is) * sizeof(float), y, (const float *)act, idx, wts, tab, E, k, H, I,
                   acc_y, sh ? sh->down : NULL, sh ? sh->gate : NULL, sh ? sh->up : NULL, sh ? sh->s : NULL, Is,
                   (const int *)ready, shgu ? (const float *)act + (size_t)R * I : NULL);
}

static unsigned grid_cap(const dr_cuda_ctx *cx, size_t n) {
    size_t b = (n + 255) / 256, cap = (size_t)cx->n_sm * 16;
    return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

static void experts_decode(dr_cuda_ctx *cx, float *y, const float *x, const int32_t *idx, const float *wts,
                           const dr_expert *ex, int E, int T, int k, int H, int I) {
    const void *const *tab = expert_table(cx, ex, E);
    if (!tab)
        return;
    if (experts_fast_ok(cx, ex, x, k, H, I, 0)) {
        experts_fast(cx, y, x, idx, wts, tab, E, T, k, H, I, 1, NULL, NULL);
        return;
    }
    const int R = T * k;
    float *act = (float *)dr_cuda_scratch(cx, DR_SCR_MOE, ((size_t)R * I + (size_t)R * H) * sizeof(float));
    if (!act)
        return;
    float *out = act + (size_t)R * I;
    const dr_dtype dt = ex[0].gate.dtype;
    moe_gate_up_kernel<<<dim3(dr_cdiv((size_t)I, 8), (unsigned)R), 256, 0, cx->stream>>>(act, x, idx, tab, E, dt, k,
                                                                                         H, I);
    DR_CUDA_LAUNCHED(cx);
    moe_down_kernel<<<dim3(dr_cdiv((size_t)H, 8), (unsigned)R), 256, 0, cx->stream>>>(out, act, idx, tab, E, dt, H,
                                                                                      I);
    DR_CUDA_LAUNCHED(cx);
    moe_combine_kernel<<<grid_cap(cx, (size_t)T * H), 256, 0, cx->stream>>>(y, out, wts, NULL, T, k, H);
    DR_CUDA_LAUNCHED(cx);
}

static void experts_grouped(dr_cuda_ctx *cx, float *y, const float *x, const int32_t *idx, const float *wts,
                            const dr_expert *ex, int E, int T, int k, int H, int I) {
    const int R = T * k;
    if (cx->capturing) { /* the host sort below waits on the stream: the step runs again without a graph */
        cx->cap_bad = 1;
        return;
    }
    /* host: picks -> rows grouped by expert. tk[r] = t*k + j of sorted row r,
       pos[t*k + j] = r. */
    int32_t *hb = dr_cuda_host_ids(cx, 3 * (size_t)R + (size_t)E + 1);
    if (!hb)
        return;
    int32_t *hidx = hb, *tk = hb + R, *pos = hb + 2 * (size_t)R, *off = hb + 3 * (size_t)R;
    DR_CUDA_NOTE(cx, cudaMemcpyAsync(hidx, idx, (size_t)R * sizeof(int32_t), cudaMemcpyDeviceToHost, cx->stream));
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
    if (cx->failed)
        return;
    memset(off, 0, ((size_t)E + 1) * sizeof(int32_t));
    for (int r = 0; r < R; r++) {
        if (hidx[r] < 0 || hidx[r] >= E) {
            dr_fail_at(__FILE__, __LINE__, DR_ERR_RANGE, "CUDA moe_experts: expert index %d out of range", hidx[r]);
            cx->failed = 1;
            return;
        }
        off[hidx[r] + 1]++;
    }
    for (int e = 0; e < E; e++)
        off[e + 1] += off[e];
    for (int r = 0; r < R; r++) { /* stable: rows of one expert keep token order */
        const int p = off[hidx[r]]++;
        tk[p] = r;
        pos[r] = p;
    }
    for (int e = E; e > 0; e--) /* restore the starts */
        off[e] = off[e - 1];
    off[0] = 0;
    /* fp32 rows: gathered x, gate, up, down outputs; then (BF16 experts) the
       bf16 hi/lo split of the gathered x and of the activations, made once
       per layer instead of once per expert GEMM */
    const dr_dtype dt = ex[0].gate.dtype;
    const bool pre = dt == DR_DT_BF16;
    const size_t nf = (size_t)R * H * 2 + (size_t)R * I * 2 + (pre ? (size_t)R * (H > I ? H : I) : 0);
    float *xg = (float *)dr_cuda_scratch(cx, DR_SCR_MOE, nf * sizeof(float));
    int32_t *dmap = (int32_t *)dr_cuda_scratch(cx, DR_SCR_MOE2, 2 * (size_t)R * sizeof(int32_t));
    if (!xg || !dmap)
        return;
    float *gb = xg + (size_t)R * H, *ub = gb + (size_t)R * I, *ob = ub + (size_t)R * I;
    __nv_bfloat16 *hi = (__nv_bfloat16 *)(ob + (size_t)R * H), *lo = hi + (size_t)R * (H > I ? H : I);
    /* pinned source, asynchronous: the host writes hb again only after the
       next MoE layer's read-back has synchronised the stream */
    DR_CUDA_NOTE(cx, cudaMemcpyAsync(dmap, tk, 2 * (size_t)R * sizeof(int32_t), cudaMemcpyHostToDevice, cx->stream));
    moe_gather_kernel<<<grid_cap(cx, (size_t)R * H), 256, 0, cx->stream>>>(xg, x, dmap, R, k, H);
    DR_CUDA_LAUNCHED(cx);
    if (pre)
        dr_cuda_split_bf16(cx, hi, lo, xg, (size_t)R * H);
    for (int e = 0; e < E; e++) {
        const int n = off[e + 1] - off[e];
        if (!n)
            continue;
        const size_t r0 = (size_t)off[e];
        if (pre && ex[e].gate.dtype == DR_DT_BF16 && ex[e].up.dtype == DR_DT_BF16) {
            dr_cuda_mm_presplit(cx, gb + r0 * I, xg + r0 * H, hi + r0 * H, lo + r0 * H, ex[e].gate.dev, n, I, H);
            dr_cuda_mm_presplit(cx, ub + r0 * I, xg + r0 * H, hi + r0 * H, lo + r0 * H, ex[e].up.dev, n, I, H);
        } else {
            dr_cuda_mm_w(cx, gb + r0 * I, xg + r0 * H, &ex[e].gate, n); /* quantized too */
            dr_cuda_mm_w(cx, ub + r0 * I, xg + r0 * H, &ex[e].up, n);
        }
    }
    moe_swiglu_kernel<<<grid_cap(cx, (size_t)R * I), 256, 0, cx->stream>>>(gb, ub, (size_t)R * I);
    DR_CUDA_LAUNCHED(cx);
    if (pre)
        dr_cuda_split_bf16(cx, hi, lo, gb, (size_t)R * I);
    for (int e = 0; e < E; e++) {
        const int n = off[e + 1] - off[e];
        if (!n)
            continue;
        const size_t r0 = (size_t)off[e];
        if (pre && ex[e].down.dtype == DR_DT_BF16)
            dr_cuda_mm_presplit(cx, ob + r0 * H, gb + r0 * I, hi + r0 * I, lo + r0 * I, ex[e].down.dev, n, H, I);
        else
            dr_cuda_mm_w(cx, ob + r0 * H, gb + r0 * I, &ex[e].down, n);
    }
    moe_combine_kernel<<<grid_cap(cx, (size_t)T * H), 256, 0, cx->stream>>>(y, ob, wts, dmap + R, T, k, H);
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_moe_experts(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const dr_expert *experts, int E, int T, int k, int H, int I, float *ws) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    (void)ws;
    if (T <= 0 || k <= 0)
        return;
    if (E <= 0) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_ARG, "CUDA moe_experts: %d experts", E);
        cx->failed = 1;
        return;
    }
    if (experts[0].gate.q.bits && T <= MOE_GEMV_T &&
        dr_cuda_quant_moe_decode(cx, y, x, idx, wts, experts, expert_table, E, T, k, H, I)) /* quant.cu */
        return;
    if (T <= MOE_GEMV_T && !experts[0].gate.q.bits)
        experts_decode(cx, y, x, idx, wts, experts, E, T, k, H, I);
    else if (!dr_cuda_moe_prefill(cx, y, x, idx, wts, experts, expert_table, E, T, k, H, I)) /* moe_prefill.cu */
        experts_grouped(cx, y, x, idx, wts, experts, E, T, k, H, I);
}

/* A bf16 matrix [rows, cols] on the device with 16-byte aligned rows. */
static bool bf16_rows_ok(const dr_tensor *w, long rows, long cols) {
    return w && w->dev && w->dtype == DR_DT_BF16 && w->ndim == 2 && w->ne[0] == rows && w->ne[1] == cols &&
           cols % 8 == 0 && (uintptr_t)w->dev % 16 == 0;
}

bool dr_cuda_moe_decode(void *ctx, float *y, int32_t *idx, float *wts, float *logits, const dr_tensor *router,
                        const float *x, const dr_expert *experts, int E, int T, int k, bool renorm, int H, int I,
                        const dr_moe_shared *sh, bool acc) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!cx->moe_dec || T < 1 || T > MOE_GEMV_T || E <= 0 || k < 1 || k > E || k > ROUTE_MAX_K || !router->dev ||
        router->ndim != 2 || router->ne[0] != E || router->ne[1] != H)
        return false;
    if (experts[0].gate.q.bits) /* 8/4-bit experts: quant.cu's block, or the op-by-op path */
        return dr_cuda_quant_moe_block(cx, y, idx, wts, logits, router, x, experts, expert_table, E, T, k, renorm, H,
                                       I, sh, acc);
    int Is = 0;
    if (sh) {
        const dr_tensor *d = sh->down;
        if (!d || d->ndim != 2 || !bf16_rows_ok(d, H, d->ne[1]) || !sh->gate->dev || !sh->up->dev ||
            !sh->gate_s->dev)
            return false;
        Is = (int)d->ne[1];
    }
    if (!experts_fast_ok(cx, experts, x, k, H, I, Is))
        return false;
    const void *const *tab = expert_table(cx, experts, E);
    if (!tab) /* failed (recorded) or first use while recording (the step runs again) */
        return true;
    if (!cx->moe_ready && !(cx->moe_ready = (int *)dr_cuda_zeroed(cx, MOE_GEMV_T * sizeof(int))))
        return true; /* first use while recording (the step runs again without it), or failed */
    const bool in_gu = route_in_gu(E);
    /* the shared expert's gate / up in the gate/up kernel when it routes and they are bf16 [Is, H] */
    const bool shgu = sh && in_gu && md_shgu() && bf16_rows_ok(sh->gate, Is, H) && bf16_rows_ok(sh->up, Is, H);
    md_shared ms;
    memset(&ms, 0, sizeof ms);
    if (sh) { /* router, scalar gate (and the shared projections unless the gate/up kernel makes them): one pass */
        float *const ys[4] = {logits, sh->ws_s, sh->ws_gate, sh->ws_up};
        const dr_tensor *const ws[4] = {router, sh->gate_s, sh->gate, sh->up};
        dr_cuda_matmul_n(ctx, shgu ? 2 : 4, ys, x, ws, T);
        ms.down = (const uint4 *)sh->down->dev;
        ms.s = sh->ws_s;
        ms.Is = Is;
        if (shgu)
            ms.gate_w = (const uint4 *)sh->gate->dev, ms.up_w = (const uint4 *)sh->up->dev;
        else
            ms.gate = sh->ws_gate, ms.up = sh->ws_up;
    } else {
        dr_cuda_matmul(ctx, logits, x, router, T);
    }
    const md_route rt = {logits, renorm ? 1 : 0, idx, wts};
    if (!in_gu)
        dr_cuda_moe_route(ctx, idx, wts, logits, T, E, k, renorm);
    experts_fast(cx, y, x, idx, wts, tab, E, T, k, H, I, acc ? 1 : 0, sh ? &ms : NULL, in_gu ? &rt : NULL);
    return true;
}
