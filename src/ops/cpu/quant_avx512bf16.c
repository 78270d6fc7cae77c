/* ops/cpu/quant_avx512bf16.c - 4-bit GEMV (decode) with AVX512_BF16: the
 * nibbles become bf16 words by bit operations and meet x through vdpbf16ps.
 *
 * Compiled with -mavx512bf16 (src/ops/cpu/cpu.cmake) and only called after
 * the run-time check in matmul_quant.c. Why it is faster than the AVX-512
 * kernel: that one spends ~7 vector ops per 32 weights (widen, AND, shift,
 * two int->float conversions, two FMAs) and is bound by the FP pipes; here
 * 64 packed bytes (128 weights) are one plain load, and each quarter of
 * them one 16-bit shift and one vpternlogd (pipes the FMAs don't use), so
 * the two vdpbf16ps per 32 weights are the limit (~2 cycles per 32 weights
 * against ~4 in cache on Zen 4, measured).
 *
 * Weights: word j of the 64 bytes holds elements 4j .. 4j+3 (nibbles at bits
 * 0, 4, 8, 12); element 4j + k is shifted to bits 3..6 and OR-ed with
 * 0x3F80, which makes the bf16 value u = 1 + q / 16, exact. So vector k of a
 * 128-element block holds elements 4j + k, j < 32; the prepared x is stored
 * in the same order (quant_kern.h, DR_QK_BF16_*).
 *
 * Exactness: x enters as hi = bf16(x), lo = bf16(x - hi) (hi + lo within
 * 2^-17 |x| of x), and bf16 x bf16 products are exact in fp32, so per group
 *     D_g = sum u (hi + lo)            (vdpbf16ps, fp32 accumulation)
 *     sum q x ~= 16 (D_g - H_g) - 8 (H_g - X_g) = 16 D_g - A_g
 * with H_g = sum (hi + lo), X_g = sum x and A_g = 24 H_g - 8 X_g computed
 * once per token (shared by every row). The -8 (H_g - X_g) term centres the
 * split error: what is left is sum (q - 8)(hi + lo - x), at most 2^-17 of
 * sum |s (q - 8) x|, next to the fp32 rounding of the fp32 kernels.
 *     y = 16 sum_g s_g D_g + sum_g (b_g X_g - s_g A_g).
 * The dot of a block is one fresh accumulator over its 16 fp32 lanes; lane
 * i holds elements 8i + k and 8i + 4 + k, i.e. group (8i) / gs of the block,
 * so one FMA with the scales permuted to the lanes (vpermps) adds it in.
 */
#include "ops/cpu/quant_kern.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))
/* Software prefetch: at least this many packed bytes ahead of the R row
 * streams together (quant_avx512.c found 4 KiB best for one stream). A row
 * prefetches its own offset in the row that a later pass will read (R rows
 * per pass, so R * row bytes per pass ahead), not p + PF_DIST: with R
 * contiguous rows in flight that address is another row already read. */
#ifndef PF_DIST
#define PF_DIST 4096
#endif
#ifndef ROWS
#define ROWS 4 /* rows per pass: they share the x registers */
#endif

AI __m512 load_sb16(const void *base, dr_dtype dt, size_t i, __mmask16 m) {
    if (dt == DR_DT_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)base + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i);
    if (dt == DR_DT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* ((v shifted) & 0x78) | 0x3F80 per 16-bit word: the nibble moved to bits
 * 3..6 of a bf16 1.0, i.e. u = 1 + q / 16. */
AI __m512bh as_bf16(__m512i v, __m512i mask, __m512i one) {
    return (__m512bh)_mm512_ternarylogic_epi32(v, mask, one, 0xEA); /* (v & mask) | one */
}

/* D (16 lanes) = sum over the 128-element block at p of u * (hi + lo);
 * h / l: the block's prepared x, vector k = elements 4j + k. */
AI __m512 block_dot(__m512i v, const __m512bh h[4], const __m512bh l[4], __m512i mask, __m512i one) {
    __m512bh q0 = as_bf16(_mm512_slli_epi16(v, 3), mask, one), q1 = as_bf16(_mm512_srli_epi16(v, 1), mask, one);
    __m512bh q2 = as_bf16(_mm512_srli_epi16(v, 5), mask, one), q3 = as_bf16(_mm512_srli_epi16(v, 9), mask, one);
    /* four chains of two: vdpbf16ps has a long latency and the rows' chains
       alone don't keep it busy; the adds run on other pipes */
    const __m512 z = _mm512_setzero_ps();
    __m512 d0 = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, q0, h[0]), q0, l[0]);
    __m512 d1 = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, q1, h[1]), q1, l[1]);
    __m512 d2 = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, q2, h[2]), q2, l[2]);
    __m512 d3 = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, q3, h[3]), q3, l[3]);
    return _mm512_add_ps(_mm512_add_ps(d0, d1), _mm512_add_ps(d2, d3));
}

