# CPU backend sources: the scalar reference kernels, the fast backend (SIMD
# tables chosen at run time + a thread pool), and their utilities.
set(DR_CPU_SOURCES
  src/ops/cpu/backend.c
  src/ops/cpu/matmul.c
  src/ops/cpu/matmul_quant.c
  src/ops/cpu/elementwise.c
  src/ops/cpu/attention.c
  src/ops/cpu/gdn.c
  src/ops/cpu/moe.c
  src/ops/cpu/simd_scalar.c
  src/ops/cpu/fast_matmul.c
  src/ops/cpu/fast_attention.c
  src/ops/cpu/fast_gdn.c
  src/ops/cpu/fast_moe.c
  src/ops/cpu/fast_elementwise.c
  src/ops/cpu/amx.c
  src/ops/cpu/amx_detect.c
  src/util/threadpool.c
  src/util/cpu_features.c
  src/model/synthetic.c
)

# SIMD kernel tables: only these files get the instruction-set flags, and the
# backend calls them only after checking the CPU (util/cpu_features.c), so the
# binary still runs on a CPU without AVX2 / AVX-512.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64" AND CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  list(APPEND DR_CPU_SOURCES
    src/ops/cpu/simd_avx2.c
    src/ops/cpu/simd_avx512.c
    src/ops/cpu/simd_avx512bf16.c)
  set_source_files_properties(src/ops/cpu/simd_avx2.c PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties(src/ops/cpu/simd_avx512.c PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl")
  set_source_files_properties(src/ops/cpu/simd_avx512bf16.c PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mavx512bf16")
  # The 4-bit GEMV on AVX512_BF16 (quant level avx512bf16); the other
  # quantized kernels are in src/quant/quant.cmake. The define goes in as an
  # option because quant.cmake sets matmul_quant.c's COMPILE_DEFINITIONS.
  list(APPEND DR_CPU_SOURCES src/ops/cpu/quant_avx512bf16.c)
  set_source_files_properties(src/ops/cpu/quant_avx512bf16.c PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mavx512bf16")
  list(APPEND DR_CPU_SOURCES src/ops/cpu/quant_avx2_digits.c) # quant level avx2: the 4-bit GEMV
  set_source_files_properties(src/ops/cpu/quant_avx2_digits.c PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
  list(APPEND DR_CPU_SOURCES src/ops/cpu/quant_avx512vnni.c # quant level avx512vnni
                             src/ops/cpu/quant_avx512vnni_t16.c)
  set_source_files_properties(src/ops/cpu/quant_avx512vnni.c src/ops/cpu/quant_avx512vnni_t16.c PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mavx512vnni")
  set_property(SOURCE src/ops/cpu/matmul_quant.c APPEND PROPERTY COMPILE_OPTIONS "-DDR_QUANT_BF16=1")
  # AMX-BF16 tiles for the prefill matmuls of BF16 weights (ops/cpu/amx.h);
  # without the compiler's support amx.c reports "not available".
  include(CheckCCompilerFlag)
  check_c_compiler_flag("-mamx-tile -mamx-bf16" DR_CC_HAS_AMX)
  if(DR_CC_HAS_AMX)
    set_source_files_properties(src/ops/cpu/amx.c PROPERTIES
      COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mamx-tile;-mamx-bf16")
    set_source_files_properties(src/ops/cpu/amx_detect.c PROPERTIES COMPILE_DEFINITIONS DR_AMX_BUILT=1)
  endif()
endif()

# DR_CPU_TIMELINE: a measurement build whose thread pool records every
# parallel job when DR_CPU_TIMELINE=FILE is set (src/util/threadpool.c,
# scripts/cpu_timeline.py; docs/PERFORMANCE.md session 16). Never for use.
option(DR_CPU_TIMELINE "Record the CPU thread pool's jobs (measurement builds only)" OFF)
if(DR_CPU_TIMELINE)
  set_property(SOURCE src/util/threadpool.c APPEND PROPERTY COMPILE_DEFINITIONS DR_POOL_TIMELINE=1)
endif()
