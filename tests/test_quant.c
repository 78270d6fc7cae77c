/* tests/test_quant.c - MLX affine 4/8-bit weights: kernels, quantizer,
 * collapsed-row refusal, loading converted fixtures (KL / top-1 against the
 * unquantized model), and malformed quantized checkpoints.
 *
 * Kernel tolerance: |y - y_ref| <= 1e-5 * sum_i |w_i x_i| (y_ref: the
 * weights w = scale * q + bias dotted with x, all in double precision),
 * every SIMD level this CPU has, forced in turn through
 * dr_cpu_quant_set_level. For x spanning 1e7 inside a group the bound is
 * 1e-5 of sum_i (|scale q_i| + |bias|) |x_i| instead (see test_kernels).
 */
#include "deltarun.h"
#include "format/safetensors.h"
#include "golden_util.h"
#include "model/model.h"
#include "model/synthetic.h"
#include "ops/cpu/quant.h"
#include "ops/cpu/quant_kern.h"
#include "quant/convert.h"
#include "quant/quant.h"
#include "quant/st_writer.h"
#include "rm_dir.h"
#include "test.h"

#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];

/* ---- helpers ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / (1ull << 24))) * 2.0f - 1.0f;
}
static float grand(void) { return (frand() + frand() + frand()) * 0.6f; } /* roughly normal */

/* A random F32 or BF16 matrix [d, n] (owned buffer). */
static dr_tensor rand_mat(int64_t d, int64_t n, dr_dtype dt, void **buf) {
    size_t esz = dr_dtype_size(dt);
    unsigned char *p = malloc((size_t)(d * n) * esz);
    for (int64_t i = 0; i < d * n; i++) {
        float v = grand() * 0.05f;
        if (i % 97 == 5)
            v *= 8.0f; /* outliers widen some groups */
        if (dt == DR_DT_F32)
            memcpy(p + 4 * i, &v, 4);
        else {
            uint16_t h = dr_f32_to_bf16(v);
            memcpy(p + 2 * i, &h, 2);
        }
    }
    *buf = p;
    dr_tensor t = {.name = "rand", .dtype = dt, .ndim = 2, .ne = {d, n}, .data = p};
    return t;
}

/* ---- kernels ---- */

/* Element (r, i) of w exactly, scale * q + bias in double (dr_q_get and
 * dr_dequantize_row round it to fp32), and *mag = |scale q| + |bias|. */
static double exact_w(const dr_tensor *w, int64_t r, int64_t i, double *mag) {
    const int bits = w->q.bits, per_word = 32 / bits;
    uint32_t word;
    memcpy(&word, dr_qk_at(w, r, i / per_word * per_word), 4);
    const double q = (double)((word >> ((i % per_word) * bits)) & ((1u << bits) - 1u));
    const size_t g = (size_t)(r * (w->ne[1] / w->q.group_size) + i / w->q.group_size);
    const double s = dr_load_f32(w->q.scales, w->q.sb_dtype, g), b = dr_load_f32(w->q.biases, w->q.sb_dtype, g);
    *mag = fabs(s * q) + fabs(b);
    return s * q + b;
}

/* The exact product, per output of y_ref [T, d]: y (double), sabs = sum |w x|
 * and scond = sum (|scale q| + |bias|) |x|, the size of the terms that the
 * one-FMA-per-weight GEMVs (quant_kern.h) add and cancel. ref32: the
 * largest |dequantize-then-fp32 - y| / sabs (fp32 w, fp32 sum), the
 * reference form's own error, printed next to the kernels'. */
static void ref_matmul(double *y, double *sabs, double *scond, const float *x, const dr_tensor *q, int T,
                       double *ref32) {
    const int64_t d = q->ne[0], n = q->ne[1];
    float *row = malloc((size_t)n * sizeof *row);
    double *we = malloc((size_t)n * sizeof *we), *wm = malloc((size_t)n * sizeof *wm);
    for (int64_t r = 0; r < d; r++) {
        dr_dequantize_row(q, r, row);
        for (int64_t i = 0; i < n; i++)
            we[i] = exact_w(q, r, i, &wm[i]);
        for (int t = 0; t < T; t++) {
            double s = 0, a = 0, c = 0;
            float s32 = 0.0f;
            for (int64_t i = 0; i < n; i++) {
                const double xi = x[t * n + i];
                s += we[i] * xi;
                a += fabs(we[i] * xi);
                c += wm[i] * fabs(xi);
                s32 += row[i] * x[t * n + i];
            }
            y[t * d + r] = s;
            sabs[t * d + r] = a;
            scond[t * d + r] = c;
            *ref32 = fmax(*ref32, fabs(s32 - s) / (a > 0 ? a : 1));
        }
    }
    free(row), free(we), free(wm);
}

/* |y - want| / scale; NaN counts as infinite (fmax would drop it). */
static double rel_err1(float y, double want, double scale) {
    const double e = fabs(y - want) / (scale > 0 ? scale : 1);
    return e == e ? e : INFINITY;
}

/* The threaded backend's split form on the same data: prepared x, GEMV of
 * rows [r0, r1) for token 0, and rows dequantized to fp32 (each element
 * within 1e-6 of |scale q| + |bias| of dr_dequantize_row, which rounds
 * scale * q before adding the bias where the kernels may fuse). */
static double split_case(const dr_tensor *q, const float *x, const double *yr, const double *sa, const double *sc,
                         int r0, int r1, double *cond_err, double *deq_err) {
    const int64_t d = q->ne[0], n = q->ne[1];
    float *xp = malloc(dr_cpu_q_prep_floats(q) * sizeof *xp), *y = malloc((size_t)d * sizeof *y);
    for (int64_t r = 0; r < d; r++)
        y[r] = -12345.0f;
    dr_cpu_q_prep(xp, x, q);
    dr_cpu_q_gemv_rows(y, xp, q, r0, r1);
    double worst = 0;
    bool untouched = true;
    *cond_err = 0;
    for (int64_t r = 0; r < d; r++) {
        if (r < r0 || r >= r1) {
            untouched &= y[r] == -12345.0f;
            continue;
        }
        worst = fmax(worst, rel_err1(y[r], yr[r], sa[r]));
        *cond_err = fmax(*cond_err, rel_err1(y[r], yr[r], sc[r]));
    }
    CHECK(untouched, "q_gemv_rows: rows outside [r0, r1) were written");
    const int nr = r1 - r0;
    float *deq = malloc((size_t)nr * (size_t)n * sizeof *deq), *want = malloc((size_t)n * sizeof *want);
    dr_cpu_q_dequant_rows(deq, q, r0, nr);
    *deq_err = 0;
    for (int r = 0; r < nr; r++) {
        dr_dequantize_row(q, r0 + r, want);
        for (int64_t i = 0; i < n; i++) {
            size_t g = (size_t)((r0 + r) * (n / q->q.group_size) + i / q->q.group_size);
            double mag = fabs(dr_load_f32(q->q.scales, q->q.sb_dtype, g)) * 15.0 * (q->q.bits == 8 ? 17 : 1) +
                         fabs(dr_load_f32(q->q.biases, q->q.sb_dtype, g));
            double e = fabs((double)deq[(size_t)r * n + i] - want[i]) / (mag > 0 ? mag : 1);
            *deq_err = e > *deq_err ? e : *deq_err;
        }
    }
    free(xp), free(y), free(deq), free(want);
    return worst;
}

