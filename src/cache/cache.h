/* cache/cache.h - per-session state of every layer.
 *
 * Full-attention layers keep a KV cache (post-norm, post-RoPE keys), fp32
 * [n_ctx, nKV, hd] each for K and V. Gated DeltaNet layers keep a conv state
 * [K, conv_dim] (the last K pre-conv inputs, oldest first) and the recurrent
 * state [Hv, dk, dv] in fp32 -- always fp32: rounding it to bf16 between
 * steps is the bug this project exists to fix (tag-gdn-state-layout).
 * Buffers live in the backend's memory; arrays are indexed by model layer
 * (NULL for layers of the other kind).
 */
#ifndef DR_CACHE_CACHE_H
#define DR_CACHE_CACHE_H

#include "format/config.h"
#include "ops/ops.h"

typedef struct dr_kv_cache {
    int n_ctx;          /* capacity in tokens */
    size_t row;         /* floats per token: nKV * hd */
    float **k, **v;     /* [L] -> [n_ctx, nKV, hd] or NULL */
} dr_kv_cache;

typedef struct dr_gdn_cache {
    size_t conv_n;      /* floats of one conv state: K * conv_dim */
    size_t state_n;     /* floats of one recurrent state: Hv * dk * dv */
    float **conv;       /* [L] -> [K, conv_dim] or NULL */
    float **state;      /* [L] -> [Hv, dk, dv] fp32 or NULL */
} dr_gdn_cache;

/* Allocate zeroed caches for the layers of `hp`. On failure nothing leaks. */
dr_status dr_kv_cache_new(dr_kv_cache *c, const dr_ops *ops, const dr_hparams *hp, int n_ctx);
dr_status dr_gdn_cache_new(dr_gdn_cache *c, const dr_ops *ops, const dr_hparams *hp);

/* Free; accept a zeroed struct. */
void dr_kv_cache_free(dr_kv_cache *c, const dr_ops *ops, int n_layers);
void dr_gdn_cache_free(dr_gdn_cache *c, const dr_ops *ops, int n_layers);

/* Zero every buffer (the KV cache only up to `n_used` tokens). */
void dr_kv_cache_reset(dr_kv_cache *c, const dr_ops *ops, int n_layers, int n_used);
void dr_gdn_cache_reset(dr_gdn_cache *c, const dr_ops *ops, int n_layers);

/* Copy src's contents into dst (same shapes; KV up to `n_used` tokens). */
void dr_kv_cache_copy(dr_kv_cache *dst, const dr_kv_cache *src, const dr_ops *ops, int n_layers, int n_used);
void dr_gdn_cache_copy(dr_gdn_cache *dst, const dr_gdn_cache *src, const dr_ops *ops, int n_layers);

#endif
