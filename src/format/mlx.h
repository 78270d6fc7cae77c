/* format/mlx.h - the "quantization" block of an MLX checkpoint's config.json
 * (FORMATS.md 2.2): default bits / group size and per-module overrides.
 */
#ifndef DR_FORMAT_MLX_H
#define DR_FORMAT_MLX_H

#include "deltarun.h"

#include <stdbool.h>

typedef struct dr_mlx_qoverride {
    char *path;      /* module path, e.g. "language_model.model.layers.0.mlp.gate" (owned) */
    bool quantized;  /* false for an override of `false` */
    int bits;        /* as written (validated where the tensor is bound) */
    int group_size;
} dr_mlx_qoverride;

typedef struct dr_mlx_qconfig {
    bool present;    /* config.json has "quantization" (or an MLX "quantization_config") */
    int bits;        /* default bits (MLX default 4 when absent) */
    int group_size;  /* default group size (MLX default 64 when absent) */
    int n_over;
    dr_mlx_qoverride *over; /* owned */
} dr_mlx_qconfig;

/* Read DIR/config.json's quantization block. A config without one gives
 * present = false (not an error). Fails on a malformed block, a mode other
 * than "affine", or a non-MLX quantization_config (AWQ, GPTQ, FP8, ...),
 * naming the file and the field. Free with dr_mlx_qconfig_free. */
dr_status dr_mlx_qconfig_load(const char *dir, dr_mlx_qconfig *qc);

/* Same from config.json text in memory (`label` names it in errors). */
dr_status dr_mlx_qconfig_parse(const char *json_text, const char *label, dr_mlx_qconfig *qc);

/* Release the overrides. Accepts a zeroed struct. Can't fail. */
void dr_mlx_qconfig_free(dr_mlx_qconfig *qc);

/* Bits and group size of module `path` (override if any, else defaults). */
void dr_mlx_qparams(const dr_mlx_qconfig *qc, const char *path, int *bits, int *group_size);

#endif
