/* test_config_fuzz.c - every field of a config.json replaced by a value of
 * another type or range, or removed; then the model is loaded and, where
 * that works, evaluated for a few tokens. The files: three fixtures'
 * config.json, one generation_config.json, and the config.json of a 4-bit
 * MLX conversion (its "quantization" block with per-module overrides).
 *
 * What must hold for every case: no crash and no sanitizer report (the
 * ASan + UBSan pass runs this test too), and a refusal, at load or at eval,
 * carries a message naming the case's directory, i.e. the file at fault.
 * Many mutations legitimately load (fields the engine does not read, such as
 * token ids or the vision tower's, or values still in range); the counts
 * are printed. The controls: the unmutated copy must give the fixture's
 * logits bit for bit, and each fixture must see both outcomes.
 *
 * vision_config is left alone (the text model never reads it), which keeps
 * the case count, and the time under ASan, down.
 */
#include "deltarun.h"
#include "quant/convert.h"
#include "util/status.h"

#include "test.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DEPTH 8
#define MAX_PATHS 512

typedef struct {
    int depth;
    const char *key[MAX_DEPTH]; /* object key, or NULL for an array index */
    size_t idx[MAX_DEPTH];
} jpath;

typedef struct {
    jpath p[MAX_PATHS];
    int n;
} jpaths;

static char g_tmp[256];

/* Every node below the root (objects and arrays too: they get replaced
 * whole), depth first. */
static void collect(json_t *v, jpath *cur, jpaths *out) {
    if (cur->depth > 0 && out->n < MAX_PATHS)
        out->p[out->n++] = *cur;
    if (cur->depth == MAX_DEPTH)
        return;
    if (json_is_object(v)) {
        const char *k;
        json_t *c;
        json_object_foreach(v, k, c) {
            if (cur->depth == 0 && !strcmp(k, "vision_config"))
                continue;
            cur->key[cur->depth] = k;
            cur->depth++;
            collect(c, cur, out);
            cur->depth--;
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            cur->key[cur->depth] = NULL;
            cur->idx[cur->depth] = i;
            cur->depth++;
            collect(json_array_get(v, i), cur, out);
            cur->depth--;
        }
    }
}

static void path_str(const jpath *p, char *buf, size_t n) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < p->depth && o < n; i++)
        o += (size_t)(p->key[i] ? snprintf(buf + o, n - o, ".%s", p->key[i])
                                : snprintf(buf + o, n - o, "[%zu]", p->idx[i]));
}

/* A copy of root with the node at p replaced by v (a new reference, NULL =
 * removed). */
static json_t *mutated(json_t *root, const jpath *p, json_t *v) {
    json_t *c = json_deep_copy(root), *parent = c;
    for (int i = 0; i < p->depth - 1; i++)
        parent = p->key[i] ? json_object_get(parent, p->key[i]) : json_array_get(parent, p->idx[i]);
    const int last = p->depth - 1;
    if (p->key[last]) {
        if (v)
            json_object_set_new(parent, p->key[last], v);
        else
            json_object_del(parent, p->key[last]);
    } else {
        if (v)
            json_array_set_new(parent, p->idx[last], v);
        else
            json_array_remove(parent, p->idx[last]);
    }
    return c;
}

#define N_VALUES 13
/* The replacement values; index 0 removes the field. */
static json_t *value(int i) {
    switch (i) {
    case 0: return NULL;
    case 1: return json_null();
    case 2: return json_integer(0);
    case 3: return json_integer(-1);
    case 4: return json_integer(3);
    case 5: return json_integer(1ll << 40);
    case 6: return json_real(0.5);
    case 7: return json_real(-1e300);
    case 8: return json_string("x");
    case 9: return json_true();
    case 10: return json_array();
    case 11: return json_object();
    default: return json_pack("[i,i]", 1, 1);
    }
}

/* Symlinks in dir to every file of src but `file`. */
static void link_fixture(const char *src, const char *file, const char *dir) {
    char a[2048], b[2048];
    DIR *d = opendir(src);
    CHECK(d != NULL, "open %s", src);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && strcmp(e->d_name, file) != 0) {
            snprintf(a, sizeof a, "%s/%s", src, e->d_name);
            snprintf(b, sizeof b, "%s/%s", dir, e->d_name);
            CHECK(symlink(a, b) == 0, "symlink %s", b);
        }
    closedir(d);
}

