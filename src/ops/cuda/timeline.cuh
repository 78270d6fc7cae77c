/* ops/cuda/timeline.cuh - a per-block timeline of the kernels a run
 * launches, for finding where a replayed decode step spends its time
 * (docs/CUDA.md, "Session 10"). A measurement build only: with the CMake
 * option DR_CUDA_TIMELINE=ON (default OFF) and DR_CUDA_TIMELINE=FILE in the
 * environment, every block of an instrumented kernel writes one record
 * (launch id, kernel, block, SM, %globaltimer at its start, when its PDL
 * wait returned, when its last warp ended, DR_TL_MARK points); the records
 * are written to FILE when the backend is destroyed and scripts/timeline.py
 * turns them into a table.
 * In normal builds DR_TL_SCOPE() is empty.
 *
 * The cost when on: one atomic and one barrier per block at its start, two
 * shared-memory atomics per warp at its end, one 80-byte store per block. */
#ifndef DR_OPS_CUDA_TIMELINE_CUH
#define DR_OPS_CUDA_TIMELINE_CUH

#ifdef DR_CUDA_TIMELINE

#include <cuda_runtime.h>

typedef struct {
    unsigned long long grid;   /* %gridid: the same for every block of one launch */
    unsigned long long t0, tw, t1; /* ns: block start, PDL wait returned (0: none), block end */
    unsigned long long tm[4];  /* ns: DR_TL_MARK(k, v) points of thread 0 (0: not reached) */
    unsigned kid;              /* file hash << 16 | source line of DR_TL_SCOPE */
    unsigned block, smid, nblocks;
} dr_tl_rec;

/* Host side (backend.cu): every translation unit registers its binder. */
typedef void (*dr_tl_binder)(dr_tl_rec *buf, unsigned *count, unsigned cap);
int dr_tl_register(dr_tl_binder b);

static __device__ dr_tl_rec *dr_tl_buf_;
static __device__ unsigned *dr_tl_count_;
static __device__ unsigned dr_tl_cap_;
static __shared__ unsigned long long dr_tl_waited_, dr_tl_mark_[4], dr_tl_t0_, dr_tl_end_;
static __shared__ unsigned dr_tl_slot_, dr_tl_out_;

static void dr_tl_bind_(dr_tl_rec *buf, unsigned *count, unsigned cap) {
    cudaMemcpyToSymbol(dr_tl_buf_, &buf, sizeof buf);
    cudaMemcpyToSymbol(dr_tl_count_, &count, sizeof count);
    cudaMemcpyToSymbol(dr_tl_cap_, &cap, sizeof cap);
}
static const int dr_tl_registered_ = dr_tl_register(dr_tl_bind_);

static __host__ __device__ constexpr unsigned dr_tl_hash(const char *s) { /* FNV-1a of the file's base name */
    const char *b = s;
    for (const char *p = s; *p; p++)
        if (*p == '/')
            b = p + 1;
    unsigned h = 2166136261u;
    for (const char *p = b; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h;
}

/* Thread 0 of the block: it takes the slot and the wait / mark times. */
static __device__ __forceinline__ bool dr_tl_first(void) { return threadIdx.x + threadIdx.y + threadIdx.z == 0; }

static __device__ __forceinline__ unsigned long long dr_tl_now(void) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* Thread 0 takes the record's slot at the start; at the end every warp's
 * lane 0 raises the block's latest exit time and counts itself out, and
 * the last warp out writes the record (its end is the block's real end, not
 * warp 0's). The constructor's barrier is safe: every thread runs it at the
 * kernel's entry. */
struct dr_tl_scope {
    unsigned long long t0;
    unsigned slot, kid;
    __device__ __forceinline__ explicit dr_tl_scope(unsigned k) : t0(0), slot(~0u), kid(k) {
        if (!dr_tl_count_)
            return;
        if (dr_tl_first()) {
            t0 = dr_tl_now();
            dr_tl_waited_ = dr_tl_end_ = 0;
            dr_tl_mark_[0] = dr_tl_mark_[1] = dr_tl_mark_[2] = dr_tl_mark_[3] = 0;
            dr_tl_out_ = 0;
            slot = atomicAdd(dr_tl_count_, 1u);
        }
        __syncthreads();
    }
    __device__ __forceinline__ ~dr_tl_scope() {
        const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
        if (!dr_tl_count_ || (tid & 31))
            return;
        atomicMax(&dr_tl_end_, dr_tl_now());
        if (tid == 0)
            dr_tl_slot_ = slot, dr_tl_t0_ = t0;
        __threadfence_block();
        const unsigned nw = (blockDim.x * blockDim.y * blockDim.z + 31) / 32;
        if (atomicAdd(&dr_tl_out_, 1u) != nw - 1)
            return;
        __threadfence_block();
        const unsigned sl = dr_tl_slot_;
        if (sl >= dr_tl_cap_)
            return;
        dr_tl_rec r;
        asm volatile("mov.u64 %0, %%gridid;" : "=l"(r.grid));
        asm volatile("mov.u32 %0, %%smid;" : "=r"(r.smid));
        r.t0 = dr_tl_t0_;
        r.tw = dr_tl_waited_;
        r.t1 = dr_tl_end_;
        for (int k = 0; k < 4; k++)
            r.tm[k] = dr_tl_mark_[k];
        r.kid = kid;
        r.block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        r.nblocks = gridDim.x * gridDim.y * gridDim.z;
        dr_tl_buf_[sl] = r;
    }
};

#define DR_TL_SCOPE()                                                                                \
    constexpr unsigned dr_tl_k_ = (dr_tl_hash(__FILE__) << 16) | (unsigned)__LINE__;                \
    dr_tl_scope dr_tl_s_(dr_tl_k_)
#define DR_TL_WAITED()                                                                               \
    do {                                                                                             \
        if (dr_tl_first())                                                                           \
            dr_tl_waited_ = dr_tl_now();                                                             \
    } while (0)

/* Thread 0's time once v (a float it computed) is known: the timer read
 * depends on v, so it cannot run before the loads behind v return. */
/* The static shared memory a scope adds to its kernel (rounded up): kernels
 * that size their dynamic shared memory to the device's opt-in limit leave
 * this much free, or their launches fail in a timeline build. */
#define DR_TL_SMEM 128

#define DR_TL_MARK(k, v)                                                                             \
    do {                                                                                             \
        if (dr_tl_first()) {                                                                         \
            const float dr_tl_v_ = (v);                                                              \
            unsigned long long dr_tl_t_;                                                             \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(dr_tl_t_) : "f"(dr_tl_v_));             \
            dr_tl_mark_[k] = dr_tl_t_;                                                               \
        }                                                                                            \
    } while (0)

#else
#define DR_TL_SMEM 0
#define DR_TL_SCOPE() ((void)0)
#define DR_TL_MARK(k, v) ((void)0)
#define DR_TL_WAITED() ((void)0)
#endif

#endif
