/* ops/cpu/quant_avx512vnni_t16.c - the 4- and 8-bit GEMVs of level
 * avx512vnni on the CPU's decode layout (16-row tiles, quant_kern.h): one
 * row per 32-bit lane, x's digits broadcast. Described here for 4 bits;
 * the 8-bit one (tile_dot) is the same with a byte an element.
 *
 * x is the same 24-bit integer as in quant_avx512vnni.c (per group g a step
 * sx_g = max |x_g| / (127 * 2^16), X_i = round(x_i / sx_g) written as
 * digits d2 2^16 + d1 2^8 + d0, each in [-128, 127]), only stored by chunks
 * of 8 elements: six 32-bit words a chunk (DR_QK_T16_CHUNK bytes), the
 * digits d2, d1, d0 of its elements 0, 2, 4, 6, then those of 1, 3, 5, 7.
 * A 64-byte load of a tile gives chunk c of 16 rows, byte j of lane i
 * holding elements 8c + 2j (low nibble) and 8c + 2j + 1 (high nibble) of
 * row i; one vpdpbusd of the low nibbles against a broadcast digit word
 * adds that digit's four products of every row at once. Per group and row
 * the three digit sums D_k = sum q d_k (each below 2^18: 16 x 8 products
 * of at most 15 * 128 at group size 128) stay exact in int32 over the whole
 * group; then
 *     sum_i w_i x_i ~= s_g sx_g (2^16 D_2 + 2^8 D_1 + D_0) + b_g X_g,
 * where only the rounding of x to its step (2^-24 of the group's largest
 * |x|) and the fp32 sum of the three parts are new. Against the 4-row
 * kernel of quant_avx512vnni.c this has no per-block conversion, scale
 * permute or horizontal sums, and the tile is one stream: on the dev VM
 * ~1.25x the bytes a second hot in L2 and 1.1-1.2x from DRAM, decode of
 * the 0.8B / 2B q4 shapes +7-10% (docs/PERFORMANCE.md, session 19).
 *
 * Two sets of six accumulators (even and odd chunks, low and high nibbles
 * apart) keep vpdpbusd's latency off the critical path.
 *
 * 8 bits: three vpdpbusd per 64 bytes instead of the avx512 table kernel's
 * byte -> fp32 widening and FMA per element; on the dev VM 2.6x the bytes
 * a second hot in L2, from DRAM about a plain read's rate, decode of the
 * 0.8B / 2B q8 shapes +23-30% (docs/PERFORMANCE.md, session 20).
 */
#include "ops/cpu/quant_kern.h"

#include <immintrin.h>
#include <stdbool.h>

#define AI static inline __attribute__((always_inline))
#define PF_DIST 16384 /* L2 prefetch distance in the tile's stream (as the other GEMVs) */

/* The six digit sums of one chunk v (16 rows x 8 elements) against the
 * chunk's digit words dg[0..5], into a0..a5. */
#define CHUNK_DOT(v, dg, a0, a1, a2, a3, a4, a5)                                                                \
    do {                                                                                                     \
        const __m512i lo_ = _mm512_and_si512(v, m4), hi_ = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4); \
        a0 = _mm512_dpbusd_epi32(a0, lo_, _mm512_set1_epi32((dg)[0]));                                      \
        a1 = _mm512_dpbusd_epi32(a1, lo_, _mm512_set1_epi32((dg)[1]));                                      \
        a2 = _mm512_dpbusd_epi32(a2, lo_, _mm512_set1_epi32((dg)[2]));                                      \
        a3 = _mm512_dpbusd_epi32(a3, hi_, _mm512_set1_epi32((dg)[3]));                                      \
        a4 = _mm512_dpbusd_epi32(a4, hi_, _mm512_set1_epi32((dg)[4]));                                      \
        a5 = _mm512_dpbusd_epi32(a5, hi_, _mm512_set1_epi32((dg)[5]));                                      \
    } while (0)

