/* model/weights.c - binds checkpoint tensors to the weight table.
 *
 * Every tensor the architecture needs must be present with the expected
 * shape and a dtype we compute with; errors name the tensor, the file, the
 * shape found and the shape expected. Handles both prefixes
 * (model.language_model. / model.), tied lm_head, fused or per-expert MoE
 * tensors, and de-interleaves Qwen3-Next's in_proj_qkvz / in_proj_ba once
 * (MODEL.md 5.1). Matrices stay mapped in their file dtype.
 *
 * MLX checkpoints (FORMATS.md 2) are bound too: names under
 * language_model.model.*, experts stacked under switch_mlp, norms with the
 * +1 already folded, conv weight [C, K, 1], and affine 4/8-bit matrices
 * (uint32 `.weight` + `.scales` + `.biases`, bits / group size from the
 * config's "quantization" block and its per-module overrides).
 */
#include "model/model.h"

#include "format/mlx.h"
#include "quant/quant.h"
#include "util/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    dr_model *m;
    const char *dir;
    const char *prefix; /* "model.language_model.", "language_model.model." (MLX) or "model." */
    bool mlx;           /* MLX layout: norms folded, conv [C, K, 1], switch_mlp experts */
    dr_mlx_qconfig qc;  /* config.json "quantization" (present = false for HF) */
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

/* ---- MLX affine-quantized matrices (FORMATS.md 2.1, 2.2) ---- */

/* `base` = name without its ".weight" suffix (the MLX module path). */
static const char *module_of(const char *name, char *buf, size_t n) {
    size_t len = strlen(name);
    if (len > 7 && !strcmp(name + len - 7, ".weight"))
        len -= 7;
    snprintf(buf, n, "%.*s", (int)len, name);
    return buf;
}

static bool lead_ok(const dr_st_tensor *t, int ndim, const int64_t *want) {
    if (t->ndim != ndim)
        return false;
    for (int i = 0; i < ndim - 1; i++)
        if (want[i] >= 0 && t->shape[i] != want[i])
            return false;
    return true;
}

/* scales or biases of `base`: present, float dtype, shape [lead.., groups]. */
static dr_status find_sb(binder *b, const char *base, const char *what, int ndim, const int64_t *want,
                         int64_t groups, const dr_st_tensor **out) {
    char nm[600], s1[128], s2[128];
    snprintf(nm, sizeof nm, "%s.%s", base, what);
    const dr_st_tensor *t = dr_st_find(&b->m->st, nm);
    if (!t)
        return DR_FAIL(DR_ERR_FORMAT, "%s: missing tensor %s (affine quantization needs weight, scales and biases)",
                       b->dir, nm);
    int64_t w[4];
    for (int i = 0; i < ndim; i++)
        w[i] = i < ndim - 1 ? want[i] : groups;
    if (!lead_ok(t, ndim, want) || t->shape[ndim - 1] != groups)
        return DR_FAIL(DR_ERR_SHAPE, "%s: %s: shape %s, expected %s", t->file, nm,
                       fmt_shape(s1, sizeof s1, t->ndim, t->shape), fmt_shape(s2, sizeof s2, ndim, w));
    if (t->dtype != DR_DT_F32 && t->dtype != DR_DT_BF16 && t->dtype != DR_DT_F16)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: dtype %s is not supported (expected F32, BF16 or F16)", t->file,
                       nm, t->dtype_name);
    *out = t;
    return DR_OK;
}

/* Quantized `name` (`base`.weight) of logical shape want[0..ndim) (last =
 * in): checks bits, group size, packed width and the scales / biases. */
