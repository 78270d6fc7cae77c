/* tests/test_cuda.c - every slot of the CUDA backend against the CPU
 * reference table on random inputs of odd sizes.
 *
 * Errors are max |gpu - cpu| / max |cpu| (relative to the output's scale),
 * printed beside the tolerance. The tolerances are fp32 ones: the GPU sums in
 * a different order and contracts a*b+c into FMAs, nothing more; the bf16
 * split GEMM (x = hi + lo) is held to the same bound. Without a CUDA device
 * the test prints "skipped: no CUDA device" and returns 77 (ctest: skipped).
 */
#include "ops/cuda/cuda_ops.h"
#define CUDA_TEST_SEED 0x9e3779b97f4a7c15ull
#include "cuda_test_util.h"
#include "ops/ops.h"
#include "test.h"
#include "util/argmax.h"
#include "util/dtype.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TOL 2e-5f /* fp32 reordering; the recurrences get GDN_TOL */
#define GDN_TOL 1e-4f


/* ---- elementwise ---- */

static void test_elementwise(void) {
    const int rows = 7, n = 333;
    const size_t N = (size_t)rows * n;
    float *x = rnd(N, 3.0f), *z = rnd(N, 2.0f), *gain = rnd(n, 1.0f), *y = malloc(N * 4);
    float *dx = dput(x, N * 4), *dz = dput(z, N * 4), *dg = dput(gain, n * 4), *dy = G->alloc(G->ctx, N * 4);

    C->rmsnorm(NULL, y, x, gain, rows, n, 1e-6f);
    G->rmsnorm(G->ctx, dy, dx, dg, rows, n, 1e-6f);
    float *got = dget(dy, N);
    REPORT(rel_err(got, y, N), TOL, "rmsnorm %dx%d", rows, n);
    free(got);

    float *xi = hcopy(x, N), *dxi = dput(x, N * 4); /* in place (q/k norm) */
    C->rmsnorm(NULL, xi, xi, gain, rows, n, 1e-6f);
    G->rmsnorm(G->ctx, dxi, dxi, dg, rows, n, 1e-6f);
    got = dget(dxi, N);
    REPORT(rel_err(got, xi, N), TOL, "rmsnorm in place");
    free(got);

    C->gated_rmsnorm(NULL, y, x, z, gain, rows * 3, n / 3, 1e-6f);
    G->gated_rmsnorm(G->ctx, dy, dx, dz, dg, rows * 3, n / 3, 1e-6f);
    got = dget(dy, N);
    REPORT(rel_err(got, y, N), TOL, "gated_rmsnorm %dx%d", rows * 3, n / 3);
    free(got);

    memcpy(y, x, N * 4);
    G->upload(G->ctx, dy, x, N * 4);
    C->add(NULL, y, z, N);
    G->add(G->ctx, dy, dz, N);
    got = dget(dy, N);
    REPORT(rel_err(got, y, N), 0.0f, "add n=%zu", N);
    free(got);

    C->swiglu(NULL, y, x, z, N);
    G->swiglu(G->ctx, dy, dx, dz, N);
    got = dget(dy, N);
    REPORT(rel_err(got, y, N), TOL, "swiglu");
    free(got);

    memcpy(y, x, N * 4);
    G->upload(G->ctx, dy, x, N * 4);
    C->sigmoid_mul(NULL, y, z, N);
    G->sigmoid_mul(G->ctx, dy, dz, N);
    got = dget(dy, N);
    REPORT(rel_err(got, y, N), TOL, "sigmoid_mul");
    free(got);

    memcpy(y, x, N * 4);
    G->upload(G->ctx, dy, x, N * 4);
    C->sigmoid_scale_rows(NULL, y, z, rows, n);
    G->sigmoid_scale_rows(G->ctx, dy, dz, rows, n);
    got = dget(dy, N);
    REPORT(rel_err(got, y, N), TOL, "sigmoid_scale_rows %dx%d", rows, n);
    free(got);

    {
        const int r2 = 5, h = 19;
        float *a = malloc(r2 * h * 4), *b = malloc(r2 * h * 4);
        float *da = G->alloc(G->ctx, r2 * h * 4), *db = G->alloc(G->ctx, r2 * h * 4);
        C->split_halves(NULL, a, b, x, r2, h);
        G->split_halves(G->ctx, da, db, dx, r2, h);
        float *ga = dget(da, r2 * h), *gb = dget(db, r2 * h);
        REPORT(fmaxf(rel_err(ga, a, r2 * h), rel_err(gb, b, r2 * h)), 0.0f, "split_halves %dx2x%d", r2, h);
        free(a), free(b), free(ga), free(gb);
        G->free(G->ctx, da), G->free(G->ctx, db);
    }

    memcpy(y, x, N * 4);
    G->upload(G->ctx, dy, x, N * 4);
    C->round_bf16(NULL, y, N);
    G->round_bf16(G->ctx, dy, N);
    got = dget(dy, N);
    REPORT(rel_err(got, y, N), 0.0f, "round_bf16 (bit exact)");
    free(got);

    free(x), free(z), free(gain), free(y), free(xi);
    G->free(G->ctx, dx), G->free(G->ctx, dz), G->free(G->ctx, dg), G->free(G->ctx, dy), G->free(G->ctx, dxi);
}

/* ---- matmul and embed ---- */

/* fp32 -> f16 bits for |f| < 65504 (any rounding will do: both sides read
 * the same bits) */
static uint16_t f16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, man = u & 0x7fffffu;
    int ex = (int)((u >> 23) & 0xff) - 127 + 15;
    if (ex <= 0) { /* subnormal */
        if (ex < -10)
            return (uint16_t)sign;
        man |= 0x800000u;
        return (uint16_t)(sign | (man >> (14 - ex)));
    }
    return (uint16_t)(sign | ((uint32_t)ex << 10) | (man >> 13));
}

