/* model/weights.c - binds checkpoint tensors to the weight table.
 *
 * Every tensor the architecture needs must be present with the expected
 * shape and a dtype we compute with; errors name the tensor, the file, the
 * shape found and the shape expected. Handles both prefixes
 * (model.language_model. / model.), tied lm_head, fused or per-expert MoE
 * tensors, and de-interleaves Qwen3-Next's in_proj_qkvz / in_proj_ba once
 * (MODEL.md 5.1). Matrices stay mapped in their file dtype.
 */
#include "model/model.h"

#include "util/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    dr_model *m;
    const char *dir;
    const char *prefix; /* "model.language_model." or "model." */
    char name[512];
} binder;

/* ---- owned buffers ---- */

static dr_status track(void ***list, int *n, int *cap, void *p) {
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        void **nl = realloc(*list, (size_t)nc * sizeof *nl);
        if (!nl)
            return DR_FAIL(DR_ERR_NOMEM, "out of memory binding weights");
        *list = nl;
        *cap = nc;
    }
    (*list)[(*n)++] = p;
    return DR_OK;
}

static void *host_alloc(dr_model *m, size_t n) {
    void *p = malloc(n ? n : 1);
    if (p && track(&m->host_owned, &m->n_host_owned, &m->cap_host_owned, p) != DR_OK) {
        free(p);
        return NULL;
    }
    return p;
}

/* ---- lookup and checks ---- */

static const char *fmt_shape(char *buf, size_t n, int ndim, const int64_t *ne) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ",%lld" : "%lld", (long long)ne[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
    return buf;
}

/* Find `name` and check its shape against want[0..ndim). want[i] < 0 = any. */
static dr_status find_checked(binder *b, const char *name, int ndim, const int64_t *want,
                              const dr_st_tensor **out) {
    const dr_st_tensor *t = dr_st_find(&b->m->st, name);
    if (!t)
        return DR_FAIL(DR_ERR_FORMAT, "%s: missing tensor %s", b->dir, name);
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = want[i] < 0 || t->shape[i] == want[i];
    if (!ok) {
        char s1[128], s2[128];
        return DR_FAIL(DR_ERR_SHAPE, "%s: %s: shape %s, expected %s", t->file, name,
                       fmt_shape(s1, sizeof s1, t->ndim, t->shape), fmt_shape(s2, sizeof s2, ndim, want));
    }
    if (t->dtype != DR_DT_F32 && t->dtype != DR_DT_BF16 && t->dtype != DR_DT_F16)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: dtype %s is not supported (expected F32, BF16 or F16)",
                       t->file, name, t->dtype_name);
    *out = t;
    return DR_OK;
}

static const char *full(binder *b, const char *fmt, int layer, const char *suffix) {
    char mid[256];
    snprintf(mid, sizeof mid, fmt, layer);
    snprintf(b->name, sizeof b->name, "%s%s%s", b->prefix, mid, suffix);
    return b->name;
}

static void to_tensor(const dr_st_tensor *t, dr_tensor *out) {
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    for (int i = 0; i < t->ndim && i < 4; i++)
        out->ne[i] = t->shape[i];
    out->data = t->data;
}

/* A matrix [rows, cols] kept in its file dtype. */
static dr_status bind_mat(binder *b, const char *name, int64_t rows, int64_t cols, dr_tensor *out) {
    const dr_st_tensor *t;
    int64_t want[2] = {rows, cols};
    DR_TRY(find_checked(b, name, 2, want, &t));
    to_tensor(t, out);
    return DR_OK;
}

/* A small parameter of n elements (shape `ndim`/`want`) as fp32 in backend
 * memory, plus `add` to every element (1 for zero-centred norms). */