/* m (<= 16) scale / bias entries of a tile's group as fp32 lanes. */
AI __m512 load_sb(const void *base, dr_dtype dt, size_t i, __mmask16 m) {
    if (dt == DR_DT_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)base + i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i);
    if (dt == DR_DT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* 2^16 D_2 + 2^8 D_1 + D_0 as fp32, D_k the sum of a pair of accumulators. */
AI __m512 combine(__m512i a0, __m512i a1, __m512i a2, __m512i a3, __m512i a4, __m512i a5) {
    const __m512 d2 = _mm512_cvtepi32_ps(_mm512_add_epi32(a0, a3)), d1 = _mm512_cvtepi32_ps(_mm512_add_epi32(a1, a4));
    const __m512 d0 = _mm512_cvtepi32_ps(_mm512_add_epi32(a2, a5));
    return _mm512_fmadd_ps(d2, _mm512_set1_ps(65536.0f), _mm512_fmadd_ps(d1, _mm512_set1_ps(256.0f), d0));
}

/* The m rows of one tile (packed bytes from q, scale / bias entries from
 * sb): their dots with the prepared x, lane i = row i. bits is 4 or 8 (a
 * constant after inlining). At 8 bits a chunk is 4 elements, one byte each:
 * a 64-byte load holds chunk c of 16 rows (byte j of lane i: element 4c + j
 * of row i, q in 0..255), so one vpdpbusd per digit adds the chunk's four
 * products of every row (three accumulators a chunk, the other three stay
 * zero); the digit sums stay exact in int32 over a group (below 2^22: 128
 * products of at most 255 * 128 at group size 128). */
AI __m512 tile_dot(const unsigned char *q, size_t sb, int m, dr_dtype dt, const dr_tensor *w, const int32_t *dg,
                   const float *xs, const float *sx, int bits) {
    const int64_t n = w->ne[w->ndim - 1];
    const int gs = w->q.group_size, cpg = gs * bits / 32, G = (int)(n / gs);
    const int dstep = bits == 8 ? 6 : 12;  /* digit words a pair of chunks */
    const size_t cs = (size_t)m * 4;       /* bytes a chunk */
    const __mmask64 lm = m == DR_QK_TILE_ROWS ? ~(__mmask64)0 : (((__mmask64)1 << cs) - 1);
    const __mmask16 rm = (__mmask16)((1u << m) - 1u);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc = _mm512_setzero_ps(), accb = _mm512_setzero_ps();
    for (int g = 0; g < G; g++) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
        __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0;
        for (int c = 0; c < cpg; c += 2, q += 2 * cs, dg += dstep) { /* cpg is even: gs >= 32 */
            _mm_prefetch((const char *)q + PF_DIST, _MM_HINT_T1); /* never faults */
            _mm_prefetch((const char *)q + PF_DIST + 64, _MM_HINT_T1);
            __m512i v0, v1;
            if (m == DR_QK_TILE_ROWS) { /* a constant after inlining: plain loads for full tiles */
                v0 = _mm512_loadu_si512(q);
                v1 = _mm512_loadu_si512(q + 64);
            } else {
                v0 = _mm512_maskz_loadu_epi8(lm, q);
                v1 = _mm512_maskz_loadu_epi8(lm, q + cs);
            }
            if (bits == 8) {
                a0 = _mm512_dpbusd_epi32(a0, v0, _mm512_set1_epi32(dg[0]));
                a1 = _mm512_dpbusd_epi32(a1, v0, _mm512_set1_epi32(dg[1]));
                a2 = _mm512_dpbusd_epi32(a2, v0, _mm512_set1_epi32(dg[2]));
                b0 = _mm512_dpbusd_epi32(b0, v1, _mm512_set1_epi32(dg[3]));
                b1 = _mm512_dpbusd_epi32(b1, v1, _mm512_set1_epi32(dg[4]));
                b2 = _mm512_dpbusd_epi32(b2, v1, _mm512_set1_epi32(dg[5]));
            } else {
                CHUNK_DOT(v0, dg, a0, a1, a2, a3, a4, a5);
                CHUNK_DOT(v1, dg + 6, b0, b1, b2, b3, b4, b5);
            }
        }
        const __m512 dot = combine(_mm512_add_epi32(a0, b0), _mm512_add_epi32(a1, b1), _mm512_add_epi32(a2, b2),
                                   _mm512_add_epi32(a3, b3), _mm512_add_epi32(a4, b4), _mm512_add_epi32(a5, b5));
        const size_t e = sb + (size_t)g * (size_t)m;
        const __m512 s = _mm512_mul_ps(load_sb(w->q.scales, dt, e, rm), _mm512_set1_ps(sx[g]));
        acc = _mm512_fmadd_ps(dot, s, acc);
        accb = _mm512_fmadd_ps(load_sb(w->q.biases, dt, e, rm), _mm512_set1_ps(xs[g]), accb);
    }
    return _mm512_add_ps(acc, accb);
}

