/* tests/test_cuda_quant.c - MLX affine 4/8-bit weights on the CUDA backend
 * (ops/cuda/quant.cu) against the CPU reference table, slot by slot, then
 * whole quantized fixtures against the CPU backend.
 *
 * Slot errors are max |gpu - cpu| / max |cpu|, printed beside the tolerance:
 *  - GEMV (T <= 32, dequantized in registers, fp32 sums in another order):
 *    2e-5, fp32 reordering like test_cuda;
 *  - prefill (T > 32: weights dequantized to bf16 hi + lo, x split the same
 *    way, three bf16 GEMMs accumulating in fp32; each operand carries a
 *    relative error below 2^-17): 5e-5;
 *  - embedding (scale * q then + bias, rounded as the CPU): 1e-6;
 *  - the 4-bit GEMV's decode epilogues (RMSNorm folded in, residual add,
 *    SwiGLU pairs): 2e-5, as the GEMV.
 * Fixtures (dense-f32, moe-bf16, moe-bf16-fused converted to q4 g64 and q8 g32
 * by dr_quant_convert): prompt logits (prefill path) and 12 greedy steps
 * (decode path, CUDA graphs) within 1e-3 of the CPU backend, tokens identical.
 * Without a CUDA device it prints "skipped: no CUDA device" and returns 77.
 */
#define CUDA_TEST_SEED 0x853c49e6748fea9bull
#include "cuda_test_util.h"
#include "deltarun.h"
#include "quant/convert.h"
#include "quant/quant.h"
#include "rm_dir.h"
#include "test.h"

#include <dirent.h>
#include <unistd.h>

#define TOL_GEMV 2e-5f
#define TOL_GEMM 5e-5f
#define TOL_EMBED 1e-6f
#define TOL_LOGIT 1e-3f

static const dr_dtype SB[3] = {DR_DT_BF16, DR_DT_F16, DR_DT_F32};

/* A quantized [d, n] matrix uploaded to G; *own frees the host block. */
static dr_tensor qmat(int d, int n, int bits, int gs, dr_dtype sb, void **own, float **src_out) {
    float *src = rnd((size_t)d * n, 1.0f / sqrtf((float)n));
    dr_tensor s = {.name = "w", .dtype = DR_DT_F32, .ndim = 2, .ne = {d, n}, .data = src};
    dr_tensor q;
    dr_quant_opts o = {.bits = bits, .group_size = gs, .sb_dtype = sb, .n_threads = 1};
    CHECK(dr_quantize_ex(&s, &o, &q, own) == DR_OK, "quantize: %s", dr_last_error());
    CHECK(G->weight_upload(G->ctx, &q) == DR_OK, "upload: %s", dr_last_error());
    if (src_out)
        *src_out = src;
    else
        free(src);
    return q;
}

static void qfree(dr_tensor *q, void *own) {
    G->weight_free(G->ctx, q);
    free(own);
}

/* ---- matmul: GEMV T = 1..8, blocked GEMV, prefill GEMMs ---- */

static void check_mm(const dr_tensor *q, int T, const char *what) {
    const int d = (int)q->ne[0], n = (int)q->ne[1];
    float *x = rnd((size_t)T * n, 2.0f), *y = malloc((size_t)T * d * sizeof *y);
    float *dx = dput(x, (size_t)T * n * 4), *dy = G->alloc(G->ctx, (size_t)T * d * 4);
    C->matmul(NULL, y, x, q, T);
    G->matmul(G->ctx, dy, dx, q, T);
    float *got = dget(dy, (size_t)T * d);
    REPORT(rel_err(got, y, (size_t)T * d), T > 32 ? TOL_GEMM : TOL_GEMV, "matmul %s T=%d", what, T);
    free(got), free(x), free(y);
    G->free(G->ctx, dx), G->free(G->ctx, dy);
}

