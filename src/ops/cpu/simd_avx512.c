/* ops/cpu/simd_avx512.c - the kernel table for AVX-512 F/BW/VL (16 floats a
 * vector). Built with -mavx512f -mavx512bw -mavx512vl (+ AVX2/FMA/F16C);
 * called only after the CPU check. simd_avx512bf16.c compiles this file a
 * second time with -mavx512bf16, which adds the vdpbf16ps GEMV. */
#include "ops/cpu/simd.h"

#include "ops/cpu/transpose16.h"

#include <immintrin.h>

#define V __m512
#define VL 16
#define TILE_TT 4 /* 32 zmm registers: 16 accumulators + 4 weights + x */
#define PANEL_NV 4 /* prefill panels: 4 vectors of rows ... */
#define PANEL_TT 6 /* ... x 6 tokens: 24 accumulators + 4 weights + x */
#define V_ZERO() _mm512_setzero_ps()
#define V_SET1(a) _mm512_set1_ps(a)
#define V_LOADU(p) _mm512_loadu_ps(p)
#define V_STOREU(p, v) _mm512_storeu_ps(p, v)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm512_add_ps(a, b)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_SUB(a, b) _mm512_sub_ps(a, b)
#define V_DIV(a, b) _mm512_div_ps(a, b)
#define V_MIN(a, b) _mm512_min_ps(a, b)
#define V_MAX(a, b) _mm512_max_ps(a, b)
#define V_ROUND(a) _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_LDEXP(p, n) _mm512_scalef_ps(p, n) /* p 2^n, IEEE overflow and underflow */
#define ST_CB 8 /* 8 x 2 accumulators + loads: 32 zmm */
#define GEMM_NB 4 /* gemm_nn's register tile 4 x 4 vectors: 16 accumulators + 4 of B + a */
#define V_HSUM(v) _mm512_reduce_add_ps(v)
#define V_LOAD_BF16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define V_LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define V_LOAD_BF16_PAIRS(p, ev, od)                                                                    \
    do {                                                                                                \
        const __m512i v_ = _mm512_loadu_si512((const void *)(p));                                     \
        ev = _mm512_castsi512_ps(_mm512_slli_epi32(v_, 16));                                           \
        od = _mm512_castsi512_ps(_mm512_and_si512(v_, _mm512_set1_epi32((int)0xFFFF0000u)));         \
    } while (0)

/* r[i] element j -> r[j] element i (16 x 16 floats) */
static inline void transpose16(__m512 r[16]) {
    __m512i v[16];
    for (int i = 0; i < 16; i++)
        v[i] = _mm512_castps_si512(r[i]);
    dr_transpose16(v);
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_castsi512_ps(v[i]);
}
#define V_TRANSPOSE(r) transpose16(r)

#include "ops/cpu/simd_impl.h"

#ifdef __AVX512BF16__
/* 32 bf16 of a row at element i (masked: zeros past n, so tails need no scalar loop). */
static inline __m512bh load_bh(const uint16_t *p, int i, int n) {
    if (i + 32 <= n)
        return (__m512bh)_mm512_loadu_si512((const void *)(p + i));
    return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1ull << (n - i)) - 1), p + i);
}

/* y [nr] = W x with x = hi + lo: two bf16 dot products (exact products, fp32
 * sums) per weight vector instead of widening the weights. */
static void k_gemv_bf16x2(float *y, const void *w, size_t ld, int nr, const uint16_t *hi, const uint16_t *lo,
                          int n) {
    const uint16_t *rows[DR_GEMV_ROWS];
    __m512 acc[DR_GEMV_ROWS];
    for (int r = 0; r < nr; r++) {
        rows[r] = (const uint16_t *)w + (size_t)r * ld;
        acc[r] = _mm512_setzero_ps();
    }
    if (nr == 4) {
        for (int i = 0; i < n; i += 32) {
            const __m512bh xh = load_bh(hi, i, n), xl = load_bh(lo, i, n);
            for (int r = 0; r < 4; r++) {
                const __m512bh wv = load_bh(rows[r], i, n);
                acc[r] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[r], wv, xh), wv, xl);
            }
        }
    } else {
        for (int r = 0; r < nr; r++)
            for (int i = 0; i < n; i += 32) {
                const __m512bh wv = load_bh(rows[r], i, n);
                acc[r] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[r], wv, load_bh(hi, i, n)), wv, load_bh(lo, i, n));
            }
    }
    for (int r = 0; r < nr; r++)
        y[r] = _mm512_reduce_add_ps(acc[r]);
}
#define TABLE g_avx512bf16
#define LEVEL DR_SIMD_AVX512_BF16
#define GEMV_BF16X2 k_gemv_bf16x2
#define GETTER dr_simd_avx512bf16
#else
#define TABLE g_avx512
#define LEVEL DR_SIMD_AVX512
#define GEMV_BF16X2 NULL
#define GETTER dr_simd_avx512
#endif

static const dr_simd TABLE = {
    .level = LEVEL,
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
    .gemv_bf16x2 = GEMV_BF16X2,
};

const dr_simd *GETTER(void) { return &TABLE; }