static dr_status bind_vec(binder *b, const char *name, int ndim, const int64_t *want, float add, float **out) {
    const dr_st_tensor *t;
    DR_TRY(find_checked(b, name, ndim, want, &t));
    size_t n = (size_t)dr_st_numel(t);
    float *host = malloc(n * sizeof *host);
    dr_model *m = b->m;
    float *dev = m->ops->alloc(m->ops->ctx, n * sizeof *dev);
    if (!host || !dev) {
        free(host);
        m->ops->free(m->ops->ctx, dev);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory converting %s", name);
    }
    if (track(&m->owned, &m->n_owned, &m->cap_owned, dev) != DR_OK) {
        free(host);
        m->ops->free(m->ops->ctx, dev);
        return DR_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        host[i] = dr_load_f32(t->data, t->dtype, i) + add;
    m->ops->upload(m->ops->ctx, dev, host, n * sizeof *host);
    free(host);
    *out = dev;
    return DR_OK;
}

static dr_status bind_norm(binder *b, const char *name, int64_t n, float **out) {
    return bind_vec(b, name, 1, &n, 1.0f, out); /* zero-centred: gain = 1 + w (MODEL.md 3.1) */
}

/* ---- Qwen3-Next de-interleave (MODEL.md 5.1) ---- */

/* Copy `n` rows starting at src row `from` to dst row `to` (file dtype). */
static void copy_rows(void *dst, int64_t to, const dr_st_tensor *src, int64_t from, int64_t n) {
    size_t row = (size_t)src->shape[1] * dr_dtype_size(src->dtype);
    memcpy((char *)dst + (size_t)to * row, (const char *)src->data + (size_t)from * row, (size_t)n * row);
}

static dr_status owned_mat(binder *b, const dr_st_tensor *src, int64_t rows, dr_tensor *out, void **buf) {
    size_t bytes = (size_t)rows * (size_t)src->shape[1] * dr_dtype_size(src->dtype);
    *buf = host_alloc(b->m, bytes);
    if (!*buf)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory de-interleaving %s", src->name);
    to_tensor(src, out);
    out->ne[0] = rows;
    out->data = *buf;
    return DR_OK;
}

/* in_proj_qkvz: Hk groups of [q (dk) | k (dk) | v (r·dv) | z (r·dv)] rows
 * -> in_proj_qkv [q all | k all | v all] and in_proj_z. */
static dr_status deinterleave_qkvz(binder *b, int l, dr_gdn_weights *g) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t Hk = hp->n_k_heads, dk = hp->d_k, dv = hp->d_v, r = hp->n_v_heads / hp->n_k_heads;
    const int64_t kd = Hk * dk, vd = hp->n_v_heads * dv, grp = 2 * dk + 2 * r * dv;
    const dr_st_tensor *t;
    int64_t want[2] = {2 * kd + 2 * vd, hp->d_model};
    DR_TRY(find_checked(b, full(b, "layers.%d.", l, "linear_attn.in_proj_qkvz.weight"), 2, want, &t));
    void *qkv, *z;
    DR_TRY(owned_mat(b, t, 2 * kd + vd, &g->in_proj_qkv, &qkv));
    DR_TRY(owned_mat(b, t, vd, &g->in_proj_z, &z));
    for (int64_t h = 0; h < Hk; h++) {
        int64_t base = h * grp;
        copy_rows(qkv, h * dk, t, base, dk);                   /* q_h */
        copy_rows(qkv, kd + h * dk, t, base + dk, dk);         /* k_h */
        copy_rows(qkv, 2 * kd + h * r * dv, t, base + 2 * dk, r * dv); /* v heads h·r .. */
        copy_rows(z, h * r * dv, t, base + 2 * dk + r * dv, r * dv);   /* z heads h·r .. */
    }
    return DR_OK;
}

/* in_proj_ba: Hk groups of [b (r) | a (r)] rows -> in_proj_b, in_proj_a. */
static dr_status deinterleave_ba(binder *b, int l, dr_gdn_weights *g) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t Hk = hp->n_k_heads, Hv = hp->n_v_heads, r = Hv / Hk;
    const dr_st_tensor *t;
    int64_t want[2] = {2 * Hv, hp->d_model};
    DR_TRY(find_checked(b, full(b, "layers.%d.", l, "linear_attn.in_proj_ba.weight"), 2, want, &t));
    void *bb, *aa;
    DR_TRY(owned_mat(b, t, Hv, &g->in_proj_b, &bb));
    DR_TRY(owned_mat(b, t, Hv, &g->in_proj_a, &aa));
    for (int64_t h = 0; h < Hk; h++) {
        copy_rows(bb, h * r, t, h * 2 * r, r);
        copy_rows(aa, h * r, t, h * 2 * r + r, r);
    }
    return DR_OK;
}

