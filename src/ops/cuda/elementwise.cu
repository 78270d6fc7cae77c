/* ops/cuda/elementwise.cu - norms, activations, gates and small reshapes on
 * the GPU (semantics: ops/cpu/elementwise.c). Norms use one block per row
 * with an fp32 block reduction; the rest are grid-stride loops. */
#include "cuda_common.cuh"
#include "cuda_ops.h"

static unsigned grid_for(const dr_cuda_ctx *cx, size_t n) {
    size_t b = (n + 255) / 256, cap = (size_t)cx->n_sm * 16;
    return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* y = x / sqrt(mean(x^2) + eps) * gain; in place allowed (each element is
 * read and written by one thread, after the reduction). */
__global__ void rmsnorm_kernel(float *y, const float *x, const float *gain, int n, float eps, int late) {
    DR_TL_SCOPE();
    if (!late)
        dr_pdl_trigger(); /* the next GEMV may start streaming its weights */
    dr_pdl_wait();        /* launched early (PDL): x is written by the previous kernel */
    if (late)
        dr_pdl_trigger();
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * n;
    float *yr = y + (size_t)blockIdx.x * n;
    const int nt = blockDim.x;
    const float ss = dr_row_sumsq(xr, n, sh);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += nt)
        yr[i] = xr[i] * inv * gain[i];
}

__global__ void gated_rmsnorm_kernel(float *y, const float *x, const float *z, const float *w, int n, float eps) {
    DR_TL_SCOPE();
    dr_pdl_trigger(); /* the next GEMV may start streaming its weights */
    __shared__ float sh[32];
    const size_t off = (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += x[off + i] * x[off + i];
    ss = dr_block_sum(ss, sh);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        y[off + i] = w[i] * (x[off + i] * inv) * dr_dev_silu(z[off + i]);
}

/* x += d, then y = x / rms(x) * gain (the residual add and the next
 * pre-norm in one pass; the same sums as add + rmsnorm). */
__global__ void add_rmsnorm_kernel(float *x, const float *d, float *y, const float *gain, int n, float eps,
                                   int late) {
    DR_TL_SCOPE();
    if (!late)
        dr_pdl_trigger(); /* the next GEMV may start streaming its weights */
    dr_pdl_wait();        /* launched early (PDL): d is written by the previous kernel */
    if (late)
        dr_pdl_trigger();
    __shared__ float sh[32];
    float *xr = x + (size_t)blockIdx.x * n;
    const float *dr = d + (size_t)blockIdx.x * n;
    float *yr = y + (size_t)blockIdx.x * n;
    const int nt = blockDim.x;
    float ss = 0.0f;
    for (int i0 = threadIdx.x; i0 < n; i0 += 4 * nt) { /* loads before stores; sums in index order */
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            v[u] = i0 + u * nt < n ? xr[i0 + u * nt] + dr[i0 + u * nt] : 0.0f;
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (i0 + u * nt < n) {
                xr[i0 + u * nt] = v[u];
                ss += v[u] * v[u];
            }
    }
    ss = dr_block_sum(ss, sh);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += nt)
        yr[i] = xr[i] * inv * gain[i];
}

/* Many rows: small blocks. Few rows (decode): up to 1024 threads, about
   four elements each, so one row is not a long serial loop on one SM. */
int dr_cuda_norm_threads(const dr_cuda_ctx *cx, int rows, int n) {
    if (rows < cx->n_sm && n >= 1024) {
        int t = ((n / 4 + 31) / 32) * 32;
        return t > 1024 ? 1024 : t;
    }
    return n >= 1024 ? 256 : n >= 256 ? 128 : 64;
}

void dr_cuda_rmsnorm(void *ctx, float *y, const float *x, const float *gain, int rows, int n, float eps) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (rows <= 0)
        return;
    /* PDL (round 3, cx->pdl_norm): the block is resident and waiting when the kernel before ends */
    dr_cuda_launch(cx, cx->pdl_norm > 0, rmsnorm_kernel, dim3(rows), dim3(dr_cuda_norm_threads(cx, rows, n)), 0, y,
                   x, gain, n, eps, cx->pdl_norm == 2 ? 1 : 0);
}

