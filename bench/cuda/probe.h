/* bench/cuda/probe.h - what the standalone probes of bench/cuda share.
 * CK(x): when the CUDA call x fails, print it and the error under the
 * probe's name (PROBE_NAME, defined before this header) and return 1 from
 * the calling function. */
#ifndef DR_BENCH_CUDA_PROBE_H
#define DR_BENCH_CUDA_PROBE_H

#include <cuda_runtime.h>
#include <stdio.h>

#define CK(x)                                                                                        \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, PROBE_NAME ": %s failed: %s\n", #x, cudaGetErrorString(e_));            \
            return 1;                                                                                \
        }                                                                                            \
    } while (0)

#endif
