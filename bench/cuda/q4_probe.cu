/* bench/cuda/q4_probe.cu - can a 4-bit decode GEMV stream at the HBM rate?
 *
 * A measurement for issue 5 (docs/CUDA.md, session 27), not part of the
 * engine. The engine's 4-bit GEMV (quant.cu, tensor cores on a repacked
 * layout) moved 1.4-2.1 TB/s on the H100/H200 against a 3.0-4.2 TB/s copy
 * floor, and end to end a q4 model decodes slower than the same model in
 * bf16 (docs/PERFORMANCE.md). A 4-bit weight is a quarter of a bf16 one, so a
 * kernel that dequantizes to fp32 and uses FMAs needs four times the
 * arithmetic per byte. This probe times two kernels on MLX's layout (eight
 * nibbles a uint32, weight j at bits 4j; a bf16 scale and bias per group of
 * 64: w = s q + b) against the read floor:
 *
 *   fma    nibbles to fp32 in registers (the 2^23 trick: one shift, one
 *          LOP3, one FADD each), one FMA each with x staged in shared memory
 *   dp4a   x as integers, as the CPU's quant_avx2_digits.c: per group a step
 *          sx = max |x| / (127 2^16), X = round(x / sx) = d2 2^16 + d1 2^8 +
 *          d0 with int8 digits, so sum q X is exact in int32 through dp4a (4
 *          products an instruction): 3 digits x 2 dp4a per 8 weights, the
 *          nibbles split by one AND and one shift-AND per word
 *
 * Both: a warp owns R rows and walks them lane-strided by 16 bytes (32
 * weights a lane), U vectors a row in flight, sharing what it stages from
 * shared memory between its rows. Each checks every output row against an
 * fp64 reference of dequantize-then-dot: |y - ref| <= 1e-5 sum |w x| (the
 * engine's bound for quantized kernels); the probe exits 1 if any row
 * exceeds it (ctest cuda_q4_probe: --check, small shapes, one pass), 77
 * without a device of compute capability 9.x (the binary is sm_90a).
 *
 * Usage: q4_probe [--check] [iterations (50)]
 * Prints per shape and kernel: us a launch, GB/s of weight bytes (packed +
 * scales + biases), % of the read floor measured in the same run.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_NAME "q4_probe"
#include "probe.h"

#define GS 64        /* weights a group */
#define Q4_TOL 1e-5  /* |y - ref| / sum |w x| */
#define NT 256       /* threads a block */

/* One 4-bit matrix [d, n]: n / 8 words a row, n / GS scales and biases. */
typedef struct {
    const uint32_t *w;
    const __nv_bfloat16 *s, *b;
    int d, n;
} q4m;

/* What the dp4a kernel needs of x: per word k of a row, six int32 of int8
 * digits (d2, d1, d0 of its even elements, each level followed by its odd
 * elements'), the step of each group and the sum of x over each 32 weights. */
typedef struct {
    const int4 *dig; /* [n / 8][6] int32 as int4 */
    const float *sx; /* [n / GS] */
    const float *xs; /* [n / 32] */
} q4x;

static __device__ __forceinline__ uint4 ld_nc(const uint4 *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

template <int R> static __device__ __forceinline__ void warp_sums(float (&a)[R]) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int r = 0; r < R; r++)
            a[r] += __shfl_xor_sync(0xffffffffu, a[r], o);
}

/* ---- x prepared for dp4a: one block of GS threads a group ---- */