static void *make_weights(dr_tensor *t, dr_dtype dt, int d, int n, float scale) {
    size_t N = (size_t)d * n, es = dr_dtype_size(dt);
    unsigned char *h = malloc(N * es);
    for (size_t i = 0; i < N; i++) {
        float v = frand() * scale;
        if (dt == DR_DT_F32) {
            memcpy(h + 4 * i, &v, 4);
        } else if (dt == DR_DT_BF16) {
            uint16_t b = dr_f32_to_bf16(v);
            memcpy(h + 2 * i, &b, 2);
        } else {
            uint16_t b = f16_bits(v);
            memcpy(h + 2 * i, &b, 2);
        }
    }
    upload_weight(t, "test.weight", dt, d, n, h);
    return h;
}

static void test_matmul(void) {
    const dr_dtype dts[3] = {DR_DT_F32, DR_DT_BF16, DR_DT_F16};
    const char *dn[3] = {"f32", "bf16", "f16"};
    /* odd (scalar path), vector-aligned, and few rows of long / medium width
       (with DR_CUDA_GEMV_SPLIT=1 the GEMV splits each row over 8 / 2 warps);
       rows >= 32 / 64 per SM: the default GEMV's 2- and 4-row warps */
    const int shapes[6][2] = {{67, 130}, {96, 256}, {37, 4096}, {301, 1032}, {4500, 264}, {8700, 136}};
    const int Ts[5] = {1, 3, 8, 9, 70};
    const char *engines[4] = {"auto", "gemv", "tiled", "cublas"};
    for (int di = 0; di < 3; di++)
        for (int si = 0; si < 6; si++) {
            const int d = shapes[si][0], n = shapes[si][1];
            dr_tensor w;
            void *h = make_weights(&w, dts[di], d, n, 0.5f);
            float worst[4] = {0};
            for (int ti = 0; ti < 5; ti++) {
                const int T = Ts[ti];
                float *x = rnd((size_t)T * n, 2.0f), *y = malloc((size_t)T * d * 4);
                float *dx = dput(x, (size_t)T * n * 4), *dy = G->alloc(G->ctx, (size_t)T * d * 4);
                C->matmul(NULL, y, x, &w, T);
                for (int e = 0; e < 4; e++) {
                    if (e == 1 && T > 8)
                        continue;
                    dr_cuda_set_mm_engine(e);
                    G->zero(G->ctx, dy, (size_t)T * d * 4);
                    G->matmul(G->ctx, dy, dx, &w, T);
                    float *got = dget(dy, (size_t)T * d);
                    float er = rel_err(got, y, (size_t)T * d);
                    worst[e] = er > worst[e] || isnan(er) ? er : worst[e];
                    free(got);
                }
                dr_cuda_set_mm_engine(0);
                free(x), free(y);
                G->free(G->ctx, dx), G->free(G->ctx, dy);
            }
            for (int e = 0; e < 4; e++)
                REPORT(worst[e], TOL, "matmul %s [%d,%d] T=1..70 engine %s", dn[di], d, n, engines[e]);
            G->weight_free(G->ctx, &w);
            CHECK(w.dev == NULL, "weight_free clears dev");
            free(h);
        }
    /* embed */
    const int V = 50, H = 36, T = 7;
    dr_tensor e;
    void *h = make_weights(&e, DR_DT_BF16, V, H, 1.0f);
    int32_t ids[7] = {3, 49, 0, 17, 17, 22, 8};
    float *y = malloc((size_t)T * H * 4), *dy = G->alloc(G->ctx, (size_t)T * H * 4);
    C->embed(NULL, y, &e, ids, T);
    G->embed(G->ctx, dy, &e, ids, T);
    float *got = dget(dy, (size_t)T * H);
    REPORT(rel_err(got, y, (size_t)T * H), 0.0f, "embed bf16 V=%d H=%d T=%d (exact)", V, H, T);
    free(got), free(y), free(h);
    G->free(G->ctx, dy);
    G->weight_free(G->ctx, &e);

    /* quantized weights: a clear error naming the tensor */
    dr_tensor q;
    memset(&q, 0, sizeof q);
    q.name = "model.layers.0.mlp.down_proj.weight";
    q.dtype = DR_DT_U32;
    q.ndim = 2;
    q.ne[0] = 8;
    q.ne[1] = 64;
    q.q.bits = 4;
    dr_status st = G->weight_upload(G->ctx, &q);
    CHECK(st != DR_OK && strstr(dr_last_error(), "down_proj"), "quantized upload: %s", dr_last_error());
}

/* ---- attention ---- */

