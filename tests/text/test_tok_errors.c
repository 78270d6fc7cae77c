/* test_tok_errors - bad input: malformed tokenizer.json files (truncated at
 * many points, wrong types, unknown component types, merges naming unknown
 * tokens, bad regexes) and bad sidecar files must give a status and a
 * message naming the problem; random mutations of tokenizer.json must load
 * or fail cleanly; random byte strings through encode and random ids through
 * decode and the stream decoder must never crash, and what encodes must
 * decode back to the NFC form of the input. Run it under the sanitizer build.
 */
#include "../test.h"
#include "text_test_util.h"

#include <unistd.h>
#include <utf8proc.h>

static char *small_text(size_t *len) {
    FILE *f = fopen(DATA("dense-f32/tokenizer.json"), "rb");
    if (!f)
        return NULL;
    char *b = malloc(1 << 20);
    *len = fread(b, 1, 1 << 20, f);
    fclose(f);
    return b;
}

/* Load edited JSON; expect failure `want` with `needle` in the message. */
static void expect_fail(json_t *j, dr_status want, const char *needle, const char *what) {
    char *s = json_dumps(j, JSON_COMPACT);
    dr_tokenizer *tok = (dr_tokenizer *)1;
    dr_status st = dr_tokenizer_load_buffer(s, strlen(s), "tokenizer.json", NULL, &tok);
    CHECK_SHOW(st == want && tok == NULL && strstr(dr_last_error(), needle) &&
                   strstr(dr_last_error(), "tokenizer.json"),
               "%s -> %s: %s", what, dr_status_str(st), dr_last_error());
    if (st == DR_OK)
        dr_tokenizer_free(tok);
    free(s);
    json_decref(j);
}

static json_t *base_json(void) { return load_json(DATA("dense-f32/tokenizer.json")); }

static json_t *model(json_t *j) { return json_object_get(j, "model"); }

