/* test_sampler.c - greedy, seeded reproducibility, the filters (top-k, top-p,
 * min-p), the distribution drawn at a given temperature, the repetition
 * penalty, and rejection of invalid parameters.
 */
#include "deltarun.h"

#include "test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform [-1, 1) */
    rs ^= rs >> 12;
    rs ^= rs << 25;
    rs ^= rs >> 27;
    return (float)((rs * 0x2545F4914F6CDD1Dull) >> 40) / 8388608.0f - 1.0f;
}

static dr_sampler *mk(dr_sampler_params p, int n_vocab) {
    dr_sampler *s = NULL;
    dr_status st = dr_sampler_new(&p, n_vocab, &s);
    CHECK(st == DR_OK && s, "sampler_new: %s", dr_last_error());
    return s;
}


/* Draw with a fresh copy of `logits` each time (the sampler edits them). */
static int32_t draw(dr_sampler *s, const float *logits, int n, float *scratch) {
    memcpy(scratch, logits, (size_t)n * sizeof *scratch);
    return dr_sampler_sample(s, scratch);
}

static void random_logits(float *x, int n, float scale) {
    for (int i = 0; i < n; i++)
        x[i] = scale * frand();
}

static void test_greedy(void) {
    enum { V = 1000 };
    float lg[V], tmp[V];
    dr_sampler *s = mk(dr_sampler_default_params(), V);
    if (!s)
        return;
    int good = 0;
    for (int t = 0; t < 50; t++) {
        random_logits(lg, V, 5.0f);
        lg[(t * 37) % V] = 10.0f + (float)t * 0.01f; /* a clear max somewhere */
        memcpy(tmp, lg, sizeof lg);
        int32_t id = dr_sampler_sample(s, tmp);
        good += id == test_argmax_rule(lg, V) && memcmp(tmp, lg, sizeof lg) == 0;
    }
    CHECK_SHOW(good == 50, "greedy picks the argmax (logits untouched): %d / 50", good);
    /* negative logits and the max in the last slot */
    float neg[4] = {-5.0f, -3.0f, -4.0f, -2.5f};
    dr_sampler *s4 = mk(dr_sampler_default_params(), 4);
    CHECK(s4 && dr_sampler_sample(s4, neg) == 3, "greedy over negative logits");
    dr_sampler_free(s4);
    /* temperature < 0 also means greedy */
    dr_sampler_params p = dr_sampler_default_params();
    p.temperature = -1.0f;
    dr_sampler *s2 = mk(p, 4);
    float neg2[4] = {-5.0f, -3.0f, -4.0f, -2.5f};
    CHECK(s2 && dr_sampler_sample(s2, neg2) == 3, "temperature -1 is greedy");
    dr_sampler_free(s2);
    /* ties: the lowest id */
    float tie[5] = {1.0f, 3.0f, 2.0f, 3.0f, 0.0f};
    dr_sampler *s3 = mk(dr_sampler_default_params(), 5);
    CHECK(s3 && dr_sampler_sample(s3, tie) == 1, "greedy tie -> lowest id");
    dr_sampler_free(s3);
    dr_sampler_free(s);
}

static void test_seed(void) {
    enum { V = 200, N = 3000 };
    float lg[V], tmp[V];
    random_logits(lg, V, 3.0f);
    dr_sampler_params p = dr_sampler_default_params();
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.top_k = 50;
    p.min_p = 0.01f;
    p.seed = 42;
    dr_sampler *a = mk(p, V), *b = mk(p, V);
    p.seed = 43;
    dr_sampler *c = mk(p, V);
    if (!a || !b || !c)
        return;
    int same_ab = 0, same_ac = 0, distinct = 0;
    int seen[V] = {0};
    for (int i = 0; i < N; i++) {
        int32_t x = draw(a, lg, V, tmp), y = draw(b, lg, V, tmp), z = draw(c, lg, V, tmp);
        same_ab += x == y;
        same_ac += x == z;
        distinct += !seen[x];
        seen[x] = 1;
    }
    CHECK_SHOW(same_ab == N, "same seed, same sequence: %d / %d draws equal", same_ab, N);
    CHECK_SHOW(same_ac < N * 9 / 10, "seeds 42 vs 43: %d / %d draws equal (want < 90%%)", same_ac, N);
    CHECK_SHOW(distinct > 5, "temperature 0.9 draws %d distinct tokens (want > 5)", distinct);
    dr_sampler_free(a);
    dr_sampler_free(b);
    dr_sampler_free(c);
    /* a recreated sampler with the same seed restarts the sequence */
    p.seed = 7;
    a = mk(p, V);
    int32_t first[20];
    for (int i = 0; i < 20; i++)
        first[i] = draw(a, lg, V, tmp);
    dr_sampler_free(a);
    a = mk(p, V);
    int same = 0;
    for (int i = 0; i < 20; i++)
        same += draw(a, lg, V, tmp) == first[i];
    CHECK(same == 20, "recreated sampler repeats: %d / 20", same);
    dr_sampler_free(a);
    /* seed 0 works and differs from seed 1 */
    p.seed = 0;
    a = mk(p, V);
    p.seed = 1;
    b = mk(p, V);
    int eq = 0;
    for (int i = 0; i < 500; i++)
        eq += draw(a, lg, V, tmp) == draw(b, lg, V, tmp);
    CHECK(eq < 450, "seed 0 vs 1: %d / 500 equal", eq);
    dr_sampler_free(a);
    dr_sampler_free(b);
}

