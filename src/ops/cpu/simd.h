/* ops/cpu/simd.h - the vector kernels of the fast CPU backend, one table per
 * SIMD level (scalar, AVX2+FMA+F16C, AVX-512, AVX-512 + BF16).
 *
 * The fast backend calls only these; dr_simd_get() picks the table for the
 * CPU at run time (or a forced level, for the tests). Every kernel works on
 * any size (vector tails are handled inside), reads weights unaligned in their
 * file dtype (F32, F16, BF16) and accumulates in fp32.
 */
#ifndef DR_OPS_CPU_SIMD_H
#define DR_OPS_CPU_SIMD_H

#include "util/cpu_features.h"
#include "util/dtype.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DR_GEMV_ROWS 4 /* rows one gemv call handles at most */
#define DR_TILE 4      /* rows and tokens of one tile call, at most */

typedef struct dr_simd {
    dr_simd_level level;
    /* sum_i a[i] b[i] */
    float (*dot)(const float *a, const float *b, int n);
    /* y [n] += a * x [n] */
    void (*axpy)(float *y, float a, const float *x, int n);
    /* dst [n] = fp32 of src [n] (dtype dt) */
    void (*widen)(float *dst, const void *src, dr_dtype dt, int n);
    /* y [nr] = W x for nr <= DR_GEMV_ROWS rows of W (dtype dt, rows ld
       elements apart) and x [n]; pf: software prefetch into L2 that many
       bytes ahead of the rows, which are then read as one stream (ld = n),
       or 0 for none. pf does not change the results. */
    void (*gemv)(float *y, const void *w, dr_dtype dt, size_t ld, int nr, const float *x, int n, size_t pf);
    /* y[t*ldy + r] = w_r . x_t for r < nr, t < nt (both <= DR_TILE);
       w fp32 rows ldw apart, x rows ldx apart, length n */
    void (*tile)(float *y, size_t ldy, const float *w, size_t ldw, int nr, const float *x, size_t ldx, int nt,
                 int n);
    /* (optional, all three or none; NULL: widen + tile) prefill GEMM on
       weight panels: pack_panel writes rows [0, nr) of W (nr <= panel, dtype
       dt, rows ldw elements apart) as wp [n][panel], k-major, the rows past
       nr zero; gemm_panel: y[t*ldy + r] = sum_k wp[k][r] x_t[k] for r < nr,
       t < nt (x rows ldx apart), each output FMA chains over fixed blocks of k
       (simd_impl.h PANEL_KC) added in k order. panel:
       rows a panel holds (a few vectors' worth, per level). */
    int panel;
    void (*pack_panel)(float *wp, const void *w, dr_dtype dt, size_t ldw, int nr, int n);
    void (*gemm_panel)(float *y, size_t ldy, const float *wp, int nr, const float *x, size_t ldx, int nt, int n);
    /* C [M, N] = A [M, K] B [K, N] (acc: C +=), row-major, leading dims in elements */
    void (*gemm_nn)(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
                    bool acc);
    /* The GDN decode step's passes over its fp32 state S [dk, dv] (row-major):
       st2: u = S^T k and w = S^T q [dv] with one read of S; decay_rank1:
       S = decay S + k d^T with one read and write. Per element the same
       operations in the same order as gemm_nn (u, w) and a scale then axpy
       (S): the same results, fewer passes over S. */
    void (*st2)(float *u, float *w, const float *S, const float *k, const float *q, int dk, int dv);
    void (*decay_rank1)(float *S, int dk, int dv, float decay, const float *k, const float *d);
    /* Activations, each element as the reference writes it (cpu.h dr_siluf,
       dr_sigmoidf) with exp(-x) in place of expf(-x): the scalar table calls
       expf, the vector tables a polynomial within a few ulp of it
       (simd_impl.h v_exp). silu: y = x / (1 + exp(-x)); swiglu:
       y = silu(g) * u; sigmoid_mul: x *= 1 / (1 + exp(-g)); exp_sub:
       y = exp(x - m) (softmax weights). Outputs may alias inputs. */
    void (*silu)(float *y, const float *x, int n);
    void (*swiglu)(float *y, const float *g, const float *u, int n);
    void (*sigmoid_mul)(float *x, const float *g, int n);
    void (*exp_sub)(float *y, const float *x, float m, int n);
    /* The GDN causal conv of one token over n channels, then silu (as
       silu above): y[i] = silu(((0 + w_0[i] x_0[i]) + w_1[i] x_1[i]) + ...)
       over taps j < K in order, w_j = w + j * ldw and x_j = x[j], each
       product rounded before its add, as the reference conv sums. */
    void (*conv_silu)(float *y, const float *w, int ldw, const float *const *x, int K, int n);
    /* sum of x [n] (bandwidth probe) */
    float (*sum)(const float *x, size_t n);
    /* (optional, both or neither; NULL: use gemv) like gemv for BF16 rows,
       with x given in the level's pair order (bf16_pairs: xp [n] from x [n]),
       which lets one load feed two vectors (simd_impl.h k_gemv_bf16p); pf as
       gemv's */
    void (*bf16_pairs)(float *xp, const float *x, int n);
    void (*gemv_bf16p)(float *y, const void *w, size_t ld, int nr, const float *xp, int n, size_t pf);
    /* (optional, NULL: use gemv) like gemv for BF16 rows, with x given split
       as bf16 pairs x = hi + lo (hi, lo [n]) for vdpbf16ps */
    void (*gemv_bf16x2)(float *y, const void *w, size_t ld, int nr, const uint16_t *hi, const uint16_t *lo, int n);
} dr_simd;

/* The table of level l, or NULL if this build has no kernels for it (not
 * x86-64, or a compiler without the flags). Does not check the CPU. */
const dr_simd *dr_simd_table(dr_simd_level l);

/* The table the backend uses: the best level the CPU runs, capped by
 * dr_simd_force(). Can't fail (scalar always exists). */
const dr_simd *dr_simd_get(void);

/* Test hook: cap the level dr_simd_get() returns (DR_SIMD_COUNT: no cap).
 * Backends created afterwards use it. Not thread-safe; for tests. */
void dr_simd_force(dr_simd_level l);

/* Let backends created afterwards use gemv_bf16x2 (vdpbf16ps) for BF16
 * weights where the table has it. Off by default: decode is bound by memory,
 * not by the widening, and the split x (about 2^-17 relative error) breaks
 * bit-equality between a BF16 model and its F32 rewrite. For the bench and
 * the tests. Not thread-safe. */
void dr_simd_use_bf16_dot(bool on);
bool dr_simd_bf16_dot(void);

/* Split x [n] into bf16 hi = bf16(x), lo = bf16(x - hi): hi + lo carries
 * about 16 significant bits, so a bf16 dot product keeps near-fp32 accuracy. */
void dr_split_bf16x2(uint16_t *hi, uint16_t *lo, const float *x, int n);

const dr_simd *dr_simd_scalar(void);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DR_SIMD_X86 1
const dr_simd *dr_simd_avx2(void);
const dr_simd *dr_simd_avx512(void);
const dr_simd *dr_simd_avx512bf16(void);
#endif

#endif