static void test_matmul(void) {
    const int Ts[] = {1, 2, 3, 4, 5, 6, 7, 8, 20, 40};
    const int shapes[][2] = {{67, 384}, {333, 1024}, {45, 4096}, {4099, 256}, {12289, 128}}; /* 1, 2, 4 rows per warp */
    int c = 0;
    for (int bits = 4; bits <= 8; bits += 4)
        for (int gs = 32; gs <= 128; gs *= 2)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++, c++) {
                const dr_dtype sb = SB[c % 3];
                void *own = NULL;
                dr_tensor q = qmat(shapes[si][0], shapes[si][1], bits, gs, sb, &own, NULL);
                char what[96];
                snprintf(what, sizeof what, "q%d g%d %s [%d, %d]", bits, gs, dr_dtype_name(sb), shapes[si][0],
                         shapes[si][1]);
                for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
                    if (si < 3 || Ts[ti] <= 2 || Ts[ti] == 40) /* big shapes: decode and prefill only */
                        check_mm(&q, Ts[ti], what);
                qfree(&q, own);
            }
    /* edge cases of the tensor-core GEMVs: rows a multiple of 16 with 4 warps
       per tile ([48, 2048] q4 g128), rows whose piece count is not a
       multiple of 4 (n = 160: the FMA kernel of the file layout; padded to
       256 / 128 values in the repacked one), and for the repacked layout:
       a tile and a row (17 rows: 8 warps per tile), x of T = 8 over the
       shared memory (n = 32768: tokens in blocks of 4), 8-bit with 12288
       values, 8-bit g128 */
    const int ex[][4] = {{48, 2048, 4, 128}, {48, 2048, 8, 64}, {50, 160, 4, 32},   {50, 160, 8, 32},
                         {17, 4096, 4, 64},  {16, 32768, 4, 128}, {40, 12288, 8, 32}, {31, 2048, 8, 128}};
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++, c++) {
        void *own = NULL;
        dr_tensor q = qmat(ex[i][0], ex[i][1], ex[i][2], ex[i][3], SB[c % 3], &own, NULL);
        char what[96];
        snprintf(what, sizeof what, "q%d g%d %s [%d, %d]", ex[i][2], ex[i][3], dr_dtype_name(SB[c % 3]), ex[i][0],
                 ex[i][1]);
        for (int T = 1; T <= 8; T++)
            check_mm(&q, T, what);
        qfree(&q, own);
    }
}

/* matmul_n: three quantized matrices of one layout (one launch), and a mix
 * of quantized and bf16 (one product each), decode and prefill. */
static void test_matmul_n(void) {
    const int n = 512, ds[3] = {129, 64, 31};
    void *own[3];
    dr_tensor q[3];
    for (int i = 0; i < 3; i++)
        q[i] = qmat(ds[i], n, 4, 64, DR_DT_BF16, &own[i], NULL);
    /* a bf16 matrix [40, n] for the mixed set */
    uint16_t *wb = malloc((size_t)40 * n * 2);
    for (size_t i = 0; i < (size_t)40 * n; i++) {
        float f = frand() * 0.05f;
        uint32_t u;
        memcpy(&u, &f, 4);
        wb[i] = (uint16_t)(u >> 16);
    }
    dr_tensor b = {.name = "wb", .dtype = DR_DT_BF16, .ndim = 2, .ne = {40, n}, .data = wb};
    CHECK(G->weight_upload(G->ctx, &b) == DR_OK, "upload bf16: %s", dr_last_error());
    const int Ts[] = {1, 5, 48};
    for (int mix = 0; mix < 2; mix++)
        for (size_t ti = 0; ti < 3; ti++) {
            const int T = Ts[ti];
            const dr_tensor *ws[3] = {&q[0], mix ? &b : &q[1], &q[2]};
            float *x = rnd((size_t)T * n, 1.0f), *dx = dput(x, (size_t)T * n * 4);
            float *ys[3], *dys[3];
            for (int i = 0; i < 3; i++) {
                const int d = (int)ws[i]->ne[0];
                ys[i] = malloc((size_t)T * d * 4);
                dys[i] = G->alloc(G->ctx, (size_t)T * d * 4);
                C->matmul(NULL, ys[i], x, ws[i], T);
            }
            G->matmul_n(G->ctx, 3, dys, dx, ws, T);
            float e = 0.0f;
            for (int i = 0; i < 3; i++) {
                float *got = dget(dys[i], (size_t)T * ws[i]->ne[0]);
                float ei = rel_err(got, ys[i], (size_t)T * ws[i]->ne[0]);
                e = ei > e ? ei : e;
                free(got), free(ys[i]);
                G->free(G->ctx, dys[i]);
            }
            REPORT(e, T > 32 ? TOL_GEMM : TOL_GEMV, "matmul_n %s T=%d", mix ? "q4 + bf16 mixed" : "3 x q4 g64", T);
            free(x);
            G->free(G->ctx, dx);
        }
    for (int i = 0; i < 3; i++)
        qfree(&q[i], own[i]);
    G->weight_free(G->ctx, &b);
    free(wb);
}

/* ---- the 4-bit GEMV's decode epilogues: the norm folded in, the residual add ---- */

