/* format/safetensors.c - safetensors reader (validated header, mmap, shards)
 * and a small F32 writer for `deltarun logits`.
 *
 * Parsing never trusts the file: every length and offset is checked against
 * the bytes that exist before anything points into the data.
 */
#include "format/safetensors.h"

#include "util/status.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000ull /* the reference reader's limit */

/* ===================== header parsing ===================== */

static dr_status parse_shape(json_t *js, const char *label, const char *name, dr_st_tensor *t) {
    if (!json_is_array(js))
        return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': \"shape\" must be an array", label, name);
    size_t nd = json_array_size(js);
    if (nd > DR_ST_MAX_DIMS)
        return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': %zu dimensions, at most %d supported", label,
                       name, nd, DR_ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                           label, name, i);
        t->shape[i] = json_integer_value(d);
    }
    return DR_OK;
}

/* Checked element count x element size; fails on overflow. */
static dr_status tensor_bytes(const dr_st_tensor *t, const char *label, uint64_t *out) {
    uint64_t n = dr_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d = (uint64_t)t->shape[i];
        if (d != 0 && n > UINT64_MAX / d)
            return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': shape overflows 64 bits", label, t->name);
        n *= d;
    }
    *out = n;
    return DR_OK;
}

static dr_status parse_entry(const char *label, const char *name, json_t *v, const unsigned char *data,
                             uint64_t data_size, dr_st_tensor *t) {
    if (!json_is_object(v))
        return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': entry is not an object", label, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': missing string \"dtype\"", label, name);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", json_string_value(jd));
    t->dtype = dr_dtype_from_name(json_string_value(jd));
    DR_TRY(parse_shape(json_object_get(v, "shape"), label, name, t));
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", label,
                       name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b || (uint64_t)e > data_size)
        return DR_FAIL(DR_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] outside the data buffer of %llu bytes",
                       label, name, (long long)b, (long long)e, (unsigned long long)data_size);
    t->data = data + b;
    t->nbytes = (uint64_t)(e - b);
    if (t->dtype != DR_DT_UNKNOWN) {
        uint64_t want = 0;
        DR_TRY(tensor_bytes(t, label, &want));
        if (want != t->nbytes)
            return DR_FAIL(DR_ERR_FORMAT, "%s: tensor '%s': %llu bytes, but dtype %s x shape needs %llu",
                           label, name, (unsigned long long)t->nbytes, t->dtype_name,
                           (unsigned long long)want);
    }
    return DR_OK;
}

dr_status dr_st_parse(const void *buf, size_t size, const char *label, dr_st_file *out) {
    memset(out, 0, sizeof *out);
    const unsigned char *p = buf;
    if (size < 8)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %zu bytes, too short for a safetensors header", label, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | p[i];
    if (n < 2 || n > ST_MAX_HEADER || n > size - 8)
        return DR_FAIL(DR_ERR_FORMAT,
                       "%s: header length %llu does not fit the file (%zu bytes; limit %llu)", label,
                       (unsigned long long)n, size, ST_MAX_HEADER);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: header is not valid JSON (%s at byte %d)", label, jerr.text,
                       jerr.position);
    dr_status st = DR_OK;
    if (!json_is_object(root)) {
        st = DR_FAIL(DR_ERR_FORMAT, "%s: header is not a JSON object", label);
        goto done;
    }
    out->tensors = calloc(json_object_size(root) + 1, sizeof *out->tensors);
    if (!out->tensors) {
        st = DR_FAIL(DR_ERR_NOMEM, "%s: out of memory reading the header", label);
        goto done;
    }
    const unsigned char *data = p + 8 + n;
    uint64_t data_size = size - 8 - n;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        dr_st_tensor *t = &out->tensors[out->n_tensors];
        t->name = strdup(key);
        if (!t->name) {
            st = DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", label);
            goto done;
        }
        out->n_tensors++;
        st = parse_entry(label, key, val, data, data_size, t);
        if (st != DR_OK)
            goto done;
    }
done:
    json_decref(root);
    if (st != DR_OK)
        dr_st_close(out);
    return st;
}

/* ===================== files ===================== */

