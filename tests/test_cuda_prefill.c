/* tests/test_cuda_prefill.c - the CUDA prefill kernels (attention_prefill.cu,
 * gdn_chunked.cu, moe_prefill.cu) against the CPU reference table on odd
 * sizes: T not a multiple of 64, pos0 > 0, GQA, head dims 40..256, a
 * non-zero GDN state, Hv > Hk, dk != dv, blocks longer than one scratch
 * segment (4096 tokens), MoE with more picks than experts' tiles.
 *
 * Errors are max |gpu - cpu| / max |cpu|. Tolerances: attention 1e-4 (the
 * split-bf16 tensor-core products carry ~2^-16 relative operand error,
 * docs/CUDA.md "Prefill"); GDN 1e-4 (fp32, reordered sums over long
 * recurrences, as test_cuda; the tensor-core path measures ~1e-5, its
 * split-bf16 products); MoE 2e-5 (exact bf16 weights, split x, as the
 * dense split GEMM). Returns 77 without a CUDA device (ctest: skipped).
 */
#include "ops/cuda/cuda_ops.h"
#include "cuda_test_util.h"
#include "ops/ops.h"
#include "test.h"
#include "util/dtype.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ATT_TOL 1e-4f
#define GDN_TOL 1e-4f
#define MOE_TOL 2e-5f


static void test_attention_case(int T, int pos0, int nH, int nKV, int hd, float sharp, const char *path) {
    const int n_ctx = pos0 + T;
    size_t nq = (size_t)T * nH * hd, nkv = (size_t)n_ctx * nKV * hd;
    float *q = rnd(nq, 1.0f), *k = rnd(nkv, 1.0f), *v = rnd(nkv, 1.0f), *o = malloc(nq * 4);
    float *ws = malloc((size_t)(n_ctx + 1) * 4);
    float *dq = dput(q, nq * 4), *dk = dput(k, nkv * 4), *dv = dput(v, nkv * 4), *dO = G->alloc(G->ctx, nq * 4);
    const float scale = 1.0f / sqrtf((float)hd) * sharp;
    C->attention(NULL, o, q, k, v, T, pos0, nH, nKV, hd, scale, ws);
    G->attention(G->ctx, dO, dq, dk, dv, T, pos0, nH, nKV, hd, scale, NULL);
    float *got = dget(dO, nq);
    REPORT(rel_err(got, o, nq), ATT_TOL, "attention prefill%s T=%d pos0=%d nH=%d nKV=%d hd=%d x%.0f", path, T, pos0,
           nH, nKV, hd, (double)sharp);
    free(q), free(k), free(v), free(o), free(ws), free(got);
    G->free(G->ctx, dq), G->free(G->ctx, dk), G->free(G->ctx, dv), G->free(G->ctx, dO);
}

static void test_attention(void) {
    const struct {
        int T, pos0, nH, nKV, hd;
        float sharp;
    } cs[] = {{64, 0, 4, 2, 64, 4.0f},    {100, 37, 6, 3, 40, 4.0f},  {129, 0, 8, 2, 128, 4.0f},
              {77, 300, 16, 2, 256, 1.0f}, {200, 1000, 4, 1, 256, 4.0f}, {513, 5, 2, 2, 96, 2.0f},
              {130, 0, 8, 1, 200, 4.0f},   {64, 64, 2, 1, 130, 2.0f},  {700, 0, 4, 2, 256, 4.0f}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        if (cs[c].hd <= 128) {
            test_attention_case(cs[c].T, cs[c].pos0, cs[c].nH, cs[c].nKV, cs[c].hd, cs[c].sharp, "");
            continue;
        }
        /* D = 256: the head-dim split over two warps (the default), then ap_flash_kernel<256> */
        test_attention_case(cs[c].T, cs[c].pos0, cs[c].nH, cs[c].nKV, cs[c].hd, cs[c].sharp, " (head dim split)");
        setenv("DR_CUDA_ATT_DSPLIT", "0", 1);
        test_attention_case(cs[c].T, cs[c].pos0, cs[c].nH, cs[c].nKV, cs[c].hd, cs[c].sharp, " (one warp per 16 rows)");
        unsetenv("DR_CUDA_ATT_DSPLIT");
    }
}

/* gl: log-decay scale (g = -|N(0, 0.5)| gl); 0.6 is a strong decay.
 * A weak decay (0.01) keeps old chunks in the state, so rounding carried
 * between chunks would show. */
typedef struct gdn_case {
    int Hk, Hv, dk, dv, T;
    float gl;
} gdn_case;

