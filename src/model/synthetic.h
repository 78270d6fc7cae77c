/* model/synthetic.h - a model with random weights of a config.json's shape,
 * built in memory with no checkpoint, for `deltarun bench --synthetic`. */
#ifndef DR_MODEL_SYNTHETIC_H
#define DR_MODEL_SYNTHETIC_H

#include "model/model.h"

typedef struct dr_synth_params {
    dr_dtype dtype;      /* matrices: DR_DT_BF16 (default when 0), DR_DT_F16 or DR_DT_F32 */
    int quant_bits;      /* 0, or 8 / 4: matrices quantized (MLX affine) after generation */
    int quant_group;     /* group size for quant_bits (0 = 64) */
    int quant_random;    /* with quant_bits: write random packed values and one
                            (scale, bias) per matrix (bf16, values uniform in
                            +-sqrt(3 / fan_in)) directly instead of generating
                            and quantizing (seconds, not minutes, for 35B-sized
                            q4; same bytes and layout, for speed runs only) */
    int n_layers;        /* 0 = as the config; else the first n layers only */
    uint64_t seed;       /* same seed, same weights (any thread count) */
    int n_threads;       /* generation threads (0 = one per core) */
    dr_model_params mp;  /* backend: device and threads */
} dr_synth_params;

/* Parse config_path (a config.json, wrapper or flat) and build a model of
 * that shape: matrices random (uniform, variance 1/fan_in, so activations
 * stay near unit scale), norms 1, A_log / dt_bias / conv in the ranges the
 * released checkpoints use. Weights are owned by the model (host buffers) and
 * handed to the backend's weight_upload. On success *out is freed with
 * dr_model_free; on failure *out is NULL and the message says why (bad
 * config, n_layers out of range, out of memory, quantization error). */
dr_status dr_model_synthetic(const char *config_path, const dr_synth_params *p, dr_model **out);

#endif