/* ys[i] = RMSNorm(x; gain) W_i^T for sets of 1-4 4-bit matrices (rows not a
 * multiple of 16; rows of 4096 and 8192 values: both warp shapes), against
 * the CPU's rmsnorm then matmul; and the cases it must decline. */
static void test_norm_in(void) {
    const int ds[4] = {129, 64, 31, 16}, ns[3] = {256, 4096, 8192}, gss[3] = {32, 64, 128};
    const float eps = 1e-6f;
    for (int c = 0; c < 3; c++) {
        const int n = ns[c], gs = gss[c], nw = c + 2 > 4 ? 4 : c + 2;
        const dr_dtype sb = c == 1 ? DR_DT_F16 : DR_DT_BF16;
        void *own[4];
        dr_tensor q[4];
        const dr_tensor *ws[4];
        for (int i = 0; i < nw; i++)
            q[i] = qmat(ds[i], n, 4, gs, sb, &own[i], NULL), ws[i] = &q[i];
        float *x = rnd(n, 3.0f), *g = rnd(n, 1.0f), *xn = malloc((size_t)n * 4);
        float *dx = dput(x, (size_t)n * 4), *dg = dput(g, (size_t)n * 4), *ys[4], *dys[4];
        C->rmsnorm(NULL, xn, x, g, 1, n, eps);
        for (int i = 0; i < nw; i++) {
            ys[i] = malloc((size_t)ds[i] * 4);
            dys[i] = G->alloc(G->ctx, (size_t)ds[i] * 4);
            C->matmul(NULL, ys[i], xn, ws[i], 1);
        }
        const bool took = G->rmsnorm_matmul_n(G->ctx, nw, dys, dx, dg, eps, ws, 1);
        CHECK(took, "rmsnorm_matmul_n %d x q4 g%d [*, %d]: taken", nw, gs, n);
        float e = 0.0f;
        for (int i = 0; took && i < nw; i++) {
            float *got = dget(dys[i], (size_t)ds[i]);
            const float ei = rel_err(got, ys[i], (size_t)ds[i]);
            e = ei > e ? ei : e;
            free(got);
        }
        if (took)
            REPORT(e, TOL_GEMV, "rmsnorm_matmul_n %d x q4 g%d %s [*, %d]", nw, gs, dr_dtype_name(sb), n);
        for (int i = 0; i < nw; i++)
            free(ys[i]), G->free(G->ctx, dys[i]), qfree(&q[i], own[i]);
        free(x), free(g), free(xn);
        G->free(G->ctx, dx), G->free(G->ctx, dg);
    }
    /* declined, nothing queued: 8-bit, f32 scales, two tokens */
    const struct {
        int bits;
        dr_dtype sb;
        int T;
    } no[3] = {{8, DR_DT_BF16, 1}, {4, DR_DT_F32, 1}, {4, DR_DT_BF16, 2}};
    for (int i = 0; i < 3; i++) {
        void *own = NULL;
        dr_tensor q = qmat(64, 256, no[i].bits, 64, no[i].sb, &own, NULL);
        const dr_tensor *ws[1] = {&q};
        float *dx = G->alloc(G->ctx, 2 * 256 * 4), *dg = G->alloc(G->ctx, 256 * 4), *dy = G->alloc(G->ctx, 2 * 64 * 4);
        CHECK(!G->rmsnorm_matmul_n(G->ctx, 1, &dy, dx, dg, 1e-6f, ws, no[i].T),
              "rmsnorm_matmul_n declines q%d %s T=%d", no[i].bits, dr_dtype_name(no[i].sb), no[i].T);
        G->free(G->ctx, dx), G->free(G->ctx, dg), G->free(G->ctx, dy);
        qfree(&q, own);
    }
}

/* x += a W^T (matmul_add_rmsnorm without a gain) for one token on 4-bit W,
 * against the CPU's matmul then add; with a gain it declines. */