__global__ void prep_kernel(const float *x, int n, int *dig, float *sx, float *xs) {
    __shared__ float wm[2];
    const int g = blockIdx.x, i = threadIdx.x, e = g * GS + i, lane = i & 31;
    const float v = x[e];
    float m = fabsf(v), s = v;
    for (int o = 16; o > 0; o >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        s += __shfl_xor_sync(0xffffffffu, s, o);
    }
    if (lane == 0) {
        wm[i >> 5] = m;
        xs[e >> 5] = s; /* the sum of this warp's 32 elements */
    }
    __syncthreads();
    m = fmaxf(wm[0], wm[1]);
    const float step = m > 0.0f ? m / (127.0f * 65536.0f) : 1.0f;
    if (i == 0)
        sx[g] = step;
    int X = __float2int_rn(v / step);
    X = X > 127 * 65536 ? 127 * 65536 : X < -127 * 65536 ? -127 * 65536 : X;
    const int d0 = ((X & 255) ^ 128) - 128, X1 = (X - d0) >> 8;
    const int d1 = ((X1 & 255) ^ 128) - 128, d2 = (X1 - d1) >> 8;
    const int k = e >> 3, j = (e & 7) >> 1, odd = e & 1;
    signed char *b = (signed char *)dig;
    b[(k * 6 + 0 + odd) * 4 + j] = (signed char)d2;
    b[(k * 6 + 2 + odd) * 4 + j] = (signed char)d1;
    b[(k * 6 + 4 + odd) * 4 + j] = (signed char)d0;
}

/* ---- the kernels ---- */

/* The rows of a warp (past the end: the last row again, results dropped)
 * and the first of its U x R vectors' weights, scales and biases. */
template <int R, int U>
static __device__ __forceinline__ void load_batch(const q4m &m, const int (&row)[R], int v0, int nv, uint4 (&w)[U][R],
                                                  float (&s)[U][R], float (&b)[U][R]) {
    const int ng = m.n / GS;
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int v = v0 + 32 * u;
            const bool ok = v < nv;
            w[u][r] = ok ? ld_nc((const uint4 *)(m.w + (size_t)row[r] * (m.n / 8)) + v) : make_uint4(0, 0, 0, 0);
            const size_t gi = (size_t)row[r] * ng + (ok ? v * 32 / GS : 0);
            s[u][r] = __bfloat162float(m.s[gi]);
            b[u][r] = __bfloat162float(m.b[gi]);
        }
}

/* q . d over one word's 8 weights at one digit level: the even nibbles
 * against the even elements' digits, then the odd ones. */
static __device__ __forceinline__ int word_dp4a(uint32_t q, int de, int dodd, int acc) {
    acc = __dp4a((int)(q & 0x0F0F0F0Fu), de, acc);
    return __dp4a((int)((q >> 4) & 0x0F0F0F0Fu), dodd, acc);
}

/* The walk both kernels share: warp w of the grid owns rows w R .. w R +
 * R - 1 and reads them lane-strided, U x R vectors of 16 bytes in flight
 * (load_batch); vec(v, w, s, b, acc) adds vector v (weights 32 v .. 32 v +
 * 31) of the R rows into acc; then the warp sums go to y. */
template <int R, int U, typename F>
static __device__ __forceinline__ void walk_rows(const q4m &m, float *y, const F &vec) {
    const int nv = m.n / 32, lane = threadIdx.x & 31, r0 = (blockIdx.x * (NT / 32) + (threadIdx.x >> 5)) * R;
    if (r0 >= m.d)
        return;
    int row[R];
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        row[r] = r0 + r < m.d ? r0 + r : m.d - 1;
        acc[r] = 0.0f;
    }
    for (int v0 = lane; v0 < nv; v0 += 32 * U) {
        uint4 w[U][R];
        float s[U][R], b[U][R];
        load_batch<R, U>(m, row, v0, nv, w, s, b);
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (v0 + 32 * u >= nv)
                break;
            vec(v0 + 32 * u, w[u], s[u], b[u], acc);
        }
    }
    warp_sums<R>(acc);
#pragma unroll
    for (int r = 0; r < R; r++)
        if (lane == 0 && r0 + r < m.d)
            y[r0 + r] = acc[r];
}

/* dp4a: the vector's 24 digit words and its group's step from shared memory,
 * once for the R rows. */
