/* ops/cpu/simd_impl.h - the vector kernels written once over a few macros,
 * compiled per SIMD level by simd_avx2.c and simd_avx512.c (each with its own
 * -m flags). Not a public header: include it only from those files.
 *
 * The includer defines: V (vector type), VL (floats per vector), V_ZERO(),
 * V_SET1(a), V_LOADU(p), V_STOREU(p, v), V_FMA(a, b, c) = a*b + c, V_ADD,
 * V_HSUM(v), V_LOAD_BF16(p) and V_LOAD_F16(p) (VL halfs at p -> fp32),
 * V_LOAD_BF16_PAIRS(p, ev, od) (2 VL bf16 at p in one load: ev = the even
 * elements, od = the odd ones, as fp32),
 * V_SUB, V_DIV, V_MIN(a, b) / V_MAX(a, b) (b returned when either is NaN),
 * V_ROUND (to nearest, ties even), V_LDEXP(p, n) = p 2^n for integer-valued n
 * in [-252, 254] with IEEE overflow and underflow, V_TRANSPOSE(r) (V r[VL]:
 * r[i] element j -> r[j] element i), PANEL_NV and PANEL_TT (the panel GEMM's
 * register tile: vectors of rows x tokens),
 * TILE_TT (tokens per register tile: as many as the register file holds),
 * SIMD_LEVEL and SIMD_GETTER (the exported table function).
 */

#include <string.h>

#define AI static inline __attribute__((always_inline))

/* VL weights at element i of a row of dtype dt (a constant after inlining). */
AI V load_w(const void *row, size_t i, int dt) {
    if (dt == DR_DT_BF16)
        return V_LOAD_BF16((const uint16_t *)row + i);
    if (dt == DR_DT_F16)
        return V_LOAD_F16((const uint16_t *)row + i);
    return V_LOADU((const float *)row + i);
}

AI float load_1(const void *row, size_t i, int dt) { return dr_load_f32(row, (dr_dtype)dt, i); }

/* ---- fp32 vector helpers ---- */

