/* model/synthetic.c - dr_model_synthetic: a model of a config.json's shape
 * with random weights, generated in memory (threaded, deterministic per
 * seed), optionally quantized, for benchmarking real shapes without files.
 *
 * Ownership mirrors a loaded model so dr_model_free releases everything:
 * matrices are host buffers on m->host_owned, the small fp32 parameters are
 * backend buffers on m->owned, expert views in ffn.experts.
 */
#include "model/synthetic.h"

#include "quant/quant.h"
#include "util/cpu_features.h"
#include "util/status.h"
#include "util/threadpool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEN_CHUNK (1u << 20) /* elements per generation task */

/* A matrix waiting for random values. */
typedef struct {
    void *data;
    dr_dtype dt;
    size_t n;
    float amp; /* values uniform in [-amp, amp) */
} gen_item;

typedef struct {
    dr_model *m;
    const dr_synth_params *p;
    gen_item *items;
    int n_items, cap_items;
    uint64_t n_params;
    int next_stream;
} builder;

/* ===================== ownership ===================== */

static dr_status push(void ***list, int *n, int *cap, void *ptr) {
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        void **nl = realloc(*list, (size_t)nc * sizeof *nl);
        if (!nl)
            return DR_FAIL(DR_ERR_NOMEM, "out of memory building the synthetic model");
        *list = nl;
        *cap = nc;
    }
    (*list)[(*n)++] = ptr;
    return DR_OK;
}

static void *host_buf(dr_model *m, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p && push(&m->host_owned, &m->n_host_owned, &m->cap_host_owned, p) != DR_OK) {
        free(p);
        return NULL;
    }
    return p;
}

/* Replace host buffer `old` (freed) by `repl` on the owned list. */
static void host_replace(dr_model *m, const void *old, void *repl) {
    for (int i = 0; i < m->n_host_owned; i++)
        if (m->host_owned[i] == old) {
            free(m->host_owned[i]);
            m->host_owned[i] = repl;
            return;
        }
}

/* ===================== tensors ===================== */

static dr_status push_item(builder *b, gen_item it) {
    if (b->n_items == b->cap_items) {
        int nc = b->cap_items ? 2 * b->cap_items : 256;
        gen_item *ni = realloc(b->items, (size_t)nc * sizeof *ni);
        if (!ni)
            return DR_FAIL(DR_ERR_NOMEM, "out of memory building the synthetic model");
        b->items = ni;
        b->cap_items = nc;
    }
    b->items[b->n_items++] = it;
    return DR_OK;
}

/* Bits of matrix `name` in a quantized synthetic model: the router and the
 * shared expert's scalar gate at 8, as `deltarun quantize` (quant/convert.c)
 * and mlx-lm write them, so that a q4 bench runs the kernels a q4
 * checkpoint does; every other matrix at quant_bits. */
static int synth_bits(const builder *b, const char *name) {
    return name && (!strcmp(name, "router") || !strcmp(name, "shared_expert_gate")) ? 8 : b->p->quant_bits;
}

/* quant_random: the matrix made quantized directly. Random words give q
 * uniform in 0 .. 2^bits - 1; scale = 2 amp / (2^bits - 1), bias = -amp put
 * the values uniform in [-amp, amp] (variance 1 / fan_in, as mat()). */
static dr_status mat_qrandom(builder *b, dr_tensor *t, int64_t rows, int64_t cols, int gs) {
    const int bits = synth_bits(b, t->name);
    const size_t pk = (size_t)rows * (size_t)cols * (size_t)bits / 8, ng = (size_t)rows * (size_t)(cols / gs);
    unsigned char *blk = host_buf(b->m, pk + 4 * ng);
    if (!blk)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory for synthetic %s [%lld, %lld]", t->name, (long long)rows,
                       (long long)cols);
    const float amp = sqrtf(3.0f / (float)cols);
    uint16_t *sc = (uint16_t *)(blk + pk), *bi = sc + ng;
    const uint16_t s = dr_f32_to_bf16(2.0f * amp / (float)((1 << bits) - 1)), z = dr_f32_to_bf16(-amp);
    for (size_t i = 0; i < ng; i++)
        sc[i] = s, bi[i] = z;
    t->dtype = DR_DT_U32;
    t->data = blk;
    t->q = (dr_quant){.bits = bits, .group_size = gs, .sb_dtype = DR_DT_BF16, .scales = sc, .biases = bi};
    b->n_params += (uint64_t)rows * (uint64_t)cols;
    return push_item(b, (gen_item){blk, DR_DT_U32, pk / 4, 0.0f});
}