typedef struct {
    double mm, gemv, deq; /* worst relative errors: matmul_q_rows, split GEMV, split dequant */
    double mmc, gemvc;    /* matmul_q_rows, split GEMV: relative to sum (|scale q| + |bias|) |x| */
    double ref32;         /* dequantize-then-fp32 against the exact product (ref_matmul) */
    int tiled;            /* cases rearranged into the decode layout */
    bool tile_same;       /* ... whose every output matched file order bit for bit */
    int multi;            /* multi-token GEMV cases on the level's own kernel */
    bool multi_same;      /* ... every multi-token output bit-identical to the one-token GEMV's */
} kerr;

/* Every output of the level's paths on w for token 0 (or T tokens): the
 * matmul, the split GEMV on prepared x, dequantized rows, the embedding of
 * three rows and dr_q_get over rows r0 and d - 1. */
static float *all_outputs(const dr_tensor *w, const float *x, int T, int r0, int r1, size_t *count) {
    const int64_t d = w->ne[0], n = w->ne[1];
    const size_t nm = (size_t)T * d, ng = (size_t)d, nd = (size_t)(r1 - r0) * n, ne = 3 * (size_t)n;
    float *o = malloc((nm + ng + nd + ne + 2 * (size_t)n) * sizeof *o), *xp = malloc(dr_cpu_q_prep_floats(w) * sizeof *xp);
    for (size_t i = 0; i < nm + ng; i++)
        o[i] = -12345.0f;
    dr_cpu_matmul_q_rows(o, x, w, T, r0, r1);
    dr_cpu_q_prep(xp, x, w);
    dr_cpu_q_gemv_rows(o + nm, xp, w, r0, r1);
    dr_cpu_q_dequant_rows(o + nm + ng, w, r0, r1 - r0);
    const int32_t ids[3] = {0, (int32_t)d - 1, r0};
    dr_cpu_embed_q(o + nm + ng + nd, w, ids, 3);
    for (int64_t i = 0; i < n; i++) {
        o[nm + ng + nd + ne + (size_t)i] = dr_q_get(w, r0, i);
        o[nm + ng + nd + ne + (size_t)(n + i)] = dr_q_get(w, d - 1, i);
    }
    free(xp);
    *count = nm + ng + nd + ne + 2 * (size_t)n;
    return o;
}

/* x for the "hard" cases: by 32-element span of a token, Gaussian with
 * every 13th element x1000 (outliers next to small values in one group),
 * zeros, values near 1e-33 (below the avx512vnni digits' smallest step
 * scale), and one 1e4 among values near 1e-3 (a range of 1e7). */
static float hard_x(int64_t k) {
    switch ((k / 32) % 4) {
    case 0: return grand() * (k % 13 ? 1.0f : 1000.0f);
    case 1: return 0.0f;
    case 2: return grand() * 1e-33f;
    default: return k % 32 == 5 ? 1e4f : grand() * 1e-3f;
    }
}

static bool g_hard_x; /* kernel_case's x: hard_x instead of Gaussian */

/* The multi-token GEMV on w (either layout, the level in use) for T tokens
 * of fresh x: every output bit for bit its own output for that token alone
 * (T = 1; the one-token GEMV's except at avx2 for 4 bits, whose one-token
 * GEMV takes another x layout: split_case holds that one to the exact
 * product), rows outside [r0, r1) untouched. Where the level has no multi-token
 * kernel for w (the scalar level, a layout its kernels don't read, the
 * 4-bit GEMVs of their own at avx512bf16 / avx512vnni on file order),
 * dr_cpu_q_gemv_rows_n runs the one-token one per token, which this checks
 * the same way. */
static void multi_case(const dr_tensor *w, int T, int r0, int r1, kerr *err) {
    const int64_t d = w->ne[0], n = w->ne[1];
    const size_t pf = dr_cpu_q_prep_floats(w);
    float *x = malloc((size_t)n * sizeof *x), *xp = malloc((size_t)T * pf * sizeof *xp);
    float *y = malloc((size_t)T * (size_t)d * sizeof *y), *y1 = malloc((size_t)d * sizeof *y1);
    for (int t = 0; t < T; t++) {
        for (int64_t i = 0; i < n; i++)
            x[i] = g_hard_x ? hard_x(i + t) : grand();
        dr_cpu_q_prep_n(xp + (size_t)t * pf, x, w);
    }
    for (size_t i = 0; i < (size_t)T * (size_t)d; i++)
        y[i] = -12345.0f;
    dr_cpu_q_gemv_rows_n(y, xp, T, w, r0, r1);
    bool same = true;
    for (int t = 0; t < T; t++) {
        dr_cpu_q_gemv_rows_n(y1, xp + (size_t)t * pf, 1, w, r0, r1);
        for (int64_t r = 0; r < d; r++) {
            const float v = y[(size_t)t * (size_t)d + (size_t)r];
            same &= r < r0 || r >= r1 ? v == -12345.0f : !memcmp(&v, &y1[r], sizeof v);
        }
    }
    err->multi_same &= same;
    err->multi += dr_cpu_q_multi_max(w) >= T;
    free(x), free(xp), free(y), free(y1);
}

/* A 4- or 8-bit q rearranged into the CPU's decode layout (dr_cpu_q_tile,
 * on a copy of its bytes, scales and biases): 16-row tiles (the last one
 * the rows left), chunk c (4 bytes) of the tile's row i at (c m + i) * 4,
 * group g's scale and bias at g m + i. Every output of the level
 * bit-identical to file order (the other kernels read the rows back in file
 * order), except the GEMVs at avx512vnni, whose own kernels read the layout
 * and sum in another order: those are held to the exact product like the
 * file-order ones (err->gemv). Too small a budget, a second call: left as
 * they are. */
static void tiled_case(const dr_tensor *q, const float *x, int T, int r0, int r1, const double *yr, const double *sa,
                       const double *sc, kerr *err) {
    const int64_t d = q->ne[0], n = q->ne[1], G = n / q->q.group_size;
    const size_t rb = dr_quant_row_bytes(n, q->q.bits), pk = (size_t)d * rb, es = dr_dtype_size(q->q.sb_dtype);
    const size_t nsb = (size_t)d * (size_t)G * es;
    unsigned char *copy = malloc(pk), *sbc = malloc(2 * nsb);
    memcpy(copy, q->data, pk);
    memcpy(sbc, q->q.scales, nsb);
    memcpy(sbc + nsb, q->q.biases, nsb);
    dr_tensor t = *q;
    t.data = copy;
    t.q.scales = sbc;
    t.q.biases = sbc + nsb;
    CHECK(dr_cpu_q_tile(&t, pk - 1) == 0 && t.q.tiled_rows == 0, "tile: over its budget");
    const size_t got = dr_cpu_q_tile(&t, SIZE_MAX);
    CHECK(got == pk && t.q.tiled_rows == d, "tile [%lld, %lld]: %zu bytes, %lld rows", (long long)d, (long long)n, got,
          (long long)t.q.tiled_rows);
    CHECK(dr_cpu_q_tile(&t, SIZE_MAX) == 0, "tile: a second call rearranged again");
    const unsigned char *src = q->data, *ss = q->q.scales, *sbi = q->q.biases;
    bool layout = true;
    for (int64_t r = 0; r < d; r++) {
        const int64_t t0 = r / 16 * 16, m = d - t0 < 16 ? d - t0 : 16, i = r - t0;
        for (int64_t c = 0; c < (int64_t)rb / 4; c++)
            layout &= !memcmp(copy + (size_t)t0 * rb + (size_t)(c * m + i) * 4, src + (size_t)r * rb + (size_t)c * 4, 4);
        for (int64_t g = 0; g < G; g++) {
            const size_t at = ((size_t)t0 * (size_t)G + (size_t)(g * m + i)) * es, was = ((size_t)r * (size_t)G + (size_t)g) * es;
            layout &= !memcmp(sbc + at, ss + was, es) && !memcmp(sbc + nsb + at, sbi + was, es);
        }
    }
    CHECK(layout, "tile [%lld, %lld]: bytes, scales or biases not where the decode layout puts them", (long long)d,
          (long long)n);
    size_t na, nb;
    float *a = all_outputs(q, x, T, r0, r1, &na), *b = all_outputs(&t, x, T, r0, r1, &nb);
    if (na == nb && dr_cpu_quant_level() == DR_QLEVEL_AVX512_VNNI) { /* the GEMVs: matmul at T = 1, then split */
        for (int part = T == 1 ? 0 : 1; part < 2; part++)
            for (int r = r0; r < r1; r++) {
                const size_t at = (size_t)part * (size_t)T * (size_t)d + (size_t)r;
                err->gemv = fmax(err->gemv, rel_err1(b[at], yr[r], sa[r]));
                err->gemvc = fmax(err->gemvc, rel_err1(b[at], yr[r], sc[r]));
                b[at] = a[at]; /* compared above; the rest must match */
            }
    }
    err->tile_same &= na == nb && !memcmp(a, b, na * sizeof *a);
    err->tiled += got > 0;
    static const int Ts[] = {2, 3, 5, 8, DR_QK_MULTI_T};
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        multi_case(q, Ts[i], r0, r1, err);
        multi_case(&t, Ts[i], r0, r1, err);
    }
    free(a), free(b), free(copy), free(sbc);
}


