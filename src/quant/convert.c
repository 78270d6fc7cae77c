/* quant/convert.c - HF directory -> MLX affine-quantized directory.
 *
 * Three phases: plan (map every source tensor to an output job: name,
 * transform, bits; experts gathered into stacked jobs), lay out (shards of
 * at most shard_bytes, every file's header written up front), then stream
 * (quantize / copy one piece at a time, so memory stays at one matrix).
 * All files go to OUT.partial-PID, renamed to OUT at the very end.
 */
#include "quant/convert.h"

#include "format/config.h"
#include "format/safetensors.h"
#include "quant/mlx_names.h"
#include "quant/st_writer.h"
#include "util/status.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SHARD (5ull << 30)
#define MAX_SHARDS 9999

/* Rows [row0, row0 + rows) of a source tensor seen as [rows_total, cols]. */
typedef struct piece {
    const dr_st_tensor *src;
    int64_t row0, rows;
} piece;

typedef struct job {
    char name[512];      /* output name of the weight */
    dr_mlx_kind kind;
    dr_dtype dtype;      /* source (and unquantized output) dtype */
    int ndim;
    int64_t shape[4];    /* output logical shape */
    int64_t cols;
    int n_pieces;
    piece *pieces;
    int bits, gs;        /* bits 0: written as is */
    char note[128];
    int shard, iw, is, ib; /* writer indices */
} job;

typedef struct conv {
    const dr_convert_opts *o;
    dr_hparams hp;
    dr_st_set st;
    job *jobs;
    int n_jobs, cap_jobs;
    int n_shards;
    dr_st_writer **w;
    char out[4096], tmp[4096];
    uint64_t total_in, done_in;
} conv;

/* ================= plan ================= */

static job *new_job(conv *c, const char *name) {
    if (c->n_jobs == c->cap_jobs) {
        int nc = c->cap_jobs ? 2 * c->cap_jobs : 256;
        job *nj = realloc(c->jobs, (size_t)nc * sizeof *nj);
        if (!nj)
            return NULL;
        c->jobs = nj;
        c->cap_jobs = nc;
    }
    job *j = &c->jobs[c->n_jobs++];
    memset(j, 0, sizeof *j);
    snprintf(j->name, sizeof j->name, "%s", name);
    return j;
}

static job *find_job(conv *c, const char *name) {
    for (int i = c->n_jobs - 1; i >= 0; i--)
        if (!strcmp(c->jobs[i].name, name))
            return &c->jobs[i];
    return NULL;
}

static int64_t numel_of(const dr_st_tensor *t) { return (int64_t)dr_st_numel(t); }

static dr_status set_pieces(job *j, int n) {
    j->pieces = calloc((size_t)n, sizeof *j->pieces);
    j->n_pieces = n;
    return j->pieces ? DR_OK : DR_FAIL(DR_ERR_NOMEM, "out of memory planning %s", j->name);
}

/* One source tensor as a whole job (PLAIN, NORM, CONV). */
static dr_status plan_single(conv *c, const dr_st_tensor *t, const dr_mlx_name *m) {
    job *j = new_job(c, m->out);
    if (!j)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory planning");
    j->kind = m->kind;
    j->dtype = t->dtype;
    j->ndim = t->ndim > 4 ? 4 : t->ndim;
    for (int i = 0; i < j->ndim; i++)
        j->shape[i] = t->shape[i];
    j->cols = t->ndim ? t->shape[t->ndim - 1] : 1;
    if (m->kind == DR_MLX_CONV && t->ndim == 3 && t->shape[1] == 1) { /* [C, 1, K] -> [C, K, 1] */
        j->shape[1] = t->shape[2];
        j->shape[2] = 1;
    }
    DR_TRY(set_pieces(j, 1));
    j->pieces[0] = (piece){t, 0, j->cols ? numel_of(t) / j->cols : 0};
    return DR_OK;
}

