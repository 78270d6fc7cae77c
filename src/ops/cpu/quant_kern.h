/* ops/cpu/quant_kern.h - the per-ISA kernel table behind ops/cpu/quant.h.
 *
 * matmul_quant.c holds the scalar reference and picks a table at run time
 * from the CPU's features; quant_avx2.c and quant_avx512.c (compiled with
 * their own -m flags, see src/quant/quant.cmake) fill the others, and
 * quant_avx512bf16.c, quant_avx512vnni.c (+ _t16.c for the decode layout)
 * and quant_avx2_digits.c (src/ops/cpu/cpu.cmake) add GEMVs of their own.
 * The table's kernels expand the 4/8-bit weights to fp32 in registers and
 * accumulate in fp32 with fp32 x (so results match dequantize-then-fp32 up
 * to summation order). The own GEMVs take x exact to 2^-17 of |x| (bf16
 * pairs, fp32 sums) or to 2^-24 of the group's largest |x| (8-bit digits,
 * exact integer sums per group or block, then fp32).
 *
 * GEMV (one token) does not form w = s q + b per element. Per group g,
 *     sum_i w_i x_i = s_g * sum_i q_i x_i + b_g * X_g,   X_g = sum_i x_i,
 * where the X_g are shared by every row and computed once per token
 * (dr_cpu_q_prep). That halves the FMAs per weight. For 4-bit weights the
 * nibbles are not put back into element order either: the prepared x is
 * permuted instead (DR_QK_PERM), so a byte's low and high nibbles each meet
 * their x with one AND / one shift after a single byte->int32 widening.
 */
#ifndef DR_OPS_CPU_QUANT_KERN_H
#define DR_OPS_CPU_QUANT_KERN_H

#include "model/tensor.h"

#include <stdint.h>

/* Elements dequantized at a time for multi-token matmuls (a multiple of
 * every group size, 128). */
#define DR_QK_BLOCK 512

/* Prepared x of one token for a 4-bit GEMV: every block of 32 elements
 * (16 packed bytes; every group size is a multiple) is stored as its 16
 * even elements, then its 16 odd ones: xp[b + k] = x[b + 2k] (the low nibble
 * of byte b/2 + k), xp[b + 16 + k] = x[b + 2k + 1] (its high nibble). 8-bit:
 * x unchanged. After the n elements come the n / group_size group sums X_g. */
#define DR_QK_PERM 32

typedef struct dr_qkern {
    const char *name;
    /* y[r] = row r . x for r in [r0, r1); xp = x prepared by dr_cpu_q_prep */
    void (*gemv)(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1);
    /* the same for T tokens (token t's x at xp + t ldxp, its outputs at
       y + t ldy), each row read from memory once, every output bit for bit
       what gemv gives; file order only */
    void (*gemv_n)(float *y, int64_t ldy, const float *xp, size_t ldxp, int T, const dr_tensor *w, int64_t r0,
                   int64_t r1);
    int gemv_n_max; /* up to this many tokens gemv_n beats the dequantized GEMM (docs/PERFORMANCE.md, session 23) */
    /* dst [ng * gs] = dequantized groups g0 .. g0+ng-1 of row r (element order) */
    void (*dequant)(float *dst, const dr_tensor *w, int64_t r, int64_t g0, int64_t ng);
    /* out[j] = sum_i a[i] * x[j * ldx + i], j < 4 (four tokens share the loads of a) */
    void (*dot4)(float out[4], const float *a, const float *x, int64_t ldx, int64_t n);
    /* sum_i a[i] * b[i] */
    float (*dot)(const float *a, const float *b, int64_t n);
} dr_qkern;

extern const dr_qkern dr_qkern_avx2;
extern const dr_qkern dr_qkern_avx512;

