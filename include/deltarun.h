/* deltarun.h - public API of libdeltarun.
 *
 * libdeltarun runs the hybrid linear-attention LLMs (Qwen3.5, Qwen3.6,
 * Qwen3-Next) from a Hugging Face model directory. A dr_model holds the
 * weights (memory-mapped, in their file dtype); a dr_session is one sequence:
 * its position, a KV cache per full-attention layer and, per Gated DeltaNet
 * layer, a conv state plus an fp32 recurrent state. A model serves many
 * sessions.
 *
 * Errors: every fallible call returns a dr_status; the message of the last
 * failure in the calling thread is read with dr_last_error(). Nothing here
 * exits or aborts on bad input.
 */
#ifndef DELTARUN_H
#define DELTARUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ------------------------------------------------------------ */

typedef enum dr_status {
    DR_OK = 0,
    DR_ERR_IO,          /* a file could not be opened, read or mapped */
    DR_ERR_FORMAT,      /* a file is malformed (JSON, safetensors header, ...) */
    DR_ERR_SHAPE,       /* a tensor has the wrong shape */
    DR_ERR_UNSUPPORTED, /* valid input this build does not handle (dtype, arch) */
    DR_ERR_NOMEM,       /* an allocation failed */
    DR_ERR_ARG,         /* the caller passed an invalid argument */
    DR_ERR_RANGE,       /* a value is out of range (token id, context length) */
    DR_ERR_DEVICE,      /* the accelerator failed (driver, launch, device memory) */
} dr_status;

/* Short name of a status ("malformed input"). Can't fail. */
const char *dr_status_str(dr_status st);

/* Message of the last failure in this thread ("" if none). Valid until the
 * next failing call in the same thread. */
const char *dr_last_error(void);

/* ---- model ------------------------------------------------------------- */

typedef struct dr_model dr_model;

typedef enum dr_arch {
    DR_ARCH_QWEN3_5,     /* dense Qwen3.5 / Qwen3.6 */
    DR_ARCH_QWEN3_5_MOE, /* sparse Qwen3.5 / Qwen3.6 (e.g. 35B-A3B) */
    DR_ARCH_QWEN3_NEXT,  /* Qwen3-Next (fused projections, per-layer MoE rule) */
} dr_arch;

/* What dr_model_info() reports; all dimensions as in MODEL.md. */
typedef struct dr_model_info {
    dr_arch arch;
    const char *arch_name;   /* "qwen3_5", "qwen3_5_moe" or "qwen3_next" */
    int n_layers;            /* L */
    int n_gdn_layers;        /* Gated DeltaNet ("linear_attention") layers */
    int n_attn_layers;       /* gated full-attention layers */
    const char *layer_kinds; /* one char a layer: 'G' GDN, 'A' attention */
    int n_vocab;             /* V */
    int d_model;             /* H (hidden_size) */
    int n_heads, n_kv_heads, d_head; /* full attention: nH, nKV, hd */
    int d_rot;               /* rotary dims of each head (hd * partial_rotary_factor) */
    float rope_theta;
    int n_k_heads, n_v_heads, d_k, d_v; /* GDN: Hk, Hv, dk, dv */
    int d_conv;              /* GDN conv kernel K */
    int d_ff;                /* dense MLP width (0 if no dense layer) */
    int n_experts, n_experts_used, d_ff_expert, d_ff_shared; /* MoE (0 if dense) */
    int n_moe_layers;        /* layers whose FFN is the MoE block */
    bool tied_embeddings;    /* lm_head shares embed_tokens */
    uint64_t n_params;       /* parameters of the text model (no vision, no MTP) */
    const char *weight_dtype;/* dtype of embed_tokens ("BF16", "F32", ...) */
    int eos_ids[8];          /* end-of-sequence ids from generation_config.json */
    int n_eos;
} dr_model_info;

/* Where and how a model runs. */
typedef struct dr_model_params {
    const char *device; /* "cpu" (default), "cuda" or "cuda:N" */
    int n_threads;      /* CPU threads; 0 = one per core */
} dr_model_params;

/* Defaults: cpu, one thread per core. Can't fail. */
dr_model_params dr_model_default_params(void);

/* Open a Hugging Face model directory (config.json + *.safetensors).
 * On success *out owns the model; free it with dr_model_free.
 * On failure *out is NULL and dr_last_error() names the file, tensor or
 * field that was wrong. */
dr_status dr_model_load(const char *dir, dr_model **out);

/* dr_model_load with explicit device and threads. An unknown device, or
 * "cuda" in a build without the CUDA backend, is DR_ERR_UNSUPPORTED. */