void dr_cuda_add_rmsnorm(void *ctx, float *x, const float *d, float *y, const float *gain, int rows, int n,
                         float eps) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (rows <= 0)
        return;
    dr_cuda_launch(cx, cx->pdl_norm > 0, add_rmsnorm_kernel, dim3(rows), dim3(dr_cuda_norm_threads(cx, rows, n)), 0,
                   x, d, y, gain, n, eps, cx->pdl_norm == 2 ? 1 : 0);
}

void dr_cuda_gated_rmsnorm(void *ctx, float *y, const float *x, const float *z, const float *w, int rows, int n,
                           float eps) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (rows <= 0)
        return;
    gated_rmsnorm_kernel<<<rows, dr_cuda_norm_threads(cx, rows, n), 0, cx->stream>>>(y, x, z, w, n, eps);
    DR_CUDA_LAUNCHED(cx);
}

__global__ void add_kernel(float *y, const float *x, size_t n) {
    DR_TL_SCOPE();
    GRID_STRIDE(i, n) y[i] += x[i];
}
__global__ void swiglu_kernel(float *out, const float *gate, const float *up, size_t n) {
    DR_TL_SCOPE();
    dr_pdl_trigger();
    GRID_STRIDE(i, n) out[i] = dr_dev_silu(gate[i]) * up[i];
}
__global__ void sigmoid_mul_kernel(float *x, const float *gate, size_t n) {
    DR_TL_SCOPE();
    dr_pdl_trigger();
    GRID_STRIDE(i, n) x[i] *= dr_dev_sigmoid(gate[i]);
}
__global__ void sigmoid_scale_rows_kernel(float *y, const float *s, size_t n, int cols) {
    DR_TL_SCOPE();
    GRID_STRIDE(i, n) y[i] *= dr_dev_sigmoid(s[i / cols]);
}
__global__ void split_halves_kernel(float *a, float *b, const float *x, size_t n, int cols) {
    DR_TL_SCOPE();
    GRID_STRIDE(i, n) {
        size_t r = i / cols, c = i % cols;
        a[i] = x[r * 2 * cols + c];
        b[i] = x[r * 2 * cols + cols + c];
    }
}
/* round to nearest even, NaN kept quiet (as dr_f32_to_bf16) */
__global__ void round_bf16_kernel(float *x, size_t n) {
    DR_TL_SCOPE();
    GRID_STRIDE(i, n) {
        unsigned u = __float_as_uint(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u)
            u = (u | 0x00400000u) & 0xffff0000u;
        else
            u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        x[i] = __uint_as_float(u);
    }
}

void dr_cuda_add(void *ctx, float *y, const float *x, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!n)
        return;
    add_kernel<<<grid_for(cx, n), 256, 0, cx->stream>>>(y, x, n);
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!n)
        return;
    swiglu_kernel<<<grid_for(cx, n), 256, 0, cx->stream>>>(out, gate, up, n);
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_sigmoid_mul(void *ctx, float *x, const float *gate, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!n)
        return;
    sigmoid_mul_kernel<<<grid_for(cx, n), 256, 0, cx->stream>>>(x, gate, n);
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_sigmoid_scale_rows(void *ctx, float *y, const float *s, int rows, int n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    size_t tot = (size_t)rows * n;
    if (!tot)
        return;
    sigmoid_scale_rows_kernel<<<grid_for(cx, tot), 256, 0, cx->stream>>>(y, s, tot, n);
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_split_halves(void *ctx, float *a, float *b, const float *x, int rows, int n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    size_t tot = (size_t)rows * n;
    if (!tot)
        return;
    split_halves_kernel<<<grid_for(cx, tot), 256, 0, cx->stream>>>(a, b, x, tot, n);
    DR_CUDA_LAUNCHED(cx);
}

void dr_cuda_round_bf16(void *ctx, float *x, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!n)
        return;
    round_bf16_kernel<<<grid_for(cx, n), 256, 0, cx->stream>>>(x, n);
    DR_CUDA_LAUNCHED(cx);
}