static void kernel_case(int level, int bits, int gs, int64_t d, int64_t n, int T, dr_dtype dt, dr_dtype sb,
                        bool unaligned, kerr *err) {
    void *src_buf, *own;
    dr_tensor src = rand_mat(d, n, dt, &src_buf), q;
    dr_quant_opts o = {.bits = bits, .group_size = gs, .sb_dtype = sb};
    CHECK(dr_quantize_ex(&src, &o, &q, &own) == DR_OK, "quantize: %s", dr_last_error());
    unsigned char *shifted = NULL;
    if (unaligned) { /* MLX files put tensors at any byte offset */
        size_t pk = (size_t)d * dr_quant_row_bytes(n, bits);
        shifted = malloc(pk + 3);
        memcpy(shifted + 3, q.data, pk);
        q.data = shifted + 3;
    }
    float *x = malloc((size_t)(T * n) * sizeof *x), *y = malloc((size_t)(T * d) * sizeof *y);
    double *yr = malloc((size_t)(T * d) * sizeof *yr), *sa = malloc((size_t)(T * d) * sizeof *sa);
    double *sc = malloc((size_t)(T * d) * sizeof *sc);
    for (int64_t i = 0; i < T * n; i++)
        x[i] = g_hard_x ? hard_x(i % n) : grand();
    for (int64_t i = 0; i < T * d; i++)
        y[i] = -12345.0f;
    ref_matmul(yr, sa, sc, x, &q, T, &err->ref32);
    dr_cpu_quant_set_level(level);
    const int r0 = (int)(d / 3), r1 = (int)d - 1; /* a row range, as a thread would get */
    dr_cpu_matmul_q_rows(y, x, &q, T, r0, r1);
    double worst = 0, worst_c = 0;
    bool untouched = true;
    for (int t = 0; t < T; t++)
        for (int64_t r = 0; r < d; r++) {
            float v = y[t * d + r];
            if (r < r0 || r >= r1) {
                untouched &= v == -12345.0f;
                continue;
            }
            worst = fmax(worst, rel_err1(v, yr[t * d + r], sa[t * d + r]));
            worst_c = fmax(worst_c, rel_err1(v, yr[t * d + r], sc[t * d + r]));
        }
    CHECK(untouched, "level %d: rows outside [r0, r1) were written", level);
    double deq, gvc, gv = split_case(&q, x, yr, sa, sc, r0, r1, &gvc, &deq);
    tiled_case(&q, x, T, r0, r1, yr, sa, sc, err);
    err->mm = fmax(err->mm, worst);
    err->gemv = fmax(err->gemv, gv);
    err->mmc = fmax(err->mmc, worst_c);
    err->gemvc = fmax(err->gemvc, gvc);
    err->deq = fmax(err->deq, deq);
    free(x), free(y), free(yr), free(sa), free(sc), free(own), free(src_buf), free(shifted);
}

static void test_kernels(void) {
    /* rows of 96 .. 2048: group counts 1 .. 64, so the 16- and 8-group
       scale blocks of the SIMD GEMVs get full blocks and every tail length,
       and rows that are not a multiple of 128 */
    static const struct { int64_t d, n; int T; } shapes[] = {{37, 384, 1}, {5, 128, 3},  {64, 1024, 5}, {1, 640, 8},
                                                              {17, 1152, 2}, {9, 2048, 1}, {23, 352, 1}, {7, 192, 1},
                                                              {3, 96, 2}};
    static const dr_dtype sbs[] = {DR_DT_UNKNOWN, DR_DT_F16, DR_DT_F32};
    int levels = dr_cpu_quant_set_level(-1);
    printf("quantized kernels: best level on this CPU: %s\n", dr_cpu_quant_level_name(levels));
    for (int lv = 0; lv < DR_QLEVEL_COUNT; lv++) {
        if (dr_cpu_quant_set_level(lv) != lv) {
            printf("skip %s: not supported by this CPU\n", dr_cpu_quant_level_name(lv));
            continue;
        }
        kerr e = {.tile_same = true, .multi_same = true}, h = {.tile_same = true, .multi_same = true};
        int cases = 0;
        for (int hard = 0; hard < 2; hard++) {
            g_hard_x = hard;
            for (int bits = 4; bits <= 8; bits += 4)
                for (int gs = 32; gs <= 128; gs *= 2)
                    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                        dr_dtype dt = s % 2 ? DR_DT_BF16 : DR_DT_F32;
                        dr_dtype sb = sbs[(s + (size_t)gs / 32) % 3]; /* source dtype, F16 or F32 scales */
                        if (shapes[s].n % gs)
                            continue;
                        kerr *into = hard ? &h : &e;
                        kernel_case(lv, bits, gs, shapes[s].d, shapes[s].n, shapes[s].T, dt, sb, s == 2, into);
                        cases += !hard;
                    }
        }
        g_hard_x = false;
        CHECK_SHOW(e.mm <= 1e-5 && e.gemv <= 1e-5,
                   "matmul_q %s: %d cases (bits 4/8, gs 32/64/128, T 1..8, odd rows, BF16/F16/F32 scales): max rel "
                   "err %.2e, split GEMV %.2e (tol 1e-5)", dr_cpu_quant_level_name(lv), cases, e.mm, e.gemv);
        /* Hard x: the GEMVs form sum w x per group as scale * sum q x +
           bias * sum x (one FMA a weight), so their fp32 rounding scales with
           |scale q| + |bias|, not |w|. Where w = scale q + bias nearly
           cancels next to a 1e4 x, that is up to ~3e-5 of sum |w x|
           (dequantize-then-fp32 itself is off by ~1e-5 there: printed).
           Held: 1e-5 of sum (|scale q| + |bias|) |x|, the error that form
           can reach, and 1e-4 of sum |w x|. */
        CHECK_SHOW(h.mmc <= 1e-5 && h.gemvc <= 1e-5 && h.mm <= 1e-4 && h.gemv <= 1e-4,
                   "matmul_q %s, the same cases with hard x (outliers x1000, zero groups, 1e-33 groups, 1e4 among "
                   "1e-3): max err %.2e, split GEMV %.2e of sum (|scale q| + |bias|) |x| (tol 1e-5); %.2e, %.2e of "
                   "sum |w x| (tol 1e-4; dequantize-then-fp32: %.2e)", dr_cpu_quant_level_name(lv), h.mmc, h.gemvc,
                   h.mm, h.gemv, h.ref32);
        e.tile_same &= h.tile_same;
        e.tiled += h.tiled;
        CHECK_SHOW(e.deq <= 1e-6, "dequant_rows %s: max err %.2e of |scale q| + |bias| (tol 1e-6)",
                   dr_cpu_quant_level_name(lv), e.deq);
        CHECK_SHOW(e.tile_same && e.tiled >= 3,
                   "decode layout %s: %d 4- and 8-bit cases rearranged, matmul / GEMV / dequant / embed / get "
                   "bit-identical to file order (at avx512vnni the GEMVs are its own, in the errors above): %s",
                   dr_cpu_quant_level_name(lv), e.tiled,
                   e.tile_same ? "yes" : "NO");
        e.multi += h.multi;
        e.multi_same &= h.multi_same;
        CHECK_SHOW(e.multi_same && (e.multi > 0) == (lv != DR_QLEVEL_SCALAR),
                   "multi-token GEMV %s: T = 2..%d on both layouts, %d cases on a multi-token kernel (the rest: the "
                   "one-token GEMV per token), every output bit-identical to its output for that token alone: %s",
                   dr_cpu_quant_level_name(lv), DR_QK_MULTI_T, e.multi, e.multi_same ? "yes" : "NO");
    }
    dr_cpu_quant_set_level(-1);
}