static void test_malformed(void) {
    json_t *j;
    j = base_json();
    json_object_set_new(model(j), "vocab", json_array());
    expect_fail(j, DR_ERR_FORMAT, "model.vocab", "vocab as an array");
    j = base_json();
    json_object_set_new(json_object_get(model(j), "vocab"), "zz", json_string("7"));
    expect_fail(j, DR_ERR_FORMAT, "zz", "vocab id as a string");
    j = base_json();
    json_object_set_new(json_object_get(model(j), "vocab"), "zz", json_integer(-3));
    expect_fail(j, DR_ERR_FORMAT, "zz", "negative vocab id");
    j = base_json();
    json_array_set_new(json_object_get(model(j), "merges"), 3, json_integer(5));
    expect_fail(j, DR_ERR_FORMAT, "merges[3]", "merge as a number");
    j = base_json();
    json_array_append_new(json_object_get(model(j), "merges"), json_pack("[s,s]", "qqq", "a"));
    expect_fail(j, DR_ERR_FORMAT, "\"qqq\" is not in the vocabulary", "merge naming an unknown token");
    j = base_json();
    json_array_append_new(json_object_get(model(j), "merges"), json_string("z q"));
    expect_fail(j, DR_ERR_FORMAT, "merged token \"zq\"", "merge whose result is unknown");
    j = base_json();
    json_array_append_new(json_object_get(model(j), "merges"), json_string("a b c"));
    expect_fail(j, DR_ERR_FORMAT, "two tokens", "legacy merge with two spaces");
    j = base_json();
    json_array_append_new(json_object_get(model(j), "merges"), json_pack("[s]", "a"));
    expect_fail(j, DR_ERR_FORMAT, "merges[", "merge pair of one element");
    j = base_json();
    json_object_del(model(j), "merges");
    expect_fail(j, DR_ERR_FORMAT, "model.merges", "missing merges");
    j = base_json();
    json_object_del(j, "model");
    expect_fail(j, DR_ERR_FORMAT, "model", "missing model");
    j = base_json();
    json_object_set_new(json_array_get(json_object_get(j, "added_tokens"), 0), "id",
                        json_string("0"));
    expect_fail(j, DR_ERR_FORMAT, "added_tokens[0].id", "added token id as a string");
    j = base_json();
    json_object_set_new(json_array_get(json_object_get(j, "added_tokens"), 1), "special",
                        json_string("yes"));
    expect_fail(j, DR_ERR_FORMAT, "added_tokens[1].special", "special as a string");
    j = base_json();
    json_object_set_new(j, "added_tokens", json_object());
    expect_fail(j, DR_ERR_FORMAT, "added_tokens", "added_tokens as an object");
    j = base_json();
    json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "Lowercase"));
    expect_fail(j, DR_ERR_UNSUPPORTED, "\"Lowercase\"", "unknown normalizer");
    j = base_json();
    json_object_set_new(j, "normalizer", json_pack("{s:s, s:[{s:s},{s:s}]}", "type", "Sequence",
                                                   "normalizers", "type", "NFC", "type", "Strip"));
    expect_fail(j, DR_ERR_UNSUPPORTED, "\"Strip\"", "unknown normalizer inside a Sequence");
    j = base_json();
    json_object_set_new(j, "normalizer", json_pack("{s:i}", "type", 3));
    expect_fail(j, DR_ERR_FORMAT, "normalizer.type", "normalizer type as a number");
    j = base_json();
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s}", "type", "Whitespace"));
    expect_fail(j, DR_ERR_UNSUPPORTED, "\"Whitespace\"", "unknown pre-tokenizer");
    j = base_json();
    json_object_set_new(json_array_get(json_object_get(json_object_get(j, "pre_tokenizer"),
                                                       "pretokenizers"), 0),
                        "behavior", json_string("Removed"));
    expect_fail(j, DR_ERR_UNSUPPORTED, "\"Removed\"", "Split behavior Removed");
    j = base_json();
    json_object_set_new(json_array_get(json_object_get(json_object_get(j, "pre_tokenizer"),
                                                       "pretokenizers"), 0),
                        "pattern", json_pack("{s:s}", "Regex", "(unclosed"));
    expect_fail(j, DR_ERR_FORMAT, "pattern", "invalid regex");
    j = base_json();
    json_object_set_new(j, "decoder", json_pack("{s:s}", "type", "WordPiece"));
    expect_fail(j, DR_ERR_UNSUPPORTED, "\"WordPiece\"", "unknown decoder");
    j = base_json();
    json_object_set_new(j, "decoder", json_null());
    expect_fail(j, DR_ERR_UNSUPPORTED, "decoder", "null decoder");
    j = base_json();
    json_object_set_new(j, "post_processor", json_pack("{s:s}", "type", "TemplateProcessing"));
    expect_fail(j, DR_ERR_UNSUPPORTED, "\"TemplateProcessing\"", "unknown post-processor");
    j = base_json();
    json_object_set_new(model(j), "type", json_string("Unigram"));
    expect_fail(j, DR_ERR_UNSUPPORTED, "\"Unigram\"", "unknown model type");
    j = base_json();
    json_object_set_new(model(j), "dropout", json_real(0.1));
    expect_fail(j, DR_ERR_UNSUPPORTED, "dropout", "BPE dropout");
    j = base_json();
    json_object_set_new(model(j), "unk_token", json_string("<nope>"));
    expect_fail(j, DR_ERR_FORMAT, "unk_token", "unk_token not in the vocabulary");
    j = json_array();
    expect_fail(j, DR_ERR_FORMAT, "top level", "top-level array");

    dr_tokenizer *tok;
    dr_status st = dr_tokenizer_load_buffer("", 0, "tokenizer.json", NULL, &tok);
    CHECK_SHOW(st == DR_ERR_FORMAT && !tok, "empty buffer -> %s: %s", dr_status_str(st),
               dr_last_error());
    st = dr_tokenizer_load("/nonexistent/dir", &tok);
    CHECK_SHOW(st == DR_ERR_IO && !tok && strstr(dr_last_error(), "/nonexistent/dir"),
               "missing path -> %s: %s", dr_status_str(st), dr_last_error());
    st = dr_tokenizer_load(DATA("tokenizer"), &tok); /* a directory without tokenizer.json */
    CHECK_SHOW(st == DR_ERR_IO && !tok && strstr(dr_last_error(), "tokenizer.json"),
               "directory without tokenizer.json -> %s: %s", dr_status_str(st), dr_last_error());
}

