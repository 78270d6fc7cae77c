/* quant/mlx_names.h - Hugging Face tensor names -> the names and transforms
 * mlx-lm's converter gives Qwen3.5 / Qwen3-Next weights (FORMATS.md 2.3).
 */
#ifndef DR_QUANT_MLX_NAMES_H
#define DR_QUANT_MLX_NAMES_H

#include <stdbool.h>
#include <stddef.h>

typedef enum dr_mlx_kind {
    DR_MLX_SKIP,          /* not written: vision tower, MTP head, tied lm_head */
    DR_MLX_PLAIN,         /* same bytes and shape under the new name */
    DR_MLX_NORM,          /* zero-centred RMSNorm: written as 1 + w */
    DR_MLX_CONV,          /* conv1d [C, 1, K] -> [C, K, 1] (same bytes) */
    DR_MLX_EXPERT,        /* experts.E.X_proj.weight: slice E of switch_mlp.X_proj.weight */
    DR_MLX_GATE_UP,       /* experts.gate_up_proj [E, 2I, H]: split into switch_mlp.gate_proj / up_proj */
} dr_mlx_kind;

typedef struct dr_mlx_name {
    dr_mlx_kind kind;
    char out[512];   /* output tensor name (for DR_MLX_GATE_UP: the gate half's) */
    char out2[512];  /* DR_MLX_GATE_UP: the up half's name */
    int expert;      /* DR_MLX_EXPERT: E */
} dr_mlx_name;

/* Map HF tensor `hf`. `next` selects Qwen3-Next naming (model.*, lm_head.*)
 * instead of the Qwen3.5 wrapper's (language_model.model.*,
 * language_model.lm_head.*); `tied` drops lm_head.weight. Can't fail: an
 * unknown top-level name is DR_MLX_SKIP. */
void dr_mlx_map_name(const char *hf, bool next, bool tied, dr_mlx_name *out);

/* Is the output tensor `name` the weight of a linear layer / embedding that
 * MLX quantizes (every nn.Linear, the embedding, the lm_head)? */
bool dr_mlx_is_linear(const char *name);

/* Router and shared-expert gate: mlx-lm keeps them at 8 bits. */
bool dr_mlx_is_gate(const char *name);

bool dr_mlx_is_embed(const char *name);
bool dr_mlx_is_lm_head(const char *name);

#endif