static void unlink_all(const char *dir) {
    DIR *d = opendir(dir);
    char p[2048];
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* Last-position logits of ids {1, 2, 3} then {4} into out (2 x n_vocab
 * floats, malloc'ed); DR_OK or the failing call's status. */
static dr_status eval(dr_model *m, float **out) {
    const dr_model_info *info = dr_model_info_get(m);
    const int32_t ids[4] = {1, 2, 3, 4};
    dr_session *s = NULL;
    *out = NULL;
    dr_status st = dr_session_new(m, NULL, &s);
    if (st != DR_OK)
        return st;
    *out = malloc(2 * (size_t)info->n_vocab * sizeof **out);
    if (!*out)
        st = DR_ERR_NOMEM;
    if (st == DR_OK)
        st = dr_session_eval(s, ids, 3, DR_LOGITS_LAST, *out);
    if (st == DR_OK)
        st = dr_session_eval(s, ids + 3, 1, DR_LOGITS_LAST, *out + info->n_vocab);
    dr_session_free(s);
    return st;
}

/* One thread: the models are tiny, and a pool per case would cost more
 * than the case. */
static dr_status load(const char *dir, dr_model **m) {
    dr_model_params mp = dr_model_default_params();
    mp.n_threads = 1;
    return dr_model_load_ex(dir, &mp, m);
}

typedef struct {
    int loaded, refused, eval_refused, silent; /* silent: refused without naming the directory */
} tally;

/* Load dir (and evaluate it when it loads); a refusal must name dir. */
static void one_case(const char *dir, const char *what, tally *t) {
    dr_model *m = NULL;
    dr_error_clear();
    dr_status st = load(dir, &m);
    if (st != DR_OK) {
        t->refused++;
        if (!strstr(dr_last_error(), dir)) {
            t->silent++;
            CHECK(0, "%s: refused without naming the directory: %s", what, dr_last_error());
        }
        return;
    }
    float *logits = NULL;
    dr_error_clear();
    st = eval(m, &logits);
    if (st == DR_OK) {
        t->loaded++;
    } else {
        t->eval_refused++;
        CHECK(dr_last_error()[0] != 0, "%s: eval failed (%s) without a message", what, dr_status_str(st));
    }
    free(logits);
    dr_model_free(m);
}

static void write_config(json_t *cfg, const char *file, const char *dir) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    CHECK(json_dump_file(cfg, p, JSON_COMPACT) == 0, "write %s", p);
}

/* The unmutated copy gives the logits of src exactly. */
static void control(const char *fixture, const char *src, const char *dir) {
    dr_model *a = NULL, *b = NULL;
    float *la = NULL, *lb = NULL;
    int ok = load(src, &a) == DR_OK && load(dir, &b) == DR_OK && eval(a, &la) == DR_OK &&
             eval(b, &lb) == DR_OK;
    CHECK(ok, "%s control: %s", fixture, dr_last_error());
    if (ok) {
        const size_t n = 2 * (size_t)dr_model_info_get(a)->n_vocab;
        CHECK_SHOW(!memcmp(la, lb, n * sizeof *la), "%s: the unmutated copy's logits equal the fixture's (%zu values)",
                   fixture, n);
    }
    free(la);
    free(lb);
    dr_model_free(a);
    dr_model_free(b);
}

/* Every node of `file` (config.json or generation_config.json) of the
 * model directory src through every value; fixture labels the output. */
static void fuzz_dir(const char *fixture, const char *src, const char *file) {
    char path[1024], dir[512];
    snprintf(path, sizeof path, "%s/%s", src, file);
    snprintf(dir, sizeof dir, "%s/case", g_tmp);
    json_t *root = json_load_file(path, 0, NULL);
    CHECK(root != NULL, "read %s", path);
    if (!root || mkdir(dir, 0700) != 0) {
        json_decref(root);
        return;
    }
    link_fixture(src, file, dir);
    write_config(root, file, dir);
    control(fixture, src, dir);

    static jpaths paths; /* large: not on the stack */
    jpath cur = {0};
    paths.n = 0;
    collect(root, &cur, &paths);
    tally t = {0};
    for (int i = 0; i < paths.n; i++)
        for (int v = 0; v < N_VALUES; v++) {
            char what[512], ps[400];
            path_str(&paths.p[i], ps, sizeof ps);
            snprintf(what, sizeof what, "%s %s%s = value %d", fixture, file, ps, v);
            json_t *c = mutated(root, &paths.p[i], value(v));
            write_config(c, file, dir);
            json_decref(c);
            one_case(dir, what, &t);
        }
    CHECK_SHOW(t.silent == 0 && t.loaded > 0 && t.refused > 0,
               "%s %s: %d fields x %d values: %d loaded and evaluated, %d refused at load, %d at eval, %d "
               "refusals without the directory (want 0; both outcomes seen)",
               fixture, file, paths.n, N_VALUES, t.loaded, t.refused, t.eval_refused, t.silent);
    unlink_all(dir);
    json_decref(root);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dr_test_cfgfuzz_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    static const char *fx[] = {"dense-f32", "moe-bf16", "next-f32"};
    char src[1024];
    for (int i = 0; i < 3; i++) {
        snprintf(src, sizeof src, "%s/%s", DR_TEST_DATA, fx[i]);
        fuzz_dir(fx[i], src, "config.json");
    }
    snprintf(src, sizeof src, "%s/%s", DR_TEST_DATA, "dense-f32");
    fuzz_dir("dense-f32", src, "generation_config.json");
    /* a 4-bit MLX conversion: its "quantization" block and overrides */
    snprintf(src, sizeof src, "%s/%s", DR_TEST_DATA, "moe-bf16");
    char q4[512];
    snprintf(q4, sizeof q4, "%s/q4", g_tmp);
    dr_convert_opts o = {.in_dir = src, .out_dir = q4, .bits = 4, .group_size = 32, .n_threads = 1};
    CHECK(dr_quant_convert(&o, NULL) == DR_OK, "convert %s: %s", src, dr_last_error());
    fuzz_dir("moe-bf16 q4", q4, "config.json");
    unlink_all(q4);
    rmdir(g_tmp);
    return TEST_DONE();
}