struct dp4a_vec {
    const int4 *sd;
    const float *ssx, *sxs;
    template <int R>
    __device__ __forceinline__ void operator()(int v, const uint4 (&w)[R], const float (&s)[R], const float (&b)[R],
                                               float (&acc)[R]) const {
        int dg[24];
#pragma unroll
        for (int q = 0; q < 6; q++) {
            const int4 t = sd[v * 6 + q];
            dg[4 * q] = t.x, dg[4 * q + 1] = t.y, dg[4 * q + 2] = t.z, dg[4 * q + 3] = t.w;
        }
        const float f = ssx[v * 32 / GS], xsum = sxs[v];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint32_t q4[4] = {w[r].x, w[r].y, w[r].z, w[r].w};
            int a2 = 0, a1 = 0, a0 = 0;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                a2 = word_dp4a(q4[k], dg[6 * k], dg[6 * k + 1], a2);
                a1 = word_dp4a(q4[k], dg[6 * k + 2], dg[6 * k + 3], a1);
                a0 = word_dp4a(q4[k], dg[6 * k + 4], dg[6 * k + 5], a0);
            }
            const float t = (float)a2 * 65536.0f + (float)(a1 * 256 + a0); /* |a1 256 + a0| < 2^24 */
            acc[r] += s[r] * f * t + b[r] * xsum;
        }
    }
};

template <int R, int U>
__global__ void __launch_bounds__(NT) dp4a_kernel(q4m m, q4x px, float *y) {
    extern __shared__ int4 sm[];
    const int nw = m.n / 8; /* words a row */
    int4 *sd = sm;
    float *ssx = (float *)(sm + nw * 6 / 4), *sxs = ssx + m.n / GS;
    for (int i = threadIdx.x; i < nw * 6 / 4; i += NT)
        sd[i] = px.dig[i];
    for (int i = threadIdx.x; i < m.n / GS; i += NT)
        ssx[i] = px.sx[i];
    for (int i = threadIdx.x; i < m.n / 32; i += NT)
        sxs[i] = px.xs[i];
    __syncthreads();
    walk_rows<R, U>(m, y, dp4a_vec{sd, ssx, sxs});
}

/* Nibble j of q as a float: 2^23 + q read as an fp32, minus 2^23 (exact). */
static __device__ __forceinline__ float nib(uint32_t q, int j) {
    return __uint_as_float(((q >> (4 * j)) & 15u) | 0x4B000000u) - 8388608.0f;
}

/* fma: each nibble an fp32, one FMA with x; x's float4 loads once for the R rows. */
struct fma_vec {
    const float *sx, *sxs;
    template <int R>
    __device__ __forceinline__ void operator()(int v, const uint4 (&w)[R], const float (&s)[R], const float (&b)[R],
                                               float (&acc)[R]) const {
        float qx[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            qx[r] = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float4 xa = ((const float4 *)sx)[v * 8 + 2 * k], xb = ((const float4 *)sx)[v * 8 + 2 * k + 1];
#pragma unroll
            for (int r = 0; r < R; r++) {
                const uint32_t q = k == 0 ? w[r].x : k == 1 ? w[r].y : k == 2 ? w[r].z : w[r].w;
                float a = qx[r];
                a = fmaf(nib(q, 0), xa.x, a);
                a = fmaf(nib(q, 1), xa.y, a);
                a = fmaf(nib(q, 2), xa.z, a);
                a = fmaf(nib(q, 3), xa.w, a);
                a = fmaf(nib(q, 4), xb.x, a);
                a = fmaf(nib(q, 5), xb.y, a);
                a = fmaf(nib(q, 6), xb.z, a);
                qx[r] = fmaf(nib(q, 7), xb.w, a);
            }
        }
        const float xsum = sxs[v];
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[r] += s[r] * qx[r] + b[r] * xsum;
    }
};

template <int R, int U>
__global__ void __launch_bounds__(NT) fma_kernel(q4m m, const float *x, float *y) {
    extern __shared__ int4 sm[];
    float *sx = (float *)sm, *sxs = sx + m.n; /* x, then its sum over each 32 weights */
    for (int i = threadIdx.x; i < m.n / 4; i += NT)
        sm[i] = ((const int4 *)x)[i];
    for (int i = threadIdx.x; i < m.n / 32; i += NT) {
        float t = 0.0f;
        for (int e = 0; e < 32; e++)
            t += x[i * 32 + e];
        sxs[i] = t;
    }
    __syncthreads();
    walk_rows<R, U>(m, y, fma_vec{sx, sxs});
}

