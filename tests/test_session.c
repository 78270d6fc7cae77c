/* tests/test_session.c - session semantics: clone and reset, multi-turn
 * blocks on top of existing state, and independence from n_batch. */
#include "deltarun.h"
#include "golden_util.h"
#include "test.h"
#include "util/argmax.h"

#define TOL 1e-4f

static dr_model *g_m;
static int g_V;

static dr_session *session(int n_batch) {
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 512;
    p.n_batch = n_batch;
    dr_session *s = NULL;
    CHECK(dr_session_new(g_m, &p, &s) == DR_OK, "%s", dr_last_error());
    return s;
}

/* logits of all positions of ids, evaluated in blocks of the given sizes */
static float *eval_blocks(dr_session *s, const int32_t *ids, const int *sizes, int n_sizes) {
    int T = 0;
    for (int i = 0; i < n_sizes; i++)
        T += sizes[i];
    float *out = malloc((size_t)T * g_V * sizeof *out);
    int at = 0;
    for (int i = 0; i < n_sizes; i++) {
        CHECK(dr_session_eval(s, ids + at, sizes[i], DR_LOGITS_ALL, out + (size_t)at * g_V) == DR_OK, "%s",
              dr_last_error());
        at += sizes[i];
    }
    return out;
}

static void test_multiturn(const int32_t *ids, int T) {
    int whole[] = {T}, turns[] = {40, 1, 30, T - 71}, tiny[] = {T};
    dr_session *a = session(512), *b = session(512), *c = session(7);
    float *la = eval_blocks(a, ids, whole, 1), *lb = eval_blocks(b, ids, turns, 4), *lc = eval_blocks(c, ids, tiny, 1);
    float e1 = max_abs_diff(la, lb, (size_t)T * g_V), e2 = max_abs_diff(la, lc, (size_t)T * g_V);
    CHECK_SHOW(e1 <= TOL, "one block vs turns of 40+1+30+%d tokens on top of state: max |d| %.2g (tol %.0e)", T - 71,
               e1, TOL);
    CHECK_SHOW(e2 <= TOL, "n_batch 512 vs 7: max |d| %.2g (tol %.0e)", e2, TOL);
    CHECK(dr_session_pos(b) == T, "position %d after %d tokens", dr_session_pos(b), T);
    free(la), free(lb), free(lc);
    dr_session_free(a), dr_session_free(b), dr_session_free(c);
}

static void test_clone_reset(const int32_t *ids, int T) {
    dr_session *a = session(512), *b = NULL;
    float *l1 = malloc((size_t)g_V * 4), *l2 = malloc((size_t)g_V * 4), *l3 = malloc((size_t)g_V * 4);
    dr_session_eval(a, ids, T - 5, DR_LOGITS_NONE, NULL);
    CHECK(dr_session_clone(a, &b) == DR_OK, "clone: %s", dr_last_error());
    CHECK(dr_session_pos(b) == T - 5, "clone position %d", dr_session_pos(b));
    dr_session_eval(a, ids + T - 5, 5, DR_LOGITS_LAST, l1);
    dr_session_eval(b, ids + T - 5, 5, DR_LOGITS_LAST, l2);
    CHECK_SHOW(max_abs_diff(l1, l2, g_V) == 0.0f, "clone continues identically: max |d| %.2g (exact)",
               max_abs_diff(l1, l2, g_V));
    dr_session_reset(a);
    CHECK(dr_session_pos(a) == 0, "reset position %d", dr_session_pos(a));
    dr_session_eval(a, ids, T - 5, DR_LOGITS_NONE, NULL); /* same blocks as before the reset */
    dr_session_eval(a, ids + T - 5, 5, DR_LOGITS_LAST, l3);
    CHECK_SHOW(max_abs_diff(l1, l3, g_V) == 0.0f, "reset then re-evaluate: max |d| %.2g (exact)",
               max_abs_diff(l1, l3, g_V));
    /* a clone is independent: advancing it leaves the original alone */
    dr_session_eval(b, ids, 3, DR_LOGITS_NONE, NULL);
    CHECK(dr_session_pos(a) == T && dr_session_pos(b) == T + 3, "positions %d / %d", dr_session_pos(a),
          dr_session_pos(b));
    free(l1), free(l2), free(l3);
    dr_session_free(a), dr_session_free(b);
}

