/* ops/cpu/matmul_quant.c - matmul and embedding for MLX affine-quantized
 * weights: the scalar reference, and the run-time choice of SIMD kernels.
 *
 * One token (decode): x is prepared once (group sums, 4-bit nibble order,
 * quant_kern.h) and each row streams through s * (q . x) + b * X per group.
 * Several tokens: dr_cpu_matmul_q_rows dequantizes a block of a row once
 * into an fp32 buffer and reuses it for every token, four at a time; the
 * threaded backend instead dequantizes whole row blocks with
 * dr_cpu_q_dequant_rows and runs its fp32 GEMM tiles (fast_matmul.c).
 * The scalar level keeps the original element-by-element reference (w =
 * scale * q + bias, fp32 accumulation) that the tests compare against.
 * Tensors in the CPU's decode layout (dr_cpu_q_tile) meet their own GEMV at
 * level avx512vnni; every other path here reads them a row at a time
 * through a file-order copy (untile_row).
 */
#include "ops/cpu/quant.h"
#include "ops/cpu/amx.h"
#include "ops/cpu/quant_kern.h"
#include "quant/quant.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- scalar reference ---- */

/* Longest row dr_cpu_q_tile rearranges: untile_row copies one to the stack. */
#define TILE_MAX_N 32768

/* Row r's tile in the decode layout (quant_kern.h; 2-D tensors only): its
 * first row, *m its rows. */
static int64_t tile_of(const dr_tensor *w, int64_t r, int *m) {
    const int64_t d = w->ne[0], t0 = r / DR_QK_TILE_ROWS * DR_QK_TILE_ROWS;
    *m = d - t0 < DR_QK_TILE_ROWS ? (int)(d - t0) : DR_QK_TILE_ROWS;
    return t0;
}

float dr_q_get(const dr_tensor *w, int64_t r, int64_t i) {
    const int bits = w->q.bits, per_word = 32 / bits;
    const int64_t n = w->ne[w->ndim - 1], groups = n / w->q.group_size;
    uint32_t word;
    size_t g = (size_t)r * groups + (size_t)(i / w->q.group_size);
    if (w->q.tiled_rows) { /* word i / per_word of row r is that chunk of its tile */
        int m;
        const int64_t t0 = tile_of(w, r, &m), k = r - t0;
        memcpy(&word, dr_qk_row(w, t0) + ((size_t)(i / per_word) * (size_t)m + (size_t)k) * 4, 4);
        g = (size_t)t0 * groups + (size_t)(i / w->q.group_size) * (size_t)m + (size_t)k;
    } else {
        memcpy(&word, dr_qk_at(w, r, i / per_word * per_word), 4);
    }
    uint32_t q = (word >> ((i % per_word) * bits)) & ((1u << bits) - 1u);
    float scale = dr_load_f32(w->q.scales, w->q.sb_dtype, g), bias = dr_load_f32(w->q.biases, w->q.sb_dtype, g);
    return scale * (float)q + bias;
}

/* One row of a tiled tensor, copied back to file order (every reader but
 * the avx512vnni GEMV sees the decode layout this way). */
typedef struct {
    unsigned char pk[TILE_MAX_N];                /* packed row (8-bit: a byte an element) */
    unsigned char sb[2 * (TILE_MAX_N / 32) * 4]; /* G scales, then G biases */
} row_copy;

/* *v = a one-row file-order view of row r of the tiled tensor w, held in c. */
static void untile_row(const dr_tensor *w, int64_t r, row_copy *c, dr_tensor *v) {
    int m;
    const int64_t t0 = tile_of(w, r, &m), k = r - t0, n = w->ne[w->ndim - 1], G = n / w->q.group_size;
    const unsigned char *tile = dr_qk_row(w, t0);
    for (int64_t ch = 0; ch < n * w->q.bits / 32; ch++) /* 4-byte chunks */
        memcpy(c->pk + 4 * ch, tile + ((size_t)ch * (size_t)m + (size_t)k) * 4, 4);
    const size_t es = dr_dtype_size(w->q.sb_dtype), at = (size_t)t0 * (size_t)G * es;
    const unsigned char *sc = (const unsigned char *)w->q.scales + at, *bi = (const unsigned char *)w->q.biases + at;
    for (int64_t g = 0; g < G; g++) {
        memcpy(c->sb + (size_t)g * es, sc + ((size_t)g * (size_t)m + (size_t)k) * es, es);
        memcpy(c->sb + (size_t)(G + g) * es, bi + ((size_t)g * (size_t)m + (size_t)k) * es, es);
    }
    *v = *w;
    v->ndim = 2;
    v->ne[0] = 1;
    v->ne[1] = n;
    v->ne[2] = v->ne[3] = 0;
    v->data = c->pk;
    v->q.scales = c->sb;
    v->q.biases = c->sb + (size_t)G * es;
    v->q.tiled_rows = 0;
}

