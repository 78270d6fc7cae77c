/* cache/gdn_cache.c - the recurrent cache of the Gated DeltaNet layers: conv
 * state and the fp32 delta state (tag-gdn-state-layout). */
#include "cache/cache.h"

#include "util/status.h"

#include <stdlib.h>

dr_status dr_gdn_cache_new(dr_gdn_cache *c, const dr_ops *ops, const dr_hparams *hp) {
    c->conv_n = (size_t)hp->d_conv * dr_hp_conv_dim(hp);
    c->state_n = (size_t)hp->n_v_heads * hp->d_k * hp->d_v;
    c->conv = calloc((size_t)hp->n_layers, sizeof *c->conv);
    c->state = calloc((size_t)hp->n_layers, sizeof *c->state);
    if (!c->conv || !c->state)
        goto oom;
    for (int l = 0; l < hp->n_layers; l++) {
        if (hp->is_attn[l])
            continue;
        c->conv[l] = ops->alloc(ops->ctx, c->conv_n * sizeof(float));
        c->state[l] = ops->alloc(ops->ctx, c->state_n * sizeof(float)); /* fp32, always */
        if (!c->conv[l] || !c->state[l])
            goto oom;
        ops->zero(ops->ctx, c->conv[l], c->conv_n * sizeof(float));
        ops->zero(ops->ctx, c->state[l], c->state_n * sizeof(float));
    }
    return DR_OK;
oom:
    dr_gdn_cache_free(c, ops, hp->n_layers);
    return DR_FAIL(DR_ERR_NOMEM, "out of memory allocating the recurrent cache");
}

void dr_gdn_cache_free(dr_gdn_cache *c, const dr_ops *ops, int n_layers) {
    for (int l = 0; l < n_layers; l++) {
        if (c->conv)
            ops->free(ops->ctx, c->conv[l]);
        if (c->state)
            ops->free(ops->ctx, c->state[l]);
    }
    free(c->conv);
    free(c->state);
    c->conv = c->state = NULL;
}

void dr_gdn_cache_reset(dr_gdn_cache *c, const dr_ops *ops, int n_layers) {
    for (int l = 0; l < n_layers; l++)
        if (c->conv[l]) {
            ops->zero(ops->ctx, c->conv[l], c->conv_n * sizeof(float));
            ops->zero(ops->ctx, c->state[l], c->state_n * sizeof(float));
        }
}

void dr_gdn_cache_copy(dr_gdn_cache *dst, const dr_gdn_cache *src, const dr_ops *ops, int n_layers) {
    for (int l = 0; l < n_layers; l++)
        if (src->conv[l]) {
            ops->copy(ops->ctx, dst->conv[l], src->conv[l], src->conv_n * sizeof(float));
            ops->copy(ops->ctx, dst->state[l], src->state[l], src->state_n * sizeof(float));
        }
}
