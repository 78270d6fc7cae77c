/* tests/test_golden.c - one model fixture against the transformers goldens.
 *
 * Usage: test_golden FIXTURE_DIR. For every prompt: logits of the whole
 * prompt as one block (chunked GDN path), logits with the fixture's split
 * (block, then one token at a time: the recurrent path), every GDN layer's
 * recurrent and conv state after the prompt, and the greedy continuation
 * (exact). Tolerance: max |delta logit| <= 1e-3.
 */
#include "deltarun.h"
#include "golden_util.h"
#include "test.h"

#include <string.h>

#define TOL 1e-3f

static const char *g_dir;
static dr_model *g_model;
static dr_st_file g_gold;

static dr_session *new_session(void) {
    dr_session *s = NULL;
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 2048;
    if (dr_session_new(g_model, &p, &s) != DR_OK)
        printf("session: %s\n", dr_last_error());
    return s;
}

static void check_full(int pi, const int32_t *ids, int T, dr_session *s) {
    const int V = dr_model_info_get(g_model)->n_vocab;
    char name[128];
    float *want, *got = malloc((size_t)T * V * sizeof *got);
    snprintf(name, sizeof name, "p%d.logits_full", pi);
    size_t n = golden_f32(&g_gold, name, &want);
    CHECK(n == (size_t)T * V, "%s: golden has %zu values, expected %d", name, n, T * V);
    dr_status st = dr_session_eval(s, ids, T, DR_LOGITS_ALL, got);
    CHECK(st == DR_OK, "eval: %s", dr_last_error());
    if (n == (size_t)T * V) {
        float e = max_abs_diff(got, want, n);
        CHECK_SHOW(e <= TOL, "%s p%d logits_full (T=%d): max |dlogit| %.3g (tol %.0e)", g_dir, pi, T, e, TOL);
    }
    free(want);
    free(got);
}

static void check_states(int pi, dr_session *s) {
    const dr_model_info *in = dr_model_info_get(g_model);
    const size_t rn = (size_t)in->n_v_heads * in->d_k * in->d_v;
    const size_t cn = (size_t)(2 * in->n_k_heads * in->d_k + in->n_v_heads * in->d_v) * in->d_conv;
    float *rec = malloc(rn * sizeof *rec), *conv = malloc(cn * sizeof *conv);
    float worst_r = 0.0f, worst_c = 0.0f;
    int layers = 0;
    for (int l = 0; l < in->n_layers; l++) {
        if (in->layer_kinds[l] != 'G')
            continue;
        char name[128];
        float *wr, *wc;
        snprintf(name, sizeof name, "p%d.state.layer%d.recurrent_state", pi, l);
        size_t nr = golden_f32(&g_gold, name, &wr);
        snprintf(name, sizeof name, "p%d.state.layer%d.conv_state", pi, l);
        size_t nc = golden_f32(&g_gold, name, &wc);
        CHECK(nr == rn && nc == cn, "layer %d: golden state sizes %zu/%zu, expected %zu/%zu", l, nr, nc, rn, cn);
        CHECK(dr_session_gdn_state(s, l, rec, conv) == DR_OK, "gdn_state: %s", dr_last_error());
        if (nr == rn && nc == cn) {
            float er = max_abs_diff(rec, wr, rn), ec = max_abs_diff(conv, wc, cn);
            worst_r = er > worst_r ? er : worst_r;
            worst_c = ec > worst_c ? ec : worst_c;
            layers++;
        }
        free(wr);
        free(wc);
    }
    CHECK_SHOW(worst_r <= TOL && layers > 0, "%s p%d recurrent state (%d layers): max |d| %.3g (tol %.0e)", g_dir,
               pi, layers, worst_r, TOL);
    CHECK_SHOW(worst_c <= TOL && layers > 0, "%s p%d conv state: max |d| %.3g (tol %.0e)", g_dir, pi, worst_c, TOL);
    free(rec);
    free(conv);
}