/* Row r of w in file order: w itself, row *rr = r, or for a tiled w the
 * one-row copy held in c and v, row *rr = 0. */
static const dr_tensor *file_row(const dr_tensor *w, int64_t r, row_copy *c, dr_tensor *v, int64_t *rr) {
    if (!w->q.tiled_rows) {
        *rr = r;
        return w;
    }
    untile_row(w, r, c, v);
    *rr = 0;
    return v;
}

static void matmul_q_scalar(float *y, const float *x, const dr_tensor *w, int T, int r0, int r1) {
    const int64_t d = w->ne[w->ndim - 2], n = w->ne[w->ndim - 1];
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < T; t++) {
            float s = 0.0f;
            for (int64_t i = 0; i < n; i++)
                s += dr_q_get(w, r, i) * x[(size_t)t * n + i];
            y[(size_t)t * d + r] = s;
        }
}

/* ---- dispatch ---- */

static const char *const g_level_names[DR_QLEVEL_COUNT] = {"scalar", "avx2", "avx512", "avx512bf16", "avx512vnni"};
static atomic_int g_level = -1; /* DR_QLEVEL_*, -1 until first use */
static int g_best;              /* best level this CPU runs */
static bool g_multi_off;        /* DR_CPU_QMULTI=0: no multi-token GEMV, for A/B runs */
static bool g_digits_off;       /* DR_CPU_QDIGITS=0: no quant_avx2_digits.c, for A/B runs */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void detect(void) {
    int best = DR_QLEVEL_SCALAR;
#ifdef DR_QUANT_X86 /* the SIMD files are only built for x86 */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        best = DR_QLEVEL_AVX2;
    if (best == DR_QLEVEL_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        best = DR_QLEVEL_AVX512;
#ifdef DR_QUANT_BF16 /* quant_avx512bf16.c and quant_avx512vnni.c are built (src/ops/cpu/cpu.cmake) */
    if (best == DR_QLEVEL_AVX512 && __builtin_cpu_supports("avx512bf16"))
        best = DR_QLEVEL_AVX512_BF16;
    if (best == DR_QLEVEL_AVX512_BF16 && __builtin_cpu_supports("avx512vnni"))
        best = DR_QLEVEL_AVX512_VNNI;
#endif
#endif
    const char *cap = getenv("DR_CPU_QLEVEL"); /* A/B runs of one binary: e.g. DR_CPU_QLEVEL=avx512 */
    for (int lv = 0; cap && lv < best; lv++)
        if (strcmp(cap, g_level_names[lv]) == 0)
            best = lv;
    g_best = best;
    const char *mt = getenv("DR_CPU_QMULTI");
    g_multi_off = mt && strcmp(mt, "0") == 0;
    const char *dg = getenv("DR_CPU_QDIGITS");
    g_digits_off = dg && strcmp(dg, "0") == 0;
    int unset = -1;
    atomic_compare_exchange_strong(&g_level, &unset, best);
}

int dr_cpu_quant_level(void) {
    pthread_once(&g_once, detect);
    return atomic_load_explicit(&g_level, memory_order_relaxed);
}

int dr_cpu_quant_set_level(int level) {
    pthread_once(&g_once, detect);
    if (level < 0 || level > g_best)
        level = g_best;
    atomic_store(&g_level, level);
    return level;
}

const char *dr_cpu_quant_level_name(int level) {
    return level >= 0 && level < DR_QLEVEL_COUNT ? g_level_names[level] : "?";
}

static const dr_qkern *kernels(void) {
    switch (dr_cpu_quant_level()) {
#ifdef DR_QUANT_X86
    case DR_QLEVEL_AVX512_VNNI: /* everything but the 4-bit GEMV: see gemv_at */
    case DR_QLEVEL_AVX512_BF16:
    case DR_QLEVEL_AVX512:
        return &dr_qkern_avx512;
    case DR_QLEVEL_AVX2:
        return &dr_qkern_avx2;
#endif
    default:
        return NULL;
    }
}

/* ---- one token: prepared x, group sums ---- */

/* Enough for every level's layout (the largest: DR_QK_BF16_* in quant_kern.h;
 * DR_QK_VNNI_* and DR_QK_T16_* take 3 of its 4 bytes an element, and a
 * float more a group). */
size_t dr_cpu_q_prep_floats(const dr_tensor *w) {
    const int64_t n = w->ne[w->ndim - 1];
    return (size_t)(DR_QK_BF16_PAD(n) + 2 * (n / w->q.group_size));
}

#ifdef DR_QUANT_BF16
/* Which GEMV of its own serves w at this level: for 4 bits 1 =
 * quant_avx512bf16.c (bf16-pair x), 2 = quant_avx512vnni.c (8-bit digits),
 * 4 = quant_avx2_digits.c (8-bit digits; one token only, rows a multiple of
 * 64: multi = a multi-token product, whose avx2 kernel is the table's);
 * 3 = quant_avx512vnni_t16.c (the same digits, decode layout; 4 or 8 bits);
 * 0 = the table's. */
static int own_q(int level, const dr_tensor *w, bool multi) {
    if (level == DR_QLEVEL_AVX512_VNNI && w->q.tiled_rows)
        return 3;
    if (w->q.bits != 4)
        return 0;
    if (level == DR_QLEVEL_AVX512_VNNI)
        return 2;
    if (level == DR_QLEVEL_AVX2)
        return !multi && !g_digits_off && w->ne[w->ndim - 1] % 64 == 0 ? 4 : 0;
    return level == DR_QLEVEL_AVX512_BF16;
}
#endif

/* x prepared for one token's GEMV, or (multi) for the multi-token one. */
static void prep(float *xp, const float *x, const dr_tensor *w, bool multi) {
    const int64_t n = w->ne[w->ndim - 1], gs = w->q.group_size;
#ifdef DR_QUANT_BF16
    const int own = own_q(dr_cpu_quant_level(), w, multi);
    if (own) { /* layouts: DR_QK_BF16_* / DR_QK_VNNI_* / DR_QK_T16_* / DR_QK_DIG_* in quant_kern.h */
        (own == 1   ? dr_qk_prep4_bf16
         : own == 2 ? dr_qk_prep4_vnni
         : own == 4 ? dr_qk_prep4_dig
         : w->q.bits == 8 ? dr_qk_prep8_t16
                          : dr_qk_prep4_t16)(xp, x, n, (int)gs);
        return;
    }
#else
    (void)multi;
#endif
    if (w->q.bits == 4) { /* layout: DR_QK_PERM in quant_kern.h */
        for (int64_t b = 0; b < n; b += DR_QK_PERM)
            for (int k = 0; k < DR_QK_PERM / 2; k++) {
                xp[b + k] = x[b + 2 * k];
                xp[b + DR_QK_PERM / 2 + k] = x[b + 2 * k + 1];
            }
    } else {
        memcpy(xp, x, (size_t)n * sizeof *xp);
    }
    float *xs = xp + n;
    for (int64_t g = 0; g < n / gs; g++) {
        float s = 0.0f;
        for (int64_t i = g * gs; i < (g + 1) * gs; i++)
            s += x[i];
        xs[g] = s;
    }
}

void dr_cpu_q_prep(float *xp, const float *x, const dr_tensor *w) { prep(xp, x, w, false); }

void dr_cpu_q_prep_n(float *xp, const float *x, const dr_tensor *w) { prep(xp, x, w, true); }

/* Portable form of the SIMD GEMV (same algebra, no vectors): the scalar
 * level and non-x86 builds of the threaded backend. */
static void gemv_portable(float *y, const float *xp, const dr_tensor *w, int r0, int r1) {
    const int bits = w->q.bits;
    const int64_t n = w->ne[w->ndim - 1], gs = w->q.group_size, G = n / gs;
    const float *xs = xp + n;
    for (int r = r0; r < r1; r++) {
        const unsigned char *row = dr_qk_row(w, r);
        float acc = 0.0f;
        for (int64_t g = 0; g < G; g++) {
            float d = 0.0f;
            if (bits == 8) {
                for (int64_t i = g * gs; i < (g + 1) * gs; i++)
                    d += (float)row[i] * xp[i];
            } else {
                for (int64_t b = g * gs; b < (g + 1) * gs; b += DR_QK_PERM)
                    for (int k = 0; k < DR_QK_PERM / 2; k++) {
                        unsigned v = dr_qk_at(w, r, b)[k];
                        d += (float)(v & 15u) * xp[b + k] + (float)(v >> 4) * xp[b + DR_QK_PERM / 2 + k];
                    }
            }
            const size_t sb = dr_qk_sb(w, r, g);
            acc += dr_load_f32(w->q.scales, w->q.sb_dtype, sb) * d + dr_load_f32(w->q.biases, w->q.sb_dtype, sb) * xs[g];
        }
        y[r] = acc;
    }
}

/* The GEMV of k's level (NULL: the portable one) for a file-order w. */
static void gemv_file(const dr_qkern *k, float *y, const float *xp, const dr_tensor *w, int r0, int r1, bool multi) {
#ifdef DR_QUANT_BF16
    const int own = own_q(dr_cpu_quant_level(), w, multi); /* 1, 2 or 4: w is in file order */
    if (own) {
        (own == 1 ? dr_qk_gemv4_bf16 : own == 2 ? dr_qk_gemv4_vnni : dr_qk_gemv4_dig)(y, xp, w, r0, r1);
        return;
    }
#else
    (void)multi;
#endif
    if (k)
        k->gemv(y, xp, w, r0, r1);
    else
        gemv_portable(y, xp, w, r0, r1);
}

/* The level's GEMV for w in either layout: the decode layout's own kernel
 * at avx512vnni, else row by row through file-order copies. multi: x was
 * prepared for the multi-token GEMV (dr_cpu_q_prep_n). */
static void gemv_at(const dr_qkern *k, float *y, const float *xp, const dr_tensor *w, int r0, int r1, bool multi) {
#ifdef DR_QUANT_BF16
    if (own_q(dr_cpu_quant_level(), w, multi) == 3) {
        (w->q.bits == 8 ? dr_qk_gemv8_t16 : dr_qk_gemv4_t16)(y, xp, w, r0, r1);
        return;
    }
#endif
    if (!w->q.tiled_rows) {
        gemv_file(k, y, xp, w, r0, r1, multi);
        return;
    }
    row_copy c;
    dr_tensor v;
    for (int r = r0; r < r1; r++) {
        untile_row(w, r, &c, &v);
        gemv_file(k, y + r, xp, &v, 0, 1, multi);
    }
}

void dr_cpu_q_gemv_rows(float *y, const float *xp, const dr_tensor *w, int r0, int r1) {
    gemv_at(kernels(), y, xp, w, r0, r1, false);
}

/* Which multi-token GEMV serves w at this level: 2 = the decode layout's
 * (quant_avx512vnni_t16.c), 1 = the table's (file order, where the table's
 * one-token GEMV serves w), 0 = none (then one GEMV per token). */
static int multi_kind(const dr_qkern *k, const dr_tensor *w) {
    if (g_multi_off || !w->q.bits)
        return 0;
#ifdef DR_QUANT_BF16
    const int own = own_q(dr_cpu_quant_level(), w, true);
    if (own == 3)
        return 2;
    if (own)
        return 0;
#endif
    return k && k->gemv_n && !w->q.tiled_rows ? 1 : 0;
}

int dr_cpu_q_multi_max(const dr_tensor *w) {
    const dr_qkern *k = kernels(); /* first: it runs detect */
    const int kind = multi_kind(k, w);
    return kind == 2 ? DR_QK_MULTI_T : kind == 1 ? k->gemv_n_max : 1;
}

void dr_cpu_q_gemv_rows_n(float *y, const float *xp, int T, const dr_tensor *w, int r0, int r1) {
    const int64_t d = w->ne[w->ndim - 2];
    const size_t ldxp = dr_cpu_q_prep_floats(w);
    const dr_qkern *k = kernels();
    const int kind = T > 1 && T <= DR_QK_MULTI_T ? multi_kind(k, w) : 0;
#ifdef DR_QUANT_BF16
    if (kind == 2) {
        dr_qk_gemv_t16_n(y, d, xp, ldxp, T, w, r0, r1);
        return;
    }
#endif
    if (kind == 1) {
        k->gemv_n(y, d, xp, ldxp, T, w, r0, r1);
        return;
    }
    for (int t = 0; t < T; t++)
        gemv_at(k, y + (size_t)t * (size_t)d, xp + (size_t)t * ldxp, w, r0, r1, true);
}

/* dst [n] = row r of w dequantized, either layout. */
static void dequant_row(const dr_qkern *k, float *dst, const dr_tensor *w, int64_t r) {
    const int64_t n = w->ne[w->ndim - 1];
    if (!k) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = dr_q_get(w, r, i);
    } else {
        row_copy c;
        dr_tensor v;
        int64_t rr;
        const dr_tensor *wr = file_row(w, r, &c, &v, &rr);
        k->dequant(dst, wr, rr, 0, n / w->q.group_size);
    }
}

