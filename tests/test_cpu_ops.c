/* tests/test_cpu_ops.c - the fast CPU backend against the scalar reference.
 *
 * Every slot the fast backend replaces is run on random inputs with odd
 * sizes (not multiples of any vector width), F32 / F16 / BF16 weights, 1 and
 * 3 threads, once per SIMD level this CPU runs (dr_simd_force caps the
 * level), and compared with dr_ops_cpu_ref(); the optional slots
 * (matmul_n, gdn_decode, add_rmsnorm) against the reference chain they
 * replace. The error printed is
 * max |fast - ref| / max(1, max |ref|). Then the golden fixtures are run
 * through the fast backend with 3 threads (dr_model_load_ex).
 */
#include "golden_util.h"
#include "model/model.h"
#include "ops/cpu/amx.h"
#include "ops/cpu/cpu.h"
#include "ops/cpu/quant.h"
#include "ops/cpu/simd.h"
#include "quant/quant.h"
#include "test.h"
#include "util/argmax.h"
#include "util/hugemem.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TOL 2e-5f      /* fp32 kernels: only the summation order differs */
#define TOL_BF16X2 2e-4f /* vdpbf16ps with x split into two bf16 halves */
#define TOL_AMX 1e-6f    /* BF16 matmuls of 8+ tokens: fp32 numerics, x in three bf16 parts on the AMX tiles;
                            measured <= 3.5e-7; with two parts 1.9e-6 .. 2.8e-6 */
#define TOL_GOLDEN 1e-3f
#define TOL_ACT 5e-7f  /* activations: about 4 ulp, the vector tables' exp polynomial (simd_impl.h v_exp) */

static uint64_t g_rng = 42;
static float frand(void) { /* uniform [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) / 8388608.0f - 1.0f;
}
static float *rnd(size_t n, float amp) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = frand() * amp;
    return p;
}
static float *dup(const float *x, size_t n) {
    float *p = malloc(n * sizeof *p);
    memcpy(p, x, n * sizeof *p);
    return p;
}

static float rel_err(const float *a, const float *ref, size_t n) {
    float md = 0.0f, mx = 1.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - ref[i]);
        if (!(d <= md)) /* NaN counts as infinite (as golden_util.h's max_abs_diff), so fmaxf keeps it */
            md = isnan(d) ? INFINITY : d;
        mx = fabsf(ref[i]) > mx ? fabsf(ref[i]) : mx;
    }
    return md / mx;
}

/* A random matrix [rows, cols] of dtype dt (F16 built from random bits in a safe range). */
static dr_tensor mat(dr_dtype dt, int rows, int cols, void **buf) {
    dr_tensor t = {.name = "test", .dtype = dt, .ndim = 2, .ne = {rows, cols}};
    size_t n = (size_t)rows * cols;
    *buf = malloc(n * dr_dtype_size(dt) + 1);
    unsigned char *p = (unsigned char *)*buf + 1; /* odd address: weights may be unaligned */
    for (size_t i = 0; i < n; i++) {
        float v = frand() * 0.5f;
        if (dt == DR_DT_F32)
            memcpy(p + 4 * i, &v, 4);
        else {
            uint16_t h = dt == DR_DT_BF16 ? dr_f32_to_bf16(v)
                                          : (uint16_t)(((g_rng & 1) << 15) | ((10 + g_rng % 5) << 10) | ((g_rng >> 8) & 0x3ff));
            frand();
            memcpy(p + 2 * i, &h, 2);
        }
    }
    t.data = p;
    return t;
}

static const char *g_cfg; /* "level/threads" label of the current run */

static void show(const char *what, float e, float tol) { CHECK_SHOW(e <= tol, "%-34s %-16s err %.2e (tol %.0e)", what, g_cfg, e, tol); }

/* ===================== kernels ===================== */

/* matmul_n over weights of which some share their prepared x (fast_matmul.c
 * same_scratch): q4 gs 32 twice, bf16 twice (one split of x, on a backend
 * made with the vdpbf16ps GEMV), and q4 gs 64 and q8 gs 32 of the same row
 * length, which must not share it.
 * Every output must equal the single matmul's bit for bit. */
static void t_matmul_n_shared(dr_ops *f) {
    const int n = 256, ds[4] = {37, 19, 23, 11};
    void *src[4], *own[4] = {NULL, NULL, NULL, NULL};
    static const int bits[3][4] = {{4, 4, 4, 8}, {0, 0, 4, 4}, {4, 0, 4, 0}};
    static const int gss[3][4] = {{32, 32, 64, 32}, {0, 0, 32, 32}, {32, 0, 64, 0}};
    for (int set = 0; set < 3; set++) {
        dr_tensor w[4];
        const dr_tensor *ws[4];
        for (int i = 0; i < 4; i++) {
            dr_tensor b = mat(DR_DT_BF16, ds[i], n, &src[i]);
            w[i] = b;
            if (bits[set][i])
                CHECK(dr_quantize(&b, bits[set][i], gss[set][i], &w[i], &own[i]) == DR_OK, "quantize: %s",
                      dr_last_error());
            ws[i] = &w[i];
        }
        float e = 0.0f;
        for (int T = 1; T <= 2; T++) {
            float *x = rnd((size_t)T * n, 1.0f), *ys[4], *y1[4];
            for (int i = 0; i < 4; i++)
                ys[i] = calloc((size_t)T * ds[i], 4), y1[i] = calloc((size_t)T * ds[i], 4);
            f->matmul_n(f->ctx, 4, ys, x, ws, T);
            for (int i = 0; i < 4; i++) {
                f->matmul(f->ctx, y1[i], x, ws[i], T);
                e = fmaxf(e, rel_err(ys[i], y1[i], (size_t)T * ds[i]));
                free(ys[i]), free(y1[i]);
            }
            free(x);
        }
        char what[64];
        snprintf(what, sizeof what, "matmul_n shared x, set %d = matmul", set);
        show(what, e, 0.0f);
        for (int i = 0; i < 4; i++) {
            free(src[i]), free(own[i]);
            own[i] = NULL;
        }
    }
}

static void t_matmul(dr_ops *f, dr_ops *r) {
    const dr_dtype dts[] = {DR_DT_F32, DR_DT_F16, DR_DT_BF16};
    const int Ts[] = {1, 3, 5, 13};
    for (int di = 0; di < 3; di++)
        for (int ti = 0; ti < 4; ti++) {
            const int d = 37, n = 77, T = Ts[ti];
            void *buf;
            dr_tensor w = mat(dts[di], d, n, &buf);
            float *x = rnd((size_t)T * n, 1.0f), *y = calloc((size_t)T * d, 4), *yr = calloc((size_t)T * d, 4);
            f->matmul(f->ctx, y, x, &w, T);
            r->matmul(r->ctx, yr, x, &w, T);
            char what[64];
            snprintf(what, sizeof what, "matmul %s [37,77] T=%d", dr_dtype_name(dts[di]), T);
            show(what, rel_err(y, yr, (size_t)T * d), TOL);
            free(buf), free(x), free(y), free(yr);
        }
}

/* BF16 weights with 8 or more tokens (DR_AMX_MIN_T): the AMX tiles where this CPU has
 * them (ops/cpu/amx.h), else the fp32 tiles; either way fp32 numerics, so
 * TOL. Rows not a multiple of 16 or 32 (the fp32 path takes the last ones),
 * token counts not a multiple of 16 or 32, and two weights sharing one
 * prepared x through matmul_n (each output equal to its single matmul). */
