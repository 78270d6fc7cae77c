/* ops/cpu/quant.h - CPU kernels for MLX affine-quantized weights (4/8-bit).
 *
 * Layout in model/tensor.h (dr_quant). Every CPU matmul / embedding path
 * hands a tensor with w->q.bits != 0 to these functions. */
#ifndef DR_OPS_CPU_QUANT_H
#define DR_OPS_CPU_QUANT_H

#include "model/tensor.h"

/* Rows [r0, r1) of y [T, d] = x [T, n] @ W^T for a quantized W [d, n]
 * (y's other rows untouched, so threads can split the rows). */
void dr_cpu_matmul_q_rows(float *y, const float *x, const dr_tensor *w, int T, int r0, int r1);

/* x [T, H] = dequantized rows ids[t] of a quantized embedding [V, H]. */
void dr_cpu_embed_q(float *x, const dr_tensor *emb, const int32_t *ids, int T);

/* Element (r, i) of a quantized matrix, dequantized: scale * q + bias. */
float dr_q_get(const dr_tensor *w, int64_t r, int64_t i);

#endif