static void test_embed(void) {
    void *buf, *own;
    dr_tensor src = rand_mat(50, 256, DR_DT_BF16, &buf), q;
    dr_quantize(&src, 4, 64, &q, &own);
    int32_t ids[3] = {0, 49, 17};
    float got[3 * 256], want[256];
    for (int lv = 0; lv < DR_QLEVEL_COUNT; lv++) {
        if (dr_cpu_quant_set_level(lv) != lv)
            continue;
        dr_cpu_embed_q(got, &q, ids, 3);
        float e = 0;
        for (int t = 0; t < 3; t++) {
            dr_dequantize_row(&q, ids[t], want);
            e = fmaxf(e, max_abs_diff(got + t * 256, want, 256));
        }
        CHECK_SHOW(e <= 1e-6f, "embed_q %s: max |d| vs dequantized rows %.2e", dr_cpu_quant_level_name(lv), e);
    }
    dr_cpu_quant_set_level(-1);
    free(own), free(buf);
}

/* ---- quantizer ---- */

/* Relative RMS error of plain min-max quantization (bias = min, scale =
 * range / levels, both fp32, round to nearest): the baseline for
 * dr_quantize's error. */
static double minmax_rel_rms(const dr_tensor *src, int bits, int gs) {
    const int64_t d = src->ne[0], n = src->ne[1];
    const int levels = (1 << bits) - 1;
    double e2 = 0, w2 = 0;
    for (int64_t r = 0; r < d; r++)
        for (int64_t g = 0; g < n / gs; g++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int64_t i = g * gs; i < (g + 1) * gs; i++) {
                float w = dr_load_f32(src->data, src->dtype, (size_t)(r * n + i));
                lo = fminf(lo, w), hi = fmaxf(hi, w);
            }
            float s = (hi - lo) / (float)levels;
            for (int64_t i = g * gs; i < (g + 1) * gs; i++) {
                float w = dr_load_f32(src->data, src->dtype, (size_t)(r * n + i));
                float q = s > 0 ? nearbyintf((w - lo) / s) : 0;
                double e = (double)(s * q + lo) - w;
                e2 += e * e, w2 += (double)w * w;
            }
        }
    return sqrt(e2 / w2);
}

static void test_quantize_error(void) {
    for (int bits = 4; bits <= 8; bits += 4)
        for (int gs = 32; gs <= 128; gs *= 2) {
            void *buf, *own;
            dr_tensor src = rand_mat(96, 512, DR_DT_BF16, &buf), q;
            CHECK(dr_quantize(&src, bits, gs, &q, &own) == DR_OK, "%s", dr_last_error());
            /* the error of each element relative to its group's range: 8-bit
               (min-max) never clips, so at most half a step (range / 510);
               the 4-bit fit may clip the extremes (it shrinks the range down
               to 0.8), never by more than a tenth of the range plus a step */
            float row[512];
            double worst = 0;
            for (int64_t r = 0; r < 96; r++) {
                dr_dequantize_row(&q, r, row);
                for (int64_t g = 0; g < 512 / gs; g++) {
                    float lo = INFINITY, hi = -INFINITY;
                    for (int64_t i = g * gs; i < (g + 1) * gs; i++) {
                        float w = dr_load_f32(src.data, src.dtype, (size_t)(r * 512 + i));
                        lo = fminf(lo, w), hi = fmaxf(hi, w);
                    }
                    for (int64_t i = g * gs; i < (g + 1) * gs; i++) {
                        double e = fabs(row[i] - dr_load_f32(src.data, src.dtype, (size_t)(r * 512 + i)));
                        double ratio = hi > lo ? e / (hi - lo) : 0;
                        worst = ratio > worst ? ratio : worst;
                    }
                }
            }
            dr_quant_stats st;
            CHECK(dr_quant_check(&src, &q, NULL, &st) == DR_OK, "%s", dr_last_error());
            /* 4-bit must beat min-max with exact fp32 scales; 8-bit is min-max
               with bf16 scales rounded up (within 3% of the fp32 one) */
            const double mm = minmax_rel_rms(&src, bits, gs);
            const double wbound = bits == 8 ? 0.5 / 255 * 1.01 : 0.1 + 1.0 / 15, rbound = bits == 8 ? 1.03 * mm : mm;
            CHECK_SHOW(worst <= wbound && st.rel_rms <= rbound,
                       "quantize %d-bit gs %3d: rel-rms %.3e (min-max with fp32 scales %.3e: %+.1f%%), max |err|/range "
                       "%.4f (<= %.4f)", bits, gs, st.rel_rms, mm, 100.0 * (st.rel_rms / mm - 1), worst, wbound);
            free(own), free(buf);
        }
    /* constant and all-zero rows are exact; bad arguments are refused */
    float z[2 * 64];
    for (int i = 0; i < 128; i++)
        z[i] = i < 64 ? 0.0f : 0.25f;
    dr_tensor zt = {.name = "zeros", .dtype = DR_DT_F32, .ndim = 2, .ne = {2, 64}, .data = z}, q;
    void *own;
    CHECK(dr_quantize(&zt, 4, 32, &q, &own) == DR_OK, "%s", dr_last_error());
    dr_quant_stats st;
    CHECK(dr_quant_check(&zt, &q, NULL, &st) == DR_OK && st.max_abs == 0, "constant rows: max err %g", st.max_abs);
    free(own);
    CHECK(dr_quantize(&zt, 3, 32, &q, &own) == DR_ERR_UNSUPPORTED && strstr(dr_last_error(), "zeros"),
          "bits 3: %s", dr_last_error());
    zt.ne[1] = 48, zt.ne[0] = 2;
    CHECK(dr_quantize(&zt, 4, 32, &q, &own) == DR_ERR_SHAPE && strstr(dr_last_error(), "multiple"),
          "48 %% 32: %s", dr_last_error());
}