/* Level DR_QLEVEL_AVX512_BF16: the AVX-512 table, except the 4-bit GEMV
 * (quant_avx512bf16.c), which takes x prepared as bf16 pairs instead. With
 * np = DR_QK_BF16_PAD(n): xp's first np floats hold hi[np] = bf16(x) then
 * lo[np] = bf16(x - hi) (as uint16, zeros past n), every 128-element block
 * stored as 4 vectors of 32: word 32 k + j of a block is element
 * DR_QK_BF16_ELEM(k, j) of it; then X_g = sum of group g of x (G floats),
 * then A_g = 24 H_g - 8 X_g with H_g = sum of hi + lo over the group. */
#define DR_QK_BF16_PAD(n) (((n) + 127) / 128 * 128)
#define DR_QK_BF16_ELEM(k, j) (4 * (j) + (k))
void dr_qk_gemv4_bf16(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1);
void dr_qk_prep4_bf16(float *xp, const float *x, int64_t n, int gs); /* that layout */

/* Level DR_QLEVEL_AVX512_VNNI: as AVX512_BF16, but the 4-bit GEMV is
 * quant_avx512vnni.c's, with x prepared as 8-bit digits. For each of the
 * DR_QK_BF16_PAD(n) / 128 blocks, DR_QK_VNNI_BLOCK bytes: six vectors of 64
 * signed bytes, the digits d2, d1, d0 of the block's even elements (byte j:
 * element 2j), then those of its odd elements (element 2j + 1); zeros past
 * n. Then, as floats, X_g = sum of group g of x (G), and the groups' steps
 * sx_g (G): x_i ~= (d2 2^16 + d1 2^8 + d0) sx_g. */
#define DR_QK_VNNI_BLOCK 384
void dr_qk_gemv4_vnni(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1);
void dr_qk_prep4_vnni(float *xp, const float *x, int64_t n, int gs); /* that layout */
/* xs[g] = X_g, sx[g] = sx_g of x's G groups (both preparations). */
void dr_qk_vnni_steps(float *xs, float *sx, const float *x, int64_t G, int gs);

/* Level DR_QLEVEL_AVX512_VNNI on a tensor in the decode layout below
 * (quant_avx512vnni_t16.c): x as the same 8-bit digits, stored by chunks of
 * 8 elements: DR_QK_T16_CHUNK bytes each, the 32-bit words d2, d1, d0 of its
 * elements 0, 2, 4, 6 (byte j: element 2j), then those of 1, 3, 5, 7; then,
 * as floats, X_g (G) and sx_g (G). Rows r0 .. r1 - 1 may start or end
 * inside a tile (the tile is computed, only those rows stored). */
#define DR_QK_T16_CHUNK 24
void dr_qk_gemv4_t16(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1);
void dr_qk_prep4_t16(float *xp, const float *x, int64_t n, int gs); /* that layout */
/* The same for 8-bit tensors in the decode layout: chunks of 4 elements
 * (one byte each), x's digits by the same chunks, three words each (d2, d1,
 * d0, byte j: element j), the same 3 bytes an element, X_g and sx_g at the
 * same place. */
void dr_qk_gemv8_t16(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1);
void dr_qk_prep8_t16(float *xp, const float *x, int64_t n, int gs);
/* Both on several tokens at once (2 <= T <= DR_QK_MULTI_T): y [T, ldy]
 * (token t's rows at y + t ldy) from T tokens prepared as above, token t at
 * xp + t ldxp. Each tile is read from memory once for all of them, and
 * every output is bit for bit the one-token GEMV's. */
#define DR_QK_MULTI_T 64
void dr_qk_gemv_t16_n(float *y, int64_t ldy, const float *xp, size_t ldxp, int T, const dr_tensor *w, int64_t r0,
                      int64_t r1);

/* Level DR_QLEVEL_AVX2, 4 bits, one token, rows a multiple of 64 long:
 * quant_avx2_digits.c's GEMV, with x as the same 8-bit digits as
 * DR_QK_VNNI_* in 64-element blocks: per block DR_QK_DIG_BLOCK bytes, six
 * runs of 32 signed bytes, the digits d2, d1, d0 of the block's even
 * elements (byte j: element 2j), then those of its odd elements (element
 * 2j + 1). Then, as floats, X_g (G) and sx_g (G). The multi-token GEMV of
 * this level keeps the table's layout (DR_QK_PERM). */