static void test_rope_attention(void) {
    {
        const int T = 5, nH = 3, hd = 40, d_rot = 20;
        const int pos0s[2] = {17, 30000};
        for (int p = 0; p < 2; p++) {
            size_t N = (size_t)T * nH * hd;
            float *x = rnd(N, 1.0f), *dx = dput(x, N * 4);
            C->rope(NULL, x, T, nH, hd, d_rot, pos0s[p], 1e7f);
            G->rope(G->ctx, dx, T, nH, hd, d_rot, pos0s[p], 1e7f);
            float *got = dget(dx, N);
            REPORT(rel_err(got, x, N), TOL, "rope partial (d_rot %d of %d) pos0=%d", d_rot, hd, pos0s[p]);
            free(x), free(got);
            G->free(G->ctx, dx);
        }
    }
    const struct {
        int T, pos0, nH, nKV, hd;
    } cs[] = {{1, 0, 4, 2, 64},    {1, 3000, 8, 2, 256}, {7, 50, 8, 2, 64},    {3, 700, 6, 3, 40},
              {40, 5, 4, 1, 128},  {1, 9000, 16, 2, 256}, {1, 127, 16, 4, 128}, {1, 255, 8, 8, 40},
              {1, 31, 6, 3, 100},  {1, 33, 16, 2, 256},   {1, 700, 4, 1, 64}, /* T = 1: the decode kernel */
              {1, 300, 4, 2, 66},  {1, 90, 4, 1, 130}}; /* T = 1, hd not a multiple of the dims per lane: split kernel */
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int T = cs[c].T, pos0 = cs[c].pos0, nH = cs[c].nH, nKV = cs[c].nKV, hd = cs[c].hd;
        const int n_ctx = pos0 + T;
        size_t nq = (size_t)T * nH * hd, nkv = (size_t)n_ctx * nKV * hd;
        float *q = rnd(nq, 1.0f), *k = rnd(nkv, 1.0f), *v = rnd(nkv, 1.0f), *o = malloc(nq * 4);
        float *ws = malloc((size_t)(n_ctx + 1) * 4);
        float *dq = dput(q, nq * 4), *dk = dput(k, nkv * 4), *dv = dput(v, nkv * 4), *dO = G->alloc(G->ctx, nq * 4);
        const float scale = 1.0f / sqrtf((float)hd) * 4.0f; /* sharper than real: exercises the max */
        C->attention(NULL, o, q, k, v, T, pos0, nH, nKV, hd, scale, ws);
        G->attention(G->ctx, dO, dq, dk, dv, T, pos0, nH, nKV, hd, scale, NULL);
        float *got = dget(dO, nq);
        REPORT(rel_err(got, o, nq), TOL, "attention T=%d pos0=%d nH=%d nKV=%d hd=%d", T, pos0, nH, nKV, hd);
        free(q), free(k), free(v), free(o), free(ws), free(got);
        G->free(G->ctx, dq), G->free(G->ctx, dk), G->free(G->ctx, dv), G->free(G->ctx, dO);
    }
}

/* attention_block (one decode token): the fused prep + attention + gate
 * against the same steps op by op on the GPU (the same arithmetic: equal
 * up to the compiler's contractions and the order of the sums) and on the
 * CPU reference. By default the cases past 4096 keys run the one-kernel
 * block, the others the prep / decode / merge kernels; the device runs
 * repeat this with DR_CUDA_ATT_FUSED=2 (always the one kernel) and 0. */
static void attn_steps(dr_ops *o, float *att, float *q, float *gate, float *k, const float *qg, const float *v,
                       float *kc, float *vc, const float *qn, const float *kn, int pos0, int nH, int nKV, int hd,
                       int d_rot, float scale, float *ws) {
    void *c = o->ctx;
    o->split_halves(c, q, gate, qg, nH, hd);
    o->rmsnorm(c, q, q, qn, nH, hd, 1e-6f);
    o->rmsnorm(c, k, k, kn, nKV, hd, 1e-6f);
    o->rope(c, q, 1, nH, hd, d_rot, pos0, 1e7f);
    o->rope(c, k, 1, nKV, hd, d_rot, pos0, 1e7f);
    const size_t kv_row = (size_t)nKV * hd;
    o->copy(c, kc + (size_t)pos0 * kv_row, k, kv_row * 4);
    o->copy(c, vc + (size_t)pos0 * kv_row, v, kv_row * 4);
    o->attention(c, att, q, kc, vc, 1, pos0, nH, nKV, hd, scale, ws);
    o->sigmoid_mul(c, att, gate, (size_t)nH * hd);
}