/* Filters that leave only the argmax, at any temperature. */
static void test_filters_to_argmax(void) {
    enum { V = 500 };
    float lg[V], tmp[V];
    const float temps[] = {0.05f, 0.7f, 1.0f, 3.0f, 100.0f};
    struct {
        const char *what;
        int top_k;
        float top_p, min_p;
    } f[] = {{"top_k 1", 1, 1.0f, 0.0f}, {"top_p 1e-6", 0, 1e-6f, 0.0f}, {"min_p 1", 0, 1.0f, 1.0f}};
    for (size_t k = 0; k < sizeof f / sizeof *f; k++) {
        int good = 0, total = 0;
        for (size_t ti = 0; ti < sizeof temps / sizeof *temps; ti++) {
            dr_sampler_params p = dr_sampler_default_params();
            p.temperature = temps[ti];
            p.top_k = f[k].top_k;
            p.top_p = f[k].top_p;
            p.min_p = f[k].min_p;
            p.seed = 1000 + ti;
            dr_sampler *s = mk(p, V);
            if (!s)
                continue;
            for (int t = 0; t < 40; t++) {
                random_logits(lg, V, 2.0f);
                good += draw(s, lg, V, tmp) == test_argmax_rule(lg, V);
                total++;
            }
            dr_sampler_free(s);
        }
        CHECK_SHOW(good == total, "%s == greedy at temperatures 0.05..100: %d / %d", f[k].what, good, total);
    }
}

/* Frequencies of `n` draws over 3 tokens vs expected probabilities. */
static double freq_err(dr_sampler_params p, const float *lg, const double *want, int n, double *got) {
    dr_sampler *s = mk(p, 3);
    if (!s)
        return 1.0;
    int cnt[3] = {0};
    float tmp[3];
    for (int i = 0; i < n; i++) {
        int32_t id = draw(s, lg, 3, tmp);
        if (id >= 0 && id < 3)
            cnt[id]++;
    }
    dr_sampler_free(s);
    double e = 0;
    for (int i = 0; i < 3; i++) {
        got[i] = (double)cnt[i] / n;
        e = fmax(e, fabs(got[i] - want[i]));
    }
    return e;
}