static void t_matmul_amx(dr_ops *f, dr_ops *r) {
    static const struct { int d, n, T; } cases[] = {{16, 32, 16}, {48, 320, 17}, {50, 320, 40}, {101, 64, 64},
                                                    {32, 1024, 33}, {40, 96, 9}};
    const char *path = dr_amx_enabled() ? "amx" : "no amx: fp32";
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int d = cases[c].d, n = cases[c].n, T = cases[c].T;
        void *b1, *b2;
        dr_tensor w1 = mat(DR_DT_BF16, d, n, &b1), w2 = mat(DR_DT_BF16, d + 3, n, &b2);
        float *x = rnd((size_t)T * n, 1.0f), *y = calloc((size_t)T * d, 4), *yr = calloc((size_t)T * d, 4);
        float *ys[2] = {calloc((size_t)T * d, 4), calloc((size_t)T * (d + 3), 4)}, *y2 = calloc((size_t)T * (d + 3), 4);
        const dr_tensor *ws[2] = {&w1, &w2};
        f->matmul(f->ctx, y, x, &w1, T);
        r->matmul(r->ctx, yr, x, &w1, T);
        f->matmul(f->ctx, y2, x, &w2, T);
        f->matmul_n(f->ctx, 2, ys, x, ws, T);
        char what[80];
        snprintf(what, sizeof what, "matmul BF16 [%d,%d] T=%d (%s)", d, n, T, path);
        show(what, rel_err(y, yr, (size_t)T * d), TOL_AMX);
        snprintf(what, sizeof what, "matmul_n 2 BF16 n=%d T=%d = matmul", n, T);
        show(what, fmaxf(rel_err(ys[0], y, (size_t)T * d), rel_err(ys[1], y2, (size_t)T * (d + 3))), 0.0f);
        free(b1), free(b2), free(x), free(y), free(yr), free(ys[0]), free(ys[1]), free(y2);
    }
}

/* max |y - ref| / sum_i |w_i x_i| over T x d outputs, w dequantized (the
 * scale of the rounding any fp32 dot product of w and x carries). */
static double q_rel_err(const float *y, const float *ref, const float *x, const dr_tensor *q, int T) {
    const int64_t d = q->ne[0], n = q->ne[1];
    double worst = 0.0;
    for (int t = 0; t < T; t++)
        for (int64_t r = 0; r < d; r++) {
            double a = 0.0;
            for (int64_t i = 0; i < n; i++)
                a += fabs((double)dr_q_get(q, r, i) * x[(size_t)t * n + i]);
            double e = fabs((double)y[t * d + r] - ref[t * d + r]) / (a > 0.0 ? a : 1.0);
            if (!(e <= worst)) /* NaN counts */
                worst = e;
        }
    return worst;
}

/* MLX-quantized weights: decode (prepared x, threaded GEMV) and prefill
 * (row blocks dequantized once, fp32 tiles) against the reference backend
 * forced to the element-by-element scalar kernel (dequantize-then-fp32), at
 * every quantized kernel level this CPU runs (dr_cpu_quant_set_level; the
 * avx512bf16 level's 4-bit GEMV has its own x layout and tails). Shapes:
 * rows not a multiple of the 4-row passes, rows whose length is not a
 * multiple of 128 (a short last block), one shorter than 128, and more than
 * 16 groups (a second group window). Error relative to sum |w x|, tol 1e-5. */
static void t_matmul_q(dr_ops *f, dr_ops *r) {
    static const struct { int d, n, gs; } sh[] = {{37, 320, 32}, {37, 320, 64}, {13, 416, 32}, {9, 2176, 64},
                                                   {6, 640, 128}, {5, 96, 32},  {3, 1152, 128}};
    const int Ts[] = {1, 2, 5, 13};
    for (int lv = 0; lv < DR_QLEVEL_COUNT; lv++) {
        if (dr_cpu_quant_set_level(lv) != lv)
            continue;
        double worst[2] = {0.0, 0.0}; /* decode (T = 1), prefill */
        int cases = 0;
        for (int bits = 4; bits <= 8; bits += 4)
            for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
                for (int ti = 0; ti < 4; ti++) {
                    const int d = sh[s].d, n = sh[s].n, T = Ts[ti];
                    void *buf, *own;
                    dr_tensor w = mat(DR_DT_BF16, d, n, &buf), q;
                    CHECK(dr_quantize(&w, bits, sh[s].gs, &q, &own) == DR_OK, "quantize: %s", dr_last_error());
                    float *x = rnd((size_t)T * n, 1.0f), *y = calloc((size_t)T * d, 4), *yr = calloc((size_t)T * d, 4);
                    dr_cpu_quant_set_level(DR_QLEVEL_SCALAR);
                    r->matmul(r->ctx, yr, x, &q, T);
                    dr_cpu_quant_set_level(lv);
                    f->matmul(f->ctx, y, x, &q, T);
                    double e = q_rel_err(y, yr, x, &q, T);
                    worst[T > 1] = e > worst[T > 1] || e != e ? e : worst[T > 1];
                    cases++;
                    free(buf), free(own), free(x), free(y), free(yr);
                }
        char what[64];
        snprintf(what, sizeof what, "matmul q4/q8 %s decode (%d)", dr_cpu_quant_level_name(lv), cases / 4);
        show(what, (float)worst[0], 1e-5f);
        snprintf(what, sizeof what, "matmul q4/q8 %s T=2,5,13", dr_cpu_quant_level_name(lv));
        show(what, (float)worst[1], 1e-5f);
    }
    dr_cpu_quant_set_level(-1);
}

/* The fast backend's weight_upload of 4- and 8-bit weights: a copy on 2 MiB
 * pages (in the decode layout at level avx512vnni), the source bytes
 * untouched (a mapped file's pages stay clean), the same products as the
 * reference within the quantized kernels' tolerance; and with
 * DR_CPU_HUGE_WEIGHTS=0 no copy (=1: a copy whether or not this machine
 * has transparent huge pages, which the default asks for). */
static void t_upload(dr_ops *r) {
    g_cfg = "2t";
    for (int huge = 0; huge <= 1; huge++)
        for (int bits = 4; bits <= 8; bits += 4) {
            setenv("DR_CPU_HUGE_WEIGHTS", huge ? "1" : "0", 1);
            dr_backend_params bp = {.n_threads = 2};
            dr_ops *f = NULL;
            CHECK(dr_ops_cpu_create(&bp, &f) == DR_OK, "create: %s", dr_last_error());
            void *buf, *own;
            const int d = 48, n = 256, T = 1;
            dr_tensor w = mat(DR_DT_BF16, d, n, &buf), q;
            CHECK(dr_quantize(&w, bits, 64, &q, &own) == DR_OK, "quantize: %s", dr_last_error());
            const size_t pk = (size_t)d * n * bits / 8, sb = (size_t)d * (n / 64) * dr_dtype_size(q.q.sb_dtype);
            unsigned char *before = malloc(pk + 2 * sb);
            memcpy(before, q.data, pk);
            memcpy(before + pk, q.q.scales, sb);
            memcpy(before + pk + sb, q.q.biases, sb);
            float *x = rnd((size_t)T * n, 1.0f), *y = calloc((size_t)d, 4), *yr = calloc((size_t)d, 4);
            r->matmul(r->ctx, yr, x, &q, T); /* before: without a copy the upload rearranges q's bytes */
            dr_tensor up = q;
            CHECK(f->weight_upload(f->ctx, &up) == DR_OK, "upload: %s", dr_last_error());
            const bool moved = up.data != q.data && up.q.scales != q.q.scales && up.q.biases != q.q.biases;
            const bool vnni = dr_cpu_quant_level() == DR_QLEVEL_AVX512_VNNI;
            CHECK_SHOW(moved == (huge == 1) && (!moved || ((uintptr_t)up.data & 63) == 0),
                       "upload q%d huge=%d: %s", bits, huge, moved ? "a copy, 64-byte aligned" : "no copy");
            if (huge) /* without a copy the decode layout is made in place */
                CHECK_SHOW(!memcmp(before, q.data, pk) && !memcmp(before + pk, q.q.scales, sb) &&
                               !memcmp(before + pk + sb, q.q.biases, sb),
                           "upload q%d: the source bytes unchanged", bits);
            CHECK_SHOW(!up.q.tiled_rows == !vnni, "upload q%d huge=%d: decode layout %s (level %s)", bits, huge,
                       up.q.tiled_rows ? "on" : "off", dr_cpu_quant_level_name(dr_cpu_quant_level()));
            f->matmul(f->ctx, y, x, &up, T);
            char what[64];
            snprintf(what, sizeof what, "matmul q%d after upload huge=%d", bits, huge);
            show(what, (float)q_rel_err(y, yr, x, &q, T), 1e-5f);
            f->destroy(f);
            free(buf), free(own), free(before), free(x), free(y), free(yr);
        }
    unsetenv("DR_CPU_HUGE_WEIGHTS");
}

