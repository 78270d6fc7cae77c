/* tests/test_cuda_decode.c - the decode-side CUDA pieces: the fused GDN step
 * (gdn_decode) and kv_store against the CPU reference on odd sizes, and
 * single-token steps replayed from CUDA graphs against the same steps run
 * kernel by kernel, over many steps of a fixture model (crossing the
 * attention capacities 256, 512 and 1024, with a block evaluated in the
 * middle and two sequences interleaved).
 *
 * gdn_decode runs both kernels (the head kernel and, on sm_90, the sliced
 * one) on each shape. DR_TEST_GDN_ONLY=1: only those cases (for the
 * sanitizers).
 *
 * Usage: test_cuda_decode [FIXTURE_DIR]. Without a CUDA device it prints
 * "skipped: no CUDA device" and returns 77 (ctest: skipped).
 */
#include "deltarun.h"
#include "ops/cuda/cuda_ops.h"
#include "cuda_test_util.h"
#include "golden_util.h"
#include "ops/ops.h"
#include "test.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TOL 2e-5f
#define GDN_TOL 1e-4f
#define GRAPH_TOL 1e-4f /* graph vs kernel-by-kernel logits: only the attention split differs */


/* ---- gdn_decode: the fused step against the CPU chain, several steps ---- */

/* gdn_decode.cu's test hooks: the kernel choice as DR_CUDA_GDN_SLICES (0: one
 * block per v head; -1: back to the environment / auto; N: ~N column slices
 * per head, sm_90) and the slices of the last launch (0: the head kernel). */
void dr_cuda_gdn_decode_slices(int mode);
int dr_cuda_gdn_decode_last_slices(void);
void dr_cuda_gdn_decode_kcluster(int on); /* clusters over a k head's v heads (0 off, 1 on, -1 env) */
int dr_cuda_gdn_decode_last_cluster(void);

static int g_cc_major;

/* One shape with the kernel choice `mode` (and k-head clusters `kclu`, -1:
 * default): 6 chained steps (fresh random inputs each) against the CPU chain. */
static void gdn_case(int Hk, int Hv_, int dk, int dv, int K, int mode, int kclu) {
    const dr_gdn_dims d = {Hk, Hv_, dk, dv};
    const int Hv = d.n_v_heads, Cc = 2 * d.n_k_heads * d.d_k + Hv * d.d_v;
    const size_t ns = (size_t)Hv * d.d_k * d.d_v, nv = (size_t)Hv * d.d_v, ncs = (size_t)K * Cc;
    const float eps = 1e-6f;
    float *st = rnd(ns, 0.3f), *cst = rnd(ncs, 1.0f), *cw = rnd((size_t)Cc * K, 0.7f);
    float *Al = rnd(Hv, 1.0f), *dtb = rnd(Hv, 1.0f), *nw = rnd(d.d_v, 1.0f);
    float *dst = dput(st, ns * 4), *dcst = dput(cst, ncs * 4), *dcw = dput(cw, (size_t)Cc * K * 4);
    float *dAl = dput(Al, Hv * 4), *ddtb = dput(dtb, Hv * 4), *dnw = dput(nw, d.d_v * 4);
    float *dm = G->alloc(G->ctx, (size_t)Cc * 4), *dz = G->alloc(G->ctx, nv * 4);
    float *db = G->alloc(G->ctx, Hv * 4), *da = G->alloc(G->ctx, Hv * 4), *dy = G->alloc(G->ctx, nv * 4);
    float *qkv = malloc((size_t)Cc * 4), *beta = malloc(Hv * 4), *g = malloc(Hv * 4), *o = malloc(nv * 4);
    float *y = malloc(nv * 4), *ws = malloc(dr_gdn_ws_floats(&d) * 4), *poison = malloc(nv * 4);
    for (size_t i = 0; i < nv; i++)
        poison[i] = NAN;
    float ey = 0.0f;
    const int steps = 6;
    dr_cuda_gdn_decode_slices(mode);
    dr_cuda_gdn_decode_kcluster(kclu);
    for (int t = 0; t < steps; t++) {
        float *m = rnd((size_t)Cc, 2.0f), *z = rnd(nv, 2.0f), *b = rnd(Hv, 3.0f), *a = rnd(Hv, t == 2 ? 30.0f : 2.0f);
        G->upload(G->ctx, dm, m, (size_t)Cc * 4), G->upload(G->ctx, dz, z, nv * 4);
        G->upload(G->ctx, db, b, Hv * 4), G->upload(G->ctx, da, a, Hv * 4);
        G->upload(G->ctx, dy, poison, nv * 4); /* every y element must be written */
        C->gdn_conv(NULL, qkv, m, cst, cw, 1, Cc, K);
        C->gdn_gates(NULL, beta, g, b, a, Al, dtb, 1, Hv);
        C->gdn_recurrent(NULL, o, qkv, beta, g, st, &d, 1, ws);
        C->gated_rmsnorm(NULL, y, o, z, nw, Hv, d.d_v, eps);
        G->gdn_decode(G->ctx, dy, dm, dz, db, da, dcst, dst, dcw, K, dAl, ddtb, dnw, &d, eps);
        float *gy = dget(dy, nv), e = rel_err(gy, y, nv);
        ey = e > ey ? e : ey;
        free(m), free(z), free(b), free(a), free(gy);
    }
    const int S = dr_cuda_gdn_decode_last_slices(), Gc = dr_cuda_gdn_decode_last_cluster();
    dr_cuda_gdn_decode_slices(-1);
    dr_cuda_gdn_decode_kcluster(-1);
    float *gs = dget(dst, ns), *gc = dget(dcst, ncs);
    char kn[48];
    if (S > 0)
        snprintf(kn, sizeof kn, "%d slices, clusters of %d", S, Gc);
    else
        snprintf(kn, sizeof kn, "head kernel");
    REPORT(ey, GDN_TOL, "gdn_decode Hk=%d Hv=%d dk=%d dv=%d K=%d mode %d%s (%s): y, %d steps", Hk, Hv, dk, dv, K,
           mode, kclu == 0 ? " kcluster 0" : "", kn, steps);
    REPORT(rel_err(gs, st, ns), GDN_TOL, "gdn_decode: fp32 state after %d steps", steps);
    REPORT(rel_err(gc, cst, ncs), 0.0f, "gdn_decode: conv state (exact)");
    if (g_cc_major == 9) /* sm_90: the sliced kernel unless told otherwise */
        CHECK_SHOW(mode == 0 ? S == 0 : S > 0, "gdn_decode mode %d ran %s", mode, kn);
    free(st), free(cst), free(cw), free(Al), free(dtb), free(nw), free(qkv), free(beta), free(g), free(o);
    free(y), free(ws), free(gs), free(gc), free(poison);
    void *bufs[] = {dst, dcst, dcw, dAl, ddtb, dnw, dm, dz, db, da, dy};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        G->free(G->ctx, bufs[i]);
}