/* The tiles holding rows [r0, r1) (bits: 4 or 8, a constant after
 * inlining): each tile's dots, only those rows stored. Full tiles with bf16
 * scales get their own copy of the tile loop, with the dtype a constant. */
AI void gemv_tiles(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1, int bits) {
    const int64_t n = w->ne[w->ndim - 1], d = w->ne[w->ndim - 2], G = n / w->q.group_size;
    const int32_t *dg = (const int32_t *)(const void *)xp;
    const float *xs = xp + DR_QK_T16_CHUNK / 4 * (n / 8), *sx = xs + G;
    for (int64_t t0 = r0 / DR_QK_TILE_ROWS * DR_QK_TILE_ROWS; t0 < r1; t0 += DR_QK_TILE_ROWS) {
        const int m = d - t0 < DR_QK_TILE_ROWS ? (int)(d - t0) : DR_QK_TILE_ROWS;
        const unsigned char *q = dr_qk_row(w, t0);
        const size_t sb = (size_t)t0 * (size_t)G;
        const dr_dtype dt = w->q.sb_dtype;
        __m512 v;
        if (m < DR_QK_TILE_ROWS)
            v = tile_dot(q, sb, m, dt, w, dg, xs, sx, bits);
        else if (dt == DR_DT_BF16) /* constants inside: plain loads, no dtype branch */
            v = tile_dot(q, sb, DR_QK_TILE_ROWS, DR_DT_BF16, w, dg, xs, sx, bits);
        else
            v = tile_dot(q, sb, DR_QK_TILE_ROWS, dt, w, dg, xs, sx, bits);
        const int64_t a = t0 < r0 ? r0 : t0, b = t0 + m < r1 ? t0 + m : r1;
        const __mmask16 keep = (__mmask16)(((1u << (b - t0)) - 1u) & ~((1u << (a - t0)) - 1u));
        _mm512_mask_storeu_ps(y + t0, keep, v); /* only rows in [r0, r1) */
    }
}

void dr_qk_gemv4_t16(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1) {
    gemv_tiles(y, xp, w, r0, r1, 4);
}

void dr_qk_gemv8_t16(float *y, const float *xp, const dr_tensor *w, int64_t r0, int64_t r1) {
    gemv_tiles(y, xp, w, r0, r1, 8);
}

/* ---- several tokens: each tile streamed once for all of them ---- */

/* Tokens a group's pass serves together: 3 int32 digit sums each, plus the
 * group's loads and nibbles, stay in the 32 vector registers. */
#define NT_MAX 4

/* The digit sums of one group of a tile (q: its first chunk pair; cpg
 * chunks; bits 4 or 8, nt <= NT_MAX: constants after inlining) against nt
 * tokens' digit words (dg[t]: the group's first word of token t), as
 * 2^16 D_2 + 2^8 D_1 + D_0 in fp32, dot[t]. tile_dot keeps two sets of six
 * int32 accumulators for one token; here the three D_k of a token each sum
 * the products of both nibbles and both chunks of a pair, so the latency
 * is hidden across tokens instead. The sums are exact int32 either way, so
 * each dot[t] is bit for bit the one tile_dot forms for that token. */