static dr_status bind_quant(binder *b, const char *name, const char *base, int ndim, const int64_t *want,
                            dr_tensor *out) {
    const int64_t in = want[ndim - 1];
    int bits, gs;
    if (!b->qc.present)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s.scales is present but config.json has no \"quantization\" block",
                       b->dir, base);
    dr_mlx_qparams(&b->qc, base, &bits, &gs);
    if (bits == 0) /* an override of false */
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s.scales is present but config.json's quantization marks %s as not "
                       "quantized (false)", b->dir, base, base);
    if (!dr_quant_bits_ok(bits))
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: %d-bit quantization is not supported (expected 4 or 8)", b->dir,
                       name, bits);
    if (!dr_quant_group_ok(gs) || in % gs != 0)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: group size %d does not divide the row length %lld (expected "
                       "32, 64 or 128 dividing it)", b->dir, name, gs, (long long)in);
    const dr_st_tensor *t = dr_st_find(&b->m->st, name), *sc, *bi;
    char s1[128], s2[128];
    int64_t w[4];
    for (int i = 0; i < ndim; i++)
        w[i] = i < ndim - 1 ? want[i] : in * bits / 32;
    if (!t)
        return DR_FAIL(DR_ERR_FORMAT, "%s: missing tensor %s", b->dir, name);
    if (t->dtype != DR_DT_U32)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s: dtype %s, expected U32 (packed %d-bit values)", t->file, name,
                       t->dtype_name, bits);
    if (!lead_ok(t, ndim, want) || t->shape[ndim - 1] != w[ndim - 1])
        return DR_FAIL(DR_ERR_SHAPE, "%s: %s: packed shape %s, expected %s (%lld inputs x %d bits / 32)", t->file,
                       name, fmt_shape(s1, sizeof s1, t->ndim, t->shape), fmt_shape(s2, sizeof s2, ndim, w),
                       (long long)in, bits);
    DR_TRY(find_sb(b, base, "scales", ndim, want, in / gs, &sc));
    DR_TRY(find_sb(b, base, "biases", ndim, want, in / gs, &bi));
    if (sc->dtype != bi->dtype)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s.scales is %s but %s.biases is %s", b->dir, base, sc->dtype_name,
                       base, bi->dtype_name);
    to_tensor(t, out);
    for (int i = 0; i < ndim; i++)
        out->ne[i] = i < ndim - 1 ? t->shape[i] : in;
    out->q = (dr_quant){.bits = bits, .group_size = gs, .sb_dtype = sc->dtype, .scales = sc->data,
                        .biases = bi->data};
    return DR_OK;
}

/* A matrix (2-D [rows, cols] or stacked 3-D) in its file dtype, or MLX
 * affine-quantized when `<module>.scales` exists. want[i] < 0 = any. */
static dr_status bind_weight(binder *b, const char *name, int ndim, const int64_t *want, dr_tensor *out) {
    char base[512], sn[600];
    module_of(name, base, sizeof base);
    snprintf(sn, sizeof sn, "%s.scales", base);
    if (dr_st_find(&b->m->st, sn))
        return bind_quant(b, name, base, ndim, want, out);
    const dr_st_tensor *t = dr_st_find(&b->m->st, name);
    if (t && t->dtype == DR_DT_U32)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s: packed U32 weight without its scales (missing tensor %s)", t->file,
                       name, sn);
    DR_TRY(find_checked(b, name, ndim, want, &t));
    to_tensor(t, out);
    return DR_OK;
}

/* A matrix [rows, cols] kept in its file dtype (or quantized, MLX). */
static dr_status bind_mat(binder *b, const char *name, int64_t rows, int64_t cols, dr_tensor *out) {
    int64_t want[2] = {rows, cols};
    return bind_weight(b, name, 2, want, out);
}

/* Bytes of one row of t: packed row when quantized. */
static size_t row_bytes(const dr_tensor *t) {
    const int64_t n = t->ne[t->ndim - 1];
    return t->q.bits ? dr_quant_row_bytes(n, t->q.bits) : (size_t)n * dr_dtype_size(t->dtype);
}

/* Rows [r0, r0 + rows) of t (all leading dims flattened) as a 2-D view,
 * plain or quantized. */
static void rows_view(const dr_tensor *t, int64_t r0, int64_t rows, dr_tensor *out) {
    *out = *t;
    out->ndim = 2;
    out->ne[0] = rows;
    out->ne[1] = t->ne[t->ndim - 1];
    out->ne[2] = out->ne[3] = 0;
    out->data = (const char *)t->data + (size_t)r0 * row_bytes(t);
    if (t->q.bits) {
        size_t sb = dr_quant_sb_row_bytes(out->ne[1], t->q.group_size, t->q.sb_dtype);
        out->q.scales = (const char *)t->q.scales + (size_t)r0 * sb;
        out->q.biases = (const char *)t->q.biases + (size_t)r0 * sb;
    }
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
    /* zero-centred: gain = 1 + w (MODEL.md 3.1); MLX files store 1 + w already */
    return bind_vec(b, name, 1, &n, b->mlx ? 0.0f : 1.0f, out);
}

/* ---- Qwen3-Next de-interleave (MODEL.md 5.1) ---- */

/* Copy n rows from src row `from` to dst row `to` (same dtype / quantization;
 * quantization is per row, so packed rows move with their scales/biases). */
