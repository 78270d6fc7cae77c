/* bench/cuda/persist_probe.cu - does a persistent decode kernel pay?
 *
 * A measurement for issue 5's decode target (docs/CUDA.md, session 14), not
 * part of the engine. The replayed decode step launches ~6 kernels a layer;
 * session 10's timeline put most of the gap to the HBM floor at the
 * boundaries between them: each launch waits for the previous one to leave
 * the SMs, then ramps up its weight stream. The weights do not depend on the
 * token, so a persistent grid could stream them without a break and wait only
 * for the small activations. This probe times a chain of dependent GEMVs
 * with 35B-A3B's decode bytes per layer (input projections 12352 x 2048,
 * out_proj 2048 x 4096, the routed + shared experts' gate/up as 9216 x 2048
 * and their down as 2048 x 4608; mode "layer"), or one of those shapes
 * repeated ("big": 12352 x 2048, "small": 2048 x 2048), 8 layers of
 * distinct weights (~1 GB, so nothing stays in L2), each phase reading the
 * previous phase's output. Variants:
 *
 *   sep       one kernel per GEMV in a CUDA graph (4 blocks an SM, a warp a
 *             row, grid-stride); sep_pdl with programmatic dependent
 *             launch; sep1 with one block an SM
 *   per_wait  one persistent kernel (a CTA per SM), a grid barrier between
 *             phases; a producer thread copies the CTA's weight rows into a
 *             shared-memory ring with bulk copies (TMA) once the phase's
 *             barrier has passed, consumer warps sum the rows from the ring
 *   per_pf    the same, the producer running ahead across the barriers
 *             (bounded only by the ring)
 *   per_free  per_pf without the barrier waits (wrong values; a bound)
 *   per_copy  copies only, the consumers release each slot unread (a bound)
 *   per_calc  no copies, the consumers sum what the ring holds (a bound)
 *
 * and consumer layouts as prefixes (own_, rr_, mr_, leanR_; see
 * parse_variant), each with ":SLOTS:KB:WARPS[:L2AHEAD]" for the ring (L2AHEAD:
 * chunks the producer asks L2 for while it waits for a slot). Findings:
 * docs/CUDA.md, session 14.
 *
 * Every checked variant sums each row in the same order (row_dot,
 * rows_dot), so their outputs must agree bit for bit; the probe checks it
 * and exits 1 if not (ctest's cuda_persist_probe; 77 = skipped, no Hopper
 * GPU). The floor is the weight bytes over the read
 * bandwidth of a plain streaming kernel over the same buffer, measured in
 * the same run (and cudaMemcpy's copy rate, for reference).
 *
 * Usage: persist_probe [layers (8)] [iterations (20)] [layer|big|small] [VARIANT...]
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_NAME "persist_probe"
#include "probe.h"

#define PP_MAXPH 64          /* phases (4 a layer) */
#define PP_LEANNW 15 /* the lean consumer's warps at most (the fixed widths need ~120 registers) */
#define PP_MAXNW 12 /* consumer warps at most */
#define PP_MAXRPC 16 /* rows a ring slot holds at most */
/* where the cycles go: consumer warp 0's grid-barrier wait, x staging,
   slot waits, its rows, the phase-end sync; the producer's waits for a free
   slot; the kernel's whole time in the CTA */
enum { ST_GRID, ST_STAGE, ST_FULL, ST_ROWS, ST_END, ST_EMPTY, ST_TOTAL, PP_NSTAT };
static const char *const st_name[PP_NSTAT] = {"grid wait", "x staging", "slot wait", "rows",
                                              "phase-end sync", "producer slot wait", "total"};
#define PP_MAXCOLS 4608
#define PP_SEP_THREADS 256

typedef struct pp_phase {
    const uint4 *w; /* [rows, cols] bf16, row-major */
    int rows, cols;
    float scale; /* keeps the chain's values O(1) */
} pp_phase;

typedef struct pp_plan {
    pp_phase ph[PP_MAXPH];
    int n;
    int ns, chunk, nw; /* ring slots, bytes a slot holds (whole rows), consumer warps */
    int l2ahead;       /* chunks the producer may ask L2 for ahead of its copies (0: none) */
    int ahead;         /* the producer runs ahead of the grid barriers */
    int free;          /* consumers skip the grid barrier (a streaming bound; wrong values) */
    int copy_only;     /* consumers only release the slots (the ring's streaming rate) */
    int own;           /* a slot is one warp's (slot k: warp k % nw), not a row per warp */
    int rr;            /* rows dealt to the warps across slots, not within each */
    int mr;            /* groups of up to 4 rows a warp (rows_dot), dealt as rr */
    int calc_only;     /* no copies: consumers sum whatever the ring holds (their own pace) */
    int lane0;         /* lean: only lane 0 of a warp polls a slot's barrier, then __syncwarp */
    unsigned long long *stats; /* PP_NSTAT cycle sums over the CTAs (consumer warp 0, the producer) */
    unsigned long long *ll[2]; /* LL: phase p's outputs as (tag << 32 | float bits) in ll[(p + 1) & 1] */
    float *buf[2]; /* phase p reads buf[p & 1], writes buf[(p + 1) & 1] */
} pp_plan;

/* ---- the shared row sum: lane's 16-byte pieces lane, lane + 32, ... in
   batches of 8 loads, then the warp sum. w may be global or shared. ---- */

static __device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
static __device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

/* Eight bf16 weights . eight floats, in element order. */
static __device__ __forceinline__ float dot8x(uint4 q, float4 x0, float4 x1) {
    float a = bf_lo(q.x) * x0.x;
    a = fmaf(bf_hi(q.x), x0.y, a);
    a = fmaf(bf_lo(q.y), x0.z, a);
    a = fmaf(bf_hi(q.y), x0.w, a);
    a = fmaf(bf_lo(q.z), x1.x, a);
    a = fmaf(bf_hi(q.z), x1.y, a);
    a = fmaf(bf_lo(q.w), x1.z, a);
    return fmaf(bf_hi(q.w), x1.w, a);
}

/* x is 16-byte aligned: two vector loads (scalar ones would double the
   shared-memory instructions, and x's bytes are twice the weights'). */
static __device__ __forceinline__ float dot8(uint4 q, const float *x) {
    return dot8x(q, ((const float4 *)x)[0], ((const float4 *)x)[1]);
}

/* R row sums of a warp, each summed over the lanes (butterfly, in the
   same order for every row). */
template <int R> static __device__ __forceinline__ void warp_sums(float (&acc)[R]) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
}

static __device__ __forceinline__ float row_dot(const uint4 *w, const float *x, int nv, int lane) {
    float acc = 0.0f;
    for (int base = lane; base < nv; base += 32 * 8) {
        uint4 q[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int v = base + 32 * u;
            q[u] = v < nv ? w[v] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int v = base + 32 * u;
            if (v < nv)
                acc += dot8(q[u], x + 8 * v);
        }
    }
    float one[1] = {acc};
    warp_sums<1>(one);
    return one[0];
}