static void test_gdn_shapes(const gdn_case *cs, size_t ncs, const char *path) {
    for (size_t c = 0; c < ncs; c++) {
        dr_gdn_dims d = {cs[c].Hk, cs[c].Hv, cs[c].dk, cs[c].dv};
        const int T = cs[c].T, Cc = 2 * d.n_k_heads * d.d_k + d.n_v_heads * d.d_v;
        const size_t ns = (size_t)d.n_v_heads * d.d_k * d.d_v, no = (size_t)T * d.n_v_heads * d.d_v;
        float *qkv = rnd((size_t)T * Cc, 1.0f), *beta = rnd((size_t)T * d.n_v_heads, 0.5f);
        float *g = rnd((size_t)T * d.n_v_heads, 0.5f), *st = rnd(ns, 0.3f), *o = malloc(no * 4);
        for (int i = 0; i < T * d.n_v_heads; i++) {
            beta[i] += 0.5f;
            g[i] = -fabsf(g[i]) * cs[c].gl;
        }
        float *ws = malloc(dr_gdn_ws_floats(&d) * 4);
        float *dqkv = dput(qkv, (size_t)T * Cc * 4), *dbeta = dput(beta, (size_t)T * d.n_v_heads * 4);
        float *dg = dput(g, (size_t)T * d.n_v_heads * 4), *dst = dput(st, ns * 4), *dO = G->alloc(G->ctx, no * 4);
        C->gdn_chunked(NULL, o, qkv, beta, g, st, &d, T, ws);
        G->gdn_chunked(G->ctx, dO, dqkv, dbeta, dg, dst, &d, T, NULL);
        float *go = dget(dO, no), *gs = dget(dst, ns);
        REPORT(rel_err(go, o, no), GDN_TOL, "gdn_chunked (%s) Hk=%d Hv=%d dk=%d dv=%d T=%d g x%.2f: o", path,
               d.n_k_heads, d.n_v_heads, d.d_k, d.d_v, T, (double)cs[c].gl);
        REPORT(rel_err(gs, st, ns), GDN_TOL, "gdn_chunked (%s) T=%d: fp32 state", path, T);
        free(qkv), free(beta), free(g), free(st), free(o), free(ws), free(go), free(gs);
        G->free(G->ctx, dqkv), G->free(G->ctx, dbeta), G->free(G->ctx, dg), G->free(G->ctx, dst);
        G->free(G->ctx, dO);
    }
}

/* Runs every shape three times: the tensor-core path (where the shape
 * suits it: d_k <= 128, even d_v) with the scan's -W S and Q S on the hi/lo
 * split (default) and on the three-way split (DR_CUDA_GDN_SPLIT=3), and
 * the fp32 FMA kernels (DR_CUDA_GDN_TC=0). Shapes for the tensor-core path's edges: T < 64, T not a
 * multiple of 64, T over one segment (4096), d_k 24/64/100/128 (padded to
 * 64/128), d_v not a multiple of the 32-column scan block (20, 40, 130),
 * d_v > d_k and < d_k, Hv/Hk = 4; and shapes it leaves to the FMA kernels
 * (d_k 256, odd d_v). */
static void test_gdn(void) {
    const float S = 0.6f, W = 0.01f; /* strong, weak decay */
    const gdn_case cs[] = {
        {2, 6, 32, 48, 150, S},  {2, 4, 128, 128, 70, S},  {3, 3, 24, 20, 65, S},     {1, 2, 256, 64, 130, S},
        {2, 4, 128, 128, 2, S},  {1, 2, 64, 40, 64, S},    {1, 2, 64, 40, 4200, S},   {2, 4, 100, 130, 191, S},
        {1, 4, 128, 64, 37, S},  {2, 8, 64, 96, 129, S},   {1, 2, 128, 256, 300, S},  {1, 1, 64, 33, 100, S},
        {2, 2, 128, 32, 63, S},  {4, 8, 128, 128, 4500, W}, {2, 4, 64, 64, 1000, W}};
    const char *names[3] = {"tensor cores, split 2", "tensor cores, split 3", "fp32 FMA"};
    for (int mode = 0; mode < 3; mode++) {
        setenv("DR_CUDA_GDN_TC", mode == 2 ? "0" : "1", 1);
        setenv("DR_CUDA_GDN_SPLIT", mode == 1 ? "3" : "2", 1);
        test_gdn_shapes(cs, sizeof cs / sizeof cs[0], names[mode]);
    }
    unsetenv("DR_CUDA_GDN_TC");
    unsetenv("DR_CUDA_GDN_SPLIT");
}

static void *bf16_weights(dr_tensor *t, int d, int n, float scale) {
    size_t N = (size_t)d * n;
    uint16_t *h = malloc(N * 2);
    for (size_t i = 0; i < N; i++)
        h[i] = dr_f32_to_bf16(frand() * scale);
    upload_weight(t, "test.expert", DR_DT_BF16, d, n, h);
    return h;
}

