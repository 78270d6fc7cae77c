/* test_tok_small - the 1000-token BPE tokenizer of the dense-f32 fixture
 * (Qwen3.5 regex + NFC) against small_golden.json, its sidecar files (eos
 * ids, chat template), and the tokenizer.json features the Qwen files do
 * not use, on variants built in memory: legacy "a b" merges, added tokens
 * with lstrip / rstrip / single_word / normalized, ByteLevel with
 * add_prefix_space and use_regex, unk_token / fuse_unk, byte_fallback,
 * ignore_merges. Expected ids of the variants are composed from the plain
 * tokenizer's encoding of the pieces the HF rules produce.
 */
#include "../test.h"
#include "text_test_util.h"

#include <pthread.h>
#include <unistd.h>

static dr_tokenizer *base;

static dr_tokens enc(const dr_tokenizer *tok, const char *s, bool special) {
    dr_tokens t = {0};
    if (dr_tokenize(tok, s, strlen(s), special, &t) != DR_OK)
        printf("  encode \"%s\" failed: %s\n", s, dr_last_error());
    return t;
}

/* expected = concatenation of parts: a string part is base-encoded, an
 * integer part (given as a string "#<id>") is that id */
static bool expect(const dr_tokenizer *tok, const char *text, bool special, const char **parts,
                   size_t np, const char *what) {
    dr_tokens want = {0};
    for (size_t i = 0; i < np; i++) {
        if (parts[i][0] == '#' && parts[i][1]) {
            dr_tokens_push(&want, atoi(parts[i] + 1));
        } else {
            dr_tokens t = enc(base, parts[i], false);
            for (size_t k = 0; k < t.n; k++)
                dr_tokens_push(&want, t.ids[k]);
            dr_tokens_free(&t);
        }
    }
    dr_tokens got = enc(tok, text, special);
    bool ok = ids_equal(got.ids, got.n, want.ids, want.n);
    CHECK(ok, "%s", what);
    dr_tokens_free(&got);
    dr_tokens_free(&want);
    return ok;
}
#define EXPECT(tok, text, special, what, ...)                                                    \
    do {                                                                                         \
        const char *parts_[] = {__VA_ARGS__};                                                    \
        expect(tok, text, special, parts_, sizeof parts_ / sizeof parts_[0], what);              \
    } while (0)

static void golden(const dr_tokenizer *tok, const char *label) {
    json_t *g = load_json(DATA("tokenizer/small_golden.json"));
    if (!g) {
        CHECK(0, "golden file");
        return;
    }
    size_t n = json_array_size(g), n_ok = 0, n_dec = 0, n_stream = 0, i;
    const json_t *c;
    json_array_foreach(g, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        const char *decoded = json_string_value(json_object_get(c, "decoded"));
        dr_tokens want = json_ids(json_object_get(c, "ids"));
        dr_tokens got = enc(tok, text, true);
        bool ok = ids_equal(got.ids, got.n, want.ids, want.n);
        if (!ok)
            printf("  %s case %zu: \"%s\"\n", label, i, text);
        n_ok += ok;
        char *out;
        size_t ol;
        if (dr_detokenize(tok, want.ids, want.n, false, &out, &ol) == DR_OK) {
            n_dec += ol == strlen(decoded) && memcmp(out, decoded, ol) == 0;
            free(out);
        }
        n_stream += stream_check(tok, want.ids, want.n, decoded, strlen(decoded), false);
        dr_tokens_free(&got);
        dr_tokens_free(&want);
    }
    CHECK_SHOW(n_ok == n, "%s: %zu/%zu texts encode to the exact golden ids", label, n_ok, n);
    CHECK_SHOW(n_dec == n, "%s: %zu/%zu decode to the golden text", label, n_dec, n);
    CHECK_SHOW(n_stream == n, "%s: %zu/%zu stream-decode to the golden text", label, n_stream, n);
    json_decref(g);
}

/* tokenizer.json of the fixture, parsed for editing */
static json_t *small_json(void) { return load_json(DATA("dense-f32/tokenizer.json")); }

static dr_tokenizer *load_edited(json_t *j, const char *what) {
    char *s = json_dumps(j, JSON_COMPACT);
    dr_tokenizer *tok = NULL;
    dr_status st = dr_tokenizer_load_buffer(s, strlen(s), what, NULL, &tok);
    CHECK(st == DR_OK, "load %s: %s", what, dr_last_error());
    free(s);
    return tok;
}