/* A random matrix [rows, cols] with variance 1 / fan_in. */
static dr_status mat(builder *b, dr_tensor *t, const char *name, int64_t rows, int64_t cols) {
    const dr_dtype dt = b->p->dtype ? b->p->dtype : DR_DT_BF16;
    const int gs = b->p->quant_group ? b->p->quant_group : 64;
    const size_t n = (size_t)rows * (size_t)cols;
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = dt;
    t->ndim = 2;
    t->ne[0] = rows;
    t->ne[1] = cols;
    /* as quantize_all: every matrix whose rows split into groups */
    if (b->p->quant_bits && b->p->quant_random && cols % gs == 0)
        return mat_qrandom(b, t, rows, cols, gs);
    void *data = host_buf(b->m, n * dr_dtype_size(dt));
    if (!data)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory for synthetic %s [%lld, %lld]", name, (long long)rows,
                       (long long)cols);
    t->data = data;
    b->n_params += n;
    return push_item(b, (gen_item){data, dt, n, sqrtf(3.0f / (float)cols)});
}

/* An fp32 parameter [n] in backend memory: value(i) for each element. */
static dr_status vec(builder *b, float **out, int64_t n, float (*value)(int64_t i, uint64_t *rng), uint64_t seed) {
    dr_model *m = b->m;
    float *host = malloc((size_t)n * sizeof *host);
    float *dev = m->ops->alloc(m->ops->ctx, (size_t)n * sizeof *dev);
    if (!host || !dev || push(&m->owned, &m->n_owned, &m->cap_owned, dev) != DR_OK) {
        free(host);
        if (dev && (m->n_owned == 0 || m->owned[m->n_owned - 1] != dev))
            m->ops->free(m->ops->ctx, dev);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory building the synthetic model");
    }
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++)
        host[i] = value(i, &rng);
    m->ops->upload(m->ops->ctx, dev, host, (size_t)n * sizeof *host);
    free(host);
    *out = dev;
    b->n_params += (uint64_t)n;
    return DR_OK;
}

/* ===================== random numbers ===================== */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* fp32 -> f16, round to nearest even (values here are small and finite). */
static uint16_t to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const float a = fabsf(f);
    if (a >= 65520.0f)
        return sign | 0x7c00u;
    if (a < 6.103515625e-05f) /* subnormal: multiples of 2^-24 */
        return sign | (uint16_t)lrintf(a * 16777216.0f);
    const uint32_t mant = u & 0x7fffffu, exp = ((u >> 23) & 0xffu) - 127u + 15u;
    uint32_t h = (exp << 10) | (mant >> 13), rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

static float unif(uint64_t *s) { return (float)(splitmix(s) >> 40) * (1.0f / 16777216.0f); } /* [0, 1) */

static float v_one(int64_t i, uint64_t *r) { (void)i, (void)r; return 1.0f; }
static float v_conv(int64_t i, uint64_t *r) { (void)i; return unif(r) - 0.5f; }
static float v_a_log(int64_t i, uint64_t *r) { (void)i; return logf(1.0f + 15.0f * unif(r)); } /* A in [1, 16) */
static float v_dt_bias(int64_t i, uint64_t *r) { /* softplus^-1 of dt in [1e-3, 1e-1), log-uniform */
    (void)i;
    float dt = expf(logf(1e-3f) + unif(r) * (logf(1e-1f) - logf(1e-3f)));
    return logf(expm1f(dt));
}

