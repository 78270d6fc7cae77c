/* api/session.c - one sequence: its position, caches and scratch.
 *
 * dr_session_eval splits a block into pieces of at most n_batch tokens and
 * runs the forward on each; arguments are validated before any state moves.
 */
#include "cache/cache.h"
#include "model/forward.h"
#include "util/argmax.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

struct dr_session {
    dr_model *m;
    dr_session_params p;
    int pos;            /* tokens evaluated so far */
    dr_kv_cache kv;
    dr_gdn_cache gdn;
    dr_scratch sc;
    void *graph;        /* the backend's recorded single-token step (ops step_begin) */
    float *host_logits; /* [n_vocab], eval_greedy on a backend without argmax */
};

dr_session_params dr_session_default_params(void) {
    dr_session_params p = {.n_ctx = 4096, .n_batch = 512, .state_dtype = DR_STATE_F32};
    return p;
}

/* Refuse a session whose caches and scratch do not fit the backend's free
 * memory, before allocating any of it. */
static dr_status check_fits(const dr_model *m, const dr_session_params *p) {
    if (!m->ops->mem_free_bytes)
        return DR_OK;
    const dr_hparams *hp = &m->hp;
    uint64_t kv = 0, gdn = 0;
    for (int l = 0; l < hp->n_layers; l++)
        if (hp->is_attn[l])
            kv += 2ull * (uint64_t)p->n_ctx * hp->n_kv_heads * hp->d_head * sizeof(float);
        else
            gdn += ((uint64_t)hp->d_conv * dr_hp_conv_dim(hp) + (uint64_t)hp->n_v_heads * hp->d_k * hp->d_v) *
                   sizeof(float);
    uint64_t need = kv + gdn + dr_scratch_bytes(m, p->n_batch, p->n_ctx), have = m->ops->mem_free_bytes(m->ops->ctx);
    if (need > have)
        return DR_FAIL(DR_ERR_NOMEM,
                       "session: %d-token context needs %.2f GiB of %s memory (KV cache %.2f GiB), %.2f GiB "
                       "are free; use a smaller context",
                       p->n_ctx, need / 1073741824.0, m->ops->name, kv / 1073741824.0, have / 1073741824.0);
    return DR_OK;
}

dr_status dr_session_new(dr_model *m, const dr_session_params *params, dr_session **out) {
    *out = NULL;
    dr_session_params p = params ? *params : dr_session_default_params();
    if (!m)
        return DR_FAIL(DR_ERR_ARG, "dr_session_new: no model");
    if (p.n_ctx < 1 || p.n_ctx > (1 << 24) || p.n_batch < 1 || p.n_batch > (1 << 16))
        return DR_FAIL(DR_ERR_ARG, "session: n_ctx %d / n_batch %d out of range", p.n_ctx, p.n_batch);
    if (p.state_dtype != DR_STATE_F32 && p.state_dtype != DR_STATE_BF16)
        return DR_FAIL(DR_ERR_ARG, "session: unknown state dtype %d", (int)p.state_dtype);
    if (p.n_batch > p.n_ctx)
        p.n_batch = p.n_ctx;
    DR_TRY(check_fits(m, &p));
    dr_session *s = calloc(1, sizeof *s);
    if (!s)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    s->m = m;
    s->p = p;
    dr_status st = dr_kv_cache_new(&s->kv, m->ops, &m->hp, p.n_ctx);
    if (st == DR_OK)
        st = dr_gdn_cache_new(&s->gdn, m->ops, &m->hp);
    if (st == DR_OK)
        st = dr_scratch_new(&s->sc, m, p.n_batch, p.n_ctx);
    if (st != DR_OK) {
        dr_session_free(s);
        return st;
    }
    *out = s;
    return DR_OK;
}

void dr_session_free(dr_session *s) {
    if (!s)
        return;
    const dr_ops *ops = s->m->ops;
    if (ops->graph_free)
        ops->graph_free(ops->ctx, s->graph);
    dr_kv_cache_free(&s->kv, ops, s->m->hp.n_layers);
    dr_gdn_cache_free(&s->gdn, ops, s->m->hp.n_layers);
    if (s->sc.x)
        dr_scratch_free(&s->sc, s->m);
    free(s->host_logits);
    free(s);
}

void dr_session_reset(dr_session *s) {
    dr_kv_cache_reset(&s->kv, s->m->ops, s->m->hp.n_layers, s->pos);
    dr_gdn_cache_reset(&s->gdn, s->m->ops, s->m->hp.n_layers);
    s->pos = 0;
}

dr_status dr_session_clone(const dr_session *s, dr_session **out) {
    DR_TRY(dr_session_new(s->m, &s->p, out));
    dr_kv_cache_copy(&(*out)->kv, &s->kv, s->m->ops, s->m->hp.n_layers, s->pos);
    dr_gdn_cache_copy(&(*out)->gdn, &s->gdn, s->m->ops, s->m->hp.n_layers);
    (*out)->pos = s->pos;
    return DR_OK;
}

int dr_session_pos(const dr_session *s) { return s->pos; }

/* One token through the backend's step recording (ops.h step_begin): the
 * first step of a kind runs normally, the next is recorded, later ones are
 * replays. The logits stay on the device until the step has run; logits
 * NULL leaves them there (sc.logits). */