dr_status dr_model_load_ex(const char *dir, const dr_model_params *params, dr_model **out);

/* Free a model. Accepts NULL. Sessions of the model must be freed first. */
void dr_model_free(dr_model *model);

/* Architecture summary; owned by the model. Can't fail. */
const dr_model_info *dr_model_info_get(const dr_model *model);

/* ---- session ----------------------------------------------------------- */

typedef struct dr_session dr_session;

/* Storage of the GDN recurrent state between evaluated blocks. */
typedef enum dr_state_dtype {
    DR_STATE_F32 = 0, /* the only production setting */
    DR_STATE_BF16,    /* diagnostic: rounds the state to bf16 after every block
                         or token, reproducing the bug this project exists to fix */
} dr_state_dtype;

typedef struct dr_session_params {
    int n_ctx;                  /* KV-cache capacity in tokens */
    int n_batch;                /* largest block evaluated at once; longer blocks
                                   are split (results do not depend on it) */
    dr_state_dtype state_dtype;
} dr_session_params;

/* Defaults: n_ctx 4096, n_batch 512, fp32 state. Can't fail. */
dr_session_params dr_session_default_params(void);

/* Create an empty session (position 0) for `model`, with every buffer the
 * forward pass needs allocated up front. */
dr_status dr_session_new(dr_model *model, const dr_session_params *params, dr_session **out);

/* Free a session. Accepts NULL. */
void dr_session_free(dr_session *s);

/* Back to position 0: caches zeroed. Can't fail. */
void dr_session_reset(dr_session *s);

/* Copy a session's whole state (caches and position) into a new session. */
dr_status dr_session_clone(const dr_session *s, dr_session **out);

/* Number of tokens evaluated so far. */
int dr_session_pos(const dr_session *s);

typedef enum dr_logits_mode {
    DR_LOGITS_NONE = 0, /* only advance the state */
    DR_LOGITS_LAST,     /* logits of the last position: [V] */
    DR_LOGITS_ALL,      /* logits of every position: [n, V] */
} dr_logits_mode;

/* Evaluate n token ids on top of the session's state (any n >= 1: a prompt,
 * a later turn, or one token). Writes logits per `mode` to `logits` (fp32).
 * Blocks of more than one token use the chunked GDN form, single tokens the
 * recurrence. On failure the session is unchanged only for argument errors
 * (bad id, context full), which are checked before any work. */
dr_status dr_session_eval(dr_session *s, const int32_t *ids, int n, dr_logits_mode mode,
                          float *logits);

/* dr_session_eval, then the greedy next token: the index of the largest of
 * the last position's logits over ids [0, n_cand) (n_cand <= 0: the whole
 * vocabulary; ties: the lowest id). The pick runs where the logits are, so
 * on a GPU 4 bytes come back instead of the logits. Same token as
 * dr_sampler_sample with default (greedy) parameters over those ids. */
dr_status dr_session_eval_greedy(dr_session *s, const int32_t *ids, int n, int n_cand, int32_t *next);

/* Copy out the state of GDN layer `layer` (0-based index over all layers):
 * recurrent [Hv, dk, dv] fp32 and conv [conv_dim, K] (last K pre-conv inputs,
 * oldest first), in the transformers layout. Either pointer may be NULL. */
dr_status dr_session_gdn_state(const dr_session *s, int layer, float *recurrent, float *conv);

/* ---- sampling ---------------------------------------------------------- */

typedef struct dr_sampler dr_sampler;

typedef struct dr_sampler_params {
    float temperature;    /* <= 0: greedy (argmax) */
    int top_k;            /* keep the k most likely (0: off) */
    float top_p;          /* nucleus: smallest set with mass >= p (1: off) */
    float min_p;          /* drop tokens below min_p * max prob (0: off) */
    float repeat_penalty; /* > 1 discourages recent tokens (1: off) */
    int repeat_last_n;    /* how many recent tokens the penalty sees */
    uint64_t seed;        /* same seed, same output */
} dr_sampler_params;

/* Greedy defaults (temperature 0, filters off, seed 0). Can't fail. */
dr_sampler_params dr_sampler_default_params(void);

dr_status dr_sampler_new(const dr_sampler_params *p, int n_vocab, dr_sampler **out);
void dr_sampler_free(dr_sampler *smp);

/* Pick the next token from logits [n_vocab] (modified in place by the
 * penalty and temperature). Can't fail. */
int32_t dr_sampler_sample(dr_sampler *smp, float *logits);

/* Tell the sampler a token was emitted (for the repetition penalty). */
void dr_sampler_accept(dr_sampler *smp, int32_t token);

#ifdef __cplusplus
}
#endif

#endif
