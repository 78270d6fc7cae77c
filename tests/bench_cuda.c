/* tests/bench_cuda.c - kernel timings of the CUDA backend on real model
 * shapes (35B-A3B / 9B), each beside the floor measured in the same run.
 *
 * Not a ctest: run by scripts/device_run.sh. Times are host clock around
 * `reps` launches after a warm-up, ending in a stream sync (median of 5
 * such runs). The memory floor is a device-to-device copy (bytes read +
 * written over time). Prints one table; returns 77 without a device.
 */
#include "ops/cuda/cuda_ops.h"
#include "ops/ops.h"
#include "util/dtype.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static dr_ops *G;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define TIME(reps, body)                                  \
    ({                                                    \
        double ts_[5];                                    \
        body;                                             \
        G->sync(G->ctx);                                  \
        for (int r_ = 0; r_ < 5; r_++) {                  \
            double t0_ = now();                           \
            for (int i_ = 0; i_ < (reps); i_++) {         \
                body;                                     \
            }                                             \
            G->sync(G->ctx);                              \
            ts_[r_] = (now() - t0_) / (reps);             \
        }                                                 \
        qsort(ts_, 5, sizeof(double), cmp_d);             \
        ts_[2];                                           \
    })

static void *dev_rand(size_t n_f32) { /* random fp32 in [-0.5, 0.5) on the device */
    float *h = malloc(n_f32 * 4);
    for (size_t i = 0; i < n_f32; i++)
        h[i] = (float)((i * 2654435761u) % 1000003) / 1000003.0f - 0.5f;
    void *d = G->alloc(G->ctx, n_f32 * 4);
    G->upload(G->ctx, d, h, n_f32 * 4);
    free(h);
    return d;
}

static void weight(dr_tensor *t, int d, int n) { /* bf16, random */
    size_t N = (size_t)d * n;
    uint16_t *h = malloc(N * 2);
    for (size_t i = 0; i < N; i++)
        h[i] = dr_f32_to_bf16((float)((i * 2654435761u) % 1000003) / 1000003.0f - 0.5f);
    memset(t, 0, sizeof *t);
    t->name = "bench";
    t->dtype = DR_DT_BF16;
    t->ndim = 2;
    t->ne[0] = d;
    t->ne[1] = n;
    t->data = h;
    if (G->weight_upload(G->ctx, t) != DR_OK)
        printf("upload failed: %s\n", dr_last_error());
    free(h);
    t->data = NULL;
}

/* GDN delta rule, 35B shape: Hk 16, Hv 32, dk = dv = 128; bw: the copy floor */
static void bench_gdn(double bw) {
    dr_gdn_dims d = {16, 32, 128, 128};
    const int Cc = 2 * 16 * 128 + 32 * 128, T = 8192;
    float *qkv = dev_rand((size_t)T * Cc), *beta = dev_rand((size_t)T * 32), *g = dev_rand((size_t)T * 32);
    float *st = dev_rand((size_t)32 * 128 * 128), *o = G->alloc(G->ctx, (size_t)T * 32 * 128 * 4);
    const double sb = 2.0 * 32 * 128 * 128 * 4; /* state read + written */
    double t1 = TIME(50, G->gdn_recurrent(G->ctx, o, qkv, beta, g, st, &d, 1, NULL));
    printf("%-52s %9.3f ms  %7.0f GB/s state  %4.0f%% of floor\n", "gdn decode step (fp32 state 2 MiB)", t1 * 1e3,
           sb / t1 / 1e9, 100.0 * sb / t1 / 1e9 / bw);
    double tr = TIME(1, G->gdn_recurrent(G->ctx, o, qkv, beta, g, st, &d, T, NULL));
    printf("%-52s %9.3f ms  %7.0f tok/s per layer\n", "gdn prefill T=8192 (recurrence kernel, baseline)",
           tr * 1e3, T / tr);
    /* the tensor-core scan (default) and the fp32 FMA kernels (DR_CUDA_GDN_TC=0), same process */
    char had[32] = "";
    const bool had_set = getenv("DR_CUDA_GDN_TC") != NULL;
    if (had_set)
        snprintf(had, sizeof had, "%s", getenv("DR_CUDA_GDN_TC"));
    setenv("DR_CUDA_GDN_TC", "0", 1);
    double tp = TIME(3, G->gdn_chunked(G->ctx, o, qkv, beta, g, st, &d, T, NULL));
    printf("%-52s %9.3f ms  %7.0f tok/s per layer  %.1fx\n", "gdn prefill T=8192 (chunked WY, fp32 FMA)", tp * 1e3,
           T / tp, tr / tp);
    /* bf16 MMA flops issued per chunk and head: prep K K^T and Q K^T (6 MMAs
     * each, 10 of 16 16x16 tiles of 64 x 64 x dk); scan -W S and Q S (3 or 6
     * MMAs, 2 x 64 x dk x dv), P V' (3, 10 of 16 k tiles of 64 x 64 x dv),
     * K^T V' (3, dk x 64 x dv) */
    const double nchk = (double)(T / 64) * 32;
    const double prep = 6.0 * 2.0 * 2.0 * 64 * 64 * 128 * 10 / 16, pv = 3.0 * 2.0 * 64 * 64 * 128 * 10 / 16;
    const double ws = 2.0 * 2.0 * 64 * 128 * 128, kv = 3.0 * 2.0 * 128 * 64 * 128;
    for (int split = 2; split <= 3; split++) {
        setenv("DR_CUDA_GDN_TC", "1", 1);
        setenv("DR_CUDA_GDN_SPLIT", split == 2 ? "2" : "3", 1);
        double tc = TIME(3, G->gdn_chunked(G->ctx, o, qkv, beta, g, st, &d, T, NULL));
        const double mf = nchk * (prep + (split == 3 ? 6.0 : 3.0) * ws + pv + kv);
        char nm[64];
        snprintf(nm, sizeof nm, "gdn prefill T=8192 (chunked WY, tensor cores, split %d)", split);
        printf("%-52s %9.3f ms  %7.0f tok/s per layer  %.1fx vs FMA  bf16 MMAs %.0f TFLOP/s (%.1f%% of 989)\n", nm,
               tc * 1e3, T / tc, tp / tc, mf / tc / 1e12, 100.0 * mf / tc / 989e12);
    }
    unsetenv("DR_CUDA_GDN_SPLIT");
    if (had_set)
        setenv("DR_CUDA_GDN_TC", had, 1);
    else
        unsetenv("DR_CUDA_GDN_TC");
    G->free(G->ctx, qkv), G->free(G->ctx, beta), G->free(G->ctx, g), G->free(G->ctx, st), G->free(G->ctx, o);
}