static void test_distribution(void) {
    const int N = 20000;
    const float lg[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    double got[3], e;
    dr_sampler_params p = dr_sampler_default_params();
    p.temperature = 1.0f;
    p.seed = 12345;
    const double w1[3] = {0.5, 0.3, 0.2};
    e = freq_err(p, lg, w1, N, got);
    CHECK_SHOW(e <= 0.02, "T=1 over log[.5,.3,.2], %d draws: freq [%.4f %.4f %.4f], max err %.4f (tol 0.02)", N,
               got[0], got[1], got[2], e);
    /* temperature 2: p^(1/2) renormalised */
    p.temperature = 2.0f;
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.2);
    const double w2[3] = {sqrt(0.5) / z, sqrt(0.3) / z, sqrt(0.2) / z};
    e = freq_err(p, lg, w2, N, got);
    CHECK_SHOW(e <= 0.02, "T=2: freq [%.4f %.4f %.4f] vs [%.4f %.4f %.4f], max err %.4f (tol 0.02)", got[0], got[1],
               got[2], w2[0], w2[1], w2[2], e);
    /* temperature 0.5: p^2 renormalised */
    p.temperature = 0.5f;
    z = 0.25 + 0.09 + 0.04;
    const double w3[3] = {0.25 / z, 0.09 / z, 0.04 / z};
    e = freq_err(p, lg, w3, N, got);
    CHECK_SHOW(e <= 0.02, "T=0.5: freq [%.4f %.4f %.4f] vs [%.4f %.4f %.4f], max err %.4f (tol 0.02)", got[0],
               got[1], got[2], w3[0], w3[1], w3[2], e);
    /* filters keeping the top two: renormalised [.625, .375, 0] */
    const double w4[3] = {0.625, 0.375, 0.0};
    p.temperature = 1.0f;
    p.top_k = 2;
    e = freq_err(p, lg, w4, N, got);
    CHECK_SHOW(e <= 0.02 && got[2] == 0.0, "top_k 2: freq [%.4f %.4f %.4f] vs [.625 .375 0], max err %.4f (tol 0.02)",
               got[0], got[1], got[2], e);
    p.top_k = 0;
    p.top_p = 0.7f;
    e = freq_err(p, lg, w4, N, got);
    CHECK_SHOW(e <= 0.02 && got[2] == 0.0, "top_p 0.7: freq [%.4f %.4f %.4f] vs [.625 .375 0], max err %.4f (tol 0.02)",
               got[0], got[1], got[2], e);
    p.top_p = 1.0f;
    p.min_p = 0.5f; /* keeps p >= 0.25 */
    e = freq_err(p, lg, w4, N, got);
    CHECK_SHOW(e <= 0.02 && got[2] == 0.0, "min_p 0.5: freq [%.4f %.4f %.4f] vs [.625 .375 0], max err %.4f (tol 0.02)",
               got[0], got[1], got[2], e);
    /* -inf logits are never drawn */
    {
        float masked[6] = {-INFINITY, 0.0f, -INFINITY, 1.0f, -INFINITY, -INFINITY}, tmp[6];
        dr_sampler_params q = dr_sampler_default_params();
        q.temperature = 1.5f;
        q.seed = 9;
        dr_sampler *s = mk(q, 6);
        int bad = 0;
        for (int i = 0; s && i < 2000; i++) {
            int32_t id = draw(s, masked, 6, tmp);
            bad += id != 1 && id != 3;
        }
        CHECK_SHOW(bad == 0, "-inf logits drawn %d times in 2000 (want 0)", bad);
        dr_sampler_free(s);
    }
    /* degenerate logits (all -inf, NaN, huge): an id in range, no crash */
    {
        dr_sampler_params q = dr_sampler_default_params();
        q.temperature = 1.0f;
        q.top_p = 0.9f;
        q.min_p = 0.05f;
        q.seed = 3;
        dr_sampler *s = mk(q, 4);
        float cases[4][4] = {{-INFINITY, -INFINITY, -INFINITY, -INFINITY},
                             {NAN, 0.0f, 1.0f, NAN},
                             {NAN, NAN, NAN, NAN},
                             {3e38f, -3e38f, 3e38f, 0.0f}};
        int in_range = 0;
        for (int c = 0; s && c < 4; c++) {
            int32_t id = dr_sampler_sample(s, cases[c]);
            in_range += id >= 0 && id < 4;
        }
        CHECK_SHOW(in_range == 4, "degenerate logits (all -inf, NaN, +-3e38): %d / 4 ids in range", in_range);
        dr_sampler_free(s);
    }
    /* vocabulary of one */
    {
        dr_sampler_params q = dr_sampler_default_params();
        q.temperature = 1.0f;
        dr_sampler *s = mk(q, 1);
        float one[1] = {0.3f};
        CHECK(s && dr_sampler_sample(s, one) == 0, "n_vocab 1");
        dr_sampler_free(s);
    }
}

static void test_penalty(void) {
    dr_sampler_params p = dr_sampler_default_params();
    p.repeat_penalty = 1.1f;
    p.repeat_last_n = 2;
    dr_sampler *s = mk(p, 3);
    if (!s)
        return;
    const float base[3] = {2.0f, 1.9f, 0.5f};
    float tmp[3];
    CHECK(draw(s, base, 3, tmp) == 0, "greedy before any accept picks 0");
    dr_sampler_accept(s, 0);
    int32_t after = draw(s, base, 3, tmp);
    CHECK_SHOW(after == 1, "repeat_penalty 1.1 after accepting 0: greedy picks %d (want 1; 2.0/1.1 < 1.9)", after);
    CHECK(fabsf(tmp[0] - 2.0f / 1.1f) < 1e-6f && tmp[1] == 1.9f, "penalised logits: %g %g", tmp[0], tmp[1]);
    /* accepted twice: still penalised once */
    dr_sampler_accept(s, 0);
    draw(s, base, 3, tmp);
    CHECK(fabsf(tmp[0] - 2.0f / 1.1f) < 1e-6f, "repeated token penalised once: %g", tmp[0]);
    /* out of the window of 2: no penalty */
    dr_sampler_accept(s, 2);
    dr_sampler_accept(s, 2);
    CHECK(draw(s, base, 3, tmp) == 0, "token outside repeat_last_n is not penalised");
    /* out-of-range accepted ids are ignored, no crash */
    dr_sampler_accept(s, -1);
    dr_sampler_accept(s, 99999);
    CHECK(draw(s, base, 3, tmp) == 0, "out-of-range accepted ids ignored");
    dr_sampler_free(s);

    /* negative logits are multiplied */
    s = mk(p, 2);
    const float neg[2] = {-1.0f, -1.05f};
    dr_sampler_accept(s, 0);
    CHECK(draw(s, neg, 2, tmp) == 1 && fabsf(tmp[0] + 1.1f) < 1e-6f, "negative logit penalised to %g", tmp[0]);
    dr_sampler_free(s);

    /* repeat_last_n 0: off */
    p.repeat_last_n = 0;
    s = mk(p, 3);
    dr_sampler_accept(s, 0);
    CHECK(draw(s, base, 3, tmp) == 0, "repeat_last_n 0 disables the penalty");
    dr_sampler_free(s);

    /* with sampling: a penalised token's frequency drops */
    const float lg[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    double f_plain = 0.0, f_pen = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        dr_sampler_params q = dr_sampler_default_params();
        q.temperature = 1.0f;
        q.seed = 77;
        q.repeat_penalty = pass ? 2.0f : 1.0f;
        dr_sampler *t = mk(q, 3);
        dr_sampler_accept(t, 0);
        int c0 = 0;
        for (int i = 0; i < 10000; i++)
            c0 += draw(t, lg, 3, tmp) == 0;
        *(pass ? &f_pen : &f_plain) = c0 / 10000.0;
        dr_sampler_free(t);
    }
    /* penalty 2 on log(0.5): logit -1.386 -> p0 = 0.25 / (0.25 + 0.5) = 1/3 */
    CHECK_SHOW(f_pen < f_plain - 0.1 && fabs(f_pen - 1.0 / 3.0) <= 0.02,
               "P(token 0) without penalty %.4f, with penalty 2 %.4f (expected 0.3333, tol 0.02)", f_plain, f_pen);
}

