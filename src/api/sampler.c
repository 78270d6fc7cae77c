/* api/sampler.c - token sampling: greedy, temperature, top-k, top-p, min-p,
 * repetition penalty, with an owned, seeded RNG (same seed, same output).
 *
 * Order (as llama.cpp's default chain): penalty -> greedy or
 * top-k -> softmax with temperature -> min-p -> top-p -> draw.
 */
#include "util/argmax.h"
#include "util/status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float logit;
    int32_t id;
} dr_cand;

struct dr_sampler {
    dr_sampler_params p;
    int n_vocab;
    uint64_t rng;       /* xorshift64* state */
    int32_t *recent;    /* ring of the last repeat_last_n accepted tokens */
    int n_recent, head;
    dr_cand *cand;      /* [n_vocab] candidates, best first */
    float *prob;        /* [n_vocab] probability of cand[i] */
};

dr_sampler_params dr_sampler_default_params(void) {
    dr_sampler_params p = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                           .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0};
    return p;
}

dr_status dr_sampler_new(const dr_sampler_params *p, int n_vocab, dr_sampler **out) {
    *out = NULL;
    if (n_vocab < 1)
        return DR_FAIL(DR_ERR_ARG, "sampler: vocabulary size %d", n_vocab);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f) || !(p->min_p >= 0.0f && p->min_p <= 1.0f) || p->top_k < 0 ||
        !(p->repeat_penalty > 0.0f) || p->repeat_last_n < 0 || isnan(p->temperature))
        return DR_FAIL(DR_ERR_ARG,
                       "sampler: need top_p in (0,1], min_p in [0,1], top_k >= 0, repeat_penalty > 0, "
                       "repeat_last_n >= 0");
    dr_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    s->p = *p;
    s->n_vocab = n_vocab;
    s->rng = p->seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull; /* never zero for xorshift */
    if (!s->rng)
        s->rng = 1;
    s->recent = calloc((size_t)p->repeat_last_n + 1, sizeof *s->recent);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
    if (!s->recent || !s->cand || !s->prob) {
        dr_sampler_free(s);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    }
    *out = s;
    return DR_OK;
}

void dr_sampler_free(dr_sampler *s) {
    if (!s)
        return;
    free(s->recent);
    free(s->cand);
    free(s->prob);
    free(s);
}

void dr_sampler_accept(dr_sampler *s, int32_t tok) {
    if (s->p.repeat_last_n == 0)
        return;
    s->recent[s->head] = tok;
    s->head = (s->head + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n)
        s->n_recent++;
}

static uint64_t next_u64(dr_sampler *s) {
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, 1) from the top 24 bits. */
static float next_f32(dr_sampler *s) { return (float)(next_u64(s) >> 40) / 16777216.0f; }

static void apply_penalty(dr_sampler *s, float *logits) {
    if (s->p.repeat_penalty == 1.0f)
        return;
    for (int i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i];
        if (t < 0 || t >= s->n_vocab)
            continue;
        /* each distinct token once: skip if it appeared earlier in the ring */
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen = s->recent[j] == t;
        if (seen)
            continue;
        logits[t] = logits[t] > 0 ? logits[t] / s->p.repeat_penalty : logits[t] * s->p.repeat_penalty;
    }
}

static int by_logit_desc(const void *a, const void *b) {
    const dr_cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit < y->logit ? 1 : -1;
    return x->id - y->id; /* ties: lower id first, so results are reproducible */
}

/* Sort all tokens by logit into s->cand. */
static void sort_candidates(dr_sampler *s, const float *logits) {
    for (int i = 0; i < s->n_vocab; i++) {
        s->cand[i].logit = logits[i];
        s->cand[i].id = i;
    }
    qsort(s->cand, (size_t)s->n_vocab, sizeof *s->cand, by_logit_desc);
}

int32_t dr_sampler_sample(dr_sampler *s, float *logits) {
    apply_penalty(s, logits);
    if (s->p.temperature <= 0.0f)
        return dr_argmax_f32(logits, s->n_vocab);
    int n = s->p.top_k > 0 && s->p.top_k < s->n_vocab ? s->p.top_k : s->n_vocab;
    sort_candidates(s, logits);
    /* softmax over the candidates with temperature */
    float mx = s->cand[0].logit, sum = 0.0f;
    for (int i = 0; i < n; i++) {
        s->prob[i] = expf((s->cand[i].logit - mx) / s->p.temperature);
        sum += s->prob[i];
    }
    for (int i = 0; i < n; i++)
        s->prob[i] /= sum;
    /* min-p: drop tokens below min_p x the best probability */
    if (s->p.min_p > 0.0f) {
        int keep = 1;
        while (keep < n && s->prob[keep] >= s->p.min_p * s->prob[0])
            keep++;
        n = keep;
    }
    /* top-p: the smallest prefix whose mass reaches top_p */
    if (s->p.top_p < 1.0f) {
        float cum = 0.0f;
        int keep = 0;
        while (keep < n) {
            cum += s->prob[keep++];
            if (cum >= s->p.top_p)
                break;
        }
        n = keep;
    }
    float mass = 0.0f;
    for (int i = 0; i < n; i++)
        mass += s->prob[i];
    float r = next_f32(s) * mass, acc = 0.0f;
    for (int i = 0; i < n; i++) {
        acc += s->prob[i];
        if (r < acc)
            return s->cand[i].id;
    }
    return s->cand[n - 1].id;
}
