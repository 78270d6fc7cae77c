/* ops/cpu/quant_avx512.c - AVX-512 (F/BW/VL) kernels for 4/8-bit MLX affine
 * weights.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl (src/quant/quant.cmake) and
 * only called after the run-time check in matmul_quant.c. GEMV (decode):
 * s * (q . x) + b * X per group on the prepared x (quant_kern.h), 16 bytes
 * -> 16 int32 lanes per step (8-bit: 16 weights; 4-bit: 32, low nibbles by
 * AND, high by a shift). Dequantization (prefill blocks, embeddings): 8-bit
 * 16 bytes -> 16 fp32; 4-bit 16 bytes = 32 nibbles interleaved back into
 * element order with two byte unpacks, then widened. Group sizes (32/64/128)
 * are whole numbers of 32-element steps, so each step uses one scale and
 * one bias.
 */
#include "ops/cpu/quant_kern.h"
#include "ops/cpu/quant_sb512.h"

#include <immintrin.h>
#include <stdbool.h>

static inline __m128i load16(const unsigned char *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }

static inline __m512 widen16(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)); }

/* The 32 weights [i, i+32) after p (a group's start) as fp32, w = s * q + b. */
static inline void weights32(const unsigned char *p, int bits, int64_t i, __m512 s, __m512 b, __m512 *w0,
                             __m512 *w1) {
    __m128i u0, u1;
    if (bits == 8) {
        u0 = load16(p + i);
        u1 = load16(p + i + 16);
    } else {
        const __m128i m = _mm_set1_epi8(0x0f);
        __m128i v = load16(p + i / 2);
        __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
        u0 = _mm_unpacklo_epi8(lo, hi); /* elements i .. i+15 */
        u1 = _mm_unpackhi_epi8(lo, hi); /* elements i+16 .. i+31 */
    }
    *w0 = _mm512_fmadd_ps(widen16(u0), s, b);
    *w1 = _mm512_fmadd_ps(widen16(u1), s, b);
}

#define AI static inline __attribute__((always_inline))
/* Software prefetch distance in packed bytes: one thread alone reached
 * ~12 GB/s of packed weights with it and ~10.7 without (the hardware
 * prefetcher keeps too few lines in flight for this compute rate). */
#ifndef PF_DIST
#define PF_DIST 4096
#endif

/* sum_i q_i x_i over one group of gs weights at p (x prepared, DR_QK_PERM
 * for 4-bit), as 16 partial sums. 4-bit: 16 bytes widen to 16 int32 lanes
 * once; AND 15 gives the low nibbles (even elements), a shift the high ones
 * (odd elements), each against its half of the permuted x block. */
AI __m512 group_dot(const unsigned char *p, const float *x, int bits, int gs) {
    __m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps();
    if (bits == 4) {
        const __m512i m = _mm512_set1_epi32(0x0f);
        for (int k = 0; k < gs; k += 32) {
            __m512i b = _mm512_cvtepu8_epi32(load16(p + k / 2));
            d0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, m)), _mm512_loadu_ps(x + k), d0);
            d1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), _mm512_loadu_ps(x + k + 16), d1);
        }
    } else {
        for (int k = 0; k < gs; k += 32) {
            d0 = _mm512_fmadd_ps(widen16(load16(p + k)), _mm512_loadu_ps(x + k), d0);
            d1 = _mm512_fmadd_ps(widen16(load16(p + k + 16)), _mm512_loadu_ps(x + k + 16), d1);
        }
    }
    return _mm512_add_ps(d0, d1);
}

/* Rows [r0, r1): y[r] = sum_g s_g * (q . x)_g + (b . X) over the row's
 * groups, 16 groups' scales and biases widened at a time. Two accumulators
 * (even / odd groups) keep the per-group FMAs off one dependency chain. */
AI void gemv_rows(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1, int bits, int gs) {
    const int64_t n = w->ne[w->ndim - 1], G = n / gs;
    const float *xs = xp + n;
    const dr_dtype dt = w->q.sb_dtype;
    const int gb = gs * bits / 8; /* packed bytes per group */
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = dr_qk_row(w, r);
        const size_t sb0 = dr_qk_sb(w, r, 0);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), accb = _mm512_setzero_ps();
        _Alignas(64) float s[16];
        for (int64_t g0 = 0; g0 < G; g0 += 16) {
            const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
            const __mmask16 m = (__mmask16)((1u << ng) - 1u);
            _mm512_store_ps(s, dr_load_sb16(w->q.scales, dt, sb0 + (size_t)g0, m));
            const __m512 bias = dr_load_sb16(w->q.biases, dt, sb0 + (size_t)g0, m);
            accb = _mm512_fmadd_ps(bias, _mm512_maskz_loadu_ps(m, xs + g0), accb);
            const unsigned char *p = row + (size_t)g0 * gb; /* the prefetches' guide */
            const float *x = xp + g0 * gs;
            int j = 0;
            for (; j + 2 <= ng; j += 2) {
                for (int o = 0; o < 2 * gb; o += 64) /* prefetches never fault past the end */
                    _mm_prefetch((const char *)(p + (size_t)j * gb + PF_DIST + o), _MM_HINT_T0);
                acc0 = _mm512_fmadd_ps(_mm512_set1_ps(s[j]),
                                       group_dot(row + (size_t)(g0 + j) * gb, x + j * gs, bits, gs), acc0);
                acc1 = _mm512_fmadd_ps(_mm512_set1_ps(s[j + 1]),
                                       group_dot(row + (size_t)(g0 + j + 1) * gb, x + (j + 1) * gs, bits, gs),
                                       acc1);
            }
            if (j < ng)
                acc0 = _mm512_fmadd_ps(_mm512_set1_ps(s[j]),
                                       group_dot(row + (size_t)(g0 + j) * gb, x + j * gs, bits, gs), acc0);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), accb));
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

