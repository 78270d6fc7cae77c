/* ops/cpu/quant_avx2.c - AVX2+FMA kernels for 4/8-bit MLX affine weights.
 *
 * Compiled with -mavx2 -mfma (src/quant/quant.cmake) and only called after
 * the run-time check in matmul_quant.c. GEMV (decode): s * (q . x) + b * X
 * per group on the prepared x (quant_kern.h); 8 bytes -> 8 int32 lanes per
 * step (4-bit: 16 weights, low nibbles by AND, high by a shift, each against
 * its half of the permuted x). Dequantization (prefill blocks, embeddings):
 * 8-bit 8 bytes -> 8 int32 -> fp32; 4-bit 8 bytes hold 16 nibbles, element
 * 2k in the low nibble of byte k, interleaved back into element order with
 * one byte unpack, then widened; w = scale * q + bias formed in registers.
 */
#include "ops/cpu/quant_kern.h"
#include "ops/cpu/quant_sb256.h"

#include <immintrin.h>
#include <stdbool.h>

static inline __m128i load8(const unsigned char *p) { return _mm_loadl_epi64((const __m128i *)(const void *)p); }

/* 16 nibbles (8 bytes at p) -> 16 bytes in element order */
static inline __m128i nibbles16(const unsigned char *p) {
    const __m128i m = _mm_set1_epi8(0x0f);
    __m128i b = load8(p);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm_unpacklo_epi8(lo, hi);
}

static inline __m256 widen8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }

/* The 16 weights [i, i+16) after p (a group's start) as fp32 (i a multiple of 16). */
static inline void weights16_q4(const unsigned char *p, int64_t i, __m256 s, __m256 b, __m256 *w0, __m256 *w1) {
    __m128i u = nibbles16(p + i / 2);
    *w0 = _mm256_fmadd_ps(widen8(u), s, b);
    *w1 = _mm256_fmadd_ps(widen8(_mm_srli_si128(u, 8)), s, b);
}

#define AI static inline __attribute__((always_inline))

/* Software prefetch distance in packed bytes (see quant_avx512.c). */
#ifndef PF_DIST
#define PF_DIST 4096
#endif

/* sum_i q_i x_i over one group of gs weights at p (x prepared, DR_QK_PERM
 * for 4-bit), as 8 partial sums. 4-bit: each 8 bytes widen to 8 int32 lanes
 * once; AND 15 gives the low nibbles (even elements), a shift the high ones
 * (odd elements), each against its half of the permuted 32-element block. */
AI __m256 group_dot(const unsigned char *p, const float *x, int bits, int gs) {
    __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
    if (bits == 4) {
        const __m256i m = _mm256_set1_epi32(0x0f);
        for (int k = 0; k < gs; k += 32)
            for (int h = 0; h < 16; h += 8) {
                __m256i b = _mm256_cvtepu8_epi32(load8(p + k / 2 + h));
                d0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, m)), _mm256_loadu_ps(x + k + h), d0);
                d1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), _mm256_loadu_ps(x + k + 16 + h),
                                     d1);
            }
    } else {
        for (int k = 0; k < gs; k += 16) {
            d0 = _mm256_fmadd_ps(widen8(load8(p + k)), _mm256_loadu_ps(x + k), d0);
            d1 = _mm256_fmadd_ps(widen8(load8(p + k + 8)), _mm256_loadu_ps(x + k + 8), d1);
        }
    }
    return _mm256_add_ps(d0, d1);
}

/* Rows [r0, r1): y[r] = sum_g s_g * (q . x)_g + (b . X) over the row's
 * groups, 8 groups' scales and biases widened at a time (BF16 in vectors;
 * F16 and tails element by element: F16C is not part of this level's
 * check). Two accumulators (even / odd groups) keep the per-group FMAs off
 * one dependency chain. */