/* R rows at once (mr): the same sums as row_dot row by row (the same
   pieces in the same order), but each x piece is loaded once for R rows
   and the R chains are independent, so a warp has R times the work in
   flight (one CTA an SM leaves few warps to hide latency). Rows at or past
   nrows are skipped; lane 0 writes out[row + r] = sum * scale. */
template <int R, int UB = 8>
static __device__ __forceinline__ void rows_dot(const uint4 *w, int nv, int nrows, const float *x, int lane,
                                                float *out, int row, float scale) {
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
    constexpr int U = UB / R > 1 ? UB / R : 1; /* pieces a row and batch: ~UB loads a lane in flight */
    for (int base = lane; base < nv; base += 32 * U) {
        uint4 q[R][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int v = base + 32 * u;
                q[r][u] = v < nv && r < nrows ? w[(size_t)r * nv + v] : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = base + 32 * u;
            if (v < nv)
#pragma unroll
                for (int r = 0; r < R; r++)
                    acc[r] += dot8(q[r][u], x + 8 * v);
        }
    }
    warp_sums<R>(acc);
    if (lane == 0)
#pragma unroll
        for (int r = 0; r < R; r++)
            if (r < nrows)
                __stcg(out + row + r, acc[r] * scale);
}

/* R rows of NV pieces (a compile-time width: no bounds checks, offsets as
   immediates): the sums of row_dot in the same order, x from the split
   layout. Rows at or past nrows re-read row 0 and are not written. */
/* Where element i of a vector goes in the split layout of an nn-wide input
   (nn = 0 or i >= nn: where it is). */
static __device__ __forceinline__ int split_pos(int i, int nn) {
    return nn && i < nn ? ((i & 4) ? nn / 2 : 0) + (i >> 3) * 4 + (i & 3) : i;
}

static __device__ __forceinline__ void st_ll(unsigned long long *p, float y, unsigned tag) {
    const unsigned long long v = ((unsigned long long)tag << 32) | __float_as_uint(y);
    asm volatile("st.volatile.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
static __device__ __forceinline__ unsigned long long ld_ll(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.volatile.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

template <int R, int NV, int U>
static __device__ __forceinline__ void rows_dot_fixed(const uint4 *w, int nrows, const float4 *xp, int lane,
                                                      float *out, int row, float scale, int nnext = 0,
                                                      unsigned long long *llout = nullptr, unsigned tag = 0) {
    static_assert(NV % (32 * U) == 0, "whole batches");
    const uint4 *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        wr[r] = w + (size_t)(r < nrows ? r : 0) * NV + lane;
    const float4 *xa = xp + lane, *xb = xp + NV + lane;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
#pragma unroll
    for (int b = 0; b < NV / 32; b += U) {
        uint4 q[R][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++)
                q[r][u] = wr[r][32 * (b + u)];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float4 x0 = xa[32 * (b + u)], x1 = xb[32 * (b + u)];
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] += dot8x(q[r][u], x0, x1);
        }
    }
    warp_sums<R>(acc);
    if (lane == 0)
#pragma unroll
        for (int r = 0; r < R; r++)
            if (r < nrows) {
                if (llout)
                    st_ll(llout + row + r, acc[r] * scale, tag);
                else
                    __stcg(out + split_pos(row + r, nnext), acc[r] * scale);
            }
}

/* LL: x of phase p (>= 1) from the tagged words the phase before wrote, each
   re-read until it carries this pass's tag for p, into the split layout;
   no grid barrier, no fence (the value and its tag are one 8-byte store). */
static __device__ __forceinline__ void stage_ll(float *xs, const unsigned long long *src, int n, unsigned want,
                                                int t, int nt) {
    for (int i0 = t; i0 < n; i0 += 8 * nt) {
        unsigned long long v[8];
#pragma unroll
        for (int u = 0; u < 8; u++)
            if (i0 + u * nt < n)
                v[u] = ld_ll(src + i0 + u * nt);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * nt;
            if (i < n) {
                while ((unsigned)(v[u] >> 32) != want)
                    v[u] = ld_ll(src + i);
                xs[split_pos(i, n)] = __uint_as_float((unsigned)v[u]);
            }
        }
    }
}

/* x (n floats, n % 4 == 0) from L2 into shared memory by nt threads, the
   loads of five float4 a thread in flight before their stores (one L2
   round trip per five, where a plain loop pays one per element).
   split: the fixed-width layout, piece v's first four floats at float4
   v, its last four at float4 n / 8 + v, so a warp's 32 lanes read 512
   contiguous bytes (the plain layout's 32-byte lane stride reads each
   float4 in two bank passes). */
static __device__ __forceinline__ void stage_x(float *xs, const float *in, int n, int t, int nt, bool split = false) {
    const float4 *in4 = (const float4 *)in;
    float4 *xs4 = (float4 *)xs;
    const int n4 = n / 4, half = n / 8;
    for (int base = t; base < n4; base += 5 * nt) {
        float4 v[5];
#pragma unroll
        for (int u = 0; u < 5; u++)
            if (base + u * nt < n4)
                v[u] = __ldcg(in4 + base + u * nt);
#pragma unroll
        for (int u = 0; u < 5; u++) {
            const int i = base + u * nt; /* split: float4 i is piece i / 2's half i % 2 */
            if (i < n4)
                xs4[split ? (i & 1) * half + (i >> 1) : i] = v[u];
        }
    }
}

/* ---- one kernel per GEMV ---- */

static __global__ void __launch_bounds__(PP_SEP_THREADS) sep_kernel(pp_phase ph, const float *in, float *out) {
    __shared__ __align__(16) float xs[PP_MAXCOLS];
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory"); /* a no-op without PDL */
    stage_x(xs, in, ph.cols, (int)threadIdx.x, (int)blockDim.x);
    __syncthreads();
    const int lane = threadIdx.x & 31, nv = ph.cols / 8;
    const int warps = (int)(gridDim.x * blockDim.x) / 32;
    for (int r = (int)(blockIdx.x * blockDim.x + threadIdx.x) / 32; r < ph.rows; r += warps) {
        const float y = row_dot(ph.w + (size_t)r * nv, xs, nv, lane);
        if (lane == 0)
            __stcg(out + r, y * ph.scale);
    }
}

/* ---- the persistent kernel ---- */

static __device__ __forceinline__ unsigned sm_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

static __device__ __forceinline__ void mbar_init(unsigned long long *b, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(sm_addr(b)), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_expect(unsigned long long *b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sm_addr(b)), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(unsigned long long *b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(sm_addr(b)) : "memory");
}
static __device__ __forceinline__ void mbar_wait(unsigned long long *b, unsigned parity) {
    unsigned done = 0;
    while (!done)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done)
                     : "r"(sm_addr(b)), "r"(parity)
                     : "memory");
}
static __device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes, unsigned long long *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     sm_addr(dst)),
                 "l"(src), "r"(bytes), "r"(sm_addr(b))
                 : "memory");
}
static __device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
static __device__ __forceinline__ void consumers_sync(int nw) {
    asm volatile("bar.sync 1, %0;" ::"r"(nw * 32) : "memory");
}