static void test_zero_rows(void) {
    void *buf, *own;
    dr_tensor src = rand_mat(40, 128, DR_DT_BF16, &buf), q;
    src.name = "layers.0.linear_attn.in_proj_qkv.weight";
    dr_quantize(&src, 4, 64, &q, &own);
    /* the packaging bug: scales/biases of some rows lost */
    size_t sb = dr_quant_sb_row_bytes(128, 64, q.q.sb_dtype);
    memset((char *)q.q.scales + 10 * sb, 0, 8 * sb);
    memset((char *)q.q.biases + 10 * sb, 0, 8 * sb);
    dr_quant_stats st;
    dr_status s = dr_quant_check(&src, &q, NULL, &st);
    CHECK_SHOW(s == DR_ERR_FORMAT && st.zero_rows == 8 && st.first_zero == 10 &&
                   strstr(dr_last_error(), "in_proj_qkv"),
               "collapsed rows refused: %s", dr_last_error());
    free(own), free(buf);
}

/* ---- converted fixtures: load, KL, top-1 ---- */

static dr_status convert(const char *in, const char *out, int bits, int gs) {
    dr_convert_opts o = {.in_dir = in, .out_dir = out, .bits = bits, .group_size = gs, .n_threads = 2};
    return dr_quant_convert(&o, NULL);
}

typedef struct {
    double kl;  /* summed over positions */
    int agree, n;
    int agree_clear, n_clear; /* positions whose reference top-1 leads the runner-up by >= CLEAR_GAP */
    int gold_agree, gold_n;   /* the golden prompts only */
    double gap; /* largest reference logit gap top-1 vs the quantized top-1, where they differ */
} cmp_acc;

static cmp_acc g_pool[2]; /* q8, q4 over every fixture's positions */

/* The fixtures are random-weight models: next-token distributions are
 * nearly flat (top logit ~3 over 256-1024 tokens; the top two are within
 * 0.01 at ~3% of positions and within 0.1 at ~25%), so top-1 flips at near
 * ties are expected at any precision. CLEAR_GAP separates those from real
 * decisions; RAND_PROMPTS random prompts per fixture add ~12 000 positions
 * to the ~1 500 golden ones, so the pooled agreement is known to about
 * +-0.2% (one standard deviation) instead of +-0.6%. */
#define CLEAR_GAP 0.3
#define RAND_PROMPTS 16
#define RAND_LEN 128

static void compare_logits(const float *a, const float *b, int V, bool golden, cmp_acc *acc) {
    int ia = 0, ib = 0, i2 = -1;
    for (int v = 1; v < V; v++) {
        if (a[v] > a[ia])
            ia = v;
        if (b[v] > b[ib])
            ib = v;
    }
    for (int v = 0; v < V; v++)
        if (v != ia && (i2 < 0 || a[v] > a[i2]))
            i2 = v;
    const double ma = a[ia], mb = b[ib];
    double za = 0, zb = 0;
    for (int v = 0; v < V; v++)
        za += exp(a[v] - ma), zb += exp(b[v] - mb);
    double kl = 0;
    for (int v = 0; v < V; v++) {
        double lpa = a[v] - ma - log(za), lpb = b[v] - mb - log(zb);
        kl += exp(lpa) * (lpa - lpb);
    }
    acc->kl += kl;
    if (ia != ib)
        acc->gap = fmax(acc->gap, a[ia] - a[ib]);
    acc->agree += ia == ib;
    acc->n++;
    if (a[ia] - a[i2] >= CLEAR_GAP)
        acc->agree_clear += ia == ib, acc->n_clear++;
    if (golden)
        acc->gold_agree += ia == ib, acc->gold_n++;
}

/* Logits of ids [T] in a fresh session: the first `prefill` as one block,
 * then token by token (the decode paths). */
static bool eval_tokens(dr_model *m, const int32_t *ids, int T, int prefill, float *logits) {
    dr_session *s = NULL;
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 2048;
    const int V = dr_model_info_get(m)->n_vocab;
    bool ok = dr_session_new(m, &p, &s) == DR_OK && dr_session_eval(s, ids, prefill, DR_LOGITS_ALL, logits) == DR_OK;
    for (int t = prefill; ok && t < T; t++)
        ok = dr_session_eval(s, ids + t, 1, DR_LOGITS_ALL, logits + (size_t)t * V) == DR_OK;
    dr_session_free(s);
    return ok;
}

static bool eval_all(dr_model *m, const int32_t *ids, int T, float *logits) {
    return eval_tokens(m, ids, T, T, logits);
}

static void compare_prompt(dr_model *ref, dr_model *m, const int32_t *ids, int T, int V, bool golden, cmp_acc *acc) {
    float *a = malloc((size_t)T * V * sizeof *a), *b = malloc((size_t)T * V * sizeof *b);
    CHECK(eval_all(ref, ids, T, a) && eval_all(m, ids, T, b), "eval: %s", dr_last_error());
    for (int t = 0; t < T; t++)
        compare_logits(a + (size_t)t * V, b + (size_t)t * V, V, golden, acc);
    free(a), free(b);
}

static double pct(int a, int n) { return n ? 100.0 * a / n : 0.0; }

static void fixture_quality(const char *fx, dr_model *ref, int bits, int gs) {
    char in[512], out[512], path[600];
    snprintf(in, sizeof in, "%s/%s", DR_TEST_DATA, fx);
    snprintf(out, sizeof out, "%s/%s-q%d", g_tmp, fx, bits);
    dr_status st = convert(in, out, bits, gs);
    CHECK(st == DR_OK, "convert %s q%d: %s", fx, bits, dr_last_error());
    dr_model *m = NULL;
    st = st == DR_OK ? dr_model_load(out, &m) : st;
    CHECK(st == DR_OK, "load %s q%d: %s", fx, bits, dr_last_error());
    snprintf(path, sizeof path, "%s/golden.safetensors", in);
    dr_st_file g = {0};
    if (st != DR_OK || dr_st_open(path, &g) != DR_OK) {
        dr_model_free(m);
        rm_dir(out);
        return;
    }
    const int V = dr_model_info_get(ref)->n_vocab;
    cmp_acc acc = {0};
    for (int pi = 0;; pi++) {
        char name[64];
        int32_t *ids;
        snprintf(name, sizeof name, "p%d.input_ids", pi);
        int T = golden_ids(&g, name, &ids);
        if (T <= 0)
            break;
        compare_prompt(ref, m, ids, T, V, true, &acc);
        free(ids);
    }
    uint64_t rng = 0x2545f4914f6cdd1dull; /* the same prompts for q8 and q4 */
    int32_t ids[RAND_LEN];
    for (int p = 0; p < RAND_PROMPTS; p++) {
        for (int t = 0; t < RAND_LEN; t++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            ids[t] = (int32_t)(rng % (uint64_t)V);
        }
        compare_prompt(ref, m, ids, RAND_LEN, V, false, &acc);
    }
    const double kl = acc.n ? acc.kl / acc.n : 0;
    cmp_acc *pool = &g_pool[bits == 8 ? 0 : 1];
    pool->kl += acc.kl, pool->agree += acc.agree, pool->n += acc.n;
    pool->agree_clear += acc.agree_clear, pool->n_clear += acc.n_clear;
    pool->gold_agree += acc.gold_agree, pool->gold_n += acc.gold_n;
    pool->gap = fmax(pool->gap, acc.gap);
    /* per fixture: KL bound; top-1 is asserted on the pooled positions (see test_fixtures) */
    CHECK_SHOW(kl < (bits == 8 ? 0.01 : 0.5) && pct(acc.agree, acc.n) > 20.0,
               "%-15s q%d g%d: mean KL %.2e, top-1 %5.1f%% (%d/%d positions; golden prompts %5.1f%% %d/%d; gap >= "
               "%.1f: %5.1f%% %d/%d; largest ref gap at a flip %.3f)", fx, bits, gs, kl, pct(acc.agree, acc.n),
               acc.agree, acc.n, pct(acc.gold_agree, acc.gold_n), acc.gold_agree, acc.gold_n, CLEAR_GAP,
               pct(acc.agree_clear, acc.n_clear), acc.agree_clear, acc.n_clear, acc.gap);
    dr_st_close(&g);
    dr_model_free(m);
    rm_dir(out);
}

