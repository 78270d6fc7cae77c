/* ops/cuda/attention_decode.cu - decode-side pieces of full attention on the
 * GPU: the KV-cache write of the new rows (ops.h kv_store), which reads the
 * position of an open single-token step from device memory so a recorded
 * step writes the right row when it is replayed (docs/CUDA.md, graphs).
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"

/* k_cache[pos0 + t] = k[t], v_cache[pos0 + t] = v[t] (rows of kv_row floats) */
__global__ void kv_store_kernel(float *__restrict__ kc, float *__restrict__ vc, const float *__restrict__ k,
                                const float *__restrict__ v, size_t n, int kv_row, int pos0, const int32_t *dpos) {
    DR_TL_SCOPE();
    if (dpos)
        pos0 = *dpos;
    const size_t off = (size_t)pos0 * kv_row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        kc[off + i] = k[i];
        vc[off + i] = v[i];
    }
}

void dr_cuda_kv_store(void *ctx, float *k_cache, float *v_cache, const float *k, const float *v, int T, int pos0,
                      int kv_row) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    const size_t n = (size_t)T * kv_row;
    if (!n)
        return;
    size_t b = (n + 255) / 256, cap = (size_t)cx->n_sm * 16;
    kv_store_kernel<<<(unsigned)(b > cap ? cap : b), 256, 0, cx->stream>>>(k_cache, v_cache, k, v, n, kv_row, pos0,
                                                                          dr_cuda_step_pos(cx));
    DR_CUDA_LAUNCHED(cx);
}
