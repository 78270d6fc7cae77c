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
 * and their down as 2048 x 4608), 8 layers of distinct weights (~1 GB, so
 * nothing stays in L2), four ways, each phase reading the previous phase's
 * output:
 *
 *   sep       one kernel per GEMV, in a CUDA graph, no PDL
 *   sep_pdl   the same with programmatic dependent launch
 *   per_wait  one persistent kernel (a CTA per SM), a grid barrier between
 *             phases; a producer warp copies the CTA's weight rows into a
 *             shared-memory ring with bulk copies (TMA) only once the
 *             phase's barrier has passed
 *   per_pf    the same, the producer running ahead across the barriers
 *             (bounded only by the ring)
 *
 * Every variant sums each row in the same order (row_dot), so their outputs
 * must agree bit for bit; the probe checks it. The floor is the weight bytes
 * over the read bandwidth of a plain streaming kernel over the same buffer,
 * measured in the same run (and cudaMemcpy's copy rate, for reference).
 *
 * Usage: persist_probe [layers (8)] [iterations (20)]
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PP_MAXPH 64          /* phases (4 a layer) */
#define PP_CHUNK (32 * 1024) /* bytes a ring slot holds (whole rows) */
#define PP_NS 6              /* ring slots */
#define PP_NW 8              /* consumer warps */
#define PP_MAXCOLS 4608
#define PP_SEP_THREADS 256

#define CK(x)                                                                                        \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "persist_probe: %s failed: %s\n", #x, cudaGetErrorString(e_));          \
            return 1;                                                                                \
        }                                                                                            \
    } while (0)

typedef struct pp_phase {
    const uint4 *w; /* [rows, cols] bf16, row-major */
    int rows, cols;
    float scale; /* keeps the chain's values O(1) */
} pp_phase;

typedef struct pp_plan {
    pp_phase ph[PP_MAXPH];
    int n;
    float *buf[2]; /* phase p reads buf[p & 1], writes buf[(p + 1) & 1] */
} pp_plan;

/* ---- the shared row sum: lane's 16-byte pieces lane, lane + 32, ... in
   batches of 8 loads, then the warp sum. w may be global or shared. ---- */

static __device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
static __device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

static __device__ __forceinline__ float dot8(uint4 q, const float *x) {
    float a = bf_lo(q.x) * x[0];
    a = fmaf(bf_hi(q.x), x[1], a);
    a = fmaf(bf_lo(q.y), x[2], a);
    a = fmaf(bf_hi(q.y), x[3], a);
    a = fmaf(bf_lo(q.z), x[4], a);
    a = fmaf(bf_hi(q.z), x[5], a);
    a = fmaf(bf_lo(q.w), x[6], a);
    return fmaf(bf_hi(q.w), x[7], a);
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
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        acc += __shfl_xor_sync(0xffffffffu, acc, o);
    return acc;
}

/* ---- one kernel per GEMV ---- */

