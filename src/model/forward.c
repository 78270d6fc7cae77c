/* model/forward.c - the forward pass, written once against the ops table.
 *
 * Reads like MODEL.md: embedding, then per layer a pre-norm mixer (Gated
 * DeltaNet or gated full attention) and a pre-norm FFN (dense SwiGLU or MoE),
 * each added to the residual stream; final norm; lm_head. Section numbers in
 * the comments refer to MODEL.md.
 */
#include "model/forward.h"

#include "util/status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ===================== scratch ===================== */

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* The scratch buffers and their sizes; with `alloc` false only *total is
 * computed (so a session can check it fits before allocating anything). */
static dr_status scratch_build(dr_scratch *sc, const dr_model *m, int n_batch, int n_ctx, bool alloc,
                               size_t *total) {
    const dr_hparams *hp = &m->hp;
    const dr_ops *ops = m->ops;
    const size_t n = (size_t)n_batch, H = (size_t)hp->d_model, C = (size_t)dr_hp_conv_dim(hp);
    const size_t vd = (size_t)hp->n_v_heads * hp->d_v, Hv = (size_t)hp->n_v_heads;
    const size_t qd = (size_t)hp->n_heads * hp->d_head, kvd = (size_t)hp->n_kv_heads * hp->d_head;
    const size_t ffw = max_sz((size_t)hp->d_ff, (size_t)hp->d_ff_shared);
    const size_t E = (size_t)hp->n_experts, K = (size_t)hp->n_experts_used;
    dr_gdn_dims gd = {hp->n_k_heads, hp->n_v_heads, hp->d_k, hp->d_v};
    memset(sc, 0, sizeof *sc);
    sc->n_batch = n_batch;
    sc->ws_n = max_sz(max_sz((size_t)n_ctx + 1, dr_gdn_ws_floats(&gd)), 2 * (size_t)hp->d_ff_expert + H);
    struct {
        void **p;
        size_t bytes;
    } plan[] = {
        {(void **)&sc->x, n * H * 4},        {(void **)&sc->xn, n * H * 4},
        {(void **)&sc->out, n * H * 4},      {(void **)&sc->out2, n * H * 4},
        {(void **)&sc->qkv_raw, n * C * 4},  {(void **)&sc->qkv, n * C * 4},
        {(void **)&sc->z, n * vd * 4},       {(void **)&sc->b, n * Hv * 4},
        {(void **)&sc->a, n * Hv * 4},       {(void **)&sc->beta, n * Hv * 4},
        {(void **)&sc->g, n * Hv * 4},       {(void **)&sc->o, n * vd * 4},
        {(void **)&sc->y, n * vd * 4},       {(void **)&sc->qg, n * 2 * qd * 4},
        {(void **)&sc->q, n * qd * 4},       {(void **)&sc->gate, n * qd * 4},
        {(void **)&sc->k, n * kvd * 4},      {(void **)&sc->v, n * kvd * 4},
        {(void **)&sc->att, n * qd * 4},     {(void **)&sc->ff_a, n * ffw * 4},
        {(void **)&sc->ff_b, n * ffw * 4},   {(void **)&sc->router, n * E * 4},
        {(void **)&sc->moe_idx, n * K * 4},  {(void **)&sc->moe_w, n * K * 4},
        {(void **)&sc->sh_s, n * 4},         {(void **)&sc->logits, DR_LOGIT_ROWS * (size_t)hp->n_vocab * 4},
        {(void **)&sc->ws, sc->ws_n * 4},
    };
    *total = 0;
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++) {
        *total += plan[i].bytes;
        if (!alloc)
            continue;
        *plan[i].p = ops->alloc(ops->ctx, plan[i].bytes);
        if (!*plan[i].p) {
            dr_scratch_free(sc, m);
            return DR_FAIL(DR_ERR_NOMEM, "out of memory allocating %zu bytes of activations", plan[i].bytes);
        }
    }
    return DR_OK;
}

