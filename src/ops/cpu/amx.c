/* ops/cpu/amx.c - prefill matmuls of BF16 and quantized weights on AMX-BF16
 * tiles (see amx.h for what and why).
 *
 * One `tdpbf16ps` multiplies a tile A of 16 rows x 32 bf16 (here: 16 weight
 * rows, 32 columns of k, loaded straight from W with its row stride) by a
 * tile B of 16 rows x 16 pairs (here: pair kk of the 32 columns for 16
 * tokens, "VNNI" order) into a 16 x 16 fp32 tile C (rows = weights, columns
 * = tokens). W needs no copy; x is rearranged once per matmul by
 * dr_amx_prep. Per 32 columns of k a block of 32 rows x 32 tokens takes two
 * A tiles, then for each of x's three parts two B tiles and four products
 * into the four C tiles (8 tile registers in all). On the dev VM (one core,
 * throwaway harness) this ran 440-500 GFLOP/s against ~80 for the fp32 FMA
 * tiles (docs/PERFORMANCE.md, CPU, session 20). Quantized rows come as their
 * codes q in bf16 (exact), one group's products at a time, the scales and
 * biases applied in fp32 (dr_amx_gemm_q). Whether the tiles can run here
 * (dr_amx_enabled) is asked in amx_detect.c: this file is compiled with
 * AVX-512 and AMX flags, so nothing in it may run before that answer.
 */
#include "ops/cpu/amx.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && \
    defined(__AVX512BW__)
#define DR_HAVE_AMX 1
#include "ops/cpu/transpose16.h"

#include <immintrin.h>
#endif

/* x's layout: per 32 tokens (tp) and 32 columns of k (kb), the three parts
 * (h, m, l), each as two B tiles (tokens 0-15, 16-31) of 16 x 32 bf16; one
 * tp's tiles are contiguous (dr_amx_gemm keeps them in L2 while it runs
 * every row block against them). */
#define TILE_ELEMS 512 /* bf16 in a B tile: 16 rows x 64 bytes */
#define TOK_BLOCK 32

/* 32-token slices of x for T tokens (the last one padded with zeros) */
static int slices(int T) { return (T + TOK_BLOCK - 1) / TOK_BLOCK; }

static size_t x_tile(int kb, int tp, int part, int nk) {
    return ((((size_t)tp * (size_t)nk + (size_t)kb) * 3 + (size_t)part) * 2) * TILE_ELEMS;
}

size_t dr_amx_x_bytes(int T, int n) {
    const int n_tp = slices(T);
    return x_tile(0, n_tp, 0, n / DR_AMX_K) * sizeof(uint16_t);
}

size_t dr_amx_group_floats(int T, int n, int gs) {
    const int n_tp = slices(T);
    return (size_t)(n / gs) * (size_t)n_tp * TOK_BLOCK;
}

int dr_amx_prep_blocks(int T) { return slices(T) * (TOK_BLOCK / 16); }

void dr_amx_group_sums(float *xg, const float *x, int T, int n, int gs, int b0, int b1) {
    const int G = n / gs, tpad = slices(T) * TOK_BLOCK;
    for (int g = 0; g < G; g++)
        for (int t = 16 * b0; t < 16 * b1; t++) {
            float sum = 0.0f;
            for (int i = 0; t < T && i < gs; i++)
                sum += x[(size_t)t * (size_t)n + (size_t)g * (size_t)gs + (size_t)i];
            xg[(size_t)g * (size_t)tpad + (size_t)t] = sum;
        }
}

#ifdef DR_HAVE_AMX

#define AI static inline __attribute__((always_inline))

/* The 16 fp32 lanes of v rounded to bf16 (nearest, ties to even), kept in
 * the high halves (the low ones zero): the value of the part as fp32. */
AI __m512 round_bf16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int)0xFFFF0000u)));
}

/* 32 bf16 (the high halves of a then b, in order) as 16 pairs. */
AI __m512i pairs(__m512 a, __m512 b) {
    const __m256i lo = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(a), 16));
    const __m256i hi = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(b), 16));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* The three parts (h, m, l) of the 32 floats at p (NULL: zeros) as 16
 * pairs each, into r[0], r[1], r[2]: each part the rounding of what the
 * ones before leave. */
AI void split_pairs(__m512i r[3], const float *p) {
    if (!p) {
        r[0] = r[1] = r[2] = _mm512_setzero_si512();
        return;
    }
    __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
    for (int part = 0; part < 3; part++) {
        const __m512 ha = round_bf16(a), hb = round_bf16(b);
        r[part] = pairs(ha, hb);
        a = _mm512_sub_ps(a, ha);
        b = _mm512_sub_ps(b, hb);
    }
}

