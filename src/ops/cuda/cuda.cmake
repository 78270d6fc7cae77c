# CUDA backend: built when nvcc is found (DR_CUDA=AUTO), forced with ON/OFF.
set(DR_CUDA_SOURCES)
function(dr_cuda_setup target)
endfunction()