/* dr_arena: 64-byte aligned blocks that don't overlap, one larger than a
 * chunk, all freed at once (ASan checks the frees). */
static void t_arena(void) {
    dr_arena a = {.chunk_bytes = (size_t)4 << 20};
    const size_t sizes[] = {1, 63, 64, 100000, (size_t)3 << 20, (size_t)9 << 20, 7, (size_t)2 << 20};
    unsigned char *p[8];
    bool ok = true;
    for (int i = 0; i < 8; i++) {
        p[i] = dr_arena_alloc(&a, sizes[i]);
        ok = ok && p[i] && ((uintptr_t)p[i] & 63) == 0;
        if (p[i])
            memset(p[i], i + 1, sizes[i]);
    }
    for (int i = 0; i < 8 && ok; i++)
        for (size_t k = 0; k < sizes[i]; k += 4093)
            ok = ok && p[i][k] == i + 1 && p[i][sizes[i] - 1] == i + 1;
    dr_arena_free(&a);
    CHECK_SHOW(ok && !a.head, "arena: 8 blocks of 1 B .. 9 MiB (chunks of 4 MiB), aligned and separate");
}

/* MLX-quantized weights with several tokens: the AMX tiles where this CPU
 * has them (q exact in bf16 on the tiles, scales and biases in fp32: the
 * decode GEMVs' split form), else the dequantized fp32 tiles; and, for a
 * tensor in the decode layout at level avx512vnni, the multi-token GEMV up
 * to 32 tokens (64 without AMX). Against the element-by-element reference,
 * to 1e-5 of sum |w x| as t_matmul_q. Rows not a multiple of 16 or 32,
 * token counts not a multiple of 4, 16 or 32, group sizes 32 / 64 / 128,
 * file order and the decode layout. */
static void t_matmul_amx_q(dr_ops *f, dr_ops *r) {
    static const struct { int d, n, gs, T; } sh[] = {{37, 320, 32, 17}, {48, 320, 64, 40},  {16, 1024, 128, 16},
                                                     {101, 640, 64, 33}, {50, 2176, 64, 20}, {33, 256, 32, 8},
                                                     {29, 192, 64, 3},   {64, 512, 32, 2},   {20, 256, 128, 5},
                                                     {70, 384, 64, 64}};
    double worst = 0.0;
    int cases = 0;
    for (int bits = 4; bits <= 8; bits += 4)
        for (size_t c = 0; c < sizeof sh / sizeof sh[0]; c++)
            for (int tiled = 0; tiled < 2; tiled++) {
                const int d = sh[c].d, n = sh[c].n, T = sh[c].T;
                void *buf, *own;
                dr_tensor w = mat(DR_DT_BF16, d, n, &buf), q;
                CHECK(dr_quantize(&w, bits, sh[c].gs, &q, &own) == DR_OK, "quantize: %s", dr_last_error());
                if (tiled)
                    CHECK(dr_cpu_q_tile(&q, SIZE_MAX) > 0, "tile [%d, %d]", d, n);
                float *x = rnd((size_t)T * n, 1.0f), *y = calloc((size_t)T * d, 4), *yr = calloc((size_t)T * d, 4);
                dr_cpu_quant_set_level(DR_QLEVEL_SCALAR);
                r->matmul(r->ctx, yr, x, &q, T);
                dr_cpu_quant_set_level(-1);
                f->matmul(f->ctx, y, x, &q, T);
                const double e = q_rel_err(y, yr, x, &q, T);
                worst = e > worst || e != e ? e : worst;
                cases++;
                free(buf), free(own), free(x), free(y), free(yr);
            }
    char what[80];
    snprintf(what, sizeof what, "matmul q4/q8 T 2..64 (%d, %s%s)", cases, dr_amx_enabled() ? "amx" : "no amx: fp32",
             dr_cpu_quant_level() == DR_QLEVEL_AVX512_VNNI ? ", multi-token GEMV" : "");
    show(what, (float)worst, 1e-5f);
}

static void t_attention(dr_ops *f, dr_ops *r) {
    /* GQA groups of 1-12 query heads (the fast backend serves up to 8 from
       one read of the kv head's rows, so 12 takes two pieces), caches split
       into segments (T = 1, 512 keys and more) or not; blocks of tokens
       read the cache together (up to 8 a task, the last block partial) */
    struct { int T, pos0, nH, nKV, hd; } cs[] = {{5, 3, 4, 2, 24},     {1, 700, 2, 1, 20},  {33, 0, 3, 3, 17},
                                                {1, 1500, 8, 2, 64}, {1, 300, 16, 2, 32}, {1, 900, 24, 2, 16},
                                                {7, 600, 6, 2, 40},  {21, 650, 8, 2, 48}, {13, 1000, 24, 2, 16}};
    for (int c = 0; c < (int)(sizeof cs / sizeof cs[0]); c++) {
        const int T = cs[c].T, n_ctx = cs[c].pos0 + T, nH = cs[c].nH, nKV = cs[c].nKV, hd = cs[c].hd;
        float *q = rnd((size_t)T * nH * hd, 1.0f), *kc = rnd((size_t)n_ctx * nKV * hd, 1.0f);
        float *vc = rnd((size_t)n_ctx * nKV * hd, 1.0f), *ws = malloc((size_t)n_ctx * 4);
        float *o = calloc((size_t)T * nH * hd, 4), *orf = calloc((size_t)T * nH * hd, 4);
        f->attention(f->ctx, o, q, kc, vc, T, cs[c].pos0, nH, nKV, hd, 0.3f, ws);
        r->attention(r->ctx, orf, q, kc, vc, T, cs[c].pos0, nH, nKV, hd, 0.3f, ws);
        char what[64];
        snprintf(what, sizeof what, "attention T=%d pos0=%d nH=%d/%d", T, cs[c].pos0, nH, nKV);
        show(what, rel_err(o, orf, (size_t)T * nH * hd), TOL);
        free(q), free(kc), free(vc), free(ws), free(o), free(orf);
    }
}

/* RoPE on token blocks (a partial last one), partial rotation, a late
 * position: the reference's values exactly (same angles, cosf / sinf). */
static void t_rope(dr_ops *f, dr_ops *r) {
    const int T = 37, nH = 3, hd = 40, d_rot = 24, pos0 = 1000;
    float *x = rnd((size_t)T * nH * hd, 1.0f), *xr = dup(x, (size_t)T * nH * hd);
    f->rope(f->ctx, x, T, nH, hd, d_rot, pos0, 1e7f);
    r->rope(r->ctx, xr, T, nH, hd, d_rot, pos0, 1e7f);
    show("rope T=37 pos0=1000 d_rot=24/40", rel_err(x, xr, (size_t)T * nH * hd), 0.0f);
    free(x), free(xr);
}