static void test_gdn_decode(void) {
    int dev = 0;
    if (cudaGetDevice(&dev) == cudaSuccess)
        cudaDeviceGetAttribute(&g_cc_major, cudaDevAttrComputeCapabilityMajor, dev);
    /* force: a third mode (DR_CUDA_GDN_SLICES = force) besides 0 and auto, 0 = none. With Hv / Hk * S <= 8
       the sliced kernel's clusters span the k head (no q/k counter): (16,32,128,128) auto, (2,6,40,24) forced
       1, (2,4,64,72) forced 3, (16,16,*) and (4,4,*) (Hv = Hk), (4,16,64,48) forced 2 (W 32 S 2, ratio 4);
       the others use the counter, and (16,32,128,128) runs auto with DR_CUDA_GDN_KCLUSTER=0 too.
       Auto on a 132-SM H100 (W columns per slice, S slices): (2,6,40,24) W 8 S 3; (3,3,128,128) and
       (16,16,128,128) W 16 S 8; (2,4,64,72) W 16 S 5 (last slice 8 columns); (16,32,128,128) and
       (8,32,128,128) W 32 S 4; (1,2,256,256) W 32 S 8; (4,4,20,8) S 1 (no cluster); (4,8,128,100) W 16 S 7
       (last 4 columns); (2,8,96,128) W 16 S 8 (forced 4: W 32 S 4); (2,4,2,64) W 8 S 8 (ranks 4..7 own no
       q/k channel). */
    const struct {
        int Hk, Hv, dk, dv, K, force;
    } cs[] = {{2, 6, 40, 24, 4, 1},    {3, 3, 128, 128, 4, 0},   {2, 4, 64, 72, 3, 3},     {16, 32, 128, 128, 4, 8},
              {1, 2, 256, 256, 4, 0},  {4, 4, 20, 8, 2, 0},      {16, 16, 128, 128, 4, 4}, {8, 32, 128, 128, 4, 0},
              {4, 8, 128, 100, 4, 0},  {2, 8, 96, 128, 3, 4},    {2, 4, 2, 64, 2, 0},      {4, 16, 64, 48, 4, 2}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        gdn_case(cs[c].Hk, cs[c].Hv, cs[c].dk, cs[c].dv, cs[c].K, 0, -1);
        gdn_case(cs[c].Hk, cs[c].Hv, cs[c].dk, cs[c].dv, cs[c].K, -1, -1);
        if (cs[c].force)
            gdn_case(cs[c].Hk, cs[c].Hv, cs[c].dk, cs[c].dv, cs[c].K, cs[c].force, -1);
    }
    gdn_case(16, 32, 128, 128, 4, -1, 0); /* clusters of one v head's slices + the q/k counter */
}