static json_t *added(int id, const char *content, bool lstrip, bool rstrip, bool single_word,
                     bool normalized, bool special) {
    return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content,
                     "lstrip", lstrip, "rstrip", rstrip, "single_word", single_word, "normalized",
                     normalized, "special", special);
}

static void test_sidecars(void) {
    size_t ne;
    const int32_t *eos = dr_tokenizer_eos_ids(base, &ne);
    CHECK_SHOW(ne == 1 && eos[0] == 1, "eos ids from tokenizer_config + generation_config: n=%zu "
               "first=%d (expected [1])", ne, ne ? eos[0] : -1);
    CHECK(dr_tokenizer_is_eog(base, 1) && dr_tokenizer_is_eog(base, 0) &&
              !dr_tokenizer_is_eog(base, 2),
          "eog: <|im_end|> and <|endoftext|>");
    bool rec;
    CHECK(dr_chat_format_detect(dr_tokenizer_chat_template(base), &rec) == DR_CHAT_QWEN3 && rec,
          "fixture chat template is the Qwen3 one");
    CHECK(strcmp(dr_tokenizer_chat_renderer(base)->name, "qwen3") == 0, "renderer for tokenizer");

    /* eos_token_id as a list, in a temporary model directory */
    char dir[] = "/tmp/dr_tok_small_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    char p[256];
    json_t *j = small_json();
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    json_dump_file(j, p, JSON_COMPACT);
    json_decref(j);
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    FILE *f = fopen(p, "w");
    fputs("{\"eos_token_id\": [1, 0], \"pad_token_id\": 0}", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
    f = fopen(p, "w");
    fputs("{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking %}{{- '<think>\\n' }}{%- endif %}",
          f);
    fclose(f);
    dr_tokenizer *tok;
    dr_status st = dr_tokenizer_load(dir, &tok);
    CHECK(st == DR_OK, "load temp dir: %s", dr_last_error());
    if (st == DR_OK) {
        eos = dr_tokenizer_eos_ids(tok, &ne);
        CHECK_SHOW(ne == 2 && eos[0] == 1 && eos[1] == 0, "eos_token_id list [1, 0]: n=%zu", ne);
        CHECK(dr_chat_format_detect(dr_tokenizer_chat_template(tok), NULL) == DR_CHAT_QWEN3_5,
              "chat_template.jinja read and detected as Qwen3.5");
        dr_tokenizer_free(tok);
    }
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    remove(p);
    snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
    remove(p);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    remove(p);
    rmdir(dir);
}

static void test_legacy_merges(void) {
    json_t *j = small_json();
    json_t *merges = json_object_get(json_object_get(j, "model"), "merges");
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s %s", json_string_value(json_array_get(m, 0)),
                 json_string_value(json_array_get(m, 1)));
        json_array_set_new(merges, i, json_string(buf));
    }
    dr_tokenizer *tok = load_edited(j, "legacy merges");
    if (tok) {
        golden(tok, "merges as \"a b\" strings");
        dr_tokenizer_free(tok);
    }
    json_decref(j);
}

static void test_added_rules(void) {
    json_t *j = small_json();
    json_t *at = json_object_get(j, "added_tokens");
    json_t *vocab = json_object_get(json_object_get(j, "model"), "vocab");
    (void)vocab;
    json_array_append_new(at, added(1000, "<lst>", true, false, false, false, true));
    json_array_append_new(at, added(1001, "<rst>", false, true, false, false, false));
    json_array_append_new(at, added(1002, "cat", false, false, true, false, false));
    json_array_append_new(at, added(1003, "\xc3\xa9", false, false, false, true, false));
    json_array_append_new(at, added(1004, "\xc3\xb1", false, false, false, false, false));
    dr_tokenizer *tok = load_edited(j, "added-token rules");
    json_decref(j);
    if (!tok)
        return;
    CHECK(dr_tokenizer_n_vocab(tok) == 1005, "n_vocab with added tokens");
    CHECK(dr_tokenizer_token_id(tok, "<lst>") == 1000 && dr_tokenizer_is_special(tok, 1000) &&
              !dr_tokenizer_is_special(tok, 1001),
          "added token lookup and special flag");
    EXPECT(tok, "a  <lst>b", true, "lstrip takes the spaces on the left", "a", "#1000", "b");
    EXPECT(tok, "a  <lst>b", false, "parse_special off: a special lstrip token is plain text",
           "a  <lst>b");
    EXPECT(tok, "a<rst> \t b", true, "rstrip takes the whitespace on the right", "a", "#1001",
           "b");
    EXPECT(tok, "a<rst> \t b", false, "parse_special off: non-special <rst> still matches", "a",
           "#1001", "b");
    EXPECT(tok, "cat concat cat.", true, "single_word: only whole words match", "#1002",
           " concat ", "#1002", ".");
    EXPECT(tok, "cats", true, "single_word: no match before a letter", "cats");
    EXPECT(tok, "caf\x65\xcc\x81", true, "normalized token matches decomposed input after NFC",
           "caf", "#1003");
    EXPECT(tok, "caf\xc3\xa9", true, "normalized token matches composed input", "caf", "#1003");
    EXPECT(tok, "\xc3\xb1" "a", true, "non-normalized token matches its exact bytes", "#1004",
           "a");
    EXPECT(tok, "n\xcc\x83" "a", true, "non-normalized token does not match decomposed input",
           "n\xcc\x83" "a");
    char *d;
    size_t dl;
    int32_t ids[] = {1000, 1001};
    CHECK(dr_detokenize(tok, ids, 2, true, &d, &dl) == DR_OK && strcmp(d, "<rst>") == 0,
          "skip_special keeps non-special added tokens");
    free(d);
    dr_tokenizer_free(tok);
}

