/* cache/kv_cache.c - the KV cache of the full-attention layers. */
#include "cache/cache.h"

#include "util/status.h"

#include <stdlib.h>

dr_status dr_kv_cache_new(dr_kv_cache *c, const dr_ops *ops, const dr_hparams *hp, int n_ctx) {
    c->n_ctx = n_ctx;
    c->row = (size_t)hp->n_kv_heads * hp->d_head;
    c->k = calloc((size_t)hp->n_layers, sizeof *c->k);
    c->v = calloc((size_t)hp->n_layers, sizeof *c->v);
    if (!c->k || !c->v)
        goto oom;
    for (int l = 0; l < hp->n_layers; l++) {
        if (!hp->is_attn[l])
            continue;
        c->k[l] = ops->alloc(ops->ctx, (size_t)n_ctx * c->row * sizeof(float));
        c->v[l] = ops->alloc(ops->ctx, (size_t)n_ctx * c->row * sizeof(float));
        if (!c->k[l] || !c->v[l])
            goto oom;
    }
    return DR_OK;
oom:
    dr_kv_cache_free(c, ops, hp->n_layers);
    return DR_FAIL(DR_ERR_NOMEM, "out of memory allocating the KV cache (%d tokens)", n_ctx);
}

void dr_kv_cache_free(dr_kv_cache *c, const dr_ops *ops, int n_layers) {
    for (int l = 0; l < n_layers; l++) {
        if (c->k)
            ops->free(ops->ctx, c->k[l]);
        if (c->v)
            ops->free(ops->ctx, c->v[l]);
    }
    free(c->k);
    free(c->v);
    c->k = c->v = NULL;
}

void dr_kv_cache_reset(dr_kv_cache *c, const dr_ops *ops, int n_layers, int n_used) {
    for (int l = 0; l < n_layers; l++)
        if (c->k[l]) {
            ops->zero(ops->ctx, c->k[l], (size_t)n_used * c->row * sizeof(float));
            ops->zero(ops->ctx, c->v[l], (size_t)n_used * c->row * sizeof(float));
        }
}

void dr_kv_cache_copy(dr_kv_cache *dst, const dr_kv_cache *src, const dr_ops *ops, int n_layers, int n_used) {
    for (int l = 0; l < n_layers; l++)
        if (src->k[l]) {
            ops->copy(ops->ctx, dst->k[l], src->k[l], (size_t)n_used * src->row * sizeof(float));
            ops->copy(ops->ctx, dst->v[l], src->v[l], (size_t)n_used * src->row * sizeof(float));
        }
}
