/* ops/cpu/simd_scalar.c - the portable kernel table (any CPU), and the
 * run-time choice of table (dr_simd_get). */
#include "ops/cpu/simd.h"

#include "ops/cpu/cpu.h"
#include "util/dtype.h"

#include <math.h>

static float s_dot(const float *a, const float *b, int n) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f; /* 4 chains for latency */
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static void s_axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void s_widen(float *dst, const void *src, dr_dtype dt, int n) {
    for (int i = 0; i < n; i++)
        dst[i] = dr_load_f32(src, dt, (size_t)i);
}

static void s_gemv(float *y, const void *w, dr_dtype dt, size_t ld, int nr, const float *x, int n, size_t pf) {
    (void)pf; /* the portable level leaves reading ahead to the hardware */
    const size_t es = dr_dtype_size(dt);
    for (int r = 0; r < nr; r++) {
        const unsigned char *row = (const unsigned char *)w + (size_t)r * ld * es;
        float s = 0.0f;
        for (int i = 0; i < n; i++)
            s += dr_load_f32(row, dt, (size_t)i) * x[i];
        y[r] = s;
    }
}

static void s_tile(float *y, size_t ldy, const float *w, size_t ldw, int nr, const float *x, size_t ldx, int nt,
                   int n) {
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++)
            y[(size_t)t * ldy + r] = s_dot(w + (size_t)r * ldw, x + (size_t)t * ldx, n);
}

static void s_gemm_nn(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
                      bool acc) {
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (!acc)
            for (int j = 0; j < N; j++)
                c[j] = 0.0f;
        for (int k = 0; k < K; k++)
            s_axpy(c, A[(size_t)i * lda + k], B + (size_t)k * ldb, N);
    }
}

static float s_sum(const float *x, size_t n) {
    float s0 = 0.0f, s1 = 0.0f;
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        s0 += x[i];
        s1 += x[i + 1];
    }
    for (; i < n; i++)
        s0 += x[i];
    return s0 + s1;
}

static void s_st2(float *u, float *w, const float *S, const float *k, const float *q, int dk, int dv) {
    for (int j = 0; j < dv; j++)
        u[j] = w[j] = 0.0f;
    for (int i = 0; i < dk; i++) { /* s_gemm_nn's order: row i added to every column */
        s_axpy(u, k[i], S + (size_t)i * dv, dv);
        s_axpy(w, q[i], S + (size_t)i * dv, dv);
    }
}

static void s_decay_rank1(float *S, int dk, int dv, float decay, const float *k, const float *d) {
    for (int i = 0; i < dk; i++) {
        float *row = S + (size_t)i * dv;
        for (int j = 0; j < dv; j++)
            row[j] *= decay;
        s_axpy(row, k[i], d, dv);
    }
}

/* the activations exactly as the reference kernels (cpu.h) */
static void s_silu(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] = dr_siluf(x[i]);
}

static void s_swiglu(float *y, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++)
        y[i] = dr_siluf(g[i]) * u[i];
}

static void s_sigmoid_mul(float *x, const float *g, int n) {
    for (int i = 0; i < n; i++)
        x[i] *= dr_sigmoidf(g[i]);
}

static void s_exp_sub(float *y, const float *x, float m, int n) {
    for (int i = 0; i < n; i++)
        y[i] = expf(x[i] - m);
}

static void s_conv_silu(float *y, const float *w, int ldw, const float *const *x, int K, int n) {
    for (int i = 0; i < n; i++) {
        float s = 0.0f;
        for (int j = 0; j < K; j++)
            s += w[(size_t)j * (size_t)ldw + (size_t)i] * x[j][i];
        y[i] = dr_siluf(s);
    }
}

static const dr_simd g_scalar = {
    .level = DR_SIMD_SCALAR,
    .dot = s_dot,
    .axpy = s_axpy,
    .widen = s_widen,
    .gemv = s_gemv,
    .tile = s_tile,
    .gemm_nn = s_gemm_nn,
    .st2 = s_st2,
    .decay_rank1 = s_decay_rank1,
    .silu = s_silu,
    .swiglu = s_swiglu,
    .sigmoid_mul = s_sigmoid_mul,
    .exp_sub = s_exp_sub,
    .conv_silu = s_conv_silu,
    .sum = s_sum,
    .bf16_pairs = NULL,
    .gemv_bf16p = NULL,
    .gemv_bf16x2 = NULL,
};

const dr_simd *dr_simd_scalar(void) { return &g_scalar; }

void dr_split_bf16x2(uint16_t *hi, uint16_t *lo, const float *x, int n) {
    for (int i = 0; i < n; i++) {
        hi[i] = dr_f32_to_bf16(x[i]);
        lo[i] = dr_f32_to_bf16(x[i] - dr_bf16_to_f32(hi[i]));
    }
}

/* ---- run-time choice ---- */

static dr_simd_level g_cap = DR_SIMD_COUNT;
static bool g_bf16_dot = false;

void dr_simd_use_bf16_dot(bool on) { g_bf16_dot = on; }
bool dr_simd_bf16_dot(void) { return g_bf16_dot; }

void dr_simd_force(dr_simd_level l) { g_cap = l; }

const dr_simd *dr_simd_table(dr_simd_level l) {
    switch (l) {
    case DR_SIMD_SCALAR:
        return &g_scalar;
#ifdef DR_SIMD_X86
    case DR_SIMD_AVX2:
        return dr_simd_avx2();
    case DR_SIMD_AVX512:
        return dr_simd_avx512();
    case DR_SIMD_AVX512_BF16:
        return dr_simd_avx512bf16();
#endif
    default:
        return NULL;
    }
}

const dr_simd *dr_simd_get(void) {
    dr_simd_level l = dr_cpu_simd_level();
    if (l > g_cap)
        l = g_cap;
    for (; l > DR_SIMD_SCALAR; l--) /* a level this build lacks falls to the one below */
        if (dr_simd_table(l))
            return dr_simd_table(l);
    return &g_scalar;
}