static __global__ void __launch_bounds__(PP_SEP_THREADS) sep_kernel(pp_phase ph, const float *in, float *out) {
    __shared__ float xs[PP_MAXCOLS];
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory"); /* a no-op without PDL */
    for (int i = threadIdx.x; i < ph.cols; i += blockDim.x)
        xs[i] = __ldcg(in + i);
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
static __device__ __forceinline__ void consumers_sync(void) {
    asm volatile("bar.sync 1, %0;" ::"r"(PP_NW * 32) : "memory");
}

/* The CTA's rows of a phase and how many fit a ring slot. */
typedef struct pp_share {
    int r0, r1, rpc, nchunk, nv;
} pp_share;

static __device__ __forceinline__ pp_share share_of(const pp_phase *ph) {
    pp_share s;
    const int G = (int)gridDim.x, b = (int)blockIdx.x;
    s.r0 = (int)((long long)b * ph->rows / G);
    s.r1 = (int)((long long)(b + 1) * ph->rows / G);
    s.nv = ph->cols / 8;
    s.rpc = PP_CHUNK / (ph->cols * 2);
    s.nchunk = (s.r1 - s.r0 + s.rpc - 1) / s.rpc;
    return s;
}

/* Warp 0 lane 0: every phase's rows of this CTA, slot after slot. With
   ahead == 0 a phase's first copy waits for its grid barrier. */
static __device__ void produce(const pp_plan *plan, uint4 *ring, unsigned long long *full,
                               unsigned long long *empty, const unsigned *bar, int ahead) {
    const unsigned G = gridDim.x;
    unsigned k = 0;
    for (int p = 0; p < plan->n; p++) {
        const pp_phase *ph = &plan->ph[p];
        const pp_share s = share_of(ph);
        if (!ahead)
            while (ld_acquire(bar) < (unsigned)p * G) {
            }
        for (int c = 0; c < s.nchunk; c++, k++) {
            const unsigned slot = k % PP_NS;
            if (k >= PP_NS)
                mbar_wait(&empty[slot], ((k / PP_NS) - 1) & 1);
            const int row = s.r0 + c * s.rpc;
            const int n = min(s.rpc, s.r1 - row);
            const unsigned bytes = (unsigned)(n * ph->cols * 2);
            mbar_expect(&full[slot], bytes);
            bulk_copy(ring + (size_t)slot * (PP_CHUNK / 16), ph->w + (size_t)row * s.nv, bytes, &full[slot]);
        }
    }
}

/* Warps 1..PP_NW: per phase, wait for the grid, stage x, then a row per warp
   from each slot as it fills; then this CTA's arrival at the grid barrier. */
static __device__ void consume(const pp_plan *plan, const uint4 *ring, float *xs, unsigned long long *full,
                               unsigned long long *empty, unsigned *bar) {
    const int ct = (int)threadIdx.x - 32, warp = ct / 32, lane = ct & 31;
    const unsigned G = gridDim.x;
    unsigned k = 0;
    for (int p = 0; p < plan->n; p++) {
        const pp_phase *ph = &plan->ph[p];
        const pp_share s = share_of(ph);
        const float *in = plan->buf[p & 1];
        float *out = plan->buf[(p + 1) & 1];
        if (ct == 0)
            while (ld_acquire(bar) < (unsigned)p * G) {
            }
        consumers_sync();
        for (int i = ct; i < ph->cols; i += PP_NW * 32)
            xs[i] = __ldcg(in + i);
        consumers_sync();
        for (int c = 0; c < s.nchunk; c++, k++) {
            const unsigned slot = k % PP_NS;
            mbar_wait(&full[slot], (k / PP_NS) & 1);
            const int row = s.r0 + c * s.rpc;
            const int n = min(s.rpc, s.r1 - row);
            const uint4 *base = ring + (size_t)slot * (PP_CHUNK / 16);
            for (int r = warp; r < n; r += PP_NW) {
                const float y = row_dot(base + (size_t)r * s.nv, xs, s.nv, lane);
                if (lane == 0)
                    __stcg(out + row + r, y * ph->scale);
            }
            __syncwarp();
            if (lane == 0)
                mbar_arrive(&empty[slot]);
        }
        consumers_sync();
        if (ct == 0) {
            __threadfence();
            atomicAdd(bar, 1u);
        }
    }
}

static __global__ void __launch_bounds__(32 * (PP_NW + 1), 1)
    persist_kernel(const __grid_constant__ pp_plan plan, unsigned *bar, int ahead) {
    extern __shared__ __align__(128) unsigned char smem[];
    uint4 *ring = (uint4 *)smem;
    float *xs = (float *)(smem + PP_NS * PP_CHUNK);
    unsigned long long *full = (unsigned long long *)(xs + PP_MAXCOLS);
    unsigned long long *empty = full + PP_NS;
    if (threadIdx.x == 0) {
        for (int i = 0; i < PP_NS; i++) {
            mbar_init(&full[i], 1);
            mbar_init(&empty[i], PP_NW);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        if (threadIdx.x == 0)
            produce(&plan, ring, full, empty, bar, ahead);
    } else {
        consume(&plan, ring, xs, full, empty, bar);
    }
}

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

static const int layer_shape[4][2] = {{12352, 2048}, {2048, 4096}, {9216, 2048}, {2048, 4608}};

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

/* Capture one pass of a variant into a graph. */
static cudaError_t capture(const char *v, const pp_plan *plan, unsigned *bar, const float *x0, int n_sm,
                           cudaStream_t st, cudaGraphExec_t *exec) {
    cudaGraph_t g;
    cudaError_t e = cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
    if (e != cudaSuccess)
        return e;
    cudaMemcpyAsync(plan->buf[0], x0, PP_MAXCOLS * sizeof(float), cudaMemcpyDeviceToDevice, st);
    if (!strncmp(v, "sep", 3)) {
        const int pdl = !strcmp(v, "sep_pdl");
        for (int p = 0; p < plan->n; p++) {
            cudaLaunchConfig_t cfg = {};
            cudaLaunchAttribute at[1] = {};
            cfg.gridDim = dim3((unsigned)(n_sm * 4));
            cfg.blockDim = dim3(PP_SEP_THREADS);
            cfg.stream = st;
            at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            at[0].val.programmaticStreamSerializationAllowed = 1;
            cfg.attrs = at;
            cfg.numAttrs = pdl && p > 0 ? 1 : 0;
            cudaLaunchKernelEx(&cfg, sep_kernel, plan->ph[p], (const float *)plan->buf[p & 1],
                               plan->buf[(p + 1) & 1]);
        }
    } else {
        cudaMemsetAsync(bar, 0, sizeof(unsigned), st);
        const int ahead = !strcmp(v, "per_pf");
        const size_t smem = PP_NS * PP_CHUNK + PP_MAXCOLS * 4 + 2 * PP_NS * 8;
        persist_kernel<<<n_sm, 32 * (PP_NW + 1), smem, st>>>(*plan, bar, ahead);
    }
    e = cudaStreamEndCapture(st, &g);
    if (e != cudaSuccess)
        return e;
    e = cudaGraphInstantiate(exec, g, 0);
    cudaGraphDestroy(g);
    return e;
}

int main(int argc, char **argv) {
    const int layers = argc > 1 ? atoi(argv[1]) : 8, iters = argc > 2 ? atoi(argv[2]) : 20;
    if (layers < 1 || layers * 4 > PP_MAXPH || iters < 1) {
        fprintf(stderr, "usage: persist_probe [layers 1..%d] [iterations >= 1]\n", PP_MAXPH / 4);
        return 2;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int n_sm = prop.multiProcessorCount;
    printf("device: %s, %d SMs\n", prop.name, n_sm);

    size_t total = 0, off[PP_MAXPH];
    pp_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.n = layers * 4;
    for (int p = 0; p < plan.n; p++) {
        off[p] = total;
        total += (size_t)layer_shape[p % 4][0] * layer_shape[p % 4][1] * 2;
    }
    uint4 *w;
    CK(cudaMalloc(&w, total));
    fill_kernel<<<n_sm * 8, 256>>>(w, total / 16, 12345u);
    for (int p = 0; p < plan.n; p++) {
        plan.ph[p].w = w + off[p] / 16;
        plan.ph[p].rows = layer_shape[p % 4][0];
        plan.ph[p].cols = layer_shape[p % 4][1];
        plan.ph[p].scale = 1.3f / sqrtf((float)plan.ph[p].cols);
    }
    float *x0, *host = (float *)malloc(PP_MAXCOLS * sizeof(float)), *ref = (float *)malloc(2048 * sizeof(float));
    unsigned *bar, *sink;
    CK(cudaMalloc(&plan.buf[0], 12352 * sizeof(float)));
    CK(cudaMalloc(&plan.buf[1], 12352 * sizeof(float)));
    CK(cudaMalloc(&x0, PP_MAXCOLS * sizeof(float)));
    CK(cudaMalloc(&bar, sizeof(unsigned)));
    CK(cudaMalloc(&sink, sizeof(unsigned)));
    for (int i = 0; i < PP_MAXCOLS; i++)
        host[i] = sinf(0.37f * (float)i);
    CK(cudaMemcpy(x0, host, PP_MAXCOLS * sizeof(float), cudaMemcpyHostToDevice));
    const size_t smem = PP_NS * PP_CHUNK + PP_MAXCOLS * 4 + 2 * PP_NS * 8;
    CK(cudaFuncSetAttribute(persist_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persist_kernel, 32 * (PP_NW + 1), smem));
    if (per_sm < 1) {
        fprintf(stderr, "persist_probe: the persistent kernel does not fit an SM\n");
        return 1;
    }
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CK(cudaDeviceSynchronize());

    /* the floors, measured now */
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    float ms = 0;
    read_kernel<<<n_sm * 8, 512, 0, st>>>(w, total / 16, sink);
    cudaEventRecord(a, st);
    for (int i = 0; i < 5; i++)
        read_kernel<<<n_sm * 8, 512, 0, st>>>(w, total / 16, sink);
    cudaEventRecord(b, st);
    CK(cudaEventSynchronize(b));
    cudaEventElapsedTime(&ms, a, b);
    const double read_gbs = 5.0 * total / (ms * 1e-3) / 1e9;
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
    const double copy_gbs = 5.0 * 2.0 * half / (ms * 1e-3) / 1e9;
    CK(cudaFree(cp));
    const double floor_us = total / (read_gbs * 1e9) * 1e6;
    printf("weights %.1f MB (%d layers x 4 GEMVs); read kernel %.0f GB/s, cudaMemcpy %.0f GB/s (read + write); "
           "floor %.1f us (%.2f us a layer)\n",
           total / 1e6, layers, read_gbs, copy_gbs, floor_us, floor_us / layers);

    const char *vars[] = {"sep", "sep_pdl", "per_wait", "per_pf"};
    int status = 0;
    for (int round = 0; round < 2; round++) {
        for (int vi = 0; vi < 4; vi++) {
            cudaGraphExec_t ex;
            CK(capture(vars[vi], &plan, bar, x0, n_sm, st, &ex));
            const double us = time_graph(ex, st, iters);
            CK(cudaStreamSynchronize(st));
            CK(cudaGetLastError());
            CK(cudaMemcpy(host, plan.buf[plan.n & 1], 2048 * sizeof(float), cudaMemcpyDeviceToHost));
            double maxd = 0, norm = 0;
            for (int i = 0; i < 2048; i++) {
                if (vi == 0 && round == 0)
                    ref[i] = host[i];
                maxd = fmax(maxd, fabs((double)host[i] - ref[i]));
                norm += (double)host[i] * host[i];
            }
            printf("round %d %-8s %8.1f us  %6.2f us/layer  %6.0f GB/s  %5.1f%% of the read floor  "
                   "max |diff| vs sep %.3g (rms %.3g)\n",
                   round, vars[vi], us, us / layers, total / (us * 1e-6) / 1e9, 100.0 * floor_us / us, maxd,
                   sqrt(norm / 2048));
            if (maxd != 0.0)
                status = 1;
            cudaGraphExecDestroy(ex);
        }
    }
    if (status)
        printf("FAIL: a variant's output differs from sep's\n");
    return status;
}
