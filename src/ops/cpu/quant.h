/* ops/cpu/quant.h - CPU kernels for MLX affine-quantized weights (4/8-bit).
 *
 * Layout in model/tensor.h (dr_quant). Every CPU matmul / embedding path
 * hands a tensor with w->q.bits != 0 to these functions. The kernels are
 * chosen once from the CPU's features (AVX-512 F/BW/VL with AVX512_BF16 and
 * AVX512_VNNI, or with AVX512_BF16, else AVX-512 F/BW/VL, else AVX2+FMA,
 * else the scalar reference); dr_cpu_quant_set_level lets tests force each
 * one. All levels accumulate in fp32 with fp32 activations, except the
 * one-token 4-bit GEMVs of avx2, avx512bf16 and avx512vnni: avx512bf16 takes
 * x as two bf16 halves (hi + lo within 2^-17 |x| of x, exact products),
 * avx2 and avx512vnni as 24-bit integers in steps of 2^-24 of each group's
 * largest |x| (exact integer sums). Every level is held to 1e-5 of sum |w x| against the exact
 * product (w = scale q + bias in double) for Gaussian x. For x spanning up
 * to 1e7 inside a group, to 1e-5 of sum (|scale q| + |bias|) |x|: the GEMVs'
 * one FMA a weight (quant_kern.h) rounds on that scale, which exceeds
 * sum |w x| where w nearly cancels (tests/test_quant.c).
 */
#ifndef DR_OPS_CPU_QUANT_H
#define DR_OPS_CPU_QUANT_H

#include "model/tensor.h"

/* Rows [r0, r1) of y [T, d] = x [T, n] @ W^T for a quantized W [d, n]
 * (y's other rows untouched, so threads can split the rows). Reentrant. */
void dr_cpu_matmul_q_rows(float *y, const float *x, const dr_tensor *w, int T, int r0, int r1);

/* The same product split for a threaded caller, which prepares x once and
 * hands each thread a row range (decode) or a block of rows to dequantize
 * and reuse across all tokens (prefill):
 *
 * dr_cpu_q_prep_floats: floats of one prepared token (at most n + 128 +
 *   2 n / group_size).
 * dr_cpu_q_prep: xp = x [n] prepared for dr_cpu_q_gemv_rows (4-bit: x
 *   permuted to the nibble order, split into bf16 pairs at level
 *   avx512bf16, or into 8-bit digits at avx512vnni and avx2; then the
 *   per-group sums of x). Depends on w's bits, group
 *   size and row length and on the kernel level: prepare and multiply under
 *   the same level.
 * dr_cpu_q_gemv_rows: y[r] = W[r] . x for r in [r0, r1). Reentrant.
 * dr_cpu_q_dequant_rows: dst [nr, n] = rows r0 .. r0+nr-1 as fp32
 *   (scale * q + bias, the value dr_q_get gives, up to one fp32 rounding). */
size_t dr_cpu_q_prep_floats(const dr_tensor *w);
void dr_cpu_q_prep(float *xp, const float *x, const dr_tensor *w);
void dr_cpu_q_gemv_rows(float *y, const float *xp, const dr_tensor *w, int r0, int r1);
void dr_cpu_q_dequant_rows(float *dst, const dr_tensor *w, int r0, int nr);

/* A few tokens at once, each weight row read from memory once for all:
 * dr_cpu_q_multi_max: up to how many tokens the level's multi-token GEMV
 *   for w measured faster than dequantizing rows for a GEMM (1: it has
 *   none; then dr_cpu_q_gemv_rows_n runs the one-token GEMV per token).
 * dr_cpu_q_prep_n: one token's x prepared for dr_cpu_q_gemv_rows_n. The
 *   same as dr_cpu_q_prep, except at level avx2 for 4 bits, where the
 *   one-token GEMV takes x as 8-bit digits and the multi-token one keeps
 *   the table's layout (quant_kern.h).
 * dr_cpu_q_gemv_rows_n: y [T, d] rows [r0, r1) of every token from T
 *   tokens prepared by dr_cpu_q_prep_n, dr_cpu_q_prep_floats(w) floats
 *   apart; each output bit for bit what it gives for that token alone
 *   (T = 1), and that is dr_cpu_q_gemv_rows' output except at avx2 for 4
 *   bits (another x layout and summation; both held to the same bounds). */
int dr_cpu_q_multi_max(const dr_tensor *w);
void dr_cpu_q_prep_n(float *xp, const float *x, const dr_tensor *w);
void dr_cpu_q_gemv_rows_n(float *y, const float *xp, int T, const dr_tensor *w, int r0, int r1);

/* Rearrange a 2-D 4- or 8-bit tensor in place into the CPU's decode layout
 * (quant_kern.h: 16-row tiles, packed bytes, scales and biases) and set
 * t->q.tiled_rows to its row count; every function of this header reads
 * either layout, at every level (only the avx512vnni GEMV is faster on it).
 * Only rows of at most 32768 elements, at most max_bytes of packed rows; the
 * memory is made writable with mprotect (a private file mapping turns into
 * private pages). Returns the packed bytes rearranged: 0 when t is left in
 * file order (not 2-D 4- or 8-bit, already tiled, rows too long, over max_bytes, or
 * its memory can't be written). */
size_t dr_cpu_q_tile(dr_tensor *t, size_t max_bytes);

/* The packed bytes dr_cpu_q_tile would rearrange with no max_bytes limit:
 * 0 when t stays in file order whatever the limit. */
size_t dr_cpu_q_tile_bytes(const dr_tensor *t);

/* Rows r0 .. r0 + nr - 1 of w (either layout) for the AMX prefill
 * (ops/cpu/amx.h): codes [nr, n] their q as bf16, s and b [nr, G] the
 * scales and biases as fp32. */
void dr_cpu_q_codes_rows(uint16_t *codes, float *s, float *b, const dr_tensor *w, int r0, int nr);

/* x [T, H] = dequantized rows ids[t] of a quantized embedding [V, H]. */
void dr_cpu_embed_q(float *x, const dr_tensor *emb, const int32_t *ids, int T);

/* Element (r, i) of a quantized matrix, dequantized: scale * q + bias. */
float dr_q_get(const dr_tensor *w, int64_t r, int64_t i);

/* Kernel levels, slowest first. AVX512_BF16: AVX-512 plus AVX512_BF16
 * (4-bit GEMV through vdpbf16ps, quant_kern.h; the rest as AVX512).
 * AVX512_VNNI: that plus AVX512_VNNI (4-bit GEMV through vpdpbusd). It sits
 * above AVX512_BF16 so that each level's CPU runs every level below it;
 * a CPU with VNNI but no BF16 (Ice Lake) stays at AVX512. */
enum {
    DR_QLEVEL_SCALAR = 0,
    DR_QLEVEL_AVX2 = 1,
    DR_QLEVEL_AVX512 = 2,
    DR_QLEVEL_AVX512_BF16 = 3,
    DR_QLEVEL_AVX512_VNNI = 4,
    DR_QLEVEL_COUNT
};

/* The level in use (detected on first call; the environment variable
 * DR_CPU_QLEVEL = "scalar" / "avx2" / "avx512" / "avx512bf16" caps it, for
 * A/B runs). */
int dr_cpu_quant_level(void);

/* Test / bench hook: use `level` from now on for every thread; a level the
 * CPU lacks, or -1, selects the best supported one. Returns the level set.
 * Not to be called while quantized kernels run on other threads. */
int dr_cpu_quant_set_level(int level);

/* "scalar", "avx2", "avx512", "avx512bf16", "avx512vnni". */
const char *dr_cpu_quant_level_name(int level);

#endif