dr_status dr_scratch_new(dr_scratch *sc, const dr_model *m, int n_batch, int n_ctx) {
    size_t total;
    return scratch_build(sc, m, n_batch, n_ctx, true, &total);
}

size_t dr_scratch_bytes(const dr_model *m, int n_batch, int n_ctx) {
    dr_scratch tmp;
    size_t total;
    scratch_build(&tmp, m, n_batch, n_ctx, false, &total);
    return total;
}

void dr_scratch_free(dr_scratch *sc, const dr_model *m) {
    void *bufs[] = {sc->x,    sc->xn,    sc->out,  sc->out2, sc->qkv_raw, sc->qkv,     sc->z,
                    sc->b,    sc->a,     sc->beta, sc->g,    sc->o,       sc->y,       sc->qg,
                    sc->q,    sc->gate,  sc->k,    sc->v,    sc->att,     sc->ff_a,    sc->ff_b,
                    sc->router, sc->moe_idx, sc->moe_w, sc->sh_s, sc->logits, sc->ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        m->ops->free(m->ops->ctx, bufs[i]);
    memset(sc, 0, sizeof *sc);
}

/* ===================== helpers ===================== */

/* y_i = W_i x for projections that share their input (one pass when the
 * backend can). */
static void matmuls(const dr_ops *o, int n, float *const *ys, const float *x, const dr_tensor *const *ws, int T) {
    if (o->matmul_n)
        o->matmul_n(o->ctx, n, ys, x, ws, T);
    else
        for (int i = 0; i < n; i++)
            o->matmul(o->ctx, ys[i], x, ws[i], T);
}

/* The input projections of a mixer: y_i = W_i xn, or with `gain` (xn not
 * made yet, see defer_norm) y_i = W_i RMSNorm(x; gain), in one pass when
 * the backend can. */
static void in_matmuls(const dr_model *m, dr_scratch *sc, int n, float *const *ys, const dr_tensor *const *ws,
                       const float *gain, int T) {
    const dr_ops *o = m->ops;
    if (gain) {
        if (o->rmsnorm_matmul_n && o->rmsnorm_matmul_n(o->ctx, n, ys, sc->x, gain, m->hp.eps, ws, T))
            return;
        o->rmsnorm(o->ctx, sc->xn, sc->x, gain, T, m->hp.d_model, m->hp.eps);
    }
    matmuls(o, n, ys, sc->xn, ws, T);
}

/* Whether the backend's rmsnorm_matmul_n can take w: unquantized, or 4-bit
 * (the CUDA backend's dp4a GEMV folds the norm in; 8-bit declines). */
static bool norm_in_weight(const dr_tensor *w) { return !w->q.bits || w->q.bits == 4; }

/* Whether layer l's pre-norm is left to its input projections (decode, a
 * backend with rmsnorm_matmul_n, projections it takes): the block before
 * it then ends with the residual add alone, one launch less per layer on a
 * GPU. */
static bool defer_norm(const dr_model *m, int l, int T) {
    if (T != 1 || l >= m->hp.n_layers || !m->ops->rmsnorm_matmul_n)
        return false;
    const dr_layer_weights *lw = &m->w.layers[l];
    if (m->hp.is_attn[l])
        return norm_in_weight(&lw->attn.q_proj) && norm_in_weight(&lw->attn.k_proj) &&
               norm_in_weight(&lw->attn.v_proj);
    return norm_in_weight(&lw->gdn.in_proj_qkv) && norm_in_weight(&lw->gdn.in_proj_z) &&
           norm_in_weight(&lw->gdn.in_proj_b) && norm_in_weight(&lw->gdn.in_proj_a);
}

/* The same for layer l's FFN (dense, unquantized or 4-bit gate/up, a
 * backend that fuses the SwiGLU activations): the mixer then ends with the
 * residual add. */
static bool defer_ffn_norm(const dr_model *m, int l, int T) {
    const dr_ffn_weights *f = &m->w.layers[l].ffn;
    return T == 1 && m->ops->matmul_swiglu && !m->hp.is_moe[l] && norm_in_weight(&f->gate) && norm_in_weight(&f->up);
}

/* Residual add, then the next pre-norm: x += d; xn = RMSNorm(x) (gain NULL:
 * the add alone). */
static void add_norm(const dr_model *m, dr_scratch *sc, const float *gain, int T) {
    const dr_ops *o = m->ops;
    const int H = m->hp.d_model;
    if (!gain)
        o->add(o->ctx, sc->x, sc->out, (size_t)T * H);
    else if (o->add_rmsnorm)
        o->add_rmsnorm(o->ctx, sc->x, sc->out, sc->xn, gain, T, H, m->hp.eps);
    else {
        o->add(o->ctx, sc->x, sc->out, (size_t)T * H);
        o->rmsnorm(o->ctx, sc->xn, sc->x, gain, T, H, m->hp.eps);
    }
}

/* A block's output projection, then the residual add and the next pre-norm:
 * x += W a; xn = RMSNorm(x) (one pass when the backend can). */
static void project_add_norm(const dr_model *m, dr_scratch *sc, const dr_tensor *W, const float *a,
                             const float *gain, int T) {
    const dr_ops *o = m->ops;
    if (o->matmul_add_rmsnorm && o->matmul_add_rmsnorm(o->ctx, sc->x, sc->xn, a, W, gain, T, m->hp.eps))
        return;
    o->matmul(o->ctx, sc->out, a, W, T);
    add_norm(m, sc, gain, T);
}

/* ===================== mixers ===================== */

/* Gated DeltaNet (5.2): projections (of RMSNorm(x; in_gain) when in_gain is
 * given, else of xn), conv + SiLU, gates, delta rule, gated norm, out_proj;
 * added to x, xn = RMSNorm(x) with `gain`. */
static void gdn_layer(const dr_model *m, const dr_gdn_weights *w, float *conv_state, float *state,
                      dr_scratch *sc, int T, bool state_bf16, const float *in_gain, const float *gain) {
    const dr_hparams *hp = &m->hp;
    const dr_ops *o = m->ops;
    void *c = o->ctx;
    const int Hv = hp->n_v_heads, C = dr_hp_conv_dim(hp);
    const dr_gdn_dims d = {hp->n_k_heads, hp->n_v_heads, hp->d_k, hp->d_v};
    /* m = W_qkv x (q | k | v channels), z, b, a: four projections of x */
    float *const ys[4] = {sc->qkv_raw, sc->z, sc->b, sc->a};
    const dr_tensor *const ws[4] = {&w->in_proj_qkv, &w->in_proj_z, &w->in_proj_b, &w->in_proj_a};
    in_matmuls(m, sc, 4, ys, ws, in_gain, T);
    if (T == 1 && o->gdn_decode) { /* the backend's fused single-token step, same math */
        o->gdn_decode(c, sc->y, sc->qkv_raw, sc->z, sc->b, sc->a, conv_state, state, w->conv1d, hp->d_conv,
                      w->A_log, w->dt_bias, w->norm, &d, hp->eps);
    } else {
        o->gdn_conv(c, sc->qkv, sc->qkv_raw, conv_state, w->conv1d, T, C, hp->d_conv); /* 5.2 step 2 */
        o->gdn_gates(c, sc->beta, sc->g, sc->b, sc->a, w->A_log, w->dt_bias, T, Hv);  /* steps 4-5 */
        if (T > 1) /* as transformers: chunked form for blocks, recurrence for single tokens (11.12) */
            o->gdn_chunked(c, sc->o, sc->qkv, sc->beta, sc->g, state, &d, T, sc->ws);
        else
            o->gdn_recurrent(c, sc->o, sc->qkv, sc->beta, sc->g, state, &d, T, sc->ws);
        o->gated_rmsnorm(c, sc->y, sc->o, sc->z, w->norm, T * Hv, hp->d_v, hp->eps); /* 3.2 */
    }
    if (state_bf16) /* diagnostic only: the bug this project exists to avoid */
        o->round_bf16(c, state, (size_t)Hv * hp->d_k * hp->d_v);
    project_add_norm(m, sc, &w->out_proj, sc->y, gain, T);
}

/* The steps of attn_layer between the projections and o_proj, op by op. */
static void attn_core(const dr_model *m, const dr_attn_weights *w, float *k_cache, float *v_cache, dr_scratch *sc,
                      int pos0, int T, float scale) {
    const dr_hparams *hp = &m->hp;
    const dr_ops *o = m->ops;
    void *c = o->ctx;
    const int nH = hp->n_heads, nKV = hp->n_kv_heads, hd = hp->d_head;
    const size_t kv_row = (size_t)nKV * hd;
    o->split_halves(c, sc->q, sc->gate, sc->qg, T * nH, hd); /* per head: [query | gate] */
    o->rmsnorm(c, sc->q, sc->q, w->q_norm, T * nH, hd, hp->eps); /* per head, before RoPE */
    o->rmsnorm(c, sc->k, sc->k, w->k_norm, T * nKV, hd, hp->eps);
    o->rope(c, sc->q, T, nH, hd, hp->d_rot, pos0, hp->rope_theta);
    o->rope(c, sc->k, T, nKV, hd, hp->d_rot, pos0, hp->rope_theta);
    if (o->kv_store) /* the backend's single write of both rows */
        o->kv_store(c, k_cache, v_cache, sc->k, sc->v, T, pos0, (int)kv_row);
    else {
        o->copy(c, k_cache + (size_t)pos0 * kv_row, sc->k, (size_t)T * kv_row * sizeof(float));
        o->copy(c, v_cache + (size_t)pos0 * kv_row, sc->v, (size_t)T * kv_row * sizeof(float));
    }
    o->attention(c, sc->att, sc->q, k_cache, v_cache, T, pos0, nH, nKV, hd, scale, sc->ws);
    o->sigmoid_mul(c, sc->att, sc->gate, (size_t)T * nH * hd); /* output gate, before o_proj */
}

/* Gated full attention (4): projections (as gdn_layer), q/gate split per head, q/k norm, RoPE,
 * cache, GQA, sigmoid gate, o_proj; added to x, xn = RMSNorm(x) with `gain`. */
static void attn_layer(const dr_model *m, const dr_attn_weights *w, float *k_cache, float *v_cache,
                       dr_scratch *sc, int pos0, int T, const float *in_gain, const float *gain) {
    const dr_hparams *hp = &m->hp;
    const dr_ops *o = m->ops;
    void *c = o->ctx;
    const int nH = hp->n_heads, nKV = hp->n_kv_heads, hd = hp->d_head;
    float *const ys[3] = {sc->qg, sc->k, sc->v};
    const dr_tensor *const ws[3] = {&w->q_proj, &w->k_proj, &w->v_proj};
    in_matmuls(m, sc, 3, ys, ws, in_gain, T);
    const float scale = 1.0f / sqrtf((float)hd);
    if (!o->attention_block ||
        !o->attention_block(c, sc->att, sc->q, sc->gate, sc->k, sc->qg, sc->v, k_cache, v_cache, w->q_norm,
                            w->k_norm, T, pos0, nH, nKV, hd, hp->d_rot, hp->rope_theta, hp->eps, scale))
        attn_core(m, w, k_cache, v_cache, sc, pos0, T, scale); /* the same steps, op by op */
    project_add_norm(m, sc, &w->o_proj, sc->att, gain, T);
}

/* ===================== FFN ===================== */

/* ff_a = silu(gate xn) * up xn (ff_b: scratch); with in_gain (xn not made
 * yet, see defer_norm) of RMSNorm(x; in_gain), in one pass when the backend
 * can. */
static void swiglu_act(const dr_model *m, dr_scratch *sc, const dr_tensor *gate, const dr_tensor *up,
                       const float *in_gain, int T) {
    const dr_ops *o = m->ops;
    if (in_gain) {
        if (o->matmul_swiglu && o->matmul_swiglu(o->ctx, sc->ff_a, sc->x, gate, up, T, in_gain, m->hp.eps))
            return;
        o->rmsnorm(o->ctx, sc->xn, sc->x, in_gain, T, m->hp.d_model, m->hp.eps);
    }
    if (o->matmul_swiglu && o->matmul_swiglu(o->ctx, sc->ff_a, sc->xn, gate, up, T, NULL, 0.0f))
        return;
    float *const ys[2] = {sc->ff_a, sc->ff_b};
    const dr_tensor *const ws[2] = {gate, up};
    matmuls(o, 2, ys, sc->xn, ws, T);
    o->swiglu(o->ctx, sc->ff_a, sc->ff_a, sc->ff_b, (size_t)T * (size_t)gate->ne[0]);
}

/* SwiGLU: x += down(silu(gate xn) * up xn)   (6.1), xn = RMSNorm(x; in_gain) when given;
 * then xn = RMSNorm(x) with `gain`. */
static void swiglu_mlp(const dr_model *m, const dr_ffn_weights *f, dr_scratch *sc, const float *in_gain,
                       const float *gain, int T) {
    swiglu_act(m, sc, &f->gate, &f->up, in_gain, T);
    project_add_norm(m, sc, &f->down, sc->ff_a, gain, T);
}

/* Sparse MoE block (6.2): routed experts plus the sigmoid-gated shared expert, into sc->out;
 * with into_x, when the backend's fused decode block runs, added to x instead (returns true). */
static bool moe_block(const dr_model *m, const dr_ffn_weights *f, dr_scratch *sc, int T, bool into_x) {
    const dr_hparams *hp = &m->hp;
    const dr_ops *o = m->ops;
    void *c = o->ctx;
    const int H = hp->d_model, k = hp->n_experts_used;
    const dr_moe_shared sh = {&f->sh_gate, &f->sh_up, &f->sh_gate_w, &f->sh_down, sc->ff_a, sc->ff_b, sc->sh_s};
    if (o->moe_decode && o->moe_decode(c, into_x ? sc->x : sc->out, sc->moe_idx, sc->moe_w, sc->router, &f->router,
                                       sc->xn, f->experts, hp->n_experts, T, k, hp->norm_topk, H, hp->d_ff_expert,
                                       f->has_shared ? &sh : NULL, into_x))
        return into_x; /* the backend's fused decode block: the same sums as below */
    if (f->has_shared) { /* the projections of xn: router, shared gate/up, shared-expert gate (one pass) */
        float *const ys[4] = {sc->router, sc->ff_a, sc->ff_b, sc->sh_s};
        const dr_tensor *const ws[4] = {&f->router, &f->sh_gate, &f->sh_up, &f->sh_gate_w};
        matmuls(o, 4, ys, sc->xn, ws, T);
    } else {
        o->matmul(c, sc->router, sc->xn, &f->router, T);
    }
    o->moe_route(c, sc->moe_idx, sc->moe_w, sc->router, T, hp->n_experts, k, hp->norm_topk);
    o->zero(c, sc->out, (size_t)T * H * sizeof(float));
    o->moe_experts(c, sc->out, sc->xn, sc->moe_idx, sc->moe_w, f->experts, hp->n_experts, T, k, H, hp->d_ff_expert,
                   sc->ws);
    if (!f->has_shared)
        return false;
    /* shared expert: down(silu(gate x) * up x), scaled by sigmoid(w_sg x) */
    o->swiglu(c, sc->ff_a, sc->ff_a, sc->ff_b, (size_t)T * (size_t)f->sh_gate.ne[0]);
    o->matmul(c, sc->out2, sc->ff_a, &f->sh_down, T);
    o->sigmoid_scale_rows(c, sc->out2, sc->sh_s, T, H); /* s <- sigmoid(w_sg x) * s */
    o->add(c, sc->out, sc->out2, (size_t)T * H);
    return false;
}

/* ===================== the whole model ===================== */

/* Final norm and lm_head for rows [r0, r1) of the residual stream -> host
 * logits; logits NULL (one row): left in sc->logits. */
static void lm_head_rows(const dr_model *m, dr_scratch *sc, int r0, int r1, float *logits) {
    const dr_ops *o = m->ops;
    const int H = m->hp.d_model, V = m->hp.n_vocab;
    for (int r = r0; r < r1; r += DR_LOGIT_ROWS) {
        int n = r1 - r < DR_LOGIT_ROWS ? r1 - r : DR_LOGIT_ROWS;
        o->rmsnorm(o->ctx, sc->xn, sc->x + (size_t)r * H, m->w.final_norm, n, H, m->hp.eps);
        o->matmul(o->ctx, sc->logits, sc->xn, &m->w.lm_head, n);
        if (logits)
            o->download(o->ctx, logits + (size_t)(r - r0) * V, sc->logits, (size_t)n * V * sizeof(float));
    }
}

void dr_forward(const dr_model *m, dr_kv_cache *kv, dr_gdn_cache *gdn, dr_scratch *sc, int pos0,
                const int32_t *ids, int T, dr_logits_mode mode, float *logits, bool state_bf16) {
    const dr_hparams *hp = &m->hp;
    const dr_ops *o = m->ops;
    void *c = o->ctx;
    const int H = hp->d_model;
    o->embed(c, sc->x, &m->w.embed, ids, T); /* no scaling (2) */
    bool later = defer_norm(m, 0, T); /* xn not made: the next input projections normalise x */
    if (!later)
        o->rmsnorm(c, sc->xn, sc->x, m->w.layers[0].ln1, T, H, hp->eps);
    for (int l = 0; l < hp->n_layers; l++) {
        const dr_layer_weights *lw = &m->w.layers[l];
        const float *ln_next = l + 1 < hp->n_layers ? m->w.layers[l + 1].ln1 : NULL;
        const float *in_gain = later ? lw->ln1 : NULL;
        const bool ffn_later = defer_ffn_norm(m, l, T);
        const float *mix_gain = ffn_later ? NULL : lw->ln2;
        /* h = x + Mixer(RMSNorm(x))   (7.1); xn holds RMSNorm(x), then RMSNorm(h) (or not yet) */
        if (hp->is_attn[l])
            attn_layer(m, &lw->attn, kv->k[l], kv->v[l], sc, pos0, T, in_gain, mix_gain);
        else
            gdn_layer(m, &lw->gdn, gdn->conv[l], gdn->state[l], sc, T, state_bf16, in_gain, mix_gain);
        /* y = h + FFN(RMSNorm(h)); xn = the next layer's RMSNorm(y), or left to its projections */
        later = defer_norm(m, l + 1, T);
        if (hp->is_moe[l]) {
            if (!moe_block(m, &lw->ffn, sc, T, later))
                add_norm(m, sc, later ? NULL : ln_next, T);
        } else {
            swiglu_mlp(m, &lw->ffn, sc, ffn_later ? lw->ln2 : NULL, later ? NULL : ln_next, T);
        }
    }
    if (mode == DR_LOGITS_LAST)
        lm_head_rows(m, sc, T - 1, T, logits);
    else if (mode == DR_LOGITS_ALL)
        lm_head_rows(m, sc, 0, T, logits);
}
