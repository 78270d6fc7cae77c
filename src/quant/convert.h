/* quant/convert.h - `deltarun quantize` as a library call: a bf16/f32 Hugging
 * Face model directory -> an MLX affine 4/8-bit directory (FORMATS.md 2).
 */
#ifndef DR_QUANT_CONVERT_H
#define DR_QUANT_CONVERT_H

#include "quant/quant.h"

#include <stdint.h>

/* One output tensor (or stacked set) as it is written. */
typedef struct dr_convert_report {
    const char *name;       /* output tensor name ("...q_proj.weight") */
    int bits, group_size;   /* 0 when written unquantized */
    const char *note;       /* why kept unquantized / transform applied, or "" */
    const char *dtype;      /* dtype written (scales' dtype when quantized) */
    int ndim;
    int64_t shape[4];       /* logical shape */
    dr_quant_stats stats;   /* valid when bits != 0 */
    int index, count;       /* 1-based position among all outputs */
} dr_convert_report;

typedef struct dr_convert_opts {
    const char *in_dir;     /* HF directory: config.json + *.safetensors (F32/BF16/F16) */
    const char *out_dir;    /* created; must not exist or be empty unless force */
    int bits;               /* 4 or 8: every linear layer */
    int group_size;         /* 32, 64 or 128 (0 = 64) */
    int embed_bits;         /* 4, 8, or 16 = keep unquantized; 0 = bits */
    int lm_head_bits;       /* 4, 8, or 16 = keep unquantized; 0 = bits (ignored when tied) */
    bool force;             /* replace a non-empty out_dir (regular files only) */
    int n_threads;          /* for dr_quantize_ex; 0 = all cores */
    uint64_t shard_bytes;   /* max bytes per safetensors file; 0 = 5 GB (mlx-lm's limit) */
    /* (optional) called after each output tensor is written */
    void (*on_tensor)(void *user, const dr_convert_report *r);
    /* (optional) called as source bytes are consumed */
    void (*on_progress)(void *user, uint64_t done, uint64_t total);
    void *user;
} dr_convert_opts;

typedef struct dr_convert_summary {
    int n_tensors;          /* output matrices/vectors (a quantized one counts once) */
    int n_quantized;
    int n_shards;
    uint64_t bytes_in, bytes_out;
    double worst_rel_rms;   /* over quantized tensors */
    char worst_name[256];
} dr_convert_summary;

/* Convert (see dr_convert_opts). Vision and MTP tensors are dropped; A_log,
 * dt_bias, conv1d and norms are written unquantized (norms with 1 + w
 * folded, conv1d as [C, K, 1]); the router (mlp.gate) and
 * shared_expert_gate at 8 bits; a matrix whose row length is not a multiple
 * of the group size stays unquantized (as mlx-lm does). config.json gets
 * "quantization" and "quantization_config" (with per-module overrides);
 * generation_config.json and tokenizer files are copied.
 *
 * Everything is written into a temporary sibling directory that is renamed
 * to out_dir only at the end: on any failure nothing is left behind. Fails
 * naming the tensor when a quantized row collapses to all zeros (see
 * dr_quant_check). `sum` may be NULL. */
dr_status dr_quant_convert(const dr_convert_opts *o, dr_convert_summary *sum);

#endif
