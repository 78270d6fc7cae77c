/* util/cpu_features.c - runtime detection of the SIMD level and core count
 * (GCC/Clang builtins on x86-64; scalar everywhere else). */
#include "util/cpu_features.h"

#include <unistd.h>

dr_simd_level dr_cpu_simd_level(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the wide registers */
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
        return DR_SIMD_SCALAR;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl")))
        return DR_SIMD_AVX2;
    if (!__builtin_cpu_supports("avx512bf16"))
        return DR_SIMD_AVX512;
    return DR_SIMD_AVX512_BF16;
#else
    return DR_SIMD_SCALAR;
#endif
}

const char *dr_simd_level_name(dr_simd_level l) {
    static const char *const names[DR_SIMD_COUNT] = {"scalar", "avx2", "avx512", "avx512bf16"};
    return l >= 0 && l < DR_SIMD_COUNT ? names[l] : "?";
}

int dr_cpu_n_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}
