/* tests/test_cuda_chain.c - decode GEMVs run as one persistent kernel
 * (src/ops/cuda/chain.cu) against the same slots run one kernel at a time.
 *
 * The chain is forced on (dr_cuda_set_chain(2)) and a dense layer's
 * single-token sequence is replayed: out_proj + residual + norm, gate/up +
 * SwiGLU, down + residual + norm, the next layer's input projections (a set
 * of two matrices), several layers in a row so the chain also fills up and
 * flushes itself; then chains that end on a residual (the norm written by
 * the chain's own NORM op), one without a norm (the last layer), a lone
 * GEMV, and ops the chain must decline (F32 weights, T = 2). Outputs are
 * poisoned (NaN) first. Every output is compared with the unchained run:
 * the GEMVs and the residual exactly (same dot products), the normalized
 * residual and what reads it within fp32 rounding (the norm's sum of
 * squares is added in another order).
 *
 * Without a CUDA device it prints "skipped: no CUDA device" and returns 77.
 */
#include "cuda_test_util.h"

#include <stdio.h>

#define TOL_NORM 1e-5f /* what reads the normalized residual: one rounding of inv, carried through a GEMV */

typedef struct {
    int H, A, F, R1, R2; /* residual width, mixer output width, FFN width, the next projections' rows */
    dr_tensor wo, gate, up, down, p1, p2, wf;
    void *host[7];
    float *gain1, *gain2; /* device */
} layer;

static void layer_new(layer *L, int H, int A, int F, int R1, int R2) {
    memset(L, 0, sizeof *L);
    L->H = H, L->A = A, L->F = F, L->R1 = R1, L->R2 = R2;
    L->host[0] = rand_weight(&L->wo, "o_proj", DR_DT_BF16, H, A);
    L->host[1] = rand_weight(&L->gate, "gate", DR_DT_BF16, F, H);
    L->host[2] = rand_weight(&L->up, "up", DR_DT_BF16, F, H);
    L->host[3] = rand_weight(&L->down, "down", DR_DT_BF16, H, F);
    L->host[4] = rand_weight(&L->p1, "in_proj_1", DR_DT_BF16, R1, H);
    L->host[5] = rand_weight(&L->p2, "in_proj_2", DR_DT_BF16, R2, H);
    L->host[6] = rand_weight(&L->wf, "f32", DR_DT_F32, R1, H);
    float *g1 = rnd((size_t)H, 1.0f), *g2 = rnd((size_t)H, 1.0f);
    L->gain1 = dput(g1, (size_t)H * 4), L->gain2 = dput(g2, (size_t)H * 4);
    free(g1), free(g2);
}

static void layer_free(layer *L) {
    dr_tensor *ws[7] = {&L->wo, &L->gate, &L->up, &L->down, &L->p1, &L->p2, &L->wf};
    for (int i = 0; i < 7; i++) {
        G->weight_free(G->ctx, ws[i]);
        free(L->host[i]);
    }
    G->free(G->ctx, L->gain1), G->free(G->ctx, L->gain2);
}

static float *dnan(size_t n) {
    float *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = dput(h, n * sizeof *h);
    free(h);
    return d;
}

/* device buffers of one run */
typedef struct {
    float *x, *xn, *a, *h, *y1, *y2;
} bufs;

static void bufs_new(bufs *b, const layer *L, const float *x0, const float *a0) {
    b->x = dput(x0, (size_t)L->H * 4);
    b->xn = dnan((size_t)L->H);
    b->a = dput(a0, (size_t)L->A * 4);
    b->h = dnan((size_t)L->F);
    b->y1 = dnan((size_t)L->R1);
    b->y2 = dnan((size_t)L->R2);
}

static void bufs_free(bufs *b) {
    float *p[6] = {b->x, b->xn, b->a, b->h, b->y1, b->y2};
    for (int i = 0; i < 6; i++)
        G->free(G->ctx, p[i]);
}

/* what forward.c does for a dense layer at T = 1, `layers` times */
static void run_layers(const layer *L, bufs *b, int layers) {
    for (int l = 0; l < layers; l++) {
        G->matmul_add_rmsnorm(G->ctx, b->x, b->xn, b->a, &L->wo, L->gain1, 1, 1e-6f);
        G->matmul_swiglu(G->ctx, b->h, b->xn, &L->gate, &L->up, 1);
        G->matmul_add_rmsnorm(G->ctx, b->x, b->xn, b->h, &L->down, L->gain2, 1, 1e-6f);
        float *const ys[2] = {b->y1, b->y2};
        const dr_tensor *const ws[2] = {&L->p1, &L->p2};
        G->matmul_n(G->ctx, 2, ys, b->xn, ws, 1); /* 4 ops a layer: the chain fills up and flushes itself */
    }
}

/* a chain that ends on residual adds: the last norm comes from the NORM op;
 * gain2 NULL: the last layer's add alone */
static void run_tail(const layer *L, bufs *b, bool last_gain) {
    G->matmul_add_rmsnorm(G->ctx, b->x, b->xn, b->a, &L->wo, L->gain1, 1, 1e-6f);
    G->matmul_swiglu(G->ctx, b->h, b->xn, &L->gate, &L->up, 1);
    G->matmul_add_rmsnorm(G->ctx, b->x, b->xn, b->h, &L->down, last_gain ? L->gain2 : NULL, 1, 1e-6f);
}

