/* test_model_errors.c - dr_model_load on broken model directories, and API
 * misuse of sessions.
 *
 * Each broken directory is made in /tmp from a fixture: its config.json and a
 * model.safetensors rewritten from the fixture's tensors (as F32, which the
 * loader accepts) with one thing wrong. A rewritten-but-unbroken copy must
 * load and give the fixture's logits (the positive control that shows the
 * rewriting itself is faithful).
 */
#include "deltarun.h"
#include "format/safetensors.h"
#include "util/dtype.h"
#include "util/status.h"

#include "test.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char g_tmp[256];
static int g_case;

/* ---- a model's tensors as F32, editable ---- */

typedef struct {
    const char *name; /* owned by the wset's source */
    char dtype[16];   /* written dtype: "F32" unless a test changes it */
    int ndim;
    int64_t shape[DR_ST_MAX_DIMS];
    const float *data;
} wt;

typedef struct {
    wt *t;
    int n;
    char **names;
    float **bufs;
} wset;

static int wset_load(const char *fixture, wset *w) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", DR_TEST_DATA, fixture);
    dr_st_set s;
    memset(w, 0, sizeof *w);
    if (dr_st_open_dir(dir, &s) != DR_OK) {
        CHECK(0, "open %s: %s", dir, dr_last_error());
        return 0;
    }
    w->n = s.n_tensors;
    w->t = calloc((size_t)w->n, sizeof *w->t);
    w->names = calloc((size_t)w->n, sizeof *w->names);
    w->bufs = calloc((size_t)w->n, sizeof *w->bufs);
    for (int i = 0; i < s.n_tensors; i++) {
        const dr_st_tensor *t = s.by_name[i];
        uint64_t n = dr_st_numel(t);
        float *b = malloc((size_t)n * sizeof *b + 1);
        for (uint64_t k = 0; k < n; k++)
            b[k] = dr_load_f32(t->data, t->dtype, (size_t)k);
        w->names[i] = strdup(t->name);
        w->bufs[i] = b;
        w->t[i].name = w->names[i];
        snprintf(w->t[i].dtype, sizeof w->t[i].dtype, "F32");
        w->t[i].ndim = t->ndim;
        memcpy(w->t[i].shape, t->shape, sizeof t->shape);
        w->t[i].data = b;
    }
    dr_st_close_set(&s);
    return 1;
}

static void wset_free(wset *w) {
    for (int i = 0; i < w->n; i++) {
        free(w->names[i]);
        free(w->bufs[i]);
    }
    free(w->names);
    free(w->bufs);
    free(w->t);
    memset(w, 0, sizeof *w);
}

/* A shallow copy (shares names and data) to mutate shapes / drop entries. */
static wt *wcopy(const wset *w) {
    wt *c = malloc((size_t)w->n * sizeof *c);
    memcpy(c, w->t, (size_t)w->n * sizeof *c);
    return c;
}

static int windex(const wt *t, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return i;
    return -1;
}

static uint64_t numel(const wt *t) {
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (uint64_t)t->shape[i];
    return n;
}

static uint64_t elem_size(const char *dtype) {
    if (!strcmp(dtype, "F32") || !strcmp(dtype, "I32"))
        return 4;
    if (!strcmp(dtype, "BF16"))
        return 2;
    return 1;
}

/* Write n tensors: via dr_st_write_f32 when all are F32 and `mis` < 0, else by
 * hand with the data buffer starting at a file offset = mis (mod 8)
 * (elements of the declared dtype: I32 = the float bits, BF16 rounded,
 * 1-byte dtypes = 0). */