/* experts.gate_up_proj [E, 2I, H] -> gate [E, I, H] and up [E, I, H]. */
static dr_status plan_gate_up(conv *c, const dr_st_tensor *t, const dr_mlx_name *m) {
    if (t->ndim != 3 || t->shape[1] % 2)
        return DR_FAIL(DR_ERR_SHAPE, "%s: %s: expected [E, 2*I, H]", t->file, t->name);
    const int64_t E = t->shape[0], I = t->shape[1] / 2, H = t->shape[2];
    for (int half = 0; half < 2; half++) {
        job *j = new_job(c, half ? m->out2 : m->out);
        if (!j)
            return DR_FAIL(DR_ERR_NOMEM, "out of memory planning");
        j->kind = DR_MLX_PLAIN;
        j->dtype = t->dtype;
        j->ndim = 3;
        j->shape[0] = E, j->shape[1] = I, j->shape[2] = H;
        j->cols = H;
        DR_TRY(set_pieces(j, (int)E));
        for (int64_t e = 0; e < E; e++)
            j->pieces[e] = (piece){t, e * 2 * I + half * I, I}; /* gate rows first (MODEL.md 6.2) */
    }
    return DR_OK;
}

/* experts.E.X_proj.weight [rows, cols] -> slice E of switch_mlp.X_proj.weight. */
static dr_status plan_expert(conv *c, const dr_st_tensor *t, const dr_mlx_name *m) {
    const int E = c->hp.n_experts;
    if (m->expert >= E)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s: expert %d but num_experts is %d", t->file, t->name, m->expert, E);
    if (t->ndim != 2)
        return DR_FAIL(DR_ERR_SHAPE, "%s: %s: expected a 2-D expert matrix", t->file, t->name);
    job *j = find_job(c, m->out);
    if (!j) {
        if (!(j = new_job(c, m->out)))
            return DR_FAIL(DR_ERR_NOMEM, "out of memory planning");
        j->kind = DR_MLX_PLAIN;
        j->dtype = t->dtype;
        j->ndim = 3;
        j->shape[0] = E, j->shape[1] = t->shape[0], j->shape[2] = t->shape[1];
        j->cols = t->shape[1];
        DR_TRY(set_pieces(j, E));
    }
    if (t->shape[0] != j->shape[1] || t->shape[1] != j->shape[2] || t->dtype != j->dtype)
        return DR_FAIL(DR_ERR_SHAPE, "%s: %s: shape/dtype differs from the other experts of %s", t->file, t->name,
                       j->name);
    j->pieces[m->expert] = (piece){t, 0, t->shape[0]};
    return DR_OK;
}

/* bits for a linear job, or 0 with a note saying why it stays unquantized. */
static void choose_bits(const conv *c, job *j) {
    const dr_convert_opts *o = c->o;
    if (j->kind == DR_MLX_NORM) {
        snprintf(j->note, sizeof j->note, "norm, 1 + w folded");
        return;
    }
    if (j->kind == DR_MLX_CONV) {
        snprintf(j->note, sizeof j->note, "conv1d as [C, K, 1]");
        return;
    }
    if (!dr_mlx_is_linear(j->name) || j->ndim < 2 || j->ndim > 3)
        return; /* A_log, dt_bias, linear_attn.norm: kept as is */
    int bits = o->bits;
    if (dr_mlx_is_gate(j->name))
        bits = 8; /* router / shared-expert gate: mlx-lm's quant_predicate */
    else if (dr_mlx_is_embed(j->name))
        bits = o->embed_bits ? o->embed_bits : o->bits;
    else if (dr_mlx_is_lm_head(j->name))
        bits = o->lm_head_bits ? o->lm_head_bits : o->bits;
    if (bits == 16)
        snprintf(j->note, sizeof j->note, "kept unquantized (16 bits requested)");
    else if (j->cols % o->group_size != 0)
        snprintf(j->note, sizeof j->note, "kept unquantized: row length %lld is not a multiple of group size %d",
                 (long long)j->cols, o->group_size);
    else
        j->bits = bits, j->gs = o->group_size;
}