static void test_matmul_add(void) {
    const int shapes[3][3] = {{4096, 1024, 64}, {1000, 12288, 128}, {31, 256, 32}}; /* d, n, gs */
    for (int c = 0; c < 3; c++) {
        const int d = shapes[c][0], n = shapes[c][1];
        void *own = NULL;
        dr_tensor q = qmat(d, n, 4, shapes[c][2], c == 2 ? DR_DT_F16 : DR_DT_BF16, &own, NULL);
        float *a = rnd(n, 2.0f), *x = rnd(d, 1.0f), *y = malloc((size_t)d * 4);
        float *da = dput(a, (size_t)n * 4), *dx = dput(x, (size_t)d * 4), *dg = G->alloc(G->ctx, (size_t)d * 4);
        C->matmul(NULL, y, a, &q, 1);
        for (int i = 0; i < d; i++)
            y[i] += x[i];
        CHECK(!G->matmul_add_rmsnorm(G->ctx, dx, dg, da, &q, dg, 1, 1e-6f),
              "matmul_add_rmsnorm q4 with a gain declines");
        const bool took = G->matmul_add_rmsnorm(G->ctx, dx, NULL, da, &q, NULL, 1, 0.0f);
        CHECK(took, "matmul_add_rmsnorm q4 g%d [%d, %d]: taken", shapes[c][2], d, n);
        if (took) {
            float *got = dget(dx, (size_t)d);
            REPORT(rel_err(got, y, (size_t)d), TOL_GEMV, "matmul_add q4 g%d [%d, %d]", shapes[c][2], d, n);
            free(got);
        }
        free(a), free(x), free(y);
        G->free(G->ctx, da), G->free(G->ctx, dx), G->free(G->ctx, dg);
        qfree(&q, own);
    }
}

/* out = silu(gate xn) * (up xn) for one token on 4-bit gate / up, xn =
 * RMSNorm(x; gain) or x (matmul_swiglu; both warp shapes, rows not a
 * multiple of the pair), against the CPU; and the declines. */
static void test_swiglu(void) {
    const int shapes[3][3] = {{3584, 1024, 64}, {1001, 4096, 32}, {37, 8192, 128}}; /* d, n, gs */
    const float eps = 1e-6f;
    for (int c = 0; c < 3; c++)
        for (int with_gain = 0; with_gain < 2; with_gain++) {
            const int d = shapes[c][0], n = shapes[c][1];
            const dr_dtype sb = c == 1 ? DR_DT_F16 : DR_DT_BF16;
            void *og = NULL, *ou = NULL;
            dr_tensor g = qmat(d, n, 4, shapes[c][2], sb, &og, NULL), u = qmat(d, n, 4, shapes[c][2], sb, &ou, NULL);
            float *x = rnd(n, 3.0f), *gn = rnd(n, 1.0f), *xn = malloc((size_t)n * 4);
            float *yg = malloc((size_t)d * 4), *yu = malloc((size_t)d * 4);
            float *dx = dput(x, (size_t)n * 4), *dg = dput(gn, (size_t)n * 4), *dy = G->alloc(G->ctx, (size_t)d * 4);
            if (with_gain)
                C->rmsnorm(NULL, xn, x, gn, 1, n, eps);
            else
                memcpy(xn, x, (size_t)n * 4);
            C->matmul(NULL, yg, xn, &g, 1);
            C->matmul(NULL, yu, xn, &u, 1);
            for (int i = 0; i < d; i++)
                yg[i] = yg[i] / (1.0f + expf(-yg[i])) * yu[i];
            const bool took = G->matmul_swiglu(G->ctx, dy, dx, &g, &u, 1, with_gain ? dg : NULL, eps);
            CHECK(took, "matmul_swiglu q4 g%d [%d, %d]%s: taken", shapes[c][2], d, n, with_gain ? " with a gain" : "");
            if (took) {
                float *got = dget(dy, (size_t)d);
                REPORT(rel_err(got, yg, (size_t)d), TOL_GEMV, "matmul_swiglu q4 g%d %s [%d, %d]%s", shapes[c][2],
                       dr_dtype_name(sb), d, n, with_gain ? " with a gain" : "");
                free(got);
            }
            free(x), free(gn), free(xn), free(yg), free(yu);
            G->free(G->ctx, dx), G->free(G->ctx, dg), G->free(G->ctx, dy);
            qfree(&g, og), qfree(&u, ou);
        }
    /* declined, nothing queued: 8-bit, two tokens */
    for (int i = 0; i < 2; i++) {
        void *og = NULL, *ou = NULL;
        dr_tensor g = qmat(64, 256, i ? 4 : 8, 64, DR_DT_BF16, &og, NULL);
        dr_tensor u = qmat(64, 256, i ? 4 : 8, 64, DR_DT_BF16, &ou, NULL);
        float *dx = G->alloc(G->ctx, 2 * 256 * 4), *dy = G->alloc(G->ctx, 2 * 64 * 4);
        CHECK(!G->matmul_swiglu(G->ctx, dy, dx, &g, &u, i ? 2 : 1, NULL, 0.0f), "matmul_swiglu declines %s",
              i ? "q4 T=2" : "q8");
        G->free(G->ctx, dx), G->free(G->ctx, dy);
        qfree(&g, og), qfree(&u, ou);
    }
}

