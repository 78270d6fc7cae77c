/* ops/cpu/quant_avx2.c - AVX2+FMA kernels for 4/8-bit MLX affine weights.
 *
 * Compiled with -mavx2 -mfma (src/quant/quant.cmake) and only called after
 * the run-time check in matmul_quant.c. 8-bit: 8 bytes -> 8 int32 -> fp32.
 * 4-bit: 8 bytes hold 16 nibbles, element 2k in the low nibble of byte k;
 * low and high nibbles are interleaved back into element order with one
 * byte unpack, then widened. w = scale * q + bias is formed in registers.
 */
#include "ops/cpu/quant_kern.h"

#include <immintrin.h>

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m128i load8(const unsigned char *p) { return _mm_loadl_epi64((const __m128i *)(const void *)p); }

/* 16 nibbles (8 bytes at p) -> 16 bytes in element order */
static inline __m128i nibbles16(const unsigned char *p) {
    const __m128i m = _mm_set1_epi8(0x0f);
    __m128i b = load8(p);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm_unpacklo_epi8(lo, hi);
}

static inline __m256 widen8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }

/* The 8 weights [i, i+8) of a row as fp32 (i a multiple of 8). */
static inline void weights16_q4(const unsigned char *row, int64_t i, __m256 s, __m256 b, __m256 *w0, __m256 *w1) {
    __m128i u = nibbles16(row + i / 2);
    *w0 = _mm256_fmadd_ps(widen8(u), s, b);
    *w1 = _mm256_fmadd_ps(widen8(_mm_srli_si128(u, 8)), s, b);
}

static float dot_row(const dr_tensor *w, int64_t r, const float *x) {
    const int64_t n = w->ne[w->ndim - 1], gs = w->q.group_size, G = n / gs;
    const unsigned char *row = dr_qk_row(w, r);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m256 s = _mm256_set1_ps(dr_load_f32(w->q.scales, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        __m256 b = _mm256_set1_ps(dr_load_f32(w->q.biases, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        if (w->q.bits == 8) {
            for (int64_t i = g * gs; i < (g + 1) * gs; i += 16) {
                __m256 w0 = _mm256_fmadd_ps(widen8(load8(row + i)), s, b);
                __m256 w1 = _mm256_fmadd_ps(widen8(load8(row + i + 8)), s, b);
                acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
                acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
            }
        } else {
            for (int64_t i = g * gs; i < (g + 1) * gs; i += 16) {
                __m256 w0, w1;
                weights16_q4(row, i, s, b, &w0, &w1);
                acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
                acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
            }
        }
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

static void dequant(float *dst, const dr_tensor *w, int64_t r, int64_t g0, int64_t ng) {
    const int64_t gs = w->q.group_size;
    const unsigned char *row = dr_qk_row(w, r);
    for (int64_t g = g0; g < g0 + ng; g++) {
        __m256 s = _mm256_set1_ps(dr_load_f32(w->q.scales, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        __m256 b = _mm256_set1_ps(dr_load_f32(w->q.biases, w->q.sb_dtype, dr_qk_sb(w, r, g)));
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 16) {
            __m256 w0, w1;
            if (w->q.bits == 8) {
                w0 = _mm256_fmadd_ps(widen8(load8(row + i)), s, b);
                w1 = _mm256_fmadd_ps(widen8(load8(row + i + 8)), s, b);
            } else {
                weights16_q4(row, i, s, b, &w0, &w1);
            }
            _mm256_storeu_ps(dst + (i - g0 * gs), w0);
            _mm256_storeu_ps(dst + (i - g0 * gs) + 8, w1);
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
    out[0] = hsum8(c0);
    out[1] = hsum8(c1);
    out[2] = hsum8(c2);
    out[3] = hsum8(c3);
}

static float dot(const float *a, const float *b, int64_t n) {
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), c0);
        c1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), c1);
    }
    return hsum8(_mm256_add_ps(c0, c1));
}

const dr_qkern dr_qkern_avx2 = {"avx2", dot_row, dequant, dot4, dot};