static void test_bad_calls(void) {
    dr_session_params p = dr_session_default_params();
    p.n_ctx = 8;
    dr_session *s = NULL;
    CHECK(dr_session_new(g_m, &p, &s) == DR_OK, "%s", dr_last_error());
    int32_t ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, bad = -1;
    float *l = malloc((size_t)g_V * 4);
    CHECK(dr_session_eval(s, ids, 9, DR_LOGITS_LAST, l) == DR_ERR_RANGE, "context overflow not refused");
    CHECK(dr_session_eval(s, &bad, 1, DR_LOGITS_LAST, l) == DR_ERR_RANGE, "negative id not refused");
    CHECK(dr_session_eval(s, ids, 0, DR_LOGITS_LAST, l) == DR_ERR_ARG, "empty block not refused");
    CHECK(dr_session_eval(s, ids, 2, DR_LOGITS_LAST, NULL) == DR_ERR_ARG, "missing logits buffer not refused");
    CHECK(dr_session_pos(s) == 0, "refused calls moved the position to %d", dr_session_pos(s));
    CHECK(dr_session_gdn_state(s, 3, NULL, NULL) == DR_ERR_ARG, "attention layer 3 accepted as a GDN layer");
    free(l);
    dr_session_free(s);
}

/* eval_greedy picks what the logits pick (the CPU backend has no argmax
 * slot: the download-and-scan fallback), also over a prefix of the ids. */
static void test_greedy(const int32_t *ids, int T) {
    dr_session *a = session(16), *b = session(16);
    float *l = malloc((size_t)g_V * sizeof *l);
    int32_t na = -1, nb = -1, same = 0, steps = 12;
    CHECK(dr_session_eval(a, ids, T, DR_LOGITS_LAST, l) == DR_OK, "%s", dr_last_error());
    CHECK(dr_session_eval_greedy(b, ids, T, 0, &nb) == DR_OK, "%s", dr_last_error());
    for (int i = 0; i < steps; i++) {
        na = dr_argmax_f32(l, g_V);
        same += na == nb;
        const int32_t pa = na, pb = nb;
        CHECK(dr_session_eval(a, &pa, 1, DR_LOGITS_LAST, l) == DR_OK, "%s", dr_last_error());
        CHECK(dr_session_eval_greedy(b, &pb, 1, 0, &nb) == DR_OK, "%s", dr_last_error());
    }
    CHECK_SHOW(same == steps, "eval_greedy: %d of %d greedy tokens equal the argmax of the logits", same, steps);
    const int nc = g_V / 3;
    CHECK(dr_session_eval_greedy(b, &nb, 1, nc, &nb) == DR_OK && nb >= 0 && nb < nc,
          "eval_greedy over the first %d ids picked %d", nc, (int)nb);
    CHECK(dr_session_eval_greedy(b, ids, 1, g_V + 1, &nb) == DR_ERR_ARG, "more candidates than the vocabulary");
    CHECK(dr_session_eval_greedy(b, ids, 1, 0, NULL) == DR_ERR_ARG, "no place for the token not refused");
    free(l);
    dr_session_free(a);
    dr_session_free(b);
}

int main(void) {
    CHECK(dr_model_load(DR_TEST_DATA "/dense-f32", &g_m) == DR_OK, "%s", dr_last_error());
    if (t_failed)
        return TEST_DONE();
    g_V = dr_model_info_get(g_m)->n_vocab;
    dr_st_file g;
    CHECK(dr_st_open(DR_TEST_DATA "/dense-f32/golden.safetensors", &g) == DR_OK, "%s", dr_last_error());
    int32_t *ids;
    int T = golden_ids(&g, "p1.input_ids", &ids);
    CHECK(T == 100, "prompt 1 has %d ids", T);
    test_multiturn(ids, T);
    test_clone_reset(ids, T);
    test_bad_calls();
    test_greedy(ids, 40);
    free(ids);
    dr_st_close(&g);
    dr_model_free(g_m);
    return TEST_DONE();
}