static dr_status plan(conv *c) {
    const bool next = c->hp.arch == DR_ARCH_QWEN3_NEXT;
    for (int i = 0; i < c->st.n_tensors; i++) {
        const dr_st_tensor *t = c->st.by_name[i];
        dr_mlx_name m;
        dr_mlx_map_name(t->name, next, c->hp.tied, &m);
        if (m.kind == DR_MLX_SKIP)
            continue;
        if (t->dtype != DR_DT_F32 && t->dtype != DR_DT_BF16 && t->dtype != DR_DT_F16)
            return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: dtype %s cannot be quantized (expected F32, BF16 or F16)",
                           t->file, t->name, t->dtype_name);
        if (m.kind == DR_MLX_GATE_UP)
            DR_TRY(plan_gate_up(c, t, &m));
        else if (m.kind == DR_MLX_EXPERT)
            DR_TRY(plan_expert(c, t, &m));
        else
            DR_TRY(plan_single(c, t, &m));
    }
    if (c->n_jobs == 0)
        return DR_FAIL(DR_ERR_FORMAT, "%s: no text-model tensors found", c->o->in_dir);
    for (int i = 0; i < c->n_jobs; i++) {
        job *j = &c->jobs[i];
        for (int p = 0; p < j->n_pieces; p++)
            if (!j->pieces[p].src)
                return DR_FAIL(DR_ERR_FORMAT, "%s: expert %d of %s is missing in the source", c->o->in_dir, p,
                               j->name);
        for (int p = 0; p < j->n_pieces; p++)
            c->total_in += (uint64_t)j->pieces[p].rows * (uint64_t)j->cols * dr_dtype_size(j->dtype);
        choose_bits(c, j);
    }
    return DR_OK;
}

/* ================= layout ================= */

static int64_t job_rows(const job *j) {
    int64_t r = 0;
    for (int p = 0; p < j->n_pieces; p++)
        r += j->pieces[p].rows;
    return r;
}

static uint64_t job_bytes(const job *j) {
    const uint64_t rows = (uint64_t)job_rows(j);
    if (!j->bits)
        return rows * (uint64_t)j->cols * dr_dtype_size(j->dtype);
    return rows * (dr_quant_row_bytes(j->cols, j->bits) + 2 * dr_quant_sb_row_bytes(j->cols, j->gs, j->dtype));
}

static void base_of(const char *name, char *buf, size_t n) {
    size_t len = strlen(name);
    if (len > 7 && !strcmp(name + len - 7, ".weight"))
        len -= 7;
    snprintf(buf, n, "%.*s", (int)len, name);
}

static void shard_name(const conv *c, int s, char *buf, size_t n) {
    if (c->n_shards == 1)
        snprintf(buf, n, "model.safetensors");
    else
        snprintf(buf, n, "model-%05d-of-%05d.safetensors", s + 1, c->n_shards);
}

/* Output entries of shard s (names point into `names`, 3 per job). */
static int shard_entries(conv *c, int s, dr_stw_tensor *ents, char (*names)[520]) {
    int n = 0;
    for (int i = 0; i < c->n_jobs; i++) {
        job *j = &c->jobs[i];
        if (j->shard != s)
            continue;
        dr_stw_tensor e = {.name = j->name, .dtype = j->dtype, .ndim = j->ndim};
        memcpy(e.shape, j->shape, sizeof j->shape);
        if (!j->bits) {
            j->iw = n;
            ents[n++] = e;
            continue;
        }
        char base[512];
        base_of(j->name, base, sizeof base);
        e.dtype = DR_DT_U32;
        e.shape[j->ndim - 1] = j->cols * j->bits / 32;
        j->iw = n;
        ents[n++] = e;
        e.dtype = j->dtype;
        e.shape[j->ndim - 1] = j->cols / j->gs;
        snprintf(names[n], sizeof names[n], "%s.scales", base);
        e.name = names[n];
        j->is = n;
        ents[n++] = e;
        snprintf(names[n], sizeof names[n], "%s.biases", base);
        e.name = names[n];
        j->ib = n;
        ents[n++] = e;
    }
    return n;
}

