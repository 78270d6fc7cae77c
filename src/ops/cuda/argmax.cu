/* ops/cuda/argmax.cu - the greedy pick on the device (ops.h argmax): 4 bytes
 * go back to the host instead of a decode step's logits (1 MB for a 248k
 * vocabulary), and the host no longer scans them while the GPU waits.
 *
 * Same answer as dr_argmax_f32 (util/argmax.h): the largest value, ties to
 * the lowest index, NaN skipped (a NaN at index 0 is the answer). Each value
 * becomes a 64-bit key, order-preserving float bits above the complement of
 * the index, so one atomicMax picks the largest value and, among equal
 * values, the lowest index. -0 is keyed as +0 (they compare equal). Key 0
 * means "no number seen". The last block to finish (a device counter) turns
 * the key into the index and resets key and counter for the next call.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define AM_THREADS 256

static __device__ __forceinline__ unsigned long long am_key(float v, int i) {
    unsigned u = v == 0.0f ? 0u : __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (0xFFFFFFFFu - (unsigned)i);
}

/* st: device [0] key, [1] blocks done; out: device int32. */
__global__ void __launch_bounds__(AM_THREADS) argmax_kernel(const float *__restrict__ x, int n,
                                                            unsigned long long *st, int32_t *out) {
    DR_TL_SCOPE();
    __shared__ unsigned long long wbest[AM_THREADS / 32];
    __shared__ int last;
    unsigned long long best = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = x[i];
        if (v == v) { /* not NaN */
            const unsigned long long k = am_key(v, i);
            best = k > best ? k : best;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(0xffffffffu, best, o);
        best = w > best ? w : best;
    }
    if ((threadIdx.x & 31) == 0)
        wbest[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < AM_THREADS / 32; w++)
            best = wbest[w] > best ? wbest[w] : best;
        if (best)
            atomicMax(&st[0], best);
        __threadfence();
        last = atomicAdd(&st[1], 1ull) == gridDim.x - 1;
    }
    __syncthreads();
    if (last && threadIdx.x == 0) {
        const unsigned long long k = atomicAdd(&st[0], 0ull); /* every block's max is in */
        const float x0 = x[0];
        *out = (k == 0 || x0 != x0) ? 0 : (int32_t)(0xFFFFFFFFu - (unsigned)(k & 0xFFFFFFFFull));
        st[0] = 0;
        st[1] = 0;
    }
}

/* The device state on first use (argmax runs after a step, never while one
 * is being recorded). */
static bool am_state(dr_cuda_ctx *cx) {
    if (cx->am_state)
        return true;
    void *p = dr_cuda_zeroed(cx, 2 * sizeof(unsigned long long) + sizeof(int32_t)), *h = NULL;
    if (!p)
        return false;
    DR_CUDA_NOTE(cx, cudaMallocHost(&h, sizeof(int32_t)));
    if (!h) {
        cudaFree(p);
        return false;
    }
    cx->am_state = (unsigned long long *)p;
    cx->am_host = (int32_t *)h;
    return true;
}

bool dr_cuda_argmax(void *ctx, int32_t *out, const float *x, int n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (n < 1 || cx->failed || !am_state(cx))
        return false;
    int32_t *dout = (int32_t *)(cx->am_state + 2);
    const int sm = cx->n_sm > 0 ? cx->n_sm : 132;
    unsigned blocks = dr_cdiv((size_t)n, (size_t)AM_THREADS * 8);
    blocks = blocks < (unsigned)(2 * sm) ? blocks : (unsigned)(2 * sm);
    argmax_kernel<<<blocks, AM_THREADS, 0, cx->stream>>>(x, n, cx->am_state, dout);
    DR_CUDA_LAUNCHED(cx);
    DR_CUDA_NOTE(cx, cudaMemcpyAsync(cx->am_host, dout, sizeof(int32_t), cudaMemcpyDeviceToHost, cx->stream));
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
    if (cx->failed)
        return false;
    *out = *cx->am_host;
    return true;
}
