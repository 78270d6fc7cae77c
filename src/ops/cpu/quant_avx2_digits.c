/* ops/cpu/quant_avx2_digits.c - the 4-bit GEMV (decode) of level avx2: the
 * nibbles meet x as 8-bit integers through vpmaddubsw.
 *
 * Compiled with -mavx2 -mfma (src/ops/cpu/cpu.cmake) and only called after
 * the run-time check in matmul_quant.c (quant level avx2, one token, rows a
 * multiple of 64 long). Why: the table's FMA GEMV (quant_avx2.c) spends per
 * 16 weights a widening load, an AND, a shift, two int -> fp32 conversions
 * and two FMAs, and on a Zen 3 that held one thread to ~15-17 G weights/s
 * even in L2, about half of what one core can read from DRAM; decode of the
 * 0.8B q4 shape reached 38-59% of the bandwidth floor. Here 32 packed bytes
 * (64 weights) cost an AND, a shift and AND, six vpmaddubsw, three vpmaddwd
 * and one conversion and FMA: ~24 G weights/s on that core in L2 or L3,
 * 0.8B q4 decode +24% (docs/PERFORMANCE.md, session 24); the prefetch in
 * address order (PF_DIST below) added 3-30% by shape (session 25).
 *
 * x as integers, as in quant_avx512vnni.c: each group g of x gets a step
 * sx_g = max |x_g| / (127 * 2^16) and X_i = round(x_i / sx_g), written as
 * digits X = d2 2^16 + d1 2^8 + d0, each in [-128, 127]. vpmaddubsw
 * multiplies the unsigned nibbles (0..15) by a digit and adds adjacent
 * pairs into int16: at most 2 * 15 * 128 = 3840, so never saturated, and
 * the low- and high-nibble sums of a digit (each lane 4 products) add up to
 * at most 7680. vpmaddwd then sums lane pairs into int32 (8 products a
 * lane), folding in the digit weights: (256 P2 + P1) 2^8 + P0 is the exact
 * integer sum q X of the lane's 8 elements (below 2^30: 8 * 15 * 127 * 2^16).
 * Per group
 *     sum_i w_i x_i ~= s_g sx_g sum_i q_i X_i + b_g X_g,  X_g = sum x_i,
 * where only x's rounding to its step (2^-24 of the group's largest |x|) and
 * the fp32 rounding of each lane's sum are new. test_quant holds it to the
 * same bounds as every level (ops/cpu/quant.h).
 *
 * Prepared x (dr_qk_prep4_dig, layout DR_QK_DIG_* in quant_kern.h): per
 * 64-element block 192 bytes, the digits d2, d1, d0 of its 32 even elements
 * (byte j: element 2j, the low nibble of packed byte j), then those of its
 * 32 odd elements (the high nibbles). Lane i of a block's int32 sums then
 * holds elements 8i .. 8i + 7, i.e. group 8i / gs, and one FMA with the
 * lanes' s_g sx_g adds the block in.
 */
#include "ops/cpu/quant_kern.h"
#include "ops/cpu/quant_sb256.h"

#include <float.h>
#include <immintrin.h>
#include <math.h>

#define AI static inline __attribute__((always_inline))
/* Software prefetch distance in packed bytes. A pass reads its R rows side
 * by side, R short streams, which Zen 3's prefetchers follow badly: with
 * each row's own lines prefetched (as quant_avx2.c does) two threads read
 * 16-21 GB/s of 0.8B-shaped rows from DRAM, with the pass's bytes
 * prefetched in address order 20-22 (a plain read: 28-40; q4 decode
 * 0.8B +3-8%, 2B +11-30%; docs/PERFORMANCE.md, CPU, session 25). 4-16 KiB
 * measured alike. */
#define PF_DIST 4096
/* Rows a pass, sharing the block's digits in registers: on the Zen 3 dev VM
 * 2 rows ran up to ~1.2x one at a time, and 4 with the digits loaded once
 * another ~1.1-1.2x, in L2 and in L3 (session 24). */
#define ROWS 4

/* sum q X of one 64-element block as 8 exact int32 lanes: q from the 32
 * packed bytes v, X from the block's six digit vectors d. */
