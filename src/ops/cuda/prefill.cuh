/* ops/cuda/prefill.cuh - the prefill kernels' entry points (attention_prefill.cu,
 * gdn_chunked.cu, moe_prefill.cu) and the tensor-core helpers they share.
 *
 * Split-bf16 operands: an fp32 value x is carried as hi = bf16(x) and
 * lo = bf16(x - hi) (|x - hi - lo| <= 2^-16 |x|). A product of two split
 * operands is taken as hi*hi + hi*lo + lo*hi on the tensor cores (mma.sync
 * m16n8k16, fp32 accumulate); the dropped lo*lo term is below 2^-16 of it.
 * BF16 weights are exact in bf16, so a weight product needs only
 * W*hi + W*lo. (docs/CUDA.md, "Prefill".)
 */
#ifndef DR_OPS_CUDA_PREFILL_CUH
#define DR_OPS_CUDA_PREFILL_CUH

#include "cuda_common.cuh"

/* Each returns true when it ran the op, false when the shape or the device
 * does not suit it (nothing was queued: the caller runs its general path). */
bool dr_cuda_attention_prefill(dr_cuda_ctx *cx, float *out, const float *q, const float *k_cache,
                               const float *v_cache, int T, int pos0, int n_heads, int n_kv_heads, int d_head,
                               float scale);
/* get_tab: the device table of expert weight pointers (gate[E], up[E],
 * down[E]), asked for only when this path runs; NULL means it failed. */
typedef const void *const *(*dr_cuda_expert_tab_fn)(dr_cuda_ctx *cx, const dr_expert *ex, int E);
bool dr_cuda_moe_prefill(dr_cuda_ctx *cx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const dr_expert *experts, dr_cuda_expert_tab_fn get_tab, int E, int T, int k, int H,
                         int I);

/* false when the environment sets DR_CUDA_PREFILL=0: the general kernels
 * run instead (same-run baselines in benches; read at every call) */
bool dr_cuda_prefill_enabled(void);

/* attention: used for T >= this (decode-sized blocks keep the split-K kernel) */
#define DR_ATT_PREFILL_MIN_T 64
/* MoE: grouped tensor-core GEMMs for T >= this */
#define DR_MOE_PREFILL_MIN_T 5

/* ---- device helpers ---- */

static __device__ __forceinline__ uint32_t dr_pack_bf16(float a, float b) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(a)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(b)) << 16);
}

/* (a, b) -> packed hi pair and packed lo pair (first element in the low half) */
static __device__ __forceinline__ void dr_split2(float a, float b, uint32_t &hi, uint32_t &lo) {
    const __nv_bfloat16 ha = __float2bfloat16_rn(a), hb = __float2bfloat16_rn(b);
    const float ra = a - __bfloat162float(ha), rb = b - __bfloat162float(hb);
    hi = (uint32_t)__bfloat16_as_ushort(ha) | ((uint32_t)__bfloat16_as_ushort(hb) << 16);
    lo = dr_pack_bf16(ra, rb);
}

/* D += A B, m16n8k16, bf16 operands, fp32 accumulate */
static __device__ __forceinline__ void dr_mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

static __device__ __forceinline__ void dr_ldsm4(uint32_t r[4], const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void dr_cp16(void *s, const void *g) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(s);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(g));
}
/* cp.async of 16 bytes, or 16 zero bytes when !ok (nothing is read) */
static __device__ __forceinline__ void dr_cp16z(void *s, const void *g, bool ok) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(s);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(g), "r"(ok ? 16 : 0));
}
static __device__ __forceinline__ void dr_cp_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void dr_cp_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Largest dynamic shared memory a block may opt into on the context's device. */
static inline int dr_cuda_smem_optin(dr_cuda_ctx *cx) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, cx->device) != cudaSuccess)
        return 0;
    return v;
}

#endif
