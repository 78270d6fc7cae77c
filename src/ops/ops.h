/* ops/ops.h - the backend interface: a table of kernels plus a context.
 *
 * The forward pass (model/forward.c) calls only these slots, so a backend
 * (CPU reference today; SIMD/threads and CUDA later) slots in without
 * touching model code. Activations are fp32 arrays in the backend's memory
 * (allocated with `alloc`); weights are dr_tensor in their file dtype.
 * Shapes are written [rows, cols] row-major; T is the number of tokens in the
 * block. Every slot is required unless marked optional.
 *
 * tag-gdn-state-layout: the recurrent state of one GDN layer is fp32
 * [Hv, dk, dv] (transformers' layout), the conv state fp32 [K, conv_dim]
 * (oldest pre-conv input first). Every backend uses these layouts.
 */
#ifndef DR_OPS_OPS_H
#define DR_OPS_OPS_H

#include "deltarun.h"
#include "model/tensor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Dimensions of one Gated DeltaNet layer (MODEL.md 5). */
typedef struct dr_gdn_dims {
    int n_k_heads, n_v_heads; /* Hk, Hv; v head j reads k head j / (Hv/Hk) */
    int d_k, d_v;             /* dk, dv */
} dr_gdn_dims;

/* Chunk length of the chunked (WY / UT) GDN form. */
#define DR_GDN_CHUNK 64

/* The shared expert of a MoE block, for the fused decode slot: its weights
 * (gate and up [Is, H], the scalar gate's row gate_s [1, H], down [H, Is])
 * and device scratch the slot may use for the token's projections
 * (ws_gate, ws_up [T, Is], ws_s [T]). */
typedef struct dr_moe_shared {
    const dr_tensor *gate, *up, *gate_s, *down;
    float *ws_gate, *ws_up, *ws_s;
} dr_moe_shared;

typedef struct dr_ops dr_ops;

struct dr_ops {
    const char *name;
    void *ctx;
    /* Free the backend (its context and this table, when created by a
       *_create function). Accepts the static reference table (no-op). */
    void (*destroy)(dr_ops *self);

    /* ---- weights ---- */
    /* (optional, NULL: kernels read weights from host memory) make weight
       `t` available to the kernels, e.g. copy it to the GPU and set t->dev.
       A host backend may instead point t's data (and scales and biases) at
       a copy it owns until destroy; the model then frees its own buffer of
       t, if it had one. */
    dr_status (*weight_upload)(void *ctx, dr_tensor *t);
    /* (optional) release what weight_upload made. */
    void (*weight_free)(void *ctx, dr_tensor *t);
    /* (optional, NULL: no limit checked) bytes the backend can still
       allocate (free device memory); the loader checks a model and a session
       fit before allocating anything, so nothing half-succeeds. */
    size_t (*mem_free_bytes)(void *ctx);
    /* (optional, NULL: synchronous) wait until queued work has finished. */
    void (*sync)(void *ctx);

    /* ---- memory (bytes) ---- */
    void *(*alloc)(void *ctx, size_t n); /* zero-filled; NULL on failure */
    void (*free)(void *ctx, void *p);    /* accepts NULL */
    void (*upload)(void *ctx, void *dst, const void *src, size_t n);   /* host -> backend */
    void (*download)(void *ctx, void *dst, const void *src, size_t n); /* backend -> host */
    void (*copy)(void *ctx, void *dst, const void *src, size_t n);     /* backend -> backend */
    void (*zero)(void *ctx, void *p, size_t n);