static void test_fixtures(void) {
    static const char *const fx[] = {"dense-f32", "moe-bf16-fused", "moe-bf16", "next-f32", "long-bf16"};
    for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++) {
        char in[512];
        snprintf(in, sizeof in, "%s/%s", DR_TEST_DATA, fx[i]);
        dr_model *ref = NULL;
        CHECK(dr_model_load(in, &ref) == DR_OK, "load %s: %s", in, dr_last_error());
        if (!ref)
            continue;
        fixture_quality(fx[i], ref, 8, 32);
        fixture_quality(fx[i], ref, 4, 32);
        dr_model_free(ref);
    }
    /* Issue 4 asks for q8 top-1 >= 95% against the unquantized model. On
       these random fixtures it is ~93.6% (not met; reported, see
       docs/PERFORMANCE.md): the golden prompts alone gave 95.0%, but that
       sample is too small to tell (one std = 0.6%). What is asserted, each
       with a margin of several standard deviations: the pooled q8 top-1
       does not regress below 92%, and q8 keeps >= 98.5% of the decisions that
       are not near-ties (reference gap >= CLEAR_GAP). */
    const cmp_acc *q8 = &g_pool[0], *q4 = &g_pool[1];
    printf("issue 4 target q8 top-1 >= 95%%: %s (%.2f%% of %d positions; golden prompts only %.2f%% of %d)\n",
           pct(q8->agree, q8->n) >= 95.0 ? "met" : "NOT met on these random-weight fixtures", pct(q8->agree, q8->n),
           q8->n, pct(q8->gold_agree, q8->gold_n), q8->gold_n);
    CHECK_SHOW(pct(q8->agree, q8->n) >= 92.0 && pct(q8->agree_clear, q8->n_clear) >= 98.5,
               "all fixtures q8: mean KL %.2e, top-1 %.2f%% (%d/%d; regression bound >= 92%%), where the reference "
               "top-1 leads by >= %.1f: %.2f%% (%d/%d; >= 98.5%%)", q8->n ? q8->kl / q8->n : 0, pct(q8->agree, q8->n),
               q8->agree, q8->n, CLEAR_GAP, pct(q8->agree_clear, q8->n_clear), q8->agree_clear, q8->n_clear);
    CHECK_SHOW(pct(q4->agree, q4->n) >= 40.0,
               "all fixtures q4: mean KL %.2e, top-1 %.2f%% (%d/%d; regression bound >= 40%%, chance < 0.5%%), gap >= "
               "%.1f: %.2f%% (%d/%d)", q4->n ? q4->kl / q4->n : 0, pct(q4->agree, q4->n), q4->agree, q4->n, CLEAR_GAP,
               pct(q4->agree_clear, q4->n_clear), q4->agree_clear, q4->n_clear);
}

/* ---- loader exactness: quantized model == fp32 model of the dequantized weights ---- */

