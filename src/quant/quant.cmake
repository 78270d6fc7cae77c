# Quantization: MLX affine 8/4-bit formats, the quantize command's writer,
# and the quantized-weight SIMD kernels of the CPU backend (each compiled
# with its own -m flags; matmul_quant.c picks one at run time, so the build
# still runs on CPUs without AVX-512 or AVX2).
set(DR_QUANT_SOURCES
  src/quant/quantize.c
  src/quant/st_writer.c
  src/quant/mlx_names.c
  src/quant/convert.c
  src/format/mlx.c
)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i.86)$")
  list(APPEND DR_QUANT_SOURCES src/ops/cpu/quant_avx2.c src/ops/cpu/quant_avx512.c)
  set_source_files_properties(src/ops/cpu/quant_avx2.c PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
  set_source_files_properties(src/ops/cpu/quant_avx512.c PROPERTIES
                              COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx2;-mfma")
  set_source_files_properties(src/ops/cpu/matmul_quant.c PROPERTIES COMPILE_DEFINITIONS DR_QUANT_X86=1)
endif()
