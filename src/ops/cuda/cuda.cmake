# CUDA backend (docs/CUDA.md).
#
# DR_CUDA = AUTO (default): built when a CUDA compiler is found;
#           ON: required (configure error without nvcc); OFF: CPU only.
# When built, DR_WITH_CUDA is defined PUBLIC on the library so the API and
# the tests see dr_ops_cuda_create. Code for sm_80, sm_89 and sm_90a.
set(DR_CUDA "AUTO" CACHE STRING "Build the CUDA backend: AUTO, ON or OFF")
set_property(CACHE DR_CUDA PROPERTY STRINGS AUTO ON OFF)

# DR_CUDA_TIMELINE: a measurement build whose kernels record a per-block
# timeline (ops/cuda/timeline.cuh, scripts/timeline.py); never for use.
option(DR_CUDA_TIMELINE "Record a kernel timeline (measurement builds only)" OFF)

set(DR_CUDA_SOURCES)
set(DR_CUDA_ENABLED OFF)
string(TOUPPER "${DR_CUDA}" _dr_cuda_mode)
if(NOT _dr_cuda_mode STREQUAL "OFF")
  include(CheckLanguage)
  # nvcc is often installed outside PATH; look where the toolkit lives.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(DR_CUDA_ENABLED ON)
  elseif(_dr_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "DR_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()

if(DR_CUDA_ENABLED)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # 90a: Hopper's arch-specific target (wgmma); CMake >= 3.24 passes it
    # through as compute_90a/sm_90a.
    set(CMAKE_CUDA_ARCHITECTURES "80;89;90a")
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "deltarun: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")
  set(DR_CUDA_SOURCES
    src/ops/cuda/backend.cu
    src/ops/cuda/argmax.cu
    src/ops/cuda/matmul.cu
    src/ops/cuda/elementwise.cu
    src/ops/cuda/attention.cu
    src/ops/cuda/gdn.cu
    src/ops/cuda/moe.cu
    src/ops/cuda/attention_decode.cu
    src/ops/cuda/gdn_decode.cu
    src/ops/cuda/graph.cu
    src/ops/cuda/attention_prefill.cu
    src/ops/cuda/gdn_chunked.cu
    src/ops/cuda/moe_prefill.cu
    src/ops/cuda/quant.cu
  )
else()
  message(STATUS "deltarun: CUDA backend OFF")
endif()

# The root adds -Wall/-Wextra/-Werror and the sanitizer flags with
# add_compile_options(), which reach every language; nvcc rejects them. Keep
# them for C and hand nvcc's host compiler the warning flags instead.
function(dr_cuda_setup target)
  if(NOT DR_CUDA_ENABLED)
    return()
  endif()
  get_target_property(_opts ${target} COMPILE_OPTIONS)
  set(_new)
  if(_opts)
    foreach(o IN LISTS _opts)
      list(APPEND _new "$<$<NOT:$<COMPILE_LANGUAGE:CUDA>>:${o}>")
    endforeach()
  endif()
  list(APPEND _new "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>")
  if(DR_WERROR)
    list(APPEND _new "$<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>")
  endif()
  set_target_properties(${target} PROPERTIES COMPILE_OPTIONS "${_new}")
  target_compile_definitions(${target} PUBLIC DR_WITH_CUDA=1)
  if(DR_CUDA_TIMELINE)
    target_compile_definitions(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:DR_CUDA_TIMELINE=1>)
  endif()
  target_link_libraries(${target} PUBLIC CUDA::cudart CUDA::cublas)
endfunction()
