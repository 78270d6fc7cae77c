/* ops/cpu/cpu.h - the CPU reference kernels behind dr_ops_cpu_ref() and dr_ops_cpu_create().
 *
 * Scalar fp32 code written to read like the math; weights are widened from
 * their file dtype element by element. The SIMD and threaded kernels of the
 * CPU-speed work will be checked against these.
 */
#ifndef DR_OPS_CPU_H
#define DR_OPS_CPU_H

#include "ops/ops.h"

#include <math.h>

void dr_cpu_matmul(void *ctx, float *y, const float *x, const dr_tensor *w, int T);
void dr_cpu_embed(void *ctx, float *x, const dr_tensor *emb, const int32_t *ids, int T);

void dr_cpu_rmsnorm(void *ctx, float *y, const float *x, const float *gain, int rows, int n, float eps);
void dr_cpu_gated_rmsnorm(void *ctx, float *y, const float *x, const float *z, const float *w, int rows, int n,
                          float eps);

void dr_cpu_add(void *ctx, float *y, const float *x, size_t n);
void dr_cpu_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n);
void dr_cpu_sigmoid_mul(void *ctx, float *x, const float *gate, size_t n);
void dr_cpu_sigmoid_scale_rows(void *ctx, float *y, const float *s, int rows, int n);
void dr_cpu_split_halves(void *ctx, float *a, float *b, const float *x, int rows, int n);
void dr_cpu_round_bf16(void *ctx, float *x, size_t n);

void dr_cpu_rope(void *ctx, float *x, int T, int n_heads, int d_head, int d_rot, int pos0, float theta);
void dr_cpu_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                      int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws);

void dr_cpu_gdn_conv(void *ctx, float *out, const float *m, float *conv_state, const float *w, int T, int C,
                     int K);
void dr_cpu_gdn_gates(void *ctx, float *beta, float *g, const float *b, const float *a, const float *A_log,
                      const float *dt_bias, int T, int Hv);
void dr_cpu_gdn_recurrent(void *ctx, float *o, const float *qkv, const float *beta, const float *g,
                          float *state, const dr_gdn_dims *d, int T, float *ws);
void dr_cpu_gdn_chunked(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                        const dr_gdn_dims *d, int T, float *ws);

void dr_cpu_moe_route(void *ctx, int32_t *idx, float *wts, const float *logits, int T, int E, int k,
                      bool renorm);
void dr_cpu_moe_experts(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                        const dr_expert *experts, int E, int T, int k, int H, int I, float *ws);

static inline float dr_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float dr_siluf(float x) { return x / (1.0f + expf(-x)); }

#endif