typedef struct {
    const gen_item *items;
    const size_t *first; /* [n_items + 1] first chunk of each item */
    int n_items;
    uint64_t seed;
} gen_job;

/* Chunk `task` of the concatenated items; its stream depends only on the
 * seed and the chunk index, so the values don't depend on the threads. */
static void gen_task(void *arg, int task, int thread) {
    const gen_job *g = arg;
    (void)thread;
    int it = 0;
    while (g->first[it + 1] <= (size_t)task)
        it++;
    const gen_item *x = &g->items[it];
    size_t i0 = ((size_t)task - g->first[it]) * GEN_CHUNK, n = x->n - i0 < GEN_CHUNK ? x->n - i0 : GEN_CHUNK;
    uint64_t s = g->seed ^ ((uint64_t)task * 0xD1B54A32D192ED03ull);
    if (x->dt == DR_DT_U32) { /* packed quantized values (quant_random) */
        for (size_t i = i0; i < i0 + n; i++)
            ((uint32_t *)x->data)[i] = (uint32_t)(splitmix(&s) >> 32);
        return;
    }
    for (size_t i = i0; i < i0 + n; i++) {
        float v = (2.0f * unif(&s) - 1.0f) * x->amp;
        if (x->dt == DR_DT_F32)
            ((float *)x->data)[i] = v;
        else if (x->dt == DR_DT_BF16)
            ((uint16_t *)x->data)[i] = dr_f32_to_bf16(v);
        else
            ((uint16_t *)x->data)[i] = to_f16(v);
    }
}

static dr_status generate(builder *b) {
    size_t *first = malloc(((size_t)b->n_items + 1) * sizeof *first);
    if (!first)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory building the synthetic model");
    first[0] = 0;
    for (int i = 0; i < b->n_items; i++)
        first[i + 1] = first[i] + (b->items[i].n + GEN_CHUNK - 1) / GEN_CHUNK;
    dr_pool *pool = NULL;
    dr_status st = dr_pool_new(b->p->n_threads > 0 ? b->p->n_threads : dr_cpu_n_cores(), &pool);
    if (st == DR_OK) {
        gen_job g = {b->items, first, b->n_items, b->p->seed * 0x2545F4914F6CDD1Dull + 7};
        dr_pool_run(pool, (int)first[b->n_items], gen_task, &g);
    }
    dr_pool_free(pool);
    free(first);
    return st;
}

/* ===================== the weight table ===================== */

static dr_status synth_gdn(builder *b, int l, dr_gdn_weights *g) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t H = hp->d_model, Hv = hp->n_v_heads, vd = Hv * hp->d_v, C = dr_hp_conv_dim(hp);
    const uint64_t s = b->p->seed + 1000u * (uint64_t)l;
    DR_TRY(mat(b, &g->in_proj_qkv, "in_proj_qkv", C, H));
    DR_TRY(mat(b, &g->in_proj_z, "in_proj_z", vd, H));
    DR_TRY(mat(b, &g->in_proj_b, "in_proj_b", Hv, H));
    DR_TRY(mat(b, &g->in_proj_a, "in_proj_a", Hv, H));
    DR_TRY(vec(b, &g->conv1d, C * hp->d_conv, v_conv, s + 1));
    DR_TRY(vec(b, &g->A_log, Hv, v_a_log, s + 2));
    DR_TRY(vec(b, &g->dt_bias, Hv, v_dt_bias, s + 3));
    DR_TRY(vec(b, &g->norm, hp->d_v, v_one, 0));
    return mat(b, &g->out_proj, "out_proj", H, vd);
}