static void test_truncated(void) {
    size_t len;
    char *text = small_text(&len);
    if (!text) {
        CHECK(0, "read fixture");
        return;
    }
    size_t n = 0, bad = 0;
    for (size_t cut = 0; cut < len; cut += 97) {
        dr_tokenizer *tok;
        dr_status st = dr_tokenizer_load_buffer(text, cut, "tokenizer.json", NULL, &tok);
        n++;
        if (st != DR_ERR_FORMAT || tok || !strstr(dr_last_error(), "invalid JSON")) {
            if (bad++ < 3)
                printf("  cut at %zu: %s %s\n", cut, dr_status_str(st), dr_last_error());
            if (st == DR_OK)
                dr_tokenizer_free(tok);
        }
    }
    CHECK_SHOW(bad == 0, "tokenizer.json truncated at %zu points: all rejected as invalid JSON (%zu "
               "not)", n, bad);
    free(text);
}

static void test_mutations(void) {
    size_t len;
    char *text = small_text(&len);
    if (!text)
        return;
    char *m = malloc(len);
    uint64_t rng = 42;
    int ok = 0, failed = 0, nomsg = 0;
    const int N = 400;
    for (int it = 0; it < N; it++) {
        memcpy(m, text, len);
        int flips = 1 + (int)(rng_next(&rng) % 4);
        for (int k = 0; k < flips; k++) {
            size_t pos = rng_next(&rng) % len;
            static const char pick[] = "\"{}[],:0123456789 \\xtrue-";
            m[pos] = (rng_next(&rng) & 1) ? (char)(rng_next(&rng) & 0xFF)
                                          : pick[rng_next(&rng) % (sizeof pick - 1)];
        }
        dr_tokenizer *tok;
        dr_status st = dr_tokenizer_load_buffer(m, len, "tokenizer.json", NULL, &tok);
        if (st == DR_OK) {
            ok++;
            dr_tokens t = {0};
            const char *probe = "Hello, world! 123 \xe4\xbd\xa0\xe5\xa5\xbd";
            dr_tokenize(tok, probe, strlen(probe), true, &t);
            char *d;
            size_t dl;
            if (dr_detokenize(tok, t.ids, t.n, false, &d, &dl) == DR_OK)
                free(d);
            dr_tokens_free(&t);
            dr_tokenizer_free(tok);
        } else {
            failed++;
            nomsg += dr_last_error()[0] == '\0';
        }
    }
    CHECK_SHOW(nomsg == 0, "%d mutated tokenizer.json files: %d loaded, %d rejected, %d without a "
               "message", N, ok, failed, nomsg);
    free(m);
    free(text);
}