static dr_status layout(conv *c) {
    const uint64_t limit = c->o->shard_bytes ? c->o->shard_bytes : DEFAULT_SHARD;
    uint64_t cur = 0;
    int s = 0;
    for (int i = 0; i < c->n_jobs; i++) {
        uint64_t b = job_bytes(&c->jobs[i]);
        if (cur > 0 && cur + b > limit && s + 1 < MAX_SHARDS)
            s++, cur = 0;
        c->jobs[i].shard = s;
        cur += b;
    }
    c->n_shards = s + 1;
    c->w = calloc((size_t)c->n_shards, sizeof *c->w);
    dr_stw_tensor *ents = malloc((size_t)c->n_jobs * 3 * sizeof *ents);
    char(*names)[520] = malloc((size_t)c->n_jobs * 3 * sizeof *names);
    dr_status st = c->w && ents && names ? DR_OK : DR_FAIL(DR_ERR_NOMEM, "out of memory laying out shards");
    for (s = 0; s < c->n_shards && st == DR_OK; s++) {
        char fn[64], path[4200];
        shard_name(c, s, fn, sizeof fn);
        snprintf(path, sizeof path, "%s/%s", c->tmp, fn);
        int n = shard_entries(c, s, ents, names);
        st = dr_stw_create(path, n, ents, "mlx", &c->w[s]);
    }
    free(ents);
    free(names);
    return st;
}

/* ================= stream ================= */

/* A piece of a source tensor as a 2-D [rows, cols] tensor view. */
static dr_tensor piece_view(const job *j, const piece *p) {
    dr_tensor v = {.name = p->src->name, .dtype = j->dtype, .ndim = 2};
    v.ne[0] = p->rows;
    v.ne[1] = j->cols;
    v.data = (const char *)p->src->data + (size_t)p->row0 * (size_t)j->cols * dr_dtype_size(j->dtype);
    return v;
}

static void merge_stats(dr_quant_stats *acc, const dr_quant_stats *s) {
    acc->max_abs = s->max_abs > acc->max_abs ? s->max_abs : acc->max_abs;
    acc->n_rows += s->n_rows;
    acc->err2 += s->err2;
    acc->ref2 += s->ref2;
    acc->rel_rms = acc->ref2 > 0 ? sqrt(acc->err2 / acc->ref2) : 0.0;
}

/* Test hook (fault injection, like SQLite's): when DR_QUANT_TEST_COLLAPSE
 * names this output module, zero the scales and biases of its first half of
 * rows, reproducing the packaging bug dr_quant_check exists to catch. */
static void inject_collapse(const char *base, dr_tensor *q) {
    const char *target = getenv("DR_QUANT_TEST_COLLAPSE");
    if (!target || strcmp(target, base) != 0)
        return;
    size_t sb = dr_quant_sb_row_bytes(q->ne[q->ndim - 1], q->q.group_size, q->q.sb_dtype);
    size_t half = (size_t)dr_tensor_rows(q) / 2 + 1;
    memset((void *)q->q.scales, 0, half * sb);
    memset((void *)q->q.biases, 0, half * sb);
}

static dr_status write_quant_piece(conv *c, const job *j, const piece *p, int64_t orow, dr_quant_stats *acc) {
    char base[512];
    base_of(j->name, base, sizeof base);
    dr_tensor v = piece_view(j, p), q;
    void *own;
    dr_quant_opts qo = {.bits = j->bits, .group_size = j->gs, .n_threads = c->o->n_threads};
    DR_TRY(dr_quantize_ex(&v, &qo, &q, &own));
    inject_collapse(base, &q);
    dr_quant_stats s;
    dr_status st = dr_quant_check(&v, &q, base, &s);
    const size_t pr = dr_quant_row_bytes(j->cols, j->bits), sr = dr_quant_sb_row_bytes(j->cols, j->gs, j->dtype);
    dr_st_writer *w = c->w[j->shard];
    if (st == DR_OK)
        st = dr_stw_write(w, j->iw, (size_t)orow * pr, q.data, (size_t)p->rows * pr);
    if (st == DR_OK)
        st = dr_stw_write(w, j->is, (size_t)orow * sr, q.q.scales, (size_t)p->rows * sr);
    if (st == DR_OK)
        st = dr_stw_write(w, j->ib, (size_t)orow * sr, q.q.biases, (size_t)p->rows * sr);
    free(own);
    merge_stats(acc, &s);
    return st;
}

