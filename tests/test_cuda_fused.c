/* tests/test_cuda_fused.c - the GEMV epilogue fusions of the CUDA backend
 * (ops.h matmul_swiglu and matmul_add_rmsnorm; docs/CUDA.md "Decode round
 * 4") against the unfused CUDA chain they replace (matmul_n + swiglu,
 * matmul + add_rmsnorm / add) and against the CPU reference, on odd shapes:
 * rows not a multiple of 8, widths 1024 / 2048 / 4096 and an odd one,
 * T = 1, 2, 3, bf16 and f32 weights. Every output is poisoned (NaN) before
 * the fused call. Shapes the fused path can't take must be declined.
 *
 * Without a CUDA device it prints "skipped: no CUDA device" and returns 77.
 */
#include "cuda_test_util.h"

#include <stdio.h>

#define TOL_REF 2e-5f  /* against the CPU reference: other dot-product order */
#define TOL_NORM 1e-6f /* against the CUDA chain: only the norm's sum order differs */

static float *dnan(size_t n) {
    float *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = dput(h, n * sizeof *h);
    free(h);
    return d;
}

static const char *dtn(dr_dtype dt) { return dt == DR_DT_BF16 ? "bf16" : "f32"; }

/* ---- matmul_swiglu ---- */

static void t_swiglu(int d, int n, int T, dr_dtype dt) {
    dr_tensor g, u;
    void *hg, *hu;
    hg = rand_weight(&g, "gate", dt, d, n);
    hu = rand_weight(&u, "up", dt, d, n);
    const size_t nx = (size_t)T * n, ny = (size_t)T * d;
    float *x = rnd(nx, 1.0f), *dx = dput(x, nx * 4);
    /* CPU reference */
    float *ga = malloc(ny * 4), *ub = malloc(ny * 4), *ref = malloc(ny * 4);
    C->matmul(NULL, ga, x, &g, T);
    C->matmul(NULL, ub, x, &u, T);
    C->swiglu(NULL, ref, ga, ub, ny);
    /* the unfused CUDA chain */
    float *da = G->alloc(G->ctx, ny * 4), *db = G->alloc(G->ctx, ny * 4);
    float *const ys[2] = {da, db};
    const dr_tensor *const ws[2] = {&g, &u};
    G->matmul_n(G->ctx, 2, ys, dx, ws, T);
    G->swiglu(G->ctx, da, da, db, ny);
    /* fused */
    float *dout = dnan(ny);
    const bool took = G->matmul_swiglu(G->ctx, dout, dx, &g, &u, T, NULL, 0.0f);
    CHECK(took, "matmul_swiglu [%d, %d] %s T=%d: declined", d, n, dtn(dt), T);
    float *chain = dget(da, ny), *fused = dget(dout, ny);
    REPORT(rel_err(fused, chain, ny), 0.0f, "matmul_swiglu [%d, %d] %s T=%d vs CUDA chain (exact)", d, n, dtn(dt), T);
    REPORT(rel_err(fused, ref, ny), TOL_REF, "matmul_swiglu [%d, %d] %s T=%d vs CPU", d, n, dtn(dt), T);
    free(x), free(ga), free(ub), free(ref), free(chain), free(fused), free(hg), free(hu);
    G->free(G->ctx, dx), G->free(G->ctx, da), G->free(G->ctx, db), G->free(G->ctx, dout);
    G->weight_free(G->ctx, &g), G->weight_free(G->ctx, &u);
}

/* ---- matmul_add_rmsnorm ---- */

