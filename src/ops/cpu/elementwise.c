/* ops/cpu/elementwise.c - norms, activations, gates and small reshapes. */
#include "ops/cpu/cpu.h"

#include <math.h>

/* y [rows, n] = x / sqrt(mean(x^2) + eps) * gain */
void dr_cpu_rmsnorm(void *ctx, float *y, const float *x, const float *gain, int rows, int n, float eps) {
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float ss = 0.0f;
        for (int i = 0; i < n; i++)
            ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++)
            yr[i] = xr[i] * inv * gain[i];
    }
}

/* y [rows, n] = w * (x / rms(x)) * silu(z)   -- norm before gate (MODEL.md 3.2) */
void dr_cpu_gated_rmsnorm(void *ctx, float *y, const float *x, const float *z, const float *w, int rows, int n,
                          float eps) {
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n, *zr = z + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float ss = 0.0f;
        for (int i = 0; i < n; i++)
            ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++)
            yr[i] = w[i] * (xr[i] * inv) * dr_siluf(zr[i]);
    }
}

void dr_cpu_add(void *ctx, float *y, const float *x, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

void dr_cpu_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        out[i] = dr_siluf(gate[i]) * up[i];
}

void dr_cpu_sigmoid_mul(void *ctx, float *x, const float *gate, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        x[i] *= dr_sigmoidf(gate[i]);
}

void dr_cpu_sigmoid_scale_rows(void *ctx, float *y, const float *s, int rows, int n) {
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        float g = dr_sigmoidf(s[r]);
        for (int i = 0; i < n; i++)
            y[(size_t)r * n + i] *= g;
    }
}

/* x [rows, 2n] -> a [rows, n], b [rows, n] */
void dr_cpu_split_halves(void *ctx, float *a, float *b, const float *x, int rows, int n) {
    (void)ctx;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++) {
            a[(size_t)r * n + i] = x[(size_t)r * 2 * n + i];
            b[(size_t)r * n + i] = x[(size_t)r * 2 * n + n + i];
        }
}

void dr_cpu_round_bf16(void *ctx, float *x, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        x[i] = dr_round_bf16(x[i]);
}