static void test_attention_block(void) {
    if (!G->attention_block) {
        CHECK(0, "the CUDA backend has no attention_block slot");
        return;
    }
    const struct {
        int pos0, nH, nKV, hd, d_rot;
    } cs[] = {{0, 8, 2, 256, 64},    {200, 16, 4, 256, 64}, {1500, 8, 2, 128, 32},
              {77, 4, 4, 64, 64},    {40, 6, 3, 40, 0},     {3000, 16, 2, 256, 64},
              {333, 16, 2, 128, 64}, {500, 8, 1, 64, 64},   {20, 4, 2, 256, 64},
              {5000, 8, 2, 256, 64}, {4200, 16, 2, 128, 32}};
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        const int pos0 = cs[ci].pos0, nH = cs[ci].nH, nKV = cs[ci].nKV, hd = cs[ci].hd, d_rot = cs[ci].d_rot;
        const size_t nq = (size_t)nH * hd, kv_row = (size_t)nKV * hd, ncache = (size_t)(pos0 + 1) * kv_row;
        const float scale = 1.0f / sqrtf((float)hd);
        float *qg = rnd(2 * nq, 2.0f), *k = rnd(kv_row, 2.0f), *v = rnd(kv_row, 1.0f);
        float *qn = rnd((size_t)hd, 1.0f), *kn = rnd((size_t)hd, 1.0f), *kc = rnd(ncache, 1.0f), *vc = rnd(ncache, 1.0f);
        /* CPU reference */
        float *rq = malloc(nq * 4), *rg = malloc(nq * 4), *rk = hcopy(k, kv_row), *ratt = malloc(nq * 4);
        float *rkc = hcopy(kc, ncache), *rvc = hcopy(vc, ncache), *ws = malloc((size_t)(pos0 + 2) * 4);
        attn_steps(C, ratt, rq, rg, rk, qg, v, rkc, rvc, qn, kn, pos0, nH, nKV, hd, d_rot, scale, ws);
        /* GPU: op by op, then fused */
        float *dqg = dput(qg, 2 * nq * 4), *dv = dput(v, kv_row * 4), *dqn = dput(qn, (size_t)hd * 4);
        float *dkn = dput(kn, (size_t)hd * 4), *dq = G->alloc(G->ctx, nq * 4), *dg = G->alloc(G->ctx, nq * 4);
        float *da[3], *dkc[2], *dvc[2], *dk[2];
        da[2] = G->alloc(G->ctx, nq * 4);
        for (int f = 0; f < 2; f++) {
            da[f] = G->alloc(G->ctx, nq * 4), dk[f] = dput(k, kv_row * 4);
            dkc[f] = dput(kc, ncache * 4), dvc[f] = dput(vc, ncache * 4);
        }
        attn_steps(G, da[0], dq, dg, dk[0], dqg, dv, dkc[0], dvc[0], dqn, dkn, pos0, nH, nKV, hd, d_rot, scale, NULL);
        const bool took = G->attention_block(G->ctx, da[1], dq, dg, dk[1], dqg, dv, dkc[1], dvc[1], dqn, dkn, 1, pos0,
                                             nH, nKV, hd, d_rot, 1e7f, 1e-6f, scale);
        CHECK(took, "attention_block pos0=%d nH=%d nKV=%d hd=%d: declined", pos0, nH, nKV, hd);
        /* again on the same inputs (k is scratch it may overwrite: a fresh copy): the same result (the
           per-head slice counters of the fused kernel are back at zero) */
        float *dk2 = dput(k, kv_row * 4);
        G->attention_block(G->ctx, da[2], dq, dg, dk2, dqg, dv, dkc[1], dvc[1], dqn, dkn, 1, pos0, nH, nKV, hd, d_rot,
                           1e7f, 1e-6f, scale);
        G->free(G->ctx, dk2);
        float *a0 = dget(da[0], nq), *a1 = dget(da[1], nq), *k0 = dget(dkc[0], ncache), *k1 = dget(dkc[1], ncache);
        float *a2 = dget(da[2], nq);
        REPORT(rel_err(a2, a1, nq), 0.0f, "attention_block pos0=%d nH=%d: a second call gives the same output", pos0,
               nH);
        float *v1 = dget(dvc[1], ncache);
        REPORT(rel_err(a1, a0, nq), 1e-6f, "attention_block pos0=%d nH=%d nKV=%d hd=%d d_rot=%d vs the steps on the GPU",
               pos0, nH, nKV, hd, d_rot);
        REPORT(rel_err(a1, ratt, nq), TOL, "attention_block pos0=%d nH=%d nKV=%d hd=%d vs CPU", pos0, nH, nKV, hd);
        REPORT(rel_err(k1, k0, ncache), 1e-6f, "attention_block pos0=%d hd=%d: K cache vs the steps on the GPU", pos0,
               hd);
        REPORT(rel_err(k1, rkc, ncache), TOL, "attention_block pos0=%d hd=%d: K cache vs CPU", pos0, hd);
        REPORT(rel_err(v1, rvc, ncache), 0.0f, "attention_block pos0=%d hd=%d: V cache vs CPU (a copy)", pos0, hd);
        CHECK_SHOW(!G->attention_block(G->ctx, da[1], dq, dg, dk[1], dqg, dv, dkc[1], dvc[1], dqn, dkn, 2, pos0, nH, nKV,
                                       hd, d_rot, 1e7f, 1e-6f, scale),
                   "attention_block declines T = 2 (hd %d)", hd);
        free(qg), free(k), free(v), free(qn), free(kn), free(kc), free(vc), free(rq), free(rg), free(rk), free(ratt);
        free(rkc), free(rvc), free(ws), free(a0), free(a1), free(a2), free(k0), free(k1), free(v1);
        void *bufs[] = {dqg, dv, dqn, dkn, dq, dg, da[0], da[1], da[2], dk[0], dk[1], dkc[0], dkc[1], dvc[0], dvc[1]};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            G->free(G->ctx, bufs[i]);
    }
    /* head sizes whose lanes would hold dims on both sides of the head's end: declined before any buffer is used */
    const int odd_hd[2] = {66, 130};
    for (int i = 0; i < 2; i++)
        CHECK_SHOW(!G->attention_block(G->ctx, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 5, 4, 2,
                                       odd_hd[i], 0, 1e7f, 1e-6f, 0.1f),
                   "attention_block declines hd %d", odd_hd[i]);
}

/* ---- Gated DeltaNet ---- */