static dr_status synth_attn(builder *b, dr_attn_weights *a) {
    const dr_hparams *hp = &b->m->hp;
    const int64_t H = hp->d_model, hd = hp->d_head, q = hp->n_heads * hd, kv = hp->n_kv_heads * hd;
    DR_TRY(mat(b, &a->q_proj, "q_proj", 2 * q, H));
    DR_TRY(mat(b, &a->k_proj, "k_proj", kv, H));
    DR_TRY(mat(b, &a->v_proj, "v_proj", kv, H));
    DR_TRY(mat(b, &a->o_proj, "o_proj", H, q));
    DR_TRY(vec(b, &a->q_norm, hd, v_one, 0));
    return vec(b, &a->k_norm, hd, v_one, 0);
}

static dr_status synth_mlp(builder *b, int64_t I, dr_tensor *gate, dr_tensor *up, dr_tensor *down) {
    const int64_t H = b->m->hp.d_model;
    DR_TRY(mat(b, gate, "gate_proj", I, H));
    DR_TRY(mat(b, up, "up_proj", I, H));
    return mat(b, down, "down_proj", H, I);
}

static dr_status synth_ffn(builder *b, int l, dr_ffn_weights *f) {
    const dr_hparams *hp = &b->m->hp;
    if (!hp->is_moe[l])
        return synth_mlp(b, hp->d_ff, &f->gate, &f->up, &f->down);
    DR_TRY(mat(b, &f->router, "router", hp->n_experts, hp->d_model));
    f->experts = calloc((size_t)hp->n_experts, sizeof *f->experts);
    if (!f->experts)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory building the synthetic model");
    for (int e = 0; e < hp->n_experts; e++)
        DR_TRY(synth_mlp(b, hp->d_ff_expert, &f->experts[e].gate, &f->experts[e].up, &f->experts[e].down));
    f->has_shared = hp->d_ff_shared > 0;
    if (!f->has_shared)
        return DR_OK;
    DR_TRY(synth_mlp(b, hp->d_ff_shared, &f->sh_gate, &f->sh_up, &f->sh_down));
    return mat(b, &f->sh_gate_w, "shared_expert_gate", 1, hp->d_model);
}

static dr_status synth_table(builder *b) {
    dr_model *m = b->m;
    const dr_hparams *hp = &m->hp;
    DR_TRY(mat(b, &m->w.embed, "embed_tokens", hp->n_vocab, hp->d_model));
    if (hp->tied)
        m->w.lm_head = m->w.embed;
    else
        DR_TRY(mat(b, &m->w.lm_head, "lm_head", hp->n_vocab, hp->d_model));
    DR_TRY(vec(b, &m->w.final_norm, hp->d_model, v_one, 0));
    m->w.layers = calloc((size_t)hp->n_layers, sizeof *m->w.layers);
    if (!m->w.layers)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory building the synthetic model");
    for (int l = 0; l < hp->n_layers; l++) {
        dr_layer_weights *lw = &m->w.layers[l];
        DR_TRY(vec(b, &lw->ln1, hp->d_model, v_one, 0));
        DR_TRY(vec(b, &lw->ln2, hp->d_model, v_one, 0));
        DR_TRY(hp->is_attn[l] ? synth_attn(b, &lw->attn) : synth_gdn(b, l, &lw->gdn));
        DR_TRY(synth_ffn(b, l, &lw->ffn));
    }
    return DR_OK;
}

/* ===================== quantization ===================== */

/* Quantize matrix t in place (its buffer is replaced by the packed block). */
static dr_status quant_one(builder *b, dr_tensor *t) {
    const int gs = b->p->quant_group ? b->p->quant_group : 64;
    if (!t->data || t->ne[1] % gs != 0)
        return DR_OK; /* a matrix whose rows don't split into groups stays unquantized */
    dr_quant_opts o = {.bits = synth_bits(b, t->name), .group_size = gs, .n_threads = b->p->n_threads};
    dr_tensor q;
    void *owned = NULL;
    DR_TRY(dr_quantize_ex(t, &o, &q, &owned));
    host_replace(b->m, t->data, owned);
    *t = q;
    return DR_OK;
}

