/* tests/cuda_test_util.h - what the CUDA op tests share: the GPU backend (G)
 * and the CPU reference (C), seeded random inputs, host<->device copies, the
 * relative error, a REPORT line that prints it beside its tolerance, a
 * weight upload, and opening/closing the backend (77 = skipped without a device).
 * Define CUDA_TEST_SEED before including to pick the input stream. */
#ifndef DR_TESTS_CUDA_TEST_UTIL_H
#define DR_TESTS_CUDA_TEST_UTIL_H

#include "ops/cuda/cuda_ops.h"
#include "ops/ops.h"
#include "test.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef CUDA_TEST_SEED
#define CUDA_TEST_SEED 0x2545f4914f6cdd1dull
#endif

static dr_ops *G, *C; /* GPU backend, CPU reference */
static uint64_t g_rng = CUDA_TEST_SEED;

static inline float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

static inline float *rnd(size_t n, float scale) {
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = frand() * scale;
    return v;
}

static inline float *hcopy(const float *x, size_t n) {
    float *v = malloc((n ? n : 1) * sizeof *v);
    memcpy(v, x, n * sizeof *v);
    return v;
}

static inline void *dput(const void *h, size_t bytes) {
    void *d = G->alloc(G->ctx, bytes);
    G->upload(G->ctx, d, h, bytes);
    return d;
}

static inline float *dget(const void *d, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    G->download(G->ctx, h, d, n * sizeof *h);
    return h;
}

/* t = a [d, n] weight of dtype dt over the host bytes h, uploaded to G (the
 * upload is CHECKed). */
static inline void upload_weight(dr_tensor *t, const char *name, dr_dtype dt, int d, int n, const void *h) {
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = dt;
    t->ndim = 2;
    t->ne[0] = d;
    t->ne[1] = n;
    t->data = h;
    const dr_status st = G->weight_upload(G->ctx, t);
    CHECK(st == DR_OK, "weight_upload %s: %s", name, dr_last_error());
}

/* t = a [d, n] weight of dtype dt (BF16 or F32) from uniform random values
 * in [-1, 1), uploaded to G; returns the host bytes the weight holds
 * (bf16: the values truncated to bf16), which the caller frees. */
static inline void *rand_weight(dr_tensor *t, const char *name, dr_dtype dt, int d, int n) {
    const size_t ne = (size_t)d * n, es = dt == DR_DT_BF16 ? 2 : 4;
    float *f = rnd(ne, 1.0f);
    void *buf = malloc(ne * es);
    for (size_t e = 0; e < ne; e++)
        if (es == 2) {
            uint32_t u;
            memcpy(&u, &f[e], 4);
            ((uint16_t *)buf)[e] = (uint16_t)(u >> 16);
        } else
            ((float *)buf)[e] = f[e];
    free(f);
    upload_weight(t, name, dt, d, n, buf);
    return buf;
}

/* max |a - b| / max |b| (NaN counts as infinite) */
static inline float rel_err(const float *a, const float *b, size_t n) {
    float e = 0.0f, m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= e))
            e = isnan(d) ? INFINITY : d;
        if (fabsf(b[i]) > m)
            m = fabsf(b[i]);
    }
    return m > 0.0f ? e / m : e;
}

#define REPORT(err, tol, ...)                                                                             \
    do {                                                                                                  \
        char what_[200];                                                                                  \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                       \
        CHECK_SHOW((err) <= (tol), "%-60s rel err %.2e (tol %.0e)", what_, (double)(err), (double)(tol)); \
    } while (0)

/* Create G on GPU 0 and set C to the CPU reference. Returns 0, 77 ("skipped":
 * no CUDA device, message printed) or 1 (creation failed, recorded). */
static inline int cuda_test_open(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    dr_backend_params bp = {.n_threads = 1, .device = 0};
    dr_status st = dr_ops_cuda_create(&bp, &G);
    CHECK(st == DR_OK, "dr_ops_cuda_create: %s", dr_last_error());
    C = dr_ops_cpu_ref();
    return st == DR_OK ? 0 : 1;
}

/* Wait for the GPU, check no kernel failed on the way, free G. */
static inline void cuda_test_close(void) {
    G->sync(G->ctx);
    CHECK(dr_cuda_backend_status(G) == DR_OK, "backend error: %s", dr_last_error());
    G->destroy(G);
}

#endif