static void test_gdn(void) {
    { /* conv with state */
        const int Cc = 100, K = 4, Ts[3] = {1, 2, 37};
        for (int ti = 0; ti < 3; ti++) {
            const int T = Ts[ti];
            float *m = rnd((size_t)T * Cc, 2.0f), *st = rnd((size_t)K * Cc, 2.0f), *w = rnd((size_t)Cc * K, 1.0f);
            float *out = malloc((size_t)T * Cc * 4);
            float *dm = dput(m, (size_t)T * Cc * 4), *dst = dput(st, (size_t)K * Cc * 4), *dw = dput(w, (size_t)Cc * K * 4);
            float *dout = G->alloc(G->ctx, (size_t)T * Cc * 4);
            C->gdn_conv(NULL, out, m, st, w, T, Cc, K);
            G->gdn_conv(G->ctx, dout, dm, dst, dw, T, Cc, K);
            float *go = dget(dout, (size_t)T * Cc), *gs = dget(dst, (size_t)K * Cc);
            REPORT(rel_err(go, out, (size_t)T * Cc), TOL, "gdn_conv T=%d C=%d K=%d out", T, Cc, K);
            REPORT(rel_err(gs, st, (size_t)K * Cc), 0.0f, "gdn_conv T=%d conv state (exact)", T);
            free(m), free(st), free(w), free(out), free(go), free(gs);
            G->free(G->ctx, dm), G->free(G->ctx, dst), G->free(G->ctx, dw), G->free(G->ctx, dout);
        }
    }
    { /* gates */
        const int T = 9, Hv = 6;
        float *b = rnd(T * Hv, 4.0f), *a = rnd(T * Hv, 30.0f), *Al = rnd(Hv, 2.0f), *dt = rnd(Hv, 1.0f);
        float *beta = malloc(T * Hv * 4), *g = malloc(T * Hv * 4);
        float *db = dput(b, T * Hv * 4), *da = dput(a, T * Hv * 4), *dAl = dput(Al, Hv * 4), *ddt = dput(dt, Hv * 4);
        float *dbeta = G->alloc(G->ctx, T * Hv * 4), *dg = G->alloc(G->ctx, T * Hv * 4);
        C->gdn_gates(NULL, beta, g, b, a, Al, dt, T, Hv);
        G->gdn_gates(G->ctx, dbeta, dg, db, da, dAl, ddt, T, Hv);
        float *gb = dget(dbeta, T * Hv), *gg = dget(dg, T * Hv);
        REPORT(fmaxf(rel_err(gb, beta, T * Hv), rel_err(gg, g, T * Hv)), TOL, "gdn_gates (a up to 30: softplus both sides)");
        free(b), free(a), free(Al), free(dt), free(beta), free(g), free(gb), free(gg);
        G->free(G->ctx, db), G->free(G->ctx, da), G->free(G->ctx, dAl), G->free(G->ctx, ddt);
        G->free(G->ctx, dbeta), G->free(G->ctx, dg);
    }
    const struct {
        int Hk, Hv, dk, dv, T, chunked;
    } cs[] = {{2, 6, 32, 48, 1, 0},    {2, 6, 32, 48, 5, 0},   {2, 6, 32, 48, 150, 1}, {1, 2, 128, 128, 1, 0},
              {2, 4, 128, 128, 70, 1}, {3, 3, 24, 20, 65, 1}, {1, 4, 256, 64, 3, 0}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        dr_gdn_dims d = {cs[c].Hk, cs[c].Hv, cs[c].dk, cs[c].dv};
        const int T = cs[c].T, Cc = 2 * d.n_k_heads * d.d_k + d.n_v_heads * d.d_v;
        const size_t ns = (size_t)d.n_v_heads * d.d_k * d.d_v, no = (size_t)T * d.n_v_heads * d.d_v;
        float *qkv = rnd((size_t)T * Cc, 1.0f), *beta = rnd((size_t)T * d.n_v_heads, 0.5f);
        float *g = rnd((size_t)T * d.n_v_heads, 0.5f), *st = rnd(ns, 0.3f), *o = malloc(no * 4);
        for (int i = 0; i < T * d.n_v_heads; i++) {
            beta[i] += 0.5f;           /* (0, 1) like a sigmoid */
            g[i] = -fabsf(g[i]) * 0.6f; /* log decay <= 0 */
        }
        float *ws = malloc(dr_gdn_ws_floats(&d) * 4);
        float *dqkv = dput(qkv, (size_t)T * Cc * 4), *dbeta = dput(beta, (size_t)T * d.n_v_heads * 4);
        float *dg = dput(g, (size_t)T * d.n_v_heads * 4), *dst = dput(st, ns * 4), *dO = G->alloc(G->ctx, no * 4);
        if (cs[c].chunked) {
            C->gdn_chunked(NULL, o, qkv, beta, g, st, &d, T, ws);
            G->gdn_chunked(G->ctx, dO, dqkv, dbeta, dg, dst, &d, T, NULL);
        } else {
            C->gdn_recurrent(NULL, o, qkv, beta, g, st, &d, T, ws);
            G->gdn_recurrent(G->ctx, dO, dqkv, dbeta, dg, dst, &d, T, NULL);
        }
        float *go = dget(dO, no), *gs = dget(dst, ns);
        const char *nm = cs[c].chunked ? "gdn_chunked" : "gdn_recurrent";
        REPORT(rel_err(go, o, no), GDN_TOL, "%s Hk=%d Hv=%d dk=%d dv=%d T=%d: o", nm, d.n_k_heads, d.n_v_heads,
               d.d_k, d.d_v, T);
        REPORT(rel_err(gs, st, ns), GDN_TOL, "%s T=%d: fp32 state", nm, T);
        free(qkv), free(beta), free(g), free(st), free(o), free(ws), free(go), free(gs);
        G->free(G->ctx, dqkv), G->free(G->ctx, dbeta), G->free(G->ctx, dg), G->free(G->ctx, dst);
        G->free(G->ctx, dO);
    }
}

/* ---- MoE ---- */