static void test_sidecar_errors(void) {
    char dir[] = "/tmp/dr_tok_err_XXXXXX";
    if (!mkdtemp(dir))
        return;
    char tj[256], cfg[256], gen[256];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    snprintf(gen, sizeof gen, "%s/generation_config.json", dir);
    json_t *j = base_json();
    json_dump_file(j, tj, JSON_COMPACT);
    json_decref(j);
    struct {
        const char *file, *body, *needle;
    } cases[] = {
        {cfg, "{\"eos_token\": \"<|nope|>\"}", "<|nope|>"},
        {cfg, "{\"eos_token\": 5}", "eos_token"},
        {cfg, "{\"chat_template\": 5}", "chat_template"},
        {cfg, "{\"eos_token\": ", "invalid JSON"},
        {gen, "{\"eos_token_id\": [1, \"x\"]}", "eos_token_id"},
        {gen, "{\"eos_token_id\": 99999}", "99999"},
        {gen, "[]", "object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        remove(cfg);
        remove(gen);
        FILE *f = fopen(cases[i].file, "w");
        fputs(cases[i].body, f);
        fclose(f);
        dr_tokenizer *tok;
        dr_status st = dr_tokenizer_load(dir, &tok);
        CHECK_SHOW(st == DR_ERR_FORMAT && !tok && strstr(dr_last_error(), cases[i].needle) &&
                       strstr(dr_last_error(), cases[i].file == cfg ? "tokenizer_config.json"
                                                                    : "generation_config.json"),
                   "sidecar %s -> %s: %s", cases[i].body, dr_status_str(st), dr_last_error());
        if (st == DR_OK)
            dr_tokenizer_free(tok);
    }
    dr_tokenizer_options o = {.no_sidecar_files = true};
    dr_tokenizer *tok;
    CHECK(dr_tokenizer_load_ex(dir, &o, &tok) == DR_OK, "no_sidecar_files skips a bad sidecar");
    dr_tokenizer_free(tok);
    remove(cfg);
    remove(gen);
    remove(tj);
    rmdir(dir);
}

static const char ALPHA[] = "ab <|im_end|>\n\t'sS1\xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80";

/* random bytes: encode never crashes; valid UTF-8 round-trips to its NFC */
static void fuzz_encode_decode(const char *label, dr_tokenizer *tok, int iters) {
    uint64_t rng = 7;
    char buf[300];
    int invalid = 0, valid = 0, roundtrip_bad = 0, rejected_ok = 0, other = 0;
    for (int it = 0; it < iters; it++) {
        size_t len = rng_next(&rng) % sizeof buf;
        int mode = it % 3;
        for (size_t k = 0; k < len; k++) {
            uint64_t r = rng_next(&rng);
            if (mode == 0)
                buf[k] = (char)r; /* any byte */
            else if (mode == 1)
                buf[k] = (char)(r % 128); /* ASCII */
            else
                buf[k] = ALPHA[r % (sizeof ALPHA - 1)];
        }
        bool is_valid = valid_utf8(buf, len);
        dr_tokens t = {0};
        dr_status st = dr_tokenize(tok, buf, len, it & 1, &t);
        if (!is_valid) {
            invalid++;
            rejected_ok += st == DR_ERR_ARG && t.n == 0 && strstr(dr_last_error(), "UTF-8");
        } else if (st != DR_OK) {
            other++;
        } else {
            valid++;
            char *d;
            size_t dl;
            utf8proc_uint8_t *nfc = NULL;
            utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)buf, (utf8proc_ssize_t)len,
                                               &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (dr_detokenize(tok, t.ids, t.n, false, &d, &dl) != DR_OK || nl < 0 ||
                (size_t)nl != dl || memcmp(d, nfc, dl) != 0) {
                if (roundtrip_bad++ < 3)
                    printf("  round trip differs for a %zu-byte input\n", len);
            } else {
                free(d);
            }
            free(nfc);
        }
        dr_tokens_free(&t);
    }
    CHECK_SHOW(rejected_ok == invalid && other == 0,
               "%s: %d invalid UTF-8 inputs rejected with DR_ERR_ARG (%d correctly), %d valid "
               "failed", label, invalid, rejected_ok, other);
    CHECK_SHOW(roundtrip_bad == 0, "%s: decode(encode(x)) == NFC(x) for %d valid inputs (%d differ)",
               label, valid, roundtrip_bad);

    /* random ids through decode and the stream decoder */
    int32_t ids[64];
    int range_err = 0, dec_ok = 0, bad = 0;
    int32_t nv = dr_tokenizer_n_vocab(tok);
    for (int it = 0; it < iters; it++) {
        size_t n = rng_next(&rng) % 64;
        for (size_t k = 0; k < n; k++) {
            uint64_t r = rng_next(&rng);
            ids[k] = (r & 63) == 0 ? (int32_t)(r >> 32) : (int32_t)((r >> 8) % (uint64_t)(nv + 4)) - 2;
        }
        char *d;
        size_t dl;
        dr_status st = dr_detokenize(tok, ids, n, it & 1, &d, &dl);
        if (st == DR_ERR_RANGE) {
            range_err++;
            continue;
        }
        if (st != DR_OK || !valid_utf8(d, dl) || !stream_check(tok, ids, n, d, dl, it & 1))
            bad++;
        else
            dec_ok++;
        if (st == DR_OK)
            free(d);
    }
    CHECK_SHOW(bad == 0, "%s: random ids: %d decoded (valid UTF-8, stream == one-shot), %d out of "
               "range, %d bad", label, dec_ok, range_err, bad);
}

int main(void) {
    test_malformed();
    test_truncated();
    test_mutations();
    test_sidecar_errors();
    dr_tokenizer *tok;
    if (dr_tokenizer_load(DATA("dense-f32"), &tok) == DR_OK) {
        fuzz_encode_decode("small tokenizer", tok, 3000);
        dr_tokenizer_free(tok);
    }
    if (dr_tokenizer_load(DATA("tokenizer/qwen3"), &tok) == DR_OK) {
        fuzz_encode_decode("qwen3 tokenizer", tok, 1500);
        dr_tokenizer_free(tok);
    }
    return TEST_DONE();
}