/* ---- embedding ---- */

static void test_embed(void) {
    const int V = 97, H = 384, T = 11;
    int c = 0;
    for (int bits = 4; bits <= 8; bits += 4)
        for (int gs = 32; gs <= 128; gs *= 2, c++) {
            void *own = NULL;
            dr_tensor q = qmat(V, H, bits, gs, SB[c % 3], &own, NULL);
            int32_t ids[T];
            for (int t = 0; t < T; t++)
                ids[t] = (t * 37 + 5) % V;
            float *y = malloc((size_t)T * H * 4), *dy = G->alloc(G->ctx, (size_t)T * H * 4);
            C->embed(NULL, y, &q, ids, T);
            G->embed(G->ctx, dy, &q, ids, T);
            float *got = dget(dy, (size_t)T * H);
            REPORT(rel_err(got, y, (size_t)T * H), TOL_EMBED, "embed q%d g%d %s", bits, gs, dr_dtype_name(SB[c % 3]));
            free(got), free(y);
            G->free(G->ctx, dy);
            qfree(&q, own);
        }
}

/* ---- MoE experts: decode kernels (T <= 4) and the grouped prefill ---- */

static void test_moe(void) {
    const int E = 8, H = 256, I = 128, k = 3;
    for (int bits = 4; bits <= 8; bits += 4) {
        const int gs = bits == 4 ? 64 : 128;
        /* one array per bits: the backend caches its expert table by the
           array's address, which must not be reused for other weights */
        static dr_expert exs[2][8];
        dr_expert *ex = exs[bits == 8];
        void *own[8][3];
        for (int e = 0; e < E; e++) {
            ex[e].gate = qmat(I, H, bits, gs, DR_DT_BF16, &own[e][0], NULL);
            ex[e].up = qmat(I, H, bits, gs, DR_DT_BF16, &own[e][1], NULL);
            ex[e].down = qmat(H, I, bits, gs, DR_DT_BF16, &own[e][2], NULL);
        }
        const int Ts[] = {1, 3, 4, 7, 37};
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti];
            float *x = rnd((size_t)T * H, 1.0f), *lg = rnd((size_t)T * E, 3.0f), *y = rnd((size_t)T * H, 0.5f);
            int32_t *idx = malloc((size_t)T * k * 4);
            float *wts = malloc((size_t)T * k * 4), *ws = malloc((size_t)(2 * I + H) * 4);
            C->moe_route(NULL, idx, wts, lg, T, E, k, true);
            float *dx = dput(x, (size_t)T * H * 4), *dy = dput(y, (size_t)T * H * 4);
            int32_t *di = dput(idx, (size_t)T * k * 4);
            float *dw = dput(wts, (size_t)T * k * 4);
            C->moe_experts(NULL, y, x, idx, wts, ex, E, T, k, H, I, ws);
            G->moe_experts(G->ctx, dy, dx, di, dw, ex, E, T, k, H, I, NULL);
            float *got = dget(dy, (size_t)T * H);
            REPORT(rel_err(got, y, (size_t)T * H), T > 32 ? TOL_GEMM : TOL_GEMV, "moe_experts q%d g%d E=%d k=%d T=%d",
                   bits, gs, E, k, T);
            free(got), free(x), free(lg), free(y), free(idx), free(wts), free(ws);
            G->free(G->ctx, dx), G->free(G->ctx, dy), G->free(G->ctx, di), G->free(G->ctx, dw);
        }
        for (int e = 0; e < E; e++) {
            qfree(&ex[e].gate, own[e][0]);
            qfree(&ex[e].up, own[e][1]);
            qfree(&ex[e].down, own[e][2]);
        }
    }
}

/* ---- the fused MoE block of a decode step (moe_decode) ---- */

/* The CPU chain the fused block replaces: router logits, moe_route, the
 * routed experts into y = 0, then (with_sh) the shared expert's gate, up,
 * swiglu, down, sigmoid(scalar gate) scale and add. */