static void test_moe(void) {
    const int E = 6, H = 64, I = 40, k = 2;
    dr_expert ex[6];
    void *hs[18];
    for (int e = 0; e < E; e++) {
        hs[3 * e] = make_weights(&ex[e].gate, DR_DT_BF16, I, H, 0.3f);
        hs[3 * e + 1] = make_weights(&ex[e].up, DR_DT_BF16, I, H, 0.3f);
        hs[3 * e + 2] = make_weights(&ex[e].down, DR_DT_BF16, H, I, 0.3f);
    }
    const int Ts[4] = {1, 3, 21, 60};
    for (int ti = 0; ti < 4; ti++) {
        const int T = Ts[ti];
        for (int rn = 0; rn < 2; rn++) {
            const int Er = 37, kr = 5; /* routing on its own, odd sizes */
            float *lg = rnd((size_t)T * Er, 3.0f), *w = malloc((size_t)T * kr * 4);
            int32_t *idx = malloc((size_t)T * kr * 4);
            float *dl = dput(lg, (size_t)T * Er * 4), *dw = G->alloc(G->ctx, (size_t)T * kr * 4);
            int32_t *di = G->alloc(G->ctx, (size_t)T * kr * 4);
            C->moe_route(NULL, idx, w, lg, T, Er, kr, rn);
            G->moe_route(G->ctx, di, dw, dl, T, Er, kr, rn);
            int32_t *gi = malloc((size_t)T * kr * 4);
            G->download(G->ctx, gi, di, (size_t)T * kr * 4);
            float *gw = dget(dw, (size_t)T * kr);
            CHECK_SHOW(!memcmp(gi, idx, (size_t)T * kr * 4), "moe_route T=%d E=%d k=%d renorm=%d: same experts", T, Er,
                       kr, rn);
            REPORT(rel_err(gw, w, (size_t)T * kr), TOL, "moe_route T=%d renorm=%d weights", T, rn);
            free(lg), free(w), free(idx), free(gi), free(gw);
            G->free(G->ctx, dl), G->free(G->ctx, dw), G->free(G->ctx, di);
        }
        /* experts: route on the GPU (sets E), feed the same picks to the CPU */
        float *lg = rnd((size_t)T * E, 3.0f), *x = rnd((size_t)T * H, 1.0f), *y = rnd((size_t)T * H, 1.0f);
        float *dl = dput(lg, (size_t)T * E * 4), *dx = dput(x, (size_t)T * H * 4), *dy = dput(y, (size_t)T * H * 4);
        float *dw = G->alloc(G->ctx, (size_t)T * k * 4);
        int32_t *di = G->alloc(G->ctx, (size_t)T * k * 4);
        G->moe_route(G->ctx, di, dw, dl, T, E, k, true);
        int32_t *idx = malloc((size_t)T * k * 4);
        G->download(G->ctx, idx, di, (size_t)T * k * 4);
        float *w = dget(dw, (size_t)T * k), *ws = malloc((size_t)(2 * I + H) * 4);
        C->moe_experts(NULL, y, x, idx, w, ex, E, T, k, H, I, ws);
        G->moe_experts(G->ctx, dy, dx, di, dw, ex, E, T, k, H, I, NULL);
        float *got = dget(dy, (size_t)T * H);
        REPORT(rel_err(got, y, (size_t)T * H), TOL, "moe_experts bf16 T=%d E=%d k=%d H=%d I=%d (%s)", T, E, k, H, I,
               T <= 4 ? "decode" : "grouped");
        free(lg), free(x), free(y), free(idx), free(w), free(ws), free(got);
        G->free(G->ctx, dl), G->free(G->ctx, dx), G->free(G->ctx, dy), G->free(G->ctx, dw), G->free(G->ctx, di);
    }
    for (int e = 0; e < E; e++) {
        G->weight_free(G->ctx, &ex[e].gate);
        G->weight_free(G->ctx, &ex[e].up);
        G->weight_free(G->ctx, &ex[e].down);
    }
    for (int i = 0; i < 18; i++)
        free(hs[i]);
}

/* The weights of a MoE block for the moe_decode tests. */
typedef struct {
    dr_expert *ex;
    dr_tensor shd, shg, shu, shs, rw;
    int E, H, I, IS;
} moe_w;

/* Random bf16 weights of a MoE block (router rows scaled by rs), uploaded;
 * *hs: the host copies, [3 E] experts' gate / up / down, then shared down,
 * gate, up, scalar gate and the router. */
static moe_w moe_w_make(int E, int H, int I, int IS, float rs, void ***hs) {
    moe_w mw = {calloc((size_t)E, sizeof(dr_expert)), {0}, {0}, {0}, {0}, {0}, E, H, I, IS};
    void **h = calloc(3 * (size_t)E + 5, sizeof *h);
    for (int e = 0; e < E; e++) {
        h[3 * e] = make_weights(&mw.ex[e].gate, DR_DT_BF16, I, H, 0.1f);
        h[3 * e + 1] = make_weights(&mw.ex[e].up, DR_DT_BF16, I, H, 0.1f);
        h[3 * e + 2] = make_weights(&mw.ex[e].down, DR_DT_BF16, H, I, 0.1f);
    }
    h[3 * E] = make_weights(&mw.shd, DR_DT_BF16, H, IS, 0.1f);
    h[3 * E + 1] = make_weights(&mw.shg, DR_DT_BF16, IS, H, 0.2f);
    h[3 * E + 2] = make_weights(&mw.shu, DR_DT_BF16, IS, H, 0.2f);
    h[3 * E + 3] = make_weights(&mw.shs, DR_DT_BF16, 1, H, 0.2f);
    h[3 * E + 4] = make_weights(&mw.rw, DR_DT_BF16, E, H, rs);
    *hs = h;
    return mw;
}

static void moe_w_free(moe_w *mw, void **hs) {
    for (int e = 0; e < mw->E; e++) {
        G->weight_free(G->ctx, &mw->ex[e].gate);
        G->weight_free(G->ctx, &mw->ex[e].up);
        G->weight_free(G->ctx, &mw->ex[e].down);
    }
    G->weight_free(G->ctx, &mw->shd);
    G->weight_free(G->ctx, &mw->shg);
    G->weight_free(G->ctx, &mw->shu);
    G->weight_free(G->ctx, &mw->shs);
    G->weight_free(G->ctx, &mw->rw);
    for (int i = 0; i < 3 * mw->E + 5; i++)
        free(hs[i]);
    free(hs), free(mw->ex);
}

/* The CPU chain for x [T, H]: lg = router x, idx / w = moe_route (k
 * picks), y = the experts + (with_sh) the shared expert. */
