/* ops/cuda/cuda_common.cuh - what every CUDA kernel file shares: the backend
 * context, error macros, weight loads and warp reductions.
 *
 * Conventions (docs/CUDA.md): every kernel runs on ctx->stream, in order, so
 * slots return without waiting; only download() and sync() wait. The ops
 * slots return void, so a failing CUDA call inside one records the message
 * through DR_FAIL (dr_last_error) and sets ctx->failed; the next fallible
 * entry point (weight_upload, download through dr_cuda_failed) sees it.
 * All math is fp32 (no fast-math); weights are widened from their file dtype
 * in registers. Nothing here exits or aborts.
 */
#ifndef DR_OPS_CUDA_COMMON_CUH
#define DR_OPS_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ops/cuda/timeline.cuh"

extern "C" {
#include "ops/ops.h"
#include "util/status.h"
}

/* ---- errors ---- */

/* Map a CUDA error to the library's status codes. */
static inline dr_status dr_cuda_status(cudaError_t e) {
    if (e == cudaErrorMemoryAllocation)
        return DR_ERR_NOMEM;
    if (e == cudaErrorNoDevice || e == cudaErrorInvalidDevice || e == cudaErrorNoKernelImageForDevice ||
        e == cudaErrorInsufficientDriver)
        return DR_ERR_UNSUPPORTED;
    return DR_ERR_DEVICE; /* the device failed */
}

/* In a function returning dr_status: run `stmt`; on failure record the
 * statement, file, line and CUDA's message, and return the status. */
#define DR_CUDA_CHECK(stmt)                                                                          \
    do {                                                                                             \
        cudaError_t dr_ce_ = (stmt);                                                                 \
        if (dr_ce_ != cudaSuccess)                                                                   \
            return DR_FAIL(dr_cuda_status(dr_ce_), "CUDA: %s failed: %s", #stmt,                     \
                           cudaGetErrorString(dr_ce_));                                              \
    } while (0)

/* In a void slot: record a failure of `stmt` in ctx (sticky) and go on; the
 * outputs of a failed slot are undefined, the error surfaces later. */