void dr_amx_prep(uint16_t *xp, const float *x, int T, int n, int b0, int b1) {
    const int nk = n / DR_AMX_K;
    for (int tb = b0; tb < b1; tb++) /* 16 tokens: one B tile per part and kb */
        for (int kb = 0; kb < nk; kb++) {
            __m512i r[3][16]; /* r[part][t]: token t's 16 pairs, then (transposed) r[part][kk]: pair kk */
            for (int t = 0; t < 16; t++) {
                const int tt = 16 * tb + t; /* past T: zeros */
                __m512i p3[3];
                split_pairs(p3, tt < T ? x + (size_t)tt * (size_t)n + (size_t)kb * DR_AMX_K : NULL);
                r[0][t] = p3[0], r[1][t] = p3[1], r[2][t] = p3[2];
            }
            for (int part = 0; part < 3; part++) {
                dr_transpose16(r[part]);
                uint16_t *dst = xp + x_tile(kb, tb / 2, part, nk) + (size_t)(tb % 2) * TILE_ELEMS;
                for (int kk = 0; kk < 16; kk++)
                    _mm512_storeu_si512(dst + 32 * kk, r[part][kk]);
            }
        }
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Every tile 16 rows of 64 bytes: C 0-3, A 4-5, B 6-7. A constant: GCC 12
 * moved the stores that filled a local config past the ldtilecfg reading
 * it (the instruction faulted on tiles never configured). */
static const tile_config g_config = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static void configure(void) { _tile_loadconfig(&g_config); }

/* A block of 16 outputs x 16 tokens (src: output i's 16 tokens at src +
 * i ld, 64-byte aligned) into y (token t's 16 outputs at y + t ldy), nt of
 * the tokens (the rest are padding): transposed in registers, so each token
 * goes out as one 64-byte store (element by element, y's rows 4 KiB apart
 * for the usual d kept hitting one L1 set: ~40% slower in the harness). */
AI void store_block(float *y, size_t ldy, const float *src, size_t ld, int nt) {
    __m512i v[16];
    for (int i = 0; i < 16; i++)
        v[i] = _mm512_load_si512(src + (size_t)i * ld);
    dr_transpose16(v);
    for (int t = 0; t < 16 && t < nt; t++)
        _mm512_storeu_si512(y + (size_t)t * ldy, v[t]);
}

/* C tile `tile` (16 outputs from r, 16 tokens from t0) into y, tokens < T. */
#define STORE_C(tile, r, t0)                                                              \
    do {                                                                                  \
        _tile_stored(tile, cb, 64);                                                       \
        store_block(y + (size_t)(t0) * ldy + (size_t)(r), ldy, cb[0], 16, T - (t0));     \
    } while (0)

/* The B tiles of x's three parts for (kb, tp) against A tiles 4 (and 5). */
#define PRODUCTS(two_a)                                                  \
    for (int part = 0; part < 3; part++) {                               \
        const uint16_t *bp = xp + x_tile(kb, tp, part, nk);              \
        _tile_loadd(6, bp, 64);                                          \
        _tile_loadd(7, bp + TILE_ELEMS, 64);                             \
        _tile_dpbf16ps(0, 4, 6);                                         \
        _tile_dpbf16ps(1, 4, 7);                                         \
        if (two_a) {                                                     \
            _tile_dpbf16ps(2, 5, 6);                                     \
            _tile_dpbf16ps(3, 5, 7);                                     \
        }                                                                \
    }

/* C tiles 0-3 = the 16 rows at a (two: 32; rows ld elements apart) times
 * x's 32-token slice tp, over the columns of blocks kb0 .. kb1 - 1. */
AI void block_products(const uint16_t *a, size_t ld, bool two, const uint16_t *xp, int tp, int kb0, int kb1,
                       int nk) {
    const size_t stride = ld * sizeof(uint16_t);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int kb = kb0; kb < kb1; kb++) {
        const uint16_t *ak = a + (size_t)kb * DR_AMX_K;
        _tile_loadd(4, ak, stride);
        if (two) {
            _tile_loadd(5, ak + 16 * ld, stride);
            PRODUCTS(1)
        } else {
            PRODUCTS(0)
        }
    }
}

void dr_amx_gemm(float *y, size_t ldy, const uint16_t *w, size_t ldw, int m, const uint16_t *xp, int T, int n) {
    const int n_tp = slices(T), nk = n / DR_AMX_K;
    _Alignas(64) float cb[16][16];
    configure();
    for (int tp = 0; tp < n_tp; tp++) /* x's tiles of tp stay in L2 for all the rows */
        for (int r = 0; r < m; r += 32) {
            const bool two = m - r >= 32;
            block_products(w + (size_t)r * ldw, ldw, two, xp, tp, 0, nk, nk);
            STORE_C(0, r, tp * TOK_BLOCK);
            STORE_C(1, r, tp * TOK_BLOCK + 16);
            if (two) {
                STORE_C(2, r + 16, tp * TOK_BLOCK);
                STORE_C(3, r + 16, tp * TOK_BLOCK + 16);
            }
        }
    _tile_release();
}

/* 16 codes (bytes) as bf16: exact, q <= 255. */
AI void store_codes16(uint16_t *dst, __m128i q) {
    const __m512i f = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)));
    _mm256_storeu_si256((__m256i *)(void *)dst, _mm512_cvtepi32_epi16(_mm512_srli_epi32(f, 16)));
}

