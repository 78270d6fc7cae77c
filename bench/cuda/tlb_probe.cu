/* bench/cuda/tlb_probe.cu - do scattered expert reads cost the GPU more
 * than their bytes?
 *
 * A measurement for issue 5 (docs/CUDA.md, session 31), not part of the
 * engine. In a q4 35B-A3B decode step the MoE kernels read ~14 MB a layer
 * from 27 expert matrices of ~0.5 MB picked at random from the layer's 256
 * experts, and their loads came back over 3-10 us: ~1-1.5 TB/s, against a
 * ~4.8 TB/s copy floor (session 31's timelines and ncu). bf16 experts (2 MB
 * a matrix) streamed at ~3.4 TB/s (session 27). One suspect is address
 * translation: the q4 layer touches as many pages as the bf16 one for a
 * quarter of the bytes, and the model spans GBs. This probe reads the same
 * bytes per launch three ways from one allocation of SPAN bytes:
 *
 *   scatter  P regions of R bytes at random R-aligned offsets of the span
 *            (new ones every launch: no L2 reuse between launches)
 *   dense    the same P x R bytes as one run at a random offset
 *   big      P R / (2 MB) regions of 2 MB at random offsets (bf16-sized)
 *
 * for spans from 256 MB up to most of the card, and prints us a launch and
 * GB/s. If scatter falls behind dense as the span grows, page walks (or
 * DRAM page locality) cost the MoE kernels time that bytes do not explain.
 * Every warp reads 2 KB runs (a lane 4 x 16 bytes in flight), as the MoE
 * kernels do; the sums go to one word a block so no load is dropped.
 *
 * Usage: tlb_probe [R_KB (576)] [P (27)] [launches (200)]
 * Exits 77 without a CUDA device.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define PROBE_NAME "tlb_probe"
#include "probe.h"

#define NT 256   /* threads a block */
#define RUN 2048 /* bytes a warp reads at once */

/* Launch l reads regions off[l P .. l P + P - 1] (byte offsets) of rb bytes
 * each: run c of the launch is region c / (rb / RUN), its run c % (rb / RUN). */
__global__ void __launch_bounds__(NT) read_kernel(const char *base, const size_t *off, int P, size_t rb,
                                                  unsigned *sink) {
    const int lane = threadIdx.x & 31, nw = gridDim.x * (NT / 32);
    const size_t per = rb / RUN, runs = per * (size_t)P;
    unsigned acc = 0;
    for (size_t c = blockIdx.x * (NT / 32) + (threadIdx.x >> 5); c < runs; c += nw) {
        const uint4 *p = (const uint4 *)(base + off[c / per] + (c % per) * RUN) + lane;
        uint4 v[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            v[j] = __ldcs(p + 32 * j);
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
    }
    acc = __reduce_xor_sync(0xffffffffu, acc);
    if (lane == 0)
        atomicXor(sink + blockIdx.x, acc);
}

/* random offsets: n regions of rb bytes, rb-aligned, inside span */
static void pick(size_t *o, int n, size_t rb, size_t span) {
    const size_t slots = span / rb;
    for (int i = 0; i < n; i++)
        o[i] = (size_t)(((uint64_t)rand() << 31 ^ (uint64_t)rand()) % slots) * rb;
}

/* us a launch of `launches` launches, regions of rb bytes, np a launch */
static int time_pattern(const char *base, size_t span, size_t rb, int np, int launches, int grid, unsigned *sink,
                        float *us) {
    size_t *h = (size_t *)malloc((size_t)launches * np * sizeof *h), *d = NULL;
    if (!h)
        return 1;
    pick(h, launches * np, rb, span);
    CK(cudaMalloc(&d, (size_t)launches * np * sizeof *d));
    CK(cudaMemcpy(d, h, (size_t)launches * np * sizeof *d, cudaMemcpyHostToDevice));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    read_kernel<<<grid, NT>>>(base, d, np, rb, sink); /* warm-up */
    CK(cudaEventRecord(e0));
    for (int l = 0; l < launches; l++)
        read_kernel<<<grid, NT>>>(base, d + (size_t)l * np, np, rb, sink);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    CK(cudaGetLastError());
    float ms = 0.0f;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    *us = 1e3f * ms / (float)launches;
    cudaEventDestroy(e0), cudaEventDestroy(e1), cudaFree(d), free(h);
    return 0;
}

int main(int argc, char **argv) {
    const size_t rb = (size_t)(argc > 1 ? atoi(argv[1]) : 576) << 10;
    const int P = argc > 2 ? atoi(argv[2]) : 27, launches = argc > 3 ? atoi(argv[3]) : 200;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("tlb_probe: no CUDA device, skipped\n");
        return 77;
    }
    if (rb < RUN || rb % RUN || P < 1 || launches < 1) {
        fprintf(stderr, "tlb_probe: R_KB must be a multiple of %d KB, P and launches positive\n", RUN >> 10);
        return 2;
    }
    cudaDeviceProp pr;
    CK(cudaGetDeviceProperties(&pr, 0));
    size_t fr = 0, tot = 0;
    CK(cudaMemGetInfo(&fr, &tot));
    const int grid = 4 * pr.multiProcessorCount;
    const size_t bytes = rb * (size_t)P, big = (size_t)2 << 20;
    const int pb = (int)((bytes + big - 1) / big);
    printf("%s, %d SMs, %zu MiB free; a launch reads %d x %zu KB = %.1f MB (big: %d x 2 MB), %d launches\n", pr.name,
           pr.multiProcessorCount, fr >> 20, P, rb >> 10, bytes / 1e6, pb, launches);
    unsigned *sink = NULL;
    CK(cudaMalloc(&sink, (size_t)grid * sizeof *sink));
    printf("%10s %18s %18s %18s\n", "span MB", "scatter us (GB/s)", "dense us (GB/s)", "big us (GB/s)");
    for (size_t span = (size_t)256 << 20; span + ((size_t)2 << 30) <= fr; span *= 4) {
        char *base = NULL;
        CK(cudaMalloc(&base, span));
        CK(cudaMemset(base, 1, span)); /* every page mapped and touched once */
        float us[3];
        if (time_pattern(base, span, rb, P, launches, grid, sink, &us[0]) ||
            time_pattern(base, span, bytes, 1, launches, grid, sink, &us[1]) ||
            time_pattern(base, span, big, pb, launches, grid, sink, &us[2]))
            return 1;
        printf("%10zu %9.2f (%6.0f) %9.2f (%6.0f) %9.2f (%6.0f)\n", span >> 20, us[0], bytes / us[0] / 1e3, us[1],
               bytes / us[1] / 1e3, us[2], (double)pb * big / us[2] / 1e3);
        CK(cudaFree(base));
    }
    cudaFree(sink);
    return 0;
}