AI void gemv_rows(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1, int bits, int gs) {
    const int64_t n = w->ne[w->ndim - 1], G = n / gs;
    const float *xs = xp + n;
    const dr_dtype dt = w->q.sb_dtype;
    const int gb = gs * bits / 8; /* packed bytes per group */
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = dr_qk_row(w, r);
        const size_t sb0 = dr_qk_sb(w, r, 0);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), accb = _mm256_setzero_ps();
        float tail = 0.0f;
        _Alignas(32) float s[8];
        for (int64_t g0 = 0; g0 < G; g0 += 8) {
            const int ng = G - g0 < 8 ? (int)(G - g0) : 8;
            const size_t i = sb0 + (size_t)g0;
            if (ng == 8 && dt != DR_DT_F16) {
                const __m256 bv = dr_load_sb8(w->q.biases, dt, i);
                _mm256_store_ps(s, dr_load_sb8(w->q.scales, dt, i));
                accb = _mm256_fmadd_ps(bv, _mm256_loadu_ps(xs + g0), accb);
            } else {
                for (int j = 0; j < ng; j++) {
                    s[j] = dr_load_f32(w->q.scales, dt, i + (size_t)j);
                    tail += dr_load_f32(w->q.biases, dt, i + (size_t)j) * xs[g0 + j];
                }
            }
            const unsigned char *p = row + (size_t)g0 * gb; /* the prefetches' guide */
            const float *x = xp + g0 * gs;
            int j = 0;
            for (; j + 2 <= ng; j += 2) {
                for (int o = 0; o < 2 * gb; o += 64) /* prefetches never fault past the end */
                    _mm_prefetch((const char *)(p + (size_t)j * gb + PF_DIST + o), _MM_HINT_T0);
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s[j]),
                                       group_dot(row + (size_t)(g0 + j) * gb, x + j * gs, bits, gs), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(s[j + 1]),
                                       group_dot(row + (size_t)(g0 + j + 1) * gb, x + (j + 1) * gs, bits, gs),
                                       acc1);
            }
            if (j < ng)
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s[j]),
                                       group_dot(row + (size_t)(g0 + j) * gb, x + j * gs, bits, gs), acc0);
        }
        y[r] = dr_hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), accb)) + tail;
    }
}

/* One specialisation per (bits, group size): the group loop fully unrolled. */
static void gemv(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1) {
    if (w->q.bits == 4)
        DR_QK_BY_GS(w->q.group_size, gemv_rows, y, xp, w, r0, r1, 4);
    else
        DR_QK_BY_GS(w->q.group_size, gemv_rows, y, xp, w, r0, r1, 8);
}

/* ---- several tokens: each row read once for all of them ----
 * gemv_rows at T = 1 stays its own loop: running decode through row_n with
 * one token gave the same values but 12-18% slower decode (PERFORMANCE.md,
 * session 23). */

#define NT 2 /* tokens a row pass serves: 5 accumulators each in the 16 registers */

/* group_dot for nt tokens (nt <= NT; x of token t at xp + t ldxp + at): the
 * weights widened once, each token's FMAs in group_dot's order. */
AI void group_dots(__m256 *dot, const unsigned char *p, const float *xp, size_t ldxp, int64_t at, int nt, int bits,
                   int gs) {
    __m256 d0[NT], d1[NT];
    for (int t = 0; t < nt; t++)
        d0[t] = d1[t] = _mm256_setzero_ps();
    if (bits == 4) {
        for (int k = 0; k < gs; k += 32)
            for (int h = 0; h < 16; h += 8) {
                const __m256i b = _mm256_cvtepu8_epi32(load8(p + k / 2 + h));
                const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(0x0f)));
                const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
                for (int t = 0; t < nt; t++) {
                    const float *x = xp + (size_t)t * ldxp + at + k;
                    d0[t] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + h), d0[t]);
                    d1[t] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + 16 + h), d1[t]);
                }
            }
    } else {
        for (int k = 0; k < gs; k += 16) {
            const __m256 w0 = widen8(load8(p + k)), w1 = widen8(load8(p + k + 8));
            for (int t = 0; t < nt; t++) {
                const float *x = xp + (size_t)t * ldxp + at + k;
                d0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), d0[t]);
                d1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), d1[t]);
            }
        }
    }
    for (int t = 0; t < nt; t++)
        dot[t] = _mm256_add_ps(d0[t], d1[t]);
}

/* Row r for nt tokens (y[t ldy + r]), each token's sums in gemv_rows'
 * order: bit for bit its outputs. pf: the block that streams the row. */
