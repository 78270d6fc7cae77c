/* ops/cpu/fast.h - the fast CPU backend's context and kernels (SIMD through
 * the dr_simd table, threads through a dr_pool).
 *
 * Every kernel has the contract of the ops.h slot it fills and is checked
 * against the reference kernels of cpu.h by tests/test_cpu_ops.c. A kernel
 * that cannot get scratch memory falls back to a slower path that needs none,
 * so a slot never fails. Results do not depend on the thread count: work is
 * split at fixed boundaries and each output is computed by one thread (one
 * exception: single-token attention over a long cache is split into more
 * segments when there are more threads, which changes the sum order).
 */
#ifndef DR_OPS_CPU_FAST_H
#define DR_OPS_CPU_FAST_H

#include "ops/cpu/cpu.h"
#include "ops/cpu/simd.h"
#include "util/hugemem.h"
#include "util/threadpool.h"

/* Scratch owned by one thread (cache-line padded so threads don't share lines). */
typedef struct dr_cpu_scratch {
    float *p;
    size_t cap; /* floats */
    char pad[64 - sizeof(float *) - sizeof(size_t)];
} dr_cpu_scratch;

enum { DR_SHARED_X, DR_SHARED_MOE, DR_SHARED_ATT, DR_SHARED_N }; /* shared scratch slots */

typedef struct dr_cpu_ctx {
    dr_pool *pool;
    int n_threads;
    const dr_simd *k;           /* kernels of the chosen SIMD level */
    bool bf16_dot;              /* BF16 GEMV through k->gemv_bf16x2 */
    size_t gemv_pf;             /* the decode GEMVs' software prefetch distance (bytes, 0: none) */
    dr_cpu_scratch *thr;        /* [n_threads], grown by their own thread */
    void *shared[DR_SHARED_N];  /* grown by the calling thread, outside parallel loops */
    size_t shared_cap[DR_SHARED_N];
    size_t tile_left;           /* packed bytes of 4- and 8-bit weights that copies and the
                                   decode layout may still take (backend.c) */
    bool huge_weights;          /* copy them to 2 MiB pages (and lay them out there) */
    dr_arena weights;           /* those copies */
} dr_cpu_ctx;

/* Make every thread's scratch at least n floats. Call from the calling
 * thread, outside parallel loops; false when out of memory (the kernel then
 * takes its no-scratch path). */
bool dr_cpu_reserve(dr_cpu_ctx *c, size_t n);

/* Thread `thread`'s scratch (contents undefined), as reserved. */
static inline float *dr_cpu_tbuf(dr_cpu_ctx *c, int thread) { return c->thr[thread].p; }

/* Shared scratch slot `slot` of at least `bytes`, or NULL when out of
 * memory. Call only from the thread that calls the slot functions. */
void *dr_cpu_shared_buf(dr_cpu_ctx *c, int slot, size_t bytes);

/* dr_cpu_gated_rmsnorm's rows with silu from table k (fast_elementwise.c);
 * y may be x or z. For kernels that gate inside their own tasks. */
void dr_fast_gated_rows(const dr_simd *k, float *y, const float *x, const float *z, const float *w, int rows, int n,
                        float eps);

bool dr_fast_argmax(void *ctx, int32_t *out, const float *x, int n);
void dr_fast_matmul(void *ctx, float *y, const float *x, const dr_tensor *w, int T);
void dr_fast_matmul_n(void *ctx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws, int T);
void dr_fast_matmul_batch(void *ctx, int n_w, float *const *ys, const float *const *xs, const dr_tensor *const *ws,
                          const int *Ts);
void dr_fast_attention(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int T,
                       int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws);
void dr_fast_rope(void *ctx, float *x, int T, int n_heads, int d_head, int d_rot, int pos0, float theta);
void dr_fast_gdn_conv(void *ctx, float *out, const float *m, float *conv_state, const float *w, int T, int C,
                      int K);
void dr_fast_gdn_recurrent(void *ctx, float *o, const float *qkv, const float *beta, const float *g,
                           float *state, const dr_gdn_dims *d, int T, float *ws);
void dr_fast_gdn_decode(void *ctx, float *y, const float *qkv_raw, const float *z, const float *b, const float *a,
                        float *conv_state, float *state, const float *conv_w, int K, const float *A_log,
                        const float *dt_bias, const float *norm_w, const dr_gdn_dims *d, float eps);
void dr_fast_gdn_chunked(void *ctx, float *o, const float *qkv, const float *beta, const float *g, float *state,
                         const dr_gdn_dims *d, int T, float *ws);
void dr_fast_moe_experts(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                         const dr_expert *experts, int E, int T, int k, int H, int I, float *ws);
void dr_fast_rmsnorm(void *ctx, float *y, const float *x, const float *gain, int rows, int n, float eps);
void dr_fast_add_rmsnorm(void *ctx, float *x, const float *d, float *y, const float *gain, int rows, int n,
                         float eps);
void dr_fast_gated_rmsnorm(void *ctx, float *y, const float *x, const float *z, const float *w, int rows, int n,
                           float eps);
void dr_fast_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n);
void dr_fast_sigmoid_mul(void *ctx, float *x, const float *gate, size_t n);

#endif