static void moe_block_ref(const dr_expert *ex, const dr_tensor *rw, const dr_tensor *sh, const float *x, int T, int E,
                          int k, int H, int I, bool with_sh, float *lg, int32_t *idx, float *w, float *y) {
    float *ws = malloc((size_t)(2 * I + H) * 4), *g = malloc((size_t)T * I * 4), *u = malloc((size_t)T * I * 4);
    float *o = malloc((size_t)T * H * 4), *s = malloc((size_t)T * 4);
    C->matmul(NULL, lg, x, rw, T);
    C->moe_route(NULL, idx, w, lg, T, E, k, true);
    memset(y, 0, (size_t)T * H * 4);
    C->moe_experts(NULL, y, x, idx, w, ex, E, T, k, H, I, ws);
    if (with_sh) { /* sh: gate, up, down, scalar gate */
        C->matmul(NULL, g, x, &sh[0], T);
        C->matmul(NULL, u, x, &sh[1], T);
        C->swiglu(NULL, g, g, u, (size_t)T * I);
        C->matmul(NULL, o, g, &sh[2], T);
        C->matmul(NULL, s, x, &sh[3], T);
        C->sigmoid_scale_rows(NULL, o, s, T, H);
        C->add(NULL, y, o, (size_t)T * H);
    }
    free(ws), free(g), free(u), free(o), free(s);
}

/* moe_decode on 8/4-bit experts (quant.cu's block: the router GEMV, gate/up
 * with the routing and the shared expert, down with the shared expert and
 * the residual add) against moe_block_ref, T = 1..4, with and without the
 * shared expert (quantized as the experts; its scalar gate f32, or with
 * `gb` the router and the scalar gate at 8 bits, as `deltarun quantize` and
 * mlx-lm write them beside 4-bit experts), y written and added to; the
 * picks must be the CPU's. E = 40 takes the E <= 256
 * routing warp, E = 300 the E <= 512 one. Declined (nothing queued): a
 * shared expert of another width, and everything with DR_CUDA_QMOE_BLOCK=0
 * (the same-run baseline switch). */