/* The CTA's rows of a phase and how many fit a ring slot. */
typedef struct pp_share {
    int r0, r1, rpc, nchunk, nv;
} pp_share;

static __device__ __forceinline__ pp_share share_of(const pp_phase *ph, int chunk) {
    pp_share s;
    const int G = (int)gridDim.x, b = (int)blockIdx.x;
    s.r0 = (int)((long long)b * ph->rows / G);
    s.r1 = (int)((long long)(b + 1) * ph->rows / G);
    s.nv = ph->cols / 8;
    s.rpc = min(chunk / (ph->cols * 2), PP_MAXRPC);
    s.nchunk = (s.r1 - s.r0 + s.rpc - 1) / s.rpc;
    return s;
}

/* A chunk of the CTA's weight stream: phase p's slot-sized piece c. */
typedef struct pp_cursor {
    int p, c;
} pp_cursor;

/* Where chunk (p, c) is and how many bytes (0 past the last phase). */
static __device__ __forceinline__ unsigned chunk_at(const pp_plan *plan, pp_cursor q, const uint4 **src) {
    if (q.p >= plan->n)
        return 0;
    const pp_phase *ph = &plan->ph[q.p];
    const pp_share s = share_of(ph, plan->chunk);
    const int row = s.r0 + q.c * s.rpc, n = min(s.rpc, s.r1 - row);
    *src = ph->w + (size_t)row * s.nv;
    return n > 0 ? (unsigned)(n * ph->cols * 2) : 0;
}

static __device__ __forceinline__ pp_cursor chunk_next(const pp_plan *plan, pp_cursor q) {
    if (q.p >= plan->n)
        return q;
    if (++q.c >= share_of(&plan->ph[q.p], plan->chunk).nchunk) {
        q.p++;
        q.c = 0;
    }
    return q;
}

static __device__ __forceinline__ bool mbar_test(unsigned long long *b, unsigned parity) {
    unsigned done;
    asm volatile("{ .reg .pred p; mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done)
                 : "r"(sm_addr(b)), "r"(parity)
                 : "memory");
    return done != 0;
}

static __device__ __forceinline__ void prefetch_l2(const void *src, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(src), "r"(bytes) : "memory");
}

/* Warp 0 lane 0: every phase's rows of this CTA, slot after slot. With
   ahead == 0 a phase's first copy waits for its grid barrier. With l2ahead
   = D > 0, while it waits for a free slot it asks L2 for the next chunks of
   its stream, up to D past the one it waits to copy, so that HBM keeps
   streaming while the ring is full (the copies then hit L2). */
static __device__ void produce(const pp_plan *plan, uint4 *ring, unsigned long long *full,
                               unsigned long long *empty, const unsigned *bar) {
    const unsigned G = gridDim.x, NS = (unsigned)plan->ns;
    unsigned k = 0, kp = 1;      /* kp: the next chunk to prefetch */
    pp_cursor qp = {0, 0};       /* its position */
    qp = chunk_next(plan, qp);
    long long t_empty = 0;
    for (int p = 0; p < plan->n; p++) {
        const pp_phase *ph = &plan->ph[p];
        const pp_share s = share_of(ph, plan->chunk);
        if (!plan->ahead)
            while (ld_acquire(bar) < (unsigned)p * G) {
            }
        for (int c = 0; c < s.nchunk; c++, k++) {
            const unsigned slot = k % NS;
            if (k >= NS) {
                const long long t0 = clock64();
                const unsigned par = ((k / NS) - 1) & 1;
                if (plan->l2ahead)
                    while (!mbar_test(&empty[slot], par)) {
                        const uint4 *src;
                        const unsigned nb = kp <= k + (unsigned)plan->l2ahead ? chunk_at(plan, qp, &src) : 0;
                        if (nb) {
                            prefetch_l2(src, nb);
                            kp++;
                            qp = chunk_next(plan, qp);
                        }
                    }
                else
                    mbar_wait(&empty[slot], par);
                t_empty += clock64() - t0;
            }
            while (kp <= k) { /* chunks copied before their prefetch came: none needed */
                kp++;
                qp = chunk_next(plan, qp);
            }
            const int row = s.r0 + c * s.rpc;
            const int n = min(s.rpc, s.r1 - row);
            const unsigned bytes = (unsigned)(n * ph->cols * 2);
            mbar_expect(&full[slot], bytes);
            bulk_copy(ring + (size_t)slot * (plan->chunk / 16), ph->w + (size_t)row * s.nv, bytes, &full[slot]);
        }
    }
    if (plan->stats)
        atomicAdd(&plan->stats[ST_EMPTY], (unsigned long long)t_empty);
}

/* The general consumer's rows of one slot (persist_kernel<0>): a row per
   warp (own_: every row of the slot; rr_: rows dealt across slots) or, with
   mr_, groups of up to 4 rows dealt across slots. */
static __device__ __forceinline__ void general_rows(const pp_plan *plan, const uint4 *base, const pp_share &s, int c,
                                                    int n, int warp, int lane, const float *xs, float *out, int row,
                                                    float scale) {
    const int nw = plan->nw;
    if (plan->copy_only)
        return;
    if (plan->mr) {
        const int R = s.rpc % 4 == 0 ? 4 : s.rpc % 3 == 0 ? 3 : s.rpc % 2 == 0 ? 2 : 1, gpc = s.rpc / R;
        for (int j = 0; j < gpc && j * R < n; j++) {
            if ((c * gpc + j) % nw != warp)
                continue;
            const uint4 *wr = base + (size_t)j * R * s.nv;
            const int nr = min(R, n - j * R);
            if (R == 4)
                rows_dot<4>(wr, s.nv, nr, xs, lane, out, row + j * R, scale);
            else if (R == 3)
                rows_dot<3>(wr, s.nv, nr, xs, lane, out, row + j * R, scale);
            else if (R == 2)
                rows_dot<2>(wr, s.nv, nr, xs, lane, out, row + j * R, scale);
            else
                rows_dot<1>(wr, s.nv, nr, xs, lane, out, row + j * R, scale);
        }
        return;
    }
    /* rr: row c rpc + r of the phase is warp (c rpc + r) % nw's, so a warp
       with no row in this slot goes on to the next one */
    const int r0 = plan->own ? 0 : plan->rr ? (warp - (c * s.rpc) % nw + nw) % nw : warp;
    const int rstep = plan->own ? 1 : nw;
    for (int r = r0; r < n; r += rstep) {
        const float y = row_dot(base + (size_t)r * s.nv, xs, s.nv, lane);
        if (lane == 0)
            __stcg(out + row + r, y * scale);
    }
}