static void t_conv(dr_ops *f, dr_ops *r) {
    const int cs[][2] = {{3, 37}, {45, 2001}};
    for (int c = 0; c < 2; c++) {
        const int T = cs[c][0], C = cs[c][1], K = 4;
        float *m = rnd((size_t)T * C, 1.0f), *w = rnd((size_t)C * K, 0.5f), *st = rnd((size_t)K * C, 1.0f);
        float *st2 = dup(st, (size_t)K * C), *o = malloc((size_t)T * C * 4), *orf = malloc((size_t)T * C * 4);
        f->gdn_conv(f->ctx, o, m, st, w, T, C, K);
        r->gdn_conv(r->ctx, orf, m, st2, w, T, C, K);
        char what[64];
        snprintf(what, sizeof what, "gdn_conv T=%d C=%d (+state)", T, C);
        show(what, fmaxf(rel_err(o, orf, (size_t)T * C), rel_err(st, st2, (size_t)K * C)), TOL);
        free(m), free(w), free(st), free(st2), free(o), free(orf);
    }
}

/* recurrent (T tokens) or chunked, from a non-zero state; Hv > Hk, dk != dv.
 * decay: the log-decays g are -|N(0, 0.5)| * decay; at 40 the decay between
 * a chunk's first and last tokens is far below FLT_MIN (exp underflows, and
 * the fast backend flushes subnormals there: fast_gdn.c chunk_task). */
static void t_gdn(dr_ops *f, dr_ops *r, bool chunked, int T, float decay) {
    const dr_gdn_dims d = {2, 4, 16, 24};
    const int C = 2 * d.n_k_heads * d.d_k + d.n_v_heads * d.d_v, Hv = d.n_v_heads;
    const size_t sn = (size_t)Hv * d.d_k * d.d_v, on = (size_t)T * Hv * d.d_v;
    float *qkv = rnd((size_t)T * C, 1.0f), *beta = rnd((size_t)T * Hv, 0.5f), *g = rnd((size_t)T * Hv, 0.5f);
    for (int i = 0; i < T * Hv; i++)
        beta[i] = 0.5f + beta[i], g[i] = -fabsf(g[i]) * decay;
    float *st = rnd(sn, 0.3f), *st2 = dup(st, sn), *o = malloc(on * 4), *orf = malloc(on * 4);
    float *ws = malloc(dr_gdn_ws_floats(&d) * 4);
    if (chunked) {
        f->gdn_chunked(f->ctx, o, qkv, beta, g, st, &d, T, ws);
        r->gdn_chunked(r->ctx, orf, qkv, beta, g, st2, &d, T, ws);
    } else {
        f->gdn_recurrent(f->ctx, o, qkv, beta, g, st, &d, T, ws);
        r->gdn_recurrent(r->ctx, orf, qkv, beta, g, st2, &d, T, ws);
    }
    char what[64];
    snprintf(what, sizeof what, "gdn_%s T=%d g*%g out", chunked ? "chunked" : "recurrent", T, decay);
    show(what, rel_err(o, orf, on), TOL);
    snprintf(what, sizeof what, "gdn_%s T=%d g*%g fp32 state", chunked ? "chunked" : "recurrent", T, decay);
    show(what, rel_err(st, st2, sn), TOL);
    free(qkv), free(beta), free(g), free(st), free(st2), free(o), free(orf), free(ws);
}

/* matmul_n: mixed weights (F32, BF16, q4, q8) sharing x in one parallel
 * loop; each output equal to the fast single matmul (0) and to the reference. */
static void t_matmul_n(dr_ops *f, dr_ops *r) {
    const int Ts[] = {1, 2, 5};
    const int n = 320, ds[4] = {37, 5, 131, 1};
    void *bufs[4], *own[2];
    dr_tensor w[4];
    w[0] = mat(DR_DT_F32, ds[0], n, &bufs[0]);
    w[1] = mat(DR_DT_BF16, ds[1], n, &bufs[1]);
    dr_tensor b2 = mat(DR_DT_BF16, ds[2], n, &bufs[2]), b3 = mat(DR_DT_BF16, ds[3], n, &bufs[3]);
    CHECK(dr_quantize(&b2, 4, 32, &w[2], &own[0]) == DR_OK, "quantize: %s", dr_last_error());
    CHECK(dr_quantize(&b3, 8, 64, &w[3], &own[1]) == DR_OK, "quantize: %s", dr_last_error());
    for (int ti = 0; ti < 3; ti++)
        for (int nw = 2; nw <= 4; nw++) {
            const int T = Ts[ti];
            float *x = rnd((size_t)T * n, 1.0f), *ys[4], *y1[4], *yr[4];
            const dr_tensor *ws[4] = {&w[0], &w[1], &w[2], &w[3]};
            for (int i = 0; i < nw; i++) {
                ys[i] = calloc((size_t)T * ds[i], 4), y1[i] = calloc((size_t)T * ds[i], 4);
                yr[i] = calloc((size_t)T * ds[i], 4);
            }
            f->matmul_n(f->ctx, nw, ys, x, ws, T);
            float e_same = 0.0f, e_ref = 0.0f, e_ref16 = 0.0f;
            for (int i = 0; i < nw; i++) {
                f->matmul(f->ctx, y1[i], x, ws[i], T);
                dr_cpu_quant_set_level(DR_QLEVEL_SCALAR);
                r->matmul(r->ctx, yr[i], x, ws[i], T);
                dr_cpu_quant_set_level(-1);
                e_same = fmaxf(e_same, rel_err(ys[i], y1[i], (size_t)T * ds[i]));
                float e = rel_err(ys[i], yr[i], (size_t)T * ds[i]);
                if (i == 1)
                    e_ref16 = e;
                else
                    e_ref = fmaxf(e_ref, e);
            }
            char what[64];
            snprintf(what, sizeof what, "matmul_n %d w T=%d = matmul", nw, T);
            show(what, e_same, 0.0f);
            snprintf(what, sizeof what, "matmul_n %d w T=%d f32/q vs ref", nw, T);
            show(what, e_ref, TOL);
            snprintf(what, sizeof what, "matmul_n %d w T=%d bf16 vs ref", nw, T);
            show(what, e_ref16, TOL_BF16X2);
            for (int i = 0; i < nw; i++)
                free(ys[i]), free(y1[i]), free(yr[i]);
            free(x);
        }
    for (int i = 0; i < 4; i++)
        free(bufs[i]);
    free(own[0]), free(own[1]);
}

/* gdn_decode (fused step) against the reference chain gdn_conv, gdn_gates,
 * gdn_recurrent, gated_rmsnorm over several consecutive tokens: output,
 * fp32 state and conv state. K: the conv kernel (the models' 4 has its own
 * unrolled loop in the fast backend). */
