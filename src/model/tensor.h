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

typedef struct dr_tensor {
    const char *name; /* for messages; points into the safetensors index */
    dr_dtype dtype;   /* F32, F16 or BF16 for anything the ops read */
    int ndim;
    int64_t ne[4];    /* shape, outermost first */
    const void *data; /* host bytes */
    void *dev;        /* backend copy, or NULL */
} dr_tensor;

/* Row `r` of a 2-D (or stacked 3-D) tensor, as a 1-row view. */
static inline const void *dr_tensor_row(const dr_tensor *t, int64_t r) {
    return (const unsigned char *)t->data + (size_t)r * (size_t)t->ne[t->ndim - 1] * dr_dtype_size(t->dtype);
}

/* One routed expert's SwiGLU weights: views into fused [E, 2I, H] / [E, H, I]
 * tensors or the per-expert tensors, whichever the checkpoint has. */
typedef struct dr_expert {
    dr_tensor gate; /* [I, H] */
    dr_tensor up;   /* [I, H] */
    dr_tensor down; /* [H, I] */
} dr_expert;

#endif
