/* ops/cpu/quant_sb512.h - scales / biases of quantized weights into AVX-512
 * registers, shared by the AVX-512 quantized kernels (quant_avx512.c,
 * quant_avx512bf16.c, quant_avx512vnni.c). Include only from files compiled
 * with AVX-512 F/BW/VL flags. */
#ifndef DR_OPS_CPU_QUANT_SB512_H
#define DR_OPS_CPU_QUANT_SB512_H

#include "util/dtype.h"

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* Scales or biases [i, i + 16) of storage dtype dt as fp32 (lanes outside m
 * read nothing and are 0). */
static inline __attribute__((always_inline)) __m512 dr_load_sb16(const void *base, dr_dtype dt, size_t i,
                                                                  __mmask16 m) {
    if (dt == DR_DT_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)base + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i);
    if (dt == DR_DT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

#endif