void dr_cpu_q_dequant_rows(float *dst, const dr_tensor *w, int r0, int nr) {
    const dr_qkern *k = kernels();
    const int64_t n = w->ne[w->ndim - 1];
    for (int r = 0; r < nr; r++)
        dequant_row(k, dst + (size_t)r * (size_t)n, w, r0 + r);
}

/* ---- SIMD drivers ---- */

/* Several tokens: dequantize DR_QK_BLOCK columns of a row once, then dot
 * them with every token (four at a time, sharing the weight loads). */
static void matmul_q_block(const dr_qkern *k, float *y, const float *x, const dr_tensor *w, int T, int r0,
                           int r1) {
    const int64_t d = w->ne[w->ndim - 2], n = w->ne[w->ndim - 1], gs = w->q.group_size;
    _Alignas(64) float buf[DR_QK_BLOCK];
    row_copy c;
    dr_tensor v;
    for (int r = r0; r < r1; r++) {
        int64_t rr;
        const dr_tensor *wr = file_row(w, r, &c, &v, &rr);
        for (int64_t i0 = 0; i0 < n; i0 += DR_QK_BLOCK) {
            const int64_t nb = n - i0 < DR_QK_BLOCK ? n - i0 : DR_QK_BLOCK;
            k->dequant(buf, wr, rr, i0 / gs, nb / gs);
            int t = 0;
            for (; t + 4 <= T; t += 4) {
                float o[4];
                k->dot4(o, buf, x + (size_t)t * n + i0, n, nb);
                for (int j = 0; j < 4; j++) {
                    float *yy = &y[(size_t)(t + j) * d + r];
                    *yy = i0 ? *yy + o[j] : o[j];
                }
            }
            for (; t < T; t++) {
                float o = k->dot(buf, x + (size_t)t * n + i0, nb);
                float *yy = &y[(size_t)t * d + r];
                *yy = i0 ? *yy + o : o;
            }
        }
    }
}