#define NT 4 /* tokens a row pass serves: 5 accumulators each stay in registers */

/* group_dot for nt tokens (nt <= NT; x of token t at xp + t ldxp + at): the
 * weights widened once, each token's FMAs in group_dot's order. */
AI void group_dots(__m512 *dot, const unsigned char *p, const float *xp, size_t ldxp, int64_t at, int nt, int bits,
                   int gs) {
    __m512 d0[NT], d1[NT];
    for (int t = 0; t < nt; t++)
        d0[t] = d1[t] = _mm512_setzero_ps();
    for (int k = 0; k < gs; k += 32) {
        __m512 w0, w1;
        if (bits == 4) {
            const __m512i b = _mm512_cvtepu8_epi32(load16(p + k / 2));
            w0 = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0x0f)));
            w1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
        } else {
            w0 = widen16(load16(p + k));
            w1 = widen16(load16(p + k + 16));
        }
        for (int t = 0; t < nt; t++) {
            const float *x = xp + (size_t)t * ldxp + at + k;
            d0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), d0[t]);
            d1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), d1[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        dot[t] = _mm512_add_ps(d0[t], d1[t]);
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
    __m512 acc0[NT], acc1[NT], accb[NT], dot[NT];
    for (int t = 0; t < nt; t++)
        acc0[t] = acc1[t] = accb[t] = _mm512_setzero_ps();
    _Alignas(64) float s[16];
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
        const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
        const __mmask16 m = (__mmask16)((1u << ng) - 1u);
        _mm512_store_ps(s, dr_load_sb16(w->q.scales, dt, sb0 + (size_t)g0, m));
        const __m512 bias = dr_load_sb16(w->q.biases, dt, sb0 + (size_t)g0, m);
        for (int t = 0; t < nt; t++)
            accb[t] = _mm512_fmadd_ps(bias, _mm512_maskz_loadu_ps(m, xp + (size_t)t * ldxp + n + g0), accb[t]);
        for (int j = 0; j < ng; j++) {
            if (pf && j % 2 == 0)
                for (int o = 0; o < 2 * gb; o += 64) /* never faults past the end */
                    _mm_prefetch((const char *)(row + (size_t)(g0 + j) * gb + PF_DIST + o), _MM_HINT_T0);
            group_dots(dot, row + (size_t)(g0 + j) * gb, xp, ldxp, (g0 + j) * gs, nt, bits, gs);
            __m512 *acc = j % 2 ? acc1 : acc0; /* even / odd groups, as gemv_rows */
            for (int t = 0; t < nt; t++)
                acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(s[j]), dot[t], acc[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        y[(size_t)t * (size_t)ldy + (size_t)r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0[t], acc1[t]), accb[t]));
}

/* Rows [r0, r1) for T tokens, blocks of up to NT (the row again from L1). */
AI void rows_n(float *y, int64_t ldy, const float *xp, size_t ldxp, int T, const dr_tensor *w, int64_t r0, int64_t r1,
               int bits, int gs) {
    for (int64_t r = r0; r < r1; r++)
        for (int t0 = 0; t0 < T; t0 += NT) {
            float *yt = y + (size_t)t0 * (size_t)ldy;
            const float *xt = xp + (size_t)t0 * ldxp;
            switch (T - t0 < NT ? T - t0 : NT) {
            case 1: row_n(yt, ldy, xt, ldxp, 1, w, r, bits, gs, t0 == 0); break;
            case 2: row_n(yt, ldy, xt, ldxp, 2, w, r, bits, gs, t0 == 0); break;
            case 3: row_n(yt, ldy, xt, ldxp, 3, w, r, bits, gs, t0 == 0); break;
            default: row_n(yt, ldy, xt, ldxp, NT, w, r, bits, gs, t0 == 0); break;
            }
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
        __m512 s = _mm512_set1_ps(dr_load_f32(w->q.scales, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        __m512 b = _mm512_set1_ps(dr_load_f32(w->q.biases, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 32) {
            __m512 w0, w1;
            weights32(gp, w->q.bits, i - g * gs, s, b, &w0, &w1);
            _mm512_storeu_ps(dst + (i - g0 * gs), w0);
            _mm512_storeu_ps(dst + (i - g0 * gs) + 16, w1);
        }
    }
}

/* n is a multiple of 32 (a whole number of groups). */
static void dot4(float out[4], const float *a, const float *x, int64_t ldx, int64_t n) {
    __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps(), c3 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __m512 w = _mm512_loadu_ps(a + i);
        c0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + i), c0);
        c1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + ldx + i), c1);
        c2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 2 * ldx + i), c2);
        c3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 3 * ldx + i), c3);
    }
    out[0] = _mm512_reduce_add_ps(c0);
    out[1] = _mm512_reduce_add_ps(c1);
    out[2] = _mm512_reduce_add_ps(c2);
    out[3] = _mm512_reduce_add_ps(c3);
}

static float dot(const float *a, const float *b, int64_t n) {
    __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 32) {
        c0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), c0);
        c1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), c1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(c0, c1));
}

const dr_qkern dr_qkern_avx512 = {
    .name = "avx512", .gemv = gemv, .gemv_n = gemv_n, .gemv_n_max = 8, .dequant = dequant, .dot4 = dot4, .dot = dot};