/* Warps 1..nw, per phase: wait for the grid, stage x, sum the rows of each
   slot as it fills, then the CTA's arrival at the grid barrier.
   R = 0: general_rows (persist_kernel<0>, up to PP_MAXNW warps).
   R > 0 (variants "leanR_"): only groups of R rows (1 where R does not
   divide a slot's rows) dealt to the warps across slots, compiled alone so
   that up to PP_LEANNW consumer warps fit its registers. */
/* DEC (with FIXED): no CTA-wide step between phases. Thread 1 copies each
   phase's x (already in the split layout: the phase before wrote its
   outputs there) into one of two buffers by a bulk copy once the grid
   barrier has passed (stage_dec); a warp waits for that copy, sums its
   rows, and the CTA's last warp to finish a phase arrives at the grid
   barrier. A warp no longer waits for the CTA's slowest one. */
static __device__ void stage_dec(const pp_plan *plan, float *xs, unsigned long long *xbar, const unsigned *bar) {
    const unsigned G = gridDim.x;
    for (int p = 0; p < plan->n; p++) {
        while (ld_acquire(bar) < (unsigned)p * G) {
        }
        asm volatile("fence.proxy.async.global;" ::: "memory"); /* the bulk copy reads what the grid wrote */
        const unsigned bytes = (unsigned)plan->ph[p].cols * 4;
        mbar_expect(&xbar[p & 1], bytes);
        bulk_copy(xs + (p & 1) * PP_MAXCOLS, plan->buf[p & 1], bytes, &xbar[p & 1]);
    }
}

/* Cycle sums of consumer warp 0 (thread ct 0 reports them). 32-bit
   counters: fewer registers. */
typedef struct pp_ticks {
    unsigned t[PP_NSTAT], t0;
} pp_ticks;
static __device__ __forceinline__ void tick(pp_ticks &tk, int i) {
    const unsigned t1 = (unsigned)clock();
    tk.t[i] += t1 - tk.t0;
    tk.t0 = t1;
}

/* A phase's start: x of phase p into shared memory once it exists.
   DEC: wait for thread 1's bulk copy into buffer p & 1. LL: every warp done
   with the last x, then the tagged words. Otherwise: the grid barrier
   (unless free), then x from the buffer (split layout when fixed). */
template <bool DEC, bool LL>
static __device__ __forceinline__ void phase_start(const pp_plan *plan, int p, float *xs, bool fixed,
                                                   const unsigned *bar, unsigned long long *xbar, unsigned epoch,
                                                   int ct, int lane, pp_ticks &tk) {
    const int nw = plan->nw, cols = plan->ph[p].cols;
    if (DEC) {
        if (lane == 0)
            mbar_wait(&xbar[p & 1], (p >> 1) & 1);
        __syncwarp();
        tick(tk, ST_STAGE);
        return;
    }
    if (!LL && ct == 0 && !plan->free)
        while (ld_acquire(bar) < (unsigned)p * gridDim.x) {
        }
    consumers_sync(nw); /* every warp is done with x of phase p - 1 */
    tick(tk, ST_GRID);
    if (LL && p > 0)
        stage_ll(xs, plan->ll[p & 1], cols, epoch * 128u + (unsigned)p, ct, nw * 32);
    else
        stage_x(xs, plan->buf[p & 1], cols, ct, nw * 32, fixed || LL);
    consumers_sync(nw);
    tick(tk, ST_STAGE);
}

/* A phase's end: this CTA's arrival at the grid barrier, after its outputs.
   DEC: each warp fences its own outputs, the CTA's last warp arrives. LL:
   nothing (the outputs carry their tags). */
template <bool DEC, bool LL>
static __device__ __forceinline__ void phase_end(const pp_plan *plan, int p, unsigned *bar, unsigned *done, int ct,
                                                 int lane) {
    if (DEC) {
        __syncwarp();
        if (lane == 0) {
            __threadfence(); /* this warp's outputs before the CTA's arrival */
            if (atomicAdd(&done[p & 1], 1u) == (unsigned)plan->nw - 1) {
                done[p & 1] = 0;
                __threadfence();
                atomicAdd(bar, 1u);
            }
        }
    } else if (!LL) {
        consumers_sync(plan->nw);
        if (ct == 0) {
            __threadfence();
            atomicAdd(bar, 1u);
        }
    }
}

/* One group of nr <= RR rows at wr (rows row ...): rows_dot_fixed for the
   probe's widths when FIXED (a row at a time where the group is short of RR
   or the width is 576 pieces, 18 a lane), rows_dot otherwise. */
template <int RR, bool FIXED>
static __device__ __forceinline__ void group_rows(const uint4 *wr, int nv, int nr, int rg, const float *xs,
                                                  const float4 *xp, int lane, float *out, int row, float scale,
                                                  int nnext, unsigned long long *llout, unsigned tag) {
    constexpr int UR = RR >= 3 ? 1 : 4 / RR;
    if (!FIXED) {
        if (rg == RR)
            rows_dot<RR, 4>(wr, nv, nr, xs, lane, out, row, scale);
        else
            rows_dot<1, 4>(wr, nv, nr, xs, lane, out, row, scale);
    } else if (rg == RR && nv == 256) {
        rows_dot_fixed<RR, 256, UR>(wr, nr, xp, lane, out, row, scale, nnext, llout, tag);
    } else if (rg == RR && nv == 512) {
        rows_dot_fixed<RR, 512, UR>(wr, nr, xp, lane, out, row, scale, nnext, llout, tag);
    } else {
        for (int i = 0; i < nr; i++) {
            const uint4 *wi = wr + (size_t)i * nv;
            if (nv == 576)
                rows_dot_fixed<1, 576, 2>(wi, 1, xp, lane, out, row + i, scale, nnext, llout, tag);
            else if (nv == 512)
                rows_dot_fixed<1, 512, 4>(wi, 1, xp, lane, out, row + i, scale, nnext, llout, tag);
            else
                rows_dot_fixed<1, 256, 4>(wi, 1, xp, lane, out, row + i, scale, nnext, llout, tag);
        }
    }
}

/* Warps 1..nw, per phase: x in (phase_start), the rows of each slot as it
   fills, the CTA's arrival (phase_end).
   R = 0: general_rows (persist_kernel<0>, up to PP_MAXNW warps).
   R > 0 (variants "leanR_"): only groups of R rows (1 where R does not
   divide a slot's rows) dealt to the warps across slots, compiled alone so
   that up to PP_LEANNW consumer warps fit its registers. FIXED: the probe's
   three widths with rows_dot_fixed and x split; DEC, LL: phase_start's. */
