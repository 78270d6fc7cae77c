/* ops/cpu/simd_avx2.c - the kernel table for AVX2 + FMA + F16C (8 floats a
 * vector). Built with -mavx2 -mfma -mf16c; called only after the CPU check. */
#include "ops/cpu/simd.h"

#include <immintrin.h>

#define V __m256
#define VL 8
#define TILE_TT 2 /* 16 ymm registers: 8 accumulators + 4 weights + x */
#define PANEL_NV 2 /* prefill panels: 2 vectors of rows ... */
#define PANEL_TT 6 /* ... x 6 tokens: 12 accumulators + 2 weights + x */
#define V_ZERO() _mm256_setzero_ps()
#define V_SET1(a) _mm256_set1_ps(a)
#define V_LOADU(p) _mm256_loadu_ps(p)
#define V_STOREU(p, v) _mm256_storeu_ps(p, v)
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm256_add_ps(a, b)
#define V_MUL(a, b) _mm256_mul_ps(a, b)
#define V_SUB(a, b) _mm256_sub_ps(a, b)
#define V_DIV(a, b) _mm256_div_ps(a, b)
#define V_MIN(a, b) _mm256_min_ps(a, b)
#define V_MAX(a, b) _mm256_max_ps(a, b)
#define V_ROUND(a) _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_LDEXP(p, n) ldexp256(p, n)
#define ST_CB 4 /* 4 x 2 accumulators + loads: 16 ymm */
#define V_HSUM(v) hsum256(v)
#define V_LOAD_BF16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define V_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define V_LOAD_BF16_PAIRS(p, ev, od)                                                                    \
    do {                                                                                                \
        const __m256i v_ = _mm256_loadu_si256((const __m256i *)(const void *)(p));                    \
        ev = _mm256_castsi256_ps(_mm256_slli_epi32(v_, 16));                                           \
        od = _mm256_castsi256_ps(_mm256_and_si256(v_, _mm256_set1_epi32((int)0xFFFF0000u)));         \
    } while (0)

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* p 2^n for integer-valued n in [-252, 254]: two factors 2^a 2^b, a + b = n,
 * each a normal float, so the products round (and underflow) as IEEE does. */
static inline __m256 ldexp256(__m256 p, __m256 n) {
    const __m256i ni = _mm256_cvtps_epi32(n), a = _mm256_srai_epi32(ni, 1), b = _mm256_sub_epi32(ni, a);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 fa = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(a, bias), 23));
    const __m256 fb = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(b, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, fa), fb);
}

/* r[i] element j -> r[j] element i (8 x 8 floats) */
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}
#define V_TRANSPOSE(r) transpose8(r)

#include "ops/cpu/simd_impl.h"

static const dr_simd g_avx2 = {
    .level = DR_SIMD_AVX2,
    .dot = k_dot,
    .axpy = k_axpy,
    .widen = k_widen,
    .gemv = k_gemv,
    .tile = k_tile,
    .panel = PANEL,
    .pack_panel = k_pack_panel,
    .gemm_panel = k_gemm_panel,
    .gemm_nn = k_gemm_nn,
    .st2 = k_st2,
    .decay_rank1 = k_decay_rank1,
    .silu = k_silu,
    .swiglu = k_swiglu,
    .sigmoid_mul = k_sigmoid_mul,
    .exp_sub = k_exp_sub,
    .conv_silu = k_conv_silu,
    .sum = k_sum,
    .bf16_pairs = k_bf16_pairs,
    .gemv_bf16p = k_gemv_bf16p,
    .gemv_bf16x2 = NULL,
};

const dr_simd *dr_simd_avx2(void) { return &g_avx2; }