/* ---- layers ---- */

static dr_status bind_gdn(binder *b, int l, dr_gdn_weights *g) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t H = hp->d_model, Hv = hp->n_v_heads, vd = Hv * hp->d_v, C = dr_hp_conv_dim(hp);
    const char *L = "layers.%d.linear_attn.";
    if (hp->arch == DR_ARCH_QWEN3_NEXT) {
        DR_TRY(deinterleave_qkvz(b, l, g));
        DR_TRY(deinterleave_ba(b, l, g));
    } else {
        DR_TRY(bind_mat(b, full(b, L, l, "in_proj_qkv.weight"), C, H, &g->in_proj_qkv));
        DR_TRY(bind_mat(b, full(b, L, l, "in_proj_z.weight"), vd, H, &g->in_proj_z));
        DR_TRY(bind_mat(b, full(b, L, l, "in_proj_b.weight"), Hv, H, &g->in_proj_b));
        DR_TRY(bind_mat(b, full(b, L, l, "in_proj_a.weight"), Hv, H, &g->in_proj_a));
    }
    int64_t conv_shape[3] = {C, 1, hp->d_conv}, hv[1] = {Hv}, dv[1] = {hp->d_v};
    DR_TRY(bind_vec(b, full(b, L, l, "conv1d.weight"), 3, conv_shape, 0.0f, &g->conv1d));
    DR_TRY(bind_vec(b, full(b, L, l, "A_log"), 1, hv, 0.0f, &g->A_log));
    DR_TRY(bind_vec(b, full(b, L, l, "dt_bias"), 1, hv, 0.0f, &g->dt_bias));
    DR_TRY(bind_vec(b, full(b, L, l, "norm.weight"), 1, dv, 0.0f, &g->norm)); /* plain gain */
    DR_TRY(bind_mat(b, full(b, L, l, "out_proj.weight"), H, vd, &g->out_proj));
    return DR_OK;
}

static dr_status bind_attn(binder *b, int l, dr_attn_weights *a) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t H = hp->d_model, hd = hp->d_head, q = hp->n_heads * hd, kv = hp->n_kv_heads * hd;
    const char *L = "layers.%d.self_attn.";
    DR_TRY(bind_mat(b, full(b, L, l, "q_proj.weight"), 2 * q, H, &a->q_proj));
    DR_TRY(bind_mat(b, full(b, L, l, "k_proj.weight"), kv, H, &a->k_proj));
    DR_TRY(bind_mat(b, full(b, L, l, "v_proj.weight"), kv, H, &a->v_proj));
    DR_TRY(bind_mat(b, full(b, L, l, "o_proj.weight"), H, q, &a->o_proj));
    DR_TRY(bind_norm(b, full(b, L, l, "q_norm.weight"), hd, &a->q_norm));
    DR_TRY(bind_norm(b, full(b, L, l, "k_norm.weight"), hd, &a->k_norm));
    return DR_OK;
}

static dr_status bind_dense(binder *b, const char *L, int l, int64_t I, dr_tensor *gate, dr_tensor *up,
                            dr_tensor *down) {
    const int64_t H = b->m->hp.d_model;
    DR_TRY(bind_mat(b, full(b, L, l, "gate_proj.weight"), I, H, gate));
    DR_TRY(bind_mat(b, full(b, L, l, "up_proj.weight"), I, H, up));
    DR_TRY(bind_mat(b, full(b, L, l, "down_proj.weight"), H, I, down));
    return DR_OK;
}