static void copy_rows(dr_tensor *dst, int64_t to, const dr_tensor *src, int64_t from, int64_t n) {
    dr_tensor d, s;
    rows_view(dst, to, n, &d);
    rows_view(src, from, n, &s);
    memcpy((void *)d.data, s.data, (size_t)n * row_bytes(src));
    if (src->q.bits) {
        size_t sb = (size_t)n * dr_quant_sb_row_bytes(src->ne[1], src->q.group_size, src->q.sb_dtype);
        memcpy((void *)d.q.scales, s.q.scales, sb);
        memcpy((void *)d.q.biases, s.q.biases, sb);
    }
}

/* An owned [rows, cols] tensor shaped like src (buffers tracked by the model). */
static dr_status owned_mat(binder *b, const dr_tensor *src, int64_t rows, dr_tensor *out) {
    *out = *src;
    out->ne[0] = rows;
    size_t bytes = (size_t)rows * row_bytes(src), sb = 0;
    if (src->q.bits)
        sb = (size_t)rows * dr_quant_sb_row_bytes(src->ne[1], src->q.group_size, src->q.sb_dtype);
    char *buf = host_alloc(b->m, bytes + 2 * sb);
    if (!buf)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory de-interleaving %s", src->name);
    out->data = buf;
    if (src->q.bits) {
        out->q.scales = buf + bytes;
        out->q.biases = buf + bytes + sb;
    }
    return DR_OK;
}

/* in_proj_qkvz: Hk groups of [q (dk) | k (dk) | v (r·dv) | z (r·dv)] rows
 * -> in_proj_qkv [q all | k all | v all] and in_proj_z. */
static dr_status deinterleave_qkvz(binder *b, int l, dr_gdn_weights *g) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t Hk = hp->n_k_heads, dk = hp->d_k, dv = hp->d_v, r = hp->n_v_heads / hp->n_k_heads;
    const int64_t kd = Hk * dk, vd = hp->n_v_heads * dv, grp = 2 * dk + 2 * r * dv;
    dr_tensor t;
    DR_TRY(bind_mat(b, full(b, "layers.%d.", l, "linear_attn.in_proj_qkvz.weight"), 2 * kd + 2 * vd, hp->d_model,
                    &t));
    DR_TRY(owned_mat(b, &t, 2 * kd + vd, &g->in_proj_qkv));
    DR_TRY(owned_mat(b, &t, vd, &g->in_proj_z));
    for (int64_t h = 0; h < Hk; h++) {
        int64_t base = h * grp;
        copy_rows(&g->in_proj_qkv, h * dk, &t, base, dk);                        /* q_h */
        copy_rows(&g->in_proj_qkv, kd + h * dk, &t, base + dk, dk);              /* k_h */
        copy_rows(&g->in_proj_qkv, 2 * kd + h * r * dv, &t, base + 2 * dk, r * dv); /* v heads h·r .. */
        copy_rows(&g->in_proj_z, h * r * dv, &t, base + 2 * dk + r * dv, r * dv);   /* z heads h·r .. */
    }
    return DR_OK;
}

/* in_proj_ba: Hk groups of [b (r) | a (r)] rows -> in_proj_b, in_proj_a. */
static dr_status deinterleave_ba(binder *b, int l, dr_gdn_weights *g) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t Hk = hp->n_k_heads, Hv = hp->n_v_heads, r = Hv / Hk;
    dr_tensor t;
    DR_TRY(bind_mat(b, full(b, "layers.%d.", l, "linear_attn.in_proj_ba.weight"), 2 * Hv, hp->d_model, &t));
    DR_TRY(owned_mat(b, &t, Hv, &g->in_proj_b));
    DR_TRY(owned_mat(b, &t, Hv, &g->in_proj_a));
    for (int64_t h = 0; h < Hk; h++) {
        copy_rows(&g->in_proj_b, h * r, &t, h * 2 * r, r);
        copy_rows(&g->in_proj_a, h * r, &t, h * 2 * r + r, r);
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
    /* HF stores conv1d [C, 1, K], MLX [C, K, 1]: the same bytes */
    int64_t conv_shape[3] = {C, b->mlx ? hp->d_conv : 1, b->mlx ? 1 : hp->d_conv}, hv[1] = {Hv}, dv[1] = {hp->d_v};
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

/* MLX: switch_mlp.{gate,up,down}_proj.weight stacked [E, I, H] / [E, H, I],
 * each quantized (or not) on its own. */
static dr_status bind_switch_mlp(binder *b, int l, dr_ffn_weights *f) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t E = hp->n_experts, H = hp->d_model, I = hp->d_ff_expert;
    const char *L = "layers.%d.mlp.switch_mlp.";
    int64_t wi[3] = {E, I, H}, wd[3] = {E, H, I};
    dr_tensor gate, up, down;
    DR_TRY(bind_weight(b, full(b, L, l, "gate_proj.weight"), 3, wi, &gate));
    DR_TRY(bind_weight(b, full(b, L, l, "up_proj.weight"), 3, wi, &up));
    DR_TRY(bind_weight(b, full(b, L, l, "down_proj.weight"), 3, wd, &down));
    for (int64_t e = 0; e < E; e++) {
        rows_view(&gate, e * I, I, &f->experts[e].gate);
        rows_view(&up, e * I, I, &f->experts[e].up);
        rows_view(&down, e * H, H, &f->experts[e].down);
    }
    return DR_OK;
}

