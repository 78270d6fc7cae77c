/* ops/cuda/moe.cu - MoE on the GPU (semantics: ops/cpu/moe.c, MODEL.md 6.2):
 * router softmax + top-k, and the routed SwiGLU experts.
 *
 * Decode (T <= MOE_GEMV_T): no host round trip. A device table of expert
 * weight pointers lets one launch compute gate/up for every (token, pick)
 * row reading the expert indices on the device, a second the down
 * projection, a third the weighted sum in pick order (as the CPU).
 * Prefill: the picks are read back once per MoE layer, grouped by expert on
 * the host (counting sort), the token rows gathered, and each used expert
 * runs dense GEMMs (cuBLAS, split bf16 for BF16 weights) over its rows.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "prefill.cuh"
#include "quant.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MOE_GEMV_T 4
#define ROUTE_MAX_K 32

/* ---- router: one warp per token ---- */

__global__ void route_kernel(int32_t *idx, float *wts, const float *logits, int T, int E, int k, int renorm) {
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
        for (int o = 16; o > 0; o >>= 1) {
            const int ob = __shfl_xor_sync(0xffffffffu, best, o);
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            if (ob >= 0 && (best < 0 || ov > bv || (ov == bv && ob < best))) {
                best = ob;
                bv = ov;
            }
        }
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

/* The same selection with the lane's logits in registers (E <= 32 PER) and a
 * bit per used expert: the loop above re-reads the logits from memory and
 * keeps the picks in local memory, about 17 us per token at E = 256, k = 8.
 * Same comparisons in the same order, same arithmetic: identical results.
 * Pick j ends in lane j (k <= 32). */
template <int PER>
__global__ void route_reg_kernel(int32_t *idx, float *wts, const float *logits, int T, int E, int k, int renorm) {
    const int lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= T)
        return;
    const float *l = logits + (size_t)t * E;
    float v[PER];
#pragma unroll
    for (int i = 0; i < PER; i++)
        v[i] = lane + 32 * i < E ? l[lane + 32 * i] : -INFINITY;
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < PER; i++)
        if (lane + 32 * i < E)
            mx = fmaxf(mx, v[i]);
    mx = dr_warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < PER; i++)
        if (lane + 32 * i < E)
            sum += expf(v[i] - mx);
    sum = dr_warp_sum(sum);
    unsigned used = 0;
    int my_sel = 0;
    float my_wt = 0.0f, picked = 0.0f;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = -INFINITY;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int e = lane + 32 * i;
            if (e < E && !((used >> i) & 1u) && (best < 0 || v[i] > bv)) {
                best = e;
                bv = v[i];
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const int ob = __shfl_xor_sync(0xffffffffu, best, o);
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            if (ob >= 0 && (best < 0 || ov > bv || (ov == bv && ob < best))) {
                best = ob;
                bv = ov;
            }
        }
        if ((best & 31) == lane)
            used |= 1u << (best >> 5);
        const float wj = expf(bv - mx) / sum;
        picked += wj;
        if (lane == j) {
            my_sel = best;
            my_wt = wj;
        }
    }
    if (lane < k) {
        idx[(size_t)t * k + lane] = my_sel;
        wts[(size_t)t * k + lane] = renorm ? my_wt / picked : my_wt;
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
    if (E <= 256)
        route_reg_kernel<8><<<dr_cdiv((size_t)T, 4), 128, 0, cx->stream>>>(idx, wts, logits, T, E, k, renorm ? 1 : 0);
    else if (E <= 512)
        route_reg_kernel<16><<<dr_cdiv((size_t)T, 4), 128, 0, cx->stream>>>(idx, wts, logits, T, E, k, renorm ? 1 : 0);
    else
        route_kernel<<<dr_cdiv((size_t)T, 4), 128, 0, cx->stream>>>(idx, wts, logits, T, E, k, renorm ? 1 : 0);
    DR_CUDA_LAUNCHED(cx);
}

/* ---- expert pointer table ---- */

static const void *const *expert_table(dr_cuda_ctx *cx, const dr_expert *ex, int E) {
    for (int i = 0; i < cx->n_tabs; i++)
        if (cx->tabs[i].key == ex && cx->tabs[i].E == E)
            return cx->tabs[i].dev;
    if (cx->capturing) { /* first use while recording: the step runs again without it */
        cx->cap_bad = 1;
        return NULL;
    }
    const void **h = (const void **)malloc(3 * (size_t)E * sizeof *h);
    if (!h)
        goto nomem;
    for (int e = 0; e < E; e++) {
        if (!ex[e].gate.dev || !ex[e].up.dev || !ex[e].down.dev || ex[e].gate.dtype != ex[0].gate.dtype ||
            ex[e].up.dtype != ex[0].gate.dtype || ex[e].down.dtype != ex[0].gate.dtype) {
            free(h);
            dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED,
                       "CUDA moe_experts: expert %d is not uploaded or its dtypes differ", e);
            cx->failed = 1;
            return NULL;
        }
        h[e] = ex[e].gate.dev;
        h[E + e] = ex[e].up.dev;
        h[2 * E + e] = ex[e].down.dev;
    }
    if (cx->n_tabs == cx->cap_tabs) {
        int cap = cx->cap_tabs ? 2 * cx->cap_tabs : 64;
        void *nt = realloc(cx->tabs, (size_t)cap * sizeof *cx->tabs);
        if (!nt) {
            free(h);
            goto nomem;
        }
        cx->tabs = (dr_cuda_expert_tab *)nt;
        cx->cap_tabs = cap;
    }
    {
        void *d = NULL;
        cudaError_t e = cudaMalloc(&d, 3 * (size_t)E * sizeof(void *));
        if (e == cudaSuccess)
            e = cudaMemcpy(d, h, 3 * (size_t)E * sizeof(void *), cudaMemcpyHostToDevice);
        free(h);
        if (e != cudaSuccess) {
            cudaFree(d);
            dr_cuda_note_fail(cx, __FILE__, __LINE__, "expert table upload", e);
            return NULL;
        }
        cx->tabs[cx->n_tabs].key = ex;
        cx->tabs[cx->n_tabs].E = E;
        cx->tabs[cx->n_tabs].dev = (const void **)d;
        cx->n_tabs++;
        return (const void *const *)d;
    }
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
    const size_t n = (size_t)R * H;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / H, h = i % H;
        xg[i] = x[(size_t)(tk[r] / k) * H + h];
    }
}

__global__ void moe_swiglu_kernel(float *g, const float *u, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        g[i] = dr_dev_silu(g[i]) * u[i];
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