/* A 2-D view of matrix `e` of a stacked [E, rows, cols] tensor, rows r0.. */
static void stacked_view(const dr_st_tensor *t, int64_t e, int64_t r0, int64_t rows, dr_tensor *out) {
    to_tensor(t, out);
    out->ndim = 2;
    out->ne[0] = rows;
    out->ne[1] = t->shape[2];
    size_t esz = dr_dtype_size(t->dtype);
    out->data = (const char *)t->data + ((size_t)e * (size_t)t->shape[1] + (size_t)r0) * (size_t)t->shape[2] * esz;
}

static dr_status bind_experts(binder *b, int l, dr_ffn_weights *f) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t E = hp->n_experts, H = hp->d_model, I = hp->d_ff_expert;
    f->experts = calloc((size_t)E, sizeof *f->experts);
    if (!f->experts)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory binding experts");
    const char *fused = full(b, "layers.%d.mlp.experts.", l, "gate_up_proj");
    if (dr_st_find(&b->m->st, fused)) { /* released Qwen3.5-MoE layout, gate rows first */
        const dr_st_tensor *gu, *dn;
        int64_t w1[3] = {E, 2 * I, H}, w2[3] = {E, H, I};
        DR_TRY(find_checked(b, fused, 3, w1, &gu));
        DR_TRY(find_checked(b, full(b, "layers.%d.mlp.experts.", l, "down_proj"), 3, w2, &dn));
        for (int64_t e = 0; e < E; e++) {
            stacked_view(gu, e, 0, I, &f->experts[e].gate);
            stacked_view(gu, e, I, I, &f->experts[e].up);
            stacked_view(dn, e, 0, H, &f->experts[e].down);
        }
        return DR_OK;
    }
    for (int64_t e = 0; e < E; e++) { /* per-expert tensors */
        char L[96];
        snprintf(L, sizeof L, "layers.%%d.mlp.experts.%lld.", (long long)e);
        DR_TRY(bind_dense(b, L, l, I, &f->experts[e].gate, &f->experts[e].up, &f->experts[e].down));
    }
    return DR_OK;
}

static dr_status bind_ffn(binder *b, int l, dr_ffn_weights *f) {
    const dr_hparams *hp = &b->m->hp;
    if (!hp->is_moe[l])
        return bind_dense(b, "layers.%d.mlp.", l, hp->d_ff, &f->gate, &f->up, &f->down);
    DR_TRY(bind_mat(b, full(b, "layers.%d.mlp.", l, "gate.weight"), hp->n_experts, hp->d_model, &f->router));
    DR_TRY(bind_experts(b, l, f));
    f->has_shared = hp->d_ff_shared > 0;
    if (!f->has_shared)
        return DR_OK;
    DR_TRY(bind_dense(b, "layers.%d.mlp.shared_expert.", l, hp->d_ff_shared, &f->sh_gate, &f->sh_up,
                      &f->sh_down));
    return bind_mat(b, full(b, "layers.%d.mlp.", l, "shared_expert_gate.weight"), 1, hp->d_model, &f->sh_gate_w);
}

static dr_status bind_layer(binder *b, int l, dr_layer_weights *lw) {
    const int64_t H = b->m->hp.d_model;
    DR_TRY(bind_norm(b, full(b, "layers.%d.", l, "input_layernorm.weight"), H, &lw->ln1));
    DR_TRY(bind_norm(b, full(b, "layers.%d.", l, "post_attention_layernorm.weight"), H, &lw->ln2));
    if (b->m->hp.is_attn[l])
        DR_TRY(bind_attn(b, l, &lw->attn));
    else
        DR_TRY(bind_gdn(b, l, &lw->gdn));
    return bind_ffn(b, l, &lw->ffn);
}

