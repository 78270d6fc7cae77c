/* ops/cpu/quant_avx512vnni.c - 4-bit GEMV (decode) with AVX512_VNNI: the
 * nibbles meet x as 8-bit integers through vpdpbusd.
 *
 * Compiled with -mavx512vnni (src/ops/cpu/cpu.cmake) and only called after
 * the run-time check in matmul_quant.c (quant level avx512vnni). Why it is
 * faster than the avx512bf16 kernel: that one needs x as two bf16 vectors
 * (hi + lo) and so two vdpbf16ps per 32 weights, plus a shift and a
 * vpternlogd per 32 to make bf16 words of the nibbles. Here 64 packed bytes
 * (128 weights) become two vectors of unsigned bytes (one AND, one shift and
 * AND), and x enters as three signed 8-bit digits: six vpdpbusd of 64
 * products each per 128 weights instead of eight vdpbf16ps of 32. Measured
 * on the dev VM's Zen 4, one thread: 1.15-1.3x in L2 and from DRAM; decode
 * end to end +3-9% there (2 threads) and 1.4x on a 16-core Xeon
 * (docs/PERFORMANCE.md, CPU, session 17).
 *
 * x as integers: each group g of x gets a step sx_g = max |x_g| / (127 *
 * 2^16) and X_i = round(x_i / sx_g), |X_i| <= 127 * 2^16 (24 bits), written
 * as digits X = d2 2^16 + d1 2^8 + d0 with every d in [-128, 127]. Per
 * 128-element block and output lane, ((D2 << 8) + D1 << 8) + D0 with D_k =
 * sum q d_k is the exact integer sum q X (below 2^31: 8 products of at most
 * 15 * 127 * 2^16 a lane). So per group
 *     sum_i w_i x_i ~= s_g sx_g sum_i q_i X_i + b_g X_g,  X_g = sum x_i,
 * where only x's rounding to the step is new: |X_i sx_g - x_i| <= sx_g / 2,
 * 2^-24 of the group's largest |x|, the size of an fp32 rounding of the
 * group's partial sums. test_quant and test_cpu_ops hold this kernel to the
 * same bounds as every level (ops/cpu/quant.h).
 *
 * Weights and walk as in quant_avx512bf16.c: byte j of a block holds
 * elements 2j (low nibble) and 2j + 1 (high), so the prepared digits are
 * stored even elements first, then odd ones; vpdpbusd's lane i then holds
 * elements 8i .. 8i + 7 of the block, i.e. group (8i) / gs, and one FMA with
 * the scales permuted to the lanes adds a block in. Four rows go together
 * and read either the file order or the decode layout (dr_cpu_q_tile).
 */
#include "ops/cpu/quant_kern.h"
#include "ops/cpu/quant_sb512.h"

#include <float.h>
#include <immintrin.h>
#include <math.h>

#define AI static inline __attribute__((always_inline))
/* L2 prefetch distance and rows per pass: as quant_avx512bf16.c (measured
 * there; the same streams). */
#define PF_DIST 16384
#define ROWS 4

typedef struct {
    const int8_t *d;              /* digits: DR_QK_VNNI_BLOCK bytes a block */
    const float *xs, *sx;         /* X_g and sx_g */
    int64_t n, G;
} prepared;

/* sum q X over one block for the 16 lanes: q from the 64 packed bytes v,
 * X from the block's digits d (six vectors, see DR_QK_VNNI_*). */
AI __m512i block_dot(__m512i v, const __m512i d[6], __m512i m4) {
    const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, d[0]);
    a = _mm512_dpbusd_epi32(a, hi, d[3]);
    a = _mm512_slli_epi32(a, 8);
    a = _mm512_dpbusd_epi32(a, lo, d[1]);
    a = _mm512_dpbusd_epi32(a, hi, d[4]);
    a = _mm512_slli_epi32(a, 8);
    a = _mm512_dpbusd_epi32(a, lo, d[2]);
    return _mm512_dpbusd_epi32(a, hi, d[5]);
}

/* R rows starting at r. Groups go 16 at a time: s_g sx_g and the bias terms
 * once per group, then the 128-element blocks they cover. */