static void test_bytelevel_options(void) {
    json_t *j = small_json();
    json_object_set_new(j, "pre_tokenizer",
                        json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space",
                                  1, "trim_offsets", 1, "use_regex", 1));
    dr_tokenizer *tok = load_edited(j, "ByteLevel(use_regex, add_prefix_space)");
    if (tok) {
        EXPECT(tok, "Hi  you're", true, "GPT-2 pattern with a prefix space", " Hi", " ", " you",
               "'re");
        EXPECT(tok, " Hi", true, "no second prefix space", " Hi");
        dr_tokenizer_free(tok);
    }
    json_decref(j);
    /* Split then ByteLevel(add_prefix_space): every split piece gets a space */
    j = small_json();
    json_t *bl = json_array_get(json_object_get(json_object_get(j, "pre_tokenizer"), "pretokenizers"), 1);
    json_object_set_new(bl, "add_prefix_space", json_true());
    tok = load_edited(j, "Split + ByteLevel(add_prefix_space)");
    if (tok) {
        /* the Qwen3.5 split gives "Hello" and ",world" (punctuation may lead a
         * word); ByteLevel then makes them " Hello" and " ,world" */
        EXPECT(tok, "Hello,world", true, "prefix space on every split piece", " Hello", " ,",
               "world");
        dr_tokenizer_free(tok);
    }
    json_decref(j);
}

