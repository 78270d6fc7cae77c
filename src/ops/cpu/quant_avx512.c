/* ops/cpu/quant_avx512.c - AVX-512 (F/BW/VL) kernels for 4/8-bit MLX affine
 * weights.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl (src/quant/quant.cmake) and
 * only called after the run-time check in matmul_quant.c. 8-bit: 16 bytes ->
 * 16 fp32. 4-bit: 16 bytes = 32 nibbles; the low/high nibbles are
 * interleaved back into element order with two byte unpacks, then widened.
 * Group sizes (32/64/128) are whole numbers of 32-element steps, so each
 * step uses one scale and one bias.
 */
#include "ops/cpu/quant_kern.h"

#include <immintrin.h>

static inline __m128i load16(const unsigned char *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }

static inline __m512 widen16(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)); }

/* The 32 weights [i, i+32) of a row as fp32, w = s * q + b. */
static inline void weights32(const unsigned char *row, int bits, int64_t i, __m512 s, __m512 b, __m512 *w0,
                             __m512 *w1) {
    __m128i u0, u1;
    if (bits == 8) {
        u0 = load16(row + i);
        u1 = load16(row + i + 16);
    } else {
        const __m128i m = _mm_set1_epi8(0x0f);
        __m128i v = load16(row + i / 2);
        __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
        u0 = _mm_unpacklo_epi8(lo, hi); /* elements i .. i+15 */
        u1 = _mm_unpackhi_epi8(lo, hi); /* elements i+16 .. i+31 */
    }
    *w0 = _mm512_fmadd_ps(widen16(u0), s, b);
    *w1 = _mm512_fmadd_ps(widen16(u1), s, b);
}

static float dot_row(const dr_tensor *w, int64_t r, const float *x) {
    const int64_t n = w->ne[w->ndim - 1], gs = w->q.group_size, G = n / gs;
    const int bits = w->q.bits;
    const unsigned char *row = dr_qk_row(w, r);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m512 s = _mm512_set1_ps(dr_load_f32(w->q.scales, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        __m512 b = _mm512_set1_ps(dr_load_f32(w->q.biases, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 32) {
            __m512 w0, w1;
            weights32(row, bits, i, s, b, &w0, &w1);
            acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i), acc0);
            acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i + 16), acc1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

static void dequant(float *dst, const dr_tensor *w, int64_t r, int64_t g0, int64_t ng) {
    const int64_t gs = w->q.group_size;
    const unsigned char *row = dr_qk_row(w, r);
    for (int64_t g = g0; g < g0 + ng; g++) {
        __m512 s = _mm512_set1_ps(dr_load_f32(w->q.scales, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        __m512 b = _mm512_set1_ps(dr_load_f32(w->q.biases, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 32) {
            __m512 w0, w1;
            weights32(row, w->q.bits, i, s, b, &w0, &w1);
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

const dr_qkern dr_qkern_avx512 = {"avx512", dot_row, dequant, dot4, dot};