AI void rows_q4(float *y, const prepared *x, const dr_tensor *w, int64_t r, int R, int gs) {
    const int64_t n = x->n, G = x->G;
    const dr_dtype dt = w->q.sb_dtype;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i lane_g = _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             gs == 32 ? 2 : gs == 64 ? 3 : 4);
    const int gpb = 128 / gs;
    const __mmask64 tail = (__mmask64)((1ull << ((n % 128) / 2)) - 1);
    const unsigned char *row[ROWS];
    size_t sb0[ROWS];
    const size_t ahead = dr_qk_rows_walk(w, r, R, PF_DIST, row, sb0);
    __m512 acc[ROWS], accb[ROWS], S[ROWS];
    for (int i = 0; i < R; i++)
        acc[i] = accb[i] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
        const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
        const __mmask16 m = (__mmask16)((1u << ng) - 1u);
        const __m512 X = _mm512_maskz_loadu_ps(m, x->xs + g0), SX = _mm512_maskz_loadu_ps(m, x->sx + g0);
        for (int i = 0; i < R; i++) {
            S[i] = _mm512_mul_ps(dr_load_sb16(w->q.scales, dt, sb0[i] + (size_t)g0, m), SX);
            accb[i] = _mm512_fmadd_ps(dr_load_sb16(w->q.biases, dt, sb0[i] + (size_t)g0, m), X, accb[i]);
        }
        const int64_t e1 = (g0 + ng) * gs;
        for (int64_t e = g0 * gs, b = 0; e < e1; e += 128, b++) {
            __m512i d[6];
            const int8_t *db = x->d + (e / 128) * DR_QK_VNNI_BLOCK;
            for (int k = 0; k < 6; k++)
                d[k] = _mm512_loadu_si512(db + 64 * k);
            const __m512i idx = _mm512_add_epi32(lane_g, _mm512_set1_epi32((int)b * gpb));
            const int full = e + 128 <= n;
            for (int i = 0; i < R; i++) {
                const unsigned char *p = row[i] + (size_t)(e / 128) * DR_QK_BLOCK_STEP;
                _mm_prefetch((const char *)(p + ahead), _MM_HINT_T1); /* never faults */
                const __m512i v = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(tail, p);
                const __m512 dot = _mm512_cvtepi32_ps(block_dot(v, d, m4));
                acc[i] = _mm512_fmadd_ps(dot, _mm512_permutexvar_ps(idx, S[i]), acc[i]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        y[r + i] = _mm512_reduce_add_ps(acc[i]) + _mm512_reduce_add_ps(accb[i]);
}

AI void gemv_gs(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1, int gs) {
    const int64_t n = w->ne[w->ndim - 1], nb = DR_QK_BF16_PAD(n) / 128, G = n / gs;
    const float *f = xp + nb * DR_QK_VNNI_BLOCK / 4;
    const prepared x = {(const int8_t *)(const void *)xp, f, f + G, n, G};
    int64_t r = r0;
    for (; r + ROWS <= r1; r += ROWS)
        rows_q4(y, &x, w, r, ROWS, gs);
    for (; r < r1; r++)
        rows_q4(y, &x, w, r, 1, gs);
}

void dr_qk_gemv4_vnni(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1) {
    DR_QK_BY_GS(w->q.group_size, gemv_gs, y, xp, w, r0, r1);
}

/* ---- x prepared once per token (layout: DR_QK_VNNI_* in quant_kern.h) ---- */

/* Even (odd = 1) elements of the 32 floats in a, b. */
AI __m512 half_of(__m512 a, __m512 b, int odd) {
    const __m512i idx = _mm512_add_epi32(
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0), _mm512_set1_epi32(odd));
    return _mm512_permutex2var_ps(a, idx, b);
}

/* The three digits of 16 integers X (|X| <= 127 * 2^16 + 1) as signed bytes
 * at out[0], out[64], out[128]: d0 = the low byte read as signed, then the
 * same on (X - d0) / 2^8, and d2 what is left. */
AI void digits(__m512i X, int8_t *out) {
    const __m512i d0 = _mm512_srai_epi32(_mm512_slli_epi32(X, 24), 24);
    const __m512i x1 = _mm512_srai_epi32(_mm512_sub_epi32(X, d0), 8);
    const __m512i d1 = _mm512_srai_epi32(_mm512_slli_epi32(x1, 24), 24);
    const __m512i d2 = _mm512_srai_epi32(_mm512_sub_epi32(x1, d1), 8);
    _mm_storeu_si128((__m128i *)(void *)out, _mm512_cvtepi32_epi8(d2));
    _mm_storeu_si128((__m128i *)(void *)(out + 64), _mm512_cvtepi32_epi8(d1));
    _mm_storeu_si128((__m128i *)(void *)(out + 128), _mm512_cvtepi32_epi8(d0));
}

/* Group g's step sx_g and its sum X_g (in double, element order). The step
 * is at least FLT_MIN, so 1 / sx_g stays finite: a group whose largest |x|
 * is below ~1e-31 is then stored in steps of FLT_MIN (what fp32 arithmetic
 * on such values keeps anyway), and an all-zero group as zeros. */
void dr_qk_vnni_steps(float *xs, float *sx, const float *x, int64_t G, int gs) {
    for (int64_t g = 0; g < G; g++) {
        __m512 mx = _mm512_setzero_ps();
        __m512d a = _mm512_setzero_pd(), b = _mm512_setzero_pd();
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 16) {
            const __m512 v = _mm512_loadu_ps(x + i);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
            a = _mm512_add_pd(a, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
            b = _mm512_add_pd(b, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
        }
        const float m = _mm512_reduce_max_ps(mx);
        xs[g] = (float)_mm512_reduce_add_pd(_mm512_add_pd(a, b));
        sx[g] = fmaxf(m / (127.0f * 65536.0f), FLT_MIN);
    }
}

void dr_qk_prep4_vnni(float *xp, const float *x, int64_t n, int gs) {
    const int64_t nb = DR_QK_BF16_PAD(n) / 128, G = n / gs;
    int8_t *dg = (int8_t *)(void *)xp;
    float *xs = xp + nb * DR_QK_VNNI_BLOCK / 4, *sx = xs + G;
    dr_qk_vnni_steps(xs, sx, x, G, gs);
    for (int64_t b = 0; b < nb; b++) {
        __m512 v[8];
        for (int i = 0; i < 8; i++) { /* zeros past n */
            const int64_t left = n - (128 * b + 16 * i);
            const __mmask16 m = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            v[i] = _mm512_maskz_loadu_ps(m, x + 128 * b + 16 * i);
        }
        for (int odd = 0; odd < 2; odd++)
            for (int q = 0; q < 4; q++) { /* elements 32q .. 32q + 31 of the block */
                const int64_t g = (128 * b + 32 * q) / gs;
                const __m512 inv = _mm512_set1_ps(g < G ? 1.0f / sx[g] : 0.0f);
                const __m512i X = _mm512_cvtps_epi32(_mm512_mul_ps(half_of(v[2 * q], v[2 * q + 1], odd), inv));
                digits(X, dg + b * DR_QK_VNNI_BLOCK + odd * 192 + 16 * q);
            }
    }
}