template <int R, bool FIXED, bool DEC, bool LL>
static __device__ void consume(const pp_plan *plan, const uint4 *ring, float *xs, unsigned long long *full,
                               unsigned long long *empty, unsigned *bar, unsigned long long *xbar, unsigned *done,
                               unsigned epoch) {
    static_assert(!(DEC || LL) || FIXED, "DEC and LL need the split layout");
    static_assert(!(DEC && LL), "one or the other");
    constexpr int RR = R > 0 ? R : 1; /* (R = 0 never reaches the grouped path) */
    const int ct = (int)threadIdx.x - 32, warp = ct / 32, lane = ct & 31, nw = plan->nw;
    const unsigned NS = (unsigned)plan->ns;
    unsigned k = 0;
    pp_ticks tk = {{0}, (unsigned)clock()};
    for (int p = 0; p < plan->n; p++) {
        const pp_phase *ph = &plan->ph[p];
        const pp_share s = share_of(ph, plan->chunk);
        float *out = plan->buf[(p + 1) & 1];
        const bool fixed = FIXED && (s.nv == 256 || s.nv == 512 || s.nv == 576);
        const int nnext = DEC && p + 1 < plan->n ? plan->ph[p + 1].cols : 0;
        /* LL: outputs tagged for phase p + 1 (plain floats from the last phase) */
        unsigned long long *llout = LL && p + 1 < plan->n ? plan->ll[(p + 1) & 1] : nullptr;
        const unsigned tag = epoch * 128u + (unsigned)p + 1u;
        const float4 *xp = (const float4 *)(xs + (DEC ? (p & 1) * PP_MAXCOLS : 0));
        phase_start<DEC, LL>(plan, p, xs, fixed, bar, xbar, epoch, ct, lane, tk);
        const int rg = s.rpc % RR == 0 ? RR : 1, gpc = s.rpc / rg;
        for (int c = 0; c < s.nchunk; c++, k++) {
            if (R == 0 && plan->own && (int)(k % (unsigned)nw) != warp)
                continue; /* another warp's slot */
            const unsigned slot = k % NS;
            if (!plan->calc_only && (!plan->lane0 || lane == 0))
                mbar_wait(&full[slot], (k / NS) & 1);
            if (plan->lane0)
                __syncwarp(); /* orders the other lanes' reads after lane 0's wait */
            tick(tk, ST_FULL);
            const int row = s.r0 + c * s.rpc, n = min(s.rpc, s.r1 - row);
            const uint4 *base = ring + (size_t)slot * (plan->chunk / 16);
            if (R == 0)
                general_rows(plan, base, s, c, n, warp, lane, xs, out, row, ph->scale);
            else if (FIXED && !fixed)
                ; /* other widths: not in this probe */
            else
                for (int j = (warp - (c * gpc) % nw + nw) % nw; j < gpc && j * rg < n; j += nw)
                    group_rows<RR, FIXED>(base + (size_t)j * rg * s.nv, s.nv, min(rg, n - j * rg), rg, xs, xp,
                                          lane, out, row + j * rg, ph->scale, nnext, llout, tag);
            __syncwarp();
            if (lane == 0 && !plan->calc_only)
                mbar_arrive(&empty[slot]);
            tick(tk, ST_ROWS);
        }
        phase_end<DEC, LL>(plan, p, bar, done, ct, lane);
        tick(tk, ST_END);
    }
    if (ct == 0 && plan->stats)
        for (int i = 0; i < ST_EMPTY; i++)
            atomicAdd(&plan->stats[i], (unsigned long long)tk.t[i]);
}

/* LEAN = 0: the general consumer (up to PP_MAXNW warps); LEAN > 0: groups of LEAN rows (consume). */
template <int LEAN, bool FIXED, bool DEC, bool LL>
static __global__ void __launch_bounds__(LEAN ? 32 * (PP_LEANNW + 1) : 32 * (PP_MAXNW + 1), 1)
    persist_kernel(const __grid_constant__ pp_plan plan, unsigned *bar, const unsigned *epoch) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int XB = DEC ? 2 : 1; /* x buffers */
    float *xs = (float *)smem;
    uint4 *ring = (uint4 *)(smem + XB * PP_MAXCOLS * 4);
    unsigned long long *full = (unsigned long long *)(smem + XB * PP_MAXCOLS * 4 + (size_t)plan.ns * plan.chunk);
    unsigned long long *empty = full + plan.ns, *xbar = empty + plan.ns;
    unsigned *done = (unsigned *)(xbar + 2);
    if (threadIdx.x == 0) {
        for (int i = 0; i < plan.ns; i++) {
            mbar_init(&full[i], 1);
            mbar_init(&empty[i], plan.own ? 1u : (unsigned)plan.nw);
        }
        mbar_init(&xbar[0], 1);
        mbar_init(&xbar[1], 1);
        done[0] = done[1] = 0;
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    const long long t0 = clock64();
    if (threadIdx.x < 32) {
        if (threadIdx.x == 0 && !plan.calc_only)
            produce(&plan, ring, full, empty, bar);
        if (DEC && threadIdx.x == 1)
            stage_dec(&plan, xs, xbar, bar);
    } else {
        consume<LEAN, FIXED, DEC, LL>(&plan, ring, xs, full, empty, bar, xbar, done, *epoch);
    }
    __syncthreads();
    if (threadIdx.x == 0 && plan.stats)
        atomicAdd(&plan.stats[ST_TOTAL], (unsigned long long)(clock64() - t0));
}

typedef void (*pp_kernel)(const pp_plan, unsigned *, const unsigned *);
/* The instances: the general one, leanR (R = 1..4), leanRf, leanRfd and
   leanRfl (R = 1, 2; decoupled phases / tagged outputs, fixed widths). */
static pp_kernel kernel_of(int lean, int fixed, int dec, int ll) {
    if (dec)
        return lean == 2 ? persist_kernel<2, true, true, false> : persist_kernel<1, true, true, false>;
    if (ll)
        return lean == 2 ? persist_kernel<2, true, false, true> : persist_kernel<1, true, false, true>;
    switch (lean) {
    case 1: return fixed ? persist_kernel<1, true, false, false> : persist_kernel<1, false, false, false>;
    case 2: return fixed ? persist_kernel<2, true, false, false> : persist_kernel<2, false, false, false>;
    case 3: return fixed ? persist_kernel<3, true, false, false> : persist_kernel<3, false, false, false>;
    case 4: return fixed ? persist_kernel<4, true, false, false> : persist_kernel<4, false, false, false>;
    default: return persist_kernel<0, false, false, false>;
    }
}

/* LL: a new tag base for every pass of the graph. */
static __global__ void epoch_kernel(unsigned *epoch) { *epoch += 1; }

/* ---- set-up, the read floor ---- */

static __global__ void fill_kernel(uint4 *w, size_t nv, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nv; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h[4];
        for (int j = 0; j < 4; j++) {
            unsigned x = (unsigned)(i * 4 + j) * 2654435761u ^ seed;
            x ^= x >> 15;
            x *= 2246822519u;
            x ^= x >> 13;
            /* two bf16 in [-1, 1): sign, exponent 126 (0.5 .. 1) or below */
            const unsigned a = 0x3f00u | (x & 0x807fu), b = 0x3f00u | ((x >> 16) & 0x807fu);
            h[j] = a | (b << 16);
        }
        w[i] = make_uint4(h[0], h[1], h[2], h[3]);
    }
}