static void moe_ref(const moe_w *mw, const float *x, int T, int k, bool with_sh, float *lg, int32_t *idx, float *w,
                    float *y) {
    const int E = mw->E, H = mw->H, I = mw->I, IS = mw->IS;
    float *ws = malloc((size_t)(2 * I + H) * 4);
    C->matmul(NULL, lg, x, &mw->rw, T);
    C->moe_route(NULL, idx, w, lg, T, E, k, true);
    memset(y, 0, (size_t)T * H * 4);
    C->moe_experts(NULL, y, x, idx, w, mw->ex, E, T, k, H, I, ws);
    if (with_sh) {
        float *sg = malloc((size_t)T * IS * 4), *su = malloc((size_t)T * IS * 4), *ss = malloc((size_t)T * 4);
        float *act = malloc((size_t)T * IS * 4), *o2 = malloc((size_t)T * H * 4);
        C->matmul(NULL, sg, x, &mw->shg, T);
        C->matmul(NULL, su, x, &mw->shu, T);
        C->matmul(NULL, ss, x, &mw->shs, T);
        C->swiglu(NULL, act, sg, su, (size_t)T * IS);
        C->matmul(NULL, o2, act, &mw->shd, T);
        C->sigmoid_scale_rows(NULL, o2, ss, T, H);
        C->add(NULL, y, o2, (size_t)T * H);
        free(sg), free(su), free(ss), free(act), free(o2);
    }
    free(ws);
}

/* One moe_decode call on device x against the CPU results: logits, picks,
 * weights, y; then again with acc (added to what y holds). */
static void moe_decode_check(const moe_w *mw, const float *dx, int T, int k, bool with_sh, const float *lg,
                             const int32_t *idx, const float *w, const float *y) {
    const int E = mw->E, H = mw->H, IS = mw->IS;
    float *dl = G->alloc(G->ctx, (size_t)T * E * 4);
    float *dsg = G->alloc(G->ctx, (size_t)T * IS * 4), *dsu = G->alloc(G->ctx, (size_t)T * IS * 4);
    float *dss = G->alloc(G->ctx, (size_t)T * 4);
    float *junk = rnd((size_t)T * H, 9.0f), *dy = dput(junk, (size_t)T * H * 4); /* overwritten */
    float *dw = G->alloc(G->ctx, (size_t)T * k * 4);
    int32_t *di = G->alloc(G->ctx, (size_t)T * k * 4);
    const dr_moe_shared sh = {&mw->shg, &mw->shu, &mw->shs, &mw->shd, dsg, dsu, dss};
    const dr_moe_shared *shp = with_sh ? &sh : NULL;
    const bool done = G->moe_decode(G->ctx, dy, di, dw, dl, &mw->rw, dx, mw->ex, E, T, k, true, H, mw->I, shp, false);
    CHECK(done, "moe_decode T=%d: handled by the fused kernels", T);
    float *glg = dget(dl, (size_t)T * E);
    REPORT(rel_err(glg, lg, (size_t)T * E), TOL, "moe_decode T=%d E=%d: router logits", T, E);
    int32_t *gi = malloc((size_t)T * k * 4);
    G->download(G->ctx, gi, di, (size_t)T * k * 4);
    float *got = dget(dy, (size_t)T * H), *gw = dget(dw, (size_t)T * k);
    CHECK_SHOW(!memcmp(gi, idx, (size_t)T * k * 4), "moe_decode T=%d k=%d: same experts as the CPU", T, k);
    REPORT(rel_err(gw, w, (size_t)T * k), TOL, "moe_decode T=%d E=%d k=%d: routing weights", T, E, k);
    REPORT(rel_err(got, y, (size_t)T * H), TOL, "moe_decode bf16 T=%d E=%d k=%d H=%d I=%d shared %d", T, E, k, H,
           mw->I, with_sh ? IS : 0);
    /* acc: added to what y holds (the residual add folded in) */
    float *da = dput(junk, (size_t)T * H * 4), *want = malloc((size_t)T * H * 4);
    G->moe_decode(G->ctx, da, di, dw, dl, &mw->rw, dx, mw->ex, E, T, k, true, H, mw->I, shp, true);
    for (size_t i = 0; i < (size_t)T * H; i++)
        want[i] = junk[i] + y[i];
    float *gota = dget(da, (size_t)T * H);
    REPORT(rel_err(gota, want, (size_t)T * H), TOL, "moe_decode bf16 T=%d E=%d k=%d shared %d, added to y", T, E,
           k, with_sh ? IS : 0);
    free(junk), free(glg), free(gi), free(got), free(gw), free(want), free(gota);
    G->free(G->ctx, dl), G->free(G->ctx, dsg), G->free(G->ctx, dsu), G->free(G->ctx, dss);
    G->free(G->ctx, dy), G->free(G->ctx, dw), G->free(G->ctx, di), G->free(G->ctx, da);
}

/* The fused decode MoE block (moe_decode: router and shared projections,
 * route, experts, shared expert; y overwritten) against the CPU chain
 * matmul (router, shared gate / up / scalar gate) + moe_route + moe_experts
 * + swiglu + matmul + sigmoid_scale_rows + add, T = 1..4. The first shape
 * makes every loop of the kernels run a partial pass: k = 10 > 8 picks per
 * pass, H = 1032 (129 16-byte pieces per row), I = 600 and Is = 520 (> 64
 * pieces; Is < I: gate/up blocks of routed rows only). The routing runs in
 * the gate/up kernel (E <= 256 and E <= 512 variants) unless
 * DR_CUDA_MOE_ROUTE=0, and so do the shared expert's gate / up unless
 * DR_CUDA_MOE_SHGU=0; the router logits, picks and weights are checked too. */
static void moe_decode_shape(int E, int H, int I, int IS, int K) {
    void **hs = NULL;
    moe_w mw = moe_w_make(E, H, I, IS, 0.3f, &hs);
    for (int T = 1; T <= 4; T++)
        for (int with_sh = 0; with_sh < 2; with_sh++) {
            const int k = with_sh ? K : K < 3 ? K : 3;
            float *x = rnd((size_t)T * H, 1.0f), *y = malloc((size_t)T * H * 4), *lg = malloc((size_t)T * E * 4);
            float *w = malloc((size_t)T * k * 4);
            int32_t *idx = malloc((size_t)T * k * 4);
            float *dx = dput(x, (size_t)T * H * 4);
            moe_ref(&mw, x, T, k, with_sh, lg, idx, w, y);
            moe_decode_check(&mw, dx, T, k, with_sh, lg, idx, w, y);
            free(x), free(y), free(lg), free(w), free(idx);
            G->free(G->ctx, dx);
        }
    moe_w_free(&mw, hs);
}