static dr_status bind_experts(binder *b, int l, dr_ffn_weights *f) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t E = hp->n_experts, H = hp->d_model, I = hp->d_ff_expert;
    f->experts = calloc((size_t)E, sizeof *f->experts);
    if (!f->experts)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory binding experts");
    if (dr_st_find(&b->m->st, full(b, "layers.%d.mlp.switch_mlp.", l, "gate_proj.weight")))
        return bind_switch_mlp(b, l, f);
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

/* MLX layout: the MLX wrapper prefix, a quantization block, or a conv1d
 * weight stored [C, K, 1] (mlx-lm's own test for "already converted",
 * FORMATS.md 2.3), checked on the first GDN layer. */
static bool detect_mlx(binder *b) {
    const dr_hparams *hp = &b->m->hp;
    if (!strcmp(b->prefix, "language_model.model.") || b->qc.present)
        return true;
    for (int l = 0; l < hp->n_layers; l++) {
        if (hp->is_attn[l])
            continue;
        const dr_st_tensor *c = dr_st_find(&b->m->st, full(b, "layers.%d.", l, "linear_attn.conv1d.weight"));
        return c && c->ndim == 3 && hp->d_conv > 1 && c->shape[1] == hp->d_conv && c->shape[2] == 1;
    }
    return false;
}

static dr_status bind_all(binder *b) {
    dr_model *m = b->m;
    const dr_hparams *hp = &m->hp;
    DR_TRY(dr_mlx_qconfig_load(b->dir, &b->qc));
    b->mlx = detect_mlx(b);
    snprintf(b->name, sizeof b->name, "%sembed_tokens.weight", b->prefix);
    DR_TRY(bind_mat(b, b->name, hp->n_vocab, hp->d_model, &m->w.embed));
    if (hp->tied) {
        m->w.lm_head = m->w.embed;
    } else {
        const char *head = strcmp(b->prefix, "language_model.model.") ? "lm_head.weight" : "language_model.lm_head.weight";
        DR_TRY(bind_mat(b, head, hp->n_vocab, hp->d_model, &m->w.lm_head));
    }
    snprintf(b->name, sizeof b->name, "%snorm.weight", b->prefix);
    DR_TRY(bind_norm(b, b->name, hp->d_model, &m->w.final_norm));
    m->w.layers = calloc((size_t)hp->n_layers, sizeof *m->w.layers);
    if (!m->w.layers)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    for (int l = 0; l < hp->n_layers; l++)
        DR_TRY(bind_layer(b, l, &m->w.layers[l]));
    return DR_OK;
}