static float k_dot(const float *a, const float *b, int n) {
    V s0 = V_ZERO(), s1 = V_ZERO();
    int i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        s0 = V_FMA(V_LOADU(a + i), V_LOADU(b + i), s0);
        s1 = V_FMA(V_LOADU(a + i + VL), V_LOADU(b + i + VL), s1);
    }
    for (; i + VL <= n; i += VL)
        s0 = V_FMA(V_LOADU(a + i), V_LOADU(b + i), s0);
    float s = V_HSUM(V_ADD(s0, s1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void k_axpy(float *y, float a, const float *x, int n) {
    const V av = V_SET1(a);
    int i = 0;
    for (; i + VL <= n; i += VL)
        V_STOREU(y + i, V_FMA(av, V_LOADU(x + i), V_LOADU(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

static float k_sum(const float *x, size_t n) {
    V s0 = V_ZERO(), s1 = V_ZERO(), s2 = V_ZERO(), s3 = V_ZERO();
    size_t i = 0;
    for (; i + 4 * VL <= n; i += 4 * VL) {
        s0 = V_ADD(s0, V_LOADU(x + i));
        s1 = V_ADD(s1, V_LOADU(x + i + VL));
        s2 = V_ADD(s2, V_LOADU(x + i + 2 * VL));
        s3 = V_ADD(s3, V_LOADU(x + i + 3 * VL));
    }
    float s = V_HSUM(V_ADD(V_ADD(s0, s1), V_ADD(s2, s3)));
    for (; i < n; i++)
        s += x[i];
    return s;
}

/* ---- weights: widen and GEMV ---- */

AI void widen_dt(float *dst, const void *src, int n, int dt) {
    int i = 0;
    for (; i + VL <= n; i += VL)
        V_STOREU(dst + i, load_w(src, (size_t)i, dt));
    for (; i < n; i++)
        dst[i] = load_1(src, (size_t)i, dt);
}

static void k_widen(float *dst, const void *src, dr_dtype dt, int n) {
    if (dt == DR_DT_BF16)
        widen_dt(dst, src, n, DR_DT_BF16);
    else if (dt == DR_DT_F16)
        widen_dt(dst, src, n, DR_DT_F16);
    else
        widen_dt(dst, src, n, DR_DT_F32);
}

/* Software prefetch into L2 of the 64-byte lines that begin in the bytes
 * [b, b + len) of the row stream w, pf bytes ahead (pf = 0: none; the
 * backend's choice, ops/cpu/backend.c). Never faults. */
AI void prefetch_ahead(const void *w, size_t b, size_t len, size_t pf) {
    if (!pf)
        return;
    for (size_t o = (64 - (b & 63)) & 63; o < len; o += 64)
        __builtin_prefetch((const char *)w + b + o + pf, 0, 2);
}

/* One row: rows are read one after another, a single forward stream. (Four
 * rows interleaved, sharing each x load, ran at half the DRAM bandwidth: four
 * short streams defeat the hardware prefetcher; x is in L1 anyway.) */
AI void gemv1_dt(float *y, const void *w, const float *x, int n, int dt, size_t pf) {
    const size_t esz = dt == DR_DT_F32 ? 4 : 2;
    V a0 = V_ZERO(), a1 = V_ZERO(); /* two chains hide the FMA latency */
    int i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        prefetch_ahead(w, (size_t)i * esz, 2 * VL * esz, pf);
        a0 = V_FMA(load_w(w, (size_t)i, dt), V_LOADU(x + i), a0);
        a1 = V_FMA(load_w(w, (size_t)i + VL, dt), V_LOADU(x + i + VL), a1);
    }
    for (; i + VL <= n; i += VL)
        a0 = V_FMA(load_w(w, (size_t)i, dt), V_LOADU(x + i), a0);
    float s = V_HSUM(V_ADD(a0, a1));
    for (; i < n; i++)
        s += load_1(w, (size_t)i, dt) * x[i];
    *y = s;
}

AI void gemv_dt(float *y, const void *w, size_t ld, int nr, const float *x, int n, int dt, size_t pf) {
    const size_t ldb = ld * (dt == DR_DT_F32 ? 4 : 2);
    for (int r = 0; r < nr; r++)
        gemv1_dt(y + r, (const unsigned char *)w + (size_t)r * ldb, x, n, dt, pf);
}

/* BF16 rows against x in pair order (k_bf16_pairs): each 2 VL weights are
 * one load, split into even and odd elements by a shift and an AND, where
 * V_LOAD_BF16 widens VL at a time. At AVX-512 one core then streams 1 GiB
 * of rows 3-11% faster, at the plain read's rate (dev VM's Zen 4, one
 * thread: 22.5-22.9 -> 23.1-25.4 GB/s); at AVX2 +0.4-1.8% there
 * (docs/PERFORMANCE.md, CPU, session 18). The order of the sums differs from
 * k_gemv's, not their precision. pf: as k_gemv's (prefetch_ahead). */
AI void gemv1_pairs(float *y, const uint16_t *w, const float *xp, int n, size_t pf) {
    V a0 = V_ZERO(), a1 = V_ZERO(), ev, od;
    int i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        prefetch_ahead(w, 2 * (size_t)i, 4 * VL, pf);
        V_LOAD_BF16_PAIRS(w + i, ev, od);
        a0 = V_FMA(ev, V_LOADU(xp + i), a0);
        a1 = V_FMA(od, V_LOADU(xp + i + VL), a1);
    }
    for (; i + VL <= n; i += VL) /* the tail is in element order */
        a0 = V_FMA(V_LOAD_BF16(w + i), V_LOADU(xp + i), a0);
    float s = V_HSUM(V_ADD(a0, a1));
    for (; i < n; i++)
        s += load_1(w, (size_t)i, DR_DT_BF16) * xp[i];
    *y = s;
}

static void k_gemv_bf16p(float *y, const void *w, size_t ld, int nr, const float *xp, int n, size_t pf) {
    for (int r = 0; r < nr; r++)
        gemv1_pairs(y + r, (const uint16_t *)w + (size_t)r * ld, xp, n, pf);
}

/* xp = x in pair order: per whole block of 2 VL elements, the even ones then
 * the odd ones; the elements after the last whole block as they are. */
static void k_bf16_pairs(float *xp, const float *x, int n) {
    int b = 0;
    for (; b + 2 * VL <= n; b += 2 * VL)
        for (int k = 0; k < VL; k++) {
            xp[b + k] = x[b + 2 * k];
            xp[b + VL + k] = x[b + 2 * k + 1];
        }
    for (; b < n; b++)
        xp[b] = x[b];
}

static void k_gemv(float *y, const void *w, dr_dtype dt, size_t ld, int nr, const float *x, int n, size_t pf) {
    if (dt == DR_DT_BF16)
        gemv_dt(y, w, ld, nr, x, n, DR_DT_BF16, pf);
    else if (dt == DR_DT_F16)
        gemv_dt(y, w, ld, nr, x, n, DR_DT_F16, pf);
    else
        gemv_dt(y, w, ld, nr, x, n, DR_DT_F32, pf);
}

/* ---- fp32 register tile (prefill GEMM on widened weight rows) ---- */

/* 4 rows x TILE_TT tokens: 4 * TILE_TT accumulators stay in registers. */
static void tile_4xT(float *y, size_t ldy, const float *w, size_t ldw, const float *x, size_t ldx, int n) {
    V acc[TILE_TT][4];
    for (int t = 0; t < TILE_TT; t++)
        for (int r = 0; r < 4; r++)
            acc[t][r] = V_ZERO();
    int i = 0;
    for (; i + VL <= n; i += VL) {
        V wv[4];
        for (int r = 0; r < 4; r++)
            wv[r] = V_LOADU(w + (size_t)r * ldw + i);
        for (int t = 0; t < TILE_TT; t++) {
            const V xv = V_LOADU(x + (size_t)t * ldx + i);
            for (int r = 0; r < 4; r++)
                acc[t][r] = V_FMA(wv[r], xv, acc[t][r]);
        }
    }
    for (int t = 0; t < TILE_TT; t++)
        for (int r = 0; r < 4; r++) {
            float s = V_HSUM(acc[t][r]);
            const float *wr = w + (size_t)r * ldw, *xt = x + (size_t)t * ldx;
            for (int k = i; k < n; k++)
                s += wr[k] * xt[k];
            y[(size_t)t * ldy + r] = s;
        }
}

static void k_tile(float *y, size_t ldy, const float *w, size_t ldw, int nr, const float *x, size_t ldx, int nt,
                   int n) {
    int t = 0;
    if (nr == 4)
        for (; t + TILE_TT <= nt; t += TILE_TT)
            tile_4xT(y + (size_t)t * ldy, ldy, w, ldw, x + (size_t)t * ldx, ldx, n);
    for (; t < nt; t++)
        for (int r = 0; r < nr; r++)
            y[(size_t)t * ldy + r] = k_dot(w + (size_t)r * ldw, x + (size_t)t * ldx, n);
}

/* ---- prefill GEMM on weight panels (simd.h pack_panel, gemm_panel) ---- */

/* c = v, or c += v (acc) */
AI void gemm_store(float *c, V v, bool acc) { V_STOREU(c, acc ? V_ADD(V_LOADU(c), v) : v); }

/* A panel is PANEL_NV vectors of rows, stored k-major, so one k step is
 * PANEL_NV vector loads of weights and one broadcast per token: the outer
 * product form, no horizontal sums. PANEL_TT tokens x PANEL_NV vectors of
 * accumulators fill the register file (the includer sets both). The k range
 * goes in blocks of PANEL_KC: the panel's slice stays in L1 / L2 for every
 * token block, and each block's sums (chains from zero) are added to y, so
 * no chain is longer than PANEL_KC (one chain over all k drifted to 1.2e-6
 * of the largest output at n = 1024 against the reference, where the
 * 16-lane dot form stays under 1e-6). */
#define PANEL (PANEL_NV * VL)
#define PANEL_KC 256

static void k_pack_panel(float *wp, const void *w, dr_dtype dt, size_t ldw, int nr, int n) {
    const size_t row_bytes = ldw * (dt == DR_DT_F32 ? 4 : 2);
    int k0 = 0;
    for (; k0 + VL <= n; k0 += VL) /* VL columns of VL rows at a time, transposed in registers */
        for (int g = 0; g < PANEL_NV; g++) {
            V r[VL];
            for (int i = 0; i < VL; i++) {
                const int row = g * VL + i;
                r[i] = row < nr ? load_w((const unsigned char *)w + (size_t)row * row_bytes, (size_t)k0, (int)dt)
                                : V_ZERO();
            }
            V_TRANSPOSE(r);
            for (int k = 0; k < VL; k++)
                V_STOREU(wp + (size_t)(k0 + k) * PANEL + g * VL, r[k]);
        }
    for (; k0 < n; k0++)
        for (int r = 0; r < PANEL; r++)
            wp[(size_t)k0 * PANEL + r] =
                r < nr ? load_1((const unsigned char *)w + (size_t)r * row_bytes, (size_t)k0, (int)dt) : 0.0f;
}

/* tt (a constant after inlining) tokens x the whole panel over k in
 * [k0, k1): y = the sums at k0 == 0, else y += them. */
AI void panel_tile(float *y, size_t ldy, const float *wp, const float *x, size_t ldx, int k0, int k1, int tt) {
    V acc[PANEL_TT][PANEL_NV];
    for (int t = 0; t < tt; t++)
        for (int v = 0; v < PANEL_NV; v++)
            acc[t][v] = V_ZERO();
    for (int k = k0; k < k1; k++) {
        V wv[PANEL_NV];
        for (int v = 0; v < PANEL_NV; v++)
            wv[v] = V_LOADU(wp + (size_t)k * PANEL + v * VL);
        for (int t = 0; t < tt; t++) {
            const V xv = V_SET1(x[(size_t)t * ldx + (size_t)k]);
            for (int v = 0; v < PANEL_NV; v++)
                acc[t][v] = V_FMA(wv[v], xv, acc[t][v]);
        }
    }
    for (int t = 0; t < tt; t++)
        for (int v = 0; v < PANEL_NV; v++)
            gemm_store(y + (size_t)t * ldy + v * VL, acc[t][v], k0 > 0);
}

_Static_assert(PANEL_TT >= 4 && PANEL_TT <= 6, "panel_tiles has cases for 1 to 6 tokens");

/* panel_tile with the token count as a constant for the compiler */
static void panel_tiles(float *y, size_t ldy, const float *wp, const float *x, size_t ldx, int k0, int k1, int tt) {
    switch (tt) {
#define PANEL_CASE(c)                                                                                    \
    case c:                                                                                              \
        panel_tile(y, ldy, wp, x, ldx, k0, k1, c);                                                       \
        break;
        PANEL_CASE(1)
        PANEL_CASE(2)
        PANEL_CASE(3)
        PANEL_CASE(4)
#if PANEL_TT > 4
        PANEL_CASE(5)
        PANEL_CASE(6)
#endif
#undef PANEL_CASE
    default:
        break;
    }
}

static void k_gemm_panel(float *y, size_t ldy, const float *wp, int nr, const float *x, size_t ldx, int nt, int n) {
    if (nr < PANEL) { /* a last, partial panel: into a local tile (the same blocks), then its nr rows */
        float yb[PANEL_TT * PANEL];
        for (int t0 = 0; t0 < nt; t0 += PANEL_TT) {
            const int tt = nt - t0 < PANEL_TT ? nt - t0 : PANEL_TT;
            for (int k0 = 0; k0 < n; k0 += PANEL_KC)
                panel_tiles(yb, PANEL, wp, x + (size_t)t0 * ldx, ldx, k0, n - k0 < PANEL_KC ? n : k0 + PANEL_KC, tt);
            for (int t = 0; t < tt; t++)
                memcpy(y + (size_t)(t0 + t) * ldy, yb + (size_t)t * PANEL, (size_t)nr * sizeof(float));
        }
        return;
    }
    for (int k0 = 0; k0 < n; k0 += PANEL_KC) {
        const int k1 = n - k0 < PANEL_KC ? n : k0 + PANEL_KC;
        for (int t0 = 0; t0 < nt; t0 += PANEL_TT)
            panel_tiles(y + (size_t)t0 * ldy, ldy, wp, x + (size_t)t0 * ldx, ldx, k0, k1,
                        nt - t0 < PANEL_TT ? nt - t0 : PANEL_TT);
    }
}

/* ---- small fp32 GEMM for the chunked GDN (C = A B, B rows contiguous) ---- */

#ifndef GEMM_NB
#define GEMM_NB 2 /* column vectors of the 4-row register tile: 8 accumulators */
#endif

/* rows i0..i0+3, columns j0..j0+GEMM_NB VL-1 */
static void gemm_4xnb(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int K, bool acc) {
    V c[4][GEMM_NB];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < GEMM_NB; v++)
            c[r][v] = V_ZERO();
    for (int k = 0; k < K; k++) {
        V b[GEMM_NB];
        for (int v = 0; v < GEMM_NB; v++)
            b[v] = V_LOADU(B + (size_t)k * ldb + v * VL);
        for (int r = 0; r < 4; r++) {
            const V a = V_SET1(A[(size_t)r * lda + k]);
            for (int v = 0; v < GEMM_NB; v++)
                c[r][v] = V_FMA(a, b[v], c[r][v]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < GEMM_NB; v++)
            gemm_store(C + (size_t)r * ldc + v * VL, c[r][v], acc);
}

/* one row, columns j0..j0+VL-1 */
static void gemm_1x1(float *C, const float *A, const float *B, int ldb, int K, bool acc) {
    V c = V_ZERO();
    for (int k = 0; k < K; k++)
        c = V_FMA(V_SET1(A[k]), V_LOADU(B + (size_t)k * ldb), c);
    gemm_store(C, c, acc);
}

/* one row, columns j0..j0+4VL-1: gemm_1x1 on four column blocks at once
 * (four FMA chains in flight, not one; each the same sum in the same order).
 * The chunked GDN's forward substitution is all one-row products. */
static void gemm_1x4(float *C, const float *A, const float *B, int ldb, int K, bool acc) {
    V c0 = V_ZERO(), c1 = c0, c2 = c0, c3 = c0;
    for (int k = 0; k < K; k++) {
        const V a = V_SET1(A[k]);
        const float *b = B + (size_t)k * ldb;
        c0 = V_FMA(a, V_LOADU(b), c0);
        c1 = V_FMA(a, V_LOADU(b + VL), c1);
        c2 = V_FMA(a, V_LOADU(b + 2 * VL), c2);
        c3 = V_FMA(a, V_LOADU(b + 3 * VL), c3);
    }
    gemm_store(C, c0, acc);
    gemm_store(C + VL, c1, acc);
    gemm_store(C + 2 * VL, c2, acc);
    gemm_store(C + 3 * VL, c3, acc);
}

/* one row, the vector columns [j, nv) */
static void gemm_row(float *C, const float *A, const float *B, int ldb, int K, bool acc, int j, int nv) {
    for (; j + 4 * VL <= nv; j += 4 * VL)
        gemm_1x4(C + j, A, B + j, ldb, K, acc);
    for (; j < nv; j += VL)
        gemm_1x1(C + j, A, B + j, ldb, K, acc);
}

static void k_gemm_nn(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
                      bool acc) {
    const int nv = N / VL * VL; /* columns the vector code covers */
    int i = 0;
    for (; i + 4 <= M; i += 4) {
        int j = 0;
        for (; j + GEMM_NB * VL <= nv; j += GEMM_NB * VL)
            gemm_4xnb(C + (size_t)i * ldc + j, ldc, A + (size_t)i * lda, lda, B + j, ldb, K, acc);
        for (int r = 0; r < 4 && j < nv; r++)
            gemm_row(C + (size_t)(i + r) * ldc, A + (size_t)(i + r) * lda, B, ldb, K, acc, j, nv);
    }
    for (; i < M; i++)
        gemm_row(C + (size_t)i * ldc, A + (size_t)i * lda, B, ldb, K, acc, 0, nv);
    for (int r = 0; r < M && nv < N; r++) /* column tail */
        for (int j = nv; j < N; j++) {
            float s = acc ? C[(size_t)r * ldc + j] : 0.0f;
            for (int k = 0; k < K; k++)
                s += A[(size_t)r * lda + k] * B[(size_t)k * ldb + j];
            C[(size_t)r * ldc + j] = s;
        }
}

/* ---- the GDN decode step's passes over its state (simd.h st2, decay_rank1) ---- */

#ifndef ST_CB
#define ST_CB 4 /* column vectors per walk down the rows: 2 * ST_CB accumulators in registers */
#endif

/* columns j .. j + NB*VL - 1 of u and w: the rows in order, one FMA chain per
 * output column from zero (gemm_1x1's order) */
#define ST2_BLOCK(NB)                                                                                     \
    do {                                                                                                  \
        V a[NB], b[NB];                                                                                   \
        for (int c = 0; c < (NB); c++)                                                                    \
            a[c] = b[c] = V_ZERO();                                                                       \
        for (int i = 0; i < dk; i++) {                                                                    \
            const V ki = V_SET1(k[i]), qi = V_SET1(q[i]);                                                 \
            const float *row = S + (size_t)i * dv + j;                                                    \
            for (int c = 0; c < (NB); c++) {                                                              \
                const V s = V_LOADU(row + c * VL);                                                        \
                a[c] = V_FMA(ki, s, a[c]);                                                                \
                b[c] = V_FMA(qi, s, b[c]);                                                                \
            }                                                                                             \
        }                                                                                                 \
        for (int c = 0; c < (NB); c++) {                                                                  \
            V_STOREU(u + j + c * VL, a[c]);                                                               \
            V_STOREU(w + j + c * VL, b[c]);                                                               \
        }                                                                                                 \
    } while (0)

static void k_st2(float *u, float *w, const float *S, const float *k, const float *q, int dk, int dv) {
    const int nv = dv / VL * VL;
    int j = 0;
    for (; j + ST_CB * VL <= nv; j += ST_CB * VL)
        ST2_BLOCK(ST_CB);
    for (; j < nv; j += VL)
        ST2_BLOCK(1);
    for (; j < dv; j++) { /* column tail, as gemm_nn's */
        float su = 0.0f, sw = 0.0f;
        for (int i = 0; i < dk; i++) {
            su += k[i] * S[(size_t)i * dv + j];
            sw += q[i] * S[(size_t)i * dv + j];
        }
        u[j] = su;
        w[j] = sw;
    }
}

/* per row: s * decay, then + k[i] d (k_axpy's FMA and tail) */
static void k_decay_rank1(float *S, int dk, int dv, float decay, const float *k, const float *d) {
    const V dc = V_SET1(decay);
    for (int i = 0; i < dk; i++) {
        float *row = S + (size_t)i * dv;
        const V ki = V_SET1(k[i]);
        int j = 0;
        for (; j + VL <= dv; j += VL)
            V_STOREU(row + j, V_FMA(ki, V_LOADU(d + j), V_MUL(V_LOADU(row + j), dc)));
        for (; j < dv; j++) {
            row[j] *= decay;
            row[j] += k[i] * d[j];
        }
    }
}

/* ---- activations: exp in registers (simd.h silu, swiglu, sigmoid_mul, exp_sub) ---- */

/* exp(x): x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (ln2 in two
 * parts, so n ln2 is exact enough for |n| <= 150), e^r from its Taylor series to
 * r^7 (truncation 5e-9 relative, under a tenth of an ulp) by Horner's rule,
 * then scaled by 2^n. x is first clamped to [-104, 89]: past those ends expf
 * gives 0 and +inf, and so does the scaling; NaN stays NaN. Within a few ulp
 * of expf everywhere (test_cpu_ops measures it). */
AI V v_exp(V x) {
    const V xc = V_MIN(V_SET1(89.0f), V_MAX(V_SET1(-104.0f), x));
    const V n = V_ROUND(V_MUL(xc, V_SET1(1.44269504088896341f)));
    V r = V_FMA(n, V_SET1(-0.693359375f), xc);
    r = V_FMA(n, V_SET1(2.12194440e-4f), r);
    V p = V_SET1(1.0f / 5040.0f);
    p = V_FMA(p, r, V_SET1(1.0f / 720.0f));
    p = V_FMA(p, r, V_SET1(1.0f / 120.0f));
    p = V_FMA(p, r, V_SET1(1.0f / 24.0f));
    p = V_FMA(p, r, V_SET1(1.0f / 6.0f));
    p = V_FMA(p, r, V_SET1(0.5f));
    p = V_FMA(p, r, V_SET1(1.0f));
    p = V_FMA(p, r, V_SET1(1.0f));
    return V_LDEXP(p, n);
}

/* x / (1 + exp(-x)) and 1 / (1 + exp(-x)): the reference's formulas (cpu.h) */
AI V v_silu(V x) { return V_DIV(x, V_ADD(V_SET1(1.0f), v_exp(V_SUB(V_ZERO(), x)))); }
AI V v_sigmoid(V x) { return V_DIV(V_SET1(1.0f), V_ADD(V_SET1(1.0f), v_exp(V_SUB(V_ZERO(), x)))); }

/* The last m < VL elements of a [m] into a zero-padded vector: tails take the
 * same arithmetic as whole vectors. */
AI V load_tail(const float *a, int m) {
    float t[VL] = {0};
    for (int i = 0; i < m; i++)
        t[i] = a[i];
    return V_LOADU(t);
}

AI void store_tail(float *y, V v, int m) {
    float t[VL];
    V_STOREU(t, v);
    for (int i = 0; i < m; i++)
        y[i] = t[i];
}

static void k_silu(float *y, const float *x, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL)
        V_STOREU(y + i, v_silu(V_LOADU(x + i)));
    if (i < n)
        store_tail(y + i, v_silu(load_tail(x + i, n - i)), n - i);
}

static void k_swiglu(float *y, const float *g, const float *u, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL)
        V_STOREU(y + i, V_MUL(v_silu(V_LOADU(g + i)), V_LOADU(u + i)));
    if (i < n)
        store_tail(y + i, V_MUL(v_silu(load_tail(g + i, n - i)), load_tail(u + i, n - i)), n - i);
}

static void k_sigmoid_mul(float *x, const float *g, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL)
        V_STOREU(x + i, V_MUL(V_LOADU(x + i), v_sigmoid(V_LOADU(g + i))));
    if (i < n)
        store_tail(x + i, V_MUL(load_tail(x + i, n - i), v_sigmoid(load_tail(g + i, n - i))), n - i);
}

/* one vector of conv_silu's sums at element i, m lanes (m < VL: the tail,
 * a constant VL otherwise): V_MUL then V_ADD, never an FMA */
AI V conv_sum(const float *w, size_t ldw, const float *const *x, int K, int i, int m) {
    V s = V_ZERO();
    for (int j = 0; j < K; j++) {
        const float *wj = w + (size_t)j * ldw + i, *xj = x[j] + i;
        s = V_ADD(s, V_MUL(m < VL ? load_tail(wj, m) : V_LOADU(wj), m < VL ? load_tail(xj, m) : V_LOADU(xj)));
    }
    return s;
}

static void k_conv_silu(float *y, const float *w, int ldw, const float *const *x, int K, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL)
        V_STOREU(y + i, v_silu(conv_sum(w, (size_t)ldw, x, K, i, VL)));
    if (i < n)
        store_tail(y + i, v_silu(conv_sum(w, (size_t)ldw, x, K, i, n - i)), n - i);
}

static void k_exp_sub(float *y, const float *x, float m, int n) {
    const V mv = V_SET1(m);
    int i = 0;
    for (; i + VL <= n; i += VL)
        V_STOREU(y + i, v_exp(V_SUB(V_LOADU(x + i), mv)));
    if (i < n)
        store_tail(y + i, v_exp(V_SUB(load_tail(x + i, n - i), mv)), n - i);
}