static dr_status write_copy_piece(conv *c, const job *j, const piece *p, int64_t orow) {
    const size_t esz = dr_dtype_size(j->dtype), n = (size_t)p->rows * (size_t)j->cols;
    dr_tensor v = piece_view(j, p);
    if (j->kind != DR_MLX_NORM)
        return dr_stw_write(c->w[j->shard], j->iw, (size_t)orow * (size_t)j->cols * esz, v.data, n * esz);
    void *buf = malloc(n * esz); /* zero-centred norm: store the gain 1 + w */
    if (!buf)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory writing %s", j->name);
    for (size_t i = 0; i < n; i++)
        dr_quant_store_f32(buf, j->dtype, i, dr_load_f32(v.data, j->dtype, i) + 1.0f);
    dr_status st = dr_stw_write(c->w[j->shard], j->iw, (size_t)orow * (size_t)j->cols * esz, buf, n * esz);
    free(buf);
    return st;
}

static dr_status write_job(conv *c, int idx, dr_convert_summary *sum) {
    const job *j = &c->jobs[idx];
    dr_convert_report r = {.name = j->name, .bits = j->bits, .group_size = j->gs, .note = j->note,
                           .dtype = dr_dtype_name(j->dtype), .ndim = j->ndim, .index = idx + 1,
                           .count = c->n_jobs};
    memcpy(r.shape, j->shape, sizeof r.shape);
    r.stats.first_zero = -1;
    int64_t orow = 0;
    for (int p = 0; p < j->n_pieces; p++) {
        const piece *pc = &j->pieces[p];
        DR_TRY(j->bits ? write_quant_piece(c, j, pc, orow, &r.stats) : write_copy_piece(c, j, pc, orow));
        orow += pc->rows;
        c->done_in += (uint64_t)pc->rows * (uint64_t)j->cols * dr_dtype_size(j->dtype);
        if (c->o->on_progress)
            c->o->on_progress(c->o->user, c->done_in, c->total_in);
    }
    sum->n_tensors++;
    sum->bytes_out += job_bytes(j);
    if (j->bits) {
        sum->n_quantized++;
        if (r.stats.rel_rms >= sum->worst_rel_rms) {
            sum->worst_rel_rms = r.stats.rel_rms;
            snprintf(sum->worst_name, sizeof sum->worst_name, "%.255s", j->name);
        }
    }
    if (c->o->on_tensor)
        c->o->on_tensor(c->o->user, &r);
    return DR_OK;
}

/* ================= config, index, side files ================= */

static dr_status dump_json(json_t *j, const char *path, size_t flags) {
    int rc = j ? json_dump_file(j, path, flags) : -1;
    return rc == 0 ? DR_OK : DR_FAIL(DR_ERR_IO, "%s: cannot write", path);
}

static json_t *quant_block(const conv *c) {
    json_t *q = json_object();
    json_object_set_new(q, "group_size", json_integer(c->o->group_size));
    json_object_set_new(q, "bits", json_integer(c->o->bits));
    json_object_set_new(q, "mode", json_string("affine"));
    for (int i = 0; i < c->n_jobs; i++) { /* per-module overrides (FORMATS.md 2.2) */
        const job *j = &c->jobs[i];
        if (!j->bits || (j->bits == c->o->bits && j->gs == c->o->group_size))
            continue;
        char base[512];
        base_of(j->name, base, sizeof base);
        json_t *o = json_object();
        json_object_set_new(o, "group_size", json_integer(j->gs));
        json_object_set_new(o, "bits", json_integer(j->bits));
        json_object_set_new(q, base, o);
    }
    return q;
}