dr_status dr_weights_bind(dr_model *m, const char *dir) {
    binder b = {.m = m, .dir = dir};
    if (dr_st_find(&m->st, "model.language_model.embed_tokens.weight"))
        b.prefix = "model.language_model.";
    else if (dr_st_find(&m->st, "language_model.model.embed_tokens.weight"))
        b.prefix = "language_model.model.";
    else if (dr_st_find(&m->st, "model.embed_tokens.weight"))
        b.prefix = "model.";
    else
        return DR_FAIL(DR_ERR_FORMAT,
                       "%s: missing tensor model.language_model.embed_tokens.weight (or model.embed_tokens.weight)",
                       dir);
    dr_status st = bind_all(&b);
    dr_mlx_qconfig_free(&b.qc);
    return st;
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

typedef dr_status (*tensor_fn)(dr_model *m, dr_tensor *t, void *arg);

/* Call fn on every matrix of the table (a tied lm_head once). */
static dr_status each_matrix(dr_model *m, tensor_fn fn, void *arg) {
    DR_TRY(fn(m, &m->w.embed, arg));
    if (!m->hp.tied)
        DR_TRY(fn(m, &m->w.lm_head, arg));
    for (int l = 0; m->w.layers && l < m->hp.n_layers; l++) {
        dr_layer_weights *lw = &m->w.layers[l];
        dr_tensor *mats[] = {&lw->gdn.in_proj_qkv, &lw->gdn.in_proj_z, &lw->gdn.in_proj_b, &lw->gdn.in_proj_a,
                             &lw->gdn.out_proj,    &lw->attn.q_proj,   &lw->attn.k_proj,   &lw->attn.v_proj,
                             &lw->attn.o_proj,     &lw->ffn.gate,      &lw->ffn.up,        &lw->ffn.down,
                             &lw->ffn.router,      &lw->ffn.sh_gate,   &lw->ffn.sh_up,     &lw->ffn.sh_down,
                             &lw->ffn.sh_gate_w};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            if (mats[i]->data)
                DR_TRY(fn(m, mats[i], arg));
        for (int e = 0; lw->ffn.experts && e < m->hp.n_experts; e++) {
            DR_TRY(fn(m, &lw->ffn.experts[e].gate, arg));
            DR_TRY(fn(m, &lw->ffn.experts[e].up, arg));
            DR_TRY(fn(m, &lw->ffn.experts[e].down, arg));
        }
    }
    if (m->hp.tied)
        m->w.lm_head = m->w.embed; /* keep the shared copy's dev pointer */
    return DR_OK;
}

/* Free the model's host buffer that starts at p, if it owns one: every such
 * buffer holds one matrix (with its scales and biases), so once the backend
 * has pointed that matrix at a copy of its own (the CPU backend's decode
 * layout on 2 MiB pages) nothing reads the buffer. */
static void release_host(dr_model *m, const void *p) {
    for (int i = 0; i < m->n_host_owned; i++)
        if (m->host_owned[i] == p) {
            free(m->host_owned[i]);
            m->host_owned[i] = m->host_owned[--m->n_host_owned];
            return;
        }
}

static dr_status upload_one(dr_model *m, dr_tensor *t, void *arg) {
    (void)arg;
    const void *old = t->data;
    DR_TRY(m->ops->weight_upload(m->ops->ctx, t));
    if (t->data != old)
        release_host(m, old);
    return DR_OK;
}

static dr_status free_one(dr_model *m, dr_tensor *t, void *arg) {
    (void)arg;
    if (t->dev)
        m->ops->weight_free(m->ops->ctx, t);
    t->dev = NULL;
    return DR_OK;
}

/* Bytes a matrix occupies in its storage format (packed words plus scales and
 * biases for quantized ones). */
static dr_status bytes_one(dr_model *m, dr_tensor *t, void *arg) {
    (void)m;
    const uint64_t rows = (uint64_t)dr_tensor_rows(t), in = (uint64_t)t->ne[t->ndim - 1];
    uint64_t n;
    if (t->q.bits)
        n = rows * (in * (uint64_t)t->q.bits / 8 + 2 * (in / (uint64_t)t->q.group_size) * dr_dtype_size(t->q.sb_dtype));
    else
        n = rows * in * dr_dtype_size(t->dtype);
    *(uint64_t *)arg += n;
    return DR_OK;
}

dr_status dr_weights_upload(dr_model *m) {
    if (!m->ops->weight_upload)
        return DR_OK;
    if (m->ops->mem_free_bytes) { /* refuse before the first byte is copied */
        uint64_t need = 0, have = m->ops->mem_free_bytes(m->ops->ctx);
        each_matrix(m, bytes_one, &need);
        if (need > have)
            return DR_FAIL(DR_ERR_NOMEM, "the weights need %.2f GiB of %s memory, %.2f GiB are free",
                           need / 1073741824.0, m->ops->name, have / 1073741824.0);
    }
    return each_matrix(m, upload_one, NULL);
}

static dr_status count_one(dr_model *m, dr_tensor *t, void *arg) {
    (void)m;
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (uint64_t)t->ne[i]; /* logical shape, also for packed quantized tensors */
    *(uint64_t *)arg += n;
    return DR_OK;
}

uint64_t dr_weights_n_params(dr_model *m) {
    const dr_hparams *hp = &m->hp;
    uint64_t n = 0;
    each_matrix(m, count_one, &n);
    n += (uint64_t)hp->d_model; /* final norm */
    for (int l = 0; l < hp->n_layers; l++) {
        n += 2 * (uint64_t)hp->d_model; /* the two layer norms */
        if (hp->is_attn[l])
            n += 2 * (uint64_t)hp->d_head; /* q_norm, k_norm */
        else /* conv1d, A_log, dt_bias, gated norm */
            n += (uint64_t)dr_hp_conv_dim(hp) * hp->d_conv + 2 * (uint64_t)hp->n_v_heads + (uint64_t)hp->d_v;
    }
    return n;
}

static void weights_release_backend(dr_model *m) {
    if (m->ops->weight_free)
        each_matrix(m, free_one, NULL);
}