static void t_gdn_decode(dr_ops *f, dr_ops *r, dr_gdn_dims d, int K) {
    const int steps = 3, Hv = d.n_v_heads, dv = d.d_v;
    const int C = 2 * d.n_k_heads * d.d_k + Hv * dv;
    const size_t sn = (size_t)Hv * d.d_k * dv, vn = (size_t)Hv * dv;
    float *st = rnd(sn, 0.3f), *st2 = dup(st, sn), *cs = rnd((size_t)K * C, 1.0f), *cs2 = dup(cs, (size_t)K * C);
    float *cw = rnd((size_t)C * K, 0.5f), *A_log = rnd((size_t)Hv, 1.0f), *dt = rnd((size_t)Hv, 1.0f);
    float *nw = rnd((size_t)dv, 1.0f), *ws = malloc(dr_gdn_ws_floats(&d) * 4);
    float *qkv = malloc((size_t)C * 4), *beta = malloc((size_t)Hv * 4), *g = malloc((size_t)Hv * 4);
    float *o = malloc(vn * 4), *y = malloc(vn * 4), *yr = malloc(vn * 4);
    float e_y = 0.0f;
    for (int s = 0; s < steps; s++) {
        float *raw = rnd((size_t)C, 2.0f), *z = rnd(vn, 2.0f), *b = rnd((size_t)Hv, 2.0f), *a = rnd((size_t)Hv, 3.0f);
        if (s == 1)
            a[0] = 25.0f; /* softplus above its threshold */
        f->gdn_decode(f->ctx, y, raw, z, b, a, cs, st, cw, K, A_log, dt, nw, &d, 1e-6f);
        r->gdn_conv(r->ctx, qkv, raw, cs2, cw, 1, C, K);
        r->gdn_gates(r->ctx, beta, g, b, a, A_log, dt, 1, Hv);
        r->gdn_recurrent(r->ctx, o, qkv, beta, g, st2, &d, 1, ws);
        r->gated_rmsnorm(r->ctx, yr, o, z, nw, Hv, dv, 1e-6f);
        e_y = fmaxf(e_y, rel_err(y, yr, vn));
        free(raw), free(z), free(b), free(a);
    }
    char what[64];
    snprintf(what, sizeof what, "gdn_decode %d/%d %dx%d K%d x%d out", d.n_k_heads, Hv, d.d_k, dv, K, steps);
    show(what, e_y, TOL);
    snprintf(what, sizeof what, "gdn_decode %d/%d %dx%d K%d fp32 state", d.n_k_heads, Hv, d.d_k, dv, K);
    show(what, rel_err(st, st2, sn), TOL);
    snprintf(what, sizeof what, "gdn_decode %d/%d %dx%d K%d conv state", d.n_k_heads, Hv, d.d_k, dv, K);
    show(what, rel_err(cs, cs2, (size_t)K * C), 0.0f);
    free(st), free(st2), free(cs), free(cs2), free(cw), free(A_log), free(dt), free(nw), free(ws);
    free(qkv), free(beta), free(g), free(o), free(y), free(yr);
}

/* Decode GEMVs (T < 4) with 1, 2 and 3 threads: bit-identical (fast.h:
 * results do not depend on the thread count). The shapes give 5-17 row
 * tasks of each weight format, so the threads share every GEMV; the other
 * matmul cases are one task each. */
static void t_threads_identical(void) {
    /* the 4-bit and the last bf16 shape get rows per task by the thread
       count (fast_matmul.c gemv_rows: 4-bit 1024 rows with 1-2 threads, 684
       with 3; bf16 [600, 512] 256 / 148 / 100) */
    static const struct { dr_dtype dt; int bits, d, n; } sh[] = {
        {DR_DT_BF16, 4, 4100, 512}, {DR_DT_BF16, 8, 2050, 1024}, {DR_DT_BF16, 0, 1030, 2048}, {DR_DT_F32, 0, 515, 1024},
        {DR_DT_BF16, 0, 600, 512}};
    dr_ops *f[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) {
        dr_backend_params bp = {.n_threads = i + 1};
        CHECK(dr_ops_cpu_create(&bp, &f[i]) == DR_OK, "create: %s", dr_last_error());
    }
    int cases = 0, same = 0;
    for (size_t s = 0; f[2] && s < sizeof sh / sizeof sh[0]; s++) {
        void *buf, *own = NULL;
        dr_tensor w = mat(sh[s].dt, sh[s].d, sh[s].n, &buf), q = w;
        if (sh[s].bits)
            CHECK(dr_quantize(&w, sh[s].bits, 64, &q, &own) == DR_OK, "quantize: %s", dr_last_error());
        if (f[0]->weight_upload) /* the CPU's 4-bit decode layout, read by all three */
            CHECK(f[0]->weight_upload(f[0]->ctx, &q) == DR_OK, "upload: %s", dr_last_error());
        for (int T = 1; T <= 3; T++) {
            const size_t ny = (size_t)T * sh[s].d;
            float *x = rnd((size_t)T * sh[s].n, 1.0f), *y[3];
            for (int i = 0; i < 3; i++) {
                y[i] = malloc(ny * 4);
                f[i]->matmul(f[i]->ctx, y[i], x, &q, T);
            }
            cases++;
            same += !memcmp(y[0], y[1], ny * 4) && !memcmp(y[0], y[2], ny * 4);
            for (int i = 0; i < 3; i++)
                free(y[i]);
            free(x);
        }
        free(buf), free(own);
    }
    CHECK_SHOW(same == cases, "decode GEMV with 1, 2, 3 threads: %d of %d cases bit-identical (q4, q8, bf16, f32)",
               same, cases);
    for (int i = 0; i < 3; i++)
        if (f[i])
            f[i]->destroy(f[i]);
}

/* The backend's argmax (threaded pieces over long inputs) and
 * dr_argmax_f32 against the rule (test.h) on cases that test it: a maximum
 * tied in several pieces (the lowest index wins), at a piece's first or last
 * element, NaN at index 0 (it stays the answer), a piece that starts with
 * NaN or is all NaN, and a short input (one thread). */

static void t_argmax(dr_ops *f) {
    const int n = 70001, per = (n + 15) / 16; /* the fast backend's pieces (fast_elementwise.c) */
    float *x = malloc((size_t)n * 4);
    int fails = 0, cases = 0;
    for (int c = 0; c < 8; c++) {
        for (int i = 0; i < n; i++)
            x[i] = frand();
        int len = n;
        switch (c) {
        case 1: x[5 * per + 7] = x[9 * per + 2] = x[12 * per] = 3.0f; break; /* tie across pieces */
        case 2: x[3 * per] = 5.0f; break;                                 /* a piece's first element */
        case 3: x[4 * per - 1] = 5.0f; break;                             /* a piece's last element */
        case 4: x[0] = NAN; x[100] = 9.0f; break;                         /* NaN at 0 stays the answer */
        case 5: x[6 * per] = NAN; x[6 * per + 1] = 7.0f; break;           /* a piece starting with NaN */
        case 6:
            for (int i = 2 * per; i < 3 * per; i++)
                x[i] = NAN; /* a piece of NaN only, the maximum after it */
            x[n - 1] = 4.0f;
            break;
        case 7: len = 1000, x[999] = 2.0f, x[10] = 2.0f; break; /* short: one thread, tie */
        }
        int32_t got = -1;
        const bool ok = f->argmax(f->ctx, &got, x, len);
        cases++;
        const int want = test_argmax_rule(x, len);
        fails += !ok || got != want || dr_argmax_f32(x, len) != want;
    }
    CHECK_SHOW(fails == 0, "argmax: %d of %d cases agree with the rule (and dr_argmax_f32) (%s)", cases - fails, cases,
               g_cfg);
    free(x);
}

/* add_rmsnorm against add then rmsnorm (decode row and a threaded block) */
static void t_add_rmsnorm(dr_ops *f, dr_ops *r) {
    const int rows_[] = {1, 301}, n = 129;
    for (int ri = 0; ri < 2; ri++) {
        const int rows = rows_[ri];
        const size_t N = (size_t)rows * n;
        float *x = rnd(N, 2.0f), *x2 = dup(x, N), *dd = rnd(N, 1.0f), *gain = rnd((size_t)n, 1.0f);
        float *y = malloc(N * 4), *yr = malloc(N * 4);
        f->add_rmsnorm(f->ctx, x, dd, y, gain, rows, n, 1e-6f);
        r->add(r->ctx, x2, dd, N);
        r->rmsnorm(r->ctx, yr, x2, gain, rows, n, 1e-6f);
        char what[64];
        snprintf(what, sizeof what, "add_rmsnorm [%d,%d] (x and y)", rows, n);
        show(what, fmaxf(rel_err(x, x2, N), rel_err(y, yr, N)), 0.0f);
        free(x), free(x2), free(dd), free(gain), free(y), free(yr);
    }
}

/* The routed experts one at a time through the fast backend's own matmuls
 * (matmul_n of gate and up, swiglu, matmul of down, the weighted add by the
 * backend's SIMD axpy in ascending expert ids): what dr_fast_moe_experts
 * computes unbatched. */