dr_status dr_weights_bind(dr_model *m, const char *dir) {
    binder b = {.m = m, .dir = dir};
    const dr_hparams *hp = &m->hp;
    if (dr_st_find(&m->st, "model.language_model.embed_tokens.weight"))
        b.prefix = "model.language_model.";
    else if (dr_st_find(&m->st, "model.embed_tokens.weight"))
        b.prefix = "model.";
    else
        return DR_FAIL(DR_ERR_FORMAT,
                       "%s: missing tensor model.language_model.embed_tokens.weight (or model.embed_tokens.weight)",
                       dir);
    snprintf(b.name, sizeof b.name, "%sembed_tokens.weight", b.prefix);
    DR_TRY(bind_mat(&b, b.name, hp->n_vocab, hp->d_model, &m->w.embed));
    if (hp->tied) {
        m->w.lm_head = m->w.embed;
    } else {
        DR_TRY(bind_mat(&b, "lm_head.weight", hp->n_vocab, hp->d_model, &m->w.lm_head));
    }
    snprintf(b.name, sizeof b.name, "%snorm.weight", b.prefix);
    DR_TRY(bind_norm(&b, b.name, hp->d_model, &m->w.final_norm));
    m->w.layers = calloc((size_t)hp->n_layers, sizeof *m->w.layers);
    if (!m->w.layers)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    for (int l = 0; l < hp->n_layers; l++)
        DR_TRY(bind_layer(&b, l, &m->w.layers[l]));
    return DR_OK;
}

static void weights_release_backend(dr_model *m);

void dr_weights_free(dr_model *m) {
    weights_release_backend(m);
    for (int i = 0; i < m->n_owned; i++)
        m->ops->free(m->ops->ctx, m->owned[i]);
    free(m->owned);
    for (int i = 0; i < m->n_host_owned; i++)
        free(m->host_owned[i]);
    free(m->host_owned);
    if (m->w.layers)
        for (int l = 0; l < m->hp.n_layers; l++)
            free(m->w.layers[l].ffn.experts);
    free(m->w.layers);
    m->owned = NULL;
    m->host_owned = NULL;
    m->w.layers = NULL;
    m->n_owned = m->n_host_owned = 0;
}

/* ---- backend copies ---- */

typedef dr_status (*tensor_fn)(dr_model *m, dr_tensor *t);

/* Call fn on every matrix of the table (a tied lm_head once). */
static dr_status each_matrix(dr_model *m, tensor_fn fn) {
    DR_TRY(fn(m, &m->w.embed));
    if (!m->hp.tied)
        DR_TRY(fn(m, &m->w.lm_head));
    for (int l = 0; m->w.layers && l < m->hp.n_layers; l++) {
        dr_layer_weights *lw = &m->w.layers[l];
        dr_tensor *mats[] = {&lw->gdn.in_proj_qkv, &lw->gdn.in_proj_z, &lw->gdn.in_proj_b, &lw->gdn.in_proj_a,
                             &lw->gdn.out_proj,    &lw->attn.q_proj,   &lw->attn.k_proj,   &lw->attn.v_proj,
                             &lw->attn.o_proj,     &lw->ffn.gate,      &lw->ffn.up,        &lw->ffn.down,
                             &lw->ffn.router,      &lw->ffn.sh_gate,   &lw->ffn.sh_up,     &lw->ffn.sh_down,
                             &lw->ffn.sh_gate_w};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            if (mats[i]->data)
                DR_TRY(fn(m, mats[i]));
        for (int e = 0; lw->ffn.experts && e < m->hp.n_experts; e++) {
            DR_TRY(fn(m, &lw->ffn.experts[e].gate));
            DR_TRY(fn(m, &lw->ffn.experts[e].up));
            DR_TRY(fn(m, &lw->ffn.experts[e].down));
        }
    }
    if (m->hp.tied)
        m->w.lm_head = m->w.embed; /* keep the shared copy's dev pointer */
    return DR_OK;
}

static dr_status upload_one(dr_model *m, dr_tensor *t) { return m->ops->weight_upload(m->ops->ctx, t); }

static dr_status free_one(dr_model *m, dr_tensor *t) {
    if (t->dev)
        m->ops->weight_free(m->ops->ctx, t);
    t->dev = NULL;
    return DR_OK;
}

dr_status dr_weights_upload(dr_model *m) {
    if (!m->ops->weight_upload)
        return DR_OK;
    return each_matrix(m, upload_one);
}

static void weights_release_backend(dr_model *m) {
    if (m->ops->weight_free)
        each_matrix(m, free_one);
}
