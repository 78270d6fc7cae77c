/* format/safetensors.h - reading (mmap, shards) and writing safetensors.
 *
 * A file is  u64 header length N | N bytes of JSON | data buffer.
 * Every header is validated before any tensor is handed out: length within
 * the file, valid JSON object, known shape/offset types, offsets inside the
 * data buffer, and byte count = dtype size x element count. Tensor data stays
 * in the read-only mapping (possibly unaligned: read with memcpy).
 */
#ifndef DR_FORMAT_SAFETENSORS_H
#define DR_FORMAT_SAFETENSORS_H

#include "deltarun.h"
#include "util/dtype.h"

#define DR_ST_MAX_DIMS 8

typedef struct dr_st_tensor {
    char *name;                     /* owned */
    dr_dtype dtype;                 /* DR_DT_UNKNOWN for dtypes we cannot size */
    char dtype_name[16];            /* as written in the header */
    int ndim;
    int64_t shape[DR_ST_MAX_DIMS];
    const void *data;               /* into the mapping */
    uint64_t nbytes;
    const char *file;               /* path of the file holding it */
} dr_st_tensor;

typedef struct dr_st_file {
    char *path;        /* owned */
    void *map;         /* whole file, read-only; NULL if parsed from memory */
    size_t size;
    int n_tensors;
    dr_st_tensor *tensors; /* owned, header order */
} dr_st_file;

/* Parse a safetensors image held in memory (`label` names it in errors).
 * The tensors point into `buf`, which must outlive `out`. */
dr_status dr_st_parse(const void *buf, size_t size, const char *label, dr_st_file *out);

/* Map and parse one file. */
dr_status dr_st_open(const char *path, dr_st_file *out);

/* Unmap and free. Accepts a zeroed struct. */
void dr_st_close(dr_st_file *f);

/* Tensor of the file by name, or NULL. */
const dr_st_tensor *dr_st_file_find(const dr_st_file *f, const char *name);

/* All tensors of a model directory: model.safetensors.index.json (shards,
 * cross-checked against each shard's header), else model.safetensors, else
 * every model*.safetensors file. Names must be unique across shards. */
typedef struct dr_st_set {
    int n_files;
    dr_st_file *files;
    int n_tensors;
    const dr_st_tensor **by_name; /* sorted by name */
} dr_st_set;

dr_status dr_st_open_dir(const char *dir, dr_st_set *out);
void dr_st_close_set(dr_st_set *s);
const dr_st_tensor *dr_st_find(const dr_st_set *s, const char *name);

/* Element count of a tensor (product of its shape). */
uint64_t dr_st_numel(const dr_st_tensor *t);

/* Write F32 tensors to a new safetensors file (8-byte aligned header).
 * names[i] has shape shapes[i][0..ndims[i]) and data datas[i]. */
dr_status dr_st_write_f32(const char *path, int n, const char *const *names, const int *ndims,
                          const int64_t (*shapes)[DR_ST_MAX_DIMS], const float *const *datas);

#endif