static dr_status write_config(const conv *c) {
    char in[4200], out[4200];
    snprintf(in, sizeof in, "%s/config.json", c->o->in_dir);
    snprintf(out, sizeof out, "%s/config.json", c->tmp);
    json_error_t jerr;
    json_t *root = json_load_file(in, JSON_PRESERVE_ORDER, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s (line %d)", in, jerr.text, jerr.line);
    json_object_del(root, "vision_config"); /* as mlx-lm's save_config: the vision tower is not written */
    json_t *q = quant_block(c);
    json_object_set_new(root, "quantization", q);
    json_object_set_new(root, "quantization_config", json_deep_copy(q));
    dr_status st = dump_json(root, out, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return st;
}

static dr_status write_index(const conv *c, uint64_t total) {
    if (c->n_shards == 1)
        return DR_OK;
    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    for (int i = 0; i < c->n_jobs; i++) {
        const job *j = &c->jobs[i];
        char fn[64], base[512], nm[600];
        shard_name(c, j->shard, fn, sizeof fn);
        json_object_set_new(map, j->name, json_string(fn));
        if (!j->bits)
            continue;
        base_of(j->name, base, sizeof base);
        snprintf(nm, sizeof nm, "%s.scales", base);
        json_object_set_new(map, nm, json_string(fn));
        snprintf(nm, sizeof nm, "%s.biases", base);
        json_object_set_new(map, nm, json_string(fn));
    }
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "weight_map", map);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", c->tmp);
    dr_status st = dump_json(root, path, JSON_INDENT(4) | JSON_SORT_KEYS);
    json_decref(root);
    return st;
}

static dr_status copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in)
        return DR_OK; /* optional file */
    FILE *out = fopen(to, "wb");
    dr_status st = out ? DR_OK : DR_FAIL(DR_ERR_IO, "%s: cannot create: %s", to, strerror(errno));
    char buf[65536];
    size_t n;
    while (st == DR_OK && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            st = DR_FAIL(DR_ERR_IO, "%s: write failed", to);
    if (st == DR_OK && ferror(in))
        st = DR_FAIL(DR_ERR_IO, "%s: read failed", from);
    fclose(in);
    if (out && fclose(out) != 0 && st == DR_OK)
        st = DR_FAIL(DR_ERR_IO, "%s: write failed", to);
    return st;
}

static dr_status copy_side_files(const conv *c) {
    static const char *const files[] = {"generation_config.json", "tokenizer.json",       "tokenizer_config.json",
                                        "special_tokens_map.json", "added_tokens.json",   "vocab.json",
                                        "merges.txt",              "chat_template.jinja", "chat_template.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/%s", c->o->in_dir, files[i]);
        snprintf(b, sizeof b, "%s/%s", c->tmp, files[i]);
        DR_TRY(copy_file(a, b));
    }
    return DR_OK;
}

/* ================= directories ================= */

/* 0: missing, 1: empty dir, 2: non-empty dir with only regular files,
 * 3: non-empty with something else, -1: not a directory. */
static int dir_state(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 0;
    if (!S_ISDIR(sb.st_mode))
        return -1;
    DIR *d = opendir(path);
    if (!d)
        return 3;
    int state = 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        state = state < 2 ? 2 : state;
        if (lstat(p, &sb) != 0 || !S_ISREG(sb.st_mode))
            state = 3;
    }
    closedir(d);
    return state;
}