static void moe_by_expert(dr_ops *f, const dr_simd *k_, float *y, const float *x, const int32_t *idx, const float *wts,
                          const dr_expert *ex, int E, int T, int k, int H, int I) {
    float *xe = malloc((size_t)T * H * 4), *g = malloc((size_t)T * I * 4), *u = malloc((size_t)T * I * 4);
    float *ye = malloc((size_t)T * H * 4);
    int rows[64];
    for (int e = 0; e < E; e++) {
        int n = 0;
        for (int i = 0; i < T * k; i++)
            if (idx[i] == e)
                rows[n++] = i;
        if (!n)
            continue;
        for (int r = 0; r < n; r++)
            memcpy(xe + (size_t)r * H, x + (size_t)(rows[r] / k) * H, (size_t)H * 4);
        float *const gu[2] = {g, u};
        const dr_tensor *const wgu[2] = {&ex[e].gate, &ex[e].up};
        f->matmul_n(f->ctx, 2, gu, xe, wgu, n);
        f->swiglu(f->ctx, g, g, u, (size_t)n * I);
        f->matmul(f->ctx, ye, g, &ex[e].down, n);
        for (int r = 0; r < n; r++)
            k_->axpy(y + (size_t)(rows[r] / k) * H, wts[rows[r]], ye + (size_t)r * H, H);
    }
    free(xe), free(g), free(u), free(ye);
}

/* moe_experts against the reference, bf16 and 4-bit (the decode layout),
 * for T = 1 and 3 (every routed expert's matrices batched in two parallel
 * loops) and T = 7 (one expert at a time); and against moe_by_expert bit
 * for bit (batching changes which thread computes a row, not its sum). */
static void t_moe(dr_ops *f, dr_ops *r, dr_simd_level lv) {
    const int E = 6, k = 2, H = 64, I = 32, Ts[] = {1, 3, 7};
    for (int bits = 0; bits <= 4; bits += 4)
        for (int ti = 0; ti < 3; ti++) {
            const int T = Ts[ti];
            dr_expert ex[6];
            void *bufs[36] = {0};
            for (int e = 0; e < E; e++)
                for (int m = 0; m < 3; m++) {
                    dr_tensor *t = m == 0 ? &ex[e].gate : m == 1 ? &ex[e].up : &ex[e].down;
                    *t = mat(DR_DT_BF16, m == 2 ? H : I, m == 2 ? I : H, &bufs[6 * e + 2 * m]);
                    if (bits) {
                        dr_tensor q;
                        CHECK(dr_quantize(t, bits, 32, &q, &bufs[6 * e + 2 * m + 1]) == DR_OK, "quantize: %s",
                              dr_last_error());
                        *t = q;
                        dr_cpu_q_tile(t, SIZE_MAX); /* the decode layout where this CPU has its GEMV */
                    }
                }
            int32_t idx[14];
            float *wts = rnd((size_t)T * k, 1.0f), *x = rnd((size_t)T * H, 1.0f), *ws = malloc((2 * (size_t)I + H) * 4);
            for (int t = 0; t < T; t++) {
                idx[2 * t] = (t * 5 + 1) % E; /* two distinct experts per token */
                idx[2 * t + 1] = (t * 5 + 3) % E;
            }
            float *y = calloc((size_t)T * H, 4), *yr = calloc((size_t)T * H, 4), *yb = calloc((size_t)T * H, 4);
            f->moe_experts(f->ctx, y, x, idx, wts, ex, E, T, k, H, I, ws);
            r->moe_experts(r->ctx, yr, x, idx, wts, ex, E, T, k, H, I, ws);
            moe_by_expert(f, dr_simd_table(lv), yb, x, idx, wts, ex, E, T, k, H, I);
            char what[64];
            snprintf(what, sizeof what, "moe_experts E=6 k=2 T=%d %s", T, bits ? "q4" : "bf16");
            show(what, rel_err(y, yr, (size_t)T * H), bits ? 1e-5f : TOL);
            snprintf(what, sizeof what, "moe_experts T=%d %s as by expert", T, bits ? "q4" : "bf16");
            show(what, rel_err(y, yb, (size_t)T * H), 0.0f);
            for (int i = 0; i < 36; i++)
                free(bufs[i]);
            free(wts), free(x), free(ws), free(y), free(yr), free(yb);
        }
}

/* RMSNorm is the reference's arithmetic, bit for bit; the activations are
 * too at the scalar level, and above it take exp from the vector tables
 * (TOL_ACT, see t_act). */
static void t_elementwise(dr_ops *f, dr_ops *r) {
    const float ta = dr_simd_get()->level == DR_SIMD_SCALAR ? 0.0f : TOL_ACT;
    const int rows = 301, n = 129;
    const size_t N = (size_t)rows * n;
    float *x = rnd(N, 2.0f), *z = rnd(N, 3.0f), *gain = rnd((size_t)n, 1.0f), *y = malloc(N * 4), *yr = malloc(N * 4);
    f->rmsnorm(f->ctx, y, x, gain, rows, n, 1e-6f);
    r->rmsnorm(r->ctx, yr, x, gain, rows, n, 1e-6f);
    show("rmsnorm [301,129]", rel_err(y, yr, N), 0.0f);
    f->gated_rmsnorm(f->ctx, y, x, z, gain, rows, n, 1e-6f);
    r->gated_rmsnorm(r->ctx, yr, x, z, gain, rows, n, 1e-6f);
    show("gated_rmsnorm [301,129]", rel_err(y, yr, N), ta);
    f->swiglu(f->ctx, y, x, z, N);
    r->swiglu(r->ctx, yr, x, z, N);
    show("swiglu 38829", rel_err(y, yr, N), ta);
    memcpy(y, x, N * 4), memcpy(yr, x, N * 4);
    f->sigmoid_mul(f->ctx, y, z, N);
    r->sigmoid_mul(r->ctx, yr, z, N);
    show("sigmoid_mul 38829", rel_err(y, yr, N), ta);
    free(x), free(z), free(gain), free(y), free(yr);
}

/* ---- the activation kernels of one table (simd.h silu, swiglu, sigmoid_mul, exp_sub) ---- */

/* |got - want| relative to |want| (to FLT_MIN for results in the subnormal
 * range); NaN and the infinities must be matched exactly. */
static float act_err(float got, float want) {
    if (isnan(want) || isinf(want))
        return (isnan(want) ? isnan(got) : got == want) ? 0.0f : INFINITY;
    const float d = fabsf(got - want);
    return d == d ? d / fmaxf(fabsf(want), FLT_MIN) : INFINITY;
}

static float act_worst(const float *got, const float *want, int n) {
    float e = 0.0f;
    for (int i = 0; i < n; i++)
        e = fmaxf(e, act_err(got[i], want[i]));
    return e;
}

/* Inputs over [-120, 120] plus the ends of exp's range, signed zeros, a
 * subnormal, the infinities and NaN; an odd count, so the tails run too.
 * The scalar table calls expf, so it must match the reference exactly. */
static void t_act(const dr_simd *k) {
    const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-40f, 87.3f, 88.72f, 88.73f, 89.0f, 100.0f, -87.3f,
                             -88.0f, -103.9f, -104.0f, -110.0f, INFINITY, -INFINITY, NAN};
    const int ns = (int)(sizeof special / sizeof special[0]), n = 4001 + ns;
    float *x = malloc((size_t)n * 4), *u = malloc((size_t)n * 4), *y = malloc((size_t)n * 4), *r = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) {
        x[i] = i < 4001 ? -120.0f + 0.06f * (float)i : special[i - 4001];
        u[i] = 0.5f + 0.001f * (float)(i % 997);
    }
    const float tol = k->level == DR_SIMD_SCALAR ? 0.0f : TOL_ACT;
    k->silu(y, x, n);
    for (int i = 0; i < n; i++)
        r[i] = dr_siluf(x[i]);
    show("silu [-120, 120] + specials", act_worst(y, r, n), tol);
    k->swiglu(y, x, u, n);
    for (int i = 0; i < n; i++)
        r[i] = dr_siluf(x[i]) * u[i];
    show("swiglu", act_worst(y, r, n), tol);
    memcpy(y, u, (size_t)n * 4);
    k->sigmoid_mul(y, x, n);
    for (int i = 0; i < n; i++)
        r[i] = u[i] * dr_sigmoidf(x[i]);
    show("sigmoid_mul", act_worst(y, r, n), tol);
    k->exp_sub(y, x, 3.0f, n);
    for (int i = 0; i < n; i++)
        r[i] = expf(x[i] - 3.0f);
    show("exp_sub (exp over [-123, 117])", act_worst(y, r, n), tol);
    free(x), free(u), free(y), free(r);
}

