/* quant/quant.h - MLX affine group quantization (FORMATS.md 2.1): quantize,
 * dequantize and check tensors.
 *
 * A quantized matrix W [.., out, in] keeps its logical shape in dr_tensor.ne
 * and stores, per row, in / group_size groups: w = scale * q + bias with q an
 * unsigned `bits`-bit integer packed LSB-first into uint32 words (layout in
 * model/tensor.h, dr_quant). Stacked [E, out, in] tensors are E * out rows.
 *
 * Used by `deltarun quantize` (quant/convert.c), by `deltarun bench --quant`
 * on synthetic weights, and by the tests. Thread-safe; no global state.
 */
#ifndef DR_QUANT_QUANT_H
#define DR_QUANT_QUANT_H

#include "model/tensor.h"

#include "deltarun.h"

#include <stdbool.h>
#include <stddef.h>

/* Bits and group sizes this build computes with (kernels and writer). */
static inline bool dr_quant_bits_ok(int bits) { return bits == 4 || bits == 8; }
static inline bool dr_quant_group_ok(int gs) { return gs == 32 || gs == 64 || gs == 128; }

/* Bytes of one packed row (in * bits / 8) and of one row of scales or
 * biases (in / group_size elements of sb_dtype). */
size_t dr_quant_row_bytes(int64_t in, int bits);
size_t dr_quant_sb_row_bytes(int64_t in, int group_size, dr_dtype sb_dtype);

/* Options of dr_quantize_ex. Zero-initialised fields take the defaults. */
typedef struct dr_quant_opts {
    int bits;          /* 4 or 8 */
    int group_size;    /* 32, 64 or 128; must divide the row length */
    dr_dtype sb_dtype; /* scales/biases dtype: F32, BF16 or F16; DR_DT_UNKNOWN
                          (0) = the source dtype, as MLX does */
    int n_threads;     /* 0 = one per online CPU; 1 = the calling thread only */
} dr_quant_opts;

/* Quantize src (F32, BF16 or F16; 2-D [out, in] or 3-D [E, out, in];
 * contiguous, any byte alignment) into `out`.
 *
 * Per group, 8-bit: bias = the group's minimum (exact in the source dtype),
 * scale = (max - min) / 255 rounded UP to sb_dtype so that every q fits,
 * q = round((w - bias) / scale) computed with the stored (rounded) scale and
 * bias; the error of every element is at most scale / 2. 4-bit: that
 * min-max pair or, when its squared error is lower, one from a small search
 * (range shrunk to 0.95 .. 0.80, then least-squares refits of scale and
 * bias to the resulting q, each rounded to sb_dtype before q is computed);
 * extremes may then clip, by at most a tenth of the group's range plus a
 * step, and the relative RMS error drops by 8-9% on Gaussian-like rows.
 * Any (scale, bias) is valid MLX storage, so the format is unchanged.
 *
 * On success *out is a quantized view (dtype U32, ne = src's logical shape,
 * q filled, name = src->name) whose packed words, scales and biases live in
 * one malloc'd block returned in *owned; the caller frees it with free()
 * after the last use of *out. Rows are split over threads (pthreads).
 * Fails (DR_ERR_ARG / DR_ERR_SHAPE / DR_ERR_UNSUPPORTED / DR_ERR_NOMEM, with
 * a message naming the tensor) on bad bits, group size, dtype or shape; on
 * failure *owned is NULL and *out is untouched. */
dr_status dr_quantize_ex(const dr_tensor *src, const dr_quant_opts *opts, dr_tensor *out, void **owned);

/* dr_quantize_ex with the default options (source-dtype scales, all cores). */
dr_status dr_quantize(const dr_tensor *src, int bits, int group_size, dr_tensor *out, void **owned);

/* Row r of a quantized tensor, dequantized into dst [in] (scalar reference
 * order: dst[i] = scale * q + bias in fp32). Can't fail. */
void dr_dequantize_row(const dr_tensor *q, int64_t r, float *dst);

/* Quantization error of q against its source, and the zero-row check. */
typedef struct dr_quant_stats {
    double max_abs;       /* max |w - dequant(w)| */
    double rel_rms;       /* sqrt(sum err^2 / sum w^2); 0 for an all-zero source */
    int64_t n_rows;       /* rows compared */
    int64_t zero_rows;    /* rows non-zero in src that dequantize to all zeros */
    int64_t first_zero;   /* the first such row, -1 if none */
    int64_t nonfinite;    /* non-finite values after dequantization */
    double err2, ref2;    /* sum err^2 and sum w^2 (to combine several checks) */
} dr_quant_stats;

/* Compare q (from dr_quantize of src, same shape) with src, filling *stats.
 * Returns DR_ERR_FORMAT, naming the tensor, the first collapsed row and the
 * bits / group size, when any source row that is not all zero dequantizes to
 * all zeros (the packaging bug that wiped the K rows of in_proj_qkv in
 * another engine's 4-bit files), or when dequantization gives a non-finite
 * value; *stats is filled either way. `name` labels the tensor in messages
 * (NULL: src->name). */
dr_status dr_quant_check(const dr_tensor *src, const dr_tensor *q, const char *name, dr_quant_stats *stats);

/* Store v at element i of a buffer of dtype dt (F32, BF16 or F16), rounding
 * to nearest even. Can't fail. */
void dr_quant_store_f32(void *base, dr_dtype dt, size_t i, float v);

/* Validate the layout of an already-bound quantized tensor: bits, group
 * size, in % group_size, scales/biases present. Message names the tensor. */
dr_status dr_quant_validate(const dr_tensor *q);

#endif