AI void row_n(float *y, int64_t ldy, const float *xp, size_t ldxp, int nt, const dr_tensor *w, int64_t r, int bits,
              int gs, bool pf) {
    const int64_t n = w->ne[w->ndim - 1], G = n / gs;
    const dr_dtype dt = w->q.sb_dtype;
    const int gb = gs * bits / 8;
    const unsigned char *row = dr_qk_row(w, r);
    const size_t sb0 = dr_qk_sb(w, r, 0);
    __m256 acc0[NT], acc1[NT], accb[NT], dot[NT];
    float tail[NT];
    for (int t = 0; t < nt; t++) {
        acc0[t] = acc1[t] = accb[t] = _mm256_setzero_ps();
        tail[t] = 0.0f;
    }
    _Alignas(32) float s[8];
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
        const int ng = G - g0 < 8 ? (int)(G - g0) : 8;
        const size_t i = sb0 + (size_t)g0;
        if (ng == 8 && dt != DR_DT_F16) {
            const __m256 bv = dr_load_sb8(w->q.biases, dt, i);
            _mm256_store_ps(s, dr_load_sb8(w->q.scales, dt, i));
            for (int t = 0; t < nt; t++)
                accb[t] = _mm256_fmadd_ps(bv, _mm256_loadu_ps(xp + (size_t)t * ldxp + n + g0), accb[t]);
        } else {
            for (int j = 0; j < ng; j++) {
                s[j] = dr_load_f32(w->q.scales, dt, i + (size_t)j);
                const float b = dr_load_f32(w->q.biases, dt, i + (size_t)j);
                for (int t = 0; t < nt; t++)
                    tail[t] += b * xp[(size_t)t * ldxp + (size_t)n + (size_t)(g0 + j)];
            }
        }
        for (int j = 0; j < ng; j++) {
            if (pf && j % 2 == 0 && j + 1 < ng)
                for (int o = 0; o < 2 * gb; o += 64) /* never faults past the end */
                    _mm_prefetch((const char *)(row + (size_t)(g0 + j) * gb + PF_DIST + o), _MM_HINT_T0);
            group_dots(dot, row + (size_t)(g0 + j) * gb, xp, ldxp, (g0 + j) * gs, nt, bits, gs);
            __m256 *acc = j % 2 ? acc1 : acc0; /* even / odd groups, as gemv_rows */
            for (int t = 0; t < nt; t++)
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(s[j]), dot[t], acc[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        y[(size_t)t * (size_t)ldy + (size_t)r] = dr_hsum8(_mm256_add_ps(_mm256_add_ps(acc0[t], acc1[t]), accb[t])) + tail[t];
}

/* Rows [r0, r1) for T tokens, blocks of up to NT (the row again from L1). */
AI void rows_n(float *y, int64_t ldy, const float *xp, size_t ldxp, int T, const dr_tensor *w, int64_t r0, int64_t r1,
               int bits, int gs) {
    for (int64_t r = r0; r < r1; r++)
        for (int t0 = 0; t0 < T; t0 += NT) {
            float *yt = y + (size_t)t0 * (size_t)ldy;
            const float *xt = xp + (size_t)t0 * ldxp;
            if (T - t0 < NT)
                row_n(yt, ldy, xt, ldxp, 1, w, r, bits, gs, t0 == 0);
            else
                row_n(yt, ldy, xt, ldxp, NT, w, r, bits, gs, t0 == 0);
        }
}

static void gemv_n(float *y, int64_t ldy, const float *xp, size_t ldxp, int T, const dr_tensor *w, int64_t r0,
                   int64_t r1) {
    if (w->q.bits == 4)
        DR_QK_BY_GS(w->q.group_size, rows_n, y, ldy, xp, ldxp, T, w, r0, r1, 4);
    else
        DR_QK_BY_GS(w->q.group_size, rows_n, y, ldy, xp, ldxp, T, w, r0, r1, 8);
}

static void dequant(float *dst, const dr_tensor *w, int64_t r, int64_t g0, int64_t ng) {
    const int64_t gs = w->q.group_size;
    for (int64_t g = g0; g < g0 + ng; g++) {
        const unsigned char *gp = dr_qk_at(w, r, g * gs); /* the group's bytes */
        __m256 s = _mm256_set1_ps(dr_load_f32(w->q.scales, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        __m256 b = _mm256_set1_ps(dr_load_f32(w->q.biases, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        for (int64_t i = 0; i < gs; i += 16) {
            __m256 w0, w1;
            if (w->q.bits == 8) {
                w0 = _mm256_fmadd_ps(widen8(load8(gp + i)), s, b);
                w1 = _mm256_fmadd_ps(widen8(load8(gp + i + 8)), s, b);
            } else {
                weights16_q4(gp, i, s, b, &w0, &w1);
            }
            _mm256_storeu_ps(dst + ((g - g0) * gs + i), w0);
            _mm256_storeu_ps(dst + ((g - g0) * gs + i) + 8, w1);
        }
    }
}

/* n is a multiple of 32 (a whole number of groups). */
static void dot4(float out[4], const float *a, const float *x, int64_t ldx, int64_t n) {
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 w = _mm256_loadu_ps(a + i);
        c0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i), c0);
        c1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + ldx + i), c1);
        c2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 2 * ldx + i), c2);
        c3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 3 * ldx + i), c3);
    }
    out[0] = dr_hsum8(c0);
    out[1] = dr_hsum8(c1);
    out[2] = dr_hsum8(c2);
    out[3] = dr_hsum8(c3);
}

static float dot(const float *a, const float *b, int64_t n) {
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), c0);
        c1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), c1);
    }
    return dr_hsum8(_mm256_add_ps(c0, c1));
}

const dr_qkern dr_qkern_avx2 = {
    .name = "avx2", .gemv = gemv, .gemv_n = gemv_n, .gemv_n_max = 4, .dequant = dequant, .dot4 = dot4, .dot = dot};