/* The prefill panel GEMM of table k (pack_panel + gemm_panel), where the
 * level has one, against sums in double: whole and partial panels, one to
 * 37 tokens (every register tile width and tails), k ranges of several
 * PANEL_KC blocks and not a multiple of the vector width, each dtype; the
 * output columns past nr (another task's rows) must stay untouched. Error
 * relative to sum |w x| per output, TOL. */
static void t_panel(const dr_simd *k) {
    if (!k->gemm_panel)
        return;
    const struct { int nr, nt, n; dr_dtype dt; } cs[] = {
        {0, 37, 600, DR_DT_BF16}, {13, 7, 300, DR_DT_F32}, {0, 1, 33, DR_DT_F16}, {1, 5, 513, DR_DT_BF16}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int nr = cs[c].nr ? cs[c].nr : k->panel, nt = cs[c].nt, n = cs[c].n, ldy = nr + 5;
        void *buf;
        const dr_tensor w = mat(cs[c].dt, nr, n, &buf);
        float *x = rnd((size_t)nt * n, 1.0f), *wp = malloc((size_t)k->panel * n * 4), *y = malloc((size_t)nt * ldy * 4);
        for (int i = 0; i < nt * ldy; i++)
            y[i] = -7.0f; /* the sentinel past nr */
        k->pack_panel(wp, w.data, cs[c].dt, (size_t)n, nr, n);
        k->gemm_panel(y, (size_t)ldy, wp, nr, x, (size_t)n, nt, n);
        double e = 0.0;
        bool kept = true;
        for (int t = 0; t < nt; t++) {
            for (int r = 0; r < nr; r++) {
                double sum = 0.0, mag = 0.0;
                for (int i = 0; i < n; i++) {
                    const double p = (double)dr_load_f32(w.data, cs[c].dt, (size_t)r * n + i) * x[(size_t)t * n + i];
                    sum += p, mag += fabs(p);
                }
                e = fmax(e, fabs(y[(size_t)t * ldy + r] - sum) / (mag > 0.0 ? mag : 1.0));
            }
            for (int r = nr; r < ldy; r++)
                kept &= y[(size_t)t * ldy + r] == -7.0f;
        }
        CHECK_SHOW(e <= TOL && kept, "[%s] gemm_panel %s rows %d of %d, %d tokens, n %d: err %.2e of sum |w x| (tol %.0e); "
                   "columns past the rows untouched: %s", g_cfg, dr_dtype_name(cs[c].dt), nr, k->panel, nt, n, e, TOL,
                   kept ? "yes" : "NO");
        free(buf), free(x), free(wp), free(y);
    }
}

/* The GDN decode step's state passes of table k (st2, decay_rank1) against
 * the two gemm_nn calls and the scale + axpy rows they replace: the same
 * operations per element, so the same bits. Shapes cover the ST_CB-wide
 * column blocks, single vectors and the column tail of every level. */
static void t_st2(const dr_simd *k) {
    const int shapes[][2] = {{128, 128}, {16, 24}, {17, 147}, {5, 3}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int dk = shapes[si][0], dv = shapes[si][1];
        const size_t ns = (size_t)dk * dv;
        float *S = rnd(ns, 1.0f), *S2 = malloc(ns * 4), *kv = rnd((size_t)dk, 1.0f), *qv = rnd((size_t)dk, 1.0f);
        float *d = rnd((size_t)dv, 1.0f), *u = malloc((size_t)dv * 4), *w = malloc((size_t)dv * 4);
        float *ur = malloc((size_t)dv * 4), *wr = malloc((size_t)dv * 4);
        memcpy(S2, S, ns * 4);
        k->gemm_nn(ur, dv, kv, dk, S, dv, 1, dv, dk, false);
        k->gemm_nn(wr, dv, qv, dk, S, dv, 1, dv, dk, false);
        k->st2(u, w, S, kv, qv, dk, dv);
        CHECK_SHOW(!memcmp(u, ur, (size_t)dv * 4) && !memcmp(w, wr, (size_t)dv * 4),
                   "[%s] st2 [%d, %d]: u and w identical to gemm_nn", g_cfg, dk, dv);
        const float decay = 0.93f;
        for (int i = 0; i < dk; i++) {
            float *row = S2 + (size_t)i * dv;
            for (int c = 0; c < dv; c++)
                row[c] *= decay;
            k->axpy(row, kv[i], d, dv);
        }
        k->decay_rank1(S, dk, dv, decay, kv, d);
        CHECK_SHOW(!memcmp(S, S2, ns * 4), "[%s] decay_rank1 [%d, %d]: identical to scale + axpy", g_cfg, dk, dv);
        free(S), free(S2), free(kv), free(qv), free(d), free(u), free(w), free(ur), free(wr);
    }
}

/* vdpbf16ps GEMV (x split in two bf16 halves) against the reference */
static void t_bf16x2(dr_ops *r) {
    const dr_simd *k = dr_simd_get();
    if (!k->gemv_bf16x2)
        return;
    void *buf;
    dr_tensor w = mat(DR_DT_BF16, 4, 1001, &buf);
    float *x = rnd(1001, 1.0f), y[4], yr[4];
    uint16_t *hi = malloc(1001 * 2), *lo = malloc(1001 * 2);
    dr_split_bf16x2(hi, lo, x, 1001);
    for (int nr = 1; nr <= 4; nr += 3) {
        k->gemv_bf16x2(y, w.data, 1001, nr, hi, lo, 1001);
        r->matmul(NULL, yr, x, &w, 1);
        char what[64];
        snprintf(what, sizeof what, "gemv_bf16x2 %d rows n=1001", nr);
        show(what, rel_err(y, yr, (size_t)nr), TOL_BF16X2);
    }
    free(buf), free(x), free(hi), free(lo);
}

/* The BF16 GEMV on x in pair order (bf16_pairs + gemv_bf16p) against the
 * reference: 1-4 rows, lengths with and without whole pair blocks (2 VL
 * elements) and with vector and scalar tails after them; with the software
 * prefetch the same bits. */
static void t_bf16p(const dr_simd *k, dr_ops *r) {
    if (!k->gemv_bf16p)
        return;
    const int ns[] = {1001, 64, 32, 16, 48, 7, 77};
    bool same = true;
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int n = ns[ni];
        void *buf;
        dr_tensor w = mat(DR_DT_BF16, 4, n, &buf);
        float *x = rnd((size_t)n, 1.0f), *xp = malloc((size_t)n * 4), y[4], yr[4];
        k->bf16_pairs(xp, x, n);
        r->matmul(NULL, yr, x, &w, 1);
        float worst = 0.0f;
        for (int nr = 1; nr <= 4; nr++) {
            float ypf[4];
            k->gemv_bf16p(y, w.data, (size_t)n, nr, xp, n, 0);
            k->gemv_bf16p(ypf, w.data, (size_t)n, nr, xp, n, 16384);
            same &= !memcmp(y, ypf, (size_t)nr * sizeof *y);
            worst = fmaxf(worst, rel_err(y, yr, (size_t)nr)); /* rel_err reports NaN as infinite */
        }
        char what[64];
        snprintf(what, sizeof what, "gemv_bf16p 1-4 rows n=%d", n);
        show(what, worst, TOL);
        free(buf), free(x), free(xp);
    }
    CHECK_SHOW(same, "[%s] gemv_bf16p: the same bits with and without the software prefetch", g_cfg);
}

