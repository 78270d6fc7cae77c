/* ops/cpu/quant_sb256.h - scales / biases of quantized weights into AVX2
 * registers, and the 8-lane sum, shared by the AVX2 quantized kernels
 * (quant_avx2.c, quant_avx2_digits.c). Include only from files compiled
 * with AVX2 flags (the AVX-512 ones: quant_sb512.h). */
#ifndef DR_OPS_CPU_QUANT_SB256_H
#define DR_OPS_CPU_QUANT_SB256_H

#include "util/dtype.h"

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* Scales or biases [i, i + 8) of storage dtype dt (BF16 or F32; F16 needs
 * F16C, which level avx2 does not check) as fp32. */
static inline __attribute__((always_inline)) __m256 dr_load_sb8(const void *base, dr_dtype dt, size_t i) {
    if (dt == DR_DT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)base + i))), 16));
    return _mm256_loadu_ps((const float *)base + i);
}

/* The sum of v's 8 lanes. */
static inline float dr_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#endif