    /* ---- dense math ---- */
    /* W [d, n] @ x [T, n] -> y [T, d]   (y = x W^T; weights any of F32/F16/BF16) */
    void (*matmul)(void *ctx, float *y, const float *x, const dr_tensor *w, int T);
    /* (optional, NULL: one matmul per weight) y_i = x W_i^T for n_w <= 4 weights
       of the same input width (the projections that share one input). */
    void (*matmul_n)(void *ctx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws, int T);
    /* x [T, H] = E[ids[t]]   (ids on the host, already range-checked) */
    void (*embed)(void *ctx, float *x, const dr_tensor *emb, const int32_t *ids, int T);
    /* y [rows, n] = x / rms(x) * gain   (gain fp32 [n]; zero-centred norms
       store 1 + w, folded at load) */
    void (*rmsnorm)(void *ctx, float *y, const float *x, const float *gain, int rows, int n, float eps);
    /* (optional, NULL: add then rmsnorm) x [rows, n] += d; y = x / rms(x) * gain */
    void (*add_rmsnorm)(void *ctx, float *x, const float *d, float *y, const float *gain, int rows, int n, float eps);
    /* y [n] += x [n] */
    void (*add)(void *ctx, float *y, const float *x, size_t n);
    /* out [n] = silu(gate) * up */
    void (*swiglu)(void *ctx, float *out, const float *gate, const float *up, size_t n);
    /* x [n] *= sigmoid(gate [n]) */
    void (*sigmoid_mul)(void *ctx, float *x, const float *gate, size_t n);
    /* y [rows, n] *= sigmoid(s [rows])   (one scalar gate per row) */
    void (*sigmoid_scale_rows)(void *ctx, float *y, const float *s, int rows, int n);
    /* x [rows, 2n] -> a [rows, n] (first halves), b [rows, n] (second halves) */
    void (*split_halves)(void *ctx, float *a, float *b, const float *x, int rows, int n);
    /* (optional, NULL: download and scan on the host) *out = dr_argmax_f32 of
       x [n] (util/argmax.h: ties to the lowest index, NaN never wins unless at
       index 0); waits for the result. false: the backend failed. */
    bool (*argmax)(void *ctx, int32_t *out, const float *x, int n);
    /* diagnostic: round x [n] to bf16 values in place */
    void (*round_bf16)(void *ctx, float *x, size_t n);
    /* (optional, NULL or false: the gate/up matmuls, then swiglu)
       out [T, d] = silu(x gate^T) * (x up^T) for gate, up [d, n] of one dtype
       (the SwiGLU activations in one pass); with gain, of RMSNorm(x; gain)
       instead of x (the pre-norm folded in, as rmsnorm_matmul_n). Returns
       false, having queued nothing, when the backend does not fuse that T,
       shape or dtype. */
    bool (*matmul_swiglu)(void *ctx, float *out, const float *x, const dr_tensor *gate, const dr_tensor *up, int T,
                          const float *gain, float eps);
    /* (optional, NULL or false: matmul, then add_rmsnorm / add) A block's
       output projection, residual add and the next pre-norm:
       x [T, d] += a [T, n] w^T; then, gain not NULL, xn = x / rms(x) * gain.
       Returns false, having queued nothing, when the backend does not fuse
       that shape or dtype. */
    bool (*matmul_add_rmsnorm)(void *ctx, float *x, float *xn, const float *a, const dr_tensor *w,
                               const float *gain, int T, float eps);
    /* (optional, NULL or false: rmsnorm into a buffer, then matmul_n)
       ys[i] [T, d_i] = RMSNorm(x; gain) ws[i]^T for projections that share
       their normalised input, the norm not written anywhere: a decode step
       normalises the residual stream where the next layer reads it instead
       of in a launch of its own. Returns false, having queued nothing, when
       the backend does not fuse that T, shape or dtype. */
    bool (*rmsnorm_matmul_n)(void *ctx, int n_w, float *const *ys, const float *x, const float *gain, float eps,
                             const dr_tensor *const *ws, int T);