/* fp64 reference: ref = sum (s q + b) x, mag = sum |(s q + b) x|; a thread a row. */
__global__ void ref_kernel(q4m m, const float *x, double *ref, double *mag) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= m.d)
        return;
    double a = 0.0, g = 0.0;
    for (int e = 0; e < m.n; e++) {
        const uint32_t q = m.w[(size_t)r * (m.n / 8) + e / 8];
        const size_t gi = (size_t)r * (m.n / GS) + e / GS;
        const double w = (double)__bfloat162float(m.s[gi]) * (double)((q >> (4 * (e & 7))) & 15u) +
                         (double)__bfloat162float(m.b[gi]);
        a += w * (double)x[e];
        g += fabs(w * (double)x[e]);
    }
    ref[r] = a;
    mag[r] = g;
}

/* The read floor: every 16-byte vector of buf read once, a grid-stride loop. */
__global__ void read_kernel(const uint4 *buf, size_t n, unsigned *sink) {
    unsigned a = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = ld_nc(buf + i);
        a ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (a == 0x9e3779b9u)
        *sink = a;
}

/* ---- host ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rndf(void) { return (float)(rnd32() & 0xffffff) / 16777216.0f * 2.0f - 1.0f; } /* [-1, 1) */

static uint16_t bf16_bits(float f) { /* round to nearest even (finite values) */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

typedef struct {
    const char *name;
    int d, n;
} shape;

typedef struct {
    q4m *m;  /* the copies, cycled so that nothing stays in L2 */
    int nc;
    float *x, *y;
    q4x px;
    size_t bytes; /* weight bytes of one copy */
} bench_set;

/* One kernel over the set: fills y for copy c. */
typedef enum { K_DP4A, K_FMA } kind;
static const char *const kname[] = {"dp4a", "fma"};
#define KR 4
#define KU 2

static size_t smem_of(kind k, int n) {
    return k == K_DP4A ? (size_t)n / 8 * 24 + (size_t)n / GS * 4 + (size_t)n / 32 * 4
                       : (size_t)n * 4 + (size_t)n / 32 * 4;
}

static cudaError_t launch(kind k, const bench_set *b, int c) {
    const q4m m = b->m[c];
    const unsigned grid = (unsigned)((m.d + (NT / 32) * KR - 1) / ((NT / 32) * KR));
    const size_t sm = smem_of(k, m.n);
    if (k == K_DP4A)
        dp4a_kernel<KR, KU><<<grid, NT, sm>>>(m, b->px, b->y);
    else
        fma_kernel<KR, KU><<<grid, NT, sm>>>(m, b->x, b->y);
    return cudaGetLastError();
}

/* Random weights (scales ~0.01-0.03, biases -8 s +- noise) in nc copies. */
static int make_set(const shape *sh, int nc, bench_set *b) {
    const int d = sh->d, n = sh->n, ng = n / GS;
    const size_t nwords = (size_t)d * n / 8, nsb = (size_t)d * ng;
    memset(b, 0, sizeof *b);
    b->nc = nc;
    b->bytes = nwords * 4 + nsb * 4;
    b->m = (q4m *)calloc((size_t)nc, sizeof(q4m));
    uint32_t *hw = (uint32_t *)malloc(nwords * 4);
    uint16_t *hs = (uint16_t *)malloc(nsb * 2), *hb = (uint16_t *)malloc(nsb * 2);
    float *hx = (float *)malloc((size_t)n * 4);
    if (!b->m || !hw || !hs || !hb || !hx) {
        fprintf(stderr, "q4_probe: out of host memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) /* a spread of magnitudes across groups, as activations have */
        hx[i] = rndf() * ((i / GS) % 7 == 3 ? 40.0f : (i / GS) % 5 == 1 ? 0.02f : 1.0f);
    for (int c = 0; c < nc; c++) {
        for (size_t i = 0; i < nwords; i++)
            hw[i] = rnd32();
        for (size_t i = 0; i < nsb; i++) {
            const float s = 0.01f + 0.02f * (rndf() * 0.5f + 0.5f);
            hs[i] = bf16_bits(s);
            hb[i] = bf16_bits(-8.0f * s + 0.01f * rndf());
        }
        void *dw, *ds, *db;
        CK(cudaMalloc(&dw, nwords * 4));
        CK(cudaMalloc(&ds, nsb * 2));
        CK(cudaMalloc(&db, nsb * 2));
        CK(cudaMemcpy(dw, hw, nwords * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(ds, hs, nsb * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(db, hb, nsb * 2, cudaMemcpyHostToDevice));
        b->m[c] = (q4m){(const uint32_t *)dw, (const __nv_bfloat16 *)ds, (const __nv_bfloat16 *)db, d, n};
    }
    void *dig, *sx, *xs;
    CK(cudaMalloc((void **)&b->x, (size_t)n * 4));
    CK(cudaMalloc((void **)&b->y, (size_t)d * 4));
    CK(cudaMalloc(&dig, (size_t)n / 8 * 24));
    CK(cudaMalloc(&sx, (size_t)ng * 4));
    CK(cudaMalloc(&xs, (size_t)n / 32 * 4));
    CK(cudaMemcpy(b->x, hx, (size_t)n * 4, cudaMemcpyHostToDevice));
    prep_kernel<<<ng, GS>>>(b->x, n, (int *)dig, (float *)sx, (float *)xs);
    CK(cudaGetLastError());
    b->px = (q4x){(const int4 *)dig, (const float *)sx, (const float *)xs};
    free(hw), free(hs), free(hb), free(hx);
    return 0;
}

static void free_set(bench_set *b) {
    for (int c = 0; c < b->nc; c++) {
        cudaFree((void *)b->m[c].w);
        cudaFree((void *)b->m[c].s);
        cudaFree((void *)b->m[c].b);
    }
    cudaFree(b->x), cudaFree(b->y);
    cudaFree((void *)b->px.dig), cudaFree((void *)b->px.sx), cudaFree((void *)b->px.xs);
    free(b->m);
}

/* Every row of kernel k on copy 0 against the fp64 reference: the largest
 * |y - ref| / sum |w x| in *err. */
static int check(kind k, const bench_set *b, double *err) {
    const int d = b->m[0].d;
    double *dref, *dmag;
    CK(cudaMalloc((void **)&dref, (size_t)d * 8));
    CK(cudaMalloc((void **)&dmag, (size_t)d * 8));
    ref_kernel<<<(d + 127) / 128, 128>>>(b->m[0], b->x, dref, dmag);
    CK(cudaGetLastError());
    CK(cudaMemset(b->y, 0xff, (size_t)d * 4)); /* NaN: a row not written fails */
    CK(launch(k, b, 0));
    double *ref = (double *)malloc((size_t)d * 16), *mag = ref + d;
    float *y = (float *)malloc((size_t)d * 4);
    if (!ref || !y) {
        fprintf(stderr, "q4_probe: out of host memory\n");
        return 1;
    }
    CK(cudaMemcpy(ref, dref, (size_t)d * 8, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(mag, dmag, (size_t)d * 8, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(y, b->y, (size_t)d * 4, cudaMemcpyDeviceToHost));
    double worst = 0.0;
    for (int r = 0; r < d; r++) {
        const double e = fabs((double)y[r] - ref[r]) / (mag[r] > 0.0 ? mag[r] : 1.0);
        if (!(e <= worst)) /* larger, or NaN (a row not written) */
            worst = isnan(e) ? INFINITY : e;
    }
    *err = worst;
    free(ref), free(y);
    cudaFree(dref), cudaFree(dmag);
    return 0;
}

/* us a launch over iters launches, cycling the copies. */
static int time_kernel(kind k, const bench_set *b, int iters, double *us) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++)
        CK(launch(k, b, i % b->nc));
    CK(cudaEventRecord(e0));
    for (int i = 0; i < iters; i++)
        CK(launch(k, b, i % b->nc));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    *us = 1e3 * ms / iters;
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return 0;
}

/* The read floor, GB/s: read_kernel over 1 GiB, best of 5. */
static int read_floor(double *gbs) {
    const size_t bytes = (size_t)1 << 30;
    uint4 *buf;
    unsigned *sink;
    CK(cudaMalloc((void **)&buf, bytes));
    CK(cudaMalloc((void **)&sink, 4));
    CK(cudaMemset(buf, 1, bytes));
    int dev, nsm;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double best = 0.0;
    for (int i = 0; i < 6; i++) {
        CK(cudaEventRecord(e0));
        read_kernel<<<nsm * 8, NT>>>(buf, bytes / 16, sink);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i > 0 && bytes / (ms * 1e6) > best)
            best = bytes / (ms * 1e6);
    }
    *gbs = best;
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaFree(buf), cudaFree(sink);
    return 0;
}

int main(int argc, char **argv) {
    int checking = 0, iters = 50;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check"))
            checking = 1;
        else if (atoi(argv[i]) > 0)
            iters = atoi(argv[i]);
        else {
            fprintf(stderr, "usage: q4_probe [--check] [iterations (50)]\n");
            return 2;
        }
    }
    int ndev = 0;
    cudaDeviceProp prop;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1 || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        prop.major != 9) {
        printf("q4_probe: skipped (needs a compute capability 9.x GPU)\n");
        return 77;
    }
    CK(cudaFuncSetAttribute(dp4a_kernel<KR, KU>, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
    CK(cudaFuncSetAttribute(fma_kernel<KR, KU>, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
    static const shape big[] = {{"9B in_proj-like", 12288, 4096}, {"4096 x 4096", 4096, 4096},
                                {"9B down-like", 4096, 12288},    {"35B out_proj", 2048, 4096},
                                {"0.8B lm_head", 248320, 1024},   {"35B router", 256, 2048}};
    static const shape small[] = {{"odd rows", 37, 1024}, {"one group row", 9, 64}, {"4096 wide", 130, 4096}};
    const shape *shapes = checking ? small : big;
    const int ns = checking ? 3 : 6;
    double floor_gbs = 0.0;
    if (!checking && read_floor(&floor_gbs))
        return 1;
    if (checking)
        printf("%s: every kernel against the fp64 reference\n", prop.name);
    else
        printf("%s, %d SMs; read floor %.0f GB/s (1 GiB, best of 5); %d launches a kernel, back to back\n",
               prop.name, prop.multiProcessorCount, floor_gbs, iters);
    int bad = 0;
    for (int s = 0; s < ns; s++) {
        const size_t one = (size_t)shapes[s].d * shapes[s].n / 2;
        int nc = checking ? 1 : (int)((((size_t)512 << 20) + one - 1) / one); /* >= 512 MB: past L2 */
        nc = nc > iters + 3 ? iters + 3 : nc; /* ... or every launch its own copy */
        bench_set b;
        if (make_set(&shapes[s], nc, &b))
            return 1;
        for (int k = 0; k < 2; k++) {
            double err = 0.0, us = 0.0;
            if (check((kind)k, &b, &err) || (!checking && time_kernel((kind)k, &b, iters, &us)))
                return 1;
            const int ok = err <= Q4_TOL;
            bad |= !ok;
            if (checking)
                printf("%-16s [%d, %d] %-5s max |y - ref| / sum |w x| %.2e (tolerance %.0e) %s\n", shapes[s].name,
                       shapes[s].d, shapes[s].n, kname[k], err, Q4_TOL, ok ? "ok" : "FAILED");
            else
                printf("%-16s [%6d, %5d] %-5s %8.2f us  %6.0f GB/s  %5.1f%% of the read floor  err %.1e %s\n",
                       shapes[s].name, shapes[s].d, shapes[s].n, kname[k], us, b.bytes / (us * 1e3),
                       100.0 * b.bytes / (us * 1e3) / floor_gbs, err, ok ? "" : "FAILED");
        }
        free_set(&b);
    }
    return bad ? 1 : 0;
}
