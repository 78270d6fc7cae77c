/* ops/cuda/cuda_ops.h - the CUDA slot functions, one group per .cu file,
 * and the entry points the tests use. Signatures are those of ops.h. */
#ifndef DR_OPS_CUDA_CUDA_OPS_H
#define DR_OPS_CUDA_CUDA_OPS_H

#ifdef __cplusplus
extern "C" {
#endif

#include "ops/ops.h"

/* Fill every compute slot of `o` (backend.cu sets the memory slots). */
void dr_cuda_fill_table(dr_ops *o);

/* DR_OK, or DR_ERR_IO when a kernel of this backend has failed since it was
 * created (the message was recorded by DR_FAIL at the time). */
dr_status dr_cuda_backend_status(const dr_ops *o);

/* Device-to-device copy bandwidth of GPU `device` in GB/s (read + written
 * bytes, best of 5 copies of 1 GiB); 0 if it can't run. */
double dr_cuda_copy_bandwidth(int device);

/* Force one GEMM engine (tests): 0 automatic, 1 GEMV, 2 tiled fp32, 3 cuBLAS. */
void dr_cuda_set_mm_engine(int engine);

/* matmul.cu */
void dr_cuda_matmul(void *ctx, float *y, const float *x, const dr_tensor *w, int T);
void dr_cuda_matmul_n(void *ctx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws, int T);
void dr_cuda_embed(void *ctx, float *x, const dr_tensor *emb, const int32_t *ids, int T);
/* GEMV epilogue fusions (ops.h matmul_swiglu / matmul_add_rmsnorm; decode
 * round 4). DR_CUDA_FUSE: 0 both off (false), 1 swiglu only, 2 add + norm
 * only, 3 both (default). */
bool dr_cuda_matmul_swiglu(void *ctx, float *out, const float *x, const dr_tensor *gate, const dr_tensor *up, int T,
                           const float *gain, float eps);
bool dr_cuda_rmsnorm_matmul_n(void *ctx, int n_w, float *const *ys, const float *x, const float *gain, float eps,
                              const dr_tensor *const *ws, int T);
bool dr_cuda_matmul_add_rmsnorm(void *ctx, float *x, float *xn, const float *a, const dr_tensor *w, const float *gain,
                                int T, float eps);

/* elementwise.cu */
void dr_cuda_rmsnorm(void *ctx, float *y, const float *x, const float *gain, int rows, int n, float eps);
void dr_cuda_gated_rmsnorm(void *ctx, float *y, const float *x, const float *z, const float *w, int rows, int n,
                           float eps);
void dr_cuda_add_rmsnorm(void *ctx, float *x, const float *d, float *y, const float *gain, int rows, int n,
                         float eps);
void dr_cuda_add(void *ctx, float *y, const float *x, size_t n);
void dr_cuda_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n);
void dr_cuda_sigmoid_mul(void *ctx, float *x, const float *gate, size_t n);
void dr_cuda_sigmoid_scale_rows(void *ctx, float *y, const float *s, int rows, int n);
void dr_cuda_split_halves(void *ctx, float *a, float *b, const float *x, int rows, int n);
void dr_cuda_round_bf16(void *ctx, float *x, size_t n);

/* attention.cu */
void dr_cuda_rope(void *ctx, float *x, int T, int n_heads, int d_head, int d_rot, int pos0, float theta);
void dr_cuda_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                       int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws);
bool dr_cuda_attention_block(void *ctx, float *att, float *q, float *gate, float *k, const float *qg, const float *v,
                             float *k_cache, float *v_cache, const float *q_norm, const float *k_norm, int T,
                             int pos0, int nH, int nKV, int hd, int d_rot, float theta, float eps, float scale);

/* gdn.cu */
void dr_cuda_gdn_conv(void *ctx, float *out, const float *m, float *conv_state, const float *w, int T, int C,
                      int K);
void dr_cuda_gdn_gates(void *ctx, float *beta, float *g, const float *b, const float *a, const float *A_log,
                       const float *dt_bias, int T, int Hv);
void dr_cuda_gdn_recurrent(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                           const dr_gdn_dims *d, int T, float *ws);
void dr_cuda_gdn_chunked(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                         const dr_gdn_dims *d, int T, float *ws);

/* attention_decode.cu */
void dr_cuda_kv_store(void *ctx, float *k_cache, float *v_cache, const float *k, const float *v, int T, int pos0,
                      int kv_row);

/* gdn_decode.cu */
void dr_cuda_gdn_decode(void *ctx, float *y, const float *qkv_raw, const float *z, const float *b, const float *a,
                        float *conv_state, float *state, const float *conv_w, int K, const float *A_log,
                        const float *dt_bias, const float *norm_w, const dr_gdn_dims *d, float eps);

/* graph.cu: single-token steps recorded as CUDA graphs and replayed */
int dr_cuda_step_begin(void *ctx, void **graph, int32_t token, int pos, int variant);
bool dr_cuda_step_end(void *ctx, void *graph);
void dr_cuda_graph_free(void *ctx, void *graph);
/* Tests: 0 turns recording off (every step runs its kernels), 1 on (default;
 * the environment variable DR_CUDA_GRAPHS=0 starts it off). */
void dr_cuda_set_graphs(int on);
/* Tests and bench: step recordings made, replays, recordings that failed
 * (all backends of the process). */
void dr_cuda_graph_counts(long *recorded, long *replayed, long *failed);

/* moe.cu */
void dr_cuda_moe_route(void *ctx, int32_t *idx, float *wts, const float *logits, int T, int E, int k, bool renorm);
void dr_cuda_moe_experts(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const dr_expert *experts, int E, int T, int k, int H, int I, float *ws);
bool dr_cuda_moe_decode(void *ctx, float *y, int32_t *idx, float *wts, float *logits, const dr_tensor *router,
                        const float *x, const dr_expert *experts, int E, int T, int k, bool renorm, int H, int I,
                        const dr_moe_shared *sh, bool acc);

/* argmax.cu */
bool dr_cuda_argmax(void *ctx, int32_t *out, const float *x, int n);

#ifdef __cplusplus
}
#endif

#endif
