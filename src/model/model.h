/* model/model.h - the model object: hyper-parameters, the weight table with
 * MODEL.md shapes, the backend, and the forward pass over a session.
 */
#ifndef DR_MODEL_MODEL_H
#define DR_MODEL_MODEL_H

#include "format/config.h"
#include "format/safetensors.h"
#include "ops/ops.h"

/* Gated DeltaNet layer (MODEL.md 5, 8). Small parameters are fp32 copies in
 * backend memory; matrices stay in their file dtype. */
typedef struct dr_gdn_weights {
    dr_tensor in_proj_qkv; /* [2·Hk·dk + Hv·dv, H]  rows q heads | k heads | v heads */
    dr_tensor in_proj_z;   /* [Hv·dv, H] */
    dr_tensor in_proj_b;   /* [Hv, H]  beta = sigmoid(b) */
    dr_tensor in_proj_a;   /* [Hv, H]  decay input */
    float *conv1d;         /* [C, K] fp32, depthwise, no bias */
    float *A_log;          /* [Hv] fp32 */
    float *dt_bias;        /* [Hv] fp32 */
    float *norm;           /* [dv] fp32, plain gain w (NOT 1 + w) */
    dr_tensor out_proj;    /* [H, Hv·dv] */
} dr_gdn_weights;

/* Gated full-attention layer (MODEL.md 4). */
typedef struct dr_attn_weights {
    dr_tensor q_proj; /* [2·nH·hd, H]  per head: hd query rows then hd gate rows */
    dr_tensor k_proj; /* [nKV·hd, H] */
    dr_tensor v_proj; /* [nKV·hd, H] */
    dr_tensor o_proj; /* [H, nH·hd] */
    float *q_norm;    /* [hd] fp32, 1 + w folded */
    float *k_norm;    /* [hd] fp32, 1 + w folded */
} dr_attn_weights;

/* FFN: dense SwiGLU MLP or the sparse MoE block (MODEL.md 6). */
typedef struct dr_ffn_weights {
    dr_tensor gate, up, down; /* dense: [I, H], [I, H], [H, I] */
    dr_tensor router;         /* MoE: [E, H] */
    dr_expert *experts;       /* MoE: E views, owned array */
    dr_tensor sh_gate, sh_up, sh_down; /* shared expert [Is, H], [Is, H], [H, Is] */
    dr_tensor sh_gate_w;      /* shared_expert_gate [1, H] */
    bool has_shared;
} dr_ffn_weights;

typedef struct dr_layer_weights {
    float *ln1; /* input_layernorm [H] fp32, 1 + w folded */
    float *ln2; /* post_attention_layernorm [H] fp32, 1 + w folded */
    dr_gdn_weights gdn;   /* when !hp.is_attn[l] */
    dr_attn_weights attn; /* when hp.is_attn[l] */
    dr_ffn_weights ffn;
} dr_layer_weights;

typedef struct dr_weights {
    dr_tensor embed;         /* [V, H] */
    dr_tensor lm_head;       /* [V, H]; = embed when tied */
    float *final_norm;       /* [H] fp32, 1 + w folded */
    dr_layer_weights *layers;/* [L] */
} dr_weights;

struct dr_model {
    dr_hparams hp;
    dr_model_info info;
    char layer_kinds[DR_MAX_LAYERS + 1];
    char dtype_name[16];
    dr_st_set st;       /* mapped safetensors */
    dr_ops *ops;        /* owned backend */
    dr_weights w;
    void **owned;       /* backend buffers the model allocated */
    int n_owned, cap_owned;
    void **host_owned;  /* host buffers (de-interleaved projections) */
    int n_host_owned, cap_host_owned;
};

/* Bind every tensor the architecture needs from m->st, checking presence,
 * shape and dtype; converts small parameters to fp32. */
dr_status dr_weights_bind(dr_model *m, const char *dir);

/* Hand every matrix of the table to ops->weight_upload (when the backend
 * has one). */
dr_status dr_weights_upload(dr_model *m);

/* Parameters of the bound text model (logical sizes, also for quantized
 * weights; vision tower and MTP head excluded). Can't fail. */
uint64_t dr_weights_n_params(dr_model *m);

/* Release what dr_weights_bind / dr_weights_upload allocated. Can't fail. */
void dr_weights_free(dr_model *m);

/* (api/model.c) The backend for p->device ("cpu", "cuda", "cuda:N") with
 * p->n_threads; errors as dr_model_load_ex. */
dr_status dr_model_open_backend(const dr_model_params *p, dr_ops **out);

/* (api/model.c) Fill m->info (and the strings it points to) from m->hp, the
 * weight table and the mapped tensors (n_params counts m->st). Can't fail. */
void dr_model_fill_info(dr_model *m);

#endif