static __global__ void read_kernel(const uint4 *w, size_t nv, unsigned *sink) {
    unsigned acc = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i + 3 * stride < nv; i += 4 * stride) {
        const uint4 a = __ldcs(w + i), b = __ldcs(w + i + stride), c = __ldcs(w + i + 2 * stride),
                    d = __ldcs(w + i + 3 * stride);
        acc ^= a.x ^ b.y ^ c.z ^ d.w;
    }
    for (; i < nv; i += stride)
        acc ^= __ldcs(w + i).x;
    if (acc == 0x12345678u)
        atomicAdd(sink, 1u); /* keeps the loads */
}

/* The phases of a layer: 35B-A3B's decode GEMVs ("layer"), or one shape
   repeated ("big": the input projections'; "small": 2048 x 2048, square so
   that each phase reads only what the one before wrote). */
static const int layer_shape[5][2] = {{12352, 2048}, {2048, 4096}, {9216, 2048}, {2048, 4608}, {2048, 2048}};

static void shape_of(const char *mode, int p, int *rows, int *cols) {
    const int q = !strcmp(mode, "big") ? 0 : !strcmp(mode, "small") ? 4 : p % 4;
    *rows = layer_shape[q][0];
    *cols = layer_shape[q][1];
}

static double time_graph(cudaGraphExec_t g, cudaStream_t st, int iters) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < 3; i++)
        cudaGraphLaunch(g, st);
    cudaEventRecord(a, st);
    for (int i = 0; i < iters; i++)
        cudaGraphLaunch(g, st);
    cudaEventRecord(b, st);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1e3 / iters;
}

/* A variant: sep | sep_pdl | sep1 (one block an SM, as the persistent grid) | per_wait | per_pf | per_free, the persistent
   ones (and per_copy) optionally ":SLOTS:KB:WARPS[:L2AHEAD]" (ring slots,
   KB a slot, consumer warps; default 6:32:8; L2AHEAD, default 0: chunks the
   producer may prefetch into L2 ahead of its copies while the ring is full). Prefixes of per_wait / per_pf /
   per_free: "own_" makes each slot one warp's, "rr_" deals the rows to the
   warps across slots, "mr_" deals groups of up to 4 rows (rows_dot).
   per_calc: no copies at all, the consumers' own pace (wrong values).
   "leanR_" (R = 1..4; e.g. lean2_per_pf:6:32:15): consume<R>, up to PP_LEANNW
   consumer warps; "leanRw_": lane 0 alone polls each slot's barrier;
   "leanRf_" / "leanRwf_": rows_dot_fixed (compile-time widths, split x);
   "leanRfd_" (R = 1, 2): that with decoupled phases (consume's DEC);
   "leanRfl_" (R = 1, 2): tagged outputs instead of the grid barrier (LL). (A "kx_" variant, every warp a column slice of every
   row with x in registers, was slower: commit history.) */
typedef struct pp_variant {
    char name[16];
    int sep, sep_blocks, pdl, ns, chunk, nw, l2ahead, ahead, free, copy_only, own, rr, mr, calc_only, lean, lane0, fixed, dec,
        ll;
} pp_variant;

static int parse_variant(const char *spec, pp_variant *v) {
    memset(v, 0, sizeof *v);
    int kb = 32;
    v->ns = 6;
    v->nw = 8;
    const char *c = strchr(spec, ':');
    const size_t n = c ? (size_t)(c - spec) : strlen(spec);
    if (n >= sizeof v->name)
        return -1;
    memcpy(v->name, spec, n);
    if (c && sscanf(c, ":%d:%d:%d:%d", &v->ns, &kb, &v->nw, &v->l2ahead) < 3)
        return -1;
    v->chunk = kb * 1024;
    v->sep = !strcmp(v->name, "sep") || !strcmp(v->name, "sep_pdl") || !strcmp(v->name, "sep1");
    v->sep_blocks = !strcmp(v->name, "sep1") ? 1 : 4;
    v->pdl = !strcmp(v->name, "sep_pdl");
    v->copy_only = !strcmp(v->name, "per_copy");
    v->own = !strncmp(v->name, "own_", 4);
    v->rr = !strncmp(v->name, "rr_", 3);
    v->mr = !strncmp(v->name, "mr_", 3);
    int lean_len = 0; /* "leanR[w][f]_" */
    if (!strncmp(v->name, "lean", 4) && v->name[4] >= '1' && v->name[4] <= '4') {
        int i = 5;
        v->lane0 = v->name[i] == 'w';
        i += v->lane0;
        v->fixed = v->name[i] == 'f';
        i += v->fixed;
        v->dec = v->name[i] == 'd';
        i += v->dec;
        v->ll = v->name[i] == 'l';
        i += v->ll;
        if (v->name[i] == '_') {
            v->lean = v->name[4] - '0';
            lean_len = i + 1;
        }
    }
    const char *base = v->own                ? v->name + 4
                       : v->rr || v->mr      ? v->name + 3
                       : v->lean             ? v->name + lean_len
                                             : v->name;
    v->calc_only = !strcmp(base, "per_calc");
    v->free = !strcmp(base, "per_free") || v->copy_only || v->calc_only;
    v->ahead = !strcmp(base, "per_pf") || v->free;
    if (!v->sep && strcmp(base, "per_wait") && !v->ahead)
        return -1;
    if ((v->dec || v->ll) && (!v->fixed || v->lean > 2 || v->free || (v->dec && v->ll)))
        return -1;
    if (v->own && v->nw > v->ns) /* a slot's parity wait must not see the fill before */
        return -1;
    if (v->l2ahead < 0 || v->l2ahead > 64)
        return -1;
    if (v->ns < 1 || v->nw < 1 || v->nw > (v->lean ? PP_LEANNW : PP_MAXNW) || v->chunk < PP_MAXCOLS * 2 || v->chunk % 16)
        return -1;
    return 0;
}

static size_t persist_smem(const pp_variant *v) {
    return (size_t)v->ns * (v->chunk + 16) + PP_MAXCOLS * 4 * (v->dec ? 2 : 1) + 32;
}

