/* ops/cpu/quant_avx512bf16.c - 4-bit GEMV (decode) with AVX512_BF16: the
 * nibbles become bf16 words by bit operations and meet x through vdpbf16ps.
 *
 * Compiled with -mavx512bf16 (src/ops/cpu/cpu.cmake) and only called after
 * the run-time check in matmul_quant.c. Why it is faster than the AVX-512
 * kernel: that one spends ~7 vector ops per 32 weights (widen, AND, shift,
 * two int->float conversions, two FMAs) and is bound by the FP pipes; here
 * 64 packed bytes (128 weights) are one plain load, and each quarter of
 * them one 16-bit shift and one vpternlogd (pipes the FMAs don't use), so
 * the two vdpbf16ps per 32 weights are the limit (Zen 4 register loops:
 * ~2 cycles per 32 weights against ~4; the whole kernel 1.4x in L2).
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
 * sum |s (q - 8) x|, next to the fp32 rounding of the fp32 kernels
 * (vdpbf16ps flushes denormals: only |x| below ~1e-35 loses its lo part).
 *     y = 16 sum_g s_g D_g + sum_g (b_g X_g - s_g A_g).
 * The dot of a block is one fresh accumulator over its 16 fp32 lanes; lane
 * i holds elements 8i + k and 8i + 4 + k, i.e. group (8i) / gs of the block,
 * so one FMA with the scales permuted to the lanes (vpermps) adds it in.
 *
 * Four rows go together, block by block, in file order (four streams).
 * A tensor in the CPU's decode layout (quant_kern.h) reaches this kernel
 * through file-order copies of its rows (untile_row): that layout is
 * made for the avx512vnni level, which every CPU with AVX512_BF16 so far
 * also has, so this level only meets it when a test or DR_CPU_QLEVEL caps
 * the level.
 */
#include "ops/cpu/quant_kern.h"
#include "ops/cpu/quant_sb512.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))
/* Software prefetch into L2, at least this many packed bytes ahead of the R
 * row streams together. A row prefetches its own offset in the row that a
 * later pass will read (R rows per pass, so whole multiples of R * row bytes
 * ahead), not p + PF_DIST: with R contiguous rows in flight that address is
 * another row already read. Measured (2 threads, 144 MiB at q4, quiet VM):
 * into L1 at 4 KiB as quant_avx512.c: ~20 GB/s, slower than that kernel;
 * into L2 at 8-24 KiB: 25-30 GB/s; 16 KiB kept. */
#ifndef PF_DIST
#define PF_DIST 16384
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
#ifndef ROWS
#define ROWS 4 /* rows per pass: they share the x registers */
#endif

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
    /* two chains of four: one chain of eight (vdpbf16ps latency ~6) left
       the pipe idle (-20% in L2), four chains of two cost more adds */
    __m512 d0 = _mm512_dpbf16_ps(_mm512_setzero_ps(), q0, h[0]), d1 = _mm512_dpbf16_ps(_mm512_setzero_ps(), q2, h[2]);
    d0 = _mm512_dpbf16_ps(d0, q0, l[0]);
    d1 = _mm512_dpbf16_ps(d1, q2, l[2]);
    d0 = _mm512_dpbf16_ps(d0, q1, h[1]);
    d1 = _mm512_dpbf16_ps(d1, q3, h[3]);
    d0 = _mm512_dpbf16_ps(d0, q1, l[1]);
    d1 = _mm512_dpbf16_ps(d1, q3, l[3]);
    return _mm512_add_ps(d0, d1);
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
    const unsigned char *row[ROWS];
    size_t sb0[ROWS]; /* block b of row i at row[i] + b * 64 */
    const size_t ahead = dr_qk_rows_walk(w, r, R, PF_DIST, row, sb0);
    __m512 acc[ROWS], accb[ROWS], S[ROWS];
    for (int i = 0; i < R; i++)
        acc[i] = accb[i] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
        const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
        const __mmask16 m = (__mmask16)((1u << ng) - 1u);
        const __m512 X = _mm512_maskz_loadu_ps(m, x->xs + g0), A = _mm512_maskz_loadu_ps(m, x->xa + g0);
        for (int i = 0; i < R; i++) {
            S[i] = dr_load_sb16(w->q.scales, dt, sb0[i] + (size_t)g0, m);
            accb[i] = _mm512_fmadd_ps(dr_load_sb16(w->q.biases, dt, sb0[i] + (size_t)g0, m), X, accb[i]);
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
                const unsigned char *p = row[i] + (size_t)(e / 128) * DR_QK_BLOCK_STEP;
                _mm_prefetch((const char *)(p + ahead), PF_HINT); /* one line per block; never faults */
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

/* ---- x prepared once per token (layout: DR_QK_BF16_* in quant_kern.h) ---- */

/* Elements 4 j + k, j < 16, of the 64 floats in a..d: lanes 0-7 from a, b
 * (elements 0..31), lanes 8-15 from c, d (32..63). */
AI __m512 stride4(__m512 a, __m512 b, __m512 c, __m512 d, int k) {
    const __m512i idx = _mm512_add_epi32(_mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0),
                                         _mm512_set1_epi32(k));
    return _mm512_shuffle_f32x4(_mm512_permutex2var_ps(a, idx, b), _mm512_permutex2var_ps(c, idx, d), 0x44);
}