static void test_moe_block(void) {
    const char *sw = getenv("DR_CUDA_QMOE_BLOCK");
    const bool off = sw && sw[0] == '0';
    /* bits, gs, E, k, scales (0 bf16, 1 f32, 2 f16), gb (the router's and scalar gate's bits; 0: the
       experts' and f32). Groups of 32, 64 and 128 values; I = 128 pads the down rows to 256 values. */
    const int cfg[][6] = {{4, 64, 40, 6, 0, 0}, {8, 32, 40, 6, 0, 0},  {4, 128, 300, 8, 1, 0},
                          {4, 64, 40, 8, 0, 8}, {4, 32, 40, 6, 2, 0}, {4, 128, 64, 8, 0, 8}};
    const int H = 256, I = 128, ncfg = (int)(sizeof cfg / sizeof cfg[0]);
    for (int c = 0; c < ncfg; c++) {
        const int bits = cfg[c][0], gs = cfg[c][1], E = cfg[c][2], k = cfg[c][3], gb = cfg[c][5];
        const dr_dtype sb = cfg[c][4] == 1 ? DR_DT_F32 : cfg[c][4] == 2 ? DR_DT_F16 : DR_DT_BF16;
        static dr_expert exs[6][300]; /* one array per configuration: the backend caches its table by address */
        dr_expert *ex = exs[c];
        void **own = malloc((size_t)(3 * E + 5) * sizeof *own);
        for (int e = 0; e < E; e++) {
            ex[e].gate = qmat(I, H, bits, gs, sb, &own[3 * e], NULL);
            ex[e].up = qmat(I, H, bits, gs, sb, &own[3 * e + 1], NULL);
            ex[e].down = qmat(H, I, bits, gs, sb, &own[3 * e + 2], NULL);
        }
        dr_tensor rw = qmat(E, H, gb ? gb : bits, gs, sb, &own[3 * E], NULL), sh[4];
        sh[0] = qmat(I, H, bits, gs, sb, &own[3 * E + 1], NULL);
        sh[1] = qmat(I, H, bits, gs, sb, &own[3 * E + 2], NULL);
        sh[2] = qmat(H, I, bits, gs, sb, &own[3 * E + 3], NULL);
        if (gb) {
            sh[3] = qmat(1, H, gb, gs, sb, &own[3 * E + 4], NULL);
        } else {
            own[3 * E + 4] = rnd(H, 0.2f);
            sh[3] = (dr_tensor){.name = "shared_expert_gate", .dtype = DR_DT_F32, .ndim = 2, .ne = {1, H},
                                .data = own[3 * E + 4]};
            CHECK(G->weight_upload(G->ctx, &sh[3]) == DR_OK, "upload: %s", dr_last_error());
        }
        for (int T = 1; T <= 4; T++)
            for (int with_sh = 0; with_sh < 2; with_sh++) {
                float *x = rnd((size_t)T * H, 1.0f), *lg = malloc((size_t)T * E * 4), *w = malloc((size_t)T * k * 4);
                float *y = malloc((size_t)T * H * 4), *junk = rnd((size_t)T * H, 1.0f);
                int32_t *idx = malloc((size_t)T * k * 4), *gi = malloc((size_t)T * k * 4);
                moe_block_ref(ex, &rw, sh, x, T, E, k, H, I, with_sh, lg, idx, w, y);
                float *dx = dput(x, (size_t)T * H * 4), *dy = dput(junk, (size_t)T * H * 4);
                float *dl = G->alloc(G->ctx, (size_t)T * E * 4), *dw = G->alloc(G->ctx, (size_t)T * k * 4);
                float *dsg = G->alloc(G->ctx, (size_t)T * I * 4), *dsu = G->alloc(G->ctx, (size_t)T * I * 4);
                float *dss = G->alloc(G->ctx, (size_t)T * 4);
                int32_t *di = G->alloc(G->ctx, (size_t)T * k * 4);
                const dr_moe_shared shp = {&sh[0], &sh[1], &sh[3], &sh[2], dsg, dsu, dss};
                for (int acc = 0; acc < 2; acc++) {
                    const bool done = G->moe_decode(G->ctx, dy, di, dw, dl, &rw, dx, ex, E, T, k, true, H, I,
                                                    with_sh ? &shp : NULL, acc);
                    CHECK(done == !off, "moe_decode q%d g%d E=%d T=%d shared %d: %s", bits, gs, E, T, with_sh,
                          off ? "declined (DR_CUDA_QMOE_BLOCK=0)" : "taken");
                    if (!done)
                        continue;
                    float *got = dget(dy, (size_t)T * H), *gw = dget(dw, (size_t)T * k), *want = y;
                    if (acc) { /* the second call added to the first's result */
                        want = malloc((size_t)T * H * 4);
                        for (int i = 0; i < T * H; i++)
                            want[i] = 2.0f * y[i];
                    }
                    G->download(G->ctx, gi, di, (size_t)T * k * 4);
                    CHECK_SHOW(!memcmp(gi, idx, (size_t)T * k * 4), "moe_decode q%d E=%d k=%d T=%d: the CPU's picks",
                               bits, E, k, T);
                    REPORT(rel_err(gw, w, (size_t)T * k), TOL_GEMV, "moe_decode q%d E=%d T=%d: routing weights",
                           bits, E, T);
                    REPORT(rel_err(got, want, (size_t)T * H), TOL_GEMV,
                           "moe_decode q%d g%d %s E=%d k=%d T=%d shared %d%s%s", bits, gs, dr_dtype_name(sb), E, k, T,
                           with_sh, acc ? ", added to y" : "", gb ? ", router and scalar gate q8" : "");
                    free(got), free(gw);
                    if (want != y)
                        free(want);
                }
                free(x), free(lg), free(w), free(y), free(junk), free(idx), free(gi);
                G->free(G->ctx, dx), G->free(G->ctx, dy), G->free(G->ctx, dl), G->free(G->ctx, dw);
                G->free(G->ctx, dsg), G->free(G->ctx, dsu), G->free(G->ctx, dss), G->free(G->ctx, di);
            }
        if (c == 0) { /* a shared expert of another width: declined, the op-by-op path runs */
            void *o2 = NULL;
            dr_tensor wide = qmat(2 * I, H, bits, gs, sb, &o2, NULL);
            const dr_moe_shared bad = {&wide, &wide, &sh[3], &sh[2], NULL, NULL, NULL};
            float *dx = G->alloc(G->ctx, (size_t)H * 4), *dy = G->alloc(G->ctx, (size_t)H * 4);
            CHECK(!G->moe_decode(G->ctx, dy, NULL, NULL, NULL, &rw, dx, ex, E, 1, k, true, H, I, &bad, false),
                  "moe_decode q%d: a shared expert of width %d (experts %d) declined", bits, 2 * I, I);
            G->free(G->ctx, dx), G->free(G->ctx, dy);
            qfree(&wide, o2);
        }
        for (int e = 0; e < E; e++) {
            qfree(&ex[e].gate, own[3 * e]);
            qfree(&ex[e].up, own[3 * e + 1]);
            qfree(&ex[e].down, own[3 * e + 2]);
        }
        qfree(&rw, own[3 * E]);
        for (int i = 0; i < 4; i++)
            qfree(&sh[i], own[3 * E + 1 + i]);
        free(own);
    }
}

/* ---- whole models: CUDA against the CPU backend on one quantized copy ---- */

static char g_tmp[256];

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float e = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= e))
            e = isnan(d) ? INFINITY : d;
    }
    return e;
}

