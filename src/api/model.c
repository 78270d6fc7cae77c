/* api/model.c - dr_model_load / dr_model_free / dr_model_info_get.
 *
 * Loading = config.json -> hparams, safetensors (mapped) -> weight table with
 * shape checks, then the summary that `deltarun info` prints.
 */
#include "model/model.h"

#include "util/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *arch_name(dr_arch a) {
    switch (a) {
    case DR_ARCH_QWEN3_5:
        return "qwen3_5";
    case DR_ARCH_QWEN3_5_MOE:
        return "qwen3_5_moe";
    case DR_ARCH_QWEN3_NEXT:
        return "qwen3_next";
    }
    return "?";
}

void dr_model_fill_info(dr_model *m) {
    const dr_hparams *hp = &m->hp;
    dr_model_info *in = &m->info;
    memset(in, 0, sizeof *in);
    in->arch = hp->arch;
    in->arch_name = arch_name(hp->arch);
    in->n_layers = hp->n_layers;
    for (int l = 0; l < hp->n_layers; l++) {
        m->layer_kinds[l] = hp->is_attn[l] ? 'A' : 'G';
        in->n_attn_layers += hp->is_attn[l];
        in->n_moe_layers += hp->is_moe[l];
    }
    m->layer_kinds[hp->n_layers] = '\0';
    in->layer_kinds = m->layer_kinds;
    in->n_gdn_layers = hp->n_layers - in->n_attn_layers;
    in->n_vocab = hp->n_vocab;
    in->d_model = hp->d_model;
    in->n_heads = hp->n_heads;
    in->n_kv_heads = hp->n_kv_heads;
    in->d_head = hp->d_head;
    in->d_rot = hp->d_rot;
    in->rope_theta = hp->rope_theta;
    in->n_k_heads = hp->n_k_heads;
    in->n_v_heads = hp->n_v_heads;
    in->d_k = hp->d_k;
    in->d_v = hp->d_v;
    in->d_conv = hp->d_conv;
    in->d_ff = in->n_moe_layers < hp->n_layers ? hp->d_ff : 0;
    if (in->n_moe_layers) {
        in->n_experts = hp->n_experts;
        in->n_experts_used = hp->n_experts_used;
        in->d_ff_expert = hp->d_ff_expert;
        in->d_ff_shared = hp->d_ff_shared;
    }
    in->tied_embeddings = hp->tied;
    in->n_params = dr_weights_n_params(m);
    const dr_tensor *probe = m->w.layers ? &m->w.layers[0].ffn.down : &m->w.embed;
    if (!probe->data && m->w.layers && m->w.layers[0].ffn.experts)
        probe = &m->w.layers[0].ffn.experts[0].down;
    if (probe->q.bits) /* MLX affine: report bits and group of a typical matrix */
        snprintf(m->dtype_name, sizeof m->dtype_name, "Q%d (g%d)", probe->q.bits, probe->q.group_size);
    else
        snprintf(m->dtype_name, sizeof m->dtype_name, "%s", dr_dtype_name(probe->dtype));
    in->weight_dtype = m->dtype_name;
    in->n_eos = hp->n_eos;
    memcpy(in->eos_ids, hp->eos, sizeof hp->eos);
}

dr_model_params dr_model_default_params(void) {
    dr_model_params p = {.device = "cpu", .n_threads = 0};
    return p;
}

/* "cpu", "cuda", "cuda:N" -> a backend. */
dr_status dr_model_open_backend(const dr_model_params *p, dr_ops **out) {
    const char *dev = p->device ? p->device : "cpu";
    dr_backend_params bp = {.n_threads = p->n_threads, .device = 0};
    if (p->n_threads < 0)
        return DR_FAIL(DR_ERR_ARG, "threads: %d, expected >= 0 (0 = one per core)", p->n_threads);
    if (!strcmp(dev, "cpu"))
        return dr_ops_cpu_create(&bp, out);
    if (strncmp(dev, "cuda", 4) == 0 && (dev[4] == '\0' || dev[4] == ':')) {
        if (dev[4] == ':') {
            char *end;
            long idx = strtol(dev + 5, &end, 10);
            if (end == dev + 5 || *end || idx < 0 || idx > 255)
                return DR_FAIL(DR_ERR_ARG, "device \"%s\": expected cuda:N with N a GPU index", dev);
            bp.device = (int)idx;
        }
#ifdef DR_WITH_CUDA
        return dr_ops_cuda_create(&bp, out);
#else
        return DR_FAIL(DR_ERR_UNSUPPORTED, "device \"%s\": this build has no CUDA backend (configure with nvcc "
                                           "available, or -DDR_CUDA=ON)", dev);
#endif
    }
    return DR_FAIL(DR_ERR_ARG, "device \"%s\": expected cpu, cuda or cuda:N", dev);
}

dr_status dr_model_load(const char *dir, dr_model **out) {
    dr_model_params p = dr_model_default_params();
    return dr_model_load_ex(dir, &p, out);
}

dr_status dr_model_load_ex(const char *dir, const dr_model_params *params, dr_model **out) {
    *out = NULL;
    if (!dir)
        return DR_FAIL(DR_ERR_ARG, "dr_model_load: no directory given");
    dr_model_params p = params ? *params : dr_model_default_params();
    dr_model *m = calloc(1, sizeof *m);
    if (!m)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    dr_status st = dr_model_open_backend(&p, &m->ops);
    if (st != DR_OK) {
        free(m);
        return st;
    }
    st = dr_hparams_load(dir, &m->hp);
    if (st == DR_OK)
        st = dr_st_open_dir(dir, &m->st);
    if (st == DR_OK)
        st = dr_weights_bind(m, dir);
    if (st == DR_OK)
        st = dr_weights_upload(m);
    if (st != DR_OK) {
        dr_model_free(m);
        return st;
    }
    dr_model_fill_info(m);
    *out = m;
    return DR_OK;
}

void dr_model_free(dr_model *m) {
    if (!m)
        return;
    dr_weights_free(m);
    dr_st_close_set(&m->st);
    m->ops->destroy(m->ops);
    free(m);
}

const dr_model_info *dr_model_info_get(const dr_model *m) { return &m->info; }
