/* model/forward.h - the forward pass of Qwen3.5 / Qwen3.5-MoE / Qwen3-Next
 * over one block of tokens, and the scratch it runs in.
 */
#ifndef DR_MODEL_FORWARD_H
#define DR_MODEL_FORWARD_H

#include "cache/cache.h"
#include "model/model.h"

#define DR_LOGIT_ROWS 8 /* lm_head rows computed per slice (bounds scratch at 8 x V) */

/* Activation buffers for blocks of up to n_batch tokens, in backend memory,
 * allocated once per session: the forward allocates nothing. */
typedef struct dr_scratch {
    int n_batch;
    float *x;          /* [n, H] residual stream */
    float *xn;         /* [n, H] normed input of a mixer / FFN */
    float *out;        /* [n, H] mixer / FFN output */
    float *out2;       /* [n, H] shared-expert output */
    /* GDN */
    float *qkv_raw;    /* [n, C] pre-conv q|k|v */
    float *qkv;        /* [n, C] after conv + SiLU */
    float *z;          /* [n, Hv·dv] */
    float *b, *a;      /* [n, Hv] */
    float *beta, *g;   /* [n, Hv] */
    float *o;          /* [n, Hv·dv] delta-rule output */
    float *y;          /* [n, Hv·dv] gated-norm output */
    /* attention */
    float *qg;         /* [n, 2·nH·hd] q_proj output */
    float *q, *gate;   /* [n, nH·hd] */
    float *k, *v;      /* [n, nKV·hd] */
    float *att;        /* [n, nH·hd] */
    /* FFN */
    float *ff_a, *ff_b;/* [n, max(I, Is)] */
    float *router;     /* [n, E] */
    int32_t *moe_idx;  /* [n, k] */
    float *moe_w;      /* [n, k] */
    float *sh_s;       /* [n] shared-expert gate logit */
    float *logits;     /* [DR_LOGIT_ROWS, V] */
    float *ws;         /* op workspace */
    size_t ws_n;
} dr_scratch;

dr_status dr_scratch_new(dr_scratch *sc, const dr_model *m, int n_batch, int n_ctx);
void dr_scratch_free(dr_scratch *sc, const dr_model *m);

/* Bytes dr_scratch_new would allocate. Can't fail. */
size_t dr_scratch_bytes(const dr_model *m, int n_batch, int n_ctx);

/* Evaluate tokens ids[0..T) (1 <= T <= n_batch, ids valid, pos0 + T <= n_ctx)
 * at positions pos0.. on top of the caches, updating them. Blocks of T > 1
 * use the chunked GDN form, T = 1 the recurrence. Logits (host memory) per
 * `mode`: none, the last row [V], or all rows [T, V]; with DR_LOGITS_LAST and
 * logits NULL they stay in sc->logits (backend memory). With `state_bf16` the
 * recurrent state is rounded to bf16 after the block (diagnostic only). */
void dr_forward(const dr_model *m, dr_kv_cache *kv, dr_gdn_cache *gdn, dr_scratch *sc, int pos0,
                const int32_t *ids, int T, dr_logits_mode mode, float *logits, bool state_bf16);

#endif