static void eval_step(dr_session *s, int32_t id, dr_logits_mode mode, float *logits, bool bf16) {
    const dr_model *m = s->m;
    const dr_ops *o = m->ops;
    const int variant = (mode != DR_LOGITS_NONE ? 1 : 0) | (bf16 ? 2 : 0);
    if (o->step_begin(o->ctx, &s->graph, id, s->pos, variant) != DR_STEP_REPLAYED) {
        dr_forward(m, &s->kv, &s->gdn, &s->sc, s->pos, &id, 1, mode, NULL, bf16);
        if (!o->step_end(o->ctx, s->graph)) /* the recording failed and nothing ran */
            dr_forward(m, &s->kv, &s->gdn, &s->sc, s->pos, &id, 1, mode, NULL, bf16);
    }
    if (mode != DR_LOGITS_NONE && logits)
        o->download(o->ctx, logits, s->sc.logits, (size_t)m->hp.n_vocab * sizeof(float));
}

/* What dr_session_eval checks before any state moves. */
static dr_status check_block(const dr_session *s, const int32_t *ids, int n) {
    const dr_model *m = s->m;
    if (n < 1 || !ids)
        return DR_FAIL(DR_ERR_ARG, "eval: empty block (need at least one token)");
    if (n > s->p.n_ctx - s->pos)
        return DR_FAIL(DR_ERR_RANGE, "eval: %d tokens at position %d exceed the context of %d tokens", n, s->pos,
                       s->p.n_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->hp.n_vocab)
            return DR_FAIL(DR_ERR_RANGE, "eval: token id %d at index %d is outside the vocabulary [0, %d)",
                           (int)ids[i], i, m->hp.n_vocab);
    return DR_OK;
}

/* The block in pieces of n_batch tokens; with mode LAST and logits NULL the
 * last row's logits are left in sc.logits on the backend. */
static void run_blocks(dr_session *s, const int32_t *ids, int n, dr_logits_mode mode, float *logits) {
    const dr_model *m = s->m;
    const bool bf16 = s->p.state_dtype == DR_STATE_BF16;
    for (int i0 = 0; i0 < n; i0 += s->p.n_batch) {
        int T = n - i0 < s->p.n_batch ? n - i0 : s->p.n_batch;
        bool last = i0 + T == n;
        dr_logits_mode pm = mode == DR_LOGITS_ALL ? DR_LOGITS_ALL : (last ? mode : DR_LOGITS_NONE);
        float *dst = mode == DR_LOGITS_ALL ? logits + (size_t)i0 * m->hp.n_vocab : logits;
        if (T == 1 && m->ops->step_begin)
            eval_step(s, ids[i0], pm, dst, bf16);
        else
            dr_forward(m, &s->kv, &s->gdn, &s->sc, s->pos, ids + i0, T, pm, dst, bf16);
        s->pos += T;
    }
}

dr_status dr_session_eval(dr_session *s, const int32_t *ids, int n, dr_logits_mode mode, float *logits) {
    if (mode != DR_LOGITS_NONE && !logits)
        return DR_FAIL(DR_ERR_ARG, "eval: logits requested but no buffer given");
    DR_TRY(check_block(s, ids, n));
    run_blocks(s, ids, n, mode, logits);
    return DR_OK;
}

dr_status dr_session_eval_greedy(dr_session *s, const int32_t *ids, int n, int n_cand, int32_t *next) {
    const dr_model *m = s->m;
    const dr_ops *o = m->ops;
    const int V = m->hp.n_vocab;
    if (!next)
        return DR_FAIL(DR_ERR_ARG, "eval_greedy: no place for the next token given");
    if (n_cand > V)
        return DR_FAIL(DR_ERR_ARG, "eval_greedy: %d candidates but the vocabulary has %d tokens", n_cand, V);
    DR_TRY(check_block(s, ids, n));
    run_blocks(s, ids, n, DR_LOGITS_LAST, NULL);
    const int nc = n_cand > 0 ? n_cand : V;
    if (o->argmax)
        return o->argmax(o->ctx, next, s->sc.logits, nc)
                   ? DR_OK
                   : DR_FAIL(DR_ERR_DEVICE, "eval_greedy: the %s backend's argmax failed", o->name);
    if (!s->host_logits && !(s->host_logits = malloc((size_t)V * sizeof(float))))
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    o->download(o->ctx, s->host_logits, s->sc.logits, (size_t)nc * sizeof(float));
    *next = dr_argmax_f32(s->host_logits, nc);
    return DR_OK;
}

dr_status dr_session_gdn_state(const dr_session *s, int layer, float *recurrent, float *conv) {
    const dr_hparams *hp = &s->m->hp;
    const dr_ops *ops = s->m->ops;
    if (layer < 0 || layer >= hp->n_layers || hp->is_attn[layer])
        return DR_FAIL(DR_ERR_ARG, "layer %d is not a Gated DeltaNet layer", layer);
    if (recurrent)
        ops->download(ops->ctx, recurrent, s->gdn.state[layer], s->gdn.state_n * sizeof(float));
    if (conv) { /* ours is [K, C]; transformers' is [C, K] */
        const int K = hp->d_conv, C = dr_hp_conv_dim(hp);
        float *tmp = malloc(s->gdn.conv_n * sizeof *tmp);
        if (!tmp)
            return DR_FAIL(DR_ERR_NOMEM, "out of memory");
        ops->download(ops->ctx, tmp, s->gdn.conv[layer], s->gdn.conv_n * sizeof(float));
        for (int j = 0; j < K; j++)
            for (int ch = 0; ch < C; ch++)
                conv[(size_t)ch * K + j] = tmp[(size_t)j * C + ch];
        free(tmp);
    }
    return DR_OK;
}