void dr_cpu_matmul_q_rows(float *y, const float *x, const dr_tensor *w, int T, int r0, int r1) {
    const dr_qkern *k = kernels();
    if (!k) {
        matmul_q_scalar(y, x, w, T, r0, r1);
        return;
    }
    if (T == 1) { /* a private prepared x (the threaded backend shares one instead) */
        float *xp = malloc(dr_cpu_q_prep_floats(w) * sizeof *xp);
        if (!xp) { /* out of memory: the reference needs none */
            matmul_q_scalar(y, x, w, T, r0, r1);
            return;
        }
        dr_cpu_q_prep(xp, x, w);
        gemv_at(k, y, xp, w, r0, r1, false);
        free(xp);
        return;
    }
    matmul_q_block(k, y, x, w, T, r0, r1);
}

/* ---- the decode layout (quant_kern.h) ---- */

/* The whole pages holding [p, p + n), made readable and writable. */
static int make_writable(const void *p, size_t n) {
    const long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0)
        return 0;
    const uintptr_t a = (uintptr_t)p, lo = a / (uintptr_t)pg * (uintptr_t)pg;
    const uintptr_t hi = (a + n + (uintptr_t)pg - 1) / (uintptr_t)pg * (uintptr_t)pg;
    return mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE) == 0;
}