static dr_status quantize_all(builder *b) {
    dr_model *m = b->m;
    const dr_hparams *hp = &m->hp;
    DR_TRY(quant_one(b, &m->w.embed));
    if (hp->tied)
        m->w.lm_head = m->w.embed;
    else
        DR_TRY(quant_one(b, &m->w.lm_head));
    for (int l = 0; l < hp->n_layers; l++) {
        dr_layer_weights *lw = &m->w.layers[l];
        dr_tensor *mats[] = {&lw->gdn.in_proj_qkv, &lw->gdn.in_proj_z, &lw->gdn.in_proj_b, &lw->gdn.in_proj_a,
                             &lw->gdn.out_proj,    &lw->attn.q_proj,   &lw->attn.k_proj,   &lw->attn.v_proj,
                             &lw->attn.o_proj,     &lw->ffn.gate,      &lw->ffn.up,        &lw->ffn.down,
                             &lw->ffn.router,      &lw->ffn.sh_gate,   &lw->ffn.sh_up,     &lw->ffn.sh_down,
                             &lw->ffn.sh_gate_w};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            DR_TRY(quant_one(b, mats[i]));
        for (int e = 0; lw->ffn.experts && e < hp->n_experts; e++) {
            DR_TRY(quant_one(b, &lw->ffn.experts[e].gate));
            DR_TRY(quant_one(b, &lw->ffn.experts[e].up));
            DR_TRY(quant_one(b, &lw->ffn.experts[e].down));
        }
    }
    return DR_OK;
}

/* ===================== entry ===================== */

static dr_status read_text(const char *path, char **out) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return DR_FAIL(DR_ERR_IO, "%s: cannot open", path);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            char *nb = cap > (64u << 20) ? NULL : realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return DR_FAIL(DR_ERR_FORMAT, "%s: too large for a config.json", path);
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r < 4096)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    return DR_OK;
}

static dr_status synth_build(builder *b, const char *config_path) {
    dr_model *m = b->m;
    const dr_synth_params *p = b->p;
    char *text = NULL;
    DR_TRY(read_text(config_path, &text));
    dr_status st = dr_hparams_parse(text, config_path, &m->hp);
    free(text);
    DR_TRY(st);
    if (p->n_layers < 0 || p->n_layers > m->hp.n_layers)
        return DR_FAIL(DR_ERR_ARG, "layers: %d, expected 1..%d for %s", p->n_layers, m->hp.n_layers, config_path);
    if (p->n_layers)
        m->hp.n_layers = p->n_layers; /* the first n layers keep their kinds */
    if (p->dtype && p->dtype != DR_DT_BF16 && p->dtype != DR_DT_F16 && p->dtype != DR_DT_F32)
        return DR_FAIL(DR_ERR_ARG, "synthetic weights: dtype %s, expected BF16, F16 or F32", dr_dtype_name(p->dtype));
    if (p->quant_bits && !dr_quant_bits_ok(p->quant_bits))
        return DR_FAIL(DR_ERR_ARG, "synthetic weights: %d-bit quantization, expected 4 or 8", p->quant_bits);
    DR_TRY(dr_model_open_backend(&p->mp, &m->ops));
    DR_TRY(synth_table(b));
    DR_TRY(generate(b));
    if (p->quant_bits && !p->quant_random)
        DR_TRY(quantize_all(b));
    return dr_weights_upload(m);
}

dr_status dr_model_synthetic(const char *config_path, const dr_synth_params *p, dr_model **out) {
    *out = NULL;
    dr_synth_params dp = {0};
    builder b = {.p = p ? p : &dp};
    b.m = calloc(1, sizeof *b.m);
    if (!b.m)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    dr_status st = synth_build(&b, config_path);
    free(b.items);
    if (st != DR_OK) {
        if (b.m->ops)
            dr_model_free(b.m);
        else
            free(b.m);
        return st;
    }
    dr_model_fill_info(b.m);
    b.m->info.n_params = b.n_params;
    *out = b.m;
    return DR_OK;
}