dr_status dr_st_open(const char *path, dr_st_file *out) {
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return DR_FAIL(DR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return DR_FAIL(DR_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return DR_FAIL(DR_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    dr_status st = dr_st_parse(map ? map : "", size, path, out);
    if (st != DR_OK) {
        if (map)
            munmap(map, size);
        return st;
    }
    out->map = map;
    out->size = size;
    out->path = strdup(path);
    if (!out->path) {
        dr_st_close(out);
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < out->n_tensors; i++)
        out->tensors[i].file = out->path;
    return DR_OK;
}

void dr_st_close(dr_st_file *f) {
    if (!f)
        return;
    for (int i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    if (f->map)
        munmap(f->map, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const dr_st_tensor *dr_st_file_find(const dr_st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

uint64_t dr_st_numel(const dr_st_tensor *t) {
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (uint64_t)t->shape[i];
    return n;
}

/* ===================== directories and shards ===================== */

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Shard names from model.safetensors.index.json (unique, sorted). */
static dr_status index_shards(const char *index_path, json_t **root_out, char ***names, int *n) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: invalid JSON (%s, line %d)", index_path, jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        json_decref(root);
        return DR_FAIL(DR_ERR_FORMAT, "%s: missing object \"weight_map\"", index_path);
    }
    char **v = calloc(json_object_size(wm) + 1, sizeof *v);
    int k = 0;
    const char *key;
    json_t *val;
    if (!v) {
        json_decref(root);
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", index_path);
    }
    json_object_foreach(wm, key, val) {
        const char *s = json_string_value(val);
        if (!s || strchr(s, '/') || s[0] == '.') {
            free(v);
            dr_status st = DR_FAIL(DR_ERR_FORMAT, "%s: weight_map[\"%s\"] must be a file name in the directory",
                                   index_path, key);
            json_decref(root); /* after formatting: `key` points into root */
            return st;
        }
        v[k++] = (char *)s;
    }
    qsort(v, (size_t)k, sizeof *v, cmp_str);
    int u = 0;
    for (int i = 0; i < k; i++)
        if (u == 0 || strcmp(v[u - 1], v[i]) != 0)
            v[u++] = v[i];
    *root_out = root;
    *names = v;
    *n = u;
    return DR_OK;
}

/* model*.safetensors in dir (sorted), used when there is no index. */
static dr_status glob_shards(const char *dir, char ***names, int *n) {
    DIR *d = opendir(dir);
    if (!d)
        return DR_FAIL(DR_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **v = NULL;
    int k = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "model", 5) != 0 || len < 17 ||
            strcmp(e->d_name + len - 12, ".safetensors") != 0)
            continue;
        if (k == cap) {
            cap = cap ? cap * 2 : 8;
            char **nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv)
                break;
            v = nv;
        }
        v[k] = strdup(e->d_name);
        if (!v[k])
            break;
        k++;
    }
    closedir(d);
    if (e) { /* broke out on allocation failure */
        for (int i = 0; i < k; i++)
            free(v[i]);
        free(v);
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory listing files", dir);
    }
    if (k == 0) {
        free(v);
        return DR_FAIL(DR_ERR_IO, "%s: no model.safetensors, model.safetensors.index.json or "
                                  "model*.safetensors file", dir);
    }
    qsort(v, (size_t)k, sizeof *v, cmp_str);
    *names = v;
    *n = k;
    return DR_OK;
}

static int cmp_tensor(const void *a, const void *b) {
    const dr_st_tensor *x = *(const dr_st_tensor *const *)a, *y = *(const dr_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static dr_status build_name_index(dr_st_set *s) {
    int total = 0;
    for (int i = 0; i < s->n_files; i++)
        total += s->files[i].n_tensors;
    s->by_name = calloc((size_t)total + 1, sizeof *s->by_name);
    if (!s->by_name)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory indexing tensors");
    for (int i = 0; i < s->n_files; i++)
        for (int j = 0; j < s->files[i].n_tensors; j++)
            s->by_name[s->n_tensors++] = &s->files[i].tensors[j];
    qsort(s->by_name, (size_t)s->n_tensors, sizeof *s->by_name, cmp_tensor);
    for (int i = 1; i < s->n_tensors; i++)
        if (strcmp(s->by_name[i - 1]->name, s->by_name[i]->name) == 0)
            return DR_FAIL(DR_ERR_FORMAT, "tensor '%s' appears in both %s and %s", s->by_name[i]->name,
                           s->by_name[i - 1]->file, s->by_name[i]->file);
    return DR_OK;
}

/* Every weight_map entry must be in the shard it names. */
static dr_status check_index(const dr_st_set *s, json_t *root, const char *index_path) {
    const char *key;
    json_t *val;
    json_object_foreach(json_object_get(root, "weight_map"), key, val) {
        const dr_st_tensor *t = dr_st_find(s, key);
        const char *want = json_string_value(val);
        const char *base = t ? strrchr(t->file, '/') : NULL;
        base = base ? base + 1 : (t ? t->file : NULL);
        if (!t || strcmp(base, want) != 0)
            return DR_FAIL(DR_ERR_FORMAT, "%s: weight_map says '%s' is in %s, but it is not there",
                           index_path, key, want);
    }
    return DR_OK;
}

dr_status dr_st_open_dir(const char *dir, dr_st_set *out) {
    memset(out, 0, sizeof *out);
    char *index = path_join(dir, "model.safetensors.index.json");
    char *single = path_join(dir, "model.safetensors");
    char **names = NULL;
    int n = 0, own_names = 1;
    json_t *root = NULL;
    dr_status st = DR_OK;
    if (!index || !single) {
        st = DR_FAIL(DR_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (file_exists(index)) {
        st = index_shards(index, &root, &names, &n);
        own_names = 0; /* strings belong to root */
    } else if (file_exists(single)) {
        names = malloc(sizeof *names);
        if (names && (names[0] = strdup("model.safetensors")))
            n = 1;
        else
            st = DR_FAIL(DR_ERR_NOMEM, "out of memory");
    } else {
        st = glob_shards(dir, &names, &n);
    }
    if (st != DR_OK)
        goto done;
    out->files = calloc((size_t)n, sizeof *out->files);
    if (!out->files) {
        st = DR_FAIL(DR_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n && st == DR_OK; i++) {
        char *p = path_join(dir, names[i]);
        st = p ? dr_st_open(p, &out->files[i]) : DR_FAIL(DR_ERR_NOMEM, "out of memory");
        free(p);
        if (st == DR_OK)
            out->n_files++;
    }
    if (st == DR_OK)
        st = build_name_index(out);
    if (st == DR_OK && root)
        st = check_index(out, root, index);
done:
    if (own_names && names)
        for (int i = 0; i < n; i++)
            free(names[i]);
    free(names);
    json_decref(root);
    free(index);
    free(single);
    if (st != DR_OK)
        dr_st_close_set(out);
    return st;
}

void dr_st_close_set(dr_st_set *s) {
    if (!s)
        return;
    for (int i = 0; i < s->n_files; i++)
        dr_st_close(&s->files[i]);
    free(s->files);
    free(s->by_name);
    memset(s, 0, sizeof *s);
}

const dr_st_tensor *dr_st_find(const dr_st_set *s, const char *name) {
    int lo = 0, hi = s->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(s->by_name[mid]->name, name);
        if (c == 0)
            return s->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

/* ===================== writer ===================== */

dr_status dr_st_write_f32(const char *path, int n, const char *const *names, const int *ndims,
                          const int64_t (*shapes)[DR_ST_MAX_DIMS], const float *const *datas) {
    json_t *root = json_object();
    uint64_t off = 0;
    uint64_t *sizes = calloc((size_t)n + 1, sizeof *sizes);
    if (!root || !sizes) {
        json_decref(root);
        free(sizes);
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        uint64_t numel = 1;
        for (int d = 0; d < ndims[i]; d++) {
            json_array_append_new(shape, json_integer(shapes[i][d]));
            numel *= (uint64_t)shapes[i][d];
        }
        sizes[i] = numel * 4;
        json_object_set_new(root, names[i],
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + sizes[i])));
        off += sizes[i];
    }
    char *hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!hdr) {
        free(sizes);
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    dr_status st = DR_OK;
    if (!f) {
        st = DR_FAIL(DR_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    } else {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
        int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
        for (size_t i = hl; i < padded && ok; i++)
            ok = fputc(' ', f) != EOF;
        for (int i = 0; i < n && ok; i++)
            ok = fwrite(datas[i], 1, sizes[i], f) == sizes[i];
        if (fclose(f) != 0 || !ok)
            st = DR_FAIL(DR_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    }
    free(hdr);
    free(sizes);
    return st;
}