/* The m rows of one tile (packed bytes p, rb a row; es-byte scale or bias
 * entries e, G a row) from file order into the decode layout, through tmp. */
static void tile_one(unsigned char *p, unsigned char *sc, unsigned char *bi, int m, size_t rb, int64_t G, size_t es,
                     unsigned char *tmp) {
    memcpy(tmp, p, (size_t)m * rb);
    for (size_t c = 0; c < rb / 4; c++)
        for (int i = 0; i < m; i++)
            memcpy(p + (c * (size_t)m + (size_t)i) * 4, tmp + (size_t)i * rb + c * 4, 4);
    unsigned char *e[2] = {sc, bi};
    for (int k = 0; k < 2; k++) {
        memcpy(tmp, e[k], (size_t)m * (size_t)G * es);
        for (int64_t g = 0; g < G; g++)
            for (int i = 0; i < m; i++)
                memcpy(e[k] + ((size_t)g * (size_t)m + (size_t)i) * es, tmp + ((size_t)i * (size_t)G + (size_t)g) * es, es);
    }
}

size_t dr_cpu_q_tile_bytes(const dr_tensor *t) {
    if ((t->q.bits != 4 && t->q.bits != 8) || t->q.tiled_rows || !t->data || t->ndim != 2)
        return 0;
    const int64_t n = t->ne[1], rows = t->ne[0];
    if (n <= 0 || n % 8 || n > TILE_MAX_N || rows <= 0)
        return 0;
    return (size_t)rows * (size_t)n * (size_t)t->q.bits / 8;
}

