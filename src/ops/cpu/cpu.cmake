# CPU backend sources (reference kernels, and later SIMD + threads).
set(DR_CPU_SOURCES
  src/ops/cpu/backend.c
  src/ops/cpu/matmul.c
  src/ops/cpu/matmul_quant.c
  src/ops/cpu/elementwise.c
  src/ops/cpu/attention.c
  src/ops/cpu/gdn.c
  src/ops/cpu/moe.c
)
