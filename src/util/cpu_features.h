/* util/cpu_features.h - which SIMD instruction sets this CPU runs, and how
 * many cores it has.
 *
 * The CPU backend is built with per-file flags for AVX2 / AVX-512 kernels and
 * picks a level at run time from these answers, so one binary runs on any
 * x86-64 (and falls back to scalar code elsewhere).
 */
#ifndef DR_UTIL_CPU_FEATURES_H
#define DR_UTIL_CPU_FEATURES_H

/* SIMD levels, each a superset of the one before. */
typedef enum dr_simd_level {
    DR_SIMD_SCALAR = 0,  /* portable C */
    DR_SIMD_AVX2,        /* AVX2 + FMA + F16C */
    DR_SIMD_AVX512,      /* AVX-512 F/BW/VL (+ the AVX2 set) */
    DR_SIMD_AVX512_BF16, /* AVX-512 + AVX512_BF16 (vdpbf16ps) */
    DR_SIMD_COUNT
} dr_simd_level;

/* The best level this CPU (and OS) supports. Can't fail. */
dr_simd_level dr_cpu_simd_level(void);

/* "scalar", "avx2", "avx512", "avx512bf16". */
const char *dr_simd_level_name(dr_simd_level l);

/* Online CPU cores (at least 1). */
int dr_cpu_n_cores(void);

#endif
