/* tests/test_gdn.c - the chunked Gated DeltaNet form against the per-token
 * recurrence on random inputs: T not a multiple of 64, a non-zero initial
 * state, Hv > Hk (grouped v heads), dk != dv. Also the decay extremes
 * (g = 0 and very strong decay) and the conv state sliding window. */
#include "golden_util.h"
#include "ops/ops.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 0x12345678abcdefull;
static float urand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) / 8388608.0f - 1.0f;
}

/* g_scale: decay logs are drawn from [-g_scale, 0]. */
static void compare(const char *label, dr_gdn_dims d, int T, float g_scale, float tol) {
    const dr_ops *ops = dr_ops_cpu_ref();
    const int C = 2 * d.n_k_heads * d.d_k + d.n_v_heads * d.d_v, Hv = d.n_v_heads;
    const size_t sn = (size_t)Hv * d.d_k * d.d_v;
    float *qkv = malloc((size_t)T * C * 4), *beta = malloc((size_t)T * Hv * 4), *g = malloc((size_t)T * Hv * 4);
    float *s1 = malloc(sn * 4), *s2 = malloc(sn * 4);
    float *o1 = malloc((size_t)T * Hv * d.d_v * 4), *o2 = malloc((size_t)T * Hv * d.d_v * 4);
    float *ws = malloc(dr_gdn_ws_floats(&d) * 4);
    for (int i = 0; i < T * C; i++)
        qkv[i] = urand();
    for (int i = 0; i < T * Hv; i++) {
        beta[i] = 0.5f + 0.5f * urand() * 0.99f;
        g[i] = -g_scale * 0.5f * (urand() + 1.0f);
    }
    for (size_t i = 0; i < sn; i++)
        s1[i] = s2[i] = 0.5f * urand(); /* non-zero initial state */
    ops->gdn_recurrent(ops->ctx, o1, qkv, beta, g, s1, &d, T, ws);
    ops->gdn_chunked(ops->ctx, o2, qkv, beta, g, s2, &d, T, ws);
    float eo = max_abs_diff(o1, o2, (size_t)T * Hv * d.d_v), es = max_abs_diff(s1, s2, sn);
    CHECK_SHOW(eo <= tol && es <= tol,
               "%-28s Hk=%d Hv=%d dk=%d dv=%d T=%d: max |d out| %.2g, max |d state| %.2g (tol %.0e)", label,
               d.n_k_heads, d.n_v_heads, d.d_k, d.d_v, T, eo, es, tol);
    free(qkv), free(beta), free(g), free(s1), free(s2), free(o1), free(o2), free(ws);
}

/* The conv keeps the last K inputs: running a block at once or token by
 * token gives the same outputs and the same state. */
static void conv_split(void) {
    const dr_ops *ops = dr_ops_cpu_ref();
    const int C = 5, K = 4, T = 9;
    float m[T * C], w[C * K], st1[K * C], st2[K * C], o1[T * C], o2[T * C];
    for (int i = 0; i < T * C; i++)
        m[i] = urand();
    for (int i = 0; i < C * K; i++)
        w[i] = urand();
    memset(st1, 0, sizeof st1);
    memset(st2, 0, sizeof st2);
    ops->gdn_conv(ops->ctx, o1, m, st1, w, T, C, K);
    for (int t = 0; t < T; t++)
        ops->gdn_conv(ops->ctx, o2 + t * C, m + t * C, st2, w, 1, C, K);
    float e = fmaxf(max_abs_diff(o1, o2, T * C), max_abs_diff(st1, st2, K * C));
    CHECK_SHOW(e == 0.0f, "conv block vs token-by-token: max |d| %.2g (exact)", e);
    /* state = the last K inputs, oldest first */
    CHECK(memcmp(st1, m + (T - K) * C, sizeof st1) == 0, "conv state is not the last K inputs");
    /* first output with zero history: silu(w[K-1] * m_0) */
    float want = w[K - 1] * m[0];
    want = want / (1.0f + expf(-want));
    CHECK_SHOW(fabsf(o1[0] - want) < 1e-6f, "conv first token uses zero left context: %.7g vs %.7g", o1[0],
               want);
}

int main(void) {
    compare("Hv>Hk, dk!=dv, T%64!=0", (dr_gdn_dims){2, 6, 16, 24}, 150, 1.0f, 1e-5f);
    compare("one partial chunk", (dr_gdn_dims){2, 4, 16, 24}, 37, 1.0f, 1e-5f);
    compare("exactly two chunks", (dr_gdn_dims){1, 2, 32, 32}, 128, 1.0f, 1e-5f);
    compare("chunk + 1 token", (dr_gdn_dims){4, 8, 8, 12}, 65, 1.0f, 1e-5f);
    compare("no decay (g = 0)", (dr_gdn_dims){2, 4, 16, 16}, 100, 0.0f, 1e-5f);
    compare("strong decay (exp underflow)", (dr_gdn_dims){2, 4, 16, 16}, 200, 60.0f, 1e-5f);
    compare("real head dims 128", (dr_gdn_dims){1, 2, 128, 128}, 70, 1.0f, 1e-5f);
    conv_split();
    return TEST_DONE();
}