static void test_invalid(void) {
    struct {
        const char *what;
        dr_sampler_params p;
        int n_vocab;
    } c[16];
    int k = 0;
    dr_sampler_params d = dr_sampler_default_params();
#define BAD(W, FIELD, VAL)          \
    do {                            \
        c[k].what = W;              \
        c[k].p = d;                 \
        c[k].p.FIELD = VAL;         \
        c[k].n_vocab = 10;          \
        k++;                        \
    } while (0)
    BAD("top_p 0", top_p, 0.0f);
    BAD("top_p 1.5", top_p, 1.5f);
    BAD("top_p -0.5", top_p, -0.5f);
    BAD("top_p NaN", top_p, NAN);
    BAD("top_k -1", top_k, -1);
    BAD("repeat_penalty 0", repeat_penalty, 0.0f);
    BAD("repeat_penalty -1", repeat_penalty, -1.0f);
    BAD("repeat_penalty NaN", repeat_penalty, NAN);
    BAD("min_p -0.1", min_p, -0.1f);
    BAD("min_p 1.5", min_p, 1.5f);
    BAD("repeat_last_n -1", repeat_last_n, -1);
    BAD("temperature NaN", temperature, NAN);
#undef BAD
    c[k].what = "n_vocab 0";
    c[k].p = d;
    c[k++].n_vocab = 0;
    c[k].what = "n_vocab -5";
    c[k].p = d;
    c[k++].n_vocab = -5;
    int good = 0;
    for (int i = 0; i < k; i++) {
        dr_sampler *s = (dr_sampler *)&s;
        dr_status st = dr_sampler_new(&c[i].p, c[i].n_vocab, &s);
        int ok = st == DR_ERR_ARG && s == NULL && dr_last_error()[0];
        CHECK(ok, "%s: status %d (want DR_ERR_ARG), out %s", c[i].what, st, s ? "set" : "NULL");
        good += ok;
        if (st == DR_OK && s)
            dr_sampler_free(s);
    }
    CHECK_SHOW(good == k, "invalid sampler params rejected: %d / %d", good, k);
    dr_sampler_free(NULL);
    /* the edges that are valid */
    dr_sampler_params e = d;
    e.top_p = 1.0f;
    e.min_p = 1.0f;
    e.repeat_penalty = 0.5f;
    e.repeat_last_n = 0;
    e.top_k = 1000000; /* larger than the vocabulary: off */
    e.temperature = 1.0f;
    dr_sampler *s = NULL;
    CHECK(dr_sampler_new(&e, 10, &s) == DR_OK, "edge params rejected: %s", dr_last_error());
    float lg[10];
    for (int i = 0; i < 10; i++)
        lg[i] = (float)(i % 4);
    lg[6] = 4.5f;
    int32_t id = s ? dr_sampler_sample(s, lg) : -1;
    CHECK(id == 6, "min_p 1 with top_k > vocab: %d (want 6, the max)", id);
    dr_sampler_free(s);
}

int main(void) {
    test_greedy();
    test_seed();
    test_filters_to_argmax();
    test_distribution();
    test_penalty();
    test_invalid();
    return TEST_DONE();
}
