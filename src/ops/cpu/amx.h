/* ops/cpu/amx.h - prefill matmuls of BF16 and MLX-quantized weights on
 * Intel AMX tiles.
 *
 * For T >= DR_AMX_MIN_T tokens, y = W x with W bf16 [d, n] runs on the
 * AMX-BF16 tile unit (Sapphire Rapids and later Xeons) instead of widening
 * W to fp32 for the AVX FMA tiles. The numerics stay those of the fp32
 * path (DESIGN.md: fp32 activations, weights expanded, fp32 accumulation):
 * each x is split exactly into three bf16 parts, x = h + m + l (8 + 8 + 8
 * significant bits), and the tile unit adds the three products w h, w m,
 * w l (each exact in fp32) into fp32 accumulators. What differs is the
 * order of the fp32 sums, and that the tile unit flushes subnormal inputs
 * and results to zero (only |x| below ~1e-33 loses bits that way); an
 * infinite x (or one that rounds to infinity in bf16, |x| > 3.39e38) gives
 * NaN where the FMA path gives an infinity.
 *
 * Available where the CPU has AMX-TILE and AMX-BF16, the kernel grants the
 * process the tile state (Linux 5.16+, arch_prctl) and DR_CPU_AMX is not 0.
 * Without the compiler's AMX support the functions below report "not
 * available" and the fp32 path runs. */
#ifndef DR_OPS_CPU_AMX_H
#define DR_OPS_CPU_AMX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DR_AMX_MIN_T 8 /* fewer tokens: 32-token slices mostly padding; from 8 on (e.g. a
                           MoE expert's share of a prefill block) the tiles still beat
                           the fp32 path (docs/PERFORMANCE.md, CPU, session 21) */
#define DR_AMX_K 32    /* n must be a multiple of this (one tile row of bf16) */
#define DR_AMX_ROWS 16 /* dr_amx_gemm takes rows in multiples of this */

/* Whether the tile path runs (checked once). */
bool dr_amx_enabled(void);

/* Bytes of x prepared for T tokens of length n (n % DR_AMX_K == 0). */
size_t dr_amx_x_bytes(int T, int n);
/* Blocks of 16 tokens that x prepared for T tokens has (T padded to 32). */
int dr_amx_prep_blocks(int T);
/* Blocks [b0, b1) of xp = x [T, n] (rows n apart) as three bf16 parts in
 * the tiles' layout, zero tokens padding T to a multiple of 32. Blocks are
 * independent: threads may fill different ones at once. */
void dr_amx_prep(uint16_t *xp, const float *x, int T, int n, int b0, int b1);
/* y[t * ldy + r] = w_r . x_t for rows r < m (m % DR_AMX_ROWS == 0, bf16,
 * ldw elements apart) and tokens t < T, x prepared by dr_amx_prep. */
void dr_amx_gemm(float *y, size_t ldy, const uint16_t *w, size_t ldw, int m, const uint16_t *xp, int T, int n);

/* Quantized weights (MLX affine, w = s q + b per group): per group g of
 * each row, s_g (q . x_g) + b_g (sum of x_g), the form the decode GEMVs
 * use, with q . x_g on the tiles (q exact in bf16, x in its three parts)
 * and the rest in fp32. Inputs: codes [m, n] the rows' q as bf16 (n apart,
 * from dr_amx_codes), s and b [m, G] fp32, x prepared by dr_amx_prep and
 * its group sums by dr_amx_group_sums; gs a multiple of DR_AMX_K. */
void dr_amx_gemm_q(float *y, size_t ldy, const uint16_t *codes, const float *s, const float *b, int gs, int m,
                   const uint16_t *xp, const float *xg, int T, int n);
/* codes [n] = q of one packed file-order row (bits 4 or 8) as bf16. */
void dr_amx_codes(uint16_t *codes, const unsigned char *row, int bits, int n);
/* Floats of x's group sums for T tokens (dr_amx_group_sums). */
size_t dr_amx_group_floats(int T, int n, int gs);
/* xg = sum of each group of gs elements of each token of x [T, n], in the
 * layout dr_amx_gemm_q reads (group-major, tokens padded to 32 with 0), for
 * the tokens of blocks [b0, b1) (16 tokens each, as dr_amx_prep's). */
void dr_amx_group_sums(float *xg, const float *x, int T, int n, int gs, int b0, int b1);

#endif