#define DR_QK_DIG_BLOCK 192
void dr_qk_gemv4_dig(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1);
void dr_qk_prep4_dig(float *xp, const float *x, int64_t n, int gs); /* that layout */

/* f(args..., GS) with the group size gs (32, 64 or 128) as a constant, so
 * that each kernel file's inlined group loops are specialised per size. */
#define DR_QK_BY_GS(gs, f, ...)          \
    do {                                 \
        if ((gs) == 32)                  \
            f(__VA_ARGS__, 32);          \
        else if ((gs) == 64)             \
            f(__VA_ARGS__, 64);          \
        else                             \
            f(__VA_ARGS__, 128);         \
    } while (0)

/* Shared address arithmetic (all kernels). */
static inline const unsigned char *dr_qk_row(const dr_tensor *w, int64_t r) {
    return (const unsigned char *)w->data + (size_t)r * (size_t)w->ne[w->ndim - 1] * (size_t)w->q.bits / 8;
}

/* The CPU's decode layout of 4- and 8-bit rows (w->q.tiled_rows != 0; made
 * by dr_cpu_q_tile for the avx512vnni GEMVs, dr_qk_gemv4_t16 and
 * dr_qk_gemv8_t16; 2-D tensors). Rows go in tiles of DR_QK_TILE_ROWS, the
 * last tile holding the m < 16 rows left. Inside a tile the packed bytes go
 * by 4-byte chunks (one uint32 word: 8 elements at 4 bits, 4 at 8 bits):
 * chunk c of the tile's row i sits at c * 4 m + 4 i, so one 64-byte load
 * brings the same elements of 16 rows, and the GEMV reads one sequential
 * stream with a row in each 32-bit lane. The tile's scales and biases are transposed the
 * same way: group g of row i at g m + i. A tile occupies the bytes (and
 * scale / bias entries) its rows had in file order. Every other reader sees
 * such a tensor a row at a time through untile_row (matmul_quant.c), in
 * file order;
 * the helpers below address file order only. */
#define DR_QK_TILE_ROWS 16

/* The packed byte holding element e of row r (e even for 4 bits), file
 * order. */
static inline const unsigned char *dr_qk_at(const dr_tensor *w, int64_t r, int64_t e) {
    return dr_qk_row(w, r) + (size_t)e * (size_t)w->q.bits / 8;
}

/* Bytes from one 128-element block of a row to its next. */
#define DR_QK_BLOCK_STEP 64

static inline size_t dr_qk_sb(const dr_tensor *w, int64_t r, int64_t g) {
    return (size_t)(r * (w->ne[w->ndim - 1] / w->q.group_size) + g);
}

/* The walk of the 4-bit GEMVs that take R rows together block by block
 * (quant_avx512bf16.c, and quant_avx512vnni.c on file order): block b of
 * row r + i starts at row[i] + b * DR_QK_BLOCK_STEP, its scales / biases at
 * sb0[i]. Returns how far ahead to prefetch: at least pf_dist packed bytes
 * in whole passes of R rows, so that a row prefetches its own offset in a
 * row a later pass reads, not bytes of the pass in flight. */
static inline size_t dr_qk_rows_walk(const dr_tensor *w, int64_t r, int R, size_t pf_dist,
                                     const unsigned char **row, size_t *sb0) {
    for (int i = 0; i < R; i++) {
        row[i] = dr_qk_row(w, r + i);
        sb0[i] = dr_qk_sb(w, r + i, 0);
    }
    const size_t pass = (size_t)R * (size_t)w->ne[w->ndim - 1] / 2;
    return (pf_dist + pass - 1) / pass * pass;
}

#endif