/* ops the chain declines, between chained ones: F32 weights, two tokens */
static void run_mixed(const layer *L, bufs *b) {
    G->matmul_add_rmsnorm(G->ctx, b->x, b->xn, b->a, &L->wo, L->gain1, 1, 1e-6f);
    G->matmul(G->ctx, b->y1, b->xn, &L->wf, 1); /* F32: not chained, the pending norm is written first */
    G->matmul_swiglu(G->ctx, b->h, b->xn, &L->gate, &L->up, 1);
    G->matmul(G->ctx, b->y2, b->xn, &L->p2, 1);
}

/* one GEMV alone: the ordinary kernel */
static void run_lone(const layer *L, bufs *b) { G->matmul(G->ctx, b->y1, b->x, &L->p1, 1); }

enum { O_X = 1, O_XN = 2, O_H = 4, O_Y1 = 8, O_Y2 = 16, O_ALL = 31 };

static void compare(const layer *L, bufs *c, bufs *u, const char *what, int outs_written) {
    struct {
        const char *nm;
        float *dc, *du;
        size_t n;
        float tol;
    } outs[] = {{"x (residual)", c->x, u->x, (size_t)L->H, 0.0f}, {"xn", c->xn, u->xn, (size_t)L->H, TOL_NORM},
                {"swiglu out", c->h, u->h, (size_t)L->F, TOL_NORM},  {"proj 1", c->y1, u->y1, (size_t)L->R1, TOL_NORM},
                {"proj 2", c->y2, u->y2, (size_t)L->R2, TOL_NORM}};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
        if (!(outs_written & (1 << i)))
            continue;
        float *hc = dget(outs[i].dc, outs[i].n), *hu = dget(outs[i].du, outs[i].n);
        REPORT(rel_err(hc, hu, outs[i].n), outs[i].tol, "chain %s [H %d, A %d, F %d]: %s vs one kernel at a time",
               what, L->H, L->A, L->F, outs[i].nm);
        free(hc), free(hu);
    }
}

typedef void (*runner)(const layer *, bufs *);
static void r_layers3(const layer *L, bufs *b) { run_layers(L, b, 3); }
static void r_tail(const layer *L, bufs *b) { run_tail(L, b, true); }
static void r_tail_nogain(const layer *L, bufs *b) { run_tail(L, b, false); }

static void check(const layer *L, runner r, const char *what, int outs_written, bool chained) {
    float *x0 = rnd((size_t)L->H, 2.0f), *a0 = rnd((size_t)L->A, 1.0f);
    bufs c, u;
    bufs_new(&c, L, x0, a0);
    bufs_new(&u, L, x0, a0);
    dr_cuda_set_chain(0);
    r(L, &u);
    G->sync(G->ctx);
    for (int rep = 0; rep < 2; rep++) { /* twice: the counters must be back at zero */
        dr_cuda_set_chain(2);
        if (rep) {
            G->upload(G->ctx, c.x, x0, (size_t)L->H * 4);
            G->upload(G->ctx, c.a, a0, (size_t)L->A * 4);
        }
        long l0, o0, l1, o1;
        dr_cuda_chain_counts(&l0, &o0);
        r(L, &c);
        G->sync(G->ctx); /* flushes what is pending */
        dr_cuda_chain_counts(&l1, &o1);
        dr_cuda_set_chain(0);
        if (chained)
            CHECK_SHOW(l1 > l0 && o1 - o0 >= 2 * (l1 - l0), "chain %s: %ld chain kernels holding %ld ops", what,
                       l1 - l0, o1 - o0);
        else
            CHECK_SHOW(l1 == l0, "chain %s: no chain kernel (the ordinary GEMV)", what);
        char w[96];
        snprintf(w, sizeof w, "%s%s", what, rep ? " (second run)" : "");
        compare(L, &c, &u, w, outs_written);
    }
    CHECK(dr_cuda_backend_status(G) == DR_OK, "chain %s: backend error: %s", what, dr_last_error());
    bufs_free(&c), bufs_free(&u);
    free(x0), free(a0);
}

int main(void) {
    int rc = cuda_test_open();
    if (rc == 77)
        return 77;
    if (rc)
        return TEST_DONE();
    /* the 9B and 0.8B widths, and odd ones (rows not a multiple of 2, 8 or the SM count) */
    const int shapes[][5] = {{4096, 4096, 12288, 8192, 64}, {1024, 2048, 3584, 6144, 32}, {264, 520, 1032, 601, 7}};
    for (int s = 0; s < 3; s++) {
        layer L;
        layer_new(&L, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
        check(&L, r_layers3, "3 layers", O_ALL, true);
        check(&L, r_tail, "ending on a residual", O_X | O_XN | O_H, true);
        check(&L, r_tail_nogain, "ending on an add without norm", O_X | O_H, true);
        check(&L, run_mixed, "with declined ops between", O_ALL, true);
        check(&L, run_lone, "of one GEMV", O_Y1, false);
        layer_free(&L);
    }
    dr_cuda_set_chain(1);
    cuda_test_close();
    return TEST_DONE();
}
