/* ops/cuda/moe_route.cuh - the router's softmax + top-k as one warp runs it
 * (MODEL.md 6.2; semantics: ops/cpu/moe.c), and the picks-ready flag that
 * hands the picks to the down kernel early: shared by the route kernels and
 * the decode gate/up kernels that route in their first warp (moe.cu for
 * BF16 experts, quant.cu for 8/4-bit ones). Same comparisons in the same
 * order everywhere: identical picks and weights. */
#ifndef DR_OPS_CUDA_MOE_ROUTE_CUH
#define DR_OPS_CUDA_MOE_ROUTE_CUH

#include "cuda_common.cuh"

#include <math.h>

#define ROUTE_MAX_K 32
#define MOE_GEMV_T 4 /* tokens the MoE decode kernels take at most */

/* The warp's best of the lanes' (best id, value bv): the largest value, ties
 * to the lower id, best < 0 for none; every lane gets it. */
static __device__ __forceinline__ void route_best_shfl(int &best, float &bv) {
    for (int o = 16; o > 0; o >>= 1) {
        const int ob = __shfl_xor_sync(0xffffffffu, best, o);
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        if (ob >= 0 && (best < 0 || ov > bv || (ov == bv && ob < best))) {
            best = ob;
            bv = ov;
        }
    }
}

/* An unsigned key of a float that orders as the float does (non-NaN; -0
 * taken as +0, which compares equal to it), and back. */
static __device__ __forceinline__ unsigned route_key(float v) {
    const unsigned b = __float_as_uint(v + 0.0f);
    return b & 0x80000000u ? ~b : b | 0x80000000u;
}
static __device__ __forceinline__ float route_unkey(unsigned u) {
    return __uint_as_float(u & 0x80000000u ? u & 0x7fffffffu : ~u);
}

/* One round of route_warp's RX selection over the lane's logits v (expert
 * lane + 32 i, none at or past E; bit i of `used`: taken): the warp's
 * largest key among the untaken, ties to the lowest expert id; every lane
 * gets the expert (best) and its logit (bv). */
template <int PER>
static __device__ __forceinline__ int route_round_rx(const float (&v)[PER], int E, int lane, unsigned used, float *bv) {
    unsigned kb = 0; /* every real key is above 0 */
    int bi = -1;
#pragma unroll
    for (int i = 0; i < PER; i++) {
        const unsigned kk = route_key(v[i]);
        if (lane + 32 * i < E && !((used >> i) & 1u) && kk > kb) {
            kb = kk;
            bi = i;
        }
    }
    const unsigned m = __reduce_max_sync(0xffffffffu, kb);
    *bv = route_unkey(m);
    return (int)__reduce_min_sync(0xffffffffu, bi >= 0 && kb == m ? (unsigned)(lane + 32 * bi) : 0xffffffffu);
}

/* The same selection with the lane's logits in registers (E <= 32 PER) and a
 * bit per used expert: route_kernel's loop (moe.cu) re-reads the logits and
 * keeps the picks in local memory, about 17 us per token at E = 256, k = 8.
 * Same comparisons in the same order, same arithmetic: identical results.
 * Pick j ends in lane j (k <= 32). RX (session 6): each round's warp-wide
 * best by two integer reductions (the largest key, then the lowest expert
 * id holding it) instead of five shuffle rounds; the same pick and tie rule. */
template <int PER, bool RX = false>
static __device__ __forceinline__ void route_warp(const float *l, int E, int k, int renorm, int lane, int *sel,
                                                  float *wt) {
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
        if (RX) {
            best = route_round_rx(v, E, lane, used, &bv);
        } else {
#pragma unroll
            for (int i = 0; i < PER; i++) {
                const int e = lane + 32 * i;
                if (e < E && !((used >> i) & 1u) && (best < 0 || v[i] > bv)) {
                    best = e;
                    bv = v[i];
                }
            }
            route_best_shfl(best, bv);
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
    *sel = my_sel;
    *wt = renorm ? my_wt / picked : my_wt;
}

/* Pick j alone (every lane gets it): route_warp<PER, true>'s first j + 1
 * rounds, the same comparisons in the same order, so the same expert. The
 * picks depend only on the logits' order, so the softmax is left out: a
 * gate/up block that only needs its own pick starts its weight loads after
 * j + 1 rounds instead of the softmax and all k (session 33). */
template <int PER>
static __device__ __forceinline__ int route_pick_rx(const float *l, int E, int j, int lane) {
    float v[PER];
#pragma unroll
    for (int i = 0; i < PER; i++)
        v[i] = lane + 32 * i < E ? l[lane + 32 * i] : -INFINITY;
    unsigned used = 0;
    for (int r = 0;; r++) {
        float bv;
        const int best = route_round_rx(v, E, lane, used, &bv);
        if (r == j)
            return best;
        if ((best & 31) == lane)
            used |= 1u << (best >> 5);
    }
}

/* Device-scope release store / acquire load of a flag (the picks-ready flag
 * the routing gate/up kernels raise for their down kernels): what the
 * storing thread wrote before is visible to a thread that reads the flag
 * set. */
static __device__ __forceinline__ void md_st_release(int *p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
static __device__ __forceinline__ int md_ld_acquire(const int *p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* The picks-ready protocol between a routing gate/up kernel and its down
 * kernel, per token t (flags zero between layers' uses):
 * - md_ready_clear: the writer block, after its PDL wait (the previous
 *   layer's down kernel, which read the flag, has ended), clears t's flag,
 *   then triggers; the down kernel (PDL) is scheduled only once every block
 *   has triggered, so it never sees the old flag. Every thread calls it.
 * - route_publish: the routing warp picks token t's experts (l, idx and
 *   wts at token t's rows); lane j's pick goes to *pick, and with `writer`
 *   the picks and weights go to idx / wts before t's flag (with ready) is
 *   raised (release). Without `writer` (and with RX) it makes pick j alone
 *   (route_pick_rx).
 * - md_ready_wait: a down kernel's warp waits for the flag (acquire), after
 *   which it may read idx. */
static __device__ __forceinline__ void md_ready_clear(int *ready, int t) {
    if (threadIdx.x == 0) {
        ready[t] = 0;
        __threadfence();
    }
    __syncthreads();
    dr_pdl_trigger();
}

#ifndef DR_ROUTE_PICK
#define DR_ROUTE_PICK 1 /* 0: every routing warp runs the whole selection (the same-run baseline build) */
#endif
template <int PER, bool RX>
static __device__ __forceinline__ void route_publish(const float *l, int E, int k, int renorm, int lane, int j,
                                                     bool writer, int32_t *idx, float *wts, int *ready, int t,
                                                     int *pick) {
    if (DR_ROUTE_PICK && RX && !writer) {
        const int sel = route_pick_rx<PER>(l, E, j, lane);
        if (lane == 0)
            *pick = sel;
        return;
    }
    int sel;
    float wt;
    route_warp<PER, RX>(l, E, k, renorm, lane, &sel, &wt);
    if (lane == j)
        *pick = sel;
    if (writer && lane < k) {
        idx[lane] = sel;
        wts[lane] = wt;
        __threadfence();
    }
    if (writer && ready) {
        __syncwarp();
        if (lane == 0)
            md_st_release(ready + t, 1); /* the down kernel may read idx now */
    }
}

static __device__ __forceinline__ void md_ready_wait(const int *ready, int lane) {
    if (lane == 0)
        while (!md_ld_acquire(ready))
            __nanosleep(64);
    __syncwarp();
}

#endif