AI __m256i block_dot(__m256i v, const __m256i d[6]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    const __m256i p2 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, d[0]), _mm256_maddubs_epi16(hi, d[3]));
    const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, d[1]), _mm256_maddubs_epi16(hi, d[4]));
    const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, d[2]), _mm256_maddubs_epi16(hi, d[5]));
    const __m256i t = _mm256_add_epi32(_mm256_madd_epi16(p2, _mm256_set1_epi16(256)),
                                       _mm256_madd_epi16(p1, _mm256_set1_epi16(1)));
    return _mm256_add_epi32(_mm256_slli_epi32(t, 8), _mm256_madd_epi16(p0, _mm256_set1_epi16(1)));
}

typedef struct {
    const __m256i *d;     /* digits: DR_QK_DIG_BLOCK bytes a block */
    const float *xs, *sx; /* X_g and sx_g */
    int64_t G;
} prepared;

/* R rows from r: groups 8 at a time (their s_g sx_g and bias terms), then
 * the blocks they cover, each block of every row before the next block.
 * Each row's sums go in the same order whatever R is. */
AI void rows_q4(float *y, const prepared *x, const dr_tensor *w, int64_t r, int R, int gs) {
    const int64_t G = x->G;
    const dr_dtype dt = w->q.sb_dtype;
    const unsigned char *row[ROWS];
    size_t sb0[ROWS];
    __m256 acc[ROWS], accb[ROWS];
    float tail[ROWS];
    for (int i = 0; i < R; i++) {
        row[i] = dr_qk_row(w, r + i);
        sb0[i] = dr_qk_sb(w, r + i, 0);
        acc[i] = accb[i] = _mm256_setzero_ps();
        tail[i] = 0.0f;
    }
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
        const int ng = G - g0 < 8 ? (int)(G - g0) : 8;
        _Alignas(32) float s[ROWS][8];
        if (ng == 8 && dt != DR_DT_F16) { /* F16 needs F16C, not part of this level's check */
            const __m256 SX = _mm256_loadu_ps(x->sx + g0), XS = _mm256_loadu_ps(x->xs + g0);
            for (int i = 0; i < R; i++) {
                _mm256_store_ps(s[i], _mm256_mul_ps(dr_load_sb8(w->q.scales, dt, sb0[i] + (size_t)g0), SX));
                accb[i] = _mm256_fmadd_ps(dr_load_sb8(w->q.biases, dt, sb0[i] + (size_t)g0), XS, accb[i]);
            }
        } else {
            for (int i = 0; i < R; i++)
                for (int j = 0; j < ng; j++) {
                    const size_t e = sb0[i] + (size_t)(g0 + j);
                    s[i][j] = dr_load_f32(w->q.scales, dt, e) * x->sx[g0 + j];
                    tail[i] += dr_load_f32(w->q.biases, dt, e) * x->xs[g0 + j];
                }
        }
        const int64_t e0 = g0 * gs, e1 = (g0 + ng) * gs;
        for (int64_t e = e0; e < e1; e += 64) {
            const __m256i *d = x->d + (e / 64) * (DR_QK_DIG_BLOCK / 32);
            const int j = (int)((e - e0) / gs); /* the block's (first) group */
            __m256i dd[DR_QK_DIG_BLOCK / 32]; /* loaded once for the R rows */
            for (int k = 0; k < DR_QK_DIG_BLOCK / 32; k++)
                dd[k] = _mm256_loadu_si256(d + k);
            /* The pass's rows are one run of memory (file order): sweep it
             * in address order at the pace the pass reads it, R * 32 bytes
             * a block, prefetching the lines that start there PF_DIST
             * ahead. Never faults. */
            const size_t b = (size_t)(e / 2) * (size_t)R;
            for (size_t o = (64 - (b & 63)) & 63; o < 32 * (size_t)R; o += 64)
                _mm_prefetch((const char *)row[0] + b + o + PF_DIST, _MM_HINT_T0);
            for (int i = 0; i < R; i++) {
                const unsigned char *p = row[i] + e / 2;
                const __m256 sc = gs == 32 ? _mm256_setr_m128(_mm_set1_ps(s[i][j]), _mm_set1_ps(s[i][j + 1]))
                                           : _mm256_set1_ps(s[i][j]);
                const __m256i dot = block_dot(_mm256_loadu_si256((const __m256i *)(const void *)p), dd);
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, acc[i]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        y[r + i] = dr_hsum8(_mm256_add_ps(acc[i], accb[i])) + tail[i];
}

AI void gemv_gs(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1, int gs) {
    const int64_t n = w->ne[w->ndim - 1], G = n / gs;
    const float *f = xp + (n / 64) * (DR_QK_DIG_BLOCK / 4);
    const prepared x = {(const __m256i *)(const void *)xp, f, f + G, G};
    int64_t r = r0;
    for (; r + ROWS <= r1; r += ROWS)
        rows_q4(y, &x, w, r, ROWS, gs);
    for (; r < r1; r++)
        rows_q4(y, &x, w, r, 1, gs);
}

void dr_qk_gemv4_dig(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1) {
    DR_QK_BY_GS(w->q.group_size, gemv_gs, y, xp, w, r0, r1);
}

/* ---- x prepared once per token ---- */

/* Group g's sum X_g (in double) and step sx_g, as dr_qk_vnni_steps: at
 * least FLT_MIN, so 1 / sx_g stays finite (an all-zero group is stored as
 * zeros, one below ~1e-31 in steps of FLT_MIN). */
static void steps(float *xs, float *sx, const float *x, int64_t G, int gs) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t g = 0; g < G; g++) {
        __m256 mx = _mm256_setzero_ps();
        __m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd();
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
            a = _mm256_add_pd(a, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            b = _mm256_add_pd(b, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
        }
        _Alignas(32) float m[8];
        _Alignas(32) double s[4];
        _mm256_store_ps(m, mx);
        _mm256_store_pd(s, _mm256_add_pd(a, b));
        float big = 0.0f;
        for (int k = 0; k < 8; k++)
            big = fmaxf(big, m[k]);
        xs[g] = (float)(s[0] + s[1] + s[2] + s[3]);
        sx[g] = fmaxf(big / (127.0f * 65536.0f), FLT_MIN);
    }
}

/* The three digits of 8 integers X (|X| <= 127 * 2^16 + 1), most
 * significant first (d[0] = d2, d[1] = d1, d[2] = d0, the order of the
 * layout): d0 the low byte read as signed, then the same on (X - d0) / 2^8,
 * and d2 what is left. */
AI void digits(__m256i X, __m256i d[3]) {
    d[2] = _mm256_srai_epi32(_mm256_slli_epi32(X, 24), 24);
    const __m256i x1 = _mm256_srai_epi32(_mm256_sub_epi32(X, d[2]), 8);
    d[1] = _mm256_srai_epi32(_mm256_slli_epi32(x1, 24), 24);
    d[0] = _mm256_srai_epi32(_mm256_sub_epi32(x1, d[1]), 8);
}

/* 32 int32 digits (four vectors, elements in order) -> 32 bytes in order. */
AI __m256i pack32(const __m256i v[4]) {
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void dr_qk_prep4_dig(float *xp, const float *x, int64_t n, int gs) {
    const int64_t nb = n / 64, G = n / gs;
    __m256i *out = (__m256i *)(void *)xp;
    float *xs = xp + nb * (DR_QK_DIG_BLOCK / 4), *sx = xs + G;
    steps(xs, sx, x, G, gs);
    for (int64_t b = 0; b < nb; b++) {
        __m256i dg[2][3][4]; /* [even / odd][d2, d1, d0][8 elements] */
        for (int q = 0; q < 4; q++) { /* elements 16q .. 16q + 15 of the block: one group */
            const float *p = x + 64 * b + 16 * q;
            const __m256 inv = _mm256_set1_ps(1.0f / sx[(64 * b + 16 * q) / gs]);
            const __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
            for (int odd = 0; odd < 2; odd++) { /* even: 0 2 .. 14, odd: 1 3 .. 15 */
                const __m256 v = odd ? _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))
                                     : _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
                const __m256 o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
                __m256i d[3];
                digits(_mm256_cvtps_epi32(_mm256_mul_ps(o, inv)), d);
                for (int k = 0; k < 3; k++)
                    dg[odd][k][q] = d[k];
            }
        }
        for (int odd = 0; odd < 2; odd++)
            for (int k = 0; k < 3; k++)
                _mm256_storeu_si256(out + b * (DR_QK_DIG_BLOCK / 32) + 3 * odd + k, pack32(dg[odd][k]));
    }
}