/* ---- kv_store ---- */

static void test_kv_store(void) {
    const int n_ctx = 37, row = 3 * 40, T = 5, pos0 = 29;
    const size_t nc = (size_t)n_ctx * row;
    float *kc = rnd(nc, 1.0f), *vc = rnd(nc, 1.0f), *k = rnd((size_t)T * row, 1.0f), *v = rnd((size_t)T * row, 1.0f);
    float *dkc = dput(kc, nc * 4), *dvc = dput(vc, nc * 4), *dk = dput(k, (size_t)T * row * 4);
    float *dv = dput(v, (size_t)T * row * 4);
    memcpy(kc + (size_t)pos0 * row, k, (size_t)T * row * 4);
    memcpy(vc + (size_t)pos0 * row, v, (size_t)T * row * 4);
    G->kv_store(G->ctx, dkc, dvc, dk, dv, T, pos0, row);
    float *gk = dget(dkc, nc), *gv = dget(dvc, nc);
    REPORT(fmaxf(rel_err(gk, kc, nc), rel_err(gv, vc, nc)), 0.0f, "kv_store T=%d at %d of %d (exact)", T, pos0, n_ctx);
    free(kc), free(vc), free(k), free(v), free(gk), free(gv);
    G->free(G->ctx, dkc), G->free(G->ctx, dvc), G->free(G->ctx, dk), G->free(G->ctx, dv);
}

/* ---- matmul_n and add_rmsnorm against the reference ---- */

static void test_fused_small(void) {
    const int ns[2] = {130, 2048}, Tv[4] = {1, 3, 9, 70}, ds[3] = {67, 5, 33};
    const dr_dtype dts[2] = {DR_DT_BF16, DR_DT_F32};
    for (int ni = 0; ni < 2; ni++)
    for (int di = 0; di < 2; di++)
        for (int ti = 0; ti < 4; ti++) { /* T > 8, bf16: one split of x for the three GEMMs */
            const int n = ns[ni], T = Tv[ti];
            dr_tensor w[3];
            const dr_tensor *wp[3];
            float *yh[3], *yd[3], *x = rnd((size_t)T * n, 1.0f), *dx = dput(x, (size_t)T * n * 4);
            for (int i = 0; i < 3; i++) {
                rand_weight(&w[i], "matmul_n.weight", dts[di], ds[i], n);
                wp[i] = &w[i];
                yh[i] = malloc((size_t)T * ds[i] * 4);
                yd[i] = G->alloc(G->ctx, (size_t)T * ds[i] * 4);
                C->matmul(NULL, yh[i], x, &w[i], T);
            }
            G->matmul_n(G->ctx, 3, yd, dx, wp, T);
            float e = 0.0f;
            for (int i = 0; i < 3; i++) {
                float *g = dget(yd[i], (size_t)T * ds[i]), ei = rel_err(g, yh[i], (size_t)T * ds[i]);
                e = ei > e ? ei : e;
                free(g);
                free(yh[i]);
                free((void *)w[i].data);
                G->weight_free(G->ctx, &w[i]), G->free(G->ctx, yd[i]);
            }
            REPORT(e, TOL, "matmul_n 3 weights [67|5|33, %d] %s T=%d", n, di ? "f32" : "bf16", T);
            free(x);
            G->free(G->ctx, dx);
        }
    const int rows = 3, H = 1031;
    const size_t N = (size_t)rows * H;
    float *x = rnd(N, 2.0f), *d = rnd(N, 2.0f), *gain = rnd(H, 1.0f), *y = malloc(N * 4);
    float *dx = dput(x, N * 4), *dd = dput(d, N * 4), *dg = dput(gain, H * 4), *dy = G->alloc(G->ctx, N * 4);
    C->add(NULL, x, d, N);
    C->rmsnorm(NULL, y, x, gain, rows, H, 1e-6f);
    G->add_rmsnorm(G->ctx, dx, dd, dy, dg, rows, H, 1e-6f);
    float *gx = dget(dx, N), *gy = dget(dy, N);
    REPORT(rel_err(gx, x, N), 0.0f, "add_rmsnorm %dx%d: sum (exact)", rows, H);
    REPORT(rel_err(gy, y, N), TOL, "add_rmsnorm %dx%d: norm", rows, H);
    free(x), free(d), free(gain), free(y), free(gx), free(gy);
    G->free(G->ctx, dx), G->free(G->ctx, dd), G->free(G->ctx, dg), G->free(G->ctx, dy);
}