/* An MLX affine quantized [d, n] weight (group 64, bf16 scale/bias), random
 * packed values, uploaded (the host copy is freed). Returns the bytes. */
static double qweight(dr_tensor *t, int d, int n, int bits) {
    const size_t pk = (size_t)d * n * bits / 8, ng = (size_t)d * (n / 64);
    unsigned char *h = malloc(pk + 4 * ng);
    uint32_t s = 12345u;
    for (size_t i = 0; i < pk; i++)
        s = s * 1664525u + 1013904223u, h[i] = (unsigned char)(s >> 24);
    uint16_t *sc = (uint16_t *)(h + pk);
    for (size_t i = 0; i < ng; i++)
        sc[i] = dr_f32_to_bf16(0.01f), sc[ng + i] = dr_f32_to_bf16(-0.05f);
    memset(t, 0, sizeof *t);
    t->name = "bench-q";
    t->dtype = DR_DT_U32;
    t->ndim = 2;
    t->ne[0] = d;
    t->ne[1] = n;
    t->data = h;
    t->q = (dr_quant){.bits = bits, .group_size = 64, .sb_dtype = DR_DT_BF16, .scales = sc, .biases = sc + ng};
    if (G->weight_upload(G->ctx, t) != DR_OK)
        printf("upload failed: %s\n", dr_last_error());
    free(h);
    t->data = NULL;
    return (double)pk + 4.0 * ng;
}

#define QB_COPIES 32

/* DR_BENCH_QUANT=1: quantized GEMV (T = 1, 4, 8) and prefill GEMMs beside bf16
 * on the same shapes, and the 35B MoE decode with q4 experts. */
