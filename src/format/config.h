/* format/config.h - hyper-parameters from config.json (+ generation_config.json).
 *
 * Handles the flat text-only configs (Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM,
 * Qwen3NextForCausalLM) and the multimodal wrapper whose text fields live under
 * "text_config" (the wrapper's tie_word_embeddings decides tying). Missing
 * fields take the transformers class defaults (MODEL.md 1.2).
 */
#ifndef DR_FORMAT_CONFIG_H
#define DR_FORMAT_CONFIG_H

#include "deltarun.h"

#include <stdbool.h>

#define DR_MAX_LAYERS 512
#define DR_MAX_EOS 8

typedef struct dr_hparams {
    dr_arch arch;
    char model_type[32];     /* as in config.json ("qwen3_5_text", ...) */
    int n_layers;            /* L */
    bool is_attn[DR_MAX_LAYERS]; /* full attention (else Gated DeltaNet) */
    bool is_moe[DR_MAX_LAYERS];  /* FFN is the MoE block (else dense MLP) */
    int n_vocab;             /* V */
    int d_model;             /* H */
    float eps;               /* rms_norm_eps, every RMSNorm */
    /* gated full attention */
    int n_heads, n_kv_heads, d_head; /* nH, nKV, hd */
    int d_rot;               /* rotary dims: hd * partial_rotary_factor */
    float rope_theta;
    /* Gated DeltaNet */
    int n_k_heads, n_v_heads; /* Hk, Hv */
    int d_k, d_v;            /* dk, dv */
    int d_conv;              /* K */
    /* FFN */
    int d_ff;                /* dense intermediate_size */
    int n_experts, n_experts_used, d_ff_expert, d_ff_shared;
    bool norm_topk;          /* renormalise the top-k routing weights */
    bool tied;               /* lm_head = embed_tokens */
    int eos[DR_MAX_EOS];
    int n_eos;
} dr_hparams;

/* Parse DIR/config.json (and DIR/generation_config.json when present). */
dr_status dr_hparams_load(const char *dir, dr_hparams *hp);

/* Parse config.json text already in memory (`label` names it in errors). */
dr_status dr_hparams_parse(const char *json_text, const char *label, dr_hparams *hp);

/* GDN conv channels: 2*Hk*dk + Hv*dv. */
static inline int dr_hp_conv_dim(const dr_hparams *hp) {
    return 2 * hp->n_k_heads * hp->d_k + hp->n_v_heads * hp->d_v;
}

#endif