/* Greedy continuation from a session that has just evaluated the prompt. */
static void check_greedy(int pi, const int32_t *ids, int T) {
    const int V = dr_model_info_get(g_model)->n_vocab;
    char name[128];
    int32_t *want;
    snprintf(name, sizeof name, "p%d.greedy", pi);
    int n = golden_ids(&g_gold, name, &want);
    CHECK(n > 0, "%s missing", name);
    dr_session *s = new_session();
    float *logits = malloc((size_t)V * sizeof *logits);
    dr_session_eval(s, ids, T, DR_LOGITS_LAST, logits);
    int match = 0;
    for (int i = 0; i < n; i++) {
        int32_t best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        if (best != want[i]) {
            printf("  greedy token %d: got %d, expected %d\n", i, (int)best, (int)want[i]);
            break;
        }
        match++;
        dr_session_eval(s, &best, 1, DR_LOGITS_LAST, logits);
    }
    CHECK_SHOW(match == n, "%s p%d greedy: %d/%d tokens identical", g_dir, pi, match, n);
    free(logits);
    free(want);
    dr_session_free(s);
}

static void check_incremental(int pi, const int32_t *ids, int T, int split) {
    const int V = dr_model_info_get(g_model)->n_vocab;
    char name[128];
    float *want, *got = malloc((size_t)T * V * sizeof *got);
    snprintf(name, sizeof name, "p%d.logits_incremental", pi);
    size_t n = golden_f32(&g_gold, name, &want);
    CHECK(n == (size_t)T * V, "%s: %zu values", name, n);
    dr_session *s = new_session();
    CHECK(dr_session_eval(s, ids, split, DR_LOGITS_ALL, got) == DR_OK, "eval: %s", dr_last_error());
    for (int t = split; t < T; t++)
        dr_session_eval(s, ids + t, 1, DR_LOGITS_LAST, got + (size_t)t * V);
    if (n == (size_t)T * V) {
        float e = max_abs_diff(got, want, n);
        CHECK_SHOW(e <= TOL, "%s p%d logits_incremental (split %d, %d single steps): max |dlogit| %.3g (tol %.0e)",
                   g_dir, pi, split, T - split, e, TOL);
    }
    dr_session_free(s);
    free(want);
    free(got);
}

static int prompt_split(json_t *root, int pi) {
    json_t *p = json_array_get(json_object_get(root, "prompts"), (size_t)pi);
    return (int)json_integer_value(json_object_get(p, "split"));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        printf("usage: test_golden FIXTURE_DIR\n");
        return 2;
    }
    g_dir = argv[1];
    char path[1024];
    const char *base = strrchr(g_dir, '/');
    g_dir = base ? base + 1 : g_dir;
    dr_status st = dr_model_load(argv[1], &g_model);
    CHECK(st == DR_OK, "load %s: %s", argv[1], dr_last_error());
    if (st != DR_OK)
        return TEST_DONE();
    snprintf(path, sizeof path, "%s/golden.safetensors", argv[1]);
    CHECK(dr_st_open(path, &g_gold) == DR_OK, "%s", dr_last_error());
    snprintf(path, sizeof path, "%s/golden.json", argv[1]);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    CHECK(root != NULL, "%s: %s", path, jerr.text);
    size_t n_prompts = json_array_size(json_object_get(root, "prompts"));
    CHECK(n_prompts > 0, "no prompts in %s", path);
    for (int pi = 0; pi < (int)n_prompts; pi++) {
        char name[64];
        int32_t *ids;
        snprintf(name, sizeof name, "p%d.input_ids", pi);
        int T = golden_ids(&g_gold, name, &ids);
        CHECK(T > 0, "%s missing", name);
        dr_session *s = new_session();
        check_full(pi, ids, T, s);
        check_states(pi, s);
        dr_session_free(s);
        check_incremental(pi, ids, T, prompt_split(root, pi));
        check_greedy(pi, ids, T);
        free(ids);
    }
    json_decref(root);
    dr_st_close(&g_gold);
    dr_model_free(g_model);
    return TEST_DONE();
}
