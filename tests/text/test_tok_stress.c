/* test_tok_stress - the streaming decoder on hand-made byte sequences, and
 * encoding of pathological 1 MB inputs (no spaces, one long run of a class,
 * CJK, emoji): the BPE merge work (counted, not timed; times are only
 * printed) for 1 MB over that for 256 KB must stay near n log n, far below
 * the 16x of a quadratic algorithm. Every input
 * must also round-trip through decode.
 */
#include "../test.h"
#include "text_test_util.h"
#include "text/bytelevel.h"
#include "text/tok_internal.h"

static int32_t byte_tok(const dr_tokenizer *tok, uint8_t b) {
    uint8_t u[5];
    size_t n = dr_utf8_encode(dr_bytelevel_char(b), u);
    u[n] = 0;
    return dr_tokenizer_token_id(tok, (const char *)u);
}

static bool push_is(dr_stream_decoder *sd, int32_t id, const char *want) {
    const char *t;
    size_t l;
    if (dr_stream_decoder_push(sd, id, &t, &l) != DR_OK)
        return false;
    return l == strlen(want) && memcmp(t, want, l) == 0;
}

static void test_stream(const dr_tokenizer *tok) {
    int missing = 0;
    for (int b = 0; b < 256; b++)
        missing += byte_tok(tok, (uint8_t)b) < 0;
    CHECK(missing == 0, "every byte has a one-byte token (%d missing)", missing);
    if (missing)
        return;
    dr_stream_decoder *sd;
    CHECK(dr_stream_decoder_new(tok, true, &sd) == DR_OK, "new");
    /* U+1F600 split over four tokens */
    CHECK(push_is(sd, byte_tok(tok, 0xF0), "") && push_is(sd, byte_tok(tok, 0x9F), "") &&
              push_is(sd, byte_tok(tok, 0x98), "") &&
              push_is(sd, byte_tok(tok, 0x80), "\xF0\x9F\x98\x80"),
          "emoji held back until its last byte");
    CHECK(push_is(sd, byte_tok(tok, 0xFF), "\xEF\xBF\xBD"), "invalid byte -> U+FFFD at once");
    CHECK(push_is(sd, byte_tok(tok, 0xE4), "") && push_is(sd, byte_tok(tok, 'a'), "\xEF\xBF\xBD" "a"),
          "broken sequence -> U+FFFD then the next character");
    CHECK(push_is(sd, byte_tok(tok, 0xE4), "") && push_is(sd, byte_tok(tok, 0xBD), ""),
          "two bytes of a CJK character held");
    const char *t;
    size_t l;
    dr_stream_decoder_finish(sd, &t, &l);
    CHECK(l == 3 && memcmp(t, "\xEF\xBF\xBD", 3) == 0, "finish: unfinished character -> U+FFFD");
    dr_stream_decoder_finish(sd, &t, &l);
    CHECK(l == 0, "finish again: nothing");
    CHECK(push_is(sd, byte_tok(tok, 0xE4), "") && (dr_stream_decoder_reset(sd), 1) &&
              push_is(sd, byte_tok(tok, 'b'), "b"),
          "reset drops held bytes");
    CHECK(push_is(sd, dr_tokenizer_token_id(tok, "<|im_end|>"), ""), "skip_special: <|im_end|> "
          "emits nothing");
    CHECK(push_is(sd, byte_tok(tok, 0xE4), "") &&
              push_is(sd, dr_tokenizer_token_id(tok, "<|im_end|>"), "") &&
              push_is(sd, byte_tok(tok, 0xBD), "") && push_is(sd, byte_tok(tok, 0xA0), "\xE4\xBD\xA0"),
          "a skipped special token between bytes does not break the character");
    CHECK(dr_stream_decoder_push(sd, -1, &t, &l) == DR_ERR_RANGE && l == 0 &&
              dr_stream_decoder_push(sd, 1 << 30, &t, &l) == DR_ERR_RANGE,
          "unknown ids rejected");
    dr_stream_decoder_free(sd);

    CHECK(dr_stream_decoder_new(tok, false, &sd) == DR_OK, "new (keep special)");
    CHECK(push_is(sd, dr_tokenizer_token_id(tok, "<|im_end|>"), "<|im_end|>"),
          "special token text when not skipped");
    dr_stream_decoder_free(sd);
}

typedef void (*gen_fn)(char *buf, size_t n, uint64_t *rng);