static int write_tensors_at(const char *path, const wt *t, int n, int mis) {
    int all_f32 = 1;
    for (int i = 0; i < n; i++)
        all_f32 &= strcmp(t[i].dtype, "F32") == 0;
    if (all_f32 && mis < 0) {
        const char **names = malloc((size_t)n * sizeof *names + 1);
        int *ndims = malloc((size_t)n * sizeof *ndims + 1);
        int64_t(*shapes)[DR_ST_MAX_DIMS] = malloc((size_t)n * sizeof *shapes + 1);
        const float **datas = malloc((size_t)n * sizeof *datas + 1);
        for (int i = 0; i < n; i++) {
            names[i] = t[i].name;
            ndims[i] = t[i].ndim;
            memcpy(shapes[i], t[i].shape, sizeof shapes[i]);
            datas[i] = t[i].data;
        }
        dr_status st = dr_st_write_f32(path, n, names, ndims, (const int64_t(*)[DR_ST_MAX_DIMS])shapes, datas);
        free(names);
        free(ndims);
        free(shapes);
        free(datas);
        CHECK(st == DR_OK, "write %s: %s", path, dr_last_error());
        return st == DR_OK;
    }
    json_t *root = json_object();
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t esz = elem_size(t[i].dtype);
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++)
            json_array_append_new(shape, json_integer(t[i].shape[d]));
        uint64_t nb = numel(&t[i]) * esz;
        json_object_set_new(root, t[i].name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", t[i].dtype, "shape", shape, "data_offsets",
                                      (json_int_t)off, (json_int_t)(off + nb)));
        off += nb;
    }
    char *hdr0 = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    size_t hl = strlen(hdr0);
    char *hdr = malloc(hl + 9);
    memcpy(hdr, hdr0, hl);
    free(hdr0);
    while (mis >= 0 && (8 + hl) % 8 != (size_t)mis)
        hdr[hl++] = ' '; /* trailing spaces: still valid JSON */
    FILE *f = fopen(path, "wb");
    int ok = f != NULL;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    ok = ok && fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (int i = 0; i < n && ok; i++) {
        uint64_t ne = numel(&t[i]);
        if (strcmp(t[i].dtype, "F32") == 0 || strcmp(t[i].dtype, "I32") == 0)
            ok = fwrite(t[i].data, 4, (size_t)ne, f) == ne;
        else if (strcmp(t[i].dtype, "BF16") == 0)
            for (uint64_t k = 0; k < ne && ok; k++) {
                uint16_t h = dr_f32_to_bf16(t[i].data[k]);
                unsigned char le[2] = {(unsigned char)h, (unsigned char)(h >> 8)};
                ok = fwrite(le, 1, 2, f) == 2;
            }
        else
            for (uint64_t k = 0; k < ne && ok; k++)
                ok = fputc(0, f) != EOF;
    }
    if (f)
        ok = (fclose(f) == 0) && ok;
    free(hdr);
    CHECK(ok, "hand-written %s failed", path);
    return ok;
}

static int write_tensors(const char *path, const wt *t, int n) { return write_tensors_at(path, t, n, -1); }

/* ---- directories ---- */

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int ok = a && b;
    char buf[8192];
    size_t k;
    while (ok && (k = fread(buf, 1, sizeof buf, a)) > 0)
        ok = fwrite(buf, 1, k, b) == k;
    if (a)
        fclose(a);
    if (b)
        ok = (fclose(b) == 0) && ok;
    return ok;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* New empty case directory under g_tmp. */
static void new_dir(char *dir, size_t n) {
    snprintf(dir, n, "%s/case%03d", g_tmp, g_case++);
    mkdir(dir, 0700);
}