static void bench_quant(double bw) {
    const struct {
        const char *nm;
        int d, n;
    } mats[] = {{"9B [4096,4096]", 4096, 4096},     {"9B mlp.up [12288,4096]", 12288, 4096},
                {"9B mlp.down [4096,12288]", 4096, 12288}, {"35B lm_head [248320,2048]", 248320, 2048},
                {"0.8B [1024,1024]", 1024, 1024},   {"0.8B mlp [3584,1024]", 3584, 1024},
                {"0.8B lm_head [248320,1024]", 248320, 1024}};
    float *x = dev_rand((size_t)512 * 12288), *y = G->alloc(G->ctx, (size_t)512 * 248320 * 4);
    const char *only = getenv("DR_BENCH_QUANT_SHAPE"); /* a substring of the shape names: those only */
    for (size_t m = 0; m < sizeof mats / sizeof mats[0]; m++) {
        if (only && !strstr(mats[m].nm, only))
            continue;
        dr_tensor w;
        weight(&w, mats[m].d, mats[m].n);
        double bb = 2.0 * mats[m].d * mats[m].n, tb = TIME(20, G->matmul(G->ctx, y, x, &w, 1));
        printf("%-40s bf16 T=1 %8.3f ms %6.0f GB/s %4.0f%%\n", mats[m].nm, tb * 1e3, bb / tb / 1e9,
               100.0 * bb / tb / 1e9 / bw);
        G->weight_free(G->ctx, &w);
        for (int bits = 4; bits <= 8; bits += 4) {
            /* copies cycled past 256 MB, so that no run reads its weights from L2 */
            dr_tensor wc[QB_COPIES];
            double qb = qweight(&wc[0], mats[m].d, mats[m].n, bits);
            int nc = 1;
            while (nc < QB_COPIES && nc * qb < 256e6)
                qweight(&wc[nc++], mats[m].d, mats[m].n, bits);
            w = wc[0];
            for (int T = 1; T <= 8; T = T == 1 ? 4 : 2 * T) {
                int cyc = 0;
                double t1 = TIME(20, G->matmul(G->ctx, y, x, &wc[cyc++ % nc], T));
                printf("%-40s q%d   T=%d %8.3f ms %6.0f GB/s %4.0f%%  (%d copies)\n", mats[m].nm, bits, T, t1 * 1e3,
                       qb / t1 / 1e9, 100.0 * qb / t1 / 1e9 / bw, nc);
            }
            for (int c = 1; c < nc; c++)
                G->weight_free(G->ctx, &wc[c]);
            if (mats[m].d <= 12288) {
                double tp = TIME(3, G->matmul(G->ctx, y, x, &w, 512));
                printf("%-40s q%d   T=512 %6.3f ms %6.1f TFLOP/s\n", mats[m].nm, bits, tp * 1e3,
                       2.0 * 512 * mats[m].d * mats[m].n / tp / 1e12);
            }
            G->weight_free(G->ctx, &w);
        }
    }
    if (only && !strstr("35B moe", only)) {
        G->free(G->ctx, x), G->free(G->ctx, y);
        return;
    }
    const int E = 256, k = 8, H = 2048, I = 512;
    dr_expert *ex = calloc(E, sizeof *ex);
    double eb = 0.0;
    for (int e = 0; e < E; e++) {
        eb = qweight(&ex[e].gate, I, H, 4);
        eb += qweight(&ex[e].up, I, H, 4);
        eb += qweight(&ex[e].down, H, I, 4);
    }
    float *lg = dev_rand((size_t)512 * E), *w = G->alloc(G->ctx, (size_t)512 * k * 4);
    int32_t *idx = G->alloc(G->ctx, (size_t)512 * k * 4);
    double t1 = TIME(20, (G->moe_route(G->ctx, idx, w, lg, 1, E, k, true),
                          G->moe_experts(G->ctx, y, x, idx, w, ex, E, 1, k, H, I, NULL)));
    printf("%-40s q4   T=1 %8.3f ms %6.0f GB/s %4.0f%%\n", "35B moe decode (route + 8 experts)", t1 * 1e3,
           k * eb / t1 / 1e9, 100.0 * k * eb / t1 / 1e9 / bw);
    double tp = TIME(3, (G->moe_route(G->ctx, idx, w, lg, 512, E, k, true),
                         G->moe_experts(G->ctx, y, x, idx, w, ex, E, 512, k, H, I, NULL)));
    printf("%-40s q4   T=512 %6.3f ms %6.1f TFLOP/s\n", "35B moe prefill (grouped, per expert)", tp * 1e3,
           2.0 * 512 * k * 3.0 * I * H / tp / 1e12);
    for (int e = 0; e < E; e++) {
        G->weight_free(G->ctx, &ex[e].gate);
        G->weight_free(G->ctx, &ex[e].up);
        G->weight_free(G->ctx, &ex[e].down);
    }
    free(ex);
    G->free(G->ctx, x), G->free(G->ctx, y), G->free(G->ctx, lg), G->free(G->ctx, w), G->free(G->ctx, idx);
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    dr_backend_params bp = {.n_threads = 1, .device = 0};
    if (dr_ops_cuda_create(&bp, &G) != DR_OK) {
        printf("%s\n", dr_last_error());
        return 1;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

    /* floor: 1 GiB device copy */
    size_t cb = (size_t)1 << 30;
    void *a = G->alloc(G->ctx, cb), *b = G->alloc(G->ctx, cb);
    double tc = TIME(10, G->copy(G->ctx, b, a, cb));
    double bw = 2.0 * cb / tc / 1e9;
    printf("%-52s %9.3f ms  %7.0f GB/s (floor)\n", "copy 1 GiB device-to-device", tc * 1e3, bw);
    G->free(G->ctx, a);
    G->free(G->ctx, b);
    if (getenv("DR_BENCH_QUANT")) {
        bench_quant(bw);
        G->sync(G->ctx);
        printf("backend status: %s\n", dr_cuda_backend_status(G) == DR_OK ? "ok" : dr_last_error());
        G->destroy(G);
        return 0;
    }

    /* DR_BENCH_GDN_ONLY: the GDN timings alone (experiment switches in one call) */
    if (getenv("DR_BENCH_GDN_ONLY")) {
        bench_gdn(bw);
        G->destroy(G);
        return 0;
    }

    /* GEMV (decode) and split-bf16 GEMM (prefill) */
    const struct {
        const char *nm;
        int d, n;
    } mats[] = {{"9B attn/gdn [4096,4096]", 4096, 4096},
                {"9B mlp.up [12288,4096]", 12288, 4096},
                {"9B mlp.down [4096,12288]", 4096, 12288},
                {"35B gdn in_proj_qkv [8192,2048]", 8192, 2048},
                {"35B lm_head [248320,2048]", 248320, 2048},
                {"35B [1024,2048]", 1024, 2048},
                {"0.8B [1024,1024]", 1024, 1024}};
    float *x = dev_rand((size_t)8192 * 12288), *y = G->alloc(G->ctx, (size_t)8192 * 248320 / 4 * 4);
    const char *only = getenv("DR_BENCH_QUANT_SHAPE"); /* a substring of the shape names: those only */
    for (size_t m = 0; m < sizeof mats / sizeof mats[0]; m++) {
        if (only && !strstr(mats[m].nm, only))
            continue;
        dr_tensor w;
        weight(&w, mats[m].d, mats[m].n);
        const double bytes = 2.0 * mats[m].d * mats[m].n;
        /* back-to-back launches (with PDL the next one's weight loads overlap this one's tail); the
           previous kernel: run again with DR_CUDA_GEMV_ROWS=0 (and DR_CUDA_PDL=0) */
        double t1 = TIME(20, G->matmul(G->ctx, y, x, &w, 1));
        printf("%-52s %9.3f ms  %7.0f GB/s  %4.0f%% of floor\n", mats[m].nm, t1 * 1e3, bytes / t1 / 1e9,
               100.0 * bytes / t1 / 1e9 / bw);
        if (G->matmul_add_rmsnorm && mats[m].d <= 16384) { /* the residual projections' fused kernel */
            float *xr = dev_rand((size_t)mats[m].d), *xn = G->alloc(G->ctx, (size_t)mats[m].d * 4);
            float *gain = dev_rand((size_t)mats[m].d);
            double t2 = TIME(20, G->matmul_add_rmsnorm(G->ctx, xr, xn, x, &w, gain, 1, 1e-6f));
            printf("%-52s %9.3f ms  %7.0f GB/s  %4.0f%% of floor\n", "   same, + residual add + RMSNorm (fused)",
                   t2 * 1e3, bytes / t2 / 1e9, 100.0 * bytes / t2 / 1e9 / bw);
            G->free(G->ctx, xr), G->free(G->ctx, xn), G->free(G->ctx, gain);
        }
        for (int T = 512; !getenv("DR_BENCH_GEMV_ONLY") && T <= 8192 && (size_t)T * mats[m].d <= (size_t)8192 * 62080;
             T *= 16) {
            double tt = TIME(3, G->matmul(G->ctx, y, x, &w, T));
            char nm[64];
            snprintf(nm, sizeof nm, "   same, prefill T=%d (split bf16 cuBLAS)", T);
            printf("%-52s %9.3f ms  %7.1f TFLOP/s\n", nm, tt * 1e3, 2.0 * T * bytes / 2 / tt / 1e12);
        }
        G->weight_free(G->ctx, &w);
    }

    if (getenv("DR_BENCH_GEMV_ONLY")) {
        G->destroy(G);
        return 0;
    }
    bench_gdn(bw);
    /* attention, 35B shape: nH 16, nKV 2, hd 256 */
    {
        const int nH = 16, nKV = 2, hd = 256, n_ctx = 32768;
        float *kc = dev_rand((size_t)n_ctx * nKV * hd), *vc = dev_rand((size_t)n_ctx * nKV * hd);
        float *q = dev_rand((size_t)8192 * nH * hd), *o = G->alloc(G->ctx, (size_t)8192 * nH * hd * 4);
        const double kvb = 2.0 * n_ctx * nKV * hd * 4;
        double t1 = TIME(20, G->attention(G->ctx, o, q, kc, vc, 1, n_ctx - 1, nH, nKV, hd, 0.0625f, NULL));
        printf("%-52s %9.3f ms  %7.0f GB/s KV  %4.0f%% of floor\n", "attention decode at 32k context (fp32 KV)",
               t1 * 1e3, kvb / t1 / 1e9, 100.0 * kvb / t1 / 1e9 / bw);
        const double af = 4.0 * nH * hd * 8192.0 * 8192.0 / 2; /* useful flops, causal */
        setenv("DR_CUDA_PREFILL", "0", 1);
        double tb = TIME(1, G->attention(G->ctx, o, q, kc, vc, 8192, 0, nH, nKV, hd, 0.0625f, NULL));
        printf("%-52s %9.3f ms  %7.1f TFLOP/s\n", "attention prefill T=8192 (SIMT split-K, baseline)", tb * 1e3,
               af / tb / 1e12);
        unsetenv("DR_CUDA_PREFILL");
        for (int T = 512; T <= 8192; T *= 16) {
            double tp = TIME(3, G->attention(G->ctx, o, q, kc, vc, T, 0, nH, nKV, hd, 0.0625f, NULL));
            const double f = 4.0 * nH * hd * (double)T * T / 2;
            printf("%-52s %9.3f ms  %7.1f TFLOP/s useful (x3 split products)  T=%d\n",
                   "attention prefill (tensor-core flash)", tp * 1e3, f / tp / 1e12, T);
        }
        double tq = TIME(3, G->attention(G->ctx, o, q, kc, vc, 4096, 4096, nH, nKV, hd, 0.0625f, NULL));
        printf("%-52s %9.3f ms\n", "attention prefill T=4096 at pos0=4096", tq * 1e3);
        G->free(G->ctx, kc), G->free(G->ctx, vc), G->free(G->ctx, q), G->free(G->ctx, o);
    }
    /* MoE, 35B shape: E 256, k 8, H 2048, I 512 */
    {
        const int E = 256, k = 8, H = 2048, I = 512;
        dr_expert *ex = calloc(E, sizeof *ex);
        for (int e = 0; e < E; e++) {
            weight(&ex[e].gate, I, H);
            weight(&ex[e].up, I, H);
            weight(&ex[e].down, H, I);
        }
        float *lg = dev_rand((size_t)8192 * E), *w = G->alloc(G->ctx, (size_t)8192 * k * 4);
        int32_t *idx = G->alloc(G->ctx, (size_t)8192 * k * 4);
        float *yy = G->alloc(G->ctx, (size_t)8192 * H * 4);
        const double eb = 3.0 * k * I * H * 2;
        double t1 = TIME(20, (G->moe_route(G->ctx, idx, w, lg, 1, E, k, true),
                              G->moe_experts(G->ctx, yy, x, idx, w, ex, E, 1, k, H, I, NULL)));
        printf("%-52s %9.3f ms  %7.0f GB/s  %4.0f%% of floor\n", "moe decode (route + 8 experts)", t1 * 1e3,
               eb / t1 / 1e9, 100.0 * eb / t1 / 1e9 / bw);
        for (int base = 1; base >= 0; base--) {
            if (base)
                setenv("DR_CUDA_PREFILL", "0", 1);
            for (int T = 512; T <= 8192; T *= 16) {
                double tp = TIME(3, (G->moe_route(G->ctx, idx, w, lg, T, E, k, true),
                                     G->moe_experts(G->ctx, yy, x, idx, w, ex, E, T, k, H, I, NULL)));
                printf("%-52s %9.3f ms  %7.1f TFLOP/s  T=%d\n",
                       base ? "moe prefill (per-expert cuBLAS, baseline)" : "moe prefill (grouped tensor-core GEMMs)",
                       tp * 1e3, 2.0 * T * k * 3.0 * I * H / tp / 1e12, T);
            }
            unsetenv("DR_CUDA_PREFILL");
        }
        for (int e = 0; e < E; e++) {
            G->weight_free(G->ctx, &ex[e].gate);
            G->weight_free(G->ctx, &ex[e].up);
            G->weight_free(G->ctx, &ex[e].down);
        }
        free(ex);
    }
    G->sync(G->ctx);
    printf("backend status: %s\n", dr_cuda_backend_status(G) == DR_OK ? "ok" : dr_last_error());
    G->destroy(G);
    return 0;
}
