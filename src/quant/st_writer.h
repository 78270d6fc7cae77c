/* quant/st_writer.h - writing safetensors files of any dtype, streamed.
 *
 * The tensor list (names, dtypes, shapes) is fixed when the file is created:
 * the header is written first and every tensor gets its byte range, so data
 * can then be written piece by piece, in any order (pwrite), without holding
 * a whole model in memory. Tensors are laid out back to back, sorted by
 * decreasing element size then name, after a header padded with spaces to a
 * multiple of 8 bytes, so every tensor starts aligned to its element size.
 */
#ifndef DR_QUANT_ST_WRITER_H
#define DR_QUANT_ST_WRITER_H

#include "format/safetensors.h"

typedef struct dr_stw_tensor {
    const char *name;                /* copied */
    dr_dtype dtype;                  /* any sized dtype (F32, BF16, F16, U32, ...) */
    int ndim;                        /* 0 .. DR_ST_MAX_DIMS */
    int64_t shape[DR_ST_MAX_DIMS];
} dr_stw_tensor;

typedef struct dr_st_writer dr_st_writer;

/* Create `path` (truncating it) with the n tensors of ts, and write the
 * header; `format` (e.g. "mlx", may be NULL) goes into __metadata__.format.
 * Fails on duplicate names, unsized dtypes or I/O errors. */
dr_status dr_stw_create(const char *path, int n, const dr_stw_tensor *ts, const char *format, dr_st_writer **out);

/* Bytes of tensor i (index into the ts given to dr_stw_create). */
size_t dr_stw_nbytes(const dr_st_writer *w, int i);

/* Write n bytes of tensor i starting at byte `off` of that tensor. */
dr_status dr_stw_write(dr_st_writer *w, int i, size_t off, const void *data, size_t n);

/* Check that every tensor got all its bytes, flush and close. The writer is
 * freed whether or not it succeeds (on failure the file is removed). */
dr_status dr_stw_finish(dr_st_writer *w);

/* Close and remove the file. Accepts NULL. Can't fail. */
void dr_stw_abort(dr_st_writer *w);

#endif
