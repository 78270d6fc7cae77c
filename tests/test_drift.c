/* tests/test_drift.c - the reason this project exists, as a test.
 *
 * On the long-bf16 fixture (1024 tokens: a 16-token block, then 1008 single
 * recurrent steps) the fp32 recurrent state must stay within 1e-3 of the
 * reference at every position, and the diagnostic --state-dtype bf16 (state
 * rounded to bf16 after every step, the bug other engines shipped) must be
 * at least 10x worse: proof that the suite would catch that bug. */
#include "deltarun.h"
#include "golden_util.h"
#include "test.h"

static float run(dr_model *m, const int32_t *ids, int T, int split, dr_state_dtype sd, const float *want) {
    const int V = dr_model_info_get(m)->n_vocab;
    dr_session_params p = dr_session_default_params();
    p.n_ctx = T;
    p.state_dtype = sd;
    dr_session *s;
    if (dr_session_new(m, &p, &s) != DR_OK)
        return INFINITY;
    float *got = malloc((size_t)T * V * sizeof *got);
    dr_session_eval(s, ids, split, DR_LOGITS_ALL, got);
    for (int t = split; t < T; t++)
        dr_session_eval(s, ids + t, 1, DR_LOGITS_LAST, got + (size_t)t * V);
    float e = max_abs_diff(got, want, (size_t)T * V);
    free(got);
    dr_session_free(s);
    return e;
}

int main(void) {
    dr_model *m;
    dr_st_file g;
    CHECK(dr_model_load(DR_TEST_DATA "/long-bf16", &m) == DR_OK, "%s", dr_last_error());
    CHECK(dr_st_open(DR_TEST_DATA "/long-bf16/golden.safetensors", &g) == DR_OK, "%s", dr_last_error());
    if (t_failed)
        return TEST_DONE();
    int32_t *ids;
    float *want;
    int T = golden_ids(&g, "p0.input_ids", &ids);
    golden_f32(&g, "p0.logits_incremental", &want);
    const int split = 16;
    float e32 = run(m, ids, T, split, DR_STATE_F32, want);
    float e16 = run(m, ids, T, split, DR_STATE_BF16, want);
    CHECK_SHOW(e32 <= 1e-3f, "fp32 state, %d positions: max |dlogit| %.3g (tol 1e-3)", T, e32);
    CHECK_SHOW(e16 >= 10.0f * e32, "bf16 state (diagnostic): max |dlogit| %.3g = %.1fx the fp32 error (need >= 10x)",
               e16, e16 / e32);
    free(ids);
    free(want);
    dr_st_close(&g);
    dr_model_free(m);
    return TEST_DONE();
}