AI void group_dots(__m512 *dot, const unsigned char *q, size_t cs, __mmask64 lm, bool full, int cpg,
                   const int32_t *const *dg, int nt, int bits, bool pf) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int dstep = bits == 8 ? 6 : 12;
    __m512i D[NT_MAX][3];
    for (int t = 0; t < nt; t++)
        D[t][0] = D[t][1] = D[t][2] = _mm512_setzero_si512();
    for (int c = 0, di = 0; c < cpg; c += 2, q += 2 * cs, di += dstep) {
        if (pf) {
            _mm_prefetch((const char *)q + PF_DIST, _MM_HINT_T1); /* never faults */
            _mm_prefetch((const char *)q + PF_DIST + 64, _MM_HINT_T1);
        }
        const __m512i v0 = full ? _mm512_loadu_si512(q) : _mm512_maskz_loadu_epi8(lm, q);
        const __m512i v1 = full ? _mm512_loadu_si512(q + 64) : _mm512_maskz_loadu_epi8(lm, q + cs);
        if (bits == 8) { /* words: d2 d1 d0 of chunk c, then of chunk c + 1 */
            for (int t = 0; t < nt; t++)
                for (int k = 0; k < 3; k++) {
                    D[t][k] = _mm512_dpbusd_epi32(D[t][k], v0, _mm512_set1_epi32(dg[t][di + k]));
                    D[t][k] = _mm512_dpbusd_epi32(D[t][k], v1, _mm512_set1_epi32(dg[t][di + 3 + k]));
                }
        } else { /* words: d2 d1 d0 of chunk c's even elements, its odd ones, the same of c + 1 */
            const __m512i lo0 = _mm512_and_si512(v0, m4), hi0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
            const __m512i lo1 = _mm512_and_si512(v1, m4), hi1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
            for (int t = 0; t < nt; t++)
                for (int k = 0; k < 3; k++) {
                    D[t][k] = _mm512_dpbusd_epi32(D[t][k], lo0, _mm512_set1_epi32(dg[t][di + k]));
                    D[t][k] = _mm512_dpbusd_epi32(D[t][k], hi0, _mm512_set1_epi32(dg[t][di + 3 + k]));
                    D[t][k] = _mm512_dpbusd_epi32(D[t][k], lo1, _mm512_set1_epi32(dg[t][di + 6 + k]));
                    D[t][k] = _mm512_dpbusd_epi32(D[t][k], hi1, _mm512_set1_epi32(dg[t][di + 9 + k]));
                }
        }
    }
    for (int t = 0; t < nt; t++) /* combine's arithmetic on the same integers */
        dot[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(D[t][0]), _mm512_set1_ps(65536.0f),
                                 _mm512_fmadd_ps(_mm512_cvtepi32_ps(D[t][1]), _mm512_set1_ps(256.0f),
                                                 _mm512_cvtepi32_ps(D[t][2])));
}

/* One tile (m rows at q, scale / bias entries from sb) against T prepared
 * tokens (token t at xp + t ldxp), lane i of out[t] = row i: every group
 * read from memory once (its first token block) and again from L1 for the
 * next blocks of up to NT_MAX tokens. acc / accb per token in tile_dot's
 * order, so each out[t] equals tile_dot's for that token. */
