/* model/tensor.h - a weight tensor as the forward pass and the ops see it.
 *
 * Shapes follow PyTorch: a Linear weight is [out, in]. `data` points into the
 * safetensors mapping (file dtype, possibly unaligned) or into a buffer the
 * model owns (de-interleaved Qwen3-Next projections). `dev` is the backend's
 * copy when the backend keeps its own (CUDA); NULL on the CPU.
 */
#ifndef DR_MODEL_TENSOR_H
#define DR_MODEL_TENSOR_H

#include "util/dtype.h"

/* Affine group quantization in MLX's layout (FORMATS.md 2.1): each row of
 * `in` weights is split into groups of `group_size`; element i of a group is
 * w = scale * q + bias with q an unsigned `bits`-bit integer, packed
 * little-endian into uint32 words (32/bits values a word, first value in the
 * lowest bits). scales / biases are [out, in / group_size] in `sb_dtype`. */
typedef struct dr_quant {
    int bits;             /* 4 or 8; 0 = not quantized */
    int group_size;       /* 32, 64 or 128 */
    dr_dtype sb_dtype;    /* dtype of scales and biases (BF16, F16 or F32) */
    const void *scales;   /* [out, in / group_size] */
    const void *biases;   /* [out, in / group_size] */
    /* 0: file order. Else the CPU backend rearranged all tiled_rows rows of
       a 4-bit tensor, with their scales and biases, in place into its
       decode layout (ops/cpu/quant_kern.h). */
    int64_t tiled_rows;
} dr_quant;

typedef struct dr_tensor {
    const char *name; /* for messages; points into the safetensors index */
    dr_dtype dtype;   /* F32, F16 or BF16; DR_DT_U32 when q.bits != 0 (packed) */
    int ndim;
    int64_t ne[4];    /* logical shape, outermost first ([out, in] unpacked) */
    const void *data; /* host bytes */
    void *dev;        /* backend copy, or NULL */
    dr_quant q;       /* quantization, q.bits == 0 for plain tensors */
} dr_tensor;

/* Row `r` of a 2-D (or stacked 3-D) tensor, as a 1-row view. */
static inline const void *dr_tensor_row(const dr_tensor *t, int64_t r) {
    return (const unsigned char *)t->data + (size_t)r * (size_t)t->ne[t->ndim - 1] * dr_dtype_size(t->dtype);
}

/* Rows of a 2-D or stacked 3-D tensor (product of all but the last dim). */
static inline int64_t dr_tensor_rows(const dr_tensor *t) {
    int64_t r = 1;
    for (int i = 0; i < t->ndim - 1; i++)
        r *= t->ne[i];
    return r;
}

/* One routed expert's SwiGLU weights: views into fused [E, 2I, H] / [E, H, I]
 * tensors or the per-expert tensors, whichever the checkpoint has. */
typedef struct dr_expert {
    dr_tensor gate; /* [I, H] */
    dr_tensor up;   /* [I, H] */
    dr_tensor down; /* [H, I] */
} dr_expert;

#endif
