/* ops/cuda/quant.cuh - MLX affine 4/8-bit weights on the GPU (quant.cu): the
 * entry points the other CUDA files call for tensors with q.bits != 0. */
#ifndef DR_OPS_CUDA_QUANT_CUH
#define DR_OPS_CUDA_QUANT_CUH

#include "cuda_common.cuh"
#include "prefill.cuh"

/* Copy packed words, scales and biases of t to one device block (t->dev),
 * repacked for the tensor-core GEMV (quant.cu "repacked layout (v2)"; the
 * file layout with DR_CUDA_QGEMV_V2=0). Only quant.cu reads the block.
 * Fails naming the tensor on an unsupported layout or allocation failure. */
dr_status dr_cuda_quant_upload(dr_cuda_ctx *cx, dr_tensor *t);

/* y [T, d] = x [T, n] W^T for a quantized W: GEMV for T <= 32 (blocks of 8
 * tokens), else dequantized bf16 hi/lo chunks and three cuBLAS GEMMs. */
void dr_cuda_qmm(dr_cuda_ctx *cx, float *y, const float *x, const dr_tensor *w, int T);

/* dr_cuda_qmm or dr_cuda_mm, whichever w needs. */
void dr_cuda_mm_w(dr_cuda_ctx *cx, float *y, const float *x, const dr_tensor *w, int T);

/* matmul_n when any of ws is quantized (returns true: done); false: none
 * is, nothing was queued. */
bool dr_cuda_quant_matmul_n(dr_cuda_ctx *cx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws,
                            int T);

/* The decode epilogues of the 4-bit dp4a GEMV (one token, 16-bit scales):
 * ys[i] = RMSNorm(x; gain) ws[i]^T (rmsnorm_matmul_n), and x += a w^T
 * (matmul_add_rmsnorm without a norm). false: not taken, nothing queued. */
bool dr_cuda_quant_rmsnorm_matmul_n(dr_cuda_ctx *cx, int n_w, float *const *ys, const float *x, const float *gain,
                                    float eps, const dr_tensor *const *ws, int T);
bool dr_cuda_quant_matmul_add(dr_cuda_ctx *cx, float *x, const float *a, const dr_tensor *w, int T);
/* out = silu(gate xn) * (up xn), xn = RMSNorm(x; gain) or x (matmul_swiglu) */
bool dr_cuda_quant_matmul_swiglu(dr_cuda_ctx *cx, float *out, const float *x, const dr_tensor *gate,
                                 const dr_tensor *up, int T, const float *gain, float eps);

/* x [T, H] = dequantized rows ids[t] (device ids) of a quantized embedding. */
void dr_cuda_qembed(dr_cuda_ctx *cx, float *x, const dr_tensor *emb, const int32_t *dids, int T);

/* Routed experts with quantized weights, decode sizes: true when it ran
 * (or recorded a failure), false when the shapes don't suit it (mixed
 * quantization, unaligned x): the caller's general path runs. */
bool dr_cuda_quant_moe_decode(dr_cuda_ctx *cx, float *y, const float *x, const int32_t *idx, const float *wts,
                              const dr_expert *ex, dr_cuda_expert_tab_fn get_tab, int E, int T, int k, int H, int I);
/* The whole MoE block of a few decode tokens on 8/4-bit experts (the
 * moe_decode slot; the shared expert, when given, quantized as the
 * experts): the router's logits (and the shared scalar gate) by one GEMV
 * call, then two kernels, gate/up with the routing and down with the
 * shared expert and (acc) the residual add. false: not taken, nothing
 * queued (the op-by-op path runs). */
bool dr_cuda_quant_moe_block(dr_cuda_ctx *cx, float *y, int32_t *idx, float *wts, float *logits,
                             const dr_tensor *router, const float *x, const dr_expert *ex,
                             dr_cuda_expert_tab_fn get_tab, int E, int T, int k, bool renorm, int H, int I,
                             const dr_moe_shared *sh, bool acc);

#endif