/* Remove the regular files of `dir`, then `dir`. */
static void remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static dr_status prepare_dirs(conv *c) {
    const dr_convert_opts *o = c->o;
    size_t len = strlen(o->out_dir);
    while (len > 1 && o->out_dir[len - 1] == '/')
        len--;
    if (len == 0 || len >= sizeof c->out - 32)
        return DR_FAIL(DR_ERR_ARG, "output directory \"%s\": bad path", o->out_dir);
    snprintf(c->out, sizeof c->out, "%.*s", (int)len, o->out_dir);
    int s = dir_state(c->out);
    if (s < 0)
        return DR_FAIL(DR_ERR_ARG, "%s exists and is not a directory", c->out);
    if (s >= 2 && !o->force)
        return DR_FAIL(DR_ERR_ARG, "%s exists and is not empty (pass --force to replace it)", c->out);
    if (s == 3)
        return DR_FAIL(DR_ERR_ARG, "%s contains subdirectories or special files; not replacing it, even with --force",
                       c->out);
    char ri[4096], ro[4096];
    if (s && realpath(o->in_dir, ri) && realpath(c->out, ro) && !strcmp(ri, ro))
        return DR_FAIL(DR_ERR_ARG, "output directory %s is the input directory", c->out);
    char tmp[sizeof c->tmp];
    snprintf(tmp, sizeof tmp, "%.4000s.partial-%ld", c->out, (long)getpid());
    if (mkdir(tmp, 0755) != 0)
        return DR_FAIL(DR_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    snprintf(c->tmp, sizeof c->tmp, "%s", tmp); /* ours from here on: removed on failure */
    return DR_OK;
}

/* Move tmp into place; a replaced (--force) directory is removed after. */
static dr_status commit_dir(conv *c) {
    char old[4200] = "";
    if (dir_state(c->out) >= 2) {
        snprintf(old, sizeof old, "%s.old-%ld", c->out, (long)getpid());
        if (rename(c->out, old) != 0)
            return DR_FAIL(DR_ERR_IO, "%s: cannot move aside: %s", c->out, strerror(errno));
    }
    if (rename(c->tmp, c->out) != 0) {
        dr_status st = DR_FAIL(DR_ERR_IO, "%s -> %s: rename failed: %s", c->tmp, c->out, strerror(errno));
        if (old[0])
            rename(old, c->out);
        return st;
    }
    if (old[0])
        remove_flat_dir(old);
    return DR_OK;
}

/* ================= driver ================= */

static dr_status check_opts(const dr_convert_opts *o) {
    if (!o->in_dir || !o->out_dir)
        return DR_FAIL(DR_ERR_ARG, "input and output directories are required");
    if (!dr_quant_bits_ok(o->bits))
        return DR_FAIL(DR_ERR_ARG, "--bits %d (expected 4 or 8)", o->bits);
    if (!dr_quant_group_ok(o->group_size))
        return DR_FAIL(DR_ERR_ARG, "--group-size %d (expected 32, 64 or 128)", o->group_size);
    if (o->embed_bits && !dr_quant_bits_ok(o->embed_bits) && o->embed_bits != 16)
        return DR_FAIL(DR_ERR_ARG, "--embed-bits %d (expected 4, 8 or 16)", o->embed_bits);
    if (o->lm_head_bits && !dr_quant_bits_ok(o->lm_head_bits) && o->lm_head_bits != 16)
        return DR_FAIL(DR_ERR_ARG, "--lm-head-bits %d (expected 4, 8 or 16)", o->lm_head_bits);
    return DR_OK;
}

static dr_status run(conv *c, dr_convert_summary *sum) {
    DR_TRY(dr_hparams_load(c->o->in_dir, &c->hp));
    DR_TRY(dr_st_open_dir(c->o->in_dir, &c->st));
    for (int i = 0; i < c->st.n_tensors; i++)
        if (c->st.by_name[i]->dtype == DR_DT_U32 || strstr(c->st.by_name[i]->name, ".scales"))
            return DR_FAIL(DR_ERR_ARG, "%s: already quantized (%s); quantize needs an F32/BF16/F16 model",
                           c->o->in_dir, c->st.by_name[i]->name);
    DR_TRY(plan(c));
    DR_TRY(prepare_dirs(c));
    DR_TRY(layout(c));
    for (int i = 0; i < c->n_jobs; i++)
        DR_TRY(write_job(c, i, sum));
    dr_status st = DR_OK;
    for (int s = 0; s < c->n_shards; s++) {
        dr_status fs = dr_stw_finish(c->w[s]); /* frees the writer either way */
        c->w[s] = NULL;
        st = st == DR_OK ? fs : st;
    }
    DR_TRY(st);
    sum->n_shards = c->n_shards;
    sum->bytes_in = c->total_in;
    DR_TRY(write_index(c, sum->bytes_out));
    DR_TRY(write_config(c));
    DR_TRY(copy_side_files(c));
    return commit_dir(c);
}

dr_status dr_quant_convert(const dr_convert_opts *opts, dr_convert_summary *sum) {
    dr_convert_summary dummy;
    sum = sum ? sum : &dummy;
    memset(sum, 0, sizeof *sum);
    dr_convert_opts o = *opts;
    if (!o.group_size)
        o.group_size = 64;
    DR_TRY(check_opts(&o));
    conv c = {.o = &o};
    dr_status st = run(&c, sum);
    for (int s = 0; c.w && s < c.n_shards; s++)
        dr_stw_abort(c.w[s]);
    if (st != DR_OK && c.tmp[0])
        remove_flat_dir(c.tmp); /* nothing half-written is left behind */
    free(c.w);
    for (int i = 0; i < c.n_jobs; i++)
        free(c.jobs[i].pieces);
    free(c.jobs);
    dr_st_close_set(&c.st);
    return st;
}
