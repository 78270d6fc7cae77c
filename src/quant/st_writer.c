/* quant/st_writer.c - streamed safetensors writer (header first, then data
 * at precomputed offsets with pwrite). Layout rules in st_writer.h. */
#include "quant/st_writer.h"

#include "util/status.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *name;
    dr_dtype dtype;
    int ndim;
    int64_t shape[DR_ST_MAX_DIMS];
    size_t nbytes, offset, written;
} wtensor;

struct dr_st_writer {
    char *path;
    int fd;
    int n;
    wtensor *t;       /* caller's order */
    size_t data_base; /* file offset of the data buffer */
};

static int cmp_layout(const void *a, const void *b) {
    const wtensor *x = *(wtensor *const *)a, *y = *(wtensor *const *)b;
    size_t sx = dr_dtype_size(x->dtype), sy = dr_dtype_size(y->dtype);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(wtensor *const *)a)->name, (*(wtensor *const *)b)->name);
}

static void free_writer(dr_st_writer *w) {
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    for (int i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    free(w->path);
    free(w);
}

/* Offsets in layout order; returns the data buffer size. Fails on duplicates. */
static dr_status assign_offsets(dr_st_writer *w, size_t *total) {
    wtensor **order = malloc((size_t)(w->n ? w->n : 1) * sizeof *order);
    if (!order)
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", w->path);
    for (int i = 0; i < w->n; i++)
        order[i] = &w->t[i];
    dr_status st = DR_OK;
    qsort(order, (size_t)w->n, sizeof *order, cmp_name);
    for (int i = 1; i < w->n && st == DR_OK; i++)
        if (!strcmp(order[i]->name, order[i - 1]->name))
            st = DR_FAIL(DR_ERR_ARG, "%s: tensor %s listed twice", w->path, order[i]->name);
    qsort(order, (size_t)w->n, sizeof *order, cmp_layout);
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        order[i]->offset = off;
        off += order[i]->nbytes;
    }
    free(order);
    *total = off;
    return st;
}

static json_t *header_json(const dr_st_writer *w, const char *format) {
    json_t *h = json_object();
    if (format) {
        json_t *meta = json_object();
        json_object_set_new(meta, "format", json_string(format));
        json_object_set_new(h, "__metadata__", meta);
    }
    for (int i = 0; i < w->n; i++) {
        const wtensor *t = &w->t[i];
        json_t *o = json_object(), *shape = json_array(), *offs = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)t->offset));
        json_array_append_new(offs, json_integer((json_int_t)(t->offset + t->nbytes)));
        json_object_set_new(o, "dtype", json_string(dr_dtype_name(t->dtype)));
        json_object_set_new(o, "shape", shape);
        json_object_set_new(o, "data_offsets", offs);
        json_object_set_new(h, t->name, o);
    }
    return h;
}

static dr_status write_all(dr_st_writer *w, const void *p, size_t n, size_t off) {
    const char *c = p;
    while (n) {
        ssize_t k = pwrite(w->fd, c, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return DR_FAIL(DR_ERR_IO, "%s: write failed: %s", w->path, k < 0 ? strerror(errno) : "no progress");
        c += k;
        n -= (size_t)k;
        off += (size_t)k;
    }
    return DR_OK;
}

static dr_status write_header(dr_st_writer *w, const char *format) {
    json_t *h = header_json(w, format);
    char *txt = h ? json_dumps(h, JSON_PRESERVE_ORDER | JSON_COMPACT) : NULL;
    json_decref(h);
    if (!txt)
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory building the header", w->path);
    size_t len = strlen(txt), padded = (len + 8 + 7) / 8 * 8 - 8; /* data starts 8-aligned */
    char *buf = malloc(8 + padded);
    if (!buf) {
        free(txt);
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", w->path);
    }
    uint64_t n64 = padded;
    for (int i = 0; i < 8; i++)
        buf[i] = (char)((n64 >> (8 * i)) & 0xff); /* little-endian u64 */
    memcpy(buf + 8, txt, len);
    memset(buf + 8 + len, ' ', padded - len);
    free(txt);
    dr_status st = write_all(w, buf, 8 + padded, 0);
    free(buf);
    w->data_base = 8 + padded;
    return st;
}

dr_status dr_stw_create(const char *path, int n, const dr_stw_tensor *ts, const char *format, dr_st_writer **out) {
    *out = NULL;
    dr_st_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path)) || !(w->t = calloc((size_t)(n ? n : 1), sizeof *w->t))) {
        free_writer(w);
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", path);
    }
    w->fd = -1;
    for (int i = 0; i < n; i++, w->n++) {
        wtensor *t = &w->t[i];
        if (!(t->name = strdup(ts[i].name))) {
            free_writer(w);
            return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", path);
        }
        t->dtype = ts[i].dtype;
        t->ndim = ts[i].ndim;
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++)
            numel *= (size_t)(t->shape[d] = ts[i].shape[d]);
        t->nbytes = numel * dr_dtype_size(t->dtype);
        if (!dr_dtype_size(t->dtype) || t->ndim < 0 || t->ndim > DR_ST_MAX_DIMS) {
            dr_status st = DR_FAIL(DR_ERR_ARG, "%s: tensor %s: bad dtype or rank", path, t->name);
            free_writer(w);
            return st;
        }
    }
    size_t total = 0;
    dr_status st = assign_offsets(w, &total);
    if (st == DR_OK && (w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        st = DR_FAIL(DR_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (st == DR_OK)
        st = write_header(w, format);
    if (st == DR_OK && ftruncate(w->fd, (off_t)(w->data_base + total)) != 0)
        st = DR_FAIL(DR_ERR_IO, "%s: cannot size the file: %s", path, strerror(errno));
    if (st != DR_OK) {
        if (w->fd >= 0)
            unlink(path);
        free_writer(w);
        return st;
    }
    *out = w;
    return DR_OK;
}

size_t dr_stw_nbytes(const dr_st_writer *w, int i) { return i >= 0 && i < w->n ? w->t[i].nbytes : 0; }

dr_status dr_stw_write(dr_st_writer *w, int i, size_t off, const void *data, size_t n) {
    if (i < 0 || i >= w->n || off > w->t[i].nbytes || n > w->t[i].nbytes - off)
        return DR_FAIL(DR_ERR_ARG, "%s: write of %zu bytes at %zu outside tensor %s (%zu bytes)", w->path, n, off,
                       i >= 0 && i < w->n ? w->t[i].name : "?", i >= 0 && i < w->n ? w->t[i].nbytes : 0);
    DR_TRY(write_all(w, data, n, w->data_base + w->t[i].offset + off));
    w->t[i].written += n;
    return DR_OK;
}

dr_status dr_stw_finish(dr_st_writer *w) {
    dr_status st = DR_OK;
    for (int i = 0; i < w->n && st == DR_OK; i++)
        if (w->t[i].written != w->t[i].nbytes)
            st = DR_FAIL(DR_ERR_IO, "%s: tensor %s got %zu of its %zu bytes", w->path, w->t[i].name,
                         w->t[i].written, w->t[i].nbytes);
    if (st == DR_OK && close(w->fd) != 0)
        st = DR_FAIL(DR_ERR_IO, "%s: close failed: %s", w->path, strerror(errno));
    w->fd = -1;
    if (st != DR_OK)
        unlink(w->path);
    free_writer(w);
    return st;
}

void dr_stw_abort(dr_st_writer *w) {
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    unlink(w->path);
    free_writer(w);
}