/* Capture one pass of a variant into a graph. */
static cudaError_t capture(const pp_variant *v, pp_plan *plan, unsigned *bar, unsigned *epoch, const float *x0,
                           const float *x0s, int n_sm, cudaStream_t st, cudaGraphExec_t *exec) {
    cudaGraph_t g;
    cudaError_t e = cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
    if (e != cudaSuccess)
        return e;
    cudaMemcpyAsync(plan->buf[0], v->dec ? x0s : x0, PP_MAXCOLS * sizeof(float), cudaMemcpyDeviceToDevice, st);
    if (v->sep) {
        for (int p = 0; p < plan->n; p++) {
            cudaLaunchConfig_t cfg = {};
            cudaLaunchAttribute at[1] = {};
            cfg.gridDim = dim3((unsigned)(n_sm * v->sep_blocks));
            cfg.blockDim = dim3(PP_SEP_THREADS);
            cfg.stream = st;
            at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            at[0].val.programmaticStreamSerializationAllowed = 1;
            cfg.attrs = at;
            cfg.numAttrs = v->pdl && p > 0 ? 1 : 0;
            cudaLaunchKernelEx(&cfg, sep_kernel, plan->ph[p], (const float *)plan->buf[p & 1],
                               plan->buf[(p + 1) & 1]);
        }
    } else {
        plan->ns = v->ns;
        plan->chunk = v->chunk;
        plan->nw = v->nw;
        plan->l2ahead = v->l2ahead;
        plan->ahead = v->ahead;
        plan->free = v->free;
        plan->copy_only = v->copy_only;
        plan->own = v->own;
        plan->rr = v->rr;
        plan->mr = v->mr;
        plan->calc_only = v->calc_only;
        plan->lane0 = v->lane0;
        cudaMemsetAsync(bar, 0, sizeof(unsigned), st);
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3((unsigned)n_sm);
        cfg.blockDim = dim3((unsigned)(32 * (v->nw + 1)));
        cfg.dynamicSmemBytes = persist_smem(v);
        cfg.stream = st;
        if (v->ll)
            epoch_kernel<<<1, 1, 0, st>>>(epoch);
        cudaLaunchKernelEx(&cfg, kernel_of(v->lean, v->fixed, v->dec, v->ll), (const pp_plan)*plan, bar,
                           (const unsigned *)epoch);
    }
    e = cudaStreamEndCapture(st, &g);
    if (e != cudaSuccess)
        return e;
    e = cudaGraphInstantiate(exec, g, 0);
    cudaGraphDestroy(g);
    return e;
}

/* The read kernel's and cudaMemcpy's rates over the weights (GB/s). */
static int measure_floor(const uint4 *w, size_t total, int n_sm, cudaStream_t st, unsigned *sink,
                         double *read_gbs, double *copy_gbs) {
    cudaEvent_t a, b;
    float ms = 0;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    read_kernel<<<n_sm * 8, 512, 0, st>>>(w, total / 16, sink);
    cudaEventRecord(a, st);
    for (int i = 0; i < 5; i++)
        read_kernel<<<n_sm * 8, 512, 0, st>>>(w, total / 16, sink);
    cudaEventRecord(b, st);
    CK(cudaEventSynchronize(b));
    cudaEventElapsedTime(&ms, a, b);
    *read_gbs = 5.0 * total / (ms * 1e-3) / 1e9;
    void *cp;
    const size_t half = total / 2;
    CK(cudaMalloc(&cp, half));
    cudaMemcpyAsync(cp, w, half, cudaMemcpyDeviceToDevice, st);
    cudaEventRecord(a, st);
    for (int i = 0; i < 5; i++)
        cudaMemcpyAsync(cp, w, half, cudaMemcpyDeviceToDevice, st);
    cudaEventRecord(b, st);
    CK(cudaEventSynchronize(b));
    cudaEventElapsedTime(&ms, a, b);
    *copy_gbs = 5.0 * 2.0 * half / (ms * 1e-3) / 1e9;
    CK(cudaFree(cp));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 0;
}

/* Everything a timed run needs. */
typedef struct pp_run {
    pp_plan plan;
    unsigned *bar, *epoch, *sink;
    float *x0, *x0s;     /* phase 0's x, plain and in the split layout */
    float *host, *ref;   /* the last phase's output, and the first checked variant's */
    int have_ref, out_n;
    cudaStream_t st;
    int n_sm, clock_khz, iters, layers;
    size_t total;        /* weight bytes */
    double floor_us;
} pp_run;

/* 0, or 77 (ctest: skipped) where there is no Hopper GPU. */
static int check_device(cudaDeviceProp *prop) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("persist_probe: skipped: no CUDA device\n");
        return 77;
    }
    if (cudaGetDeviceProperties(prop, 0) != cudaSuccess || prop->major != 9) {
        printf("persist_probe: skipped: needs a Hopper GPU (compute capability 9.x)\n");
        return 77;
    }
    return 0;
}

/* The weights (random bf16, one block per phase) and the plan's phases. */
static int build_weights(pp_run *R, const char *mode) {
    size_t off[PP_MAXPH];
    R->total = 0;
    R->plan.n = R->layers * 4;
    for (int p = 0; p < R->plan.n; p++) {
        int r, c;
        shape_of(mode, p, &r, &c);
        off[p] = R->total;
        R->total += (size_t)r * c * 2;
    }
    uint4 *w;
    CK(cudaMalloc(&w, R->total));
    fill_kernel<<<R->n_sm * 8, 256>>>(w, R->total / 16, 12345u);
    for (int p = 0; p < R->plan.n; p++) {
        pp_phase *ph = &R->plan.ph[p];
        ph->w = w + off[p] / 16;
        shape_of(mode, p, &ph->rows, &ph->cols);
        ph->scale = 1.3f / sqrtf((float)ph->cols);
    }
    R->out_n = R->plan.ph[R->plan.n - 1].rows;
    return 0;
}