/* The software prefetch of the unquantized GEMV (k->gemv's pf) changes no
 * bit: F32, F16 and BF16 rows, lengths with vector and scalar tails. */
static void t_gemv_pf(const dr_simd *k) {
    const dr_dtype dts[] = {DR_DT_F32, DR_DT_F16, DR_DT_BF16};
    bool same = true;
    for (int di = 0; di < 3; di++)
        for (int n = 1; n <= 300; n += 37) {
            void *buf;
            dr_tensor w = mat(dts[di], 4, n, &buf);
            float *x = rnd((size_t)n, 1.0f), y[4], ypf[4];
            k->gemv(y, w.data, dts[di], (size_t)n, 4, x, n, 0);
            k->gemv(ypf, w.data, dts[di], (size_t)n, 4, x, n, 16384);
            same &= !memcmp(y, ypf, sizeof y);
            free(buf), free(x);
        }
    CHECK_SHOW(same, "[%s] gemv F32/F16/BF16, n = 1..300: the same bits with and without the software prefetch", g_cfg);
}

/* ===================== golden fixtures, several threads ===================== */

static void t_golden(const char *fixture, int n_threads) {
    char dir[512], path[1024], name[64];
    snprintf(dir, sizeof dir, "%s/%s", DR_TEST_DATA, fixture);
    dr_model_params mp = dr_model_default_params();
    mp.n_threads = n_threads;
    dr_model *m = NULL;
    dr_st_file gold;
    CHECK(dr_model_load_ex(dir, &mp, &m) == DR_OK, "load %s: %s", dir, dr_last_error());
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    CHECK(dr_st_open(path, &gold) == DR_OK, "%s", dr_last_error());
    if (!m)
        return;
    const int V = dr_model_info_get(m)->n_vocab;
    for (int pi = 0; pi < 2; pi++) {
        int32_t *ids;
        float *want;
        snprintf(name, sizeof name, "p%d.input_ids", pi);
        int T = golden_ids(&gold, name, &ids);
        snprintf(name, sizeof name, "p%d.logits_full", pi);
        size_t n = golden_f32(&gold, name, &want);
        if (T <= 0 || n != (size_t)T * V) {
            free(want);
            continue;
        }
        float *got = malloc(n * 4);
        dr_session *s = NULL;
        dr_session_params sp = dr_session_default_params();
        sp.n_ctx = T;
        CHECK(dr_session_new(m, &sp, &s) == DR_OK, "%s", dr_last_error());
        /* first half as a block, the rest one token at a time: both paths */
        int split = T / 2 > 0 ? T / 2 : 1;
        dr_session_eval(s, ids, split, DR_LOGITS_ALL, got);
        for (int t = split; t < T; t++)
            dr_session_eval(s, ids + t, 1, DR_LOGITS_LAST, got + (size_t)t * V);
        float e = max_abs_diff(got, want, n);
        CHECK_SHOW(e <= TOL_GOLDEN, "golden %-15s p%d T=%-4d %d threads: max |dlogit| %.3g (tol %.0e)", fixture, pi, T,
                   n_threads, e, TOL_GOLDEN);
        dr_session_free(s);
        free(ids), free(want), free(got);
    }
    dr_st_close(&gold);
    dr_model_free(m);
}

/* DR_EXPECT_SIMD (set for the emulated runs of tests/CMakeLists.txt, e.g.
 * "avx2" under an AVX2-only CPU model): the levels this process must see.
 * Without it an emulator that passed the host's AVX-512 through would make
 * those runs prove nothing. */
static void t_expected_level(dr_simd_level best) {
    const char *want = getenv("DR_EXPECT_SIMD");
    if (!want)
        return;
    const char *got = dr_simd_level_name(best), *qgot = dr_cpu_quant_level_name(dr_cpu_quant_level());
    CHECK_SHOW(!strcmp(got, want) && !strcmp(qgot, want), "best SIMD level %s, quantized kernels %s (expected %s)", got,
               qgot, want);
}

int main(void) {
    dr_ops *ref = dr_ops_cpu_ref();
    const dr_simd_level best = dr_cpu_simd_level();
    t_expected_level(best);
    for (int lv = DR_SIMD_SCALAR; lv <= (int)best; lv++) {
        if (!dr_simd_table((dr_simd_level)lv))
            continue;
        dr_simd_force((dr_simd_level)lv);
        const int threads[] = {1, 3};
        for (int ti = 0; ti < 2; ti++) {
            char cfg[32];
            snprintf(cfg, sizeof cfg, "%s/%dt", dr_simd_level_name((dr_simd_level)lv), threads[ti]);
            g_cfg = cfg;
            dr_backend_params bp = {.n_threads = threads[ti]};
            dr_ops *f = NULL;
            CHECK(dr_ops_cpu_create(&bp, &f) == DR_OK, "create: %s", dr_last_error());
            if (!f)
                continue;
            t_matmul(f, ref);
            t_matmul_amx(f, ref);
            t_matmul_amx_q(f, ref);
            t_matmul_q(f, ref);
            t_attention(f, ref);
            t_conv(f, ref);
            t_rope(f, ref);
            t_gdn(f, ref, false, 1, 0.2f);
            t_gdn(f, ref, false, 3, 0.2f);
            t_gdn(f, ref, true, 150, 0.2f);
            t_gdn(f, ref, true, 64, 0.2f);
            t_gdn(f, ref, true, 150, 40.0f);
            t_matmul_n(f, ref);
            t_matmul_n_shared(f);
            t_gdn_decode(f, ref, (dr_gdn_dims){2, 4, 16, 24}, 4);
            t_gdn_decode(f, ref, (dr_gdn_dims){3, 3, 17, 13}, 4);
            t_gdn_decode(f, ref, (dr_gdn_dims){3, 3, 17, 13}, 3);
            t_gdn_decode(f, ref, (dr_gdn_dims){1, 3, 33, 7}, 4);
            t_gdn_decode(f, ref, (dr_gdn_dims){2, 4, 128, 128}, 4); /* the real head size */
            t_gdn_decode(f, ref, (dr_gdn_dims){1, 2, 20, 147}, 5);
            t_add_rmsnorm(f, ref);
            t_moe(f, ref, (dr_simd_level)lv);
            t_elementwise(f, ref);
            t_argmax(f);
            f->destroy(f);
        }
        g_cfg = dr_simd_level_name((dr_simd_level)lv);
        t_bf16x2(ref);
        t_bf16p(dr_simd_table((dr_simd_level)lv), ref);
        t_gemv_pf(dr_simd_table((dr_simd_level)lv));
        t_st2(dr_simd_table((dr_simd_level)lv));
        t_panel(dr_simd_table((dr_simd_level)lv));
        t_act(dr_simd_table((dr_simd_level)lv));
    }
    dr_simd_force(DR_SIMD_COUNT);
    t_threads_identical();
    dr_simd_use_bf16_dot(best >= DR_SIMD_AVX512_BF16); /* the vdpbf16ps decode path end to end too */
    {
        dr_ops *f = NULL;
        dr_backend_params bp = {.n_threads = 3};
        g_cfg = "bf16 dot/3t";
        if (dr_ops_cpu_create(&bp, &f) == DR_OK && f) { /* bf16 weights share one split of x */
            t_matmul_n_shared(f);
            f->destroy(f);
        }
    }
    t_golden("moe-bf16", 3);
    dr_simd_use_bf16_dot(false);
    t_upload(ref);
    t_arena();
    t_golden("dense-f32", 2);
    t_golden("moe-bf16-fused", 3);
    t_golden("next-f32", 3);
    t_golden("long-bf16", 2);
    return TEST_DONE();
}