    /* ---- full attention ---- */
    /* NeoX rotate-half RoPE on the first d_rot dims of every head of
       x [T, n_heads, d_head]; token t has position pos0 + t. */
    void (*rope)(void *ctx, float *x, int T, int n_heads, int d_head, int d_rot, int pos0, float theta);
    /* Causal GQA attention of q [T, nH, hd] against the cache (k_cache,
       v_cache [n_ctx, nKV, hd], positions 0 .. pos0+T-1 filled) -> out [T, nH, hd].
       Query head h reads kv head h / (nH/nKV). ws: >= pos0 + T floats. */
    void (*attention)(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache,
                      int T, int pos0, int n_heads, int n_kv_heads, int d_head, float scale, float *ws);
    /* (optional, NULL: two `copy` calls) k, v [T, kv_row] -> rows pos0 .. pos0+T-1
       of k_cache, v_cache [n_ctx, kv_row]. */
    void (*kv_store)(void *ctx, float *k_cache, float *v_cache, const float *k, const float *v, int T, int pos0,
                     int kv_row);
    /* (optional, NULL or false: the separate ops) Everything of a full
       attention layer between its projections and o_proj, in few kernels:
       q, gate = the halves of each head of qg [T, nH, 2 hd]; q and k [T, nKV,
       hd] RMS-normed per head (q_norm, k_norm [hd]) and rotated (RoPE, d_rot,
       theta) at positions pos0 + t; k and v [T, nKV, hd] stored at rows
       pos0 + t of the caches; att [T, nH, hd] = attention(q) * sigmoid(gate).
       q, gate and k are scratch it may overwrite. Returns false, having
       queued nothing, when the backend does not take the case. */
    bool (*attention_block)(void *ctx, float *att, float *q, float *gate, float *k, const float *qg, const float *v,
                            float *k_cache, float *v_cache, const float *q_norm, const float *k_norm, int T,
                            int pos0, int nH, int nKV, int hd, int d_rot, float theta, float eps, float scale);

    /* ---- Gated DeltaNet (MODEL.md 5) ---- */
    /* Causal depthwise conv + SiLU over m [T, C] with the conv state
       conv_state [K, C] (updated to the last K inputs); w fp32 [C, K]
       (tap K-1 multiplies the current token) -> out [T, C]. */
    void (*gdn_conv)(void *ctx, float *out, const float *m, float *conv_state, const float *w, int T, int C,
                     int K);
    /* beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias), all fp32,
       b, a, beta, g [T, Hv]. */
    void (*gdn_gates)(void *ctx, float *beta, float *g, const float *b, const float *a, const float *A_log,
                      const float *dt_bias, int T, int Hv);
    /* The gated delta rule over T tokens, q/k L2-normalised inside (q also
       scaled by dk^-0.5). qkv [T, 2*Hk*dk + Hv*dv] is the conv output
       (q heads | k heads | v heads); state fp32 [Hv, dk, dv] is read and
       updated; o [T, Hv, dv]. `gdn_recurrent` runs the per-token recurrence
       (MODEL.md 5.3), `gdn_chunked` the chunked WY form (5.4, chunk 64).
       ws: >= dr_gdn_ws_floats(d) floats. */
    void (*gdn_recurrent)(void *ctx, float *o, const float *qkv, const float *beta, const float *g,
                          float *state, const dr_gdn_dims *d, int T, float *ws);
    void (*gdn_chunked)(void *ctx, float *o, const float *qkv, const float *beta, const float *g,
                        float *state, const dr_gdn_dims *d, int T, float *ws);
    /* (optional, NULL: gdn_conv + gdn_gates + gdn_recurrent + gated_rmsnorm)
       One decode token of a GDN layer, fused: conv-state update, conv + SiLU,
       gates, q/k L2 norms, decay, delta update and read of the fp32 state
       (read once, written once), gated RMSNorm with silu(z). Inputs are the
       token's projections qkv_raw [C], z [Hv*dv], b, a [Hv]; output
       y [Hv*dv] (what gated_rmsnorm would give). Same results as the chain. */
    void (*gdn_decode)(void *ctx, float *y, const float *qkv_raw, const float *z, const float *b,
                       const float *a, float *conv_state, float *state, const float *conv_w, int K,
                       const float *A_log, const float *dt_bias, const float *norm_w, const dr_gdn_dims *d,
                       float eps);
    /* y [rows, n] = w * rmsnorm(x) * silu(z)   (plain gain w [n], not 1 + w) */
    void (*gated_rmsnorm)(void *ctx, float *y, const float *x, const float *z, const float *w, int rows, int n,
                          float eps);