static int32_t argmax(const float *v, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

static dr_session *session(dr_model *m) {
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 256;
    dr_session *s = NULL;
    CHECK(dr_session_new(m, &p, &s) == DR_OK, "session: %s", dr_last_error());
    return s;
}

/* Prompt of T tokens (all logits), then `steps` greedy tokens one at a time. */
static void compare_models(dr_model *mc, dr_model *mg, const char *what) {
    const int V = dr_model_info_get(mc)->n_vocab, T = 40, steps = 12;
    int32_t ids[40];
    for (int t = 0; t < T; t++)
        ids[t] = (int32_t)((t * 7919 + 13) % V);
    float *a = malloc((size_t)T * V * 4), *b = malloc((size_t)T * V * 4);
    dr_session *sc = session(mc), *sg = session(mg);
    if (!sc || !sg)
        goto out;
    CHECK(dr_session_eval(sc, ids, T, DR_LOGITS_ALL, a) == DR_OK, "cpu eval: %s", dr_last_error());
    CHECK(dr_session_eval(sg, ids, T, DR_LOGITS_ALL, b) == DR_OK, "cuda eval: %s", dr_last_error());
    CHECK_SHOW(max_abs_diff(b, a, (size_t)T * V) <= TOL_LOGIT, "%s prompt of %d: max |dlogit| %.2e (tol %.0e)", what,
               T, (double)max_abs_diff(b, a, (size_t)T * V), (double)TOL_LOGIT);
    float worst = 0.0f;
    int same = 0;
    int32_t tc = argmax(a + (size_t)(T - 1) * V, V), tg = argmax(b + (size_t)(T - 1) * V, V);
    for (int i = 0; i < steps; i++) {
        if (tc != tg)
            break;
        same++;
        dr_session_eval(sc, &tc, 1, DR_LOGITS_LAST, a);
        dr_session_eval(sg, &tg, 1, DR_LOGITS_LAST, b);
        float e = max_abs_diff(b, a, (size_t)V);
        worst = e > worst ? e : worst;
        tc = argmax(a, V), tg = argmax(b, V);
    }
    CHECK_SHOW(same == steps && worst <= TOL_LOGIT,
               "%s greedy: %d/%d tokens identical, max |dlogit| %.2e per step (tol %.0e)", what, same, steps,
               (double)worst, (double)TOL_LOGIT);
out:
    dr_session_free(sc);
    dr_session_free(sg);
    free(a), free(b);
}

static void test_fixtures(void) {
    const char *fx[] = {"dense-f32", "moe-bf16", "moe-bf16-fused"};
    const int cfg[][2] = {{4, 64}, {8, 32}};
    for (size_t f = 0; f < sizeof fx / sizeof fx[0]; f++)
        for (int c = 0; c < 2; c++) {
            char in[512], out[600], what[128];
            snprintf(in, sizeof in, "%s/%s", DR_TEST_DATA, fx[f]);
            snprintf(out, sizeof out, "%s/%s-q%d", g_tmp, fx[f], cfg[c][0]);
            snprintf(what, sizeof what, "%s q%d g%d", fx[f], cfg[c][0], cfg[c][1]);
            dr_convert_opts o = {.in_dir = in, .out_dir = out, .bits = cfg[c][0], .group_size = cfg[c][1],
                                 .n_threads = 2};
            if (dr_quant_convert(&o, NULL) != DR_OK) {
                CHECK(0, "convert %s: %s", what, dr_last_error());
                continue;
            }
            dr_model *mc = NULL, *mg = NULL;
            dr_model_params pc = dr_model_default_params(), pg = pc;
            pc.device = "cpu";
            pg.device = "cuda";
            CHECK(dr_model_load_ex(out, &pc, &mc) == DR_OK, "load %s on cpu: %s", what, dr_last_error());
            CHECK(dr_model_load_ex(out, &pg, &mg) == DR_OK, "load %s on cuda: %s", what, dr_last_error());
            if (mc && mg)
                compare_models(mc, mg, what);
            dr_model_free(mc);
            dr_model_free(mg);
            rm_dir(out);
        }
}

int main(void) {
    int rc = cuda_test_open();
    if (rc)
        return rc == 77 ? 77 : TEST_DONE();
    test_matmul();
    test_matmul_n();
    test_norm_in();
    test_matmul_add();
    test_swiglu();
    test_embed();
    test_moe();
    test_moe_block();
    cuda_test_close();
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dr_test_cuda_quant_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        printf("cannot create a temporary directory\n");
        return 1;
    }
    test_fixtures();
    rmdir(g_tmp);
    return TEST_DONE();
}