static bool ends(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Write an HF-named F32 checkpoint (dense Qwen3.5 wrapper) holding the
 * dequantized weights of the MLX directory `mlx`: names back to
 * model.language_model.*, norms back to w (1 + w stored), conv back to
 * [C, 1, K]. Uses the original config.json of `orig`. */
static bool write_dequantized(const char *mlx, const char *orig, const char *dst, int bits, int gs) {
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", mlx);
    dr_st_file f;
    if (dr_st_open(p, &f) != DR_OK)
        return false;
    int n = 0;
    char(*names)[256] = calloc((size_t)f.n_tensors, sizeof *names);
    int *ndims = calloc((size_t)f.n_tensors, sizeof *ndims);
    int64_t(*shapes)[DR_ST_MAX_DIMS] = calloc((size_t)f.n_tensors, sizeof *shapes);
    float **datas = calloc((size_t)f.n_tensors, sizeof *datas);
    for (int i = 0; i < f.n_tensors; i++) {
        const dr_st_tensor *t = &f.tensors[i];
        if (ends(t->name, ".scales") || ends(t->name, ".biases"))
            continue;
        const char *rest = t->name + strlen("language_model.model.");
        if (!strcmp(t->name, "language_model.lm_head.weight"))
            snprintf(names[n], sizeof names[n], "lm_head.weight");
        else
            snprintf(names[n], sizeof names[n], "model.language_model.%s", rest);
        ndims[n] = t->ndim;
        memcpy(shapes[n], t->shape, sizeof t->shape);
        size_t numel = (size_t)dr_st_numel(t);
        if (t->dtype == DR_DT_U32) { /* dequantize, shape back to [out, in] */
            char base[256];
            snprintf(base, sizeof base, "%.*s.scales", (int)(strlen(t->name) - 7), t->name);
            const dr_st_tensor *sc = dr_st_file_find(&f, base);
            memcpy(base + strlen(base) - 6, "biases", 6);
            const dr_st_tensor *bi = dr_st_file_find(&f, base);
            shapes[n][t->ndim - 1] = t->shape[t->ndim - 1] * 32 / bits;
            dr_tensor q = {.dtype = DR_DT_U32, .ndim = 2, .ne = {t->shape[0], shapes[n][1]}, .data = t->data,
                           .q = {bits, gs, sc->dtype, sc->data, bi->data}};
            numel = (size_t)(q.ne[0] * q.ne[1]);
            datas[n] = malloc(numel * sizeof(float));
            for (int64_t r = 0; r < q.ne[0]; r++)
                dr_dequantize_row(&q, r, datas[n] + r * q.ne[1]);
        } else {
            datas[n] = malloc(numel * sizeof(float));
            bool norm = ends(t->name, "layernorm.weight") || ends(t->name, "q_norm.weight") ||
                        ends(t->name, "k_norm.weight") || !strcmp(rest, "norm.weight");
            for (size_t k = 0; k < numel; k++)
                datas[n][k] = dr_load_f32(t->data, t->dtype, k) - (norm ? 1.0f : 0.0f);
            if (ends(t->name, "conv1d.weight"))
                shapes[n][1] = 1, shapes[n][2] = t->shape[1];
        }
        n++;
    }
    mkdir(dst, 0755);
    snprintf(p, sizeof p, "%s/model.safetensors", dst);
    const char **nm = calloc((size_t)n, sizeof *nm);
    for (int i = 0; i < n; i++)
        nm[i] = names[i];
    bool ok = dr_st_write_f32(p, n, nm, ndims, (const int64_t(*)[DR_ST_MAX_DIMS])shapes,
                              (const float *const *)datas) == DR_OK;
    char a[1400];
    snprintf(a, sizeof a, "cp '%.600s/config.json' '%.600s/config.json'", orig, dst);
    ok = ok && system(a) == 0;
    for (int i = 0; i < n; i++)
        free(datas[i]);
    free(nm), free(datas), free(shapes), free(ndims), free(names);
    dr_st_close(&f);
    return ok;
}

static void test_loader_exact(void) {
    for (int bits = 4; bits <= 8; bits += 4) {
        char in[512], q[512], dq[512];
        snprintf(in, sizeof in, "%s/dense-f32", DR_TEST_DATA);
        snprintf(q, sizeof q, "%s/exact-q", g_tmp);
        snprintf(dq, sizeof dq, "%s/exact-dq", g_tmp);
        CHECK(convert(in, q, bits, 32) == DR_OK, "%s", dr_last_error());
        CHECK(write_dequantized(q, in, dq, bits, 32), "writing the dequantized checkpoint failed");
        dr_model *mq = NULL, *md = NULL;
        CHECK(dr_model_load(q, &mq) == DR_OK, "%s", dr_last_error());
        CHECK(dr_model_load(dq, &md) == DR_OK, "%s", dr_last_error());
        if (mq && md) {
            int32_t ids[9] = {1, 17, 300, 42, 999, 5, 77, 128, 3};
            const int V = dr_model_info_get(md)->n_vocab;
            float *a = malloc(9 * (size_t)V * sizeof *a), *b = malloc(9 * (size_t)V * sizeof *b);
            CHECK(eval_all(md, ids, 9, a) && eval_all(mq, ids, 9, b), "%s", dr_last_error());
            float e = max_abs_diff(a, b, 9 * (size_t)V);
            CHECK_SHOW(e <= 1e-3f, "dense-f32 q%d model vs fp32 model of its dequantized weights: max |dlogit| %.2e "
                       "(tol 1e-3)", bits, e);
            free(a), free(b);
        }
        dr_model_free(mq);
        dr_model_free(md);
        rm_dir(q);
        rm_dir(dq);
    }
}

/* ---- the CPU's decode layout in a whole model ---- */

/* Rows the backend rearranged over the embedding and every layer's out_proj / FFN down. */
static int64_t tiled_rows(const dr_model *m) {
    int64_t n = m->w.embed.q.tiled_rows;
    for (int l = 0; l < m->hp.n_layers; l++)
        n += m->w.layers[l].gdn.out_proj.q.tiled_rows + m->w.layers[l].ffn.down.q.tiled_rows;
    return n;
}

/* Logits of every position of ids evaluated in chunks of the given sizes
 * (one session), as a prompt and then the turns of a chat arrive. */
static bool eval_chunks(dr_model *m, const int32_t *ids, const int *chunk, int n_chunks, float *logits) {
    dr_session *s = NULL;
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 2048;
    const int V = dr_model_info_get(m)->n_vocab;
    bool ok = dr_session_new(m, &p, &s) == DR_OK;
    for (int c = 0, at = 0; ok && c < n_chunks; at += chunk[c++])
        ok = dr_session_eval(s, ids + at, chunk[c], DR_LOGITS_ALL, logits + (size_t)at * V) == DR_OK;
    dr_session_free(s);
    return ok;
}

/* long-bf16 at 4 and at 8 bits loaded with the decode layout and with
 * DR_CPU_TILE=0, evaluated as a prompt of DR_QK_MULTI_T + 2 tokens, a
 * chunk of 5 and 2 single tokens. The backend makes the layout only where
 * the avx512vnni GEMVs run (else both loads are in file order, which the
 * line says). Those GEMVs (one token, and a few at once: the chunk, and
 * the prompt's lm_head in blocks of DR_LOGIT_ROWS) sum in another order
 * than the file-order paths (each output within ~1e-7 of sum |w x| of the
 * exact product, the kernel cases above), so the logits are held to 1e-4
 * of the file-order run's; that every path reads the layout's rows back
 * exactly is checked bit for bit by the kernel cases' decode-layout line. */
static void tiled_model(int bits) {
    char in[512], q[512];
    snprintf(in, sizeof in, "%s/long-bf16", DR_TEST_DATA);
    snprintf(q, sizeof q, "%s/tiled-q%d", g_tmp, bits);
    CHECK(convert(in, q, bits, 32) == DR_OK, "%s", dr_last_error());
    dr_model *mt = NULL, *mf = NULL;
    CHECK(dr_model_load(q, &mt) == DR_OK, "%s", dr_last_error());
    setenv("DR_CPU_TILE", "0", 1);
    CHECK(dr_model_load(q, &mf) == DR_OK, "%s", dr_last_error());
    unsetenv("DR_CPU_TILE");
    if (mt && mf) {
        enum { LONG = DR_QK_MULTI_T + 2, N = LONG + 7 };
        const int chunk[] = {LONG, 5, 1, 1};
        int32_t ids[N];
        for (int i = 0; i < N; i++)
            ids[i] = (int32_t)((i * 37 + 11) % 256); /* vocabulary 256 */
        const int V = dr_model_info_get(mt)->n_vocab;
        float *a = malloc(N * (size_t)V * sizeof *a), *b = malloc(N * (size_t)V * sizeof *b);
        CHECK(eval_chunks(mt, ids, chunk, 4, a) && eval_chunks(mf, ids, chunk, 4, b), "%s", dr_last_error());
        const int64_t rt = tiled_rows(mt), rf = tiled_rows(mf);
        CHECK(rf == 0, "DR_CPU_TILE=0 still rearranged %lld rows", (long long)rf);
        CHECK(rt > 0 || dr_cpu_quant_level() < DR_QLEVEL_AVX512_VNNI, "the %s level left every row in file order",
              dr_cpu_quant_level_name(dr_cpu_quant_level()));
        const size_t np = LONG * (size_t)V;
        const float dp = max_abs_diff(a, b, np), dd = max_abs_diff(a + np, b + np, (N - LONG) * (size_t)V);
        CHECK_SHOW(dp <= 1e-4f && dd <= 1e-4f,
                   "long-bf16 q%d with the decode layout (%lld rows rearranged, level %s) against file order: %d "
                   "tokens of prompt max |d logit| %.2e, a chunk of 5 and 2 single tokens %.2e (tol 1e-4)",
                   bits, (long long)rt, dr_cpu_quant_level_name(dr_cpu_quant_level()), (int)LONG, dp, dd);
        free(a), free(b);
    }
    dr_model_free(mt);
    dr_model_free(mf);
    rm_dir(q);
}

static void test_tiled_model(void) {
    tiled_model(4);
    tiled_model(8);
}

/* ---- the synthetic bench model's bits ---- */

static dr_model *synth(int bits, int random) {
    dr_synth_params p = {.quant_bits = bits, .quant_group = 32, .quant_random = random, .seed = 7, .n_threads = 2};
    p.mp = dr_model_default_params();
    p.mp.device = "cpu";
    dr_model *m = NULL;
    CHECK(dr_model_synthetic(DR_TEST_DATA "/moe-bf16/config.json", &p, &m) == DR_OK, "synthetic q%d random %d: %s",
          bits, random, dr_last_error());
    return m;
}

/* `bench --synthetic --quant q4` builds what `deltarun quantize --bits 4`
 * writes (quant/convert.c): the router and the shared expert's scalar gate
 * at 8 bits, every other matrix at 4, with and without --quant-random. The
 * generated-then-quantized router is the bf16 model's (same seed) quantized
 * at 8 bits, byte for byte, and the model decodes to finite logits. */
static void test_synthetic_bits(void) {
    dr_model *mb = synth(0, 0);
    for (int random = 0; random < 2 && mb; random++) {
        dr_model *m = synth(4, random);
        if (!m)
            continue;
        const dr_ffn_weights *f = &m->w.layers[0].ffn;
        CHECK_SHOW(f->router.q.bits == 8 && f->sh_gate_w.q.bits == 8 && f->sh_gate.q.bits == 4 &&
                       f->experts[0].gate.q.bits == 4 && m->w.layers[0].gdn.out_proj.q.bits == 4,
                   "synthetic q4 random %d: router %d, shared_expert_gate %d, shared gate %d, expert gate %d, "
                   "out_proj %d bits (want 8, 8, 4, 4, 4)",
                   random, f->router.q.bits, f->sh_gate_w.q.bits, f->sh_gate.q.bits, f->experts[0].gate.q.bits,
                   m->w.layers[0].gdn.out_proj.q.bits);
        if (!random) {
            dr_quant_opts o = {.bits = 8, .group_size = 32, .n_threads = 1};
            dr_tensor q;
            void *own = NULL;
            const dr_tensor *r = &mb->w.layers[0].ffn.router;
            const bool ok = dr_quantize_ex(r, &o, &q, &own) == DR_OK;
            const size_t nb = (size_t)r->ne[0] * (size_t)r->ne[1];
            CHECK_SHOW(ok && !memcmp(q.data, f->router.data, nb) &&
                           !memcmp(q.q.scales, f->router.q.scales, nb / 32 * 2) &&
                           !memcmp(q.q.biases, f->router.q.biases, nb / 32 * 2),
                       "synthetic q4: the router is the bf16 model's at 8 bits, byte for byte");
            free(own);
        }
        const int V = dr_model_info_get(m)->n_vocab, chunk[2] = {3, 1};
        const int32_t ids[4] = {1, 5, 9, 2};
        float *lg = malloc((size_t)4 * V * sizeof *lg);
        bool fin = eval_chunks(m, ids, chunk, 2, lg);
        for (size_t i = 0; fin && i < (size_t)4 * V; i++)
            fin = isfinite(lg[i]);
        CHECK_SHOW(fin, "synthetic q4 random %d: 4 tokens evaluated, finite logits%s%s", random, fin ? "" : ": ",
                   fin ? "" : dr_last_error());
        free(lg);
        dr_model_free(m);
    }
    dr_model_free(mb);
}

/* ---- malformed quantized checkpoints ---- */

/* Copy src (an MLX dir) to dst, dropping tensor `drop`, replacing the
 * shape of `reshape` by its first dim x 1 (data cut to match), and setting
 * config.json quantization key `qkey` (if any) to the JSON `qval`. */
static void mutate(const char *src, const char *dst, const char *drop, const char *reshape, const char *qkey,
                   const char *qval) {
    char p[600], q[600];
    mkdir(dst, 0755);
    dr_st_file f;
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    if (dr_st_open(p, &f) != DR_OK)
        return;
    dr_stw_tensor *ts = calloc((size_t)f.n_tensors, sizeof *ts);
    int n = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const dr_st_tensor *t = &f.tensors[i];
        if (drop && !strcmp(t->name, drop))
            continue;
        ts[n] = (dr_stw_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim};
        memcpy(ts[n].shape, t->shape, sizeof t->shape);
        if (reshape && !strcmp(t->name, reshape))
            ts[n].shape[t->ndim - 1] = 1;
        n++;
    }
    snprintf(q, sizeof q, "%s/model.safetensors", dst);
    dr_st_writer *w;
    CHECK(dr_stw_create(q, n, ts, "mlx", &w) == DR_OK, "%s", dr_last_error());
    for (int i = 0, k = 0; i < f.n_tensors; i++) {
        const dr_st_tensor *t = &f.tensors[i];
        if (drop && !strcmp(t->name, drop))
            continue;
        dr_stw_write(w, k, 0, t->data, dr_stw_nbytes(w, k));
        k++;
    }
    CHECK(dr_stw_finish(w) == DR_OK, "%s", dr_last_error());
    free(ts);
    dr_st_close(&f);
    snprintf(p, sizeof p, "%s/config.json", src);
    snprintf(q, sizeof q, "%s/config.json", dst);
    json_t *root = json_load_file(p, JSON_PRESERVE_ORDER, NULL);
    if (qkey) {
        json_t *qb = json_object_get(root, "quantization");
        json_object_set_new(qb, qkey, json_loads(qval, JSON_DECODE_ANY, NULL));
    }
    json_dump_file(root, q, JSON_INDENT(2));
    json_decref(root);
}