typedef struct {
    const uint16_t *xh, *xl; /* prepared x, n rounded up to 128 (zeros after n) */
    const float *xs, *xa;    /* X_g and A_g */
    int64_t n, G;
} prepared;

/* R rows starting at r (see the top of the file for the algebra). Groups go
 * 16 at a time: their scales / biases widened once, the bias terms added,
 * then the 128-element blocks they cover. */
AI void rows_q4(float *y, const prepared *x, const dr_tensor *w, int64_t r, int R, int gs) {
    const int64_t n = x->n, G = x->G;
    const dr_dtype dt = w->q.sb_dtype;
    const __m512i mask = _mm512_set1_epi16(0x78), one = _mm512_set1_epi16(0x3F80);
    /* lane i of a block's dot belongs to its group (8 i) / gs */
    const __m512i lane_g = _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             gs == 32 ? 2 : gs == 64 ? 3 : 4);
    const int gpb = 128 / gs;                                     /* groups per block */
    const __mmask64 tail = (__mmask64)((1ull << ((n % 128) / 2)) - 1); /* packed bytes of a short last block */
    const size_t rb = (size_t)n / 2, pass = (size_t)R * rb;
    const size_t ahead = (PF_DIST + pass - 1) / pass * pass; /* whole passes */
    const unsigned char *row[ROWS];
    size_t sb0[ROWS];
    __m512 acc[ROWS], accb[ROWS], S[ROWS];
    for (int i = 0; i < R; i++) {
        row[i] = dr_qk_row(w, r + i);
        sb0[i] = dr_qk_sb(w, r + i, 0);
        acc[i] = accb[i] = _mm512_setzero_ps();
    }
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
        const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
        const __mmask16 m = (__mmask16)((1u << ng) - 1u);
        const __m512 X = _mm512_maskz_loadu_ps(m, x->xs + g0), A = _mm512_maskz_loadu_ps(m, x->xa + g0);
        for (int i = 0; i < R; i++) {
            S[i] = load_sb16(w->q.scales, dt, sb0[i] + (size_t)g0, m);
            accb[i] = _mm512_fmadd_ps(load_sb16(w->q.biases, dt, sb0[i] + (size_t)g0, m), X, accb[i]);
            accb[i] = _mm512_fnmadd_ps(S[i], A, accb[i]);
        }
        const int64_t e1 = (g0 + ng) * gs;
        for (int64_t e = g0 * gs, b = 0; e < e1; e += 128, b++) {
            __m512bh h[4], l[4];
            for (int k = 0; k < 4; k++) {
                h[k] = (__m512bh)_mm512_loadu_si512(x->xh + e + 32 * k);
                l[k] = (__m512bh)_mm512_loadu_si512(x->xl + e + 32 * k);
            }
            const __m512i idx = _mm512_add_epi32(lane_g, _mm512_set1_epi32((int)b * gpb));
            const int full = e + 128 <= n;
            for (int i = 0; i < R; i++) {
                const unsigned char *p = row[i] + e / 2;
                _mm_prefetch((const char *)(p + ahead), _MM_HINT_T0); /* one line per block; never faults */
                const __m512i v = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(tail, p);
                acc[i] = _mm512_fmadd_ps(block_dot(v, h, l, mask, one), _mm512_permutexvar_ps(idx, S[i]), acc[i]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        y[r + i] = 16.0f * _mm512_reduce_add_ps(acc[i]) + _mm512_reduce_add_ps(accb[i]);
}

AI void gemv_gs(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1, int gs) {
    const int64_t n = w->ne[w->ndim - 1], np = DR_QK_BF16_PAD(n);
    const uint16_t *xh = (const uint16_t *)(const void *)xp;
    const prepared x = {xh, xh + np, xp + np, xp + np + n / gs, n, n / gs};
    int64_t r = r0;
    for (; r + ROWS <= r1; r += ROWS)
        rows_q4(y, &x, w, r, ROWS, gs);
    for (; r < r1; r++)
        rows_q4(y, &x, w, r, 1, gs);
}

void dr_qk_gemv4_bf16(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1) {
    switch (w->q.group_size) {
    case 32:
        gemv_gs(y, xp, w, r0, r1, 32);
        break;
    case 64:
        gemv_gs(y, xp, w, r0, r1, 64);
        break;
    default:
        gemv_gs(y, xp, w, r0, r1, 128);
        break;
    }
}