static void rm_case(const char *dir) {
    static const char *names[] = {"config.json", "generation_config.json", "model.safetensors",
                                  "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors"};
    char p[1024];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void copy_config(const char *fixture, const char *dir) {
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/%s/config.json", DR_TEST_DATA, fixture);
    snprintf(b, sizeof b, "%s/config.json", dir);
    CHECK(copy_file(a, b), "copy %s", a);
    snprintf(a, sizeof a, "%s/%s/generation_config.json", DR_TEST_DATA, fixture);
    snprintf(b, sizeof b, "%s/generation_config.json", dir);
    copy_file(a, b);
}

/* A case dir holding fixture's config and tensors t[0..n). */
static void make_model(const char *fixture, const wt *t, int n, char *dir, size_t dn) {
    new_dir(dir, dn);
    copy_config(fixture, dir);
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    write_tensors(p, t, n);
}

/* Load dir expecting failure with `want` and every needle in the message. */
static int expect_load_fail(const char *what, const char *dir, dr_status want, const char *n1, const char *n2,
                            const char *n3) {
    dr_model *m = (dr_model *)&m; /* must be reset to NULL */
    dr_error_clear();
    dr_status st = dr_model_load(dir, &m);
    const char *msg = dr_last_error();
    int ok = st == want && m == NULL && msg[0] && (!n1 || strstr(msg, n1)) && (!n2 || strstr(msg, n2)) &&
             (!n3 || strstr(msg, n3));
    CHECK(ok, "%s: status %d (%s), want %d (%s); out %s; msg: %s", what, st, dr_status_str(st), want,
          dr_status_str(want), m ? "not NULL" : "NULL", msg);
    if (st == DR_OK && m != (dr_model *)&m)
        dr_model_free(m);
    return ok;
}

/* ---- logits ---- */

static float *eval_logits(dr_model *m, const int32_t *ids, int n, int n2) {
    const dr_model_info *info = dr_model_info_get(m);
    dr_session *s;
    if (dr_session_new(m, NULL, &s) != DR_OK) {
        CHECK(0, "session: %s", dr_last_error());
        return NULL;
    }
    float *out = malloc(2 * (size_t)info->n_vocab * sizeof *out);
    int ok = dr_session_eval(s, ids, n, DR_LOGITS_LAST, out) == DR_OK &&
             dr_session_eval(s, ids + n, n2, DR_LOGITS_LAST, out + info->n_vocab) == DR_OK;
    CHECK(ok, "eval: %s", dr_last_error());
    dr_session_free(s);
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

enum { AS_F32, AS_F32_UNALIGNED, AS_BF16_ODD, AS_SHARDS };
static const char *how_name[] = {"F32 (dr_st_write_f32)", "F32 with data at offset 2 mod 8",
                                 "BF16 with data at an odd offset", "F32 in 2 shards + index"};

static void test_positive_control(const char *fixture, int how, double tol) {
    wset w;
    if (!wset_load(fixture, &w))
        return;
    char dir[512], orig[1024], p[1024];
    if (how == AS_F32) {
        make_model(fixture, w.t, w.n, dir, sizeof dir);
    } else if (how == AS_SHARDS) {
        new_dir(dir, sizeof dir);
        copy_config(fixture, dir);
        int h = w.n / 2;
        snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
        write_tensors(p, w.t, h);
        snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
        write_tensors(p, w.t + h, w.n - h);
        json_t *wm = json_object();
        for (int i = 0; i < w.n; i++)
            json_object_set_new(wm, w.t[i].name,
                                json_string(i < h ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"));
        json_t *idx = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", wm);
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        CHECK(json_dump_file(idx, p, 0) == 0, "write index");
        json_decref(idx);
    } else {
        wt *c = wcopy(&w);
        for (int i = 0; i < w.n; i++)
            if (how == AS_BF16_ODD)
                snprintf(c[i].dtype, sizeof c[i].dtype, "BF16");
        new_dir(dir, sizeof dir);
        copy_config(fixture, dir);
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        write_tensors_at(p, c, w.n, how == AS_BF16_ODD ? 1 : 2);
        free(c);
    }
    snprintf(orig, sizeof orig, "%s/%s", DR_TEST_DATA, fixture);
    dr_model *a = NULL, *b = NULL;
    dr_status sa = dr_model_load(orig, &a);
    CHECK(sa == DR_OK, "load %s: %s", orig, dr_last_error());
    dr_status sb = dr_model_load(dir, &b);
    CHECK(sb == DR_OK, "load rewritten %s: %s", fixture, dr_last_error());
    if (sa == DR_OK && sb == DR_OK) {
        const dr_model_info *ia = dr_model_info_get(a), *ib = dr_model_info_get(b);
        CHECK(ia->n_params == ib->n_params && ia->n_vocab == ib->n_vocab && !strcmp(ia->layer_kinds, ib->layer_kinds),
              "%s: info differs after rewrite", fixture);
        CHECK(strcmp(ib->weight_dtype, how == AS_BF16_ODD ? "BF16" : "F32") == 0, "%s rewritten: weight dtype %s",
              fixture, ib->weight_dtype);
        const int32_t ids[] = {3, 17, 42, 7, 100, 255, 1, 64};
        float *la = eval_logits(a, ids, 6, 2), *lb = eval_logits(b, ids, 6, 2);
        if (la && lb) {
            double md = 0;
            int bad = 0;
            for (int i = 0; i < 2 * ia->n_vocab; i++) {
                double dd = fabs((double)la[i] - (double)lb[i]);
                if (!(dd <= md)) /* NaN counts */
                    md = dd;
                bad += !isfinite(la[i]) || !isfinite(lb[i]);
            }
            CHECK_SHOW(md <= tol && !bad,
                       "%s rewritten as %s: max |delta logit| over block + 2 single tokens = %.3g (tol %.0e), "
                       "%d non-finite",
                       fixture, how_name[how], md, tol, bad);
        }
        free(la);
        free(lb);
    }
    dr_model_free(a);
    dr_model_free(b);
    rm_case(dir);
    wset_free(&w);
}

/* ---- broken weights ---- */

static int needed(const char *name) {
    return strncmp(name, "model.visual.", 13) != 0 && strncmp(name, "mtp.", 4) != 0;
}

/* Drop every needed tensor in turn: each load fails naming that tensor. */
static void test_drop_each(const char *fixture) {
    wset w;
    if (!wset_load(fixture, &w))
        return;
    int tried = 0, good = 0;
    for (int i = 0; i < w.n; i++) {
        if (!needed(w.t[i].name))
            continue;
        wt *c = wcopy(&w);
        memmove(&c[i], &c[i + 1], (size_t)(w.n - i - 1) * sizeof *c);
        char dir[512], what[512];
        make_model(fixture, c, w.n - 1, dir, sizeof dir);
        snprintf(what, sizeof what, "%s without %s", fixture, w.t[i].name);
        good += expect_load_fail(what, dir, DR_ERR_FORMAT, w.t[i].name, "missing", NULL);
        tried++;
        rm_case(dir);
        free(c);
    }
    CHECK_SHOW(good == tried, "%s: dropped each of %d needed tensors: %d errors naming the tensor", fixture, tried,
               good);
    wset_free(&w);
}

/* Drop the last row (first dim - 1) of every needed tensor in turn. */
static void test_shrink_each(const char *fixture) {
    wset w;
    if (!wset_load(fixture, &w))
        return;
    int tried = 0, good = 0;
    for (int i = 0; i < w.n; i++) {
        if (!needed(w.t[i].name) || w.t[i].ndim == 0)
            continue;
        wt *c = wcopy(&w);
        c[i].shape[0]--;
        char dir[512], what[512], found[128];
        make_model(fixture, c, w.n, dir, sizeof dir);
        snprintf(what, sizeof what, "%s with %s shrunk", fixture, w.t[i].name);
        /* "[255,64]" for a 2-d tensor, "[63]" for a vector */
        int o = snprintf(found, sizeof found, "[%lld", (long long)c[i].shape[0]);
        for (int d = 1; d < c[i].ndim; d++)
            o += snprintf(found + o, sizeof found - (size_t)o, ",%lld", (long long)c[i].shape[d]);
        snprintf(found + o, sizeof found - (size_t)o, "]");
        good += expect_load_fail(what, dir, DR_ERR_SHAPE, w.t[i].name, found, "expected");
        tried++;
        rm_case(dir);
        free(c);
    }
    CHECK_SHOW(good == tried, "%s: shrank each of %d needed tensors: %d shape errors naming tensor and shape",
               fixture, tried, good);
    wset_free(&w);
}

/* One tensor changed: shape (ndim/shape given) and/or dtype. */
static void one_change(const char *fixture, const char *name, int ndim, const int64_t *shape, const char *dtype,
                       dr_status want, const char *n2, const char *n3) {
    wset w;
    if (!wset_load(fixture, &w))
        return;
    wt *c = wcopy(&w);
    int i = windex(c, w.n, name);
    CHECK(i >= 0, "%s has no %s", fixture, name);
    if (i >= 0) {
        if (shape) {
            CHECK(numel(&(wt){.ndim = ndim, .shape = {shape[0], ndim > 1 ? shape[1] : 0, ndim > 2 ? shape[2] : 0}}) <=
                      numel(&c[i]),
                  "test bug: %s grows", name);
            c[i].ndim = ndim;
            memcpy(c[i].shape, shape, (size_t)ndim * sizeof *shape);
        }
        if (dtype)
            snprintf(c[i].dtype, sizeof c[i].dtype, "%s", dtype);
        char dir[512], what[512];
        make_model(fixture, c, w.n, dir, sizeof dir);
        snprintf(what, sizeof what, "%s: %s changed (%s)", fixture, name, dtype ? dtype : "shape");
        expect_load_fail(what, dir, want, name, n2, n3);
        rm_case(dir);
    }
    free(c);
    wset_free(&w);
}

static void test_broken_weights(void) {
    const dr_status F = DR_ERR_FORMAT, S = DR_ERR_SHAPE, U = DR_ERR_UNSUPPORTED;
    const char *L = "model.language_model.";
    char n[256];
    /* a missing tensor */
    {
        wset w;
        if (wset_load("dense-f32", &w)) {
            wt *c = wcopy(&w);
            int i = windex(c, w.n, "model.language_model.layers.0.linear_attn.A_log");
            memmove(&c[i], &c[i + 1], (size_t)(w.n - i - 1) * sizeof *c);
            char dir[512];
            make_model("dense-f32", c, w.n - 1, dir, sizeof dir);
            expect_load_fail("dense-f32 without A_log", dir, F, "model.language_model.layers.0.linear_attn.A_log",
                             NULL, NULL);
            rm_case(dir);
            free(c);
            wset_free(&w);
        }
    }
    /* q_proj with a row dropped */
    snprintf(n, sizeof n, "%slayers.3.self_attn.q_proj.weight", L);
    one_change("dense-f32", n, 2, (int64_t[]){255, 64}, NULL, S, "shape [255,64], expected [256,64]", NULL);
    /* transposed matrix */
    snprintf(n, sizeof n, "%slayers.0.linear_attn.out_proj.weight", L);
    one_change("dense-f32", n, 2, (int64_t[]){96, 64}, NULL, S, "[96,64]", "[64,96]");
    /* wrong rank */
    snprintf(n, sizeof n, "%slayers.1.input_layernorm.weight", L);
    one_change("dense-f32", n, 2, (int64_t[]){1, 64}, NULL, S, "[1,64]", "[64]");
    snprintf(n, sizeof n, "%slayers.0.linear_attn.conv1d.weight", L);
    one_change("dense-f32", n, 2, (int64_t[]){160, 4}, NULL, S, "[160,4]", "[160,1,4]");
    snprintf(n, sizeof n, "%sembed_tokens.weight", L);
    one_change("dense-f32", n, 2, (int64_t[]){1000, 64}, NULL, S, "[1000,64]", "[1024,64]");
    /* unsupported dtypes where a weight is needed */
    snprintf(n, sizeof n, "%slayers.0.linear_attn.in_proj_qkv.weight", L);
    one_change("dense-f32", n, 0, NULL, "I32", U, "I32", NULL);
    snprintf(n, sizeof n, "%slayers.2.linear_attn.A_log", L);
    one_change("dense-f32", n, 0, NULL, "I32", U, "I32", NULL);
    snprintf(n, sizeof n, "%snorm.weight", L);
    one_change("dense-f32", n, 0, NULL, "F8_E4M3", U, "F8_E4M3", NULL);
    one_change("dense-f32", "lm_head.weight", 0, NULL, "U8", U, "U8", NULL);
    /* a tensor the model does not use may have any dtype */
    {
        wset w;
        if (wset_load("dense-f32", &w)) {
            wt *c = wcopy(&w);
            int i = windex(c, w.n, "model.visual.blocks.0.attn.proj.bias");
            CHECK(i >= 0, "dense-f32 has no visual tensor");
            if (i >= 0)
                snprintf(c[i].dtype, sizeof c[i].dtype, "I32");
            char dir[512];
            make_model("dense-f32", c, w.n, dir, sizeof dir);
            dr_model *m = NULL;
            CHECK(dr_model_load(dir, &m) == DR_OK, "unused I32 visual tensor rejected: %s", dr_last_error());
            dr_model_free(m);
            rm_case(dir);
            free(c);
            wset_free(&w);
        }
    }
    /* Qwen3-Next fused projections, per-expert tensors */
    one_change("next-f32", "model.layers.1.linear_attn.in_proj_qkvz.weight", 2, (int64_t[]){255, 64}, NULL, S,
               "[255,64]", "[256,64]");
    one_change("next-f32", "model.layers.0.linear_attn.in_proj_ba.weight", 2, (int64_t[]){4, 64}, NULL, S, "[4,64]",
               "[8,64]");
    one_change("next-f32", "model.layers.2.linear_attn.in_proj_ba.weight", 0, NULL, "I32", U, "I32", NULL);
    one_change("next-f32", "model.layers.2.mlp.gate.weight", 2, (int64_t[]){7, 64}, NULL, S, "[7,64]", "[8,64]");
    one_change("next-f32", "model.layers.3.mlp.shared_expert_gate.weight", 1, (int64_t[]){64}, NULL, S, "[64]",
               "[1,64]");
    /* Qwen3.5-MoE fused experts */
    one_change("moe-bf16-fused", "model.layers.0.mlp.experts.gate_up_proj", 3, (int64_t[]){8, 95, 96}, NULL, S,
               "[8,95,96]", "[8,96,96]");
    one_change("moe-bf16-fused", "model.layers.1.mlp.experts.down_proj", 3, (int64_t[]){7, 96, 48}, NULL, S,
               "[7,96,48]", "[8,96,48]");
    one_change("moe-bf16-fused", "model.layers.1.mlp.experts.down_proj", 0, NULL, "I32", U, "I32", NULL);
}

/* ---- broken directories / files ---- */

static void test_broken_files(void) {
    char dir[512], p[1024], src[1024];
    snprintf(src, sizeof src, "%s/dense-f32/model.safetensors", DR_TEST_DATA);

    /* missing config.json */
    new_dir(dir, sizeof dir);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK(copy_file(src, p), "copy model");
    expect_load_fail("no config.json", dir, DR_ERR_IO, "config.json", NULL, NULL);
    /* malformed config.json */
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, "{\"model_type\": \"qwen3_5\", \"text_config\": {");
    expect_load_fail("malformed config.json", dir, DR_ERR_FORMAT, "config.json", NULL, NULL);
    write_text(p, "{\"model_type\": \"qwen3_5\", \"hidden_size\": -64}");
    expect_load_fail("config.json with negative hidden_size", dir, DR_ERR_FORMAT, "config.json", "hidden_size",
                     NULL);
    rm_case(dir);

    /* no safetensors file */
    new_dir(dir, sizeof dir);
    copy_config("dense-f32", dir);
    expect_load_fail("no safetensors", dir, DR_ERR_IO, dir, "safetensors", NULL);

    /* truncated model.safetensors: several cut points */
    size_t size = 0;
    {
        FILE *f = fopen(src, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            size = (size_t)ftell(f);
            fclose(f);
        }
    }
    size_t cuts[] = {0, 4, 8, 100, 8808, size / 2, size - 1};
    unsigned char *whole = malloc(size);
    FILE *f = fopen(src, "rb");
    CHECK(f && fread(whole, 1, size, f) == size, "read %s", src);
    if (f)
        fclose(f);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        FILE *o = fopen(p, "wb");
        if (o) {
            fwrite(whole, 1, cuts[i], o);
            fclose(o);
        }
        char what[128];
        snprintf(what, sizeof what, "model.safetensors cut to %zu of %zu bytes", cuts[i], size);
        expect_load_fail(what, dir, DR_ERR_FORMAT, "model.safetensors", NULL, NULL);
    }
    /* header length field corrupted */
    whole[6] = 0x7f;
    FILE *o = fopen(p, "wb");
    if (o) {
        fwrite(whole, 1, size, o);
        fclose(o);
    }
    expect_load_fail("header length 2^55-ish", dir, DR_ERR_FORMAT, "model.safetensors", "header length", NULL);
    free(whole);

    /* config that does not match the weights */
    copy_file(src, p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_error_t je;
    json_t *cfg = json_load_file(p, 0, &je);
    json_object_set_new(json_object_get(cfg, "text_config"), "hidden_size", json_integer(128));
    json_dump_file(cfg, p, 0);
    expect_load_fail("config hidden_size 128 vs 64-wide weights", dir, DR_ERR_SHAPE, "embed_tokens.weight",
                     "[1024,64]", "[1024,128]");
    json_object_set_new(json_object_get(cfg, "text_config"), "hidden_size", json_integer(64));
    json_object_set_new(json_object_get(cfg, "text_config"), "num_hidden_layers", json_integer(5));
    json_object_set_new(json_object_get(cfg, "text_config"), "layer_types",
                        json_pack("[s,s,s,s,s]", "linear_attention", "linear_attention", "linear_attention",
                                  "full_attention", "linear_attention"));
    json_dump_file(cfg, p, 0);
    expect_load_fail("config with 5 layers vs 4 in the file", dir, DR_ERR_FORMAT, "layers.4.", "missing", NULL);
    /* the other layer kind than stored */
    json_object_set_new(json_object_get(cfg, "text_config"), "num_hidden_layers", json_integer(4));
    json_object_set_new(json_object_get(cfg, "text_config"), "layer_types",
                        json_pack("[s,s,s,s]", "full_attention", "linear_attention", "linear_attention",
                                  "full_attention"));
    json_dump_file(cfg, p, 0);
    expect_load_fail("layer 0 declared full attention but stored as GDN", dir, DR_ERR_FORMAT,
                     "layers.0.self_attn.q_proj.weight", NULL, NULL);
    /* tied: lm_head may be absent */
    json_decref(cfg);
    rm_case(dir);
    {
        wset w;
        if (wset_load("dense-f32", &w)) {
            wt *c = wcopy(&w);
            int i = windex(c, w.n, "lm_head.weight");
            memmove(&c[i], &c[i + 1], (size_t)(w.n - i - 1) * sizeof *c);
            make_model("dense-f32", c, w.n - 1, dir, sizeof dir);
            expect_load_fail("untied config without lm_head", dir, DR_ERR_FORMAT, "lm_head.weight", NULL, NULL);
            snprintf(p, sizeof p, "%s/config.json", dir);
            cfg = json_load_file(p, 0, &je);
            json_object_set_new(cfg, "tie_word_embeddings", json_true());
            json_dump_file(cfg, p, 0);
            json_decref(cfg);
            dr_model *m = NULL;
            dr_status st = dr_model_load(dir, &m);
            CHECK(st == DR_OK && dr_model_info_get(m)->tied_embeddings, "tied config without lm_head: %s",
                  dr_last_error());
            if (st == DR_OK) {
                float *lg = eval_logits(m, (const int32_t[]){3, 17, 42}, 2, 1);
                CHECK(lg != NULL, "tied model evaluates");
                free(lg);
            }
            dr_model_free(m);
            rm_case(dir);
            free(c);
            wset_free(&w);
        }
    }
}

/* ---- API misuse ---- */

static void test_api_misuse(void) {
    dr_model *m = (dr_model *)&m;
    dr_error_clear();
    CHECK(dr_model_load(NULL, &m) == DR_ERR_ARG && m == NULL && dr_last_error()[0], "load(NULL): %s",
          dr_last_error());
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/dense-f32", DR_TEST_DATA);
    if (dr_model_load(dir, &m) != DR_OK) {
        CHECK(0, "load %s: %s", dir, dr_last_error());
        return;
    }
    const int V = dr_model_info_get(m)->n_vocab;
    dr_session *s = (dr_session *)&s;
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 0;
    CHECK(dr_session_new(m, &p, &s) == DR_ERR_ARG && s == NULL, "n_ctx 0 accepted");
    p = dr_session_default_params();
    p.n_batch = 0;
    CHECK(dr_session_new(m, &p, &s) == DR_ERR_ARG && s == NULL, "n_batch 0 accepted");
    p = dr_session_default_params();
    p.n_ctx = -5;
    CHECK(dr_session_new(m, &p, &s) == DR_ERR_ARG, "n_ctx -5 accepted");
    p = dr_session_default_params();
    p.state_dtype = (dr_state_dtype)7;
    CHECK(dr_session_new(m, &p, &s) == DR_ERR_ARG, "state_dtype 7 accepted");
    CHECK(dr_session_new(NULL, NULL, &s) == DR_ERR_ARG && s == NULL, "NULL model accepted");

    p = dr_session_default_params();
    p.n_ctx = 8;
    p.n_batch = 4;
    dr_session *a = NULL, *b = NULL;
    if (dr_session_new(m, &p, &a) != DR_OK || dr_session_new(m, &p, &b) != DR_OK) {
        CHECK(0, "session: %s", dr_last_error());
        dr_session_free(a);
        dr_model_free(m);
        return;
    }
    float *la = malloc(8 * (size_t)V * sizeof *la), *lb = malloc(8 * (size_t)V * sizeof *lb);
    const int32_t prompt[] = {3, 17, 42};
    int32_t bad_ids[3][3] = {{3, V, 7}, {-1, 5, 6}, {1, 2, INT32_MAX}};
    struct {
        const char *what;
        const int32_t *ids;
        int n;
        dr_logits_mode mode;
        float *out;
        dr_status want;
    } cases[] = {
        {"id = n_vocab", bad_ids[0], 3, DR_LOGITS_LAST, la, DR_ERR_RANGE},
        {"id = -1", bad_ids[1], 3, DR_LOGITS_LAST, la, DR_ERR_RANGE},
        {"id = INT32_MAX", bad_ids[2], 3, DR_LOGITS_ALL, la, DR_ERR_RANGE},
        {"empty block", prompt, 0, DR_LOGITS_LAST, la, DR_ERR_ARG},
        {"negative n", prompt, -3, DR_LOGITS_LAST, la, DR_ERR_ARG},
        {"NULL ids", NULL, 1, DR_LOGITS_LAST, la, DR_ERR_ARG},
        {"NULL logits", prompt, 3, DR_LOGITS_LAST, NULL, DR_ERR_ARG},
        {"9 tokens, n_ctx 8", (const int32_t[]){1, 2, 3, 4, 5, 6, 7, 8, 9}, 9, DR_LOGITS_NONE, NULL, DR_ERR_RANGE},
        {"6 tokens at pos 3, n_ctx 8", (const int32_t[]){1, 2, 3, 4, 5, 6}, 6, DR_LOGITS_LAST, la, DR_ERR_RANGE},
    };
    /* before anything: pos 0 stays 0 */
    for (size_t i = 0; i < 8; i++) {
        dr_error_clear();
        dr_status st = dr_session_eval(a, cases[i].ids, cases[i].n, cases[i].mode, cases[i].out);
        CHECK(st == cases[i].want && dr_session_pos(a) == 0 && dr_last_error()[0],
              "eval %s at pos 0: status %d want %d, pos %d; msg %s", cases[i].what, st, cases[i].want,
              dr_session_pos(a), dr_last_error());
    }
    CHECK(dr_session_eval(a, prompt, 3, DR_LOGITS_NONE, NULL) == DR_OK && dr_session_pos(a) == 3, "prompt: %s",
          dr_last_error());
    CHECK(dr_session_eval(b, prompt, 3, DR_LOGITS_NONE, NULL) == DR_OK, "prompt b");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dr_error_clear();
        dr_status st = dr_session_eval(a, cases[i].ids, cases[i].n, cases[i].mode, cases[i].out);
        CHECK(st == cases[i].want && dr_session_pos(a) == 3 && dr_last_error()[0],
              "eval %s at pos 3: status %d want %d, pos %d; msg %s", cases[i].what, st, cases[i].want,
              dr_session_pos(a), dr_last_error());
    }
    CHECK(strstr(dr_last_error(), "8") != NULL, "context error does not mention n_ctx: %s", dr_last_error());
    /* the failed calls left the state alone: a continues exactly like b */
    const int32_t next[] = {9, 11, 13, 15, 19};
    CHECK(dr_session_eval(a, next, 5, DR_LOGITS_LAST, la) == DR_OK && dr_session_pos(a) == 8, "fill a: %s",
          dr_last_error());
    CHECK(dr_session_eval(b, next, 5, DR_LOGITS_LAST, lb) == DR_OK, "fill b: %s", dr_last_error());
    double md = 0;
    for (int i = 0; i < V; i++)
        md = fmax(md, fabs((double)la[i] - (double)lb[i]));
    CHECK_SHOW(md == 0.0, "logits after rejected calls vs a clean session: max |delta| = %g (want 0)", md);
    /* full context: one more token is refused, pos stays 8 */
    dr_error_clear();
    dr_status st = dr_session_eval(a, next, 1, DR_LOGITS_LAST, la);
    CHECK(st == DR_ERR_RANGE && dr_session_pos(a) == 8 && dr_last_error()[0], "eval at full context: st %d pos %d",
          st, dr_session_pos(a));
    /* reset gives the room back */
    dr_session_reset(a);
    CHECK(dr_session_pos(a) == 0 && dr_session_eval(a, next, 1, DR_LOGITS_LAST, la) == DR_OK,
          "eval after reset: %s", dr_last_error());
    /* GDN state of a non-GDN layer */
    float *rec = malloc(1 << 16);
    CHECK(dr_session_gdn_state(a, 3, rec, NULL) == DR_ERR_ARG, "gdn_state of the attention layer accepted");
    CHECK(dr_session_gdn_state(a, -1, rec, NULL) == DR_ERR_ARG, "gdn_state of layer -1 accepted");
    CHECK(dr_session_gdn_state(a, 4, rec, NULL) == DR_ERR_ARG, "gdn_state of layer 4 accepted");
    CHECK(dr_session_gdn_state(a, 0, NULL, NULL) == DR_OK, "gdn_state with NULL buffers: %s", dr_last_error());
    free(rec);
    free(la);
    free(lb);
    dr_session_free(a);
    dr_session_free(b);
    dr_model_free(m);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dr_test_model_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    clock_t t0 = clock();
    test_positive_control("dense-f32", AS_F32, 1e-5);
    test_positive_control("next-f32", AS_F32, 1e-5);
    test_positive_control("moe-bf16-fused", AS_F32, 1e-5);
    test_positive_control("moe-bf16", AS_F32, 1e-5);
    test_positive_control("next-f32", AS_F32_UNALIGNED, 1e-5);
    test_positive_control("moe-bf16", AS_BF16_ODD, 1e-5);
    test_positive_control("moe-bf16-fused", AS_BF16_ODD, 1e-5);
    test_positive_control("long-bf16", AS_BF16_ODD, 1e-5);
    test_positive_control("dense-f32", AS_SHARDS, 1e-5);
    test_broken_weights();
    test_broken_files();
    test_api_misuse();
    test_drop_each("dense-f32");
    test_drop_each("next-f32");
    test_shrink_each("dense-f32");
    printf("cpu time %.1f s\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    rmdir(g_tmp);
    return TEST_DONE();
}
