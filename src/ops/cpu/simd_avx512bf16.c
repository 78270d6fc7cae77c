/* ops/cpu/simd_avx512bf16.c - the AVX-512 kernel table plus the AVX512_BF16
 * (vdpbf16ps) GEMV: simd_avx512.c compiled again with -mavx512bf16. */
#include "ops/cpu/simd_avx512.c"