static void t_add_norm(int d, int n, int T, dr_dtype dt, bool with_gain) {
    dr_tensor w;
    void *hw;
    hw = rand_weight(&w, "down", dt, d, n);
    const size_t na = (size_t)T * n, nx = (size_t)T * d;
    const float eps = 1e-6f;
    float *a = rnd(na, 1.0f), *x = rnd(nx, 4.0f), *gain = rnd(d, 1.0f);
    float *da = dput(a, na * 4), *dg = dput(gain, d * 4);
    /* CPU reference */
    float *y = malloc(nx * 4), *xr = hcopy(x, nx), *xnr = malloc(nx * 4);
    C->matmul(NULL, y, a, &w, T);
    C->add(NULL, xr, y, nx);
    C->rmsnorm(NULL, xnr, xr, gain, T, d, eps);
    /* the unfused CUDA chain */
    float *dx1 = dput(x, nx * 4), *dy = G->alloc(G->ctx, nx * 4), *dxn1 = dnan(nx);
    G->matmul(G->ctx, dy, da, &w, T);
    if (with_gain)
        G->add_rmsnorm(G->ctx, dx1, dy, dxn1, dg, T, d, eps);
    else
        G->add(G->ctx, dx1, dy, nx);
    /* fused, twice on the same inputs: the arrival counter must be back at 0 */
    float *dx2 = dput(x, nx * 4), *dxn2 = dnan(nx);
    float *fx[2] = {NULL, NULL}, *fxn[2] = {NULL, NULL};
    for (int rep = 0; rep < 2; rep++) {
        G->upload(G->ctx, dx2, x, nx * 4);
        const bool took = G->matmul_add_rmsnorm(G->ctx, dx2, dxn2, da, &w, with_gain ? dg : NULL, T, eps);
        CHECK(took, "matmul_add_rmsnorm [%d, %d] %s T=%d: declined", d, n, dtn(dt), T);
        fx[rep] = dget(dx2, nx);
        fxn[rep] = dget(dxn2, nx);
    }
    float *cx = dget(dx1, nx), *cxn = dget(dxn1, nx);
    const char *g = with_gain ? "" : ", no gain";
    REPORT(rel_err(fx[0], cx, nx), 0.0f, "matmul_add_rmsnorm [%d, %d] %s T=%d%s: x vs CUDA chain (exact)", d, n,
           dtn(dt), T, g);
    REPORT(rel_err(fx[0], xr, nx), TOL_REF, "matmul_add_rmsnorm [%d, %d] %s T=%d%s: x vs CPU", d, n, dtn(dt), T, g);
    if (with_gain) {
        REPORT(rel_err(fxn[0], cxn, nx), TOL_NORM, "matmul_add_rmsnorm [%d, %d] %s T=%d: xn vs CUDA chain", d, n,
               dtn(dt), T);
        REPORT(rel_err(fxn[0], xnr, nx), TOL_REF, "matmul_add_rmsnorm [%d, %d] %s T=%d: xn vs CPU", d, n, dtn(dt), T);
        REPORT(rel_err(fxn[1], fxn[0], nx), 0.0f, "matmul_add_rmsnorm [%d, %d] %s T=%d: xn, second launch (same)", d,
               n, dtn(dt), T);
    }
    free(a), free(x), free(gain), free(y), free(xr), free(xnr), free(cx), free(cxn), free(hw);
    for (int rep = 0; rep < 2; rep++)
        free(fx[rep]), free(fxn[rep]);
    void *bufs[] = {da, dg, dx1, dy, dxn1, dx2, dxn2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        G->free(G->ctx, bufs[i]);
    G->weight_free(G->ctx, &w);
}

/* ---- rmsnorm_matmul_n (session 5) ---- */

/* ys[i] = RMSNorm(x; gain) W_i^T for nw matrices of width n with the given
 * row counts, against the CUDA chain rmsnorm + matmul_n and the CPU. Only
 * the norm's sum order differs from the chain (the block's 256 threads
 * against rmsnorm's count), so the two agree to ~1e-7. */
static void t_norm_n(int nw, const int *d, int n, dr_dtype dt) {
    dr_tensor w[4];
    void *hw[4];
    float *dy[4], *dc[4], *ref[4];
    const float eps = 1e-6f;
    float *x = rnd((size_t)n, 3.0f), *gain = rnd((size_t)n, 1.0f), *xn = malloc((size_t)n * 4);
    float *dx = dput(x, (size_t)n * 4), *dg = dput(gain, (size_t)n * 4), *dxn = dnan((size_t)n);
    C->rmsnorm(NULL, xn, x, gain, 1, n, eps);
    const dr_tensor *ws[4];
    for (int i = 0; i < nw; i++) {
        hw[i] = rand_weight(&w[i], "proj", dt, d[i], n);
        ws[i] = &w[i];
        ref[i] = malloc((size_t)d[i] * 4);
        C->matmul(NULL, ref[i], xn, &w[i], 1);
        dy[i] = dnan((size_t)d[i]);
        dc[i] = dnan((size_t)d[i]);
    }
    G->rmsnorm(G->ctx, dxn, dx, dg, 1, n, eps);
    G->matmul_n(G->ctx, nw, dc, dxn, ws, 1);
    const bool took = G->rmsnorm_matmul_n(G->ctx, nw, dy, dx, dg, eps, ws, 1);
    CHECK(took, "rmsnorm_matmul_n %d x [%d.., %d] %s: declined", nw, d[0], n, dtn(dt));
    for (int i = 0; i < nw; i++) {
        float *got = dget(dy[i], (size_t)d[i]), *chain = dget(dc[i], (size_t)d[i]);
        REPORT(rel_err(got, chain, (size_t)d[i]), TOL_NORM, "rmsnorm_matmul_n %d/%d [%d, %d] %s vs CUDA chain", i + 1,
               nw, d[i], n, dtn(dt));
        REPORT(rel_err(got, ref[i], (size_t)d[i]), TOL_REF, "rmsnorm_matmul_n %d/%d [%d, %d] %s vs CPU", i + 1, nw,
               d[i], n, dtn(dt));
        free(got), free(chain), free(ref[i]), free(hw[i]);
        G->free(G->ctx, dy[i]), G->free(G->ctx, dc[i]);
        G->weight_free(G->ctx, &w[i]);
    }
    float *xa = dget(dx, (size_t)n);
    REPORT(rel_err(xa, x, (size_t)n), 0.0f, "rmsnorm_matmul_n [%d] %s: x left as it was", n, dtn(dt));
    free(xa), free(x), free(gain), free(xn);
    G->free(G->ctx, dx), G->free(G->ctx, dg), G->free(G->ctx, dxn);
}

/* matmul_swiglu with a gain: silu(RMSNorm(x) gate^T) * (RMSNorm(x) up^T)
 * for one token, against rmsnorm + matmul_swiglu on the GPU and the CPU. */
static void t_swiglu_norm(int d, int n, dr_dtype dt) {
    dr_tensor g, u;
    void *hg = rand_weight(&g, "gate", dt, d, n), *hu = rand_weight(&u, "up", dt, d, n);
    const float eps = 1e-6f;
    float *x = rnd((size_t)n, 3.0f), *gain = rnd((size_t)n, 1.0f), *xn = malloc((size_t)n * 4);
    float *ga = malloc((size_t)d * 4), *ub = malloc((size_t)d * 4), *ref = malloc((size_t)d * 4);
    C->rmsnorm(NULL, xn, x, gain, 1, n, eps);
    C->matmul(NULL, ga, xn, &g, 1);
    C->matmul(NULL, ub, xn, &u, 1);
    C->swiglu(NULL, ref, ga, ub, (size_t)d);
    float *dx = dput(x, (size_t)n * 4), *dg = dput(gain, (size_t)n * 4), *dxn = dnan((size_t)n);
    float *dc = dnan((size_t)d), *dy = dnan((size_t)d);
    G->rmsnorm(G->ctx, dxn, dx, dg, 1, n, eps);
    G->matmul_swiglu(G->ctx, dc, dxn, &g, &u, 1, NULL, 0.0f);
    const bool took = G->matmul_swiglu(G->ctx, dy, dx, &g, &u, 1, dg, eps);
    CHECK(took, "matmul_swiglu with a gain [%d, %d] %s: declined", d, n, dtn(dt));
    float *got = dget(dy, (size_t)d), *chain = dget(dc, (size_t)d), *xa = dget(dx, (size_t)n);
    REPORT(rel_err(got, chain, (size_t)d), TOL_NORM, "matmul_swiglu with a gain [%d, %d] %s vs CUDA chain", d, n,
           dtn(dt));
    REPORT(rel_err(got, ref, (size_t)d), TOL_REF, "matmul_swiglu with a gain [%d, %d] %s vs CPU", d, n, dtn(dt));
    REPORT(rel_err(xa, x, (size_t)n), 0.0f, "matmul_swiglu with a gain [%d, %d] %s: x left as it was", d, n, dtn(dt));
    free(x), free(gain), free(xn), free(ga), free(ub), free(ref), free(got), free(chain), free(xa), free(hg), free(hu);
    void *bufs[] = {dx, dg, dxn, dc, dy};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        G->free(G->ctx, bufs[i]);
    G->weight_free(G->ctx, &g), G->weight_free(G->ctx, &u);
}

/* shapes the fused kernels do not take: declined, nothing queued */
static void t_declines(void) {
    dr_tensor w, w2;
    void *hw, *hw2;
    hw = rand_weight(&w, "odd", DR_DT_BF16, 40, 1031); /* width not a multiple of 8 */
    hw2 = rand_weight(&w2, "wide", DR_DT_BF16, 40, 1032);
    float *dx = G->alloc(G->ctx, (size_t)9 * 1032 * 4), *dy = G->alloc(G->ctx, (size_t)9 * 40 * 4);
    CHECK_SHOW(!G->matmul_swiglu(G->ctx, dy, dx, &w, &w, 1, NULL, 0.0f), "matmul_swiglu declines width 1031");
    CHECK_SHOW(!G->matmul_add_rmsnorm(G->ctx, dy, dy, dx, &w, NULL, 1, 1e-6f), "matmul_add_rmsnorm declines width 1031");
    CHECK_SHOW(!G->matmul_swiglu(G->ctx, dy, dx, &w2, &w2, 9, NULL, 0.0f), "matmul_swiglu declines T = 9");
    CHECK_SHOW(!G->matmul_swiglu(G->ctx, dy, dx, &w2, &w, 1, NULL, 0.0f), "matmul_swiglu declines gate/up of other widths");
    CHECK_SHOW(!G->matmul_swiglu(G->ctx, dy, dx, &w2, &w2, 2, dx, 1e-6f), "matmul_swiglu with a gain declines T = 2");
    float *const ys[2] = {dy, dy};
    const dr_tensor *const ow[1] = {&w}, *const tw[1] = {&w2}, *const mixed[2] = {&w2, &w};
    CHECK_SHOW(!G->rmsnorm_matmul_n(G->ctx, 1, ys, dx, dx, 1e-6f, ow, 1), "rmsnorm_matmul_n declines width 1031");
    CHECK_SHOW(!G->rmsnorm_matmul_n(G->ctx, 1, ys, dx, dx, 1e-6f, tw, 2), "rmsnorm_matmul_n declines T = 2");
    CHECK_SHOW(!G->rmsnorm_matmul_n(G->ctx, 2, ys, dx, dx, 1e-6f, mixed, 1), "rmsnorm_matmul_n declines other widths");
    dr_tensor w3;
    void *hw3 = rand_weight(&w3, "too wide", DR_DT_BF16, 8, 6152);
    float *dxw = G->alloc(G->ctx, (size_t)6152 * 4);
    const dr_tensor *const ww[1] = {&w3};
    CHECK_SHOW(!G->rmsnorm_matmul_n(G->ctx, 1, ys, dxw, dxw, 1e-6f, ww, 1), "rmsnorm_matmul_n declines width 6152");
    CHECK_SHOW(!G->matmul_swiglu(G->ctx, dy, dxw, &w3, &w3, 1, dxw, 1e-6f), "matmul_swiglu with a gain declines width 6152");
    G->free(G->ctx, dxw);
    G->weight_free(G->ctx, &w3);
    free(hw3);
    G->free(G->ctx, dx), G->free(G->ctx, dy);
    G->weight_free(G->ctx, &w), G->weight_free(G->ctx, &w2);
    free(hw), free(hw2);
}

int main(void) {
    int rc = cuda_test_open();
    if (rc == 77)
        return 77;
    if (rc)
        return TEST_DONE();
    if (!G->matmul_swiglu || !G->matmul_add_rmsnorm || !G->rmsnorm_matmul_n) {
        CHECK(0, "the CUDA backend has no fused GEMV slots");
        return TEST_DONE();
    }
    const char *fe = getenv("DR_CUDA_FUSE");
    if (fe && fe[0] != '3') { /* the slots decline by design: nothing to compare */
        printf("skipped: DR_CUDA_FUSE=%s\n", fe);
        cuda_test_close();
        return 77;
    }
    const int ns[4] = {1024, 2048, 4096, 1032}, ds[3] = {1003, 4100, 2053}, Ts[3] = {1, 2, 3};
    const dr_dtype dts[2] = {DR_DT_BF16, DR_DT_F32};
    for (int ti = 0; ti < 3; ti++)
        for (int di = 0; di < 2; di++)
            for (int ni = 0; ni < 4; ni++) {
                const int n = ns[ni], d = ds[(ni + ti) % 3];
                t_swiglu(d, n, Ts[ti], dts[di]);
                t_add_norm(d, n, Ts[ti], dts[di], true);
            }
    /* 4 rows per warp (many rows; H100: 132 SMs), the add alone, and T up to 8 */
    t_swiglu(9000, 1024, 1, DR_DT_BF16);
    t_add_norm(9000, 1024, 2, DR_DT_BF16, true);
    t_add_norm(5000, 1024, 1, DR_DT_BF16, true); /* 2 rows per warp on 132 SMs */
    t_add_norm(1003, 2048, 1, DR_DT_BF16, false);
    t_add_norm(700, 6144, 1, DR_DT_BF16, true); /* wide inputs, one token */
    t_add_norm(300, 6152, 1, DR_DT_BF16, true);
    t_add_norm(517, 1024, 8, DR_DT_F32, true);
    t_swiglu(517, 1024, 7, DR_DT_F32);
    /* the GDN input projections of the 0.8B / 35B-A3B shapes (odd row counts), one matrix of 1, 2 and 4
       rows per warp (132 SMs; 4000 rows: 1 a warp, doubled to 2 to make the grid one wave, as the 0.8B's 8224
       rows go from 2 to 4), f32 weights, widths of 520 and 1032 */
    const int gdn08[4] = {6144, 2048, 16, 16}, gdn35[4] = {8192, 4096, 32, 32}, one[1] = {9000}, two[1] = {5000},
              wave[1] = {4000};
    const int odd[3] = {1003, 77, 5}, att[3] = {4096, 512, 512};
    const char *ni = getenv("DR_CUDA_NORM_IN");
    if (ni && ni[0] == '0') { /* declined by design: nothing to compare */
        printf("skipped: rmsnorm_matmul_n, DR_CUDA_NORM_IN=0\n");
        t_declines();
        cuda_test_close();
        return TEST_DONE();
    }
    t_norm_n(4, gdn08, 1024, DR_DT_BF16);
    t_norm_n(4, gdn35, 2048, DR_DT_BF16);
    t_norm_n(3, att, 4096, DR_DT_BF16);
    t_norm_n(1, one, 1024, DR_DT_BF16);
    t_norm_n(1, two, 1024, DR_DT_BF16);
    t_norm_n(1, wave, 1024, DR_DT_BF16);
    t_norm_n(3, odd, 1032, DR_DT_F32);
    t_norm_n(3, odd, 520, DR_DT_BF16);
    t_norm_n(2, att, 6144, DR_DT_BF16); /* the widest x taken */
    if (!ni || ni[0] != '2') { /* DR_CUDA_NORM_IN=2: the input projections only */
        t_swiglu_norm(3584, 1024, DR_DT_BF16);  /* the 0.8B FFN: one row per warp */
        t_swiglu_norm(12288, 4096, DR_DT_BF16); /* the 9B FFN: two per warp (H100) */
        t_swiglu_norm(6144, 2048, DR_DT_BF16);  /* the 2B FFN: one per warp (a pair within two load batches) */
        t_swiglu_norm(517, 1032, DR_DT_F32);
        t_swiglu_norm(77, 6144, DR_DT_BF16);
    }
    t_declines();
    cuda_test_close();
    return TEST_DONE();
}