#define DR_CUDA_NOTE(cx, stmt)                                                                       \
    do {                                                                                             \
        cudaError_t dr_ce_ = (stmt);                                                                 \
        if (dr_ce_ != cudaSuccess)                                                                   \
            dr_cuda_note_fail((cx), __FILE__, __LINE__, #stmt, dr_ce_);                              \
    } while (0)

/* After a kernel launch in a void slot. */
#define DR_CUDA_LAUNCHED(cx) DR_CUDA_NOTE((cx), cudaGetLastError())

/* ---- context ---- */

/* DR_SCR_QW: dequantized bf16 hi/lo weight chunks (quant.cu, prefill) */
enum { DR_SCR_SPLIT, DR_SCR_ATTN, DR_SCR_MOE, DR_SCR_MOE2, DR_SCR_IDX, DR_SCR_QW, DR_SCR_N };

/* Device table of one experts array (pointers to the uploaded gate/up/down). */
typedef struct dr_cuda_expert_tab {
    const dr_expert *key; /* the host array the forward passes */
    int E;
    const void **dev;     /* device [3][E]: gate, up, down */
    const void **host;    /* the same pointers on the host (to notice weights uploaded again) */
} dr_cuda_expert_tab;

typedef struct dr_cuda_ctx {
    int device;
    int n_sm;
    int pdl;               /* GEMVs launched with programmatic dependent launch (sm_90+, DR_CUDA_PDL != 0) */
    int dec3;              /* decode round 3 (docs/CUDA.md): fused MoE decode kernels, PDL on norms, gdn_decode,
                              route (DR_CUDA_DEC3=0: the previous kernels, a same-run baseline) */
    int moe_dec;           /* round 3: the fused moe_decode slot (DR_CUDA_MOE_DEC=0: off, the chain runs) */
    int pdl_norm, pdl_gdn; /* round 3: rmsnorm/add_rmsnorm and gdn_decode launched with PDL: 0 no, 1 (trigger
                              at their start), 2 (trigger once their inputs are ready); DR_CUDA_PDL_NORM/_GDN */
    cudaStream_t stream;
    cublasHandle_t blas;
    void *scr[DR_SCR_N];   /* growable device scratch */
    size_t scr_n[DR_SCR_N];
    int32_t *ids_host;     /* pinned staging for host index arrays */
    size_t ids_host_n;
    void *dl_host;         /* pinned staging for large downloads (the logits) */
    size_t dl_host_n;
    dr_cuda_expert_tab *tabs;
    int n_tabs, cap_tabs;
    float *rope_inv;       /* device inv_freq table for (rope_theta, rope_drot) */
    float rope_theta;
    int rope_drot;
    int failed;            /* sticky: a void slot hit a CUDA error */
    /* single-token steps (graph.cu, ops.h step_begin) */
    int32_t *step_dev;     /* device [2]: token id, position of the open step */
    int step_on;           /* a step is open: embed/rope/attention/kv_store read step_dev */
    int step_cap;          /* while open: context capacity the attention grid is shaped for */
    int capturing;         /* the stream is being recorded into a graph */
    int cap_bad;           /* something failed while recording: the recording is dropped */
    unsigned scr_gen;      /* bumped when a scratch buffer moves (recordings hold its address) */
    int *gdn_cnt;          /* device counters of the fused GDN step (gdn_decode.cu), zero between launches */
    unsigned long long *am_state; /* argmax.cu: device key, block counter, result (zero between calls) */
    int32_t *am_host;      /* pinned: the argmax result */
    unsigned *mm_cnt;      /* device counter of the fused GEMV + add + norm (matmul.cu), zero between launches */
    int *moe_ready;        /* device [4]: per token, the MoE decode picks are written (moe.cu) */
    int *att_cnt;          /* device counters per query head of the fused decode attention (attention.cu), zero
                              between launches */
    int prev_waits;        /* the kernel queued last lets no dependent start before it ends (the fused GDN step
                              and decode attention without PDL); dr_cuda_launch clears it (session 12) */
} dr_cuda_ctx;

/* Position of the open step in device memory, or NULL (kernels use their
 * pos0 argument). */
static inline const int32_t *dr_cuda_step_pos(const dr_cuda_ctx *cx) { return cx->step_on ? cx->step_dev + 1 : NULL; }

extern "C" void dr_cuda_note_fail(dr_cuda_ctx *cx, const char *file, int line, const char *stmt, cudaError_t e);
extern "C" void dr_cuda_note_blas(dr_cuda_ctx *cx, const char *file, int line, const char *stmt, cublasStatus_t s);

#define DR_BLAS_NOTE(cx, stmt)                                                                       \
    do {                                                                                             \
        cublasStatus_t dr_bs_ = (stmt);                                                              \
        if (dr_bs_ != CUBLAS_STATUS_SUCCESS)                                                         \
            dr_cuda_note_blas((cx), __FILE__, __LINE__, #stmt, dr_bs_);                              \
    } while (0)

/* Device scratch `slot` of at least n bytes (contents undefined); grows by
 * waiting for the stream, so it is safe while earlier kernels use the old
 * buffer. NULL (and ctx->failed) when out of memory. */
void *dr_cuda_scratch(dr_cuda_ctx *cx, int slot, size_t n);

/* n bytes of device memory, zeroed, for state the kernels keep zero
 * between launches (counters, flags); made once and kept in a ctx field by
 * the caller. NULL when asked for while recording (cap_bad set: the step
 * runs again without the recording) or when allocation fails (noted in cx). */
void *dr_cuda_zeroed(dr_cuda_ctx *cx, size_t n);

/* Host -> device copy of n bytes ordered on cx->stream. Every upload goes
 * through here: a plain cudaMemcpy runs on the legacy default stream, which
 * our non-blocking stream does not wait for, and from pageable memory it may
 * return before the DMA lands, so a kernel queued right after could read
 * the old bytes (seen as a rare wrong RoPE table when several processes
 * shared the copy engines). From pageable memory the source is staged
 * before the call returns, so the caller may free or reuse it at once. */
cudaError_t dr_cuda_h2d(dr_cuda_ctx *cx, void *dst, const void *src, size_t n);

/* Pinned host buffer of at least n int32 (for index uploads). */
int32_t *dr_cuda_host_ids(dr_cuda_ctx *cx, size_t n);

/* ---- internal kernels shared between files (host entry points) ---- */

/* y [T, d] = x [T, n] W^T with W in its dtype at `wdev` (row stride n).
 * ldx, ldy: row strides of x and y in floats. */
void dr_cuda_mm(dr_cuda_ctx *cx, float *y, const float *x, const void *wdev, dr_dtype dt, int T, int d, int n);


/* hi = bf16(x), lo = bf16(x - hi), n elements. */
void dr_cuda_split_bf16(dr_cuda_ctx *cx, __nv_bfloat16 *hi, __nv_bfloat16 *lo, const float *x, size_t n);

/* dr_cuda_mm for BF16 weights whose input x was already split (hi/lo of x,
 * same row stride n): saves the split launch per call (MoE experts). */
void dr_cuda_mm_presplit(dr_cuda_ctx *cx, float *y, const float *x, const __nv_bfloat16 *hi, const __nv_bfloat16 *lo,
                         const void *W, int T, int d, int n);

/* ---- device helpers ---- */

static __device__ __forceinline__ float dr_dev_load(const void *p, dr_dtype dt, size_t i) {
    if (dt == DR_DT_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == DR_DT_F16)
        return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

static __device__ __forceinline__ size_t dr_dtype_size_dev(dr_dtype dt) { return dt == DR_DT_F32 ? 4 : 2; }

static __device__ __forceinline__ float dr_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float dr_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, <= 1024); every
 * thread gets the total. `sh` holds >= 32 floats. */
static __device__ __forceinline__ float dr_block_sum(float v, float *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = dr_warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.0f;
    return dr_warp_sum(t);
}

/* Threads per block of the row norms (rmsnorm, add_rmsnorm, gated_rmsnorm;
 * elementwise.cu) for `rows` rows of n: kernels that must reproduce a
 * norm's sums launch with the same count. */
int dr_cuda_norm_threads(const dr_cuda_ctx *cx, int rows, int n);

/* Sum of squares of a row x [n] over the block: four loads in flight per
 * thread, each thread's sum in index order, then dr_block_sum (every thread
 * gets the total). rmsnorm's sums; kernels that must equal it use this. */
static __device__ __forceinline__ float dr_row_sumsq(const float *x, int n, float *sh) {
    const int nt = blockDim.x;
    float ss = 0.0f;
    for (int i0 = threadIdx.x; i0 < n; i0 += 4 * nt) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            v[u] = i0 + u * nt < n ? x[i0 + u * nt] : 0.0f;
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (i0 + u * nt < n)
                ss += v[u] * v[u];
    }
    return dr_block_sum(ss, sh);
}

/* A 16-byte weight load that does not allocate in L1 (each weight is read
 * once; activations, read by every warp, stay there). */
static __device__ __forceinline__ uint4 dr_ld_w(const uint4 *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

static __device__ __forceinline__ float dr_dev_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static __device__ __forceinline__ float dr_dev_silu(float x) { return x / (1.0f + expf(-x)); }

/* Programmatic dependent launch (sm_90): a kernel launched with
 * dr_cuda_pdl_attr may start while the previous kernel of the stream still
 * runs; it must call dr_pdl_wait() before it reads anything that kernel
 * wrote (only read-only weights before). dr_pdl_trigger() lets the next
 * such kernel start early; both are no-ops without the launch attribute. */
static __device__ __forceinline__ void dr_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    DR_TL_WAITED();
}
static __device__ __forceinline__ void dr_pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

/* A same-run baseline switch (docs/CUDA.md, "Environment switches"): on
 * unless the variable starts with '0', read once into *cache (-1 before). */
static inline bool dr_env_on(const char *name, int *cache) {
    if (*cache < 0) {
        const char *e = getenv(name);
        *cache = !(e && e[0] == '0');
    }
    return *cache;
}

/* dr_pdl_wait() for a kernel that issued weight loads before it, so that
 * they stream while the kernel before it finishes: the wait runs in a loop
 * the compiler cannot see through (1 to 4 trips from `opaque`, any value
 * the caller has; waiting again is harmless), and loads do not move into or
 * past a loop. In straight-line code ptxas placed the wait above most of
 * those loads (session 11: 0-4 of a decode GEMV's 16 first loads per lane
 * were issued before it in the SASS). A measurement build with
 * -DDR_CUDA_PRELOAD_PLAIN makes it a plain wait (the same-run baseline). */
static __device__ __forceinline__ void dr_pdl_wait_fenced(unsigned opaque) {
#ifdef DR_CUDA_PRELOAD_PLAIN
    (void)opaque;
    dr_pdl_wait();
#else
    const unsigned trips = (opaque >> 30) + 1u;
#pragma unroll 1
    for (unsigned i = 0; i < trips; i++)
        dr_pdl_wait();
#endif
}

/* Launch kernel k on the context's stream; with `pdl` (and cx->pdl) as a
 * programmatic dependent launch: k may start while the previous kernel
 * finishes, so it must call dr_pdl_wait() before it reads or writes anything
 * but read-only weights. smem: dynamic shared memory bytes. */
template <typename... P, typename... A>
static inline void dr_cuda_launch(dr_cuda_ctx *cx, bool pdl, void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                                  A... args) {
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = cx->stream;
    cfg.attrs = at;
    cfg.numAttrs = pdl && cx->pdl ? 1 : 0;
    DR_CUDA_NOTE(cx, cudaLaunchKernelEx(&cfg, k, ((P)args)...));
    cx->prev_waits = 0;
}

static inline unsigned dr_cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

#endif