AI void tile_dot_n(__m512 *out, const unsigned char *q, size_t sb, int m, dr_dtype dt, const dr_tensor *w,
                   const float *xp, size_t ldxp, int T, int bits) {
    const int64_t n = w->ne[w->ndim - 1];
    const int gs = w->q.group_size, cpg = gs * bits / 32, G = (int)(n / gs);
    const int dgroup = cpg / 2 * (bits == 8 ? 6 : 12); /* digit words a group */
    const size_t cs = (size_t)m * 4, gbytes = (size_t)cpg * cs;
    const bool full = m == DR_QK_TILE_ROWS;
    const __mmask64 lm = full ? ~(__mmask64)0 : (((__mmask64)1 << cs) - 1);
    const __mmask16 rm = (__mmask16)((1u << m) - 1u);
    const size_t xs_at = DR_QK_T16_CHUNK / 4 * (size_t)(n / 8);
    __m512 accb[DR_QK_MULTI_T];
    for (int t = 0; t < T; t++)
        out[t] = accb[t] = _mm512_setzero_ps();
    for (int g = 0; g < G; g++, q += gbytes) {
        const size_t e = sb + (size_t)g * (size_t)m;
        const __m512 sv = load_sb(w->q.scales, dt, e, rm), bv = load_sb(w->q.biases, dt, e, rm);
        for (int t0 = 0; t0 < T; t0 += NT_MAX) {
            const int nt = T - t0 < NT_MAX ? T - t0 : NT_MAX;
            const int32_t *dg[NT_MAX];
            for (int t = 0; t < nt; t++)
                dg[t] = (const int32_t *)(const void *)(xp + (size_t)(t0 + t) * ldxp) + (size_t)g * (size_t)dgroup;
            __m512 dot[NT_MAX];
            if (nt == NT_MAX)
                group_dots(dot, q, cs, lm, full, cpg, dg, NT_MAX, bits, t0 == 0);
            else if (nt == 3)
                group_dots(dot, q, cs, lm, full, cpg, dg, 3, bits, t0 == 0);
            else if (nt == 2)
                group_dots(dot, q, cs, lm, full, cpg, dg, 2, bits, t0 == 0);
            else
                group_dots(dot, q, cs, lm, full, cpg, dg, 1, bits, t0 == 0);
            for (int t = 0; t < nt; t++) {
                const float *xs = xp + (size_t)(t0 + t) * ldxp + xs_at, *sx = xs + G;
                out[t0 + t] = _mm512_fmadd_ps(dot[t], _mm512_mul_ps(sv, _mm512_set1_ps(sx[g])), out[t0 + t]);
                accb[t0 + t] = _mm512_fmadd_ps(bv, _mm512_set1_ps(xs[g]), accb[t0 + t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        out[t] = _mm512_add_ps(out[t], accb[t]);
}

/* gemv_tiles for T tokens: y [T, ldy], token t's outputs at y + t ldy. */
AI void gemv_tiles_n(float *y, int64_t ldy, const float *xp, size_t ldxp, int T, const dr_tensor *w, int64_t r0,
                     int64_t r1, int bits) {
    const int64_t d = w->ne[w->ndim - 2], G = w->ne[w->ndim - 1] / w->q.group_size;
    for (int64_t t0 = r0 / DR_QK_TILE_ROWS * DR_QK_TILE_ROWS; t0 < r1; t0 += DR_QK_TILE_ROWS) {
        const int m = d - t0 < DR_QK_TILE_ROWS ? (int)(d - t0) : DR_QK_TILE_ROWS;
        const unsigned char *q = dr_qk_row(w, t0);
        const size_t sb = (size_t)t0 * (size_t)G;
        const dr_dtype dt = w->q.sb_dtype;
        __m512 v[DR_QK_MULTI_T];
        if (m < DR_QK_TILE_ROWS)
            tile_dot_n(v, q, sb, m, dt, w, xp, ldxp, T, bits);
        else if (dt == DR_DT_BF16)
            tile_dot_n(v, q, sb, DR_QK_TILE_ROWS, DR_DT_BF16, w, xp, ldxp, T, bits);
        else
            tile_dot_n(v, q, sb, DR_QK_TILE_ROWS, dt, w, xp, ldxp, T, bits);
        const int64_t a = t0 < r0 ? r0 : t0, b = t0 + m < r1 ? t0 + m : r1;
        const __mmask16 keep = (__mmask16)(((1u << (b - t0)) - 1u) & ~((1u << (a - t0)) - 1u));
        for (int t = 0; t < T; t++)
            _mm512_mask_storeu_ps(y + (size_t)t * (size_t)ldy + t0, keep, v[t]);
    }
}

void dr_qk_gemv_t16_n(float *y, int64_t ldy, const float *xp, size_t ldxp, int T, const dr_tensor *w, int64_t r0,
                      int64_t r1) {
    if (w->q.bits == 8)
        gemv_tiles_n(y, ldy, xp, ldxp, T, w, r0, r1, 8);
    else
        gemv_tiles_n(y, ldy, xp, ldxp, T, w, r0, r1, 4);
}

/* ---- x prepared once per token: DR_QK_T16_* in quant_kern.h ---- */

/* The three digits of 16 integers X (|X| <= 127 * 2^16 + 1), d2, d1, d0. */
AI void digits(__m512i X, __m512i *d2, __m512i *d1, __m512i *d0) {
    *d0 = _mm512_srai_epi32(_mm512_slli_epi32(X, 24), 24);
    const __m512i x1 = _mm512_srai_epi32(_mm512_sub_epi32(X, *d0), 8);
    *d1 = _mm512_srai_epi32(_mm512_slli_epi32(x1, 24), 24);
    *d2 = _mm512_srai_epi32(_mm512_sub_epi32(x1, *d1), 8);
}

void dr_qk_prep4_t16(float *xp, const float *x, int64_t n, int gs) {
    const int64_t G = n / gs, nc = n / 8;
    uint32_t *out = (uint32_t *)(void *)xp; /* DR_QK_T16_CHUNK / 4 words a chunk */
    float *xs = xp + DR_QK_T16_CHUNK / 4 * nc, *sx = xs + G;
    dr_qk_vnni_steps(xs, sx, x, G, gs);
    /* a digit's 16 bytes of a chunk pair -> the even elements of the first
       chunk, its odd ones, the same of the second (four words) */
    const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    for (int64_t c = 0; c < nc; c += 2) { /* a pair never spans groups: gs % 16 == 0 */
        const __m512 inv = _mm512_set1_ps(1.0f / sx[(8 * c) / gs]);
        const __m512i X = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 8 * c), inv));
        __m512i d[3];
        digits(X, &d[0], &d[1], &d[2]);
        uint32_t *o = out + (DR_QK_T16_CHUNK / 4) * c;
        for (int k = 0; k < 3; k++) {
            uint32_t wd[4];
            _mm_storeu_si128((__m128i *)(void *)wd, _mm_shuffle_epi8(_mm512_cvtepi32_epi8(d[k]), split));
            o[k] = wd[0];      /* chunk c: even elements */
            o[3 + k] = wd[1];  /* odd */
            o[6 + k] = wd[2];  /* chunk c + 1 */
            o[9 + k] = wd[3];
        }
    }
}

void dr_qk_prep8_t16(float *xp, const float *x, int64_t n, int gs) {
    const int64_t G = n / gs;
    uint32_t *out = (uint32_t *)(void *)xp; /* three words a 4-element chunk */
    float *xs = xp + DR_QK_T16_CHUNK / 4 * (n / 8), *sx = xs + G;
    dr_qk_vnni_steps(xs, sx, x, G, gs);
    for (int64_t i = 0; i < n; i += 16) { /* four chunks; never spans groups: gs % 16 == 0 */
        const __m512 inv = _mm512_set1_ps(1.0f / sx[i / gs]);
        const __m512i X = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
        __m512i d[3];
        digits(X, &d[0], &d[1], &d[2]);
        uint32_t *o = out + 3 * (i / 4);
        for (int k = 0; k < 3; k++) {
            uint32_t wd[4]; /* word c: the digit k of chunk c's four elements */
            _mm_storeu_si128((__m128i *)(void *)wd, _mm512_cvtepi32_epi8(d[k]));
            for (int c = 0; c < 4; c++)
                o[3 * c + k] = wd[c];
        }
    }
}