static void expect_load_error(const char *dir, const char *what, const char *needle) {
    dr_model *m = NULL;
    dr_status st = dr_model_load(dir, &m);
    CHECK_SHOW(st != DR_OK && strstr(dr_last_error(), needle), "%s -> %s", what,
               st != DR_OK ? dr_last_error() : "loaded (expected an error)");
    dr_model_free(m);
    rm_dir(dir);
}

static void test_malformed(void) {
    char in[512], good[512], bad[512];
    snprintf(in, sizeof in, "%s/dense-f32", DR_TEST_DATA);
    snprintf(good, sizeof good, "%s/good-q8", g_tmp);
    snprintf(bad, sizeof bad, "%s/bad", g_tmp);
    CHECK(convert(in, good, 8, 32) == DR_OK, "%s", dr_last_error());
    const char *L = "language_model.model.layers.3.self_attn.q_proj";
    char w[256], sc[256], bi[256], over[300];
    snprintf(w, sizeof w, "%s.weight", L);
    snprintf(sc, sizeof sc, "%s.scales", L);
    snprintf(bi, sizeof bi, "%s.biases", L);
    snprintf(over, sizeof over, "%s", L);
    mutate(good, bad, NULL, sc, NULL, NULL);
    expect_load_error(bad, "scales shape wrong", sc);
    mutate(good, bad, NULL, NULL, "bits", "3");
    expect_load_error(bad, "bits 3", "3-bit");
    mutate(good, bad, NULL, NULL, over, "{\"group_size\": 128, \"bits\": 8}");
    expect_load_error(bad, "group size not dividing the row", w);
    mutate(good, bad, NULL, NULL, over, "{\"group_size\": 32, \"bits\": 4}");
    expect_load_error(bad, "packed width mismatch", "packed shape");
    mutate(good, bad, NULL, NULL, over, "false");
    expect_load_error(bad, "override false on a quantized module", "not quantized (false)");
    mutate(good, bad, NULL, NULL, over, "7");
    expect_load_error(bad, "override neither object nor boolean", "must be an object or true/false");
    mutate(good, bad, NULL, NULL, "mode", "3");
    expect_load_error(bad, "mode not a string", "\"mode\" must be a string");
    mutate(good, bad, NULL, NULL, "bits", "0");
    expect_load_error(bad, "bits 0", "from 1 to 1024");
    mutate(good, bad, NULL, NULL, "group_size", "\"64\"");
    expect_load_error(bad, "group_size a string", "group_size");
    mutate(good, bad, sc, NULL, NULL, NULL);
    expect_load_error(bad, "missing scales", sc);
    mutate(good, bad, bi, NULL, NULL, NULL);
    expect_load_error(bad, "missing biases", bi);
    /* the untouched copy loads (the mutation helper itself is sound), and so
       does an override of true (mlx-lm: quantized with the block's values) */
    mutate(good, bad, NULL, NULL, NULL, NULL);
    dr_model *m = NULL;
    CHECK(dr_model_load(bad, &m) == DR_OK, "unmodified copy: %s", dr_last_error());
    dr_model_free(m);
    rm_dir(bad);
    mutate(good, bad, NULL, NULL, over, "true");
    m = NULL;
    CHECK(dr_model_load(bad, &m) == DR_OK, "override true: %s", dr_last_error());
    dr_model_free(m);
    rm_dir(bad);
    rm_dir(good);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dr_test_quant_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        printf("cannot create a temporary directory\n");
        return 1;
    }
    test_kernels();
    test_embed();
    test_quantize_error();
    test_zero_rows();
    test_loader_exact();
    test_tiled_model();
    test_synthetic_bits();
    if (getenv("DR_EXPECT_SIMD")) /* the emulated run (tests/CMakeLists.txt) */
        printf("skip fixture quality (KL / top-1 of q8 and q4 over ~12k positions): ~40 minutes under "
               "emulation; the native run measures it, and the kernel cases above ran at this level\n");
    else
        test_fixtures();
    test_malformed();
    rmdir(g_tmp);
    return TEST_DONE();
}