size_t dr_cpu_q_tile(dr_tensor *t, size_t max_bytes) {
    const size_t bytes = dr_cpu_q_tile_bytes(t);
    if (!bytes || bytes > max_bytes)
        return 0;
    const int64_t n = t->ne[1], rows = t->ne[0], G = n / t->q.group_size;
    const size_t rb = (size_t)n * (size_t)t->q.bits / 8, es = dr_dtype_size(t->q.sb_dtype);
    const size_t sbytes = (size_t)rows * (size_t)G * es;
    unsigned char *tmp = malloc((size_t)DR_QK_TILE_ROWS * rb);
    if (!tmp || !make_writable(t->data, bytes) || !make_writable(t->q.scales, sbytes) ||
        !make_writable(t->q.biases, sbytes)) {
        free(tmp);
        return 0;
    }
    /* made writable above */
    unsigned char *p = (unsigned char *)(uintptr_t)t->data, *sc = (unsigned char *)(uintptr_t)t->q.scales;
    unsigned char *bi = (unsigned char *)(uintptr_t)t->q.biases;
    for (int64_t r = 0; r < rows;) {
        int m;
        tile_of(t, r, &m);
        tile_one(p + (size_t)r * rb, sc + (size_t)r * (size_t)G * es, bi + (size_t)r * (size_t)G * es, m, rb, G, es,
                 tmp);
        r += m;
    }
    free(tmp);
    t->q.tiled_rows = rows;
    return bytes;
}

void dr_cpu_q_codes_rows(uint16_t *codes, float *s, float *b, const dr_tensor *w, int r0, int nr) {
    const int64_t n = w->ne[w->ndim - 1], G = n / w->q.group_size;
    row_copy c;
    dr_tensor v;
    for (int i = 0; i < nr; i++) {
        int64_t rr;
        const dr_tensor *wr = file_row(w, r0 + i, &c, &v, &rr);
        dr_amx_codes(codes + (size_t)i * (size_t)n, dr_qk_row(wr, rr), wr->q.bits, (int)n);
        for (int64_t g = 0; g < G; g++) {
            s[(size_t)i * (size_t)G + (size_t)g] = dr_load_f32(wr->q.scales, wr->q.sb_dtype, dr_qk_sb(wr, rr, g));
            b[(size_t)i * (size_t)G + (size_t)g] = dr_load_f32(wr->q.biases, wr->q.sb_dtype, dr_qk_sb(wr, rr, g));
        }
    }
}

void dr_cpu_embed_q(float *x, const dr_tensor *emb, const int32_t *ids, int T) {
    const dr_qkern *k = kernels();
    const int64_t H = emb->ne[emb->ndim - 1];
    for (int t = 0; t < T; t++)
        dequant_row(k, x + (size_t)t * H, emb, ids[t]);
}