/* The activations, barriers, tags and phase 0's x (plain and split). */
static int build_buffers(pp_run *R) {
    pp_plan *pl = &R->plan;
    R->host = (float *)malloc(12352 * sizeof(float));
    R->ref = (float *)malloc(12352 * sizeof(float));
    static float sp[PP_MAXCOLS]; /* phase 0's x in the split layout, staged here */
    if (!R->host || !R->ref) {
        fprintf(stderr, "persist_probe: out of host memory\n");
        return 1;
    }
    for (int i = 0; i < 2; i++) {
        CK(cudaMalloc(&pl->buf[i], 12352 * sizeof(float)));
        CK(cudaMalloc(&pl->ll[i], 12352 * sizeof(unsigned long long)));
        CK(cudaMemset(pl->ll[i], 0, 12352 * sizeof(unsigned long long))); /* tag 0: no pass's (epochs from 1) */
    }
    CK(cudaMalloc(&pl->stats, PP_NSTAT * sizeof(unsigned long long)));
    CK(cudaMalloc(&R->bar, sizeof(unsigned)));
    CK(cudaMalloc(&R->sink, sizeof(unsigned)));
    CK(cudaMalloc(&R->epoch, sizeof(unsigned)));
    CK(cudaMemset(R->epoch, 0, sizeof(unsigned)));
    const int n0 = pl->ph[0].cols;
    for (int i = 0; i < PP_MAXCOLS; i++) {
        R->host[i] = sinf(0.37f * (float)i);
        sp[i < n0 ? ((i & 4) ? n0 / 2 : 0) + (i >> 3) * 4 + (i & 3) : i] = R->host[i];
    }
    CK(cudaMalloc(&R->x0, PP_MAXCOLS * sizeof(float)));
    CK(cudaMalloc(&R->x0s, PP_MAXCOLS * sizeof(float)));
    CK(cudaMemcpy(R->x0, R->host, PP_MAXCOLS * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(R->x0s, sp, PP_MAXCOLS * sizeof(float), cudaMemcpyHostToDevice));
    for (int l = 0; l <= 4; l++)
        for (int f = 0; f < 8; f++)
            CK(cudaFuncSetAttribute(kernel_of(l, f & 1, (f >> 1) & 1, f >> 2),
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    return 0;
}

/* One variant: time it, check its output against the first checked
   variant's, print the line (and the persistent kernel's cycle accounting).
   *mismatch is set when the output differs. */
static int run_variant(pp_run *R, const pp_variant *v, const char *spec, int round, int *mismatch) {
    if (!v->sep) {
        int per_sm = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_of(v->lean, v->fixed, v->dec, v->ll),
                                                         32 * (v->nw + 1), persist_smem(v)));
        if (per_sm < 1) {
            printf("%s: does not fit an SM (%zu bytes of shared memory)\n", spec, persist_smem(v));
            return 0;
        }
    }
    cudaGraphExec_t ex;
    CK(cudaMemset(R->plan.stats, 0, PP_NSTAT * sizeof(unsigned long long)));
    CK(capture(v, &R->plan, R->bar, R->epoch, R->x0, R->x0s, R->n_sm, R->st, &ex));
    const double us = time_graph(ex, R->st, R->iters);
    CK(cudaStreamSynchronize(R->st));
    CK(cudaGetLastError());
    CK(cudaMemcpy(R->host, R->plan.buf[R->plan.n & 1], R->out_n * sizeof(float), cudaMemcpyDeviceToHost));
    const int check = !v->free;
    if (check && !R->have_ref) {
        memcpy(R->ref, R->host, R->out_n * sizeof(float));
        R->have_ref = 1;
    }
    double maxd = 0, norm = 0;
    for (int i = 0; i < R->out_n; i++) {
        maxd = fmax(maxd, fabs((double)R->host[i] - R->ref[i]));
        norm += (double)R->host[i] * R->host[i];
    }
    printf("round %d %-18s %8.1f us  %6.2f us/layer  %6.0f GB/s  %5.1f%% of the read floor  ", round, spec, us,
           us / R->layers, R->total / (us * 1e-6) / 1e9, 100.0 * R->floor_us / us);
    if (check)
        printf("max |diff| vs the first %.3g (rms %.3g)\n", maxd, sqrt(norm / R->out_n));
    else
        printf("(values not checked)\n");
    if (check && maxd != 0.0)
        *mismatch = 1;
    if (!v->sep) {
        unsigned long long h[PP_NSTAT];
        CK(cudaMemcpy(h, R->plan.stats, sizeof h, cudaMemcpyDeviceToHost));
        const double per = (double)(R->iters + 3) * R->n_sm * (R->clock_khz * 1e3) / 1e6; /* cycles per us */
        printf("    per CTA and pass, us:");
        for (int i = 0; i < PP_NSTAT; i++)
            printf(" %s %.1f%s", st_name[i], h[i] / per, i + 1 < PP_NSTAT ? "," : "\n");
    }
    cudaGraphExecDestroy(ex);
    return 0;
}

/* Set up on the device, measure the floor, run every variant twice. */
static int run_all(pp_run *R, const char *mode, const pp_variant *vars, const char *const *specs, int nvar) {
    cudaDeviceProp prop;
    const int dev = check_device(&prop);
    if (dev)
        return dev;
    R->n_sm = prop.multiProcessorCount;
    CK(cudaDeviceGetAttribute(&R->clock_khz, cudaDevAttrClockRate, 0));
    printf("device: %s, %d SMs; mode %s\n", prop.name, R->n_sm, mode);
    if (build_weights(R, mode) || build_buffers(R))
        return 1;
    CK(cudaStreamCreateWithFlags(&R->st, cudaStreamNonBlocking));
    CK(cudaDeviceSynchronize());

    double read_gbs, copy_gbs;
    if (measure_floor(R->plan.ph[0].w, R->total, R->n_sm, R->st, R->sink, &read_gbs, &copy_gbs))
        return 1;
    R->floor_us = R->total / (read_gbs * 1e9) * 1e6;
    printf("weights %.1f MB (%d layers x 4 GEMVs); read kernel %.0f GB/s, cudaMemcpy %.0f GB/s (read + write); "
           "floor %.1f us (%.2f us a layer)\n",
           R->total / 1e6, R->layers, read_gbs, copy_gbs, R->floor_us, R->floor_us / R->layers);

    int mismatch = 0;
    for (int round = 0; round < 2; round++)
        for (int vi = 0; vi < nvar; vi++)
            if (run_variant(R, &vars[vi], specs[vi], round, &mismatch))
                return 1;
    if (mismatch)
        printf("FAIL: a variant's output differs from the first's\n");
    return mismatch;
}

int main(int argc, char **argv) {
    static pp_run R; /* the plan is ~3 KB */
    R.layers = argc > 1 ? atoi(argv[1]) : 8;
    R.iters = argc > 2 ? atoi(argv[2]) : 20;
    const char *mode = argc > 3 ? argv[3] : "layer";
    const char *defaults[] = {"sep", "sep_pdl", "per_wait", "per_pf"};
    const int nvar = argc > 4 ? argc - 4 : 4;
    const char *const *specs = argc > 4 ? (const char *const *)argv + 4 : defaults;
    if (R.layers < 1 || R.layers * 4 > PP_MAXPH || R.iters < 1 ||
        (strcmp(mode, "layer") && strcmp(mode, "big") && strcmp(mode, "small"))) {
        fprintf(stderr,
                "usage: persist_probe [layers 1..%d] [iterations >= 1] [layer|big|small] [VARIANT...]\n"
                "  VARIANT: sep | sep_pdl | sep1 | [PREFIX]MODE[:SLOTS:KB:WARPS[:L2AHEAD]]\n"
                "  MODE: per_wait | per_pf | per_free | per_copy | per_calc\n"
                "  PREFIX: own_ | rr_ | mr_ | leanR_ | leanRw_ | leanRf_ | leanRfd_ | leanRfl_ (R = 1..4)\n",
                PP_MAXPH / 4);
        return 2;
    }
    pp_variant *vars = (pp_variant *)calloc((size_t)nvar, sizeof *vars);
    int rc = vars ? 0 : 1;
    for (int i = 0; i < nvar && !rc; i++)
        if (parse_variant(specs[i], &vars[i])) {
            fprintf(stderr, "persist_probe: bad variant '%s'\n", specs[i]);
            rc = 2;
        }
    if (!rc)
        rc = run_all(&R, mode, vars, specs, nvar);
    free(vars);
    free(R.host);
    free(R.ref);
    return rc;
}