/* ---- graphs: replayed steps against kernel-by-kernel steps ---- */

static dr_session *session(dr_model *m) {
    dr_session *s = NULL;
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 1400;
    if (dr_session_new(m, &p, &s) != DR_OK)
        printf("session: %s\n", dr_last_error());
    return s;
}

/* eval with recording on or off */
static dr_status eval(dr_session *s, int graphs, const int32_t *ids, int n, float *logits) {
    dr_cuda_set_graphs(graphs);
    return dr_session_eval(s, ids, n, DR_LOGITS_LAST, logits);
}

static void test_graphs(const char *dir) {
    dr_model_params mp = dr_model_default_params();
    mp.device = "cuda";
    dr_model *m = NULL;
    if (dr_model_load_ex(dir, &mp, &m) != DR_OK) {
        CHECK(0, "load %s: %s", dir, dr_last_error());
        return;
    }
    const int V = dr_model_info_get(m)->n_vocab;
    dr_session *a = session(m), *b = session(m), *a2 = session(m), *b2 = session(m);
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4), *la2 = malloc((size_t)V * 4);
    float *lb2 = malloc((size_t)V * 4);
    int32_t prompt[7] = {1, 17, 300 % V, 5, 42, 9 % V, 77 % V}, blk[20];
    for (int i = 0; i < 20; i++)
        blk[i] = (int32_t)((i * 7919 + 3) % V);
    CHECK(a && b && a2 && b2, "sessions");
    if (!a || !b || !a2 || !b2)
        goto done;
    long r0, p0, f0, r1, p1, f1;
    dr_cuda_graph_counts(&r0, &p0, &f0);
    eval(a, 1, prompt, 7, la), eval(b, 0, prompt, 7, lb);
    eval(a2, 1, prompt + 2, 3, la2), eval(b2, 0, prompt + 2, 3, lb2);
    float worst = 0.0f, worst2 = 0.0f;
    int same = 1, same2 = 1, steps = 0;
    for (int step = 0; step < 1100 && dr_session_pos(a) < 1390; step++, steps++) {
        if (step == 300) { /* a block in the middle: scratch grows, recordings must be dropped */
            eval(a, 1, blk, 20, la), eval(b, 0, blk, 20, lb);
        }
        int32_t ta = (int32_t)test_argmax_rule(lb, V), t2 = (int32_t)test_argmax_rule(lb2, V);
        same &= test_argmax_rule(la, V) == ta;
        eval(a, 1, &ta, 1, la), eval(b, 0, &ta, 1, lb);
        worst = fmaxf(worst, max_abs_diff(la, lb, (size_t)V)); /* NaN: infinite */
        if (step < 400) { /* a second sequence interleaved, recorded too */
            same2 &= test_argmax_rule(la2, V) == t2;
            eval(a2, 1, &t2, 1, la2), eval(b2, 0, &t2, 1, lb2);
            worst2 = fmaxf(worst2, max_abs_diff(la2, lb2, (size_t)V));
        }
    }
    dr_cuda_graph_counts(&r1, &p1, &f1);
    CHECK_SHOW(worst <= GRAPH_TOL, "graphs %s: %d steps to position %d, max |dlogit| replay vs kernels %.3g (tol %.0e)",
               dir, steps, dr_session_pos(a), worst, GRAPH_TOL);
    CHECK_SHOW(worst2 <= GRAPH_TOL, "graphs %s: interleaved second sequence, max |dlogit| %.3g", dir, worst2);
    CHECK_SHOW(same && same2, "graphs %s: greedy tokens identical", dir);
    CHECK_SHOW(r1 - r0 >= 4 && p1 - p0 >= 1000 && f1 == f0,
               "graphs %s: %ld recordings, %ld replays, %ld failed recordings", dir, r1 - r0, p1 - p0, f1 - f0);
done:
    dr_cuda_set_graphs(1);
    dr_session_free(a), dr_session_free(b), dr_session_free(a2), dr_session_free(b2);
    free(la), free(lb), free(la2), free(lb2);
    dr_model_free(m);
}

int main(int argc, char **argv) {
    int rc = cuda_test_open();
    if (rc == 77)
        return 77;
    if (rc)
        return TEST_DONE();
    test_gdn_decode();
    if (getenv("DR_TEST_GDN_ONLY")) { /* the sanitizer runs: only the fused GDN step */
        cuda_test_close();
        return TEST_DONE();
    }
    test_kv_store();
    test_fused_small();
    cuda_test_close();
    for (int i = 1; i < argc; i++)
        test_graphs(argv[i]);
    return TEST_DONE();
}