/* Both grouped GEMMs against the CPU: the 128-row mp_gemm2 (the default
 * where H % 128 == 0 and I % 64 == 0) and mp_gemm (DR_CUDA_MOE_GEMM=1, and
 * what runs for other shapes). They must agree bit for bit (the same MMAs
 * in the same order per output). */
static const char *moe_variant(int v, int H, int I) {
    return v == 0 && H % 128 == 0 && I % 64 == 0 ? "128-row" : "64-row";
}

static void test_moe_shape(int H, int I) {
    enum { E = 7 };
    const int k = 3;
    dr_expert ex[E];
    void *hs[3 * E];
    for (int e = 0; e < E; e++) {
        hs[3 * e] = bf16_weights(&ex[e].gate, I, H, 0.2f);
        hs[3 * e + 1] = bf16_weights(&ex[e].up, I, H, 0.2f);
        hs[3 * e + 2] = bf16_weights(&ex[e].down, H, I, 0.2f);
    }
    const int Ts[4] = {5, 33, 130, 700};
    for (int ti = 0; ti < 4; ti++) {
        const int T = Ts[ti];
        float *lg = rnd((size_t)T * E, 3.0f), *x = rnd((size_t)T * H, 1.0f), *y = rnd((size_t)T * H, 1.0f);
        if (ti == 3) /* skewed routing: most rows pick experts 0..2 (many tiles of one expert) */
            for (int t = 0; t < T; t++)
                for (int e = 0; e < 3; e++)
                    lg[(size_t)t * E + e] += 6.0f;
        float *dl = dput(lg, (size_t)T * E * 4), *dx = dput(x, (size_t)T * H * 4);
        float *dw = G->alloc(G->ctx, (size_t)T * k * 4);
        int32_t *di = G->alloc(G->ctx, (size_t)T * k * 4);
        G->moe_route(G->ctx, di, dw, dl, T, E, k, true);
        int32_t *idx = malloc((size_t)T * k * 4);
        G->download(G->ctx, idx, di, (size_t)T * k * 4);
        float *w = dget(dw, (size_t)T * k), *ws = malloc((size_t)(2 * I + H) * 4), *got[2];
        float *ref = malloc((size_t)T * H * 4);
        memcpy(ref, y, (size_t)T * H * 4);
        C->moe_experts(NULL, ref, x, idx, w, ex, E, T, k, H, I, ws);
        for (int v = 0; v < 2; v++) { /* the default, then mp_gemm */
            if (v)
                setenv("DR_CUDA_MOE_GEMM", "1", 1);
            float *dy = dput(y, (size_t)T * H * 4);
            G->moe_experts(G->ctx, dy, dx, di, dw, ex, E, T, k, H, I, NULL);
            got[v] = dget(dy, (size_t)T * H);
            G->free(G->ctx, dy);
            unsetenv("DR_CUDA_MOE_GEMM");
            REPORT(rel_err(got[v], ref, (size_t)T * H), MOE_TOL, "moe_experts bf16 %s T=%d E=%d k=%d H=%d I=%d",
                   moe_variant(v, H, I), T, E, k, H, I);
        }
        size_t diff = 0;
        for (size_t i = 0; i < (size_t)T * H; i++)
            diff += memcmp(&got[0][i], &got[1][i], 4) != 0;
        CHECK_SHOW(diff == 0, "moe_experts %s vs 64-row T=%d H=%d I=%d: %zu of %zu outputs differ (want 0)",
                   moe_variant(0, H, I), T, H, I, diff, (size_t)T * H);
        free(lg), free(x), free(y), free(idx), free(w), free(ws), free(ref), free(got[0]), free(got[1]);
        G->free(G->ctx, dl), G->free(G->ctx, dx), G->free(G->ctx, dw), G->free(G->ctx, di);
    }
    for (int e = 0; e < E; e++) {
        G->weight_free(G->ctx, &ex[e].gate);
        G->weight_free(G->ctx, &ex[e].up);
        G->weight_free(G->ctx, &ex[e].down);
    }
    for (int i = 0; i < 3 * E; i++)
        free(hs[i]);
}

static void test_moe(void) {
    test_moe_shape(512, 256); /* both; 4 column blocks of each mp_gemm2 */
    test_moe_shape(128, 192); /* both; 3 gate/up column blocks */
    test_moe_shape(192, 128); /* mp_gemm only (H % 128 != 0) */
}

int main(void) {
    int rc = cuda_test_open();
    if (rc == 77)
        return 77;
    if (rc)
        return TEST_DONE();
    test_attention();
    test_gdn();
    test_moe();
    cuda_test_close();
    return TEST_DONE();
}