void dr_amx_codes(uint16_t *codes, const unsigned char *row, int bits, int n) {
    if (bits == 8) {
        for (int i = 0; i < n; i += 16)
            store_codes16(codes + i, _mm_loadu_si128((const __m128i *)(const void *)(row + i)));
        return;
    }
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int i = 0; i < n; i += 32) { /* byte j: element 2j (low nibble), 2j + 1 (high) */
        const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(row + i / 2));
        const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
        store_codes16(codes + i, _mm_unpacklo_epi8(lo, hi));
        store_codes16(codes + i + 16, _mm_unpackhi_epi8(lo, hi));
    }
}

/* acc [rows][32] += s_i * C tiles (tile 0/1: rows 0-15, tokens 0-15 / 16-31;
 * 2/3: rows 16-31) for one group; s: the rows' scales, G apart. */
AI void scale_add(float acc[32][32], float cb[4][16][16], const float *s, int G, int rows) {
    for (int i = 0; i < rows; i++) {
        const __m512 sv = _mm512_set1_ps(s[(size_t)i * (size_t)G]);
        float *cr0 = cb[(i / 16) * 2][i % 16], *cr1 = cb[(i / 16) * 2 + 1][i % 16];
        _mm512_store_ps(acc[i], _mm512_fmadd_ps(sv, _mm512_load_ps(cr0), _mm512_load_ps(acc[i])));
        _mm512_store_ps(acc[i] + 16, _mm512_fmadd_ps(sv, _mm512_load_ps(cr1), _mm512_load_ps(acc[i] + 16)));
    }
}

void dr_amx_gemm_q(float *y, size_t ldy, const uint16_t *codes, const float *s, const float *b, int gs, int m,
                   const uint16_t *xp, const float *xg, int T, int n) {
    const int n_tp = slices(T), nk = n / DR_AMX_K, G = n / gs, kpg = gs / DR_AMX_K;
    const size_t tpad = (size_t)n_tp * TOK_BLOCK;
    _Alignas(64) float cb[4][16][16];
    _Alignas(64) float acc[32][32];
    configure();
    for (int tp = 0; tp < n_tp; tp++)
        for (int r = 0; r < m; r += 32) {
            const bool two = m - r >= 32;
            const int rows = two ? 32 : 16;
            memset(acc, 0, sizeof acc);
            for (int g = 0; g < G; g++) {
                block_products(codes + (size_t)r * (size_t)n, (size_t)n, two, xp, tp, g * kpg, (g + 1) * kpg, nk);
                _tile_stored(0, cb[0], 64);
                _tile_stored(1, cb[1], 64);
                if (two) {
                    _tile_stored(2, cb[2], 64);
                    _tile_stored(3, cb[3], 64);
                }
                scale_add(acc, cb, s + (size_t)r * (size_t)G + (size_t)g, G, rows);
            }
            for (int g = 0; g < G; g++) { /* + b_g (sum of x_g), after every group's q part */
                const float *xs = xg + (size_t)g * tpad + (size_t)tp * TOK_BLOCK;
                const __m512 x0 = _mm512_loadu_ps(xs), x1 = _mm512_loadu_ps(xs + 16);
                for (int i = 0; i < rows; i++) {
                    const __m512 bv = _mm512_set1_ps(b[(size_t)(r + i) * (size_t)G + (size_t)g]);
                    _mm512_store_ps(acc[i], _mm512_fmadd_ps(bv, x0, _mm512_load_ps(acc[i])));
                    _mm512_store_ps(acc[i] + 16, _mm512_fmadd_ps(bv, x1, _mm512_load_ps(acc[i] + 16)));
                }
            }
            float *yt = y + (size_t)tp * TOK_BLOCK * ldy;
            const int tl = T - tp * TOK_BLOCK; /* tokens left from this slice's first */
            for (int rb = 0; rb < rows; rb += 16) {
                store_block(yt + (size_t)(r + rb), ldy, acc[rb], 32, tl);
                if (tl > 16)
                    store_block(yt + 16 * ldy + (size_t)(r + rb), ldy, acc[rb] + 16, 32, tl - 16);
            }
        }
    _tile_release();
}

#else /* no AMX in this build: the fp32 path always runs */

void dr_amx_prep(uint16_t *xp, const float *x, int T, int n, int b0, int b1) {
    (void)xp, (void)x, (void)T, (void)n, (void)b0, (void)b1;
}
void dr_amx_gemm(float *y, size_t ldy, const uint16_t *w, size_t ldw, int m, const uint16_t *xp, int T, int n) {
    (void)y, (void)ldy, (void)w, (void)ldw, (void)m, (void)xp, (void)T, (void)n;
}
void dr_amx_gemm_q(float *y, size_t ldy, const uint16_t *codes, const float *s, const float *b, int gs, int m,
                   const uint16_t *xp, const float *xg, int T, int n) {
    (void)y, (void)ldy, (void)codes, (void)s, (void)b, (void)gs, (void)m, (void)xp, (void)xg, (void)T, (void)n;
}
void dr_amx_codes(uint16_t *codes, const unsigned char *row, int bits, int n) {
    (void)codes, (void)row, (void)bits, (void)n;
}

#endif