/* Exact ties among the router logits: router rows 2, 5, 17 and 33 equal
 * (bf16(0.5) with the sign of x, so they lead by far), the others small.
 * The picks must be the CPU's, lowest id first among equal logits, on
 * every routing path (test_cuda runs again with DR_CUDA_ROUTE_RX=0 and
 * DR_CUDA_MOE_ROUTE=0 on the device). */
static void test_moe_decode_ties(void) {
    const int E = 40, H = 64, I = 32, IS = 40, k = 6, tied[4] = {2, 5, 17, 33};
    void **hs = NULL;
    moe_w mw = moe_w_make(E, H, I, IS, 0.01f, &hs);
    float *x = rnd((size_t)H, 1.0f), *y = malloc((size_t)H * 4), *lg = malloc((size_t)E * 4);
    float *w = malloc((size_t)k * 4);
    int32_t *idx = malloc((size_t)k * 4);
    uint16_t *rh = hs[3 * E + 4];
    for (int q = 0; q < 4; q++)
        for (int i = 0; i < H; i++)
            rh[(size_t)tied[q] * H + i] = dr_f32_to_bf16(x[i] < 0.0f ? -0.5f : 0.5f);
    G->weight_free(G->ctx, &mw.rw);
    upload_weight(&mw.rw, "test.router", DR_DT_BF16, E, H, rh);
    float *dx = dput(x, (size_t)H * 4);
    moe_ref(&mw, x, 1, k, true, lg, idx, w, y);
    bool lead = true;
    for (int q = 0; q < 4; q++)
        lead &= idx[q] == tied[q];
    CHECK(lead, "moe_decode ties: the CPU picks the tied experts first, lowest id first (%d %d %d %d)", idx[0], idx[1],
          idx[2], idx[3]);
    moe_decode_check(&mw, dx, 1, k, true, lg, idx, w, y);
    free(x), free(y), free(lg), free(w), free(idx);
    G->free(G->ctx, dx);
    moe_w_free(&mw, hs);
}

static void test_moe_decode(void) {
    moe_decode_shape(12, 1032, 600, 520, 10);
    moe_decode_shape(12, 136, 40, 72, 4); /* Is > I: gate/up blocks of shared-expert rows only */
    moe_decode_shape(256, 64, 32, 40, 8);  /* the 35B-A3B router: 256 experts, top-8 */
    moe_decode_shape(300, 64, 32, 40, 8);  /* > 256 experts: the 16-logits-per-lane router warp */
    moe_decode_shape(8, 96, 48, 80, 2); /* the moe-bf16 fixture's shape */
    /* again: the same host array address with new weights (the expert table
       must follow the weights, not the address) */
    moe_decode_shape(8, 96, 48, 80, 2);
}

/* ---- argmax: the device pick against dr_argmax_f32 (ties, NaN, -0/+0) ---- */

static void test_argmax(void) {
    const int sizes[] = {1, 7, 256, 2049, 151936, 248320};
    int bad = 0, runs = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int n = sizes[si];
        for (int c = 0; c < 8; c++) {
            float *x = rnd((size_t)n, 4.0f);
            if (c == 1) /* ties: a repeated maximum, the lowest index must win */
                for (int i = n / 3; i < n; i += n / 5 + 1)
                    x[i] = 9.5f;
            if (c == 2) /* NaN everywhere but a few values, never picked */
                for (int i = 0; i < n; i += 2)
                    x[i + (i + 1 < n)] = NAN;
            if (c == 3) /* NaN at index 0 is the answer (a left-to-right scan keeps it) */
                x[0] = NAN;
            if (c == 4) /* all equal: index 0 */
                for (int i = 0; i < n; i++)
                    x[i] = -2.0f;
            if (c == 5) { /* -0 before +0 at the top: they compare equal, so the first */
                for (int i = 0; i < n; i++)
                    x[i] = -fabsf(x[i]) - 1.0f;
                x[n - 1] = 0.0f;
                x[n / 2] = -0.0f;
            }
            if (c == 6) /* all -inf: index 0 */
                for (int i = 0; i < n; i++)
                    x[i] = -INFINITY;
            if (c == 7) /* +inf late, and a prefix: only [0, n - 1) is searched */
                x[n - 1] = INFINITY;
            const int m = c == 7 && n > 1 ? n - 1 : n;
            float *d = dput(x, (size_t)n * 4);
            int32_t got = -1;
            const bool ok = G->argmax(G->ctx, &got, d, m);
            const int32_t want = dr_argmax_f32(x, m);
            runs++;
            if (!ok || got != want) {
                bad++;
                printf("argmax n=%d case %d: got %d (ok %d), want %d\n", m, c, (int)got, ok, (int)want);
            }
            G->free(G->ctx, d);
            free(x);
        }
    }
    CHECK_SHOW(bad == 0, "argmax: %d of %d device picks differ from dr_argmax_f32 (need 0)", bad, runs);
}

int main(void) {
    int rc = cuda_test_open();
    if (rc == 77)
        return 77;
    if (rc)
        return TEST_DONE();
    test_elementwise();
    test_matmul();
    test_rope_attention();
    test_attention_block();
    test_gdn();
    test_moe();
    test_moe_decode();
    test_moe_decode_ties();
    test_argmax();
    cuda_test_close();
    return TEST_DONE();
}