/* bf16 of 16 floats, round to nearest even (as dr_f32_to_bf16 for numbers),
 * and back to fp32. */
AI __m256i to_bf16(__m512 v, __m512 *back) {
    __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    *back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return h;
}

/* The group sums: X_g in double (element order); the split's residual
 * D_g = sum (hi + lo - x) from the vectors (each term exact in fp32: hi + lo
 * has at most 17 significant bits), A_g = 24 H_g - 8 X_g = 16 X_g + 24 D_g. */
static void group_sums(float *xs, float *xa, const float *x, const float *dsum, int64_t G, int gs) {
    for (int64_t g = 0; g < G; g++) {
        __m512d a = _mm512_setzero_pd(), b = _mm512_setzero_pd();
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 16) {
            a = _mm512_add_pd(a, _mm512_cvtps_pd(_mm256_loadu_ps(x + i)));
            b = _mm512_add_pd(b, _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8)));
        }
        const double s = _mm512_reduce_add_pd(_mm512_add_pd(a, b));
        xs[g] = (float)s;
        xa[g] = (float)(16.0 * s + 24.0 * (double)dsum[g]);
    }
}

void dr_qk_prep4_bf16(float *xp, const float *x, int64_t n, int gs) {
    const int64_t np = DR_QK_BF16_PAD(n), G = n / gs;
    uint16_t *hi = (uint16_t *)(void *)xp, *lo = hi + np;
    float *xs = xp + np, *xa = xs + G;
    float *dsum = xa; /* D_g first, turned into A_g by group_sums */
    for (int64_t g = 0; g < G; g++)
        dsum[g] = 0.0f;
    for (int64_t b = 0; b < np; b += 128) {
        __m512 v[8];
        for (int i = 0; i < 8; i++) { /* zeros past n */
            const int64_t left = n - (b + 16 * i);
            const __mmask16 m = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            v[i] = _mm512_maskz_loadu_ps(m, x + b + 16 * i);
        }
        __m512 dh[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}; /* residuals of the two 64-element halves */
        for (int k = 0; k < 4; k++)
            for (int h = 0; h < 2; h++) {
                const __m512 e = stride4(v[4 * h], v[4 * h + 1], v[4 * h + 2], v[4 * h + 3], k);
                __m512 fh, fl;
                const __m256i bh = to_bf16(e, &fh), bl = to_bf16(_mm512_sub_ps(e, fh), &fl);
                _mm256_storeu_si256((__m256i *)(void *)(hi + b + 32 * k + 16 * h), bh);
                _mm256_storeu_si256((__m256i *)(void *)(lo + b + 32 * k + 16 * h), bl);
                dh[h] = _mm512_add_ps(dh[h], _mm512_sub_ps(_mm512_add_ps(fh, fl), e));
            }
        /* lanes 0-7 of half h sum its first 32 elements (one group of 32, or
           part of a larger one), lanes 8-15 the next 32 */
        for (int h = 0; h < 2; h++) {
            const int64_t e0 = b + 64 * h;
            if (e0 >= n)
                break;
            const float lo8 = _mm512_mask_reduce_add_ps(0x00FF, dh[h]), hi8 = _mm512_mask_reduce_add_ps(0xFF00, dh[h]);
            dsum[e0 / gs] += lo8;
            if (e0 + 32 < n)
                dsum[(e0 + 32) / gs] += hi8;
        }
    }
    group_sums(xs, xa, x, dsum, G, gs);
}

void dr_qk_gemv4_bf16(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1) {
    DR_QK_BY_GS(w->q.group_size, gemv_gs, y, xp, w, r0, r1);
}
