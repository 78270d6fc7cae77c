/* quant/mlx_names.c - the HF -> MLX name mapping of `deltarun quantize`.
 *
 * Mirrors what mlx-lm's sanitize does to Qwen3.5 / Qwen3.5-MoE / Qwen3-Next
 * weights (FORMATS.md 2.3): drop vision and MTP tensors, move the text model
 * under language_model.model (Qwen3.5 wrapper) or keep model.* (Qwen3-Next),
 * fold +1 into the zero-centred norms, reshape conv1d to [C, K, 1], and
 * stack experts under switch_mlp.
 */
#include "quant/mlx_names.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static bool starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

/* "layers.N.mlp.experts.<rest>": *layer_len = length of "layers.N.mlp." */
static const char *experts_part(const char *rest, size_t *layer_len) {
    const char *p = strstr(rest, ".mlp.experts.");
    if (!starts_with(rest, "layers.") || !p)
        return NULL;
    *layer_len = (size_t)(p - rest) + 5; /* keep ".mlp." */
    return p + strlen(".mlp.experts.");
}

static void map_rest(const char *rest, const char *pre, dr_mlx_name *o) {
    size_t ll;
    const char *ex = experts_part(rest, &ll);
    if (ex && !strcmp(ex, "gate_up_proj")) {
        o->kind = DR_MLX_GATE_UP;
        snprintf(o->out, sizeof o->out, "%s%.*sswitch_mlp.gate_proj.weight", pre, (int)ll, rest);
        snprintf(o->out2, sizeof o->out2, "%s%.*sswitch_mlp.up_proj.weight", pre, (int)ll, rest);
        return;
    }
    if (ex && !strcmp(ex, "down_proj")) {
        snprintf(o->out, sizeof o->out, "%s%.*sswitch_mlp.down_proj.weight", pre, (int)ll, rest);
        return;
    }
    if (ex) { /* experts.E.X_proj.weight */
        char *end;
        long e = strtol(ex, &end, 10);
        if (end != ex && *end == '.' && e >= 0) {
            o->kind = DR_MLX_EXPERT;
            o->expert = (int)e;
            snprintf(o->out, sizeof o->out, "%s%.*sswitch_mlp.%s", pre, (int)ll, rest, end + 1);
            return;
        }
    }
    snprintf(o->out, sizeof o->out, "%s%s", pre, rest);
    if (ends_with(rest, ".input_layernorm.weight") || ends_with(rest, ".post_attention_layernorm.weight") ||
        ends_with(rest, ".q_norm.weight") || ends_with(rest, ".k_norm.weight") || !strcmp(rest, "norm.weight"))
        o->kind = DR_MLX_NORM; /* linear_attn.norm (plain gain) is not shifted */
    else if (ends_with(rest, ".conv1d.weight"))
        o->kind = DR_MLX_CONV;
}

void dr_mlx_map_name(const char *hf, bool next, bool tied, dr_mlx_name *o) {
    memset(o, 0, sizeof *o);
    o->kind = DR_MLX_PLAIN;
    const char *pre = next ? "model." : "language_model.model.";
    if (!strcmp(hf, "lm_head.weight")) {
        o->kind = tied ? DR_MLX_SKIP : DR_MLX_PLAIN;
        snprintf(o->out, sizeof o->out, "%s", next ? "lm_head.weight" : "language_model.lm_head.weight");
        return;
    }
    const char *rest = NULL;
    if (starts_with(hf, "model.language_model."))
        rest = hf + strlen("model.language_model.");
    else if (starts_with(hf, "model."))
        rest = hf + strlen("model.");
    if (!rest || starts_with(rest, "visual.") || starts_with(rest, "vision_tower") || starts_with(rest, "mtp.")) {
        o->kind = DR_MLX_SKIP; /* mtp.*, model.visual.*, anything outside the text model */
        return;
    }
    map_rest(rest, pre, o);
}

bool dr_mlx_is_embed(const char *name) { return ends_with(name, "embed_tokens.weight"); }

bool dr_mlx_is_lm_head(const char *name) { return ends_with(name, "lm_head.weight"); }

bool dr_mlx_is_gate(const char *name) {
    return ends_with(name, ".mlp.gate.weight") || ends_with(name, ".shared_expert_gate.weight");
}

bool dr_mlx_is_linear(const char *name) {
    /* *_proj (attention, MLP, experts, out_proj) and in_proj_{qkv,z,a,b,qkvz,ba} */
    return ends_with(name, "_proj.weight") || (strstr(name, ".in_proj_") && ends_with(name, ".weight")) ||
           dr_mlx_is_gate(name) || dr_mlx_is_embed(name) ||
           dr_mlx_is_lm_head(name);
}