static void test_model_options(void) {
    /* no ByteLevel: the model sees characters; unknown ones become unk */
    json_t *j = small_json();
    json_t *model = json_object_get(j, "model");
    json_t *pts = json_object_get(json_object_get(j, "pre_tokenizer"), "pretokenizers");
    json_array_remove(pts, 1);
    json_object_set_new(model, "unk_token", json_string("<|endoftext|>"));
    dr_tokenizer *tok = load_edited(j, "unk_token");
    int32_t a = dr_tokenizer_token_id(base, "a"), b = dr_tokenizer_token_id(base, "b");
    if (tok) {
        dr_tokens t = enc(tok, "a\xe4\xb8\xad\xe4\xb8\xad" "b", true);
        int32_t want[] = {a, 0, 0, b};
        CHECK(ids_equal(t.ids, t.n, want, 4), "unk_token without fuse_unk: one unk per character");
        dr_tokens_free(&t);
        dr_tokenizer_free(tok);
    }
    json_object_set_new(model, "fuse_unk", json_true());
    tok = load_edited(j, "fuse_unk");
    if (tok) {
        dr_tokens t = enc(tok, "a\xe4\xb8\xad\xe4\xb8\xad" "b", true);
        int32_t want[] = {a, 0, b};
        CHECK(ids_equal(t.ids, t.n, want, 3), "fuse_unk: consecutive unknowns fuse");
        dr_tokens_free(&t);
        dr_tokenizer_free(tok);
    }
    /* byte_fallback: <0xXX> tokens for characters outside the vocabulary */
    json_t *vocab = json_object_get(model, "vocab");
    json_object_set_new(vocab, "<0xE4>", json_integer(1010));
    json_object_set_new(vocab, "<0xB8>", json_integer(1011));
    json_object_set_new(vocab, "<0xAD>", json_integer(1012));
    json_object_set_new(model, "byte_fallback", json_true());
    json_object_set_new(model, "unk_token", json_null());
    tok = load_edited(j, "byte_fallback");
    if (tok) {
        dr_tokens t = enc(tok, "\xe4\xb8\xad", true);
        int32_t want[] = {1010, 1011, 1012};
        CHECK(ids_equal(t.ids, t.n, want, 3), "byte_fallback: <0xE4><0xB8><0xAD>");
        char *d;
        size_t dl;
        CHECK(dr_detokenize(tok, want, 3, false, &d, &dl) == DR_OK && strcmp(d, "<0xE4><0xB8><0xAD>") == 0,
              "byte-fallback tokens decode as their text (ByteLevel decoder): \"%s\"", d);
        free(d);
        dr_tokens_free(&t);
        dr_tokenizer_free(tok);
    }
    json_object_set_new(model, "byte_fallback", json_false());
    tok = load_edited(j, "no unk, no fallback");
    if (tok) {
        dr_tokens t = enc(tok, "a\xe4\xb8\xad" "b", true);
        /* the dropped character leaves "a" next to "b", which then merge */
        int32_t want[] = {dr_tokenizer_token_id(base, "ab")};
        CHECK(want[0] >= 0 && ids_equal(t.ids, t.n, want, 1),
              "no unk_token: unknown characters are dropped");
        dr_tokens_free(&t);
        dr_tokenizer_free(tok);
    }
    json_decref(j);

    /* ignore_merges: a piece that is a vocabulary entry is taken whole */
    j = small_json();
    model = json_object_get(j, "model");
    json_object_set_new(json_object_get(model, "vocab"), "qzxq", json_integer(1020));
    tok = load_edited(j, "vocab entry unreachable by merges");
    if (tok) {
        dr_tokens t = enc(tok, "qzxq", true);
        CHECK_SHOW(t.n > 1, "without ignore_merges \"qzxq\" is %zu tokens (merges only)", t.n);
        dr_tokens_free(&t);
        dr_tokenizer_free(tok);
    }
    json_object_set_new(model, "ignore_merges", json_true());
    tok = load_edited(j, "ignore_merges");
    if (tok) {
        dr_tokens t = enc(tok, "qzxq", true);
        CHECK(t.n == 1 && t.ids[0] == 1020, "ignore_merges: whole-piece vocabulary hit");
        dr_tokens_free(&t);
        dr_tokenizer_free(tok);
    }
    json_decref(j);
}

/* several threads encoding and decoding with one tokenizer */
typedef struct worker {
    json_t *cases;
    int bad;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    for (int rep = 0; rep < 40; rep++) {
        size_t i;
        const json_t *c;
        json_array_foreach(w->cases, i, c) {
            const char *text = json_string_value(json_object_get(c, "text"));
            dr_tokens want = json_ids(json_object_get(c, "ids")), got = {0};
            char *d = NULL;
            size_t dl;
            if (dr_tokenize(base, text, strlen(text), true, &got) != DR_OK || got.n != want.n ||
                (got.n && memcmp(got.ids, want.ids, got.n * sizeof *got.ids) != 0) ||
                dr_detokenize(base, want.ids, want.n, false, &d, &dl) != DR_OK)
                w->bad++;
            free(d);
            dr_tokens_free(&got);
            dr_tokens_free(&want);
        }
    }
    return NULL;
}

static void test_threads(void) {
    json_t *g = load_json(DATA("tokenizer/small_golden.json"));
    if (!g)
        return;
    pthread_t th[4];
    worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){g, 0};
        pthread_create(&th[i], NULL, work, &w[i]);
    }
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        bad += w[i].bad;
    }
    CHECK_SHOW(bad == 0, "4 threads x 40 rounds of golden encode/decode on one tokenizer: %d wrong",
               bad);
    json_decref(g);
}

int main(void) {
    dr_status st = dr_tokenizer_load(DATA("dense-f32"), &base);
    CHECK(st == DR_OK, "load dense-f32: %s", dr_last_error());
    if (st != DR_OK)
        return TEST_DONE();
    golden(base, "dense-f32 tokenizer");
    test_sidecars();
    test_legacy_merges();
    test_added_rules();
    test_bytelevel_options();
    test_model_options();
    test_threads();
    dr_tokenizer_free(base);
    return TEST_DONE();
}