    /* ---- single-token steps replayed from a recording (optional, all NULL or all set) ----
       A backend that can record its queued work (CUDA graphs) replays one
       decode step instead of launching its kernels again. The step's token id
       and position go to a small device "step state" (one async write per
       token); while a step is open the embed, rope, attention and kv_store
       slots read them from there (their arguments carry the same values), so a
       replay sees the new token and position. `graph` is the caller's handle
       (starts NULL, one per sequence: the recording holds its buffers);
       `variant` tells recordings of the same step apart (logits wanted, bf16
       state). step_begin returns DR_STEP_REPLAYED (the step ran: skip the
       forward), DR_STEP_RECORD (run the forward: it is recorded, not run) or
       DR_STEP_RUN (run the forward normally). Then step_end closes the step;
       false means the recording failed and nothing ran: run the forward again
       (the step is closed, the slots read their arguments). */
    int (*step_begin)(void *ctx, void **graph, int32_t token, int pos, int variant);
    bool (*step_end)(void *ctx, void *graph);
    void (*graph_free)(void *ctx, void *graph); /* accepts NULL */

    /* ---- mixture of experts (MODEL.md 6.2) ---- */
    /* fp32 softmax over logits [T, E], top-k (ties: lower id first), optional
       renormalisation -> idx [T, k], wts [T, k]. */
    void (*moe_route)(void *ctx, int32_t *idx, float *wts, const float *logits, int T, int E, int k,
                      bool renorm);
    /* y [T, H] += sum_j wts[t, j] * expert_{idx[t, j]}(x [T, H]), SwiGLU experts
       of width I. ws: >= 2 * I + H floats. */
    void (*moe_experts)(void *ctx, float *y, const float *x, const int32_t *idx, const float *wts,
                        const dr_expert *experts, int E, int T, int k, int H, int I, float *ws);
    /* (optional, NULL or false: the router and shared projections, then
       moe_route, zero, moe_experts, and the shared expert's swiglu, matmul,
       sigmoid_scale_rows and add) The MoE block of a few decode tokens,
       fused: logits [T, E] = router x (scratch the slot writes); idx, wts =
       moe_route(logits); y [T, H] = sum_j wts[t, j] * expert_{idx[t, j]}(x)
       (j in pick order) + sigmoid(sh->gate_s x) * sh->down(silu(sh->gate x)
       * sh->up x) (sh NULL: no shared expert). y is written (acc: added to,
       the residual add folded in). Returns false, having queued nothing,
       when the backend does not handle the shape or dtypes. */
    bool (*moe_decode)(void *ctx, float *y, int32_t *idx, float *wts, float *logits, const dr_tensor *router,
                       const float *x, const dr_expert *experts, int E, int T, int k, bool renorm, int H, int I,
                       const dr_moe_shared *sh, bool acc);
};

enum { DR_STEP_RUN = 0, DR_STEP_RECORD = 1, DR_STEP_REPLAYED = 2 };

/* How to build a backend. */
typedef struct dr_backend_params {
    int n_threads; /* CPU worker threads; 0 = one per core */
    int device;    /* GPU index (CUDA) */
} dr_backend_params;

/* Scratch floats the GDN slots need for one layer. */
size_t dr_gdn_ws_floats(const dr_gdn_dims *d);

/* The CPU reference backend: scalar, single-threaded, static (destroy is a
 * no-op). Faster backends are checked against it. Can't fail. */
dr_ops *dr_ops_cpu_ref(void);

/* The CPU backend used for inference (today the reference kernels). */
dr_status dr_ops_cpu_create(const dr_backend_params *p, dr_ops **out);

#ifdef DR_WITH_CUDA
/* The CUDA backend on GPU p->device. */
dr_status dr_ops_cuda_create(const dr_backend_params *p, dr_ops **out);
#endif

#endif