static void gen_a(char *b, size_t n, uint64_t *r) { (void)r; memset(b, 'a', n); }
static void gen_letters(char *b, size_t n, uint64_t *r) {
    for (size_t i = 0; i < n; i++)
        b[i] = (char)('a' + rng_next(r) % 26);
}
static void gen_digits(char *b, size_t n, uint64_t *r) {
    for (size_t i = 0; i < n; i++)
        b[i] = (char)('0' + rng_next(r) % 10);
}
static void gen_spaces(char *b, size_t n, uint64_t *r) { (void)r; memset(b, ' ', n); }
static void gen_newlines(char *b, size_t n, uint64_t *r) {
    for (size_t i = 0; i < n; i++)
        b[i] = (rng_next(r) & 1) ? '\n' : ' ';
}
static void gen_punct(char *b, size_t n, uint64_t *r) {
    for (size_t i = 0; i < n; i++)
        b[i] = "!?.,;:-+*/"[rng_next(r) % 10];
}
static void gen_cjk(char *b, size_t n, uint64_t *r) { /* n % 3 == 0 */
    for (size_t i = 0; i + 3 <= n; i += 3) {
        uint32_t cp = 0x4E00 + (uint32_t)(rng_next(r) % 0x5000);
        dr_utf8_encode(cp, (uint8_t *)b + i);
    }
}
static void gen_accented(char *b, size_t n, uint64_t *r) { /* é and a: Oniguruma path */
    for (size_t i = 0; i + 2 <= n; i += 2) {
        if (rng_next(r) & 1)
            memcpy(b + i, "\xc3\xa9", 2);
        else
            memcpy(b + i, "ab", 2);
    }
}
static void gen_emoji(char *b, size_t n, uint64_t *r) { /* n % 4 == 0 */
    for (size_t i = 0; i + 4 <= n; i += 4)
        dr_utf8_encode(0x1F600 + (uint32_t)(rng_next(r) % 64), (uint8_t *)b + i);
}

static double time_encode(const dr_tokenizer *tok, const char *s, size_t n, size_t *ntok,
                          bool *roundtrip) {
    dr_tokens t = {0};
    double t0 = now_ms();
    dr_status st = dr_tokenize(tok, s, n, true, &t);
    double dt = now_ms() - t0;
    if (st != DR_OK)
        printf("  encode failed: %s\n", dr_last_error());
    *ntok = t.n;
    if (roundtrip) {
        char *d;
        size_t dl;
        *roundtrip = st == DR_OK && dr_detokenize(tok, t.ids, t.n, false, &d, &dl) == DR_OK &&
                     dl == n && memcmp(d, s, n) == 0;
        if (st == DR_OK && *roundtrip)
            free(d);
    }
    dr_tokens_free(&t);
    return dt;
}

static void test_pathological(const dr_tokenizer *tok) {
    struct {
        const char *name;
        gen_fn gen;
    } cases[] = {
        {"1 MB of 'a' (one piece)", gen_a},
        {"random letters, no spaces", gen_letters},
        {"digits", gen_digits},
        {"spaces", gen_spaces},
        {"spaces and newlines", gen_newlines},
        {"punctuation run", gen_punct},
        {"CJK, no spaces", gen_cjk},
        {"accented letters (regex engine path)", gen_accented},
        {"emoji", gen_emoji},
    };
    const size_t big = (1 << 20) / 48 * 48, small = big / 4; /* whole characters */
    char *buf = malloc(big + 1);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint64_t rng = 99;
        cases[c].gen(buf, big, &rng);
        size_t nt;
        /* BPE work is counted, not timed (timings only printed): the merge
           heap's steps must grow like n log n, ~4.5x for 4x the input. */
        uint64_t w0 = dr_bpe_steps();
        double ts = time_encode(tok, buf, small, &nt, NULL);
        uint64_t w1 = dr_bpe_steps();
        bool rt = false;
        double tb = time_encode(tok, buf, big, &nt, &rt);
        uint64_t w2 = dr_bpe_steps();
        double ratio = w1 > w0 ? (double)(w2 - w1) / (double)(w1 - w0) : 0.0;
        CHECK_SHOW(ratio < 6 && rt, "%-38s merge steps 256 KB %llu, 1 MB %llu: ratio %.2f (n log n ~4.5, "
                   "quadratic 16; limit 6); %.0f / %.0f ms; round trip %s",
                   cases[c].name, (unsigned long long)(w1 - w0), (unsigned long long)(w2 - w1), ratio, ts, tb,
                   rt ? "exact" : "DIFFERS");
    }
    free(buf);
}

int main(void) {
    dr_tokenizer *tok;
    if (dr_tokenizer_load(DATA("dense-f32"), &tok) == DR_OK) {
        test_stream(tok);
        dr_tokenizer_free(tok);
    } else {
        CHECK(0, "load small: %s", dr_last_error());
    }
    if (dr_tokenizer_load(DATA("tokenizer/qwen3"), &tok) == DR_OK) {
        test_pathological(tok);
        dr_tokenizer_free(tok);
    } else {
        CHECK(0, "load qwen3: %s", dr_last_error());
    }
    return TEST_DONE();
}
